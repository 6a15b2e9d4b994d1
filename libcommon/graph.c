/* SPDX-License-Identifier: MIT */
/*
 * Graph compilation: JSON document + weights -> validated blocks with
 * resolved weights, inferred shapes and costs.  The language is specified
 * in nesa-graph(5); this file is its reference implementation.
 *
 * Values are variables: an op writing a name that already exists creates a
 * new version of it (internally a fresh value slot), so graphs can say
 * "x = add(x, h)" and reuse names across shape changes, while the executor
 * still sees single-assignment slots it can buffer independently.
 */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "graph.h"
#include "ops.h"

static int64_t
conv_out(int64_t in, int k, int s, int p)
{
	/* A kernel larger than the padded input gives no output at all. */
	return in + 2 * (int64_t)p < k ? 0 : (in + 2 * (int64_t)p - k) / s + 1;
}

static const char *const op_names[NESA_OP_COUNT] = {
	[NESA_OP_EMBEDDING] = "embedding",
	[NESA_OP_POS_EMBEDDING] = "pos_embedding",
	[NESA_OP_RMSNORM] = "rmsnorm",
	[NESA_OP_LAYERNORM] = "layernorm",
	[NESA_OP_LINEAR] = "linear",
	[NESA_OP_ROPE] = "rope",
	[NESA_OP_ATTENTION] = "attention",
	[NESA_OP_GELU] = "gelu",
	[NESA_OP_GELU_TANH] = "gelu_tanh",
	[NESA_OP_SILU] = "silu",
	[NESA_OP_RELU] = "relu",
	[NESA_OP_ADD] = "add",
	[NESA_OP_MUL] = "mul",
	[NESA_OP_SOFTMAX] = "softmax",
	[NESA_OP_CONV2D] = "conv2d",
	[NESA_OP_BATCHNORM] = "batchnorm",
	[NESA_OP_MAXPOOL] = "maxpool",
	[NESA_OP_AVGPOOL] = "avgpool",
	[NESA_OP_GLOBAL_AVGPOOL] = "global_avgpool",
	[NESA_OP_PAD_CHANNELS] = "pad_channels",
	[NESA_OP_FLATTEN] = "flatten",
	[NESA_OP_CHANNEL_AFFINE] = "channel_affine",
	[NESA_OP_LINEAR_INT8] = "linear_int8",
};

const char *
nesa_op_name(enum nesa_op_kind k)
{
	return (unsigned)k < NESA_OP_COUNT ? op_names[k] : "unknown";
}

const char *
nesa_op_list(void)
{
	static char list[512];
	size_t len = 0;
	int i;

	if (list[0] == '\0')
		for (i = 0; i < NESA_OP_COUNT; i++)
			len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "",
			                        op_names[i]);
	return list;
}

/* Compilation context: where we are, for messages. */
struct ctx {
	struct nesa_tset *ts;
	struct nesa_err *err;
	struct nesa_block *b;
	int op_index;   /* -1 while reading block inputs */
	int cache_next; /* next KV cache index */
	int values_cap;
};

static enum nesa_status
fail(struct ctx *c, enum nesa_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static enum nesa_status
fail(struct ctx *c, enum nesa_status s, const char *fmt, ...)
{
	char msg[NESA_ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c->b == NULL)
		return nesa_err_set(c->err, s, "invalid graph: %s", msg);
	if (c->op_index < 0)
		return nesa_err_set(c->err, s, "invalid graph: block %d ('%s'): %s", c->b->index,
		                    c->b->name, msg);
	return nesa_err_set(c->err, s, "invalid graph: block %d ('%s') op %d (%s): %s", c->b->index,
	                    c->b->name, c->op_index, nesa_op_name(c->b->ops[c->op_index].kind), msg);
}

/* JSON accessors that fail with a message naming the key. */

static enum nesa_status
get_int(struct ctx *c, const json_t *o, const char *key, int64_t def, int64_t min, int64_t max,
        int64_t *out)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL) {
		if (def == INT64_MIN)
			return fail(c, NESA_EFORMAT, "missing integer '%s'", key);
		*out = def;
		return NESA_OK;
	}
	if (!json_is_integer(v))
		return fail(c, NESA_EFORMAT, "'%s' must be an integer", key);
	*out = json_integer_value(v);
	if (*out < min || *out > max)
		return fail(c, NESA_EFORMAT, "'%s' = %lld is out of range [%lld, %lld]", key,
		            (long long)*out, (long long)min, (long long)max);
	return NESA_OK;
}

static enum nesa_status
get_float(struct ctx *c, const json_t *o, const char *key, double def, double *out)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL) {
		if (isnan(def))
			return fail(c, NESA_EFORMAT, "missing number '%s'", key);
		*out = def;
		return NESA_OK;
	}
	if (!json_is_number(v) || !isfinite(json_number_value(v)))
		return fail(c, NESA_EFORMAT, "'%s' must be a finite number", key);
	*out = json_number_value(v);
	return NESA_OK;
}

/* A pair from an integer or a two-element array ("stride": 2 or [2, 1]). */
static enum nesa_status
get_pair(struct ctx *c, const json_t *o, const char *key, int def, int min, int out[2])
{
	json_t *v = json_object_get(o, key);
	int i;

	if (v == NULL) {
		if (def < 0)
			return fail(c, NESA_EFORMAT, "missing '%s'", key);
		out[0] = out[1] = def;
		return NESA_OK;
	}
	if (json_is_integer(v)) {
		out[0] = out[1] = (int)json_integer_value(v);
		if (json_integer_value(v) < min || json_integer_value(v) > 65536)
			return fail(c, NESA_EFORMAT, "'%s' out of range", key);
		return NESA_OK;
	}
	if (!json_is_array(v) || json_array_size(v) != 2)
		return fail(c, NESA_EFORMAT, "'%s' must be an integer or a pair of integers", key);
	for (i = 0; i < 2; i++) {
		json_t *e = json_array_get(v, (size_t)i);

		if (!json_is_integer(e) || json_integer_value(e) < min || json_integer_value(e) > 65536)
			return fail(c, NESA_EFORMAT, "'%s' must hold integers >= %d", key, min);
		out[i] = (int)json_integer_value(e);
	}
	return NESA_OK;
}

