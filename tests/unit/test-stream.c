/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for stream: the exact wire bytes of a frame, round trips of
 * every frame kind and dtype through memory, stdio and a real pipe (also
 * non-blocking and interrupted by signals), corruption (every header bit,
 * payload and trailer) and truncation (every byte) detected with the offset
 * in the message, hostile headers refused before allocating, error frames,
 * timeouts, broken pipes, path and .npy outputs, and allocation failures.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#include "log.h"
#include "npy.h"
#include "stream.h"

/* A frame together with the payload it owns. */
struct tframe {
	struct nesa_frame f;
	unsigned char *data; /* (f.payload_len) */
};

/*
 * The frame of nesa-stream(5)'s EXAMPLES, with its CRC-32Cs from an
 * independent bit-at-a-time Python implementation.
 */
static const unsigned char example_frame[76] = {
	0x4e, 0x53, 0x54, 0x46, 0x02, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
	0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x01, 0x01, 0x00, 0x00, 0x2e, 0x8b, 0x35, 0xa2, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0xf5, 0x93, 0x1d, 0x52,
};

/* CRC-32C a bit at a time, written here so that crafted frames do not depend on checksum.c. */
static uint32_t
crc32c(uint32_t crc, const unsigned char *p, size_t n)
{
	uint32_t c = ~crc;
	int k;

	while (n-- > 0) {
		c ^= *p++;
		for (k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
	}
	return ~c;
}

static void
put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static void
put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/*
 * A header built independently of stream.c, with a correct header crc, so
 * that each field can be made hostile on its own.
 */
static void
craft(unsigned char *h, unsigned version, unsigned kind, unsigned codec, unsigned ndim,
      const uint32_t *dims, uint64_t len)
{
	uint32_t c;
	int i;

	memset(h, 0, 64);
	memcpy(h, "NSTF", 4);
	h[4] = (unsigned char)version;
	h[5] = (unsigned char)(version >> 8);
	h[6] = (unsigned char)kind;
	h[7] = (unsigned char)codec;
	put64(h + 8, 42);
	put32(h + 20, 0xffffffffu);
	for (i = 0; i < 4; i++)
		put32(h + 32 + 4 * i, dims != NULL ? dims[i] : 0);
	h[48] = (unsigned char)ndim;
	put64(h + 56, len);
	c = crc32c(0, h, 52);
	put32(h + 52, crc32c(c, h + 56, 8));
}

/* Reads one frame from a memory stream over buf and returns the status. */
static enum nesa_status
read_one(const void *buf, size_t len, struct nesa_frame *f, char *msg, size_t msg_size)
{
	struct nesa_stream *s;
	enum nesa_status st;

	assert_int_equal(nesa_stream_open_mem(buf, len, "t", &s, NULL), NESA_OK);
	st = nesa_stream_read(s, f);
	snprintf(msg, msg_size, "%s", nesa_stream_error(s));
	nesa_stream_free(s);
	return st;
}

static void
tframe_release(struct tframe *t)
{
	free(t->data);
	t->data = NULL;
}

/* A tensor frame of dtype with ndim random dims and random payload bytes. */
static void
make_tensor(struct tframe *t, int dtype, int ndim, uint64_t *rng)
{
	const struct nesa_dtype_traits *tr = nesa_dtype_traits(dtype);
	size_t nbytes, i;
	int d;

	nesa_frame_init(&t->f, NESA_FRAME_TENSOR);
	t->f.codec = (uint8_t)dtype;
	t->f.ndim = ndim;
	for (d = 0; d < ndim; d++)
		t->f.shape[d] = 1 + (int64_t)(test_rand(rng) % 3);
	if (ndim > 0)
		t->f.shape[ndim - 1] *= tr->block_size;
	t->f.session = test_rand(rng);
	t->f.position = (uint32_t)test_rand(rng);
	t->f.block = (uint32_t)(test_rand(rng) % 40);
	t->f.model_id = test_rand(rng);
	t->f.slot = (uint16_t)test_rand(rng);
	t->f.flags = (uint8_t)(test_rand(rng) & 1);
	assert_int_equal(nesa_shape_check(dtype, ndim, t->f.shape, false, &nbytes, NULL, NULL), NESA_OK);
	t->data = malloc(nbytes + 1);
	assert_non_null(t->data);
	for (i = 0; i < nbytes; i++)
		t->data[i] = (unsigned char)test_rand(rng);
	t->f.payload = t->data;
	t->f.payload_len = nbytes;
}

static void
make_control(struct tframe *t, enum nesa_frame_kind kind, uint64_t session)
{
	nesa_frame_init(&t->f, kind);
	t->f.session = session;
	t->f.position = 17;
	t->data = NULL;
}

static void
assert_frame_equal(const struct nesa_frame *a, const struct nesa_frame *b)
{
	int i;

	assert_int_equal(a->kind, b->kind);
	assert_int_equal(a->session, b->session);
	assert_int_equal(a->position, b->position);
	assert_int_equal(a->block, b->block);
	assert_int_equal(a->model_id, b->model_id);
	assert_int_equal(a->slot, b->slot);
	assert_int_equal(a->flags, b->flags);
	assert_int_equal(a->payload_len, b->payload_len);
	if (a->kind == NESA_FRAME_TENSOR) {
		assert_int_equal(a->codec, b->codec);
		assert_int_equal(a->ndim, b->ndim);
		for (i = 0; i < a->ndim; i++)
			assert_int_equal(a->shape[i], b->shape[i]);
	}
	if (a->payload_len > 0)
		assert_memory_equal(a->payload, b->payload, a->payload_len);
}

/*
 * The set of frames used by round trips: a begin, tensors of every known
 * dtype with 0..4 dims, an error, an end.  Returns the count.
 */
static size_t
make_all(struct tframe *out, size_t cap, uint64_t seed)
{
	uint64_t rng = seed;
	size_t n = 0;
	int dtype, ndim;
	static const unsigned char err_payload[] = {3, 0, 0, 0, 2, 0, 's', '1', 'o', 'o', 'p', 's'};

	make_control(&out[n++], NESA_FRAME_BEGIN, 5);
	for (dtype = 0; dtype < NESA_DTYPE_MAX; dtype++) {
		const struct nesa_dtype_traits *tr = nesa_dtype_traits(dtype);

		if (tr == NULL)
			continue;
		for (ndim = tr->block_size > 1 ? 1 : 0; ndim <= 4; ndim++) {
			assert_true(n < cap - 3);
			make_tensor(&out[n++], dtype, ndim, &rng);
		}
	}
	make_control(&out[n], NESA_FRAME_ERROR, 5);
	out[n].f.payload = err_payload;
	out[n++].f.payload_len = sizeof err_payload;
	make_control(&out[n++], NESA_FRAME_END, 5);
	return n;
}

static void
release_all(struct tframe *t, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		tframe_release(&t[i]);
}

/* Reads frames and compares them with want[0..n), then expects the end. */
static void
read_and_compare(struct nesa_stream *s, const struct tframe *want, size_t n)
{
	struct nesa_frame f;
	size_t i;

	for (i = 0; i < n; i++) {
		enum nesa_status st = nesa_stream_read(s, &f);

		if (st != NESA_OK)
			fail_msg("frame %zu: %s", i, nesa_stream_error(s));
		assert_frame_equal(&want[i].f, &f);
		if (f.payload_len > 0)
			assert_int_equal((uintptr_t)f.payload % NESA_ALIGN, 0);
	}
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_EOS);
	/* The end is sticky too. */
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_EOS);
}

