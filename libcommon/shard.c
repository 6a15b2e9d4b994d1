/* SPDX-License-Identifier: MIT */
/*
 * Shard archives over libarchive; the format is specified in
 * nesa-archive(5) (man/nesa-archive.5), which is the reference when this
 * code and a comment disagree.
 *
 * Reading trusts nothing in the archive: the manifest is size-limited and
 * schema-checked before anything is allocated from it, every member must be
 * the regular file the manifest announces at its place, member sizes must
 * equal the sizes the shapes imply, and every tensor's sha256 is checked.
 * Nothing is ever extracted to disk.
 *
 * The writer, which produces byte-identical archives for identical input,
 * is in shard-write.c; it shares the manifest schema checks below through
 * shard-impl.h.  The sha256 helpers are in hash.c.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <sodium.h>

#include "alloc.h"
#include "shard-impl.h"
#include "xio.h"

#define SHARD_MAGIC 0x4e534131u          /* "NSA1": catches use of a freed or foreign handle */
#define TAR_BLOCK 512                    /* tar record size; member data starts on a record */
#define READ_CHUNK ((size_t)1 << 16)     /* bytes per read(2) from a stream */
#define GROW_FIRST ((size_t)1 << 20)     /* first buffer for data not known to be present */
#define MAX_N_BLOCKS INT32_MAX

enum hash_state { HASH_PENDING, HASH_OK, HASH_BAD };

struct shard_hash {
	unsigned char sha[NESA_SHA256_BYTES]; /* expected, from the manifest */
	enum hash_state state;
};

struct nesa_shard {
	uint32_t magic;
	char *path;                /* as given; "-" is standard input */
	json_t *manifest;
	struct nesa_tset tensors;  /* manifest order */
	struct shard_hash *hashes; /* (tensors.n) parallel to tensors.items */
	bool mapped;
	struct nesa_err err;       /* last nesa_shard_verify() failure */
};

/* One tensor as the validated manifest describes it; name borrowed from the manifest. */
struct tinfo {
	const char *name;
	enum nesa_dtype dtype;
	int ndim;
	int64_t shape[NESA_MAX_DIMS]; /* outermost first */
	size_t bytes;
	unsigned char sha[NESA_SHA256_BYTES];
};

static const char *
disp(const char *path)
{
	return nesa_is_stdio(path) ? "standard input" : path;
}

