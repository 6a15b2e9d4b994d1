/* SPDX-License-Identifier: MIT */
/*
 * Graph builders for llama and gpt2; see arch.h.  The documents they write
 * are ordinary graph documents (nesa-graph(5)): what a user could write by
 * hand for the same model.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "arch.h"

/* Builder state: the namer and a sticky failure flag. */
struct builder {
	nesa_lm_namer name;
	void *ctx;
	int layer;
	int failed;
};

static json_t *
wref(struct builder *b, enum nesa_lm_role role)
{
	char buf[256];
	const char *n = b->name(b->ctx, role, b->layer, buf, sizeof buf);

	return n != NULL ? json_string(n) : json_null();
}

/* Appends an op {"op": kind, "in": [...], "out": out} plus extra keys. */
static json_t *
op(struct builder *b, json_t *ops, const char *kind, const char *in0, const char *in1,
   const char *in2, const char *out)
{
	json_t *o = json_object(), *in = json_array();

	if (o == NULL || in == NULL) {
		json_decref(o);
		json_decref(in);
		b->failed = 1;
		return NULL;
	}
	json_array_append_new(in, json_string(in0));
	if (in1 != NULL)
		json_array_append_new(in, json_string(in1));
	if (in2 != NULL)
		json_array_append_new(in, json_string(in2));
	json_object_set_new(o, "op", json_string(kind));
	json_object_set_new(o, "in", in);
	json_object_set_new(o, "out", json_string(out));
	if (json_array_append_new(ops, o) != 0)
		b->failed = 1;
	return o;
}

static void
set_weight(struct builder *b, json_t *o, const char *key, enum nesa_lm_role role)
{
	json_t *w;

	if (o == NULL)
		return;
	w = wref(b, role);
	if (w == NULL)
		b->failed = 1;
	else if (json_is_null(w))
		json_decref(w);
	else
		json_object_set_new(o, key, w);
}

static json_t *
block(const char *name, const char *in_name, const char *in_dtype, int dim, json_t **ops)
{
	json_t *shape = dim > 0 ? json_pack("[i]", dim) : json_array();

	*ops = json_array();
	return json_pack("{s:s, s:[{s:s, s:s, s:o}], s:[s], s:o}", "name", name, "inputs", "name",
	                 in_name, "dtype", in_dtype, "shape", shape, "outputs", "x", "ops", *ops);
}

static json_t *
doc_new(const struct nesa_lm_hparams *hp, const char *model_name, const char *arch, json_t **blocks)
{
	*blocks = json_array();
	return json_pack("{s:i, s:s, s:s, s:i, s:i, s:i, s:i, s:o}", "graph_version", NESA_GRAPH_VERSION,
	                 "name", model_name, "arch", arch, "n_blocks", hp->n_layers + 2, "first_block",
	                 0, "max_positions", hp->max_pos, "vocab", hp->vocab, "blocks", *blocks);
}

/* Final block: norm then the logits head. */
static void
head_block(struct builder *b, json_t *blocks, int dim, const char *norm_kind, float eps)
{
	json_t *ops, *blk = block("head", "x", "f32", dim, &ops), *o;

	b->layer = -1;
	o = op(b, ops, norm_kind, "x", NULL, NULL, "h");
	set_weight(b, o, "weight", NESA_LM_NORM);
	set_weight(b, o, "bias", NESA_LM_NORM_B);
	if (o != NULL)
		json_object_set_new(o, "eps", json_real(eps));
	o = op(b, ops, "linear", "h", NULL, NULL, "logits");
	set_weight(b, o, "weight", NESA_LM_OUTPUT);
	if (o != NULL)
		json_object_set_new(o, "head", json_true());
	json_array_set_new(json_object_get(blk, "outputs"), 0, json_string("logits"));
	if (json_array_append_new(blocks, blk) != 0)
		b->failed = 1;
}

