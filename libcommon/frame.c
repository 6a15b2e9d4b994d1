/* SPDX-License-Identifier: MIT */
/*
 * Frames in memory: initialising them, turning tensors into tensor frames
 * and back, decoding payloads to f32, and parsing error frames; see
 * stream.h.  The layout is specified in nesa-stream(5).
 *
 * These functions never touch a stream: they work on a struct nesa_frame
 * that the caller built or that nesa_stream_read() returned, which is why
 * they live apart from the framing and I/O in stream.c.  A frame from
 * nesa_stream_read() has passed the reader's checks already; the checks
 * here are for frames built by hand, which have not.
 *
 * Not for: reading or writing frames (stream.c), .npy files (npy.c).
 */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "stream-impl.h"

void
nesa_frame_init(struct nesa_frame *f, enum nesa_frame_kind kind)
{
	memset(f, 0, sizeof *f);
	f->kind = kind;
	f->block = NESA_BLOCK_NONE;
}

const char *
nesa_frame_kind_name(int kind)
{
	static const char *const names[] = {
		[NESA_FRAME_TENSOR] = "tensor", [NESA_FRAME_BEGIN] = "begin", [NESA_FRAME_END] = "end",
		[NESA_FRAME_ERROR] = "error",   [NESA_FRAME_EOS] = "end of stream",
	};

	return kind >= NESA_FRAME_TENSOR && kind <= NESA_FRAME_EOS ? names[kind] : "unknown";
}

/* Error payloads; nesa_stream_write_error() in stream.c builds them. */

/*
 * Length of the valid UTF-8 sequence at p (n bytes left) that encodes a
 * printable character, or 0.  C0 and C1 controls and DEL count as invalid so
 * that a hostile peer cannot send terminal escape sequences to our stderr
 * (some terminals take U+009B as CSI).
 */
static size_t
utf8_printable(const unsigned char *p, size_t n)
{
	uint32_t cp;
	size_t len, i;

	if (p[0] < 0x80)
		return p[0] >= 0x20 && p[0] != 0x7f ? 1 : 0;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		len = 2, cp = p[0] & 0x1fu;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		len = 3, cp = p[0] & 0x0fu;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		len = 4, cp = p[0] & 0x07u;
	else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3fu);
	}
	/* Overlong forms, surrogates, beyond U+10FFFF, C1 controls. */
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
		return 0;
	return len;
}

/*
 * Copies n bytes of untrusted text into dst (size bytes, NUL-terminated),
 * each bad byte replaced by '?'; a character that does not fit whole is
 * left out rather than cut.
 */
static void
copy_printable(char *dst, size_t size, const unsigned char *src, size_t n)
{
	size_t i = 0, o = 0;

	if (dst == NULL || size == 0)
		return;
	while (i < n) {
		size_t k = utf8_printable(src + i, n - i);

		if (k == 0) {
			if (o + 1 >= size)
				break;
			dst[o++] = '?';
			i++;
			continue;
		}
		if (o + k >= size)
			break;
		memcpy(dst + o, src + i, k);
		o += k;
		i += k;
	}
	dst[o] = '\0';
}

enum nesa_status
nesa_frame_error_parse(const struct nesa_frame *f, enum nesa_status *st, char *stage,
                       size_t stage_size, char *msg, size_t msg_size, struct nesa_err *err)
{
	const unsigned char *p = f->payload;
	const char *why = "no payload";
	uint32_t code;
	size_t stage_len;

	if (f->kind != NESA_FRAME_ERROR)
		return nesa_err_set(err, NESA_EINVAL, "cannot parse %s frame as an error frame",
		                    nesa_frame_kind_name(f->kind));
	if (p == NULL || !error_payload_ok(p, f->payload_len, &why))
		return nesa_err_set(err, NESA_EFORMAT, "malformed error frame: %s", why);
	/* A newer peer may send codes this build does not know; 0 is not a failure. */
	code = get32(p);
	*st = code > NESA_OK && code < NESA_STATUS_COUNT ? (enum nesa_status)code : NESA_EREMOTE;
	stage_len = get16(p + 4);
	copy_printable(stage, stage_size, p + ERROR_FIXED, stage_len);
	copy_printable(msg, msg_size, p + ERROR_FIXED + stage_len,
	               f->payload_len - ERROR_FIXED - stage_len);
	return NESA_OK;
}

