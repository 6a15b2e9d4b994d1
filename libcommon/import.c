/* SPDX-License-Identifier: MIT */
/*
 * Importers of llama2.c checkpoints, GGUF, Hugging Face directories and
 * graph files; see import.h.  Each maps the source's tensors without
 * copying where the runtime can use them as stored (f32, f16, bf16, q8_0,
 * q4_0), and writes a graph document whose weight references are the
 * source's own tensor names.  Tensors are copied only where the layout
 * must change: GPT-2's Conv1D matrices are stored [in, out] and split,
 * llama2.c version-2 int8 groups are expanded, norm vectors stored in a
 * 16-bit type are widened, batch norms are folded into convolutions.
 */
#include "config.h"

#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "arch.h"
#include "gguf.h"
#include "import.h"
#include "llama2c.h"
#include "safetensors.h"

/* A tensor named `name` in ts as f32: itself, or a widened copy "name#f32". */
static enum nesa_status
f32_version(struct nesa_tset *ts, const char *name, const char **out, struct nesa_err *err)
{
	struct nesa_tensor *t = nesa_tset_find(ts, name), *c;
	char wide[300];
	enum nesa_status s;

	*out = name;
	if (t == NULL || t->dtype == NESA_F32)
		return NESA_OK;
	snprintf(wide, sizeof wide, "%s#f32", name);
	c = nesa_tset_find(ts, wide);
	if (c == NULL) {
		s = nesa_tset_alloc(ts, wide, NESA_F32, t->ndim, t->shape, &c, err);
		if (s != NESA_OK)
			return s;
		t = nesa_tset_find(ts, name); /* the add may have moved the items */
		nesa_tensor_to_f32(t, c->data);
	}
	*out = c->name;
	return NESA_OK;
}

static const char *
dir_of(const char *path, char *buf, size_t size)
{
	char tmp[4096];

	snprintf(tmp, sizeof tmp, "%s", path);
	snprintf(buf, size, "%s", dirname(tmp));
	return buf;
}

