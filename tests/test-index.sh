#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# The persisted index (autodecomp-index=PATH): the first connect writes
# it, a restart loads it instead of reading the image again (a few
# reads below), and every byte is right both times.  A file that is
# truncated, damaged, from another image, of another version or lying
# about its frames is refused with a warning, the image is indexed
# again, served right, and the file rewritten.  A zstd frame without a
# checksum of its own changed in the middle of the image (which the
# fingerprint does not see) fails its read instead of serving wrong
# bytes.  A one-member gzip image keeps its checkpoints as restorable
# points: a restart reads a span without a pass, and a damaged point is
# refused or fails its span, never serves a wrong byte.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires nbdkit
requires nbdcopy
requires nbdinfo
requires_python_nbd
requires lbzip2
requires bgzip
requires zstd
requires xxhsum
requires gzip
nbdkit --filter=log null --dump-plugin >/dev/null 2>&1 ||
    fail "nbdkit log filter is missing"
setup_corpus
make_tmpdir

M=$(( 1024 * 1024 ))
# 15 MiB of the corpus image, then 1 MiB of random bytes (zstd stores
# them in raw blocks, so a changed byte still decodes), then 4 MiB more.
{ head -c $(( 15 * M )) "$CORPUS/disk.img"; head -c $M /dev/urandom;
  dd if="$CORPUS/disk.img" bs=$M skip=40 count=4 status=none; } \
    > "$tmp/a.img"
lbzip2 -9 -n2 -c "$tmp/a.img" > "$tmp/a.img.bz2"
bgzip -c "$tmp/a.img" > "$tmp/a.img.bgz"
mkdir "$tmp/parts"
split -b $M -a 3 "$tmp/a.img" "$tmp/parts/p"
for p in "$tmp"/parts/p*; do zstd -3 -q --no-check -c "$p"; done \
    > "$tmp/a-frames.img.zst"
rm -rf "$tmp/parts"
head -c $(( 8 * M )) "$CORPUS/disk.img" > "$tmp/b.img"
lbzip2 -9 -n2 -c "$tmp/b.img" > "$tmp/b.img.bz2"

# serve NAME IMAGE INDEX: start a server with the index, copy the
# export and compare it with ORIG; sets below (reads at connect).
serve ()
{
    local name=$1 image=$2 index=$3 orig=$4
    rm -f "$tmp/$name.below"
    start_nbdkit "$name" -v --filter="$FILTER" --filter=log file "$image" \
        logfile="$tmp/$name.below" autodecomp-index="$index"
    tlimit 60 nbdinfo --size "$uri" >/dev/null
    below=$(grep -c 'Read id=.*count' "$tmp/$name.below" || :)
    tlimit 300 nbdcopy "$uri" "$tmp/copy.img" || fail "$name: nbdcopy"
    cmp "$tmp/copy.img" "$orig" || fail "$name: wrong bytes"
    rm -f "$tmp/copy.img"
    stop_nbdkit
}
logged () { grep -q "$2" "$tmp/$1.log" || fail "$1: the log does not say '$2'"; }

mkdir "$tmp/idx"
for f in a.img.bz2 a.img.bgz a-frames.img.zst; do
    serve "$f-1" "$tmp/$f" "$tmp/idx" "$tmp/a.img"
    logged "$f-1" "persisted index: .*written to"
    serve "$f-2" "$tmp/$f" "$tmp/idx" "$tmp/a.img"
    logged "$f-2" "persisted index: loaded from"
    [ "$below" -le 4 ] || fail "$f: a restart read $below times below at connect"
    note "$f: a restart with the index connects in $below reads below"
done
[ "$(ls "$tmp/idx" | wc -l)" -eq 3 ] || fail "expected 3 index files in the directory"

# The tool writes the index the filter then loads.
"$AUTODECOMP_TOOL" index -o "$tmp/tool.adindex" "$tmp/a.img.bz2" ||
    fail "autodecomp index failed"
"$AUTODECOMP_TOOL" info --index "$tmp/tool.adindex" "$tmp/a.img.bz2" |
    grep -q "persisted index: loaded from" ||
    fail "autodecomp info does not load the index autodecomp index wrote"
serve tool "$tmp/a.img.bz2" "$tmp/tool.adindex" "$tmp/a.img"
logged tool "loaded from"
# Progress: none when stderr is not a terminal (the default here);
# with --progress a line on stderr that ends at 100% for a bzip2 image,
# whose sizing pass reads all of it; stdout the same either way.
for p in "" --no-progress --progress; do
    rm -f "$tmp/progress.adindex"
    "$AUTODECOMP_TOOL" index $p -o "$tmp/progress.adindex" "$tmp/a.img.bz2" \
        > "$tmp/progress$p.out" 2> "$tmp/progress$p.err" ||
        fail "autodecomp index $p failed"
    sed -i 's/ ([0-9.]* s)$//' "$tmp/progress$p.out"
