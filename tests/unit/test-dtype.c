/* SPDX-License-Identifier: MIT */
/* Unit tests for dtype: traits, names, sizes, and exact f16/bf16 rounding. */
#include "config.h"

#include <math.h>
#include <stdio.h>

#include "testutil.h"

#include "dtype.h"

static void
test_names_roundtrip(void **state)
{
	struct nesa_err err;
	enum nesa_dtype d;
	int i;

	(void)state;
	for (i = 0; i < NESA_DTYPE_MAX; i++) {
		const struct nesa_dtype_traits *t = nesa_dtype_traits(i);

		if (t == NULL)
			continue;
		assert_int_equal(nesa_dtype_from_name(t->name, &d, &err), NESA_OK);
		assert_int_equal((int)d, i);
	}
	assert_int_equal(nesa_dtype_from_name("f64", &d, &err), NESA_EUNSUPPORTED);
	assert_non_null(strstr(err.msg, "'f64'"));
	assert_non_null(strstr(err.msg, "f32, f16, bf16, i32, i8, u8"));
	assert_null(nesa_dtype_traits(-1));
	assert_null(nesa_dtype_traits(NESA_DTYPE_MAX));
}

static void
test_bytes(void **state)
{
	size_t n;

	(void)state;
	assert_true(nesa_dtype_bytes(NESA_F32, 10, &n));
	assert_int_equal(n, 40);
	assert_true(nesa_dtype_bytes(NESA_BF16, 3, &n));
	assert_int_equal(n, 6);
	assert_false(nesa_dtype_bytes(NESA_F32, -1, &n));
	assert_false(nesa_dtype_bytes(NESA_F32, INT64_MAX, &n));
	assert_false(nesa_dtype_bytes(99, 1, &n));
}

/* Every half converts to f32 and back to itself (NaNs stay NaN). */
static void
test_f16_exhaustive_roundtrip(void **state)
{
	uint32_t h;

	(void)state;
	for (h = 0; h < 65536; h++) {
		float f = nesa_f16_to_f32((uint16_t)h);
		uint16_t back = nesa_f32_to_f16(f);

		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) {
			assert_true(isnan(f));
			assert_int_equal(back & 0x7c00, 0x7c00);
			assert_true((back & 0x3ff) != 0);
		} else {
			assert_int_equal(back, h);
		}
	}
}

/* The nearest half to x with ties to even, found by search over all halves. */
static uint16_t
nearest_half(float x)
{
	double best = INFINITY;
	uint16_t arg = 0;
	uint32_t h;

	for (h = 0; h < 0x7c00; h++) {
		double v = nesa_f16_to_f32((uint16_t)h);
		double d = fabs(fabs((double)x) - v);

		if (d < best || (d == best && (h & 1) == 0)) {
			best = d;
			arg = (uint16_t)h;
		}
	}
	/* Beyond 65504 + half an ulp (16) everything rounds to infinity. */
	if (fabs((double)x) >= 65520.0)
		arg = 0x7c00;
	return (uint16_t)(arg | (signbit(x) ? 0x8000 : 0));
}

static void
test_f16_rounding(void **state)
{
	uint64_t seed = 137;
	static const float edge[] = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f,
	                             2.98023224e-8f, 5.96046448e-8f, 8.94069672e-8f, 6.1035156e-5f,
	                             6.1028e-5f, 1.00048828125f, 1.000732421875f, -3.3333f};
	int i;

	(void)state;
	for (i = 0; i < (int)(sizeof edge / sizeof edge[0]); i++)
		assert_int_equal(nesa_f32_to_f16(edge[i]), nearest_half(edge[i]));
	for (i = 0; i < 300; i++) {
		/* Random magnitudes over the whole half range and a bit beyond. */
		float x = test_randf(&seed) * ldexpf(1.0f, (int)(test_rand(&seed) % 44) - 26);

		assert_int_equal(nesa_f32_to_f16(x), nearest_half(x));
	}
	assert_int_equal(nesa_f32_to_f16(INFINITY), 0x7c00);
	assert_int_equal(nesa_f32_to_f16(-INFINITY), 0xfc00);
	assert_true(isnan(nesa_f16_to_f32(nesa_f32_to_f16(NAN))));
}

static void
test_bf16(void **state)
{
	uint32_t h;

	(void)state;
	for (h = 0; h < 65536; h++) {
		float f = nesa_bf16_to_f32((uint16_t)h);

		if (isnan(f))
			assert_true(isnan(nesa_bf16_to_f32(nesa_f32_to_bf16(f))));
		else
			assert_int_equal(nesa_f32_to_bf16(f), h);
	}
	/* 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa (1) wins. */
	assert_int_equal(nesa_f32_to_bf16(1.00390625f), 0x3f80);
	/* 1 + 3 * 2^-8 ties to 1 + 2^-6 (even). */
	assert_int_equal(nesa_f32_to_bf16(1.01171875f), 0x3f82);
	assert_int_equal(nesa_f32_to_bf16(1.005f), 0x3f81);
}

static void
test_integer_saturation(void **state)
{
	const struct nesa_dtype_traits *t = nesa_dtype_traits(NESA_I8);
	float in[6] = {-300.0f, -128.4f, 2.5f, 3.5f, 127.6f, NAN};
	int8_t out[6];
	float back[6];

	(void)state;
	t->from_f32(in, out, 6);
	assert_int_equal(out[0], -128);
	assert_int_equal(out[1], -128);
	assert_int_equal(out[2], 2);
	assert_int_equal(out[3], 4);
	assert_int_equal(out[4], 127);
	assert_int_equal(out[5], 0);
	t->to_f32(out, back, 6);
	assert_true(back[0] == -128.0f && back[4] == 127.0f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_roundtrip),
		cmocka_unit_test(test_bytes),
		cmocka_unit_test(test_f16_exhaustive_roundtrip),
		cmocka_unit_test(test_f16_rounding),
		cmocka_unit_test(test_bf16),
		cmocka_unit_test(test_integer_saturation),
	};

	return cmocka_run_group_tests_name("dtype", tests, NULL, NULL);
}
