#!/usr/bin/python3
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# bench/boot-guest.py: the guest that bench/remote boots (see bench/README.md).
#
#   boot-guest.py disk SRC.img OUT.img --busybox /bin/busybox [--percent 10]
#       A copy of the corpus image SRC (ext4 with system files) that boots:
#       /bin/busybox (static), /init (mounts /proc, checks the SHA-256 of a
#       list of files, prints "AUTODECOMP-BOOT-OK <n files>", powers off),
#       /bootcheck.sha256 (the list, made here on the host from SRC: 8 runs of
#       consecutive regular files in inode order, spread over the disk, about
#       PERCENT % of the image size in all), empty /proc /dev /sys.  Written with
#       debugfs, so the rest of the image keeps its layout.
#
#   boot-guest.py initramfs KERNEL-ROOT OUT.cpio --busybox /bin/busybox
#       A tiny initramfs for the kernel extracted into KERNEL-ROOT (dpkg-deb
#       -x of linux-image-*-cloud-amd64): Debian's cloud kernel has ext4
#       built in but virtio_blk and virtio_pci as modules, so the initramfs
#       loads them (their dependencies first, read from each module's
#       .modinfo), mounts /dev/vda read-only and switch_roots into its /init.
#
#   boot-guest.py stamp --busybox /bin/busybox
#       Prints a hash of what the boot disk is made from (DISK_VERSION, the /init
#       and the busybox binary), so bench/remote rebuilds the boot shapes when it changes.
import argparse, hashlib, os, re, shutil, stat, struct, subprocess, sys, tempfile

MARK_OK = "AUTODECOMP-BOOT-OK"
MARK_BAD = "AUTODECOMP-BOOT-BAD"

DISK_INIT = """#!/bin/busybox sh
# /init of the bench/remote boot disk (bench/boot-guest.py)
B=/bin/busybox
$B mount -t proc proc /proc
cd /
total=$($B wc -l < /bootcheck.sha256)
ok=$($B sha256sum -c /bootcheck.sha256 2>/dev/null | $B grep -c ': OK$')
if [ "$ok" = "$total" ]; then
  echo "%(ok)s $ok"
else
  echo "%(bad)s $ok of $total files"
fi
$B poweroff -f
""" % {"ok": MARK_OK, "bad": MARK_BAD}

INITRAMFS_INIT = """#!/bin/busybox sh
# /init of the bench/remote initramfs (bench/boot-guest.py): load the
# virtio modules, mount the root disk, switch to its /init.
B=/bin/busybox
$B mount -t devtmpfs devtmpfs /dev
for m in %(modules)s; do
  $B insmod /lib/modules/$m.ko || echo "%(bad)s insmod $m"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do $B sleep 0.05; i=$((i + 1)); done
if ! $B mount -t ext4 -o ro /dev/vda /root; then
  echo "%(bad)s cannot mount /dev/vda"
  $B poweroff -f
fi
$B mount --move /dev /root/dev
exec $B switch_root /root /init
"""

SAFE = re.compile(r"^[A-Za-z0-9._+,@=/-]+$")


