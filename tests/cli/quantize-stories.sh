#!/bin/sh
# stories260K through nesa-quantize and nesa-route: q8_0 perplexity within
# 0.5 % of f32 on the first 20000 bytes of the TinyStories excerpt (the
# runtime's protocol), greedy text compared with the f32 reference (a
# difference is reported with its position, not failed: quantization may
# flip a near-tie), the report's figures, per-tensor rules, and the man
# page's examples.
. "$(dirname "$0")/lib.sh"
need_data stories260K
need_data tinystories_val_excerpt
S=$NESA_DATA/stories260K
TXT=$NESA_DATA/tinystories_val_excerpt/tinystories_val_excerpt.txt

# ppl MODEL: perplexity of the first 20000 bytes, printed.
ppl() {
	nesa-route -t 1 -m "$1" --format json --bytes 20000 --perplexity "$TXT" | jq -r .ppl
}

expect_exit 0 nesa-quantize -o "$T/q8.nsa" "$S/stories260K.bin"
[ -s "$T/q8.nsa" ] || fail_ "no archive written"
[ -s "$T/out" ] && fail_ "wrote to stdout without --report"
ref=$(ppl "$S/stories260K.bin") || framework_failure "f32 perplexity"
got=$(ppl "$T/q8.nsa") || fail_ "q8_0 perplexity failed"
awk -v r="$ref" -v g="$got" 'BEGIN { exit !(g <= r * 1.005) }' ||
	fail_ "q8_0 perplexity $got is more than 0.5 % above f32 $ref"
# Quantized archives are about 2.4x smaller (embedding and norms stay f32).
bin=$(wc -c <"$S/stories260K.bin")
nsa=$(wc -c <"$T/q8.nsa")
[ "$nsa" -lt $((bin / 2)) ] || fail_ "q8_0 archive is $nsa bytes, f32 checkpoint $bin"

# Greedy text: report the first difference from the f32 reference.
expect_exit 0 nesa-route -t 1 -m "$T/q8.nsa" -l 256
if ! cmp -s "$T/out" "$S/expected_greedy_t0_n256.txt"; then
	at=$(cmp "$T/out" "$S/expected_greedy_t0_n256.txt" | awk '{ print $5 }' | tr -d ,)
	echo "note: q8_0 greedy text differs from f32 at byte $at:" \
		"$(head -c "$at" "$T/out" | tail -c 40 | tr '\n' ' ')" >&2
fi

# The report: JSON on stdout with -n, every linear weight q8_0 (or f16
# where 32 does not divide the rows), embedding and norms kept.
expect_exit 0 nesa-quantize -n --report --format json "$S/stories260K.bin"
jq -e '.tensors | length == 47' "$T/out" >/dev/null || fail_ "report does not list 47 weights (tied head)"
jq -e '[.tensors[] | select(.name | test("w[qkvo13]$")) | .to] | all(. == "q8_0")' "$T/out" >/dev/null ||
	fail_ "attention and w1/w3 weights are not q8_0"
jq -e '[.tensors[] | select(.name | test("w2$")) | .to] | all(. == "f16")' "$T/out" >/dev/null ||
	fail_ "w2 (rows of 172) did not fall back to f16"
jq -e '[.tensors[] | select(.to == "q8_0") | .sqnr_db] | min > 40' "$T/out" >/dev/null ||
	fail_ "a q8_0 tensor has SQNR below 40 dB"
jq -e '.tensors[] | select(.name == "tok_embeddings") | .to == "f32" and .sqnr_db == null' \
	"$T/out" >/dev/null || fail_ "the embedding was not kept"
jq -e '.bytes_after < .bytes_before' "$T/out" >/dev/null || fail_ "no bytes saved"

# Man page examples: a 4-bit dry run, per-tensor rules, and running the archive.
expect_exit 0 nesa-quantize -n --report -T nf4dq "$S/stories260K.bin"
grep -q "^layers.0.wq .* nf4dq " "$T/out" || fail_ "text report lacks layers.0.wq as nf4dq: $(head -3 "$T/out")"
grep -q "^total " "$T/out" || fail_ "text report has no total line"
expect_exit 0 nesa-quantize -T nf4 -T 'layers.0.w[qkvo]=f16' --keep 'layers.4.*' -n --report \
	--format json "$S/stories260K.bin"
jq -e '.tensors[] | select(.name == "layers.0.wq") | .to == "f16"' "$T/out" >/dev/null ||
	fail_ "rule layers.0.w[qkvo]=f16 not applied"
jq -e '.tensors[] | select(.name == "layers.4.w1") | .to == "f32"' "$T/out" >/dev/null ||
	fail_ "--keep layers.4.* not applied"
jq -e '.tensors[] | select(.name == "layers.1.w1") | .to == "nf4"' "$T/out" >/dev/null ||
	fail_ "-T nf4 not the default"
expect_exit 0 nesa-route -t 1 -m "$T/q8.nsa" -l 20 -p "Once upon a time"
head -c 16 "$T/out" | grep -q "^Once upon a time" || fail_ "the prompt does not start the output"

# An existing output is refused without -f, then overwritten with it.
expect_exit 73 nesa-quantize -o "$T/q8.nsa" "$S/stories260K.bin"
expect_exit 0 nesa-quantize -f -T dyn8 -o "$T/q8.nsa" "$S/stories260K.bin"
exit $fail
