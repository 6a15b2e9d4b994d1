/* SPDX-License-Identifier: MIT */
/*
 * Mixed matrix decomposition of weight matrices (nesa-decompose): the
 * paper's second compression and nesa's low-rank forms.  For a linear
 * weight W (m, n) of y = W x:
 *
 *   int8    LLM.int8(): W as int8 rows with one f32 scale per row, and the
 *           input columns whose activations exceed a threshold (found in
 *           calibration data and/or at run time) multiplied in f32 with
 *           their original weights (the graph's linear_int8 op);
 *   svd     truncated SVD, W ~ A B with A (m, r) and B (r, n) (a linear op
 *           with low-rank factors and no weight), optionally activation
 *           aware: ASVD input scaling or SVD-LLM whitening;
 *   lorc    a quantized Q(W) plus a low-rank compensation of its error,
 *           W ~ Q(W) + A B with A B the truncated SVD of W - Q(W).
 *
 * This module holds the numerics (SVD through LAPACKE, rank rules, int8
 * with outliers), calibration statistics gathered by running the model
 * (decompose-calib.c) and the model-level selection, graph rewriting and
 * report (decompose-model.c).  Formats and kernels are quant.h's and
 * ops.h's; the graph forms are specified in nesa-graph(5), the tool and its
 * error bounds in nesa-decompose(1).
 *
 * Matrices are row-major with the shapes given in comments, outermost
 * first, the last dimension contiguous.
 */
#ifndef NESA_DECOMPOSE_H
#define NESA_DECOMPOSE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "err.h"
#include "graph.h"
#include "model.h"
#include "shard.h"
#include "tensor.h"

enum nesa_decompose_method {
	NESA_DECOMPOSE_KEEP = 0, /* leave the weight as it is */
	NESA_DECOMPOSE_INT8,     /* LLM.int8(): int8 rows + f32 outlier columns */
	NESA_DECOMPOSE_SVD,      /* W ~ A B */
	NESA_DECOMPOSE_LORC,     /* W ~ Q(W) + A B */
};

/* The space a low-rank approximation is optimal in. */
enum nesa_decompose_scale {
	NESA_SCALE_NONE = 0, /* plain: minimises ||W - W'||_F */
	NESA_SCALE_ASVD,     /* ASVD: ||(W - W') S||_F, S = diag(mean |x_j|)^alpha */
	NESA_SCALE_WHITEN,   /* SVD-LLM: ||(W - W') X^T||_F over the calibration rows X */
};

/* How the rank of a low-rank form is chosen. */
enum nesa_rank_rule {
	NESA_RANK_UNSET = 0, /* the method's default (see nesa_decompose_default_rank) */
	NESA_RANK_FIXED,     /* value = the rank */
	NESA_RANK_RATIO,     /* the factors hold at most value * m * n elements */
	NESA_RANK_ENERGY,    /* keep at least value (0 .. 1] of the squared singular values */
	NESA_RANK_ERROR,     /* smallest rank with relative error <= value */
	NESA_RANK_BITS,      /* the factors cost at most value bits per weight of W */
};

struct nesa_rank {
	enum nesa_rank_rule rule;
	double value;
};

/* What to do with one weight. */
struct nesa_decompose_spec {
	enum nesa_decompose_method method;
	enum nesa_decompose_scale scale; /* svd, lorc */
	struct nesa_rank rank;           /* svd, lorc; UNSET: the options' rank */
	int qtype;                       /* lorc: the quantized format, a dtype id */
	int iters;                       /* lorc: alternations of Q and the factors (0, 1: plain) */
	double threshold;                /* int8: outlier threshold; < 0: the options' */
};

struct nesa_decompose_rule {
	const char *pattern; /* fnmatch(3) pattern over tensor names (borrowed) */
	struct nesa_decompose_spec spec;
};

/*
 * Parses a method: "keep", "int8", "svd", "asvd" (svd with scale=asvd),
 * "whiten" (svd with scale=whiten) or "lorc", followed by ":KEY=VALUE"
 * items: rank=N, ratio=R, energy=E, error=F, bits=B (the rank rule),
 * scale=none|asvd|whiten, type=TYPE (lorc's format: any float or quantized
 * type nesa-quantize takes; default q4_0), iters=N (lorc: alternations of
 * quantization and factors, LoftQ-style; default 1), threshold=T (int8).  A bare
 * lorc item such as "lorc:nf4" names the type.  NESA_EINVAL with a message
 * naming the bad part.
 */
