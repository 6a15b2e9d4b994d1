/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for quant: q8_0/q4_0 byte layouts, reference round-trip error
 * bounds, edge blocks (zeros, outliers, denormals, rounding ties and the q4_0
 * saturation boundary), scale validation, and the reference dot products.
 * Bit-compatibility with llama.cpp's quantizer is checked in test-gguf.c
 * against real q8_0/q4_0 GGUF files.
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>

#include "testutil.h"

#include "dtype.h"
#include "quant.h"
#include "tensor.h"

/* Slack for float rounding in x * (1/d) and q * d: a few ulps of the block max. */
#define QUANT_ULP_SLACK (8.0f * FLT_EPSILON)

static float
amax_of(const float *x, int n)
{
	float m = 0.0f;
	int j;

	for (j = 0; j < n; j++)
		m = fmaxf(m, fabsf(x[j]));
	return m;
}

static void
test_traits(void **state)
{
	const struct nesa_dtype_traits *t;
	enum nesa_dtype d;
	int64_t ok[2] = {3, 64}, bad[2] = {3, 48};
	size_t n;

	(void)state;
	t = nesa_dtype_traits(NESA_Q8_0);
	assert_non_null(t);
	assert_string_equal(t->name, "q8_0");
	assert_int_equal(t->block_size, 32);
	assert_int_equal(t->block_bytes, 34);
	assert_true(t->flags & NESA_DTYPE_QUANT);
	assert_non_null(t->validate);
	t = nesa_dtype_traits(NESA_Q4_0);
	assert_non_null(t);
	assert_string_equal(t->name, "q4_0");
	assert_int_equal(t->block_bytes, 18);
	assert_null(nesa_dtype_traits(18));
	assert_null(nesa_quant_traits(NESA_F32));
	assert_int_equal(nesa_dtype_from_name("q4_0", &d, NULL), NESA_OK);
	assert_int_equal((int)d, NESA_Q4_0);
	assert_true(nesa_dtype_bytes(NESA_Q8_0, 64, &n));
	assert_int_equal(n, 68);
	assert_false(nesa_dtype_bytes(NESA_Q4_0, 33, &n));
	assert_int_equal(nesa_shape_check(NESA_Q4_0, 2, ok, false, &n, "w", NULL), NESA_OK);
	assert_int_equal(n, 3 * 2 * 18);
	assert_int_equal(nesa_shape_check(NESA_Q8_0, 2, bad, false, &n, "w", NULL), NESA_ESHAPE);
	assert_non_null(strstr(nesa_dtype_list(), "q8_0, q4_0"));
}

/* Hand-built blocks decode as the ggml layout says. */
static void
test_layout(void **state)
{
	unsigned char raw8[34], raw4[18];
	struct nesa_block_q8_0 b8;
	struct nesa_block_q4_0 b4;
	float y[32];
	int j;

	(void)state;
	assert_int_equal(offsetof(struct nesa_block_q8_0, qs), 2);
	assert_int_equal(offsetof(struct nesa_block_q4_0, qs), 2);
	/* q8_0: f16 0.5 = 0x3800 little-endian, then quants j - 16. */
	raw8[0] = 0x00;
	raw8[1] = 0x38;
	for (j = 0; j < 32; j++)
		raw8[2 + j] = (unsigned char)(int8_t)(j - 16);
	memcpy(&b8, raw8, sizeof b8);
	nesa_dequantize_q8_0_ref(&b8, y, 32);
	for (j = 0; j < 32; j++)
		assert_true(y[j] == 0.5f * (float)(j - 16));
	/* q4_0: f16 -2.0 = 0xc000; byte j holds element j (low) and j + 16 (high). */
	raw4[0] = 0x00;
	raw4[1] = 0xc0;
	for (j = 0; j < 16; j++)
		raw4[2 + j] = (unsigned char)(j | (15 - j) << 4);
	memcpy(&b4, raw4, sizeof b4);
	nesa_dequantize_q4_0_ref(&b4, y, 32);
	for (j = 0; j < 16; j++) {
		assert_true(y[j] == -2.0f * (float)(j - 8));
		assert_true(y[16 + j] == -2.0f * (float)(15 - j - 8));
	}
	/* And the quantizers write those bytes back. */
	for (j = 0; j < 32; j++)
		y[j] = 0.5f * (float)(j - 16);
	y[0] = -63.5f; /* amax 63.5 -> d = 0.5 exactly */
	nesa_quantize_q8_0_ref(y, &b8, 32);
	memcpy(raw8, &b8, sizeof raw8);
	assert_int_equal(raw8[0], 0x00);
	assert_int_equal(raw8[1], 0x38);
	assert_int_equal((int8_t)raw8[2], -127);
	for (j = 1; j < 32; j++)
		assert_int_equal((int8_t)raw8[2 + j], j - 16);
	for (j = 0; j < 32; j++)
		y[j] = j < 16 ? -2.0f * (float)(j - 8) : -2.0f * (float)(15 - (j - 16) - 8);
	nesa_quantize_q4_0_ref(y, &b4, 32);
	memcpy(raw8, &b4, sizeof b4);
	/* The extreme is +16 (element 0), so d = 16 / -8 = -2: the same block. */
	assert_memory_equal(raw8, raw4, sizeof raw4);
}

