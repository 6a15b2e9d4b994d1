/* SPDX-License-Identifier: MIT */
/*
 * Models: format detection, shard archives as models, identity; see
 * model.h.  The importers of the other formats live in import.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "graph.h"
#include "import.h"
#include "model.h"
#include "shard.h"

struct nesa_model *
nesa_model_new(const char *path, const char *format)
{
	struct nesa_model *m = nesa_calloc(1, sizeof *m);

	if (m == NULL)
		return NULL;
	m->path = nesa_strdup(path);
	m->format = format;
	nesa_tset_init(&m->own);
	if (m->path == NULL) {
		nesa_free(m);
		return NULL;
	}
	return m;
}

void
nesa_model_free(struct nesa_model *m)
{
	if (m == NULL)
		return;
	nesa_tokenizer_free(m->tok);
	json_decref(m->graph);
	json_decref(m->meta);
	if (m->backing_free != NULL)
		m->backing_free(m->backing);
	nesa_tset_release(&m->own);
	nesa_free(m->name);
	nesa_free(m->arch);
	nesa_free(m->path);
	nesa_free(m);
}

/* Fills name, arch and block counts from the graph document. */
enum nesa_status
nesa_model_finish(struct nesa_model *m, struct nesa_err *err)
{
	const char *name = json_string_value(json_object_get(m->graph, "name"));
	const char *arch = json_string_value(json_object_get(m->graph, "arch"));
	json_t *fb = json_object_get(m->graph, "first_block");
	json_t *blocks = json_object_get(m->graph, "blocks");

	m->n_blocks = nesa_graph_doc_blocks(m->graph);
	if (m->n_blocks < 0 || !json_is_array(blocks))
		return nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': the graph has no valid 'n_blocks' and 'blocks'",
		                    m->path);
	m->first = json_is_integer(fb) ? (int)json_integer_value(fb) : 0;
	m->count = (int)json_array_size(blocks);
	if (m->meta == NULL)
		m->meta = json_object();
	m->name = nesa_strdup(name != NULL ? name : "model");
	m->arch = nesa_strdup(arch != NULL ? arch : "unknown");
	if (m->name == NULL || m->arch == NULL || m->meta == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	return NESA_OK;
}

static void
shard_free_cb(void *p)
{
	nesa_shard_free(p);
}

static enum nesa_status
load_nsa(const char *path, const struct nesa_model_opts *o, struct nesa_model **out,
         struct nesa_err *err)
{
	struct nesa_model *m = nesa_model_new(path, "nsa");
	struct nesa_shard *sh;
	json_t *man, *graph;
	enum nesa_status s;

