/* SPDX-License-Identifier: MIT */
/*
 * The worker pool; see parallel.h.  A job is split into one contiguous
 * range per thread, so there is no per-item synchronisation.
 *
 * Decoding runs one parallel job per weight matrix, a hundred or so per
 * token, with only microseconds of serial work between them: a worker that
 * went to sleep after each job would spend longer waking up than working.
 * So workers spin for a short while (SPIN_US) watching for the next job, and
 * only then sleep on a condition variable; the caller likewise spins
 * briefly for the last part to finish.  The spin is short enough that an
 * idle or shared machine loses nothing noticeable.
 */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "linalg.h"
#include "log.h"
#include "parallel.h"

#define MAX_WORKERS 64
#define SPIN_US 50.0

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_t workers[MAX_WORKERS];
static int n_workers;
static _Atomic uint64_t generation;
static _Atomic int pending;
static _Atomic int sleepers;   /* workers blocked on wake */
static _Atomic int waiting;    /* the caller is blocked on done_cv */
static _Atomic int stopping;

/* The current job, published before generation is bumped. */
struct job {
	void (*fn)(void *, int64_t, int64_t);
	void *ctx;
	int64_t n, chunk;
	int parts;
};
static struct job cur;

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void
run_part(const struct job *j, int part)
{
	int64_t b = (int64_t)part * j->chunk, e = b + j->chunk;

	if (e > j->n)
		e = j->n;
	if (b < e)
		j->fn(j->ctx, b, e);
}

/* Waits for generation to move past seen: spin first, then sleep. */
static uint64_t
next_job(uint64_t seen)
{
	double t0 = nesa_now();
	uint64_t g;
	int i = 0;

	while ((g = atomic_load(&generation)) == seen && !atomic_load(&stopping)) {
		cpu_relax();
		if (++i % 64 == 0 && (nesa_now() - t0) * 1e6 > SPIN_US) {
			pthread_mutex_lock(&lock);
			atomic_fetch_add(&sleepers, 1);
			while ((g = atomic_load(&generation)) == seen && !atomic_load(&stopping))
				pthread_cond_wait(&wake, &lock);
			atomic_fetch_sub(&sleepers, 1);
			pthread_mutex_unlock(&lock);
			return g;
		}
	}
	return g;
}

static void *
worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint64_t seen = 0;

	for (;;) {
		uint64_t g = next_job(seen);
		struct job j;

		if (atomic_load(&stopping))
			break;
		/*
		 * Copy the job, then check it is still the one announced: a worker
		 * with no part in it may see the caller move on to the next job
		 * meanwhile (a participant never does: the caller waits for it).
		 */
		j = cur;
		if (atomic_load(&generation) != g)
			continue;
		seen = g;
		if (id + 1 < j.parts) {
			run_part(&j, id + 1);
			if (atomic_fetch_sub(&pending, 1) == 1 && atomic_load(&waiting)) {
				pthread_mutex_lock(&lock);
				pthread_cond_signal(&done_cv);
				pthread_mutex_unlock(&lock);
			}
		}
	}
	return NULL;
}

void
nesa_parallel_for(int64_t n, int64_t grain, void (*fn)(void *, int64_t, int64_t), void *ctx)
{
	int want = nesa_linalg_threads(), parts, i;
	int64_t chunk;
	double t0;

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
	/* Start missing workers; on failure run with those there are. */
	pthread_mutex_lock(&lock);
	while (n_workers < parts - 1 &&
	       pthread_create(&workers[n_workers], NULL, worker, (void *)(intptr_t)n_workers) == 0)
		n_workers++;
	pthread_mutex_unlock(&lock);
	if (parts - 1 > n_workers)
		parts = n_workers + 1;
	cur = (struct job){fn, ctx, n, chunk, parts};
	atomic_store(&pending, parts - 1);
	/*
	 * Sequentially consistent: the job is visible before the new
	 * generation, and the generation before the look at sleepers below.
	 */
	atomic_fetch_add(&generation, 1);
	if (atomic_load(&sleepers) > 0) {
		pthread_mutex_lock(&lock);
		pthread_cond_broadcast(&wake);
		pthread_mutex_unlock(&lock);
	}
	run_part(&cur, 0);
	t0 = nesa_now();
	for (i = 0; atomic_load(&pending) > 0; i++) {
		cpu_relax();
		if (i % 64 == 0 && (nesa_now() - t0) * 1e6 > SPIN_US) {
			pthread_mutex_lock(&lock);
			atomic_store(&waiting, 1);
			while (atomic_load(&pending) > 0)
				pthread_cond_wait(&done_cv, &lock);
			atomic_store(&waiting, 0);
			pthread_mutex_unlock(&lock);
			break;
		}
	}
	/* Parts past the workers there are (if chunking left any) run here. */
	for (i = parts; (int64_t)i * chunk < n; i++)
		run_part(&cur, i);
}

void
nesa_parallel_shutdown(void)
{
	int i;

	pthread_mutex_lock(&lock);
	atomic_store(&stopping, 1);
	pthread_cond_broadcast(&wake);
	pthread_mutex_unlock(&lock);
	for (i = 0; i < n_workers; i++)
		pthread_join(workers[i], NULL);
	n_workers = 0;
	atomic_store(&stopping, 0);
}
