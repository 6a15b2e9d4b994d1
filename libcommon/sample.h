/* SPDX-License-Identifier: MIT */
/*
 * Token sampling: greedy, temperature, nucleus (top-p), from a seeded
 * generator whose sequence depends only on the seed, so the same seed gives
 * the same text on any machine and however the model is split.
 */
#ifndef NESA_SAMPLE_H
#define NESA_SAMPLE_H

#include <stdint.h>

#include "err.h"

struct nesa_sampler {
	int vocab;
	float temperature;  /* 0 = greedy */
	float top_p;        /* 1 = no nucleus cut */
	uint64_t state;     /* splitmix64 state */
	struct nesa_prob { float p; int32_t id; } *sorted; /* (vocab) scratch for top-p */
};

/* Sets up a sampler; NESA_EINVAL for a bad temperature or top_p. */
enum nesa_status nesa_sampler_init(struct nesa_sampler *s, int vocab, float temperature,
                                   float top_p, uint64_t seed, struct nesa_err *err);
void nesa_sampler_release(struct nesa_sampler *s);

/*
 * Picks the next token from logits (vocab floats, modified in place).
 * Greedy picks the largest logit, the lowest id on ties.  Otherwise one
 * uniform draw per call: softmax(logits / T), then, when top_p < 1, the
 * smallest set of most likely tokens whose probability reaches top_p.
 */
int32_t nesa_sampler_next(struct nesa_sampler *s, float *logits);

/*
 * The largest logit minus the second largest (0 for a tie or one token):
 * how far greedy decoding was from choosing differently.  Read-only.
 */
float nesa_logit_margin(const float *logits, int n);

/* Uniform float in [0, 1) from a splitmix64 state. */
float nesa_rand_float(uint64_t *state);
uint64_t nesa_rand_u64(uint64_t *state);

#endif
