#!/bin/sh
# SPDX-License-Identifier: MIT
# Rank against perplexity for stories260K (`make bench-decompose`): every
# linear matrix decomposed at one rank at a time by
#   svd           plain truncated SVD
#   asvd          ASVD column scaling (alpha 0.5)
#   whiten        SVD-LLM whitening
#   lorc          q4_0 plus rank-r factors of its error
#   lorc-whiten   the same with whitened factors and 4 LoftQ alternations
# (activation-aware ones calibrated on 8192 tokens of the TinyStories
# excerpt), each scored by nesa-route's perplexity protocol on its first
# $NESA_BENCH_BYTES (200000) bytes, with the f32 and q4_0 figures as
# references.  Writes decompose-curve.tsv (method, rank, ppl, weight
# bytes, extra_bits: the factors' bits per weight of the decomposed
# matrices, i.e. bits over q4_0 for lorc) and decompose-curve.svg, drawn
# by this script: perplexity against rank (log scale) in two panels, the
# pure low-rank forms on a log scale, lorc on a linear one.  Both land in
# $NESA_BENCH_OUT (default .).
# Environment: NESA_BINDIR, NESA_DATA, NESA_BENCH_RANKS, NESA_BENCH_BYTES,
# NESA_BENCH_OUT.  Needs jq.
set -eu

srcdir=$(cd "$(dirname "$0")/.." && pwd)
bindir=${NESA_BINDIR:-$srcdir/tools}
data=${NESA_DATA:-$srcdir/../shared/data}
ranks=${NESA_BENCH_RANKS:-"1 2 4 8 16 24 32 48 64"}
nbytes=${NESA_BENCH_BYTES:-200000}
out=${NESA_BENCH_OUT:-.}
PATH=$bindir:$PATH

S=$data/stories260K
TXT=$data/tinystories_val_excerpt/tinystories_val_excerpt.txt
for f in "$S/stories260K.bin" "$TXT"; do
	[ -e "$f" ] || { echo "decompose-curve: reference data '$f' not found (set NESA_DATA)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "decompose-curve: needs jq" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nesa-curve.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
M="--tokenizer $S/tok512.bin $S/stories260K.bin"
CAL="--calib $TXT --limit 8192"

ppl() { nesa-route -t 1 -m "$1" --format json --bytes "$nbytes" --perplexity "$TXT" | jq .ppl; }

# The references, and the element count of the matrices every method decomposes.
nesa-decompose -q -f -T keep -o "$tmp/f32.nsa" $M
f32=$(ppl "$tmp/f32.nsa")
nesa-decompose -q -f -T lorc:q4_0:rank=0 --report --format json -o "$tmp/q4.nsa" $M >"$tmp/q4.json"
q4=$(ppl "$tmp/q4.nsa")
q4bytes=$(jq .bytes_after "$tmp/q4.json")
f32bytes=$(jq .bytes_before "$tmp/q4.json")
nw=$(jq '[.tensors[] | select(.method != "keep") | .shape[0] * .shape[1]] | add' "$tmp/q4.json")

tsv=$out/decompose-curve.tsv
printf 'method\trank\tppl\tbytes\textra_bits\n' >"$tsv"
printf 'f32\t-\t%s\t%s\t-\n' "$f32" "$f32bytes" >>"$tsv"
printf 'q4_0\t0\t%s\t%s\t0\n' "$q4" "$q4bytes" >>"$tsv"
for m in svd asvd whiten lorc lorc-whiten; do
	for r in $ranks; do
		case $m in
		svd) spec="svd:rank=$r" cal= ;;
		asvd) spec="asvd:rank=$r" cal=$CAL ;;
		whiten) spec="whiten:rank=$r" cal=$CAL ;;
		lorc) spec="lorc:q4_0:rank=$r" cal= ;;
		lorc-whiten) spec="lorc:q4_0:rank=$r:scale=whiten:iters=4" cal=$CAL ;;
		esac
		# shellcheck disable=SC2086
		nesa-decompose -q -f -T "$spec" $cal --report --format json -o "$tmp/m.nsa" $M >"$tmp/m.json"
		b=$(jq .bytes_after "$tmp/m.json")
		# The factors' bits per decomposed weight: against the archive without
		# those matrices for pure low rank, against q4_0 for lorc.
		case $m in
		lorc*) base=$q4bytes ;;
		*) base=$((f32bytes - nw * 4)) ;;
		esac
		x=$(awk -v b="$b" -v base="$base" -v n="$nw" 'BEGIN { printf "%.3f", (b - base) * 8 / n }')
		printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$r" "$(ppl "$tmp/m.nsa")" "$b" "$x" >>"$tsv"
	done
	echo "decompose-curve: $m done" >&2
done

