#!/bin/sh
# Every tool: -h and --help print the same help to stdout with status 0 and
# name the program on line 1; -V prints "TOOL (nesa) X.Y.Z"; stderr stays empty.
. "$(dirname "$0")/lib.sh"

for t in $TOOLS; do
	expect_exit 0 "$t" -h || continue
	[ -s "$T/err" ] && fail_ "$t -h wrote to stderr"
	head -n 1 "$T/out" | grep -q "^$t - " || fail_ "$t -h does not name the program on line 1"
	grep -q "^usage: $t " "$T/out" || fail_ "$t -h has no usage line"
	cp "$T/out" "$T/short"
	expect_exit 0 "$t" --help && { compare "$T/short" "$T/out" || fail_ "$t -h and --help differ"; }
	expect_exit 0 "$t" -V || continue
	[ -s "$T/err" ] && fail_ "$t -V wrote to stderr"
	head -n 1 "$T/out" | grep -Eq "^$t \(nesa\) [0-9]+\.[0-9]+\.[0-9]+$" ||
		fail_ "$t -V first line is '$(head -n 1 "$T/out")'"
	expect_exit 0 "$t" --version
done
exit $fail
