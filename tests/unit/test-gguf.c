/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for gguf: a small file built here with every metadata type and
 * every loadable tensor type; truncation at every byte; hostile headers,
 * strings, shapes and offsets; alignment fallback; allocation failures; and
 * the real stories260K GGUF files (f32, q8_0, q4_0), cross-checked against
 * each other (including llama.cpp bit-compatibility of the reference
 * quantizers) and against the llama2.c checkpoint they were converted from.
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "testutil.h"

#include "dtype.h"
#include "gguf.h"
#include "llama2c.h"
#include "quant.h"
#include "tensor.h"

static char *dir;
static char path[512];

/* ggml type ids used here. */
enum {
	G_F32 = 0, G_F16 = 1, G_Q4_0 = 2, G_Q8_0 = 8, G_Q6_K = 14, G_I8 = 24, G_I32 = 26,
	G_BF16 = 30
};
/* GGUF value types. */
enum { V_U8, V_I8, V_U16, V_I16, V_U32, V_I32, V_F32, V_BOOL, V_STR, V_ARR, V_U64, V_I64, V_F64 };

/* A growable byte buffer for building files. */
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
gb_u8(struct gb *b, unsigned v)
{
	unsigned char c = (unsigned char)v;

	gb_raw(b, &c, 1);
}

static void
gb_u16(struct gb *b, unsigned v)
{
	gb_u8(b, v & 0xff);
	gb_u8(b, v >> 8 & 0xff);
}

static void
gb_u32(struct gb *b, uint32_t v)
{
	gb_u16(b, v & 0xffff);
	gb_u16(b, v >> 16);
}

static void
gb_u64(struct gb *b, uint64_t v)
{
	gb_u32(b, (uint32_t)v);
	gb_u32(b, (uint32_t)(v >> 32));
}

static void
gb_f32(struct gb *b, float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	gb_u32(b, u);
}

static void
gb_zeros(struct gb *b, size_t n)
{
	static const unsigned char z[4096];

	while (n > 0) {
		size_t k = n < sizeof z ? n : sizeof z;

		gb_raw(b, z, k);
		n -= k;
	}
}

static void
gb_str(struct gb *b, const char *s)
{
	gb_u64(b, strlen(s));
	gb_raw(b, s, strlen(s));
}

static void
gb_pad(struct gb *b, size_t align)
{
	while (b->n % align != 0)
		gb_u8(b, 0);
}

static void
gb_header(struct gb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
	gb_raw(b, "GGUF", 4);
	gb_u32(b, version);
	gb_u64(b, n_tensors);
	gb_u64(b, n_kv);
}

static void
gb_kv_u32(struct gb *b, const char *key, uint32_t v)
{
	gb_str(b, key);
	gb_u32(b, V_U32);
	gb_u32(b, v);
}