static void
test_wire_bytes(void **state)
{
	static const float values[2] = {1.0f, -2.0f};
	struct nesa_stream *s;
	struct nesa_frame f;
	const unsigned char *out;
	size_t len;

	(void)state;
	assert_int_equal(nesa_stream_open_mem_writer("mem", &s, NULL), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_TENSOR);
	f.codec = NESA_F32;
	f.session = 7;
	f.position = 3;
	f.block = 1;
	f.model_id = UINT64_C(0x0807060504030201);
	f.ndim = 1;
	f.shape[0] = 2;
	f.flags = NESA_FRAME_FLAG_LAST;
	f.payload = values;
	f.payload_len = sizeof values;
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	out = nesa_stream_mem_data(s, &len);
	assert_int_equal(len, sizeof example_frame);
	assert_memory_equal(out, example_frame, sizeof example_frame);
	assert_int_equal(nesa_stream_offset(s), 76);
	nesa_stream_free(s);

	/* And the reader decodes it field by field. */
	{
		char msg[256];

		assert_int_equal(read_one(example_frame, sizeof example_frame, &f, msg, sizeof msg), NESA_OK);
		assert_int_equal(f.kind, NESA_FRAME_TENSOR);
		assert_int_equal(f.session, 7);
		assert_int_equal(f.position, 3);
		assert_int_equal(f.block, 1);
		assert_int_equal(f.model_id, UINT64_C(0x0807060504030201));
		assert_int_equal(f.flags, 1);
		assert_int_equal(f.ndim, 1);
		assert_int_equal(f.shape[0], 2);
	}
	{
		struct nesa_stream *r;
		float back[2];

		assert_int_equal(nesa_stream_open_mem(example_frame, sizeof example_frame, "t", &r, NULL), NESA_OK);
		assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
		assert_int_equal(nesa_frame_decode_f32(&f, back, 2, NULL), NESA_OK);
		assert_true(back[0] == 1.0f && back[1] == -2.0f);
		assert_int_equal(nesa_stream_offset(r), 76);
		nesa_stream_free(r);
	}
}

static void
test_roundtrip_mem(void **state)
{
	struct tframe t[128];
	struct nesa_stream *w, *r;
	const struct nesa_stream_stats *st;
	const void *buf;
	uint64_t payload = 0;
	size_t n, len, i;

	(void)state;
	n = make_all(t, 128, 1);
	assert_true(n >= 2 + 6 * 5);
	assert_int_equal(nesa_stream_open_mem_writer("mem", &w, NULL), NESA_OK);
	for (i = 0; i < n; i++) {
		assert_int_equal(nesa_stream_write(w, &t[i].f), NESA_OK);
		payload += t[i].f.payload_len;
	}
	st = nesa_stream_stats(w);
	assert_int_equal(st->frames, n);
	assert_int_equal(st->payload_bytes, payload);
	assert_int_equal(st->header_bytes, 68 * n);
	buf = nesa_stream_mem_data(w, &len);
	assert_int_equal(len, payload + 68 * n);
	assert_int_equal(nesa_stream_offset(w), len);

	assert_int_equal(nesa_stream_open_mem(buf, len, "mem", &r, NULL), NESA_OK);
	read_and_compare(r, t, n);
	st = nesa_stream_stats(r);
	assert_int_equal(st->frames, n);
	assert_int_equal(st->payload_bytes, payload);
	assert_int_equal(nesa_stream_offset(r), len);
	nesa_stream_free(r);

	/* Closing appends the end of stream frame, which the reader sees as the end. */
	assert_int_equal(nesa_stream_close(w, NULL), NESA_OK);
	release_all(t, n);
}

static void
test_roundtrip_file(void **state)
{
	struct tframe t[128];
	struct nesa_stream *s;
	FILE *fp = tmpfile();
	size_t n, i;
	long size;

	(void)state;
	assert_non_null(fp);
	n = make_all(t, 128, 2);
	assert_int_equal(nesa_stream_open_file(fp, NESA_STREAM_WRITE, "tmp", &s, NULL), NESA_OK);
	for (i = 0; i < n; i++)
		assert_int_equal(nesa_stream_write(s, &t[i].f), NESA_OK);
	assert_int_equal(nesa_stream_close(s, NULL), NESA_OK);
	size = ftell(fp);
	rewind(fp);
	assert_int_equal(nesa_stream_open_file(fp, NESA_STREAM_READ, "tmp", &s, NULL), NESA_OK);
	read_and_compare(s, t, n);
	/* The explicit end of stream frame was read: every byte is consumed. */
	assert_int_equal(nesa_stream_offset(s), (uint64_t)size);
	nesa_stream_free(s);
	fclose(fp);
	release_all(t, n);
}

static void
on_alarm(int sig)
{
	(void)sig;
}

/*
 * Interrupts system calls every 0.2 ms: the handler is installed without
 * SA_RESTART, so reads, writes and polls fail with EINTR and must retry.
 */
