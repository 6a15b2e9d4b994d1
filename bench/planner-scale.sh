#!/bin/sh
# SPDX-License-Identifier: MIT
# Planning at scale: 1,000 heterogeneous nodes and an 80-block model
# (embedding, 78 layers of a 4096-wide llama, head; 1024 tokens of KV
# cache).  Node rates are log-uniform (5-200 GFLOP/s, 1-40 GB/s), memories
# log-uniform between 1 and 16 GB.  Two link setups: one uniform link
# (1 ms, 125 MB/s) with stages talking directly, and random client links
# (0.1-20 ms, 12-1250 MB/s) relayed through the client, which makes every
# hop different.  For each objective it prints the wall time of
# nesa-partition (goal: under 2 s), the solver's own time, the objective and
# its ratio to the lower bound (total work over the summed rates of the
# best nodes, the slowest block on its best node, the cheapest client hops;
# nesa-partition(1)).
#
# Environment: NESA_BINDIR (set by `make bench`), NESA_BENCH_NODES (1000),
# NESA_BENCH_BLOCKS (80).
set -eu

bindir=${NESA_BINDIR:-tools}
K=${NESA_BENCH_NODES:-1000}
L=${NESA_BENCH_BLOCKS:-80}
part=$bindir/nesa-partition
command -v jq >/dev/null 2>&1 || { echo "planner-scale: needs jq" >&2; exit 1; }
test -x "$part" || { echo "planner-scale: $part not built (run make first)" >&2; exit 1; }
case $(date +%N) in *N*|'') echo "planner-scale: needs GNU date" >&2; exit 1;; esac
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nesa-planner-scale.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

awk -v K="$K" -v L="$L" -v dir="$tmp" '
function lu(a, b) { return exp(log(a) + rand() * (log(b) - log(a))) }
BEGIN {
	srand(42)
	D = 4096; V = 32000; H = 11008; ctx = 1024
	emb = V * D * 4; lay = (4 * D * D + 3 * D * H) * 4 + 2 * D * 4; kv = 2 * D * 4
	m = dir "/model.json"
	printf "{\"format\": \"nesa-model-profile\", \"version\": 1, \"model\": \"scale\", \"n_blocks\": %d, \"context\": %d, \"blocks\": [", L, ctx > m
	for (j = 0; j < L; j++) {
		if (j == 0) { p = emb; r = D * 4; f = 0; c = 0; k = 0 }
		else if (j == L - 1) { p = emb; r = emb; f = 2 * V * D; c = 0; k = 0 }
		else { p = lay; r = lay; f = lay / 2; c = 4 * D; k = kv }
		printf "%s{\"param_bytes\": %d, \"read_bytes_per_token\": %d, \"flops_per_token\": %d, \"flops_per_token_per_ctx\": %d, \"kv_bytes_per_token\": %d}", j ? ", " : "", p, r, f, c, k > m
	}
	printf "], \"cuts\": [" > m
	for (j = 0; j <= L; j++)
		printf "%s{\"at\": %d, \"bytes_per_token\": %d}", j ? ", " : "", j, j == 0 ? 4 : j == L ? V * 4 : D * 4 > m
	printf "]}\n" > m
	nf = dir "/nodes.json"; lf = dir "/links.json"
	printf "[" > nf
	printf "{\"default\": {\"rtt_ms\": 1, \"gbytes_per_s\": 0.125}, \"links\": [" > lf
	for (i = 0; i < K; i++) {
		printf "%s{\"name\": \"n%04d\", \"gemm\": {\"gflops\": %.3f}, \"gemv\": {\"gbytes_per_s\": %.3f}, \"memory\": {\"available_bytes\": %d}}", i ? ", " : "", i, lu(5, 200), lu(1, 40), lu(1e9, 16e9) > nf
		printf "%s{\"from\": \"client\", \"to\": \"n%04d\", \"rtt_ms\": %.3f, \"gbytes_per_s\": %.4f}", i ? ", " : "", i, lu(0.1, 20), lu(0.0125, 1.25) > lf
	}
	printf "]\n" > nf
	printf "]}\n" > lf
}'

echo "planner-scale: $K nodes x $L blocks ($(du -k "$tmp/nodes.json" | cut -f1) kB of node profiles)"
printf '  %-26s %-10s %8s %9s %12s %12s %7s %6s\n' links objective "wall s" "solver s" "value ms" "bound ms" ratio stages
for setup in uniform relayed; do
	for obj in latency throughput pipeline; do
		if [ $setup = uniform ]; then
			set -- --topology chain
		else
			set -- --links "$tmp/links.json"
		fi
		t0=$(date +%s%N)
		"$part" -n -o - -s 1 --objective "$obj" --microbatches 8 "$@" --nodes "$tmp/nodes.json" \
			"$tmp/model.json" >"$tmp/plan.json"
		t1=$(date +%s%N)
		jq -r --arg s "$setup" --arg o "$obj" --arg w "$(( (t1 - t0) / 1000000 ))" '.planner |
			[(if $s == "uniform" then "uniform, direct" else "random client, relayed" end), $o,
			 ($w | tonumber / 1000), .plan_seconds, .value_ms, .lower_bound_ms,
			 (.value_ms / .lower_bound_ms), (.stages | length), .algorithm] | @tsv' "$tmp/plan.json" |
			awk -F '\t' '{ printf "  %-26s %-10s %8.3f %9.3f %12.3f %12.3f %7.3f %6d%s\n", $1, $2, $3, $4, $5, $6, $7, $8,
				($3 < 2 ? "" : "  (over the 2 s goal)") }'
	done
done
