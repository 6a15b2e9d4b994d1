/* SPDX-License-Identifier: MIT */
/*
 * llama2.c checkpoint reader; see llama2c.h for the three layouts (from
 * karpathy/llama2.c export.py: legacy_export, version1_export,
 * version2_export) and the tensor names.
 *
 * The header is validated first, then the exact file size the header
 * implies is computed in closed form with overflow checks and compared with
 * the real size; only a file that matches is walked to create tensors, so
 * no loop or allocation is ever driven by an unchecked header field.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "llama2c.h"
#include "xio.h"

#define V0_HEADER 28 /* 7 x i32 */

/* The per-layer tensors, in the order the legacy format stores them. */
enum kind { K_ATT_NORM, K_WQ, K_WK, K_WV, K_WO, K_FFN_NORM, K_W1, K_W2, K_W3, K_COUNT };

static const char *const kind_name[K_COUNT] = {
	"attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3",
};

static uint32_t
le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t
le_i32(const unsigned char *p)
{
	return (int32_t)le32(p);
}

/* Shape [rows, cols] of a per-layer tensor (cols 0 for a vector). */
static void
kind_shape(const struct nesa_llama2c_params *p, enum kind k, int64_t *rows, int64_t *cols)
{
	switch (k) {
	case K_ATT_NORM:
	case K_FFN_NORM: *rows = p->dim; *cols = 0; break;
	case K_WQ:
	case K_WO: *rows = p->dim; *cols = p->dim; break;
	case K_WK:
	case K_WV: *rows = p->kv_dim; *cols = p->dim; break;
	case K_W1:
	case K_W3: *rows = p->hidden_dim; *cols = p->dim; break;
	default: *rows = p->dim; *cols = p->hidden_dim; break; /* K_W2 */
	}
}

/*
 * Reads and checks the header of a size-byte file at b; fills *p.  The
 * version is told by the magic: legacy files start with dim instead, and
 * no plausible dim equals 0x616b3432.  Every check here comes before any
 * size is computed from the fields.
 */
static enum nesa_status
read_header(const unsigned char *b, size_t size, const char *path, struct nesa_llama2c_params *p,
            struct nesa_err *err)
{
	static const char *const field[7] = {"dim", "hidden_dim", "n_layers", "n_heads",
	                                     "n_kv_heads", "vocab_size", "seq_len"};
	int32_t v[7];
	const unsigned char *h;
	int i;

	memset(p, 0, sizeof *p);
	if (size >= 4 && le32(b) == NESA_LLAMA2C_MAGIC) {
		if (size < 8)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "cannot read '%s': unexpected end of file in the header", path);
		p->version = le_i32(b + 4);
		if (p->version != 1 && p->version != 2)
			return nesa_err_set(err, NESA_EVERSION,
			                    "cannot read '%s': llama2.c checkpoint version %d is not "
			                    "supported (only 0, 1 and 2)",
			                    path, p->version);
		if (size < NESA_LLAMA2C_HEADER)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "cannot read '%s': file of %zu bytes is shorter than the "
			                    "%d-byte version %d header",
			                    path, size, NESA_LLAMA2C_HEADER, p->version);
		h = b + 8;
	} else {
		if (size < V0_HEADER)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "cannot read '%s': file of %zu bytes is shorter than the "
			                    "%d-byte llama2.c header",
			                    path, size, V0_HEADER);
		h = b;
	}
	for (i = 0; i < 7; i++)
		v[i] = le_i32(h + 4 * i);
	p->shared_classifier = true;
	if (p->version == 0 && v[5] < 0 && v[5] != INT32_MIN) {
		/* The legacy format flags a separate classifier with a negative vocab. */
		p->shared_classifier = false;
		v[5] = -v[5];
	}
	for (i = 0; i < 7; i++)
		if (v[i] <= 0)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "cannot read '%s': invalid header: %s is %d (must be positive)",
			                    path, field[i], (int)v[i]);
	p->dim = v[0];
	p->hidden_dim = v[1];
	p->n_layers = v[2];
	p->n_heads = v[3];
	p->n_kv_heads = v[4];
	p->vocab_size = v[5];
	p->seq_len = v[6];
	if (p->version > 0) {
		if (h[28] > 1)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "cannot read '%s': invalid header: shared_classifier flag is %u "
			                    "(must be 0 or 1)",
			                    path, h[28]);
		p->shared_classifier = h[28] == 1;
	}
	if (p->version == 2) {
		p->group_size = le_i32(h + 29);
		if (p->group_size <= 0)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "cannot read '%s': invalid header: group_size is %d (must be "
			                    "positive)",
			                    path, p->group_size);
	}
	if (p->dim % p->n_heads != 0)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': invalid header: n_heads %d does not divide dim %d",
		                    path, p->n_heads, p->dim);
	if (p->n_heads % p->n_kv_heads != 0)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': invalid header: n_kv_heads %d does not divide "
		                    "n_heads %d",
		                    path, p->n_kv_heads, p->n_heads);
	p->head_size = p->dim / p->n_heads;
	p->kv_dim = p->head_size * p->n_kv_heads;
	/* Rotary embeddings turn pairs of a head; the legacy tables store head_size / 2. */
	if (p->head_size % 2 != 0)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': invalid header: head size %d (dim / n_heads) is odd",
		                    path, p->head_size);
	return NESA_OK;
}

