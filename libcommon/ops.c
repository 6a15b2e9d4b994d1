/* SPDX-License-Identifier: MIT */
/*
 * Kernels of the graph ops; see ops.h for each definition.  Accumulation is
 * in float except where a double is needed for a statistic over a long row
 * (norms), so results match the usual PyTorch float32 references closely.
 */
#include "config.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "alloc.h"
#include "ops.h"
#include "parallel.h"

static float
dot_f32(const float *a, const float *b, int64_t n)
{
	float s = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

void
nesa_linear_ref(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
                const float *b, float *y)
{
	const struct nesa_dtype_traits *tr = nesa_dtype_traits(w->dtype);
	const int64_t nb = tr->block_size;
	int64_t out = w->shape[0], r, o, i, j;
	float tmp[NESA_MAX_BLOCK]; /* (block_size) one decoded block */

	for (o = 0; o < out; o++) {
		const char *src = (const char *)w->data + (size_t)o * w->stride[0];

		for (r = 0; r < rows; r++) {
			double s = 0;

			/* Block by block through the traits: slow, obviously right. */
			for (i = 0; i < in; i += nb) {
				tr->to_f32(src + (size_t)(i / nb) * tr->block_bytes, tmp, nb);
				for (j = 0; j < nb; j++)
					s += (double)tmp[j] * x[r * in + i + j];
			}
			y[r * out + o] = (float)s + (b != NULL ? b[o] : 0.0f);
		}
	}
}

void
nesa_linear(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w, const float *b,
            float *y, float *scratch)
{
	int64_t out = w->shape[0], r, o;

	if (w->dtype == NESA_F32) {
		const float *W = w->data;

		/* A row or two: our GEMV; more: BLAS GEMM, which reuses each weight for every row. */
		if (rows <= 2)
			for (r = 0; r < rows; r++)
				nesa_gemv_f32(W, out, in, x + r * in, y + r * out);
		else
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)in,
			            1.0f, x, (int)in, W, (int)in, 0.0f, y, (int)out);
	} else if (nesa_dtype_traits(w->dtype)->matmul != NULL) {
		nesa_dtype_traits(w->dtype)->matmul(w->data, w->stride[0], out, in, x, rows, y);
	} else {
		const struct nesa_dtype_traits *tr = nesa_dtype_traits(w->dtype);

		/* Convert one weight row at a time so memory stays at one row. */
		for (o = 0; o < out; o++) {
			tr->to_f32((const char *)w->data + (size_t)o * w->stride[0], scratch, in);
			for (r = 0; r < rows; r++)
				y[r * out + o] = dot_f32(scratch, x + r * in, in);
		}
	}
	if (b != NULL)
		for (r = 0; r < rows; r++)
			for (o = 0; o < out; o++)
				y[r * out + o] += b[o];
}

/* Rows shorter than this in a converted dtype leave the fused kernels (32-element activation blocks). */
#define SHORT_ROW 32

size_t
nesa_linear_lowrank_scratch(int64_t rows, int64_t in, int64_t out, int64_t r)
{
	/*
	 * t = x B^T (rows, r), u = t A^T (rows, out), then room for one
	 * converted weight row (max(in, r)) or a whole factor with short rows,
	 * A (out, r) or B (r, in), converted to f32 at once.
	 */
	int64_t conv = in > r ? in : r;

	if (r < SHORT_ROW && out * r > conv)
		conv = out * r;
	if (in < SHORT_ROW && r * in > conv)
		conv = r * in;
	return (size_t)(rows * (r + out) + conv);
}

/*
 * One factor's product in the fast version: nesa_linear, except for a
 * factor whose rows are shorter than 32 in a converted dtype (A's rows of
 * r, r often 8 or 16, in f16), which the fused kernels' 32-element
 * activation blocks do not cover: that factor is converted to f32 into
 * conv as a whole (one call, not one per row) and multiplied in f32.
 */
static void
factor_linear(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *f, const float *b,
              float *y, float *conv)
{
	struct nesa_tensor f32;

	if (f->dtype == NESA_F32 || in >= SHORT_ROW ||
	    nesa_tensor_init(&f32, NESA_F32, 2, f->shape, NULL) != NESA_OK) {
		nesa_linear(x, rows, in, f, b, y, conv);
		return;
	}
	nesa_tensor_to_f32(f, conv);
	f32.data = conv;
	nesa_linear(x, rows, in, &f32, b, y, NULL);
}

