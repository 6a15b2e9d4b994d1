/* SPDX-License-Identifier: MIT */
/*
 * Profiles for the planner: what a node can do (measured rates, memory),
 * what a model costs (per block bytes, FLOPs, KV cache, activations at each
 * cut, optionally timed on this node) and what a link between two machines
 * costs (round-trip time and bandwidth through any command or a TCP
 * connection to a peer running the echo service).  Every profile is a JSON
 * object with stable keys, documented in nesa-profile(1).
 *
 * Echo framing (the link probe and its peer): a frame is an 8-byte header,
 * the magic "nech" and the payload length as a 32-bit little-endian
 * integer, then the payload.  The echo peer sends every frame back
 * unchanged and exits at end of input between frames.
 */
#ifndef NESA_PROFILE_H
#define NESA_PROFILE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "model.h"
#include "tensor.h"

#define NESA_PROFILE_VERSION 1
#define NESA_ECHO_MAGIC "nech"
#define NESA_ECHO_MAX (64u << 20) /* largest echo payload, bytes */

struct nesa_node_opts {
	bool quick;          /* a few repetitions of small runs: under 2 s */
	const char *name;    /* node name; NULL: the host name */
	const char *command; /* recorded as "command" (how to start a stage there), or NULL */
};

/*
 * Measures this machine: CPU, memory from /proc (and cgroup limits), f32
 * GEMM rate, STREAM-like triad bandwidth, f32 GEMV weight streaming rate
 * (the decode bound; the matrix is larger than the caches) and the q8_0
 * matrix-vector rate, each as median, minimum and maximum over the runs.
 * Threads: nesa_linalg_threads().  Shows progress on a terminal.
 */
enum nesa_status nesa_profile_node(const struct nesa_node_opts *o, json_t **out, struct nesa_err *err);

struct nesa_model_profile_opts {
	int context;        /* positions for the decode and prefill FLOP figures; 0: the model's */
	bool measure;       /* also time every block on this node */
	int prefill;        /* rows of the timed prefill (0: 32) */
	int steps;          /* timed single-row decode steps per repetition (0: 16) */
	int reps;           /* repetitions (0: 3) */
	uint64_t seed;      /* random token ids and inputs */
};

/*
 * Profiles blocks of a graph document against its weights (both borrowed):
 * per block the weight bytes as stored and as f16, q8_0 and q4_0 would
 * store them, weight bytes read per token, FLOPs per token for prefill and
 * decode, KV cache bytes per token, and the bytes crossing every cut.
 * With o->measure each block is also run and timed (prefill and decode).
 */
enum nesa_status nesa_profile_graph(json_t *doc, struct nesa_tset *ts, const char *name,
                                    const struct nesa_model_profile_opts *o, json_t **out,
                                    struct nesa_err *err);

/* nesa_profile_graph over a loaded model, with its name and source. */
enum nesa_status nesa_profile_model(struct nesa_model *m, const struct nesa_model_profile_opts *o,
                                    json_t **out, struct nesa_err *err);

/*
 * Opens what nesa-partition is given: a model profile (a JSON file with
 * "format": "nesa-model-profile"; *m is then NULL) or any model (loaded into
 * *m and profiled without timing).  *profile is a new reference.
 */
enum nesa_status nesa_profile_load(const char *path, const struct nesa_model_opts *mo, int context,
                                   struct nesa_model **m, json_t **profile, struct nesa_err *err);

struct nesa_link_opts {
	bool quick;         /* fewer and smaller probes */
	double timeout_s;   /* per read or write; 0: 30 s */
};

/*
 * Measures the link to an echo peer: target is "tcp://host:port" or a shell
 * command whose standard input and output reach one (e.g. "ssh -T host
 * nesa-profile --echo").  The command runs under /bin/sh with its stderr
 * shared; it is stopped and reaped on every path.  NESA_ETIMEOUT when the
 * peer stays silent, NESA_EREMOTE when it answers wrongly or goes away.
 */
enum nesa_status nesa_profile_link(const char *target, const struct nesa_link_opts *o, json_t **out,
                                   struct nesa_err *err);

/*
 * The echo peer: copies frames from in_fd back to out_fd until end of input
 * (NESA_OK) or a malformed frame (NESA_EFORMAT).  timeout_s > 0 drops a
 * peer silent that long in the middle of a frame (NESA_ETIMEOUT).
 */
enum nesa_status nesa_profile_echo(int in_fd, int out_fd, double timeout_s, struct nesa_err *err);

/*
 * Echo over TCP: serves connections on the listening socket fd one after
 * another, forever; a connection that fails is logged and dropped.
 * Returns only when accept itself fails.
 */
enum nesa_status nesa_profile_echo_serve(int fd, double timeout_s, struct nesa_err *err);

/* Writes j as indented JSON and a newline to path ('-' = stdout), atomically. */
enum nesa_status nesa_profile_write_json(const char *path, const json_t *j, bool force,
                                         struct nesa_err *err);

#endif
