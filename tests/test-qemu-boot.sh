#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-qemu-boot.sh: QEMU boots from the filter's export.
#
# A copy of the corpus image gets a boot sector (boot-sector.S) in its
# first 512 bytes, which ext4 leaves unused.  The boot sector reads a
# sector at 40 MiB through the BIOS and compares it with the bytes the
# original has there, then prints OK or BAD on the serial port.  The
# copy is compressed as xz (4 MiB blocks), zstd (one frame), gzip (one
# member) and bzip2, and QEMU (TCG, SeaBIOS, virtio disk) boots each from
# nbdkit with the filter.  Skips (77) without qemu-system-x86_64 or the
# binutils to assemble the boot sector.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires qemu-system-x86_64
requires as
requires ld
requires objcopy
requires nm
setup_corpus
make_tmpdir

# Assemble the boot sector and find where to patch it.
as --32 -o "$tmp/boot.o" "$srcdir/boot-sector.S"
ld -m elf_i386 -Ttext 0x7c00 -o "$tmp/boot.elf" "$tmp/boot.o"
objcopy -O binary -j .text "$tmp/boot.elf" "$tmp/boot.bin"
[ "$(stat -c %s "$tmp/boot.bin")" = 512 ] || fail "boot sector is not 512 bytes"
lba_at=$(( 0x$(nm "$tmp/boot.elf" | awk '$3 == "lba" { print $1 }') - 0x7c00 ))
sig_at=$(( 0x$(nm "$tmp/boot.elf" | awk '$3 == "sig" { print $1 }') - 0x7c00 ))

# The bootable image: the first nonzero-looking sector at or after 40 MiB.
cp "$CORPUS/disk.img" "$tmp/boot.img"
/usr/bin/python3 - "$tmp/boot.img" "$tmp/boot.bin" "$lba_at" "$sig_at" <<'PYEOF'
import struct, sys
img, boot, lba_at, sig_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sector = bytearray(open(boot, "rb").read())
with open(img, "r+b") as f:
    if f.read(1024).count(0) != 1024:
        sys.exit("the image's first 1024 bytes are in use")
    lba = 40 * 2048
    while True:
        f.seek(lba * 512)
        sig = f.read(16)
        if len(sig) < 16:
            sys.exit("no nonzero sector found")
        if sig.count(0) < 8:
            break
        lba += 1
    sector[lba_at:lba_at + 8] = struct.pack("<Q", lba)
    sector[sig_at:sig_at + 16] = sig
    f.seek(0)
    f.write(sector)
PYEOF

xz -1 -T2 --block-size=4MiB -c "$tmp/boot.img" > "$tmp/boot.img.xz"
zstd -q -3 -c "$tmp/boot.img" > "$tmp/boot.img.zst"
gzip -1 -c "$tmp/boot.img" > "$tmp/boot.img.gz"
lbzip2 -1 -n2 -c "$tmp/boot.img" > "$tmp/boot.img.bz2"

failures=0
i=0
for comp in "$tmp"/boot.img.xz "$tmp"/boot.img.zst "$tmp"/boot.img.gz \
            "$tmp"/boot.img.bz2; do
    name=$(basename "$comp")
    i=$((i+1))
    progress "booting $name ($i/4, $(elapsed))"
    start_nbdkit "$name" --filter="$FILTER" file "$comp"
    serial=$tmp/$name.serial
    : > "$serial"
    qemu-system-x86_64 -accel tcg -machine pc -m 64 -nodefaults \
        -display none -no-reboot \
        -serial "file:$serial" \
        -drive "if=none,id=d0,format=raw,readonly=on,file.driver=nbd,file.server.type=unix,file.server.path=$sock" \
        -device virtio-blk-pci,drive=d0,bootindex=0 \
        > "$tmp/$name.qemu.log" 2>&1 &
    qpid=$!
    cleanup_fn stop_pid "$qpid"
    result=timeout
    for (( i = 0; i < 600 * ${AUTODECOMP_TEST_TIMEOUT_SCALE:-1}; i++ )); do
        if grep -q AUTODECOMP-BOOT-OK "$serial"; then result=ok; break; fi
        if grep -q AUTODECOMP-BOOT-BAD "$serial"; then result=bad; break; fi
        kill -0 "$qpid" 2>/dev/null || { result="qemu exited"; break; }
        sleep 0.1
    done
    stop_pid "$qpid"
    note "$name: $result"
    if [ "$result" != ok ]; then
        cat "$tmp/$name.qemu.log" >&2
        failures=$((failures + 1))
    fi
    nbdkit_alive || fail "$name: nbdkit died"
    stop_nbdkit
done
[ $failures -eq 0 ] || fail "$failures of 4 images did not boot"
