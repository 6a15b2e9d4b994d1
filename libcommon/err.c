/* SPDX-License-Identifier: MIT */
/*
 * Status codes and error details; see err.h.  Not a logger: nothing here
 * prints.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

static const struct {
	const char *name;
	const char *text;
	int exit_code;
} status_table[NESA_STATUS_COUNT] = {
	[NESA_OK] = {"OK", "success", 0},
	[NESA_ENOMEM] = {"ENOMEM", "out of memory", 1},
	[NESA_EIO] = {"EIO", "input/output error", 74},
	[NESA_EFORMAT] = {"EFORMAT", "malformed data", 65},
	[NESA_EVERSION] = {"EVERSION", "unsupported format version", 65},
	[NESA_ESHAPE] = {"ESHAPE", "invalid shape", 65},
	[NESA_EINVAL] = {"EINVAL", "invalid argument", 64},
	[NESA_EUNSUPPORTED] = {"EUNSUPPORTED", "unsupported", 65},
	[NESA_ELINALG] = {"ELINALG", "linear algebra failure", 1},
	[NESA_EINTERNAL] = {"EINTERNAL", "internal error", 70},
	[NESA_ENOENT] = {"ENOENT", "cannot open input", 66},
	[NESA_ECREATE] = {"ECREATE", "cannot create output", 73},
	[NESA_EUSAGE] = {"EUSAGE", "usage error", 64},
	[NESA_ECHECKSUM] = {"ECHECKSUM", "checksum mismatch", 65},
	[NESA_ELIMIT] = {"ELIMIT", "limit exceeded", 1},
	[NESA_EREMOTE] = {"EREMOTE", "pipeline stage failed", 69},
	[NESA_ETIMEOUT] = {"ETIMEOUT", "timed out", 69},
	[NESA_ENOTIMPL] = {"ENOTIMPL", "not implemented yet", 1},
};

static int
valid(enum nesa_status status)
{
	return (unsigned)status < NESA_STATUS_COUNT;
}

const char *
nesa_strerror(enum nesa_status status)
{
	return valid(status) ? status_table[status].text : "unknown status";
}

const char *
nesa_status_name(enum nesa_status status)
{
	return valid(status) ? status_table[status].name : "EUNKNOWN";
}

int
nesa_exit_code(enum nesa_status status)
{
	/* An out-of-range status is itself a bug, hence EX_SOFTWARE. */
	return valid(status) ? status_table[status].exit_code : 70;
}

void
nesa_err_clear(struct nesa_err *err)
{
	if (err == NULL)
		return;
	err->status = NESA_OK;
	err->sys_errno = 0;
	err->msg[0] = '\0';
}

enum nesa_status
nesa_err_setv(struct nesa_err *err, enum nesa_status status, const char *fmt, va_list ap)
{
	if (err == NULL)
		return status;
	err->status = status;
	err->sys_errno = 0;
	if (fmt == NULL)
		snprintf(err->msg, sizeof err->msg, "%s", nesa_strerror(status));
	else
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	return status;
}

enum nesa_status
nesa_err_set(struct nesa_err *err, enum nesa_status status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	nesa_err_setv(err, status, fmt, ap);
	va_end(ap);
	return status;
}

enum nesa_status
nesa_err_sys(struct nesa_err *err, enum nesa_status status, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;
	size_t len;

	if (err == NULL)
		return status;
	va_start(ap, fmt);
	nesa_err_setv(err, status, fmt, ap);
	va_end(ap);
	err->sys_errno = saved;
	len = strlen(err->msg);
	if (saved != 0 && len < sizeof err->msg)
		snprintf(err->msg + len, sizeof err->msg - len, ": %s", strerror(saved));
	return status;
}

enum nesa_status
nesa_err_prefix(struct nesa_err *err, const char *fmt, ...)
{
	char old[NESA_ERR_MSG_MAX];
	size_t len;
	va_list ap;

	if (err == NULL)
		return NESA_OK;
	if (err->msg[0] == '\0')
		snprintf(err->msg, sizeof err->msg, "%s", nesa_strerror(err->status));
	memcpy(old, err->msg, sizeof old);
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	/* Truncation keeps the prefix, which names what the user asked for. */
	len = strlen(err->msg);
	if (len + 3 < sizeof err->msg) {
		size_t n = strnlen(old, sizeof err->msg - len - 3);

		memcpy(err->msg + len, ": ", 2);
		memcpy(err->msg + len + 2, old, n);
		err->msg[len + 2 + n] = '\0';
	}
	return err->status;
}

enum nesa_status
nesa_err_copy(struct nesa_err *dst, const struct nesa_err *src)
{
	if (dst != NULL && dst != src)
		memcpy(dst, src, sizeof *dst);
	return src->status;
}

const char *
nesa_err_msg(const struct nesa_err *err)
{
	if (err == NULL)
		return "";
	return err->msg[0] != '\0' ? err->msg : nesa_strerror(err->status);
}