/* The manifest spells hashes one way only, so equal archives stay byte-identical. */
static bool
is_hex64_lower(const char *s, size_t len)
{
	size_t i;

	if (len != 2 * NESA_SHA256_BYTES)
		return false;
	for (i = 0; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

/* Names; shard_check_name() also vets the names the writer is given. */

enum nesa_status
shard_check_name(const char *name, size_t len, const char *where, enum nesa_status bad,
                 struct nesa_err *err)
{
	const char *why = NULL;
	size_t i, comp = 0;
	char q[96];

	if (len == 0)
		why = "is empty";
	else if (len > NESA_SHARD_NAME_MAX)
		why = "is longer than 255 bytes";
	else if (name[0] == '/')
		why = "starts with '/'";
	/* i == len acts as a final '/' so the last component is checked too. */
	for (i = 0; why == NULL && i <= len; i++) {
		unsigned char c = i < len ? (unsigned char)name[i] : '/';

		if (c < 0x20 || c == 0x7f)
			why = "contains a control character";
		else if (c > 0x7f)
			why = "contains a non-ASCII byte";
		else if (c == '\\')
			why = "contains a backslash";
		else if (c == '/') {
			size_t clen = i - comp;

			if (clen == 0)
				why = "has an empty path component";
			else if (clen <= 2 && memcmp(name + comp, "..", clen) == 0)
				why = clen == 2 ? "has a '..' path component" : "has a '.' path component";
			comp = i + 1;
		}
	}
	if (why == NULL)
		return NESA_OK;
	return nesa_err_set(err, bad, "invalid tensor name '%s'%s%s%s: %s", safe(name, len, q, sizeof q),
	                    where != NULL ? " in '" : "", where != NULL ? where : "",
	                    where != NULL ? "'" : "", why);
}

enum nesa_status
nesa_shard_check_name(const char *name, size_t len, const char *where, struct nesa_err *err)
{
	if (name == NULL)
		return nesa_err_set(err, NESA_EINVAL, "invalid tensor name: NULL");
	return shard_check_name(name, len, where, NESA_EINVAL, err);
}

/*
 * True for member paths that would escape the extraction directory: absolute
 * or with a ".." component.  nesa never extracts, but tar(1) might, so such
 * archives are refused outright.
 */
static bool
unsafe_path(const char *p)
{
	const char *c = p;

	if (p[0] == '/')
		return true;
	for (;;) {
		size_t n = strcspn(c, "/");

		if (n == 2 && c[0] == '.' && c[1] == '.')
			return true;
		if (c[n] == '\0')
			return false;
		c += n + 1;
	}
}

/*
 * Manifest schema; messages name the key by its dotted path.  The checks
 * take the status for a violation because shard-write.c applies them to a
 * caller's header too (see shard-impl.h).
 */

static const char *
type_name(json_type t)
{
	static const char *const names[] = {
		[JSON_OBJECT] = "an object", [JSON_ARRAY] = "an array",
		[JSON_STRING] = "a string", [JSON_INTEGER] = "an integer",
	};

	return (size_t)t < sizeof names / sizeof names[0] && names[t] != NULL ? names[t] : "a value";
}

static enum nesa_status
get_field(const json_t *obj, const char *key, json_type type, const char *path,
          enum nesa_status bad, const json_t **out, struct nesa_err *err)
{
	const json_t *v = json_object_get(obj, key);

	if (v == NULL)
		return nesa_err_set(err, bad, "'%s' is missing", path);
	if (json_typeof(v) != type)
		return nesa_err_set(err, bad, "'%s' must be %s", path, type_name(type));
	*out = v;
	return NESA_OK;
}

static enum nesa_status
get_int(const json_t *obj, const char *key, const char *path, json_int_t min, json_int_t max,
        enum nesa_status bad, json_int_t *out, struct nesa_err *err)
{
	const json_t *v = NULL;
	enum nesa_status s = get_field(obj, key, JSON_INTEGER, path, bad, &v, err);

	if (s != NESA_OK)
		return s;
	*out = json_integer_value(v);
	if (*out < min || *out > max)
		return nesa_err_set(err, bad, "'%s' is %lld, must be between %lld and %lld", path,
		                    (long long)*out, (long long)min, (long long)max);
	return NESA_OK;
}

enum nesa_status
shard_check_model(const json_t *top, enum nesa_status bad, json_int_t *n_blocks,
                  struct nesa_err *err)
{
	static const char *const strs[] = {"name", "arch", "source"};
	const json_t *model = NULL, *v = NULL;
	enum nesa_status s;
	char path[32];
	size_t i;

	s = get_field(top, "model", JSON_OBJECT, "model", bad, &model, err);
	for (i = 0; s == NESA_OK && i < sizeof strs / sizeof strs[0]; i++) {
		snprintf(path, sizeof path, "model.%s", strs[i]);
		s = get_field(model, strs[i], JSON_STRING, path, bad, &v, err);
	}
	if (s == NESA_OK)
		s = get_field(model, "source_sha256", JSON_STRING, "model.source_sha256", bad, &v, err);
	if (s == NESA_OK && !is_hex64_lower(json_string_value(v), json_string_length(v)))
		s = nesa_err_set(err, bad, "'model.source_sha256' must be 64 lowercase hex digits");
	if (s == NESA_OK)
		s = get_int(model, "n_blocks", "model.n_blocks", 0, MAX_N_BLOCKS, bad, n_blocks, err);
	return s;
}

enum nesa_status
shard_check_blocks(const json_t *top, json_int_t n_blocks, enum nesa_status bad,
                   struct nesa_err *err)
{
	const json_t *blocks = NULL;
	json_int_t first = 0, count;
	enum nesa_status s;

	s = get_field(top, "blocks", JSON_OBJECT, "blocks", bad, &blocks, err);
	if (s == NESA_OK)
		s = get_int(blocks, "first", "blocks.first", 0, n_blocks, bad, &first, err);
	/* The range must lie inside the model; count 0 is a stage with no blocks. */
	if (s == NESA_OK)
		s = get_int(blocks, "count", "blocks.count", 0, n_blocks - first, bad, &count, err);
	return s;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorts a copy of the names to find a duplicate in n log n. */
enum nesa_status
shard_check_unique(const char *const *names, size_t n, enum nesa_status bad,
                   struct nesa_err *err)
{
	const char **sorted;
	enum nesa_status s = NESA_OK;
	char q[96];
	size_t i;

	if (n < 2)
		return NESA_OK;
	sorted = nesa_malloc(n * sizeof *sorted);
	if (sorted == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	memcpy(sorted, names, n * sizeof *sorted);
	qsort(sorted, n, sizeof *sorted, cmp_str);
	for (i = 1; i < n; i++)
		if (strcmp(sorted[i - 1], sorted[i]) == 0) {
			s = nesa_err_set(err, bad, "duplicate tensor '%s'",
			                 safe(sorted[i], strlen(sorted[i]), q, sizeof q));
			break;
		}
	nesa_free(sorted);
	return s;
}

/* Fetches tensors[idx].key, naming it that way in messages. */
static enum nesa_status
tfield(const json_t *o, size_t idx, const char *key, json_type type, const json_t **v,
       struct nesa_err *err)
{
	char path[64];

	snprintf(path, sizeof path, "tensors[%zu].%s", idx, key);
	return get_field(o, key, type, path, NESA_EFORMAT, v, err);
}

/* Parses and checks one entry of "tensors". */
static enum nesa_status
parse_tensor(const json_t *o, size_t idx, struct tinfo *t, struct nesa_err *err)
{
	const json_t *name = NULL, *dtype = NULL, *shape = NULL, *bytes = NULL, *sha = NULL, *v;
	enum nesa_status s;
	char what[300], shp[128];
	size_t k, need;

	if (!json_is_object(o))
		return nesa_err_set(err, NESA_EFORMAT, "'tensors[%zu]' must be an object", idx);
	/* Every field is type-checked before any of them is used. */
	if ((s = tfield(o, idx, "name", JSON_STRING, &name, err)) != NESA_OK ||
	    (s = tfield(o, idx, "dtype", JSON_STRING, &dtype, err)) != NESA_OK ||
	    (s = tfield(o, idx, "shape", JSON_ARRAY, &shape, err)) != NESA_OK ||
	    (s = tfield(o, idx, "bytes", JSON_INTEGER, &bytes, err)) != NESA_OK ||
	    (s = tfield(o, idx, "sha256", JSON_STRING, &sha, err)) != NESA_OK)
		return s;
	t->name = json_string_value(name);
	s = shard_check_name(t->name, json_string_length(name), NULL, NESA_EFORMAT, err);
	if (s != NESA_OK)
		return s;
	snprintf(what, sizeof what, "tensor '%s'", t->name);
	if (!is_hex64_lower(json_string_value(sha), json_string_length(sha)))
		return nesa_err_set(err, NESA_EFORMAT, "'tensors[%zu].sha256' must be 64 lowercase hex digits",
		                    idx);
	nesa_sha256_from_hex(json_string_value(sha), t->sha);
	s = nesa_dtype_from_name(json_string_value(dtype), &t->dtype, err);
	if (s != NESA_OK) {
		nesa_err_prefix(err, "%s", what);
		return s;
	}
	/* Counted before copying, so the array cannot overrun shape[]. */
	if (json_array_size(shape) > NESA_MAX_DIMS)
		return nesa_err_set(err, NESA_ESHAPE, "%s has %zu dimensions (at most %d are supported)",
		                    what, json_array_size(shape), NESA_MAX_DIMS);
	t->ndim = (int)json_array_size(shape);
	for (k = 0; k < (size_t)t->ndim; k++) {
		v = json_array_get(shape, k);
		if (!json_is_integer(v))
			return nesa_err_set(err, NESA_EFORMAT, "'tensors[%zu].shape[%zu]' must be an integer",
			                    idx, k);
		t->shape[k] = (int64_t)json_integer_value(v);
	}
	/* Dimensions, element count and byte size are all checked before `bytes` is trusted. */
	s = nesa_shape_check(t->dtype, t->ndim, t->shape, true, &need, what, err);
	if (s != NESA_OK)
		return s;
	if (json_integer_value(bytes) < 0 || (uint64_t)json_integer_value(bytes) != (uint64_t)need)
		return nesa_err_set(err, NESA_EFORMAT, "%s declares %lld bytes, but %s %s needs %zu",
		                    what, (long long)json_integer_value(bytes), nesa_dtype_name(t->dtype),
		                    nesa_shape_str(t->ndim, t->shape, shp, sizeof shp), need);
	t->bytes = need;
	return NESA_OK;
}

/*
 * Checks a whole manifest.  On success *out (may be NULL) is a new array of
 * *n tensor descriptions borrowing from m.  Errors name the archive.
 */
static enum nesa_status
check_manifest(const json_t *m, const char *archive, struct tinfo **out, size_t *n,
               struct nesa_err *err)
{
	const json_t *v, *tensors = NULL;
	const char **names = NULL;
	struct tinfo *ti = NULL;
	json_int_t version, n_blocks = 0;
	enum nesa_status s;
	char q[96];
	size_t i, nt;

	/* Format and version come first: a future version may change everything else. */
	v = json_object_get(m, "format");
	if (!json_is_string(v) || strcmp(json_string_value(v), NESA_SHARD_FORMAT) != 0)
		return nesa_err_set(err, NESA_EFORMAT, "not a nesa archive: '%s' has format '%s'", archive,
		                    json_is_string(v) ? safe(json_string_value(v), json_string_length(v),
		                                             q, sizeof q) : "(none)");
	v = json_object_get(m, "version");
	if (!json_is_integer(v))
		return nesa_err_set(err, NESA_EFORMAT, "invalid manifest in '%s': 'version' must be an integer",
		                    archive);
	version = json_integer_value(v);
	if (version != NESA_SHARD_VERSION)
		return nesa_err_set(err, NESA_EVERSION,
		                    "unsupported archive version %lld in '%s' (this nesa reads version %d)",
		                    (long long)version, archive, NESA_SHARD_VERSION);
	/*
	 * Every key is required: nesa always writes them all, and a reader in
	 * another language then never has to guess a default.
	 */
	s = get_field(m, "created_by", JSON_STRING, "created_by", NESA_EFORMAT, &v, err);
	if (s == NESA_OK)
		s = shard_check_model(m, NESA_EFORMAT, &n_blocks, err);
	if (s == NESA_OK)
		s = shard_check_blocks(m, n_blocks, NESA_EFORMAT, err);
	if (s == NESA_OK && ((v = json_object_get(m, "graph")) == NULL ||
	                     !(json_is_object(v) || json_is_null(v))))
		s = nesa_err_set(err, NESA_EFORMAT, "'graph' must be an object or null");
	if (s == NESA_OK)
		s = get_field(m, "meta", JSON_OBJECT, "meta", NESA_EFORMAT, &v, err);
	if (s == NESA_OK)
		s = get_field(m, "tensors", JSON_ARRAY, "tensors", NESA_EFORMAT, &tensors, err);
	if (s != NESA_OK)
		goto fail;
	nt = json_array_size(tensors);
	ti = nesa_calloc(nt > 0 ? nt : 1, sizeof *ti);
	names = nesa_calloc(nt > 0 ? nt : 1, sizeof *names);
	if (ti == NULL || names == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto fail;
	}
	for (i = 0; i < nt && s == NESA_OK; i++) {
		s = parse_tensor(json_array_get(tensors, i), i, &ti[i], err);
		names[i] = ti[i].name;
	}
	if (s == NESA_OK)
		s = shard_check_unique(names, nt, NESA_EFORMAT, err);
	if (s != NESA_OK)
		goto fail;
	nesa_free(names);
	if (out != NULL)
		*out = ti;
	else
		nesa_free(ti);
	*n = nt;
	return NESA_OK;
fail:
	nesa_free(names);
	nesa_free(ti);
	if (s == NESA_ENOMEM)
		return nesa_err_set(err, NESA_ENOMEM, "cannot read manifest in '%s': out of memory", archive);
	nesa_err_prefix(err, "invalid manifest in '%s'", archive);
	return s;
}

/* Reading. */

struct rd {
	const char *name;      /* for messages */
	struct archive *a;
	int fd;                /* stream source; -1 when reading from the mapping */
	bool own_fd;
	unsigned char *buf;    /* (READ_CHUNK) stream buffer */
	struct nesa_map map;   /* whole file, when mapped */
	const unsigned char *map_addr; /* the mapping, kept after the set takes it over */
	size_t map_size;
	bool zero_copy;        /* uncompressed mapping: data blocks point into it */
	bool backed;           /* uncompressed regular file: no member outgrows file_size */
	int64_t file_size;     /* bytes in the file, -1 if not a regular file */
	bool raw_eof;          /* the source has reported end of file */
	uint64_t raw_bytes;    /* bytes delivered by the source */
	int io_errno;          /* read(2) failure, 0 if none */
	int64_t data_start;    /* tar offset of the current member's data */
	int64_t data_end;      /* tar offset after the last member's padded data */
	/* One data block handed back after a peek (see next_block). */
	bool pb_valid;
	int pb_r;
	const void *pb_buf;
	size_t pb_len;
	int64_t pb_off;
};

static la_ssize_t
fd_read(struct archive *a, void *ctx, const void **buf)
{
	struct rd *rd = ctx;
	ssize_t n;

	do
		n = read(rd->fd, rd->buf, READ_CHUNK);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		rd->io_errno = errno;
		archive_set_error(a, errno, "read error");
		return -1;
	}
	if (n == 0)
		rd->raw_eof = true;
	rd->raw_bytes += (uint64_t)n;
	*buf = rd->buf;
	return n;
}

/*
 * Turns the archive's last error into a status.  Truncation is recognised by
 * the source having run dry when libarchive gave up: its own messages for
 * that differ per filter ("Truncated tar archive", "truncated gzip input",
 * an xz "No progress is possible", or none at all in a gzip trailer).
 */
static enum nesa_status
ar_fail(struct rd *rd, const char *what, struct nesa_err *err)
{
	const char *msg = archive_error_string(rd->a);
	char ctx[400];
	bool short_msg = msg == NULL || *msg == '\0' || strstr(msg, "runcated") != NULL ||
	                 strstr(msg, "No progress is possible") != NULL;

	if (what != NULL)
		snprintf(ctx, sizeof ctx, "cannot read %s in '%s'", what, rd->name);
	else
		snprintf(ctx, sizeof ctx, "cannot read '%s'", rd->name);
	if (rd->io_errno != 0) {
		errno = rd->io_errno;
		return nesa_err_sys(err, NESA_EIO, "%s", ctx);
	}
	if (archive_errno(rd->a) == ENOMEM)
		return nesa_err_set(err, NESA_ENOMEM, "%s: out of memory", ctx);
	/* Less than one header is too short even to be recognised as a tar. */
	if (rd->raw_eof && (short_msg || rd->raw_bytes < TAR_BLOCK))
		return nesa_err_set(err, NESA_EFORMAT, "%s: unexpected end of file at offset %llu", ctx,
		                    (unsigned long long)rd->raw_bytes);
	return nesa_err_set(err, NESA_EFORMAT, "%s: %s", ctx,
	                    msg != NULL && *msg != '\0' ? msg : "damaged archive");
}

static void
rd_close(struct rd *rd)
{
	/* The archive first: freeing it may still touch the fd or the mapping. */
	if (rd->a != NULL)
		archive_read_free(rd->a);
	if (rd->own_fd)
		close(rd->fd);
	nesa_unmap(&rd->map);
	nesa_free(rd->buf);
	rd->a = NULL;
	rd->buf = NULL;
	rd->own_fd = false;
}

/*
 * Opens path for reading.  With try_map an uncompressed regular file is
 * read straight from its mapping; anything else streams through fd_read.
 */
static enum nesa_status
rd_open(struct rd *rd, const char *path, bool try_map, struct nesa_err *err)
{
	struct stat st;
	int r;

	memset(rd, 0, sizeof *rd);
	rd->fd = -1;
	rd->file_size = -1;
	rd->name = disp(path);
	rd->a = archive_read_new();
	if (rd->a == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", rd->name);
	/*
	 * Tar only, and only the compressions the format allows: enabling every
	 * filter would let an untrusted archive pick a decoder that runs an
	 * external program (lrzip, lzop, grzip).
	 */
	if (archive_read_support_format_tar(rd->a) != ARCHIVE_OK ||
	    archive_read_support_filter_gzip(rd->a) < ARCHIVE_WARN ||
	    archive_read_support_filter_zstd(rd->a) < ARCHIVE_WARN ||
	    archive_read_support_filter_xz(rd->a) < ARCHIVE_WARN)
		return nesa_err_set(err, NESA_EINTERNAL, "cannot read '%s': %s", rd->name,
		                    archive_error_string(rd->a));
	/*
	 * Only regular files are mapped: opening a FIFO just to find it is not
	 * one would take its writer's data away from the stream path.
	 */
	if (try_map && !nesa_is_stdio(path) && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
		enum nesa_status s = nesa_map_file(path, &rd->map, err);

		if (s == NESA_OK && rd->map.size > 0) {
			rd->map_addr = rd->map.addr;
			rd->map_size = rd->map.size;
			rd->raw_eof = true;
			rd->raw_bytes = rd->map.size;
			rd->file_size = (int64_t)rd->map.size;
			r = archive_read_open_memory(rd->a, rd->map.addr, rd->map.size);
			goto opened;
		}
		/* An empty file takes the stream path, which reports the end of file. */
		if (s == NESA_OK)
			nesa_unmap(&rd->map);
		else if (s != NESA_EUNSUPPORTED)
			return s;
		nesa_err_clear(err);
	}
	if (nesa_is_stdio(path)) {
		rd->fd = STDIN_FILENO;
	} else {
		rd->fd = open(path, O_RDONLY | O_CLOEXEC);
		if (rd->fd < 0)
			return nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
		rd->own_fd = true;
	}
	if (fstat(rd->fd, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return nesa_err_set(err, NESA_ENOENT, "cannot open '%s': is a directory", rd->name);
		if (S_ISREG(st.st_mode))
			rd->file_size = (int64_t)st.st_size;
	}
	rd->buf = nesa_malloc(READ_CHUNK);
	if (rd->buf == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", rd->name);
	r = archive_read_open(rd->a, rd, NULL, fd_read, NULL);
opened:
	if (r != ARCHIVE_OK)
		return ar_fail(rd, NULL, err);
	/* Filters are chosen while opening; the bottom one alone means no compression. */
	if (archive_filter_count(rd->a) == 1) {
		rd->zero_copy = rd->map_addr != NULL;
		rd->backed = rd->file_size >= 0;
	}
	return NESA_OK;
}

/*
 * Reads the next member header.  *e is NULL at a clean end of the archive.
 * Unsafe paths are refused here, before anything else looks at them.
 */
static enum nesa_status
next_member(struct rd *rd, const char *what, struct archive_entry **e, const char **path,
            struct nesa_err *err)
{
	char q[96];
	int r;

	r = archive_read_next_header(rd->a, e);
	if (r == ARCHIVE_EOF) {
		*e = NULL;
		return NESA_OK;
	}
	/* Warnings (an unreadable pax attribute, say) are errors in an untrusted archive. */
	if (r != ARCHIVE_OK)
		return ar_fail(rd, what, err);
	*path = archive_entry_pathname(*e);
	if (*path == NULL)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read %s in '%s': member name unreadable",
		                    what, rd->name);
	if (unsafe_path(*path))
		return nesa_err_set(err, NESA_EFORMAT,
		                    "unsafe member path '%s' in '%s' (absolute or with '..': path traversal)",
		                    safe(*path, strlen(*path), q, sizeof q), rd->name);
	rd->data_start = archive_filter_bytes(rd->a, 0);
	return NESA_OK;
}

/* The member must be a plain regular file of exactly size bytes. */
static enum nesa_status
check_regular(struct rd *rd, struct archive_entry *e, const char *path, size_t size,
              struct nesa_err *err)
{
	char q[96];

	safe(path, strlen(path), q, sizeof q);
	if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e) != NULL ||
	    archive_entry_sparse_count(e) > 0)
		return nesa_err_set(err, NESA_EFORMAT, "member '%s' in '%s' is not a plain regular file",
		                    q, rd->name);
	if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0 ||
	    (uint64_t)archive_entry_size(e) != (uint64_t)size)
		return nesa_err_set(err, NESA_EFORMAT, "member '%s' in '%s' has %lld bytes, the manifest says %zu",
		                    q, rd->name, (long long)archive_entry_size(e), size);
	return NESA_OK;
}

/* The next data block of the current member; a handed-back block comes first. */
static int
next_block(struct rd *rd, const void **buf, size_t *len, int64_t *off)
{
	la_int64_t o = -1;
	int r;

	/* libarchive leaves the outputs unset on failure. */
	*buf = NULL;
	*len = 0;
	if (rd->pb_valid) {
		rd->pb_valid = false;
		*buf = rd->pb_buf;
		*len = rd->pb_len;
		*off = rd->pb_off;
		return rd->pb_r;
	}
	r = archive_read_data_block(rd->a, buf, len, &o);
	*off = o;
	return r;
}

/*
 * Reads the current member (size bytes, already checked against the
 * manifest) into a new NESA_ALIGN-aligned block, feeding h (may be NULL) on
 * the way so the data is read once.  Unless the input can hold the bytes
 * (an uncompressed regular file at least that large), the block starts at
 * GROW_FIRST and doubles as data actually arrives: a header that lies about
 * its size costs at most twice what was really sent.
 */
static enum nesa_status
read_copy(struct rd *rd, size_t size, const char *what, crypto_hash_sha256_state *h,
          unsigned char **out, struct nesa_err *err)
{
	unsigned char *b, *nb;
	size_t cap, got = 0;
	enum nesa_status s;

	cap = (rd->backed && (uint64_t)size <= (uint64_t)rd->file_size) || size <= GROW_FIRST ?
	      size : GROW_FIRST;
	b = nesa_aligned_alloc(cap);
	if (b == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot read %s in '%s': out of memory", what, rd->name);
	for (;;) {
		const void *p;
		size_t len;
		int64_t off;
		int r = next_block(rd, &p, &len, &off);

		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK) {
			s = ar_fail(rd, what, err);
			goto fail;
		}
		if (off < 0 || (uint64_t)off != got || len > size - got) {
			s = nesa_err_set(err, NESA_EFORMAT, "cannot read %s in '%s': data out of sequence",
			                 what, rd->name);
			goto fail;
		}
		if (len > cap - got) {
			size_t ncap = cap > size / 2 ? size : cap * 2;

			if (ncap < got + len)
				ncap = got + len;
			nb = nesa_aligned_alloc(ncap);
			if (nb == NULL) {
				s = nesa_err_set(err, NESA_ENOMEM, "cannot read %s in '%s': out of memory",
				                 what, rd->name);
				goto fail;
			}
			memcpy(nb, b, got);
			nesa_aligned_free(b);
			b = nb;
			cap = ncap;
		}
		memcpy(b + got, p, len);
		if (h != NULL)
			crypto_hash_sha256_update(h, p, len);
		got += len;
	}
	if (got != size) {
		s = nesa_err_set(err, NESA_EFORMAT, "cannot read %s in '%s': unexpected end of file at offset %llu",
		                 what, rd->name, (unsigned long long)rd->raw_bytes);
		goto fail;
	}
	*out = b;
	return NESA_OK;
fail:
	nesa_aligned_free(b);
	return s;
}

static int64_t
padded(size_t n)
{
	return (int64_t)((n + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK);
}

/* Reads member 1, which must be manifest.json, and parses it. */
static enum nesa_status
read_manifest_member(struct rd *rd, json_t **out, struct nesa_err *err)
{
	struct archive_entry *e;
	unsigned char *buf;
	const char *path;
	json_error_t je;
	enum nesa_status s;
	int64_t size;
	json_t *m;
	char q[96];

	*out = NULL;
	s = next_member(rd, "manifest", &e, &path, err);
	if (s != NESA_OK)
		return s;
	if (e == NULL)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read manifest in '%s': unexpected end of file at offset %llu",
		                    rd->name, (unsigned long long)rd->raw_bytes);
	if (strcmp(path, NESA_SHARD_MANIFEST) != 0)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "not a nesa archive: first member of '%s' is '%s', not '%s'", rd->name,
		                    safe(path, strlen(path), q, sizeof q), NESA_SHARD_MANIFEST);
	size = archive_entry_size(e);
	if (archive_entry_size_is_set(e) && size > (int64_t)NESA_SHARD_MANIFEST_MAX)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read manifest in '%s': manifest too large (%lld bytes, at most %zu)",
		                    rd->name, (long long)size, NESA_SHARD_MANIFEST_MAX);
	s = check_regular(rd, e, path, archive_entry_size_is_set(e) && size >= 0 ? (size_t)size : 0, err);
	if (s != NESA_OK)
		return s;
	s = read_copy(rd, (size_t)size, "manifest", NULL, &buf, err);
	if (s != NESA_OK)
		return s;
	rd->data_end = rd->data_start + padded((size_t)size);
	m = json_loadb((const char *)buf, (size_t)size, JSON_REJECT_DUPLICATES, &je);
	nesa_aligned_free(buf);
	if (m == NULL) {
		if (json_error_code(&je) == json_error_out_of_memory)
			return nesa_err_set(err, NESA_ENOMEM, "cannot read manifest in '%s': out of memory",
			                    rd->name);
		return nesa_err_set(err, NESA_EFORMAT, "cannot parse manifest in '%s': %s at line %d, column %d",
		                    rd->name, je.text, je.line, je.column);
	}
	if (!json_is_object(m)) {
		json_decref(m);
		return nesa_err_set(err, NESA_EFORMAT, "invalid manifest in '%s': not a JSON object", rd->name);
	}
	*out = m;
	return NESA_OK;
}

