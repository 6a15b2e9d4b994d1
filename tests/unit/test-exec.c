/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for graph compilation and the executor: a small random llama
 * against a naive full-recomputation reference written here, KV-cached
 * decoding against prefill, batching of sessions, head row selection,
 * splitting into block ranges, the refusals, linear ops with low-rank
 * factors (results, costs, refusals of factors that do not fit), the cost
 * of linear_int8 outliers, and the executor tap.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>

#include "testutil.h"
#include "testmodel.h"

#include "arch.h"
#include "exec.h"
#include "graph.h"

enum { DIM = 16, HID = 24, LAYERS = 2, HEADS = 4, KV = 2, VOCAB = 20, CTX = 32, HD = DIM / HEADS };

struct model {
	struct nesa_tset ts;
	json_t *doc;
};

static float *
add(struct model *m, const char *name, int64_t a, int64_t b, uint64_t *seed, float scale, float base)
{
	struct nesa_tensor *t;
	int64_t shape[2] = {a, b}, i;
	float *d;

	assert_int_equal(nesa_tset_alloc(&m->ts, name, NESA_F32, b > 0 ? 2 : 1, shape, &t, NULL), NESA_OK);
	d = t->data;
	for (i = 0; i < a * (b > 0 ? b : 1); i++)
		d[i] = base + scale * test_randf(seed);
	return d;
}

static void
build(struct model *m)
{
	struct nesa_lm_hparams hp = {DIM, HID, LAYERS, HEADS, KV, VOCAB, CTX, 1e-5f, 10000.0f,
	                             NESA_ROPE_INTERLEAVED};
	uint64_t seed = 42;
	char n[32];
	int l;

	nesa_tset_init(&m->ts);
	add(m, "emb", VOCAB, DIM, &seed, 1.0f, 0);
	for (l = 0; l < LAYERS; l++) {
		snprintf(n, sizeof n, "%d.an", l), add(m, n, DIM, 0, &seed, 0.1f, 1);
		snprintf(n, sizeof n, "%d.wq", l), add(m, n, DIM, DIM, &seed, 0.3f, 0);
		snprintf(n, sizeof n, "%d.wk", l), add(m, n, KV * HD, DIM, &seed, 0.3f, 0);
		snprintf(n, sizeof n, "%d.wv", l), add(m, n, KV * HD, DIM, &seed, 0.3f, 0);
		snprintf(n, sizeof n, "%d.wo", l), add(m, n, DIM, DIM, &seed, 0.3f, 0);
		snprintf(n, sizeof n, "%d.fn", l), add(m, n, DIM, 0, &seed, 0.1f, 1);
		snprintf(n, sizeof n, "%d.w1", l), add(m, n, HID, DIM, &seed, 0.3f, 0);
		snprintf(n, sizeof n, "%d.w2", l), add(m, n, DIM, HID, &seed, 0.3f, 0);
		snprintf(n, sizeof n, "%d.w3", l), add(m, n, HID, DIM, &seed, 0.3f, 0);
	}
	add(m, "norm", DIM, 0, &seed, 0.1f, 1);
	add(m, "out", VOCAB, DIM, &seed, 0.5f, 0);
	m->doc = nesa_llama_graph(&hp, test_lm_namer, NULL, "tiny");
	assert_non_null(m->doc);
}

static const float *
W(struct model *m, const char *name)
{
	struct nesa_tensor *t = nesa_tset_find(&m->ts, name);

	assert_non_null(t);
	return t->data;
}

static void
matvec(const float *w, const float *x, float *y, int out, int in)
{
	int o, i;

	for (o = 0; o < out; o++) {
		double s = 0;

		for (i = 0; i < in; i++)
			s += (double)w[o * in + i] * x[i];
		y[o] = (float)s;
	}
}

static void
rmsnorm(const float *x, const float *w, float *y)
{
	double ss = 0;
	int i;

	for (i = 0; i < DIM; i++)
		ss += (double)x[i] * x[i];
	for (i = 0; i < DIM; i++)
		y[i] = (float)(x[i] / sqrt(ss / DIM + 1e-5) * w[i]);
}

