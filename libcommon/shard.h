/* SPDX-License-Identifier: MIT */
/*
 * Shard archives (.nsa): a slice of a model's blocks and their weights.
 *
 * The format is specified in nesa-archive(5): a POSIX tar whose first
 * member is manifest.json, followed by one member tensors/<name> per tensor
 * in manifest order.  This module writes such archives reproducibly and
 * reads them back from a file, a compressed file or a pipe, checking every
 * size, name and sha256 against the manifest.  It never extracts anything to
 * disk, it does not interpret the manifest's "graph" and "meta" objects
 * (the runtime does), and it does not decide which blocks go where (the
 * partitioner does).
 *
 * A shard read from an uncompressed regular file is memory-mapped and its
 * tensors point straight into the mapping; otherwise each tensor gets its
 * own aligned buffer.  Either way the data lives as long as the shard.
 */
#ifndef NESA_SHARD_H
#define NESA_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "hash.h" /* NESA_SHA256_BYTES, and the sha256 helpers callers expect from here */
#include "tensor.h"

/* Value of the manifest's "format" key and the version this code reads and writes. */
#define NESA_SHARD_FORMAT "nesa-archive"
#define NESA_SHARD_VERSION 1

/* Name of the first member. */
#define NESA_SHARD_MANIFEST "manifest.json"

/* Prefix of every tensor member: "tensors/<tensor name>". */
#define NESA_SHARD_TENSOR_PREFIX "tensors/"

/* Largest manifest member a reader accepts and a writer produces. */
#define NESA_SHARD_MANIFEST_MAX ((size_t)16 << 20)

/* Longest tensor name, in bytes. */
#define NESA_SHARD_NAME_MAX 255

/* Flags of nesa_shard_open(). */
enum {
	/*
	 * Do not hash mapped tensors while opening; nesa_shard_verify() does it
	 * later, for the tensors that are actually used.  Tensors that had to be
	 * copied are always verified while they are read, since the bytes pass
	 * by anyway.
	 */
	NESA_SHARD_DEFER_HASH = 1 << 0,
	/* Read into memory even when the archive could be mapped. */
	NESA_SHARD_NO_MMAP = 1 << 1,
};

/* An open shard: its manifest and tensors.  Opaque. */
struct nesa_shard;

/*
 * Opens and validates the archive at path ("-" = standard input).
 *
 * An uncompressed regular file is mapped and its tensors point into the
 * mapping (read-only, NESA_TENSOR_READONLY); a gzip, zstd or xz compressed
 * file, a pipe, or NESA_SHARD_NO_MMAP reads each tensor into its own
 * NESA_ALIGN-aligned buffer.  Every sha256 is verified before returning,
 * except mapped tensors under NESA_SHARD_DEFER_HASH.
 *
 * On success *out is a new shard freed with nesa_shard_free().  On failure
 * *out is NULL and err names the archive (or "standard input") and, where
 * known, the member: NESA_ENOENT (cannot open), NESA_EIO (read error),
 * NESA_EFORMAT (not a shard, damaged, truncated: "unexpected end of file",
 * bad manifest, missing, extra, misordered or unsafe members), NESA_EVERSION
 * (a version other than NESA_SHARD_VERSION), NESA_ESHAPE (bad shape),
 * NESA_EUNSUPPORTED (unknown dtype), NESA_ECHECKSUM (sha256 mismatch),
 * NESA_EINVAL (unknown flags), NESA_ENOMEM.
 */
enum nesa_status nesa_shard_open(const char *path, unsigned flags, struct nesa_shard **out,
                                 struct nesa_err *err);

/* Frees the shard, its manifest, its tensors and their memory.  NULL-safe. */
void nesa_shard_free(struct nesa_shard *s);

/* The validated manifest.  Borrowed: valid until nesa_shard_free(). */
json_t *nesa_shard_manifest(const struct nesa_shard *s);

/*
 * The tensors, in manifest order.  Borrowed: the set and the data behind it
 * stay valid until nesa_shard_free().  Mapped data is read-only.
 */
struct nesa_tset *nesa_shard_tensors(struct nesa_shard *s);