/* The low-rank product with either factor_linear or nesa_linear_ref for each factor. */
static void
linear_lowrank(bool fast, const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
               const struct nesa_tensor *a, const struct nesa_tensor *bf, const float *b, float *y,
               float *scratch)
{
	const int64_t out = a->shape[0], r = a->shape[1];
	float *t = scratch;            /* (rows, r) */
	float *u = t + rows * r;       /* (rows, out) */
	float *conv = u + rows * out;  /* (max(in, r)) */
	int64_t i;

	if (fast)
		factor_linear(x, rows, in, bf, NULL, t, conv);
	else
		nesa_linear_ref(x, rows, in, bf, NULL, t);
	/* Without a full weight the second factor writes y directly, bias included. */
	if (w == NULL) {
		if (fast)
			factor_linear(t, rows, r, a, b, y, conv);
		else
			nesa_linear_ref(t, rows, r, a, b, y);
		return;
	}
	if (fast) {
		nesa_linear(x, rows, in, w, b, y, conv);
		factor_linear(t, rows, r, a, NULL, u, conv);
	} else {
		nesa_linear_ref(x, rows, in, w, b, y);
		nesa_linear_ref(t, rows, r, a, NULL, u);
	}
	for (i = 0; i < rows * out; i++)
		y[i] += u[i];
}

void
nesa_linear_lowrank(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
                    const struct nesa_tensor *a, const struct nesa_tensor *bf, const float *b,
                    float *y, float *scratch)
{
	linear_lowrank(true, x, rows, in, w, a, bf, b, y, scratch);
}

void
nesa_linear_lowrank_ref(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
                        const struct nesa_tensor *a, const struct nesa_tensor *bf, const float *b,
                        float *y, float *scratch)
{
	linear_lowrank(false, x, rows, in, w, a, bf, b, y, scratch);
}

void
nesa_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t dim, float eps)
{
	int64_t r, i;

	for (r = 0; r < rows; r++) {
		const float *xr = x + r * dim;
		float *yr = y + r * dim;
		float ss = 0, inv;

		for (i = 0; i < dim; i++)
			ss += xr[i] * xr[i];
		inv = 1.0f / sqrtf(ss / (float)dim + eps);
		for (i = 0; i < dim; i++)
			yr[i] = xr[i] * inv * w[i];
	}
}

void
nesa_layernorm(const float *x, const float *w, const float *b, float *y, int64_t rows, int64_t dim,
               float eps)
{
	int64_t r, i;

	for (r = 0; r < rows; r++) {
		const float *xr = x + r * dim;
		float *yr = y + r * dim;
		double mean = 0, var = 0;
		float inv, m;

		for (i = 0; i < dim; i++)
			mean += xr[i];
		mean /= (double)dim;
		for (i = 0; i < dim; i++)
			var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
		var /= (double)dim;
		inv = (float)(1.0 / sqrt(var + (double)eps));
		m = (float)mean;
		for (i = 0; i < dim; i++)
			yr[i] = (xr[i] - m) * inv * w[i] + (b != NULL ? b[i] : 0.0f);
	}
}

void
nesa_softmax(float *x, int64_t rows, int64_t dim)
{
	int64_t r, i;

	for (r = 0; r < rows; r++) {
		float *xr = x + r * dim, mx = -INFINITY, sum = 0;

		for (i = 0; i < dim; i++)
			if (xr[i] > mx)
				mx = xr[i];
		for (i = 0; i < dim; i++) {
			xr[i] = expf(xr[i] - mx);
			sum += xr[i];
		}
		for (i = 0; i < dim; i++)
			xr[i] /= sum;
	}
}

void
nesa_rope(float *x, int64_t rows, int n_heads, int head_dim, int n_rot, float theta, int half_split,
          const uint32_t *pos)
{
	int64_t r;
	int h, i, half = n_rot / 2;

	for (r = 0; r < rows; r++) {
		float *xr = x + r * (int64_t)n_heads * head_dim;

		for (i = 0; i < half; i++) {
			/* Same expression as llama2.c and HF so the angles match to the bit. */
			float freq = 1.0f / powf(theta, (float)(2 * i) / (float)n_rot);
			float ang = (float)pos[r] * freq;
			float c = cosf(ang), s = sinf(ang);

			for (h = 0; h < n_heads; h++) {
				float *v = xr + h * head_dim;
				int a = half_split ? i : 2 * i, b = half_split ? i + half : 2 * i + 1;
				float v0 = v[a], v1 = v[b];

				v[a] = v0 * c - v1 * s;
				v[b] = v0 * s + v1 * c;
			}
		}
	}
}

