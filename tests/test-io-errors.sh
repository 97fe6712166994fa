#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-io-errors.sh: I/O errors below the filter (fault injection with
# nbdkit's error filter between ours and the file plugin):
#   nbdkit --filter=$FILTER --filter=error file X \
#          error-pread=EIO error-pread-rate=R error-file=TRIGGER
# While TRIGGER exists, R of the reads of the compressed file fail: every
# read through our filter must then either fail or return the original bytes
# (no wrong bytes, for every format: an I/O error is not a decoding puzzle),
# and nbdkit must stay up.  Then TRIGGER is removed and, on the same server
# (same cache, same index), every read must succeed with the original bytes:
# a failure must not be remembered as data or poison the cache/index
# (only for a moment: see the end).
#
# Then a failure below while the image is opened (every read failing): a
# burst of connections makes the plugin fail and the filter log the cause
# once or twice, not once per connection (the filter fails connections at
# once for a second after such a failure, then for 2 s, ...), and once the
# reads below work again, the first connection after that delay opens the
# image and reads it right.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
requires nbdinfo
requires nbdcopy
nbdkit --filter=error null --dump-plugin >/dev/null 2>&1 || fail "nbdkit error filter is missing"
setup_corpus
make_tmpdir

# wait_retry_delay: after the filter failed to open an export because the
# plugin below failed, sleep as long as it said it would fail connections
# at once ("in the next N s").
wait_retry_delay ()
{
    local d
    d=$(grep -o 'in the next [0-9]* s fail at once' "$nbdkit_log" | tail -n 1 |
        grep -o '[0-9]\+') || return 0
    sleep "$d"
}

seed=${AUTODECOMP_SEED:-$(( (RANDOM << 15) | RANDOM ))}
note "seed $seed"
n=0
total=$(( $(family_pairs | grep -vc '/disk\.img ') * 2 ))
while read -r comp orig <&3; do
    name=$(basename "$comp")
    for rate in 2% 30%; do
        tag="$name/rate=$rate"
        progress "$tag ($((n+1))/$total, $(elapsed))"
        trigger=$tmp/trigger
        touch "$trigger"
        start_nbdkit "io-$name" --filter="$FILTER" --filter=error file "$comp" \
            error-pread=EIO error-pread-rate="$rate" error-file="$trigger"
        # When the image could not be opened (refused=1), connections
        # fail at once for a moment: try again after it, twice at most,
        # so that the reads with errors below are made.
        for try in 1 2 3; do
            [ "$try" -eq 1 ] || wait_retry_delay
            rc=0
            tlimit 300 "${random_reads[@]}" --label "$tag errors on" \
                --uri "$uri" --original "$orig" --allow-errors --max-wrong-bytes 0 \
                --count "$(reads_for "$comp" 150)" --max-len 1MiB --seed "$seed" \
                > "$tmp/reads.out" 2>&1 || rc=$?
            nbdkit_alive || { cat "$tmp/reads.out" >&2; fail "$tag: nbdkit died with I/O errors below it"; }
            [ "$rc" -eq 0 ] || { cat "$tmp/reads.out" >&2; fail "$tag: wrong bytes or no answer with I/O errors below"; }
            note "$(grep -m1 "seed=" "$tmp/reads.out" || head -1 "$tmp/reads.out")"
            grep -q 'refused=1' "$tmp/reads.out" || break
        done
        rm -f "$trigger"
        if grep -q 'refused=1' "$tmp/reads.out"; then wait_retry_delay; fi
        tlimit 300 "${random_reads[@]}" --label "$tag errors off" \
            --uri "$uri" --original "$orig" \
            --count "$(reads_for "$comp" 300)" --seed "$seed" \
            > "$tmp/reads.out" 2>&1 || {
                cat "$tmp/reads.out" >&2
                fail "$tag: after the I/O errors stopped, reads still fail or are wrong;" \
                     "reproduce: touch /tmp/trig; nbdkit -U - --filter=$FILTER --filter=error file $comp" \
                     "error-pread=EIO error-pread-rate=$rate error-file=/tmp/trig --run" \
                     "'/usr/bin/python3 $srcdir/random-reads.py --uri \"\$uri\" --original $orig --allow-errors --max-wrong-bytes 0 --count 150 --max-len 1MiB --seed $seed;" \
                     "rm /tmp/trig; /usr/bin/python3 $srcdir/random-reads.py --uri \"\$uri\" --original $orig --count 300 --seed $seed'"
            }
        note "$(grep -m1 "seed=" "$tmp/reads.out" || head -1 "$tmp/reads.out")"
        stop_nbdkit
        n=$((n+1))
    done
done 3< <(family_pairs | grep -v '/disk\.img ')
[ "$n" -gt 0 ] || skip "no pairs the filter can serve"
note "$n runs ok ($(elapsed))"

# A failure below at open: logged once or twice for a burst, not per
# connection; served once it stops.
if is_autodecomp; then
    comp=$CORPUS/disk.img.xz
    touch "$trigger"
    progress "open failing below: a burst of connections ($(elapsed))"
    start_nbdkit open-fails --filter="$FILTER" --filter=error file "$comp" \
        error-pread=EIO error-pread-rate=100% error-file="$trigger"
    conns=0
    end=$(( SECONDS + 2 ))
    while [ "$SECONDS" -lt "$end" ] || [ "$conns" -lt 5 ]; do
        if tlimit 30 nbdinfo --size "$uri" >/dev/null 2>&1; then
            fail "a connection succeeded while every read below fails"
        fi
        conns=$(( conns + 1 ))
    done
    nbdkit_alive || fail "nbdkit died when the image could not be read"
    causes=$(grep -c 'injecting EIO' "$nbdkit_log") || :
    ours=$(grep -c 'autodecomp: export .*fail at once' "$nbdkit_log") || :
    note "$conns connections failed, the plugin failed $causes time(s)," \
         "the filter said why $ours time(s)"
    [ "$ours" -ge 1 ] || fail "the filter did not say why the export could not be opened"
    [ "$causes" -le 3 ] && [ "$ours" -le 3 ] ||
        fail "$conns connections in 2 s asked the failing plugin $causes times" \
             "(logged $ours times): each should not ask again"
    rm -f "$trigger"
    wait_retry_delay
    tlimit 300 nbdcopy "$uri" - | cmp - "$CORPUS/disk.img" ||
        fail "after the reads below work again, the export is not served right"
    stop_nbdkit
fi
note "ok ($(elapsed))"
