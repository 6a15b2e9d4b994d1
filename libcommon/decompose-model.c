/* SPDX-License-Identifier: MIT */
/*
 * nesa-decompose at the model level: which weights get which method, the
 * calibration run, the new tensors and the rewritten graph, error figures
 * measured on what is actually stored, the report and the archive; see
 * decompose.h.  The numerics are decompose.c's, the statistics
 * decompose-calib.c's.
 *
 * New tensors are named after the weight they replace: NAME.i8, NAME.scale,
 * NAME.ow and NAME.oi for int8 (weights, row scales, outlier weights and
 * indices), NAME.a and NAME.b for low-rank factors, NAME.q for lorc's
 * quantized weight (nesa-decompose(1)).  The original disappears from the
 * archive unless an op other than a plain linear one still uses it (a tied
 * embedding table).
 */
#include "config.h"

#include <cblas.h>
#include <fnmatch.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "decompose.h"
#include "log.h"
#include "ops.h"
#include "quant.h"
#include "quantize.h"

/* One weight the graph references, and how the graph uses it. */
struct weight {
	struct nesa_tensor *t;    /* m's tensor */
	bool linear;              /* the weight of a plain linear op (no factors) */
	bool embedding;           /* the table of an embedding op */
	bool other;               /* used any other way */
	int block, value;         /* the first such linear op's block and input value */
	struct nesa_decompose_spec spec;
	struct nesa_decompose_stat *st;
};

/* What one decomposition needs to know. */
struct job {
	struct nesa_model *m;
	const struct nesa_decompose_opts *o;
	const struct nesa_graph *g;
	struct nesa_calib *calib;      /* NULL without calibration */
	struct nesa_decomposed *d;
	json_t *doc_blocks;            /* the new graph's "blocks" */
	int doc_first;                 /* absolute index of its first entry */
	bool runtime, calib_outliers;  /* int8 outlier modes in effect */
};

void
nesa_decompose_opts_init(struct nesa_decompose_opts *o)
{
	memset(o, 0, sizeof *o);
	o->def.method = NESA_DECOMPOSE_INT8;
	o->def.qtype = NESA_Q4_0;
	o->def.threshold = -1;
	o->factor_dtype = NESA_F16;
	o->threshold = 6.0;
	o->alpha = 0.5;
}

static void
note_set(struct nesa_decompose_stat *st, const char *text)
{
	snprintf(st->note, sizeof st->note, "%s", text);
}

/*
 * The spec for one weight, with the reason in st->note.  Shape and use
 * come before the rules so that no pattern can turn a norm or a
 * convolution into something the runtime cannot run; a tied embedding is
 * kept unless a rule names it, since decomposing it keeps the table as
 * well and so grows the archive.
 */
static void
choose(const struct nesa_decompose_opts *o, struct weight *w)
{
	struct nesa_decompose_stat *st = w->st;
	size_t i;

	memset(&w->spec, 0, sizeof w->spec);
	if (!w->linear || w->t->ndim != 2) {
		note_set(st, !w->linear ? (w->embedding ? "embedding" : "not a linear weight") : "not 2-D");
		return;
	}
	for (i = 0; i < o->n_rules; i++)
		if (fnmatch(o->rules[i].pattern, w->t->name, 0) == 0) {
			w->spec = o->rules[i].spec;
			snprintf(st->note, sizeof st->note, "rule '%s'", o->rules[i].pattern);
			return;
		}
	if (w->embedding || w->other) {
		note_set(st, w->embedding ? "embedding, tied head" : "shared");
		return;
	}
	w->spec = o->def;
	note_set(st, "default");
}

/* Finds the uses of every weight in the compiled graph. */
static void
weight_uses(const struct nesa_graph *g, struct weight *w)
{
	int b, i, k;

	w->block = w->value = -1;
	for (b = 0; b < g->count; b++)
		for (i = 0; i < g->blocks[b].n_ops; i++) {
			const struct nesa_op *op = &g->blocks[b].ops[i];

			for (k = 0; k < 5; k++) {
				if (op->w[k] != w->t)
					continue;
				if (k == 0 && op->kind == NESA_OP_LINEAR && op->w[2] == NULL) {
					w->linear = true;
					if (w->block < 0) {
						w->block = g->blocks[b].index;
						w->value = op->in[0];
					}
				} else if (k == 0 && op->kind == NESA_OP_EMBEDDING) {
					w->embedding = true;
				} else {
					w->other = true;
				}
			}
		}
}

static double
sumsq(const float *x, int64_t n)
{
	double s = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		s += (double)x[i] * (double)x[i];
	return s;
}

/* sqrt(||a - b||^2 / ||a||^2), 0 for a zero a equal to b. */
static double
rel_err(const float *a, const float *b, int64_t n)
{
	double e = 0, r = sumsq(a, n);
	int64_t i;

	for (i = 0; i < n; i++)
		e += ((double)a[i] - (double)b[i]) * ((double)a[i] - (double)b[i]);
	return r > 0 ? sqrt(e / r) : (e > 0 ? INFINITY : 0.0);
}

/*
 * The name of w's new tensor NAME + suffix into name (300 bytes), checked:
 * a tensor name holds at most 255 bytes, and a model tensor of that name
 * would be shadowed.
 */
