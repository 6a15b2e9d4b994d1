/* SPDX-License-Identifier: MIT */
/*
 * The planner: which nodes, in which order, run which contiguous block
 * ranges of a model, chosen from measured node speeds, memory and links
 * (BSNS in the paper; nesa-partition(1) documents the cost model).
 *
 * A problem is a chain of blocks (per block: decode FLOPs, weight bytes read
 * per token, resident bytes, bytes crossing each cut) and a set of nodes
 * (FLOP rate, weight streaming rate, usable memory, fixed per-stage
 * overhead) joined by links (round-trip time and bandwidth between any two
 * endpoints, the client being one more endpoint).  A solution is a
 * sequence of stages, each a distinct node with a non-empty block range,
 * the ranges covering the blocks in order; nodes may be left out.
 *
 * Cost model, for a stage of blocks [i, j) on node n and a hop carrying the
 * activations at cut c from endpoint p to endpoint q:
 *   stage(n, i, j) = max(F[i,j) / flops_n, R[i,j) / bytes_n) + overhead_n
 *   hop latency    = rtt(p, q) / 2 + cut[c] / bw(p, q)
 *   hop occupancy  = cut[c] / bw(p, q)
 *   memory         = M[i,j) + reserve <= cap_n
 * Objectives: latency = sum of stage times and hop latencies (client to the
 * first stage and back included); throughput = the largest stage time or
 * hop occupancy (the bottleneck); pipeline(B) = latency + (B - 1) x
 * bottleneck, Alpa's time for B microbatches.
 *
 * Solvers: exact dynamic programming over subsets of nodes and cut points
 * (small node counts), the polynomial DP for a fixed node order (which may
 * still skip nodes), and a heuristic for hundreds to thousands of nodes
 * (ordering heuristics, the fixed-order DP, local search and a biased
 * random-key genetic algorithm whose decoder is that DP).  Baselines: the
 * even split, the memory-share split (exo, llama.cpp) and Petals' greedy
 * block selection with its min-latency route.
 */
#ifndef NESA_PLANNER_H
#define NESA_PLANNER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "plan.h"

enum nesa_objective {
	NESA_OBJ_LATENCY,    /* seconds per token of one stream */
	NESA_OBJ_THROUGHPUT, /* bottleneck seconds: 1 / tokens per second of a full pipeline */
	NESA_OBJ_PIPELINE,   /* latency + (B - 1) x bottleneck */
};

enum nesa_planner_algo {
	NESA_ALGO_AUTO,      /* exact when it fits its budget, heuristic otherwise */
	NESA_ALGO_EXACT,     /* DP over subsets of nodes */
	NESA_ALGO_ORDER,     /* DP over cuts for the nodes in the given order */
	NESA_ALGO_HEURISTIC, /* orders + DP + local search + BRKGA */
};

enum nesa_baseline {
	NESA_BASE_EVEN,      /* equal block counts over the nodes in the given order */
	NESA_BASE_MEMSHARE,  /* block counts proportional to memory (exo, llama.cpp) */
	NESA_BASE_PETALS,    /* Petals: greedy span placement, min-latency route */
};

/* One block as the planner sees it (all per generated token). */
struct nesa_pblock {
	double flops;       /* decode FLOPs at the planning position */
	double read_bytes;  /* weight bytes read */
	double mem_bytes;   /* resident: weights + KV cache (context x sessions) */
	double param_bytes; /* weights as stored */
	double kv_bytes;    /* KV cache at context x sessions */
	double f16_bytes, q8_0_bytes, q4_0_bytes; /* weights as f16 / q8_0 / q4_0 */
};

struct nesa_pnode {
	char *name;         /* unique */
	char *command;      /* how to start a stage there ("{archive}" replaced), or NULL */
	double flops_per_s; /* f32 GEMM rate */
	double bytes_per_s; /* weight streaming rate (GEMV) */
	double avail_bytes; /* memory the profile reports available */
	double cap_bytes;   /* usable for a stage: min(available, cap) - reserve */
	double overhead_s;  /* fixed per-stage time per token */
};

struct nesa_problem {
	char *model;
	int n_blocks;                /* L */
	struct nesa_pblock *blocks;  /* (L) */
	double *cut_bytes;           /* (L + 1) bytes per token crossing cut c (0: input, L: output) */
	int n_nodes;                 /* K */
	struct nesa_pnode *nodes;    /* (K) */
	/*
	 * Links between endpoints 0..K, K being the client: (K + 1) x (K + 1)
	 * row-major, from-endpoint major.  spb is seconds per byte (1 / bandwidth;
	 * 0 = free).
	 */
	double *rtt_s;
	double *spb;
	enum nesa_objective objective;
	int microbatches;            /* B >= 1, for NESA_OBJ_PIPELINE */
	int context, sessions;       /* what the memory and FLOP figures assume */
	double decode_pos;           /* position at which decode FLOPs are taken */
	double reserve;              /* bytes held back on every stage */
	char *client;                /* name of the client endpoint */
	bool relay;                  /* hops between stages go through the client */
};

