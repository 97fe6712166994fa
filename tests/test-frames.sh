#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-frames.sh: random access really is random access.  With
#   nbdkit -v -D autodecomp.frames=1 --filter=$FILTER file F
# the filter logs one line "autodecomp: decode frame N uoff=.. usize=.. ..."
# per frame it decodes.  For images made of many small frames (xz with 4 MiB
# and 1 MiB blocks, 1 MiB zstd frames, zstd seekable, BGZF, bzip2 blocks,
# plzip's 16 MiB lzip members), on
# a fresh server one cold 4 KiB read far into the image (60-90%) must decode
# exactly one frame: the lines logged after connecting and before the read
# are not counted.  The read lies inside one frame (offsets chosen from the
# known frame size; for bzip2, whose block edges are not known in advance, a
# read that happens to straddle two blocks is retried inside one of them).
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "FILTER=$FILTER is not the autodecomp filter"
requires nbdkit
requires_python_nbd
setup_corpus
make_tmpdir

# file, frame size in uncompressed bytes (0: not known in advance)
frame_files ()
{
    cat <<LIST
$CORPUS/disk.img.xz 4194304
$CORPUS/extra/disk-1m.img.xz 1048576
$CORPUS/disk-frames.img.zst 1048576
$CORPUS/disk-seekable.img.zst 1048576
$CORPUS/extra/disk-seekable-nosum.img.zst 1048576
$CORPUS/disk.img.bgz 65280
$CORPUS/disk.img.bz2 0
$CORPUS/extra/disk-bzip2.img.bz2 0
$CORPUS/disk.img.lz 16777216
LIST
}

seed=${AUTODECOMP_SEED:-$(( (RANDOM << 15) | RANDOM ))}
note "seed $seed"
n=0
while read -r comp fs <&3; do
    name=$(basename "$comp")
    off=
    for attempt in 1 2 3; do
        start_nbdkit "$name-$attempt" -v -D autodecomp.frames=1 \
            --filter="$FILTER" file "$comp"
        rc=0
        tlimit 120 /usr/bin/python3 - "$uri" "$nbdkit_log" "$CORPUS/disk.img" \
            "$fs" "$seed" "$off" > "$tmp/frames.out" 2>&1 <<'PYEOF' || rc=$?
import os, random, re, sys, time
import nbd
uri, log, orig, fs, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
off = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] else None
N = 4096
pat = re.compile(r"autodecomp: decode frame (\d+)(?: uoff=(\d+) usize=(\d+))?")

def settle(limit):
    """Wait until the log stops growing (0.3 s), at most limit s; its lines."""
    last, t0, same = -1, time.monotonic(), 0.0
    while time.monotonic() - t0 < limit:
        s = os.path.getsize(log)
        if s == last:
            same += 0.1
            if same >= 0.3:
                break
        else:
            same, last = 0.0, s
        time.sleep(0.1)
    with open(log, errors="replace") as f:
        return [l.rstrip("\n") for l in f if pat.search(l)]

h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
rng = random.Random(seed)
if off is None:
    lo, hi = size * 6 // 10, size * 9 // 10
    if fs:
        k = rng.randrange(lo // fs, hi // fs)
        off = k * fs + rng.randrange(0, fs - N + 1)
    else:
        off = rng.randrange(lo, hi)
before = settle(5)
data = h.pread(N, off)
after = settle(3)
new = after[len(before):]
with open(orig, "rb") as f:
    f.seek(off)
    if f.read(N) != data:
        print("wrong bytes read at offset %d" % off)
        sys.exit(1)
h.shutdown()
print("offset %d: %d decode lines before the read, %d after it" % (off, len(before), len(new)))
for l in new:
    print("  " + l)
if len(new) == 1:
    sys.exit(0)
frames = []
for l in new:
    m = pat.search(l)
    if m.group(2) is not None:
        frames.append((int(m.group(2)), int(m.group(3))))
if (fs == 0 and len(new) == 2 and len(frames) == 2
        and all(u < off + N and off < u + s for u, s in frames)):
    # the read straddled two blocks: retry inside the later one
    u, s = max(frames)
    print("RETRY %d" % (u + max(0, (s - N) // 2)))
    sys.exit(3)
sys.exit(2)
PYEOF
        stop_nbdkit
        if [ "$rc" -eq 3 ]; then
            off=$(sed -n 's/^RETRY //p' "$tmp/frames.out")
            note "$name: $(head -1 "$tmp/frames.out"); read straddled two blocks, retrying at $off"
            continue
        fi
        break
    done
    if [ "$rc" -ne 0 ]; then
        cat "$tmp/frames.out" >&2
        fail "$name: one cold 4 KiB read must decode exactly one frame; reproduce:" \
             "nbdkit -f -v -D autodecomp.frames=1 -U /tmp/s --filter=$FILTER file $comp" \
             "(seed $seed, frame size $fs)"
    fi
    note "$name: $(head -1 "$tmp/frames.out")"
    n=$((n+1))
done 3< <(frame_files)
note "$n files ok ($(elapsed))"
