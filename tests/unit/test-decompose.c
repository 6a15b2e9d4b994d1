/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for decompose: method and rank parsing, the SVD (both LAPACKE
 * drivers), low rank with its error identities (plain, ASVD and whitened,
 * each in its own space), the rank rules, LLM.int8() weights and the error
 * bound of their product, calibration statistics, model-level selection,
 * rewriting, report and archive on a small llama, calibration runs on the
 * bundled story (text) and digits (images) models, and clean NESA_ENOMEM
 * under allocation faults.  The kernels are test-ops.c's, the graph's
 * refusal of factors that do not fit test-exec.c's.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "testmodel.h"

#include "arch.h"
#include "decompose.h"
#include "exec.h"
#include "graph.h"
#include "model.h"
#include "ops.h"
#include "quant.h"

/*
 * Float factors against double identities: the rounding of A and B to
 * float moves ||W - A B||^2 by about 2^-24 ||W|| ||W - A B|| per element
 * sum, far below this fraction of ||W||^2.
 */
#define LR_RTOL 1e-5
/* Logits of a graph with exact (full-rank, f32) factors against the original. */
#define LOGIT_ATOL 1e-4f
#define LOGIT_RTOL 1e-3f

enum { DIM = 64, HID = 96, LAYERS = 2, HEADS = 4, KV = 2, VOCAB = 32, CTX = 16, SEQ = 8 };

static void
fill(float *x, int64_t n, uint64_t *seed, float scale)
{
	int64_t i;

	for (i = 0; i < n; i++)
		x[i] = scale * test_randf(seed);
}

/* Squared singular values of a (m, n) from s, summed from index r on. */
static double
tail2(const double *s, int64_t k, int64_t r)
{
	double t = 0;

	for (; r < k; r++)
		t += s[r] * s[r];
	return t;
}

/* e (m, n) = (W - A B) diag(cs) (cs NULL: no scaling), in double; returns ||e||_F^2. */
static double
residual(const float *w, const float *a, const float *b, int64_t m, int64_t n, int64_t r,
         const double *cs, double *e)
{
	double tot = 0;
	int64_t i, j, t;

	for (i = 0; i < m; i++)
		for (j = 0; j < n; j++) {
			double v = w[i * n + j];

			for (t = 0; t < r; t++)
				v -= (double)a[i * r + t] * b[t * n + j];
			e[i * n + j] = v * (cs != NULL ? cs[j] : 1.0);
			tot += e[i * n + j] * e[i * n + j];
		}
	return tot;
}

/* ||e x^T||_F^2 over the rows of x (rows, n): the output error on those inputs. */
static double
out_err2(const double *e, int64_t m, int64_t n, const float *x, int64_t rows)
{
	double tot = 0;
	int64_t i, j, k;

	for (k = 0; k < rows; k++)
		for (i = 0; i < m; i++) {
			double y = 0;

			for (j = 0; j < n; j++)
				y += e[i * n + j] * x[k * n + j];
			tot += y * y;
		}
	return tot;
}

