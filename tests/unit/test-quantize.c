/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for quantize: type names, one tensor's conversion and error
 * figures against an independent computation, refusal of NaN/Inf weights
 * and of values beyond a format's range, per-tensor selection on a small
 * llama and a convolutional graph (rules, defaults, fallbacks), the written
 * archive loading back with the chosen dtypes, the report in JSON and
 * text, the tensor-stream filter, and clean failure under allocation
 * faults.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "testutil.h"
#include "testmodel.h"

#include "arch.h"
#include "model.h"
#include "parallel.h"
#include "quant.h"
#include "quantize.h"
#include "shard.h"
#include "stream.h"

enum { DIM = 64, HID = 96, LAYERS = 2, HEADS = 4, KV = 2, VOCAB = 32, CTX = 16 };

/*
 * A model built by hand: the fields nesa_model_load would fill, with a
 * known identity so nothing is hashed.  Released with release_model.
 */
static void
make_model(struct nesa_model *m, struct nesa_tset *ts, json_t *graph)
{
	memset(m, 0, sizeof *m);
	m->path = (char *)"tiny.bin";
	m->format = "graph";
	m->name = (char *)"tiny";
	m->arch = (char *)"llama";
	m->graph = graph;
	m->meta = json_object();
	m->weights = ts;
	m->n_blocks = m->count = nesa_graph_doc_blocks(graph);
	m->have_id = true;
	memset(m->source_sha256, 0xab, sizeof m->source_sha256);
	assert_non_null(m->meta);
}

static void
release_model(struct nesa_model *m)
{
	json_decref(m->graph);
	json_decref(m->meta);
}

static json_t *
llama(struct nesa_tset *ts)
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
	return nesa_llama_graph(&hp, test_lm_namer, NULL, "tiny");
}

static const struct nesa_quantize_stat *
stat_of(const struct nesa_quantize_report *r, const char *name)
{
	size_t i;

	for (i = 0; i < r->n; i++)
		if (strcmp(r->items[i].name, name) == 0)
			return &r->items[i];
	fail_msg("no report item for '%s'", name);
	return NULL;
}

static void
test_parse_type(void **state)
{
	struct nesa_err err;
	int d;

	(void)state;
	assert_int_equal(nesa_quantize_parse_type("q8_0", &d, &err), NESA_OK);
	assert_int_equal(d, NESA_Q8_0);
	assert_int_equal(nesa_quantize_parse_type("dyn8", &d, &err), NESA_OK);
	assert_int_equal(d, NESA_DYN8_4096);
	assert_int_equal(nesa_quantize_parse_type("lin8", &d, &err), NESA_OK);
	assert_int_equal(d, NESA_LIN8_4096);
	assert_int_equal(nesa_quantize_parse_type("dyn8_64", &d, &err), NESA_OK);
	assert_int_equal(d, NESA_DYN8_64);
	assert_int_equal(nesa_quantize_parse_type("keep", &d, &err), NESA_OK);
	assert_int_equal(d, NESA_QUANTIZE_KEEP);
	assert_string_equal(nesa_quantize_type_name(d), "keep");
	assert_int_equal(nesa_quantize_parse_type("bf16", &d, &err), NESA_OK);
	assert_int_equal(nesa_quantize_parse_type("i32", &d, &err), NESA_EUNSUPPORTED);
	assert_int_equal(nesa_quantize_parse_type("q3_k", &d, &err), NESA_EUNSUPPORTED);
	assert_non_null(strstr(err.msg, "unknown type 'q3_k'"));
	assert_non_null(strstr(err.msg, "nf4dq"));
}

