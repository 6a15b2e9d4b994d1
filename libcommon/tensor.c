/* SPDX-License-Identifier: MIT */
/*
 * Tensors and tensor sets; see tensor.h.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tensor.h"

enum nesa_status
nesa_shape_check(int dtype, int ndim, const int64_t *shape, bool allow_empty, size_t *nbytes,
                 const char *what, struct nesa_err *err)
{
	const struct nesa_dtype_traits *tr = nesa_dtype_traits(dtype);
	int64_t n = 1;
	size_t bytes;
	int i;

	if (what == NULL)
		what = "tensor";
	if (tr == NULL)
		return nesa_err_set(err, NESA_EUNSUPPORTED, "%s has unknown dtype %d (supported: %s)",
		                    what, dtype, nesa_dtype_list());
	if (ndim < 0 || ndim > NESA_MAX_DIMS)
		return nesa_err_set(err, NESA_ESHAPE, "%s has %d dimensions (at most %d are supported)",
		                    what, ndim, NESA_MAX_DIMS);
	for (i = 0; i < ndim; i++) {
		if (shape[i] < (allow_empty ? 0 : 1))
			return nesa_err_set(err, NESA_ESHAPE, "%s has invalid dimension %d of size %lld",
			                    what, i, (long long)shape[i]);
		if (!nesa_mul_i64(n, shape[i], &n) || n > NESA_MAX_ELEMS)
			return nesa_err_set(err, NESA_ESHAPE, "%s is too large (more than 2^40 elements)",
			                    what);
	}
	if (tr->block_size > 1 && (ndim == 0 || shape[ndim - 1] % tr->block_size != 0))
		return nesa_err_set(err, NESA_ESHAPE,
		                    "%s of type %s needs a last dimension that is a multiple of %u",
		                    what, tr->name, tr->block_size);
	if (!nesa_dtype_bytes(dtype, n, &bytes))
		return nesa_err_set(err, NESA_ESHAPE, "%s is too large", what);
	if (nbytes != NULL)
		*nbytes = bytes;
	return NESA_OK;
}

enum nesa_status
nesa_tensor_init(struct nesa_tensor *t, int dtype, int ndim, const int64_t *shape,
                 struct nesa_err *err)
{
	const struct nesa_dtype_traits *tr;
	enum nesa_status s;
	size_t nbytes, step;
	int i;

	memset(t, 0, sizeof *t);
	s = nesa_shape_check(dtype, ndim, shape, true, &nbytes, NULL, err);
	if (s != NESA_OK)
		return s;
	tr = nesa_dtype_traits(dtype);
	t->dtype = (enum nesa_dtype)dtype;
	t->ndim = ndim;
	for (i = 0; i < NESA_MAX_DIMS; i++)
		t->shape[i] = i < ndim ? shape[i] : 1;
	/* The innermost stride of a block type is the bytes of one block. */
	step = tr->block_bytes;
	for (i = NESA_MAX_DIMS - 1; i >= 0; i--) {
		t->stride[i] = step;
		if (i < ndim)
			step *= (size_t)(i == ndim - 1 ? t->shape[i] / tr->block_size : t->shape[i]);
	}
	t->nbytes = nbytes;
	return NESA_OK;
}

void
nesa_tensor_release(struct nesa_tensor *t)
{
	if (t == NULL)
		return;
	nesa_free(t->name);
	if (t->flags & NESA_TENSOR_OWNS_DATA)
		nesa_aligned_free(t->data);
	memset(t, 0, sizeof *t);
}

struct nesa_tensor *
nesa_tensor_new(const char *name, int dtype, int ndim, const int64_t *shape, struct nesa_err *err)
{
	struct nesa_tensor *t = nesa_malloc(sizeof *t);

	if (t == NULL) {
		nesa_err_set(err, NESA_ENOMEM, "out of memory");
		return NULL;
	}
	if (nesa_tensor_init(t, dtype, ndim, shape, err) != NESA_OK) {
		nesa_free(t);
		return NULL;
	}
	if (name != NULL && (t->name = nesa_strdup(name)) == NULL)
		goto oom;
	t->data = nesa_aligned_alloc(t->nbytes);
	if (t->data == NULL)
		goto oom;
	memset(t->data, 0, t->nbytes);
	t->flags |= NESA_TENSOR_OWNS_DATA;
	return t;
oom:
	nesa_err_set(err, NESA_ENOMEM, "cannot allocate tensor '%s' (%zu bytes): out of memory",
	             name != NULL ? name : "", t->nbytes);
	nesa_tensor_free(t);
	return NULL;
}

