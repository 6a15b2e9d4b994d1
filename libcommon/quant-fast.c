/* SPDX-License-Identifier: MIT */
/*
 * Fast quantization kernels and the fused matrix product behind the traits'
 * matmul hook; see quant.h for what each promises.  The reference kernels
 * are in quant.c; test-quant.c checks these against them level by level.
 *
 * Every SIMD function is compiled for its instruction set with a target
 * attribute and chosen at run time from the CPU's features, so one binary
 * runs everywhere (no -march=native).  Two levels: AVX2 (with FMA and F16C)
 * and AVX-512 (F, BW, VL and VNNI, using 256-bit integer dot products and
 * 512-bit float work).  Without NESA_HAVE_X86_SIMD only the portable paths
 * exist.
 *
 * The matrix product has two shapes of inner loop:
 *   - q8_0, q4_0 and lin8_B weights: the activations are quantized to
 *     32-value int8 blocks once per call (struct nesa_block_q8x) and every
 *     output is a sum of exact int32 block dot products times two scales
 *     (vpdpbusd, or vpmaddubsw on AVX2), as llama.cpp does;
 *   - every other dtype: for one activation row (decode) the fused kernel
 *     of f16, bf16, nf4, fp4 (and their dq forms) or dyn8 decodes the weights in
 *     registers; otherwise a tile of weight rows is decoded to f32 into a
 *     buffer on the worker's stack (an L1's worth) and dotted with each
 *     row.
 * From 16 rows on (prefill) every dtype decodes tiles of weight rows into a
 * heap buffer and hands them to OpenBLAS's sgemm.  Output rows are split
 * across nesa_parallel_for's workers.  Only long prefills allocate, and a
 * failed allocation falls back to the paths above, so the product never
 * fails.
 */
#include "config.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#ifdef NESA_HAVE_X86_SIMD
#include <immintrin.h>

/* Unaligned integer loads and stores; blocks have no alignment to offer. */
#define LOAD64(p) _mm_loadl_epi64((const __m128i *)(const void *)(p))
#define LOAD128(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define LOAD256(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define STORE128(p, v) _mm_storeu_si128((__m128i *)(void *)(p), (v))
#define STORE256(p, v) _mm256_storeu_si256((__m256i *)(void *)(p), (v))
#endif

#include "alloc.h"
#include "parallel.h"
#include "quant.h"

#define DYN8_ZERO 127

/* Floats in a worker's decode buffer: 32 KiB, an L1's worth. */
#define TILE_FLOATS 8192

/*
 * From this many activation rows on (prefill), weights are decoded to f32
 * a tile at a time and multiplied with OpenBLAS's sgemm, at most this many
 * floats per tile (4 MiB).
 */
#define GEMM_ROWS 16
#define GEMM_TILE_FLOATS ((int64_t)1 << 20)

/* Bytes of activation blocks kept on the caller's stack before the heap. */
#define XQ_STACK_BYTES 32768

/* ---------------------------------------------------------------------- */
/* Small shared helpers                                                   */

static inline bool
is_dyn8(int dtype)
{
	return dtype >= (int)NESA_DYN8_64 && dtype <= (int)NESA_DYN8_4096;
}

static inline bool
is_lin8(int dtype)
{
	return dtype >= (int)NESA_LIN8_64 && dtype <= (int)NESA_LIN8_4096;
}

/* The integer kernels' weight types. */
static inline bool
int_path(int dtype)
{
	return dtype == NESA_Q8_0 || dtype == NESA_Q4_0 || is_lin8(dtype);
}

static inline float
load_f32(const void *p)
{
	float f;

	memcpy(&f, p, sizeof f);
	return f;
}

static inline uint16_t
load_u16(const void *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof v);
	return v;
}

/*
 * The dynamic code of t by table instead of binary search.  Magnitudes are
 * binned by their top float bits (exponent and 6 mantissa bits); every bin
 * holds at most one decision midpoint (checked when the table is built), so
 * the count of midpoints below |t| is the bin's count plus one comparison.
 * The midpoints are the reference's own 0.5f * (a + b), so the codes are
 * the reference's, ties included.
 */
#define DYN8_BIN_SHIFT 17
#define DYN8_MAX_BINS 2048

static pthread_once_t dyn8_once = PTHREAD_ONCE_INIT;
static uint8_t dyn8_cand[DYN8_MAX_BINS + 4]; /* (bins) midpoints below each bin, + gather pad */
static float dyn8_mid[129];                  /* (129) decision points, [128] = +inf */
static int32_t dyn8_bin_base, dyn8_bins;
static bool dyn8_bins_ok;

static void
dyn8_bins_build(void)
{
	const float *mag = nesa_dyn8_map + DYN8_ZERO;
	uint32_t lo_bits, one_bits;
	float one = 1.0f;
	int32_t k;
	int j, c = 0;

	for (j = 0; j < 128; j++)
		dyn8_mid[j] = 0.5f * (mag[j] + mag[j + 1]);
	dyn8_mid[128] = INFINITY;
	memcpy(&lo_bits, &dyn8_mid[0], sizeof lo_bits);
	memcpy(&one_bits, &one, sizeof one_bits);
	dyn8_bin_base = (int32_t)(lo_bits >> DYN8_BIN_SHIFT);
	dyn8_bins = (int32_t)(one_bits >> DYN8_BIN_SHIFT) - dyn8_bin_base + 1;
	if (dyn8_bins > DYN8_MAX_BINS)
		return; /* cannot happen for this map; the scalar path stays in use */
	dyn8_bins_ok = true;
	for (k = 0; k < dyn8_bins; k++) {
		uint32_t b = (uint32_t)(k + dyn8_bin_base) << DYN8_BIN_SHIFT;
		uint32_t e = b + (1u << DYN8_BIN_SHIFT) - 1;
		float lo, hi;

		memcpy(&lo, &b, sizeof lo);
		memcpy(&hi, &e, sizeof hi);
		while (c < 128 && dyn8_mid[c] < lo)
			c++;
		dyn8_cand[k] = (uint8_t)c;
		if (c + 1 < 128 && dyn8_mid[c + 1] <= hi)
			dyn8_bins_ok = false;
	}
}

#ifdef NESA_HAVE_X86_SIMD
/*
 * The dynamic map in closed form, for the fused dyn8 product: code c has
 * magnitude index m = |c - 127| (0..128); m = 2^i + j (0 <= j < 2^i) is
 * entry j of decade i, 10^(i-6) * (0.1 + 0.9 (j + 0.5) / 2^i) = A[i] +
 * j B[i]; m = 128 is 1.0 (i = 7, j = 0).  Evaluated with one FMA this is
 * within 2 ulps of nesa_dyn8_map, which decoders proper still use.
 */
static const float dyn8_a[8] = {
	(float)(1e-6 * (0.1 + 0.45 / 1)), (float)(1e-5 * (0.1 + 0.45 / 2)),
	(float)(1e-4 * (0.1 + 0.45 / 4)), (float)(1e-3 * (0.1 + 0.45 / 8)),
	(float)(1e-2 * (0.1 + 0.45 / 16)), (float)(1e-1 * (0.1 + 0.45 / 32)),
	(float)(1.0 * (0.1 + 0.45 / 64)), 1.0f,
};
static const float dyn8_b[8] = {
	(float)(1e-6 * 0.9 / 1), (float)(1e-5 * 0.9 / 2), (float)(1e-4 * 0.9 / 4),
	(float)(1e-3 * 0.9 / 8), (float)(1e-2 * 0.9 / 16), (float)(1e-1 * 0.9 / 32),
	(float)(1.0 * 0.9 / 64), 0.0f,
};
#endif

