/* SPDX-License-Identifier: MIT */
/*
 * The dtype traits table and scalar conversions; see dtype.h.  The
 * conversions here are the reference definitions: IEEE 754 binary16 and
 * bfloat16 with round-to-nearest-even, NaN kept NaN (quietened), overflow to
 * infinity.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dtype.h"
#include "quant.h"

static inline uint32_t
f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof u);
	return u;
}

static inline float
bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof f);
	return f;
}

float
nesa_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;

	if (exp == 0x1f) /* inf or NaN */
		return bits_f32(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		/* Zero or subnormal: man * 2^-24, exact in f32. */
		float v = (float)man * 0x1p-24f;

		return sign ? -v : v;
	}
	return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t
nesa_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	uint32_t au = u & 0x7fffffffu;

	if (au >= 0x7f800000u) /* inf stays inf, NaN stays a quiet NaN */
		return (uint16_t)(sign | 0x7c00 | (au > 0x7f800000u ? 0x200 | ((au >> 13) & 0x3ff) : 0));
	if (au >= 0x477ff000u) /* rounds to >= 65520: overflow */
		return (uint16_t)(sign | 0x7c00);
	if (au < 0x38800000u) {
		/*
		 * Subnormal half (or zero): adding 0.5 aligns the mantissa so the FPU
		 * rounds to nearest even at the 2^-24 quantum.
		 */
		float v = bits_f32(au) + 0.5f;

		return (uint16_t)(sign | (uint16_t)(f32_bits(v) - f32_bits(0.5f)));
	}
	{
		uint32_t mant_odd = (au >> 13) & 1;

		au += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round */
		return (uint16_t)(sign | (uint16_t)(au >> 13));
	}
}

float
nesa_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t
nesa_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

/* Plain-type conversions. */

static void
f32_to_f32(const void *src, float *dst, int64_t n)
{
	memmove(dst, src, (size_t)n * sizeof(float));
}

static void
f32_from_f32(const float *src, void *dst, int64_t n)
{
	memmove(dst, src, (size_t)n * sizeof(float));
}

static void
f16_to_f32(const void *src, float *dst, int64_t n)
{
	const uint16_t *s = src;
	int64_t i;

	for (i = 0; i < n; i++)
		dst[i] = nesa_f16_to_f32(s[i]);
}

static void
f16_from_f32(const float *src, void *dst, int64_t n)
{
	uint16_t *d = dst;
	int64_t i;

	for (i = 0; i < n; i++)
		d[i] = nesa_f32_to_f16(src[i]);
}

static void
bf16_to_f32(const void *src, float *dst, int64_t n)
{
	const uint16_t *s = src;
	int64_t i;

	for (i = 0; i < n; i++)
		dst[i] = nesa_bf16_to_f32(s[i]);
}

static void
bf16_from_f32(const float *src, void *dst, int64_t n)
{
	uint16_t *d = dst;
	int64_t i;

	for (i = 0; i < n; i++)
		d[i] = nesa_f32_to_bf16(src[i]);
}

/* Integers: round to nearest even, saturate, NaN becomes 0. */
static double
sat(float v, double lo, double hi)
{
	double r;

	if (isnan(v))
		return 0;
	r = nearbyint((double)v);
	return r < lo ? lo : r > hi ? hi : r;
}

static void
i32_to_f32(const void *src, float *dst, int64_t n)
{
	const int32_t *s = src;
	int64_t i;

	for (i = 0; i < n; i++)
		dst[i] = (float)s[i];
}

static void
i32_from_f32(const float *src, void *dst, int64_t n)
{
	int32_t *d = dst;
	int64_t i;

	for (i = 0; i < n; i++)
		d[i] = (int32_t)sat(src[i], INT32_MIN, INT32_MAX);
}

static void
i8_to_f32(const void *src, float *dst, int64_t n)
{
	const int8_t *s = src;
	int64_t i;

	for (i = 0; i < n; i++)
		dst[i] = (float)s[i];
}

static void
i8_from_f32(const float *src, void *dst, int64_t n)
{
	int8_t *d = dst;
	int64_t i;

	for (i = 0; i < n; i++)
		d[i] = (int8_t)sat(src[i], INT8_MIN, INT8_MAX);
}

static void
u8_to_f32(const void *src, float *dst, int64_t n)
{
	const uint8_t *s = src;
	int64_t i;

	for (i = 0; i < n; i++)
		dst[i] = (float)s[i];
}

static void
u8_from_f32(const float *src, void *dst, int64_t n)
{
	uint8_t *d = dst;
	int64_t i;

	for (i = 0; i < n; i++)
		d[i] = (uint8_t)sat(src[i], 0, UINT8_MAX);
}

static const struct nesa_dtype_traits plain_traits[] = {
	[NESA_F32] = {"f32", 1, 4, NESA_DTYPE_FLOAT, f32_to_f32, f32_from_f32, NULL, NULL},
	[NESA_F16] = {"f16", 1, 2, NESA_DTYPE_FLOAT, f16_to_f32, f16_from_f32, NULL, nesa_matmul_f16},
	[NESA_BF16] = {"bf16", 1, 2, NESA_DTYPE_FLOAT, bf16_to_f32, bf16_from_f32, NULL, nesa_matmul_bf16},
	[NESA_I32] = {"i32", 1, 4, NESA_DTYPE_INT, i32_to_f32, i32_from_f32, NULL, NULL},
	[NESA_I8] = {"i8", 1, 1, NESA_DTYPE_INT, i8_to_f32, i8_from_f32, NULL, NULL},
	[NESA_U8] = {"u8", 1, 1, NESA_DTYPE_INT, u8_to_f32, u8_from_f32, NULL, NULL},
};

const struct nesa_dtype_traits *
nesa_dtype_traits(int dtype)
{
	if (dtype >= 0 && (size_t)dtype < sizeof plain_traits / sizeof plain_traits[0])
		return plain_traits[dtype].name != NULL ? &plain_traits[dtype] : NULL;
	return nesa_quant_traits(dtype);
}

const char *
nesa_dtype_name(int dtype)
{
	const struct nesa_dtype_traits *t = nesa_dtype_traits(dtype);

	return t != NULL ? t->name : "unknown";
}

const char *
nesa_dtype_list(void)
{
	static char list[512];
	size_t len = 0;
	int i;

	if (list[0] != '\0')
		return list;
	for (i = 0; i < NESA_DTYPE_MAX; i++) {
		const struct nesa_dtype_traits *t = nesa_dtype_traits(i);

		if (t != NULL && len < sizeof list)
			len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", t->name);
	}
	return list;
}

enum nesa_status
nesa_dtype_from_name(const char *name, enum nesa_dtype *out, struct nesa_err *err)
{
	int i;

	for (i = 0; i < NESA_DTYPE_MAX; i++) {
		const struct nesa_dtype_traits *t = nesa_dtype_traits(i);

		if (t != NULL && strcmp(t->name, name) == 0) {
			*out = (enum nesa_dtype)i;
			return NESA_OK;
		}
	}
	return nesa_err_set(err, NESA_EUNSUPPORTED, "unknown dtype '%s' (supported: %s)", name,
	                    nesa_dtype_list());
}

bool
nesa_dtype_bytes(int dtype, int64_t n, size_t *out)
{
	const struct nesa_dtype_traits *t = nesa_dtype_traits(dtype);

	if (t == NULL || n < 0 || n % t->block_size != 0)
		return false;
	return !__builtin_mul_overflow((size_t)(n / t->block_size), (size_t)t->block_bytes, out);
}
