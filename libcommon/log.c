/* SPDX-License-Identifier: MIT */
/*
 * stderr logging and the progress meter; see log.h.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static const char *progname = "nesa";
static int level = NESA_LOG_WARN;

void
nesa_log_set_progname(const char *name)
{
	if (name != NULL && name[0] != '\0')
		progname = name;
}

const char *
nesa_log_progname(void)
{
	return progname;
}

void
nesa_log_set_level(int l)
{
	level = l < NESA_LOG_SILENT ? NESA_LOG_SILENT : l > NESA_LOG_DEBUG ? NESA_LOG_DEBUG : l;
}

int
nesa_log_level(void)
{
	return level;
}

int
nesa_log_enabled(enum nesa_log_level l)
{
	return l != NESA_LOG_SILENT && (int)l <= level;
}

void
nesa_log(enum nesa_log_level l, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	if (!nesa_log_enabled(l))
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	/* One formatted write per line keeps lines from concurrent stages whole. */
	fprintf(stderr, "%s: %s%s\n", progname, l == NESA_LOG_WARN ? "warning: " : "", line);
}

void
nesa_log_err(const struct nesa_err *err)
{
	nesa_log(NESA_LOG_ERROR, "%s", nesa_err_msg(err));
}

double
nesa_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void
draw(struct nesa_progress *p, int final)
{
	double el = nesa_now() - p->start;
	char bar[31];
	int i, fill;

	if (p->total > 0) {
		double frac = (double)p->done / (double)p->total;

		if (frac > 1)
			frac = 1;
		fill = (int)(frac * 30);
		for (i = 0; i < 30; i++)
			bar[i] = i < fill ? '=' : ' ';
		bar[30] = '\0';
		fprintf(stderr, "\r%s %3d%% [%s] %.1f s", p->label, (int)(frac * 100), bar, el);
	} else {
		fprintf(stderr, "\r%s %llu %.1f s", p->label, (unsigned long long)p->done, el);
	}
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

void
nesa_progress_begin(struct nesa_progress *p, const char *label, uint64_t total)
{
	p->label = label;
	p->total = total;
	p->done = 0;
	p->start = nesa_now();
	p->last_draw = 0;
	p->active = level >= NESA_LOG_WARN && isatty(STDERR_FILENO);
}

void
nesa_progress_update(struct nesa_progress *p, uint64_t done)
{
	double t;

	p->done = done;
	if (!p->active)
		return;
	/* Redraw at most ten times a second: a terminal is slow. */
	t = nesa_now();
	if (t - p->last_draw < 0.1)
		return;
	p->last_draw = t;
	draw(p, 0);
}

void
nesa_progress_end(struct nesa_progress *p)
{
	if (p->active)
		draw(p, 1);
	p->active = 0;
}