static inline const float *
map_4bit(int dtype)
{
	return dtype == NESA_NF4 || dtype == NESA_NF4DQ ? nesa_nf4_map : nesa_fp4_map;
}

/*
 * Group g (32 weights) of a q8_0, q4_0 or lin8_B row: returns its codes
 * and points *scale at its scale (the block's f16 for q8_0 and q4_0, the
 * f32 of the enclosing B-block for lin8_B, which holds B / 32 groups).
 */
static inline const unsigned char *
row_group(int dtype, const unsigned char *row, int64_t g, const unsigned char **scale)
{
	if (dtype == NESA_Q8_0) {
		*scale = row + (size_t)g * sizeof(struct nesa_block_q8_0);
		return *scale + 2;
	}
	if (dtype == NESA_Q4_0) {
		*scale = row + (size_t)g * sizeof(struct nesa_block_q4_0);
		return *scale + 2;
	}
	{
		int lg = dtype - NESA_LIN8_64 + 1; /* log2(block / 32) */

		*scale = row + (size_t)(g >> lg) * (4 + ((size_t)32 << lg));
		return *scale + 4 + ((g & ((1 << lg) - 1)) << 5);
	}
}

/* ---------------------------------------------------------------------- */
/* Portable paths                                                         */

static float
dot_f32_c(const float *a, const float *b, int64_t n)
{
	float s = 0.0f;
	int64_t i;

	for (i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

#ifdef NESA_HAVE_X86_SIMD
/* ---------------------------------------------------------------------- */
/* AVX2                                                                   */

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

AVX2_FN static inline float
hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* max over lanes of |v| folded into acc; NaN lanes of v are ignored. */
AVX2_FN static inline __m256
amax256(__m256 acc, __m256 v)
{
	const __m256 sign = _mm256_set1_ps(-0.0f);

	/* maxps returns its second operand when either is NaN. */
	return _mm256_max_ps(_mm256_andnot_ps(sign, v), acc);
}

AVX2_FN static inline float
hmax256(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* roundf (half away from zero) of t, NaN to 0, clamped to +-127, as int32. */
AVX2_FN static inline __m256i
q8_code256(__m256 t)
{
	const __m256 half = _mm256_set1_ps(0.5f), lim = _mm256_set1_ps(127.0f);
	const __m256 sign = _mm256_set1_ps(-0.0f);
	__m256 r = _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
	__m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(t, r));
	__m256 up = _mm256_cmp_ps(frac, half, _CMP_GE_OQ);
	__m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, t));

	r = _mm256_add_ps(r, _mm256_and_ps(up, one));
	r = _mm256_and_ps(r, _mm256_cmp_ps(t, t, _CMP_ORD_Q));
	r = _mm256_min_ps(_mm256_max_ps(r, _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim);
	return _mm256_cvtps_epi32(r);
}

/* Four vectors of 8 int32 codes in [-127, 127] to 32 bytes in order. */
AVX2_FN static inline __m256i
pack_i8_256(__m256i a, __m256i b, __m256i c, __m256i d)
{
	__m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
	__m256i v = _mm256_packs_epi16(ab, cd);

	/* packs interleaves 128-bit lanes: restore element order. */
	return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

AVX2_FN static void
quantize_q8_0_avx2(const float *x, void *y, int64_t n)
{
	struct nesa_block_q8_0 *b = y;
	int64_t i, nb = n / NESA_QK8_0;

	for (i = 0; i < nb; i++, x += NESA_QK8_0) {
		__m256 v[4], acc = _mm256_setzero_ps(), id;
		float d;
		uint16_t d16;
		int k;

		for (k = 0; k < 4; k++) {
			v[k] = _mm256_loadu_ps(x + 8 * k);
			acc = amax256(acc, v[k]);
		}
		d = hmax256(acc) / 127.0f;
		d16 = nesa_f32_to_f16(d);
		memcpy(&b[i].d, &d16, sizeof d16);
		id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
		STORE256(b[i].qs,
		                    pack_i8_256(q8_code256(_mm256_mul_ps(v[0], id)),
		                                q8_code256(_mm256_mul_ps(v[1], id)),
		                                q8_code256(_mm256_mul_ps(v[2], id)),
		                                q8_code256(_mm256_mul_ps(v[3], id))));
	}
}

/* nearbyint (ties to even), NaN to 0, clamped to +-127, as int32. */
AVX2_FN static inline __m256i
q8x_code256(__m256 t)
{
	const __m256 lim = _mm256_set1_ps(127.0f);
	__m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);

	r = _mm256_and_ps(r, _mm256_cmp_ps(t, t, _CMP_ORD_Q));
	r = _mm256_min_ps(_mm256_max_ps(r, _mm256_sub_ps(_mm256_setzero_ps(), lim)), lim);
	return _mm256_cvtps_epi32(r);
}

AVX2_FN static void
quantize_q8x_avx2(const float *x, struct nesa_block_q8x *y, int64_t n)
{
	const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
	int64_t i, nb = n / 32;

	for (i = 0; i < nb; i++, x += 32) {
		__m256 v[4], acc = _mm256_setzero_ps(), id;
		__m256i q;
		float d;
		int k;

		for (k = 0; k < 4; k++) {
			v[k] = _mm256_loadu_ps(x + 8 * k);
			acc = amax256(acc, v[k]);
		}
		d = hmax256(acc) / 127.0f;
		if (!(d >= FLT_MIN))
			d = 0.0f;
		id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
		q = pack_i8_256(q8x_code256(_mm256_mul_ps(v[0], id)),
		                q8x_code256(_mm256_mul_ps(v[1], id)),
		                q8x_code256(_mm256_mul_ps(v[2], id)),
		                q8x_code256(_mm256_mul_ps(v[3], id)));
		STORE256(y[i].qs, q);
		/* -128 * (sum of each 4 codes): the pairs' sums, summed again, negated. */
		STORE256(y[i].off, _mm256_slli_epi32(_mm256_sub_epi32(_mm256_setzero_si256(),
		                                                      _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q),
		                                                                        ones16)),
		                                     7));
		y[i].d = d;
	}
}

/* Dynamic codes of 8 normalised values t (see dyn8_bins_build). */
AVX2_FN static inline __m256i
dyn8_code256(__m256 t)
{
	const __m256 sign = _mm256_set1_ps(-0.0f);
	__m256 a = _mm256_andnot_ps(sign, t);
	__m256i key = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(a), DYN8_BIN_SHIFT),
	                               _mm256_set1_epi32(dyn8_bin_base));
	__m256i cand, cnt, neg;
	__m256 m;

	key = _mm256_min_epi32(_mm256_max_epi32(key, _mm256_setzero_si256()),
	                       _mm256_set1_epi32(dyn8_bins - 1));
	cand = _mm256_and_si256(_mm256_i32gather_epi32((const int *)(const void *)dyn8_cand, key, 1),
	                        _mm256_set1_epi32(0xff));
	m = _mm256_i32gather_ps(dyn8_mid, cand, 4);
	/* cmp yields -1 where a > m: subtracting adds one. */
	cnt = _mm256_sub_epi32(cand, _mm256_castps_si256(_mm256_cmp_ps(a, m, _CMP_GT_OQ)));
	cnt = _mm256_and_si256(cnt, _mm256_castps_si256(_mm256_cmp_ps(t, t, _CMP_ORD_Q)));
	neg = _mm256_srai_epi32(_mm256_castps_si256(t), 31);
	/* Negative: 127 - min(cnt, 127); otherwise 127 + cnt. */
	cnt = _mm256_blendv_epi8(cnt, _mm256_sub_epi32(_mm256_setzero_si256(),
	                                               _mm256_min_epi32(cnt, _mm256_set1_epi32(127))),
	                         neg);
	return _mm256_add_epi32(cnt, _mm256_set1_epi32(DYN8_ZERO));
}

