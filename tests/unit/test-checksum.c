/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for CRC-32C: the published check values (the CRC catalogue's
 * "123456789" and RFC 3720's iSCSI vectors) for every version, the fast
 * and portable versions equal to the reference at every length and
 * alignment, and a CRC continued over pieces equal to the CRC of the whole.
 */
#include "config.h"

#include "testutil.h"

#include "checksum.h"

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static const crc_fn versions[] = {nesa_crc32c_ref, nesa_crc32c_portable, nesa_crc32c};

static void
test_check_values(void **state)
{
	unsigned char buf[48];
	size_t v;
	int i;

	(void)state;
	for (v = 0; v < sizeof versions / sizeof *versions; v++) {
		assert_int_equal(versions[v](0, "123456789", 9), 0xe3069283u);
		assert_int_equal(versions[v](0, "", 0), 0);
		memset(buf, 0, 32);
		assert_int_equal(versions[v](0, buf, 32), 0x8a9136aau);
		memset(buf, 0xff, 32);
		assert_int_equal(versions[v](0, buf, 32), 0x62a8ab43u);
		for (i = 0; i < 32; i++)
			buf[i] = (unsigned char)i;
		assert_int_equal(versions[v](0, buf, 32), 0x46dd794eu);
		for (i = 0; i < 32; i++)
			buf[i] = (unsigned char)(31 - i);
		assert_int_equal(versions[v](0, buf, 32), 0x113fdb5cu);
	}
	assert_true(strcmp(nesa_crc32c_impl(), "sse4.2") == 0 || strcmp(nesa_crc32c_impl(), "portable") == 0);
}

static void
test_versions_agree(void **state)
{
	enum { N = 40000 }; /* past several blocks of the fast version's three lanes */
	unsigned char *buf = malloc(N + 8);
	uint64_t rng = 7;
	size_t len, off, v;

	(void)state;
	assert_non_null(buf);
	for (len = 0; len < N + 8; len++)
		buf[len] = (unsigned char)test_rand(&rng);
	/* Every length to 300 at every alignment, then a few long ones. */
	for (off = 0; off < 8; off++) {
		for (len = 0; len <= 300; len++) {
			uint32_t want = nesa_crc32c_ref(0, buf + off, len);

			for (v = 1; v < sizeof versions / sizeof *versions; v++)
				assert_int_equal(versions[v](0, buf + off, len), want);
		}
		for (len = 1000; len <= N; len += 997) {
			uint32_t want = nesa_crc32c_ref(0x1234u, buf + off, len);

			for (v = 1; v < sizeof versions / sizeof *versions; v++)
				assert_int_equal(versions[v](0x1234u, buf + off, len), want);
		}
		/* Either side of whole blocks of three 2048-byte lanes. */
		for (len = 6143; len <= 3 * 6144 + 9; len += (len % 6144 == 6143 || len % 6144 == 0) ? 1 : 6142) {
			uint32_t want = nesa_crc32c_ref(0xffffffffu, buf + off, len);

			for (v = 1; v < sizeof versions / sizeof *versions; v++)
				assert_int_equal(versions[v](0xffffffffu, buf + off, len), want);
		}
	}
	free(buf);
}

static void
test_continuation(void **state)
{
	unsigned char buf[1000];
	uint64_t rng = 11;
	size_t i, cut, v;

	(void)state;
	for (i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)test_rand(&rng);
	for (v = 0; v < sizeof versions / sizeof *versions; v++) {
		uint32_t whole = versions[v](0, buf, sizeof buf);

		for (cut = 0; cut <= sizeof buf; cut += 37)
			assert_int_equal(versions[v](versions[v](0, buf, cut), buf + cut, sizeof buf - cut), whole);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_values),
		cmocka_unit_test(test_versions_agree),
		cmocka_unit_test(test_continuation),
	};

	return cmocka_run_group_tests_name("checksum", tests, NULL, NULL);
}
