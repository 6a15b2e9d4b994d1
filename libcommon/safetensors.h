/* SPDX-License-Identifier: MIT */
/*
 * safetensors reader (Hugging Face's format, https://github.com/huggingface/
 * safetensors, README "Format"): a u64 little-endian header length N, N
 * bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
 *    ..., "__metadata__": {"key": "value"}}
 * then the byte buffer; offsets are relative to the buffer's start and
 * tensors are row-major, little-endian, shapes outermost first (as nesa's).
 *
 * Opening maps each file read-only and yields a tensor set whose data
 * points into the mappings (zero copy) plus the metadata as a jansson
 * object.  Like gguf.h, it does not interpret the model and treats files as
 * hostile: the header length, every shape and every offset is checked
 * (header at most 100 MiB and inside the file; offsets inside the buffer,
 * begin <= end, end - begin equal to the bytes the dtype and shape imply;
 * no two tensors sharing bytes) before use.
 *
 * dtypes F32, F16, BF16, I32, I8 and U8 are loaded as the nesa dtypes of
 * the same name.  A tensor of any other dtype (I64, F64, BOOL, F8_E4M3, ...)
 * is listed in `skipped` with its dtype name and shape, so an importer can
 * name it in an error.
 *
 * Sharded checkpoints: path may also be a model.safetensors.index.json
 * ({"metadata": {...}, "weight_map": {"tensor": "shard file"}}) or a
 * directory (its model.safetensors.index.json if present, otherwise every
 * *.safetensors file in it, in name order).  The set then owns one mapping
 * per shard.
 */
#ifndef NESA_SAFETENSORS_H
#define NESA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "tensor.h"

#define NESA_ST_MAX_HEADER (UINT64_C(100) << 20) /* bytes of JSON header */
#define NESA_ST_MAX_SHARDS 4096                  /* files of one checkpoint */

/* A tensor present in a file whose dtype nesa does not load. */
struct nesa_st_skipped {
	char *name;
	char *dtype;                   /* as in the file: "I64" */
	int ndim;
	int64_t shape[NESA_MAX_DIMS];
};

struct nesa_safetensors {
	/*
	 * The loadable tensors, in file order (shards in order), data in the
	 * read-only mappings the set owns (NESA_TENSOR_READONLY).  A tensor
	 * whose data is not aligned for its dtype (the format does not promise
	 * alignment) is copied into memory the set owns instead.
	 */
	struct nesa_tset tensors;
	/*
	 * The "__metadata__" object of the file (an empty object if absent).
	 * For an index, its "metadata" object, completed with the keys of each
	 * shard's "__metadata__" that it lacks.
	 */
	json_t *metadata;
	struct nesa_st_skipped *skipped; /* (n_skipped) in file order */
	size_t n_skipped;
	size_t n_files;                  /* files read */
};

/*
 * Opens a .safetensors file, an index .json, or a directory (see above).
 * On success *out is a new object freed with nesa_safetensors_free; on
 * failure *out is NULL and err holds one line naming the file and the
 * tensor or field, e.g.
 *   cannot read 'm.safetensors': tensor 'conv.weight' data_offsets [0, 100)
 *   do not match its F32 shape [3, 3] (36 bytes)
 * Returns NESA_ENOENT, NESA_EIO, NESA_EFORMAT (malformed JSON, offsets,
 * overlaps, duplicates, an index naming a missing tensor), NESA_ESHAPE,
 * NESA_ELIMIT (header or shard count over the limits), NESA_ENOMEM.
 */
enum nesa_status nesa_safetensors_open(const char *path, struct nesa_safetensors **out,
                                       struct nesa_err *err);

/* Releases everything, including the mappings.  NULL-safe. */
void nesa_safetensors_free(struct nesa_safetensors *st);

/* The skipped tensor called name, or NULL. */
const struct nesa_st_skipped *nesa_safetensors_find_skipped(const struct nesa_safetensors *st,
                                                            const char *name);

#endif
