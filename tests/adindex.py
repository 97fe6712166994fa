# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Persisted index files in the tests (the layout is
# docs/index-format.md): the frames, the gzip points, and the file's
# checksum made right again after a change.  The tests' Python reads
# it with PYTHONPATH="$srcdir".

import struct
import subprocess


def frames(d):
    """The frames of index file d: (uoff, usize, coff, csize, aux)."""
    n, = struct.unpack("<Q", d[40:48])
    return [struct.unpack("<QQQQQ", d[64 + 48 * i:64 + 48 * i + 40])
            for i in range(n)]


def gzip_points(d):
    """The gzip checkpoints of d that are points, in order: a dict of
    checkpoint number to the offset in d of the point's byte offset
    (then bits 1, skip 8, window size 4, its length 4, the window)."""
    n, = struct.unpack("<Q", d[40:48])
    o = 64 + 48 * n + 4
    nck, = struct.unpack("<Q", d[o:o + 8])
    o += 8
    points = {}
    for i in range(nck):
        t = d[o]
        o += 1
        if t == 0:
            continue
        o += 4
        if t == 2:
            points[i] = o
            o += 25 + struct.unpack("<I", d[o + 21:o + 25])[0]
    return points


def reseal(d):
    """Make the checksum at the end of d (a bytearray) right again."""
    h = subprocess.run(["xxhsum", "-H64"], input=bytes(d[:-8]),
                       capture_output=True, check=True).stdout.split()[0]
    d[-8:] = struct.pack("<Q", int(h, 16))
