# Common helpers for the nbdkit-autodecomp integration tests.  -*- sh -*-
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Every test script starts with:
#
#   . "${srcdir:-$(dirname "$0")}/functions.sh"
#
# which puts /usr/bin first in PATH (Debian's /usr/bin/python3 has libnbd's
# "nbd" module), sets "set -e", installs the EXIT trap that runs the cleanup
# stack, and locates FILTER, CORPUS and the source directory.
#
# Exit codes follow automake: 0 pass, 77 skip, 99 hard error, other fail.
#
# Environment (set by tests/Makefile.am, or by hand):
#   FILTER   path of the built filter .so, or a filter name (e.g. "xz" to try
#            the tests against nbdkit's own xz filter: only .xz pairs are used)
#   CORPUS   directory holding the test corpus (built on first use)
#   srcdir / top_srcdir   as automake sets them (guessed when unset)
#   AUTODECOMP_CORPUS_TESTS=no  the tests that need the corpus skip (77)
#   AUTODECOMP_TEST_FAST=1  fewer reads, for quick local runs
#   AUTODECOMP_TEST_PROGRESS_TTY=1  progress lines on the terminal too (./check
#            sets it; see progress below)

set -e
set -o pipefail

PATH=/usr/bin:/usr/sbin:/bin:/sbin${PATH:+:$PATH}
export PATH
export LC_ALL=C

: "${srcdir:=$(cd "$(dirname "$0")" && pwd)}"
srcdir=$(cd "$srcdir" && pwd)
: "${top_srcdir:=$srcdir/..}"
top_srcdir=$(cd "$top_srcdir" && pwd)
export srcdir top_srcdir

test_name=$(basename "$0" .sh)

if [ -z "${FILTER:-}" ]; then
    for f in "$top_srcdir/filters/autodecomp/.libs/nbdkit-autodecomp-filter.so" \
             "$srcdir/../filters/autodecomp/.libs/nbdkit-autodecomp-filter.so"; do
        if [ -f "$f" ]; then FILTER=$f; break; fi
    done
fi
if [ -z "${FILTER:-}" ] && [ -z "${corpus_only:-}" ]; then
    echo "$test_name: FILTER is not set and the built filter was not found" >&2
    exit 99
fi
export FILTER
: "${CORPUS:=$top_srcdir/tests/corpus}"
export CORPUS

# Is FILTER our autodecomp filter (rather than e.g. nbdkit's xz filter)?
is_autodecomp ()
{
    case "$(basename "$FILTER")" in
        *autodecomp*) return 0 ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- messages

# Quiet on success: notes go to the .log automake keeps, prefixed.
#
# progress TEXT: a step of a long test ("disk.img.xz, 3/24"): a note that
# is also written to the terminal when AUTODECOMP_TEST_PROGRESS_TTY is set
# (./check sets it) and there is one (/dev/tty; none in CI, where nothing
# more is written): automake's parallel harness sends a test's output only
# to its .log.  A heartbeat (below) says "still running (N s: LAST NOTE)"
# after 15 s without a note or progress line.
_progress_tty=
if [ -n "${AUTODECOMP_TEST_PROGRESS_TTY:-}" ] && [ ! -t 1 ] &&
   ( exec 8>/dev/tty && [ -t 8 ] ) 2>/dev/null; then
    _progress_tty=1
fi
# The last note, with its time, for the heartbeat.  A script run by a
# test (setup-corpus.sh) writes to the test's file.
if [ -n "${AUTODECOMP_PROGRESS_FILE:-}" ] && [ -f "$AUTODECOMP_PROGRESS_FILE" ]; then
    _progress_file=$AUTODECOMP_PROGRESS_FILE
    _own_heartbeat=
else
    _progress_file=$(mktemp "${TMPDIR:-/tmp}/adc-progress-$test_name.XXXXXX")
    export AUTODECOMP_PROGRESS_FILE=$_progress_file
    _own_heartbeat=1
