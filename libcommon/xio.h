/* SPDX-License-Identifier: MIT */
/*
 * File helpers: '-' as stdin/stdout, outputs written to a temporary file in
 * the destination directory and renamed into place only on success (so a
 * failure never leaves a partial or clobbered file), refusal to write binary
 * data to a terminal without -f, whole-file reads with a size limit, and
 * read-only memory mappings.
 */
#ifndef NESA_XIO_H
#define NESA_XIO_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

enum {
	NESA_OUT_FORCE = 1 << 0,  /* overwrite an existing file, allow a tty */
	NESA_OUT_BINARY = 1 << 1, /* refuse a terminal unless FORCE */
};

/* An output being written.  Caller-owned; nesa_out_init() zeroes it. */
struct nesa_out {
	char *path;  /* destination, NULL for stdout */
	char *tmp;   /* temporary file in the destination's directory */
	int fd;      /* file descriptor being written */
	FILE *fp;    /* stdio stream over fd */
	bool is_std; /* writing to standard output */
};

void nesa_out_init(struct nesa_out *o);

/*
 * Opens path for writing ('-' = stdout).  A regular destination is created
 * as a temporary file beside it; an existing destination is refused without
 * NESA_OUT_FORCE (NESA_ECREATE).  Binary output to a terminal is refused
 * without NESA_OUT_FORCE (NESA_EUSAGE).
 */
enum nesa_status nesa_out_open(struct nesa_out *o, const char *path, unsigned flags,
                               struct nesa_err *err);

/*
 * Flushes, syncs and renames the temporary file into place (for stdout:
 * flushes only).  On failure the temporary file is removed.  Always releases o.
 */
enum nesa_status nesa_out_commit(struct nesa_out *o, struct nesa_err *err);

/* Abandons the output: closes and removes the temporary file.  NULL-safe. */
void nesa_out_abort(struct nesa_out *o);

/* Writes n bytes or fails with NESA_EIO naming the output. */
enum nesa_status nesa_out_write(struct nesa_out *o, const void *buf, size_t n,
                                struct nesa_err *err);

/*
 * Writes j with jansson's flags (JSON_INDENT, JSON_REAL_PRECISION, ...)
 * and a newline.  NESA_ENOMEM, or errors of nesa_out_write.
 */
enum nesa_status nesa_out_write_json(struct nesa_out *o, const json_t *j, size_t flags,
                                     struct nesa_err *err);

/* The name of an output for messages: its path or "standard output". */
const char *nesa_out_name(const struct nesa_out *o);

/*
 * Removes every temporary output still open when SIGINT, SIGTERM or SIGHUP
 * arrives, then re-raises the signal.  Tools call it once at start.
 */
void nesa_xio_install_cleanup(void);

/* Opens an input ('-' = stdin); NESA_ENOENT with the path on failure. */
enum nesa_status nesa_in_open(const char *path, FILE **fp, struct nesa_err *err);

/* Closes an input opened by nesa_in_open (stdin is left open). */
void nesa_in_close(FILE *fp);

/*
 * Reads a whole file ('-' = stdin) into a new NUL-terminated buffer, refusing
 * files larger than max bytes (NESA_ELIMIT).  *buf is freed with nesa_free.
 */
enum nesa_status nesa_read_file(const char *path, size_t max, char **buf, size_t *len,
                                struct nesa_err *err);

/* Reads exactly n bytes or reports a short read as NESA_EFORMAT (truncated). */
enum nesa_status nesa_read_exact(FILE *fp, void *buf, size_t n, const char *name,
                                 struct nesa_err *err);

/* A read-only private mapping of a whole regular file. */
struct nesa_map {
	void *addr;  /* NULL for an empty file */
	size_t size; /* bytes */
};

/*
 * Maps path read-only.  NESA_ENOENT if it cannot be opened; NESA_EUNSUPPORTED
 * when it is not a regular file (a pipe: callers fall back to reading).
 */
enum nesa_status nesa_map_file(const char *path, struct nesa_map *map, struct nesa_err *err);
void nesa_unmap(struct nesa_map *map);

/* True if path names standard input or output ("-"). */
bool nesa_is_stdio(const char *path);

#endif
