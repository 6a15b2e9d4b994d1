/* SPDX-License-Identifier: MIT */
/*
 * The numerics of nesa-decompose: method and rank parsing, the thin SVD
 * through LAPACKE, rank rules, activation-aware low rank (ASVD scaling and
 * SVD-LLM whitening) and LLM.int8() weights with outlier columns; see
 * decompose.h.  Everything here works on plain arrays; the model-level
 * glue is decompose-model.c.
 *
 * Factorizations run in double precision: the SVD of a float matrix in
 * float loses the small singular values a kept-energy or error rule sums,
 * and the Cholesky factor of a calibration Gram matrix is often close to
 * singular.  The factors are rounded to float (and then to their storage
 * type) at the end.
 */
#include "config.h"

#include <cblas.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "decompose.h"
#include "quant.h"
#include "quantize.h"

/* Parsing. */

/*
 * A number in [min, max] for key: the whole of val must parse, and NaN or
 * infinity never passes, so a typo is refused rather than read as 0.
 */
static enum nesa_status
parse_number(const char *key, const char *val, double min, double max, double *out,
             struct nesa_err *err)
{
	char *end;
	double d;

	d = strtod(val, &end);
	if (end == val || *end != '\0' || !isfinite(d) || d < min || d > max)
		return nesa_err_set(err, NESA_EINVAL, "invalid value '%s' for %s: expected a number in [%g, %g]",
		                    val, key, min, max);
	*out = d;
	return NESA_OK;
}

/* One "key=value" of a rank rule; NESA_ENOENT (no message) when key is not a rank key. */
static enum nesa_status
parse_rank_item(const char *key, const char *val, struct nesa_rank *rank, struct nesa_err *err)
{
	static const struct {
		const char *key;
		enum nesa_rank_rule rule;
		double min, max;
	} keys[] = {
		{"rank", NESA_RANK_FIXED, 0, 1 << 30},
		{"ratio", NESA_RANK_RATIO, 1e-9, 1e9},
		{"energy", NESA_RANK_ENERGY, 0, 1},
		{"error", NESA_RANK_ERROR, 0, 1e9},
		{"bits", NESA_RANK_BITS, 0, 1e9},
	};
	size_t i;

	for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		if (strcmp(key, keys[i].key) != 0)
			continue;
		rank->rule = keys[i].rule;
		if (rank->rule == NESA_RANK_FIXED) {
			char *end;

			rank->value = strtod(val, &end);
			if (end == val || *end != '\0' || !(rank->value >= 0 && rank->value <= keys[i].max) ||
			    rank->value != floor(rank->value))
				return nesa_err_set(err, NESA_EINVAL, "invalid value '%s' for rank: expected a whole number", val);
			return NESA_OK;
		}
		return parse_number(key, val, keys[i].min, keys[i].max, &rank->value, err);
	}
	return NESA_ENOENT;
}

enum nesa_status
nesa_decompose_parse_rank(const char *text, struct nesa_rank *rank, struct nesa_err *err)
{
	char buf[64], *eq;
	enum nesa_status s;

	if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf)
		return nesa_err_set(err, NESA_EINVAL, "invalid rank rule '%.40s...': too long", text);
	eq = strchr(buf, '=');
	if (eq == NULL)
		/* A bare N is a rank; anything else bare is no rule at all. */
		s = parse_rank_item("rank", buf, rank, err) == NESA_OK ? NESA_OK : NESA_ENOENT;
	else {
		*eq = '\0';
		s = parse_rank_item(buf, eq + 1, rank, err);
	}
	if (s == NESA_ENOENT)
		return nesa_err_set(err, NESA_EINVAL, "invalid rank rule '%s' (expected N, ratio=R, energy=E, error=F or bits=B)",
		                    text);
	return s;
}

/*
 * The method name comes first; every later ':' item is a rank rule, a bare
 * lorc type or a key the method takes.  Items a method does not take are
 * errors, not silently ignored: "int8:rank=4" would otherwise look like it
 * did something.
 */
