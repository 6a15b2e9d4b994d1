/* SPDX-License-Identifier: MIT */
/*
 * Tokenizers: SentencePiece-style BPE with byte fallback (llama2.c run.c's
 * encode/decode, llama2.c tokenizer files and GGUF "llama" vocabularies)
 * and GPT-2 byte-level BPE (vocab.json + merges.txt); see tokenizer.h.
 *
 * Both families merge with the same engine: the text becomes a doubly
 * linked list of symbols (byte spans), every adjacent pair that could merge
 * goes on a max-heap keyed by (priority, position), and popping the best
 * pair repeats the "find the best pair, merge it" step of the quadratic
 * reference loops in O(n log n).  Stale heap entries are recognised by
 * their byte size: symbol lengths only grow, so a pair whose two current
 * lengths no longer add up to the recorded size has changed.
 *
 * The loaders (llama2.c and GPT-2 files) and the tensor-set form live in
 * tokenizer-load.c and reach the engine through tokenizer_build();
 * tokenizer-impl.h holds the handle layout both files share.
 *
 * Not for: reading GGUF (gguf.c), sampling, chat templates.
 */
#include "config.h"

#include <assert.h>
#include <locale.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wctype.h>

#include <sodium.h>

#include "alloc.h"
#include "tokenizer-impl.h"

/* run.c only merges pairs scoring above its initial best score. */
#define SPM_MIN_SCORE -1e10f

/* GPT-2 ranks become heap priorities -rank, exact in a float up to 2^24. */
#define MAX_MERGES (INT32_C(1) << 24)

/* Texts this long would overflow the int32 symbol positions. */
#define MAX_TEXT ((size_t)INT32_MAX - 16)

/*
 * Keyed hashes: vocabularies and merge lists come from untrusted files, and
 * with a fixed hash a crafted one could put every entry into one probe
 * chain and make loading quadratic.  Each step is a bijective 64-bit mix of
 * the state xored with 8 input bytes, started from a random seed, so
 * colliding inputs cannot be chosen without knowing the seed.  (SipHash
 * would do too, but makes encoding two to three times slower.)
 */
static uint64_t
mix64(uint64_t x)
{
	x ^= x >> 32;
	x *= 0xd6e8feb86659fd93ull;
	x ^= x >> 32;
	x *= 0xd6e8feb86659fd93ull;
	return x ^ (x >> 32);
}

static uint32_t
hash_bytes(const struct nesa_tokenizer *tok, const char *s, size_t n)
{
	uint64_t h = tok->seed ^ n, w;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&w, s + i, 8);
		h = mix64(h ^ w);
	}
	for (w = 0; i < n; i++)
		w = (w << 8) | (unsigned char)s[i];
	return (uint32_t)mix64(h ^ w);
}

static uint32_t
hash_pair(const struct nesa_tokenizer *tok, int32_t a, int32_t b)
{
	return (uint32_t)mix64(tok->seed ^ ((uint64_t)(uint32_t)a << 32 | (uint32_t)b));
}

/* Smallest power of two >= 2 * n, at least 16: load factor <= 1/2. */
static bool
table_size(size_t n, uint32_t *mask)
{
	size_t cap = 16;

	while (cap < 2 * n) {
		if (cap > (size_t)1 << 30)
			return false;
		cap *= 2;
	}
	*mask = (uint32_t)(cap - 1);
	return true;
}

static int32_t
lookup(const struct nesa_tokenizer *tok, const char *s, size_t n)
{
	uint32_t i = hash_bytes(tok, s, n) & tok->table_mask;
	int32_t id;

	while ((id = tok->table[i]) >= 0) {
		if (piece_len(tok, id) == n && memcmp(piece_at(tok, id), s, n) == 0)
			return id;
		i = (i + 1) & tok->table_mask;
	}
	return -1;
}

static int32_t
merge_rank(const struct nesa_tokenizer *tok, int32_t a, int32_t b)
{
	uint32_t i = hash_pair(tok, a, b) & tok->mtable_mask;
	int32_t r;

	while ((r = tok->mtable[i]) >= 0) {
		if (tok->merges[r].a == a && tok->merges[r].b == b)
			return r;
		i = (i + 1) & tok->mtable_mask;
	}
	return -1;
}

/*
 * Decodes one UTF-8 character at s (n > 0 bytes available).  Returns its
 * length, 1 for a byte that does not start a valid character (overlong
 * forms, surrogates and values past U+10FFFF included), with *cp = -1.
 */
static size_t
utf8_next(const unsigned char *s, size_t n, int32_t *cp)
{
	uint32_t c = s[0], min;
	size_t len, i;

	*cp = -1;
	if (c < 0x80) {
		*cp = (int32_t)c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, c &= 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, c &= 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, c &= 0x07, min = 0x10000;
	} else {
		return 1;
	}
	if (n < len)
		return 1;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 1;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 1;
	*cp = (int32_t)c;
	return len;
}

/*
 * GPT-2's bytes_to_unicode: printable Latin-1 bytes ('!'..'~', 0xa1..0xac,
 * 0xae..0xff) stand for themselves; the other 68 bytes, in increasing
 * order (0x00..0x20, 0x7f..0xa0, 0xad), become U+0100..U+0143, so a space
 * is U+0120 'Ġ'.
 */
static uint32_t
gpt2_byte_cp(unsigned b)
{
	if (b <= 0x20)
		return 0x100 + b;
	if (b >= 0x7f && b <= 0xa0)
		return 0x100 + 33 + (b - 0x7f);
	return b == 0xad ? 0x143 : b;
}

