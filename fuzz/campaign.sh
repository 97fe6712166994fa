#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# fuzz/campaign.sh [-s SLICE] [-t "TARGETS"] [-m MAXLEN] END
#
# A long fuzzing session that counts: runs the targets one at a time,
# niced (nice -n 19: the fuzzers share the machine), in slices of
# SLICE seconds (default 600), until END, which is a time of day in
# UTC ("23:40") or a number of seconds from now.  Every run appends its
# row to the executions ledger fuzz/EXECUTIONS.md (see ledger.sh), so
# counts add up across sessions.
#
# Each round gives one slice to every target still short of the goal
# of 10 million executions (by the ledger), the furthest from it first;
# a target close to the goal gets only the time it needs (by its last
# rate in the ledger, plus a quarter), the rest going to the others.
# A target whose run finds something (crash, leak, timeout, broken
# oracle) is left out of the following rounds; run.sh has replayed the
# artifact under ASan already, and the ledger row names it.
#
# -m MAXLEN caps the size of the inputs the fuzzers make (libFuzzer's
# -max_len; run.sh's default is 256 KiB).  A bzip2 input of a few KiB
# can already decode to tens of MB, which the target decodes several
# ways, so the large inputs a long run collects cost 10 to 100 times
# more than small ones while reaching no new code: with -m 8192,
# fuzz-bzip2 ran about 4 times as many inputs per second over the same
# corpus at the same coverage.  Every seed is below 16 KiB.  The ledger
# row says which cap a run had.
#
# The build is the fast one (FUZZ_SANITIZE=undefined, see build.sh)
# unless FUZZ_SANITIZE says otherwise.  Targets: -t "xz zstd gzip bzip2
# lzip detect" (the default).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage="usage: fuzz/campaign.sh [-s SLICE] [-t TARGETS] [-m MAXLEN] END (HH:MM UTC or seconds)"
slice=600
targets="xz zstd gzip bzip2 lzip detect"
max_len=()
while getopts s:t:m: opt; do
  case $opt in
    s) slice=$OPTARG ;;
    t) targets=$OPTARG ;;
    m) max_len=(-max_len="$OPTARG") ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
end=${1:?$usage}
case $end in
  *:*) end_s=$(date -u -d "$end" +%s) ;;
  *[!0-9]*|'') echo "$usage" >&2; exit 2 ;;
  *) end_s=$(( $(date +%s) + end )) ;;
esac

export FUZZ_SANITIZE=${FUZZ_SANITIZE:-undefined}
# A build directory of its own for each set of targets: two campaigns
# (one per core) building into one directory at the same moment race
# on its files, and a failed build looks like a finding.
export FUZZ_BUILD=${FUZZ_BUILD:-$here/build-$FUZZ_SANITIZE-$(echo $targets | tr ' ' '-')}
export FUZZ_LEDGER=$here/EXECUTIONS.md
goal=10000000
dropped=" "

# Executions so far of target $1, by the ledger.
total_of () {
  "$here/ledger.sh" totals "$FUZZ_LEDGER" | awk -v t="$1" '$1 == t { print $2 }'
}

# The last rate (exec/s) of target $1 in this build, by the ledger; 0
# if none.
rate_of () {
  awk -F'|' -v t="$1" -v b="$FUZZ_SANITIZE" '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    NF >= 9 && trim($3) == t && trim($4) == b && trim($7) ~ /^[0-9]+$/ {
      r = trim($7)
    }
    END { print r + 0 }' "$FUZZ_LEDGER"
}

while :; do
  # This round: the targets short of the goal, fewest executions first.
  round=$(for t in $targets; do
            case $dropped in *" $t "*) continue ;; esac
            n=$(total_of "$t")
            # (An "if", not "&&": a false test as the loop's last
            # command would fail the pipeline, and set -e would end the
            # campaign when the last target listed has met its goal.)
            if [ "${n:-0}" -lt $goal ]; then echo "${n:-0} $t"; fi
          done | sort -n | awk '{ print $2 }')
  [ -n "$round" ] || { echo "campaign.sh: nothing left to run" >&2; break; }
  for t in $round; do
    left=$(( end_s - $(date +%s) ))
    if [ $left -lt 30 ]; then
      echo "campaign.sh: time is up" >&2
      "$here/ledger.sh" totals "$FUZZ_LEDGER"
      exit 0
    fi
    s=$(( left < slice ? left : slice ))
    rate=$(rate_of "$t")
    if [ "$rate" -gt 0 ]; then
      need=$(( ($goal - $(total_of "$t")) * 5 / 4 / rate + 30 ))
      [ $need -lt $s ] && s=$need
    fi
    # A tree being edited may not build for a while: that is no finding.
    if ! "$here/build.sh" "$FUZZ_BUILD" >/dev/null 2>&1; then
      echo "campaign.sh: the build fails; trying again in a minute" >&2
      sleep 60
      continue
    fi
    echo "campaign.sh: $(date -u +%H:%M) $t for ${s}s ($FUZZ_SANITIZE)" >&2
    # At nice 19 a fuzzer gets almost no CPU while the machine is busy
    # (a CI run took one from 1,000 to 30 executions per second), and
    # libFuzzer's per-input timeout is wall-clock time: 60 s instead of
    # run.sh's 10 s, so that only a real hang counts.
    if ! nice -n 19 "$here/run.sh" "$t" "$s" -timeout=60 "${max_len[@]}"; then
      echo "campaign.sh: $t found something; left out from now on" >&2
      dropped="$dropped$t "
    fi
  done
done
"$here/ledger.sh" totals "$FUZZ_LEDGER"
