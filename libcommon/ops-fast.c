/* SPDX-License-Identifier: MIT */
/*
 * Fast f32 kernels for decoding: matrix-vector products and dot products
 * with AVX2 or AVX-512, chosen at run time from the CPU's features (one
 * build runs on every node), each tested against the plain loops in ops.c.
 *
 * Why not BLAS sgemv: for the small matrices of small models OpenBLAS hands
 * the work to its threads and the wake-ups cost more than the product, and
 * for large ones our threads do as well.  GEMM for batches stays in BLAS.
 */
#include "config.h"

#include <stdint.h>

#ifdef NESA_HAVE_X86_SIMD
#include <immintrin.h>
#endif

#include "ops.h"
#include "parallel.h"

static float
dot_plain(const float *a, const float *b, int64_t n)
{
	float s = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

#ifdef NESA_HAVE_X86_SIMD
__attribute__((target("avx2,fma"))) static float
dot_avx2(const float *a, const float *b, int64_t n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	__m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
	__m128 h;
	float s;
	int64_t i = 0;

	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
	s0 = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
	h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	s = _mm_cvtss_f32(h);
	for (; i < n; i++)
		s += a[i] * b[i];
	return s;
}

__attribute__((target("avx512f"))) static float
dot_avx512(const float *a, const float *b, int64_t n)
{
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	__m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
	int64_t i = 0;
	float s;

	for (; i + 64 <= n; i += 64) {
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
		s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
		s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
	}
	for (; i + 16 <= n; i += 16)
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
	if (i < n) {
		/* The tail as one masked load: no scalar loop. */
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);

		s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
	}
	s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
	return s;
}

/* y[i] += a * x[i] */
__attribute__((target("avx512f"))) static void
axpy_avx512(float a, const float *x, float *y, int64_t n)
{
	const __m512 va = _mm512_set1_ps(a);
	int64_t i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);

		_mm512_mask_storeu_ps(y + i, m,
		                      _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
	}
}

__attribute__((target("avx2,fma"))) static void
axpy_avx2(float a, const float *x, float *y, int64_t n)
{
	const __m256 va = _mm256_set1_ps(a);
	int64_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}
#endif

static void
axpy_plain(float a, const float *x, float *y, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		y[i] += a * x[i];
}

typedef float (*dot_fn)(const float *, const float *, int64_t);
typedef void (*axpy_fn)(float, const float *, float *, int64_t);

static dot_fn
pick_dot(void)
{
#ifdef NESA_HAVE_X86_SIMD
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		return dot_avx512;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return dot_avx2;
#endif
	return dot_plain;
}

static axpy_fn
pick_axpy(void)
{
#ifdef NESA_HAVE_X86_SIMD
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		return axpy_avx512;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return axpy_avx2;
#endif
	return axpy_plain;
}

float
nesa_dot_f32(const float *a, const float *b, int64_t n)
{
	static dot_fn fn;

	if (fn == NULL)
		fn = pick_dot();
	return fn(a, b, n);
}

void
nesa_axpy_f32(float a, const float *x, float *y, int64_t n)
{
	static axpy_fn fn;

	if (fn == NULL)
		fn = pick_axpy();
	fn(a, x, y, n);
}

struct gemv_job {
	const float *w, *x;
	float *y;
	int64_t in;
};

static void
gemv_part(void *ctx, int64_t begin, int64_t end)
{
	const struct gemv_job *j = ctx;
	int64_t o;

	for (o = begin; o < end; o++)
		j->y[o] = nesa_dot_f32(j->w + o * j->in, j->x, j->in);
}

/* Below this many weights a product is not worth waking other threads for. */
#define PARALLEL_MIN (INT64_C(1) << 18)

void
nesa_gemv_f32(const float *w, int64_t out, int64_t in, const float *x, float *y)
{
	struct gemv_job j = {w, x, y, in};

	if (out * in < PARALLEL_MIN)
		gemv_part(&j, 0, out);
	else
		nesa_parallel_for(out, 16, gemv_part, &j);
}