json_t *
nesa_llama_graph(const struct nesa_lm_hparams *hp, nesa_lm_namer name, void *ctx,
                 const char *model_name)
{
	struct builder b = {name, ctx, -1, 0};
	const int head_dim = hp->dim / hp->n_heads;
	json_t *blocks, *doc = doc_new(hp, model_name, "llama", &blocks), *ops, *blk, *o;
	char bname[32];
	int l;

	if (doc == NULL)
		return NULL;
	blk = block("embed", "tokens", "i32", 0, &ops);
	o = op(&b, ops, "embedding", "tokens", NULL, NULL, "x");
	set_weight(&b, o, "weight", NESA_LM_EMBED);
	json_array_append_new(blocks, blk);
	for (l = 0; l < hp->n_layers; l++) {
		b.layer = l;
		snprintf(bname, sizeof bname, "layer.%d", l);
		blk = block(bname, "x", "f32", hp->dim, &ops);
		o = op(&b, ops, "rmsnorm", "x", NULL, NULL, "h");
		set_weight(&b, o, "weight", NESA_LM_ATTN_NORM);
		json_object_set_new(o, "eps", json_real(hp->eps));
		set_weight(&b, op(&b, ops, "linear", "h", NULL, NULL, "q"), "weight", NESA_LM_WQ);
		set_weight(&b, op(&b, ops, "linear", "h", NULL, NULL, "k"), "weight", NESA_LM_WK);
		set_weight(&b, op(&b, ops, "linear", "h", NULL, NULL, "v"), "weight", NESA_LM_WV);
		o = op(&b, ops, "rope", "q", NULL, NULL, "q");
		json_object_update_new(o, json_pack("{s:i, s:f, s:s}", "head_dim", head_dim, "theta",
		                                hp->theta, "layout",
		                                hp->rope == NESA_ROPE_HALF ? "half" : "interleaved"));
		o = op(&b, ops, "rope", "k", NULL, NULL, "k");
		json_object_update_new(o, json_pack("{s:i, s:f, s:s}", "head_dim", head_dim, "theta",
		                                hp->theta, "layout",
		                                hp->rope == NESA_ROPE_HALF ? "half" : "interleaved"));
		o = op(&b, ops, "attention", "q", "k", "v", "a");
		json_object_update_new(o, json_pack("{s:i, s:i, s:i}", "n_heads", hp->n_heads, "n_kv_heads",
		                                hp->n_kv_heads, "head_dim", head_dim));
		set_weight(&b, op(&b, ops, "linear", "a", NULL, NULL, "o"), "weight", NESA_LM_WO);
		op(&b, ops, "add", "x", "o", NULL, "x");
		o = op(&b, ops, "rmsnorm", "x", NULL, NULL, "h");
		set_weight(&b, o, "weight", NESA_LM_FFN_NORM);
		json_object_set_new(o, "eps", json_real(hp->eps));
		set_weight(&b, op(&b, ops, "linear", "h", NULL, NULL, "g"), "weight", NESA_LM_W1);
		set_weight(&b, op(&b, ops, "linear", "h", NULL, NULL, "u"), "weight", NESA_LM_W3);
		op(&b, ops, "silu", "g", NULL, NULL, "g");
		op(&b, ops, "mul", "g", "u", NULL, "g");
		set_weight(&b, op(&b, ops, "linear", "g", NULL, NULL, "d"), "weight", NESA_LM_W2);
		op(&b, ops, "add", "x", "d", NULL, "x");
		if (json_array_append_new(blocks, blk) != 0)
			b.failed = 1;
	}
	head_block(&b, blocks, hp->dim, "rmsnorm", hp->eps);
	if (b.failed) {
		json_decref(doc);
		return NULL;
	}
	return doc;
}

json_t *
nesa_gpt2_graph(const struct nesa_lm_hparams *hp, nesa_lm_namer name, void *ctx,
                const char *model_name)
{
	struct builder b = {name, ctx, -1, 0};
	const int head_dim = hp->dim / hp->n_heads;
	json_t *blocks, *doc = doc_new(hp, model_name, "gpt2", &blocks), *ops, *blk, *o;
	char bname[32];
	int l;

	if (doc == NULL)
		return NULL;
	blk = block("embed", "tokens", "i32", 0, &ops);
	set_weight(&b, op(&b, ops, "embedding", "tokens", NULL, NULL, "x"), "weight", NESA_LM_EMBED);
	set_weight(&b, op(&b, ops, "pos_embedding", "x", NULL, NULL, "x"), "weight", NESA_LM_POS);
	json_array_append_new(blocks, blk);
	for (l = 0; l < hp->n_layers; l++) {
		b.layer = l;
		snprintf(bname, sizeof bname, "layer.%d", l);
		blk = block(bname, "x", "f32", hp->dim, &ops);
		o = op(&b, ops, "layernorm", "x", NULL, NULL, "h");
		set_weight(&b, o, "weight", NESA_LM_ATTN_NORM);
		set_weight(&b, o, "bias", NESA_LM_ATTN_NORM_B);
		json_object_set_new(o, "eps", json_real(hp->eps));
		o = op(&b, ops, "linear", "h", NULL, NULL, "q");
		set_weight(&b, o, "weight", NESA_LM_WQ);
		set_weight(&b, o, "bias", NESA_LM_BQ);
		o = op(&b, ops, "linear", "h", NULL, NULL, "k");
		set_weight(&b, o, "weight", NESA_LM_WK);
		set_weight(&b, o, "bias", NESA_LM_BK);
		o = op(&b, ops, "linear", "h", NULL, NULL, "v");
		set_weight(&b, o, "weight", NESA_LM_WV);
		set_weight(&b, o, "bias", NESA_LM_BV);
		o = op(&b, ops, "attention", "q", "k", "v", "a");
		json_object_update_new(o, json_pack("{s:i, s:i, s:i}", "n_heads", hp->n_heads, "n_kv_heads",
		                                hp->n_heads, "head_dim", head_dim));
		o = op(&b, ops, "linear", "a", NULL, NULL, "o");
		set_weight(&b, o, "weight", NESA_LM_WO);
		set_weight(&b, o, "bias", NESA_LM_BO);
		op(&b, ops, "add", "x", "o", NULL, "x");
		o = op(&b, ops, "layernorm", "x", NULL, NULL, "h");
		set_weight(&b, o, "weight", NESA_LM_FFN_NORM);
		set_weight(&b, o, "bias", NESA_LM_FFN_NORM_B);
		json_object_set_new(o, "eps", json_real(hp->eps));
		o = op(&b, ops, "linear", "h", NULL, NULL, "f");
		set_weight(&b, o, "weight", NESA_LM_W1);
		set_weight(&b, o, "bias", NESA_LM_B1);
		op(&b, ops, "gelu_tanh", "f", NULL, NULL, "f");
		o = op(&b, ops, "linear", "f", NULL, NULL, "d");
		set_weight(&b, o, "weight", NESA_LM_W2);
		set_weight(&b, o, "bias", NESA_LM_B2);
		op(&b, ops, "add", "x", "d", NULL, "x");
		if (json_array_append_new(blocks, blk) != 0)
			b.failed = 1;
	}
	head_block(&b, blocks, hp->dim, "layernorm", hp->eps);
	if (b.failed) {
		json_decref(doc);
		return NULL;
	}
	return doc;
}