/*
 * Checked accumulation: *acc += a * b, with a sticky overflow flag so a
 * whole size formula can be written out and checked once at the end.
 */
static void
acc_add(uint64_t *acc, uint64_t a, uint64_t b, bool *ovf)
{
	uint64_t t;

	if (__builtin_mul_overflow(a, b, &t) || __builtin_add_overflow(*acc, t, acc))
		*ovf = true;
}

/*
 * The file size the header implies (NESA_EFORMAT on overflow).  Also checks that
 * the version 2 group size divides every quantized weight.
 */
static enum nesa_status
expected_size(const struct nesa_llama2c_params *p, const char *path, uint64_t *total,
              struct nesa_err *err)
{
	uint64_t D = (uint64_t)p->dim, H = (uint64_t)p->hidden_dim, L = (uint64_t)p->n_layers;
	uint64_t KV = (uint64_t)p->kv_dim, V = (uint64_t)p->vocab_size, S = (uint64_t)p->seq_len;
	uint64_t layer_w = 0, weights = 0, floats = 0, n_emb = p->shared_classifier ? 1 : 2;
	bool ovf = false;

	/* Elements of one layer's matrices and of all matrices. */
	acc_add(&layer_w, 2 * D, D, &ovf);
	acc_add(&layer_w, 2 * KV, D, &ovf);
	acc_add(&layer_w, 3 * H, D, &ovf);
	acc_add(&weights, L, layer_w, &ovf);
	acc_add(&weights, n_emb * V, D, &ovf);
	/* f32 vectors: two norms per layer, the final norm, legacy RoPE tables. */
	acc_add(&floats, L, 2 * D, &ovf);
	acc_add(&floats, 1, D, &ovf);
	if (p->version == 0)
		acc_add(&floats, S, (uint64_t)p->head_size, &ovf);
	if (p->version == 2) {
		static const char *const what[4] = {"tok_embeddings", "wq", "wk", "w1"};
		uint64_t numel[4] = {V * D, D * D, KV * D, H * D}; /* each < 2^62 */
		int i;

		for (i = 0; i < 4; i++)
			if (numel[i] % (uint64_t)p->group_size != 0)
				return nesa_err_set(err, NESA_EFORMAT,
				                    "cannot read '%s': invalid header: group_size %d does not "
				                    "divide the %llu elements of %s",
				                    path, p->group_size, (unsigned long long)numel[i], what[i]);
		*total = NESA_LLAMA2C_HEADER;
		acc_add(total, 4, floats, &ovf);
		acc_add(total, 1, weights, &ovf);               /* int8 quants */
		acc_add(total, 4, weights / (uint64_t)p->group_size, &ovf); /* f32 scales */
	} else {
		*total = p->version == 0 ? V0_HEADER : NESA_LLAMA2C_HEADER;
		acc_add(total, 4, floats, &ovf);
		acc_add(total, 4, weights, &ovf);
	}
	if (ovf)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': invalid header: the sizes it implies overflow 64 "
		                    "bits",
		                    path);
	return NESA_OK;
}

/* Walks the data in file order, creating tensors. */
struct walk {
	struct nesa_llama2c *m;
	const unsigned char *base;
	uint64_t size, off;
	struct nesa_err *err;
};

/*
 * Adds a tensor viewing the mapping; a copy the set owns if the address is
 * not aligned for the type (version 2 scales follow int8 arrays of any
 * length), since a misaligned float pointer is undefined behaviour.
 */