/*
 * Round trip of random blocks at many scales.  q8_0: |x - deq| <= d/2 +
 * 127 |d - f16(d)| (d = amax/127); q4_0: <= |d| + 8 |d - f16(d)| for every
 * element, and <= |d|/2 + 8 |d - f16(d)| where x/d < 6.5 (no saturation).
 */
static void
test_roundtrip(void **state)
{
	uint64_t rng = 137;
	float x[32], y[32];
	struct nesa_block_q8_0 b8;
	struct nesa_block_q4_0 b4;
	int it, j;

	(void)state;
	for (it = 0; it < 4000; it++) {
		/* 1e-6 .. 1e5: q4_0 scales of larger blocks overflow f16 (8 * 65504). */
		float scale = powf(10.0f, (float)(it % 12) - 6.0f);
		float amax, d, d16, m = 0.0f, slack;

		for (j = 0; j < 32; j++)
			x[j] = test_randf(&rng) * scale;
		amax = amax_of(x, 32);
		slack = QUANT_ULP_SLACK * amax;

		nesa_quantize_q8_0_ref(x, &b8, 32);
		nesa_dequantize_q8_0_ref(&b8, y, 32);
		d = amax / 127.0f;
		d16 = nesa_f16_to_f32(b8.d);
		if (d >= 0x1p-14f) /* a normal half: the documented 0.563 d bound */
			assert_true(0.5f * d + 127.0f * fabsf(d - d16) <= 0.563f * d);
		for (j = 0; j < 32; j++)
			assert_true(fabsf(x[j] - y[j]) <= 0.5f * d + 127.0f * fabsf(d - d16) + slack);

		for (j = 0; j < 32; j++)
			if (fabsf(x[j]) > fabsf(m))
				m = x[j];
		nesa_quantize_q4_0_ref(x, &b4, 32);
		nesa_dequantize_q4_0_ref(&b4, y, 32);
		d = m / -8.0f;
		d16 = nesa_f16_to_f32(b4.d);
		for (j = 0; j < 32; j++) {
			float e = fabsf(x[j] - y[j]);

			assert_true(e <= fabsf(d) + 8.0f * fabsf(d - d16) + slack);
			if (x[j] / d < 6.5f)
				assert_true(e <= 0.5f * fabsf(d) + 8.0f * fabsf(d - d16) + slack);
		}
	}
}

