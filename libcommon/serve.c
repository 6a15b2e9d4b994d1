/* SPDX-License-Identifier: MIT */
/*
 * A pipeline stage; see serve.h.  One batch is the tensor frames since the
 * last "last of a group" flag; each frame is one segment of the batch
 * (session, position, rows).  Outputs go out in the order of the inputs,
 * one frame per input frame, the group flag on the last.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "graph.h"
#include "log.h"
#include "net.h"
#include "serve.h"
#include "shard.h"

struct nesa_stage {
	struct nesa_model *model;
	struct nesa_graph *g;
	struct nesa_exec *e;
	struct nesa_stage_opts opts;
	char *name;
	char *hello;             /* JSON description */
	uint64_t model_id;
	int in_dtype;            /* NESA_I32 (token ids) or NESA_F32 */
	int in_ndim;             /* per-row dims of the input */
	int64_t in_shape[3];
	int64_t in_elems;        /* elements per input row */
	int out_ndim;
	int64_t out_shape[3];
	int64_t out_elems;       /* floats per output row */
	pthread_mutex_t lock;    /* one batch at a time through the executor */
};

/* A batch being gathered: rows of all its frames and one segment per frame. */
struct batch {
	void *rows;              /* (n_rows, in_elems) f32 or int32 */
	int64_t n_rows, cap_rows;
	struct nesa_seg *segs;   /* (n_segs) */
	uint64_t *ext;           /* (n_segs) the sessions' ids as the peer knows them */
	uint32_t *pos;           /* (n_segs) positions as received */
	uint8_t *flags;          /* (n_segs) input flags */
	int n_segs, cap_segs;
	void *out;               /* encoded output of one frame */
	size_t out_cap;
	float *res;              /* (res_cap) the batch's output, copied out of the executor */
	size_t res_cap;
};

static void
batch_release(struct batch *b)
{
	nesa_free(b->rows);
	nesa_free(b->segs);
	nesa_free(b->ext);
	nesa_free(b->pos);
	nesa_free(b->flags);
	nesa_aligned_free(b->out);
	nesa_aligned_free(b->res);
	memset(b, 0, sizeof *b);
}

void
nesa_stage_free(struct nesa_stage *st)
{
	if (st == NULL)
		return;
	nesa_exec_free(st->e);
	nesa_graph_free(st->g);
	nesa_model_free(st->model);
	nesa_free(st->name);
	free(st->hello); /* from json_dumps */
	pthread_mutex_destroy(&st->lock);
	nesa_free(st);
}

const char *
nesa_stage_hello(const struct nesa_stage *st)
{
	return st->hello;
}

static json_t *
shape_json(int dtype, int ndim, const int64_t *shape)
{
	json_t *a = json_array();
	int i;

	for (i = 0; i < ndim; i++)
		json_array_append_new(a, json_integer(shape[i]));
	return json_pack("{s:s, s:o}", "dtype", nesa_dtype_name(dtype), "shape", a);
}

