/* SPDX-License-Identifier: MIT */
/*
 * Model-level quantization: per-tensor selection, conversion with error
 * figures, the report, and the tensor-stream filter; see quantize.h.  The
 * numeric work is quant.h's kernels; here are decisions and bookkeeping.
 */
#include "config.h"

#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "graph.h"
#include "quant.h"
#include "quantize.h"
#include "shard.h"

/* Floats converted per piece of a tensor: 4 MiB, whatever its size. */
#define PIECE_FLOATS ((int64_t)1 << 20)

enum nesa_status
nesa_quantize_parse_type(const char *name, int *dtype, struct nesa_err *err)
{
	enum nesa_dtype d;

	if (strcmp(name, "keep") == 0) {
		*dtype = NESA_QUANTIZE_KEEP;
		return NESA_OK;
	}
	if (strcmp(name, "dyn8") == 0 || strcmp(name, "lin8") == 0) {
		*dtype = name[0] == 'd' ? NESA_DYN8_4096 : NESA_LIN8_4096;
		return NESA_OK;
	}
	if (nesa_dtype_from_name(name, &d, NULL) == NESA_OK &&
	    (nesa_dtype_traits(d)->flags & (NESA_DTYPE_FLOAT | NESA_DTYPE_QUANT)) != 0) {
		*dtype = d;
		return NESA_OK;
	}
	return nesa_err_set(err, NESA_EUNSUPPORTED,
	                    "unknown type '%s' (supported: keep, dyn8, lin8, and the float and quantized ones of %s)",
	                    name, nesa_dtype_list());
}

const char *
nesa_quantize_type_name(int dtype)
{
	return dtype == NESA_QUANTIZE_KEEP ? "keep" : nesa_dtype_name(dtype);
}

/* Elements per row (the last dimension; a 0-d tensor is one row of one). */
static int64_t
row_len(const struct nesa_tensor *t)
{
	return t->ndim > 0 ? t->shape[t->ndim - 1] : 1;
}

/* Writes "[3, 17]", the index of flat element i, into buf. */
static void
index_str(const struct nesa_tensor *t, int64_t i, char *buf, size_t size)
{
	int64_t idx[NESA_MAX_DIMS];
	int k;

	for (k = t->ndim - 1; k >= 0; k--) {
		idx[k] = i % t->shape[k];
		i /= t->shape[k];
	}
	nesa_shape_str(t->ndim, idx, buf, size);
}

static void
stat_init(struct nesa_quantize_stat *st, const struct nesa_tensor *src)
{
	snprintf(st->name, sizeof st->name, "%s", src->name != NULL ? src->name : "");
	st->from = st->to = src->dtype;
	st->ndim = src->ndim;
	memcpy(st->shape, src->shape, sizeof st->shape);
	st->bytes_before = st->bytes_after = src->nbytes;
	st->rmse = 0.0;
	st->sqnr_db = INFINITY;
	st->max_abs = 0.0;
}

/* Appends ", text" (or text) to the note. */
static void
note_add(struct nesa_quantize_stat *st, const char *text)
{
	size_t len = strlen(st->note);

	snprintf(st->note + len, sizeof st->note - len, "%s%s", len > 0 ? ", " : "", text);
}

enum nesa_status
nesa_quantize_tensor(const struct nesa_tensor *src, int dtype, struct nesa_tset *dst,
                     struct nesa_quantize_stat *st, struct nesa_err *err)
{
	const char *name = src->name != NULL ? src->name : "";
	int64_t n = nesa_tensor_nelems(src), len = row_len(src), rows, per, r, j;
	size_t in_row, out_row;
	double sum_x2 = 0.0, sum_e2 = 0.0, max_abs = 0.0;
	float *x = NULL, *back = NULL;
	struct nesa_tensor *t;
	struct nesa_err why;
	enum nesa_status s;
	int to;

