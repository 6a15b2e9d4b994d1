#!/bin/sh
# SPDX-License-Identifier: MIT
# nesa against llama.cpp on the same models, in one run, best of $REPS:
# stories260K decode with 1 and 2 threads (goal >= 1.5x), the synthetic
# 110M llama f32 prefill (128 tokens) and decode (128 tokens), goal >= 1.0x,
# and nesa's peak RSS against the weight bytes (goal <= 1.1x).
. "$(dirname "$0")/common.sh"
S=$NESA_DATA/stories260K
L=$(llama_bin)
synthetic_110m

lb() { # lb MODEL THREADS pp|tg
	if [ "$3" = pp ]; then set -- "$1" "$2" -p 128 -n 0; else set -- "$1" "$2" -p 0 -n 128; fi
	"$L/llama-bench" -m "$1" -t "$2" "$3" "$4" "$5" "$6" -r 1 -o csv 2>/dev/null |
		awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "avg_ts") c = i; next } { v = $c } END { gsub(/"/, "", v); print v }'
}

printf '%-34s %12s %12s %8s\n' "test" "nesa tok/s" "llama tok/s" "ratio"
for t in 1 2; do
	n=$(best nesa_rate decode -t $t -m "$S/stories260K.gguf" --context 512 -l 128 --ignore-eos)
	l=$(best lb "$S/stories260K.gguf" $t tg)
	printf '%-34s %12s %12s %8s\n' "stories260K decode, $t thread(s)" "$n" "$l" "$(ratio "$n" "$l")"
done
M=$CACHE/synthetic110M
for t in 1 2; do
	n=$(best nesa_rate prefill -t $t -m "$M.bin" --tokenizer "$CACHE/tokenizer32000.bin" --prompt-tokens 127 -l 1 --ignore-eos)
	l=$(best lb "$M.gguf" $t pp)
	printf '%-34s %12s %12s %8s\n' "110M f32 prefill 128, $t thread(s)" "$n" "$l" "$(ratio "$n" "$l")"
	n=$(best nesa_rate decode -t $t -m "$M.bin" --tokenizer "$CACHE/tokenizer32000.bin" --prompt-tokens 1 -l 128 --ignore-eos)
	l=$(best lb "$M.gguf" $t tg)
	printf '%-34s %12s %12s %8s\n' "110M f32 decode 128, $t thread(s)" "$n" "$l" "$(ratio "$n" "$l")"
done
rss=$(nesa-route -v -t 2 -m "$M.bin" --tokenizer "$CACHE/tokenizer32000.bin" --prompt-tokens 127 -l 128 \
	--ignore-eos 2>&1 >/dev/null | sed -n 's/.*peak RSS \([0-9.]*\) MB.*/\1/p')
w=$(stat -c %s "$M.bin")
echo "110M peak RSS ${rss} MB for $(awk -v w="$w" 'BEGIN { printf "%.1f", w / 1048576 }') MB of weights: $(awk -v r="$rss" -v w="$w" 'BEGIN { printf "%.2f", r * 1048576 / w }')x"
