/* SPDX-License-Identifier: MIT */
/*
 * nesa-profile: measures a node, a model or a link for the planner, and
 * serves the echo peer that link measurements talk to.  Every profile is
 * JSON on standard output (or -o); the measuring lives in libcommon
 * (profile.h).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "nesa.h"
#include "net.h"
#include "profile.h"

static const struct nesa_tool tool = {
	.name = "nesa-profile",
	.purpose = "measure a node, a model or a link for planning",
	.synopsis =
		"[-fqv] [-o output] [-t threads] [--command command] [--name name] [--quick] [--node]\n"
		"[-fqv] [-o output] [-s seed] [-t threads] [--context n] [--measure] [--tokenizer file] [--weights file] --model model\n"
		"[-fqv] [-o output] [--quick] [--timeout seconds] --link target\n"
		"[-qv] [--listen address] [--timeout seconds] --echo",
	.options =
		"      --node                measure this machine (the default): CPU, memory,\n"
		"                            GEMM, memory bandwidth, GEMV and int8 rates\n"
		"      --model=MODEL         per block bytes, FLOPs, KV cache and cut sizes\n"
		"      --link=TARGET         round trip and bandwidth to an echo peer: a command\n"
		"                            such as 'ssh -T host nesa-profile --echo', or\n"
		"                            tcp://host:port\n"
		"      --echo                be the echo peer on standard input and output\n"
		"      --command=CMD         how to start a stage on this node, recorded in the\n"
		"                            profile ('{archive}' stands for the stage archive)\n"
		"      --context=N           positions for the decode FLOP figures (default: the\n"
		"                            model's context)\n"
		"      --listen=ADDR:PORT    serve echo over TCP (port 0: any; printed on stdout)\n"
		"      --measure             also time every block on this node\n"
		"      --name=NAME           node name (default: the host name)\n"
		"      --quick               fewer and smaller runs: under 2 s for a node\n"
		"      --timeout=SECONDS     give up on a silent peer (default 30)\n"
		"      --tokenizer=FILE      tokenizer of a llama2.c checkpoint\n"
		"      --weights=FILE        safetensors weights of a graph file\n",
	.std_opts = "ofstvqhV",
};

enum {
	OPT_COMMAND = NESA_CLI_LONGONLY_BASE,
	OPT_CONTEXT,
	OPT_ECHO,
	OPT_LINK,
	OPT_LISTEN,
	OPT_MEASURE,
	OPT_MODEL,
	OPT_NAME,
	OPT_NODE,
	OPT_QUICK,
	OPT_TIMEOUT,
	OPT_TOKENIZER,
	OPT_WEIGHTS,
};

enum mode { MODE_NONE, MODE_NODE, MODE_MODEL, MODE_LINK, MODE_ECHO };

static const char *const mode_opt[] = {"", "--node", "--model", "--link", "--echo"};

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		NESA_CLI_LONGOPTS,
		{"command", required_argument, NULL, OPT_COMMAND},
		{"context", required_argument, NULL, OPT_CONTEXT},
		{"echo", no_argument, NULL, OPT_ECHO},
		{"link", required_argument, NULL, OPT_LINK},
		{"listen", required_argument, NULL, OPT_LISTEN},
		{"measure", no_argument, NULL, OPT_MEASURE},
		{"model", required_argument, NULL, OPT_MODEL},
		{"name", required_argument, NULL, OPT_NAME},
		{"node", no_argument, NULL, OPT_NODE},
		{"quick", no_argument, NULL, OPT_QUICK},
		{"timeout", required_argument, NULL, OPT_TIMEOUT},
		{"tokenizer", required_argument, NULL, OPT_TOKENIZER},
		{"weights", required_argument, NULL, OPT_WEIGHTS},
		{NULL, 0, NULL, 0},
	};
	struct nesa_cli_opts opts;
	struct nesa_node_opts node = {false, NULL, NULL};
	struct nesa_model_profile_opts mp = {0};
	struct nesa_model_opts mo = {0};
	struct nesa_link_opts lo = {false, 0};
	struct nesa_model *m = NULL;
	struct nesa_err err;
	enum mode mode = MODE_NONE, want;
	const char *target = NULL, *listen_addr = NULL, *model_only = NULL, *node_only = NULL;
	json_t *j = NULL;
	int c, code, fd = -1;
	int64_t v;
	enum nesa_status s = NESA_OK;

	/* Program name and defaults first: every later message uses them. */
	nesa_cli_init(&opts, &tool, argc, argv);
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS, longopts, NULL)) != -1) {
		want = MODE_NONE;
		switch (c) {
		case OPT_COMMAND: node.command = optarg; node_only = "--command"; break;
		case OPT_CONTEXT:
			if (!nesa_cli_parse_i64(&tool, "--context", optarg, 1, 1 << 24, &v))
				return nesa_exit_code(NESA_EUSAGE);
			mp.context = (int)v;
			model_only = "--context";
			break;
		case OPT_ECHO: want = MODE_ECHO; break;
		case OPT_LINK: want = MODE_LINK; target = optarg; break;
		case OPT_LISTEN: listen_addr = optarg; break;
		case OPT_MEASURE: mp.measure = true; model_only = "--measure"; break;
		case OPT_MODEL: want = MODE_MODEL; target = optarg; break;
		case OPT_NAME: node.name = optarg; node_only = "--name"; break;
		case OPT_NODE: want = MODE_NODE; break;
		case OPT_QUICK: node.quick = lo.quick = true; break;
		case OPT_TIMEOUT:
			if (!nesa_cli_parse_double(&tool, "--timeout", optarg, 0.001, 86400, &lo.timeout_s))
				return nesa_exit_code(NESA_EUSAGE);
			break;
		case OPT_TOKENIZER: mo.tokenizer = optarg; model_only = "--tokenizer"; break;
		case OPT_WEIGHTS: mo.weights = optarg; model_only = "--weights"; break;
		default:
			if (nesa_cli_std(&opts, c, optarg, &code) == NESA_CLI_EXIT)
				return code;
		}
		/* One verb per run, as signify does. */
		if (want != MODE_NONE && mode != MODE_NONE && want != mode)
			return nesa_usage_error(&tool, "give only one of --node, --model, --link and --echo");
		if (want != MODE_NONE)
			mode = want;
	}
	/* Validate the combination before measuring anything. */
	if (mode == MODE_NONE)
		mode = MODE_NODE;
	if (optind < argc)
		return nesa_usage_error(&tool, "unexpected operand '%s'", argv[optind]);
	if (model_only != NULL && mode != MODE_MODEL)
		return nesa_usage_error(&tool, "%s needs --model", model_only);
	if (node_only != NULL && mode != MODE_NODE)
		return nesa_usage_error(&tool, "%s is for --node, not %s", node_only, mode_opt[mode]);
	if (listen_addr != NULL && mode != MODE_ECHO)
		return nesa_usage_error(&tool, "--listen needs --echo");
	if (opts.output != NULL && mode == MODE_ECHO)
		return nesa_usage_error(&tool, "--echo writes its frames to standard output; -o does not apply");
	nesa_cli_apply(&opts);
	nesa_xio_install_cleanup();
	mp.seed = opts.seed;

	switch (mode) {
	case MODE_ECHO:
		if (listen_addr == NULL) {
			s = nesa_profile_echo(STDIN_FILENO, STDOUT_FILENO, lo.timeout_s > 0 ? lo.timeout_s : 30, &err);
			break;
		}
		s = nesa_net_listen(listen_addr, &fd, &err);
		if (s != NESA_OK)
			break;
		/* The port goes out first and flushed: a script waits for it (port 0 picks one). */
		printf("%d\n", nesa_net_port(fd));
		fflush(stdout);
		nesa_log(NESA_LOG_INFO, "echo on port %d", nesa_net_port(fd));
		s = nesa_profile_echo_serve(fd, lo.timeout_s, &err);
		close(fd);
		break;
	case MODE_LINK:
		s = nesa_profile_link(target, &lo, &j, &err);
		break;
	case MODE_MODEL:
		s = nesa_model_load(target, &mo, &m, &err);
		if (s == NESA_OK)
			s = nesa_profile_model(m, &mp, &j, &err);
		break;
	default:
		s = nesa_profile_node(&node, &j, &err);
		break;
	}
	if (s == NESA_OK && j != NULL)
		s = nesa_profile_write_json(opts.output != NULL ? opts.output : "-", j, opts.force, &err);
	/* Release in reverse order of acquisition. */
	json_decref(j);
	nesa_model_free(m);
	return nesa_exit(s, &err);
}
