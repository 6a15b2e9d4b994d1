#!/bin/sh
# nesa-decompose's refusals: bad methods, ranks and option combinations
# (64), a missing model or calibration file (66), a file that is no model
# (65); outputs never clobbered by a failed run; and decomposed archives
# made hostile (factors swapped, a factor's shape changed, truncated)
# refused at load by nesa-run-shard and nesa-route (65) with a message
# naming the factors.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null 2>&1 || skip "jq is not installed"

expect_exit 64 nesa-decompose -T svdd -n "$T/none.bin"
grep -q "unknown method 'svdd' (supported: keep, int8, svd, asvd, whiten, lorc)" "$T/err" ||
	fail_ "bad method not explained: $(cat "$T/err")"
[ -s "$T/out" ] && fail_ "wrote to stdout on a usage error"
expect_exit 64 nesa-decompose -r foo -n "$T/none.bin"
grep -q "invalid rank rule 'foo'" "$T/err" || fail_ "bad rank not explained: $(cat "$T/err")"
expect_exit 64 nesa-decompose -T svd:rank=1.5 -n "$T/none.bin"
grep -q "expected a whole number" "$T/err" || fail_ "fractional rank not explained: $(cat "$T/err")"
expect_exit 64 nesa-decompose -T int8:rank=4 -n "$T/none.bin"
expect_exit 64 nesa-decompose -T 'w*=lorc:q3_k' -n "$T/none.bin"
grep -q "unknown type 'q3_k'" "$T/err" || fail_ "bad lorc type not explained: $(cat "$T/err")"
expect_exit 64 nesa-decompose --outliers sometimes -n "$T/none.bin"
expect_exit 64 nesa-decompose --factor-type keep -n "$T/none.bin"
expect_exit 64 nesa-decompose "$T/none.bin"
grep -q "must specify -o for the archive, or -n" "$T/err" || fail_ "missing -o not explained: $(cat "$T/err")"
expect_exit 64 nesa-decompose -n -o "$T/x.nsa" "$T/none.bin"
expect_exit 64 nesa-decompose --report -o - "$T/none.bin"
grep -q "cannot both go to standard output" "$T/err" || fail_ "report to stdout clash not explained"
expect_exit 64 nesa-decompose --limit 10 -n "$T/none.bin"
grep -q "give --calib" "$T/err" || fail_ "--limit without --calib not explained: $(cat "$T/err")"
expect_exit 64 nesa-decompose -n
expect_exit 66 nesa-decompose -n "$T/none.bin"
printf 'not a model at all, just some text\n' >"$T/junk.bin"
expect_exit 65 nesa-decompose -o "$T/x.nsa" "$T/junk.bin"
[ -e "$T/x.nsa" ] && fail_ "a failed run left an output behind"

need_data stories260K
S=$NESA_DATA/stories260K
M="--tokenizer $S/tok512.bin $S/stories260K.bin"

# Methods that need calibration data say so; a missing calibration file is 66.
expect_exit 64 nesa-decompose -T whiten -o "$T/x.nsa" $M
grep -q "cannot decompose tensor 'layers.0.wq' with whiten: it needs calibration data (--calib)" "$T/err" ||
	fail_ "whiten without --calib not explained: $(cat "$T/err")"
expect_exit 64 nesa-decompose --outliers calib -n $M
expect_exit 66 nesa-decompose -T asvd --calib "$T/no-such.txt" -o "$T/x.nsa" $M
grep -q "no-such.txt" "$T/err" || fail_ "missing calibration file not named: $(cat "$T/err")"
[ -e "$T/x.nsa" ] && fail_ "a failed run left an output behind"

