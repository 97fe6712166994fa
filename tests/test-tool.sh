#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-tool.sh: autodecomp(1), the command line companion.
#
# info: what it says of corpus images that seek well (many frames, a seek
# table, bzip2 blocks, 4 MiB lzip members), fairly (16 MiB lzip members)
# and of those that do not (one zstd frame, one lzip member, one gzip
# member), in --json, with the right size.
#
# prepare: from inputs of every shape the reader has (one large frame
# streamed through its decoder, xz and lzip, a lazily indexed gzip member,
# bzip2, lzip members, an uncompressed image of odd size) to each output format (zstd with a seek
# table, xz blocks, BGZF), with --verify.  Every output must decompress to
# the original with the standard tool (zstd, xz, gzip), carry the frames and
# the seek table asked for, be judged "good" by info, and serve the original
# bytes through nbdkit and the filter (nbdcopy).
#
# Errors: an existing output is not overwritten without --force, a damaged
# input fails with status 1 and leaves no output, bad usage is status 2.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "FILTER=$FILTER is not the autodecomp filter"
: "${AUTODECOMP_TOOL:=$top_srcdir/tools/autodecomp/autodecomp}"
[ -x "$AUTODECOMP_TOOL" ] || fail "the tool is not built: $AUTODECOMP_TOOL"
requires nbdkit
requires nbdcopy
requires zstd
requires xz
requires gzip
requires /usr/bin/python3 -c 'import json'
setup_corpus
make_tmpdir
tool=$AUTODECOMP_TOOL
c=$CORPUS e=$CORPUS/extra

# json FILE KEY: one value of info --json.
json ()
{
    /usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# ------------------------------------------------------------------ info
# image, expected verdict
while read -r img want; do
    progress "info $(basename "$img") ($(elapsed))"
    "$tool" info --json "$img" > "$tmp/info.json" ||
        fail "info $img failed"
    got=$(json "$tmp/info.json" seeks)
    [ "$got" = "$want" ] || fail "info $img: seeks $got, expected $want"
    size=$(json "$tmp/info.json" size)
    orig=$c/disk.img
    case $img in */odd*) orig=$e/odd.img ;; esac
    [ "$size" = "$(stat -c %s "$orig")" ] ||
        fail "info $img: size $size, expected $(stat -c %s "$orig")"
    "$tool" info "$img" > "$tmp/info.txt" || fail "info $img (text) failed"
    note "info $(basename "$img"): $want, $(tail -1 "$tmp/info.txt")"
done <<LIST
$c/disk.img raw
$c/disk.img.xz good
$c/disk-seekable.img.zst good
$c/disk.img.bgz good
$c/disk.img.bz2 good
$c/disk.img.lz fair
$e/odd.img.lz good
$c/disk.img.zst poor
$c/disk-1block.img.xz poor
$c/disk-1member.img.lz poor
$c/disk.img.gz poor
LIST
# A one-frame image: the text says why, and what to do.
"$tool" info "$c/disk.img.zst" > "$tmp/info.txt"
grep -q "larger than 32 MiB" "$tmp/info.txt" || fail "info: no word on the large frame"
grep -q "autodecomp prepare" "$tmp/info.txt" || fail "info: no advice"

# --------------------------------------------------------------- prepare
# check_output OUT ORIG FORMAT FRAME: the standard tool, the frames, the
# seek table, info's verdict, and nbdkit serving it.
check_output ()
{
    local out=$1 orig=$2 fmt=$3 frame=$4 size frames want
    size=$(stat -c %s "$orig")
    case $fmt in
        zstd) zstd -q -dc "$out" > "$tmp/std.out" ;;
        xz)   xz -dc "$out" > "$tmp/std.out" ;;
        bgzf) gzip -dc "$out" > "$tmp/std.out" ;;
    esac
    cmp "$tmp/std.out" "$orig" || fail "$out: $fmt -d gives other bytes than $orig"
    rm -f "$tmp/std.out"

    "$tool" info --json --frames "$out" > "$tmp/out.json" || fail "info $out failed"
    # The frame table tiles the image, each frame of the size asked for.
    /usr/bin/python3 - "$tmp/out.json" "$frame" <<'PYEOF' || fail "$out: bad frame table"