static enum nesa_status
new_name(struct job *j, const struct weight *w, const char *suffix, char *name, struct nesa_err *err)
{
	snprintf(name, 300, "%s%s", w->t->name, suffix);
	if (strlen(name) > 255)
		return nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s': the name '%s' would be too long",
		                    w->t->name, name);
	if (nesa_tset_find(j->m->weights, name) != NULL)
		return nesa_err_set(err, NESA_EFORMAT, "cannot decompose tensor '%s': the model already has a tensor '%s'",
		                    w->t->name, name);
	return NESA_OK;
}

/* A new zeroed tensor NAME + suffix. */
static enum nesa_status
new_tensor(struct job *j, const struct weight *w, const char *suffix, int dtype, int ndim,
           const int64_t *shape, struct nesa_tensor **out, struct nesa_err *err)
{
	char name[300];
	enum nesa_status s = new_name(j, w, suffix, name, err);

	return s != NESA_OK ? s : nesa_tset_alloc(&j->d->ts, name, dtype, ndim, shape, out, err);
}

/* Stores f32 data (rows, cols) as NAME + suffix in dtype fitted to its rows. */
static enum nesa_status
store(struct job *j, const struct weight *w, const char *suffix, const float *data, int64_t rows,
      int64_t cols, int dtype, struct nesa_err *err)
{
	struct nesa_tensor src;
	const int64_t shape[2] = {rows, cols};
	char name[300];
	enum nesa_status s;

	if ((s = new_name(j, w, suffix, name, err)) != NESA_OK)
		return s;
	if (nesa_quant_fit(dtype, cols) == NESA_F32) {
		struct nesa_tensor *t;

		/* Copied: data is the caller's scratch, and f32 needs no conversion. */
		s = nesa_tset_alloc(&j->d->ts, name, NESA_F32, 2, shape, &t, err);
		if (s == NESA_OK)
			memcpy(t->data, data, t->nbytes);
		return s;
	}
	s = nesa_tensor_init(&src, NESA_F32, 2, shape, err);
	if (s != NESA_OK)
		return s;
	src.name = name;
	src.data = (void *)(uintptr_t)data;
	/* nesa_quantize_tensor fits dtype to the rows and refuses NaN and overflow. */
	return nesa_quantize_tensor(&src, dtype, &j->d->ts, NULL, err);
}

/* The tensor NAME + suffix of d, or NULL. */
static struct nesa_tensor *
stored(struct job *j, const struct weight *w, const char *suffix)
{
	char name[300];

	snprintf(name, sizeof name, "%s%s", w->t->name, suffix);
	return nesa_tset_find(&j->d->ts, name);
}

/* Decoded f32 copy of a stored tensor; NULL when out of memory. */
static float *
decode(const struct nesa_tensor *t)
{
	float *x = nesa_malloc((size_t)nesa_tensor_nelems(t) * sizeof *x + 1);

	if (x != NULL)
		nesa_tensor_to_f32(t, x);
	return x;
}

/* ASVD column scales (mean |x_j|)^alpha, floored so no column is dropped outright. */
static double *
asvd_scales(const struct nesa_calib_stat *cs, double alpha)
{
	double *sc = nesa_malloc((size_t)cs->n * sizeof *sc), mx = 0;
	int64_t k;

	if (sc == NULL)
		return NULL;
	for (k = 0; k < cs->n; k++) {
		sc[k] = cs->abssum[k] / (double)(cs->rows > 0 ? cs->rows : 1);
		mx = sc[k] > mx ? sc[k] : mx;
	}
	for (k = 0; k < cs->n; k++)
		sc[k] = pow(sc[k] > 1e-4 * mx ? sc[k] : (mx > 0 ? 1e-4 * mx : 1.0), alpha);
	return sc;
}

/*
 * ||W||^2 in the scale's space: plain, W S for ASVD, W X^T (tr W G W^T)
 * for whitening, so an error rule means the same for lorc as for svd.
 */
static double
scaled_energy(const float *w, int64_t m, int64_t n, enum nesa_decompose_scale scale,
              const double *cs, const double *gram)
{
	double e = 0;
	int64_t o, a, b;

	for (o = 0; o < m; o++) {
		const float *wr = w + o * n;

		for (a = 0; a < n; a++) {
			if (scale == NESA_SCALE_NONE)
				e += (double)wr[a] * wr[a];
			else if (scale == NESA_SCALE_ASVD)
				e += (double)wr[a] * wr[a] * cs[a] * cs[a];
			else
				for (b = 0; b <= a; b++) /* the lower triangle, off-diagonal terms twice */
					e += (a == b ? 1.0 : 2.0) * gram[a * n + b] * wr[a] * wr[b];
		}
	}
	return e;
}

/* Storage bits of one element of a row of row_len in dtype, once fitted to it. */
static double
elem_bits(int dtype, int64_t row_len)
{
	const struct nesa_dtype_traits *tr = nesa_dtype_traits(nesa_quant_fit(dtype, row_len));

	return 8.0 * tr->block_bytes / tr->block_size;
}

/*
 * Bits per factor element for the bits rule, before the rank is known:
 * B's rows (n long) in the factor type as fitted, A's rows (r long) as if
 * r fitted no block (the format's fallback, usually f16), weighted by the
 * m + n elements one rank adds.  An upper bound, so the rule never
 * overspends.
 */
static double
factor_bits(int dtype, int64_t m, int64_t n)
{
	return ((double)m * elem_bits(dtype, 1) + (double)n * elem_bits(dtype, n)) / (double)(m + n);
}

/* The json op objects to rewrite: every plain linear op using w. */
static json_t *
json_op(struct job *j, int b, int i)
{
	return json_array_get(json_object_get(json_array_get(j->doc_blocks, (size_t)(b - j->doc_first)), "ops"),
	                      (size_t)i);
}

