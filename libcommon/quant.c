/* SPDX-License-Identifier: MIT */
/*
 * Quantized block types q8_0 and q4_0: reference kernels and their rows of
 * the dtype traits table; see quant.h for the layouts and error bounds.
 *
 * The arithmetic deliberately follows ggml's reference quantizers step by
 * step (multiply by the inverse scale computed from the unrounded f32 scale,
 * round half away from zero for q8_0, add 8.5 and truncate for q4_0), so
 * that quantizing an f32 model here reproduces llama.cpp's bytes.  Unlike a
 * plain cast, the float-to-code conversions below are defined for every
 * input (NaN, infinities, tiny scales whose inverse overflows).
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "quant.h"

/*
 * Block pointers need only 2-byte alignment (the struct's); the model
 * readers copy a mapped tensor that does not have it.
 */
static inline float
block_scale(uint16_t d)
{
	return nesa_f16_to_f32(d);
}

/* Quant code for t = x / d, nominally in [-127, 127]; defined for all t. */
static inline int8_t
q8_code(float t)
{
	float r;

	if (isnan(t))
		return 0;
	r = roundf(t);
	if (r > 127.0f)
		return 127;
	if (r < -127.0f)
		return -127;
	return (int8_t)r;
}

/* Quant code for t = x / d, nominally in [-8, 8]; defined for all t. */
static inline uint8_t
q4_code(float t)
{
	float v = t + 8.5f;

	if (isnan(v))
		return 8;
	if (v <= 0.0f)
		return 0;
	if (v >= 15.0f)
		return 15;
	return (uint8_t)v; /* truncation toward zero, as ggml's (int8_t) cast */
}

/* ggml quantize_row_q8_0_ref: symmetric, scale from the block's max |x|. */
void
nesa_quantize_q8_0_ref(const float *x, void *y, int64_t n)
{
	struct nesa_block_q8_0 *b = y;
	int64_t i, nb = n / NESA_QK8_0;
	int j;

	assert(n % NESA_QK8_0 == 0);
	for (i = 0; i < nb; i++, x += NESA_QK8_0) {
		float amax = 0.0f, d, id;

		for (j = 0; j < NESA_QK8_0; j++) {
			float a = fabsf(x[j]);

			if (a > amax) /* NaN compares false and is ignored */
				amax = a;
		}
		d = amax / 127.0f;
		/* Zero-scale guard: an all-zero block gets inverse scale 0, not inf. */
		id = d != 0.0f ? 1.0f / d : 0.0f;
		b[i].d = nesa_f32_to_f16(d);
		for (j = 0; j < NESA_QK8_0; j++)
			b[i].qs[j] = q8_code(x[j] * id);
	}
}

void
nesa_dequantize_q8_0_ref(const void *x, float *y, int64_t n)
{
	const struct nesa_block_q8_0 *b = x;
	int64_t i, nb = n / NESA_QK8_0;
	int j;

	assert(n % NESA_QK8_0 == 0);
	for (i = 0; i < nb; i++, y += NESA_QK8_0) {
		float d = block_scale(b[i].d);

		for (j = 0; j < NESA_QK8_0; j++)
			y[j] = (float)b[i].qs[j] * d;
	}
}

/*
 * ggml quantize_row_q4_0_ref.  Codes are trunc(x / d + 8.5), i.e. round
 * half up of x / d then + 8; the top code 15 saturates because the range
 * [-8, 8] has 17 integer points and a nibble holds 16.
 */
void
nesa_quantize_q4_0_ref(const float *x, void *y, int64_t n)
{
	struct nesa_block_q4_0 *b = y;
	int64_t i, nb = n / NESA_QK4_0;
	int j;

	assert(n % NESA_QK4_0 == 0);
	for (i = 0; i < nb; i++, x += NESA_QK4_0) {
		float amax = 0.0f, m = 0.0f, d, id;

		/* The signed extreme: it maps to code 0 exactly, so the largest
		 * element is represented without error. */
		for (j = 0; j < NESA_QK4_0; j++)
			if (fabsf(x[j]) > amax) {
				amax = fabsf(x[j]);
				m = x[j];
			}
		d = m / -8.0f;
		id = d != 0.0f ? 1.0f / d : 0.0f;
		b[i].d = nesa_f32_to_f16(d);
		for (j = 0; j < NESA_QK4_0 / 2; j++) {
			uint8_t lo = q4_code(x[j] * id);
			uint8_t hi = q4_code(x[j + NESA_QK4_0 / 2] * id);

			b[i].qs[j] = (uint8_t)(lo | hi << 4);
		}
	}
}

