/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for safetensors: a small file with every loadable dtype,
 * skipped dtypes and metadata; truncation at every byte; hostile headers,
 * shapes and offsets; unaligned data; sharded checkpoints (index file and
 * directory); allocation failures; and the real MNIST and ResNet-20 files.
 */
#include "config.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "safetensors.h"
#include "tensor.h"

static char *dir;
static char path[512];

/* The small file's data buffer. */
static const float w_f32[6] = {1, 2, 3, -4, 5.5f, 6};   /* "w" F32 [2, 3] at [0, 24) */
static const uint16_t h_f16[4] = {0x3c00, 0, 0xbc00, 0x7bff}; /* "h" F16 [4] at [24, 32) */
static const int64_t n_i64[2] = {7, -7};                /* "n" I64 [2] at [32, 48) skipped */
static const int32_t i_i32[3] = {1, -1, 100};           /* "i" I32 [3] at [48, 60) */
static const float s_f32 = 0.5f;                        /* "s" F32 [] at [60, 64) */
static const int8_t b_i8[5] = {-1, 2, -3, 4, -5};        /* "b" I8 [5] at [64, 69) */
static const uint8_t u_u8[3] = {250, 0, 9};             /* "u" U8 [3] at [69, 72) */
/* "e" U8 [0, 4] at [72, 72); "x" X9 [3] at [72, 75) unknown dtype, skipped;
 * "last" BF16 [2] at [76, 80) ends the file. */
static const uint16_t last_bf16[2] = {0x3f80, 0x4000};

static const char small_json[] =
	"{\"__metadata__\":{\"format\":\"pt\",\"note\":\"small\"},"
	"\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
	"\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
	"\"n\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[32,48]},"
	"\"i\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[48,60]},"
	"\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[60,64]},"
	"\"b\":{\"dtype\":\"I8\",\"shape\":[5],\"data_offsets\":[64,69]},"
	"\"u\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[69,72]},"
	"\"e\":{\"dtype\":\"U8\",\"shape\":[0,4],\"data_offsets\":[72,72]},"
	"\"x\":{\"dtype\":\"X9\",\"shape\":[3],\"data_offsets\":[72,75]},"
	"\"last\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[76,80]}}";

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
gb_u64(struct gb *b, uint64_t v)
{
	unsigned char x[8];
	int i;

	for (i = 0; i < 8; i++)
		x[i] = (unsigned char)(v >> (8 * i));
	gb_raw(b, x, 8);
}

/* Length, header JSON padded with spaces to a multiple of pad, then data. */
static void
build(struct gb *b, const char *json, size_t pad, const void *data, size_t n)
{
	size_t len = strlen(json), padded = (len + pad - 1) / pad * pad;

	b->n = 0;
	gb_u64(b, padded);
	gb_raw(b, json, len);
	while (len++ < padded)
		gb_raw(b, " ", 1);
	gb_raw(b, data, n);
}

