/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for shard archives: round trips over every dtype, shape rank
 * and read path (mapped, copied, compressed, pipe, FIFO), reproducible
 * output, corruption and truncation at every offset, hostile archives
 * crafted with libarchive, write failures and allocation failures.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <jansson.h>

#include "testutil.h"

#include "dtype.h"
#include "shard.h"
#include "tensor.h"
#include "version.h"
#include "xio.h"

#define PATHLEN 512
#define MIB ((size_t)1 << 20)

static char tmp[PATHLEN];

/* Small file helpers; failures here are test-framework failures. */

static char *
tp(char *buf, const char *name)
{
	int n = snprintf(buf, PATHLEN, "%s/%s", tmp, name);

	assert_true(n > 0 && n < PATHLEN);
	return buf;
}

static unsigned char *
slurp(const char *path, size_t *n)
{
	FILE *fp = fopen(path, "rb");
	unsigned char *b;
	long len;

	assert_non_null(fp);
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	len = ftell(fp);
	assert_true(len >= 0);
	rewind(fp);
	b = malloc((size_t)len + 1);
	assert_non_null(b);
	assert_int_equal(fread(b, 1, (size_t)len, fp), (size_t)len);
	fclose(fp);
	*n = (size_t)len;
	return b;
}

static void
spit(const char *path, const void *b, size_t n)
{
	FILE *fp = fopen(path, "wb");

	assert_non_null(fp);
	assert_int_equal(fwrite(b, 1, n, fp), n);
	assert_int_equal(fclose(fp), 0);
}

static bool
exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* Number of entries in the temporary directory (temporary outputs included). */
static int
count_files(void)
{
	DIR *d = opendir(tmp);
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static void
clean_dir(void)
{
	DIR *d = opendir(tmp);
	struct dirent *de;
	char p[PATHLEN];

	assert_non_null(d);
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			unlink(tp(p, de->d_name));
	closedir(d);
}

static void
write_all(int fd, const unsigned char *b, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, b, n);

		if (w <= 0)
			return;
		b += w;
		n -= (size_t)w;
	}
}

/*
 * Ends a forked child.  It execs a shell that exits with the code instead of
 * calling _exit(): valgrind follows a fork but not an exec, so it does not
 * leak-check the child's copy of the parent's heap.
 */
static void __attribute__((noreturn))
child_exit(int code)
{
	char arg[16];

	snprintf(arg, sizeof arg, "%d", code);
	execl("/bin/sh", "sh", "-c", "exit \"$1\"", "sh", arg, (char *)NULL);
	_exit(code);
}

/* A child process that feeds bytes into a pipe, the pipe installed as stdin. */
struct feeder {
	pid_t pid;
	int saved_stdin;
};

static void
feed_stdin(struct feeder *f, const unsigned char *bytes, size_t n)
{
	int p[2];

	assert_int_equal(pipe(p), 0);
	fflush(stdout);
	fflush(stderr);
	f->pid = fork();
	assert_true(f->pid >= 0);
	if (f->pid == 0) {
		close(p[0]);
		write_all(p[1], bytes, n);
		child_exit(0);
	}
	close(p[1]);
	f->saved_stdin = dup(STDIN_FILENO);
	assert_true(f->saved_stdin >= 0);
	assert_true(dup2(p[0], STDIN_FILENO) >= 0);
	close(p[0]);
}

static void
feed_end(struct feeder *f)
{
	int st;

	/* Restoring stdin closes the pipe, so a writer still blocked gets EPIPE. */
	dup2(f->saved_stdin, STDIN_FILENO);
	close(f->saved_stdin);
	waitpid(f->pid, &st, 0);
}

static enum nesa_status
open_stdin(const unsigned char *bytes, size_t n, unsigned flags, struct nesa_shard **sh,
           struct nesa_err *err)
{
	struct feeder f;
	enum nesa_status s;

	feed_stdin(&f, bytes, n);
	s = nesa_shard_open("-", flags, sh, err);
	feed_end(&f);
	return s;
}

/* A set of tensors and a header to write. */
struct fix {
	struct nesa_tset ts;
	const struct nesa_tensor **ptrs; /* (n) into ts.items */
	size_t n;
	json_t *header;
};

static json_t *
make_header(void)
{
	unsigned char sha[NESA_SHA256_BYTES];
	char hex[NESA_SHA256_HEX];
	json_t *h;

	nesa_sha256("tiny", 4, sha);
	h = json_pack("{s:{s:s,s:s,s:s,s:s,s:i},s:{s:i,s:i},s:n,s:{s:i,s:f,s:s}}",
	              "model", "name", "tiny", "arch", "llama", "source", "tiny.bin", "source_sha256",
	              nesa_sha256_hex(sha, hex), "n_blocks", 4,
	              "blocks", "first", 1, "count", 2,
	              "graph",
	              "meta", "d_model", 8, "eps", 1e-5, "note", "unicode \xc3\xa4 is fine here");
	assert_non_null(h);
	return h;
}

static void
fix_add(struct fix *f, const char *name, int dtype, int ndim, const int64_t *shape, uint64_t *rng)
{
	struct nesa_tensor *t;
	struct nesa_err err;
	size_t i;

	assert_int_equal(nesa_tset_alloc(&f->ts, name, dtype, ndim, shape, &t, &err), NESA_OK);
	for (i = 0; i < t->nbytes; i++)
		((unsigned char *)t->data)[i] = (unsigned char)test_rand(rng);
}

static void
fix_done(struct fix *f)
{
	size_t i;

	f->n = f->ts.n;
	f->ptrs = calloc(f->n + 1, sizeof *f->ptrs);
	assert_non_null(f->ptrs);
	for (i = 0; i < f->n; i++)
		f->ptrs[i] = &f->ts.items[i];
	f->header = make_header();
}

static void
fix_release(struct fix *f)
{
	nesa_tset_release(&f->ts);
	free(f->ptrs);
	json_decref(f->header);
	memset(f, 0, sizeof *f);
}

/* Every dtype the traits table knows, at every rank, plus edge cases. */
static void
fix_all(struct fix *f)
{
	static const int64_t base[NESA_MAX_DIMS] = {3, 2, 5, 4};
	uint64_t rng = 137;
	int64_t shape[NESA_MAX_DIMS];
	char name[300];
	int d, nd, k;

	nesa_tset_init(&f->ts);
	for (d = 0; d < NESA_DTYPE_MAX; d++) {
		const struct nesa_dtype_traits *tr = nesa_dtype_traits(d);

		if (tr == NULL)
			continue;
		for (nd = 0; nd <= NESA_MAX_DIMS; nd++) {
			/* A block type needs a last dimension; it blocks along it. */
			if (nd == 0 && tr->block_size > 1)
				continue;
			for (k = 0; k < nd; k++)
				shape[k] = base[k];
			if (nd > 0)
				shape[nd - 1] *= tr->block_size;
			snprintf(name, sizeof name, "%s.rank%d", tr->name, nd);
			fix_add(f, name, d, nd, shape, &rng);
		}
	}
	shape[0] = 0;
	shape[1] = 3;
	fix_add(f, "empty", NESA_F32, 2, shape, &rng);
	shape[0] = 7;
	fix_add(f, "blk/0/attn.wq", NESA_F32, 1, shape, &rng);
	/* The longest name needs a pax header: ustar holds at most 100 + 155 bytes. */
	memset(name, 'x', NESA_SHARD_NAME_MAX);
	name[NESA_SHARD_NAME_MAX] = '\0';
	fix_add(f, name, NESA_U8, 1, shape, &rng);
	fix_done(f);
}

