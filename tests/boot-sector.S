/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * boot-sector.S: the 512-byte boot sector test-qemu-boot.sh boots.
 *
 * The BIOS loads it at 0x7c00 with the boot drive in DL.  It reads one
 * sector (the LBA patched in at "lba") with INT 13h AH=42h to 0x8000,
 * compares its first 16 bytes with "sig" (patched in too: the bytes the
 * original image has there), and prints AUTODECOMP-BOOT-OK or
 * AUTODECOMP-BOOT-BAD on the first serial port, then halts.  So a boot
 * proves that QEMU read sector 0 and a sector far into the disk through
 * the filter, and got the right bytes.
 *
 * Assemble: as --32; ld -m elf_i386 -Ttext 0x7c00; objcopy -O binary.
 */
        .code16
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0x7c00, %sp
        sti
        cld
        mov $dap, %si
        mov $0x42, %ah
        int $0x13
        jc fail
        mov $0x8000, %si
        mov $sig, %di
        mov $16, %cx
        repe cmpsb
        jne fail
        mov $ok, %si
        jmp print
fail:
        mov $bad, %si
print:
        mov $0x3f8, %dx
1:      lodsb
        test %al, %al
        jz 2f
        out %al, %dx
        jmp 1b
2:      cli
        hlt
        jmp 2b
        .balign 4
dap:    .byte 16, 0
        .word 1
        .word 0x8000, 0
lba:    .quad 0
sig:    .fill 16, 1, 0
ok:     .asciz "AUTODECOMP-BOOT-OK\r\n"
bad:    .asciz "AUTODECOMP-BOOT-BAD\r\n"
        .org 510
        .word 0xaa55
