/* SPDX-License-Identifier: MIT */
/*
 * Labelled image sets for classification: MNIST's IDX files (plain or
 * gzip-compressed), raw uint8 images with a uint8 label file (as the CIFAR
 * and digits folders ship them), and .npy arrays.  Images come out as f32
 * raw pixel values in NCHW order; any normalisation is the model graph's
 * business, so a dataset means the same thing to every model.
 */
#ifndef NESA_DATA_H
#define NESA_DATA_H

#include <stdint.h>

#include "err.h"

enum nesa_layout { NESA_LAYOUT_NCHW, NESA_LAYOUT_NHWC };

struct nesa_dataset {
	int64_t n;          /* samples */
	int64_t C, H, W;    /* per-sample shape */
	float *images;      /* (n, C, H, W) raw values */
	uint8_t *labels;    /* (n) class ids */
};

/*
 * Loads images and labels.  The per-sample shape comes from the file where
 * it says one (IDX, .npy) and must then equal want_chw; raw files take
 * want_chw (the model's input shape) and their size must be a whole number
 * of samples.  layout says how raw and 4-D .npy pixels are ordered; IDX and
 * 3-D .npy are single-channel.  limit > 0 keeps the first limit samples.
 * Fails with a message naming the file: NESA_ENOENT, NESA_EFORMAT (bad magic,
 * size, count mismatch between images and labels), NESA_ESHAPE.
 */
enum nesa_status nesa_dataset_load(const char *images, const char *labels,
                                   const int64_t want_chw[3], enum nesa_layout layout,
                                   int64_t limit, struct nesa_dataset *ds, struct nesa_err *err);
void nesa_dataset_release(struct nesa_dataset *ds);

#endif
