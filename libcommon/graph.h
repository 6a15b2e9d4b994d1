/* SPDX-License-Identifier: MIT */
/*
 * The model-agnostic graph: a model is a chain of blocks, each block a small
 * list of ops over named values.  The graph is data (JSON, documented in
 * nesa-graph(5)); this module parses and validates it against a set of
 * weights, infers every value's shape, resolves weight references and
 * computes per-block costs for the planner.  It does not run anything
 * (exec.h does).
 *
 * Values are row-batched: every value has a leading row dimension (tokens
 * of a sequence, or images of a batch) that is not part of the graph, and a
 * fixed per-row feature shape that is.  Rows are independent for every op
 * except attention and position-dependent ops, which see each row's session
 * and position.  That is what lets one GEMM serve many sessions at once.
 */
#ifndef NESA_GRAPH_H
#define NESA_GRAPH_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "tensor.h"

#define NESA_GRAPH_VERSION 1

enum nesa_op_kind {
	NESA_OP_EMBEDDING,      /* ids [i32] -> rows of weight[vocab, dim] */
	NESA_OP_POS_EMBEDDING,  /* x + weight[pos] (learned absolute positions) */
	NESA_OP_RMSNORM,        /* x / rms(x) * weight */
	NESA_OP_LAYERNORM,      /* (x - mean) / std * weight + bias */
	NESA_OP_LINEAR,         /* W x (+ A (B x)) (+ b), W stored [out, in], optional factors */
	NESA_OP_ROPE,           /* rotary positions, interleaved or half-split */
	NESA_OP_ATTENTION,      /* causal GQA self-attention over a per-session KV cache */
	NESA_OP_GELU,           /* x * Phi(x), erf form */
	NESA_OP_GELU_TANH,      /* tanh approximation */
	NESA_OP_SILU,
	NESA_OP_RELU,
	NESA_OP_ADD,
	NESA_OP_MUL,
	NESA_OP_SOFTMAX,        /* over the last feature dimension */
	NESA_OP_CONV2D,         /* [C, H, W] -> [O, H', W'], stride, padding, groups */
	NESA_OP_BATCHNORM,      /* per-channel affine from running statistics */
	NESA_OP_MAXPOOL,
	NESA_OP_AVGPOOL,
	NESA_OP_GLOBAL_AVGPOOL, /* [C, H, W] -> [C] */
	NESA_OP_PAD_CHANNELS,   /* CIFAR ResNet option-A shortcut: subsample, zero-pad channels */
	NESA_OP_FLATTEN,
	NESA_OP_CHANNEL_AFFINE, /* x * scale[c] + shift[c], constants in the graph */
	NESA_OP_LINEAR_INT8,    /* LLM.int8(): int8 W with row scales, outlier columns in f32 */
	NESA_OP_COUNT
};

enum nesa_rope_layout { NESA_ROPE_INTERLEAVED, NESA_ROPE_HALF };

/* A value: a named per-row tensor inside one block. */
struct nesa_value {
	char *name;
	enum nesa_dtype dtype;  /* NESA_F32, or NESA_I32 for token ids */
	int ndim;               /* per-row dims, 0..3 */
	int64_t shape[3];       /* per-row feature shape, outermost first */
	int64_t row_elems;      /* product of shape */
};

struct nesa_op {
	enum nesa_op_kind kind;
	int in[3];              /* value indices */
	int n_in;
	int out;                /* value index */
	/*
	 * Weights resolved against the tensor set (borrowed): weight, bias,
	 * for batch norm running mean and variance, for linear_int8 the row
	 * scales, outlier weights and outlier column indices (w[2..4]), for
	 * linear the low-rank factors A (out, r) and B (r, in) (w[2], w[3]).
	 * A linear op with factors may have no weight: w[0] is then NULL.
	 */
	struct nesa_tensor *w[5];
	bool head;              /* a model output head: may compute selected rows only */
	float eps;              /* norms */
	/* rope */
	enum nesa_rope_layout layout;
	float theta;
	int head_dim, n_rot;
	/* attention */
	int n_heads, n_kv_heads;
	float scale;
	int cache;              /* index of this op's KV cache within the graph */
	/* conv / pool */
	int kernel[2], stride[2], pad[2], groups;
	/* pad_channels: channels added on each side */
	int pad_ch;
	/* channel_affine / folded batch norm: per-channel constants (owned) */
	float *ch_scale, *ch_shift; /* (channels) */
	/* linear_int8: run-time outlier threshold (0: static outliers only) */
	float threshold;
};

/* What a block costs; read by the profiler and the planner. */
struct nesa_block_cost {
	uint64_t param_bytes;     /* bytes of the weights the block references */
	double flops_per_row;     /* context-independent FLOPs per row */
	double flops_per_ctx;     /* extra FLOPs per row per cached position (attention) */
	uint64_t kv_bytes_per_row;/* KV cache bytes added per row (token) */
	uint64_t in_bytes_per_row;  /* f32 bytes entering per row */
	uint64_t out_bytes_per_row; /* f32 bytes leaving per row */
};

struct nesa_block {
	char *name;
	int index;               /* index within the whole model */
	struct nesa_value *values;
	int n_values;
	int inputs[4], n_inputs;   /* value indices of the block inputs */
	int outputs[4], n_outputs; /* value indices of the block outputs */
	struct nesa_op *ops;
	int n_ops;
	struct nesa_block_cost cost;
};

struct nesa_graph {
	json_t *doc;             /* the graph document (owned reference) */
	int n_blocks;            /* blocks in the whole model */
	int first, count;        /* blocks held here: [first, first + count) */
	struct nesa_block *blocks; /* (count) */
	int n_caches;            /* attention ops (KV caches) held here */
	int max_positions;       /* context limit of the model, 0 if none */
	int vocab;               /* vocabulary size for language models, 0 otherwise */
};

/*
 * Compiles blocks [first, first + count) of a graph document against the
 * tensors in ts (borrowed; must outlive the graph).  count < 0 means "to the
 * end".  Checks everything a run could trip on: unknown ops (the message
 * lists the supported ones), missing weights, weight dtypes and shapes,
 * value shapes through every op, and that each block's inputs are the
 * previous block's outputs.  The document is referenced, not copied.
 */
enum nesa_status nesa_graph_compile(json_t *doc, struct nesa_tset *ts, int first, int count,
                                    struct nesa_graph **out, struct nesa_err *err);
void nesa_graph_free(struct nesa_graph *g);

/* Number of blocks a graph document declares, or -1 if malformed. */
int nesa_graph_doc_blocks(const json_t *doc);

/*
 * Names of the weights blocks [first, first + count) reference, deduplicated,
 * in first-use order, as a JSON array of strings (new reference).
 */
enum nesa_status nesa_graph_doc_weights(const json_t *doc, int first, int count, json_t **names,
                                        struct nesa_err *err);

/* A copy of doc keeping only blocks [first, first + count) in "blocks",
 * with "first_block" set; other keys are shared. */
json_t *nesa_graph_doc_slice(const json_t *doc, int first, int count);

/* Stable op names, and the comma-separated list of them. */
const char *nesa_op_name(enum nesa_op_kind k);
const char *nesa_op_list(void);

/* Cost of one block as a JSON object (new reference) with stable keys. */
json_t *nesa_block_cost_json(const struct nesa_block *b);

#endif