	if (st != NULL) {
		char keep[sizeof st->note];

		memcpy(keep, st->note, sizeof keep);
		stat_init(st, src);
		memcpy(st->note, keep, sizeof keep);
	}
	to = dtype == NESA_QUANTIZE_KEEP ? (int)src->dtype : nesa_quant_fit(dtype, len);
	if (to == (int)src->dtype || n == 0)
		return nesa_tset_add(dst, name, src->dtype, src->ndim, src->shape, src->data, NULL, err);
	if (st != NULL && to != dtype) {
		char buf[80];

		snprintf(buf, sizeof buf, "%s does not fit rows of %lld", nesa_dtype_name(dtype),
		         (long long)len);
		note_add(st, buf);
	}
	s = nesa_tset_alloc(dst, name, to, src->ndim, src->shape, &t, err);
	if (s != NESA_OK)
		return s;
	rows = n / len;
	per = PIECE_FLOATS / len > 0 ? PIECE_FLOATS / len : 1;
	if (!nesa_dtype_bytes(src->dtype, len, &in_row) || !nesa_dtype_bytes(to, len, &out_row))
		return nesa_err_set(err, NESA_EINTERNAL, "cannot size the rows of tensor '%s'", name);
	x = nesa_malloc((size_t)(per * len) * sizeof *x);
	back = nesa_malloc((size_t)(per * len) * sizeof *back);
	if (x == NULL || back == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	for (r = 0; r < rows; r += per) {
		int64_t k = rows - r < per ? rows - r : per, m = k * len;
		unsigned char *q = (unsigned char *)t->data + (size_t)r * out_row;

		nesa_quant_to_f32(src->dtype, (const unsigned char *)src->data + (size_t)r * in_row, x, m);
		for (j = 0; j < m; j++)
			if (!isfinite(x[j])) {
				char at[96];

				index_str(src, r * len + j, at, sizeof at);
				s = nesa_err_set(err, NESA_EFORMAT, "cannot quantize tensor '%s': element %s is %s",
				                 name, at, isnan(x[j]) ? "NaN" : "infinite");
				goto done;
			}
		nesa_quant_from_f32(to, x, q, m);
		/* A scale the format cannot hold (an f16 one past 65504) is refused here. */
		if (nesa_dtype_traits(to)->validate != NULL &&
		    nesa_dtype_traits(to)->validate(q, m, &why) != NESA_OK) {
			s = nesa_err_set(err, NESA_EUNSUPPORTED,
			                 "cannot quantize tensor '%s' to %s: its values exceed the format's range (%s)",
			                 name, nesa_dtype_name(to), why.msg);
			goto done;
		}
		nesa_quant_to_f32(to, q, back, m);
		for (j = 0; j < m; j++) {
			double e = (double)x[j] - (double)back[j];

			sum_x2 += (double)x[j] * (double)x[j];
			sum_e2 += e * e;
			if (fabs(e) > max_abs)
				max_abs = fabs(e);
			/* f16/bf16 of a finite value can overflow to infinity. */
			if (!isfinite(back[j])) {
				s = nesa_err_set(err, NESA_EUNSUPPORTED,
				                 "cannot quantize tensor '%s' to %s: %g is beyond its range", name,
				                 nesa_dtype_name(to), (double)x[j]);
				goto done;
			}
		}
	}
	if (st != NULL) {
		st->to = to;
		st->bytes_after = t->nbytes;
		st->rmse = n > 0 ? sqrt(sum_e2 / (double)n) : 0.0;
		st->sqnr_db = sum_e2 > 0.0 ? 10.0 * log10(sum_x2 / sum_e2) : INFINITY;
		st->max_abs = max_abs;
	}
done:
	nesa_free(x);
	nesa_free(back);
	return s;
}

/* How the graph uses each weight. */
enum use {
	USE_OTHER = 1,     /* needs f32: norms, biases, convolutions, positions */
	USE_LINEAR = 2,    /* the weight of a linear op */
	USE_EMBEDDING = 4, /* the table of an embedding op */
};

static unsigned
weight_use(const struct nesa_graph *g, const struct nesa_tensor *t, enum nesa_op_kind *other)
{
	unsigned use = 0;
	int b, i, k;

	for (b = 0; b < g->count; b++)
		for (i = 0; i < g->blocks[b].n_ops; i++) {
			const struct nesa_op *op = &g->blocks[b].ops[i];

			for (k = 0; k < 4; k++) {
				if (op->w[k] != t)
					continue;
				if (k == 0 && op->kind == NESA_OP_LINEAR)
					use |= USE_LINEAR;
				else if (k == 0 && op->kind == NESA_OP_EMBEDDING)
					use |= USE_EMBEDDING;
				else {
					use |= USE_OTHER;
					*other = op->kind;
				}
			}
		}
	return use;
}

/* The dtype for one weight, with the reason in st->note. */
static int
choose(const struct nesa_quantize_opts *o, const struct nesa_tensor *t, unsigned use,
       enum nesa_op_kind other, struct nesa_quantize_stat *st)
{
	size_t i;

