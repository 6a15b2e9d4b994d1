/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the profiles: a small random llama's block costs in every
 * weight format against sizes computed here, the cuts, the decode and
 * prefill FLOPs, timing with measure; the echo framing over pipes, link
 * measurements through local commands (cat echoes frames unchanged), a
 * vanished and a silent peer; JSON output; allocation failures.
 */
#include "config.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "testmodel.h"

#include "arch.h"
#include "profile.h"

enum { DIM = 32, HID = 64, LAYERS = 2, HEADS = 4, KV = 2, VOCAB = 40, CTX = 16, HD = DIM / HEADS };

struct model {
	struct nesa_tset ts;
	json_t *doc;
};

static void
add(struct model *m, const char *name, int64_t a, int64_t b, uint64_t *seed)
{
	struct nesa_tensor *t;
	int64_t shape[2] = {a, b}, i;
	float *d;

	assert_int_equal(nesa_tset_alloc(&m->ts, name, NESA_F32, b > 0 ? 2 : 1, shape, &t, NULL), NESA_OK);
	d = t->data;
	for (i = 0; i < a * (b > 0 ? b : 1); i++)
		d[i] = b > 0 ? 0.3f * test_randf(seed) : 1.0f;
}

static void
build(struct model *m)
{
	struct nesa_lm_hparams hp = {DIM, HID, LAYERS, HEADS, KV, VOCAB, CTX, 1e-5f, 10000.0f,
	                             NESA_ROPE_INTERLEAVED};
	uint64_t seed = 4;
	char n[32];
	int l;

	nesa_tset_init(&m->ts);
	add(m, "emb", VOCAB, DIM, &seed);
	for (l = 0; l < LAYERS; l++) {
		snprintf(n, sizeof n, "%d.an", l), add(m, n, DIM, 0, &seed);
		snprintf(n, sizeof n, "%d.wq", l), add(m, n, DIM, DIM, &seed);
		snprintf(n, sizeof n, "%d.wk", l), add(m, n, KV * HD, DIM, &seed);
		snprintf(n, sizeof n, "%d.wv", l), add(m, n, KV * HD, DIM, &seed);
		snprintf(n, sizeof n, "%d.wo", l), add(m, n, DIM, DIM, &seed);
		snprintf(n, sizeof n, "%d.fn", l), add(m, n, DIM, 0, &seed);
		snprintf(n, sizeof n, "%d.w1", l), add(m, n, HID, DIM, &seed);
		snprintf(n, sizeof n, "%d.w2", l), add(m, n, DIM, HID, &seed);
		snprintf(n, sizeof n, "%d.w3", l), add(m, n, HID, DIM, &seed);
	}
	add(m, "norm", DIM, 0, &seed);
	add(m, "out", VOCAB, DIM, &seed);
	m->doc = nesa_llama_graph(&hp, test_lm_namer, NULL, "tiny");
	assert_non_null(m->doc);
}

static void
release(struct model *m)
{
	json_decref(m->doc);
	nesa_tset_release(&m->ts);
}

static double
num(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	assert_true(json_is_number(v));
	return json_number_value(v);
}

