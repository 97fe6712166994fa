#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-zero-memo.sh: a frame is reported as zeros by its compressed bytes
# only where that proves it.
#
# Extents decode frames that compress very well to see whether they are
# zeros, and remember the bytes of those that are: a later frame with the
# same bytes and the same index entry is zeros without a decode.  Made here,
# from a disk of 1 MiB of random bytes, then 1 MiB runs of zeros with data
# between them:
#  1. BGZF, xz (1 MiB blocks) and seekable zstd (1 MiB frames): a block
#     status walk reports holes only where the disk is zeros, at least one
#     of them proven by a frame seen before (the nbdkit -v summary), and
#     nbdcopy (which skips holes) copies the disk byte for byte;
#  2. the seekable zstd with the seek table's checksum of one frame of
#     zeros changed (the frame's bytes are the same as its neighbours'):
#     that frame's block status and read fail, the other zero frames are
#     still holes, one of them after it (so the memo was there to
#     misuse), and the data reads right.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "FILTER=$FILTER is not the autodecomp filter"
requires nbdkit
requires nbdcopy
requires bgzip
requires xz
requires zstd
requires xxhsum
requires_python_nbd
make_tmpdir

MiB=1048576
# Frames: 0 random, 1-3 zeros, 4 random, 5-7 zeros.
disk=$tmp/disk.img
{
    head -c $MiB /dev/urandom
    head -c $((3 * MiB)) /dev/zero
    head -c $MiB /dev/urandom
    head -c $((3 * MiB)) /dev/zero
} > "$disk"

bgzip -c "$disk" > "$tmp/disk.img.bgz"
xz -c -T1 --block-size=1MiB "$disk" > "$tmp/disk.img.xz"
/usr/bin/python3 "$srcdir/../corpus/mk-seekable.py" "$disk" "$tmp/disk.img.zst" $MiB

# The seek table's checksum of frame 6 (zeros, like 5 and 7) made wrong:
# entries of 12 bytes before the 9-byte footer.
cp "$tmp/disk.img.zst" "$tmp/lying.img.zst"
/usr/bin/python3 - "$tmp/lying.img.zst" <<'PYEOF'
import struct, sys
path = sys.argv[1]
d = bytearray(open(path, "rb").read())
n = struct.unpack_from("<I", d, len(d) - 9)[0]
entry = len(d) - 9 - 12 * n + 12 * 6
struct.pack_into("<I", d, entry + 8, struct.unpack_from("<I", d, entry + 8)[0] ^ 1)
open(path, "wb").write(d)
PYEOF

# walk URI ORIG [BAD_FRAME]: block status over the export, one request
# per MiB; every hole must be zeros in ORIG.  With BAD_FRAME, that frame's
# block status and read must fail.  Prints "holes=N".
walk ()
{
    tlimit 120 /usr/bin/python3 - "$@" <<'PYEOF'
import sys
import nbd
uri, orig = sys.argv[1], sys.argv[2]
bad = int(sys.argv[3]) if len(sys.argv) > 3 else -1
MiB = 1 << 20
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
data = open(orig, "rb").read()
holes = errors = 0
for frame in range(h.get_size() // MiB):
    off = frame * MiB
    got = []
    def cb(metacontext, offset, entries, err):
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    try:
        h.block_status(MiB, off, cb)
    except nbd.Error as e:
        if frame != bad:
            sys.exit("block status of frame %d failed: %s" % (frame, e))
        try:
            h.pread(4096, off)
            sys.exit("frame %d: block status failed, but its read did not" % frame)
        except nbd.Error as e2:
            print("frame %d: block status and read fail: %s" % (frame, e2))
            errors += 1
        continue
    if frame == bad:
        sys.exit("frame %d: block status did not fail: %s" % (frame, got))
    length, flags = got[0]
    if flags & nbd.STATE_ZERO:
        if data[off:off + min(length, MiB)].count(0) != min(length, MiB):
            sys.exit("frame %d is reported zero but is not" % frame)
        holes += 1
    elif frame != bad and h.pread(MiB, off) != data[off:off + MiB]:
        sys.exit("frame %d reads wrong" % frame)
if bad >= 0 and errors != 1:
    sys.exit("frame %d did not fail" % bad)
print("holes=%d" % holes)
PYEOF
}

# memo_hits: how many probes a frame seen before proved (-v summary).
memo_hits ()
{
    sed -n 's/.* zero probes (\([0-9]*\) proven by a frame seen before).*/\1/p' \
        "$nbdkit_log" | tail -1
}

failures=0
for img in disk.img.bgz disk.img.xz disk.img.zst; do
    start_nbdkit "$img" -v --filter="$FILTER" file "$tmp/$img"
    if ! out=$(walk "$uri" "$disk"); then
        note "$img: block status walk failed"
        failures=$((failures + 1))
    fi
    rm -f "$tmp/copy.img"
    if ! tlimit 120 nbdcopy "$uri" "$tmp/copy.img" ||
            ! cmp "$tmp/copy.img" "$disk"; then
        note "$img: nbdcopy copy differs from the disk"
        failures=$((failures + 1))
    fi
    stop_nbdkit
    hits=$(memo_hits)
    note "$img: $out, ${hits:-no} probes proven by a frame seen before"
    if [ "${hits:-0}" -lt 1 ]; then
        note "$img: no zero frame was proven by its bytes"
        failures=$((failures + 1))
    fi
done

start_nbdkit lying -v --filter="$FILTER" file "$tmp/lying.img.zst"
if ! out=$(walk "$uri" "$disk" 6); then
    echo "$out" >&2
    note "lying.img.zst: frame 6 was not refused"
    failures=$((failures + 1))
fi
stop_nbdkit
hits=$(memo_hits)
note "lying.img.zst: $out, ${hits:-no} probes proven by a frame seen before"
case $out in
    *holes=5*) ;;
    *) note "lying.img.zst: want the 5 other frames of zeros as holes"
       failures=$((failures + 1)) ;;
esac
if [ "${hits:-0}" -lt 2 ]; then
    note "lying.img.zst: want frames 2, 3 (and 5, 7) proven by their bytes"
    failures=$((failures + 1))
fi

[ $failures -eq 0 ] || fail "$failures checks failed"
