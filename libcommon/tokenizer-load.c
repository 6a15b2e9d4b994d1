/* SPDX-License-Identifier: MIT */
/*
 * Tokenizer sources other than in-memory arrays: the llama2.c tokenizer file
 * (llama2.c run.c's build_tokenizer), the GPT-2 vocab.json + merges.txt
 * pair, and the tensor-set form a tokenizer takes inside a shard archive
 * (nesa_tokenizer_to_tset and _from_tset); see tokenizer.h.
 *
 * Every function here only parses and checks its input, then hands the
 * arrays to tokenizer_build() in tokenizer.c, so a tokenizer from a file
 * is validated exactly like one built from GGUF arrays.  Files are untrusted:
 * sizes are bounded before anything is allocated from them, and messages
 * name the file and, where there is one, the offset.
 *
 * Not for: the merge engine, encoding and decoding (tokenizer.c), reading
 * GGUF (gguf.c).
 */
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "alloc.h"
#include "tokenizer-impl.h"
#include "xio.h"

/* Files larger than this are refused before parsing. */
#define MAX_FILE_BYTES ((size_t)1 << 30)

/*
 * Records a failure in the caller's s and err and jumps to its single
 * cleanup label, done; for functions that hold resources.
 */
#define FAIL(status, ...)                                                                   \
	do {                                                                                \
		s = nesa_err_set(err, (status), __VA_ARGS__);                               \
		goto done;                                                                  \
	} while (0)

/* Files. */

static int32_t
get_i32(const unsigned char *p)
{
	return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	                 (uint32_t)p[3] << 24);
}

enum nesa_status
nesa_tokenizer_load_llama2c(const char *path, int32_t vocab_size, struct nesa_tokenizer **out,
                            struct nesa_err *err)
{
	struct nesa_tokenizer_vocab v = {0};
	const char **pieces = NULL;
	size_t *lens = NULL;
	float *scores = NULL;
	const unsigned char *p;
	enum nesa_status s;
	size_t size, off;
	int32_t i, max_len;
	char *buf = NULL;

	*out = NULL;
	if (vocab_size < 1 || vocab_size > NESA_TOKENIZER_MAX_VOCAB)
		return nesa_err_set(err, NESA_EINVAL,
		                    "cannot load tokenizer '%s': vocabulary size %ld is out of range",
		                    path, (long)vocab_size);
	s = nesa_read_file(path, MAX_FILE_BYTES, &buf, &size, err);
	if (s != NESA_OK)
		return s;
	p = (const unsigned char *)buf;
	if (size < 4)
		FAIL(NESA_EFORMAT, "cannot read header of '%s': unexpected end of file at offset %zu",
		     path, size);
	max_len = get_i32(p);
	if (max_len < 1 || max_len > NESA_TOKENIZER_MAX_PIECE)
		FAIL(NESA_EFORMAT, "invalid max_token_length %ld in '%s' at offset 0",
		     (long)max_len, path);
	pieces = nesa_calloc((size_t)vocab_size, sizeof *pieces);
	lens = nesa_calloc((size_t)vocab_size, sizeof *lens);
	scores = nesa_calloc((size_t)vocab_size, sizeof *scores);
	if (pieces == NULL || lens == NULL || scores == NULL)
		FAIL(NESA_ENOMEM, "cannot load tokenizer '%s': out of memory", path);
	/* Each token: float32 score, int32 length, the piece bytes. */
	off = 4;
	for (i = 0; i < vocab_size; i++) {
		int32_t len;

		if (size - off < 8)
			goto eof;
		memcpy(&scores[i], p + off, 4);
		len = get_i32(p + off + 4);
		if (len < 1 || len > NESA_TOKENIZER_MAX_PIECE)
			FAIL(NESA_EFORMAT,
			     "cannot read token %ld in '%s': invalid length %ld at offset %zu",
			     (long)i, path, (long)len, off + 4);
		off += 8;
		if (size - off < (size_t)len)
			goto eof;
		pieces[i] = buf + off;
		lens[i] = (size_t)len;
		off += (size_t)len;
	}
	if (off != size)
		FAIL(NESA_EFORMAT,
		     "'%s' holds more than %ld tokens: %zu extra bytes at offset %zu", path,
		     (long)vocab_size, size - off, off);
	/* run.c's fixed ids: 0 <unk>, 1 BOS, 2 EOS. */
	v.n = vocab_size;
	v.pieces = pieces;
	v.lens = lens;
	v.scores = scores;
	v.unk = 0;
	v.bos = vocab_size > 1 ? 1 : -1;
	v.eos = vocab_size > 2 ? 2 : -1;
	v.pad = -1;
	s = tokenizer_build(NESA_TOKENIZER_SPM, &v, false, NULL, NULL, 0, out, err);
	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot load tokenizer '%s'", path);
	goto done;
eof:
	s = nesa_err_set(err, NESA_EFORMAT,
	                 "cannot read token %ld in '%s': unexpected end of file at offset %zu",
	                 (long)i, path, size);
done:
	nesa_free(scores);
	nesa_free(lens);
	nesa_free(pieces);
	nesa_free(buf);
	return s;
}

