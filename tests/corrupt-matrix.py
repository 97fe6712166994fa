#!/usr/bin/python3
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# corrupt-matrix.py: the corruption matrix of the nbdkit-autodecomp test
# suite (run by test-corrupt-matrix.sh).
#
#   corrupt-matrix.py --filter SO --original IMG --tmp DIR --seed S
#                     [--variants N] [--workers W] [--hang-timeout SECS]
#                     [--only NAME[:I[,I...]]] [--keep-dir DIR] [--autodecomp]
#                     [--verbose] [--extra NBDKIT-ARG ...] NAME:FORMAT:FILE ...
#
# For each compressed FILE of the small image IMG (NAME is a label such as
# "xz-1m", FORMAT what to pass as autodecomp-format=) this makes N damaged
# variants, each a pure function of (seed, NAME, i) so any one of them can be
# made again alone (--only NAME:I):
#   i % 4 == 0, 1  one byte XORed with a random non-zero value,
#   i % 4 == 2     the file truncated,
#   i % 4 == 3     a range of 1 byte .. 64 KiB set to zero (a range that was
#                  already all zero is moved until it changes something).
# The places are uniform over the file 40% of the time, and otherwise in its
# first or last 512 bytes (headers, indexes, seek tables, trailers) or within
# 64 bytes of a structure found in it (zstd/skippable frame magics, gzip
# member headers, xz stream headers/footers, lzip member headers, right
# after the trailer of the member before, bzip2 block and end-of-stream
# magics, which are not byte-aligned and are found bit by bit).
#
# For each NAME, ONE nbdkit serves a directory of variants (the file plugin's
# dir=, export name = file name; the filter keeps one index per export name,
# so every variant has a name of its own):
#   nbdkit -f -U SOCK --filter=SO file dir=DIR [autodecomp-format=FORMAT
#          autodecomp-cache-size=16M]
# W worker threads (libnbd handles) each take the next variant, write it
# into DIR, connect to its export, read ALL of it: 64..512 KiB reads at
# multiples of 64 KiB in random order (up to the original size + 1 MiB if
# the export is larger), 6 unaligned reads, one across the end, and the
# last 64 KiB of a larger export; then disconnect and delete the file.
# Counted: connect errors (a damaged header may legitimately fail at
# connect), exports whose size differs from the original's (reported, with
# the variant), read errors, bytes returned right, bytes returned wrong
# (bytes past the original's end are wrong).  The original file itself is read first and last, and must be
# served whole and right (the first shows the test can pass, the last that
# the shared cache was not poisoned by all the damage in between).
#
# Failures (exit 1): any wrong byte (every format used has a check over every
# decoded unit that the filter verifies before serving it: xz block checks,
# zstd frame checksums or seek-table checksums, gzip CRC32, bzip2 block and
# stream CRCs, lzip member CRC32s); nbdkit dying (the variant(s) being read when it died are
# re-run one at a time on a fresh server to find the one that kills it, and
# it is restarted so the run goes on); a read or connect taking longer than
# --hang-timeout (nbdkit is killed, recorded as a hang, restarted); a
# connection that nbdkit drops while alive.  Failing variants are written to
# --keep-dir so they can be reproduced by hand.
#
# Must be run with Debian's /usr/bin/python3, which has libnbd's nbd module.

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time

try:
    import nbd
except ImportError:
    sys.stderr.write("corrupt-matrix.py: no 'nbd' module: run with /usr/bin/python3 "
                     "(Debian package python3-libnbd)\n")
    sys.exit(77)

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB


# ---------------------------------------------------------------- variants