/* int8 dot products. */

static int32_t
dot_i8_plain(const int8_t *a, const int8_t *b, int64_t n)
{
	return nesa_dot_i8_ref(a, b, n);
}

#ifdef NESA_HAVE_X86_SIMD
/*
 * maddubs multiplies unsigned by signed bytes: |a| times b with a's sign
 * moved onto b gives the signed product, and |a| <= 127 keeps each pair of
 * products inside int16 (2 * 127 * 127 < 32767).
 */
__attribute__((target("avx2"))) static int32_t
dot_i8_avx2(const int8_t *a, const int8_t *b, int64_t n)
{
	const __m256i ones = _mm256_set1_epi16(1);
	__m256i acc = _mm256_setzero_si256();
	__m128i h;
	int32_t s;
	int64_t i = 0;

	for (; i + 32 <= n; i += 32) {
		__m256i va = _mm256_loadu_si256((const __m256i *)(const void *)(a + i));
		__m256i vb = _mm256_loadu_si256((const __m256i *)(const void *)(b + i));
		__m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));

		acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
	}
	h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
	s = _mm_cvtsi128_si32(h);
	for (; i < n; i++)
		s += (int32_t)a[i] * b[i];
	return s;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static int32_t
dot_i8_vnni(const int8_t *a, const int8_t *b, int64_t n)
{
	__m512i acc = _mm512_setzero_si512();
	int64_t i = 0;
	int32_t s;

	for (; i + 64 <= n; i += 64) {
		__m512i va = _mm512_loadu_si512((const void *)(a + i));
		__m512i vb = _mm512_loadu_si512((const void *)(b + i));
		/* |a| as unsigned, a's sign moved onto b: exact signed products. */
		__mmask64 neg = _mm512_movepi8_mask(va);
		__m512i aa = _mm512_abs_epi8(va);
		__m512i sb = _mm512_mask_sub_epi8(vb, neg, _mm512_setzero_si512(), vb);

		acc = _mm512_dpbusd_epi32(acc, aa, sb);
	}
	s = _mm512_reduce_add_epi32(acc);
	for (; i < n; i++)
		s += (int32_t)a[i] * b[i];
	return s;
}
#endif

int32_t
nesa_dot_i8(const int8_t *a, const int8_t *b, int64_t n)
{
	static int32_t (*fn)(const int8_t *, const int8_t *, int64_t);

	if (fn == NULL) {
		fn = dot_i8_plain;
#ifdef NESA_HAVE_X86_SIMD
		__builtin_cpu_init();
		if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw"))
			fn = dot_i8_vnni;
		else if (__builtin_cpu_supports("avx2"))
			fn = dot_i8_avx2;
#endif
	}
	return fn(a, b, n);
}

struct gemv_multi_job {
	int n;
	const float *const *w;
	const int64_t *out;
	int64_t in;
	const float *x;
	float *const *y;
};

static void
gemv_multi_part(void *ctx, int64_t begin, int64_t end)
{
	const struct gemv_multi_job *j = ctx;
	int64_t base = 0, o;
	int m;

	/* Global rows [begin, end) run over the matrices one after another. */
	for (m = 0; m < j->n && begin < end; m++) {
		int64_t lo = begin > base ? begin - base : 0, hi = end - base;

		if (hi > j->out[m])
			hi = j->out[m];
		for (o = lo; o < hi; o++)
			j->y[m][o] = nesa_dot_f32(j->w[m] + o * j->in, j->x, j->in);
		base += j->out[m];
	}
}

void
nesa_gemv_multi_f32(int n, const float *const *w, const int64_t *out, int64_t in, const float *x,
                    float *const *y)
{
	struct gemv_multi_job j = {n, w, out, in, x, y};
	int64_t total = 0;
	int m;

	for (m = 0; m < n; m++)
		total += out[m];
	if (total * in < PARALLEL_MIN)
		gemv_multi_part(&j, 0, total);
	else
		nesa_parallel_for(total, 16, gemv_multi_part, &j);
}
