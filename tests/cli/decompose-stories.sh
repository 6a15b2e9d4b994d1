#!/bin/sh
# stories260K through nesa-decompose: LLM.int8() with calibration within
# 0.5 % of the f32 archive's perplexity (both measured here, first 20000
# bytes of the TinyStories excerpt), lorc better than its 4-bit format
# alone, whitening better than plain SVD at the same rank, the JSON report
# (bytes add up, ranks as asked, outlier share), a dry run writing nothing,
# nesa-profile's per-block bytes and FLOPs of a decomposed archive, and the
# archive through 2 stage processes giving the one-process text and logits.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null 2>&1 || skip "jq is not installed"
need_data stories260K
need_data tinystories_val_excerpt
S=$NESA_DATA/stories260K
TXT=$NESA_DATA/tinystories_val_excerpt/tinystories_val_excerpt.txt
M="--tokenizer $S/tok512.bin $S/stories260K.bin"

# ppl MODEL: perplexity of the first 20000 bytes, printed.
ppl() {
	nesa-route -t 1 -m "$1" --format json --bytes 20000 --perplexity "$TXT" | jq -r .ppl
}
# below A B: A < B as numbers.
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# The reference: the same archive with every weight kept.
expect_exit 0 nesa-decompose -T keep -o "$T/f32.nsa" $M
ref=$(ppl "$T/f32.nsa") || framework_failure "f32 perplexity"

# LLM.int8() with outliers from 4096 calibration tokens.
expect_exit 0 nesa-decompose -t 1 --calib "$TXT" --limit 4096 --report --format json -o "$T/i8.nsa" $M
cp "$T/out" "$T/i8.json"
got=$(ppl "$T/i8.nsa") || fail_ "int8 perplexity failed"
awk -v r="$ref" -v g="$got" 'BEGIN { exit !(g <= r * 1.005) }' ||
	fail_ "int8 perplexity $got is more than 0.5 % above f32 $ref"