enum nesa_status
nesa_decompose_parse_method(const char *text, struct nesa_decompose_spec *spec, struct nesa_err *err)
{
	static const struct {
		const char *name;
		enum nesa_decompose_method method;
		enum nesa_decompose_scale scale;
	} methods[] = {
		{"keep", NESA_DECOMPOSE_KEEP, NESA_SCALE_NONE},
		{"int8", NESA_DECOMPOSE_INT8, NESA_SCALE_NONE},
		{"svd", NESA_DECOMPOSE_SVD, NESA_SCALE_NONE},
		{"asvd", NESA_DECOMPOSE_SVD, NESA_SCALE_ASVD},
		{"whiten", NESA_DECOMPOSE_SVD, NESA_SCALE_WHITEN},
		{"lorc", NESA_DECOMPOSE_LORC, NESA_SCALE_NONE},
	};
	char buf[256], *item, *save = NULL;
	size_t i;
	int first = 1;

	if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf)
		return nesa_err_set(err, NESA_EINVAL, "invalid method '%.40s...': too long", text);
	memset(spec, 0, sizeof *spec);
	spec->qtype = NESA_Q4_0;
	spec->threshold = -1;
	for (item = strtok_r(buf, ":", &save); item != NULL; item = strtok_r(NULL, ":", &save)) {
		char *eq = strchr(item, '=');
		const char *key = item, *val = eq != NULL ? eq + 1 : NULL;
		enum nesa_status s;

		if (first) {
			for (i = 0; i < sizeof methods / sizeof methods[0]; i++)
				if (strcmp(item, methods[i].name) == 0)
					break;
			if (i == sizeof methods / sizeof methods[0])
				return nesa_err_set(err, NESA_EINVAL, "unknown method '%s' (supported: keep, int8, svd, asvd, whiten, lorc)",
				                    item);
			spec->method = methods[i].method;
			spec->scale = methods[i].scale;
			first = 0;
			continue;
		}
		if (eq == NULL) {
			/* "lorc:nf4": a bare item names lorc's format. */
			if (spec->method != NESA_DECOMPOSE_LORC)
				return nesa_err_set(err, NESA_EINVAL, "invalid item '%s' in method '%s': expected KEY=VALUE", item, text);
			key = "type";
			val = item;
		} else {
			*eq = '\0';
		}
		s = parse_rank_item(key, val, &spec->rank, err);
		if (s == NESA_OK && spec->method != NESA_DECOMPOSE_SVD && spec->method != NESA_DECOMPOSE_LORC)
			return nesa_err_set(err, NESA_EINVAL, "method '%s': only svd, asvd, whiten and lorc take a rank", text);
		if (s != NESA_ENOENT) {
			if (s != NESA_OK)
				return s;
			continue;
		}
		if (strcmp(key, "type") == 0 && spec->method == NESA_DECOMPOSE_LORC) {
			int t;

			if (nesa_quantize_parse_type(val, &t, err) != NESA_OK)
				return NESA_EINVAL;
			if (t == NESA_QUANTIZE_KEEP)
				return nesa_err_set(err, NESA_EINVAL, "method '%s': lorc needs a format, not keep", text);
			spec->qtype = t;
		} else if (strcmp(key, "scale") == 0 &&
		           (spec->method == NESA_DECOMPOSE_SVD || spec->method == NESA_DECOMPOSE_LORC)) {
			if (strcmp(val, "none") == 0)
				spec->scale = NESA_SCALE_NONE;
			else if (strcmp(val, "asvd") == 0)
				spec->scale = NESA_SCALE_ASVD;
			else if (strcmp(val, "whiten") == 0)
				spec->scale = NESA_SCALE_WHITEN;
			else
				return nesa_err_set(err, NESA_EINVAL, "invalid scale '%s' (expected none, asvd or whiten)", val);
		} else if (strcmp(key, "iters") == 0 && spec->method == NESA_DECOMPOSE_LORC) {
			double d;

			if (parse_number("iters", val, 1, 100, &d, err) != NESA_OK)
				return NESA_EINVAL;
			spec->iters = (int)d;
		} else if (strcmp(key, "threshold") == 0 && spec->method == NESA_DECOMPOSE_INT8) {
			if (parse_number("threshold", val, 0, 1e30, &spec->threshold, err) != NESA_OK)
				return NESA_EINVAL;
		} else {
			return nesa_err_set(err, NESA_EINVAL, "invalid item '%s' in method '%s'", key, text);
		}
	}
	if (first)
		return nesa_err_set(err, NESA_EINVAL, "empty method");
	return NESA_OK;
}

enum nesa_status
nesa_decompose_parse_rule(char *arg, const char **pattern, struct nesa_decompose_spec *spec,
                          struct nesa_err *err)
{
	char *eq = strchr(arg, '=');
	const char *method = arg;