/* Error figures equal a direct computation; keep shares the data. */
static void
test_tensor(void **state)
{
	struct nesa_tset src, dst;
	struct nesa_tensor *t, *q;
	struct nesa_quantize_stat st = {0};
	struct nesa_err err;
	uint64_t seed = 3;
	float back[4 * 96];
	double e2 = 0, x2 = 0, mx = 0;
	int j;

	(void)state;
	nesa_tset_init(&src);
	nesa_tset_init(&dst);
	test_add_weight(&src, "w", 4, 96, &seed);
	test_add_weight(&src, "odd", 3, 172, &seed);
	t = nesa_tset_find(&src, "w");
	assert_int_equal(nesa_quantize_tensor(t, NESA_Q8_0, &dst, &st, &err), NESA_OK);
	q = nesa_tset_find(&dst, "w");
	assert_int_equal(q->dtype, NESA_Q8_0);
	nesa_dequantize_q8_0_ref(q->data, back, 4 * 96);
	for (j = 0; j < 4 * 96; j++) {
		double x = ((float *)t->data)[j], e = x - back[j];

		e2 += e * e;
		x2 += x * x;
		mx = fmax(mx, fabs(e));
	}
	assert_true(fabs(st.rmse - sqrt(e2 / (4 * 96))) <= 1e-12);
	assert_true(fabs(st.sqnr_db - 10 * log10(x2 / e2)) <= 1e-9);
	assert_true(st.max_abs == mx);
	assert_true(st.sqnr_db > 40 && st.sqnr_db < 50); /* ~6 dB per bit */
	assert_int_equal(st.bytes_before, 4 * 96 * 4);
	assert_int_equal(st.bytes_after, 4 * 3 * 34);
	/* Rows of 172 fit no 32-block: f16, and the note says why. */
	assert_int_equal(nesa_quantize_tensor(nesa_tset_find(&src, "odd"), NESA_Q8_0, &dst, &st, &err), NESA_OK);
	assert_int_equal(st.to, NESA_F16);
	assert_non_null(strstr(st.note, "q8_0 does not fit rows of 172"));
	/* Requantizing a quantized tensor goes through f32; a name is added once. */
	{
		struct nesa_tset d2;

		nesa_tset_init(&d2);
		assert_int_equal(nesa_quantize_tensor(q, NESA_Q4_0, &d2, &st, &err), NESA_OK);
		assert_int_equal(st.from, NESA_Q8_0);
		assert_int_equal(st.to, NESA_Q4_0);
		assert_true(st.rmse > 0);
		assert_int_equal(nesa_quantize_tensor(q, NESA_QUANTIZE_KEEP, &d2, NULL, &err), NESA_EFORMAT);
		nesa_tset_release(&d2);
	}
	nesa_tset_release(&dst);
	nesa_tset_init(&dst);
	/* keep: the same data, no copy, exact. */
	assert_int_equal(nesa_quantize_tensor(t, NESA_QUANTIZE_KEEP, &dst, &st, &err), NESA_OK);
	assert_ptr_equal(nesa_tset_find(&dst, "w")->data, t->data);
	assert_true(isinf(st.sqnr_db) && st.rmse == 0);
	nesa_tset_release(&dst);
	nesa_tset_release(&src);
}

/* NaN and Inf weights are refused with their position; so is overflow. */
static void
test_refusals(void **state)
{
	struct nesa_tset src, dst;
	struct nesa_tensor *t;
	struct nesa_err err;
	uint64_t seed = 5;
	float *d;

	(void)state;
	nesa_tset_init(&src);
	nesa_tset_init(&dst);
	test_add_weight(&src, "layers.0.wq", 4, 64, &seed);
	t = nesa_tset_find(&src, "layers.0.wq");
	d = t->data;
	/* A failed conversion may leave a partial tensor in dst: a fresh set each time. */
#define AGAIN() (nesa_tset_release(&dst), nesa_tset_init(&dst))
	d[64 + 17] = NAN;
	assert_int_equal(nesa_quantize_tensor(t, NESA_Q8_0, &dst, NULL, &err), NESA_EFORMAT);
	assert_string_equal(err.msg, "cannot quantize tensor 'layers.0.wq': element [1, 17] is NaN");
	AGAIN();
	d[64 + 17] = -INFINITY;
	assert_int_equal(nesa_quantize_tensor(t, NESA_NF4, &dst, NULL, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "element [1, 17] is infinite"));
	AGAIN();
	/* 1e7 / 127 is beyond the f16 range of a q8_0 scale; 1e6 beyond f16 itself. */
	d[64 + 17] = 1e7f;
	assert_int_equal(nesa_quantize_tensor(t, NESA_Q8_0, &dst, NULL, &err), NESA_EUNSUPPORTED);
	assert_non_null(strstr(err.msg, "cannot quantize tensor 'layers.0.wq' to q8_0: its values exceed"));
	assert_non_null(strstr(err.msg, "block 2"));
	AGAIN();
	d[64 + 17] = 1e6f;
	assert_int_equal(nesa_quantize_tensor(t, NESA_F16, &dst, NULL, &err), NESA_EUNSUPPORTED);
	assert_non_null(strstr(err.msg, "beyond its range"));
	AGAIN();
	/* A format with an f32 scale takes it. */
	assert_int_equal(nesa_quantize_tensor(t, NESA_DYN8_64, &dst, NULL, &err), NESA_OK);
#undef AGAIN
	nesa_tset_release(&dst);
	nesa_tset_release(&src);
}