static void
rope(float *v, int n_heads, int pos)
{
	int h, i;

	for (h = 0; h < n_heads; h++)
		for (i = 0; i < HD; i += 2) {
			double ang = pos * pow(10000.0, -(double)i / HD), c = cos(ang), s = sin(ang);
			double a = v[h * HD + i], b = v[h * HD + i + 1];

			v[h * HD + i] = (float)(a * c - b * s);
			v[h * HD + i + 1] = (float)(a * s + b * c);
		}
}

/*
 * Naive reference: logits (T, VOCAB) of a whole sequence, recomputing the
 * keys and values of every position, in double where it is cheap.
 */
static void
reference(struct model *m, const int32_t *tok, int T, float *logits)
{
	static float x[CTX][DIM], K[LAYERS][CTX][KV * HD], V[LAYERS][CTX][KV * HD];
	float h[DIM], q[DIM], a[DIM], o[DIM], g[HID], u[HID], d[DIM];
	char n[32];
	int t, l, hh, s, i;

	for (t = 0; t < T; t++)
		memcpy(x[t], W(m, "emb") + tok[t] * DIM, sizeof x[t]);
	for (l = 0; l < LAYERS; l++) {
		for (t = 0; t < T; t++) {
			snprintf(n, sizeof n, "%d.an", l), rmsnorm(x[t], W(m, n), h);
			snprintf(n, sizeof n, "%d.wk", l), matvec(W(m, n), h, K[l][t], KV * HD, DIM);
			snprintf(n, sizeof n, "%d.wv", l), matvec(W(m, n), h, V[l][t], KV * HD, DIM);
			rope(K[l][t], KV, t);
		}
		for (t = 0; t < T; t++) {
			snprintf(n, sizeof n, "%d.an", l), rmsnorm(x[t], W(m, n), h);
			snprintf(n, sizeof n, "%d.wq", l), matvec(W(m, n), h, q, DIM, DIM);
			rope(q, HEADS, t);
			for (hh = 0; hh < HEADS; hh++) {
				double sc[CTX], mx = -1e300, sum = 0;
				int kvh = hh / (HEADS / KV);

				for (s = 0; s <= t; s++) {
					sc[s] = 0;
					for (i = 0; i < HD; i++)
						sc[s] += (double)q[hh * HD + i] * K[l][s][kvh * HD + i];
					sc[s] /= sqrt((double)HD);
					mx = sc[s] > mx ? sc[s] : mx;
				}
				for (s = 0; s <= t; s++)
					sum += (sc[s] = exp(sc[s] - mx));
				for (i = 0; i < HD; i++) {
					double acc = 0;

					for (s = 0; s <= t; s++)
						acc += sc[s] / sum * V[l][s][kvh * HD + i];
					a[hh * HD + i] = (float)acc;
				}
			}
			snprintf(n, sizeof n, "%d.wo", l), matvec(W(m, n), a, o, DIM, DIM);
			for (i = 0; i < DIM; i++)
				x[t][i] += o[i];
			snprintf(n, sizeof n, "%d.fn", l), rmsnorm(x[t], W(m, n), h);
			snprintf(n, sizeof n, "%d.w1", l), matvec(W(m, n), h, g, HID, DIM);
			snprintf(n, sizeof n, "%d.w3", l), matvec(W(m, n), h, u, HID, DIM);
			for (i = 0; i < HID; i++)
				g[i] = (float)(g[i] / (1 + exp(-(double)g[i])) * u[i]);
			snprintf(n, sizeof n, "%d.w2", l), matvec(W(m, n), g, d, DIM, HID);
			for (i = 0; i < DIM; i++)
				x[t][i] += d[i];
		}
	}
	for (t = 0; t < T; t++) {
		rmsnorm(x[t], W(m, "norm"), h);
		matvec(W(m, "out"), h, logits + t * VOCAB, VOCAB, DIM);
	}
}

#define ATOL 2e-5f
#define RTOL 1e-4f

static void
assert_close(const float *a, const float *ref, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		if (!(fabsf(a[i] - ref[i]) <= ATOL + RTOL * fabsf(ref[i]))) {
			fprintf(stderr, "element %lld: %.9g vs reference %.9g\n", (long long)i, a[i], ref[i]);
			fail();
		}
}

