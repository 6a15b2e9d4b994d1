/* SPDX-License-Identifier: MIT */
/*
 * Quantized block types.  Each format is three things: a block struct whose
 * size a static_assert pins, a scalar _ref quantize/dequantize pair with a
 * zero-scale guard, and one row of the traits table (quant.c).  The formats
 * and their byte layouts are also described in nesa-quantize(1).
 *
 * q8_0 and q4_0 are byte-compatible with ggml's (and so with GGUF files): a
 * GGUF tensor of either type is used in place, and re-quantizing an f32
 * model gives the bytes llama.cpp's quantize tool writes.  The others follow
 * bitsandbytes (paper.md section 2.7, peers.md section 4.3) in their
 * codebooks, with nesa's own byte layouts:
 *
 *   id     name        block  bytes  bits/value  codebook and scale
 *   16     q8_0           32     34  8.5         linear int8, f16 d = absmax/127
 *   17     q4_0           32     18  4.5         linear int4, f16 d = m/-8
 *   18-24  dyn8_B          B  4 + B  8 + 32/B    dynamic tree map, f32 absmax
 *   25-31  lin8_B          B  4 + B  8 + 32/B    linear int8, f32 d = absmax/127
 *   32     nf4            64     34  4.25        NormalFloat4, f16 scale
 *   33     nf4dq          64     38  4.75        NF4, 4 x 16 with 8-bit sub-scales
 *   34     fp4            64     34  4.25        e2m1 float4, f16 scale
 *   35     fp4dq          64     38  4.75        FP4, 4 x 16 with 8-bit sub-scales
 *   36     q8o            64     72  9           q8 with 2 outliers in f16 (wire)
 *
 * B is 64, 128, 256, 512, 1024, 2048 or 4096; dyn8_B has id
 * 18 + log2(B / 64) and lin8_B 25 + log2(B / 64).  The ids are stable: they
 * are stored in stream frames (the codec byte) and never reused.
 *
 * Blocks run along the innermost (last) dimension of a tensor, so a row's
 * length must be a multiple of the block size; nothing is padded.  Where a
 * row does not fit a format, nesa_quant_fit() names the one to use instead
 * (smaller blocks of the same family, then f16).  Every n below counts
 * elements and must be a multiple of the block size.
 *
 * Multi-byte fields are little-endian; scales are read with memcpy, so
 * blocks need no alignment.
 */
#ifndef NESA_QUANT_H
#define NESA_QUANT_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "err.h"

/*
 * Dtype ids of the block types (ids >= 16 are quantized; see dtype.h).
 * Typed as enum nesa_dtype so they compare with a tensor's dtype without
 * -Wenum-compare noise; they are integer constant expressions (usable in
 * case labels and array designators).
 */
#define NESA_Q8_0 ((enum nesa_dtype)16)
#define NESA_Q4_0 ((enum nesa_dtype)17)
#define NESA_DYN8_64 ((enum nesa_dtype)18)   /* ... NESA_DYN8_64 + 6: dyn8_4096 */
#define NESA_DYN8_4096 ((enum nesa_dtype)24)
#define NESA_LIN8_64 ((enum nesa_dtype)25)   /* ... NESA_LIN8_64 + 6: lin8_4096 */
#define NESA_LIN8_4096 ((enum nesa_dtype)31)
#define NESA_NF4 ((enum nesa_dtype)32)
#define NESA_NF4DQ ((enum nesa_dtype)33)
#define NESA_FP4 ((enum nesa_dtype)34)
#define NESA_FP4DQ ((enum nesa_dtype)35)
#define NESA_Q8O ((enum nesa_dtype)36)

#define NESA_QK8_0 32 /* elements per q8_0 block */
#define NESA_QK4_0 32 /* elements per q4_0 block */
#define NESA_QK_4BIT 64     /* elements per nf4 / fp4 / nf4dq / fp4dq block */
#define NESA_QK_4BIT_SUB 16 /* elements per nf4dq / fp4dq sub-block */
#define NESA_QK_Q8O 64      /* elements per q8o block */
#define NESA_Q8O_OUTLIERS 2 /* outliers per q8o block */

/*
 * q8_0: symmetric 8-bit.  Element j of the block is x[j] = d * qs[j], with
 * qs[j] in [-127, 127] and d = max|x| / 127.
 */
