/* SPDX-License-Identifier: MIT */
/*
 * NumPy .npy reader and writer; the format and what is accepted are in
 * npy.h and nesa-stream(5).  The header is a Python literal, but only the
 * tiny subset numpy itself writes is parsed here (strings without escapes,
 * True/False, tuples of non-negative integers): nothing is evaluated.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "npy.h"

/* Dimensions parsed before giving up on a shape, so the count can be reported. */
#define PARSE_DIMS_MAX 64

/* Largest header nesa writes: the dict of a 4-dim array is under 120 bytes. */
#define WRITE_HEADER_MAX 256

/* Elements converted per step when widening bf16 to f32 on output. */
#define WIDEN_CHUNK 4096

static const char *
fname(const char *name)
{
	return name != NULL ? name : "input";
}

static uint16_t
get_le16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
get_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

bool
nesa_npy_sniff(const void *buf, size_t n)
{
	return n >= NESA_NPY_MAGIC_LEN && memcmp(buf, NESA_NPY_MAGIC, NESA_NPY_MAGIC_LEN) == 0;
}

enum nesa_status
nesa_npy_preamble(const void *buf, size_t n, const char *name, size_t *header_size,
                  struct nesa_err *err)
{
	const unsigned char *p = buf;
	size_t need, hlen;

	if (!nesa_npy_sniff(buf, n))
		return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': %s", fname(name),
		                    n < NESA_NPY_MAGIC_LEN ? "unexpected end of file" : "not a .npy file");
	if (n < 8)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': unexpected end of file",
		                    fname(name));
	if (p[6] < 1 || p[6] > 3 || p[7] != 0)
		return nesa_err_set(err, NESA_EVERSION,
		                    "cannot read '%s': unsupported .npy version %u.%u (1.0, 2.0 and 3.0 are supported)",
		                    fname(name), p[6], p[7]);
	need = p[6] == 1 ? 10 : 12;
	if (n < need)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': unexpected end of file",
		                    fname(name));
	hlen = p[6] == 1 ? get_le16(p + 8) : get_le32(p + 8);
	/*
	 * A version 2 length can claim 4 GiB; numpy itself refuses headers over
	 * 10 kB by default.  Refuse before the caller allocates the header.
	 */
	if (hlen > NESA_NPY_HEADER_MAX)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': .npy header of %zu bytes is larger than %u",
		                    fname(name), hlen, NESA_NPY_HEADER_MAX);
	*header_size = need + hlen;
	return NESA_OK;
}

/*
 * A cursor over the header text.  The parser accepts what numpy and other
 * writers produce (any key order, either quote, optional spaces and
 * trailing commas) and nothing that would need a Python evaluator.
 */
struct cur {
	const char *p, *end;
	const char *name;
	struct nesa_err *err;
};

