#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# bzip2 images of unusual shapes through lib/ (ad-verify: size, a
# sequential read and random reads, every byte compared), so that the
# sizing pass's own block decoder (lib/bzip2-decode.c) meets what real
# compressors write: every level 1..9, runs of every length around the
# RLE1 limits (3, 4, 5, 255, 259, 260 equal bytes), a block that ends
# in a run, all 256 byte values, zeros, data that does not compress,
# text, one-byte and empty files, lbzip2's and pbzip2's streams, and
# several streams concatenated.  A block whose size the decoder got
# wrong would fail here: the pass's size would not match the original.
#
# Every image is checked with the pass keeping the blocks it decodes
# (ad-verify -k, the filter's autodecomp-keep-size), so that reads are
# served from what it kept; some also without keeping, with a budget
# that keeps only the first blocks, and with a tiny cache.  Streams
# with no blocks and blocks of zeros (never kept) sit between kept
# blocks, and a truncated and a damaged image must fail, never serve
# wrong bytes.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires bzip2
requires python3
: "${top_builddir:=$top_srcdir}"
: "${AD_VERIFY:=$top_builddir/tests/unit/ad-verify}"
[ -x "$AD_VERIFY" ] || fail "ad-verify not built: $AD_VERIFY"
make_tmpdir

/usr/bin/python3 - "$tmp" <<'PYEOF'
import os, random, sys
d = sys.argv[1]
rng = random.Random(7)
def put(name, data):
    open(os.path.join(d, name), "wb").write(data)
# Runs of every interesting length, each of a different byte, so that
# the RLE1 coding of the compressor is exercised at its edges.
runs = bytearray()
for n in (1, 2, 3, 4, 5, 6, 250, 251, 252, 255, 256, 258, 259, 260, 261, 1000):
    for b in (0, 0x41, 0xff):
        runs += bytes([b]) * n
        runs += bytes([rng.randrange(256)])
