/* SPDX-License-Identifier: MIT */
/*
 * Tensor streams: the framed activations that pipeline stages exchange on
 * standard input and output, over pipes, ssh and TCP.  Many independent
 * sessions (generations, each with its own KV cache downstream) are
 * multiplexed on one stream.  The wire format is specified byte for byte in
 * nesa-stream(5); in short, a frame is a 64-byte little-endian header with
 * its own CRC-32C, a payload, and a 4-byte CRC-32C trailer over both.
 *
 * A struct nesa_stream reads or writes frames through a backend (a file
 * descriptor, a stdio FILE, or memory).  It keeps its last error in the
 * handle (nesa_stream_error) and is sticky: after a failure every further
 * read or write returns the same status, except a read timeout at a frame
 * boundary, which may be retried.  Readers check every size against limits
 * before allocating, and accept a NumPy .npy file in place of a stream.
 *
 * This module frames and checks; it does not interpret sessions, positions
 * or blocks.  A stream is used by one thread at a time.
 */
#ifndef NESA_STREAM_H
#define NESA_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"
#include "tensor.h"

#define NESA_STREAM_MAGIC "NSTF"
#define NESA_STREAM_VERSION 2
#define NESA_FRAME_HEADER_SIZE 64
#define NESA_FRAME_TRAILER_SIZE 4

/* Default largest payload a stream accepts (nesa_stream_set_limit). */
#define NESA_STREAM_DEFAULT_LIMIT ((size_t)1 << 30)
/* Largest single dimension of a tensor frame. */
#define NESA_FRAME_MAX_DIM (UINT32_C(1) << 31)
/* Bounds of the error frame payload strings, in bytes. */
#define NESA_FRAME_STAGE_MAX 255
#define NESA_FRAME_MESSAGE_MAX 4096

enum nesa_frame_kind {
	NESA_FRAME_TENSOR = 1, /* a tensor: shape, codec and encoded elements */
	NESA_FRAME_BEGIN,      /* a session starts (downstream allocates its state) */
	NESA_FRAME_END,        /* a session ends (downstream frees its state) */
	NESA_FRAME_ERROR,      /* a stage failed; the payload says who and why */
	NESA_FRAME_EOS,        /* end of stream */
};

/* The frame does not address a model block. */
#define NESA_BLOCK_NONE UINT32_MAX

/* flags: the last frame of a group (e.g. the last slot of one step). */
#define NESA_FRAME_FLAG_LAST 0x01u
/*
 * Only the output of the frame's last row is wanted (text generation): the
 * stage holding the model's output head computes that row only.  Stages
 * before it pass the flag on.
 */
#define NESA_FRAME_FLAG_LASTROW 0x02u
#define NESA_FRAME_FLAGS (NESA_FRAME_FLAG_LAST | NESA_FRAME_FLAG_LASTROW)

/* Begin frames may carry a UTF-8 JSON object of at most this many bytes. */
#define NESA_FRAME_BEGIN_MAX 65536

struct nesa_frame {
	enum nesa_frame_kind kind;
	uint8_t codec;     /* tensor frames: dtype id of the payload encoding */
	uint8_t flags;     /* NESA_FRAME_FLAG_*; other bits must be 0 */
	uint16_t slot;     /* which of several tensors crossing a cut */
	uint64_t session;  /* session id */
	uint32_t position; /* first token (or sample) of the frame within its session */
	uint32_t block;    /* first model block to consume the frame, or NESA_BLOCK_NONE */
	/*
	 * The first 8 bytes of the sha256 of the model's source read as a
	 * little-endian integer, so the wire carries the digest bytes in order;
	 * 0 = unspecified.
	 */
	uint64_t model_id;
	int ndim;          /* tensor frames: 0..4 */
	int64_t shape[4];  /* tensor frames: outermost first, each <= NESA_FRAME_MAX_DIM */
	/*
	 * Encoded elements (tensor frames, row-major) or the error payload.
	 * Reader: NESA_ALIGN-aligned, owned by the stream, valid until the next
	 * read on that stream; NULL when payload_len is 0.  Writer: borrowed for
	 * the duration of the call.
	 */
	const void *payload;
	size_t payload_len; /* bytes */
};

/* Per-stream counters, for -v diagnostics. */
struct nesa_stream_stats {
	uint64_t frames;        /* frames read or written, end of stream included */
	uint64_t payload_bytes; /* payload bytes */
	uint64_t header_bytes;  /* header and trailer bytes */
	double codec_seconds;   /* encoding and decoding headers, checksums of headers and payloads */
	double io_seconds;      /* inside the backend: reading, writing, waiting for the peer */
};

/* Open modes. */
enum {
	NESA_STREAM_READ = 1,
	NESA_STREAM_WRITE = 2,
};

