#!/bin/sh
# Every tool: the usage lines of --help equal the man page SYNOPSIS word for
# word (git's t0450 idea), so the two cannot drift apart.
. "$(dirname "$0")/lib.sh"

command -v mandoc >/dev/null 2>&1 || command -v groff >/dev/null 2>&1 ||
	skip "neither mandoc nor groff is installed"
for t in $TOOLS; do
	page=$NESA_MANDIR/$t.1
	[ -f "$page" ] || { fail_ "no man page for $t"; continue; }
	man_synopsis "$page" >"$T/man"
	"$t" --help | sed -n 's/^usage: //p; s/^       \(nesa-\)/\1/p' | tr -s ' ' >"$T/help"
	compare "$T/man" "$T/help" || fail_ "$t: --help usage and man SYNOPSIS differ"
done
exit $fail
