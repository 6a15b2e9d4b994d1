/* SPDX-License-Identifier: MIT */
/*
 * Planner problems, evaluation, baselines and output; the solvers are in
 * planner-search.c.  See planner.h for the cost model and nesa-partition(1)
 * for the input formats.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "cli.h"
#include "planner.h"

#define INF HUGE_VAL

/* Defaults when nothing is measured: a 1 Gbit/s link with 1 ms round trips. */
#define DEFAULT_RTT_S 1e-3
#define DEFAULT_BYTES_PER_S 125e6
#define DEFAULT_OVERHEAD_S 5e-5
#define MB 1e6

void
nesa_problem_init(struct nesa_problem *p)
{
	memset(p, 0, sizeof *p);
	p->microbatches = 1;
	p->sessions = 1;
}

void
nesa_problem_release(struct nesa_problem *p)
{
	int n;

	if (p == NULL)
		return;
	for (n = 0; n < p->n_nodes && p->nodes != NULL; n++) {
		nesa_free(p->nodes[n].name);
		nesa_free(p->nodes[n].command);
	}
	nesa_free(p->nodes);
	nesa_free(p->blocks);
	nesa_free(p->cut_bytes);
	nesa_free(p->rtt_s);
	nesa_free(p->spb);
	nesa_free(p->model);
	nesa_free(p->client);
	nesa_problem_init(p);
}

enum nesa_status
nesa_problem_alloc(struct nesa_problem *p, int n_blocks, int n_nodes, struct nesa_err *err)
{
	size_t links;

	nesa_problem_init(p);
	if (n_blocks < 1 || n_blocks > 65535 || n_nodes < 1 || n_nodes > 1000000)
		return nesa_err_set(err, NESA_EINVAL, "cannot plan %d blocks on %d nodes (1 to 65535 blocks, 1 to 1000000 nodes)",
		                    n_blocks, n_nodes);
	links = (size_t)(n_nodes + 1) * (size_t)(n_nodes + 1);
	p->blocks = nesa_calloc((size_t)n_blocks, sizeof *p->blocks);
	p->cut_bytes = nesa_calloc((size_t)n_blocks + 1, sizeof *p->cut_bytes);
	p->nodes = nesa_calloc((size_t)n_nodes, sizeof *p->nodes);
	p->rtt_s = nesa_calloc(links, sizeof *p->rtt_s);
	p->spb = nesa_calloc(links, sizeof *p->spb);
	p->n_blocks = n_blocks;
	p->n_nodes = n_nodes;
	if (p->blocks == NULL || p->cut_bytes == NULL || p->nodes == NULL || p->rtt_s == NULL ||
	    p->spb == NULL) {
		nesa_problem_release(p);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory for a plan of %d nodes", n_nodes);
	}
	return NESA_OK;
}

void
nesa_problem_uniform_links(struct nesa_problem *p, double rtt_s, double bytes_per_s)
{
	int a, b, E = p->n_nodes + 1;

	for (a = 0; a < E; a++)
		for (b = 0; b < E; b++) {
			size_t x = (size_t)a * (size_t)E + (size_t)b;

			p->rtt_s[x] = a == b ? 0 : rtt_s;
			p->spb[x] = a == b || bytes_per_s <= 0 ? 0 : 1.0 / bytes_per_s;
		}
}

void
nesa_planner_live_bytes(int n_units, int n_values, const int *prod, const int *last,
                        const double *bytes, double *out)
{
	int c, v;

	for (c = 0; c <= n_units; c++)
		out[c] = 0;
	/* A value is live across cut c when produced before c and used at or after c. */
	for (v = 0; v < n_values; v++)
		for (c = prod[v] + 1; c <= last[v] && c <= n_units; c++)
			if (c >= 0)
				out[c] += bytes[v];
}

/* ---- reading profiles ---- */

static double
num(const json_t *o, const char *key, double dflt)
{
	const json_t *v = json_object_get(o, key);

	return json_is_number(v) ? json_number_value(v) : dflt;
}

/* o.a.b as a number, or dflt. */
static double
num2(const json_t *o, const char *a, const char *b, double dflt)
{
	return num(json_object_get(o, a), b, dflt);
}

static enum nesa_status
read_model(const json_t *m, const struct nesa_problem_opts *o, struct nesa_problem *p,
           const json_t *nodes, struct nesa_err *err)
{
	const json_t *blocks = json_object_get(m, "blocks"), *cuts = json_object_get(m, "cuts");
	const char *fmt = json_string_value(json_object_get(m, "format"));
	size_t L = json_array_size(blocks), j;
	enum nesa_status s;
	int ctx;

	if (fmt == NULL || strcmp(fmt, "nesa-model-profile") != 0)
		return nesa_err_set(err, NESA_EFORMAT, "not a model profile (no \"format\": \"nesa-model-profile\")");
	if (!json_is_array(blocks) || L < 1 || L > 65535)
		return nesa_err_set(err, NESA_EFORMAT, "model profile: 'blocks' must be an array of 1 to 65535 blocks");
	s = nesa_problem_alloc(p, (int)L, (int)json_array_size(nodes) > 0 ? (int)json_array_size(nodes) : 1, err);
	if (s != NESA_OK)
		return s;
	ctx = o->context > 0 ? o->context : (int)num(m, "context", 0);
	p->context = ctx > 0 ? ctx : 0;
	p->sessions = o->sessions > 0 ? o->sessions : 1;
	p->decode_pos = p->context / 2.0;
	p->model = nesa_strdup(json_string_value(json_object_get(m, "model")));
	for (j = 0; j < L; j++) {
		const json_t *b = json_array_get(blocks, j);
		struct nesa_pblock *pb = &p->blocks[j];
		double param = num(b, "param_bytes", -1), fpt = num(b, "flops_per_token", -1);

		if (!json_is_object(b) || param < 0 || fpt < 0)
			return nesa_err_set(err, NESA_EFORMAT, "model profile: block %zu needs 'param_bytes' and 'flops_per_token'", j);
		pb->param_bytes = param;
		pb->flops = fpt + p->decode_pos * num(b, "flops_per_token_per_ctx", 0);
		pb->read_bytes = num(b, "read_bytes_per_token", param);
		pb->kv_bytes = num(b, "kv_bytes_per_token", 0) * p->context * p->sessions;
		pb->mem_bytes = param + pb->kv_bytes;
		pb->f16_bytes = num(b, "param_bytes_f16", param);
		pb->q8_0_bytes = num(b, "param_bytes_q8_0", param);
		pb->q4_0_bytes = num(b, "param_bytes_q4_0", param);
		if (!(pb->flops >= 0 && pb->read_bytes >= 0 && pb->kv_bytes >= 0 && isfinite(pb->mem_bytes)))
			return nesa_err_set(err, NESA_EFORMAT, "model profile: block %zu has a negative or absurd cost", j);
	}
	/* Cuts: as profiled, else each block's inputs and the last block's outputs. */
	for (j = 0; j <= L; j++) {
		const json_t *b = json_array_get(blocks, j < L ? j : L - 1);
		double v = num(json_array_get(cuts, j), "bytes_per_token", -1);

		if (v < 0)
			v = num(b, j < L ? "in_bytes_per_token" : "out_bytes_per_token", 0);
		p->cut_bytes[j] = v;
	}
	return NESA_OK;
}