/* Frames and tensors. */

/*
 * No err parameter: the only failures are programmer errors (a view with
 * holes, a tensor without data), and the prototype is shared by callers
 * that build frames in hot loops.
 */
enum nesa_status
nesa_frame_from_tensor(struct nesa_frame *f, const struct nesa_tensor *t)
{
	int i;

	nesa_frame_init(f, NESA_FRAME_TENSOR);
	if (t->ndim < 0 || t->ndim > 4 || !nesa_tensor_is_contiguous(t) ||
	    (t->data == NULL && t->nbytes > 0))
		return NESA_EINVAL;
	for (i = 0; i < t->ndim; i++) {
		if ((uint64_t)t->shape[i] > NESA_FRAME_MAX_DIM)
			return NESA_EINVAL;
		f->shape[i] = t->shape[i];
	}
	f->codec = (uint8_t)t->dtype;
	f->ndim = t->ndim;
	f->payload = t->data;
	f->payload_len = t->nbytes;
	return NESA_OK;
}

/* Checks that f is a consistent tensor frame; *nelems is its element count. */
static enum nesa_status
check_tensor_frame(const struct nesa_frame *f, int64_t *nelems, struct nesa_err *err)
{
	size_t nbytes;
	int i;

	if (f->kind != NESA_FRAME_TENSOR)
		return nesa_err_set(err, NESA_EINVAL, "%s frame is not a tensor", nesa_frame_kind_name(f->kind));
	if (nesa_shape_check(f->codec, f->ndim, f->shape, true, &nbytes, "tensor frame", err) != NESA_OK)
		return err != NULL ? err->status : NESA_ESHAPE;
	if (nbytes != f->payload_len || (f->payload == NULL && nbytes > 0))
		return nesa_err_set(err, NESA_EINVAL, "tensor frame with %zu payload bytes instead of %zu",
		                    f->payload_len, nbytes);
	*nelems = 1;
	for (i = 0; i < f->ndim; i++)
		*nelems *= f->shape[i];
	return NESA_OK;
}

enum nesa_status
nesa_frame_to_tensor(const struct nesa_frame *f, struct nesa_tensor **out, struct nesa_err *err)
{
	int64_t n;
	enum nesa_status st;

	*out = NULL;
	st = check_tensor_frame(f, &n, err);
	if (st != NESA_OK)
		return st;
	*out = nesa_tensor_new(NULL, f->codec, f->ndim, f->shape, err);
	if (*out == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot copy tensor frame: out of memory (%zu bytes)",
		                    f->payload_len);
	if (f->payload_len > 0)
		memcpy((*out)->data, f->payload, f->payload_len);
	return NESA_OK;
}

enum nesa_status
nesa_frame_decode_f32(const struct nesa_frame *f, float *dst, size_t n, struct nesa_err *err)
{
	const struct nesa_dtype_traits *tr;
	int64_t nelems;
	enum nesa_status st;

	st = check_tensor_frame(f, &nelems, err);
	if (st != NESA_OK)
		return st;
	if ((uint64_t)nelems != n)
		return nesa_err_set(err, NESA_EINVAL, "tensor frame holds %lld values, not %zu",
		                    (long long)nelems, n);
	if (n == 0)
		return NESA_OK;
	tr = nesa_dtype_traits(f->codec);
	/* A quantized payload with a NaN scale would poison everything downstream. */
	if (tr->validate != NULL && (st = tr->validate(f->payload, nelems, err)) != NESA_OK)
		return st;
	tr->to_f32(f->payload, dst, nelems);
	return NESA_OK;
}
