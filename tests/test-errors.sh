#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-errors.sh: damaged images.  For one file of each format, make
#   - trunc-half: the first half of the compressed file,
#   - trunc-tail: all but its last 7 bytes (trailer/index/seek table cut),
#   - flip-1/3, flip-1/2, flip-2/3: one byte XOR 0x55 at that fraction,
# and serve each with --filter=$FILTER.  nbdkit must not die (it may refuse
# to start, with an error, or refuse the export); every read either returns
# the original bytes or fails with an error, and after a failed read the
# server still answers other reads (random-reads.py --allow-errors: a
# sequential sweep of the export in 1 MiB reads, then random reads).  Wrong
# bytes returned are counted, and must be 0 for formats whose every decoded
# unit is checksummed (has_check in functions.sh: xz, BGZF, bzip2, zstd with
# 1 MiB frames, lzip members); for the others (one gzip member, one zstd
# frame, one xz block or lzip member, no checksum) they are only reported.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
setup_corpus
make_tmpdir

error_pairs ()
{
    test_pairs | grep -E '/(disk\.img\.(xz|zst|gz|bgz|bz2|lz)|disk-1block\.img\.xz|disk-1member\.img\.lz|disk-frames\.img\.zst|disk-seekable(-nosum)?\.img\.zst|disk-multimember\.img\.gz|disk-cat\.img\.bz2) '
}

# damage IN OUT KIND
damage ()
{
    local in=$1 out=$2 kind=$3 size pos
    size=$(stat -c %s "$in")
    case "$kind" in
        trunc-half) head -c $(( size / 2 )) "$in" > "$out" ;;
        trunc-tail) head -c $(( size - 7 )) "$in" > "$out" ;;
        flip-*)
            case "$kind" in
                flip-1/3) pos=$(( size / 3 )) ;;
                flip-1/2) pos=$(( size / 2 )) ;;
                flip-2/3) pos=$(( size * 2 / 3 )) ;;
            esac
            cp "$in" "$out"
            /usr/bin/python3 - "$out" "$pos" <<'PYEOF'
import sys
p, pos = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(pos); b = f.read(1)[0]
    f.seek(pos); f.write(bytes([b ^ 0x55]))
PYEOF
            ;;
    esac
}

seed=${AUTODECOMP_SEED:-$(( (RANDOM << 15) | RANDOM ))}
note "seed $seed"
n=0 refused=0 failures=0
while read -r comp orig <&3; do
    name=$(basename "$comp")
    for kind in trunc-half trunc-tail flip-1/3 flip-1/2 flip-2/3; do
        tag="$name/$kind"
        bad=$tmp/bad-${kind//\//_}-$name
        damage "$comp" "$bad" "$kind"
        if ! nbdkit_may_fail=1 start_nbdkit "bad" --filter="$FILTER" file "$bad"; then
            # refusing to start is allowed; crashing is not
            if [ "$nbdkit_early_exit" -gt 128 ]; then
                cat "$nbdkit_log" >&2
                fail "$tag: nbdkit died at startup (status $nbdkit_early_exit)"
            fi
            note "$tag: nbdkit refused to start: $(grep -m1 -i error "$nbdkit_log" || true)"
            refused=$((refused+1)); n=$((n+1)); rm -f "$bad"
            continue
        fi
        max_wrong=()
        if has_check "$comp"; then max_wrong=(--max-wrong-bytes 0); fi
        # In an image that is one big unit, every read past the damage
        # decodes again from the start up to it: fewer, larger reads there
        # (and in plzip's 16 MiB members, each read of the damaged one
        # decodes it whole again: 65 s for the 1 MiB sweep here).
        case "$name" in
            disk-1block.img.xz|disk-1member.img.lz|disk.img.zst|disk.img.gz|\
            disk.img.lz)
                sweep=4MiB count=30 ;;
            *) sweep=1MiB count=100 ;;
        esac
        rc=0
        tlimit 300 /usr/bin/python3 "$srcdir/random-reads.py" --label "$tag" \
            --uri "$uri" --original "$orig" --allow-errors "${max_wrong[@]}" \
            --sweep "$sweep" --count "$(reads_for "$comp" "$count")" --max-len 1MiB \
            --seed "$seed" > "$tmp/reads.out" 2>&1 || rc=$?
        if ! nbdkit_alive; then
            cat "$tmp/reads.out" >&2
            wait "$nbdkit_pid" 2>/dev/null && st=0 || st=$?
            fail "$tag: nbdkit died (status $st) serving a damaged image; reproduce:" \
                 "cp $comp /tmp/bad; (flip/truncate as '$kind', see damage() in $0);" \
                 "nbdkit -U - --filter=$FILTER file /tmp/bad --run '/usr/bin/python3 $srcdir/random-reads.py --uri \"\$uri\" --original $orig --allow-errors --sweep $sweep --count $count --max-len 1MiB --seed $seed ${max_wrong[*]}'"
        fi
        if [ "$rc" -ne 0 ]; then
            cat "$tmp/reads.out" >&2
            echo "$tag: nbdkit log:" >&2; tail -n 30 "$nbdkit_log" >&2
            failures=$((failures+1))
            echo "$test_name: FAIL: $tag (seed $seed); damaged file kept as $bad.kept" >&2
            cp "$bad" "$bad.kept" 2>/dev/null || true
        fi
        grep -q 'refused=1' "$tmp/reads.out" && refused=$((refused+1))
        note "$(tail -n 3 "$tmp/reads.out" | tr '\n' ' ')"
        stop_nbdkit
        rm -f "$bad"
        n=$((n+1))
    done
done 3< <(error_pairs)
[ "$n" -gt 0 ] || skip "no pairs the filter can serve"
[ "$failures" -eq 0 ] || fail "$failures of $n damaged images served wrong bytes or stopped answering"
note "$n damaged images ok, $refused refused ($(elapsed))"
