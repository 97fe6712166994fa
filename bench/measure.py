#!/usr/bin/python3
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# bench/measure.py: called by bench/run (see bench/README.md); not meant to be run alone.
# Starts each server configuration on a unix socket and measures it, runs the command
# line decompressors, prints one markdown table and writes it to --out.
import argparse, json, os, platform, random, re, shutil, signal, subprocess, sys, tempfile, threading, time
import nbd

ap = argparse.ArgumentParser()
ap.add_argument("--filter", required=True)
ap.add_argument("--corpus", required=True)
ap.add_argument("--size-mib", type=int, required=True)
ap.add_argument("--runtime", type=int, default=10)
ap.add_argument("--quick", type=int, default=0)
ap.add_argument("--only", default="")
ap.add_argument("--seq-runs", type=int, default=3)
ap.add_argument("--out", required=True)
a = ap.parse_args()

C = a.corpus
OURS = a.filter
MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
IMG = os.path.getsize(os.path.join(C, "disk.img"))
WORK = tempfile.mkdtemp(prefix="autodecomp-bench-")
failures = []  # real failures: exit non-zero at the end
notes = []


def nbd_close(h):
    try:
        h.shutdown()
    except nbd.Error:
        pass


def log(*x):
    print(*x, file=sys.stderr, flush=True)