/* The inverse: the byte a code point stands for, or -1. */
static int
gpt2_cp_byte(int32_t cp)
{
	if ((cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff))
		return cp;
	if (cp >= 0x100 && cp <= 0x120)
		return cp - 0x100;
	if (cp >= 0x121 && cp <= 0x142)
		return cp - 0x121 + 0x7f;
	return cp == 0x143 ? 0xad : -1;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The byte of a "<0xXX>" piece, or -1 when the piece has another form. */
static int
byte_piece(const char *s, size_t n)
{
	if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>' ||
	    hexval(s[3]) < 0 || hexval(s[4]) < 0)
		return -1;
	return hexval(s[3]) * 16 + hexval(s[4]);
}

static bool
is_gpt2_special(const char *s, size_t n)
{
	return n >= 4 && s[0] == '<' && s[1] == '|' && s[n - 2] == '|' && s[n - 1] == '>';
}

void
nesa_tokenizer_free(struct nesa_tokenizer *tok)
{
	if (tok == NULL)
		return;
	nesa_free(tok->pieces);
	nesa_free(tok->poff);
	nesa_free(tok->texts);
	nesa_free(tok->toff);
	nesa_free(tok->scores);
	nesa_free(tok->types);
	nesa_free(tok->table);
	nesa_free(tok->specials);
	nesa_free(tok->merges);
	nesa_free(tok->mtable);
	if (tok->loc != (locale_t)0)
		freelocale(tok->loc);
	tok->magic = 0;
	nesa_free(tok);
}

/* Construction, shared by every source. */

/*
 * Copies the pieces, turning U+2581 into spaces when asked (GGUF SPM), so
 * that matching works on the text's own bytes as run.c does.  Each piece is
 * followed by a NUL so that nesa_tokenizer_piece can hand out C strings.
 */
static enum nesa_status
copy_pieces(struct nesa_tokenizer *tok, const struct nesa_tokenizer_vocab *v, bool unescape,
            struct nesa_err *err)
{
	size_t total = 0, i, k, len;
	char *p;

	for (i = 0; i < (size_t)v->n; i++) {
		const char *s = v->pieces[i];

		len = v->lens != NULL ? v->lens[i] : s != NULL ? strlen(s) : 0;
		if (s == NULL && len > 0)
			return nesa_err_set(err, NESA_EINVAL, "token %zu has no piece", i);
		if (len > NESA_TOKENIZER_MAX_PIECE)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "token %zu has a piece of %zu bytes (at most %d)", i, len,
			                    NESA_TOKENIZER_MAX_PIECE);
		total += len + 1;
	}
	tok->pieces = nesa_malloc(total);
	tok->poff = nesa_malloc(((size_t)v->n + 1) * sizeof *tok->poff);
	if (tok->pieces == NULL || tok->poff == NULL)
		return oom(err);
	p = tok->pieces;
	for (i = 0; i < (size_t)v->n; i++) {
		const char *s = v->pieces[i];

		len = v->lens != NULL ? v->lens[i] : s != NULL ? strlen(s) : 0;
		tok->poff[i] = (size_t)(p - tok->pieces);
		for (k = 0; k < len; k++) {
			if (unescape && k + 2 < len && memcmp(s + k, "\xe2\x96\x81", 3) == 0) {
				*p++ = ' ';
				k += 2;
			} else {
				*p++ = s[k];
			}
		}
		*p++ = '\0';
	}
	tok->poff[v->n] = (size_t)(p - tok->pieces);
	return NESA_OK;
}

/*
 * Types as given, or derived: for SPM as run.c sees a llama2.c file (unk,
 * bos and eos by id, <0xXX> pieces as bytes), for GPT-2 <|...|> as control.
 */
static enum nesa_status
set_types(struct nesa_tokenizer *tok, const struct nesa_tokenizer_vocab *v, struct nesa_err *err)
{
	int32_t i;

	tok->types = nesa_malloc((size_t)tok->n);
	if (tok->types == NULL)
		return oom(err);
	for (i = 0; i < tok->n; i++) {
		const char *s = piece_at(tok, i);
		size_t len = piece_len(tok, i);
		int t;

		if (v->types != NULL) {
			t = v->types[i];
			if (t < NESA_TOKEN_NORMAL || t > NESA_TOKEN_BYTE)
				return nesa_err_set(err, NESA_EFORMAT, "token %d has invalid type %d", i,
				                    t);
		} else if (tok->kind == NESA_TOKENIZER_GPT2) {
			t = is_gpt2_special(s, len) ? NESA_TOKEN_CONTROL : NESA_TOKEN_NORMAL;
		} else if (i == tok->unk) {
			t = NESA_TOKEN_UNKNOWN;
		} else if (i == tok->bos || i == tok->eos) {
			t = NESA_TOKEN_CONTROL;
		} else {
			t = byte_piece(s, len) >= 0 ? NESA_TOKEN_BYTE : NESA_TOKEN_NORMAL;
		}
		tok->types[i] = (uint8_t)t;
	}
	return NESA_OK;
}

/*
 * The lookup table holds normal and user-defined pieces.  A piece listed
 * twice (possible after the U+2581 conversion, or in a hostile file) maps
 * to its lowest id, whatever the hash seed.
 */
