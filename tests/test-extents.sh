#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-extents.sh: zeros are reported as holes, and sequential readers are
# served by read-ahead.
#
# For one image of each format family, on a fresh server with -v:
#  1. walk the whole export with NBD block status (libnbd): every extent
#     reported as a hole must be zeros in the original image; images made
#     of frames of at most 4 MiB (the corpus image has zero runs longer
#     than that) must report at least one hole, and so must one-frame
#     images, whose block status decodes into the spill as it walks;
#  2. nbdcopy the export to a file (nbdcopy skips the holes) and compare
#     it with the original byte for byte;
#  3. when nbdkit exits, its summary line says how many frames read-ahead
#     decoded: more than zero for the images with many frames.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "FILTER=$FILTER is not the autodecomp filter"
requires nbdkit
requires nbdcopy
requires_python_nbd
setup_corpus
make_tmpdir

# file, must report holes, must read ahead
cat > "$tmp/list" <<LIST
$CORPUS/disk.img.xz yes yes
$CORPUS/extra/disk-1m.img.xz yes yes
$CORPUS/disk-frames.img.zst yes yes
$CORPUS/disk-seekable.img.zst yes yes
$CORPUS/disk.img.bgz yes yes
$CORPUS/disk.img.bz2 no yes
$CORPUS/disk.img.gz no no
$CORPUS/disk.img.zst yes no
$CORPUS/disk-1block.img.xz yes no
$CORPUS/extra/odd.img.xz yes yes
$CORPUS/disk.img.lz no yes
$CORPUS/disk-1member.img.lz yes no
$CORPUS/extra/odd.img.lz yes yes
LIST

failures=0
while read -r comp want_holes want_ahead <&3; do
    name=$(basename "$comp")
    case $name in odd*) orig=$CORPUS/extra/odd.img ;; *) orig=$CORPUS/disk.img ;; esac
    start_nbdkit "$name" -v --filter="$FILTER" file "$comp"
    rc=0
    tlimit 300 /usr/bin/python3 - "$uri" "$orig" > "$tmp/$name.out" 2>&1 \
        <<'PYEOF' || rc=$?
import sys
import nbd
uri, orig = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
size = h.get_size()
if not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
    print("base:allocation not offered"); sys.exit(1)
holes = hole_bytes = 0
extents = []
off = 0
while off < size:
    got = []
    def cb(metacontext, offset, entries, err):
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(min(size - off, 2**31), off, cb)
    if not got:
        print("no extents at", off); sys.exit(1)
    for length, flags in got:
        length = min(length, size - off)
        extents.append((off, length, flags))
        off += length
        if off >= size:
            break
bad = 0
with open(orig, "rb") as f:
    for off, length, flags in extents:
        if flags & nbd.STATE_ZERO:
            holes += 1
            hole_bytes += length
            f.seek(off)
            left = length
            while left:
                chunk = f.read(min(left, 1 << 20))
                if chunk.count(0) != len(chunk):
                    print("extent at %d+%d is reported zero but is not" % (off, length))
                    bad += 1
                    break
                left -= len(chunk)
print("extents=%d holes=%d hole_bytes=%d" % (len(extents), holes, hole_bytes))
sys.exit(1 if bad else 0)
PYEOF
    result=$(tail -1 "$tmp/$name.out")
    if [ $rc -ne 0 ]; then
        cat "$tmp/$name.out" >&2
        note "$name: block status walk failed"
        failures=$((failures + 1))
    fi
    if [ "$want_holes" = yes ] && echo "$result" | grep -q ' holes=0 '; then
        note "$name: no holes reported ($result)"
        failures=$((failures + 1))
    fi
    rm -f "$tmp/copy.img"
    if ! tlimit 300 nbdcopy "$uri" "$tmp/copy.img" || ! cmp "$tmp/copy.img" "$orig"; then
        note "$name: nbdcopy copy differs from the original"
        failures=$((failures + 1))
    fi
    stop_nbdkit
    summary=$(grep -o 'frame decodes (.*' "$nbdkit_log" | tail -1)
    ahead=$(echo "$summary" | sed -n 's/^frame decodes (\([0-9]*\) by read-ahead.*/\1/p')
    note "$name: $result; $summary"
    if [ "$want_ahead" = yes ] && [ "${ahead:-0}" -eq 0 ]; then
        note "$name: sequential copy was not served by read-ahead"
        failures=$((failures + 1))
    fi
    rm -f "$tmp/copy.img"
done 3< "$tmp/list"

[ $failures -eq 0 ] || fail "$failures checks failed"