/* A few tensors with short names: an archive of a few KB, plain ustar. */
static void
fix_small(struct fix *f)
{
	int64_t a[2] = {4, 8}, b[1] = {16}, c[2] = {3, 3};
	uint64_t rng = 42;

	nesa_tset_init(&f->ts);
	fix_add(f, "a", NESA_F32, 2, a, &rng);
	fix_add(f, "b", NESA_F16, 1, b, &rng);
	fix_add(f, "c", NESA_I8, 2, c, &rng);
	fix_done(f);
}

static void
write_ok(const struct fix *f, const char *path, enum nesa_shard_compress c, bool force)
{
	struct nesa_shard_write_opts o = {c, force};
	struct nesa_err err;

	nesa_err_clear(&err);
	if (nesa_shard_write(path, f->header, f->ptrs, f->n, &o, &err) != NESA_OK)
		fail_msg("write '%s': %s", path, err.msg);
}

static struct nesa_shard *
open_ok(const char *path, unsigned flags)
{
	struct nesa_shard *sh = NULL;
	struct nesa_err err;

	if (nesa_shard_open(path, flags, &sh, &err) != NESA_OK)
		fail_msg("open '%s': %s", path, err.msg);
	return sh;
}

/* The shard holds exactly the fixture's tensors and a manifest describing them. */
static void
check_same(struct nesa_shard *sh, const struct fix *f, bool mapped)
{
	struct nesa_tset *ts = nesa_shard_tensors(sh);
	json_t *m = nesa_shard_manifest(sh), *arr;
	size_t i;

	assert_int_equal(ts->n, f->n);
	assert_int_equal(nesa_shard_is_mapped(sh), mapped);
	assert_int_equal(ts->n_maps, mapped ? 1 : 0);
	assert_string_equal(json_string_value(json_object_get(m, "format")), "nesa-archive");
	assert_int_equal(json_integer_value(json_object_get(m, "version")), 1);
	assert_string_equal(json_string_value(json_object_get(m, "created_by")),
	                    "nesa " NESA_VERSION_STRING);
	assert_true(json_equal(json_object_get(m, "model"), json_object_get(f->header, "model")));
	assert_true(json_equal(json_object_get(m, "blocks"), json_object_get(f->header, "blocks")));
	assert_true(json_equal(json_object_get(m, "meta"), json_object_get(f->header, "meta")));
	assert_true(json_is_null(json_object_get(m, "graph")));
	arr = json_object_get(m, "tensors");
	assert_int_equal(json_array_size(arr), f->n);
	for (i = 0; i < f->n; i++) {
		const struct nesa_tensor *a = f->ptrs[i], *b = &ts->items[i];
		json_t *o = json_array_get(arr, i);
		unsigned char sha[NESA_SHA256_BYTES];
		char hex[NESA_SHA256_HEX];
		int k;

		assert_string_equal(b->name, a->name);
		assert_string_equal(json_string_value(json_object_get(o, "name")), a->name);
		assert_string_equal(json_string_value(json_object_get(o, "dtype")), nesa_dtype_name(a->dtype));
		assert_int_equal(json_integer_value(json_object_get(o, "bytes")), a->nbytes);
		assert_int_equal(b->dtype, a->dtype);
		assert_int_equal(b->ndim, a->ndim);
		assert_int_equal(json_array_size(json_object_get(o, "shape")), a->ndim);
		for (k = 0; k < a->ndim; k++) {
			assert_int_equal(b->shape[k], a->shape[k]);
			assert_int_equal(json_integer_value(json_array_get(json_object_get(o, "shape"), (size_t)k)),
			                 a->shape[k]);
		}
		assert_int_equal(b->nbytes, a->nbytes);
		assert_true(nesa_tensor_is_contiguous(b));
		assert_non_null(b->data);
		assert_int_equal((uintptr_t)b->data % NESA_ALIGN, 0);
		if (a->nbytes > 0)
			assert_memory_equal(b->data, a->data, a->nbytes);
		nesa_sha256(a->data, a->nbytes, sha);
		assert_string_equal(json_string_value(json_object_get(o, "sha256")), nesa_sha256_hex(sha, hex));
		if (mapped && a->nbytes > 0) {
			/* Zero copy: the data is the mapping itself. */
			uintptr_t p = (uintptr_t)b->data, base = (uintptr_t)ts->maps[0].addr;

			assert_true(p >= base && p + b->nbytes <= base + ts->maps[0].size);
			assert_int_equal((p - base) % 512, 0);
			assert_true(b->flags & NESA_TENSOR_READONLY);
		} else {
			assert_false(b->flags & NESA_TENSOR_READONLY);
		}
	}
}

/* Round trips. */

static void
test_roundtrip(void **state)
{
	static const struct {
		enum nesa_shard_compress c;
		const char *file;
		unsigned char magic[6];
		size_t magic_len;
	} comp[] = {
		{NESA_SHARD_GZIP, "rt.nsa.gz", {0x1f, 0x8b}, 2},
		{NESA_SHARD_ZSTD, "rt.nsa.zst", {0x28, 0xb5, 0x2f, 0xfd}, 4},
		{NESA_SHARD_XZ, "rt.nsa.xz", {0xfd, '7', 'z', 'X', 'Z', 0}, 6},
	};
	struct fix f;
	struct nesa_shard *sh;
	struct nesa_err err;
	unsigned char *bytes, *b2;
	size_t n, n2, i;
	char p[PATHLEN], q[PATHLEN];
	json_t *m;
	pid_t pid;
	int st;

	(void)state;
	fix_all(&f);
	assert_true(f.n >= 6 * 5 - 1);
	write_ok(&f, tp(p, "rt.nsa"), NESA_SHARD_NONE, false);

	sh = open_ok(p, 0);
	check_same(sh, &f, true);
	assert_string_equal(nesa_shard_path(sh), p);
	assert_int_equal(nesa_shard_verify(sh, NULL, &err), NESA_OK);
	nesa_shard_free(sh);

	sh = open_ok(p, NESA_SHARD_NO_MMAP);
	check_same(sh, &f, false);
	nesa_shard_free(sh);

	sh = open_ok(p, NESA_SHARD_DEFER_HASH);
	check_same(sh, &f, true);
	assert_int_equal(nesa_shard_verify(sh, "blk/0/attn.wq", &err), NESA_OK);
	assert_int_equal(nesa_shard_verify(sh, NULL, &err), NESA_OK);
	assert_int_equal(nesa_shard_error(sh)->status, NESA_OK);
	nesa_shard_free(sh);

	/* Only the manifest, and the same one the full reader sees. */
	assert_int_equal(nesa_shard_read_manifest(p, &m, &err), NESA_OK);
	sh = open_ok(p, 0);
	assert_true(json_equal(m, nesa_shard_manifest(sh)));
	nesa_shard_free(sh);
	json_decref(m);

	for (i = 0; i < sizeof comp / sizeof comp[0]; i++) {
		write_ok(&f, tp(q, comp[i].file), comp[i].c, false);
		bytes = slurp(q, &n);
		assert_true(n > comp[i].magic_len);
		assert_memory_equal(bytes, comp[i].magic, comp[i].magic_len);
		free(bytes);
		sh = open_ok(q, 0);
		check_same(sh, &f, false);
		nesa_shard_free(sh);
		sh = open_ok(q, NESA_SHARD_DEFER_HASH);
		check_same(sh, &f, false);
		nesa_shard_free(sh);
		assert_int_equal(nesa_shard_read_manifest(q, &m, &err), NESA_OK);
		json_decref(m);
	}

	/* Standard input from a pipe, plain and compressed. */
	bytes = slurp(p, &n);
	assert_int_equal(open_stdin(bytes, n, 0, &sh, &err), NESA_OK);
	check_same(sh, &f, false);
	assert_string_equal(nesa_shard_path(sh), "-");
	nesa_shard_free(sh);
	b2 = slurp(tp(q, "rt.nsa.zst"), &n2);
	assert_int_equal(open_stdin(b2, n2, 0, &sh, &err), NESA_OK);
	check_same(sh, &f, false);
	nesa_shard_free(sh);
	free(b2);

	/* A FIFO by name cannot be mapped and is streamed. */
	assert_int_equal(mkfifo(tp(q, "fifo"), 0600), 0);
	fflush(stdout);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(q, O_WRONLY);

		write_all(fd, bytes, n);
		child_exit(0);
	}
	assert_int_equal(nesa_shard_open(q, 0, &sh, &err), NESA_OK);
	waitpid(pid, &st, 0);
	check_same(sh, &f, false);
	nesa_shard_free(sh);
	unlink(q);

	/* Standard output: the same bytes as the file. */
	fflush(stdout);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(tp(q, "stdout.nsa"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
		struct nesa_err e2;

		if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0)
			child_exit(99);
		child_exit(nesa_shard_write("-", f.header, f.ptrs, f.n, NULL, &e2) == NESA_OK ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	b2 = slurp(tp(q, "stdout.nsa"), &n2);
	assert_int_equal(n2, n);
	assert_memory_equal(b2, bytes, n);
	free(b2);
	free(bytes);
	fix_release(&f);
	clean_dir();
}

/* A terminal on stdout is refused without force. */
static void
test_tty_refused(void **state)
{
	struct fix f;
	pid_t pid;
	int st, m;

	(void)state;
	m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0 || ptsname(m) == NULL) {
		if (m >= 0)
			close(m);
		skip();
	}
	fix_small(&f);
	fflush(stdout);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(ptsname(m), O_RDWR | O_NOCTTY);
		struct nesa_err err;
		enum nesa_status s;

		if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0)
			child_exit(99);
		s = nesa_shard_write("-", f.header, f.ptrs, f.n, NULL, &err);
		child_exit(s == NESA_EUSAGE ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	close(m);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	fix_release(&f);
}