static void
test_parse(void **state)
{
	struct nesa_decompose_spec sp;
	struct nesa_rank rk;
	struct nesa_err err;
	const char *pat;
	char buf[64], arg[64], lng[400];
	static const struct {
		const char *text, *msg;
	} bad[] = {
		{"svdd", "unknown method 'svdd' (supported: keep, int8, svd, asvd, whiten, lorc)"},
		{"", "empty method"},
		{"svd:rank=1.5", "invalid value '1.5' for rank: expected a whole number"},
		{"svd:rank=-1", "invalid value '-1' for rank: expected a whole number"},
		{"svd:energy=1.5", "invalid value '1.5' for energy"},
		{"svd:ratio=abc", "invalid value 'abc' for ratio"},
		{"int8:rank=4", "method 'int8:rank=4': only svd, asvd, whiten and lorc take a rank"},
		{"svd:nf4", "invalid item 'nf4' in method 'svd:nf4': expected KEY=VALUE"},
		{"svd:type=q4_0", "invalid item 'type' in method 'svd:type=q4_0'"},
		{"lorc:keep", "method 'lorc:keep': lorc needs a format, not keep"},
		{"lorc:q9", "unknown type 'q9'"},
		{"whiten:scale=foo", "invalid scale 'foo' (expected none, asvd or whiten)"},
		{"lorc:iters=0", "invalid value '0' for iters"},
		{"int8:threshold=x", "invalid value 'x' for threshold"},
		{"keep:threshold=1", "invalid item 'threshold' in method 'keep:threshold=1'"},
	};
	size_t i;

	(void)state;
	assert_int_equal(nesa_decompose_parse_method("svd", &sp, &err), NESA_OK);
	assert_int_equal(sp.method, NESA_DECOMPOSE_SVD);
	assert_int_equal(sp.scale, NESA_SCALE_NONE);
	assert_int_equal(sp.rank.rule, NESA_RANK_UNSET);
	assert_int_equal(nesa_decompose_parse_method("asvd:rank=16", &sp, &err), NESA_OK);
	assert_int_equal(sp.scale, NESA_SCALE_ASVD);
	assert_int_equal(sp.rank.rule, NESA_RANK_FIXED);
	assert_true(sp.rank.value == 16);
	assert_int_equal(nesa_decompose_parse_method("whiten:energy=0.9", &sp, &err), NESA_OK);
	assert_int_equal(sp.scale, NESA_SCALE_WHITEN);
	assert_int_equal(sp.rank.rule, NESA_RANK_ENERGY);
	assert_int_equal(nesa_decompose_parse_method("lorc:nf4:bits=0.5", &sp, &err), NESA_OK);
	assert_int_equal(sp.method, NESA_DECOMPOSE_LORC);
	assert_int_equal(sp.qtype, NESA_NF4);
	assert_int_equal(sp.rank.rule, NESA_RANK_BITS);
	assert_string_equal(nesa_decompose_spec_name(&sp, buf, sizeof buf), "lorc:nf4");
	assert_int_equal(nesa_decompose_parse_method("lorc:type=q8_0:iters=3:scale=whiten:error=0.1", &sp, &err),
	                 NESA_OK);
	assert_int_equal(sp.qtype, NESA_Q8_0);
	assert_int_equal(sp.iters, 3);
	assert_int_equal(sp.rank.rule, NESA_RANK_ERROR);
	assert_string_equal(nesa_decompose_spec_name(&sp, buf, sizeof buf), "lorc-whiten:q8_0");
	assert_int_equal(nesa_decompose_parse_method("lorc", &sp, &err), NESA_OK);
	assert_int_equal(sp.qtype, NESA_Q4_0);
	assert_int_equal(nesa_decompose_parse_method("int8:threshold=4", &sp, &err), NESA_OK);
	assert_int_equal(sp.method, NESA_DECOMPOSE_INT8);
	assert_true(sp.threshold == 4);
	assert_int_equal(nesa_decompose_parse_method("int8", &sp, &err), NESA_OK);
	assert_true(sp.threshold < 0);
	assert_int_equal(nesa_decompose_parse_method("keep", &sp, &err), NESA_OK);
	assert_int_equal(sp.method, NESA_DECOMPOSE_KEEP);
	assert_string_equal(nesa_decompose_spec_name(&sp, buf, sizeof buf), "keep");
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(nesa_decompose_parse_method(bad[i].text, &sp, &err), NESA_EINVAL);
		if (strstr(err.msg, bad[i].msg) == NULL)
			fail_msg("'%s': message '%s' lacks '%s'", bad[i].text, err.msg, bad[i].msg);
	}
	memset(lng, 'a', sizeof lng - 1);
	lng[sizeof lng - 1] = '\0';
	assert_int_equal(nesa_decompose_parse_method(lng, &sp, &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "too long"));

	/* Rules: a pattern before the first '=' unless a ':' comes first. */
	snprintf(arg, sizeof arg, "layers.*.w2=svd:rank=8");
	assert_int_equal(nesa_decompose_parse_rule(arg, &pat, &sp, &err), NESA_OK);
	assert_string_equal(pat, "layers.*.w2");
	assert_int_equal(sp.method, NESA_DECOMPOSE_SVD);
	assert_true(sp.rank.value == 8);
	snprintf(arg, sizeof arg, "svd:rank=8");
	assert_int_equal(nesa_decompose_parse_rule(arg, &pat, &sp, &err), NESA_OK);
	assert_null(pat);
	snprintf(arg, sizeof arg, "=svd");
	assert_int_equal(nesa_decompose_parse_rule(arg, &pat, &sp, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "empty pattern in '=svd'");
	snprintf(arg, sizeof arg, "w*=bogus");
	assert_int_equal(nesa_decompose_parse_rule(arg, &pat, &sp, &err), NESA_EINVAL);

	/* Rank rules on their own (-r). */
	assert_int_equal(nesa_decompose_parse_rank("16", &rk, &err), NESA_OK);
	assert_true(rk.rule == NESA_RANK_FIXED && rk.value == 16);
	assert_int_equal(nesa_decompose_parse_rank("ratio=0.25", &rk, &err), NESA_OK);
	assert_true(rk.rule == NESA_RANK_RATIO && rk.value == 0.25);
	assert_int_equal(nesa_decompose_parse_rank("energy=0.95", &rk, &err), NESA_OK);
	assert_int_equal(rk.rule, NESA_RANK_ENERGY);
	assert_int_equal(nesa_decompose_parse_rank("error=0.1", &rk, &err), NESA_OK);
	assert_int_equal(rk.rule, NESA_RANK_ERROR);
	assert_int_equal(nesa_decompose_parse_rank("bits=0.5", &rk, &err), NESA_OK);
	assert_int_equal(rk.rule, NESA_RANK_BITS);
	assert_int_equal(nesa_decompose_parse_rank("foo=1", &rk, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "invalid rank rule 'foo=1' (expected N, ratio=R, energy=E, error=F or bits=B)");
	assert_int_equal(nesa_decompose_parse_rank("x", &rk, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "invalid rank rule 'x' (expected N, ratio=R, energy=E, error=F or bits=B)");
	assert_int_equal(nesa_decompose_parse_rank("2.5", &rk, &err), NESA_EINVAL);
	assert_int_equal(nesa_decompose_parse_rank(lng, &rk, &err), NESA_EINVAL);
	assert_int_equal(nesa_decompose_default_rank(NESA_DECOMPOSE_LORC).rule, NESA_RANK_FIXED);
	assert_int_equal(nesa_decompose_default_rank(NESA_DECOMPOSE_SVD).rule, NESA_RANK_RATIO);
}

/* U diag(s) Vt against a, U's orthonormal columns, s descending, for both drivers. */
static void
check_svd(const double *a, int64_t m, int64_t n, const struct nesa_svd *s)
{
	double norm = 0, err = 0;
	int64_t i, j, t, u;

	assert_int_equal(s->k, m < n ? m : n);
	for (t = 1; t < s->k; t++)
		assert_true(s->s[t] <= s->s[t - 1] && s->s[t] >= 0);
	for (i = 0; i < m; i++)
		for (j = 0; j < n; j++) {
			double v = 0;

			for (t = 0; t < s->k; t++)
				v += s->u[i * s->k + t] * s->s[t] * s->vt[t * n + j];
			err += (v - a[i * n + j]) * (v - a[i * n + j]);
			norm += a[i * n + j] * a[i * n + j];
		}
	assert_true(err <= 1e-24 * norm);
	for (t = 0; t < s->k; t++)
		for (u = 0; u < s->k; u++) {
			double d = 0;

			for (i = 0; i < m; i++)
				d += s->u[i * s->k + t] * s->u[i * s->k + u];
			assert_true(fabs(d - (t == u ? 1.0 : 0.0)) < 1e-12);
		}
}

static void
test_svd(void **state)
{
	static const int64_t shapes[][2] = {{13, 7}, {6, 11}, {1, 5}, {9, 9}};
	uint64_t seed = 21;
	struct nesa_err err;
	size_t c;

	(void)state;
	for (c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
		const int64_t m = shapes[c][0], n = shapes[c][1];
		double a[13 * 11];
		struct nesa_svd s1, s2;
		int64_t i;

		for (i = 0; i < m * n; i++)
			a[i] = test_randf(&seed);
		/* A rank-deficient square case: two equal rows. */
		if (m == n)
			memcpy(a + n, a, (size_t)n * sizeof *a);
		assert_int_equal(nesa_svd_compute(a, m, n, NESA_SVD_AUTO, "a", &s1, &err), NESA_OK);
		assert_string_equal(s1.routine, "LAPACKE_dgesdd");
		check_svd(a, m, n, &s1);
		/* The fallback alone gives the same singular values. */
		assert_int_equal(nesa_svd_compute(a, m, n, NESA_SVD_GESVD, "a", &s2, &err), NESA_OK);
		assert_string_equal(s2.routine, "LAPACKE_dgesvd");
		check_svd(a, m, n, &s2);
		for (i = 0; i < s1.k; i++)
			assert_true(fabs(s1.s[i] - s2.s[i]) <= 1e-12 * s1.s[0]);
		if (m == n)
			assert_true(s1.s[s1.k - 1] < 1e-12 * s1.s[0]);
		nesa_svd_release(&s1);
		nesa_svd_release(&s2);
	}
	/* LAPACKE's NaN check refuses the input; the message names tensor and routine. */
	{
		double a[6] = {1, 2, NAN, 4, 5, 6};
		struct nesa_svd s;

		assert_int_equal(nesa_svd_compute(a, 2, 3, NESA_SVD_AUTO, "blk.0.wq", &s, &err), NESA_ELINALG);
		assert_non_null(strstr(err.msg, "cannot decompose tensor 'blk.0.wq': LAPACKE_dgesdd rejected argument"));
		assert_null(s.u);
		assert_int_equal(nesa_svd_compute(a, 2, 3, NESA_SVD_GESVD, "blk.0.wq", &s, &err), NESA_ELINALG);
		assert_non_null(strstr(err.msg, "LAPACKE_dgesvd rejected argument"));
		assert_int_equal(nesa_svd_compute(a, 0, 3, NESA_SVD_AUTO, "e", &s, &err), NESA_EINVAL);
		assert_string_equal(err.msg, "cannot decompose tensor 'e': 0 x 3 is not a matrix LAPACKE takes");
		assert_int_equal(nesa_svd_compute(a, (int64_t)1 << 32, 3, NESA_SVD_AUTO, "e", &s, &err), NESA_EINVAL);
	}
	nesa_svd_release(NULL);
}

/*
 * Plain low rank: full rank reconstructs W, and at every rank r the
 * squared error equals the discarded singular values' energy.
 */
static void
test_lowrank_plain(void **state)
{
	enum { M = 20, N = 12 };
	float w[M * N];
	double wd[M * N], e[M * N], norm2 = 0;
	struct nesa_lowrank_opts o = {0};
	struct nesa_lowrank lr;
	struct nesa_svd ref;
	struct nesa_err err;
	uint64_t seed = 3;
	int64_t i, r;

	(void)state;
	fill(w, M * N, &seed, 1.0f);
	for (i = 0; i < M * N; i++) {
		wd[i] = w[i];
		norm2 += wd[i] * wd[i];
	}
	assert_int_equal(nesa_svd_compute(wd, M, N, NESA_SVD_AUTO, "w", &ref, &err), NESA_OK);
	o.rank.rule = NESA_RANK_FIXED;
	o.min_rank = 1;
	for (r = 1; r <= N; r++) {
		double got;

		o.rank.value = (double)r;
		assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_OK);
		assert_int_equal(lr.r, r);
		assert_true(fabs(lr.energy - norm2) <= 1e-12 * norm2);
		assert_true(fabs((lr.energy - lr.kept) - tail2(ref.s, ref.k, r)) <= 1e-9 * norm2);
		got = residual(w, lr.a, lr.b, M, N, r, NULL, e);
		assert_true(fabs(got - tail2(ref.s, ref.k, r)) <= LR_RTOL * norm2);
		if (r == N)
			for (i = 0; i < M * N; i++)
				assert_true(fabs(e[i]) <= 1e-5 * (1 + fabs(wd[i])));
		nesa_lowrank_release(&lr);
	}
	/* A rank beyond min(m, n) is clamped to it. */
	o.rank.value = 100;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_OK);
	assert_int_equal(lr.r, N);
	nesa_lowrank_release(&lr);
	/* The ratio rule: r (M + N) <= 0.5 M N, r = 3. */
	o.rank = (struct nesa_rank){NESA_RANK_RATIO, 0.5};
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_OK);
	assert_int_equal(lr.r, 3);
	nesa_lowrank_release(&lr);
	o.rank.rule = NESA_RANK_UNSET;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "cannot decompose tensor 'w': no rank rule");
	nesa_svd_release(&ref);
	nesa_lowrank_release(NULL);
}

