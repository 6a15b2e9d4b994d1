/* SPDX-License-Identifier: MIT */
/*
 * Node, model and link profiles; see profile.h and nesa-profile(1).
 *
 * Node rates are medians over repeated runs after one warm-up run, with the
 * minimum and maximum kept so a noisy machine shows.  Buffers are larger
 * than the last-level cache wherever memory bandwidth is the point.
 */
#include "config.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc.h"
#include "exec.h"
#include "graph.h"
#include "linalg.h"
#include "log.h"
#include "net.h"
#include "ops.h"
#include "parallel.h"
#include "planner.h"
#include "profile.h"
#include "quant.h"
#include "xio.h"

/* ---- statistics ---- */

struct stat3 {
	double med, min, max;
	int runs;
};

static int
cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* Median, minimum and maximum of v[0..n) (sorted in place). */
static struct stat3
stat3(double *v, int n)
{
	struct stat3 s = {0, 0, 0, n};

	if (n < 1)
		return s;
	qsort(v, (size_t)n, sizeof *v, cmp_dbl);
	s.min = v[0];
	s.max = v[n - 1];
	s.med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
	return s;
}

/* ---- node ---- */

/* The value after "key" and a colon on the first matching line of a /proc file. */
static bool
proc_field(const char *path, const char *key, char *out, size_t size)
{
	FILE *f = fopen(path, "r");
	char line[512];
	size_t kl = strlen(key);
	bool found = false;

	if (f == NULL)
		return false;
	while (!found && fgets(line, sizeof line, f) != NULL) {
		char *c = strchr(line, ':'), *v, *e;

		if (strncmp(line, key, kl) != 0 || c == NULL)
			continue;
		for (v = c + 1; *v == ' ' || *v == '\t'; v++)
			;
		e = v + strcspn(v, "\n");
		*e = '\0';
		snprintf(out, size, "%s", v);
		found = true;
	}
	fclose(f);
	return found;
}

/* A cgroup v2 file holding one number; -1 when absent or "max". */
static double
cgroup_number(const char *path)
{
	FILE *f = fopen(path, "r");
	char buf[64];
	double v = -1;

	if (f == NULL)
		return -1;
	if (fgets(buf, sizeof buf, f) != NULL && strncmp(buf, "max", 3) != 0)
		v = strtod(buf, NULL);
	fclose(f);
	return v;
}

/* Physical cores: distinct (physical id, core id) pairs in /proc/cpuinfo, or 0. */
static int
physical_cores(void)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[256];
	long phys = 0, seen[1024];
	int n = 0, i;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof line, f) != NULL) {
		const char *c = strchr(line, ':');
		long id;

		if (c == NULL)
			continue;
		if (strncmp(line, "physical id", 11) == 0) {
			phys = strtol(c + 1, NULL, 10);
		} else if (strncmp(line, "core id", 7) == 0) {
			id = phys * 65536 + strtol(c + 1, NULL, 10);
			for (i = 0; i < n && seen[i] != id; i++)
				;
			if (i == n && n < 1024)
				seen[n++] = id;
		}
	}
	fclose(f);
	return n;
}

/* CPUs granted by the cgroup quota ("quota period" in cpu.max), or -1. */
static double
cgroup_cpus(void)
{
	FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
	char q[32];
	double period = 0, v = -1;

	if (f == NULL)
		return -1;
	if (fscanf(f, "%31s %lf", q, &period) == 2 && strcmp(q, "max") != 0 && period > 0)
		v = strtod(q, NULL) / period;
	fclose(f);
	return v;
}

static json_t *
system_json(const struct nesa_node_opts *o)
{
	char model[256] = "unknown", buf[64], host[256] = "localhost";
	double total = -1, avail = -1, cg_max = cgroup_number("/sys/fs/cgroup/memory.max");
	double cg_cur = cgroup_number("/sys/fs/cgroup/memory.current"), quota = cgroup_cpus();
	long online = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;
	int allowed = (int)online, cores;

	if (!proc_field("/proc/cpuinfo", "model name", model, sizeof model))
		proc_field("/proc/cpuinfo", "Hardware", model, sizeof model);
	if (proc_field("/proc/meminfo", "MemTotal", buf, sizeof buf))
		total = strtod(buf, NULL) * 1024;
	if (proc_field("/proc/meminfo", "MemAvailable", buf, sizeof buf))
		avail = strtod(buf, NULL) * 1024;
	/* A container's limit is what a stage can really use. */
	if (cg_max > 0) {
		total = total < 0 ? cg_max : fmin(total, cg_max);
		avail = fmin(avail < 0 ? cg_max : avail, cg_max - (cg_cur > 0 ? cg_cur : 0));
	}
	if (sched_getaffinity(0, sizeof set, &set) == 0)
		allowed = CPU_COUNT(&set);
	if (o->name == NULL && gethostname(host, sizeof host - 1) != 0)
		snprintf(host, sizeof host, "localhost");
	cores = physical_cores();
	return json_pack("{s:s, s:i, s:s, s:s?, s:s, s:i, s:{s:s, s:i, s:i, s:i, s:o}, s:{s:I, s:I, s:o}}",
	                 "format", "nesa-node-profile", "version", NESA_PROFILE_VERSION, "name",
	                 o->name != NULL ? o->name : host, "command", o->command, "mode",
	                 o->quick ? "quick" : "full", "threads", nesa_linalg_threads(), "cpu", "model", model,
	                 "cores", cores > 0 ? cores : (int)online, "logical_cpus", (int)online, "allowed_cpus",
	                 allowed, "quota_cpus",
	                 quota > 0 ? json_real(quota) : json_null(), "memory", "total_bytes", (json_int_t)total,
	                 "available_bytes", (json_int_t)avail, "cgroup_limit_bytes",
	                 cg_max > 0 ? json_integer((json_int_t)cg_max) : json_null());
}

/* Fills n floats with values in [-1, 1) from a splitmix stream. */
static void
fill_random(float *x, size_t n, uint64_t seed)
{
	size_t i;

	for (i = 0; i < n; i++) {
		uint64_t z = (seed += 0x9e3779b97f4a7c15ull);

		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		x[i] = (float)((double)(z >> 40) * 0x1p-23 - 1.0);
	}
}