static enum nesa_status
new_value(struct ctx *c, const char *name, enum nesa_dtype dt, int ndim, const int64_t *shape,
          int *index)
{
	struct nesa_block *b = c->b;
	struct nesa_value *v;
	int64_t n = 1;
	int i;

	if (b->n_values == c->values_cap) {
		int ncap = c->values_cap ? c->values_cap * 2 : 16;
		struct nesa_value *nv = nesa_realloc(b->values, (size_t)ncap * sizeof *nv);

		if (nv == NULL)
			return nesa_err_set(c->err, NESA_ENOMEM, "out of memory");
		b->values = nv;
		c->values_cap = ncap;
	}
	if (ndim > 3)
		return fail(c, NESA_ESHAPE, "value '%s' would have %d feature dimensions (at most 3)",
		            name, ndim);
	for (i = 0; i < ndim; i++) {
		if (shape[i] < 1 || !nesa_mul_i64(n, shape[i], &n) || n > (INT64_C(1) << 31))
			return fail(c, NESA_ESHAPE, "value '%s' has an invalid or too large shape", name);
	}
	v = &b->values[b->n_values];
	memset(v, 0, sizeof *v);
	v->name = nesa_strdup(name);
	if (v->name == NULL)
		return nesa_err_set(c->err, NESA_ENOMEM, "out of memory");
	v->dtype = dt;
	v->ndim = ndim;
	for (i = 0; i < ndim; i++)
		v->shape[i] = shape[i];
	v->row_elems = n;
	*index = b->n_values++;
	return NESA_OK;
}

/* Latest version of a value called name, or -1. */
static int
find_value(const struct nesa_block *b, const char *name)
{
	int i;

	for (i = b->n_values - 1; i >= 0; i--)
		if (strcmp(b->values[i].name, name) == 0)
			return i;
	return -1;
}

static enum nesa_status
shape_from_json(struct ctx *c, const json_t *arr, const char *what, int *ndim, int64_t *shape)
{
	size_t i;

	if (!json_is_array(arr) || json_array_size(arr) > 3)
		return fail(c, NESA_EFORMAT, "shape of '%s' must be an array of at most 3 integers", what);
	*ndim = (int)json_array_size(arr);
	for (i = 0; i < json_array_size(arr); i++) {
		json_t *e = json_array_get(arr, i);

		if (!json_is_integer(e) || json_integer_value(e) < 1 ||
		    json_integer_value(e) > (INT64_C(1) << 31))
			return fail(c, NESA_ESHAPE, "shape of '%s' has an invalid dimension", what);
		shape[i] = json_integer_value(e);
	}
	return NESA_OK;
}

/*
 * Resolves weight `key` of op j: must exist in the tensor set, have the
 * expected number of dims, and (when f32_only) be f32.
 */
static enum nesa_status
get_weight(struct ctx *c, const json_t *o, const char *key, bool required, int ndim, bool f32_only,
           struct nesa_tensor **out)
{
	json_t *v = json_object_get(o, key);
	struct nesa_tensor *t;

	*out = NULL;
	if (v == NULL || json_is_null(v)) {
		if (required)
			return fail(c, NESA_EFORMAT, "missing weight reference '%s'", key);
		return NESA_OK;
	}
	if (!json_is_string(v))
		return fail(c, NESA_EFORMAT, "weight reference '%s' must be a tensor name", key);
	t = nesa_tset_find(c->ts, json_string_value(v));
	if (t == NULL)
		return fail(c, NESA_EFORMAT, "weight '%s' not found among the model's tensors",
		            json_string_value(v));
	if (t->data == NULL)
		return fail(c, NESA_EFORMAT, "weight '%s' has no data", t->name);
	if (t->ndim != ndim)
		return fail(c, NESA_ESHAPE, "weight '%s' has %d dimensions, expected %d", t->name,
		            t->ndim, ndim);
	if (f32_only && t->dtype != NESA_F32)
		return fail(c, NESA_EUNSUPPORTED, "weight '%s' has dtype %s; this op needs f32", t->name,
		            nesa_dtype_name(t->dtype));
	*out = t;
	return NESA_OK;
}

static enum nesa_status
expect_len(struct ctx *c, const struct nesa_tensor *t, int dim, int64_t want)
{
	char buf[64];

	if (t != NULL && t->shape[dim] != want)
		return fail(c, NESA_ESHAPE, "weight '%s' has shape %s; dimension %d must be %lld", t->name,
		            nesa_shape_str(t->ndim, t->shape, buf, sizeof buf), dim, (long long)want);
	return NESA_OK;
}

static const char *
value_shape(const struct nesa_value *v, char *buf, size_t size)
{
	return nesa_shape_str(v->ndim, v->shape, buf, size);
}

/* Channel-wise constants: an array of n (or 1, broadcast) numbers. */
static enum nesa_status
get_channels(struct ctx *c, const json_t *o, const char *key, int64_t n, float def, float **out)
{
	json_t *v = json_object_get(o, key);
	float *a;
	int64_t i;

	a = nesa_malloc((size_t)n * sizeof *a);
	if (a == NULL)
		return nesa_err_set(c->err, NESA_ENOMEM, "out of memory");
	*out = a;
	if (v == NULL) {
		for (i = 0; i < n; i++)
			a[i] = def;
		return NESA_OK;
	}
	if (!json_is_array(v) || (json_array_size(v) != (size_t)n && json_array_size(v) != 1))
		return fail(c, NESA_ESHAPE, "'%s' must be an array of %lld numbers (or one)", key,
		            (long long)n);
	for (i = 0; i < n; i++) {
		json_t *e = json_array_get(v, json_array_size(v) == 1 ? 0 : (size_t)i);

		if (!json_is_number(e) || !isfinite(json_number_value(e)))
			return fail(c, NESA_EFORMAT, "'%s' must hold finite numbers", key);
		a[i] = (float)json_number_value(e);
	}
	return NESA_OK;
}