/* ASVD: the identity holds for (W - A B) S, and S must be positive. */
static void
test_lowrank_asvd(void **state)
{
	enum { M = 10, N = 16, RANK = 4 };
	float w[M * N];
	double cs[N], ws[M * N], e[M * N], energy = 0;
	struct nesa_lowrank_opts o = {0};
	struct nesa_lowrank lr;
	struct nesa_svd ref;
	struct nesa_err err;
	uint64_t seed = 4;
	int64_t i;

	(void)state;
	fill(w, M * N, &seed, 1.0f);
	for (i = 0; i < N; i++)
		cs[i] = 0.1 + 2.0 * (test_randf(&seed) + 1) / 2;
	for (i = 0; i < M * N; i++) {
		ws[i] = w[i] * cs[i % N];
		energy += ws[i] * ws[i];
	}
	assert_int_equal(nesa_svd_compute(ws, M, N, NESA_SVD_AUTO, "ws", &ref, &err), NESA_OK);
	o.scale = NESA_SCALE_ASVD;
	o.col_scale = cs;
	o.rank = (struct nesa_rank){NESA_RANK_FIXED, RANK};
	o.min_rank = 1;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_OK);
	assert_true(fabs(lr.energy - energy) <= 1e-12 * energy);
	assert_true(fabs((lr.energy - lr.kept) - tail2(ref.s, ref.k, RANK)) <= 1e-9 * energy);
	assert_true(fabs(residual(w, lr.a, lr.b, M, N, RANK, cs, e) - (lr.energy - lr.kept)) <= LR_RTOL * energy);
	assert_true(lr.ridge == 0);
	nesa_lowrank_release(&lr);
	/* Without the scales, or with a zero one, nothing is computed. */
	o.col_scale = NULL;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "cannot decompose tensor 'w': the method needs calibration statistics");
	cs[3] = 0;
	o.col_scale = cs;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "cannot decompose tensor 'w': column scale 3 is 0 (scales must be positive)");
	assert_null(lr.a);
	nesa_svd_release(&ref);
}

/*
 * Whitening: ||(W - A B) X^T||^2 + ridge ||W - A B||^2 is the discarded
 * energy, a Gram matrix left singular by a feature that never fires still
 * factors (with a ridge), and at equal rank the output error on the
 * calibration rows beats plain SVD's.
 */
static void
test_lowrank_whiten(void **state)
{
	enum { M = 12, N = 10, ROWS = 40, RANK = 3 };
	float w[M * N], x[ROWS * N];
	double gram[N * N], e[M * N], f2, o2, plain_o2;
	struct nesa_lowrank_opts o = {0};
	struct nesa_lowrank lr;
	struct nesa_err err;
	uint64_t seed = 8;
	int64_t i, j, k;

	(void)state;
	fill(w, M * N, &seed, 1.0f);
	/* Features of very different sizes, and feature 7 never active. */
	for (k = 0; k < ROWS; k++)
		for (j = 0; j < N; j++)
			x[k * N + j] = j == 7 ? 0.0f : (float)(j + 1) * (j % 3 == 0 ? 3.0f : 0.3f) * test_randf(&seed);
	memset(gram, 0, sizeof gram);
	for (k = 0; k < ROWS; k++)
		for (i = 0; i < N; i++)
			for (j = 0; j <= i; j++)
				gram[i * N + j] += (double)x[k * N + i] * x[k * N + j];
	o.scale = NESA_SCALE_WHITEN;
	o.gram = gram;
	o.rank = (struct nesa_rank){NESA_RANK_FIXED, RANK};
	o.min_rank = 1;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_OK);
	assert_true(lr.ridge > 0);
	f2 = residual(w, lr.a, lr.b, M, N, RANK, NULL, e);
	o2 = out_err2(e, M, N, x, ROWS);
	assert_true(fabs(o2 + lr.ridge * f2 - (lr.energy - lr.kept)) <= LR_RTOL * lr.energy);
	nesa_lowrank_release(&lr);
	o.scale = NESA_SCALE_NONE;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_OK);
	residual(w, lr.a, lr.b, M, N, RANK, NULL, e);
	plain_o2 = out_err2(e, M, N, x, ROWS);
	print_message("# output error at rank %d: whitened %.4g, plain %.4g\n", RANK, sqrt(o2), sqrt(plain_o2));
	assert_true(o2 < 0.8 * plain_o2);
	nesa_lowrank_release(&lr);
	/* An energy rule in the whitened space: at least 0.99 of it kept. */
	o.scale = NESA_SCALE_WHITEN;
	o.rank = (struct nesa_rank){NESA_RANK_ENERGY, 0.99};
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_OK);
	assert_true(lr.kept >= 0.99 * lr.energy);
	assert_true(lr.r < N);
	nesa_lowrank_release(&lr);
	o.gram = NULL;
	assert_int_equal(nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err), NESA_EINVAL);
}

static void
test_rank_rules(void **state)
{
	/* Squares 16, 9, 4, 1: total 30. */
	static const double s[4] = {4, 3, 2, 1};
	static const struct {
		enum nesa_rank_rule rule;
		double value, ref2, bits;
		int64_t min_rank, want;
	} cases[] = {
		{NESA_RANK_FIXED, 2, 0, 0, 1, 2},
		{NESA_RANK_FIXED, 0, 0, 0, 1, 1},   /* clamped up to min_rank */
		{NESA_RANK_FIXED, 0, 0, 0, 0, 0},
		{NESA_RANK_FIXED, 99, 0, 0, 1, 4},  /* clamped down to k */
		{NESA_RANK_RATIO, 0.5, 0, 0, 1, 2}, /* r 20 <= 50 */
		{NESA_RANK_RATIO, 0.6, 0, 0, 1, 3}, /* r 20 <= 60: exactly 3 */
		{NESA_RANK_RATIO, 0.01, 0, 0, 1, 1},
		{NESA_RANK_RATIO, 0.01, 0, 0, 0, 0},
		{NESA_RANK_BITS, 8, 0, 16, 1, 2},   /* r 20 16 <= 800 */
		{NESA_RANK_BITS, 0.5, 0, 0, 0, 0},  /* 0 bits: 32 */
		{NESA_RANK_ENERGY, 0.8, 0, 0, 1, 2},  /* 25 of 30 kept >= 24 */
		{NESA_RANK_ENERGY, 0.5, 0, 0, 1, 1},  /* 16 >= 15 */
		{NESA_RANK_ENERGY, 25.0 / 30, 0, 0, 1, 2}, /* the boundary is kept */
		{NESA_RANK_ENERGY, 1, 0, 0, 1, 4},
		{NESA_RANK_ERROR, 0.2, 0, 0, 1, 3},   /* discard <= 1.2 */
		{NESA_RANK_ERROR, 0.2, 100, 0, 1, 3}, /* discard <= 4 */
		{NESA_RANK_ERROR, 0.5, 100, 0, 1, 1}, /* discard <= 25: 14 */
		{NESA_RANK_ERROR, 1, 100, 0, 0, 0},   /* discard everything */
		{NESA_RANK_ERROR, 0, 0, 0, 1, 4},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct nesa_rank r = {cases[i].rule, cases[i].value};
		int64_t got = nesa_rank_choose(&r, s, 4, 10, 10, cases[i].ref2, cases[i].bits, cases[i].min_rank);

		if (got != cases[i].want)
			fail_msg("case %zu: rank %lld, expected %lld", i, (long long)got, (long long)cases[i].want);
	}
}

