#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# The partial persisted index of a one-member gzip image (its size from
# the trailer, indexed as reads go): while the lazy pass goes on, the
# filter writes the index each time the pass has gone 64 MiB (or a
# tenth of the image) further, marked partial.  A restart loads it and
# the pass goes on from its end: reads below start at its last span,
# never at the start of the image again.  Every byte is compared, the
# index written at the end is complete and the same as a fresh one,
# and a damaged partial index is refused or fails reads, never serves
# a wrong byte.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires nbdkit
requires nbdcopy
requires_python_nbd
requires gzip
requires xxhsum
nbdkit --filter=log null --dump-plugin >/dev/null 2>&1 ||
    fail "nbdkit log filter is missing"
make_tmpdir

M=$(( 1024 * 1024 ))
# 120 MiB of text, then 8 MiB of random bytes: 128 MiB, so ISIZE's
# last byte is not zero and the size comes from the trailer.
/usr/bin/python3 - "$tmp/p.img" <<'PYEOF'
import os, sys
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    text = b"".join(b"%d, a line of text that gzip compresses well\n" % i
                    for i in range(3000000))
    f.write(text[:120 * M])
    f.write(os.urandom(8 * M))
PYEOF
[ "$(stat -c %s "$tmp/p.img")" -eq $(( 128 * M )) ] || fail "p.img: wrong size"
gzip -1 -c "$tmp/p.img" > "$tmp/p.img.gz"
gz_size=$(stat -c %s "$tmp/p.img.gz")

# start NAME INDEX: a server of p.img.gz with the index, the log
# filter below ours.
start ()
{
    rm -f "$tmp/$1.below"
    start_nbdkit "$1" -v --filter="$FILTER" --filter=log \
        file "$tmp/p.img.gz" logfile="$tmp/$1.below" autodecomp-index="$2"
}
logged () { grep -q "$2" "$tmp/$1.log" || fail "$1: the log does not say '$2'"; }

# read_mib FIRST LAST: read MiB FIRST to LAST (inclusive), comparing;
# prints "errors N" (reads that failed).
read_mib ()
{
    tlimit 300 /usr/bin/python3 - "$uri" "$tmp/p.img" "$1" "$2" <<'PYEOF'
import sys, nbd
uri, orig, first, last = sys.argv[1:]
h = nbd.NBD()
h.connect_uri(uri)
M = 1 << 20
errors = 0
with open(orig, "rb") as f:
    for i in range(int(first), int(last) + 1):
        f.seek(i * M)
        want = f.read(M)
        try:
            got = h.pread(M, i * M)
        except nbd.Error:
            errors += 1
            continue
        if got != want:
            sys.exit("MiB %d: wrong bytes" % i)
h.shutdown()
print("errors", errors)
PYEOF
}

# index_state FILE: "partial COVERED LASTCOFF" or "complete COVERED"
# (LASTCOFF: where the last frame's point is, in the compressed file).
index_state ()
{
    PYTHONPATH="$srcdir" /usr/bin/python3 - "$1" <<'PYEOF'
import struct, sys
from adindex import frames, gzip_points
d = open(sys.argv[1], "rb").read()
flags, = struct.unpack("<I", d[48:52])
f = frames(d)
covered = sum(usize for _, usize, _, _, _ in f)
# The last frame's point: where decoding it starts.
p = gzip_points(d).get(f[-1][4])
last_coff = struct.unpack("<Q", d[p:p + 8])[0] if p else 0
if flags & 2:
    print("partial", covered, last_coff)
else:
    print("complete", covered)
PYEOF
}

# The first server reads the first 80 MiB: the pass passes 64 MiB,
# where it writes the partial index.
start p-1 "$tmp/p.adindex"
read_mib 0 79 > "$tmp/p-1.out" || fail "p-1: $(cat "$tmp/p-1.out")"
grep -q "errors 0" "$tmp/p-1.out" || fail "p-1: reads failed"
stop_nbdkit
[ -s "$tmp/p.adindex" ] || fail "p-1: no partial index written"
read -r kind covered last_coff < <(index_state "$tmp/p.adindex")
[ "$kind" = partial ] || fail "p-1: the index is $kind, not partial"
[ "$covered" -ge $(( 64 * M )) ] && [ "$covered" -lt $(( 128 * M )) ] ||
    fail "p-1: the partial index covers $covered bytes"
note "p-1: partial index of $covered bytes, its last span at compressed offset $last_coff"
cp "$tmp/p.adindex" "$tmp/p-partial.adindex"

# below_before NAME LIMIT: reads below (offset count) that start before
# LIMIT, other than the fingerprint's read of the first 64 KiB.
below_before ()
{
    /usr/bin/python3 - "$tmp/$1.below" "$2" <<'PYEOF'
import re, sys
limit = int(sys.argv[2])
for m in re.finditer(r"Read id=\d+ offset=0x([0-9a-f]+) count=0x([0-9a-f]+)",
                     open(sys.argv[1]).read()):
    off, count = int(m.group(1), 16), int(m.group(2), 16)
    if off < limit and not (off == 0 and count <= 65536):
        print(off, count)
PYEOF
}

