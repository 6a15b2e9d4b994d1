/* SPDX-License-Identifier: MIT */
/*
 * File helpers; see xio.h.  The temporary-file-and-rename discipline
 * follows xz and signify: the destination either keeps its old contents or
 * gets the complete new ones.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "xio.h"

/*
 * Temporary files to remove on a fatal signal.  A fixed table of paths
 * because a signal handler may not allocate; outputs beyond it simply are
 * not cleaned on signals.
 */
#define MAX_PENDING 64
static char *volatile pending[MAX_PENDING];

static void
pending_add(char *path)
{
	int i;

	for (i = 0; i < MAX_PENDING; i++)
		if (pending[i] == NULL) {
			pending[i] = path;
			return;
		}
}

static void
pending_remove(const char *path)
{
	int i;

	for (i = 0; i < MAX_PENDING; i++)
		if (pending[i] == path)
			pending[i] = NULL;
}

static void
cleanup_handler(int sig)
{
	int i;

	for (i = 0; i < MAX_PENDING; i++)
		if (pending[i] != NULL)
			unlink(pending[i]);
	signal(sig, SIG_DFL);
	raise(sig);
}

void
nesa_xio_install_cleanup(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = cleanup_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

bool
nesa_is_stdio(const char *path)
{
	return path != NULL && strcmp(path, "-") == 0;
}

void
nesa_out_init(struct nesa_out *o)
{
	memset(o, 0, sizeof *o);
	o->fd = -1;
}

const char *
nesa_out_name(const struct nesa_out *o)
{
	return o->is_std || o->path == NULL ? "standard output" : o->path;
}

static void
out_release(struct nesa_out *o)
{
	if (o->tmp != NULL)
		pending_remove(o->tmp);
	nesa_free(o->path);
	nesa_free(o->tmp);
	nesa_out_init(o);
}

enum nesa_status
nesa_out_open(struct nesa_out *o, const char *path, unsigned flags, struct nesa_err *err)
{
	struct stat st;
	const char *slash;
	size_t dirlen;
	mode_t mask;

	nesa_out_init(o);
	if (nesa_is_stdio(path)) {
		if ((flags & NESA_OUT_BINARY) && !(flags & NESA_OUT_FORCE) && isatty(STDOUT_FILENO))
			return nesa_err_set(err, NESA_EUSAGE,
			                    "refusing to write binary data to a terminal (use -f to force, or -o FILE)");
		o->is_std = true;
		o->fd = STDOUT_FILENO;
		o->fp = stdout;
		return NESA_OK;
	}
	if (stat(path, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return nesa_err_set(err, NESA_ECREATE, "cannot create '%s': is a directory", path);
		if (!(flags & NESA_OUT_FORCE))
			return nesa_err_set(err, NESA_ECREATE, "cannot create '%s': file exists (use -f to overwrite)", path);
		/* Devices and fifos are written in place: rename would replace them. */
		if (!S_ISREG(st.st_mode)) {
			o->path = nesa_strdup(path);
			if (o->path == NULL)
				return nesa_err_set(err, NESA_ENOMEM, "cannot open '%s': out of memory", path);
			o->fd = open(path, O_WRONLY);
			if (o->fd < 0 || (o->fp = fdopen(o->fd, "wb")) == NULL) {
				enum nesa_status s = nesa_err_sys(err, NESA_ECREATE, "cannot open '%s'", path);

				if (o->fd >= 0)
					close(o->fd);
				out_release(o);
				return s;
			}
			return NESA_OK;
		}
	}
	slash = strrchr(path, '/');
	dirlen = slash != NULL ? (size_t)(slash - path + 1) : 0;
	o->path = nesa_strdup(path);
	o->tmp = nesa_malloc(strlen(path) + 16);
	if (o->path == NULL || o->tmp == NULL) {
		out_release(o);
		return nesa_err_set(err, NESA_ENOMEM, "cannot create '%s': out of memory", path);
	}
	/* A hidden name beside the destination, so rename() stays on one file system. */
	sprintf(o->tmp, "%.*s.%s.XXXXXX", (int)dirlen, path, path + dirlen);
	o->fd = mkstemp(o->tmp);
	if (o->fd < 0) {
		enum nesa_status s = nesa_err_sys(err, NESA_ECREATE, "cannot create '%s'", path);

		out_release(o);
		return s;
	}
	pending_add(o->tmp);
	/* mkstemp creates mode 0600; outputs get the usual 0666 & ~umask. */
	mask = umask(0);
	umask(mask);
	fchmod(o->fd, 0666 & ~mask);
	o->fp = fdopen(o->fd, "wb");
	if (o->fp == NULL) {
		enum nesa_status s = nesa_err_sys(err, NESA_ECREATE, "cannot create '%s'", path);

		close(o->fd);
		unlink(o->tmp);
		out_release(o);
		return s;
	}
	return NESA_OK;
}

enum nesa_status
nesa_out_write(struct nesa_out *o, const void *buf, size_t n, struct nesa_err *err)
{
	if (n > 0 && fwrite(buf, 1, n, o->fp) != n)
		return nesa_err_sys(err, NESA_EIO, "cannot write to '%s'", nesa_out_name(o));
	return NESA_OK;
}

enum nesa_status
nesa_out_write_json(struct nesa_out *o, const json_t *j, size_t flags, struct nesa_err *err)
{
	char *text = json_dumps(j, flags);
	enum nesa_status s;

	if (text == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	s = nesa_out_write(o, text, strlen(text), err);
	if (s == NESA_OK)
		s = nesa_out_write(o, "\n", 1, err);
	free(text); /* from json_dumps */
	return s;
}

void
nesa_out_abort(struct nesa_out *o)
{
	if (o == NULL)
		return;
	if (o->is_std) {
		fflush(stdout);
		nesa_out_init(o);
		return;
	}
	if (o->fp != NULL)
		fclose(o->fp);
	if (o->tmp != NULL)
		unlink(o->tmp);
	out_release(o);
}

enum nesa_status
nesa_out_commit(struct nesa_out *o, struct nesa_err *err)
{
	enum nesa_status s = NESA_OK;

	if (o->is_std) {
		if (fflush(stdout) != 0)
			s = nesa_err_sys(err, NESA_EIO, "cannot write to standard output");
		nesa_out_init(o);
		return s;
	}
	if (fflush(o->fp) != 0 || ferror(o->fp))
		s = nesa_err_sys(err, NESA_EIO, "cannot write to '%s'", o->path);
	else if (o->tmp != NULL && fsync(o->fd) != 0 && errno != EINVAL)
		s = nesa_err_sys(err, NESA_EIO, "cannot write to '%s'", o->path);
	if (fclose(o->fp) != 0 && s == NESA_OK)
		s = nesa_err_sys(err, NESA_EIO, "cannot write to '%s'", o->path);
	o->fp = NULL;
	if (o->tmp != NULL) {
		if (s == NESA_OK && rename(o->tmp, o->path) != 0)
			s = nesa_err_sys(err, NESA_ECREATE, "cannot create '%s'", o->path);
		if (s != NESA_OK)
			unlink(o->tmp);
	}
	out_release(o);
	return s;
}

enum nesa_status
nesa_in_open(const char *path, FILE **fp, struct nesa_err *err)
{
	if (nesa_is_stdio(path)) {
		*fp = stdin;
		return NESA_OK;
	}
	*fp = fopen(path, "rb");
	if (*fp == NULL)
		return nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
	return NESA_OK;
}

void
nesa_in_close(FILE *fp)
{
	if (fp != NULL && fp != stdin)
		fclose(fp);
}

enum nesa_status
nesa_read_exact(FILE *fp, void *buf, size_t n, const char *name, struct nesa_err *err)
{
	size_t got = fread(buf, 1, n, fp);

	if (got == n)
		return NESA_OK;
	if (ferror(fp))
		return nesa_err_sys(err, NESA_EIO, "cannot read '%s'", name);
	return nesa_err_set(err, NESA_EFORMAT, "cannot read '%s': unexpected end of file", name);
}

enum nesa_status
nesa_read_file(const char *path, size_t max, char **buf, size_t *len, struct nesa_err *err)
{
	FILE *fp;
	char *b = NULL;
	size_t n = 0, cap = 0;
	enum nesa_status s;

	*buf = NULL;
	*len = 0;
	s = nesa_in_open(path, &fp, err);
	if (s != NESA_OK)
		return s;
	for (;;) {
		size_t got;

		if (n + 1 >= cap) {
			size_t ncap = cap == 0 ? 65536 : cap * 2;
			char *nb;

			if (cap > max + 1)
				ncap = max + 2;
			nb = nesa_realloc(b, ncap);
			if (nb == NULL) {
				s = nesa_err_set(err, NESA_ENOMEM, "cannot read '%s': out of memory", path);
				goto fail;
			}
			b = nb;
			cap = ncap;
		}
		got = fread(b + n, 1, cap - n - 1, fp);
		n += got;
		if (n > max) {
			s = nesa_err_set(err, NESA_ELIMIT, "cannot read '%s': larger than %zu bytes", path, max);
			goto fail;
		}
		if (got == 0)
			break;
	}
	if (ferror(fp)) {
		s = nesa_err_sys(err, NESA_EIO, "cannot read '%s'", path);
		goto fail;
	}
	nesa_in_close(fp);
	b[n] = '\0';
	*buf = b;
	*len = n;
	return NESA_OK;
fail:
	nesa_in_close(fp);
	nesa_free(b);
	return s;
}

enum nesa_status
nesa_map_file(const char *path, struct nesa_map *map, struct nesa_err *err)
{
	struct stat st;
	int fd;

	map->addr = NULL;
	map->size = 0;
	if (nesa_is_stdio(path))
		return nesa_err_set(err, NESA_EUNSUPPORTED, "cannot map standard input");
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
	if (fstat(fd, &st) != 0) {
		close(fd);
		return nesa_err_sys(err, NESA_EIO, "cannot stat '%s'", path);
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return nesa_err_set(err, NESA_EUNSUPPORTED, "cannot map '%s': not a regular file", path);
	}
	if (st.st_size > 0) {
		map->addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map->addr == MAP_FAILED) {
			map->addr = NULL;
			close(fd);
			return nesa_err_sys(err, NESA_EIO, "cannot map '%s'", path);
		}
	}
	map->size = (size_t)st.st_size;
	close(fd);
	return NESA_OK;
}

void
nesa_unmap(struct nesa_map *map)
{
	if (map != NULL && map->addr != NULL)
		munmap(map->addr, map->size);
	if (map != NULL) {
		map->addr = NULL;
		map->size = 0;
	}
}
