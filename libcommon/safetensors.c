/* SPDX-License-Identifier: MIT */
/*
 * safetensors reader; see safetensors.h for the format (Hugging Face
 * safetensors README, "Format") and the sharded-checkpoint conventions
 * (transformers' model.safetensors.index.json).
 *
 * Each file is checked completely before any of its tensors is added:
 * header length, JSON shape of every entry, offsets against the buffer,
 * sizes against dtype and shape, then overlaps over all entries sorted by
 * offset.  Only then are tensors added, viewing the mapping.
 */
#include "config.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "safetensors.h"
#include "xio.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SUFFIX ".safetensors"

/*
 * safetensors dtype names, element sizes, and the nesa dtype if loaded.
 * Sizes of the types nesa skips let their data_offsets be checked as well;
 * an unknown name (a dtype newer than this table, or a sub-byte type) is
 * skipped with only its offsets checked against the buffer.
 */
static const struct st_dtype {
	const char *name;
	unsigned size;
	bool load;
	int dtype;
} st_dtypes[] = {
	{"F32", 4, true, NESA_F32},     {"F16", 2, true, NESA_F16},   {"BF16", 2, true, NESA_BF16},
	{"I32", 4, true, NESA_I32},     {"I8", 1, true, NESA_I8},     {"U8", 1, true, NESA_U8},
	{"F64", 8, false, 0},           {"I64", 8, false, 0},         {"U64", 8, false, 0},
	{"I16", 2, false, 0},           {"U16", 2, false, 0},         {"U32", 4, false, 0},
	{"BOOL", 1, false, 0},          {"F8_E4M3", 1, false, 0},     {"F8_E5M2", 1, false, 0},
	{"F8_E8M0", 1, false, 0},       {"C64", 8, false, 0},
};

static const struct st_dtype *
find_dtype(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
		if (strcmp(st_dtypes[i].name, name) == 0)
			return &st_dtypes[i];
	return NULL;
}

/* One header entry, checked. */
struct entry {
	const char *name;      /* key in the header JSON */
	const char *dtype;     /* dtype string in the header JSON */
	const struct st_dtype *dt; /* NULL for an unknown dtype */
	int ndim;
	int64_t shape[NESA_MAX_DIMS];
	uint64_t begin, end;   /* relative to the byte buffer */
};

static enum nesa_status
oom(const char *path, struct nesa_err *err)
{
	return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", path);
}

/*
 * A JSON integer in [0, INT64_MAX], or -1.  jansson refuses integers beyond
 * the int64 range when parsing, so no value here has wrapped.
 */
static int64_t
json_count(const json_t *v)
{
	json_int_t i;

	if (!json_is_integer(v))
		return -1;
	i = json_integer_value(v);
	return i < 0 ? -1 : (int64_t)i;
}

/*
 * Checks one "name": {dtype, shape, data_offsets} entry against the buffer
 * of buf_size bytes and fills *e.  Nothing is allocated: the JSON values are
 * inspected in place, and e's strings point into the header document.
 */
static enum nesa_status
check_entry(const char *path, const char *name, const json_t *obj, uint64_t buf_size,
            struct entry *e, struct nesa_err *err)
{
	const json_t *shape, *offs;
	uint64_t want = 0;
	char sh[128];
	size_t i;

