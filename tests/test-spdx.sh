#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-spdx.sh: every source file carries the licence.  Lists the files
# of the source tree (git ls-files in a git checkout, else find, as in a
# dist tarball) of these kinds: C (*.c *.h *.S), shell and python
# (*.sh *.py, and any other file that starts with "#!"), Makefile.am,
# configure.ac, the man pages (*.pod) and the linker version script
# (*.syms); and fails, naming every one of them that lacks
#   SPDX-License-Identifier: BSD-3-Clause
# in its first 10 lines.  Not checked: markdown and text docs, generated
# files, and the fuzzing seeds and findings (binary inputs).
#
#   AUTODECOMP_SPDX_ROOT=DIR  check DIR instead of $top_srcdir (used to
#                             try the test itself on a broken tree)
corpus_only=1   # needs neither the filter nor the corpus
. "${srcdir:-$(dirname "$0")}/functions.sh"

root=$(cd "${AUTODECOMP_SPDX_ROOT:-$top_srcdir}" && pwd -P)
want='SPDX-License-Identifier: BSD-3-Clause'

# list_files: the candidate files, relative to $root, one a line.
list_files ()
{
    local gitroot
    gitroot=$(git -C "$root" rev-parse --show-toplevel 2>/dev/null) || gitroot=
    if [ -n "$gitroot" ] && [ "$(cd "$gitroot" && pwd -P)" = "$root" ]; then
        git -C "$root" ls-files
    else
        # No .git (a dist tarball), or a tarball unpacked inside some other
        # checkout (make distcheck): walk the tree, leaving out what
        # autotools, the build and the tests generate.
        (cd "$root" &&
         find . -type d \( -name .git -o -name autom4te.cache -o -name build-aux \
                   -o -name m4 -o -name .deps -o -name .libs \
                   -o -name corpus -o -name _build -o -name _inst \
                   -o -name 'nbdkit-autodecomp-*' -o -path ./fuzz/seeds \
                   -o -path ./fuzz/findings -o -path './fuzz/build*' \
                   -o -path './bench/corpus*' \) -prune \
                -o -type f \! -name configure \! -name config.status \
                   \! -name libtool \! -name aclocal.m4 \! -name 'config.h*' \
                   \! -name Makefile \! -name Makefile.in \
                   \! -name '*.log' \! -name '*.trs' -print |
         sed 's|^\./||' | LC_ALL=C sort)
    fi
}

# wanted FILE: is FILE of a kind that must carry the line?
wanted ()
{
    case "$1" in
        fuzz/seeds/*|fuzz/findings/*) return 1 ;;
        *.md|*.txt) return 1 ;;
        *.c|*.h|*.S|*.sh|*.py|*.pod|*.syms) return 0 ;;
        Makefile.am|*/Makefile.am|configure.ac) return 0 ;;
    esac
    [ "$(head -c 2 "$root/$1" 2>/dev/null)" = '#!' ]
}

checked=0
missing=()
while IFS= read -r f; do
    [ -f "$root/$f" ] || continue      # tracked but deleted in the work tree
    wanted "$f" || continue
    checked=$((checked + 1))
    head -n 10 "$root/$f" | grep -qF -- "$want" || missing+=("$f")
done < <(list_files)

# A listing that found almost nothing is a broken test, not a clean tree.
[ "$checked" -ge 10 ] || fail "only $checked files found under $root: cannot list the sources"

if [ "${#missing[@]}" -gt 0 ]; then
    for f in "${missing[@]}"; do
        echo "$test_name: no '$want' in the first 10 lines of $f" >&2
    done
    fail "${#missing[@]} of $checked files lack the SPDX line (see CONTRIBUTING.md)"
fi
note "$checked files carry '$want'"
