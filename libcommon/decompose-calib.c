/* SPDX-License-Identifier: MIT */
/*
 * Calibration statistics for nesa-decompose; see decompose.h.  The model
 * runs on calibration data in this process through an executor whose tap
 * hands every matrix op's input rows to nesa_calib_add, which keeps per
 * input feature the largest magnitude (LLM.int8() outliers), the mean
 * magnitude (ASVD), optionally the Gram matrix (SVD-LLM whitening), and a
 * uniform sample of rows for measuring output errors later.  This module
 * does not decide anything; decompose-model.c reads the statistics.
 */
#include "config.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "alloc.h"
#include "data.h"
#include "decompose.h"
#include "eval.h"
#include "exec.h"
#include "log.h"
#include "tokenizer.h"
#include "xio.h"

#define DEFAULT_TOKENS 8192
#define DEFAULT_IMAGES 512
#define DEFAULT_SAMPLE 256
#define GRAM_CHUNK 256      /* rows converted to double per Gram update */
#define WINDOWS_PER_RUN 8   /* text windows per executor run */
#define IMAGES_PER_RUN 32

struct nesa_calib {
	struct nesa_calib_opts o;
	struct nesa_calib_stat *stats; /* (n) */
	int n, cap;
	uint64_t rng;                  /* splitmix64 state of the row sample */
	int64_t rows;                  /* tokens or images run */
	double *dbuf;                  /* (GRAM_CHUNK, widest n) rows as doubles */
	int64_t dbuf_n;
};

