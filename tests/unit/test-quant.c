/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for quant: q8_0/q4_0 byte layouts, reference round-trip error
 * bounds, edge blocks (zeros, outliers, denormals, rounding ties and the q4_0
 * saturation boundary), scale validation, and the reference dot products.
 * Bit-compatibility with llama.cpp's quantizer is checked in test-gguf.c
 * against real q8_0/q4_0 GGUF files.
 *
 * Then the codebook formats (dyn8_B, lin8_B, nf4, nf4dq, fp4, fp4dq, q8o):
 * the codebooks against their constructions (paper.md section 2.7 check
 * values), the documented error bounds and nearest-code properties, edge
 * blocks, validation of corrupt payloads; and the fast kernels of every
 * instruction set this CPU has against the references: quantizers and
 * decoders bit for bit, the matrix product within its documented bounds,
 * on random, all-zero, outlier and denormal inputs, and under allocation
 * failure.
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>

#include "testutil.h"

#include "dtype.h"
#include "parallel.h"
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
	assert_null(nesa_dtype_traits(37));
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

/* ------------------------------------------------------------------ */
/* Codebook formats                                                   */

/* Every quantized type's row, as quant.h's table documents it. */
static void
test_table(void **state)
{
	static const struct {
		int id;
		const char *name;
		uint32_t block, bytes;
	} rows[] = {
		{16, "q8_0", 32, 34}, {17, "q4_0", 32, 18}, {18, "dyn8_64", 64, 68},
		{19, "dyn8_128", 128, 132}, {20, "dyn8_256", 256, 260}, {21, "dyn8_512", 512, 516},
		{22, "dyn8_1024", 1024, 1028}, {23, "dyn8_2048", 2048, 2052}, {24, "dyn8_4096", 4096, 4100},
		{25, "lin8_64", 64, 68}, {26, "lin8_128", 128, 132}, {27, "lin8_256", 256, 260},
		{28, "lin8_512", 512, 516}, {29, "lin8_1024", 1024, 1028}, {30, "lin8_2048", 2048, 2052},
		{31, "lin8_4096", 4096, 4100}, {32, "nf4", 64, 34}, {33, "nf4dq", 64, 38},
		{34, "fp4", 64, 34}, {35, "fp4dq", 64, 38}, {36, "q8o", 64, 72},
	};
	enum nesa_dtype d;
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		const struct nesa_dtype_traits *t = nesa_dtype_traits(rows[i].id);

		assert_non_null(t);
		assert_string_equal(t->name, rows[i].name);
		assert_int_equal(t->block_size, rows[i].block);
		assert_int_equal(t->block_bytes, rows[i].bytes);
		assert_true(t->flags & NESA_DTYPE_QUANT);
		assert_non_null(t->validate);
		assert_non_null(t->matmul);
		assert_int_equal(nesa_dtype_from_name(rows[i].name, &d, NULL), NESA_OK);
		assert_int_equal((int)d, rows[i].id);
		/* Bytes of three blocks, and one element too many is refused. */
		assert_true(nesa_dtype_bytes(rows[i].id, 3 * (int64_t)rows[i].block, &n));
		assert_int_equal(n, 3 * rows[i].bytes);
		assert_false(nesa_dtype_bytes(rows[i].id, 3 * (int64_t)rows[i].block + 1, &n));
	}
	for (i = 0; i < 7; i++) {
		assert_int_equal(nesa_dyn8_id(64 << i), 18 + (int)i);
		assert_int_equal(nesa_lin8_id(64 << i), 25 + (int)i);
	}
	assert_int_equal(nesa_dyn8_id(32), -1);
	assert_int_equal(nesa_lin8_id(8192), -1);
	/* The hivemind size formula without its code table: n + 4 ceil(n / B). */
	assert_true(nesa_dtype_bytes(NESA_DYN8_4096, 4096 * 245, &n));
	assert_int_equal(n, 4096 * 245 + 4 * 245);
}