static enum nesa_status
add_mapped(struct nesa_tset *ts, const char *name, int dtype, int ndim, const int64_t *shape,
           const void *data, size_t nbytes, struct nesa_err *err)
{
	size_t align = nesa_dtype_traits(dtype)->block_bytes;
	struct nesa_tensor *t;
	enum nesa_status s;

	if ((uintptr_t)data % align == 0) {
		s = nesa_tset_add(ts, name, dtype, ndim, shape, (void *)(uintptr_t)data, &t, err);
		if (s == NESA_OK)
			t->flags |= NESA_TENSOR_READONLY;
		return s;
	}
	s = nesa_tset_alloc(ts, name, dtype, ndim, shape, &t, err);
	if (s == NESA_OK)
		memcpy(t->data, data, nbytes);
	return s;
}

/*
 * Consumes one array of rows x cols (cols 0: a vector) at the walk's
 * offset; adds it as a tensor unless name is NULL (the legacy RoPE tables,
 * which any runner recomputes and nesa does not expose).
 */
static enum nesa_status
put(struct walk *w, const char *name, int dtype, int64_t rows, int64_t cols)
{
	int64_t shape[2] = {rows, cols};
	int ndim = cols > 0 ? 2 : 1;
	size_t nbytes;
	enum nesa_status s;

	s = nesa_shape_check(dtype, ndim, shape, false, &nbytes, name != NULL ? name : "table", w->err);
	if (s == NESA_OK && nbytes > w->size - w->off)
		/* The size was checked as a whole; this guards the walk itself. */
		s = nesa_err_set(w->err, NESA_EINTERNAL, "tensor '%s' extends past end of file",
		                 name != NULL ? name : "table");
	if (s == NESA_OK && name != NULL)
		s = add_mapped(&w->m->tensors, name, dtype, ndim, shape, w->base + w->off, nbytes,
		               w->err);
	if (s != NESA_OK) {
		nesa_err_prefix(w->err, "cannot read '%s'", w->m->path);
		return s;
	}
	w->off += nbytes;
	return NESA_OK;
}

/* A matrix: f32, or in version 2 its int8 quants then its f32 scales. */
static enum nesa_status
put_weight(struct walk *w, const char *name, int64_t rows, int64_t cols)
{
	char qn[64];
	enum nesa_status s;

	if (w->m->params.version != 2)
		return put(w, name, NESA_F32, rows, cols);
	snprintf(qn, sizeof qn, "%s.q", name);
	if ((s = put(w, qn, NESA_I8, rows, cols)) != NESA_OK)
		return s;
	snprintf(qn, sizeof qn, "%s.s", name);
	return put(w, qn, NESA_F32, rows * cols / w->m->params.group_size, 0);
}

/* All layers' tensors of one kind. */
static enum nesa_status
put_layers(struct walk *w, enum kind k)
{
	const struct nesa_llama2c_params *p = &w->m->params;
	enum nesa_status s;
	int64_t rows, cols;
	char name[64];
	int l;

	kind_shape(p, k, &rows, &cols);
	for (l = 0; l < p->n_layers; l++) {
		snprintf(name, sizeof name, "layers.%d.%s", l, kind_name[k]);
		s = cols == 0 ? put(w, name, NESA_F32, rows, 0) : put_weight(w, name, rows, cols);
		if (s != NESA_OK)
			return s;
	}
	return NESA_OK;
}

/* Legacy order: embedding, then each per-layer kind for all layers in turn. */
static enum nesa_status
walk_v0(struct walk *w)
{
	const struct nesa_llama2c_params *p = &w->m->params;
	enum nesa_status s;
	int k;

	if ((s = put(w, "tok_embeddings", NESA_F32, p->vocab_size, p->dim)) != NESA_OK)
		return s;
	for (k = 0; k < K_COUNT; k++)
		if ((s = put_layers(w, (enum kind)k)) != NESA_OK)
			return s;
	if ((s = put(w, "norm", NESA_F32, p->dim, 0)) != NESA_OK ||
	    /* freq_cis_real and freq_cis_imag: recomputed by any runner, not exposed */
	    (s = put(w, NULL, NESA_F32, p->seq_len, p->head_size / 2)) != NESA_OK ||
	    (s = put(w, NULL, NESA_F32, p->seq_len, p->head_size / 2)) != NESA_OK)
		return s;
	if (!p->shared_classifier)
		return put(w, "output", NESA_F32, p->vocab_size, p->dim);
	return NESA_OK;
}

