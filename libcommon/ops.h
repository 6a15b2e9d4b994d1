/* SPDX-License-Identifier: MIT */
/*
 * Numeric kernels of the graph ops, on f32 rows.
 *
 * Every kernel states its reference definition.  Where a fast version
 * differs from the plain loop (BLAS GEMM/GEMV, SIMD), the plain loop is kept
 * as `*_ref` and the unit tests hold the fast one to it.  Kernels take
 * explicit sizes, never allocate, and never fail: shapes were validated when
 * the graph was compiled.
 */
#ifndef NESA_OPS_H
#define NESA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/*
 * y = x W^T (+ b): x (rows, in) row-major, W (out, in), b (out) or NULL,
 * y (rows, out).  W may be any dtype with to_f32; f32 weights go through
 * BLAS (GEMV for one row, GEMM otherwise), others through per-row
 * conversion into scratch.  scratch holds at least in floats for non-f32 W.
 */
void nesa_linear(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
                 const float *b, float *y, float *scratch);
void nesa_linear_ref(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
                     const float *b, float *y);

/*
 * Low-rank linear: y (rows, out) = x W^T + (x B^T) A^T (+ b), with the
 * factors A (out, r) and B (r, in) and the full weight W (out, in) optional
 * (NULL: a pure low-rank product).  Each product is nesa_linear's, so every
 * dtype it takes works for W, A and B (BLAS for f32); a factor with rows
 * shorter than 32 in another dtype is converted row by row.  x B^T is computed
 * once, so the cost is 2 r (in + out) FLOPs per row on top of W's.  scratch
 * holds nesa_linear_lowrank_scratch(rows, in, out, r) floats.  The _ref
 * version composes nesa_linear_ref the same way.
 */
size_t nesa_linear_lowrank_scratch(int64_t rows, int64_t in, int64_t out, int64_t r);
void nesa_linear_lowrank(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
                         const struct nesa_tensor *a, const struct nesa_tensor *bf, const float *b,
                         float *y, float *scratch);
void nesa_linear_lowrank_ref(const float *x, int64_t rows, int64_t in, const struct nesa_tensor *w,
                             const struct nesa_tensor *a, const struct nesa_tensor *bf,
                             const float *b, float *y, float *scratch);

/*
 * Vectorised building blocks (ops-fast.c; AVX-512 or AVX2 when the CPU has
 * them, plain loops otherwise): a dot product, y += a x, and the
 * matrix-vector product y (out) = W (out, in) x (in), parallel over rows for
 * large W.
 */
float nesa_dot_f32(const float *a, const float *b, int64_t n);
void nesa_axpy_f32(float a, const float *x, float *y, int64_t n);
void nesa_gemv_f32(const float *w, int64_t out, int64_t in, const float *x, float *y);

/*
 * n matrix-vector products of the same x, y[m] (out[m]) = W[m] (out[m], in)
 * x, as one parallel job: the q, k, v projections of a decode step share one
 * round of thread wake-ups instead of three.
 */
void nesa_gemv_multi_f32(int n, const float *const *w, const int64_t *out, int64_t in,
                         const float *x, float *const *y);

/* Integer dot product of two int8 vectors (values in [-127, 127]) in int32. */
int32_t nesa_dot_i8(const int8_t *a, const int8_t *b, int64_t n);
int32_t nesa_dot_i8_ref(const int8_t *a, const int8_t *b, int64_t n);

/*
 * LLM.int8() mixed-precision product: y (rows, out) = x (rows, in) W^T (+ b)
 * with W kept as int8 w8 (out, in) and per-row scales sw (out), W ~ w8 * sw.
 * The k outlier columns oidx (increasing) of x are multiplied in f32 by wo
 * (out, k), the original weights of those columns.  With threshold > 0, any
 * other column whose |x| exceeds it in some row is also taken out of the
 * int8 product and multiplied in f32 by its dequantized weights (as
 * bitsandbytes does).  The remaining columns: each row of x is quantized to
 * int8 with its own absmax scale, then int32 dot products.  scratch holds
 * nesa_linear_int8_scratch(rows, in) bytes.  The _ref version differs only
 * in its plain dot product.
 */
size_t nesa_linear_int8_scratch(int64_t rows, int64_t in);
void nesa_linear_int8(const float *x, int64_t rows, int64_t in, const int8_t *w8, const float *sw,
                      int64_t out, const float *wo, const int32_t *oidx, int64_t k, float threshold,
                      const float *b, float *y, void *scratch);
