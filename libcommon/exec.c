/* SPDX-License-Identifier: MIT */
/*
 * The executor; see exec.h.  Each value slot of each block has one buffer
 * of (row capacity, row_elems) floats; a block's inputs alias the previous
 * block's output buffers, so nothing is copied between blocks.  Buffers
 * grow with the largest batch seen and are reused, so a decode step
 * allocates nothing.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "exec.h"
#include "log.h"
#include "ops.h"

/* One session's KV cache: per attention op, keys and values by position. */
struct sess {
	uint64_t id;
	uint32_t n_pos;   /* positions cached */
	uint32_t cap;     /* positions allocated */
	float **k, **v;   /* (n_caches) each (cap, kv_dim) */
};

struct exec_block {
	float **buf;      /* (n_values) each (rows, row_elems) */
	int *slot;        /* (n_values) bank slot holding the value; -1 for block inputs */
};

struct nesa_exec {
	const struct nesa_graph *g;
	struct nesa_exec_opts opts;
	struct exec_block *blocks; /* (count) */
	int64_t row_cap;           /* rows every buffer can hold */
	/*
	 * Value buffers, shared by the blocks of one parity: block i uses bank
	 * i % 2, so its inputs (the previous block's outputs, in the other bank)
	 * survive while it runs, and two blocks' worth of activations exist
	 * however many blocks a stage holds.
	 */
	float **bank[2];           /* (bank_n) each (bank_rows, bank_elems) */
	int64_t *bank_elems[2];    /* (bank_n) largest row of the slot over the bank's blocks */
	int64_t *bank_rows[2];     /* (bank_n) rows the slot holds now: grown as ops need */
	int bank_n[2];
	int64_t *kv_dim;           /* (n_caches) floats per position of each cache */
	uint64_t kv_bytes_per_pos; /* all caches together, keys and values */
	struct sess *sess;         /* (n_sess) */
	int n_sess, cap_sess;
	/* Per-row bookkeeping of the current batch. */
	uint32_t *row_pos;         /* (row_cap) position of each row */
	int *row_seg;              /* (row_cap) segment of each row */
	float *scratch;            /* (scratch_len) ops' scratch */
	size_t scratch_len;
	size_t scratch_need_fixed; /* scratch independent of context length */
	int64_t int8_in;           /* widest input of a linear_int8 op, 0 if none */
	int64_t lr_in, lr_out, lr_r; /* largest in, out and rank of a low-rank linear op, 0 if none */
	nesa_exec_tap_fn tap;      /* called before each matrix op, NULL for none */
	void *tap_ctx;
	int max_heads;             /* most heads of an attention op */
	struct nesa_exec_stats stats;
};

static struct sess *
find_sess(const struct nesa_exec *e, uint64_t id)
{
	int i;

	for (i = 0; i < e->n_sess; i++)
		if (e->sess[i].id == id)
			return &e->sess[i];
	return NULL;
}

static void
sess_release(struct nesa_exec *e, struct sess *s)
{
	int c;

	for (c = 0; c < e->g->n_caches; c++) {
		nesa_aligned_free(s->k[c]);
		nesa_aligned_free(s->v[c]);
	}
	e->stats.kv_bytes -= (uint64_t)s->cap * e->kv_bytes_per_pos;
	nesa_free(s->k);
	nesa_free(s->v);
}

void
nesa_exec_end(struct nesa_exec *e, uint64_t session)
{
	struct sess *s = find_sess(e, session);

	if (s == NULL)
		return;
	sess_release(e, s);
	*s = e->sess[--e->n_sess];
}

uint32_t
nesa_exec_positions(const struct nesa_exec *e, uint64_t session)
{
	const struct sess *s = find_sess(e, session);

	return s != NULL ? s->n_pos : 0;
}

int
nesa_exec_sessions(const struct nesa_exec *e)
{
	return e->n_sess;
}

void
nesa_exec_get_stats(const struct nesa_exec *e, struct nesa_exec_stats *st)
{
	*st = e->stats;
}

const struct nesa_graph *
nesa_exec_graph(const struct nesa_exec *e)
{
	return e->g;
}

void
nesa_exec_set_tap(struct nesa_exec *e, nesa_exec_tap_fn fn, void *ctx)
{
	e->tap = fn;
	e->tap_ctx = ctx;
}

