/* SPDX-License-Identifier: MIT */
/*
 * nesa-quantize: quantizes a model's weights into a shard archive, with a
 * per-tensor error report, or re-encodes the tensors of a tensor stream
 * with a wire codec.  Selection, conversion and the report live in
 * libcommon (quantize.h); this file parses options.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "nesa.h"
#include "quantize.h"
#include "shard.h"
#include "stream.h"

static const struct nesa_tool tool = {
	.name = "nesa-quantize",
	.purpose = "quantize model weights and tensor streams",
	.synopsis =
		"[-fnqv] [-o output] [-T [pattern=]type] [-t threads] [--compress method] [--format fmt] [--keep pattern] [--report] [--tokenizer file] [--weights file] model\n"
		"[-fqv] [-i input] [-o output] [-t threads] [--codec codec] --stream [input]",
	.options =
		"  -T, --type=[PATTERN=]TYPE\n"
		"                            store linear weights as TYPE (default q8_0), or,\n"
		"                            with PATTERN=, the tensors whose names match it;\n"
		"                            TYPE: q8_0, q4_0, dyn8, dyn8_B, lin8, lin8_B (B = 64\n"
		"                            .. 4096), nf4, nf4dq, fp4, fp4dq, f16, bf16, f32, keep\n"
		"      --keep=PATTERN        leave tensors whose names match PATTERN as they are\n"
		"  -n, --dry-run             quantize and report, but write no archive\n"
		"      --report              per-tensor errors and sizes on standard output\n"
		"      --format=text|json    report format (default text)\n"
		"      --compress=METHOD     archive compression: none (default), gzip, zstd, xz\n"
		"      --tokenizer=FILE      tokenizer of a llama2.c checkpoint\n"
		"      --weights=FILE        safetensors weights of a graph file\n"
		"      --stream              re-encode the tensors of a tensor stream instead\n"
		"      --codec=CODEC         the stream's codec: f32, f16, bf16, q8_0, q8o, dyn8,\n"
		"                            dyn8_B, ... (default q8_0)\n",
	.std_opts = "ioftvqhV",
};

enum {
	OPT_CODEC = NESA_CLI_LONGONLY_BASE,
	OPT_COMPRESS,
	OPT_FORMAT,
	OPT_KEEP,
	OPT_REPORT,
	OPT_STREAM,
	OPT_TOKENIZER,
	OPT_WEIGHTS,
};

#define MAX_RULES 256

/* The stream form: frames from input to output, tensors re-encoded. */
static enum nesa_status
run_stream(const char *input, const char *output, unsigned out_flags, int codec, struct nesa_err *err)
{
	struct nesa_stream *in = NULL, *out = NULL;
	struct nesa_quantize_stream_stats st;
	enum nesa_status s;

	s = nesa_stream_open_path(input, NESA_STREAM_READ, 0, &in, err);
	if (s == NESA_OK)
		s = nesa_stream_open_path(output, NESA_STREAM_WRITE, out_flags, &out, err);
	if (s == NESA_OK)
		s = nesa_quantize_stream(in, out, codec, &st, err);
	if (s == NESA_OK) {
		/* Closing commits the output (end of stream frame, rename). */
		s = nesa_stream_close(out, err);
		out = NULL;
		nesa_log(NESA_LOG_INFO, "%llu frames, %llu re-encoded, payload %llu -> %llu bytes",
		         (unsigned long long)st.frames, (unsigned long long)st.recoded,
		         (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out);
	}
	nesa_stream_free(out);
	nesa_stream_close(in, NULL);
	return s;
}

/* Prints the report to standard output as text or JSON. */
static enum nesa_status
print_report(const struct nesa_quantize_report *rep, int json, struct nesa_err *err)
{
	char *text = NULL;
	json_t *j = NULL;

	if (json) {
		j = nesa_quantize_report_json(rep);
		text = j != NULL ? json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) : NULL;
		json_decref(j);
	} else {
		text = nesa_quantize_report_text(rep);
	}
	if (text == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	fputs(text, stdout);
	if (json)
		fputc('\n', stdout);
	if (json)
		free(text);
	else
		nesa_free(text);
	return NESA_OK;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		NESA_CLI_LONGOPTS,
		{"codec", required_argument, NULL, OPT_CODEC},
		{"compress", required_argument, NULL, OPT_COMPRESS},
		{"dry-run", no_argument, NULL, 'n'},
		{"format", required_argument, NULL, OPT_FORMAT},
		{"keep", required_argument, NULL, OPT_KEEP},
		{"report", no_argument, NULL, OPT_REPORT},
		{"stream", no_argument, NULL, OPT_STREAM},
		{"tokenizer", required_argument, NULL, OPT_TOKENIZER},
		{"type", required_argument, NULL, 'T'},
		{"weights", required_argument, NULL, OPT_WEIGHTS},
		{NULL, 0, NULL, 0},
	};
	static struct nesa_quantize_rule rules[MAX_RULES];
	struct nesa_quantize_opts qo = {NESA_Q8_0, rules, 0};
	struct nesa_quantize_report rep = {0};
	struct nesa_cli_opts opts;
	struct nesa_model_opts mopts = {0};
	struct nesa_shard_write_opts wopts = {NESA_SHARD_NONE, false};
	struct nesa_model *m = NULL;
	struct nesa_tset q;
	struct nesa_err err;
	const char *input;
	char *eq;
	int c, code, dry = 0, report = 0, json = 0, stream = 0, codec = NESA_Q8_0, type;
	enum nesa_status s;

	/* Program name and defaults first: every later message uses them. */
	nesa_cli_init(&opts, &tool, argc, argv);
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS "nT:", longopts, NULL)) != -1) {
		switch (c) {
		case 'n': dry = 1; break;
		case 'T':
		case OPT_KEEP:
			/* Rules keep their order: the first that matches a name decides. */
			eq = c == 'T' ? strrchr(optarg, '=') : NULL;
			if (nesa_quantize_parse_type(c == OPT_KEEP ? "keep" : eq != NULL ? eq + 1 : optarg, &type,
			                             &err) != NESA_OK)
				return nesa_usage_error(&tool, "%s", err.msg);
			if (c == 'T' && eq == NULL) {
				qo.dtype = type;
				break;
			}
			if (qo.n_rules == MAX_RULES)
				return nesa_usage_error(&tool, "too many --type and --keep rules (at most %d)", MAX_RULES);
			if (eq != NULL)
				*eq = '\0'; /* the pattern is what precedes '=' */
			rules[qo.n_rules].pattern = optarg;
			rules[qo.n_rules++].dtype = type;
			break;
		case OPT_CODEC:
			if (nesa_quantize_parse_type(optarg, &codec, &err) != NESA_OK || codec == NESA_QUANTIZE_KEEP)
				return nesa_usage_error(&tool, "invalid codec '%s': expected f32, f16, bf16 or a quantized type",
				                        optarg);
			break;
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
		case OPT_FORMAT:
			if (strcmp(optarg, "text") != 0 && strcmp(optarg, "json") != 0)
				return nesa_usage_error(&tool, "invalid value '%s' for --format: expected text or json", optarg);
			json = strcmp(optarg, "json") == 0;
			break;
		case OPT_REPORT: report = 1; break;
		case OPT_STREAM: stream = 1; break;
		case OPT_TOKENIZER: mopts.tokenizer = optarg; break;
		case OPT_WEIGHTS: mopts.weights = optarg; break;
		default:
			if (nesa_cli_std(&opts, c, optarg, &code) == NESA_CLI_EXIT)
				return code;
		}
	}
	/* Validate the combination before touching any file. */
	if (argc - optind > 1)
		return nesa_usage_error(&tool, "too many operands");
	if (argc - optind == 1 && opts.input != NULL)
		return nesa_usage_error(&tool, "give the input as -i or as an operand, not both");
	input = argc - optind == 1 ? argv[optind] : opts.input;
	nesa_cli_apply(&opts);
	nesa_xio_install_cleanup();
	wopts.force = opts.force;
	if (stream) {
		if (dry || report || qo.n_rules > 0)
			return nesa_usage_error(&tool, "--stream takes no -n, --report, --type or --keep; the codec is --codec");
		s = run_stream(input != NULL ? input : "-", opts.output != NULL ? opts.output : "-",
		               opts.force ? NESA_OUT_FORCE : 0, codec, &err);
		return nesa_exit(s, &err);
	}
	if (input == NULL)
		return nesa_usage_error(&tool, "a model is required");
	if (dry && opts.output != NULL)
		return nesa_usage_error(&tool, "-n writes no archive: drop -o");
	if (!dry && opts.output == NULL)
		return nesa_usage_error(&tool, "must specify -o for the archive, or -n");
	if (report && opts.output != NULL && nesa_is_stdio(opts.output))
		return nesa_usage_error(&tool, "the archive and the report cannot both go to standard output");

	nesa_tset_init(&q);
	s = nesa_model_load(input, &mopts, &m, &err);
	if (s == NESA_OK)
		s = nesa_quantize_model(m, &qo, &q, &rep, &err);
	if (s == NESA_OK && !dry)
		s = nesa_quantize_write(m, &q, qo.dtype, opts.output, &wopts, &err);
	if (s == NESA_OK)
		nesa_log(NESA_LOG_INFO, "%s: %llu -> %llu bytes of weights", dry ? input : opts.output,
		         (unsigned long long)rep.bytes_before, (unsigned long long)rep.bytes_after);
	/* The report last, once the archive is safely written. */
	if (s == NESA_OK && report)
		s = print_report(&rep, json, &err);
	nesa_quantize_report_release(&rep);
	nesa_tset_release(&q);
	nesa_model_free(m);
	return nesa_exit(s, &err);
}