static const int32_t seq_a[12] = {1, 5, 7, 19, 0, 3, 3, 12, 8, 2, 17, 4};
static const int32_t seq_b[9] = {2, 9, 9, 1, 14, 6, 11, 0, 13};

static void
test_prefill_and_decode(void **state)
{
	struct model m;
	struct nesa_graph *g;
	struct nesa_exec *e;
	struct nesa_err err;
	float ref[12 * VOCAB];
	const float *out[1];
	const void *in[1];
	int64_t rows;
	int t;

	(void)state;
	build(&m);
	assert_int_equal(nesa_graph_compile(m.doc, &m.ts, 0, -1, &g, &err), NESA_OK);
	assert_int_equal(g->n_blocks, LAYERS + 2);
	assert_int_equal(g->n_caches, LAYERS);
	assert_int_equal(nesa_exec_new(g, NULL, &e, &err), NESA_OK);
	reference(&m, seq_a, 12, ref);

	/* Whole sequence at once. */
	{
		struct nesa_seg sg = {1, 0, 12, false};

		in[0] = seq_a;
		assert_int_equal(nesa_exec_run(e, &sg, 1, in, out, &rows, &err), NESA_OK);
		assert_int_equal(rows, 12);
		assert_close(out[0], ref, 12 * VOCAB);
	}
	/* Prefill 5, then decode one token at a time from the KV cache. */
	{
		struct nesa_seg sg = {2, 0, 5, true};

		in[0] = seq_a;
		assert_int_equal(nesa_exec_run(e, &sg, 1, in, out, &rows, &err), NESA_OK);
		assert_int_equal(rows, 1);
		assert_close(out[0], ref + 4 * VOCAB, VOCAB);
		for (t = 5; t < 12; t++) {
			struct nesa_seg one = {2, (uint32_t)t, 1, true};

			in[0] = &seq_a[t];
			assert_int_equal(nesa_exec_run(e, &one, 1, in, out, &rows, &err), NESA_OK);
			assert_close(out[0], ref + t * VOCAB, VOCAB);
		}
		assert_int_equal(nesa_exec_positions(e, 2), 12);
	}
	/* Rewinding a session re-computes from that position. */
	{
		struct nesa_seg sg = {2, 3, 2, false};

		in[0] = &seq_a[3];
		assert_int_equal(nesa_exec_run(e, &sg, 1, in, out, &rows, &err), NESA_OK);
		assert_close(out[0], ref + 3 * VOCAB, 2 * VOCAB);
		assert_int_equal(nesa_exec_positions(e, 2), 5);
	}
	assert_int_equal(nesa_exec_sessions(e), 2);
	nesa_exec_end(e, 1);
	nesa_exec_end(e, 99);
	assert_int_equal(nesa_exec_sessions(e), 1);
	nesa_exec_free(e);
	nesa_graph_free(g);
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

/* Two sessions in one batch give what each gives alone. */
static void
test_batching(void **state)
{
	struct model m;
	struct nesa_graph *g;
	struct nesa_exec *e;
	struct nesa_err err;
	float ra[12 * VOCAB], rb[9 * VOCAB];
	int32_t both[12 + 9];
	const float *out[1];
	const void *in[1] = {both};
	int64_t rows;

	(void)state;
	build(&m);
	reference(&m, seq_a, 12, ra);
	reference(&m, seq_b, 9, rb);
	assert_int_equal(nesa_graph_compile(m.doc, &m.ts, 0, -1, &g, &err), NESA_OK);
	assert_int_equal(nesa_exec_new(g, NULL, &e, &err), NESA_OK);
	memcpy(both, seq_a, 7 * sizeof(int32_t));
	memcpy(both + 7, seq_b, 4 * sizeof(int32_t));
	{
		struct nesa_seg sg[2] = {{10, 0, 7, false}, {20, 0, 4, true}};

		assert_int_equal(nesa_exec_run(e, sg, 2, in, out, &rows, &err), NESA_OK);
		assert_int_equal(rows, 8);
		assert_close(out[0], ra, 7 * VOCAB);
		assert_close(out[0] + 7 * VOCAB, rb + 3 * VOCAB, VOCAB);
	}
	/* Continue both, in the other order, with different lengths. */
	memcpy(both, seq_b + 4, 5 * sizeof(int32_t));
	memcpy(both + 5, seq_a + 7, 5 * sizeof(int32_t));
	{
		struct nesa_seg sg[2] = {{20, 4, 5, false}, {10, 7, 5, true}};

		assert_int_equal(nesa_exec_run(e, sg, 2, in, out, &rows, &err), NESA_OK);
		assert_int_equal(rows, 6);
		assert_close(out[0], rb + 4 * VOCAB, 5 * VOCAB);
		assert_close(out[0] + 5 * VOCAB, ra + 11 * VOCAB, VOCAB);
	}
	nesa_exec_free(e);
	nesa_graph_free(g);
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

/* A model run as three block ranges, chained by hand, equals the whole. */
static void
test_split_ranges(void **state)
{
	struct model m;
	struct nesa_graph *g[3];
	struct nesa_exec *e[3];
	struct nesa_err err;
	float ref[12 * VOCAB];
	static const int first[3] = {0, 2, 3}, count[3] = {2, 1, 1};
	const float *out[1];
	const void *in[1];
	int64_t rows;
	int t, s;

	(void)state;
	build(&m);
	reference(&m, seq_a, 12, ref);
	for (s = 0; s < 3; s++) {
		json_t *slice = nesa_graph_doc_slice(m.doc, first[s], count[s]);

		assert_non_null(slice);
		assert_int_equal(nesa_graph_compile(slice, &m.ts, first[s], count[s], &g[s], &err), NESA_OK);
		json_decref(slice);
		assert_int_equal(nesa_exec_new(g[s], NULL, &e[s], &err), NESA_OK);
	}
	for (t = 0; t < 12; t++) {
		struct nesa_seg sg = {5, (uint32_t)t, 1, true};

		in[0] = &seq_a[t];
		for (s = 0; s < 3; s++) {
			assert_int_equal(nesa_exec_run(e[s], &sg, 1, in, out, &rows, &err), NESA_OK);
			in[0] = out[0];
		}
		assert_close(out[0], ref + t * VOCAB, VOCAB);
	}
	for (s = 0; s < 3; s++) {
		nesa_exec_free(e[s]);
		nesa_graph_free(g[s]);
	}
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

static void
test_refusals(void **state)
{
	struct model m;
	struct nesa_graph *g;
	struct nesa_exec *e;
	struct nesa_exec_opts opts = {0};
	struct nesa_err err;
	const float *out[1];
	const void *in[1] = {seq_a};
	int32_t bad[2] = {3, VOCAB};
	int64_t rows;

	(void)state;
	build(&m);
	assert_int_equal(nesa_graph_compile(m.doc, &m.ts, 0, -1, &g, &err), NESA_OK);
	/* One position of KV cache costs 2 * LAYERS * KV * HD floats. */
	opts.kv_limit = 8 * 2 * LAYERS * KV * HD * sizeof(float);
	assert_int_equal(nesa_exec_new(g, &opts, &e, &err), NESA_OK);
	{
		struct nesa_seg gap = {1, 3, 1, false}, big = {1, 0, 9, false};
		struct nesa_seg ctx = {2, 0, CTX + 1, false}, ok = {1, 0, 1, false};

		assert_int_equal(nesa_exec_run(e, &gap, 1, in, out, &rows, &err), NESA_EINVAL);
		assert_non_null(strstr(err.msg, "session 1: position 3 follows a gap"));
		assert_int_equal(nesa_exec_run(e, &big, 1, in, out, &rows, &err), NESA_ELIMIT);
		assert_non_null(strstr(err.msg, "over the limit"));
		assert_int_equal(nesa_exec_run(e, &ctx, 1, in, out, &rows, &err), NESA_ELIMIT);
		assert_non_null(strstr(err.msg, "beyond the model's context of 32"));
		in[0] = bad;
		ok.rows = 2;
		assert_int_equal(nesa_exec_run(e, &ok, 1, in, out, &rows, &err), NESA_EINVAL);
		assert_non_null(strstr(err.msg, "token id 20 is out of range [0, 20)"));
		/* The failed run left session 1 at position 0: a fresh start works. */
		in[0] = seq_a;
		assert_int_equal(nesa_exec_run(e, &ok, 1, in, out, &rows, &err), NESA_OK);
	}
	nesa_exec_free(e);
	nesa_graph_free(g);

	/* Compile-time refusals name the block, the op and the problem. */
	{
		json_t *doc = json_deep_copy(m.doc);
		json_t *op = json_array_get(json_object_get(json_array_get(json_object_get(doc, "blocks"), 1), "ops"), 1);

		json_object_set_new(op, "op", json_string("flash_attention"));
		assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, &err), NESA_EUNSUPPORTED);
		assert_non_null(strstr(err.msg, "unknown op 'flash_attention'"));
		assert_non_null(strstr(err.msg, "supported: embedding,"));
		json_object_set_new(op, "op", json_string("linear"));
		json_object_set_new(op, "weight", json_string("1.w1"));
		assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, &err), NESA_ESHAPE);
		assert_non_null(strstr(err.msg, "block 1 ('layer.0') op"));
		json_object_set_new(op, "weight", json_string("nope"));
		assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, &err), NESA_EFORMAT);
		assert_non_null(strstr(err.msg, "weight 'nope' not found"));
		json_object_set_new(doc, "graph_version", json_integer(2));
		assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, &err), NESA_EVERSION);
		json_decref(doc);
	}
	/* Chaining: block 2's input renamed no longer matches block 1's output. */
	{
		json_t *doc = json_deep_copy(m.doc);
		json_t *blk = json_array_get(json_object_get(doc, "blocks"), 2);

		json_object_set_new(json_array_get(json_object_get(blk, "inputs"), 0), "shape",
		                    json_pack("[i]", DIM + 1));
		assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, &err), NESA_ESHAPE);
		json_decref(doc);
	}
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