static void
small_data(unsigned char *d)
{
	memset(d, 0, 80);
	memcpy(d, w_f32, 24);
	memcpy(d + 24, h_f16, 8);
	memcpy(d + 32, n_i64, 16);
	memcpy(d + 48, i_i32, 12);
	memcpy(d + 60, &s_f32, 4);
	memcpy(d + 64, b_i8, 5);
	memcpy(d + 69, u_u8, 3);
	memcpy(d + 72, "xyz", 3);
	memcpy(d + 76, last_bf16, 4);
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

static void
test_small(void **state)
{
	unsigned char data[80];
	struct nesa_safetensors *st;
	struct nesa_err err;
	struct nesa_tensor *t;
	struct gb b = {0};

	(void)state;
	small_data(data);
	build(&b, small_json, 8, data, sizeof data);
	assert_int_equal(nesa_safetensors_open(write_file("small.safetensors", b.p, b.n), &st, &err),
	                 NESA_OK);
	assert_int_equal(st->n_files, 1);
	assert_int_equal(st->tensors.n, 8);
	/* File order is kept. */
	assert_string_equal(st->tensors.items[0].name, "w");
	assert_string_equal(st->tensors.items[7].name, "last");
	t = nesa_tset_find(&st->tensors, "w");
	assert_int_equal(t->dtype, NESA_F32);
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->shape[0], 2);
	assert_int_equal(t->shape[1], 3);
	assert_memory_equal(t->data, w_f32, sizeof w_f32);
	assert_true(t->flags & NESA_TENSOR_READONLY);
	t = nesa_tset_find(&st->tensors, "h");
	assert_int_equal(t->dtype, NESA_F16);
	assert_memory_equal(t->data, h_f16, sizeof h_f16);
	t = nesa_tset_find(&st->tensors, "i");
	assert_int_equal(t->dtype, NESA_I32);
	assert_memory_equal(t->data, i_i32, sizeof i_i32);
	t = nesa_tset_find(&st->tensors, "s");
	assert_int_equal(t->ndim, 0);
	assert_true(*(const float *)t->data == 0.5f);
	assert_memory_equal(nesa_tset_find(&st->tensors, "b")->data, b_i8, sizeof b_i8);
	t = nesa_tset_find(&st->tensors, "u");
	assert_int_equal(t->dtype, NESA_U8);
	assert_memory_equal(t->data, u_u8, sizeof u_u8);
	t = nesa_tset_find(&st->tensors, "e");
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->shape[0], 0);
	assert_int_equal(t->nbytes, 0);
	t = nesa_tset_find(&st->tensors, "last");
	assert_int_equal(t->dtype, NESA_BF16);
	assert_memory_equal(t->data, last_bf16, sizeof last_bf16);
	assert_int_equal(st->tensors.n_allocs, 0);

	assert_int_equal(st->n_skipped, 2);
	assert_string_equal(st->skipped[0].name, "n");
	assert_string_equal(st->skipped[0].dtype, "I64");
	assert_int_equal(st->skipped[0].ndim, 1);
	assert_int_equal(st->skipped[0].shape[0], 2);
	assert_string_equal(st->skipped[1].dtype, "X9");
	assert_ptr_equal(nesa_safetensors_find_skipped(st, "x"), &st->skipped[1]);
	assert_null(nesa_safetensors_find_skipped(st, "w"));
	assert_string_equal(json_string_value(json_object_get(st->metadata, "format")), "pt");
	assert_int_equal(json_object_size(st->metadata), 2);
	nesa_safetensors_free(st);
	nesa_safetensors_free(NULL);
	free(b.p);
}

static void
test_truncation(void **state)
{
	unsigned char data[80];
	struct nesa_safetensors *st;
	struct nesa_err err;
	struct gb b = {0};
	size_t len;

	(void)state;
	small_data(data);
	build(&b, small_json, 8, data, sizeof data);
	for (len = 0; len < b.n; len++) {
		nesa_err_clear(&err);
		assert_int_equal(nesa_safetensors_open(write_file("cut.safetensors", b.p, len), &st, &err),
		                 NESA_EFORMAT);
		assert_null(st);
		assert_non_null(strstr(err.msg, "cannot read '"));
		assert_non_null(strstr(err.msg, "cut.safetensors'"));
	}
	free(b.p);
}

static void
expect(const struct gb *b, enum nesa_status want, const char *msg)
{
	struct nesa_safetensors *st;
	struct nesa_err err;

	nesa_err_clear(&err);
	assert_int_equal(nesa_safetensors_open(write_file("bad.safetensors", b->p, b->n), &st, &err),
	                 want);
	assert_null(st);
	if (strstr(err.msg, msg) == NULL)
		fail_msg("expected '%s' in: %s", msg, err.msg);
}

/* One-tensor file: the entry JSON and n bytes of zero data. */
static void
expect_entry(const char *entry, size_t n, enum nesa_status want, const char *msg)
{
	static const unsigned char zeros[256];
	char json[512];
	struct gb b = {0};

	snprintf(json, sizeof json, "{\"t\":%s}", entry);
	build(&b, json, 8, zeros, n);
	expect(&b, want, msg);
	free(b.p);
}

