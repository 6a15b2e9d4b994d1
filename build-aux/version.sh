#!/bin/sh
# Prints the version from libcommon/version.h, its single source of truth.
dir=$(dirname "$0")/..
awk '/#define NESA_VERSION_MAJOR/ {a=$3} /#define NESA_VERSION_MINOR/ {b=$3}
     /#define NESA_VERSION_PATCH/ {c=$3} END {printf "%s.%s.%s", a, b, c}' "$dir/libcommon/version.h"