/*
 * The optional low-rank factors of a linear op: lowrank_a (out, r) into
 * w[2] and lowrank_b (r, in) into w[3], both or neither, in a floating-point
 * or quantized dtype, chaining as A (B x).  Checked here so a corrupt or
 * mismatched pair fails at load time, never mid-run.
 */
static enum nesa_status
get_lowrank(struct ctx *c, const json_t *jo, int64_t in, struct nesa_op *op)
{
	struct nesa_tensor *a, *b;
	char sa[64], sb[64];
	enum nesa_status s;
	int k;

	if ((s = get_weight(c, jo, "lowrank_a", false, 2, false, &a)) != NESA_OK ||
	    (s = get_weight(c, jo, "lowrank_b", false, 2, false, &b)) != NESA_OK)
		return s;
	if ((a == NULL) != (b == NULL))
		return fail(c, NESA_EFORMAT, "lowrank_a and lowrank_b go together");
	if (a == NULL)
		return NESA_OK;
	for (k = 0; k < 2; k++) {
		const struct nesa_tensor *t = k == 0 ? a : b;

		if (!(nesa_dtype_traits(t->dtype)->flags & (NESA_DTYPE_FLOAT | NESA_DTYPE_QUANT)))
			return fail(c, NESA_EUNSUPPORTED, "low-rank factor '%s' has dtype %s (a float or quantized type is needed)",
			            t->name, nesa_dtype_name(t->dtype));
	}
	if (b->shape[1] != in || a->shape[1] != b->shape[0] || a->shape[1] < 1)
		return fail(c, NESA_ESHAPE, "low-rank factors '%s' %s and '%s' %s do not fit: lowrank_a must be [out, r] and lowrank_b [r, %lld] with r >= 1",
		            a->name, nesa_shape_str(a->ndim, a->shape, sa, sizeof sa), b->name,
		            nesa_shape_str(b->ndim, b->shape, sb, sizeof sb), (long long)in);
	op->w[2] = a;
	op->w[3] = b;
	return NESA_OK;
}