struct nesa_stream; /* opaque */

/* Zeroes f and sets kind and block = NESA_BLOCK_NONE. */
void nesa_frame_init(struct nesa_frame *f, enum nesa_frame_kind kind);

/*
 * Opens a stream over fd, which stays the caller's (closing the stream does
 * not close it).  name labels the stream in messages ("standard input").
 * Writes are unbuffered: when nesa_stream_write returns, the frame is in the
 * kernel.  Reads may read ahead up to 64 KiB past the frame returned.
 * Non-blocking descriptors are waited on with poll.  A pipe's buffer is
 * grown to 1 MiB where the system allows, so that the two ends of a pipe do
 * not move in 64 KiB lockstep.  *out is freed with
 * nesa_stream_close or nesa_stream_free.  NESA_EINVAL for a bad mode,
 * NESA_ENOMEM; err may be NULL.
 */
enum nesa_status nesa_stream_open_fd(int fd, int mode, const char *name,
                                     struct nesa_stream **out, struct nesa_err *err);

/*
 * As nesa_stream_open_fd over a stdio stream, which stays the caller's.
 * Timeouts do not apply.  Writes go through stdio's buffer; call
 * nesa_stream_flush where a peer waits for them.
 */
enum nesa_status nesa_stream_open_file(FILE *fp, int mode, const char *name,
                                       struct nesa_stream **out, struct nesa_err *err);

/*
 * Opens a stream by path; "-" is standard input (read) or standard output
 * (write).  Reading: the file is opened here (NESA_ENOENT naming it) and
 * closed with the stream.  Writing: through nesa_out_open with out_flags
 * (NESA_OUT_*; NESA_OUT_BINARY is implied), so the destination only appears,
 * complete, when nesa_stream_close succeeds; a path ending in ".npy" is
 * written as a NumPy file holding the one tensor frame written (a second
 * tensor or an error frame fails, begin/end/eos frames are ignored).
 */
enum nesa_status nesa_stream_open_path(const char *path, int mode, unsigned out_flags,
                                       struct nesa_stream **out, struct nesa_err *err);

/*
 * A reader over len bytes at buf, which must outlive the stream (nothing
 * is copied until frames are read).
 */
enum nesa_status nesa_stream_open_mem(const void *buf, size_t len, const char *name,
                                      struct nesa_stream **out, struct nesa_err *err);

/* A writer into a growing memory buffer; see nesa_stream_mem_data. */
enum nesa_status nesa_stream_open_mem_writer(const char *name, struct nesa_stream **out,
                                             struct nesa_err *err);

/*
 * The bytes a memory writer has produced so far (*len bytes), owned by the
 * stream and valid until the next write, close or free.  NULL with *len = 0
 * for other streams.
 */
const void *nesa_stream_mem_data(const struct nesa_stream *s, size_t *len);

/*
 * Largest payload accepted, in bytes, checked on read before allocating and
 * on write; 0 restores NESA_STREAM_DEFAULT_LIMIT.
 */
void nesa_stream_set_limit(struct nesa_stream *s, size_t max_payload);

/*
 * Reads on a file descriptor stream wait at most ms milliseconds for data
 * to arrive each time they wait (an idle timeout, so a long frame arriving
 * steadily never times out); < 0 waits forever (the default).  A timeout is
 * NESA_ETIMEOUT; before any byte of a frame has arrived it is not sticky
 * and the read may be repeated.
 */
void nesa_stream_set_timeout(struct nesa_stream *s, int ms);

/*
 * Reads the next frame into *f.  The payload is owned by the stream (see
 * struct nesa_frame).  At the end of the stream, an end of stream frame or
 * end of input exactly at a frame boundary, f->kind is NESA_FRAME_EOS and
 * NESA_OK is returned, again on every later call.  A .npy input yields one
 * tensor frame (session 0, position 0, block NESA_BLOCK_NONE) then the end.
 *
 * Errors (message in nesa_stream_error, naming the stream and the byte
 * offset of the frame): NESA_EFORMAT bad magic, malformed or truncated
 * frame; NESA_ECHECKSUM corrupt header or payload; NESA_EVERSION unknown
 * version; NESA_EUNSUPPORTED unknown codec; NESA_ESHAPE absurd shape;
 * NESA_ELIMIT payload above the limit; NESA_EIO read failure; NESA_ETIMEOUT;
 * NESA_ENOMEM; NESA_EINVAL on a write stream.
 */
enum nesa_status nesa_stream_read(struct nesa_stream *s, struct nesa_frame *f);

