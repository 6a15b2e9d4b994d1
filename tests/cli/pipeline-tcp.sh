#!/bin/sh
# Stages served over TCP on loopback: one server per stage, several clients
# at once, each getting the single-process text.
. "$(dirname "$0")/lib.sh"
need_data stories260K
S=$NESA_DATA/stories260K
exp=$S/expected_greedy_t0_n256.txt
expect_exit 0 nesa-partition -o "$T/p" --stages 3 "$S/stories260K.bin"

pids=
trap 'for p in $pids; do kill $p 2>/dev/null; done; rm -rf "$T"' EXIT
# serve ARCHIVE: start a server on a free port; sets $port and adds to $pids.
serve() {
	for attempt in 1 2 3 4 5; do
		port=$(free_port) || framework_failure "no free port"
		nesa-run-shard -t 1 --listen "127.0.0.1:$port" "$1" </dev/null >/dev/null 2>>"$T/server.err" &
		p=$!
		if wait_port "$port"; then
			pids="$pids $p"
			return 0
		fi
		kill $p 2>/dev/null
	done
	framework_failure "cannot start a server for $1"
}
serve "$T/p/stage-01.nsa"; p1=$port
serve "$T/p/stage-02.nsa"; p2=$port

expect_exit 0 nesa-route -t 1 --stage "$T/p/stage-00.nsa" --stage "tcp://127.0.0.1:$p1" \
	--stage "tcp://127.0.0.1:$p2" -l 256 &&
	{ compare "$exp" "$T/out" || fail_ "greedy text through TCP stages differs"; }

# Two clients at once: sessions of different connections stay apart.
clients=
for c in a b; do
	nesa-route -t 1 --stage "$T/p/stage-00.nsa" --stage "tcp://127.0.0.1:$p1" \
		--stage "tcp://127.0.0.1:$p2" -l 256 --batch 3 >"$T/$c" 2>"$T/$c.err" &
	clients="$clients $!"
done
for c in $clients; do wait $c; done
for c in a b; do
	n=$(grep -c "^Once upon a time, there was a little girl named Lily" "$T/$c")
	[ "$n" = 3 ] || fail_ "client $c: $n of 3 samples right: $(cat "$T/$c.err")"
done

# A stage listening for the wrong part of the model is named in the refusal.
expect_exit 69 nesa-route --stage "$T/p/stage-00.nsa" --stage "tcp://127.0.0.1:$p2" -l 5
grep -q "stage 1 (tcp://127.0.0.1:$p2) holds blocks \[5, 7) of 7, but the chain needs block 3" "$T/err" ||
	fail_ "wrong TCP stage not explained: $(cat "$T/err")"
# Nothing listening.
expect_exit 69 nesa-route --stage "$T/p/stage-00.nsa" --stage "tcp://127.0.0.1:1" --stage "tcp://127.0.0.1:$p2" -l 5
exit $fail
