#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# The lazy gzip indexing pass (one member, indexed as far as reads
# need), through lib/ without nbdkit (unit/gzip-lazy): a sequential
# read by 4 threads decodes every span once (in the pass, which gives
# it to the cache: the frame decode counter stays at 0), and an EIO
# from the source while the pass runs is not remembered: once the
# errors stop, the same export serves every byte right.  Every byte is
# compared with the original.
corpus_only=1
. "${srcdir:-$(dirname "$0")}/functions.sh"

: "${GZIP_LAZY:=$top_builddir/tests/unit/gzip-lazy}"
[ -x "$GZIP_LAZY" ] || fail "gzip-lazy not built: $GZIP_LAZY"
setup_corpus

n=0
for pair in "$CORPUS/disk.img.gz $CORPUS/disk.img" \
            "$CORPUS/extra/odd.img.gz $CORPUS/extra/odd.img"; do
    set -- $pair
    [ -f "$1" ] || fail "$1 is missing from the corpus"
    rc=0
    tlimit 300 "$GZIP_LAZY" -s $((RANDOM + 1)) -p 30 "$1" "$2" || rc=$?
    case $rc in
        0) n=$((n + 1)) ;;
        77) note "$1 is not indexed lazily: skipped" ;;
        *) fail "$1 (exit $rc)" ;;
    esac
done
[ "$n" -gt 0 ] || skip "no corpus file is indexed lazily"
note "$n files checked"
