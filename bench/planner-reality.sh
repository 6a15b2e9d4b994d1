#!/bin/sh
# SPDX-License-Identifier: MIT
# Reality check of the planner's cost model: the predicted per-token
# latency of a 3-stage plan for the synthetic 110M llama against what
# nesa-route measures running it as 3 local stage processes (goal: within
# 25 %).
#
# The three nodes are this machine seen three ways: 'a' and 'b' are one
# thread on CPU 0 (as is nesa-route); 'slow' is one thread on CPU 1, which
# it shares with a busy loop started here.  Each is profiled with
# nesa-profile under exactly those conditions (full mode); 'b' and 'slow'
# get a command that starts their stage the same way, 'a' is started by
# nesa-route (and gives it the tokenizer); the link is measured through
# a local pipe (nesa-profile --link 'nesa-profile --echo') and, as
# nesa-route relays every hop through itself, used as the client link of
# every stage.  Memory is capped at 200 MB per node so the 438 MB model
# needs all three.  The measured latency is the wall time of generating
# 72 tokens minus that of 8 tokens, over the 64 tokens in between (start-up
# and prefill cancel); the plan assumes a context of 80 tokens, so decode
# FLOPs are taken at position 40, the middle of those tokens.
#
# Needs taskset (util-linux) and 2 CPUs for the throttled node; without
# them all three nodes run unpinned.  Environment: NESA_BINDIR (set by
# `make bench`), NESA_SRCDIR, NESA_BENCH_MODEL (default
# ~/.cache/nesa-bench/synthetic110M.bin, written by
# scripts/make_synthetic_llama.py when missing).
set -eu

bindir=${NESA_BINDIR:-tools}
srcdir=${NESA_SRCDIR:-.}
model=${NESA_BENCH_MODEL:-$HOME/.cache/nesa-bench/synthetic110M.bin}
tok=$(dirname "$model")/tokenizer32000.bin
command -v jq >/dev/null 2>&1 || { echo "planner-reality: needs jq" >&2; exit 1; }
case $(date +%N) in *N*|'') echo "planner-reality: needs GNU date" >&2; exit 1;; esac
for t in nesa-profile nesa-partition nesa-route nesa-run-shard; do
	test -x "$bindir/$t" || { echo "planner-reality: $bindir/$t not built (run make first)" >&2; exit 1; }
done
if ! test -f "$model"; then
	echo "planner-reality: writing $model (scripts/make_synthetic_llama.py)" >&2
	python3 "$srcdir/scripts/make_synthetic_llama.py" "$(dirname "$model")" >&2 ||
		{ echo "planner-reality: cannot make the synthetic model" >&2; exit 1; }
fi
PATH=$bindir:$PATH
export PATH
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nesa-planner-reality.XXXXXX")
busy=
cleanup() {
	if [ -n "$busy" ]; then kill "$busy" 2>/dev/null || :; wait "$busy" 2>/dev/null || :; fi
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
mkdir "$tmp/nodes" "$tmp/plan"

pin0= pin1=
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
	pin0="taskset -c 0" pin1="taskset -c 1"
	# The throttle: a busy loop sharing CPU 1 with the slow node.
	taskset -c 1 sh -c 'while :; do :; done' &
	busy=$!
else
	echo "planner-reality: no taskset or fewer than 2 CPUs: the nodes are not throttled" >&2
fi

echo "planner-reality: profiling 3 nodes and a pipe link"
# 'a' has no command: nesa-route starts its stage itself, on CPU 0 like nesa-route.
# shellcheck disable=SC2086
$pin0 nesa-profile -t 1 --name a -o "$tmp/nodes/a.json"
# shellcheck disable=SC2086
$pin0 nesa-profile -t 1 --name b --command "$pin0 $bindir/nesa-run-shard -t 1 $tmp/plan/{archive}" -o "$tmp/nodes/b.json"
# shellcheck disable=SC2086
$pin1 nesa-profile -t 1 --name slow --command "$pin1 $bindir/nesa-run-shard -t 1 $tmp/plan/{archive}" -o "$tmp/nodes/slow.json"
nesa-profile --link "nesa-profile --echo" -o "$tmp/link.json"
for n in a b slow; do
	jq -r '"  \(.name): GEMM \(.gemm.gflops | floor) GFLOP/s, GEMV \(.gemv.gbytes_per_s * 10 | floor / 10) GB/s"' "$tmp/nodes/$n.json"
done
jq -r '"  pipe: \(.rtt_ms * 1000 | floor) us round trip, \(.gbytes_per_s * 100 | floor / 100) GB/s"' "$tmp/link.json"

nesa-partition --nodes "$tmp/nodes" --links "$tmp/link.json" --memory 200M --context 80 \
	--tokenizer "$tok" --explain -f -o "$tmp/plan" "$model"

# gen N: wall seconds of generating N tokens through the plan.
gen() {
	t0=$(date +%s%N)
	# shellcheck disable=SC2086
	$pin0 nesa-route -t 1 --plan "$tmp/plan/plan.json" --ignore-eos -p "Once" -l "$1" \
		>"$tmp/text" 2>"$tmp/route.err" || { cat "$tmp/route.err" >&2; exit 1; }
	t1=$(date +%s%N)
	echo $(( t1 - t0 ))
}
best_short= best_long=
for r in 1 2 3; do
	s=$(gen 8)
	l=$(gen 72)
	if [ -z "$best_short" ] || [ "$s" -lt "$best_short" ]; then best_short=$s; fi
	if [ -z "$best_long" ] || [ "$l" -lt "$best_long" ]; then best_long=$l; fi
done
pred=$(jq .planner.latency_ms "$tmp/plan/plan.json")
awk -v s="$best_short" -v l="$best_long" -v p="$pred" 'BEGIN {
	m = (l - s) / 64 / 1e6
	printf "  predicted %.2f ms/token, measured %.2f ms/token (best of 3): ratio %.3f (goal within 25 %%: %s)\n",
	       p, m, p / m, (p / m >= 0.75 && p / m <= 1.25) ? "met" : "not met"
}'
