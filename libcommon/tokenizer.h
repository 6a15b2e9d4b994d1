/* SPDX-License-Identifier: MIT */
/*
 * Text <-> token ids for the language models nesa runs.
 *
 * Two tokenizer families share one opaque handle:
 *
 * SentencePiece-style BPE with scores and byte fallback (NESA_TOKENIZER_SPM),
 * the "llama" vocabulary of llama2.c's run.c and llama.cpp.  Encoding:
 * optional BOS; a dummy-prefix space in front of non-empty text; the text cut
 * into UTF-8 characters exactly as run.c cuts it (a byte plus up to three
 * continuation bytes), each looked up as a piece or else replaced by its
 * bytes' <0xXX> tokens; then, repeatedly, the adjacent pair whose
 * concatenation is a piece with the highest score (leftmost on ties, and
 * only scores above -1e10, as run.c) is merged; optional EOS.  The result
 * equals run.c's quadratic loop but is computed with a heap, so megabytes
 * of text encode in well under a second.  Decoding: a token's piece, its raw
 * byte for a <0xXX> token, and one leading space dropped from the token that
 * follows BOS or starts a sequence (the dummy prefix).
 *
 * GPT-2 byte-level BPE (NESA_TOKENIZER_GPT2) from vocab.json and merges.txt.
 * Text is split with GPT-2's pre-tokenizer pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * implemented by hand, each piece is mapped through bytes_to_unicode and
 * merged by merge rank (lowest first, leftmost on ties, as HF tokenizers
 * does; identical to OpenAI's encoder.py whenever every merge's parts are
 * made by earlier merges, as in every trained merge list).
 *
 * Character classes, an approximation: ASCII is classified exactly (letters
 * A-Z a-z, digits 0-9, whitespace \t \n \v \f \r and space).  Beyond ASCII,
 * \s is iswspace_l, \p{L} is iswalpha_l and \p{N} is iswdigit_l, all under
 * newlocale(LC_CTYPE_MASK, "C.UTF-8").  glibc differs from Unicode here:
 * non-ASCII digits (U+0660...) count as letters, other numerics (U+00B2)
 * and combining marks (U+0301) as punctuation, and no-break spaces
 * (U+00A0, U+202F) are not whitespace.  Without that locale every
 * non-ASCII character counts as a letter.  Bytes that are not valid UTF-8
 * are single punctuation-class characters: each still becomes its own byte
 * symbol, so GPT-2 encoding round-trips arbitrary bytes too.
 *
 * Token types follow GGUF's tokenizer.ggml.token_type.  Only normal and
 * user-defined pieces take part in lookup and merging: control, unknown,
 * unused and byte tokens are reached only by id (byte tokens through byte
 * fallback), so decode(encode(s)) == s for every byte string s.
 *
 * Control tokens (BOS, EOS, <|endoftext|>...) are text only on request:
 * with NESA_TOK_SPECIAL, encoding recognises their pieces in the text as
 * whole tokens and decoding writes their pieces out; without it, their text
 * is encoded like any other and they decode to nothing.
 *
 * A tokenizer is immutable once built: several threads may encode and
 * decode with one tokenizer at the same time.
 *
 * Not for: sampling, chat templates, or reading GGUF files (gguf.h does
 * that and hands the arrays to nesa_tokenizer_new_spm/_gpt2).
 */
#ifndef NESA_TOKENIZER_H
#define NESA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tensor.h"

struct nesa_tokenizer;

enum nesa_tokenizer_kind {
	NESA_TOKENIZER_SPM = 1,  /* SentencePiece BPE with scores and byte fallback */
	NESA_TOKENIZER_GPT2 = 2, /* GPT-2 byte-level BPE with ranked merges */
};

/* Token types, numbered as GGUF's tokenizer.ggml.token_type. */
enum nesa_token_type {
	NESA_TOKEN_NORMAL = 1,
	NESA_TOKEN_UNKNOWN = 2,
	NESA_TOKEN_CONTROL = 3,
	NESA_TOKEN_USER = 4,   /* user-defined: looked up and decoded as normal */
	NESA_TOKEN_UNUSED = 5, /* never produced by encoding */
	NESA_TOKEN_BYTE = 6,   /* "<0xXX>": decodes to one raw byte */
};

/* Flags of nesa_tokenizer_encode and _decode. */
enum {
	NESA_TOK_BOS = 1 << 0,     /* encode: start with BOS (ignored when there is none) */
	NESA_TOK_EOS = 1 << 1,     /* encode: end with EOS (ignored when there is none) */
	NESA_TOK_SPECIAL = 1 << 2, /* control tokens are text: parsed and written out */
};

/* Limits applied to every vocabulary, whatever its source. */
#define NESA_TOKENIZER_MAX_VOCAB (INT32_C(1) << 22) /* tokens */
#define NESA_TOKENIZER_MAX_PIECE 1024               /* bytes per piece */

