# SPDX-License-Identifier: MIT
# Shared helpers for the shell tests.  Sourced; exit 77 means SKIP and 99
# means the test framework itself broke (Automake's conventions).

set -u
: "${NESA_BINDIR:?run the tests through make check}"
TOOLS="nesa-profile nesa-partition nesa-quantize nesa-decompose nesa-run-shard nesa-route"
PATH=$NESA_BINDIR:$PATH
export PATH

# A scratch directory per test, removed on exit.
T=$(mktemp -d "${TMPDIR:-/tmp}/nesa-cli.XXXXXX") || exit 99
trap 'rm -rf "$T"' EXIT

fail=0
framework_failure() { echo "framework failure: $*" >&2; exit 99; }
skip() { echo "SKIP: $*" >&2; exit 77; }
# fail_ MESSAGE: record a failure and go on, so one run shows every problem.
fail_() { echo "FAIL: $*" >&2; fail=1; }
# compare EXPECTED ACTUAL: files equal, else show the difference.
compare() { cmp -s "$1" "$2" || { diff -u "$1" "$2" >&2; return 1; }; }

# need_data DIR: the reference data folder, or skip the test.
need_data() {
	[ -d "${NESA_DATA:-}/$1" ] || skip "reference data '$1' not found under NESA_DATA='${NESA_DATA:-}'"
}

# expect_exit CODE CMD...: run CMD, stdout to $T/out, stderr to $T/err.
expect_exit() {
	want=$1; shift
	"$@" >"$T/out" 2>"$T/err"
	got=$?
	if [ "$got" != "$want" ]; then
		fail_ "'$*' exited $got, expected $want; stderr: $(head -c 400 "$T/err")"
		return 1
	fi
	return 0
}

# The SYNOPSIS of a man page as plain lines, one per form.
man_synopsis() {
	if command -v mandoc >/dev/null 2>&1; then
		MANWIDTH=400 mandoc -Tutf8 -O width=400 "$1"
	else
		groff -mdoc -Tutf8 -rLL=400n -P-c "$1"
	fi | sed 's/.\x08//g' | awk '/^SYNOPSIS/ {on=1; next} /^[A-Z]/ {on=0} on' |
		sed 's/^ *//; s/ *$//; /^$/d' | tr -s ' '
}

# npy_i32 FILE V...: a NumPy .npy file holding the int32 vector V...
npy_i32() {
	f=$1; shift
	perl -e '
		my $h = sprintf("{\x27descr\x27: \x27<i4\x27, \x27fortran_order\x27: False, \x27shape\x27: (%d,), }", scalar @ARGV);
		$h .= " " x (127 - 10 - length $h) . "\n";
		print "\x93NUMPY\x01\x00", pack("v", length $h), $h, pack("l<*", @ARGV);' "$@" >"$f" ||
		framework_failure "cannot write $f"
}

# free_port: a TCP port nothing listens on now (a race remains; callers retry).
free_port() {
	perl -MIO::Socket::INET -e '
		my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0) or exit 1;
		print $s->sockport, "\n";'
}

# wait_port PORT: wait up to 10 s for something to accept on 127.0.0.1:PORT.
wait_port() {
	i=0
	while [ $i -lt 100 ]; do
		perl -MIO::Socket::INET -e 'IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $ARGV[0]) or exit 1' "$1" && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