static void
interrupt_often(bool on)
{
	struct itimerval it;
	struct sigaction sa;

	/*
	 * The handler is in place before the first alarm and stays until the
	 * last; off, SIGALRM is ignored rather than fatal, for one still pending.
	 */
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on ? on_alarm : SIG_IGN;
	sigemptyset(&sa.sa_mask);
	memset(&it, 0, sizeof it);
	it.it_interval.tv_usec = on ? 200 : 0;
	it.it_value.tv_usec = on ? 200 : 0;
	if (on)
		sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	if (!on)
		sigaction(SIGALRM, &sa, NULL);
}

/* Child side of the pipe test: writes the frames and a 3 MiB one, exits. */
static void
pipe_writer(int fd, const struct tframe *t, size_t n, const struct tframe *big, bool hostile)
{
	struct nesa_stream *s;
	size_t i;
	int ok;

	if (hostile)
		interrupt_often(true);
	if (nesa_stream_open_fd(fd, NESA_STREAM_WRITE, "pipe", &s, NULL) != NESA_OK)
		_exit(1);
	ok = 1;
	for (i = 0; i < n && ok; i++)
		ok = nesa_stream_write(s, &t[i].f) == NESA_OK;
	ok = ok && nesa_stream_write(s, &big->f) == NESA_OK;
	ok = ok && nesa_stream_close(s, NULL) == NESA_OK;
	close(fd);
	_exit(ok ? 0 : 1);
}

/*
 * Every frame through a real pipe to a forked writer.  hostile: a
 * non-blocking writer (EAGAIN, short writes) and both ends interrupted by
 * signals (EINTR).
 */
static void
pipe_roundtrip(bool hostile)
{
	struct tframe t[129];
	struct nesa_stream *s;
	uint64_t rng = 99;
	int fds[2], wstatus;
	size_t n, i;
	pid_t pid;

	n = make_all(t, 128, 3);
	/* Large enough to cross the pipe in many short reads and writes. */
	nesa_frame_init(&t[n].f, NESA_FRAME_TENSOR);
	t[n].f.codec = NESA_F32;
	t[n].f.ndim = 2;
	t[n].f.shape[0] = 768;
	t[n].f.shape[1] = 1024;
	t[n].f.payload_len = 768 * 1024 * 4;
	t[n].data = malloc(t[n].f.payload_len);
	assert_non_null(t[n].data);
	for (i = 0; i < t[n].f.payload_len; i++)
		t[n].data[i] = (unsigned char)test_rand(&rng);
	t[n].f.payload = t[n].data;
	assert_int_equal(pipe(fds), 0);
	/* The reader blocks, so its reads see EINTR; the writer sees EAGAIN. */
	if (hostile)
		assert_int_equal(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		pipe_writer(fds[1], t, n, &t[n], hostile);
	}
	close(fds[1]);
	if (hostile) {
		/* Let the writer fill the pipe first, so that it meets EAGAIN and short writes. */
		usleep(100000);
		interrupt_often(true);
	}
	assert_int_equal(nesa_stream_open_fd(fds[0], NESA_STREAM_READ, "pipe", &s, NULL), NESA_OK);
	read_and_compare(s, t, n + 1);
	interrupt_often(false);
	nesa_stream_free(s);
	close(fds[0]);
	assert_int_equal(waitpid(pid, &wstatus, 0), pid);
	assert_true(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
	release_all(t, n + 1);
}

static void
test_roundtrip_pipe(void **state)
{
	(void)state;
	pipe_roundtrip(false);
}

static void
test_roundtrip_pipe_hostile(void **state)
{
	(void)state;
	pipe_roundtrip(true);
}

/* A begin frame (68 bytes) then a tensor frame: the victim sits at offset 68. */
static unsigned char *
two_frames(size_t *len)
{
	static const float v[5] = {1, 2, 3, 4, 5};
	struct nesa_stream *s;
	struct nesa_frame f;
	const void *data;
	unsigned char *copy;

	assert_int_equal(nesa_stream_open_mem_writer("mem", &s, NULL), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_BEGIN);
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_TENSOR);
	f.ndim = 1;
	f.shape[0] = 5;
	f.payload = v;
	f.payload_len = sizeof v;
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	data = nesa_stream_mem_data(s, len);
	copy = malloc(*len);
	assert_non_null(copy);
	memcpy(copy, data, *len);
	nesa_stream_free(s);
	return copy;
}

static void
test_bit_flips(void **state)
{
	struct nesa_stream *s;
	struct nesa_frame f;
	size_t len, byte;
	unsigned char *buf = two_frames(&len);
	int bit;

	(void)state;
	assert_int_equal(len, 68 + 64 + 20 + 4);
	for (byte = 68; byte < len; byte++)
		for (bit = 0; bit < 8; bit++) {
			enum nesa_status st, want;
			const char *msg;

			buf[byte] ^= (unsigned char)(1u << bit);
			assert_int_equal(nesa_stream_open_mem(buf, len, "flipped", &s, NULL), NESA_OK);
			assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
			assert_int_equal(f.kind, NESA_FRAME_BEGIN);
			st = nesa_stream_read(s, &f);
			msg = nesa_stream_error(s);
			/* The magic is checked first; everything else is the crc's job. */
			want = byte < 68 + 4 ? NESA_EFORMAT : NESA_ECHECKSUM;
			if (st != want || strstr(msg, "'flipped' at offset 68") == NULL)
				fail_msg("byte %zu bit %d: status %d, '%s'", byte, bit, st, msg);
			if (byte >= 68 + 64)
				assert_non_null(strstr(msg, "payload checksum mismatch"));
			else if (byte >= 68 + 4)
				assert_non_null(strstr(msg, "corrupt frame header in 'flipped' at offset 68: checksum mismatch"));
			/* Sticky: the same failure again. */
			assert_int_equal(nesa_stream_read(s, &f), want);
			nesa_stream_free(s);
			buf[byte] ^= (unsigned char)(1u << bit);
		}
	free(buf);
}

