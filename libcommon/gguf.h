/* SPDX-License-Identifier: MIT */
/*
 * GGUF reader (ggml's model file format, versions 2 and 3, little-endian;
 * spec: ggml docs/gguf.md and the layout comment in ggml include/gguf.h).
 *
 * Opening a file maps it read-only and yields (a) a tensor set whose data
 * points into the mapping, without copying, and (b) the key-value metadata
 * as a jansson object.  It does not interpret the model: building a graph
 * from the tensors is the importers' job.  The parser treats the file as
 * hostile: every count, length, offset and size is checked for overflow and
 * against the file size before it is used, and nothing is allocated from an
 * unchecked size.
 *
 * Shapes: GGUF lists ne[] innermost first; nesa shapes are outermost first,
 * so a GGUF tensor with ne = [64, 512] (rows of 64) has nesa shape [512, 64].
 *
 * Tensor types: ggml F32, F16, BF16, Q8_0, Q4_0, I8 and I32 become the nesa
 * dtypes of the same name.  A tensor of any other ggml type (q6_K, ...) is
 * not put in the tensor set; it is listed in `skipped` with its name, ggml
 * type name and shape, so an importer can name it in an error.
 */
#ifndef NESA_GGUF_H
#define NESA_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "tensor.h"

/* Limits beyond which a file is refused as malformed. */
#define NESA_GGUF_MAX_COUNT (UINT64_C(1) << 20) /* tensors; also key-value pairs */
#define NESA_GGUF_MAX_STRING (UINT64_C(1) << 30) /* bytes of one string value */
#define NESA_GGUF_MAX_KEY 65535                 /* bytes of a key (the spec's limit) */
#define NESA_GGUF_MAX_NAME 1024                 /* bytes of a tensor name */
#define NESA_GGUF_MAX_DEPTH 8                   /* nesting of arrays in arrays */
#define NESA_GGUF_DEFAULT_ALIGNMENT 32

/* A tensor present in the file whose ggml type nesa does not load. */
struct nesa_gguf_skipped {
	char *name;
	uint32_t ggml_type;                 /* ggml type id as stored */
	const char *type_name;              /* static: "q6_K"; "unknown" if the id is unknown */
	int ndim;
	int64_t shape[NESA_MAX_DIMS];       /* nesa order (outermost first) */
	uint64_t offset;                    /* absolute file offset of the data */
	uint64_t nbytes;                    /* data size; 0 when the type is unknown */
};

struct nesa_gguf {
	char *path;               /* as given to nesa_gguf_open */
	uint32_t version;         /* 2 or 3 */
	uint32_t alignment;       /* general.alignment or 32 */
	uint64_t data_offset;     /* absolute offset of the tensor data section */
	uint64_t file_size;       /* bytes */
	/*
	 * The loadable tensors in file order, named as in the file, data in the
	 * read-only mapping the set owns (NESA_TENSOR_READONLY).  A tensor whose
	 * data is not aligned for its type (possible only with a file alignment
	 * below 4) is copied into memory the set owns instead.
	 */
	struct nesa_tset tensors;
	/*
	 * Metadata: key -> value.  Integers of every width are JSON integers
	 * (a u64 above INT64_MAX becomes a JSON real); f32/f64 are reals
	 * (non-finite ones become null, which JSON cannot hold); bool is
	 * true/false; strings are strings (bytes kept as stored, not checked
	 * for UTF-8); arrays are arrays, nested as in the file.
	 */
	json_t *kv;
	/*
	 * key -> GGUF value type: "u8", "i8", "u16", "i16", "u32", "i32",
	 * "u64", "i64", "f32", "f64", "bool", "string", or "array[T]" with T
	 * one of those (recursively, e.g. "array[array[string]]").  Lets a
	 * consumer insist on, say, an f32 array of scores.
	 */
	json_t *kv_types;
	struct nesa_gguf_skipped *skipped; /* (n_skipped) in file order */
	size_t n_skipped;
};

/*
 * Opens and parses the GGUF file at path.  On success *out is a new object
 * freed with nesa_gguf_free.  On failure *out is NULL and err holds a
 * one-line message naming the file and the field or tensor, e.g.
 *   cannot read 'x.gguf': tensor 'blk.0.attn_q.weight' data [1234, 99999)
 *   extends past end of file (5000 bytes)
 * Returns NESA_ENOENT (cannot open), NESA_EIO, NESA_EFORMAT (malformed,
 * truncated, overlapping data, duplicate names or keys, bad alignment),
 * NESA_EVERSION (not version 2 or 3), NESA_ESHAPE (bad or absurd shape),
 * NESA_ELIMIT (more than 2^23 metadata values in all: a vocabulary of 2M
 * tokens still fits), NESA_ENOMEM.  The tensor data itself is not inspected; see
 * nesa_gguf_validate.
 */
enum nesa_status nesa_gguf_open(const char *path, struct nesa_gguf **out, struct nesa_err *err);

/* Releases everything, including the mapping.  NULL-safe. */
void nesa_gguf_free(struct nesa_gguf *g);

/*
 * Runs the dtype validators over every loaded tensor (a NaN or infinite
 * q8_0/q4_0 scale), reading all quantized data.  NESA_EFORMAT naming the
 * file and tensor on the first failure.  Kept apart from nesa_gguf_open so
 * that planning tools can open large models without paging them in.
 */
enum nesa_status nesa_gguf_validate(const struct nesa_gguf *g, struct nesa_err *err);

/* The skipped tensor called name, or NULL. */
const struct nesa_gguf_skipped *nesa_gguf_find_skipped(const struct nesa_gguf *g,
                                                       const char *name);

/* Lowercase ggml name of a ggml type id ("q6_K", "bf16"), or "unknown". */
const char *nesa_gguf_type_name(uint32_t ggml_type);

/* The ggml types loaded into the tensor set, for messages: "f32, f16, ...". */
const char *nesa_gguf_supported_types(void);

#endif
