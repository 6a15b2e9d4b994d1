/* SPDX-License-Identifier: MIT */
/*
 * Chains: the interface and the local backend; see chain.h.
 */
#include "config.h"

#include <string.h>

#include "alloc.h"
#include "chain.h"

struct local {
	struct nesa_graph *g;
	struct nesa_exec *e;
};

static enum nesa_status
local_run(void *impl, const struct nesa_seg *segs, int n_segs, const void *in, const float **out,
          int64_t *out_rows, struct nesa_err *err)
{
	struct local *l = impl;
	const void *ins[1] = {in};
	const float *outs[4];
	enum nesa_status s;

	s = nesa_exec_run(l->e, segs, n_segs, ins, outs, out_rows, err);
	if (s == NESA_OK)
		*out = outs[0];
	return s;
}

static void
local_end(void *impl, uint64_t session)
{
	nesa_exec_end(((struct local *)impl)->e, session);
}

static void
local_free(void *impl)
{
	struct local *l = impl;

	nesa_exec_free(l->e);
	nesa_graph_free(l->g);
	nesa_free(l);
}

static const struct nesa_chain_ops local_ops = {local_run, local_end, local_free};

enum nesa_status
nesa_chain_local(struct nesa_model *m, const struct nesa_exec_opts *opts, struct nesa_chain **out,
                 struct nesa_err *err)
{
	struct nesa_chain *c;
	struct local *l;
	enum nesa_status s;
	const struct nesa_block *first, *last;
	const struct nesa_value *vin, *vout;

	*out = NULL;
	if (m->first != 0 || m->count != m->n_blocks)
		return nesa_err_set(err, NESA_EINVAL,
		                    "'%s' holds blocks [%d, %d) of %d: a local run needs the whole model",
		                    m->path, m->first, m->first + m->count, m->n_blocks);
	c = nesa_calloc(1, sizeof *c);
	l = nesa_calloc(1, sizeof *l);
	if (c == NULL || l == NULL) {
		nesa_free(c);
		nesa_free(l);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	s = nesa_graph_compile(m->graph, m->weights, m->first, m->count, &l->g, err);
	if (s == NESA_OK)
		s = nesa_exec_new(l->g, opts, &l->e, err);
	if (s != NESA_OK) {
		nesa_err_prefix(err, "cannot load '%s'", m->path);
		local_free(l);
		nesa_free(c);
		return s;
	}
	first = &l->g->blocks[0];
	last = &l->g->blocks[l->g->count - 1];
	vin = &first->values[first->inputs[0]];
	vout = &last->values[last->outputs[0]];
	if (first->n_inputs != 1 || last->n_outputs != 1) {
		local_free(l);
		nesa_free(c);
		return nesa_err_set(err, NESA_EUNSUPPORTED,
		                    "'%s': models with several inputs or outputs cannot be driven yet",
		                    m->path);
	}
	c->ops = &local_ops;
	c->impl = l;
	c->in_dtype = vin->dtype;
	c->in_ndim = vin->ndim;
	memcpy(c->in_shape, vin->shape, sizeof c->in_shape);
	c->in_elems = vin->row_elems;
	c->out_elems = vout->row_elems;
	c->max_positions = l->g->max_positions;
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