# The table, aligned, then the plot.
column -t -s "$(printf '\t')" "$tsv"
# Two panels: the pure low-rank forms on a log perplexity scale (they span
# decades), lorc on a linear one between f32 and q4_0.
awk -F '\t' -v f32="$f32" -v q4="$q4" '
function lg(v) { return log(v) / log(10) }
function fy(v) { return logy ? lg(v) : v }
function X(r) { return px + (log(r) / log(2)) / xmax * pw }
function Y(p) { return T + ph - (fy(p) - ymin) / (ymax - ymin) * ph }
function hline(v, dash, color, label) {
	printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" stroke-dasharray=\"%s\"/>\n", px, Y(v), px + pw, Y(v), color, dash
	printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\">%s</text>\n", px + pw - 4, Y(v) - 4, color, label
}
# panel(X0, TITLE, PATTERN, LOG): axes, grid, references and the methods matching PATTERN.
function panel(x0, title, pat, lgy,    i, j, s, e, k, m, v, x, y, pts, lo, hi, ly, c) {
	px = x0 + 60; pw = PW - 80; logy = lgy
	lo = f32; hi = q4
	for (i = 1; i <= nm; i++) if (order[i] ~ pat)
		for (j = 1; j <= n[order[i]]; j++) {
			v = pp[order[i], j] + 0
			if (v < lo) lo = v
			if (v > hi) hi = v
		}
	if (logy) { ymin = lg(lo) - 0.05; ymax = lg(hi) + 0.05 }
	else { ymin = lo - (hi - lo) * 0.05; ymax = hi + (hi - lo) * 0.05 }
	printf "<text x=\"%d\" y=\"%d\" font-size=\"14\">%s</text>\n", px, T - 12, title
	printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", px, T, pw, ph
	for (e = 0; e <= xmax + 1e-9; e++) {
		x = X(2 ^ e)
		printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n", x, T, x, T + ph
		printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", x, T + ph + 16, 2 ^ e
	}
	printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">rank of every linear matrix (log scale)</text>\n", px + pw / 2, T + ph + 36
	if (logy) {
		for (k = int(ymin) - 1; k <= ymax + 1; k++)
			for (m = 1; m <= 5; m += (ymax - ymin > 3 ? 9 : m == 1 ? 1 : 3)) {
				v = m * 10 ^ k
				if (lg(v) < ymin || lg(v) > ymax) continue
				printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", px, Y(v), px + pw, Y(v)
				printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", px - 6, Y(v) + 4, v
			}
	} else {
		for (k = 0; k <= 5; k++) {
			v = ymin + (ymax - ymin) * k / 5
			printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", px, Y(v), px + pw, Y(v)
			printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n", px - 6, Y(v) + 4, v
		}
	}
	printf "<text transform=\"translate(%d,%d) rotate(-90)\" text-anchor=\"middle\">perplexity%s</text>\n", x0 + 14, T + ph / 2, logy ? " (log scale)" : ""
	hline(f32, "6 4", "black", sprintf("f32 %.3f", f32))
	hline(q4, "2 3", "gray", sprintf("q4_0 %.3f", q4))
	ly = T + 14
	for (i = 1; i <= nm; i++) {
		s = order[i]
		if (s !~ pat) continue
		c = col[i]; pts = ""
		for (j = 1; j <= n[s]; j++) pts = pts sprintf("%.1f,%.1f ", X(rk[s, j]), Y(pp[s, j]))
		printf "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>\n", c, pts
		for (j = 1; j <= n[s]; j++)
			printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", X(rk[s, j]), Y(pp[s, j]), c
		# Legend inside the panel, top right.
		printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"/>\n", px + pw - 130, ly, px + pw - 106, ly, c
		printf "<text x=\"%d\" y=\"%d\">%s</text>\n", px + pw - 100, ly + 4, s
		ly += 18
	}
}
NR == 1 || $1 == "f32" || $1 == "q4_0" { next }
{
	if (!($1 in seen)) { seen[$1] = 1; order[++nm] = $1 }
	n[$1]++; rk[$1, n[$1]] = $2; pp[$1, n[$1]] = $3
	if ($2 + 0 > rmax) rmax = $2 + 0
}
END {
	PW = 480; T = 50; ph = 360; W = 2 * PW; H = T + ph + 60
	xmax = log(rmax) / log(2)
	if (xmax <= 0) xmax = 1
	split("#1f77b4 #d62728 #2ca02c #9467bd #ff7f0e", col, " ")
	printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
	printf "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H
	printf "<text x=\"%d\" y=\"16\" font-size=\"15\" text-anchor=\"middle\">stories260K: perplexity against the rank of every linear matrix (nesa-decompose)</text>\n", W / 2
	panel(0, "low rank alone", "^(svd|asvd|whiten)$", 1)
	panel(PW, "q4_0 + low-rank compensation (lorc)", "^lorc", 0)
	print "</svg>"
}' "$tsv" >"$out/decompose-curve.svg"

# The issue's targets that this curve answers.
awk -F '\t' -v f32="$f32" -v q4="$q4" '
NR > 1 && $1 ~ /^lorc/ && $5 + 0 < 0.6 && (best == "" || $3 + 0 < best) { best = $3 + 0; bm = $1 ":" $2; bx = $5 }
NR > 1 && ($1 == "svd" || $1 == "whiten") { p[$1, $2] = $3 + 0; rs[$2] = 1 }
END {
	if (best != "")
		printf "lorc under 0.6 extra bits: best %s ppl %.4f (%s bits), closes %.0f %% of the q4_0 gap (%.4f -> %.4f): target >= 50 %% %s\n",
		    bm, best, bx, (q4 - best) / (q4 - f32) * 100, f32, q4, ((q4 - best) >= (q4 - f32) / 2 ? "met" : "MISSED")
	w = 0; t = 0
	for (r in rs) if (((("svd", r) in p)) && (("whiten", r) in p)) { t++; if (p["whiten", r] < p["svd", r]) w++ }
	printf "whiten below plain svd at %d of %d equal ranks: target %s\n", w, t, (w == t && t > 0 ? "met" : "MISSED")
}' "$tsv"
echo "decompose-curve: table in $tsv, plot in $out/decompose-curve.svg" >&2