echo "f32 $ref, int8 $got" >&2
# The report: 47 weights, 35 of them int8, totals that add up, the archive
# holding those bytes plus headers, the calibration rows asked for.
jq -e '(.tensors | length) == 47
	and ([.tensors[] | select(.method == "int8")] | length) == 35
	and ([.tensors[].bytes_after] | add) == .bytes_after
	and ([.tensors[].bytes_before] | add) == .bytes_before
	and ([.tensors[].outliers // 0] | add) == .outlier_cols
	and .int8_cols == 5 * (6 * 64 + 172) and .calib_rows == 4096
	and (.outlier_share - .outlier_cols / .int8_cols | fabs) < 1e-6
	and all(.tensors[] | select(.method == "int8"); .frob_err < 0.01 and .out_err < 0.05)
	and (.tensors[] | select(.name == "tok_embeddings") | .method == "keep")' "$T/i8.json" >/dev/null ||
	fail_ "int8 report: $(jq -c 'del(.tensors)' "$T/i8.json")"
size=$(wc -c <"$T/i8.nsa")
after=$(jq .bytes_after "$T/i8.json")
[ "$size" -gt "$after" ] && [ "$size" -lt $((after + 200000)) ] ||
	fail_ "archive of $size bytes for $after bytes of weights"

# lorc: q4_0 plus rank-4 factors of its error beats q4_0 alone (w2's rows
# of 172 fit no q4_0 block: f16 there, in both).
expect_exit 0 nesa-quantize -T q4_0 -o "$T/q4.nsa" "$S/stories260K.bin"
q4=$(ppl "$T/q4.nsa") || framework_failure "q4_0 perplexity"
expect_exit 0 nesa-decompose -T lorc:q4_0:rank=4 --report --format json -o "$T/lorc.nsa" $M
jq -e '[.tensors[] | select(.method == "lorc:q4_0") | .rank] | length == 35 and all(. == 4)' "$T/out" >/dev/null ||
	fail_ "lorc ranks are not all 4"
lorc=$(ppl "$T/lorc.nsa") || fail_ "lorc perplexity failed"
below "$lorc" "$q4" || fail_ "lorc:q4_0:rank=4 perplexity $lorc is not below q4_0's $q4"
echo "q4_0 $q4, lorc:q4_0:rank=4 $lorc" >&2

# Whitening (SVD-LLM) against plain SVD, both at rank 32: same bytes, better text.
expect_exit 0 nesa-decompose -T svd:rank=32 --report --format json -o "$T/svd.nsa" $M
cp "$T/out" "$T/svd.json"
expect_exit 0 nesa-decompose -T whiten:rank=32 --calib "$TXT" --limit 4096 --report --format json -o "$T/wh.nsa" $M
jq -e '[.tensors[] | select(.method == "whiten") | .rank] | length == 35 and all(. == 32)' "$T/out" >/dev/null ||
	fail_ "whiten ranks are not all 32"
[ "$(jq .bytes_after "$T/out")" = "$(jq .bytes_after "$T/svd.json")" ] || fail_ "whiten and svd sizes differ"
jq -e '[.tensors[] | select(.rank != null) | .out_err] | all(. != null)' "$T/out" >/dev/null ||
	fail_ "whiten report lacks output errors"
svd=$(ppl "$T/svd.nsa")
wh=$(ppl "$T/wh.nsa")
below "$wh" "$svd" || fail_ "whiten perplexity $wh is not below plain svd's $svd at rank 32"
echo "rank 32: svd $svd, whiten $wh" >&2

# A dry run reports on stdout and writes nothing.
mkdir "$T/dry"
(cd "$T/dry" && nesa-decompose -n --report -T svd:ratio=0.25 $M >"$T/out" 2>"$T/err") ||
	fail_ "dry run failed: $(cat "$T/err")"
[ -z "$(ls -A "$T/dry")" ] || fail_ "a dry run wrote $(ls -A "$T/dry")"
grep -q "^layers.0.wq .* svd .* r=8 " "$T/out" || fail_ "dry run report: $(head -4 "$T/out")"
grep -q "^total " "$T/out" || fail_ "dry run report has no total line"

# The man page's examples, as dry runs: rules in order, --keep, whitening at a quarter of the size.
expect_exit 0 nesa-decompose -T lorc:q4_0:rank=4 -T 'layers.0.w[qkvo]=int8' --keep 'layers.4.*' -n \
	--report --format json $M
jq -e '[.tensors[] | select(.name | test("^layers[.]0[.]w[qkvo]$")) | .method] == ["int8", "int8", "int8", "int8"]
	and ([.tensors[] | select(.name | startswith("layers.4.")) | .method] | unique) == ["keep"]
	and (.tensors[] | select(.name == "layers.1.w2") | .method == "lorc:q4_0" and .rank == 4)
	and (.tensors[] | select(.name == "layers.4.w1") | .note == "rule '"'layers.4.*'"'")' "$T/out" >/dev/null ||
	fail_ "rules example: $(jq -c '[.tensors[] | {name, method, note}] | .[0:12]' "$T/out")"
expect_exit 0 nesa-decompose -n --report -T whiten:ratio=0.25 --calib "$TXT" --limit 1024 $M
grep -q "^layers.0.wq .* whiten .* r=8 " "$T/out" || fail_ "whiten example: $(head -4 "$T/out")"

# nesa-profile sees the new costs: a layer of the int8 archive holds its
# tensors' bytes, and its FLOPs are the f32 layer's with each matrix's
# 2 out in replaced by 2 out (in + outliers); the svd archive's by 2 r (in + out).
expect_exit 0 nesa-profile --model "$T/f32.nsa"
cp "$T/out" "$T/pf.json"
for a in i8 svd; do
	expect_exit 0 nesa-profile --model "$T/$a.nsa"
	jq -e --slurpfile f "$T/pf.json" --slurpfile r "$T/$a.json" '
		[range(1; 6) as $b | ($b - 1 | tostring) as $l |
		 [$r[0].tensors[] | select(.name | startswith("layers." + $l + "."))] as $ts |
		 ([$ts[].bytes_after] | add) as $bytes |
		 ([$ts[] | select(.method != "keep") |
		   (.shape[0]) as $o | (.shape[1]) as $i |
		   (if .method == "int8" then 2 * $o * ($i + .outliers) else 2 * .rank * ($i + $o) end) - 2 * $o * $i]
		  | add) as $dflops |
		 (.blocks[$b].param_bytes == $bytes
		  and (.blocks[$b].flops_per_token - ($f[0].blocks[$b].flops_per_token + $dflops) | fabs) < 0.5
		  and .blocks[$b].read_bytes_per_token == $bytes)] | all' "$T/out" >/dev/null ||
		fail_ "$a profile: $(jq -c '.blocks[1] | {param_bytes, flops_per_token, read_bytes_per_token}' "$T/out")"
done

# Two stage processes give the one-process text and logits.
expect_exit 0 nesa-route -t 1 -m "$T/i8.nsa" -l 120
cp "$T/out" "$T/one.txt"
expect_exit 0 nesa-partition -o "$T/p" --stages 2 "$T/i8.nsa"
expect_exit 0 nesa-route -t 1 --plan "$T/p/plan.json" -l 120 &&
	{ compare "$T/one.txt" "$T/out" || fail_ "int8 text through 2 stages differs"; }
expect_exit 0 nesa-partition -o "$T/ps" --stages 2 "$T/svd.nsa"
npy_i32 "$T/tok.npy" 1 403 407 261 378 432 383
nesa-run-shard -i "$T/tok.npy" "$T/ps/stage-00.nsa" | nesa-run-shard "$T/ps/stage-01.nsa" -o "$T/split.npy" ||
	fail_ "shell pipeline over the svd stages failed"
nesa-run-shard -i "$T/tok.npy" -o "$T/whole.npy" "$T/svd.nsa" || fail_ "the whole svd archive failed"
cmp -s "$T/split.npy" "$T/whole.npy" || fail_ "svd logits differ between 2 stages and one"
exit $fail