fi
printf -v _test_start '%(%s)T' -1

_remember () { printf '%(%s)T %s\n' -1 "$*" > "$_progress_file" 2>/dev/null || true; }
_to_tty ()
{
    [ -n "$_progress_tty" ] || return 0
    { printf '%s\n' "$*" > /dev/tty; } 2>/dev/null || true
}
note () { echo "$test_name: $*"; _remember "$*"; }
progress () { note "$@"; _to_tty "$test_name: $*"; }
fail () { echo "$test_name: FAIL: $*" >&2; exit 1; }
skip () { echo "$test_name: SKIP: $*"; exit 77; }

# requires CMD [ARGS...]: fail unless CMD exists (and, with ARGS, unless
# running it with ARGS succeeds).  Every program the tests use is a Debian
# package that scripts/install-deps.sh installs, so a missing one is a
# broken setup, not a reason to skip; tests skip (77) only for what the
# machine cannot do (no /dev/fuse, FUSE mounts refused).
requires ()
{
    if [ $# -eq 1 ]; then
        command -v "$1" >/dev/null 2>&1 ||
            fail "$1 is not installed (scripts/install-deps.sh installs it)"
    else
        "$@" >/dev/null 2>&1 </dev/null ||
            fail "'$*' failed (scripts/install-deps.sh installs what the tests need)"
    fi
}

requires_python_nbd ()
{
    requires /usr/bin/python3 -c 'import nbd'
}

# Time limit for one step (seconds), so a hang fails instead of blocking make.
# Scales with AUTODECOMP_TEST_TIMEOUT_SCALE (e.g. 4 under valgrind).
tlimit ()
{
    local s=$1; shift
    timeout --kill-after=10 $(( s * ${AUTODECOMP_TEST_TIMEOUT_SCALE:-1} )) "$@"
}

# ---------------------------------------------------------------- cleanup stack
#
# cleanup_fn CMD [ARGS...] pushes a command; on exit they run in reverse order.
# Logs registered with show_log_on_failure are printed when the test fails.

_cleanup_cmds=()
_failure_logs=()

cleanup_fn ()
{
    local q
    printf -v q '%q ' "$@"
    _cleanup_cmds+=("$q")
}

show_log_on_failure ()
{
    local f
    for f in "${_failure_logs[@]}"; do [ "$f" = "$1" ] && return 0; done
    _failure_logs+=("$1")
}

_run_cleanup ()
{
    local rc=$? i f
    set +e
    trap '' INT TERM
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
        for f in "${_failure_logs[@]}"; do
            if [ -s "$f" ]; then
                echo "---- $f (last 100 lines) ----" >&2
                tail -n 100 "$f" >&2
                echo "---- end of $f ----" >&2
            fi
        done
        echo "$test_name: FAILED (exit $rc)" >&2
    fi
    for (( i=${#_cleanup_cmds[@]}-1; i>=0; i-- )); do
        eval "${_cleanup_cmds[$i]}" || true
    done
    exit "$rc"
}
trap _run_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- heartbeat
#
# A background loop that, while the test runs, prints "test-x: still
# running (N s: LAST NOTE)" (to the log, and to the terminal as progress
# does) whenever 15 s have passed without a note, so that a test stuck in
# one step says so.  It is stopped on exit (the first cleanup pushed, so
# the last run), and ends by itself within a second when the test has
# gone; it never changes the test's status.

_heartbeat ()
{
    local parent=$1 last=$_test_start now t msg line
    trap - EXIT INT TERM
    set +e
    while kill -0 "$parent" 2>/dev/null; do
        sleep 1 </dev/null >/dev/null 2>&1
        printf -v now '%(%s)T' -1
        t=0 msg=
        read -r t msg < "$_progress_file" 2>/dev/null
        if [[ $t =~ ^[0-9]+$ ]] && [ "$t" -gt "$last" ]; then last=$t; fi
        if [ $(( now - last )) -ge 15 ]; then
            line="$test_name: still running ($(( now - _test_start )) s${msg:+: $msg})"
            echo "$line"
            _to_tty "$line"
            last=$now
        fi
    done
}

_stop_heartbeat ()
{
    kill "$_heartbeat_pid" 2>/dev/null
    wait "$_heartbeat_pid" 2>/dev/null
    rm -f "$_progress_file"
    return 0
}

if [ -n "$_own_heartbeat" ]; then
    _heartbeat "$$" &
    _heartbeat_pid=$!
    cleanup_fn _stop_heartbeat
fi

# make_tmpdir: a private temporary directory, removed on exit.  Sets $tmp.
make_tmpdir ()
{
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/adc-$test_name.XXXXXX")
    cleanup_fn rm -rf "$tmp"
}

# ---------------------------------------------------------------- nbdkit
#
# start_nbdkit NAME [NBDKIT-ARGS...]
#   Starts "nbdkit -f -U SOCK -P PIDFILE --exit-with-parent NBDKIT-ARGS" in the
#   background with stderr (and stdout) to $tmp/NAME.log, waits until the
#   pidfile appears (nbdkit writes it once it listens), and registers a kill
#   on exit.  Sets: sock, uri, nbdkit_pid, nbdkit_log.
#   The caller passes the filter(s) and plugin, e.g.
#     start_nbdkit srv --filter="$FILTER" file "$CORPUS/disk.img.xz"
#   Needs make_tmpdir first.  With nbdkit_may_fail=1, returns 1 (instead of
#   failing the test) when nbdkit exits before it is ready, with its exit
#   status in $nbdkit_early_exit.

start_nbdkit ()
{
    local name=$1; shift
    local pidfile=$tmp/$name.pid i
    sock=$tmp/$name.sock
    nbdkit_log=$tmp/$name.log
    rm -f "$pidfile" "$sock"
    nbdkit -f -U "$sock" -P "$pidfile" --exit-with-parent "$@" \
        >"$nbdkit_log" 2>&1 </dev/null &
    local bgpid=$!
    cleanup_fn stop_nbdkit_pid "$bgpid"
    show_log_on_failure "$nbdkit_log"
    nbdkit_pid=$bgpid
    nbdkit_early_exit=
    for (( i = 0; i < 600; i++ )); do
        if [ -s "$pidfile" ]; then break; fi
        if ! kill -0 "$bgpid" 2>/dev/null; then
            nbdkit_early_exit=0
            wait "$bgpid" || nbdkit_early_exit=$?
            if [ -n "${nbdkit_may_fail:-}" ]; then
                return 1
            fi
            cat "$nbdkit_log" >&2
            fail "nbdkit $* exited (status $nbdkit_early_exit) before it was ready"
        fi
        sleep 0.1
    done
    [ -s "$pidfile" ] || fail "nbdkit $* did not write its pidfile in 60 s"
    nbdkit_pid=$(cat "$pidfile")
    [ "$nbdkit_pid" = "$bgpid" ] || note "pidfile says $nbdkit_pid, started $bgpid"
    uri="nbd+unix:///?socket=$sock"
}

# stop_nbdkit_pid PID: TERM, wait up to 10 s, then KILL.
stop_nbdkit_pid ()
{
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill "$pid" 2>/dev/null || true
    for (( i = 0; i < 100; i++ )); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_pid () { stop_nbdkit_pid "$@"; }

# stop_nbdkit: stop the most recent server started by start_nbdkit.
stop_nbdkit ()
{
    stop_nbdkit_pid "$nbdkit_pid"
}

# nbdkit_alive: fail unless the most recent server is still running.
nbdkit_alive ()
{
    kill -0 "$nbdkit_pid" 2>/dev/null
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port ()
{
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# export_size URI: the export's size in bytes.
export_size ()
{
    tlimit 60 nbdinfo --size "$1"
}

# ---------------------------------------------------------------- corpus

# setup_corpus: build $CORPUS (and $CORPUS/extra) once, with the project's
# corpus/make-corpus.sh and setup-corpus.sh; fails the test when it cannot.
# Skips (77) only when AUTODECOMP_CORPUS_TESTS=no (configure
# --disable-corpus-tests, which make distcheck uses).
setup_corpus ()
{
    local rc=0
    [ "${AUTODECOMP_CORPUS_TESTS:-yes}" != no ] ||
        skip "the tests on the corpus are off (configure --disable-corpus-tests)"
    "$srcdir/setup-corpus.sh" || rc=$?
    [ "$rc" -eq 0 ] || exit "$rc"
}

# corpus_pairs: THE list of (compressed file, original file) pairs, one pair a
# line, separated by a space, absolute paths.  Every test iterates this list
# (filtered by filter_handles).  Extra shapes are made by setup-corpus.sh.
corpus_pairs ()
{
    local c=$CORPUS e=$CORPUS/extra f
    # raw image, passed through
    echo "$c/disk.img $c/disk.img"
    # made by corpus/make-corpus.sh
    for f in disk.img.xz disk-1block.img.xz \
             disk.img.zst disk-frames.img.zst disk-seekable.img.zst \
             disk.img.gz disk.img.bgz disk.img.bz2 \
             disk.img.lz disk-1member.img.lz; do
        echo "$c/$f $c/disk.img"
    done
    # made by setup-corpus.sh
    for f in disk-1m.img.xz disk-multistream.img.xz disk-sha256.img.xz \
             disk-seekable-nosum.img.zst disk-nosize.img.zst \
             disk-frames-nosize.img.zst \
             disk-multimember.img.gz disk-bzip2.img.bz2 disk-cat.img.bz2; do
        echo "$e/$f $c/disk.img"
    done
    if [ -f "$e/disk-pbzip2.img.bz2" ]; then
        echo "$e/disk-pbzip2.img.bz2 $c/disk.img"
    fi
    # odd size: 64 MiB - 12345 bytes
    echo "$e/odd.img $e/odd.img"
    for f in odd.img.xz odd.img.zst odd-seekable.img.zst odd.img.gz \
             odd.img.bgz odd.img.bz2 odd.img.lz; do
        echo "$e/$f $e/odd.img"
    done
}

# filter_handles FILE: can the filter under test serve FILE?  Our filter
# takes everything; nbdkit's xz filter (used before ours existed) only .xz.
filter_handles ()
{
    if is_autodecomp; then return 0; fi
    case "$(basename "$FILTER" .so)" in
        xz|*-xz-filter) case "$1" in *.xz) return 0 ;; esac; return 1 ;;
        gzip|*-gzip-filter) case "$1" in *.gz) return 0 ;; esac; return 1 ;;
        *) return 0 ;;
    esac
}

# test_pairs: corpus_pairs filtered by filter_handles (and, when
# AUTODECOMP_TEST_ONLY is set, by a grep -E pattern on the compressed name).
test_pairs ()
{
    local comp orig
    corpus_pairs | while read -r comp orig; do
        filter_handles "$comp" || continue
        if [ -n "${AUTODECOMP_TEST_ONLY:-}" ]; then
            echo "$comp" | grep -Eq -- "$AUTODECOMP_TEST_ONLY" || continue
        fi
        echo "$comp $orig"
    done
}

# family_pairs: one pair per format family (raw, xz, zstd, zstd seekable,
# gzip, BGZF, bzip2, lzip) plus the odd-size xz: for the tests where each pair
# costs a whole read of the image through a slower path (qemu-img, curl,
# cow, nbdfuse).  A subset of test_pairs, so of corpus_pairs.
family_pairs ()
{
    test_pairs | grep -E '/(disk\.img|disk\.img\.(xz|zst|gz|bgz|bz2|lz)|disk-seekable\.img\.zst|odd\.img\.xz) '
}

# has_check FILE: does the format of FILE let a random-access reader verify
# every byte it serves (a checksum over each independently decoded unit)?
# Used by test-errors.sh: corrupted copies of these must yield 0 wrong bytes.
has_check ()
{
    case "$(basename "$1")" in
        # One 64 MiB block: served progressively from the spill file, so
        # bytes before the block's end are served before its check runs
        # (documented in the man page, LARGE FRAMES).
        disk-1block.img.xz) return 1 ;;
        *.xz) return 0 ;;                     # CRC64/SHA-256 per block
        *.bgz) return 0 ;;                    # CRC32 per 64 KiB member
        *.bz2) return 0 ;;                    # CRC32 per block
        # One 64 MiB member: served progressively, as disk-1block.img.xz.
        disk-1member.img.lz) return 1 ;;
        *.lz) return 0 ;;                     # CRC32 per member
        disk-frames.img.zst|disk-frames-nosize.img.zst) return 0 ;;  # XXH64 per 1 MiB frame
        disk-seekable.img.zst|odd-seekable.img.zst) return 0 ;;     # seek-table checksums
        *) return 1 ;;  # one huge unit (gzip member, zstd frame) or no check
    esac
}