static void
test_hostile(void **state)
{
	static const unsigned char zeros[64];
	struct nesa_safetensors *st;
	struct nesa_err err;
	struct gb b = {0};

	(void)state;
	/* Header lengths: absurd, past the end, a file too short to hold one. */
	gb_u64(&b, UINT64_C(1) << 63);
	gb_raw(&b, "{}", 2);
	expect(&b, NESA_ELIMIT, "header length 9223372036854775808 exceeds the limit of 104857600 bytes");
	b.n = 0;
	gb_u64(&b, 1000);
	gb_raw(&b, "{}", 2);
	expect(&b, NESA_EFORMAT, "header length 1000 extends past end of file (10 bytes)");
	b.n = 0;
	gb_raw(&b, "\x02\0\0", 3);
	expect(&b, NESA_EFORMAT, "file of 3 bytes is too short");
	snprintf(path, sizeof path, "%s/missing.safetensors", dir);
	assert_int_equal(nesa_safetensors_open(path, &st, &err), NESA_ENOENT);

	/* The header must be a JSON object of objects, without duplicate keys. */
	build(&b, "[1, 2]", 1, NULL, 0);
	expect(&b, NESA_EFORMAT, "header is not a JSON object");
	build(&b, "{\"a\":", 1, NULL, 0);
	expect(&b, NESA_EFORMAT, "invalid JSON header");
	build(&b, "{\"a\":{},\"a\":{}}", 1, NULL, 0);
	expect(&b, NESA_EFORMAT, "invalid JSON header: duplicate object key");
	build(&b, "{\"__metadata__\":[]}", 1, NULL, 0);
	expect(&b, NESA_EFORMAT, "__metadata__ is not a JSON object");
	build(&b, "{\"t\":3}", 1, NULL, 0);
	expect(&b, NESA_EFORMAT, "tensor 't' is not a JSON object");
	free(b.p);

	expect_entry("{\"shape\":[1],\"data_offsets\":[0,4]}", 4, NESA_EFORMAT,
	             "tensor 't' needs a string dtype, a shape array and two data_offsets");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}", 8, NESA_EFORMAT,
	             "two data_offsets");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}", 4, NESA_EFORMAT,
	             "tensor 't' has invalid data_offsets");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}", 4, NESA_ESHAPE,
	             "tensor 't' has an invalid dimension 0");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}", 4, NESA_ESHAPE,
	             "invalid dimension 1");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}", 4, NESA_ESHAPE,
	             "tensor 't' has 5 dimensions (at most 4)");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}", 4,
	             NESA_ESHAPE, "tensor 't' is too large");
	expect_entry("{\"dtype\":\"I64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}", 4,
	             NESA_ESHAPE, "tensor 't' is too large");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[3,3],\"data_offsets\":[0,100]}", 100, NESA_EFORMAT,
	             "tensor 't' data_offsets [0, 100) do not match its F32 shape [3, 3] (36 bytes)");
	expect_entry("{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[0,16]}", 16, NESA_EFORMAT,
	             "do not match its I64 shape [3] (24 bytes)");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}", 8, NESA_EFORMAT,
	             "tensor 't' data_offsets [8, 0) end before they begin");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[3,3],\"data_offsets\":[0,36]}", 20, NESA_EFORMAT,
	             "tensor 't' data_offsets [0, 36) extend past the end of the data (20 bytes)");
	expect_entry("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}", 4,
	             NESA_EFORMAT, "invalid JSON header"); /* jansson: too big an integer */

	/* Overlaps, including with a skipped tensor of unknown size. */
	b.p = NULL;
	b.cap = 0;
	build(&b,
	      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
	      "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[12,28]}}",
	      8, zeros, 28);
	expect(&b, NESA_EFORMAT, "tensors 'a' [0, 16) and 'b' [12, 28) overlap");
	build(&b,
	      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[4,20]},"
	      "\"q\":{\"dtype\":\"Q9\",\"shape\":[4],\"data_offsets\":[0,8]}}",
	      8, zeros, 20);
	expect(&b, NESA_EFORMAT, "tensors 'q' [0, 8) and 'a' [4, 20) overlap");
	free(b.p);
}