/* Explains why member `path` is not the one expected at position i (n = end). */
static enum nesa_status
wrong_member(struct rd *rd, const char *path, const struct tinfo *ti, size_t n, size_t i,
             struct nesa_err *err)
{
	const size_t plen = strlen(NESA_SHARD_TENSOR_PREFIX);
	char q[96];
	size_t j;

	safe(path, strlen(path), q, sizeof q);
	if (strcmp(path, NESA_SHARD_MANIFEST) == 0)
		return nesa_err_set(err, NESA_EFORMAT, "duplicate member '%s' in '%s'", q, rd->name);
	for (j = 0; strncmp(path, NESA_SHARD_TENSOR_PREFIX, plen) == 0 && j < n; j++) {
		if (strcmp(path + plen, ti[j].name) != 0)
			continue;
		if (j < i)
			return nesa_err_set(err, NESA_EFORMAT, "duplicate member '%s' in '%s'", q, rd->name);
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read tensor '%s' in '%s': found member '%s' instead "
		                    "(members missing or out of order)", ti[i].name, rd->name, q);
	}
	if (i < n)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "unexpected member '%s' in '%s' (expected '%s%s')", q, rd->name,
		                    NESA_SHARD_TENSOR_PREFIX, ti[i].name);
	return nesa_err_set(err, NESA_EFORMAT, "unexpected member '%s' in '%s' (not in the manifest)",
	                    q, rd->name);
}

