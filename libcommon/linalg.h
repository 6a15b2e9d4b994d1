/* SPDX-License-Identifier: MIT */
/*
 * Thin wrappers over CBLAS and LAPACKE: thread count, and LAPACKE `info`
 * turned into a status with a message naming the matrix.
 */
#ifndef NESA_LINALG_H
#define NESA_LINALG_H

#include "err.h"

/* Sets the worker count for BLAS and nesa's own kernels; 0 = one per core. */
void nesa_linalg_set_threads(int n);

/* The worker count in effect (at least 1). */
int nesa_linalg_threads(void);

#endif
