/* SPDX-License-Identifier: MIT */
/*
 * GGUF reader; see gguf.h.  The spec is ggml's docs/gguf.md (with the
 * layout summary at the top of ggml's include/gguf.h).  Version 2 and 3
 * files share one little-endian layout:
 *
 *   "GGUF"  u32 version  u64 n_tensors  u64 n_kv
 *   n_kv x { string key, u32 value type, value }
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims] (innermost first),
 *                 u32 ggml type, u64 offset (relative to the data section) }
 *   zero padding to the alignment (general.alignment, u32, default 32)
 *   data section: each tensor at an aligned offset
 *
 * A string is a u64 byte length then the bytes (no NUL).  A value is a
 * fixed-width little-endian scalar, a string, or an array: u32 element type,
 * u64 count, then the elements (which may be arrays themselves).
 *
 * Every read goes through a bounds-checked cursor over the mapping.  Counts
 * are checked against both a fixed limit and the bytes left in the file
 * before anything is allocated for them, so a short hostile file cannot make
 * the reader allocate more than a small multiple of its own size.
 */
#include "config.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "gguf.h"
#include "quant.h"
#include "xio.h"

/* GGUF value types (gguf_type in ggml). */
enum {
	GT_U8 = 0,
	GT_I8 = 1,
	GT_U16 = 2,
	GT_I16 = 3,
	GT_U32 = 4,
	GT_I32 = 5,
	GT_F32 = 6,
	GT_BOOL = 7,
	GT_STRING = 8,
	GT_ARRAY = 9,
	GT_U64 = 10,
	GT_I64 = 11,
	GT_F64 = 12,
	GT_COUNT
};

/* Name and encoded size of each value type; 0 = variable (string, array). */
static const struct {
	const char *name;
	unsigned size;
} vtypes[GT_COUNT] = {
	[GT_U8] = {"u8", 1},   [GT_I8] = {"i8", 1},         [GT_U16] = {"u16", 2},
	[GT_I16] = {"i16", 2}, [GT_U32] = {"u32", 4},       [GT_I32] = {"i32", 4},
	[GT_F32] = {"f32", 4}, [GT_BOOL] = {"bool", 1},     [GT_STRING] = {"string", 0},
	[GT_ARRAY] = {"array", 0}, [GT_U64] = {"u64", 8},   [GT_I64] = {"i64", 8},
	[GT_F64] = {"f64", 8},
};

/* Smallest encoding of one array element of each type: bounds the count. */
static uint64_t
min_elem_bytes(uint32_t type)
{
	if (type == GT_STRING)
		return 8;      /* u64 length, empty string */
	if (type == GT_ARRAY)
		return 4 + 8;  /* element type and count of an empty array */
	return vtypes[type].size;
}

/*
 * Total scalar values accepted across all metadata.  JSON values cost ~50
 * bytes each, so a file of u8 arrays could otherwise make the reader use
 * 50 times the file size; real vocabularies stay far below (256k tokens
 * times three arrays plus merges is about 1M).
 */
#define MAX_VALUES (UINT64_C(1) << 23)

/*
 * ggml tensor types: lowercase name (as ggml's type_name), elements per
 * block, bytes per block, and the nesa dtype when nesa loads the type.  Ids
 * 4, 5, 31-33 and 36-38 were removed from ggml and stay unnamed.  Knowing
 * the sizes of types nesa cannot run still matters: a skipped tensor's
 * bytes are bounds- and overlap-checked like any other, and an importer can
 * report exactly what it found.
 */
struct ggml_type {
	const char *name;
	uint32_t block;
	uint32_t bytes;
	bool load;
	int dtype;
};