/* Selection on a small llama; the archive loads back as chosen. */
static void
test_model(void **state)
{
	static const struct nesa_quantize_rule rules[] = {
		{"*.w2", NESA_Q8_0}, {"1.wq", NESA_QUANTIZE_KEEP}, {"1.w*", NESA_LIN8_4096},
	};
	struct nesa_quantize_opts o = {NESA_NF4, rules, 3};
	struct nesa_quantize_report rep = {0};
	struct nesa_model m, *back;
	struct nesa_tset ts, q;
	struct nesa_err err;
	char *dir = test_tmpdir(), path[512];
	const struct nesa_quantize_stat *st;

	(void)state;
	assert_non_null(dir);
	make_model(&m, &ts, llama(&ts));
	nesa_tset_init(&q);
	assert_int_equal(nesa_quantize_model(&m, &o, &q, &rep, &err), NESA_OK);
	assert_int_equal(rep.n, 1 + LAYERS * 9 + 2);
	st = stat_of(&rep, "emb");
	assert_int_equal(st->to, NESA_F32);
	assert_string_equal(st->note, "embedding");
	assert_int_equal(stat_of(&rep, "0.an")->to, NESA_F32);
	assert_string_equal(stat_of(&rep, "0.an")->note, "rmsnorm needs f32");
	assert_int_equal(stat_of(&rep, "0.wq")->to, NESA_NF4);
	assert_string_equal(stat_of(&rep, "0.wq")->note, "default");
	assert_int_equal(stat_of(&rep, "out")->to, NESA_NF4);
	assert_int_equal(stat_of(&rep, "0.w2")->to, NESA_Q8_0); /* rows of 96: q8_0 fits */
	assert_string_equal(stat_of(&rep, "0.w2")->note, "rule '*.w2'");
	assert_int_equal(stat_of(&rep, "1.wq")->to, NESA_F32);
	/* lin8_4096 on rows of 64 falls back to lin8_64. */
	assert_int_equal(stat_of(&rep, "1.w1")->to, NESA_LIN8_64);
	assert_non_null(strstr(stat_of(&rep, "1.w1")->note, "lin8_4096 does not fit rows of 64"));
	assert_true(rep.bytes_after < rep.bytes_before);

	snprintf(path, sizeof path, "%s/q.nsa", dir);
	assert_int_equal(nesa_quantize_write(&m, &q, o.dtype, path, NULL, &err), NESA_OK);
	assert_ptr_equal(m.weights, &ts);
	assert_int_equal(nesa_model_load(path, NULL, &back, &err), NESA_OK);
	assert_int_equal(nesa_tset_find(back->weights, "0.wq")->dtype, NESA_NF4);
	assert_int_equal(nesa_tset_find(back->weights, "1.w2")->dtype, NESA_Q8_0);
	assert_int_equal(nesa_tset_find(back->weights, "emb")->dtype, NESA_F32);
	assert_string_equal(json_string_value(json_object_get(json_object_get(back->meta, "quantization"),
	                                                      "default")), "nf4");
	assert_memory_equal(back->source_sha256, m.source_sha256, 32);
	/* Quantizing the result again leaves quantized weights alone unless asked. */
	{
		struct nesa_quantize_opts again = {NESA_Q8_0, NULL, 0};
		struct nesa_quantize_report r2 = {0};
		struct nesa_tset q2;

		nesa_tset_init(&q2);
		assert_int_equal(nesa_quantize_model(back, &again, &q2, &r2, &err), NESA_OK);
		assert_int_equal(stat_of(&r2, "0.wq")->to, NESA_NF4);
		assert_string_equal(stat_of(&r2, "0.wq")->note, "already nf4");
		assert_int_equal(stat_of(&r2, "1.wq")->to, NESA_Q8_0); /* it was kept f32 */
		nesa_quantize_report_release(&r2);
		nesa_tset_release(&q2);
	}
	nesa_model_free(back);
	unlink(path);
	rmdir(dir);
	nesa_quantize_report_release(&rep);
	nesa_tset_release(&q);
	nesa_tset_release(&ts);
	release_model(&m);
}