AVX2_FN static void
quantize_dyn8_avx2(const float *x, void *y, int64_t n, int block)
{
	unsigned char *p = y;
	int64_t i, nb = n / block;
	int j;

	for (i = 0; i < nb; i++, x += block, p += 4 + (size_t)block) {
		__m256 acc = _mm256_setzero_ps(), dv;
		float amax;

		for (j = 0; j < block; j += 8)
			acc = amax256(acc, _mm256_loadu_ps(x + j));
		amax = hmax256(acc);
		memcpy(p, &amax, sizeof amax);
		if (amax == 0.0f) {
			memset(p + 4, DYN8_ZERO, (size_t)block);
			continue;
		}
		dv = _mm256_set1_ps(amax);
		for (j = 0; j < block; j += 32) {
			__m256i c[4];
			int k;

			for (k = 0; k < 4; k++)
				c[k] = dyn8_code256(_mm256_div_ps(_mm256_loadu_ps(x + j + 8 * k), dv));
			/* Codes are 0..255: pack unsigned. */
			_mm256_storeu_si256(
				(__m256i *)(void *)(p + 4 + j),
				_mm256_permutevar8x32_epi32(
					_mm256_packus_epi16(_mm256_packs_epi32(c[0], c[1]),
					                    _mm256_packs_epi32(c[2], c[3])),
					_mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
		}
	}
}

/* Four dot products of x with rows w[0..3] (ld floats apart). */
AVX2_FN static void
dot4_f32_avx2(const float *x, const float *w, int64_t ld, int64_t n, float out[4])
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	__m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
	int64_t i = 0;
	int k;

	for (; i + 8 <= n; i += 8) {
		__m256 xv = _mm256_loadu_ps(x + i);

		s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + i), s0);
		s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + ld + i), s1);
		s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 2 * ld + i), s2);
		s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 3 * ld + i), s3);
	}
	out[0] = hsum256(s0);
	out[1] = hsum256(s1);
	out[2] = hsum256(s2);
	out[3] = hsum256(s3);
	for (; i < n; i++)
		for (k = 0; k < 4; k++)
			out[k] += x[i] * w[k * ld + i];
}

/* 32 weight codes (signed) times 32 activation codes, as 8 int32 lanes. */
AVX2_FN static inline __m256i
idot_s8_avx2(__m256i w, __m256i xq)
{
	/* maddubs wants an unsigned operand: move w's sign onto x. */
	__m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));

	return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/*
 * Expands a q4_0 block's 16 bytes to 32 unsigned nibbles in element order:
 * the bytes in both halves, the upper half shifted down by 4, then masked.
 */
AVX2_FN static inline __m256i
q4_nibbles256(const uint8_t *qs)
{
	__m256i b = _mm256_broadcastsi128_si256(LOAD128(qs));

	return _mm256_and_si256(_mm256_blend_epi32(b, _mm256_srli_epi16(b, 4), 0xf0), _mm256_set1_epi8(0x0f));
}

/* The scale of a group: f16 for q8_0 and q4_0, f32 for lin8_B. */
AVX2_FN static inline float
group_scale(int dtype, const unsigned char *scale)
{
	return dtype == NESA_Q8_0 || dtype == NESA_Q4_0 ? _cvtsh_ss(load_u16(scale)) : load_f32(scale);
}

/* acc plus group g's exact integer sum times both scales. */
AVX2_FN static inline __m256
group_avx2(int dtype, const unsigned char *row, const struct nesa_block_q8x *x, int64_t g, __m256 acc)
{
	const unsigned char *sc, *q = row_group(dtype, row, g, &sc);
	__m256i xq = LOAD256(x[g].qs), s;

	if (dtype == NESA_Q4_0) /* the nibbles are q + 8: off / 16 = -8 * sum removes the 8s */
		s = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(q4_nibbles256(q), xq),
		                                       _mm256_set1_epi16(1)),
		                     _mm256_srai_epi32(LOAD256(x[g].off), 4));
	else
		s = idot_s8_avx2(LOAD256(q), xq);
	return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(group_scale(dtype, sc) * x[g].d), acc);
}

/*
 * One row of q8_0, q4_0 or lin8_B weights times quantized activations:
 * four independent accumulators hide the FMA latency; the dtype tests are
 * loop-invariant and hoisted by the compiler.
 */
AVX2_FN __attribute__((always_inline)) static inline float
dot_q8x_avx2_t(int dtype, int64_t n, const unsigned char *row, const struct nesa_block_q8x *x)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int64_t g = 0, ng = n / 32;

	for (; g + 4 <= ng; g += 4) {
		a0 = group_avx2(dtype, row, x, g, a0);
		a1 = group_avx2(dtype, row, x, g + 1, a1);
		a2 = group_avx2(dtype, row, x, g + 2, a2);
		a3 = group_avx2(dtype, row, x, g + 3, a3);
	}
	for (; g < ng; g++)
		a0 = group_avx2(dtype, row, x, g, a0);
	return hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* Instances with the dtype a constant, so the per-group tests vanish. */
AVX2_FN static float
dot_q8x_avx2(int dtype, int64_t n, const unsigned char *row, const struct nesa_block_q8x *x)
{
	if (dtype == NESA_Q8_0)
		return dot_q8x_avx2_t(NESA_Q8_0, n, row, x);
	if (dtype == NESA_Q4_0)
		return dot_q8x_avx2_t(NESA_Q4_0, n, row, x);
	return dot_q8x_avx2_t(dtype, n, row, x);
}


/* Decoders: n elements (a multiple of the block) to f32, as the _ref ones. */
AVX2_FN static void
decode_q8_0_avx2(const void *x, float *y, int64_t n)
{
	const struct nesa_block_q8_0 *b = x;
	int64_t i;
	int k;

	for (i = 0; i < n / 32; i++, y += 32) {
		__m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(&b[i].d)));

		for (k = 0; k < 4; k++) {
			__m128i q = LOAD64(b[i].qs + 8 * k);

			_mm256_storeu_ps(y + 8 * k,
			                 _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
		}
	}
}

AVX2_FN static void
decode_q4_0_avx2(const void *x, float *y, int64_t n)
{
	const struct nesa_block_q4_0 *b = x;
	int64_t i;
	int k;

	for (i = 0; i < n / 32; i++, y += 32) {
		__m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(&b[i].d)));
		__m256i q = _mm256_sub_epi8(q4_nibbles256(b[i].qs), _mm256_set1_epi8(8));
		int8_t c[32];

		STORE256(c, q);
		for (k = 0; k < 4; k++)
			_mm256_storeu_ps(y + 8 * k,
			                 _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(LOAD64(c + 8 * k))), d));
	}
}

