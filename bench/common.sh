# SPDX-License-Identifier: MIT
# Shared by the benchmark scripts: paths, the reference data, llama.cpp and
# the synthetic 110M model, and "best of N" timing helpers.
set -eu
: "${NESA_BINDIR:?run through make bench, or set NESA_BINDIR}"
: "${NESA_SRCDIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${NESA_DATA:=$NESA_SRCDIR/../shared/data}"
PATH=$NESA_BINDIR:$PATH
export PATH
REPS=${REPS:-3}
CACHE=${NESA_BENCH_CACHE:-$HOME/.cache/nesa-bench}

# llama.cpp's tools, built once from the npm registry's bundle.
llama_bin() {
	b=$NESA_SRCDIR/../shared/bench/build-llama-cpp
	[ -x "$b" ] || [ -f "$b" ] || { echo "bench: $b not found" >&2; return 1; }
	sh "$b" | tail -n 1
}

# The synthetic 110M llama (llama2.c and GGUF), made once.
synthetic_110m() {
	if [ ! -f "$CACHE/synthetic110M.bin" ]; then
		/usr/bin/python3 "$NESA_SRCDIR/scripts/make_synthetic_llama.py" "$CACHE" >&2
	fi
	if [ ! -f "$CACHE/synthetic110M.gguf" ]; then
		L=$(llama_bin)
		(cd "$CACHE" && "$L/llama-convert-llama2c-to-ggml" --copy-vocab-from-model tokenizer32000.bin \
			--llama2c-model synthetic110M.bin --llama2c-output-model synthetic110M.gguf >/dev/null 2>&1)
	fi
}

# best CMD...: the largest number the command prints on its last line, over REPS runs.
best() {
	b=0
	i=0
	while [ $i -lt "$REPS" ]; do
		v=$("$@" | tail -n 1)
		b=$(echo "$v $b" | awk '{print ($1 > $2) ? $1 : $2}')
		i=$((i + 1))
	done
	echo "$b"
}

# nesa_rate prefill|decode ARGS...: tokens/s of one nesa-route generation.
nesa_rate() {
	field=$1; shift
	nesa-route -v "$@" 2>&1 >/dev/null | sed -n "s/.*$field \([0-9.]*\) tokens\/s.*/\1/p" | tail -n 1
}

ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}