/* Same input, same bytes; and the tar headers carry the fixed metadata. */
static void
test_reproducible(void **state)
{
	static const enum nesa_shard_compress cs[] = {NESA_SHARD_NONE, NESA_SHARD_GZIP,
	                                              NESA_SHARD_ZSTD, NESA_SHARD_XZ};
	unsigned char *a, *b;
	size_t na, nb, i, off;
	char p[PATHLEN], q[PATHLEN];
	struct fix f;
	int members = 0;

	(void)state;
	fix_all(&f);
	for (i = 0; i < sizeof cs / sizeof cs[0]; i++) {
		write_ok(&f, tp(p, "r1"), cs[i], true);
		write_ok(&f, tp(q, "r2"), cs[i], true);
		a = slurp(p, &na);
		b = slurp(q, &nb);
		assert_int_equal(na, nb);
		assert_memory_equal(a, b, na);
		if (cs[i] == NESA_SHARD_GZIP) /* no timestamp in the gzip header */
			assert_memory_equal(a + 4, "\0\0\0\0", 4);
		free(b);
		free(a);
	}
	fix_release(&f);

	/* Small archive: plain ustar headers, owner nesa, mode 0644, mtime 0. */
	fix_small(&f);
	write_ok(&f, tp(p, "r3"), NESA_SHARD_NONE, true);
	a = slurp(p, &na);
	for (off = 0; off + 512 <= na && a[off] != 0; members++) {
		size_t size = (size_t)strtoull((const char *)a + off + 124, NULL, 8);

		assert_string_equal((const char *)a + off + 257, "ustar");
		assert_memory_equal(a + off + 100, "000644 ", 8);
		assert_memory_equal(a + off + 108, "000000 ", 8);
		assert_memory_equal(a + off + 116, "000000 ", 8);
		assert_memory_equal(a + off + 136, "00000000000 ", 12);
		assert_string_equal((const char *)a + off + 265, "nesa");
		assert_string_equal((const char *)a + off + 297, "nesa");
		assert_string_equal((const char *)a + off, members == 0 ? "manifest.json" :
		                    members == 1 ? "tensors/a" : members == 2 ? "tensors/b" : "tensors/c");
		off += 512 + (size + 511) / 512 * 512;
	}
	assert_int_equal(members, 4);
	/* Two zero records end the archive, and nothing pads it further. */
	assert_int_equal(na, off + 1024);
	for (i = off; i < na; i++)
		assert_int_equal(a[i], 0);
	free(a);
	fix_release(&f);
	clean_dir();
}

/* Corruption. */

/* Offset and size of member k's data in a plain ustar archive. */
static size_t
member_data(const unsigned char *a, size_t n, int k, size_t *size)
{
	size_t off = 0;

	for (;;) {
		assert_true(off + 512 <= n && a[off] != 0);
		*size = (size_t)strtoull((const char *)a + off + 124, NULL, 8);
		if (k-- == 0)
			return off + 512;
		off += 512 + (*size + 511) / 512 * 512;
	}
}

static void
expect_fail(const char *path, unsigned flags, enum nesa_status want, const char *text)
{
	struct nesa_shard *sh = (struct nesa_shard *)1;
	struct nesa_err err;
	enum nesa_status s;

	nesa_err_clear(&err);
	s = nesa_shard_open(path, flags, &sh, &err);
	if (s != want || strstr(err.msg, path) == NULL || (text != NULL && strstr(err.msg, text) == NULL))
		fail_msg("open '%s' flags %u: status %d '%s', want %d and '%s'", path, flags, (int)s,
		         err.msg, (int)want, text != NULL ? text : "");
	assert_null(sh);
}

static void
expect_fail_both(const char *path, enum nesa_status want, const char *text)
{
	expect_fail(path, 0, want, text);
	expect_fail(path, NESA_SHARD_NO_MMAP, want, text);
}

/* Writes a copy of orig with byte at off XORed by mask; returns its path. */
static const char *
flipped(const unsigned char *orig, size_t n, size_t off, unsigned char mask, char *p)
{
	unsigned char *c = malloc(n);

	assert_non_null(c);
	memcpy(c, orig, n);
	c[off] ^= mask;
	spit(tp(p, "flip.nsa"), c, n);
	free(c);
	return p;
}

static size_t
find(const unsigned char *a, size_t n, size_t from, const char *needle)
{
	size_t len = strlen(needle), i;

	for (i = from; i + len <= n; i++)
		if (memcmp(a + i, needle, len) == 0)
			return i;
	fail_msg("'%s' not found", needle);
	return 0;
}

