#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# The first read of a large image whose format records its size must not
# wait for the whole image to be decoded: a 3.5 GiB image of mostly
# zeros, as one gzip member, one xz block and one zstd frame.  After one
# 4 KiB read near the start, the filter must have decoded (indexed, or
# spilled) only a small prefix: its exit log says how much.  The bytes
# read are compared with the original.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires_python_nbd
requires gzip
requires xz
requires zstd
setup_corpus
make_tmpdir

big=$CORPUS/big
mkdir -p "$big"
(
    flock 9
    if [ ! -s "$big/big.img.zst" ]; then
        rm -f "$big"/big.img*
        truncate -s 3584M "$big/big.img"
        # Data at the start, in the middle and at the end; zeros elsewhere.
        head -c 4M "$CORPUS/disk.img" | dd of="$big/big.img" conv=notrunc status=none
        head -c 1M /dev/urandom | dd of="$big/big.img" bs=1M seek=2048 conv=notrunc status=none
        head -c 1M /dev/urandom | dd of="$big/big.img" bs=1M seek=3583 conv=notrunc status=none
        gzip -1 -c "$big/big.img" > "$big/big.img.gz"
        xz -0 -T1 -c "$big/big.img" > "$big/big.img.xz"
        zstd -1 -q -c "$big/big.img" > "$big/big.img.zst.tmp"
        mv "$big/big.img.zst.tmp" "$big/big.img.zst"
    fi
) 9>"$big/.lock"

size=$(stat -c %s "$big/big.img")
limit=$(( 128 * 1024 * 1024 ))
for f in big.img.gz big.img.xz big.img.zst; do
    start_nbdkit "$f" -v -D autodecomp.frames=1 --filter="$FILTER" \
        file "$big/$f"
    [ "$(export_size "$uri")" = "$size" ] || fail "$f: wrong size"
    start=$(date +%s.%N)
    tlimit 60 /usr/bin/python3 - "$uri" "$big/big.img" <<'PYEOF'
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    for off in (0, 65536, 1 << 20):
        f.seek(off)
        if h.pread(4096, off) != f.read(4096):
            sys.exit("wrong bytes at %d" % off)
h.shutdown()
PYEOF
    end=$(date +%s.%N)
    stop_nbdkit
    line=$(grep "autodecomp: export ''" "$nbdkit_log" | tail -1)
    [ -n "$line" ] || fail "$f: no summary line in the log"
    indexed=$(echo "$line" | sed -n 's/.*indexed \([0-9]*\) of.*/\1/p')
    spilled=$(echo "$line" | sed -n 's/.* \([0-9]*\) bytes decoded into the spill.*/\1/p')
    note "$f: first reads in $(echo "$end - $start" | bc 2>/dev/null || echo '?') s; $line"
    case "$f" in
        *.gz) [ "$indexed" -le "$limit" ] ||
                  fail "$f: the gzip pass went to $indexed bytes for a read at 1 MiB" ;;
        *) [ "$spilled" -le "$limit" ] ||
                  fail "$f: decoded $spilled bytes for a read at 1 MiB" ;;
    esac
done
