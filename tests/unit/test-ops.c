/* SPDX-License-Identifier: MIT */
/* Unit tests for ops: fast kernels against their references, known values. */
#include "config.h"

#include <math.h>
#include <stdio.h>

#include "testutil.h"

#include "ops.h"
#include "tensor.h"

#define ATOL 1e-5f
#define RTOL 1e-4f

static void
assert_close(const float *a, const float *ref, int64_t n, float atol, float rtol)
{
	int64_t i;

	for (i = 0; i < n; i++)
		if (!(fabsf(a[i] - ref[i]) <= atol + rtol * fabsf(ref[i]))) {
			fprintf(stderr, "element %lld: %.9g vs reference %.9g\n", (long long)i, a[i], ref[i]);
			fail();
		}
}

static void
fill(float *x, int64_t n, uint64_t *seed)
{
	int64_t i;

	for (i = 0; i < n; i++)
		x[i] = test_randf(seed);
}

static void
test_linear_against_ref(void **state)
{
	static const int dtypes[] = {NESA_F32, NESA_F16, NESA_BF16};
	uint64_t seed = 137;
	size_t d;

	(void)state;
	for (d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
		int64_t rows;

		for (rows = 1; rows <= 9; rows += 8) {
			const int64_t in = 37, out = 23;
			int64_t shape[2] = {out, in};
			struct nesa_tensor *w = nesa_tensor_new("w", dtypes[d], 2, shape, NULL);
			float wf[37 * 23], x[9 * 37], b[23], y[9 * 23], ref[9 * 23], scratch[37];

			assert_non_null(w);
			fill(wf, in * out, &seed);
			nesa_dtype_traits(dtypes[d])->from_f32(wf, w->data, in * out);
			fill(x, rows * in, &seed);
			fill(b, out, &seed);
			nesa_linear(x, rows, in, w, b, y, scratch);
			nesa_linear_ref(x, rows, in, w, b, ref);
			assert_close(y, ref, rows * out, ATOL, RTOL);
			nesa_linear(x, rows, in, w, NULL, y, scratch);
			nesa_linear_ref(x, rows, in, w, NULL, ref);
			assert_close(y, ref, rows * out, ATOL, RTOL);
			nesa_tensor_free(w);
		}
	}
}

static void
test_conv2d_against_ref(void **state)
{
	static const int cfg[][8] = {
		/* C, H, W, O, k, stride, pad, groups */
		{3, 9, 8, 4, 3, 1, 1, 1},
		{4, 10, 10, 6, 5, 2, 2, 2},
		{2, 7, 5, 4, 1, 2, 0, 1},
		{4, 6, 6, 4, 3, 1, 0, 4},
	};
	uint64_t seed = 7;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
		const int C = cfg[i][0], H = cfg[i][1], W = cfg[i][2], O = cfg[i][3], k = cfg[i][4];
		const int s = cfg[i][5], p = cfg[i][6], g = cfg[i][7];
		const int Ho = nesa_conv_out(H, k, s, p), Wo = nesa_conv_out(W, k, s, p);
		static float x[3][4 * 10 * 10], y[3][6 * 10 * 10], ref[3][6 * 10 * 10];
		float w[6 * 4 * 5 * 5], b[6];
		size_t len;
		int im;

		for (im = 0; im < 3; im++)
			fill(x[im], C * H * W, &seed);
		fill(w, O * (C / g) * k * k, &seed);
		fill(b, O, &seed);
		/* Scratch for one image at a time, and for all three at once. */
		for (len = (size_t)(C / g * k * k + O / g) * (size_t)(Ho * Wo); len < 1000000; len *= 3) {
			float *scratch = malloc(len * sizeof *scratch);
			float *xs = malloc(sizeof x), *ys = malloc(sizeof y);

			for (im = 0; im < 3; im++)
				memcpy(xs + im * C * H * W, x[im], (size_t)(C * H * W) * sizeof(float));
			nesa_conv2d(xs, 3, C, H, W, w, b, O, k, k, s, s, p, p, g, ys, scratch, len);
			for (im = 0; im < 3; im++) {
				nesa_conv2d_ref(x[im], C, H, W, w, b, O, k, k, s, s, p, p, g, ref[im]);
				assert_close(ys + im * O * Ho * Wo, ref[im], O * Ho * Wo, ATOL, RTOL);
			}
			free(scratch);
			free(xs);
			free(ys);
		}
	}
}

