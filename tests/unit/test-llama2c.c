/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for llama2c: the real stories260K.bin (version 0), and small
 * version 0, 1 and 2 checkpoints written here following export.py's order,
 * with distinct contents per tensor so any misplaced offset shows; hostile
 * headers, size mismatches, truncation at every byte, allocation failures.
 */
#include "config.h"

#include <stdio.h>
#include <unistd.h>

#include "testutil.h"

#include "llama2c.h"
#include "tensor.h"

static char *dir;
static char path[512];

struct gb {
	unsigned char *p;
	size_t n, cap;
};

static void
gb_raw(struct gb *b, const void *d, size_t n)
{
	if (n == 0)
		return;
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}

static void
gb_i32(struct gb *b, int32_t v)
{
	gb_raw(b, &v, 4); /* the test host is little-endian, as the format */
}

/* A model to write: the header fields and the format. */
struct cfg {
	int version;
	int dim, hidden, layers, heads, kv_heads, vocab, seq;
	bool shared;
	int gs;
};

/* What the reader should produce, in file order. */
struct want {
	char name[48];
	int dtype;
	int ndim;
	int64_t shape[2];
	size_t off, nbytes;
};

static struct want wants[256];
static int n_wants;
static uint32_t counter;

/* Appends n elements of distinct values; records a tensor unless name is NULL. */
static void
emit(struct gb *b, const char *name, int dtype, int64_t rows, int64_t cols)
{
	int64_t n = cols > 0 ? rows * cols : rows, i;
	size_t off = b->n;

	for (i = 0; i < n; i++, counter++) {
		if (dtype == NESA_I8) {
			int8_t q = (int8_t)(counter % 251 - 125);

			gb_raw(b, &q, 1);
		} else {
			float f = (float)counter * 0.5f - 1000.0f;

			gb_raw(b, &f, 4);
		}
	}
	if (name == NULL)
		return;
	assert_true(n_wants < 256);
	snprintf(wants[n_wants].name, sizeof wants[n_wants].name, "%s", name);
	wants[n_wants].dtype = dtype;
	wants[n_wants].ndim = cols > 0 ? 2 : 1;
	wants[n_wants].shape[0] = rows;
	wants[n_wants].shape[1] = cols;
	wants[n_wants].off = off;
	wants[n_wants].nbytes = b->n - off;
	n_wants++;
}

static void
emit_weight(struct gb *b, const struct cfg *c, const char *name, int64_t rows, int64_t cols)
{
	char n2[64];

	if (c->version != 2) {
		emit(b, name, NESA_F32, rows, cols);
		return;
	}
	snprintf(n2, sizeof n2, "%s.q", name);
	emit(b, n2, NESA_I8, rows, cols);
	snprintf(n2, sizeof n2, "%s.s", name);
	emit(b, n2, NESA_F32, rows * cols / c->gs, 0);
}

enum { ATT, WQ, WK, WV, WO, FFN, W1, W2, W3, NKIND };

static void
emit_layers(struct gb *b, const struct cfg *c, int kind)
{
	static const char *const names[NKIND] = {"attention_norm", "wq", "wk", "wv", "wo",
	                                         "ffn_norm", "w1", "w2", "w3"};
	int kv = c->dim / c->heads * c->kv_heads, l;
	int64_t rows[NKIND] = {c->dim, c->dim, kv, kv, c->dim, c->dim, c->hidden, c->dim, c->hidden};
	int64_t cols[NKIND] = {0, c->dim, c->dim, c->dim, c->dim, 0, c->dim, c->hidden, c->dim};
	char name[64];

	for (l = 0; l < c->layers; l++) {
		snprintf(name, sizeof name, "layers.%d.%s", l, names[kind]);
		if (cols[kind] == 0)
			emit(b, name, NESA_F32, rows[kind], 0);
		else
			emit_weight(b, c, name, rows[kind], cols[kind]);
	}
}