# An existing output: refused without -f (73), untouched by a run that fails with -f.
printf 'precious\n' >"$T/keep.nsa"
expect_exit 73 nesa-decompose -T svd -o "$T/keep.nsa" $M
expect_exit 66 nesa-decompose -f -T whiten --calib "$T/no-such.txt" -o "$T/keep.nsa" $M
[ "$(cat "$T/keep.nsa")" = precious ] || fail_ "a failed run clobbered its output"
expect_exit 0 nesa-decompose -f -T svd:rank=8 -o "$T/keep.nsa" $M
[ "$(cat "$T/keep.nsa")" = precious ] && fail_ "-f did not overwrite"
ls "$T" | grep -q '^\.\?keep\.nsa\..' && fail_ "a temporary file was left behind: $(ls -a "$T")"

# Hostile archives: the manifest edited with jq, the archive rebuilt in
# its own order.  Each must be refused at load, before any token runs.
mkdir "$T/x"
(cd "$T/x" && tar xf "$T/keep.nsa") || framework_failure "cannot unpack the archive"
tar tf "$T/keep.nsa" >"$T/order" || framework_failure "cannot list the archive"
# rebuild JQ-FILTER: archive $T/bad.nsa with the manifest edited.
rebuild() {
	jq "$1" "$T/x/manifest.json" >"$T/m.json" || framework_failure "jq '$1'"
	rm -rf "$T/y" && cp -r "$T/x" "$T/y" && cp "$T/m.json" "$T/y/manifest.json" &&
		(cd "$T/y" && tar cf "$T/bad.nsa" -T "$T/order") || framework_failure "cannot rebuild the archive"
}
npy_i32 "$T/tok.npy" 1 403 407
# expect_refused MESSAGE: both tools refuse $T/bad.nsa with 65 and MESSAGE.
expect_refused() {
	expect_exit 65 nesa-run-shard -i "$T/tok.npy" -o "$T/y.npy" "$T/bad.nsa" &&
		{ grep -q "$1" "$T/err" || fail_ "nesa-run-shard: '$1' not in: $(cat "$T/err")"; }
	[ -e "$T/y.npy" ] && fail_ "a refused archive produced output"
	expect_exit 65 nesa-route -t 1 -m "$T/bad.nsa" -l 4 &&
		{ grep -q "$1" "$T/err" || fail_ "nesa-route: '$1' not in: $(cat "$T/err")"; }
}
# The factors of layers.0.wq swapped: A (64, 8) where B (8, 64) belongs.
rebuild '(.graph.blocks[1].ops[] | select(.lowrank_a == "layers.0.wq.a")) |= (.lowrank_a = "layers.0.wq.b" | .lowrank_b = "layers.0.wq.a")'
expect_refused "low-rank factors 'layers.0.wq.b' \[8, 64\] and 'layers.0.wq.a' \[64, 8\] do not fit"
# A factor of another rank, same bytes: B (8, 64) declared (4, 128).
rebuild '(.tensors[] | select(.name == "layers.0.wq.b") | .shape) = [4, 128]'
expect_refused "low-rank factors 'layers.0.wq.a' \[64, 8\] and 'layers.0.wq.b' \[4, 128\] do not fit"
# The factors of another matrix: wk's A makes wq's op 32 wide, which attention refuses.
rebuild '(.graph.blocks[1].ops[] | select(.lowrank_a == "layers.0.wq.a")) |= (.lowrank_a = "layers.0.wk.a")'
expect_refused "op 6 (attention): q, k, v shapes do not match"
# Only one factor.
rebuild '(.graph.blocks[1].ops[] | select(.lowrank_a == "layers.0.wq.a")) |= del(.lowrank_b)'
expect_refused "lowrank_a and lowrank_b go together"
# A shape that does not match the bytes stored.
rebuild '(.tensors[] | select(.name == "layers.0.wq.b") | .shape) = [9, 64]'
expect_refused "layers.0.wq.b"
# Truncated in the middle of a tensor.
head -c 20000 "$T/keep.nsa" >"$T/bad.nsa"
expect_refused "keep.nsa\|bad.nsa"
exit $fail