void
nesa_silu(const float *x, float *y, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		y[i] = x[i] / (1.0f + expf(-x[i]));
}

void
nesa_relu(const float *x, float *y, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		y[i] = x[i] > 0 ? x[i] : 0.0f;
}

void
nesa_gelu(const float *x, float *y, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

void
nesa_gelu_tanh(const float *x, float *y, int64_t n)
{
	const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
	int64_t i;

	for (i = 0; i < n; i++)
		y[i] = 0.5f * x[i] * (1.0f + tanhf(k * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
}

void
nesa_add(const float *a, const float *b, float *y, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		y[i] = a[i] + b[i];
}

void
nesa_mul(const float *a, const float *b, float *y, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		y[i] = a[i] * b[i];
}

void
nesa_attention_ref(const float *q, int64_t rows, uint32_t pos0, const float *kc, const float *vc,
               int n_heads, int n_kv, int head_dim, float scale, float *out, float *att)
{
	int64_t qdim = (int64_t)n_heads * head_dim, kvdim = (int64_t)n_kv * head_dim;
	int group = n_heads / n_kv;
	int64_t r, t;
	int h, d;

	for (r = 0; r < rows; r++) {
		int64_t n_ctx = (int64_t)pos0 + r + 1;

		for (h = 0; h < n_heads; h++) {
			const float *qh = q + r * qdim + (int64_t)h * head_dim;
			const int64_t koff = (int64_t)(h / group) * head_dim;
			float *oh = out + r * qdim + (int64_t)h * head_dim;
			float mx = -INFINITY, sum = 0;

			for (t = 0; t < n_ctx; t++) {
				att[t] = dot_f32(qh, kc + t * kvdim + koff, head_dim) * scale;
				if (att[t] > mx)
					mx = att[t];
			}
			for (t = 0; t < n_ctx; t++) {
				att[t] = expf(att[t] - mx);
				sum += att[t];
			}
			memset(oh, 0, (size_t)head_dim * sizeof *oh);
			for (t = 0; t < n_ctx; t++) {
				const float *vt = vc + t * kvdim + koff;
				float a = att[t] / sum;

				for (d = 0; d < head_dim; d++)
					oh[d] += a * vt[d];
			}
		}
	}
}

struct head_job {
	const float *q, *kc, *vc;
	float *out, *att;
	int64_t rows;
	uint32_t pos0;
	int n_heads, group, head_dim;
	int64_t qdim, kvdim, n_ctx;
	float scale;
};

/* Heads [h0, h1) of a few rows; head h keeps its scores at att + h * n_ctx. */
static void
heads_part(void *ctx, int64_t h0, int64_t h1)
{
	const struct head_job *j = ctx;
	int64_t r, t, h;

	for (h = h0; h < h1; h++) {
		float *att = j->att + h * j->n_ctx;
		const int64_t koff = (h / j->group) * j->head_dim;

		for (r = 0; r < j->rows; r++) {
			const int64_t n = (int64_t)j->pos0 + r + 1;
			const float *qh = j->q + r * j->qdim + h * j->head_dim;
			float *oh = j->out + r * j->qdim + h * j->head_dim, mx = -INFINITY, sum = 0;

			for (t = 0; t < n; t++) {
				att[t] = nesa_dot_f32(qh, j->kc + t * j->kvdim + koff, j->head_dim) * j->scale;
				mx = att[t] > mx ? att[t] : mx;
			}
			for (t = 0; t < n; t++)
				sum += (att[t] = expf(att[t] - mx));
			memset(oh, 0, (size_t)j->head_dim * sizeof *oh);
			for (t = 0; t < n; t++)
				nesa_axpy_f32(att[t] / sum, j->vc + t * j->kvdim + koff, oh, j->head_dim);
		}
	}
}

void
nesa_attention(const float *q, int64_t rows, uint32_t pos0, const float *kc, const float *vc,
               int n_heads, int n_kv, int head_dim, float scale, float *out, float *att)
{
	const int64_t qdim = (int64_t)n_heads * head_dim, kvdim = (int64_t)n_kv * head_dim;
	const int64_t n_ctx = (int64_t)pos0 + rows;
	const int group = n_heads / n_kv;
	int64_t r, t;
	int h;

	/*
	 * A few rows gain nothing from GEMM calls: vector dot products per
	 * position, heads spread over the threads, each with its own scores.
	 */
	if (rows < 4) {
		struct head_job j = {q, kc, vc, out, att, rows, pos0, n_heads, group, head_dim, qdim,
		                     kvdim, n_ctx, scale};

		if (rows * n_ctx * n_heads * head_dim < 32768)
			heads_part(&j, 0, n_heads);
		else
			nesa_parallel_for(n_heads, 1, heads_part, &j);
		return;
	}
	for (h = 0; h < n_heads; h++) {
		const int64_t koff = (int64_t)(h / group) * head_dim;

		/* att (rows, n_ctx) = scale * Q_h K_h^T, then causal softmax, then att V_h. */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n_ctx, head_dim, scale,
		            q + (int64_t)h * head_dim, (int)qdim, kc + koff, (int)kvdim, 0.0f, att,
		            (int)n_ctx);
		for (r = 0; r < rows; r++) {
			float *ar = att + r * n_ctx, mx = -INFINITY, sum = 0;
			const int64_t last = (int64_t)pos0 + r;

			for (t = 0; t <= last; t++)
				mx = ar[t] > mx ? ar[t] : mx;
			for (t = 0; t <= last; t++)
				sum += (ar[t] = expf(ar[t] - mx));
			for (t = 0; t <= last; t++)
				ar[t] /= sum;
			for (; t < n_ctx; t++)
				ar[t] = 0;
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, head_dim, (int)n_ctx, 1.0f,
		            att, (int)n_ctx, vc + koff, (int)kvdim, 0.0f, out + (int64_t)h * head_dim,
		            (int)qdim);
	}
}

void
nesa_conv2d_ref(const float *x, int C, int H, int W, const float *w, const float *b, int O, int kh,
                int kw, int sh, int sw, int ph, int pw, int groups, float *y)
{
	int Ho = nesa_conv_out(H, kh, sh, ph), Wo = nesa_conv_out(W, kw, sw, pw);
	int Cg = C / groups, Og = O / groups;
	int o, c, oy, ox, ky, kx;

	for (o = 0; o < O; o++) {
		int g = o / Og;

		for (oy = 0; oy < Ho; oy++)
			for (ox = 0; ox < Wo; ox++) {
				double s = b != NULL ? b[o] : 0.0;

				for (c = 0; c < Cg; c++)
					for (ky = 0; ky < kh; ky++)
						for (kx = 0; kx < kw; kx++) {
							int iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;

							if (iy < 0 || iy >= H || ix < 0 || ix >= W)
								continue;
							s += (double)w[((o * Cg + c) * kh + ky) * kw + kx] *
							     x[((g * Cg + c) * H + iy) * W + ix];
						}
				y[(o * Ho + oy) * Wo + ox] = (float)s;
			}
	}
}

/* im2col of one image's group channels into col rows (c, ky, kx), columns from col0 of ld. */
static void
im2col(const float *xg, int Cg, int H, int W, int kh, int kw, int sh, int sw, int ph, int pw,
       int Ho, int Wo, float *col, int64_t ld, int64_t col0)
{
	int c, ky, kx, oy, ox;

	for (c = 0; c < Cg; c++)
		for (ky = 0; ky < kh; ky++)
			for (kx = 0; kx < kw; kx++) {
				float *row = col + (int64_t)((c * kh + ky) * kw + kx) * ld + col0;
				const float *xc = xg + (size_t)c * (size_t)(H * W);
				/* Output columns whose input column is inside the image. */
				int lo = kx >= pw ? 0 : (pw - kx + sw - 1) / sw;
				int hi = W - 1 + pw - kx < 0 ? 0 : (W - 1 + pw - kx) / sw + 1;

				if (hi > Wo)
					hi = Wo;
				if (lo > hi)
					lo = hi;
				for (oy = 0; oy < Ho; oy++) {
					int iy = oy * sh - ph + ky;
					float *dst = row + oy * Wo;
					const float *src = xc + (int64_t)iy * W - pw + kx;

					if (iy < 0 || iy >= H) {
						memset(dst, 0, (size_t)Wo * sizeof *dst);
						continue;
					}
					memset(dst, 0, (size_t)lo * sizeof *dst);
					if (sw == 1)
						memcpy(dst + lo, src + lo, (size_t)(hi - lo) * sizeof *dst);
					else
						for (ox = lo; ox < hi; ox++)
							dst[ox] = src[ox * sw];
					memset(dst + hi, 0, (size_t)(Wo - hi) * sizeof *dst);
				}
			}
}

size_t
nesa_conv2d_scratch(int C, int Ho, int Wo, int O, int kh, int kw, int groups)
{
	const size_t per = (size_t)(C / groups * kh * kw + O / groups) * (size_t)(Ho * Wo);

	/* At least one image; else enough for several to make the GEMMs large. */
	return per > NESA_CONV_BUDGET ? per : NESA_CONV_BUDGET;
}

void
nesa_conv2d(const float *x, int64_t n, int C, int H, int W, const float *w, const float *b, int O,
            int kh, int kw, int sh, int sw, int ph, int pw, int groups, float *y, float *scratch,
            size_t scratch_len)
{
	const int Ho = nesa_conv_out(H, kh, sh, ph), Wo = nesa_conv_out(W, kw, sw, pw);
	const int Cg = C / groups, Og = O / groups, K = Cg * kh * kw, N = Ho * Wo;
	const int64_t per = (int64_t)(K + Og) * N;
	int64_t chunk = (int64_t)scratch_len / per, i0, i, o;
	int g;

	if (chunk < 1)
		chunk = 1;
	for (i0 = 0; i0 < n; i0 += chunk) {
		const int64_t m = n - i0 < chunk ? n - i0 : chunk, ld = m * N;
		float *col = scratch, *tmp = scratch + (int64_t)K * ld;

		for (g = 0; g < groups; g++) {
			/* col (K, m * N): the patches of m images side by side, one GEMM for all. */
			for (i = 0; i < m; i++)
				im2col(x + (size_t)(i0 + i) * (size_t)(C * H * W) + (size_t)g * (size_t)(Cg * H * W),
				       Cg, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, col, ld, i * N);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Og, (int)ld, K, 1.0f,
			            w + (size_t)g * (size_t)Og * (size_t)K, K, col, (int)ld, 0.0f, tmp, (int)ld);
			/* tmp (Og, m * N) -> y (m, O, N) with the bias. */
			for (i = 0; i < m; i++)
				for (o = 0; o < Og; o++) {
					float *dst = y + ((size_t)(i0 + i) * (size_t)O + (size_t)(g * Og + o)) * (size_t)N;
					const float *src = tmp + o * ld + i * N;
					const float bias = b != NULL ? b[g * Og + o] : 0.0f;
					int k;

					for (k = 0; k < N; k++)
						dst[k] = src[k] + bias;
				}
		}
	}
}

static void
pool(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, float *y,
     int is_max)
{
	int Ho = nesa_conv_out(H, kh, sh, ph), Wo = nesa_conv_out(W, kw, sw, pw);
	int c, oy, ox, ky, kx;

	for (c = 0; c < C; c++)
		for (oy = 0; oy < Ho; oy++)
			for (ox = 0; ox < Wo; ox++) {
				float m = -INFINITY, s = 0;
				int n = 0;

				for (ky = 0; ky < kh; ky++)
					for (kx = 0; kx < kw; kx++) {
						int iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;
						float v;

						if (iy < 0 || iy >= H || ix < 0 || ix >= W)
							continue;
						v = x[(c * H + iy) * W + ix];
						if (v > m)
							m = v;
						s += v;
						n++;
					}
				y[(c * Ho + oy) * Wo + ox] = is_max ? m : (n > 0 ? s / (float)n : 0.0f);
			}
}

void
nesa_maxpool(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph, int pw,
             float *y)
{
	pool(x, C, H, W, kh, kw, sh, sw, ph, pw, y, 1);
}

void
nesa_avgpool(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph, int pw,
             float *y)
{
	pool(x, C, H, W, kh, kw, sh, sw, ph, pw, y, 0);
}

int32_t
nesa_dot_i8_ref(const int8_t *a, const int8_t *b, int64_t n)
{
	int32_t s = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		s += (int32_t)a[i] * b[i];
	return s;
}

size_t
nesa_linear_int8_scratch(int64_t rows, int64_t in)
{
	/* x8 (rows, in), row scales (rows), column flags (in), outlier list (in), padding */
	return (size_t)(rows * in) + (size_t)rows * sizeof(float) + (size_t)in +
	       (size_t)in * sizeof(int32_t) + 4 * NESA_ALIGN;
}

struct int8_job {
	int32_t (*dot)(const int8_t *, const int8_t *, int64_t);
	const int8_t *x8, *w8;
	const float *sx, *sw;
	float *y;
	int64_t rows, in, out;
};

static void
int8_part(void *ctx, int64_t begin, int64_t end)
{
	const struct int8_job *j = ctx;
	int64_t o, r;

	for (o = begin; o < end; o++)
		for (r = 0; r < j->rows; r++)
			j->y[r * j->out + o] += (float)j->dot(j->x8 + r * j->in, j->w8 + o * j->in, j->in) *
			                        j->sx[r] * j->sw[o];
}

static void
linear_int8(int32_t (*dot)(const int8_t *, const int8_t *, int64_t), const float *x, int64_t rows,
            int64_t in, const int8_t *w8, const float *sw, int64_t out, const float *wo,
            const int32_t *oidx, int64_t k, float threshold, const float *b, float *y, void *scratch)
{
	/* Carve the scratch: keep each part aligned. */
	char *p = scratch;
	int8_t *x8 = (int8_t *)p;                         /* (rows, in) */
	float *sx;                                         /* (rows) */
	uint8_t *out_col;                                  /* (in) 1 for an outlier column */
	int32_t *dyn;                                      /* (in) run-time outlier columns */
	struct int8_job job;
	int64_t r, c, o, n_dyn = 0;

	p += ((size_t)(rows * in) + NESA_ALIGN - 1) / NESA_ALIGN * NESA_ALIGN;
	sx = (float *)(void *)p;
	p += ((size_t)rows * sizeof(float) + NESA_ALIGN - 1) / NESA_ALIGN * NESA_ALIGN;
	out_col = (uint8_t *)p;
	p += ((size_t)in + NESA_ALIGN - 1) / NESA_ALIGN * NESA_ALIGN;
	dyn = (int32_t *)(void *)p;

	memset(out_col, 0, (size_t)in);
	for (c = 0; c < k; c++)
		out_col[oidx[c]] = 1;
	/* Columns that cross the threshold in any row leave the int8 product. */
	if (threshold > 0)
		for (c = 0; c < in; c++) {
			if (out_col[c])
				continue;
			for (r = 0; r < rows; r++)
				if (fabsf(x[r * in + c]) > threshold) {
					out_col[c] = 2;
					dyn[n_dyn++] = (int32_t)c;
					break;
				}
		}
	/* Rows of x to int8 with their own absmax over the remaining columns. */
	for (r = 0; r < rows; r++) {
		const float *xr = x + r * in;
		float amax = 0, inv;

		for (c = 0; c < in; c++)
			if (!out_col[c] && fabsf(xr[c]) > amax)
				amax = fabsf(xr[c]);
		sx[r] = amax / 127.0f;
		inv = amax > 0 ? 127.0f / amax : 0.0f;
		for (c = 0; c < in; c++)
			x8[r * in + c] = out_col[c] ? 0 : (int8_t)nearbyintf(xr[c] * inv);
	}
	/* Start from the bias and the f32 outlier products. */
	for (r = 0; r < rows; r++)
		for (o = 0; o < out; o++) {
			float s = b != NULL ? b[o] : 0.0f;

			for (c = 0; c < k; c++)
				s += x[r * in + oidx[c]] * wo[o * k + c];
			for (c = 0; c < n_dyn; c++)
				s += x[r * in + dyn[c]] * ((float)w8[o * in + dyn[c]] * sw[o]);
			y[r * out + o] = s;
		}
	job = (struct int8_job){dot, x8, w8, sx, sw, y, rows, in, out};
	if (out * in < (INT64_C(1) << 18))
		int8_part(&job, 0, out);
	else
		nesa_parallel_for(out, 16, int8_part, &job);
}

void
nesa_linear_int8_ref(const float *x, int64_t rows, int64_t in, const int8_t *w8, const float *sw,
                     int64_t out, const float *wo, const int32_t *oidx, int64_t k, float threshold,
                     const float *b, float *y, void *scratch)
{
	linear_int8(nesa_dot_i8_ref, x, rows, in, w8, sw, out, wo, oidx, k, threshold, b, y, scratch);
}

void
nesa_linear_int8(const float *x, int64_t rows, int64_t in, const int8_t *w8, const float *sw,
                 int64_t out, const float *wo, const int32_t *oidx, int64_t k, float threshold,
                 const float *b, float *y, void *scratch)
{
	linear_int8(nesa_dot_i8, x, rows, in, w8, sw, out, wo, oidx, k, threshold, b, y, scratch);
}