static void
gb_tinfo(struct gb *b, const char *name, uint32_t ndim, const uint64_t *ne, uint32_t type,
         uint64_t offset)
{
	uint32_t i;

	gb_str(b, name);
	gb_u32(b, ndim);
	for (i = 0; i < ndim; i++)
		gb_u64(b, ne[i]);
	gb_u32(b, type);
	gb_u64(b, offset);
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

static const char *
data_path(const char *rel, char *buf, size_t size)
{
	const char *d = getenv("NESA_DATA");

	if (d == NULL)
		return NULL;
	snprintf(buf, size, "%s/%s", d, rel);
	return access(buf, R_OK) == 0 ? buf : NULL;
}

/*
 * The small reference file.  Tensor data (all at 32-byte aligned offsets,
 * the last tensor ending the file so that any truncation cuts real data):
 */
static float f32_data[6] = {1, -2, 3.5f, 0, 1e-3f, -7};      /* w.f32 nesa [2, 3] */
static uint16_t f16_data[4] = {0x3c00, 0xc000, 0x3800, 0x0001}; /* w.f16 [4] */
static uint16_t bf16_data[4] = {0x3f80, 0x4000, 0xbf80, 0x0000}; /* w.bf16 [2, 2] */
static struct nesa_block_q8_0 q8_data[2];                     /* w.q8 nesa [2, 32] */
static struct nesa_block_q4_0 q4_data[2];                     /* w.q4 [64] */
static int8_t i8_data[5] = {-128, -1, 0, 1, 127};              /* w.i8 [5] */
static int32_t i32_data[3] = {INT32_MIN, 0, INT32_MAX};        /* w.i32 [3] */
static unsigned char q6k_data[210];                           /* w.k q6_K nesa [1, 256] */
static float last_data[3] = {42, 43, 44};                     /* w.last [3] */

struct spec {
	const char *name;
	uint32_t type, ndim;
	uint64_t ne[4]; /* GGUF order */
	const void *data;
	size_t nbytes;
};

static struct spec specs[] = {
	{"w.f32", G_F32, 2, {3, 2}, f32_data, sizeof f32_data},
	{"w.f16", G_F16, 1, {4}, f16_data, sizeof f16_data},
	{"w.bf16", G_BF16, 2, {2, 2}, bf16_data, sizeof bf16_data},
	{"w.q8", G_Q8_0, 2, {32, 2}, q8_data, sizeof q8_data},
	{"w.q4", G_Q4_0, 1, {64}, q4_data, sizeof q4_data},
	{"w.i8", G_I8, 1, {5}, i8_data, sizeof i8_data},
	{"w.i32", G_I32, 1, {3}, i32_data, sizeof i32_data},
	{"w.k", G_Q6_K, 2, {256, 1}, q6k_data, sizeof q6k_data},
	{"w.unk", 99, 1, {7}, q6k_data, 16},
	{"w.last", G_F32, 1, {3}, last_data, sizeof last_data},
};
#define N_SPECS (sizeof specs / sizeof specs[0])

static void
fill_data(void)
{
	float x[64];
	int j;

	for (j = 0; j < 64; j++)
		x[j] = (float)(j - 20) * 0.125f;
	nesa_quantize_q8_0_ref(x, q8_data, 64);
	nesa_quantize_q4_0_ref(x, q4_data, 64);
	for (j = 0; j < 210; j++)
		q6k_data[j] = (unsigned char)j;
}

/* Builds the small reference file, GGUF `version`, into b. */
static void
build_small(struct gb *b, uint32_t version)
{
	uint64_t off = 0, offs[N_SPECS];
	size_t i;

	memset(b, 0, sizeof *b);
	gb_header(b, version, N_SPECS, 20);
	gb_str(b, "general.architecture");
	gb_u32(b, V_STR);
	gb_str(b, "test");
	gb_str(b, "t.u8"), gb_u32(b, V_U8), gb_u8(b, 200);
	gb_str(b, "t.i8"), gb_u32(b, V_I8), gb_u8(b, 0xfb);
	gb_str(b, "t.u16"), gb_u32(b, V_U16), gb_u16(b, 60000);
	gb_str(b, "t.i16"), gb_u32(b, V_I16), gb_u16(b, (uint16_t)-30000);
	gb_kv_u32(b, "t.u32", 4000000000u);
	gb_str(b, "t.i32"), gb_u32(b, V_I32), gb_u32(b, (uint32_t)-2000000000);
	gb_str(b, "t.f32"), gb_u32(b, V_F32), gb_f32(b, 0.25f);
	gb_str(b, "t.bool"), gb_u32(b, V_BOOL), gb_u8(b, 1);
	gb_str(b, "t.u64"), gb_u32(b, V_U64), gb_u64(b, (UINT64_C(1) << 63) + 4096);
	gb_str(b, "t.u64s"), gb_u32(b, V_U64), gb_u64(b, 123);
	gb_str(b, "t.i64"), gb_u32(b, V_I64), gb_u64(b, (uint64_t)-(INT64_C(1) << 40));
	gb_str(b, "t.f64"), gb_u32(b, V_F64), gb_u64(b, 0xbff8000000000000ull); /* -1.5 */
	gb_str(b, "t.nan"), gb_u32(b, V_F32), gb_u32(b, 0x7fc00000u);
	gb_str(b, "t.ints"), gb_u32(b, V_ARR), gb_u32(b, V_I32), gb_u64(b, 3);
	gb_u32(b, 1), gb_u32(b, (uint32_t)-2), gb_u32(b, 3);
	gb_str(b, "t.strs"), gb_u32(b, V_ARR), gb_u32(b, V_STR), gb_u64(b, 3);
	gb_str(b, "a"), gb_str(b, ""), gb_str(b, "\xff\xfe");
	gb_str(b, "t.nested"), gb_u32(b, V_ARR), gb_u32(b, V_ARR), gb_u64(b, 2);
	gb_u32(b, V_STR), gb_u64(b, 2), gb_str(b, "x"), gb_str(b, "y");
	gb_u32(b, V_STR), gb_u64(b, 0);
	gb_str(b, "t.empty"), gb_u32(b, V_ARR), gb_u32(b, V_U8), gb_u64(b, 0);
	gb_str(b, "t.scores"), gb_u32(b, V_ARR), gb_u32(b, V_F32), gb_u64(b, 2);
	gb_f32(b, -1.5f), gb_f32(b, 1e30f);
	gb_kv_u32(b, "general.alignment", 32);
	for (i = 0; i < N_SPECS; i++) {
		offs[i] = off;
		off = (off + specs[i].nbytes + 31) / 32 * 32;
		gb_tinfo(b, specs[i].name, specs[i].ndim, specs[i].ne, specs[i].type, offs[i]);
	}
	gb_pad(b, 32);
	for (i = 0; i < N_SPECS; i++) {
		size_t start = b->n;

		gb_raw(b, specs[i].data, specs[i].nbytes);
		if (i + 1 < N_SPECS)
			gb_pad(b, 32);
		assert_int_equal(b->n - start >= specs[i].nbytes, 1);
	}
}

static int
setup(void **state)
{
	(void)state;
	fill_data();
	/* jansson allocates through the same hook so fault injection reaches it. */
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

static json_int_t
kv_int(const struct nesa_gguf *g, const char *key)
{
	json_t *v = json_object_get(g->kv, key);

	assert_true(json_is_integer(v));
	return json_integer_value(v);
}

static const char *
kv_type(const struct nesa_gguf *g, const char *key)
{
	const char *t = json_string_value(json_object_get(g->kv_types, key));

	assert_non_null(t);
	return t;
}

static void
check_small(const struct nesa_gguf *g)
{
	struct nesa_tset *ts = (struct nesa_tset *)&g->tensors;
	struct nesa_tensor *t;
	json_t *a;
	size_t i;

	assert_int_equal(kv_int(g, "t.u8"), 200);
	assert_int_equal(kv_int(g, "t.i8"), -5);
	assert_int_equal(kv_int(g, "t.u16"), 60000);
	assert_int_equal(kv_int(g, "t.i16"), -30000);
	assert_int_equal(kv_int(g, "t.u32"), 4000000000ll);
	assert_int_equal(kv_int(g, "t.i32"), -2000000000ll);
	assert_int_equal(kv_int(g, "t.u64s"), 123);
	assert_int_equal(kv_int(g, "t.i64"), -(INT64_C(1) << 40));
	assert_true(json_real_value(json_object_get(g->kv, "t.f32")) == 0.25);
	assert_true(json_real_value(json_object_get(g->kv, "t.f64")) == -1.5);
	assert_true(json_real_value(json_object_get(g->kv, "t.u64")) == 0x1p63 + 4096.0);
	assert_true(json_is_true(json_object_get(g->kv, "t.bool")));
	assert_true(json_is_null(json_object_get(g->kv, "t.nan")));
	assert_string_equal(json_string_value(json_object_get(g->kv, "general.architecture")), "test");
	a = json_object_get(g->kv, "t.ints");
	assert_int_equal(json_array_size(a), 3);
	assert_int_equal(json_integer_value(json_array_get(a, 1)), -2);
	a = json_object_get(g->kv, "t.strs");
	assert_int_equal(json_array_size(a), 3);
	assert_string_equal(json_string_value(json_array_get(a, 0)), "a");
	assert_int_equal(json_string_length(json_array_get(a, 1)), 0);
	assert_memory_equal(json_string_value(json_array_get(a, 2)), "\xff\xfe", 3);
	a = json_object_get(g->kv, "t.nested");
	assert_int_equal(json_array_size(a), 2);
	assert_string_equal(json_string_value(json_array_get(json_array_get(a, 0), 1)), "y");
	assert_int_equal(json_array_size(json_array_get(a, 1)), 0);
	assert_int_equal(json_array_size(json_object_get(g->kv, "t.empty")), 0);
	assert_string_equal(kv_type(g, "t.u8"), "u8");
	assert_string_equal(kv_type(g, "t.i16"), "i16");
	assert_string_equal(kv_type(g, "t.u64"), "u64");
	assert_string_equal(kv_type(g, "t.f64"), "f64");
	assert_string_equal(kv_type(g, "t.bool"), "bool");
	assert_string_equal(kv_type(g, "t.ints"), "array[i32]");
	assert_string_equal(kv_type(g, "t.strs"), "array[string]");
	assert_string_equal(kv_type(g, "t.nested"), "array[array[string]]");
	assert_string_equal(kv_type(g, "t.scores"), "array[f32]");
	assert_string_equal(kv_type(g, "general.alignment"), "u32");
	assert_int_equal(g->alignment, 32);
	assert_int_equal(g->data_offset % 32, 0);

	/* Tensors: eight loadable, two skipped, in file order. */
	assert_int_equal(ts->n, 8);
	assert_int_equal(g->n_skipped, 2);
	t = nesa_tset_find(ts, "w.f32");
	assert_non_null(t);
	assert_int_equal(t->dtype, NESA_F32);
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->shape[0], 2); /* GGUF ne [3, 2] is nesa [2, 3] */
	assert_int_equal(t->shape[1], 3);
	assert_memory_equal(t->data, f32_data, sizeof f32_data);
	assert_true(t->flags & NESA_TENSOR_READONLY);
	t = nesa_tset_find(ts, "w.q8");
	assert_int_equal(t->dtype, NESA_Q8_0);
	assert_int_equal(t->shape[0], 2);
	assert_int_equal(t->shape[1], 32);
	assert_int_equal(t->nbytes, 68);
	assert_memory_equal(t->data, q8_data, sizeof q8_data);
	t = nesa_tset_find(ts, "w.q4");
	assert_int_equal(t->dtype, NESA_Q4_0);
	assert_memory_equal(t->data, q4_data, sizeof q4_data);
	assert_int_equal(nesa_tset_find(ts, "w.f16")->dtype, NESA_F16);
	assert_int_equal(nesa_tset_find(ts, "w.bf16")->dtype, NESA_BF16);
	assert_memory_equal(nesa_tset_find(ts, "w.i8")->data, i8_data, sizeof i8_data);
	assert_memory_equal(nesa_tset_find(ts, "w.i32")->data, i32_data, sizeof i32_data);
	assert_memory_equal(nesa_tset_find(ts, "w.last")->data, last_data, sizeof last_data);
	assert_null(nesa_tset_find(ts, "w.k"));
	/* Zero copy: every tensor views the mapping. */
	for (i = 0; i < ts->n; i++) {
		const unsigned char *d = ts->items[i].data, *m = ts->maps[0].addr;

		assert_true(d >= m && d < m + ts->maps[0].size);
	}

	assert_string_equal(g->skipped[0].name, "w.k");
	assert_string_equal(g->skipped[0].type_name, "q6_K");
	assert_int_equal(g->skipped[0].ggml_type, 14);
	assert_int_equal(g->skipped[0].ndim, 2);
	assert_int_equal(g->skipped[0].shape[0], 1);
	assert_int_equal(g->skipped[0].shape[1], 256);
	assert_int_equal(g->skipped[0].nbytes, 210);
	assert_memory_equal((const unsigned char *)ts->maps[0].addr + g->skipped[0].offset, q6k_data, 210);
	assert_string_equal(g->skipped[1].type_name, "unknown");
	assert_int_equal(g->skipped[1].nbytes, 0);
	assert_ptr_equal(nesa_gguf_find_skipped(g, "w.unk"), &g->skipped[1]);
	assert_null(nesa_gguf_find_skipped(g, "w.f32"));
	assert_int_equal(nesa_gguf_validate(g, NULL), NESA_OK);
}

static void
test_small(void **state)
{
	struct nesa_gguf *g;
	struct nesa_err err;
	struct gb b;

	(void)state;
	build_small(&b, 3);
	assert_int_equal(nesa_gguf_open(write_file("small.gguf", b.p, b.n), &g, &err), NESA_OK);
	assert_int_equal(g->version, 3);
	assert_int_equal(g->file_size, b.n);
	check_small(g);
	nesa_gguf_free(g);
	free(b.p);

	/* Version 2 has the same layout. */
	build_small(&b, 2);
	assert_int_equal(nesa_gguf_open(write_file("small2.gguf", b.p, b.n), &g, &err), NESA_OK);
	assert_int_equal(g->version, 2);
	check_small(g);
	nesa_gguf_free(g);
	free(b.p);
	nesa_gguf_free(NULL);

	assert_string_equal(nesa_gguf_type_name(14), "q6_K");
	assert_string_equal(nesa_gguf_type_name(4), "unknown");
	assert_string_equal(nesa_gguf_type_name(1u << 31), "unknown");
	assert_non_null(strstr(nesa_gguf_supported_types(), "q8_0"));
}

/* Cutting the file anywhere gives a clean error, never a crash or success. */
static void
test_truncation(void **state)
{
	struct nesa_gguf *g;
	struct nesa_err err;
	struct gb b;
	size_t len;

	(void)state;
	build_small(&b, 3);
	for (len = 0; len < b.n; len++) {
		enum nesa_status s;

		nesa_err_clear(&err);
		s = nesa_gguf_open(write_file("cut.gguf", b.p, len), &g, &err);
		assert_int_equal(s, NESA_EFORMAT);
		assert_null(g);
		assert_non_null(strstr(err.msg, "cannot read '"));
		assert_non_null(strstr(err.msg, "cut.gguf'"));
	}
	free(b.p);
}

/* Builds a one-tensor file: header, given KV bytes, given infos, data. */
static enum nesa_status
open_bytes(const struct gb *b, struct nesa_err *err)
{
	struct nesa_gguf *g;
	enum nesa_status s;

	nesa_err_clear(err);
	s = nesa_gguf_open(write_file("bad.gguf", b->p, b->n), &g, err);
	nesa_gguf_free(g);
	return s;
}

static void
expect(const struct gb *b, enum nesa_status want, const char *msg)
{
	struct nesa_err err;

	assert_int_equal(open_bytes(b, &err), want);
	if (strstr(err.msg, msg) == NULL)
		fail_msg("expected '%s' in: %s", msg, err.msg);
}

static void
reset(struct gb *b)
{
	b->n = 0;
}

/* A file with n f32 tensors of 8 elements at the given relative offsets. */
static void
build_tensors(struct gb *b, const uint64_t *offsets, int n, size_t data_bytes)
{
	uint64_t ne = 8;
	char name[16];
	int i;

	reset(b);
	gb_header(b, 3, (uint64_t)n, 0);
	for (i = 0; i < n; i++) {
		snprintf(name, sizeof name, "t%d", i);
		gb_tinfo(b, name, 1, &ne, G_F32, offsets[i]);
	}
	gb_pad(b, 32);
	gb_zeros(b, data_bytes);
}

static void
test_hostile(void **state)
{
	struct gb b = {0};
	uint64_t ne[5] = {1, 1, 1, 1, 1}, offs[3];
	struct nesa_err err;
	struct nesa_gguf *g;
	size_t i, hdr;
	char msg[200];

	(void)state;
	/* Not a GGUF file at all; empty file; missing file. */
	gb_raw(&b, "GGML\3\0\0\0", 8);
	expect(&b, NESA_EFORMAT, "not a GGUF file (bad magic)");
	reset(&b);
	expect(&b, NESA_EFORMAT, "not a GGUF file");
	snprintf(path, sizeof path, "%s/missing.gguf", dir);
	assert_int_equal(nesa_gguf_open(path, &g, &err), NESA_ENOENT);
	assert_int_equal(nesa_gguf_open(dir, &g, &err), NESA_EUNSUPPORTED);

	/* Versions. */
	gb_header(&b, 1, 0, 0);
	expect(&b, NESA_EVERSION, "GGUF version 1 is not supported (only 2 and 3)");
	reset(&b);
	gb_header(&b, 0x03000000u, 0, 0);
	expect(&b, NESA_EVERSION, "big-endian");

	/* Absurd counts are refused before any allocation. */
	reset(&b);
	gb_header(&b, 3, UINT64_C(1) << 62, 0);
	expect(&b, NESA_EFORMAT, "tensor count 4611686018427387904 is absurd");
	reset(&b);
	gb_header(&b, 3, 0, UINT64_C(1) << 62);
	expect(&b, NESA_EFORMAT, "metadata count 4611686018427387904 is absurd");
	/* 2^20 + 1 is over the fixed limit even in a file big enough to claim it. */
	reset(&b);
	gb_header(&b, 3, (UINT64_C(1) << 20) + 1, 0);
	gb_zeros(&b, 26 * ((1u << 20) + 1));
	expect(&b, NESA_EFORMAT, "limit 1048576");

	/* A key whose length runs past the end of the file. */
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_u64(&b, 1000);
	gb_raw(&b, "abcdefghijklmnopqrstuvwxyz", 26);
	expect(&b, NESA_EFORMAT, "key of metadata pair 0 at offset 24 has length 1000, past the end");
	/* A string value longer than 2^30 bytes. */
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, V_STR);
	gb_u64(&b, (UINT64_C(1) << 30) + 1);
	gb_raw(&b, "0123456789abcdef", 16);
	expect(&b, NESA_EFORMAT,
	       "value of key 'k' at offset 37 is 1073741825 bytes long (at most 1073741824)");
	/* Unknown value types, at top level and inside an array. */
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, 13);
	gb_u64(&b, 0);
	expect(&b, NESA_EFORMAT, "key 'k' has unknown value type 13");
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, V_ARR);
	gb_u32(&b, 77);
	gb_u64(&b, 1);
	gb_u64(&b, 0);
	expect(&b, NESA_EFORMAT, "key 'k' is an array of unknown value type 77");
	/* An array length the file cannot hold. */
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, V_ARR);
	gb_u32(&b, V_STR);
	gb_u64(&b, UINT64_C(1) << 40);
	gb_u64(&b, 0);
	expect(&b, NESA_EFORMAT, "array 'k' claims 1099511627776 elements of type string");
	/* Arrays nested deeper than the limit. */
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "deep");
	gb_u32(&b, V_ARR);
	for (i = 0; i < 12; i++) {
		gb_u32(&b, V_ARR);
		gb_u64(&b, 1);
	}
	expect(&b, NESA_EFORMAT, "key 'deep' nests arrays deeper than 8 levels");
	/* Invalid bool, duplicate key, NUL in a key. */
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "b");
	gb_u32(&b, V_BOOL);
	gb_u8(&b, 2);
	expect(&b, NESA_EFORMAT, "key 'b' has invalid bool value 2");
	reset(&b);
	gb_header(&b, 3, 0, 2);
	gb_kv_u32(&b, "k", 1);
	gb_kv_u32(&b, "k", 2);
	expect(&b, NESA_EFORMAT, "duplicate key 'k'");
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_u64(&b, 3);
	gb_raw(&b, "a\0b", 3);
	gb_u32(&b, V_U8);
	gb_u8(&b, 0);
	expect(&b, NESA_EFORMAT, "key of metadata pair 0 contains a NUL byte");
	/* Alignment that is not a power of two, or not a u32. */
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_kv_u32(&b, "general.alignment", 48);
	expect(&b, NESA_EFORMAT, "general.alignment must be a u32 power of two (got u32 48)");
	reset(&b);
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "general.alignment");
	gb_u32(&b, V_U64);
	gb_u64(&b, 32);
	expect(&b, NESA_EFORMAT, "(got u64 32)");

	/* Five dimensions. */
	reset(&b);
	gb_header(&b, 3, 1, 0);
	gb_tinfo(&b, "t5", 5, ne, G_F32, 0);
	gb_pad(&b, 32);
	gb_raw(&b, "\0\0\0\0", 4);
	expect(&b, NESA_ESHAPE, "tensor 't5' has 5 dimensions (at most 4)");
	/* A negative dimension and an element count overflowing 64 bits. */
	reset(&b);
	ne[0] = UINT64_C(1) << 63;
	gb_header(&b, 3, 1, 0);
	gb_tinfo(&b, "neg", 1, ne, G_F32, 0);
	expect(&b, NESA_ESHAPE, "tensor 'neg' has negative dimension 0");
	reset(&b);
	ne[0] = ne[1] = UINT64_C(1) << 32;
	gb_header(&b, 3, 1, 0);
	gb_tinfo(&b, "big", 2, ne, G_F32, 0);
	expect(&b, NESA_ESHAPE, "tensor 'big' is too large");
	reset(&b);
	gb_header(&b, 3, 1, 0);
	gb_tinfo(&b, "bigk", 2, ne, G_Q6_K, 0);
	expect(&b, NESA_ESHAPE, "tensor 'bigk' is too large");
	/* A q8_0 row that is not a whole number of blocks; likewise for a foreign type. */
	reset(&b);
	ne[0] = 33;
	ne[1] = 2;
	gb_header(&b, 3, 1, 0);
	gb_tinfo(&b, "q", 2, ne, G_Q8_0, 0);
	expect(&b, NESA_ESHAPE, "tensor 'q' of type q8_0 needs a last dimension that is a multiple of 32");
	reset(&b);
	gb_header(&b, 3, 1, 0);
	gb_tinfo(&b, "k6", 2, ne, G_Q6_K, 0);
	expect(&b, NESA_ESHAPE, "tensor 'k6' of type q6_K needs a row length that is a multiple of 256");
	/* A tensor name with a NUL byte; an overlong name. */
	reset(&b);
	gb_header(&b, 3, 1, 0);
	gb_u64(&b, 3);
	gb_raw(&b, "x\0y", 3);
	gb_zeros(&b, 32);
	expect(&b, NESA_EFORMAT, "name of tensor 0 contains a NUL byte");
	reset(&b);
	gb_header(&b, 3, 1, 0);
	gb_u64(&b, 5000);
	for (i = 0; i < 5000 + 24; i++)
		gb_u8(&b, 'n');
	expect(&b, NESA_EFORMAT, "name of tensor 0 at offset 24 is 5000 bytes long (at most 1024)");

	/* Offsets: past the end (the message names the range and file size). */
	offs[0] = 0;
	offs[1] = 64;
	build_tensors(&b, offs, 2, 64);
	hdr = b.n - 64;
	snprintf(msg, sizeof msg,
	         "bad.gguf': tensor 't1' data [%zu, %zu) extends past end of file (%zu bytes)",
	         hdr + 64, hdr + 96, b.n);
	expect(&b, NESA_EFORMAT, msg);
	offs[1] = UINT64_C(1) << 62;
	build_tensors(&b, offs, 2, 64);
	expect(&b, NESA_EFORMAT, "tensor 't1' data offset 4611686018427387904 starts past end of file");
	offs[1] = UINT64_MAX - 31;
	build_tensors(&b, offs, 2, 64);
	expect(&b, NESA_EFORMAT, "starts past end of file");
	/* Unaligned and overlapping offsets. */
	offs[1] = 16;
	build_tensors(&b, offs, 2, 64);
	expect(&b, NESA_EFORMAT, "tensor 't1' data offset 16 is not a multiple of the alignment 32");
	offs[0] = 32;
	offs[1] = 64;
	offs[2] = 32;
	build_tensors(&b, offs, 3, 96);
	expect(&b, NESA_EFORMAT, "overlap");
	/* A sized foreign tensor overlapping a loadable one is caught too. */
	reset(&b);
	ne[0] = 256;
	gb_header(&b, 3, 2, 0);
	gb_tinfo(&b, "k", 1, ne, G_Q6_K, 0);
	ne[0] = 8;
	gb_tinfo(&b, "f", 1, ne, G_F32, 192);
	gb_pad(&b, 32);
	for (i = 0; i < 224; i++)
		gb_u8(&b, 0);
	expect(&b, NESA_EFORMAT, "tensors 'k'");
	/* Duplicate tensor names. */
	reset(&b);
	gb_header(&b, 3, 2, 0);
	gb_tinfo(&b, "same", 1, ne, G_F32, 0);
	gb_tinfo(&b, "same", 1, ne, G_F32, 32);
	gb_pad(&b, 32);
	for (i = 0; i < 64; i++)
		gb_u8(&b, 0);
	expect(&b, NESA_EFORMAT, "duplicate tensor name 'same'");
	/* Missing padding before the data section. */
	reset(&b);
	gb_header(&b, 3, 1, 0);
	ne[0] = 0;
	gb_tinfo(&b, "empty", 1, ne, G_F32, 0);
	expect(&b, NESA_EFORMAT, "reading padding before the tensor data");
	free(b.p);
}