enum nesa_status nesa_decompose_parse_method(const char *text, struct nesa_decompose_spec *spec,
                                             struct nesa_err *err);

/*
 * Parses a -T argument "[PATTERN=]METHOD" in place: when the text before
 * the first '=' holds no ':' it is a pattern, its '=' is overwritten with
 * NUL and *pattern points at it; otherwise *pattern is NULL (the default
 * method).  Errors as nesa_decompose_parse_method.
 */
enum nesa_status nesa_decompose_parse_rule(char *arg, const char **pattern,
                                           struct nesa_decompose_spec *spec, struct nesa_err *err);

/* Parses a rank rule: "N", "ratio=R", "energy=E", "error=F" or "bits=B". */
enum nesa_status nesa_decompose_parse_rank(const char *text, struct nesa_rank *rank,
                                           struct nesa_err *err);

/* A method as text, "svd", "whiten", "lorc:q4_0", "lorc-whiten:nf4", ... into buf. */
const char *nesa_decompose_spec_name(const struct nesa_decompose_spec *spec, char *buf, size_t size);

/* The rank rule used when neither a spec nor the options give one. */
struct nesa_rank nesa_decompose_default_rank(enum nesa_decompose_method method);

/*
 * Thin SVD of a (m, n) = U diag(s) Vt with k = min(m, n): u (m, k), s (k)
 * descending, vt (k, n).  With NESA_SVD_AUTO, LAPACKE_dgesdd (divide and
 * conquer) first and, when it does not converge, LAPACKE_dgesvd (QR
 * iteration: slower, sturdier); NESA_SVD_GESVD runs the fallback alone, so
 * tests reach it without a matrix that defeats dgesdd.  out->routine names
 * the routine whose result is in out.  Failures are NESA_ELINALG naming the
 * matrix ("cannot decompose tensor 'x': LAPACKE_dgesvd did not converge
 * (info 3)"), NESA_EINVAL for a size LAPACKE cannot take, NESA_ENOMEM; out
 * is then zeroed.  a is not modified; name is only used in messages.
 */
enum nesa_svd_driver {
	NESA_SVD_AUTO = 0, /* dgesdd, dgesvd when dgesdd does not converge */
	NESA_SVD_GESVD,    /* dgesvd only */
};

struct nesa_svd {
	int64_t m, n, k;
	double *u;           /* (m, k) */
	double *s;           /* (k) */
	double *vt;          /* (k, n) */
	const char *routine; /* "LAPACKE_dgesdd" or "LAPACKE_dgesvd" (static) */
};
enum nesa_status nesa_svd_compute(const double *a, int64_t m, int64_t n, enum nesa_svd_driver driver,
                                  const char *name, struct nesa_svd *out, struct nesa_err *err);
void nesa_svd_release(struct nesa_svd *svd); /* NULL-safe; zeroes the struct */

/*
 * The rank a rule gives for singular values s (k, descending) of a matrix
 * (m, n) being approximated by factors of r (m + n) elements:
 *   FIXED   r = value;
 *   RATIO   the largest r with r (m + n) <= value m n;
 *   BITS    the largest r with r (m + n) factor_bits <= value m n (the
 *           factors' storage over W's element count; 0 factor_bits: 32);
 *   ENERGY  the smallest r whose kept sum of s_i^2 is at least value of the
 *           total;
 *   ERROR   the smallest r whose discarded sum of s_i^2 is at most value^2
 *           ref2, i.e. relative error <= value; ref2 is the squared norm
 *           errors are relative to (0: the sum of s^2).
 * min_rank is 1 for a pure low-rank form, 0 where the factors only
 * compensate (lorc).  The result is clamped to [min_rank, k].
 */
int64_t nesa_rank_choose(const struct nesa_rank *rule, const double *s, int64_t k, int64_t m, int64_t n,
                         double ref2, double factor_bits, int64_t min_rank);