void
nesa_exec_free(struct nesa_exec *e)
{
	int i, v;

	if (e == NULL)
		return;
	while (e->n_sess > 0)
		nesa_exec_end(e, e->sess[0].id);
	for (i = 0; i < e->g->count && e->blocks != NULL; i++) {
		nesa_free(e->blocks[i].buf);
		nesa_free(e->blocks[i].slot);
	}
	for (i = 0; i < 2; i++) {
		for (v = 0; v < e->bank_n[i] && e->bank[i] != NULL; v++)
			nesa_aligned_free(e->bank[i][v]);
		nesa_free(e->bank[i]);
		nesa_free(e->bank_elems[i]);
		nesa_free(e->bank_rows[i]);
	}
	nesa_free(e->blocks);
	nesa_free(e->kv_dim);
	nesa_free(e->sess);
	nesa_free(e->row_pos);
	nesa_free(e->row_seg);
	nesa_aligned_free(e->scratch);
	nesa_free(e);
}

/*
 * Touches every page of the weights the graph uses.  Mapped weights would
 * otherwise be read in, page fault by page fault, during the first batch:
 * a stage should pay for that when it starts, not on its first request.
 */
static void
prefault(const struct nesa_graph *g)
{
	volatile unsigned char sink = 0;
	int i, j, k;

	for (i = 0; i < g->count; i++)
		for (j = 0; j < g->blocks[i].n_ops; j++)
			for (k = 0; k < 5; k++) {
				const struct nesa_tensor *t = g->blocks[i].ops[j].w[k];
				const unsigned char *p;
				size_t off;

				if (t == NULL || t->data == NULL)
					continue;
				p = t->data;
				for (off = 0; off < t->nbytes; off += 4096)
					sink ^= p[off];
			}
	(void)sink;
}

/*
 * Gives each value computed in block b a bank slot, reusing the slot of a
 * value no later op reads: the activations of a block take the memory of
 * the values alive at once, not of all of them.  Block outputs stay alive to
 * the end.  Returns the number of slots, -1 when out of memory.
 */
static int
assign_slots(const struct nesa_block *b, int *slot)
{
	int *last = nesa_malloc((size_t)b->n_values * sizeof *last);
	int *owner = nesa_malloc((size_t)b->n_values * sizeof *owner); /* slot -> value, -1 free */
	int v, j, k, n = 0;

	if (last == NULL || owner == NULL) {
		nesa_free(last);
		nesa_free(owner);
		return -1;
	}
	for (v = 0; v < b->n_values; v++) {
		last[v] = -1;
		slot[v] = -1;
		owner[v] = -1;
	}
	for (j = 0; j < b->n_ops; j++)
		for (k = 0; k < b->ops[j].n_in; k++)
			last[b->ops[j].in[k]] = j;
	for (k = 0; k < b->n_outputs; k++)
		last[b->outputs[k]] = b->n_ops;
	for (j = 0; j < b->n_ops; j++) {
		const int out = b->ops[j].out;

		/* Values last read before op j are dead: their slots are free again. */
		for (k = 0; k < n; k++)
			if (owner[k] >= 0 && last[owner[k]] < j)
				owner[k] = -1;
		for (k = 0; k < n && owner[k] >= 0; k++)
			;
		if (k == n)
			n++;
		owner[k] = out;
		slot[out] = k;
	}
	nesa_free(last);
	nesa_free(owner);
	return n;
}

enum nesa_status
nesa_exec_new(const struct nesa_graph *g, const struct nesa_exec_opts *opts, struct nesa_exec **out,
              struct nesa_err *err)
{
	struct nesa_exec *e;
	int i, j, n;

