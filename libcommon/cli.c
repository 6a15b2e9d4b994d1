/* SPDX-License-Identifier: MIT */
/*
 * Shared command-line machinery; see cli.h.  The layout of usage and help
 * follows style(9) and coreutils: "usage:" lines matching the man SYNOPSIS,
 * help to stdout with status 0, misuse to stderr with status 64.
 */
#include "config.h"

#include <archive.h>
#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <lapacke.h>
#include <locale.h>
#include <math.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "cli.h"
#include "linalg.h"
#include "parallel.h"
#include "log.h"
#include "version.h"

static const struct nesa_tool *cur_tool;
static int cli_quiet;

static const char *
base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s != NULL ? s + 1 : path;
}

void
nesa_cli_init(struct nesa_cli_opts *opts, const struct nesa_tool *tool, int argc, char **argv)
{
	(void)argc;
	/* The numeric locale stays "C": JSON and TSV output must not grow commas. */
	setlocale(LC_CTYPE, "");
	/* A vanished reader becomes EPIPE on write, reported like any I/O error. */
	signal(SIGPIPE, SIG_IGN);
	cur_tool = tool;
	nesa_log_set_progname(argc > 0 && argv[0] != NULL ? base_name(argv[0]) : tool->name);
	memset(opts, 0, sizeof *opts);
}

/* Standard option help lines, in the order they are printed. */
static const struct {
	char letter;
	const char *line;
} std_help[] = {
	{'i', "  -i, --input=FILE          read input from FILE ('-' is standard input)\n"},
	{'o', "  -o, --output=FILE         write output to FILE ('-' is standard output)\n"},
	{'f', "  -f, --force               overwrite outputs; allow binary output to a terminal\n"},
	{'t', "  -t, --threads=N           use N threads (default: one per core)\n"},
	{'s', "  -s, --seed=N              seed for every random choice (default 0)\n"},
	{'v', "  -v, --verbose             say more on standard error (repeatable)\n"},
	{'q', "  -q, --quiet               say less on standard error (repeatable)\n"},
	{'h', "  -h, --help                print this help and exit\n"},
	{'V', "  -V, --version             print the version and exit\n"},
};

void
nesa_cli_usage(const struct nesa_tool *tool, FILE *fp)
{
	const char *s = tool->synopsis;
	int first = 1;

	while (*s != '\0') {
		const char *e = strchr(s, '\n');
		size_t n = e != NULL ? (size_t)(e - s) : strlen(s);

		fprintf(fp, "%s %s %.*s\n", first ? "usage:" : "      ", tool->name, (int)n, s);
		first = 0;
		s += n;
		if (*s == '\n')
			s++;
	}
}

void
nesa_cli_help(const struct nesa_tool *tool)
{
	size_t i;

	printf("%s - %s\n\n", tool->name, tool->purpose);
	nesa_cli_usage(tool, stdout);
	printf("\nOptions:\n%s", tool->options != NULL ? tool->options : "");
	for (i = 0; i < sizeof std_help / sizeof std_help[0]; i++)
		if (strchr(tool->std_opts, std_help[i].letter) != NULL)
			fputs(std_help[i].line, stdout);
	printf("\nExit status: 0 success, 1 failure, 64 usage, 65 bad data, 66 no input,\n"
	       "69 stage failure, 70 internal error, 73 cannot create output, 74 I/O error.\n"
	       "See the %s(1) manual page for details.\n", tool->name);
}

void
nesa_cli_version(const struct nesa_tool *tool)
{
	int major = 0, minor = 0, patch = 0;

	LAPACK_ilaver(&major, &minor, &patch);
	printf("%s (nesa) %s\n", tool->name, NESA_VERSION_STRING);
	printf("%s, jansson %s, libsodium %s, zlib %s\n", archive_version_string(),
	       JANSSON_VERSION, sodium_version_string(), zlibVersion());
	printf("BLAS: %s\nLAPACK %d.%d.%d\n", openblas_get_config(), major, minor, patch);
}

int
nesa_usage_error(const struct nesa_tool *tool, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", nesa_log_progname());
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (!cli_quiet)
		nesa_cli_usage(tool, stderr);
	fprintf(stderr, "Try '%s --help' for more information.\n", tool->name);
	return nesa_exit_code(NESA_EUSAGE);
}

int
nesa_cli_parse_i64(const struct nesa_tool *tool, const char *opt, const char *arg,
                   int64_t min, int64_t max, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(arg, &end, 10);
	if (arg[0] == '\0' || *end != '\0' || errno != 0) {
		nesa_usage_error(tool, "invalid value '%s' for %s: expected an integer", arg, opt);
		return 0;
	}
	if (v < min || v > max) {
		nesa_usage_error(tool, "invalid value '%s' for %s: must be between %lld and %lld", arg,
		                 opt, (long long)min, (long long)max);
		return 0;
	}
	*out = v;
	return 1;
}