static uint64_t
next_rand(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

enum nesa_status
nesa_calib_new(const struct nesa_calib_opts *o, struct nesa_calib **out, struct nesa_err *err)
{
	struct nesa_calib *c = nesa_calloc(1, sizeof *c);

	*out = NULL;
	if (c == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	c->o = *o;
	if (c->o.sample_rows <= 0)
		c->o.sample_rows = DEFAULT_SAMPLE;
	c->rng = o->seed;
	*out = c;
	return NESA_OK;
}

void
nesa_calib_free(struct nesa_calib *c)
{
	int i;

	if (c == NULL)
		return;
	for (i = 0; i < c->n; i++) {
		nesa_free(c->stats[i].absmax);
		nesa_free(c->stats[i].abssum);
		nesa_free(c->stats[i].gram);
		nesa_free(c->stats[i].sample);
	}
	nesa_free(c->stats);
	nesa_free(c->dbuf);
	nesa_free(c);
}

static struct nesa_calib_stat *
find(const struct nesa_calib *c, int block, int value)
{
	int i;

	for (i = 0; i < c->n; i++)
		if (c->stats[i].block == block && c->stats[i].value == value)
			return &c->stats[i];
	return NULL;
}

const struct nesa_calib_stat *
nesa_calib_find(const struct nesa_calib *c, int block, int value)
{
	return c != NULL ? find(c, block, value) : NULL;
}

int64_t
nesa_calib_rows(const struct nesa_calib *c)
{
	return c != NULL ? c->rows : 0;
}

enum nesa_status
nesa_calib_want(struct nesa_calib *c, int block, int value, int64_t n, bool gram, struct nesa_err *err)
{
	struct nesa_calib_stat *st = find(c, block, value);
	size_t nn, sn;

	if (st != NULL && st->n != n)
		return nesa_err_set(err, NESA_EINVAL, "calibration input %d of block %d has %lld features, not %lld",
		                    value, block, (long long)st->n, (long long)n);
	if (n < 1 || !nesa_mul_size((size_t)c->o.sample_rows, (size_t)n, &sn) ||
	    !nesa_mul_size(sn, sizeof(float), &sn))
		return nesa_err_set(err, NESA_EINVAL, "calibration input %d of block %d: %lld features is too many",
		                    value, block, (long long)n);
	if (st == NULL) {
		if (c->n == c->cap) {
			int ncap = c->cap ? 2 * c->cap : 16;
			struct nesa_calib_stat *ns = nesa_realloc(c->stats, (size_t)ncap * sizeof *ns);

			if (ns == NULL)
				return nesa_err_set(err, NESA_ENOMEM, "out of memory");
			c->stats = ns;
			c->cap = ncap;
		}
		st = &c->stats[c->n];
		memset(st, 0, sizeof *st);
		st->block = block;
		st->value = value;
		st->n = n;
		st->cap = c->o.sample_rows;
		st->absmax = nesa_calloc((size_t)n, sizeof *st->absmax);
		st->abssum = nesa_calloc((size_t)n, sizeof *st->abssum);
		st->sample = nesa_malloc(sn);
		/* Counted only once its arrays exist, so a failure leaves nothing half made. */
		if (st->absmax == NULL || st->abssum == NULL || st->sample == NULL) {
			nesa_free(st->absmax);
			nesa_free(st->abssum);
			nesa_free(st->sample);
			return nesa_err_set(err, NESA_ENOMEM, "out of memory for calibration statistics");
		}
		c->n++;
	}
	if (gram && st->gram == NULL) {
		if (!nesa_mul_size((size_t)n, (size_t)n, &nn) ||
		    (st->gram = nesa_calloc(nn, sizeof *st->gram)) == NULL)
			return nesa_err_set(err, NESA_ENOMEM, "out of memory for a %lld x %lld Gram matrix",
			                    (long long)n, (long long)n);
	}
	return NESA_OK;
}

/*
 * Maxima and sums are exact over every row; the sample is a reservoir so
 * that a long calibration run still keeps rows from its whole length, not
 * just its start, in a fixed amount of memory.  The Gram matrix is summed
 * in double through dsyrk, chunk by chunk, because thousands of float rows
 * would lose the small eigenvalues whitening depends on.
 */
enum nesa_status
nesa_calib_add(struct nesa_calib *c, int block, int value, const float *x, int64_t rows,
               struct nesa_err *err)
{
	struct nesa_calib_stat *st = find(c, block, value);
	int64_t r, j, r0;

	if (st == NULL || rows <= 0)
		return NESA_OK;
	for (r = 0; r < rows; r++) {
		const float *xr = x + r * st->n;
		int64_t seen = st->rows + r, slot = -1;

		for (j = 0; j < st->n; j++) {
			const float a = fabsf(xr[j]);

			st->absmax[j] = a > st->absmax[j] ? a : st->absmax[j];
			st->abssum[j] += (double)a;
		}
		/* Reservoir sampling: every row seen so far is kept with equal chance. */
		if (st->n_sample < st->cap) {
			slot = st->n_sample++;
		} else {
			slot = (int64_t)(next_rand(&c->rng) % (uint64_t)(seen + 1));
			slot = slot < st->cap ? slot : -1;
		}
		if (slot >= 0)
			memcpy(st->sample + slot * st->n, xr, (size_t)st->n * sizeof *xr);
	}
	if (st->gram != NULL) {
		if (st->n > c->dbuf_n) {
			nesa_free(c->dbuf);
			c->dbuf_n = 0;
			c->dbuf = nesa_malloc((size_t)(GRAM_CHUNK * st->n) * sizeof *c->dbuf);
			if (c->dbuf == NULL)
				return nesa_err_set(err, NESA_ENOMEM, "out of memory");
			c->dbuf_n = st->n;
		}
		/* G += X^T X on the lower triangle, in double: sums of thousands of rows. */
		for (r0 = 0; r0 < rows; r0 += GRAM_CHUNK) {
			const int64_t k = rows - r0 < GRAM_CHUNK ? rows - r0 : GRAM_CHUNK;

			for (j = 0; j < k * st->n; j++)
				c->dbuf[j] = (double)x[r0 * st->n + j];
			cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, (int)st->n, (int)k, 1.0, c->dbuf,
			            (int)st->n, 1.0, st->gram, (int)st->n);
		}
	}
	st->rows += rows;
	return NESA_OK;
}

/* The executor tap: an op's input value identifies the statistics, so ops sharing it share them. */
static enum nesa_status
tap(void *ctx, const struct nesa_block *b, int op_index, const float *x, int64_t rows,
    struct nesa_err *err)
{
	return nesa_calib_add(ctx, b->index, b->ops[op_index].in[0], x, rows, err);
}

/* Text: windows of the context (at most 512 tokens), several per run, each its own session. */
static enum nesa_status
run_text(struct nesa_calib *c, struct nesa_model *m, const struct nesa_graph *g, struct nesa_exec *e,
         struct nesa_err *err)
{
	const int64_t window = g->max_positions > 0 && g->max_positions < 512 ? g->max_positions : 512;
	struct nesa_seg segs[WINDOWS_PER_RUN];
	struct nesa_progress prog;
	char *text = NULL;
	size_t len;
	int32_t *toks = NULL;
	int64_t n_toks = 0, start = 0;
	size_t n_read = 0;
	enum nesa_status s;

	if (m->tok == NULL)
		return nesa_err_set(err, NESA_EINVAL, "cannot calibrate with '%s': the model has no tokenizer",
		                    c->o.path);
	s = nesa_read_file(c->o.path, (size_t)1 << 31, &text, &len, err);
	if (s == NESA_OK)
		s = nesa_tokenize_paragraphs(m->tok, text, len,
		                             (size_t)(c->o.limit > 0 ? c->o.limit : DEFAULT_TOKENS), &toks,
		                             &n_read, err);
	n_toks = (int64_t)n_read;
	nesa_free(text);
	if (s == NESA_OK && n_toks == 0)
		s = nesa_err_set(err, NESA_EINVAL, "cannot calibrate with '%s': it holds no text", c->o.path);
	if (s != NESA_OK)
		return s;
	nesa_progress_begin(&prog, "calibrating", (uint64_t)n_toks);
	while (start < n_toks && s == NESA_OK) {
		const void *in[1] = {toks + start};
		const float *out[4];
		int64_t rows;
		int n = 0, k;

		while (n < WINDOWS_PER_RUN && start < n_toks) {
			const int64_t wl = n_toks - start < window ? n_toks - start : window;

			segs[n] = (struct nesa_seg){(uint64_t)n + 1, 0, (uint32_t)wl, false};
			n++;
			start += wl;
		}
		s = nesa_exec_run(e, segs, n, in, out, &rows, err);
		for (k = 0; k < n; k++)
			nesa_exec_end(e, segs[k].session);
		nesa_progress_update(&prog, (uint64_t)start);
	}
	nesa_progress_end(&prog);
	nesa_free(toks);
	if (s == NESA_OK)
		c->rows = n_toks;
	return s;
}

/* Images: the dataset in batches of one segment each. */
static enum nesa_status
run_images(struct nesa_calib *c, struct nesa_model *m, struct nesa_exec *e, struct nesa_err *err)
{
	struct nesa_dataset ds;
	struct nesa_progress prog;
	int64_t shape[3], per, i, out_elems;
	int dtype, ndim;
	enum nesa_status s;

	if (c->o.labels == NULL)
		return nesa_err_set(err, NESA_EINVAL, "cannot calibrate with '%s': images need their labels file (--labels)",
		                    c->o.path);
	s = nesa_model_io(m, &dtype, &ndim, shape, &out_elems, err);
	if (s != NESA_OK)
		return s;
	s = nesa_dataset_load(c->o.path, c->o.labels, shape, c->o.layout,
	                      c->o.limit > 0 ? c->o.limit : DEFAULT_IMAGES, &ds, err);
	if (s != NESA_OK)
		return s;
	per = ds.C * ds.H * ds.W;
	nesa_progress_begin(&prog, "calibrating", (uint64_t)ds.n);
	for (i = 0; i < ds.n && s == NESA_OK; i += IMAGES_PER_RUN) {
		const int64_t n = ds.n - i < IMAGES_PER_RUN ? ds.n - i : IMAGES_PER_RUN;
		struct nesa_seg seg = {1, 0, (uint32_t)n, false};
		const void *in[1] = {ds.images + i * per};
		const float *out[4];
		int64_t rows;

		s = nesa_exec_run(e, &seg, 1, in, out, &rows, err);
		nesa_progress_update(&prog, (uint64_t)(i + n));
	}
	nesa_progress_end(&prog);
	if (s == NESA_OK)
		c->rows = ds.n;
	nesa_dataset_release(&ds);
	return s;
}

/*
 * Calibration runs the whole model in this process: the statistics of a
 * layer's input depend on every layer before it, so a shard alone cannot
 * calibrate (decompose the whole model, then partition it).
 */
enum nesa_status
nesa_calib_run(struct nesa_calib *c, struct nesa_model *m, const struct nesa_graph *g,
               struct nesa_err *err)
{
	const struct nesa_block *b0 = &g->blocks[0];
	struct nesa_exec *e = NULL;
	enum nesa_status s;

	if (g->first != 0 || g->first + g->count != g->n_blocks)
		return nesa_err_set(err, NESA_EUNSUPPORTED, "cannot calibrate '%s': it holds blocks [%d, %d) of %d, and calibration runs the whole model",
		                    m->path, g->first, g->first + g->count, g->n_blocks);
	if (b0->n_inputs != 1)
		return nesa_err_set(err, NESA_EUNSUPPORTED, "cannot calibrate '%s': its first block takes %d inputs",
		                    m->path, b0->n_inputs);
	s = nesa_exec_new(g, NULL, &e, err);
	if (s != NESA_OK)
		return s;
	nesa_exec_set_tap(e, tap, c);
	if (b0->values[b0->inputs[0]].dtype == NESA_I32)
		s = run_text(c, m, g, e, err);
	else
		s = run_images(c, m, e, err);
	nesa_exec_free(e);
	if (s == NESA_OK && c->rows == 0)
		s = nesa_err_set(err, NESA_EINVAL, "cannot calibrate with '%s': no rows", c->o.path);
	return s;
}
