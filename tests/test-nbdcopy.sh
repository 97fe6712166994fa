#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-nbdcopy.sh: for every (compressed, original) pair, the export's size
# equals the original's, and nbdcopy of the whole export equals the original.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires nbdcopy
requires nbdinfo
requires cmp
setup_corpus
make_tmpdir

n=0
total=$(test_pairs | wc -l)
while read -r comp orig <&3; do
    name=$(basename "$comp")
    progress "$name ($((n+1))/$total, $(elapsed))"
    start_nbdkit "$name" --filter="$FILTER" file "$comp"
    size=$(export_size "$uri") || fail "$name: nbdinfo --size failed"
    want=$(stat -c %s "$orig")
    [ "$size" = "$want" ] || fail "$name: export size $size, original $want"
    rm -f "$tmp/out"
    tlimit 300 nbdcopy "$uri" "$tmp/out" || fail "$name: nbdcopy failed"
    cmp "$tmp/out" "$orig" || fail "$name: nbdcopy output differs from $orig"
    nbdkit_alive || fail "$name: nbdkit died"
    stop_nbdkit
    rm -f "$tmp/out"
    note "$name: size $size, nbdcopy ok ($(elapsed))"
    n=$((n+1))
done 3< <(test_pairs)
[ "$n" -gt 0 ] || skip "no pairs the filter can serve"
note "$n pairs ok ($(elapsed))"