/* A file alignment of 1 puts an f32 tensor at an odd address: it is copied. */
static void
test_unaligned_copy(void **state)
{
	struct gb b = {0};
	uint64_t ne = 3, off;
	struct nesa_gguf *g;
	struct nesa_err err;
	struct nesa_tensor *t;
	float v[3] = {1.5f, -2.5f, 3.25f};

	(void)state;
	gb_header(&b, 3, 1, 1);
	gb_kv_u32(&b, "general.alignment", 1);
	gb_tinfo(&b, "odd", 1, &ne, G_F32, 0);
	/* The data section starts right here; pick an offset that is not a
	 * multiple of 4 from it, and patch it into the info just written. */
	off = b.n % 4 == 3 ? 2 : 1;
	b.n -= 8;
	gb_u64(&b, off);
	gb_zeros(&b, (size_t)off);
	gb_raw(&b, v, sizeof v);
	assert_int_equal(nesa_gguf_open(write_file("odd.gguf", b.p, b.n), &g, &err), NESA_OK);
	assert_int_equal(g->alignment, 1);
	assert_int_not_equal((g->data_offset + off) % 4, 0);
	t = nesa_tset_find(&g->tensors, "odd");
	assert_non_null(t);
	assert_int_equal((uintptr_t)t->data % 4, 0);
	assert_memory_equal(t->data, v, sizeof v);
	assert_int_equal(g->tensors.n_allocs, 1);
	assert_false(t->flags & NESA_TENSOR_READONLY);
	nesa_gguf_free(g);
	free(b.p);
}

