/* SPDX-License-Identifier: MIT */
/*
 * The planner's solvers; see planner.h for the model.
 *
 * Every solver is one dynamic programme over "blocks [0, i) done, the last
 * stage ran on node n", relaxed stage by stage.  A stage of blocks [i, j) on
 * node n is reached from a state (i, p) through the hop p -> n at cut i, so
 * the programme splits into two steps per new node n: A[i] = best state at
 * cut i combined with the hop into n, then G[j] = min over i of A[i]
 * combined with the stage time of [i, j) on n.  That split is what keeps the
 * exact subset DP at O(2^K K L (K + L)) and the fixed-order DP at
 * O(K^2 L + K L^2) (O(K L^2) when all node-to-node links are alike).
 *
 * Three combination modes share the code: SUM (latency: stage times and hop
 * latencies add up), MAX (throughput: the largest stage time or hop
 * occupancy) and OVER (memory diagnosis: total bytes by which stages
 * overflow their nodes, with no memory constraint).  A threshold T excludes
 * every stage and hop whose occupancy exceeds it, which turns the SUM
 * programme into "least latency with bottleneck <= T".  The pipeline
 * objective latency + (B - 1) x bottleneck is then solved exactly by
 * walking down the latency/bottleneck Pareto front (walk()): Alpa's
 * enumeration of t_max, visiting only the thresholds that change the
 * answer.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "planner.h"

enum mode { M_SUM, M_MAX, M_OVER };

struct ctx {
	const struct nesa_problem *p;
	int L, K;
	double *PF, *PR, *PM; /* (L + 1) prefix sums of flops, read bytes, resident bytes */
	double *spf, *spbm;   /* (K) seconds per FLOP, seconds per weight byte */
	double *ovh, *cap;    /* (K) per-stage overhead (s), usable bytes */
	bool uniform;         /* every node-to-node link alike */
	enum mode mode;
	double T;             /* stages and hops with occupancy > T are excluded */
	uint64_t evals;
	double work;          /* inner-loop iterations spent */
};

#define INF HUGE_VAL

static void
ctx_release(struct ctx *c)
{
	nesa_free(c->PF);
	nesa_free(c->spf);
}