static void
skip_ws(struct cur *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

static enum nesa_status
syntax(struct cur *c, const char *what)
{
	return nesa_err_set(c->err, NESA_EFORMAT, "cannot read '%s': malformed .npy header: %s",
	                    fname(c->name), what);
}

static bool
accept(struct cur *c, char ch)
{
	skip_ws(c);
	if (c->p < c->end && *c->p == ch) {
		c->p++;
		return true;
	}
	return false;
}

/* A quoted string without escapes; *s points into the header. */
static enum nesa_status
parse_string(struct cur *c, const char **s, size_t *len)
{
	char q;
	const char *start;

	skip_ws(c);
	if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
		return syntax(c, "expected a string");
	q = *c->p++;
	start = c->p;
	while (c->p < c->end && *c->p != q) {
		if (*c->p == '\\')
			return syntax(c, "escapes in strings are not supported");
		c->p++;
	}
	if (c->p >= c->end)
		return syntax(c, "unterminated string");
	*s = start;
	*len = (size_t)(c->p - start);
	c->p++;
	return NESA_OK;
}

static bool
accept_word(struct cur *c, const char *w)
{
	size_t n = strlen(w);

	skip_ws(c);
	if ((size_t)(c->end - c->p) >= n && memcmp(c->p, w, n) == 0) {
		c->p += n;
		return true;
	}
	return false;
}

/* A tuple of non-negative integers: "()", "(3,)", "(2, 3)", "(2, 3,)". */
static enum nesa_status
parse_shape(struct cur *c, int *ndim, int64_t *shape)
{
	int n = 0;

	if (!accept(c, '('))
		return syntax(c, "'shape' is not a tuple");
	for (;;) {
		int64_t v = 0;
		int digits = 0;

		if (accept(c, ')'))
			break;
		skip_ws(c);
		while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
			if (!nesa_mul_i64(v, 10, &v) || __builtin_add_overflow(v, *c->p - '0', &v))
				return nesa_err_set(c->err, NESA_ESHAPE,
				                    "cannot read '%s': dimension in .npy shape is too large",
				                    fname(c->name));
			c->p++;
			digits++;
		}
		if (digits == 0)
			return syntax(c, "'shape' holds something other than non-negative integers");
		if (c->p < c->end && *c->p == 'L') /* Python 2 long literals */
			c->p++;
		/* Keep counting past 4 dims, so the refusal can say how many there were. */
		if (n >= PARSE_DIMS_MAX)
			return syntax(c, "'shape' has too many entries");
		if (n < NESA_MAX_DIMS)
			shape[n] = v;
		n++;
		if (accept(c, ','))
			continue;
		/* "(3)" is an integer in Python, not a tuple. */
		if (n < 2 || !accept(c, ')'))
			return syntax(c, "'shape' is not a tuple");
		break;
	}
	*ndim = n;
	return NESA_OK;
}

/*
 * The dtype of a descr string.  numpy writes '|' for one-byte types; '<' is
 * accepted too because other writers use it.  Refusals say why, since the
 * fix on the numpy side differs (byte swap, astype, ascontiguousarray).
 */
static enum nesa_status
map_descr(struct cur *c, const char *d, size_t len, enum nesa_dtype *out)
{
	static const struct {
		const char *descr;
		enum nesa_dtype dtype;
	} table[] = {
		{"<f4", NESA_F32}, {"<f2", NESA_F16}, {"<i4", NESA_I32}, {"|i1", NESA_I8},
		{"<i1", NESA_I8},  {"|u1", NESA_U8},  {"<u1", NESA_U8},
	};
	const char *name = fname(c->name);
	size_t i;
	int dl = len > 32 ? 32 : (int)len;

	for (i = 0; i < sizeof table / sizeof table[0]; i++)
		if (strlen(table[i].descr) == len && memcmp(table[i].descr, d, len) == 0) {
			*out = table[i].dtype;
			return NESA_OK;
		}
	if (len >= 2 && d[0] == '>' && !(len == 3 && d[2] == '1'))
		return nesa_err_set(c->err, NESA_EUNSUPPORTED,
		                    "cannot read '%s': big-endian .npy data type '%.*s' is not supported (save a little-endian copy, e.g. a.astype('<f4'))",
		                    name, dl, d);
	if (len >= 2 && d[1] == 'O')
		return nesa_err_set(c->err, NESA_EUNSUPPORTED,
		                    "cannot read '%s': .npy object arrays are not supported", name);
	if (len >= 2 && d[1] == 'V')
		return nesa_err_set(c->err, NESA_EUNSUPPORTED,
		                    "cannot read '%s': .npy void data type '%.*s' is not supported (bfloat16 arrays must be saved as float32)",
		                    name, dl, d);
	return nesa_err_set(c->err, NESA_EUNSUPPORTED,
	                    "cannot read '%s': unsupported .npy data type '%.*s' (supported: <f4, <f2, <i4, |i1, |u1)",
	                    name, dl, d);
}

enum nesa_status
nesa_npy_parse_header(const void *buf, size_t n, const char *name, struct nesa_npy_info *info,
                      struct nesa_err *err)
{
	struct cur c;
	const char *descr = NULL;
	size_t descr_len = 0, pre;
	int fortran = -1, ndim = -1, i;
	int64_t shape[NESA_MAX_DIMS];
	enum nesa_status s;
	char what[64];

