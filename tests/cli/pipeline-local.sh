#!/bin/sh
# Pipelines of local processes: nesa-route driving the stages of a plan,
# relayed or piped to each other (chain),
# and a plain shell pipeline of nesa-run-shard filters between .npy files,
# both equal to the single-process results.
. "$(dirname "$0")/lib.sh"
need_data stories260K
S=$NESA_DATA/stories260K
exp=$S/expected_greedy_t0_n256.txt

expect_exit 0 nesa-partition -o "$T/p" --stages 3 "$S/stories260K.bin"
expect_exit 0 nesa-partition -o "$T/w" --stages 1 "$S/stories260K.bin"

expect_exit 0 nesa-route -t 1 --plan "$T/p/plan.json" -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text through 3 stage processes differs"; }
expect_exit 0 nesa-route -t 1 --stage "$T/p/stage-00.nsa" --stage "$T/p/stage-01.nsa" \
	--stage "$T/p/stage-02.nsa" --codec f16 -l 256
# The chain topology: stages piped to each other, the same text; several
# sessions in flight; the client reports the chain end to end.
expect_exit 0 nesa-route -t 1 -v --topology chain --plan "$T/p/plan.json" -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text through a chain of 3 stages differs"; }
grep -q "chain of 3 stages: blocks \[0, 7), 2[0-9][0-9] batches" "$T/err" || fail_ "no chain report: $(cat "$T/err")"
nesa-route -t 1 --topology chain --plan "$T/p/plan.json" -T 0.8 -s 5 -l 60 --batch 4 --groups 3 >"$T/chain" ||
	fail_ "sampling through a chain failed"
# A plan made for a chain runs as one.
expect_exit 0 nesa-partition -o "$T/c" --stages 2 "$S/stories260K.bin"
jq '.planner = {topology: "chain"}' "$T/c/plan.json" >"$T/c/p2.json"
expect_exit 0 nesa-route -t 1 -v --plan "$T/c/p2.json" -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text through a chain plan differs"; }
grep -q "chain of 2 stages" "$T/err" || fail_ "a chain plan was not run as a chain: $(cat "$T/err")"

# Sampling with a seed gives the same text in one process and in 3 stages,
# with several sessions in flight together.
nesa-route -t 1 -m "$S/stories260K.bin" -T 0.8 -s 5 -l 60 --batch 4 >"$T/one" || fail_ "local sampling failed"
nesa-route -t 1 --plan "$T/p/plan.json" -T 0.8 -s 5 -l 60 --batch 4 --groups 2 >"$T/three" || fail_ "pipelined sampling failed"
compare "$T/one" "$T/three" || fail_ "seeded samples differ between one process and 3 stages"
compare "$T/one" "$T/chain" || fail_ "seeded samples differ between one process and a chain of 3 stages"

# The shell pipeline of the man page: .npy in, .npy out, bit for bit the
# same logits as the whole model in one stage.
npy_i32 "$T/tok.npy" 1 403 407 261 378 432 383
nesa-run-shard -i "$T/tok.npy" "$T/p/stage-00.nsa" | nesa-run-shard "$T/p/stage-01.nsa" |
	nesa-run-shard "$T/p/stage-02.nsa" -o "$T/split.npy" || fail_ "shell pipeline failed"
nesa-run-shard -i "$T/tok.npy" -o "$T/whole.npy" "$T/w/stage-00.nsa" || fail_ "whole-model stage failed"
cmp -s "$T/split.npy" "$T/whole.npy" || fail_ "split and whole logits differ"
[ "$(wc -c <"$T/whole.npy")" -eq $((128 + 7 * 512 * 4)) ] || fail_ "logits .npy has the wrong size"

# A stage given what does not chain refuses it downstream, naming itself.
nesa-run-shard -i "$T/tok.npy" "$T/p/stage-01.nsa" 2>"$T/err1" |
	nesa-run-shard "$T/p/stage-02.nsa" -o "$T/bad.npy" 2>"$T/err2"
[ -e "$T/bad.npy" ] && fail_ "a failed pipeline left an output file"
grep -q "stage 'stage-01.nsa': blocks \[3, 5) of 'stories260K'" "$T/err2" ||
	fail_ "the last stage does not name the failing stage: $(cat "$T/err2")"
exit $fail