/*
 * LLM.int8() weights: outlier columns from calibration maxima keep their
 * weights, the others are int8 with row scales from themselves; the
 * product (static outliers, run-time outliers or none) stays within the
 * bound decompose.h states, and routing outliers shrinks the error.
 */
static void
test_int8(void **state)
{
	enum { M = 9, N = 48, ROWS = 6 };
	float w[M * N], x[ROWS * N], absmax[N], b[M], y[ROWS * M], y2[ROWS * M];
	double ref[ROWS * M], err_plain = 0, err_static = 0;
	struct nesa_int8 q;
	struct nesa_err err;
	uint64_t seed = 77;
	void *scratch = nesa_aligned_alloc(nesa_linear_int8_scratch(ROWS, N));
	int64_t o, c, r;
	int mode;

	(void)state;
	assert_non_null(scratch);
	fill(w, M * N, &seed, 1.0f);
	memset(w + 4 * N, 0, N * sizeof *w); /* an all-zero row: scale 0, no NaN */
	w[2 * N + 17] = 40.0f;                /* a large weight in an outlier column */
	fill(x, ROWS * N, &seed, 1.0f);
	fill(b, M, &seed, 1.0f);
	for (r = 0; r < ROWS; r++) {
		x[r * N + 5] *= 30.0f;
		x[r * N + 17] *= 25.0f;
	}
	for (c = 0; c < N; c++) {
		absmax[c] = 0;
		for (r = 0; r < ROWS; r++)
			absmax[c] = fmaxf(absmax[c], fabsf(x[r * N + c]));
	}
	for (r = 0; r < ROWS; r++)
		for (o = 0; o < M; o++) {
			double s = b[o];

			for (c = 0; c < N; c++)
				s += (double)x[r * N + c] * w[o * N + c];
			ref[r * M + o] = s;
		}
	for (mode = 0; mode < 3; mode++) {
		/* 0: static outliers from calibration, 1: run-time threshold only, 2: none. */
		const float thr = mode == 1 ? 6.0f : 0.0f;

		assert_int_equal(nesa_int8_compute(w, M, N, mode == 0 ? absmax : NULL, 6.0, &q, &err), NESA_OK);
		assert_int_equal(q.k, mode == 0 ? 2 : 0);
		if (mode == 0) {
			assert_int_equal(q.oidx[0], 5);
			assert_int_equal(q.oidx[1], 17);
			for (o = 0; o < M; o++) {
				assert_true(q.ow[o * 2] == w[o * N + 5] && q.ow[o * 2 + 1] == w[o * N + 17]);
				assert_int_equal(q.w8[o * N + 5], 0);
				assert_int_equal(q.w8[o * N + 17], 0);
			}
		}
		for (o = 0; o < M; o++) {
			float amax = 0;

			for (c = 0; c < N; c++) {
				assert_true(q.w8[o * N + c] >= -127 && q.w8[o * N + c] <= 127);
				if (mode != 0 || (c != 5 && c != 17))
					amax = fmaxf(amax, fabsf(w[o * N + c]));
			}
			assert_true(q.scale[o] == amax / 127.0f);
		}
		assert_true(q.scale[4] == 0);
		nesa_linear_int8(x, ROWS, N, q.w8, q.scale, M, q.ow, q.oidx, q.k, thr, b, y, scratch);
		nesa_linear_int8_ref(x, ROWS, N, q.w8, q.scale, M, q.ow, q.oidx, q.k, thr, b, y2, scratch);
		assert_memory_equal(y, y2, sizeof y);
		for (r = 0; r < ROWS; r++) {
			double sx = 0;

			/* s_x over the columns left in the int8 product. */
			for (c = 0; c < N; c++)
				if (mode == 2 || (c != 5 && c != 17))
					sx = fmax(sx, fabs(x[r * N + c]));
			sx /= 127;
			for (o = 0; o < M; o++) {
				double bound = 0, mag = fabs(b[o]), d = fabs(y[r * M + o] - ref[r * M + o]);

				for (c = 0; c < N; c++) {
					mag += fabs((double)x[r * N + c] * w[o * N + c]);
					if (mode == 0 && (c == 5 || c == 17))
						continue;
					bound += q.scale[o] / 2.0 * fabs(x[r * N + c]) +
					         sx / 2.0 * (fabs(w[o * N + c]) + q.scale[o] / 2.0);
				}
				bound += NESA_INT8_RTOL * mag;
				if (!(d <= bound))
					fail_msg("mode %d row %lld out %lld: error %g over the bound %g", mode, (long long)r,
					         (long long)o, d, bound);
				if (mode == 0)
					err_static += d;
				else if (mode == 2)
					err_plain += d;
			}
		}
		nesa_int8_release(&q);
	}
	print_message("# int8 error: outliers in f32 %.4g, none %.4g\n", err_static, err_plain);
	assert_true(err_static * 10 < err_plain);
	assert_int_equal(nesa_int8_compute(w, 0, N, NULL, 6.0, &q, &err), NESA_EINVAL);
	nesa_int8_release(NULL);
	nesa_aligned_free(scratch);
}