AVX2_FN static void
decode_8bit_avx2(const void *x, float *y, int64_t n, int block, bool dyn)
{
	const unsigned char *p = x;
	int64_t i;
	int j;

	for (i = 0; i < n / block; i++, p += 4 + (size_t)block, y += block) {
		__m256 d = _mm256_set1_ps(load_f32(p));

		for (j = 0; j < block; j += 8) {
			__m128i q = LOAD64(p + 4 + j);
			__m256 v = dyn ? _mm256_i32gather_ps(nesa_dyn8_map, _mm256_cvtepu8_epi32(q), 4)
			               : _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));

			_mm256_storeu_ps(y + j, _mm256_mul_ps(v, d));
		}
	}
}

/* 16-entry table lookup of 8 nibbles: two 8-entry permutes and a blend. */
AVX2_FN static inline __m256
lut16_256(__m256i idx, __m256 lo, __m256 hi)
{
	__m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)); /* bit 3 to the sign */

	return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
	                        sel);
}

/*
 * The scales of the four 16-element sub-blocks of 4-bit block i (all the
 * same for nf4 / fp4); returns the block's nibbles.  F16C converts the
 * scale: this runs once per 64 weights.
 */
AVX2_FN static inline const uint8_t *
block_4bit(int dtype, const void *w, int64_t i, float s[4])
{
	if (dtype == NESA_NF4 || dtype == NESA_FP4) {
		const struct nesa_block_4bit *b = (const struct nesa_block_4bit *)w + i;

		s[0] = s[1] = s[2] = s[3] = _cvtsh_ss(load_u16(&b->d));
		return b->qs;
	} else {
		const struct nesa_block_4bit_dq *b = (const struct nesa_block_4bit_dq *)w + i;
		float d = _cvtsh_ss(load_u16(&b->d));
		int k;

		for (k = 0; k < 4; k++)
			s[k] = d * nesa_dyn8_map[b->sc[k]];
		return b->qs;
	}
}

/* One 64-element 4-bit block, element j scaled by s[j / 16]. */
AVX2_FN static void
decode_4bit_blk_avx2(const uint8_t *qs, const float s[4], const float *map, float *y)
{
	__m256 lo = _mm256_loadu_ps(map), hi = _mm256_loadu_ps(map + 8);
	int j;

	for (j = 0; j < 32; j += 8) {
		__m256i v = _mm256_cvtepu8_epi32(LOAD64(qs + j));

		_mm256_storeu_ps(y + j, _mm256_mul_ps(lut16_256(v, lo, hi), _mm256_set1_ps(s[j / 16])));
		_mm256_storeu_ps(y + 32 + j, _mm256_mul_ps(lut16_256(_mm256_srli_epi32(v, 4), lo, hi),
		                                           _mm256_set1_ps(s[2 + j / 16])));
	}
}

AVX2_FN static void
decode_f16_avx2(const void *x, float *y, int64_t n)
{
	const uint16_t *h = x;
	int64_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_cvtph_ps(LOAD128(h + i)));
	for (; i < n; i++)
		y[i] = nesa_f16_to_f32(h[i]);
}

AVX2_FN static void
decode_bf16_avx2(const void *x, float *y, int64_t n)
{
	const uint16_t *h = x;
	int64_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256i v = _mm256_cvtepu16_epi32(LOAD128(h + i));

		_mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
	}
	for (; i < n; i++)
		y[i] = nesa_bf16_to_f32(h[i]);
}

/*
 * Fused row products for decode (one activation row): the weights are
 * decoded in registers and never stored.  The block scale multiplies the
 * block's partial sum, so the result differs from the reference (decode,
 * then dot) only in float rounding.
 */

/* Eight f16 or bf16 values from h as floats. */
AVX2_FN __attribute__((always_inline)) static inline __m256
half8(const uint16_t *h, bool bf16)
{
	__m128i v = LOAD128(h);

	return bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16)) : _mm256_cvtph_ps(v);
}

AVX2_FN __attribute__((always_inline)) static inline float
fdot_half_avx2(const uint16_t *h, const float *x, int64_t n, bool bf16)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int64_t i = 0;
	float s;

	for (; i + 32 <= n; i += 32) {
		a0 = _mm256_fmadd_ps(half8(h + i, bf16), _mm256_loadu_ps(x + i), a0);
		a1 = _mm256_fmadd_ps(half8(h + i + 8, bf16), _mm256_loadu_ps(x + i + 8), a1);
		a2 = _mm256_fmadd_ps(half8(h + i + 16, bf16), _mm256_loadu_ps(x + i + 16), a2);
		a3 = _mm256_fmadd_ps(half8(h + i + 24, bf16), _mm256_loadu_ps(x + i + 24), a3);
	}
	for (; i + 8 <= n; i += 8)
		a0 = _mm256_fmadd_ps(half8(h + i, bf16), _mm256_loadu_ps(x + i), a0);
	s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	for (; i < n; i++)
		s += (bf16 ? nesa_bf16_to_f32(h[i]) : nesa_f16_to_f32(h[i])) * x[i];
	return s;
}

AVX2_FN static float
fdot_f16_avx2(const void *w, const float *x, int64_t n)
{
	return fdot_half_avx2(w, x, n, false);
}

AVX2_FN static float
fdot_bf16_avx2(const void *w, const float *x, int64_t n)
{
	return fdot_half_avx2(w, x, n, true);
}

AVX2_FN static float
fdot_4bit_avx2(int dtype, const void *w, const float *x, int64_t n)
{
	const float *map = map_4bit(dtype);
	__m256 lo = _mm256_loadu_ps(map), hi = _mm256_loadu_ps(map + 8);
	__m256 z = _mm256_setzero_ps(), a[4] = {z, z, z, z};
	int64_t i;
	int j;

	for (i = 0; i < n / NESA_QK_4BIT; i++, x += NESA_QK_4BIT) {
		float s[4];
		const uint8_t *qs = block_4bit(dtype, w, i, s);

		/* Sub-block k: its 16 products summed, then scaled. */
		for (j = 0; j < 32; j += 16) {
			__m256i v0 = _mm256_cvtepu8_epi32(LOAD64(qs + j));
			__m256i v1 = _mm256_cvtepu8_epi32(LOAD64(qs + j + 8));
			__m256i w0 = _mm256_srli_epi32(v0, 4), w1 = _mm256_srli_epi32(v1, 4);
			__m256 lo_sum = _mm256_fmadd_ps(lut16_256(v1, lo, hi), _mm256_loadu_ps(x + j + 8),
			                                _mm256_mul_ps(lut16_256(v0, lo, hi), _mm256_loadu_ps(x + j)));
			__m256 hi_sum = _mm256_fmadd_ps(lut16_256(w1, lo, hi), _mm256_loadu_ps(x + 40 + j),
			                                _mm256_mul_ps(lut16_256(w0, lo, hi), _mm256_loadu_ps(x + 32 + j)));

			a[j / 16] = _mm256_fmadd_ps(lo_sum, _mm256_set1_ps(s[j / 16]), a[j / 16]);
			a[2 + j / 16] =
				_mm256_fmadd_ps(hi_sum, _mm256_set1_ps(s[2 + j / 16]), a[2 + j / 16]);
		}
	}
	return hsum256(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

/* Eight dynamic codes (int32 lanes) to their values, in closed form. */
AVX2_FN static inline __m256
dyn8_value256(__m256i c)
{
	__m256i d = _mm256_sub_epi32(c, _mm256_set1_epi32(DYN8_ZERO));
	__m256 m = _mm256_cvtepi32_ps(_mm256_abs_epi32(d));
	__m256 p = _mm256_and_ps(m, _mm256_castsi256_ps(_mm256_set1_epi32((int)0xff800000u)));
	__m256i i = _mm256_srli_epi32(_mm256_castps_si256(m), 23); /* 127 + decade; low 3 bits index */
	__m256i k = _mm256_sub_epi32(i, _mm256_set1_epi32(127));
	__m256 v = _mm256_fmadd_ps(_mm256_sub_ps(m, p),
	                           _mm256_permutevar8x32_ps(_mm256_loadu_ps(dyn8_b), k),
	                           _mm256_permutevar8x32_ps(_mm256_loadu_ps(dyn8_a), k));

	/* m = 0 has no decade: zero; codes below 127 are negative. */
	v = _mm256_and_ps(v, _mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_NEQ_OQ));
	return _mm256_or_ps(v, _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_set1_ps(-0.0f)));
}