	st->note[0] = '\0';
	if (use & USE_OTHER) {
		snprintf(st->note, sizeof st->note, "%s needs f32", nesa_op_name(other));
		return NESA_QUANTIZE_KEEP;
	}
	if (t->ndim < 2 || use == 0) {
		snprintf(st->note, sizeof st->note, "%s", t->ndim < 2 ? "1-D" : "unused");
		return NESA_QUANTIZE_KEEP;
	}
	for (i = 0; i < o->n_rules; i++)
		if (fnmatch(o->rules[i].pattern, t->name, 0) == 0) {
			snprintf(st->note, sizeof st->note, "rule '%s'", o->rules[i].pattern);
			return o->rules[i].dtype;
		}
	if (use & USE_EMBEDDING) {
		snprintf(st->note, sizeof st->note, "%s", use & USE_LINEAR ? "embedding, tied head" : "embedding");
		return NESA_QUANTIZE_KEEP;
	}
	/* A weight someone already quantized is not converted again unasked. */
	if (nesa_dtype_traits(t->dtype)->flags & NESA_DTYPE_QUANT) {
		snprintf(st->note, sizeof st->note, "already %s", nesa_dtype_name(t->dtype));
		return NESA_QUANTIZE_KEEP;
	}
	snprintf(st->note, sizeof st->note, "default");
	return o->dtype;
}

enum nesa_status
nesa_quantize_model(struct nesa_model *m, const struct nesa_quantize_opts *o, struct nesa_tset *out,
                    struct nesa_quantize_report *rep, struct nesa_err *err)
{
	struct nesa_quantize_report local = {0};
	struct nesa_graph *g = NULL;
	json_t *names = NULL, *e;
	enum nesa_status s;
	size_t i;

