#!/bin/sh
# What nesa-route says about models it cannot run: an architecture, an op or
# a dtype it does not support is named with the list of what it does, a
# missing file is exit 66, a corrupt archive exit 65, and an inconsistent
# graph is found at load time.
. "$(dirname "$0")/lib.sh"
M=$NESA_MODELS

mkdir "$T/mistral"
echo '{"model_type": "mistral", "hidden_size": 64}' >"$T/mistral/config.json"
expect_exit 65 nesa-route -m "$T/mistral" -l 1
grep -q "model_type 'mistral' (supported: llama, gpt2)" "$T/err" || fail_ "unsupported architecture: $(cat "$T/err")"

sed 's/"relu"/"mish"/' "$M/digits/digits.json" >"$T/digits.json"
cp "$M/digits/digits.safetensors" "$T/"
expect_exit 65 nesa-route -m "$T/digits.json" --classify "$M/digits/test_images.u8" "$M/digits/test_labels.u8"
grep -q "unknown op 'mish' (supported: embedding, .*relu" "$T/err" || fail_ "unsupported op: $(cat "$T/err")"

sed 's/"shape": \[16, 4, 4\]/"shape": [16, 5, 5]/' "$M/digits/digits.json" >"$T/digits.json"
expect_exit 65 nesa-route -m "$T/digits.json" --classify "$M/digits/test_images.u8" "$M/digits/test_labels.u8"
grep -q "invalid graph: block 1 ('conv2').*do not match the outputs of block 0" "$T/err" ||
	fail_ "inconsistent shapes not found at load: $(cat "$T/err")"

expect_exit 66 nesa-route -m "$T/nothing.bin" -l 1
grep -q "cannot open '$T/nothing.bin'" "$T/err" || fail_ "missing model: $(cat "$T/err")"

expect_exit 0 nesa-partition -o "$T/p" --stages 2 "$M/story/model.bin"
head -c 20000 "$T/p/stage-00.nsa" >"$T/cut.nsa"
expect_exit 65 nesa-route -m "$T/cut.nsa" -m "$T/p/stage-01.nsa" -l 1
grep -q "cut.nsa" "$T/err" || fail_ "a truncated archive is not named: $(cat "$T/err")"
[ -s "$T/out" ] && fail_ "output written for a failed run"
exit $fail