static void
test_bitflips(void **state)
{
	struct nesa_shard *sh;
	struct nesa_err err;
	struct fix f;
	unsigned char *a;
	size_t n, mpos, msize, bpos, bsize, off;
	char p[PATHLEN], want[PATHLEN + 64];
	enum nesa_status s;

	(void)state;
	fix_small(&f);
	write_ok(&f, tp(p, "flip-src.nsa"), NESA_SHARD_NONE, false);
	a = slurp(p, &n);
	mpos = member_data(a, n, 0, &msize);
	bpos = member_data(a, n, 2, &bsize);
	assert_int_equal(bsize, 32);

	/* Tensor data: the tensor is named, whichever way it is read. */
	flipped(a, n, bpos + 3, 0x10, p);
	snprintf(want, sizeof want, "sha256 mismatch for tensor 'b' in '%s'", p);
	expect_fail_both(p, NESA_ECHECKSUM, want);
	assert_int_equal(open_stdin(a, n, 0, &sh, &err), NESA_OK); /* the original, as a control */
	nesa_shard_free(sh);
	{
		unsigned char *c = malloc(n);

		memcpy(c, a, n);
		c[bpos + 3] ^= 0x10;
		s = open_stdin(c, n, 0, &sh, &err);
		free(c);
	}
	assert_int_equal(s, NESA_ECHECKSUM);
	assert_non_null(strstr(err.msg, "sha256 mismatch for tensor 'b' in 'standard input'"));

	/* Deferred: the open succeeds, verification finds it, and keeps finding it. */
	sh = open_ok(p, NESA_SHARD_DEFER_HASH);
	assert_int_equal(nesa_shard_verify(sh, "a", &err), NESA_OK);
	assert_int_equal(nesa_shard_verify(sh, "b", &err), NESA_ECHECKSUM);
	assert_non_null(strstr(err.msg, want));
	assert_int_equal(nesa_shard_verify(sh, "b", &err), NESA_ECHECKSUM);
	assert_int_equal(nesa_shard_verify(sh, "c", &err), NESA_OK);
	assert_int_equal(nesa_shard_verify(sh, NULL, &err), NESA_ECHECKSUM);
	assert_non_null(strstr(err.msg, want));
	assert_int_equal(nesa_shard_error(sh)->status, NESA_ECHECKSUM);
	assert_int_equal(nesa_shard_verify(sh, "nope", &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "'nope'"));
	nesa_shard_free(sh);

	/* Verification happens at most once: later changes to copied data go unseen. */
	sh = open_ok(tp(p, "flip-src.nsa"), NESA_SHARD_NO_MMAP | NESA_SHARD_DEFER_HASH);
	((unsigned char *)nesa_tset_find(nesa_shard_tensors(sh), "a")->data)[0] ^= 1;
	assert_int_equal(nesa_shard_verify(sh, NULL, &err), NESA_OK);
	nesa_shard_free(sh);

	/* The manifest: syntax, format, a key, a size, a dimension. */
	expect_fail_both(flipped(a, n, mpos, 0x01, p), NESA_EFORMAT, "cannot parse manifest");
	off = find(a, n, mpos, "nesa-archive");
	expect_fail_both(flipped(a, n, off + 1, 0x04, p), NESA_EFORMAT, "not a nesa archive");
	off = find(a, n, mpos, "\"version\"");
	expect_fail_both(flipped(a, n, off + 1, 0x01, p), NESA_EFORMAT, "'version'");
	off = find(a, n, mpos, "\"bytes\": 128");
	expect_fail_both(flipped(a, n, off + 10, 0x01, p), NESA_EFORMAT, "declares");
	off = find(a, n, mpos, "\"name\": \"b\"");
	expect_fail_both(flipped(a, n, off + 9, 0x02, p), NESA_EFORMAT, NULL);
	off = find(a, n, mpos, "\"shape\"");
	off = find(a, n, off, "4");
	expect_fail_both(flipped(a, n, off, 0x02, p), NESA_EFORMAT, "declares");

	/* Headers: libarchive's header checksum catches every bit. */
	expect_fail_both(flipped(a, n, 0, 0x01, p), NESA_EFORMAT, NULL);
	expect_fail_both(flipped(a, n, bpos - 512 + 8, 0x20, p), NESA_EFORMAT, NULL);
	expect_fail_both(flipped(a, n, bpos - 512 + 124 + 9, 0x01, p), NESA_EFORMAT, NULL);
	expect_fail_both(flipped(a, n, bpos - 512 + 148 + 2, 0x01, p), NESA_EFORMAT, NULL);
	free(a);
	fix_release(&f);
	clean_dir();
}

/* Truncation at every offset: a clean EFORMAT naming the archive, never a crash. */
static void
test_truncation(void **state)
{
	static const enum nesa_shard_compress cs[] = {NESA_SHARD_GZIP, NESA_SHARD_ZSTD, NESA_SHARD_XZ};
	struct nesa_shard *sh;
	struct nesa_err err;
	struct fix f;
	unsigned char *a;
	size_t n, cut, msize, mend, i;
	char p[PATHLEN], q[PATHLEN];
	enum nesa_status s;
	json_t *m;

	(void)state;
	fix_small(&f);
	write_ok(&f, tp(p, "full.nsa"), NESA_SHARD_NONE, false);
	a = slurp(p, &n);
	assert_true(n > 2048 && n < 8192);
	member_data(a, n, 0, &msize);
	/* Reading a member consumes its padding too. */
	mend = 512 + (msize + 511) / 512 * 512;
	tp(q, "cut.nsa");
	for (cut = 0; cut < n; cut++) {
		spit(q, a, cut);
		expect_fail(q, 0, NESA_EFORMAT, "unexpected end of file");
		expect_fail(q, NESA_SHARD_NO_MMAP, NESA_EFORMAT, "unexpected end of file");
		/* The manifest alone is readable exactly when its member is all there. */
		s = nesa_shard_read_manifest(q, &m, &err);
		if (cut >= mend) {
			assert_int_equal(s, NESA_OK);
			json_decref(m);
		} else {
			assert_int_equal(s, NESA_EFORMAT);
			assert_non_null(strstr(err.msg, q));
			assert_null(m);
		}
	}
	/* Through a pipe, at a stride (each one forks). */
	for (cut = 0; cut < n; cut += cut < 1100 ? 97 : 331) {
		assert_int_equal(open_stdin(a, cut, 0, &sh, &err), NESA_EFORMAT);
		assert_null(sh);
		assert_non_null(strstr(err.msg, "'standard input': unexpected end of file"));
	}
	free(a);

	for (i = 0; i < sizeof cs / sizeof cs[0]; i++) {
		write_ok(&f, p, cs[i], true);
		a = slurp(p, &n);
		for (cut = 0; cut < n; cut++) {
			spit(q, a, cut);
			expect_fail(q, 0, NESA_EFORMAT, NULL);
		}
		free(a);
	}
	fix_release(&f);
	clean_dir();
}

/* Hostile archives, crafted member by member. */

struct cm {
	const char *name;
	const void *data;
	size_t size;
	int type;       /* AE_IFREG when 0 */
	int64_t claim;  /* size in the header when > 0 (the writer pads with zeros) */
};