/* Rows fit the largest block that divides them, then f16. */
static void
test_fit(void **state)
{
	(void)state;
	assert_int_equal(nesa_quant_fit(NESA_DYN8_4096, 8192), NESA_DYN8_4096);
	assert_int_equal(nesa_quant_fit(NESA_DYN8_4096, 768), NESA_DYN8_64 + 2); /* 256 */
	assert_int_equal(nesa_quant_fit(NESA_DYN8_4096, 64), NESA_DYN8_64);
	assert_int_equal(nesa_quant_fit(NESA_LIN8_4096, 2048), NESA_LIN8_64 + 5);
	assert_int_equal(nesa_quant_fit(NESA_DYN8_64, 32), NESA_F16);
	assert_int_equal(nesa_quant_fit(NESA_Q8_0, 172), NESA_F16);
	assert_int_equal(nesa_quant_fit(NESA_Q8_0, 64), NESA_Q8_0);
	assert_int_equal(nesa_quant_fit(NESA_NF4DQ, 96), NESA_F16);
	assert_int_equal(nesa_quant_fit(NESA_Q8O, 96), NESA_Q8_0);
	assert_int_equal(nesa_quant_fit(NESA_Q8O, 7), NESA_F16);
	assert_int_equal(nesa_quant_fit(NESA_BF16, 7), NESA_BF16);
	assert_int_equal(nesa_quant_fit(NESA_F32, 7), NESA_F32);
}

/* paper.md section 2.7: the construction and its check values. */
static void
test_dyn8_map(void **state)
{
	double v[256];
	int i, j, k, n = 0, neg = 0;

	(void)state;
	for (i = 0; i < 7; i++)
		for (j = 0; j < (1 << i); j++) {
			double lo = 0.1 + 0.9 * j / (1 << i), hi = 0.1 + 0.9 * (j + 1) / (1 << i);

			v[n++] = pow(10.0, i - 6) * (lo + hi) / 2;
			v[n++] = -pow(10.0, i - 6) * (lo + hi) / 2;
		}
	assert_int_equal(n, 254);
	v[n++] = 0.0;
	v[n++] = 1.0;
	/* Insertion sort: 256 values. */
	for (i = 1; i < n; i++)
		for (k = i; k > 0 && v[k - 1] > v[k]; k--) {
			double t = v[k];

			v[k] = v[k - 1];
			v[k - 1] = t;
		}
	for (i = 0; i < 256; i++) {
		assert_true(nesa_dyn8_map[i] == (float)v[i]);
		if (i > 0)
			assert_true(nesa_dyn8_map[i] > nesa_dyn8_map[i - 1]);
		neg += nesa_dyn8_map[i] < 0.0f;
	}
	assert_int_equal(neg, 127);
	assert_true(nesa_dyn8_map[127] == 0.0f);
	assert_true(nesa_dyn8_map[128] == 5.5e-7f);
	assert_true(nesa_dyn8_map[129] == 3.25e-6f && nesa_dyn8_map[130] == 7.75e-6f);
	assert_true(nesa_dyn8_map[254] == 0.99296875f && nesa_dyn8_map[253] == 0.97890625f);
	assert_true(nesa_dyn8_map[255] == 1.0f);
	assert_true(nesa_dyn8_map[0] == -0.99296875f); /* no -1.0 */
	for (i = 1; i <= 127; i++)
		assert_true(nesa_dyn8_map[127 - i] == -nesa_dyn8_map[127 + i]);
}

/* Inverse normal CDF by bisection on erfc: slow, independent. */
static double
norm_ppf(double p)
{
	double lo = -10.0, hi = 10.0;
	int it;

	for (it = 0; it < 200; it++) {
		double mid = (lo + hi) / 2;

		if (0.5 * erfc(-mid / sqrt(2.0)) < p)
			lo = mid;
		else
			hi = mid;
	}
	return (lo + hi) / 2;
}

/* bitsandbytes create_normal_map(offset 0.9677083, use_extra_value). */
static void
test_4bit_maps(void **state)
{
	const double off = 0.9677083;
	double v[16], top;
	int k, n = 0;

	(void)state;
	for (k = 0; k < 7; k++) /* negative side: 8 points, last dropped */
		v[n++] = -norm_ppf(off + (0.5 - off) * k / 7.0);
	v[n++] = 0.0;
	for (k = 7; k >= 0; k--) /* positive side: 9 points, last (0.5) dropped */
		v[n++] = norm_ppf(off + (0.5 - off) * k / 8.0);
	top = v[15];
	for (k = 0; k < 16; k++)
		assert_true(fabs(nesa_nf4_map[k] - v[k] / top) < 2e-6);
	for (k = 1; k < 16; k++)
		assert_true(nesa_nf4_map[k] > nesa_nf4_map[k - 1]);
	for (k = 0; k < 8; k++) {
		static const float e2m1[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};

		assert_true(fabsf(nesa_fp4_map[k] - e2m1[k] / 6.0f) <= FLT_EPSILON);
		assert_true(nesa_fp4_map[k + 8] == -nesa_fp4_map[k]);
	}
}