static void
test_known_values(void **state)
{
	float x[4] = {1.0f, -1.0f, 0.0f, 3.0f}, y[4], sm[3] = {1.0f, 2.0f, 3.0f};

	(void)state;
	/* References from the closed forms, computed in double. */
	nesa_gelu(x, y, 4);
	assert_true(fabsf(y[0] - 0.8413447460685429f) < 1e-6f);
	assert_true(fabsf(y[1] + 0.15865525393145707f) < 1e-6f);
	assert_true(y[2] == 0.0f);
	nesa_gelu_tanh(x, y, 4);
	assert_true(fabsf(y[0] - 0.8411919906082768f) < 1e-6f);
	nesa_silu(x, y, 4);
	assert_true(fabsf(y[0] - 0.7310585786300049f) < 1e-6f);
	assert_true(fabsf(y[3] - 2.8577223804673f) < 1e-5f);
	nesa_relu(x, y, 4);
	assert_true(y[1] == 0.0f && y[3] == 3.0f);
	nesa_softmax(sm, 1, 3);
	assert_true(fabsf(sm[0] - 0.09003057317038046f) < 1e-6f);
	assert_true(fabsf(sm[2] - 0.6652409557748219f) < 1e-6f);
}

static void
test_norms(void **state)
{
	float x[2 * 4] = {1, 2, 3, 4, -1, 0, 1, 2}, w[4] = {1, 1, 2, 0.5f}, b[4] = {0, 1, 0, 0}, y[8];
	double rms = sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-5);

	(void)state;
	nesa_rmsnorm(x, w, y, 2, 4, 1e-5f);
	assert_true(fabs(y[2] - 3 * 2 / rms) < 1e-6);
	nesa_layernorm(x, w, b, y, 2, 4, 1e-5f);
	/* Row 0: mean 2.5, biased variance 1.25. */
	assert_true(fabs(y[1] - ((2 - 2.5) / sqrt(1.25 + 1e-5) + 1)) < 1e-6);
	assert_true(fabs(y[3] - (4 - 2.5) / sqrt(1.25 + 1e-5) * 0.5) < 1e-6);
}

/*
 * Half-split rope on a vector whose dims are permuted (pair i at i and
 * i + n/2) equals interleaved rope on the original, permuted the same way:
 * the two layouts are the same rotation.
 */
static void
test_rope_layouts(void **state)
{
	enum { HEADS = 2, HD = 8 };
	float a[HEADS * HD], h[HEADS * HD];
	uint32_t pos[1] = {5};
	uint64_t seed = 3;
	int i, k;

	(void)state;
	fill(a, HEADS * HD, &seed);
	for (k = 0; k < HEADS; k++)
		for (i = 0; i < HD / 2; i++) {
			h[k * HD + i] = a[k * HD + 2 * i];
			h[k * HD + i + HD / 2] = a[k * HD + 2 * i + 1];
		}
	nesa_rope(a, 1, HEADS, HD, HD, 10000.0f, 0, pos);
	nesa_rope(h, 1, HEADS, HD, HD, 10000.0f, 1, pos);
	for (k = 0; k < HEADS; k++)
		for (i = 0; i < HD / 2; i++) {
			assert_true(a[k * HD + 2 * i] == h[k * HD + i]);
			assert_true(a[k * HD + 2 * i + 1] == h[k * HD + i + HD / 2]);
		}
	/* Position 0 is the identity. */
	pos[0] = 0;
	memcpy(h, a, sizeof h);
	nesa_rope(a, 1, HEADS, HD, HD, 10000.0f, 0, pos);
	assert_memory_equal(a, h, sizeof h);
}