struct nesa_pstage {
	int node;         /* index into problem nodes */
	int first, count; /* blocks [first, first + count) */
};

struct nesa_solution {
	int n_stages;
	struct nesa_pstage *stages; /* (n_stages), room for n_blocks */
	double value;               /* the objective, seconds; INFINITY if infeasible */
};

/* What a solution costs, stage by stage (from nesa_planner_evaluate). */
struct nesa_peval {
	double latency, bottleneck, pipeline, value; /* seconds */
	int bottleneck_stage;  /* stage whose time is the bottleneck, or -1 */
	int bottleneck_hop;    /* hop (into stage h; h = n_stages: back to the client), or -1 */
	bool memory_ok;        /* every stage within its node's cap */
};

/* Facts about a solve, for --explain and the plan file. */
struct nesa_planner_info {
	const char *algorithm;   /* "exact", "order", "heuristic" */
	double lower_bound;      /* seconds: no plan can do better */
	uint64_t evaluations;    /* DP runs */
	double seconds;          /* wall time of the solve */
};

/* ---- problems ---- */

void nesa_problem_init(struct nesa_problem *p);
void nesa_problem_release(struct nesa_problem *p);

/*
 * Allocates the arrays of a problem with n_blocks blocks and n_nodes nodes:
 * blocks and nodes zeroed, links free (0 s, 0 s/byte), objective latency,
 * one session, one microbatch.  For tests and benchmarks that build
 * problems directly.
 */
enum nesa_status nesa_problem_alloc(struct nesa_problem *p, int n_blocks, int n_nodes,
                                    struct nesa_err *err);

/* Sets every link (node to node and client to node) to rtt and bandwidth. */
void nesa_problem_uniform_links(struct nesa_problem *p, double rtt_s, double bytes_per_s);

struct nesa_problem_opts {
	int context;         /* tokens of KV cache per session; 0 = the model's */
	int sessions;        /* concurrent sessions (KV caches) per stage; 0 = 1 */
	double reserve;      /* bytes held back on every node */
	const char *client;  /* client endpoint name; NULL = "client" */
	enum nesa_objective objective;
	int microbatches;    /* 0 = 1 */
	double overhead_s;   /* per-stage overhead when a profile has none; < 0 = default */
	/*
	 * Hops between stages go through the client, as nesa-route relays
	 * them: a hop from a to b costs the link a -> client plus client -> b.
	 */
	bool relay;
};

/*
 * Builds a problem from a model profile (nesa-profile --model), an array of
 * node profiles (nesa-profile --node, or hand-written with the documented
 * keys) and an optional links description (NULL: one uniform default link).
 * Errors name the node or key at fault.
 */
enum nesa_status nesa_problem_from_json(const json_t *model, const json_t *nodes, const json_t *links,
                                        const struct nesa_problem_opts *o, struct nesa_problem *p,
                                        struct nesa_err *err);

/* Caps one node (name) or, with name NULL, every node at bytes of memory. */
enum nesa_status nesa_problem_cap(struct nesa_problem *p, const char *name, double bytes,
                                  struct nesa_err *err);

/*
 * Reads node profiles from files or directories (every *.json inside, in
 * name order) into one JSON array (new reference).  A file holds one
 * profile, an array of them, or {"nodes": [...]}.  A profile without a
 * "name" is named after its file.
 */
enum nesa_status nesa_planner_load_nodes(const char *const *paths, int n, json_t **out,
                                         struct nesa_err *err);

/*
 * Bytes crossing each cut of a sequence of units (blocks, or operations in
 * a topological order) that consume and produce named values: out[c] for
 * c = 0..n_units is the sum of the bytes of every value produced before
 * unit c (or a model input, produced "at -1") and consumed at or after it
 * (or a model output, consumed "at n_units").  Values: prod[v] is the
 * producing unit (-1 for inputs), last[v] the last consuming unit
 * (n_units for outputs), bytes[v] their size.
 */
void nesa_planner_live_bytes(int n_units, int n_values, const int *prod, const int *last,
                             const double *bytes, double *out);

/* ---- solving ---- */

void nesa_solution_init(struct nesa_solution *s);
void nesa_solution_release(struct nesa_solution *s);

/*
 * Solves p with the given algorithm; seed drives the heuristic's random
 * choices (same seed, same plan).  NESA_ELIMIT when no plan fits in memory
 * (the message says how much is missing where and which weight format
 * would fit), or when the exact solver is asked for more nodes than it can
 * take.  info may be NULL.
 */
enum nesa_status nesa_planner_solve(const struct nesa_problem *p, enum nesa_planner_algo algo,
                                    uint64_t seed, struct nesa_solution *out,
                                    struct nesa_planner_info *info, struct nesa_err *err);