static void
craft(const char *path, const struct cm *m, size_t n)
{
	struct archive *a = archive_write_new();
	size_t i;

	assert_non_null(a);
	assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
	assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
	for (i = 0; i < n; i++) {
		struct archive_entry *e = archive_entry_new();
		int64_t size = m[i].claim > 0 ? m[i].claim : (int64_t)m[i].size;

		archive_entry_set_pathname(e, m[i].name);
		archive_entry_set_filetype(e, m[i].type != 0 ? (unsigned)m[i].type : AE_IFREG);
		archive_entry_set_perm(e, 0644);
		if (m[i].type == AE_IFLNK)
			archive_entry_set_symlink(e, "/etc/passwd");
		else
			archive_entry_set_size(e, size);
		assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
		if (m[i].type != AE_IFLNK && m[i].size > 0)
			assert_int_equal(archive_write_data(a, m[i].data, m[i].size), (la_ssize_t)m[i].size);
		archive_entry_free(e);
	}
	assert_int_equal(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
}

/* The small fixture's members, to rearrange; manifest text owned by the caller. */
struct parts {
	struct fix f;
	json_t *m;
	char *text;
};

static void
parts_text(struct parts *pp)
{
	free(pp->text);
	pp->text = json_dumps(pp->m, JSON_INDENT(2));
	assert_non_null(pp->text);
}

static struct cm
part(const struct parts *pp, const char *member)
{
	struct cm c = {member, NULL, 0, 0, 0};
	size_t i;

	if (strcmp(member, "manifest.json") == 0) {
		c.data = pp->text;
		c.size = strlen(pp->text);
		return c;
	}
	for (i = 0; i < pp->f.n; i++)
		if (strcmp(member + 8, pp->f.ptrs[i]->name) == 0) {
			c.data = pp->f.ptrs[i]->data;
			c.size = pp->f.ptrs[i]->nbytes;
		}
	return c;
}

/* Crafts manifest + the named tensor members in the given order. */
static const char *
craft_order(struct parts *pp, const char *const *names, size_t n, char *p)
{
	struct cm m[8];
	size_t i;

	assert_true(n < 8);
	parts_text(pp);
	m[0] = part(pp, "manifest.json");
	for (i = 0; i < n; i++)
		m[i + 1] = part(pp, names[i]);
	craft(tp(p, "bad.nsa"), m, n + 1);
	return p;
}

static const char *const ABC[] = {"tensors/a", "tensors/b", "tensors/c"};

/*
 * Returns a copy of root with the value at key ("tensors.0.shape": through
 * objects and arrays) replaced by value (stolen), or deleted when NULL.
 */
static json_t *
edited(const json_t *root, const char *key, json_t *value)
{
	json_t *copy = json_deep_copy(root), *obj = copy;
	char k[64], *dot;

	snprintf(k, sizeof k, "%s", key);
	while ((dot = strchr(k, '.')) != NULL) {
		*dot = '\0';
		obj = json_is_array(obj) ? json_array_get(obj, strtoul(k, NULL, 10)) : json_object_get(obj, k);
		memmove(k, dot + 1, strlen(dot + 1) + 1);
	}
	if (value == NULL)
		json_object_del(obj, k);
	else if (json_is_array(obj))
		json_array_set_new(obj, strtoul(k, NULL, 10), value);
	else
		json_object_set_new(obj, k, value);
	return copy;
}

/* Crafts the small archive around an edited copy of its manifest. */
static const char *
with_manifest(struct parts *pp, const char *key, json_t *value, char *p)
{
	json_t *saved = pp->m;
	const char *path;

	pp->m = edited(saved, key, value);
	path = craft_order(pp, ABC, 3, p);
	json_decref(pp->m);
	pp->m = saved;
	return path;
}

static void
test_hostile(void **state)
{
	static const char *const bad_names[] = {"a/../b", "", "x\\y", "/abs", "a\tb", ".", "a//b",
	                                        "a/", "caf\xc3\xa9"};
	struct parts pp;
	struct nesa_err err;
	unsigned char junk[3000];
	uint64_t rng = 7;
	char p[PATHLEN], huge[300];
	struct cm m[6];
	size_t i;
	json_t *t0;

	(void)state;
	memset(&pp, 0, sizeof pp);
	fix_small(&pp.f);
	write_ok(&pp.f, tp(p, "good.nsa"), NESA_SHARD_NONE, false);
	assert_int_equal(nesa_shard_read_manifest(p, &pp.m, &err), NESA_OK);

	/* The crafting itself is sound: the unmodified parts make a valid archive. */
	nesa_shard_free(open_ok(craft_order(&pp, ABC, 3, p), 0));

	/* Not a tar, not a nesa archive, not this version. */
	for (i = 0; i < sizeof junk; i++)
		junk[i] = (unsigned char)test_rand(&rng);
	spit(tp(p, "junk.nsa"), junk, sizeof junk);
	expect_fail_both(p, NESA_EFORMAT, NULL);
	m[0] = (struct cm){"foo.txt", "hi", 2, 0, 0};
	craft(tp(p, "foo.nsa"), m, 1);
	expect_fail_both(p, NESA_EFORMAT, "not a nesa archive: first member");
	expect_fail_both(with_manifest(&pp, "format", json_string("nesa-archiv"), p), NESA_EFORMAT,
	                 "not a nesa archive");
	expect_fail_both(with_manifest(&pp, "version", json_integer(2), p), NESA_EVERSION,
	                 "unsupported archive version 2");
	expect_fail_both(with_manifest(&pp, "version", json_string("1"), p), NESA_EFORMAT, "'version'");

	/* Absurd shapes and sizes. */
	t0 = json_pack("[I,I]", (json_int_t)1 << 31, (json_int_t)1 << 31);
	expect_fail_both(with_manifest(&pp, "tensors.0.shape", t0, p), NESA_ESHAPE, "too large");
	expect_fail_both(with_manifest(&pp, "tensors.0.shape", json_pack("[i,i]", -4, -8), p),
	                 NESA_ESHAPE, "invalid dimension 0 of size -4");
	expect_fail_both(with_manifest(&pp, "tensors.0.shape", json_pack("[i,i,i,i,i]", 1, 1, 1, 4, 8), p),
	                 NESA_ESHAPE, "5 dimensions");
	expect_fail_both(with_manifest(&pp, "tensors.0.shape", json_pack("[i,s]", 4, "8"), p),
	                 NESA_EFORMAT, "must be an integer");
	expect_fail_both(with_manifest(&pp, "tensors.0.bytes", json_integer(132), p), NESA_EFORMAT,
	                 "declares 132 bytes, but f32 [4, 8] needs 128");
	expect_fail_both(with_manifest(&pp, "tensors.0.bytes", json_integer(-1), p), NESA_EFORMAT,
	                 "declares -1 bytes");
	expect_fail_both(with_manifest(&pp, "tensors.2.bytes", json_string("9"), p), NESA_EFORMAT,
	                 "'tensors[2].bytes' must be an integer");
	expect_fail_both(with_manifest(&pp, "tensors.0.dtype", json_string("f64"), p),
	                 NESA_EUNSUPPORTED, "unknown dtype 'f64'");
	expect_fail_both(with_manifest(&pp, "tensors.0.sha256", json_string("ab"), p), NESA_EFORMAT,
	                 "64 lowercase hex");

	/* Schema: every key is type-checked. */
	expect_fail_both(with_manifest(&pp, "model", json_array(), p), NESA_EFORMAT, "'model' must be an object");
	expect_fail_both(with_manifest(&pp, "model.arch", json_integer(3), p), NESA_EFORMAT, "'model.arch'");
	expect_fail_both(with_manifest(&pp, "model.source_sha256",
	                               json_string("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"), p),
	                 NESA_EFORMAT, "'model.source_sha256'");
	expect_fail_both(with_manifest(&pp, "blocks.count", json_integer(4), p), NESA_EFORMAT, "'blocks.count'");
	expect_fail_both(with_manifest(&pp, "blocks.first", json_integer(-1), p), NESA_EFORMAT, "'blocks.first'");
	expect_fail_both(with_manifest(&pp, "model.n_blocks", json_real(4.0), p), NESA_EFORMAT, "'model.n_blocks'");
	expect_fail_both(with_manifest(&pp, "meta", NULL, p), NESA_EFORMAT, "'meta' is missing");
	expect_fail_both(with_manifest(&pp, "graph", json_integer(3), p), NESA_EFORMAT, "'graph'");
	expect_fail_both(with_manifest(&pp, "created_by", json_null(), p), NESA_EFORMAT, "'created_by'");
	expect_fail_both(with_manifest(&pp, "tensors", json_object(), p), NESA_EFORMAT, "'tensors'");
	expect_fail_both(with_manifest(&pp, "tensors.1.name", json_string("a"), p), NESA_EFORMAT,
	                 "duplicate tensor 'a'");
	for (i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++)
		expect_fail_both(with_manifest(&pp, "tensors.0.name", json_string(bad_names[i]), p),
		                 NESA_EFORMAT, "invalid tensor name");
	memset(huge, 'n', 256);
	huge[256] = '\0';
	expect_fail_both(with_manifest(&pp, "tensors.0.name", json_string(huge), p), NESA_EFORMAT,
	                 "longer than 255 bytes");

	/* Not JSON, not an object, duplicate keys. */
	m[0] = (struct cm){"manifest.json", "[1, 2]", 6, 0, 0};
	craft(tp(p, "arr.nsa"), m, 1);
	expect_fail_both(p, NESA_EFORMAT, "not a JSON object");
	m[0] = (struct cm){"manifest.json", "{\"format\": 1, \"format\": 2}", 26, 0, 0};
	craft(tp(p, "dup.nsa"), m, 1);
	expect_fail_both(p, NESA_EFORMAT, "cannot parse manifest");

	/* A manifest over 16 MiB is refused before it is read. */
	m[0] = (struct cm){"manifest.json", "{", 1, 0, (int64_t)(16 * MIB + 1)};
	craft(tp(p, "big.nsa"), m, 1);
	expect_fail_both(p, NESA_EFORMAT, "manifest too large");
	assert_int_equal(nesa_shard_read_manifest(p, &t0, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "manifest too large"));
	unlink(p);

	/* Members out of order, missing, extra, duplicated, resized, not files. */
	{
		static const char *const ba[] = {"tensors/b", "tensors/a", "tensors/c"};
		static const char *const ab[] = {"tensors/a", "tensors/b"};
		static const char *const ac[] = {"tensors/a", "tensors/c"};
		static const char *const abcd[] = {"tensors/a", "tensors/b", "tensors/c", "tensors/d"};
		static const char *const aa[] = {"tensors/a", "tensors/a"};
		static const char *const am[] = {"tensors/a", "manifest.json"};

		expect_fail_both(craft_order(&pp, ba, 3, p), NESA_EFORMAT, "out of order");
		expect_fail_both(craft_order(&pp, ab, 2, p), NESA_EFORMAT,
		                 "unexpected end of file (member 'tensors/c' missing)");
		expect_fail_both(craft_order(&pp, ac, 2, p), NESA_EFORMAT, "found member 'tensors/c' instead");
		expect_fail_both(craft_order(&pp, abcd, 4, p), NESA_EFORMAT,
		                 "unexpected member 'tensors/d'");
		expect_fail_both(craft_order(&pp, aa, 2, p), NESA_EFORMAT, "duplicate member 'tensors/a'");
		expect_fail_both(craft_order(&pp, am, 2, p), NESA_EFORMAT, "duplicate member 'manifest.json'");
	}
	parts_text(&pp);
	m[0] = part(&pp, "manifest.json");
	m[1] = part(&pp, "tensors/a");
	m[2] = part(&pp, "tensors/b");
	m[3] = part(&pp, "tensors/c");
	m[2].size = 30;
	craft(tp(p, "size.nsa"), m, 4);
	expect_fail_both(p, NESA_EFORMAT, "member 'tensors/b' in");
	m[2] = part(&pp, "tensors/b");
	m[2].type = AE_IFLNK;
	craft(tp(p, "link.nsa"), m, 4);
	expect_fail_both(p, NESA_EFORMAT, "not a plain regular file");

	/* Path traversal, wherever it appears. */
	m[2] = part(&pp, "tensors/b");
	m[2].name = "../x";
	craft(tp(p, "trav1.nsa"), m, 4);
	expect_fail_both(p, NESA_EFORMAT, "unsafe member path '../x'");
	m[2].name = "/etc/passwd";
	craft(tp(p, "trav2.nsa"), m, 4);
	expect_fail_both(p, NESA_EFORMAT, "unsafe member path '/etc/passwd'");
	m[2].name = "tensors/../../b";
	craft(tp(p, "trav3.nsa"), m, 4);
	expect_fail_both(p, NESA_EFORMAT, "path traversal");
	m[0].name = "../manifest.json";
	craft(tp(p, "trav4.nsa"), m, 1);
	expect_fail_both(p, NESA_EFORMAT, "unsafe member path '../manifest.json'");
	assert_int_equal(nesa_shard_read_manifest(p, &t0, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "path traversal"));

	/* Empty file and missing file. */
	spit(tp(p, "empty.nsa"), "", 0);
	expect_fail_both(p, NESA_EFORMAT, "unexpected end of file");
	expect_fail_both(tp(p, "missing.nsa"), NESA_ENOENT, "cannot open");
	expect_fail_both(tmp, NESA_ENOENT, NULL);

	free(pp.text);
	json_decref(pp.m);
	fix_release(&pp.f);
	clean_dir();
}

/* An allocator refusing blocks over 64 MiB: what a lying size must never need. */
static void *
capped_malloc(void *ctx, size_t n)
{
	(void)ctx;
	return n > 64 * MIB ? NULL : malloc(n);
}

static void *
capped_realloc(void *ctx, void *p, size_t n)
{
	(void)ctx;
	return n > 64 * MIB ? NULL : realloc(p, n);
}

static void
capped_free(void *ctx, void *p)
{
	(void)ctx;
	free(p);
}

/* Sets the size field of the ustar header at hdr and recomputes its checksum. */
static void
patch_size(unsigned char *hdr, uint64_t size)
{
	unsigned sum = 0;
	char field[16];
	int i;

	snprintf(field, sizeof field, "%011llo ", (unsigned long long)size);
	memcpy(hdr + 124, field, 12);
	memset(hdr + 148, ' ', 8);
	for (i = 0; i < 512; i++)
		sum += hdr[i];
	snprintf(field, sizeof field, "%06o", sum);
	memcpy(hdr + 148, field, 7);
}

/*
 * A consistent manifest and header announcing a 1 GiB tensor in a file of a
 * few KB: every read path reports the truncation instead of allocating the
 * announced size first.
 */
static void
test_lying_sizes(void **state)
{
	static const struct nesa_allocator capped = {capped_malloc, capped_realloc, capped_free, NULL};
	struct nesa_shard *sh = NULL;
	struct nesa_err err;
	struct parts pp;
	unsigned char *a;
	size_t n, size;
	char p[PATHLEN];
	enum nesa_status s;

	(void)state;
	memset(&pp, 0, sizeof pp);
	fix_small(&pp.f);
	write_ok(&pp.f, tp(p, "good.nsa"), NESA_SHARD_NONE, false);
	assert_int_equal(nesa_shard_read_manifest(p, &pp.m, &err), NESA_OK);
	json_object_set_new(json_array_get(json_object_get(pp.m, "tensors"), 0), "shape",
	                    json_pack("[i]", 1 << 28));
	json_object_set_new(json_array_get(json_object_get(pp.m, "tensors"), 0), "bytes",
	                    json_integer(1 << 30));
	craft_order(&pp, ABC, 3, p);
	a = slurp(p, &n);
	patch_size(a + member_data(a, n, 1, &size) - 512, (uint64_t)1 << 30);
	spit(p, a, n);

	nesa_set_allocator(&capped);
	expect_fail(p, 0, NESA_EFORMAT, "cannot read tensor 'a'");
	expect_fail(p, NESA_SHARD_NO_MMAP, NESA_EFORMAT, "unexpected end of file");
	s = open_stdin(a, n, 0, &sh, &err);
	nesa_set_allocator(NULL);
	assert_int_equal(s, NESA_EFORMAT);
	assert_null(sh);
	assert_non_null(strstr(err.msg, "cannot read tensor 'a' in 'standard input': unexpected end of file"));
	free(a);
	free(pp.text);
	json_decref(pp.m);
	fix_release(&pp.f);
	clean_dir();
}

/* Write failures. */

static void
expect_write_fail(const char *path, const json_t *h, const struct nesa_tensor *const *t, size_t n,
                  const struct nesa_shard_write_opts *o, enum nesa_status want, const char *text)
{
	struct nesa_err err;
	enum nesa_status s;

	nesa_err_clear(&err);
	s = nesa_shard_write(path, h, t, n, o, &err);
	if (s != want || (text != NULL && strstr(err.msg, text) == NULL))
		fail_msg("write '%s': status %d '%s', want %d and '%s'", path, (int)s, err.msg, (int)want,
		         text != NULL ? text : "");
	assert_false(exists(path));
	assert_int_equal(count_files(), 0);
}

static void
test_write_errors(void **state)
{
	static const struct {
		const char *key, *json, *text;
	} bad_headers[] = {
		{"tensors", "[]", "unknown key 'tensors'"},
		{"model", NULL, "'model' is missing"},
		{"model.source_sha256", "\"xyz\"", "'model.source_sha256'"},
		{"model.n_blocks", "-1", "'model.n_blocks'"},
		{"blocks.first", "9", "'blocks.first'"},
		{"blocks.count", "4", "'blocks.count'"},
		{"meta", "\"x\"", "'meta'"},
		{"graph", "true", "'graph'"},
	};
	struct nesa_shard_write_opts force = {NESA_SHARD_NONE, true}, badc = {(enum nesa_shard_compress)9, false};
	const struct nesa_tensor *tv[3];
	struct nesa_tensor view, bad, nodata;
	char badname[] = "blk/../wq";
	struct nesa_shard *sh;
	struct nesa_err err;
	unsigned char *a;
	struct fix f;
	char p[PATHLEN];
	json_t *h;
	size_t n, i;
	pid_t pid;
	int st;

	(void)state;
	fix_small(&f);
	clean_dir();
	tp(p, "w.nsa");

	/* Bad headers: nothing is created. */
	expect_write_fail(p, NULL, f.ptrs, f.n, NULL, NESA_EINVAL, "header is not a JSON object");
	for (i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
		h = edited(f.header, bad_headers[i].key, json_loads(bad_headers[i].json, JSON_DECODE_ANY, NULL));
		expect_write_fail(p, h, f.ptrs, f.n, NULL, NESA_EINVAL, bad_headers[i].text);
		json_decref(h);
	}
	/* A 17 MiB meta string makes the manifest too large. */
	{
		char *big = malloc(17 * MIB + 1);

		assert_non_null(big);
		memset(big, 'm', 17 * MIB);
		big[17 * MIB] = '\0';
		h = edited(f.header, "meta", json_pack("{s:s}", "blob", big));
		free(big);
	}
	expect_write_fail(p, h, f.ptrs, f.n, NULL, NESA_ELIMIT, "manifest too large");
	json_decref(h);

	/* Bad tensors. */
	view = *f.ptrs[0];
	view.stride[0] *= 2;
	tv[0] = f.ptrs[1];
	tv[1] = &view;
	expect_write_fail(p, f.header, tv, 2, NULL, NESA_EINVAL, "tensor 'a' is not contiguous");
	tv[1] = f.ptrs[1];
	expect_write_fail(p, f.header, tv, 2, NULL, NESA_EINVAL, "duplicate tensor 'b'");
	bad = *f.ptrs[0];
	bad.name = badname;
	tv[1] = &bad;
	expect_write_fail(p, f.header, tv, 2, NULL, NESA_EINVAL, "invalid tensor name 'blk/../wq'");
	nodata = *f.ptrs[0];
	nodata.data = NULL;
	tv[1] = &nodata;
	expect_write_fail(p, f.header, tv, 2, NULL, NESA_EINVAL, "has no data");
	tv[1] = NULL;
	expect_write_fail(p, f.header, tv, 2, NULL, NESA_EINVAL, "no name");
	expect_write_fail(p, f.header, f.ptrs, f.n, &badc, NESA_EINVAL, "unknown compression");
	expect_write_fail(tp(p, "nodir/w.nsa"), f.header, f.ptrs, f.n, NULL, NESA_ECREATE, "nodir/w.nsa");

	/* An existing file is kept without force and replaced with it. */
	tp(p, "w.nsa");
	spit(p, "old", 3);
	assert_int_equal(nesa_shard_write(p, f.header, f.ptrs, f.n, NULL, &err), NESA_ECREATE);
	assert_non_null(strstr(err.msg, p));
	a = slurp(p, &n);
	assert_int_equal(n, 3);
	free(a);
	assert_int_equal(count_files(), 1);
	assert_int_equal(nesa_shard_write(p, f.header, f.ptrs, f.n, &force, &err), NESA_OK);
	nesa_shard_free(open_ok(p, 0));
	assert_int_equal(count_files(), 1);
	unlink(p);

	/* An archive without tensors is valid. */
	assert_int_equal(nesa_shard_write(p, f.header, NULL, 0, NULL, &err), NESA_OK);
	sh = open_ok(p, 0);
	assert_int_equal(nesa_shard_tensors(sh)->n, 0);
	nesa_shard_free(sh);
	unlink(p);

	/* A device that fills up: NESA_EIO naming it. */
	if (exists("/dev/full")) {
		assert_int_equal(nesa_shard_write("/dev/full", f.header, f.ptrs, f.n, &force, &err), NESA_EIO);
		assert_non_null(strstr(err.msg, "/dev/full"));
	}

	/* A write failing halfway (file size limit) leaves no file behind. */
	fflush(stdout);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit rl = {2048, 2048};

		signal(SIGXFSZ, SIG_IGN);
		if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
			child_exit(98);
		child_exit(nesa_shard_write(p, f.header, f.ptrs, f.n, NULL, &err));
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), NESA_EIO);
	assert_false(exists(p));
	assert_int_equal(count_files(), 0);
	fix_release(&f);
}