/* Writes a checkpoint as export.py's legacy_export / version1 / version2 do. */
static void
build(struct gb *b, const struct cfg *c)
{
	int k;

	b->n = 0;
	n_wants = 0;
	counter = 1;
	if (c->version == 0) {
		gb_i32(b, c->dim);
		gb_i32(b, c->hidden);
		gb_i32(b, c->layers);
		gb_i32(b, c->heads);
		gb_i32(b, c->kv_heads);
		gb_i32(b, c->shared ? c->vocab : -c->vocab);
		gb_i32(b, c->seq);
		emit(b, "tok_embeddings", NESA_F32, c->vocab, c->dim);
		for (k = 0; k < NKIND; k++)
			emit_layers(b, c, k);
		emit(b, "norm", NESA_F32, c->dim, 0);
		emit(b, NULL, NESA_F32, c->seq, c->dim / c->heads / 2); /* freq_cis_real */
		emit(b, NULL, NESA_F32, c->seq, c->dim / c->heads / 2); /* freq_cis_imag */
		if (!c->shared)
			emit(b, "output", NESA_F32, c->vocab, c->dim);
		return;
	}
	gb_raw(b, "24ka", 4); /* 0x616b3432 little-endian */
	gb_i32(b, c->version);
	gb_i32(b, c->dim);
	gb_i32(b, c->hidden);
	gb_i32(b, c->layers);
	gb_i32(b, c->heads);
	gb_i32(b, c->kv_heads);
	gb_i32(b, c->vocab);
	gb_i32(b, c->seq);
	gb_raw(b, c->shared ? "\1" : "\0", 1);
	if (c->version == 2)
		gb_i32(b, c->gs);
	while (b->n < 256)
		gb_raw(b, "", 1);
	emit_layers(b, c, ATT);
	emit_layers(b, c, FFN);
	emit(b, "norm", NESA_F32, c->dim, 0);
	emit_weight(b, c, "tok_embeddings", c->vocab, c->dim);
	for (k = WQ; k <= W3; k++)
		if (k != FFN)
			emit_layers(b, c, k);
	if (!c->shared)
		emit_weight(b, c, "output", c->vocab, c->dim);
}

static const char *
write_file(const char *name, const void *p, size_t n)
{
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
	return path;
}

static int
setup(void **state)
{
	(void)state;
	json_set_alloc_funcs(nesa_malloc, nesa_free);
	dir = test_tmpdir();
	return dir == NULL;
}

static int
teardown(void **state)
{
	char cmd[600];

	(void)state;
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd);
}

/* Opens the built file and checks every tensor against the writer's record. */
static void
check_built(const struct gb *b, const struct cfg *c, const char *name)
{
	struct nesa_llama2c *m;
	struct nesa_err err;
	int i;

	assert_int_equal(nesa_llama2c_open(write_file(name, b->p, b->n), &m, &err), NESA_OK);
	assert_int_equal(m->params.version, c->version);
	assert_int_equal(m->params.dim, c->dim);
	assert_int_equal(m->params.hidden_dim, c->hidden);
	assert_int_equal(m->params.n_layers, c->layers);
	assert_int_equal(m->params.n_heads, c->heads);
	assert_int_equal(m->params.n_kv_heads, c->kv_heads);
	assert_int_equal(m->params.vocab_size, c->vocab);
	assert_int_equal(m->params.seq_len, c->seq);
	assert_int_equal(m->params.shared_classifier, c->shared);
	assert_int_equal(m->params.group_size, c->version == 2 ? c->gs : 0);
	assert_int_equal(m->params.head_size, c->dim / c->heads);
	assert_int_equal(m->params.kv_dim, c->dim / c->heads * c->kv_heads);
	assert_int_equal(json_integer_value(json_object_get(m->params_json, "group_size")),
	                 m->params.group_size);
	assert_int_equal(json_is_true(json_object_get(m->params_json, "shared_classifier")), c->shared);
	assert_int_equal(m->tensors.n, (size_t)n_wants);
	for (i = 0; i < n_wants; i++) {
		const struct nesa_tensor *t = &m->tensors.items[i];
		const struct want *w = &wants[i];

		assert_string_equal(t->name, w->name);
		assert_int_equal(t->dtype, w->dtype);
		assert_int_equal(t->ndim, w->ndim);
		assert_int_equal(t->shape[0], w->shape[0]);
		if (w->ndim == 2)
			assert_int_equal(t->shape[1], w->shape[1]);
		assert_int_equal(t->nbytes, w->nbytes);
		assert_memory_equal(t->data, b->p + w->off, w->nbytes);
		assert_int_equal((uintptr_t)t->data % (w->dtype == NESA_F32 ? 4 : 1), 0);
	}
	assert_null(nesa_tset_find(&m->tensors, c->shared ? "output" : "nothing"));
	nesa_llama2c_free(m);
}

static const struct cfg v0_cfg = {0, 8, 12, 2, 2, 1, 10, 4, false, 0};