/*
 * Splits merges into lines (a trailing '\r' dropped, blank lines skipped,
 * and with header, a first line starting "#version" too).  Also used by
 * from_tset below: tokenizer.merges holds one merge per line, like
 * merges.txt without its "#version" line.
 */
static enum nesa_status
split_lines(const char *buf, size_t size, bool header, const char ***lines, size_t **lens,
            size_t *n, struct nesa_err *err)
{
	const char *p, *end = buf + size;
	size_t pass, count = 0;

	*lines = NULL;
	*lens = NULL;
	for (pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			*lines = nesa_malloc(count * sizeof **lines);
			*lens = nesa_malloc(count * sizeof **lens);
			if (*lines == NULL || *lens == NULL)
				return oom(err);
		}
		count = 0;
		for (p = buf; p < end;) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t len = (size_t)((nl != NULL ? nl : end) - p);

			if (len > 0 && p[len - 1] == '\r')
				len--;
			if (len > 0 && !(header && p == buf && len >= 8 && memcmp(p, "#version", 8) == 0)) {
				if (pass == 1) {
					(*lines)[count] = p;
					(*lens)[count] = len;
				}
				count++;
			}
			p = nl != NULL ? nl + 1 : end;
		}
	}
	*n = count;
	return NESA_OK;
}

enum nesa_status
nesa_tokenizer_load_gpt2(const char *vocab_path, const char *merges_path,
                         struct nesa_tokenizer **out, struct nesa_err *err)
{
	struct nesa_tokenizer_vocab v = {0};
	const char **pieces = NULL, **lines = NULL;
	size_t *lines_len = NULL, n_lines = 0, size, n;
	char *vbuf = NULL, *mbuf = NULL;
	json_t *root = NULL, *value;
	json_error_t jerr;
	enum nesa_status s;
	const char *key;