static void
test_costs(void **state)
{
	struct model m;
	struct nesa_graph *g;
	const struct nesa_block *b;

	(void)state;
	build(&m);
	assert_int_equal(nesa_graph_compile(m.doc, &m.ts, 0, -1, &g, NULL), NESA_OK);
	b = &g->blocks[1];
	assert_int_equal(b->cost.param_bytes,
	                 4 * (2 * DIM + DIM * DIM * 2 + 2 * KV * HD * DIM + 3 * HID * DIM));
	assert_int_equal(b->cost.kv_bytes_per_row, 2 * KV * HD * 4);
	assert_int_equal(b->cost.in_bytes_per_row, DIM * 4);
	assert_true(b->cost.flops_per_row >= 2.0 * (2 * DIM * DIM + 2 * KV * HD * DIM + 3 * HID * DIM));
	assert_true(b->cost.flops_per_ctx == 4.0 * HEADS * HD);
	assert_int_equal(g->blocks[0].cost.param_bytes, VOCAB * DIM * 4);
	nesa_graph_free(g);
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

/* The op object of the graph document whose "weight" is name. */
static json_t *
op_with_weight(json_t *doc, const char *name)
{
	json_t *blk, *op;
	size_t i, j;

	json_array_foreach(json_object_get(doc, "blocks"), i, blk)
		json_array_foreach(json_object_get(blk, "ops"), j, op)
			if (json_is_string(json_object_get(op, "weight")) &&
			    strcmp(json_string_value(json_object_get(op, "weight")), name) == 0)
				return op;
	fail_msg("no op uses weight '%s'", name);
	return NULL;
}

enum { R = 3 };

/*
 * Low-rank factors in a linear op: 0.wq is made exactly A B (A (DIM, R),
 * B (R, DIM)) and 0.w1 is split into a residual weight plus factors, so the
 * factorized graph must give the reference's logits, in prefill (BLAS) and
 * one-token decoding (GEMV); its FLOP and byte costs change by the
 * factors' and nothing else.
 */
static void
test_lowrank(void **state)
{
	struct model m;
	struct nesa_graph *g, *g0;
	struct nesa_exec *e;
	struct nesa_err err;
	float ref[12 * VOCAB], *a, *b, *wq, *w1, *a1, *b1, *res;
	const float *out[1];
	const void *in[1];
	json_t *doc;
	uint64_t seed = 5;
	int64_t rows;
	int i, j, t;

	(void)state;
	build(&m);
	assert_int_equal(nesa_graph_compile(m.doc, &m.ts, 0, -1, &g0, &err), NESA_OK);
	a = add(&m, "0.wq.a", DIM, R, &seed, 0.5f, 0);
	b = add(&m, "0.wq.b", R, DIM, &seed, 0.5f, 0);
	a1 = add(&m, "0.w1.a", HID, R, &seed, 0.2f, 0);
	b1 = add(&m, "0.w1.b", R, DIM, &seed, 0.2f, 0);
	res = add(&m, "0.w1.res", HID, DIM, &seed, 0, 0);
	wq = (float *)W(&m, "0.wq");
	w1 = (float *)W(&m, "0.w1");
	for (i = 0; i < DIM; i++)
		for (j = 0; j < DIM; j++) {
			double s = 0;

			for (t = 0; t < R; t++)
				s += (double)a[i * R + t] * b[t * DIM + j];
			wq[i * DIM + j] = (float)s;
		}
	for (i = 0; i < HID; i++)
		for (j = 0; j < DIM; j++) {
			double s = 0;

			for (t = 0; t < R; t++)
				s += (double)a1[i * R + t] * b1[t * DIM + j];
			res[i * DIM + j] = w1[i * DIM + j] - (float)s;
		}
	reference(&m, seq_a, 12, ref);
	doc = json_deep_copy(m.doc);
	{
		json_t *op = op_with_weight(doc, "0.wq");

		json_object_del(op, "weight");
		json_object_set_new(op, "lowrank_a", json_string("0.wq.a"));
		json_object_set_new(op, "lowrank_b", json_string("0.wq.b"));
		op = op_with_weight(doc, "0.w1");
		json_object_set_new(op, "weight", json_string("0.w1.res"));
		json_object_set_new(op, "lowrank_a", json_string("0.w1.a"));
		json_object_set_new(op, "lowrank_b", json_string("0.w1.b"));
	}
	assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, &err), NESA_OK);
	/* wq: 2 DIM DIM becomes 2 R (DIM + DIM); w1 adds 2 R (DIM + HID) to its weight's. */
	assert_true(fabs(g->blocks[1].cost.flops_per_row -
	                 (g0->blocks[1].cost.flops_per_row - 2.0 * DIM * DIM + 2.0 * R * (2 * DIM) +
	                  2.0 * R * (DIM + HID))) < 1e-6);
	assert_int_equal(g->blocks[1].cost.param_bytes,
	                 g0->blocks[1].cost.param_bytes - DIM * DIM * 4 + 4 * R * (2 * DIM + DIM + HID));
	assert_int_equal(nesa_exec_new(g, NULL, &e, &err), NESA_OK);
	{
		struct nesa_seg sg = {1, 0, 12, false};

		in[0] = seq_a;
		assert_int_equal(nesa_exec_run(e, &sg, 1, in, out, &rows, &err), NESA_OK);
		assert_close(out[0], ref, 12 * VOCAB);
	}
	for (t = 0; t < 12; t++) {
		struct nesa_seg one = {2, (uint32_t)t, 1, true};

		in[0] = &seq_a[t];
		assert_int_equal(nesa_exec_run(e, &one, 1, in, out, &rows, &err), NESA_OK);
		assert_close(out[0], ref + t * VOCAB, VOCAB);
	}
	nesa_exec_free(e);
	nesa_graph_free(g);
	nesa_graph_free(g0);
	json_decref(doc);
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