AVX2_FN static float
fdot_dyn8_avx2(const void *w, const float *x, int64_t n, int block)
{
	const unsigned char *p = w;
	__m256 acc = _mm256_setzero_ps();
	int64_t i;
	int j;

	for (i = 0; i < n / block; i++, p += 4 + (size_t)block, x += block) {
		__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();

		for (j = 0; j < block; j += 16) {
			__m128i q = LOAD128(p + 4 + j);

			a0 = _mm256_fmadd_ps(dyn8_value256(_mm256_cvtepu8_epi32(q)), _mm256_loadu_ps(x + j),
			                     a0);
			a1 = _mm256_fmadd_ps(dyn8_value256(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8))),
			                     _mm256_loadu_ps(x + j + 8), a1);
		}
		acc = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(load_f32(p)), acc);
	}
	return hsum256(acc);
}

/* ---------------------------------------------------------------------- */
/* AVX-512                                                                */

#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

AVX512_FN static inline __m512
amax512(__m512 acc, __m512 v)
{
	return _mm512_max_ps(_mm512_abs_ps(v), acc);
}
AVX512_FN static inline __m512i
dyn8_code512(__m512 t)
{
	__m512 a = _mm512_abs_ps(t);
	__m512i key = _mm512_sub_epi32(_mm512_srli_epi32(_mm512_castps_si512(a), DYN8_BIN_SHIFT),
	                               _mm512_set1_epi32(dyn8_bin_base));
	__m512i cand, cnt;
	__mmask16 neg;

	key = _mm512_min_epi32(_mm512_max_epi32(key, _mm512_setzero_si512()),
	                       _mm512_set1_epi32(dyn8_bins - 1));
	cand = _mm512_and_si512(_mm512_i32gather_epi32(key, dyn8_cand, 1), _mm512_set1_epi32(0xff));
	cnt = _mm512_mask_add_epi32(cand,
	                            _mm512_cmp_ps_mask(a, _mm512_i32gather_ps(cand, dyn8_mid, 4), _CMP_GT_OQ),
	                            cand, _mm512_set1_epi32(1));
	cnt = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(t, t, _CMP_ORD_Q), cnt);
	neg = _mm512_cmplt_epi32_mask(_mm512_castps_si512(t), _mm512_setzero_si512());
	cnt = _mm512_mask_sub_epi32(cnt, neg, _mm512_setzero_si512(),
	                            _mm512_min_epi32(cnt, _mm512_set1_epi32(127)));
	return _mm512_add_epi32(cnt, _mm512_set1_epi32(DYN8_ZERO));
}

AVX512_FN static void
quantize_dyn8_avx512(const float *x, void *y, int64_t n, int block)
{
	unsigned char *p = y;
	int64_t i, nb = n / block;
	int j;

	for (i = 0; i < nb; i++, x += block, p += 4 + (size_t)block) {
		__m512 acc = _mm512_setzero_ps(), dv;
		float amax;

		for (j = 0; j < block; j += 16)
			acc = amax512(acc, _mm512_loadu_ps(x + j));
		amax = _mm512_reduce_max_ps(acc);
		memcpy(p, &amax, sizeof amax);
		if (amax == 0.0f) {
			memset(p + 4, DYN8_ZERO, (size_t)block);
			continue;
		}
		dv = _mm512_set1_ps(amax);
		for (j = 0; j < block; j += 16)
			STORE128(p + 4 + j, _mm512_cvtepi32_epi8(dyn8_code512(_mm512_div_ps(_mm512_loadu_ps(x + j),
			                                                                    dv))));
	}
}

AVX512_FN static void
dot4_f32_avx512(const float *x, const float *w, int64_t ld, int64_t n, float out[4])
{
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	__m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
	int64_t i;

	for (i = 0; i < n; i += 16) {
		__mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
		__m512 xv = _mm512_maskz_loadu_ps(m, x + i);

		s0 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, w + i), s0);
		s1 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, w + ld + i), s1);
		s2 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, w + 2 * ld + i), s2);
		s3 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, w + 3 * ld + i), s3);
	}
	out[0] = _mm512_reduce_add_ps(s0);
	out[1] = _mm512_reduce_add_ps(s1);
	out[2] = _mm512_reduce_add_ps(s2);
	out[3] = _mm512_reduce_add_ps(s3);
}

/*
 * Integer dot products with vpdpbusd (unsigned times signed bytes): the
 * weight codes are made unsigned by flipping their top bit (w + 128), and
 * each lane starts from the activation block's offset (-128 times its four
 * codes' sum; for q4_0, whose nibbles are q + 8, a sixteenth of it), so
 * every lane ends with the exact signed sum.
 */
AVX512_FN static inline __m256
group_avx512(int dtype, const unsigned char *row, const struct nesa_block_q8x *x, int64_t g,
             __m256 acc)
{
	const unsigned char *sc, *q = row_group(dtype, row, g, &sc);
	__m256i off = LOAD256(x[g].off), s;

	if (dtype == NESA_Q4_0)
		s = _mm256_dpbusd_epi32(_mm256_srai_epi32(off, 4), q4_nibbles256(q), LOAD256(x[g].qs));
	else
		s = _mm256_dpbusd_epi32(off, _mm256_xor_si256(LOAD256(q), _mm256_set1_epi8((char)0x80)),
		                        LOAD256(x[g].qs));
	return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(group_scale(dtype, sc) * x[g].d), acc);
}

AVX512_FN __attribute__((always_inline)) static inline float
dot_q8x_avx512_t(int dtype, int64_t n, const unsigned char *row, const struct nesa_block_q8x *x)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int64_t g = 0, ng = n / 32;

	for (; g + 4 <= ng; g += 4) {
		a0 = group_avx512(dtype, row, x, g, a0);
		a1 = group_avx512(dtype, row, x, g + 1, a1);
		a2 = group_avx512(dtype, row, x, g + 2, a2);
		a3 = group_avx512(dtype, row, x, g + 3, a3);
	}
	for (; g < ng; g++)
		a0 = group_avx512(dtype, row, x, g, a0);
	return hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* Instances with the dtype a constant, so the per-group tests vanish. */
AVX512_FN static float
dot_q8x_avx512(int dtype, int64_t n, const unsigned char *row, const struct nesa_block_q8x *x)
{
	if (dtype == NESA_Q8_0)
		return dot_q8x_avx512_t(NESA_Q8_0, n, row, x);
	if (dtype == NESA_Q4_0)
		return dot_q8x_avx512_t(NESA_Q4_0, n, row, x);
	return dot_q8x_avx512_t(dtype, n, row, x);
}