/* An unpadded header puts f32 data at an odd address: the tensor is copied. */
static void
test_unaligned(void **state)
{
	const float v[2] = {3.5f, -1.25f};
	struct nesa_safetensors *st;
	struct nesa_err err;
	struct nesa_tensor *t;
	struct gb b = {0};
	const char *json = "{\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

	(void)state;
	assert_int_not_equal(strlen(json) % 4, 0);
	build(&b, json, 1, v, sizeof v);
	assert_int_equal(nesa_safetensors_open(write_file("odd.safetensors", b.p, b.n), &st, &err),
	                 NESA_OK);
	t = nesa_tset_find(&st->tensors, "v");
	assert_int_equal((uintptr_t)t->data % 4, 0);
	assert_memory_equal(t->data, v, sizeof v);
	assert_int_equal(st->tensors.n_allocs, 1);
	nesa_safetensors_free(st);
	free(b.p);
}

/* Shards a (x, y) and b (z, k I64) in a subdirectory, with an index. */
static const char *
make_shards(const char *sub, const char *index)
{
	static char d[600];
	const float x[2] = {1, 2}, y[1] = {3}, z[3] = {4, 5, 6};
	unsigned char buf[32];
	char name[700];
	struct gb b = {0};

	snprintf(d, sizeof d, "%s/%s", dir, sub);
	assert_int_equal(mkdir(d, 0700), 0);
	memcpy(buf, x, 8);
	memcpy(buf + 8, y, 4);
	build(&b,
	      "{\"__metadata__\":{\"format\":\"pt\"},"
	      "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	      "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
	      8, buf, 12);
	snprintf(name, sizeof name, "%s/a.safetensors", sub);
	write_file(name, b.p, b.n);
	memcpy(buf, z, 12);
	memset(buf + 12, 0, 8);
	build(&b,
	      "{\"z\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
	      "\"k\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[12,20]}}",
	      8, buf, 20);
	snprintf(name, sizeof name, "%s/b.safetensors", sub);
	write_file(name, b.p, b.n);
	free(b.p);
	if (index != NULL) {
		snprintf(name, sizeof name, "%s/model.safetensors.index.json", sub);
		write_file(name, index, strlen(index));
	}
	return d;
}

static const char good_index[] =
	"{\"metadata\":{\"total_size\":32},\"weight_map\":{\"x\":\"a.safetensors\","
	"\"y\":\"a.safetensors\",\"z\":\"b.safetensors\",\"k\":\"b.safetensors\"}}";

static void
check_shards(const struct nesa_safetensors *st)
{
	struct nesa_tset *ts = (struct nesa_tset *)&st->tensors;

	assert_int_equal(st->n_files, 2);
	assert_int_equal(ts->n, 3);
	assert_int_equal(ts->n_maps, 2);
	assert_true(((const float *)nesa_tset_find(ts, "y")->data)[0] == 3.0f);
	assert_true(((const float *)nesa_tset_find(ts, "z")->data)[2] == 6.0f);
	assert_int_equal(st->n_skipped, 1);
	assert_string_equal(st->skipped[0].name, "k");
	assert_string_equal(json_string_value(json_object_get(st->metadata, "format")), "pt");
}