/* The dynamic code is the nearest entry, ties toward zero, NaN to 0. */
static void
test_dyn8_code(void **state)
{
	uint64_t rng = 5;
	int it, k;

	(void)state;
	for (it = 0; it < 20000; it++) {
		float t = test_randf(&rng) * powf(10.0f, -(float)(it % 8)), best;
		int c = nesa_dyn8_code_ref(t);

		best = fabsf(t - nesa_dyn8_map[c]);
		for (k = 0; k < 256; k++)
			assert_true(best <= fabsf(t - nesa_dyn8_map[k]) * (1 + 4 * FLT_EPSILON));
	}
	for (k = 127; k < 255; k++) {
		float mid = 0.5f * (nesa_dyn8_map[k] + nesa_dyn8_map[k + 1]);

		/* Exactly on a decision point: toward zero, on both sides. */
		assert_int_equal(nesa_dyn8_code_ref(mid), k);
		assert_int_equal(nesa_dyn8_code_ref(nextafterf(mid, 2.0f)), k + 1);
		if (k < 254) {
			assert_int_equal(nesa_dyn8_code_ref(-mid), 254 - k);
			assert_int_equal(nesa_dyn8_code_ref(-nextafterf(mid, 2.0f)), 253 - k);
		}
	}
	assert_int_equal(nesa_dyn8_code_ref(1.0f), 255);
	assert_int_equal(nesa_dyn8_code_ref(-1.0f), 0);
	assert_int_equal(nesa_dyn8_code_ref(-0.0f), 127);
	assert_int_equal(nesa_dyn8_code_ref(NAN), 127);
	assert_int_equal(nesa_dyn8_code_ref(1e-30f), 127);
}

/* The codebook types, for loops: id, and whether it codes a 4-bit map. */
static const int book_types[] = {
	18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36,
};
#define N_BOOK (sizeof book_types / sizeof book_types[0])
#define MAXN 8192

static int
block_of(int id)
{
	return (int)nesa_dtype_traits(id)->block_size;
}

/* Sum of squared errors of coding x (n) against scale s with a 4-bit map. */
static double
sse_map(const float *x, int n, float s, const float *map)
{
	double sse = 0;
	int j, k;

	for (j = 0; j < n; j++) {
		double best = INFINITY;

		for (k = 0; k < 16; k++)
			best = fmin(best, fabs((double)x[j] - (double)map[k] * s));
		sse += best * best;
	}
	return sse;
}

/*
 * The documented bound of one block of type id: x (block values) against
 * y, its decoding.  raw is the block's bytes.
 */