	*pattern = NULL;
	/* "svd:rank=8" has its first '=' inside the method; "w*=svd" before it. */
	if (eq != NULL && memchr(arg, ':', (size_t)(eq - arg)) == NULL) {
		if (eq == arg)
			return nesa_err_set(err, NESA_EINVAL, "empty pattern in '%s'", arg);
		method = eq + 1;
		*eq = '\0';
		*pattern = arg;
	}
	return nesa_decompose_parse_method(method, spec, err);
}

const char *
nesa_decompose_spec_name(const struct nesa_decompose_spec *spec, char *buf, size_t size)
{
	static const char *const scales[] = {"", "asvd", "whiten"};

	switch (spec->method) {
	case NESA_DECOMPOSE_KEEP: snprintf(buf, size, "keep"); break;
	case NESA_DECOMPOSE_INT8: snprintf(buf, size, "int8"); break;
	case NESA_DECOMPOSE_SVD:
		snprintf(buf, size, "%s", spec->scale == NESA_SCALE_NONE ? "svd" : scales[spec->scale]);
		break;
	case NESA_DECOMPOSE_LORC:
		snprintf(buf, size, "lorc%s%s:%s", spec->scale == NESA_SCALE_NONE ? "" : "-",
		         scales[spec->scale], nesa_dtype_name(spec->qtype));
		break;
	}
	return buf;
}

/*
 * Half the parameters is where a low-rank form starts to pay for itself on
 * typical square-ish matrices; lorc's factors only compensate, so a small
 * fixed rank (8, as in the LoRC paper's range) is the better default.
 */
struct nesa_rank
nesa_decompose_default_rank(enum nesa_decompose_method method)
{
	/* Half the parameters for a pure low-rank form; a small compensation for lorc. */
	if (method == NESA_DECOMPOSE_LORC)
		return (struct nesa_rank){NESA_RANK_FIXED, 8};
	return (struct nesa_rank){NESA_RANK_RATIO, 0.5};
}

/* The SVD. */

void
nesa_svd_release(struct nesa_svd *svd)
{
	if (svd == NULL)
		return;
	nesa_free(svd->u);
	nesa_free(svd->s);
	nesa_free(svd->vt);
	memset(svd, 0, sizeof *svd);
}

/* A LAPACKE status as a nesa status, naming the routine and the tensor. */
static enum nesa_status
lapack_status(lapack_int info, const char *routine, const char *name, struct nesa_err *err)
{
	if (info == 0)
		return NESA_OK;
	if (info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR)
		return nesa_err_set(err, NESA_ENOMEM, "cannot decompose tensor '%s': %s ran out of memory", name,
		                    routine);
	if (info < 0)
		return nesa_err_set(err, NESA_ELINALG, "cannot decompose tensor '%s': %s rejected argument %d (a NaN or infinite element?)",
		                    name, routine, (int)-info);
	return nesa_err_set(err, NESA_ELINALG, "cannot decompose tensor '%s': %s did not converge (info %d)", name,
	                    routine, (int)info);
}

enum nesa_status
nesa_svd_compute(const double *a, int64_t m, int64_t n, enum nesa_svd_driver driver, const char *name,
                 struct nesa_svd *out, struct nesa_err *err)
{
	const int64_t k = m < n ? m : n;
	size_t mn, mk, kn, kb;
	double *work = NULL, *superb = NULL;
	lapack_int info = 1;
	enum nesa_status s;

	memset(out, 0, sizeof *out);
	if (m < 1 || n < 1 || m > INT_MAX || n > INT_MAX || !nesa_mul_size((size_t)m, (size_t)n, &mn) ||
	    !nesa_mul_size(mn, sizeof(double), &mn) || !nesa_mul_size((size_t)m, (size_t)k, &mk) ||
	    !nesa_mul_size(mk, sizeof(double), &mk) || !nesa_mul_size((size_t)k, (size_t)n, &kn) ||
	    !nesa_mul_size(kn, sizeof(double), &kn))
		return nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s': %lld x %lld is not a matrix LAPACKE takes",
		                    name, (long long)m, (long long)n);
	kb = (size_t)k * sizeof(double);
	out->m = m;
	out->n = n;
	out->k = k;
	work = nesa_malloc(mn);
	out->u = nesa_malloc(mk);
	out->s = nesa_malloc(kb);
	out->vt = nesa_malloc(kn);
	superb = nesa_malloc(kb);
	if (work == NULL || out->u == NULL || out->s == NULL || out->vt == NULL || superb == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory decomposing tensor '%s'", name);
		goto done;
	}
	/* Both routines destroy their input: each works on a fresh copy. */
	if (driver == NESA_SVD_AUTO) {
		memcpy(work, a, mn);
		out->routine = "LAPACKE_dgesdd";
		info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)m, (lapack_int)n, work, (lapack_int)n,
		                      out->s, out->u, (lapack_int)k, out->vt, (lapack_int)n);
	}
	/* A dgesdd that did not converge (info > 0) gets the QR iteration's second opinion. */
	if (info > 0) {
		memcpy(work, a, mn);
		out->routine = "LAPACKE_dgesvd";
		info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'S', 'S', (lapack_int)m, (lapack_int)n, work,
		                      (lapack_int)n, out->s, out->u, (lapack_int)k, out->vt, (lapack_int)n,
		                      superb);
	}
	s = lapack_status(info, out->routine, name, err);