static void
test_truncation(void **state)
{
	static const float v[3] = {0.5f, 1.5f, 2.5f};
	struct nesa_stream *s;
	struct nesa_frame f;
	size_t bounds[8], nb = 0, len, cut, i;
	const void *data;
	unsigned char *buf;

	(void)state;
	assert_int_equal(nesa_stream_open_mem_writer("mem", &s, NULL), NESA_OK);
	bounds[nb++] = 0;
	nesa_frame_init(&f, NESA_FRAME_BEGIN);
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	bounds[nb++] = nesa_stream_offset(s);
	nesa_frame_init(&f, NESA_FRAME_TENSOR);
	f.ndim = 2;
	f.shape[0] = 1;
	f.shape[1] = 3;
	f.payload = v;
	f.payload_len = sizeof v;
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	bounds[nb++] = nesa_stream_offset(s);
	assert_int_equal(nesa_stream_write_error(s, 1, NESA_EIO, "stage", "disk gone"), NESA_OK);
	bounds[nb++] = nesa_stream_offset(s);
	nesa_frame_init(&f, NESA_FRAME_END);
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	bounds[nb++] = nesa_stream_offset(s);
	nesa_frame_init(&f, NESA_FRAME_EOS);
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	bounds[nb++] = nesa_stream_offset(s);
	data = nesa_stream_mem_data(s, &len);
	buf = malloc(len);
	assert_non_null(buf);
	memcpy(buf, data, len);
	nesa_stream_free(s);

	for (cut = 0; cut <= len; cut++) {
		size_t complete = 0, start = 0;
		enum nesa_status st;
		bool boundary = false;

		for (i = 0; i < nb; i++) {
			if (bounds[i] <= cut) {
				complete = i;
				start = bounds[i];
			}
			boundary |= bounds[i] == cut;
		}
		/* Exact copies so that reading past cut is a real overrun under ASan. */
		unsigned char *prefix = malloc(cut + 1);

		assert_non_null(prefix);
		memcpy(prefix, buf, cut);
		assert_int_equal(nesa_stream_open_mem(prefix, cut, "cut", &s, NULL), NESA_OK);
		for (i = 0; i < complete; i++) {
			assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
			assert_true(f.kind != NESA_FRAME_EOS || i == 4);
		}
		st = nesa_stream_read(s, &f);
		if (boundary) {
			assert_int_equal(st, NESA_OK);
			assert_int_equal(f.kind, NESA_FRAME_EOS);
		} else {
			char want[96];

			snprintf(want, sizeof want, "truncated frame in 'cut' at offset %zu: unexpected end of stream at offset %zu",
			         start, cut);
			if (st != NESA_EFORMAT || strcmp(nesa_stream_error(s), want) != 0)
				fail_msg("cut %zu: status %d, '%s'", cut, st, nesa_stream_error(s));
		}
		nesa_stream_free(s);
		free(prefix);
	}
	free(buf);
}

/* A crafted header alone, expecting st and text in the message. */
static void
expect_bad(const unsigned char *h, size_t len, enum nesa_status want, const char *text)
{
	struct nesa_frame f;
	char msg[NESA_ERR_MSG_MAX];
	enum nesa_status st = read_one(h, len, &f, msg, sizeof msg);

	if (st != want || strstr(msg, text) == NULL || strstr(msg, "'t' at offset 0") == NULL)
		fail_msg("want %d '%s', got %d '%s'", want, text, st, msg);
}

static void
test_hostile_headers(void **state)
{
	unsigned char h[64 + 16];
	uint32_t dims[4] = {0};
	struct nesa_stream *s;
	struct nesa_frame f;
	uint32_t c;

	(void)state;
	craft(h, 2, NESA_FRAME_BEGIN, 0, 0, NULL, 0);
	memcpy(h, "NSTG", 4);
	expect_bad(h, 64, NESA_EFORMAT, "bad magic");
	craft(h, 3, NESA_FRAME_BEGIN, 0, 0, NULL, 0);
	expect_bad(h, 64, NESA_EVERSION, "unsupported version 3");
	/* A version 1 frame, with zlib's CRC-32 as it had: named as such, not as corrupt. */
	craft(h, 1, NESA_FRAME_BEGIN, 0, 0, NULL, 0);
	put32(h + 52, 0x12345678u);
	expect_bad(h, 64, NESA_EVERSION, "unsupported version 1");
	craft(h, 2, 0, 0, 0, NULL, 0);
	expect_bad(h, 64, NESA_EFORMAT, "unknown kind 0");
	craft(h, 2, 6, 0, 0, NULL, 0);
	expect_bad(h, 64, NESA_EFORMAT, "unknown kind 6");
	dims[0] = 4;
	craft(h, 2, NESA_FRAME_TENSOR, 15, 1, dims, 16);
	expect_bad(h, 64, NESA_EUNSUPPORTED, "unknown codec 15");
	craft(h, 2, NESA_FRAME_TENSOR, 200, 1, dims, 16);
	expect_bad(h, 64, NESA_EUNSUPPORTED, "unknown codec 200");
	craft(h, 2, NESA_FRAME_TENSOR, 0, 5, dims, 16);
	expect_bad(h, 64, NESA_ESHAPE, "5 dimensions");
	/* A dimension beyond 2^31. */
	dims[0] = 0xffffffffu;
	craft(h, 2, NESA_FRAME_TENSOR, 0, 1, dims, 16);
	expect_bad(h, 64, NESA_ESHAPE, "exceeds 2^31");
	/* 2^124 elements: the product overflows int64. */
	dims[0] = dims[1] = dims[2] = dims[3] = 1u << 31;
	craft(h, 2, NESA_FRAME_TENSOR, 0, 4, dims, 16);
	expect_bad(h, 64, NESA_ESHAPE, "too large");
	/* 2^62 elements, with a length that matches them. */
	dims[2] = dims[3] = 0;
	craft(h, 2, NESA_FRAME_TENSOR, 0, 2, dims, UINT64_C(1) << 62 << 2);
	expect_bad(h, 64, NESA_ESHAPE, "too large");
	/* A length that disagrees with the shape. */
	dims[0] = 3;
	dims[1] = 5;
	craft(h, 2, NESA_FRAME_TENSOR, 0, 2, dims, 61);
	expect_bad(h, 64, NESA_EFORMAT, "payload of 61 bytes, but a f32 tensor of shape [3, 5] takes 60");
	/* Unused dims must be 0. */
	craft(h, 2, NESA_FRAME_TENSOR, 0, 1, dims, 12);
	expect_bad(h, 64, NESA_EFORMAT, "unused dimension 1 is not 0");
	/* Reserved flags. */
	craft(h, 2, NESA_FRAME_BEGIN, 0, 0, NULL, 0);
	h[49] = 4;
	c = crc32c(0, h, 52);
	put32(h + 52, crc32c(c, h + 56, 8));
	expect_bad(h, 64, NESA_EFORMAT, "reserved flags 0x04");
	/* Control frames carry neither payload nor codec. */
	craft(h, 2, NESA_FRAME_END, 0, 0, NULL, 8);
	expect_bad(h, 64, NESA_EFORMAT, "end frame with a payload of 8 bytes");
	craft(h, 2, NESA_FRAME_BEGIN, 3, 0, NULL, 0);
	expect_bad(h, 64, NESA_EFORMAT, "with a codec or dimensions");
	craft(h, 2, NESA_FRAME_ERROR, 0, 0, NULL, 5000);
	expect_bad(h, 64, NESA_EFORMAT, "error frame with a payload of 5000 bytes");

	/* An error frame whose inner stage length points past the payload. */
	craft(h, 2, NESA_FRAME_ERROR, 0, 0, NULL, 8);
	put32(h + 64, NESA_EIO);
	h[68] = 200;
	h[69] = 0;
	h[70] = 'a';
	h[71] = 'b';
	put32(h + 72, crc32c(0, h, 72));
	expect_bad(h, 76, NESA_EFORMAT, "bad stage name length");

	/*
	 * Consistent frames above the limit fail before any allocation: with
	 * every allocation failing, the answer is still ELIMIT, not ENOMEM.
	 */
	dims[0] = 1u << 20;
	dims[1] = 1u << 18;
	craft(h, 2, NESA_FRAME_TENSOR, 0, 2, dims, UINT64_C(1) << 40);
	assert_int_equal(nesa_stream_open_mem(h, 64, "t", &s, NULL), NESA_OK);
	test_faults_arm(1);
	assert_int_equal(nesa_stream_read(s, &f), NESA_ELIMIT);
	test_faults_disarm();
	assert_non_null(strstr(nesa_stream_error(s), "exceeds the limit of 1073741824 bytes"));
	nesa_stream_free(s);
	dims[0] = 1024;
	dims[1] = 0;
	craft(h, 2, NESA_FRAME_TENSOR, 0, 1, dims, 4096);
	assert_int_equal(nesa_stream_open_mem(h, 64, "t", &s, NULL), NESA_OK);
	nesa_stream_set_limit(s, 4095);
	test_faults_arm(1);
	assert_int_equal(nesa_stream_read(s, &f), NESA_ELIMIT);
	test_faults_disarm();
	assert_non_null(strstr(nesa_stream_error(s), "frame in 't' at offset 0 is too large: payload of 4096 bytes"));
	nesa_stream_free(s);

	/* Not a stream at all. */
	expect_bad((const unsigned char *)"hello, this is plain text and certainly not a tensor stream....", 64,
	           NESA_EFORMAT, "not a nesa stream");
}