/*
 * Rewrites every plain linear op using w: kind becomes op (NULL: stays),
 * keys[i] = NAME + sufs[i] (a NULL suffix removes the key), threshold when > 0.
 */
static enum nesa_status
rewrite(struct job *j, const struct weight *w, const char *op, const char *const *keys,
        const char *const *sufs, int n, double threshold, struct nesa_err *err)
{
	int b, i, k;

	for (b = 0; b < j->g->count; b++)
		for (i = 0; i < j->g->blocks[b].n_ops; i++) {
			const struct nesa_op *o = &j->g->blocks[b].ops[i];
			json_t *jo;
			int bad = 0;

			if (o->kind != NESA_OP_LINEAR || o->w[0] != w->t || o->w[2] != NULL)
				continue;
			jo = json_op(j, j->g->blocks[b].index, i);
			if (op != NULL)
				bad |= json_object_set_new(jo, "op", json_string(op));
			for (k = 0; k < n; k++) {
				char name[300];

				if (sufs[k] == NULL) {
					json_object_del(jo, keys[k]);
					continue;
				}
				snprintf(name, sizeof name, "%s%s", w->t->name, sufs[k]);
				bad |= json_object_set_new(jo, keys[k], json_string(name));
			}
			if (threshold > 0)
				bad |= json_object_set_new(jo, "threshold", json_real(threshold));
			if (bad)
				return nesa_err_set(err, NESA_ENOMEM, "out of memory");
		}
	return NESA_OK;
}

/* int8 with outlier columns from calibration (and/or at run time). */
static enum nesa_status
do_int8(struct job *j, struct weight *w, const float *wf, const struct nesa_calib_stat *cs,
        double thr, struct nesa_err *err)
{
	static const char *const keys[] = {"weight", "scale", "outlier_weight", "outlier_index"};
	static const char *const sufs[] = {".i8", ".scale", ".ow", ".oi"};
	const int64_t m = w->t->shape[0], n = w->t->shape[1];
	struct nesa_int8 q;
	struct nesa_tensor *t;
	int64_t shape[2];
	enum nesa_status s;

	s = nesa_int8_compute(wf, m, n, j->calib_outliers && cs != NULL ? cs->absmax : NULL, thr, &q, err);
	if (s != NESA_OK)
		return s;
	shape[0] = m, shape[1] = n;
	if ((s = new_tensor(j, w, ".i8", NESA_I8, 2, shape, &t, err)) != NESA_OK)
		goto done;
	memcpy(t->data, q.w8, (size_t)(m * n));
	if ((s = new_tensor(j, w, ".scale", NESA_F32, 1, shape, &t, err)) != NESA_OK)
		goto done;
	memcpy(t->data, q.scale, (size_t)m * sizeof(float));
	if (q.k > 0) {
		shape[1] = q.k;
		if ((s = new_tensor(j, w, ".ow", NESA_F32, 2, shape, &t, err)) != NESA_OK)
			goto done;
		memcpy(t->data, q.ow, (size_t)(m * q.k) * sizeof(float));
		if ((s = new_tensor(j, w, ".oi", NESA_I32, 1, &shape[1], &t, err)) != NESA_OK)
			goto done;
		memcpy(t->data, q.oidx, (size_t)q.k * sizeof(int32_t));
	}
	w->st->outliers = q.k;
	s = rewrite(j, w, "linear_int8", keys, sufs, q.k > 0 ? 4 : 2, j->runtime ? thr : 0, err);
done:
	nesa_int8_release(&q);
	return s;
}

/* y (m, n) = x after a round trip through dtype: what storing x in it keeps. */
static enum nesa_status
roundtrip(int dtype, const float *x, int64_t m, int64_t n, float *y, struct nesa_err *err)
{
	const struct nesa_dtype_traits *tr = nesa_dtype_traits(dtype);
	size_t bytes;
	void *buf;

	if (!nesa_dtype_bytes(dtype, m * n, &bytes) || (buf = nesa_malloc(bytes)) == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	tr->from_f32(x, buf, m * n);
	tr->to_f32(buf, y, m * n);
	nesa_free(buf);
	return NESA_OK;
}

/*
 * lorc: Q and the factors of W - Q.  With iters > 1 the two alternate, as
 * LoftQ does: Q_k = Q(W - A_{k-1} B_{k-1}), A_k B_k = the truncated SVD of
 * W - Q_k, so Q no longer has to absorb what the factors will hold.  The
 * last Q is the stored tensor, decoded, so the factors compensate exactly
 * what is stored.
 */
static enum nesa_status
lorc_fit(struct job *j, struct weight *w, const float *wf, const struct nesa_lowrank_opts *lo,
         struct nesa_lowrank *lr, struct nesa_err *err)
{
	const int64_t m = w->t->shape[0], n = w->t->shape[1];
	const int iters = w->spec.iters > 0 ? w->spec.iters : 1;
	const int fit = nesa_quant_fit(w->spec.qtype, n);
	float *target = NULL, *qf = NULL;
	enum nesa_status s = NESA_OK;
	int64_t i;
	int it;

	target = nesa_malloc((size_t)(m * n) * sizeof *target);
	qf = nesa_malloc((size_t)(m * n) * sizeof *qf);
	if (target == NULL || qf == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	memcpy(target, wf, (size_t)(m * n) * sizeof *target);
	for (it = 0; it < iters && s == NESA_OK; it++) {
		if (it == iters - 1) {
			float *dq;

			if ((s = store(j, w, ".q", target, m, n, w->spec.qtype, err)) != NESA_OK)
				break;
			if ((dq = decode(stored(j, w, ".q"))) == NULL) {
				s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
				break;
			}
			memcpy(qf, dq, (size_t)(m * n) * sizeof *qf);
			nesa_free(dq);
		} else if ((s = roundtrip(fit, target, m, n, qf, err)) != NESA_OK) {
			break;
		}
		/* qf becomes E = W - Q, the matrix the factors approximate. */
		for (i = 0; i < m * n; i++)
			qf[i] = wf[i] - qf[i];
		nesa_lowrank_release(lr);
		s = nesa_lowrank_compute(qf, m, n, lo, w->t->name, lr, err);
		if (s != NESA_OK || it == iters - 1 || lr->r == 0)
			continue;
		/* The next Q quantizes W - A B. */
		memcpy(target, wf, (size_t)(m * n) * sizeof *target);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)lr->r, -1.0f,
		            lr->a, (int)lr->r, lr->b, (int)n, 1.0f, target, (int)n);
	}
	if (s == NESA_OK && fit != w->spec.qtype) {
		size_t len = strlen(w->st->note);

		snprintf(w->st->note + len, sizeof w->st->note - len, ", %s for rows of %lld",
		         nesa_dtype_name(fit), (long long)n);
	}
done:
	nesa_free(target);
	nesa_free(qf);
	return s;
}