def bit_offsets(data, pattern_int, nbits):
    """Byte offsets of every occurrence of an nbits-bit pattern starting at
    any bit position (bzip2 magics are not byte-aligned)."""
    if not data:
        return []
    bits = bin(int.from_bytes(data, "big"))[2:].zfill(len(data) * 8)
    pat = bin(pattern_int)[2:].zfill(nbits)
    out, i = [], bits.find(pat)
    while i >= 0 and len(out) < 100000:
        out.append(i // 8)
        i = bits.find(pat, i + 1)
    return out


def structure_offsets(data):
    """Offsets of the structures a decoder trusts most: the ends of the file
    and every frame, member, stream or block magic found in it."""
    offs = {0, max(0, len(data) - 1)}
    for magic in (b"\x28\xb5\x2f\xfd",        # zstd frame
                  b"\x5e\x2a\x4d\x18",        # zstd skippable 0x184D2A5E
                  b"\xb1\xea\x92\x8f",        # seek table footer 0x8F92EAB1
                  b"\x1f\x8b\x08",            # gzip member
                  b"\xfd7zXZ\x00", b"YZ",     # xz stream header, footer
                  b"LZIP\x01",                # lzip member header
                  b"BZh"):                    # bzip2 stream
        i = data.find(magic)
        while i >= 0 and len(offs) < 200000:
            offs.add(i)
            i = data.find(magic, i + 1)
    if data[:3] == b"BZh":
        offs.update(bit_offsets(data, 0x314159265359, 48))   # block
        offs.update(bit_offsets(data, 0x177245385090, 48))   # end of stream
    return sorted(offs)


def pick_offset(rng, size, structs):
    r = rng.random()
    if r < 0.4 or size <= 1:
        return rng.randrange(max(1, size))
    if r < 0.6:
        return rng.randrange(min(512, size))
    if r < 0.8:
        return size - 1 - rng.randrange(min(512, size))
    s = rng.choice(structs)
    return max(0, min(size - 1, s + rng.randint(-64, 64)))


def log_uniform(rng, lo, hi):
    import math
    x = math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))
    return max(lo, min(hi, int(x)))


def make_variant(seed, name, i, data, structs):
    """Variant i of data: (bytes, description).  A pure function of its
    arguments."""
    rng = random.Random("%s:%s:%d" % (seed, name, i))
    size = len(data)
    kind = ("flip", "flip", "trunc", "zero")[i % 4]
    if kind == "flip":
        pos = pick_offset(rng, size, structs)
        x = rng.randint(1, 255)
        out = bytearray(data)
        out[pos] ^= x
        return bytes(out), "flip byte %d ^= 0x%02x (0x%02x -> 0x%02x)" % (
            pos, x, data[pos], out[pos])
    if kind == "trunc":
        r = rng.random()
        if r < 0.6:
            n = rng.randrange(size)
        elif r < 0.85:
            n = size - 1 - rng.randrange(min(1024, size))
        else:
            n = max(0, min(size - 1, rng.choice(structs) + rng.randint(-16, 16)))
        return data[:n], "truncate to %d of %d bytes" % (n, size)
    # zero a range that holds at least one non-zero byte
    for _ in range(20):
        pos = pick_offset(rng, size, structs)
        n = min(size - pos, log_uniform(rng, 1, 64 * KiB))
        if data[pos:pos + n].count(0) != n:
            break
    out = bytearray(data)
    out[pos:pos + n] = bytes(n)
    return bytes(out), "zero bytes %d..%d (%d bytes)" % (pos, pos + n - 1, n)


# ---------------------------------------------------------------- server

class Spawner:
    """Starts every nbdkit from one thread that lives as long as we do:
    --exit-with-parent is PR_SET_PDEATHSIG, which fires when the THREAD that
    forked the child exits, and servers are restarted from worker threads."""

    def __init__(self):
        import queue
        self.q = queue.Queue()
        t = threading.Thread(target=self.loop, daemon=True)
        t.start()

    def loop(self):
        while True:
            cmd, kw, reply = self.q.get()
            try:
                reply.put(subprocess.Popen(cmd, **kw))
            except Exception as e:   # handed to the caller
                reply.put(e)

    def popen(self, cmd, **kw):
        import queue
        reply = queue.Queue()
        self.q.put((cmd, kw, reply))
        r = reply.get()
        if isinstance(r, Exception):
            raise r
        return r


spawner = None


