/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for tokenizer: SPM (llama2.c tok512.bin, GGUF-style arrays, a
 * hand-made vocabulary) and GPT-2 (the hand-made fixture in
 * tests/data/tokenizer), checked against the stories260K references and
 * ids derived by hand; round trips; hostile files and tensor sets;
 * allocation failures.
 *
 * Reference data comes from $NESA_DATA (tests skip without it); the GPT-2
 * fixture from $NESA_TEST_DATA/tokenizer.
 */
#include "config.h"

#include <locale.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "log.h"
#include "tensor.h"
#include "tokenizer.h"
#include "xio.h"

#define TOK512 "stories260K/tok512.bin"
#define REF_TOKENS "stories260K/ref_tokens_64.i32"
#define REF_TEXT "stories260K/expected_greedy_t0_n256.txt"
#define GGUF "stories260K/stories260K.gguf"
#define STORIES "tinystories_val_excerpt/tinystories_val_excerpt.txt"

/* Path of a reference file, or NULL when the data is not there. */
static const char *
data_file(const char *rel)
{
	static char buf[4][1024];
	static int next;
	const char *dir = getenv("NESA_DATA");
	char *p = buf[next++ % 4];
	struct stat st;

	if (dir == NULL || *dir == '\0')
		return NULL;
	snprintf(p, sizeof buf[0], "%s/%s", dir, rel);
	return stat(p, &st) == 0 ? p : NULL;
}

#define NEED_DATA(var, rel)                                                                 \
	do {                                                                                \
		if ((var = data_file(rel)) == NULL) {                                       \
			print_message("NESA_DATA unset or '%s' missing: skipping\n", rel);  \
			skip();                                                             \
		}                                                                           \
	} while (0)

/* The GPT-2 fixture directory ($NESA_TEST_DATA, else $NESA_SRCDIR/tests/data). */
static const char *
fixture(const char *name)
{
	static char buf[2][1024];
	static int next;
	const char *dir = getenv("NESA_TEST_DATA"), *src = getenv("NESA_SRCDIR");
	char *p = buf[next++ % 2];

	if (dir != NULL)
		snprintf(p, sizeof buf[0], "%s/tokenizer/%s", dir, name);
	else
		snprintf(p, sizeof buf[0], "%s/tests/data/tokenizer/%s", src != NULL ? src : ".", name);
	return p;
}

static void
write_file(const char *path, const void *data, size_t n)
{
	FILE *fp = fopen(path, "wb");

	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, n, fp), n);
	assert_int_equal(fclose(fp), 0);
}

static char *
read_all(const char *path, size_t *n)
{
	struct nesa_err err;
	char *buf;

	assert_int_equal(nesa_read_file(path, (size_t)1 << 30, &buf, n, &err), NESA_OK);
	return buf;
}

static struct nesa_tokenizer *
load_tok512(void)
{
	struct nesa_tokenizer *tok;
	struct nesa_err err;
	const char *path;

	NEED_DATA(path, TOK512);
	assert_int_equal(nesa_tokenizer_load_llama2c(path, 512, &tok, &err), NESA_OK);
	return tok;
}

static struct nesa_tokenizer *
load_fixture(void)
{
	struct nesa_tokenizer *tok;
	struct nesa_err err;
	enum nesa_status s;

	s = nesa_tokenizer_load_gpt2(fixture("vocab.json"), fixture("merges.txt"), &tok, &err);
	if (s != NESA_OK)
		print_message("%s\n", err.msg);
	assert_int_equal(s, NESA_OK);
	return tok;
}

/* Encodes and compares with the expected ids. */
static void
check_ids(const struct nesa_tokenizer *tok, const char *text, size_t len, unsigned flags,
          const int32_t *want, size_t n_want)
{
	struct nesa_err err;
	int32_t *ids;
	size_t n, i;

	assert_int_equal(nesa_tokenizer_encode(tok, text, len, flags, &ids, &n, &err), NESA_OK);
	if (n != n_want || (n > 0 && memcmp(ids, want, n * sizeof *ids) != 0)) {
		print_message("encoding '%.*s' gave", (int)len, text);
		for (i = 0; i < n; i++)
			print_message(" %d", ids[i]);
		print_message("\n");
	}
	assert_int_equal(n, n_want);
	if (n > 0)
		assert_memory_equal(ids, want, n * sizeof *ids);
	nesa_free(ids);
}

#define CHECK_IDS(tok, str, flags, ...)                                                     \
	do {                                                                                \
		const int32_t want_[] = {__VA_ARGS__};                                      \
		check_ids(tok, str, sizeof str - 1, flags, want_, sizeof want_ / sizeof *want_); \
	} while (0)

/*
 * decode(encode(s)) == s, and the streaming decoder agrees with the
 * sequence decoder.  Returns the number of tokens.
 */
static size_t
roundtrip(const struct nesa_tokenizer *tok, const char *s, size_t len, unsigned flags)
{
	struct nesa_err err;
	int32_t *all, *ids;
	size_t n, i, got_len, pos = 0, total;
	char *got;

	assert_int_equal(nesa_tokenizer_encode(tok, s, len, flags, &all, &total, &err), NESA_OK);
	/* Decoding with NESA_TOK_SPECIAL writes out the BOS and EOS the flags added. */
	ids = all;
	n = total;
	if ((flags & NESA_TOK_SPECIAL) && (flags & NESA_TOK_BOS) && nesa_tokenizer_bos(tok) >= 0)
		ids++, n--;
	if ((flags & NESA_TOK_SPECIAL) && (flags & NESA_TOK_EOS) && nesa_tokenizer_eos(tok) >= 0)
		n--;
	assert_int_equal(nesa_tokenizer_decode(tok, ids, n, flags & NESA_TOK_SPECIAL, &got, &got_len,
	                                       &err),
	                 NESA_OK);
	if (got_len != len || memcmp(got, s, len) != 0)
		print_message("round trip of %zu bytes gave %zu bytes\n", len, got_len);
	assert_int_equal(got_len, len);
	assert_memory_equal(got, s, len);
	for (i = 0; i < n; i++) {
		const char *t;
		size_t l;

		assert_int_equal(nesa_tokenizer_decode_token(tok, i > 0 ? ids[i - 1] : -1, ids[i],
		                                             flags & NESA_TOK_SPECIAL, &t, &l, &err),
		                 NESA_OK);
		assert_true(pos + l <= len);
		assert_memory_equal(t, s + pos, l);
		pos += l;
	}
	assert_int_equal(pos, len);
	nesa_free(got);
	nesa_free(all);
	return total;
}

#define ROUNDTRIP(tok, str, flags) roundtrip(tok, str, sizeof str - 1, flags)

/* Strings every tokenizer must round-trip. */
static const struct {
	const char *s;
	size_t len;
} tricky[] = {
#define T(x) {x, sizeof x - 1}
	T(""),
	T(" "),
	T("  leading and trailing  "),
	T("Once upon a time, there was a little girl named Lily."),
	T("emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd and flags \xf0\x9f\x87\xab\xf0\x9f\x87\xb7"),
	T("CJK \xe4\xb8\xad\xe6\x96\x87\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4"),
	T("combining a\xcc\x81 e\xcc\x88\xcc\x81 n\xcc\x83"),
	T("control \x01\x02\x1b[0m\x7f\t\r\n\v\f"),
	T("nul \0 inside"),
	T("invalid \x80 \xc3 \xe2\x82 \xf0\x9f\x98 \xff\xfe \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80"),
	T("\x80\x80\x80\x80\x80\x80 continuation run"),
	T("\xe2\x96\x81 literal U+2581 \xe2\x96\x81\xe2\x96\x81"),
	T("<s> </s> <unk> <0x41> <|endoftext|>"),
	T("\n\n\nnew\n\nlines\n"),
	T("it's we're they've I'm you'll he'd 123 4567 \xd9\xa0\xd9\xa1 \xc2\xb2 x\xc2\xa0y"),
#undef T
};

