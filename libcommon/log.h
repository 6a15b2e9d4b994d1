/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr, the only place libcommon prints.
 *
 * Levels (default WARN): ERROR failures, WARN things the user should know,
 * INFO progress and summaries (-v), DEBUG internals (-vv).  Each -v raises
 * the level by one, each -q lowers it; SILENT prints nothing at all.
 * Lines look like "nesa-route: message".  Progress bars are drawn only when
 * stderr is a terminal and the level is at least WARN.
 */
#ifndef NESA_LOG_H
#define NESA_LOG_H

#include <stdint.h>

#include "err.h"

enum nesa_log_level {
	NESA_LOG_SILENT = 0,
	NESA_LOG_ERROR,
	NESA_LOG_WARN,
	NESA_LOG_INFO,
	NESA_LOG_DEBUG,
};

/* Program name used as prefix; the string must outlive the program. */
void nesa_log_set_progname(const char *name);
const char *nesa_log_progname(void);

void nesa_log_set_level(int level); /* clamped to SILENT..DEBUG */
int nesa_log_level(void);
int nesa_log_enabled(enum nesa_log_level level);

void nesa_log(enum nesa_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Logs err's message at ERROR level ("prog: message"). */
void nesa_log_err(const struct nesa_err *err);

/*
 * A progress meter on stderr for long work: "label  42% [=====    ] 3.1 s".
 * Silent unless stderr is a tty and logging is at least WARN, so scripts and
 * CI logs stay clean.  total may be 0 when unknown (a counter is shown).
 */
struct nesa_progress {
	const char *label;
	uint64_t total;
	uint64_t done;
	double start;     /* seconds, monotonic */
	double last_draw; /* seconds, monotonic */
	int active;
};

void nesa_progress_begin(struct nesa_progress *p, const char *label, uint64_t total);
void nesa_progress_update(struct nesa_progress *p, uint64_t done);
void nesa_progress_end(struct nesa_progress *p);

/* Monotonic clock in seconds. */
double nesa_now(void);

#endif