static bool
file_exists(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Checks that every weight a graph names exists, naming the first missing. */
static enum nesa_status
check_weights(const char *path, json_t *graph, struct nesa_tset *ts, const char *(*skipped)(void *, const char *),
              void *ctx, struct nesa_err *err)
{
	json_t *names, *n;
	size_t i;
	enum nesa_status s;

	s = nesa_graph_doc_weights(graph, 0, nesa_graph_doc_blocks(graph), &names, err);
	if (s != NESA_OK)
		return s;
	json_array_foreach(names, i, n) {
		const char *name = json_string_value(n);

		if (nesa_tset_find(ts, name) == NULL) {
			const char *why = skipped != NULL ? skipped(ctx, name) : NULL;

			s = why != NULL
			        ? nesa_err_set(err, NESA_EUNSUPPORTED, "cannot load '%s': tensor '%s' %s", path, name, why)
			        : nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': tensor '%s' is missing", path, name);
			break;
		}
	}
	json_decref(names);
	return s;
}

/* llama2.c */

struct l2c_names {
	struct nesa_tset *ts;
	bool shared;
	struct nesa_err *err;
	enum nesa_status st;
};

static const char *
l2c_namer(void *ctx, enum nesa_lm_role role, int layer, char *buf, size_t size)
{
	struct l2c_names *c = ctx;
	const char *n;

	switch (role) {
	case NESA_LM_EMBED: n = "tok_embeddings"; break;
	case NESA_LM_ATTN_NORM: n = "attention_norm"; break;
	case NESA_LM_WQ: n = "wq"; break;
	case NESA_LM_WK: n = "wk"; break;
	case NESA_LM_WV: n = "wv"; break;
	case NESA_LM_WO: n = "wo"; break;
	case NESA_LM_FFN_NORM: n = "ffn_norm"; break;
	case NESA_LM_W1: n = "w1"; break;
	case NESA_LM_W2: n = "w2"; break;
	case NESA_LM_W3: n = "w3"; break;
	case NESA_LM_NORM: n = "norm"; break;
	case NESA_LM_OUTPUT: n = c->shared ? "tok_embeddings" : "output"; break;
	default: return NULL;
	}
	if (layer >= 0)
		snprintf(buf, size, "layers.%d.%s", layer, n);
	else
		snprintf(buf, size, "%s", n);
	return buf;
}

/* Version 2 stores int8 groups: expand W.q * W.s into an f32 tensor W. */
static enum nesa_status
l2c_expand(struct nesa_tset *ts, int group, struct nesa_err *err)
{
	size_t i, n = ts->n;

	for (i = 0; i < n; i++) {
		char base[256];
		const struct nesa_tensor *q = &ts->items[i], *sc;
		struct nesa_tensor *w;
		size_t len = strlen(q->name);
		int64_t k, ne;
		enum nesa_status s;

		if (len < 3 || strcmp(q->name + len - 2, ".q") != 0 || len - 2 >= sizeof base)
			continue;
		memcpy(base, q->name, len - 2);
		base[len - 2] = '\0';
		strcat(base, ".s");
		sc = nesa_tset_find(ts, base);
		base[len - 2] = '\0';
		if (sc == NULL)
			return nesa_err_set(err, NESA_EFORMAT, "scales of '%s' are missing", base);
		s = nesa_tset_alloc(ts, base, NESA_F32, ts->items[i].ndim, ts->items[i].shape, &w, err);
		if (s != NESA_OK)
			return s;
		q = &ts->items[i];
		sc = nesa_tset_find(ts, strcat(strcpy((char[260]){0}, base), ".s"));
		ne = nesa_tensor_nelems(q);
		for (k = 0; k < ne; k++)
			((float *)w->data)[k] = (float)((const int8_t *)q->data)[k] *
			                        ((const float *)sc->data)[k / group];
	}
	return NESA_OK;
}

static void
l2c_free_cb(void *p)
{
	nesa_llama2c_free(p);
}

enum nesa_status
nesa_import_llama2c(const char *path, const char *tokenizer, struct nesa_model **out,
                    struct nesa_err *err)
{
	struct nesa_model *m = nesa_model_new(path, "llama2c");
	struct nesa_llama2c *l;
	struct nesa_lm_hparams hp;
	struct l2c_names names;
	char dir[4096], tokpath[4200], mname[256];
	const struct nesa_llama2c_params *p;
	enum nesa_status s;

	*out = NULL;
	if (m == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	s = nesa_llama2c_open(path, &l, err);
	if (s != NESA_OK) {
		nesa_model_free(m);
		return s;
	}
	m->backing = l;
	m->backing_free = l2c_free_cb;
	m->weights = &l->tensors;
	p = &l->params;
	if (p->version == 2 && (s = l2c_expand(&l->tensors, p->group_size, err)) != NESA_OK)
		goto fail;
	hp = (struct nesa_lm_hparams){p->dim, p->hidden_dim, p->n_layers, p->n_heads, p->n_kv_heads,
	                              p->vocab_size, p->seq_len, 1e-5f, 10000.0f, NESA_ROPE_INTERLEAVED};
	names = (struct l2c_names){&l->tensors, p->shared_classifier, err, NESA_OK};
	{
		const char *base = strrchr(path, '/');
		const char *dot;

		snprintf(mname, sizeof mname, "%s", base != NULL ? base + 1 : path);
		dot = strrchr(mname, '.');
		if (dot != NULL && dot != mname)
			mname[dot - mname] = '\0';
	}
	m->graph = nesa_llama_graph(&hp, l2c_namer, &names, mname);
	m->meta = json_pack("{s:s, s:O}", "source_format", "llama2c", "params", l->params_json);
	if (m->graph == NULL || m->meta == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto fail;
	}
	if ((s = check_weights(path, m->graph, m->weights, NULL, NULL, err)) != NESA_OK)
		goto fail;
	/* The tokenizer: given, or tokenizer.bin / tok<vocab>.bin beside the model. */
	if (tokenizer == NULL) {
		dir_of(path, dir, sizeof dir);
		snprintf(tokpath, sizeof tokpath, "%s/tokenizer.bin", dir);
		if (!file_exists(tokpath))
			snprintf(tokpath, sizeof tokpath, "%s/tok%d.bin", dir, p->vocab_size);
		if (file_exists(tokpath))
			tokenizer = tokpath;
	}
	if (tokenizer != NULL &&
	    (s = nesa_tokenizer_load_llama2c(tokenizer, p->vocab_size, &m->tok, err)) != NESA_OK)
		goto fail;
	if ((s = nesa_model_finish(m, err)) != NESA_OK)
		goto fail;
	*out = m;
	return NESA_OK;
fail:
	nesa_model_free(m);
	return s;
}

/* GGUF */

struct gguf_names {
	struct nesa_tset *ts;
	const char *output;
	const char *norm_f32[3]; /* widened names of attn_norm/ffn_norm/output_norm, set per call */
};

static const char *
gguf_namer(void *ctx, enum nesa_lm_role role, int layer, char *buf, size_t size)
{
	struct gguf_names *c = ctx;
	const char *n;

	switch (role) {
	case NESA_LM_EMBED: n = "token_embd"; break;
	case NESA_LM_ATTN_NORM: n = "attn_norm"; break;
	case NESA_LM_WQ: n = "attn_q"; break;
	case NESA_LM_WK: n = "attn_k"; break;
	case NESA_LM_WV: n = "attn_v"; break;
	case NESA_LM_WO: n = "attn_output"; break;
	case NESA_LM_FFN_NORM: n = "ffn_norm"; break;
	case NESA_LM_W1: n = "ffn_gate"; break;
	case NESA_LM_W2: n = "ffn_down"; break;
	case NESA_LM_W3: n = "ffn_up"; break;
	case NESA_LM_NORM: n = "output_norm"; break;
	case NESA_LM_OUTPUT:
		snprintf(buf, size, "%s", c->output);
		return buf;
	default: return NULL;
	}
	if (layer >= 0)
		snprintf(buf, size, "blk.%d.%s.weight", layer, n);
	else
		snprintf(buf, size, "%s.weight", n);
	/* Norm vectors must be f32: use the widened copy when there is one. */
	if (role == NESA_LM_ATTN_NORM || role == NESA_LM_FFN_NORM || role == NESA_LM_NORM) {
		const char *f;

		if (f32_version(c->ts, buf, &f, NULL) == NESA_OK && f != buf)
			snprintf(buf, size, "%s", f);
	}
	return buf;
}

static const char *
gguf_skipped(void *ctx, const char *name)
{
	static char why[256];
	const struct nesa_gguf_skipped *sk = nesa_gguf_find_skipped(ctx, name);

	if (sk == NULL)
		return NULL;
	snprintf(why, sizeof why, "has ggml type %s (supported: %s)", nesa_gguf_type_name(sk->ggml_type),
	         nesa_gguf_supported_types());
	return why;
}

static int64_t
kv_int(const json_t *kv, const char *key, int64_t def)
{
	json_t *v = json_object_get(kv, key);

	return json_is_integer(v) ? json_integer_value(v) : def;
}

static double
kv_real(const json_t *kv, const char *key, double def)
{
	json_t *v = json_object_get(kv, key);

	return json_is_number(v) ? json_number_value(v) : def;
}

/* The tokenizer from tokenizer.ggml.* metadata, or none. */
static enum nesa_status
gguf_tokenizer(const char *path, const struct nesa_gguf *g, struct nesa_tokenizer **out,
               struct nesa_err *err)
{
	const char *model = json_string_value(json_object_get(g->kv, "tokenizer.ggml.model"));
	json_t *toks = json_object_get(g->kv, "tokenizer.ggml.tokens");
	json_t *scores = json_object_get(g->kv, "tokenizer.ggml.scores");
	json_t *types = json_object_get(g->kv, "tokenizer.ggml.token_type");
	json_t *merges = json_object_get(g->kv, "tokenizer.ggml.merges");
	struct nesa_tokenizer_vocab v;
	const char **pieces = NULL, **mpieces = NULL;
	size_t *lens = NULL, *mlens = NULL, n, i;
	float *sc = NULL;
	int32_t *ty = NULL;
	enum nesa_status s;

	*out = NULL;
	if (model == NULL || !json_is_array(toks))
		return NESA_OK;
	if (strcmp(model, "llama") != 0 && strcmp(model, "gpt2") != 0)
		return nesa_err_set(err, NESA_EUNSUPPORTED, "cannot load '%s': tokenizer model '%s' (supported: llama, gpt2)",
		                    path, model);
	n = json_array_size(toks);
	pieces = nesa_calloc(n ? n : 1, sizeof *pieces);
	lens = nesa_calloc(n ? n : 1, sizeof *lens);
	sc = nesa_calloc(n ? n : 1, sizeof *sc);
	ty = nesa_calloc(n ? n : 1, sizeof *ty);
	if (pieces == NULL || lens == NULL || sc == NULL || ty == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		json_t *t = json_array_get(toks, i);

		if (!json_is_string(t)) {
			s = nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': token %zu is not a string", path, i);
			goto out;
		}
		pieces[i] = json_string_value(t);
		lens[i] = json_string_length(t);
		sc[i] = (float)json_number_value(json_array_get(scores, i));
		ty[i] = json_is_integer(json_array_get(types, i)) ? (int32_t)json_integer_value(json_array_get(types, i)) : 1;
	}
	memset(&v, 0, sizeof v);
	v.n = (int32_t)n;
	v.pieces = pieces;
	v.lens = lens;
	v.scores = json_is_array(scores) ? sc : NULL;
	v.types = json_is_array(types) ? ty : NULL;
	v.bos = (int32_t)kv_int(g->kv, "tokenizer.ggml.bos_token_id", -1);
	v.eos = (int32_t)kv_int(g->kv, "tokenizer.ggml.eos_token_id", -1);
	v.unk = (int32_t)kv_int(g->kv, "tokenizer.ggml.unknown_token_id", -1);
	v.pad = (int32_t)kv_int(g->kv, "tokenizer.ggml.padding_token_id", -1);
	if (strcmp(model, "llama") == 0) {
		if (v.scores == NULL) {
			s = nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': the llama tokenizer has no scores", path);
			goto out;
		}
		s = nesa_tokenizer_new_spm(&v, out, err);
	} else {
		size_t nm = json_array_size(merges);

		mpieces = nesa_calloc(nm ? nm : 1, sizeof *mpieces);
		mlens = nesa_calloc(nm ? nm : 1, sizeof *mlens);
		if (mpieces == NULL || mlens == NULL) {
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
			goto out;
		}
		for (i = 0; i < nm; i++) {
			mpieces[i] = json_string_value(json_array_get(merges, i));
			mlens[i] = json_string_length(json_array_get(merges, i));
			if (mpieces[i] == NULL) {
				s = nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': merge %zu is not a string", path, i);
				goto out;
			}
		}
		s = nesa_tokenizer_new_gpt2(&v, mpieces, mlens, nm, out, err);
	}
	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot load the tokenizer of '%s'", path);
out:
	nesa_free(pieces);
	nesa_free(lens);
	nesa_free(sc);
	nesa_free(ty);
	nesa_free(mpieces);
	nesa_free(mlens);
	return s;
}

static void
gguf_free_cb(void *p)
{
	nesa_gguf_free(p);
}

enum nesa_status
nesa_import_gguf(const char *path, struct nesa_model **out, struct nesa_err *err)
{
	struct nesa_model *m = nesa_model_new(path, "gguf");
	struct nesa_gguf *g;
	struct nesa_lm_hparams hp;
	struct gguf_names names;
	const struct nesa_tensor *emb;
	const char *arch, *name;
	enum nesa_status s;

	*out = NULL;
	if (m == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	s = nesa_gguf_open(path, &g, err);
	if (s != NESA_OK) {
		nesa_model_free(m);
		return s;
	}
	m->backing = g;
	m->backing_free = gguf_free_cb;
	m->weights = &g->tensors;
	arch = json_string_value(json_object_get(g->kv, "general.architecture"));
	if (arch == NULL || strcmp(arch, "llama") != 0) {
		s = nesa_err_set(err, NESA_EUNSUPPORTED, "cannot load '%s': architecture '%s' (supported: llama)",
		                 path, arch != NULL ? arch : "(none)");
		goto fail;
	}
	emb = nesa_tset_find(&g->tensors, "token_embd.weight");
	if (emb == NULL || emb->ndim != 2) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': no 2-D tensor 'token_embd.weight'", path);
		goto fail;
	}
	hp.dim = (int)kv_int(g->kv, "llama.embedding_length", 0);
	hp.hidden = (int)kv_int(g->kv, "llama.feed_forward_length", 0);
	hp.n_layers = (int)kv_int(g->kv, "llama.block_count", 0);
	hp.n_heads = (int)kv_int(g->kv, "llama.attention.head_count", 0);
	hp.n_kv_heads = (int)kv_int(g->kv, "llama.attention.head_count_kv", hp.n_heads);
	hp.vocab = (int)emb->shape[0];
	hp.max_pos = (int)kv_int(g->kv, "llama.context_length", 0);
	hp.eps = (float)kv_real(g->kv, "llama.attention.layer_norm_rms_epsilon", 1e-5);
	hp.theta = (float)kv_real(g->kv, "llama.rope.freq_base", 10000.0);
	/* llama.cpp stores llama q/k rows for rotation of adjacent pairs. */
	hp.rope = NESA_ROPE_INTERLEAVED;
	if (hp.dim < 1 || hp.hidden < 1 || hp.n_layers < 1 || hp.n_layers > 100000 || hp.n_heads < 1 ||
	    hp.n_kv_heads < 1 || hp.dim % hp.n_heads != 0 || hp.n_heads % hp.n_kv_heads != 0 ||
	    hp.max_pos < 0) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': inconsistent llama hyperparameters", path);
		goto fail;
	}
	if (kv_int(g->kv, "llama.rope.dimension_count", hp.dim / hp.n_heads) != hp.dim / hp.n_heads) {
		s = nesa_err_set(err, NESA_EUNSUPPORTED, "cannot load '%s': partial rotary embeddings are not supported",
		                 path);
		goto fail;
	}
	names.ts = &g->tensors;
	names.output = nesa_tset_find(&g->tensors, "output.weight") != NULL ? "output.weight"
	                                                                     : "token_embd.weight";
	{
		char mname[256];
		const char *gn = json_string_value(json_object_get(g->kv, "general.name"));
		const char *base = strrchr(path, '/');

		snprintf(mname, sizeof mname, "%s", gn != NULL ? gn : base != NULL ? base + 1 : path);
		m->graph = nesa_llama_graph(&hp, gguf_namer, &names, mname);
	}
	m->meta = json_pack("{s:s, s:s}", "source_format", "gguf", "arch", "llama");
	if (m->graph == NULL || m->meta == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto fail;
	}
	name = NULL;
	(void)name;
	if ((s = check_weights(path, m->graph, m->weights, gguf_skipped, g, err)) != NESA_OK ||
	    (s = gguf_tokenizer(path, g, &m->tok, err)) != NESA_OK ||
	    (s = nesa_model_finish(m, err)) != NESA_OK)
		goto fail;
	*out = m;
	return NESA_OK;
fail:
	nesa_model_free(m);
	return s;
}

/* Hugging Face */

struct hf_names {
	struct nesa_tset *ts;
	const char *prefix; /* "" or "transformer." for gpt2 */
	bool tied;
	bool gpt2;
};

static const char *
hf_llama_namer(void *ctx, enum nesa_lm_role role, int layer, char *buf, size_t size)
{
	struct hf_names *c = ctx;
	const char *n;
	bool norm = false;

	switch (role) {
	case NESA_LM_EMBED: snprintf(buf, size, "model.embed_tokens.weight"); return buf;
	case NESA_LM_NORM: snprintf(buf, size, "model.norm.weight"); norm = true; break;
	case NESA_LM_OUTPUT:
		snprintf(buf, size, "%s", c->tied ? "model.embed_tokens.weight" : "lm_head.weight");
		return buf;
	case NESA_LM_ATTN_NORM: n = "input_layernorm"; norm = true; goto layer;
	case NESA_LM_FFN_NORM: n = "post_attention_layernorm"; norm = true; goto layer;
	case NESA_LM_WQ: n = "self_attn.q_proj"; goto layer;
	case NESA_LM_WK: n = "self_attn.k_proj"; goto layer;
	case NESA_LM_WV: n = "self_attn.v_proj"; goto layer;
	case NESA_LM_WO: n = "self_attn.o_proj"; goto layer;
	case NESA_LM_W1: n = "mlp.gate_proj"; goto layer;
	case NESA_LM_W2: n = "mlp.down_proj"; goto layer;
	case NESA_LM_W3: n = "mlp.up_proj"; goto layer;
	default: return NULL;
	layer:
		snprintf(buf, size, "model.layers.%d.%s.weight", layer, n);
		break;
	}
	if (norm) {
		const char *f;

		if (f32_version(c->ts, buf, &f, NULL) == NESA_OK && f != buf)
			snprintf(buf, size, "%s", f);
	}
	return buf;
}

/* gpt2 names after import: Conv1D matrices are split and transposed as "…#q" etc. */
static const char *
hf_gpt2_namer(void *ctx, enum nesa_lm_role role, int layer, char *buf, size_t size)
{
	struct hf_names *c = ctx;
	const char *n;

	switch (role) {
	case NESA_LM_EMBED: case NESA_LM_OUTPUT: n = "wte.weight"; break;
	case NESA_LM_POS: n = "wpe.weight"; break;
	case NESA_LM_NORM: n = "ln_f.weight"; break;
	case NESA_LM_NORM_B: n = "ln_f.bias"; break;
	case NESA_LM_ATTN_NORM: n = "ln_1.weight"; break;
	case NESA_LM_ATTN_NORM_B: n = "ln_1.bias"; break;
	case NESA_LM_FFN_NORM: n = "ln_2.weight"; break;
	case NESA_LM_FFN_NORM_B: n = "ln_2.bias"; break;
	case NESA_LM_WQ: n = "attn.c_attn.weight#q"; break;
	case NESA_LM_WK: n = "attn.c_attn.weight#k"; break;
	case NESA_LM_WV: n = "attn.c_attn.weight#v"; break;
	case NESA_LM_BQ: n = "attn.c_attn.bias#q"; break;
	case NESA_LM_BK: n = "attn.c_attn.bias#k"; break;
	case NESA_LM_BV: n = "attn.c_attn.bias#v"; break;
	case NESA_LM_WO: n = "attn.c_proj.weight#t"; break;
	case NESA_LM_BO: n = "attn.c_proj.bias"; break;
	case NESA_LM_W1: n = "mlp.c_fc.weight#t"; break;
	case NESA_LM_B1: n = "mlp.c_fc.bias"; break;
	case NESA_LM_W2: n = "mlp.c_proj.weight#t"; break;
	case NESA_LM_B2: n = "mlp.c_proj.bias"; break;
	default: return NULL;
	}
	if (layer >= 0)
		snprintf(buf, size, "%sh.%d.%s", c->prefix, layer, n);
	else
		snprintf(buf, size, "%s%s", c->prefix, n);
	return buf;
}

/*
 * GPT-2 stores Conv1D weights [in, out]: write the transposed [out, in]
 * f32 copies the graph refers to, splitting c_attn into q, k and v.
 */
static enum nesa_status
gpt2_prepare(const char *path, struct nesa_tset *ts, const char *prefix, int layers, int dim,
             struct nesa_err *err)
{
	static const char *const mats[] = {"attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
	char src[256], dst[264];
	int l, part;
	size_t k;
	enum nesa_status s;

	for (l = 0; l < layers; l++) {
		for (k = 0; k < 4; k++) {
			const struct nesa_tensor *t;
			struct nesa_tensor *o;
			int64_t in, outd, cols0, i, j;
			float *tmp;

			snprintf(src, sizeof src, "%sh.%d.%s.weight", prefix, l, k < 3 ? mats[k] : "attn.c_attn");
			t = nesa_tset_find(ts, src);
			if (t == NULL || t->ndim != 2)
				return nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': 2-D tensor '%s' is missing", path, src);
			in = t->shape[0];
			outd = t->shape[1];
			if (k == 3 && (in != dim || outd != 3 * (int64_t)dim))
				return nesa_err_set(err, NESA_ESHAPE, "cannot load '%s': '%s' is not [%d, %d]", path, src, dim, 3 * dim);
			tmp = nesa_malloc((size_t)(in * outd) * sizeof *tmp);
			if (tmp == NULL)
				return nesa_err_set(err, NESA_ENOMEM, "out of memory");
			nesa_tensor_to_f32(t, tmp);
			for (part = 0; part < (k == 3 ? 3 : 1); part++) {
				int64_t w = k == 3 ? dim : outd, shape[2];

				cols0 = k == 3 ? (int64_t)part * dim : 0;
				shape[0] = w;
				shape[1] = in;
				snprintf(dst, sizeof dst, "%s#%c", src, k == 3 ? "qkv"[part] : 't');
				s = nesa_tset_alloc(ts, dst, NESA_F32, 2, shape, &o, err);
				if (s != NESA_OK) {
					nesa_free(tmp);
					return s;
				}
				for (i = 0; i < w; i++)
					for (j = 0; j < in; j++)
						((float *)o->data)[i * in + j] = tmp[j * outd + cols0 + i];
			}
			nesa_free(tmp);
			if (k == 3) {
				/* Split the fused bias the same way. */
				const struct nesa_tensor *b;

				snprintf(src, sizeof src, "%sh.%d.attn.c_attn.bias", prefix, l);
				b = nesa_tset_find(ts, src);
				if (b == NULL || b->ndim != 1 || b->shape[0] != 3 * (int64_t)dim || b->dtype != NESA_F32)
					return nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': f32 tensor '%s' [%d] is missing",
					                    path, src, 3 * dim);
				for (part = 0; part < 3; part++) {
					int64_t shape[1] = {dim};
					float *bd;

					snprintf(dst, sizeof dst, "%s#%c", src, "qkv"[part]);
					s = nesa_tset_alloc(ts, dst, NESA_F32, 1, shape, &o, err);
					if (s != NESA_OK)
						return s;
					b = nesa_tset_find(ts, src);
					bd = o->data;
					memcpy(bd, (const float *)b->data + part * dim, (size_t)dim * sizeof *bd);
				}
			}
		}
	}
	return NESA_OK;
}

static void
st_free_cb(void *p)
{
	nesa_safetensors_free(p);
}

static const char *
st_skipped(void *ctx, const char *name)
{
	static char why[256];
	const struct nesa_st_skipped *sk = nesa_safetensors_find_skipped(ctx, name);

	if (sk == NULL)
		return NULL;
	snprintf(why, sizeof why, "has dtype %s (supported: F32, F16, BF16, I32, I8, U8)", sk->dtype);
	return why;
}

static int
cfg_int(const json_t *cfg, const char *key, int def)
{
	json_t *v = json_object_get(cfg, key);

	return json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= INT32_MAX
	           ? (int)json_integer_value(v)
	           : def;
}

enum nesa_status
nesa_import_hf(const char *path, struct nesa_model **out, struct nesa_err *err)
{
	struct nesa_model *m;
	struct nesa_safetensors *st = NULL;
	struct nesa_lm_hparams hp;
	struct hf_names names;
	char dir[4096], file[4200];
	struct stat sb;
	json_error_t je;
	json_t *cfg;
	const char *type;
	enum nesa_status s;

	*out = NULL;
	if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
		snprintf(dir, sizeof dir, "%s", path);
	else
		dir_of(path, dir, sizeof dir);
	snprintf(file, sizeof file, "%s/config.json", dir);
	cfg = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
	if (cfg == NULL)
		return nesa_err_set(err, file_exists(file) ? NESA_EFORMAT : NESA_ENOENT,
		                    "cannot load '%s': %s (line %d)", file, je.text, je.line);
	m = nesa_model_new(dir, "hf");
	if (m == NULL) {
		json_decref(cfg);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	type = json_string_value(json_object_get(cfg, "model_type"));
	if (type == NULL || (strcmp(type, "llama") != 0 && strcmp(type, "gpt2") != 0)) {
		s = nesa_err_set(err, NESA_EUNSUPPORTED, "cannot load '%s': model_type '%s' (supported: llama, gpt2)",
		                 file, type != NULL ? type : "(none)");
		goto fail;
	}
	s = nesa_safetensors_open(dir, &st, err);
	if (s != NESA_OK)
		goto fail;
	m->backing = st;
	m->backing_free = st_free_cb;
	m->weights = &st->tensors;
	memset(&names, 0, sizeof names);
	names.ts = &st->tensors;
	names.prefix = "";
	if (strcmp(type, "llama") == 0) {
		json_t *rs = json_object_get(cfg, "rope_scaling");

		hp.dim = cfg_int(cfg, "hidden_size", 0);
		hp.hidden = cfg_int(cfg, "intermediate_size", 0);
		hp.n_layers = cfg_int(cfg, "num_hidden_layers", 0);
		hp.n_heads = cfg_int(cfg, "num_attention_heads", 0);
		hp.n_kv_heads = cfg_int(cfg, "num_key_value_heads", hp.n_heads);
		hp.vocab = cfg_int(cfg, "vocab_size", 0);
		hp.max_pos = cfg_int(cfg, "max_position_embeddings", 0);
		hp.eps = (float)kv_real(cfg, "rms_norm_eps", 1e-6);
		hp.theta = (float)kv_real(cfg, "rope_theta", 10000.0);
		hp.rope = NESA_ROPE_HALF;
		names.tied = json_is_true(json_object_get(cfg, "tie_word_embeddings"));
		if (rs != NULL && !json_is_null(rs)) {
			s = nesa_err_set(err, NESA_EUNSUPPORTED, "cannot load '%s': rope_scaling is not supported", file);
			goto fail;
		}
	} else {
		const char *act = json_string_value(json_object_get(cfg, "activation_function"));

		hp.dim = cfg_int(cfg, "n_embd", 0);
		hp.n_layers = cfg_int(cfg, "n_layer", 0);
		hp.n_heads = cfg_int(cfg, "n_head", 0);
		hp.n_kv_heads = hp.n_heads;
		hp.hidden = cfg_int(cfg, "n_inner", 4 * hp.dim);
		hp.vocab = cfg_int(cfg, "vocab_size", 0);
		hp.max_pos = cfg_int(cfg, "n_positions", 0);
		hp.eps = (float)kv_real(cfg, "layer_norm_epsilon", 1e-5);
		hp.theta = 0;
		hp.rope = NESA_ROPE_INTERLEAVED;
		if (act != NULL && strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0) {
			s = nesa_err_set(err, NESA_EUNSUPPORTED,
			                 "cannot load '%s': activation_function '%s' (supported: gelu_new, gelu_pytorch_tanh)",
			                 file, act);
			goto fail;
		}
		names.gpt2 = true;
		if (nesa_tset_find(&st->tensors, "transformer.wte.weight") != NULL)
			names.prefix = "transformer.";
	}
	if (hp.dim < 1 || hp.n_layers < 1 || hp.n_layers > 100000 || hp.n_heads < 1 || hp.n_kv_heads < 1 ||
	    hp.dim % hp.n_heads != 0 || hp.n_heads % hp.n_kv_heads != 0 || hp.vocab < 1 || hp.hidden < 1) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': inconsistent hyperparameters", file);
		goto fail;
	}
	if (names.gpt2) {
		if ((s = gpt2_prepare(dir, &st->tensors, names.prefix, hp.n_layers, hp.dim, err)) != NESA_OK)
			goto fail;
		m->graph = nesa_gpt2_graph(&hp, hf_gpt2_namer, &names, type);
	} else {
		m->graph = nesa_llama_graph(&hp, hf_llama_namer, &names, type);
	}
	m->meta = json_pack("{s:s, s:O}", "source_format", "hf", "config", cfg);
	if (m->graph == NULL || m->meta == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto fail;
	}
	if ((s = check_weights(dir, m->graph, m->weights, st_skipped, st, err)) != NESA_OK)
		goto fail;
	{
		char vocab[4200], merges[4200];

		snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
		snprintf(merges, sizeof merges, "%s/merges.txt", dir);
		if (names.gpt2 && file_exists(vocab) && file_exists(merges) &&
		    (s = nesa_tokenizer_load_gpt2(vocab, merges, &m->tok, err)) != NESA_OK)
			goto fail;
	}
	if ((s = nesa_model_finish(m, err)) != NESA_OK)
		goto fail;
	json_decref(cfg);
	*out = m;
	return NESA_OK;
fail:
	json_decref(cfg);
	nesa_model_free(m);
	return s;
}

/* Graph files */

/*
 * Folds every batch norm that directly follows a convolution, and whose
 * input nothing else reads, into that convolution: new weight and bias
 * tensors "<weight>#bn" and "<weight>#bnb", the batch norm op removed.
 */
static enum nesa_status
fold_batchnorms(json_t *graph, struct nesa_tset *ts, struct nesa_err *err)
{
	json_t *blocks = json_object_get(graph, "blocks"), *blk;
	size_t bi;

	json_array_foreach(blocks, bi, blk) {
		json_t *ops = json_object_get(blk, "ops");
		size_t i;

		for (i = 0; i + 1 < json_array_size(ops); i++) {
			json_t *conv = json_array_get(ops, i), *bn = json_array_get(ops, i + 1), *o;
			const char *cout = json_string_value(json_object_get(conv, "out"));
			const char *bin = json_string_value(json_array_get(json_object_get(bn, "in"), 0));
			const struct nesa_tensor *w, *b, *g, *beta, *mu, *var;
			struct nesa_tensor *nw, *nb;
			char wname[300], bname[300];
			double eps;
			int64_t O, per, c, k;
			size_t j;
			bool used = false;
			enum nesa_status s;

			if (!json_is_object(conv) || !json_is_object(bn) || cout == NULL || bin == NULL ||
			    strcmp(json_string_value(json_object_get(conv, "op")) ? json_string_value(json_object_get(conv, "op")) : "", "conv2d") != 0 ||
			    strcmp(json_string_value(json_object_get(bn, "op")) ? json_string_value(json_object_get(bn, "op")) : "", "batchnorm") != 0 ||
			    strcmp(cout, bin) != 0)
				continue;
			/* The conv output must feed the batch norm only. */
			for (j = i + 2; j < json_array_size(ops); j++) {
				json_t *in = json_object_get(json_array_get(ops, j), "in"), *e;
				size_t q;

				json_array_foreach(in, q, e)
					if (json_is_string(e) && strcmp(json_string_value(e), cout) == 0)
						used = true;
				if (json_is_string(json_object_get(json_array_get(ops, j), "out")) &&
				    strcmp(json_string_value(json_object_get(json_array_get(ops, j), "out")), cout) == 0)
					break; /* redefined: later reads see the new version */
			}
			{
				json_t *outs = json_object_get(blk, "outputs"), *e;
				size_t q;

				json_array_foreach(outs, q, e)
					if (json_is_string(e) && strcmp(json_string_value(e), cout) == 0 &&
					    strcmp(cout, json_string_value(json_object_get(bn, "out")) ? json_string_value(json_object_get(bn, "out")) : "") != 0)
						used = true;
			}
			if (used)
				continue;
			w = nesa_tset_find(ts, json_string_value(json_object_get(conv, "weight")));
			b = nesa_tset_find(ts, json_string_value(json_object_get(conv, "bias")));
			g = nesa_tset_find(ts, json_string_value(json_object_get(bn, "weight")));
			beta = nesa_tset_find(ts, json_string_value(json_object_get(bn, "bias")));
			mu = nesa_tset_find(ts, json_string_value(json_object_get(bn, "mean")));
			var = nesa_tset_find(ts, json_string_value(json_object_get(bn, "var")));
			if (w == NULL || g == NULL || beta == NULL || mu == NULL || var == NULL || w->ndim != 4 ||
			    w->dtype != NESA_F32)
				continue; /* left for the compiler to report */
			O = w->shape[0];
			if (g->shape[0] != O || beta->shape[0] != O || mu->shape[0] != O || var->shape[0] != O ||
			    g->dtype != NESA_F32 || beta->dtype != NESA_F32 || mu->dtype != NESA_F32 ||
			    var->dtype != NESA_F32 || (b != NULL && (b->shape[0] != O || b->dtype != NESA_F32)))
				continue;
			eps = json_is_number(json_object_get(bn, "eps")) ? json_number_value(json_object_get(bn, "eps")) : 1e-5;
			snprintf(wname, sizeof wname, "%s#bn", w->name);
			snprintf(bname, sizeof bname, "%s#bnb", w->name);
			{
				int64_t bshape[1] = {O};
				int64_t wshape[4] = {w->shape[0], w->shape[1], w->shape[2], w->shape[3]};
				const char *names[6] = {w->name, b != NULL ? b->name : NULL, g->name, beta->name, mu->name, var->name};

				if ((s = nesa_tset_alloc(ts, wname, NESA_F32, 4, wshape, &nw, err)) != NESA_OK ||
				    (s = nesa_tset_alloc(ts, bname, NESA_F32, 1, bshape, &nb, err)) != NESA_OK)
					return s;
				/* Adding may move items: look everything up again. */
				nw = nesa_tset_find(ts, wname);
				w = nesa_tset_find(ts, names[0]);
				b = names[1] != NULL ? nesa_tset_find(ts, names[1]) : NULL;
				g = nesa_tset_find(ts, names[2]);
				beta = nesa_tset_find(ts, names[3]);
				mu = nesa_tset_find(ts, names[4]);
				var = nesa_tset_find(ts, names[5]);
			}
			per = nesa_tensor_nelems(w) / O;
			for (c = 0; c < O; c++) {
				double sc = (double)((const float *)g->data)[c] /
				            sqrt((double)((const float *)var->data)[c] + eps);
				double b0 = b != NULL ? ((const float *)b->data)[c] : 0.0;

				for (k = 0; k < per; k++)
					((float *)nw->data)[c * per + k] = (float)(((const float *)w->data)[c * per + k] * sc);
				((float *)nb->data)[c] = (float)((b0 - ((const float *)mu->data)[c]) * sc +
				                                 ((const float *)beta->data)[c]);
			}
			o = conv;
			json_object_set_new(o, "weight", json_string(wname));
			json_object_set_new(o, "bias", json_string(bname));
			json_object_set(o, "out", json_object_get(bn, "out"));
			json_array_remove(ops, i + 1);
		}
	}
	return NESA_OK;
}

enum nesa_status
nesa_import_json(const char *path, const char *weights, struct nesa_model **out,
                 struct nesa_err *err)
{
	struct nesa_model *m;
	struct nesa_safetensors *st = NULL;
	json_error_t je;
	json_t *doc;
	const char *wfile;
	char dir[4096], wpath[8300];
	enum nesa_status s;

	*out = NULL;
	doc = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (doc == NULL)
		return nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': %s (line %d, column %d)", path,
		                    je.text, je.line, je.column);
	if (json_object_get(doc, "model_type") != NULL) {
		json_decref(doc);
		return nesa_import_hf(path, out, err);
	}
	if (json_object_get(doc, "graph_version") == NULL) {
		json_decref(doc);
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot load '%s': neither a graph file (no 'graph_version') nor a Hugging Face config.json (no 'model_type')",
		                    path);
	}
	wfile = weights != NULL ? weights : json_string_value(json_object_get(doc, "weights"));
	m = nesa_model_new(path, "graph");
	if (m == NULL) {
		json_decref(doc);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	m->graph = doc;
	if (wfile == NULL) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': the graph file does not name its 'weights'", path);
		goto fail;
	}
	if (wfile[0] == '/' || weights != NULL)
		snprintf(wpath, sizeof wpath, "%s", wfile);
	else
		snprintf(wpath, sizeof wpath, "%s/%s", dir_of(path, dir, sizeof dir), wfile);
	s = nesa_safetensors_open(wpath, &st, err);
	if (s != NESA_OK)
		goto fail;
	m->backing = st;
	m->backing_free = st_free_cb;
	m->weights = &st->tensors;
	if ((s = fold_batchnorms(doc, &st->tensors, err)) != NESA_OK ||
	    (s = check_weights(path, doc, m->weights, st_skipped, st, err)) != NESA_OK)
		goto fail;
	json_object_del(doc, "weights");
	m->meta = json_pack("{s:s}", "source_format", "graph");
	if ((s = nesa_model_finish(m, err)) != NESA_OK)
		goto fail;
	*out = m;
	return NESA_OK;
fail:
	nesa_model_free(m);
	return s;
}