	if (m == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	s = nesa_shard_open(path, o != NULL && o->defer_hash ? NESA_SHARD_DEFER_HASH : 0, &sh, err);
	if (s != NESA_OK) {
		nesa_model_free(m);
		return s;
	}
	m->backing = sh;
	m->backing_free = shard_free_cb;
	m->weights = nesa_shard_tensors(sh);
	man = nesa_shard_manifest(sh);
	graph = json_object_get(man, "graph");
	if (!json_is_object(graph)) {
		nesa_model_free(m);
		return nesa_err_set(err, NESA_EFORMAT, "cannot load '%s': the archive holds no graph", path);
	}
	m->graph = json_incref(graph);
	m->meta = json_incref(json_object_get(man, "meta"));
	m->have_id = nesa_shard_manifest_source_sha256(man, m->source_sha256);
	s = nesa_model_finish(m, err);
	if (s == NESA_OK && (m->first != nesa_shard_manifest_blocks_first(man) ||
	                     m->count != nesa_shard_manifest_blocks_count(man) ||
	                     m->n_blocks != nesa_shard_manifest_n_blocks(man)))
		s = nesa_err_set(err, NESA_EFORMAT,
		                 "cannot load '%s': the manifest's block range disagrees with its graph", path);
	if (s == NESA_OK && nesa_tset_find(m->weights, "tokenizer.kind") != NULL)
		s = nesa_tokenizer_from_tset(m->weights, &m->tok, err);
	if (s != NESA_OK) {
		nesa_err_prefix(err, "cannot load '%s'", path);
		nesa_model_free(m);
		return s;
	}
	*out = m;
	return NESA_OK;
}

/* The format of a file from its first bytes. */
static const char *
sniff(const char *path, struct nesa_err *err, enum nesa_status *st)
{
	unsigned char b[512];
	struct stat sb;
	ssize_t n;
	int fd;

	*st = NESA_OK;
	if (stat(path, &sb) != 0) {
		*st = nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
		return NULL;
	}
	if (S_ISDIR(sb.st_mode))
		return "hf";
	fd = open(path, O_RDONLY);
	if (fd < 0) {
		*st = nesa_err_sys(err, NESA_ENOENT, "cannot open '%s'", path);
		return NULL;
	}
	n = read(fd, b, sizeof b);
	close(fd);
	if (n < 0) {
		*st = nesa_err_sys(err, NESA_EIO, "cannot read '%s'", path);
		return NULL;
	}
	if (n >= 4 && memcmp(b, "GGUF", 4) == 0)
		return "gguf";
	if (n >= 262 && memcmp(b + 257, "ustar", 5) == 0)
		return "nsa";
	if ((n >= 2 && b[0] == 0x1f && b[1] == 0x8b) ||
	    (n >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd) ||
	    (n >= 6 && memcmp(b, "\xfd" "7zXZ\0", 6) == 0))
		return "nsa";
	if (n >= 4 && memcmp(b, "24ka", 4) == 0) /* 0x616b3432 little-endian */
		return "llama2c";
	{
		ssize_t i = 0;

		while (i < n && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r'))
			i++;
		if (i < n && b[i] == '{')
			return "json";
	}
	if (n >= 9 && b[8] == '{')
		return "safetensors";
	/* A legacy llama2.c checkpoint has no magic: its header is seven ints. */
	if (n >= 28)
		return "llama2c";
	*st = nesa_err_set(err, NESA_EUNSUPPORTED,
	                   "cannot load '%s': unknown model format (supported: nesa archive, GGUF, llama2.c checkpoint, Hugging Face directory or config.json, graph file)",
	                   path);
	return NULL;
}

enum nesa_status
nesa_model_load(const char *path, const struct nesa_model_opts *opts, struct nesa_model **out,
                struct nesa_err *err)
{
	enum nesa_status s;
	const char *fmt;

	*out = NULL;
	fmt = sniff(path, err, &s);
	if (fmt == NULL)
		return s;
	if (strcmp(fmt, "nsa") == 0)
		s = load_nsa(path, opts, out, err);
	else if (strcmp(fmt, "gguf") == 0)
		s = nesa_import_gguf(path, out, err);
	else if (strcmp(fmt, "llama2c") == 0)
		s = nesa_import_llama2c(path, opts != NULL ? opts->tokenizer : NULL, out, err);
	else if (strcmp(fmt, "hf") == 0)
		s = nesa_import_hf(path, out, err);
	else if (strcmp(fmt, "json") == 0)
		s = nesa_import_json(path, opts != NULL ? opts->weights : NULL, out, err);
	else
		return nesa_err_set(err, NESA_EUNSUPPORTED,
		                    "cannot load '%s': safetensors weights need a Hugging Face config.json beside them or a graph file naming them; give the directory or the JSON file",
		                    path);
	/* Some converters record a shorter context than the model was trained for. */
	if (s == NESA_OK && opts != NULL && opts->context > 0 &&
	    json_object_set_new((*out)->graph, "max_positions", json_integer(opts->context)) != 0) {
		nesa_model_free(*out);
		*out = NULL;
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	return s;
}

enum nesa_status
nesa_model_identity(struct nesa_model *m, uint8_t sha256[32], struct nesa_err *err)
{
	if (!m->have_id) {
		char file[4096];
		struct stat sb;
		enum nesa_status s;

		/* A directory's identity is its config.json plus its weights index or file. */
		if (stat(m->path, &sb) == 0 && S_ISDIR(sb.st_mode))
			snprintf(file, sizeof file, "%s/config.json", m->path);
		else
			snprintf(file, sizeof file, "%s", m->path);
		s = nesa_sha256_file(file, m->source_sha256, err);
		if (s != NESA_OK)
			return s;
		m->have_id = true;
	}
	memcpy(sha256, m->source_sha256, 32);
	return NESA_OK;
}

uint64_t
nesa_model_id64(const uint8_t sha256[32])
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = v << 8 | sha256[i];
	return v;
}

enum nesa_status
nesa_model_io(const struct nesa_model *m, int *in_dtype, int *in_ndim, int64_t in_shape[3],
              int64_t *out_elems, struct nesa_err *err)
{
	struct nesa_graph *g;
	const struct nesa_block *b0, *bl;
	const struct nesa_value *vi, *vo;
	enum nesa_status s;

	s = nesa_graph_compile(m->graph, m->weights, m->first, m->count, &g, err);
	if (s != NESA_OK)
		return s;
	b0 = &g->blocks[0];
	bl = &g->blocks[g->count - 1];
	vi = &b0->values[b0->inputs[0]];
	vo = &bl->values[bl->outputs[0]];
	*in_dtype = vi->dtype;
	*in_ndim = vi->ndim;
	memcpy(in_shape, vi->shape, 3 * sizeof in_shape[0]);
	*out_elems = vo->row_elems;
	nesa_graph_free(g);
	return NESA_OK;
}

enum nesa_status
nesa_model_write_shard(struct nesa_model *m, int first, int count, const char *path,
                       const struct nesa_shard_write_opts *opts, struct nesa_err *err)
{
	const struct nesa_tensor **list = NULL;
	struct nesa_tset tok;
	json_t *names = NULL, *slice = NULL, *header = NULL, *e;
	uint8_t id[32];
	char hex[65];
	const char *base;
	size_t i, n = 0;
	enum nesa_status s;

	nesa_tset_init(&tok);
	if (first < m->first || count < 1 || first + count > m->first + m->count)
		return nesa_err_set(err, NESA_EINVAL, "blocks [%d, %d) are not in '%s' (it holds [%d, %d))",
		                    first, first + count, m->path, m->first, m->first + m->count);
	s = nesa_model_identity(m, id, err);
	if (s == NESA_OK)
		s = nesa_graph_doc_weights(m->graph, first, count, &names, err);
	if (s == NESA_OK && m->tok != NULL)
		s = nesa_tokenizer_to_tset(m->tok, &tok, err);
	if (s != NESA_OK)
		goto out;
	list = nesa_calloc(json_array_size(names) + tok.n + 1, sizeof *list);
	slice = nesa_graph_doc_slice(m->graph, first, count);
	base = strrchr(m->path, '/');
	header = json_pack("{s:{s:s, s:s, s:s, s:s, s:i}, s:{s:i, s:i}, s:O, s:O}", "model", "name",
	                   m->name, "arch", m->arch, "source", base != NULL ? base + 1 : m->path,
	                   "source_sha256", nesa_sha256_hex(id, hex), "n_blocks", m->n_blocks, "blocks",
	                   "first", first, "count", count, "graph", slice, "meta", m->meta);
	if (list == NULL || slice == NULL || header == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto out;
	}
	json_array_foreach(names, i, e) {
		const struct nesa_tensor *t = nesa_tset_find(m->weights, json_string_value(e));

		if (t == NULL || t->data == NULL) {
			s = nesa_err_set(err, NESA_EFORMAT, "cannot write '%s': weight '%s' is missing", path,
			                 json_string_value(e));
			goto out;
		}
		list[n++] = t;
	}
	for (i = 0; i < tok.n; i++)
		list[n++] = &tok.items[i];
	s = nesa_shard_write(path, header, list, n, opts, err);
out:
	json_decref(header);
	json_decref(slice);
	json_decref(names);
	nesa_free(list);
	nesa_tset_release(&tok);
	return s;
}
