/* SPDX-License-Identifier: MIT */
/*
 * Writing shard archives; the format is specified in nesa-archive(5)
 * (man/nesa-archive.5) and read back by shard.c.
 *
 * The same input always produces the same bytes: members have a fixed
 * owner, mode and time, the manifest a fixed key order, gzip output no
 * timestamp, and nothing follows the end-of-archive marker.  Everything
 * that can be checked is checked before the output exists, with the
 * reader's own schema checks (shard-impl.h), and the output goes through a
 * temporary file, so a failure leaves nothing behind.
 *
 * Not for: reading archives or validating untrusted ones (shard.c).
 */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <archive.h>
#include <archive_entry.h>

#include "alloc.h"
#include "shard-impl.h"
#include "version.h"
#include "xio.h"

#define WRITE_CHUNK ((size_t)1 << 24)    /* bytes per archive_write_data() call */
#define MEMBER_MODE 0644
#define MEMBER_OWNER "nesa"
#define MANIFEST_JSON_FLAGS (JSON_INDENT(2) | JSON_PRESERVE_ORDER)

/* The caller's part of the manifest: model, blocks, graph, meta and nothing else. */
static enum nesa_status
check_header(const json_t *header, struct nesa_err *err)
{
	const char *key;
	json_t *v;
	json_int_t n_blocks;
	enum nesa_status s;
	char q[96];

	if (!json_is_object(header))
		return nesa_err_set(err, NESA_EINVAL, "header is not a JSON object");
	/* json_object_foreach wants a mutable object; nothing is modified. */
	json_object_foreach((json_t *)(uintptr_t)header, key, v) {
		if (strcmp(key, "model") != 0 && strcmp(key, "blocks") != 0 &&
		    strcmp(key, "graph") != 0 && strcmp(key, "meta") != 0)
			return nesa_err_set(err, NESA_EINVAL, "unknown key '%s' in header",
			                    safe(key, strlen(key), q, sizeof q));
	}
	s = shard_check_model(header, NESA_EINVAL, &n_blocks, err);
	if (s == NESA_OK)
		s = shard_check_blocks(header, n_blocks, NESA_EINVAL, err);
	v = json_object_get(header, "graph");
	if (s == NESA_OK && v != NULL && !json_is_object(v) && !json_is_null(v))
		s = nesa_err_set(err, NESA_EINVAL, "'graph' must be an object or null");
	v = json_object_get(header, "meta");
	if (s == NESA_OK && v != NULL && !json_is_object(v))
		s = nesa_err_set(err, NESA_EINVAL, "'meta' must be an object");
	return s;
}

