/* SPDX-License-Identifier: MIT */
/*
 * Quantized block types.  Each format is three things: a block struct whose
 * size a static_assert pins, a scalar _ref quantize/dequantize pair with a
 * zero-scale guard, and one row of the traits table (quant.c).
 *
 * The block layouts are byte-compatible with ggml's (and so with GGUF
 * files): a GGUF tensor of type Q8_0 or Q4_0 is used in place, without a
 * copy.  The _ref quantizers compute exactly what ggml's reference
 * quantizers compute for finite inputs, so re-quantizing an f32 model gives
 * the same bytes llama.cpp's quantize tool writes.
 *
 * Blocks run along the innermost (last) dimension of a tensor; every n
 * below counts elements and must be a multiple of the block size (32).
 * This module holds scalar reference kernels only; faster kernels, when they
 * come, carry no suffix and are tested against these.
 */
#ifndef NESA_QUANT_H
#define NESA_QUANT_H

#include <assert.h>
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

#define NESA_QK8_0 32 /* elements per q8_0 block */
#define NESA_QK4_0 32 /* elements per q4_0 block */

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

/* Traits of a quantized dtype id (>= 16), or NULL if unknown. */
const struct nesa_dtype_traits *nesa_quant_traits(int dtype);

/*
 * Reference quantizers: n floats from x into n / 32 blocks at y.
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
 * Zero-scale guard: an all-zero block gets d = 0 and all quants zero (q 8
 * for q4_0), never NaN.  Non-finite input is defined but useless: NaN
 * elements quantize to zero and an infinite element, or one beyond the f16
 * range times 127 (q8_0) or 8 (q4_0), gives an infinite scale, which the
 * validators below refuse.
 */
void nesa_quantize_q8_0_ref(const float *x, void *y, int64_t n);
void nesa_quantize_q4_0_ref(const float *x, void *y, int64_t n);

/* Reference dequantizers: n / 32 blocks at x into n floats at y. */
void nesa_dequantize_q8_0_ref(const void *x, float *y, int64_t n);
void nesa_dequantize_q4_0_ref(const void *x, float *y, int64_t n);

/*
 * Checks n elements of blocks for a NaN or infinite scale, which a decoder
 * must refuse (every quant value is valid).  NESA_EFORMAT naming the first
 * bad block ("q8_0 block 3 has a non-finite scale (f16 0x7e00)"); the caller
 * prefixes the tensor and file.  err may be NULL.
 */
enum nesa_status nesa_validate_q8_0(const void *x, int64_t n, struct nesa_err *err);
enum nesa_status nesa_validate_q4_0(const void *x, int64_t n, struct nesa_err *err);

/*
 * Reference dot products of one row: sum_j deq(q)[j] * x[j] over n
 * elements, accumulated per block in float and across blocks in double.
 * q holds n / 32 blocks; x holds n floats.
 */
float nesa_vec_dot_q8_0_f32_ref(int64_t n, const void *q, const float *x);
float nesa_vec_dot_q4_0_f32_ref(int64_t n, const void *q, const float *x);

#endif