static void
roundtrip_all(const struct nesa_tokenizer *tok)
{
	static const unsigned flag_sets[] = {0, NESA_TOK_BOS, NESA_TOK_BOS | NESA_TOK_EOS};
	uint64_t rng = 137;
	char buf[300];
	size_t i, f, k;

	for (i = 0; i < sizeof tricky / sizeof *tricky; i++)
		for (f = 0; f < 3; f++)
			roundtrip(tok, tricky[i].s, tricky[i].len, flag_sets[f]);
	/* Random bytes: mostly invalid UTF-8, with spaces to exercise merging. */
	for (i = 0; i < 200; i++) {
		size_t len = test_rand(&rng) % sizeof buf;

		for (k = 0; k < len; k++) {
			uint64_t r = test_rand(&rng);

			buf[k] = (char)(r % 4 == 0 ? ' ' : r % 4 == 1 ? 'a' + (int)(r >> 8) % 26
			                                                : (int)(r >> 8));
		}
		roundtrip(tok, buf, len, flag_sets[i % 3]);
	}
}

/*
 * tok512.bin against the model's own output: the 63 greedy tokens after
 * BOS decode to the first bytes of the reference text, and encoding that
 * text gives the same 64 ids back (the model's greedy tokens happen to be
 * the canonical BPE encoding of what they spell).
 */
static void
test_spm_reference(void **state)
{
	struct nesa_tokenizer *tok;
	const char *ptok, *ptext, *t;
	char *ref_text, *seq, text[2048];
	size_t ref_len, tok_len, len = 0, l, seq_len, i;
	int32_t ref[64];
	struct nesa_err err;
	char *raw;

	(void)state;
	NEED_DATA(ptok, REF_TOKENS);
	NEED_DATA(ptext, REF_TEXT);
	tok = load_tok512();
	assert_int_equal(nesa_tokenizer_kind(tok), NESA_TOKENIZER_SPM);
	assert_int_equal(nesa_tokenizer_vocab_size(tok), 512);
	assert_int_equal(nesa_tokenizer_bos(tok), 1);
	assert_int_equal(nesa_tokenizer_eos(tok), 2);
	assert_int_equal(nesa_tokenizer_unk(tok), 0);
	assert_int_equal(nesa_tokenizer_pad(tok), -1);
	assert_string_equal(nesa_tokenizer_piece(tok, 259, NULL), " t");
	assert_string_equal(nesa_tokenizer_piece(tok, 1, NULL), "\n<s>\n");
	assert_string_equal(nesa_tokenizer_piece(tok, 13, NULL), "<0x0A>");
	assert_null(nesa_tokenizer_piece(tok, 512, NULL));
	assert_int_equal(nesa_tokenizer_token_type(tok, 0), NESA_TOKEN_UNKNOWN);
	assert_int_equal(nesa_tokenizer_token_type(tok, 1), NESA_TOKEN_CONTROL);
	assert_int_equal(nesa_tokenizer_token_type(tok, 3), NESA_TOKEN_BYTE);
	assert_int_equal(nesa_tokenizer_token_type(tok, 403), NESA_TOKEN_NORMAL);
	assert_true(nesa_tokenizer_score(tok, 260) == -1.0f);
	assert_int_equal(nesa_tokenizer_lookup(tok, " Once", 5), 403);
	assert_int_equal(nesa_tokenizer_lookup(tok, "<0x0A>", 6), -1);

	raw = read_all(ptok, &tok_len);
	assert_int_equal(tok_len, sizeof ref);
	memcpy(ref, raw, sizeof ref); /* little-endian host, checked by configure */
	nesa_free(raw);
	assert_int_equal(ref[0], 1);
	ref_text = read_all(ptext, &ref_len);

	/* The streaming decoder, as run.c's generate loop calls it. */
	for (i = 1; i < 64; i++) {
		assert_int_equal(nesa_tokenizer_decode_token(tok, ref[i - 1], ref[i], 0, &t, &l, &err),
		                 NESA_OK);
		assert_true(len + l < sizeof text);
		memcpy(text + len, t, l);
		len += l;
	}
	assert_true(len > 150 && len <= ref_len);
	assert_memory_equal(text, ref_text, len);
	/* The 63 tokens end in "high.\nL": the byte token <0x0A> then "L". */
	assert_memory_equal(text + len - 7, "high.\nL", 7);
	assert_int_equal(nesa_tokenizer_decode(tok, ref, 64, 0, &seq, &seq_len, &err), NESA_OK);
	assert_int_equal(seq_len, len);
	assert_memory_equal(seq, text, len);
	nesa_free(seq);
	check_ids(tok, text, len, NESA_TOK_BOS, ref, 64);
	nesa_free(ref_text);
	nesa_tokenizer_free(tok);
}

/*
 * Ids worked out by hand from tok512.bin's vocabulary (piece: id, score):
 * " ": 410 (-151), "a": 412 (-153), " a": 261 (-2), " t": 259 (-0),
 * "he": 260 (-1), " th": 308 (-49), " the": 265 (-6), "é" (c3 a9): 485,
 * " Lily": 317 (-58); no "\n" piece, so byte fallback <0x0A> = 10 + 3 = 13.
 */
static void
test_spm_hand_tok512(void **state)
{
	struct nesa_tokenizer *tok;

	(void)state;
	tok = load_tok512();
	/* Empty text: no dummy prefix, only what the flags add. */
	check_ids(tok, "", 0, 0, NULL, 0);
	CHECK_IDS(tok, "", NESA_TOK_BOS | NESA_TOK_EOS, 1, 2);
	/* " " + "a": the pair " a" (261) merges. */
	CHECK_IDS(tok, "a", NESA_TOK_BOS, 1, 261);
	/*
	 * " t h e": pairs " t" (-0), "th" (absent), "he" (-1); " t" wins ->
	 * " t" h e; then " th" (-49) vs "he" (-1): "he" -> " t" "he"; then
	 * " the" (-6) -> 265.
	 */
	CHECK_IDS(tok, "the", 0, 265);
	/* The newline has no piece: bytes never merge, so " " stays alone. */
	CHECK_IDS(tok, "\n", 0, 410, 13);
	/* "é" is one UTF-8 group with a piece; " é" is not a piece. */
	CHECK_IDS(tok, "\xc3\xa9", 0, 410, 485);
	/* U+1F600 (f0 9f 98 80) is no piece: four byte tokens, byte + 3. */
	CHECK_IDS(tok, "\xf0\x9f\x98\x80", 0, 410, 0xf0 + 3, 0x9f + 3, 0x98 + 3, 0x80 + 3);
	/* " L i l y" merges up to the whole word " Lily" (317). */
	CHECK_IDS(tok, "Lily", 0, 317);
	/* Two spaces: the prefix and the text's space, and " " + " " is no piece. */
	CHECK_IDS(tok, " ", 0, 410, 410);
	nesa_tokenizer_free(tok);
}

/*
 * A hand-made GGUF-style SPM vocabulary (U+2581 for spaces, <s>/</s>):
 * 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then the pieces below.
 */
#define SMALL_N 268
static const char *const small_extra[SMALL_N - 259] = {
	"\xe2\x96\x81", "a", "b", "ab", "ba", "\xe2\x96\x81" "a", "aa", "\xc3\xa9", "x\xe2\x96\x81y",
};
static const float small_extra_scores[SMALL_N - 259] = {-1, -2, -3, -1, -1, -5, -1e10f, -4, -9};

static struct nesa_tokenizer *
small_spm(int with_bytes, struct nesa_err *err, enum nesa_status *status)
{
	static char bytes[256][8];
	const char *pieces[SMALL_N];
	float scores[SMALL_N];
	int32_t types[SMALL_N];
	struct nesa_tokenizer_vocab v = {0};
	struct nesa_tokenizer *tok;
	int i;

	for (i = 0; i < SMALL_N; i++) {
		scores[i] = 0;
		types[i] = NESA_TOKEN_NORMAL;
		if (i < 3) {
			pieces[i] = i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>";
			types[i] = i == 0 ? NESA_TOKEN_UNKNOWN : NESA_TOKEN_CONTROL;
		} else if (i < 259) {
			snprintf(bytes[i - 3], sizeof bytes[0], "<0x%02X>", i - 3);
			pieces[i] = bytes[i - 3];
			/* Without byte tokens, these become unused filler. */
			types[i] = with_bytes ? NESA_TOKEN_BYTE : NESA_TOKEN_UNUSED;
		} else {
			pieces[i] = small_extra[i - 259];
			scores[i] = small_extra_scores[i - 259];
		}
	}
	v.n = SMALL_N;
	v.pieces = pieces;
	v.scores = scores;
	v.types = types;
	v.bos = 1;
	v.eos = 2;
	v.unk = with_bytes ? 0 : -1;
	v.pad = -1;
	*status = nesa_tokenizer_new_spm(&v, &tok, err);
	return tok;
}

