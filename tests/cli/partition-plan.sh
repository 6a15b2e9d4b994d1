#!/bin/sh
# nesa-partition --nodes: plans stories260K on three unequal nodes, writes
# archives that nesa-route runs to the reference text (whole, and through
# --plan with a command stage), records nodes and
# commands, explains and compares; the same plan from a model profile; the
# memory diagnosis; links and topology; refusals.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null 2>&1 || skip "jq is not installed"
need_data stories260K
S=$NESA_DATA/stories260K
exp=$S/expected_greedy_t0_n256.txt

# node NAME GFLOPS GB/S MEMORY [COMMAND]: a hand-written node profile.
node() {
	printf '{"name": "%s", "gemm": {"gflops": %s}, "gemv": {"gbytes_per_s": %s},
	 "memory": {"available_bytes": %s}%s}\n' "$1" "$2" "$3" "$4" \
		"${5:+, \"command\": \"$5\"}" >"$T/nodes/$1.json"
}
mkdir "$T/nodes"
node fast 100 20 700000
node mid 40 8 900000
node slow 5 1 1200000 'nesa-run-shard {archive}'

# Memory forces at least two stages (1.8 MB with the KV cache of 512 tokens).
expect_exit 0 nesa-partition --nodes "$T/nodes" --explain --compare -o "$T/p" "$S/stories260K.bin"
cp "$T/out" "$T/explain"
jq -e '.stages | length >= 2' "$T/p/plan.json" >/dev/null || fail_ "expected at least two stages"
jq -e '[.stages[].blocks.count] | add == 7' "$T/p/plan.json" >/dev/null || fail_ "blocks not covered"
jq -e 'all(.stages[]; .node != null) and .planner.objective == "latency" and .planner.algorithm == "exact"
	and .planner.topology == "relay" and .planner.value_ms >= .planner.lower_bound_ms
	and (.planner.compare | length) == 3 and (.planner.stages | length) == (.stages | length)
	and all(.planner.stages[]; .memory_bytes <= .cap_bytes)' "$T/p/plan.json" >/dev/null ||
	fail_ "planner facts: $(jq -c .planner "$T/p/plan.json")"
# A node with a command gets it with the archive filled in.
jq -e 'all(.stages[]; .node != "slow" or .command == ("nesa-run-shard " + .archive))' "$T/p/plan.json" \
	>/dev/null || fail_ "command not filled in: $(jq -c .stages "$T/p/plan.json")"
grep -q "back to the client" "$T/explain" || fail_ "--explain has no table"
grep -q "petals greedy" "$T/explain" || fail_ "--compare lists no baselines"
grep -q '\*' "$T/explain" || fail_ "the bottleneck is not marked"
for a in $(jq -r '.stages[].archive' "$T/p/plan.json"); do
	[ -f "$T/p/$a" ] || fail_ "archive $a missing"
done
# The archives chain: the text is the reference, byte for byte.
set --
for a in $(jq -r '.stages[].archive' "$T/p/plan.json"); do set -- "$@" -m "$T/p/$a"; done
expect_exit 0 nesa-route -t 1 "$@" -l 256 && { compare "$exp" "$T/out" || fail_ "planned stages give other text"; }
# Through --plan from elsewhere, the command stage run in the plan's
# directory (whose name needs quoting): the same text.
jq -e 'any(.stages[]; .command != null)' "$T/p/plan.json" >/dev/null || fail_ "no stage has a command"
cp -R "$T/p" "$T/it's here"
(cd / && nesa-route -t 1 --plan "$T/it's here/plan.json" -l 256) >"$T/out" 2>"$T/err" &&
	compare "$exp" "$T/out" || fail_ "--plan with a command stage: $(head -c 300 "$T/err")"

# The same plan from a model profile, as a dry run to stdout.
nesa-profile --model "$S/stories260K.bin" >"$T/model.json" || fail_ "model profile failed"
expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" "$T/model.json"
jq -c .stages "$T/out" >"$T/a"
jq -c .stages "$T/p/plan.json" >"$T/b"
compare "$T/b" "$T/a" || fail_ "a model profile plans differently from the model"
expect_exit 0 nesa-partition -n -o "$T/dry" --nodes "$T/nodes/mid.json" --nodes "$T/nodes/slow.json" \
	"$S/stories260K.bin"