void
nesa_dequantize_q4_0_ref(const void *x, float *y, int64_t n)
{
	const struct nesa_block_q4_0 *b = x;
	int64_t i, nb = n / NESA_QK4_0;
	int j;

	assert(n % NESA_QK4_0 == 0);
	for (i = 0; i < nb; i++, y += NESA_QK4_0) {
		float d = block_scale(b[i].d);

		for (j = 0; j < NESA_QK4_0 / 2; j++) {
			y[j] = (float)((int)(b[i].qs[j] & 0x0f) - 8) * d;
			y[j + NESA_QK4_0 / 2] = (float)((int)(b[i].qs[j] >> 4) - 8) * d;
		}
	}
}

/*
 * Both block types start with the f16 scale and differ only in size, so one
 * scan serves both.  The exponent field all ones means infinity or NaN.
 */
static enum nesa_status
validate_scales(const char *type, const void *x, int64_t n, int qk, size_t block_bytes,
                struct nesa_err *err)
{
	const unsigned char *p = x;
	int64_t i, nb = n / qk;

	assert(n % qk == 0);
	for (i = 0; i < nb; i++, p += block_bytes) {
		uint16_t d;

		memcpy(&d, p, sizeof d);
		if ((d & 0x7c00) == 0x7c00)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "%s block %lld has a non-finite scale (f16 0x%04x)", type,
			                    (long long)i, (unsigned)d);
	}
	return NESA_OK;
}

enum nesa_status
nesa_validate_q8_0(const void *x, int64_t n, struct nesa_err *err)
{
	return validate_scales("q8_0", x, n, NESA_QK8_0, sizeof(struct nesa_block_q8_0), err);
}

enum nesa_status
nesa_validate_q4_0(const void *x, int64_t n, struct nesa_err *err)
{
	return validate_scales("q4_0", x, n, NESA_QK4_0, sizeof(struct nesa_block_q4_0), err);
}

/*
 * The scale is applied once per block (integer-valued quants times x summed
 * first), as optimized kernels do, so they can be compared against this.
 */
float
nesa_vec_dot_q8_0_f32_ref(int64_t n, const void *q, const float *x)
{
	const struct nesa_block_q8_0 *b = q;
	int64_t i, nb = n / NESA_QK8_0;
	double sum = 0.0;
	int j;

	assert(n % NESA_QK8_0 == 0);
	for (i = 0; i < nb; i++, x += NESA_QK8_0) {
		float s = 0.0f;

		for (j = 0; j < NESA_QK8_0; j++)
			s += (float)b[i].qs[j] * x[j];
		sum += (double)(s * block_scale(b[i].d));
	}
	return (float)sum;
}

float
nesa_vec_dot_q4_0_f32_ref(int64_t n, const void *q, const float *x)
{
	const struct nesa_block_q4_0 *b = q;
	int64_t i, nb = n / NESA_QK4_0;
	double sum = 0.0;
	int j;

	assert(n % NESA_QK4_0 == 0);
	for (i = 0; i < nb; i++, x += NESA_QK4_0) {
		float s = 0.0f;

		for (j = 0; j < NESA_QK4_0 / 2; j++) {
			s += (float)((int)(b[i].qs[j] & 0x0f) - 8) * x[j];
			s += (float)((int)(b[i].qs[j] >> 4) - 8) * x[j + NESA_QK4_0 / 2];
		}
		sum += (double)(s * block_scale(b[i].d));
	}
	return (float)sum;
}

/* Rows of the traits table for ids >= 16, indexed by id - 16. */
static const struct nesa_dtype_traits quant_traits[] = {
	[NESA_Q8_0 - 16] = {"q8_0", NESA_QK8_0, sizeof(struct nesa_block_q8_0), NESA_DTYPE_QUANT,
	                    nesa_dequantize_q8_0_ref, nesa_quantize_q8_0_ref, nesa_validate_q8_0},
	[NESA_Q4_0 - 16] = {"q4_0", NESA_QK4_0, sizeof(struct nesa_block_q4_0), NESA_DTYPE_QUANT,
	                    nesa_dequantize_q4_0_ref, nesa_quantize_q4_0_ref, nesa_validate_q4_0},
};

const struct nesa_dtype_traits *
nesa_quant_traits(int dtype)
{
	size_t i;

	if (dtype < 16)
		return NULL;
	i = (size_t)(dtype - 16);
	if (i >= sizeof quant_traits / sizeof quant_traits[0] || quant_traits[i].name == NULL)
		return NULL;
	return &quant_traits[i];
}