static enum nesa_status
compile_op(struct ctx *c, const json_t *jo, struct nesa_op *op)
{
	struct nesa_block_cost *cost = &c->b->cost;
	const struct nesa_value *x;
	json_t *jin = json_object_get(jo, "in"), *jout = json_object_get(jo, "out");
	int64_t shape[3], v64;
	double d;
	char buf[64];
	int ndim = 0, i, n_in_want;
	enum nesa_dtype out_dt = NESA_F32;
	enum nesa_status s;

	op->cache = -1;
	if (!json_is_array(jin) || json_array_size(jin) < 1 || json_array_size(jin) > 3)
		return fail(c, NESA_EFORMAT, "'in' must be an array of 1 to 3 value names");
	if (!json_is_string(jout))
		return fail(c, NESA_EFORMAT, "'out' must be a value name");
	op->n_in = (int)json_array_size(jin);
	for (i = 0; i < op->n_in; i++) {
		json_t *e = json_array_get(jin, (size_t)i);

		if (!json_is_string(e))
			return fail(c, NESA_EFORMAT, "'in' must hold value names");
		op->in[i] = find_value(c->b, json_string_value(e));
		if (op->in[i] < 0)
			return fail(c, NESA_EFORMAT, "input '%s' is not defined before this op",
			            json_string_value(e));
	}
	switch (op->kind) {
	case NESA_OP_ADD: case NESA_OP_MUL: n_in_want = 2; break;
	case NESA_OP_ATTENTION: n_in_want = 3; break;
	default: n_in_want = 1; break;
	}
	if (op->n_in != n_in_want)
		return fail(c, NESA_EFORMAT, "takes %d input(s), got %d", n_in_want, op->n_in);
	x = &c->b->values[op->in[0]];
	for (i = 0; i < op->n_in; i++)
		if (c->b->values[op->in[i]].dtype != NESA_F32 && op->kind != NESA_OP_EMBEDDING)
			return fail(c, NESA_EUNSUPPORTED, "input '%s' must be f32",
			            c->b->values[op->in[i]].name);
	/* Default: same shape as the first input. */
	ndim = x->ndim;
	memcpy(shape, x->shape, sizeof shape);

	switch (op->kind) {
	case NESA_OP_EMBEDDING:
		if (x->dtype != NESA_I32 || x->ndim != 0)
			return fail(c, NESA_ESHAPE, "input must be one i32 token id per row");
		if ((s = get_weight(c, jo, "weight", true, 2, false, &op->w[0])) != NESA_OK)
			return s;
		ndim = 1;
		shape[0] = op->w[0]->shape[1];
		break;
	case NESA_OP_POS_EMBEDDING:
		if ((s = get_weight(c, jo, "weight", true, 2, true, &op->w[0])) != NESA_OK)
			return s;
		if (x->ndim != 1)
			return fail(c, NESA_ESHAPE, "input must be a vector per row");
		if ((s = expect_len(c, op->w[0], 1, x->shape[0])) != NESA_OK)
			return s;
		cost->flops_per_row += (double)x->row_elems;
		break;
	case NESA_OP_RMSNORM:
	case NESA_OP_LAYERNORM:
		if (x->ndim != 1)
			return fail(c, NESA_ESHAPE, "input must be a vector per row, got %s",
			            value_shape(x, buf, sizeof buf));
		if ((s = get_weight(c, jo, "weight", true, 1, true, &op->w[0])) != NESA_OK ||
		    (s = expect_len(c, op->w[0], 0, x->shape[0])) != NESA_OK)
			return s;
		if (op->kind == NESA_OP_LAYERNORM &&
		    ((s = get_weight(c, jo, "bias", false, 1, true, &op->w[1])) != NESA_OK ||
		     (s = expect_len(c, op->w[1], 0, x->shape[0])) != NESA_OK))
			return s;
		if ((s = get_float(c, jo, "eps", 1e-5, &d)) != NESA_OK)
			return s;
		if (d <= 0 || d > 1)
			return fail(c, NESA_EFORMAT, "'eps' must be in (0, 1]");
		op->eps = (float)d;
		cost->flops_per_row += 5.0 * (double)x->row_elems;
		break;
	case NESA_OP_LINEAR_INT8: {
		struct nesa_tensor *oi;

		if (x->ndim != 1)
			return fail(c, NESA_ESHAPE, "input must be a vector per row, got %s",
			            value_shape(x, buf, sizeof buf));
		if ((s = get_weight(c, jo, "weight", true, 2, false, &op->w[0])) != NESA_OK ||
		    (s = expect_len(c, op->w[0], 1, x->shape[0])) != NESA_OK)
			return s;
		if (op->w[0]->dtype != NESA_I8)
			return fail(c, NESA_EUNSUPPORTED, "weight '%s' has dtype %s; linear_int8 needs i8",
			            op->w[0]->name, nesa_dtype_name(op->w[0]->dtype));
		if ((s = get_weight(c, jo, "scale", true, 1, true, &op->w[2])) != NESA_OK ||
		    (s = expect_len(c, op->w[2], 0, op->w[0]->shape[0])) != NESA_OK ||
		    (s = get_weight(c, jo, "bias", false, 1, true, &op->w[1])) != NESA_OK ||
		    (s = expect_len(c, op->w[1], 0, op->w[0]->shape[0])) != NESA_OK ||
		    (s = get_weight(c, jo, "outlier_weight", false, 2, true, &op->w[3])) != NESA_OK ||
		    (s = get_weight(c, jo, "outlier_index", false, 1, false, &oi)) != NESA_OK ||
		    (s = get_float(c, jo, "threshold", 0.0, &d)) != NESA_OK)
			return s;
		op->w[4] = oi;
		if ((op->w[3] == NULL) != (oi == NULL))
			return fail(c, NESA_EFORMAT, "outlier_weight and outlier_index go together");
		if (oi != NULL) {
			const int32_t *idx = oi->data;
			int64_t k;

			if (oi->dtype != NESA_I32 || oi->shape[0] != op->w[3]->shape[1] ||
			    op->w[3]->shape[0] != op->w[0]->shape[0] || oi->shape[0] > x->shape[0])
				return fail(c, NESA_ESHAPE, "outlier_index must be i32 [k] and outlier_weight [out, k]");
			/* Strictly increasing, inside the row: checked once here, trusted at run time. */
			for (k = 0; k < oi->shape[0]; k++)
				if (idx[k] < 0 || idx[k] >= x->shape[0] || (k > 0 && idx[k] <= idx[k - 1]))
					return fail(c, NESA_EFORMAT, "outlier index %lld is %d: indices must increase within [0, %lld)",
					            (long long)k, idx[k], (long long)x->shape[0]);
		}
		if (d < 0)
			return fail(c, NESA_EFORMAT, "'threshold' must be >= 0");
		op->threshold = (float)d;
		{
			/* -128 has no positive counterpart: the int8 kernels assume [-127, 127]. */
			const int8_t *q = op->w[0]->data;
			int64_t e, n = nesa_tensor_nelems(op->w[0]);

			for (e = 0; e < n; e++)
				if (q[e] == INT8_MIN)
					return fail(c, NESA_EFORMAT, "weight '%s' holds -128 at element %lld (int8 weights are in [-127, 127])",
					            op->w[0]->name, (long long)e);
		}
		op->head = json_is_true(json_object_get(jo, "head"));
		shape[0] = op->w[0]->shape[0];
		/* The int8 product over every column, plus the f32 product of the static outliers. */
		cost->flops_per_row += 2.0 * (double)op->w[0]->shape[0] *
		                       (double)(op->w[0]->shape[1] + (oi != NULL ? oi->shape[0] : 0));
		break;
	}
	case NESA_OP_LINEAR: {
		int64_t out;

		if (x->ndim != 1)
			return fail(c, NESA_ESHAPE, "input must be a vector per row, got %s",
			            value_shape(x, buf, sizeof buf));
		if ((s = get_weight(c, jo, "weight", false, 2, false, &op->w[0])) != NESA_OK ||
		    (s = expect_len(c, op->w[0], 1, x->shape[0])) != NESA_OK ||
		    (s = get_lowrank(c, jo, x->shape[0], op)) != NESA_OK)
			return s;
		if (op->w[0] == NULL && op->w[2] == NULL)
			return fail(c, NESA_EFORMAT, "missing weight reference 'weight' (or the factors 'lowrank_a' and 'lowrank_b')");
		out = op->w[0] != NULL ? op->w[0]->shape[0] : op->w[2]->shape[0];
		if ((s = expect_len(c, op->w[2], 0, out)) != NESA_OK ||
		    (s = get_weight(c, jo, "bias", false, 1, true, &op->w[1])) != NESA_OK ||
		    (s = expect_len(c, op->w[1], 0, out)) != NESA_OK)
			return s;
		op->head = json_is_true(json_object_get(jo, "head"));
		shape[0] = out;
		if (op->w[0] != NULL)
			cost->flops_per_row += 2.0 * (double)out * (double)x->shape[0];
		/* x -> B x -> A (B x): r (in + out) multiply-adds, the planner's cost of a factorized matrix. */
		if (op->w[2] != NULL)
			cost->flops_per_row += 2.0 * (double)op->w[2]->shape[1] * (double)(x->shape[0] + out);
		break;
	}
	case NESA_OP_ROPE:
		if ((s = get_int(c, jo, "head_dim", INT64_MIN, 2, 65536, &v64)) != NESA_OK)
			return s;
		op->head_dim = (int)v64;
		if ((s = get_int(c, jo, "n_rot", op->head_dim, 2, op->head_dim, &v64)) != NESA_OK)
			return s;
		op->n_rot = (int)v64;
		if ((s = get_float(c, jo, "theta", 10000.0, &d)) != NESA_OK)
			return s;
		op->theta = (float)d;
		if (x->ndim != 1 || x->shape[0] % op->head_dim != 0 || op->n_rot % 2 != 0 || d <= 1)
			return fail(c, NESA_ESHAPE, "input %s is not a whole number of heads of %d, or n_rot/theta invalid",
			            value_shape(x, buf, sizeof buf), op->head_dim);
		op->n_heads = (int)(x->shape[0] / op->head_dim);
		{
			const char *lay = json_string_value(json_object_get(jo, "layout"));

			if (lay == NULL || strcmp(lay, "interleaved") == 0)
				op->layout = NESA_ROPE_INTERLEAVED;
			else if (strcmp(lay, "half") == 0)
				op->layout = NESA_ROPE_HALF;
			else
				return fail(c, NESA_EUNSUPPORTED, "unknown rope layout '%s' (supported: interleaved, half)", lay);
		}
		cost->flops_per_row += 3.0 * (double)x->row_elems;
		break;
	case NESA_OP_ATTENTION: {
		const struct nesa_value *k = &c->b->values[op->in[1]], *v = &c->b->values[op->in[2]];

		if ((s = get_int(c, jo, "n_heads", INT64_MIN, 1, 65536, &v64)) != NESA_OK)
			return s;
		op->n_heads = (int)v64;
		if ((s = get_int(c, jo, "n_kv_heads", op->n_heads, 1, op->n_heads, &v64)) != NESA_OK)
			return s;
		op->n_kv_heads = (int)v64;
		if ((s = get_int(c, jo, "head_dim", INT64_MIN, 1, 65536, &v64)) != NESA_OK)
			return s;
		op->head_dim = (int)v64;
		if ((s = get_float(c, jo, "scale", 1.0 / sqrt((double)op->head_dim), &d)) != NESA_OK)
			return s;
		op->scale = (float)d;
		if (op->n_heads % op->n_kv_heads != 0)
			return fail(c, NESA_ESHAPE, "n_heads %d is not a multiple of n_kv_heads %d",
			            op->n_heads, op->n_kv_heads);
		if (x->ndim != 1 || x->shape[0] != (int64_t)op->n_heads * op->head_dim ||
		    k->ndim != 1 || k->shape[0] != (int64_t)op->n_kv_heads * op->head_dim ||
		    v->ndim != 1 || v->shape[0] != k->shape[0])
			return fail(c, NESA_ESHAPE, "q, k, v shapes do not match %d heads, %d kv heads of %d",
			            op->n_heads, op->n_kv_heads, op->head_dim);
		op->cache = c->cache_next++;
		cost->flops_per_ctx += 4.0 * (double)op->n_heads * op->head_dim;
		cost->kv_bytes_per_row += 2u * (uint64_t)k->shape[0] * sizeof(float);
		break;
	}
	case NESA_OP_GELU: case NESA_OP_GELU_TANH: case NESA_OP_SILU: case NESA_OP_RELU:
		cost->flops_per_row += 4.0 * (double)x->row_elems;
		break;
	case NESA_OP_ADD: case NESA_OP_MUL: {
		const struct nesa_value *y = &c->b->values[op->in[1]];

		if (x->ndim != y->ndim || memcmp(x->shape, y->shape, (size_t)x->ndim * sizeof x->shape[0]) != 0)
			return fail(c, NESA_ESHAPE, "inputs '%s' %s and '%s' differ in shape", x->name,
			            value_shape(x, buf, sizeof buf), y->name);
		cost->flops_per_row += (double)x->row_elems;
		break;
	}
	case NESA_OP_SOFTMAX:
		if (x->ndim < 1)
			return fail(c, NESA_ESHAPE, "input must have at least one dimension");
		cost->flops_per_row += 5.0 * (double)x->row_elems;
		break;
	case NESA_OP_CONV2D: {
		int64_t O;

		if (x->ndim != 3)
			return fail(c, NESA_ESHAPE, "input must be [C, H, W] per row, got %s",
			            value_shape(x, buf, sizeof buf));
		if ((s = get_weight(c, jo, "weight", true, 4, true, &op->w[0])) != NESA_OK ||
		    (s = get_weight(c, jo, "bias", false, 1, true, &op->w[1])) != NESA_OK ||
		    (s = get_pair(c, jo, "stride", 1, 1, op->stride)) != NESA_OK ||
		    (s = get_pair(c, jo, "padding", 0, 0, op->pad)) != NESA_OK ||
		    (s = get_int(c, jo, "groups", 1, 1, 65536, &v64)) != NESA_OK)
			return s;
		op->groups = (int)v64;
		O = op->w[0]->shape[0];
		op->kernel[0] = (int)op->w[0]->shape[2];
		op->kernel[1] = (int)op->w[0]->shape[3];
		if (x->shape[0] % op->groups != 0 || O % op->groups != 0)
			return fail(c, NESA_ESHAPE, "groups %d do not divide channels %lld and %lld",
			            op->groups, (long long)x->shape[0], (long long)O);
		if ((s = expect_len(c, op->w[0], 1, x->shape[0] / op->groups)) != NESA_OK ||
		    (s = expect_len(c, op->w[1], 0, O)) != NESA_OK)
			return s;
		shape[0] = O;
		shape[1] = conv_out(x->shape[1], op->kernel[0], op->stride[0], op->pad[0]);
		shape[2] = conv_out(x->shape[2], op->kernel[1], op->stride[1], op->pad[1]);
		if (shape[1] < 1 || shape[2] < 1)
			return fail(c, NESA_ESHAPE, "kernel larger than the padded input %s",
			            value_shape(x, buf, sizeof buf));
		cost->flops_per_row += 2.0 * (double)O * (double)(x->shape[0] / op->groups) *
		                       op->kernel[0] * op->kernel[1] * (double)(shape[1] * shape[2]);
		break;
	}
	case NESA_OP_BATCHNORM: {
		struct nesa_tensor *m, *var;
		int64_t C = x->ndim > 0 ? x->shape[0] : 0, ch;

		if (x->ndim < 1)
			return fail(c, NESA_ESHAPE, "input must have a channel dimension");
		if ((s = get_weight(c, jo, "weight", true, 1, true, &op->w[0])) != NESA_OK ||
		    (s = get_weight(c, jo, "bias", true, 1, true, &op->w[1])) != NESA_OK ||
		    (s = get_weight(c, jo, "mean", true, 1, true, &m)) != NESA_OK ||
		    (s = get_weight(c, jo, "var", true, 1, true, &var)) != NESA_OK ||
		    (s = expect_len(c, op->w[0], 0, C)) != NESA_OK ||
		    (s = expect_len(c, op->w[1], 0, C)) != NESA_OK ||
		    (s = expect_len(c, m, 0, C)) != NESA_OK || (s = expect_len(c, var, 0, C)) != NESA_OK ||
		    (s = get_float(c, jo, "eps", 1e-5, &d)) != NESA_OK)
			return s;
		op->w[2] = m;
		op->w[3] = var;
		op->eps = (float)d;
		op->ch_scale = nesa_malloc((size_t)C * sizeof(float));
		op->ch_shift = nesa_malloc((size_t)C * sizeof(float));
		if (op->ch_scale == NULL || op->ch_shift == NULL)
			return nesa_err_set(c->err, NESA_ENOMEM, "out of memory");
		for (ch = 0; ch < C; ch++) {
			const float *g = op->w[0]->data, *bb = op->w[1]->data, *mu = m->data,
			            *vv = var->data;
			double sc = (double)g[ch] / sqrt((double)vv[ch] + d);

			if (vv[ch] < 0 || !isfinite(sc))
				return fail(c, NESA_EFORMAT, "running variance of channel %lld is invalid",
				            (long long)ch);
			op->ch_scale[ch] = (float)sc;
			op->ch_shift[ch] = (float)((double)bb[ch] - (double)mu[ch] * sc);
		}
		cost->flops_per_row += 2.0 * (double)x->row_elems;
		break;
	}
	case NESA_OP_CHANNEL_AFFINE:
		if (x->ndim < 1)
			return fail(c, NESA_ESHAPE, "input must have a channel dimension");
		if ((s = get_channels(c, jo, "scale", x->shape[0], 1.0f, &op->ch_scale)) != NESA_OK ||
		    (s = get_channels(c, jo, "shift", x->shape[0], 0.0f, &op->ch_shift)) != NESA_OK)
			return s;
		cost->flops_per_row += 2.0 * (double)x->row_elems;
		break;
	case NESA_OP_MAXPOOL:
	case NESA_OP_AVGPOOL:
		if (x->ndim != 3)
			return fail(c, NESA_ESHAPE, "input must be [C, H, W] per row");
		if ((s = get_pair(c, jo, "kernel", -1, 1, op->kernel)) != NESA_OK ||
		    (s = get_pair(c, jo, "stride", op->kernel[0], 1, op->stride)) != NESA_OK ||
		    (s = get_pair(c, jo, "padding", 0, 0, op->pad)) != NESA_OK)
			return s;
		/* A stride pair defaulting from a non-square kernel follows the kernel. */
		if (json_object_get(jo, "stride") == NULL)
			op->stride[1] = op->kernel[1];
		if (op->pad[0] * 2 > op->kernel[0] || op->pad[1] * 2 > op->kernel[1])
			return fail(c, NESA_ESHAPE, "padding must be at most half the kernel");
		shape[1] = conv_out(x->shape[1], op->kernel[0], op->stride[0], op->pad[0]);
		shape[2] = conv_out(x->shape[2], op->kernel[1], op->stride[1], op->pad[1]);
		if (shape[1] < 1 || shape[2] < 1)
			return fail(c, NESA_ESHAPE, "kernel larger than the padded input");
		cost->flops_per_row += (double)x->shape[0] * (double)(shape[1] * shape[2]) *
		                       op->kernel[0] * op->kernel[1];
		break;
	case NESA_OP_GLOBAL_AVGPOOL:
		if (x->ndim != 3)
			return fail(c, NESA_ESHAPE, "input must be [C, H, W] per row");
		ndim = 1;
		cost->flops_per_row += (double)x->row_elems;
		break;
	case NESA_OP_PAD_CHANNELS:
		if (x->ndim != 3)
			return fail(c, NESA_ESHAPE, "input must be [C, H, W] per row");
		if ((s = get_int(c, jo, "pad", INT64_MIN, 0, 65536, &v64)) != NESA_OK)
			return s;
		op->pad_ch = (int)v64;
		if ((s = get_pair(c, jo, "stride", 1, 1, op->stride)) != NESA_OK)
			return s;
		shape[0] = x->shape[0] + 2 * op->pad_ch;
		shape[1] = (x->shape[1] + op->stride[0] - 1) / op->stride[0];
		shape[2] = (x->shape[2] + op->stride[1] - 1) / op->stride[1];
		break;
	case NESA_OP_FLATTEN:
		ndim = 1;
		shape[0] = x->row_elems;
		break;
	case NESA_OP_COUNT:
		return fail(c, NESA_EINTERNAL, "bad op kind");
	}
	return new_value(c, json_string_value(jout), out_dt, ndim, shape, &op->out);
}

