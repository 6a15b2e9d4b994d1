#!/bin/sh
# Every tool: an unknown option or a bad value for a standard option exits 64
# with the reason, the usage and a pointer to --help on stderr, and nothing on
# stdout; -q drops the usage lines but keeps the reason.
. "$(dirname "$0")/lib.sh"

for t in $TOOLS; do
	expect_exit 64 "$t" --no-such-option
	[ -s "$T/out" ] && fail_ "$t wrote to stdout on a usage error"
	grep -q "^usage: $t " "$T/err" || fail_ "$t: no usage on stderr for a bad option"
	grep -q "Try '$t --help' for more information." "$T/err" || fail_ "$t: no --help hint"

	expect_exit 64 "$t" -t zero
	grep -q "invalid value 'zero' for -t" "$T/err" || fail_ "$t: -t zero not explained: $(cat "$T/err")"
	expect_exit 64 "$t" -t 0
	expect_exit 64 "$t" -s -5

	expect_exit 64 "$t" -q --no-such-option
	grep -q "^usage:" "$T/err" && fail_ "$t -q still printed the usage"
done
exit $fail
