#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# A single gzip member whose trailer was forged: the deflate data is
# cut at 300 kB, and the last 8 bytes claim 17,000,000 bytes, so the
# member is indexed lazily (one pass as reads need it, from a buffer that
# holds the whole small file).  The pass fails in its first span (the
# file ends inside the deflate data); each later read rewinds the pass to
# the start of the file and must fail the same way.  A bug once rewound
# with a stale input pointer there, and the next read crashed nbdkit.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires_python_nbd
make_tmpdir

head -c 600000 /dev/urandom > "$tmp/data"
gzip -c "$tmp/data" > "$tmp/data.gz"
head -c 300000 "$tmp/data.gz" > "$tmp/cut.gz"
/usr/bin/python3 -c 'import struct, sys
sys.stdout.buffer.write(struct.pack("<II", 0x12345678, 17000000))' \
    >> "$tmp/cut.gz"

# -v: a failure that repeats the last one is logged at debug level.
start_nbdkit cut -v --filter="$FILTER" file "$tmp/cut.gz"
tlimit 120 /usr/bin/python3 - "$uri" <<'PYEOF'
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
if h.get_size() != 17000000:
    sys.exit("size %d, expected the 17000000 the trailer claims" % h.get_size())
for off in (0, 0, 1 << 20, 17000000 - 4096, 4096):
    try:
        h.pread(4096, off)
        sys.exit("a read at %d of the truncated member succeeded" % off)
    except nbd.Error as e:
        if e.errnum != 5:
            sys.exit("read at %d: %s (expected EIO)" % (off, e))
h.shutdown()
PYEOF
kill -0 "$nbdkit_pid" 2>/dev/null || fail "nbdkit died"
n=$(grep -c 'autodecomp: .*is truncated' "$nbdkit_log") || true
[ "$n" -ge 5 ] || fail "expected 5 'is truncated' errors in the log, found $n"
n=$(grep -c 'error: autodecomp: .*is truncated' "$nbdkit_log") || true
[ "$n" -eq 1 ] || fail "the same error was logged $n times at error level"
note "5 reads failed with EIO, the same error each time; nbdkit alive"