static void
test_spm_hand_small(void **state)
{
	struct nesa_tokenizer *tok, *nobytes;
	enum nesa_status s;
	struct nesa_err err;
	int32_t *ids;
	size_t n;

	(void)state;
	tok = small_spm(1, &err, &s);
	assert_int_equal(s, NESA_OK);
	/* U+2581 became a space: 259 is " ", 264 is " a", 267 "x y". */
	assert_string_equal(nesa_tokenizer_piece(tok, 259, NULL), " ");
	assert_string_equal(nesa_tokenizer_piece(tok, 264, NULL), " a");
	assert_int_equal(nesa_tokenizer_lookup(tok, "x y", 3), 267);
	/* " a b": " a" (-5) and "ab" (-1): "ab" wins; " ab" is no piece. */
	CHECK_IDS(tok, "ab", 0, 259, 262);
	/* " a b a": "ab" and "ba" tie at -1: the leftmost merges first. */
	CHECK_IDS(tok, "aba", 0, 259, 262, 260);
	CHECK_IDS(tok, "bab", 0, 259, 263, 261);
	/* "aa" scores -1e10, which run.c never merges: " a" (-5) does. */
	CHECK_IDS(tok, "aa", 0, 264, 260);
	/* "c" is no piece: byte 0x63 -> token 0x63 + 3. */
	CHECK_IDS(tok, "c", 0, 259, 0x63 + 3);
	/* A literal U+2581 is not a space: three byte tokens, and it round-trips. */
	CHECK_IDS(tok, "\xe2\x96\x81", 0, 259, 0xe2 + 3, 0x96 + 3, 0x81 + 3);
	/*
	 * With NESA_TOK_SPECIAL, "<s>" in the text is BOS: " a" before it, and
	 * the fragment after BOS gets its own dummy prefix.  Without the flag
	 * "<s>" is plain text ('<', 's', '>' byte tokens).
	 */
	CHECK_IDS(tok, "a<s>b", NESA_TOK_SPECIAL, 264, 1, 259, 261);
	CHECK_IDS(tok, "a</s>b", NESA_TOK_SPECIAL, 264, 2, 261);
	CHECK_IDS(tok, "<s>", 0, 259, '<' + 3, 's' + 3, '>' + 3);
	ROUNDTRIP(tok, "a<s>b", NESA_TOK_SPECIAL);
	ROUNDTRIP(tok, "a</s>b<s> <s>", NESA_TOK_SPECIAL | NESA_TOK_BOS);
	ROUNDTRIP(tok, "</s> x", NESA_TOK_SPECIAL);
	roundtrip_all(tok);

	/* No byte tokens and no unknown token: an unknown character is an error. */
	nobytes = small_spm(0, &err, &s);
	assert_int_equal(s, NESA_OK);
	CHECK_IDS(nobytes, "ab", 0, 259, 262);
	assert_int_equal(nesa_tokenizer_encode(nobytes, "c", 1, 0, &ids, &n, &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "cannot encode text: byte 0x63 has no byte token"));
	assert_null(ids);
	nesa_tokenizer_free(nobytes);
	nesa_tokenizer_free(tok);
}

/*
 * Just enough GGUF to pull the tokenizer arrays out of stories260K.gguf
 * (GGUF v3: magic, version, tensor count, KV count, then key, type, value).
 * Not a general reader: gguf.c is.
 */
struct gguf_vocab {
	uint64_t n;
	const char **pieces;
	size_t *lens;
	float *scores;
	int32_t *types;
	int64_t bos, eos, unk;
};

static uint64_t
rd_u64(const char *buf, size_t size, size_t *off)
{
	uint64_t v;

	assert_true(*off + 8 <= size);
	memcpy(&v, buf + *off, 8);
	*off += 8;
	return v;
}

static uint32_t
rd_u32(const char *buf, size_t size, size_t *off)
{
	uint32_t v;

	assert_true(*off + 4 <= size);
	memcpy(&v, buf + *off, 4);
	*off += 4;
	return v;
}