static void
check_block(int id, const float *x, const float *y, const unsigned char *raw)
{
	int b = block_of(id), j, k;
	/* Ulps of the block max, and of f32 denormal scales (127 of 2^-149). */
	float amax = amax_of(x, b), slack = QUANT_ULP_SLACK * amax + 128 * 0x1p-149f;

	for (j = 0; j < b; j++)
		assert_false(isnan(y[j]));
	if (id >= 18 && id <= 24) {
		for (j = 0; j < b; j++) {
			assert_true(fabsf(x[j] - y[j]) <= 0.00703125f * amax + slack);
			if (fabsf(x[j]) >= 0.1f * amax) /* the map's relative resolution there */
				assert_true(fabsf(x[j] - y[j]) <= 0.07f * fabsf(x[j]) + slack);
		}
	} else if (id >= 25 && id <= 31) {
		for (j = 0; j < b; j++)
			assert_true(fabsf(x[j] - y[j]) <= 0.5f * amax / 127.0f + slack);
	} else if (id == NESA_NF4 || id == NESA_FP4) {
		const float *map = id == NESA_NF4 ? nesa_nf4_map : nesa_fp4_map;
		uint16_t h;
		float d, a16 = nesa_f16_to_f32(nesa_f32_to_f16(amax));
		double sse = 0;

		memcpy(&h, raw, 2);
		d = nesa_f16_to_f32(h);
		for (j = 0; j < b; j++) {
			sse += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
			/* Nearest code for the stored scale. */
			for (k = 0; k < 16; k++)
				assert_true(fabsf(x[j] - y[j]) <= fabsf(x[j] - map[k] * d) + slack);
		}
		/* Never worse than plain absmax scaling (the k = 0 candidate). */
		assert_true(sse <= sse_map(x, b, a16, map) * (1 + 1e-5) + 1e-30);
	} else if (id == NESA_NF4DQ || id == NESA_FP4DQ) {
		const float *map = id == NESA_NF4DQ ? nesa_nf4_map : nesa_fp4_map;
		const struct nesa_block_4bit_dq *blk = (const void *)raw;
		float d = nesa_f16_to_f32(blk->d);

		for (k = 0; k < 4; k++) {
			const float *xs = x + 16 * k, *ys = y + 16 * k;
			float s = d * nesa_dyn8_map[blk->sc[k]];
			float near = d != 0.0f ? d * nesa_dyn8_map[nesa_dyn8_code_ref(amax_of(xs, 16) / d)] : 0.0f;
			double sse = 0;
			int q;

			for (j = 0; j < 16; j++) {
				sse += ((double)xs[j] - ys[j]) * ((double)xs[j] - ys[j]);
				for (q = 0; q < 16; q++)
					assert_true(fabsf(xs[j] - ys[j]) <= fabsf(xs[j] - map[q] * s) + slack);
			}
			if (near != 0.0f)
				assert_true(sse <= sse_map(xs, 16, near, map) * (1 + 1e-5) + 1e-30);
		}
	} else if (id == NESA_Q8O) {
		const struct nesa_block_q8o *blk = (const void *)raw;
		float rest = 0, d, d16;

		for (k = 0; k < 2; k++) {
			assert_true(y[blk->idx[k]] == nesa_f16_to_f32(nesa_f32_to_f16(x[blk->idx[k]])));
			assert_true(fabsf(x[blk->idx[k]]) >= fabsf(x[blk->idx[1 - k]]) || k == 1);
		}
		for (j = 0; j < b; j++)
			if (j != blk->idx[0] && j != blk->idx[1]) {
				assert_true(fabsf(x[j]) <= fabsf(x[blk->idx[1]]));
				rest = fmaxf(rest, fabsf(x[j]));
			}
		d = rest / 127.0f;
		d16 = nesa_f16_to_f32(blk->d);
		for (j = 0; j < b; j++)
			if (j != blk->idx[0] && j != blk->idx[1])
				assert_true(fabsf(x[j] - y[j]) <= 0.5f * d + 127.0f * fabsf(d - d16) + slack);
	}
}

/* Fills x (n) with one of the edge patterns of the tests below. */
static void
fill(float *x, int n, int pattern, uint64_t *rng)
{
	int j;

	for (j = 0; j < n; j++) {
		float r = test_randf(rng);

		switch (pattern) {
		case 0: x[j] = r * powf(10.0f, (float)(j / 64 % 9) - 4.0f); break; /* random, many scales */
		case 1: x[j] = 0.0f; break;                                          /* all zero */
		case 2: x[j] = j % 97 == 5 ? 1e4f : 1e-3f * r; break;               /* one huge outlier */
		case 3: x[j] = r * 1e-40f; break;                                    /* f32 denormals */
		default: x[j] = (float)(int)(r * 4.0f) * 0.25f; break;               /* ties on a grid */
		}
	}
}

/* Round trips of every codebook type against its documented bound. */
static void
test_codebook_roundtrip(void **state)
{
	static float x[MAXN], y[MAXN];
	static unsigned char q[MAXN * 2];
	uint64_t rng = 99;
	size_t i;
	int p, blk;

	(void)state;
	for (i = 0; i < N_BOOK; i++) {
		int id = book_types[i], b = block_of(id), n = b * (b >= 4096 ? 2 : 4096 / b);
		const struct nesa_dtype_traits *t = nesa_dtype_traits(id);

		for (p = 0; p < 5; p++) {
			fill(x, n, p, &rng);
			nesa_quant_from_f32_ref(id, x, q, n);
			assert_int_equal(nesa_quant_validate(id, q, n, NULL), NESA_OK);
			nesa_quant_to_f32_ref(id, q, y, n);
			for (blk = 0; blk < n / b; blk++)
				check_block(id, x + blk * b, y + blk * b, q + (size_t)blk * t->block_bytes);
			if (p == 1) /* all zero: zero scale, zeros out */
				for (blk = 0; blk < n; blk++)
					assert_true(y[blk] == 0.0f);
		}
	}
}