/* Convolution weights stay f32 whatever the rules say. */
static void
test_conv_graph(void **state)
{
	static const char doc[] =
		"{\"graph_version\": 1, \"name\": \"c\", \"arch\": \"cnn\", \"n_blocks\": 1, \"blocks\": [{"
		"\"name\": \"b0\", \"inputs\": [{\"name\": \"x\", \"shape\": [1, 10, 10]}], \"ops\": ["
		"{\"op\": \"conv2d\", \"in\": [\"x\"], \"out\": \"x\", \"weight\": \"cw\", \"bias\": \"cb\"},"
		"{\"op\": \"flatten\", \"in\": [\"x\"], \"out\": \"x\"},"
		"{\"op\": \"linear\", \"in\": [\"x\"], \"out\": \"x\", \"weight\": \"lw\", \"bias\": \"lb\"}],"
		"\"outputs\": [\"x\"]}]}";
	static const struct nesa_quantize_rule all[] = {{"*", NESA_Q4_0}};
	struct nesa_quantize_opts o = {NESA_Q8_0, all, 1};
	struct nesa_quantize_report rep = {0};
	struct nesa_tensor *t;
	struct nesa_model m;
	struct nesa_tset ts, q;
	struct nesa_err err;
	int64_t cw[4] = {2, 1, 3, 3}, one[1] = {2}, lw[2] = {4, 128}, lb[1] = {4};

	(void)state;
	nesa_tset_init(&ts);
	nesa_tset_init(&q);
	assert_int_equal(nesa_tset_alloc(&ts, "cw", NESA_F32, 4, cw, &t, NULL), NESA_OK);
	assert_int_equal(nesa_tset_alloc(&ts, "cb", NESA_F32, 1, one, &t, NULL), NESA_OK);
	assert_int_equal(nesa_tset_alloc(&ts, "lw", NESA_F32, 2, lw, &t, NULL), NESA_OK);
	((float *)t->data)[5] = 1.0f;
	assert_int_equal(nesa_tset_alloc(&ts, "lb", NESA_F32, 1, lb, &t, NULL), NESA_OK);
	make_model(&m, &ts, json_loads(doc, 0, NULL));
	assert_non_null(m.graph);
	assert_int_equal(nesa_quantize_model(&m, &o, &q, &rep, &err), NESA_OK);
	assert_int_equal(rep.n, 4);
	assert_int_equal(stat_of(&rep, "cw")->to, NESA_F32);
	assert_string_equal(stat_of(&rep, "cw")->note, "conv2d needs f32");
	assert_int_equal(stat_of(&rep, "lw")->to, NESA_Q4_0);
	assert_string_equal(stat_of(&rep, "lb")->note, "linear needs f32");
	nesa_quantize_report_release(&rep);
	nesa_tset_release(&q);
	nesa_tset_release(&ts);
	release_model(&m);
}

static void
test_report(void **state)
{
	struct nesa_quantize_opts o = {NESA_Q8_0, NULL, 0};
	struct nesa_quantize_report rep = {0};
	struct nesa_model m;
	struct nesa_tset ts, q;
	struct nesa_err err;
	json_t *j, *items, *e;
	char *text;
	size_t i;

	(void)state;
	make_model(&m, &ts, llama(&ts));
	nesa_tset_init(&q);
	assert_int_equal(nesa_quantize_model(&m, &o, &q, &rep, &err), NESA_OK);
	j = nesa_quantize_report_json(&rep);
	assert_non_null(j);
	items = json_object_get(j, "tensors");
	assert_int_equal(json_array_size(items), rep.n);
	assert_int_equal(json_integer_value(json_object_get(j, "bytes_after")), (json_int_t)rep.bytes_after);
	json_array_foreach(items, i, e) {
		const char *to = json_string_value(json_object_get(e, "to"));

		assert_non_null(to);
		/* Exact tensors have no SQNR to give: null, not a fake number. */
		if (strcmp(to, "f32") == 0)
			assert_true(json_is_null(json_object_get(e, "sqnr_db")));
		else
			assert_true(json_real_value(json_object_get(e, "sqnr_db")) > 30);
		assert_true(json_is_array(json_object_get(e, "shape")));
	}
	json_decref(j);
	text = nesa_quantize_report_text(&rep);
	assert_non_null(text);
	assert_non_null(strstr(text, "tensor"));
	assert_non_null(strstr(text, "0.wq"));
	assert_non_null(strstr(text, "total"));
	assert_non_null(strstr(text, "x smaller"));
	nesa_free(text);
	nesa_quantize_report_release(&rep);
	nesa_tset_release(&q);
	nesa_tset_release(&ts);
	release_model(&m);
}

