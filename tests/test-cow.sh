#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-cow.sh: writable overlay above the filter.
#   nbdkit --filter=cow --filter=$FILTER file X     (cow above ours)
# Writes patterns at a few offsets (start, across a 1 MiB frame edge, across
# a 4 MiB edge, the middle, the very end) with nbdsh, reads them back, and
# checks that every other byte still equals the original (a whole read of the
# export).  Then, without cow, the export must be read-only: a write fails.
# One pair per format family (family_pairs): each costs a whole read.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires nbdsh
requires_python_nbd
nbdkit --filter=cow null --dump-plugin >/dev/null 2>&1 || fail "nbdkit cow filter is missing"
setup_corpus
make_tmpdir

n=0
while read -r comp orig <&3; do
    name=$(basename "$comp")
    start_nbdkit "cow-$name" --filter=cow --filter="$FILTER" file "$comp"
    ORIG=$orig tlimit 300 nbdsh -u "$uri" -c '
import os, sys
MiB = 1 << 20
orig = open(os.environ["ORIG"], "rb").read()
size = h.get_size()
assert size == len(orig), "export size %d, original %d" % (size, len(orig))
assert not h.is_read_only(), "cow export is read-only"
writes = [(0, 4096), (MiB - 3, 7), (4 * MiB - 30000, 70000),
          (size // 2 + 12345, 1000), (size - 100, 100)]
expect = bytearray(orig)
for i, (off, n) in enumerate(writes):
    pat = bytes([(0xa5 + 17 * i + j) & 0xff for j in range(n)])
    h.pwrite(pat, off)
    expect[off:off + n] = pat
for i, (off, n) in enumerate(writes):
    got = h.pread(n, off)
    if got != bytes(expect[off:off + n]):
        sys.exit("pattern %d at %d (+%d) did not read back" % (i, off, n))
h.flush()
step = 4 * MiB
for off in range(0, size, step):
    n = min(step, size - off)
    got = h.pread(n, off)
    if got != bytes(expect[off:off + n]):
        d = next(k for k in range(n) if got[k] != expect[off + k])
        sys.exit("after writes, byte %d differs (read at %d +%d)" % (off + d, off, n))
' || fail "$name: cow write/read-back check failed"
    nbdkit_alive || fail "$name: nbdkit died"
    stop_nbdkit

    # without cow: read-only
    start_nbdkit "ro-$name" --filter="$FILTER" file "$comp"
    tlimit 60 nbdsh -u "$uri" -c '
import sys
ro = h.is_read_only()
try:
    h.pwrite(b"x" * 512, 0)
except nbd.Error as e:
    pass
else:
    sys.exit("a write to the export without cow succeeded (read_only=%s)" % ro)
if not ro:
    sys.exit("export without cow does not advertise read-only")
assert len(h.pread(512, 0)) == 512
' || fail "$name: export without cow is not read-only"
    nbdkit_alive || fail "$name: nbdkit died"
    stop_nbdkit
    n=$((n+1))
    note "$name: cow ok, read-only without cow ($(elapsed))"
done 3< <(family_pairs)
[ "$n" -gt 0 ] || skip "no pairs the filter can serve"
note "$n pairs ok ($(elapsed))"
