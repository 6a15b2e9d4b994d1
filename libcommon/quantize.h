/* SPDX-License-Identifier: MIT */
/*
 * Model-level quantization (nesa-quantize): which weights of a model get
 * which format, the quantized tensors themselves with their error figures,
 * and the tensor-stream filter that re-encodes activations with a wire
 * codec.  The formats and kernels are quant.h's; this module only decides
 * and measures.
 *
 * Selection, in order, for each weight the model's graph references:
 *   1. a weight the runtime needs in f32 (norms, biases, convolution and
 *      position-embedding weights: anything but the weight of a linear or
 *      embedding op) and every 1-D tensor is kept as it is;
 *   2. the first rule whose fnmatch(3) pattern matches the name decides
 *      (a dtype, or keep);
 *   3. otherwise embedding tables (including one tied to the output head)
 *      and weights already in a quantized type are kept, and the other
 *      linear weights get the default dtype.
 * The chosen dtype is then fitted to the tensor's rows (nesa_quant_fit):
 * a format whose block does not divide the row length falls back to a
 * smaller block of its family, then to f16, and the report says so.
 */
#ifndef NESA_QUANTIZE_H
#define NESA_QUANTIZE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"
#include "stream.h"
#include "tensor.h"

/* A rule's or the default's "dtype" meaning "leave the tensor as it is". */
#define NESA_QUANTIZE_KEEP (-1)

struct nesa_quantize_rule {
	const char *pattern; /* fnmatch(3) pattern over tensor names (borrowed) */
	int dtype;           /* a dtype id, or NESA_QUANTIZE_KEEP */
};

struct nesa_quantize_opts {
	int dtype;                              /* default for linear weights, or KEEP */
	const struct nesa_quantize_rule *rules; /* (n_rules) first match wins; may be NULL */
	size_t n_rules;
};

/* What happened to one tensor, and how far the result is from the source. */
struct nesa_quantize_stat {
	char name[256];
	int from, to;           /* source and stored dtype ids */
	int ndim;
	int64_t shape[4];
	char note[96];          /* why: "default", "rule 'blk.*'", "embedding", ... */
	uint64_t bytes_before, bytes_after;
	double rmse;            /* sqrt(mean((x - q)^2)) against the source as f32 */
	double sqnr_db;         /* 10 log10(sum x^2 / sum (x - q)^2); INFINITY when exact */
	double max_abs;         /* max |x - q| */
};

struct nesa_quantize_report {
	struct nesa_quantize_stat *items; /* (n) in the graph's weight order */
	size_t n;
	uint64_t bytes_before, bytes_after; /* totals */
};

/*
 * Parses a type name: any dtype name, "dyn8" and "lin8" for dyn8_4096 and
 * lin8_4096 (which fall back to smaller blocks where rows are shorter), or
 * "keep".  NESA_EUNSUPPORTED with the list of names otherwise; integer
 * dtypes are refused too.
 */
enum nesa_status nesa_quantize_parse_type(const char *name, int *dtype, struct nesa_err *err);

/* "q8_0", or "keep" for NESA_QUANTIZE_KEEP. */
const char *nesa_quantize_type_name(int dtype);

/*
 * Converts src (contiguous, any dtype with traits) to dtype, fitted to its
 * rows, and appends the result to dst under src's name; NESA_QUANTIZE_KEEP
 * (or the source's own dtype) appends a tensor sharing src's data, which
 * must then outlive dst.  Works through the rows in pieces of a few MiB.
 * st (may be NULL) receives the figures; its note is left as it was
 * except for a fallback, which is appended.
 *
 * NESA_EFORMAT for a NaN or infinite source element ("cannot quantize
 * tensor 'w': element [3, 17] is NaN"), NESA_EUNSUPPORTED for a value
 * beyond the format's range (an f16 scale or value overflows); NESA_ENOMEM;
 * errors from dst.  After a failure dst may hold a partial tensor of that
 * name: release it.
 */
enum nesa_status nesa_quantize_tensor(const struct nesa_tensor *src, int dtype, struct nesa_tset *dst,
                                      struct nesa_quantize_stat *st, struct nesa_err *err);

/*
 * Quantizes the weights m's graph references (blocks m->first ..) by the
 * selection above into out (initialised by the caller with nesa_tset_init
 * and released by it; kept tensors share m's memory, so out must not
 * outlive m).  rep (may be NULL) receives one item per weight; release it
 * with nesa_quantize_report_release.  Errors name the tensor; NESA_ENOMEM.
 */
enum nesa_status nesa_quantize_model(struct nesa_model *m, const struct nesa_quantize_opts *o,
                                     struct nesa_tset *out, struct nesa_quantize_report *rep,
                                     struct nesa_err *err);

/*
 * Writes m with its weights replaced by those in q (from
 * nesa_quantize_model) as one shard archive of all blocks m holds, through
 * nesa_model_write_shard: same graph, tokenizer and identity, plus
 * meta.quantization = {"default": TYPE}.  opts may be NULL.  m is unchanged
 * afterwards except for that meta entry.
 */
enum nesa_status nesa_quantize_write(struct nesa_model *m, struct nesa_tset *q, int default_dtype,
                                     const char *path, const struct nesa_shard_write_opts *opts,
                                     struct nesa_err *err);

/* Frees the items; the struct is zeroed.  NULL-safe. */
void nesa_quantize_report_release(struct nesa_quantize_report *rep);

/*
 * The report as JSON (new reference, NULL when out of memory):
 * {"tensors": [{"name", "shape", "from", "to", "note", "bytes_before",
 * "bytes_after", "rmse", "sqnr_db" (null when exact), "max_abs"}...],
 * "bytes_before", "bytes_after"}.
 */
json_t *nesa_quantize_report_json(const struct nesa_quantize_report *rep);

/*
 * The report as an aligned text table with a total line, for a terminal;
 * a new string (nesa_free it), NULL when out of memory.
 */
char *nesa_quantize_report_text(const struct nesa_quantize_report *rep);

struct nesa_quantize_stream_stats {
	uint64_t frames;        /* frames read, end of stream included */
	uint64_t recoded;       /* tensor frames re-encoded */
	uint64_t bytes_in;      /* payload bytes read */
	uint64_t bytes_out;     /* payload bytes written */
};

/*
 * Copies frames from in to out until the end of the stream, re-encoding
 * the payload of every floating-point or quantized tensor frame with codec
 * (fitted to the frame's last dimension as above; a frame already in the
 * fitted codec passes untouched).  Integer tensors and other frames pass
 * unchanged.  Does not close out.  st may be NULL.  Errors from either
 * stream (in's message names it) or NESA_ENOMEM.
 */
enum nesa_status nesa_quantize_stream(struct nesa_stream *in, struct nesa_stream *out, int codec,
                                      struct nesa_quantize_stream_stats *st, struct nesa_err *err);

#endif