	*out = NULL;
	s = nesa_read_file(vocab_path, MAX_FILE_BYTES, &vbuf, &size, err);
	if (s != NESA_OK)
		goto done;
	root = json_loadb(vbuf, size, 0, &jerr);
	if (root == NULL)
		FAIL(NESA_EFORMAT, "cannot parse '%s': %s at line %d column %d", vocab_path,
		     jerr.text, jerr.line, jerr.column);
	if (!json_is_object(root))
		FAIL(NESA_EFORMAT, "cannot load vocabulary '%s': not a JSON object", vocab_path);
	n = json_object_size(root);
	if (n < 1 || n > (size_t)NESA_TOKENIZER_MAX_VOCAB)
		FAIL(NESA_EFORMAT, "cannot load vocabulary '%s': %zu entries (1 to %ld)",
		     vocab_path, n, (long)NESA_TOKENIZER_MAX_VOCAB);
	pieces = nesa_calloc(n, sizeof *pieces);
	if (pieces == NULL)
		FAIL(NESA_ENOMEM, "cannot load vocabulary '%s': out of memory", vocab_path);
	v.n = (int32_t)n;
	v.bos = v.eos = v.unk = v.pad = -1;
	/*
	 * Ids must be a permutation of 0..n-1: in range and each used once.
	 * The pieces point into root, which lives until build has copied them.
	 */
	json_object_foreach(root, key, value) {
		json_int_t id;

		if (!json_is_integer(value))
			FAIL(NESA_EFORMAT, "cannot load vocabulary '%s': '%.64s' has no integer id",
			     vocab_path, key);
		id = json_integer_value(value);
		if (id < 0 || id >= (json_int_t)n || pieces[id] != NULL)
			FAIL(NESA_EFORMAT,
			     "cannot load vocabulary '%s': id %lld of '%.64s' is %s", vocab_path,
			     (long long)id, key,
			     id < 0 || id >= (json_int_t)n ? "out of range" : "used twice");
		pieces[id] = key;
		if (strcmp(key, "<|endoftext|>") == 0)
			v.bos = v.eos = (int32_t)id;
	}
	s = nesa_read_file(merges_path, MAX_FILE_BYTES, &mbuf, &size, err);
	if (s != NESA_OK)
		goto done;
	s = split_lines(mbuf, size, true, &lines, &lines_len, &n_lines, err);
	if (s != NESA_OK) {
		nesa_err_prefix(err, "cannot load merges '%s'", merges_path);
		goto done;
	}
	v.pieces = pieces;
	s = tokenizer_build(NESA_TOKENIZER_GPT2, &v, false, lines, lines_len, n_lines, out, err);
	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot load tokenizer '%s' with '%s'", vocab_path, merges_path);
done:
	nesa_free(lines);
	nesa_free(lines_len);
	nesa_free(mbuf);
	nesa_free(pieces);
	json_decref(root);
	nesa_free(vbuf);
	return s;
}

/*
 * Tensor set serialization; tokenizer.h lists the tensors.  Reading back
 * treats the set as untrusted input like a file: its arrays are checked
 * here for shape and type, then go through tokenizer_build() like any
 * other source.
 */

static enum nesa_status
add_vec(struct nesa_tset *ts, const char *name, int dtype, int64_t len, void **data,
        struct nesa_err *err)
{
	struct nesa_tensor *t;
	enum nesa_status s = nesa_tset_alloc(ts, name, dtype, 1, &len, &t, err);

	if (s != NESA_OK)
		return s;
	*data = t->data;
	return NESA_OK;
}

enum nesa_status
nesa_tokenizer_to_tset(const struct nesa_tokenizer *tok, struct nesa_tset *ts,
                       struct nesa_err *err)
{
	size_t total, mtotal = 0, i, pos;
	int32_t *i32, id;
	enum nesa_status s;
	void *data;
	char *c;

	if (!valid_handle(tok) || ts == NULL)
		return nesa_err_set(err, NESA_EINVAL, "cannot store tokenizer: invalid argument");
	total = tok->poff[tok->n] - (size_t)tok->n;
	for (i = 0; i < tok->n_merges; i++)
		mtotal += piece_len(tok, tok->merges[i].a) + piece_len(tok, tok->merges[i].b) + 2;
	if (total > (size_t)INT32_MAX)
		return nesa_err_set(err, NESA_ELIMIT,
		                    "cannot store tokenizer: %zu bytes of pieces exceed int32 offsets",
		                    total);
	if ((s = add_vec(ts, "tokenizer.kind", NESA_I32, 1, &data, err)) != NESA_OK)
		return s;
	*(int32_t *)data = (int32_t)tok->kind;
	if ((s = add_vec(ts, "tokenizer.pieces", NESA_U8, (int64_t)total, &data, err)) != NESA_OK)
		return s;
	for (c = data, id = 0; id < tok->n; id++) {
		memcpy(c, piece_at(tok, id), piece_len(tok, id));
		c += piece_len(tok, id);
	}
	if ((s = add_vec(ts, "tokenizer.offsets", NESA_I32, (int64_t)tok->n + 1, &data, err)) != NESA_OK)
		return s;
	for (i32 = data, pos = 0, id = 0; id <= tok->n; id++) {
		i32[id] = (int32_t)pos;
		if (id < tok->n)
			pos += piece_len(tok, id);
	}
	if (tok->kind == NESA_TOKENIZER_SPM) {
		if ((s = add_vec(ts, "tokenizer.scores", NESA_F32, tok->n, &data, err)) != NESA_OK)
			return s;
		memcpy(data, tok->scores, (size_t)tok->n * sizeof *tok->scores);
	}
	if ((s = add_vec(ts, "tokenizer.types", NESA_I32, tok->n, &data, err)) != NESA_OK)
		return s;
	for (i32 = data, id = 0; id < tok->n; id++)
		i32[id] = tok->types[id];
	if ((s = add_vec(ts, "tokenizer.special", NESA_I32, 4, &data, err)) != NESA_OK)
		return s;
	i32 = data;
	i32[0] = tok->bos;
	i32[1] = tok->eos;
	i32[2] = tok->unk;
	i32[3] = tok->pad;
	if (tok->kind != NESA_TOKENIZER_GPT2)
		return NESA_OK;
	if ((s = add_vec(ts, "tokenizer.merges", NESA_U8, (int64_t)mtotal, &data, err)) != NESA_OK)
		return s;
	for (c = data, i = 0; i < tok->n_merges; i++) {
		const struct merge *m = &tok->merges[i];

		memcpy(c, piece_at(tok, m->a), piece_len(tok, m->a));
		c += piece_len(tok, m->a);
		*c++ = ' ';
		memcpy(c, piece_at(tok, m->b), piece_len(tok, m->b));
		c += piece_len(tok, m->b);
		*c++ = '\n';
	}
	return NESA_OK;
}

