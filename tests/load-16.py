#!/usr/bin/python3
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# load-16.py: many connections reading at random at once, every byte
# compared with the original, and nbdkit's peak memory checked against a
# bound.  Part of the nbdkit-autodecomp test suite (test-load-16.sh).
#
#   load-16.py --uri URI --original FILE --pid NBDKIT_PID --cache-size BYTES
#              [--slack BYTES] [--connections 16] [--reads 400] [--seed S]
#              [--label L]
#
# 1. One connection checks the export size and reads the first 4 KiB; the
#    resident size of nbdkit right after that read (VmRSS in
#    /proc/PID/status) is the baseline.
# 2. --connections handles (libnbd, one Python thread each, all connected
#    before any reads start) each make --reads reads of 4 KiB .. 1 MiB
#    (log-uniform, so many small and some large ones; half of them at
#    multiples of 4 KiB, half anywhere) at random offsets, from a list made
#    up front from the seed (printed).  Every read must succeed and return
#    the original bytes.
# 3. Meanwhile a thread samples VmRSS every 20 ms; after the reads, VmHWM
#    (the peak resident size) is read while nbdkit still runs.  The test
#    fails when VmHWM > cache size + slack + baseline: the cache bounds the
#    decoded data kept, and the slack (default 64 MiB) has to cover decoders,
#    frames being decoded, request buffers and thread stacks.
#
# Prints one line with the numbers (MiB).  Exit 0 pass, 1 fail, 77 when the
# nbd module is missing.  Must be run with Debian's /usr/bin/python3, which
# has libnbd's nbd module.

import argparse
import math
import mmap
import os
import random
import sys
import threading
import time

try:
    import nbd
except ImportError:
    sys.stderr.write("load-16.py: no 'nbd' module: run with /usr/bin/python3 "
                     "(Debian package python3-libnbd)\n")
    sys.exit(77)

KiB = 1024
MiB = 1024 * KiB


def parse_size(s):
    s = s.strip()
    for suf, m in (("KiB", KiB), ("MiB", MiB), ("GiB", 1024 * MiB),
                   ("K", KiB), ("M", MiB), ("G", 1024 * MiB)):
        if s.endswith(suf):
            return int(s[: -len(suf)]) * m
    return int(s)


def proc_status(pid):
    """VmRSS and VmHWM of pid, in bytes (None when it is gone)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * KiB
    except OSError:
        return None
    return out


def make_reads(rng, size, count):
    reads = []
    for _ in range(count):
        n = int(math.exp(rng.uniform(math.log(4 * KiB), math.log(MiB + 1))))
        n = max(4 * KiB, min(MiB, n, size))
        off = rng.randrange(size - n + 1)
        if rng.random() < 0.5:
            off -= off % (4 * KiB)
        reads.append((off, n))
    return reads


class Shared:
    def __init__(self):
        self.lock = threading.Lock()
        self.reads = 0
        self.bytes = 0
        self.errors = []
        self.stop = False


def worker(h, reads, orig, sh, barrier):
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        return
    for off, n in reads:
        if sh.stop:
            break
        try:
            data = h.pread(n, off)
        except nbd.Error as e:
            with sh.lock:
                sh.errors.append("read %d+%d failed: %s" % (off, n, e))
            continue
        if data != orig[off:off + n]:
            i = next(k for k in range(n) if data[k] != orig[off + k])
            with sh.lock:
                sh.errors.append("read %d+%d: wrong bytes, first at offset %d"
                                 % (off, n, off + i))
            continue
        with sh.lock:
            sh.reads += 1
            sh.bytes += n


def main():
    ap = argparse.ArgumentParser(description="16 connections at once, peak RSS bound")
    ap.add_argument("--uri", required=True)
    ap.add_argument("--original", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--cache-size", type=parse_size, required=True)
    ap.add_argument("--slack", type=parse_size, default=64 * MiB)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--reads", type=int, default=400)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    label = (args.label + ": ") if args.label else ""

    fd = os.open(args.original, os.O_RDONLY)
    orig_size = os.fstat(fd).st_size
    orig = mmap.mmap(fd, 0, prot=mmap.PROT_READ)

    t0 = time.monotonic()
    handles = []
    h0 = nbd.NBD()
    h0.connect_uri(args.uri)
    handles.append(h0)
    size = h0.get_size()
    if size != orig_size:
        print("%sFAIL: export size %d, original %d" % (label, size, orig_size))
        return 1
    first = h0.pread(4096, 0)
    if first != orig[0:4096]:
        print("%sFAIL: the first 4 KiB are wrong" % label)
        return 1
    st = proc_status(args.pid)
    if st is None:
        print("%sFAIL: nbdkit (pid %d) is gone" % (label, args.pid))
        return 1
    baseline = st["VmRSS"]
    t_first = time.monotonic() - t0

    for _ in range(args.connections - 1):
        h = nbd.NBD()
        h.connect_uri(args.uri)
        handles.append(h)
    rng = random.Random(seed)
    lists = [make_reads(rng, size, args.reads) for _ in handles]

    sh = Shared()
    peak_rss = [baseline]
    sampling = threading.Event()

    def sampler():
        while not sampling.wait(0.02):
            s = proc_status(args.pid)
            if s is None:
                return
            peak_rss[0] = max(peak_rss[0], s["VmRSS"])

    barrier = threading.Barrier(len(handles))
    smp = threading.Thread(target=sampler)
    smp.start()
    t1 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(h, l, orig, sh, barrier))
          for h, l in zip(handles, lists)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.monotonic() - t1
    sampling.set()
    smp.join()
    st = proc_status(args.pid)
    if st is None:
        print("%sFAIL: nbdkit (pid %d) died during the reads" % (label, args.pid))
        return 1
    hwm = st["VmHWM"]
    for h in handles:
        try:
            h.shutdown()
        except nbd.Error:
            pass

    bound = args.cache_size + args.slack + baseline
    total = args.reads * len(handles)
    print("%sseed=%d conns=%d reads=%d/%d bytes=%.0fMiB time=%.1fs (%.0f MiB/s) "
          "first-read=%.2fs baseline-rss=%.1fMiB peak-rss(sampled)=%.1fMiB "
          "VmHWM=%.1fMiB bound=%.1fMiB (cache %.0f + slack %.0f + baseline) "
          "errors=%d"
          % (label, seed, len(handles), sh.reads, total, sh.bytes / MiB, dt,
             sh.bytes / MiB / max(dt, 1e-9), t_first, baseline / MiB, peak_rss[0] / MiB,
             hwm / MiB, bound / MiB, args.cache_size / MiB, args.slack / MiB,
             len(sh.errors)))
    rc = 0
    if sh.errors:
        for e in sh.errors[:10]:
            print("%sFAIL: %s" % (label, e))
        rc = 1
    if sh.reads != total:
        print("%sFAIL: %d of %d reads right" % (label, sh.reads, total))
        rc = 1
    if hwm > bound:
        print("%sFAIL: nbdkit's peak RSS (VmHWM) %.1f MiB is over the bound %.1f MiB "
              "(seed=%d)" % (label, hwm / MiB, bound / MiB, seed))
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
