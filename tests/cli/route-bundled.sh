#!/bin/sh
# The bundled models (share/models): the story model's greedy text equals the
# training script's reference, in one process and through the 3-stage demo
# split; the digits classifier gets its reference 437 of 450.
. "$(dirname "$0")/lib.sh"
M=$NESA_MODELS

expect_exit 0 nesa-route -t 1 -m "$M/story/model.bin" -l 200 &&
	{ compare "$M/story/expected_greedy.txt" "$T/out" || fail_ "story greedy text differs"; }
expect_exit 0 nesa-partition -o "$T/p" --stages 3 "$M/story/model.bin"
expect_exit 0 nesa-route -t 1 --plan "$T/p/plan.json" -l 200 &&
	{ compare "$M/story/expected_greedy.txt" "$T/out" || fail_ "story greedy text through 3 stages differs"; }

expect_exit 0 nesa-route -t 1 --format json -m "$M/digits/digits.json" \
	--classify "$M/digits/test_images.u8" "$M/digits/test_labels.u8" &&
	jq -e '.correct == 437 and .images == 450' "$T/out" >/dev/null ||
	fail_ "digits accuracy differs from ARCH.md's 437/450: $(cat "$T/out")"
exit $fail
