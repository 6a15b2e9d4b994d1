/* SPDX-License-Identifier: MIT */
/*
 * Tensor stream framing.  The wire format is specified byte for byte in
 * nesa-stream(5) and summarised in stream.h; this file must agree with both.
 * The design follows redis' rio: framing sits above a small backend vtable
 * (file descriptor, stdio FILE, memory), checksums are computed as bytes
 * pass, errors are sticky, and short reads and writes are never tolerated.
 *
 * Speed: a frame is written with writev straight from the caller's payload
 * (no copy) and read straight into a reusable aligned buffer.  Payloads move
 * in IO_CHUNK pieces, each checksummed while it is still in cache: right
 * after it arrives on read, right before it leaves on write.  The checksum
 * is CRC-32C, whose x86 instruction is several times faster than zlib's
 * crc32 (checksum.h); it is still the largest cost left
 * (bench/stream-throughput.sh measures it).
 *
 * Safety: a reader trusts nothing in a header until the header's own CRC
 * matches, then checks every size against its limit before allocating, and
 * reports every failure with the stream's name and the frame's offset.
 *
 * Frames in memory (init, tensor conversion, error payload parsing) are
 * handled in frame.c; stream-impl.h holds the byte-level helpers and the
 * error payload layout that both files use.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "alloc.h"
#include "checksum.h"
#include "log.h"
#include "npy.h"
#include "stream-impl.h"
#include "xio.h"

/*
 * The frame header as it sits on the wire (little-endian, no padding).  It
 * is never copied as a struct: fields are encoded one by one at these
 * offsets, so the struct documents the layout and its static_asserts pin it.
 */
struct wire_header {
	char magic[4];        /* "NSTF" */
	uint16_t version;     /* NESA_STREAM_VERSION */
	uint8_t kind;         /* enum nesa_frame_kind */
	uint8_t codec;        /* dtype id of the payload encoding */
	uint64_t session;
	uint32_t position;
	uint32_t block;
	uint64_t model_id;
	uint32_t dims[4];     /* outermost first, unused = 0 */
	uint8_t ndim;
	uint8_t flags;
	uint16_t slot;
	uint32_t header_crc;  /* CRC-32C of bytes [0, 52) and [56, 64) */
	uint64_t payload_len; /* bytes */
};

#define OFF(field) offsetof(struct wire_header, field)
static_assert(sizeof(struct wire_header) == NESA_FRAME_HEADER_SIZE, "frame header is 64 bytes");
static_assert(OFF(version) == 4 && OFF(kind) == 6 && OFF(codec) == 7, "header layout");
static_assert(OFF(session) == 8 && OFF(position) == 16 && OFF(block) == 20, "header layout");
static_assert(OFF(model_id) == 24 && OFF(dims) == 32 && OFF(ndim) == 48, "header layout");
static_assert(OFF(flags) == 49 && OFF(slot) == 50 && OFF(header_crc) == 52, "header layout");
static_assert(OFF(payload_len) == 56, "header layout");

/*
 * Read-ahead buffer.  Headers, trailers and small payloads are served from
 * it, so a stream of small frames costs one read() per 64 KiB, not three
 * per frame; larger payloads bypass it.
 */
#define RBUF_SIZE ((size_t)64 << 10)

/*
 * Payload bytes checksummed and handed to the kernel per step: small enough
 * to stay in L2 between the checksum and the copy, large enough that the per-call
 * cost vanishes.
 */
#define IO_CHUNK ((size_t)128 << 10)

/*
 * Pipes are grown to this size where the system allows.  With the default
 * 64 KiB the two ends of a pipe move in lockstep, each waking the other 16
 * times per MiB; on a virtual machine every wake-up costs tens of
 * microseconds, which halved throughput in bench/stream-throughput.sh.
 */
#define PIPE_SIZE (1 << 20)

#define HANDLE_MAGIC 0x4e535452u /* "NSTR" */

struct backend {
	/*
	 * Reads between 1 and n bytes into buf, *got = 0 at end of input.  Sets
	 * the stream's err on failure.
	 */
	enum nesa_status (*read)(struct nesa_stream *s, void *buf, size_t n, size_t *got);
	/* Writes all of iov (niov entries; iov may be modified). */
	enum nesa_status (*write)(struct nesa_stream *s, struct iovec *iov, int niov);
	enum nesa_status (*flush)(struct nesa_stream *s); /* NULL: nothing buffered */
	void (*close)(struct nesa_stream *s);             /* NULL: nothing to release */
	/*
	 * Whether reads may ask for more than the frame needs.  Not for stdio:
	 * fread blocks until it has everything asked for, and the peer may send
	 * the next frame only after we answer this one.
	 */
	bool greedy;
};

enum read_state {
	R_START,    /* nothing read yet: the input may be a .npy file */
	R_FRAMES,   /* reading frames */
	R_NPY,      /* reading a .npy array */
	R_NPY_TAIL, /* a .npy array was returned; only end of input may follow */
	R_END,      /* end of stream seen; every later read returns it again */
};

struct nesa_stream {
	uint32_t magic; /* HANDLE_MAGIC while the handle is live */
	int mode;       /* NESA_STREAM_READ or NESA_STREAM_WRITE */
	const struct backend *be;
	char *name;     /* for messages */

	/* Backend state. */
	int fd;
	bool own_fd;                 /* opened by nesa_stream_open_path */
	FILE *fp;
	const unsigned char *mem_in; /* (mem_in_len) memory reader input */
	size_t mem_in_len, mem_in_pos;
	unsigned char *mem_out;      /* (mem_out_cap) memory writer output */
	size_t mem_out_len, mem_out_cap;
	struct nesa_out out;         /* path writers: owns fd and fp */
	bool have_out;

	/* Reader. */
	unsigned char *rbuf;  /* (RBUF_SIZE) read-ahead; [rpos, rlen) unconsumed */
	size_t rpos, rlen;
	bool eof;             /* the backend reported end of input */
	unsigned char *pbuf;  /* (pcap) payload, NESA_ALIGN-aligned */
	size_t pcap;
	enum read_state state;
	uint64_t frame_start; /* stream offset of the frame being read */
	int timeout_ms;       /* < 0: wait forever */

	/* Writer. */
	bool npy_out;     /* writing a .npy file through out */
	bool npy_written; /* its tensor has been written */
	bool eos_written;

