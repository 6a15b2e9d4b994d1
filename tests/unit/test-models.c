/* SPDX-License-Identifier: MIT */
/*
 * Real models against independent references: stories260K (llama2.c and
 * GGUF) logits against the PyTorch reference in NESA_DATA, KV-cached
 * decoding against full recomputation, shard round trips, and the tiny
 * Hugging Face gpt2 and llama models in tests/data against the logits of
 * the script that wrote them.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

#include "testutil.h"

#include "chain.h"
#include "model.h"
#include "shard.h"

#define ATOL 1e-4f /* the brief's bound for logits against PyTorch */

static char *
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

static void *
read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	void *b;

	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	b = malloc(*len);
	assert_int_equal(fread(b, 1, *len, f), *len);
	fclose(f);
	return b;
}

/*
 * Cached decoding and full recomputation differ only in summation order
 * (GEMV against GEMM, per-row against batched attention): a few float32
 * ulps of each logit.
 */
#define CACHE_ATOL 1e-5f
#define CACHE_RTOL 1e-5f

static bool
close_rel(const float *a, const float *ref, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!(fabsf(a[i] - ref[i]) <= CACHE_ATOL + CACHE_RTOL * fabsf(ref[i]))) {
			fprintf(stderr, "# logit %zu: cached %.9g vs full %.9g\n", i, a[i], ref[i]);
			return false;
		}
	return true;
}

