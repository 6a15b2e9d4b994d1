/* SPDX-License-Identifier: MIT */
/*
 * nesa-partition: cuts a model into contiguous block ranges and writes one
 * shard archive per stage plus the plan that nesa-route runs.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "nesa.h"
#include "plan.h"
#include "shard.h"

static const struct nesa_tool tool = {
	.name = "nesa-partition",
	.purpose = "cut a model into pipeline stages and write their shard archives",
	.synopsis = "[-fqv] [-o directory] [-t threads] [--compress method] [--context n] [--split blocks | --stages n] [--tokenizer file] [--weights file] model",
	.options =
		"      --stages=N            N stages with as equal numbers of blocks as possible (default 2)\n"
		"      --split=B1,B2,...     stages start at blocks B1, B2, ... (after the first at 0)\n"
		"      --compress=METHOD     none (default; archives are used in place), gzip, zstd or xz\n"
		"      --context=N           context length recorded instead of the model's\n"
		"      --tokenizer=FILE      tokenizer of a llama2.c checkpoint\n"
		"      --weights=FILE        safetensors weights of a graph file\n",
	.std_opts = "oftvqhV",
};

enum {
	OPT_COMPRESS = NESA_CLI_LONGONLY_BASE,
	OPT_CONTEXT,
	OPT_SPLIT,
	OPT_STAGES,
	OPT_TOKENIZER,
	OPT_WEIGHTS,
};

#define MAX_CUTS 4096

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		NESA_CLI_LONGOPTS,
		{"compress", required_argument, NULL, OPT_COMPRESS},
		{"context", required_argument, NULL, OPT_CONTEXT},
		{"split", required_argument, NULL, OPT_SPLIT},
		{"stages", required_argument, NULL, OPT_STAGES},
		{"tokenizer", required_argument, NULL, OPT_TOKENIZER},
		{"weights", required_argument, NULL, OPT_WEIGHTS},
		{NULL, 0, NULL, 0},
	};
	static int cuts[MAX_CUTS];
	struct nesa_cli_opts opts;
	struct nesa_model_opts mopts = {0};
	struct nesa_shard_write_opts wopts = {NESA_SHARD_NONE, false};
	struct nesa_model *m = NULL;
	struct nesa_plan plan;
	struct nesa_err err;
	const char *split = NULL, *dir;
	char path[4200];
	int n_stages = 0, n_cuts = 0, c, code, k;
	int64_t v;
	json_t *pj = NULL;
	enum nesa_status s;

	/* Program name and defaults first: every message below uses them. */
	nesa_cli_init(&opts, &tool, argc, argv);
	nesa_plan_init(&plan);
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS, longopts, NULL)) != -1) {
		switch (c) {
		case OPT_COMPRESS:
			if (strcmp(optarg, "none") == 0)
				wopts.compress = NESA_SHARD_NONE;
			else if (strcmp(optarg, "gzip") == 0)
				wopts.compress = NESA_SHARD_GZIP;
			else if (strcmp(optarg, "zstd") == 0)
				wopts.compress = NESA_SHARD_ZSTD;
			else if (strcmp(optarg, "xz") == 0)
				wopts.compress = NESA_SHARD_XZ;
			else
				return nesa_usage_error(&tool, "invalid value '%s' for --compress: expected none, gzip, zstd or xz", optarg);
			break;
		case OPT_CONTEXT:
			if (!nesa_cli_parse_i64(&tool, "--context", optarg, 1, 1 << 24, &v))
				return nesa_exit_code(NESA_EUSAGE);
			mopts.context = (int)v;
			break;
		case OPT_SPLIT: split = optarg; break;
		case OPT_STAGES:
			if (!nesa_cli_parse_i64(&tool, "--stages", optarg, 1, 100000, &v))
				return nesa_exit_code(NESA_EUSAGE);
			n_stages = (int)v;
			break;
		case OPT_TOKENIZER: mopts.tokenizer = optarg; break;
		case OPT_WEIGHTS: mopts.weights = optarg; break;
		default:
			if (nesa_cli_std(&opts, c, optarg, &code) == NESA_CLI_EXIT)
				return code;
		}
	}
	/* Validate the combination before touching any file. */
	if (argc - optind != 1)
		return nesa_usage_error(&tool, argc - optind < 1 ? "a model is required" : "too many operands");
	if (split != NULL && n_stages > 0)
		return nesa_usage_error(&tool, "give --split or --stages, not both");
	if (split != NULL && nesa_plan_parse_cuts(split, cuts, MAX_CUTS, &n_cuts, &err) != NESA_OK)
		return nesa_usage_error(&tool, "%s", err.msg);
	if (split == NULL && n_stages == 0)
		n_stages = 2;
	nesa_cli_apply(&opts);
	nesa_xio_install_cleanup();
	wopts.force = opts.force;
	dir = opts.output != NULL ? opts.output : ".";
	if (nesa_is_stdio(dir))
		return nesa_usage_error(&tool, "-o names a directory for the stage archives");

	s = nesa_model_load(argv[optind], &mopts, &m, &err);
	if (s != NESA_OK)
		goto done;
	if (m->first != 0 || m->count != m->n_blocks) {
		s = nesa_err_set(&err, NESA_EINVAL, "'%s' holds blocks [%d, %d) of %d; partition the whole model",
		                 argv[optind], m->first, m->first + m->count, m->n_blocks);
		goto done;
	}
	s = split != NULL ? nesa_plan_cuts(&plan, m->n_blocks, cuts, n_cuts, &err)
	                  : nesa_plan_even(&plan, m->n_blocks, n_stages, &err);
	if (s == NESA_OK)
		s = nesa_plan_name_archives(&plan, &err);
	if (s != NESA_OK)
		goto done;
	plan.model = nesa_strdup(m->name);
	if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
		s = nesa_err_sys(&err, NESA_ECREATE, "cannot create directory '%s'", dir);
		goto done;
	}
	for (k = 0; k < plan.n_stages; k++) {
		snprintf(path, sizeof path, "%s/%s", dir, plan.stages[k].archive);
		s = nesa_model_write_shard(m, plan.stages[k].first, plan.stages[k].count, path, &wopts, &err);
		if (s != NESA_OK)
			goto done;
		nesa_log(NESA_LOG_INFO, "%s: blocks [%d, %d)", path, plan.stages[k].first,
		         plan.stages[k].first + plan.stages[k].count);
	}
	/* The plan last: it names archives that now exist. */
	snprintf(path, sizeof path, "%s/plan.json", dir);
	pj = nesa_plan_to_json(&plan);
	if (pj == NULL) {
		s = nesa_err_set(&err, NESA_ENOMEM, "out of memory");
		goto done;
	}
	{
		struct nesa_out o;
		char *text = json_dumps(pj, JSON_INDENT(2));

		s = text == NULL ? nesa_err_set(&err, NESA_ENOMEM, "out of memory")
		                 : nesa_out_open(&o, path, opts.force ? NESA_OUT_FORCE : 0, &err);
		if (s == NESA_OK) {
			s = nesa_out_write(&o, text, strlen(text), &err);
			if (s == NESA_OK)
				s = nesa_out_write(&o, "\n", 1, &err);
			if (s == NESA_OK)
				s = nesa_out_commit(&o, &err);
			else
				nesa_out_abort(&o);
		}
		free(text);
	}
done:
	json_decref(pj);
	nesa_plan_release(&plan);
	nesa_model_free(m);
	return nesa_exit(s, &err);
}