import json, sys
j = json.load(open(sys.argv[1]))
t, frame = j["frame_table"], int(sys.argv[2])
assert len(t) == j["frames"]
off = 0
for i, (uoff, usize, coff, csize, zero) in enumerate(t):
    assert uoff == off, (i, uoff, off)
    assert usize == frame or i == len(t) - 1, (i, usize)
    off += usize
assert off == j["size"]
PYEOF
    [ "$(json "$tmp/out.json" seeks)" = good ] || fail "info $out: not good"
    [ "$(json "$tmp/out.json" size)" = "$size" ] || fail "info $out: wrong size"
    frames=$(json "$tmp/out.json" frames)
    want=$(( (size + frame - 1) / frame ))
    [ "$frames" = "$want" ] || fail "$out: $frames frames, expected $want of $frame bytes"
    case $fmt in
        zstd) want_from="the seek table" ;;
        xz)   want_from="the stream indexes" ;;
        bgzf) want_from="BGZF member headers" ;;
    esac
    [ "$(json "$tmp/out.json" index_from)" = "$want_from" ] ||
        fail "$out: indexed from '$(json "$tmp/out.json" index_from)', not $want_from"
    if [ "$fmt" = zstd ]; then
        # The seek table: a skippable frame at the end whose footer
        # counts every frame and carries the seekable magic.
        /usr/bin/python3 - "$out" "$want" <<'PYEOF' || fail "$out: no valid seek table"
import struct, sys
data = open(sys.argv[1], "rb").read()
n, desc, magic = struct.unpack("<IBI", data[-9:])
assert magic == 0x8F92EAB1, hex(magic)
assert n == int(sys.argv[2]), (n, sys.argv[2])
assert desc == 0x80, hex(desc)          # entries carry checksums
start = len(data) - (8 + n * 12 + 9)
skip_magic, size = struct.unpack("<II", data[start:start + 8])
assert skip_magic == 0x184D2A5E and size == n * 12 + 9
entries = [struct.unpack("<III", data[start + 8 + 12 * i:start + 20 + 12 * i]) for i in range(n)]
assert sum(e[0] for e in entries) == start, "compressed sizes do not add up"
# Each entry's checksum is its frame's Content_Checksum (its last 4 bytes).
off = 0
for csize, dsize, sum32 in entries:
    assert struct.unpack("<I", data[off + csize - 4:off + csize])[0] == sum32
    off += csize
PYEOF
    fi

    start_nbdkit "serve-$(basename "$out")" -r --filter="$FILTER" file "$out"
    tlimit 300 nbdcopy "$uri" "$tmp/copy.out" || fail "nbdcopy from $out failed"
    stop_nbdkit
    cmp "$tmp/copy.out" "$orig" || fail "$out served through the filter differs from $orig"
    rm -f "$tmp/copy.out"
}

# input, original, format, frame size option ("-": default), frame bytes
while read -r in orig fmt fs frame; do
    progress "prepare $(basename "$in") -> $fmt ($(elapsed))"
    out=$tmp/out.$fmt
    rm -f "$out"
    args=(-F "$fmt" --verify)
    [ "$fs" = - ] || args+=(-s "$fs")
    [ "$fmt" = xz ] && args+=(-l 1)
    "$tool" prepare "${args[@]}" "$in" "$out" > "$tmp/prepare.out" 2>&1 || {
        cat "$tmp/prepare.out" >&2
        fail "prepare ${args[*]} $in failed"
    }
    grep -q "verified" "$tmp/prepare.out" || fail "prepare --verify did not verify"
    check_output "$out" "$orig" "$fmt" "$frame"
    note "prepare $(basename "$in") -> $fmt ($fs): $(head -1 "$tmp/prepare.out")"
    rm -f "$out"
done <<LIST
$c/disk.img.zst $c/disk.img zstd - 1048576
$c/disk.img.gz $c/disk.img zstd 256K 262144
$c/disk.img.bz2 $c/disk.img xz 2M 2097152
$c/disk-1block.img.xz $c/disk.img xz - 4194304
$c/disk-1member.img.lz $c/disk.img zstd - 1048576
$e/odd.img.lz $e/odd.img bgzf - 65280
$e/odd.img $e/odd.img zstd 3000000 3000000
$e/odd.img.zst $e/odd.img bgzf - 65280
$c/disk.img.xz $c/disk.img bgzf - 65280
LIST