static enum nesa_status
build_table(struct nesa_tokenizer *tok, struct nesa_err *err)
{
	int32_t i;

	if (!table_size((size_t)tok->n, &tok->table_mask))
		return oom(err);
	tok->table = nesa_malloc(((size_t)tok->table_mask + 1) * sizeof *tok->table);
	if (tok->table == NULL)
		return oom(err);
	memset(tok->table, 0xff, ((size_t)tok->table_mask + 1) * sizeof *tok->table);
	for (i = 0; i < tok->n; i++) {
		size_t len = piece_len(tok, i);
		uint32_t h;

		if ((tok->types[i] != NESA_TOKEN_NORMAL && tok->types[i] != NESA_TOKEN_USER) ||
		    len == 0 || lookup(tok, piece_at(tok, i), len) >= 0)
			continue;
		h = hash_bytes(tok, piece_at(tok, i), len) & tok->table_mask;
		while (tok->table[h] >= 0)
			h = (h + 1) & tok->table_mask;
		tok->table[h] = i;
	}
	return NESA_OK;
}

static int
cmp_special(const void *a, const void *b, void *ctx)
{
	const struct nesa_tokenizer *tok = ctx;
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	size_t lx = piece_len(tok, x), ly = piece_len(tok, y);

	if (lx != ly)
		return lx > ly ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Control pieces for NESA_TOK_SPECIAL, longest first so the longest wins. */
static enum nesa_status
build_specials(struct nesa_tokenizer *tok, struct nesa_err *err)
{
	int32_t i;

	tok->specials = nesa_malloc(sizeof *tok->specials); /* grown below if needed */
	if (tok->specials == NULL)
		return oom(err);
	for (i = 0; i < tok->n; i++) {
		int32_t *p;

		if (tok->types[i] != NESA_TOKEN_CONTROL || piece_len(tok, i) == 0)
			continue;
		p = nesa_realloc(tok->specials, (tok->n_specials + 1) * sizeof *p);
		if (p == NULL)
			return oom(err);
		tok->specials = p;
		tok->specials[tok->n_specials++] = i;
		tok->special_first[(unsigned char)piece_at(tok, i)[0] / 8] |=
			(uint8_t)(1u << ((unsigned char)piece_at(tok, i)[0] % 8));
	}
	qsort_r(tok->specials, tok->n_specials, sizeof *tok->specials, cmp_special, tok);
	return NESA_OK;
}

/*
 * The bytes each token decodes to.  SPM: the piece, or one raw byte for a
 * byte token.  GPT-2: the piece mapped back through bytes_to_unicode, or the
 * piece itself for control tokens and pieces outside that alphabet (added
 * tokens written as plain text).
 */
static size_t
token_text(const struct nesa_tokenizer *tok, int32_t id, char *out)
{
	const char *s = piece_at(tok, id);
	size_t len = piece_len(tok, id), i, k = 0;

	if (tok->kind == NESA_TOKENIZER_SPM) {
		if (tok->types[id] == NESA_TOKEN_BYTE) {
			if (out != NULL)
				out[0] = (char)byte_piece(s, len);
			return 1;
		}
	} else if (tok->types[id] != NESA_TOKEN_CONTROL) {
		for (i = 0; i < len;) {
			int32_t cp;
			int b;

			i += utf8_next((const unsigned char *)s + i, len - i, &cp);
			b = gpt2_cp_byte(cp);
			if (b < 0)
				break;
			if (out != NULL)
				out[k] = (char)b;
			k++;
		}
		if (i >= len)
			return k;
	}
	if (out != NULL)
		memcpy(out, s, len);
	return len;
}

static enum nesa_status
build_texts(struct nesa_tokenizer *tok, struct nesa_err *err)
{
	size_t total = 0;
	int32_t i;

	tok->toff = nesa_malloc(((size_t)tok->n + 1) * sizeof *tok->toff);
	if (tok->toff == NULL)
		return oom(err);
	for (i = 0; i < tok->n; i++) {
		tok->toff[i] = total;
		total += token_text(tok, i, NULL);
	}
	tok->toff[tok->n] = total;
	tok->texts = nesa_malloc(total);
	if (tok->texts == NULL)
		return oom(err);
	for (i = 0; i < tok->n; i++)
		token_text(tok, i, tok->texts + tok->toff[i]);
	return NESA_OK;
}

static enum nesa_status
spm_bytes(struct nesa_tokenizer *tok, struct nesa_err *err)
{
	int32_t i;

	for (i = 0; i < tok->n; i++) {
		int b;

		if (tok->types[i] != NESA_TOKEN_BYTE)
			continue;
		b = byte_piece(piece_at(tok, i), piece_len(tok, i));
		if (b < 0)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "byte token %d has piece '%.*s', not <0xXX>", i,
			                    (int)(piece_len(tok, i) < 32 ? piece_len(tok, i) : 32),
			                    piece_at(tok, i));
		if (tok->byte_id[b] < 0)
			tok->byte_id[b] = i;
	}
	return NESA_OK;
}

static enum nesa_status
gpt2_bytes(struct nesa_tokenizer *tok, struct nesa_err *err)
{
	unsigned b;

	for (b = 0; b < 256; b++) {
		uint32_t cp = gpt2_byte_cp(b);
		/* The UTF-8 of a code point below U+0800. */
		char sym[2] = {(char)(0xc0 | (cp >> 6)), (char)(0x80 | (cp & 0x3f))}, one = (char)cp;

		tok->byte_id[b] = cp < 0x80 ? lookup(tok, &one, 1) : lookup(tok, sym, 2);
		if (tok->byte_id[b] < 0)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "vocabulary lacks the symbol for byte 0x%02x (U+%04X)", b,
			                    (unsigned)cp);
	}
	return NESA_OK;
}

