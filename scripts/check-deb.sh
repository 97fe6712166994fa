#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# scripts/check-deb.sh: build the Debian package and test it installed.
#
#   scripts/check-deb.sh [--keep DIR]
#
# Builds nbdkit-autodecomp_*.deb (dpkg-buildpackage -us -uc -b) in a
# temporary copy of the tree (tracked files and untracked ones that are
# not ignored, so uncommitted changes are built but no build products
# are; the developer's tree is not touched), lists it (dpkg -c), checks
# it holds the filter in nbdkit's filterdir, the tool and both man
# pages, installs it with apt-get, serves a small xz image through
# `nbdkit --filter=autodecomp` (by name, as the package installs it),
# reads it back with nbdcopy and compares the bytes, then removes the
# package and checks that the filter is gone.  Uses sudo when not root.
# Exits non-zero on any failure (and removes the package if it was
# left installed).  With --keep DIR, the built .deb files are copied
# to DIR.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
keep=
case "${1:-}" in
  --keep) keep=${2:?--keep needs a directory} ;;
  --keep=*) keep=${1#*=} ;;
  "") ;;
  *) echo "usage: $0 [--keep DIR]" >&2; exit 2 ;;
esac

say () { echo "check-deb: $*"; }
die () { echo "check-deb: FAIL: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
pkg=nbdkit-autodecomp

# Refuse to run over an installed copy: the test ends by removing the
# package, which would take away the user's.
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
  die "$pkg is already installed; remove it first ($sudo apt-get remove $pkg)"
fi

filterdir=$(pkg-config --variable=filterdir nbdkit 2>/dev/null || :)
so=${filterdir:-/nonexistent}/nbdkit-autodecomp-filter.so
# A filter put there by `sudo make install` would be overwritten by the
# package and removed with it, and could hide a package that lacks it.
if [ -e "$so" ]; then
  die "$so exists (from make install?); remove it first (make uninstall)"
fi

"$top/scripts/install-deps.sh"
filterdir=$(pkg-config --variable=filterdir nbdkit)
so=$filterdir/nbdkit-autodecomp-filter.so

tmp=$(mktemp -d /tmp/check-deb.XXXXXX)
# apt-get reads the local .deb as user _apt: let it.
chmod 755 "$tmp"
installed=
cleanup ()
{
  local rc=$?
  if [ -n "$installed" ]; then
    say "removing $pkg after a failure"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "$pkg" >/dev/null || :
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------ a clean copy
src=$tmp/src
mkdir "$src"
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$top" &&
   git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do
       # Deleted but not yet committed: not part of the tree.
       [ -e "$f" ] || [ -L "$f" ] || continue
       printf '%s\0' "$f"
     done | tar --null -T - -cf -) | tar -xf - -C "$src"
else
  # A release tarball: copy it; `debian/rules clean` (the first step of
  # dpkg-buildpackage) removes what a build left in it.
  cp -a "$top/." "$src/"
fi

# ------------------------------------------------------------ build
say "building in $src"
log=$tmp/build.log
if ! (cd "$src" &&
      DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-parallel=$(nproc)} \
      dpkg-buildpackage -us -uc -b) >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  die "dpkg-buildpackage failed (last 60 lines above)"
fi
# What dh_auto_test ran (the unit tests: see debian/rules).
grep -E '^# (TOTAL|PASS|SKIP|FAIL|XFAIL|XPASS|ERROR):' "$log" | sed 's/^/check-deb: build tests: /'
debs=("$tmp"/"$pkg"_*.deb)
[ -f "${debs[0]}" ] || die "no $pkg .deb was built"
[ "${#debs[@]}" -eq 1 ] || die "more than one $pkg .deb: ${debs[*]}"
deb=${debs[0]}
if [ -n "$keep" ]; then
  mkdir -p "$keep"
  cp "$tmp"/*.deb "$keep"/
fi

# ------------------------------------------------------------ contents
say "$(basename "$deb"):"
dpkg-deb -f "$deb" Package Version Architecture Depends
dpkg -c "$deb"
nbdkit_version=$(dpkg-query -W -f='${Version}' nbdkit)
contents=$(dpkg -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|')
for f in "$so" /usr/bin/autodecomp \
         /usr/share/man/man1/autodecomp.1.gz \
         /usr/share/man/man1/nbdkit-autodecomp-filter.1.gz; do
  grep -qxF "$f" <<<"$contents" || die "$f is not in the package"
done
dpkg-deb -f "$deb" Depends | grep -qF "nbdkit (= $nbdkit_version)" ||
  die "the package does not depend on nbdkit (= $nbdkit_version)"

# ------------------------------------------------------------ install
say "installing"
installed=1
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$tmp/apt.log" 2>&1 ||
  { cat "$tmp/apt.log" >&2; die "apt-get install failed"; }
[ -f "$so" ] || die "$so is not there after installing"
dpkg -S "$so" | grep -q "^$pkg:" || die "$so is not owned by $pkg"
/usr/bin/autodecomp --version
if grep -qs '^path-exclude.*/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
  say "dpkg is configured not to install man pages: not checking them"
else
  for m in autodecomp nbdkit-autodecomp-filter; do
    [ -f /usr/share/man/man1/$m.1.gz ] || die "$m.1 is not installed"
  done
fi

# ------------------------------------------------------------ serve
# A few MiB that compress somewhat and have zeros in the middle, in
# 1 MiB xz blocks so reads are random access.
img=$tmp/disk.img
{ head -c 1536K /dev/urandom | base64     # 2 MiB of text
  head -c 1M /dev/zero
  head -c 1M /dev/urandom
  echo end; } > "$img"
xz -T2 --block-size=1MiB -c "$img" > "$img.xz"
/usr/bin/autodecomp info "$img.xz"
say "serving $img.xz with nbdkit --filter=autodecomp"
# shellcheck disable=SC2016  # $uri is for the shell nbdkit --run starts
timeout 120 nbdkit -U - --filter=autodecomp file "$img.xz" \
  --run 'nbdcopy "$uri" '"'$tmp/copy.img'" ||
  die "nbdkit --filter=autodecomp or nbdcopy failed"
cmp "$img" "$tmp/copy.img" || die "the bytes read back differ from the image"
say "read $(stat -c %s "$img") bytes back through the installed filter: identical"

# ------------------------------------------------------------ remove
say "removing"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "$pkg" >"$tmp/apt.log" 2>&1 ||
  { cat "$tmp/apt.log" >&2; die "apt-get remove failed"; }
installed=
[ ! -e "$so" ] || die "$so is still there after removing $pkg"
[ ! -e /usr/bin/autodecomp ] || die "/usr/bin/autodecomp is still there after removing $pkg"
say "OK"