	memset(e, 0, sizeof *e);
	e->name = name;
	if (!json_is_object(obj))
		return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': tensor '%s' is not a JSON object",
		                    path, name);
	e->dtype = json_string_value(json_object_get(obj, "dtype"));
	shape = json_object_get(obj, "shape");
	offs = json_object_get(obj, "data_offsets");
	if (e->dtype == NULL || !json_is_array(shape) || !json_is_array(offs) ||
	    json_array_size(offs) != 2)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': tensor '%s' needs a string dtype, a shape array "
		                    "and two data_offsets",
		                    path, name);
	if (json_array_size(shape) > NESA_MAX_DIMS)
		return nesa_err_set(err, NESA_ESHAPE,
		                    "cannot read '%s': tensor '%s' has %zu dimensions (at most %d)", path,
		                    name, json_array_size(shape), NESA_MAX_DIMS);
	e->ndim = (int)json_array_size(shape);
	for (i = 0; i < (size_t)e->ndim; i++) {
		e->shape[i] = json_count(json_array_get(shape, i));
		if (e->shape[i] < 0)
			return nesa_err_set(err, NESA_ESHAPE,
			                    "cannot read '%s': tensor '%s' has an invalid dimension %zu "
			                    "(not a non-negative integer)",
			                    path, name, i);
	}
	{
		int64_t b = json_count(json_array_get(offs, 0)), en = json_count(json_array_get(offs, 1));

		if (b < 0 || en < 0)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "cannot read '%s': tensor '%s' has invalid data_offsets (not "
			                    "non-negative integers)",
			                    path, name);
		e->begin = (uint64_t)b;
		e->end = (uint64_t)en;
	}
	if (e->begin > e->end)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': tensor '%s' data_offsets [%llu, %llu) end before "
		                    "they begin",
		                    path, name, (unsigned long long)e->begin, (unsigned long long)e->end);
	if (e->end > buf_size)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': tensor '%s' data_offsets [%llu, %llu) extend past "
		                    "the end of the data (%llu bytes)",
		                    path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
		                    (unsigned long long)buf_size);
	e->dt = find_dtype(e->dtype);
	if (e->dt == NULL)
		return NESA_OK; /* listed as skipped; its size cannot be checked */
	if (e->dt->load) {
		char subject[300];
		size_t nb;
		enum nesa_status s;

		snprintf(subject, sizeof subject, "tensor '%s'", name);
		s = nesa_shape_check(e->dt->dtype, e->ndim, e->shape, true, &nb, subject, err);
		if (s != NESA_OK) {
			nesa_err_prefix(err, "cannot read '%s'", path);
			return s;
		}
		want = nb;
	} else {
		int64_t n = 1;

		for (i = 0; i < (size_t)e->ndim; i++)
			if (!nesa_mul_i64(n, e->shape[i], &n) || n > NESA_MAX_ELEMS)
				return nesa_err_set(err, NESA_ESHAPE,
				                    "cannot read '%s': tensor '%s' is too large (more than 2^40 "
				                    "elements)",
				                    path, name);
		want = (uint64_t)n * e->dt->size;
	}
	if (e->end - e->begin != want)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': tensor '%s' data_offsets [%llu, %llu) do not match "
		                    "its %s shape %s (%llu bytes)",
		                    path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
		                    e->dtype, nesa_shape_str(e->ndim, e->shape, sh, sizeof sh),
		                    (unsigned long long)want);
	return NESA_OK;
}

static int
cmp_begin(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *)a, *y = *(const struct entry *const *)b;

	return (x->begin > y->begin) - (x->begin < y->begin);
}

/* No two entries may share bytes; empty ones take none. */
static enum nesa_status
check_overlaps(const char *path, struct entry *ents, size_t n, struct nesa_err *err)
{
	struct entry **idx;
	enum nesa_status s = NESA_OK;
	size_t i, m = 0;

	if (n < 2)
		return NESA_OK;
	idx = nesa_malloc(n * sizeof *idx);
	if (idx == NULL)
		return oom(path, err);
	for (i = 0; i < n; i++)
		if (ents[i].end > ents[i].begin)
			idx[m++] = &ents[i];
	qsort(idx, m, sizeof *idx, cmp_begin);
	for (i = 1; i < m; i++)
		if (idx[i - 1]->end > idx[i]->begin) {
			s = nesa_err_set(err, NESA_EFORMAT,
			                 "cannot read '%s': tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) "
			                 "overlap",
			                 path, idx[i - 1]->name, (unsigned long long)idx[i - 1]->begin,
			                 (unsigned long long)idx[i - 1]->end, idx[i]->name,
			                 (unsigned long long)idx[i]->begin, (unsigned long long)idx[i]->end);
			break;
		}
	nesa_free(idx);
	return s;
}

/*
 * Adds a tensor viewing the mapping, or a copy the set owns when the
 * address is not aligned for the dtype (a misaligned float pointer is
 * undefined behaviour in C).
 */
static enum nesa_status
add_mapped(struct nesa_tset *ts, const char *name, int dtype, int ndim, const int64_t *shape,
           const void *data, size_t nbytes, struct nesa_err *err)
{
	size_t align = nesa_dtype_traits(dtype)->block_bytes;
	struct nesa_tensor *t;
	enum nesa_status s;

	if ((uintptr_t)data % align == 0) {
		s = nesa_tset_add(ts, name, dtype, ndim, shape, (void *)(uintptr_t)data, &t, err);
		if (s == NESA_OK)
			t->flags |= NESA_TENSOR_READONLY;
		return s;
	}
	s = nesa_tset_alloc(ts, name, dtype, ndim, shape, &t, err);
	if (s == NESA_OK && nbytes > 0)
		memcpy(t->data, data, nbytes);
	return s;
}

const struct nesa_st_skipped *
nesa_safetensors_find_skipped(const struct nesa_safetensors *st, const char *name)
{
	size_t i;

	for (i = 0; i < st->n_skipped; i++)
		if (strcmp(st->skipped[i].name, name) == 0)
			return &st->skipped[i];
	return NULL;
}

