#!/bin/sh
# nesa-profile --node: JSON with the documented keys and sane values, the
# name and command recorded, nothing but JSON on
# stdout and nothing on stderr when it is not a terminal; the mode checks.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null 2>&1 || skip "jq is not installed"

expect_exit 0 nesa-profile --quick -t 1 --name box1 --command 'ssh -T box1 nesa-run-shard {archive}'
[ -s "$T/err" ] && fail_ "stderr is not empty: $(cat "$T/err")"
jq -e '.format == "nesa-node-profile" and .version == 1 and .name == "box1" and .mode == "quick"
	and .command == "ssh -T box1 nesa-run-shard {archive}" and .threads == 1
	and .cpu.logical_cpus >= 1 and .cpu.allowed_cpus >= 1 and .cpu.cores >= 1 and .cpu.cores <= .cpu.logical_cpus and (.cpu.model | length) > 0
	and .memory.total_bytes > 0 and .memory.available_bytes > 0
	and .memory.available_bytes <= .memory.total_bytes' "$T/out" >/dev/null ||
	fail_ "node profile keys: $(cat "$T/out")"
# Every rate positive, median within its spread, in its documented unit.
for k in gemm.gflops stream.gbytes_per_s gemv.gbytes_per_s int8.gops; do
	o=${k%%.*}
	jq -e ".$k > 0 and .$o.min <= .$k and .$k <= .$o.max and .$o.runs >= 5" "$T/out" >/dev/null ||
		fail_ "$k: $(jq -c ".$o" "$T/out")"
done
jq -e '.gemv.blas_gbytes_per_s > 0 and .gemv.rows * .gemv.cols * 4 > 32 * 1048576' "$T/out" >/dev/null ||
	fail_ "the GEMV matrix must be larger than the caches"
jq -e '.seconds > 0' "$T/out" >/dev/null || fail_ "no .seconds"
jq -e '.int8.kernel == "q8_0" or .int8.kernel == "q8_0_ref"' "$T/out" >/dev/null || fail_ "int8 kernel"

# -o writes a file, refuses to overwrite without -f.
expect_exit 0 nesa-profile --quick -o "$T/n.json"
[ -s "$T/out" ] && fail_ "-o FILE still wrote to stdout"
jq -e .gemm.gflops "$T/n.json" >/dev/null || fail_ "-o file is not a profile"
expect_exit 73 nesa-profile --quick -o "$T/n.json"
expect_exit 0 nesa-profile --quick -f -o "$T/n.json"

# One mode at a time; options of one mode refused in another.
expect_exit 64 nesa-profile --node --link 'cat'
grep -q "only one of" "$T/err" || fail_ "two modes not explained"
expect_exit 64 nesa-profile --measure
grep -q -- "--measure needs --model" "$T/err" || fail_ "--measure alone not explained"
expect_exit 64 nesa-profile --listen :0
expect_exit 64 nesa-profile --name x --link 'cat'
expect_exit 64 nesa-profile extra
[ -s "$T/out" ] && fail_ "usage errors wrote to stdout"
exit $fail
