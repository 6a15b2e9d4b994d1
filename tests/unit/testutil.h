/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the cmocka unit tests: the includes cmocka needs in
 * the order it needs them, a seeded generator, and allocation fault
 * injection through nesa_set_allocator.
 */
#ifndef NESA_TESTUTIL_H
#define NESA_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "alloc.h"

/* splitmix64: a small seeded generator so tests are reproducible. */
static inline uint64_t
test_rand(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform float in [-1, 1). */
static inline float
test_randf(uint64_t *state)
{
	return (float)((double)(test_rand(state) >> 11) * 0x1p-53 * 2.0 - 1.0);
}

/*
 * Fault injection: the Nth allocation from now (1-based) and every later one
 * fail while armed; the count of allocations made is kept so a test can loop
 * N = 1, 2, ... until an operation succeeds.
 */
struct test_faults {
	long fail_at; /* 0 = never fail */
	long count;
};

static struct test_faults test_faults_state;

static inline void *
test_fault_malloc(void *ctx, size_t size)
{
	struct test_faults *f = ctx;

	if (f->fail_at > 0 && ++f->count >= f->fail_at)
		return NULL;
	return malloc(size);
}

static inline void *
test_fault_realloc(void *ctx, void *ptr, size_t size)
{
	struct test_faults *f = ctx;

	if (f->fail_at > 0 && ++f->count >= f->fail_at)
		return NULL;
	return realloc(ptr, size);
}

static inline void
test_fault_free(void *ctx, void *ptr)
{
	(void)ctx;
	free(ptr);
}

static inline void
test_faults_arm(long fail_at)
{
	static const struct nesa_allocator a = {test_fault_malloc, test_fault_realloc,
	                                        test_fault_free, &test_faults_state};

	test_faults_state.fail_at = fail_at;
	test_faults_state.count = 0;
	nesa_set_allocator(&a);
}

static inline void
test_faults_disarm(void)
{
	nesa_set_allocator(NULL);
	test_faults_state.fail_at = 0;
}

/* A fresh temporary directory for a test; removed by the caller with rm. */
static inline char *
test_tmpdir(void)
{
	static char buf[256];
	const char *base = getenv("TMPDIR");

	snprintf(buf, sizeof buf, "%s/nesa-test-XXXXXX", base != NULL ? base : "/tmp");
	return mkdtemp(buf);
}

#endif