/* Calibration statistics fed by hand: maxima, sums, the Gram matrix and the row sample. */
static void
test_calib_stats(void **state)
{
	enum { N = 5, ROWS = 300 };
	struct nesa_calib_opts co = {0};
	struct nesa_calib *c;
	struct nesa_err err;
	const struct nesa_calib_stat *st;
	static float x[ROWS * N];
	double gram[N * N] = {0}, sum[N] = {0};
	float amax[N] = {0};
	uint64_t seed = 2;
	int64_t i, j, k;

	(void)state;
	fill(x, ROWS * N, &seed, 2.0f);
	for (k = 0; k < ROWS; k++)
		for (i = 0; i < N; i++) {
			amax[i] = fmaxf(amax[i], fabsf(x[k * N + i]));
			sum[i] += fabs(x[k * N + i]);
			for (j = 0; j <= i; j++)
				gram[i * N + j] += (double)x[k * N + i] * x[k * N + j];
		}
	co.sample_rows = 16;
	co.seed = 1;
	assert_int_equal(nesa_calib_new(&co, &c, &err), NESA_OK);
	assert_int_equal(nesa_calib_want(c, 2, 7, N, false, &err), NESA_OK);
	assert_int_equal(nesa_calib_want(c, 2, 7, N, true, &err), NESA_OK);
	assert_int_equal(nesa_calib_want(c, 2, 7, N + 1, true, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "calibration input 7 of block 2 has 5 features, not 6");
	assert_int_equal(nesa_calib_want(c, 3, 1, 3, false, &err), NESA_OK);
	/* In uneven pieces, and rows for an input nobody wants are ignored. */
	assert_int_equal(nesa_calib_add(c, 2, 7, x, 1, &err), NESA_OK);
	assert_int_equal(nesa_calib_add(c, 2, 7, x + N, 270, &err), NESA_OK);
	assert_int_equal(nesa_calib_add(c, 2, 7, x + 271 * N, ROWS - 271, &err), NESA_OK);
	assert_int_equal(nesa_calib_add(c, 9, 9, x, ROWS, &err), NESA_OK);
	assert_null(nesa_calib_find(c, 9, 9));
	st = nesa_calib_find(c, 2, 7);
	assert_non_null(st);
	assert_int_equal(st->rows, ROWS);
	assert_int_equal(st->n_sample, 16);
	for (i = 0; i < N; i++) {
		assert_true(st->absmax[i] == amax[i]);
		assert_true(fabs(st->abssum[i] - sum[i]) <= 1e-9 * sum[i]);
		for (j = 0; j <= i; j++)
			assert_true(fabs(st->gram[i * N + j] - gram[i * N + j]) <= 1e-9 * (fabs(gram[i * N + j]) + 1));
	}
	/* Every sampled row is one of the rows given, and not all from the start. */
	{
		int64_t late = 0;

		for (k = 0; k < st->n_sample; k++) {
			for (i = 0; i < ROWS; i++)
				if (memcmp(st->sample + k * N, x + i * N, N * sizeof *x) == 0)
					break;
			assert_true(i < ROWS);
			late += i >= 16;
		}
		assert_true(late > 0);
	}
	assert_null(nesa_calib_find(c, 3, 1)->gram);
	assert_int_equal(nesa_calib_rows(c), 0);
	nesa_calib_free(c);
	nesa_calib_free(NULL);
}

/* A small llama built by hand (as test-quantize.c's), with a separate output head. */
static void
make_model(struct nesa_model *m, struct nesa_tset *ts)
{
	struct nesa_lm_hparams hp = {DIM, HID, LAYERS, HEADS, KV, VOCAB, CTX, 1e-5f, 10000.0f,
	                             NESA_ROPE_INTERLEAVED};
	uint64_t seed = 7;
	char n[32];
	int l;

	nesa_tset_init(ts);
	test_add_weight(ts, "emb", VOCAB, DIM, &seed);
	for (l = 0; l < LAYERS; l++) {
		snprintf(n, sizeof n, "%d.an", l), test_add_weight(ts, n, DIM, 0, &seed);
		snprintf(n, sizeof n, "%d.wq", l), test_add_weight(ts, n, DIM, DIM, &seed);
		snprintf(n, sizeof n, "%d.wk", l), test_add_weight(ts, n, KV * DIM / HEADS, DIM, &seed);
		snprintf(n, sizeof n, "%d.wv", l), test_add_weight(ts, n, KV * DIM / HEADS, DIM, &seed);
		snprintf(n, sizeof n, "%d.wo", l), test_add_weight(ts, n, DIM, DIM, &seed);
		snprintf(n, sizeof n, "%d.fn", l), test_add_weight(ts, n, DIM, 0, &seed);
		snprintf(n, sizeof n, "%d.w1", l), test_add_weight(ts, n, HID, DIM, &seed);
		snprintf(n, sizeof n, "%d.w2", l), test_add_weight(ts, n, DIM, HID, &seed);
		snprintf(n, sizeof n, "%d.w3", l), test_add_weight(ts, n, HID, DIM, &seed);
	}
	test_add_weight(ts, "norm", DIM, 0, &seed);
	test_add_weight(ts, "out", VOCAB, DIM, &seed);
	memset(m, 0, sizeof *m);
	m->path = (char *)"tiny.bin";
	m->format = "graph";
	m->name = (char *)"tiny";
	m->arch = (char *)"llama";
	m->graph = nesa_llama_graph(&hp, test_lm_namer, NULL, "tiny");
	m->meta = json_object();
	m->weights = ts;
	assert_non_null(m->graph);
	assert_non_null(m->meta);
	m->n_blocks = m->count = nesa_graph_doc_blocks(m->graph);
	m->have_id = true;
	memset(m->source_sha256, 0xab, sizeof m->source_sha256);
}

static void
release_model(struct nesa_model *m, struct nesa_tset *ts)
{
	json_decref(m->graph);
	json_decref(m->meta);
	nesa_tset_release(ts);
}

static const int32_t seq[SEQ] = {1, 5, 7, 19, 0, 3, 30, 12};

/* The logits (SEQ, VOCAB) of a graph over its weights. */
static void
logits(json_t *graph, struct nesa_tset *ts, float *out)
{
	struct nesa_graph *g;
	struct nesa_exec *e;
	struct nesa_err err;
	struct nesa_seg sg = {1, 0, SEQ, false};
	const void *in[1] = {seq};
	const float *o[1];
	int64_t rows;

	assert_int_equal(nesa_graph_compile(graph, ts, 0, -1, &g, &err), NESA_OK);
	assert_int_equal(nesa_exec_new(g, NULL, &e, &err), NESA_OK);
	assert_int_equal(nesa_exec_run(e, &sg, 1, in, o, &rows, &err), NESA_OK);
	assert_int_equal(rows, SEQ);
	memcpy(out, o[0], SEQ * VOCAB * sizeof *out);
	nesa_exec_free(e);
	nesa_graph_free(g);
}

static double
rel_diff(const float *a, const float *b, int64_t n)
{
	double d = 0, r = 0;
	int64_t i;

	for (i = 0; i < n; i++) {
		d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		r += (double)b[i] * b[i];
	}
	return sqrt(d / r);
}

static const struct nesa_decompose_stat *
stat_of(const struct nesa_decompose_report *r, const char *name)
{
	size_t i;

	for (i = 0; i < r->n; i++)
		if (strcmp(r->items[i].name, name) == 0)
			return &r->items[i];
	fail_msg("no report item for '%s'", name);
	return NULL;
}

/* The report's items add up to its totals. */
static void
check_totals(const struct nesa_decompose_report *rep)
{
	uint64_t before = 0, after = 0;
	int64_t outl = 0;
	size_t i;

	for (i = 0; i < rep->n; i++) {
		before += rep->items[i].bytes_before;
		after += rep->items[i].bytes_after;
		outl += rep->items[i].outliers > 0 ? rep->items[i].outliers : 0;
	}
	assert_int_equal(before, rep->bytes_before);
	assert_int_equal(after, rep->bytes_after);
	assert_int_equal(outl, rep->outlier_cols);
}

/*
 * int8 without calibration: run-time outliers, every linear weight; the
 * logits within 5 % (each product of this random model is off by about
 * 0.5 % from rounding weights and activations, and 15 of them compound).
 */
static void
test_model_int8(void **state)
{
	struct nesa_decompose_opts o;
	struct nesa_decompose_report rep;
	struct nesa_decomposed d;
	struct nesa_model m;
	struct nesa_tset ts;
	struct nesa_err err;
	const struct nesa_decompose_stat *st;
	static float ref[SEQ * VOCAB], got[SEQ * VOCAB];
	size_t i;

	(void)state;
	make_model(&m, &ts);
	logits(m.graph, &ts, ref);
	nesa_decompose_opts_init(&o);
	assert_int_equal(nesa_decompose_model(&m, &o, &d, &rep, &err), NESA_OK);
	assert_int_equal(rep.n, 1 + LAYERS * 9 + 2);
	check_totals(&rep);
	st = stat_of(&rep, "emb");
	assert_string_equal(st->method, "keep");
	assert_string_equal(st->note, "embedding");
	assert_string_equal(stat_of(&rep, "0.an")->note, "not a linear weight");
	for (i = 0; i < rep.n; i++) {
		st = &rep.items[i];
		if (st->ndim != 2 || strcmp(st->name, "emb") == 0)
			continue;
		assert_string_equal(st->method, "int8");
		assert_string_equal(st->note, "default");
		assert_int_equal(st->outliers, 0);
		assert_int_equal(st->rank, -1);
		/* i8 weights and f32 row scales. */
		assert_int_equal(st->bytes_after, st->shape[0] * st->shape[1] + st->shape[0] * 4);
		assert_true(st->frob > 0 && st->frob < 0.006);
		assert_true(isnan(st->out_err));
	}
	assert_int_equal(rep.int8_cols, LAYERS * (6 * DIM + HID) + DIM); /* input columns */
	assert_int_equal(rep.calib_rows, 0);
	assert_null(nesa_tset_find(&d.ts, "0.wq"));
	assert_int_equal(nesa_tset_find(&d.ts, "0.wq.i8")->dtype, NESA_I8);
	assert_non_null(nesa_tset_find(&d.ts, "emb"));
	/* Run-time outliers: the op carries the threshold. */
	assert_string_equal(json_string_value(json_object_get(d.record, "outliers")), "auto");
	logits(d.graph, &d.ts, got);
	print_message("# int8 logits: relative difference %.4g\n", rel_diff(got, ref, SEQ * VOCAB));
	assert_true(rel_diff(got, ref, SEQ * VOCAB) < 0.05);
	nesa_decomposed_release(&d);
	nesa_decompose_report_release(&rep);

	/* Outliers from calibration need it; whitening needs it; both fail before any work. */
	o.outliers = NESA_OUTLIERS_CALIB;
	assert_int_equal(nesa_decompose_model(&m, &o, &d, &rep, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "cannot decompose tensor '0.wq': outliers from calibration need calibration data (--calib)");
	assert_null(d.graph);
	o.outliers = NESA_OUTLIERS_AUTO;
	assert_int_equal(nesa_decompose_parse_method("whiten", &o.def, &err), NESA_OK);
	assert_int_equal(nesa_decompose_model(&m, &o, &d, &rep, &err), NESA_EINVAL);
	assert_string_equal(err.msg, "cannot decompose tensor '0.wq' with whiten: it needs calibration data (--calib)");
	release_model(&m, &ts);
}

/* Full-rank f32 factors reproduce the model; the default ratio halves a matrix. */
static void
test_model_svd(void **state)
{
	struct nesa_decompose_opts o;
	struct nesa_decompose_report rep;
	struct nesa_decomposed d;
	struct nesa_model m;
	struct nesa_tset ts;
	struct nesa_err err;
	static float ref[SEQ * VOCAB], got[SEQ * VOCAB];
	size_t i;

	(void)state;
	make_model(&m, &ts);
	logits(m.graph, &ts, ref);
	nesa_decompose_opts_init(&o);
	assert_int_equal(nesa_decompose_parse_method("svd:rank=1000", &o.def, &err), NESA_OK);
	o.factor_dtype = NESA_F32;
	assert_int_equal(nesa_decompose_model(&m, &o, &d, &rep, &err), NESA_OK);
	check_totals(&rep);
	assert_int_equal(stat_of(&rep, "0.wq")->rank, DIM);
	assert_int_equal(stat_of(&rep, "0.w2")->rank, DIM);
	assert_int_equal(stat_of(&rep, "0.wk")->rank, KV * DIM / HEADS);
	assert_int_equal(stat_of(&rep, "0.w1")->bytes_after, 4 * DIM * (HID + DIM));
	for (i = 0; i < rep.n; i++)
		if (rep.items[i].rank > 0)
			assert_true(rep.items[i].frob < 1e-5);
	logits(d.graph, &d.ts, got);
	for (i = 0; i < SEQ * VOCAB; i++)
		if (!(fabsf(got[i] - ref[i]) <= LOGIT_ATOL + LOGIT_RTOL * fabsf(ref[i])))
			fail_msg("logit %zu: %.9g vs %.9g", i, got[i], ref[i]);
	nesa_decomposed_release(&d);
	nesa_decompose_report_release(&rep);

	/* Default rank (ratio 0.5), f16 factors: r (64 + 64) <= 0.5 64 64. */
	nesa_decompose_opts_init(&o);
	o.def.method = NESA_DECOMPOSE_SVD;
	assert_int_equal(nesa_decompose_model(&m, &o, &d, &rep, &err), NESA_OK);
	assert_int_equal(stat_of(&rep, "0.wq")->rank, 16);
	assert_int_equal(stat_of(&rep, "0.wq")->bytes_after, 2 * 16 * (DIM + DIM));
	assert_int_equal(nesa_tset_find(&d.ts, "0.wq.a")->dtype, NESA_F16);
	assert_true(rep.bytes_after < rep.bytes_before);
	nesa_decomposed_release(&d);
	nesa_decompose_report_release(&rep);
	release_model(&m, &ts);
}

/*
 * Rules (first match wins), lorc beating its format alone, the report as
 * JSON and text, and the archive loading back with the same logits.
 */
static void
test_model_rules(void **state)
{
	struct nesa_decompose_rule rules[3];
	char r0[] = "*.w2=lorc:q8_0:rank=4", r1[] = "1.*=keep", r2[] = "out=int8:threshold=2";
	struct nesa_decompose_opts o;
	struct nesa_decompose_report rep;
	struct nesa_decomposed d;
	struct nesa_model m, *back;
	struct nesa_tset ts;
	struct nesa_err err;
	const struct nesa_decompose_stat *st;
	static float got[SEQ * VOCAB], again[SEQ * VOCAB];
	char *dir = test_tmpdir(), path[512], *text;
	json_t *j, *rec;

	(void)state;
	assert_non_null(dir);
	make_model(&m, &ts);
	nesa_decompose_opts_init(&o);
	assert_int_equal(nesa_decompose_parse_rule(r0, &rules[0].pattern, &rules[0].spec, &err), NESA_OK);
	assert_int_equal(nesa_decompose_parse_rule(r1, &rules[1].pattern, &rules[1].spec, &err), NESA_OK);
	assert_int_equal(nesa_decompose_parse_rule(r2, &rules[2].pattern, &rules[2].spec, &err), NESA_OK);
	o.rules = rules;
	o.n_rules = 3;
	assert_int_equal(nesa_decompose_parse_method("svd:ratio=0.25", &o.def, &err), NESA_OK);
	assert_int_equal(nesa_decompose_model(&m, &o, &d, &rep, &err), NESA_OK);
	check_totals(&rep);
	st = stat_of(&rep, "0.wq");
	assert_string_equal(st->method, "svd");
	assert_int_equal(st->rank, 8); /* r 128 <= 0.25 64 64 */
	assert_int_equal(stat_of(&rep, "0.w1")->rank, 9); /* r 160 <= 0.25 96 64 */
	st = stat_of(&rep, "1.w2");
	assert_string_equal(st->method, "lorc:q8_0"); /* the first rule matches first */
	assert_string_equal(st->note, "rule '*.w2'");
	assert_int_equal(st->rank, 4);
	/* q8_0 rows of 96 (3 blocks of 34 bytes), f16 factors (64, 4) and (4, 96). */
	assert_int_equal(st->bytes_after, DIM * 3 * 34 + 2 * 4 * (DIM + HID));
	assert_string_equal(stat_of(&rep, "1.wq")->method, "keep");
	assert_string_equal(stat_of(&rep, "1.wq")->note, "rule '1.*'");
	assert_string_equal(stat_of(&rep, "out")->method, "int8");
	/* lorc's factors shrink q8_0's own error. */
	{
		const struct nesa_tensor *w2 = nesa_tset_find(&ts, "0.w2");
		static float qf[DIM * HID];
		double e = 0, n2 = 0;
		void *buf = malloc(DIM * 3 * 34);
		int64_t i;

		assert_non_null(buf);
		nesa_dtype_traits(NESA_Q8_0)->from_f32(w2->data, buf, DIM * HID);
		nesa_dtype_traits(NESA_Q8_0)->to_f32(buf, qf, DIM * HID);
		for (i = 0; i < DIM * HID; i++) {
			const float v = ((const float *)w2->data)[i];

			e += ((double)v - qf[i]) * ((double)v - qf[i]);
			n2 += (double)v * v;
		}
		free(buf);
		print_message("# 0.w2: q8_0 error %.4g, with rank-4 compensation %.4g\n", sqrt(e / n2),
		              stat_of(&rep, "0.w2")->frob);
		assert_true(stat_of(&rep, "0.w2")->frob < sqrt(e / n2));
	}
	/* The report in both forms. */
	j = nesa_decompose_report_json(&rep);
	assert_non_null(j);
	assert_int_equal(json_array_size(json_object_get(j, "tensors")), rep.n);
	assert_int_equal(json_integer_value(json_object_get(j, "bytes_after")), rep.bytes_after);
	assert_true(json_is_null(json_object_get(json_array_get(json_object_get(j, "tensors"), 0), "rank")));
	json_decref(j);
	text = nesa_decompose_report_text(&rep);
	assert_non_null(text);
	assert_non_null(strstr(text, "\n0.wq "));
	assert_non_null(strstr(text, "\ntotal "));
	assert_non_null(strstr(text, "lorc:q8_0"));
	nesa_free(text);

	logits(d.graph, &d.ts, got);
	snprintf(path, sizeof path, "%s/d.nsa", dir);
	assert_int_equal(nesa_decompose_write(&m, &d, path, NULL, &err), NESA_OK);
	assert_ptr_equal(m.weights, &ts);
	assert_int_equal(nesa_model_load(path, NULL, &back, &err), NESA_OK);
	assert_null(nesa_tset_find(back->weights, "0.wq"));
	assert_int_equal(nesa_tset_find(back->weights, "0.wq.a")->dtype, NESA_F16);
	assert_int_equal(nesa_tset_find(back->weights, "0.wq.b")->shape[0], 8);
	assert_int_equal(nesa_tset_find(back->weights, "0.w2.q")->dtype, NESA_Q8_0);
	assert_int_equal(nesa_tset_find(back->weights, "1.wq")->dtype, NESA_F32);
	rec = json_object_get(back->meta, "decomposition");
	assert_string_equal(json_string_value(json_object_get(rec, "default")), "svd");
	assert_string_equal(json_string_value(json_array_get(json_object_get(rec, "rules"), 0)), "*.w2=lorc:q8_0");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(rec, "tensors"), "0.wq"), "rank")), 8);
	assert_memory_equal(back->source_sha256, m.source_sha256, 32);
	logits(back->graph, back->weights, again);
	assert_memory_equal(got, again, sizeof got);
	/* A decomposed model decomposed again keeps its factors and int8 weights. */
	{
		struct nesa_decompose_opts o2;
		struct nesa_decompose_report rep2;
		struct nesa_decomposed d2;

		nesa_decompose_opts_init(&o2);
		assert_int_equal(nesa_decompose_model(back, &o2, &d2, &rep2, &err), NESA_OK);
		assert_string_equal(stat_of(&rep2, "0.wq.a")->method, "keep");
		assert_string_equal(stat_of(&rep2, "out.i8")->method, "keep");
		assert_string_equal(stat_of(&rep2, "1.wq")->method, "int8");
		nesa_decomposed_release(&d2);
		nesa_decompose_report_release(&rep2);
	}
	nesa_model_free(back);
	unlink(path);
	rmdir(dir);
	nesa_decomposed_release(&d);
	nesa_decompose_report_release(&rep);
	release_model(&m, &ts);
}