/* Non-finite q8_0 scales load but fail validation, naming the tensor. */
static void
test_validate(void **state)
{
	struct gb b = {0};
	uint64_t ne = 64;
	struct nesa_block_q8_0 blk[2];
	struct nesa_gguf *g;
	struct nesa_err err;

	(void)state;
	memset(blk, 0, sizeof blk);
	blk[1].d = 0x7e00;
	gb_header(&b, 3, 1, 0);
	gb_tinfo(&b, "blk.0.attn_q.weight", 1, &ne, G_Q8_0, 0);
	gb_pad(&b, 32);
	gb_raw(&b, blk, sizeof blk);
	assert_int_equal(nesa_gguf_open(write_file("nan.gguf", b.p, b.n), &g, &err), NESA_OK);
	assert_int_equal(nesa_gguf_validate(g, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "nan.gguf': tensor 'blk.0.attn_q.weight': "
	                                "q8_0 block 1 has a non-finite scale"));
	nesa_gguf_free(g);
	free(b.p);
}

/* A 32000-token vocabulary with scores and types loads (and loads fast). */
static void
test_big_vocab(void **state)
{
	enum { NTOK = 32000 };
	struct gb b = {0};
	struct nesa_gguf *g;
	struct nesa_err err;
	json_t *tok, *sc;
	char s[32];
	int i;

	(void)state;
	gb_header(&b, 3, 0, 3);
	gb_str(&b, "tokenizer.ggml.tokens");
	gb_u32(&b, V_ARR);
	gb_u32(&b, V_STR);
	gb_u64(&b, NTOK);
	for (i = 0; i < NTOK; i++) {
		snprintf(s, sizeof s, "tok%d", i);
		gb_str(&b, s);
	}
	gb_str(&b, "tokenizer.ggml.scores");
	gb_u32(&b, V_ARR);
	gb_u32(&b, V_F32);
	gb_u64(&b, NTOK);
	for (i = 0; i < NTOK; i++)
		gb_f32(&b, -(float)i);
	gb_str(&b, "tokenizer.ggml.token_type");
	gb_u32(&b, V_ARR);
	gb_u32(&b, V_I32);
	gb_u64(&b, NTOK);
	for (i = 0; i < NTOK; i++)
		gb_u32(&b, 1);
	assert_int_equal(nesa_gguf_open(write_file("vocab.gguf", b.p, b.n), &g, &err), NESA_OK);
	tok = json_object_get(g->kv, "tokenizer.ggml.tokens");
	sc = json_object_get(g->kv, "tokenizer.ggml.scores");
	assert_int_equal(json_array_size(tok), NTOK);
	assert_string_equal(json_string_value(json_array_get(tok, 31999)), "tok31999");
	assert_true(json_real_value(json_array_get(sc, 31999)) == -31999.0);
	assert_string_equal(kv_type(g, "tokenizer.ggml.token_type"), "array[i32]");
	assert_int_equal(g->tensors.n, 0);
	nesa_gguf_free(g);
	free(b.p);
}