static void
test_index(void **state)
{
	struct nesa_safetensors *st;
	struct nesa_err err;
	const char *d;
	char p[700];

	(void)state;
	d = make_shards("idx", good_index);
	/* Through the index file, and through the directory holding it. */
	snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
	assert_int_equal(nesa_safetensors_open(p, &st, &err), NESA_OK);
	check_shards(st);
	assert_int_equal(json_integer_value(json_object_get(st->metadata, "total_size")), 32);
	nesa_safetensors_free(st);
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_OK);
	check_shards(st);
	nesa_safetensors_free(st);

	/* A directory without an index: every shard, in name order. */
	d = make_shards("noidx", NULL);
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_OK);
	check_shards(st);
	assert_string_equal(st->tensors.items[0].name, "x");
	nesa_safetensors_free(st);

	/* Hostile or inconsistent indexes. */
	d = make_shards("bad1", "{\"weight_map\":{\"x\":\"../a.safetensors\"}}");
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg,
	                       "weight_map entry 'x' is not a file name in the index's directory"));
	d = make_shards("bad2", "{\"weight_map\":{\"x\":\"a.safetensors\",\"q\":\"a.safetensors\"}}");
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "tensor 'q' is missing from shard 'a.safetensors'"));
	d = make_shards("bad3", "{\"weight_map\":{\"x\":\"b.safetensors\",\"z\":\"b.safetensors\"}}");
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "tensor 'x' is missing from shard 'b.safetensors'"));
	d = make_shards("bad4", "{\"weight_map\":{\"x\":\"b.safetensors\",\"y\":\"a.safetensors\"}}");
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "a.safetensors': tensor 'x' is in this shard but the index "
	                                "maps it to 'b.safetensors'"));
	d = make_shards("bad5", "{\"metadata\":{}}");
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "index has no weight_map object"));
	d = make_shards("bad6", "{\"weight_map\":{\"x\":\"gone.safetensors\"}}");
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_ENOENT);
	assert_non_null(strstr(err.msg, "gone.safetensors"));
	d = make_shards("bad7", "{\"weight_map\":");
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "invalid JSON index"));

	/* Duplicate names across shards; an empty directory. */
	d = make_shards("dup", NULL);
	snprintf(p, sizeof p, "dup/c.safetensors");
	{
		const float one = 1;
		struct gb b = {0};

		build(&b, "{\"k\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, &one, 4);
		write_file(p, b.p, b.n);
		free(b.p);
	}
	assert_int_equal(nesa_safetensors_open(d, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "c.safetensors': duplicate tensor name 'k'"));
	snprintf(p, sizeof p, "%s/empty", dir);
	assert_int_equal(mkdir(p, 0700), 0);
	assert_int_equal(nesa_safetensors_open(p, &st, &err), NESA_ENOENT);
	assert_non_null(strstr(err.msg, "no model.safetensors.index.json or *.safetensors files"));
}

static void
test_alloc_failures(void **state)
{
	struct nesa_safetensors *st;
	struct nesa_err err;
	const char *paths[3];
	char idx[700], sub[700];
	unsigned char data[80];
	struct gb b = {0};
	long n;
	int k;

	(void)state;
	small_data(data);
	build(&b, small_json, 8, data, sizeof data);
	paths[0] = nesa_strdup(write_file("oom.safetensors", b.p, b.n));
	snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", make_shards("oom", good_index));
	paths[1] = idx;
	/* A directory without an index exercises the directory listing. */
	snprintf(sub, sizeof sub, "%s", make_shards("oomdir", NULL));
	paths[2] = sub;
	for (k = 0; k < 3; k++) {
		for (n = 1;; n++) {
			enum nesa_status s;

			test_faults_arm(n);
			s = nesa_safetensors_open(paths[k], &st, &err);
			test_faults_disarm();
			if (s == NESA_OK)
				break;
			assert_int_equal(s, NESA_ENOMEM);
			assert_null(st);
		}
		assert_true(n > 10);
		nesa_safetensors_free(st);
	}
	nesa_free((void *)paths[0]);
	free(b.p);
}