void
nesa_tensor_free(struct nesa_tensor *t)
{
	if (t == NULL)
		return;
	nesa_tensor_release(t);
	nesa_free(t);
}

int64_t
nesa_tensor_nelems(const struct nesa_tensor *t)
{
	int64_t n = 1;
	int i;

	for (i = 0; i < t->ndim; i++)
		n *= t->shape[i];
	return n;
}

bool
nesa_tensor_is_contiguous(const struct nesa_tensor *t)
{
	struct nesa_tensor ref;

	if (nesa_tensor_init(&ref, t->dtype, t->ndim, t->shape, NULL) != NESA_OK)
		return false;
	return memcmp(ref.stride, t->stride, sizeof ref.stride) == 0;
}

bool
nesa_tensor_same_shape(const struct nesa_tensor *a, const struct nesa_tensor *b)
{
	int i;

	if (a->ndim != b->ndim)
		return false;
	for (i = 0; i < a->ndim; i++)
		if (a->shape[i] != b->shape[i])
			return false;
	return true;
}

char *
nesa_shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
	size_t len = 0;
	int i;

	if (size == 0)
		return buf;
	buf[0] = '\0';
	len += (size_t)snprintf(buf, size, "[");
	for (i = 0; i < ndim && len < size; i++)
		len += (size_t)snprintf(buf + len, size - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
	if (len < size)
		snprintf(buf + len, size - len, "]");
	return buf;
}

enum nesa_status
nesa_tensor_view_rows(const struct nesa_tensor *t, int64_t first, int64_t count,
                      struct nesa_tensor *view, struct nesa_err *err)
{
	if (t->ndim < 1 || first < 0 || count < 0 || first > t->shape[0] - count)
		return nesa_err_set(err, NESA_ESHAPE, "rows [%lld, %lld) out of range for '%s'",
		                    (long long)first, (long long)(first + count),
		                    t->name != NULL ? t->name : "tensor");
	*view = *t;
	view->name = NULL;
	view->flags &= ~(unsigned)NESA_TENSOR_OWNS_DATA;
	view->shape[0] = count;
	view->nbytes = (size_t)count * t->stride[0];
	if (t->data != NULL)
		view->data = (char *)t->data + (size_t)first * t->stride[0];
	return NESA_OK;
}

void
nesa_tensor_to_f32(const struct nesa_tensor *t, float *dst)
{
	nesa_dtype_traits(t->dtype)->to_f32(t->data, dst, nesa_tensor_nelems(t));
}

/* Tensor sets. */

void
nesa_tset_init(struct nesa_tset *ts)
{
	memset(ts, 0, sizeof *ts);
}

void
nesa_tset_release(struct nesa_tset *ts)
{
	size_t i;

	if (ts == NULL)
		return;
	for (i = 0; i < ts->n; i++)
		nesa_tensor_release(&ts->items[i]);
	for (i = 0; i < ts->n_allocs; i++)
		nesa_aligned_free(ts->allocs[i]);
	for (i = 0; i < ts->n_maps; i++)
		nesa_unmap(&ts->maps[i]);
	nesa_free(ts->items);
	nesa_free(ts->allocs);
	nesa_free(ts->maps);
	nesa_free(ts->index);
	memset(ts, 0, sizeof *ts);
}

static bool
grow(void **arr, size_t *cap, size_t need, size_t elem)
{
	size_t ncap, bytes;
	void *p;

	if (need <= *cap)
		return true;
	ncap = *cap ? *cap * 2 : 16;
	if (ncap < need)
		ncap = need;
	if (!nesa_mul_size(ncap, elem, &bytes))
		return false;
	p = nesa_realloc(*arr, bytes);
	if (p == NULL)
		return false;
	*arr = p;
	*cap = ncap;
	return true;
}

static uint64_t
name_hash(const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

	while (*name != '\0')
		h = (h ^ (unsigned char)*name++) * 0x100000001b3ull;
	return h;
}

