/* SPDX-License-Identifier: MIT */
/* Unit tests for xio: atomic outputs, refusals, bounded reads, mappings. */
#include "config.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "alloc.h"
#include "xio.h"

static char path[512];
static char *dir;

static int
setup(void **state)
{
	(void)state;
	dir = test_tmpdir();
	return dir == NULL;
}

static int
teardown(void **state)
{
	char cmd[600];

	(void)state;
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd);
}

static int
count_entries(void)
{
	char cmd[600];
	FILE *p;
	int n = -1;

	snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
	p = popen(cmd, "r");
	if (p != NULL) {
		if (fscanf(p, "%d", &n) != 1)
			n = -1;
		pclose(p);
	}
	return n;
}

static void
test_commit_and_abort(void **state)
{
	struct nesa_out o;
	struct nesa_err err;
	char *buf;
	size_t len;

	(void)state;
	snprintf(path, sizeof path, "%s/out.bin", dir);
	assert_int_equal(nesa_out_open(&o, path, NESA_OUT_BINARY, &err), NESA_OK);
	assert_int_equal(nesa_out_write(&o, "hello", 5, &err), NESA_OK);
	/* Nothing at the destination until commit. */
	assert_int_not_equal(access(path, F_OK), 0);
	assert_int_equal(nesa_out_commit(&o, &err), NESA_OK);
	assert_int_equal(nesa_read_file(path, 100, &buf, &len, &err), NESA_OK);
	assert_int_equal(len, 5);
	assert_string_equal(buf, "hello");
	nesa_free(buf);

	/* Existing file: refused without force. */
	assert_int_equal(nesa_out_open(&o, path, 0, &err), NESA_ECREATE);
	assert_non_null(strstr(err.msg, "file exists"));

	/* An aborted overwrite leaves the old contents and no temporary file. */
	assert_int_equal(nesa_out_open(&o, path, NESA_OUT_FORCE, &err), NESA_OK);
	assert_int_equal(nesa_out_write(&o, "partial", 7, &err), NESA_OK);
	nesa_out_abort(&o);
	assert_int_equal(nesa_read_file(path, 100, &buf, &len, &err), NESA_OK);
	assert_string_equal(buf, "hello");
	nesa_free(buf);
	assert_int_equal(count_entries(), 1);
}

static void
test_read_limits(void **state)
{
	struct nesa_err err;
	char *buf;
	size_t len;
	FILE *fp;

	(void)state;
	snprintf(path, sizeof path, "%s/big.txt", dir);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("0123456789", fp);
	fclose(fp);
	assert_int_equal(nesa_read_file(path, 9, &buf, &len, &err), NESA_ELIMIT);
	assert_null(buf);
	assert_int_equal(nesa_read_file(path, 10, &buf, &len, &err), NESA_OK);
	nesa_free(buf);
	assert_int_equal(nesa_read_file("/nonexistent/x", 10, &buf, &len, &err), NESA_ENOENT);
	assert_non_null(strstr(err.msg, "cannot open '/nonexistent/x'"));
}

static void
test_map(void **state)
{
	struct nesa_map m;
	struct nesa_err err;

	(void)state;
	snprintf(path, sizeof path, "%s/big.txt", dir);
	assert_int_equal(nesa_map_file(path, &m, &err), NESA_OK);
	assert_int_equal(m.size, 10);
	assert_memory_equal(m.addr, "0123456789", 10);
	nesa_unmap(&m);
	assert_int_equal(nesa_map_file(dir, &m, &err), NESA_EUNSUPPORTED);
	assert_int_equal(nesa_map_file("-", &m, &err), NESA_EUNSUPPORTED);
}

static void
test_directory_refused(void **state)
{
	struct nesa_out o;
	struct nesa_err err;

	(void)state;
	assert_int_equal(nesa_out_open(&o, dir, NESA_OUT_FORCE, &err), NESA_ECREATE);
	assert_non_null(strstr(err.msg, "is a directory"));
	snprintf(path, sizeof path, "%s/no/such/dir/x", dir);
	assert_int_equal(nesa_out_open(&o, path, 0, &err), NESA_ECREATE);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_commit_and_abort),
		cmocka_unit_test(test_read_limits),
		cmocka_unit_test(test_map),
		cmocka_unit_test(test_directory_refused),
	};

	return cmocka_run_group_tests_name("xio", tests, setup, teardown);
}