# To standard output, through a pipe.
"$tool" prepare -F xz -l 0 -s 1M "$e/odd.img" - 2> "$tmp/err" | xz -dc | cmp - "$e/odd.img" ||
    fail "prepare to stdout: other bytes"
grep -q "(stdout)" "$tmp/err" || fail "prepare to stdout: no summary on stderr"

# ---------------------------------------------------------------- errors
touch "$tmp/exists"
rc=0; "$tool" prepare "$e/odd.img" "$tmp/exists" 2> "$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "prepare over an existing file: status $rc, expected 1"
grep -q -- "--force" "$tmp/err" || fail "prepare over an existing file: no hint of --force"
[ ! -s "$tmp/exists" ] || fail "prepare overwrote an existing file"
"$tool" prepare --force --quiet "$e/odd.img" "$tmp/exists" ||
    fail "prepare --force failed"
zstd -q -dc "$tmp/exists" | cmp - "$e/odd.img" || fail "prepare --force wrote other bytes"

# Not even --force writes over the input it reads.
cp "$e/odd.img.zst" "$tmp/self.zst"
rc=0; "$tool" prepare --force "$tmp/self.zst" "$tmp/self.zst" 2> "$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "prepare onto its own input: status $rc, expected 1"
cmp "$tmp/self.zst" "$e/odd.img.zst" || fail "prepare onto its own input changed it"

# A damaged input: the last block of an xz image cut off.
head -c $(( $(stat -c %s "$c/disk.img.xz") - 100000 )) "$c/disk.img.xz" > "$tmp/cut.xz"
rc=0; "$tool" prepare "$tmp/cut.xz" "$tmp/cut.zst" 2> "$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "prepare of a truncated image: status $rc, expected 1"
[ -s "$tmp/err" ] || fail "prepare of a truncated image: no message"
[ ! -e "$tmp/cut.zst" ] || fail "prepare of a truncated image left its output"
note "truncated input: $(head -1 "$tmp/err")"
# A corrupt block in the middle of a many-block image.
cp "$c/disk.img.xz" "$tmp/bad.xz"
printf '\x55\xaa\x55\xaa' | dd of="$tmp/bad.xz" bs=1 seek=$(( $(stat -c %s "$tmp/bad.xz") / 2 )) conv=notrunc status=none
rc=0; "$tool" prepare -F bgzf "$tmp/bad.xz" "$tmp/bad.bgz" 2> "$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "prepare of a corrupt image: status $rc, expected 1"
[ ! -e "$tmp/bad.bgz" ] || fail "prepare of a corrupt image left its output"
note "corrupt input: $(head -1 "$tmp/err")"

# A seek table whose checksum does not match its frame: the library
# reading what prepare wrote notices.
"$tool" prepare -q "$e/odd.img" "$tmp/sum.zst"
/usr/bin/python3 - "$tmp/sum.zst" <<'PYEOF'
import struct, sys
d = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<I", d[-9:-5])[0]
d[len(d) - (8 + n * 12 + 9) + 8 + 12 * 3 + 8] ^= 1     # entry 3's checksum
open(sys.argv[1], "wb").write(d)
PYEOF
rc=0; "$tool" prepare -q -F bgzf "$tmp/sum.zst" "$tmp/sum.bgz" 2> "$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "a seek table with a wrong checksum: status $rc, expected 1"
grep -q "checksum mismatch" "$tmp/err" || fail "a wrong seek-table checksum: $(cat "$tmp/err")"

for bad in "prepare" "prepare -F lz4 a b" "prepare -s 1 a b" "info" "frobnicate" \
           "prepare --verify $e/odd.img -"; do
    rc=0; "$tool" $bad > /dev/null 2>&1 || rc=$?
    [ "$rc" = 2 ] || fail "'autodecomp $bad': status $rc, expected 2"
done
rc=0; "$tool" info "$tmp/does-not-exist" 2> /dev/null || rc=$?
[ "$rc" = 1 ] || fail "info of a missing file: status $rc, expected 1"
note "all passed"