class Server:
    """One nbdkit serving a directory of variants; restartable."""

    def __init__(self, args, name, fmt, vdir):
        self.args = args
        self.name = name
        self.fmt = fmt
        self.vdir = vdir
        self.sock = os.path.join(args.tmp, "%s.sock" % name)
        self.gen = 0
        self.proc = None
        self.log = None
        self.logs = []
        self.lock = threading.Lock()
        self.start()

    def start(self):
        self.gen += 1
        pidfile = os.path.join(self.args.tmp, "%s-%d.pid" % (self.name, self.gen))
        logname = os.path.join(self.args.tmp, "%s-%d.log" % (self.name, self.gen))
        for p in (self.sock, pidfile):
            if os.path.exists(p):
                os.unlink(p)
        cmd = ["nbdkit", "-f", "-U", self.sock, "-P", pidfile, "--exit-with-parent",
               "--filter=" + self.args.filter, "file", "dir=" + self.vdir]
        if self.args.autodecomp:
            cmd += ["autodecomp-format=" + self.fmt, "autodecomp-cache-size=16M"]
        cmd += self.args.extra
        self.cmd = cmd
        self.log = logname
        self.logs.append(logname)
        with open(logname, "wb") as lf:
            self.proc = spawner.popen(cmd, stdin=subprocess.DEVNULL, stdout=lf,
                                      stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while not (os.path.exists(pidfile) and os.path.getsize(pidfile) > 0):
            if self.proc.poll() is not None:
                raise RuntimeError("nbdkit exited (status %d) at start: %s; log %s"
                                   % (self.proc.returncode, " ".join(cmd), logname))
            if time.monotonic() - t0 > 60:
                raise RuntimeError("nbdkit did not start in 60 s: " + " ".join(cmd))
            time.sleep(0.02)

    # Popen.poll/wait are not safe from several threads at once (the loser
    # of a race sees ECHILD and reports status 0): self.lock serializes them.

    def alive(self):
        with self.lock:
            return self.proc.poll() is None

    def wait_exit(self, proc, secs):
        """Give a server that dropped a connection time to finish dying (an
        abort writing a core takes a moment)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs:
            with self.lock:
                if proc.poll() is not None:
                    return
            time.sleep(0.05)

    def stop(self):
        with self.lock:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            return self.proc.returncode

    def kill(self):
        with self.lock:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


# ---------------------------------------------------------------- reading

class Stats:
    FIELDS = ("variants", "connect_errors", "size_differs", "read_errors",
              "reads", "bytes_ok", "wrong_bytes", "dropped")

    def __init__(self):
        for f in self.FIELDS:
            setattr(self, f, 0)

    def add(self, o):
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f) + getattr(o, f))


def wrong_count(orig, off, data):
    """Bytes of data (read at off) that differ from the original; bytes past
    its end are all wrong."""
    n = len(data)
    inside = max(0, min(n, len(orig) - off))
    if inside and data[:inside] == orig[off:off + inside]:
        return n - inside
    wrong = n - inside
    a, b = data[:inside], orig[off:off + inside]
    for i in range(0, inside, 4096):
        x, y = a[i:i + 4096], b[i:i + 4096]
        if x != y:
            wrong += sum(1 for p, q in zip(x, y) if p != q)
    return wrong


def shift_hint(orig, off, data):
    """When wrong data is original data from elsewhere (a frame served at
    the wrong place, e.g. after a damaged size field), say where from."""
    for i in range(0, len(data) - 64, 4096):
        piece = data[i:i + 64]
        if piece.count(0) == len(piece) or (off + i < len(orig) and
                                            orig[off + i:off + i + 64] == piece):
            continue
        j = orig.find(piece)
        if j >= 0 and orig.find(piece, j + 1) < 0:
            return " (original bytes from offset %d: shifted by %d)" % (
                j - i, off - (j - i))
        return ""
    return ""


def read_plan(rng, size, orig_size):
    """(offset, length) reads covering the whole export (to the original's
    size + 1 MiB when it is larger) in random order: pieces of 64, 256 or
    512 KiB at multiples of 64 KiB (fewer, larger pieces keep down the cost
    of a damaged frame, which every read of it decodes again), plus
    unaligned reads of 1 byte .. 128 KiB."""
    limit = min(size, orig_size + MiB)
    reads = []
    o = 0
    while o < limit:
        n = min(rng.choice((CHUNK, 4 * CHUNK, 4 * CHUNK, 8 * CHUNK)), limit - o)
        reads.append((o, n))
        o += n
    rng.shuffle(reads)
    top = min(size, orig_size)
    if top > 0:
        for _ in range(6):
            n = min(top, rng.choice((1, rng.randint(1, 4096), rng.randint(1, 128 * KiB))))
            reads.append((rng.randrange(top - n + 1), n))
        n = min(size, 4097)
        reads.append((size - n, n))                  # across/at the end
    if size > limit:
        reads.append((size - min(CHUNK, size - limit), min(CHUNK, size - limit)))
    return reads


class Dropped(Exception):
    pass


def read_export(args, sock, export, orig, seed_str, st, notes, timer):
    """Connect to export, read it all, count into st.  Raises Dropped when
    the connection is lost (the caller tells a dead server from a drop)."""
    h = nbd.NBD()
    h.set_export_name(export)
    timer[0] = time.monotonic()
    try:
        h.connect_unix(sock)
    except nbd.Error as e:
        # Refusing a damaged export is allowed; a dead server is noticed by
        # the caller.
        st.connect_errors += 1
        notes.append("connect error: %s" % str(e).splitlines()[0][:200])
        return
    try:
        size = h.get_size()
        if size != len(orig):
            st.size_differs += 1
            notes.append("export size %d, original %d" % (size, len(orig)))
        rng = random.Random(seed_str + ":reads")
        errors = 0
        for off, n in read_plan(rng, size, len(orig)):
            timer[0] = time.monotonic()
            st.reads += 1
            try:
                data = h.pread(n, off)
            except nbd.Error as e:
                st.read_errors += 1
                errors += 1
                if errors == 1:
                    notes.append("first read error at %d+%d: %s"
                                 % (off, n, str(e).splitlines()[0][:200]))
                if h.aio_is_dead() or h.aio_is_closed():
                    raise Dropped("after read %d+%d failed (%s) the connection is gone"
                                  % (off, n, e))
                continue
            w = wrong_count(orig, off, data) if len(data) == n else n
            st.wrong_bytes += w
            st.bytes_ok += n - w
            if w:
                notes.append("WRONG: read %d+%d returned %d wrong bytes%s"
                             % (off, n, w, shift_hint(orig, off, data)))
        timer[0] = None
    finally:
        timer[0] = None
        try:
            h.shutdown()
        except nbd.Error:
            pass
        del h


# ---------------------------------------------------------------- one format

class Run:
    """All variants of one compressed file, on one (restartable) server."""

    def __init__(self, args, name, fmt, path, orig):
        self.args, self.name, self.fmt, self.orig = args, name, fmt, orig
        with open(path, "rb") as f:
            self.data = f.read()
        self.structs = structure_offsets(self.data)
        self.vdir = os.path.join(args.tmp, "v-" + name)
        os.makedirs(self.vdir, exist_ok=True)
        self.stats = Stats()
        self.lock = threading.Lock()
        self.failures = []           # (variant, what)
        self.size_notes = []
        self.suspects = []           # variants in flight when nbdkit died
        self.deaths = 0
        self.hangs = 0
        self.server = Server(args, name, fmt, self.vdir)
        self.inflight = {}           # worker -> (i, gen, timer)
        self.next_i = 0
        self.todo = None

    def vname(self, i):
        return "%s-%05d" % (self.name, i)

    def keep(self, i):
        """Write variant i where it can be reproduced by hand."""
        if not self.args.keep_dir:
            return ""
        os.makedirs(self.args.keep_dir, exist_ok=True)
        v, _ = make_variant(self.args.seed, self.name, i, self.data, self.structs)
        p = os.path.join(self.args.keep_dir, self.vname(i))
        with open(p, "wb") as f:
            f.write(v)
        return " (kept as %s)" % p

    def fail(self, i, what):
        with self.lock:
            self.failures.append((i, what))
        desc = make_variant(self.args.seed, self.name, i, self.data, self.structs)[1] \
            if i is not None else "the original file"
        print("%s: FAIL: variant %s [%s]: %s%s" % (self.name, i, desc, what,
                                                   self.keep(i) if i is not None else ""),
              flush=True)

    def one(self, i, wid):
        """Variant i (None = the undamaged file) by worker wid; returns its
        Stats, or None when the server died meanwhile (a suspect)."""
        if i is None:
            v, desc, export = self.data, "undamaged", self.name + "-orig"
        else:
            v, desc = make_variant(self.args.seed, self.name, i, self.data, self.structs)
            export = self.vname(i)
        path = os.path.join(self.vdir, export)
        with open(path, "wb") as f:
            f.write(v)
        st = Stats()
        st.variants = 1
        notes = []
        timer = [None]
        with self.lock:
            gen = self.server.gen
            proc = self.server.proc
            self.inflight[wid] = (i, gen, timer)
        dropped = None
        t0 = time.monotonic()
        try:
            read_export(self.args, self.server.sock, export, self.orig,
                        "%s:%s:%s" % (self.args.seed, self.name, i), st, notes, timer)
        except Dropped as e:
            dropped = str(e)
        finally:
            os.unlink(path)
            with self.lock:
                del self.inflight[wid]
        # Did the server die (or get killed as hung) while we read?
        if dropped:
            self.server.wait_exit(proc, 3)
        with self.lock:
            died = self.server.gen != gen or not self.server.alive()
        if died:
            self.check_server()
            with self.lock:
                if i not in [h for h, _ in self.failures]:
                    self.suspects.append(i)
            return None
        if dropped:
            st.dropped += 1
            self.fail(i, "nbdkit dropped the connection but is alive: " + dropped)
        if st.wrong_bytes:
            self.fail(i, "%d wrong bytes served: %s" % (
                st.wrong_bytes, "; ".join(n for n in notes if n.startswith("WRONG"))[:500]))
        if st.size_differs:
            with self.lock:
                self.size_notes.append("%s: variant %s [%s]: %s" % (
                    self.name, i, desc, "; ".join(notes)[:300]))
        if self.args.verbose:
            print("%s: variant %s [%s] %.3fs: %s" % (self.name, i, desc, time.monotonic() - t0,
                                                    "; ".join(notes) or "ok"), flush=True)
        return st

    def check_server(self):
        """If the server is dead, record it and start a new one."""
        with self.lock:
            if self.server.alive():
                return
            rc = self.server.proc.poll()
            self.deaths += 1
            print("%s: nbdkit (generation %d) died with status %s; restarting; "
                  "log %s" % (self.name, self.server.gen, rc, self.server.log), flush=True)
            self.server.start()

    def worker(self, wid):
        while True:
            with self.lock:
                if not self.todo:
                    return
                i = self.todo.pop(0)
            st = self.one(i, wid)
            if st is not None:
                with self.lock:
                    self.stats.add(st)

    def watchdog(self, stop):
        """Kill a server that does not answer within --hang-timeout."""
        while not stop.wait(0.5):
            now = time.monotonic()
            hung = False
            with self.lock:
                for wid, (i, gen, timer) in self.inflight.items():
                    t = timer[0]
                    if t is not None and now - t > self.args.hang_timeout and \
                            gen == self.server.gen:
                        hung, hung_i = True, i
                        break
            if hung:
                hung = hung_i
                self.hangs += 1
                self.fail(hung, "no answer from nbdkit in %d s (hang); nbdkit killed"
                          % self.args.hang_timeout)
                self.server.kill()
                self.check_server()
            elif not self.server.alive():
                self.check_server()

    def run_list(self, todo, workers):
        self.todo = list(todo)
        ts = [threading.Thread(target=self.worker, args=(w,)) for w in range(workers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def control(self, when):
        """The undamaged file must be served whole and right."""
        st = self.one(None, "control")
        if st is None or st.connect_errors or st.read_errors or st.wrong_bytes or \
                st.size_differs or st.bytes_ok < len(self.orig):
            self.fail(None, "the undamaged file is not served right (%s): %s" % (
                when, "server died" if st is None else
                "connect_errors=%d read_errors=%d wrong_bytes=%d size_differs=%d"
                % (st.connect_errors, st.read_errors, st.wrong_bytes, st.size_differs)))

    def run(self, only):
        t0 = time.monotonic()
        stop = threading.Event()
        wd = threading.Thread(target=self.watchdog, args=(stop,))
        wd.start()
        try:
            self.run_all(only)
        finally:
            stop.set()
            wd.join()
        self.hwm = 0
        try:
            with open("/proc/%d/status" % self.server.proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm = int(line.split()[1]) * KiB
        except OSError:
            pass
        self.server.stop()
        if self.server.proc.returncode not in (0, -signal.SIGTERM):
            self.fail(None, "nbdkit exited with status %d at the end"
                      % self.server.proc.returncode)
        self.elapsed = time.monotonic() - t0

    def run_all(self, only):
        self.control("before the variants")
        todo = only if only is not None else range(self.args.variants)
        self.run_list(todo, self.args.workers)
        # Find which of the variants in flight at a death kills nbdkit.
        suspects, self.suspects = sorted(set(self.suspects)), []
        for i in suspects:
            self.run_list([i], 1)
            if self.suspects:
                self.fail(i, "nbdkit died reading this variant (alone, on a fresh server)")
                self.suspects = []
        if self.deaths and not any(w.startswith("nbdkit died") or "hang" in w
                                   for _, w in self.failures):
            self.fail(None, "nbdkit died while reading variants %s, but none kills "
                      "it alone" % suspects)
        self.control("after the variants")


def summary_line(label, s, extra=""):
    return ("%s: variants=%d connect_errors=%d size_differs=%d reads=%d read_errors=%d "
            "bytes_ok=%d wrong_bytes=%d dropped=%d%s"
            % (label, s.variants, s.connect_errors, s.size_differs, s.reads,
               s.read_errors, s.bytes_ok, s.wrong_bytes, s.dropped, extra))


def note_progress(text):
    """Record text as the test's last note: the heartbeat of
    tests/functions.sh prints it while a format takes long."""
    path = os.environ.get("AUTODECOMP_PROGRESS_FILE")
    if path:
        try:
            with open(path, "w") as f:
                f.write("%d %s\n" % (time.time(), text))
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description="corruption matrix for the autodecomp filter")
    ap.add_argument("--filter", required=True)
    ap.add_argument("--original", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--seed", required=True)
    ap.add_argument("--variants", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hang-timeout", type=int, default=60)
    ap.add_argument("--only", default=None, help="NAME or NAME:I[,I...]")
    ap.add_argument("--keep-dir", default=None)
    ap.add_argument("--autodecomp", action="store_true",
                    help="the filter is ours: pass autodecomp-format= and a cache size")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--extra", action="append", default=[],
                    help="one more nbdkit argument (e.g. -D autodecomp.frames=1)")
    ap.add_argument("files", nargs="+", metavar="NAME:FORMAT:FILE")
    args = ap.parse_args()

    global spawner
    spawner = Spawner()
    with open(args.original, "rb") as f:
        orig = f.read()
    only_name, only_list = None, None
    if args.only:
        only_name, _, rest = args.only.partition(":")
        if rest:
            only_list = [int(x) for x in rest.split(",")]

    print("corrupt-matrix: seed=%s variants=%d per file, workers=%d, original %s "
          "(%d bytes)" % (args.seed, args.variants, args.workers, args.original, len(orig)),
          flush=True)
    total = Stats()
    failed = 0
    t0 = time.monotonic()
    for k, spec in enumerate(args.files):
        name, fmt, path = spec.split(":", 2)
        if only_name and name != only_name:
            continue
        note_progress("corrupt-matrix.py: %s, %d variants (format %d/%d)"
                      % (name, args.variants, k + 1, len(args.files)))
        run = Run(args, name, fmt, path, orig)
        run.run(only_list)
        total.add(run.stats)
        for line in run.size_notes[:20]:
            print("  size: " + line)
        if len(run.size_notes) > 20:
            print("  size: ... %d more" % (len(run.size_notes) - 20))
        print(summary_line("%s (%d bytes, %s)" % (name, len(run.data), fmt), run.stats,
                           " deaths=%d hangs=%d failures=%d time=%.1fs nbdkit-VmHWM=%.0fMiB"
                           % (run.deaths, run.hangs, len(run.failures), run.elapsed,
                              run.hwm / MiB)),
              flush=True)
        failed += len(run.failures)
    print(summary_line("TOTAL", total, " failures=%d time=%.1fs"
                       % (failed, time.monotonic() - t0)))
    if failed:
        print("corrupt-matrix: FAIL: %d failures (seed=%s)" % (failed, args.seed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
