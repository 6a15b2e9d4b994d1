/* SPDX-License-Identifier: MIT */
/*
 * Plans and simple splits; see plan.h.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "plan.h"

void
nesa_plan_init(struct nesa_plan *p)
{
	memset(p, 0, sizeof *p);
}

void
nesa_plan_release(struct nesa_plan *p)
{
	int i;

	if (p == NULL)
		return;
	for (i = 0; i < p->n_stages; i++) {
		nesa_free(p->stages[i].archive);
		nesa_free(p->stages[i].node);
		nesa_free(p->stages[i].command);
	}
	nesa_free(p->stages);
	nesa_free(p->model);
	json_decref(p->extra);
	nesa_plan_init(p);
}

static enum nesa_status
alloc_stages(struct nesa_plan *p, int n, struct nesa_err *err)
{
	p->stages = nesa_calloc((size_t)n, sizeof *p->stages);
	if (p->stages == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	p->n_stages = n;
	return NESA_OK;
}

enum nesa_status
nesa_plan_even(struct nesa_plan *p, int n_blocks, int n_stages, struct nesa_err *err)
{
	int k, at = 0;
	enum nesa_status s;

	if (n_stages < 1 || n_stages > n_blocks)
		return nesa_err_set(err, NESA_EINVAL, "cannot split %d blocks into %d stages", n_blocks,
		                    n_stages);
	s = alloc_stages(p, n_stages, err);
	if (s != NESA_OK)
		return s;
	p->n_blocks = n_blocks;
	/* The first n_blocks % n_stages stages take one block more. */
	for (k = 0; k < n_stages; k++) {
		p->stages[k].first = at;
		p->stages[k].count = n_blocks / n_stages + (k < n_blocks % n_stages);
		at += p->stages[k].count;
	}
	return NESA_OK;
}

enum nesa_status
nesa_plan_cuts(struct nesa_plan *p, int n_blocks, const int *cuts, int n_cuts, struct nesa_err *err)
{
	int k;
	enum nesa_status s;

	for (k = 0; k < n_cuts; k++)
		if (cuts[k] <= (k > 0 ? cuts[k - 1] : 0) || cuts[k] >= n_blocks)
			return nesa_err_set(err, NESA_EINVAL,
			                    "cut %d at block %d: cuts must increase strictly within (0, %d)", k + 1,
			                    cuts[k], n_blocks);
	s = alloc_stages(p, n_cuts + 1, err);
	if (s != NESA_OK)
		return s;
	p->n_blocks = n_blocks;
	for (k = 0; k <= n_cuts; k++) {
		p->stages[k].first = k > 0 ? cuts[k - 1] : 0;
		p->stages[k].count = (k < n_cuts ? cuts[k] : n_blocks) - p->stages[k].first;
	}
	return NESA_OK;
}

enum nesa_status
nesa_plan_parse_cuts(const char *s, int *cuts, int max, int *n, struct nesa_err *err)
{
	const char *p = s;

	*n = 0;
	while (*p != '\0') {
		char *end;
		long v;

		errno = 0;
		v = strtol(p, &end, 10);
		if (end == p || errno != 0 || v < 1 || v > 1000000 || (*end != ',' && *end != '\0'))
			return nesa_err_set(err, NESA_EINVAL, "invalid split '%s': expected block indices like 3,7", s);
		if (*n == max)
			return nesa_err_set(err, NESA_EINVAL, "invalid split '%s': more than %d cuts", s, max);
		cuts[(*n)++] = (int)v;
		p = *end == ',' ? end + 1 : end;
	}
	if (*n == 0)
		return nesa_err_set(err, NESA_EINVAL, "invalid split '%s': no cut", s);
	return NESA_OK;
}

