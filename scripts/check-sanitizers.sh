#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Build the library and its unit tests with AddressSanitizer +
# UndefinedBehaviorSanitizer, and with ThreadSanitizer, and run them on
# the test corpus: every image through ad-verify under ASan/UBSan, one
# image of each kind of index with four threads and two decode workers
# (progressive reads) on one shared export under TSan, the cache unit
# test, and the command line tool under both.  Run from the top of a
# configured build tree (it uses its config.h, and the test corpus, which
# it makes with tests/setup-corpus.sh when make check has not), by ./check.
set -e
cd "$(dirname "$0")/.."
top=$(pwd)
: "${CORPUS:=$top/tests/corpus}"
[ -f config.h ] || { echo "check-sanitizers: run ./configure first" >&2; exit 1; }
export CORPUS
srcdir=$top/tests top_srcdir=$top tests/setup-corpus.sh ||
  { echo "check-sanitizers: could not make the test corpus in $CORPUS" >&2; exit 1; }

libs="-llzma -lzstd -lz -ldeflate -lisal -lbz2 -lxxhash -lpthread"
srcs=$(echo lib/*.c)             # The whole library, as fuzz/build.sh.
nbd_libs=
if grep -q '^#define HAVE_LIBNBD 1' config.h; then
  nbd_libs=$(pkg-config --libs libnbd)
fi

build ()
{
  local dir=$1; shift
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  for prog in ad-verify test-cache; do
    cc -g -O1 -fno-omit-frame-pointer "$@" -I. -Ilib -o "$dir/$prog" \
       $srcs tests/unit/$prog.c $libs
  done
  # (libnbd, for URLs, when config.h says the build has it.)
  cc -g -O1 -fno-omit-frame-pointer "$@" -I. -Ilib -o "$dir/autodecomp" \
     $srcs tools/autodecomp/*.c $libs $nbd_libs
}

pairs ()
{
  local c=$CORPUS e=$CORPUS/extra
  for f in "$c"/disk*.xz "$c"/disk*.zst "$c"/disk*.gz "$c"/disk*.bgz \
           "$c"/disk*.bz2 "$c"/disk*.lz "$e"/disk*; do
    [ -f "$f" ] && echo "$f $c/disk.img"
  done
  for f in "$e"/odd.img.*  "$e"/odd-*; do
    [ -f "$f" ] && echo "$f $e/odd.img"
  done
}

echo "check-sanitizers: ASan + UBSan"
build build-asan -fsanitize=address,undefined -fno-sanitize-recover=all
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
build-asan/test-cache
n=0
while read -r comp orig; do
  # Every other image through the decode workers (as the filter reads).
  # Of those, every other one looks ahead in a thread of its own (-b).
  case $((n % 4)) in
    0) opt="-w 2" ;;
    2) opt="-w 2 -b" ;;
    *) opt="-w 0" ;;
  esac
  # shellcheck disable=SC2086
  build-asan/ad-verify -n 150 $opt "$comp" "$orig" >/dev/null
  n=$((n + 1))
done < <(pairs)
echo "check-sanitizers: ASan + UBSan: $n images verified"
# The connect-time walk of zstd frames without a content size hands
# their bytes to decode workers while it reads on: open one again and
# again, so that a walk touching what a worker has taken and freed
# shows (before 9a89f03 most of these runs failed).
nosize=$CORPUS/extra/disk-frames-nosize.img.zst
for i in $(seq 30); do
  build-asan/ad-verify -n 5 -w 2 "$nosize" "$CORPUS/disk.img" >/dev/null
done
echo "check-sanitizers: ASan + UBSan: 30 opens of $(basename "$nosize") with decode workers"
# The command line tool: info on every image, and prepare (with
# --verify) from the reader's three paths (a large frame streamed, the
# lazy gzip pass, frames through the cache) to each output format.
n=0
while read -r comp orig; do
  build-asan/autodecomp info "$comp" >/dev/null
  n=$((n + 1))
done < <(pairs)
out=$(mktemp -d)
while read -r fmt in; do
  build-asan/autodecomp prepare --quiet --verify -F "$fmt" -l 1 -T 2 \
    "$CORPUS/$in" "$out/out"
  rm -f "$out/out"
done <<LIST
zstd disk.img.zst
xz disk.img.gz
bgzf disk.img.bz2
LIST
rm -rf "$out"
echo "check-sanitizers: ASan + UBSan: autodecomp info on $n images, prepare to 3 formats"

echo "check-sanitizers: TSan"
build build-tsan -fsanitize=thread
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
build-tsan/test-cache
# One image of each shape of index (TSan is slow: the main corpus only).
n=0
for f in disk.img.xz disk-1block.img.xz disk-seekable.img.zst disk.img.zst \
         disk.img.gz disk.img.bgz disk.img.bz2 disk.img.lz disk-1member.img.lz; do
  build-tsan/ad-verify -t 4 -c 8000000 -n 120 -w 2 -p -b "$CORPUS/$f" \
    "$CORPUS/disk.img" >/dev/null
  n=$((n + 1))
done
echo "check-sanitizers: TSan: $n images verified with 4 threads, 2 decode workers and a read-ahead thread"
# The tool's compressing threads beside the library's decode workers.
out=$(mktemp -d)
for spec in "zstd disk.img.xz" "bgzf disk.img.bgz"; do
  set -- $spec
  build-tsan/autodecomp prepare --quiet --verify -F "$1" -l 1 -T 2 \
    "$CORPUS/$2" "$out/out"
  rm -f "$out/out"
done
rm -rf "$out"
echo "check-sanitizers: TSan: autodecomp prepare --verify on 2 images"