done:
	nesa_free(work);
	nesa_free(superb);
	if (s != NESA_OK)
		nesa_svd_release(out);
	return s;
}

/*
 * Every rule is monotone in r, so each is a single pass: the size rules
 * solve r (m + n) <= budget directly, the energy and error rules walk the
 * discarded tail up from the smallest singular value.  The 1e-9 and 1e-12
 * slacks keep a budget that is met exactly (ratio 0.5 of 64 x 64 gives
 * r = 16.000...) from losing a rank to rounding.
 */
int64_t
nesa_rank_choose(const struct nesa_rank *rule, const double *s, int64_t k, int64_t m, int64_t n,
                 double ref2, double factor_bits, int64_t min_rank)
{
	double total = 0, tail, r_real;
	int64_t i, r = k;

	for (i = 0; i < k; i++)
		total += s[i] * s[i];
	if (ref2 <= 0)
		ref2 = total;
	switch (rule->rule) {
	case NESA_RANK_FIXED:
		r = (int64_t)rule->value;
		break;
	case NESA_RANK_RATIO:
	case NESA_RANK_BITS:
		/* r (m + n) factor elements against m n weights. */
		r_real = rule->value * (double)m * (double)n / (double)(m + n);
		if (rule->rule == NESA_RANK_BITS)
			r_real /= factor_bits > 0 ? factor_bits : 32.0;
		r = r_real >= (double)k ? k : (int64_t)floor(r_real + 1e-9);
		break;
	case NESA_RANK_ENERGY:
	case NESA_RANK_ERROR:
		/*
		 * Tail sums from the smallest value up, so a tiny residual is not
		 * the difference of two large numbers.
		 */
		tail = 0;
		for (r = k; r > 0; r--) {
			double t = tail + s[r - 1] * s[r - 1];

			if (rule->rule == NESA_RANK_ENERGY ? t > (1.0 - rule->value) * total * (1 + 1e-12)
			                                   : t > rule->value * rule->value * ref2 * (1 + 1e-12))
				break;
			tail = t;
		}
		break;
	case NESA_RANK_UNSET:
		break;
	}
	if (r > k)
		r = k;
	if (r < min_rank)
		r = min_rank;
	return r;
}

/* Low rank. */

void
nesa_lowrank_release(struct nesa_lowrank *lr)
{
	if (lr == NULL)
		return;
	nesa_free(lr->a);
	nesa_free(lr->b);
	memset(lr, 0, sizeof *lr);
}

/*
 * The lower Cholesky factor l (n, n) of gram + ridge I, the ridge starting
 * at 1e-6 of the mean diagonal and growing until the factorization
 * succeeds: input features that never fired in calibration leave the Gram
 * matrix singular, and a ridge that small changes no direction that
 * matters.
 */
static enum nesa_status
cholesky(const double *gram, int64_t n, const char *name, double *l, double *ridge,
         struct nesa_err *err)
{
	double mean = 0, lambda;
	int64_t i, j;
	int tries;

	for (i = 0; i < n; i++)
		mean += gram[i * n + i];
	mean /= (double)n;
	lambda = mean > 0 && isfinite(mean) ? 1e-6 * mean : 1.0;
	for (tries = 0; tries < 12; tries++, lambda *= 100) {
		lapack_int info;

		for (i = 0; i < n; i++)
			for (j = 0; j < n; j++)
				l[i * n + j] = j <= i ? gram[i * n + j] + (i == j ? lambda : 0.0) : 0.0;
		info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)n, l, (lapack_int)n);
		if (info == 0) {
			*ridge = lambda;
			return NESA_OK;
		}
		if (info < 0)
			return lapack_status(info, "LAPACKE_dpotrf", name, err);
	}
	return nesa_err_set(err, NESA_ELINALG, "cannot decompose tensor '%s': its calibration Gram matrix is not positive definite even with a ridge",
	                    name);
}

