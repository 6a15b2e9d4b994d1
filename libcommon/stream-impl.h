/* SPDX-License-Identifier: MIT */
/*
 * Private to the stream module: the pieces of the wire format (nesa-stream(5))
 * that both stream.c, which reads and writes frames, and frame.c, which
 * interprets frames in memory, need.  Nothing outside those two files
 * includes this header.
 *
 * Everything here is static inline: these are small pure functions on
 * bytes, run for every field of every frame, and the split must not make
 * them any slower than the file-local functions they were before it.
 */
#ifndef NESA_STREAM_IMPL_H
#define NESA_STREAM_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stream.h"

/* Error payload: u32 status, u16 stage length, stage, message. */
#define ERROR_FIXED 6
#define ERROR_PAYLOAD_MAX (ERROR_FIXED + NESA_FRAME_STAGE_MAX + NESA_FRAME_MESSAGE_MAX)

/* Little-endian fields, independent of the host's byte order. */

static inline void
put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
}

static inline void
put32(unsigned char *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static inline void
put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t
get16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t
get32(const unsigned char *p)
{
	return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16;
}

static inline uint64_t
get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/*
 * Checks the layout of an error payload; *why says what is wrong.  The
 * reader checks every error frame, so one it returns always parses.
 */
static inline bool
error_payload_ok(const unsigned char *p, size_t len, const char **why)
{
	size_t stage_len;

	*why = NULL;
	if (len < ERROR_FIXED)
		*why = "error payload shorter than 6 bytes";
	else if ((stage_len = get16(p + 4)) > NESA_FRAME_STAGE_MAX || stage_len > len - ERROR_FIXED)
		*why = "bad stage name length in error payload";
	else if (len - ERROR_FIXED - stage_len > NESA_FRAME_MESSAGE_MAX)
		*why = "error message longer than 4096 bytes";
	return *why == NULL;
}

#endif
