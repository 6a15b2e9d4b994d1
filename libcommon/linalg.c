/* SPDX-License-Identifier: MIT */
/*
 * CBLAS/LAPACKE wrappers; see linalg.h.
 */
#include "config.h"

#include <cblas.h>
#include <unistd.h>

#include "linalg.h"

static int n_threads = 1;

void
nesa_linalg_set_threads(int n)
{
	if (n <= 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);

		n = c > 0 ? (int)c : 1;
	}
	n_threads = n;
	openblas_set_num_threads(n);
}

int
nesa_linalg_threads(void)
{
	return n_threads;
}
