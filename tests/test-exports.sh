#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Several exports from one server (file dir=), as a server of many
# images is run:
#  1. An image replaced under its name (a new file of another size) is
#     served as the new image to new connections, while a connection
#     opened before goes on reading the old one, byte for byte.
#  2. Idle exports are freed beyond the 16 most recently used: after
#     connecting once to each of 24 images the server has freed at
#     least 8 (its debug log says so), and every image still reads back
#     right when connected to again.
#  3. Opening one export does not hold up the others: with every read
#     below delayed by 0.5 s, a zstd image whose frame walk takes many
#     reads is opened while an xz image, connected to a moment later,
#     answers its first read long before the zstd one.
. "${srcdir:-$(dirname "$0")}/functions.sh"
is_autodecomp || skip "needs the autodecomp filter"
requires nbdkit
requires_python_nbd
requires xz
requires zstd
nbdkit --filter=delay null --dump-plugin >/dev/null 2>&1 ||
    fail "nbdkit delay filter is missing"
setup_corpus
make_tmpdir

MiB=$(( 1024 * 1024 ))
dir=$tmp/images
mkdir "$dir"

# ---------------------------------------------------------------- 1. replaced
head -c $(( 8 * MiB )) "$CORPUS/disk.img" > "$tmp/old.img"
tail -c $(( 3 * MiB )) "$CORPUS/disk.img" > "$tmp/new.img"
xz -T1 --block-size=1MiB -c "$tmp/old.img" > "$dir/img"
xz -T1 --block-size=1MiB -c "$tmp/new.img" > "$tmp/new.xz"

start_nbdkit replaced -v --filter="$FILTER" file dir="$dir"
tlimit 120 /usr/bin/python3 - "$sock" "$tmp" "$dir" <<'PYEOF' || fail "an export replaced under its name"
import os, sys, nbd
sock, tmp, d = sys.argv[1:4]
old = open(os.path.join(tmp, "old.img"), "rb").read()
new = open(os.path.join(tmp, "new.img"), "rb").read()

def connect():
    h = nbd.NBD()
    h.set_export_name("img")
    h.connect_unix(sock)
    return h

def check(h, want, what):
    if h.get_size() != len(want):
        sys.exit("%s: size %d, want %d" % (what, h.get_size(), len(want)))
    step = 1 << 20
    for off in range(0, len(want), step):
        n = min(step, len(want) - off)
        if h.pread(n, off) != want[off:off + n]:
            sys.exit("%s: wrong bytes at %d" % (what, off))

h1 = connect()
check(h1, old, "before")
# rename() replaces the name; h1's plugin handle keeps the old file.
os.rename(os.path.join(tmp, "new.xz"), os.path.join(d, "img"))
h2 = connect()
check(h2, new, "the new image")
check(h1, old, "the old image, from the connection opened before")
h1.shutdown()
h2.shutdown()
check(connect(), new, "the new image, again")
PYEOF
nbdkit_alive || fail "nbdkit died"
grep -q "export 'img' is now" "$nbdkit_log" ||
    fail "the log does not say that the image was opened again"
stop_nbdkit

# ---------------------------------------------------------------- 2. idle
rm -f "$dir"/*
for i in $(seq 1 24); do
    # Each image different: a slice of the disk at its own offset.
    dd if="$CORPUS/disk.img" of="$tmp/img$i" bs=4096 skip=$(( i * 64 )) \
        count=$(( 128 + i )) status=none
    xz -T1 -c "$tmp/img$i" > "$dir/img$i"
done
start_nbdkit idle -v --filter="$FILTER" file dir="$dir"
tlimit 120 /usr/bin/python3 - "$sock" "$tmp" <<'PYEOF' || fail "many exports"
import os, sys, nbd
sock, tmp = sys.argv[1:3]
for rnd in range(2):
    for i in range(1, 25):
        want = open(os.path.join(tmp, "img%d" % i), "rb").read()
        h = nbd.NBD()
        h.set_export_name("img%d" % i)
        h.connect_unix(sock)
        if h.get_size() != len(want) or h.pread(len(want), 0) != want:
            sys.exit("round %d: img%d reads back wrong" % (rnd, i))
        h.shutdown()
PYEOF
nbdkit_alive || fail "nbdkit died"
# free_export logs one line per export freed; the server still runs, so
# these are the idle ones it let go.  Both rounds run in the same order,
# so every connection of the second round reopens an image.
sleep 0.5
freed=$(grep -c "autodecomp: export 'img[0-9]*': .* frame decodes" "$nbdkit_log" || true)
note "exports freed while running: $freed"
[ "$freed" -ge 8 ] || fail "only $freed idle exports were freed (want >= 8)"
stop_nbdkit

# ---------------------------------------------------------------- 3. parallel
rm -f "$dir"/*
# The zstd walk reads 1 MiB at a time: 8 MiB of data that does not
# compress makes more than 8 reads, 4 s and more at 0.5 s each.  (zstd
# reading a pipe does not declare the size, so it is walked at connect;
# autodecomp-fetch-size=0 keeps the walk's reads small.)
head -c $(( 8 * MiB )) /dev/urandom > "$tmp/slow.img"
cat "$tmp/slow.img" | zstd -q -c > "$dir/slow.zst"
cp "$tmp/img1" "$tmp/fast.img"
xz -T1 -c "$tmp/fast.img" > "$dir/fast.xz"
start_nbdkit parallel --filter="$FILTER" --filter=delay file dir="$dir" \
    delay-read=500ms autodecomp-fetch-size=0
tlimit 120 /usr/bin/python3 - "$sock" "$tmp" <<'PYEOF' || fail "opening one export held up another"
import os, sys, threading, time, nbd
sock, tmp = sys.argv[1:3]
done = {}
errors = []

def read_first(name, img):
    try:
        want = open(os.path.join(tmp, img), "rb").read(4096)
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_unix(sock)
        if h.pread(4096, 0) != want:
            errors.append("%s: wrong bytes" % name)
        done[name] = time.monotonic()
    except Exception as e:
        errors.append("%s: %s" % (name, e))

t0 = time.monotonic()
slow = threading.Thread(target=read_first, args=("slow.zst", "slow.img"))
slow.start()
time.sleep(0.3)
fast = threading.Thread(target=read_first, args=("fast.xz", "fast.img"))
fast.start()
slow.join()
fast.join()
if errors:
    sys.exit("; ".join(errors))
s, f = done["slow.zst"] - t0, done["fast.xz"] - t0
print("first read: slow.zst %.1f s, fast.xz %.1f s" % (s, f))
if not f < s - 1.5:
    sys.exit("fast.xz waited for slow.zst (%.1f s, %.1f s)" % (f, s))
PYEOF
nbdkit_alive || fail "nbdkit died"
stop_nbdkit