/* svd (plain or activation-aware) and lorc: the factors, and Q(W) for lorc. */
static enum nesa_status
do_lowrank(struct job *j, struct weight *w, const float *wf, const struct nesa_calib_stat *cs,
           struct nesa_err *err)
{
	static const char *const keys[] = {"weight", "lowrank_a", "lowrank_b"};
	const char *sufs[] = {NULL, ".a", ".b"};
	const int64_t m = w->t->shape[0], n = w->t->shape[1];
	const bool lorc = w->spec.method == NESA_DECOMPOSE_LORC;
	struct nesa_lowrank_opts lo = {0};
	struct nesa_lowrank lr = {0};
	double *sc = NULL;
	enum nesa_status s = NESA_OK;

	lo.scale = w->spec.scale;
	lo.rank = w->spec.rank;
	if (lo.rank.rule == NESA_RANK_UNSET)
		lo.rank = j->o->rank.rule != NESA_RANK_UNSET ? j->o->rank : nesa_decompose_default_rank(w->spec.method);
	lo.factor_bits = factor_bits(j->o->factor_dtype, m, n);
	lo.min_rank = lorc ? 0 : 1;
	if (lo.scale != NESA_SCALE_NONE && (cs == NULL || cs->rows == 0))
		return nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s' with %s: it needs calibration data (--calib)",
		                    w->t->name, w->st->method);
	if (lo.scale == NESA_SCALE_ASVD && (sc = asvd_scales(cs, j->o->alpha)) == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	lo.col_scale = sc;
	lo.gram = lo.scale == NESA_SCALE_WHITEN ? cs->gram : NULL;
	if (!lorc) {
		s = nesa_lowrank_compute(wf, m, n, &lo, w->t->name, &lr, err);
	} else {
		sufs[0] = ".q";
		lo.ref2 = scaled_energy(wf, m, n, lo.scale, sc, lo.gram);
		s = lorc_fit(j, w, wf, &lo, &lr, err);
	}
	if (s != NESA_OK)
		goto done;
	w->st->rank = lr.r;
	if (lr.r > 0 && ((s = store(j, w, ".a", lr.a, m, lr.r, j->o->factor_dtype, err)) != NESA_OK ||
	                 (s = store(j, w, ".b", lr.b, lr.r, n, j->o->factor_dtype, err)) != NESA_OK))
		goto done;
	s = rewrite(j, w, NULL, keys, sufs, lr.r > 0 ? 3 : 1, 0, err);
done:
	nesa_lowrank_release(&lr);
	nesa_free(sc);
	return s;
}

/*
 * The error figures, from what was stored: W' rebuilt from the new
 * tensors against W, and the new op's kernel against W on the sampled
 * calibration rows (for int8 this includes the rounding of activations).
 */