static enum nesa_status
compile_block(struct ctx *c, const json_t *jb, struct nesa_block *b, int index)
{
	json_t *jins = json_object_get(jb, "inputs"), *jouts = json_object_get(jb, "outputs");
	json_t *jops = json_object_get(jb, "ops"), *e;
	const char *name = json_string_value(json_object_get(jb, "name"));
	enum nesa_status s;
	size_t i;

	b->index = index;
	b->name = nesa_strdup(name != NULL ? name : "");
	if (b->name == NULL)
		return nesa_err_set(c->err, NESA_ENOMEM, "out of memory");
	c->b = b;
	c->op_index = -1;
	c->values_cap = 0;
	if (!json_is_object(jb))
		return fail(c, NESA_EFORMAT, "block must be an object");
	if (!json_is_array(jins) || json_array_size(jins) < 1 || json_array_size(jins) > 4)
		return fail(c, NESA_EFORMAT, "'inputs' must be an array of 1 to 4 values");
	if (!json_is_array(jouts) || json_array_size(jouts) < 1 || json_array_size(jouts) > 4)
		return fail(c, NESA_EFORMAT, "'outputs' must be an array of 1 to 4 value names");
	if (!json_is_array(jops) || json_array_size(jops) > 4096)
		return fail(c, NESA_EFORMAT, "'ops' must be an array of at most 4096 ops");
	json_array_foreach(jins, i, e) {
		const char *vn = json_string_value(json_object_get(e, "name"));
		const char *dt = json_string_value(json_object_get(e, "dtype"));
		int64_t shape[3];
		int ndim = 0;
		enum nesa_dtype dtype = NESA_F32;

		if (vn == NULL)
			return fail(c, NESA_EFORMAT, "block input %zu needs a 'name'", i);
		if (dt != NULL && strcmp(dt, "f32") != 0) {
			if (strcmp(dt, "i32") != 0)
				return fail(c, NESA_EUNSUPPORTED, "block input '%s' has dtype '%s' (supported: f32, i32)", vn, dt);
			dtype = NESA_I32;
		}
		if ((s = shape_from_json(c, json_object_get(e, "shape"), vn, &ndim, shape)) != NESA_OK)
			return s;
		if (find_value(b, vn) >= 0)
			return fail(c, NESA_EFORMAT, "duplicate block input '%s'", vn);
		if ((s = new_value(c, vn, dtype, ndim, shape, &b->inputs[b->n_inputs])) != NESA_OK)
			return s;
		b->cost.in_bytes_per_row += (uint64_t)b->values[b->inputs[b->n_inputs]].row_elems * 4;
		b->n_inputs++;
	}
	b->ops = nesa_calloc(json_array_size(jops) > 0 ? json_array_size(jops) : 1, sizeof *b->ops);
	if (b->ops == NULL)
		return nesa_err_set(c->err, NESA_ENOMEM, "out of memory");
	json_array_foreach(jops, i, e) {
		const char *opn = json_string_value(json_object_get(e, "op"));
		int k;

		c->op_index = -1;
		if (!json_is_object(e) || opn == NULL)
			return fail(c, NESA_EFORMAT, "op %zu needs an 'op' name", i);
		for (k = 0; k < NESA_OP_COUNT; k++)
			if (strcmp(op_names[k], opn) == 0)
				break;
		if (k == NESA_OP_COUNT)
			return fail(c, NESA_EUNSUPPORTED, "op %zu: unknown op '%s' (supported: %s)", i, opn,
			            nesa_op_list());
		b->ops[i].kind = (enum nesa_op_kind)k;
		b->n_ops = (int)i + 1;
		c->op_index = (int)i;
		if ((s = compile_op(c, e, &b->ops[i])) != NESA_OK)
			return s;
	}
	c->op_index = -1;
	json_array_foreach(jouts, i, e) {
		int v = json_is_string(e) ? find_value(b, json_string_value(e)) : -1;

		if (v < 0)
			return fail(c, NESA_EFORMAT, "block output %zu is not a defined value", i);
		b->outputs[b->n_outputs++] = v;
		b->cost.out_bytes_per_row += (uint64_t)b->values[v].row_elems * 4;
	}
	/* Parameter bytes: each distinct weight once. */
	for (i = 0; i < (size_t)b->n_ops; i++) {
		int w, j;

		for (w = 0; w < 5; w++) {
			const struct nesa_tensor *t = b->ops[i].w[w];
			bool seen = false;

			if (t == NULL)
				continue;
			for (j = 0; j < (int)i && !seen; j++) {
				int u;

				for (u = 0; u < 5; u++)
					if (b->ops[j].w[u] == t)
						seen = true;
			}
			for (j = 0; j < w && !seen; j++)
				if (b->ops[i].w[j] == t)
					seen = true;
			if (!seen)
				b->cost.param_bytes += t->nbytes;
		}
	}
	return NESA_OK;
}