	memset(info, 0, sizeof *info);
	s = nesa_npy_preamble(buf, n, name, &info->header_size, err);
	if (s != NESA_OK)
		return s;
	if (n < info->header_size)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': unexpected end of file",
		                    fname(name));
	info->version = ((const unsigned char *)buf)[6];
	pre = info->version == 1 ? 10 : 12;
	c.p = (const char *)buf + pre;
	c.end = (const char *)buf + info->header_size;
	c.name = name;
	c.err = err;
	if (!accept(&c, '{'))
		return syntax(&c, "expected '{'");
	/*
	 * Each key at most once, each value parsed by its key's own rule; the
	 * loop ends at '}' after a pair, or after a trailing comma as numpy
	 * writes it.
	 */
	while (!accept(&c, '}')) {
		const char *key;
		size_t klen;

		s = parse_string(&c, &key, &klen);
		if (s != NESA_OK)
			return s;
		if (!accept(&c, ':'))
			return syntax(&c, "expected ':'");
		if (klen == 5 && memcmp(key, "descr", 5) == 0 && descr == NULL) {
			skip_ws(&c);
			if (c.p < c.end && *c.p == '[')
				return nesa_err_set(err, NESA_EUNSUPPORTED,
				                    "cannot read '%s': .npy structured data types are not supported",
				                    fname(name));
			s = parse_string(&c, &descr, &descr_len);
		} else if (klen == 13 && memcmp(key, "fortran_order", 13) == 0 && fortran < 0) {
			if (accept_word(&c, "True"))
				fortran = 1;
			else if (accept_word(&c, "False"))
				fortran = 0;
			else
				s = syntax(&c, "'fortran_order' is not True or False");
		} else if (klen == 5 && memcmp(key, "shape", 5) == 0 && ndim < 0) {
			s = parse_shape(&c, &ndim, shape);
		} else {
			snprintf(what, sizeof what, "unexpected or repeated key '%.*s'",
			         klen > 24 ? 24 : (int)klen, key);
			s = syntax(&c, what);
		}
		if (s != NESA_OK)
			return s;
		if (!accept(&c, ',')) {
			if (!accept(&c, '}'))
				return syntax(&c, "expected ',' or '}'");
			break;
		}
	}
	/* numpy pads with spaces and ends with '\n'; anything else is not a header. */
	skip_ws(&c);
	if (c.p != c.end)
		return syntax(&c, "text after the dict");
	if (descr == NULL || fortran < 0 || ndim < 0)
		return syntax(&c, "'descr', 'fortran_order' or 'shape' is missing");
	s = map_descr(&c, descr, descr_len, &info->dtype);
	if (s != NESA_OK)
		return s;
	/*
	 * numpy sets fortran_order only for arrays that are not also C-ordered,
	 * so True always means a transposed layout.
	 */
	if (fortran)
		return nesa_err_set(err, NESA_EUNSUPPORTED,
		                    "cannot read '%s': Fortran-order .npy arrays are not supported (save np.ascontiguousarray(a))",
		                    fname(name));
	if (ndim > NESA_MAX_DIMS)
		return nesa_err_set(err, NESA_EUNSUPPORTED,
		                    "cannot read '%s': .npy array has %d dimensions (at most %d are supported)",
		                    fname(name), ndim, NESA_MAX_DIMS);
	info->ndim = ndim;
	for (i = 0; i < NESA_MAX_DIMS; i++)
		info->shape[i] = i < ndim ? shape[i] : 1;
	s = nesa_shape_check(info->dtype, ndim, info->shape, true, &info->data_size, "array", err);
	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot read '%s'", fname(name));
	return s;
}

/* Reads exactly n bytes; a short read is a truncated file. */
static enum nesa_status
read_fp(FILE *fp, void *buf, size_t n, const char *name, struct nesa_err *err)
{
	if (n == 0 || fread(buf, 1, n, fp) == n)
		return NESA_OK;
	if (ferror(fp))
		return nesa_err_sys(err, NESA_EIO, "cannot read '%s'", fname(name));
	return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': unexpected end of file", fname(name));
}