/* Adds a checked entry to the set, or to the skipped list. */
static enum nesa_status
add_entry(struct nesa_safetensors *st, const char *path, const struct entry *e,
          const unsigned char *buf, struct nesa_err *err)
{
	struct nesa_st_skipped *k;
	enum nesa_status s;

	/* Names must be unique across shards and across loaded and skipped. */
	if (nesa_tset_find(&st->tensors, e->name) != NULL ||
	    nesa_safetensors_find_skipped(st, e->name) != NULL)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': duplicate tensor name '%s'",
		                    path, e->name);
	if (e->dt != NULL && e->dt->load) {
		s = add_mapped(&st->tensors, e->name, e->dt->dtype, e->ndim, e->shape, buf + e->begin,
		               (size_t)(e->end - e->begin), err);
		if (s != NESA_OK)
			nesa_err_prefix(err, "cannot read '%s'", path);
		return s;
	}
	k = nesa_realloc(st->skipped, (st->n_skipped + 1) * sizeof *st->skipped);
	if (k == NULL)
		return oom(path, err);
	st->skipped = k;
	k = &st->skipped[st->n_skipped];
	memset(k, 0, sizeof *k);
	k->name = nesa_strdup(e->name);
	k->dtype = nesa_strdup(e->dtype);
	if (k->name == NULL || k->dtype == NULL) {
		nesa_free(k->name);
		nesa_free(k->dtype);
		return oom(path, err);
	}
	k->ndim = e->ndim;
	memcpy(k->shape, e->shape, sizeof k->shape);
	st->n_skipped++;
	return NESA_OK;
}

/* Parses a JSON document of len bytes, mapping jansson's errors to ours. */
static enum nesa_status
parse_json(const char *path, const char *what, const char *text, size_t len, json_t **out,
           struct nesa_err *err)
{
	json_malloc_t jmalloc;
	json_free_t jfree;
	json_error_t jerr;
	void *probe;

	*out = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (*out != NULL)
		return NESA_OK;
	/*
	 * jansson reports some allocation failures as syntax errors ("string or
	 * '}' expected") or with no message at all.  When its allocator cannot
	 * even provide a small block now, out of memory is the likelier cause.
	 */
	json_get_alloc_funcs(&jmalloc, &jfree);
	probe = jmalloc(256);
	jfree(probe);
	if (json_error_code(&jerr) == json_error_out_of_memory || probe == NULL)
		return oom(path, err);
	return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': invalid JSON %s: %s at byte %d",
	                    path, what, jerr.text, jerr.position);
}

/*
 * Reads one .safetensors file into st.  With an index, weight_map maps
 * tensor names to shard names and shard is this file's name in it.
 */
static enum nesa_status
load_file(struct nesa_safetensors *st, const char *path, const json_t *weight_map,
          const char *shard, struct nesa_err *err)
{
	const unsigned char *base, *buf;
	struct nesa_map map;
	struct entry *ents = NULL;
	json_t *hdr = NULL, *v, *meta;
	const char *key;
	uint64_t size, hlen, buf_size;
	size_t n = 0, i;
	enum nesa_status s;

	if ((s = nesa_map_file(path, &map, err)) != NESA_OK)
		return s;
	base = map.addr;
	size = map.size;
	/* The set owns the mapping from here on, even on failure. */
	if ((s = nesa_tset_own_map(&st->tensors, &map, err)) != NESA_OK) {
		nesa_err_prefix(err, "cannot read '%s'", path);
		return s;
	}
	st->n_files++;
	if (size < 8)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': file of %llu bytes is too short for a safetensors "
		                    "header",
		                    path, (unsigned long long)size);
	hlen = 0;
	for (i = 0; i < 8; i++)
		hlen |= (uint64_t)base[i] << (8 * i);
	if (hlen > NESA_ST_MAX_HEADER)
		return nesa_err_set(err, NESA_ELIMIT,
		                    "cannot read '%s': header length %llu exceeds the limit of %llu bytes",
		                    path, (unsigned long long)hlen, (unsigned long long)NESA_ST_MAX_HEADER);
	if (hlen > size - 8)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read '%s': header length %llu extends past end of file (%llu "
		                    "bytes)",
		                    path, (unsigned long long)hlen, (unsigned long long)size);
	/* Offsets count from the byte after the header; no alignment is promised. */
	buf = base + 8 + hlen;
	buf_size = size - 8 - hlen;
	if ((s = parse_json(path, "header", (const char *)base + 8, (size_t)hlen, &hdr, err)) != NESA_OK)
		return s;
	if (!json_is_object(hdr)) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': header is not a JSON object", path);
		goto out;
	}
	meta = json_object_get(hdr, "__metadata__");
	if (meta != NULL && !json_is_object(meta)) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': __metadata__ is not a JSON object",
		                 path);
		goto out;
	}
	if (meta != NULL && json_object_update_missing(st->metadata, meta) != 0) {
		s = oom(path, err);
		goto out;
	}
	if (json_object_size(hdr) > 0) {
		ents = nesa_malloc(json_object_size(hdr) * sizeof *ents);
		if (ents == NULL) {
			s = oom(path, err);
			goto out;
		}
	}
	json_object_foreach(hdr, key, v) {
		const char *mapped;

		if (strcmp(key, "__metadata__") == 0)
			continue;
		if ((s = check_entry(path, key, v, buf_size, &ents[n], err)) != NESA_OK)
			goto out;
		n++;
		if (weight_map == NULL)
			continue;
		/* Tensors the index does not list are kept; listed ones must be here. */
		mapped = json_string_value(json_object_get(weight_map, key));
		if (mapped != NULL && strcmp(mapped, shard) != 0) {
			s = nesa_err_set(err, NESA_EFORMAT,
			                 "cannot read '%s': tensor '%s' is in this shard but the index maps "
			                 "it to '%s'",
			                 path, key, mapped);
			goto out;
		}
	}
	if ((s = check_overlaps(path, ents, n, err)) != NESA_OK)
		goto out;
	for (i = 0; i < n; i++)
		if ((s = add_entry(st, path, &ents[i], buf, err)) != NESA_OK)
			goto out;
