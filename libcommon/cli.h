/* SPDX-License-Identifier: MIT */
/*
 * Shared command-line machinery of the six tools: the standard options
 * (-i -o -f -v -q -t -s -h -V), usage and help printers, number parsing with
 * usage errors, and nesa_exit(), which maps a status to an exit code and
 * checks that stdout really reached its destination.
 *
 * Each tool describes itself with a struct nesa_tool and keeps its own
 * getopt_long loop, handing unknown-to-it options to nesa_cli_std().
 */
#ifndef NESA_CLI_H
#define NESA_CLI_H

#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

struct nesa_tool {
	const char *name;     /* "nesa-route" */
	const char *purpose;  /* one line, no trailing period */
	/*
	 * Usage lines without the program name, one per form, separated by
	 * '\n'; they must match the man page SYNOPSIS word for word.
	 */
	const char *synopsis;
	/*
	 * Full help body: option lines with descriptions at column 28, tool
	 * options first.  The standard options are appended by the printer
	 * when listed in std_opts.
	 */
	const char *options;
	const char *std_opts; /* which standard short options apply, e.g. "ioFvqtsVh" */
};

struct nesa_cli_opts {
	const char *input;  /* -i FILE, NULL if not given; "-" is stdin */
	const char *output; /* -o FILE, NULL if not given; "-" is stdout */
	int force;          /* -f: overwrite outputs, allow binary to a tty */
	int verbosity;      /* sum of -v (+1) and -q (-1) */
	int threads;        /* -t N; 0 means one per core */
	uint64_t seed;      /* -s N */
	int seed_set;
};

/* Short options shared by every tool; a tool appends its own letters. */
#define NESA_CLI_SHORTOPTS "i:o:fvqt:s:hV"

/* getopt_long entries of the standard options, for a tool's long table. */
#define NESA_CLI_LONGOPTS                                   \
	{"input", required_argument, NULL, 'i'},            \
	{"output", required_argument, NULL, 'o'},           \
	{"force", no_argument, NULL, 'f'},                  \
	{"verbose", no_argument, NULL, 'v'},                \
	{"quiet", no_argument, NULL, 'q'},                  \
	{"threads", required_argument, NULL, 't'},          \
	{"seed", required_argument, NULL, 's'},             \
	{"help", no_argument, NULL, 'h'},                   \
	{"version", no_argument, NULL, 'V'}

/* Tools number their long-only options from here so they never collide. */
#define NESA_CLI_LONGONLY_BASE (INT_MIN)

/* What nesa_cli_std() did with an option. */
enum nesa_cli_result {
	NESA_CLI_UNKNOWN = 0, /* not a standard option: the tool handles it */
	NESA_CLI_HANDLED,     /* recorded in opts; continue parsing */
	NESA_CLI_EXIT,        /* help, version or usage error printed: exit with *code */
};

/* Sets the program name (for messages) and default options. */
void nesa_cli_init(struct nesa_cli_opts *opts, const struct nesa_tool *tool, int argc, char **argv);

/*
 * Handles one getopt_long result.  On NESA_CLI_EXIT, *code is the exit code
 * (0 for -h/-V, 64 for a bad value or unknown option '?').
 */
enum nesa_cli_result nesa_cli_std(struct nesa_cli_opts *opts, int opt, const char *arg, int *code);

/* Applies -v/-q to the log level and -t to the thread pools. */
void nesa_cli_apply(const struct nesa_cli_opts *opts);

/* Prints "usage: prog ..." lines to fp. */
void nesa_cli_usage(const struct nesa_tool *tool, FILE *fp);

/* Full --help text to stdout. */
void nesa_cli_help(const struct nesa_tool *tool);

/* "prog (nesa) X.Y.Z" and library versions to stdout. */
void nesa_cli_version(const struct nesa_tool *tool);

/*
 * Prints "prog: REASON", the short usage (unless -q) and a pointer to
 * --help on stderr; returns the usage exit code (64).
 */
int nesa_usage_error(const struct nesa_tool *tool, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Parsers for option values; on failure they print a usage error naming the
 * option and return 0, otherwise 1.  nesa_cli_parse_size accepts suffixes
 * k, M, G, T (powers of 1024) and an optional trailing 'B' or 'iB'.
 */
int nesa_cli_parse_i64(const struct nesa_tool *tool, const char *opt, const char *arg,
                       int64_t min, int64_t max, int64_t *out);
int nesa_cli_parse_double(const struct nesa_tool *tool, const char *opt, const char *arg,
                          double min, double max, double *out);
int nesa_cli_parse_size(const struct nesa_tool *tool, const char *opt, const char *arg, uint64_t *out);

/*
 * Parses a size string without printing (for files and plan inputs):
 * same syntax as nesa_cli_parse_size.  Returns NESA_EINVAL with a message.
 */
enum nesa_status nesa_parse_size(const char *s, uint64_t *out, struct nesa_err *err);

/*
 * The last step of every main(): logs err (if status is not OK and err has
 * a message not yet printed), flushes and closes stdout and checks for a
 * silent write failure (e.g. ENOSPC), which becomes exit code 74.  Returns
 * the exit code to return from main().
 */
int nesa_exit(enum nesa_status status, const struct nesa_err *err);

#endif
