/* SPDX-License-Identifier: MIT */
/*
 * A pipeline stage: one shard archive served as a tensor-stream filter.
 * Frames come in, the shard's blocks run over them, frames go out (the
 * protocol is in nesa-stream(5) and nesa-run-shard(1)).  Tensor frames
 * are gathered until one carries the "last of a group" flag and then run as
 * one batch, so the frames of many sessions share each matrix product.
 * Refused input (another model, the wrong block, the wrong shape) and
 * failures become error frames sent downstream, naming the stage, so the
 * client at the end of the pipe learns which stage failed and why.
 */
#ifndef NESA_SERVE_H
#define NESA_SERVE_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "exec.h"
#include "model.h"
#include "stream.h"

struct nesa_stage_opts {
	const char *name;          /* stage name in messages (default: the archive's file name) */
	int out_codec;             /* dtype id of outgoing activations (default NESA_F32) */
	struct nesa_exec_opts exec;/* KV cache limits */
	int timeout_ms;            /* TCP: drop a connection idle mid-frame this long; 0 = never */
};

struct nesa_stage;

/*
 * Loads a stage from a model file (normally a shard archive; any model
 * works and serves all its blocks).  NESA_EINVAL when the output codec
 * cannot encode the stage's output rows.
 */
enum nesa_status nesa_stage_open(const char *path, const struct nesa_model_opts *mopts,
                                 const struct nesa_stage_opts *opts, struct nesa_stage **out,
                                 struct nesa_err *err);
void nesa_stage_free(struct nesa_stage *st);

/* The stage's description, as sent in its hello answer (borrowed). */
const char *nesa_stage_hello(const struct nesa_stage *st);

/*
 * Serves one stream until end of stream: reads frames from in, writes
 * frames to out.  Returns NESA_OK after a clean end, the I/O error that
 * ended the stream (not logged), or the status of the first refusal or
 * failure, which was already logged and sent downstream as an error frame:
 * *logged (may be NULL) tells the two apart.
 */
enum nesa_status nesa_stage_serve(struct nesa_stage *st, struct nesa_stream *in,
                                  struct nesa_stream *out, bool *logged, struct nesa_err *err);

/*
 * Serves the same protocol over TCP on addr ("host:port", "[v6]:port" or
 * ":port"), one thread per connection, replies on the same connection.
 * Sessions of different connections are kept apart.  Runs until a signal
 * stops the process; returns only on a setup failure.
 */
enum nesa_status nesa_stage_listen(struct nesa_stage *st, const char *addr, struct nesa_err *err);

#endif