/* Every allocation failure returns NESA_ENOMEM cleanly (jansson's included). */
static void
test_alloc_failures(void **state)
{
	struct nesa_gguf *g;
	struct nesa_err err;
	struct gb b;
	const char *p;
	long n;

	(void)state;
	build_small(&b, 3);
	p = write_file("oom.gguf", b.p, b.n);
	for (n = 1;; n++) {
		enum nesa_status s;

		test_faults_arm(n);
		s = nesa_gguf_open(p, &g, &err);
		test_faults_disarm();
		if (s == NESA_OK)
			break;
		assert_int_equal(s, NESA_ENOMEM);
		assert_null(g);
	}
	assert_true(n > 20);
	nesa_gguf_free(g);
	free(b.p);
}

/* stories260K.gguf: shapes, metadata, vocabulary. */
static void
test_stories_f32(void **state)
{
	char buf[512];
	const char *p = data_path("stories260K/stories260K.gguf", buf, sizeof buf);
	struct nesa_gguf *g;
	struct nesa_err err;
	struct nesa_tensor *t;
	json_t *tok;

	(void)state;
	if (p == NULL) {
		print_message("stories260K.gguf not found under $NESA_DATA: skipping\n");
		skip();
	}
	assert_int_equal(nesa_gguf_open(p, &g, &err), NESA_OK);
	assert_int_equal(g->version, 3);
	assert_int_equal(g->tensors.n, 48);
	assert_int_equal(g->n_skipped, 0);
	assert_string_equal(json_string_value(json_object_get(g->kv, "general.architecture")), "llama");
	assert_int_equal(kv_int(g, "llama.embedding_length"), 64);
	assert_int_equal(kv_int(g, "llama.block_count"), 5);
	assert_int_equal(kv_int(g, "llama.feed_forward_length"), 172);
	assert_int_equal(kv_int(g, "llama.attention.head_count"), 8);
	assert_int_equal(kv_int(g, "llama.attention.head_count_kv"), 4);
	assert_int_equal(kv_int(g, "llama.rope.dimension_count"), 8);
	assert_int_equal(kv_int(g, "llama.context_length"), 128); /* the converter's default */
	assert_true(fabs(json_real_value(json_object_get(
	                     g->kv, "llama.attention.layer_norm_rms_epsilon")) - 1e-5) < 1e-12);
	assert_string_equal(kv_type(g, "tokenizer.ggml.tokens"), "array[string]");
	assert_string_equal(kv_type(g, "tokenizer.ggml.scores"), "array[f32]");
	assert_string_equal(kv_type(g, "tokenizer.ggml.token_type"), "array[i32]");
	tok = json_object_get(g->kv, "tokenizer.ggml.tokens");
	assert_int_equal(json_array_size(tok), 512);
	assert_string_equal(json_string_value(json_array_get(tok, 0)), "<unk>");
	assert_string_equal(json_string_value(json_array_get(tok, 3)), "<0x00>");
	t = nesa_tset_find(&g->tensors, "token_embd.weight");
	assert_non_null(t);
	assert_int_equal(t->dtype, NESA_F32);
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->shape[0], 512);
	assert_int_equal(t->shape[1], 64);
	t = nesa_tset_find(&g->tensors, "blk.4.ffn_down.weight");
	assert_int_equal(t->shape[0], 64);
	assert_int_equal(t->shape[1], 172);
	t = nesa_tset_find(&g->tensors, "blk.0.attn_k.weight");
	assert_int_equal(t->shape[0], 32);
	assert_int_equal(t->shape[1], 64);
	nesa_gguf_free(g);
}

