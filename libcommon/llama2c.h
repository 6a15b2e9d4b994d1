/* SPDX-License-Identifier: MIT */
/*
 * llama2.c checkpoint reader (karpathy/llama2.c, the formats written by
 * export.py), little-endian:
 *
 *  - version 0 (legacy, no magic): 7 x i32 header dim, hidden_dim,
 *    n_layers, n_heads, n_kv_heads, vocab_size, seq_len (a negative
 *    vocab_size means a separate classifier follows), then f32 arrays:
 *    token embedding, per-layer attention norms, wq, wk, wv, wo, ffn norms,
 *    w1, w2, w3 (each for all layers in turn), final norm, the unused
 *    freq_cis_real and freq_cis_imag tables [seq_len][head_size / 2], and
 *    the classifier when not shared;
 *  - version 1: a 256-byte header (u32 magic 0x616b3432 "ak42", i32 version,
 *    the same 7 i32 with a positive vocab_size, u8 shared_classifier, zero
 *    padding), then f32 attention norms, ffn norms, final norm, token
 *    embedding, wq, wk, wv, wo, w1, w2, w3, classifier when not shared;
 *  - version 2: the version 1 header plus i32 group_size at byte 37; f32
 *    attention norms, ffn norms, final norm; then for each of the token
 *    embedding, wq, wk, wv, wo, w1, w2, w3 (all layers) and the unshared
 *    classifier: int8 quants (all elements) followed by f32 scales, one per
 *    group_size consecutive elements of the row-major weight.
 *
 * Opening maps the file and exposes the weights as named tensors viewing
 * the mapping (zero copy), with nesa shapes [out, in] (y = W x):
 *   tok_embeddings [vocab, dim]      layers.L.attention_norm [dim]
 *   layers.L.wq [dim, dim]           layers.L.wk, layers.L.wv [kv_dim, dim]
 *   layers.L.wo [dim, dim]           layers.L.ffn_norm [dim]
 *   layers.L.w1, layers.L.w3 [hidden_dim, dim]
 *   layers.L.w2 [dim, hidden_dim]    norm [dim]
 *   output [vocab, dim]              only when the classifier is not shared
 * In version 2 each of the quantized weights W above appears as `W.q` (i8,
 * W's shape) and `W.s` (f32, [numel(W) / group_size]): element k of W is
 * W.q[k] * W.s[k / group_size] in row-major order.  Norms stay f32.
 * How to run the weights is the caller's business; this module only reads.
 */
#ifndef NESA_LLAMA2C_H
#define NESA_LLAMA2C_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "tensor.h"

#define NESA_LLAMA2C_MAGIC 0x616b3432u /* "ak42" as a little-endian u32 */
#define NESA_LLAMA2C_HEADER 256        /* header bytes of versions 1 and 2 */

struct nesa_llama2c_params {
	int version;            /* 0, 1 or 2 */
	int dim;                /* model width */
	int hidden_dim;         /* feed-forward width */
	int n_layers;
	int n_heads;
	int n_kv_heads;         /* divides n_heads */
	int vocab_size;         /* always positive here */
	int seq_len;            /* maximum context */
	bool shared_classifier; /* output weights are tok_embeddings */
	int group_size;         /* version 2: elements per scale; else 0 */
	int head_size;          /* dim / n_heads */
	int kv_dim;             /* head_size * n_kv_heads */
};

struct nesa_llama2c {
	char *path;
	struct nesa_llama2c_params params;
	/* The same parameters as a JSON object with the field names above. */
	json_t *params_json;
	/* Tensors named as in the header comment; the set owns the mapping. */
	struct nesa_tset tensors;
};

/*
 * Opens the checkpoint at path.  On success *out is a new object freed
 * with nesa_llama2c_free; on failure *out is NULL and err names the file
 * and the problem.  The header is validated before any size is computed
 * (every dimension positive, n_heads divides dim, n_kv_heads divides
 * n_heads, even head size, version 2 group size dividing every quantized
 * weight), all sizes are overflow-checked, and the file must be exactly as
 * large as the header implies ("expected 1056540 bytes, file has 1056536").
 * Returns NESA_ENOENT, NESA_EIO, NESA_EFORMAT (bad header, size mismatch),
 * NESA_EVERSION (an "ak42" file of another version), NESA_ESHAPE,
 * NESA_ENOMEM.  Data is not inspected (NaN weights load fine).
 */
enum nesa_status nesa_llama2c_open(const char *path, struct nesa_llama2c **out,
                                   struct nesa_err *err);

/* Releases everything, including the mapping.  NULL-safe. */
void nesa_llama2c_free(struct nesa_llama2c *m);

#endif
