#!/bin/sh
# SPDX-License-Identifier: MIT
# One command from a fresh Debian 12 machine to a working nesa:
#   sh scripts/quickstart.sh demo    install dependencies, build, run the demo
#   sh scripts/quickstart.sh check   install dependencies, build, run the full test suite
# The build happens in ./build so the source tree stays clean.
set -eu
mode=${1:-demo}
case $mode in demo|check) ;; *) echo "usage: sh scripts/quickstart.sh demo|check" >&2; exit 64;; esac
top=$(cd "$(dirname "$0")/.." && pwd)

# Debian packages: the build, the libraries, and what the tests drive
# (an OpenSSH server for the ssh pipeline tests, mandoc to lint man pages).
pkgs="build-essential autoconf automake libtool pkg-config libopenblas-dev liblapacke-dev
      zlib1g-dev libarchive-dev libjansson-dev libsodium-dev libcmocka-dev
      openssh-server openssh-client mandoc jq"
missing=
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "quickstart: installing$missing" >&2
	if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
	$sudo apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $missing >&2
fi

cd "$top"
[ -x configure ] || autoreconf -fi >&2
mkdir -p build
cd build
[ -f Makefile ] || ../configure -q >&2
make -s -j"$(nproc)" >&2
case $mode in
demo) sh "$top/scripts/demo.sh" "$top/build" ;;
check) make -s -j"$(nproc)" check ;;
esac