	*out = NULL;
	e = nesa_calloc(1, sizeof *e);
	if (e == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	e->g = g;
	if (opts != NULL)
		e->opts = *opts;
	if (e->opts.max_sessions <= 0)
		e->opts.max_sessions = 4096;
	e->blocks = nesa_calloc((size_t)g->count, sizeof *e->blocks);
	e->kv_dim = nesa_calloc((size_t)(g->n_caches > 0 ? g->n_caches : 1), sizeof *e->kv_dim);
	if (e->blocks == NULL || e->kv_dim == NULL)
		goto oom;
	for (i = 0; i < g->count; i++) {
		const struct nesa_block *b = &g->blocks[i];

		e->blocks[i].buf = nesa_calloc((size_t)b->n_values, sizeof(float *));
		e->blocks[i].slot = nesa_calloc((size_t)b->n_values, sizeof(int));
		if (e->blocks[i].buf == NULL || e->blocks[i].slot == NULL)
			goto oom;
		n = assign_slots(b, e->blocks[i].slot);
		if (n < 0)
			goto oom;
		if (n > e->bank_n[i % 2])
			e->bank_n[i % 2] = n;
		for (j = 0; j < b->n_ops; j++) {
			const struct nesa_op *op = &b->ops[j];
			const struct nesa_value *x = &b->values[op->in[0]];
			size_t need = 0;

			if (op->kind == NESA_OP_ATTENTION) {
				if (op->n_heads > e->max_heads)
					e->max_heads = op->n_heads;
				e->kv_dim[op->cache] = (int64_t)op->n_kv_heads * op->head_dim;
				e->kv_bytes_per_pos += 2u * (uint64_t)e->kv_dim[op->cache] * sizeof(float);
			}
			if (op->kind == NESA_OP_LINEAR && op->w[0] != NULL && op->w[0]->dtype != NESA_F32)
				need = (size_t)op->w[0]->shape[1];
			if (op->kind == NESA_OP_LINEAR && op->w[2] != NULL) {
				/* Low-rank scratch grows with the batch: keep the largest shapes. */
				e->lr_in = x->row_elems > e->lr_in ? x->row_elems : e->lr_in;
				e->lr_out = op->w[2]->shape[0] > e->lr_out ? op->w[2]->shape[0] : e->lr_out;
				e->lr_r = op->w[2]->shape[1] > e->lr_r ? op->w[2]->shape[1] : e->lr_r;
			}
			if (op->kind == NESA_OP_LINEAR_INT8 && op->w[0]->shape[1] > e->int8_in)
				e->int8_in = op->w[0]->shape[1];
			if (op->kind == NESA_OP_CONV2D)
				need = nesa_conv2d_scratch((int)x->shape[0], (int)b->values[op->out].shape[1],
				                           (int)b->values[op->out].shape[2],
				                           (int)b->values[op->out].shape[0], op->kernel[0],
				                           op->kernel[1], op->groups);
			if (need > e->scratch_need_fixed)
				e->scratch_need_fixed = need;
		}
	}
	prefault(g);
	for (i = 0; i < 2; i++) {
		e->bank[i] = nesa_calloc((size_t)(e->bank_n[i] > 0 ? e->bank_n[i] : 1), sizeof(float *));
		e->bank_elems[i] = nesa_calloc((size_t)(e->bank_n[i] > 0 ? e->bank_n[i] : 1), sizeof(int64_t));
		e->bank_rows[i] = nesa_calloc((size_t)(e->bank_n[i] > 0 ? e->bank_n[i] : 1), sizeof(int64_t));
		if (e->bank[i] == NULL || e->bank_elems[i] == NULL || e->bank_rows[i] == NULL)
			goto oom;
	}
	for (i = 0; i < g->count; i++)
		for (j = 0; j < g->blocks[i].n_values; j++) {
			int sl = e->blocks[i].slot[j];

			if (sl >= 0 && g->blocks[i].values[j].row_elems > e->bank_elems[i % 2][sl])
				e->bank_elems[i % 2][sl] = g->blocks[i].values[j].row_elems;
		}
	*out = e;
	return NESA_OK;
oom:
	nesa_exec_free(e);
	return nesa_err_set(err, NESA_ENOMEM, "out of memory");
}

/*
 * Makes the bank slot that value v of block i lives in hold rows rows.
 * Slots grow as ops need them, so an output computed for selected rows only
 * (logits while generating) never takes the memory of a whole batch.
 */
static enum nesa_status
ensure_slot(struct nesa_exec *e, int i, int v, int64_t rows, struct nesa_err *err)
{
	const int k = i % 2, sl = e->blocks[i].slot[v];
	size_t bytes;

	if (rows <= e->bank_rows[k][sl]) {
		e->blocks[i].buf[v] = e->bank[k][sl];
		return NESA_OK;
	}
	rows = rows < 2 * e->bank_rows[k][sl] ? 2 * e->bank_rows[k][sl] : rows;
	if (!nesa_mul_size((size_t)rows, (size_t)e->bank_elems[k][sl] * sizeof(float), &bytes))
		return nesa_err_set(err, NESA_ENOMEM, "batch of %lld rows is too large", (long long)rows);
	nesa_aligned_free(e->bank[k][sl]);
	e->bank_rows[k][sl] = 0;
	e->bank[k][sl] = nesa_aligned_alloc(bytes);
	e->blocks[i].buf[v] = e->bank[k][sl];
	if (e->bank[k][sl] == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory for a batch of %lld rows", (long long)rows);
	e->bank_rows[k][sl] = rows;
	return NESA_OK;
}

/* Makes the per-row bookkeeping hold at least rows rows. */
static enum nesa_status
ensure_rows(struct nesa_exec *e, int64_t rows, struct nesa_err *err)
{
	if (rows <= e->row_cap)
		return NESA_OK;
	rows = rows < 2 * e->row_cap ? 2 * e->row_cap : rows;
	nesa_free(e->row_pos);
	nesa_free(e->row_seg);
	e->row_pos = nesa_malloc((size_t)rows * sizeof *e->row_pos);
	e->row_seg = nesa_malloc((size_t)rows * sizeof *e->row_seg);
	if (e->row_pos == NULL || e->row_seg == NULL) {
		e->row_cap = 0;
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	e->row_cap = rows;
	return NESA_OK;
}

static enum nesa_status
ensure_scratch(struct nesa_exec *e, size_t floats, struct nesa_err *err)
{
	if (floats <= e->scratch_len)
		return NESA_OK;
	nesa_aligned_free(e->scratch);
	e->scratch = nesa_aligned_alloc(floats * sizeof(float));
	e->scratch_len = e->scratch != NULL ? floats : 0;
	if (e->scratch == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	return NESA_OK;
}

/* Grows a session's caches to hold at least need positions. */
static enum nesa_status
sess_reserve(struct nesa_exec *e, struct sess *s, uint32_t need, struct nesa_err *err)
{
	uint32_t cap = s->cap ? s->cap : 64;
	uint64_t add;
	int c;

	if (need <= s->cap)
		return NESA_OK;
	while (cap < need)
		cap = cap > UINT32_MAX / 2 ? need : cap * 2;
	if (e->g->max_positions > 0 && cap > (uint32_t)e->g->max_positions)
		cap = need > (uint32_t)e->g->max_positions ? need : (uint32_t)e->g->max_positions;
	if (e->opts.kv_limit > 0 && (uint64_t)cap * e->kv_bytes_per_pos > e->opts.kv_limit)
		cap = need;
	add = (uint64_t)(cap - s->cap) * e->kv_bytes_per_pos;
	if (e->opts.kv_total_limit > 0 && e->stats.kv_bytes + add > e->opts.kv_total_limit)
		return nesa_err_set(err, NESA_ELIMIT,
		                    "session %llu: KV caches would need %llu bytes, over the limit of %llu bytes for all sessions",
		                    (unsigned long long)s->id, (unsigned long long)(e->stats.kv_bytes + add),
		                    (unsigned long long)e->opts.kv_total_limit);
	for (c = 0; c < e->g->n_caches; c++) {
		size_t bytes = (size_t)cap * (size_t)e->kv_dim[c] * sizeof(float);
		size_t old = (size_t)s->n_pos * (size_t)e->kv_dim[c] * sizeof(float);
		float *k = nesa_aligned_alloc(bytes), *v = nesa_aligned_alloc(bytes);

		if (k == NULL || v == NULL) {
			nesa_aligned_free(k);
			nesa_aligned_free(v);
			return nesa_err_set(err, NESA_ENOMEM, "out of memory for the KV cache of session %llu",
			                    (unsigned long long)s->id);
		}
		if (old > 0) {
			memcpy(k, s->k[c], old);
			memcpy(v, s->v[c], old);
		}
		nesa_aligned_free(s->k[c]);
		nesa_aligned_free(s->v[c]);
		s->k[c] = k;
		s->v[c] = v;
	}
	e->stats.kv_bytes += add;
	s->cap = cap;
	return NESA_OK;
}

/*
 * Checks the segments and opens sessions, before anything is computed, so
 * a refused batch changes nothing.  Returns the total rows.
 */
static enum nesa_status
prepare(struct nesa_exec *e, const struct nesa_seg *segs, int n_segs, int64_t *total,
        struct nesa_err *err)
{
	int i, j;

	*total = 0;
	for (i = 0; i < n_segs; i++) {
		const struct nesa_seg *sg = &segs[i];
		const struct sess *s = find_sess(e, sg->session);
		uint32_t have = s != NULL ? s->n_pos : 0;
		uint64_t end = (uint64_t)sg->pos + sg->rows;

		if (sg->rows == 0)
			return nesa_err_set(err, NESA_EINVAL, "session %llu: empty segment",
			                    (unsigned long long)sg->session);
		for (j = 0; j < i; j++)
			if (segs[j].session == sg->session)
				return nesa_err_set(err, NESA_EINVAL, "session %llu appears twice in one batch",
				                    (unsigned long long)sg->session);
		if (e->g->n_caches > 0 && sg->pos > have)
			return nesa_err_set(err, NESA_EINVAL,
			                    "session %llu: position %u follows a gap (only %u positions are cached)",
			                    (unsigned long long)sg->session, sg->pos, have);
		if (e->g->max_positions > 0 && end > (uint64_t)e->g->max_positions)
			return nesa_err_set(err, NESA_ELIMIT,
			                    "session %llu: position %llu is beyond the model's context of %d",
			                    (unsigned long long)sg->session, (unsigned long long)end - 1,
			                    e->g->max_positions);
		if (e->opts.kv_limit > 0 && end * e->kv_bytes_per_pos > e->opts.kv_limit)
			return nesa_err_set(err, NESA_ELIMIT,
			                    "session %llu: %llu positions need %llu bytes of KV cache, over the limit of %llu",
			                    (unsigned long long)sg->session, (unsigned long long)end,
			                    (unsigned long long)(end * e->kv_bytes_per_pos),
			                    (unsigned long long)e->opts.kv_limit);
		*total += sg->rows;
	}
	if (e->g->n_caches == 0)
		return NESA_OK;
	for (i = 0; i < n_segs; i++) {
		struct sess *s = find_sess(e, segs[i].session);
		enum nesa_status st;

		if (s == NULL) {
			if (e->n_sess >= e->opts.max_sessions)
				return nesa_err_set(err, NESA_ELIMIT, "too many open sessions (limit %d)",
				                    e->opts.max_sessions);
			if (e->n_sess == e->cap_sess) {
				int ncap = e->cap_sess ? 2 * e->cap_sess : 16;
				struct sess *ns = nesa_realloc(e->sess, (size_t)ncap * sizeof *ns);

				if (ns == NULL)
					return nesa_err_set(err, NESA_ENOMEM, "out of memory");
				e->sess = ns;
				e->cap_sess = ncap;
			}
			s = &e->sess[e->n_sess];
			memset(s, 0, sizeof *s);
			s->id = segs[i].session;
			s->k = nesa_calloc((size_t)e->g->n_caches, sizeof(float *));
			s->v = nesa_calloc((size_t)e->g->n_caches, sizeof(float *));
			if (s->k == NULL || s->v == NULL) {
				nesa_free(s->k);
				nesa_free(s->v);
				return nesa_err_set(err, NESA_ENOMEM, "out of memory");
			}
			e->n_sess++;
		}
		st = sess_reserve(e, s, segs[i].pos + segs[i].rows, err);
		if (st != NESA_OK)
			return st;
	}
	return NESA_OK;
}

/* Runs one op over rows rows; segs describe the rows (for attention). */
static enum nesa_status
run_op(struct nesa_exec *e, const struct nesa_block *b, struct exec_block *xb,
       const struct nesa_op *op, const struct nesa_seg *segs, int n_segs, int64_t rows,
       struct nesa_err *err)
{
	const struct nesa_value *xv = &b->values[op->in[0]], *yv = &b->values[op->out];
	const float *x = xb->buf[op->in[0]];
	float *y = xb->buf[op->out];
	const int64_t xe = xv->row_elems, n = rows * xe;
	int64_t r;
	int i;

	switch (op->kind) {
	case NESA_OP_EMBEDDING: {
		const struct nesa_tensor *w = op->w[0];
		const struct nesa_dtype_traits *tr = nesa_dtype_traits(w->dtype);
		const int32_t *ids = (const int32_t *)(const void *)x;
		const int64_t dim = w->shape[1];

		for (r = 0; r < rows; r++) {
			if (ids[r] < 0 || ids[r] >= w->shape[0])
				return nesa_err_set(err, NESA_EINVAL, "token id %d is out of range [0, %lld)",
				                    ids[r], (long long)w->shape[0]);
			tr->to_f32((const char *)w->data + (size_t)ids[r] * w->stride[0], y + r * dim, dim);
		}
		break;
	}
	case NESA_OP_POS_EMBEDDING: {
		const float *w = op->w[0]->data;

		for (r = 0; r < rows; r++) {
			if (e->row_pos[r] >= op->w[0]->shape[0])
				return nesa_err_set(err, NESA_ELIMIT, "position %u is beyond the %lld learned positions",
				                    e->row_pos[r], (long long)op->w[0]->shape[0]);
			nesa_add(x + r * xe, w + (int64_t)e->row_pos[r] * xe, y + r * xe, xe);
		}
		break;
	}
	case NESA_OP_RMSNORM:
		nesa_rmsnorm(x, op->w[0]->data, y, rows, xe, op->eps);
		break;
	case NESA_OP_LAYERNORM:
		nesa_layernorm(x, op->w[0]->data, op->w[1] != NULL ? op->w[1]->data : NULL, y, rows, xe,
		               op->eps);
		break;
	case NESA_OP_LINEAR:
		if (op->w[2] != NULL)
			nesa_linear_lowrank(x, rows, xe, op->w[0], op->w[2], op->w[3],
			                    op->w[1] != NULL ? op->w[1]->data : NULL, y, e->scratch);
		else
			nesa_linear(x, rows, xe, op->w[0], op->w[1] != NULL ? op->w[1]->data : NULL, y,
			            e->scratch);
		break;
	case NESA_OP_LINEAR_INT8:
		nesa_linear_int8(x, rows, xe, op->w[0]->data, op->w[2]->data, op->w[0]->shape[0],
		                 op->w[3] != NULL ? op->w[3]->data : NULL,
		                 op->w[4] != NULL ? op->w[4]->data : NULL,
		                 op->w[4] != NULL ? op->w[4]->shape[0] : 0, op->threshold,
		                 op->w[1] != NULL ? op->w[1]->data : NULL, y, e->scratch);
		break;
	case NESA_OP_ROPE:
		if (y != x)
			memcpy(y, x, (size_t)n * sizeof *y);
		nesa_rope(y, rows, op->n_heads, op->head_dim, op->n_rot, op->theta,
		          op->layout == NESA_ROPE_HALF, e->row_pos);
		break;
	case NESA_OP_ATTENTION: {
		const float *k = xb->buf[op->in[1]], *v = xb->buf[op->in[2]];
		const int64_t kvd = e->kv_dim[op->cache], qd = xe;
		int64_t row0 = 0;

		for (i = 0; i < n_segs; i++) {
			struct sess *s = find_sess(e, segs[i].session);
			float *kc = s->k[op->cache], *vc = s->v[op->cache];

			/* Append this segment's keys and values, then attend. */
			memcpy(kc + (int64_t)segs[i].pos * kvd, k + row0 * kvd,
			       (size_t)segs[i].rows * (size_t)kvd * sizeof(float));
			memcpy(vc + (int64_t)segs[i].pos * kvd, v + row0 * kvd,
			       (size_t)segs[i].rows * (size_t)kvd * sizeof(float));
			nesa_attention(x + row0 * qd, segs[i].rows, segs[i].pos, kc, vc, op->n_heads,
			               op->n_kv_heads, op->head_dim, op->scale, y + row0 * qd, e->scratch);
			row0 += segs[i].rows;
		}
		break;
	}
	case NESA_OP_GELU:
		nesa_gelu(x, y, n);
		break;
	case NESA_OP_GELU_TANH:
		nesa_gelu_tanh(x, y, n);
		break;
	case NESA_OP_SILU:
		nesa_silu(x, y, n);
		break;
	case NESA_OP_RELU:
		nesa_relu(x, y, n);
		break;
	case NESA_OP_ADD:
		nesa_add(x, xb->buf[op->in[1]], y, n);
		break;
	case NESA_OP_MUL:
		nesa_mul(x, xb->buf[op->in[1]], y, n);
		break;
	case NESA_OP_SOFTMAX:
		if (y != x)
			memcpy(y, x, (size_t)n * sizeof *y);
		nesa_softmax(y, n / xv->shape[xv->ndim - 1], xv->shape[xv->ndim - 1]);
		break;
	case NESA_OP_CONV2D:
		nesa_conv2d(x, rows, (int)xv->shape[0], (int)xv->shape[1], (int)xv->shape[2],
		            op->w[0]->data, op->w[1] != NULL ? op->w[1]->data : NULL, (int)yv->shape[0],
		            op->kernel[0], op->kernel[1], op->stride[0], op->stride[1], op->pad[0],
		            op->pad[1], op->groups, y, e->scratch, e->scratch_len);
		break;
	case NESA_OP_BATCHNORM:
	case NESA_OP_CHANNEL_AFFINE: {
		const int64_t C = xv->shape[0], inner = xe / C;
		int64_t c, j;

		for (r = 0; r < rows; r++)
			for (c = 0; c < C; c++) {
				const float *xs = x + r * xe + c * inner;
				float *ys = y + r * xe + c * inner;

				for (j = 0; j < inner; j++)
					ys[j] = xs[j] * op->ch_scale[c] + op->ch_shift[c];
			}
		break;
	}
	case NESA_OP_MAXPOOL:
	case NESA_OP_AVGPOOL:
		for (r = 0; r < rows; r++)
			(op->kind == NESA_OP_MAXPOOL ? nesa_maxpool : nesa_avgpool)(
				x + r * xe, (int)xv->shape[0], (int)xv->shape[1], (int)xv->shape[2],
				op->kernel[0], op->kernel[1], op->stride[0], op->stride[1], op->pad[0],
				op->pad[1], y + r * yv->row_elems);
		break;
	case NESA_OP_GLOBAL_AVGPOOL: {
		const int64_t C = xv->shape[0], hw = xv->shape[1] * xv->shape[2];
		int64_t c, j;

		for (r = 0; r < rows; r++)
			for (c = 0; c < C; c++) {
				const float *xs = x + r * xe + c * hw;
				float s = 0;

				for (j = 0; j < hw; j++)
					s += xs[j];
				y[r * C + c] = s / (float)hw;
			}
		break;
	}
	case NESA_OP_PAD_CHANNELS: {
		const int64_t C = xv->shape[0], H = xv->shape[1], W = xv->shape[2];
		const int64_t Ho = yv->shape[1], Wo = yv->shape[2];
		int64_t c, oy, ox;

		for (r = 0; r < rows; r++) {
			float *yr = y + r * yv->row_elems;

			memset(yr, 0, (size_t)yv->row_elems * sizeof *yr);
			for (c = 0; c < C; c++)
				for (oy = 0; oy < Ho; oy++)
					for (ox = 0; ox < Wo; ox++)
						yr[((c + op->pad_ch) * Ho + oy) * Wo + ox] =
							x[r * xe + (c * H + oy * op->stride[0]) * W + ox * op->stride[1]];
		}
		break;
	}
	case NESA_OP_FLATTEN:
		if (y != x)
			memcpy(y, x, (size_t)n * sizeof *y);
		break;
	case NESA_OP_COUNT:
		return nesa_err_set(err, NESA_EINTERNAL, "bad op kind");
	}
	return NESA_OK;
}

/* A plain f32 matrix-vector product: factorized and quantized ops run alone. */
static bool
fusable(const struct nesa_op *op)
{
	return op->kind == NESA_OP_LINEAR && !op->head && op->w[0] != NULL && op->w[2] == NULL &&
	       op->w[0]->dtype == NESA_F32;
}

/*
 * Runs op j of block i and the linear ops right after it that read the same
 * input, for one row, as one parallel job (nesa_gemv_multi_f32).  Returns
 * how many ops ran, 1 or less meaning the caller runs op j alone.
 */
static int
fuse_linears(struct nesa_exec *e, int i, int j, int64_t rows, struct nesa_err *err,
             enum nesa_status *st)
{
	const struct nesa_block *b = &e->g->blocks[i];
	struct exec_block *xb = &e->blocks[i];
	const float *w[4];
	float *y[4];
	int64_t out[4];
	int m, k;

	*st = NESA_OK;
	for (m = 1; m < 4 && j + m < b->n_ops && fusable(&b->ops[j + m]) &&
	            b->ops[j + m].in[0] == b->ops[j].in[0];
	     m++)
		;
	if (m < 2)
		return 1;
	for (k = 0; k < m; k++) {
		const struct nesa_op *op = &b->ops[j + k];

		if ((*st = ensure_slot(e, i, op->out, rows, err)) != NESA_OK)
			return 0;
		w[k] = op->w[0]->data;
		y[k] = xb->buf[op->out];
		out[k] = op->w[0]->shape[0];
	}
	nesa_gemv_multi_f32(m, w, out, b->ops[j].w[0]->shape[1], xb->buf[b->ops[j].in[0]], y);
	for (k = 0; k < m; k++)
		if (b->ops[j + k].w[1] != NULL)
			nesa_add(y[k], b->ops[j + k].w[1]->data, y[k], out[k]);
	return m;
}

/*
 * Keeps only the last row of each last_only segment, before op j of block b
 * runs: in every value op j or a later op of the block reads (and the
 * block outputs), and in the row bookkeeping.  Returns the rows kept.
 */
static enum nesa_status
select_rows(struct nesa_exec *e, const struct nesa_block *b, struct exec_block *xb, int j,
            const struct nesa_seg *segs, int n_segs, int64_t *rows, struct nesa_err *err)
{
	int64_t keep = 0, r, row0 = 0;
	bool live[64];
	int i, v, k;

	if (b->n_values > 64)
		return nesa_err_set(err, NESA_EUNSUPPORTED, "block %d: a head op in a block of more than 64 values",
		                    b->index);
	memset(live, 0, sizeof live);
	for (i = j; i < b->n_ops; i++)
		for (k = 0; k < b->ops[i].n_in; k++)
			if (b->ops[i].in[k] < b->ops[j].out)
				live[b->ops[i].in[k]] = true;
	for (k = 0; k < b->n_outputs; k++)
		if (b->outputs[k] < b->ops[j].out)
			live[b->outputs[k]] = true;
	for (v = 0; v < b->n_values; v++)
		if (live[v] && xb->slot[v] < 0)
			return nesa_err_set(err, NESA_EUNSUPPORTED,
			                    "block %d: a head op may not read a block input directly", b->index);
	for (i = 0; i < n_segs; i++) {
		for (r = 0; r < segs[i].rows; r++) {
			int64_t src = row0 + r;

			if (segs[i].last_only && r != segs[i].rows - 1)
				continue;
			if (src != keep) {
				for (v = 0; v < b->n_values; v++) {
					const int64_t re = b->values[v].row_elems;

					if (live[v])
						memmove(xb->buf[v] + keep * re, xb->buf[v] + src * re,
						        (size_t)re * sizeof(float));
				}
				e->row_pos[keep] = e->row_pos[src];
				e->row_seg[keep] = e->row_seg[src];
			}
			keep++;
		}
		row0 += segs[i].rows;
	}
	*rows = keep;
	return NESA_OK;
}

enum nesa_status
nesa_exec_run(struct nesa_exec *e, const struct nesa_seg *segs, int n_segs, const void *const *in,
              const float **out, int64_t *out_rows, struct nesa_err *err)
{
	const struct nesa_graph *g = e->g;
	double t0 = nesa_now();
	int64_t total, rows, r, max_ctx = 0;
	bool selected = false, any_last = false;
	int i, j, k;
	enum nesa_status s;

	if (n_segs < 1)
		return nesa_err_set(err, NESA_EINVAL, "empty batch");
	s = prepare(e, segs, n_segs, &total, err);
	if (s == NESA_OK)
		s = ensure_rows(e, total, err);
	/* Attention needs (max(rows, heads), context) scores for the largest segment. */
	for (i = 0; i < n_segs; i++) {
		int64_t need = ((int64_t)segs[i].pos + segs[i].rows) *
		               ((int64_t)segs[i].rows > e->max_heads ? (int64_t)segs[i].rows : (int64_t)e->max_heads);

		if (need > max_ctx)
			max_ctx = need;
		any_last |= segs[i].last_only;
	}
	if (e->int8_in > 0 &&
	    (int64_t)(nesa_linear_int8_scratch(total, e->int8_in) / sizeof(float) + 1) > max_ctx)
		max_ctx = (int64_t)(nesa_linear_int8_scratch(total, e->int8_in) / sizeof(float) + 1);
	if (e->lr_r > 0 && (int64_t)nesa_linear_lowrank_scratch(total, e->lr_in, e->lr_out, e->lr_r) > max_ctx)
		max_ctx = (int64_t)nesa_linear_lowrank_scratch(total, e->lr_in, e->lr_out, e->lr_r);
	if (s == NESA_OK)
		s = ensure_scratch(e, e->scratch_need_fixed > (size_t)max_ctx ? e->scratch_need_fixed
		                                                               : (size_t)max_ctx, err);
	if (s != NESA_OK)
		return s;
	rows = 0;
	for (i = 0; i < n_segs; i++)
		for (r = 0; r < segs[i].rows; r++) {
			e->row_pos[rows] = segs[i].pos + (uint32_t)r;
			e->row_seg[rows++] = i;
		}
	/* Sessions restarting at an earlier position drop the rest of their cache. */
	for (i = 0; i < n_segs && g->n_caches > 0; i++)
		find_sess(e, segs[i].session)->n_pos = segs[i].pos;

	for (i = 0; i < g->count; i++) {
		const struct nesa_block *b = &g->blocks[i];
		struct exec_block *xb = &e->blocks[i];

		for (k = 0; k < b->n_inputs; k++)
			xb->buf[b->inputs[k]] = i == 0 ? (float *)(uintptr_t)in[k]
			                               : e->blocks[i - 1].buf[g->blocks[i - 1].outputs[k]];
		/* Another block of this parity may have moved a slot since. */
		for (k = 0; k < b->n_values; k++)
			if (xb->slot[k] >= 0)
				xb->buf[k] = e->bank[i % 2][xb->slot[k]];
		for (j = 0; j < b->n_ops; j++) {
			const struct nesa_op *op = &b->ops[j];

			if (op->head && any_last && !selected) {
				s = select_rows(e, b, xb, j, segs, n_segs, &rows, err);
				if (s != NESA_OK)
					goto done;
				selected = true;
			} else if (selected && op->kind == NESA_OP_ATTENTION) {
				s = nesa_err_set(err, NESA_EUNSUPPORTED,
				                 "block %d: attention after a head op is not supported", b->index);
				goto done;
			}
			if (e->tap != NULL &&
			    (op->kind == NESA_OP_LINEAR || op->kind == NESA_OP_LINEAR_INT8) &&
			    (s = e->tap(e->tap_ctx, b, j, xb->buf[op->in[0]], rows, err)) != NESA_OK)
				goto done;
			if (rows == 1 && fusable(op) && e->tap == NULL) {
				int m = fuse_linears(e, i, j, rows, err, &s);

				if (s != NESA_OK)
					goto done;
				if (m > 1) {
					j += m - 1;
					continue;
				}
			}
			s = ensure_slot(e, i, op->out, rows, err);
			if (s == NESA_OK)
				s = run_op(e, b, xb, op, segs, n_segs, rows, err);
			if (s != NESA_OK)
				goto done;
		}
	}
	for (i = 0; i < n_segs && g->n_caches > 0; i++)
		find_sess(e, segs[i].session)->n_pos = segs[i].pos + segs[i].rows;
	for (k = 0; k < g->blocks[g->count - 1].n_outputs; k++)
		out[k] = e->blocks[g->count - 1].buf[g->blocks[g->count - 1].outputs[k]];
	*out_rows = rows;
	e->stats.runs++;
	e->stats.rows += (uint64_t)total;
done:
	/* A failed batch leaves each session cut back to where its segment began. */
	if (s != NESA_OK)
		for (i = 0; i < n_segs && g->n_caches > 0; i++)
			find_sess(e, segs[i].session)->n_pos = segs[i].pos;
	e->stats.seconds += nesa_now() - t0;
	return s;
}
