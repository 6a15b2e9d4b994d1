/* SPDX-License-Identifier: MIT */
/*
 * nesa-stream-bench: the two ends of a tensor stream pipe, for measuring
 * framing throughput against raw byte moving (bench/stream-throughput.sh).
 *
 *   nesa-stream-bench gen N BYTES   writes N tensor frames of BYTES bytes of
 *                                   f32 payload to standard output
 *   nesa-stream-bench sink          reads frames from standard input,
 *                                   verifying every checksum, and prints one
 *                                   line of counts and timings
 *   nesa-stream-bench crc BYTES     prints the speed of CRC-32C, the checksum
 *                                   every frame byte goes through twice, and
 *                                   of zlib's crc32, over BYTES bytes
 *
 * The payload is built once and sent again for every frame (only its first
 * element changes), so what is measured is framing, checksums and the pipe,
 * not the generation of data.  Not installed; not a nesa tool.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "nesa.h"
#include "checksum.h"
#include "stream.h"

#define EX_USAGE 64

static int
usage(void)
{
	fprintf(stderr, "usage: nesa-stream-bench gen frames bytes\n"
	                "       nesa-stream-bench sink\n"
	                "       nesa-stream-bench crc bytes\n");
	return EX_USAGE;
}

/* Parses a positive count; 0 on error. */
static uint64_t
parse_count(const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
		return 0;
	return v;
}

static int
fail(struct nesa_stream *s, const char *what)
{
	nesa_log(NESA_LOG_ERROR, "%s: %s", what, nesa_stream_error(s));
	nesa_stream_free(s);
	return 74;
}

static int
gen(uint64_t frames, uint64_t bytes)
{
	struct nesa_stream *s;
	struct nesa_frame f;
	struct nesa_err err;
	float *payload; /* (bytes / 4) f32 */
	uint64_t i;

	if (bytes % sizeof(float) != 0 || bytes / sizeof(float) > NESA_FRAME_MAX_DIM) {
		nesa_log(NESA_LOG_ERROR, "bytes must be a multiple of 4, at most 2^33");
		return EX_USAGE;
	}
	payload = nesa_aligned_alloc(bytes);
	if (payload == NULL) {
		nesa_log(NESA_LOG_ERROR, "out of memory (%" PRIu64 " bytes)", bytes);
		return 1;
	}
	for (i = 0; i < bytes / sizeof(float); i++)
		payload[i] = (float)(i % 1000) * 0.001f;
	if (nesa_stream_open_fd(STDOUT_FILENO, NESA_STREAM_WRITE, "standard output", &s, &err) != NESA_OK) {
		nesa_log_err(&err);
		nesa_aligned_free(payload);
		return 1;
	}
	nesa_stream_set_limit(s, bytes > 0 ? bytes : 1);
	nesa_frame_init(&f, NESA_FRAME_TENSOR);
	f.codec = NESA_F32;
	f.ndim = 1;
	f.shape[0] = (int64_t)(bytes / sizeof(float));
	f.payload = payload;
	f.payload_len = bytes;
	for (i = 0; i < frames; i++) {
		if (bytes > 0)
			payload[0] = (float)i;
		f.position = (uint32_t)i;
		if (nesa_stream_write(s, &f) != NESA_OK) {
			nesa_aligned_free(payload);
			return fail(s, "gen");
		}
	}
	nesa_aligned_free(payload);
	/* Statistics go to stderr: stdout carries the stream. */
	fprintf(stderr, "gen: frames %" PRIu64 " codec_seconds %.4f io_seconds %.4f\n",
	        nesa_stream_stats(s)->frames + 1, nesa_stream_stats(s)->codec_seconds,
	        nesa_stream_stats(s)->io_seconds);
	if (nesa_stream_close(s, &err) != NESA_OK) {
		nesa_log_err(&err);
		return 74;
	}
	return 0;
}

/* Speed of a checksum over a buffer, again and again for about half a second. */
static double
rate(const unsigned char *buf, uint64_t bytes, int which, uint32_t *sum)
{
	uint64_t done = 0;
	uint32_t c = 0;
	double t0 = nesa_now(), el;

	do {
		c = which == 0 ? nesa_crc32c(c, buf, bytes) : (uint32_t)crc32_z(c, buf, bytes);
		done += bytes;
		el = nesa_now() - t0;
	} while (el < 0.5);
	*sum = c;
	return (double)done / el / 1e9;
}

/* The stream's CRC-32C against zlib's crc32, which version 1 of the format used. */
static int
crc(uint64_t bytes)
{
	unsigned char *buf = nesa_aligned_alloc(bytes);
	uint32_t a, b;
	uint64_t i;
	double ra, rb;

	if (buf == NULL) {
		nesa_log(NESA_LOG_ERROR, "out of memory (%" PRIu64 " bytes)", bytes);
		return 1;
	}
	for (i = 0; i < bytes; i++)
		buf[i] = (unsigned char)(i * 131);
	ra = rate(buf, bytes, 0, &a);
	rb = rate(buf, bytes, 1, &b);
	printf("crc32c bytes %" PRIu64 " GBps %.2f (%s, crc %08lx)\n", bytes, ra, nesa_crc32c_impl(), (unsigned long)a);
	printf("crc32 bytes %" PRIu64 " GBps %.2f (zlib, crc %08lx)\n", bytes, rb, (unsigned long)b);
	nesa_aligned_free(buf);
	return 0;
}

static int
sink(void)
{
	const struct nesa_stream_stats *st;
	struct nesa_stream *s;
	struct nesa_frame f;
	struct nesa_err err;
	double t0 = nesa_now(), el;

	if (nesa_stream_open_fd(STDIN_FILENO, NESA_STREAM_READ, "standard input", &s, &err) != NESA_OK) {
		nesa_log_err(&err);
		return 1;
	}
	nesa_stream_set_limit(s, SIZE_MAX);
	do {
		if (nesa_stream_read(s, &f) != NESA_OK)
			return fail(s, "sink");
	} while (f.kind != NESA_FRAME_EOS);
	el = nesa_now() - t0;
	st = nesa_stream_stats(s);
	printf("frames %" PRIu64 " payload_bytes %" PRIu64 " stream_bytes %" PRIu64
	       " seconds %.4f codec_seconds %.4f io_seconds %.4f\n",
	       st->frames, st->payload_bytes, nesa_stream_offset(s), el, st->codec_seconds,
	       st->io_seconds);
	nesa_stream_free(s);
	return 0;
}

int
main(int argc, char **argv)
{
	nesa_log_set_progname("nesa-stream-bench");
	if (argc == 4 && strcmp(argv[1], "gen") == 0) {
		uint64_t n = parse_count(argv[2]), bytes = parse_count(argv[3]);

		if (n == 0 || bytes == 0)
			return usage();
		return gen(n, bytes);
	}
	if (argc == 2 && strcmp(argv[1], "sink") == 0)
		return sink();
	if (argc == 3 && strcmp(argv[1], "crc") == 0) {
		uint64_t bytes = parse_count(argv[2]);

		return bytes == 0 ? usage() : crc(bytes);
	}
	return usage();
}