/* A vocabulary as arrays, the way a GGUF file provides it. */
struct nesa_tokenizer_vocab {
	int32_t n;                 /* number of tokens, 1..NESA_TOKENIZER_MAX_VOCAB */
	const char *const *pieces; /* (n) piece bytes; in SPM, U+2581 stands for a space */
	const size_t *lens;        /* (n) byte lengths, or NULL for NUL-terminated pieces */
	const float *scores;       /* (n) merge scores; required for SPM, ignored for GPT-2 */
	const int32_t *types;      /* (n) NESA_TOKEN_*, or NULL to derive them (see below) */
	int32_t bos, eos, unk, pad; /* token ids, or -1 for none */
};

/*
 * Loads a llama2.c tokenizer file: int32 max_token_length, then per token a
 * float32 score, an int32 length and that many bytes, all little-endian.
 * The file must hold exactly vocab_size tokens (the model's vocabulary size)
 * with lengths in 1..NESA_TOKENIZER_MAX_PIECE.  As in run.c, id 0 is
 * unknown, 1 is BOS (control), 2 is EOS (control), pieces of the form
 * <0xXX> are byte tokens and the rest are normal; pad is -1.
 *
 * On success *out is a new tokenizer for nesa_tokenizer_free.  Errors:
 * NESA_ENOENT (cannot open), NESA_EIO, NESA_EFORMAT (truncated, bad length,
 * wrong token count; the message names the file, the token and the offset),
 * NESA_EINVAL (vocab_size out of range), NESA_ENOMEM.  *out is NULL then.
 */
enum nesa_status nesa_tokenizer_load_llama2c(const char *path, int32_t vocab_size,
                                             struct nesa_tokenizer **out, struct nesa_err *err);

/*
 * Builds an SPM tokenizer from arrays (GGUF tokenizer.ggml.model "llama").
 * Every U+2581 in a piece is turned into a space, so pieces are stored as
 * run.c stores them and a literal U+2581 in text is byte-encoded (llama.cpp
 * would read it as a space).  When v->types is NULL types are derived as
 * for llama2.c files, with v->unk, v->bos and v->eos as the special ids.
 * A byte-typed piece must read <0xXX>.  The arrays are copied.
 * Errors: NESA_EFORMAT (bad count, length, type or special id, naming the
 * token), NESA_EINVAL (NULL arrays), NESA_ENOMEM.
 */
enum nesa_status nesa_tokenizer_new_spm(const struct nesa_tokenizer_vocab *v,
                                        struct nesa_tokenizer **out, struct nesa_err *err);

/*
 * Builds a GPT-2 tokenizer from arrays (GGUF tokenizer.ggml.model "gpt2"):
 * the vocabulary, whose pieces are bytes_to_unicode strings ("Ġthe"), and
 * n_merges merges "a b" in rank order (merge_lens NULL for NUL-terminated
 * strings).  The vocabulary must contain the 256 single-byte symbols, and
 * both parts of each merge and their concatenation must be pieces; a merge
 * repeated later keeps its first rank.  When v->types is NULL, pieces of
 * the form <|...|> are control tokens and the rest normal; v->scores is
 * ignored.  Errors: NESA_EFORMAT naming the offending token or merge,
 * NESA_EINVAL, NESA_ENOMEM.
 */
enum nesa_status nesa_tokenizer_new_gpt2(const struct nesa_tokenizer_vocab *v,
                                         const char *const *merges, const size_t *merge_lens,
                                         size_t n_merges, struct nesa_tokenizer **out,
                                         struct nesa_err *err);

/*
 * Loads a GPT-2 tokenizer from vocab.json (an object mapping each piece to
 * its id; ids must be exactly 0..n-1) and merges.txt (one "a b" per line in
 * rank order; a first line starting with "#version" and empty lines are
 * skipped).  Pieces <|...|> are control tokens; BOS and EOS are both
 * <|endoftext|> when present, else -1; unk and pad are -1.
 * Errors as nesa_tokenizer_load_llama2c, messages naming the file and the
 * key or line at fault.
 */
enum nesa_status nesa_tokenizer_load_gpt2(const char *vocab_path, const char *merges_path,
                                          struct nesa_tokenizer **out, struct nesa_err *err);

/* Frees a tokenizer; accepts NULL. */
void nesa_tokenizer_free(struct nesa_tokenizer *tok);

enum nesa_tokenizer_kind nesa_tokenizer_kind(const struct nesa_tokenizer *tok);
int32_t nesa_tokenizer_vocab_size(const struct nesa_tokenizer *tok);

/* Special token ids, -1 when the vocabulary has none. */
int32_t nesa_tokenizer_bos(const struct nesa_tokenizer *tok);
int32_t nesa_tokenizer_eos(const struct nesa_tokenizer *tok);
int32_t nesa_tokenizer_unk(const struct nesa_tokenizer *tok);
int32_t nesa_tokenizer_pad(const struct nesa_tokenizer *tok);

/*
 * The stored piece of token id, NUL-terminated, owned by the tokenizer
 * (SPM: with real spaces, "<0x0A>" for a byte token; GPT-2: "Ġthe").
 * *len (may be NULL) receives its length, which counts any NUL inside.
 * NULL when id is out of range.
 */