static enum nesa_status
read_node(const json_t *j, int index, const struct nesa_problem_opts *o, struct nesa_pnode *n,
          struct nesa_err *err)
{
	const char *name = json_string_value(json_object_get(j, "name"));
	const char *cmd = json_string_value(json_object_get(j, "command"));
	double gflops = num2(j, "gemm", "gflops", -1);
	double gbs = num2(j, "gemv", "gbytes_per_s", num2(j, "stream", "gbytes_per_s", -1));
	double avail = num2(j, "memory", "available_bytes", num2(j, "memory", "total_bytes", -1));
	double ovh = num(j, "overhead_ms", -1);

	if (!json_is_object(j) || name == NULL)
		return nesa_err_set(err, NESA_EFORMAT, "node profile %d: not an object with a 'name'", index);
	if (!(gflops > 0) || !(gbs > 0) || !(avail >= 0) || !isfinite(gflops) || !isfinite(gbs))
		return nesa_err_set(err, NESA_EFORMAT,
		                    "node profile '%s': needs positive 'gemm.gflops', 'gemv.gbytes_per_s' (or 'stream.gbytes_per_s') and 'memory.available_bytes'",
		                    name);
	n->name = nesa_strdup(name);
	n->command = cmd != NULL ? nesa_strdup(cmd) : NULL;
	if (n->name == NULL || (cmd != NULL && n->command == NULL))
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	n->flops_per_s = gflops * 1e9;
	n->bytes_per_s = gbs * 1e9;
	n->avail_bytes = avail;
	n->cap_bytes = avail - o->reserve;
	n->overhead_s = ovh >= 0 ? ovh * 1e-3 : o->overhead_s >= 0 ? o->overhead_s : DEFAULT_OVERHEAD_S;
	return NESA_OK;
}

/* Endpoint index of a name: a node, or the client (K); -1 if unknown. */
static int
endpoint(const struct nesa_problem *p, const char *name)
{
	int n;

	if (name == NULL)
		return -1;
	for (n = 0; n < p->n_nodes; n++)
		if (strcmp(p->nodes[n].name, name) == 0)
			return n;
	return strcmp(name, p->client) == 0 ? p->n_nodes : -1;
}

/* rtt_ms and gbytes_per_s of a link object, keeping what it does not say. */
static enum nesa_status
link_values(const json_t *l, const char *what, double *rtt, double *spb, struct nesa_err *err)
{
	double r = num(l, "rtt_ms", -1), g = num(l, "gbytes_per_s", -1);

	if ((json_object_get(l, "rtt_ms") != NULL && !(r >= 0)) ||
	    (json_object_get(l, "gbytes_per_s") != NULL && !(g > 0)))
		return nesa_err_set(err, NESA_EFORMAT, "links: %s needs 'rtt_ms' >= 0 and 'gbytes_per_s' > 0", what);
	if (r >= 0)
		*rtt = r * 1e-3;
	if (g > 0)
		*spb = 1.0 / (g * 1e9);
	return NESA_OK;
}

static enum nesa_status
read_links(const json_t *links, struct nesa_problem *p, struct nesa_err *err)
{
	int E = p->n_nodes + 1, a, b;
	double rtt = DEFAULT_RTT_S, spb = 1.0 / DEFAULT_BYTES_PER_S;
	double self_rtt = 0, self_spb = 0;
	const json_t *list, *mx, *e;
	const char *fmt = json_string_value(json_object_get(links, "format"));
	size_t i;
	enum nesa_status s;

	if (links != NULL && !json_is_object(links))
		return nesa_err_set(err, NESA_EFORMAT, "links: not a JSON object");
	if (fmt != NULL && strcmp(fmt, "nesa-link-profile") == 0)
		s = link_values(links, "the link profile", &rtt, &spb, err);
	else
		s = link_values(json_object_get(links, "default"), "'default'", &rtt, &spb, err);
	if (s != NESA_OK)
		return s;
	nesa_problem_uniform_links(p, rtt, spb > 0 ? 1.0 / spb : 0);
	/* A link from an endpoint to itself is a local pipe: free unless given. */
	list = json_object_get(links, "links");
	json_array_foreach(list, i, e) {
		const char *f = json_string_value(json_object_get(e, "from")), *t = json_string_value(json_object_get(e, "to"));

		if (f != NULL && t != NULL && strcmp(f, t) == 0 &&
		    (s = link_values(e, "a link to itself", &self_rtt, &self_spb, err)) != NESA_OK)
			return s;
	}
	for (a = 0; a < E; a++) {
		p->rtt_s[(size_t)a * (size_t)E + (size_t)a] = self_rtt;
		p->spb[(size_t)a * (size_t)E + (size_t)a] = self_spb;
	}
	mx = json_object_get(links, "matrix");
	if (mx != NULL) {
		const json_t *names = json_object_get(mx, "names"), *r = json_object_get(mx, "rtt_ms");
		const json_t *g = json_object_get(mx, "gbytes_per_s");
		size_t m = json_array_size(names), x, y;

		if (m == 0 || json_array_size(r) != m || json_array_size(g) != m)
			return nesa_err_set(err, NESA_EFORMAT, "links: 'matrix' needs 'names' and square 'rtt_ms' and 'gbytes_per_s' of the same size");
		for (x = 0; x < m; x++) {
			int ea = endpoint(p, json_string_value(json_array_get(names, x)));

			if (ea < 0)
				return nesa_err_set(err, NESA_EINVAL, "links: matrix name %zu is neither a node nor the client '%s'",
				                    x, p->client);
			for (y = 0; y < m; y++) {
				int eb = endpoint(p, json_string_value(json_array_get(names, y)));
				double rv = json_number_value(json_array_get(json_array_get(r, x), y));
				double gv = json_number_value(json_array_get(json_array_get(g, x), y));

				if (eb < 0 || x == y)
					continue;
				if (!(rv >= 0) || !(gv > 0))
					return nesa_err_set(err, NESA_EFORMAT, "links: matrix entry [%zu][%zu] needs rtt_ms >= 0 and gbytes_per_s > 0",
					                    x, y);
				p->rtt_s[(size_t)ea * (size_t)E + (size_t)eb] = rv * 1e-3;
				p->spb[(size_t)ea * (size_t)E + (size_t)eb] = 1.0 / (gv * 1e9);
			}
		}
	}
	json_array_foreach(list, i, e) {
		const char *f = json_string_value(json_object_get(e, "from")), *t = json_string_value(json_object_get(e, "to"));
		int ea = endpoint(p, f), eb = endpoint(p, t);
		size_t x, y;

		if (ea < 0 || eb < 0)
			return nesa_err_set(err, NESA_EINVAL, "links: entry %zu: '%s' is neither a node nor the client '%s'", i,
			                    ea < 0 ? (f != NULL ? f : "(none)") : t, p->client);
		if (ea == eb)
			continue;
		x = (size_t)ea * (size_t)E + (size_t)eb;
		y = (size_t)eb * (size_t)E + (size_t)ea;
		if ((s = link_values(e, "an entry", &p->rtt_s[x], &p->spb[x], err)) != NESA_OK)
			return s;
		if (!json_is_true(json_object_get(e, "directed"))) {
			p->rtt_s[y] = p->rtt_s[x];
			p->spb[y] = p->spb[x];
		}
	}
	/* A client running on a node reaches it through a local pipe. */
	for (a = 0; a < p->n_nodes; a++)
		if (strcmp(p->nodes[a].name, p->client) == 0) {
			b = p->n_nodes;
			p->rtt_s[(size_t)a * (size_t)E + (size_t)b] = p->rtt_s[(size_t)b * (size_t)E + (size_t)a] = self_rtt;
			p->spb[(size_t)a * (size_t)E + (size_t)b] = p->spb[(size_t)b * (size_t)E + (size_t)a] = self_spb;
		}
	return NESA_OK;
}