int
nesa_cli_parse_double(const struct nesa_tool *tool, const char *opt, const char *arg,
                      double min, double max, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (arg[0] == '\0' || *end != '\0' || errno != 0 || !isfinite(v)) {
		nesa_usage_error(tool, "invalid value '%s' for %s: expected a number", arg, opt);
		return 0;
	}
	if (v < min || v > max) {
		nesa_usage_error(tool, "invalid value '%s' for %s: must be between %g and %g", arg, opt,
		                 min, max);
		return 0;
	}
	*out = v;
	return 1;
}

enum nesa_status
nesa_parse_size(const char *s, uint64_t *out, struct nesa_err *err)
{
	char *end;
	double v;
	uint64_t mult = 1;

	errno = 0;
	v = strtod(s, &end);
	if (s[0] == '\0' || end == s || errno != 0 || !isfinite(v) || v < 0)
		return nesa_err_set(err, NESA_EINVAL, "invalid size '%s'", s);
	switch (*end) {
	case 'k': case 'K': mult = 1ull << 10; end++; break;
	case 'm': case 'M': mult = 1ull << 20; end++; break;
	case 'g': case 'G': mult = 1ull << 30; end++; break;
	case 't': case 'T': mult = 1ull << 40; end++; break;
	default: break;
	}
	if (mult > 1 && *end == 'i')
		end++;
	if (*end == 'B')
		end++;
	if (*end != '\0')
		return nesa_err_set(err, NESA_EINVAL, "invalid size '%s': unknown suffix '%s'", s, end);
	v *= (double)mult;
	if (v >= 18446744073709551616.0)
		return nesa_err_set(err, NESA_EINVAL, "invalid size '%s': too large", s);
	*out = (uint64_t)v;
	return NESA_OK;
}

int
nesa_cli_parse_size(const struct nesa_tool *tool, const char *opt, const char *arg, uint64_t *out)
{
	struct nesa_err err;

	if (nesa_parse_size(arg, out, &err) != NESA_OK) {
		nesa_usage_error(tool, "%s for %s", err.msg, opt);
		return 0;
	}
	return 1;
}

enum nesa_cli_result
nesa_cli_std(struct nesa_cli_opts *opts, int opt, const char *arg, int *code)
{
	int64_t v;

	switch (opt) {
	case 'i':
		opts->input = arg;
		return NESA_CLI_HANDLED;
	case 'o':
		opts->output = arg;
		return NESA_CLI_HANDLED;
	case 'f':
		opts->force = 1;
		return NESA_CLI_HANDLED;
	case 'v':
		opts->verbosity++;
		return NESA_CLI_HANDLED;
	case 'q':
		opts->verbosity--;
		cli_quiet = opts->verbosity < 0;
		return NESA_CLI_HANDLED;
	case 't':
		if (!nesa_cli_parse_i64(cur_tool, "-t", arg, 1, 1024, &v)) {
			*code = nesa_exit_code(NESA_EUSAGE);
			return NESA_CLI_EXIT;
		}
		opts->threads = (int)v;
		return NESA_CLI_HANDLED;
	case 's':
		if (!nesa_cli_parse_i64(cur_tool, "-s", arg, 0, INT64_MAX, &v)) {
			*code = nesa_exit_code(NESA_EUSAGE);
			return NESA_CLI_EXIT;
		}
		opts->seed = (uint64_t)v;
		opts->seed_set = 1;
		return NESA_CLI_HANDLED;
	case 'h':
		nesa_cli_help(cur_tool);
		*code = nesa_exit(NESA_OK, NULL);
		return NESA_CLI_EXIT;
	case 'V':
		nesa_cli_version(cur_tool);
		*code = nesa_exit(NESA_OK, NULL);
		return NESA_CLI_EXIT;
	case '?':
		/* getopt_long already said what was wrong. */
		if (!cli_quiet)
			nesa_cli_usage(cur_tool, stderr);
		fprintf(stderr, "Try '%s --help' for more information.\n", cur_tool->name);
		*code = nesa_exit_code(NESA_EUSAGE);
		return NESA_CLI_EXIT;
	default:
		return NESA_CLI_UNKNOWN;
	}
}

void
nesa_cli_apply(const struct nesa_cli_opts *opts)
{
	nesa_log_set_level(NESA_LOG_WARN + opts->verbosity);
	nesa_linalg_set_threads(opts->threads);
}

int
nesa_exit(enum nesa_status status, const struct nesa_err *err)
{
	int code = nesa_exit_code(status);

	nesa_parallel_shutdown();
	/* A reader that stopped early (| head) is not worth a message. */
	if (status != NESA_OK && err != NULL && err->sys_errno != EPIPE)
		nesa_log_err(err);
	/*
	 * A write error on stdout may only show at fflush/fclose time (a full
	 * disk, a closed pipe): report it rather than exit 0 with lost data.
	 * EPIPE after the reader went away is not our failure to report twice.
	 */
	if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0) {
		if (errno != EPIPE)
			nesa_log(NESA_LOG_ERROR, "write error on standard output: %s", strerror(errno));
		if (code == 0)
			code = nesa_exit_code(NESA_EIO);
	}
	return code;
}