static size_t
gguf_skip(const char *buf, size_t size, size_t off, uint32_t type, struct gguf_vocab *out,
          const char *key)
{
	static const size_t widths[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
	uint64_t i, n, len;
	uint32_t et;

	if (type == 8) {
		len = rd_u64(buf, size, &off);
		return off + len;
	}
	if (type != 9) {
		assert_true(type < 13);
		if (strstr(key, "_token_id") != NULL) {
			uint32_t v = rd_u32(buf, size, &off);
			int64_t id = v == UINT32_MAX ? -1 : (int64_t)v;

			if (strcmp(key, "tokenizer.ggml.bos_token_id") == 0)
				out->bos = id;
			else if (strcmp(key, "tokenizer.ggml.eos_token_id") == 0)
				out->eos = id;
			else if (strcmp(key, "tokenizer.ggml.unknown_token_id") == 0)
				out->unk = id;
			return off;
		}
		return off + widths[type];
	}
	et = rd_u32(buf, size, &off);
	n = rd_u64(buf, size, &off);
	if (strcmp(key, "tokenizer.ggml.tokens") == 0) {
		out->n = n;
		out->pieces = calloc(n, sizeof *out->pieces);
		out->lens = calloc(n, sizeof *out->lens);
		for (i = 0; i < n; i++) {
			len = rd_u64(buf, size, &off);
			out->pieces[i] = buf + off;
			out->lens[i] = len;
			off += len;
		}
		return off;
	}
	if (strcmp(key, "tokenizer.ggml.scores") == 0 || strcmp(key, "tokenizer.ggml.token_type") == 0) {
		void *dst = malloc(n * 4);

		assert_true(off + n * 4 <= size);
		memcpy(dst, buf + off, n * 4);
		if (key[15] == 's')
			out->scores = dst;
		else
			out->types = dst;
		return off + n * 4;
	}
	for (i = 0; i < n; i++)
		off = gguf_skip(buf, size, off, et, out, "");
	return off;
}

static void
test_spm_gguf_arrays(void **state)
{
	struct nesa_tokenizer *tok, *ref;
	struct gguf_vocab g = {0, NULL, NULL, NULL, NULL, -1, -1, -1};
	struct nesa_tokenizer_vocab v = {0};
	struct nesa_err err;
	const char *path;
	size_t size, off = 4, i;
	uint64_t nkv, k;
	char *buf, key[256];
	int32_t id;

	(void)state;
	NEED_DATA(path, GGUF);
	ref = load_tok512();
	buf = read_all(path, &size);
	assert_memory_equal(buf, "GGUF", 4);
	assert_int_equal(rd_u32(buf, size, &off), 3);
	(void)rd_u64(buf, size, &off);
	nkv = rd_u64(buf, size, &off);
	for (k = 0; k < nkv; k++) {
		uint64_t klen = rd_u64(buf, size, &off);
		uint32_t type;

		assert_true(klen < sizeof key && off + klen <= size);
		memcpy(key, buf + off, klen);
		key[klen] = '\0';
		off += klen;
		type = rd_u32(buf, size, &off);
		off = gguf_skip(buf, size, off, type, &g, key);
	}
	assert_int_equal(g.n, 512);
	assert_non_null(g.scores);
	assert_non_null(g.types);
	/* What the converter stores: <s>, </s>, and U+2581 for spaces. */
	assert_memory_equal(g.pieces[1], "<s>", 3);
	assert_memory_equal(g.pieces[259], "\xe2\x96\x81t", 4);
	assert_int_equal(g.types[0], NESA_TOKEN_UNKNOWN);
	assert_int_equal(g.types[1], NESA_TOKEN_CONTROL);
	assert_int_equal(g.types[3], NESA_TOKEN_BYTE);
	v.n = (int32_t)g.n;
	v.pieces = g.pieces;
	v.lens = g.lens;
	v.scores = g.scores;
	v.types = g.types;
	v.bos = (int32_t)g.bos;
	v.eos = (int32_t)g.eos;
	v.unk = (int32_t)g.unk;
	v.pad = -1;
	assert_int_equal(nesa_tokenizer_new_spm(&v, &tok, &err), NESA_OK);
	assert_int_equal(nesa_tokenizer_bos(tok), 1);
	assert_int_equal(nesa_tokenizer_eos(tok), 2);
	/* The same vocabulary as tok512.bin once U+2581 is a space again. */
	for (id = 3; id < 512; id++) {
		size_t la, lb;
		const char *a = nesa_tokenizer_piece(tok, id, &la), *b = nesa_tokenizer_piece(ref, id, &lb);

		assert_int_equal(la, lb);
		assert_memory_equal(a, b, la);
		assert_true(nesa_tokenizer_score(tok, id) == nesa_tokenizer_score(ref, id));
		assert_int_equal(nesa_tokenizer_token_type(tok, id), nesa_tokenizer_token_type(ref, id));
	}
	/* Identical encodings, text and random strings alike. */
	for (i = 0; i < sizeof tricky / sizeof *tricky; i++) {
		int32_t *a, *b;
		size_t na, nb;

		assert_int_equal(nesa_tokenizer_encode(tok, tricky[i].s, tricky[i].len, NESA_TOK_BOS, &a,
		                                       &na, &err), NESA_OK);
		assert_int_equal(nesa_tokenizer_encode(ref, tricky[i].s, tricky[i].len, NESA_TOK_BOS, &b,
		                                       &nb, &err), NESA_OK);
		assert_int_equal(na, nb);
		assert_memory_equal(a, b, na * sizeof *a);
		nesa_free(a);
		nesa_free(b);
	}
	/* Control pieces differ: "<s>" here, "\n<s>\n" in tok512.bin. */
	CHECK_IDS(tok, "x<s>", NESA_TOK_SPECIAL, 410, 444, 1);
	free(g.pieces);
	free(g.lens);
	free(g.scores);
	free(g.types);
	nesa_free(buf);
	nesa_tokenizer_free(tok);
	nesa_tokenizer_free(ref);
}

static void
test_spm_roundtrip(void **state)
{
	struct nesa_tokenizer *tok;

	(void)state;
	tok = load_tok512();
	roundtrip_all(tok);
	ROUNDTRIP(tok, "\n<s>\n in text", NESA_TOK_SPECIAL);
	nesa_tokenizer_free(tok);
}

/* The whole TinyStories excerpt round-trips, and 1 MB encodes quickly. */
static void
test_spm_stories(void **state)
{
	struct nesa_tokenizer *tok;
	struct nesa_err err;
	const char *path;
	char *text, *big;
	size_t len, n, big_len = (size_t)1 << 20, i;
	int32_t *ids;
	double t0, dt;

	(void)state;
	NEED_DATA(path, STORIES);
	tok = load_tok512();
	text = read_all(path, &len);
	n = roundtrip(tok, text, len, NESA_TOK_BOS);
	/* About 2 bytes per token for this 512-token vocabulary on its own domain. */
	assert_true(n > len / 4 && n < len / 2);
	big = malloc(big_len);
	assert_non_null(big);
	for (i = 0; i < big_len; i++)
		big[i] = text[i % len];
	t0 = nesa_now();
	assert_int_equal(nesa_tokenizer_encode(tok, big, big_len, NESA_TOK_BOS, &ids, &n, &err),
	                 NESA_OK);
	dt = nesa_now() - t0;
	/* Speed is a benchmark's business, not a test's: only reported here. */
	print_message("encoded 1 MiB into %zu tokens in %.3f s\n", n, dt);
	nesa_free(ids);
	/* The quadratic worst case for a naive merge loop: one long run. */
	memset(big, 'a', big_len);
	t0 = nesa_now();
	assert_int_equal(nesa_tokenizer_encode(tok, big, big_len, 0, &ids, &n, &err), NESA_OK);
	dt = nesa_now() - t0;
	print_message("encoded a 1 MiB run of one letter into %zu tokens in %.3f s\n", n, dt);
	nesa_free(ids);
	free(big);
	nesa_free(text);
	nesa_tokenizer_free(tok);
}

/*
 * The GPT-2 fixture (tests/data/tokenizer): ids 0..255 are the byte
 * symbols with id = byte value (so 'a' is 97, 'Ġ' = byte 0x20 is 32,
 * 'Ċ' = 0x0a is 10), then one token per merge, id = 256 + rank:
 *   0 Ġ t   1 h e    2 Ġt he   3 l l    4 e ll   5 H ell   6 Hell o
 *   7 o r   8 Ġ w    9 Ġw or  10 Ġwor l  11 Ġworl d  12 1 2  13 Ġ Ġ
 *  14 ' s  15 a t   16 Ġ c    17 Ġc at  18 a a    19 Ċ Ċ   20 a ä  21 a Ì
 * and <|endoftext|> = 278.
 */
static void
test_gpt2_fixture(void **state)
{
	struct nesa_tokenizer *tok;
	struct nesa_err err;
	const int32_t eot[3] = {97, 278, 98};
	locale_t loc;
	size_t len;
	char *text;

	(void)state;
	tok = load_fixture();
	assert_int_equal(nesa_tokenizer_kind(tok), NESA_TOKENIZER_GPT2);
	assert_int_equal(nesa_tokenizer_vocab_size(tok), 279);
	assert_int_equal(nesa_tokenizer_bos(tok), 278);
	assert_int_equal(nesa_tokenizer_eos(tok), 278);
	assert_int_equal(nesa_tokenizer_unk(tok), -1);
	assert_string_equal(nesa_tokenizer_piece(tok, 256, NULL), "\xc4\xa0t");
	assert_string_equal(nesa_tokenizer_piece(tok, 278, NULL), "<|endoftext|>");
	assert_int_equal(nesa_tokenizer_token_type(tok, 278), NESA_TOKEN_CONTROL);
	assert_int_equal(nesa_tokenizer_lookup(tok, "\xc4\xa0the", 5), 258);
	assert_int_equal(nesa_tokenizer_lookup(tok, "<|endoftext|>", 13), -1);

	/*
	 * "Hello" | " world".  Hello: only (l,l) r3 applies -> H e ll o; then
	 * (e,ll) r4 -> H ell o; (H,ell) r5 -> Hell o; (Hell,o) r6 -> 262.
	 * " world": (Ġ,w) r8 and (o,r) r7: r7 first -> Ġ w or l d; then
	 * r8, r9, r10, r11 in turn -> 267.
	 */
	CHECK_IDS(tok, "Hello world", 0, 262, 267);
	/* Without the space, (w,or) is no merge: w or l d. */
	CHECK_IDS(tok, "world", 0, 119, 263, 108, 100);
	/*
	 * "the" | " cat" | "'s": t (h,e)r1 -> t he, and (t,he) is no merge;
	 * Ġ c a t: (a,t) r15 before (Ġ,c) r16, then (Ġc,at) r17 -> 273;
	 * the contraction "'s" is its own pre-token, (',s) r14 -> 270.
	 */
	CHECK_IDS(tok, "the cat's", 0, 116, 257, 273, 270);
	/* Ġ t h e: (Ġ,t) r0, then (h,e) r1, then (Ġt,he) r2 -> 258. */
	CHECK_IDS(tok, " the", 0, 258);
	/*
	 * \s+(?!\S): of two spaces before "the", the first is a pre-token on
	 * its own and the second joins the word, so (Ġ,Ġ) never meets.
	 */
	CHECK_IDS(tok, "  the", 0, 32, 258);
	/* Trailing spaces stay together: Ġ Ġ Ġ, the leftmost (Ġ,Ġ) merges. */
	CHECK_IDS(tok, "x   ", 0, 120, 269, 32);
	CHECK_IDS(tok, "x   y", 0, 120, 269, 32, 121);
	/* Equal ranks: leftmost first, and merges do not overlap. */
	CHECK_IDS(tok, "aaa", 0, 274, 97);
	CHECK_IDS(tok, "aaaa", 0, 274, 274);
	/* Digits are one pre-token: (1,2) r12 -> 12 3 4 5. */
	CHECK_IDS(tok, "12345", 0, 268, 51, 52, 53);
	/* "it" | "'s". */
	CHECK_IDS(tok, "it's", 0, 105, 116, 270);
	/* "\n\nHello": a lone "\n", then "\n" (single \s), then Hello. */
	CHECK_IDS(tok, "\n\nHello", 0, 10, 10, 262);
	/* At the end the newline run stays whole: (Ċ,Ċ) r19 -> 275. */
	CHECK_IDS(tok, "Hello\n\n", 0, 262, 275);
	/* 中 (e4 b8 ad) is a letter: "a中" is one word and (a,ä) r20 merges. */
	CHECK_IDS(tok, "a\xe4\xb8\xad", 0, 276, 184, 173);
	/*
	 * U+0301 (cc 81) is a combining mark, not \p{L}: under C.UTF-8 it
	 * starts a new pre-token, so (a,Ì) r21 cannot merge.  Without that
	 * locale every non-ASCII character counts as a letter.
	 */
	loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
	if (loc != (locale_t)0) {
		CHECK_IDS(tok, "a\xcc\x81", 0, 97, 204, 129);
		freelocale(loc);
	} else {
		CHECK_IDS(tok, "a\xcc\x81", 0, 277, 129);
	}
	/* Special tokens are whole tokens only with NESA_TOK_SPECIAL. */
	CHECK_IDS(tok, "Hi<|endoftext|>the", NESA_TOK_SPECIAL, 72, 105, 278, 116, 257);
	CHECK_IDS(tok, "Hi<|endoftext|>the", 0, 72, 105, 60, 124, 101, 110, 100, 111, 102, 116, 101,
	          120, 116, 124, 62, 116, 257);
	CHECK_IDS(tok, "x", NESA_TOK_BOS | NESA_TOK_EOS, 278, 120, 278);
	assert_int_equal(nesa_tokenizer_decode(tok, eot, 3, 0, &text, &len, &err), NESA_OK);
	assert_string_equal(text, "ab");
	nesa_free(text);
	assert_int_equal(nesa_tokenizer_decode(tok, eot, 3, NESA_TOK_SPECIAL, &text, &len, &err),
	                 NESA_OK);
	assert_string_equal(text, "a<|endoftext|>b");
	nesa_free(text);
	ROUNDTRIP(tok, "one<|endoftext|>two<|endoftext|>", NESA_TOK_SPECIAL | NESA_TOK_BOS);
	roundtrip_all(tok);
	nesa_tokenizer_free(tok);
}

/* GPT-2 over the TinyStories text: round trip, and speed with a tiny merge list. */
static void
test_gpt2_stories(void **state)
{
	struct nesa_tokenizer *tok;
	const char *path;
	char *text;
	size_t len, n;

	(void)state;
	NEED_DATA(path, STORIES);
	tok = load_fixture();
	text = read_all(path, &len);
	n = roundtrip(tok, text, len, 0);
	assert_true(n > len / 2 && n <= len);
	nesa_free(text);
	nesa_tokenizer_free(tok);
}

/* Tensor sets. */

static void
assert_same_tokenizer(const struct nesa_tokenizer *a, const struct nesa_tokenizer *b)
{
	int32_t id, n = nesa_tokenizer_vocab_size(a);
	size_t i;

	assert_int_equal(nesa_tokenizer_kind(a), nesa_tokenizer_kind(b));
	assert_int_equal(n, nesa_tokenizer_vocab_size(b));
	assert_int_equal(nesa_tokenizer_bos(a), nesa_tokenizer_bos(b));
	assert_int_equal(nesa_tokenizer_eos(a), nesa_tokenizer_eos(b));
	assert_int_equal(nesa_tokenizer_unk(a), nesa_tokenizer_unk(b));
	assert_int_equal(nesa_tokenizer_pad(a), nesa_tokenizer_pad(b));
	for (id = 0; id < n; id++) {
		size_t la, lb;
		const char *pa = nesa_tokenizer_piece(a, id, &la), *pb = nesa_tokenizer_piece(b, id, &lb);

		assert_int_equal(la, lb);
		assert_memory_equal(pa, pb, la);
		assert_int_equal(nesa_tokenizer_token_type(a, id), nesa_tokenizer_token_type(b, id));
		assert_true(nesa_tokenizer_score(a, id) == nesa_tokenizer_score(b, id));
	}
	for (i = 0; i < sizeof tricky / sizeof *tricky; i++) {
		struct nesa_err err;
		int32_t *ia, *ib;
		size_t na, nb;

		assert_int_equal(nesa_tokenizer_encode(a, tricky[i].s, tricky[i].len, NESA_TOK_BOS, &ia,
		                                       &na, &err), NESA_OK);
		assert_int_equal(nesa_tokenizer_encode(b, tricky[i].s, tricky[i].len, NESA_TOK_BOS, &ib,
		                                       &nb, &err), NESA_OK);
		assert_int_equal(na, nb);
		assert_memory_equal(ia, ib, na * sizeof *ia);
		nesa_free(ia);
		nesa_free(ib);
	}
}

static void
tset_roundtrip(const struct nesa_tokenizer *tok)
{
	struct nesa_tokenizer *back;
	struct nesa_tset ts;
	struct nesa_err err;
	const struct nesa_tensor *t;

	nesa_tset_init(&ts);
	assert_int_equal(nesa_tokenizer_to_tset(tok, &ts, &err), NESA_OK);
	t = nesa_tset_find(&ts, "tokenizer.offsets");
	assert_non_null(t);
	assert_int_equal(t->dtype, NESA_I32);
	assert_int_equal(t->shape[0], nesa_tokenizer_vocab_size(tok) + 1);
	t = nesa_tset_find(&ts, "tokenizer.kind");
	assert_int_equal(*(int32_t *)t->data, nesa_tokenizer_kind(tok));
	assert_int_equal(nesa_tset_find(&ts, "tokenizer.merges") != NULL,
	                 nesa_tokenizer_kind(tok) == NESA_TOKENIZER_GPT2);
	assert_int_equal(nesa_tset_find(&ts, "tokenizer.scores") != NULL,
	                 nesa_tokenizer_kind(tok) == NESA_TOKENIZER_SPM);
	/* Writing twice into one set collides on the names. */
	assert_int_equal(nesa_tokenizer_to_tset(tok, &ts, &err), NESA_EFORMAT);
	assert_int_equal(nesa_tokenizer_from_tset(&ts, &back, &err), NESA_OK);
	nesa_tset_release(&ts);
	assert_same_tokenizer(tok, back);
	nesa_tokenizer_free(back);
}

static void
test_tset_roundtrip(void **state)
{
	struct nesa_tokenizer *tok;
	struct nesa_tset ts;
	struct nesa_err err;
	enum nesa_status s;
	const struct nesa_tensor *t;

	(void)state;
	tok = small_spm(1, &err, &s);
	tset_roundtrip(tok);
	/* The pieces travel with real spaces, as run.c holds them. */
	nesa_tset_init(&ts);
	assert_int_equal(nesa_tokenizer_to_tset(tok, &ts, &err), NESA_OK);
	t = nesa_tset_find(&ts, "tokenizer.pieces");
	assert_non_null(t);
	assert_non_null(memmem(t->data, t->nbytes, "x y", 3));
	nesa_tset_release(&ts);
	nesa_tokenizer_free(tok);
	tok = load_fixture();
	tset_roundtrip(tok);
	nesa_tokenizer_free(tok);
	if (data_file(TOK512) != NULL) {
		tok = load_tok512();
		tset_roundtrip(tok);
		nesa_tokenizer_free(tok);
	}
}

/* A copy of src (sharing its data) without the tensor called omit. */
static void
tset_without(struct nesa_tset *src, struct nesa_tset *dst, const char *omit)
{
	size_t i;

	nesa_tset_init(dst);
	for (i = 0; i < src->n; i++) {
		const struct nesa_tensor *t = &src->items[i];

		if (strcmp(t->name, omit) != 0)
			assert_int_equal(nesa_tset_add(dst, t->name, t->dtype, t->ndim, t->shape, t->data,
			                               NULL, NULL),
			                 NESA_OK);
	}
}

static void
expect_bad_tset(struct nesa_tset *ts, const char *what)
{
	struct nesa_tokenizer *tok = (struct nesa_tokenizer *)&tok;
	struct nesa_err err;

	assert_int_equal(nesa_tokenizer_from_tset(ts, &tok, &err), NESA_EFORMAT);
	assert_null(tok);
	if (strstr(err.msg, what) == NULL)
		print_message("message '%s' lacks '%s'\n", err.msg, what);
	assert_non_null(strstr(err.msg, what));
	assert_non_null(strstr(err.msg, "cannot load tokenizer from tensors"));
}

static int32_t *
tensor_i32(struct nesa_tset *ts, const char *name)
{
	struct nesa_tensor *t = nesa_tset_find(ts, name);

	assert_non_null(t);
	return t->data;
}

static void
test_tset_hostile(void **state)
{
	struct nesa_tokenizer *spm, *gpt2;
	struct nesa_tset ts, g, bad;
	struct nesa_tensor *t;
	struct nesa_err err;
	enum nesa_status s;
	int64_t shape = 3;
	int32_t *offs, *types, *special, save;
	char *merges;
	size_t mlen;

	(void)state;
	spm = small_spm(1, &err, &s);
	nesa_tset_init(&ts);
	assert_int_equal(nesa_tokenizer_to_tset(spm, &ts, &err), NESA_OK);
	offs = tensor_i32(&ts, "tokenizer.offsets");
	/* Offsets going backwards, past the blob, or not starting at 0. */
	save = offs[100];
	offs[100] = offs[99] - 1;
	expect_bad_tset(&ts, "'tokenizer.offsets': token 99 spans");
	offs[100] = 1 << 30;
	expect_bad_tset(&ts, "'tokenizer.offsets': token 99 spans");
	offs[100] = save;
	save = offs[SMALL_N];
	offs[SMALL_N] = save + 1;
	expect_bad_tset(&ts, "must run from 0 to");
	offs[SMALL_N] = save;
	offs[0] = 1;
	expect_bad_tset(&ts, "must run from 0 to");
	offs[0] = 0;
	/* A token longer than any piece may be. */
	save = offs[SMALL_N - 1];
	offs[SMALL_N - 1] = 0;
	expect_bad_tset(&ts, "spans");
	offs[SMALL_N - 1] = save;
	/* Unknown kind, type or special id. */
	tensor_i32(&ts, "tokenizer.kind")[0] = 7;
	expect_bad_tset(&ts, "unknown kind 7");
	tensor_i32(&ts, "tokenizer.kind")[0] = NESA_TOKENIZER_SPM;
	types = tensor_i32(&ts, "tokenizer.types");
	types[261] = 9;
	expect_bad_tset(&ts, "token 261 has invalid type 9");
	/* A byte token whose piece is not <0xXX>. */
	types[261] = NESA_TOKEN_BYTE;
	expect_bad_tset(&ts, "byte token 261 has piece 'b'");
	types[261] = NESA_TOKEN_NORMAL;
	special = tensor_i32(&ts, "tokenizer.special");
	special[0] = SMALL_N;
	expect_bad_tset(&ts, "bos token id 268 is out of range");
	special[0] = -2;
	expect_bad_tset(&ts, "bos token id -2 is out of range");
	special[0] = 1;
	/* Missing tensors, a wrong dtype, a wrong count, a foreign tensor. */
	tset_without(&ts, &bad, "tokenizer.types");
	expect_bad_tset(&bad, "tensor 'tokenizer.types' is missing");
	nesa_tset_release(&bad);
	tset_without(&ts, &bad, "tokenizer.scores");
	expect_bad_tset(&bad, "tensor 'tokenizer.scores' is missing");
	assert_int_equal(nesa_tset_alloc(&bad, "tokenizer.scores", NESA_I32, 1, &shape, NULL, &err),
	                 NESA_OK);
	expect_bad_tset(&bad, "tensor 'tokenizer.scores' is not a 1-D f32 vector");
	nesa_tset_release(&bad);
	tset_without(&ts, &bad, "tokenizer.special");
	assert_int_equal(nesa_tset_alloc(&bad, "tokenizer.special", NESA_I32, 1, &shape, NULL, &err),
	                 NESA_OK);
	expect_bad_tset(&bad, "tensor 'tokenizer.special' has 3 elements, not 4");
	nesa_tset_release(&bad);
	tset_without(&ts, &bad, "tokenizer.special");
	assert_int_equal(nesa_tset_add(&bad, "tokenizer.special", NESA_I32, 1, (int64_t[]){4}, NULL,
	                               NULL, &err),
	                 NESA_OK);
	expect_bad_tset(&bad, "tensor 'tokenizer.special' has no contiguous data");
	nesa_tset_release(&bad);
	tset_without(&ts, &bad, "tokenizer.offsets");
	assert_int_equal(nesa_tset_alloc(&bad, "tokenizer.offsets", NESA_I32, 1, (int64_t[]){1}, NULL,
	                                 &err),
	                 NESA_OK);
	expect_bad_tset(&bad, "tensor 'tokenizer.offsets' has 1 elements (2 to");
	nesa_tset_release(&bad);
	tset_without(&ts, &bad, "");
	assert_int_equal(nesa_tset_alloc(&bad, "tokenizer.merges", NESA_U8, 1, &shape, NULL, &err),
	                 NESA_OK);
	expect_bad_tset(&bad, "tensor 'tokenizer.merges' does not belong to this kind");
	nesa_tset_release(&bad);

	/* GPT-2: merges must be whole lines of known symbols. */
	gpt2 = load_fixture();
	nesa_tset_init(&g);
	assert_int_equal(nesa_tokenizer_to_tset(gpt2, &g, &err), NESA_OK);
	t = nesa_tset_find(&g, "tokenizer.merges");
	merges = t->data;
	mlen = t->nbytes;
	assert_memory_equal(merges, "\xc4\xa0 t\nh e\n", 8);
	merges[mlen - 1] = 'x';
	expect_bad_tset(&g, "tensor 'tokenizer.merges' does not end a line");
	merges[mlen - 1] = '\n';
	merges[3] = '\x01';
	expect_bad_tset(&g, "merge 0 ('\xc4\xa0 \x01') has unknown symbol '\x01'");
	merges[3] = 't';
	merges[6] = 'x';
	expect_bad_tset(&g, "merge 1 ('hxe') is not two symbols separated by a space");
	merges[6] = ' ';
	/* "h e" -> "h t": both symbols exist but "ht" is no piece. */
	merges[7] = 't';
	expect_bad_tset(&g, "merge 1 ('h t') makes 'ht', not in the vocabulary");
	merges[7] = 'e';
	tset_without(&g, &bad, "tokenizer.merges");
	expect_bad_tset(&bad, "tensor 'tokenizer.merges' is missing");
	assert_int_equal(nesa_tset_alloc(&bad, "tokenizer.merges", NESA_U8, 1, (int64_t[]){0}, NULL,
	                                 &err),
	                 NESA_OK);
	assert_int_equal(nesa_tset_alloc(&bad, "tokenizer.scores", NESA_F32, 1, (int64_t[]){279}, NULL,
	                                 &err),
	                 NESA_OK);
	expect_bad_tset(&bad, "tensor 'tokenizer.scores' does not belong to this kind");
	nesa_tset_release(&bad);
	/* Without the byte symbols a GPT-2 vocabulary cannot encode. */
	types = tensor_i32(&g, "tokenizer.types");
	types[65] = NESA_TOKEN_CONTROL;
	expect_bad_tset(&g, "vocabulary lacks the symbol for byte 0x41");
	types[65] = NESA_TOKEN_NORMAL;
	/* After all that the sets are intact again. */
	{
		struct nesa_tokenizer *back;

		assert_int_equal(nesa_tokenizer_from_tset(&g, &back, &err), NESA_OK);
		nesa_tokenizer_free(back);
		assert_int_equal(nesa_tokenizer_from_tset(&ts, &back, &err), NESA_OK);
		nesa_tokenizer_free(back);
	}
	nesa_tset_release(&g);
	nesa_tset_release(&ts);
	nesa_tokenizer_free(gpt2);
	nesa_tokenizer_free(spm);
}

/* Hostile files. */

static void
put_i32(char *p, int32_t v)
{
	memcpy(p, &v, 4);
}

/* Writes tok as a llama2.c tokenizer file into buf; returns its size. */
static size_t
llama2c_image(const struct nesa_tokenizer *tok, char *buf, size_t cap)
{
	int32_t id, n = nesa_tokenizer_vocab_size(tok);
	size_t off = 4;

	put_i32(buf, 16);
	for (id = 0; id < n; id++) {
		size_t len;
		const char *p = nesa_tokenizer_piece(tok, id, &len);
		float score = nesa_tokenizer_score(tok, id);

		/* llama2.c files spell the control pieces this way. */
		if (id == 1 || id == 2) {
			p = id == 1 ? "\n<s>\n" : "\n</s>\n";
			len = strlen(p);
		}
		assert_true(off + 8 + len <= cap);
		memcpy(buf + off, &score, 4);
		put_i32(buf + off + 4, (int32_t)len);
		memcpy(buf + off + 8, p, len);
		off += 8 + len;
	}
	return off;
}

static void
expect_bad_llama2c(const char *path, int32_t n, enum nesa_status want, const char *what)
{
	struct nesa_tokenizer *tok = (struct nesa_tokenizer *)&tok;
	struct nesa_err err;

	assert_int_equal(nesa_tokenizer_load_llama2c(path, n, &tok, &err), want);
	assert_null(tok);
	if (strstr(err.msg, what) == NULL)
		print_message("message '%s' lacks '%s'\n", err.msg, what);
	assert_non_null(strstr(err.msg, what));
}

static void
test_llama2c_hostile(void **state)
{
	struct nesa_tokenizer *small, *tok;
	struct nesa_err err;
	enum nesa_status s;
	char *dir, path[512], *buf, msg[1024];
	const char *ref;
	size_t size, cut, off;
	int32_t *a, *b;
	size_t na, nb;

	(void)state;
	dir = test_tmpdir();
	assert_non_null(dir);
	snprintf(path, sizeof path, "%s/tok.bin", dir);
	small = small_spm(1, &err, &s);
	buf = malloc(65536);
	size = llama2c_image(small, buf, 65536);
	write_file(path, buf, size);
	/* The well-formed image loads and encodes as the arrays did. */
	assert_int_equal(nesa_tokenizer_load_llama2c(path, SMALL_N, &tok, &err), NESA_OK);
	assert_int_equal(nesa_tokenizer_encode(tok, "bab aa\xe2\x96\x81", 9, NESA_TOK_BOS, &a, &na,
	                                       &err), NESA_OK);
	assert_int_equal(nesa_tokenizer_encode(small, "bab aa\xe2\x96\x81", 9, NESA_TOK_BOS, &b, &nb,
	                                       &err), NESA_OK);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, na * sizeof *a);
	nesa_free(a);
	nesa_free(b);
	nesa_tokenizer_free(tok);

	/* Wrong vocabulary sizes. */
	expect_bad_llama2c(path, SMALL_N - 1, NESA_EFORMAT, "holds more than 267 tokens");
	expect_bad_llama2c(path, SMALL_N + 1, NESA_EFORMAT, "cannot read token 268 in '");
	expect_bad_llama2c(path, 0, NESA_EINVAL, "vocabulary size 0 is out of range");
	expect_bad_llama2c(path, NESA_TOKENIZER_MAX_VOCAB + 1, NESA_EINVAL, "out of range");
	snprintf(path, sizeof path, "%s/missing.bin", dir);
	expect_bad_llama2c(path, SMALL_N, NESA_ENOENT, "missing.bin");

	/*
	 * Lengths: negative, zero, huge, past the end.  Token 5's length field
	 * is at 76: header 4, then <unk> and \n<s>\n take 8 + 5 bytes each,
	 * \n</s>\n and <0x00>, <0x01> 8 + 6 each, then its score.
	 */
	snprintf(path, sizeof path, "%s/tok.bin", dir);
	off = 4 + 2 * 13 + 3 * 14 + 4;
	assert_int_equal(off, 76);
	assert_memory_equal(buf + off + 4, "<0x02>", 6);
	put_i32(buf + off, -6);
	write_file(path, buf, size);
	expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "cannot read token 5 in '");
	expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "invalid length -6 at offset 76");
	put_i32(buf + off, 0);
	write_file(path, buf, size);
	expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "invalid length 0");
	put_i32(buf + off, INT32_MAX);
	write_file(path, buf, size);
	expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "invalid length 2147483647");
	put_i32(buf + off, 1000);
	write_file(path, buf, size);
	expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "cannot read token ");
	put_i32(buf + off, 6);
	put_i32(buf, 0);
	write_file(path, buf, size);
	expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "invalid max_token_length 0");
	put_i32(buf, 16);
	/* Trailing bytes after the last token. */
	memset(buf + size, 0, 3);
	write_file(path, buf, size + 3);
	expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "3 extra bytes at offset");
	/* Truncation at every offset gives a clean error naming the token. */
	for (cut = 0; cut < size; cut++) {
		write_file(path, buf, cut);
		if (cut < 4)
			expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "cannot read header of '");
		else
			expect_bad_llama2c(path, SMALL_N, NESA_EFORMAT, "unexpected end of file");
	}
	free(buf);
	nesa_tokenizer_free(small);

	/* The real tok512.bin truncated at every byte. */
	if ((ref = data_file(TOK512)) != NULL) {
		buf = read_all(ref, &size);
		assert_int_equal(size, 6227);
		for (cut = 0; cut < size; cut++) {
			write_file(path, buf, cut);
			expect_bad_llama2c(path, 512, NESA_EFORMAT, cut < 4 ? "header" : "in '");
		}
		/* Token 3 (<0x00>, at 4 + 13 + 13 + 14) is cut inside its piece. */
		write_file(path, buf, 44 + 8 + 3);
		snprintf(msg, sizeof msg, "cannot read token 3 in '%s': unexpected end of file", path);
		expect_bad_llama2c(path, 512, NESA_EFORMAT, msg);
		nesa_free(buf);
	}
	unlink(path);
	rmdir(dir);
}