int
nesa_graph_doc_blocks(const json_t *doc)
{
	json_t *n = json_object_get(doc, "n_blocks");

	if (!json_is_integer(n) || json_integer_value(n) < 1 || json_integer_value(n) > 1000000)
		return -1;
	return (int)json_integer_value(n);
}

/* The doc's block array and the absolute index of its first entry. */
static enum nesa_status
doc_blocks(const json_t *doc, json_t **blocks, int *first, int *n_blocks, struct nesa_err *err)
{
	json_t *fb = json_object_get(doc, "first_block"), *ver = json_object_get(doc, "graph_version");

	if (!json_is_object(doc))
		return nesa_err_set(err, NESA_EFORMAT, "invalid graph: not a JSON object");
	if (!json_is_integer(ver))
		return nesa_err_set(err, NESA_EFORMAT, "invalid graph: missing 'graph_version'");
	if (json_integer_value(ver) != NESA_GRAPH_VERSION)
		return nesa_err_set(err, NESA_EVERSION, "invalid graph: graph_version %lld is not supported (this nesa reads version %d)",
		                    (long long)json_integer_value(ver), NESA_GRAPH_VERSION);
	*n_blocks = nesa_graph_doc_blocks(doc);
	*blocks = json_object_get(doc, "blocks");
	*first = fb == NULL ? 0 : json_is_integer(fb) ? (int)json_integer_value(fb) : -1;
	if (*n_blocks < 0 || !json_is_array(*blocks) || *first < 0 ||
	    (size_t)*first + json_array_size(*blocks) > (size_t)*n_blocks)
		return nesa_err_set(err, NESA_EFORMAT, "invalid graph: 'n_blocks', 'first_block' and 'blocks' disagree");
	return NESA_OK;
}

