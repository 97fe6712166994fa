#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# fuzz/build.sh [BUILDDIR]
#
# Builds the libFuzzer targets of the format library into BUILDDIR
# (default fuzz/build): fuzz-xz, fuzz-zstd, fuzz-gzip, fuzz-bzip2,
# fuzz-lzip (one source, fuzz-format.c, compiled once per format),
# fuzz-detect (the format detected from the magic bytes, as the filter
# does) and fuzz-index (the persisted index loader, fuzz-index.c).
#
# The library (lib/*.c) is compiled here with the same instrumentation
# rather than taken from the automake build, which is not built with
# sanitizers.  config.h comes from the top build directory if there is
# one ($TOP_BUILDDIR, else the source tree after an in-tree configure),
# otherwise a minimal one is generated.  Only what changed is rebuilt.
#
# FUZZ_SANITIZE picks the instrumentation besides libFuzzer's:
#   address    ASan + UBSan (the default): for ./check, for replaying
#              crashes and for minimising them;
#   undefined  UBSan only, about twice as fast as address (no shadow
#              memory, no poisoning of every malloc): for long runs
#              that count executions;
#   none       libFuzzer's coverage only, the fastest.
# The default BUILDDIR depends on it: fuzz/build for address,
# fuzz/build-MODE otherwise, so the builds never mix.  A crash found in
# a fast build must be replayed under ASan (fuzz/run.sh replays with
# the ASan build).
#
# Environment: FUZZ_CC (default clang), FUZZ_CFLAGS (added), TOP_BUILDDIR,
# FUZZ_SANITIZE.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
mode=${FUZZ_SANITIZE:-address}
case $mode in
  address)
    san="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
    default_build=$here/build ;;
  undefined)
    san="-fsanitize=fuzzer,undefined -fno-sanitize-recover=undefined"
    default_build=$here/build-undefined ;;
  none)
    san="-fsanitize=fuzzer"
    default_build=$here/build-none ;;
  *)
    echo "build.sh: FUZZ_SANITIZE must be address, undefined or none" >&2
    exit 2 ;;
esac
build=${1:-$default_build}
mkdir -p "$build/obj"
build=$(cd "$build" && pwd)
# A build directory holds one mode: start again if it held another.
if [ "$(cat "$build/mode" 2>/dev/null)" != "$mode" ]; then
  rm -f "$build"/obj/*.o "$build"/fuzz-*
  echo "$mode" > "$build/mode"
fi

cc=${FUZZ_CC:-clang}
if ! command -v "$cc" >/dev/null; then
  echo "build.sh: $cc not found (install clang and libclang-rt-dev)" >&2
  exit 1
fi

cflags="-g -O1 -fno-omit-frame-pointer -std=gnu11 -pthread
        -Wall -Wextra -Wshadow -Wno-unused-parameter ${FUZZ_CFLAGS:-}"
libs="-llzma -lzstd -lz -ldeflate -lisal -lbz2 -lxxhash -lpthread"
# Limits the library lets tests lower, lowered so that small inputs
# reach the code behind them: gzip merges spans once a sizing pass holds
# more than MAX_SNAP_BYTES of compressed checkpoint state (1 GiB by default).
lib_defs="-DMAX_SNAP_BYTES=16384"

# config.h
config_dir=
for d in "${TOP_BUILDDIR:-}" "$top"; do
  if [ -n "$d" ] && [ -f "$d/config.h" ]; then config_dir=$d; break; fi
done
if [ -z "$config_dir" ]; then
  config_dir=$build/config
  mkdir -p "$config_dir"
  cat > "$config_dir/config.h.new" <<'EOF'
/* Minimal config.h for the fuzzers (no configured build tree found). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#define _FILE_OFFSET_BITS 64
EOF
  if cmp -s "$config_dir/config.h.new" "$config_dir/config.h"; then
    rm "$config_dir/config.h.new"
  else
    mv "$config_dir/config.h.new" "$config_dir/config.h"
  fi
fi
includes="-I$config_dir -I$top/lib"

# Is $1 older than any of the remaining files?
stale () {
  local target=$1; shift
  [ -f "$target" ] || return 0
  local f
  for f in "$@"; do
    [ "$f" -nt "$target" ] && return 0
  done
  return 1
}

headers=("$top"/lib/*.h "$config_dir/config.h" "$0")

# The library: instrumented for coverage, but without libFuzzer's main.
objs=()
for src in "$top"/lib/*.c; do
  obj=$build/obj/$(basename "${src%.c}").o
  objs+=("$obj")
  if stale "$obj" "$src" "${headers[@]}"; then
    echo "  CC       $(basename "$src")"
    # shellcheck disable=SC2086
    "$cc" $cflags ${san/fuzzer/fuzzer-no-link} $lib_defs $includes \
      -c "$src" -o "$obj"
  fi
done

# The targets.
for fmt in xz zstd gzip bzip2 lzip detect; do
  case $fmt in
    detect) def=AD_FORMAT_UNKNOWN ;;
    *) def=AD_FORMAT_$(echo "$fmt" | tr a-z A-Z) ;;
  esac
  out=$build/fuzz-$fmt
  if stale "$out" "$here/fuzz-format.c" "${objs[@]}" "${headers[@]}"; then
    echo "  CCLD     fuzz-$fmt"
    # shellcheck disable=SC2086
    "$cc" $cflags $san $includes -DFUZZ_FORMAT=$def \
      "$here/fuzz-format.c" "${objs[@]}" $libs -o "$out"
  fi
done
# The persisted index loader: its own source.
out=$build/fuzz-index
if stale "$out" "$here/fuzz-index.c" "${objs[@]}" "${headers[@]}"; then
  echo "  CCLD     fuzz-index"
  # shellcheck disable=SC2086
  "$cc" $cflags $san $includes "$here/fuzz-index.c" "${objs[@]}" $libs \
    -o "$out"
fi
echo "build.sh: targets ($mode) in $build"