const char *nesa_tokenizer_piece(const struct nesa_tokenizer *tok, int32_t id, size_t *len);

/* The type of token id (enum nesa_token_type), or 0 when id is out of range. */
int nesa_tokenizer_token_type(const struct nesa_tokenizer *tok, int32_t id);

/* The SPM score of token id; 0 for GPT-2 or an id out of range. */
float nesa_tokenizer_score(const struct nesa_tokenizer *tok, int32_t id);

/*
 * The id of the normal or user-defined token whose piece is exactly the
 * len bytes at piece, or -1.  Control, unknown, unused and byte tokens are
 * not found (they are reached by id only).
 */
int32_t nesa_tokenizer_lookup(const struct nesa_tokenizer *tok, const char *piece, size_t len);

/*
 * Encodes len bytes of text (any bytes; NUL is an ordinary byte) with
 * NESA_TOK_* flags.  *ids is a new array of *n token ids for nesa_free;
 * at most len + 3 ids.  With NESA_TOK_SPECIAL, the pieces of control tokens
 * in the text become those tokens (longest match first); in SPM every text
 * fragment that starts the text or follows BOS gets the dummy prefix.
 * Errors: NESA_EINVAL (bad handle, text NULL with len > 0, a byte with no
 * byte token and no unknown token), NESA_ELIMIT (text of 2 GiB or more),
 * NESA_ENOMEM; *ids is NULL and *n 0 then.
 */
enum nesa_status nesa_tokenizer_encode(const struct nesa_tokenizer *tok, const char *text,
                                       size_t len, unsigned flags, int32_t **ids, size_t *n,
                                       struct nesa_err *err);

/*
 * Streaming decode: the bytes token id adds to the text when it follows
 * token prev (prev < 0 at the start of a sequence).  For SPM, one leading
 * space is dropped when prev is BOS or < 0, which is run.c's rule (run.c
 * looks at the piece, this looks at the decoded bytes; the two differ only
 * for a <0x20> byte token right after BOS).  A byte token yields its raw
 * byte, which may be part of a UTF-8 character completed by later tokens:
 * callers that print must buffer, or print bytes as they come.  Control
 * tokens yield nothing unless flags has NESA_TOK_SPECIAL.
 * *text points into the tokenizer (not NUL-terminated) and stays valid
 * until it is freed.  NESA_EINVAL naming the id when id is out of range.
 */
enum nesa_status nesa_tokenizer_decode_token(const struct nesa_tokenizer *tok, int32_t prev,
                                             int32_t id, unsigned flags, const char **text,
                                             size_t *len, struct nesa_err *err);

/*
 * Decodes n ids as a sequence (each token decoded after its predecessor,
 * the first as the start of a sequence).  *text is a new NUL-terminated
 * buffer for nesa_free holding *len bytes (NULs inside are possible).
 * Errors: NESA_EINVAL naming the position of an id out of range,
 * NESA_ENOMEM; *text is NULL then.
 */
enum nesa_status nesa_tokenizer_decode(const struct nesa_tokenizer *tok, const int32_t *ids,
                                       size_t n, unsigned flags, char **text, size_t *len,
                                       struct nesa_err *err);

/*
 * Serialization into a tensor set, so that a tokenizer can travel inside a
 * shard archive.  Tensors written (n = vocabulary size):
 *   tokenizer.kind     i32 [1]     1 SPM, 2 GPT-2
 *   tokenizer.pieces   u8  [bytes] all pieces concatenated, no separators
 *   tokenizer.offsets  i32 [n + 1] piece i is pieces[offsets[i] .. offsets[i+1])
 *   tokenizer.scores   f32 [n]     SPM only
 *   tokenizer.types    i32 [n]     enum nesa_token_type
 *   tokenizer.special  i32 [4]     bos, eos, unk, pad (-1 for none)
 *   tokenizer.merges   u8  [bytes] GPT-2 only: "a b\n" per merge, rank order
 * SPM pieces are stored with real spaces (as run.c holds them).
 * The tensors are added to ts with nesa_tset_alloc.  On failure (a name
 * already taken: NESA_EFORMAT; NESA_ENOMEM) ts may hold some of them; the
 * caller releases ts as usual.
 */
enum nesa_status nesa_tokenizer_to_tset(const struct nesa_tokenizer *tok, struct nesa_tset *ts,
                                        struct nesa_err *err);

/*
 * Rebuilds a tokenizer from the tensors above.  ts is untrusted: every
 * dtype, shape, offset, length, type, special id and merge is checked, and
 * any inconsistency is NESA_EFORMAT naming the tensor (and the token or
 * merge).  The data is copied; ts may be released afterwards.  On success
 * *out is a new tokenizer; else NULL.
 */
enum nesa_status nesa_tokenizer_from_tset(struct nesa_tset *ts, struct nesa_tokenizer **out,
                                          struct nesa_err *err);

#endif