/*
 * Each 16 nibbles of a block (one sub-block) index a copy of the codebook
 * scaled by that sub-block's scale, so the scale costs nothing per value.
 */
AVX512_FN static float
fdot_4bit_avx512(int dtype, const void *w, const float *x, int64_t n)
{
	__m512 lut = _mm512_loadu_ps(map_4bit(dtype));
	__m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
	__m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
	int64_t i;

	for (i = 0; i < n / NESA_QK_4BIT; i++, x += NESA_QK_4BIT) {
		float s[4];
		const uint8_t *qs = block_4bit(dtype, w, i, s);
		__m512i v0 = _mm512_cvtepu8_epi32(LOAD128(qs));
		__m512i v1 = _mm512_cvtepu8_epi32(LOAD128(qs + 16));

		__m512 l0 = _mm512_mul_ps(lut, _mm512_set1_ps(s[0])), l1 = l0, l2 = l0, l3 = l0;

		if (s[1] != s[0] || s[2] != s[0] || s[3] != s[0]) { /* double-quantized */
			l1 = _mm512_mul_ps(lut, _mm512_set1_ps(s[1]));
			l2 = _mm512_mul_ps(lut, _mm512_set1_ps(s[2]));
			l3 = _mm512_mul_ps(lut, _mm512_set1_ps(s[3]));
		}
		a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v0, l0), _mm512_loadu_ps(x), a0);
		a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v1, l1), _mm512_loadu_ps(x + 16), a1);
		v0 = _mm512_srli_epi32(v0, 4);
		v1 = _mm512_srli_epi32(v1, 4);
		a2 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v0, l2), _mm512_loadu_ps(x + 32), a2);
		a3 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v1, l3), _mm512_loadu_ps(x + 48), a3);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

AVX512_FN static inline __m512
dyn8_value512(__m512i c)
{
	__m512i d = _mm512_sub_epi32(c, _mm512_set1_epi32(DYN8_ZERO));
	__m512 m = _mm512_cvtepi32_ps(_mm512_abs_epi32(d));
	__m512i mb = _mm512_castps_si512(m);
	__m512 p = _mm512_castsi512_ps(_mm512_and_si512(mb, _mm512_set1_epi32((int)0xff800000u)));
	__m512i k = _mm512_sub_epi32(_mm512_srli_epi32(mb, 23), _mm512_set1_epi32(127));
	__m512 a = _mm512_castps256_ps512(_mm256_loadu_ps(dyn8_a));
	__m512 b = _mm512_castps256_ps512(_mm256_loadu_ps(dyn8_b));
	__m512 v = _mm512_fmadd_ps(_mm512_sub_ps(m, p), _mm512_permutexvar_ps(k, b),
	                           _mm512_permutexvar_ps(k, a));

	v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_NEQ_OQ), v);
	return _mm512_castsi512_ps(_mm512_or_si512(
		_mm512_castps_si512(v), _mm512_and_si512(d, _mm512_set1_epi32(INT32_MIN))));
}

AVX512_FN static float
fdot_dyn8_avx512(const void *w, const float *x, int64_t n, int block)
{
	const unsigned char *p = w;
	__m512 acc = _mm512_setzero_ps();
	int64_t i;
	int j;

	for (i = 0; i < n / block; i++, p += 4 + (size_t)block, x += block) {
		__m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();

		for (j = 0; j < block; j += 32) {
			__m512i q0 = _mm512_cvtepu8_epi32(LOAD128(p + 4 + j));
			__m512i q1 = _mm512_cvtepu8_epi32(LOAD128(p + 20 + j));

			a0 = _mm512_fmadd_ps(dyn8_value512(q0), _mm512_loadu_ps(x + j), a0);
			a1 = _mm512_fmadd_ps(dyn8_value512(q1), _mm512_loadu_ps(x + j + 16), a1);
		}
		acc = _mm512_fmadd_ps(_mm512_add_ps(a0, a1), _mm512_set1_ps(load_f32(p)), acc);
	}
	return _mm512_reduce_add_ps(acc);
}

/* 4-bit blocks: the codebook and scales, then the block kernel. */
AVX2_FN static void
decode_4bit(int dtype, const void *x, float *y, int64_t n,
            void (*blk)(const uint8_t *, const float *, const float *, float *))
{
	int64_t i;

	for (i = 0; i < n / NESA_QK_4BIT; i++, y += NESA_QK_4BIT) {
		float s[4];
		const uint8_t *qs = block_4bit(dtype, x, i, s);

		blk(qs, s, map_4bit(dtype), y);
	}
}

AVX2_FN static void
decode_4bit_avx2(int dtype, const void *x, float *y, int64_t n)
{
	decode_4bit(dtype, x, y, n, decode_4bit_blk_avx2);
}

#endif /* NESA_HAVE_X86_SIMD */

/* ---------------------------------------------------------------------- */
/* Kernel tables, one per level                                           */

static void
dot4_f32_c(const float *x, const float *w, int64_t ld, int64_t n, float out[4])
{
	int k;

	for (k = 0; k < 4; k++)
		out[k] = dot_f32_c(x, w + k * ld, n);
}

static float
dot_q8x_c(int dtype, int64_t n, const unsigned char *row, const struct nesa_block_q8x *x)
{
	return (float)nesa_vec_dot_q8x_ref(dtype, n, row, x);
}


/*
 * What each level provides; NULL entries fall back to the reference
 * decoder (decoders) or to the tile path (fused row products).
 */
struct kernels {
	void (*quantize_q8_0)(const float *x, void *y, int64_t n);
	void (*quantize_q8x)(const float *x, struct nesa_block_q8x *y, int64_t n);
	void (*quantize_dyn8)(const float *x, void *y, int64_t n, int block);
	float (*dot_q8x)(int dtype, int64_t n, const unsigned char *row, const struct nesa_block_q8x *x);
	void (*dot4)(const float *x, const float *w, int64_t ld, int64_t n, float out[4]);
	float (*fdot_f16)(const void *w, const float *x, int64_t n);
	float (*fdot_bf16)(const void *w, const float *x, int64_t n);
	float (*fdot_4bit)(int dtype, const void *w, const float *x, int64_t n);
	float (*fdot_dyn8)(const void *w, const float *x, int64_t n, int block);
	void (*decode_q8_0)(const void *x, float *y, int64_t n);
	void (*decode_q4_0)(const void *x, float *y, int64_t n);
	void (*decode_8bit)(const void *x, float *y, int64_t n, int block, bool dyn);
	void (*decode_4bit)(int dtype, const void *x, float *y, int64_t n);
	void (*decode_f16)(const void *x, float *y, int64_t n);
	void (*decode_bf16)(const void *x, float *y, int64_t n);
};

static const struct kernels kernels_ref = {
	nesa_quantize_q8_0_ref, nesa_quantize_q8x_ref, nesa_quantize_dyn8_ref, dot_q8x_c, dot4_f32_c,
	NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
};

#ifdef NESA_HAVE_X86_SIMD
static const struct kernels kernels_avx2 = {
	quantize_q8_0_avx2, quantize_q8x_avx2, quantize_dyn8_avx2, dot_q8x_avx2, dot4_f32_avx2,
	fdot_f16_avx2, fdot_bf16_avx2, fdot_4bit_avx2, fdot_dyn8_avx2,
	decode_q8_0_avx2, decode_q4_0_avx2, decode_8bit_avx2, decode_4bit_avx2,
	decode_f16_avx2, decode_bf16_avx2,
};