static void
test_error_frames(void **state)
{
	char stage[NESA_FRAME_STAGE_MAX + 1], msg[NESA_FRAME_MESSAGE_MAX + 1], small[8];
	char *long_msg, *long_stage;
	struct nesa_stream *w, *r;
	struct nesa_frame f;
	const void *buf;
	enum nesa_status st;
	size_t len;

	(void)state;
	long_msg = malloc(5000);
	long_stage = malloc(400);
	assert_non_null(long_msg);
	assert_non_null(long_stage);
	/* 4095 ASCII bytes then a 2-byte character: cut before the character. */
	memset(long_msg, 'm', 4095);
	strcpy(long_msg + 4095, "\xc3\xa9tail");
	memset(long_stage, 's', 399);
	long_stage[399] = '\0';

	assert_int_equal(nesa_stream_open_mem_writer("mem", &w, NULL), NESA_OK);
	assert_int_equal(nesa_stream_write_error(w, 9, NESA_ESHAPE, "stage-2", "bad shape [3, 4]"), NESA_OK);
	assert_int_equal(nesa_stream_write_error(w, 10, NESA_EIO, long_stage, long_msg), NESA_OK);
	assert_int_equal(nesa_stream_write_error(w, 11, NESA_EREMOTE, NULL, "\x1b[31mred\x1b[0m \xff \xc2\x9b \xe2\x82\xac"), NESA_OK);
	assert_int_equal(nesa_stream_write_error(w, 12, NESA_OK, "x", "y"), NESA_EINVAL);
	buf = nesa_stream_mem_data(w, &len);
	assert_int_equal(nesa_stream_open_mem(buf, len, "mem", &r, NULL), NESA_OK);

	assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_ERROR);
	assert_int_equal(f.session, 9);
	assert_int_equal(nesa_frame_error_parse(&f, &st, stage, sizeof stage, msg, sizeof msg, NULL), NESA_OK);
	assert_int_equal(st, NESA_ESHAPE);
	assert_string_equal(stage, "stage-2");
	assert_string_equal(msg, "bad shape [3, 4]");
	/* Small buffers truncate; NULL buffers are skipped. */
	assert_int_equal(nesa_frame_error_parse(&f, &st, small, sizeof small, NULL, 0, NULL), NESA_OK);
	assert_string_equal(small, "stage-2");
	assert_int_equal(nesa_frame_error_parse(&f, &st, small, 4, NULL, 0, NULL), NESA_OK);
	assert_string_equal(small, "sta");

	assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
	assert_int_equal(f.payload_len, 6 + 255 + 4095);
	assert_int_equal(nesa_frame_error_parse(&f, &st, stage, sizeof stage, msg, sizeof msg, NULL), NESA_OK);
	assert_int_equal(st, NESA_EIO);
	assert_int_equal(strlen(stage), 255);
	assert_int_equal(strlen(msg), 4095);

	/* Hostile text becomes printable. */
	assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
	assert_int_equal(nesa_frame_error_parse(&f, &st, stage, sizeof stage, msg, sizeof msg, NULL), NESA_OK);
	assert_string_equal(stage, "");
	assert_string_equal(msg, "?[31mred?[0m ? ?? \xe2\x82\xac");
	assert_int_equal(nesa_stream_read(r, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_EOS);
	nesa_stream_free(r);
	nesa_stream_free(w);

	/* An unknown status number from a newer peer. */
	{
		unsigned char p[8] = {0xe7, 0x03, 0, 0, 1, 0, 'x', '!'};
		struct nesa_err err;

		nesa_frame_init(&f, NESA_FRAME_ERROR);
		f.payload = p;
		f.payload_len = sizeof p;
		assert_int_equal(nesa_frame_error_parse(&f, &st, stage, sizeof stage, msg, sizeof msg, &err), NESA_OK);
		assert_int_equal(st, NESA_EREMOTE);
		assert_string_equal(stage, "x");
		assert_string_equal(msg, "!");
		f.payload_len = 5;
		assert_int_equal(nesa_frame_error_parse(&f, &st, stage, sizeof stage, msg, sizeof msg, &err), NESA_EFORMAT);
		f.kind = NESA_FRAME_TENSOR;
		assert_int_equal(nesa_frame_error_parse(&f, &st, stage, sizeof stage, msg, sizeof msg, &err), NESA_EINVAL);
	}
	free(long_msg);
	free(long_stage);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void
test_timeout(void **state)
{
	struct nesa_stream *s;
	struct nesa_frame f;
	unsigned char frame[76];
	int fds[2];
	double t0, el;

	(void)state;
	memcpy(frame, example_frame, sizeof frame);
	assert_int_equal(pipe(fds), 0);
	assert_int_equal(nesa_stream_open_fd(fds[0], NESA_STREAM_READ, "pipe", &s, NULL), NESA_OK);
	nesa_stream_set_timeout(s, 60);
	t0 = now_s();
	assert_int_equal(nesa_stream_read(s, &f), NESA_ETIMEOUT);
	el = now_s() - t0;
	assert_true(el >= 0.055 && el < 5.0);
	assert_non_null(strstr(nesa_stream_error(s), "timed out reading 'pipe' at offset 0: no data for 60 ms"));
	/* At a frame boundary a timeout is not sticky. */
	assert_int_equal(write(fds[1], frame, sizeof frame), (ssize_t)sizeof frame);
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_TENSOR);
	/* Half a frame then silence: the stream is out of step, so it sticks. */
	assert_int_equal(write(fds[1], frame, 10), 10);
	assert_int_equal(nesa_stream_read(s, &f), NESA_ETIMEOUT);
	assert_non_null(strstr(nesa_stream_error(s), "at offset 86"));
	assert_int_equal(write(fds[1], frame + 10, sizeof frame - 10), (ssize_t)sizeof frame - 10);
	assert_int_equal(nesa_stream_read(s, &f), NESA_ETIMEOUT);
	nesa_stream_free(s);
	close(fds[0]);
	close(fds[1]);
}

