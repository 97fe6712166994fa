#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-qemu-img.sh: qemu as a client.  For one pair per format family
# (family_pairs): `qemu-img info` of the export reports the original's
# virtual size (qemu 7.2 rounds it up to 512), `qemu-img compare` of the
# export (nbd+unix:///?socket=...) against the original finds them identical,
# and qemu-io reads: a known-zero area (found in the original near its end)
# must read as zeros (read -P 0), and the last 512 bytes must read in full.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires qemu-img
setup_corpus
make_tmpdir
have_qemu_io=0
command -v qemu-io >/dev/null 2>&1 && have_qemu_io=1

# zero_area ORIG: offset of a 64 KiB area of zeros near the end of ORIG, found
# by scanning back from the end (empty if none).
zero_area ()
{
    /usr/bin/python3 - "$1" <<'PYEOF'
import os, sys
f = open(sys.argv[1], "rb"); size = os.fstat(f.fileno()).st_size
n = 65536
off = (size - n) // n * n
while off > size // 2:
    f.seek(off)
    if f.read(n).count(0) == n:
        print(off); break
    off -= n
PYEOF
}

n=0
while read -r comp orig <&3; do
    name=$(basename "$comp")
    start_nbdkit "$name" --filter="$FILTER" file "$comp"
    qemu_uri="nbd+unix:///?socket=$sock"
    want=$(stat -c %s "$orig")

    tlimit 60 qemu-img info --output=json "$qemu_uri" > "$tmp/info.json" ||
        fail "$name: qemu-img info failed"
    vsize=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["virtual-size"])' "$tmp/info.json")
    # qemu (7.2) rounds an NBD export's size up to a multiple of 512
    [ "$vsize" = "$want" ] || [ "$vsize" = $(( (want + 511) / 512 * 512 )) ] ||
        fail "$name: qemu-img info virtual-size $vsize, original $want"

    tlimit 300 qemu-img compare -f raw -F raw "$qemu_uri" "$orig" > "$tmp/compare.out" 2>&1 || {
        cat "$tmp/compare.out" >&2
        fail "$name: qemu-img compare says the export differs from $orig"
    }

    if [ "$have_qemu_io" = 1 ]; then
        z=$(zero_area "$orig")
        if [ -n "$z" ]; then
            tlimit 60 qemu-io -r -f raw "$qemu_uri" -c "read -P 0 $z 65536" > "$tmp/qio.out" 2>&1 ||
                { cat "$tmp/qio.out" >&2; fail "$name: qemu-io read -P 0 $z 65536 failed"; }
            grep -q 'Pattern verification failed\|failed' "$tmp/qio.out" &&
                { cat "$tmp/qio.out" >&2; fail "$name: qemu-io: zeros expected at $z"; }
        fi
        # the last 512 bytes, pattern = the original's last byte if uniform
        tlimit 60 qemu-io -r -f raw "$qemu_uri" -c "read $(( want - 512 )) 512" > "$tmp/qio.out" 2>&1 ||
            { cat "$tmp/qio.out" >&2; fail "$name: qemu-io read of the last 512 bytes failed"; }
        grep -q 'read 512/512 bytes' "$tmp/qio.out" ||
            { cat "$tmp/qio.out" >&2; fail "$name: qemu-io: short read at the end"; }
    fi
    nbdkit_alive || fail "$name: nbdkit died"
    stop_nbdkit
    n=$((n+1))
    note "$name: qemu-img info/compare ok ($(elapsed))"
done 3< <(family_pairs)
[ "$n" -gt 0 ] || skip "no pairs the filter can serve"
note "$n pairs ok ($(elapsed))"
