#!/bin/sh
# SPDX-License-Identifier: MIT
# Tensor stream throughput through a pipe, against raw bytes through a pipe.
#
# The same number of bytes (by default 256 frames of 4 MiB: exactly the
# stream's size, headers, trailers and the end-of-stream frame included)
# goes through, in one run, interleaved, best of 3 each:
#   nesa-stream-bench gen | nesa-stream-bench sink   framing and CRC-32C on both ends
#   dd bs=128K | cat > /dev/null                     raw bytes, cat's own buffers
#   head -c | cat > /dev/null                        raw bytes, head's 8 KiB writes
# and prints each bandwidth and the ratio of the stream to the fastest raw
# pipe (goal: at least 0.8).  The checksum's speed is printed too (and
# zlib's crc32, which version 1 of the format used): every byte is
# checksummed once by the writer and once by the reader, so it bounds what
# framing can reach.  Times are wall clock: run on an idle machine.
#
# Environment: NESA_BUILDDIR (set by `make bench`), NESA_BENCH_FRAMES,
# NESA_BENCH_BYTES (frame payload, a multiple of 4).
set -eu

builddir=${NESA_BUILDDIR:-.}
bench=$builddir/bench/nesa-stream-bench
frames=${NESA_BENCH_FRAMES:-256}
bytes=${NESA_BENCH_BYTES:-4194304}
runs=3

if ! test -x "$bench"; then
	echo "stream-throughput: $bench not built (run make first)" >&2
	exit 1
fi
case $(date +%N) in
*N*|'') echo "stream-throughput: needs GNU date for nanosecond times" >&2; exit 1;;
esac

# Stream bytes: every frame has a 64-byte header and a 4-byte trailer, and
# the end-of-stream frame is one more header and trailer.
total=$(( frames * (bytes + 68) + 68 ))
tmp=${TMPDIR:-/tmp}/nesa-stream-bench.$$
trap 'rm -f "$tmp".*' EXIT INT TERM

now() { date +%s%N; }

# best VAR NANOSECONDS: keeps the smallest time in VAR.
best() {
	eval "cur=\${$1:-}"
	if test -z "$cur" || test "$2" -lt "$cur"; then
		eval "$1=\$2"
	fi
}

gbps() { awk -v b="$total" -v ns="$1" 'BEGIN { printf "%.2f", b / ns }'; }

echo "stream-throughput: $frames frames of $bytes bytes, $total bytes per run, best of $runs"
"$bench" crc 131072 | awk '{ impl = $6; gsub(/[(,]/, "", impl); printf "  %-6s (128 KiB, hot)          %s GB/s (%s)\n", $1, $5, impl }'

i=0
while test $i -lt $runs; do
	t0=$(now)
	"$bench" gen "$frames" "$bytes" 2>"$tmp.gen" | "$bench" sink >"$tmp.sink"
	t1=$(now)
	best t_stream $(( t1 - t0 ))
	# The sink's own statistics of the fastest run.
	if test "$t_stream" -eq $(( t1 - t0 )); then
		cp "$tmp.sink" "$tmp.best"
		cp "$tmp.gen" "$tmp.bestgen"
	fi

	t0=$(now)
	dd if=/dev/zero bs=128K iflag=count_bytes count="$total" status=none | cat >/dev/null
	t1=$(now)
	best t_dd $(( t1 - t0 ))

	t0=$(now)
	head -c "$total" /dev/zero | cat >/dev/null
	t1=$(now)
	best t_head $(( t1 - t0 ))
	i=$(( i + 1 ))
done

# The stream must have carried every byte, checksums verified.
read -r _ got_frames _ _ _ got_bytes _ sink_s _ sink_codec _ sink_io <"$tmp.best"
if test "$got_bytes" -ne "$total" || test "$got_frames" -ne $(( frames + 1 )); then
	echo "stream-throughput: sink saw $got_frames frames, $got_bytes bytes; expected $(( frames + 1 )), $total" >&2
	exit 1
fi
read -r _ _ _ _ gen_codec _ gen_io <"$tmp.bestgen"

t_raw=$t_dd
raw=dd
if test "$t_head" -lt "$t_dd"; then
	t_raw=$t_head
	raw=head
fi
printf '  gen | sink                     %s GB/s\n' "$(gbps "$t_stream")"
printf '    writer: CRC-32C and headers %.3f s, in write() %.3f s\n' "$gen_codec" "$gen_io"
printf '    reader: CRC-32C and headers %.3f s, in read()  %.3f s\n' "$sink_codec" "$sink_io"
printf '  dd bs=128K | cat               %s GB/s\n' "$(gbps "$t_dd")"
printf '  head -c | cat                  %s GB/s\n' "$(gbps "$t_head")"
awk -v s="$t_stream" -v r="$t_raw" -v raw="$raw" 'BEGIN {
	ratio = r / s
	verdict = (ratio >= 0.8) ? "met" : "not met"
	printf "  ratio stream / %-15s %.2f (goal >= 0.80: %s)\n", raw, ratio, verdict
}'