static void
expect_bad_gpt2(const char *dir, const char *vocab, const char *merges, const char *what)
{
	struct nesa_tokenizer *tok = (struct nesa_tokenizer *)&tok;
	char vp[512], mp[512];
	struct nesa_err err;
	size_t vlen, mlen;
	char *v, *m;

	snprintf(vp, sizeof vp, "%s/vocab.json", dir);
	snprintf(mp, sizeof mp, "%s/merges.txt", dir);
	if (vocab == NULL) {
		v = read_all(fixture("vocab.json"), &vlen);
		write_file(vp, v, vlen);
		nesa_free(v);
	} else {
		write_file(vp, vocab, strlen(vocab));
	}
	if (merges == NULL) {
		m = read_all(fixture("merges.txt"), &mlen);
		write_file(mp, m, mlen);
		nesa_free(m);
	} else {
		write_file(mp, merges, strlen(merges));
	}
	assert_int_equal(nesa_tokenizer_load_gpt2(vp, mp, &tok, &err), NESA_EFORMAT);
	assert_null(tok);
	if (strstr(err.msg, what) == NULL)
		print_message("message '%s' lacks '%s'\n", err.msg, what);
	assert_non_null(strstr(err.msg, what));
	unlink(vp);
	unlink(mp);
}

static void
test_gpt2_hostile(void **state)
{
	struct nesa_tokenizer *tok = NULL;
	struct nesa_err err;
	char *dir;

	(void)state;
	dir = test_tmpdir();
	assert_non_null(dir);
	expect_bad_gpt2(dir, "[1, 2]", "", "vocab.json': not a JSON object");
	expect_bad_gpt2(dir, "{\"a\": 0", "", "cannot parse '");
	expect_bad_gpt2(dir, "{}", "", "0 entries");
	expect_bad_gpt2(dir, "{\"a\": \"0\"}", "", "'a' has no integer id");
	expect_bad_gpt2(dir, "{\"a\": 0, \"b\": 0}", "", "id 0 of 'b' is used twice");
	expect_bad_gpt2(dir, "{\"a\": 0, \"b\": 2}", "", "id 2 of 'b' is out of range");
	expect_bad_gpt2(dir, "{\"a\": -1}", "", "id -1 of 'a' is out of range");
	expect_bad_gpt2(dir, "{\"a\": 0}", "", "vocabulary lacks the symbol for byte 0x00 (U+0100)");
	expect_bad_gpt2(dir, NULL, "#version: 0.2\nh e\nq zz\n", "merge 1 ('q zz') has unknown symbol 'zz'");
	expect_bad_gpt2(dir, NULL, "h e\nhe\n", "merge 1 ('he') is not two symbols");
	expect_bad_gpt2(dir, NULL, "h e\nh  e\n", "merge 1 ('h  e') is not two symbols");
	expect_bad_gpt2(dir, NULL, "x y\n", "merge 0 ('x y') makes 'xy', not in the vocabulary");
	/* A #version line is only a header on the first line. */
	expect_bad_gpt2(dir, NULL, "h e\n#version: 0.2\n", "merge 1 ('#version: 0.2')");
	assert_int_equal(nesa_tokenizer_load_gpt2(fixture("nope.json"), fixture("merges.txt"), &tok,
	                                          &err),
	                 NESA_ENOENT);
	assert_null(tok);
	rmdir(dir);
}

