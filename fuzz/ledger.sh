#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# fuzz/ledger.sh add LEDGER TARGET BUILD SECONDS EXECUTIONS RATE FINDINGS
# fuzz/ledger.sh totals [LEDGER]
#
# The executions ledger (default fuzz/EXECUTIONS.md) is a markdown file
# whose table has one row per fuzzing run:
#
#   | date (UTC) | target | build | seconds | executions | exec/s | findings |
#
# "add" appends a row (run.sh does it when FUZZ_LEDGER is set).
# "totals" adds the executions up per target and per build, so that
# counts carry over from one session to the next, and prints how far
# each target is from the goal of 10 million.  Rows whose executions
# column is not a plain number are ignored.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage="usage: fuzz/ledger.sh add LEDGER TARGET BUILD SECONDS EXECS RATE FINDINGS
       fuzz/ledger.sh totals [LEDGER]"

case ${1:-} in
  add)
    [ $# -eq 8 ] || { echo "$usage" >&2; exit 2; }
    ledger=$2
    if [ ! -f "$ledger" ]; then
      echo "ledger.sh: $ledger does not exist" >&2
      exit 1
    fi
    # A "|" in the findings would break the table.
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' \
      "$(date -u '+%Y-%m-%d %H:%M')" "$3" "$4" "$5" "$6" "$7" \
      "$(printf '%s' "$8" | tr '|' '/')" >> "$ledger"
    ;;
  totals)
    ledger=${2:-$here/EXECUTIONS.md}
    awk -F'|' '
      function trim(s) { gsub(/^ +| +$/, "", s); return s }
      NF >= 9 {
        t = trim($3); b = trim($4); e = trim($6)
        if (e !~ /^[0-9]+$/) next
        total[t] += e; by[t "/" b] += e; runs[t]++
        if (!(b in seen)) { seen[b] = 1; builds[++nb] = b }
      }
      END {
        n = split("xz zstd gzip bzip2 lzip detect", order, " ")
        for (i = 1; i <= n; i++) {
          t = order[i]
          line = sprintf("%-7s %11d executions in %3d runs", t, total[t],
                         runs[t])
          sep = " ("
          for (j = 1; j <= nb; j++)
            if ((t "/" builds[j]) in by) {
              line = line sprintf("%s%s %d", sep, builds[j],
                                  by[t "/" builds[j]])
              sep = ", "
            }
          if (sep == ", ") line = line ")"
          left = 10000000 - total[t]
          line = line (left > 0 ? sprintf(", %d to go", left) : ", goal met")
          print line
        }
      }' "$ledger"
    ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