	s = nesa_graph_compile(m->graph, m->weights, m->first, m->count, &g, err);
	if (s == NESA_OK)
		s = nesa_graph_doc_weights(m->graph, m->first, m->count, &names, err);
	if (s != NESA_OK)
		goto done;
	local.items = nesa_calloc(json_array_size(names) + 1, sizeof *local.items);
	if (local.items == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	json_array_foreach(names, i, e) {
		struct nesa_tensor *t = nesa_tset_find(m->weights, json_string_value(e));
		struct nesa_quantize_stat *st = &local.items[local.n];
		enum nesa_op_kind other = NESA_OP_COUNT;
		unsigned use;
		int dtype;

		if (t == NULL) /* the graph compiled, so this cannot happen */
			continue;
		use = weight_use(g, t, &other);
		dtype = choose(o, t, use, other, st);
		s = nesa_quantize_tensor(t, dtype, out, st, err);
		if (s != NESA_OK)
			goto done;
		local.bytes_before += st->bytes_before;
		local.bytes_after += st->bytes_after;
		local.n++;
	}
done:
	json_decref(names);
	nesa_graph_free(g);
	if (s == NESA_OK && rep != NULL)
		*rep = local;
	else
		nesa_quantize_report_release(&local);
	return s;
}

enum nesa_status
nesa_quantize_write(struct nesa_model *m, struct nesa_tset *q, int default_dtype, const char *path,
                    const struct nesa_shard_write_opts *opts, struct nesa_err *err)
{
	struct nesa_tset *orig = m->weights;
	json_t *rec = json_pack("{s:s}", "default", nesa_quantize_type_name(default_dtype));
	enum nesa_status s;

	if (rec == NULL || json_object_set_new(m->meta, "quantization", rec) != 0)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	/* Same graph, other tensors: the writer looks every weight up by name. */
	m->weights = q;
	s = nesa_model_write_shard(m, m->first, m->count, path, opts, err);
	m->weights = orig;
	return s;
}

void
nesa_quantize_report_release(struct nesa_quantize_report *rep)
{
	if (rep == NULL)
		return;
	nesa_free(rep->items);
	memset(rep, 0, sizeof *rep);
}

json_t *
nesa_quantize_report_json(const struct nesa_quantize_report *rep)
{
	json_t *arr = json_array(), *root;
	size_t i;
	int k;

	if (arr == NULL)
		return NULL;
	for (i = 0; i < rep->n; i++) {
		const struct nesa_quantize_stat *st = &rep->items[i];
		json_t *shape = json_array(), *o;

		for (k = 0; k < st->ndim && shape != NULL; k++)
			json_array_append_new(shape, json_integer(st->shape[k]));
		o = json_pack("{s:s, s:o, s:s, s:s, s:s, s:I, s:I, s:f, s:o, s:f}", "name", st->name, "shape",
		              shape, "from", nesa_dtype_name(st->from), "to", nesa_dtype_name(st->to), "note",
		              st->note, "bytes_before", (json_int_t)st->bytes_before, "bytes_after",
		              (json_int_t)st->bytes_after, "rmse", st->rmse, "sqnr_db",
		              isinf(st->sqnr_db) ? json_null() : json_real(st->sqnr_db), "max_abs", st->max_abs);
		if (o == NULL || json_array_append_new(arr, o) != 0) {
			json_decref(arr);
			return NULL;
		}
	}
	root = json_pack("{s:o, s:I, s:I}", "tensors", arr, "bytes_before", (json_int_t)rep->bytes_before,
	                 "bytes_after", (json_int_t)rep->bytes_after);
	return root;
}

/* Appends printf output to a growing string; false when out of memory. */
static bool
append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static bool
append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(*buf != NULL ? *buf + *len : NULL, *buf != NULL ? *cap - *len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return false;
		if (*buf != NULL && (size_t)n < *cap - *len) {
			*len += (size_t)n;
			return true;
		}
		{
			size_t ncap = (*cap + (size_t)n + 1) * 2;
			char *nb = nesa_realloc(*buf, ncap);

			if (nb == NULL)
				return false;
			*buf = nb;
			*cap = ncap;
		}
	}
}

char *
nesa_quantize_report_text(const struct nesa_quantize_report *rep)
{
	char *buf = NULL, shape[64], sq[16];
	size_t len = 0, cap = 0, i, w = 6;
	bool ok;

	for (i = 0; i < rep->n; i++)
		if (strlen(rep->items[i].name) > w)
			w = strlen(rep->items[i].name);
	ok = append(&buf, &len, &cap, "%-*s %-14s %-9s %-9s %12s %12s %10s %8s %10s  %s\n", (int)w, "tensor",
	            "shape", "from", "to", "bytes", "after", "rmse", "sqnr_db", "max_abs", "note");
	for (i = 0; i < rep->n && ok; i++) {
		const struct nesa_quantize_stat *st = &rep->items[i];

		if (isinf(st->sqnr_db))
			snprintf(sq, sizeof sq, "%s", "inf");
		else
			snprintf(sq, sizeof sq, "%.2f", st->sqnr_db);
		ok = append(&buf, &len, &cap, "%-*s %-14s %-9s %-9s %12llu %12llu %10.3g %8s %10.3g  %s\n", (int)w,
		            st->name, nesa_shape_str(st->ndim, st->shape, shape, sizeof shape),
		            nesa_dtype_name(st->from), nesa_dtype_name(st->to),
		            (unsigned long long)st->bytes_before, (unsigned long long)st->bytes_after, st->rmse,
		            sq, st->max_abs, st->note);
	}
	if (ok)
		ok = append(&buf, &len, &cap, "%-*s %-14s %-9s %-9s %12llu %12llu %10s %8s %10s  %.3fx smaller\n",
		            (int)w, "total", "", "", "", (unsigned long long)rep->bytes_before,
		            (unsigned long long)rep->bytes_after, "", "", "",
		            rep->bytes_after > 0 ? (double)rep->bytes_before / (double)rep->bytes_after : 0.0);
	if (!ok) {
		nesa_free(buf);
		return NULL;
	}
	return buf;
}

/* The codec a tensor frame goes out in, or -1 to pass it unchanged. */
static int
frame_codec(const struct nesa_frame *f, int codec)
{
	const struct nesa_dtype_traits *t = nesa_dtype_traits(f->codec);
	int c;

	if (t == NULL || !(t->flags & (NESA_DTYPE_FLOAT | NESA_DTYPE_QUANT)))
		return -1;
	c = nesa_quant_fit(codec, f->ndim > 0 ? f->shape[f->ndim - 1] : 1);
	return c == f->codec ? -1 : c;
}

enum nesa_status
nesa_quantize_stream(struct nesa_stream *in, struct nesa_stream *out, int codec,
                     struct nesa_quantize_stream_stats *st, struct nesa_err *err)
{
	struct nesa_quantize_stream_stats local = {0};
	float *x = NULL;           /* (n) decoded elements */
	unsigned char *y = NULL;   /* encoded payload */
	size_t xcap = 0, ycap = 0;
	struct nesa_err why;
	enum nesa_status s = NESA_OK;