static void
test_versions(void **state)
{
	struct cfg c;
	struct gb b = {0};

	(void)state;
	/* Version 0, separate classifier (negative vocab) and shared. */
	c = v0_cfg;
	build(&b, &c);
	/* header, embedding, 2 layers, norm, RoPE tables, classifier */
	assert_int_equal(b.n, 28 + 4 * (size_t)(80 + 2 * (8 + 64 + 32 + 32 + 64 + 8 + 3 * 96) + 8 +
	                                        16 + 80));
	check_built(&b, &c, "v0.bin");
	c.shared = true;
	build(&b, &c);
	check_built(&b, &c, "v0s.bin");
	/* Version 1, both ways; GQA with 4 query heads per kv head. */
	c = (struct cfg){1, 16, 20, 3, 4, 1, 7, 8, false, 0};
	build(&b, &c);
	check_built(&b, &c, "v1.bin");
	c.shared = true;
	build(&b, &c);
	check_built(&b, &c, "v1s.bin");
	/* Version 2: int8 weights with scales; vocab 5 x dim 6 = 30 int8 bytes puts
	 * the scales after them at an address that is not 4-aligned: copied. */
	c = (struct cfg){2, 6, 10, 2, 3, 1, 5, 4, false, 2};
	build(&b, &c);
	check_built(&b, &c, "v2.bin");
	c.shared = true;
	c.gs = 6;
	build(&b, &c);
	check_built(&b, &c, "v2s.bin");
	free(b.p);
}

/* The version 2 values decode as q * s per group, and the copy is exact. */
static void
test_v2_values(void **state)
{
	struct cfg c = {2, 6, 10, 2, 3, 1, 5, 4, true, 2};
	struct nesa_llama2c *m;
	struct nesa_err err;
	const struct nesa_tensor *q, *s;
	struct gb b = {0};

	(void)state;
	build(&b, &c);
	assert_int_equal(nesa_llama2c_open(write_file("v2v.bin", b.p, b.n), &m, &err), NESA_OK);
	q = nesa_tset_find(&m->tensors, "tok_embeddings.q");
	s = nesa_tset_find(&m->tensors, "tok_embeddings.s");
	assert_int_equal(q->dtype, NESA_I8);
	assert_int_equal(q->shape[0], 5);
	assert_int_equal(q->shape[1], 6);
	assert_true(q->flags & NESA_TENSOR_READONLY);
	assert_int_equal(s->dtype, NESA_F32);
	assert_int_equal(s->ndim, 1);
	assert_int_equal(s->shape[0], 15);
	/* 256 + 4 * (2 * 2 * 6 + 6) + 30 is not a multiple of 4: a copy. */
	assert_false(s->flags & NESA_TENSOR_READONLY);
	assert_int_equal(m->tensors.n_allocs > 0, 1);
	/* The writer's counter: norms take 30 values, then 30 quants, then scales. */
	assert_int_equal(((const int8_t *)q->data)[0], (int8_t)(31 % 251 - 125));
	assert_true(((const float *)s->data)[0] == 61 * 0.5f - 1000.0f);
	assert_true(((const float *)s->data)[14] == 75 * 0.5f - 1000.0f);
	nesa_llama2c_free(m);
	free(b.p);
}

static const char *
data_path(const char *rel, char *buf, size_t size)
{
	const char *d = getenv("NESA_DATA");

	if (d == NULL)
		return NULL;
	snprintf(buf, size, "%s/%s", d, rel);
	return access(buf, R_OK) == 0 ? buf : NULL;
}