static const struct ggml_type ggml_types[] = {
	[0] = {"f32", 1, 4, true, NESA_F32},
	[1] = {"f16", 1, 2, true, NESA_F16},
	[2] = {"q4_0", 32, 18, true, NESA_Q4_0},
	[3] = {"q4_1", 32, 20, false, 0},
	[6] = {"q5_0", 32, 22, false, 0},
	[7] = {"q5_1", 32, 24, false, 0},
	[8] = {"q8_0", 32, 34, true, NESA_Q8_0},
	[9] = {"q8_1", 32, 36, false, 0},
	[10] = {"q2_K", 256, 84, false, 0},
	[11] = {"q3_K", 256, 110, false, 0},
	[12] = {"q4_K", 256, 144, false, 0},
	[13] = {"q5_K", 256, 176, false, 0},
	[14] = {"q6_K", 256, 210, false, 0},
	[15] = {"q8_K", 256, 292, false, 0},
	[16] = {"iq2_xxs", 256, 66, false, 0},
	[17] = {"iq2_xs", 256, 74, false, 0},
	[18] = {"iq3_xxs", 256, 98, false, 0},
	[19] = {"iq1_s", 256, 50, false, 0},
	[20] = {"iq4_nl", 32, 18, false, 0},
	[21] = {"iq3_s", 256, 110, false, 0},
	[22] = {"iq2_s", 256, 82, false, 0},
	[23] = {"iq4_xs", 256, 136, false, 0},
	[24] = {"i8", 1, 1, true, NESA_I8},
	[25] = {"i16", 1, 2, false, 0},
	[26] = {"i32", 1, 4, true, NESA_I32},
	[27] = {"i64", 1, 8, false, 0},
	[28] = {"f64", 1, 8, false, 0},
	[29] = {"iq1_m", 256, 56, false, 0},
	[30] = {"bf16", 1, 2, true, NESA_BF16},
	[34] = {"tq1_0", 256, 54, false, 0},
	[35] = {"tq2_0", 256, 66, false, 0},
	[39] = {"mxfp4", 32, 17, false, 0},
};

static const struct ggml_type *
ggml_type(uint32_t id)
{
	if (id >= sizeof ggml_types / sizeof ggml_types[0] || ggml_types[id].name == NULL)
		return NULL;
	return &ggml_types[id];
}

const char *
nesa_gguf_type_name(uint32_t id)
{
	const struct ggml_type *t = ggml_type(id);

	return t != NULL ? t->name : "unknown";
}

const char *
nesa_gguf_supported_types(void)
{
	return "f32, f16, bf16, q8_0, q4_0, i8, i32";
}