/* Prefix sums over the blocks; mem (may be NULL: resident bytes) gives PM. */
static enum nesa_status
ctx_init(struct ctx *c, const struct nesa_problem *p, const double *mem, struct nesa_err *err)
{
	int L = p->n_blocks, K = p->n_nodes, j, n, a, b;
	double rtt0 = 0, spb0 = 0;
	bool first = true;

	memset(c, 0, sizeof *c);
	c->p = p;
	c->L = L;
	c->K = K;
	c->PF = nesa_malloc(3 * (size_t)(L + 1) * sizeof(double));
	c->spf = nesa_malloc(4 * (size_t)K * sizeof(double));
	if (c->PF == NULL || c->spf == NULL) {
		ctx_release(c);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	c->PR = c->PF + L + 1;
	c->PM = c->PR + L + 1;
	c->spbm = c->spf + K;
	c->ovh = c->spbm + K;
	c->cap = c->ovh + K;
	c->PF[0] = c->PR[0] = c->PM[0] = 0;
	for (j = 0; j < L; j++) {
		c->PF[j + 1] = c->PF[j] + p->blocks[j].flops;
		c->PR[j + 1] = c->PR[j] + p->blocks[j].read_bytes;
		c->PM[j + 1] = c->PM[j] + (mem != NULL ? mem[j] : p->blocks[j].mem_bytes);
	}
	for (n = 0; n < K; n++) {
		c->spf[n] = 1.0 / p->nodes[n].flops_per_s;
		c->spbm[n] = 1.0 / p->nodes[n].bytes_per_s;
		c->ovh[n] = p->nodes[n].overhead_s;
		c->cap[n] = p->nodes[n].cap_bytes;
	}
	c->uniform = true;
	for (a = 0; a < K && c->uniform; a++)
		for (b = 0; b < K; b++) {
			size_t x = (size_t)a * (size_t)(K + 1) + (size_t)b;

			if (a == b)
				continue;
			if (first) {
				rtt0 = p->rtt_s[x];
				spb0 = p->spb[x];
				first = false;
			} else if (p->rtt_s[x] != rtt0 || p->spb[x] != spb0) {
				c->uniform = false;
				break;
			}
		}
	c->T = INF;
	return NESA_OK;
}

static inline double
st_time(const struct ctx *c, int n, int i, int j)
{
	double a = (c->PF[j] - c->PF[i]) * c->spf[n], b = (c->PR[j] - c->PR[i]) * c->spbm[n];

	return (a > b ? a : b) + c->ovh[n];
}

static inline double
hop_occ(const struct ctx *c, int from, int to, int cut)
{
	return c->p->cut_bytes[cut] * c->p->spb[(size_t)from * (size_t)(c->K + 1) + (size_t)to];
}

static inline double
hop_lat(const struct ctx *c, int from, int to, int cut)
{
	return c->p->rtt_s[(size_t)from * (size_t)(c->K + 1) + (size_t)to] * 0.5 + hop_occ(c, from, to, cut);
}

/* A hop's contribution in the current mode, INF when excluded. */
static inline double
hop_val(const struct ctx *c, int from, int to, int cut)
{
	double occ;

	if (c->mode == M_OVER)
		return 0;
	occ = hop_occ(c, from, to, cut);
	if (occ > c->T)
		return INF;
	return c->mode == M_MAX ? occ : hop_lat(c, from, to, cut);
}

static inline double
combine(const struct ctx *c, double a, double b)
{
	if (c->mode == M_MAX)
		return a > b ? a : b;
	return a + b;
}

/*
 * G[j] (j = 1..L) = min over i < j of A[i] (+) cost of stage [i, j) on n;
 * bi[j] = the best i, or -1.  Going down from i = j - 1, the stage only
 * grows, so the memory cap and the threshold end the scan.
 */
static void
relax(struct ctx *c, int n, const double *A, double *G, int *bi)
{
	int L = c->L, i, j;
	double cap = c->cap[n];

	for (j = 1; j <= L; j++) {
		double best = INF;
		int arg = -1;

		for (i = j - 1; i >= 0; i--) {
			double t, v;

			if (c->mode == M_OVER) {
				t = c->PM[j] - c->PM[i] - cap;
				t = t > 0 ? t : 0;
			} else {
				if (c->PM[j] - c->PM[i] > cap)
					break;
				t = st_time(c, n, i, j);
				if (t > c->T)
					break;
			}
			if (A[i] == INF)
				continue;
			v = combine(c, A[i], t);
			if (v < best) {
				best = v;
				arg = i;
			}
		}
		G[j] = best;
		bi[j] = arg;
		c->work += j;
	}
}

/*
 * A[i] = min(A[i], G[i] (+) hop from endpoint a to b at cut i) for the
 * inner cuts i = 1..L-1, recording tag in from[] where it wins.  The hot
 * loop of the DPs, written per mode so the compiler can keep it simple.
 */
static void
hops_into(struct ctx *c, const double *G, int a, int b, int tag, double *A, int *from)
{
	size_t x = (size_t)a * (size_t)(c->K + 1) + (size_t)b;
	double rh = c->p->rtt_s[x] * 0.5, sp = c->p->spb[x], T = c->T;
	const double *cut = c->p->cut_bytes;
	int L = c->L, i;

	c->work += L;
	for (i = 1; i < L; i++) {
		double v, occ;

		if (G[i] == INF)
			continue;
		occ = cut[i] * sp;
		if (c->mode == M_OVER)
			v = G[i];
		else if (occ > T)
			continue;
		else if (c->mode == M_MAX)
			v = G[i] > occ ? G[i] : occ;
		else
			v = G[i] + rh + occ;
		if (v < A[i]) {
			A[i] = v;
			from[i] = tag;
		}
	}
}

static enum nesa_status
sol_reserve(struct nesa_solution *s, int n, struct nesa_err *err)
{
	struct nesa_pstage *st = nesa_realloc(s->stages, (size_t)(n > 0 ? n : 1) * sizeof *st);

	if (st == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	s->stages = st;
	return NESA_OK;
}

/* Latency and bottleneck of a solution with the context's own arithmetic. */
static void
ctx_measure(const struct ctx *c, const struct nesa_solution *s, double *lat, double *occ)
{
	int k, prev = c->K;

	*lat = 0;
	*occ = 0;
	for (k = 0; k < s->n_stages; k++) {
		const struct nesa_pstage *st = &s->stages[k];
		double t = st_time(c, st->node, st->first, st->first + st->count);
		double h = hop_occ(c, prev, st->node, st->first);

		*lat += hop_lat(c, prev, st->node, st->first) + t;
		*occ = fmax(*occ, fmax(t, h));
		prev = st->node;
	}
	if (s->n_stages > 0) {
		*lat += hop_lat(c, prev, c->K, c->L);
		*occ = fmax(*occ, hop_occ(c, prev, c->K, c->L));
	}
}

/* ---- exact: DP over subsets of nodes ---- */

double
nesa_planner_exact_states(const struct nesa_problem *p)
{
	return ldexp((double)p->n_nodes * (p->n_blocks + 1), p->n_nodes);
}

#define BP_CLIENT 0xffu
#define BP_PACK(prev, i) (((uint32_t)(prev) << 24) | (uint32_t)(i))

/*
 * G[mask][n][j]: stages on exactly the nodes of mask, the last on n ending
 * at block j.  Each (mask, n) is produced from exactly one predecessor mask
 * (mask without n), so G is written once per state and needs no min-merge.
 */
static enum nesa_status
exact_run(struct ctx *c, struct nesa_solution *out, struct nesa_err *err)
{
	int K = c->K, L = c->L, W = L + 1, m, n, i, j, best_n = -1;
	uint32_t nmask = 1u << K, mask, best_mask = 0;
	size_t states = (size_t)nmask * (size_t)K * (size_t)W;
	double *G = nesa_malloc(states * sizeof *G), *A = nesa_malloc(2 * (size_t)W * sizeof *A), *Gt;
	uint32_t *BP = nesa_malloc(states * sizeof *BP);
	int *from = nesa_malloc(2 * (size_t)W * sizeof *from), *bi;
	unsigned char *reach = nesa_calloc(nmask, 1);
	double best = INF;
	enum nesa_status s = NESA_OK;

	out->n_stages = 0;
	if (G == NULL || A == NULL || BP == NULL || from == NULL || reach == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory for the exact solver (%zu states)", states);
		goto done;
	}
	Gt = A + W;
	bi = from + W;
	c->evals++;
	for (i = 0; i < (int)(states / (size_t)W); i++)
		for (j = 0; j < W; j++)
			G[(size_t)i * (size_t)W + (size_t)j] = INF;
	reach[0] = 1;
	for (mask = 0; mask < nmask; mask++) {
		if (!reach[mask])
			continue;
		for (m = 0; m < K; m++) {
			uint32_t nm = mask | (1u << m);
			double *Gm = G + ((size_t)nm * (size_t)K + (size_t)m) * (size_t)W;
			uint32_t *Bm = BP + ((size_t)nm * (size_t)K + (size_t)m) * (size_t)W;
			bool any = false;

			if (mask & (1u << m))
				continue;
			for (i = 0; i < W; i++) {
				A[i] = INF;
				from[i] = -1;
			}
			if (mask == 0) {
				A[0] = hop_val(c, K, m, 0);
				from[0] = BP_CLIENT;
				any = A[0] < INF;
			} else {
				for (n = 0; n < K; n++)
					if (mask & (1u << n))
						hops_into(c, G + ((size_t)mask * (size_t)K + (size_t)n) * (size_t)W, n, m, n, A,
						          from);
				for (i = 1; i < L && !any; i++)
					any = A[i] < INF;
			}
			if (!any)
				continue;
			relax(c, m, A, Gt, bi);
			for (j = 1; j <= L; j++) {
				if (Gt[j] == INF)
					continue;
				Gm[j] = Gt[j];
				Bm[j] = BP_PACK(from[bi[j]], bi[j]);
				reach[nm] = 1;
			}
		}
	}
	/* The way back to the client closes every complete chain. */
	for (mask = 1; mask < nmask; mask++) {
		if (!reach[mask])
			continue;
		for (n = 0; n < K; n++) {
			double g, v;

			if (!(mask & (1u << n)))
				continue;
			g = G[((size_t)mask * (size_t)K + (size_t)n) * (size_t)W + (size_t)L];
			if (g == INF)
				continue;
			v = combine(c, g, hop_val(c, n, K, L));
			if (v < best) {
				best = v;
				best_mask = mask;
				best_n = n;
			}
		}
	}
	if (best_n < 0)
		goto done;
	s = sol_reserve(out, __builtin_popcount(best_mask), err);
	if (s != NESA_OK)
		goto done;
	{
		int k = __builtin_popcount(best_mask), cur = best_n;

		mask = best_mask;
		j = L;
		while (k > 0 && NESA_ALWAYS(cur >= 0)) {
			uint32_t bp = BP[((size_t)mask * (size_t)K + (size_t)cur) * (size_t)W + (size_t)j];
			int prev = (int)(bp >> 24), i0 = (int)(bp & 0xffffffu);

			k--;
			out->stages[k] = (struct nesa_pstage){cur, i0, j - i0};
			mask &= ~(1u << cur);
			j = i0;
			cur = prev == (int)BP_CLIENT ? -1 : prev;
		}
		out->n_stages = __builtin_popcount(best_mask);
	}
done:
	nesa_free(G);
	nesa_free(A);
	nesa_free(BP);
	nesa_free(from);
	nesa_free(reach);
	return s;
}

/* ---- the fixed-order DP ---- */

struct order_arg {
	const int *ord;
	int n;
};

static enum nesa_status
order_run(struct ctx *c, const struct order_arg *o, struct nesa_solution *out, struct nesa_err *err)
{
	int K = c->K, L = c->L, W = L + 1, S = o->n, k, k2, i, j, best_k = -1;
	size_t cells = (size_t)(S > 0 ? S : 1) * (size_t)W;
	double *G = nesa_malloc(cells * sizeof *G), *A = nesa_malloc(3 * (size_t)W * sizeof *A);
	int *BPk = nesa_malloc(cells * sizeof *BPk), *BPi = nesa_malloc(cells * sizeof *BPi);
	int *from = nesa_malloc(3 * (size_t)W * sizeof *from);
	double *Gmin, *Gt, best = INF;
	int *Garg, *bi;
	enum nesa_status s = NESA_OK;

	out->n_stages = 0;
	if (G == NULL || A == NULL || BPk == NULL || BPi == NULL || from == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	Gmin = A + W;
	Gt = Gmin + W;
	Garg = from + W;
	bi = Garg + W;
	c->evals++;
	for (i = 0; i < W; i++) {
		Gmin[i] = INF;
		Garg[i] = -1;
	}
	for (k2 = 0; k2 < S; k2++) {
		int n2 = o->ord[k2];
		double *Gk = G + (size_t)k2 * (size_t)W;

		for (i = 0; i < W; i++) {
			A[i] = INF;
			from[i] = -1;
		}
		A[0] = hop_val(c, K, n2, 0);
		from[0] = S; /* the client */
		if (c->uniform) {
			/* Every earlier node reaches n2 over the same link: only the best matters. */
			for (i = 1; i < L; i++)
				if (Gmin[i] < INF) {
					A[i] = combine(c, Gmin[i], hop_val(c, o->ord[Garg[i]], n2, i));
					from[i] = Garg[i];
				}
			c->work += L;
		} else {
			for (k = 0; k < k2; k++)
				hops_into(c, G + (size_t)k * (size_t)W, o->ord[k], n2, k, A, from);
		}
		relax(c, n2, A, Gt, bi);
		for (j = 0; j < W; j++) {
			Gk[j] = j > 0 ? Gt[j] : INF;
			BPk[(size_t)k2 * (size_t)W + (size_t)j] = j > 0 && bi[j] >= 0 ? from[bi[j]] : -1;
			BPi[(size_t)k2 * (size_t)W + (size_t)j] = j > 0 ? bi[j] : -1;
		}
		for (i = 1; i < L; i++)
			if (Gk[i] < Gmin[i]) {
				Gmin[i] = Gk[i];
				Garg[i] = k2;
			}
	}
	for (k = 0; k < S; k++) {
		double g = G[(size_t)k * (size_t)W + (size_t)L], v;

		if (g == INF)
			continue;
		v = combine(c, g, hop_val(c, o->ord[k], K, L));
		if (v < best) {
			best = v;
			best_k = k;
		}
	}
	if (best_k < 0)
		goto done;
	{
		int n_st = 0, cur = best_k;

		j = L;
		while (cur != S && cur >= 0) {
			n_st++;
			i = BPi[(size_t)cur * (size_t)W + (size_t)j];
			cur = BPk[(size_t)cur * (size_t)W + (size_t)j];
			j = i;
		}
		s = sol_reserve(out, n_st, err);
		if (s != NESA_OK)
			goto done;
		out->n_stages = n_st;
		cur = best_k;
		j = L;
		while (n_st > 0) {
			int prev = BPk[(size_t)cur * (size_t)W + (size_t)j];

			i = BPi[(size_t)cur * (size_t)W + (size_t)j];
			out->stages[--n_st] = (struct nesa_pstage){o->ord[cur], i, j - i};
			cur = prev;
			j = i;
		}
	}
done:
	nesa_free(G);
	nesa_free(A);
	nesa_free(BPk);
	nesa_free(BPi);
	nesa_free(from);
	return s;
}

/* ---- objectives on top of a DP ---- */

typedef enum nesa_status (*run_fn)(struct ctx *c, const void *arg, struct nesa_solution *out,
                                   struct nesa_err *err);

static enum nesa_status
run_exact(struct ctx *c, const void *arg, struct nesa_solution *out, struct nesa_err *err)
{
	(void)arg;
	return exact_run(c, out, err);
}

static enum nesa_status
run_order(struct ctx *c, const void *arg, struct nesa_solution *out, struct nesa_err *err)
{
	return order_run(c, arg, out, err);
}

/*
 * Solves p's objective with one DP.  Latency: SUM.  Throughput: MAX gives
 * the least bottleneck Tmin, then SUM under Tmin the least latency among
 * those plans.  Pipeline, g = latency + (B - 1) x bottleneck: with f0 the
 * latency at Tmin and L* the unconstrained least latency, no plan whose
 * bottleneck exceeds Tmax = Tmin + (f0 - L*) / (B - 1) beats the plan at
 * Tmin, so the exact walk starts at Tmax and goes down the Pareto front:
 * each step forbids every resource at least as slow as the last answer's
 * bottleneck, until no lower threshold can win.  The heuristic instead
 * samples GRID thresholds in [Tmin, Tmax], denser near Tmin.
 */
#define GRID 6

/* Runs at threshold T; keeps the result in *out when its g beats *best. */
static enum nesa_status
try_threshold(struct ctx *c, run_fn run, const void *arg, double T, struct nesa_solution *out,
              struct nesa_solution *cur, double *best, double *f, double *m, struct nesa_err *err)
{
	enum nesa_status s;
	double g;

	c->mode = M_SUM;
	c->T = T;
	*f = *m = INF;
	s = run(c, arg, cur, err);
	if (s != NESA_OK || cur->n_stages == 0)
		return s;
	ctx_measure(c, cur, f, m);
	g = *f + (c->p->microbatches - 1) * *m;
	if (g < *best) {
		struct nesa_solution t = *out;

		*best = g;
		*out = *cur;
		*cur = t;
	}
	return NESA_OK;
}

static enum nesa_status
walk(struct ctx *c, run_fn run, const void *arg, bool exact, struct nesa_solution *out,
     struct nesa_err *err)
{
	const struct nesa_problem *p = c->p;
	struct nesa_solution cur;
	double tmin, tmax, f0, lstar, mstar, f, m, best = INF, T;
	int B1 = p->microbatches - 1, i;
	enum nesa_status s;

	out->n_stages = 0;
	out->value = INF;
	if (p->objective == NESA_OBJ_LATENCY || (p->objective == NESA_OBJ_PIPELINE && B1 <= 0)) {
		c->mode = M_SUM;
		c->T = INF;
		return run(c, arg, out, err);
	}
	c->mode = M_MAX;
	c->T = INF;
	if ((s = run(c, arg, out, err)) != NESA_OK || out->n_stages == 0)
		return s;
	ctx_measure(c, out, &f0, &tmin);
	c->mode = M_SUM;
	c->T = tmin;
	if ((s = run(c, arg, out, err)) != NESA_OK || p->objective == NESA_OBJ_THROUGHPUT)
		return s;
	ctx_measure(c, out, &f0, &m);
	best = f0 + B1 * m;
	nesa_solution_init(&cur);
	s = try_threshold(c, run, arg, INF, out, &cur, &best, &lstar, &mstar, err);
	tmax = fmin(mstar, tmin + (f0 - lstar) / B1);
	if (s == NESA_OK && !exact) {
		for (i = 1; i < GRID && s == NESA_OK; i++)
			s = try_threshold(c, run, arg, tmin + (tmax - tmin) * i * i / (GRID * GRID), out, &cur, &best,
			                  &f, &m, err);
	} else {
		for (T = tmax; s == NESA_OK;) {
			s = try_threshold(c, run, arg, T, out, &cur, &best, &f, &m, err);
			if (s != NESA_OK || f == INF || f + B1 * tmin >= best || m <= tmin)
				break;
			T = nextafter(m, -INF);
		}
	}
	nesa_solution_release(&cur);
	return s;
}

enum nesa_status
nesa_planner_order(const struct nesa_problem *p, const int *order, int n, struct nesa_solution *out,
                   struct nesa_err *err)
{
	struct ctx c;
	struct order_arg o = {order, n};
	enum nesa_status s = ctx_init(&c, p, NULL, err);

	if (s != NESA_OK)
		return s;
	s = walk(&c, run_order, &o, true, out, err);
	ctx_release(&c);
	out->value = s == NESA_OK && out->n_stages > 0 ? nesa_planner_value(p, out) : INF;
	return s;
}

/* ---- the heuristic for many nodes ---- */

struct rng {
	uint64_t s;
};

static uint64_t
rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double
rng_unit(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1p-53;
}

struct heur {
	struct ctx *c;
	int *pool, np;        /* candidate nodes */
	double *speed;        /* (K) tokens/s of an average block, for ordering */
	int *buf;             /* scratch order */
	struct nesa_solution best, tmp;
	double best_v;        /* ctx objective of best */
	double budget;        /* inner-loop iterations allowed */
};

/* Objective of a solution with the context's arithmetic. */
static double
ctx_value(const struct ctx *c, const struct nesa_solution *s)
{
	double lat, occ;

	if (s->n_stages == 0)
		return INF;
	ctx_measure(c, s, &lat, &occ);
	switch (c->p->objective) {
	case NESA_OBJ_LATENCY: return lat;
	case NESA_OBJ_THROUGHPUT: return occ;
	default: return lat + (c->p->microbatches - 1) * occ;
	}
}

/*
 * Runs the order DP on ord[0..n); keeps the result if it beats the best.
 * *value (may be NULL) is the result's objective.
 */
static enum nesa_status
try_order(struct heur *h, const int *ord, int n, bool *improved, double *value, struct nesa_err *err)
{
	struct order_arg o = {ord, n};
	enum nesa_status s = walk(h->c, run_order, &o, false, &h->tmp, err);
	double v;

	if (improved != NULL)
		*improved = false;
	if (s != NESA_OK)
		return s;
	v = ctx_value(h->c, &h->tmp);
	if (value != NULL)
		*value = v;
	/* A relative margin keeps rounding noise from cycling the local search. */
	if (v < h->best_v * (1 - 1e-12)) {
		struct nesa_solution t = h->best;

		h->best = h->tmp;
		h->tmp = t;
		h->best_v = v;
		if (improved != NULL)
			*improved = true;
	}
	return NESA_OK;
}

static bool
out_of_budget(const struct heur *h)
{
	return h->c->work >= h->budget;
}

static int
cmp_key_desc(const void *a, const void *b, void *ctx)
{
	const double *key = ctx;
	double x = key[*(const int *)a], y = key[*(const int *)b];

	if (x != y)
		return x > y ? -1 : 1;
	return *(const int *)a - *(const int *)b;
}

/* Sorts idx[0..n) by key descending (ties by index, so the order is stable). */
static void
sort_by(int *idx, int n, const double *key)
{
	qsort_r(idx, (size_t)n, sizeof *idx, cmp_key_desc, (void *)(uintptr_t)key);
}

/*
 * Local search on the best plan's node sequence U: insert an unused pool
 * node somewhere (the DP may then move blocks onto it or drop another
 * node), swap two nodes, reverse.  First improvement, until a full pass
 * finds nothing or the budget runs out.
 */
static enum nesa_status
local_search(struct heur *h, struct nesa_err *err)
{
	int K = h->c->K;
	bool again = true;
	enum nesa_status s = NESA_OK;

	while (again && !out_of_budget(h)) {
		int S = h->best.n_stages, i, j, a, n_cand = 0, *U = h->buf, *V = h->buf + K;
		int cand[8];
		bool imp = false, *used = (bool *)(h->buf + 3 * K);

		again = false;
		memset(used, 0, (size_t)K * sizeof *used);
		for (i = 0; i < S; i++) {
			U[i] = h->best.stages[i].node;
			used[U[i]] = true;
		}
		for (i = 0; i < h->np && n_cand < 8; i++)
			if (!used[h->pool[i]])
				cand[n_cand++] = h->pool[i];
		/* Insertions: at every position for small plans, at a stride for large ones. */
		for (a = 0; a < n_cand && !imp && s == NESA_OK; a++) {
			int step = S > 16 ? (S + 7) / 8 : 1;

			for (i = 0; i <= S && !imp && !out_of_budget(h); i += step) {
				memcpy(V, U, (size_t)i * sizeof *V);
				V[i] = cand[a];
				memcpy(V + i + 1, U + i, (size_t)(S - i) * sizeof *V);
				s = try_order(h, V, S + 1, &imp, NULL, err);
				if (s != NESA_OK)
					return s;
			}
		}
		/* Swaps: all pairs for small plans, near neighbours for large ones. */
		for (i = 0; i < S && !imp; i++)
			for (j = i + 1; j < S && !imp && !out_of_budget(h); j++) {
				if (S > 16 && j > i + 2)
					break;
				memcpy(V, U, (size_t)S * sizeof *V);
				V[i] = U[j];
				V[j] = U[i];
				s = try_order(h, V, S, &imp, NULL, err);
				if (s != NESA_OK)
					return s;
			}
		/* Relocations: take one node out and put it back elsewhere. */
		for (i = 0; i < S && !imp && S <= 16; i++)
			for (j = 0; j < S && !imp && !out_of_budget(h); j++) {
				int x, y = 0;

				if (j == i || j == i + 1)
					continue;
				for (x = 0; x < S; x++) {
					if (x == j)
						V[y++] = U[i];
					if (x != i)
						V[y++] = U[x];
				}
				if (j == S)
					V[y++] = U[i];
				s = try_order(h, V, S, &imp, NULL, err);
				if (s != NESA_OK)
					return s;
			}
		if (!imp && S > 1 && !out_of_budget(h)) {
			for (i = 0; i < S; i++)
				V[i] = U[S - 1 - i];
			s = try_order(h, V, S, &imp, NULL, err);
			if (s != NESA_OK)
				return s;
		}
		again = imp;
	}
	return s;
}

/*
 * BRKGA (Goncalves and Resende; Archer et al.'s SliceGraph uses it the same
 * way): a chromosome is one random key per pool node; the decoder sorts the
 * pool by key and runs the fixed-order DP on the first m nodes.  Each
 * generation keeps the elite, adds fresh random mutants and fills the rest
 * by biased uniform crossover (each key from the elite parent with
 * probability RHO).
 */
#define POP 30
#define ELITE 6
#define MUTANTS 6
#define RHO 0.7
#define GENERATIONS 120
#define STALL 25

struct chrom {
	double *key;
	double fit;
};

static int
cmp_chrom(const void *a, const void *b)
{
	double x = ((const struct chrom *)a)->fit, y = ((const struct chrom *)b)->fit;

	return x < y ? -1 : x > y ? 1 : 0;
}

static enum nesa_status
decode(struct heur *h, struct chrom *ch, struct nesa_err *err)
{
	int np = h->np, m = np < h->c->L + 8 ? np : h->c->L + 8, i;
	int *ord = h->buf;
	enum nesa_status s;

	for (i = 0; i < np; i++)
		ord[i] = i;
	/* Smallest key first: sort by negated key descending. */
	for (i = 0; i < np; i++)
		h->speed[h->c->K + i] = -ch->key[i];
	sort_by(ord, np, h->speed + h->c->K);
	for (i = 0; i < m; i++)
		ord[i] = h->pool[ord[i]];
	s = try_order(h, ord, m, NULL, &ch->fit, err);
	if (s == NESA_OK && ch->fit == INF) {
		/* Infeasible orders rank by how far they overflow, so the search can climb out. */
		struct order_arg o = {ord, m};
		enum mode saved = h->c->mode;
		double over = 0;
		int k;

		h->c->mode = M_OVER;
		h->c->T = INF;
		s = order_run(h->c, &o, &h->tmp, err);
		h->c->mode = saved;
		for (k = 0; s == NESA_OK && k < h->tmp.n_stages; k++) {
			const struct nesa_pstage *st = &h->tmp.stages[k];

			over += fmax(0, h->c->PM[st->first + st->count] - h->c->PM[st->first] - h->c->cap[st->node]);
		}
		ch->fit = h->tmp.n_stages > 0 ? 1e100 * (1 + over / h->c->PM[h->c->L]) : INF;
	}
	return s;
}

static enum nesa_status
brkga(struct heur *h, struct rng *r, struct nesa_err *err)
{
	int np = h->np, g, i, k, last;
	double best = INF;
	struct chrom pop[POP], next[POP];
	double *keys = nesa_malloc(2 * POP * (size_t)np * sizeof *keys);
	enum nesa_status s = NESA_OK;

	if (keys == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	for (i = 0; i < POP; i++) {
		pop[i].key = keys + (size_t)i * (size_t)np;
		next[i].key = keys + (size_t)(POP + i) * (size_t)np;
	}
	/* Seed one chromosome with the best plan's nodes first, in its order. */
	for (k = 0; k < np; k++)
		pop[0].key[k] = 0.5 + 0.5 * rng_unit(r);
	for (i = 0; i < h->best.n_stages; i++)
		for (k = 0; k < np; k++)
			if (h->pool[k] == h->best.stages[i].node)
				pop[0].key[k] = 0.5 * i / h->best.n_stages;
	for (i = 1; i < POP; i++)
		for (k = 0; k < np; k++)
			pop[i].key[k] = rng_unit(r);
	for (i = 0; i < POP && s == NESA_OK; i++) {
		pop[i].fit = INF;
		if (i == 0 || !out_of_budget(h))
			s = decode(h, &pop[i], err);
	}
	/* Stop at the budget, after GENERATIONS, or when STALL generations bring nothing. */
	for (g = 0, last = 0; s == NESA_OK && !out_of_budget(h) && g < GENERATIONS && g - last < STALL; g++) {
		qsort(pop, POP, sizeof pop[0], cmp_chrom);
		if (pop[0].fit < best * (1 - 1e-12)) {
			best = pop[0].fit;
			last = g;
		}
		for (i = 0; i < POP; i++) {
			if (i < ELITE) {
				memcpy(next[i].key, pop[i].key, (size_t)np * sizeof(double));
				next[i].fit = pop[i].fit;
				continue;
			}
			if (i >= POP - MUTANTS) {
				for (k = 0; k < np; k++)
					next[i].key[k] = rng_unit(r);
			} else {
				const struct chrom *e = &pop[rng_next(r) % ELITE];
				const struct chrom *o = &pop[ELITE + rng_next(r) % (POP - ELITE)];

				for (k = 0; k < np; k++)
					next[i].key[k] = rng_unit(r) < RHO ? e->key[k] : o->key[k];
			}
			s = decode(h, &next[i], err);
			if (s != NESA_OK)
				break;
		}
		for (i = 0; i < POP; i++) {
			struct chrom t = pop[i];

			pop[i] = next[i];
			next[i] = t;
		}
	}
	nesa_free(keys);
	return s;
}

/* Nearest-neighbour chain over the pool by hop latency, starting at the client. */
static void
link_chain(const struct heur *h, int *ord)
{
	const struct ctx *c = h->c;
	int np = h->np, i, k, prev = c->K, cut = c->L / 2;
	bool *taken = (bool *)(h->buf + 3 * c->K);

	memset(taken, 0, (size_t)np * sizeof *taken);
	for (i = 0; i < np; i++) {
		int bk = -1;
		double bl = INF;

		for (k = 0; k < np; k++) {
			double l;

			if (taken[k])
				continue;
			l = hop_lat(c, prev, h->pool[k], i == 0 ? 0 : cut) - 1e-9 * h->speed[h->pool[k]];
			if (bk < 0 || l < bl) {
				bl = l;
				bk = k;
			}
		}
		taken[bk] = true;
		ord[i] = h->pool[bk];
		prev = ord[i];
	}
}

static enum nesa_status
heuristic_run(struct ctx *c, uint64_t seed, struct nesa_solution *out, struct nesa_err *err)
{
	int K = c->K, L = c->L, n, i, np_max, nu = 0, o;
	double *key = NULL, minblock = INF;
	struct heur h;
	struct rng r = {seed ^ 0x6e657361ull};
	enum nesa_status s = NESA_OK;

	memset(&h, 0, sizeof h);
	h.c = c;
	h.best_v = INF;
	nesa_solution_init(&h.best);
	nesa_solution_init(&h.tmp);
	h.pool = nesa_malloc((size_t)K * sizeof *h.pool);
	h.speed = nesa_malloc(3 * (size_t)K * sizeof *h.speed);
	h.buf = nesa_malloc((4 * (size_t)K + 16) * sizeof *h.buf);
	if (h.pool == NULL || h.speed == NULL || h.buf == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	key = h.speed + 2 * (size_t)K;
	for (i = 0; i < L; i++)
		minblock = fmin(minblock, c->PM[i + 1] - c->PM[i]);
	/* Nodes that cannot hold even the smallest block never help. */
	for (n = 0; n < K; n++) {
		double t = fmax(c->PF[L] * c->spf[n], c->PR[L] * c->spbm[n]) / L + c->ovh[n];

		h.speed[n] = 1.0 / t;
		if (c->cap[n] >= minblock)
			h.pool[nu++] = n;
	}
	if (nu == 0)
		goto done;
	/*
	 * The pool: the fastest nodes, then the largest memories and the nodes
	 * closest to the client, up to 2L + 8 (at least 24): a plan has at most
	 * L stages, so more candidates rarely matter.
	 */
	np_max = 2 * L + 8 > 24 ? 2 * L + 8 : 24;
	if (nu > np_max) {
		int *all = h.buf, na = nu, take, got = 0, pass;
		bool *in = (bool *)(h.buf + 3 * K);

		memcpy(all, h.pool, (size_t)nu * sizeof *all);
		memset(in, 0, (size_t)K * sizeof *in);
		for (pass = 0; pass < 3; pass++) {
			for (i = 0; i < na; i++) {
				n = all[i];
				key[n] = pass == 0 ? h.speed[n] : pass == 1 ? c->cap[n]
				       : -(hop_lat(c, c->K, n, 0) + hop_lat(c, n, c->K, L));
			}
			sort_by(all, na, key);
			take = pass == 0 ? np_max - np_max / 4 : pass == 1 ? np_max / 8 : np_max;
			for (i = 0, o = 0; i < na && o < take && got < np_max; i++)
				if (!in[all[i]]) {
					in[all[i]] = true;
					h.pool[got++] = all[i];
					o++;
				}
		}
		nu = got;
	}
	h.np = nu;
	sort_by(h.pool, h.np, h.speed);
	/* A budget in DP inner-loop iterations keeps the result independent of machine speed. */
	h.budget = c->work + 3e8;
	/* Seed orders: fastest first, slowest first, most memory first, link chain, index order, least memory first. */
	for (o = 0; o < 6 && s == NESA_OK; o++) {
		int *ord = h.buf + K;

		memcpy(ord, h.pool, (size_t)h.np * sizeof *ord);
		if (o == 1)
			for (i = 0; i < h.np; i++)
				ord[i] = h.pool[h.np - 1 - i];
		else if (o == 2 || o == 5) {
			for (i = 0; i < h.np; i++)
				key[ord[i]] = o == 2 ? c->cap[ord[i]] : -c->cap[ord[i]];
			sort_by(ord, h.np, key);
		} else if (o == 3)
			link_chain(&h, ord);
		else if (o == 4) {
			for (i = 0; i < h.np; i++)
				key[ord[i]] = -ord[i];
			sort_by(ord, h.np, key);
		}
		s = try_order(&h, ord, h.np, NULL, NULL, err);
	}
	if (s == NESA_OK && h.best.n_stages > 0)
		s = local_search(&h, err);
	if (s == NESA_OK && h.np > 1 && !out_of_budget(&h))
		s = brkga(&h, &r, err);
	if (s == NESA_OK && h.best.n_stages > 0) {
		h.budget = c->work + 1e8;
		s = local_search(&h, err);
	}
	if (s == NESA_OK && h.best.n_stages > 0) {
		struct nesa_solution t = *out;

		*out = h.best;
		h.best = t;
	}
done:
	nesa_solution_release(&h.best);
	nesa_solution_release(&h.tmp);
	nesa_free(h.pool);
	nesa_free(h.speed);
	nesa_free(h.buf);
	return s;
}

/* ---- bounds and memory diagnosis ---- */

static int
cmp_asc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * A bottleneck bound from counting: within time T, node n can run at most
 * k_n(T) blocks of a set H, k_n being the most blocks whose k smallest
 * FLOP counts, k smallest read bytes and k smallest resident sizes in H
 * (each sorted on its own, so no real stage is cheaper) fit in T and in its
 * memory.  A plan with bottleneck T needs the sum of k_n(T) to reach |H|;
 * the least such T (bisection) bounds the bottleneck.  H is a set of the
 * heaviest blocks (by read bytes, or by FLOPs): small blocks such as an
 * embedding would otherwise let every node count two blocks for free.
 * 0 when no T works.
 */
static double
count_bound_set(const struct nesa_problem *p, const int *set, int m, double *v)
{
	int K = p->n_nodes, j, n, it;
	double *SF = v, *SR = SF + m + 1, *SM = SR + m + 1, lo = 0, hi = 0;

	for (j = 0; j < m; j++) {
		SF[j + 1] = p->blocks[set[j]].flops;
		SR[j + 1] = p->blocks[set[j]].read_bytes;
		SM[j + 1] = p->blocks[set[j]].mem_bytes;
	}
	qsort(SF + 1, (size_t)m, sizeof *SF, cmp_asc);
	qsort(SR + 1, (size_t)m, sizeof *SR, cmp_asc);
	qsort(SM + 1, (size_t)m, sizeof *SM, cmp_asc);
	SF[0] = SR[0] = SM[0] = 0;
	for (j = 1; j <= m; j++) {
		SF[j] += SF[j - 1];
		SR[j] += SR[j - 1];
		SM[j] += SM[j - 1];
	}
	for (n = 0; n < K; n++)
		hi = fmax(hi, fmax(SF[m] / p->nodes[n].flops_per_s, SR[m] / p->nodes[n].bytes_per_s) +
		                  p->nodes[n].overhead_s);
	for (it = 0; it < 100 && hi > 0; it++) {
		double T = it == 0 ? hi : 0.5 * (lo + hi), total = 0;

		for (n = 0; n < K && total < m; n++) {
			const struct nesa_pnode *nd = &p->nodes[n];
			double t = T - nd->overhead_s;
			int a = 0, b = m;

			/* The largest k with every resource within bounds (all are monotone in k). */
			while (a < b) {
				int k = (a + b + 1) / 2;

				if (SF[k] / nd->flops_per_s <= t && SR[k] / nd->bytes_per_s <= t && SM[k] <= nd->cap_bytes)
					a = k;
				else
					b = k - 1;
			}
			total += a;
		}
		if (it == 0 && total < m)
			return 0; /* even unlimited time does not place these blocks */
		if (it > 0) {
			if (total >= m)
				hi = T;
			else
				lo = T;
		}
	}
	return lo;
}

static double
count_bound(const struct nesa_problem *p)
{
	int L = p->n_blocks, j, by, q;
	int *set = nesa_malloc((size_t)L * sizeof *set);
	double *key = nesa_malloc((size_t)L * sizeof *key), *v = nesa_malloc(3 * (size_t)(L + 1) * sizeof *v);
	double best = 0;

	if (set != NULL && key != NULL && v != NULL) {
		for (by = 0; by < 2; by++) {
			for (j = 0; j < L; j++) {
				set[j] = j;
				key[j] = by == 0 ? p->blocks[j].read_bytes : p->blocks[j].flops;
			}
			sort_by(set, L, key);
			/* The heaviest m blocks for a few m: all, all but one or two, 3/4, 1/2. */
			for (q = 0; q < 5; q++) {
				int m = q == 0 ? L : q == 1 ? L - 1 : q == 2 ? L - 2 : q == 3 ? (3 * L + 3) / 4 : (L + 1) / 2;

				if (m >= 1)
					best = fmax(best, count_bound_set(p, set, m, v));
			}
		}
	}
	nesa_free(set);
	nesa_free(key);
	nesa_free(v);
	return best;
}

/*
 * Latency bound, without the client hops.  A stage's time is
 * max(F / flops, R / bytes) + overhead >= x F / flops + (1 - x) R / bytes
 * + overhead for any x in [0, 1], a sum over its blocks of c_jn.  Blocks
 * outside a set H count at their cheapest node.  Blocks in H are
 * relaxed by memory: c_jn >= M_j rho_n with rho_n the cheapest cost per
 * resident byte of H on n, and the bytes of H fill the nodes with the
 * lowest rho first (a fractional knapsack).  The plan needs at least
 * S stages, S the fewest nodes whose memories add up to the model, so S
 * overheads and S - 1 hops between nodes.  The best over a few x and H.
 */
static double
latency_bound(const struct nesa_problem *p)
{
	int L = p->n_blocks, K = p->n_nodes, E = K + 1, j, n, a, l, q, S = 0;
	int *set = nesa_malloc((size_t)L * sizeof *set), *ord = nesa_malloc((size_t)K * sizeof *ord);
	bool *in = nesa_malloc((size_t)L * sizeof *in);
	double *key = nesa_malloc((size_t)(L > K ? L : K) * sizeof *key), *rho = nesa_malloc((size_t)K * sizeof *rho);
	double best = 0, mtot = 0, acc = 0, omin = INF, rmin = INF, smin = INF, cmin = INF;

	if (set == NULL || ord == NULL || in == NULL || key == NULL || rho == NULL)
		goto done;
	for (j = 0; j < L; j++)
		mtot += p->blocks[j].mem_bytes;
	for (n = 0; n < K; n++) {
		ord[n] = n;
		key[n] = p->nodes[n].cap_bytes;
		omin = fmin(omin, p->nodes[n].overhead_s);
	}
	sort_by(ord, K, key);
	for (n = 0; n < K && acc < mtot; n++, S++)
		acc += fmax(0, p->nodes[ord[n]].cap_bytes);
	S = S > 1 ? S : 1;
	/* The cheapest hop between two nodes at an inner cut. */
	for (a = 0; a < K && S > 1; a++)
		for (n = 0; n < K; n++)
			if (a != n) {
				rmin = fmin(rmin, p->rtt_s[(size_t)a * (size_t)E + (size_t)n]);
				smin = fmin(smin, p->spb[(size_t)a * (size_t)E + (size_t)n]);
			}
	for (j = 1; j < L; j++)
		cmin = fmin(cmin, p->cut_bytes[j]);
	for (l = 0; l <= 4; l++) {
		double x = l / 4.0;

		for (q = 0; q < 4; q++) {
			/* H: none, the heaviest 1/2, 3/4 or all but two blocks by resident bytes. */
			int m = q == 0 ? 0 : q == 1 ? (L + 1) / 2 : q == 2 ? (3 * L + 3) / 4 : L - 2, k;
			double sum = 0, need = 0;

			for (j = 0; j < L; j++) {
				set[j] = j;
				key[j] = p->blocks[j].mem_bytes;
			}
			sort_by(set, L, key);
			for (j = 0; j < L; j++)
				in[set[j]] = j < m;
			for (n = 0; n < K; n++)
				rho[n] = INF;
			for (j = 0; j < L; j++) {
				const struct nesa_pblock *b = &p->blocks[j];
				double cheap = INF;

				for (n = 0; n < K; n++) {
					double c = x * b->flops / p->nodes[n].flops_per_s + (1 - x) * b->read_bytes / p->nodes[n].bytes_per_s;

					if (in[j])
						rho[n] = fmin(rho[n], b->mem_bytes > 0 ? c / b->mem_bytes : 0);
					else
						cheap = fmin(cheap, c);
				}
				if (in[j])
					need += b->mem_bytes;
				else
					sum += cheap;
			}
			if (m > 0) {
				for (n = 0; n < K; n++) {
					ord[n] = n;
					key[n] = -rho[n];
				}
				sort_by(ord, K, key);
				for (k = 0; k < K && need > 0; k++) {
					double take = fmin(need, fmax(0, p->nodes[ord[k]].cap_bytes));

					sum += take * rho[ord[k]];
					need -= take;
				}
				if (need > 0)
					continue; /* H does not even fit: no bound from it */
			}
			best = fmax(best, sum);
		}
	}
	best += S * omin + (S > 1 && isfinite(rmin) ? (S - 1) * (rmin / 2 + cmin * smin) : 0);
done:
	nesa_free(set);
	nesa_free(ord);
	nesa_free(in);
	nesa_free(key);
	nesa_free(rho);
	return best;
}

double
nesa_planner_lower_bound(const struct nesa_problem *p)
{
	int L = p->n_blocks, K = p->n_nodes, j, n, top = K < L ? K : L;
	double lat, thr = 0, ftot = 0, rtot = 0, hin = INF, hout = INF, oin = INF, oout = INF, *rate;

	for (j = 0; j < L; j++) {
		ftot += p->blocks[j].flops;
		rtot += p->blocks[j].read_bytes;
	}
	for (n = 0; n < K; n++) {
		hin = fmin(hin, nesa_planner_hop_latency(p, K, n, 0));
		hout = fmin(hout, nesa_planner_hop_latency(p, n, K, L));
		oin = fmin(oin, nesa_planner_hop_occupancy(p, K, n, 0));
		oout = fmin(oout, nesa_planner_hop_occupancy(p, n, K, L));
	}
	lat = latency_bound(p) + hin + hout;
	/* Throughput: some stage holds each block, and at most min(K, L) stages share the work. */
	for (j = 0; j < L; j++) {
		double best = INF;

		for (n = 0; n < K; n++)
			best = fmin(best, nesa_planner_stage_time(p, n, j, 1));
		thr = fmax(thr, best);
	}
	thr = fmax(thr, fmax(oin, oout));
	rate = nesa_malloc((size_t)(K > 0 ? K : 1) * sizeof *rate);
	if (rate != NULL) {
		int pass;

		for (pass = 0; pass < 2; pass++) {
			double sum = 0;
			int *idx = nesa_malloc((size_t)(K > 0 ? K : 1) * sizeof *idx);

			if (idx == NULL)
				break;
			for (n = 0; n < K; n++) {
				rate[n] = pass == 0 ? p->nodes[n].flops_per_s : p->nodes[n].bytes_per_s;
				idx[n] = n;
			}
			sort_by(idx, K, rate);
			for (n = 0; n < top; n++)
				sum += rate[idx[n]];
			thr = fmax(thr, (pass == 0 ? ftot : rtot) / sum);
			nesa_free(idx);
		}
		nesa_free(rate);
	}
	thr = fmax(thr, count_bound(p));
	switch (p->objective) {
	case NESA_OBJ_LATENCY: return lat;
	case NESA_OBJ_THROUGHPUT: return thr;
	default: return lat + (p->microbatches - 1) * thr;
	}
}

/*
 * The least total overflow of any plan, given per-block resident bytes mem
 * (NULL: the problem's), and the plan achieving it: exact for few nodes,
 * the fixed-order DP over nodes by decreasing memory otherwise.
 */
double
nesa_planner_min_overflow(const struct nesa_problem *p, const double *mem, struct nesa_solution *out)
{
	struct ctx c;
	double v = INF;
	enum nesa_status s;

	if (ctx_init(&c, p, mem, NULL) != NESA_OK)
		return INF;
	c.mode = M_OVER;
	if (nesa_planner_exact_states(p) <= NESA_EXACT_MAX_STATES / 4) {
		s = exact_run(&c, out, NULL);
	} else {
		int *ord = nesa_malloc((size_t)p->n_nodes * sizeof *ord), n;
		struct order_arg o;

		if (ord == NULL) {
			ctx_release(&c);
			return INF;
		}
		for (n = 0; n < p->n_nodes; n++)
			ord[n] = n;
		sort_by(ord, p->n_nodes, c.cap);
		o.ord = ord;
		o.n = p->n_nodes;
		s = order_run(&c, &o, out, NULL);
		nesa_free(ord);
	}
	if (s == NESA_OK && out->n_stages > 0) {
		int k;

		v = 0;
		for (k = 0; k < out->n_stages; k++) {
			const struct nesa_pstage *st = &out->stages[k];

			v += fmax(0, c.PM[st->first + st->count] - c.PM[st->first] - c.cap[st->node]);
		}
	}
	ctx_release(&c);
	return v;
}

/* ---- entry point ---- */

enum nesa_status
nesa_planner_solve(const struct nesa_problem *p, enum nesa_planner_algo algo, uint64_t seed,
                   struct nesa_solution *out, struct nesa_planner_info *info, struct nesa_err *err)
{
	struct nesa_planner_info tmp;
	struct ctx c;
	double t0 = nesa_now(), exact_work;
	enum nesa_status s;

	if (info == NULL)
		info = &tmp;
	memset(info, 0, sizeof *info);
	out->n_stages = 0;
	out->value = INF;
	if (p->n_blocks < 1 || p->n_nodes < 1)
		return nesa_err_set(err, NESA_EINVAL, "nothing to plan: %d blocks on %d nodes", p->n_blocks,
		                    p->n_nodes);
	exact_work = nesa_planner_exact_states(p) * (p->n_nodes + p->n_blocks / 2.0 + 1);
	if (algo == NESA_ALGO_AUTO)
		algo = p->n_nodes <= 24 && nesa_planner_exact_states(p) <= NESA_EXACT_MAX_STATES &&
		       exact_work <= 2e9 ? NESA_ALGO_EXACT : NESA_ALGO_HEURISTIC;
	if (algo == NESA_ALGO_EXACT && (p->n_nodes > 24 || nesa_planner_exact_states(p) > NESA_EXACT_MAX_STATES))
		return nesa_err_set(err, NESA_ELIMIT,
		                    "the exact solver takes at most %.0f states (2^nodes x nodes x (blocks + 1)); "
		                    "%d nodes and %d blocks need %.0f: use the heuristic",
		                    NESA_EXACT_MAX_STATES, p->n_nodes, p->n_blocks, nesa_planner_exact_states(p));
	s = ctx_init(&c, p, NULL, err);
	if (s != NESA_OK)
		return s;
	if (algo == NESA_ALGO_EXACT) {
		info->algorithm = "exact";
		s = walk(&c, run_exact, NULL, true, out, err);
	} else if (algo == NESA_ALGO_ORDER) {
		int *ord = nesa_malloc((size_t)p->n_nodes * sizeof *ord), n;
		struct order_arg o = {ord, p->n_nodes};

		info->algorithm = "order";
		if (ord == NULL) {
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		} else {
			for (n = 0; n < p->n_nodes; n++)
				ord[n] = n;
			s = walk(&c, run_order, &o, true, out, err);
		}
		nesa_free(ord);
	} else {
		info->algorithm = "heuristic";
		s = heuristic_run(&c, seed, out, err);
	}
	info->evaluations = c.evals;
	ctx_release(&c);
	info->seconds = nesa_now() - t0;
	info->lower_bound = nesa_planner_lower_bound(p);
	if (s != NESA_OK)
		return s;
	out->value = out->n_stages > 0 ? nesa_planner_value(p, out) : INF;
	if (out->value == INF)
		return nesa_planner_infeasible(p, err);
	return NESA_OK;
}
