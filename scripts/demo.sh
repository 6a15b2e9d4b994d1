#!/bin/sh
# SPDX-License-Identifier: MIT
# The main job on the bundled default: the story model in share/models is
# cut into 3 stages, each stage runs as its own nesa-run-shard process, and
# nesa-route drives them to write a story.
#   usage: demo.sh BUILDDIR [PROMPT]
set -eu
b=${1:?usage: demo.sh BUILDDIR [PROMPT]}
prompt=${2:-Once upon a time}
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/nesa-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$b/tools/nesa-partition" -q -o "$work" --stages 3 "$top/share/models/story/model.bin"
echo "nesa demo: share/models/story/model.bin cut into 3 stages, run as 3 processes:" >&2
jq -r '.stages[] | "  \(.archive): blocks \(.blocks.first)..\(.blocks.first + .blocks.count - 1)"' \
	"$work/plan.json" >&2
"$b/tools/nesa-route" -v --plan "$work/plan.json" -p "$prompt" -T 0.8 -P 0.95 -s 42 -l 200