done
[ -s "$tmp/progress.err" ] && fail "index printed progress, not on a terminal"
[ -s "$tmp/progress--no-progress.err" ] && fail "index --no-progress printed"
cmp "$tmp/progress.out" "$tmp/progress--progress.out" ||
    fail "index --progress changed stdout"
grep -q "written to" "$tmp/progress--progress.out" ||
    fail "index --progress did not write the index"
tail -n 1 "$tmp/progress--progress.err" |
    grep -Eq "^$tmp/a.img.bz2: .* of .* read, .*/s, 100%\$" ||
    fail "index --progress: no last line at 100%: $(cat "$tmp/progress--progress.err")"
note "index --progress: $(tail -n 1 "$tmp/progress--progress.err")"

if "$AUTODECOMP_TOOL" index -o "$tmp/xz.adindex" "$CORPUS/disk.img.xz" \
        2>/dev/null; then
    fail "autodecomp index claims to keep an xz index"
fi

# One file for one image, then another image with the same file.
serve one-a "$tmp/a.img.bz2" "$tmp/one.adindex" "$tmp/a.img"
logged one-a "written to"
serve one-b "$tmp/b.img.bz2" "$tmp/one.adindex" "$tmp/b.img"
logged one-b "warning: persisted index: .*made for another image"
logged one-b "written to"
serve one-b2 "$tmp/b.img.bz2" "$tmp/one.adindex" "$tmp/b.img"
logged one-b2 "loaded from"
cp "$tmp/one.adindex" "$tmp/good.adindex"