/* The scaled matrix (m, n) whose truncated SVD is optimal for o's scale: W, W S or W L. */
static enum nesa_status
scaled_matrix(const float *w, int64_t m, int64_t n, const struct nesa_lowrank_opts *o, const char *name,
              double *mat, double *l, double *ridge, struct nesa_err *err)
{
	size_t i, mn = (size_t)m * (size_t)n;
	double *wd;
	enum nesa_status s;

	for (i = 0; i < mn; i++)
		mat[i] = (double)w[i] * (o->scale == NESA_SCALE_ASVD ? o->col_scale[i % (size_t)n] : 1.0);
	if (o->scale != NESA_SCALE_WHITEN)
		return NESA_OK;
	s = cholesky(o->gram, n, name, l, ridge, err);
	if (s != NESA_OK)
		return s;
	/* mat = W L, in place through a copy of W. */
	wd = nesa_malloc(mn * sizeof *wd);
	if (wd == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory decomposing tensor '%s'", name);
	memcpy(wd, mat, mn * sizeof *wd);
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)n, 1.0, wd, (int)n, l,
	            (int)n, 0.0, mat, (int)n);
	nesa_free(wd);
	return NESA_OK;
}

/*
 * The three scales share one path: build the scaled matrix, take its SVD,
 * choose the rank from its singular values (so an energy or error rule is
 * measured where the method is optimal), then map B back.  A is never
 * rescaled: the scale acts on W's columns, which B carries.
 */
enum nesa_status
nesa_lowrank_compute(const float *w, int64_t m, int64_t n, const struct nesa_lowrank_opts *o,
                     const char *name, struct nesa_lowrank *out, struct nesa_err *err)
{
	struct nesa_svd svd = {0};
	double *mat = NULL, *l = NULL, *c = NULL, ridge = 0;
	size_t mn, nn;
	int64_t i, j, t, r;
	enum nesa_status s = NESA_OK;

	memset(out, 0, sizeof *out);
	if (o->rank.rule == NESA_RANK_UNSET)
		return nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s': no rank rule", name);
	if ((o->scale == NESA_SCALE_ASVD && o->col_scale == NULL) ||
	    (o->scale == NESA_SCALE_WHITEN && o->gram == NULL))
		return nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s': the method needs calibration statistics",
		                    name);
	/* BLAS takes int sizes; every buffer below is at most max(m, n) x n doubles. */
	if (m < 1 || n < 1 || m > INT_MAX || n > INT_MAX || !nesa_mul_size((size_t)m, (size_t)n, &mn) ||
	    !nesa_mul_size(mn, sizeof(double), &mn) || !nesa_mul_size((size_t)n, (size_t)n, &nn) ||
	    !nesa_mul_size(nn, sizeof(double), &nn))
		return nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s': %lld x %lld is too large",
		                    name, (long long)m, (long long)n);
	for (j = 0; o->scale == NESA_SCALE_ASVD && j < n; j++)
		if (!(o->col_scale[j] > 0) || !isfinite(o->col_scale[j]))
			return nesa_err_set(err, NESA_EINVAL, "cannot decompose tensor '%s': column scale %lld is %g (scales must be positive)",
			                    name, (long long)j, o->col_scale[j]);
	mat = nesa_malloc(mn);
	l = o->scale == NESA_SCALE_WHITEN ? nesa_malloc(nn) : NULL;
	if (mat == NULL || (o->scale == NESA_SCALE_WHITEN && l == NULL)) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory decomposing tensor '%s'", name);
		goto done;
	}
	s = scaled_matrix(w, m, n, o, name, mat, l, &ridge, err);
	if (s == NESA_OK)
		s = nesa_svd_compute(mat, m, n, NESA_SVD_AUTO, name, &svd, err);
	if (s != NESA_OK)
		goto done;
	r = nesa_rank_choose(&o->rank, svd.s, svd.k, m, n, o->ref2, o->factor_bits, o->min_rank);
	out->m = m;
	out->n = n;
	out->r = r;
	out->ridge = ridge;
	for (t = 0; t < svd.k; t++) {
		out->energy += svd.s[t] * svd.s[t];
		if (t < r)
			out->kept += svd.s[t] * svd.s[t];
	}
	/* r <= min(m, n), so these sizes are below m n. */
	out->a = nesa_malloc((size_t)(m * r) * sizeof(float));
	out->b = nesa_malloc((size_t)(r * n) * sizeof(float));
	c = nesa_malloc((size_t)(r * n) * sizeof(double));
	if (out->a == NULL || out->b == NULL || c == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory decomposing tensor '%s'", name);
		goto done;
	}
	/* A = U_r sqrt(S_r) (m, r), C = sqrt(S_r) Vt_r (r, n) in the scaled space... */
	for (i = 0; i < m; i++)
		for (t = 0; t < r; t++)
			out->a[i * r + t] = (float)(svd.u[i * svd.k + t] * sqrt(svd.s[t]));
	for (t = 0; t < r; t++)
		for (j = 0; j < n; j++)
			c[t * n + j] = sqrt(svd.s[t]) * svd.vt[t * n + j];
	/* ...and B = C S^-1 or C L^-1 back in the weights' space (dtrsm solves B L = C). */
	if (o->scale == NESA_SCALE_WHITEN && r > 0)
		cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, (int)r, (int)n,
		            1.0, l, (int)n, c, (int)n);
	for (t = 0; t < r; t++)
		for (j = 0; j < n; j++)
			out->b[t * n + j] = (float)(o->scale == NESA_SCALE_ASVD ? c[t * n + j] / o->col_scale[j]
			                                                        : c[t * n + j]);
