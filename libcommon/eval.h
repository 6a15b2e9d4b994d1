/* SPDX-License-Identifier: MIT */
/*
 * What nesa-route does with a chain: generate text, measure perplexity,
 * classify images.  Written against struct nesa_chain only, so the same
 * code drives one process or a pipeline of machines.
 */
#ifndef NESA_EVAL_H
#define NESA_EVAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "chain.h"
#include "data.h"
#include "tokenizer.h"

/*
 * Receives every token sampled for session `index`, the one that stopped
 * it included, with the margin (nesa_logit_margin) of the logits it was
 * drawn from.  Returning non-OK stops generation with that status.
 */
typedef enum nesa_status (*nesa_token_fn)(void *ctx, int index, int32_t id, float margin);

struct nesa_gen_opts {
	const char *prompt;   /* UTF-8 text, may be empty */
	int prompt_tokens;    /* > 0: instead of prompt, BOS and this many more arbitrary tokens (benchmarks) */
	int n_tokens;         /* new tokens to generate per session */
	float temperature;    /* 0 = greedy */
	float top_p;          /* nucleus cut, 1 = none */
	uint64_t seed;        /* session i samples with seed + i */
	bool ignore_eos;      /* do not stop at BOS/EOS */
	int n_sessions;       /* independent generations decoded together (>= 1) */
	int groups;           /* sessions split into this many groups kept in flight
	                         together through a pipeline (0: one per stage) */
	uint64_t session_base;/* session ids are session_base + i */
	int retries;          /* restarts of a failed pipeline, sessions replayed (0: fail) */
	nesa_token_fn on_token; /* may be NULL */
	void *token_ctx;
};

struct nesa_gen_stats {
	int64_t prompt_tokens; /* per session */
	int64_t generated;     /* over all sessions */
	double prefill_s, decode_s;
};

/*
 * Receives text as it is produced: bytes of session `index` (0-based).
 * Returning non-OK stops generation with that status.
 */
typedef enum nesa_status (*nesa_text_fn)(void *ctx, int index, const char *bytes, size_t n);

/*
 * Encodes the prompt with BOS, prefills it, then samples up to n_tokens
 * new tokens per session, stopping a session at BOS or EOS unless
 * ignore_eos.  Emits the prompt's text, then each new token's text.
 * Through a pipeline, the sessions form groups that are in different
 * stages at the same time, so every stage has work (pipeline parallelism);
 * each session's tokens are the same whatever the grouping.
 */
enum nesa_status nesa_generate(struct nesa_chain *c, const struct nesa_tokenizer *tok,
                               const struct nesa_gen_opts *o, nesa_text_fn emit, void *ctx,
                               struct nesa_gen_stats *st, struct nesa_err *err);

/*
 * A generation kept for a machine-readable result: each session's text,
 * token ids and margins.  nesa_gen_record_text and nesa_gen_record_token
 * are the callbacks of nesa_generate (with the record as their context);
 * a failure in them (out of memory) is left in *err of init.
 */
struct nesa_gen_record {
	int n;                 /* sessions */
	char **texts;          /* (n) each session's bytes so far */
	size_t *lens;          /* (n) */
	json_t *tokens;        /* array of n arrays of ids */
	json_t *margins;       /* array of n arrays of margins */
	struct nesa_err *err;
};

enum nesa_status nesa_gen_record_init(struct nesa_gen_record *r, int n, struct nesa_err *err);
enum nesa_status nesa_gen_record_text(void *r, int index, const char *bytes, size_t n);
enum nesa_status nesa_gen_record_token(void *r, int index, int32_t id, float margin);

/*
 * {"mode": "generate", "model", "prompt_tokens", "generated", "samples":
 * [{"text", "tokens", "margins"}...]} (a new reference, NULL when out of
 * memory).  Bytes of a text that are not UTF-8 become U+FFFD.
 */
json_t *nesa_gen_record_json(const struct nesa_gen_record *r, const char *model,
                             const struct nesa_gen_stats *st);
void nesa_gen_record_release(struct nesa_gen_record *r);

struct nesa_ppl_opts {
	int64_t max_bytes; /* score only the first max_bytes of text (0 = all) */
	int window;        /* tokens per window (0 = the model's context, at most 512) */
	int batch;         /* windows evaluated together (0 = 8) */
	int retries;       /* restarts of a failed pipeline (0: fail) */
};

struct nesa_ppl_result {
	int64_t tokens;    /* tokens in the stream, BOS included */
	int64_t scored;    /* tokens whose probability was scored */
	int64_t windows;
	double nll;        /* mean negative log-likelihood, nats */
	double ppl;        /* exp(nll) */
};

/*
 * The tokens of text as the perplexity protocol has them: each non-empty
 * paragraph (cut at "\n\n", surrounding whitespace removed) encoded with
 * BOS, concatenated.  With limit > 0, encoding stops once limit tokens are
 * there and *n_all is at most limit.  *all is freed with nesa_free.
 */
enum nesa_status nesa_tokenize_paragraphs(const struct nesa_tokenizer *tok, const char *text, size_t len,
                                          size_t limit, int32_t **all, size_t *n_all, struct nesa_err *err);

/*
 * Perplexity of text under the protocol of nesa-route(1): the text is cut
 * into paragraphs at blank lines ("\n\n"), each paragraph with surrounding
 * whitespace removed is encoded with BOS, empty paragraphs are skipped, the
 * paragraphs' tokens are concatenated and cut into non-overlapping windows
 * of `window` tokens, each window is run from position 0, and every token
 * of a window but its first is scored.
 */
enum nesa_status nesa_perplexity(struct nesa_chain *c, const struct nesa_tokenizer *tok,
                                 const char *text, size_t len, const struct nesa_ppl_opts *o,
                                 struct nesa_ppl_result *res, struct nesa_err *err);

struct nesa_cls_result {
	int64_t n, correct;
};

/*
 * Top-1 accuracy of the chain on a dataset, batch images per run (0 = 64);
 * a failed pipeline is restarted up to retries times.
 */
enum nesa_status nesa_classify(struct nesa_chain *c, const struct nesa_dataset *ds, int batch,
                               int retries, struct nesa_cls_result *res, struct nesa_err *err);

#endif
