/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for npy: the exact bytes of a small file written, round trips
 * of every supported dtype with 0..4 dims through files and memory, headers
 * of versions 1, 2 and 3 written by hand, refusals with messages naming the
 * file, and allocation failures.
 */
#include "config.h"

#include <stdio.h>

#include "testutil.h"

#include "npy.h"

/* Writes t with nesa_npy_write_fp and returns the file's bytes (malloc'd). */
static unsigned char *
write_to_mem(const struct nesa_tensor *t, size_t *len)
{
	FILE *fp = tmpfile();
	unsigned char *buf;
	struct nesa_err err;
	long n;

	assert_non_null(fp);
	if (nesa_npy_write_fp(fp, "t.npy", t, &err) != NESA_OK)
		fail_msg("%s", err.msg);
	n = ftell(fp);
	assert_true(n > 0);
	buf = malloc((size_t)n);
	assert_non_null(buf);
	rewind(fp);
	assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
	fclose(fp);
	*len = (size_t)n;
	return buf;
}

/* A .npy file in memory from a header dict and data, preamble of version v. */
static size_t
build(unsigned char *out, size_t cap, int v, const char *dict, const void *data, size_t n)
{
	size_t pre = v == 1 ? 10 : 12, dlen = strlen(dict);

	assert_true(pre + dlen + 1 + n <= cap);
	memcpy(out, "\x93NUMPY", 6);
	out[6] = (unsigned char)v;
	out[7] = 0;
	out[8] = (unsigned char)((dlen + 1) & 0xff);
	out[9] = (unsigned char)((dlen + 1) >> 8);
	if (v != 1)
		out[10] = out[11] = 0;
	memcpy(out + pre, dict, dlen);
	out[pre + dlen] = '\n';
	memcpy(out + pre + dlen + 1, data, n);
	return pre + dlen + 1 + n;
}