/*
 * Writes one frame.  Tensor frames need a known codec, 0..4 dims each at
 * most NESA_FRAME_MAX_DIM, a valid shape for the codec and payload_len equal
 * to the encoded size; codec, ndim and shape are ignored for other kinds.
 * Begin, end and end of stream frames carry no payload; error frames carry
 * a payload laid out as nesa_stream_write_error makes it.  After an end of
 * stream frame nothing more may be written.  NESA_EINVAL (bad frame or
 * misuse), NESA_EUNSUPPORTED (unknown codec), NESA_ESHAPE, NESA_ELIMIT, NESA_EIO
 * (write failure, e.g. "cannot write to 'standard output': Broken pipe"),
 * NESA_ENOMEM (memory writer).  A refused frame writes nothing and leaves
 * the stream usable; a failure to write is sticky.
 */
enum nesa_status nesa_stream_write(struct nesa_stream *s, const struct nesa_frame *f);

/* Pushes buffered output (stdio and .npy outputs) to the kernel. */
enum nesa_status nesa_stream_flush(struct nesa_stream *s);

/*
 * Finishes and frees s; NULL is accepted.  A writer writes the end of
 * stream frame if none was written, flushes and commits a path output
 * (temporary file renamed into place); on any failure, earlier sticky ones
 * included, the output is removed and the status returned with the message
 * in err (may be NULL).  Closing a reader always succeeds: its failures
 * were reported by nesa_stream_read.  The fd or FILE of a caller stays open.
 */
enum nesa_status nesa_stream_close(struct nesa_stream *s, struct nesa_err *err);

/* Abandons s: no end of stream frame, a path output is removed.  NULL-safe. */
void nesa_stream_free(struct nesa_stream *s);

/* The message of the last failure, "" if none.  Valid while s is. */
const char *nesa_stream_error(const struct nesa_stream *s);

/* The last failure as a struct nesa_err (status NESA_OK if none). */
const struct nesa_err *nesa_stream_err(const struct nesa_stream *s);

/* Bytes consumed by the frames read, or produced by the frames written. */
uint64_t nesa_stream_offset(const struct nesa_stream *s);

/* The counters of s. */
const struct nesa_stream_stats *nesa_stream_stats(const struct nesa_stream *s);

/* The name of s given at open. */
const char *nesa_stream_name(const struct nesa_stream *s);

/*
 * Fills a tensor frame describing a contiguous tensor with data: kind
 * tensor, codec = t->dtype, the payload borrowed from t->data, session 0,
 * position 0, block NESA_BLOCK_NONE, everything else 0.  NESA_EINVAL when t
 * is not contiguous, has no data or a dimension above NESA_FRAME_MAX_DIM.
 */
enum nesa_status nesa_frame_from_tensor(struct nesa_frame *f, const struct nesa_tensor *t);

/*
 * Copies a tensor frame into a new tensor without a name (*out, freed with
 * nesa_tensor_free).  NESA_EINVAL for another kind or an inconsistent frame,
 * NESA_ENOMEM.
 */
enum nesa_status nesa_frame_to_tensor(const struct nesa_frame *f, struct nesa_tensor **out,
                                      struct nesa_err *err);

/*
 * Decodes the payload of a tensor frame to n f32 values in dst; n must be
 * the element count.  The payload must be aligned for its codec (frames
 * read from a stream are).  Codecs whose traits validate data (quantized
 * scales) are validated first: NESA_EFORMAT.  NESA_EINVAL for a bad n or
 * frame.
 */
enum nesa_status nesa_frame_decode_f32(const struct nesa_frame *f, float *dst, size_t n,
                                       struct nesa_err *err);

/*
 * Writes an error frame for session: status st (not NESA_OK), the name of
 * the failing stage and a message, truncated at NESA_FRAME_STAGE_MAX and
 * NESA_FRAME_MESSAGE_MAX bytes on a UTF-8 character boundary.  stage and msg
 * may be NULL (empty).  Fails as nesa_stream_write.
 */
enum nesa_status nesa_stream_write_error(struct nesa_stream *s, uint64_t session,
                                         enum nesa_status st, const char *stage,
                                         const char *msg);

/*
 * Parses an error frame: *st the status (a number this build does not know
 * becomes NESA_EREMOTE), stage and msg NUL-terminated copies truncated to
 * their buffer sizes (either may be NULL with size 0).  Control characters
 * and invalid UTF-8 become '?', so the text is safe to print.  NESA_EINVAL
 * for another kind, NESA_EFORMAT for a malformed payload.
 */
enum nesa_status nesa_frame_error_parse(const struct nesa_frame *f, enum nesa_status *st,
                                        char *stage, size_t stage_size, char *msg,
                                        size_t msg_size, struct nesa_err *err);

/* Name of a frame kind ("tensor", "begin", ...), "unknown" otherwise. */
const char *nesa_frame_kind_name(int kind);

#endif
