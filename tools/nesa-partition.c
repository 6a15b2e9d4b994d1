/* SPDX-License-Identifier: MIT */
/*
 * nesa-partition: cuts a model into contiguous block ranges and writes one
 * shard archive per stage plus the plan that nesa-route runs.  The cuts
 * are given (--split, --stages) or planned from node profiles (--nodes):
 * the planner (planner.h) chooses nodes, their order and the cuts.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "nesa.h"
#include "plan.h"
#include "planner.h"
#include "profile.h"
#include "shard.h"

static const struct nesa_tool tool = {
	.name = "nesa-partition",
	.purpose = "cut a model into pipeline stages and write their shard archives",
	.synopsis =
		"[-fqv] [-o directory] [-t threads] [--compress method] [--context n] [--split blocks | --stages n] [--tokenizer file] [--weights file] model\n"
		"[-fnqv] [-o directory] [-s seed] [-t threads] [--algorithm name] [--client name] [--compare] [--compress method] [--context n] [--explain] [--links file] [--memory [node=]size] [--microbatches n] [--objective name] [--reserve size] [--sessions n] [--tokenizer file] [--topology name] [--weights file] --nodes path model",
	.options =
		"      --stages=N            N stages with as equal numbers of blocks as possible (default 2)\n"
		"      --split=B1,B2,...     stages start at blocks B1, B2, ... (after the first at 0)\n"
		"      --nodes=PATH          plan from node profiles: a file or a directory of\n"
		"                            *.json (repeatable); the model may be a model profile\n"
		"      --algorithm=NAME      auto (default), exact, order or heuristic\n"
		"      --client=NAME         endpoint of the client in the links (default: client)\n"
		"      --compare             also show the even, memory-share and Petals plans\n"
		"      --explain             print the plan as a table: stages, times, memory\n"
		"      --links=FILE          link matrix or link profile (default: 1 ms, 125 MB/s)\n"
		"      --memory=[NODE=]SIZE  cap a node's (or every node's) memory (repeatable)\n"
		"      --microbatches=N      B for the pipeline objective (default 8)\n"
		"      --objective=NAME      latency (default), throughput or pipeline\n"
		"      --reserve=SIZE        memory held back on every node (default 0)\n"
		"      --sessions=N          KV caches each stage holds (default 1)\n"
		"      --topology=NAME       relay (default: hops go through the client, as\n"
		"                            nesa-route runs them) or chain (stage to stage)\n"
		"  -n                        plan only: write plan.json, no archives ('-o -': stdout)\n"
		"      --compress=METHOD     none (default; archives are used in place), gzip, zstd or xz\n"
		"      --context=N           context length recorded and planned for\n"
		"      --tokenizer=FILE      tokenizer of a llama2.c checkpoint\n"
		"      --weights=FILE        safetensors weights of a graph file\n",
	.std_opts = "ofstvqhV",
};

enum {
	OPT_ALGORITHM = NESA_CLI_LONGONLY_BASE,
	OPT_CLIENT,
	OPT_COMPARE,
	OPT_COMPRESS,
	OPT_CONTEXT,
	OPT_EXPLAIN,
	OPT_LINKS,
	OPT_MEMORY,
	OPT_MICROBATCHES,
	OPT_NODES,
	OPT_OBJECTIVE,
	OPT_RESERVE,
	OPT_SESSIONS,
	OPT_SPLIT,
	OPT_STAGES,
	OPT_TOKENIZER,
	OPT_TOPOLOGY,
	OPT_WEIGHTS,
};

#define MAX_CUTS 4096
#define MAX_LIST 256

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		NESA_CLI_LONGOPTS,
		{"algorithm", required_argument, NULL, OPT_ALGORITHM},
		{"client", required_argument, NULL, OPT_CLIENT},
		{"compare", no_argument, NULL, OPT_COMPARE},
		{"compress", required_argument, NULL, OPT_COMPRESS},
		{"context", required_argument, NULL, OPT_CONTEXT},
		{"explain", no_argument, NULL, OPT_EXPLAIN},
		{"links", required_argument, NULL, OPT_LINKS},
		{"memory", required_argument, NULL, OPT_MEMORY},
		{"microbatches", required_argument, NULL, OPT_MICROBATCHES},
		{"nodes", required_argument, NULL, OPT_NODES},
		{"objective", required_argument, NULL, OPT_OBJECTIVE},
		{"reserve", required_argument, NULL, OPT_RESERVE},
		{"sessions", required_argument, NULL, OPT_SESSIONS},
		{"split", required_argument, NULL, OPT_SPLIT},
		{"stages", required_argument, NULL, OPT_STAGES},
		{"tokenizer", required_argument, NULL, OPT_TOKENIZER},
		{"topology", required_argument, NULL, OPT_TOPOLOGY},
		{"weights", required_argument, NULL, OPT_WEIGHTS},
		{NULL, 0, NULL, 0},
	};
	static int cuts[MAX_CUTS];
	static const char *nodes[MAX_LIST], *caps[MAX_LIST];
	struct nesa_cli_opts opts;
	struct nesa_model_opts mopts = {0};
	struct nesa_planner_request rq = {0};
	struct nesa_problem_opts *po = &rq.opts;
	struct nesa_shard_write_opts wopts = {NESA_SHARD_NONE, false};
	struct nesa_model *m = NULL;
	struct nesa_plan plan;
	struct nesa_err err;
	const char *split = NULL, *dir, *planning_only = NULL;
	char path[4200], *text = NULL;
	int n_stages = 0, n_cuts = 0, n_nodes = 0, n_caps = 0, c, code, k, dry = 0, mb_set = 0, obj_set = 0;
	int64_t v;
	uint64_t size;
	json_t *pj = NULL, *mp = NULL;
	enum nesa_status s;

	/* Program name and defaults first: every message below uses them. */
	nesa_cli_init(&opts, &tool, argc, argv);
	nesa_plan_init(&plan);
	po->relay = true;
	po->overhead_s = -1;
	po->microbatches = 8;
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS "n", longopts, NULL)) != -1) {
		switch (c) {
		case 'n': dry = 1; planning_only = "-n"; break;
		case OPT_ALGORITHM:
			if (nesa_planner_algo_from_name(optarg, &rq.algo, &err) != NESA_OK)
				return nesa_usage_error(&tool, "%s", err.msg);
			planning_only = "--algorithm";
			break;
		case OPT_CLIENT: po->client = optarg; planning_only = "--client"; break;
		case OPT_COMPARE: rq.compare = true; planning_only = "--compare"; break;
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
			mopts.context = po->context = (int)v;
			break;
		case OPT_EXPLAIN: rq.explain = true; planning_only = "--explain"; break;
		case OPT_LINKS: rq.links = optarg; planning_only = "--links"; break;
		case OPT_MEMORY:
		case OPT_NODES:
			if ((c == OPT_NODES ? n_nodes : n_caps) == MAX_LIST)
				return nesa_usage_error(&tool, "more than %d --nodes or --memory options", MAX_LIST);
			if (c == OPT_NODES)
				nodes[n_nodes++] = optarg;
			else
				caps[n_caps++] = optarg;
			if (c == OPT_MEMORY)
				planning_only = "--memory";
			break;
		case OPT_MICROBATCHES:
			if (!nesa_cli_parse_i64(&tool, "--microbatches", optarg, 1, 1 << 20, &v))
				return nesa_exit_code(NESA_EUSAGE);
			po->microbatches = (int)v;
			mb_set = 1;
			planning_only = "--microbatches";
			break;
		case OPT_OBJECTIVE:
			if (nesa_objective_from_name(optarg, &po->objective, &err) != NESA_OK)
				return nesa_usage_error(&tool, "%s", err.msg);
			obj_set = 1;
			planning_only = "--objective";
			break;
		case OPT_RESERVE:
			if (!nesa_cli_parse_size(&tool, "--reserve", optarg, &size))
				return nesa_exit_code(NESA_EUSAGE);
			po->reserve = (double)size;
			planning_only = "--reserve";
			break;
		case OPT_SESSIONS:
			if (!nesa_cli_parse_i64(&tool, "--sessions", optarg, 1, 1 << 20, &v))
				return nesa_exit_code(NESA_EUSAGE);
			po->sessions = (int)v;
			planning_only = "--sessions";
			break;
		case OPT_SPLIT: split = optarg; break;
		case OPT_STAGES:
			if (!nesa_cli_parse_i64(&tool, "--stages", optarg, 1, 100000, &v))
				return nesa_exit_code(NESA_EUSAGE);
			n_stages = (int)v;
			break;
		case OPT_TOKENIZER: mopts.tokenizer = optarg; break;
		case OPT_TOPOLOGY:
			if (strcmp(optarg, "relay") != 0 && strcmp(optarg, "chain") != 0)
				return nesa_usage_error(&tool, "invalid value '%s' for --topology: expected relay or chain", optarg);
			po->relay = strcmp(optarg, "relay") == 0;
			planning_only = "--topology";
			break;
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
	if (n_nodes > 0 && (split != NULL || n_stages > 0))
		return nesa_usage_error(&tool, "--nodes plans the cuts: drop --split and --stages");
	if (n_nodes == 0 && planning_only != NULL)
		return nesa_usage_error(&tool, "%s needs --nodes", planning_only);
	if (split != NULL && nesa_plan_parse_cuts(split, cuts, MAX_CUTS, &n_cuts, &err) != NESA_OK)
		return nesa_usage_error(&tool, "%s", err.msg);
	if (split == NULL && n_stages == 0)
		n_stages = 2;
	/* --microbatches alone asks for the pipeline objective. */
	if (mb_set && !obj_set)
		po->objective = NESA_OBJ_PIPELINE;
	nesa_cli_apply(&opts);
	nesa_xio_install_cleanup();
	wopts.force = opts.force;
	dir = opts.output != NULL ? opts.output : ".";
	if (nesa_is_stdio(dir) && !dry)
		return nesa_usage_error(&tool, "-o names a directory for the stage archives ('-o -' needs -n)");

	/* A model profile is enough to plan; a model is needed to write archives. */
	s = n_nodes > 0 ? nesa_profile_load(argv[optind], &mopts, po->context, &m, &mp, &err)
	                : nesa_model_load(argv[optind], &mopts, &m, &err);
	if (s != NESA_OK)
		goto done;
	if (m != NULL && (m->first != 0 || m->count != m->n_blocks)) {
		s = nesa_err_set(&err, NESA_EINVAL,
		                 "'%s' holds blocks [%d, %d) of %d; partition the whole model", argv[optind], m->first,
		                 m->first + m->count, m->n_blocks);
		goto done;
	}
	if (n_nodes > 0) {
		rq.model = mp;
		rq.nodes = nodes;
		rq.n_nodes = n_nodes;
		rq.caps = caps;
		rq.n_caps = n_caps;
		rq.seed = opts.seed;
		s = nesa_planner_run(&rq, &plan, &text, &err);
	} else {
		s = split != NULL ? nesa_plan_cuts(&plan, m->n_blocks, cuts, n_cuts, &err)
		                  : nesa_plan_even(&plan, m->n_blocks, n_stages, &err);
		if (s == NESA_OK)
			s = nesa_plan_name_archives(&plan, &err);
		if (s == NESA_OK && (plan.model = nesa_strdup(m->name)) == NULL)
			s = nesa_err_set(&err, NESA_ENOMEM, "out of memory");
	}
	if (s != NESA_OK)
		goto done;
	if (m == NULL && !dry)
		nesa_log(NESA_LOG_WARN, "'%s' is a model profile: writing the plan only, no archives", argv[optind]);
	if (!nesa_is_stdio(dir) && mkdir(dir, 0777) != 0 && errno != EEXIST) {
		s = nesa_err_sys(&err, NESA_ECREATE, "cannot create directory '%s'", dir);
		goto done;
	}
	for (k = 0; k < plan.n_stages && m != NULL && !dry; k++) {
		snprintf(path, sizeof path, "%s/%s", dir, plan.stages[k].archive);
		s = nesa_model_write_shard(m, plan.stages[k].first, plan.stages[k].count, path, &wopts, &err);
		if (s != NESA_OK)
			goto done;
		nesa_log(NESA_LOG_INFO, "%s: blocks [%d, %d)%s%s", path, plan.stages[k].first,
		         plan.stages[k].first + plan.stages[k].count, plan.stages[k].node != NULL ? " on " : "",
		         plan.stages[k].node != NULL ? plan.stages[k].node : "");
	}
	/* The plan last: it names archives that now exist. */
	if (nesa_is_stdio(dir))
		snprintf(path, sizeof path, "-");
	else
		snprintf(path, sizeof path, "%s/plan.json", dir);
	pj = nesa_plan_to_json(&plan);
	s = pj == NULL ? nesa_err_set(&err, NESA_ENOMEM, "out of memory")
	               : nesa_profile_write_json(path, pj, opts.force, &err);
	/* The table goes to stdout unless the plan does. */
	if (s == NESA_OK && text != NULL)
		fputs(text, nesa_is_stdio(dir) ? stderr : stdout);
done:
	nesa_free(text);
	json_decref(pj);
	json_decref(mp);
	nesa_plan_release(&plan);
	nesa_model_free(m);
	return nesa_exit(s, &err);
}