/* Frames through the filter: tensors re-encoded, everything else as is. */
static enum nesa_status
run_filter(const void *in, size_t len, int codec, void **outbuf, size_t *outlen,
           struct nesa_quantize_stream_stats *st, struct nesa_err *err)
{
	struct nesa_stream *r = NULL, *w = NULL;
	const void *data;
	enum nesa_status s;

	*outbuf = NULL;
	s = nesa_stream_open_mem(in, len, "in", &r, err);
	if (s == NESA_OK)
		s = nesa_stream_open_mem_writer("out", &w, err);
	if (s == NESA_OK)
		s = nesa_quantize_stream(r, w, codec, st, err);
	if (s == NESA_OK && (s = nesa_stream_flush(w)) == NESA_OK) {
		data = nesa_stream_mem_data(w, outlen);
		*outbuf = malloc(*outlen);
		if (*outbuf == NULL)
			s = NESA_ENOMEM;
		else
			memcpy(*outbuf, data, *outlen);
	}
	nesa_stream_free(w);
	nesa_stream_close(r, NULL);
	return s;
}

static void *
make_stream(size_t *len, float *a, float *b)
{
	struct nesa_stream *w;
	struct nesa_frame f;
	int32_t ids[3] = {1, 2, 3};
	const void *data;
	void *copy;
	uint64_t seed = 11;
	int j;

	for (j = 0; j < 2 * 64; j++)
		a[j] = test_randf(&seed) * (j == 70 ? 50.0f : 1.0f);
	for (j = 0; j < 3 * 172; j++)
		b[j] = test_randf(&seed);
	assert_int_equal(nesa_stream_open_mem_writer("gen", &w, NULL), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_BEGIN);
	f.session = 9;
	assert_int_equal(nesa_stream_write(w, &f), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_TENSOR);
	f.session = 9;
	f.position = 4;
	f.ndim = 2;
	f.shape[0] = 2;
	f.shape[1] = 64;
	f.codec = NESA_F32;
	f.payload = a;
	f.payload_len = 2 * 64 * sizeof(float);
	assert_int_equal(nesa_stream_write(w, &f), NESA_OK);
	f.shape[0] = 3;
	f.shape[1] = 172;
	f.payload = b;
	f.payload_len = 3 * 172 * sizeof(float);
	assert_int_equal(nesa_stream_write(w, &f), NESA_OK);
	f.ndim = 1;
	f.shape[0] = 3;
	f.codec = NESA_I32;
	f.payload = ids;
	f.payload_len = sizeof ids;
	assert_int_equal(nesa_stream_write(w, &f), NESA_OK);
	assert_int_equal(nesa_stream_flush(w), NESA_OK);
	data = nesa_stream_mem_data(w, len);
	copy = malloc(*len);
	assert_non_null(copy);
	memcpy(copy, data, *len);
	nesa_stream_free(w);
	return copy;
}

