#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-zstd-merged-frames.sh: zeroed bytes that merge two zstd frames.
#
# The image is the small image of test-corrupt-matrix.sh, as plain
# zstd frames of 256 KiB each with content checksums and no seek table
# (its "zstd-frames" shape).  The damage sets to zero every byte from
# the first block header of frame K to the first block header of a later
# frame J with the same content size (their distance a multiple of 3,
# the size of a block header).  The zero bytes read as empty raw blocks
# that are not last, so frame K's blocks become frame J's: frame K now
# decodes to frame J's content with frame J's checksum, the frames from
# K to J are gone and everything after them is shifted.  The file is a
# valid zstd file (zstd -t passes; this is checked, so the test keeps
# testing that), and no checksum can tell: only the empty blocks, which
# no encoder writes, give it away.  (corrupt-matrix variant zstd-frames:495
# of AUTODECOMP_SEED=871819172 was one such file.)
#
# Served with --filter=$FILTER, with and without
# autodecomp-verify-offsets=true, every read must either fail or return
# the original bytes (random-reads.py --allow-errors --max-wrong-bytes 0,
# a sweep of the whole export first).  The autodecomp filter must refuse
# the export, naming the frame and the offset of the empty block.  The
# undamaged file is served whole and right (libzstd writes no such block).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
for c in zstd split; do requires "$c"; done
setup_corpus
make_tmpdir

img=$tmp/small.img
{
    dd if="$CORPUS/disk.img" bs=1K count=1024 status=none
    dd if="$CORPUS/disk.img" bs=1K skip=4608 count=256 status=none
    dd if="$CORPUS/disk.img" bs=1K skip=7168 count=$(( 1536 * 1024 - 4321 )) \
        iflag=count_bytes status=none
} > "$img"
[ "$(stat -c %s "$img")" -eq $(( 2816 * 1024 - 4321 )) ] || fail "could not cut $img"

mkdir -p "$tmp/parts"
split -b 256K -a 4 "$img" "$tmp/parts/p"
for p in "$tmp"/parts/p*; do zstd -3 -q -c "$p"; done > "$tmp/frames.zst"
rm -rf "$tmp/parts"
filter_handles "$tmp/frames.zst" || skip "$FILTER does not serve zstd"

# Zero the bytes between the first block headers of frames K and J.
bad=$tmp/merged.zst
/usr/bin/python3 - "$tmp/frames.zst" "$bad" <<'PYEOF' > "$tmp/damage.txt" ||
import sys

data = bytearray(open(sys.argv[1], "rb").read())
frames = []                     # (offset, first block header, size, checksum)
pos = 0
while pos < len(data):
    assert data[pos:pos + 4] == b"\x28\xb5\x2f\xfd", "bad magic at %d" % pos
    fhd = data[pos + 4]
    single, fcs_flag, checksum, did = fhd >> 5 & 1, fhd >> 6, fhd >> 2 & 1, fhd & 3
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    hdr = 5 + (0 if single else 1) + (0, 1, 2, 4)[did] + fcs_len
    fcs = int.from_bytes(data[pos + hdr - fcs_len:pos + hdr], "little")
    fcs += 256 if fcs_len == 2 else 0
    p, last = pos + hdr, False
    while not last:
        bh = int.from_bytes(data[p:p + 3], "little")
        last, btype, bsize = bh & 1, bh >> 1 & 3, bh >> 3
        assert not (bsize == 0 and not last), "empty block at %d" % p
        p += 3 + (1 if btype == 1 else bsize)
    p += 4 if checksum else 0
    frames.append((pos, pos + hdr, fcs if fcs_len else None, checksum))
    pos = p
pairs = [(j - k, k, j) for k in range(len(frames)) for j in range(k + 1, len(frames))
         if frames[k][2] is not None and frames[k][2] == frames[j][2]
         and frames[k][3] and frames[j][3]
         and (frames[j][1] - frames[k][1]) % 3 == 0]
assert pairs, "no two frames to merge"
_, k, j = min(pairs)
start, end = frames[k][1], frames[j][1]
data[start:end] = bytes(end - start)
open(sys.argv[2], "wb").write(data)
print("frames %d..%d of %d: zero bytes %d..%d" % (k, j, len(frames), start, end - 1))
PYEOF
    fail "could not make $bad"
note "damage: $(cat "$tmp/damage.txt")"

# The damaged file is a valid zstd file that decodes to less.
zstd -q -t "$bad" || fail "$bad is not a valid zstd file: the test makes the wrong damage"
dsize=$(zstd -q -dc "$bad" | wc -c)
[ "$dsize" -lt "$(stat -c %s "$img")" ] ||
    fail "$bad decodes to $dsize bytes, not fewer than the original"

# read_all TAG FILE [ARGS...]: serve FILE, read it all; with --allow-errors
# in ARGS, errors are allowed but not wrong bytes.
read_all ()
{
    local tag=$1 file=$2 rc=0; shift 2
    start_nbdkit "$tag" --filter="$FILTER" file "$file" "${extra[@]}"
    tlimit 300 /usr/bin/python3 "$srcdir/random-reads.py" --label "$tag" \
        --uri "$uri" --original "$img" "$@" --count 60 --max-len 512KiB \
        --seed 1 > "$tmp/$tag.out" 2>&1 || rc=$?
    nbdkit_alive || { cat "$tmp/$tag.out" >&2; fail "$tag: nbdkit died"; }
    if [ "$rc" -ne 0 ]; then
        cat "$tmp/$tag.out" >&2
        fail "$tag: wrong bytes or no answer (see above)"
    fi
    note "$(tail -n 2 "$tmp/$tag.out" | tr '\n' ' ')"
    stop_nbdkit
}

for v in default verify; do
    extra=()
    if [ "$v" = verify ]; then
        is_autodecomp || continue
        extra=(autodecomp-verify-offsets=true)
    fi
    read_all "orig-$v" "$tmp/frames.zst"
    read_all "merged-$v" "$bad" --allow-errors --max-wrong-bytes 0 --sweep 256KiB
    if is_autodecomp; then
        grep -q 'refused=1' "$tmp/merged-$v.out" ||
            fail "merged-$v: the export was not refused"
        grep -q "zstd.*frame [0-9]* at offset [0-9]*: block at offset [0-9]* is empty" \
             "$nbdkit_log" || { cat "$nbdkit_log" >&2; fail "merged-$v: no error naming the empty block"; }
        note "merged-$v: $(grep -m1 'is empty' "$nbdkit_log")"
    fi
done
note "ok ($(elapsed))"
