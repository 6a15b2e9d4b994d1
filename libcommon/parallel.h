/* SPDX-License-Identifier: MIT */
/*
 * A small fixed pool of worker threads for nesa's own kernels (quantized
 * matrix products, attention over heads).  BLAS keeps its own threads; the
 * pool is sized by the same -t option (nesa_linalg_set_threads).
 */
#ifndef NESA_PARALLEL_H
#define NESA_PARALLEL_H

#include <stdint.h>

/*
 * Calls fn(ctx, begin, end) on disjoint ranges covering [0, n), in parallel
 * on up to nesa_linalg_threads() threads (the caller's included), and
 * returns when all are done.  Ranges are multiples of grain (except the
 * last).  Small n runs on the calling thread.  Not reentrant: fn must not
 * call nesa_parallel_for itself.
 */
void nesa_parallel_for(int64_t n, int64_t grain, void (*fn)(void *ctx, int64_t begin, int64_t end),
                       void *ctx);

/* Stops the workers (tests and leak checkers call it at exit). */
void nesa_parallel_shutdown(void);

#endif