/* Parses "a b" into a merge; the two parts and their join must be pieces. */
static enum nesa_status
parse_merge(struct nesa_tokenizer *tok, size_t rank, const char *s, size_t len,
            struct nesa_err *err)
{
	char join[2 * NESA_TOKENIZER_MAX_PIECE];
	const char *sp = len > 0 ? memchr(s, ' ', len) : NULL;
	size_t la, lb;
	struct merge *m = &tok->merges[rank];
	int plen = (int)(len < 64 ? len : 64);
	uint32_t h;

	if (sp == NULL || sp == s || sp == s + len - 1 || memchr(sp + 1, ' ', len - (size_t)(sp - s) - 1))
		return nesa_err_set(err, NESA_EFORMAT,
		                    "merge %zu ('%.*s') is not two symbols separated by a space", rank,
		                    plen, s);
	la = (size_t)(sp - s);
	lb = len - la - 1;
	m->a = lookup(tok, s, la);
	m->b = lookup(tok, sp + 1, lb);
	if (m->a < 0 || m->b < 0)
		return nesa_err_set(err, NESA_EFORMAT, "merge %zu ('%.*s') has unknown symbol '%.*s'",
		                    rank, plen, s, m->a < 0 ? (int)(la < 64 ? la : 64) : (int)(lb < 64 ? lb : 64),
		                    m->a < 0 ? s : sp + 1);
	/* Both parts are pieces of at most NESA_TOKENIZER_MAX_PIECE bytes, so the join fits. */
	memcpy(join, s, la);
	memcpy(join + la, sp + 1, lb);
	m->id = lookup(tok, join, la + lb);
	if (m->id < 0)
		return nesa_err_set(err, NESA_EFORMAT, "merge %zu ('%.*s') makes '%.*s', not in the vocabulary",
		                    rank, plen, s, (int)(la + lb < 64 ? la + lb : 64), join);
	if (merge_rank(tok, m->a, m->b) >= 0)
		return NESA_OK; /* a repeated merge keeps its first rank */
	h = hash_pair(tok, m->a, m->b) & tok->mtable_mask;
	while (tok->mtable[h] >= 0)
		h = (h + 1) & tok->mtable_mask;
	tok->mtable[h] = (int32_t)rank;
	return NESA_OK;
}

static enum nesa_status
build_merges(struct nesa_tokenizer *tok, const char *const *merges, const size_t *lens, size_t n,
             struct nesa_err *err)
{
	enum nesa_status s;
	size_t i;

	if (n > (size_t)MAX_MERGES)
		return nesa_err_set(err, NESA_EFORMAT, "%zu merges are too many (at most %ld)", n,
		                    (long)MAX_MERGES);
	if (n > 0 && merges == NULL)
		return nesa_err_set(err, NESA_EINVAL, "merges missing");
	tok->merges = nesa_malloc(n * sizeof *tok->merges);
	if (tok->merges == NULL || !table_size(n, &tok->mtable_mask))
		return oom(err);
	tok->mtable = nesa_malloc(((size_t)tok->mtable_mask + 1) * sizeof *tok->mtable);
	if (tok->mtable == NULL)
		return oom(err);
	memset(tok->mtable, 0xff, ((size_t)tok->mtable_mask + 1) * sizeof *tok->mtable);
	for (i = 0; i < n; i++) {
		const char *m = merges[i] != NULL ? merges[i] : "";

		s = parse_merge(tok, i, m, lens != NULL ? lens[i] : strlen(m), err);
		if (s != NESA_OK)
			return s;
		tok->n_merges = i + 1;
	}
	return NESA_OK;
}

/* The common path of every source; see tokenizer-impl.h. */
enum nesa_status
tokenizer_build(enum nesa_tokenizer_kind kind, const struct nesa_tokenizer_vocab *v, bool unescape,
                const char *const *merges, const size_t *merge_lens, size_t n_merges,
                struct nesa_tokenizer **out, struct nesa_err *err)
{
	static const char *const special_name[4] = {"bos", "eos", "unk", "pad"};
	struct nesa_tokenizer *tok;
	enum nesa_status s;
	int32_t special[4];
	int i;