struct nesa_lowrank_opts {
	enum nesa_decompose_scale scale;
	const double *col_scale; /* ASVD: (n) positive column scales, else NULL */
	const double *gram;      /* whitening: (n, n) X^T X, lower triangle read, else NULL */
	struct nesa_rank rank;   /* must not be UNSET */
	double ref2;             /* as nesa_rank_choose; 0: the matrix's own */
	double factor_bits;      /* as nesa_rank_choose */
	int64_t min_rank;        /* as nesa_rank_choose */
};

/*
 * A truncated SVD W ~ A B in the space of the chosen scale, with the
 * singular values split evenly (A = U_r sqrt(S_r), B = sqrt(S_r) Vt_r,
 * mapped back to W's space), which keeps both factors in a similar range
 * for f16 storage.  energy and kept are the sums of all and of the kept
 * squared singular values in that space, so that, in exact arithmetic,
 *   plain:  ||W - A B||_F^2         = energy - kept
 *   ASVD:   ||(W - A B) S||_F^2     = energy - kept, S = diag(col_scale)
 *   whiten: ||(W - A B) L||_F^2     = energy - kept, L L^T = G + ridge I
 * the last being ||(W - A B) X^T||_F^2 + ridge ||W - A B||_F^2 for the
 * calibration rows X with G = X^T X: the ridge (1e-6 of G's mean diagonal,
 * grown until the Cholesky factorization succeeds) makes G positive
 * definite when some input never fired in calibration.
 */
struct nesa_lowrank {
	int64_t m, n, r;
	float *a;      /* (m, r) */
	float *b;      /* (r, n) */
	double energy; /* sum s_i^2 */
	double kept;   /* sum of the r largest s_i^2 */
	double ridge;  /* whitening: the ridge added to G's diagonal, else 0 */
};

/*
 * Computes the factors of w (m, n).  NESA_EINVAL for a missing or
 * non-positive column scale, a missing Gram matrix or rank rule, or a size
 * BLAS cannot take; LAPACKE failures as nesa_svd_compute (and for a Gram
 * matrix that stays singular, naming the tensor); NESA_ENOMEM.  On failure
 * out is zeroed.  r may be 0 (a and b are then empty allocations) when
 * o->min_rank is 0.
 */
enum nesa_status nesa_lowrank_compute(const float *w, int64_t m, int64_t n,
                                      const struct nesa_lowrank_opts *o, const char *name,
                                      struct nesa_lowrank *out, struct nesa_err *err);
void nesa_lowrank_release(struct nesa_lowrank *lr); /* NULL-safe */

/*
 * LLM.int8() weights: w8 (m, n) in [-127, 127] and scale (m) with
 * W[o, c] ~ w8[o, c] * scale[o] for every column c that is not an outlier;
 * the k outlier columns oidx (increasing) keep their weights in ow (m, k),
 * and their w8 entries are 0, so the scales come from the other columns:
 * scale[o] = max over c not in O of |W[o, c]| / 127, w8 = round(W / scale).
 *
 * Error bound of the linear_int8 product (ops.h nesa_linear_int8), stated
 * in nesa-decompose(1) and asserted by test-decompose.c: for an input row
 * x, O the static outlier columns, s_o = scale[o] and s_x = max |x_c| / 127
 * over the columns left in the int8 product (not in O, not crossing the
 * run-time threshold),
 *
 *   |y[o] - sum_c x_c W[o, c]|
 *       <= s_o / 2 * sum_{c not in O} |x_c|
 *        + s_x / 2 * sum_{c not in O} (|W[o, c]| + s_o / 2)
 *        + NESA_INT8_RTOL * sum_c |x_c W[o, c]|
 *
 * The first term is the weights' rounding (every column but the static
 * outliers, which are exact), the second the activations' rounding, the
 * last float arithmetic.  Run-time outlier columns only make it smaller.
 */
#define NESA_INT8_RTOL 1e-5

struct nesa_int8 {
	int64_t m, n, k;
	int8_t *w8;    /* (m, n) */
	float *scale;  /* (m) */
	float *ow;     /* (m, k) */
	int32_t *oidx; /* (k) */
};