out:
	nesa_free(ents);
	json_decref(hdr); /* entry names point into it: free last */
	return s;
}

/* dir + "/" + name in a new allocation, or NULL. */
static char *
join(const char *dir, size_t dirlen, const char *name)
{
	size_t n = strlen(name);
	char *p = nesa_malloc(dirlen + 1 + n + 1);

	if (p == NULL)
		return NULL;
	memcpy(p, dir, dirlen);
	p[dirlen] = '/';
	memcpy(p + dirlen + 1, name, n + 1);
	return p;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Shard names as an index may give them: a plain file name in its directory. */
static bool
plain_name(const char *s)
{
	return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/*
 * An index: loads each shard it names once, checking that every tensor a
 * shard holds is either unlisted or listed for that shard, and finally that
 * every listed tensor was found.  Shard names must be plain file names: an
 * index must not send the reader to files outside its own directory.
 */
static enum nesa_status
open_index(struct nesa_safetensors *st, const char *path, struct nesa_err *err)
{
	const char *slash = strrchr(path, '/'), *key, **shards = NULL;
	size_t dirlen = slash != NULL ? (size_t)(slash - path) : 1;
	const char *dir = slash != NULL ? path : ".";
	json_t *root = NULL, *wm, *meta, *v;
	size_t len, n = 0, i, u;
	char *text = NULL;
	enum nesa_status s;

	if (slash == path)
		dirlen = 0; /* "/x.json": the root directory, joined as "/shard" */
	if ((s = nesa_read_file(path, NESA_ST_MAX_HEADER, &text, &len, err)) != NESA_OK)
		return s;
	if ((s = parse_json(path, "index", text, len, &root, err)) != NESA_OK)
		goto out;
	wm = json_object_get(root, "weight_map");
	if (!json_is_object(wm)) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': index has no weight_map object",
		                 path);
		goto out;
	}
	meta = json_object_get(root, "metadata");
	if (meta != NULL && json_is_object(meta) && json_object_update(st->metadata, meta) != 0) {
		s = oom(path, err);
		goto out;
	}
	if (json_object_size(wm) > 0) {
		shards = nesa_malloc(json_object_size(wm) * sizeof *shards);
		if (shards == NULL) {
			s = oom(path, err);
			goto out;
		}
	}
	json_object_foreach(wm, key, v) {
		const char *f = json_string_value(v);

		if (f == NULL || !plain_name(f)) {
			s = nesa_err_set(err, NESA_EFORMAT,
			                 "cannot read '%s': weight_map entry '%s' is not a file name in the "
			                 "index's directory",
			                 path, key);
			goto out;
		}
		shards[n++] = f;
	}
	/* Each shard once, in name order. */
	qsort(shards, n, sizeof *shards, cmp_str);
	for (i = 0, u = 0; i < n; i++)
		if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0)
			shards[u++] = shards[i];
	if (u > NESA_ST_MAX_SHARDS) {
		s = nesa_err_set(err, NESA_ELIMIT, "cannot read '%s': %zu shards (at most %d)", path, u,
		                 NESA_ST_MAX_SHARDS);
		goto out;
	}
	for (i = 0; i < u; i++) {
		char *sp = join(dir, dirlen, shards[i]);

		if (sp == NULL) {
			s = oom(path, err);
			goto out;
		}
		s = load_file(st, sp, wm, shards[i], err);
		nesa_free(sp);
		if (s != NESA_OK)
			goto out;
	}
	/* Every listed tensor must have turned up in its shard. */
	json_object_foreach(wm, key, v) {
		if (nesa_tset_find(&st->tensors, key) == NULL &&
		    nesa_safetensors_find_skipped(st, key) == NULL) {
			s = nesa_err_set(err, NESA_EFORMAT,
			                 "cannot read '%s': tensor '%s' is missing from shard '%s'", path,
			                 key, json_string_value(v));
			goto out;
		}
	}