/* Reads member i + 2, tensor ti[i], and adds it to the shard. */
static enum nesa_status
read_tensor(struct rd *rd, struct nesa_shard *s, const struct tinfo *ti, size_t n, size_t i,
            unsigned flags, struct nesa_err *err)
{
	const struct tinfo *t = &ti[i];
	struct shard_hash *hs = &s->hashes[i];
	crypto_hash_sha256_state h;
	struct archive_entry *e;
	struct nesa_tensor *added;
	unsigned char *block = NULL;
	void *data = NULL;
	const char *path;
	enum nesa_status st;
	char what[300], member[300];

	snprintf(what, sizeof what, "tensor '%s'", t->name);
	snprintf(member, sizeof member, "%s%s", NESA_SHARD_TENSOR_PREFIX, t->name);
	st = next_member(rd, what, &e, &path, err);
	if (st != NESA_OK)
		return st;
	if (e == NULL)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read tensor '%s' in '%s': unexpected end of file (member '%s' missing)",
		                    t->name, rd->name, member);
	if (strcmp(path, member) != 0)
		return wrong_member(rd, path, ti, n, i, err);
	st = check_regular(rd, e, member, t->bytes, err);
	if (st != NESA_OK)
		return st;
	memcpy(hs->sha, t->sha, sizeof hs->sha);
	if (rd->zero_copy && t->bytes > 0) {
		const void *p;
		size_t len;
		int64_t off;
		int r = next_block(rd, &p, &len, &off);
		uintptr_t c = (uintptr_t)p, base = (uintptr_t)rd->map_addr;

		/*
		 * The tar reader hands out pointers into the client's buffer when a
		 * member lies in one block, and the mapping is one block: use it in
		 * place.  Tar data sits on 512-byte records of a page-aligned
		 * mapping, so it is aligned; anything else is copied instead.
		 */
		if (r == ARCHIVE_OK && off == 0 && len == t->bytes && c >= base && len <= rd->map_size &&
		    c - base <= rd->map_size - len && c % NESA_ALIGN == 0) {
			data = (void *)c;
		} else {
			rd->pb_valid = true;
			rd->pb_r = r;
			rd->pb_buf = p;
			rd->pb_len = len;
			rd->pb_off = off;
		}
	}
	if (data != NULL) {
		hs->state = HASH_PENDING;
		if (!(flags & NESA_SHARD_DEFER_HASH)) {
			unsigned char got[NESA_SHA256_BYTES];

			nesa_sha256(data, t->bytes, got);
			hs->state = memcmp(got, t->sha, sizeof got) == 0 ? HASH_OK : HASH_BAD;
		}
	} else {
		unsigned char got[NESA_SHA256_BYTES];

		crypto_hash_sha256_init(&h);
		st = read_copy(rd, t->bytes, what, &h, &block, err);
		if (st != NESA_OK)
			return st;
		crypto_hash_sha256_final(&h, got);
		hs->state = memcmp(got, t->sha, sizeof got) == 0 ? HASH_OK : HASH_BAD;
		st = nesa_tset_own_block(&s->tensors, block, err);
		if (st != NESA_OK)
			return nesa_err_set(err, st, "cannot read %s in '%s': out of memory", what, rd->name);
		data = block;
	}
	/* Checked before the tensor joins the set: a caller never sees bad data. */
	if (hs->state == HASH_BAD)
		return nesa_err_set(err, NESA_ECHECKSUM, "sha256 mismatch for tensor '%s' in '%s'",
		                    t->name, rd->name);
	st = nesa_tset_add(&s->tensors, t->name, t->dtype, t->ndim, t->shape, data, &added, err);
	if (st != NESA_OK) {
		nesa_err_prefix(err, "cannot read %s in '%s'", what, rd->name);
		return st;
	}
	if (block == NULL)
		added->flags |= NESA_TENSOR_READONLY;
	rd->data_end = rd->data_start + padded(t->bytes);
	return NESA_OK;
}

