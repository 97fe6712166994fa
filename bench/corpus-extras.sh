#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# bench/corpus-extras.sh DIR [--qcow2]
#
# The shapes the benchmarks measure beyond corpus/make-corpus.sh's, made
# from DIR/disk.img into DIR (bench/run and bench/remote share them):
# disk-16m.img.xz (xz -6 -T2, 16 MiB blocks), disk-frames2m.img.zst
# (2 MiB pieces, zstd -3 each, concatenated), disk-seekable64k.img.zst
# (mk-seekable.py, 64 KiB frames), and with --qcow2 disk-zstd.qcow2 and
# disk-zlib.qcow2 (qemu-img convert -c).  Existing files are reused;
# every file is written under a temporary name and renamed when complete.
set -euo pipefail
dir=${1:?usage: corpus-extras.sh DIR [--qcow2]}
qcow2=0
[ "${2:-}" = --qcow2 ] && qcow2=1
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$dir"
[ -s disk.img ] || { echo "corpus-extras.sh: $dir/disk.img missing" >&2; exit 1; }

if [ ! -s disk-16m.img.xz ]; then
  xz -6 -T2 --block-size=16MiB -k -c disk.img > disk-16m.img.xz.tmp
  mv disk-16m.img.xz.tmp disk-16m.img.xz
fi
if [ ! -s disk-frames2m.img.zst ]; then
  tmp=$(mktemp -d); split -b 2M -a 5 disk.img "$tmp/p"
  for p in "$tmp"/p*; do zstd -3 -q -c "$p"; done > disk-frames2m.img.zst.tmp
  rm -rf "$tmp"; mv disk-frames2m.img.zst.tmp disk-frames2m.img.zst
fi
if [ ! -s disk-seekable64k.img.zst ]; then
  /usr/bin/python3 "$top/corpus/mk-seekable.py" disk.img disk-seekable64k.img.zst.tmp 65536
  mv disk-seekable64k.img.zst.tmp disk-seekable64k.img.zst
fi
if [ $qcow2 = 1 ]; then
  for c in zstd zlib; do
    if [ ! -s disk-$c.qcow2 ]; then
      qemu-img convert -O qcow2 -c -o compression_type=$c disk.img disk-$c.qcow2.tmp
      mv disk-$c.qcow2.tmp disk-$c.qcow2
    fi
  done
fi
