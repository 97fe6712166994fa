#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# fuzz/run.sh TARGET SECONDS [EXTRA...]
#
# Runs one fuzz target (xz, zstd, gzip, bzip2, lzip, detect or index; "fuzz-xz" works
# too) for SECONDS, building it first if needed, and prints how many
# inputs it ran.  EXTRA arguments go to libFuzzer (e.g. -jobs=2, or a
# crash file to replay it: run.sh xz 0 crash-1234).
#
# The corpus it grows is a scratch copy of the seeds, fuzz/corpus-TARGET
# (kept between runs, ignored by git); fuzz/seeds is never written.
# Crashes, leaks and timeouts land in BUILDDIR/artifacts/TARGET/, the
# log in BUILDDIR/logs/TARGET.log.
#
# FUZZ_SANITIZE=undefined or none (see build.sh) runs a fast build,
# for long runs that count executions; if such a run finds something,
# its artifacts are replayed at once under the ASan build, and that
# verdict is what counts.  Replaying (run.sh TARGET 0 FILE) uses the
# ASan build unless FUZZ_SANITIZE says otherwise.
#
# FUZZ_LEDGER=FILE (e.g. fuzz/EXECUTIONS.md) appends a row for the run
# to that executions ledger: date, target, build, seconds, executions,
# findings.  fuzz/ledger.sh adds them up.
#
# Environment: FUZZ_BUILD (default fuzz/build, or fuzz/build-MODE for a
# fast build), FUZZ_CORPUS (default fuzz/corpus-TARGET), FUZZ_LEDGER,
# FUZZ_LEDGER_NOTE (a remark added to the ledger row's findings),
# and what build.sh reads (FUZZ_SANITIZE, FUZZ_CC, ...).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage="usage: fuzz/run.sh xz|zstd|gzip|bzip2|lzip|detect|index SECONDS [LIBFUZZER ARGS]"
target=${1:?$usage}
seconds=${2:?$usage}
shift 2
target=${target#fuzz-}
case $target in
  xz|zstd|gzip|bzip2|lzip|index) seeds=("$here/seeds/$target") ;;
  detect) seeds=()            # Every format's seeds (images, not indexes).
          for d in "$here"/seeds/*; do
            [ "${d##*/}" = index ] || seeds+=("$d")
          done ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
case $seconds in
  ''|*[!0-9]*) echo "$usage" >&2; exit 2 ;;
esac

mode=${FUZZ_SANITIZE:-address}
case $mode in
  address) build=${FUZZ_BUILD:-$here/build} ;;
  *) build=${FUZZ_BUILD:-$here/build-$mode} ;;
esac
"$here/build.sh" "$build" >&2
build=$(cd "$build" && pwd)
bin=$build/fuzz-$target

corpus=${FUZZ_CORPUS:-$here/corpus-$target}
mkdir -p "$corpus" "$build/artifacts/$target" "$build/logs"
# Seeds are copied under their own names, so a re-run only adds new ones.
for d in "${seeds[@]}"; do
  for f in "$d"/*; do
    [ -f "$f" ] || continue
    name=seed-$(basename "$d")-$(basename "$f")
    [ -e "$corpus/$name" ] || cp "$f" "$corpus/$name"
  done
done

log=$build/logs/$target.log
# A run given files (replaying crashes) takes no corpus and no time.
replay=no
for a in "$@"; do
  case $a in -*) ;; *) replay=yes ;; esac
done
if [ $replay = yes ]; then
  exec "$bin" -rss_limit_mb=2048 -timeout=10 "$@"
fi

# Every input opens an image afresh, and the pass workers allocate and
# free their block buffers (up to 3.6 MB each) every time: glibc then
# hands the memory back to the kernel and faults it in again, which
# cost more than a third of fuzz-bzip2's time.  Keeping it mapped made
# the fast builds run about 1.6 times as many inputs per second.  (The
# ASan build has its own allocator, which ignores this.)
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456}

echo "run.sh: fuzz-$target for ${seconds}s on $corpus (log: $log)" >&2
set +e
"$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
  -max_len=262144 -print_final_stats=1 \
  -artifact_prefix="$build/artifacts/$target/" \
  "$@" "$corpus" > "$log" 2>&1
rc=$?
set -e

# libFuzzer's final stats (-print_final_stats=1), and its last status line.
final_stat () {
  sed -n "s/^stat::$1: *//p" "$log" | tail -1
}
execs=$(final_stat number_of_executed_units)
rate=$(final_stat average_exec_per_sec)
cov=$(grep -aE '^#[0-9]+' "$log" | tail -1 |
      grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
echo "fuzz-$target: ${execs:-?} executions (${rate:-?}/s)," \
     "${cov:-no coverage line}, exit $rc"
findings=none
if [ $rc -ne 0 ]; then
  grep -aE '^==[0-9]+==ERROR|SUMMARY:|ORACLE|^artifact_prefix|Test unit' \
       "$log" | head -20 || true
  # The artifacts this run wrote.
  arts=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log")
  findings="rc $rc:"
  [ -n "$arts" ] || findings="$findings no artifact"
  for a in $arts; do
    findings="$findings $(basename "$a")"
    [ "$mode" != address ] || continue
    echo "run.sh: replaying $a under ASan:" >&2
    if FUZZ_SANITIZE=address FUZZ_BUILD= "$0" "$target" 0 "$a" \
         > "$a.asan.log" 2>&1; then
      echo "  passes under ASan (log: $a.asan.log)" >&2
      findings="$findings (passes under ASan)"
    else
      echo "  fails under ASan (log: $a.asan.log):" >&2
      grep -E '^==[0-9]+==ERROR|SUMMARY:|ORACLE' "$a.asan.log" |
        head -5 >&2 || true
      findings="$findings (fails under ASan too)"
    fi
  done
fi

# A run with smaller inputs than the default says so in the ledger.
for a in "$@"; do
  case $a in -max_len=*) findings="$findings (inputs up to ${a#-max_len=} bytes)" ;; esac
done
# FUZZ_LEDGER_NOTE adds a remark of the caller's, e.g. which code a run
# is meant to exercise.
if [ -n "${FUZZ_LEDGER_NOTE:-}" ]; then
  findings="$findings ($FUZZ_LEDGER_NOTE)"
fi

if [ -n "${FUZZ_LEDGER:-}" ]; then
  "$here/ledger.sh" add "$FUZZ_LEDGER" "$target" "$mode" "$seconds" \
    "${execs:-0}" "${rate:-?}" "$findings"
fi
exit $rc
