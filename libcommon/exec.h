/* SPDX-License-Identifier: MIT */
/*
 * The executor: runs the blocks of a compiled graph over a batch of rows
 * that may belong to many sessions, each session with its own KV cache.
 *
 * A batch is a list of segments; segment i holds rows[i] consecutive rows
 * of session[i] starting at position pos[i] of that session.  All rows go
 * through every row-wise op together (one GEMM per weight matrix), while
 * attention and position-dependent ops see each row's session and position.
 * A segment may restart its session at any position up to the number of
 * positions cached (the cache is cut back), never beyond.
 */
#ifndef NESA_EXEC_H
#define NESA_EXEC_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "graph.h"

struct nesa_seg {
	uint64_t session;
	uint32_t pos;   /* position of the segment's first row in its session */
	uint32_t rows;  /* rows in this segment, >= 1 */
	bool last_only; /* output heads compute only the segment's last row */
};

struct nesa_exec_opts {
	uint64_t kv_limit;       /* max KV cache bytes per session; 0 = the model's context */
	uint64_t kv_total_limit; /* max KV cache bytes over all sessions; 0 = unlimited */
	int max_sessions;        /* 0 = 4096 */
};

struct nesa_exec_stats {
	uint64_t runs;      /* nesa_exec_run calls */
	uint64_t rows;      /* rows processed */
	double seconds;     /* time inside nesa_exec_run */
	uint64_t kv_bytes;  /* KV cache bytes currently allocated */
};

struct nesa_exec;

/*
 * Creates an executor for graph g (borrowed; must outlive the executor).
 * opts may be NULL for defaults.
 */
enum nesa_status nesa_exec_new(const struct nesa_graph *g, const struct nesa_exec_opts *opts,
                               struct nesa_exec **out, struct nesa_err *err);
void nesa_exec_free(struct nesa_exec *e);

/*
 * Runs the held blocks over a batch.  in[k] holds the batch's rows of the
 * first block's k-th input: (total rows, row_elems) of f32, or of int32 for
 * token ids.  On success out[k] (for each output of the last block) points
 * to (*out_rows, row_elems) floats owned by the executor and valid until
 * the next call; *out_rows is smaller than the total rows when heads
 * selected last rows only.
 * Failures: NESA_EINVAL for a bad segment (position gap, token id out of
 * range) naming the session, NESA_ELIMIT when a session would exceed its
 * KV cache limit or the context length, NESA_ENOMEM.  Segments are checked
 * before anything runs, so a refused batch changes nothing; a batch that
 * fails while running leaves each of its sessions cut back to the position
 * where its segment began.
 */
enum nesa_status nesa_exec_run(struct nesa_exec *e, const struct nesa_seg *segs, int n_segs,
                               const void *const *in, const float **out, int64_t *out_rows,
                               struct nesa_err *err);

/* Forgets a session and frees its KV cache; unknown ids are ignored. */
void nesa_exec_end(struct nesa_exec *e, uint64_t session);

/* Number of positions cached for a session (0 if unknown). */
uint32_t nesa_exec_positions(const struct nesa_exec *e, uint64_t session);

/* Sessions currently open. */
int nesa_exec_sessions(const struct nesa_exec *e);

void nesa_exec_get_stats(const struct nesa_exec *e, struct nesa_exec_stats *st);

/* The graph the executor runs. */
const struct nesa_graph *nesa_exec_graph(const struct nesa_exec *e);

/*
 * A tap sees the input of every matrix op (linear, linear_int8) of a run
 * just before the op: x (rows, in) of op op_index of block b.  It is how
 * nesa-decompose collects calibration statistics.  A status other than
 * NESA_OK (with err set) stops the run with it.  While a tap is set, ops
 * run one by one (no fused matrix-vector products).  fn NULL removes it.
 */
typedef enum nesa_status (*nesa_exec_tap_fn)(void *ctx, const struct nesa_block *b, int op_index,
                                             const float *x, int64_t rows, struct nesa_err *err);
void nesa_exec_set_tap(struct nesa_exec *e, nesa_exec_tap_fn fn, void *ctx);

#endif
