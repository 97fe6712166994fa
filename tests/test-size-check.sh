#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# A one-frame zstd with a content size and a one-member gzip take their
# declared size at connect, reading only their first bytes and their end
# (autodecomp-size-check=lazy, the default).  When the declaration is
# wrong (more frames or members follow, or the file is cut short), the
# bytes before the point where decoding finds out are still the image's
# own, the reads that need the proof fail with an error that names
# autodecomp-size-check=connect (logged once, however many reads fail),
# nothing wrong is ever served, and nbdcopy fails instead of completing
# a short copy.  autodecomp-size-check=connect serves the same files
# whole and exactly.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires nbdkit
requires nbdcopy
requires_python_nbd
requires zstd
requires gzip
nbdkit --filter=log null --dump-plugin >/dev/null 2>&1 ||
    fail "nbdkit log filter is missing"
setup_corpus
make_tmpdir

img=$CORPUS/disk.img
M=$(( 1024 * 1024 ))

# Files whose first frame or member declares less than the whole.
head -c $(( 40 * M )) "$img" > "$tmp/a"
tail -c +$(( 40 * M + 1 )) "$img" > "$tmp/b"
cat "$tmp/a" "$tmp/b" > "$tmp/two.img"
zstd -3 -q -c "$tmp/a" > "$tmp/two-frames.img.zst"
zstd -3 -q -c "$tmp/b" >> "$tmp/two-frames.img.zst"
# Member 1 is 12 MiB of random bytes (more than the 8 MiB connect reads,
# so its end is not seen there), member 2 declares 20 MiB: the pass ends
# member 1 short of the declared size and finds more.
head -c $(( 12 * M )) /dev/urandom > "$tmp/r"
head -c $(( 20 * M )) "$img" > "$tmp/s"
cat "$tmp/r" "$tmp/s" > "$tmp/short-first.img"
{ gzip -1 -c "$tmp/r"; gzip -6 -c "$tmp/s"; } > "$tmp/short-first.img.gz"
# Member 1 is 44 MiB, member 2 declares 20 MiB: member 1 decodes past it.
head -c $(( 44 * M )) "$img" > "$tmp/c"
tail -c +$(( 44 * M + 1 )) "$img" > "$tmp/d"
{ gzip -6 -c "$tmp/c"; gzip -6 -c "$tmp/d"; } > "$tmp/long-first.img.gz"
# A one-frame zstd cut short.
head -c $(( $(stat -c %s "$CORPUS/disk.img.zst") - 1000 )) \
    "$CORPUS/disk.img.zst" > "$tmp/cut.img.zst"
rm -f "$tmp/a" "$tmp/b" "$tmp/c" "$tmp/d" "$tmp/r" "$tmp/s"

# check_lazy NAME FILE ORIGINAL DECLARED: the export is DECLARED bytes;
# everything read either equals ORIGINAL or fails; the end fails with the
# hint, logged once; nbdcopy fails.
check_lazy ()
{
    local name=$1 file=$2 orig=$3 declared=$4 n
    start_nbdkit "$name" --filter="$FILTER" file "$file"
    [ "$(export_size "$uri")" = "$declared" ] ||
        fail "$name: size $(export_size "$uri"), expected the declared $declared"
    tlimit 300 /usr/bin/python3 - "$uri" "$orig" <<'PYEOF' || fail "$name: reads"
import sys, nbd
uri, orig = sys.argv[1:]
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
data = open(orig, "rb").read()
step = 1 << 20
good = failed = 0
for off in list(range(0, size, step)) + [size - 4096, 0, size - 1]:
    n = min(step, size - off)
    try:
        got = h.pread(n, off)
    except nbd.Error:
        failed += 1
        continue
    if got != data[off:off + n]:
        sys.exit("wrong bytes at %d" % off)
    good += 1
if failed == 0:
    sys.exit("every read succeeded on an export whose size is wrong")
try:
    h.pread(1, size - 1)
    sys.exit("the last byte was served")
except nbd.Error:
    pass
print("%d reads right, %d failed" % (good, failed))
h.shutdown()
PYEOF
    # One request at a time: nbdkit 1.32 can abort (an assertion in
    # raw_send_socket) when a client drops the connection while replies
    # to its other requests are still being sent.
    if tlimit 300 nbdcopy --connections=1 --requests=1 "$uri" \
            "$tmp/copy.img" 2>/dev/null; then
        fail "$name: nbdcopy completed a copy of a wrongly sized image"
    fi
    rm -f "$tmp/copy.img"
    grep -q 'autodecomp-size-check=connect' "$nbdkit_log" ||
        fail "$name: the error does not name autodecomp-size-check=connect"
    n=$(grep -c 'error:.*autodecomp-size-check=connect' "$nbdkit_log" || :)
    [ "$n" -eq 1 ] || fail "$name: the error was logged $n times at error level"
    stop_nbdkit
}

