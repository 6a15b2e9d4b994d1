/* SPDX-License-Identifier: MIT */
/*
 * nesa-run-shard: one pipeline stage.  Reads tensor-stream frames (or a
 * .npy file), runs the archive's blocks, writes frames (or a .npy file);
 * with --listen, serves the same protocol over TCP.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "nesa.h"
#include "serve.h"

static const struct nesa_tool tool = {
	.name = "nesa-run-shard",
	.purpose = "run one shard of a model as a tensor stream filter",
	.synopsis = "[-fqv] [-i input] [-o output] [-t threads] [--codec type] [--kv-limit size] [--kv-total size] [--name name] archive\n"
		"[-qv] [-t threads] [--codec type] [--kv-limit size] [--kv-total size] [--name name] [--timeout seconds] --listen address archive",
	.options =
		"      --codec=TYPE          encode outgoing activations as TYPE (default f32)\n"
		"      --kv-limit=SIZE       KV cache bytes a session may use (k, M, G suffixes)\n"
		"      --kv-total=SIZE       KV cache bytes all sessions together may use\n"
		"      --listen=ADDR         serve over TCP on HOST:PORT (or :PORT) instead of stdin/stdout\n"
		"      --name=NAME           stage name in messages and error frames\n"
		"      --timeout=SECONDS     drop a TCP connection stalled mid-frame (default 60)\n",
	.std_opts = "ioftvqhV",
};

enum {
	OPT_CODEC = NESA_CLI_LONGONLY_BASE,
	OPT_KV_LIMIT,
	OPT_KV_TOTAL,
	OPT_LISTEN,
	OPT_NAME,
	OPT_TIMEOUT,
};

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		NESA_CLI_LONGOPTS,
		{"codec", required_argument, NULL, OPT_CODEC},
		{"kv-limit", required_argument, NULL, OPT_KV_LIMIT},
		{"kv-total", required_argument, NULL, OPT_KV_TOTAL},
		{"listen", required_argument, NULL, OPT_LISTEN},
		{"name", required_argument, NULL, OPT_NAME},
		{"timeout", required_argument, NULL, OPT_TIMEOUT},
		{NULL, 0, NULL, 0},
	};
	struct nesa_cli_opts opts;
	struct nesa_stage_opts so = {.out_codec = NESA_F32, .timeout_ms = 60000};
	struct nesa_stage *st = NULL;
	struct nesa_stream *in = NULL, *out = NULL;
	struct nesa_err err;
	enum nesa_dtype codec;
	const char *listen_addr = NULL;
	bool logged = false;
	int c, code;
	int64_t v;
	enum nesa_status s;

	/* Program name and defaults first: every message below uses them. */
	nesa_cli_init(&opts, &tool, argc, argv);
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS, longopts, NULL)) != -1) {
		switch (c) {
		case OPT_CODEC:
			if (nesa_dtype_from_name(optarg, &codec, &err) != NESA_OK)
				return nesa_usage_error(&tool, "invalid value for --codec: %s", err.msg);
			so.out_codec = codec;
			break;
		case OPT_KV_LIMIT:
			if (!nesa_cli_parse_size(&tool, "--kv-limit", optarg, &so.exec.kv_limit))
				return nesa_exit_code(NESA_EUSAGE);
			break;
		case OPT_KV_TOTAL:
			if (!nesa_cli_parse_size(&tool, "--kv-total", optarg, &so.exec.kv_total_limit))
				return nesa_exit_code(NESA_EUSAGE);
			break;
		case OPT_LISTEN: listen_addr = optarg; break;
		case OPT_NAME: so.name = optarg; break;
		case OPT_TIMEOUT:
			if (!nesa_cli_parse_i64(&tool, "--timeout", optarg, 0, 86400, &v))
				return nesa_exit_code(NESA_EUSAGE);
			so.timeout_ms = (int)v * 1000;
			break;
		default:
			if (nesa_cli_std(&opts, c, optarg, &code) == NESA_CLI_EXIT)
				return code;
		}
	}
	/* Validate the combination before touching any file. */
	if (argc - optind != 1)
		return nesa_usage_error(&tool, argc - optind < 1 ? "a shard archive is required" : "too many operands");
	if (listen_addr != NULL && (opts.input != NULL || opts.output != NULL))
		return nesa_usage_error(&tool, "--listen serves TCP: -i and -o do not apply");
	nesa_cli_apply(&opts);
	nesa_xio_install_cleanup();

	s = nesa_stage_open(argv[optind], NULL, &so, &st, &err);
	if (s == NESA_OK && listen_addr != NULL) {
		s = nesa_stage_listen(st, listen_addr, &err);
		goto done;
	}
	if (s == NESA_OK)
		s = nesa_stream_open_path(opts.input != NULL ? opts.input : "-", NESA_STREAM_READ, 0, &in, &err);
	if (s == NESA_OK)
		s = nesa_stream_open_path(opts.output != NULL ? opts.output : "-", NESA_STREAM_WRITE,
		                          NESA_OUT_BINARY | (opts.force ? NESA_OUT_FORCE : 0), &out, &err);
	if (s == NESA_OK) {
		s = nesa_stage_serve(st, in, out, &logged, &err);
		/* The output is committed only when everything went through. */
		if (s == NESA_OK) {
			s = nesa_stream_close(out, &err);
			out = NULL;
		}
	}
done:
	/* Release in reverse order of creation. */
	nesa_stream_free(out);
	nesa_stream_free(in);
	nesa_stage_free(st);
	/* Refusals were logged as they happened, with the stage's name. */
	return nesa_exit(s, logged ? NULL : &err);
}
