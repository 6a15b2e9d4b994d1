#!/bin/sh
# Failure paths: a stage that exits mid-generation, a stage given the wrong
# shard, a stage that sends garbage, a stage that hangs.  Each ends with a
# message naming the stage, exit status 69, no hang and no orphans.
. "$(dirname "$0")/lib.sh"
need_data stories260K
S=$NESA_DATA/stories260K
expect_exit 0 nesa-partition -o "$T/p" --stages 3 "$S/stories260K.bin"
rs=$NESA_BINDIR/nesa-run-shard
s0=$T/p/stage-00.nsa s1=$T/p/stage-01.nsa s2=$T/p/stage-02.nsa

# Exits mid-generation: this stage gets 20 kB of input (dd passes each byte
# on at once), then its input ends in the middle of a frame.
expect_exit 69 nesa-route --timeout 20 --stage "$s0" --stage "dd bs=1 count=20000 status=none | $rs $s1" \
	--stage "$s2" -l 200
grep -q "stage 1 (dd bs=1.*truncated frame" "$T/err" || fail_ "a dying stage is not named: $(cat "$T/err")"

# The wrong shard in the middle.
expect_exit 69 nesa-route --stage "$s0" --stage "$s2" --stage "$s1" -l 5
grep -q "stage 1 (stage-02.nsa) holds blocks \[5, 7) of 7, but the chain needs block 3 next" "$T/err" ||
	fail_ "a wrong shard is not explained: $(cat "$T/err")"

# Garbage instead of frames.
expect_exit 69 nesa-route --stage "$s0" --stage "cat >/dev/null & head -c 5000 /dev/urandom" --stage "$s2" -l 5
grep -q "stage 1 (cat" "$T/err" || fail_ "a garbage stage is not named: $(cat "$T/err")"

# Silence: a stage that never answers is given up after --timeout.
start=$(date +%s)
expect_exit 69 nesa-route --timeout 2 --stage "$s0" --stage "sleep 30" --stage "$s2" -l 5
[ $(($(date +%s) - start)) -lt 15 ] || fail_ "a silent stage was waited for too long"
grep -q "stage 1 (sleep 30)" "$T/err" || fail_ "a silent stage is not named: $(cat "$T/err")"

# A KV cache limit: stage 1 holds 2 of stories260K's layers, so a position
# costs 2 x 2 x 32 floats = 512 bytes; 8 kB holds 16 positions, not 21.
expect_exit 69 nesa-route --stage "$s0" --stage "$rs --kv-limit 8k $s1" --stage "$s2" -l 20
grep -q "over the limit of 8192" "$T/err" || fail_ "a KV cache limit is not explained: $(cat "$T/err")"

# The same through a chain, where the client sees only the last stage:
# the error frame still names the stage that failed, a stage that exits
# is listed, the wrong shard is found from every stage's hello, and a TCP
# stage cannot be chained.
expect_exit 69 nesa-route --timeout 20 --topology chain --stage "$s0" \
	--stage "dd bs=1 count=20000 status=none | $rs $s1" --stage "$s2" -l 200
grep -q "stage 'stage-01.nsa' failed: .*truncated frame" "$T/err" || fail_ "chain: a dying stage is not named: $(cat "$T/err")"
expect_exit 69 nesa-route --timeout 20 --topology chain --stage "$s0" --stage "sh -c 'exit 3'" --stage "$s2" -l 5
grep -q "the chain broke: .*stage 1 (sh -c 'exit 3') exited with status 3" "$T/err" ||
	fail_ "chain: an exiting stage is not named: $(cat "$T/err")"
expect_exit 69 nesa-route --topology chain --stage "$s0" --stage "$s2" --stage "$s1" -l 5
grep -q "stage 1 (stage-02.nsa) holds blocks \[5, 7) of 7, but the chain needs block 3 next" "$T/err" ||
	fail_ "chain: a wrong shard is not explained: $(cat "$T/err")"
expect_exit 64 nesa-route --topology chain --stage "$s0" --stage tcp://127.0.0.1:9 --stage "$s2" -l 5
grep -q "stage 1 (tcp://127.0.0.1:9): a chain needs stage processes" "$T/err" ||
	fail_ "chain: a TCP stage is not refused: $(cat "$T/err")"

# No stage process outlives its client.
sleep 0.5
if pgrep -f "$T/p/stage-0" >/dev/null; then
	fail_ "stage processes left behind: $(pgrep -af "$T/p/stage-0")"
fi
exit $fail