# A restart loads it; a read past its end (MiB 100) resumes the pass at
# its last span, so nothing before that span is read below.
start p-2 "$tmp/p.adindex"
read_mib 100 100 > "$tmp/p-2.out" || fail "p-2: $(cat "$tmp/p-2.out")"
grep -q "errors 0" "$tmp/p-2.out" || fail "p-2: the read failed"
logged p-2 "persisted index: loaded from .*partial"
early=$(below_before p-2 "$last_coff")
[ -z "$early" ] || fail "p-2: the pass read again before its last span: $early"
note "p-2: after a restart, MiB 100 read nothing below before offset $last_coff"
# Then every byte, which completes the index.
tlimit 300 nbdcopy "$uri" "$tmp/copy.img" || fail "p-2: nbdcopy"
cmp "$tmp/copy.img" "$tmp/p.img" || fail "p-2: wrong bytes"
rm -f "$tmp/copy.img"
stop_nbdkit
read -r kind covered rest < <(index_state "$tmp/p.adindex")
[ "$kind" = complete ] && [ "$covered" -eq $(( 128 * M )) ] ||
    fail "p-2: the final index is $kind, covering $covered bytes"

# same_index A B: the same frames and the same gzip state (points and
# CRCs).  A frame loaded from a file starts at its point's byte, not
# where the pass's own state went on, so coff and csize may differ.
same_index ()
{
    PYTHONPATH="$srcdir" /usr/bin/python3 - "$1" "$2" <<'PYEOF'
import sys
from adindex import frames
def parts(path):
    d = open(path, "rb").read()
    f = frames(d)
    return (d[8:56], [(u, n, a) for u, n, _, _, a in f],
            d[64 + 48 * len(f):-8])
sys.exit(0 if parts(sys.argv[1]) == parts(sys.argv[2]) else 1)
PYEOF
}
# The same as an index built in one go.
"$AUTODECOMP_TOOL" index -o "$tmp/p-tool.adindex" "$tmp/p.img.gz" \
    > /dev/null || fail "autodecomp index failed"
same_index "$tmp/p-tool.adindex" "$tmp/p.adindex" ||
    fail "the index completed after a restart differs from a fresh one"
# The tool completes a partial index too.
cp "$tmp/p-partial.adindex" "$tmp/p-tool2.adindex"
"$AUTODECOMP_TOOL" index -o "$tmp/p-tool2.adindex" "$tmp/p.img.gz" \
    > "$tmp/tool2.out" || fail "autodecomp index on a partial index failed"
grep -q "partial.*written to" "$tmp/tool2.out" ||
    fail "autodecomp index: $(cat "$tmp/tool2.out")"
same_index "$tmp/p-tool.adindex" "$tmp/p-tool2.adindex" ||
    fail "autodecomp index completed a partial index differently"

# A complete index loaded: nothing of the pass is left to run.
start p-3 "$tmp/p.adindex"
read_mib 127 127 > "$tmp/p-3.out" || fail "p-3: $(cat "$tmp/p-3.out")"
grep -q "errors 0" "$tmp/p-3.out" || fail "p-3: the last MiB failed"
logged p-3 "persisted index: loaded from"
stop_nbdkit

# Damaged partial indexes: the member's CRC32 so far (the last 4 bytes
# of the state), the last span's skip and window; resealed (the file's
# checksum made right) or not.  Each is refused at load, or fails
# reads, and never serves a wrong byte.
damage ()
{
    PYTHONPATH="$srcdir" /usr/bin/python3 - "$tmp/p.adindex" "$1" <<'PYEOF'
import struct, sys
from adindex import gzip_points, reseal
path, how = sys.argv[1:]
d = bytearray(open(path, "rb").read())
p = list(gzip_points(d).values())[-1]
if how == "crc":
    d[-12] ^= 1
elif how == "skip":
    s = struct.unpack("<Q", d[p+9:p+17])[0]
    d[p+9:p+17] = struct.pack("<Q", s + 1)
elif how == "window":
    d[p + 25 + 40] ^= 0x20
elif how == "flag":
    d[48] &= ~2
if how != "unsealed":
    reseal(d)
else:
    d[-12] ^= 1
open(path, "wb").write(d)
PYEOF
}
for how in unsealed crc flag skip window; do
    cp "$tmp/p-partial.adindex" "$tmp/p.adindex"
    damage "$how"
    cmp -s "$tmp/p.adindex" "$tmp/p-partial.adindex" && fail "$how: no change"
    start "d-$how" "$tmp/p.adindex"
    read_mib 60 70 > "$tmp/d-$how.out" || fail "d-$how: $(cat "$tmp/d-$how.out")"
    stop_nbdkit
    damaged_index_verdict "damaged partial index ($how)" "$tmp/d-$how.log" \
        "$tmp/d-$how.out"
done

note "partial index: written as the pass goes, resumed after a restart, never wrong bytes"