enum nesa_status
nesa_problem_from_json(const json_t *model, const json_t *nodes, const json_t *links,
                       const struct nesa_problem_opts *o, struct nesa_problem *p, struct nesa_err *err)
{
	size_t K = json_array_size(nodes), n, m;
	enum nesa_status s;

	nesa_problem_init(p);
	if (K < 1)
		return nesa_err_set(err, NESA_EINVAL, "no node profiles: give at least one with --nodes");
	if (!(o->reserve >= 0))
		return nesa_err_set(err, NESA_EINVAL, "the memory reserve must not be negative");
	s = read_model(model, o, p, nodes, err);
	if (s != NESA_OK)
		goto fail;
	p->objective = o->objective;
	p->microbatches = o->microbatches > 0 ? o->microbatches : 1;
	p->reserve = o->reserve;
	p->client = nesa_strdup(o->client != NULL ? o->client : "client");
	if (p->client == NULL || (p->model == NULL && json_object_get(model, "model") != NULL)) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto fail;
	}
	for (n = 0; n < K; n++) {
		s = read_node(json_array_get(nodes, n), (int)n, o, &p->nodes[n], err);
		if (s != NESA_OK)
			goto fail;
		for (m = 0; m < n; m++)
			if (strcmp(p->nodes[m].name, p->nodes[n].name) == 0) {
				s = nesa_err_set(err, NESA_EINVAL, "two node profiles are named '%s'", p->nodes[n].name);
				goto fail;
			}
	}
	s = read_links(links, p, err);
	if (s == NESA_OK && o->relay) {
		int a, b, E = (int)K + 1;

		p->relay = true;
		for (a = 0; a < (int)K; a++)
			for (b = 0; b < (int)K; b++)
				if (a != b) {
					size_t x = (size_t)a * (size_t)E + (size_t)b, ac = (size_t)a * (size_t)E + K;
					size_t cb = K * (size_t)E + (size_t)b;

					p->rtt_s[x] = p->rtt_s[ac] + p->rtt_s[cb];
					p->spb[x] = p->spb[ac] + p->spb[cb];
				}
	}
	if (s == NESA_OK)
		return NESA_OK;
fail:
	nesa_problem_release(p);
	return s;
}

enum nesa_status
nesa_problem_cap(struct nesa_problem *p, const char *name, double bytes, struct nesa_err *err)
{
	int n, hit = 0;

	for (n = 0; n < p->n_nodes; n++)
		if (name == NULL || strcmp(p->nodes[n].name, name) == 0) {
			p->nodes[n].cap_bytes = fmin(p->nodes[n].avail_bytes, bytes) - p->reserve;
			hit = 1;
		}
	if (!hit)
		return nesa_err_set(err, NESA_EINVAL, "no node named '%s' to cap", name);
	return NESA_OK;
}