/* Allocation failures: each one a clean NESA_ENOMEM, no leak, no file left. */

static void
fault_open(const char *path, unsigned flags)
{
	long n;

	for (n = 1;; n++) {
		struct nesa_shard *sh = NULL;
		struct nesa_err err;
		enum nesa_status s;

		test_faults_arm(n);
		s = nesa_shard_open(path, flags, &sh, &err);
		test_faults_disarm();
		nesa_shard_free(sh);
		if (s == NESA_OK)
			break;
		if (s != NESA_ENOMEM)
			fail_msg("fault %ld on '%s': status %d '%s'", n, path, (int)s, err.msg);
		assert_null(sh);
		assert_non_null(strstr(err.msg, path));
	}
	assert_true(n > 3);
}

static void
test_faults(void **state)
{
	struct fix f;
	char p[PATHLEN], q[PATHLEN];
	long n;

	(void)state;
	fix_small(&f);
	clean_dir();
	write_ok(&f, tp(p, "ok.nsa"), NESA_SHARD_NONE, false);
	write_ok(&f, tp(q, "ok.nsa.gz"), NESA_SHARD_GZIP, false);
	fault_open(p, 0);
	fault_open(p, NESA_SHARD_NO_MMAP);
	fault_open(p, NESA_SHARD_DEFER_HASH);
	fault_open(q, 0);
	for (n = 1;; n++) {
		struct nesa_err err;
		enum nesa_status s;
		json_t *m = NULL;

		test_faults_arm(n);
		s = nesa_shard_read_manifest(p, &m, &err);
		test_faults_disarm();
		json_decref(m);
		if (s == NESA_OK)
			break;
		assert_int_equal(s, NESA_ENOMEM);
	}
	assert_true(n > 1);
	unlink(p);
	unlink(q);
	for (n = 1;; n++) {
		struct nesa_shard_write_opts o = {NESA_SHARD_ZSTD, false};
		struct nesa_err err;
		enum nesa_status s;

		test_faults_arm(n);
		s = nesa_shard_write(p, f.header, f.ptrs, f.n, &o, &err);
		test_faults_disarm();
		if (s == NESA_OK)
			break;
		if (s != NESA_ENOMEM)
			fail_msg("fault %ld on write: status %d '%s'", n, (int)s, err.msg);
		assert_int_equal(count_files(), 0);
	}
	assert_true(n > 3);
	nesa_shard_free(open_ok(p, 0));
	fix_release(&f);
	clean_dir();
}

