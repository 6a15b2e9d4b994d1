#!/bin/sh
# nesa-profile --model: per block bytes in every weight format, FLOPs for
# prefill and decode, KV cache, the bytes crossing every cut, and timings
# with --measure, on the stories260K llama and the MNIST CNN.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null 2>&1 || skip "jq is not installed"
need_data stories260K
S=$NESA_DATA/stories260K

expect_exit 0 nesa-profile --model "$S/stories260K.bin"
P=$T/out
jq -e '.format == "nesa-model-profile" and .model == "stories260K" and .n_blocks == 7
	and .context == 512 and (.blocks | length) == 7 and (.cuts | length) == 8
	and .source.format == "llama2c"' "$P" >/dev/null || fail_ "model profile header: $(head -c 600 "$P")"
# The totals add up; every format is smaller than f32 for the layers.
jq -e '([.blocks[].param_bytes] | add) == .totals.param_bytes
	and ([.blocks[].param_bytes_q4_0] | add) == .totals.param_bytes_q4_0
	and all(.blocks[1:6][]; .param_bytes_q4_0 < .param_bytes_q8_0 and .param_bytes_q8_0 < .param_bytes_f16
		and .param_bytes_f16 < .param_bytes)' "$P" >/dev/null || fail_ "weight formats"
# dim 64, 4 of 8 heads for K and V: a layer caches 2 x 32 floats per token; the embedding
# is read one row (64 floats) per token; decode = flops + ctx x per_ctx.
jq -e '.blocks[1].kv_bytes_per_token == 256 and .blocks[0].read_bytes_per_token == 256
	and .blocks[0].kv_bytes_per_token == 0 and .blocks[1].flops_per_token_per_ctx > 0
	and all(.blocks[]; .decode_flops_per_token == .flops_per_token + 512 * .flops_per_token_per_ctx
		and .prefill_flops_per_token <= .decode_flops_per_token)
	and .blocks[1].in_bytes_per_token == 256' "$P" >/dev/null || fail_ "per block costs: $(jq -c '.blocks[1]' "$P")"
# Cuts: token ids in (4 bytes), hidden states between blocks, logits out (512 x 4).
jq -e '[.cuts[].bytes_per_token] == [4, 256, 256, 256, 256, 256, 256, 2048]
	and [.cuts[].at] == [0, 1, 2, 3, 4, 5, 6, 7]' "$P" >/dev/null || fail_ "cuts: $(jq -c .cuts "$P")"

expect_exit 0 nesa-profile --model "$S/stories260K.bin" --context 100 --measure -s 3 -t 1
jq -e '.context == 100 and .measured.threads == 1 and .measured.decode_steps >= 1
	and all(.blocks[]; .measured.decode_ms_per_token > 0 and .measured.prefill_ms_per_token > 0)
	and .blocks[1].decode_flops_per_token == .blocks[1].flops_per_token + 100 * .blocks[1].flops_per_token_per_ctx' \
	"$T/out" >/dev/null || fail_ "--measure: $(jq -c '.measured, .blocks[1]' "$T/out")"

# A CNN on images: no KV cache, images in, class scores out.
if [ -d "$NESA_DATA/mnist_cnn_jsgrad" ]; then
	expect_exit 0 nesa-profile --measure --model "$NESA_MODELS/mnist/mnist.json" \
		--weights "$NESA_DATA/mnist_cnn_jsgrad/mnist.safetensors"
	jq -e '.totals.kv_bytes_per_token == 0 and .cuts[0].bytes_per_token == 784 * 4
		and .cuts[-1].bytes_per_token == 40 and all(.blocks[]; .measured.decode_ms_per_token > 0)' \
		"$T/out" >/dev/null || fail_ "mnist profile: $(jq -c '.cuts, .totals' "$T/out")"
fi

expect_exit 66 nesa-profile --model "$T/no-such-model.bin"
printf 'not a model at all' >"$T/bad.bin"
expect_exit 65 nesa-profile --model "$T/bad.bin"
exit $fail