	*out = NULL;
	if (v == NULL)
		return nesa_err_set(err, NESA_EINVAL, "vocabulary missing");
	special[0] = v->bos, special[1] = v->eos, special[2] = v->unk, special[3] = v->pad;
	if (v->n < 1 || v->n > NESA_TOKENIZER_MAX_VOCAB)
		return nesa_err_set(err, NESA_EFORMAT, "vocabulary size %ld is out of range (1 to %ld)",
		                    (long)v->n, (long)NESA_TOKENIZER_MAX_VOCAB);
	if (v->pieces == NULL || (kind == NESA_TOKENIZER_SPM && v->scores == NULL))
		return nesa_err_set(err, NESA_EINVAL, "vocabulary arrays missing");
	for (i = 0; i < 4; i++)
		if (special[i] < -1 || special[i] >= v->n)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "%s token id %ld is out of range (vocabulary of %ld)",
			                    special_name[i], (long)special[i], (long)v->n);
	tok = nesa_calloc(1, sizeof *tok);
	if (tok == NULL)
		return oom(err);
	tok->magic = TOK_MAGIC;
	tok->kind = kind;
	tok->n = v->n;
	tok->bos = v->bos;
	tok->eos = v->eos;
	tok->unk = v->unk;
	tok->pad = v->pad;
	for (i = 0; i < 256; i++)
		tok->byte_id[i] = -1;
	/* Without libsodium's generator the seed stays zero: still correct. */
	if (sodium_init() >= 0)
		randombytes_buf(&tok->seed, sizeof tok->seed);
	/*
	 * Order matters: byte pieces are checked before build_texts decodes
	 * them, and the table exists before GPT-2's byte symbols and merges
	 * are looked up in it.
	 */
	if ((s = copy_pieces(tok, v, unescape, err)) != NESA_OK ||
	    (s = set_types(tok, v, err)) != NESA_OK ||
	    (kind == NESA_TOKENIZER_SPM && (s = spm_bytes(tok, err)) != NESA_OK) ||
	    (s = build_table(tok, err)) != NESA_OK || (s = build_specials(tok, err)) != NESA_OK ||
	    (s = build_texts(tok, err)) != NESA_OK)
		goto fail;
	if (kind == NESA_TOKENIZER_SPM) {
		tok->scores = nesa_malloc((size_t)v->n * sizeof *tok->scores);
		if (tok->scores == NULL) {
			s = oom(err);
			goto fail;
		}
		memcpy(tok->scores, v->scores, (size_t)v->n * sizeof *tok->scores);
	} else {
		if ((s = gpt2_bytes(tok, err)) != NESA_OK ||
		    (s = build_merges(tok, merges, merge_lens, n_merges, err)) != NESA_OK)
			goto fail;
		/* Without the locale, classification falls back to ASCII rules. */
		tok->loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
	}
	*out = tok;
	return NESA_OK;
fail:
	nesa_tokenizer_free(tok);
	return s;
}

enum nesa_status
nesa_tokenizer_new_spm(const struct nesa_tokenizer_vocab *v, struct nesa_tokenizer **out,
                       struct nesa_err *err)
{
	enum nesa_status s = tokenizer_build(NESA_TOKENIZER_SPM, v, true, NULL, NULL, 0, out, err);

	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot build tokenizer");
	return s;
}

enum nesa_status
nesa_tokenizer_new_gpt2(const struct nesa_tokenizer_vocab *v, const char *const *merges,
                        const size_t *merge_lens, size_t n_merges, struct nesa_tokenizer **out,
                        struct nesa_err *err)
{
	enum nesa_status s = tokenizer_build(NESA_TOKENIZER_GPT2, v, false, merges, merge_lens, n_merges,
	                                     out, err);

	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot build tokenizer");
	return s;
}

/* Accessors. */

enum nesa_tokenizer_kind
nesa_tokenizer_kind(const struct nesa_tokenizer *tok)
{
	assert(valid_handle(tok));
	return tok->kind;
}

int32_t
nesa_tokenizer_vocab_size(const struct nesa_tokenizer *tok)
{
	assert(valid_handle(tok));
	return tok->n;
}

int32_t
nesa_tokenizer_bos(const struct nesa_tokenizer *tok)
{
	assert(valid_handle(tok));
	return tok->bos;
}

int32_t
nesa_tokenizer_eos(const struct nesa_tokenizer *tok)
{
	assert(valid_handle(tok));
	return tok->eos;
}

int32_t
nesa_tokenizer_unk(const struct nesa_tokenizer *tok)
{
	assert(valid_handle(tok));
	return tok->unk;
}

int32_t
nesa_tokenizer_pad(const struct nesa_tokenizer *tok)
{
	assert(valid_handle(tok));
	return tok->pad;
}

const char *
nesa_tokenizer_piece(const struct nesa_tokenizer *tok, int32_t id, size_t *len)
{
	assert(valid_handle(tok));
	if (id < 0 || id >= tok->n)
		return NULL;
	if (len != NULL)
		*len = piece_len(tok, id);
	return piece_at(tok, id);
}

int
nesa_tokenizer_token_type(const struct nesa_tokenizer *tok, int32_t id)
{
	assert(valid_handle(tok));
	return id >= 0 && id < tok->n ? tok->types[id] : 0;
}

float
nesa_tokenizer_score(const struct nesa_tokenizer *tok, int32_t id)
{
	assert(valid_handle(tok));
	return id >= 0 && id < tok->n && tok->scores != NULL ? tok->scores[id] : 0.0f;
}

int32_t
nesa_tokenizer_lookup(const struct nesa_tokenizer *tok, const char *piece, size_t len)
{
	assert(valid_handle(tok));
	return piece != NULL && len > 0 ? lookup(tok, piece, len) : -1;
}

/* Encoding. */

struct sym {
	int32_t start;      /* byte offset in the text being merged */
	int32_t len;        /* bytes; 0 once merged into its left neighbour */
	int32_t prev, next; /* neighbours, -1 at the ends */
	int32_t id;         /* token */
	int32_t fixed;      /* byte fallback: never merges */
};

struct cand {
	float prio;   /* SPM score, or -rank for GPT-2: higher first */
	int32_t left; /* index of the left symbol: leftmost first on ties */
	int32_t size; /* bytes of both symbols when pushed, to spot stale entries */
	int32_t id;   /* the token the pair makes */
};

/* Scratch of one encode call, reused across fragments and words. */
struct work {
	const struct nesa_tokenizer *tok;
	const char *text;   /* the text the symbols index */
	struct sym *syms;   /* (n_syms) */
	size_t n_syms, cap_syms;
	struct cand *heap;  /* (n_heap) binary max-heap */
	size_t n_heap, cap_heap;
	int32_t *ids;       /* (n_ids) the output */
	size_t n_ids, cap_ids;
	char *scratch;      /* (cap_scratch) a fragment with its dummy prefix */
	size_t cap_scratch;
};

