#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# setup-corpus.sh: make sure $CORPUS holds the test corpus.
#
# Runs $top_srcdir/corpus/make-corpus.sh "$CORPUS" 64 when the corpus is
# missing or incomplete, then adds the tests' extra shapes in $CORPUS/extra/.
# Everything happens once, under an flock, so tests run by `make -j2 check`
# (which each call this first) do not build it twice.  A tool the corpus
# needs that is missing is a failure (scripts/install-deps.sh installs them
# all), not a skip: without the corpus no test can say anything.
#
# The list of pairs the tests use is corpus_pairs in functions.sh; the files
# made here must match it.

corpus_only=1
. "${srcdir:-$(dirname "$0")}/functions.sh"

make_corpus=$top_srcdir/corpus/make-corpus.sh
mk_seekable=$top_srcdir/corpus/mk-seekable.py
# v2: the lzip shapes (disk.img.lz, disk-1member.img.lz, extra/odd.img.lz).
stamp=$CORPUS/.autodecomp-corpus-v2

# Fast path: already built.
if [ -f "$stamp" ]; then exit 0; fi

[ -f "$make_corpus" ] || fail "$make_corpus not found"
for c in xz zstd gzip bgzip bzip2 lbzip2 lzip plzip xxhsum mkfs.ext4 split \
         flock; do
    command -v "$c" >/dev/null 2>&1 ||
        fail "$c is not installed (scripts/install-deps.sh installs it)"
done

mkdir -p "$(dirname "$CORPUS")"
lock=$CORPUS.lock
exec 9>>"$lock"
flock 9
# Someone else may have built it while we waited.
if [ -f "$stamp" ]; then exit 0; fi

mkdir -p "$CORPUS"
progress "building the corpus in $CORPUS (once; a few minutes)"

# A compressed file left half-written by an interrupted earlier run would be
# kept by make-corpus.sh (it only tests -s), so check every file it made and
# remove the bad ones before running it (again).
verify_file ()
{
    case "$1" in
        *.xz) xz -t "$1" ;;
        *.zst) zstd -q -t "$1" ;;
        *.gz|*.bgz) gzip -t "$1" ;;
        *.bz2) bzip2 -t "$1" ;;
        *.lz) lzip -t "$1" ;;
        *) return 0 ;;
    esac
}
for attempt in 1 2; do
    rc=0
    bash "$make_corpus" "$CORPUS" 64 >"$CORPUS/make-corpus.log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$CORPUS/make-corpus.log" >&2
        fail "make-corpus.sh failed (exit $rc)"
    fi
    bad=0
    for f in "$CORPUS"/*.xz "$CORPUS"/*.zst "$CORPUS"/*.gz "$CORPUS"/*.bgz \
             "$CORPUS"/*.bz2 "$CORPUS"/*.lz; do
        [ -f "$f" ] || continue
        if ! verify_file "$f" 2>/dev/null; then
            note "$f is damaged; removing it and rebuilding"
            rm -f "$f"; bad=1
        fi
    done
    [ "$bad" -eq 0 ] && break
done
[ "$bad" -eq 0 ] || fail "corpus files still damaged after a rebuild"
[ "$(stat -c %s "$CORPUS/disk.img")" -eq $(( 64 * 1024 * 1024 )) ] ||
    fail "$CORPUS/disk.img is not 64 MiB"

# ---------------------------------------------------------------- extras
# Each is written to a temporary name in extra/ and renamed when complete.
extra=$CORPUS/extra
mkdir -p "$extra"
work=$(mktemp -d "$extra/.work.XXXXXX")
cleanup_fn rm -rf "$work"
img=$CORPUS/disk.img

# mk NAME COMMAND...: run COMMAND (stdout = the new file) unless NAME exists.
mk ()
{
    local name=$1; shift
    [ -s "$extra/$name" ] && return 0
    progress "making extra/$name ($(elapsed))"
    "$@" > "$work/$name"
    mv -f "$work/$name" "$extra/$name"
}
# mk_sh NAME 'SHELL TEXT': as mk, with a shell pipeline ($1 = input image).
mk_sh ()
{
    local name=$1 text=$2 in=$3
    [ -s "$extra/$name" ] && return 0
    progress "making extra/$name ($(elapsed))"
    bash -c "set -eo pipefail; $text" _ "$in" "$work" > "$work/$name"
    mv -f "$work/$name" "$extra/$name"
}

# halves (for multi-stream xz and concatenated bzip2) and thirds (gzip).
split -n 2 -d "$img" "$work/half."
split -n 3 -d "$img" "$work/third."

mk disk-1m.img.xz         xz -6 -T2 --block-size=1MiB -c "$img"
mk_sh disk-multistream.img.xz 'xz -6 -T2 --block-size=4MiB -c "$2/half.00"; xz -6 -T2 --block-size=4MiB -c "$2/half.01"' "$img"
mk disk-sha256.img.xz     xz -6 -T2 --check=sha256 -c "$img"
if [ ! -s "$extra/disk-seekable-nosum.img.zst" ]; then
    /usr/bin/python3 "$mk_seekable" "$img" "$work/disk-seekable-nosum.img.zst" 1048576 --no-sum
    mv -f "$work/disk-seekable-nosum.img.zst" "$extra/"
fi
# zstd reading a pipe does not know the size: frames without content size
mk_sh disk-nosize.img.zst 'cat "$1" | zstd -3 -q -c' "$img"
mk_sh disk-frames-nosize.img.zst 'mkdir "$2/fr"; split -b 1M -a 5 "$1" "$2/fr/p"; for p in "$2"/fr/p*; do cat "$p" | zstd -3 -q -c; done' "$img"
mk_sh disk-multimember.img.gz 'for p in "$2"/third.*; do gzip -6 -c "$p"; done' "$img"
mk disk-bzip2.img.bz2     bzip2 -9 -c "$img"
mk_sh disk-cat.img.bz2 'bzip2 -9 -c "$2/half.00"; bzip2 -9 -c "$2/half.01"' "$img"
if command -v pbzip2 >/dev/null 2>&1; then
    mk disk-pbzip2.img.bz2 pbzip2 -9 -p2 -c "$img"
fi

# odd size: 64 MiB - 12345 bytes, in each format
odd=$extra/odd.img
if [ ! -s "$odd" ]; then
    head -c $(( 64 * 1024 * 1024 - 12345 )) "$img" > "$work/odd.img"
    mv -f "$work/odd.img" "$odd"
fi
mk odd.img.xz   xz -6 -T2 --block-size=4MiB -c "$odd"
mk odd.img.zst  zstd -3 -q -c "$odd"
if [ ! -s "$extra/odd-seekable.img.zst" ]; then
    /usr/bin/python3 "$mk_seekable" "$odd" "$work/odd-seekable.img.zst" 1048576
    mv -f "$work/odd-seekable.img.zst" "$extra/"
fi
mk odd.img.gz   gzip -6 -c "$odd"
mk odd.img.bgz  bgzip -c "$odd"
mk odd.img.bz2  lbzip2 -9 -n2 -c "$odd"
# 4 MiB members, the last one partial
mk odd.img.lz   plzip -6 -n2 -B 4MiB -c "$odd"

# Every pair's files must now exist.
corpus_pairs | while read -r comp orig; do
    [ -s "$comp" ] || fail "corpus file $comp is missing"
    [ -s "$orig" ] || fail "corpus file $orig is missing"
done

touch "$stamp"
note "corpus ready ($(elapsed))"