static void
test_bad_calls(void **state)
{
	struct nesa_tokenizer *tok;
	struct nesa_err err;
	const int32_t bad[2] = {5, 279};
	const char *t;
	int32_t *ids;
	size_t n, l;
	char *text;

	(void)state;
	tok = load_fixture();
	assert_int_equal(nesa_tokenizer_decode(tok, bad, 2, 0, &text, &l, &err), NESA_EINVAL);
	assert_non_null(strstr(err.msg, "cannot decode token 279 at position 1"));
	assert_null(text);
	assert_int_equal(nesa_tokenizer_decode_token(tok, -1, -1, 0, &t, &l, &err), NESA_EINVAL);
	assert_int_equal(l, 0);
	assert_int_equal(nesa_tokenizer_encode(tok, NULL, 3, 0, &ids, &n, &err), NESA_EINVAL);
	assert_int_equal(nesa_tokenizer_encode(NULL, "a", 1, 0, &ids, &n, &err), NESA_EINVAL);
	assert_int_equal(nesa_tokenizer_encode(tok, NULL, 0, 0, &ids, &n, &err), NESA_OK);
	assert_int_equal(n, 0);
	nesa_free(ids);
	assert_int_equal(nesa_tokenizer_decode(tok, NULL, 0, 0, &text, &l, &err), NESA_OK);
	assert_string_equal(text, "");
	nesa_free(text);
	nesa_tokenizer_free(tok);
	nesa_tokenizer_free(NULL);
}