static void
test_broken_pipe(void **state)
{
	static float big[1 << 16];
	struct nesa_stream *s;
	struct nesa_frame f;
	struct nesa_err err;
	void (*old)(int);
	int fds[2];

	(void)state;
	old = signal(SIGPIPE, SIG_IGN);
	assert_int_equal(pipe(fds), 0);
	close(fds[0]);
	assert_int_equal(nesa_stream_open_fd(fds[1], NESA_STREAM_WRITE, "standard output", &s, NULL), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_TENSOR);
	f.ndim = 1;
	f.shape[0] = 1 << 16;
	f.payload = big;
	f.payload_len = sizeof big;
	assert_int_equal(nesa_stream_write(s, &f), NESA_EIO);
	assert_string_equal(nesa_stream_error(s), "cannot write to 'standard output': Broken pipe");
	nesa_frame_init(&f, NESA_FRAME_END);
	assert_int_equal(nesa_stream_write(s, &f), NESA_EIO);
	assert_int_equal(nesa_stream_close(s, &err), NESA_EIO);
	assert_string_equal(err.msg, "cannot write to 'standard output': Broken pipe");
	close(fds[1]);
	signal(SIGPIPE, old);
}

static void
test_refused_writes(void **state)
{
	static const float v[4] = {1, 2, 3, 4};
	struct nesa_stream *s;
	struct nesa_frame f, g;
	size_t len;

	(void)state;
	assert_int_equal(nesa_stream_open_mem_writer("mem", &s, NULL), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_TENSOR);
	f.ndim = 2;
	f.shape[0] = 2;
	f.shape[1] = 2;
	f.payload = v;
	f.payload_len = sizeof v;
	g = f;
	g.payload_len = 12;
	assert_int_equal(nesa_stream_write(s, &g), NESA_EINVAL);
	assert_non_null(strstr(nesa_stream_error(s), "payload of 12 bytes for a f32 tensor of 16 bytes"));
	g = f;
	g.codec = 15;
	assert_int_equal(nesa_stream_write(s, &g), NESA_EUNSUPPORTED);
	g = f;
	g.ndim = 5;
	assert_int_equal(nesa_stream_write(s, &g), NESA_ESHAPE);
	g = f;
	g.shape[0] = (int64_t)1 << 32;
	assert_int_equal(nesa_stream_write(s, &g), NESA_ESHAPE);
	g = f;
	g.flags = 0x80;
	assert_int_equal(nesa_stream_write(s, &g), NESA_EINVAL);
	g = f;
	g.kind = (enum nesa_frame_kind)9;
	assert_int_equal(nesa_stream_write(s, &g), NESA_EINVAL);
	g = f;
	g.kind = NESA_FRAME_END;
	assert_int_equal(nesa_stream_write(s, &g), NESA_EINVAL);
	assert_non_null(strstr(nesa_stream_error(s), "end frames carry no payload"));
	/* Begin frames carry a description of at most NESA_FRAME_BEGIN_MAX bytes. */
	{
		static char big[NESA_FRAME_BEGIN_MAX + 1];

		g = f;
		g.kind = NESA_FRAME_BEGIN;
		g.payload = big;
		g.payload_len = sizeof big;
		assert_int_equal(nesa_stream_write(s, &g), NESA_EINVAL);
		assert_non_null(strstr(nesa_stream_error(s), "a begin frame carries at most"));
	}
	g = f;
	g.payload = NULL;
	assert_int_equal(nesa_stream_write(s, &g), NESA_EINVAL);
	g = f;
	g.kind = NESA_FRAME_ERROR;
	g.payload_len = 3;
	assert_int_equal(nesa_stream_write(s, &g), NESA_EINVAL);
	nesa_stream_set_limit(s, 15);
	assert_int_equal(nesa_stream_write(s, &f), NESA_ELIMIT);
	nesa_stream_set_limit(s, 0);
	/* Nothing was written by the refusals and the stream still works. */
	nesa_stream_mem_data(s, &len);
	assert_int_equal(len, 0);
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &g), NESA_EINVAL);
	nesa_frame_init(&g, NESA_FRAME_EOS);
	assert_int_equal(nesa_stream_write(s, &g), NESA_OK);
	assert_int_equal(nesa_stream_write(s, &f), NESA_EINVAL);
	assert_non_null(strstr(nesa_stream_error(s), "the stream has ended"));
	nesa_stream_mem_data(s, &len);
	assert_int_equal(len, 68 + 16 + 68);
	assert_int_equal(nesa_stream_close(s, NULL), NESA_OK);
	assert_int_equal(nesa_stream_open_fd(0, 7, "bad", &s, NULL), NESA_EINVAL);
	assert_null(s);
}

