#!/bin/sh
# Recovery: a stage dies in the middle of a generation of 3 sessions; with
# --retries, nesa-route restarts the stages, replays every session's tokens
# and goes on, and the text equals the single-process text; without, it
# stops with exit status 69.
. "$(dirname "$0")/lib.sh"
M=$NESA_MODELS
rs=$NESA_BINDIR/nesa-run-shard
expect_exit 0 nesa-partition -o "$T/p" --stages 3 "$M/story/model.bin"
nesa-route -t 1 -m "$M/story/model.bin" -l 200 --batch 3 -T 0.8 -s 4 >"$T/ref" || fail_ "reference run failed"

# The first time it runs, stage 1 dies after 20 kB of input; later, it works.
dying="if [ -e $T/started ]; then exec $rs -t 1 $T/p/stage-01.nsa; else touch $T/started; dd bs=1 count=20000 status=none | $rs -t 1 $T/p/stage-01.nsa; fi"
expect_exit 0 nesa-route -t 1 --retries 2 --stage "$T/p/stage-00.nsa" --stage "$dying" \
	--stage "$T/p/stage-02.nsa" -l 200 --batch 3 -T 0.8 -s 4 &&
	{ compare "$T/ref" "$T/out" || fail_ "text after recovery differs"; }
grep -q "restarting the stages and replaying" "$T/err" || fail_ "no recovery happened: $(cat "$T/err")"

# The same through a chain: the error reaches the client through stage 2.
rm -f "$T/started"
expect_exit 0 nesa-route -t 1 --retries 2 --topology chain --stage "$T/p/stage-00.nsa" --stage "$dying" \
	--stage "$T/p/stage-02.nsa" -l 200 --batch 3 -T 0.8 -s 4 &&
	{ compare "$T/ref" "$T/out" || fail_ "text after recovery through a chain differs"; }
grep -q "restarting the stages and replaying" "$T/err" || fail_ "no recovery happened in a chain: $(cat "$T/err")"

rm -f "$T/started"
expect_exit 69 nesa-route -t 1 --stage "$T/p/stage-00.nsa" --stage "$dying" \
	--stage "$T/p/stage-02.nsa" -l 200 --batch 3 -T 0.8 -s 4

# Perplexity windows run again after a failure.
rm -f "$T/started"
head -c 20000 "$NESA_SRCDIR/README.md" >"$T/text"
nesa-route -t 1 --format json -m "$M/story/model.bin" --perplexity "$T/text" >"$T/ppl_ref" || fail_ "reference perplexity failed"
expect_exit 0 nesa-route -t 1 --retries 1 --format json --stage "$T/p/stage-00.nsa" --stage "$dying" \
	--stage "$T/p/stage-02.nsa" --perplexity "$T/text" &&
	{ compare "$T/ppl_ref" "$T/out" || fail_ "perplexity after recovery differs"; }
exit $fail
