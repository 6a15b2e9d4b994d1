/* SPDX-License-Identifier: MIT */
/* Unit tests for err: messages, prefixes and the exit-code map. */
#include "config.h"

#include <errno.h>
#include <stdio.h>

#include "testutil.h"

#include "err.h"

static void
test_set_and_prefix(void **state)
{
	struct nesa_err err;

	(void)state;
	nesa_err_clear(&err);
	assert_int_equal(err.status, NESA_OK);
	assert_int_equal(nesa_err_set(&err, NESA_EFORMAT, "bad magic in '%s'", "x.nsa"), NESA_EFORMAT);
	assert_string_equal(err.msg, "bad magic in 'x.nsa'");
	assert_int_equal(nesa_err_prefix(&err, "cannot load '%s'", "x.nsa"), NESA_EFORMAT);
	assert_string_equal(err.msg, "cannot load 'x.nsa': bad magic in 'x.nsa'");
	/* A NULL err is allowed everywhere and only passes the status through. */
	assert_int_equal(nesa_err_set(NULL, NESA_EIO, "x"), NESA_EIO);
	assert_int_equal(nesa_err_prefix(NULL, "x"), NESA_OK);
	nesa_err_set(&err, NESA_ENOMEM, NULL);
	assert_string_equal(nesa_err_msg(&err), "out of memory");
}

static void
test_sys_appends_errno(void **state)
{
	struct nesa_err err;

	(void)state;
	errno = ENOENT;
	nesa_err_sys(&err, NESA_ENOENT, "cannot open '%s'", "missing");
	assert_int_equal(err.sys_errno, ENOENT);
	assert_string_equal(err.msg, "cannot open 'missing': No such file or directory");
}

static void
test_long_messages_truncate(void **state)
{
	struct nesa_err err;
	char big[2000];

	(void)state;
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	nesa_err_set(&err, NESA_EIO, "%s", big);
	assert_int_equal(strlen(err.msg), NESA_ERR_MSG_MAX - 1);
	nesa_err_prefix(&err, "context");
	assert_memory_equal(err.msg, "context: aaa", 12);
}

static void
test_exit_codes(void **state)
{
	int s;

	(void)state;
	assert_int_equal(nesa_exit_code(NESA_OK), 0);
	assert_int_equal(nesa_exit_code(NESA_EUSAGE), 64);
	assert_int_equal(nesa_exit_code(NESA_EFORMAT), 65);
	assert_int_equal(nesa_exit_code(NESA_ECHECKSUM), 65);
	assert_int_equal(nesa_exit_code(NESA_ENOENT), 66);
	assert_int_equal(nesa_exit_code(NESA_EREMOTE), 69);
	assert_int_equal(nesa_exit_code(NESA_EINTERNAL), 70);
	assert_int_equal(nesa_exit_code(NESA_ECREATE), 73);
	assert_int_equal(nesa_exit_code(NESA_EIO), 74);
	assert_int_equal(nesa_exit_code((enum nesa_status)999), 70);
	/* Every status has a name, a text, and never an exit code Automake misreads. */
	for (s = 0; s < NESA_STATUS_COUNT; s++) {
		int code = nesa_exit_code((enum nesa_status)s);

		assert_non_null(nesa_strerror((enum nesa_status)s));
		assert_string_not_equal(nesa_status_name((enum nesa_status)s), "EUNKNOWN");
		assert_true(code != 77 && code != 99 && code < 125);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_set_and_prefix),
		cmocka_unit_test(test_sys_appends_errno),
		cmocka_unit_test(test_long_messages_truncate),
		cmocka_unit_test(test_exit_codes),
	};

	return cmocka_run_group_tests_name("err", tests, NULL, NULL);
}