/*
 * After the last tensor: no further member, and a complete end-of-archive
 * marker.  libarchive accepts an archive cut at a record boundary or inside
 * the second zero record as a clean end, so the marker is checked by
 * position: both 512-byte zero records must have been consumed.
 */
static enum nesa_status
read_end(struct rd *rd, const struct tinfo *ti, size_t n, struct nesa_err *err)
{
	struct archive_entry *e;
	const char *path;
	enum nesa_status s;

	s = next_member(rd, "end-of-archive marker", &e, &path, err);
	if (s != NESA_OK)
		return s;
	if (e != NULL)
		return wrong_member(rd, path, ti, n, n, err);
	if (archive_filter_bytes(rd->a, 0) < rd->data_end + 2 * TAR_BLOCK)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "cannot read end-of-archive marker in '%s': unexpected end of file at offset %llu",
		                    rd->name, (unsigned long long)rd->raw_bytes);
	return NESA_OK;
}

void
nesa_shard_free(struct nesa_shard *s)
{
	if (s == NULL)
		return;
	assert(s->magic == SHARD_MAGIC);
	s->magic = 0;
	nesa_tset_release(&s->tensors);
	json_decref(s->manifest);
	nesa_free(s->hashes);
	nesa_free(s->path);
	nesa_free(s);
}

