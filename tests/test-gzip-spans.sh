#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# gzip checkpoints are snapshots of ISA-L's inflate state, taken exactly
# every autodecomp-gzip-span bytes of output wherever that falls: inside
# a stored block, in the middle of a match, right after a block header.
# This makes gzip files of the shapes that put a span's end in such
# places (incompressible data, which encoders store; long runs of zeros,
# all matches; text; gzip -1 and -9; pigz, which ends each 128 KiB of
# input with an empty stored block; several members, one of them empty)
# and reads them through the library (ad-verify) with small spans and a
# cache too small to keep them, so that random reads decode spans from
# their snapshots in any order.  Every byte is compared with the
# original.
corpus_only=1
. "${srcdir:-$(dirname "$0")}/functions.sh"
: "${AD_VERIFY:=$top_builddir/tests/unit/ad-verify}"
[ -x "$AD_VERIFY" ] || fail "ad-verify not built: $AD_VERIFY"
requires pigz
make_tmpdir

# 20 MB of mixed content: random, zeros, text, a repeated 300-byte
# pattern (matches that cross span ends).
{
    head -c 3000000 /dev/urandom
    head -c 6000000 /dev/zero
    head -c 3000000 /dev/urandom | base64
    pattern=$(head -c 225 /dev/urandom | base64 -w0)
    for i in $(seq 13300); do echo "$pattern"; done
    head -c 1234567 /dev/urandom
} > "$tmp/mixed"

gzip -6 -c "$tmp/mixed" > "$tmp/mixed-6.gz"
gzip -1 -c "$tmp/mixed" > "$tmp/mixed-1.gz"
gzip -9 -c "$tmp/mixed" > "$tmp/mixed-9.gz"
pigz -p 2 -c "$tmp/mixed" > "$tmp/mixed-pigz.gz"
# Several members, one empty: decoded by the pass at open.
head -c 7000000 "$tmp/mixed" | gzip -c > "$tmp/multi.gz"
gzip -c < /dev/null >> "$tmp/multi.gz"
tail -c +7000001 "$tmp/mixed" | gzip -1 -c >> "$tmp/multi.gz"

n=0
for f in mixed-6 mixed-1 mixed-9 mixed-pigz multi; do
    for span in 32768 100003 1048576; do
        tlimit 300 "$AD_VERIFY" -g $span -c $((4 * span)) -n 300 \
            -s $((RANDOM + 1)) "$tmp/$f.gz" "$tmp/mixed" >/dev/null ||
            fail "$f.gz with $span-byte spans"
        n=$((n + 1))
    done
done
note "$n file and span combinations verified"