# check_connect NAME FILE ORIGINAL: autodecomp-size-check=connect serves
# the file exactly.
check_connect ()
{
    local name=$1 file=$2 orig=$3
    start_nbdkit "$name-connect" --filter="$FILTER" file "$file" \
        autodecomp-size-check=connect
    tlimit 300 nbdcopy "$uri" "$tmp/copy.img" || fail "$name: nbdcopy (connect)"
    cmp "$tmp/copy.img" "$orig" || fail "$name: wrong bytes (connect)"
    rm -f "$tmp/copy.img"
    stop_nbdkit
}

check_lazy two-frames "$tmp/two-frames.img.zst" "$tmp/two.img" $(( 40 * M ))
check_connect two-frames "$tmp/two-frames.img.zst" "$tmp/two.img"
check_lazy short-first "$tmp/short-first.img.gz" "$tmp/short-first.img" $(( 20 * M ))
check_connect short-first "$tmp/short-first.img.gz" "$tmp/short-first.img"
check_lazy long-first "$tmp/long-first.img.gz" "$img" $(( 20 * M ))
check_connect long-first "$tmp/long-first.img.gz" "$img"

# A cut one-frame zstd: the bytes before the cut are right, the end
# fails (its error is "truncated", not the hint).
start_nbdkit cut --filter="$FILTER" file "$tmp/cut.img.zst"
[ "$(export_size "$uri")" = $(( 64 * M )) ] || fail "cut: size"
if tlimit 300 nbdcopy --connections=1 --requests=1 "$uri" "$tmp/copy.img" \
        2>/dev/null; then
    fail "cut: nbdcopy completed a copy of a truncated image"
fi
rm -f "$tmp/copy.img"
grep -q 'truncated' "$nbdkit_log" || fail "cut: the error does not say truncated"
stop_nbdkit

# Connect reads only the first bytes and the end of a right image, and
# the whole image is then served exactly.
for f in disk.img.zst disk.img.gz; do
    rm -f "$tmp/below.log"
    start_nbdkit "below-$f" --filter="$FILTER" --filter=log \
        file "$CORPUS/$f" logfile="$tmp/below.log"
    export_size "$uri" >/dev/null
    bytes=$(/usr/bin/python3 - "$tmp/below.log" <<'PYEOF'
import re, sys
print(sum(int(m.group(1), 0) for m in
          re.finditer(r'Read id=\d+ offset=\S+ count=(\S+)', open(sys.argv[1]).read())))
PYEOF
)
    csize=$(stat -c %s "$CORPUS/$f")
    note "$f: connect read $bytes of $csize bytes below"
    [ "$bytes" -le $(( 8 * M + 65536 )) ] && [ "$bytes" -lt "$csize" ] ||
        fail "$f: connect read $bytes bytes below (of $csize)"
    tlimit 300 nbdcopy "$uri" "$tmp/copy.img" || fail "$f: nbdcopy"
    cmp "$tmp/copy.img" "$img" || fail "$f: wrong bytes"
    rm -f "$tmp/copy.img"
    stop_nbdkit
done
note "declared sizes: taken lazily, proven by the decoder, never wrong bytes"