enum nesa_status
nesa_shard_open(const char *path, unsigned flags, struct nesa_shard **out, struct nesa_err *err)
{
	struct nesa_shard *s = NULL;
	struct tinfo *ti = NULL;
	struct rd rd;
	enum nesa_status st;
	size_t i, n = 0;

	memset(&rd, 0, sizeof rd);
	rd.fd = -1;
	if (out != NULL)
		*out = NULL;
	if (path == NULL || out == NULL)
		return nesa_err_set(err, NESA_EINVAL, "cannot open shard: no path or result given");
	if (flags & ~(unsigned)(NESA_SHARD_DEFER_HASH | NESA_SHARD_NO_MMAP))
		return nesa_err_set(err, NESA_EINVAL, "cannot open '%s': unknown flags 0x%x", disp(path),
		                    flags);
	if (!sodium_ready())
		return nesa_err_set(err, NESA_EINTERNAL, "cannot open '%s': cannot initialise libsodium",
		                    disp(path));
	s = nesa_calloc(1, sizeof *s);
	if (s == NULL || (s->path = nesa_strdup(path)) == NULL) {
		nesa_free(s);
		return nesa_err_set(err, NESA_ENOMEM, "cannot open '%s': out of memory", disp(path));
	}
	s->magic = SHARD_MAGIC;
	nesa_tset_init(&s->tensors);
	st = rd_open(&rd, path, !(flags & NESA_SHARD_NO_MMAP), err);
	if (st == NESA_OK)
		st = read_manifest_member(&rd, &s->manifest, err);
	if (st == NESA_OK)
		st = check_manifest(s->manifest, rd.name, &ti, &n, err);
	if (st != NESA_OK)
		goto fail;
	s->hashes = nesa_calloc(n > 0 ? n : 1, sizeof *s->hashes);
	if (s->hashes == NULL) {
		st = nesa_err_set(err, NESA_ENOMEM, "cannot open '%s': out of memory", rd.name);
		goto fail;
	}
	/*
	 * The set owns the mapping from the start, so tensors pointing into it
	 * can never outlive it, whatever fails below.
	 */
	if (rd.zero_copy) {
		st = nesa_tset_own_map(&s->tensors, &rd.map, err);
		if (st != NESA_OK) {
			st = nesa_err_set(err, st, "cannot open '%s': out of memory", rd.name);
			goto fail;
		}
		s->mapped = true;
	}
	for (i = 0; i < n && st == NESA_OK; i++)
		st = read_tensor(&rd, s, ti, n, i, flags, err);
	if (st == NESA_OK)
		st = read_end(&rd, ti, n, err);
	if (st != NESA_OK)
		goto fail;
	rd_close(&rd);
	nesa_free(ti);
	*out = s;
	return NESA_OK;
fail:
	rd_close(&rd);
	nesa_free(ti);
	nesa_shard_free(s);
	return st;
}