static void
test_stories(void **state)
{
	char buf[512];
	const char *p = data_path("stories260K/stories260K.bin", buf, sizeof buf);
	struct nesa_llama2c *m;
	struct nesa_err err;
	const struct nesa_tensor *t;
	const unsigned char *base;
	size_t off;

	(void)state;
	if (p == NULL) {
		print_message("stories260K.bin not found under $NESA_DATA: skipping\n");
		skip();
	}
	assert_int_equal(nesa_llama2c_open(p, &m, &err), NESA_OK);
	assert_int_equal(m->params.version, 0);
	assert_int_equal(m->params.dim, 64);
	assert_int_equal(m->params.hidden_dim, 172);
	assert_int_equal(m->params.n_layers, 5);
	assert_int_equal(m->params.n_heads, 8);
	assert_int_equal(m->params.n_kv_heads, 4);
	assert_int_equal(m->params.vocab_size, 512);
	assert_int_equal(m->params.seq_len, 512);
	assert_true(m->params.shared_classifier);
	assert_int_equal(m->params.head_size, 8);
	assert_int_equal(m->params.kv_dim, 32);
	assert_int_equal(m->tensors.n_maps, 1);
	assert_int_equal(m->tensors.maps[0].size, 1056540);
	assert_int_equal(json_integer_value(json_object_get(m->params_json, "hidden_dim")), 172);
	/* 1 + 9 x 5 + 1 tensors, no separate classifier. */
	assert_int_equal(m->tensors.n, 47);
	assert_null(nesa_tset_find(&m->tensors, "output"));
	base = m->tensors.maps[0].addr;
	t = nesa_tset_find(&m->tensors, "tok_embeddings");
	assert_int_equal(t->shape[0], 512);
	assert_int_equal(t->shape[1], 64);
	assert_ptr_equal(t->data, base + 28); /* zero copy */
	t = nesa_tset_find(&m->tensors, "layers.0.wk");
	assert_int_equal(t->shape[0], 32);
	assert_int_equal(t->shape[1], 64);
	t = nesa_tset_find(&m->tensors, "layers.4.w2");
	assert_int_equal(t->shape[0], 64);
	assert_int_equal(t->shape[1], 172);
	/* The final norm sits after the embedding and all layer arrays (SOURCE.md). */
	off = 28 + 4 * (size_t)(512 * 64 + 5 * 64 + 5 * 64 * 64 + 2 * 5 * 32 * 64 + 5 * 64 * 64 +
	                        5 * 64 + 3 * 5 * 172 * 64);
	t = nesa_tset_find(&m->tensors, "norm");
	assert_ptr_equal(t->data, base + off);
	/* followed by the two freq_cis tables [512][4] ending the file */
	assert_int_equal(off + 64 * 4 + 2 * 512 * 4 * 4, 1056540);
	nesa_llama2c_free(m);
}

static void
expect(const struct gb *b, enum nesa_status want, const char *msg)
{
	struct nesa_llama2c *m;
	struct nesa_err err;

	nesa_err_clear(&err);
	assert_int_equal(nesa_llama2c_open(write_file("bad.bin", b->p, b->n), &m, &err), want);
	assert_null(m);
	if (strstr(err.msg, msg) == NULL)
		fail_msg("expected '%s' in: %s", msg, err.msg);
}

/* Rewrites header field i (0 = dim) of a built file. */
static void
set_field(struct gb *b, int version, int i, int32_t v)
{
	memcpy(b->p + (version == 0 ? 0 : 8) + 4 * i, &v, 4);
}