static bool
reserve(void **p, size_t *cap, size_t need, size_t elem)
{
	size_t ncap = *cap != 0 ? *cap : 64, bytes;
	void *q;

	if (need <= *cap)
		return true;
	while (ncap < need) {
		if (ncap > SIZE_MAX / 4)
			return false;
		ncap *= 2;
	}
	if (!nesa_mul_size(ncap, elem, &bytes))
		return false;
	q = nesa_realloc(*p, bytes);
	if (q == NULL)
		return false;
	*p = q;
	*cap = ncap;
	return true;
}

static bool
push_id(struct work *w, int32_t id)
{
	if (!reserve((void **)&w->ids, &w->cap_ids, w->n_ids + 1, sizeof *w->ids))
		return false;
	w->ids[w->n_ids++] = id;
	return true;
}

static bool
cand_before(const struct cand *a, const struct cand *b)
{
	return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static bool
heap_push(struct work *w, const struct cand *c)
{
	size_t i;

	if (!reserve((void **)&w->heap, &w->cap_heap, w->n_heap + 1, sizeof *w->heap))
		return false;
	i = w->n_heap++;
	while (i > 0 && cand_before(c, &w->heap[(i - 1) / 2])) {
		w->heap[i] = w->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	w->heap[i] = *c;
	return true;
}

static struct cand
heap_pop(struct work *w)
{
	struct cand top = w->heap[0], last = w->heap[--w->n_heap];
	size_t i = 0, n = w->n_heap;

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= n)
			break;
		if (c + 1 < n && cand_before(&w->heap[c + 1], &w->heap[c]))
			c++;
		if (!cand_before(&w->heap[c], &last))
			break;
		w->heap[i] = w->heap[c];
		i = c;
	}
	if (n > 0)
		w->heap[i] = last;
	return top;
}

/* Queues the pair starting at symbol l if it can merge. */
static bool
try_pair(struct work *w, int32_t l)
{
	const struct nesa_tokenizer *tok = w->tok;
	const struct sym *a, *b;
	struct cand c;

	if (l < 0 || w->syms[l].next < 0)
		return true;
	a = &w->syms[l];
	b = &w->syms[a->next];
	if (a->fixed || b->fixed)
		return true;
	if (tok->kind == NESA_TOKENIZER_SPM) {
		/* Adjacent spans: the concatenation is the text itself. */
		if (a->len + b->len > NESA_TOKENIZER_MAX_PIECE)
			return true;
		c.id = lookup(tok, w->text + a->start, (size_t)(a->len + b->len));
		if (c.id < 0 || !(tok->scores[c.id] > SPM_MIN_SCORE))
			return true;
		c.prio = tok->scores[c.id];
	} else {
		int32_t r = merge_rank(tok, a->id, b->id);

		if (r < 0)
			return true;
		c.id = tok->merges[r].id;
		c.prio = -(float)r;
	}
	c.left = l;
	c.size = a->len + b->len;
	return heap_push(w, &c);
}

/* Links the symbols, merges until no pair can, and appends the tokens. */
static bool
merge_all(struct work *w)
{
	struct sym *syms = w->syms;
	int32_t i, lo, hi, n = (int32_t)w->n_syms;

	if (n == 0)
		return true;
	for (i = 0; i < n; i++) {
		syms[i].prev = i - 1;
		syms[i].next = i + 1 < n ? i + 1 : -1;
	}
	/*
	 * Fixed symbols never merge, so the runs between them are independent
	 * and each gets its own small, cache-friendly heap.
	 */
	for (lo = 0; lo < n; lo = hi) {
		for (hi = lo + 1; !syms[lo].fixed && hi < n && !syms[hi].fixed;)
			hi++;
		w->n_heap = 0;
		for (i = lo; i + 1 < hi; i++)
			if (!try_pair(w, i))
				return false;
		while (w->n_heap > 0) {
			struct cand c = heap_pop(w);
			struct sym *a = &syms[c.left], *b;

			if (a->len == 0 || a->next < 0)
				continue;
			b = &syms[a->next];
			if (a->len + b->len != c.size)
				continue;
			a->len += b->len;
			a->id = c.id;
			b->len = 0;
			a->next = b->next;
			if (a->next >= 0)
				syms[a->next].prev = c.left;
			if (!try_pair(w, a->prev) || !try_pair(w, c.left))
				return false;
		}
	}
	for (i = 0; i >= 0; i = syms[i].next)
		if (!push_id(w, syms[i].id))
			return false;
	return true;
}

/* One UTF-8 group as run.c forms it: a piece if it is one, else its bytes. */
static enum nesa_status
spm_group(struct work *w, size_t i, size_t j, struct nesa_err *err)
{
	const struct nesa_tokenizer *tok = w->tok;
	int32_t id = lookup(tok, w->text + i, j - i);
	size_t k;

	if (id >= 0) {
		w->syms[w->n_syms++] = (struct sym){(int32_t)i, (int32_t)(j - i), -1, -1, id, 0};
		return NESA_OK;
	}
	for (k = i; k < j; k++) {
		unsigned char b = (unsigned char)w->text[k];

		id = tok->byte_id[b] >= 0 ? tok->byte_id[b] : tok->unk;
		if (id < 0)
			return nesa_err_set(err, NESA_EINVAL,
			                    "byte 0x%02x has no byte token and there is no unknown token", b);
		w->syms[w->n_syms++] = (struct sym){(int32_t)k, 1, -1, -1, id, 1};
	}
	return NESA_OK;
}

