#!/bin/bash
# test-io-errors.sh: I/O errors below the filter (fault injection with
# nbdkit's error filter between ours and the file plugin):
#   nbdkit --filter=$FILTER --filter=error file X \
#          error-pread=EIO error-pread-rate=R error-file=TRIGGER
# While TRIGGER exists, R of the reads of the compressed file fail: every
# read through our filter must then either fail or return the original bytes
# (no wrong bytes, for every format: an I/O error is not a decoding puzzle),
# and nbdkit must stay up.  Then TRIGGER is removed and, on the same server
# (same cache, same index), every read must succeed with the original bytes:
# a failure must not be remembered as data or poison the cache/index.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
nbdkit --filter=error null --dump-plugin >/dev/null 2>&1 || fail "nbdkit error filter is missing"
setup_corpus
make_tmpdir

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
        rc=0
        tlimit 300 "${random_reads[@]}" --label "$tag errors on" \
            --uri "$uri" --original "$orig" --allow-errors --max-wrong-bytes 0 \
            --count "$(reads_for "$comp" 150)" --max-len 1MiB --seed "$seed" \
            > "$tmp/reads.out" 2>&1 || rc=$?
        nbdkit_alive || { cat "$tmp/reads.out" >&2; fail "$tag: nbdkit died with I/O errors below it"; }
        [ "$rc" -eq 0 ] || { cat "$tmp/reads.out" >&2; fail "$tag: wrong bytes or no answer with I/O errors below"; }
        note "$(grep -m1 "seed=" "$tmp/reads.out" || head -1 "$tmp/reads.out")"
        rm -f "$trigger"
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
