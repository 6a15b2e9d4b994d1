/* SPDX-License-Identifier: MIT */
/*
 * Plans: which contiguous block ranges form the stages of a pipeline, where
 * each stage's archive is and (once planned for real machines) which node
 * runs it.  A plan is written as JSON (documented in nesa-partition(1)) and
 * read by nesa-route.  The planner that chooses cuts from measured nodes
 * lives in planner.h; this module holds the plan itself and the simple
 * splits.
 */
#ifndef NESA_PLAN_H
#define NESA_PLAN_H

#include <jansson.h>

#include "err.h"

#define NESA_PLAN_VERSION 1

struct nesa_plan_stage {
	int first, count;  /* blocks [first, first + count) */
	char *archive;     /* shard archive path, relative to the plan's directory */
	char *node;        /* node name, or NULL */
	char *command;     /* how to start or reach the stage, or NULL (local) */
};

struct nesa_plan {
	char *model;       /* model name */
	int n_blocks;
	struct nesa_plan_stage *stages; /* (n_stages) in pipeline order */
	int n_stages;
	json_t *extra;     /* {"planner": facts (objective, topology, predictions)}, or NULL */
};

/* Splits n_blocks into n_stages ranges of as equal a count as possible. */
enum nesa_status nesa_plan_even(struct nesa_plan *p, int n_blocks, int n_stages,
                                struct nesa_err *err);

/*
 * Splits at the given cut points: stage k starts at cuts[k - 1].  Cuts
 * must be strictly increasing and inside (0, n_blocks).
 */
enum nesa_status nesa_plan_cuts(struct nesa_plan *p, int n_blocks, const int *cuts, int n_cuts,
                                struct nesa_err *err);

/* Parses "3,7,9" into cuts (at most max). */
enum nesa_status nesa_plan_parse_cuts(const char *s, int *cuts, int max, int *n,
                                      struct nesa_err *err);

/* Names the archives stage-00.nsa, stage-01.nsa, ... */
enum nesa_status nesa_plan_name_archives(struct nesa_plan *p, struct nesa_err *err);

/* JSON form of a plan (new reference), and its inverse with validation. */
json_t *nesa_plan_to_json(const struct nesa_plan *p);
enum nesa_status nesa_plan_from_json(const json_t *j, struct nesa_plan *p, struct nesa_err *err);

/* Reads a plan file; archive paths stay relative (see nesa_plan_path). */
enum nesa_status nesa_plan_load(const char *path, struct nesa_plan *p, struct nesa_err *err);

/*
 * How nesa-route reaches stage i of the plan read from plan_path, as a
 * pipeline stage spec (a new string, nesa_free it): a local archive is its
 * path joined to the plan's directory; a command runs in that directory
 * (so a local command may name the archive as the plan does; a remote one
 * is unaffected).  *archive (may be NULL) receives the archive's local
 * path when the plan names one, or NULL.  NESA_ENOMEM.
 */
enum nesa_status nesa_plan_stage_spec(const struct nesa_plan *p, int i, const char *plan_path,
                                      char **spec, char **archive, struct nesa_err *err);

void nesa_plan_init(struct nesa_plan *p);
void nesa_plan_release(struct nesa_plan *p);

#endif
