#!/bin/sh
# SPDX-License-Identifier: MIT
# The main job on the bundled default.  usage: demo.sh BUILDDIR
set -eu
b=${1:?usage: demo.sh BUILDDIR}
for t in nesa-profile nesa-partition nesa-quantize nesa-decompose nesa-run-shard nesa-route; do
	"$b/tools/$t" -V | head -n 1
done