struct triad {
	float *a;
	const float *b, *c; /* (n) each */
};

static void
triad_part(void *ctx, int64_t begin, int64_t end)
{
	struct triad *t = ctx;
	int64_t i;

	for (i = begin; i < end; i++)
		t->a[i] = t->b[i] + 3.0f * t->c[i];
}

struct qgemv {
	const void *w;   /* (rows, cols / 32) q8_0 blocks */
	size_t stride;   /* bytes per row */
	const float *x;  /* (cols) */
	float *y;        /* (rows) */
	int64_t cols;
};

static void
qgemv_part(void *ctx, int64_t begin, int64_t end)
{
	struct qgemv *q = ctx;
	int64_t r;

	for (r = begin; r < end; r++)
		q->y[r] = nesa_vec_dot_q8_0_f32_ref(q->cols, (const char *)q->w + (size_t)r * q->stride, q->x);
}

/* B_SGEMV is reported inside "gemv", next to the runtime's own kernel. */
enum bench_kind { B_GEMM, B_TRIAD, B_GEMV, B_INT8, B_SGEMV, B_COUNT };

struct bufs {
	int n;              /* GEMM size */
	float *ga, *gb, *gc; /* (n, n) each */
	size_t sn;          /* triad length */
	float *sa, *sb, *sc; /* (sn) each */
	int64_t rows, cols; /* GEMV and q8_0 matrix shape */
	float *m, *x, *y;   /* (rows, cols), (cols), (rows) */
	void *q;            /* (rows, cols) q8_0 */
};

/* One timed run; returns the rate in the benchmark's unit (GFLOP/s, GB/s, GOP/s). */
static double
run_once(enum bench_kind k, struct bufs *b)
{
	const struct nesa_dtype_traits *tr = nesa_dtype_traits(NESA_Q8_0);
	size_t qstride = (size_t)b->cols / NESA_QK8_0 * sizeof(struct nesa_block_q8_0);
	double t0 = nesa_now(), t;

	switch (k) {
	case B_GEMM:
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b->n, b->n, b->n, 1.0f, b->ga, b->n, b->gb,
		            b->n, 0.0f, b->gc, b->n);
		break;
	case B_TRIAD: {
		struct triad tr3 = {b->sa, b->sb, b->sc};

		nesa_parallel_for((int64_t)b->sn, 1 << 16, triad_part, &tr3);
		break;
	}
	case B_GEMV:
		/* The kernel decoding runs: what a stage's weight streaming really costs. */
		nesa_gemv_f32(b->m, b->rows, b->cols, b->x, b->y);
		break;
	case B_SGEMV:
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)b->rows, (int)b->cols, 1.0f, b->m, (int)b->cols, b->x,
		            1, 0.0f, b->y, 1);
		break;
	default:
		/* The runtime's q8_0 kernel when there is one, else the reference dot. */
		if (tr != NULL && tr->matmul != NULL) {
			tr->matmul(b->q, qstride, b->rows, b->cols, b->x, 1, b->y);
		} else {
			struct qgemv q = {b->q, qstride, b->x, b->y, b->cols};

			nesa_parallel_for(b->rows, 64, qgemv_part, &q);
		}
		break;
	}
	t = fmax(nesa_now() - t0, 1e-9);
	switch (k) {
	case B_GEMM: return 2.0 * b->n * (double)b->n * b->n / t * 1e-9;
	case B_TRIAD: return 3.0 * sizeof(float) * (double)b->sn / t * 1e-9;
	case B_GEMV:
	case B_SGEMV: return sizeof(float) * (double)b->rows * (double)b->cols / t * 1e-9;
	default: return 2.0 * (double)b->rows * (double)b->cols / t * 1e-9;
	}
}

static void
bufs_free(struct bufs *b)
{
	nesa_aligned_free(b->ga);
	nesa_aligned_free(b->sa);
	nesa_aligned_free(b->m);
	nesa_aligned_free(b->q);
}

static enum nesa_status
bufs_alloc(struct bufs *b, bool quick, struct nesa_err *err)
{
	size_t g, i, nq;
	struct nesa_block_q8_0 *q;
	uint64_t z = 0x517cc1b727220a95ull;

	memset(b, 0, sizeof *b);
	b->n = quick ? 512 : 1024;
	b->sn = quick ? (size_t)8 << 20 : (size_t)16 << 20;   /* 3 arrays: 96 or 192 MB */
	b->rows = quick ? 4096 : 8192;                        /* GEMV: 64 or 128 MB of f32 */
	b->cols = 4096;
	g = (size_t)b->n * (size_t)b->n;
	nq = (size_t)b->rows * (size_t)b->cols / NESA_QK8_0;
	b->ga = nesa_aligned_alloc(3 * g * sizeof(float));
	b->sa = nesa_aligned_alloc(3 * b->sn * sizeof(float));
	b->m = nesa_aligned_alloc(((size_t)b->rows * (size_t)b->cols + (size_t)b->cols + (size_t)b->rows) *
	                          sizeof(float));
	b->q = nesa_aligned_alloc(nq * sizeof(struct nesa_block_q8_0));
	if (b->ga == NULL || b->sa == NULL || b->m == NULL || b->q == NULL) {
		bufs_free(b);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory for the node benchmarks (about %zu MB)",
		                    (3 * g + 3 * b->sn + (size_t)b->rows * (size_t)b->cols) * 4 >> 20);
	}
	b->gb = b->ga + g;
	b->gc = b->gb + g;
	b->sb = b->sa + b->sn;
	b->sc = b->sb + b->sn;
	b->x = b->m + (size_t)b->rows * (size_t)b->cols;
	b->y = b->x + b->cols;
	/* Touch everything once, so page faults are not timed. */
	fill_random(b->ga, 3 * g, 1);
	fill_random(b->sa, 3 * b->sn, 2);
	fill_random(b->m, (size_t)b->rows * (size_t)b->cols + (size_t)b->cols + (size_t)b->rows, 3);
	q = b->q;
	for (i = 0; i < nq; i++) {
		size_t k;

		q[i].d = nesa_f32_to_f16(0.01f);
		for (k = 0; k < NESA_QK8_0; k++) {
			z ^= z << 13;
			z ^= z >> 7;
			z ^= z << 17;
			q[i].qs[k] = (int8_t)(z & 0xff);
		}
	}
	return NESA_OK;
}