out:
	nesa_free(shards);
	json_decref(root);
	nesa_free(text);
	return s;
}

/* A directory: its index if it has one, else all *.safetensors files. */
static enum nesa_status
open_dir(struct nesa_safetensors *st, const char *path, struct nesa_err *err)
{
	size_t dirlen = strlen(path), n = 0, cap = 0, i;
	char **names = NULL, *p;
	struct dirent *de;
	enum nesa_status s = NESA_OK;
	DIR *d;

	p = join(path, dirlen, INDEX_NAME);
	if (p == NULL)
		return oom(path, err);
	if (access(p, F_OK) == 0) {
		s = open_index(st, p, err);
		nesa_free(p);
		return s;
	}
	nesa_free(p);
	d = opendir(path);
	if (d == NULL)
		return nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);

		if (len <= strlen(SUFFIX) || strcmp(de->d_name + len - strlen(SUFFIX), SUFFIX) != 0)
			continue;
		if (n == NESA_ST_MAX_SHARDS) {
			s = nesa_err_set(err, NESA_ELIMIT, "cannot read '%s': more than %d .safetensors "
			                 "files", path, NESA_ST_MAX_SHARDS);
			goto out;
		}
		if (n == cap) {
			char **nn = nesa_realloc(names, (cap = cap ? cap * 2 : 16) * sizeof *names);

			if (nn == NULL) {
				s = oom(path, err);
				goto out;
			}
			names = nn;
		}
		if ((names[n] = nesa_strdup(de->d_name)) == NULL) {
			s = oom(path, err);
			goto out;
		}
		n++;
	}
	if (n == 0) {
		s = nesa_err_set(err, NESA_ENOENT, "cannot read '%s': no %s or *%s files in the directory",
		                 path, INDEX_NAME, SUFFIX);
		goto out;
	}
	qsort(names, n, sizeof *names, cmp_str);
	for (i = 0; i < n && s == NESA_OK; i++) {
		p = join(path, dirlen, names[i]);
		if (p == NULL) {
			s = oom(path, err);
			break;
		}
		s = load_file(st, p, NULL, NULL, err);
		nesa_free(p);
	}
out:
	closedir(d);
	for (i = 0; i < n; i++)
		nesa_free(names[i]);
	nesa_free(names);
	return s;
}

enum nesa_status
nesa_safetensors_open(const char *path, struct nesa_safetensors **out, struct nesa_err *err)
{
	struct nesa_safetensors *st;
	struct stat sb;
	size_t len = strlen(path);
	enum nesa_status s;

	*out = NULL;
	st = nesa_calloc(1, sizeof *st);
	if (st == NULL)
		return oom(path, err);
	nesa_tset_init(&st->tensors);
	st->metadata = json_object();
	if (st->metadata == NULL) {
		nesa_free(st);
		return oom(path, err);
	}
	/* What path names decides the layout; a file is taken by its suffix. */
	if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
		s = open_dir(st, path, err);
	else if (len >= 5 && strcmp(path + len - 5, ".json") == 0)
		s = open_index(st, path, err);
	else
		s = load_file(st, path, NULL, NULL, err);
	if (s != NESA_OK) {
		nesa_safetensors_free(st);
		return s;
	}
	*out = st;
	return NESA_OK;
}

void
nesa_safetensors_free(struct nesa_safetensors *st)
{
	size_t i;

	if (st == NULL)
		return;
	for (i = 0; i < st->n_skipped; i++) {
		nesa_free(st->skipped[i].name);
		nesa_free(st->skipped[i].dtype);
	}
	nesa_free(st->skipped);
	json_decref(st->metadata);
	nesa_tset_release(&st->tensors);
	nesa_free(st);
}