enum nesa_status
nesa_plan_name_archives(struct nesa_plan *p, struct nesa_err *err)
{
	int k;

	for (k = 0; k < p->n_stages; k++) {
		char name[32];

		snprintf(name, sizeof name, "stage-%02d.nsa", k);
		nesa_free(p->stages[k].archive);
		p->stages[k].archive = nesa_strdup(name);
		if (p->stages[k].archive == NULL)
			return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	return NESA_OK;
}

json_t *
nesa_plan_to_json(const struct nesa_plan *p)
{
	json_t *j = json_pack("{s:s, s:i, s:s?, s:i, s:[]}", "format", "nesa-plan", "version",
	                      NESA_PLAN_VERSION, "model", p->model, "n_blocks", p->n_blocks, "stages");
	json_t *stages = json_object_get(j, "stages");
	int k;

	if (j == NULL)
		return NULL;
	for (k = 0; k < p->n_stages; k++) {
		const struct nesa_plan_stage *s = &p->stages[k];
		json_t *o = json_pack("{s:i, s:{s:i, s:i}, s:s?, s:s?, s:s?}", "index", k, "blocks", "first",
		                      s->first, "count", s->count, "archive", s->archive, "node", s->node,
		                      "command", s->command);

		if (o == NULL || json_array_append_new(stages, o) != 0) {
			json_decref(j);
			return NULL;
		}
	}
	if (p->extra != NULL && json_object_update(j, p->extra) != 0) {
		json_decref(j);
		return NULL;
	}
	return j;
}

static char *
dup_opt(const json_t *o, const char *key)
{
	const char *v = json_string_value(json_object_get(o, key));

	return v != NULL ? nesa_strdup(v) : NULL;
}

enum nesa_status
nesa_plan_from_json(const json_t *j, struct nesa_plan *p, struct nesa_err *err)
{
	json_t *stages = json_object_get(j, "stages"), *st;
	json_t *ver = json_object_get(j, "version");
	int at = 0;
	size_t k;
	enum nesa_status s;

	nesa_plan_init(p);
	if (!json_is_object(j) || json_string_value(json_object_get(j, "format")) == NULL ||
	    strcmp(json_string_value(json_object_get(j, "format")), "nesa-plan") != 0)
		return nesa_err_set(err, NESA_EFORMAT, "not a nesa plan (no \"format\": \"nesa-plan\")");
	if (!json_is_integer(ver) || json_integer_value(ver) != NESA_PLAN_VERSION)
		return nesa_err_set(err, NESA_EVERSION, "plan version is not %d", NESA_PLAN_VERSION);
	if (!json_is_integer(json_object_get(j, "n_blocks")) || !json_is_array(stages) ||
	    json_array_size(stages) < 1 || json_array_size(stages) > 100000)
		return nesa_err_set(err, NESA_EFORMAT, "plan needs 'n_blocks' and a non-empty 'stages' array");
	p->n_blocks = (int)json_integer_value(json_object_get(j, "n_blocks"));
	s = alloc_stages(p, (int)json_array_size(stages), err);
	if (s != NESA_OK)
		return s;
	p->model = dup_opt(j, "model");
	json_array_foreach(stages, k, st) {
		json_t *b = json_object_get(st, "blocks");
		json_t *f = json_object_get(b, "first"), *c = json_object_get(b, "count");

		if (!json_is_integer(f) || !json_is_integer(c) || json_integer_value(f) != at ||
		    json_integer_value(c) < 1 || json_integer_value(c) > p->n_blocks - at) {
			nesa_plan_release(p);
			return nesa_err_set(err, NESA_EFORMAT,
			                    "plan stage %zu: blocks must continue at %d and stay within %d blocks",
			                    k, at, p->n_blocks);
		}
		p->stages[k].first = at;
		p->stages[k].count = (int)json_integer_value(c);
		at += p->stages[k].count;
		p->stages[k].archive = dup_opt(st, "archive");
		p->stages[k].node = dup_opt(st, "node");
		p->stages[k].command = dup_opt(st, "command");
	}
	if (at != p->n_blocks) {
		nesa_plan_release(p);
		return nesa_err_set(err, NESA_EFORMAT, "plan stages cover %d of %d blocks", at, p->n_blocks);
	}
	/* The planner's facts travel with the plan (nesa-route reads its topology). */
	if (json_is_object(json_object_get(j, "planner")) &&
	    (p->extra = json_pack("{s:O}", "planner", json_object_get(j, "planner"))) == NULL) {
		nesa_plan_release(p);
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	}
	return NESA_OK;
}

/* Copies s[0..n) to b with every ' written as '\'' (for inside single quotes); returns the length. */
static size_t
sh_quote_into(char *b, const char *s, size_t n)
{
	size_t i, o = 0;

	for (i = 0; i < n; i++) {
		if (s[i] == '\'') {
			memcpy(b + o, "'\\''", 4);
			o += 4;
		} else {
			b[o++] = s[i];
		}
	}
	return o;
}

enum nesa_status
nesa_plan_stage_spec(const struct nesa_plan *p, int i, const char *plan_path, char **spec,
                     char **archive, struct nesa_err *err)
{
	const struct nesa_plan_stage *ps = &p->stages[i];
	const char *slash = strrchr(plan_path, '/');
	const char *dir = slash != NULL ? plan_path : ".";
	size_t dlen = slash == NULL ? 1 : slash == plan_path ? 1 : (size_t)(slash - plan_path);
	char *path = NULL, *out = NULL;
	size_t len, n;

	*spec = NULL;
	if (archive != NULL)
		*archive = NULL;
	if (ps->archive == NULL && ps->command == NULL)
		return nesa_err_set(err, NESA_EFORMAT, "stage %d of the plan has neither an archive nor a command", i);
	if (ps->archive != NULL) {
		len = dlen + strlen(ps->archive) + 2;
		if ((path = nesa_malloc(len)) == NULL)
			goto oom;
		snprintf(path, len, "%.*s%s%s", (int)dlen, dir, dir[dlen - 1] == '/' ? "" : "/", ps->archive);
	}
	if (ps->command != NULL) {
		/* cd 'DIR' && COMMAND: each byte of DIR takes at most 4 quoted. */
		len = 4 * dlen + strlen(ps->command) + 16;
		if ((out = nesa_malloc(len)) == NULL)
			goto oom;
		memcpy(out, "cd '", 4);
		n = 4 + sh_quote_into(out + 4, dir, dlen);
		snprintf(out + n, len - n, "' && %s", ps->command);
	} else if ((out = nesa_strdup(path)) == NULL) {
		goto oom;
	}
	*spec = out;
	if (archive != NULL)
		*archive = path;
	else
		nesa_free(path);
	return NESA_OK;
oom:
	nesa_free(path);
	return nesa_err_set(err, NESA_ENOMEM, "out of memory");
}

enum nesa_status
nesa_plan_load(const char *path, struct nesa_plan *p, struct nesa_err *err)
{
	json_error_t je;
	json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	enum nesa_status s;

	nesa_plan_init(p);
	if (j == NULL)
		return nesa_err_set(err, NESA_EFORMAT, "cannot read plan '%s': %s (line %d)", path, je.text,
		                    je.line);
	s = nesa_plan_from_json(j, p, err);
	json_decref(j);
	if (s != NESA_OK)
		nesa_err_prefix(err, "cannot read plan '%s'", path);
	return s;
}