/* Versions 1 and 2 share the order; put_weight picks the encoding. */
static enum nesa_status
walk_v12(struct walk *w)
{
	static const enum kind mats[] = {K_WQ, K_WK, K_WV, K_WO, K_W1, K_W2, K_W3};
	const struct nesa_llama2c_params *p = &w->m->params;
	enum nesa_status s;
	size_t k;

	if ((s = put_layers(w, K_ATT_NORM)) != NESA_OK || (s = put_layers(w, K_FFN_NORM)) != NESA_OK ||
	    (s = put(w, "norm", NESA_F32, p->dim, 0)) != NESA_OK ||
	    (s = put_weight(w, "tok_embeddings", p->vocab_size, p->dim)) != NESA_OK)
		return s;
	for (k = 0; k < sizeof mats / sizeof mats[0]; k++)
		if ((s = put_layers(w, mats[k])) != NESA_OK)
			return s;
	if (!p->shared_classifier)
		return put_weight(w, "output", p->vocab_size, p->dim);
	return NESA_OK;
}

static json_t *
params_json(const struct nesa_llama2c_params *p)
{
	return json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:b, s:i, s:i, s:i}",
	                 "version", p->version, "dim", p->dim, "hidden_dim", p->hidden_dim,
	                 "n_layers", p->n_layers, "n_heads", p->n_heads, "n_kv_heads", p->n_kv_heads,
	                 "vocab_size", p->vocab_size, "seq_len", p->seq_len, "shared_classifier",
	                 (int)p->shared_classifier, "group_size", p->group_size, "head_size",
	                 p->head_size, "kv_dim", p->kv_dim);
}

enum nesa_status
nesa_llama2c_open(const char *path, struct nesa_llama2c **out, struct nesa_err *err)
{
	struct nesa_llama2c *m;
	struct nesa_map map;
	struct walk w;
	uint64_t want = 0;
	enum nesa_status s;

	*out = NULL;
	m = nesa_calloc(1, sizeof *m);
	if (m == NULL || (m->path = nesa_strdup(path)) == NULL) {
		nesa_free(m);
		return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", path);
	}
	nesa_tset_init(&m->tensors);
	if ((s = nesa_map_file(path, &map, err)) != NESA_OK)
		goto fail;
	memset(&w, 0, sizeof w);
	w.m = m;
	w.base = map.addr;
	w.size = map.size;
	w.err = err;
	/* The set owns the mapping from here on, even if parsing fails. */
	if ((s = nesa_tset_own_map(&m->tensors, &map, err)) != NESA_OK) {
		nesa_err_prefix(err, "cannot read '%s'", path);
		goto fail;
	}
	if ((s = read_header(w.base, w.size, path, &m->params, err)) != NESA_OK ||
	    (s = expected_size(&m->params, path, &want, err)) != NESA_OK)
		goto fail;
	/* Exact size, not just enough: trailing bytes mean a different layout. */
	if (want != w.size) {
		s = nesa_err_set(err, NESA_EFORMAT,
		                 "cannot read '%s': size mismatch for a version %d checkpoint with dim "
		                 "%d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size "
		                 "%d, seq_len %d: expected %llu bytes, file has %llu",
		                 path, m->params.version, m->params.dim, m->params.hidden_dim,
		                 m->params.n_layers, m->params.n_heads, m->params.n_kv_heads,
		                 m->params.vocab_size, m->params.seq_len, (unsigned long long)want,
		                 (unsigned long long)w.size);
		goto fail;
	}
	w.off = m->params.version == 0 ? V0_HEADER : NESA_LLAMA2C_HEADER;
	s = m->params.version == 0 ? walk_v0(&w) : walk_v12(&w);
	if (s != NESA_OK)
		goto fail;
	if (NESA_NEVER(w.off != w.size)) {
		s = nesa_err_set(err, NESA_EINTERNAL, "cannot read '%s': %llu bytes left after the "
		                 "last tensor", path, (unsigned long long)(w.size - w.off));
		goto fail;
	}
	m->params_json = params_json(&m->params);
	if (m->params_json == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", path);
		goto fail;
	}
	*out = m;
	return NESA_OK;
fail:
	nesa_llama2c_free(m);
	return s;
}

void
nesa_llama2c_free(struct nesa_llama2c *m)
{
	if (m == NULL)
		return;
	json_decref(m->params_json);
	nesa_tset_release(&m->tensors);
	nesa_free(m->path);
	nesa_free(m);
}
