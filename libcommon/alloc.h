/* SPDX-License-Identifier: MIT */
/*
 * The one allocation hook of libcommon and checked size arithmetic.
 *
 * All library allocation goes through nesa_malloc() and friends so that tests
 * can fail the Nth allocation (nesa_set_allocator) and check that every
 * entry point returns NESA_ENOMEM cleanly and leaks nothing.  Sizes that come
 * from files are multiplied with nesa_mul_size() and friends, which refuse
 * overflow instead of wrapping.
 */
#ifndef NESA_ALLOC_H
#define NESA_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Alignment of nesa_aligned_alloc() blocks: enough for AVX-512 loads. */
#define NESA_ALIGN 64

struct nesa_allocator {
	void *(*malloc)(void *ctx, size_t size);
	void *(*realloc)(void *ctx, void *ptr, size_t size);
	void (*free)(void *ctx, void *ptr);
	void *ctx;
};

/*
 * Installs an allocator; NULL restores the C library's.  Not thread-safe:
 * call it before any other nesa function.
 */
void nesa_set_allocator(const struct nesa_allocator *a);

/* As malloc/calloc/realloc/free.  nesa_malloc(0) returns a unique pointer. */
void *nesa_malloc(size_t size);
void *nesa_calloc(size_t n, size_t size);
void *nesa_realloc(void *ptr, size_t size);
void nesa_free(void *ptr);

/* Copies a string into a new allocation; NULL on failure or NULL input. */
char *nesa_strdup(const char *s);

/*
 * NESA_ALIGN-aligned allocation, released with nesa_aligned_free (not
 * nesa_free).  Contents are uninitialised.
 */
void *nesa_aligned_alloc(size_t size);
void nesa_aligned_free(void *ptr);

/* *out = a * b (or a + b); false on overflow, *out then unspecified. */
static inline bool
nesa_mul_size(size_t a, size_t b, size_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}

static inline bool
nesa_add_size(size_t a, size_t b, size_t *out)
{
	return !__builtin_add_overflow(a, b, out);
}

static inline bool
nesa_mul_i64(int64_t a, int64_t b, int64_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}

#endif