def mib(n):
    return "%dM" % max(1, (n + MiB - 1) // MiB)


def parse_size(text):
    """The inverse of mib()."""
    return int(text.rstrip("M")) * MiB


# ---- configurations -------------------------------------------------------------------
# (key, label, kind, file, frame bytes for the cold cache, anchor keys)
ours = [
    ("raw", "raw disk.img", "disk.img", 4 * MiB),
    ("xz4", "xz 4 MiB blocks", "disk.img.xz", 4 * MiB),
    ("xz16", "xz 16 MiB blocks", "disk-16m.img.xz", 16 * MiB),
    ("xz1", "xz 1 block", "disk-1block.img.xz", IMG),
    ("zst1", "zstd 1 frame", "disk.img.zst", IMG),
    ("zst2m", "zstd 2 MiB frames", "disk-frames2m.img.zst", 2 * MiB),
    ("zsk1m", "zstd seekable 1 MiB", "disk-seekable.img.zst", 1 * MiB),
    ("zsk64k", "zstd seekable 64 KiB", "disk-seekable64k.img.zst", 64 * 1024),
    ("gz", "gzip 1 member", "disk.img.gz", 1 * MiB),
    ("bgz", "bgzip (BGZF)", "disk.img.bgz", 64 * 1024),
    ("bz2", "bzip2 (lbzip2 -9)", "disk.img.bz2", 900 * 1000),
]
# anchors served over NBD
servers = [
    ("A:file", "nbdkit file (raw)", ["file", "disk.img"]),
    ("A:xzf4", "nbdkit xz filter, 4 MiB", ["--filter=xz", "file", "disk.img.xz"]),
    ("A:xzf16", "nbdkit xz filter, 16 MiB", ["--filter=xz", "file", "disk-16m.img.xz"]),
    ("A:xzf1", "nbdkit xz filter, 1 block", ["--filter=xz", "file", "disk-1block.img.xz"]),
    ("A:gzf", "nbdkit gzip filter", ["--filter=gzip", "file", "disk.img.gz"]),
    ("A:qzstd", "qemu-nbd qcow2 zstd", ["qemu", "disk-zstd.qcow2"]),
    ("A:qzlib", "qemu-nbd qcow2 zlib", ["qemu", "disk-zlib.qcow2"]),
]
# anchors to /dev/null
clis = [
    ("C:xz4", "xz -dc -T2 (4 MiB)", ["xz", "-dc", "-T2", "disk.img.xz"]),
    ("C:xz16", "xz -dc -T2 (16 MiB)", ["xz", "-dc", "-T2", "disk-16m.img.xz"]),
    ("C:xz1", "xz -dc -T2 (1 block)", ["xz", "-dc", "-T2", "disk-1block.img.xz"]),
    ("C:zstd", "zstd -dc", ["zstd", "-dc", "disk.img.zst"]),
    ("C:gzip", "gzip -dc", ["gzip", "-dc", "disk.img.gz"]),
    ("C:pigz", "pigz -dc", ["pigz", "-dc", "disk.img.gz"]),
    ("C:bgzip", "bgzip -dc -@2", ["bgzip", "-dc", "-@2", "disk.img.bgz"]),
    ("C:lbzip2", "lbzip2 -dc -n2", ["lbzip2", "-dc", "-n2", "disk.img.bz2"]),
]


# the best single-threaded decoder of each of our compressed shapes, for the CPU
# efficiency (issue 15): run on the same file, to /dev/null, right after our seq copy
def first_tool(*cands):
    for c in cands:
        if shutil.which(c[0]):
            return c
    return cands[-1]


XZ1 = ["xz", "-dc", "-T1"]
ZSTD1 = ["zstd", "-dc"]
GZIP1 = first_tool(["igzip", "-dc"], ["gzip", "-dc"])
BZIP1 = first_tool(["lbzip2", "-dc", "-n1"], ["bzip2", "-dc"])
DECODER = {"xz4": XZ1, "xz16": XZ1, "xz1": XZ1, "zst1": ZSTD1, "zst2m": ZSTD1, "zsk1m": ZSTD1,
           "zsk64k": ZSTD1, "gz": GZIP1, "bgz": GZIP1, "bz2": BZIP1}
OURS_FILE = {k: f for k, _, f, _ in ours}
ONE_FRAME = ("xz1", "zst1", "gz")  # no parallel efficiency: one frame decodes on one thread
# ratio anchors: sequential, random cold, warm
SEQ_ANCHOR = {
    "xz4": ["C:xz4", "A:xzf4"], "xz16": ["C:xz16", "A:xzf16"], "xz1": ["C:xz1", "A:xzf1"],
    "zst1": ["A:file", "C:zstd"], "zst2m": ["A:file"], "zsk1m": ["A:file"], "zsk64k": ["A:file"],
    "bgz": ["A:file", "C:bgzip"], "raw": ["A:file"], "gz": ["C:gzip"], "bz2": ["C:lbzip2"],
}
COLD_ANCHOR = {"xz16": "A:xzf16", "xz4": "A:xzf4", "xz1": "A:xzf1", "zsk64k": "A:qzstd", "gz": "A:gzf"}
WARM_ANCHOR = "A:file"


def want(key):
    return not a.only or re.search(a.only, key)


# ---- server handling ------------------------------------------------------------------
class Server:
    n = 0

    def __init__(self, key, args, sock):
        Server.n += 1
        sock = "%s.%d" % (sock, Server.n)
        self.key, self.sock = key, sock
        if args[0] == "qemu":
            cmd = ["qemu-nbd", "-r", "-t", "-e", "16", "-f", "qcow2", "-k", sock, os.path.join(C, args[1])]
        else:
            cmd = ["nbdkit", "-f", "-r", "-U", sock] + args
        self.cmd = cmd
        self.err = open(sock + ".log", "w")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, cwd=C, stdout=self.err, stderr=subprocess.STDOUT)
        self.uri = "nbd+unix:///?socket=" + sock

    def connect(self, timeout=120):
        """Connect as soon as the socket accepts; None if the server died / timed out."""
        while time.monotonic() - self.t0 < timeout:
            if self.p.poll() is not None:
                return None
            if os.path.exists(self.sock):
                h = nbd.NBD()
                try:
                    h.connect_unix(self.sock)
                    return h
                except nbd.Error:
                    pass
            time.sleep(0.002)
        return None

    def hwm(self):
        try:
            with open("/proc/%d/status" % self.p.pid) as f:
                for l in f:
                    if l.startswith("VmHWM:"):
                        return int(l.split()[1]) * 1024
        except OSError:
            pass
        return None

    def cpu(self):
        """CPU seconds (user + sys, all threads) of the server so far, or None."""
        try:
            with open("/proc/%d/stat" % self.p.pid) as f:
                st = f.read().rsplit(")", 1)[1].split()
            return (int(st[11]) + int(st[12])) / CLK_TCK  # fields 14, 15: utime, stime
        except (OSError, IndexError, ValueError):
            return None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill(); self.p.wait()
        self.err.close()

    def logtail(self):
        try:
            return open(self.sock + ".log").read()[-600:].strip()
        except OSError:
            return ""