struct nesa_block_q8_0 {
	uint16_t d;               /* IEEE binary16 scale, little-endian */
	int8_t qs[NESA_QK8_0];    /* (32) quants, element order */
};
static_assert(sizeof(struct nesa_block_q8_0) == 2 + NESA_QK8_0, "q8_0 block must be 34 bytes");

/*
 * q4_0: symmetric 4-bit with an offset of 8.  Element j < 16 lives in the
 * low nibble of qs[j], element j >= 16 in the high nibble of qs[j - 16];
 * x[j] = d * (q[j] - 8) with q in [0, 15].  d = m / -8 where m is the
 * element of largest magnitude (with its sign), so m itself is exact (q 0).
 */
struct nesa_block_q4_0 {
	uint16_t d;                  /* IEEE binary16 scale, little-endian */
	uint8_t qs[NESA_QK4_0 / 2];  /* (16) nibble pairs: j | (j + 16) << 4 */
};
static_assert(sizeof(struct nesa_block_q4_0) == 2 + NESA_QK4_0 / 2, "q4_0 block must be 18 bytes");

/*
 * dyn8_B (bitsandbytes' blockwise dynamic quantization): x[j] =
 * nesa_dyn8_map[qs[j]] * d, d = max|x| of the block (f32), qs[j] the code
 * nearest x[j] / d.  lin8_B (blockwise linear int8): x[j] = d * (int8)qs[j],
 * d = max|x| / 127, codes rounded half away from zero as q8_0's.  Both use
 * this layout, one struct per block size.
 */