# reads_for FILE N: how many random reads to do on FILE, scaled down for
# formats where each cold read may have to decode from a distant point.
reads_for ()
{
    local n=$2
    if [ -n "${AUTODECOMP_TEST_FAST:-}" ]; then n=$(( n / 10 )); fi
    echo "$n"
}

# The Python helper (run under tlimit, so not a shell function).
random_reads=("/usr/bin/python3" "$srcdir/random-reads.py")

# elapsed: seconds since the script started (bash SECONDS).
elapsed () { echo "${SECONDS}s"; }

# run_random_reads_all CONNS COUNT [PAIRS-FUNCTION [FILTER-ARGS...]]: for
# every pair (of test_pairs, or of the function given), start a server
# (with the filter parameters given) and do COUNT random reads through
# CONNS connections at once.
run_random_reads_all ()
{
    local conns=$1 count=$2 pairs=${3:-test_pairs} comp orig name n=0 seed total
    shift 2; [ $# -eq 0 ] || shift
    count=$(reads_for x "$count")
    total=$($pairs | wc -l)
    while read -r comp orig <&3; do
        name=$(basename "$comp")
        progress "$name: $count reads, $conns connection(s) ($((n+1))/$total, $(elapsed))"
        start_nbdkit "$name" --filter="$FILTER" file "$comp" "$@"
        seed=${AUTODECOMP_SEED:-$(( (RANDOM << 15) | RANDOM ))}
        tlimit 600 "${random_reads[@]}" --label "$name" --uri "$uri" --original "$orig" \
            --count "$count" --connections "$conns" --seed "$seed" ||
            fail "$name: random reads failed; reproduce with:" \
                 "nbdkit -U - --filter=$FILTER file $comp $* --run" \
                 "'/usr/bin/python3 $srcdir/random-reads.py --uri \"\$uri\" --original $orig --count $count --connections $conns --seed $seed'"
        nbdkit_alive || fail "$name: nbdkit died"
        stop_nbdkit
        n=$((n+1))
    done 3< <($pairs)
    [ "$n" -gt 0 ] || skip "no pairs the filter can serve"
    note "$n pairs ok ($(elapsed))"
}

# damaged_index_verdict LABEL LOG OUT: after reads through a damaged
# persisted index (LOG, the server's log; OUT, the reads' "errors N"),
# fail unless the file was refused at load or some reads failed (the
# reads themselves fail the test on a wrong byte).
damaged_index_verdict ()
{
    local label=$1 log=$2 out=$3
    if grep -q "warning: persisted index: .*refused" "$log"; then
        note "$label: refused at load; $(cat "$out")"
    else
        grep -q "errors [1-9]" "$out" ||
            fail "$label: loaded and every read succeeded"
        note "$label: $(cat "$out"), no wrong byte"
    fi
}