/* A 1-D tensor of dtype with want elements (any if want < 0), or NULL if absent. */
static enum nesa_status
get_vec(struct nesa_tset *ts, const char *name, int dtype, int64_t want, bool required,
        const struct nesa_tensor **out, struct nesa_err *err)
{
	const struct nesa_tensor *t = nesa_tset_find(ts, name);

	*out = t;
	if (t == NULL)
		return required ? nesa_err_set(err, NESA_EFORMAT, "tensor '%s' is missing", name)
		                : NESA_OK;
	if ((int)t->dtype != dtype || t->ndim != 1)
		return nesa_err_set(err, NESA_EFORMAT, "tensor '%s' is not a 1-D %s vector", name,
		                    nesa_dtype_name(dtype));
	if (want >= 0 && t->shape[0] != want)
		return nesa_err_set(err, NESA_EFORMAT, "tensor '%s' has %lld elements, not %lld", name,
		                    (long long)t->shape[0], (long long)want);
	if ((t->data == NULL && t->shape[0] > 0) || !nesa_tensor_is_contiguous(t))
		return nesa_err_set(err, NESA_EFORMAT, "tensor '%s' has no contiguous data", name);
	return NESA_OK;
}

static enum nesa_status
unexpected(struct nesa_tset *ts, const char *name, struct nesa_err *err)
{
	if (nesa_tset_find(ts, name) != NULL)
		return nesa_err_set(err, NESA_EFORMAT, "tensor '%s' does not belong to this kind", name);
	return NESA_OK;
}

