#!/bin/sh
# nesa-quantize's refusals: option combinations (64), a missing input (66),
# a file that is no model (65), and a model with a NaN weight (65, naming
# the tensor and the element), built here as a graph file and safetensors.
. "$(dirname "$0")/lib.sh"

expect_exit 64 nesa-quantize "$T/none.bin"
grep -q "must specify -o" "$T/err" || fail_ "missing -o not explained: $(cat "$T/err")"
expect_exit 64 nesa-quantize -n -o "$T/x.nsa" "$T/none.bin"
expect_exit 64 nesa-quantize --report -o - "$T/none.bin"
grep -q "cannot both go to standard output" "$T/err" || fail_ "report to stdout clash not explained"
expect_exit 64 nesa-quantize -T q3_k -o "$T/x.nsa" "$T/none.bin"
grep -q "unknown type 'q3_k'" "$T/err" || fail_ "bad type not explained: $(cat "$T/err")"
expect_exit 64 nesa-quantize --stream --report
expect_exit 64 nesa-quantize --stream --codec keep
expect_exit 64 nesa-quantize --format yaml -n "$T/none.bin"
expect_exit 64 nesa-quantize -o "$T/x.nsa"
[ -s "$T/out" ] && fail_ "wrote to stdout on a usage error"

expect_exit 66 nesa-quantize -o "$T/x.nsa" "$T/none.bin"
printf 'not a model at all, just some text\n' >"$T/junk.bin"
expect_exit 65 nesa-quantize -o "$T/x.nsa" "$T/junk.bin"
[ -e "$T/x.nsa" ] && fail_ "a failed run left an output behind"

# A one-block graph with a linear weight w [32, 64] holding one NaN.
cat >"$T/g.json" <<'JSON'
{"graph_version": 1, "name": "nan", "arch": "mlp", "n_blocks": 1, "weights": "w.safetensors",
 "blocks": [{"name": "b0", "inputs": [{"name": "x", "shape": [64]}],
  "ops": [{"op": "linear", "in": ["x"], "out": "x", "weight": "w"}], "outputs": ["x"]}]}
JSON
hdr='{"w":{"dtype":"F32","shape":[32,64],"data_offsets":[0,8192]}}'
{
	printf "\\$(printf %03o ${#hdr})\\000\\000\\000\\000\\000\\000\\000"
	printf '%s' "$hdr"
	head -c 8192 /dev/zero
} >"$T/w.safetensors" || framework_failure "cannot write safetensors"
expect_exit 0 nesa-quantize -n --report "$T/g.json"
grep -q "^w .*q8_0" "$T/out" || fail_ "the clean graph was not quantized: $(cat "$T/out")"
# Element [1, 3] = float offset 67: bytes of a quiet NaN, little-endian.
printf '\000\000\300\177' | dd of="$T/w.safetensors" bs=1 seek=$((8 + ${#hdr} + 67 * 4)) conv=notrunc 2>/dev/null
expect_exit 65 nesa-quantize -o "$T/x.nsa" "$T/g.json"
grep -q "cannot quantize tensor 'w': element \[1, 3\] is NaN" "$T/err" ||
	fail_ "NaN weight not explained: $(cat "$T/err")"
[ -e "$T/x.nsa" ] && fail_ "a refused model left an output behind"
exit $fail
