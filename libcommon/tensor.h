/* SPDX-License-Identifier: MIT */
/*
 * Tensors and named tensor sets.
 *
 * Shapes are written outermost first, as NumPy and the shard manifest do: a
 * weight W of y = W x with `in` inputs and `out` outputs has shape
 * [out, in] and rows of `in` contiguous elements.  Quantized types block
 * along the last dimension, whose length must be a multiple of the block
 * size.  stride[] holds byte steps between consecutive indices of each
 * dimension; views share data with their parent.
 *
 * A nesa_tset owns the memory behind a group of tensors (one allocation, a
 * file mapping, or several) and releases it all at once; tensors in a set
 * point into that memory and never free their data themselves.
 */
#ifndef NESA_TENSOR_H
#define NESA_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "err.h"
#include "xio.h"

#define NESA_MAX_DIMS 4

/* Shapes larger than this many elements are refused wherever they are read. */
#define NESA_MAX_ELEMS (INT64_C(1) << 40)

struct nesa_tensor {
	char *name;            /* owned by the tensor (or its set); may be NULL */
	enum nesa_dtype dtype;
	int ndim;              /* 0..NESA_MAX_DIMS; 0 is a scalar */
	int64_t shape[NESA_MAX_DIMS]; /* outermost first; entries past ndim are 1 */
	size_t stride[NESA_MAX_DIMS]; /* bytes; for a quantized last dim, bytes per block row */
	size_t nbytes;         /* bytes of the data when contiguous */
	void *data;            /* NULL for metadata-only tensors */
	unsigned flags;        /* NESA_TENSOR_* */
};

enum {
	NESA_TENSOR_OWNS_DATA = 1 << 0, /* data from nesa_aligned_alloc, freed with the tensor */
	NESA_TENSOR_READONLY = 1 << 1,  /* data lives in a read-only mapping */
};

/*
 * Checks that a shape is valid for dtype: 0 <= ndim <= 4, every dimension
 * >= 1 (0 allowed only if allow_empty), element count <= NESA_MAX_ELEMS,
 * the last dimension a multiple of the block size, and the byte size not
 * overflowing.  On success *nbytes (may be NULL) is the byte size.
 * NESA_ESHAPE or NESA_EUNSUPPORTED with a message naming `what`.
 */
enum nesa_status nesa_shape_check(int dtype, int ndim, const int64_t *shape, bool allow_empty,
                                  size_t *nbytes, const char *what, struct nesa_err *err);

/*
 * Sets t up as a contiguous metadata-only tensor (data NULL, no name).
 * Fails as nesa_shape_check.
 */
enum nesa_status nesa_tensor_init(struct nesa_tensor *t, int dtype, int ndim, const int64_t *shape,
                                  struct nesa_err *err);

/* Frees what t owns (name, data if OWNS_DATA) and zeroes it.  NULL-safe. */
void nesa_tensor_release(struct nesa_tensor *t);

/*
 * Allocates a contiguous tensor with zeroed, NESA_ALIGN-aligned data.
 * name may be NULL.  Freed with nesa_tensor_free.
 */
struct nesa_tensor *nesa_tensor_new(const char *name, int dtype, int ndim, const int64_t *shape,
                                    struct nesa_err *err);
void nesa_tensor_free(struct nesa_tensor *t);

/* Number of elements. */
int64_t nesa_tensor_nelems(const struct nesa_tensor *t);

/* True when the data is one dense row-major block. */
bool nesa_tensor_is_contiguous(const struct nesa_tensor *t);

/* True when both have the same ndim and shape. */
bool nesa_tensor_same_shape(const struct nesa_tensor *a, const struct nesa_tensor *b);

/* Writes "[64, 512]" into buf (always NUL-terminated); returns buf. */
char *nesa_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);

/*
 * A view of rows [first, first + count) of the outermost dimension.  The
 * view shares data and has no name; nothing needs to be released.
 */
enum nesa_status nesa_tensor_view_rows(const struct nesa_tensor *t, int64_t first, int64_t count,
                                       struct nesa_tensor *view, struct nesa_err *err);

/*
 * Converts a contiguous tensor's data to f32 into dst (nelems floats).
 */
void nesa_tensor_to_f32(const struct nesa_tensor *t, float *dst);

/* A named set of tensors and the memory behind them. */
struct nesa_tset {
	struct nesa_tensor *items; /* (n) in insertion order */
	size_t n, cap;
	void **allocs;             /* (n_allocs) blocks from nesa_aligned_alloc */
	size_t n_allocs, cap_allocs;
	struct nesa_map *maps;     /* (n_maps) file mappings */
	size_t n_maps, cap_maps;
	/* Open-addressing hash index over item names: slot holds item + 1, 0 = empty. */
	size_t *index;
	size_t index_cap; /* a power of two, at least twice n */
};

void nesa_tset_init(struct nesa_tset *ts);
void nesa_tset_release(struct nesa_tset *ts);

/*
 * Appends a tensor whose data pointer (may be NULL) lives in memory the set
 * owns or that outlives it.  The name is copied; duplicate names are
 * refused with NESA_EFORMAT.  Returns the new tensor through *out (may be
 * NULL); the pointer stays valid until the next add.
 */
enum nesa_status nesa_tset_add(struct nesa_tset *ts, const char *name, int dtype, int ndim,
                               const int64_t *shape, void *data, struct nesa_tensor **out,
                               struct nesa_err *err);

/*
 * Appends a tensor with freshly allocated zeroed data owned by the set.
 */
enum nesa_status nesa_tset_alloc(struct nesa_tset *ts, const char *name, int dtype, int ndim,
                                 const int64_t *shape, struct nesa_tensor **out,
                                 struct nesa_err *err);

/* Hands an aligned block or a mapping to the set, which frees it on release. */
enum nesa_status nesa_tset_own_block(struct nesa_tset *ts, void *block, struct nesa_err *err);
enum nesa_status nesa_tset_own_map(struct nesa_tset *ts, struct nesa_map *map, struct nesa_err *err);

/* The tensor called name, or NULL. */
struct nesa_tensor *nesa_tset_find(struct nesa_tset *ts, const char *name);

#endif