static enum nesa_status
measure(struct job *j, struct weight *w, const float *wf, const struct nesa_calib_stat *cs,
        double thr, struct nesa_err *err)
{
	const int64_t m = w->t->shape[0], n = w->t->shape[1];
	const struct nesa_tensor *q = NULL, *a = NULL, *b = NULL;
	const int64_t ns = cs != NULL ? cs->n_sample : 0;
	float *wp = NULL, *af = NULL, *bf = NULL, *y = NULL, *yp = NULL;
	void *scratch = NULL;
	int64_t o, c, r = w->st->rank > 0 ? w->st->rank : 0;
	enum nesa_status s = NESA_OK;

	wp = nesa_malloc((size_t)(m * n) * sizeof *wp);
	if (wp == NULL)
		goto oom;
	if (w->spec.method == NESA_DECOMPOSE_INT8) {
		const struct nesa_tensor *i8 = stored(j, w, ".i8"), *sc = stored(j, w, ".scale");
		const struct nesa_tensor *ow = stored(j, w, ".ow"), *oi = stored(j, w, ".oi");
		const int8_t *q8 = i8->data;
		const float *scale = sc->data;

		for (o = 0; o < m; o++)
			for (c = 0; c < n; c++)
				wp[o * n + c] = (float)q8[o * n + c] * scale[o];
		for (c = 0; oi != NULL && c < oi->shape[0]; c++)
			for (o = 0; o < m; o++)
				wp[o * n + ((const int32_t *)oi->data)[c]] = ((const float *)ow->data)[o * oi->shape[0] + c];
		if (ns > 0) {
			scratch = nesa_aligned_alloc(nesa_linear_int8_scratch(ns, n));
			y = nesa_malloc((size_t)(ns * m) * sizeof *y);
			yp = nesa_malloc((size_t)(ns * m) * sizeof *yp);
			if (scratch == NULL || y == NULL || yp == NULL)
				goto oom;
			nesa_linear_int8(cs->sample, ns, n, q8, scale, m, ow != NULL ? ow->data : NULL,
			                 oi != NULL ? oi->data : NULL, oi != NULL ? oi->shape[0] : 0,
			                 j->runtime ? (float)thr : 0.0f, NULL, yp, scratch);
		}
	} else {
		if (w->spec.method == NESA_DECOMPOSE_LORC) {
			float *qf;

			q = stored(j, w, ".q");
			if ((qf = decode(q)) == NULL)
				goto oom;
			memcpy(wp, qf, (size_t)(m * n) * sizeof *wp);
			nesa_free(qf);
		} else {
			memset(wp, 0, (size_t)(m * n) * sizeof *wp);
		}
		if (r > 0) {
			a = stored(j, w, ".a");
			b = stored(j, w, ".b");
			if ((af = decode(a)) == NULL || (bf = decode(b)) == NULL)
				goto oom;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, 1.0f, af,
			            (int)r, bf, (int)n, 1.0f, wp, (int)n);
		}
		if (ns > 0) {
			scratch = nesa_aligned_alloc(nesa_linear_lowrank_scratch(ns, n, m, r) * sizeof(float));
			y = nesa_malloc((size_t)(ns * m) * sizeof *y);
			yp = nesa_malloc((size_t)(ns * m) * sizeof *yp);
			if (scratch == NULL || y == NULL || yp == NULL)
				goto oom;
			if (r > 0)
				nesa_linear_lowrank(cs->sample, ns, n, q, a, b, NULL, yp, scratch);
			else
				nesa_linear(cs->sample, ns, n, q, NULL, yp, scratch);
		}
	}
	w->st->frob = rel_err(wf, wp, m * n);
	if (ns > 0) {
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ns, (int)m, (int)n, 1.0f, cs->sample,
		            (int)n, wf, (int)n, 0.0f, y, (int)m);
		w->st->out_err = rel_err(y, yp, ns * m);
	}
	goto done;
oom:
	s = nesa_err_set(err, NESA_ENOMEM, "out of memory measuring tensor '%s'", w->t->name);
done:
	nesa_free(wp);
	nesa_free(af);
	nesa_free(bf);
	nesa_free(y);
	nesa_free(yp);
	nesa_aligned_free(scratch);
	return s;
}

/*
 * Decomposes one selected weight: new tensors, rewritten ops, figures.
 * The weight is decoded to f32 whatever it is stored in, so a quantized
 * model can be decomposed too (its rounding then counts as signal), and a
 * NaN or infinity is refused here with its position rather than surfacing
 * as a LAPACK argument error.
 */