static void
test_hostile(void **state)
{
	struct cfg c = v0_cfg;
	struct gb b = {0};
	struct nesa_llama2c *m;
	struct nesa_err err;
	char msg[200];
	size_t len;

	(void)state;
	build(&b, &c);
	set_field(&b, 0, 0, -64);
	expect(&b, NESA_EFORMAT, "invalid header: dim is -64 (must be positive)");
	build(&b, &c);
	set_field(&b, 0, 6, 0);
	expect(&b, NESA_EFORMAT, "seq_len is 0");
	build(&b, &c);
	set_field(&b, 0, 5, INT32_MIN);
	expect(&b, NESA_EFORMAT, "vocab_size is -2147483648");
	build(&b, &c);
	set_field(&b, 0, 3, 3);
	expect(&b, NESA_EFORMAT, "invalid header: n_heads 3 does not divide dim 8");
	build(&b, &c);
	set_field(&b, 0, 4, 3);
	expect(&b, NESA_EFORMAT, "invalid header: n_kv_heads 3 does not divide n_heads 2");
	build(&b, &c);
	set_field(&b, 0, 3, 8); /* head size 1 */
	set_field(&b, 0, 4, 8);
	expect(&b, NESA_EFORMAT, "invalid header: head size 1 (dim / n_heads) is odd");
	/* Sizes that overflow 64 bits. */
	build(&b, &c);
	set_field(&b, 0, 0, 2147483646);
	set_field(&b, 0, 1, 2147483647);
	set_field(&b, 0, 2, 2147483647);
	set_field(&b, 0, 3, 1);
	set_field(&b, 0, 4, 1);
	expect(&b, NESA_EFORMAT, "the sizes it implies overflow 64 bits");

	/* Size mismatch: one float short, one byte long; a wrong layer count. */
	build(&b, &c);
	len = b.n;
	b.n -= 4;
	snprintf(msg, sizeof msg, "expected %zu bytes, file has %zu", len, len - 4);
	expect(&b, NESA_EFORMAT, msg);
	b.n = len;
	gb_raw(&b, "x", 1);
	snprintf(msg, sizeof msg, "expected %zu bytes, file has %zu", len, len + 1);
	expect(&b, NESA_EFORMAT, msg);
	build(&b, &c);
	set_field(&b, 0, 2, 3);
	expect(&b, NESA_EFORMAT,
	       "size mismatch for a version 0 checkpoint with dim 8, hidden_dim 12, n_layers 3");

	/* Header-level problems of versions 1 and 2. */
	c = (struct cfg){1, 16, 20, 3, 4, 1, 7, 8, false, 0};
	build(&b, &c);
	b.p[36] = 2;
	expect(&b, NESA_EFORMAT, "shared_classifier flag is 2 (must be 0 or 1)");
	build(&b, &c);
	set_field(&b, 1, -1, 3);
	expect(&b, NESA_EVERSION, "llama2.c checkpoint version 3 is not supported (only 0, 1 and 2)");
	b.n = 100;
	set_field(&b, 1, -1, 1);
	expect(&b, NESA_EFORMAT, "file of 100 bytes is shorter than the 256-byte version 1 header");
	b.n = 6;
	expect(&b, NESA_EFORMAT, "unexpected end of file in the header");
	b.n = 10;
	b.p[0] = 'x';
	expect(&b, NESA_EFORMAT, "file of 10 bytes is shorter than the 28-byte llama2.c header");
	c = (struct cfg){2, 6, 10, 2, 3, 1, 5, 4, false, 2};
	build(&b, &c);
	memset(b.p + 37, 0, 4);
	expect(&b, NESA_EFORMAT, "group_size is 0 (must be positive)");
	build(&b, &c);
	b.p[37] = 4;
	expect(&b, NESA_EFORMAT, "group_size 4 does not divide the 30 elements of tok_embeddings");

	/* Missing file. */
	snprintf(path, sizeof path, "%s/missing.bin", dir);
	assert_int_equal(nesa_llama2c_open(path, &m, &err), NESA_ENOENT);
	free(b.p);
}

/* Every prefix of a valid file of each version is refused cleanly. */
static void
test_truncation(void **state)
{
	static const struct cfg cfgs[3] = {
		{0, 8, 12, 2, 2, 1, 10, 4, false, 0},
		{1, 8, 12, 1, 2, 2, 4, 4, false, 0},
		{2, 8, 12, 1, 2, 2, 4, 4, false, 4},
	};
	struct nesa_llama2c *m;
	struct nesa_err err;
	struct gb b = {0};
	size_t len;
	int k;

	(void)state;
	for (k = 0; k < 3; k++) {
		build(&b, &cfgs[k]);
		for (len = 0; len < b.n; len++) {
			nesa_err_clear(&err);
			assert_int_equal(nesa_llama2c_open(write_file("cut.bin", b.p, len), &m, &err),
			                 NESA_EFORMAT);
			assert_null(m);
			assert_non_null(strstr(err.msg, "cut.bin'"));
		}
		check_built(&b, &cfgs[k], "whole.bin");
	}
	free(b.p);
}

static void
test_alloc_failures(void **state)
{
	struct cfg c = {2, 6, 10, 2, 3, 1, 5, 4, false, 2};
	struct nesa_llama2c *m;
	struct nesa_err err;
	struct gb b = {0};
	const char *p;
	long n;

	(void)state;
	build(&b, &c);
	p = write_file("oom.bin", b.p, b.n);
	for (n = 1;; n++) {
		enum nesa_status s;

		test_faults_arm(n);
		s = nesa_llama2c_open(p, &m, &err);
		test_faults_disarm();
		if (s == NESA_OK)
			break;
		assert_int_equal(s, NESA_ENOMEM);
		assert_null(m);
	}
	assert_true(n > 10);
	nesa_llama2c_free(m);
	nesa_llama2c_free(NULL);
	free(b.p);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_versions),
		cmocka_unit_test(test_v2_values),
		cmocka_unit_test(test_stories),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_alloc_failures),
	};

	return cmocka_run_group_tests_name("llama2c", tests, setup, teardown);
}