static bool
same_value(const struct nesa_value *a, const struct nesa_value *b)
{
	return strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->ndim == b->ndim &&
	       memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof a->shape[0]) == 0;
}

enum nesa_status
nesa_graph_compile(json_t *doc, struct nesa_tset *ts, int first, int count, struct nesa_graph **out,
                   struct nesa_err *err)
{
	struct nesa_graph *g;
	struct ctx c;
	json_t *blocks;
	int doc_first, n_blocks, i;
	int64_t v;
	enum nesa_status s;

	*out = NULL;
	s = doc_blocks(doc, &blocks, &doc_first, &n_blocks, err);
	if (s != NESA_OK)
		return s;
	if (count < 0)
		count = doc_first + (int)json_array_size(blocks) - first;
	if (first < doc_first || count < 1 || first + count > doc_first + (int)json_array_size(blocks))
		return nesa_err_set(err, NESA_EINVAL, "blocks [%d, %d) are not in this graph (it holds [%d, %d))",
		                    first, first + count, doc_first,
		                    doc_first + (int)json_array_size(blocks));
	g = nesa_calloc(1, sizeof *g);
	if (g == NULL || (g->blocks = nesa_calloc((size_t)count, sizeof *g->blocks)) == NULL) {
		nesa_free(g);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	g->doc = json_incref(doc);
	g->n_blocks = n_blocks;
	g->first = first;
	g->count = count;
	memset(&c, 0, sizeof c);
	c.ts = ts;
	c.err = err;
	if ((s = get_int(&c, doc, "max_positions", 0, 0, INT32_MAX, &v)) != NESA_OK)
		goto fail;
	g->max_positions = (int)v;
	if ((s = get_int(&c, doc, "vocab", 0, 0, INT32_MAX, &v)) != NESA_OK)
		goto fail;
	g->vocab = (int)v;
	for (i = 0; i < count; i++) {
		s = compile_block(&c, json_array_get(blocks, (size_t)(first + i - doc_first)), &g->blocks[i],
		                  first + i);
		if (s != NESA_OK)
			goto fail;
		if (i > 0) {
			const struct nesa_block *p = &g->blocks[i - 1], *b = &g->blocks[i];
			int k;

			c.op_index = -1;
			if (p->n_outputs != b->n_inputs)
				goto chain;
			for (k = 0; k < b->n_inputs; k++)
				if (!same_value(&p->values[p->outputs[k]], &b->values[b->inputs[k]]))
					goto chain;
		}
	}
	g->n_caches = c.cache_next;
	*out = g;
	return NESA_OK;
chain:
	s = fail(&c, NESA_ESHAPE, "its inputs do not match the outputs of block %d (names, dtypes and shapes must agree)",
	         first + i - 1);
fail:
	g->count = i + 1;
	nesa_graph_free(g);
	return s;
}

void
nesa_graph_free(struct nesa_graph *g)
{
	int i, j;

	if (g == NULL)
		return;
	for (i = 0; i < g->count && g->blocks != NULL; i++) {
		struct nesa_block *b = &g->blocks[i];

		for (j = 0; j < b->n_values; j++)
			nesa_free(b->values[j].name);
		for (j = 0; j < b->n_ops; j++) {
			nesa_free(b->ops[j].ch_scale);
			nesa_free(b->ops[j].ch_shift);
		}
		nesa_free(b->values);
		nesa_free(b->ops);
		nesa_free(b->name);
	}
	nesa_free(g->blocks);
	json_decref(g->doc);
	nesa_free(g);
}

enum nesa_status
nesa_graph_doc_weights(const json_t *doc, int first, int count, json_t **names, struct nesa_err *err)
{
	static const char *const keys[] = {"weight", "bias", "mean", "var", "scale",
	                                   "outlier_weight", "outlier_index", "lowrank_a", "lowrank_b"};
	json_t *blocks, *res;
	int doc_first, n_blocks, i;
	enum nesa_status s;

	*names = NULL;
	s = doc_blocks(doc, &blocks, &doc_first, &n_blocks, err);
	if (s != NESA_OK)
		return s;
	if (first < doc_first || count < 1 || first + count > doc_first + (int)json_array_size(blocks))
		return nesa_err_set(err, NESA_EINVAL, "blocks [%d, %d) are not in this graph", first,
		                    first + count);
	res = json_array();
	if (res == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	for (i = first; i < first + count; i++) {
		json_t *ops = json_object_get(json_array_get(blocks, (size_t)(i - doc_first)), "ops"), *op;
		size_t j, k;

		json_array_foreach(ops, j, op) {
			for (k = 0; k < sizeof keys / sizeof keys[0]; k++) {
				json_t *w = json_object_get(op, keys[k]), *e;
				size_t m;
				bool dup = false;

				if (!json_is_string(w))
					continue;
				json_array_foreach(res, m, e)
					if (json_equal(e, w))
						dup = true;
				if (!dup && json_array_append(res, w) != 0) {
					json_decref(res);
					return nesa_err_set(err, NESA_ENOMEM, "out of memory");
				}
			}
		}
	}
	*names = res;
	return NESA_OK;
}

json_t *
nesa_graph_doc_slice(const json_t *doc, int first, int count)
{
	json_t *copy, *blocks, *slice;
	int doc_first, n_blocks, i;

	if (doc_blocks(doc, &blocks, &doc_first, &n_blocks, NULL) != NESA_OK || first < doc_first ||
	    count < 1 || first + count > doc_first + (int)json_array_size(blocks))
		return NULL;
	copy = json_copy((json_t *)doc);
	slice = json_array();
	if (copy == NULL || slice == NULL)
		goto fail;
	for (i = first; i < first + count; i++)
		if (json_array_append(slice, json_array_get(blocks, (size_t)(i - doc_first))) != 0)
			goto fail;
	if (json_object_set_new(copy, "blocks", slice) != 0) {
		slice = NULL;
		goto fail;
	}
	if (json_object_set_new(copy, "first_block", json_integer(first)) != 0)
		goto fail2;
	return copy;
fail:
	json_decref(slice);
fail2:
	json_decref(copy);
	return NULL;
}

json_t *
nesa_block_cost_json(const struct nesa_block *b)
{
	return json_pack("{s:i, s:s, s:I, s:f, s:f, s:I, s:I, s:I}", "index", b->index, "name", b->name,
	                 "param_bytes", (json_int_t)b->cost.param_bytes, "flops_per_token",
	                 b->cost.flops_per_row, "flops_per_token_per_ctx", b->cost.flops_per_ctx,
	                 "kv_bytes_per_token", (json_int_t)b->cost.kv_bytes_per_row,
	                 "in_bytes_per_token", (json_int_t)b->cost.in_bytes_per_row,
	                 "out_bytes_per_token", (json_int_t)b->cost.out_bytes_per_row);
}