/*
 * Where the work is bound by memory rather than arithmetic (decoding to a
 * buffer, f16 rows, quantizing to q8_0 at several GB/s) the AVX2 kernels
 * serve this level too; it adds VNNI integer products, 16-entry codebook
 * lookups in one instruction, and wider dyn8 coding.
 */
static const struct kernels kernels_avx512 = {
	quantize_q8_0_avx2, quantize_q8x_avx2, quantize_dyn8_avx512, dot_q8x_avx512, dot4_f32_avx512,
	fdot_f16_avx2, fdot_bf16_avx2, fdot_4bit_avx512, fdot_dyn8_avx512,
	decode_q8_0_avx2, decode_q4_0_avx2, decode_8bit_avx2, decode_4bit_avx2,
	decode_f16_avx2, decode_bf16_avx2,
};
#endif

static const struct kernels *
kernels_at(enum nesa_isa isa)
{
#ifdef NESA_HAVE_X86_SIMD
	if (isa == NESA_ISA_AVX512)
		return &kernels_avx512;
	if (isa == NESA_ISA_AVX2)
		return &kernels_avx2;
#else
	(void)isa;
#endif
	return &kernels_ref;
}

/* ---------------------------------------------------------------------- */
/* Dispatchers                                                            */

void
nesa_quantize_q8_0(const float *x, void *y, int64_t n)
{
	kernels_at(nesa_quant_isa())->quantize_q8_0(x, y, n);
}

void
nesa_quantize_q8x(const float *x, struct nesa_block_q8x *y, int64_t n)
{
	kernels_at(nesa_quant_isa())->quantize_q8x(x, y, n);
}

/* The table-driven coder needs its table, checked when built. */
void
nesa_quantize_dyn8(const float *x, void *y, int64_t n, int block)
{
	pthread_once(&dyn8_once, dyn8_bins_build);
	(dyn8_bins_ok ? kernels_at(nesa_quant_isa()) : &kernels_ref)->quantize_dyn8(x, y, n, block);
}

/*
 * q8o's selection of outliers is sequential; the inliers are plain q8
 * codes, so the reference is all there is.
 */
void
nesa_quantize_q8o(const float *x, void *y, int64_t n)
{
	nesa_quantize_q8o_ref(x, y, n);
}

void
nesa_quant_from_f32(int dtype, const float *x, void *y, int64_t n)
{
	if (dtype == NESA_Q8_0)
		nesa_quantize_q8_0(x, y, n);
	else if (is_dyn8(dtype))
		nesa_quantize_dyn8(x, y, n, 64 << (dtype - NESA_DYN8_64));
	else if (dtype == NESA_Q8O)
		nesa_quantize_q8o(x, y, n);
	else
		nesa_quant_from_f32_ref(dtype, x, y, n);
}

static inline bool
is_4bit(int dtype)
{
	return dtype == NESA_NF4 || dtype == NESA_NF4DQ || dtype == NESA_FP4 || dtype == NESA_FP4DQ;
}

/*
 * Decodes n elements of any dtype with traits at a level; plain f32 is
 * copied.  Bit-identical to the reference decoders.
 */
static void
decode_at(int dtype, const void *x, float *y, int64_t n, enum nesa_isa isa)
{
	const struct kernels *k = kernels_at(isa);

	if (dtype == NESA_Q8_0 && k->decode_q8_0 != NULL)
		k->decode_q8_0(x, y, n);
	else if (dtype == NESA_Q4_0 && k->decode_q4_0 != NULL)
		k->decode_q4_0(x, y, n);
	else if ((is_dyn8(dtype) || is_lin8(dtype)) && k->decode_8bit != NULL)
		k->decode_8bit(x, y, n, 64 << (dtype - (is_dyn8(dtype) ? NESA_DYN8_64 : NESA_LIN8_64)),
		               is_dyn8(dtype));
	else if (is_4bit(dtype) && k->decode_4bit != NULL)
		k->decode_4bit(dtype, x, y, n);
	else if (dtype == NESA_F16 && k->decode_f16 != NULL)
		k->decode_f16(x, y, n);
	else if (dtype == NESA_BF16 && k->decode_bf16 != NULL)
		k->decode_bf16(x, y, n);
	else if (dtype == NESA_F32)
		memcpy(y, x, (size_t)n * sizeof *y);
	else
		nesa_quant_to_f32_ref(dtype, x, y, n);
}

void
nesa_quant_to_f32(int dtype, const void *x, float *y, int64_t n)
{
	decode_at(dtype, x, y, n, nesa_quant_isa());
}

/* ---------------------------------------------------------------------- */
/* The matrix product                                                     */

struct mm {
	int dtype;
	enum nesa_isa isa;
	const unsigned char *w;          /* (out, in) weight rows, stride bytes apart */
	size_t stride;
	int64_t out, in, rows;
	int64_t block_size, block_bytes; /* of dtype */
	const float *x;                  /* (rows, in) activations */
	float *y;                        /* (rows, out) results */
	struct nesa_block_q8x *xq;       /* (rows, in / 32) integer path */
};

/*
 * The fused row product of dtype at the level into *out; false when the
 * level has none (the tile path then serves).
 */
static bool
fdot_at(enum nesa_isa isa, int dtype, const void *w, const float *x, int64_t n, float *out)
{
	const struct kernels *k = kernels_at(isa);

	if (dtype == NESA_F16 && k->fdot_f16 != NULL)
		*out = k->fdot_f16(w, x, n);
	else if (dtype == NESA_BF16 && k->fdot_bf16 != NULL)
		*out = k->fdot_bf16(w, x, n);
	else if (is_4bit(dtype) && k->fdot_4bit != NULL)
		*out = k->fdot_4bit(dtype, w, x, n);
	else if (is_dyn8(dtype) && k->fdot_dyn8 != NULL)
		*out = k->fdot_dyn8(w, x, n, 64 << (dtype - NESA_DYN8_64));
	else
		return false;
	return true;
}

/*
 * Integer path over output rows [begin, end): groups of 8 weight rows
 * (a few KiB) stay in L1 while every activation row passes by.
 */
static void
mm_int(void *ctx, int64_t begin, int64_t end)
{
	const struct mm *m = ctx;
	float (*dot)(int, int64_t, const unsigned char *, const struct nesa_block_q8x *) =
		kernels_at(m->isa)->dot_q8x;
	int64_t nxb = m->in / 32, o0, o, r;

	for (o0 = begin; o0 < end; o0 += 8) {
		int64_t o1 = o0 + 8 < end ? o0 + 8 : end;

		/*
		 * One weight row at a time: a single sequential stream is what
		 * the hardware prefetchers feed best from memory (reading two
		 * rows in step measured three times slower on large matrices).
		 */
		for (r = 0; r < m->rows; r++)
			for (o = o0; o < o1; o++)
				m->y[r * m->out + o] =
					dot(m->dtype, m->in, m->w + (size_t)o * m->stride, m->xq + r * nxb);
	}
}

/*
 * Float path over output rows [begin, end): tiles of t rows by kc columns
 * decoded into buf, then dotted with every activation row, four weight rows
 * per pass over x.  kc is the whole row when it fits, otherwise a multiple
 * of the block size, and results accumulate across column pieces.
 */