def debugfs(img, cmds, write=False):
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as f:
        f.write("".join(c + "\n" for c in cmds))
        f.flush()
        r = subprocess.run(["debugfs"] + (["-w"] if write else []) + ["-f", f.name, img],
                           capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("debugfs failed on %s: %s" % (img, r.stderr[-500:]))
    return r.stdout, r.stderr


def walk(img):
    """(inode, path, size) of every regular file, by a breadth-first walk with debugfs ls -p."""
    files, level = [], ["/"]
    while level:
        out, _ = debugfs(img, ["ls -p " + d for d in level])
        nxt, cur = [], None
        for line in out.splitlines():
            if line.startswith("debugfs: ls -p "):
                cur = line[len("debugfs: ls -p "):]
                continue
            m = re.match(r"^/(\d+)/(\d+)/\d+/\d+/(.*)/(\d*)/$", line)
            if not m or cur is None:
                continue
            ino, mode, name, size = int(m.group(1)), int(m.group(2), 8), m.group(3), m.group(4)
            if name in (".", "..") or ino == 0:
                continue
            path = cur.rstrip("/") + "/" + name
            if not SAFE.match(path):
                continue
            if stat.S_ISDIR(mode):
                nxt.append(path)
            elif stat.S_ISREG(mode):
                files.append((ino, path, int(size or 0)))
        level = nxt
    return sorted(files)


def make_disk(a):
    src, out = a.src, a.out
    size = os.path.getsize(src)
    files = [f for f in walk(src) if f[1] not in ("/random.bin",) and f[2] > 0]
    if not files:
        sys.exit("boot-guest.py: no files in %s" % src)
    total = sum(f[2] for f in files)
    want = size * a.percent / 100
    chosen = pick(files, want)
    work = tempfile.mkdtemp(prefix="boot-guest-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        debugfs(src, ["dump %s %s/%d" % (p, work, i) for i, (_, p, _) in enumerate(chosen)])
        lines = []
        for i, (_, p, sz) in enumerate(chosen):
            with open(os.path.join(work, str(i)), "rb") as f:
                data = f.read()
            if len(data) != sz:
                sys.exit("boot-guest.py: dumped %s has %d bytes, expected %d" % (p, len(data), sz))
            lines.append("%s  %s\n" % (hashlib.sha256(data).hexdigest(), p))
            os.unlink(os.path.join(work, str(i)))
        with open(os.path.join(work, "bootcheck.sha256"), "w") as f:
            f.writelines(lines)
        with open(os.path.join(work, "init"), "w") as f:
            f.write(DISK_INIT)
        tmp = out + ".tmp"
        shutil.copyfile(src, tmp)
        root = {l.split("/")[5] for l in debugfs(src, ["ls -p /"])[0].splitlines() if l.count("/") >= 7}
        cmds = ["mkdir /" + d for d in ("bin", "proc", "dev", "sys") if d not in root]
        cmds += ["cd /bin", "write %s busybox" % os.path.abspath(a.busybox), "sif /bin/busybox mode 0100755",
                 "cd /", "write %s/init init" % work, "sif /init mode 0100755",
                 "write %s/bootcheck.sha256 bootcheck.sha256" % work]
        for p in ("/bin/busybox", "/init", "/bootcheck.sha256"):
            cmds += ["sif %s uid 0" % p, "sif %s gid 0" % p]
        _, err = debugfs(tmp, cmds, write=True)
        bad = [l for l in err.splitlines() if l.strip() and not l.startswith("debugfs ")]
        if bad:
            sys.exit("boot-guest.py: debugfs -w: %s" % "; ".join(bad[:5]))
        r = subprocess.run(["e2fsck", "-fn", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("boot-guest.py: e2fsck -fn of the boot disk: %s" % (r.stdout + r.stderr)[-800:])
        os.rename(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("%d files, %.1f MiB in %d runs of consecutive files spread over the disk (of %d files, %.1f MiB)" % (
        len(chosen), sum(c[2] for c in chosen) / 2**20, RUNS, len(files), total / 2**20))


RUNS = 8


def pick(files, want):
    """RUNS runs of consecutive files (inode order, which mkfs.ext4 -d allocates
    directory by directory, so a run is a few neighbouring directories on the disk),
    together about `want` bytes, their middles evenly spread over the files: a boot
    reads some directories whole and leaves most of the disk alone, unlike a copy."""
    total = sum(f[2] for f in files)
    if want >= total:
        return list(files)
    per, chosen, i, cum = want / RUNS, [], 0, 0
    for r in range(RUNS):
        start = total * (r + 0.5) / RUNS - per / 2
        while i < len(files) and cum + files[i][2] <= start:
            cum += files[i][2]
            i += 1
        got = 0
        while i < len(files) and got < per:
            sz = files[i][2]
            if got + sz > 1.5 * per:
                if got:
                    break  # the run is long enough; a large file would overshoot
            else:
                chosen.append(files[i])
                got += sz
            cum += sz
            i += 1
    return chosen


def modinfo(path, key):
    with open(path, "rb") as f:
        data = f.read()
    m = re.search(rb"(?:^|\0)" + key.encode() + rb"=([^\0]*)\0", data)
    return m.group(1).decode() if m else ""


def cpio_newc(entries, out):
    """entries: (name, mode, data bytes or None, rdev major, rdev minor)"""
    with open(out, "wb") as f:
        ino = 1
        for name, mode, data, rmaj, rmin in entries + [("TRAILER!!!", 0, None, 0, 0)]:
            data = data or b""
            nm = name.encode() + b"\0"
            hdr = "070701" + "".join("%08X" % v for v in (
                ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0, rmaj, rmin, len(nm), 0))
            f.write(hdr.encode() + nm)
            f.write(b"\0" * (-(110 + len(nm)) % 4))
            f.write(data)
            f.write(b"\0" * (-len(data) % 4))
            ino += 1


def make_initramfs(a):
    mods = {}
    for base in ("lib", "usr/lib"):
        for dp, _, fns in os.walk(os.path.join(a.kernel_root, base, "modules")):
            for fn in fns:
                if fn.endswith(".ko"):
                    mods[fn[:-3].replace("-", "_")] = os.path.join(dp, fn)
    order = []

    def need(m):
        if m in order:
            return
        if m not in mods:
            sys.exit("boot-guest.py: module %s not found under %s" % (m, a.kernel_root))
        for d in filter(None, modinfo(mods[m], "depends").split(",")):
            need(d.replace("-", "_"))
        order.append(m)

    for m in ("virtio_pci", "virtio_blk"):
        need(m)
    D, R, C = stat.S_IFDIR | 0o755, stat.S_IFREG, stat.S_IFCHR | 0o600
    entries = [(d, D, None, 0, 0) for d in ("bin", "dev", "proc", "sys", "root", "lib", "lib/modules")]
    entries.append(("dev/console", C, None, 5, 1))
    entries.append(("bin/busybox", R | 0o755, open(a.busybox, "rb").read(), 0, 0))
    init = INITRAMFS_INIT % {"modules": " ".join(order), "bad": MARK_BAD}
    entries.append(("init", R | 0o755, init.encode(), 0, 0))
    for m in order:
        entries.append(("lib/modules/%s.ko" % m, R | 0o644, open(mods[m], "rb").read(), 0, 0))
    cpio_newc(entries, a.out + ".tmp")
    os.rename(a.out + ".tmp", a.out)
    print("initramfs: busybox, modules %s" % " ".join(order))


# Bump when make_disk() or walk() would make another disk from the same image.
DISK_VERSION = 2


def stamp(a):
    h = hashlib.sha256()
    h.update(("%d\n%s" % (DISK_VERSION, DISK_INIT)).encode())
    h.update(open(a.busybox, "rb").read())
    print(h.hexdigest()[:16])


ap = argparse.ArgumentParser()
sub = ap.add_subparsers(dest="cmd", required=True)
p = sub.add_parser("disk")
p.add_argument("src")
p.add_argument("out")
p.add_argument("--busybox", default="/bin/busybox")
p.add_argument("--percent", type=float, default=10)
p = sub.add_parser("initramfs")
p.add_argument("kernel_root")
p.add_argument("out")
p.add_argument("--busybox", default="/bin/busybox")
p = sub.add_parser("stamp")
p.add_argument("--busybox", default="/bin/busybox")
a = ap.parse_args()
{"disk": make_disk, "initramfs": make_initramfs, "stamp": stamp}[a.cmd](a)