put("runs.img", bytes(runs) * 40)
put("ends-in-run.img", bytes(rng.randrange(256) for _ in range(5000)) + b"z" * 4)
put("ends-in-long-run.img", bytes(rng.randrange(256) for _ in range(5000)) + b"q" * 300)
put("all-bytes.img", bytes(range(256)) * 4000)
put("zeros.img", bytes(3 * 1024 * 1024))
put("random.img", os.urandom(2 * 1024 * 1024 + 12345))
words = [b"block", b"sort", b"wheeler", b"burrows", b"huffman", b"\n", b" "]
put("text.img", b"".join(rng.choice(words) for _ in range(600000)))
put("one-byte.img", b"x")
put("empty.img", b"")
mixed = bytearray()
for i in range(24):
    kind = i % 4
    n = rng.randrange(1, 400000)
    if kind == 0:
        mixed += os.urandom(n)
    elif kind == 1:
        mixed += bytes([rng.randrange(256)]) * n
    elif kind == 2:
        mixed += b"".join(rng.choice(words) for _ in range(n // 5))
    else:
        mixed += bytes(rng.randrange(4) for _ in range(n))
put("mixed.img", bytes(mixed))
PYEOF

n=0
check ()
{
    local comp=$1 orig=$2
    shift 2
    "$AD_VERIFY" -n 40 -w 2 -k 1000000000 "$@" "$comp" "$orig" \
        >"$tmp/out" 2>"$tmp/err" ||
        { cat "$tmp/err" >&2; fail "$(basename "$comp"): ad-verify failed"; }
    n=$(( n + 1 ))
}

# The number of frames the pass kept, from ad-verify's last output.
kept ()
{
    sed -n 's/.*, \([0-9]*\) frames kept by the pass$/\1/p' "$tmp/out"
}

for img in "$tmp"/*.img; do
    for level in 1 5 9; do
        bzip2 -"$level" -c "$img" > "$img.$level.bz2"
        check "$img.$level.bz2" "$img"
    done
done
for level in 2 3 4 6 7 8; do
    bzip2 -"$level" -c "$tmp/mixed.img" > "$tmp/mixed.$level.bz2"
    check "$tmp/mixed.$level.bz2" "$tmp/mixed.img"
done
if command -v lbzip2 >/dev/null 2>&1; then
    for img in "$tmp"/mixed.img "$tmp"/text.img "$tmp"/runs.img; do
        lbzip2 -n2 -9 -c "$img" > "$img.lbz2"
        check "$img.lbz2" "$img"
        lbzip2 -n2 -1 -c "$img" > "$img.lbz1"
        check "$img.lbz1" "$img"
    done
fi
if command -v pbzip2 >/dev/null 2>&1; then
    pbzip2 -p2 -b3 -c "$tmp/mixed.img" > "$tmp/mixed.pbz2"
    check "$tmp/mixed.pbz2" "$tmp/mixed.img"
fi
cat "$tmp/text.img.9.bz2" "$tmp/runs.img.1.bz2" "$tmp/zeros.img.5.bz2" \
    > "$tmp/concat.bz2"
cat "$tmp/text.img" "$tmp/runs.img" "$tmp/zeros.img" > "$tmp/concat.img"
check "$tmp/concat.bz2" "$tmp/concat.img"

# Keeping: all of it, none of it, the first blocks only, a tiny cache.
# Streams without blocks and blocks of zeros between kept blocks.
bzip2 -c < /dev/null > "$tmp/empty-stream.bz2"
cat "$tmp/empty-stream.bz2" "$tmp/mixed.img.1.bz2" "$tmp/empty-stream.bz2" \
    "$tmp/zeros.img.1.bz2" "$tmp/text.img.1.bz2" "$tmp/empty-stream.bz2" \
    "$tmp/random.img.1.bz2" "$tmp/empty-stream.bz2" > "$tmp/streams.bz2"
cat "$tmp/mixed.img" "$tmp/zeros.img" "$tmp/text.img" "$tmp/random.img" \
    > "$tmp/streams.img"
check "$tmp/streams.bz2" "$tmp/streams.img"
all=$(kept)
[ "$all" -gt 20 ] || fail "streams.bz2: only ${all:-no} blocks kept"
check "$tmp/streams.bz2" "$tmp/streams.img" -k 0
[ "$(kept)" = 0 ] || fail "streams.bz2: blocks kept with -k 0"
check "$tmp/streams.bz2" "$tmp/streams.img" -k 1500000
some=$(kept)
[ "$some" -gt 0 ] && [ "$some" -lt "$all" ] ||
    fail "streams.bz2: $some of $all blocks kept in 1500000 bytes"
check "$tmp/streams.bz2" "$tmp/streams.img" -c 1
check "$tmp/streams.bz2" "$tmp/streams.img" -c 1 -w 0
check "$tmp/mixed.img.9.bz2" "$tmp/mixed.img" -c 1 -k 3000000 -t 4

# A truncated or damaged image fails (at open: the pass checks every
# block), whatever is kept.
size=$(stat -c %s "$tmp/streams.bz2")
head -c $(( size / 2 )) "$tmp/streams.bz2" > "$tmp/truncated.bz2"
/usr/bin/python3 - "$tmp/streams.bz2" "$tmp/damaged.bz2" <<'PYEOF'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[len(data) // 3] ^= 0x10
open(sys.argv[2], "wb").write(data)
PYEOF
for bad in truncated damaged; do
    if "$AD_VERIFY" -n 40 -w 2 -k 1000000000 "$tmp/$bad.bz2" \
           "$tmp/streams.img" >"$tmp/out" 2>"$tmp/err"; then
        fail "$bad.bz2: ad-verify succeeded"
    fi
    if grep -q "WRONG BYTES" "$tmp/err"; then
        cat "$tmp/err" >&2
        fail "$bad.bz2: wrong bytes served"
    fi
    n=$(( n + 1 ))
done
note "$n bzip2 images checked"
