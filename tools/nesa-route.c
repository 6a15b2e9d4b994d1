/* SPDX-License-Identifier: MIT */
/*
 * nesa-route: the client.  Loads a model (or, with stages, drives a chain
 * of them) and generates text, measures perplexity or classifies images.
 * Everything numeric lives in libcommon (eval.h); this file parses options
 * and prints results.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "eval.h"
#include "model.h"
#include "nesa.h"
#include "pipeline.h"
#include "plan.h"

static const struct nesa_tool tool = {
	.name = "nesa-route",
	.purpose = "generate text, measure perplexity or classify images with a model",
	.synopsis =
		"[-fqv] [-i prompt_file] [-l tokens] [-o output] [-P top_p] [-p prompt] [-s seed] [-T temperature] [-t threads] [--batch n] [--context n] [--format fmt] [--groups n] [--ignore-eos] [--prompt-tokens n] [--tokenizer file] stages\n"
		"[-fqv] [-o output] [-t threads] [--bytes n] [--context n] [--format fmt] [--window n] --perplexity text stages\n"
		"[-fqv] [-o output] [-t threads] [--format fmt] [--layout layout] [--limit n] [--weights file] --classify images labels stages",
	.options =
		"stages is one of:\n"
		"  -m, --model=MODEL         the model: a shard archive, GGUF, llama2.c checkpoint,\n"
		"                            Hugging Face directory or graph file; repeat it to\n"
		"                            chain the stage archives of a model in one process\n"
		"      --plan=FILE           run the stages of a plan from nesa-partition\n"
		"      --stage=SPEC          a stage process: an archive, tcp://HOST:PORT or a\n"
		"                            command such as 'ssh -T host nesa-run-shard s1.nsa';\n"
		"                            repeat it for each stage, in order (with stages, -m\n"
		"                            only supplies the tokenizer)\n"
		"      --timeout=SECONDS     a stage silent this long with work pending failed (120)\n"
		"      --topology=NAME       relay (default: every hop through this client) or\n"
		"                            chain (stage processes piped to each other); a\n"
		"                            plan's planned topology is the default for it\n"
		"      --retries=N           restart failed stages N times, replaying sessions (0)\n"
		"      --codec=TYPE          activations between local stages as TYPE (default f32)\n"
		"      --groups=N            session groups kept in flight through the stages\n"
		"  -p, --prompt=TEXT         text to continue (default: empty)\n"
		"  -l, --tokens=N            new tokens to generate (default 256)\n"
		"  -T, --temperature=T       sampling temperature; 0 is greedy (default 0)\n"
		"  -P, --top-p=P             nucleus sampling threshold (default 1)\n"
		"      --batch=N             generate N independent samples together\n"
		"      --context=N           context length to use instead of the model's\n"
		"      --ignore-eos          do not stop at an end-of-text token\n"
		"      --prompt-tokens=N     a prompt of N arbitrary tokens instead of text (benchmarks)\n"
		"      --tokenizer=FILE      tokenizer of a llama2.c checkpoint\n"
		"      --perplexity=TEXT     perplexity of a UTF-8 text file\n"
		"      --window=N            perplexity window in tokens (default: context, <= 512)\n"
		"      --bytes=N             score only the first N bytes of the text\n"
		"      --classify            top-1 accuracy on IMAGES and LABELS operands\n"
		"      --layout=nchw|nhwc    pixel order of raw and .npy images (default nchw)\n"
		"      --limit=N             classify only the first N images\n"
		"      --weights=FILE        safetensors weights of a graph file (default: as it names)\n"
		"      --format=text|json    result format (json: text, token ids and logit margins\n"
		"                            of each sample when generating)\n",
	.std_opts = "iofstvqhV",
};

enum {
	OPT_BATCH = NESA_CLI_LONGONLY_BASE,
	OPT_BYTES,
	OPT_CLASSIFY,
	OPT_CODEC,
	OPT_CONTEXT,
	OPT_FORMAT,
	OPT_GROUPS,
	OPT_IGNORE_EOS,
	OPT_LAYOUT,
	OPT_LIMIT,
	OPT_PERPLEXITY,
	OPT_PLAN,
	OPT_PROMPT_TOKENS,
	OPT_RETRIES,
	OPT_STAGE,
	OPT_TIMEOUT,
	OPT_TOPOLOGY,
	OPT_TOKENIZER,
	OPT_WEIGHTS,
	OPT_WINDOW,
};

enum mode { MODE_GENERATE, MODE_PERPLEXITY, MODE_CLASSIFY };

struct emit_ctx {
	struct nesa_out *out;
	int batch;
	char **texts;  /* (batch) collected texts when batch > 1 */
	size_t *lens;
	struct nesa_err *err;
};

