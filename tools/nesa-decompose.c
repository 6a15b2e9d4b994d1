/* SPDX-License-Identifier: MIT */
/*
 * nesa-decompose: compresses a model's linear weights by mixed matrix
 * decomposition (LLM.int8() outliers, truncated and activation-aware SVD,
 * low-rank compensation of quantization errors) into a shard archive, with
 * a per-tensor error report.  Selection, calibration, the numerics and the
 * report live in libcommon (decompose.h); this file parses options.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decompose.h"
#include "model.h"
#include "nesa.h"
#include "quantize.h"
#include "shard.h"

static const struct nesa_tool tool = {
	.name = "nesa-decompose",
	.purpose = "compress model weights by mixed matrix decomposition",
	.synopsis =
		"[-fnqv] [-o output] [-r rule] [-s seed] [-T [pattern=]method] [-t threads] [--alpha a] [--calib file] [--compress method] [--factor-type type] [--format fmt] [--keep pattern] [--labels file] [--layout layout] [--limit n] [--outliers mode] [--report] [--threshold t] [--tokenizer file] [--weights file] model",
	.options =
		"  -T, --method=[PATTERN=]METHOD\n"
		"                            decompose linear weights with METHOD (default\n"
		"                            int8), or, with PATTERN=, the tensors whose names\n"
		"                            match it; METHOD: int8, svd, asvd, whiten, lorc,\n"
		"                            keep, with :KEY=VALUE items such as svd:rank=16,\n"
		"                            whiten:energy=0.9, lorc:nf4:bits=0.5, int8:threshold=4\n"
		"      --keep=PATTERN        leave tensors whose names match PATTERN as they are\n"
		"  -r, --rank=RULE           rank of low-rank forms without their own: N,\n"
		"                            ratio=R, energy=E, error=F or bits=B (default\n"
		"                            ratio=0.5 for svd, 8 for lorc)\n"
		"      --factor-type=TYPE    storage of low-rank factors (default f16)\n"
		"      --threshold=T         int8 outlier threshold on |activation| (default 6)\n"
		"      --outliers=MODE       int8 outlier columns from calib, runtime, both or\n"
		"                            none (default: both with --calib, else runtime)\n"
		"      --alpha=A             ASVD scaling exponent (default 0.5)\n"
		"      --calib=FILE          calibration data: text for a language model,\n"
		"                            images (with --labels) for a vision model\n"
		"      --labels=FILE         the calibration images' labels file\n"
		"      --layout=nchw|nhwc    pixel order of raw and .npy images (default nchw)\n"
		"      --limit=N             calibrate on N tokens (8192) or images (512)\n"
		"  -n, --dry-run             decompose and report, but write no archive\n"
		"      --report              per-tensor sizes and errors on standard output\n"
		"      --format=text|json    report format (default text)\n"
		"      --compress=METHOD     archive compression: none (default), gzip, zstd, xz\n"
		"      --tokenizer=FILE      tokenizer of a llama2.c checkpoint\n"
		"      --weights=FILE        safetensors weights of a graph file\n",
	.std_opts = "ioftsvqhV",
};

enum {
	OPT_ALPHA = NESA_CLI_LONGONLY_BASE,
	OPT_CALIB,
	OPT_COMPRESS,
	OPT_FACTOR_TYPE,
	OPT_FORMAT,
	OPT_KEEP,
	OPT_LABELS,
	OPT_LAYOUT,
	OPT_LIMIT,
	OPT_OUTLIERS,
	OPT_REPORT,
	OPT_THRESHOLD,
	OPT_TOKENIZER,
	OPT_WEIGHTS,
};

#define MAX_RULES 256

/* Prints the report to standard output as text or JSON. */
static enum nesa_status
print_report(const struct nesa_decompose_report *rep, int json, struct nesa_err *err)
{
	json_t *j;
	char *text;

	if (!json) {
		text = nesa_decompose_report_text(rep);
		if (text == NULL)
			return nesa_err_set(err, NESA_ENOMEM, "out of memory");
		fputs(text, stdout);
		nesa_free(text);
		return NESA_OK;
	}
	j = nesa_decompose_report_json(rep);
	text = j != NULL ? json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) : NULL;
	json_decref(j);
	if (text == NULL)
		return nesa_err_set(err, NESA_ENOMEM, "out of memory");
	printf("%s\n", text);
	free(text);
	return NESA_OK;
}