[ -f "$T/dry/plan.json" ] && [ ! -f "$T/dry/stage-00.nsa" ] || fail_ "-n wrote archives or no plan"

# Throughput and pipeline objectives, heuristic and order solvers: valid plans.
for o in "--objective throughput" "--microbatches 4" "--algorithm heuristic -s 7" "--algorithm order"; do
	# shellcheck disable=SC2086
	expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" $o "$T/model.json" &&
		jq -e '([.stages[].blocks.count] | add) == 7 and .planner.value_ms > 0' "$T/out" >/dev/null ||
		fail_ "$o: $(head -c 300 "$T/out")"
done
jq -e '.planner.objective == "pipeline" and .planner.microbatches == 4' "$T/out" >/dev/null ||
	expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" --microbatches 4 "$T/model.json"
expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" --algorithm heuristic -s 7 "$T/model.json"
jq -c .stages "$T/out" >"$T/h1"
expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" --algorithm heuristic -s 7 "$T/model.json"
jq -c .stages "$T/out" >"$T/h2"
compare "$T/h1" "$T/h2" || fail_ "the heuristic is not deterministic for a seed"

# Links: a far client link to 'fast' changes its hops; chain vs relay topology.
printf '{"default": {"rtt_ms": 0.2, "gbytes_per_s": 1},
 "links": [{"from": "client", "to": "fast", "rtt_ms": 50, "gbytes_per_s": 0.001}]}\n' >"$T/links.json"
expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" --links "$T/links.json" --topology chain "$T/model.json"
jq -e '.planner.topology == "chain" and (.stages[0].node != "fast") and (.stages[-1].node != "fast")' \
	"$T/out" >/dev/null || fail_ "a far client link did not move 'fast' inside: $(jq -c .stages "$T/out")"
expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" --links "$T/links.json" "$T/model.json"
jq -e 'all(.stages[]; .node != "fast")' "$T/out" >/dev/null ||
	fail_ "relaying through a far client should avoid 'fast': $(jq -c .stages "$T/out")"

# Not enough memory: how much is missing, where, and which format would fit.
expect_exit 1 nesa-partition -n -o - --nodes "$T/nodes" --memory 400k "$T/model.json"
grep -q "does not fit" "$T/err" && grep -q "missing" "$T/err" && grep -q "as f16" "$T/err" ||
	fail_ "memory diagnosis: $(cat "$T/err")"
[ -s "$T/out" ] && fail_ "an infeasible plan wrote to stdout"
expect_exit 1 nesa-partition -n -o - --nodes "$T/nodes" --memory 30k "$T/model.json"
grep -q "even as q4_0" "$T/err" || fail_ "hopeless memory not explained: $(cat "$T/err")"
expect_exit 0 nesa-partition -n -o - --nodes "$T/nodes" --memory 1G --memory fast=1k "$T/model.json"
jq -e 'all(.stages[]; .node != "fast")' "$T/out" >/dev/null || fail_ "--memory NODE=SIZE ignored"

# Refusals.
expect_exit 64 nesa-partition --explain "$S/stories260K.bin"
grep -q -- "--explain needs --nodes" "$T/err" || fail_ "--explain without --nodes not explained"
expect_exit 64 nesa-partition --nodes "$T/nodes" --stages 2 "$S/stories260K.bin"
expect_exit 64 nesa-partition --nodes "$T/nodes" --objective fastest "$S/stories260K.bin"
expect_exit 64 nesa-partition --nodes "$T/nodes" --topology ring "$S/stories260K.bin"
expect_exit 64 nesa-partition --nodes "$T/nodes" -o - "$S/stories260K.bin"
expect_exit 66 nesa-partition -n --nodes "$T/no-such-dir" "$T/model.json"
printf '{"name": "x", "gemm": {}}\n' >"$T/bad.json"
expect_exit 65 nesa-partition -n -o - --nodes "$T/bad.json" "$T/model.json"
grep -q "node profile 'x'" "$T/err" || fail_ "bad node profile not named: $(cat "$T/err")"
expect_exit 64 nesa-partition -n -o - --nodes "$T/nodes" --memory nobody=1G "$T/model.json"
grep -q "no node named 'nobody'" "$T/err" || fail_ "unknown --memory node not explained"
exit $fail