/* Slot of name in the index: where it is, or the empty slot where it would go. */
static size_t
index_slot(const struct nesa_tset *ts, const char *name)
{
	size_t mask = ts->index_cap - 1, i = (size_t)name_hash(name) & mask;

	while (ts->index[i] != 0 && strcmp(ts->items[ts->index[i] - 1].name, name) != 0)
		i = (i + 1) & mask;
	return i;
}

/* Makes room for one more name, rehashing when the table would pass half full. */
static bool
index_grow(struct nesa_tset *ts)
{
	size_t cap = ts->index_cap ? ts->index_cap : 32, i, *old = ts->index, old_cap = ts->index_cap;

	if (2 * (ts->n + 1) <= ts->index_cap)
		return true;
	while (2 * (ts->n + 1) > cap)
		cap *= 2;
	ts->index = nesa_calloc(cap, sizeof *ts->index);
	if (ts->index == NULL) {
		ts->index = old;
		return false;
	}
	ts->index_cap = cap;
	for (i = 0; i < old_cap; i++)
		if (old[i] != 0)
			ts->index[index_slot(ts, ts->items[old[i] - 1].name)] = old[i];
	nesa_free(old);
	return true;
}

enum nesa_status
nesa_tset_add(struct nesa_tset *ts, const char *name, int dtype, int ndim, const int64_t *shape,
              void *data, struct nesa_tensor **out, struct nesa_err *err)
{
	struct nesa_tensor t;
	enum nesa_status s;

	if (nesa_tset_find(ts, name) != NULL)
		return nesa_err_set(err, NESA_EFORMAT, "duplicate tensor name '%s'", name);
	s = nesa_shape_check(dtype, ndim, shape, true, NULL, name, err);
	if (s != NESA_OK)
		return s;
	s = nesa_tensor_init(&t, dtype, ndim, shape, err);
	if (s != NESA_OK)
		return s;
	if (!grow((void **)&ts->items, &ts->cap, ts->n + 1, sizeof *ts->items) || !index_grow(ts) ||
	    (t.name = nesa_strdup(name)) == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot add tensor '%s': out of memory", name);
	t.data = data;
	ts->items[ts->n++] = t;
	ts->index[index_slot(ts, name)] = ts->n;
	if (out != NULL)
		*out = &ts->items[ts->n - 1];
	return NESA_OK;
}

enum nesa_status
nesa_tset_own_block(struct nesa_tset *ts, void *block, struct nesa_err *err)
{
	if (!grow((void **)&ts->allocs, &ts->cap_allocs, ts->n_allocs + 1, sizeof *ts->allocs)) {
		nesa_aligned_free(block);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	ts->allocs[ts->n_allocs++] = block;
	return NESA_OK;
}

enum nesa_status
nesa_tset_own_map(struct nesa_tset *ts, struct nesa_map *map, struct nesa_err *err)
{
	if (!grow((void **)&ts->maps, &ts->cap_maps, ts->n_maps + 1, sizeof *ts->maps)) {
		nesa_unmap(map);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	ts->maps[ts->n_maps++] = *map;
	map->addr = NULL;
	map->size = 0;
	return NESA_OK;
}

enum nesa_status
nesa_tset_alloc(struct nesa_tset *ts, const char *name, int dtype, int ndim, const int64_t *shape,
                struct nesa_tensor **out, struct nesa_err *err)
{
	struct nesa_tensor *t;
	enum nesa_status s;
	void *block;
	size_t nbytes;

	s = nesa_shape_check(dtype, ndim, shape, true, &nbytes, name, err);
	if (s != NESA_OK)
		return s;
	block = nesa_aligned_alloc(nbytes);
	if (block == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot allocate tensor '%s' (%zu bytes): out of memory",
		                    name, nbytes);
	memset(block, 0, nbytes);
	s = nesa_tset_own_block(ts, block, err);
	if (s != NESA_OK)
		return s;
	s = nesa_tset_add(ts, name, dtype, ndim, shape, block, &t, err);
	if (s != NESA_OK)
		return s;
	if (out != NULL)
		*out = t;
	return NESA_OK;
}

struct nesa_tensor *
nesa_tset_find(struct nesa_tset *ts, const char *name)
{
	size_t i;

	if (ts->index_cap == 0 || name == NULL)
		return NULL;
	i = index_slot(ts, name);
	return ts->index[i] != 0 ? &ts->items[ts->index[i] - 1] : NULL;
}