/* Little-endian decoding that does not depend on the host's byte order. */
static uint16_t
le16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
le64(const unsigned char *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* A bounds-checked read position in the mapped file. */
struct cur {
	const unsigned char *base;
	uint64_t size, pos;
	const char *path;
	struct nesa_err *err;
	uint64_t n_values; /* JSON values made so far (MAX_VALUES) */
};

/* Points *p at the next n bytes, or fails naming what was being read. */
static enum nesa_status
take(struct cur *c, uint64_t n, const char *what, const unsigned char **p)
{
	*p = NULL;
	if (n > c->size - c->pos)
		return nesa_err_set(c->err, NESA_EFORMAT,
		                    "cannot read '%s': unexpected end of file at offset %llu reading %s",
		                    c->path, (unsigned long long)c->pos, what);
	*p = c->base + c->pos;
	c->pos += n;
	return NESA_OK;
}

static enum nesa_status
rd_u32(struct cur *c, const char *what, uint32_t *v)
{
	const unsigned char *p;
	enum nesa_status s = take(c, 4, what, &p);

	if (s == NESA_OK)
		*v = le32(p);
	return s;
}

static enum nesa_status
rd_u64(struct cur *c, const char *what, uint64_t *v)
{
	const unsigned char *p;
	enum nesa_status s = take(c, 8, what, &p);

	if (s == NESA_OK)
		*v = le64(p);
	return s;
}

/* A length-prefixed string of at most max bytes; *p points into the map. */
static enum nesa_status
rd_str(struct cur *c, const char *what, uint64_t max, const char **p, uint64_t *len)
{
	const unsigned char *b;
	uint64_t at = c->pos;
	enum nesa_status s = rd_u64(c, what, len);

	if (s != NESA_OK)
		return s;
	if (*len > max)
		return nesa_err_set(c->err, NESA_EFORMAT,
		                    "cannot read '%s': %s at offset %llu is %llu bytes long (at most %llu)",
		                    c->path, what, (unsigned long long)at, (unsigned long long)*len,
		                    (unsigned long long)max);
	if (*len > c->size - c->pos)
		return nesa_err_set(c->err, NESA_EFORMAT,
		                    "cannot read '%s': %s at offset %llu has length %llu, past the end of "
		                    "the file (%llu bytes)",
		                    c->path, what, (unsigned long long)at, (unsigned long long)*len,
		                    (unsigned long long)c->size);
	s = take(c, *len, what, &b);
	*p = (const char *)b;
	return s;
}

static enum nesa_status
oom(struct cur *c)
{
	return nesa_err_set(c->err, NESA_ENOMEM, "cannot read '%s': out of memory", c->path);
}

/*
 * Reads one value of the given type into a new JSON value *out and writes
 * its type name ("array[f32]") into tname.  key is for messages.
 */
static enum nesa_status
parse_value(struct cur *c, uint32_t type, int depth, const char *key, json_t **out, char *tname,
            size_t tsize)
{
	const unsigned char *p;
	enum nesa_status s;
	uint64_t u;
	json_t *v = NULL;
	char what[64];

	*out = NULL;
	if (type >= GT_COUNT)
		return nesa_err_set(c->err, NESA_EFORMAT,
		                    "cannot read '%s': key '%s' has unknown value type %u at offset %llu",
		                    c->path, key, type, (unsigned long long)(c->pos - 4));
	if (++c->n_values > MAX_VALUES)
		return nesa_err_set(c->err, NESA_ELIMIT,
		                    "cannot read '%s': more than %llu metadata values (at key '%s')",
		                    c->path, (unsigned long long)MAX_VALUES, key);
	snprintf(tname, tsize, "%s", vtypes[type].name);
	snprintf(what, sizeof what, "value of key '%.40s'", key);
	if (type == GT_STRING) {
		const char *str;

		s = rd_str(c, what, NESA_GGUF_MAX_STRING, &str, &u);
		if (s != NESA_OK)
			return s;
		/* Bytes as stored: vocabularies may hold partial UTF-8 sequences. */
		v = json_stringn_nocheck(str, (size_t)u);
	} else if (type == GT_ARRAY) {
		uint32_t et;
		uint64_t n, i;
		char sub[96];

		if (depth >= NESA_GGUF_MAX_DEPTH)
			return nesa_err_set(c->err, NESA_EFORMAT,
			                    "cannot read '%s': key '%s' nests arrays deeper than %d levels",
			                    c->path, key, NESA_GGUF_MAX_DEPTH);
		if ((s = rd_u32(c, what, &et)) != NESA_OK || (s = rd_u64(c, what, &n)) != NESA_OK)
			return s;
		if (et >= GT_COUNT)
			return nesa_err_set(c->err, NESA_EFORMAT,
			                    "cannot read '%s': key '%s' is an array of unknown value type %u",
			                    c->path, key, et);
		if (n > (c->size - c->pos) / min_elem_bytes(et))
			return nesa_err_set(c->err, NESA_EFORMAT,
			                    "cannot read '%s': array '%s' claims %llu elements of type %s but "
			                    "only %llu bytes remain",
			                    c->path, key, (unsigned long long)n, vtypes[et].name,
			                    (unsigned long long)(c->size - c->pos));
		v = json_array();
		if (v == NULL)
			return oom(c);
		/* An empty array of arrays has no element to name its inner type. */
		snprintf(sub, sizeof sub, "%s", vtypes[et].name);
		for (i = 0; i < n; i++) {
			json_t *e;
			char etn[96];

			s = parse_value(c, et, depth + 1, key, &e, etn, sizeof etn);
			if (s != NESA_OK) {
				json_decref(v);
				return s;
			}
			if (i == 0)
				memcpy(sub, etn, sizeof sub);
			if (json_array_append_new(v, e) != 0) {
				json_decref(v);
				return oom(c);
			}
		}
		snprintf(tname, tsize, "array[%s]", sub);
		*out = v;
		return NESA_OK;
	} else {
		s = take(c, vtypes[type].size, what, &p);
		if (s != NESA_OK)
			return s;
		/* Signed types are sign-extended through their C type. */
		switch (type) {
		case GT_U8: v = json_integer(p[0]); break;
		case GT_I8: v = json_integer((int8_t)p[0]); break;
		case GT_U16: v = json_integer(le16(p)); break;
		case GT_I16: v = json_integer((int16_t)le16(p)); break;
		case GT_U32: v = json_integer(le32(p)); break;
		case GT_I32: v = json_integer((int32_t)le32(p)); break;
		case GT_I64: v = json_integer((json_int_t)(int64_t)le64(p)); break;
		case GT_U64:
			u = le64(p);
			/* JSON integers are signed 64-bit; larger values keep their magnitude. */
			v = u <= INT64_MAX ? json_integer((json_int_t)u) : json_real((double)u);
			break;
		case GT_BOOL:
			if (p[0] > 1)
				return nesa_err_set(c->err, NESA_EFORMAT,
				                    "cannot read '%s': key '%s' has invalid bool value %u",
				                    c->path, key, p[0]);
			v = json_boolean(p[0]);
			break;
		case GT_F32: {
			uint32_t b = le32(p);
			float f;

			memcpy(&f, &b, sizeof f);
			/* jansson refuses NaN and infinities: JSON cannot express them. */
			v = isfinite(f) ? json_real(f) : json_null();
			break;
		}
		default: { /* GT_F64 */
			uint64_t b = le64(p);
			double d;

			memcpy(&d, &b, sizeof d);
			v = isfinite(d) ? json_real(d) : json_null();
			break;
		}
		}
	}
	if (v == NULL)
		return oom(c);
	*out = v;
	return NESA_OK;
}

/*
 * Reads n_kv key-value pairs into g->kv and g->kv_types.  Keys are used
 * with their lengths, straight from the mapping; messages quote at most the
 * first 64 bytes of a key.
 */
static enum nesa_status
parse_kv(struct cur *c, struct nesa_gguf *g, uint64_t n_kv)
{
	uint64_t i;

	for (i = 0; i < n_kv; i++) {
		char what[64], kname[72], tname[96];
		const char *k;
		uint64_t len;
		uint32_t type;
		enum nesa_status s;
		json_t *v, *tn;

		snprintf(what, sizeof what, "key of metadata pair %llu", (unsigned long long)i);
		s = rd_str(c, what, NESA_GGUF_MAX_KEY, &k, &len);
		if (s != NESA_OK)
			return s;
		/* Keys are ASCII by the spec; a NUL would make them ambiguous as C strings. */
		if (memchr(k, '\0', (size_t)len) != NULL)
			return nesa_err_set(c->err, NESA_EFORMAT,
			                    "cannot read '%s': %s contains a NUL byte", c->path, what);
		snprintf(kname, sizeof kname, "%.*s%s", (int)(len < 64 ? len : 64), k,
		         len > 64 ? "..." : "");
		if (json_object_getn(g->kv, k, (size_t)len) != NULL)
			return nesa_err_set(c->err, NESA_EFORMAT, "cannot read '%s': duplicate key '%s'",
			                    c->path, kname);
		snprintf(what, sizeof what, "type of key '%.40s'", kname);
		if ((s = rd_u32(c, what, &type)) != NESA_OK)
			return s;
		if ((s = parse_value(c, type, 0, kname, &v, tname, sizeof tname)) != NESA_OK)
			return s;
		if (json_object_setn_new_nocheck(g->kv, k, (size_t)len, v) != 0)
			return oom(c);
		tn = json_string_nocheck(tname);
		if (tn == NULL || json_object_setn_new_nocheck(g->kv_types, k, (size_t)len, tn) != 0)
			return oom(c);
	}
	return NESA_OK;
}

/* general.alignment, if present, must be a u32 power of two. */
static enum nesa_status
get_alignment(struct cur *c, struct nesa_gguf *g)
{
	json_t *v = json_object_get(g->kv, "general.alignment");
	const char *type;
	json_int_t a;

	g->alignment = NESA_GGUF_DEFAULT_ALIGNMENT;
	if (v == NULL)
		return NESA_OK;
	type = json_string_value(json_object_get(g->kv_types, "general.alignment"));
	a = json_integer_value(v);
	if (type == NULL || strcmp(type, "u32") != 0 || a <= 0 || (a & (a - 1)) != 0)
		return nesa_err_set(c->err, NESA_EFORMAT,
		                    "cannot read '%s': general.alignment must be a u32 power of two "
		                    "(got %s %lld)",
		                    c->path, type != NULL ? type : "?", (long long)a);
	g->alignment = (uint32_t)a;
	return NESA_OK;
}

/* One tensor info record, pointing into the mapping for its name. */
struct tinfo {
	const char *name;
	int name_len;
	int ndim;
	int64_t shape[NESA_MAX_DIMS]; /* nesa order */
	uint32_t type;
	uint64_t offset;              /* relative to the data section */
	uint64_t abs;                 /* absolute file offset */
	uint64_t nbytes;
	bool sized;                   /* nbytes known (type known) */
};

/* Byte size of a tensor of a known ggml type nesa does not load. */
static enum nesa_status
foreign_size(struct cur *c, const struct tinfo *t, const struct ggml_type *gt, uint64_t *nbytes)
{
	int64_t n = 1;
	int i;

	for (i = 0; i < t->ndim; i++)
		if (!nesa_mul_i64(n, t->shape[i], &n) || n > NESA_MAX_ELEMS)
			return nesa_err_set(c->err, NESA_ESHAPE,
			                    "cannot read '%s': tensor '%.*s' is too large (more than 2^40 "
			                    "elements)",
			                    c->path, t->name_len, t->name);
	if ((t->ndim > 0 ? t->shape[t->ndim - 1] : 1) % gt->block != 0)
		return nesa_err_set(c->err, NESA_ESHAPE,
		                    "cannot read '%s': tensor '%.*s' of type %s needs a row length that "
		                    "is a multiple of %u",
		                    c->path, t->name_len, t->name, gt->name, gt->block);
	*nbytes = (uint64_t)n / gt->block * gt->bytes; /* < 2^40 * 292: no overflow */
	return NESA_OK;
}

/*
 * Reads tensor info idx and computes its byte size.  Shapes of loadable
 * types go through nesa_shape_check (element count, block multiple,
 * overflow); other known types get the same checks here.
 */
static enum nesa_status
parse_tinfo(struct cur *c, uint64_t idx, struct tinfo *t)
{
	const struct ggml_type *gt;
	char what[96];
	uint32_t ndim;
	uint64_t len;
	enum nesa_status s;
	int i, shown;

	memset(t, 0, sizeof *t);
	snprintf(what, sizeof what, "name of tensor %llu", (unsigned long long)idx);
	if ((s = rd_str(c, what, NESA_GGUF_MAX_NAME, &t->name, &len)) != NESA_OK)
		return s;
	t->name_len = (int)len;
	if (memchr(t->name, '\0', (size_t)len) != NULL)
		return nesa_err_set(c->err, NESA_EFORMAT, "cannot read '%s': %s contains a NUL byte",
		                    c->path, what);
	/* The name is not NUL-terminated in the map: always print it with a length. */
	shown = t->name_len < 40 ? t->name_len : 40;
	snprintf(what, sizeof what, "dimensions of tensor '%.*s'", shown, t->name);
	if ((s = rd_u32(c, what, &ndim)) != NESA_OK)
		return s;
	if (ndim > NESA_MAX_DIMS)
		return nesa_err_set(c->err, NESA_ESHAPE,
		                    "cannot read '%s': tensor '%.*s' has %u dimensions (at most %d)",
		                    c->path, t->name_len, t->name, ndim, NESA_MAX_DIMS);
	t->ndim = (int)ndim;
	for (i = 0; i < t->ndim; i++) {
		uint64_t ne;

		if ((s = rd_u64(c, what, &ne)) != NESA_OK)
			return s;
		if (ne > (uint64_t)INT64_MAX)
			return nesa_err_set(c->err, NESA_ESHAPE,
			                    "cannot read '%s': tensor '%.*s' has negative dimension %d",
			                    c->path, t->name_len, t->name, i);
		/* GGUF's ne[0] is the innermost dimension: nesa's last. */
		t->shape[t->ndim - 1 - i] = (int64_t)ne;
	}
	snprintf(what, sizeof what, "type of tensor '%.*s'", shown, t->name);
	if ((s = rd_u32(c, what, &t->type)) != NESA_OK)
		return s;
	snprintf(what, sizeof what, "data offset of tensor '%.*s'", shown, t->name);
	if ((s = rd_u64(c, what, &t->offset)) != NESA_OK)
		return s;

	gt = ggml_type(t->type);
	if (gt == NULL)
		return NESA_OK; /* listed as skipped; its size is unknowable */
	t->sized = true;
	if (gt->load) {
		char subject[NESA_GGUF_MAX_NAME + 16];
		size_t nb;

		snprintf(subject, sizeof subject, "tensor '%.*s'", t->name_len, t->name);
		s = nesa_shape_check(gt->dtype, t->ndim, t->shape, true, &nb, subject, c->err);
		if (s != NESA_OK) {
			nesa_err_prefix(c->err, "cannot read '%s'", c->path);
			return s;
		}
		t->nbytes = nb;
		return NESA_OK;
	}
	return foreign_size(c, t, gt, &t->nbytes);
}

static int
cmp_name(const void *a, const void *b)
{
	const struct tinfo *x = *(const struct tinfo *const *)a, *y = *(const struct tinfo *const *)b;
	int n = x->name_len < y->name_len ? x->name_len : y->name_len;
	int r = memcmp(x->name, y->name, (size_t)n);

	return r != 0 ? r : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int
cmp_offset(const void *a, const void *b)
{
	const struct tinfo *x = *(const struct tinfo *const *)a, *y = *(const struct tinfo *const *)b;

	return (x->abs > y->abs) - (x->abs < y->abs);
}

/*
 * Places every tensor in the data section: aligned offsets, data inside the
 * file, no two tensors sharing bytes, no two sharing a name.  ggml requires
 * the alignment too; here it also guarantees the zero-copy pointers are
 * aligned for their element type whenever the alignment is at least 4.
 * Overlaps and duplicates are found by sorting pointers to the infos, so
 * the cost is O(n log n) in the tensor count.
 */
static enum nesa_status
place_tensors(struct cur *c, const struct nesa_gguf *g, struct tinfo *ti, uint64_t n)
{
	struct tinfo **idx;
	enum nesa_status s = NESA_OK;
	uint64_t i, m = 0;

	for (i = 0; i < n; i++) {
		struct tinfo *t = &ti[i];

		if (t->offset % g->alignment != 0)
			return nesa_err_set(c->err, NESA_EFORMAT,
			                    "cannot read '%s': tensor '%.*s' data offset %llu is not a "
			                    "multiple of the alignment %u",
			                    c->path, t->name_len, t->name, (unsigned long long)t->offset,
			                    g->alignment);
		if (t->offset > c->size || g->data_offset > c->size - t->offset)
			return nesa_err_set(c->err, NESA_EFORMAT,
			                    "cannot read '%s': tensor '%.*s' data offset %llu starts past "
			                    "end of file (%llu bytes)",
			                    c->path, t->name_len, t->name,
			                    (unsigned long long)t->offset, (unsigned long long)c->size);
		t->abs = g->data_offset + t->offset;
		if (t->sized && t->nbytes > c->size - t->abs)
			return nesa_err_set(c->err, NESA_EFORMAT,
			                    "cannot read '%s': tensor '%.*s' data [%llu, %llu) extends past "
			                    "end of file (%llu bytes)",
			                    c->path, t->name_len, t->name, (unsigned long long)t->abs,
			                    (unsigned long long)(t->abs + t->nbytes),
			                    (unsigned long long)c->size);
	}
	if (n < 2)
		return NESA_OK;
	idx = nesa_malloc((size_t)n * sizeof *idx);
	if (idx == NULL)
		return oom(c);
	for (i = 0; i < n; i++)
		idx[i] = &ti[i];
	qsort(idx, (size_t)n, sizeof *idx, cmp_name);
	for (i = 1; i < n; i++)
		if (cmp_name(&idx[i - 1], &idx[i]) == 0) {
			s = nesa_err_set(c->err, NESA_EFORMAT,
			                 "cannot read '%s': duplicate tensor name '%.*s'", c->path,
			                 idx[i]->name_len, idx[i]->name);
			goto out;
		}
	/* Empty tensors and those of unknown size cannot be checked for overlap. */
	for (i = 0; i < n; i++)
		if (ti[i].sized && ti[i].nbytes > 0)
			idx[m++] = &ti[i];
	qsort(idx, (size_t)m, sizeof *idx, cmp_offset);
	for (i = 1; i < m; i++) {
		const struct tinfo *a = idx[i - 1], *b = idx[i];

		if (a->abs + a->nbytes > b->abs) {
			s = nesa_err_set(c->err, NESA_EFORMAT,
			                 "cannot read '%s': tensors '%.*s' [%llu, %llu) and '%.*s' "
			                 "[%llu, %llu) overlap",
			                 c->path, a->name_len, a->name, (unsigned long long)a->abs,
			                 (unsigned long long)(a->abs + a->nbytes), b->name_len, b->name,
			                 (unsigned long long)b->abs, (unsigned long long)(b->abs + b->nbytes));
			goto out;
		}
	}
out:
	nesa_free(idx);
	return s;
}

/*
 * Adds a tensor whose bytes live in the mapping.  Zero copy when the address
 * suits the element type (f32 needs 4-byte alignment, block types 2 for
 * their f16 scale); otherwise a copy the set owns, since a misaligned float
 * pointer is undefined behaviour in C.
 */
static enum nesa_status
add_mapped(struct nesa_tset *ts, const char *name, int dtype, int ndim, const int64_t *shape,
           const void *data, size_t nbytes, struct nesa_err *err)
{
	const struct nesa_dtype_traits *tr = nesa_dtype_traits(dtype);
	size_t align = tr->block_size == 1 ? tr->block_bytes : 2;
	struct nesa_tensor *t;
	enum nesa_status s;

	if ((uintptr_t)data % align == 0) {
		s = nesa_tset_add(ts, name, dtype, ndim, shape, (void *)(uintptr_t)data, &t, err);
		if (s == NESA_OK)
			t->flags |= NESA_TENSOR_READONLY;
		return s;
	}
	s = nesa_tset_alloc(ts, name, dtype, ndim, shape, &t, err);
	if (s == NESA_OK && nbytes > 0)
		memcpy(t->data, data, nbytes);
	return s;
}

/*
 * Fills the tensor set and the skipped list from the checked infos.  The
 * skipped list is counted first so that it is allocated once, at its size.
 */
static enum nesa_status
load_tensors(struct cur *c, struct nesa_gguf *g, const struct tinfo *ti, uint64_t n)
{
	uint64_t i, n_skip = 0;
	enum nesa_status s;

	for (i = 0; i < n; i++) {
		const struct ggml_type *gt = ggml_type(ti[i].type);

		n_skip += gt == NULL || !gt->load;
	}
	if (n_skip > 0) {
		g->skipped = nesa_calloc((size_t)n_skip, sizeof *g->skipped);
		if (g->skipped == NULL)
			return oom(c);
	}
	for (i = 0; i < n; i++) {
		const struct tinfo *t = &ti[i];
		const struct ggml_type *gt = ggml_type(t->type);
		char name[NESA_GGUF_MAX_NAME + 1];

		memcpy(name, t->name, (size_t)t->name_len);
		name[t->name_len] = '\0';
		if (gt != NULL && gt->load) {
			s = add_mapped(&g->tensors, name, gt->dtype, t->ndim, t->shape, c->base + t->abs,
			               (size_t)t->nbytes, c->err);
			if (s != NESA_OK) {
				nesa_err_prefix(c->err, "cannot read '%s'", c->path);
				return s;
			}
		} else {
			struct nesa_gguf_skipped *k = &g->skipped[g->n_skipped];

			k->name = nesa_strdup(name);
			if (k->name == NULL)
				return oom(c);
			g->n_skipped++;
			k->ggml_type = t->type;
			k->type_name = nesa_gguf_type_name(t->type);
			k->ndim = t->ndim;
			memcpy(k->shape, t->shape, sizeof k->shape);
			k->offset = t->abs;
			k->nbytes = t->nbytes;
		}
	}
	return NESA_OK;
}

/* Parses the whole file behind c into g (whose kv objects exist). */
static enum nesa_status
parse(struct cur *c, struct nesa_gguf *g)
{
	const unsigned char *p;
	uint64_t n_tensors, n_kv, i, pad;
	struct tinfo *ti = NULL;
	enum nesa_status s;

	if (c->size < 4 || memcmp(c->base, "GGUF", 4) != 0)
		return nesa_err_set(c->err, NESA_EFORMAT, "cannot read '%s': not a GGUF file (bad magic)",
		                    c->path);
	c->pos = 4;
	if ((s = rd_u32(c, "version", &g->version)) != NESA_OK)
		return s;
	if (g->version != 2 && g->version != 3) {
		/* Version 3 allows big-endian files; their version reads byte-swapped. */
		if (g->version == 0x02000000u || g->version == 0x03000000u)
			return nesa_err_set(c->err, NESA_EVERSION,
			                    "cannot read '%s': big-endian GGUF files are not supported",
			                    c->path);
		return nesa_err_set(c->err, NESA_EVERSION,
		                    "cannot read '%s': GGUF version %u is not supported (only 2 and 3)",
		                    c->path, g->version);
	}
	if ((s = rd_u64(c, "tensor count", &n_tensors)) != NESA_OK ||
	    (s = rd_u64(c, "metadata count", &n_kv)) != NESA_OK)
		return s;
	/*
	 * Each pair takes at least 13 bytes (empty key, type, a u8) and each
	 * tensor info 24 (empty name, no dimensions): a count the rest of the
	 * file cannot hold is a lie, refused before anything is allocated for it.
	 */
	if (n_kv > NESA_GGUF_MAX_COUNT || n_kv > (c->size - c->pos) / 13)
		return nesa_err_set(c->err, NESA_EFORMAT,
		                    "cannot read '%s': metadata count %llu is absurd for a file of %llu "
		                    "bytes (limit %llu)",
		                    c->path, (unsigned long long)n_kv, (unsigned long long)c->size,
		                    (unsigned long long)NESA_GGUF_MAX_COUNT);
	if ((s = parse_kv(c, g, n_kv)) != NESA_OK || (s = get_alignment(c, g)) != NESA_OK)
		return s;
	if (n_tensors > NESA_GGUF_MAX_COUNT || n_tensors > (c->size - c->pos) / 24)
		return nesa_err_set(c->err, NESA_EFORMAT,
		                    "cannot read '%s': tensor count %llu is absurd for a file of %llu "
		                    "bytes (limit %llu)",
		                    c->path, (unsigned long long)n_tensors, (unsigned long long)c->size,
		                    (unsigned long long)NESA_GGUF_MAX_COUNT);
	if (n_tensors > 0) {
		ti = nesa_malloc((size_t)n_tensors * sizeof *ti);
		if (ti == NULL)
			return oom(c);
	}
	for (i = 0; i < n_tensors; i++)
		if ((s = parse_tinfo(c, i, &ti[i])) != NESA_OK)
			goto out;
	/* The data section starts at the next multiple of the alignment; a file
	 * without tensors may end before it. */
	pad = (g->alignment - c->pos % g->alignment) % g->alignment;
	g->data_offset = c->pos + pad;
	if (n_tensors > 0 && pad > c->size - c->pos) {
		s = take(c, pad, "padding before the tensor data", &p);
		goto out;
	}
	if ((s = place_tensors(c, g, ti, n_tensors)) != NESA_OK)
		goto out;
	s = load_tensors(c, g, ti, n_tensors);
out:
	nesa_free(ti);
	return s;
}

enum nesa_status
nesa_gguf_open(const char *path, struct nesa_gguf **out, struct nesa_err *err)
{
	struct nesa_gguf *g;
	struct nesa_map map;
	struct cur c;
	enum nesa_status s;

	*out = NULL;
	g = nesa_calloc(1, sizeof *g);
	if (g == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", path);
	nesa_tset_init(&g->tensors);
	g->path = nesa_strdup(path);
	g->kv = json_object();
	g->kv_types = json_object();
	if (g->path == NULL || g->kv == NULL || g->kv_types == NULL) {
		nesa_gguf_free(g);
		return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", path);
	}
	s = nesa_map_file(path, &map, err);
	if (s != NESA_OK) {
		nesa_gguf_free(g);
		return s;
	}
	/* The set owns the mapping from here on, even if parsing fails. */
	memset(&c, 0, sizeof c);
	c.base = map.addr;
	c.size = map.size;
	c.path = path;
	c.err = err;
	g->file_size = map.size;
	s = nesa_tset_own_map(&g->tensors, &map, err);
	if (s == NESA_OK)
		s = parse(&c, g);
	else
		nesa_err_prefix(err, "cannot read '%s'", path);
	if (s != NESA_OK) {
		nesa_gguf_free(g);
		return s;
	}
	*out = g;
	return NESA_OK;
}

void
nesa_gguf_free(struct nesa_gguf *g)
{
	size_t i;

	if (g == NULL)
		return;
	for (i = 0; i < g->n_skipped; i++)
		nesa_free(g->skipped[i].name);
	nesa_free(g->skipped);
	json_decref(g->kv);
	json_decref(g->kv_types);
	nesa_tset_release(&g->tensors);
	nesa_free(g->path);
	nesa_free(g);
}

/*
 * Only types with a validate trait are read (q8_0 and q4_0 scales): float
 * tensors may legitimately hold any bit pattern as far as the reader knows.
 */
enum nesa_status
nesa_gguf_validate(const struct nesa_gguf *g, struct nesa_err *err)
{
	size_t i;

	for (i = 0; i < g->tensors.n; i++) {
		const struct nesa_tensor *t = &g->tensors.items[i];
		const struct nesa_dtype_traits *tr = nesa_dtype_traits(t->dtype);
		enum nesa_status s;

		if (tr->validate == NULL)
			continue;
		s = tr->validate(t->data, nesa_tensor_nelems(t), err);
		if (s != NESA_OK) {
			nesa_err_prefix(err, "cannot read '%s': tensor '%s'", g->path, t->name);
			return s;
		}
	}
	return NESA_OK;
}

/* A linear scan: skipped lists are short, and lookups happen on error paths. */
const struct nesa_gguf_skipped *
nesa_gguf_find_skipped(const struct nesa_gguf *g, const char *name)
{
	size_t i;

	for (i = 0; i < g->n_skipped; i++)
		if (strcmp(g->skipped[i].name, name) == 0)
			return &g->skipped[i];
	return NULL;
}
