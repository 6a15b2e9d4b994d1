/* SPDX-License-Identifier: MIT */
/*
 * Sampling; see sample.h.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>

#include "alloc.h"
#include "sample.h"

uint64_t
nesa_rand_u64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

float
nesa_rand_float(uint64_t *state)
{
	/* 24 random bits: every value exactly representable, never 1.0. */
	return (float)(nesa_rand_u64(state) >> 40) * 0x1p-24f;
}

enum nesa_status
nesa_sampler_init(struct nesa_sampler *s, int vocab, float temperature, float top_p, uint64_t seed,
                  struct nesa_err *err)
{
	s->sorted = NULL;
	if (vocab < 1)
		return nesa_err_set(err, NESA_EINVAL, "vocabulary size %d is invalid", vocab);
	if (!(temperature >= 0) || !isfinite(temperature))
		return nesa_err_set(err, NESA_EINVAL, "temperature %g is invalid (must be >= 0)",
		                    (double)temperature);
	if (!(top_p > 0 && top_p <= 1))
		return nesa_err_set(err, NESA_EINVAL, "top-p %g is invalid (must be in (0, 1])", (double)top_p);
	s->vocab = vocab;
	s->temperature = temperature;
	s->top_p = top_p;
	s->state = seed;
	if (temperature > 0 && top_p < 1) {
		s->sorted = nesa_malloc((size_t)vocab * sizeof *s->sorted);
		if (s->sorted == NULL)
			return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	return NESA_OK;
}

void
nesa_sampler_release(struct nesa_sampler *s)
{
	nesa_free(s->sorted);
	s->sorted = NULL;
}

float
nesa_logit_margin(const float *logits, int n)
{
	float a = -INFINITY, b = -INFINITY;
	int i;

	for (i = 0; i < n; i++) {
		if (logits[i] > a) {
			b = a;
			a = logits[i];
		} else if (logits[i] > b) {
			b = logits[i];
		}
	}
	return n > 1 ? a - b : 0.0f;
}

static int
cmp_prob(const void *a, const void *b)
{
	const struct nesa_prob *x = a, *y = b;

	/* Descending probability, then ascending id: a total order, so the
	 * result never depends on qsort's implementation. */
	if (x->p != y->p)
		return x->p > y->p ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

int32_t
nesa_sampler_next(struct nesa_sampler *s, float *logits)
{
	float mx = -INFINITY, sum = 0, u, cdf = 0;
	int32_t best = 0;
	int i, n;

	for (i = 0; i < s->vocab; i++)
		if (logits[i] > mx) {
			mx = logits[i];
			best = i;
		}
	if (s->temperature == 0)
		return best;
	for (i = 0; i < s->vocab; i++) {
		logits[i] = expf((logits[i] - mx) / s->temperature);
		sum += logits[i];
	}
	u = nesa_rand_float(&s->state);
	if (s->sorted == NULL) {
		for (i = 0; i < s->vocab; i++) {
			cdf += logits[i] / sum;
			if (u < cdf)
				return i;
		}
		return s->vocab - 1; /* rounding left u above the total */
	}
	/* Tokens below (1 - top_p) / (vocab - 1) cannot be in the nucleus: skip sorting them. */
	n = 0;
	for (i = 0; i < s->vocab; i++) {
		float p = logits[i] / sum;

		if (p >= (1.0f - s->top_p) / (float)(s->vocab > 1 ? s->vocab - 1 : 1)) {
			s->sorted[n].p = p;
			s->sorted[n++].id = i;
		}
	}
	qsort(s->sorted, (size_t)n, sizeof *s->sorted, cmp_prob);
	for (i = 0; i < n; i++) {
		cdf += s->sorted[i].p;
		if (cdf > s->top_p) {
			n = i + 1;
			break;
		}
	}
	u *= cdf;
	cdf = 0;
	for (i = 0; i < n; i++) {
		cdf += s->sorted[i].p;
		if (u < cdf)
			return s->sorted[i].id;
	}
	return s->sorted[n - 1].id;
}