/* Both sides of the rounding boundaries, with exact scales (d = 1). */
static void
test_boundaries(void **state)
{
	float x[32] = {0}, y[32];
	struct nesa_block_q8_0 b8;
	struct nesa_block_q4_0 b4;

	(void)state;
	/* q8_0, d = 127/127 = 1: ties round away from zero. */
	x[0] = 127.0f;
	x[1] = 0.5f;
	x[2] = -0.5f;
	x[3] = 1.5f;
	x[4] = 0.49999997f;
	x[5] = 126.5f;
	x[6] = -126.49999f;
	nesa_quantize_q8_0_ref(x, &b8, 32);
	assert_int_equal(b8.d, 0x3c00);
	assert_int_equal(b8.qs[0], 127);
	assert_int_equal(b8.qs[1], 1);
	assert_int_equal(b8.qs[2], -1);
	assert_int_equal(b8.qs[3], 2);
	assert_int_equal(b8.qs[4], 0);
	assert_int_equal(b8.qs[5], 127);
	assert_int_equal(b8.qs[6], -126);
	assert_int_equal(b8.qs[7], 0);

	/* q4_0 with m = -8, d = 1: code = trunc(x + 8.5), saturating at 15. */
	memset(x, 0, sizeof x);
	x[0] = -8.0f;
	x[1] = 6.5f;       /* 15.0 -> 15 -> value 7, error 0.5 */
	x[2] = 6.499f;     /* 14.999 -> 14 -> value 6 */
	x[3] = 8.0f;       /* saturates: value 7, error 1 = |d| */
	x[4] = -0.5f;      /* 8.0 -> 8 -> value 0 (half rounds up) */
	x[5] = -0.50001f;  /* 7.99999 -> 7 -> value -1 */
	x[17] = 3.0f;      /* high nibble of byte 1 */
	nesa_quantize_q4_0_ref(x, &b4, 32);
	assert_int_equal(b4.d, 0x3c00);
	assert_int_equal(b4.qs[0] & 0x0f, 0);
	assert_int_equal(b4.qs[1] & 0x0f, 15);
	assert_int_equal(b4.qs[1] >> 4, 11);
	assert_int_equal(b4.qs[2] & 0x0f, 14);
	assert_int_equal(b4.qs[3] & 0x0f, 15);
	assert_int_equal(b4.qs[4] & 0x0f, 8);
	assert_int_equal(b4.qs[5] & 0x0f, 7);
	assert_int_equal(b4.qs[6], 0x88);
	nesa_dequantize_q4_0_ref(&b4, y, 32);
	assert_true(y[0] == -8.0f && y[1] == 7.0f && y[2] == 6.0f && y[3] == 7.0f);
	assert_true(y[17] == 3.0f);
	/* A positive extreme flips the sign of d. */
	x[0] = 8.0f;
	x[3] = 0.0f;
	nesa_quantize_q4_0_ref(x, &b4, 32);
	assert_int_equal(b4.d, 0xbc00); /* -1.0 */
	nesa_dequantize_q4_0_ref(&b4, y, 32);
	assert_true(y[0] == 8.0f);
}

/* An all-zero block gets scale 0 and zero quants: no NaN anywhere. */
static void
test_zero_block(void **state)
{
	float x[64] = {0}, y[64];
	struct nesa_block_q8_0 b8[2];
	struct nesa_block_q4_0 b4[2];
	int j;

	(void)state;
	x[40] = -0.0f;
	nesa_quantize_q8_0_ref(x, b8, 64);
	nesa_quantize_q4_0_ref(x, b4, 64);
	for (j = 0; j < 2; j++) {
		assert_int_equal(b8[j].d & 0x7fff, 0);
		assert_int_equal(b4[j].d & 0x7fff, 0);
	}
	for (j = 0; j < 32; j++)
		assert_int_equal(b8[0].qs[j], 0);
	for (j = 0; j < 16; j++)
		assert_int_equal(b4[1].qs[j], 0x88);
	nesa_dequantize_q8_0_ref(b8, y, 64);
	for (j = 0; j < 64; j++)
		assert_true(y[j] == 0.0f);
	nesa_dequantize_q4_0_ref(b4, y, 64);
	for (j = 0; j < 64; j++)
		assert_true(y[j] == 0.0f);
	assert_int_equal(nesa_validate_q8_0(b8, 64, NULL), NESA_OK);
	assert_true(nesa_vec_dot_q4_0_f32_ref(64, b4, x) == 0.0f);
}

