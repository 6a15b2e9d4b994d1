/* SPDX-License-Identifier: MIT */
/*
 * Generation, perplexity and classification over a chain; see eval.h.
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "eval.h"
#include "log.h"
#include "sample.h"

/* Per-session generation state. */
struct gen {
	struct nesa_sampler sampler;
	int32_t last;     /* last token fed */
	uint32_t pos;     /* positions fed so far */
	int produced;     /* new tokens so far */
	bool done;
	int32_t *hist;    /* (pos) every token fed, to replay after a failure */
};

/* A group of sessions that goes through the chain as one batch. */
struct group {
	int first, count;        /* sessions [first, first + count) */
	struct nesa_seg *segs;   /* (count) the batch in flight */
	int32_t *in;             /* (count * max_len) its tokens */
	int *who;                /* (count) session of each segment */
	int n;                   /* segments in flight */
};

/*
 * After a stage failed: restart the chain and send again every group in
 * flight, each session replaying all its tokens from position 0 so the new
 * stages rebuild its KV cache (the client's history is the source of truth,
 * as in Petals).  Sampling goes on from the same state, so the text is what
 * it would have been without the failure.
 */
static enum nesa_status
recover(struct nesa_chain *c, struct group *grp, const int *fifo, int head, int pending, int n_groups,
        struct gen *g, uint64_t base, int *retries, struct nesa_err *err)
{
	struct nesa_err why;
	int q, k;
	enum nesa_status s;

	if (*retries <= 0 || c->ops->restart == NULL ||
	    (err->status != NESA_EREMOTE && err->status != NESA_ETIMEOUT))
		return err->status;
	nesa_err_copy(&why, err);
	for (;;) {
		(*retries)--;
		nesa_log(NESA_LOG_WARN, "%s; restarting the stages and replaying %d group(s) (%d retries left)",
		         nesa_err_msg(&why), pending, *retries);
		s = c->ops->restart(c->impl, err);
		for (q = 0; q < pending && s == NESA_OK; q++) {
			struct group *gr = &grp[fifo[(head + q) % n_groups]];
			size_t at = 0;

			for (k = 0; k < gr->n; k++) {
				const struct gen *gi = &g[gr->who[k]];

				gr->segs[k] = (struct nesa_seg){base + (uint64_t)gr->who[k], 0, gi->pos, true};
				memcpy(gr->in + at, gi->hist, gi->pos * sizeof *gr->in);
				at += gi->pos;
			}
			s = c->ops->submit(c->impl, gr->segs, gr->n, gr->in, err);
		}
		if (s == NESA_OK || *retries <= 0 || (s != NESA_EREMOTE && s != NESA_ETIMEOUT))
			return s;
		nesa_err_copy(&why, err);
	}
}

static enum nesa_status
emit_token(const struct nesa_tokenizer *tok, int32_t prev, int32_t id, nesa_text_fn emit, void *ctx,
           int index, struct nesa_err *err)
{
	const char *text;
	size_t n;
	enum nesa_status s;

	s = nesa_tokenizer_decode_token(tok, prev, id, 0, &text, &n, err);
	if (s != NESA_OK || n == 0)
		return s;
	return emit(ctx, index, text, n);
}