static enum nesa_status
check_tensors(const struct nesa_tensor *const *tensors, size_t n, struct nesa_err *err)
{
	const char **names;
	enum nesa_status s = NESA_OK;
	size_t i, nbytes;
	char what[300];

	names = nesa_calloc(n > 0 ? n : 1, sizeof *names);
	if (names == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	for (i = 0; i < n && s == NESA_OK; i++) {
		const struct nesa_tensor *t = tensors[i];

		if (t == NULL || t->name == NULL) {
			s = nesa_err_set(err, NESA_EINVAL, "tensor %zu has no name", i);
			break;
		}
		names[i] = t->name;
		s = shard_check_name(t->name, strlen(t->name), NULL, NESA_EINVAL, err);
		if (s != NESA_OK)
			break;
		snprintf(what, sizeof what, "tensor '%s'", t->name);
		s = nesa_shape_check(t->dtype, t->ndim, t->shape, true, &nbytes, what, err);
		if (s != NESA_OK)
			break;
		if (!nesa_tensor_is_contiguous(t) || t->nbytes != nbytes)
			s = nesa_err_set(err, NESA_EINVAL, "%s is not contiguous", what);
		else if (t->data == NULL && nbytes > 0)
			s = nesa_err_set(err, NESA_EINVAL, "%s has no data", what);
	}
	if (s == NESA_OK)
		s = shard_check_unique(names, n, NESA_EINVAL, err);
	nesa_free(names);
	return s;
}

/* Adds the writer's keys around the caller's header; NULL when out of memory. */
static json_t *
build_manifest(const json_t *header, const struct nesa_tensor *const *tensors, size_t n)
{
	json_t *m = json_object(), *arr = json_array(), *g = json_object_get(header, "graph");
	json_t *meta = json_object_get(header, "meta");
	bool ok = m != NULL && arr != NULL;
	size_t i;

	/*
	 * A fixed key order keeps the bytes reproducible and the file readable.
	 * The caller's values are deep-copied so its header is neither modified
	 * nor shared with a manifest it does not own.
	 */
	ok = ok && json_object_set_new(m, "format", json_string(NESA_SHARD_FORMAT)) == 0;
	ok = ok && json_object_set_new(m, "version", json_integer(NESA_SHARD_VERSION)) == 0;
	ok = ok && json_object_set_new(m, "created_by", json_string("nesa " NESA_VERSION_STRING)) == 0;
	ok = ok && json_object_set_new(m, "model", json_deep_copy(json_object_get(header, "model"))) == 0;
	ok = ok && json_object_set_new(m, "blocks", json_deep_copy(json_object_get(header, "blocks"))) == 0;
	ok = ok && json_object_set_new(m, "graph", g != NULL ? json_deep_copy(g) : json_null()) == 0;
	ok = ok && json_object_set_new(m, "meta", meta != NULL ? json_deep_copy(meta) : json_object()) == 0;
	for (i = 0; ok && i < n; i++) {
		const struct nesa_tensor *t = tensors[i];
		json_t *o = json_object(), *shape = json_array();
		unsigned char sha[NESA_SHA256_BYTES];
		char hex[NESA_SHA256_HEX];
		int k;

		nesa_sha256(t->data, t->nbytes, sha);
		for (k = 0; shape != NULL && ok && k < t->ndim; k++)
			ok = json_array_append_new(shape, json_integer((json_int_t)t->shape[k])) == 0;
		ok = ok && o != NULL && shape != NULL;
		ok = ok && json_object_set_new(o, "name", json_string(t->name)) == 0;
		ok = ok && json_object_set_new(o, "dtype", json_string(nesa_dtype_name(t->dtype))) == 0;
		ok = ok && json_object_set(o, "shape", shape) == 0;
		ok = ok && json_object_set_new(o, "bytes", json_integer((json_int_t)t->nbytes)) == 0;
		ok = ok && json_object_set_new(o, "sha256", json_string(nesa_sha256_hex(sha, hex))) == 0;
		ok = ok && json_array_append(arr, o) == 0;
		json_decref(shape);
		json_decref(o);
	}
	ok = ok && json_object_set(m, "tensors", arr) == 0;
	json_decref(arr);
	if (!ok) {
		json_decref(m);
		return NULL;
	}
	return m;
}

/* Serialises the manifest into a nesa_malloc'd buffer ending in a newline. */
static enum nesa_status
dump_manifest(const json_t *m, char **text, size_t *len, struct nesa_err *err)
{
	size_t n = json_dumpb(m, NULL, 0, MANIFEST_JSON_FLAGS);

	*text = NULL;
	if (n == 0)
		return nesa_err_set(err, NESA_ENOMEM, "cannot serialise the manifest: out of memory");
	if (n + 1 > NESA_SHARD_MANIFEST_MAX)
		return nesa_err_set(err, NESA_ELIMIT, "manifest too large (%zu bytes, at most %zu)", n + 1,
		                    NESA_SHARD_MANIFEST_MAX);
	*text = nesa_malloc(n + 1);
	if (*text == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	if (json_dumpb(m, *text, n, MANIFEST_JSON_FLAGS) != n) {
		nesa_free(*text);
		*text = NULL;
		return nesa_err_set(err, NESA_EINTERNAL, "cannot serialise the manifest");
	}
	(*text)[n] = '\n';
	*len = n + 1;
	return NESA_OK;
}

struct wr {
	struct nesa_out out;
	const char *name;      /* the output for messages */
	struct nesa_err ioerr; /* the output's own failure, which beats libarchive's summary */
	bool io_failed;
};

static la_ssize_t
out_write(struct archive *a, void *ctx, const void *buf, size_t n)
{
	struct wr *w = ctx;

	if (nesa_out_write(&w->out, buf, n, &w->ioerr) != NESA_OK) {
		int e = w->ioerr.sys_errno != 0 ? w->ioerr.sys_errno : EIO;

		/* Our own words: the output's name is not known for every kind of output. */
		errno = e;
		nesa_err_sys(&w->ioerr, NESA_EIO, "cannot write '%s'", w->name);
		w->io_failed = true;
		archive_set_error(a, e, "%s", nesa_err_msg(&w->ioerr));
		return -1;
	}
	return (la_ssize_t)n;
}

static enum nesa_status
wr_fail(struct wr *w, struct archive *a, const char *path, struct nesa_err *err)
{
	if (w->io_failed)
		return nesa_err_copy(err, &w->ioerr);
	if (archive_errno(a) == ENOMEM)
		return nesa_err_set(err, NESA_ENOMEM, "cannot write '%s': out of memory", path);
	return nesa_err_set(err, NESA_EIO, "cannot write '%s': %s", path,
	                    archive_error_string(a) != NULL ? archive_error_string(a) : "archive error");
}

/* One regular member with the fixed metadata that makes archives reproducible. */
static enum nesa_status
write_member(struct wr *w, struct archive *a, const char *member, const void *data, size_t size,
             const char *path, struct nesa_err *err)
{
	struct archive_entry *e = archive_entry_new();
	const unsigned char *p = data;
	size_t done = 0;
	int r;

	if (e == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot write '%s': out of memory", path);
	archive_entry_set_pathname(e, member);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, MEMBER_MODE);
	archive_entry_set_size(e, (la_int64_t)size);
	archive_entry_set_mtime(e, 0, 0);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	archive_entry_set_uname(e, MEMBER_OWNER);
	archive_entry_set_gname(e, MEMBER_OWNER);
	r = archive_write_header(a, e);
	archive_entry_free(e);
	if (r != ARCHIVE_OK)
		return wr_fail(w, a, path, err);
	while (done < size) {
		size_t chunk = size - done < WRITE_CHUNK ? size - done : WRITE_CHUNK;
		la_ssize_t got = archive_write_data(a, p + done, chunk);

		if (got <= 0)
			return wr_fail(w, a, path, err);
		done += (size_t)got;
	}
	return NESA_OK;
}

static int
add_filter(struct archive *a, enum nesa_shard_compress c)
{
	int r;

	switch (c) {
	case NESA_SHARD_GZIP:
		r = archive_write_add_filter_gzip(a);
		/* gzip stores the current time by default, which breaks reproducibility. */
		if (r >= ARCHIVE_WARN)
			r = archive_write_set_filter_option(a, "gzip", "timestamp", NULL);
		return r;
	case NESA_SHARD_ZSTD:
		return archive_write_add_filter_zstd(a);
	case NESA_SHARD_XZ:
		return archive_write_add_filter_xz(a);
	default:
		return ARCHIVE_OK;
	}
}

enum nesa_status
nesa_shard_write(const char *path, const json_t *header, const struct nesa_tensor *const *tensors,
                 size_t n, const struct nesa_shard_write_opts *opts, struct nesa_err *err)
{
	static const struct nesa_shard_write_opts defaults = {NESA_SHARD_NONE, false};
	struct archive *a = NULL;
	json_t *m = NULL;
	char *text = NULL;
	char member[300];
	struct wr w;
	enum nesa_status s;
	size_t i, len = 0;
	const char *name = path != NULL && nesa_is_stdio(path) ? "standard output" : path;

	memset(&w, 0, sizeof w);
	nesa_out_init(&w.out);
	w.name = name;
	if (opts == NULL)
		opts = &defaults;
	if (path == NULL || (n > 0 && tensors == NULL))
		return nesa_err_set(err, NESA_EINVAL, "cannot write shard: no path or tensors given");
	if ((unsigned)opts->compress > NESA_SHARD_XZ)
		return nesa_err_set(err, NESA_EINVAL, "cannot write '%s': unknown compression %d", name,
		                    (int)opts->compress);
	if (!sodium_ready())
		return nesa_err_set(err, NESA_EINTERNAL, "cannot write '%s': cannot initialise libsodium",
		                    name);
	/* Everything that can be checked is checked before the output exists. */
	s = check_header(header, err);
	if (s != NESA_OK) {
		nesa_err_prefix(err, "cannot write '%s': invalid header", name);
		return s;
	}
	s = check_tensors(tensors, n, err);
	if (s != NESA_OK) {
		nesa_err_prefix(err, "cannot write '%s'", name);
		return s;
	}
	m = build_manifest(header, tensors, n);
	if (m == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot write '%s': out of memory", name);
	s = dump_manifest(m, &text, &len, err);
	json_decref(m);
	if (s != NESA_OK) {
		nesa_err_prefix(err, "cannot write '%s'", name);
		return s;
	}
	s = nesa_out_open(&w.out, path, NESA_OUT_BINARY | (opts->force ? NESA_OUT_FORCE : 0), err);
	if (s != NESA_OK)
		goto done;
	a = archive_write_new();
	if (a == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "cannot write '%s': out of memory", name);
		goto done;
	}
	/*
	 * pax_restricted writes plain ustar headers and adds a pax extended
	 * header only for what ustar cannot hold (long names, huge sizes).
	 * No padding after the end-of-archive marker: readers do not need it
	 * and it would only inflate compressed output.
	 */
	if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    add_filter(a, opts->compress) < ARCHIVE_WARN ||
	    archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
	    archive_write_open(a, &w, NULL, out_write, NULL) != ARCHIVE_OK) {
		s = wr_fail(&w, a, name, err);
		goto done;
	}
	s = write_member(&w, a, NESA_SHARD_MANIFEST, text, len, name, err);
	for (i = 0; s == NESA_OK && i < n; i++) {
		snprintf(member, sizeof member, "%s%s", NESA_SHARD_TENSOR_PREFIX, tensors[i]->name);
		s = write_member(&w, a, member, tensors[i]->data, tensors[i]->nbytes, name, err);
	}
	if (s == NESA_OK && archive_write_close(a) != ARCHIVE_OK)
		s = wr_fail(&w, a, name, err);
	if (s == NESA_OK) {
		archive_write_free(a);
		a = NULL;
		/* Flushing here names the output in the message whatever it is (a device, say). */
		if (fflush(w.out.fp) != 0 || ferror(w.out.fp))
			s = nesa_err_sys(err, NESA_EIO, "cannot write '%s'", name);
		else
			s = nesa_out_commit(&w.out, err);
	}
done:
	/* The archive goes first: freeing it may still flush through out_write. */
	if (a != NULL)
		archive_write_free(a);
	if (s != NESA_OK)
		nesa_out_abort(&w.out);
	nesa_free(text);
	return s;
}