/* One huge outlier wipes the small values but stays within the bound. */
static void
test_outlier(void **state)
{
	float x[32], y[32], d, d16;
	struct nesa_block_q8_0 b8;
	struct nesa_block_q4_0 b4;
	struct nesa_err err;
	uint64_t rng = 7;
	int j;

	(void)state;
	for (j = 0; j < 32; j++)
		x[j] = 1e-3f * test_randf(&rng);
	x[13] = 1e4f;
	nesa_quantize_q8_0_ref(x, &b8, 32);
	nesa_dequantize_q8_0_ref(&b8, y, 32);
	d = 1e4f / 127.0f;
	d16 = nesa_f16_to_f32(b8.d);
	assert_int_equal(b8.qs[13], 127);
	for (j = 0; j < 32; j++) {
		if (j != 13)
			assert_int_equal(b8.qs[j], 0);
		assert_true(fabsf(x[j] - y[j]) <= 0.5f * d + 127.0f * fabsf(d - d16) + 1e-2f);
	}
	nesa_quantize_q4_0_ref(x, &b4, 32);
	nesa_dequantize_q4_0_ref(&b4, y, 32);
	assert_true(fabsf(y[13] - 1e4f) <= 8.0f * fabsf(1e4f / 8.0f - fabsf(nesa_f16_to_f32(b4.d))));
	assert_int_equal(nesa_validate_q4_0(&b4, 32, &err), NESA_OK);

	/* Beyond 65504 * 127 the scale overflows f16: validation refuses it. */
	x[13] = 1e7f;
	nesa_quantize_q8_0_ref(x, &b8, 32);
	assert_int_equal(b8.d & 0x7fff, 0x7c00);
	assert_int_equal(nesa_validate_q8_0(&b8, 32, &err), NESA_EFORMAT);
}

/* Denormal inputs: scales underflow to (or near) zero without NaN. */
static void
test_denormals(void **state)
{
	float x[32], y[32];
	struct nesa_block_q8_0 b8;
	struct nesa_block_q4_0 b4;
	int it, j;

	(void)state;
	for (it = 0; it < 3; it++) {
		/* f32 denormals, tiny normals, and values whose half scale is subnormal. */
		float s = it == 0 ? 1e-40f : it == 1 ? 1e-30f : 3e-6f;
		float amax, d, d16, m = 0.0f, slack;

		for (j = 0; j < 32; j++)
			x[j] = s * (float)(j - 15);
		amax = amax_of(x, 32);
		/* Plus the absolute rounding of arithmetic on f32 denormals. */
		slack = QUANT_ULP_SLACK * amax + 1e-44f;
		nesa_quantize_q8_0_ref(x, &b8, 32);
		nesa_dequantize_q8_0_ref(&b8, y, 32);
		d = amax / 127.0f;
		d16 = nesa_f16_to_f32(b8.d);
		assert_int_equal(nesa_validate_q8_0(&b8, 32, NULL), NESA_OK);
		for (j = 0; j < 32; j++) {
			assert_false(isnan(y[j]));
			assert_true(fabsf(x[j] - y[j]) <= 0.5f * d + 127.0f * fabsf(d - d16) + slack);
		}
		for (j = 0; j < 32; j++)
			if (fabsf(x[j]) > fabsf(m))
				m = x[j];
		nesa_quantize_q4_0_ref(x, &b4, 32);
		nesa_dequantize_q4_0_ref(&b4, y, 32);
		d = m / -8.0f;
		d16 = nesa_f16_to_f32(b4.d);
		assert_int_equal(nesa_validate_q4_0(&b4, 32, NULL), NESA_OK);
		for (j = 0; j < 32; j++) {
			assert_false(isnan(y[j]));
			assert_true(fabsf(x[j] - y[j]) <= fabsf(d) + 8.0f * fabsf(d - d16) + slack);
		}
	}
}

