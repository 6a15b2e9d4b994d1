/* SPDX-License-Identifier: MIT */
/* Unit tests for tensor: shape checks, views, sets, allocation failures. */
#include "config.h"

#include <stdio.h>

#include "testutil.h"

#include "tensor.h"

static void
test_shape_check(void **state)
{
	struct nesa_err err;
	int64_t ok[2] = {3, 4}, neg[2] = {3, -1}, huge[2] = {INT64_C(1) << 31, INT64_C(1) << 31};
	int64_t five[5] = {1, 1, 1, 1, 1};
	size_t nb;

	(void)state;
	assert_int_equal(nesa_shape_check(NESA_F32, 2, ok, false, &nb, "w", &err), NESA_OK);
	assert_int_equal(nb, 48);
	assert_int_equal(nesa_shape_check(NESA_F32, 2, neg, false, &nb, "w", &err), NESA_ESHAPE);
	assert_non_null(strstr(err.msg, "w has invalid dimension 1 of size -1"));
	/* 2^62 elements is refused before anything multiplies bytes. */
	assert_int_equal(nesa_shape_check(NESA_F32, 2, huge, false, &nb, "w", &err), NESA_ESHAPE);
	assert_non_null(strstr(err.msg, "too large"));
	assert_int_equal(nesa_shape_check(NESA_F32, 5, five, false, &nb, "w", &err), NESA_ESHAPE);
	assert_non_null(strstr(err.msg, "5 dimensions"));
	assert_int_equal(nesa_shape_check(42, 2, ok, false, &nb, "w", &err), NESA_EUNSUPPORTED);
}

static void
test_strides_and_views(void **state)
{
	int64_t shape[3] = {4, 3, 2};
	struct nesa_tensor *t, v;
	struct nesa_err err;
	float *d;
	char buf[64];
	int i;

	(void)state;
	t = nesa_tensor_new("x", NESA_F32, 3, shape, &err);
	assert_non_null(t);
	assert_int_equal(t->stride[2], 4);
	assert_int_equal(t->stride[1], 8);
	assert_int_equal(t->stride[0], 24);
	assert_int_equal(nesa_tensor_nelems(t), 24);
	assert_true(nesa_tensor_is_contiguous(t));
	assert_int_equal((uintptr_t)t->data % NESA_ALIGN, 0);
	d = t->data;
	for (i = 0; i < 24; i++)
		d[i] = (float)i;
	assert_int_equal(nesa_tensor_view_rows(t, 1, 2, &v, &err), NESA_OK);
	assert_int_equal(v.shape[0], 2);
	assert_true(((float *)v.data)[0] == 6.0f);
	assert_int_equal(v.nbytes, 48);
	assert_int_equal(nesa_tensor_view_rows(t, 3, 2, &v, &err), NESA_ESHAPE);
	assert_string_equal(nesa_shape_str(3, shape, buf, sizeof buf), "[4, 3, 2]");
	nesa_tensor_free(t);
	nesa_tensor_free(NULL);
}

static void
test_tset(void **state)
{
	struct nesa_tset ts;
	struct nesa_tensor *t;
	struct nesa_err err;
	int64_t shape[1] = {5};
	char name[32];
	int i;

	(void)state;
	nesa_tset_init(&ts);
	/* Enough tensors to exercise the sorted index. */
	for (i = 0; i < 40; i++) {
		snprintf(name, sizeof name, "blk.%d.w", 39 - i);
		assert_int_equal(nesa_tset_alloc(&ts, name, NESA_F32, 1, shape, &t, &err), NESA_OK);
		((float *)t->data)[0] = (float)(39 - i);
	}
	assert_int_equal(nesa_tset_add(&ts, "blk.7.w", NESA_F32, 1, shape, NULL, NULL, &err),
	                 NESA_EFORMAT);
	assert_non_null(strstr(err.msg, "duplicate tensor name 'blk.7.w'"));
	for (i = 0; i < 40; i++) {
		snprintf(name, sizeof name, "blk.%d.w", i);
		t = nesa_tset_find(&ts, name);
		assert_non_null(t);
		assert_true(((float *)t->data)[0] == (float)i);
	}
	assert_null(nesa_tset_find(&ts, "nope"));
	nesa_tset_release(&ts);
	nesa_tset_release(NULL);
}

/* Every allocation in tensor creation can fail without leaking. */
static void
test_alloc_failures(void **state)
{
	int64_t shape[2] = {8, 8};
	struct nesa_err err;
	long n;

	(void)state;
	for (n = 1;; n++) {
		struct nesa_tset ts;
		enum nesa_status s;

		nesa_tset_init(&ts);
		test_faults_arm(n);
		s = nesa_tset_alloc(&ts, "a", NESA_F32, 2, shape, NULL, &err);
		if (s == NESA_OK)
			s = nesa_tset_alloc(&ts, "b", NESA_F16, 2, shape, NULL, &err);
		test_faults_disarm();
		nesa_tset_release(&ts);
		if (s == NESA_OK)
			break;
		assert_int_equal(s, NESA_ENOMEM);
	}
	assert_true(n > 3);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shape_check),
		cmocka_unit_test(test_strides_and_views),
		cmocka_unit_test(test_tset),
		cmocka_unit_test(test_alloc_failures),
	};

	return cmocka_run_group_tests_name("tensor", tests, NULL, NULL);
}