# Damaged files: each is refused, the image served right, the file
# rewritten so that the next connect loads it.
damage ()
{
    PYTHONPATH="$srcdir" /usr/bin/python3 - "$tmp/one.adindex" "$1" <<'PYEOF'
import struct, sys
from adindex import reseal
path, how = sys.argv[1:]
d = bytearray(open(path, "rb").read())
if how == "truncated":
    d = d[:len(d) // 2]
elif how == "flipped":
    d[70] ^= 0x10
elif how == "version":
    d[8:12] = struct.pack("<I", 0); reseal(d)
elif how == "frame":
    # The second frame's size, one byte larger: the frames no longer tile.
    o = 64 + 48 + 8
    d[o:o+8] = struct.pack("<Q", struct.unpack("<Q", d[o:o+8])[0] + 1); reseal(d)
elif how == "state":
    # A block's end bit moved: the bzip2 state no longer fits its frame.
    n = struct.unpack("<Q", d[40:48])[0]
    o = 64 + 48 * n + 8 + 8
    d[o:o+8] = struct.pack("<Q", struct.unpack("<Q", d[o:o+8])[0] + 4096); reseal(d)
elif how == "empty":
    d = b""
open(path, "wb").write(d)
PYEOF
}
for how in truncated flipped version frame state empty; do
    cp "$tmp/good.adindex" "$tmp/one.adindex"
    damage "$how"
    serve "damaged-$how" "$tmp/b.img.bz2" "$tmp/one.adindex" "$tmp/b.img"
    logged "damaged-$how" "warning: persisted index: .*refused"
    logged "damaged-$how" "written to"
    serve "repaired-$how" "$tmp/b.img.bz2" "$tmp/one.adindex" "$tmp/b.img"
    logged "repaired-$how" "loaded from"
    note "index file $how: refused, image indexed again, file rewritten"
done

# Frames moved in an index file, its checksum made good again (zstd
# frames, BGZF, gzip members): a frame that points at another frame's
# bytes (each of which decodes well, its content checksum or CRC
# checking only itself), two frames swapped, or a frame left out (the
# later ones moved up to fill its place, the image one frame shorter).
# Each is refused, never served.
head -c $(( 4 * M )) "$tmp/a.img" > "$tmp/c.img"
split -b $M -a 3 "$tmp/c.img" "$tmp/c-part"
for p in "$tmp"/c-part*; do zstd -3 -q --check -c "$p"; done \
    > "$tmp/c.img.zst"
for p in "$tmp"/c-part*; do gzip -c "$p"; done > "$tmp/c.img.gz"
rm -f "$tmp"/c-part*
bgzip -c "$tmp/c.img" > "$tmp/c.img.bgz"
move ()
{
    PYTHONPATH="$srcdir" /usr/bin/python3 - "$1" "$2" <<'PYEOF'
import struct, sys
from adindex import reseal
path, how = sys.argv[1:]
d = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", d[40:48])[0]
F = lambda i: 64 + 48 * i
def where(i):                   # coff, csize, aux, aux32
    return bytes(d[F(i) + 16:F(i) + 48])
if how == "repeated":
    d[F(0) + 16:F(0) + 48] = where(1)
elif how == "swapped":
    a, b = where(0), where(1)
    d[F(0) + 16:F(0) + 48] = b
    d[F(1) + 16:F(1) + 48] = a
elif how == "left-out":
    # Frame 1 left out: the frames after it take its place.
    usize = struct.unpack("<Q", d[F(1) + 8:F(1) + 16])[0]
    for i in range(1, n - 1):
        d[F(i) + 16:F(i) + 48] = where(i + 1)
    size = struct.unpack("<Q", d[32:40])[0]
    d[32:40] = struct.pack("<Q", size - usize)
    d[40:48] = struct.pack("<Q", n - 1)
    del d[F(n - 1):F(n)]
reseal(d)
open(path, "wb").write(d)
PYEOF
}
for f in c.img.zst c.img.bgz c.img.gz; do
    rm -f "$tmp/c.adindex"
    serve "$f-index" "$tmp/$f" "$tmp/c.adindex" "$tmp/c.img"
    cp "$tmp/c.adindex" "$tmp/c-good.adindex"
    for how in repeated swapped left-out; do
        cp "$tmp/c-good.adindex" "$tmp/c.adindex"
        move "$tmp/c.adindex" "$how"
        serve "$f-$how" "$tmp/$f" "$tmp/c.adindex" "$tmp/c.img"
        logged "$f-$how" "warning: persisted index: .*refused"
    done
    note "$f: index files with frames repeated, swapped or left out: refused"
done

# A changed byte inside the random MiB of the zstd image (frame 15, in
# raw blocks, without a checksum): same size, same first and last
# 64 KiB, so the fingerprint matches; the frame's hash does not.
cp "$tmp/a-frames.img.zst" "$tmp/changed.img.zst"
off=$(/usr/bin/python3 - "$tmp/changed.img.zst" <<'PYEOF'
import sys
d = open(sys.argv[1], "rb").read()
# Find the 16th frame (number 15) by its magic, then go 1000 bytes in.
pos, n = 0, 0
while n < 15:
    pos = d.index(b"\x28\xb5\x2f\xfd", pos + 4); n += 1
print(pos + 1000)
PYEOF
)
printf '\x55' | dd of="$tmp/changed.img.zst" bs=1 seek="$off" conv=notrunc status=none
cmp -s "$tmp/changed.img.zst" "$tmp/a-frames.img.zst" && fail "could not change the image"
start_nbdkit changed -v --filter="$FILTER" file "$tmp/changed.img.zst" \
    autodecomp-index="$tmp/idx"
tlimit 60 /usr/bin/python3 - "$uri" "$tmp/a.img" <<'PYEOF' || fail "changed: reads"
import sys, nbd
uri, orig = sys.argv[1:]
h = nbd.NBD()
h.connect_uri(uri)
data = open(orig, "rb").read()
M = 1 << 20
if h.pread(M, 0) != data[:M]:
    sys.exit("wrong bytes in frame 0")
try:
    got = h.pread(M, 15 * M)
    sys.exit("the changed frame was served (%s)" %
             ("right bytes?" if got == data[15*M:16*M] else "wrong bytes"))
except nbd.Error:
    pass
if h.pread(M, 16 * M) != data[16 * M:17 * M]:
    sys.exit("wrong bytes in frame 16")
h.shutdown()
PYEOF
logged changed "loaded from"
logged changed "do not match the persisted index"
stop_nbdkit

# One plain gzip member (64 MiB, its size from the trailer: the index is
# built as reads need it, its spans start at checkpoints).  The first
# server's copy runs the pass to the end, which writes the index with
# each span's restorable point; a restart loads it and reads the last
# MiB without a pass: a few hundred KiB below, not the whole file.
{ head -c $(( 56 * M )) "$CORPUS/disk.img"; head -c $(( 8 * M )) /dev/urandom; } \
    > "$tmp/g.img"
gzip -6 -c "$tmp/g.img" > "$tmp/g.img.gz"
gz_size=$(stat -c %s "$tmp/g.img.gz")
serve g-1 "$tmp/g.img.gz" "$tmp/g.adindex" "$tmp/g.img"
[ -s "$tmp/g.adindex" ] || fail "g: the lazy pass did not write the index"
cp "$tmp/g.adindex" "$tmp/g-good.adindex"
"$AUTODECOMP_TOOL" info --index "$tmp/g.adindex" "$tmp/g.img.gz" \
    > "$tmp/g.info" || fail "g: autodecomp info --index"
grep -q "index from a persisted index file" "$tmp/g.info" ||
    fail "g: autodecomp info does not load the gzip index: $(cat "$tmp/g.info")"

# below_bytes NAME: bytes the reads below asked for.
below_bytes ()
{
    /usr/bin/python3 - "$tmp/$1.below" <<'PYEOF'
import re, sys
print(sum(int(m.group(1), 16) for m in
          re.finditer(r"Read id=\d+ offset=0x[0-9a-f]+ count=0x([0-9a-f]+)",
                      open(sys.argv[1]).read())))
PYEOF
}

# read_spans NAME INDEX: read every MiB of g.img.gz through INDEX in
# an order that starts at the end; every read must be right or fail.
# Prints "errors N".
read_spans ()
{
    local name=$1 index=$2
    rm -f "$tmp/$name.below"
    start_nbdkit "$name" -v --filter="$FILTER" --filter=log \
        file "$tmp/g.img.gz" logfile="$tmp/$name.below" \
        autodecomp-index="$index"
    tlimit 300 /usr/bin/python3 - "$uri" "$tmp/g.img" "${3:-all}" <<'PYEOF'
import sys, nbd
uri, orig, which = sys.argv[1:]
h = nbd.NBD()
h.connect_uri(uri)
data = open(orig, "rb").read()
M = 1 << 20
n = len(data) // M
order = [n - 1] if which == "last" else list(range(n - 1, -1, -1))
errors = 0
for i in order:
    try:
        got = h.pread(M, i * M)
    except nbd.Error:
        errors += 1
        continue
    if got != data[i * M:(i + 1) * M]:
        sys.exit("MiB %d: wrong bytes" % i)
h.shutdown()
print("errors", errors)
PYEOF
    stop_nbdkit
}

read_spans g-last "$tmp/g.adindex" last > "$tmp/g-last.out" ||
    fail "g: reading the last MiB after a restart"
grep -q "errors 0" "$tmp/g-last.out" || fail "g: the last MiB failed"
logged g-last "persisted index: loaded from"
bytes=$(below_bytes g-last)
[ "$bytes" -lt $(( gz_size / 8 )) ] ||
    fail "g: a restart read $bytes of $gz_size bytes below for the last MiB"
note "g.img.gz: after a restart the last MiB costs $bytes bytes below (of $gz_size)"
serve g-2 "$tmp/g.img.gz" "$tmp/g.adindex" "$tmp/g.img"
logged g-2 "persisted index: loaded from"
[ "$below" -le 4 ] || fail "g: a restart read $below times below at connect"
note "g.img.gz: a restart with the index connects in $below reads below"

# The tool runs the lazy pass to the end and writes the same index.
"$AUTODECOMP_TOOL" index -o "$tmp/g-tool.adindex" "$tmp/g.img.gz" ||
    fail "g: autodecomp index failed"
cmp "$tmp/g-tool.adindex" "$tmp/g.adindex" ||
    fail "g: autodecomp index wrote another index than the filter"

# Damaged points, the file's checksum made good again: refused at load,
# or an error for the span, never a wrong byte.
damage_gz ()
{
    PYTHONPATH="$srcdir" /usr/bin/python3 - "$tmp/g.adindex" "$1" <<'PYEOF'
import struct, sys
from adindex import gzip_points, reseal
path, how = sys.argv[1:]
d = bytearray(open(path, "rb").read())
points = list(gzip_points(d).values())
# A span in the random 8 MiB at the end: any change of its output shows.
p = points[-3]
if how == "window":
    d[p + 25 + 40] ^= 0x20
elif how == "skip":
    s = struct.unpack("<Q", d[p+9:p+17])[0]
    d[p+9:p+17] = struct.pack("<Q", s + 1)
elif how == "bits":
    # A point inside deflate-coded data (a boundary after a stored
    # block is followed by zero bits only, which any count skips).
    p = [q for q in points if d[q + 8] != 0][0]
    d[p + 8] ^= 4
elif how == "bits9":
    d[p + 8] = 9
elif how == "offset":
    o8 = struct.unpack("<Q", d[p:p+8])[0]
    d[p:p+8] = struct.pack("<Q", o8 - 1)
reseal(d)
open(path, "wb").write(d)
PYEOF
}
for how in window skip bits bits9 offset; do
    cp "$tmp/g-good.adindex" "$tmp/g.adindex"
    damage_gz "$how"
    cmp -s "$tmp/g.adindex" "$tmp/g-good.adindex" && fail "g: $how: no change"
    read_spans "g-$how" "$tmp/g.adindex" > "$tmp/g-$how.out" ||
        fail "g: $how: $(cat "$tmp/g-$how.out")"
    damaged_index_verdict "g: damaged $how" "$tmp/g-$how.log" "$tmp/g-$how.out"
done

note "persisted index: reused, refused when damaged or stale, never wrong bytes"