	for (;;) {
		struct nesa_frame f;
		size_t n = 1, bytes;
		int c, k;

		s = nesa_stream_read(in, &f);
		if (s != NESA_OK) {
			nesa_err_copy(err, nesa_stream_err(in));
			break;
		}
		local.frames++;
		if (f.kind == NESA_FRAME_EOS)
			break;
		local.bytes_in += f.payload_len;
		c = f.kind == NESA_FRAME_TENSOR ? frame_codec(&f, codec) : -1;
		if (c >= 0) {
			for (k = 0; k < f.ndim; k++)
				n *= (size_t)f.shape[k];
			if (!nesa_dtype_bytes(c, (int64_t)n, &bytes)) {
				s = nesa_err_set(err, NESA_EINTERNAL, "cannot size a %s payload of %zu elements",
				                 nesa_dtype_name(c), n);
				break;
			}
			if (n > xcap || bytes > ycap) {
				nesa_free(x);
				nesa_free(y);
				x = nesa_malloc(n * sizeof *x);
				y = nesa_malloc(bytes);
				xcap = x != NULL && y != NULL ? n : 0;
				ycap = x != NULL && y != NULL ? bytes : 0;
				if (x == NULL || y == NULL) {
					s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
					break;
				}
			}
			s = nesa_frame_decode_f32(&f, x, n, err);
			if (s != NESA_OK) {
				nesa_err_prefix(err, "cannot decode a frame of '%s'", nesa_stream_name(in));
				break;
			}
			nesa_quant_from_f32(c, x, y, (int64_t)n);
			/* Activations too large for an f16 scale would reach the peer as infinities. */
			if (nesa_dtype_traits(c)->validate != NULL &&
			    nesa_dtype_traits(c)->validate(y, (int64_t)n, &why) != NESA_OK) {
				s = nesa_err_set(err, NESA_EUNSUPPORTED,
				                 "cannot encode a frame of '%s' as %s: its values exceed the codec's range (%s)",
				                 nesa_stream_name(in), nesa_dtype_name(c), why.msg);
				break;
			}
			f.codec = (uint8_t)c;
			f.payload = y;
			f.payload_len = bytes;
			local.recoded++;
		}
		local.bytes_out += f.payload_len;
		s = nesa_stream_write(out, &f);
		if (s != NESA_OK) {
			nesa_err_copy(err, nesa_stream_err(out));
			break;
		}
	}
	nesa_free(x);
	nesa_free(y);
	if (st != NULL)
		*st = local;
	return s;
}