void nesa_linear_int8_ref(const float *x, int64_t rows, int64_t in, const int8_t *w8,
                          const float *sw, int64_t out, const float *wo, const int32_t *oidx,
                          int64_t k, float threshold, const float *b, float *y, void *scratch);

/* y = x / sqrt(mean(x^2) + eps) * w, per row; x, y (rows, dim); y may be x. */
void nesa_rmsnorm(const float *x, const float *w, float *y, int64_t rows, int64_t dim, float eps);

/* y = (x - mean) / sqrt(var + eps) * w + b, per row (biased variance); y may be x. */
void nesa_layernorm(const float *x, const float *w, const float *b, float *y, int64_t rows,
                    int64_t dim, float eps);

/* In-place softmax of each row of x (rows, dim), max-subtracted. */
void nesa_softmax(float *x, int64_t rows, int64_t dim);

/*
 * Rotary embedding in place on x (rows, n_heads * head_dim); row r has
 * position pos[r].  The first n_rot dims of each head rotate: pairs
 * (2i, 2i+1) when interleaved (llama2.c), (i, i + n_rot/2) when half-split
 * (Hugging Face); frequency theta^(-2i/n_rot).
 */
void nesa_rope(float *x, int64_t rows, int n_heads, int head_dim, int n_rot, float theta,
               int half_split, const uint32_t *pos);

/* Elementwise activations, y may be x: n elements. */
void nesa_silu(const float *x, float *y, int64_t n);
void nesa_relu(const float *x, float *y, int64_t n);
void nesa_gelu(const float *x, float *y, int64_t n);      /* 0.5 x (1 + erf(x / sqrt 2)) */
void nesa_gelu_tanh(const float *x, float *y, int64_t n); /* tanh approximation */
void nesa_add(const float *a, const float *b, float *y, int64_t n);
void nesa_mul(const float *a, const float *b, float *y, int64_t n);

/*
 * Causal attention for one session's new rows.  q (rows, n_heads *
 * head_dim) for positions pos0 .. pos0 + rows - 1; kc, vc the session's
 * cache (pos0 + rows, n_kv * head_dim) already holding these rows' keys and
 * values.  out (rows, n_heads * head_dim).  Each row attends to positions
 * 0 .. its own.  att is scratch of max(rows, n_heads) * (pos0 + rows)
 * floats (the reference needs pos0 + rows).  Batches of rows use two GEMMs
 * per head; a few rows spread the heads over the threads.
 */
void nesa_attention(const float *q, int64_t rows, uint32_t pos0, const float *kc, const float *vc,
                    int n_heads, int n_kv, int head_dim, float scale, float *out, float *att);
void nesa_attention_ref(const float *q, int64_t rows, uint32_t pos0, const float *kc,
                        const float *vc, int n_heads, int n_kv, int head_dim, float scale,
                        float *out, float *att);

/*
 * 2-D convolution of n images: x (n, C, H, W), w (O, C / groups, kh, kw),
 * b (O) or NULL, y (n, O, Ho, Wo).  im2col of as many images as scratch
 * holds side by side, then one GEMM per group; scratch of scratch_len floats,
 * at least nesa_conv2d_scratch().  The reference does one image directly.
 */
#define NESA_CONV_BUDGET ((size_t)1 << 21) /* floats of scratch worth using */
size_t nesa_conv2d_scratch(int C, int Ho, int Wo, int O, int kh, int kw, int groups);
void nesa_conv2d(const float *x, int64_t n, int C, int H, int W, const float *w, const float *b,
                 int O, int kh, int kw, int sh, int sw, int ph, int pw, int groups, float *y,
                 float *scratch, size_t scratch_len);
void nesa_conv2d_ref(const float *x, int C, int H, int W, const float *w, const float *b, int O,
                     int kh, int kw, int sh, int sw, int ph, int pw, int groups, float *y);

/* Pooling of one image (C, H, W) -> (C, Ho, Wo); padding counts as -inf / excluded. */
void nesa_maxpool(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                  int pw, float *y);
void nesa_avgpool(const float *x, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                  int pw, float *y);

/* Output size of a convolution or pooling along one axis. */
static inline int
nesa_conv_out(int in, int k, int s, int p)
{
	return (in + 2 * p - k) / s + 1;
}

#endif
