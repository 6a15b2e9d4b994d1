/* SPDX-License-Identifier: MIT */
/*
 * nesa-route: drive a chain of stages: generate text, evaluate, classify.
 *
 * Not implemented yet: the tool accepts the standard options and says so,
 * exiting with status 1, so that scripts written against it fail loudly.
 */
#include "config.h"

#include <getopt.h>
#include <stdlib.h>

#include "nesa.h"

static const struct nesa_tool tool = {
	.name = "nesa-route",
	.purpose = "drive a chain of stages: generate text, evaluate, classify",
	.synopsis = "[-fqv] [-i input] [-o output] [-s seed] [-t threads] [input]",
	.options = "",
	.std_opts = "iofstvqhV",
};

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {NESA_CLI_LONGOPTS, {NULL, 0, NULL, 0}};
	struct nesa_cli_opts opts;
	struct nesa_err err;
	int c, code;

	/* Program name and defaults first: every later message uses them. */
	nesa_cli_init(&opts, &tool, argc, argv);
	while ((c = getopt_long(argc, argv, NESA_CLI_SHORTOPTS, longopts, NULL)) != -1) {
		if (nesa_cli_std(&opts, c, optarg, &code) == NESA_CLI_EXIT)
			return code;
	}
	if (argc - optind > 1)
		return nesa_usage_error(&tool, "too many operands");
	nesa_cli_apply(&opts);
	nesa_err_set(&err, NESA_ENOTIMPL, "the pipeline client is not implemented yet in this version of nesa");
	return nesa_exit(err.status, &err);
}
