#!/bin/sh
# stories260K through nesa-route: greedy text byte for byte equal to the
# reference from the llama2.c checkpoint, the GGUF, and the model split into
# 2 and 3 stage archives; JSON generation with the reference tokens and
# logit margins; seeded sampling reproducible across splits;
# perplexity equal to the independent PyTorch reference.
. "$(dirname "$0")/lib.sh"
need_data stories260K
S=$NESA_DATA/stories260K
exp=$S/expected_greedy_t0_n256.txt

expect_exit 0 nesa-route -t 1 -m "$S/stories260K.bin" -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text from the llama2.c checkpoint differs"; }
expect_exit 0 nesa-route -t 1 -m "$S/stories260K.gguf" --context 512 -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text from the GGUF differs"; }

expect_exit 0 nesa-partition -o "$T/p2" --split 4 "$S/stories260K.bin"
expect_exit 0 nesa-partition -o "$T/p3" --stages 3 "$S/stories260K.gguf"
jq -e '.stages | length == 3' "$T/p3/plan.json" >/dev/null || fail_ "plan.json does not list 3 stages"
expect_exit 0 nesa-route -t 1 -m "$T/p2/stage-00.nsa" -m "$T/p2/stage-01.nsa" -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text through 2 stages differs"; }
expect_exit 0 nesa-route -t 1 --context 512 -m "$T/p3/stage-00.nsa" -m "$T/p3/stage-01.nsa" \
	-m "$T/p3/stage-02.nsa" -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text through 3 stages differs"; }

# JSON generation: the same text, the reference's tokens, and margins equal
# to the top-two gap of the PyTorch reference logits (row t predicts token t+1).
expect_exit 0 nesa-route -t 1 --context 512 -m "$T/p3/stage-00.nsa" -m "$T/p3/stage-01.nsa" \
	-m "$T/p3/stage-02.nsa" -l 256 --format json
jq -j '.samples[0].text' "$T/out" >"$T/json-text" && echo >>"$T/json-text"
compare "$exp" "$T/json-text" || fail_ "JSON generation text differs from the reference"
jq -r '.samples[0].tokens[:63][]' "$T/out" >"$T/json-tok"
od -An -v -t d4 -j 4 "$S/ref_tokens_64.i32" | tr -s ' ' '\n' | sed '/^$/d' | cmp -s - "$T/json-tok" ||
	fail_ "JSON generation tokens differ from ref_tokens_64.i32"
od -An -v -t f4 "$S/ref_logits_64x512.f32" | tr -s ' ' '\n' | sed '/^$/d' |
	awk '{ k = (NR - 1) % 512; if (k == 0) { a = $1; b = -1e30 } else if ($1 > a) { b = a; a = $1 } else if ($1 > b) b = $1;
	       if (k == 511 && NR <= 63 * 512) print a - b }' >"$T/ref-margin"
jq -r '.samples[0].margins[:63][]' "$T/out" | paste - "$T/ref-margin" |
	awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-4) bad++ } END { exit NR == 63 && bad == 0 ? 0 : 1 }' ||
	fail_ "JSON generation margins differ from the reference logits' top-two gaps"

# Stages out of order are refused before anything runs.
expect_exit 64 nesa-route -m "$T/p2/stage-01.nsa" -m "$T/p2/stage-00.nsa"
grep -q "needs block 0" "$T/err" || fail_ "out-of-order stages not explained: $(cat "$T/err")"

# The same seed gives the same sample, whole or split; another seed another.
nesa-route -t 1 -m "$S/stories260K.bin" -T 0.9 -P 0.95 -s 11 -l 80 -p "The cat" >"$T/a" || fail_ "sampling failed"
nesa-route -t 1 -m "$T/p2/stage-00.nsa" -m "$T/p2/stage-01.nsa" -T 0.9 -P 0.95 -s 11 -l 80 -p "The cat" >"$T/b"
compare "$T/a" "$T/b" || fail_ "seeded sampling differs between whole and split model"
nesa-route -t 1 -m "$S/stories260K.bin" -T 0.9 -s 12 -l 80 -p "The cat" >"$T/c"
cmp -s "$T/a" "$T/c" && fail_ "different seeds gave the same sample"
head -c 7 "$T/a" | grep -q "^The cat" || fail_ "the prompt does not start the output"

# Perplexity protocol: SOURCE.md's PyTorch reference scores 95543 tokens, NLL 1.5083.
expect_exit 0 nesa-route -t 1 -m "$S/stories260K.bin" --format json --bytes 200000 \
	--perplexity "$NESA_DATA/tinystories_val_excerpt/tinystories_val_excerpt.txt" &&
	jq -e '.scored == 95543 and .nll >= 1.50825 and .nll < 1.50835' "$T/out" >/dev/null ||
	fail_ "perplexity differs from the reference: $(cat "$T/out")"
exit $fail
