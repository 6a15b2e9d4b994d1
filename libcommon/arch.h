/* SPDX-License-Identifier: MIT */
/*
 * Graph builders for the architectures nesa imports (llama, gpt2): given
 * hyperparameters and the names the source format uses for each weight,
 * they write the graph document.  The graph refers to weights by their
 * source names, so importing never renames or copies tensors.
 *
 * Block layout of a language model with L layers: block 0 embeds token ids,
 * blocks 1..L are the transformer layers, block L+1 is the final norm and
 * the logits head; n_blocks = L + 2.
 */
#ifndef NESA_ARCH_H
#define NESA_ARCH_H

#include <jansson.h>

#include "graph.h"

struct nesa_lm_hparams {
	int dim;          /* model width */
	int hidden;       /* feed-forward width */
	int n_layers;
	int n_heads;
	int n_kv_heads;   /* llama only; = n_heads for gpt2 */
	int vocab;
	int max_pos;      /* context length */
	float eps;        /* norm epsilon */
	float theta;      /* rope base (llama) */
	enum nesa_rope_layout rope; /* llama rope layout */
};

/* Weight roles of a language model layer or of the whole model. */
enum nesa_lm_role {
	NESA_LM_EMBED,     /* token embedding [vocab, dim] */
	NESA_LM_POS,       /* learned positions [max_pos, dim] (gpt2) */
	NESA_LM_ATTN_NORM, /* pre-attention norm weight */
	NESA_LM_ATTN_NORM_B,
	NESA_LM_WQ, NESA_LM_WK, NESA_LM_WV, NESA_LM_WO,
	NESA_LM_BQ, NESA_LM_BK, NESA_LM_BV, NESA_LM_BO, /* biases (gpt2) */
	NESA_LM_FFN_NORM,
	NESA_LM_FFN_NORM_B,
	NESA_LM_W1, NESA_LM_W2, NESA_LM_W3,   /* llama: gate, down, up; gpt2: fc, proj */
	NESA_LM_B1, NESA_LM_B2,
	NESA_LM_NORM, NESA_LM_NORM_B,          /* final norm */
	NESA_LM_OUTPUT,    /* logits head [vocab, dim] (may be the embedding) */
};

/*
 * Writes the source name of a weight into buf (size bytes); layer is -1 for
 * model-wide roles.  Returns buf, or NULL when the model has no such weight
 * (e.g. no bias).
 */
typedef const char *(*nesa_lm_namer)(void *ctx, enum nesa_lm_role role, int layer, char *buf,
                                     size_t size);

/* A llama graph (RMSNorm, RoPE, GQA attention, SwiGLU). */
json_t *nesa_llama_graph(const struct nesa_lm_hparams *hp, nesa_lm_namer name, void *ctx,
                         const char *model_name);

/* A gpt2 graph (LayerNorm, learned positions, MHA with biases, GELU tanh). */
json_t *nesa_gpt2_graph(const struct nesa_lm_hparams *hp, nesa_lm_namer name, void *ctx,
                        const char *model_name);

#endif
