/* SPDX-License-Identifier: MIT */
/*
 * Status codes, error details and the status -> exit code map.
 *
 * Every fallible libcommon function returns enum nesa_status.  The detail
 * travels in a struct nesa_err owned by the caller (free functions take an
 * optional `struct nesa_err *err`, NULL meaning "don't care") or in the handle
 * of a stateful object.  Messages follow one style: lowercase first word, no
 * trailing period, what failed first, the subject in quotes, then context:
 *   cannot read tensor 'blk.3.wq' in 'stage1.nsa': unexpected end of file at offset 81920
 * This module never prints; the tools print through log.h.
 */
#ifndef NESA_ERR_H
#define NESA_ERR_H

#include <stdarg.h>
#include <stddef.h>

/*
 * Values travel on the wire in error frames (nesa-stream(5)): append only,
 * never renumber.
 */
enum nesa_status {
	NESA_OK = 0,
	NESA_ENOMEM,       /* allocation failed */
	NESA_EIO,          /* read or write failure */
	NESA_EFORMAT,      /* malformed model, archive or stream */
	NESA_EVERSION,     /* unknown format version */
	NESA_ESHAPE,       /* inconsistent or absurd shape */
	NESA_EINVAL,       /* invalid argument or option value */
	NESA_EUNSUPPORTED, /* valid but unsupported: architecture, op, dtype */
	NESA_ELINALG,      /* BLAS/LAPACK reported failure */
	NESA_EINTERNAL,    /* a bug: an invariant did not hold */
	NESA_ENOENT,       /* an input cannot be opened */
	NESA_ECREATE,      /* an output cannot be created */
	NESA_EUSAGE,       /* bad command line */
	NESA_ECHECKSUM,    /* hash or checksum mismatch */
	NESA_ELIMIT,       /* a configured limit would be exceeded */
	NESA_EREMOTE,      /* a pipeline stage or peer failed or vanished */
	NESA_ETIMEOUT,     /* a peer did not answer in time */
	NESA_ENOTIMPL,     /* the tool does not do this yet */
	NESA_STATUS_COUNT
};

/* Maximum length of a formatted message, terminating NUL included. */
#define NESA_ERR_MSG_MAX 512

struct nesa_err {
	enum nesa_status status; /* NESA_OK when nothing has failed */
	int sys_errno;           /* errno saved at the failure, 0 if none */
	char msg[NESA_ERR_MSG_MAX];
};

/* Static text for a status ("out of memory", ...).  Never NULL. */
const char *nesa_strerror(enum nesa_status status);

/* Short stable name of a status ("ENOMEM"); used in JSON and error frames. */
const char *nesa_status_name(enum nesa_status status);

/*
 * Exit code for a status, from the documented sysexits subset:
 * 0 ok, 1 runtime failure, 64 usage, 65 data, 66 no input, 69 remote stage
 * failure, 70 internal, 73 cannot create, 74 I/O.  See nesa(7).
 */
int nesa_exit_code(enum nesa_status status);

/* Resets err to NESA_OK with an empty message.  err may be NULL. */
void nesa_err_clear(struct nesa_err *err);

/*
 * Records a failure and returns status, so that callers can write
 * `return nesa_err_set(err, NESA_EFORMAT, "bad magic in '%s'", path);`.
 * err may be NULL, in which case only status is returned.  When fmt is NULL
 * the message is nesa_strerror(status).
 */
enum nesa_status nesa_err_set(struct nesa_err *err, enum nesa_status status,
                              const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

enum nesa_status nesa_err_setv(struct nesa_err *err, enum nesa_status status,
                               const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* As nesa_err_set, and saves errno and appends ": strerror(errno)". */
enum nesa_status nesa_err_sys(struct nesa_err *err, enum nesa_status status,
                              const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Adds context in front of an existing message: "PREFIX: old message".
 * Returns err->status (NESA_OK if err is NULL).
 */
enum nesa_status nesa_err_prefix(struct nesa_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Copies src into dst (dst may be NULL); returns src->status. */
enum nesa_status nesa_err_copy(struct nesa_err *dst, const struct nesa_err *src);

/* The message of err, or the status text when the message is empty. */
const char *nesa_err_msg(const struct nesa_err *err);

/*
 * Defensive checks for conditions that cannot happen: assert in debug
 * builds, evaluate to the condition in release builds so the caller can
 * still fail gracefully (SQLite's ALWAYS/NEVER).
 */
#ifdef NDEBUG
#define NESA_ALWAYS(x) (x)
#define NESA_NEVER(x) (x)
#else
#include <assert.h>
#define NESA_ALWAYS(x) ((x) ? 1 : (assert(0 && #x), 0))
#define NESA_NEVER(x) ((x) ? (assert(0 && #x), 1) : 0)
#endif

#endif
