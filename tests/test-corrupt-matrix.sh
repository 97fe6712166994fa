#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-corrupt-matrix.sh: thousands of damaged images, every format.
#
# A small image (2.75 MiB - 4321 bytes, cut from the corpus disk.img: its
# first MiB of ext4 metadata and zeros, 256 KiB of the random file, then
# 1.5 MiB of real files) is compressed here in every shape whose units the filter
# verifies before serving them:
#   xz-1m        xz -6 -T2 --block-size=1MiB      (CRC64 per block, index)
#   zstd-frames  256 KiB frames, concatenated      (XXH64 per frame)
#   zstd-seek    zstd seekable format, 256 KiB     (seek-table checksums)
#   gzip         gzip -6, one member               (CRC32; < 16 MiB, so the
#                                                   filter verifies it at connect)
#   gzip-multi   cat of 4 gzip members             (CRC32 per member)
#   bgzf         bgzip                             (CRC32 per 64 KiB member)
#   lbzip2       lbzip2 -1 -n2                     (block and stream CRCs)
#   bzip2        bzip2 -1                          (block and stream CRCs)
#   lzip-members plzip -6 -B 256KiB                (CRC32 and sizes per member)
# (No one-member lzip: it decodes whole on every read of a damaged
# variant, which made its 500 variants take 5 times as long as the
# members' (356 s against 73 s here), and it runs the same code: the
# members' first and last members are at the ends of the file.)
# and corrupt-matrix.py makes AUTODECOMP_CORRUPT_VARIANTS (500) damaged
# variants of each (byte changes, truncations, zeroed ranges; places biased
# to headers, indexes, trailers and frame starts), serves each format's
# variants from ONE nbdkit (file plugin, dir=, one export per variant, with
# autodecomp-format= forced so that a damaged magic is an error, not a raw
# image) and reads every variant whole.  Fails on any wrong byte, nbdkit
# dying (the variant that kills it is named), a hang (timeout), or a
# dropped connection; connect errors, read errors and exports of another
# size are counted and printed.  See corrupt-matrix.py.
#
# Reproduce one variant: AUTODECOMP_SEED=S AUTODECOMP_CORRUPT_ONLY=NAME:I
# make check TESTS=test-corrupt-matrix.sh (failing variants are also kept
# in ./corrupt-matrix-failed/).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
for c in xz zstd gzip bgzip bzip2 lbzip2 plzip xxhsum split; do requires "$c"; done
setup_corpus
make_tmpdir

seed=${AUTODECOMP_SEED:-$(( (RANDOM << 15) | RANDOM ))}
variants=${AUTODECOMP_CORRUPT_VARIANTS:-500}
if [ -n "${AUTODECOMP_TEST_FAST:-}" ]; then variants=$(( variants / 10 )); fi
note "seed $seed, $variants variants per format"

# The small image: mixed content (zeros, metadata, incompressible, files),
# an odd size so that every format ends with a partial unit.
img=$tmp/small.img
{
    dd if="$CORPUS/disk.img" bs=1K count=1024 status=none
    dd if="$CORPUS/disk.img" bs=1K skip=4608 count=256 status=none
    dd if="$CORPUS/disk.img" bs=1K skip=7168 count=$(( 1536 * 1024 - 4321 )) \
        iflag=count_bytes status=none
} > "$img"
[ "$(stat -c %s "$img")" -eq $(( 2816 * 1024 - 4321 )) ] || fail "could not cut $img"

z=$tmp/z
mkdir -p "$z/parts"
xz -6 -T2 --block-size=1MiB -c "$img" > "$z/small-1m.img.xz"
split -b 256K -a 4 "$img" "$z/parts/p"
for p in "$z"/parts/p*; do zstd -3 -q -c "$p"; done > "$z/small-frames.img.zst"
/usr/bin/python3 "$top_srcdir/corpus/mk-seekable.py" "$img" \
    "$z/small-seekable.img.zst" 262144
gzip -6 -c "$img" > "$z/small.img.gz"
rm -f "$z"/parts/*
split -n 4 -a 1 "$img" "$z/parts/q"
for p in "$z"/parts/q*; do gzip -6 -c "$p"; done > "$z/small-multi.img.gz"
bgzip -c "$img" > "$z/small.img.bgz"
lbzip2 -1 -n2 -c "$img" > "$z/small-lbzip2.img.bz2"
bzip2 -1 -c "$img" > "$z/small-bzip2.img.bz2"
plzip -6 -n2 -B 256KiB -c "$img" > "$z/small-members.img.lz"
rm -rf "$z/parts"

specs=()
for s in xz-1m:xz:small-1m.img.xz zstd-frames:zstd:small-frames.img.zst \
         zstd-seek:zstd:small-seekable.img.zst gzip:gzip:small.img.gz \
         gzip-multi:gzip:small-multi.img.gz bgzf:gzip:small.img.bgz \
         lbzip2:bzip2:small-lbzip2.img.bz2 bzip2:bzip2:small-bzip2.img.bz2 \
         lzip-members:lzip:small-members.img.lz; do
    f=$z/${s##*:}
    [ -s "$f" ] || fail "could not make $f"
    filter_handles "$f" || continue
    if [ -n "${AUTODECOMP_TEST_ONLY:-}" ]; then
        echo "$f" | grep -Eq -- "$AUTODECOMP_TEST_ONLY" || continue
    fi
    specs+=("${s%:*}:$f")
done
[ "${#specs[@]}" -gt 0 ] || skip "no format the filter can serve"

ad=()
# BGZF, zstd and lzip record frame sizes in fields no check covers: a damaged
# one fails its own frame but shifts every later frame, whose checks
# pass.  autodecomp-verify-offsets=true (no effect on the other formats)
# serves a frame only once every frame before it has decoded, which is
# what makes "no wrong byte" hold for them (see the man page).
if is_autodecomp; then ad=(--autodecomp --extra autodecomp-verify-offsets=true); fi
only=()
if [ -n "${AUTODECOMP_CORRUPT_ONLY:-}" ]; then only=(--only "$AUTODECOMP_CORRUPT_ONLY"); fi
progress "corrupt-matrix.py: ${#specs[@]} formats x $variants variants ($(elapsed))"
rc=0
tlimit 900 /usr/bin/python3 "$srcdir/corrupt-matrix.py" --filter "$FILTER" \
    --original "$img" --tmp "$tmp" --seed "$seed" --variants "$variants" \
    --hang-timeout $(( 60 * ${AUTODECOMP_TEST_TIMEOUT_SCALE:-1} )) \
    --keep-dir "$PWD/corrupt-matrix-failed" "${ad[@]}" "${only[@]}" \
    "${specs[@]}" || rc=$?
if [ "$rc" -ne 0 ]; then
    for f in "$tmp"/*.log; do
        echo "---- $f (last 20 lines) ----"; tail -n 20 "$f"
    done
    fail "corrupt-matrix.py failed (exit $rc); reproduce with AUTODECOMP_SEED=$seed" \
         "(one variant: AUTODECOMP_CORRUPT_ONLY=NAME:I)"
fi
note "ok ($(elapsed))"
