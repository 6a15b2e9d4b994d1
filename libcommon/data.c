/* SPDX-License-Identifier: MIT */
/*
 * Labelled image sets; see data.h.  IDX is big-endian: magic 0x00000803 for
 * u8 images (count, rows, cols) and 0x00000801 for u8 labels (count).
 * Files are read through zlib's gz interface, which also reads plain files,
 * so MNIST's .gz downloads work as they are.
 */
#include "config.h"

#include <string.h>
#include <zlib.h>

#include "alloc.h"
#include "data.h"
#include "npy.h"
#include "tensor.h"

/* Files larger than this are refused: 4 GiB of pixels is not a test set. */
#define MAX_DATA_BYTES (UINT64_C(1) << 32)

/* Reads a whole (possibly gzip-compressed) file. */
static enum nesa_status
slurp(const char *path, uint8_t **buf, size_t *len, struct nesa_err *err)
{
	gzFile f = gzopen(path, "rb");
	size_t cap = 1 << 20, n = 0;
	uint8_t *b;

	*buf = NULL;
	if (f == NULL)
		return nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
	b = nesa_malloc(cap);
	if (b == NULL) {
		gzclose(f);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory reading '%s'", path);
	}
	for (;;) {
		int got;

		if (n == cap) {
			uint8_t *nb;

			if (cap >= MAX_DATA_BYTES) {
				nesa_free(b);
				gzclose(f);
				return nesa_err_set(err, NESA_ELIMIT, "cannot read '%s': larger than 4 GiB", path);
			}
			nb = nesa_realloc(b, cap * 2);
			if (nb == NULL) {
				nesa_free(b);
				gzclose(f);
				return nesa_err_set(err, NESA_ENOMEM, "out of memory reading '%s'", path);
			}
			b = nb;
			cap *= 2;
		}
		got = gzread(f, b + n, (unsigned)(cap - n > (1u << 30) ? (1u << 30) : cap - n));
		if (got < 0) {
			int e;
			const char *msg = gzerror(f, &e);

			nesa_free(b);
			gzclose(f);
			return nesa_err_set(err, NESA_EIO, "cannot read '%s': %s", path, msg);
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	gzclose(f);
	*buf = b;
	*len = n;
	return NESA_OK;
}

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool
is_npy(const uint8_t *b, size_t n)
{
	return nesa_npy_sniff(b, n);
}

/* Decodes an image file into ds->images; sets n, C, H, W. */
static enum nesa_status
load_images(const char *path, const int64_t want[3], enum nesa_layout layout,
            struct nesa_dataset *ds, struct nesa_err *err)
{
	uint8_t *b = NULL;
	size_t len, per, i;
	int64_t n, c, y, x, C = want[0], H = want[1], W = want[2];
	struct nesa_tensor *t = NULL;
	const uint8_t *pix = NULL;
	float *src = NULL;
	enum nesa_status s;

	s = slurp(path, &b, &len, err);
	if (s != NESA_OK)
		return s;
	if (len >= 16 && be32(b) == 0x803) {
		n = be32(b + 4);
		if (be32(b + 8) != (uint32_t)H || be32(b + 12) != (uint32_t)W || C != 1) {
			s = nesa_err_set(err, NESA_ESHAPE, "'%s' holds %ux%u images; the model takes %lldx%lldx%lld",
			                 path, be32(b + 8), be32(b + 12), (long long)C, (long long)H, (long long)W);
			goto out;
		}
		if ((uint64_t)len - 16 != (uint64_t)n * (uint64_t)(H * W)) {
			s = nesa_err_set(err, NESA_EFORMAT, "'%s': %lld images of %lldx%lld need %llu bytes, the file has %zu",
			                 path, (long long)n, (long long)H, (long long)W,
			                 (unsigned long long)n * (unsigned long long)(H * W), len - 16);
			goto out;
		}
		pix = b + 16;
		layout = NESA_LAYOUT_NCHW;
	} else if (is_npy(b, len)) {
		int64_t per_s;

		s = nesa_npy_read_mem(b, len, path, &t, err);
		if (s != NESA_OK)
			goto out;
		per_s = t->ndim > 0 ? nesa_tensor_nelems(t) / (t->shape[0] > 0 ? t->shape[0] : 1) : 0;
		if (t->ndim < 2 || per_s != C * H * W || t->shape[0] < 1) {
			char buf[64];

			s = nesa_err_set(err, NESA_ESHAPE, "'%s' has shape %s; expected [N, %lld, %lld, %lld] samples",
			                 path, nesa_shape_str(t->ndim, t->shape, buf, sizeof buf), (long long)C,
			                 (long long)H, (long long)W);
			goto out;
		}
		n = t->shape[0];
		if (t->ndim == 3)
			layout = NESA_LAYOUT_NCHW;
		src = nesa_malloc((size_t)nesa_tensor_nelems(t) * sizeof *src);
		if (src == NULL) {
			s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
			goto out;
		}
		nesa_tensor_to_f32(t, src);
	} else {
		per = (size_t)(C * H * W);
		if (len == 0 || len % per != 0) {
			s = nesa_err_set(err, NESA_EFORMAT,
			                 "'%s' is not IDX or .npy, and its %zu bytes are not a whole number of %lldx%lldx%lld uint8 images",
			                 path, len, (long long)C, (long long)H, (long long)W);
			goto out;
		}
		n = (int64_t)(len / per);
		pix = b;
	}
	ds->n = n;
	ds->C = C;
	ds->H = H;
	ds->W = W;
	ds->images = nesa_malloc((size_t)(n * C * H * W) * sizeof(float));
	if (ds->images == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory for %lld images", (long long)n);
		goto out;
	}
	for (i = 0; i < (size_t)n; i++)
		for (c = 0; c < C; c++)
			for (y = 0; y < H; y++)
				for (x = 0; x < W; x++) {
					size_t from = layout == NESA_LAYOUT_NHWC
					                  ? (((size_t)i * H + y) * W + x) * C + c
					                  : (((size_t)i * C + c) * H + y) * W + x;
					float v = pix != NULL ? (float)pix[from] : src[from];

					ds->images[(((size_t)i * C + c) * H + y) * W + x] = v;
				}
out:
	nesa_tensor_free(t);
	nesa_free(src);
	nesa_free(b);
	return s;
}

static enum nesa_status
load_labels(const char *path, struct nesa_dataset *ds, struct nesa_err *err)
{
	uint8_t *b = NULL;
	const uint8_t *lab;
	struct nesa_tensor *t = NULL;
	size_t len;
	int64_t n, i;
	enum nesa_status s;

	s = slurp(path, &b, &len, err);
	if (s != NESA_OK)
		return s;
	if (len >= 8 && be32(b) == 0x801) {
		n = be32(b + 4);
		lab = b + 8;
		if ((uint64_t)len - 8 != (uint64_t)n) {
			s = nesa_err_set(err, NESA_EFORMAT, "'%s' announces %lld labels but holds %zu", path,
			                 (long long)n, len - 8);
			goto out;
		}
	} else if (is_npy(b, len)) {
		s = nesa_npy_read_mem(b, len, path, &t, err);
		if (s != NESA_OK)
			goto out;
		if (t->ndim != 1 || (t->dtype != NESA_U8 && t->dtype != NESA_I32 && t->dtype != NESA_I8)) {
			s = nesa_err_set(err, NESA_EFORMAT, "'%s' must be a 1-D array of integer labels", path);
			goto out;
		}
		n = t->shape[0];
		lab = NULL;
	} else {
		n = (int64_t)len;
		lab = b;
	}
	if (n != ds->n) {
		s = nesa_err_set(err, NESA_EFORMAT, "'%s' holds %lld labels for %lld images", path,
		                 (long long)n, (long long)ds->n);
		goto out;
	}
	ds->labels = nesa_malloc((size_t)(n > 0 ? n : 1));
	if (ds->labels == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		int64_t v = lab != NULL ? lab[i]
		            : t->dtype == NESA_I32 ? ((const int32_t *)t->data)[i]
		            : t->dtype == NESA_I8 ? ((const int8_t *)t->data)[i]
		                                  : ((const uint8_t *)t->data)[i];

		if (v < 0 || v > 255) {
			s = nesa_err_set(err, NESA_EFORMAT, "'%s': label %lld of sample %lld is out of range",
			                 path, (long long)v, (long long)i);
			goto out;
		}
		ds->labels[i] = (uint8_t)v;
	}
out:
	nesa_tensor_free(t);
	nesa_free(b);
	return s;
}

enum nesa_status
nesa_dataset_load(const char *images, const char *labels, const int64_t want_chw[3],
                  enum nesa_layout layout, int64_t limit, struct nesa_dataset *ds,
                  struct nesa_err *err)
{
	enum nesa_status s;

	memset(ds, 0, sizeof *ds);
	s = load_images(images, want_chw, layout, ds, err);
	if (s == NESA_OK)
		s = load_labels(labels, ds, err);
	if (s != NESA_OK) {
		nesa_dataset_release(ds);
		return s;
	}
	if (limit > 0 && limit < ds->n)
		ds->n = limit;
	return NESA_OK;
}

void
nesa_dataset_release(struct nesa_dataset *ds)
{
	if (ds == NULL)
		return;
	nesa_free(ds->images);
	nesa_free(ds->labels);
	memset(ds, 0, sizeof *ds);
}