/*
 * The tensor an array is read into; the shape was checked by parse_header,
 * so the only failure left is memory, reported with the file's name.
 */
static enum nesa_status
new_tensor(const struct nesa_npy_info *info, const char *name, struct nesa_tensor **out,
           struct nesa_err *err)
{
	*out = nesa_tensor_new(NULL, info->dtype, info->ndim, info->shape, err);
	if (*out == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory (%zu bytes)",
		                    fname(name), info->data_size);
	return NESA_OK;
}

enum nesa_status
nesa_npy_read_fp(FILE *fp, const char *name, struct nesa_tensor **out, struct nesa_err *err)
{
	unsigned char pre[NESA_NPY_PREAMBLE_MAX];
	struct nesa_npy_info info;
	unsigned char *hdr = NULL;
	size_t hsize;
	enum nesa_status s;

	*out = NULL;
	/*
	 * Ten bytes first: a 1.0 preamble is shorter than the 2.0 one, and fp
	 * must be left exactly after the array, so nothing is read ahead.
	 */
	s = read_fp(fp, pre, 10, name, err);
	if (s == NESA_OK && nesa_npy_sniff(pre, 10) && pre[6] >= 2)
		s = read_fp(fp, pre + 10, 2, name, err);
	if (s == NESA_OK)
		s = nesa_npy_preamble(pre, sizeof pre, name, &hsize, err);
	if (s != NESA_OK)
		return s;
	hdr = nesa_malloc(hsize);
	if (hdr == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", fname(name));
	memcpy(hdr, pre, pre[6] == 1 ? 10 : 12);
	s = read_fp(fp, hdr + (pre[6] == 1 ? 10 : 12), hsize - (pre[6] == 1 ? 10 : 12), name, err);
	if (s == NESA_OK)
		s = nesa_npy_parse_header(hdr, hsize, name, &info, err);
	nesa_free(hdr);
	if (s == NESA_OK)
		s = new_tensor(&info, name, out, err);
	if (s == NESA_OK)
		s = read_fp(fp, (*out)->data, info.data_size, name, err);
	if (s != NESA_OK) {
		nesa_tensor_free(*out);
		*out = NULL;
	}
	return s;
}

enum nesa_status
nesa_npy_read_mem(const void *buf, size_t len, const char *name, struct nesa_tensor **out,
                  struct nesa_err *err)
{
	struct nesa_npy_info info;
	size_t total;
	enum nesa_status s;

	*out = NULL;
	/* parse_header checks the preamble, so header_size <= len from here on. */
	s = nesa_npy_parse_header(buf, len, name, &info, err);
	if (s != NESA_OK)
		return s;
	if (!nesa_add_size(info.header_size, info.data_size, &total) || len < total)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': unexpected end of file",
		                    fname(name));
	/* A buffer is one file: extra bytes mean it is not what the caller thinks. */
	if (len > total)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': %zu bytes of trailing data after the array",
		                    fname(name), len - total);
	s = new_tensor(&info, name, out, err);
	if (s != NESA_OK)
		return s;
	if (info.data_size > 0)
		memcpy((*out)->data, (const unsigned char *)buf + info.header_size, info.data_size);
	return NESA_OK;
}

/*
 * Formats the complete 1.0 header of an array into buf: the dict exactly as
 * numpy writes it (keys sorted, ", " separators, a trailing ", "), then
 * spaces and '\n' so that the data starts at a multiple of NESA_NPY_ALIGN,
 * which lets readers map the file and use the data in place.  numpy 1.24+
 * adds spare spaces so that the first dimension can grow in place; nesa
 * never appends, so its padding is the minimum.
 */