enum nesa_status
nesa_gen_record_init(struct nesa_gen_record *r, int n, struct nesa_err *err)
{
	int i;

	memset(r, 0, sizeof *r);
	r->n = n;
	r->err = err;
	r->texts = nesa_calloc((size_t)n, sizeof *r->texts);
	r->lens = nesa_calloc((size_t)n, sizeof *r->lens);
	r->tokens = json_array();
	r->margins = json_array();
	for (i = 0; r->tokens != NULL && r->margins != NULL && i < n; i++)
		if (json_array_append_new(r->tokens, json_array()) != 0 ||
		    json_array_append_new(r->margins, json_array()) != 0)
			break;
	if (r->texts == NULL || r->lens == NULL || i < n) {
		nesa_gen_record_release(r);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	return NESA_OK;
}

enum nesa_status
nesa_gen_record_text(void *ctx, int index, const char *bytes, size_t n)
{
	struct nesa_gen_record *r = ctx;
	char *t = nesa_realloc(r->texts[index], r->lens[index] + n + 1);

	if (t == NULL)
		return nesa_err_set(r->err, NESA_ENOMEM, "out of memory");
	memcpy(t + r->lens[index], bytes, n);
	r->lens[index] += n;
	t[r->lens[index]] = '\0';
	r->texts[index] = t;
	return NESA_OK;
}

enum nesa_status
nesa_gen_record_token(void *ctx, int index, int32_t id, float margin)
{
	struct nesa_gen_record *r = ctx;

	/* JSON has no infinity: a margin over a -inf logit is null. */
	if (json_array_append_new(json_array_get(r->tokens, (size_t)index), json_integer(id)) != 0 ||
	    json_array_append_new(json_array_get(r->margins, (size_t)index),
	                          isfinite(margin) ? json_real(margin) : json_null()) != 0)
		return nesa_err_set(r->err, NESA_ENOMEM, "out of memory");
	return NESA_OK;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629), 0 if there is none. */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
	unsigned lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4;
	else
		return 0;
	/* Second-byte limits exclude overlong forms, surrogates and > U+10FFFF. */
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

/* text as a JSON string, each byte outside a well-formed sequence as U+FFFD. */
static json_t *
json_text(const char *text, size_t n)
{
	const unsigned char *u = (const unsigned char *)text;
	char *buf;
	size_t i = 0, o = 0, k;
	json_t *j;

	if (n > SIZE_MAX / 3 || (buf = nesa_malloc(3 * n + 1)) == NULL)
		return NULL;
	while (i < n) {
		k = utf8_seq(u + i, n - i);
		if (k == 0) {
			memcpy(buf + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
		} else {
			memcpy(buf + o, u + i, k);
			o += k;
			i += k;
		}
	}
	j = json_stringn(buf, o);
	nesa_free(buf);
	return j;
}

json_t *
nesa_gen_record_json(const struct nesa_gen_record *r, const char *model, const struct nesa_gen_stats *st)
{
	json_t *samples = json_array();
	int i;

	if (samples == NULL)
		return NULL;
	for (i = 0; i < r->n; i++) {
		json_t *text = json_text(r->texts[i] != NULL ? r->texts[i] : "", r->lens[i]);

		if (text == NULL ||
		    json_array_append_new(samples, json_pack("{s:o, s:O, s:O}", "text", text,
		                                             "tokens", json_array_get(r->tokens, (size_t)i),
		                                             "margins", json_array_get(r->margins, (size_t)i))) != 0) {
			json_decref(samples);
			return NULL;
		}
	}
	return json_pack("{s:s, s:s?, s:I, s:I, s:o}", "mode", "generate", "model", model,
	                 "prompt_tokens", (json_int_t)st->prompt_tokens, "generated", (json_int_t)st->generated,
	                 "samples", samples);
}

void
nesa_gen_record_release(struct nesa_gen_record *r)
{
	int i;

	for (i = 0; r->texts != NULL && i < r->n; i++)
		nesa_free(r->texts[i]);
	nesa_free(r->texts);
	nesa_free(r->lens);
	json_decref(r->tokens);
	json_decref(r->margins);
	memset(r, 0, sizeof *r);
}

/* Sends a group's batch: asynchronously when the chain can, else at once. */
static enum nesa_status
send_group(struct nesa_chain *c, struct group *gr, const float **out, int64_t *rows,
           struct nesa_err *err)
{
	if (c->ops->submit != NULL)
		return c->ops->submit(c->impl, gr->segs, gr->n, gr->in, err);
	return nesa_chain_run(c, gr->segs, gr->n, gr->in, out, rows, err);
}

enum nesa_status
nesa_generate(struct nesa_chain *c, const struct nesa_tokenizer *tok, const struct nesa_gen_opts *o,
              nesa_text_fn emit, void *ctx, struct nesa_gen_stats *st, struct nesa_err *err)
{
	const int ns = o->n_sessions > 0 ? o->n_sessions : 1;
	const int32_t bos = nesa_tokenizer_bos(tok), eos = nesa_tokenizer_eos(tok);
	struct gen *g = NULL;
	struct group *grp = NULL;
	int *fifo = NULL;        /* groups in flight, oldest first */
	int32_t *ids = NULL;
	size_t n_ids = 0;
	const float *out = NULL;
	float *logits = NULL;
	int64_t rows = 0;
	double t0;
	int i, k, n_groups, head = 0, pending = 0, retries = o->retries;
	size_t j, max_len;
	enum nesa_status s;

	memset(st, 0, sizeof *st);
	if (c->in_dtype != NESA_I32)
		return nesa_err_set(err, NESA_EINVAL, "the model does not take token ids: it cannot generate text");
	if (nesa_tokenizer_vocab_size(tok) > c->out_elems)
		return nesa_err_set(err, NESA_EINVAL, "the tokenizer has %d tokens but the model scores %lld",
		                    nesa_tokenizer_vocab_size(tok), (long long)c->out_elems);
	if (o->prompt_tokens > 0) {
		/* A synthetic prompt: BOS, then ids cycling over the vocabulary's middle. */
		ids = nesa_malloc(((size_t)o->prompt_tokens + 1) * sizeof *ids);
		if (ids == NULL)
			return nesa_err_set(err, NESA_ENOMEM, "out of memory");
		ids[0] = bos >= 0 ? bos : 0;
		for (j = 1; j <= (size_t)o->prompt_tokens; j++)
			ids[j] = (int32_t)(300 + (j * 7919) % (size_t)(c->out_elems > 600 ? c->out_elems - 600 : 1));
		n_ids = (size_t)o->prompt_tokens + 1;
		s = NESA_OK;
	} else {
		s = nesa_tokenizer_encode(tok, o->prompt != NULL ? o->prompt : "",
		                          o->prompt != NULL ? strlen(o->prompt) : 0, NESA_TOK_BOS, &ids, &n_ids, err);
	}
	if (s != NESA_OK)
		return s;
	if (n_ids == 0) {
		nesa_free(ids);
		return nesa_err_set(err, NESA_EINVAL, "the tokenizer has no BOS token and the prompt is empty");
	}
	if (c->max_positions > 0 && n_ids + (size_t)o->n_tokens > (size_t)c->max_positions)
		nesa_log(NESA_LOG_WARN, "prompt (%zu tokens) and %d new tokens exceed the context of %d: generation will stop there",
		         n_ids, o->n_tokens, c->max_positions);
	st->prompt_tokens = (int64_t)n_ids;
	/* Groups only help when batches can be in flight together. */
	n_groups = c->ops->submit == NULL ? 1 : o->groups > 0 ? o->groups : 2;
	if (n_groups > ns)
		n_groups = ns;
	max_len = n_ids + (size_t)o->n_tokens;
	g = nesa_calloc((size_t)ns, sizeof *g);
	grp = nesa_calloc((size_t)n_groups, sizeof *grp);
	fifo = nesa_calloc((size_t)n_groups, sizeof *fifo);
	logits = nesa_malloc((size_t)c->out_elems * sizeof *logits);
	if (g == NULL || grp == NULL || fifo == NULL || logits == NULL)
		goto oom;
	for (k = 0; k < n_groups; k++) {
		grp[k].first = k * ns / n_groups;
		grp[k].count = (k + 1) * ns / n_groups - grp[k].first;
		grp[k].segs = nesa_calloc((size_t)grp[k].count, sizeof *grp[k].segs);
		grp[k].in = nesa_malloc((size_t)grp[k].count * max_len * sizeof *grp[k].in);
		grp[k].who = nesa_calloc((size_t)grp[k].count, sizeof *grp[k].who);
		if (grp[k].segs == NULL || grp[k].in == NULL || grp[k].who == NULL)
			goto oom;
	}
	for (i = 0; i < ns; i++) {
		s = nesa_sampler_init(&g[i].sampler, (int)c->out_elems, o->temperature, o->top_p,
		                      o->seed + (uint64_t)i, err);
		if (s != NESA_OK)
			goto out;
		g[i].hist = nesa_malloc(max_len * sizeof *g[i].hist);
		if (g[i].hist == NULL)
			goto oom;
		memcpy(g[i].hist, ids, n_ids * sizeof *ids);
	}
	/* The prompt's own text first, as every session starts with it. */
	for (j = 1; j < n_ids; j++)
		for (i = 0; i < ns; i++)
			if ((s = emit_token(tok, ids[j - 1], ids[j], emit, ctx, i, err)) != NESA_OK)
				goto out;
	/* Prefill: each group's prompts in one batch, last rows only. */
	t0 = nesa_now();
	for (k = 0; k < n_groups; k++) {
		struct group *gr = &grp[k];

		for (gr->n = 0; gr->n < gr->count; gr->n++) {
			i = gr->first + gr->n;
			gr->segs[gr->n] = (struct nesa_seg){o->session_base + (uint64_t)i, 0, (uint32_t)n_ids, true};
			gr->who[gr->n] = i;
			memcpy(gr->in + (size_t)gr->n * n_ids, ids, n_ids * sizeof *ids);
			g[i].last = ids[n_ids - 1];
			g[i].pos = (uint32_t)n_ids;
		}
		fifo[(head + pending++) % n_groups] = k;
		if ((s = send_group(c, gr, &out, &rows, err)) != NESA_OK &&
		    (s = recover(c, grp, fifo, head, pending, n_groups, g, o->session_base, &retries, err)) != NESA_OK)
			goto out;
	}
	while (pending > 0) {
		struct group *gr = &grp[fifo[head]];
		int n_next = 0;

		if (c->ops->collect != NULL && (s = c->ops->collect(c->impl, &out, &rows, err)) != NESA_OK) {
			if ((s = recover(c, grp, fifo, head, pending, n_groups, g, o->session_base, &retries, err)) != NESA_OK)
				goto out;
			continue;
		}
		head = (head + 1) % n_groups;
		pending--;
		if (st->prefill_s == 0 && st->generated == 0)
			st->prefill_s = nesa_now() - t0;
		/* Sample each session of the group from its row of logits. */
		for (k = 0; k < gr->n; k++) {
			int32_t next;
			float margin;

			i = gr->who[k];
			memcpy(logits, out + (int64_t)k * c->out_elems, (size_t)c->out_elems * sizeof *logits);
			margin = o->on_token != NULL ? nesa_logit_margin(logits, (int)c->out_elems) : 0.0f;
			next = nesa_sampler_next(&g[i].sampler, logits);
			if (o->on_token != NULL && (s = o->on_token(o->token_ctx, i, next, margin)) != NESA_OK)
				goto out;
			if (!o->ignore_eos && (next == bos || next == eos)) {
				g[i].done = true;
				continue;
			}
			if ((s = emit_token(tok, g[i].last, next, emit, ctx, i, err)) != NESA_OK)
				goto out;
			g[i].last = next;
			st->generated++;
			if (++g[i].produced >= o->n_tokens ||
			    (c->max_positions > 0 && g[i].pos >= (uint32_t)c->max_positions)) {
				g[i].done = true;
				continue;
			}
			gr->segs[n_next] = (struct nesa_seg){o->session_base + (uint64_t)i, g[i].pos, 1, true};
			gr->who[n_next] = i;
			gr->in[n_next++] = next;
			g[i].hist[g[i].pos++] = next;
		}
		gr->n = n_next;
		if (n_next > 0) {
			fifo[(head + pending++) % n_groups] = (int)(gr - grp);
			if ((s = send_group(c, gr, &out, &rows, err)) != NESA_OK &&
			    (s = recover(c, grp, fifo, head, pending, n_groups, g, o->session_base, &retries, err)) != NESA_OK)
				goto out;
		}
	}
	st->decode_s = nesa_now() - t0 - st->prefill_s;
	goto out;
oom:
	s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
out:
	for (i = 0; g != NULL && i < ns; i++) {
		nesa_sampler_release(&g[i].sampler);
		nesa_free(g[i].hist);
		if (s == NESA_OK)
			nesa_chain_end(c, o->session_base + (uint64_t)i);
	}
	for (k = 0; grp != NULL && k < n_groups; k++) {
		nesa_free(grp[k].segs);
		nesa_free(grp[k].in);
		nesa_free(grp[k].who);
	}
	nesa_free(grp);
	nesa_free(fifo);
	nesa_free(g);
	nesa_free(logits);
	nesa_free(ids);
	return s;
}

/*
 * A batch that holds whole sequences (perplexity windows, images): after a
 * stage failure the chain restarts and the same batch runs again.
 */
static enum nesa_status
run_retry(struct nesa_chain *c, const struct nesa_seg *segs, int n_segs, const void *in,
          const float **out, int64_t *rows, int *retries, struct nesa_err *err)
{
	enum nesa_status s = nesa_chain_run(c, segs, n_segs, in, out, rows, err);

	while (s != NESA_OK && (s == NESA_EREMOTE || s == NESA_ETIMEOUT) && *retries > 0 &&
	       c->ops->restart != NULL) {
		(*retries)--;
		nesa_log(NESA_LOG_WARN, "%s; restarting the stages and running the batch again (%d retries left)",
		         nesa_err_msg(err), *retries);
		s = c->ops->restart(c->impl, err);
		if (s == NESA_OK)
			s = nesa_chain_run(c, segs, n_segs, in, out, rows, err);
	}
	return s;
}

enum nesa_status
nesa_tokenize_paragraphs(const struct nesa_tokenizer *tok, const char *text, size_t len, size_t limit,
                         int32_t **all, size_t *n_all, struct nesa_err *err)
{
	size_t pos = 0, cap = 0, n = 0;
	int32_t *buf = NULL;
	enum nesa_status s = NESA_OK;

	while (pos < len && (limit == 0 || n < limit)) {
		const char *p = text + pos, *end = NULL;
		size_t plen, k;
		int32_t *ids;
		size_t n_ids;

		for (k = pos; k + 1 < len; k++)
			if (text[k] == '\n' && text[k + 1] == '\n') {
				end = text + k;
				break;
			}
		plen = end != NULL ? (size_t)(end - p) : len - pos;
		pos += plen + (end != NULL ? 2 : 0);
		while (plen > 0 && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
			p++, plen--;
		while (plen > 0 && (p[plen - 1] == ' ' || p[plen - 1] == '\n' || p[plen - 1] == '\t' ||
		                    p[plen - 1] == '\r'))
			plen--;
		if (plen == 0)
			continue;
		s = nesa_tokenizer_encode(tok, p, plen, NESA_TOK_BOS, &ids, &n_ids, err);
		if (s != NESA_OK)
			break;
		if (n + n_ids > cap) {
			size_t ncap = cap ? cap * 2 : 65536;
			int32_t *nb;

			while (ncap < n + n_ids)
				ncap *= 2;
			nb = nesa_realloc(buf, ncap * sizeof *nb);
			if (nb == NULL) {
				nesa_free(ids);
				s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
				break;
			}
			buf = nb;
			cap = ncap;
		}
		memcpy(buf + n, ids, n_ids * sizeof *ids);
		n += n_ids;
		nesa_free(ids);
	}
	if (s != NESA_OK) {
		nesa_free(buf);
		return s;
	}
	*all = buf;
	*n_all = limit > 0 && n > limit ? limit : n;
	return NESA_OK;
}

enum nesa_status
nesa_perplexity(struct nesa_chain *c, const struct nesa_tokenizer *tok, const char *text,
                size_t len, const struct nesa_ppl_opts *o, struct nesa_ppl_result *res,
                struct nesa_err *err)
{
	int window = o->window > 0 ? o->window : (c->max_positions > 0 && c->max_positions < 512 ? c->max_positions : 512);
	const int batch = o->batch > 0 ? o->batch : 8;
	struct nesa_seg *segs = NULL;
	struct nesa_progress prog;
	int32_t *toks = NULL;
	size_t n_toks = 0, start;
	double nll = 0;
	int retries = o->retries;
	enum nesa_status s;

	memset(res, 0, sizeof *res);
	if (c->in_dtype != NESA_I32)
		return nesa_err_set(err, NESA_EINVAL, "the model does not take token ids: no perplexity");
	if (c->max_positions > 0 && window > c->max_positions)
		return nesa_err_set(err, NESA_EINVAL, "window of %d tokens exceeds the model's context of %d",
		                    window, c->max_positions);
	if (window < 2)
		return nesa_err_set(err, NESA_EINVAL, "window of %d tokens scores nothing", window);
	if (o->max_bytes > 0 && (size_t)o->max_bytes < len)
		len = (size_t)o->max_bytes;
	s = nesa_tokenize_paragraphs(tok, text, len, 0, &toks, &n_toks, err);
	if (s != NESA_OK)
		return s;
	segs = nesa_calloc((size_t)batch, sizeof *segs);
	if (segs == NULL) {
		nesa_free(toks);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	res->tokens = (int64_t)n_toks;
	nesa_progress_begin(&prog, "perplexity", n_toks);
	for (start = 0; start < n_toks;) {
		size_t first = start;
		const float *out;
		int64_t rows, row = 0;
		int n = 0, w;

		/* Up to `batch` windows side by side, one session each. */
		while (n < batch && start < n_toks) {
			size_t wl = n_toks - start < (size_t)window ? n_toks - start : (size_t)window;

			segs[n] = (struct nesa_seg){(uint64_t)n + 1, 0, (uint32_t)wl, false};
			start += wl;
			n++;
		}
		s = run_retry(c, segs, n, toks + first, &out, &rows, &retries, err);
		if (s != NESA_OK)
			break;
		for (w = 0; w < n; w++) {
			const int32_t *t = toks + first;
			uint32_t r;

			for (r = 1; r < segs[w].rows; r++) {
				const float *lg = out + (row + r - 1) * c->out_elems;
				float mx = -INFINITY;
				double sum = 0;
				int64_t v;

				if (t[r] < 0 || t[r] >= c->out_elems) {
					s = nesa_err_set(err, NESA_EINVAL, "token %d is outside the model's %lld outputs",
					                 t[r], (long long)c->out_elems);
					goto done;
				}
				for (v = 0; v < c->out_elems; v++)
					mx = lg[v] > mx ? lg[v] : mx;
				for (v = 0; v < c->out_elems; v++)
					sum += exp((double)(lg[v] - mx));
				nll += log(sum) - (double)(lg[t[r]] - mx);
				res->scored++;
			}
			row += segs[w].rows;
			first += segs[w].rows;
			res->windows++;
		}
		for (w = 0; w < n; w++)
			nesa_chain_end(c, segs[w].session);
		nesa_progress_update(&prog, start);
	}
done:
	nesa_progress_end(&prog);
	nesa_free(segs);
	nesa_free(toks);
	if (s == NESA_OK && res->scored == 0)
		s = nesa_err_set(err, NESA_EINVAL, "the text gives no token to score");
	if (s == NESA_OK) {
		res->nll = nll / (double)res->scored;
		res->ppl = exp(res->nll);
	}
	return s;
}

enum nesa_status
nesa_classify(struct nesa_chain *c, const struct nesa_dataset *ds, int batch, int retries,
              struct nesa_cls_result *res, struct nesa_err *err)
{
	const int64_t per = ds->C * ds->H * ds->W;
	struct nesa_progress prog;
	int64_t i;
	enum nesa_status s = NESA_OK;

	memset(res, 0, sizeof *res);
	if (batch <= 0)
		batch = 64;
	if (c->in_dtype != NESA_F32 || c->in_elems != per)
		return nesa_err_set(err, NESA_ESHAPE,
		                    "the model takes rows of %lld values; the images have %lldx%lldx%lld",
		                    (long long)c->in_elems, (long long)ds->C, (long long)ds->H, (long long)ds->W);
	nesa_progress_begin(&prog, "classify", (uint64_t)ds->n);
	for (i = 0; i < ds->n; i += batch) {
		int64_t n = ds->n - i < batch ? ds->n - i : batch, rows, r, k;
		struct nesa_seg seg = {0, 0, (uint32_t)n, false};
		const float *out;

		s = run_retry(c, &seg, 1, ds->images + i * per, &out, &rows, &retries, err);
		if (s != NESA_OK)
			break;
		for (r = 0; r < n; r++) {
			const float *o = out + r * c->out_elems;
			int64_t best = 0;

			/* The first maximum wins ties, as torch.argmax does. */
			for (k = 1; k < c->out_elems; k++)
				if (o[k] > o[best])
					best = k;
			res->correct += best == ds->labels[i + r];
		}
		res->n += n;
		nesa_progress_update(&prog, (uint64_t)(i + n));
	}
	nesa_progress_end(&prog);
	return s;
}