/* A path under a test data folder, or NULL when it is not there. */
static const char *
data_path(const char *env, const char *rel)
{
	static char buf[4][1024];
	static int k;
	const char *base = getenv(env);
	struct stat sb;

	if (base == NULL)
		return NULL;
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof buf[k], "%s/%s", base, rel);
	return stat(buf[k], &sb) == 0 ? buf[k] : NULL;
}

static const char story_text[] =
	"Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.\n\n"
	"One day, she saw a big red ball in the park. She ran to the ball and kicked it very hard.\n\n"
	"Tom was a happy dog. He liked to run and jump with his friend, a small cat named Kitty.\n\n"
	"The sun went down and the stars came out. Lily said good night to her mom and went to bed.\n\n";

/* The mean output error of the low-rank items of a report. */
static double
mean_out_err(const struct nesa_decompose_report *rep)
{
	double s = 0;
	size_t i, n = 0;

	for (i = 0; i < rep->n; i++)
		if (rep->items[i].rank > 0) {
			assert_true(isfinite(rep->items[i].out_err));
			s += rep->items[i].out_err;
			n++;
		}
	assert_true(n > 0);
	return s / (double)n;
}

/*
 * Text calibration on the bundled story model: the token limit, static
 * outliers with a low threshold, and whitening beating plain SVD (and
 * ASVD not losing to it) in output error at the same rank.
 */
