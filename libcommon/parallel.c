/* SPDX-License-Identifier: MIT */
/*
 * The worker pool; see parallel.h.  Workers are started on first use and
 * sleep on a condition variable between jobs; a job is split into one
 * contiguous range per thread, so there is no per-item synchronisation.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>

#include "linalg.h"
#include "parallel.h"

#define MAX_WORKERS 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_t workers[MAX_WORKERS];
static int n_workers;
static uint64_t generation;
static int pending;
static int stopping;

/* The current job. */
static void (*job_fn)(void *, int64_t, int64_t);
static void *job_ctx;
static int64_t job_n, job_chunk;
static int job_parts;

static void
run_part(int part)
{
	int64_t b = (int64_t)part * job_chunk, e = b + job_chunk;

	if (e > job_n)
		e = job_n;
	if (b < e)
		job_fn(job_ctx, b, e);
}

static void *
worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint64_t seen = 0;

	pthread_mutex_lock(&lock);
	for (;;) {
		while (generation == seen && !stopping)
			pthread_cond_wait(&wake, &lock);
		if (stopping)
			break;
		seen = generation;
		if (id + 1 < job_parts) {
			pthread_mutex_unlock(&lock);
			run_part(id + 1);
			pthread_mutex_lock(&lock);
			if (--pending == 0)
				pthread_cond_signal(&done_cv);
		}
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

void
nesa_parallel_for(int64_t n, int64_t grain, void (*fn)(void *, int64_t, int64_t), void *ctx)
{
	int want = nesa_linalg_threads(), parts, i;
	int64_t chunk;

	if (grain < 1)
		grain = 1;
	if (want > MAX_WORKERS + 1)
		want = MAX_WORKERS + 1;
	parts = (int)((n + grain - 1) / grain);
	if (parts > want)
		parts = want;
	if (parts <= 1) {
		if (n > 0)
			fn(ctx, 0, n);
		return;
	}
	chunk = (n + parts - 1) / parts;
	chunk = (chunk + grain - 1) / grain * grain;
	pthread_mutex_lock(&lock);
	/* Start missing workers; on failure run with those there are. */
	while (n_workers < parts - 1 &&
	       pthread_create(&workers[n_workers], NULL, worker, (void *)(intptr_t)n_workers) == 0)
		n_workers++;
	if (parts - 1 > n_workers)
		parts = n_workers + 1;
	job_fn = fn;
	job_ctx = ctx;
	job_n = n;
	job_chunk = chunk;
	job_parts = parts;
	pending = parts - 1;
	generation++;
	pthread_cond_broadcast(&wake);
	pthread_mutex_unlock(&lock);
	run_part(0);
	pthread_mutex_lock(&lock);
	while (pending > 0)
		pthread_cond_wait(&done_cv, &lock);
	pthread_mutex_unlock(&lock);
	/* Parts past the first n_workers + 1 (if chunking left any) run here. */
	for (i = parts; (int64_t)i * chunk < n; i++)
		run_part(i);
}

void
nesa_parallel_shutdown(void)
{
	int i;

	pthread_mutex_lock(&lock);
	stopping = 1;
	pthread_cond_broadcast(&wake);
	pthread_mutex_unlock(&lock);
	for (i = 0; i < n_workers; i++)
		pthread_join(workers[i], NULL);
	n_workers = 0;
	stopping = 0;
}
