/* SPDX-License-Identifier: MIT */
/*
 * Allocation hook; see alloc.h.  Aligned blocks are carved from an ordinary
 * allocation so that they too pass through the hook: the offset to the base
 * pointer is stored just below the returned address.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"

static void *
libc_malloc(void *ctx, size_t size)
{
	(void)ctx;
	return malloc(size);
}

static void *
libc_realloc(void *ctx, void *ptr, size_t size)
{
	(void)ctx;
	return realloc(ptr, size);
}

static void
libc_free(void *ctx, void *ptr)
{
	(void)ctx;
	free(ptr);
}

static const struct nesa_allocator libc_allocator = {libc_malloc, libc_realloc, libc_free, NULL};
static struct nesa_allocator current = {libc_malloc, libc_realloc, libc_free, NULL};

void
nesa_set_allocator(const struct nesa_allocator *a)
{
	current = a != NULL ? *a : libc_allocator;
}

void *
nesa_malloc(size_t size)
{
	return current.malloc(current.ctx, size != 0 ? size : 1);
}

void *
nesa_calloc(size_t n, size_t size)
{
	size_t total;
	void *p;

	if (!nesa_mul_size(n, size, &total))
		return NULL;
	p = nesa_malloc(total);
	if (p != NULL)
		memset(p, 0, total);
	return p;
}

void *
nesa_realloc(void *ptr, size_t size)
{
	return current.realloc(current.ctx, ptr, size != 0 ? size : 1);
}

void
nesa_free(void *ptr)
{
	if (ptr != NULL)
		current.free(current.ctx, ptr);
}

char *
nesa_strdup(const char *s)
{
	size_t n;
	char *p;

	if (s == NULL)
		return NULL;
	n = strlen(s) + 1;
	p = nesa_malloc(n);
	if (p != NULL)
		memcpy(p, s, n);
	return p;
}

void *
nesa_aligned_alloc(size_t size)
{
	size_t total;
	unsigned char *base, *p;

	if (!nesa_add_size(size, NESA_ALIGN + sizeof(size_t), &total))
		return NULL;
	base = nesa_malloc(total);
	if (base == NULL)
		return NULL;
	p = base + sizeof(size_t);
	p += (NESA_ALIGN - (uintptr_t)p % NESA_ALIGN) % NESA_ALIGN;
	((size_t *)(void *)p)[-1] = (size_t)(p - base);
	return p;
}

void
nesa_aligned_free(void *ptr)
{
	unsigned char *p = ptr;

	if (p != NULL)
		nesa_free(p - ((size_t *)(void *)p)[-1]);
}