/* Allocation failures: every N gives NESA_ENOMEM and leaks nothing. */

#define FAULT_LOOP(body, min_allocs)                                                        \
	do {                                                                                \
		long n_;                                                                    \
		for (n_ = 1;; n_++) {                                                       \
			enum nesa_status s_;                                                \
			test_faults_arm(n_);                                                \
			s_ = (body);                                                        \
			test_faults_disarm();                                               \
			if (s_ == NESA_OK)                                                  \
				break;                                                      \
			assert_int_equal(s_, NESA_ENOMEM);                                  \
		}                                                                           \
		assert_true(n_ > (min_allocs));                                             \
	} while (0)

static const char fault_text[] = "Once upon a time, the cat's \xe4\xb8\xad\xe6\x96\x87 "
                                 "aaaaaaaaaaaaaaaa<s>\x80<|endoftext|> world\n\n";

static enum nesa_status
encode_decode(const struct nesa_tokenizer *tok)
{
	struct nesa_err err;
	enum nesa_status s;
	char text[4096], *out = NULL;
	int32_t *ids = NULL;
	size_t i, n, len;

	/* Long enough for the heap and output arrays to grow several times. */
	for (i = 0; i < sizeof text; i++)
		text[i] = fault_text[i % (sizeof fault_text - 1)];
	s = nesa_tokenizer_encode(tok, text, sizeof text, NESA_TOK_BOS | NESA_TOK_SPECIAL, &ids, &n,
	                          &err);
	if (s == NESA_OK)
		s = nesa_tokenizer_decode(tok, ids, n, 0, &out, &len, &err);
	nesa_free(out);
	nesa_free(ids);
	return s;
}