/*
 * The q8_0 and q4_0 files against the f32 one, tensor by tensor: every
 * quantized tensor is within the documented bound of the f32 weights, and
 * re-quantizing the f32 weights with our _ref quantizers reproduces
 * llama.cpp's bytes exactly.  Tensors llama.cpp kept in f16 (rows of 172)
 * match to f16 rounding.
 */
static void
compare_quant(const char *file, int *n_quant)
{
	char b1[512], b2[512];
	const char *pf = data_path("stories260K/stories260K.gguf", b1, sizeof b1);
	const char *pq = data_path(file, b2, sizeof b2);
	struct nesa_gguf *gf, *gq;
	struct nesa_err err;
	size_t i;

	if (pf == NULL || pq == NULL) {
		print_message("%s not found under $NESA_DATA: skipping\n", file);
		skip();
	}
	assert_int_equal(nesa_gguf_open(pf, &gf, &err), NESA_OK);
	assert_int_equal(nesa_gguf_open(pq, &gq, &err), NESA_OK);
	assert_int_equal(nesa_gguf_validate(gq, &err), NESA_OK);
	assert_int_equal(gq->tensors.n, 48);
	*n_quant = 0;
	for (i = 0; i < gf->tensors.n; i++) {
		const struct nesa_tensor *tf = &gf->tensors.items[i];
		const struct nesa_tensor *tq = nesa_tset_find(&gq->tensors, tf->name);
		const float *x = tf->data;
		int64_t n = nesa_tensor_nelems(tf), j;
		float *y;
		void *requant;

		assert_non_null(tq);
		assert_true(nesa_tensor_same_shape(tf, tq));
		y = malloc((size_t)n * sizeof *y);
		assert_non_null(y);
		nesa_tensor_to_f32(tq, y);
		if (tq->dtype == NESA_F32) {
			assert_memory_equal(tf->data, tq->data, tf->nbytes);
		} else if (tq->dtype == NESA_F16) {
			for (j = 0; j < n; j++)
				assert_true(fabsf(x[j] - y[j]) <= fabsf(x[j]) * 0x1p-11f + 0x1p-25f);
		} else {
			/* Per-block bounds from quant.h. */
			for (j = 0; j < n; j += 32) {
				float amax = 0, m = 0, d, d16, bound;
				int k;

				for (k = 0; k < 32; k++)
					if (fabsf(x[j + k]) > amax) {
						amax = fabsf(x[j + k]);
						m = x[j + k];
					}
				if (tq->dtype == NESA_Q8_0) {
					d = amax / 127.0f;
					d16 = nesa_f16_to_f32(((const struct nesa_block_q8_0 *)tq->data)[j / 32].d);
					bound = 0.5f * d + 127.0f * fabsf(d - d16);
				} else {
					d = m / -8.0f;
					d16 = nesa_f16_to_f32(((const struct nesa_block_q4_0 *)tq->data)[j / 32].d);
					bound = fabsf(d) + 8.0f * fabsf(d - d16);
				}
				for (k = 0; k < 32; k++)
					assert_true(fabsf(x[j + k] - y[j + k]) <= bound + 8 * FLT_EPSILON * amax);
			}
			requant = malloc(tq->nbytes);
			assert_non_null(requant);
			nesa_dtype_traits(tq->dtype)->from_f32(x, requant, n);
			assert_memory_equal(requant, tq->data, tq->nbytes);
			free(requant);
			++*n_quant;
		}
		free(y);
	}
	nesa_gguf_free(gf);
	nesa_gguf_free(gq);
}