/* Factors that do not fit their op, or each other, are refused at compile time. */
static void
test_lowrank_refusals(void **state)
{
	static const struct {
		const char *a, *b, *weight; /* NULL: key absent */
		enum nesa_status s;
		const char *msg;
	} cases[] = {
		{"0.wq.a", NULL, NULL, NESA_EFORMAT, "lowrank_a and lowrank_b go together"},
		{NULL, "0.wq.b", "0.wq", NESA_EFORMAT, "lowrank_a and lowrank_b go together"},
		{NULL, NULL, NULL, NESA_EFORMAT, "missing weight reference 'weight' (or the factors"},
		{"0.wq.a", "r4.b", NULL, NESA_ESHAPE, "low-rank factors '0.wq.a' [16, 3] and 'r4.b' [4, 16] do not fit"},
		{"0.wq.a", "wide.b", NULL, NESA_ESHAPE, "lowrank_b [r, 16]"},
		{"tall.a", "0.wq.b", "0.wq", NESA_ESHAPE, "weight 'tall.a' has shape [18, 3]; dimension 0 must be 16"},
		{"0.wq.a", "0.wq.b", "0.w1", NESA_ESHAPE, "weight '0.wq.a' has shape [16, 3]; dimension 0 must be 24"},
		{"int.a", "0.wq.b", NULL, NESA_EUNSUPPORTED, "low-rank factor 'int.a' has dtype i32"},
		{"0.wq.a", "vec.b", NULL, NESA_ESHAPE, "weight 'vec.b' has 1 dimensions, expected 2"},
	};
	struct model m;
	struct nesa_graph *g;
	struct nesa_err err;
	uint64_t seed = 9;
	size_t i;

	(void)state;
	build(&m);
	add(&m, "0.wq.a", DIM, R, &seed, 0.5f, 0);
	add(&m, "0.wq.b", R, DIM, &seed, 0.5f, 0);
	add(&m, "r4.b", R + 1, DIM, &seed, 0.5f, 0);
	add(&m, "wide.b", R, DIM + 2, &seed, 0.5f, 0);
	add(&m, "tall.a", DIM + 2, R, &seed, 0.5f, 0);
	add(&m, "vec.b", R, 0, &seed, 0.5f, 0);
	{
		struct nesa_tensor *t;
		const int64_t shape[2] = {DIM, R};

		assert_int_equal(nesa_tset_alloc(&m.ts, "int.a", NESA_I32, 2, shape, &t, NULL), NESA_OK);
	}
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		json_t *doc = json_deep_copy(m.doc), *op = op_with_weight(doc, "0.wq");

		json_object_del(op, "weight");
		if (cases[i].weight != NULL)
			json_object_set_new(op, "weight", json_string(cases[i].weight));
		if (cases[i].a != NULL)
			json_object_set_new(op, "lowrank_a", json_string(cases[i].a));
		if (cases[i].b != NULL)
			json_object_set_new(op, "lowrank_b", json_string(cases[i].b));
		g = NULL;
		assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, &err), cases[i].s);
		assert_null(g);
		if (strstr(err.msg, cases[i].msg) == NULL)
			fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].msg);
		assert_non_null(strstr(err.msg, "block 1 ('layer.0') op"));
		json_decref(doc);
	}
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