def timed(cmd, timeout, stdin=None):
    """Run cmd (stdin: a file in the corpus); (seconds, ok, stderr tail, CPU seconds
    user + sys of the child and what it waited for, from os.wait4); ok None on timeout."""
    with tempfile.TemporaryFile() as err, open(os.path.join(C, stdin) if stdin else os.devnull, "rb") as fin:
        t = time.monotonic()
        p = subprocess.Popen(cmd, cwd=C, stdin=fin, stdout=subprocess.DEVNULL, stderr=err)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        _, status, ru = os.wait4(p.pid, 0)
        el = time.monotonic() - t
        killer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-300:]
    if p.returncode == -signal.SIGKILL and el >= timeout:
        return el, None, "timeout", None
    return el, p.returncode == 0, tail, ru.ru_utime + ru.ru_stime


def fio(uri, runtime, jobs=1):
    cmd = ["fio", "--name=rand", "--ioengine=nbd", "--uri=" + uri, "--rw=randread", "--bs=4k",
           "--iodepth=%d" % (8 if jobs == 1 else 1), "--numjobs=%d" % jobs,
           "--group_reporting", "--runtime=%d" % runtime, "--time_based",
           "--size=%d" % IMG, "--output-format=json"]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=runtime + 120)
    except subprocess.TimeoutExpired:
        return "timeout"
    if r.returncode != 0:
        return "ERR"
    try:
        j = json.loads(r.stdout[r.stdout.index(b"{"):])
        job = j["jobs"][0]
        if job.get("error"):
            return "ERR"
        return job["read"]["iops"]
    except Exception:
        return "ERR"


