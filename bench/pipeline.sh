#!/bin/sh
# SPDX-License-Identifier: MIT
# Distributed pipelines on this machine, best of $REPS:
# 1. per-hop overhead: stories260K decode through 1, 2 and 4 local stage
#    processes, relayed by the client and chained (goal: 4 stages >= 0.8x
#    of 1 stage; the ratios are against 1 relayed stage);
# 2. pipeline parallelism: 16 sessions on the synthetic 110M llama, two
#    one-thread stages against one one-thread process (goal >= 1.7x) and one
#    two-thread process (goal >= 0.9x), and the bound the GEMMs of
#    8-session groups put on it (2 x the 8-session rate of one thread);
# 3. bytes on the wire per generated token per hop, and the share of the
#    client's time spent framing (headers, checksums).
. "$(dirname "$0")/common.sh"
S=$NESA_DATA/stories260K
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

echo "1. stories260K decode tokens/s through local stage processes, relayed and chained"
one=
for n in 1 2 4; do
	nesa-partition -q -o "$W/s$n" --stages $n "$S/stories260K.bin"
done
for t in relay chain; do
	for n in 1 2 4; do
		r=$(best nesa_rate decode -t 1 --topology $t --plan "$W/s$n/plan.json" -l 256 --ignore-eos)
		[ -n "$one" ] || one=$r
		printf '   %-5s %d stage(s): %10s tokens/s  %s of 1 stage\n' $t $n "$r" "$(ratio "$r" "$one")"
	done
done

echo "2. 16 concurrent sessions, synthetic 110M llama (64 new tokens each)"
synthetic_110m
M=$CACHE/synthetic110M.bin
T32=$CACHE/tokenizer32000.bin
nesa-partition -q -o "$W/m2" --split 9 --tokenizer "$T32" "$M"
a=$(best nesa_rate decode -t 1 -m "$M" --tokenizer "$T32" --batch 16 --prompt-tokens 8 -l 64 --ignore-eos)
b=$(best nesa_rate decode -t 2 -m "$M" --tokenizer "$T32" --batch 16 --prompt-tokens 8 -l 64 --ignore-eos)
c=$(best nesa_rate decode -t 1 --plan "$W/m2/plan.json" --batch 16 --groups 2 --prompt-tokens 8 -l 64 --ignore-eos)
d=$(best nesa_rate decode -t 1 --topology chain --plan "$W/m2/plan.json" --batch 16 --groups 2 --prompt-tokens 8 -l 64 --ignore-eos)
h=$(best nesa_rate decode -t 1 -m "$M" --tokenizer "$T32" --batch 8 --prompt-tokens 8 -l 64 --ignore-eos)
printf '   one process, 1 thread:   %8s tokens/s (8 sessions: %s)\n' "$a" "$h"
printf '   one process, 2 threads:  %8s tokens/s\n' "$b"
printf '   2 stages, 1 thread each: %8s tokens/s  = %sx the 1-thread process, %sx the 2-thread process\n' \
	"$c" "$(ratio "$c" "$a")" "$(ratio "$c" "$b")"
printf '   the same, chained:       %8s tokens/s  = %sx the 1-thread process, %sx the 2-thread process\n' \
	"$d" "$(ratio "$d" "$a")" "$(ratio "$d" "$b")"
# Each stage runs its half of the model once per group of 8 sessions, so a
# step costs a stage what 8 sessions cost the whole model in one thread:
# with no overhead at all the pipeline reaches 2 x (8-session rate).
printf '   bound of a perfect pipeline of two 8-session groups: %sx the 1-thread process\n' \
	"$(awk -v h="$h" -v a="$a" 'BEGIN { printf "%.2f", 2 * h / a }')"

echo "3. bytes per generated token per hop (stories260K, 3 stages, 256 tokens)"
nesa-partition -q -o "$W/s3" --stages 3 "$S/stories260K.bin"
nesa-route -v -t 1 --plan "$W/s3/plan.json" -l 256 --ignore-eos 2>&1 >/dev/null |
	awk '/bytes in/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "in,") bin = $i;
	                                              if ($(i+1) == "bytes" && $(i+2) == "out") bout = $i }
	                  printf "   %s %s: %.0f bytes in and %.0f bytes out per token\n", $2, $3, bin / 256, bout / 256 }
	     /framing/ { sub(/^nesa-route: /, ""); print "   " $0 }'
