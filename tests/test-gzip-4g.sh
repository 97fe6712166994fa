#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# A single gzip member of 4 GiB or more: its trailer holds the size
# modulo 4 GiB.  By default (autodecomp-gzip-size=trailer) the export
# takes that smaller size and the read that reaches its end fails with a
# message naming autodecomp-gzip-size=decode, never returning wrong
# bytes, and the server goes on; with autodecomp-gzip-size=decode the
# whole 5 GiB is served.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires_python_nbd
requires pigz
setup_corpus
make_tmpdir

big=$CORPUS/big
mkdir -p "$big"
(
    flock 9
    if [ ! -s "$big/zero5g.img.gz" ]; then
        progress "making a 5 GiB gzip member in $big (once)"
        truncate -s 5G "$tmp/zero5g.img"
        printf 'tail' | dd of="$tmp/zero5g.img" bs=1 seek=$(( 5 * 1024 * 1024 * 1024 - 4 )) conv=notrunc status=none
        pigz -1 -p 2 -c "$tmp/zero5g.img" > "$big/zero5g.img.gz.tmp"
        mv "$big/zero5g.img.gz.tmp" "$big/zero5g.img.gz"
        rm -f "$tmp/zero5g.img"
    fi
) 9>"$big/.lock"

progress "autodecomp-gzip-size=trailer ($(elapsed))"
start_nbdkit trailer --filter="$FILTER" file "$big/zero5g.img.gz"
size=$(export_size "$uri")
[ "$size" = $(( 1024 * 1024 * 1024 )) ] ||
    fail "trailer mode: expected the 1 GiB that ISIZE says, got $size"
tlimit 300 /usr/bin/python3 - "$uri" <<'PYEOF'
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
if h.pread(4096, 0) != bytes(4096):
    sys.exit("wrong bytes at 0")
try:
    h.pread(4096, h.get_size() - 4096)
    sys.exit("a read at the end of a mis-sized export succeeded")
except nbd.Error as e:
    print("expected error:", e)
# The server goes on serving what it can.
if h.pread(4096, 4096) != bytes(4096):
    sys.exit("wrong bytes at 4096 after the error")
h.shutdown()
PYEOF
grep -q 'autodecomp-gzip-size=decode' "$nbdkit_log" ||
    fail "the error does not say how to serve the image"
stop_nbdkit

progress "autodecomp-gzip-size=decode ($(elapsed))"
start_nbdkit decode --filter="$FILTER" \
    file "$big/zero5g.img.gz" autodecomp-gzip-size=decode
size=$(export_size "$uri")
[ "$size" = $(( 5 * 1024 * 1024 * 1024 )) ] ||
    fail "decode mode: expected 5 GiB, got $size"
tlimit 300 /usr/bin/python3 - "$uri" <<'PYEOF'
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
end = h.get_size()
if h.pread(4096, end - 4096) != bytes(4092) + b"tail":
    sys.exit("wrong bytes at the end")
if h.pread(4096, 3 << 30) != bytes(4096):
    sys.exit("wrong bytes at 3 GiB")
h.shutdown()
PYEOF
note "5 GiB member: trailer mode fails at its end, decode mode serves it"
