#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-not-seekable.sh: the filter warns, once at connect time, when an
# image holds a frame larger than 32 MiB that has data in it (a random
# read there waits for the frame to be decoded from its start), and
# only then.  Frames known to be all zeros are never decoded, so the
# 45 MB all-zero blocks of a bzip2 -9 image of a mostly empty disk must
# not set it off; 45 MB blocks of one other byte must.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "FILTER=$FILTER is not the autodecomp filter"
requires nbdkit
requires nbdinfo
requires bzip2
requires xz
make_tmpdir

head -c 100M /dev/zero | bzip2 -9 > "$tmp/zeros.bz2"
head -c 100M /dev/zero | tr '\0' 'A' | bzip2 -9 > "$tmp/letters.bz2"
head -c 40M /dev/urandom > "$tmp/random.img"
xz -0 -T1 --block-size=48MiB -c "$tmp/random.img" > "$tmp/one-block.xz"
xz -0 -T1 --block-size=4MiB -c "$tmp/random.img" > "$tmp/blocks.xz"

# file, whether the warning is expected
while read -r f want; do
    start_nbdkit srv --filter="$FILTER" file "$tmp/$f"
    nbdinfo --size "$uri" >/dev/null || fail "$f: nbdinfo failed"
    stop_nbdkit
    if grep -q 'is not seekable' "$nbdkit_log"; then got=yes; else got=no; fi
    [ "$got" = "$want" ] ||
        fail "$f: warning expected: $want, logged: $got"
    note "$f: warning $got, as expected"
done <<LIST
zeros.bz2 no
letters.bz2 yes
one-block.xz yes
blocks.xz no
LIST