static enum nesa_status
decompose_one(struct job *j, struct weight *w, struct nesa_err *err)
{
	const int64_t m = w->t->shape[0], n = w->t->shape[1];
	const struct nesa_calib_stat *cs = nesa_calib_find(j->calib, w->block, w->value);
	const double thr = w->spec.threshold >= 0 ? w->spec.threshold : j->o->threshold;
	float *wf;
	size_t bytes;
	int64_t i;
	enum nesa_status s;

	/* BLAS and LAPACK take int dimensions; the loader checked m n against the data. */
	if (m > INT_MAX || n > INT_MAX || !nesa_mul_size((size_t)m, (size_t)n, &bytes) ||
	    !nesa_mul_size(bytes, sizeof *wf, &bytes))
		return nesa_err_set(err, NESA_EUNSUPPORTED, "cannot decompose tensor '%s': %lld x %lld is too large",
		                    w->t->name, (long long)m, (long long)n);
	wf = nesa_malloc(bytes);
	if (wf == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory decomposing tensor '%s'", w->t->name);
	nesa_tensor_to_f32(w->t, wf);
	for (i = 0; i < m * n; i++)
		if (!isfinite(wf[i])) {
			s = nesa_err_set(err, NESA_EFORMAT, "cannot decompose tensor '%s': element [%lld, %lld] is %s",
			                 w->t->name, (long long)(i / n), (long long)(i % n),
			                 isnan(wf[i]) ? "NaN" : "infinite");
			goto done;
		}
	if (w->spec.method == NESA_DECOMPOSE_INT8)
		s = do_int8(j, w, wf, cs, thr, err);
	else
		s = do_lowrank(j, w, wf, cs, err);
	if (s == NESA_OK)
		s = measure(j, w, wf, cs, thr, err);
done:
	nesa_free(wf);
	return s;
}

/* Adds every weight the new graph references that is not new, sharing m's memory. */
static enum nesa_status
add_kept(struct job *j, struct nesa_err *err)
{
	json_t *names = NULL, *e;
	size_t i;
	enum nesa_status s;

	s = nesa_graph_doc_weights(j->d->graph, j->m->first, j->m->count, &names, err);
	json_array_foreach(names, i, e) {
		const struct nesa_tensor *t;

		if (s != NESA_OK)
			break;
		if (nesa_tset_find(&j->d->ts, json_string_value(e)) != NULL)
			continue;
		t = nesa_tset_find(j->m->weights, json_string_value(e));
		if (t == NULL)
			s = nesa_err_set(err, NESA_EINTERNAL, "weight '%s' vanished", json_string_value(e));
		else
			s = nesa_tset_add(&j->d->ts, t->name, t->dtype, t->ndim, t->shape, t->data, NULL, err);
	}
	json_decref(names);
	return s;
}

static const char *
rank_str(const struct nesa_rank *r, char *buf, size_t size)
{
	static const char *const keys[] = {"", "rank", "ratio", "energy", "error", "bits"};

	if (r->rule == NESA_RANK_UNSET)
		snprintf(buf, size, "default");
	else
		snprintf(buf, size, "%s=%g", keys[r->rule], r->value);
	return buf;
}

/*
 * meta.decomposition: the options and, per tensor, what it became, so an
 * archive says how it was made without its report.
 */
static json_t *
record(const struct nesa_decompose_opts *o, const struct nesa_decompose_report *rep)
{
	static const char *const modes[] = {"auto", "calib", "runtime", "both", "none"};
	json_t *rec, *rules = json_array(), *tensors = json_object();
	char buf[64], rb[64];
	size_t i;

	for (i = 0; rules != NULL && i < o->n_rules; i++) {
		char line[512];

		snprintf(line, sizeof line, "%s=%s", o->rules[i].pattern,
		         nesa_decompose_spec_name(&o->rules[i].spec, buf, sizeof buf));
		json_array_append_new(rules, json_string(line));
	}
	for (i = 0; tensors != NULL && i < rep->n; i++) {
		const struct nesa_decompose_stat *st = &rep->items[i];

		if (strcmp(st->method, "keep") == 0)
			continue;
		json_object_set_new(tensors, st->name,
		                    json_pack("{s:s, s:o, s:o}", "method", st->method, "rank",
		                              st->rank >= 0 ? json_integer(st->rank) : json_null(), "outliers",
		                              st->outliers >= 0 ? json_integer(st->outliers) : json_null()));
	}
	rec = json_pack("{s:s, s:o, s:s, s:f, s:s, s:s, s:I, s:o}", "default",
	                nesa_decompose_spec_name(&o->def, buf, sizeof buf), "rules", rules, "rank",
	                rank_str(&o->rank, rb, sizeof rb), "threshold", o->threshold, "outliers",
	                modes[o->outliers], "factor_type", nesa_dtype_name(o->factor_dtype),
	                "calib_rows", (json_int_t)rep->calib_rows, "tensors", tensors);
	return rec;
}

/*
 * Registers what calibration must collect: every selected weight's input,
 * with its Gram matrix only where whitening needs it (n^2 doubles each).
 */
static enum nesa_status
want_stats(struct job *j, const struct weight *ws, size_t n, struct nesa_err *err)
{
	size_t i;
	enum nesa_status s = NESA_OK;

	for (i = 0; i < n && s == NESA_OK; i++)
		if (ws[i].spec.method != NESA_DECOMPOSE_KEEP)
			s = nesa_calib_want(j->calib, ws[i].block, ws[i].value, ws[i].t->shape[1],
			                    ws[i].spec.scale == NESA_SCALE_WHITEN, err);
	return s;
}

/*
 * In order: compile the graph (to find each weight's uses and input),
 * select, calibrate, decompose weight by weight into d, add the weights
 * kept, compile the new graph against d's weights as a last check, then
 * total the bytes from what d holds.  Progress counts m n work units per
 * int8 matrix and m n min(m, n) per factorization, roughly their cost.
 */
enum nesa_status
nesa_decompose_model(struct nesa_model *m, const struct nesa_decompose_opts *o, struct nesa_decomposed *d,
                     struct nesa_decompose_report *rep, struct nesa_err *err)
{
	struct nesa_decompose_report local = {0};
	struct nesa_progress prog;
	struct nesa_graph *g = NULL, *check = NULL;
	struct weight *ws = NULL;
	struct job j;
	json_t *names = NULL, *e, *fb;
	double t0 = nesa_now();
	uint64_t work = 0, done = 0;
	size_t i, nw = 0;
	enum nesa_status s;

	memset(d, 0, sizeof *d);
	nesa_tset_init(&d->ts);
	memset(&j, 0, sizeof j);
	j.m = m;
	j.o = o;
	j.d = d;
	j.runtime = o->outliers == NESA_OUTLIERS_RUNTIME || o->outliers == NESA_OUTLIERS_BOTH ||
	            o->outliers == NESA_OUTLIERS_AUTO;
	j.calib_outliers = o->outliers == NESA_OUTLIERS_CALIB || o->outliers == NESA_OUTLIERS_BOTH ||
	                   (o->outliers == NESA_OUTLIERS_AUTO && o->calib != NULL);
	s = nesa_graph_compile(m->graph, m->weights, m->first, m->count, &g, err);
	if (s == NESA_OK)
		s = nesa_graph_doc_weights(m->graph, m->first, m->count, &names, err);
	if (s != NESA_OK)
		goto done;
	j.g = g;
	ws = nesa_calloc(json_array_size(names) + 1, sizeof *ws);
	local.items = nesa_calloc(json_array_size(names) + 1, sizeof *local.items);
	if (ws == NULL || local.items == NULL)
		goto oom;
	/* Selection first, so a method that lacks its data fails before any work. */
	json_array_foreach(names, i, e) {
		struct weight *w = &ws[nw];
		struct nesa_decompose_stat *st = &local.items[nw];

		w->t = nesa_tset_find(m->weights, json_string_value(e));
		if (w->t == NULL) /* the graph compiled, so this cannot happen */
			continue;
		w->st = st;
		snprintf(st->name, sizeof st->name, "%s", w->t->name);
		st->ndim = w->t->ndim;
		memcpy(st->shape, w->t->shape, sizeof st->shape);
		st->from = w->t->dtype;
		st->bytes_before = st->bytes_after = w->t->nbytes;
		st->rank = st->outliers = -1;
		st->out_err = NAN;
		weight_uses(g, w);
		choose(o, w);
		nesa_decompose_spec_name(&w->spec, st->method, sizeof st->method);
		if (w->spec.method != NESA_DECOMPOSE_KEEP) {
			const int64_t mm = w->t->shape[0], nn = w->t->shape[1];

			if (w->spec.method == NESA_DECOMPOSE_INT8 && o->outliers == NESA_OUTLIERS_CALIB &&
			    o->calib == NULL) {
				s = nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s': outliers from calibration need calibration data (--calib)",
				                 w->t->name);
				goto done;
			}
			if (w->spec.scale != NESA_SCALE_NONE && o->calib == NULL) {
				s = nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s' with %s: it needs calibration data (--calib)",
				                 w->t->name, st->method);
				goto done;
			}
			work += (uint64_t)(mm * nn) * (uint64_t)(w->spec.method == NESA_DECOMPOSE_INT8 ? 1 : (mm < nn ? mm : nn));
		}
		nw++;
	}
	if (o->calib != NULL) {
		s = nesa_calib_new(o->calib, &j.calib, err);
		if (s == NESA_OK)
			s = want_stats(&j, ws, nw, err);
		if (s == NESA_OK)
			s = nesa_calib_run(j.calib, m, g, err);
		if (s != NESA_OK)
			goto done;
		local.calib_rows = nesa_calib_rows(j.calib);
	}
	d->graph = json_deep_copy(m->graph);
	if (d->graph == NULL)
		goto oom;
	j.doc_blocks = json_object_get(d->graph, "blocks");
	fb = json_object_get(d->graph, "first_block");
	j.doc_first = json_is_integer(fb) ? (int)json_integer_value(fb) : 0;
	nesa_progress_begin(&prog, "decomposing", work);
	for (i = 0; i < nw && s == NESA_OK; i++) {
		struct weight *w = &ws[i];

		if (w->spec.method == NESA_DECOMPOSE_KEEP)
			continue;
		nesa_log(NESA_LOG_DEBUG, "decomposing '%s' with %s", w->t->name, w->st->method);
		s = decompose_one(&j, w, err);
		if (s == NESA_OK && w->spec.method == NESA_DECOMPOSE_INT8) {
			local.outlier_cols += w->st->outliers;
			local.int8_cols += w->t->shape[1];
		}
		done += (uint64_t)(w->t->shape[0] * w->t->shape[1]) *
		        (uint64_t)(w->spec.method == NESA_DECOMPOSE_INT8 ? 1 : (w->t->shape[0] < w->t->shape[1] ? w->t->shape[0] : w->t->shape[1]));
		nesa_progress_update(&prog, done);
	}
	nesa_progress_end(&prog);
	if (s == NESA_OK)
		s = add_kept(&j, err);
	/* The new graph must compile against the new weights: a last check of everything above. */
	if (s == NESA_OK)
		s = nesa_graph_compile(d->graph, &d->ts, m->first, m->count, &check, err);
	if (s != NESA_OK)
		goto done;
	for (i = 0; i < d->ts.n; i++)
		local.bytes_after += d->ts.items[i].nbytes;
	for (i = 0; i < nw; i++) {
		struct weight *w = &ws[i];
		const char *const sufs[] = {".i8", ".scale", ".ow", ".oi", ".q", ".a", ".b"};
		size_t k;

		local.bytes_before += w->t->nbytes;
		if (w->spec.method == NESA_DECOMPOSE_KEEP)
			continue;
		/* The new tensors, and the original where another op still reads it. */
		w->st->bytes_after = nesa_tset_find(&d->ts, w->t->name) != NULL ? w->t->nbytes : 0;
		for (k = 0; k < sizeof sufs / sizeof sufs[0]; k++) {
			const struct nesa_tensor *t = stored(&j, w, sufs[k]);

			w->st->bytes_after += t != NULL ? t->nbytes : 0;
		}
	}
	local.n = nw;
	local.seconds = nesa_now() - t0;
	d->record = record(o, &local);
	if (d->record == NULL)
		goto oom;
	goto done;