static void
test_exact_bytes(void **state)
{
	static const char dict[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
	int64_t shape[2] = {2, 3};
	unsigned char want[128 + 24];
	struct nesa_tensor *t;
	unsigned char *got;
	size_t len;
	int i;

	(void)state;
	t = nesa_tensor_new(NULL, NESA_F32, 2, shape, NULL);
	assert_non_null(t);
	for (i = 0; i < 6; i++)
		((float *)t->data)[i] = (float)i - 2.5f;
	/* Magic, version 1.0, header length 118 = 128 - 10, dict, spaces to 127, '\n'. */
	memcpy(want, "\x93NUMPY\x01\x00\x76\x00", 10);
	memcpy(want + 10, dict, sizeof dict - 1);
	assert_int_equal(10 + sizeof dict - 1, 69);
	memset(want + 69, ' ', 127 - 69);
	want[127] = '\n';
	memcpy(want + 128, t->data, 24);
	got = write_to_mem(t, &len);
	assert_int_equal(len, sizeof want);
	assert_memory_equal(got, want, sizeof want);
	free(got);
	nesa_tensor_free(t);
}

static void
test_roundtrips(void **state)
{
	static const int dtypes[] = {NESA_F32, NESA_F16, NESA_I32, NESA_I8, NESA_U8};
	uint64_t rng = 7;
	size_t k;
	int ndim;

	(void)state;
	for (k = 0; k < sizeof dtypes / sizeof dtypes[0]; k++)
		for (ndim = 0; ndim <= 4; ndim++) {
			int64_t shape[4];
			struct nesa_tensor *t, *back;
			struct nesa_npy_info info;
			struct nesa_err err;
			unsigned char *buf;
			size_t len, i;
			FILE *fp;
			int d;

			for (d = 0; d < ndim; d++)
				shape[d] = 1 + (int64_t)(test_rand(&rng) % 4);
			t = nesa_tensor_new(NULL, dtypes[k], ndim, shape, &err);
			assert_non_null(t);
			for (i = 0; i < t->nbytes; i++)
				((unsigned char *)t->data)[i] = (unsigned char)test_rand(&rng);
			buf = write_to_mem(t, &len);
			/* Data is 64-byte aligned in the file. */
			assert_int_equal(nesa_npy_parse_header(buf, len, "t.npy", &info, &err), NESA_OK);
			assert_int_equal(info.header_size % 64, 0);
			assert_int_equal(info.version, 1);
			assert_int_equal(len, info.header_size + t->nbytes);
			assert_int_equal(nesa_npy_read_mem(buf, len, "t.npy", &back, &err), NESA_OK);
			assert_int_equal(back->dtype, dtypes[k]);
			assert_true(nesa_tensor_same_shape(back, t));
			assert_memory_equal(back->data, t->data, t->nbytes);
			nesa_tensor_free(back);
			/* Through a FILE, which is left just after the array. */
			fp = tmpfile();
			assert_non_null(fp);
			assert_int_equal(fwrite(buf, 1, len, fp), len);
			fputc('X', fp);
			rewind(fp);
			assert_int_equal(nesa_npy_read_fp(fp, "t.npy", &back, &err), NESA_OK);
			assert_int_equal(fgetc(fp), 'X');
			assert_memory_equal(back->data, t->data, t->nbytes);
			nesa_tensor_free(back);
			fclose(fp);
			free(buf);
			nesa_tensor_free(t);
		}
}

/* numpy has no bfloat16: it is widened to '<f4', exactly. */
static void
test_bf16_widened(void **state)
{
	int64_t shape[1] = {5000};
	struct nesa_tensor *t, *back;
	unsigned char *buf;
	size_t len;
	uint64_t rng = 3;
	int i;

	(void)state;
	t = nesa_tensor_new(NULL, NESA_BF16, 1, shape, NULL);
	assert_non_null(t);
	for (i = 0; i < 5000; i++)
		((uint16_t *)t->data)[i] = nesa_f32_to_bf16(test_randf(&rng) * 100.0f);
	buf = write_to_mem(t, &len);
	assert_non_null(strstr((char *)buf + 10, "'descr': '<f4'"));
	assert_int_equal(nesa_npy_read_mem(buf, len, "t.npy", &back, NULL), NESA_OK);
	assert_int_equal(back->dtype, NESA_F32);
	for (i = 0; i < 5000; i++)
		assert_true(((float *)back->data)[i] == nesa_bf16_to_f32(((uint16_t *)t->data)[i]));
	nesa_tensor_free(back);
	free(buf);
	nesa_tensor_free(t);
}

static void
test_header_versions(void **state)
{
	static const uint8_t data[4] = {1, 2, 3, 4};
	unsigned char buf[256];
	struct nesa_tensor *t;
	struct nesa_err err;
	size_t len;
	int v;

	(void)state;
	for (v = 1; v <= 3; v++) {
		len = build(buf, sizeof buf, v, "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }", data, 4);
		assert_int_equal(nesa_npy_read_mem(buf, len, "v.npy", &t, &err), NESA_OK);
		assert_int_equal(t->dtype, NESA_U8);
		assert_int_equal(t->ndim, 2);
		assert_memory_equal(t->data, data, 4);
		nesa_tensor_free(t);
	}
	/* Key order, double quotes, Python 2 longs, no spaces, a scalar. */
	len = build(buf, sizeof buf, 1, "{\"shape\":(2L,2L),\"fortran_order\":False,\"descr\":\"|i1\"}", data, 4);
	assert_int_equal(nesa_npy_read_mem(buf, len, "q.npy", &t, &err), NESA_OK);
	assert_int_equal(t->dtype, NESA_I8);
	nesa_tensor_free(t);
	len = build(buf, sizeof buf, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (), }", data, 4);
	assert_int_equal(nesa_npy_read_mem(buf, len, "s.npy", &t, &err), NESA_OK);
	assert_int_equal(t->ndim, 0);
	assert_int_equal(*(int32_t *)t->data, 0x04030201);
	nesa_tensor_free(t);
	len = build(buf, sizeof buf, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (0, 3), }", data, 0);
	assert_int_equal(nesa_npy_read_mem(buf, len, "e.npy", &t, &err), NESA_OK);
	assert_int_equal(t->nbytes, 0);
	nesa_tensor_free(t);

	/* Other versions are refused. */
	len = build(buf, sizeof buf, 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", data, 4);
	buf[6] = 4;
	assert_int_equal(nesa_npy_read_mem(buf, len, "v4.npy", &t, &err), NESA_EVERSION);
	assert_string_equal(err.msg, "cannot read 'v4.npy': unsupported .npy version 4.0 (1.0, 2.0 and 3.0 are supported)");
	assert_null(t);
	buf[6] = 1;
	buf[7] = 1;
	assert_int_equal(nesa_npy_read_mem(buf, len, "v4.npy", &t, &err), NESA_EVERSION);
}

struct refusal {
	const char *dict;
	enum nesa_status status;
	const char *text;
};

static void
test_refusals(void **state)
{
	static const struct refusal cases[] = {
		{"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", NESA_EUNSUPPORTED, "Fortran-order"},
		{"{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", NESA_EUNSUPPORTED, "big-endian .npy data type '>f4'"},
		{"{'descr': '|O', 'fortran_order': False, 'shape': (4,), }", NESA_EUNSUPPORTED, "object arrays"},
		{"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", NESA_EUNSUPPORTED, "unsupported .npy data type '<f8'"},
		{"{'descr': '<V2', 'fortran_order': False, 'shape': (8,), }", NESA_EUNSUPPORTED, "bfloat16"},
		{"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }", NESA_EUNSUPPORTED, "structured"},
		{"{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1, 1, 1, 16), }", NESA_EUNSUPPORTED, "5 dimensions"},
		{"{'descr': '|u1', 'shape': (16,), }", NESA_EFORMAT, "is missing"},
		{"{'descr': '|u1', 'fortran_order': False, 'shape': (16,), 'x': 1}", NESA_EFORMAT, "unexpected or repeated key 'x'"},
		{"{'descr': '|u1', 'descr': '|u1', 'fortran_order': False, 'shape': (16,)}", NESA_EFORMAT, "repeated key 'descr'"},
		{"{'descr': '|u1', 'fortran_order': False, 'shape': (16), }", NESA_EFORMAT, "not a tuple"},
		{"{'descr': '|u1', 'fortran_order': False, 'shape': (-16,), }", NESA_EFORMAT, "non-negative integers"},
		{"{'descr': '|u1', 'fortran_order': 0, 'shape': (16,), }", NESA_EFORMAT, "not True or False"},
		{"{'descr': '|u1', 'fortran_order': False, 'shape': (16,), } junk", NESA_EFORMAT, "text after the dict"},
		{"{'descr': '|u1\\x', 'fortran_order': False, 'shape': (16,), }", NESA_EFORMAT, "escapes"},
		{"{'descr': '|u1, 'fortran_order': False, 'shape': (16,)", NESA_EFORMAT, "malformed .npy header"},
		{"['descr', '|u1']", NESA_EFORMAT, "expected '{'"},
		{"{'descr': '<f4', 'fortran_order': False, 'shape': (2147483648, 2147483648, 2147483648), }", NESA_ESHAPE, "too large"},
		{"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", NESA_ESHAPE, "too large"},
	};
	static const unsigned char data[16];
	unsigned char buf[512];
	struct nesa_tensor *t;
	struct nesa_err err;
	size_t i, len;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		enum nesa_status st;

		len = build(buf, sizeof buf, 1, cases[i].dict, data, sizeof data);
		st = nesa_npy_read_mem(buf, len, "bad.npy", &t, &err);
		if (st != cases[i].status || strstr(err.msg, cases[i].text) == NULL ||
		    strncmp(err.msg, "cannot read 'bad.npy': ", 23) != 0)
			fail_msg("case %zu: want %d '%s', got %d '%s'", i, cases[i].status, cases[i].text, st, err.msg);
		assert_null(t);
	}
	/* Truncated data, trailing data, truncated header, not a .npy at all. */
	len = build(buf, sizeof buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", data, 16);
	assert_int_equal(nesa_npy_read_mem(buf, len - 1, "short.npy", &t, &err), NESA_EFORMAT);
	assert_string_equal(err.msg, "cannot read 'short.npy': unexpected end of file");
	assert_int_equal(nesa_npy_read_mem(buf, len + 1, "long.npy", &t, &err), NESA_EFORMAT);
	assert_string_equal(err.msg, "cannot read 'long.npy': 1 bytes of trailing data after the array");
	assert_int_equal(nesa_npy_read_mem(buf, 30, "cut.npy", &t, &err), NESA_EFORMAT);
	assert_int_equal(nesa_npy_read_mem(buf, 9, "cut.npy", &t, &err), NESA_EFORMAT);
	assert_int_equal(nesa_npy_read_mem("PK\3\4 a zip file", 16, "x.npz", &t, &err), NESA_EFORMAT);
	assert_string_equal(err.msg, "cannot read 'x.npz': not a .npy file");
	{
		FILE *fp = tmpfile();

		assert_non_null(fp);
		assert_int_equal(fwrite(buf, 1, len - 3, fp), len - 3);
		rewind(fp);
		assert_int_equal(nesa_npy_read_fp(fp, "short.npy", &t, &err), NESA_EFORMAT);
		assert_null(t);
		fclose(fp);
	}
	/* A huge version 2 header length is refused before anything is allocated. */
	memcpy(buf, "\x93NUMPY\x02\x00\x00\x00\x00\x40", 12);
	test_faults_arm(1);
	assert_int_equal(nesa_npy_read_mem(buf, 12, "huge.npy", &t, &err), NESA_EFORMAT);
	{
		FILE *fp = tmpfile();

		assert_non_null(fp);
		assert_int_equal(fwrite(buf, 1, 12, fp), 12);
		rewind(fp);
		assert_int_equal(nesa_npy_read_fp(fp, "huge.npy", &t, &err), NESA_EFORMAT);
		fclose(fp);
	}
	test_faults_disarm();
	assert_non_null(strstr(err.msg, "header of 1073741824 bytes is larger than"));
}

static void
test_write_refusals(void **state)
{
	int64_t shape[2] = {4, 4};
	struct nesa_tensor *t, q;
	struct nesa_err err;
	FILE *fp;

	(void)state;
	t = nesa_tensor_new(NULL, NESA_F32, 2, shape, NULL);
	assert_non_null(t);
	fp = tmpfile();
	assert_non_null(fp);
	/* A quantized (or unknown) type has no numpy equivalent. */
	q = *t;
	q.dtype = (enum nesa_dtype)16;
	assert_int_equal(nesa_npy_write_fp(fp, "q.npy", &q, &err), NESA_EUNSUPPORTED);
	assert_non_null(strstr(err.msg, "cannot write "));
	assert_non_null(strstr(err.msg, "'q.npy': numpy has no such type"));
	q = *t;
	q.stride[0] = 64;
	assert_int_equal(nesa_npy_write_fp(fp, "q.npy", &q, &err), NESA_EINVAL);
	q = *t;
	q.data = NULL;
	assert_int_equal(nesa_npy_write_fp(fp, "q.npy", &q, &err), NESA_EINVAL);
	assert_int_equal(ftell(fp), 0);
	fclose(fp);
	/* A stream that cannot be written. */
	fp = fopen("/dev/null", "rb");
	assert_non_null(fp);
	assert_int_equal(nesa_npy_write_fp(fp, "ro.npy", t, &err), NESA_EIO);
	assert_non_null(strstr(err.msg, "cannot write to 'ro.npy'"));
	fclose(fp);
	nesa_tensor_free(t);
}

/* Every allocation of a read can fail cleanly. */
static void
test_alloc_failures(void **state)
{
	int64_t shape[3] = {2, 3, 4};
	struct nesa_tensor *t, *back;
	unsigned char *buf;
	size_t len;
	long n;

	(void)state;
	t = nesa_tensor_new(NULL, NESA_I32, 3, shape, NULL);
	assert_non_null(t);
	buf = write_to_mem(t, &len);
	for (n = 1;; n++) {
		struct nesa_err err;
		enum nesa_status st;

		test_faults_arm(n);
		st = nesa_npy_read_mem(buf, len, "t.npy", &back, &err);
		test_faults_disarm();
		if (st == NESA_OK) {
			nesa_tensor_free(back);
			break;
		}
		assert_int_equal(st, NESA_ENOMEM);
		assert_null(back);
	}
	assert_true(n > 1);
	for (n = 1;; n++) {
		struct nesa_err err;
		enum nesa_status st;
		FILE *fp = tmpfile();

		assert_non_null(fp);
		assert_int_equal(fwrite(buf, 1, len, fp), len);
		rewind(fp);
		test_faults_arm(n);
		st = nesa_npy_read_fp(fp, "t.npy", &back, &err);
		test_faults_disarm();
		fclose(fp);
		if (st == NESA_OK) {
			nesa_tensor_free(back);
			break;
		}
		assert_int_equal(st, NESA_ENOMEM);
		assert_non_null(strstr(err.msg, "out of memory"));
	}
	assert_true(n > 2);
	free(buf);
	nesa_tensor_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_bytes),
		cmocka_unit_test(test_roundtrips),
		cmocka_unit_test(test_bf16_widened),
		cmocka_unit_test(test_header_versions),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_write_refusals),
		cmocka_unit_test(test_alloc_failures),
	};

	return cmocka_run_group_tests_name("npy", tests, NULL, NULL);
}
