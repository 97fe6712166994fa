#!/usr/bin/python3
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# random-reads.py: read an NBD export at random places and compare every byte
# with the original file.  Part of the nbdkit-autodecomp test suite.
#
#   random-reads.py --uri URI --original FILE [--count N] [--connections C]
#                   [--seed S] [--max-len BYTES] [--frame-size BYTES ...]
#                   [--allow-errors [--max-wrong-bytes N] [--sweep CHUNK]]
#
# Reads are 1 byte .. 4 MiB long and biased towards the places a decompressor
# gets wrong: many cross 1 MiB and 4 MiB boundaries (frame/block sizes in the
# corpus), some cross BGZF member edges, some end at the very end of the
# image, some are 1 byte on either side of a frame edge.  The list of reads is
# made up front from the seed (printed), so a run is reproducible whatever the
# thread scheduling; with --connections C the reads are dealt round-robin to
# C threads, each with its own nbd.NBD handle, all connected before any reads;
# each thread first does the same 8 reads, so they race for cold frames.
#
# Default mode: exit 1 on the first mismatch or error, naming offset/length.
#
# --allow-errors (for corrupted/truncated images): a read may fail (an
# nbd.Error), but then the server must still answer: the handle must still be
# connected and a further read must return (data or an error).  Bytes that are
# returned and differ from the original are counted ("wrong bytes"); with
# --max-wrong-bytes N, exit 1 if there are more.  --sweep CHUNK first reads
# the whole export sequentially in CHUNK-byte reads.  The export size may
# differ from the original's then: bytes returned past the original's end are
# wrong bytes too.  If the export cannot be opened at all (connect fails
# twice), that is reported as "refused" and is not a failure.
#
# Must be run with Debian's /usr/bin/python3, which has libnbd's nbd module.

import argparse
import mmap
import os
import random
import sys
import threading
import time

try:
    import nbd
except ImportError:
    sys.stderr.write("random-reads.py: no 'nbd' module: run with /usr/bin/python3 "
                     "(Debian package python3-libnbd)\n")
    sys.exit(77)

KiB = 1024
MiB = 1024 * 1024


def parse_size(s):
    s = s.strip()
    mult = 1
    for suf, m in (("KiB", KiB), ("MiB", MiB), ("K", KiB), ("M", MiB), ("k", KiB)):
        if s.endswith(suf):
            s, mult = s[: -len(suf)], m
            break
    return int(s) * mult


def log_uniform(rng, lo, hi):
    """An integer in [lo, hi], uniform in log scale: many small, some huge."""
    if hi <= lo:
        return lo
    import math
    x = math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))
    return max(lo, min(hi, int(x)))


