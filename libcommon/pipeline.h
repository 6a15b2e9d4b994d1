/* SPDX-License-Identifier: MIT */
/*
 * The client side of a distributed pipeline: a struct nesa_chain whose
 * stages are other processes, local or remote.
 *
 * Topology: by default the client talks to every stage and relays between
 * them.  A batch goes client -> stage 0 -> client -> stage 1 -> ... ->
 * client, so each hop between two stages costs two transfers through the
 * client (one in, one out) instead of one, in exchange for the client
 * seeing every stage's answer (per-stage times, errors that name the stage
 * at once) and the stages needing no address of each other.  With chain,
 * stage processes are piped to each other (client -> stage 0 -> stage 1
 * -> ... -> client): one transfer per hop, the client seeing only the
 * ends; a failure is traced to the stage whose process ended.  Several
 * batches may be in flight either way: while stage 1 works on one, stage
 * 0 works on the next.
 *
 * A stage is given as a spec: "tcp://host:port" (a nesa-run-shard --listen
 * server), the path of a shard archive (a local nesa-run-shard process is
 * started for it), or any shell command that speaks the tensor stream on
 * its standard input and output (e.g. "ssh -T host nesa-run-shard s1.nsa").
 */
#ifndef NESA_PIPELINE_H
#define NESA_PIPELINE_H

#include <stdbool.h>

#include "chain.h"

struct nesa_pipe_opts {
	int timeout_ms;         /* a stage silent this long with work outstanding has failed (0: 120 s) */
	const char *run_shard;  /* nesa-run-shard for archives (default: beside this program, else PATH) */
	int threads;            /* -t for local stages (0: their default) */
	const char *codec;      /* --codec for local stages (NULL: f32) */
	bool chain;             /* pipe the stages to each other instead of relaying */
};

/*
 * Starts or connects to n stages, exchanges a hello with each and checks
 * that they chain: one model, blocks continuing where the previous stage
 * ended from block 0 to the last, shapes matching.  On failure every
 * started process is stopped and reaped.
 */
enum nesa_status nesa_chain_pipeline(const char *const *specs, int n, const struct nesa_pipe_opts *o,
                                     struct nesa_chain **out, struct nesa_err *err);

#endif
