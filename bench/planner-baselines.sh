#!/bin/sh
# SPDX-License-Identifier: MIT
# The planner against the usual splits on random heterogeneous instances.
#
# Each instance: 4 to 12 nodes whose GEMM rate (5-200 GFLOP/s), weight
# streaming rate (1-40 GB/s) and memory (a 1:6 range) vary independently
# (log-uniform), spread over three sites (0.2 ms and 1.25 GB/s within a
# site, 5-20 ms and 12-125 MB/s between sites, stages talking directly:
# --topology chain), then again all in one site (unequal nodes, one
# uniform link); a llama-like model profile of 8 to 24 blocks (embedding,
# layers, head) whose weights, with the KV cache of 1024 tokens, take
# 20-60 % of the nodes' memory in all.  For the latency, throughput and
# pipeline (B = 8) objectives, nesa-partition --compare plans it (exact solver) and
# evaluates the even split, the memory-share split (exo, llama.cpp) and
# Petals' greedy placement and route with the same cost model; this prints,
# per objective and baseline, the mean and worst ratio of the baseline's
# objective to the plan's, over the instances where the baseline fits in
# memory, and how often it does not ("no fit": a split that overflows a
# node, or Petals spans that leave a block uncovered).
#
# Environment: NESA_BINDIR (set by `make bench`), NESA_BENCH_INSTANCES
# (default 200), NESA_BENCH_SEED (default 1).
set -eu

bindir=${NESA_BINDIR:-tools}
n=${NESA_BENCH_INSTANCES:-200}
seed=${NESA_BENCH_SEED:-1}
part=$bindir/nesa-partition
command -v jq >/dev/null 2>&1 || { echo "planner-baselines: needs jq" >&2; exit 1; }
test -x "$part" || { echo "planner-baselines: $part not built (run make first)" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nesa-planner-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# gen SEED DIR SITES: writes DIR/model.json, DIR/nodes.json and DIR/links.json.
gen() {
	awk -v seed="$1" -v dir="$2" -v S="$3" '
	function lu(a, b) { return exp(log(a) + rand() * (log(b) - log(a))) }
	BEGIN {
		srand(seed)
		K = 4 + int(rand() * 9); L = 8 + int(rand() * 17)
		D = 512 + 256 * int(rand() * 7); V = 32000; H = int(D * 8 / 3); ctx = 1024
		emb = V * D * 4; lay = (4 * D * D + 3 * D * H) * 4 + 2 * D * 4; kv = 2 * D * 4
		total = 2 * emb + (L - 2) * (lay + kv * ctx)
		m = dir "/model.json"
		printf "{\"format\": \"nesa-model-profile\", \"version\": 1, \"model\": \"gen%d\", \"n_blocks\": %d, \"context\": %d, \"blocks\": [", seed, L, ctx > m
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
		# Memories: random shares scaled so the model takes 30-70 % of them.
		share = lu(0.2, 0.6); msum = 0
		for (i = 0; i < K; i++) { mem[i] = lu(1, 6); msum += mem[i] }
		nf = dir "/nodes.json"; printf "[" > nf
		for (i = 0; i < K; i++) {
			site[i] = int(rand() * S)
			printf "%s{\"name\": \"n%d\", \"gemm\": {\"gflops\": %.3f}, \"gemv\": {\"gbytes_per_s\": %.3f}, \"memory\": {\"available_bytes\": %d}}", i ? ", " : "", i, lu(5, 200), lu(1, 40), total / share * mem[i] / msum > nf
		}
		printf "]\n" > nf
		site[K] = int(rand() * S)
		lf = dir "/links.json"
		printf "{\"matrix\": {\"names\": [" > lf
		for (i = 0; i <= K; i++) printf "%s\"%s\"", i ? ", " : "", i < K ? "n" i : "client" > lf
		for (pass = 0; pass < 2; pass++) {
			printf "], \"%s\": [", pass ? "gbytes_per_s" : "rtt_ms" > lf
			for (i = 0; i <= K; i++) {
				printf "%s[", i ? ", " : "" > lf
				for (j = 0; j <= K; j++) {
					if (pass == 0) { if (j >= i) rt[i, j] = site[i] == site[j] ? 0.2 : lu(5, 20); else rt[i, j] = rt[j, i]; v = rt[i, j] }
					else { if (j >= i) bw[i, j] = site[i] == site[j] ? 1.25 : lu(0.0125, 0.125); else bw[i, j] = bw[j, i]; v = bw[i, j] }
					printf "%s%.4f", j ? ", " : "", v > lf
				}
				printf "]" > lf
			}
		}
		printf "]}}\n" > lf
	}'
}

# run SITES: plans every instance, prints the table.
run() {
	echo "planner-baselines: $n random instances, 4-12 nodes, 8-24 blocks, $1 site(s), seed $seed"
	i=0
	: >"$tmp/rows"
	while [ $i -lt "$n" ]; do
		d=$tmp/i$i
		mkdir "$d"
		gen $((seed * 100000 + i)) "$d" "$1"
		for obj in latency throughput pipeline; do
			if "$part" -n -o - --compare --topology chain --objective "$obj" --microbatches 8 \
				--links "$d/links.json" --nodes "$d/nodes.json" "$d/model.json" >"$d/$obj.json" 2>"$d/err"; then
				jq -r --arg o "$obj" '.planner as $p | $p.compare[] |
					[$o, .method, (if .feasible then (.value_ms / $p.value_ms) else "over" end),
					 $p.plan_seconds] | @tsv' "$d/$obj.json" >>"$tmp/rows"
			elif grep -q "does not fit" "$d/err"; then
				printf '%s\tnesa\tnofit\t0\n' "$obj" >>"$tmp/rows"
			else
				echo "planner-baselines: instance $i, $obj: $(cat "$d/err")" >&2
				exit 1
			fi
		done
		rm -rf "$d"
		i=$((i + 1))
	done
	awk -F '\t' '
	$2 == "nesa" { nofit[$1]++; next }
	{
		k = $1 SUBSEP $2; seen[k] = 1
		if ($3 == "over") { over[k]++; next }
		n[k]++; sum[k] += $3; if ($3 > worst[k]) worst[k] = $3; if ($3 < 1 - 1e-9) beat[k]++
		if ($4 > tmax) tmax = $4
	}
	END {
		printf "  %-11s %-30s %9s %10s %10s %8s\n", "objective", "baseline", "fits", "mean ratio", "worst", "no fit"
		split("latency throughput pipeline", ol, " ")
		split("even split|memory share (exo, llama.cpp)|petals greedy", ml, "|")
		for (a = 1; a <= 3; a++) for (b = 1; b <= 3; b++) {
			k = ol[a] SUBSEP ml[b]
			if (!(k in seen)) continue
			if (n[k] > 0) printf "  %-11s %-30s %9d %10.3f %10.3f %8d\n", ol[a], ml[b], n[k], sum[k] / n[k], worst[k], over[k]
			else printf "  %-11s %-30s %9d %10s %10s %8d\n", ol[a], ml[b], 0, "-", "-", over[k]
			if (beat[k] > 0) printf "  ERROR: %s beat the exact plan %d times\n", ml[b], beat[k]
		}
		for (o in nofit) printf "  %s: %d instances fit on no plan at all\n", o, nofit[o]
		printf "  slowest plan: %.3f s\n", tmax
	}' "$tmp/rows"
}

run 3
run 1