done:
	nesa_svd_release(&svd);
	nesa_free(mat);
	nesa_free(l);
	nesa_free(c);
	if (s != NESA_OK)
		nesa_lowrank_release(out);
	return s;
}

/* LLM.int8(). */

void
nesa_int8_release(struct nesa_int8 *q)
{
	if (q == NULL)
		return;
	nesa_free(q->w8);
	nesa_free(q->scale);
	nesa_free(q->ow);
	nesa_free(q->oidx);
	memset(q, 0, sizeof *q);
}

/*
 * Outliers are decided per input column, as LLM.int8() does: a large
 * activation in column c spoils the int8 rounding of every product that
 * reads it, whatever the weights, so the whole column leaves the int8
 * path.  Counting first sizes the outlier arrays exactly.
 */
enum nesa_status
nesa_int8_compute(const float *w, int64_t m, int64_t n, const float *col_absmax, double threshold,
                  struct nesa_int8 *out, struct nesa_err *err)
{
	size_t mn, mk;
	int64_t o, c, k = 0;

	memset(out, 0, sizeof *out);
	for (c = 0; col_absmax != NULL && c < n; c++)
		k += (double)col_absmax[c] > threshold;
	if (m < 1 || n < 1 || !nesa_mul_size((size_t)m, (size_t)n, &mn) ||
	    !nesa_mul_size(mn, sizeof(float), &mk))
		return nesa_err_set(err, NESA_EINVAL, "cannot quantize a %lld x %lld matrix to int8",
		                    (long long)m, (long long)n);
	out->m = m;
	out->n = n;
	out->k = k;
	/* k <= n, so (m, k) floats fit where (m, n) do. */
	out->w8 = nesa_malloc(mn);
	out->scale = nesa_malloc((size_t)m * sizeof(float));
	out->ow = nesa_malloc((size_t)(m * k) * sizeof(float));
	out->oidx = nesa_malloc((size_t)k * sizeof(int32_t));
	if (out->w8 == NULL || out->scale == NULL || out->ow == NULL || out->oidx == NULL) {
		nesa_int8_release(out);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	k = 0;
	for (c = 0; col_absmax != NULL && c < n; c++)
		if ((double)col_absmax[c] > threshold)
			out->oidx[k++] = (int32_t)c;
	for (o = 0; o < m; o++) {
		const float *wr = w + o * n;
		int8_t *qr = out->w8 + o * n;
		float amax = 0, inv;
		int64_t j = 0;

		/* The row's scale from the int8 columns only: outliers would waste its range. */
		for (c = 0; c < n; c++) {
			if (j < out->k && out->oidx[j] == c) {
				out->ow[o * out->k + j++] = wr[c];
				continue;
			}
			amax = fabsf(wr[c]) > amax ? fabsf(wr[c]) : amax;
		}
		out->scale[o] = amax / 127.0f;
		inv = amax > 0 ? 127.0f / amax : 0.0f;
		/* |wr[c] inv| <= 127 (1 + 2^-23), which rounds to 127 at most: never -128. */
		for (c = 0, j = 0; c < n; c++) {
			if (j < out->k && out->oidx[j] == c) {
				qr[c] = 0;
				j++;
				continue;
			}
			qr[c] = (int8_t)nearbyintf(wr[c] * inv);
		}
	}
	return NESA_OK;
}
