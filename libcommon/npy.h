/* SPDX-License-Identifier: MIT */
/*
 * NumPy .npy files: one array per file, read and written so that a tensor
 * can enter or leave a nesa pipeline without a converter.
 *
 * Format (NumPy "NEP 1", format versions 1.0, 2.0 and 3.0):
 *   "\x93NUMPY", major, minor, header length (u16 LE for 1.x, u32 LE for 2.x
 *   and 3.x), then the header: a Python dict literal with exactly the keys
 *   'descr', 'fortran_order' and 'shape', padded with spaces and ended by
 *   '\n'; the array data follows immediately.
 *
 * Accepted: little-endian or byte-order-free '<f4' '<f2' '<i4' '|i1' '|u1'
 * (and '<i1' '<u1'), C order, 0 to 4 dimensions.  Refused with a message
 * naming the file: Fortran order, big-endian data, object, structured and
 * void types (bfloat16 from ml_dtypes is stored as void '<V2'), any other
 * dtype, more than 4 dimensions.
 *
 * Written: version 1.0, the header padded with spaces so that the data
 * starts at a multiple of 64 bytes.  numpy has no bfloat16: a bf16 tensor is
 * written as '<f4', which is exact (every bf16 value is an f32 value).
 * Quantized block types are refused.
 *
 * This module is a file format only; stream.h accepts .npy wherever it reads
 * a stream and writes one when the output path ends in ".npy".
 */
#ifndef NESA_NPY_H
#define NESA_NPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"
#include "tensor.h"
#include "xio.h"

#define NESA_NPY_MAGIC "\x93NUMPY"
#define NESA_NPY_MAGIC_LEN 6
/* Magic, version and the widest header length field (versions 2 and 3). */
#define NESA_NPY_PREAMBLE_MAX 12
/* Headers longer than this are refused before anything is allocated. */
#define NESA_NPY_HEADER_MAX (1u << 20)
/* Written data starts at a multiple of this many bytes. */
#define NESA_NPY_ALIGN 64

/* What a .npy header says. */
struct nesa_npy_info {
	int version;                  /* format major version: 1, 2 or 3 */
	enum nesa_dtype dtype;        /* element type of the data */
	int ndim;                     /* 0..NESA_MAX_DIMS */
	int64_t shape[NESA_MAX_DIMS]; /* outermost first; entries past ndim are 1 */
	size_t header_size;           /* bytes before the data (preamble included) */
	size_t data_size;             /* bytes of the data */
};

/* True when buf (n bytes) starts with the .npy magic. */
bool nesa_npy_sniff(const void *buf, size_t n);

/*
 * Reads the preamble at the start of buf (n bytes, at most
 * NESA_NPY_PREAMBLE_MAX needed) and stores in *header_size the number of
 * bytes before the data.  NESA_EFORMAT for a bad magic or too few bytes,
 * NESA_EVERSION for a version other than 1.0, 2.0 or 3.0, NESA_EFORMAT for a
 * header longer than NESA_NPY_HEADER_MAX.  name (may be NULL) names the file
 * in messages.
 */
enum nesa_status nesa_npy_preamble(const void *buf, size_t n, const char *name,
                                   size_t *header_size, struct nesa_err *err);

/*
 * Parses a whole header (buf holds header_size bytes as returned by
 * nesa_npy_preamble) into *info.  Fails with NESA_EFORMAT (syntax, missing or
 * unknown keys, bad shape), NESA_EUNSUPPORTED (dtype, Fortran order, more
 * than 4 dimensions) or NESA_ESHAPE (too many elements), naming the file.
 */
enum nesa_status nesa_npy_parse_header(const void *buf, size_t n, const char *name,
                                       struct nesa_npy_info *info, struct nesa_err *err);

/*
 * Reads one array from fp, positioned at the magic, into a new contiguous
 * tensor without a name (*out, freed with nesa_tensor_free).  Bytes after
 * the array are left unread.  A short file is NESA_EFORMAT, a read error
 * NESA_EIO, an allocation failure NESA_ENOMEM; *out is NULL on failure.
 */
enum nesa_status nesa_npy_read_fp(FILE *fp, const char *name, struct nesa_tensor **out,
                                  struct nesa_err *err);

/*
 * As nesa_npy_read_fp from len bytes at buf, which must hold exactly one
 * array (trailing bytes are NESA_EFORMAT).  The data is copied.
 */
enum nesa_status nesa_npy_read_mem(const void *buf, size_t len, const char *name,
                                   struct nesa_tensor **out, struct nesa_err *err);

/*
 * Writes a contiguous tensor with data as a version 1.0 .npy to fp; name
 * (may be NULL) names the output in messages.  NESA_EUNSUPPORTED for
 * quantized types, NESA_EINVAL for a tensor that is not contiguous or has no
 * data, NESA_EIO for a write failure.  bf16 is widened to '<f4'.
 */
enum nesa_status nesa_npy_write_fp(FILE *fp, const char *name, const struct nesa_tensor *t,
                                   struct nesa_err *err);

/* As nesa_npy_write_fp to an output opened with nesa_out_open. */
enum nesa_status nesa_npy_write(struct nesa_out *o, const struct nesa_tensor *t,
                                struct nesa_err *err);

#endif