static void
test_model_profile(void **state)
{
	struct model m;
	struct nesa_model_profile_opts o = {0};
	json_t *p, *blocks, *cuts, *b;
	/* Matrix and vector element counts of a layer. */
	double mat = 2.0 * DIM * DIM + 2.0 * KV * HD * DIM + 3.0 * HID * DIM, vec = 2.0 * DIM;
	size_t i;

	(void)state;
	build(&m);
	o.context = 10;
	assert_int_equal(nesa_profile_graph(m.doc, &m.ts, "tiny", &o, &p, NULL), NESA_OK);
	assert_string_equal(json_string_value(json_object_get(p, "format")), "nesa-model-profile");
	assert_int_equal(num(p, "n_blocks"), LAYERS + 2);
	assert_int_equal(num(p, "context"), 10);
	blocks = json_object_get(p, "blocks");
	cuts = json_object_get(p, "cuts");
	assert_int_equal(json_array_size(blocks), LAYERS + 2);
	assert_int_equal(json_array_size(cuts), LAYERS + 3);
	/* The embedding: read one row per token, no FLOPs of note, no cache. */
	b = json_array_get(blocks, 0);
	assert_true(num(b, "param_bytes") == 4.0 * VOCAB * DIM);
	assert_true(num(b, "read_bytes_per_token") == 4.0 * DIM);
	assert_true(num(b, "param_bytes_f16") == 2.0 * VOCAB * DIM);
	assert_true(num(b, "param_bytes_q8_0") == VOCAB * DIM * 34.0 / 32);
	assert_true(num(b, "param_bytes_q4_0") == VOCAB * DIM * 18.0 / 32);
	assert_true(num(b, "kv_bytes_per_token") == 0);
	/* A layer: matrices change format, the two norm vectors stay f32. */
	b = json_array_get(blocks, 1);
	assert_true(num(b, "param_bytes") == 4 * (mat + vec));
	assert_true(num(b, "read_bytes_per_token") == 4 * (mat + vec));
	assert_true(num(b, "param_bytes_f16") == 2 * mat + 4 * vec);
	assert_true(num(b, "param_bytes_q8_0") == mat * 34 / 32 + 4 * vec);
	assert_true(num(b, "param_bytes_q4_0") == mat * 18 / 32 + 4 * vec);
	assert_true(num(b, "kv_bytes_per_token") == 2.0 * KV * HD * 4);
	assert_string_equal(json_string_value(json_object_get(b, "dtype")), "f32");
	assert_true(num(b, "flops_per_token_per_ctx") == 4.0 * HEADS * HD);
	assert_true(fabs(num(b, "decode_flops_per_token") -
	                 (num(b, "flops_per_token") + 10 * num(b, "flops_per_token_per_ctx"))) < 1e-6);
	assert_true(fabs(num(b, "prefill_flops_per_token") -
	                 (num(b, "flops_per_token") + 4.5 * num(b, "flops_per_token_per_ctx"))) < 1e-6);
	assert_null(json_object_get(b, "measured"));
	/* Cuts: 4-byte ids in, DIM floats between blocks, VOCAB logits out. */
	for (i = 0; i < json_array_size(cuts); i++) {
		double want = i == 0 ? 4 : i == json_array_size(cuts) - 1 ? 4.0 * VOCAB : 4.0 * DIM;

		assert_true(num(json_array_get(cuts, i), "bytes_per_token") == want);
		assert_int_equal(num(json_array_get(cuts, i), "at"), i);
	}
	assert_true(num(json_object_get(p, "totals"), "param_bytes") ==
	            4.0 * (2 * VOCAB * DIM + LAYERS * (mat + vec) + DIM));
	json_decref(p);

	/* Timed: every block has positive times; the context bounds the steps. */
	o.measure = true;
	o.context = 0;
	o.prefill = 8;
	o.steps = 20;
	o.reps = 2;
	assert_int_equal(nesa_profile_graph(m.doc, &m.ts, "tiny", &o, &p, NULL), NESA_OK);
	assert_int_equal(num(p, "context"), CTX);
	assert_int_equal(num(json_object_get(p, "measured"), "decode_steps"), CTX - 8);
	json_array_foreach(json_object_get(p, "blocks"), i, b) {
		assert_true(num(json_object_get(b, "measured"), "decode_ms_per_token") > 0);
		assert_true(num(json_object_get(b, "measured"), "prefill_ms_per_token") > 0);
	}
	json_decref(p);
	release(&m);
}

static void
test_model_profile_oom(void **state)
{
	struct model m;
	struct nesa_model_profile_opts o = {0};
	int measure;
	long i;

	(void)state;
	build(&m);
	for (measure = 0; measure < 2; measure++) {
		o.measure = measure;
		o.prefill = 2;
		o.steps = 2;
		o.reps = 1;
		for (i = 1;; i++) {
			json_t *p = NULL;
			enum nesa_status s;

			test_faults_arm(i);
			s = nesa_profile_graph(m.doc, &m.ts, "tiny", &o, &p, NULL);
			test_faults_disarm();
			json_decref(p);
			if (s == NESA_OK)
				break;
			assert_int_equal(s, NESA_ENOMEM);
		}
	}
	release(&m);
}

/* Writes data into a pipe and returns the read end. */
static int
pipe_with(const void *data, size_t n)
{
	int p[2];

	assert_int_equal(pipe(p), 0);
	assert_int_equal(write(p[1], data, n), (ssize_t)n);
	close(p[1]);
	return p[0];
}

static size_t
drain(int fd, char *buf, size_t cap)
{
	size_t got = 0;
	ssize_t r;

	while ((r = read(fd, buf + got, cap - got)) > 0)
		got += (size_t)r;
	return got;
}