static void
test_frame_helpers(void **state)
{
	int64_t shape[2] = {2, 3};
	struct nesa_tensor *t, *back, view;
	struct nesa_frame f;
	struct nesa_err err;
	uint16_t *h;
	float out[6];
	int i;

	(void)state;
	t = nesa_tensor_new("x", NESA_F16, 2, shape, &err);
	assert_non_null(t);
	h = t->data;
	for (i = 0; i < 6; i++)
		h[i] = nesa_f32_to_f16((float)i * 0.5f - 1.0f);
	assert_int_equal(nesa_frame_from_tensor(&f, t), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_TENSOR);
	assert_int_equal(f.codec, NESA_F16);
	assert_int_equal(f.block, NESA_BLOCK_NONE);
	assert_int_equal(f.payload_len, 12);
	assert_ptr_equal(f.payload, t->data);
	assert_int_equal(nesa_frame_decode_f32(&f, out, 6, &err), NESA_OK);
	for (i = 0; i < 6; i++)
		assert_true(out[i] == (float)i * 0.5f - 1.0f);
	assert_int_equal(nesa_frame_decode_f32(&f, out, 5, &err), NESA_EINVAL);
	assert_int_equal(nesa_frame_to_tensor(&f, &back, &err), NESA_OK);
	assert_int_equal(back->dtype, NESA_F16);
	assert_true(nesa_tensor_same_shape(back, t));
	assert_memory_equal(back->data, t->data, 12);
	assert_ptr_not_equal(back->data, t->data);
	nesa_tensor_free(back);

	/* A view of the second row is contiguous; a frame of it borrows its data. */
	assert_int_equal(nesa_tensor_view_rows(t, 1, 1, &view, &err), NESA_OK);
	assert_int_equal(nesa_frame_from_tensor(&f, &view), NESA_OK);
	assert_ptr_equal(f.payload, h + 3);
	view.stride[0] = 100;
	assert_int_equal(nesa_frame_from_tensor(&f, &view), NESA_EINVAL);

	nesa_frame_init(&f, NESA_FRAME_BEGIN);
	assert_int_equal(nesa_frame_to_tensor(&f, &back, &err), NESA_EINVAL);
	assert_null(back);
	assert_int_equal(nesa_frame_decode_f32(&f, out, 0, &err), NESA_EINVAL);
	assert_string_equal(nesa_frame_kind_name(NESA_FRAME_ERROR), "error");
	assert_string_equal(nesa_frame_kind_name(0), "unknown");
	nesa_tensor_free(t);
}

/* A .npy input yields one tensor frame then the end. */
static void
test_npy_input(void **state)
{
	/* A compact header, as other writers than numpy may produce. */
	static const char hdr[] = "\x93NUMPY\x01\x00\x36\x00{'descr':'<i4','fortran_order':False,'shape':(3,)}   \n";
	unsigned char file[64 + 12 + 1];
	struct nesa_stream *s;
	struct nesa_frame f;
	int32_t v[3] = {7, -8, 9};

	(void)state;
	assert_int_equal(sizeof hdr - 1, 64);
	memcpy(file, hdr, 64);
	memcpy(file + 64, v, sizeof v);
	assert_int_equal(nesa_stream_open_mem(file, 76, "a.npy", &s, NULL), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_TENSOR);
	assert_int_equal(f.codec, NESA_I32);
	assert_int_equal(f.session, 0);
	assert_int_equal(f.position, 0);
	assert_int_equal(f.block, NESA_BLOCK_NONE);
	assert_int_equal(f.ndim, 1);
	assert_int_equal(f.shape[0], 3);
	assert_memory_equal(f.payload, v, sizeof v);
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_EOS);
	nesa_stream_free(s);

	/* Trailing bytes, a short file, a limit. */
	file[76] = 0;
	assert_int_equal(nesa_stream_open_mem(file, 77, "a.npy", &s, NULL), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &f), NESA_EFORMAT);
	assert_string_equal(nesa_stream_error(s), "cannot read 'a.npy': trailing data after the array at offset 76");
	nesa_stream_free(s);
	assert_int_equal(nesa_stream_open_mem(file, 75, "a.npy", &s, NULL), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &f), NESA_EFORMAT);
	assert_string_equal(nesa_stream_error(s), "cannot read 'a.npy': unexpected end of file at offset 75");
	nesa_stream_free(s);
	assert_int_equal(nesa_stream_open_mem(file, 76, "a.npy", &s, NULL), NESA_OK);
	nesa_stream_set_limit(s, 8);
	assert_int_equal(nesa_stream_read(s, &f), NESA_ELIMIT);
	nesa_stream_free(s);
	/* Fortran order is refused, naming the file. */
	memcpy(file, hdr, 64);
	memcpy(strstr((char *)file + 10, "False"), "True ", 5);
	assert_int_equal(nesa_stream_open_mem(file, 76, "f.npy", &s, NULL), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &f), NESA_EUNSUPPORTED);
	assert_non_null(strstr(nesa_stream_error(s), "cannot read 'f.npy': Fortran-order"));
	nesa_stream_free(s);
}