static enum nesa_status
spm_fragment(struct work *w, const char *frag, size_t len, bool prefix, struct nesa_err *err)
{
	enum nesa_status s;
	size_t i = 0, j, total = len;

	if (len == 0)
		return NESA_OK;
	w->text = frag;
	if (prefix) {
		total = len + 1;
		if (!reserve((void **)&w->scratch, &w->cap_scratch, total, 1))
			return oom(err);
		w->scratch[0] = ' ';
		memcpy(w->scratch + 1, frag, len);
		w->text = w->scratch;
	}
	if (!reserve((void **)&w->syms, &w->cap_syms, total, sizeof *w->syms))
		return oom(err);
	w->n_syms = 0;
	/* The dummy prefix is a token of its own in run.c, never grouped. */
	if (prefix) {
		if ((s = spm_group(w, 0, 1, err)) != NESA_OK)
			return s;
		i = 1;
	}
	/* run.c's groups: a byte and up to three continuation bytes. */
	for (; i < total; i = j) {
		for (j = i + 1; j < total && ((unsigned char)w->text[j] & 0xc0) == 0x80 && j - i < 4;)
			j++;
		if ((s = spm_group(w, i, j, err)) != NESA_OK)
			return s;
	}
	return merge_all(w) ? NESA_OK : oom(err);
}

enum { CL_OTHER, CL_LETTER, CL_NUMBER, CL_SPACE };

/* The pre-tokenizer class of the character at s[i]; see tokenizer.h. */
static int
char_class(const struct nesa_tokenizer *tok, const char *s, size_t len, size_t i, size_t *clen)
{
	unsigned char c = (unsigned char)s[i];
	int32_t cp;

	if (c < 0x80) {
		*clen = 1;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
			return CL_LETTER;
		if (c >= '0' && c <= '9')
			return CL_NUMBER;
		if (c == ' ' || (c >= '\t' && c <= '\r'))
			return CL_SPACE;
		return CL_OTHER;
	}
	*clen = utf8_next((const unsigned char *)s + i, len - i, &cp);
	if (cp < 0)
		return CL_OTHER;
	if (tok->loc == (locale_t)0)
		return CL_LETTER;
	if (iswspace_l((wint_t)cp, tok->loc))
		return CL_SPACE;
	if (iswdigit_l((wint_t)cp, tok->loc))
		return CL_NUMBER;
	if (iswalpha_l((wint_t)cp, tok->loc))
		return CL_LETTER;
	return CL_OTHER;
}

/*
 * The end of the pre-token starting at s[i], trying GPT-2's alternatives in
 * order: contractions; ' ?' then a run of letters, of numbers or of other
 * characters; whitespace up to but excluding the last one before a
 * non-space (\s+(?!\S)), or a single whitespace character (\s+).
 */
static size_t
pretoken_end(const struct nesa_tokenizer *tok, const char *s, size_t len, size_t i)
{
	size_t clen, k = i, end, last;
	int c0 = char_class(tok, s, len, i, &clen), ck = c0;

	if (s[i] == '\'' && i + 1 < len) {
		char a = s[i + 1], b = i + 2 < len ? s[i + 2] : '\0';

		if (a == 's' || a == 't' || a == 'm' || a == 'd')
			return i + 2;
		if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
			return i + 3;
	}
	if (s[i] == ' ' && i + 1 < len) {
		int c1 = char_class(tok, s, len, i + 1, &clen);

		if (c1 != CL_SPACE) {
			k = i + 1;
			ck = c1;
		}
	}
	if (ck != CL_SPACE) {
		for (end = k; end < len && char_class(tok, s, len, end, &clen) == ck;)
			end += clen;
		return end;
	}
	for (end = last = i; end < len && char_class(tok, s, len, end, &clen) == CL_SPACE;) {
		last = end;
		end += clen;
	}
	if (end == len || last == i)
		return end;
	return last;
}

static enum nesa_status
gpt2_fragment(struct work *w, const char *frag, size_t len, struct nesa_err *err)
{
	const struct nesa_tokenizer *tok = w->tok;
	size_t i, end, k;

	for (i = 0; i < len; i = end) {
		end = pretoken_end(tok, frag, len, i);
		if (!reserve((void **)&w->syms, &w->cap_syms, end - i, sizeof *w->syms))
			return oom(err);
		w->text = frag + i;
		for (k = 0; k < end - i; k++)
			w->syms[k] = (struct sym){(int32_t)k, 1, -1, -1,
			                          tok->byte_id[(unsigned char)frag[i + k]], 0};
		w->n_syms = end - i;
		if (!merge_all(w))
			return oom(err);
	}
	return NESA_OK;
}

/* The control token whose piece starts s, longest first, or -1. */
static int32_t
match_special(const struct nesa_tokenizer *tok, const char *s, size_t len)
{
	unsigned char c = (unsigned char)s[0];
	size_t i;

	if (!(tok->special_first[c / 8] & (1u << (c % 8))))
		return -1;
	for (i = 0; i < tok->n_specials; i++) {
		int32_t id = tok->specials[i];
		size_t pl = piece_len(tok, id);

		if (pl <= len && memcmp(piece_at(tok, id), s, pl) == 0)
			return id;
	}
	return -1;
}

static enum nesa_status
encode_fragment(struct work *w, const char *frag, size_t len, bool prefix, struct nesa_err *err)
{
	if (w->tok->kind == NESA_TOKENIZER_SPM)
		return spm_fragment(w, frag, len, prefix, err);
	return gpt2_fragment(w, frag, len, err);
}