/* Names and shapes from mnist_cnn_jsgrad/SOURCE.md. */
static void
test_mnist(void **state)
{
	static const struct {
		const char *name;
		int ndim;
		int64_t shape[4];
	} want[] = {
		{"layers.0.weight", 4, {32, 1, 5, 5}}, {"layers.0.bias", 1, {32}},
		{"layers.2.weight", 4, {32, 32, 5, 5}}, {"layers.4.running_var", 1, {32}},
		{"layers.6.weight", 4, {64, 32, 3, 3}}, {"layers.8.weight", 4, {64, 64, 3, 3}},
		{"layers.10.running_mean", 1, {64}}, {"layers.13.weight", 2, {10, 576}},
		{"layers.13.bias", 1, {10}},
	};
	char buf[512];
	const char *p = data_path("mnist_cnn_jsgrad/mnist.safetensors", buf, sizeof buf);
	struct nesa_safetensors *st;
	struct nesa_err err;
	size_t i;

	(void)state;
	if (p == NULL) {
		print_message("mnist.safetensors not found under $NESA_DATA: skipping\n");
		skip();
	}
	assert_int_equal(nesa_safetensors_open(p, &st, &err), NESA_OK);
	assert_int_equal(st->tensors.n, 18);
	for (i = 0; i < sizeof want / sizeof want[0]; i++) {
		const struct nesa_tensor *t = nesa_tset_find(&st->tensors, want[i].name);

		assert_non_null(t);
		assert_int_equal(t->dtype, NESA_F32);
		assert_int_equal(t->ndim, want[i].ndim);
		assert_memory_equal(t->shape, want[i].shape, (size_t)want[i].ndim * sizeof(int64_t));
		assert_true(t->flags & NESA_TENSOR_READONLY);
	}
	/* num_batches_tracked is I64[1]: listed, not loaded. */
	assert_int_equal(st->n_skipped, 2);
	assert_string_equal(st->skipped[0].name, "layers.4.num_batches_tracked");
	assert_string_equal(st->skipped[0].dtype, "I64");
	assert_int_equal(st->skipped[0].ndim, 1);
	assert_int_equal(st->skipped[0].shape[0], 1);
	assert_non_null(nesa_safetensors_find_skipped(st, "layers.10.num_batches_tracked"));
	nesa_safetensors_free(st);
}

/* resnet20 from cifar10_resnet_akamaster/SOURCE.md; both files as a directory. */
static void
test_resnet20(void **state)
{
	char buf[512];
	const char *p = data_path("cifar10_resnet_akamaster/resnet20.safetensors", buf, sizeof buf);
	struct nesa_safetensors *st;
	struct nesa_err err;
	const struct nesa_tensor *t;
	char name[64];
	int l, blk;

	(void)state;
	if (p == NULL) {
		print_message("resnet20.safetensors not found under $NESA_DATA: skipping\n");
		skip();
	}
	assert_int_equal(nesa_safetensors_open(p, &st, &err), NESA_OK);
	/* conv1 + bn1 (4), 9 blocks x (2 convs + 2 bns x 4), linear (2); this
	 * derived file carries no num_batches_tracked, so nothing is skipped. */
	assert_int_equal(st->tensors.n, 97);
	assert_int_equal(st->n_skipped, 0);
	t = nesa_tset_find(&st->tensors, "conv1.weight");
	assert_int_equal(t->ndim, 4);
	assert_int_equal(t->shape[0], 16);
	assert_int_equal(t->shape[1], 3);
	for (l = 1; l <= 3; l++)
		for (blk = 0; blk < 3; blk++) {
			int planes = 16 << (l - 1), in = blk == 0 && l > 1 ? planes / 2 : planes;

			snprintf(name, sizeof name, "layer%d.%d.conv1.weight", l, blk);
			t = nesa_tset_find(&st->tensors, name);
			assert_non_null(t);
			assert_int_equal(t->shape[0], planes);
			assert_int_equal(t->shape[1], in);
			assert_int_equal(t->shape[2], 3);
			snprintf(name, sizeof name, "layer%d.%d.bn2.running_var", l, blk);
			assert_non_null(nesa_tset_find(&st->tensors, name));
		}
	t = nesa_tset_find(&st->tensors, "linear.weight");
	assert_int_equal(t->shape[0], 10);
	assert_int_equal(t->shape[1], 64);
	assert_non_null(json_object_get(st->metadata, "best_prec1"));
	nesa_safetensors_free(st);

	/* The directory holds resnet20 and resnet56 with the same names. */
	*strrchr(buf, '/') = '\0';
	assert_int_equal(nesa_safetensors_open(buf, &st, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "resnet56.safetensors': duplicate tensor name"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_small),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_unaligned),
		cmocka_unit_test(test_index),
		cmocka_unit_test(test_alloc_failures),
		cmocka_unit_test(test_mnist),
		cmocka_unit_test(test_resnet20),
	};

	return cmocka_run_group_tests_name("safetensors", tests, setup, teardown);
}
