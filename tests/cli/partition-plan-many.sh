#!/bin/sh
# nesa-partition on 400 generated nodes and a 40-block model profile: the
# heuristic gives a valid plan no better than the lower bound, the same
# plan for the same seed; the exact solver refuses the size.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null 2>&1 || skip "jq is not installed"

awk 'BEGIN {
	srand(5); L = 40
	printf "{\"format\": \"nesa-model-profile\", \"version\": 1, \"model\": \"gen\", \"n_blocks\": %d, \"context\": 1024, \"blocks\": [", L
	for (j = 0; j < L; j++)
		printf "%s{\"param_bytes\": %d, \"read_bytes_per_token\": %d, \"flops_per_token\": %d, \"flops_per_token_per_ctx\": 3072, \"kv_bytes_per_token\": 6144}", j ? ", " : "", 28e6, 28e6, 56e6
	printf "], \"cuts\": ["
	for (j = 0; j <= L; j++)
		printf "%s{\"at\": %d, \"bytes_per_token\": 3072}", j ? ", " : "", j
	printf "]}\n"
}' >"$T/model.json"
awk 'BEGIN {
	srand(6); printf "["
	for (i = 0; i < 400; i++)
		printf "%s{\"name\": \"n%03d\", \"gemm\": {\"gflops\": %.2f}, \"gemv\": {\"gbytes_per_s\": %.2f}, \"memory\": {\"available_bytes\": %d}}", i ? ", " : "", i, 5 + 195 * rand(), 1 + 39 * rand(), (0.05 + rand()) * 2e8
	printf "]\n"
}' >"$T/nodes.json"

for obj in latency throughput pipeline; do
	expect_exit 0 nesa-partition -n -o - -s 1 --nodes "$T/nodes.json" --objective "$obj" "$T/model.json" || continue
	jq -e '([.stages[].blocks.count] | add) == 40 and .planner.algorithm == "heuristic"
		and .planner.value_ms >= .planner.lower_bound_ms * 0.999999
		and all(.planner.stages[]; .memory_bytes <= .cap_bytes)
		and ([.stages[].node] | unique | length) == (.stages | length)' "$T/out" >/dev/null ||
		fail_ "$obj: $(jq -c .planner "$T/out" | head -c 600)"
	jq -c .stages "$T/out" >"$T/a"
	nesa-partition -n -o - -s 1 --nodes "$T/nodes.json" --objective "$obj" "$T/model.json" | jq -c .stages >"$T/b"
	compare "$T/a" "$T/b" || fail_ "$obj: not deterministic"
done
expect_exit 1 nesa-partition -n -o - --algorithm exact --nodes "$T/nodes.json" "$T/model.json"
grep -q "use the heuristic" "$T/err" || fail_ "exact on 400 nodes not refused clearly: $(cat "$T/err")"
exit $fail