/* NaN elements code as zero; an infinity makes a scale the validator refuses. */
static void
test_codebook_nonfinite(void **state)
{
	static float x[4096], y[4096];
	static unsigned char q[8192];
	size_t i;
	int j;

	(void)state;
	for (i = 0; i < N_BOOK; i++) {
		int id = book_types[i], n = block_of(id);

		for (j = 0; j < n; j++)
			x[j] = (float)(j % 7) - 3.0f;
		x[1] = NAN;
		nesa_quant_from_f32_ref(id, x, q, n);
		nesa_quant_to_f32_ref(id, q, y, n);
		assert_true(y[1] == 0.0f || id == NESA_Q8O);
		assert_int_equal(nesa_quant_validate(id, q, n, NULL), NESA_OK);
		x[2] = INFINITY;
		nesa_quant_from_f32_ref(id, x, q, n);
		assert_int_equal(nesa_quant_validate(id, q, n, NULL), NESA_EFORMAT);
	}
}

/* Corrupt payloads are refused, naming the type and block. */
static void
test_codebook_validate(void **state)
{
	static float x[256];
	static unsigned char q[1024];
	struct nesa_err err;
	float inf = INFINITY, nan = NAN;
	size_t i;
	int j;

	(void)state;
	for (j = 0; j < 256; j++)
		x[j] = (float)j;
	for (i = 0; i < N_BOOK; i++) {
		int id = book_types[i], b = block_of(id), n = b >= 128 ? b : 2 * b;
		size_t bytes = nesa_dtype_traits(id)->block_bytes;

		if (n > 256)
			continue;
		nesa_quant_from_f32_ref(id, x, q, n);
		assert_int_equal(nesa_quant_validate(id, q, n, &err), NESA_OK);
		if (id <= 31) { /* an f32 scale */
			memcpy(q + bytes * (size_t)(n / b - 1), &nan, 4);
			assert_int_equal(nesa_quant_validate(id, q, n, &err), NESA_EFORMAT);
			assert_non_null(strstr(err.msg, nesa_dtype_name(id)));
			assert_non_null(strstr(err.msg, "non-finite scale"));
			memcpy(q + bytes * (size_t)(n / b - 1), &inf, 4);
			assert_int_equal(nesa_dtype_traits(id)->validate(q, n, NULL), NESA_EFORMAT);
		} else { /* an f16 scale first */
			q[bytes * (size_t)(n / b - 1) + 1] = 0x7c;
			assert_int_equal(nesa_quant_validate(id, q, n, &err), NESA_EFORMAT);
			assert_non_null(strstr(err.msg, "non-finite scale"));
		}
	}
	/* q8o: an outlier out of its block, or not finite. */
	nesa_quant_from_f32_ref(NESA_Q8O, x, q, 64);
	q[2] = 64;
	assert_int_equal(nesa_quant_validate(NESA_Q8O, q, 64, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "outlier position 64"));
	nesa_quant_to_f32_ref(NESA_Q8O, q, x, 64); /* decoders stay inside the block */
	nesa_quant_from_f32_ref(NESA_Q8O, x, q, 64);
	q[7] = 0x7e;
	q[6] = 0x00;
	assert_int_equal(nesa_quant_validate(NESA_Q8O, q, 64, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "non-finite outlier"));
}

/* ------------------------------------------------------------------ */
/* Fast kernels against the references                                */