static size_t
argmax(const float *x, size_t n)
{
	size_t i, b = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

static float
max_abs_diff(const float *a, const float *b, size_t n)
{
	float m = 0;
	size_t i;

	for (i = 0; i < n; i++)
		if (!(fabsf(a[i] - b[i]) <= m))
			m = fabsf(a[i] - b[i]);
	return m;
}

/*
 * Runs tokens through a chain (i) all at once and (ii) one token at a time
 * from the KV cache, checks both against the reference logits and each
 * other.
 */
static void
check_logits(struct nesa_chain *c, const int32_t *tok, int T, const float *ref, float atol)
{
	const int64_t V = c->out_elems;
	float *full = malloc((size_t)(T * V) * sizeof *full);
	const float *out;
	int64_t rows;
	struct nesa_seg seg = {77, 0, (uint32_t)T, false};
	struct nesa_err err;
	float d;
	int t;

	assert_int_equal(nesa_chain_run(c, &seg, 1, tok, &out, &rows, &err), NESA_OK);
	assert_int_equal(rows, T);
	memcpy(full, out, (size_t)(T * V) * sizeof *full);
	d = max_abs_diff(full, ref, (size_t)(T * V));
	fprintf(stderr, "# prefill: max |logit - reference| = %.3g\n", (double)d);
	assert_true(d <= atol);
	nesa_chain_end(c, 77);
	for (t = 0; t < T; t++) {
		struct nesa_seg one = {78, (uint32_t)t, 1, true};

		assert_int_equal(nesa_chain_run(c, &one, 1, &tok[t], &out, &rows, &err), NESA_OK);
		assert_int_equal(rows, 1);
		assert_true(close_rel(out, full + t * V, (size_t)V));
		assert_int_equal(argmax(out, (size_t)V), argmax(full + t * V, (size_t)V));
		assert_true(max_abs_diff(out, ref + t * V, (size_t)V) <= atol);
	}
	nesa_chain_end(c, 78);
	free(full);
}

static void
run_model(const char *path, const struct nesa_model_opts *o, const int32_t *tok, int T,
          const float *ref, float atol)
{
	struct nesa_model *m;
	struct nesa_chain *c;
	struct nesa_err err;

	if (nesa_model_load(path, o, &m, &err) != NESA_OK)
		fail_msg("%s", err.msg);
	assert_int_equal(nesa_chain_local(&m, 1, NULL, &c, &err), NESA_OK);
	check_logits(c, tok, T, ref, atol);
	nesa_chain_free(c);
	nesa_model_free(m);
}

static void
test_stories260k(void **state)
{
	const char *bin = data_path("NESA_DATA", "stories260K/stories260K.bin");
	const char *gguf = data_path("NESA_DATA", "stories260K/stories260K.gguf");
	const char *tokf = data_path("NESA_DATA", "stories260K/ref_tokens_64.i32");
	const char *logf = data_path("NESA_DATA", "stories260K/ref_logits_64x512.f32");
	struct nesa_model_opts o = {.context = 512};
	size_t nt, nl;
	int32_t *tok;
	float *ref;

	(void)state;
	if (bin == NULL || gguf == NULL || tokf == NULL || logf == NULL) {
		fprintf(stderr, "# stories260K reference data not found under NESA_DATA\n");
		skip();
	}
	tok = read_all(tokf, &nt);
	ref = read_all(logf, &nl);
	assert_int_equal(nt, 64 * 4);
	assert_int_equal(nl, 64 * 512 * 4);
	run_model(bin, NULL, tok, 64, ref, ATOL);
	run_model(gguf, &o, tok, 64, ref, ATOL);
	free(tok);
	free(ref);
}

/* Shards written by nesa_model_write_shard, chained, give the same logits. */
static void
test_stories260k_shards(void **state)
{
	const char *bin = data_path("NESA_DATA", "stories260K/stories260K.bin");
	const char *tokf = data_path("NESA_DATA", "stories260K/ref_tokens_64.i32");
	const char *logf = data_path("NESA_DATA", "stories260K/ref_logits_64x512.f32");
	/* Boundaries of a 2-stage and a 3-stage split, -1 terminated. */
	static const int cuts[][5] = {{0, 4, 7, -1}, {0, 1, 6, 7, -1}};
	struct nesa_model *whole, *parts[3];
	struct nesa_chain *c;
	struct nesa_err err;
	char *dir, path[3][600];
	size_t nt, nl;
	int32_t *tok;
	float *ref;
	int k, p;

	(void)state;
	if (bin == NULL || tokf == NULL || logf == NULL)
		skip();
	tok = read_all(tokf, &nt);
	ref = read_all(logf, &nl);
	dir = test_tmpdir();
	assert_non_null(dir);
	assert_int_equal(nesa_model_load(bin, NULL, &whole, &err), NESA_OK);
	for (k = 0; k < 2; k++) {
		int n = 0;

		for (p = 0; cuts[k][p + 1] >= 0; p++, n++) {
			snprintf(path[p], sizeof path[p], "%s/s%d-%d.nsa", dir, k, p);
			assert_int_equal(nesa_model_write_shard(whole, cuts[k][p], cuts[k][p + 1] - cuts[k][p],
			                                        path[p], NULL, &err), NESA_OK);
			assert_int_equal(nesa_model_load(path[p], NULL, &parts[p], &err), NESA_OK);
			assert_non_null(parts[p]->tok);
		}
		assert_int_equal(nesa_chain_local(parts, n, NULL, &c, &err), NESA_OK);
		check_logits(c, tok, 64, ref, ATOL);
		nesa_chain_free(c);
		/* Out of order is refused. */
		{
			struct nesa_model *swapped[2] = {parts[1], parts[0]};

			assert_int_equal(nesa_chain_local(swapped, 2, NULL, &c, &err), NESA_EINVAL);
			assert_non_null(strstr(err.msg, "needs block 0"));
		}
		/* A missing last stage is refused. */
		assert_int_equal(nesa_chain_local(parts, n - 1, NULL, &c, &err), NESA_EINVAL);
		for (p = 0; p < n; p++)
			nesa_model_free(parts[p]);
	}
	nesa_model_free(whole);
	snprintf(path[0], sizeof path[0], "rm -rf '%s'", dir);
	assert_int_equal(system(path[0]), 0);
	free(tok);
	free(ref);
}

/* The bundled story model against its training script's reference logits. */
static void
test_story(void **state)
{
	const char *bin = data_path("NESA_MODELS", "story/model.bin");
	const char *tokf = data_path("NESA_TEST_DATA", "story_ref_tokens.i32");
	const char *logf = data_path("NESA_TEST_DATA", "story_ref_logits.f32");
	size_t nt, nl;
	int32_t *tok;
	float *ref;

	(void)state;
	if (bin == NULL || tokf == NULL || logf == NULL)
		skip();
	tok = read_all(tokf, &nt);
	ref = read_all(logf, &nl);
	assert_int_equal(nl, nt / 4 * 512 * 4);
	run_model(bin, NULL, tok, (int)(nt / 4), ref, ATOL);
	free(tok);
	free(ref);
}

static void
test_hf(void **state, const char *dir_rel)
{
	char rel[256];
	const char *dir = data_path("NESA_TEST_DATA", dir_rel), *tokf, *logf;
	struct nesa_model *m;
	struct nesa_err err;
	size_t nt, nl;
	int32_t *tok;
	float *ref;

	(void)state;
	snprintf(rel, sizeof rel, "%s/ref_tokens.i32", dir_rel);
	tokf = data_path("NESA_TEST_DATA", rel);
	snprintf(rel, sizeof rel, "%s/ref_logits.f32", dir_rel);
	logf = data_path("NESA_TEST_DATA", rel);
	if (dir == NULL || tokf == NULL || logf == NULL) {
		fprintf(stderr, "# %s not found under NESA_TEST_DATA\n", dir_rel);
		skip();
	}
	tok = read_all(tokf, &nt);
	ref = read_all(logf, &nl);
	assert_int_equal(nesa_model_load(dir, NULL, &m, &err), NESA_OK);
	nesa_model_free(m);
	run_model(dir, NULL, tok, (int)(nt / 4), ref, ATOL);
	free(tok);
	free(ref);
}

static void
test_hf_gpt2(void **state)
{
	test_hf(state, "hf-gpt2");
}

static void
test_hf_llama(void **state)
{
	test_hf(state, "hf-llama");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stories260k),
		cmocka_unit_test(test_stories260k_shards),
		cmocka_unit_test(test_story),
		cmocka_unit_test(test_hf_gpt2),
		cmocka_unit_test(test_hf_llama),
	};

	return cmocka_run_group_tests_name("models", tests, NULL, NULL);
}