static void
test_echo(void **state)
{
	static const char frames[] = "nech\005\000\000\000hellonech\000\000\000\000";
	char buf[64];
	int in, out[2];
	struct nesa_err err;

	(void)state;
	in = pipe_with(frames, sizeof frames - 1);
	assert_int_equal(pipe(out), 0);
	assert_int_equal(nesa_profile_echo(in, out[1], 1, &err), NESA_OK);
	close(out[1]);
	assert_int_equal(drain(out[0], buf, sizeof buf), sizeof frames - 1);
	assert_memory_equal(buf, frames, sizeof frames - 1);
	close(in);
	close(out[0]);

	in = pipe_with("garbage!", 8);
	assert_int_equal(nesa_profile_echo(in, STDERR_FILENO, 1, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "bad magic"));
	close(in);
	in = pipe_with("nech\377\377\377\377", 8);
	assert_int_equal(nesa_profile_echo(in, STDERR_FILENO, 1, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "over the limit"));
	close(in);
	/* A frame cut short: the peer went away in the middle. */
	in = pipe_with("nech\010\000\000\000abc", 11);
	assert_int_equal(nesa_profile_echo(in, STDERR_FILENO, 1, &err), NESA_EREMOTE);
	assert_non_null(strstr(err.msg, "closed after 3 of 8 bytes"));
	close(in);
}

static void
test_link(void **state)
{
	struct nesa_link_opts o = {true, 5};
	struct nesa_err err;
	json_t *j;
	int status;

	(void)state;
	/* cat sends every byte back: a perfect echo peer. */
	assert_int_equal(nesa_profile_link("cat", &o, &j, &err), NESA_OK);
	assert_string_equal(json_string_value(json_object_get(j, "transport")), "command");
	assert_true(num(j, "rtt_ms") > 0);
	assert_true(num(j, "gbytes_per_s") > 0);
	assert_true(num(json_object_get(j, "rtt"), "min_ms") <= num(j, "rtt_ms"));
	assert_int_equal(num(json_object_get(j, "bandwidth"), "bytes"), 4 << 20);
	json_decref(j);
	/* A peer that answers with something else. */
	assert_int_equal(nesa_profile_link("head -c 72 /dev/zero; cat >/dev/null", &o, &j, &err), NESA_EREMOTE);
	assert_non_null(strstr(err.msg, "did not echo"));
	assert_int_equal(nesa_profile_link("exit 3", &o, &j, &err), NESA_EREMOTE);
	assert_non_null(strstr(err.msg, "no echo from 'exit 3'"));
	o.timeout_s = 0.2;
	assert_int_equal(nesa_profile_link("sleep 20", &o, &j, &err), NESA_ETIMEOUT);
	assert_non_null(strstr(err.msg, "sent nothing for 0.2 s"));
	assert_int_equal(nesa_profile_link("tcp://127.0.0.1:1", &o, &j, &err), NESA_EREMOTE);
	/* Every child was reaped. */
	assert_int_equal(waitpid(-1, &status, WNOHANG), -1);
}

static void
test_write_and_load(void **state)
{
	char *dir = test_tmpdir(), path[300], model[300], cmd[400];
	struct nesa_model *m;
	struct nesa_err err;
	json_t *j = json_pack("{s:s, s:i}", "format", "nesa-model-profile", "n_blocks", 3), *p;

	(void)state;
	assert_non_null(dir);
	snprintf(path, sizeof path, "%s/p.json", dir);
	assert_int_equal(nesa_profile_write_json(path, j, false, &err), NESA_OK);
	assert_int_equal(nesa_profile_write_json(path, j, false, &err), NESA_ECREATE);
	assert_int_equal(nesa_profile_write_json(path, j, true, &err), NESA_OK);
	assert_int_equal(nesa_profile_load(path, NULL, 0, &m, &p, &err), NESA_OK);
	assert_null(m);
	assert_true(json_equal(j, p));
	json_decref(p);
	snprintf(model, sizeof model, "%s/none.bin", dir);
	assert_int_equal(nesa_profile_load(model, NULL, 0, &m, &p, &err), NESA_ENOENT);
	assert_null(p);
	json_decref(j);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_model_profile),
		cmocka_unit_test(test_model_profile_oom),
		cmocka_unit_test(test_echo),
		cmocka_unit_test(test_link),
		cmocka_unit_test(test_write_and_load),
	};

	return cmocka_run_group_tests_name("profile", tests, NULL, NULL);
}