static void
test_stories_q8_0(void **state)
{
	int n;

	(void)state;
	compare_quant("stories260K/stories260K-q8_0.gguf", &n);
	/* 48 minus 11 f32 norms minus 5 ffn_down kept in f16 (rows of 172). */
	assert_int_equal(n, 32);
}

static void
test_stories_q4_0(void **state)
{
	int n;

	(void)state;
	compare_quant("stories260K/stories260K-q4_0.gguf", &n);
	/* As q8_0; output.weight is q8_0 here (llama.cpp's choice), the rest q4_0. */
	assert_int_equal(n, 32);
}

/*
 * The f32 GGUF against the llama2.c checkpoint it was converted from.
 * llama.cpp's convert-llama2c-to-ggml copies wq and wk unchanged: both
 * llama2.c and llama.cpp's default (non-NeoX) RoPE rotate adjacent pairs,
 * so no row permutation is needed, unlike the Hugging Face conversion.
 * The test proves it: rows match exactly, and the Hugging Face-style
 * permutation would not.
 */
static void
test_stories_vs_llama2c(void **state)
{
	static const char *const map[][2] = {
		{"attn_norm", "attention_norm"}, {"attn_q", "wq"}, {"attn_k", "wk"},
		{"attn_v", "wv"}, {"attn_output", "wo"}, {"ffn_norm", "ffn_norm"},
		{"ffn_gate", "w1"}, {"ffn_down", "w2"}, {"ffn_up", "w3"},
	};
	char b1[512], b2[512], gn[64], ln[64];
	const char *pg = data_path("stories260K/stories260K.gguf", b1, sizeof b1);
	const char *pl = data_path("stories260K/stories260K.bin", b2, sizeof b2);
	struct nesa_gguf *g;
	struct nesa_llama2c *m;
	struct nesa_err err;
	const struct nesa_tensor *a, *b;
	const float *q, *wq;
	int l, k, h, i, same_perm = 1;

	(void)state;
	if (pg == NULL || pl == NULL) {
		print_message("stories260K files not found under $NESA_DATA: skipping\n");
		skip();
	}
	assert_int_equal(nesa_gguf_open(pg, &g, &err), NESA_OK);
	assert_int_equal(nesa_llama2c_open(pl, &m, &err), NESA_OK);
	a = nesa_tset_find(&g->tensors, "token_embd.weight");
	b = nesa_tset_find(&m->tensors, "tok_embeddings");
	assert_true(nesa_tensor_same_shape(a, b));
	assert_memory_equal(a->data, b->data, a->nbytes);
	/* The converter writes the shared classifier out as a copy. */
	a = nesa_tset_find(&g->tensors, "output.weight");
	assert_memory_equal(a->data, b->data, a->nbytes);
	a = nesa_tset_find(&g->tensors, "output_norm.weight");
	assert_memory_equal(a->data, nesa_tset_find(&m->tensors, "norm")->data, a->nbytes);
	for (l = 0; l < 5; l++)
		for (k = 0; k < 9; k++) {
			snprintf(gn, sizeof gn, "blk.%d.%s.weight", l, map[k][0]);
			snprintf(ln, sizeof ln, "layers.%d.%s", l, map[k][1]);
			a = nesa_tset_find(&g->tensors, gn);
			b = nesa_tset_find(&m->tensors, ln);
			assert_non_null(a);
			assert_non_null(b);
			assert_true(nesa_tensor_same_shape(a, b));
			assert_memory_equal(a->data, b->data, a->nbytes);
		}
	/*
	 * Hugging Face's permutation maps row h*hs + 2i + c to h*hs + c*hs/2 + i;
	 * had the converter applied it, these rows would have matched instead.
	 */
	q = nesa_tset_find(&g->tensors, "blk.0.attn_q.weight")->data;
	wq = nesa_tset_find(&m->tensors, "layers.0.wq")->data;
	for (h = 0; h < 8; h++)
		for (i = 0; i < 4; i++) {
			int src = h * 8 + 2 * i + 1, dst = h * 8 + 4 + i;

			if (memcmp(q + dst * 64, wq + src * 64, 64 * sizeof(float)) != 0)
				same_perm = 0;
		}
	assert_false(same_perm);
	nesa_llama2c_free(m);
	nesa_gguf_free(g);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_small),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_unaligned_copy),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_big_vocab),
		cmocka_unit_test(test_alloc_failures),
		cmocka_unit_test(test_stories_f32),
		cmocka_unit_test(test_stories_q8_0),
		cmocka_unit_test(test_stories_q4_0),
		cmocka_unit_test(test_stories_vs_llama2c),
	};

	return cmocka_run_group_tests_name("gguf", tests, setup, teardown);
}