static enum nesa_status
tset_trip(const struct nesa_tokenizer *tok)
{
	struct nesa_tokenizer *back = NULL;
	struct nesa_tset ts;
	struct nesa_err err;
	enum nesa_status s;

	nesa_tset_init(&ts);
	s = nesa_tokenizer_to_tset(tok, &ts, &err);
	if (s == NESA_OK)
		s = nesa_tokenizer_from_tset(&ts, &back, &err);
	nesa_tset_release(&ts);
	nesa_tokenizer_free(back);
	return s;
}

static enum nesa_status
load_gpt2_status(void)
{
	struct nesa_tokenizer *tok;
	struct nesa_err err;
	enum nesa_status s;

	s = nesa_tokenizer_load_gpt2(fixture("vocab.json"), fixture("merges.txt"), &tok, &err);
	nesa_tokenizer_free(tok);
	return s;
}

static enum nesa_status
load_llama2c_status(const char *path, int32_t n)
{
	struct nesa_tokenizer *tok;
	struct nesa_err err;
	enum nesa_status s;

	s = nesa_tokenizer_load_llama2c(path, n, &tok, &err);
	nesa_tokenizer_free(tok);
	return s;
}

static void
test_alloc_failures(void **state)
{
	struct nesa_tokenizer *spm, *gpt2;
	struct nesa_err err;
	enum nesa_status s;
	char *dir, path[512], *buf;
	size_t size;

	(void)state;
	spm = small_spm(1, &err, &s);
	gpt2 = load_fixture();
	dir = test_tmpdir();
	assert_non_null(dir);
	snprintf(path, sizeof path, "%s/tok.bin", dir);
	buf = malloc(65536);
	size = llama2c_image(spm, buf, 65536);
	write_file(path, buf, size);
	free(buf);
	/* The minimum counts make sure the loops reach past the first few allocations. */
	FAULT_LOOP(load_llama2c_status(path, SMALL_N), 10);
	FAULT_LOOP(load_gpt2_status(), 10);
	FAULT_LOOP(encode_decode(spm), 4);
	FAULT_LOOP(encode_decode(gpt2), 4);
	FAULT_LOOP(tset_trip(spm), 20);
	FAULT_LOOP(tset_trip(gpt2), 20);
	unlink(path);
	rmdir(dir);
	nesa_tokenizer_free(gpt2);
	nesa_tokenizer_free(spm);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_spm_reference),
		cmocka_unit_test(test_spm_hand_tok512),
		cmocka_unit_test(test_spm_hand_small),
		cmocka_unit_test(test_spm_gguf_arrays),
		cmocka_unit_test(test_spm_roundtrip),
		cmocka_unit_test(test_spm_stories),
		cmocka_unit_test(test_gpt2_fixture),
		cmocka_unit_test(test_gpt2_stories),
		cmocka_unit_test(test_tset_roundtrip),
		cmocka_unit_test(test_tset_hostile),
		cmocka_unit_test(test_llama2c_hostile),
		cmocka_unit_test(test_gpt2_hostile),
		cmocka_unit_test(test_bad_calls),
		cmocka_unit_test(test_alloc_failures),
	};

	return cmocka_run_group_tests_name("tokenizer", tests, NULL, NULL);
}