enum nesa_status
nesa_shard_read_manifest(const char *path, json_t **manifest, struct nesa_err *err)
{
	struct rd rd;
	enum nesa_status s;
	json_t *m = NULL;
	size_t n;

	if (manifest != NULL)
		*manifest = NULL;
	if (path == NULL || manifest == NULL)
		return nesa_err_set(err, NESA_EINVAL, "cannot read manifest: no path or result given");
	/* Streaming reads only the first records; a mapping would buy nothing. */
	s = rd_open(&rd, path, false, err);
	if (s == NESA_OK)
		s = read_manifest_member(&rd, &m, err);
	if (s == NESA_OK)
		s = check_manifest(m, rd.name, NULL, &n, err);
	rd_close(&rd);
	if (s != NESA_OK) {
		json_decref(m);
		return s;
	}
	*manifest = m;
	return NESA_OK;
}

json_t *
nesa_shard_manifest(const struct nesa_shard *s)
{
	assert(s != NULL && s->magic == SHARD_MAGIC);
	return s->manifest;
}

struct nesa_tset *
nesa_shard_tensors(struct nesa_shard *s)
{
	assert(s != NULL && s->magic == SHARD_MAGIC);
	return &s->tensors;
}

bool
nesa_shard_is_mapped(const struct nesa_shard *s)
{
	assert(s != NULL && s->magic == SHARD_MAGIC);
	return s->mapped;
}