static void
test_path_outputs(void **state)
{
	static const float v[6] = {1, 2, 3, 4, 5, 6};
	char *dir = test_tmpdir(), path[512], cmd[600];
	struct nesa_stream *s;
	struct nesa_frame f, tf;
	struct nesa_tensor *t;
	struct nesa_err err;
	struct stat sb;
	FILE *fp;

	(void)state;
	assert_non_null(dir);
	nesa_frame_init(&tf, NESA_FRAME_TENSOR);
	tf.ndim = 2;
	tf.shape[0] = 2;
	tf.shape[1] = 3;
	tf.payload = v;
	tf.payload_len = sizeof v;

	/* A stream file appears only when closed. */
	snprintf(path, sizeof path, "%s/out.nst", dir);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_WRITE, 0, &s, &err), NESA_OK);
	assert_int_equal(nesa_stream_write(s, &tf), NESA_OK);
	assert_int_equal(stat(path, &sb), -1);
	assert_int_equal(nesa_stream_close(s, &err), NESA_OK);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 68 + 24 + 68);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_WRITE, 0, &s, &err), NESA_ECREATE);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_READ, 0, &s, &err), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_frame_equal(&tf, &f);
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_int_equal(f.kind, NESA_FRAME_EOS);
	assert_int_equal(nesa_stream_close(s, &err), NESA_OK);
	/* Abandoned: nothing is left behind. */
	snprintf(path, sizeof path, "%s/gone.nst", dir);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_WRITE, 0, &s, &err), NESA_OK);
	assert_int_equal(nesa_stream_write(s, &tf), NESA_OK);
	nesa_stream_free(s);
	assert_int_equal(stat(path, &sb), -1);
	snprintf(path, sizeof path, "%s/missing", dir);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_READ, 0, &s, &err), NESA_ENOENT);
	assert_non_null(strstr(err.msg, "cannot open '"));

	/* -o x.npy: one tensor, control frames ignored. */
	snprintf(path, sizeof path, "%s/x.npy", dir);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_WRITE, 0, &s, &err), NESA_OK);
	nesa_frame_init(&f, NESA_FRAME_BEGIN);
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	assert_int_equal(nesa_stream_write(s, &tf), NESA_OK);
	assert_int_equal(nesa_stream_write(s, &tf), NESA_EINVAL);
	assert_non_null(strstr(nesa_stream_error(s), "cannot write a second tensor to '"));
	nesa_frame_init(&f, NESA_FRAME_END);
	assert_int_equal(nesa_stream_write(s, &f), NESA_OK);
	assert_int_equal(nesa_stream_close(s, &err), NESA_OK);
	fp = fopen(path, "rb");
	assert_non_null(fp);
	assert_int_equal(nesa_npy_read_fp(fp, path, &t, &err), NESA_OK);
	fclose(fp);
	assert_int_equal(t->dtype, NESA_F32);
	assert_int_equal(t->ndim, 2);
	assert_memory_equal(t->data, v, sizeof v);
	nesa_tensor_free(t);
	/* And read back as a stream. */
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_READ, 0, &s, &err), NESA_OK);
	assert_int_equal(nesa_stream_read(s, &f), NESA_OK);
	assert_frame_equal(&tf, &f);
	nesa_stream_free(s);

	/* No tensor, or an error frame: no file. */
	snprintf(path, sizeof path, "%s/empty.npy", dir);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_WRITE, 0, &s, &err), NESA_OK);
	assert_int_equal(nesa_stream_close(s, &err), NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "held no tensor"));
	assert_int_equal(stat(path, &sb), -1);
	assert_int_equal(nesa_stream_open_path(path, NESA_STREAM_WRITE, 0, &s, &err), NESA_OK);
	assert_int_equal(nesa_stream_write_error(s, 0, NESA_EIO, "s1", "boom"), NESA_EUNSUPPORTED);
	assert_non_null(strstr(nesa_stream_error(s), "(stage 's1': boom)"));
	assert_int_equal(nesa_stream_close(s, &err), NESA_EUNSUPPORTED);
	assert_int_equal(stat(path, &sb), -1);

	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

/* Every allocation of writing and reading can fail cleanly. */
static void
test_alloc_failures(void **state)
{
	struct tframe t[128];
	struct nesa_stream *s;
	struct nesa_frame f;
	struct nesa_tensor *copy;
	unsigned char *buf = NULL;
	size_t n, len = 0, i;
	long k;

	(void)state;
	n = make_all(t, 128, 4);
	for (k = 1;; k++) {
		enum nesa_status st;
		const void *data;

		test_faults_arm(k);
		st = nesa_stream_open_mem_writer("mem", &s, NULL);
		for (i = 0; i < n && st == NESA_OK; i++)
			st = nesa_stream_write(s, &t[i].f);
		test_faults_disarm();
		if (st == NESA_OK) {
			data = nesa_stream_mem_data(s, &len);
			buf = malloc(len);
			assert_non_null(buf);
			memcpy(buf, data, len);
		}
		nesa_stream_free(s);
		if (st == NESA_OK)
			break;
		assert_int_equal(st, NESA_ENOMEM);
	}
	assert_true(k > 2);
	for (k = 1;; k++) {
		enum nesa_status st;

		test_faults_arm(k);
		s = NULL;
		st = nesa_stream_open_mem(buf, len, "mem", &s, NULL);
		for (i = 0; i <= n && st == NESA_OK; i++)
			st = nesa_stream_read(s, &f);
		test_faults_disarm();
		if (st == NESA_OK)
			assert_int_equal(f.kind, NESA_FRAME_EOS);
		else if (s != NULL)
			assert_non_null(strstr(nesa_stream_error(s), "out of memory"));
		nesa_stream_free(s);
		if (st == NESA_OK)
			break;
		assert_int_equal(st, NESA_ENOMEM);
	}
	assert_true(k > 2);
	/* Copying a frame into a tensor. */
	for (k = 1;; k++) {
		enum nesa_status st;
		struct nesa_err err;

		test_faults_arm(k);
		st = nesa_frame_to_tensor(&t[3].f, &copy, &err);
		test_faults_disarm();
		nesa_tensor_free(copy);
		if (st == NESA_OK)
			break;
		assert_int_equal(st, NESA_ENOMEM);
		assert_non_null(strstr(err.msg, "out of memory"));
	}
	free(buf);
	release_all(t, n);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wire_bytes),
		cmocka_unit_test(test_roundtrip_mem),
		cmocka_unit_test(test_roundtrip_file),
		cmocka_unit_test(test_roundtrip_pipe),
		cmocka_unit_test(test_roundtrip_pipe_hostile),
		cmocka_unit_test(test_bit_flips),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_hostile_headers),
		cmocka_unit_test(test_error_frames),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_broken_pipe),
		cmocka_unit_test(test_refused_writes),
		cmocka_unit_test(test_frame_helpers),
		cmocka_unit_test(test_npy_input),
		cmocka_unit_test(test_path_outputs),
		cmocka_unit_test(test_alloc_failures),
	};

	return cmocka_run_group_tests_name("stream", tests, NULL, NULL);
}