/* Helpers: hashes, hex, names, manifest accessors. */

static void
test_helpers(void **state)
{
	static const char abc_hex[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	static const char empty_hex[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
	static const char *const good[] = {"a", "blk.0/attn.wq", "model.layers.0.self_attn.q_proj.weight",
	                                   "..a", "a..", "a/.b"};
	static const char *const bad[] = {"", "/a", "../a", "a/..", "a/./b", "a//b", "a/", "a\nb",
	                                  "a\\b", "\x7f", "\xc3\xa4"};
	unsigned char h[NESA_SHA256_BYTES], h2[NESA_SHA256_BYTES];
	char hex[NESA_SHA256_HEX], p[PATHLEN], name[300];
	struct nesa_shard *sh;
	struct nesa_err err;
	struct feeder fd;
	struct fix f;
	json_t *m;
	size_t i;

	(void)state;
	nesa_sha256("abc", 3, h);
	assert_string_equal(nesa_sha256_hex(h, hex), abc_hex);
	nesa_sha256(NULL, 0, h);
	assert_string_equal(nesa_sha256_hex(h, hex), empty_hex);
	assert_true(nesa_sha256_from_hex(abc_hex, h2));
	assert_string_equal(nesa_sha256_hex(h2, hex), abc_hex);
	assert_true(nesa_sha256_from_hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", h));
	assert_memory_equal(h, h2, sizeof h);
	assert_false(nesa_sha256_from_hex(NULL, h));
	assert_false(nesa_sha256_from_hex("ba78", h));
	assert_false(nesa_sha256_from_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a", h));
	assert_false(nesa_sha256_from_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0", h));
	assert_false(nesa_sha256_from_hex("ga7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", h));

	spit(tp(p, "abc.txt"), "abc", 3);
	assert_int_equal(nesa_sha256_file(p, h, &err), NESA_OK);
	assert_string_equal(nesa_sha256_hex(h, hex), abc_hex);
	feed_stdin(&fd, (const unsigned char *)"abc", 3);
	assert_int_equal(nesa_sha256_file("-", h, &err), NESA_OK);
	feed_end(&fd);
	assert_string_equal(nesa_sha256_hex(h, hex), abc_hex);
	assert_int_equal(nesa_sha256_file(tp(p, "nope"), h, &err), NESA_ENOENT);
	assert_non_null(strstr(err.msg, p));

	for (i = 0; i < sizeof good / sizeof good[0]; i++)
		assert_int_equal(nesa_shard_check_name(good[i], strlen(good[i]), NULL, NULL), NESA_OK);
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(nesa_shard_check_name(bad[i], strlen(bad[i]), "x.nsa", &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "in 'x.nsa'"));
	assert_int_equal(nesa_shard_check_name("ab\0c", 4, NULL, &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "control character"));
	assert_int_equal(nesa_shard_check_name("a/../b", 6, NULL, &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "'..' path component"));
	memset(name, 'n', sizeof name);
	assert_int_equal(nesa_shard_check_name(name, 255, NULL, &err), NESA_OK);
	assert_int_equal(nesa_shard_check_name(name, 256, NULL, &err), NESA_EINVAL);
	assert_int_equal(nesa_shard_check_name(NULL, 0, NULL, &err), NESA_EINVAL);

	fix_small(&f);
	write_ok(&f, tp(p, "acc.nsa"), NESA_SHARD_NONE, false);
	sh = open_ok(p, 0);
	m = nesa_shard_manifest(sh);
	assert_int_equal(nesa_shard_manifest_blocks_first(m), 1);
	assert_int_equal(nesa_shard_manifest_blocks_count(m), 2);
	assert_int_equal(nesa_shard_manifest_n_blocks(m), 4);
	assert_true(nesa_shard_manifest_source_sha256(m, h));
	nesa_sha256("tiny", 4, h2);
	assert_memory_equal(h, h2, sizeof h);
	nesa_shard_free(sh);
	nesa_shard_free(NULL);
	m = json_object();
	assert_int_equal(nesa_shard_manifest_blocks_first(m), -1);
	assert_int_equal(nesa_shard_manifest_blocks_count(NULL), -1);
	assert_false(nesa_shard_manifest_source_sha256(m, h));
	json_decref(m);

	/* Misuse of the API itself. */
	assert_int_equal(nesa_shard_open(p, 0x80, &sh, &err), NESA_EINVAL);
	assert_null(sh);
	assert_int_equal(nesa_shard_open(NULL, 0, &sh, &err), NESA_EINVAL);
	assert_int_equal(nesa_shard_read_manifest(NULL, &m, &err), NESA_EINVAL);
	assert_int_equal(nesa_shard_verify(NULL, NULL, &err), NESA_EINVAL);
	fix_release(&f);
	clean_dir();
}

static int
group_setup(void **state)
{
	const char *d = test_tmpdir();

	(void)state;
	if (d == NULL)
		return -1;
	snprintf(tmp, sizeof tmp, "%s", d);
	/* A child writing into a closed pipe must fail the write, not die silently. */
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

static int
group_teardown(void **state)
{
	(void)state;
	clean_dir();
	rmdir(tmp);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_helpers),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_tty_refused),
		cmocka_unit_test(test_reproducible),
		cmocka_unit_test(test_bitflips),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_lying_sizes),
		cmocka_unit_test(test_write_errors),
		cmocka_unit_test(test_faults),
	};

	return cmocka_run_group_tests_name("shard", tests, group_setup, group_teardown);
}
