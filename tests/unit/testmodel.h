/* SPDX-License-Identifier: MIT */
/*
 * Pieces of the small hand-built llamas several unit tests run: the short
 * tensor names ("emb", "0.wq", ..., "out") handed to nesa_llama_graph, and
 * a seeded f32 weight (a matrix, or with b = 0 a norm vector near 1).
 * Include after testutil.h.
 */
#ifndef NESA_TESTMODEL_H
#define NESA_TESTMODEL_H

#include "arch.h"
#include "tensor.h"

/* A nesa_llama_graph namer: "emb", "norm", "out" and "LAYER.wq" style names. */
static inline const char *
test_lm_namer(void *ctx, enum nesa_lm_role role, int layer, char *buf, size_t size)
{
	static const char *const n[] = {
		[NESA_LM_EMBED] = "emb", [NESA_LM_ATTN_NORM] = "an", [NESA_LM_WQ] = "wq",
		[NESA_LM_WK] = "wk", [NESA_LM_WV] = "wv", [NESA_LM_WO] = "wo", [NESA_LM_FFN_NORM] = "fn",
		[NESA_LM_W1] = "w1", [NESA_LM_W2] = "w2", [NESA_LM_W3] = "w3", [NESA_LM_NORM] = "norm",
		[NESA_LM_OUTPUT] = "out",
	};

	(void)ctx;
	if ((size_t)role >= sizeof n / sizeof n[0] || n[role] == NULL)
		return NULL;
	if (layer < 0)
		snprintf(buf, size, "%s", n[role]);
	else
		snprintf(buf, size, "%d.%s", layer, n[role]);
	return buf;
}

/* Adds f32 tensor name to ts: (a, b) weights of scale 0.3, or with b = 0 an (a) norm near 1. */
static inline void
test_add_weight(struct nesa_tset *ts, const char *name, int64_t a, int64_t b, uint64_t *seed)
{
	struct nesa_tensor *t;
	int64_t shape[2] = {a, b}, i;
	float *d;

	assert_int_equal(nesa_tset_alloc(ts, name, NESA_F32, b > 0 ? 2 : 1, shape, &t, NULL), NESA_OK);
	d = t->data;
	for (i = 0; i < a * (b > 0 ? b : 1); i++)
		d[i] = b > 0 ? 0.3f * test_randf(seed) : 1.0f + 0.1f * test_randf(seed);
}

#endif