static size_t
format_header(const char *descr, int ndim, const int64_t *shape, char *buf)
{
	char dict[WRITE_HEADER_MAX];
	size_t len, total, i;
	int d;

	len = (size_t)snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
	                       descr);
	for (d = 0; d < ndim; d++)
		len += (size_t)snprintf(dict + len, sizeof dict - len, "%s%lld", d ? ", " : "",
		                        (long long)shape[d]);
	len += (size_t)snprintf(dict + len, sizeof dict - len, "%s), }", ndim == 1 ? "," : "");
	/* 10 bytes of preamble, the dict, at least the '\n', rounded up. */
	total = (10 + len + 1 + NESA_NPY_ALIGN - 1) / NESA_NPY_ALIGN * NESA_NPY_ALIGN;
	memcpy(buf, NESA_NPY_MAGIC "\x01\x00", 8);
	buf[8] = (char)((total - 10) & 0xff);
	buf[9] = (char)((total - 10) >> 8);
	memcpy(buf + 10, dict, len);
	for (i = 10 + len; i < total - 1; i++)
		buf[i] = ' ';
	buf[total - 1] = '\n';
	return total;
}

static enum nesa_status
write_fp(FILE *fp, const void *buf, size_t n, const char *name, struct nesa_err *err)
{
	if (n > 0 && fwrite(buf, 1, n, fp) != n)
		return nesa_err_sys(err, NESA_EIO, "cannot write to '%s'", name);
	return NESA_OK;
}

/*
 * bf16 is written as '<f4': numpy has no bfloat16, and widening is exact,
 * so a round trip through numpy loses nothing but half the space.
 */
enum nesa_status
nesa_npy_write_fp(FILE *fp, const char *name, const struct nesa_tensor *t, struct nesa_err *err)
{
	static const char *const descr[] = {
		[NESA_F32] = "<f4", [NESA_F16] = "<f2", [NESA_BF16] = "<f4",
		[NESA_I32] = "<i4", [NESA_I8] = "|i1",  [NESA_U8] = "|u1",
	};
	char hdr[WRITE_HEADER_MAX + NESA_NPY_ALIGN];
	size_t hlen;
	enum nesa_status s;

	if (name == NULL)
		name = "output";
	if ((unsigned)t->dtype >= sizeof descr / sizeof descr[0] || descr[t->dtype] == NULL)
		return nesa_err_set(err, NESA_EUNSUPPORTED,
		                    "cannot write %s tensor to '%s': numpy has no such type (convert it to f32 first)",
		                    nesa_dtype_name(t->dtype), name);
	if (t->ndim < 0 || t->ndim > NESA_MAX_DIMS || !nesa_tensor_is_contiguous(t) ||
	    (t->data == NULL && t->nbytes > 0))
		return nesa_err_set(err, NESA_EINVAL,
		                    "cannot write tensor to '%s': not a contiguous tensor with data", name);
	/* The shape has at most 4 dims of 19 digits: the header fits in hdr. */
	hlen = format_header(descr[t->dtype], t->ndim, t->shape, hdr);
	s = write_fp(fp, hdr, hlen, name, err);
	if (s != NESA_OK || t->dtype != NESA_BF16)
		return s == NESA_OK ? write_fp(fp, t->data, t->nbytes, name, err) : s;
	{
		/* bf16 -> f32 widening in slices, so no tensor-sized buffer is needed. */
		float wide[WIDEN_CHUNK]; /* (WIDEN_CHUNK) f32 */
		int64_t n = nesa_tensor_nelems(t), i;
		const struct nesa_dtype_traits *tr = nesa_dtype_traits(NESA_BF16);

		for (i = 0; i < n && s == NESA_OK; i += WIDEN_CHUNK) {
			int64_t k = n - i < WIDEN_CHUNK ? n - i : WIDEN_CHUNK;

			tr->to_f32((const uint16_t *)t->data + i, wide, k);
			s = write_fp(fp, wide, (size_t)k * sizeof(float), name, err);
		}
	}
	return s;
}

enum nesa_status
nesa_npy_write(struct nesa_out *o, const struct nesa_tensor *t, struct nesa_err *err)
{
	return nesa_npy_write_fp(o->fp, nesa_out_name(o), t, err);
}
