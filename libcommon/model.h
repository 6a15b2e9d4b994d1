/* SPDX-License-Identifier: MIT */
/*
 * A model as nesa sees it, whatever file it came from: a graph document,
 * the weights it refers to, an optional tokenizer, and its identity.
 * nesa_model_load() recognises every format nesa imports: shard archives
 * (.nsa), GGUF, llama2.c checkpoints, Hugging Face directories (config.json
 * + safetensors, llama and gpt2) and graph files (JSON + safetensors).
 * A shard archive loads as the slice of the model it holds.
 */
#ifndef NESA_MODEL_H
#define NESA_MODEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "tensor.h"
#include "tokenizer.h"

struct nesa_model {
	char *path;        /* what was loaded */
	const char *format;/* "nsa", "gguf", "llama2c", "hf", "graph" */
	char *name;        /* model name */
	char *arch;        /* "llama", "gpt2", "cnn", ... */
	json_t *graph;     /* graph document (owned reference) */
	json_t *meta;      /* free-form facts: hyperparameters, source format (owned) */
	struct nesa_tset *weights; /* the tensors the graph refers to (owned by the model) */
	struct nesa_tokenizer *tok; /* NULL for models without one */
	int n_blocks;      /* blocks of the whole model */
	int first, count;  /* blocks held: all, or a shard's slice */
	bool have_id;      /* source_sha256 is known */
	uint8_t source_sha256[32]; /* identity: sha256 of the source model file */
	/* Private: what owns the weights' memory. */
	void *backing;
	void (*backing_free)(void *);
	struct nesa_tset own;
};

struct nesa_model_opts {
	const char *tokenizer;  /* tokenizer file for llama2.c checkpoints (default: beside it) */
	bool defer_hash;        /* shard archives: verify tensor hashes on first use */
	int context;            /* > 0: context length to use instead of the model's */
	const char *weights;    /* graph files: weights to use instead of the file's "weights" */
};

/*
 * Loads a model.  Errors name the file and the reason: NESA_ENOENT,
 * NESA_EFORMAT, NESA_EUNSUPPORTED (an architecture, op or dtype nesa does
 * not run, with the list of what it does), NESA_ESHAPE, NESA_ENOMEM.
 * opts may be NULL.
 */
enum nesa_status nesa_model_load(const char *path, const struct nesa_model_opts *opts,
                                 struct nesa_model **out, struct nesa_err *err);
void nesa_model_free(struct nesa_model *m);

/*
 * The model's identity: sha256 of its source file, hashed on first use
 * (a shard carries its model's identity in the manifest).
 */
enum nesa_status nesa_model_identity(struct nesa_model *m, uint8_t sha256[32], struct nesa_err *err);

/* The first 8 bytes of the identity as a little-endian integer (stream model id). */
uint64_t nesa_model_id64(const uint8_t sha256[32]);

/*
 * Per-row input shape and dtype of the model's first held block (tokens:
 * i32 with ndim 0; images: f32 [C, H, W]), and the output row size of its
 * last held block.  NESA_EFORMAT for a malformed graph.
 */
enum nesa_status nesa_model_io(const struct nesa_model *m, int *in_dtype, int *in_ndim,
                               int64_t in_shape[3], int64_t *out_elems, struct nesa_err *err);

/*
 * Writes blocks [first, first + count) of m as a shard archive: the graph
 * slice, the weights those blocks use, the tokenizer (every shard carries
 * it, so any stage can serve it to a client) and the model's identity.
 * opts may be NULL (uncompressed, no overwrite).
 */
struct nesa_shard_write_opts;
enum nesa_status nesa_model_write_shard(struct nesa_model *m, int first, int count, const char *path,
                                        const struct nesa_shard_write_opts *opts,
                                        struct nesa_err *err);

#endif
