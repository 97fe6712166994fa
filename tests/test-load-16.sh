#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-load-16.sh: 16 connections at once, a small cache, large frames.
#
# For images whose frames are large next to the cache:
#   disk-16m.img.xz      xz -6 -T2 --block-size=16MiB of the corpus disk.img
#                        (made here, kept as ./load-16-disk-16m.img.xz:
#                        4 blocks of 16 MiB)
#   disk-frames.img.zst  1 MiB zstd frames
#   disk.img.bz2         lbzip2 -9 (900 kB blocks)
#   disk.img.gz          gzip, one member (checkpoints every 1 MiB)
# start nbdkit --threads=1 --filter=$FILTER file IMAGE
# autodecomp-cache-size=64M and run load-16.py: 16 libnbd connections, each
# 400 random reads of 4 KiB .. 1 MiB (AUTODECOMP_LOAD_READS), every byte
# compared with the original.  Then nbdkit's peak resident size (VmHWM,
# read before nbdkit is stopped) must be <= the cache size + 64 MiB + its
# resident size right after the first read.  Every image is run (and its
# numbers printed) before the test fails.
#
# Why --threads=1: the clients send one request at a time per connection,
# so the filter sees 16 concurrent reads either way; but nbdkit's server
# keeps, in every worker thread, a data buffer as large as the largest
# request that thread has served ("a common per-thread data buffer, it must
# not be freed", server/protocol.c), and --threads (default 16) is per
# connection: with the default, 16 x 16 threads x 1 MiB = 256 MiB that are
# nbdkit's, not the filter's (measured: VmHWM 324 MiB for 1 MiB zstd
# frames whose 64 frames were each decoded once).  AUTODECOMP_LOAD_THREADS
# sets another value (the bound then includes connections x threads x 1 MiB).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
requires xz
is_autodecomp || skip "needs the autodecomp filter (autodecomp-cache-size=)"
[ -r /proc/self/status ] || skip "no /proc/PID/status"
setup_corpus
make_tmpdir

seed=${AUTODECOMP_SEED:-$(( (RANDOM << 15) | RANDOM ))}
reads=${AUTODECOMP_LOAD_READS:-400}
if [ -n "${AUTODECOMP_TEST_FAST:-}" ]; then reads=$(( reads / 10 )); fi
cache=64M
threads=${AUTODECOMP_LOAD_THREADS:-1}
slack=$(( 64 + 16 * threads - 16 ))M     # 64M; more with more threads (above)
note "seed $seed, 16 connections x $reads reads, autodecomp-cache-size=$cache," \
     "nbdkit --threads=$threads (per connection), slack $slack"

# The xz image takes ~20 s of CPU to make: it is kept in the build
# directory (removed by make clean) and made again when disk.img is newer.
img=$CORPUS/disk.img
xz16=$PWD/load-16-disk-16m.img.xz
if [ ! -s "$xz16" ] || [ "$img" -nt "$xz16" ]; then
    tlimit 600 nice -n 5 xz -6 -T2 --block-size=16MiB -c "$img" > "$tmp/x.xz"
    mv -f "$tmp/x.xz" "$xz16"
    note "made $xz16 ($(elapsed))"
fi

failures=0
i=0
for comp in "$xz16" "$CORPUS/disk-frames.img.zst" "$CORPUS/disk.img.bz2" \
            "$CORPUS/disk.img.gz"; do
    name=$(basename "$comp")
    if [ -n "${AUTODECOMP_TEST_ONLY:-}" ]; then
        echo "$comp" | grep -Eq -- "$AUTODECOMP_TEST_ONLY" || continue
    fi
    [ -s "$comp" ] || fail "$comp is missing"
    i=$((i+1))
    progress "$name: 16 connections x $reads reads ($i/4, $(elapsed))"
    start_nbdkit "load-$name" --threads="$threads" --filter="$FILTER" file "$comp" \
        autodecomp-cache-size="$cache"
    rc=0
    tlimit 600 /usr/bin/python3 "$srcdir/load-16.py" --label "$name" \
        --uri "$uri" --original "$img" --pid "$nbdkit_pid" --cache-size "$cache" \
        --slack "$slack" --connections 16 --reads "$reads" --seed "$seed" \
        > "$tmp/load.out" 2>&1 || rc=$?
    cat "$tmp/load.out"
    if ! nbdkit_alive; then
        fail "$name: nbdkit died under load (seed $seed)"
    fi
    if [ "$rc" -ne 0 ]; then
        failures=$((failures+1))
        echo "$test_name: FAIL: $name (seed $seed); reproduce:" \
             "nbdkit -U - -P /tmp/load.pid --threads=$threads --filter=$FILTER file $comp autodecomp-cache-size=$cache" \
             "--run '/usr/bin/python3 $srcdir/load-16.py --uri \"\$uri\" --original $img" \
             "--pid \$(cat /tmp/load.pid) --cache-size $cache --slack $slack --reads $reads --seed $seed'" >&2
    fi
    stop_nbdkit
done
[ "$failures" -eq 0 ] || fail "$failures image(s) failed (wrong bytes, errors or peak RSS over the bound)"
note "ok ($(elapsed))"