static enum nesa_status
from_tset(struct nesa_tset *ts, struct nesa_tokenizer **out, struct nesa_err *err)
{
	const struct nesa_tensor *tkind, *tpieces, *toffs, *tscores, *ttypes, *tspecial, *tmerges;
	struct nesa_tokenizer_vocab v = {0};
	const char **pieces = NULL, **lines = NULL;
	size_t *lens = NULL, *lines_len = NULL, n_lines = 0, psize, mlen, i;
	const int32_t *offs, *special;
	enum nesa_status s;
	int32_t kind, n;
	const char *blob;

	if ((s = get_vec(ts, "tokenizer.kind", NESA_I32, 1, true, &tkind, err)) != NESA_OK)
		return s;
	kind = *(const int32_t *)tkind->data;
	if (kind != NESA_TOKENIZER_SPM && kind != NESA_TOKENIZER_GPT2)
		return nesa_err_set(err, NESA_EFORMAT, "tensor 'tokenizer.kind' holds unknown kind %ld",
		                    (long)kind);
	if ((s = get_vec(ts, "tokenizer.offsets", NESA_I32, -1, true, &toffs, err)) != NESA_OK ||
	    (s = get_vec(ts, "tokenizer.pieces", NESA_U8, -1, true, &tpieces, err)) != NESA_OK)
		return s;
	if (toffs->shape[0] < 2 || toffs->shape[0] - 1 > NESA_TOKENIZER_MAX_VOCAB)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "tensor 'tokenizer.offsets' has %lld elements (2 to %ld)",
		                    (long long)toffs->shape[0], (long)NESA_TOKENIZER_MAX_VOCAB + 1);
	n = (int32_t)(toffs->shape[0] - 1);
	offs = toffs->data;
	/* An empty tensor may have no data at all. */
	blob = tpieces->data != NULL ? tpieces->data : "";
	psize = (size_t)tpieces->shape[0];
	if (offs[0] != 0 || (size_t)offs[n] != psize)
		return nesa_err_set(err, NESA_EFORMAT,
		                    "tensor 'tokenizer.offsets' must run from 0 to %zu, not %ld to %ld",
		                    psize, (long)offs[0], (long)offs[n]);
	for (i = 0; i < (size_t)n; i++)
		if (offs[i + 1] < offs[i] || offs[i + 1] - offs[i] > NESA_TOKENIZER_MAX_PIECE)
			return nesa_err_set(err, NESA_EFORMAT,
			                    "tensor 'tokenizer.offsets': token %zu spans %ld to %ld", i,
			                    (long)offs[i], (long)offs[i + 1]);
	if ((s = get_vec(ts, "tokenizer.types", NESA_I32, n, true, &ttypes, err)) != NESA_OK ||
	    (s = get_vec(ts, "tokenizer.special", NESA_I32, 4, true, &tspecial, err)) != NESA_OK ||
	    (s = get_vec(ts, "tokenizer.scores", NESA_F32, n, kind == NESA_TOKENIZER_SPM, &tscores,
	                 err)) != NESA_OK ||
	    (s = get_vec(ts, "tokenizer.merges", NESA_U8, -1, kind == NESA_TOKENIZER_GPT2, &tmerges,
	                 err)) != NESA_OK ||
	    (s = unexpected(ts, kind == NESA_TOKENIZER_SPM ? "tokenizer.merges" : "tokenizer.scores",
	                    err)) != NESA_OK)
		return s;
	pieces = nesa_malloc((size_t)n * sizeof *pieces);
	lens = nesa_malloc((size_t)n * sizeof *lens);
	if (pieces == NULL || lens == NULL) {
		s = oom(err);
		goto done;
	}
	for (i = 0; i < (size_t)n; i++) {
		pieces[i] = blob + offs[i];
		lens[i] = (size_t)(offs[i + 1] - offs[i]);
	}
	if (tmerges != NULL) {
		/* "a b\n" lines: every line, the last one included, ends in '\n'. */
		blob = tmerges->data != NULL ? tmerges->data : "";
		mlen = (size_t)tmerges->shape[0];
		if (mlen > 0 && blob[mlen - 1] != '\n')
			FAIL(NESA_EFORMAT, "tensor 'tokenizer.merges' does not end a line");
		s = split_lines(blob, mlen, false, &lines, &lines_len, &n_lines, err);
		if (s != NESA_OK)
			goto done;
	}
	special = tspecial->data;
	v.n = n;
	v.pieces = pieces;
	v.lens = lens;
	v.scores = tscores != NULL ? tscores->data : NULL;
	v.types = ttypes->data;
	v.bos = special[0];
	v.eos = special[1];
	v.unk = special[2];
	v.pad = special[3];
	s = tokenizer_build((enum nesa_tokenizer_kind)kind, &v, false, lines, lines_len, n_lines, out,
	                    err);
done:
	nesa_free(lines);
	nesa_free(lines_len);
	nesa_free(pieces);
	nesa_free(lens);
	return s;
}

enum nesa_status
nesa_tokenizer_from_tset(struct nesa_tset *ts, struct nesa_tokenizer **out, struct nesa_err *err)
{
	enum nesa_status s;

	*out = NULL;
	if (ts == NULL)
		return nesa_err_set(err, NESA_EINVAL, "cannot load tokenizer: no tensor set");
	s = from_tset(ts, out, err);
	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot load tokenizer from tensors");
	return s;
}
