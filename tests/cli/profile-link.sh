#!/bin/sh
# nesa-profile --link and --echo: round trip and bandwidth through a local
# command and over TCP on loopback; the echo framing byte for byte; peers
# that are not echo, stay silent or send garbage end with a clear message,
# exit 69, and leave no process behind.
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null 2>&1 || skip "jq is not installed"

expect_exit 0 nesa-profile --quick --link 'nesa-profile --echo'
jq -e '.format == "nesa-link-profile" and .transport == "command" and .rtt_ms > 0
	and .gbytes_per_s > 0 and .rtt.min_ms <= .rtt.median_ms and .rtt.median_ms <= .rtt.max_ms
	and .rtt.runs == 20 and .bandwidth.runs == 3 and .bandwidth.bytes == 4194304' "$T/out" >/dev/null ||
	fail_ "link profile: $(cat "$T/out")"

# The framing: a frame comes back unchanged; end of input ends the peer with 0.
printf 'nech\005\000\000\000hello' >"$T/frame"
printf 'nech\000\000\000\000' >>"$T/frame"
expect_exit 0 nesa-profile --echo <"$T/frame"
compare "$T/frame" "$T/out" || fail_ "echo changed the frames"
printf 'garbage!' | nesa-profile --echo >"$T/out" 2>"$T/err"
[ $? = 65 ] || fail_ "garbage into --echo did not exit 65"
grep -q "not echo frames" "$T/err" || fail_ "garbage not explained: $(cat "$T/err")"
printf 'nech\377\377\377\377' | nesa-profile --echo >"$T/out" 2>"$T/err"
[ $? = 65 ] || fail_ "an oversized frame did not exit 65"

# TCP on loopback, any free port: the server prints the port first.
nesa-profile --echo --listen 127.0.0.1:0 >"$T/port" 2>"$T/srv.err" &
srv=$!
i=0
while [ ! -s "$T/port" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
port=$(head -n 1 "$T/port")
[ -n "$port" ] || fail_ "the echo server printed no port: $(cat "$T/srv.err")"
expect_exit 0 nesa-profile --quick --link "tcp://127.0.0.1:$port"
jq -e '.transport == "tcp" and .rtt_ms > 0 and .gbytes_per_s > 0' "$T/out" >/dev/null ||
	fail_ "tcp link profile: $(cat "$T/out")"
# The server outlives a client that sends garbage and serves the next one.
if command -v nc >/dev/null 2>&1; then
	printf 'GET / HTTP/1.0\r\n\r\n' | timeout 5 nc -q 1 127.0.0.1 "$port" >/dev/null 2>&1
	expect_exit 0 nesa-profile --quick --link "tcp://127.0.0.1:$port"
fi
kill "$srv" 2>/dev/null
wait "$srv" 2>/dev/null

# Peers that are not echo peers.
expect_exit 69 nesa-profile --link 'true'
grep -q "no echo from 'true'" "$T/err" || fail_ "a vanished peer not explained: $(cat "$T/err")"
expect_exit 69 nesa-profile --link 'head -c 3' --timeout 5
start=$(date +%s)
expect_exit 69 nesa-profile --link "sh -c 'sleep 30; echo late'" --timeout 0.5
grep -q "sent nothing for 0.5 s" "$T/err" || fail_ "a silent peer not explained: $(cat "$T/err")"
# The peer sleeps 30 s: returning long before shows the timeout worked.
[ $(( $(date +%s) - start )) -lt 20 ] || fail_ "the timeout did not stop the wait"
# The silent command and its children are gone.
if command -v pgrep >/dev/null 2>&1 && pgrep -f "sleep 30; echo late" >/dev/null; then
	fail_ "the silent peer was left running"
fi
expect_exit 69 nesa-profile --link tcp://127.0.0.1:1 --timeout 2
expect_exit 64 nesa-profile --echo -o "$T/x"
exit $fail