enum nesa_status
nesa_profile_node(const struct nesa_node_opts *o, json_t **out, struct nesa_err *err)
{
	static const char *const names[B_SGEMV] = {"gemm", "stream", "gemv", "int8"};
	static const char *const units[B_SGEMV] = {"gflops", "gbytes_per_s", "gbytes_per_s", "gops"};
	struct bufs b;
	struct nesa_progress pr;
	double rates[B_COUNT][64], t0 = nesa_now();
	int runs = o->quick ? 7 : 21, k, r;
	json_t *j;
	enum nesa_status s;

	*out = NULL;
	j = system_json(o);
	if (j == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	s = bufs_alloc(&b, o->quick, err);
	if (s != NESA_OK) {
		json_decref(j);
		return s;
	}
	nesa_progress_begin(&pr, "nesa-profile: node", (uint64_t)(B_COUNT * (runs + 1)));
	for (k = 0; k < B_COUNT; k++) {
		run_once((enum bench_kind)k, &b); /* warm-up: caches, BLAS threads, page tables */
		nesa_progress_update(&pr, (uint64_t)(k * (runs + 1) + 1));
		for (r = 0; r < runs; r++) {
			rates[k][r] = run_once((enum bench_kind)k, &b);
			nesa_progress_update(&pr, (uint64_t)(k * (runs + 1) + r + 2));
		}
	}
	nesa_progress_end(&pr);
	for (k = 0; k < B_SGEMV && s == NESA_OK; k++) {
		struct stat3 st = stat3(rates[k], runs);
		json_t *e = json_pack("{s:f, s:f, s:f, s:i}", units[k], st.med, "min", st.min, "max", st.max, "runs",
		                      st.runs);

		if (e != NULL && k == B_GEMM)
			json_object_set_new(e, "n", json_integer(b.n));
		else if (e != NULL && k == B_TRIAD)
			json_object_set_new(e, "bytes", json_integer((json_int_t)(3 * b.sn * sizeof(float))));
		else if (e != NULL) {
			json_object_set_new(e, "rows", json_integer(b.rows));
			json_object_set_new(e, "cols", json_integer(b.cols));
		}
		if (e != NULL && k == B_GEMV) {
			json_object_set_new(e, "gflops", json_real(st.med / 2));
			json_object_set_new(e, "blas_gbytes_per_s", json_real(stat3(rates[B_SGEMV], runs).med));
		}
		if (e != NULL && k == B_INT8) {
			const struct nesa_dtype_traits *tr = nesa_dtype_traits(NESA_Q8_0);

			json_object_set_new(e, "kernel", json_string(tr != NULL && tr->matmul != NULL ? "q8_0"
			                                                                          : "q8_0_ref"));
		}
		if (e == NULL || json_object_set_new(j, names[k], e) != 0)
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	bufs_free(&b);
	if (s == NESA_OK && json_object_set_new(j, "seconds", json_real(nesa_now() - t0)) != 0)
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
	if (s != NESA_OK) {
		json_decref(j);
		return s;
	}
	*out = j;
	return NESA_OK;
}

/* ---- model ---- */

/* Weight bytes of block b: as stored, as f16 / q8_0 / q4_0, and read per token. */
static void
block_weights(const struct nesa_block *b, double bytes[4], double *read)
{
	int i, w, j, u;

	bytes[0] = bytes[1] = bytes[2] = bytes[3] = *read = 0;
	for (i = 0; i < b->n_ops; i++)
		for (w = 0; w < 5; w++) {
			const struct nesa_tensor *t = b->ops[i].w[w];
			bool seen = false, row_only = true;
			double n;

			if (t == NULL)
				continue;
			/* Each distinct tensor once (as graph.c counts param_bytes). */
			for (j = 0; j <= i && !seen; j++)
				for (u = 0; u < (j == i ? w : 5); u++)
					if (b->ops[j].w[u] == t)
						seen = true;
			if (seen)
				continue;
			/* A lookup table is read one row per token; any other use reads it all. */
			for (j = 0; j < b->n_ops; j++)
				for (u = 0; u < 5; u++)
					if (b->ops[j].w[u] == t && b->ops[j].kind != NESA_OP_EMBEDDING &&
					    b->ops[j].kind != NESA_OP_POS_EMBEDDING)
						row_only = false;
			n = (double)nesa_tensor_nelems(t);
			bytes[0] += (double)t->nbytes;
			*read += row_only && t->ndim >= 1 ? (double)t->nbytes / (double)t->shape[0] : (double)t->nbytes;
			/* Matrices change format; vectors (norms, biases) stay as they are. */
			if (t->ndim >= 2) {
				bool blocks32 = t->shape[t->ndim - 1] % 32 == 0;

				bytes[1] += 2 * n;
				bytes[2] += blocks32 ? n * 34 / 32 : (double)t->nbytes;
				bytes[3] += blocks32 ? n * 18 / 32 : (double)t->nbytes;
			} else {
				bytes[1] += (double)t->nbytes;
				bytes[2] += (double)t->nbytes;
				bytes[3] += (double)t->nbytes;
			}
		}
}

/* The dtype holding most of a block's weight bytes, or NULL. */
static const char *
block_dtype(const struct nesa_block *b)
{
	double by[NESA_DTYPE_MAX] = {0}, best = 0;
	int i, w, d, arg = -1;

	for (i = 0; i < b->n_ops; i++)
		for (w = 0; w < 5; w++)
			if (b->ops[i].w[w] != NULL && (int)b->ops[i].w[w]->dtype < NESA_DTYPE_MAX)
				by[b->ops[i].w[w]->dtype] += (double)b->ops[i].w[w]->nbytes;
	for (d = 0; d < NESA_DTYPE_MAX; d++)
		if (by[d] > best) {
			best = by[d];
			arg = d;
		}
	return arg >= 0 ? nesa_dtype_name(arg) : NULL;
}

struct timing {
	double *prefill, *decode; /* (count) seconds per row, medians */
	int prefill_rows, steps, reps, pos;
};

static enum nesa_status
random_input(const struct nesa_value *v, int64_t rows, int vocab, uint64_t *seed, void **out,
             struct nesa_err *err)
{
	int64_t i, n = rows * v->row_elems;

	*out = nesa_malloc((size_t)(n > 0 ? n : 1) * 4);
	if (*out == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	if (v->dtype == NESA_I32) {
		int32_t *ids = *out;

		for (i = 0; i < n; i++) {
			*seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
			ids[i] = vocab > 0 ? (int32_t)((*seed >> 33) % (uint64_t)vocab) : 0;
		}
	} else {
		fill_random(*out, (size_t)n, ++*seed);
	}
	return NESA_OK;
}

/*
 * Runs every block alone (one compiled slice and executor each, outputs of
 * one feeding the next) and times it: a prefill of P rows, then single-row
 * decode steps, reps times over fresh sessions.
 */
static enum nesa_status
measure(json_t *doc, struct nesa_tset *ts, const struct nesa_graph *whole,
        const struct nesa_model_profile_opts *o, struct timing *tm, struct nesa_err *err)
{
	int n = whole->count, b, r, st, k, ctx = whole->max_positions, P = o->prefill > 0 ? o->prefill : 32;
	int D = o->steps > 0 ? o->steps : 16, R = o->reps > 0 ? o->reps : 3;
	struct nesa_graph **g = nesa_calloc((size_t)n, sizeof *g);
	struct nesa_exec **e = nesa_calloc((size_t)n, sizeof *e);
	double *pre = nesa_calloc((size_t)n * (size_t)R, sizeof *pre);
	double *dec = nesa_calloc((size_t)n * (size_t)R * (size_t)D, sizeof *dec);
	void *in[4] = {NULL, NULL, NULL, NULL};
	uint64_t seed = o->seed ^ 0x243f6a8885a308d3ull;
	struct nesa_progress pr;
	enum nesa_status s = NESA_OK;

	if (ctx > 0) {
		P = P < ctx / 2 ? P : (ctx / 2 > 0 ? ctx / 2 : 1);
		D = D < ctx - P ? D : ctx - P;
	}
	if (D < 1)
		D = 1;
	tm->prefill_rows = P;
	tm->steps = D;
	tm->reps = R;
	tm->pos = P;
	if (g == NULL || e == NULL || pre == NULL || dec == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	for (b = 0; b < n && s == NESA_OK; b++) {
		s = nesa_graph_compile(doc, ts, whole->first + b, 1, &g[b], err);
		if (s == NESA_OK)
			s = nesa_exec_new(g[b], NULL, &e[b], err);
	}
	nesa_progress_begin(&pr, "nesa-profile: timing blocks", (uint64_t)R * (uint64_t)(D + 1));
	for (r = 0; r < R && s == NESA_OK; r++) {
		for (st = -1; st < D && s == NESA_OK; st++) {
			struct nesa_seg seg = {(uint64_t)r + 1, st < 0 ? 0 : (uint32_t)(P + st), st < 0 ? (uint32_t)P : 1,
			                       false};
			const struct nesa_block *b0 = &g[0]->blocks[0];
			const void *cur[4] = {NULL, NULL, NULL, NULL};
			const float *outs[4] = {NULL, NULL, NULL, NULL};
			int64_t rows;

			for (k = 0; k < b0->n_inputs && s == NESA_OK; k++) {
				nesa_free(in[k]);
				in[k] = NULL;
				s = random_input(&b0->values[b0->inputs[k]], seg.rows, whole->vocab, &seed, &in[k], err);
				cur[k] = in[k];
			}
			for (b = 0; b < n && s == NESA_OK; b++) {
				double t0 = nesa_now(), t;

				s = nesa_exec_run(e[b], &seg, 1, cur, outs, &rows, err);
				t = nesa_now() - t0;
				if (st < 0)
					pre[(size_t)b * (size_t)R + (size_t)r] = t / P;
				else
					dec[((size_t)b * (size_t)R + (size_t)r) * (size_t)D + (size_t)st] = t;
				for (k = 0; k < 4; k++)
					cur[k] = outs[k];
			}
			nesa_progress_update(&pr, (uint64_t)r * (uint64_t)(D + 1) + (uint64_t)(st + 2));
		}
		for (b = 0; b < n; b++)
			if (e[b] != NULL)
				nesa_exec_end(e[b], (uint64_t)r + 1);
	}
	nesa_progress_end(&pr);
	for (b = 0; b < n && s == NESA_OK; b++) {
		tm->prefill[b] = stat3(pre + (size_t)b * (size_t)R, R).med;
		tm->decode[b] = stat3(dec + (size_t)b * (size_t)R * (size_t)D, R * D).med;
	}
	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot time the blocks");
done:
	for (b = 0; b < n; b++) {
		if (e != NULL)
			nesa_exec_free(e[b]);
		if (g != NULL)
			nesa_graph_free(g[b]);
	}
	for (k = 0; k < 4; k++)
		nesa_free(in[k]);
	nesa_free(g);
	nesa_free(e);
	nesa_free(pre);
	nesa_free(dec);
	return s;
}

static json_t *
block_json(const struct nesa_block *b, int ctx, const struct timing *tm, int i)
{
	double by[4], rd;
	json_t *j;

	block_weights(b, by, &rd);
	j = json_pack("{s:i, s:s, s:s?, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:I}", "index",
	              b->index, "name", b->name, "dtype", block_dtype(b), "param_bytes",
	              (json_int_t)b->cost.param_bytes, "param_bytes_f16", by[1], "param_bytes_q8_0", by[2],
	              "param_bytes_q4_0", by[3], "read_bytes_per_token", rd, "flops_per_token",
	              b->cost.flops_per_row, "flops_per_token_per_ctx", b->cost.flops_per_ctx,
	              "prefill_flops_per_token", b->cost.flops_per_row + (ctx > 0 ? (ctx - 1) / 2.0 : 0) * b->cost.flops_per_ctx,
	              "decode_flops_per_token", b->cost.flops_per_row + ctx * b->cost.flops_per_ctx,
	              "kv_bytes_per_token", (json_int_t)b->cost.kv_bytes_per_row, "in_bytes_per_token",
	              (json_int_t)b->cost.in_bytes_per_row, "out_bytes_per_token",
	              (json_int_t)b->cost.out_bytes_per_row);
	if (j != NULL && tm != NULL &&
	    json_object_set_new(j, "measured", json_pack("{s:f, s:f}", "prefill_ms_per_token",
	                                                 1e3 * tm->prefill[i], "decode_ms_per_token",
	                                                 1e3 * tm->decode[i])) != 0) {
		json_decref(j);
		j = NULL;
	}
	return j;
}

/*
 * Bytes crossing each cut: a block's inputs are the previous block's
 * outputs, so every value lives from the block making it to the next one;
 * the model's input is made "before" block 0, its output used "after" the
 * last.  Several outputs crossing one cut add up.
 */
static enum nesa_status
cuts_json(const struct nesa_graph *g, json_t **out, struct nesa_err *err)
{
	int n = g->count, nv = 0, b, k, c;
	int *prod = nesa_malloc((size_t)(5 * n + 4) * sizeof *prod), *last = nesa_malloc((size_t)(5 * n + 4) * sizeof *last);
	double *bytes = nesa_malloc((size_t)(5 * n + 4) * sizeof *bytes), *cut = nesa_malloc((size_t)(n + 1) * sizeof *cut);
	int *count = nesa_calloc((size_t)(n + 1), sizeof *count);
	json_t *arr = json_array();

	*out = NULL;
	if (prod == NULL || last == NULL || bytes == NULL || cut == NULL || count == NULL || arr == NULL) {
		nesa_free(prod);
		nesa_free(last);
		nesa_free(bytes);
		nesa_free(cut);
		nesa_free(count);
		json_decref(arr);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	for (k = 0; k < g->blocks[0].n_inputs; k++) {
		const struct nesa_value *v = &g->blocks[0].values[g->blocks[0].inputs[k]];

		prod[nv] = -1;
		last[nv] = 0;
		bytes[nv++] = (double)v->row_elems * (v->dtype == NESA_I32 ? 4 : 4);
		count[0]++;
	}
	for (b = 0; b < n; b++)
		for (k = 0; k < g->blocks[b].n_outputs; k++) {
			prod[nv] = b;
			last[nv] = b + 1;
			bytes[nv++] = (double)g->blocks[b].values[g->blocks[b].outputs[k]].row_elems * 4;
			count[b + 1]++;
		}
	nesa_planner_live_bytes(n, nv, prod, last, bytes, cut);
	for (c = 0; c <= n && arr != NULL; c++)
		if (json_array_append_new(arr, json_pack("{s:i, s:f, s:i}", "at", g->first + c, "bytes_per_token",
		                                         cut[c], "values", count[c])) != 0) {
			json_decref(arr);
			arr = NULL;
		}
	nesa_free(prod);
	nesa_free(last);
	nesa_free(bytes);
	nesa_free(cut);
	nesa_free(count);
	if (arr == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	*out = arr;
	return NESA_OK;
}

enum nesa_status
nesa_profile_graph(json_t *doc, struct nesa_tset *ts, const char *name,
                   const struct nesa_model_profile_opts *o, json_t **out, struct nesa_err *err)
{
	struct nesa_graph *g = NULL;
	struct timing tm = {NULL, NULL, 0, 0, 0, 0};
	json_t *j = NULL, *blocks = NULL, *cuts = NULL;
	double tot[4] = {0}, kv = 0;
	int b, ctx;
	enum nesa_status s;

	*out = NULL;
	s = nesa_graph_compile(doc, ts, json_is_integer(json_object_get(doc, "first_block"))
	                                    ? (int)json_integer_value(json_object_get(doc, "first_block")) : 0,
	                       -1, &g, err);
	if (s != NESA_OK)
		return s;
	ctx = o->context > 0 ? o->context : g->max_positions;
	if (o->measure) {
		tm.prefill = nesa_calloc(2 * (size_t)g->count, sizeof *tm.prefill);
		if (tm.prefill == NULL) {
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
			goto done;
		}
		tm.decode = tm.prefill + g->count;
		s = measure(doc, ts, g, o, &tm, err);
		if (s != NESA_OK)
			goto done;
	}
	s = cuts_json(g, &cuts, err);
	if (s != NESA_OK)
		goto done;
	blocks = json_array();
	for (b = 0; b < g->count && blocks != NULL; b++) {
		double by[4], rd;

		block_weights(&g->blocks[b], by, &rd);
		tot[0] += (double)g->blocks[b].cost.param_bytes;
		tot[1] += by[1];
		tot[2] += by[2];
		tot[3] += by[3];
		kv += (double)g->blocks[b].cost.kv_bytes_per_row;
		if (json_array_append_new(blocks, block_json(&g->blocks[b], ctx, o->measure ? &tm : NULL, b)) != 0) {
			json_decref(blocks);
			blocks = NULL;
		}
	}
	j = json_pack("{s:s, s:i, s:s?, s:i, s:i, s:i, s:i, s:{s:f, s:f, s:f, s:f, s:f}, s:o, s:o}", "format",
	              "nesa-model-profile", "version", NESA_PROFILE_VERSION, "model", name, "n_blocks", g->n_blocks,
	              "first_block", g->first, "count", g->count, "context", ctx, "totals", "param_bytes", tot[0],
	              "param_bytes_f16", tot[1], "param_bytes_q8_0", tot[2], "param_bytes_q4_0", tot[3],
	              "kv_bytes_per_token", kv, "blocks", blocks, "cuts", cuts);
	blocks = cuts = NULL;
	if (j != NULL && o->measure &&
	    json_object_set_new(j, "measured", json_pack("{s:i, s:i, s:i, s:i, s:i}", "threads",
	                                                 nesa_linalg_threads(), "prefill_rows", tm.prefill_rows,
	                                                 "decode_steps", tm.steps, "decode_position", tm.pos,
	                                                 "repetitions", tm.reps)) != 0) {
		json_decref(j);
		j = NULL;
	}
	if (j == NULL)
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
done:
	nesa_free(tm.prefill);
	nesa_graph_free(g);
	if (s != NESA_OK) {
		json_decref(j);
		return s;
	}
	*out = j;
	return NESA_OK;
}

enum nesa_status
nesa_profile_model(struct nesa_model *m, const struct nesa_model_profile_opts *o, json_t **out,
                   struct nesa_err *err)
{
	enum nesa_status s = nesa_profile_graph(m->graph, m->weights, m->name, o, out, err);

	if (s != NESA_OK)
		return nesa_err_prefix(err, "cannot profile '%s'", m->path);
	if (json_object_set_new(*out, "source", json_pack("{s:s, s:s, s:s?}", "path", m->path, "format",
	                                                  m->format, "arch", m->arch)) != 0) {
		json_decref(*out);
		*out = NULL;
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	return NESA_OK;
}

enum nesa_status
nesa_profile_load(const char *path, const struct nesa_model_opts *mo, int context, struct nesa_model **m,
                  json_t **profile, struct nesa_err *err)
{
	struct nesa_model_profile_opts po;
	size_t len = strlen(path);
	enum nesa_status s;

	*m = NULL;
	*profile = NULL;
	if (len > 5 && strcmp(path + len - 5, ".json") == 0) {
		json_t *j = json_load_file(path, 0, NULL);
		const char *f = json_string_value(json_object_get(j, "format"));

		if (f != NULL && strcmp(f, "nesa-model-profile") == 0) {
			*profile = j;
			return NESA_OK;
		}
		json_decref(j);
	}
	s = nesa_model_load(path, mo, m, err);
	if (s != NESA_OK)
		return s;
	memset(&po, 0, sizeof po);
	po.context = context;
	s = nesa_profile_model(*m, &po, profile, err);
	if (s != NESA_OK) {
		nesa_model_free(*m);
		*m = NULL;
	}
	return s;
}

/* ---- links ---- */

/* Waits until fd is ready for events, at most timeout_s; NESA_ETIMEOUT otherwise. */
static enum nesa_status
wait_fd(int fd, short events, double timeout_s, const char *what, struct nesa_err *err)
{
	struct pollfd p = {fd, events, 0};
	int ms = timeout_s > 0 ? (int)(timeout_s * 1000) : -1, rc;

	do
		rc = poll(&p, 1, ms);
	while (rc < 0 && errno == EINTR);
	if (rc < 0)
		return nesa_err_sys(err, NESA_EIO, "cannot wait for %s", what);
	if (rc == 0)
		return nesa_err_set(err, NESA_ETIMEOUT, "%s sent nothing for %g s", what, timeout_s);
	return NESA_OK;
}

/* Reads exactly n bytes; *eof (may be NULL) tells a clean end before the first byte. */
static enum nesa_status
read_full(int fd, void *buf, size_t n, double timeout_s, const char *what, bool *eof, struct nesa_err *err)
{
	size_t got = 0;

	if (eof != NULL)
		*eof = false;
	while (got < n) {
		ssize_t r;
		enum nesa_status s = wait_fd(fd, POLLIN, timeout_s, what, err);

		if (s != NESA_OK)
			return s;
		r = read(fd, (char *)buf + got, n - got);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0)
			return nesa_err_sys(err, NESA_EREMOTE, "cannot read from %s", what);
		if (r == 0) {
			if (got == 0 && eof != NULL) {
				*eof = true;
				return NESA_OK;
			}
			return nesa_err_set(err, NESA_EREMOTE, "%s closed after %zu of %zu bytes", what, got, n);
		}
		got += (size_t)r;
	}
	return NESA_OK;
}

static enum nesa_status
write_full(int fd, const void *buf, size_t n, double timeout_s, const char *what, struct nesa_err *err)
{
	size_t put = 0;

	while (put < n) {
		ssize_t w;
		enum nesa_status s = wait_fd(fd, POLLOUT, timeout_s, what, err);

		if (s != NESA_OK)
			return s;
		w = write(fd, (const char *)buf + put, n - put);
		if (w < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (w < 0)
			return nesa_err_sys(err, NESA_EREMOTE, "cannot write to %s", what);
		put += (size_t)w;
	}
	return NESA_OK;
}

static void
put_header(unsigned char h[8], uint32_t len)
{
	memcpy(h, NESA_ECHO_MAGIC, 4);
	h[4] = (unsigned char)len;
	h[5] = (unsigned char)(len >> 8);
	h[6] = (unsigned char)(len >> 16);
	h[7] = (unsigned char)(len >> 24);
}

enum nesa_status
nesa_profile_echo(int in_fd, int out_fd, double timeout_s, struct nesa_err *err)
{
	unsigned char h[8];
	char *buf = NULL;
	size_t cap = 0;
	enum nesa_status s = NESA_OK;

	for (;;) {
		uint32_t len;
		bool eof;

		/* Waiting for the next frame may take forever; inside one it may not. */
		s = read_full(in_fd, h, 8, 0, "the echo input", &eof, err);
		if (s != NESA_OK || eof)
			break;
		if (memcmp(h, NESA_ECHO_MAGIC, 4) != 0) {
			s = nesa_err_set(err, NESA_EFORMAT, "echo input is not echo frames (bad magic %02x%02x%02x%02x)",
			                 h[0], h[1], h[2], h[3]);
			break;
		}
		len = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 24;
		if (len > NESA_ECHO_MAX) {
			s = nesa_err_set(err, NESA_EFORMAT, "echo frame of %u bytes is over the limit of %u", len,
			                 NESA_ECHO_MAX);
			break;
		}
		if (len > cap) {
			char *nb = nesa_realloc(buf, len);

			if (nb == NULL) {
				s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
				break;
			}
			buf = nb;
			cap = len;
		}
		s = read_full(in_fd, buf, len, timeout_s, "the echo input", NULL, err);
		if (s == NESA_OK)
			s = write_full(out_fd, h, 8, timeout_s, "the echo output", err);
		if (s == NESA_OK)
			s = write_full(out_fd, buf, len, timeout_s, "the echo output", err);
		if (s != NESA_OK)
			break;
	}
	nesa_free(buf);
	return s;
}

enum nesa_status
nesa_profile_echo_serve(int fd, double timeout_s, struct nesa_err *err)
{
	for (;;) {
		struct nesa_err e;
		int c = nesa_net_accept(fd);

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return nesa_err_sys(err, NESA_EIO, "cannot accept a connection");
		}
		if (nesa_profile_echo(c, c, timeout_s > 0 ? timeout_s : 30, &e) != NESA_OK)
			nesa_log(NESA_LOG_WARN, "echo connection dropped: %s", nesa_err_msg(&e));
		close(c);
	}
}

/* A peer reached through a child process or a socket. */
struct peer {
	int rfd, wfd;
	pid_t pid;          /* the child, leader of its own process group; -1 for TCP */
	char name[256];     /* 'target', for messages */
};

/*
 * Stops the child: end of input first, then after grace_s SIGTERM and
 * SIGKILL to its whole process group (a shell's children too); always
 * reaps it.
 */
static void
peer_close(struct peer *p, double grace_s)
{
	double t0 = nesa_now();
	int status, sig = 0;

	if (p->wfd >= 0 && p->wfd != p->rfd)
		close(p->wfd);
	if (p->rfd >= 0)
		close(p->rfd);
	p->rfd = p->wfd = -1;
	if (p->pid <= 0)
		return;
	for (;;) {
		pid_t r = waitpid(p->pid, &status, WNOHANG);

		if (r == p->pid || (r < 0 && errno != EINTR))
			break;
		if (nesa_now() - t0 >= grace_s && sig != SIGKILL) {
			sig = sig == 0 ? SIGTERM : SIGKILL;
			kill(-p->pid, sig);
			t0 = nesa_now();
			if (sig == SIGKILL) {
				waitpid(p->pid, &status, 0);
				break;
			}
		}
		usleep(10000);
	}
	/* Orphans of the command came to us (we are a subreaper): reap its group too. */
	if (sig != 0 || grace_s > 0) {
		double t1 = nesa_now();

		while (waitpid(-p->pid, &status, WNOHANG) >= 0 && nesa_now() - t1 < 1.0) {
			kill(-p->pid, SIGKILL);
			usleep(1000);
		}
	}
	p->pid = -1;
}

static enum nesa_status
peer_open(struct peer *p, const char *target, double timeout_s, struct nesa_err *err)
{
	int to[2], from[2];

	p->rfd = p->wfd = -1;
	p->pid = -1;
	snprintf(p->name, sizeof p->name, "'%s'", target);
	if (strncmp(target, "tcp://", 6) == 0) {
		enum nesa_status s = nesa_net_connect(target, (int)(timeout_s * 1000), &p->rfd, err);

		if (s == NESA_OK) {
			p->wfd = p->rfd;
			fcntl(p->rfd, F_SETFL, fcntl(p->rfd, F_GETFL) | O_NONBLOCK);
		}
		return s;
	}
#ifdef PR_SET_CHILD_SUBREAPER
	/* Whatever the command starts and leaves behind is ours to reap. */
	prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
#endif
	if (pipe2(to, O_CLOEXEC) != 0)
		return nesa_err_sys(err, NESA_EIO, "cannot create a pipe for '%s'", target);
	if (pipe2(from, O_CLOEXEC) != 0) {
		close(to[0]);
		close(to[1]);
		return nesa_err_sys(err, NESA_EIO, "cannot create a pipe for '%s'", target);
	}
	p->pid = fork();
	if (p->pid < 0) {
		close(to[0]);
		close(to[1]);
		close(from[0]);
		close(from[1]);
		return nesa_err_sys(err, NESA_EIO, "cannot start '%s'", target);
	}
	if (p->pid == 0) {
		/* The child: its own process group, our pipes as stdin and stdout, SIGPIPE as usual. */
		sigset_t ps;

		setpgid(0, 0);
		signal(SIGPIPE, SIG_DFL);
		sigemptyset(&ps);
		sigaddset(&ps, SIGPIPE);
		sigprocmask(SIG_UNBLOCK, &ps, NULL);
		if (dup2(to[0], 0) < 0 || dup2(from[1], 1) < 0)
			_exit(127);
		execl("/bin/sh", "sh", "-c", target, (char *)NULL);
		_exit(127);
	}
	/* Also here: whichever of parent and child runs first, the group exists before any kill. */
	setpgid(p->pid, p->pid);
	close(to[0]);
	close(from[1]);
	p->wfd = to[1];
	p->rfd = from[0];
	fcntl(p->rfd, F_SETFL, fcntl(p->rfd, F_GETFL) | O_NONBLOCK);
	fcntl(p->wfd, F_SETFL, fcntl(p->wfd, F_GETFL) | O_NONBLOCK);
	return NESA_OK;
}

/*
 * One round trip of a frame of n payload bytes; checks the echo and
 * returns seconds.  Writing and reading interleave, so a peer that streams
 * bytes back before it has the whole frame (cat, a relay) cannot deadlock
 * with us on full pipe buffers.
 */
static enum nesa_status
round_trip(struct peer *p, unsigned char *out, unsigned char *in, uint32_t n, double timeout_s,
           double *sec, struct nesa_err *err)
{
	size_t total = 8 + (size_t)n, put = 0, got = 0;
	int ms = (int)(timeout_s * 1000);
	double t0 = nesa_now();

	put_header(out, n);
	while (got < total) {
		struct pollfd f[2] = {{p->rfd, POLLIN, 0}, {p->wfd, POLLOUT, 0}};
		int nf = 1, rc;
		bool can_write;

		if (put < total) {
			if (p->wfd == p->rfd)
				f[0].events |= POLLOUT;
			else
				nf = 2;
		}
		rc = poll(f, (nfds_t)nf, ms);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return nesa_err_sys(err, NESA_EIO, "cannot wait for %s", p->name);
		if (rc == 0)
			return nesa_err_set(err, NESA_ETIMEOUT, "%s sent nothing for %g s", p->name, timeout_s);
		can_write = put < total && (f[nf - 1].revents & (POLLOUT | POLLERR | POLLHUP)) != 0;
		if (f[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = read(p->rfd, in + got, total - got);

			if (r == 0)
				return nesa_err_set(err, NESA_EREMOTE, "%s closed after %zu of %zu bytes", p->name, got, total);
			if (r < 0 && errno != EAGAIN && errno != EINTR)
				return nesa_err_sys(err, NESA_EREMOTE, "cannot read from %s", p->name);
			if (r > 0)
				got += (size_t)r;
		}
		if (can_write) {
			ssize_t w = write(p->wfd, out + put, total - put);

			if (w < 0 && errno != EAGAIN && errno != EINTR)
				return nesa_err_sys(err, NESA_EREMOTE, "cannot write to %s", p->name);
			if (w > 0)
				put += (size_t)w;
		}
	}
	*sec = nesa_now() - t0;
	if (memcmp(in, out, total) != 0)
		return nesa_err_set(err, NESA_EREMOTE, "%s did not echo a frame of %u bytes back unchanged", p->name, n);
	return NESA_OK;
}

enum nesa_status
nesa_profile_link(const char *target, const struct nesa_link_opts *o, json_t **out, struct nesa_err *err)
{
	double timeout = o->timeout_s > 0 ? o->timeout_s : 30, setup = 0;
	int pings = o->quick ? 20 : 200, bw_runs = o->quick ? 3 : 9, i;
	uint32_t big = o->quick ? 4u << 20 : 16u << 20;
	double rtt[200], bw[9];
	unsigned char *obuf = nesa_malloc(8 + (size_t)big), *ibuf = nesa_malloc(8 + (size_t)big);
	struct peer p;
	struct stat3 r, b;
	struct nesa_progress pr;
	struct timespec zero = {0, 0};
	sigset_t pipe_set, old_mask;
	enum nesa_status s;

	*out = NULL;
	p.rfd = p.wfd = -1;
	p.pid = -1;
	/* A peer that goes away must fail a write, not kill the caller: hold SIGPIPE back. */
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
	if (obuf == NULL || ibuf == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	for (i = 0; i < (int)big; i++)
		obuf[8 + i] = (unsigned char)(i * 131 + (i >> 9));
	s = peer_open(&p, target, timeout, err);
	if (s != NESA_OK)
		goto done;
	/* The first answer proves the far end speaks echo; its time includes start-up. */
	s = round_trip(&p, obuf, ibuf, 64, timeout, &setup, err);
	if (s == NESA_ETIMEOUT || s == NESA_EREMOTE)
		nesa_err_prefix(err, "no echo from '%s' (is 'nesa-profile --echo' at the far end?)", target);
	nesa_progress_begin(&pr, "nesa-profile: link", (uint64_t)(pings + bw_runs));
	for (i = 0; i < pings && s == NESA_OK; i++) {
		s = round_trip(&p, obuf, ibuf, 64, timeout, &rtt[i], err);
		nesa_progress_update(&pr, (uint64_t)i + 1);
	}
	if (s != NESA_OK) {
		nesa_progress_end(&pr);
		goto done;
	}
	r = stat3(rtt, pings);
	/* Bandwidth: a big frame goes there and back; the round-trip time is not transfer. */
	for (i = 0; i < bw_runs && s == NESA_OK; i++) {
		double t;

		s = round_trip(&p, obuf, ibuf, big, timeout, &t, err);
		bw[i] = 2.0 * (8 + big) / fmax(t - r.min, 1e-9) * 1e-9;
		nesa_progress_update(&pr, (uint64_t)(pings + i + 1));
	}
	nesa_progress_end(&pr);
	if (s != NESA_OK)
		goto done;
	b = stat3(bw, bw_runs);
	*out = json_pack("{s:s, s:i, s:s, s:s, s:f, s:f, s:{s:f, s:f, s:f, s:i}, s:{s:f, s:f, s:f, s:i, s:i}, s:f}",
	                 "format", "nesa-link-profile", "version", NESA_PROFILE_VERSION, "target", target,
	                 "transport", p.pid > 0 ? "command" : "tcp", "rtt_ms", 1e3 * r.med, "gbytes_per_s", b.med,
	                 "rtt", "median_ms", 1e3 * r.med, "min_ms", 1e3 * r.min, "max_ms", 1e3 * r.max, "runs",
	                 r.runs, "bandwidth", "gbytes_per_s", b.med, "min", b.min, "max", b.max, "runs", b.runs,
	                 "bytes", (int)big, "setup_ms", 1e3 * setup);
	if (*out == NULL)
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
done:
	/* A peer that failed gets no grace; one that answered gets time to see end of input. */
	peer_close(&p, s == NESA_OK ? 2.0 : 0.0);
	/* Drop a SIGPIPE raised meanwhile, then restore the caller's mask. */
	while (sigtimedwait(&pipe_set, NULL, &zero) > 0)
		;
	pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
	nesa_free(obuf);
	nesa_free(ibuf);
	return s;
}

/* ---- output ---- */

enum nesa_status
nesa_profile_write_json(const char *path, const json_t *j, bool force, struct nesa_err *err)
{
	struct nesa_out o;
	enum nesa_status s;

	s = nesa_out_open(&o, path, force ? NESA_OUT_FORCE : 0, err);
	if (s != NESA_OK)
		return s;
	s = nesa_out_write_json(&o, j, JSON_INDENT(2) | JSON_REAL_PRECISION(10), err);
	if (s == NESA_OK)
		return nesa_out_commit(&o, err);
	nesa_out_abort(&o);
	return s;
}
