/* SPDX-License-Identifier: MIT */
/*
 * Element types and their traits table.
 *
 * A dtype has a stable numeric id (stored in stream frames and used as the
 * wire codec id) and a stable name (stored in shard manifests and graph
 * files).  Plain types have block_size 1; quantized block types store
 * block_size elements in block_bytes bytes and always block along the
 * innermost (last) dimension of a tensor.  Adding a type means adding a row
 * to the table in dtype.c; nothing else switches on dtype ids.
 */
#ifndef NESA_DTYPE_H
#define NESA_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

enum nesa_dtype {
	NESA_F32 = 0,
	NESA_F16 = 1,
	NESA_BF16 = 2,
	NESA_I32 = 3,
	NESA_I8 = 4,
	NESA_U8 = 5,
	/* Ids 16 and up are quantized block types (see quant.h). */
	NESA_DTYPE_MAX = 64, /* ids are < NESA_DTYPE_MAX */
};

/* No block type holds more elements than this. */
#define NESA_MAX_BLOCK 4096

enum {
	NESA_DTYPE_FLOAT = 1 << 0, /* a plain floating-point type */
	NESA_DTYPE_INT = 1 << 1,   /* a plain integer type */
	NESA_DTYPE_QUANT = 1 << 2, /* a quantized block type */
};

struct nesa_dtype_traits {
	const char *name;     /* stable name: "f32", "q8_0" */
	uint32_t block_size;  /* elements per block (1 for plain types) */
	uint32_t block_bytes; /* bytes per block */
	unsigned flags;       /* NESA_DTYPE_* */
	/* Converts n elements (a multiple of block_size) to f32.  Never NULL. */
	void (*to_f32)(const void *src, float *dst, int64_t n);
	/*
	 * Reference conversion from f32 (round to nearest even, saturating for
	 * integers); n is a multiple of block_size.  Never NULL.
	 */
	void (*from_f32)(const float *src, void *dst, int64_t n);
	/*
	 * Checks n elements of encoded data for values a decoder must refuse
	 * (a NaN or infinite scale); NULL when every bit pattern is valid.
	 */
	enum nesa_status (*validate)(const void *src, int64_t n, struct nesa_err *err);
	/*
	 * Fused product with a weight of this type, without converting the
	 * whole weight: y (rows, out) = x (rows, in) W^T for W (out, in) whose
	 * rows are `stride` bytes apart.  Fast kernels chosen at run time by
	 * CPU features; threads from nesa_parallel_for.  NULL when the runtime
	 * converts weight rows to f32 one at a time instead.
	 */
	void (*matmul)(const void *w, size_t stride, int64_t out, int64_t in, const float *x,
	               int64_t rows, float *y);
};

/* Traits of a dtype id, or NULL if the id is unknown. */
const struct nesa_dtype_traits *nesa_dtype_traits(int dtype);

/* Name of a dtype, or "unknown". */
const char *nesa_dtype_name(int dtype);

/*
 * Looks a dtype up by name.  NESA_EUNSUPPORTED with a message listing the
 * known names when there is no such type.
 */
enum nesa_status nesa_dtype_from_name(const char *name, enum nesa_dtype *out, struct nesa_err *err);

/* Comma-separated list of all dtype names, for messages and --help. */
const char *nesa_dtype_list(void);

/*
 * Bytes taken by n elements of dtype.  False if dtype is unknown, n is
 * negative or not a multiple of the block size, or the product overflows.
 */
bool nesa_dtype_bytes(int dtype, int64_t n, size_t *out);

/* Scalar IEEE half and bfloat16 conversions (round to nearest even). */
float nesa_f16_to_f32(uint16_t h);
uint16_t nesa_f32_to_f16(float f);
float nesa_bf16_to_f32(uint16_t h);
uint16_t nesa_f32_to_bf16(float f);

#endif