def data_offset():
    """A fixed pseudo-random 4 KiB block that holds data (not zeros), so that the
    plugin-reads measure sees a real frame decode rather than a free-space read."""
    rng = random.Random(1)
    with open(os.path.join(C, "disk.img"), "rb") as f:
        for _ in range(1000):
            off = rng.randrange(0, IMG // 4096) * 4096
            f.seek(off)
            if f.read(4096).strip(b"\0"):
                return off
    return 0


DATA_OFF = data_offset()
SEQ_TIMEOUT = max(120, IMG // MiB * 2)


FIRST_SAMPLES = 3


def first_read(key, args, sock):
    """Seconds from starting a fresh server until pread(4096, 0) returns, or None."""
    s = Server(key, args, sock)
    try:
        h = s.connect()
        if h is None:
            return None
        try:
            h.pread(4096, 0)
            return time.monotonic() - s.t0
        except nbd.Error:
            return None
        finally:
            nbd_close(h)
    finally:
        s.stop()


def ready_server(key, args, sock, what, fatal, R=None):
    """A fresh server that accepts connections, or None (after fatal).  With R, the
    seconds from starting it until a first connect's handshake ends go to
    R["connect_wall"] (the connect's pass, if any, is in them)."""
    s = Server(key, args, sock)
    h = s.connect()
    if h is None:
        fatal("%s: server did not start: %s" % (what, s.logtail()))
        s.stop()
        return None
    if R is not None:
        R["connect_wall"] = time.monotonic() - s.t0
    nbd_close(h)
    return s


def seq_copy(R, key, args, sock, label, fatal):
    """`nbdcopy URI null:` on a fresh server, --seq-runs times, keeping the best of
    each measure (the least CPU, the least wall time): R["seq"] MB/s, R["seq_wall"]
    s, R["connect_wall"] s (start until a first connect: a connect's pass is in it)
    and R["seq_cpu"], the CPU seconds of nbdcopy (os.wait4) + the server's (all
    threads) from its start until just before it is stopped: the connect's pass
    (bzip2's sizing, a walk over frames) counts, as issue 15 asks ("a full copy right
    after connect, the sizing pass included").  False if the server did not start."""
    for run in range(max(1, a.seq_runs)):
        one = {}
        s = ready_server(key, args, sock, label + " (seq)", fatal, one)
        if s is None:
            return False
        try:
            t, ok, err, cpu = timed(["nbdcopy", s.uri, "null:"], SEQ_TIMEOUT)
            c1 = s.cpu()
        finally:
            s.stop()
        if not ok:
            R["seq"] = "timeout" if ok is None else "ERR"
            fatal("%s: sequential: %s" % (label, err.strip()))
            return True
        for k, v in (("seq_wall", t), ("connect_wall", one["connect_wall"])):
            R[k] = min(R.get(k, v), v)
        if c1 is not None:
            R["seq_cpu"] = min(R.get("seq_cpu", c1 + cpu), c1 + cpu)
        R["seq"] = IMG / R["seq_wall"] / 1e6
    return True


def measure_server(key, label, args, cold_args, warm_args, is_ours):
    R = {"key": key, "label": label}
    fatal = failures.append if is_ours else notes.append
    sock = os.path.join(WORK, key.replace(":", "_") + ".sock")

    # instance 1: fresh server, cold cache: first 4 KiB, random cold, sequential, RSS
    s = Server(key, cold_args, sock)
    try:
        h = s.connect()
        if h is None:
            fatal("%s: server did not start: %s %s" % (label, " ".join(s.cmd), s.logtail()))
            return R
        try:
            size = h.get_size()
            h.pread(4096, 0)
            R["first"] = time.monotonic() - s.t0
        except nbd.Error as e:
            R["first"] = "ERR"
            fatal("%s: first read failed: %s" % (label, e))
            size = None
        finally:
            nbd_close(h)
        if size is not None and size != IMG:
            failures.append("%s: export size %d, expected %d" % (label, size, IMG))
            R["first"] = "SIZE"
            return R
        if R["first"] == "ERR":
            return R
    finally:
        s.stop()

    # One start is one sample of a few tens of milliseconds, which a busy
    # moment of the machine can triple: the first read is the median of
    # FIRST_SAMPLES fresh servers (the one above and more like it).
    samples = [R["first"]]
    for _ in range(FIRST_SAMPLES - 1):
        t = first_read(key, cold_args, sock)
        if t is None:
            fatal("%s: first read failed on a later fresh server" % label)
            break
        samples.append(t)
    R["first_samples"] = sorted(samples)
    R["first"] = R["first_samples"][len(samples) // 2]

    # instance 1 again, fresh: random cold and RSS.
    s = ready_server(key, cold_args, sock, label + " (cold)", fatal)
    if s is None:
        return R
    try:
        R["cold"] = fio(s.uri, a.runtime)
        if not isinstance(R["cold"], float):
            fatal("%s: random read (cold): %s %s" % (label, R["cold"], s.logtail()[-200:]))
        R["rss_cold"] = s.hwm()
        if is_ours:
            # 16 connections at random on the same cold server: the
            # decode bound, not the number of clients, must bound memory.
            iops16 = fio(s.uri, max(3, a.runtime // 2), jobs=16)
            if not isinstance(iops16, float):
                fatal("%s: random read, 16 connections: %s" % (label, iops16))
            R["rss16"] = s.hwm()
    finally:
        s.stop()

    # instance 2: a fresh server with default settings: the sequential read.
    if not seq_copy(R, key, args, sock, label, fatal):
        return R
    if key in DECODER:
        dec = DECODER[key]
        for run in range(max(1, a.seq_runs)):
            t, ok, err, cpu = timed(dec, SEQ_TIMEOUT, stdin=OURS_FILE[key])
            if not ok:
                failures.append("%s: %s: %s" % (label, " ".join(dec), err.strip()))
                break
            if "dec" not in R or cpu < R["dec"][2]:
                R["dec"] = (" ".join(dec), t, cpu)

    # instance 3: cache larger than the image, warmed by reading all of
    # it once in random order (1 MiB reads), then random 4 KiB reads.
    s = Server(key, warm_args, sock)
    try:
        h = s.connect()
        if h is None:
            fatal("%s (warm): server did not start: %s" % (label, s.logtail()))
            return R
        ok = True
        try:
            blocks = list(range(0, IMG, MiB))
            random.Random(2).shuffle(blocks)
            for off in blocks:
                h.pread(min(MiB, IMG - off), off)
        except nbd.Error as e:
            ok = False
            fatal("%s: warming read: %s" % (label, e))
        finally:
            nbd_close(h)
        R["warm"] = fio(s.uri, a.runtime) if ok else "ERR"
        if not isinstance(R["warm"], float):
            fatal("%s: random read (warm): %s" % (label, R["warm"]))
        R["rss_warm"] = s.hwm()
    finally:
        s.stop()

    # instance 4: stats filter below: reads to the plugin for open + one random 4 KiB read
    if args[0] != "qemu":
        statsfile = sock + ".stats.txt"
        if os.path.exists(statsfile):
            os.unlink(statsfile)
        i = args.index("file")
        sargs = args[:i] + ["--filter=stats"] + args[i:] + ["statsfile=" + statsfile]
        s = Server(key, sargs, sock)
        try:
            h = s.connect()
            if h is None:
                fatal("%s (stats): server did not start: %s" % (label, s.logtail()))
            else:
                try:
                    off = DATA_OFF
                    h.pread(4096, off)
                except nbd.Error as e:
                    notes.append("%s: stats read: %s" % (label, e))
                nbd_close(h)
        finally:
            s.stop()
        try:
            txt = open(statsfile).read()
            m = re.search(r"^read: (\d+) ops, [\d.]+ s, ([\d.]+) (\w+)", txt, re.M)
            if m:
                unit = {"B": 1, "bytes": 1, "KiB": 1 << 10, "MiB": MiB, "GiB": 1 << 30}.get(m.group(3), 1)
                R["preads"] = (int(m.group(1)), float(m.group(2)) * unit)
            else:
                R["preads"] = (0, 0.0)
        except OSError:
            R["preads"] = None
    return R


def measure_cli(key, label, cmd):
    """cmd[-1] is the input file, given on stdin (zstd ignores symlinked file arguments)."""
    R = {"key": key, "label": label}
    rssf = os.path.join(WORK, "rss.txt")
    timecmd = ["/usr/bin/time", "-o", rssf, "-f", "%M"] if os.access("/usr/bin/time", os.X_OK) else []
    el, ok, err, cpu = timed(timecmd + cmd[:-1], SEQ_TIMEOUT, stdin=cmd[-1])
    if not ok:
        failures.append("%s: %s: %s" % (label, "timeout" if ok is None else "failed", err[-200:]))
        R["seq"] = "ERR" if ok is not None else "timeout"
    else:
        R["seq"] = IMG / el / 1e6
        R["seq_cpu"] = cpu
    try:
        R["rss_cold"] = int(open(rssf).read().split()[-1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return R


# ---- run ------------------------------------------------------------------------------
results = {}
tstart = time.monotonic()
cache_warm = "autodecomp-cache-size=" + mib(2 * IMG + 64 * MiB)
for key, label, f, frame in ours:
    if not want(key):
        continue
    log("== %s (%s)" % (label, f))
    cold = "autodecomp-cache-size=" + mib(min(8 * frame, IMG // 2))
    base = ["--filter=" + OURS, "file", f]
    results[key] = measure_server(key, label, base, base + [cold], base + [cache_warm], True)
    results[key]["cache"] = mib(min(8 * frame, IMG // 2))
for key, label, args in servers:
    if not want(key):
        continue
    log("== anchor %s" % label)
    results[key] = measure_server(key, label, args, args, args, False)
for key, label, cmd in clis:
    if not want(key):
        continue
    log("== anchor %s" % label)
    results[key] = measure_cli(key, label, cmd)
# The CPU floor needs the file plugin's sequential copy even when --only left A:file out.
if any(k in DECODER for k in results) and "seq_cpu" not in results.get("A:file", {}):
    log("== file plugin sequential copy, for the CPU floor")
    floor_run = {}
    seq_copy(floor_run, "A:file", servers[0][2], os.path.join(WORK, "floor.sock"), "file plugin (floor)",
             notes.append)
    FILE_CPU = floor_run.get("seq_cpu")
    FILE_CONNECT = floor_run.get("connect_wall")
else:
    FILE_CPU = results.get("A:file", {}).get("seq_cpu")
    FILE_CONNECT = results.get("A:file", {}).get("connect_wall")
THREADS = os.cpu_count()
for key in DECODER:
    R = results.get(key, {})
    if "dec" in R and FILE_CPU is not None:
        R["floor"] = FILE_CPU + R["dec"][2]
        if isinstance(R.get("seq_cpu"), float) and R["seq_cpu"] > 0:
            R["cpu_eff"] = R["floor"] / R["seq_cpu"]
        if key not in ONE_FRAME and "seq_wall" in R:
            # The copy's wall time, plus the connect's pass: how much longer than
            # the file plugin's own start-up the first connect took.
            wall = R["seq_wall"]
            if FILE_CONNECT is not None and "connect_wall" in R:
                wall += max(0.0, R["connect_wall"] - FILE_CONNECT)
            R["par_wall"] = wall
            R["par_eff"] = R["floor"] / THREADS / wall
elapsed = time.monotonic() - tstart


# ---- table ----------------------------------------------------------------------------
def num(v, fmt):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return fmt % v


def ratio(ours_v, key):
    r = results.get(key, {})
    return r


def rat(x, y):
    if isinstance(x, float) and isinstance(y, float) and y > 0:
        return "%.2f" % (x / y)
    return "–"


SHORT = {"A:file": "file", "A:xzf4": "xz filter", "A:xzf16": "xz filter", "A:xzf1": "xz filter",
         "A:qzstd": "qemu zstd", "A:gzf": "gzip filter", "C:xz4": "xz -dc", "C:xz16": "xz -dc",
         "C:xz1": "xz -dc", "C:zstd": "zstd -dc", "C:bgzip": "bgzip -dc", "C:gzip": "gzip -dc", "C:lbzip2": "lbzip2 -dc"}
hdr = ["configuration", "file MiB", "first 4K ms", "seq MB/s", "seq ratio", "seq CPU s",
       "1-thread decoder s (wall / CPU)", "CPU eff.", "par. eff.", "cold IOPS",
       "cold ratio", "warm IOPS", "warm ÷ file", "RSS cold MiB", "RSS 16 conns MiB",
       "RSS warm MiB", "plugin reads (ops / KiB)"]
rows = []
fsizes = {k: f for k, _, f, _ in ours}
fsizes.update({k: (a_[-1]) for k, _, a_ in servers})
fsizes.update({k: c[-1] for k, _, c in clis})
for key in [k for k, *_ in ours] + [k for k, *_ in servers] + [k for k, *_ in clis]:
    if key not in results:
        continue
    R = results[key]
    fs = os.path.getsize(os.path.join(C, fsizes[key]))
    seqr = coldr = warmr = ""
    if key in SEQ_ANCHOR:
        seqr = " ".join("%s %s" % (rat(R.get("seq"), results.get(k, {}).get("seq")), SHORT[k])
                        for k in SEQ_ANCHOR[key] if k in results)
        if key in COLD_ANCHOR and COLD_ANCHOR[key] in results:
            coldr = "%s %s" % (rat(R.get("cold"), results[COLD_ANCHOR[key]].get("cold")), SHORT[COLD_ANCHOR[key]])
        if WARM_ANCHOR in results:
            warmr = rat(R.get("warm"), results[WARM_ANCHOR].get("warm"))
    label = R["label"] if key.startswith(("A:", "C:")) else "**%s**" % R["label"]
    if "cache" in R:
        label += " (cold cache %s)" % R["cache"]
    pr = R.get("preads")
    rows.append([label, "%.1f" % (fs / MiB), num(R.get("first"), "%.0f") if not isinstance(R.get("first"), float) else "%.1f" % (R["first"] * 1000),
                 num(R.get("seq"), "%.0f"), seqr or "", num(R.get("seq_cpu"), "%.2f"),
                 ("%s %.2f / %.2f" % R["dec"]) if "dec" in R else "", num(R.get("cpu_eff"), "%.2f"),
                 num(R.get("par_eff"), "%.2f"), num(R.get("cold"), "%.0f"), coldr,
                 num(R.get("warm"), "%.0f"), warmr, num(R.get("rss_cold") and R["rss_cold"] / MiB, "%.0f"),
                 num(R.get("rss16") and R["rss16"] / MiB, "%.0f"),
                 num(R.get("rss_warm") and R["rss_warm"] / MiB, "%.0f"),
                 ("%d / %.0f" % (pr[0], pr[1] / 1024)) if pr else ("–" if key.startswith(("C:", "A:q")) else "?")])


def md(rows):
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] + ["--:"] * (len(hdr) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---- targets (issues 3 and 15), each: what, ours, anchor or limit, met? -------------
def val(key, field):
    v = results.get(key, {}).get(field)
    return v if isinstance(v, float) else None


targets = []


def target(what, got, want, ok):
    targets.append((what, got, want, "met" if ok else ("NOT met" if ok is not None else "not measured")))


def ratio_target(what, key, field, anchor, need):
    x, y = val(key, field), val(anchor, field)
    if x is None or y is None or y <= 0:
        target(what, "–", "≥ %.2f × %s" % (need, anchor), None)
    else:
        target(what, "%.2f ×" % (x / y), "≥ %.2f × %s" % (need, anchor), x / y >= need)


# issue 15: CPU efficiency, parallel efficiency, one-member gzip vs igzip
for key in DECODER:
    if key not in results:
        continue
    R = results[key]
    v = R.get("cpu_eff")
    target("%s CPU efficiency (floor ÷ ours, seq)" % key, "–" if v is None else "%.2f" % v, "≥ 0.95",
           None if v is None else v >= 0.95)
    if key not in ONE_FRAME:
        v = R.get("par_eff")
        target("%s parallel efficiency (floor ÷ %d threads ÷ wall)" % (key, THREADS),
               "–" if v is None else "%.2f" % v, "≥ 0.85", None if v is None else v >= 0.85)
if "gz" in results:
    R = results["gz"]
    if "seq_wall" in R and "dec" in R:
        got = "%.2f × %s" % (R["seq_wall"] / R["dec"][1], R["dec"][0])
        if GZIP1[0] == "igzip":
            target("gz (one member) sequential wall vs igzip -dc", got, "≤ 0.75 × igzip -dc wall",
                   R["seq_wall"] <= 0.75 * R["dec"][1])
        else:
            target("gz (one member) sequential wall vs igzip -dc", got,
                   "≤ 0.75 × igzip -dc wall (igzip not installed: package isal)", None)
    else:
        target("gz (one member) sequential wall vs igzip -dc", "–", "≤ 0.75 × igzip -dc wall", None)
for key in ("xz4", "xz16"):
    ratio_target("%s sequential vs nbdkit xz filter" % key, key, "seq", "A:xzf" + key[2:], 1.2)
for key in ("zst2m", "zsk1m", "zsk64k", "bgz", "raw"):
    ratio_target("%s sequential vs file plugin on raw" % key, key, "seq", "A:file", 0.9)
ratio_target("xz16 random cold vs xz filter", "xz16", "cold", "A:xzf16", 2.5)
ratio_target("zsk64k random cold vs qemu-nbd zstd qcow2", "zsk64k", "cold", "A:qzstd", 1.0)
for key, *_ in ours:
    if key != "raw" and key in results:
        ratio_target("%s random warm vs file plugin" % key, key, "warm", "A:file", 0.8)
for key in ("xz4", "xz16", "xz1", "zst1", "zst2m", "zsk1m", "zsk64k", "gz", "bgz"):
    v = val(key, "first")
    if key in results:
        target("%s first 4 KiB read" % key, "–" if v is None else "%.3f s" % v, "≤ 0.200 s",
               None if v is None else v <= 0.2)
if "bz2" in results:
    v, c = val("bz2", "first"), val("C:lbzip2", "seq")
    lim = IMG / (c * 1e6) if c else None
    target("bz2 first 4 KiB read vs lbzip2 -dc -n2 time", "–" if v is None else "%.2f s" % v,
           "≤ %s" % ("%.2f s" % lim if lim else "?"), None if v is None or lim is None else v <= lim)
for key, *_ in ours:
    R = results.get(key, {})
    if "rss16" in R and R["rss16"]:
        limit = parse_size(R["cache"]) + 64 * MiB
        target("%s peak RSS, 16 connections" % key, "%.0f MiB" % (R["rss16"] / MiB),
               "≤ cache %s + 64 MiB" % R["cache"], R["rss16"] <= limit)
for key in ("xz4", "xz16", "xz1", "zsk1m", "zsk64k"):
    pr = results.get(key, {}).get("preads")
    if key in results:
        target("%s plugin reads, connect + one 4 KiB read" % key, "%d" % pr[0] if pr else "–",
               "≤ 4", None if not pr else pr[0] <= 4)
met = sum(1 for t in targets if t[3] == "met")
ttable = ["| target | ours | wanted | |", "|---|--:|---|---|"]
ttable += ["| %s | %s | %s | %s |" % t for t in targets]
ttable = "\n".join(ttable)


cpu = "?"
try:
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip(); break
except OSError:
    pass
tools = subprocess.run(["nbdkit", "--version"], capture_output=True, text=True).stdout.strip()
head = ("# nbdkit-autodecomp benchmark\n\n"
        "- date: %s\n- machine: %s, nproc %d, CPU %s, %d MiB RAM\n- corpus: %s, disk.img %d MiB%s\n"
        "- %s; fio randread bs=4k iodepth=8 %d s; run took %.0f s\n" % (
            time.strftime("%Y-%m-%d %H:%M:%S %Z"), platform.node(), os.cpu_count(), cpu,
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MiB,
            C, IMG // MiB, " (--quick)" if a.quick else "", tools, a.runtime, elapsed))
legend = """
Bold rows are autodecomp (`nbdkit --filter=autodecomp file X`); the others are anchors.
first 4K: from starting the server until `pread(4096, 0)` returns on a fresh server, the median of %d fresh servers.
seq: `nbdcopy URI null:` on a fresh server with default settings (command-line anchors: decompress to /dev/null), MB = 10^6 bytes.
ratios are ours ÷ the named anchor (> 1 is better for ours).
seq CPU: user + sys seconds of nbdcopy (os.wait4) + the server's, all threads (/proc/PID/stat), from its
start until just before it is stopped, so a pass at connect counts (command-line anchors: their own CPU).
1-thread decoder: the best single-threaded decoder of the same file to /dev/null, in the same run (wall / CPU s).
seq, seq CPU and the decoders: the best of %d runs (the least wall time, the least CPU), each on a fresh server.
CPU eff.: (seq CPU of the file plugin on raw + that decoder's CPU) ÷ ours' seq CPU (issue 15: ≥ 0.95);
par. eff.: the same floor ÷ %d threads ÷ (ours' seq wall + the connect's pass: its first connect's time beyond the file plugin's), many-frame shapes only (issue 15: ≥ 0.85).
cold: autodecomp-cache-size as shown (8 frames, at most 1/2 of the image; anchors their defaults);
warm: cache 2× the image, after reading all of it once in random order (1 MiB reads).
RSS: VmHWM of the server process (command-line anchors: their max RSS); cold = after the cold random
run, 16 conns = after 16 fio jobs (one connection each, QD 1) at random on the same cold server,
warm = after the warming and warm runs.
plugin reads: nbdkit stats filter below the filter, for connect + one 4 KiB read at %d (a block holding data).
"""
table = md(rows)
print(table)
print()
print(ttable)
print("targets met: %d of %d" % (met, len(targets)))
with open(a.out, "w") as f:
    f.write(head + "\n" + table + "\n" + legend % (FIRST_SAMPLES, max(1, a.seq_runs), THREADS, DATA_OFF))
    f.write("\n## Targets of issues 3 and 15 (%d of %d met)\n\n" % (met, len(targets)) + ttable + "\n")
    if failures or notes:
        f.write("\nProblems:\n\n" + "".join("- %s\n" % x for x in failures + notes))
for x in notes:
    log("note: " + x)
for x in failures:
    log("FAILED: " + x)
shutil.rmtree(WORK, ignore_errors=True)
log("wrote %s" % a.out)
sys.exit(1 if failures else 0)
