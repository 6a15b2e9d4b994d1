#!/bin/sh
# SPDX-License-Identifier: MIT
# Speed of nesa-decompose and of the forms it writes, on the synthetic 110M
# llama (12 layers, dim 768, 84 linear matrices; its embedding table is
# shared with the output head, so it stays f32 as nesa-quantize leaves it):
#   - the wall time to decompose every linear matrix: int8 without and with
#     calibration (1024 tokens), svd at half the parameters, lorc:q4_0 at
#     ranks 16 and 32, whiten at half the parameters (1024 tokens); the progress
#     bar a terminal would show is checked under script(1) when present;
#   - decode and prefill tokens/s of each form against the f32 checkpoint
#     and nesa-quantize's q8_0 and q4_0, best of $REPS, as ratios to f32 (the
#     machine is shared and small: absolute figures move, ratios less so).
# Environment: NESA_BINDIR, NESA_SRCDIR (set by `make bench`), REPS (3),
# NESA_BENCH_THREADS (2), NESA_BENCH_CACHE.
. "$(dirname "$0")/common.sh"
synthetic_110m
M=$CACHE/synthetic110M.bin
TOK=$CACHE/tokenizer32000.bin
TXT=$NESA_DATA/tinystories_val_excerpt/tinystories_val_excerpt.txt
threads=${NESA_BENCH_THREADS:-2}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nesa-decompose-speed.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# decompose NAME ARGS...: writes $tmp/NAME.nsa, prints the wall seconds.
decompose() {
	n=$1; shift
	t0=$(date +%s.%N)
	nesa-decompose -q -f -t "$threads" --tokenizer "$TOK" -o "$tmp/$n.nsa" "$@" "$M"
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }'
}

echo "decompose-speed: decomposing every linear matrix of the synthetic 110M llama, $threads threads"
printf '  %-12s %8s %11s  %s\n' form seconds bytes options
for f in "int8|-T int8" "int8-calib|-T int8 --calib $TXT --limit 1024" "svd|-T svd:ratio=0.5" \
	"lorc|-T lorc:q4_0:rank=16" "lorc32|-T lorc:q4_0:rank=32" \
	"whiten|-T whiten:ratio=0.5 --calib $TXT --limit 1024"; do
	n=${f%%|*}
	# shellcheck disable=SC2086
	s=$(decompose "$n" ${f#*|})
	printf '  %-12s %8s %11s  %s\n' "$n" "$s" "$(wc -c <"$tmp/$n.nsa")" "${f#*|}" | sed "s|$TXT|TXT|"
done
nesa-quantize -q -f -T q8_0 --tokenizer "$TOK" -o "$tmp/q8_0.nsa" "$M"
nesa-quantize -q -f -T q4_0 --tokenizer "$TOK" -o "$tmp/q4_0.nsa" "$M"
printf '  %-12s %8s %11s  %s\n' f32 - "$(wc -c <"$M")" "(the checkpoint)"
printf '  %-12s %8s %11s  %s\n' q8_0 - "$(wc -c <"$tmp/q8_0.nsa")" "(nesa-quantize -T q8_0)"
printf '  %-12s %8s %11s  %s\n' q4_0 - "$(wc -c <"$tmp/q4_0.nsa")" "(nesa-quantize -T q4_0)"

# The progress bar: stderr of a run on a pseudo-terminal holds it.
if command -v script >/dev/null 2>&1; then
	script -qec "nesa-decompose -f -T int8 --tokenizer '$TOK' -o '$tmp/p.nsa' '$M'" /dev/null >"$tmp/tty" 2>&1 || true
	if tr '\r' '\n' <"$tmp/tty" | grep -q '^decomposing 100% \[=*\]'; then
		echo "  progress bar on a terminal: shown"
	else
		echo "  progress bar on a terminal: NOT shown"
	fi
fi

echo "decompose-speed: tokens/s, $threads threads, best of $REPS (ratio to f32)"
printf '  %-12s %10s %8s %10s %8s\n' form decode ratio prefill ratio
base_d= base_p=
for n in f32 q8_0 q4_0 int8 int8-calib svd whiten lorc lorc32; do
	m=$tmp/$n.nsa
	[ "$n" = f32 ] && m=$M
	d=$(best nesa_rate decode -t "$threads" -m "$m" --tokenizer "$TOK" --prompt-tokens 1 -l 64 --ignore-eos)
	p=$(best nesa_rate prefill -t "$threads" -m "$m" --tokenizer "$TOK" --prompt-tokens 127 -l 1 --ignore-eos)
	[ -z "$base_d" ] && base_d=$d base_p=$p
	printf '  %-12s %10s %8s %10s %8s\n' "$n" "$d" "$(ratio "$d" "$base_d")" "$p" "$(ratio "$p" "$base_p")"
done