/* States the exact solver would need for p; it refuses more than NESA_EXACT_MAX_STATES. */
double nesa_planner_exact_states(const struct nesa_problem *p);
#define NESA_EXACT_MAX_STATES 4194304.0

/*
 * The fixed-order DP alone: stages on a subsequence of order[0..n) (nodes
 * may be skipped, never reordered).  INFINITY value when nothing fits.
 */
enum nesa_status nesa_planner_order(const struct nesa_problem *p, const int *order, int n,
                                    struct nesa_solution *out, struct nesa_err *err);

/* The objective value of any solution of p (INFINITY if it breaks memory). */
double nesa_planner_value(const struct nesa_problem *p, const struct nesa_solution *s);

/*
 * Checks that s covers every block once, in order, with distinct nodes,
 * and fills ev (may be NULL).  NESA_EINVAL with a message for a malformed
 * solution; memory overflow is reported in ev->memory_ok, not as an error.
 */
enum nesa_status nesa_planner_evaluate(const struct nesa_problem *p, const struct nesa_solution *s,
                                       struct nesa_peval *ev, struct nesa_err *err);

/* Stage time, hop latency and hop occupancy in seconds (the cost model). */
double nesa_planner_stage_time(const struct nesa_problem *p, int node, int first, int count);
double nesa_planner_hop_latency(const struct nesa_problem *p, int from, int to, int cut);
double nesa_planner_hop_occupancy(const struct nesa_problem *p, int from, int to, int cut);

/* A bound no plan beats, for p's objective (seconds). */
double nesa_planner_lower_bound(const struct nesa_problem *p);

/*
 * A baseline's plan on the same inputs.  Its value is INFINITY when it
 * breaks memory (the even and memory-share splits do not look at memory
 * caps) or, for Petals, when the spans leave a block uncovered.
 */
enum nesa_status nesa_planner_baseline(const struct nesa_problem *p, enum nesa_baseline b,
                                       struct nesa_solution *out, struct nesa_err *err);
const char *nesa_baseline_name(enum nesa_baseline b);

/* ---- output ---- */

const char *nesa_objective_name(enum nesa_objective o);
enum nesa_status nesa_objective_from_name(const char *name, enum nesa_objective *o,
                                          struct nesa_err *err);
enum nesa_status nesa_planner_algo_from_name(const char *name, enum nesa_planner_algo *a,
                                             struct nesa_err *err);

/*
 * Fills plan (initialised by the caller) from s: stage ranges, archive
 * names, node names and commands ("{archive}" in a node's command replaced
 * by the stage archive's name), and a "planner" object with the objective,
 * the predictions per stage and, when compare is set, the baselines.
 */
enum nesa_status nesa_planner_to_plan(const struct nesa_problem *p, const struct nesa_solution *s,
                                      const struct nesa_planner_info *info, bool compare,
                                      struct nesa_plan *plan, struct nesa_err *err);

/*
 * The --explain table of s (and with compare, the baselines' table) as a
 * new string freed with nesa_free.
 */
enum nesa_status nesa_planner_explain(const struct nesa_problem *p, const struct nesa_solution *s,
                                      const struct nesa_planner_info *info, bool compare,
                                      char **text, struct nesa_err *err);

/* What nesa-partition asks of the planner. */
struct nesa_planner_request {
	const json_t *model;        /* a model profile */
	const char *const *nodes;   /* node profile files or directories */
	int n_nodes;
	const char *links;          /* links file (nesa-partition(1)), or NULL */
	struct nesa_problem_opts opts;
	const char *const *caps;    /* memory caps: "SIZE" (every node) or "NODE=SIZE" */
	int n_caps;
	enum nesa_planner_algo algo;
	uint64_t seed;
	bool compare, explain;
};

/*
 * Reads the profiles and links, applies the caps, solves, and fills plan
 * (initialised by the caller) as nesa_planner_to_plan does; with explain
 * or compare, *text is the table (freed with nesa_free), else NULL.
 */
enum nesa_status nesa_planner_run(const struct nesa_planner_request *r, struct nesa_plan *plan, char **text,
                                  struct nesa_err *err);

/* ---- shared by the planner modules ---- */

/*
 * The least total memory overflow of any plan when block j takes mem[j]
 * resident bytes (NULL: the problem's own), and a plan reaching it (out,
 * initialised by the caller).  0 when some plan fits; INFINITY on failure.
 */
double nesa_planner_min_overflow(const struct nesa_problem *p, const double *mem,
                                 struct nesa_solution *out);

/*
 * Sets err to the "does not fit" message for p: bytes needed and usable,
 * the nodes the closest plan overflows and by how much, and which weight
 * format would fit.  Returns NESA_ELIMIT.
 */
enum nesa_status nesa_planner_infeasible(const struct nesa_problem *p, struct nesa_err *err);

#endif