static void
test_calib_text(void **state)
{
	const char *bin = data_path("NESA_MODELS", "story/model.bin");
	static const char *const methods[] = {"svd:rank=8", "asvd:rank=8", "whiten:rank=8"};
	struct nesa_calib_opts co = {0};
	struct nesa_decompose_opts o;
	struct nesa_decompose_report rep;
	struct nesa_decomposed d;
	struct nesa_model *m;
	struct nesa_err err;
	char *dir = test_tmpdir(), path[512];
	double e[3];
	FILE *f;
	size_t i;

	(void)state;
	if (bin == NULL)
		skip();
	assert_non_null(dir);
	snprintf(path, sizeof path, "%s/calib.txt", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	for (i = 0; i < 8; i++)
		fputs(story_text, f);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(nesa_model_load(bin, NULL, &m, &err), NESA_OK);
	co.path = path;
	co.limit = 300;
	nesa_decompose_opts_init(&o);
	o.calib = &co;
	o.threshold = 2.0;
	assert_int_equal(nesa_decompose_model(m, &o, &d, &rep, &err), NESA_OK);
	assert_int_equal(rep.calib_rows, 300);
	check_totals(&rep);
	assert_true(rep.outlier_cols > 0);
	assert_true(rep.outlier_cols < rep.int8_cols);
	assert_non_null(nesa_tset_find(&d.ts, "layers.0.wq.oi"));
	assert_true(isfinite(stat_of(&rep, "layers.0.wq")->out_err));
	assert_true(stat_of(&rep, "layers.0.wq")->out_err < 0.05);
	nesa_decomposed_release(&d);
	nesa_decompose_report_release(&rep);
	for (i = 0; i < 3; i++) {
		assert_int_equal(nesa_decompose_parse_method(methods[i], &o.def, &err), NESA_OK);
		assert_int_equal(nesa_decompose_model(m, &o, &d, &rep, &err), NESA_OK);
		e[i] = mean_out_err(&rep);
		nesa_decomposed_release(&d);
		nesa_decompose_report_release(&rep);
	}
	print_message("# story, rank 8, mean output error: svd %.4f, asvd %.4f, whiten %.4f\n", e[0], e[1], e[2]);
	assert_true(e[2] < 0.9 * e[0]);
	assert_true(e[1] < e[0]);
	/* Calibration text that is not there. */
	co.path = "/nonexistent/calib.txt";
	assert_int_equal(nesa_decompose_model(m, &o, &d, &rep, &err), NESA_ENOENT);
	assert_non_null(strstr(err.msg, "/nonexistent/calib.txt"));
	nesa_model_free(m);
	unlink(path);
	rmdir(dir);
}

/* Image calibration on the bundled digits CNN: its classifier gets outliers and ASVD. */
static void
test_calib_images(void **state)
{
	const char *json = data_path("NESA_MODELS", "digits/digits.json");
	const char *img = data_path("NESA_MODELS", "digits/test_images.u8");
	const char *lab = data_path("NESA_MODELS", "digits/test_labels.u8");
	struct nesa_calib_opts co = {0};
	struct nesa_decompose_opts o;
	struct nesa_decompose_report rep;
	struct nesa_decomposed d;
	struct nesa_model *m;
	struct nesa_err err;

	(void)state;
	if (json == NULL || img == NULL || lab == NULL)
		skip();
	assert_int_equal(nesa_model_load(json, NULL, &m, &err), NESA_OK);
	co.path = img;
	co.labels = lab;
	co.limit = 64;
	nesa_decompose_opts_init(&o);
	o.calib = &co;
	assert_int_equal(nesa_decompose_model(m, &o, &d, &rep, &err), NESA_OK);
	assert_int_equal(rep.calib_rows, 64);
	assert_string_equal(stat_of(&rep, "fc.weight")->method, "int8");
	assert_string_equal(stat_of(&rep, "conv1.weight")->note, "not a linear weight");
	assert_int_equal(rep.int8_cols, 128);
	assert_true(stat_of(&rep, "fc.weight")->out_err < 0.02);
	nesa_decomposed_release(&d);
	nesa_decompose_report_release(&rep);
	assert_int_equal(nesa_decompose_parse_method("asvd:rank=4", &o.def, &err), NESA_OK);
	assert_int_equal(nesa_decompose_model(m, &o, &d, &rep, &err), NESA_OK);
	assert_int_equal(stat_of(&rep, "fc.weight")->rank, 4);
	nesa_decomposed_release(&d);
	nesa_decompose_report_release(&rep);
	/* Images need their labels. */
	co.labels = NULL;
	assert_int_equal(nesa_decompose_model(m, &o, &d, &rep, &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "images need their labels file (--labels)"));
	nesa_model_free(m);
}

/* Fault injection: every allocation failure is a clean NESA_ENOMEM. */
static void
test_faults(void **state)
{
	enum { M = 12, N = 10 };
	float w[M * N], x[20 * N];
	double wd[M * N], gram[N * N] = {0}, cs[N];
	uint64_t seed = 31;
	long n;
	int i, done, which;

	(void)state;
	fill(w, M * N, &seed, 1.0f);
	fill(x, 20 * N, &seed, 2.0f);
	for (i = 0; i < M * N; i++)
		wd[i] = w[i];
	for (i = 0; i < N; i++)
		cs[i] = 0.5 + i;
	for (i = 0; i < 20; i++) {
		int a, b;

		for (a = 0; a < N; a++)
			for (b = 0; b <= a; b++)
				gram[a * N + b] += (double)x[i * N + a] * x[i * N + b];
	}
	/* The numerics. */
	for (which = 0; which < 4; which++)
		for (n = 1, done = 0; !done; n++) {
			struct nesa_lowrank_opts o = {0};
			struct nesa_lowrank lr;
			struct nesa_svd sv;
			struct nesa_int8 q;
			struct nesa_err err;
			enum nesa_status s;

			o.rank = (struct nesa_rank){NESA_RANK_FIXED, 3};
			o.scale = which == 1 ? NESA_SCALE_ASVD : which == 2 ? NESA_SCALE_WHITEN : NESA_SCALE_NONE;
			o.col_scale = cs;
			o.gram = gram;
			test_faults_arm(n);
			if (which == 0)
				s = nesa_svd_compute(wd, M, N, NESA_SVD_AUTO, "w", &sv, &err);
			else if (which < 3)
				s = nesa_lowrank_compute(w, M, N, &o, "w", &lr, &err);
			else
				s = nesa_int8_compute(w, M, N, (const float *)x, 0.5, &q, &err);
			test_faults_disarm();
			if (s == NESA_OK) {
				done = 1;
				if (which == 0)
					nesa_svd_release(&sv);
				else if (which < 3)
					nesa_lowrank_release(&lr);
				else
					nesa_int8_release(&q);
			} else {
				assert_int_equal(s, NESA_ENOMEM);
			}
			assert_true(n < 1000);
		}
	/* Calibration statistics. */
	for (n = 1, done = 0; !done; n++) {
		struct nesa_calib_opts co = {0};
		struct nesa_calib *c = NULL;
		struct nesa_err err;
		enum nesa_status s;

		test_faults_arm(n);
		s = nesa_calib_new(&co, &c, &err);
		for (i = 0; i < 20 && s == NESA_OK; i++)
			s = nesa_calib_want(c, i, 1, N, i % 2 == 0, &err);
		for (i = 0; i < 20 && s == NESA_OK; i++)
			s = nesa_calib_add(c, i, 1, x, 20, &err);
		test_faults_disarm();
		nesa_calib_free(c);
		if (s == NESA_OK)
			done = 1;
		else
			assert_int_equal(s, NESA_ENOMEM);
		assert_true(n < 1000);
	}
	/* The whole model: int8, svd and lorc, with the report in both forms. */
	{
		struct nesa_decompose_rule rules[2];
		char r0[] = "*.w2=lorc:q4_0:rank=2", r1[] = "*.wq=svd";
		struct nesa_decompose_opts o;
		struct nesa_model m;
		struct nesa_tset ts;
		struct nesa_err err;

		make_model(&m, &ts);
		nesa_decompose_opts_init(&o);
		assert_int_equal(nesa_decompose_parse_rule(r0, &rules[0].pattern, &rules[0].spec, &err), NESA_OK);
		assert_int_equal(nesa_decompose_parse_rule(r1, &rules[1].pattern, &rules[1].spec, &err), NESA_OK);
		o.rules = rules;
		o.n_rules = 2;
		for (n = 1, done = 0; !done; n++) {
			struct nesa_decompose_report rep = {0};
			struct nesa_decomposed d;
			enum nesa_status s;
			char *text = NULL;
			json_t *j = NULL;

			test_faults_arm(n);
			s = nesa_decompose_model(&m, &o, &d, &rep, &err);
			if (s == NESA_OK) {
				text = nesa_decompose_report_text(&rep);
				j = nesa_decompose_report_json(&rep);
			}
			test_faults_disarm();
			if (s == NESA_OK && text != NULL && j != NULL)
				done = 1;
			else if (s != NESA_OK)
				assert_int_equal(s, NESA_ENOMEM);
			nesa_free(text);
			json_decref(j);
			nesa_decomposed_release(&d);
			nesa_decompose_report_release(&rep);
			assert_true(n < 100000);
		}
		release_model(&m, &ts);
	}
	/* With a calibration run over images. */
	{
		const char *json = data_path("NESA_MODELS", "digits/digits.json");
		const char *img = data_path("NESA_MODELS", "digits/test_images.u8");
		const char *lab = data_path("NESA_MODELS", "digits/test_labels.u8");
		struct nesa_calib_opts co = {0};
		struct nesa_decompose_opts o;
		struct nesa_model *m;
		struct nesa_err err;

		if (json == NULL || img == NULL || lab == NULL)
			return;
		assert_int_equal(nesa_model_load(json, NULL, &m, &err), NESA_OK);
		co.path = img;
		co.labels = lab;
		co.limit = 8;
		nesa_decompose_opts_init(&o);
		assert_int_equal(nesa_decompose_parse_method("whiten:rank=2", &o.def, &err), NESA_OK);
		o.calib = &co;
		for (n = 1, done = 0; !done; n++) {
			struct nesa_decompose_report rep = {0};
			struct nesa_decomposed d;
			enum nesa_status s;

			test_faults_arm(n);
			s = nesa_decompose_model(m, &o, &d, &rep, &err);
			test_faults_disarm();
			if (s == NESA_OK)
				done = 1;
			else
				assert_int_equal(s, NESA_ENOMEM);
			nesa_decomposed_release(&d);
			nesa_decompose_report_release(&rep);
			assert_true(n < 100000);
		}
		nesa_model_free(m);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_svd),
		cmocka_unit_test(test_lowrank_plain),
		cmocka_unit_test(test_lowrank_asvd),
		cmocka_unit_test(test_lowrank_whiten),
		cmocka_unit_test(test_rank_rules),
		cmocka_unit_test(test_int8),
		cmocka_unit_test(test_calib_stats),
		cmocka_unit_test(test_model_int8),
		cmocka_unit_test(test_model_svd),
		cmocka_unit_test(test_model_rules),
		cmocka_unit_test(test_calib_text),
		cmocka_unit_test(test_calib_images),
		cmocka_unit_test(test_faults),
	};

	return cmocka_run_group_tests_name("decompose", tests, NULL, NULL);
}
