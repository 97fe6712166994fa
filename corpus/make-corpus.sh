#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# make-corpus.sh OUTDIR [SIZE_MIB]
#
# Makes the reference disk image the tests and benchmarks measure on, and
# its compressed shapes, with the standard tools.  The image is an ext4
# filesystem about 55 % full of real files from this machine (manuals,
# documentation, libraries, programs, translations, interleaved so that
# every kind is present at any size), one incompressible file (4 % of the
# image, random bytes), a known marker file, and free space left as zeros:
# the mix a real root disk has.
#
# Every output is written under a temporary name and renamed when complete,
# so an interrupted run leaves nothing half-written behind; a second run
# makes only what is missing.  Prints a table of what it made.
#
# Needs: e2fsprogs xz-utils zstd gzip tabix (bgzip) lbzip2 lzip plzip xxhash
# python3 coreutils (scripts/install-deps.sh installs them).
set -euo pipefail
out=${1:?usage: make-corpus.sh OUTDIR [SIZE_MIB]}
mib=${2:-256}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
cd "$out"
T=$(nproc)
work=$(mktemp -d "$PWD/.make-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT

# make NAME SHELL-TEXT: run SHELL-TEXT (its stdout is NAME) unless NAME
# exists; $1 in the text is disk.img, $2 a scratch directory.
make_file ()
{
  local name=$1 text=$2
  [ -s "$name" ] && return 0
  mkdir -p "$work/scratch"
  bash -c "set -euo pipefail; $text" _ disk.img "$work/scratch" > "$work/$name"
  rm -rf "$work/scratch"
  mv -f "$work/$name" "$name"
}

if [ ! -s disk.img ]; then
  tree=$work/tree
  mkdir -p "$tree"
  budget=$(( mib * 1024 * 1024 * 55 / 100 ))
  # Files under 8 MiB from each directory in path order, numbered per
  # directory, then merged by number so the kinds alternate; taken until
  # the budget is spent.
  set +o pipefail
  for d in /usr/share/doc /usr/share/man /usr/lib/x86_64-linux-gnu /usr/bin /usr/share/locale; do
    [ -d "$d" ] || continue
    find "$d" -type f -size -8M -printf '%s %p\n' 2>/dev/null | sort -k2 | awk '{ print NR, $0 }'
  done | sort -n -s -k1,1 |
    awk -v b="$budget" '{ if (t + $2 > b) exit; t += $2; print $3 }' > "$work/list"
  set -o pipefail
  tar -cf - -T "$work/list" 2>/dev/null | tar -xf - -C "$tree" || :
  head -c $(( mib * 1024 * 1024 / 25 )) /dev/urandom > "$tree/random.bin"
  echo "autodecomp corpus" > "$tree/hello.txt"
  truncate -s "${mib}M" "$work/disk.img"
  mkfs.ext4 -q -F -d "$tree" "$work/disk.img"
  rm -rf "$tree"
  mv -f "$work/disk.img" disk.img
fi

make_file disk.img.xz         'xz -6 -T'"$T"' --block-size=4MiB -c "$1"'
make_file disk-1block.img.xz  'xz -3 -T1 -c "$1"'
make_file disk.img.zst        'zstd -3 -q -c "$1"'
make_file disk-frames.img.zst 'split -b 1M -a 5 "$1" "$2/p"; for p in "$2"/p*; do zstd -3 -q -c "$p"; done'
if [ ! -s disk-seekable.img.zst ]; then
  /usr/bin/python3 "$here/mk-seekable.py" disk.img "$work/s.zst" 1048576
  mv -f "$work/s.zst" disk-seekable.img.zst
fi
make_file disk.img.gz         'gzip -6 -c "$1"'
make_file disk.img.bgz        'bgzip -c "$1"'
make_file disk.img.bz2        'lbzip2 -9 -n'"$T"' -c "$1"'
make_file disk.img.lz         'plzip -6 -n'"$T"' -c "$1"'
# The real lzip: on Debian /usr/bin/lzip is an alternative that may be plzip,
# which writes a member per 16 MiB; lzip.lzip is lzip itself.
LZIP=$(command -v lzip.lzip || command -v lzip)
make_file disk-1member.img.lz '"'"$LZIP"'" -6 -c "$1"'

row () { printf '%-22s %12s  %s\n' "$1" "$(stat -c %s "$1" 2>/dev/null || echo -)" "$2"; }
printf '%-22s %12s  %s\n' file bytes "made by"
row disk.img              "ext4 (mkfs.ext4 -d): system files, random.bin, hello.txt"
row disk.img.xz           "xz -6 --block-size=4MiB (many blocks)"
row disk-1block.img.xz    "xz -3 -T1 (one block)"
row disk.img.zst          "zstd -3 (one frame)"
row disk-frames.img.zst   "1 MiB zstd frames, concatenated, no seek table"
row disk-seekable.img.zst "zstd seekable format, 1 MiB frames, checksums in the table"
row disk.img.gz           "gzip -6 (one member)"
row disk.img.bgz          "bgzip (BGZF: 64 KiB members)"
row disk.img.bz2          "lbzip2 -9 (900 kB blocks)"
row disk.img.lz           "plzip -6 (16 MiB members)"
row disk-1member.img.lz   "lzip -6 (one member)"