/* A keyword option's value as an index into words, or a usage error. */
static int
keyword(const char *opt, const char *arg, const char *const *words, int n, int *out)
{
	int i;

	for (i = 0; i < n; i++)
		if (strcmp(arg, words[i]) == 0) {
			*out = i;
			return 1;
		}
	nesa_usage_error(&tool, "invalid value '%s' for %s", arg, opt);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		NESA_CLI_LONGOPTS,
		{"alpha", required_argument, NULL, OPT_ALPHA},
		{"calib", required_argument, NULL, OPT_CALIB},
		{"compress", required_argument, NULL, OPT_COMPRESS},
		{"dry-run", no_argument, NULL, 'n'},
		{"factor-type", required_argument, NULL, OPT_FACTOR_TYPE},
		{"format", required_argument, NULL, OPT_FORMAT},
		{"keep", required_argument, NULL, OPT_KEEP},
		{"labels", required_argument, NULL, OPT_LABELS},
		{"layout", required_argument, NULL, OPT_LAYOUT},
		{"limit", required_argument, NULL, OPT_LIMIT},
		{"method", required_argument, NULL, 'T'},
		{"outliers", required_argument, NULL, OPT_OUTLIERS},
		{"rank", required_argument, NULL, 'r'},
		{"report", no_argument, NULL, OPT_REPORT},
		{"threshold", required_argument, NULL, OPT_THRESHOLD},
		{"tokenizer", required_argument, NULL, OPT_TOKENIZER},
		{"weights", required_argument, NULL, OPT_WEIGHTS},
		{NULL, 0, NULL, 0},
	};
	static const char *const compress[] = {"none", "gzip", "zstd", "xz"};
	static const char *const outliers[] = {"calib", "runtime", "both", "none"};
	static const char *const layouts[] = {"nchw", "nhwc"};
	static const char *const formats[] = {"text", "json"};
	static struct nesa_decompose_rule rules[MAX_RULES];
	struct nesa_decompose_opts dopts;
	struct nesa_calib_opts copts = {0};
	struct nesa_decompose_report rep = {0};
	struct nesa_decomposed d = {0};
	struct nesa_cli_opts opts;
	struct nesa_model_opts mopts = {0};
	struct nesa_shard_write_opts wopts = {NESA_SHARD_NONE, false};
	struct nesa_model *m = NULL;
	struct nesa_decompose_spec spec;
	struct nesa_err err;
	const char *input, *pattern;
	int c, code, dry = 0, report = 0, json = 0, k;
	int64_t v;
	enum nesa_status s;

	/*
	 * Program name and defaults first: every later message uses them, and
	 * the options below override the defaults.
	 */
	nesa_cli_init(&opts, &tool, argc, argv);
	nesa_decompose_opts_init(&dopts);
	dopts.rules = rules;
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS "nr:T:", longopts, NULL)) != -1) {
		switch (c) {
		case 'n': dry = 1; break;
		case 'r':
			if (nesa_decompose_parse_rank(optarg, &dopts.rank, &err) != NESA_OK)
				return nesa_usage_error(&tool, "%s", err.msg);
			break;
		case 'T':
		case OPT_KEEP:
			/* Rules keep their order: the first that matches a name decides. */
			if (c == OPT_KEEP) {
				pattern = optarg;
				memset(&spec, 0, sizeof spec);
			} else if (nesa_decompose_parse_rule(optarg, &pattern, &spec, &err) != NESA_OK) {
				return nesa_usage_error(&tool, "%s", err.msg);
			}
			if (pattern == NULL) {
				dopts.def = spec;
				break;
			}
			if (dopts.n_rules == MAX_RULES)
				return nesa_usage_error(&tool, "too many --method and --keep rules (at most %d)", MAX_RULES);
			rules[dopts.n_rules].pattern = pattern;
			rules[dopts.n_rules++].spec = spec;
			break;
		case OPT_ALPHA:
			if (!nesa_cli_parse_double(&tool, "--alpha", optarg, 0, 4, &dopts.alpha))
				return nesa_exit_code(NESA_EUSAGE);
			break;
		case OPT_CALIB: copts.path = optarg; break;
		case OPT_COMPRESS:
			if (!keyword("--compress", optarg, compress, 4, &k))
				return nesa_exit_code(NESA_EUSAGE);
			wopts.compress = k == 0 ? NESA_SHARD_NONE : k == 1 ? NESA_SHARD_GZIP : k == 2 ? NESA_SHARD_ZSTD : NESA_SHARD_XZ;
			break;
		case OPT_FACTOR_TYPE:
			if (nesa_quantize_parse_type(optarg, &dopts.factor_dtype, &err) != NESA_OK ||
			    dopts.factor_dtype == NESA_QUANTIZE_KEEP)
				return nesa_usage_error(&tool, "invalid factor type '%s': expected f32, f16, bf16 or a quantized type", optarg);
			break;
		case OPT_FORMAT:
			if (!keyword("--format", optarg, formats, 2, &json))
				return nesa_exit_code(NESA_EUSAGE);
			break;
		case OPT_LABELS: copts.labels = optarg; break;
		case OPT_LAYOUT:
			if (!keyword("--layout", optarg, layouts, 2, &k))
				return nesa_exit_code(NESA_EUSAGE);
			copts.layout = k == 0 ? NESA_LAYOUT_NCHW : NESA_LAYOUT_NHWC;
			break;
		case OPT_LIMIT:
			if (!nesa_cli_parse_i64(&tool, "--limit", optarg, 1, INT64_C(1) << 40, &v))
				return nesa_exit_code(NESA_EUSAGE);
			copts.limit = v;
			break;
		case OPT_OUTLIERS:
			if (!keyword("--outliers", optarg, outliers, 4, &k))
				return nesa_exit_code(NESA_EUSAGE);
			dopts.outliers = (enum nesa_outliers)(k + 1);
			break;
		case OPT_REPORT: report = 1; break;
		case OPT_THRESHOLD:
			if (!nesa_cli_parse_double(&tool, "--threshold", optarg, 0, 1e30, &dopts.threshold))
				return nesa_exit_code(NESA_EUSAGE);
			break;
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
	if (input == NULL)
		return nesa_usage_error(&tool, "a model is required");
	if (dry && opts.output != NULL)
		return nesa_usage_error(&tool, "-n writes no archive: drop -o");
	if (!dry && opts.output == NULL)
		return nesa_usage_error(&tool, "must specify -o for the archive, or -n");
	if (report && opts.output != NULL && nesa_is_stdio(opts.output))
		return nesa_usage_error(&tool, "the archive and the report cannot both go to standard output");
	if (copts.path == NULL && (copts.labels != NULL || copts.limit > 0))
		return nesa_usage_error(&tool, "--labels and --limit describe calibration data: give --calib");
	/*
	 * Threads and log level before any work; the cleanup handler before
	 * any output exists, so a signal during the write leaves no temporary
	 * file behind.
	 */
	nesa_cli_apply(&opts);
	nesa_xio_install_cleanup();
	wopts.force = opts.force;
	copts.seed = opts.seed;
	dopts.calib = copts.path != NULL ? &copts : NULL;

	/* Load, decompose (calibration included), then write: each step needs the last. */
	s = nesa_model_load(input, &mopts, &m, &err);
	if (s == NESA_OK)
		s = nesa_decompose_model(m, &dopts, &d, &rep, &err);
	if (s == NESA_OK && !dry)
		s = nesa_decompose_write(m, &d, opts.output, &wopts, &err);
	if (s == NESA_OK)
		nesa_log(NESA_LOG_INFO, "%s: %llu -> %llu bytes of weights, decomposed in %.2f s",
		         dry ? input : opts.output, (unsigned long long)rep.bytes_before,
		         (unsigned long long)rep.bytes_after, rep.seconds);
	/* The report last, once the archive is safely written. */
	if (s == NESA_OK && report)
		s = print_report(&rep, json, &err);
	nesa_decompose_report_release(&rep);
	nesa_decomposed_release(&d);
	nesa_model_free(m);
	return nesa_exit(s, &err);
}