/* Quantizers and decoders give the reference's bytes and floats exactly. */
static void
test_fast_bitexact(void **state)
{
	static float x[MAXN], y0[MAXN], y1[MAXN];
	static unsigned char q0[MAXN * 2], q1[MAXN * 2];
	static struct nesa_block_q8x a0[MAXN / 32], a1[MAXN / 32];
	static const int all[] = {1, 2, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 31, 32, 33, 34, 35, 36};
	enum nesa_isa best = nesa_quant_isa_best(), lvl;
	uint64_t rng = 1234;
	size_t i;
	int p;

	(void)state;
	for (lvl = NESA_ISA_REF; lvl <= best; lvl++) {
		assert_int_equal(nesa_quant_set_isa(lvl), lvl);
		for (p = 0; p < 6; p++) {
			fill(x, 8192, p < 5 ? p : 0, &rng);
			if (p == 5) { /* non-finite and signed-zero elements */
				x[3] = NAN;
				x[100] = -0.0f;
				x[200] = INFINITY;
				x[5000] = -INFINITY;
			}
			for (i = 0; i < sizeof all / sizeof all[0]; i++) {
				int id = all[i];
				size_t bytes;

				assert_true(nesa_dtype_bytes(id, 8192, &bytes));
				nesa_quant_from_f32_ref(id, x, q0, 8192);
				nesa_quant_from_f32(id, x, q1, 8192);
				assert_memory_equal(q0, q1, bytes);
				nesa_quant_to_f32_ref(id, q0, y0, 8192);
				nesa_quant_to_f32(id, q0, y1, 8192);
				assert_memory_equal(y0, y1, sizeof y0);
				/* The traits' conversions are the fast ones. */
				nesa_dtype_traits(id)->to_f32(q0, y1, 8192);
				assert_memory_equal(y0, y1, sizeof y0);
			}
			nesa_quantize_q8x_ref(x, a0, 8192);
			nesa_quantize_q8x(x, a1, 8192);
			assert_memory_equal(a0, a1, sizeof a0);
		}
	}
	nesa_quant_set_isa(best);
	assert_string_equal(nesa_isa_name(NESA_ISA_AVX512), "avx512");
	assert_int_equal(nesa_quant_isa(), best);
}

/* Bounds of nesa_matmul against nesa_matmul_ref, per quant.h. */
struct mm_case {
	int id, out, in, rows;
};

static void
check_matmul(const struct mm_case *c, const float *w32, const float *x)
{
	size_t row;
	unsigned char *wq;
	float *y = malloc((size_t)(c->rows * c->out) * sizeof *y);
	float *ref = malloc((size_t)(c->rows * c->out) * sizeof *ref);
	float *deq = malloc((size_t)c->in * sizeof *deq);
	struct nesa_block_q8x *xq = malloc((size_t)(c->in / 32) * sizeof *xq);
	bool int_path = (c->id == NESA_Q8_0 || c->id == NESA_Q4_0 || (c->id >= 25 && c->id <= 31)) &&
	                c->rows < 16;
	int r, o, j;

	assert_true(nesa_dtype_bytes(c->id, c->in, &row));
	wq = malloc(row * (size_t)c->out);
	assert_true(y != NULL && ref != NULL && deq != NULL && xq != NULL && wq != NULL);
	for (o = 0; o < c->out; o++)
		nesa_quant_from_f32_ref(c->id, w32 + (size_t)o * c->in, wq + row * (size_t)o, c->in);
	nesa_matmul_ref(c->id, wq, row, c->out, c->in, x, c->rows, ref);
	/* The hook for quantized types; plain f16/bf16/f32 rows may not have it. */
	if (nesa_dtype_traits(c->id)->matmul != NULL)
		nesa_dtype_traits(c->id)->matmul(wq, row, c->out, c->in, x, c->rows, y);
	else
		nesa_matmul(c->id, wq, row, c->out, c->in, x, c->rows, y);
	for (r = 0; r < c->rows; r++) {
		const float *xr = x + (size_t)r * c->in;

		if (c->in % 32 == 0)
			nesa_quantize_q8x_ref(xr, xq, c->in);
		for (o = 0; o < c->out; o++) {
			double mag = 0, act = 0, got = y[r * c->out + o], want = ref[r * c->out + o];

			nesa_quant_to_f32_ref(c->id, wq + row * (size_t)o, deq, c->in);
			for (j = 0; j < c->in; j++) {
				mag += fabs((double)deq[j] * xr[j]);
				/* Activation rounding: half a step of x's block scale, or all of a block coded as 0. */
				if (int_path)
					act += fabs((double)deq[j]) *
					       (xq[j / 32].d != 0.0f ? 0.5001 * xq[j / 32].d : amax_of(xr + j / 32 * 32, 32));
			}
			if (int_path) {
				double i8 = nesa_vec_dot_q8x_ref(c->id, c->in, wq + row * (size_t)o, xq);

				assert_true(fabs(got - i8) <= 1e-5 * (mag + act) + 1e-30);
				assert_true(fabs(got - want) <= act + c->in * 0x1p-23 * mag + 1e-30);
			} else {
				assert_true(fabs(got - want) <= c->in * 0x1p-23 * mag + 1e-30);
			}
		}
	}
	free(y);
	free(ref);
	free(deq);
	free(xq);
	free(wq);
}

