/* SPDX-License-Identifier: MIT */
/*
 * Chains: the interface and the local backend; see chain.h.
 */
#include "config.h"

#include <string.h>

#include "alloc.h"
#include "chain.h"

struct local {
	int n;
	struct nesa_graph **g;  /* (n) */
	struct nesa_exec **e;   /* (n) */
};

static enum nesa_status
local_run(void *impl, const struct nesa_seg *segs, int n_segs, const void *in, const float **out,
          int64_t *out_rows, struct nesa_err *err)
{
	struct local *l = impl;
	const void *ins[1] = {in};
	const float *outs[4] = {NULL};
	enum nesa_status s = NESA_OK;
	int k;

	/* Each stage's output rows feed the next, which sees the same segments. */
	for (k = 0; k < l->n && s == NESA_OK; k++) {
		s = nesa_exec_run(l->e[k], segs, n_segs, ins, outs, out_rows, err);
		ins[0] = outs[0];
	}
	if (s == NESA_OK)
		*out = outs[0];
	return s;
}

static void
local_end(void *impl, uint64_t session)
{
	struct local *l = impl;
	int k;

	for (k = 0; k < l->n; k++)
		nesa_exec_end(l->e[k], session);
}

static void
local_free(void *impl)
{
	struct local *l = impl;
	int k;

	for (k = 0; k < l->n; k++) {
		if (l->e != NULL)
			nesa_exec_free(l->e[k]);
		if (l->g != NULL)
			nesa_graph_free(l->g[k]);
	}
	nesa_free(l->e);
	nesa_free(l->g);
	nesa_free(l);
}

static const struct nesa_chain_ops local_ops = {local_run, local_end, local_free, NULL, NULL, NULL, NULL};

/* Checks that the models are consecutive slices of one model. */
static enum nesa_status
check_cover(struct nesa_model **m, int n, struct nesa_err *err)
{
	int k, at = 0;

	for (k = 0; k < n; k++) {
		if (m[k]->first != at || m[k]->n_blocks != m[0]->n_blocks)
			return nesa_err_set(err, NESA_EINVAL,
			                    "'%s' holds blocks [%d, %d) of %d, but the chain needs block %d of %d next",
			                    m[k]->path, m[k]->first, m[k]->first + m[k]->count, m[k]->n_blocks, at,
			                    m[0]->n_blocks);
		if (k > 0 && m[k]->have_id && m[0]->have_id &&
		    memcmp(m[k]->source_sha256, m[0]->source_sha256, 32) != 0)
			return nesa_err_set(err, NESA_EINVAL, "'%s' and '%s' are shards of different models",
			                    m[0]->path, m[k]->path);
		at += m[k]->count;
	}
	if (at != m[0]->n_blocks)
		return nesa_err_set(err, NESA_EINVAL, "the chain ends at block %d of %d: '%s' is not the last stage",
		                    at, m[0]->n_blocks, m[n - 1]->path);
	return NESA_OK;
}

enum nesa_status
nesa_chain_local(struct nesa_model **m, int n, const struct nesa_exec_opts *opts,
                 struct nesa_chain **out, struct nesa_err *err)
{
	struct nesa_chain *c;
	struct local *l;
	enum nesa_status s;
	const struct nesa_block *first, *last;
	const struct nesa_value *vin, *vout;
	int k;

	*out = NULL;
	if (n < 1)
		return nesa_err_set(err, NESA_EINVAL, "no model to run");
	s = check_cover(m, n, err);
	if (s != NESA_OK)
		return s;
	c = nesa_calloc(1, sizeof *c);
	l = nesa_calloc(1, sizeof *l);
	if (c == NULL || l == NULL || (l->g = nesa_calloc((size_t)n, sizeof *l->g)) == NULL ||
	    (l->e = nesa_calloc((size_t)n, sizeof *l->e)) == NULL) {
		if (l != NULL)
			local_free(l);
		nesa_free(c);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	l->n = n;
	for (k = 0; k < n && s == NESA_OK; k++) {
		s = nesa_graph_compile(m[k]->graph, m[k]->weights, m[k]->first, m[k]->count, &l->g[k], err);
		if (s == NESA_OK)
			s = nesa_exec_new(l->g[k], opts, &l->e[k], err);
		if (s != NESA_OK)
			nesa_err_prefix(err, "cannot load '%s'", m[k]->path);
	}
	if (s != NESA_OK) {
		local_free(l);
		nesa_free(c);
		return s;
	}
	/* Slices compile separately: check that each stage's outputs feed the next. */
	for (k = 1; k < n; k++) {
		const struct nesa_block *p = &l->g[k - 1]->blocks[l->g[k - 1]->count - 1];
		const struct nesa_block *b = &l->g[k]->blocks[0];

		if (p->n_outputs != b->n_inputs ||
		    p->values[p->outputs[0]].row_elems != b->values[b->inputs[0]].row_elems) {
			local_free(l);
			nesa_free(c);
			return nesa_err_set(err, NESA_ESHAPE, "the outputs of '%s' do not match the inputs of '%s'",
			                    m[k - 1]->path, m[k]->path);
		}
	}
	first = &l->g[0]->blocks[0];
	last = &l->g[n - 1]->blocks[l->g[n - 1]->count - 1];
	vin = &first->values[first->inputs[0]];
	vout = &last->values[last->outputs[0]];
	if (first->n_inputs != 1 || last->n_outputs != 1) {
		local_free(l);
		nesa_free(c);
		return nesa_err_set(err, NESA_EUNSUPPORTED,
		                    "'%s': models with several inputs or outputs cannot be driven yet",
		                    m[0]->path);
	}
	c->ops = &local_ops;
	c->impl = l;
	c->in_dtype = vin->dtype;
	c->in_ndim = vin->ndim;
	memcpy(c->in_shape, vin->shape, sizeof c->in_shape);
	c->in_elems = vin->row_elems;
	c->out_elems = vout->row_elems;
	c->max_positions = l->g[0]->max_positions;
	*out = c;
	return NESA_OK;
}

void
nesa_chain_free(struct nesa_chain *c)
{
	if (c == NULL)
		return;
	if (c->ops != NULL)
		c->ops->free(c->impl);
	nesa_free(c);
}