/*
 * Quantizes w (m, n).  Column c is an outlier when col_absmax[c] (the
 * largest |x_c| seen in calibration; NULL: none) exceeds threshold.
 * NESA_EINVAL for a size that overflows, NESA_ENOMEM; on failure out is
 * zeroed.
 */
enum nesa_status nesa_int8_compute(const float *w, int64_t m, int64_t n, const float *col_absmax,
                                   double threshold, struct nesa_int8 *out, struct nesa_err *err);
void nesa_int8_release(struct nesa_int8 *q); /* NULL-safe */

/*
 * Calibration: statistics of the input of every matrix op of interest,
 * gathered by running the model on calibration data through an executor
 * tap.  Inputs are identified by block index and value index within the
 * compiled block; ops that share an input share its statistics.
 */
struct nesa_calib_stat {
	int block, value;  /* absolute block index, value index in the compiled block */
	int64_t n;         /* features per row */
	int64_t rows;      /* rows seen */
	float *absmax;     /* (n) max |x_j| */
	double *abssum;    /* (n) sum |x_j| */
	double *gram;      /* (n, n) sum x x^T, lower triangle (j <= i) only; NULL when not wanted */
	float *sample;     /* (n_sample, n) rows kept for output errors (reservoir) */
	int64_t n_sample, cap;
};

struct nesa_calib_opts {
	const char *path;         /* text for a token model, images for an image model */
	const char *labels;       /* images: their labels file (read, checked, not used) */
	enum nesa_layout layout;  /* images: pixel order */
	int64_t limit;            /* tokens or images to run; 0: 8192 tokens, 512 images */
	int sample_rows;          /* rows kept per input for output errors; 0: 256 */
	uint64_t seed;            /* for the row sample */
};

struct nesa_calib;

/* A calibration collector with nothing wanted yet.  o is copied (its strings are borrowed). */
enum nesa_status nesa_calib_new(const struct nesa_calib_opts *o, struct nesa_calib **out,
                                struct nesa_err *err);
void nesa_calib_free(struct nesa_calib *c); /* NULL-safe */

/*
 * Asks for the statistics of an input of n features; gram adds its Gram
 * matrix.  Asking again is fine (gram can be added later); NESA_EINVAL for
 * another n than before, NESA_ENOMEM.
 */
enum nesa_status nesa_calib_want(struct nesa_calib *c, int block, int value, int64_t n, bool gram,
                                 struct nesa_err *err);

/*
 * Adds rows x (rows, n) to the statistics of an input (ignored when not
 * wanted).  The executor tap calls it; tests may feed rows directly.
 */
enum nesa_status nesa_calib_add(struct nesa_calib *c, int block, int value, const float *x,
                                int64_t rows, struct nesa_err *err);

/*
 * Runs the model g (compiled from m's graph and weights) over the
 * calibration data: text as nesa-route(1)'s perplexity protocol cuts it
 * (paragraphs with BOS, windows of the context up to 512 tokens), images
 * in batches.  Errors name the calibration file: NESA_ENOENT, NESA_EINVAL
 * (no tokenizer, no rows), those of the loaders and the executor.
 */
enum nesa_status nesa_calib_run(struct nesa_calib *c, struct nesa_model *m,
                                const struct nesa_graph *g, struct nesa_err *err);

/* The statistics of an input, or NULL when not wanted. */
const struct nesa_calib_stat *nesa_calib_find(const struct nesa_calib *c, int block, int value);

/* Rows the model ran (tokens or images). */
int64_t nesa_calib_rows(const struct nesa_calib *c);

/* Model-level decomposition. */

enum nesa_outliers {
	NESA_OUTLIERS_AUTO = 0, /* both with calibration data, runtime without */
	NESA_OUTLIERS_CALIB,    /* columns from calibration only */
	NESA_OUTLIERS_RUNTIME,  /* detected at run time only */
	NESA_OUTLIERS_BOTH,
	NESA_OUTLIERS_NONE,     /* plain vector-wise int8 */
};