/* NaN and infinite scales are refused, naming the block; finite ones pass. */
static void
test_validate(void **state)
{
	static const uint16_t bad[] = {0x7c00, 0xfc00, 0x7e00, 0xffff, 0x7c01};
	struct nesa_block_q8_0 b8[3];
	struct nesa_block_q4_0 b4[3];
	struct nesa_err err;
	float x[96];
	size_t i;
	int j;

	(void)state;
	memset(b8, 0, sizeof b8);
	memset(b4, 0, sizeof b4);
	b8[0].d = 0x7bff; /* 65504, the largest finite half */
	b8[1].d = 0x0001; /* smallest subnormal */
	b4[0].d = 0xfbff;
	assert_int_equal(nesa_validate_q8_0(b8, 96, &err), NESA_OK);
	assert_int_equal(nesa_validate_q4_0(b4, 96, &err), NESA_OK);
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		b8[2].d = bad[i];
		b4[2].d = bad[i];
		nesa_err_clear(&err);
		assert_int_equal(nesa_validate_q8_0(b8, 96, &err), NESA_EFORMAT);
		assert_non_null(strstr(err.msg, "q8_0 block 2 has a non-finite scale"));
		assert_int_equal(nesa_validate_q4_0(b4, 96, &err), NESA_EFORMAT);
		assert_non_null(strstr(err.msg, "q4_0 block 2"));
		assert_int_equal(nesa_dtype_traits(NESA_Q4_0)->validate(b4, 96, NULL), NESA_EFORMAT);
	}
	/* Quantizing an infinity yields a block the validator refuses; NaN -> 0. */
	for (j = 0; j < 96; j++)
		x[j] = (float)j;
	x[40] = INFINITY;
	x[70] = NAN;
	nesa_quantize_q8_0_ref(x, b8, 96);
	assert_int_equal(nesa_validate_q8_0(b8, 96, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "block 1"));
	assert_int_equal(b8[2].qs[70 - 64], 0);
	assert_int_equal(b8[2].qs[95 - 64], 127);
	nesa_quantize_q4_0_ref(x, b4, 96);
	assert_int_equal(nesa_validate_q4_0(b4, 96, &err), NESA_EFORMAT);
	assert_int_equal(b4[2].qs[70 - 64] & 0x0f, 8);
}

/* The dot products equal dequantize-then-dot (double reference). */
static void
test_dot(void **state)
{
	enum { N = 512 };
	static float w[N], x[N], deq[N];
	static struct nesa_block_q8_0 b8[N / 32];
	static struct nesa_block_q4_0 b4[N / 32];
	uint64_t rng = 2024;
	int it, j;

	(void)state;
	for (it = 0; it < 50; it++) {
		double ref8 = 0, ref4 = 0, mag8 = 0, mag4 = 0;
		float got;

		for (j = 0; j < N; j++) {
			w[j] = test_randf(&rng) * (float)(1 + it);
			x[j] = test_randf(&rng);
		}
		nesa_quantize_q8_0_ref(w, b8, N);
		nesa_dequantize_q8_0_ref(b8, deq, N);
		for (j = 0; j < N; j++) {
			ref8 += (double)deq[j] * x[j];
			mag8 += fabs((double)deq[j] * x[j]);
		}
		nesa_quantize_q4_0_ref(w, b4, N);
		nesa_dequantize_q4_0_ref(b4, deq, N);
		for (j = 0; j < N; j++) {
			ref4 += (double)deq[j] * x[j];
			mag4 += fabs((double)deq[j] * x[j]);
		}
		/* Float accumulation inside a block: bound by eps times the sum of |terms|. */
		got = nesa_vec_dot_q8_0_f32_ref(N, b8, x);
		assert_true(fabs(got - ref8) <= 1e-6 + 64 * FLT_EPSILON * mag8);
		got = nesa_vec_dot_q4_0_f32_ref(N, b4, x);
		assert_true(fabs(got - ref4) <= 1e-6 + 64 * FLT_EPSILON * mag4);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_traits),
		cmocka_unit_test(test_layout),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_boundaries),
		cmocka_unit_test(test_zero_block),
		cmocka_unit_test(test_outlier),
		cmocka_unit_test(test_denormals),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_dot),
	};

	return cmocka_run_group_tests_name("quant", tests, NULL, NULL);
}