static void
test_pools(void **state)
{
	float x[1 * 4 * 4], y[4];
	int i;

	(void)state;
	for (i = 0; i < 16; i++)
		x[i] = (float)i;
	nesa_maxpool(x, 1, 4, 4, 2, 2, 2, 2, 0, 0, y);
	assert_true(y[0] == 5 && y[1] == 7 && y[2] == 13 && y[3] == 15);
	nesa_avgpool(x, 1, 4, 4, 2, 2, 2, 2, 0, 0, y);
	assert_true(y[0] == 2.5f && y[3] == 12.5f);
	/* Padding is excluded from averages and never wins a max. */
	nesa_avgpool(x, 1, 4, 4, 3, 3, 3, 3, 1, 1, y);
	assert_true(y[0] == (0 + 1 + 4 + 5) / 4.0f);
}

/* The vector kernels against plain loops, at lengths around every tail. */
static void
test_vector_kernels(void **state)
{
	static float a[300], b[300], y[300], ref[300], w[37 * 300];
	uint64_t seed = 11;
	int64_t n, i, o;

	(void)state;
	fill(a, 300, &seed);
	fill(b, 300, &seed);
	fill(w, 37 * 300, &seed);
	for (n = 0; n <= 300; n += (n < 70 ? 1 : 23)) {
		double d = 0;

		for (i = 0; i < n; i++)
			d += (double)a[i] * b[i];
		assert_true(fabs(nesa_dot_f32(a, b, n) - d) <= 1e-5 + 1e-5 * fabs(d));
		memcpy(y, b, sizeof y);
		memcpy(ref, b, sizeof ref);
		nesa_axpy_f32(0.37f, a, y, n);
		for (i = 0; i < n; i++)
			ref[i] += 0.37f * a[i];
		assert_close(y, ref, 300, 1e-6f, 1e-6f);
		{
			float out[37], outref[37];

			nesa_gemv_f32(w, 37, n, a, out);
			for (o = 0; o < 37; o++) {
				double s = 0;

				for (i = 0; i < n; i++)
					s += (double)w[o * n + i] * a[i];
				outref[o] = (float)s;
			}
			assert_close(out, outref, 37, 1e-5f, 1e-5f);
		}
	}
	/* Special values go through unchanged: an infinity stays one. */
	a[3] = INFINITY;
	assert_true(isinf(nesa_dot_f32(a, b + 1, 40)) || isnan(nesa_dot_f32(a, b + 1, 40)));
}

/* Attention's fast paths (vector, GEMM) against the reference. */
static void
test_attention_against_ref(void **state)
{
	enum { HEADS = 6, KV = 2, HD = 12, CTX = 40 };
	static float q[CTX * HEADS * HD], k[CTX * KV * HD], v[CTX * KV * HD];
	static float out[CTX * HEADS * HD], ref[CTX * HEADS * HD], att[CTX * CTX];
	uint64_t seed = 5;
	int64_t rows;
	uint32_t pos0;

	(void)state;
	fill(q, CTX * HEADS * HD, &seed);
	fill(k, CTX * KV * HD, &seed);
	fill(v, CTX * KV * HD, &seed);
	for (rows = 1; rows <= 9; rows += 2)
		for (pos0 = 0; pos0 + rows <= CTX; pos0 += 13) {
			nesa_attention(q, rows, pos0, k, v, HEADS, KV, HD, 0.3f, out, att);
			nesa_attention_ref(q, rows, pos0, k, v, HEADS, KV, HD, 0.3f, ref, att);
			assert_close(out, ref, rows * HEADS * HD, ATOL, RTOL);
		}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_linear_against_ref),
		cmocka_unit_test(test_conv2d_against_ref),
		cmocka_unit_test(test_known_values),
		cmocka_unit_test(test_norms),
		cmocka_unit_test(test_rope_layouts),
		cmocka_unit_test(test_pools),
		cmocka_unit_test(test_vector_kernels),
		cmocka_unit_test(test_attention_against_ref),
	};

	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
