#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Few, large reads below (autodecomp-fetch-size, lib/fetch.h).  Counted
# by nbdkit's log filter right below ours:
# - a full nbdcopy of every image of many frames makes at most
#   compressed size / 4 MiB + 10 reads below, reads no more than the
#   compressed size (and 1/8 of it) beyond what its connect read, and
#   copies every byte;
#   for BGZF (64 KiB members) autodecomp-fetch-size=0 makes many times
#   more, so the count is the fetcher's doing;
# - a random reader reads exactly its frames: after connect, no read
#   below is larger than the largest frame it needs (1 MiB frames of a
#   seekable zstd), however many random reads it makes;
# - after a restart with the persisted index, the first reads at the
#   start of the image read their frames, not a fetch;
# - a bzip2 copy right after connect reads the image once (the blocks
#   the pass kept are not read again).
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires nbdkit
requires nbdcopy
requires_python_nbd
nbdkit --filter=log null --dump-plugin >/dev/null 2>&1 ||
    fail "nbdkit log filter is missing"
setup_corpus
make_tmpdir

img=$CORPUS/disk.img
M=$(( 1024 * 1024 ))

# reads_below LOG: the number of reads the log filter saw, the largest
# and their bytes, as "N LARGEST BYTES".
reads_below ()
{
    /usr/bin/python3 - "$1" <<'PYEOF'
import re, sys
n = largest = total = 0
for line in open(sys.argv[1]):
    m = re.search(r" Read id=\d+ offset=0x[0-9a-f]+ count=(0x[0-9a-f]+)", line)
    if m:
        n += 1
        largest = max(largest, int(m.group(1), 16))
        total += int(m.group(1), 16)
print(n, largest, total)
PYEOF
}

# connect NAME FILE [PARAMS...]: connect only; sets cbytes, the bytes
# read below by the open.
connect ()
{
    local name=$1 file=$2; shift 2
    rm -f "$tmp/log"
    start_nbdkit "$name" --filter="$FILTER" --filter=log file "$file" \
        logfile="$tmp/log" "$@"
    tlimit 300 nbdinfo --size "$uri" >/dev/null || fail "$name: nbdinfo failed"
    stop_nbdkit
    read -r _ _ cbytes < <(reads_below "$tmp/log")
}

# copy NAME FILE [PARAMS...]: a full nbdcopy (4 connections) through the
# filter; sets reads and largest.
copy ()
{
    local name=$1 file=$2; shift 2
    rm -f "$tmp/log" "$tmp/out"
    start_nbdkit "$name" --filter="$FILTER" --filter=log file "$file" \
        logfile="$tmp/log" "$@"
    tlimit 300 nbdcopy --connections=4 "$uri" "$tmp/out" ||
        fail "$name: nbdcopy failed"
    stop_nbdkit
    cmp -s "$tmp/out" "$img" || fail "$name: the copy differs from disk.img"
    read -r reads largest bytes < <(reads_below "$tmp/log")
}

for f in disk.img.bgz disk-frames.img.zst disk-seekable.img.zst \
         disk.img.xz disk.img.bz2 disk.img.lz; do
    file=$CORPUS/$f
    size=$(stat -c %s "$file")
    limit=$(( size / (4 * M) + 10 ))
    connect "${f//./-}-open" "$file"
    copy "${f//./-}" "$file"
    progress "$f: a full copy made $reads reads below (at most $limit)," \
        "$bytes bytes, $cbytes of them at connect ($size compressed)"
    [ "$reads" -le "$limit" ] ||
        fail "$f: $reads reads below for a full copy, want <= $limit"
    [ $(( bytes - cbytes )) -le $(( size + size / 8 + M )) ] ||
        fail "$f: a full copy read $(( bytes - cbytes )) bytes below after" \
            "connect, want <= $(( size + size / 8 + M ))"
done