#define NESA_BLOCK8(B)                                                              \
	struct nesa_block8_##B {                                                    \
		float d;          /* f32 scale, little-endian */                    \
		uint8_t qs[B];    /* (B) codes, element order */                    \
	};                                                                          \
	static_assert(sizeof(struct nesa_block8_##B) == 4 + (B), "8-bit block of " #B \
	              " must be 4 + " #B " bytes")
NESA_BLOCK8(64);
NESA_BLOCK8(128);
NESA_BLOCK8(256);
NESA_BLOCK8(512);
NESA_BLOCK8(1024);
NESA_BLOCK8(2048);
NESA_BLOCK8(4096);

/*
 * nf4 and fp4: 64 elements, x[j] = map[q[j]] * d with d an f16 scale
 * (near max|x|, see the quantizers) and q[j] the code nearest x[j] / d.
 * Element j < 32 is the low nibble of qs[j], element j >= 32 the high
 * nibble of qs[j - 32].
 */
struct nesa_block_4bit {
	uint16_t d;                    /* IEEE binary16 scale, little-endian */
	uint8_t qs[NESA_QK_4BIT / 2];  /* (32) nibble pairs: j | (j + 32) << 4 */
};
static_assert(sizeof(struct nesa_block_4bit) == 34, "nf4/fp4 block must be 34 bytes");

/*
 * nf4dq and fp4dq: double quantization of the scales (QLoRA's idea) to
 * afford small blocks.  The 64 elements form four sub-blocks of 16
 * (elements 16k .. 16k + 15); sub-block k's scale is s[k] = d *
 * nesa_dyn8_map[sc[k]], with d = f16(max|x|) shared and sc[k] an 8-bit
 * dynamic code, and its elements are coded against s[k] as in nf4 / fp4.
 * Nibbles as in nf4.  38 bytes: 6 bits of scale per 16 values, where plain
 * f16 scales for blocks of 16 would take 16.
 */
struct nesa_block_4bit_dq {
	uint16_t d;                        /* IEEE binary16 super-scale, little-endian */
	uint8_t sc[4];                     /* (4) dynamic codes of the sub-block scales */
	uint8_t qs[NESA_QK_4BIT / 2];      /* (32) nibble pairs as in nf4 */
};
static_assert(sizeof(struct nesa_block_4bit_dq) == 38, "nf4dq/fp4dq block must be 38 bytes");

/*
 * q8o, a wire codec for hidden states with outlier features: in each block
 * of 64 the two elements of largest magnitude (first ones on ties) are kept
 * as f16 values ov[] at positions idx[], and the other 62 are q8_0-coded
 * against d = (third largest |x|) / 127; qs[] holds 0 at the outliers'
 * positions.  Decoding writes d * qs[j] everywhere, then ov[k] at idx[k].
 */
struct nesa_block_q8o {
	uint16_t d;                         /* IEEE binary16 scale of the inliers */
	uint8_t idx[NESA_Q8O_OUTLIERS];     /* (2) outlier positions, 0..63 */
	uint16_t ov[NESA_Q8O_OUTLIERS];     /* (2) outlier values, IEEE binary16 */
	int8_t qs[NESA_QK_Q8O];             /* (64) inlier quants, element order */
};
static_assert(sizeof(struct nesa_block_q8o) == 72, "q8o block must be 72 bytes");

/*
 * The codebooks.  nesa_dyn8_map is bitsandbytes' create_dynamic_map(signed
 * = True, max_exponent_bits = 7, total_bits = 8) computed in double and
 * rounded to float: sorted ascending, [0] = -0.99296875, [127] = 0,
 * [128] = 5.5e-7, [254] = 0.99296875, [255] = 1.0 (there is no -1.0).
 * nesa_nf4_map is bitsandbytes' NF4 (16 normal quantiles, [7] = 0).
 * nesa_fp4_map is e2m1 (magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6) divided by
 * 6, indexed by sign << 3 | magnitude code; bitsandbytes' table differs only
 * in its smallest subnormal (1/192 instead of 1/12).
 */
extern const float nesa_dyn8_map[256];
extern const float nesa_nf4_map[16];
extern const float nesa_fp4_map[16];

/* Traits of a quantized dtype id (>= 16), or NULL if unknown. */
const struct nesa_dtype_traits *nesa_quant_traits(int dtype);

/* Id of dyn8_B / lin8_B for a block size B, or -1 if B is not supported. */
int nesa_dyn8_id(int block);
int nesa_lin8_id(int block);

/*
 * The dtype to store a tensor of rows of row_len elements in when dtype is
 * asked for: dtype itself if its block divides row_len; else the largest
 * smaller block of the same family that does (dyn8_B and lin8_B down to 64,
 * q8o to q8_0); else f16.  Plain types and unknown ids are returned
 * unchanged.
 */
int nesa_quant_fit(int dtype, int64_t row_len);

/*
 * Reference quantizers: n floats from x into n / block blocks at y.
 *
 * q8_0: d = amax / 127, q = round(x / d) (half away from zero), d stored as
 * f16.  The quants use the unrounded d, as ggml does, so the per-element
 * error is at most d/2 + 127 * |d - f16(d)|, i.e. below 0.563 * d when d is
 * a normal half (see test-quant.c).
 *
 * q4_0: d = m / -8 (m the signed value of largest magnitude, first one on
 * ties), q = min(15, trunc(x / d + 8.5)).  Elements within 13/16 of |m| on
 * the side opposite m round to nearest (error <= |d|/2 + 8 |d - f16(d)|);
 * the top code 15 saturates, so elements near -m may be off by up to |d|.
 *
 * dyn8 (block 64..4096): t = x / amax, the code of the nearest map value
 * with ties toward zero; error at most 0.00703125 * amax (half the widest
 * gap, 0.9 / 128), and relative error below 7 % for |t| >= 0.1.
 *
 * lin8: as q8_0 with an f32 d, no f16 rounding, and q = round(x / d) by
 * division: error <= d/2 (+ ulps).
 *
 * nf4, fp4: d is the f16 scale among f16(amax * (1 - k/50)), k = 0..19,
 * giving the block the least squared error (the first on a tie), and each
 * element gets the code nearest x / d (the lower code on a tie for nf4,
 * the smaller magnitude for fp4).  The block's squared error is at most
 * that of d = f16(amax) (k = 0), whose elements are within amax * 0.1385
 * (nf4) or amax / 6 (fp4) plus the f16 rounding of amax.
 *
 * nf4dq, fp4dq: d = f16(amax of the 64); each sub-block's code sc is the
 * one, among the code nearest its amax / d, the next one up and up to 23
 * below, giving the least squared error (the nearest on a tie), so a
 * sub-block's error is at most that with the nearest code.
 *
 * q8o: outliers within an f16 rounding (2^-11 relative); inliers within
 * d/2 + 127 |d - f16(d)| as q8_0.
 *
 * Zero-scale guard: an all-zero block gets scale 0 and the codes of zero
 * (0 for the linear types, 127 for dyn8, 7 / 0 for nf4 / fp4), never NaN.
 * Non-finite input is defined but useless: NaN elements quantize to zero
 * and an infinite element, or one beyond the f16 range of a f16 scale,
 * gives an infinite scale, which the validators below refuse; callers that
 * quantize weights refuse such input first (quantize.h).
 */
void nesa_quantize_q8_0_ref(const float *x, void *y, int64_t n);
void nesa_quantize_q4_0_ref(const float *x, void *y, int64_t n);
void nesa_quantize_dyn8_ref(const float *x, void *y, int64_t n, int block);
void nesa_quantize_lin8_ref(const float *x, void *y, int64_t n, int block);
void nesa_quantize_nf4_ref(const float *x, void *y, int64_t n);
void nesa_quantize_nf4dq_ref(const float *x, void *y, int64_t n);
void nesa_quantize_fp4_ref(const float *x, void *y, int64_t n);
void nesa_quantize_fp4dq_ref(const float *x, void *y, int64_t n);
void nesa_quantize_q8o_ref(const float *x, void *y, int64_t n);

/* Reference dequantizers: n / block blocks at x into n floats at y. */
void nesa_dequantize_q8_0_ref(const void *x, float *y, int64_t n);
void nesa_dequantize_q4_0_ref(const void *x, float *y, int64_t n);
void nesa_dequantize_dyn8_ref(const void *x, float *y, int64_t n, int block);
void nesa_dequantize_lin8_ref(const void *x, float *y, int64_t n, int block);
void nesa_dequantize_nf4_ref(const void *x, float *y, int64_t n);
void nesa_dequantize_nf4dq_ref(const void *x, float *y, int64_t n);
void nesa_dequantize_fp4_ref(const void *x, float *y, int64_t n);
void nesa_dequantize_fp4dq_ref(const void *x, float *y, int64_t n);
void nesa_dequantize_q8o_ref(const void *x, float *y, int64_t n);

/*
 * The reference conversions of any dtype with traits, dispatched on its id
 * (plain types through their traits, which are the reference).
 */
void nesa_quant_to_f32_ref(int dtype, const void *x, float *y, int64_t n);
void nesa_quant_from_f32_ref(int dtype, const float *x, void *y, int64_t n);

/*
 * Code of the dynamic map nearest t (ties toward zero; NaN gives 127, the
 * code of 0).  The reference for every dyn8 quantizer.
 */
uint8_t nesa_dyn8_code_ref(float t);

/*
 * Checks n elements of blocks for values a decoder must refuse: a NaN or
 * infinite scale (any type) or outlier value, an outlier position past the
 * block (q8o); every quant code is valid.  NESA_EFORMAT naming the first
 * bad block ("q8_0 block 3 has a non-finite scale (f16 0x7e00)"); the
 * caller prefixes the tensor and file.  err may be NULL.
 */
enum nesa_status nesa_validate_q8_0(const void *x, int64_t n, struct nesa_err *err);
enum nesa_status nesa_validate_q4_0(const void *x, int64_t n, struct nesa_err *err);
enum nesa_status nesa_quant_validate(int dtype, const void *x, int64_t n, struct nesa_err *err);

/*
 * Reference dot products of one row: sum_j deq(q)[j] * x[j] over n
 * elements, accumulated per block in float and across blocks in double.
 * q holds n / 32 blocks; x holds n floats.
 */
float nesa_vec_dot_q8_0_f32_ref(int64_t n, const void *q, const float *x);
float nesa_vec_dot_q4_0_f32_ref(int64_t n, const void *q, const float *x);

/*
 * Reference dot product of a row of any dtype with traits (plain or
 * quantized): the row decoded with the reference dequantizer, products
 * summed in double.
 */
double nesa_vec_dot_ref(int dtype, int64_t n, const void *w, const float *x);

/*
 * Reference matrix product: y (rows, out) = x (rows, in) W^T for W (out,
 * in) of dtype whose rows are stride bytes apart; one nesa_vec_dot_ref per
 * output.  in must be a multiple of the block size.
 */
void nesa_matmul_ref(int dtype, const void *w, size_t stride, int64_t out, int64_t in,
                     const float *x, int64_t rows, float *y);

/*
 * Activations quantized for the integer kernels of q8_0, q4_0 and lin8_B
 * weights (not a storage format): 32 values as q = nearbyint(x * (1 / d))
 * (ties to even), d = amax / 127 in f32 (0 for an all-zero block, and for a
 * block so small that d is denormal, whose inverse would overflow; its
 * values, below 127 * FLT_MIN, count as zero), and -128 times the
 * sum of each 4 consecutive codes: the unsigned-times-signed SIMD products
 * see the weight codes plus 128, and start from this offset to cancel it.
 */
struct nesa_block_q8x {
	int8_t qs[32];   /* (32) codes in [-127, 127] */
	int32_t off[8];  /* (8) off[k] = -128 * (qs[4k] + ... + qs[4k + 3]) */
	float d;         /* scale */
};
static_assert(sizeof(struct nesa_block_q8x) == 68, "q8x block must be 68 bytes");

void nesa_quantize_q8x_ref(const float *x, struct nesa_block_q8x *y, int64_t n);

/*
 * Reference dot product of a q8_0, q4_0 or lin8_B row (n elements) with
 * quantized activations: per 32 elements the exact integer sum of products
 * times both scales, accumulated in double.
 */
double nesa_vec_dot_q8x_ref(int dtype, int64_t n, const void *w, const struct nesa_block_q8x *x);

/*
 * Fast kernels (quant-fast.c): AVX2 and AVX-512 where the CPU has them,
 * chosen at run time; otherwise the reference code.
 *
 * Quantizers and dequantizers give the same bytes and floats as their
 * _ref versions, bit for bit (test-quant.c).  nesa_quant_from_f32 and
 * nesa_quant_to_f32 dispatch on a quantized dtype id.
 */
void nesa_quantize_q8_0(const float *x, void *y, int64_t n);
void nesa_quantize_dyn8(const float *x, void *y, int64_t n, int block);
void nesa_quantize_q8o(const float *x, void *y, int64_t n);
void nesa_quantize_q8x(const float *x, struct nesa_block_q8x *y, int64_t n);
void nesa_quant_to_f32(int dtype, const void *x, float *y, int64_t n);
void nesa_quant_from_f32(int dtype, const float *x, void *y, int64_t n);

/*
 * The fused product the runtime calls through the traits' matmul hook, for
 * any dtype with traits: y (rows, out) = x (rows, in) W^T, W (out, in) with
 * rows stride bytes apart.  Output rows are shared out with
 * nesa_parallel_for.  Never fails: scratch lives on the stack, or on the
 * heap for long prefills, falling back to smaller steps when memory is
 * short.
 *
 * Below 16 rows, q8_0, q4_0 and lin8_B weights multiply quantized
 * activations (nesa_quantize_q8x) in integers, as llama.cpp does: the
 * result equals nesa_vec_dot_q8x_ref up to float summation order, and
 * differs from the f32 product nesa_matmul_ref by at most sum_j |w_j| *
 * 0.5 * d_x(j) (d_x the activation block's scale), the activations'
 * rounding.  Every other dtype, and every dtype from 16 rows on (weights
 * decoded a tile at a time for sgemm), equals nesa_matmul_ref up to float
 * summation order: |error| <= in * 2^-23 * sum_j |w_j x_j| (dyn8's fused
 * one-row kernel evaluates the map in closed form, within 2 ulps of each
 * entry, inside that bound).
 */
void nesa_matmul(int dtype, const void *w, size_t stride, int64_t out, int64_t in, const float *x,
                 int64_t rows, float *y);

/*
 * Hooks for the plain f16 and bf16 rows of the traits table (dtype.c):
 * nesa_matmul for those types.
 */
void nesa_matmul_f16(const void *w, size_t stride, int64_t out, int64_t in, const float *x,
                     int64_t rows, float *y);
void nesa_matmul_bf16(const void *w, size_t stride, int64_t out, int64_t in, const float *x,
                      int64_t rows, float *y);

/* Instruction sets of the fast kernels, in increasing order. */
enum nesa_isa {
	NESA_ISA_REF = 0,  /* portable C */
	NESA_ISA_AVX2,     /* AVX2, FMA, F16C */
	NESA_ISA_AVX512,   /* AVX-512 F, BW, VL and VNNI (plus the AVX2 set) */
};

/* The best level this CPU and build support. */
enum nesa_isa nesa_quant_isa_best(void);

/* The level in use (the best, unless lowered). */
enum nesa_isa nesa_quant_isa(void);

/*
 * Uses at most level from now on (tests and benchmarks compare levels);
 * returns the level in effect, min(level, best).  Not thread-safe against
 * kernels running at the time.
 */
enum nesa_isa nesa_quant_set_isa(enum nesa_isa level);

/* "ref", "avx2", "avx512". */
const char *nesa_isa_name(enum nesa_isa level);

#endif