oom:
	s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
done:
	nesa_graph_free(check);
	nesa_graph_free(g);
	nesa_calib_free(j.calib);
	json_decref(names);
	nesa_free(ws);
	if (s != NESA_OK)
		nesa_decomposed_release(d);
	if (s == NESA_OK && rep != NULL)
		*rep = local;
	else
		nesa_decompose_report_release(&local);
	return s;
}

enum nesa_status
nesa_decompose_write(struct nesa_model *m, struct nesa_decomposed *d, const char *path,
                     const struct nesa_shard_write_opts *opts, struct nesa_err *err)
{
	struct nesa_tset *orig_w = m->weights;
	json_t *orig_g = m->graph;
	enum nesa_status s;

	if (json_object_set(m->meta, "decomposition", d->record) != 0)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	/* The writer takes the graph and looks every weight up by name. */
	m->weights = &d->ts;
	m->graph = d->graph;
	s = nesa_model_write_shard(m, m->first, m->count, path, opts, err);
	m->weights = orig_w;
	m->graph = orig_g;
	return s;
}

void
nesa_decomposed_release(struct nesa_decomposed *d)
{
	if (d == NULL)
		return;
	json_decref(d->graph);
	json_decref(d->record);
	nesa_tset_release(&d->ts);
	memset(d, 0, sizeof *d);
}