enum nesa_status
nesa_tokenizer_encode(const struct nesa_tokenizer *tok, const char *text, size_t len,
                      unsigned flags, int32_t **ids, size_t *n, struct nesa_err *err)
{
	struct work w;
	enum nesa_status s = NESA_OK;
	size_t pos, start = 0;
	bool prefix = true; /* the dummy prefix goes first and after each BOS */

	*ids = NULL;
	*n = 0;
	if (!valid_handle(tok) || (text == NULL && len > 0))
		return nesa_err_set(err, NESA_EINVAL, "cannot encode text: invalid argument");
	if (len > MAX_TEXT)
		return nesa_err_set(err, NESA_ELIMIT, "cannot encode text of %zu bytes (at most %zu)",
		                    len, MAX_TEXT);
	if (text == NULL)
		text = "";
	memset(&w, 0, sizeof w);
	w.tok = tok;
	/* About two bytes per token in practice; the array grows if needed. */
	if (!reserve((void **)&w.ids, &w.cap_ids, len / 2 + 8, sizeof *w.ids)) {
		s = oom(err);
		goto done;
	}
	if ((flags & NESA_TOK_BOS) && tok->bos >= 0)
		w.ids[w.n_ids++] = tok->bos;
	/*
	 * Control pieces cut the text into fragments encoded on their own, so
	 * no merge crosses a control token (llama.cpp and HF do the same).
	 */
	if ((flags & NESA_TOK_SPECIAL) && tok->n_specials > 0) {
		for (pos = 0; pos < len;) {
			int32_t id = match_special(tok, text + pos, len - pos);

			if (id < 0) {
				pos++;
				continue;
			}
			s = encode_fragment(&w, text + start, pos - start, prefix, err);
			if (s != NESA_OK)
				goto done;
			if (!push_id(&w, id)) {
				s = oom(err);
				goto done;
			}
			pos += piece_len(tok, id);
			start = pos;
			prefix = id == tok->bos;
		}
	}
	s = encode_fragment(&w, text + start, len - start, prefix, err);
	if (s == NESA_OK && (flags & NESA_TOK_EOS) && tok->eos >= 0 && !push_id(&w, tok->eos))
		s = oom(err);
done:
	nesa_free(w.syms);
	nesa_free(w.heap);
	nesa_free(w.scratch);
	if (s != NESA_OK) {
		nesa_free(w.ids);
		nesa_err_prefix(err, "cannot encode text");
		return s;
	}
	*ids = w.ids;
	*n = w.n_ids;
	return NESA_OK;
}

/* Decoding. */

static void
token_bytes(const struct nesa_tokenizer *tok, int32_t prev, int32_t id, unsigned flags,
            const char **text, size_t *len)
{
	const char *t = tok->texts + tok->toff[id];
	size_t l = tok->toff[id + 1] - tok->toff[id];

	if (tok->types[id] == NESA_TOKEN_CONTROL) {
		if (!(flags & NESA_TOK_SPECIAL))
			l = 0;
	} else if (tok->kind == NESA_TOKENIZER_SPM && (prev < 0 || prev == tok->bos) && l > 0 &&
	           t[0] == ' ') {
		/* The dummy prefix the encoder put in front of the text. */
		t++;
		l--;
	}
	*text = t;
	*len = l;
}

enum nesa_status
nesa_tokenizer_decode_token(const struct nesa_tokenizer *tok, int32_t prev, int32_t id,
                            unsigned flags, const char **text, size_t *len, struct nesa_err *err)
{
	*text = "";
	*len = 0;
	if (!valid_handle(tok))
		return nesa_err_set(err, NESA_EINVAL, "cannot decode token: invalid tokenizer");
	if (id < 0 || id >= tok->n)
		return nesa_err_set(err, NESA_EINVAL,
		                    "cannot decode token %ld: out of range (vocabulary of %ld)",
		                    (long)id, (long)tok->n);
	token_bytes(tok, prev, id, flags, text, len);
	return NESA_OK;
}

enum nesa_status
nesa_tokenizer_decode(const struct nesa_tokenizer *tok, const int32_t *ids, size_t n,
                      unsigned flags, char **text, size_t *len, struct nesa_err *err)
{
	size_t total = 0, i, l;
	const char *t;
	char *out;

	*text = NULL;
	*len = 0;
	if (!valid_handle(tok) || (ids == NULL && n > 0))
		return nesa_err_set(err, NESA_EINVAL, "cannot decode tokens: invalid argument");
	for (i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= tok->n)
			return nesa_err_set(err, NESA_EINVAL,
			                    "cannot decode token %ld at position %zu: out of range "
			                    "(vocabulary of %ld)", (long)ids[i], i, (long)tok->n);
		token_bytes(tok, i > 0 ? ids[i - 1] : -1, ids[i], flags, &t, &l);
		total += l; /* each at most NESA_TOKENIZER_MAX_PIECE, n fits in memory: no overflow */
	}
	out = nesa_malloc(total + 1);
	if (out == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "cannot decode %zu tokens: out of memory", n);
	total = 0;
	for (i = 0; i < n; i++) {
		token_bytes(tok, i > 0 ? ids[i - 1] : -1, ids[i], flags, &t, &l);
		memcpy(out + total, t, l);
		total += l;
	}
	out[total] = '\0';
	*text = out;
	*len = total;
	return NESA_OK;
}