static void
mm_float(void *ctx, int64_t begin, int64_t end)
{
	const struct mm *m = ctx;
	const struct kernels *kern = kernels_at(m->isa);
	float buf[TILE_FLOATS]; /* (t, kc) decoded weights */
	int64_t kc, tmax, o0, k, i, r;

	/* One activation row: fused kernels, no buffer. */
	if (m->rows == 1 &&
	    fdot_at(m->isa, m->dtype, m->w + (size_t)begin * m->stride, m->x, m->in, m->y + begin)) {
		for (i = begin + 1; i < end; i++)
			fdot_at(m->isa, m->dtype, m->w + (size_t)i * m->stride, m->x, m->in, m->y + i);
		return;
	}
	if (m->in <= TILE_FLOATS / 2)
		kc = m->in;
	else
		kc = (TILE_FLOATS / 2) / m->block_size * m->block_size;
	tmax = TILE_FLOATS / kc;
	for (o0 = begin; o0 < end; o0 += tmax) {
		int64_t t = end - o0 < tmax ? end - o0 : tmax;

		for (k = 0; k < m->in; k += kc) {
			int64_t kk = m->in - k < kc ? m->in - k : kc;
			size_t off = (size_t)(k / m->block_size) * (size_t)m->block_bytes;

			for (i = 0; i < t; i++)
				decode_at(m->dtype, m->w + (size_t)(o0 + i) * m->stride + off, buf + i * kk, kk,
				          m->isa);
			for (r = 0; r < m->rows; r++) {
				const float *xr = m->x + r * m->in + k;
				float *yr = m->y + r * m->out + o0;

				/* Four rows a pass; a tail row alone, as four copies (ld 0). */
				for (i = 0; i < t; i += 4) {
					int64_t left = t - i < 4 ? t - i : 4, q;
					float d[4], one[4];

					if (left == 4)
						kern->dot4(xr, buf + i * kk, kk, kk, d);
					for (q = 0; q < left && left < 4; q++) {
						kern->dot4(xr, buf + (i + q) * kk, 0, kk, one);
						d[q] = one[0];
					}
					for (q = 0; q < left; q++)
						yr[i + q] = k == 0 ? d[q] : yr[i + q] + d[q];
				}
			}
		}
	}
}

static void
mm_quantize_rows(void *ctx, int64_t begin, int64_t end)
{
	const struct mm *m = ctx;
	int64_t r, nxb = m->in / 32;

	for (r = begin; r < end; r++)
		kernels_at(m->isa)->quantize_q8x(m->x + r * m->in, m->xq + r * nxb, m->in);
}

/* Output rows per part: enough work (about 32k multiply-adds) to pay for a thread. */
static int64_t
mm_grain(int64_t in, int64_t rows)
{
	int64_t work = in * rows, g = work >= 32768 ? 8 : (32768 / (work > 0 ? work : 1) + 7) / 8 * 8;

	return g;
}

struct tile {
	const struct mm *m;
	int64_t o0;  /* first weight row of the tile */
	float *buf;  /* (t, in) decoded rows */
};

static void
mm_decode_rows(void *ctx, int64_t begin, int64_t end)
{
	const struct tile *t = ctx;
	const struct mm *m = t->m;
	int64_t i;

	for (i = begin; i < end; i++)
		decode_at(m->dtype, m->w + (size_t)(t->o0 + i) * m->stride, t->buf + i * m->in, m->in,
		          m->isa);
}

/*
 * Prefill: decode tiles of weight rows to f32 (in parallel) and hand each
 * to sgemm, which OpenBLAS runs near the machine's peak; each weight is
 * decoded once per call.  False when the tile cannot be allocated.
 */
static bool
mm_gemm(const struct mm *m)
{
	int64_t tmax = GEMM_TILE_FLOATS / m->in, o0;
	struct tile t;

	if (tmax < 16)
		tmax = 16;
	if (tmax > m->out)
		tmax = m->out;
	t.m = m;
	t.buf = nesa_aligned_alloc((size_t)(tmax * m->in) * sizeof(float));
	if (t.buf == NULL)
		return false;
	for (o0 = 0; o0 < m->out; o0 += tmax) {
		int64_t n = m->out - o0 < tmax ? m->out - o0 : tmax;

		t.o0 = o0;
		nesa_parallel_for(n, 4, mm_decode_rows, &t);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m->rows, (int)n, (int)m->in, 1.0f,
		            m->x, (int)m->in, t.buf, (int)m->in, 0.0f, m->y + o0, (int)m->out);
	}
	nesa_aligned_free(t.buf);
	return true;
}

/* Integer path: quantize a group of activation rows, then all outputs. */
static void
mm_int_rows(struct mm *m, int64_t rows)
{
	m->rows = rows;
	if (rows * m->in >= 65536)
		nesa_parallel_for(rows, 1, mm_quantize_rows, m);
	else
		mm_quantize_rows(m, 0, rows);
	nesa_parallel_for(m->out, mm_grain(m->in, rows), mm_int, m);
}

void
nesa_matmul(int dtype, const void *w, size_t stride, int64_t out, int64_t in, const float *x,
            int64_t rows, float *y)
{
	const struct nesa_dtype_traits *t = nesa_dtype_traits(dtype);
	_Alignas(64) unsigned char stack[XQ_STACK_BYTES]; /* activation blocks of short inputs */
	struct mm m;
	int64_t per_row, fit, r;

	assert(t != NULL && in % t->block_size == 0);
	m.dtype = dtype;
	m.isa = nesa_quant_isa();
	m.w = w;
	m.stride = stride;
	m.out = out;
	m.in = in;
	m.rows = rows;
	m.block_size = t->block_size;
	m.block_bytes = t->block_bytes;
	m.x = x;
	m.y = y;
	m.xq = NULL;
	if (out <= 0 || rows <= 0)
		return;
	if (rows >= GEMM_ROWS && mm_gemm(&m))
		return;
	per_row = (in / 32) * (int64_t)sizeof(struct nesa_block_q8x);
	/* Rows shorter than one 32-value block (f16 inputs of width < 32) have no q8 form. */
	fit = per_row > 0 ? XQ_STACK_BYTES / per_row : 0;
	if (!int_path(dtype) || fit == 0) {
		/* Rows too long for the stack go the float way: still exact to the weights. */
		nesa_parallel_for(out, mm_grain(in, rows), mm_float, &m);
		return;
	}
	if (rows <= fit) {
		m.xq = (struct nesa_block_q8x *)(void *)stack;
		mm_int_rows(&m, rows);
		return;
	}
	m.xq = nesa_malloc((size_t)(rows * per_row));
	if (m.xq != NULL) {
		mm_int_rows(&m, rows);
		nesa_free(m.xq);
		return;
	}
	/* Out of memory: groups of rows that fit on the stack. */
	m.xq = (struct nesa_block_q8x *)(void *)stack;
	for (r = 0; r < rows; r += fit) {
		m.x = x + r * in;
		m.y = y + r * out;
		mm_int_rows(&m, rows - r < fit ? rows - r : fit);
	}
}

void
nesa_matmul_f16(const void *w, size_t stride, int64_t out, int64_t in, const float *x, int64_t rows,
                float *y)
{
	nesa_matmul(NESA_F16, w, stride, out, in, x, rows, y);
}

void
nesa_matmul_bf16(const void *w, size_t stride, int64_t out, int64_t in, const float *x,
                 int64_t rows, float *y)
{
	nesa_matmul(NESA_BF16, w, stride, out, in, x, rows, y);
}