/* True when the tensors point into a mapping of the archive file. */
bool nesa_shard_is_mapped(const struct nesa_shard *s);

/* The path as given to nesa_shard_open() ("-" for standard input). */
const char *nesa_shard_path(const struct nesa_shard *s);

/*
 * Verifies the sha256 of the tensor called name, or of every tensor when
 * name is NULL.  Each tensor is hashed at most once; a tensor found bad
 * stays bad.  NESA_ECHECKSUM ("sha256 mismatch for tensor 'x' in 'a.nsa'"),
 * NESA_EINVAL when there is no such tensor.  The error is also kept in the
 * shard (nesa_shard_error()).
 */
enum nesa_status nesa_shard_verify(struct nesa_shard *s, const char *name, struct nesa_err *err);

/* The last error recorded by nesa_shard_verify() (status NESA_OK if none). */
const struct nesa_err *nesa_shard_error(const struct nesa_shard *s);

/*
 * Reads and validates only the manifest (member 1) of the archive at path
 * ("-" = standard input), without reading any tensor data: what planners
 * need.  The manifest passes the same checks as in nesa_shard_open(), so
 * its tensor shapes, dtypes and sizes can be trusted.  On success *manifest
 * is a new reference (json_decref() it); on failure it is NULL and err is
 * set as for nesa_shard_open().
 */
enum nesa_status nesa_shard_read_manifest(const char *path, json_t **manifest,
                                          struct nesa_err *err);

enum nesa_shard_compress {
	NESA_SHARD_NONE = 0,
	NESA_SHARD_GZIP,
	NESA_SHARD_ZSTD,
	NESA_SHARD_XZ,
};

struct nesa_shard_write_opts {
	enum nesa_shard_compress compress;
	bool force; /* overwrite an existing file; allow a terminal for "-" */
};

/*
 * Writes an archive to path ("-" = standard output).
 *
 * header (borrowed) is an object with "model" and "blocks" (required) and
 * "graph" (object or null) and "meta" (object), both optional; the writer
 * adds "format", "version", "created_by" and "tensors" and checks every key
 * as a reader would.  tensors[0..n) (borrowed) must be contiguous, have valid
 * and distinct names and data (NULL only when nbytes is 0).  opts may be NULL
 * (uncompressed, no force).
 *
 * The output is the same bytes for the same inputs.  A regular file is
 * written to a temporary file and renamed into place, so a failure leaves
 * nothing behind.  NESA_EINVAL (bad header or tensor), NESA_ESHAPE,
 * NESA_ELIMIT (manifest larger than NESA_SHARD_MANIFEST_MAX), NESA_ECREATE
 * (exists without force, cannot create), NESA_EUSAGE (a terminal without
 * force), NESA_EIO, NESA_ENOMEM.
 */
enum nesa_status nesa_shard_write(const char *path, const json_t *header,
                                  const struct nesa_tensor *const *tensors, size_t n,
                                  const struct nesa_shard_write_opts *opts, struct nesa_err *err);

/*
 * Checks a tensor name against the archive rules: 1..255 bytes of valid
 * UTF-8, no control characters (NUL included), no backslash, no leading
 * '/', no "." or ".." path component, no empty component ("a//b", "a/").
 * NESA_EINVAL with a message naming the problem and `where` (may be NULL).
 */
enum nesa_status nesa_shard_check_name(const char *name, size_t len, const char *where,
                                       struct nesa_err *err);

/* Accessors of a validated manifest (from a shard or nesa_shard_read_manifest). */

/* model.source_sha256 decoded into out; false when absent or malformed. */
bool nesa_shard_manifest_source_sha256(const json_t *manifest,
                                       unsigned char out[NESA_SHA256_BYTES]);

/* blocks.first, blocks.count and model.n_blocks, or -1 when absent or malformed. */
int64_t nesa_shard_manifest_blocks_first(const json_t *manifest);
int64_t nesa_shard_manifest_blocks_count(const json_t *manifest);
int64_t nesa_shard_manifest_n_blocks(const json_t *manifest);

#endif