	size_t limit;            /* largest payload, bytes */
	uint64_t offset;         /* bytes consumed or produced */
	enum nesa_status failed; /* sticky status, NESA_OK while healthy */
	struct nesa_err err;     /* last failure */
	struct nesa_stream_stats stats;
};

/* CRC-32C of the header with its own checksum field skipped. */
static uint32_t
header_crc(const unsigned char *h)
{
	uint32_t c = nesa_crc32c(0, h, OFF(header_crc));

	return nesa_crc32c(c, h + OFF(payload_len), NESA_FRAME_HEADER_SIZE - OFF(payload_len));
}

static bool
bad_handle(const struct nesa_stream *s)
{
	return s == NULL || s->magic != HANDLE_MAGIC;
}

/* Records a failure after which the stream's position can no longer be trusted. */
static enum nesa_status
sticky(struct nesa_stream *s, enum nesa_status st)
{
	if (st != NESA_OK)
		s->failed = st;
	return st;
}

static enum nesa_status fail(struct nesa_stream *s, enum nesa_status st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static enum nesa_status bad(struct nesa_stream *s, enum nesa_status st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static enum nesa_status refuse(struct nesa_stream *s, enum nesa_status st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A sticky failure with a complete message. */
static enum nesa_status
fail(struct nesa_stream *s, enum nesa_status st, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	nesa_err_setv(&s->err, st, fmt, ap);
	va_end(ap);
	return sticky(s, st);
}

/* A sticky failure of the frame being read: "bad frame in 'NAME' at offset N: ...". */
static enum nesa_status
bad(struct nesa_stream *s, enum nesa_status st, const char *fmt, ...)
{
	char detail[NESA_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	return fail(s, st, "bad frame in '%s' at offset %llu: %s", s->name,
	            (unsigned long long)s->frame_start, detail);
}

/*
 * A frame the writer will not write: "cannot write frame to 'NAME': ...".
 * Not sticky, since nothing has been written.
 */
static enum nesa_status
refuse(struct nesa_stream *s, enum nesa_status st, const char *fmt, ...)
{
	char detail[NESA_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	return nesa_err_set(&s->err, st, "cannot write frame to '%s': %s", s->name, detail);
}

/*
 * Waits until fd is ready for events, at most ms milliseconds (< 0: no
 * limit), across signals.  Returns 1 when ready, 0 on timeout, -1 with
 * errno on failure.
 */
static int
wait_fd(int fd, short events, int ms)
{
	double deadline = nesa_now() + ms / 1000.0;

	for (;;) {
		struct pollfd p = {fd, events, 0};
		int left = ms, r;

		if (ms >= 0) {
			double rem = (deadline - nesa_now()) * 1000.0;

			left = rem <= 0 ? 0 : rem >= INT_MAX ? INT_MAX : (int)rem + 1;
		}
		r = poll(&p, 1, left);
		if (r >= 0)
			return r;
		if (errno != EINTR)
			return -1;
	}
}

/* File descriptor backend. */

static enum nesa_status
fd_read(struct nesa_stream *s, void *buf, size_t n, size_t *got)
{
	for (;;) {
		ssize_t r;

		/* The timeout is per wait, so a slow but steady peer never trips it. */
		if (s->timeout_ms >= 0) {
			int w = wait_fd(s->fd, POLLIN, s->timeout_ms);

			if (w < 0)
				return nesa_err_sys(&s->err, NESA_EIO, "cannot read '%s'", s->name);
			if (w == 0)
				return nesa_err_set(&s->err, NESA_ETIMEOUT,
				                    "timed out reading '%s' at offset %llu: no data for %d ms",
				                    s->name, (unsigned long long)(s->offset + s->rlen - s->rpos),
				                    s->timeout_ms);
		}
		r = read(s->fd, buf, n);
		if (r >= 0) {
			*got = (size_t)r;
			return NESA_OK;
		}
		if (errno == EINTR)
			continue;
		/*
		 * A descriptor left non-blocking by its owner: wait, then retry (with
		 * a timeout the poll at the top of the loop does the waiting).
		 */
		if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
		    (s->timeout_ms >= 0 || wait_fd(s->fd, POLLIN, -1) >= 0))
			continue;
		return nesa_err_sys(&s->err, NESA_EIO, "cannot read '%s'", s->name);
	}
}

static enum nesa_status
fd_write(struct nesa_stream *s, struct iovec *iov, int niov)
{
	while (niov > 0) {
		ssize_t w;
		size_t left;

		/* writev of only empty entries would return 0 forever. */
		if (iov->iov_len == 0) {
			iov++;
			niov--;
			continue;
		}
		w = writev(s->fd, iov, niov);
		if (w <= 0) {
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
			    wait_fd(s->fd, POLLOUT, -1) >= 0)
				continue;
			if (w == 0) /* no progress and no reason: do not spin */
				errno = EIO;
			/* EPIPE included: SIGPIPE is the caller's business, the message ours. */
			return nesa_err_sys(&s->err, NESA_EIO, "cannot write to '%s'", s->name);
		}
		/* A short write: skip what went out and send the rest. */
		left = (size_t)w;
		while (niov > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			niov--;
		}
		if (niov > 0) {
			iov->iov_base = (char *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return NESA_OK;
}

static void
fd_close(struct nesa_stream *s)
{
	if (s->own_fd && s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

/* Unbuffered: a frame written is a frame the peer can read, so no flush is needed. */
static const struct backend fd_backend = {fd_read, fd_write, NULL, fd_close, true};

/* stdio backend. */

static enum nesa_status
file_read(struct nesa_stream *s, void *buf, size_t n, size_t *got)
{
	*got = fread(buf, 1, n, s->fp);
	if (*got == 0 && ferror(s->fp))
		return nesa_err_sys(&s->err, NESA_EIO, "cannot read '%s'", s->name);
	return NESA_OK;
}

static enum nesa_status
file_write(struct nesa_stream *s, struct iovec *iov, int niov)
{
	int i;

	for (i = 0; i < niov; i++)
		if (iov[i].iov_len > 0 && fwrite(iov[i].iov_base, 1, iov[i].iov_len, s->fp) != iov[i].iov_len)
			return nesa_err_sys(&s->err, NESA_EIO, "cannot write to '%s'", s->name);
	return NESA_OK;
}

static enum nesa_status
file_flush(struct nesa_stream *s)
{
	if (fflush(s->fp) != 0)
		return nesa_err_sys(&s->err, NESA_EIO, "cannot write to '%s'", s->name);
	return NESA_OK;
}

static const struct backend file_backend = {file_read, file_write, file_flush, NULL, false};

/* Memory backend: for tests and for stages running in one process. */

static enum nesa_status
mem_read(struct nesa_stream *s, void *buf, size_t n, size_t *got)
{
	size_t k = s->mem_in_len - s->mem_in_pos;

	if (k > n)
		k = n;
	if (k > 0)
		memcpy(buf, s->mem_in + s->mem_in_pos, k);
	s->mem_in_pos += k;
	*got = k;
	return NESA_OK;
}

static enum nesa_status
mem_write(struct nesa_stream *s, struct iovec *iov, int niov)
{
	size_t need = s->mem_out_len;
	int i;

	for (i = 0; i < niov; i++)
		if (!nesa_add_size(need, iov[i].iov_len, &need))
			return nesa_err_set(&s->err, NESA_ENOMEM, "cannot write to '%s': out of memory", s->name);
	/* Doubling keeps appends amortised O(1); realloc keeps what was written. */
	if (need > s->mem_out_cap) {
		size_t cap = s->mem_out_cap < 4096 ? 4096 : s->mem_out_cap;
		unsigned char *p;

		while (cap < need)
			cap = cap > SIZE_MAX / 2 ? need : cap * 2;
		p = nesa_realloc(s->mem_out, cap);
		if (p == NULL)
			return nesa_err_set(&s->err, NESA_ENOMEM,
			                    "cannot write to '%s': out of memory (%zu bytes)", s->name, cap);
		s->mem_out = p;
		s->mem_out_cap = cap;
	}
	for (i = 0; i < niov; i++) {
		if (iov[i].iov_len > 0)
			memcpy(s->mem_out + s->mem_out_len, iov[i].iov_base, iov[i].iov_len);
		s->mem_out_len += iov[i].iov_len;
	}
	return NESA_OK;
}

static void
mem_close(struct nesa_stream *s)
{
	nesa_free(s->mem_out);
	s->mem_out = NULL;
	s->mem_out_len = s->mem_out_cap = 0;
}

static const struct backend mem_backend = {mem_read, mem_write, NULL, mem_close, true};

/* Opening and closing. */

static enum nesa_status
stream_new(int mode, const char *name, const struct backend *be, struct nesa_stream **out,
           struct nesa_err *err)
{
	struct nesa_stream *s;

	*out = NULL;
	if (name == NULL)
		name = "stream";
	if (mode != NESA_STREAM_READ && mode != NESA_STREAM_WRITE)
		return nesa_err_set(err, NESA_EINVAL, "cannot open stream '%s': bad mode %d", name, mode);
	s = nesa_calloc(1, sizeof *s);
	if (s == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot open stream '%s': out of memory", name);
	s->magic = HANDLE_MAGIC;
	s->mode = mode;
	s->be = be;
	s->fd = -1;
	s->timeout_ms = -1;
	s->limit = NESA_STREAM_DEFAULT_LIMIT;
	s->state = R_START;
	nesa_out_init(&s->out);
	s->name = nesa_strdup(name);
	/* The read-ahead buffer is allocated here so that reads allocate only payloads. */
	if (s->name == NULL || (mode == NESA_STREAM_READ && (s->rbuf = nesa_malloc(RBUF_SIZE)) == NULL)) {
		nesa_free(s->name);
		nesa_free(s);
		return nesa_err_set(err, NESA_ENOMEM, "cannot open stream '%s': out of memory", name);
	}
	*out = s;
	return NESA_OK;
}

/* Releases everything; a path output not yet committed is removed. */
static void
stream_destroy(struct nesa_stream *s)
{
	if (s->have_out)
		nesa_out_abort(&s->out);
	s->have_out = false;
	if (s->be->close != NULL)
		s->be->close(s);
	nesa_free(s->rbuf);
	nesa_aligned_free(s->pbuf);
	nesa_free(s->name);
	s->magic = 0;
	nesa_free(s);
}

/*
 * Grows a pipe's buffer (never shrinks it).  Failure is harmless: the
 * per-user limit on pipe memory may refuse, and a pipe works at any size.
 */
static void
grow_pipe(int fd)
{
#ifdef F_SETPIPE_SZ
	struct stat st;
	int size;

	if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode))
		return;
	size = fcntl(fd, F_GETPIPE_SZ);
	if (size >= 0 && size < PIPE_SIZE)
		(void)fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE);
#else
	(void)fd;
#endif
}

enum nesa_status
nesa_stream_open_fd(int fd, int mode, const char *name, struct nesa_stream **out,
                    struct nesa_err *err)
{
	enum nesa_status st = stream_new(mode, name, &fd_backend, out, err);

	if (st == NESA_OK) {
		(*out)->fd = fd;
		grow_pipe(fd);
	}
	return st;
}

enum nesa_status
nesa_stream_open_file(FILE *fp, int mode, const char *name, struct nesa_stream **out,
                      struct nesa_err *err)
{
	enum nesa_status st = stream_new(mode, name, &file_backend, out, err);

	if (st == NESA_OK)
		(*out)->fp = fp;
	return st;
}

enum nesa_status
nesa_stream_open_mem(const void *buf, size_t len, const char *name, struct nesa_stream **out,
                     struct nesa_err *err)
{
	enum nesa_status st = stream_new(NESA_STREAM_READ, name, &mem_backend, out, err);

	/* Frames are still copied into the aligned payload buffer, as from a pipe. */
	if (st == NESA_OK) {
		(*out)->mem_in = buf;
		(*out)->mem_in_len = len;
	}
	return st;
}

enum nesa_status
nesa_stream_open_mem_writer(const char *name, struct nesa_stream **out, struct nesa_err *err)
{
	return stream_new(NESA_STREAM_WRITE, name, &mem_backend, out, err);
}

enum nesa_status
nesa_stream_open_path(const char *path, int mode, unsigned out_flags, struct nesa_stream **out,
                      struct nesa_err *err)
{
	bool std = nesa_is_stdio(path);
	size_t len = strlen(path);
	bool npy = !std && len > 4 && strcmp(path + len - 4, ".npy") == 0;
	struct nesa_stream *s;
	enum nesa_status st;
	int fd = STDIN_FILENO;

	*out = NULL;
	/* Reading goes by content (.npy or frames), writing by name. */
	if (mode == NESA_STREAM_READ) {
		if (!std && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
			return nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
		st = nesa_stream_open_fd(fd, mode, std ? "standard input" : path, out, err);
		if (st == NESA_OK)
			(*out)->own_fd = !std;
		else if (!std)
			close(fd);
		return st;
	}
	/* A .npy output is written with stdio by npy.c; frames go out with writev. */
	st = stream_new(mode, std ? "standard output" : path, npy ? &file_backend : &fd_backend, &s, err);
	if (st != NESA_OK)
		return st;
	st = nesa_out_open(&s->out, path, out_flags | NESA_OUT_BINARY, err);
	if (st != NESA_OK) {
		stream_destroy(s);
		return st;
	}
	/* nesa_out owns the descriptor and its FILE; the stream borrows them. */
	s->have_out = true;
	s->fd = s->out.fd;
	s->fp = s->out.fp;
	s->npy_out = npy;
	if (!npy)
		grow_pipe(s->fd);
	*out = s;
	return NESA_OK;
}

enum nesa_status
nesa_stream_close(struct nesa_stream *s, struct nesa_err *err)
{
	enum nesa_status st = NESA_OK;

	if (s == NULL)
		return NESA_OK;
	if (NESA_NEVER(bad_handle(s)))
		return nesa_err_set(err, NESA_EINVAL, "cannot close stream: bad handle");
	/* Each step runs only if everything before it worked; any failure aborts the output. */
	if (s->mode == NESA_STREAM_WRITE) {
		st = s->failed;
		if (st == NESA_OK && !s->eos_written && !s->npy_out) {
			struct nesa_frame eos;

			nesa_frame_init(&eos, NESA_FRAME_EOS);
			st = nesa_stream_write(s, &eos);
		}
		if (st == NESA_OK && s->npy_out && !s->npy_written)
			st = fail(s, NESA_EFORMAT, "cannot write '%s': the stream held no tensor", s->name);
		if (st == NESA_OK && s->be->flush != NULL)
			st = sticky(s, s->be->flush(s));
		if (st == NESA_OK && s->have_out) {
			/* Commit releases the output whatever happens. */
			s->have_out = false;
			st = sticky(s, nesa_out_commit(&s->out, &s->err));
		}
		if (st != NESA_OK)
			nesa_err_copy(err, &s->err);
	}
	if (st == NESA_OK)
		nesa_err_clear(err);
	stream_destroy(s);
	return st;
}

void
nesa_stream_free(struct nesa_stream *s)
{
	if (s == NULL || NESA_NEVER(bad_handle(s)))
		return;
	stream_destroy(s);
}

void
nesa_stream_set_limit(struct nesa_stream *s, size_t max_payload)
{
	if (NESA_NEVER(bad_handle(s)))
		return;
	s->limit = max_payload != 0 ? max_payload : NESA_STREAM_DEFAULT_LIMIT;
}

void
nesa_stream_set_timeout(struct nesa_stream *s, int ms)
{
	if (NESA_NEVER(bad_handle(s)))
		return;
	s->timeout_ms = ms < 0 ? -1 : ms;
}

const char *
nesa_stream_error(const struct nesa_stream *s)
{
	return bad_handle(s) ? "bad stream handle" : s->err.msg;
}

const struct nesa_err *
nesa_stream_err(const struct nesa_stream *s)
{
	return &s->err;
}

uint64_t
nesa_stream_offset(const struct nesa_stream *s)
{
	return bad_handle(s) ? 0 : s->offset;
}

const struct nesa_stream_stats *
nesa_stream_stats(const struct nesa_stream *s)
{
	return &s->stats;
}

const char *
nesa_stream_name(const struct nesa_stream *s)
{
	return bad_handle(s) ? "" : s->name;
}

const void *
nesa_stream_mem_data(const struct nesa_stream *s, size_t *len)
{
	if (bad_handle(s) || s->be != &mem_backend || s->mode != NESA_STREAM_WRITE) {
		*len = 0;
		return NULL;
	}
	*len = s->mem_out_len;
	return s->mem_out;
}

/* Writing. */

/*
 * Validates f against the same rules a reader applies and encodes its
 * header into h.  Nothing is written, so a refusal leaves the stream usable.
 */
static enum nesa_status
encode_header(struct nesa_stream *s, const struct nesa_frame *f, unsigned char *h)
{
	const char *why;
	int i;

	if (f->kind < NESA_FRAME_TENSOR || f->kind > NESA_FRAME_EOS)
		return refuse(s, NESA_EINVAL, "bad kind %d", (int)f->kind);
	if (f->flags & ~NESA_FRAME_FLAGS)
		return refuse(s, NESA_EINVAL, "reserved flags 0x%02x set", (unsigned)f->flags);
	if (f->payload_len > s->limit)
		return refuse(s, NESA_ELIMIT, "payload of %zu bytes exceeds the limit of %zu bytes",
		              f->payload_len, s->limit);
	if (f->payload == NULL && f->payload_len > 0)
		return refuse(s, NESA_EINVAL, "no payload");
	memset(h, 0, NESA_FRAME_HEADER_SIZE);
	if (f->kind == NESA_FRAME_TENSOR) {
		size_t nbytes;

		if (nesa_dtype_traits(f->codec) == NULL)
			return refuse(s, NESA_EUNSUPPORTED, "unknown codec %u (supported: %s)",
			              (unsigned)f->codec, nesa_dtype_list());
		if (f->ndim < 0 || f->ndim > 4)
			return refuse(s, NESA_ESHAPE, "%d dimensions (at most 4)", f->ndim);
		for (i = 0; i < f->ndim; i++) {
			if (f->shape[i] < 0 || (uint64_t)f->shape[i] > NESA_FRAME_MAX_DIM)
				return refuse(s, NESA_ESHAPE, "dimension %d of size %lld is out of range", i,
				              (long long)f->shape[i]);
			put32(h + OFF(dims) + 4 * i, (uint32_t)f->shape[i]);
		}
		if (nesa_shape_check(f->codec, f->ndim, f->shape, true, &nbytes, "tensor", &s->err) != NESA_OK)
			return nesa_err_prefix(&s->err, "cannot write frame to '%s'", s->name);
		if (nbytes != f->payload_len)
			return refuse(s, NESA_EINVAL, "payload of %zu bytes for a %s tensor of %zu bytes",
			              f->payload_len, nesa_dtype_name(f->codec), nbytes);
		h[OFF(codec)] = f->codec;
		h[OFF(ndim)] = (unsigned char)f->ndim;
	} else if (f->kind == NESA_FRAME_ERROR) {
		if (!error_payload_ok(f->payload, f->payload_len, &why))
			return refuse(s, NESA_EINVAL, "%s", why);
	} else if (f->kind == NESA_FRAME_BEGIN) {
		if (f->payload_len > NESA_FRAME_BEGIN_MAX)
			return refuse(s, NESA_EINVAL, "a begin frame carries at most %d bytes", NESA_FRAME_BEGIN_MAX);
	} else if (f->payload_len != 0) {
		return refuse(s, NESA_EINVAL, "%s frames carry no payload", nesa_frame_kind_name(f->kind));
	}
	memcpy(h, NESA_STREAM_MAGIC, 4);
	put16(h + OFF(version), NESA_STREAM_VERSION);
	h[OFF(kind)] = (unsigned char)f->kind;
	put64(h + OFF(session), f->session);
	put32(h + OFF(position), f->position);
	put32(h + OFF(block), f->block);
	put64(h + OFF(model_id), f->model_id);
	h[OFF(flags)] = f->flags;
	put16(h + OFF(slot), f->slot);
	put64(h + OFF(payload_len), f->payload_len);
	/* Last: the checksum covers every other field. */
	put32(h + OFF(header_crc), header_crc(h));
	return NESA_OK;
}

static enum nesa_status
backend_write(struct nesa_stream *s, struct iovec *iov, int niov)
{
	double t0 = nesa_now();
	enum nesa_status st = s->be->write(s, iov, niov);

	s->stats.io_seconds += nesa_now() - t0;
	return st;
}

/*
 * Sends header, payload and trailer.  The payload goes out in IO_CHUNK
 * pieces, each checksummed just before the kernel copies it, so it is read
 * from memory once; the first piece shares a writev with the header and the
 * last with the trailer, so a small frame is one system call.
 */
static enum nesa_status
write_frame(struct nesa_stream *s, unsigned char *h, const unsigned char *p, size_t len)
{
	unsigned char trailer[NESA_FRAME_TRAILER_SIZE];
	struct iovec iov[3];
	double t0 = nesa_now();
	uint32_t crc = nesa_crc32c(0, h, NESA_FRAME_HEADER_SIZE);
	size_t pos = 0;
	enum nesa_status st;

	s->stats.codec_seconds += nesa_now() - t0;
	iov[0].iov_base = h;
	iov[0].iov_len = NESA_FRAME_HEADER_SIZE;
	for (;;) {
		size_t k = len - pos < IO_CHUNK ? len - pos : IO_CHUNK;
		int n = pos == 0 ? 1 : 0;

		if (k > 0) {
			t0 = nesa_now();
			crc = nesa_crc32c(crc, p + pos, k);
			s->stats.codec_seconds += nesa_now() - t0;
			iov[n].iov_base = (void *)(uintptr_t)(p + pos);
			iov[n++].iov_len = k;
		}
		pos += k;
		if (pos == len) {
			put32(trailer, (uint32_t)crc);
			iov[n].iov_base = trailer;
			iov[n++].iov_len = sizeof trailer;
		}
		st = backend_write(s, iov, n);
		if (st != NESA_OK || pos == len)
			return st;
	}
}

/* The .npy output: one tensor, control frames dropped. */
static enum nesa_status
write_npy_frame(struct nesa_stream *s, const struct nesa_frame *f)
{
	struct nesa_tensor t;
	enum nesa_status st;

	if (f->kind == NESA_FRAME_ERROR) {
		char stage[NESA_FRAME_STAGE_MAX + 1], msg[NESA_ERR_MSG_MAX];
		enum nesa_status code;

		/* Keep the upstream failure visible: it is why there is no tensor. */
		if (nesa_frame_error_parse(f, &code, stage, sizeof stage, msg, sizeof msg, NULL) != NESA_OK)
			snprintf(msg, sizeof msg, "malformed error frame");
		return fail(s, NESA_EUNSUPPORTED,
		            "cannot write '%s': a .npy file cannot hold an error (stage '%s': %s)", s->name,
		            stage, msg);
	}
	if (f->kind != NESA_FRAME_TENSOR) {
		s->eos_written |= f->kind == NESA_FRAME_EOS;
		return NESA_OK;
	}
	if (s->npy_written)
		return nesa_err_set(&s->err, NESA_EINVAL,
		                    "cannot write a second tensor to '%s': a .npy file holds one tensor", s->name);
	/* encode_header has validated the shape; the tensor borrows the payload. */
	st = nesa_tensor_init(&t, f->codec, f->ndim, f->shape, &s->err);
	if (NESA_NEVER(st != NESA_OK))
		return st;
	t.data = (void *)(uintptr_t)f->payload;
	st = sticky(s, nesa_npy_write(&s->out, &t, &s->err));
	if (st == NESA_OK) {
		s->npy_written = true;
		s->stats.frames++;
		s->stats.payload_bytes += f->payload_len;
	}
	return st;
}

enum nesa_status
nesa_stream_write(struct nesa_stream *s, const struct nesa_frame *f)
{
	unsigned char h[NESA_FRAME_HEADER_SIZE];
	double t0;
	enum nesa_status st;

	if (NESA_NEVER(bad_handle(s)))
		return NESA_EINVAL;
	if (s->mode != NESA_STREAM_WRITE)
		return nesa_err_set(&s->err, NESA_EINVAL, "cannot write to '%s': opened for reading", s->name);
	if (s->failed != NESA_OK)
		return s->failed;
	if (s->eos_written)
		return nesa_err_set(&s->err, NESA_EINVAL, "cannot write to '%s': the stream has ended", s->name);
	t0 = nesa_now();
	st = encode_header(s, f, h);
	s->stats.codec_seconds += nesa_now() - t0;
	if (st != NESA_OK)
		return st;
	if (s->npy_out)
		return write_npy_frame(s, f);
	/* A frame half written leaves the peer out of step for good: sticky. */
	st = sticky(s, write_frame(s, h, f->payload, f->payload_len));
	if (st != NESA_OK)
		return st;
	s->offset += NESA_FRAME_HEADER_SIZE + f->payload_len + NESA_FRAME_TRAILER_SIZE;
	s->stats.frames++;
	s->stats.payload_bytes += f->payload_len;
	s->stats.header_bytes += NESA_FRAME_HEADER_SIZE + NESA_FRAME_TRAILER_SIZE;
	s->eos_written = f->kind == NESA_FRAME_EOS;
	return NESA_OK;
}

enum nesa_status
nesa_stream_flush(struct nesa_stream *s)
{
	if (NESA_NEVER(bad_handle(s)))
		return NESA_EINVAL;
	if (s->failed != NESA_OK)
		return s->failed;
	if (s->mode != NESA_STREAM_WRITE || s->be->flush == NULL)
		return NESA_OK;
	return sticky(s, s->be->flush(s));
}

/* Bytes of s (at most max) cut back to a UTF-8 character boundary. */
static size_t
utf8_prefix(const char *s, size_t max)
{
	size_t n;

	if (s == NULL)
		return 0;
	n = strnlen(s, max + 1);
	if (n <= max)
		return n;
	n = max;
	/* s[n] is the first byte left out: if it continues a character, drop the character. */
	while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	return n;
}

enum nesa_status
nesa_stream_write_error(struct nesa_stream *s, uint64_t session, enum nesa_status st,
                        const char *stage, const char *msg)
{
	unsigned char p[ERROR_PAYLOAD_MAX]; /* u32 status, u16 stage length, stage, message */
	size_t stage_len = utf8_prefix(stage, NESA_FRAME_STAGE_MAX);
	size_t msg_len = utf8_prefix(msg, NESA_FRAME_MESSAGE_MAX);
	struct nesa_frame f;

	if (NESA_NEVER(bad_handle(s)))
		return NESA_EINVAL;
	if (st <= NESA_OK || st >= NESA_STATUS_COUNT)
		return refuse(s, NESA_EINVAL, "bad status %d for an error frame", (int)st);
	put32(p, (uint32_t)st);
	put16(p + 4, (uint16_t)stage_len);
	if (stage_len > 0)
		memcpy(p + ERROR_FIXED, stage, stage_len);
	if (msg_len > 0)
		memcpy(p + ERROR_FIXED + stage_len, msg, msg_len);
	nesa_frame_init(&f, NESA_FRAME_ERROR);
	f.session = session;
	f.payload = p;
	f.payload_len = ERROR_FIXED + stage_len + msg_len;
	return nesa_stream_write(s, &f);
}

/* Reading. */

/*
 * Every read of the reader goes through here, so io_seconds is the time
 * spent in the backend, waiting for the peer included.
 */
static enum nesa_status
backend_read(struct nesa_stream *s, void *buf, size_t n, size_t *got)
{
	double t0 = nesa_now();
	enum nesa_status st;

	/* After end of input, never read again: a terminal would wait for more. */
	*got = 0;
	if (s->eof)
		return NESA_OK;
	st = s->be->read(s, buf, n, got);
	s->stats.io_seconds += nesa_now() - t0;
	s->eof = st == NESA_OK && *got == 0;
	return st;
}

/*
 * Makes at least n bytes (n <= RBUF_SIZE) available at rbuf + rpos unless
 * the input ends first; *avail is what is available, also on failure.
 */
static enum nesa_status
fill(struct nesa_stream *s, size_t n, size_t *avail)
{
	enum nesa_status st = NESA_OK;

	/* Slide the unconsumed tail to the front when n would not fit after it. */
	if (s->rlen - s->rpos < n && s->rpos + n > RBUF_SIZE) {
		memmove(s->rbuf, s->rbuf + s->rpos, s->rlen - s->rpos);
		s->rlen -= s->rpos;
		s->rpos = 0;
	}
	while (s->rlen - s->rpos < n) {
		size_t want = s->be->greedy ? RBUF_SIZE - s->rlen : n - (s->rlen - s->rpos), got;

		st = backend_read(s, s->rbuf + s->rlen, want, &got);
		if (st != NESA_OK || got == 0)
			break;
		s->rlen += got;
	}
	*avail = s->rlen - s->rpos;
	return st;
}

/*
 * End of input inside a frame (or a .npy file).  Both offsets are given: the
 * frame's start tells which frame, the end how much of it arrived.
 */
static enum nesa_status
truncated(struct nesa_stream *s)
{
	unsigned long long end = s->offset + s->rlen - s->rpos;

	if (s->state == R_FRAMES)
		return fail(s, NESA_EFORMAT,
		            "truncated frame in '%s' at offset %llu: unexpected end of stream at offset %llu",
		            s->name, (unsigned long long)s->frame_start, end);
	return fail(s, NESA_EFORMAT, "cannot read '%s': unexpected end of file at offset %llu", s->name,
	            end);
}

/*
 * Reads exactly n bytes into dst, continuing *crc over them when crc is not
 * NULL.  What the read-ahead buffer holds is copied first; then large reads
 * go straight into dst and small ones refill the buffer.  Each piece is
 * checksummed as soon as it lands, while it is in cache.
 */
static enum nesa_status
read_exact(struct nesa_stream *s, unsigned char *dst, size_t n, uint32_t *crc)
{
	size_t done = 0;

	while (done < n) {
		size_t k = s->rlen - s->rpos;
		enum nesa_status st;
		double t0;

		if (k > 0) {
			if (k > n - done)
				k = n - done;
			memcpy(dst + done, s->rbuf + s->rpos, k);
			s->rpos += k;
		} else if (n - done >= RBUF_SIZE || !s->be->greedy) {
			st = backend_read(s, dst + done, n - done < IO_CHUNK ? n - done : IO_CHUNK, &k);
			if (st != NESA_OK)
				return sticky(s, st);
			if (k == 0)
				return truncated(s);
		} else {
			s->rpos = s->rlen = 0;
			st = backend_read(s, s->rbuf, RBUF_SIZE, &s->rlen);
			if (st != NESA_OK)
				return sticky(s, st);
			if (s->rlen == 0)
				return truncated(s);
			continue;
		}
		s->offset += k;
		if (crc != NULL) {
			t0 = nesa_now();
			*crc = nesa_crc32c(*crc, dst + done, k);
			s->stats.codec_seconds += nesa_now() - t0;
		}
		done += k;
	}
	return NESA_OK;
}

/* Grows the payload buffer to n bytes; n has been checked against the limit. */
static enum nesa_status
reserve_payload(struct nesa_stream *s, size_t n)
{
	size_t cap;

	/* Payloads of a stream tend to repeat one size: usually nothing to do. */
	if (n <= s->pcap)
		return NESA_OK;
	/* Doubling amortises growth; never beyond the limit unless n itself is. */
	cap = s->pcap > s->limit / 2 ? s->limit : s->pcap * 2;
	if (cap < n)
		cap = n;
	if (cap < 4096)
		cap = 4096;
	/* The old contents are not needed: free first, so peak memory is one buffer. */
	nesa_aligned_free(s->pbuf);
	s->pcap = 0;
	s->pbuf = nesa_aligned_alloc(cap);
	if (s->pbuf == NULL)
		return fail(s, NESA_ENOMEM, "cannot read frame in '%s' at offset %llu: out of memory (%zu bytes)",
		            s->name, (unsigned long long)s->frame_start, cap);
	s->pcap = cap;
	return NESA_OK;
}

/*
 * Validates the header at h and decodes it into f.  Order matters: the magic
 * first (to recognise foreign data), then the header checksum (so that no
 * field of a corrupt header is believed), then each field, sizes last, so
 * that the payload length is compared with a limit only once it is known to
 * be the length the writer meant.
 */
static enum nesa_status
decode_header(struct nesa_stream *s, const unsigned char *h, struct nesa_frame *f)
{
	uint64_t len = get64(h + OFF(payload_len));
	unsigned ndim = h[OFF(ndim)], i;

	if (memcmp(h, NESA_STREAM_MAGIC, 4) != 0)
		return bad(s, NESA_EFORMAT, "bad magic (not a nesa stream or .npy file)");
	/* Version 1 had zlib's CRC-32: its checksums cannot match, say why. */
	if (get32(h + OFF(header_crc)) != header_crc(h) && get16(h + OFF(version)) == 1)
		return bad(s, NESA_EVERSION, "unsupported version 1 (this build reads version %d)",
		           NESA_STREAM_VERSION);
	if (get32(h + OFF(header_crc)) != header_crc(h))
		return fail(s, NESA_ECHECKSUM, "corrupt frame header in '%s' at offset %llu: checksum mismatch",
		            s->name, (unsigned long long)s->frame_start);
	if (get16(h + OFF(version)) != NESA_STREAM_VERSION)
		return bad(s, NESA_EVERSION, "unsupported version %u (this build reads version %d)",
		           get16(h + OFF(version)), NESA_STREAM_VERSION);
	if (h[OFF(kind)] < NESA_FRAME_TENSOR || h[OFF(kind)] > NESA_FRAME_EOS)
		return bad(s, NESA_EFORMAT, "unknown kind %u", h[OFF(kind)]);
	if (h[OFF(flags)] & ~NESA_FRAME_FLAGS)
		return bad(s, NESA_EFORMAT, "reserved flags 0x%02x set", h[OFF(flags)]);
	if (ndim > 4)
		return bad(s, NESA_ESHAPE, "%u dimensions (at most 4)", ndim);
	nesa_frame_init(f, (enum nesa_frame_kind)h[OFF(kind)]);
	/*
	 * Unused dims must be 0 and control frames must carry none: a writer
	 * that sets them is confused, and accepting them would let two
	 * encodings of one frame exist.
	 */
	for (i = 0; i < 4; i++) {
		uint32_t d = get32(h + OFF(dims) + 4 * i);

		if (i >= ndim && d != 0)
			return bad(s, NESA_EFORMAT, "unused dimension %u is not 0", i);
		if (d > NESA_FRAME_MAX_DIM)
			return bad(s, NESA_ESHAPE, "dimension %u of size %lu exceeds 2^31", i, (unsigned long)d);
		f->shape[i] = d;
	}
	f->codec = h[OFF(codec)];
	f->flags = h[OFF(flags)];
	f->slot = get16(h + OFF(slot));
	f->session = get64(h + OFF(session));
	f->position = get32(h + OFF(position));
	f->block = get32(h + OFF(block));
	f->model_id = get64(h + OFF(model_id));
	f->ndim = (int)ndim;
	if (f->kind == NESA_FRAME_TENSOR) {
		size_t nbytes;
		char shape[96];

		if (nesa_dtype_traits(f->codec) == NULL)
			return bad(s, NESA_EUNSUPPORTED, "unknown codec %u (supported: %s)", f->codec,
			           nesa_dtype_list());
		/* Element count bounded and multiplied without overflow. */
		if (nesa_shape_check(f->codec, f->ndim, f->shape, true, &nbytes, "tensor", &s->err) != NESA_OK)
			return sticky(s, nesa_err_prefix(&s->err, "bad frame in '%s' at offset %llu", s->name,
			                                 (unsigned long long)s->frame_start));
		if (len != nbytes)
			return bad(s, NESA_EFORMAT, "payload of %llu bytes, but a %s tensor of shape %s takes %zu",
			           (unsigned long long)len, nesa_dtype_name(f->codec),
			           nesa_shape_str(f->ndim, f->shape, shape, sizeof shape), nbytes);
	} else if (f->codec != 0 || ndim != 0) {
		return bad(s, NESA_EFORMAT, "%s frame with a codec or dimensions", nesa_frame_kind_name(f->kind));
	} else if (f->kind == NESA_FRAME_ERROR ? len < ERROR_FIXED || len > ERROR_PAYLOAD_MAX
	           : f->kind == NESA_FRAME_BEGIN ? len > NESA_FRAME_BEGIN_MAX : len != 0) {
		return bad(s, NESA_EFORMAT, "%s frame with a payload of %llu bytes",
		           nesa_frame_kind_name(f->kind), (unsigned long long)len);
	}
	if (len > s->limit)
		return fail(s, NESA_ELIMIT,
		            "frame in '%s' at offset %llu is too large: payload of %llu bytes exceeds the limit of %zu bytes",
		            s->name, (unsigned long long)s->frame_start, (unsigned long long)len, s->limit);
	f->payload_len = (size_t)len;
	return NESA_OK;
}

/*
 * A .npy input becomes one tensor frame.  The preamble is peeked in the
 * read-ahead buffer, the header (bounded by NESA_NPY_HEADER_MAX) read into
 * its own allocation, the data into the payload buffer after the limit check.
 */
static enum nesa_status
read_npy(struct nesa_stream *s, struct nesa_frame *f)
{
	struct nesa_npy_info info;
	unsigned char *hdr;
	size_t avail, hsize;
	enum nesa_status st;
	int i;

	st = fill(s, NESA_NPY_PREAMBLE_MAX, &avail);
	if (st == NESA_OK)
		st = nesa_npy_preamble(s->rbuf + s->rpos, avail, s->name, &hsize, &s->err);
	if (st != NESA_OK)
		return sticky(s, st);
	hdr = nesa_malloc(hsize);
	if (hdr == NULL)
		return fail(s, NESA_ENOMEM, "cannot read '%s': out of memory", s->name);
	st = read_exact(s, hdr, hsize, NULL);
	if (st == NESA_OK)
		st = sticky(s, nesa_npy_parse_header(hdr, hsize, s->name, &info, &s->err));
	nesa_free(hdr);
	if (st != NESA_OK)
		return st;
	for (i = 0; i < info.ndim; i++)
		if ((uint64_t)info.shape[i] > NESA_FRAME_MAX_DIM)
			return fail(s, NESA_ESHAPE, "cannot read '%s': dimension %d of size %lld exceeds 2^31",
			            s->name, i, (long long)info.shape[i]);
	if (info.data_size > s->limit)
		return fail(s, NESA_ELIMIT, "cannot read '%s': array of %zu bytes exceeds the limit of %zu bytes",
		            s->name, info.data_size, s->limit);
	st = reserve_payload(s, info.data_size);
	if (st == NESA_OK)
		st = read_exact(s, s->pbuf, info.data_size, NULL);
	if (st != NESA_OK)
		return st;
	nesa_frame_init(f, NESA_FRAME_TENSOR);
	f->codec = (uint8_t)info.dtype;
	f->ndim = info.ndim;
	for (i = 0; i < info.ndim; i++)
		f->shape[i] = info.shape[i];
	f->payload = info.data_size > 0 ? s->pbuf : NULL;
	f->payload_len = info.data_size;
	s->state = R_NPY_TAIL;
	s->stats.frames++;
	s->stats.payload_bytes += info.data_size;
	s->stats.header_bytes += hsize;
	return NESA_OK;
}

enum nesa_status
nesa_stream_read(struct nesa_stream *s, struct nesa_frame *f)
{
	unsigned char trailer[NESA_FRAME_TRAILER_SIZE];
	uint32_t crc = 0;
	size_t avail;
	double t0;
	enum nesa_status st;
	const char *why;

	if (NESA_NEVER(bad_handle(s)))
		return NESA_EINVAL;
	nesa_frame_init(f, NESA_FRAME_EOS);
	if (s->mode != NESA_STREAM_READ)
		return nesa_err_set(&s->err, NESA_EINVAL, "cannot read from '%s': opened for writing", s->name);
	if (s->failed != NESA_OK)
		return s->failed;
	/* The end is sticky: a loop reading until EOS may call once too often. */
	if (s->state == R_END)
		return NESA_OK;
	s->frame_start = s->offset;
	/* After a .npy array only end of input may come: look one byte ahead. */
	st = fill(s, s->state == R_NPY_TAIL ? 1 : NESA_FRAME_HEADER_SIZE, &avail);
	if (st != NESA_OK) {
		/* Nothing of the next frame has arrived: the caller may try again. */
		if (st == NESA_ETIMEOUT && avail == 0)
			return st;
		return sticky(s, st);
	}
	if (s->state == R_NPY_TAIL && avail > 0)
		return fail(s, NESA_EFORMAT, "cannot read '%s': trailing data after the array at offset %llu",
		            s->name, (unsigned long long)s->offset);
	if (avail == 0) {
		s->state = R_END;
		return NESA_OK;
	}
	/*
	 * Only the first bytes of an input can start a .npy file; later frames
	 * never are one, so a frame that happens to look like it is refused.
	 */
	if (s->state == R_START) {
		s->state = nesa_npy_sniff(s->rbuf + s->rpos, avail) ? R_NPY : R_FRAMES;
		if (s->state == R_NPY)
			return read_npy(s, f);
	}
	if (avail < NESA_FRAME_HEADER_SIZE)
		return truncated(s);
	/* The header is decoded in place in the read-ahead buffer; no copy. */
	t0 = nesa_now();
	st = decode_header(s, s->rbuf + s->rpos, f);
	if (st == NESA_OK)
		crc = nesa_crc32c(0, s->rbuf + s->rpos, NESA_FRAME_HEADER_SIZE);
	s->stats.codec_seconds += nesa_now() - t0;
	if (st != NESA_OK)
		return st;
	s->rpos += NESA_FRAME_HEADER_SIZE;
	s->offset += NESA_FRAME_HEADER_SIZE;
	st = reserve_payload(s, f->payload_len);
	if (st == NESA_OK)
		st = read_exact(s, s->pbuf, f->payload_len, &crc);
	if (st == NESA_OK)
		st = read_exact(s, trailer, sizeof trailer, NULL);
	if (st != NESA_OK)
		return st;
	if (get32(trailer) != (uint32_t)crc)
		return fail(s, NESA_ECHECKSUM,
		            "corrupt frame in '%s' at offset %llu: payload checksum mismatch (trailer 0x%08lx, computed 0x%08lx)",
		            s->name, (unsigned long long)s->frame_start, (unsigned long)get32(trailer),
		            (unsigned long)crc);
	f->payload = f->payload_len > 0 ? s->pbuf : NULL;
	/* Checked only now, so that corruption is reported as such. */
	if (f->kind == NESA_FRAME_ERROR && !error_payload_ok(f->payload, f->payload_len, &why))
		return bad(s, NESA_EFORMAT, "%s", why);
	if (f->kind == NESA_FRAME_EOS)
		s->state = R_END;
	s->stats.frames++;
	s->stats.payload_bytes += f->payload_len;
	s->stats.header_bytes += NESA_FRAME_HEADER_SIZE + NESA_FRAME_TRAILER_SIZE;
	return NESA_OK;
}