/* Adds the profiles in one parsed file to arr, naming unnamed ones after the file. */
static enum nesa_status
add_profiles(json_t *arr, json_t *doc, const char *path, struct nesa_err *err)
{
	const char *base = strrchr(path, '/') != NULL ? strrchr(path, '/') + 1 : path;
	json_t *list = json_is_array(doc) ? doc : json_object_get(doc, "nodes");
	size_t i, n = json_is_array(list) ? json_array_size(list) : 1;
	char name[256];

	for (i = 0; i < n; i++) {
		json_t *e = json_is_array(list) ? json_array_get(list, i) : doc;

		if (!json_is_object(e))
			return nesa_err_set(err, NESA_EFORMAT, "'%s': node profile %zu is not a JSON object", path, i);
		if (json_object_get(e, "name") == NULL) {
			int len = (int)strlen(base);

			if (len > 5 && strcmp(base + len - 5, ".json") == 0)
				len -= 5;
			if (json_is_array(list))
				snprintf(name, sizeof name, "%.*s-%zu", len, base, i);
			else
				snprintf(name, sizeof name, "%.*s", len, base);
			if (json_object_set_new(e, "name", json_string(name)) != 0)
				return nesa_err_set(err, NESA_ENOMEM, "out of memory");
		}
		if (json_array_append(arr, e) != 0)
			return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	return NESA_OK;
}

static enum nesa_status
load_file(json_t *arr, const char *path, struct nesa_err *err)
{
	json_error_t je;
	json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	enum nesa_status s;

	if (doc == NULL) {
		FILE *f = fopen(path, "r");

		if (f == NULL)
			return nesa_err_sys(err, NESA_ENOENT, "cannot open node profile '%s'", path);
		fclose(f);
		return nesa_err_set(err, NESA_EFORMAT, "cannot read node profile '%s': %s (line %d)", path, je.text,
		                    je.line);
	}
	s = add_profiles(arr, doc, path, err);
	json_decref(doc);
	return s;
}

static int
is_json_entry(const struct dirent *d)
{
	size_t n = strlen(d->d_name);

	return d->d_name[0] != '.' && n > 5 && strcmp(d->d_name + n - 5, ".json") == 0;
}

enum nesa_status
nesa_planner_load_nodes(const char *const *paths, int n, json_t **out, struct nesa_err *err)
{
	json_t *arr = json_array();
	enum nesa_status s = NESA_OK;
	int i, k, cnt;

	*out = NULL;
	if (arr == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	for (i = 0; i < n && s == NESA_OK; i++) {
		struct stat st;
		struct dirent **ents;

		if (stat(paths[i], &st) != 0) {
			s = nesa_err_sys(err, NESA_ENOENT, "cannot open node profile '%s'", paths[i]);
			break;
		}
		if (!S_ISDIR(st.st_mode)) {
			s = load_file(arr, paths[i], err);
			continue;
		}
		cnt = scandir(paths[i], &ents, is_json_entry, alphasort);
		if (cnt < 0) {
			s = nesa_err_sys(err, NESA_ENOENT, "cannot read directory '%s'", paths[i]);
			break;
		}
		for (k = 0; k < cnt; k++) {
			char path[4096];

			if (s == NESA_OK) {
				snprintf(path, sizeof path, "%s/%s", paths[i], ents[k]->d_name);
				s = load_file(arr, path, err);
			}
			free(ents[k]);
		}
		free(ents);
		if (s == NESA_OK && cnt == 0)
			s = nesa_err_set(err, NESA_ENOENT, "no *.json node profiles in directory '%s'", paths[i]);
	}
	if (s != NESA_OK) {
		json_decref(arr);
		return s;
	}
	*out = arr;
	return NESA_OK;
}

/* ---- the cost model ---- */

double
nesa_planner_stage_time(const struct nesa_problem *p, int node, int first, int count)
{
	double f = 0, r = 0;
	int j;

	for (j = first; j < first + count; j++) {
		f += p->blocks[j].flops;
		r += p->blocks[j].read_bytes;
	}
	return fmax(f / p->nodes[node].flops_per_s, r / p->nodes[node].bytes_per_s) + p->nodes[node].overhead_s;
}

double
nesa_planner_hop_occupancy(const struct nesa_problem *p, int from, int to, int cut)
{
	return p->cut_bytes[cut] * p->spb[(size_t)from * (size_t)(p->n_nodes + 1) + (size_t)to];
}

double
nesa_planner_hop_latency(const struct nesa_problem *p, int from, int to, int cut)
{
	return p->rtt_s[(size_t)from * (size_t)(p->n_nodes + 1) + (size_t)to] / 2 +
	       nesa_planner_hop_occupancy(p, from, to, cut);
}

static double
stage_mem(const struct nesa_problem *p, const struct nesa_pstage *st, double *weights, double *kv)
{
	double w = 0, k = 0;
	int j;

	for (j = st->first; j < st->first + st->count; j++) {
		w += p->blocks[j].param_bytes;
		k += p->blocks[j].kv_bytes;
	}
	if (weights != NULL)
		*weights = w;
	if (kv != NULL)
		*kv = k;
	return w + k;
}

void
nesa_solution_init(struct nesa_solution *s)
{
	memset(s, 0, sizeof *s);
	s->value = INF;
}

void
nesa_solution_release(struct nesa_solution *s)
{
	if (s == NULL)
		return;
	nesa_free(s->stages);
	nesa_solution_init(s);
}

enum nesa_status
nesa_planner_evaluate(const struct nesa_problem *p, const struct nesa_solution *s, struct nesa_peval *ev,
                      struct nesa_err *err)
{
	struct nesa_peval tmp;
	int k, m, prev = p->n_nodes, at = 0;

	if (ev == NULL)
		ev = &tmp;
	memset(ev, 0, sizeof *ev);
	ev->bottleneck_stage = ev->bottleneck_hop = -1;
	ev->memory_ok = true;
	ev->value = INF;
	if (s->n_stages < 1)
		return nesa_err_set(err, NESA_EINVAL, "a plan needs at least one stage");
	for (k = 0; k < s->n_stages; k++) {
		const struct nesa_pstage *st = &s->stages[k];
		double t, h;

		if (st->node < 0 || st->node >= p->n_nodes)
			return nesa_err_set(err, NESA_EINVAL, "stage %d: node %d does not exist", k, st->node);
		for (m = 0; m < k; m++)
			if (s->stages[m].node == st->node)
				return nesa_err_set(err, NESA_EINVAL, "stages %d and %d both run on node '%s'", m, k,
				                    p->nodes[st->node].name);
		if (st->first != at || st->count < 1 || st->count > p->n_blocks - at)
			return nesa_err_set(err, NESA_EINVAL, "stage %d: blocks [%d, %d) do not continue at block %d",
			                    k, st->first, st->first + st->count, at);
		at += st->count;
		t = nesa_planner_stage_time(p, st->node, st->first, st->count);
		h = nesa_planner_hop_occupancy(p, prev, st->node, st->first);
		ev->latency += nesa_planner_hop_latency(p, prev, st->node, st->first) + t;
		if (h > ev->bottleneck) {
			ev->bottleneck = h;
			ev->bottleneck_hop = k;
			ev->bottleneck_stage = -1;
		}
		if (t > ev->bottleneck) {
			ev->bottleneck = t;
			ev->bottleneck_stage = k;
			ev->bottleneck_hop = -1;
		}
		if (stage_mem(p, st, NULL, NULL) > p->nodes[st->node].cap_bytes)
			ev->memory_ok = false;
		prev = st->node;
	}
	if (at != p->n_blocks)
		return nesa_err_set(err, NESA_EINVAL, "the stages cover %d of %d blocks", at, p->n_blocks);
	ev->latency += nesa_planner_hop_latency(p, prev, p->n_nodes, p->n_blocks);
	if (nesa_planner_hop_occupancy(p, prev, p->n_nodes, p->n_blocks) > ev->bottleneck) {
		ev->bottleneck = nesa_planner_hop_occupancy(p, prev, p->n_nodes, p->n_blocks);
		ev->bottleneck_hop = s->n_stages;
		ev->bottleneck_stage = -1;
	}
	ev->pipeline = ev->latency + (p->microbatches - 1) * ev->bottleneck;
	ev->value = p->objective == NESA_OBJ_LATENCY ? ev->latency
	          : p->objective == NESA_OBJ_THROUGHPUT ? ev->bottleneck : ev->pipeline;
	return NESA_OK;
}

double
nesa_planner_value(const struct nesa_problem *p, const struct nesa_solution *s)
{
	struct nesa_peval ev;

	if (nesa_planner_evaluate(p, s, &ev, NULL) != NESA_OK || !ev.memory_ok)
		return INF;
	return ev.value;
}

/* ---- baselines ---- */

const char *
nesa_baseline_name(enum nesa_baseline b)
{
	switch (b) {
	case NESA_BASE_EVEN: return "even split";
	case NESA_BASE_MEMSHARE: return "memory share (exo, llama.cpp)";
	default: return "petals greedy";
	}
}

/* The nodes a split uses: all in input order, or the L with most memory when there are more. */
static int
split_nodes(const struct nesa_problem *p, int *use)
{
	int K = p->n_nodes, L = p->n_blocks, n, k, cnt = 0;

	for (n = 0; n < K; n++) {
		int bigger = 0;

		/* Rank by memory, ties by index: keep the node if fewer than L rank above it. */
		for (k = 0; k < K && bigger < L; k++)
			if (p->nodes[k].avail_bytes > p->nodes[n].avail_bytes ||
			    (p->nodes[k].avail_bytes == p->nodes[n].avail_bytes && k < n))
				bigger++;
		if (bigger < L)
			use[cnt++] = n;
	}
	return cnt;
}

static void
split_counts(const struct nesa_problem *p, const int *use, int S, bool by_memory, int *cnt)
{
	int L = p->n_blocks, k, total = 0;
	double sum = 0, *ideal = nesa_malloc((size_t)S * sizeof *ideal);

	for (k = 0; k < S; k++)
		sum += p->nodes[use[k]].avail_bytes;
	for (k = 0; k < S; k++) {
		double x = by_memory && sum > 0 ? L * p->nodes[use[k]].avail_bytes / sum : (double)L / S;

		if (ideal != NULL)
			ideal[k] = x;
		cnt[k] = (int)floor(x) > 1 ? (int)floor(x) : 1;
		total += cnt[k];
	}
	/* Largest remainder, as exo does, keeping at least one block per node. */
	while (total != L) {
		int arg = -1;
		double bestd = -INF;

		for (k = 0; k < S; k++) {
			double x = ideal != NULL ? ideal[k] : (double)L / S;
			double d = total < L ? x - cnt[k] : cnt[k] - x;

			if ((total > L && cnt[k] <= 1))
				continue;
			if (d > bestd) {
				bestd = d;
				arg = k;
			}
		}
		if (arg < 0)
			break;
		cnt[arg] += total < L ? 1 : -1;
		total += total < L ? 1 : -1;
	}
	nesa_free(ideal);
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Petals (peers.md 4.1, 4.2): servers join in order; each serves as many
 * blocks as its memory holds, placed where the sorted per-block swarm
 * throughput is lexicographically smallest; then the client's route is the
 * min-latency path that enters a server anywhere in its span and leaves
 * only at the span's end.
 */
static enum nesa_status
petals(const struct nesa_problem *p, struct nesa_solution *out, struct nesa_err *err)
{
	int K = p->n_nodes, L = p->n_blocks, n, b, j, m, s0;
	int *start = nesa_malloc((size_t)K * sizeof *start), *len = nesa_calloc((size_t)K, sizeof *len);
	double *cover = nesa_calloc((size_t)L, sizeof *cover), *win = nesa_malloc(2 * (size_t)L * sizeof *win);
	double *maxwin = nesa_malloc(((size_t)L + 1) * sizeof *maxwin);
	double *dist = nesa_malloc((size_t)K * ((size_t)L + 1) * sizeof *dist);
	int *back = nesa_malloc((size_t)K * ((size_t)L + 1) * sizeof *back);
	enum nesa_status s = NESA_OK;
	double cut = 0;

	out->n_stages = 0;
	if (start == NULL || len == NULL || cover == NULL || win == NULL || maxwin == NULL || dist == NULL ||
	    back == NULL) {
		s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	for (j = 0; j <= L; j++)
		cut += p->cut_bytes[j] / (L + 1);
	/* maxwin[m]: the most memory any m consecutive blocks take. */
	for (m = 1; m <= L; m++) {
		maxwin[m] = 0;
		for (b = 0; b + m <= L; b++) {
			double sum = 0;

			for (j = b; j < b + m; j++)
				sum += p->blocks[j].mem_bytes;
			maxwin[m] = fmax(maxwin[m], sum);
		}
	}
	for (n = 0; n < K; n++) {
		double t = 0, rps, net, tput;

		for (m = L; m >= 1 && maxwin[m] > p->nodes[n].cap_bytes; m--)
			;
		len[n] = m;
		start[n] = -1;
		if (m < 1)
			continue;
		for (b = 0; b < L; b++)
			t += nesa_planner_stage_time(p, n, b, 1) - p->nodes[n].overhead_s;
		rps = L / t;
		net = 1.0 / fmax(cut * p->spb[(size_t)K * (size_t)(K + 1) + (size_t)n], 1e-12);
		tput = fmin(rps / ((m + 1) / 2.0), net);
		for (s0 = 0; s0 + m <= L; s0++) {
			int better = start[n] < 0;

			memcpy(win + L, cover + s0, (size_t)m * sizeof *win);
			qsort(win + L, (size_t)m, sizeof *win, cmp_double);
			for (j = 0; j < m && !better; j++)
				if (win[L + j] != win[j]) {
					better = win[L + j] < win[j];
					break;
				}
			if (better) {
				start[n] = s0;
				memcpy(win, win + L, (size_t)m * sizeof *win);
			}
		}
		for (b = start[n]; b < start[n] + m; b++)
			cover[b] += tput;
	}
	/*
	 * Route: dist[n][b] = least latency to have blocks [0, b) done with the
	 * data on server n (which covers b, or whose span ends at b).
	 */
	for (n = 0; n < K; n++)
		for (b = 0; b <= L; b++) {
			dist[(size_t)n * (size_t)(L + 1) + (size_t)b] = INF;
			back[(size_t)n * (size_t)(L + 1) + (size_t)b] = -1;
		}
	for (n = 0; n < K; n++)
		if (len[n] > 0 && start[n] == 0)
			dist[(size_t)n * (size_t)(L + 1)] = nesa_planner_hop_latency(p, K, n, 0) + p->nodes[n].overhead_s;
	for (b = 0; b <= L; b++) {
		/* Switch servers where a span ends. */
		for (n = 0; n < K; n++) {
			double d = len[n] > 0 && start[n] + len[n] == b ? dist[(size_t)n * (size_t)(L + 1) + (size_t)b] : INF;

			if (d == INF || b == L)
				continue;
			for (m = 0; m < K; m++) {
				double v;

				if (len[m] < 1 || start[m] > b || start[m] + len[m] <= b)
					continue;
				v = d + nesa_planner_hop_latency(p, n, m, b) + p->nodes[m].overhead_s;
				if (v < dist[(size_t)m * (size_t)(L + 1) + (size_t)b]) {
					dist[(size_t)m * (size_t)(L + 1) + (size_t)b] = v;
					back[(size_t)m * (size_t)(L + 1) + (size_t)b] = n;
				}
			}
		}
		if (b == L)
			break;
		for (n = 0; n < K; n++) {
			size_t x = (size_t)n * (size_t)(L + 1) + (size_t)b;

			if (len[n] > 0 && start[n] <= b && b < start[n] + len[n] && dist[x] < INF) {
				double v = dist[x] + nesa_planner_stage_time(p, n, b, 1) - p->nodes[n].overhead_s;

				if (v < dist[x + 1]) {
					dist[x + 1] = v;
					back[x + 1] = -2; /* same server, one block on */
				}
			}
		}
	}
	{
		int best = -1, cur, k = 0, cnt;
		double bd = INF;

		for (n = 0; n < K; n++) {
			double d = len[n] > 0 && start[n] + len[n] == L ? dist[(size_t)n * (size_t)(L + 1) + (size_t)L] : INF;

			if (d < INF && d + nesa_planner_hop_latency(p, n, K, L) < bd) {
				bd = d + nesa_planner_hop_latency(p, n, K, L);
				best = n;
			}
		}
		if (best < 0)
			goto done; /* a block no server holds: Petals cannot serve the model */
		/* Walk back twice: count the stages, then fill them. */
		for (cnt = 0; cnt < 2; cnt++) {
			cur = best;
			b = L;
			m = k;
			k = 0;
			while (cur >= 0) {
				int end = b, bk;

				while ((bk = back[(size_t)cur * (size_t)(L + 1) + (size_t)b]) == -2)
					b--;
				if (cnt == 1)
					out->stages[m - 1 - k] = (struct nesa_pstage){cur, b, end - b};
				k++;
				cur = bk;
			}
			if (cnt == 0) {
				struct nesa_pstage *st = nesa_realloc(out->stages, (size_t)k * sizeof *st);

				if (st == NULL) {
					s = nesa_err_set(err, NESA_ENOMEM, "out of memory");
					goto done;
				}
				out->stages = st;
			}
		}
		out->n_stages = k;
	}
done:
	nesa_free(start);
	nesa_free(len);
	nesa_free(cover);
	nesa_free(win);
	nesa_free(maxwin);
	nesa_free(dist);
	nesa_free(back);
	return s;
}

enum nesa_status
nesa_planner_baseline(const struct nesa_problem *p, enum nesa_baseline b, struct nesa_solution *out,
                      struct nesa_err *err)
{
	enum nesa_status s = NESA_OK;

	out->n_stages = 0;
	out->value = INF;
	if (b == NESA_BASE_PETALS) {
		s = petals(p, out, err);
	} else {
		int *use = nesa_malloc((size_t)p->n_nodes * sizeof *use), *cnt = nesa_malloc((size_t)p->n_nodes * sizeof *cnt);
		struct nesa_pstage *st = nesa_realloc(out->stages, (size_t)p->n_nodes * sizeof *st);
		int S, k, at = 0;

		if (st != NULL)
			out->stages = st;
		if (use == NULL || cnt == NULL || st == NULL) {
			nesa_free(use);
			nesa_free(cnt);
			return nesa_err_set(err, NESA_ENOMEM, "out of memory");
		}
		S = split_nodes(p, use);
		split_counts(p, use, S, b == NESA_BASE_MEMSHARE, cnt);
		for (k = 0; k < S; k++) {
			out->stages[k] = (struct nesa_pstage){use[k], at, cnt[k]};
			at += cnt[k];
		}
		out->n_stages = S;
		nesa_free(use);
		nesa_free(cnt);
	}
	if (s == NESA_OK && out->n_stages > 0)
		out->value = nesa_planner_value(p, out);
	return s;
}

/* ---- names ---- */

const char *
nesa_objective_name(enum nesa_objective o)
{
	return o == NESA_OBJ_LATENCY ? "latency" : o == NESA_OBJ_THROUGHPUT ? "throughput" : "pipeline";
}

enum nesa_status
nesa_objective_from_name(const char *name, enum nesa_objective *o, struct nesa_err *err)
{
	if (strcmp(name, "latency") == 0)
		*o = NESA_OBJ_LATENCY;
	else if (strcmp(name, "throughput") == 0)
		*o = NESA_OBJ_THROUGHPUT;
	else if (strcmp(name, "pipeline") == 0)
		*o = NESA_OBJ_PIPELINE;
	else
		return nesa_err_set(err, NESA_EINVAL, "unknown objective '%s' (known: latency, throughput, pipeline)", name);
	return NESA_OK;
}

enum nesa_status
nesa_planner_algo_from_name(const char *name, enum nesa_planner_algo *a, struct nesa_err *err)
{
	static const char *const names[] = {"auto", "exact", "order", "heuristic"};
	size_t i;

	for (i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(name, names[i]) == 0) {
			*a = (enum nesa_planner_algo)i;
			return NESA_OK;
		}
	return nesa_err_set(err, NESA_EINVAL, "unknown algorithm '%s' (known: auto, exact, order, heuristic)", name);
}

/* ---- memory diagnosis ---- */

/* "123.4 kB", "5.6 MB", "7.8 GB" (SI units, as the rest of the messages). */
static const char *
human(double bytes, char *buf, size_t size)
{
	if (bytes < 1e6)
		snprintf(buf, size, "%.1f kB", bytes / 1e3);
	else if (bytes < 1e9)
		snprintf(buf, size, "%.1f MB", bytes / 1e6);
	else
		snprintf(buf, size, "%.2f GB", bytes / 1e9);
	return buf;
}

enum nesa_status
nesa_planner_infeasible(const struct nesa_problem *p, struct nesa_err *err)
{
	struct nesa_solution s;
	double w = 0, kv = 0, usable = 0, over, *mem;
	char msg[NESA_ERR_MSG_MAX], *at = msg, *end = msg + sizeof msg, h[5][32];
	int j, k, f, shown = 0;
	static const char *const fmt_names[] = {"f16", "q8_0", "q4_0"};

#define ADD(...) do { if (at < end) at += snprintf(at, (size_t)(end - at), __VA_ARGS__); } while (0)
	for (j = 0; j < p->n_blocks; j++) {
		w += p->blocks[j].param_bytes;
		kv += p->blocks[j].kv_bytes;
	}
	for (k = 0; k < p->n_nodes; k++)
		usable += fmax(0, p->nodes[k].cap_bytes);
	ADD("model '%s' does not fit: %d blocks need %s (%s of weights + %s of KV cache for %d session%s x %d tokens) "
	    "and %d node%s offer %s after a reserve of %s each",
	    p->model != NULL ? p->model : "?", p->n_blocks, human(w + kv, h[0], sizeof h[0]), human(w, h[1], sizeof h[1]),
	    human(kv, h[2], sizeof h[2]), p->sessions, p->sessions == 1 ? "" : "s", p->context, p->n_nodes,
	    p->n_nodes == 1 ? "" : "s", human(usable, h[3], sizeof h[3]), human(p->reserve, h[4], sizeof h[4]));
	nesa_solution_init(&s);
	over = nesa_planner_min_overflow(p, NULL, &s);
	if (over < INF && over > 0) {
		ADD("; the closest plan overflows");
		for (k = 0; k < s.n_stages; k++) {
			double m = stage_mem(p, &s.stages[k], NULL, NULL) - p->nodes[s.stages[k].node].cap_bytes;

			if (m > 0 && shown++ < 4)
				ADD("%s '%s' by %s", shown > 1 ? "," : "", p->nodes[s.stages[k].node].name, human(m, h[0], sizeof h[0]));
		}
		if (shown > 4)
			ADD(" and %d more nodes", shown - 4);
		ADD(" (%s missing)", human(over, h[0], sizeof h[0]));
	}
	mem = nesa_malloc((size_t)p->n_blocks * sizeof *mem);
	for (f = 0; f < 3 && mem != NULL; f++) {
		double tot = 0;

		for (j = 0; j < p->n_blocks; j++) {
			const struct nesa_pblock *b = &p->blocks[j];

			mem[j] = (f == 0 ? b->f16_bytes : f == 1 ? b->q8_0_bytes : b->q4_0_bytes) + b->kv_bytes;
			tot += mem[j] - b->kv_bytes;
		}
		if (tot >= w)
			continue;
		over = nesa_planner_min_overflow(p, mem, &s);
		if (over == 0) {
			ADD("; as %s (weights %s) it would fit", fmt_names[f], human(tot, h[0], sizeof h[0]));
			break;
		}
		ADD("; %s %s (weights %s) %s would be missing", f == 2 ? "even as" : "as", fmt_names[f],
		    human(tot, h[0], sizeof h[0]), human(over, h[1], sizeof h[1]));
	}
#undef ADD
	nesa_free(mem);
	nesa_solution_release(&s);
	return nesa_err_set(err, NESA_ELIMIT, "%s", msg);
}

/* ---- output ---- */

static json_t *
stage_json(const struct nesa_problem *p, const struct nesa_solution *s, int k, const struct nesa_peval *ev)
{
	const struct nesa_pstage *st = &s->stages[k];
	int prev = k > 0 ? s->stages[k - 1].node : p->n_nodes;
	double w, kv, mem = stage_mem(p, st, &w, &kv);

	return json_pack("{s:s, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:b}", "node", p->nodes[st->node].name,
	                 "first", st->first, "count", st->count, "compute_ms",
	                 1e3 * nesa_planner_stage_time(p, st->node, st->first, st->count), "hop_in_ms",
	                 1e3 * nesa_planner_hop_latency(p, prev, st->node, st->first), "weights_bytes", w,
	                 "kv_bytes", kv, "memory_bytes", mem + p->reserve, "cap_bytes",
	                 p->nodes[st->node].cap_bytes + p->reserve, "bottleneck",
	                 ev->bottleneck_stage == k || ev->bottleneck_hop == k);
}

static json_t *
eval_json(const struct nesa_problem *p, const struct nesa_solution *s, const char *method, double ours)
{
	struct nesa_peval ev;

	if (s->n_stages == 0 || nesa_planner_evaluate(p, s, &ev, NULL) != NESA_OK)
		return json_pack("{s:s, s:n, s:b}", "method", method, "value_ms", "feasible", 0);
	return json_pack("{s:s, s:i, s:f, s:f, s:f, s:b, s:o}", "method", method, "stages", s->n_stages,
	                 "latency_ms", 1e3 * ev.latency, "bottleneck_ms", 1e3 * ev.bottleneck, "value_ms",
	                 1e3 * ev.value, "feasible", ev.memory_ok,
	                 "ratio", ev.memory_ok && ours > 0 ? json_real(ev.value / ours) : json_null());
}

enum nesa_status
nesa_planner_to_plan(const struct nesa_problem *p, const struct nesa_solution *s,
                     const struct nesa_planner_info *info, bool compare, struct nesa_plan *plan,
                     struct nesa_err *err)
{
	struct nesa_peval ev;
	json_t *pl, *stages, *cmp;
	enum nesa_status st;
	int k;

	st = nesa_planner_evaluate(p, s, &ev, err);
	if (st != NESA_OK)
		return st;
	plan->stages = nesa_calloc((size_t)s->n_stages, sizeof *plan->stages);
	if (plan->stages == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	plan->n_stages = s->n_stages;
	plan->n_blocks = p->n_blocks;
	plan->model = p->model != NULL ? nesa_strdup(p->model) : NULL;
	st = nesa_plan_name_archives(plan, err);
	for (k = 0; k < s->n_stages && st == NESA_OK; k++) {
		const struct nesa_pnode *n = &p->nodes[s->stages[k].node];
		const char *c = n->command, *hole = c != NULL ? strstr(c, "{archive}") : NULL;

		plan->stages[k].first = s->stages[k].first;
		plan->stages[k].count = s->stages[k].count;
		plan->stages[k].node = nesa_strdup(n->name);
		if (hole != NULL) {
			size_t len = strlen(c) + strlen(plan->stages[k].archive);

			plan->stages[k].command = nesa_malloc(len);
			if (plan->stages[k].command != NULL)
				snprintf(plan->stages[k].command, len, "%.*s%s%s", (int)(hole - c), c,
				         plan->stages[k].archive, hole + 9);
		} else if (c != NULL) {
			plan->stages[k].command = nesa_strdup(c);
		}
		if (plan->stages[k].node == NULL || (c != NULL && plan->stages[k].command == NULL))
			st = nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	if (st != NESA_OK)
		return st;
	stages = json_array();
	for (k = 0; k < s->n_stages && stages != NULL; k++)
		if (json_array_append_new(stages, stage_json(p, s, k, &ev)) != 0) {
			json_decref(stages);
			stages = NULL;
		}
	pl = json_pack("{s:s, s:i, s:s, s:i, s:i, s:f, s:f, s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:o, s:i, s:s}",
	               "objective", nesa_objective_name(p->objective), "microbatches", p->microbatches,
	               "algorithm", info != NULL && info->algorithm != NULL ? info->algorithm : "given",
	               "context", p->context, "sessions", p->sessions, "decode_position", p->decode_pos,
	               "reserve_bytes", p->reserve, "client", p->client != NULL ? p->client : "client",
	               "value_ms", 1e3 * ev.value, "latency_ms", 1e3 * ev.latency, "bottleneck_ms",
	               1e3 * ev.bottleneck, "tokens_per_s", ev.bottleneck > 0 ? 1.0 / ev.bottleneck : 0.0,
	               "lower_bound_ms", 1e3 * (info != NULL ? info->lower_bound : 0), "plan_seconds",
	               info != NULL ? info->seconds : 0, "hop_out_ms",
	               1e3 * nesa_planner_hop_latency(p, s->stages[s->n_stages - 1].node, p->n_nodes, p->n_blocks),
	               "evaluations", (json_int_t)(info != NULL ? info->evaluations : 0), "stages", stages,
	               "nodes", p->n_nodes, "topology", p->relay ? "relay" : "chain");
	if (pl != NULL && compare) {
		enum nesa_baseline b;
		struct nesa_solution bs;

		cmp = json_array();
		nesa_solution_init(&bs);
		for (b = NESA_BASE_EVEN; b <= NESA_BASE_PETALS && cmp != NULL; b++) {
			if (nesa_planner_baseline(p, b, &bs, err) != NESA_OK ||
			    json_array_append_new(cmp, eval_json(p, &bs, nesa_baseline_name(b), ev.value)) != 0) {
				json_decref(cmp);
				cmp = NULL;
			}
		}
		nesa_solution_release(&bs);
		if (cmp == NULL || json_object_set_new(pl, "compare", cmp) != 0) {
			json_decref(pl);
			pl = NULL;
		}
	}
	plan->extra = pl != NULL ? json_pack("{s:o}", "planner", pl) : NULL;
	if (plan->extra == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	return NESA_OK;
}

/* A growing text buffer for the tables. */
struct text {
	char *buf;
	size_t len, cap;
	bool failed;
};

static void
tprintf(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(t->buf != NULL ? t->buf + t->len : NULL, t->buf != NULL ? t->cap - t->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if (t->buf != NULL && t->len + (size_t)n < t->cap) {
			t->len += (size_t)n;
			return;
		}
		{
			size_t cap = (t->cap + (size_t)n + 1) * 2;
			char *b = nesa_realloc(t->buf, cap);

			if (b == NULL) {
				t->failed = true;
				return;
			}
			t->buf = b;
			t->cap = cap;
		}
	}
}

static const char *
unit_name(const struct nesa_problem *p)
{
	return p->objective == NESA_OBJ_LATENCY ? "latency (ms per token: stage times and hops added up)"
	     : p->objective == NESA_OBJ_THROUGHPUT ? "throughput (bottleneck ms: the slowest stage or hop)"
	     : "pipeline (ms for B microbatches: latency + (B - 1) x bottleneck)";
}

static void
compare_rows(struct text *t, const struct nesa_problem *p, const struct nesa_solution *s,
             const char *name, double ours)
{
	struct nesa_peval ev;

	if (s->n_stages == 0 || nesa_planner_evaluate(p, s, &ev, NULL) != NESA_OK) {
		tprintf(t, "%-30s  no plan (the spans that fit in memory leave a block uncovered)\n", name);
		return;
	}
	tprintf(t, "%-30s %6d %11.3f %13.3f %12.3f", name, s->n_stages, 1e3 * ev.latency, 1e3 * ev.bottleneck,
	        1e3 * ev.value);
	if (!ev.memory_ok)
		tprintf(t, "  over memory\n");
	else
		tprintf(t, "  %7.2fx\n", ours > 0 ? ev.value / ours : 1.0);
}

enum nesa_status
nesa_planner_explain(const struct nesa_problem *p, const struct nesa_solution *s,
                     const struct nesa_planner_info *info, bool compare, char **text, struct nesa_err *err)
{
	struct text t = {NULL, 0, 0, false};
	struct nesa_peval ev;
	enum nesa_status st;
	int k;

	*text = NULL;
	st = nesa_planner_evaluate(p, s, &ev, err);
	if (st != NESA_OK)
		return st;
	tprintf(&t, "plan for '%s': %d blocks on %d of %d nodes\n", p->model != NULL ? p->model : "?", p->n_blocks,
	        s->n_stages, p->n_nodes);
	tprintf(&t, "objective: %s", unit_name(p));
	if (p->objective == NESA_OBJ_PIPELINE)
		tprintf(&t, ", B = %d", p->microbatches);
	tprintf(&t, "\ncontext %d tokens x %d session%s, decode FLOPs at position %.0f, reserve %.1f MB per node\n\n",
	        p->context, p->sessions, p->sessions == 1 ? "" : "s", p->decode_pos, p->reserve / MB);
	tprintf(&t, "stage  node                 blocks      weights MB    KV MB   memory/cap MB       ms/token   hop ms\n");
	for (k = 0; k < s->n_stages; k++) {
		const struct nesa_pstage *sg = &s->stages[k];
		int prev = k > 0 ? s->stages[k - 1].node : p->n_nodes;
		double w, kv, mem = stage_mem(p, sg, &w, &kv);
		char blocks[32], memcap[48];

		snprintf(blocks, sizeof blocks, "%d-%d", sg->first, sg->first + sg->count - 1);
		snprintf(memcap, sizeof memcap, "%.1f/%.1f", (mem + p->reserve) / MB,
		         (p->nodes[sg->node].cap_bytes + p->reserve) / MB);
		tprintf(&t, "%5d  %-20.20s %-10s %11.2f %8.2f %17s %12.3f%s %8.3f%s\n", k, p->nodes[sg->node].name,
		        blocks, w / MB, kv / MB, memcap, 1e3 * nesa_planner_stage_time(p, sg->node, sg->first, sg->count),
		        ev.bottleneck_stage == k ? "*" : " ", 1e3 * nesa_planner_hop_latency(p, prev, sg->node, sg->first),
		        ev.bottleneck_hop == k ? "*" : " ");
	}
	tprintf(&t, "       back to the client %72.3f%s\n",
	        1e3 * nesa_planner_hop_latency(p, s->stages[s->n_stages - 1].node, p->n_nodes, p->n_blocks),
	        ev.bottleneck_hop == s->n_stages ? "*" : " ");
	tprintf(&t, "\nlatency %.3f ms/token; bottleneck %.3f ms (%s) = %.1f tokens/s in a full pipeline\n",
	        1e3 * ev.latency, 1e3 * ev.bottleneck, ev.bottleneck_stage >= 0 ? "marked * above" : "a hop, marked *",
	        ev.bottleneck > 0 ? 1.0 / ev.bottleneck : 0.0);
	tprintf(&t, "objective %.3f ms", 1e3 * ev.value);
	if (info != NULL) {
		if (info->lower_bound > 0)
			tprintf(&t, "; lower bound %.3f ms (within %.1f%%)", 1e3 * info->lower_bound,
			        fmax(0, 100 * (ev.value / info->lower_bound - 1)));
		tprintf(&t, "; %s solver, %llu DP runs, %.3f s", info->algorithm != NULL ? info->algorithm : "given",
		        (unsigned long long)info->evaluations, info->seconds);
	}
	tprintf(&t, "\n");
	if (compare) {
		enum nesa_baseline b;
		struct nesa_solution bs;
		char name[64];

		tprintf(&t, "\n%-30s %6s %11s %13s %12s  %s\n", "method", "stages", "latency ms", "bottleneck ms",
		        "objective ms", "vs nesa");
		snprintf(name, sizeof name, "nesa (%s)", info != NULL && info->algorithm != NULL ? info->algorithm : "given");
		compare_rows(&t, p, s, name, ev.value);
		nesa_solution_init(&bs);
		for (b = NESA_BASE_EVEN; b <= NESA_BASE_PETALS && st == NESA_OK; b++) {
			st = nesa_planner_baseline(p, b, &bs, err);
			if (st == NESA_OK)
				compare_rows(&t, p, &bs, nesa_baseline_name(b), ev.value);
		}
		nesa_solution_release(&bs);
	}
	if (st == NESA_OK && t.failed)
		st = nesa_err_set(err, NESA_ENOMEM, "out of memory");
	if (st != NESA_OK) {
		nesa_free(t.buf);
		return st;
	}
	*text = t.buf;
	return NESA_OK;
}

enum nesa_status
nesa_planner_run(const struct nesa_planner_request *r, struct nesa_plan *plan, char **text,
                 struct nesa_err *err)
{
	struct nesa_problem p;
	struct nesa_solution sol;
	struct nesa_planner_info info;
	json_t *nj = NULL, *lj = NULL;
	json_error_t je;
	enum nesa_status s;
	int k;

	*text = NULL;
	nesa_problem_init(&p);
	nesa_solution_init(&sol);
	s = nesa_planner_load_nodes(r->nodes, r->n_nodes, &nj, err);
	if (s == NESA_OK && r->links != NULL &&
	    (lj = json_load_file(r->links, JSON_REJECT_DUPLICATES, &je)) == NULL)
		s = json_error_code(&je) == json_error_cannot_open_file
		        ? nesa_err_set(err, NESA_ENOENT, "cannot open links '%s': %s", r->links, je.text)
		        : nesa_err_set(err, NESA_EFORMAT, "cannot read links '%s': %s (line %d)", r->links, je.text,
		                       je.line);
	if (s == NESA_OK)
		s = nesa_problem_from_json(r->model, nj, lj, &r->opts, &p, err);
	for (k = 0; k < r->n_caps && s == NESA_OK; k++) {
		const char *c = r->caps[k], *eq = strchr(c, '=');
		char name[256];
		uint64_t bytes;

		snprintf(name, sizeof name, "%.*s", eq != NULL ? (int)(eq - c) : 0, c);
		s = nesa_parse_size(eq != NULL ? eq + 1 : c, &bytes, err);
		if (s == NESA_OK)
			s = nesa_problem_cap(&p, eq != NULL ? name : NULL, (double)bytes, err);
		if (s != NESA_OK)
			nesa_err_prefix(err, "--memory %s", c);
	}
	if (s == NESA_OK)
		s = nesa_planner_solve(&p, r->algo, r->seed, &sol, &info, err);
	if (s == NESA_OK)
		s = nesa_planner_to_plan(&p, &sol, &info, r->compare, plan, err);
	if (s == NESA_OK && (r->explain || r->compare))
		s = nesa_planner_explain(&p, &sol, &info, r->compare, text, err);
	nesa_solution_release(&sol);
	nesa_problem_release(&p);
	json_decref(lj);
	json_decref(nj);
	return s;
}