void
nesa_decompose_report_release(struct nesa_decompose_report *rep)
{
	if (rep == NULL)
		return;
	nesa_free(rep->items);
	memset(rep, 0, sizeof *rep);
}

static json_t *
num_or_null(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

json_t *
nesa_decompose_report_json(const struct nesa_decompose_report *rep)
{
	json_t *arr = json_array();
	size_t i;
	int k;

	if (arr == NULL)
		return NULL;
	for (i = 0; i < rep->n; i++) {
		const struct nesa_decompose_stat *st = &rep->items[i];
		json_t *shape = json_array(), *o;

		for (k = 0; k < st->ndim && shape != NULL; k++)
			json_array_append_new(shape, json_integer(st->shape[k]));
		o = json_pack("{s:s, s:o, s:s, s:s, s:s, s:I, s:I, s:o, s:o, s:o, s:o}", "name", st->name,
		              "shape", shape, "from", nesa_dtype_name(st->from), "method", st->method, "note",
		              st->note, "bytes_before", (json_int_t)st->bytes_before, "bytes_after",
		              (json_int_t)st->bytes_after, "rank",
		              st->rank >= 0 ? json_integer(st->rank) : json_null(), "outliers",
		              st->outliers >= 0 ? json_integer(st->outliers) : json_null(), "frob_err",
		              json_real(st->frob), "out_err", num_or_null(st->out_err));
		if (o == NULL || json_array_append_new(arr, o) != 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return json_pack("{s:o, s:I, s:I, s:I, s:I, s:o, s:I, s:f}", "tensors", arr, "bytes_before",
	                 (json_int_t)rep->bytes_before, "bytes_after", (json_int_t)rep->bytes_after,
	                 "outlier_cols", (json_int_t)rep->outlier_cols, "int8_cols",
	                 (json_int_t)rep->int8_cols, "outlier_share",
	                 rep->int8_cols > 0 ? json_real((double)rep->outlier_cols / (double)rep->int8_cols)
	                                    : json_null(),
	                 "calib_rows", (json_int_t)rep->calib_rows, "seconds", rep->seconds);
}

char *
nesa_decompose_report_text(const struct nesa_decompose_report *rep)
{
	char *mem = NULL, *copy = NULL, shape[64], form[32], oe[16];
	size_t len = 0, i;
	int w = 6, ws = 13;
	FILE *f = open_memstream(&mem, &len);

	if (f == NULL)
		return NULL;
	/* Columns as wide as their longest entry, so 4-D shapes stay aligned. */
	for (i = 0; i < rep->n; i++) {
		const struct nesa_decompose_stat *st = &rep->items[i];
		int l = (int)strlen(nesa_shape_str(st->ndim, st->shape, shape, sizeof shape));

		w = (int)strlen(st->name) > w ? (int)strlen(st->name) : w;
		ws = l > ws ? l : ws;
	}
	fprintf(f, "%-*s %-*s %-16s %12s %12s %9s %10s %10s  %s\n", w, "tensor", ws, "shape", "method",
	        "bytes", "after", "rank/k", "frob_err", "out_err", "note");
	for (i = 0; i < rep->n; i++) {
		const struct nesa_decompose_stat *st = &rep->items[i];

		if (st->rank >= 0)
			snprintf(form, sizeof form, "r=%lld", (long long)st->rank);
		else if (st->outliers >= 0)
			snprintf(form, sizeof form, "k=%lld", (long long)st->outliers);
		else
			snprintf(form, sizeof form, "-");
		if (isfinite(st->out_err))
			snprintf(oe, sizeof oe, "%.3g", st->out_err);
		else
			snprintf(oe, sizeof oe, "-");
		fprintf(f, "%-*s %-*s %-16s %12llu %12llu %9s %10.3g %10s  %s\n", w, st->name, ws,
		        nesa_shape_str(st->ndim, st->shape, shape, sizeof shape), st->method,
		        (unsigned long long)st->bytes_before, (unsigned long long)st->bytes_after, form,
		        st->frob, oe, st->note);
	}
	fprintf(f, "%-*s %-*s %-16s %12llu %12llu %9s %10s %10s  %.3fx smaller\n", w, "total", ws, "", "",
	        (unsigned long long)rep->bytes_before, (unsigned long long)rep->bytes_after, "", "", "",
	        rep->bytes_after > 0 ? (double)rep->bytes_before / (double)rep->bytes_after : 0.0);
	if (rep->int8_cols > 0)
		fprintf(f, "int8 outlier columns: %lld of %lld (%.3f%%)\n", (long long)rep->outlier_cols,
		        (long long)rep->int8_cols, 100.0 * (double)rep->outlier_cols / (double)rep->int8_cols);
	if (rep->calib_rows > 0)
		fprintf(f, "calibration rows: %lld\n", (long long)rep->calib_rows);
	fprintf(f, "time: %.2f s\n", rep->seconds);
	if (fclose(f) != 0) {
		free(mem);
		return NULL;
	}
	/* The caller frees with nesa_free, as with every libcommon string. */
	copy = nesa_malloc(len + 1);
	if (copy != NULL)
		memcpy(copy, mem, len + 1);
	free(mem);
	return copy;
}
