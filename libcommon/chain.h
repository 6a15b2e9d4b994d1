/* SPDX-License-Identifier: MIT */
/*
 * A chain of stages that together run a whole model, seen from the client:
 * rows in, the last block's output rows out.  The local backend runs every
 * block in this process; the pipeline backend (pipeline.h) sends frames
 * through stage processes or TCP peers.  generate, perplexity and classify
 * (eval.h) are written once against this interface, which is why a model
 * split across machines gives exactly what it gives in one process.
 */
#ifndef NESA_CHAIN_H
#define NESA_CHAIN_H

#include <stdint.h>

#include "err.h"
#include "exec.h"
#include "model.h"

struct nesa_chain_ops {
	/*
	 * Runs a batch: in holds the rows of the model input (int32 token ids
	 * or f32 rows of in_elems); on success *out points to *out_rows rows of
	 * out_elems floats, valid until the next call.
	 */
	enum nesa_status (*run)(void *impl, const struct nesa_seg *segs, int n_segs, const void *in,
	                        const float **out, int64_t *out_rows, struct nesa_err *err);
	void (*end)(void *impl, uint64_t session);
	void (*free)(void *impl);
	/*
	 * Optional, for keeping several batches in flight through a pipeline:
	 * submit sends a batch and returns at once; collect waits for the
	 * oldest submitted batch's output (same contract as run's *out).
	 * Outputs come back in submission order.  NULL when the chain runs
	 * one batch at a time.
	 */
	enum nesa_status (*submit)(void *impl, const struct nesa_seg *segs, int n_segs, const void *in,
	                           struct nesa_err *err);
	enum nesa_status (*collect)(void *impl, const float **out, int64_t *out_rows,
	                            struct nesa_err *err);
	/* Optional: writes a per-stage summary (-v) through the log. */
	void (*report)(void *impl);
	/*
	 * Optional: after a failure, starts the chain again from scratch.
	 * Sessions are gone; the caller replays the rows it had sent.
	 */
	enum nesa_status (*restart)(void *impl, struct nesa_err *err);
};

struct nesa_chain {
	const struct nesa_chain_ops *ops;
	void *impl;
	int in_dtype;          /* NESA_I32 (token ids, one per row) or NESA_F32 */
	int64_t in_shape[3];   /* per-row input shape (f32) */
	int in_ndim;
	int64_t in_elems;      /* elements per input row */
	int64_t out_elems;     /* floats per output row (vocabulary, classes) */
	int max_positions;     /* context length, 0 = unlimited */
};

/*
 * A chain running the n models m[0..n) one after another in this process:
 * one whole model, or the shards of one model in block order (each a slice
 * continuing where the previous ended, all with the same identity).  The
 * models are borrowed and must outlive the chain.  NESA_EINVAL when the
 * slices do not cover the model exactly or come from different models.
 */
enum nesa_status nesa_chain_local(struct nesa_model **m, int n, const struct nesa_exec_opts *opts,
                                  struct nesa_chain **out, struct nesa_err *err);

static inline enum nesa_status
nesa_chain_run(struct nesa_chain *c, const struct nesa_seg *segs, int n_segs, const void *in,
               const float **out, int64_t *out_rows, struct nesa_err *err)
{
	return c->ops->run(c->impl, segs, n_segs, in, out, out_rows, err);
}

static inline void
nesa_chain_end(struct nesa_chain *c, uint64_t session)
{
	c->ops->end(c->impl, session);
}

void nesa_chain_free(struct nesa_chain *c);

#endif