static enum nesa_status
emit(void *ctx, int index, const char *bytes, size_t n)
{
	struct emit_ctx *c = ctx;
	char *t;

	if (c->batch == 1) {
		enum nesa_status s = nesa_out_write(c->out, bytes, n, c->err);

		if (s == NESA_OK && c->out->is_std)
			fflush(stdout); /* stream tokens as they come */
		return s;
	}
	t = nesa_realloc(c->texts[index], c->lens[index] + n + 1);
	if (t == NULL)
		return nesa_err_set(c->err, NESA_ENOMEM, "out of memory");
	memcpy(t + c->lens[index], bytes, n);
	c->lens[index] += n;
	c->texts[index] = t;
	return NESA_OK;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		NESA_CLI_LONGOPTS,
		{"model", required_argument, NULL, 'm'},
		{"prompt", required_argument, NULL, 'p'},
		{"tokens", required_argument, NULL, 'l'},
		{"temperature", required_argument, NULL, 'T'},
		{"top-p", required_argument, NULL, 'P'},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"bytes", required_argument, NULL, OPT_BYTES},
		{"classify", no_argument, NULL, OPT_CLASSIFY},
		{"codec", required_argument, NULL, OPT_CODEC},
		{"context", required_argument, NULL, OPT_CONTEXT},
		{"format", required_argument, NULL, OPT_FORMAT},
		{"groups", required_argument, NULL, OPT_GROUPS},
		{"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
		{"layout", required_argument, NULL, OPT_LAYOUT},
		{"limit", required_argument, NULL, OPT_LIMIT},
		{"perplexity", required_argument, NULL, OPT_PERPLEXITY},
		{"plan", required_argument, NULL, OPT_PLAN},
		{"prompt-tokens", required_argument, NULL, OPT_PROMPT_TOKENS},
		{"retries", required_argument, NULL, OPT_RETRIES},
		{"stage", required_argument, NULL, OPT_STAGE},
		{"timeout", required_argument, NULL, OPT_TIMEOUT},
		{"topology", required_argument, NULL, OPT_TOPOLOGY},
		{"tokenizer", required_argument, NULL, OPT_TOKENIZER},
		{"weights", required_argument, NULL, OPT_WEIGHTS},
		{"window", required_argument, NULL, OPT_WINDOW},
		{NULL, 0, NULL, 0},
	};
	struct nesa_cli_opts opts;
	struct nesa_gen_opts gen = {.n_tokens = 256, .top_p = 1.0f, .n_sessions = 1};
	struct nesa_ppl_opts ppl = {0};
	struct nesa_model_opts mopts = {0};
	struct nesa_model *models[64], *model = NULL;
	int n_models = 0;
	struct nesa_chain *chain = NULL;
	struct nesa_out out;
	struct nesa_err err;
	enum mode mode = MODE_GENERATE;
	enum nesa_layout layout = NESA_LAYOUT_NCHW;
	const char *model_paths[64], *model_path = NULL, *ppl_path = NULL, *prompt_buf = NULL;
	const char *stages[256], *plan_path = NULL;
	char *plan_specs[256];
	struct nesa_pipe_opts popts = {0};
	struct nesa_plan plan;
	int n_stages = 0, n_plan = 0;
	char *file_prompt = NULL, *plan_archive = NULL;
	int json = 0, c, code, i;
	const char *topology = NULL;
	int64_t v, limit = 0;
	double d;
	enum nesa_status s;

	/* Program name and defaults first: every message below uses them. */
	nesa_cli_init(&opts, &tool, argc, argv);
	nesa_err_clear(&err);
	nesa_out_init(&out);
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS "m:p:l:T:P:", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (n_models == 64)
				return nesa_usage_error(&tool, "at most 64 models (-m)");
			model_paths[n_models++] = model_path = optarg;
			break;
		case 'p': prompt_buf = optarg; break;
		case 'l':
			if (!nesa_cli_parse_i64(&tool, "-l", optarg, 0, 1 << 30, &v))
				return nesa_exit_code(NESA_EUSAGE);
			gen.n_tokens = (int)v;
			break;
		case 'T':
			if (!nesa_cli_parse_double(&tool, "-T", optarg, 0, 100, &d))
				return nesa_exit_code(NESA_EUSAGE);
			gen.temperature = (float)d;
			break;
		case 'P':
			if (!nesa_cli_parse_double(&tool, "-P", optarg, 1e-6, 1, &d))
				return nesa_exit_code(NESA_EUSAGE);
			gen.top_p = (float)d;
			break;
		case OPT_BATCH:
			if (!nesa_cli_parse_i64(&tool, "--batch", optarg, 1, 4096, &v))
				return nesa_exit_code(NESA_EUSAGE);
			gen.n_sessions = (int)v;
			break;
		case OPT_BYTES:
			if (!nesa_cli_parse_i64(&tool, "--bytes", optarg, 1, INT64_MAX, &ppl.max_bytes))
				return nesa_exit_code(NESA_EUSAGE);
			break;
		case OPT_CLASSIFY: mode = MODE_CLASSIFY; break;
		case OPT_CODEC: popts.codec = optarg; break;
		case OPT_GROUPS:
			if (!nesa_cli_parse_i64(&tool, "--groups", optarg, 1, 4096, &v))
				return nesa_exit_code(NESA_EUSAGE);
			gen.groups = (int)v;
			break;
		case OPT_PLAN: plan_path = optarg; break;
		case OPT_RETRIES:
			if (!nesa_cli_parse_i64(&tool, "--retries", optarg, 0, 1000, &v))
				return nesa_exit_code(NESA_EUSAGE);
			gen.retries = ppl.retries = (int)v;
			break;
		case OPT_PROMPT_TOKENS:
			if (!nesa_cli_parse_i64(&tool, "--prompt-tokens", optarg, 1, 1 << 24, &v))
				return nesa_exit_code(NESA_EUSAGE);
			gen.prompt_tokens = (int)v;
			break;
		case OPT_STAGE:
			if (n_stages == 256)
				return nesa_usage_error(&tool, "at most 256 stages");
			stages[n_stages++] = optarg;
			break;
		case OPT_TOPOLOGY:
			if (strcmp(optarg, "relay") != 0 && strcmp(optarg, "chain") != 0)
				return nesa_usage_error(&tool, "invalid value '%s' for --topology: expected relay or chain", optarg);
			topology = optarg;
			break;
		case OPT_TIMEOUT:
			if (!nesa_cli_parse_i64(&tool, "--timeout", optarg, 1, 86400, &v))
				return nesa_exit_code(NESA_EUSAGE);
			popts.timeout_ms = (int)v * 1000;
			break;
		case OPT_CONTEXT:
			if (!nesa_cli_parse_i64(&tool, "--context", optarg, 1, 1 << 24, &v))
				return nesa_exit_code(NESA_EUSAGE);
			mopts.context = (int)v;
			break;
		case OPT_FORMAT:
			if (strcmp(optarg, "json") != 0 && strcmp(optarg, "text") != 0)
				return nesa_usage_error(&tool, "invalid value '%s' for --format: expected text or json", optarg);
			json = strcmp(optarg, "json") == 0;
			break;
		case OPT_IGNORE_EOS: gen.ignore_eos = true; break;
		case OPT_LAYOUT:
			if (strcmp(optarg, "nchw") != 0 && strcmp(optarg, "nhwc") != 0)
				return nesa_usage_error(&tool, "invalid value '%s' for --layout: expected nchw or nhwc", optarg);
			layout = strcmp(optarg, "nhwc") == 0 ? NESA_LAYOUT_NHWC : NESA_LAYOUT_NCHW;
			break;
		case OPT_LIMIT:
			if (!nesa_cli_parse_i64(&tool, "--limit", optarg, 1, INT64_MAX, &limit))
				return nesa_exit_code(NESA_EUSAGE);
			break;
		case OPT_PERPLEXITY: mode = MODE_PERPLEXITY; ppl_path = optarg; break;
		case OPT_TOKENIZER: mopts.tokenizer = optarg; break;
		case OPT_WEIGHTS: mopts.weights = optarg; break;
		case OPT_WINDOW:
			if (!nesa_cli_parse_i64(&tool, "--window", optarg, 2, 1 << 24, &v))
				return nesa_exit_code(NESA_EUSAGE);
			ppl.window = (int)v;
			break;
		default:
			if (nesa_cli_std(&opts, c, optarg, &code) == NESA_CLI_EXIT)
				return code;
		}
	}
	/* Validate the combination before touching any file. */
	if (plan_path != NULL && n_stages > 0)
		return nesa_usage_error(&tool, "give --plan or --stage, not both");
	if (model_path == NULL && plan_path == NULL && n_stages == 0)
		return nesa_usage_error(&tool, "a model is required (-m MODEL, --plan FILE or --stage SPEC)");
	if ((plan_path != NULL || n_stages > 0) && n_models > 1)
		return nesa_usage_error(&tool, "with stages, -m names one model or archive for the tokenizer");
	if (mode == MODE_CLASSIFY && argc - optind != 2)
		return nesa_usage_error(&tool, "--classify needs two operands: IMAGES LABELS");
	if (mode != MODE_CLASSIFY && argc - optind != 0)
		return nesa_usage_error(&tool, "unexpected operand '%s'", argv[optind]);
	if (prompt_buf != NULL && opts.input != NULL)
		return nesa_usage_error(&tool, "give the prompt with -p or -i, not both");
	nesa_cli_apply(&opts);
	nesa_xio_install_cleanup();
	nesa_plan_init(&plan);
	popts.threads = opts.threads;
	gen.seed = opts.seed;
	gen.session_base = 1;

	if (opts.input != NULL) {
		size_t len;

		s = nesa_read_file(opts.input, 1 << 24, &file_prompt, &len, &err);
		if (s != NESA_OK)
			goto done;
		prompt_buf = file_prompt;
	}
	gen.prompt = prompt_buf;
	if (plan_path != NULL) {
		s = nesa_plan_load(plan_path, &plan, &err);
		if (s == NESA_OK && plan.n_stages > 256)
			s = nesa_err_set(&err, NESA_EUNSUPPORTED, "plan '%s' has %d stages; nesa-route runs at most 256",
			                 plan_path, plan.n_stages);
		for (i = 0; s == NESA_OK && i < plan.n_stages; i++) {
			char *archive = NULL;
			struct stat sb;

			s = nesa_plan_stage_spec(&plan, i, plan_path, &plan_specs[n_plan], &archive, &err);
			if (s != NESA_OK)
				break;
			stages[n_stages++] = plan_specs[n_plan++];
			/* The tokenizer from the plan's first archive here, even one a command runs elsewhere. */
			if (plan_archive == NULL && archive != NULL && stat(archive, &sb) == 0 && S_ISREG(sb.st_mode))
				plan_archive = archive;
			else
				nesa_free(archive);
		}
		if (s != NESA_OK)
			goto done;
		if (model_path == NULL)
			model_path = plan_archive;
		if (topology == NULL)
			topology = json_string_value(json_object_get(json_object_get(plan.extra, "planner"), "topology"));
	}
	popts.chain = topology != NULL && strcmp(topology, "chain") == 0;
	if (n_stages > 0) {
		struct stat sb;

		/* The tokenizer: -m, else the first stage that is a local archive. */
		for (i = 0; model_path == NULL && i < n_stages; i++)
			if (stat(stages[i], &sb) == 0 && S_ISREG(sb.st_mode))
				model_path = stages[i];
		if (gen.groups == 0)
			gen.groups = n_stages;
		s = nesa_chain_pipeline(stages, n_stages, &popts, &chain, &err);
		/* With stages, -m (or the first local archive) only gives the tokenizer. */
		n_models = 0;
		if (s == NESA_OK && model_path != NULL && (s = nesa_model_load(model_path, &mopts, &models[0], &err)) == NESA_OK)
			n_models = 1;
		model = n_models > 0 ? models[0] : NULL;
		if (s != NESA_OK)
			goto done;
	} else {
		/* One model, or the stage archives of one model in order. */
		for (i = 0; i < n_models; i++) {
			s = nesa_model_load(model_paths[i], &mopts, &models[i], &err);
			if (s != NESA_OK) {
				n_models = i;
				goto done;
			}
		}
		model = models[0];
		s = nesa_chain_local(models, n_models, NULL, &chain, &err);
	}
	if (s == NESA_OK)
		s = nesa_out_open(&out, opts.output != NULL ? opts.output : "-", opts.force ? NESA_OUT_FORCE : 0, &err);
	if (s != NESA_OK)
		goto done;
	if (mode != MODE_CLASSIFY && (model == NULL || model->tok == NULL)) {
		s = model == NULL ? nesa_err_set(&err, NESA_EINVAL, "no tokenizer: give -m with a model or archive that has one")
		                  : nesa_err_set(&err, NESA_EINVAL, "'%s' has no tokenizer (give --tokenizer FILE)", model_path);
		goto done;
	}
	if (mode == MODE_GENERATE && json) {
		struct nesa_gen_stats st;
		struct nesa_gen_record rec;
		json_t *j = NULL;

		if ((s = nesa_gen_record_init(&rec, gen.n_sessions, &err)) != NESA_OK)
			goto done;
		gen.on_token = nesa_gen_record_token;
		gen.token_ctx = &rec;
		s = nesa_generate(chain, model->tok, &gen, nesa_gen_record_text, &rec, &st, &err);
		if (s == NESA_OK && (j = nesa_gen_record_json(&rec, model->name, &st)) == NULL)
			s = nesa_err_set(&err, NESA_ENOMEM, "out of memory");
		if (s == NESA_OK)
			s = nesa_out_write_json(&out, j, JSON_COMPACT | JSON_REAL_PRECISION(6), &err);
		json_decref(j);
		nesa_gen_record_release(&rec);
	} else if (mode == MODE_GENERATE) {
		struct nesa_gen_stats st;
		struct emit_ctx ec = {&out, gen.n_sessions, NULL, NULL, &err};

		ec.texts = nesa_calloc((size_t)gen.n_sessions, sizeof *ec.texts);
		ec.lens = nesa_calloc((size_t)gen.n_sessions, sizeof *ec.lens);
		if (ec.texts == NULL || ec.lens == NULL)
			s = nesa_err_set(&err, NESA_ENOMEM, "out of memory");
		else
			s = nesa_generate(chain, model->tok, &gen, emit, &ec, &st, &err);
		for (i = 0; i < gen.n_sessions && ec.texts != NULL; i++) {
			if (s == NESA_OK && gen.n_sessions > 1)
				s = nesa_out_write(&out, ec.texts[i], ec.lens[i], &err);
			if (s == NESA_OK && (gen.n_sessions > 1 || st.generated > 0))
				s = nesa_out_write(&out, "\n", 1, &err);
			nesa_free(ec.texts[i]);
		}
		nesa_free(ec.texts);
		nesa_free(ec.lens);
		if (s == NESA_OK && chain->ops->report != NULL && nesa_log_enabled(NESA_LOG_INFO))
			chain->ops->report(chain->impl);
		if (s == NESA_OK) {
			struct rusage ru;

			getrusage(RUSAGE_SELF, &ru);
			nesa_log(NESA_LOG_INFO, "%lld prompt tokens x %d, %lld generated: prefill %.1f tokens/s, decode %.1f tokens/s, peak RSS %.1f MB",
			         (long long)st.prompt_tokens, gen.n_sessions, (long long)st.generated,
			         st.prefill_s > 0 ? (double)st.prompt_tokens * gen.n_sessions / st.prefill_s : 0.0,
			         st.decode_s > 0 ? (double)st.generated / st.decode_s : 0.0,
			         (double)ru.ru_maxrss / 1024.0);
		}
	} else if (mode == MODE_PERPLEXITY) {
		struct nesa_ppl_result r;
		char *text = NULL, line[512];
		size_t len;

		s = nesa_read_file(ppl_path, (size_t)1 << 31, &text, &len, &err);
		if (s == NESA_OK)
			s = nesa_perplexity(chain, model->tok, text, len, &ppl, &r, &err);
		nesa_free(text);
		if (s == NESA_OK) {
			if (json) {
				json_t *j = json_pack("{s:s, s:s?, s:I, s:I, s:I, s:f, s:f}", "mode", "perplexity",
				                      "model", model->name, "tokens", (json_int_t)r.tokens,
				                      "scored", (json_int_t)r.scored, "windows", (json_int_t)r.windows,
				                      "nll", r.nll, "ppl", r.ppl);

				s = j != NULL ? nesa_out_write_json(&out, j, JSON_REAL_PRECISION(7), &err)
				              : nesa_err_set(&err, NESA_ENOMEM, "out of memory");
				json_decref(j);
			} else {
				snprintf(line, sizeof line, "perplexity %.4f (mean NLL %.4f nats over %lld tokens in %lld windows)\n",
				         r.ppl, r.nll, (long long)r.scored, (long long)r.windows);
				s = nesa_out_write(&out, line, strlen(line), &err);
			}
		}
	} else {
		struct nesa_dataset ds;
		struct nesa_cls_result r;
		char line[512];

		s = nesa_dataset_load(argv[optind], argv[optind + 1], chain->in_shape, layout, limit, &ds, &err);
		if (s == NESA_OK && chain->in_ndim != 3)
			s = nesa_err_set(&err, NESA_EINVAL, "'%s' does not take images", model_path);
		if (s == NESA_OK)
			s = nesa_classify(chain, &ds, 0, gen.retries, &r, &err);
		nesa_dataset_release(&ds);
		if (s == NESA_OK) {
			if (json) {
				json_t *j = json_pack("{s:s, s:s?, s:I, s:I, s:f}", "mode", "classify",
				                      "model", model != NULL ? model->name : NULL, "images", (json_int_t)r.n,
				                      "correct", (json_int_t)r.correct,
				                      "accuracy", 100.0 * (double)r.correct / (double)r.n);

				s = j != NULL ? nesa_out_write_json(&out, j, JSON_REAL_PRECISION(7), &err)
				              : nesa_err_set(&err, NESA_ENOMEM, "out of memory");
				json_decref(j);
			} else {
				snprintf(line, sizeof line, "top-1 accuracy %.2f%% (%lld of %lld)\n",
				         100.0 * (double)r.correct / (double)r.n, (long long)r.correct, (long long)r.n);
				s = nesa_out_write(&out, line, strlen(line), &err);
			}
		}
	}
done:
	if (s == NESA_OK)
		s = nesa_out_commit(&out, &err);
	else
		nesa_out_abort(&out);
	/* Release in reverse order of creation. */
	nesa_chain_free(chain);
	for (i = 0; i < n_models; i++)
		nesa_model_free(models[i]);
	for (i = 0; i < n_plan; i++)
		nesa_free(plan_specs[i]);
	nesa_free(plan_archive);
	nesa_plan_release(&plan);
	nesa_free(file_prompt);
	return nesa_exit(s, &err);
}