def make_reads(rng, size, count, max_len, frames):
    """The list of (offset, length, kind) to read, all within [0, size).

    Most reads are at most ~1 MiB long (typ), so thousands of them stay
    cheap; 4% ("big") are up to max_len (4 MiB) and straddle a frame edge."""
    reads = []
    if size == 0:
        return reads
    max_len = min(max_len, size)
    typ = min(max_len, MiB + 8 * KiB)
    small_frames = [f for f in frames if f <= MiB] or frames
    kinds = [("small", 25), ("cross", 33), ("end", 10), ("edge1", 15),
             ("big", 4), ("start", 3), ("whole-frame", 10)]
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]

    def straddle(n, fs):
        """An offset so that [off, off+n) crosses a multiple of fs."""
        edges = (size - 1) // fs
        if edges < 1 or n < 2:
            return rng.randrange(0, size - n + 1)
        edge = rng.randint(1, edges) * fs
        before = rng.choice([1, rng.randint(1, n - 1), n - 1])
        return max(0, min(size - n, edge - before))

    for _ in range(count):
        kind = rng.choices(names, weights)[0]
        if kind == "small":
            n = log_uniform(rng, 1, min(4096, max_len))
            off = rng.randrange(0, size - n + 1)
        elif kind == "cross":
            # straddle a frame edge (1 MiB, 4 MiB, ...), often by a little
            n = log_uniform(rng, 2, typ)
            off = straddle(n, rng.choice(frames))
        elif kind == "end":
            n = log_uniform(rng, 1, typ)
            off = size - n - rng.choice([0, 0, 0, rng.randint(0, 4096)])
            off = max(0, off)
        elif kind == "edge1":
            fs = rng.choice(frames)
            edge = rng.randint(0, size // fs) * fs
            off = max(0, min(size - 1, edge + rng.choice([-1, 0])))
            n = 1
        elif kind == "big":
            n = log_uniform(rng, max(1, min(MiB, max_len // 2)), max_len)
            off = straddle(n, rng.choice(frames))
        elif kind == "start":
            n = log_uniform(rng, 1, typ)
            off = 0
        else:  # whole-frame: exactly one aligned frame
            fs = rng.choice(small_frames)
            n = min(fs, max_len, size)
            off = rng.randint(0, (size - n) // fs) * fs if size >= fs else 0
        reads.append((off, n, kind))
    return reads


def count_diff(a, b):
    """Number of differing bytes between equal-length a and b (fast path for
    equal 4 KiB pieces)."""
    if a == b:
        return 0
    d = 0
    step = 4096
    for i in range(0, len(a), step):
        x, y = a[i:i + step], b[i:i + step]
        if x != y:
            d += sum(1 for p, q in zip(x, y) if p != q)
    return d


def first_diff(a, b):
    for i in range(len(a)):
        if a[i] != b[i]:
            return i
    return -1


class Result:
    def __init__(self):
        self.lock = threading.Lock()
        self.reads = 0
        self.bytes = 0
        self.failed = 0
        self.wrong_bytes = 0
        self.wrong_reads = 0
        self.first_error = None
        self.first_wrong = None
        self.stop = False


def connect(uri):
    h = nbd.NBD()
    h.set_handle_name("random-reads")
    h.connect_uri(uri)
    return h


def expect(orig, orig_size, off, data):
    """Compare data read at off with the original; returns wrong byte count."""
    n = len(data)
    in_orig = max(0, min(n, orig_size - off))
    wrong = n - in_orig  # anything past the original's end is wrong
    if in_orig:
        wrong += count_diff(data[:in_orig], orig[off:off + in_orig])
    return wrong


def worker(args, uri, orig, orig_size, reads, res, barrier, handle=None):
    try:
        h = handle or connect(uri)
    except nbd.Error as e:
        with res.lock:
            res.first_error = res.first_error or "connect: %s" % e
            res.stop = True
        barrier.abort()
        return
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        return
    for off, n, kind in reads:
        if res.stop:
            break
        try:
            data = h.pread(n, off)
        except nbd.Error as e:
            with res.lock:
                res.reads += 1
                res.failed += 1
                if res.first_error is None:
                    res.first_error = "read offset=%d length=%d (%s) failed: %s" % (off, n, kind, e)
            if not args.allow_errors:
                res.stop = True
                break
            # The server must still answer: the handle is connected, and a
            # further read (of a small piece elsewhere) returns data or error.
            if h.aio_is_dead() or h.aio_is_closed():
                with res.lock:
                    res.first_error = ("after read offset=%d length=%d failed, the "
                                       "connection is dead: %s" % (off, n, e))
                    res.dead = True
                    res.stop = True
                break
            probe = 0 if off > 0 else max(0, min(orig_size, args.size) - 512)
            try:
                pdata = h.pread(min(512, args.size - probe), probe)
                w = expect(orig, orig_size, probe, pdata)
                with res.lock:
                    res.reads += 1
                    res.bytes += len(pdata)
                    res.wrong_bytes += w
            except nbd.Error as e2:
                with res.lock:
                    res.reads += 1
                    res.failed += 1
                if h.aio_is_dead() or h.aio_is_closed():
                    with res.lock:
                        res.first_error = ("after a failed read the server did not "
                                           "answer a probe read: %s" % e2)
                        res.dead = True
                        res.stop = True
                    break
            continue
        if len(data) != n:
            with res.lock:
                res.first_error = "read offset=%d length=%d returned %d bytes" % (off, n, len(data))
                res.stop = True
            break
        w = expect(orig, orig_size, off, data)
        with res.lock:
            res.reads += 1
            res.bytes += n
            if w:
                res.wrong_reads += 1
                res.wrong_bytes += w
                if res.first_wrong is None:
                    in_orig = max(0, min(n, orig_size - off))
                    i = first_diff(data[:in_orig], orig[off:off + in_orig])
                    if i < 0:
                        i = in_orig
                    res.first_wrong = ("read offset=%d length=%d (%s): %d wrong bytes, "
                                       "first at offset %d" % (off, n, kind, w, off + i))
                if not args.allow_errors:
                    res.stop = True
        if res.stop and not args.allow_errors:
            break
    try:
        h.shutdown()
    except nbd.Error:
        pass


def main():
    ap = argparse.ArgumentParser(description="random reads of an NBD export, compared with the original")
    ap.add_argument("--uri", required=True)
    ap.add_argument("--original", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-len", type=parse_size, default=4 * MiB)
    ap.add_argument("--frame-size", type=parse_size, action="append",
                    help="frame sizes whose edges reads should straddle "
                         "(default 1 MiB, 4 MiB, 64 KiB, 65280)")
    ap.add_argument("--allow-errors", action="store_true")
    ap.add_argument("--max-wrong-bytes", type=int, default=None)
    ap.add_argument("--sweep", type=parse_size, default=0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    frames = args.frame_size or [MiB, 4 * MiB, 64 * KiB, 65280]
    label = (args.label + ": ") if args.label else ""

    fd = os.open(args.original, os.O_RDONLY)
    orig_size = os.fstat(fd).st_size
    orig = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if orig_size else b""

    res = Result()
    res.dead = False
    t0 = time.monotonic()

    # First handle: check the size.
    try:
        h0 = connect(args.uri)
    except nbd.Error as e:
        if not args.allow_errors:
            print("%sFAIL: connect %s: %s (seed=%d)" % (label, args.uri, e, seed))
            return 1
        try:  # the server must answer a second time too
            h0 = connect(args.uri)
        except nbd.Error as e2:
            print("%srefused=1 seed=%d connect: %s / again: %s" % (label, seed, e, e2))
            return 0
        print("%snote: first connect failed (%s), second worked" % (label, e))
    size = h0.get_size()
    args.size = size
    if size != orig_size:
        if not args.allow_errors:
            print("%sFAIL: export size %d != original size %d (seed=%d)"
                  % (label, size, orig_size, seed))
            return 1
        print("%snote: export size %d != original size %d" % (label, size, orig_size))

    rng = random.Random(seed)
    sweep = []
    if args.sweep and size:
        sweep = [(o, min(args.sweep, size - o), "sweep")
                 for o in range(0, size, args.sweep)]
    reads = make_reads(rng, size, args.count, args.max_len, frames)

    conns = max(1, args.connections)
    if sweep:
        # sequential sweep on the first handle, before anything else
        worker(args, args.uri, orig, orig_size, sweep, res, threading.Barrier(1), handle=h0)
        h0 = None
        if res.stop:
            reads = []
    if not reads:
        conns = 0

    barrier = threading.Barrier(max(1, conns))
    parts = [reads[i::conns] for i in range(conns)]
    if conns > 1:
        # All connections start with the same few reads at the same moment
        # (after the barrier), so they race for the same cold frames.
        same = make_reads(rng, size, 8, args.max_len, frames)
        parts = [same + p for p in parts]
        reads = reads + same * conns
    threads = []
    for i in range(conns):
        handle = h0 if i == 0 else None
        t = threading.Thread(target=worker,
                             args=(args, args.uri, orig, orig_size, parts[i], res, barrier, handle))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    dt = time.monotonic() - t0

    summary = ("%sseed=%d conns=%d reads=%d bytes=%d failed=%d wrong_reads=%d "
               "wrong_bytes=%d time=%.1fs"
               % (label, seed, conns, res.reads, res.bytes, res.failed,
                  res.wrong_reads, res.wrong_bytes, dt))
    print(summary)
    if res.first_wrong:
        print("%sfirst wrong: %s" % (label, res.first_wrong))
    if res.first_error:
        print("%sfirst error: %s" % (label, res.first_error))
    if not args.allow_errors:
        if res.first_error or res.first_wrong:
            print("%sFAIL (seed=%d)" % (label, seed))
            return 1
        want = len(reads) + len(sweep)
        if res.reads != want:
            print("%sFAIL: did %d reads of %d" % (label, res.reads, want))
            return 1
        return 0
    if res.dead:
        print("%sFAIL: server stopped answering after an error (seed=%d)" % (label, seed))
        return 1
    if args.max_wrong_bytes is not None and res.wrong_bytes > args.max_wrong_bytes:
        print("%sFAIL: %d wrong bytes returned (at most %d allowed) (seed=%d)"
              % (label, res.wrong_bytes, args.max_wrong_bytes, seed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
