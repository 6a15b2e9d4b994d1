#!/bin/sh
# SPDX-License-Identifier: MIT
# Speed of nesa's quantization kernels, on one core:
#   - quantization throughput in GB/s of f32 input, for q8_0 and the
#     dynamic 8-bit codec (dyn8 with 4096- and 64-value blocks) and q8o, at
#     every instruction-set level this CPU has (goal: q8_0 >= 1 GB/s);
#   - the fused matrix product of each weight format against OpenBLAS on the
#     same weight in f32, for a 2048x768 and a 768x2048 matrix (in cache),
#     one activation row (decode, sgemv) and 64 rows (prefill, sgemm), and
#     a 16384x4096 one (268 MB in f32, streamed from memory) for decode;
#     goal: q8_0 decode faster than f32, which moves 3.8x the bytes.
# Figures are the best of several runs after a warm-up, in CPU time (see
# bench/quant-bench.c); an idle machine still gives the steadiest ones.
# Environment: NESA_BUILDDIR (set by `make bench`).
set -eu

builddir=${NESA_BUILDDIR:-.}
bench=$builddir/bench/nesa-quant-bench
if ! test -x "$bench"; then
	echo "quantize-speed: $bench not built (run make first)" >&2
	exit 1
fi

levels=ref
for l in avx2 avx512; do
	got=$(NESA_ISA=$l "$bench" quantize q8_0 1 | awk '{ print $3 }')
	[ "$got" = "$l" ] && levels="$levels $l"
done

echo "quantize-speed: quantization, one core, GB/s of f32 input (levels: $levels)"
printf '  %-10s' type
for l in $levels; do printf ' %8s' "$l"; done
printf '\n'
for t in q8_0 dyn8_4096 dyn8_64 q8o; do
	printf '  %-10s' "$t"
	for l in $levels; do
		# The portable level is slow: a smaller amount keeps the run short.
		mib=256
		[ "$l" = ref ] && mib=32
		printf ' %8s' "$(NESA_ISA=$l "$bench" quantize "$t" "$mib" | awk '{ print $4 }')"
	done
	printf '\n'
done
best=$(NESA_ISA=avx512 "$bench" quantize q8_0 256 | awk '{ print $4 }')
awk -v g="$best" 'BEGIN { printf "  q8_0 goal >= 1 GB/s per core: %s\n", (g >= 1 ? "met" : "not met") }'

echo "quantize-speed: matrix product, one thread, microseconds (nesa, OpenBLAS f32, speed-up)"
printf '  %-10s %-10s %5s %10s %10s %8s\n' type shape rows nesa f32 speedup
for shape in 2048x768 768x2048; do
	out=${shape%x*} in=${shape#*x}
	for rows in 1 64; do
		for t in q8_0 q4_0 lin8_256 dyn8_256 nf4 nf4dq fp4 f16 bf16; do
			"$bench" matmul "$t" "$out" "$in" "$rows" 1 |
				awk -v s="$shape" '{ printf "  %-10s %-10s %5s %10.1f %10.1f %7.2fx\n", $2, s, $6, $7, $8, $9 }'
		done
	done
done
# A matrix larger than the caches: decode streams the weights from memory.
for t in q8_0 q4_0 nf4 nf4dq dyn8_4096 f16; do
	"$bench" matmul "$t" 16384 4096 1 1 |
		awk '{ printf "  %-10s %-10s %5s %10.1f %10.1f %7.2fx\n", $2, "16384x4096", $6, $7, $8, $9 }'
done
# The goal on the in-cache matrix, best of three runs (caches are shared).
for i in 1 2 3; do "$bench" matmul q8_0 2048 768 1 1; done | awk '$9 > best { best = $9 } END {
	printf "  q8_0 decode faster than f32 sgemv (2048x768): %s (%.2fx)\n", (best > 1 ? "met" : "not met"), best }'
