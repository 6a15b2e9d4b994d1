#!/bin/sh
# nesa-quantize --stream between two stages of stories260K: the hidden
# states of stage 0 re-encoded with each wire codec (the frame's codec byte
# names it, offset 7 of the header), stage 1 run on them, and the next-token
# choice of every position compared with the f32 hop.  Also as a pipe, and
# a damaged stream refused.
. "$(dirname "$0")/lib.sh"
need_data stories260K
S=$NESA_DATA/stories260K

# int32 tokens [8] as a .npy: BOS and the start of the reference story.
npy_i32() {
	h="{'descr': '<i4', 'fortran_order': False, 'shape': ($#,), }"
	while [ ${#h} -lt 117 ]; do h="$h "; done
	printf '\223NUMPY\001\000\166\000%s\n' "$h"
	for v; do
		printf "\\$(printf %03o $((v & 255)))\\$(printf %03o $((v >> 8 & 255)))\\000\\000"
	done
}

# argmax FILE.npy: the index of the largest of each row of 512 logits.
argmax() {
	skip=$((10 + $(od -An -tu2 -j8 -N2 "$1")))
	od -An -tf4 -v -j "$skip" "$1" | tr -s ' ' '\n' | sed '/^$/d' |
		awk '{ i = (NR - 1) % 512; if (i == 0 || $1 > m) { m = $1; a = i } if (i == 511) print a }'
}

expect_exit 0 nesa-partition -o "$T/p" --split 2 "$S/stories260K.bin"
npy_i32 1 403 407 261 378 426 281 1 >"$T/tok.npy" || framework_failure "cannot write tokens"
expect_exit 0 nesa-run-shard -i "$T/tok.npy" -o "$T/h.nst" "$T/p/stage-00.nsa"
expect_exit 0 nesa-run-shard -i "$T/h.nst" -o "$T/ref.nst" "$T/p/stage-01.nsa"
expect_exit 0 nesa-quantize --stream --codec f32 -i "$T/ref.nst" -o "$T/ref.npy"
argmax "$T/ref.npy" >"$T/ref.top"
[ "$(wc -l <"$T/ref.top")" -eq 8 ] || framework_failure "expected 8 rows of logits"

for c in q8_0:16 dyn8:18 dyn8_64:18 q8o:36 bf16:2 f16:1; do
	codec=${c%:*} id=${c#*:}
	expect_exit 0 nesa-quantize -f --stream --codec "$codec" -i "$T/h.nst" -o "$T/c.nst" || continue
	got=$(od -An -tu1 -j7 -N1 "$T/c.nst" | tr -d ' ')
	[ "$got" = "$id" ] || fail_ "--codec $codec: frame codec $got, expected $id"
	expect_exit 0 nesa-run-shard -f -i "$T/c.nst" -o "$T/o.nst" "$T/p/stage-01.nsa" || continue
	expect_exit 0 nesa-quantize -f --stream --codec f32 -i "$T/o.nst" -o "$T/o.npy"
	argmax "$T/o.npy" >"$T/o.top"
	compare "$T/ref.top" "$T/o.top" || fail_ "--codec $codec changed a next-token choice"
done
# 8 rows of 64: 2048 f32 bytes become 8 * 2 * 34 in q8_0.
nesa-quantize --stream --codec q8_0 <"$T/h.nst" >"$T/pipe.nst" || fail_ "the filter failed in a pipe"
[ "$(wc -c <"$T/pipe.nst")" -eq $(( $(wc -c <"$T/h.nst") - 2048 + 8 * 2 * 34 )) ] ||
	fail_ "q8_0 stream is $(wc -c <"$T/pipe.nst") bytes"

head -c 100 "$T/h.nst" >"$T/cut.nst"
expect_exit 65 nesa-quantize --stream -i "$T/cut.nst" -o "$T/x.nst"
[ -e "$T/x.nst" ] && fail_ "a failed filter left an output behind"
exit $fail