enum nesa_status
nesa_stage_open(const char *path, const struct nesa_model_opts *mopts,
                const struct nesa_stage_opts *opts, struct nesa_stage **out, struct nesa_err *err)
{
	struct nesa_stage *st;
	const struct nesa_block *b0, *bl;
	const struct nesa_value *vi, *vo;
	const struct nesa_dtype_traits *ct;
	uint8_t id[32];
	char hex[17];
	const char *base;
	json_t *h;
	enum nesa_status s;
	int i;

	*out = NULL;
	st = nesa_calloc(1, sizeof *st);
	if (st == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	pthread_mutex_init(&st->lock, NULL);
	if (opts != NULL)
		st->opts = *opts;
	base = strrchr(path, '/');
	st->name = nesa_strdup(st->opts.name != NULL ? st->opts.name : base != NULL ? base + 1 : path);
	if (st->name == NULL) {
		nesa_stage_free(st);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	s = nesa_model_load(path, mopts, &st->model, err);
	if (s == NESA_OK)
		s = nesa_model_identity(st->model, id, err);
	if (s == NESA_OK)
		s = nesa_graph_compile(st->model->graph, st->model->weights, st->model->first,
		                       st->model->count, &st->g, err);
	if (s == NESA_OK)
		s = nesa_exec_new(st->g, &st->opts.exec, &st->e, err);
	if (s != NESA_OK) {
		nesa_stage_free(st);
		return s;
	}
	st->model_id = nesa_model_id64(id);
	b0 = &st->g->blocks[0];
	bl = &st->g->blocks[st->g->count - 1];
	if (b0->n_inputs != 1 || bl->n_outputs != 1) {
		nesa_stage_free(st);
		return nesa_err_set(err, NESA_EUNSUPPORTED,
		                    "cannot serve '%s': cuts carrying several tensors are not supported yet", path);
	}
	vi = &b0->values[b0->inputs[0]];
	vo = &bl->values[bl->outputs[0]];
	st->in_dtype = vi->dtype;
	st->in_ndim = vi->ndim;
	st->out_ndim = vo->ndim;
	for (i = 0; i < 3; i++) {
		st->in_shape[i] = vi->shape[i];
		st->out_shape[i] = vo->shape[i];
	}
	st->in_elems = vi->row_elems;
	st->out_elems = vo->row_elems;
	ct = nesa_dtype_traits(st->opts.out_codec);
	if (ct == NULL || !(ct->flags & (NESA_DTYPE_FLOAT | NESA_DTYPE_QUANT)) ||
	    (vo->ndim > 0 ? vo->shape[vo->ndim - 1] : 1) % ct->block_size != 0) {
		s = nesa_err_set(err, NESA_EINVAL,
		                 "cannot send the output of '%s' (rows of %lld) as %s: choose a float codec whose block divides the row",
		                 path, (long long)st->out_elems, nesa_dtype_name(st->opts.out_codec));
		nesa_stage_free(st);
		return s;
	}
	for (i = 0; i < 8; i++)
		snprintf(hex + 2 * i, 3, "%02x", id[i]);
	h = json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:o, s:o, s:i, s:s}", "stage", st->name, "model",
	              st->model->name, "model_id", hex, "n_blocks", st->model->n_blocks, "first",
	              st->model->first, "count", st->model->count, "in",
	              shape_json(vi->dtype, vi->ndim, vi->shape), "out",
	              shape_json(NESA_F32, vo->ndim, vo->shape), "max_positions", st->g->max_positions,
	              "codec", nesa_dtype_name(st->opts.out_codec));
	st->hello = h != NULL ? json_dumps(h, JSON_COMPACT) : NULL;
	json_decref(h);
	if (st->hello == NULL) {
		nesa_stage_free(st);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	*out = st;
	return NESA_OK;
}

/*
 * Sends an error frame downstream naming this stage and logs it (unless
 * quiet: the caller reports it itself); returns status, or NESA_EIO when
 * the output is gone.
 */
static enum nesa_status
report_as(struct nesa_stage *st, struct nesa_stream *out, uint64_t session,
          enum nesa_status status, const char *msg, bool quiet)
{
	char full[NESA_ERR_MSG_MAX + 64];

	snprintf(full, sizeof full, "blocks [%d, %d) of '%s': %s", st->model->first,
	         st->model->first + st->model->count, st->model->name, msg);
	if (!quiet)
		nesa_log(NESA_LOG_ERROR, "stage '%s': %s", st->name, full);
	if (nesa_stream_write_error(out, session, status, st->name, full) != NESA_OK)
		return NESA_EIO;
	return status;
}

static enum nesa_status
report(struct nesa_stage *st, struct nesa_stream *out, uint64_t session, enum nesa_status status,
       const char *msg)
{
	return report_as(st, out, session, status, msg, false);
}

static bool
grow(void **p, int64_t need, int64_t *cap, size_t elem)
{
	int64_t n = *cap ? *cap : 64;
	void *q;

	if (need <= *cap)
		return true;
	while (n < need)
		n *= 2;
	q = nesa_realloc(*p, (size_t)n * elem);
	if (q == NULL)
		return false;
	*p = q;
	*cap = n;
	return true;
}

/*
 * Checks a tensor frame against what the stage consumes and appends its
 * rows to the batch.  A refusal is returned with a message in err.
 */
static enum nesa_status
add_frame(struct nesa_stage *st, struct batch *b, const struct nesa_frame *f, uint64_t session,
          struct nesa_err *err)
{
	const size_t esz = st->in_dtype == NESA_I32 ? sizeof(int32_t) : sizeof(float);
	int64_t rows = f->ndim > 0 ? f->shape[0] : 0, seg_cap = b->cap_segs;
	char want[64], got[64];
	int i;

	if (f->slot != 0)
		return nesa_err_set(err, NESA_EUNSUPPORTED, "session %llu: tensor slot %u (cuts carrying several tensors are not supported)",
		                    (unsigned long long)f->session, f->slot);
	if (f->model_id != 0 && f->model_id != st->model_id)
		return nesa_err_set(err, NESA_EINVAL, "session %llu: activations of another model (id %016llx, this stage serves %016llx)",
		                    (unsigned long long)f->session, (unsigned long long)f->model_id,
		                    (unsigned long long)st->model_id);
	if (f->block != NESA_BLOCK_NONE && f->block != (uint32_t)st->model->first)
		return nesa_err_set(err, NESA_EINVAL, "session %llu: activations for block %u, but this stage starts at block %d",
		                    (unsigned long long)f->session, f->block, st->model->first);
	/* One row dimension in front of the per-row shape the stage consumes. */
	nesa_shape_str(st->in_ndim, st->in_shape, want, sizeof want);
	nesa_shape_str(f->ndim > 0 ? f->ndim - 1 : 0, f->shape + 1, got, sizeof got);
	if (f->ndim != st->in_ndim + 1 || rows < 1)
		return nesa_err_set(err, NESA_ESHAPE, "session %llu: rows of %s, but this stage takes rows of %s",
		                    (unsigned long long)f->session, got, want);
	for (i = 0; i < st->in_ndim; i++)
		if (f->shape[i + 1] != st->in_shape[i])
			return nesa_err_set(err, NESA_ESHAPE, "session %llu: rows of %s, but this stage takes rows of %s (hidden size mismatch)",
			                    (unsigned long long)f->session, got, want);
	if ((st->in_dtype == NESA_I32) != (f->codec == NESA_I32))
		return nesa_err_set(err, NESA_EINVAL, "session %llu: %s data, but this stage takes %s",
		                    (unsigned long long)f->session, nesa_dtype_name(f->codec),
		                    st->in_dtype == NESA_I32 ? "i32 token ids" : "float activations");
	if (rows > INT32_MAX || b->n_rows + rows > (int64_t)1 << 24)
		return nesa_err_set(err, NESA_ELIMIT, "session %llu: batch of more than 2^24 rows", (unsigned long long)f->session);
	if (!grow(&b->rows, b->n_rows + rows, &b->cap_rows, (size_t)st->in_elems * esz))
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	if (b->n_segs == b->cap_segs) {
		int64_t c2 = seg_cap;

		if (!grow((void **)&b->segs, b->n_segs + 1, &seg_cap, sizeof *b->segs) ||
		    !grow((void **)&b->ext, b->n_segs + 1, &c2, sizeof *b->ext) ||
		    (c2 = b->cap_segs, !grow((void **)&b->pos, b->n_segs + 1, &c2, sizeof *b->pos)) ||
		    (c2 = b->cap_segs, !grow((void **)&b->flags, b->n_segs + 1, &c2, sizeof *b->flags)))
			return nesa_err_set(err, NESA_ENOMEM, "out of memory");
		b->cap_segs = (int)seg_cap;
	}
	for (i = 0; i < b->n_segs; i++)
		if (b->segs[i].session == session)
			return nesa_err_set(err, NESA_EINVAL, "session %llu sent two frames in one group",
			                    (unsigned long long)f->session);
	if (st->in_dtype == NESA_I32)
		memcpy((int32_t *)b->rows + b->n_rows, f->payload, (size_t)rows * sizeof(int32_t));
	else if (nesa_frame_decode_f32(f, (float *)b->rows + b->n_rows * st->in_elems,
	                               (size_t)(rows * st->in_elems), err) != NESA_OK)
		return err->status;
	b->segs[b->n_segs] = (struct nesa_seg){session, f->position, (uint32_t)rows,
	                                       (f->flags & NESA_FRAME_FLAG_LASTROW) != 0};
	b->ext[b->n_segs] = f->session;
	b->pos[b->n_segs] = f->position;
	b->flags[b->n_segs] = f->flags;
	b->n_segs++;
	b->n_rows += rows;
	return NESA_OK;
}

/*
 * Runs a gathered batch and writes one output frame per input frame.  A
 * failed run is reported downstream and returned; a failed write sets
 * *fatal (the output is gone).
 */
static enum nesa_status
run_batch(struct nesa_stage *st, struct batch *b, struct nesa_stream *out, bool *fatal,
          struct nesa_err *err)
{
	const struct nesa_dtype_traits *ct = nesa_dtype_traits(st->opts.out_codec);
	const float *res[4];
	const void *in[1] = {b->rows};
	int64_t out_rows, row = 0, selected = 0;
	enum nesa_status s;
	int i, k;

	if (b->n_segs == 0)
		return NESA_OK;
	/*
	 * The executor's output buffer is reused by the next batch of any
	 * connection: copy it out before letting go of the executor.
	 */
	pthread_mutex_lock(&st->lock);
	s = nesa_exec_run(st->e, b->segs, b->n_segs, in, res, &out_rows, err);
	if (s == NESA_OK && (size_t)(out_rows * st->out_elems) > b->res_cap) {
		nesa_aligned_free(b->res);
		b->res_cap = (size_t)(out_rows * st->out_elems) * 2;
		b->res = nesa_aligned_alloc(b->res_cap * sizeof *b->res);
		if (b->res == NULL) {
			b->res_cap = 0;
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		}
	}
	if (s == NESA_OK)
		memcpy(b->res, res[0], (size_t)(out_rows * st->out_elems) * sizeof *b->res);
	pthread_mutex_unlock(&st->lock);
	if (s != NESA_OK) {
		*fatal = report(st, out, b->ext[0], s, err->msg) == NESA_EIO;
		b->n_segs = 0;
		b->n_rows = 0;
		return s;
	}
	for (i = 0; i < b->n_segs; i++)
		selected += b->segs[i].last_only ? 1 : b->segs[i].rows;
	for (i = 0; i < b->n_segs; i++) {
		/* Heads computed last rows only when the output has fewer rows. */
		int64_t rows = out_rows == b->n_rows ? b->segs[i].rows
		               : b->segs[i].last_only ? 1 : b->segs[i].rows;
		struct nesa_frame f;
		size_t bytes;

		if (NESA_NEVER(out_rows != b->n_rows && out_rows != selected))
			return nesa_err_set(err, NESA_EINTERNAL, "batch of %lld rows gave %lld outputs",
			                    (long long)b->n_rows, (long long)out_rows);
		nesa_frame_init(&f, NESA_FRAME_TENSOR);
		f.session = b->ext[i];
		f.position = b->pos[i];
		f.block = st->model->first + st->model->count < st->model->n_blocks
		              ? (uint32_t)(st->model->first + st->model->count)
		              : NESA_BLOCK_NONE;
		f.model_id = st->model_id;
		f.codec = (uint8_t)st->opts.out_codec;
		f.flags = (uint8_t)((b->flags[i] & NESA_FRAME_FLAG_LASTROW) |
		                    (i == b->n_segs - 1 ? NESA_FRAME_FLAG_LAST : 0));
		f.ndim = st->out_ndim + 1;
		f.shape[0] = rows;
		for (k = 0; k < st->out_ndim; k++)
			f.shape[k + 1] = st->out_shape[k];
		if (!nesa_dtype_bytes(st->opts.out_codec, rows * st->out_elems, &bytes))
			return nesa_err_set(err, NESA_EINTERNAL, "output too large");
		if (st->opts.out_codec == NESA_F32) {
			f.payload = b->res + row * st->out_elems;
		} else {
			if (bytes > b->out_cap) {
				nesa_aligned_free(b->out);
				b->out = nesa_aligned_alloc(bytes);
				b->out_cap = b->out != NULL ? bytes : 0;
				if (b->out == NULL)
					return nesa_err_set(err, NESA_ENOMEM, "out of memory");
			}
			ct->from_f32(b->res + row * st->out_elems, b->out, rows * st->out_elems);
			f.payload = b->out;
		}
		f.payload_len = bytes;
		if (nesa_stream_write(out, &f) != NESA_OK) {
			*fatal = true;
			return nesa_err_copy(err, nesa_stream_err(out));
		}
		row += rows;
	}
	b->n_segs = 0;
	b->n_rows = 0;
	return NESA_OK;
}

/*
 * Answers a hello (begin frame for session 0 without a "stage" key).  A
 * request with a "chain" key is passed on before the answer, so in a chain
 * of stages piped to each other every stage answers: the end of the chain
 * sees the request, then the answers from the last stage back to the first.
 */
static enum nesa_status
hello(struct nesa_stage *st, const struct nesa_frame *f, struct nesa_stream *out, struct nesa_err *err)
{
	struct nesa_frame r;
	bool answer = f->payload_len == 0 || memmem(f->payload, f->payload_len, "\"stage\"", 7) == NULL;

	/* A hello answer from upstream, or a chain request, is passed on unchanged. */
	if ((!answer || (f->payload_len > 0 && memmem(f->payload, f->payload_len, "\"chain\"", 7) != NULL)) &&
	    nesa_stream_write(out, f) != NESA_OK)
		return nesa_err_copy(err, nesa_stream_err(out));
	if (!answer)
		return NESA_OK;
	nesa_frame_init(&r, NESA_FRAME_BEGIN);
	r.payload = st->hello;
	r.payload_len = strlen(st->hello);
	r.model_id = st->model_id;
	if (nesa_stream_write(out, &r) != NESA_OK)
		return nesa_err_copy(err, nesa_stream_err(out));
	return NESA_OK;
}

/* Passes a control frame on; NESA_EIO when the output is gone. */
static enum nesa_status
forward(struct nesa_stream *out, const struct nesa_frame *f, struct nesa_err *err)
{
	if (nesa_stream_write(out, f) != NESA_OK)
		return nesa_err_copy(err, nesa_stream_err(out));
	return NESA_OK;
}

/*
 * The serving loop shared by pipes and TCP connections: sessions are mapped
 * through map (NULL for the identity), which keeps connections apart.
 * Refusals and failed batches are reported downstream and remembered; only
 * a broken input or output ends the loop early.
 */
static enum nesa_status
serve(struct nesa_stage *st, struct nesa_stream *in, struct nesa_stream *out,
      uint64_t (*map)(void *, uint64_t), void *map_ctx, bool *logged, struct nesa_err *err)
{
	struct batch b;
	struct nesa_frame f;
	struct nesa_err e2;
	enum nesa_status s, first = NESA_OK;
	bool fatal = false;

	memset(&b, 0, sizeof b);
	nesa_err_clear(err);
	for (;;) {
		s = nesa_stream_read(in, &f);
		if (s != NESA_OK) {
			nesa_err_copy(&e2, nesa_stream_err(in));
			/* Tell downstream why the stream stopped, if it can still hear. */
			report_as(st, out, 0, s, e2.msg, true);
			fatal = true;
			break;
		}
		if (f.kind == NESA_FRAME_TENSOR) {
			s = add_frame(st, &b, &f, map != NULL ? map(map_ctx, f.session) : f.session, &e2);
			if (s != NESA_OK)
				fatal = report(st, out, f.session, s, e2.msg) == NESA_EIO;
			else if (f.flags & NESA_FRAME_FLAG_LAST)
				s = run_batch(st, &b, out, &fatal, &e2);
		} else {
			/* Control frames apply after the tensors before them. */
			s = run_batch(st, &b, out, &fatal, &e2);
			if (!fatal && s != NESA_OK && first == NESA_OK) {
				first = s;
				nesa_err_copy(err, &e2);
			}
			if (fatal)
				break;
			if (f.kind == NESA_FRAME_END) {
				pthread_mutex_lock(&st->lock);
				nesa_exec_end(st->e, map != NULL ? map(map_ctx, f.session) : f.session);
				pthread_mutex_unlock(&st->lock);
			}
			/* Only the output can make these fail. */
			s = f.kind == NESA_FRAME_BEGIN && f.session == 0 ? hello(st, &f, out, &e2)
			                                                 : forward(out, &f, &e2);
			fatal = s != NESA_OK;
		}
		if (fatal)
			break;
		if (s != NESA_OK && first == NESA_OK) {
			first = s;
			nesa_err_copy(err, &e2);
		}
		if (f.kind == NESA_FRAME_EOS)
			break;
	}
	batch_release(&b);
	if (logged != NULL)
		*logged = !fatal && first != NESA_OK;
	if (fatal)
		return nesa_err_copy(err, &e2);
	return first;
}

enum nesa_status
nesa_stage_serve(struct nesa_stage *st, struct nesa_stream *in, struct nesa_stream *out,
                 bool *logged, struct nesa_err *err)
{
	return serve(st, in, out, NULL, NULL, logged, err);
}

/* TCP: one thread per connection. */

struct conn {
	struct nesa_stage *st;
	int fd;
	uint64_t id;
};

/* Sessions of connection c live at (c << 40) + session; ids must fit 40 bits. */
static uint64_t
conn_map(void *ctx, uint64_t session)
{
	return ((struct conn *)ctx)->id << 40 | (session & ((UINT64_C(1) << 40) - 1));
}

static void *
conn_main(void *arg)
{
	struct conn *c = arg;
	struct nesa_stream *in = NULL, *out = NULL;
	struct nesa_err err;
	char name[64];

	snprintf(name, sizeof name, "connection %llu", (unsigned long long)c->id);
	if (nesa_stream_open_fd(c->fd, NESA_STREAM_READ, name, &in, &err) == NESA_OK &&
	    nesa_stream_open_fd(c->fd, NESA_STREAM_WRITE, name, &out, &err) == NESA_OK) {
		if (c->st->opts.timeout_ms > 0)
			nesa_stream_set_timeout(in, c->st->opts.timeout_ms);
		if (serve(c->st, in, out, conn_map, c, NULL, &err) != NESA_OK)
			nesa_log(NESA_LOG_INFO, "%s: %s", name, nesa_err_msg(&err));
	} else {
		nesa_log_err(&err);
	}
	/* The connection's sessions go with it. */
	nesa_stream_free(in);
	nesa_stream_free(out);
	close(c->fd);
	nesa_log(NESA_LOG_INFO, "%s closed", name);
	nesa_free(c);
	return NULL;
}

enum nesa_status
nesa_stage_listen(struct nesa_stage *st, const char *addr, struct nesa_err *err)
{
	uint64_t next_id = 1;
	int lfd;
	enum nesa_status s;

	s = nesa_net_listen(addr, &lfd, err);
	if (s != NESA_OK)
		return s;
	nesa_log(NESA_LOG_INFO, "stage '%s' listening on %s", st->name, addr);
	for (;;) {
		struct conn *c;
		pthread_t t;
		int fd = nesa_net_accept(lfd);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
				continue;
			s = nesa_err_sys(err, NESA_EIO, "cannot accept on '%s'", addr);
			break;
		}
		c = nesa_calloc(1, sizeof *c);
		if (c == NULL) {
			close(fd);
			continue;
		}
		c->st = st;
		c->fd = fd;
		c->id = next_id++;
		if (pthread_create(&t, NULL, conn_main, c) != 0) {
			close(fd);
			nesa_free(c);
			continue;
		}
		pthread_detach(t);
	}
	close(lfd);
	return s;
}
