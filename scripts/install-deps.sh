#!/bin/sh -
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Install the Debian 12 packages that building, testing, benchmarking and
# packaging (scripts/check-deb.sh) nbdkit-autodecomp need, if any are
# missing.  Uses sudo when not root.
#   scripts/install-deps.sh             install what is missing
#   scripts/install-deps.sh --missing   only print what is missing
set -e

# (nbdfuse is in libnbd-bin on Debian 12: the package named nbdfuse
# there is virtual, never "installed", so listing it would run apt-get
# every time.)
packages="
  build-essential autoconf automake libtool pkg-config perl
  nbdkit nbdkit-plugin-dev
  liblzma-dev libzstd-dev zlib1g-dev libdeflate-dev libisal-dev libbz2-dev libxxhash-dev
  libnbd-bin libnbd-dev python3-libnbd fuse3
  qemu-utils qemu-system-x86 fio nginx-light curl busybox-static
  xz-utils zstd gzip pigz isal bzip2 lbzip2 lzip plzip tabix xxhash e2fsprogs python3
  clang libclang-rt-14-dev
  debhelper dpkg-dev
"

missing=
for p in $packages; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
       grep -q 'install ok installed'; then
    missing="$missing $p"
  fi
done
if [ "${1:-}" = --missing ]; then
  # shellcheck disable=SC2086  # one line, without the leading space
  echo $missing
  exit 0
fi
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing"
if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing
