#!/usr/bin/env python3
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# mk-seekable.py IN OUT [FRAME_BYTES] [--no-sum]
#
# Writes IN as a file in the zstd seekable format (facebook/zstd,
# contrib/seekable_format/zstd_seekable_compression_format.md), made
# independently of autodecomp's own writer so the tests check one against
# the other: each FRAME_BYTES (default 1 MiB) of IN compressed alone by the
# zstd command, then a skippable frame (magic 0x184D2A5E) holding the seek
# table: one entry per frame (Compressed_Size, Decompressed_Size and, unless
# --no-sum, the low 32 bits of the XXH64 of the frame's content, from the
# xxhsum command), then the footer (Number_Of_Frames, Seek_Table_Descriptor
# with the checksum flag 0x80, Seekable_Magic_Number 0x8F92EAB1).
import struct
import subprocess
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
if len(args) < 2:
    sys.exit("usage: mk-seekable.py IN OUT [FRAME_BYTES] [--no-sum]")
src, dst = args[0], args[1]
frame_bytes = int(args[2]) if len(args) > 2 else 1 << 20
with_sum = "--no-sum" not in sys.argv


def run(cmd, data):
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def xxh64_low32(data):
    return int(run(["xxhsum", "-H64"], data).split()[0], 16) & 0xFFFFFFFF


entries = []
with open(src, "rb") as f, open(dst, "wb") as out:
    while True:
        chunk = f.read(frame_bytes)
        if not chunk:
            break
        frame = run(["zstd", "-q", "-3", "--no-check", "-c"], chunk)
        out.write(frame)
        entry = struct.pack("<II", len(frame), len(chunk))
        if with_sum:
            entry += struct.pack("<I", xxh64_low32(chunk))
        entries.append(entry)
    table = b"".join(entries)
    table += struct.pack("<IBI", len(entries), 0x80 if with_sum else 0, 0x8F92EAB1)
    out.write(struct.pack("<II", 0x184D2A5E, len(table)))
    out.write(table)