const char *
nesa_shard_path(const struct nesa_shard *s)
{
	assert(s != NULL && s->magic == SHARD_MAGIC);
	return s->path;
}

const struct nesa_err *
nesa_shard_error(const struct nesa_shard *s)
{
	assert(s != NULL && s->magic == SHARD_MAGIC);
	return &s->err;
}

static enum nesa_status
verify_one(struct nesa_shard *s, size_t i)
{
	struct nesa_tensor *t = &s->tensors.items[i];
	struct shard_hash *h = &s->hashes[i];

	if (h->state == HASH_PENDING) {
		unsigned char got[NESA_SHA256_BYTES];

		nesa_sha256(t->data, t->nbytes, got);
		h->state = memcmp(got, h->sha, sizeof got) == 0 ? HASH_OK : HASH_BAD;
	}
	if (h->state == HASH_BAD)
		return nesa_err_set(&s->err, NESA_ECHECKSUM, "sha256 mismatch for tensor '%s' in '%s'",
		                    t->name, disp(s->path));
	return NESA_OK;
}

enum nesa_status
nesa_shard_verify(struct nesa_shard *s, const char *name, struct nesa_err *err)
{
	enum nesa_status st = NESA_OK;
	size_t i;

	if (s == NULL || NESA_NEVER(s->magic != SHARD_MAGIC))
		return nesa_err_set(err, NESA_EINVAL, "cannot verify: not an open shard");
	nesa_err_clear(&s->err);
	if (name != NULL) {
		struct nesa_tensor *t = nesa_tset_find(&s->tensors, name);
		char q[96];

		if (t == NULL)
			st = nesa_err_set(&s->err, NESA_EINVAL, "cannot verify tensor '%s' in '%s': no such tensor",
			                  safe(name, strlen(name), q, sizeof q), disp(s->path));
		else
			st = verify_one(s, (size_t)(t - s->tensors.items));
	} else {
		struct nesa_err first;

		/* All of them even after a failure; the first failure is reported. */
		nesa_err_clear(&first);
		for (i = 0; i < s->tensors.n; i++)
			if (verify_one(s, i) != NESA_OK && st == NESA_OK)
				st = nesa_err_copy(&first, &s->err);
		nesa_err_copy(&s->err, &first);
	}
	nesa_err_copy(err, &s->err);
	return st;
}

/* Manifest accessors. */

bool
nesa_shard_manifest_source_sha256(const json_t *manifest, unsigned char out[NESA_SHA256_BYTES])
{
	const json_t *v = json_object_get(json_object_get(manifest, "model"), "source_sha256");

	return json_is_string(v) && nesa_sha256_from_hex(json_string_value(v), out);
}

static int64_t
manifest_int(const json_t *manifest, const char *obj, const char *key)
{
	const json_t *v = json_object_get(json_object_get(manifest, obj), key);

	return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

int64_t
nesa_shard_manifest_blocks_first(const json_t *manifest)
{
	return manifest_int(manifest, "blocks", "first");
}

int64_t
nesa_shard_manifest_blocks_count(const json_t *manifest)
{
	return manifest_int(manifest, "blocks", "count");
}

int64_t
nesa_shard_manifest_n_blocks(const json_t *manifest)
{
	return manifest_int(manifest, "model", "n_blocks");
}