/* A linear_int8 op's FLOPs: the int8 product over every column plus the f32 outlier columns. */
static void
test_int8_costs(void **state)
{
	struct model m;
	struct nesa_graph *g, *g0;
	struct nesa_tensor *t;
	json_t *doc, *op;
	const int64_t sq[2] = {DIM, DIM}, so[2] = {DIM, 2}, k = 2;
	int32_t *oi;

	(void)state;
	build(&m);
	assert_int_equal(nesa_graph_compile(m.doc, &m.ts, 0, -1, &g0, NULL), NESA_OK);
	assert_int_equal(nesa_tset_alloc(&m.ts, "q.i8", NESA_I8, 2, sq, &t, NULL), NESA_OK);
	assert_int_equal(nesa_tset_alloc(&m.ts, "q.scale", NESA_F32, 1, sq, &t, NULL), NESA_OK);
	assert_int_equal(nesa_tset_alloc(&m.ts, "q.ow", NESA_F32, 2, so, &t, NULL), NESA_OK);
	assert_int_equal(nesa_tset_alloc(&m.ts, "q.oi", NESA_I32, 1, &k, &t, NULL), NESA_OK);
	oi = t->data;
	oi[0] = 2;
	oi[1] = 9;
	doc = json_deep_copy(m.doc);
	op = op_with_weight(doc, "0.wq");
	json_object_set_new(op, "op", json_string("linear_int8"));
	json_object_set_new(op, "weight", json_string("q.i8"));
	json_object_set_new(op, "scale", json_string("q.scale"));
	json_object_set_new(op, "outlier_weight", json_string("q.ow"));
	json_object_set_new(op, "outlier_index", json_string("q.oi"));
	assert_int_equal(nesa_graph_compile(doc, &m.ts, 0, -1, &g, NULL), NESA_OK);
	assert_true(fabs(g->blocks[1].cost.flops_per_row -
	                 (g0->blocks[1].cost.flops_per_row + 2.0 * DIM * k)) < 1e-6);
	/* i8 weights, f32 scales and outlier weights, i32 indices, each counted. */
	assert_int_equal(g->blocks[1].cost.param_bytes, g0->blocks[1].cost.param_bytes - DIM * DIM * 4 +
	                                                    DIM * DIM + DIM * 4 + DIM * k * 4 + k * 4);
	nesa_graph_free(g);
	nesa_graph_free(g0);
	json_decref(doc);
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

struct tap_log {
	int calls, fail_at;
	int64_t rows;
	double sum;
};

static enum nesa_status
tap(void *ctx, const struct nesa_block *b, int op_index, const float *x, int64_t rows, struct nesa_err *err)
{
	struct tap_log *l = ctx;
	const struct nesa_op *op = &b->ops[op_index];
	int64_t i;

	assert_true(op->kind == NESA_OP_LINEAR || op->kind == NESA_OP_LINEAR_INT8);
	l->calls++;
	l->rows += rows;
	for (i = 0; i < rows * b->values[op->in[0]].row_elems; i++)
		l->sum += x[i];
	if (l->calls == l->fail_at)
		return nesa_err_set(err, NESA_EINVAL, "tap refused block %d op %d", b->index, op_index);
	return NESA_OK;
}

/*
 * The executor tap sees every matrix op's input (7 per layer, and the
 * head), leaves the results alone although it turns op fusion off, and
 * stops a run with its status.
 */
static void
test_tap(void **state)
{
	struct model m;
	struct nesa_graph *g;
	struct nesa_exec *e;
	struct nesa_err err;
	struct tap_log log = {0};
	float ref[12 * VOCAB];
	const float *out[1];
	const void *in[1];
	int64_t rows;
	int t;

	(void)state;
	build(&m);
	reference(&m, seq_a, 12, ref);
	assert_int_equal(nesa_graph_compile(m.doc, &m.ts, 0, -1, &g, &err), NESA_OK);
	assert_int_equal(nesa_exec_new(g, NULL, &e, &err), NESA_OK);
	nesa_exec_set_tap(e, tap, &log);
	for (t = 0; t < 12; t++) {
		struct nesa_seg one = {1, (uint32_t)t, 1, false};

		in[0] = &seq_a[t];
		assert_int_equal(nesa_exec_run(e, &one, 1, in, out, &rows, &err), NESA_OK);
		assert_close(out[0], ref + t * VOCAB, VOCAB);
	}
	assert_int_equal(log.calls, 12 * (7 * LAYERS + 1));
	assert_int_equal(log.rows, 12 * (7 * LAYERS + 1));
	assert_true(log.sum != 0);
	log.fail_at = log.calls + 3;
	{
		struct nesa_seg sg = {2, 0, 4, false};

		in[0] = seq_a;
		assert_int_equal(nesa_exec_run(e, &sg, 1, in, out, &rows, &err), NESA_EINVAL);
		assert_string_equal(err.msg, "tap refused block 1 op 3"); /* wq, wk, wv */
	}
	/* Without the tap, the same batch runs. */
	nesa_exec_set_tap(e, NULL, NULL);
	{
		struct nesa_seg sg = {2, 0, 4, false};

		assert_int_equal(nesa_exec_run(e, &sg, 1, in, out, &rows, &err), NESA_OK);
		assert_close(out[0], ref, 4 * VOCAB);
	}
	nesa_exec_free(e);
	nesa_graph_free(g);
	json_decref(m.doc);
	nesa_tset_release(&m.ts);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_prefill_and_decode),
		cmocka_unit_test(test_batching),
		cmocka_unit_test(test_split_ranges),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_costs),
		cmocka_unit_test(test_lowrank),
		cmocka_unit_test(test_lowrank_refusals),
		cmocka_unit_test(test_int8_costs),
		cmocka_unit_test(test_tap),
	};

	return cmocka_run_group_tests_name("exec", tests, NULL, NULL);
}
