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

/*
 * Low-rank linear: y = x W^T + (x B^T) A^T + b against the explicit
 * product with W + A B formed in double, with and without W, the bias,
 * f32 and f16 factors, one row (our GEMV) and several (BLAS); the fast
 * kernel against its _ref.
 */
static void
test_linear_lowrank(void **state)
{
	enum { IN = 40, OUT = 24, R = 5, ROWS = 4 };
	static const int dtypes[] = {NESA_F32, NESA_F16};
	const int64_t sw[2] = {OUT, IN}, sa[2] = {OUT, R}, sb[2] = {R, IN};
	uint64_t seed = 11;
	size_t d;

	(void)state;
	for (d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
		struct nesa_tensor *w = nesa_tensor_new("w", dtypes[d], 2, sw, NULL);
		struct nesa_tensor *a = nesa_tensor_new("a", dtypes[d], 2, sa, NULL);
		struct nesa_tensor *bt = nesa_tensor_new("b", dtypes[d], 2, sb, NULL);
		float wf[OUT * IN], af[OUT * R], bf[R * IN], x[ROWS * IN], bias[OUT];
		float y[ROWS * OUT], y2[ROWS * OUT], ref[ROWS * OUT];
		float scratch[ROWS * (R + OUT) + OUT * R]; /* A converted whole: rows of R < 32 */
		int64_t rows;
		int with_w, o, i, r, t;

		assert_non_null(w);
		assert_non_null(a);
		assert_non_null(bt);
		assert_true(nesa_linear_lowrank_scratch(ROWS, IN, OUT, R) <= sizeof scratch / sizeof scratch[0]);
		fill(wf, OUT * IN, &seed);
		fill(af, OUT * R, &seed);
		fill(bf, R * IN, &seed);
		fill(x, ROWS * IN, &seed);
		fill(bias, OUT, &seed);
		/* What the tensors hold, decoded, is what the products must use. */
		nesa_dtype_traits(dtypes[d])->from_f32(wf, w->data, OUT * IN);
		nesa_dtype_traits(dtypes[d])->from_f32(af, a->data, OUT * R);
		nesa_dtype_traits(dtypes[d])->from_f32(bf, bt->data, R * IN);
		nesa_tensor_to_f32(w, wf);
		nesa_tensor_to_f32(a, af);
		nesa_tensor_to_f32(bt, bf);
		for (with_w = 0; with_w < 2; with_w++)
			for (rows = 1; rows <= ROWS; rows += ROWS - 1) {
				for (r = 0; r < rows; r++)
					for (o = 0; o < OUT; o++) {
						double s = bias[o];

						for (i = 0; i < IN; i++) {
							double wab = with_w ? wf[o * IN + i] : 0.0;

							for (t = 0; t < R; t++)
								wab += (double)af[o * R + t] * bf[t * IN + i];
							s += wab * x[r * IN + i];
						}
						ref[r * OUT + o] = (float)s;
					}
				nesa_linear_lowrank(x, rows, IN, with_w ? w : NULL, a, bt, bias, y, scratch);
				nesa_linear_lowrank_ref(x, rows, IN, with_w ? w : NULL, a, bt, bias, y2, scratch);
				assert_close(y, ref, rows * OUT, ATOL, RTOL);
				assert_close(y2, ref, rows * OUT, ATOL, RTOL);
				assert_close(y, y2, rows * OUT, ATOL, RTOL);
			}
		nesa_tensor_free(w);
		nesa_tensor_free(a);
		nesa_tensor_free(bt);
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

static void
test_dot_i8(void **state)
{
	static int8_t a[300], b[300];
	uint64_t seed = 21;
	int64_t n, i;

	(void)state;
	for (i = 0; i < 300; i++) {
		a[i] = (int8_t)((int)(test_rand(&seed) % 255) - 127);
		b[i] = (int8_t)((int)(test_rand(&seed) % 255) - 127);
	}
	for (n = 0; n <= 300; n += (n < 130 ? 1 : 17))
		assert_int_equal(nesa_dot_i8(a, b, n), nesa_dot_i8_ref(a, b, n));
	/* The extremes: every product at its largest, of both signs. */
	for (i = 0; i < 300; i++) {
		a[i] = (int8_t)(i % 2 ? 127 : -127);
		b[i] = (int8_t)(i % 3 ? -127 : 127);
	}
	assert_int_equal(nesa_dot_i8(a, b, 300), nesa_dot_i8_ref(a, b, 300));
}

/* Quantizes W (out, in) per row as a decomposition tool would. */
static void
quant_rows(const float *w, int64_t out, int64_t in, int8_t *w8, float *sw)
{
	int64_t o, c;

	for (o = 0; o < out; o++) {
		float amax = 0;

		for (c = 0; c < in; c++)
			amax = fmaxf(amax, fabsf(w[o * in + c]));
		sw[o] = amax / 127.0f;
		for (c = 0; c < in; c++)
			w8[o * in + c] = (int8_t)nearbyintf(amax > 0 ? w[o * in + c] * 127.0f / amax : 0.0f);
	}
}

/*
 * LLM.int8(): fast and reference kernels agree exactly; the product stays
 * within the bound of nesa-decompose(1) — for each output
 * sum_c (|x_c| sw/2 + |W_c| sx/2 + sw sx/4) over the int8 columns — and an
 * outlier column taken out (statically or at run time) removes its error.
 */
static void
test_linear_int8(void **state)
{
	enum { ROWS = 3, IN = 70, OUT = 9 };
	static float x[ROWS * IN], w[OUT * IN], wo[OUT * 2], y[ROWS * OUT], y2[ROWS * OUT];
	static float ref[ROWS * OUT], sw[OUT];
	static int8_t w8[OUT * IN];
	static char scratch[8192];
	const int32_t oidx[2] = {5, 40};
	uint64_t seed = 9;
	int64_t r, o, c;
	int64_t shape[2] = {OUT, IN};
	struct nesa_tensor wt;

	(void)state;
	assert_true(nesa_linear_int8_scratch(ROWS, IN) <= sizeof scratch);
	fill(x, ROWS * IN, &seed);
	fill(w, OUT * IN, &seed);
	quant_rows(w, OUT, IN, w8, sw);
	assert_int_equal(nesa_tensor_init(&wt, NESA_F32, 2, shape, NULL), NESA_OK);
	wt.data = w;
	nesa_linear_ref(x, ROWS, IN, &wt, NULL, ref);
	nesa_linear_int8(x, ROWS, IN, w8, sw, OUT, NULL, NULL, 0, 0, NULL, y, scratch);
	nesa_linear_int8_ref(x, ROWS, IN, w8, sw, OUT, NULL, NULL, 0, 0, NULL, y2, scratch);
	assert_memory_equal(y, y2, sizeof y);
	for (r = 0; r < ROWS; r++) {
		float sx = 0;

		for (c = 0; c < IN; c++)
			sx = fmaxf(sx, fabsf(x[r * IN + c]));
		sx /= 127.0f;
		for (o = 0; o < OUT; o++) {
			double bound = 1e-5;

			for (c = 0; c < IN; c++)
				bound += fabsf(x[r * IN + c]) * sw[o] / 2 + fabsf(w[o * IN + c]) * sx / 2 + sw[o] * sx / 4;
			assert_true(fabs(y[r * OUT + o] - ref[r * OUT + o]) <= bound);
		}
	}
	/* A column 100 times larger than the rest ruins every row's int8 scale... */
	for (r = 0; r < ROWS; r++)
		x[r * IN + 40] = 100.0f;
	nesa_linear_ref(x, ROWS, IN, &wt, NULL, ref);
	nesa_linear_int8(x, ROWS, IN, w8, sw, OUT, NULL, NULL, 0, 0, NULL, y, scratch);
	{
		double err_plain = 0, err_static = 0, err_dynamic = 0;

		for (r = 0; r < ROWS * OUT; r++)
			err_plain += fabs(y[r] - ref[r]);
		/* ...unless it goes through the f32 path with its original weights... */
		for (o = 0; o < OUT; o++) {
			wo[o * 2] = w[o * IN + 5];
			wo[o * 2 + 1] = w[o * IN + 40];
		}
		nesa_linear_int8(x, ROWS, IN, w8, sw, OUT, wo, oidx, 2, 0, NULL, y, scratch);
		nesa_linear_int8_ref(x, ROWS, IN, w8, sw, OUT, wo, oidx, 2, 0, NULL, y2, scratch);
		assert_memory_equal(y, y2, sizeof y);
		for (r = 0; r < ROWS * OUT; r++)
			err_static += fabs(y[r] - ref[r]);
		/* ...or is found at run time by the threshold. */
		nesa_linear_int8(x, ROWS, IN, w8, sw, OUT, NULL, NULL, 0, 6.0f, NULL, y, scratch);
		for (r = 0; r < ROWS * OUT; r++)
			err_dynamic += fabs(y[r] - ref[r]);
		/*
		 * Run-time outliers keep their activations exact but use dequantized
		 * weights, so calibrated outliers with their original weights win.
		 */
		fprintf(stderr, "# int8 error: plain %.4g, static outliers %.4g, run-time outliers %.4g\n",
		        err_plain, err_static, err_dynamic);
		assert_true(err_static * 20 < err_plain);
		assert_true(err_dynamic * 2 < err_plain);
		assert_true(err_static < err_dynamic);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_linear_against_ref),
		cmocka_unit_test(test_linear_lowrank),
		cmocka_unit_test(test_conv2d_against_ref),
		cmocka_unit_test(test_known_values),
		cmocka_unit_test(test_norms),
		cmocka_unit_test(test_rope_layouts),
		cmocka_unit_test(test_pools),
		cmocka_unit_test(test_vector_kernels),
		cmocka_unit_test(test_attention_against_ref),
		cmocka_unit_test(test_dot_i8),
		cmocka_unit_test(test_linear_int8),
	};

	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