# bzip2: the sizing pass at connect keeps the blocks it decodes
# (autodecomp-keep-size), and reads of kept blocks read nothing below,
# so a copy right after connect reads the image once, not twice.
copy bz2-kept "$CORPUS/disk.img.bz2"
progress "disk.img.bz2: a copy right after connect read $bytes bytes below"
size=$(stat -c %s "$CORPUS/disk.img.bz2")
[ "$bytes" -le $(( size + size / 8 + M )) ] ||
    fail "disk.img.bz2: a copy right after connect read $bytes bytes" \
        "below, want <= $(( size + size / 8 + M )) (the pass, once)"

copy bgz-exact "$CORPUS/disk.img.bgz" autodecomp-fetch-size=0
exact=$reads
copy bgz-fetch "$CORPUS/disk.img.bgz"
note "BGZF: $exact reads below with autodecomp-fetch-size=0, $reads without"
[ "$exact" -ge $(( 4 * reads )) ] ||
    fail "BGZF: $exact exact reads against $reads fetched (want 4 times fewer)"

# A random reader: 64 reads of 4 KiB at random offsets, each at least
# 8 MiB (about 2 MiB compressed) from the four reads before it, through
# 1 MiB frames.  (Reads that land next to each other are taken for a
# sequential reader, and fetched ahead: a random reader far from its
# earlier reads reads exactly its frame.)
start_nbdkit random --filter="$FILTER" --filter=log file \
    "$CORPUS/disk-seekable.img.zst" logfile="$tmp/rlog"
tlimit 300 /usr/bin/python3 - "$uri" "$img" "$tmp/rlog" <<'PYEOF' ||
import os, random, sys, nbd
uri, img, log = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
connect_lines = sum(1 for _ in open(log))
open(log + ".mark", "w").write(str(connect_lines))
rng = random.Random(int(os.environ.get("AUTODECOMP_SEED", "1")))
recent = []
with open(img, "rb") as f:
    for i in range(64):
        while True:
            off = rng.randrange(0, size - 4096) & ~4095
            if all(abs(off - r) >= 8 << 20 for r in recent):
                break
        recent = (recent + [off])[-4:]
        f.seek(off)
        if h.pread(4096, off) != f.read(4096):
            sys.exit("random read at %d: wrong bytes" % off)
PYEOF
    fail "random reads through the fetcher failed"
stop_nbdkit
tail -n +"$(( $(cat "$tmp/rlog.mark") + 1 ))" "$tmp/rlog" > "$tmp/rlog.after"
read -r reads largest _ < <(reads_below "$tmp/rlog.after")
progress "random reader: $reads reads below after connect, the largest $largest bytes"
[ "$largest" -le $(( 2 * M )) ] ||
    fail "a random reader read $largest bytes at once (want one frame, <= 2 MiB)"
[ "$reads" -ge 16 ] ||
    fail "only $reads reads below for 64 random reads (a fetch served them?)"

# A restart with the persisted index: the first read, at the start of
# the image where the open read its head, and the random reads after
# it read their frames only.
mkdir "$tmp/idx"
for f in disk.img.bz2 disk.img.bgz; do
    tlimit 300 "$AUTODECOMP_TOOL" index -o "$tmp/idx" "$CORPUS/$f" >/dev/null ||
        fail "$f: autodecomp index failed"
    rm -f "$tmp/log"
    start_nbdkit "restart-${f//./-}" --filter="$FILTER" --filter=log file \
        "$CORPUS/$f" logfile="$tmp/log" autodecomp-index="$tmp/idx"
    tlimit 300 nbdsh -u "$uri" \
        -c 'for off in (0, 32 << 20, 16 << 20): h.pread(4096, off)' ||
        fail "$f: reads after the restart failed"
    stop_nbdkit
    read -r reads largest bytes < <(reads_below "$tmp/log")
    progress "$f after a restart: $reads reads below, the largest $largest"
    [ "$largest" -le $(( 1 * M )) ] ||
        fail "$f after a restart: a read of $largest bytes below (want" \
            "its frames, <= 1 MiB each)"
done