struct nesa_decompose_opts {
	struct nesa_decompose_spec def;         /* for linear weights no rule names */
	const struct nesa_decompose_rule *rules; /* (n_rules) first match wins; may be NULL */
	size_t n_rules;
	struct nesa_rank rank;       /* rank rule for specs without one; UNSET: the method's default */
	int factor_dtype;            /* storage of the low-rank factors (fitted to their rows) */
	double threshold;            /* int8 outlier threshold (LLM.int8(): 6) */
	enum nesa_outliers outliers;
	double alpha;                /* ASVD exponent (0.5) */
	const struct nesa_calib_opts *calib; /* calibration data, or NULL */
};

/* Sensible defaults: int8, threshold 6, f16 factors, alpha 0.5, no calibration. */
void nesa_decompose_opts_init(struct nesa_decompose_opts *o);

/* What happened to one weight. */
struct nesa_decompose_stat {
	char name[256];
	char method[48];        /* "int8", "svd", "whiten", "lorc:q4_0", "keep" */
	int ndim;
	int64_t shape[4];
	int from;               /* source dtype */
	uint64_t bytes_before, bytes_after;
	int64_t rank;           /* low-rank forms: r; else -1 */
	int64_t outliers;       /* int8: static outlier columns; else -1 */
	double frob;            /* ||W - W'||_F / ||W||_F, from the stored tensors */
	double out_err;         /* ||W x - W' x|| / ||W x|| over calibration rows; NAN without */
	char note[96];          /* why: "default", "rule 'blk.*'", "embedding", ... */
};

struct nesa_decompose_report {
	struct nesa_decompose_stat *items; /* (n) in the graph's weight order */
	size_t n;
	uint64_t bytes_before, bytes_after;
	int64_t outlier_cols, int8_cols;   /* static outlier columns over all int8 matrices' columns */
	int64_t calib_rows;                /* tokens or images of calibration, 0 without */
	double seconds;                    /* wall time of the decomposition, calibration included */
};

/* The result: a graph and the weights it references. */
struct nesa_decomposed {
	json_t *graph;        /* the rewritten graph document (owned) */
	struct nesa_tset ts;  /* every weight the graph references; kept ones share m's memory */
	json_t *record;       /* what was done, for meta.decomposition (owned) */
};

/*
 * Decomposes the linear weights m's graph references.  Selection, in order,
 * for each weight: a weight that is not the weight of a plain linear op
 * (norms, biases, convolutions, embedding-only tables, factors and int8
 * weights already decomposed) and every tensor that is not 2-D is kept; the
 * first rule whose pattern matches the name decides; an embedding table
 * shared with an output head is kept; other linear weights get o->def.
 * Only the linear uses of a weight change: an embedding keeps the original
 * table.  Runs the calibration first when o->calib is set (the methods
 * that need it fail with NESA_EINVAL naming the tensor without it).  d
 * must outlive nothing of m's: it borrows m's weights (release d first).
 * rep (may be NULL) receives one item per weight.  Errors name the tensor.
 */
enum nesa_status nesa_decompose_model(struct nesa_model *m, const struct nesa_decompose_opts *o,
                                      struct nesa_decomposed *d, struct nesa_decompose_report *rep,
                                      struct nesa_err *err);

/*
 * Writes m with d's graph and weights as one shard archive of all blocks m
 * holds (nesa_model_write_shard): same tokenizer and identity, plus
 * meta.decomposition.  m is unchanged afterwards except for that meta entry.
 */
enum nesa_status nesa_decompose_write(struct nesa_model *m, struct nesa_decomposed *d, const char *path,
                                      const struct nesa_shard_write_opts *opts, struct nesa_err *err);

void nesa_decomposed_release(struct nesa_decomposed *d);           /* NULL-safe */
void nesa_decompose_report_release(struct nesa_decompose_report *rep); /* NULL-safe */

/*
 * The report as JSON (new reference, NULL when out of memory):
 * {"tensors": [{"name", "shape", "from", "method", "note", "bytes_before",
 * "bytes_after", "rank" (or null), "outliers" (or null), "frob_err",
 * "out_err" (or null)}...], "bytes_before", "bytes_after", "outlier_cols",
 * "int8_cols", "outlier_share", "calib_rows", "seconds"}.
 */
json_t *nesa_decompose_report_json(const struct nesa_decompose_report *rep);

/* The report as an aligned text table with a total line; nesa_free it; NULL when out of memory. */
char *nesa_decompose_report_text(const struct nesa_decompose_report *rep);

#endif
