/* SPDX-License-Identifier: MIT */
/*
 * Private to the tokenizer module: the handle's layout and the few helpers
 * shared by tokenizer.c (construction, encoding, decoding) and
 * tokenizer-load.c (the llama2.c and GPT-2 file loaders and the tensor-set
 * form).  Nothing outside those two files includes this header; everyone
 * else sees struct nesa_tokenizer only as the opaque type of tokenizer.h.
 *
 * The split exists to keep each file a readable size.  Whatever reaches a
 * tokenizer, from a file, from GGUF arrays or from a tensor set, goes
 * through tokenizer_build(), so every source gets the same checks.
 *
 * tokenizer_build() has external linkage only so that both files can call
 * it; its name lacks the nesa_ prefix to mark it as outside the API.
 */
#ifndef NESA_TOKENIZER_IMPL_H
#define NESA_TOKENIZER_IMPL_H

#include <locale.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define TOK_MAGIC 0x6e6b6f74u /* "tokn" */

struct merge {
	int32_t a, b; /* the two parts, token ids */
	int32_t id;   /* the token they make */
};

struct nesa_tokenizer {
	uint32_t magic;
	enum nesa_tokenizer_kind kind;
	int32_t n;                  /* vocabulary size */
	int32_t bos, eos, unk, pad; /* ids or -1 */
	char *pieces;               /* each piece followed by a NUL */
	size_t *poff;               /* (n + 1) piece i is pieces[poff[i] .. poff[i+1] - 1) */
	char *texts;                /* decoded bytes of every token, concatenated */
	size_t *toff;               /* (n + 1) text i is texts[toff[i] .. toff[i+1]) */
	float *scores;              /* (n) SPM merge scores; NULL for GPT-2 */
	uint8_t *types;             /* (n) enum nesa_token_type */
	int32_t *table;             /* (table_mask + 1) piece hash -> token id, -1 empty */
	uint32_t table_mask;
	/* SPM: the <0xXX> token of each byte; GPT-2: the symbol of each byte. */
	int32_t byte_id[256];
	int32_t *specials;          /* (n_specials) control tokens, longest piece first */
	size_t n_specials;
	uint8_t special_first[32];  /* bitmap: bytes that start a control piece */
	struct merge *merges;       /* (n_merges) GPT-2 merges in rank order */
	size_t n_merges;
	int32_t *mtable;            /* (mtable_mask + 1) (a, b) hash -> rank, -1 empty */
	uint32_t mtable_mask;
	locale_t loc;               /* C.UTF-8 ctype for GPT-2, or (locale_t)0 */
	uint64_t seed;              /* random hash seed, see hash_bytes */
};

/*
 * Both files need these; static inline keeps them as cheap as the file-local
 * functions they were before the split, which matters in the encoding loops.
 */

static inline bool
valid_handle(const struct nesa_tokenizer *tok)
{
	return tok != NULL && tok->magic == TOK_MAGIC;
}

static inline size_t
piece_len(const struct nesa_tokenizer *tok, int32_t id)
{
	return tok->poff[id + 1] - tok->poff[id] - 1;
}

static inline const char *
piece_at(const struct nesa_tokenizer *tok, int32_t id)
{
	return tok->pieces + tok->poff[id];
}

static inline enum nesa_status
oom(struct nesa_err *err)
{
	return nesa_err_set(err, NESA_ENOMEM, "out of memory");
}

/*
 * Builds a tokenizer of the given kind from v (borrowed; everything is
 * copied).  unescape turns U+2581 in SPM pieces into spaces (GGUF
 * vocabularies; llama2.c files already hold spaces).  merges[0..n_merges)
 * ("a b", merge_lens NULL for NUL-terminated strings) are used for GPT-2
 * only.  On success *out is a new tokenizer; on failure *out is NULL and
 * err holds the unprefixed reason (callers add which source failed):
 * NESA_EFORMAT, NESA_EINVAL or NESA_ENOMEM.  Defined in tokenizer.c.
 */
enum nesa_status tokenizer_build(enum nesa_tokenizer_kind kind, const struct nesa_tokenizer_vocab *v,
                                 bool unescape, const char *const *merges,
                                 const size_t *merge_lens, size_t n_merges,
                                 struct nesa_tokenizer **out, struct nesa_err *err);

#endif