static void
test_fast_matmul(void **state)
{
	static const int ids[] = {0, 1, 2, 16, 17, 18, 20, 24, 25, 27, 31, 32, 33, 34, 35, 36};
	static const int rows[] = {1, 3, 20};
	enum nesa_isa best = nesa_quant_isa_best(), lvl;
	uint64_t rng = 77;
	float *w = malloc(9 * 4096 * sizeof *w), *x = malloc(20 * 4096 * sizeof *x);
	size_t i, r;
	int p;

	(void)state;
	assert_true(w != NULL && x != NULL);
	for (lvl = NESA_ISA_REF; lvl <= best; lvl++) {
		nesa_quant_set_isa(lvl);
		for (i = 0; i < sizeof ids / sizeof ids[0]; i++)
			for (r = 0; r < sizeof rows / sizeof rows[0]; r++)
				for (p = 0; p < 4; p++) {
					/* 4096-element blocks need whole rows of them; others take 320 (f16: 172). */
					struct mm_case c = {ids[i], 9, block_of(ids[i]) == 4096 ? 4096 : 320, rows[r]};

					if (ids[i] >= 32 || (ids[i] >= 18 && ids[i] <= 31))
						c.in = block_of(ids[i]) == 4096 ? 4096 : 512;
					if (ids[i] == NESA_F16 && p == 0)
						c.in = 172;
					fill(w, c.out * c.in, p == 1 ? 1 : 0, &rng); /* zero weights once */
					fill(x, c.rows * c.in, p == 2 ? 2 : p == 3 ? 3 : 0, &rng);
					check_matmul(&c, w, x);
				}
	}
	nesa_quant_set_isa(best);
	free(w);
	free(x);
}

/*
 * Long inputs put the activation blocks on the heap, prefill tiles too;
 * when allocation fails the product takes smaller steps and still
 * returns the same numbers (the integer path) or within bounds (tiles).
 */
static void
test_matmul_oom(void **state)
{
	enum { OUT = 5, IN = 4096, ROWS = 24 };
	static float w[OUT * IN], x[ROWS * IN], y0[ROWS * OUT], y1[ROWS * OUT];
	static struct nesa_block_q8_0 wq[OUT * IN / 32];
	uint64_t rng = 3;
	int rows;

	(void)state;
	fill(w, OUT * IN, 0, &rng);
	fill(x, ROWS * IN, 0, &rng);
	nesa_quantize_q8_0_ref(w, wq, OUT * IN);
	for (rows = 10; rows <= ROWS; rows += 14) {
		struct mm_case c = {NESA_Q8_0, OUT, IN, rows};

		nesa_matmul(NESA_Q8_0, wq, IN / 32 * sizeof wq[0], OUT, IN, x, rows, y0);
		test_faults_arm(1);
		nesa_matmul(NESA_Q8_0, wq, IN / 32 * sizeof wq[0], OUT, IN, x, rows, y1);
		test_faults_disarm();
		if (rows < 16)
			assert_memory_equal(y0, y1, sizeof(float) * (size_t)(rows * OUT));
		check_matmul(&c, w, x);
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
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_fit),
		cmocka_unit_test(test_dyn8_map),
		cmocka_unit_test(test_4bit_maps),
		cmocka_unit_test(test_dyn8_code),
		cmocka_unit_test(test_codebook_roundtrip),
		cmocka_unit_test(test_codebook_nonfinite),
		cmocka_unit_test(test_codebook_validate),
		cmocka_unit_test(test_fast_bitexact),
		cmocka_unit_test(test_fast_matmul),
		cmocka_unit_test(test_matmul_oom),
	};
	int rc = cmocka_run_group_tests_name("quant", tests, NULL, NULL);

	nesa_parallel_shutdown();
	return rc;
}