static void
test_stream(void **state)
{
	static const int codecs[] = {NESA_Q8_0, NESA_DYN8_4096, NESA_Q8O, NESA_BF16};
	float a[2 * 64], b[3 * 172], back[3 * 172];
	struct nesa_quantize_stream_stats st;
	struct nesa_stream *r;
	struct nesa_frame f;
	struct nesa_err err;
	size_t len, olen, i;
	void *in = make_stream(&len, a, b), *out;
	int j;

	(void)state;
	for (i = 0; i < sizeof codecs / sizeof codecs[0]; i++) {
		assert_int_equal(run_filter(in, len, codecs[i], &out, &olen, &st, &err), NESA_OK);
		assert_int_equal(st.frames, 5);
		assert_int_equal(st.recoded, 2);
		assert_int_equal(nesa_stream_open_mem(out, olen, "out", &r, NULL), NESA_OK);
		assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
		assert_int_equal(f.kind, NESA_FRAME_BEGIN);
		assert_int_equal(f.session, 9);
		assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
		/* The codec byte names the encoding: the reader is not told. */
		assert_int_equal(f.codec, nesa_quant_fit(codecs[i], 64));
		assert_int_equal(f.position, 4);
		assert_int_equal(nesa_frame_decode_f32(&f, back, 2 * 64, NULL), NESA_OK);
		for (j = 0; j < 2 * 64; j++)
			assert_true(fabsf(back[j] - a[j]) <= 0.02f * (j < 64 ? 1.0f : 50.0f));
		if (codecs[i] == NESA_Q8O)
			assert_true(back[70] == nesa_f16_to_f32(nesa_f32_to_f16(a[70])));
		assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
		assert_int_equal(f.codec, codecs[i] == NESA_BF16 ? NESA_BF16 : NESA_F16); /* rows of 172 */
		assert_int_equal(nesa_frame_decode_f32(&f, back, 3 * 172, NULL), NESA_OK);
		for (j = 0; j < 3 * 172; j++)
			assert_true(fabsf(back[j] - b[j]) <= 0.004f);
		assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
		assert_int_equal(f.codec, NESA_I32);
		assert_int_equal(((const int32_t *)f.payload)[2], 3);
		assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
		assert_int_equal(f.kind, NESA_FRAME_EOS);
		nesa_stream_close(r, NULL);
		/* Again through the same codec: frames already in it pass untouched. */
		if (codecs[i] == NESA_Q8_0) {
			void *again;
			size_t alen;

			assert_int_equal(run_filter(out, olen, codecs[i], &again, &alen, &st, &err), NESA_OK);
			assert_int_equal(st.recoded, 0);
			assert_int_equal(alen, olen);
			assert_memory_equal(again, out, olen);
			free(again);
		}
		free(out);
	}
	/* A damaged input is reported with the stream's name. */
	((unsigned char *)in)[100] ^= 0xff;
	assert_int_not_equal(run_filter(in, len, NESA_Q8_0, &out, &olen, NULL, &err), NESA_OK);
	assert_non_null(strstr(err.msg, "in"));
	free(out);
	free(in);
}

/* Every allocation failure is a clean NESA_ENOMEM, without leaks. */
static void
test_faults(void **state)
{
	struct nesa_quantize_opts o = {NESA_NF4DQ, NULL, 0};
	struct nesa_model m;
	struct nesa_tset ts;
	float a[2 * 64], b[3 * 172];
	size_t len, olen;
	void *in, *out;
	long n;
	int done = 0;

	(void)state;
	make_model(&m, &ts, llama(&ts));
	for (n = 1; !done; n++) {
		struct nesa_quantize_report rep = {0};
		struct nesa_tset q;
		struct nesa_err err;
		enum nesa_status s;
		json_t *j = NULL;
		char *text = NULL;

		nesa_tset_init(&q);
		test_faults_arm(n);
		s = nesa_quantize_model(&m, &o, &q, &rep, &err);
		if (s == NESA_OK) {
			text = nesa_quantize_report_text(&rep);
			j = nesa_quantize_report_json(&rep);
		}
		test_faults_disarm();
		if (s == NESA_OK && text != NULL && j != NULL)
			done = 1;
		else if (s != NESA_OK)
			assert_int_equal(s, NESA_ENOMEM);
		nesa_free(text);
		json_decref(j);
		nesa_quantize_report_release(&rep);
		nesa_tset_release(&q);
		assert_true(n < 10000);
	}
	nesa_tset_release(&ts);
	release_model(&m);

	in = make_stream(&len, a, b);
	for (n = 1, done = 0; !done; n++) {
		struct nesa_err err;
		enum nesa_status s;

		test_faults_arm(n);
		s = run_filter(in, len, NESA_DYN8_4096, &out, &olen, NULL, &err);
		test_faults_disarm();
		free(out);
		if (s == NESA_OK)
			done = 1;
		else
			assert_int_equal(s, NESA_ENOMEM);
		assert_true(n < 10000);
	}
	free(in);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_type),
		cmocka_unit_test(test_tensor),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_model),
		cmocka_unit_test(test_conv_graph),
		cmocka_unit_test(test_report),
		cmocka_unit_test(test_stream),
		cmocka_unit_test(test_faults),
	};
	int rc = cmocka_run_group_tests_name("quantize", tests, NULL, NULL);

	nesa_parallel_shutdown();
	return rc;
}
