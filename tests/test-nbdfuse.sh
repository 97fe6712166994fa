#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-nbdfuse.sh: the export as a file through FUSE.  nbdfuse mounts the
# export (read-only) on a file in a temp dir; cmp it with the original.  As
# root, if loop mounts work here, also mount the ext4 inside it read-only and
# check hello.txt says "autodecomp corpus".  Always unmounts.
# Uses family_pairs (one per format family: each costs a whole read).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires nbdfuse
requires fusermount3
[ -c /dev/fuse ] || skip "/dev/fuse is missing"
setup_corpus
make_tmpdir

can_loop_mount=0
if [ "$(id -u)" = 0 ] && command -v mount >/dev/null 2>&1 && command -v losetup >/dev/null 2>&1; then
    can_loop_mount=1
fi

unmount_fuse ()
{
    local dir=$1 i
    mountpoint -q "$dir" 2>/dev/null || grep -q " $dir fuse" /proc/mounts || return 0
    for (( i = 0; i < 50; i++ )); do
        fusermount3 -u "$dir" 2>/dev/null && return 0
        sleep 0.2
    done
    fusermount3 -u -z "$dir" 2>/dev/null || true
}
unmount_loop ()
{
    local dir=$1
    mountpoint -q "$dir" 2>/dev/null || return 0
    umount "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null || true
}

n=0
while read -r comp orig <&3; do
    name=$(basename "$comp")
    start_nbdkit "$name" --filter="$FILTER" file "$comp"
    mnt=$tmp/fuse-$n
    mkdir -p "$mnt"
    cleanup_fn unmount_fuse "$mnt"
    rm -f "$tmp/fuse.pid"
    nbdfuse -r -P "$tmp/fuse.pid" "$mnt/disk" "$uri" </dev/null >"$tmp/nbdfuse-$n.log" 2>&1 &
    fuse_bg=$!
    show_log_on_failure "$tmp/nbdfuse-$n.log"
    for (( i = 0; i < 300; i++ )); do
        [ -s "$tmp/fuse.pid" ] && break
        kill -0 "$fuse_bg" 2>/dev/null || break
        sleep 0.1
    done
    if [ ! -s "$tmp/fuse.pid" ]; then
        wait "$fuse_bg" || true
        if grep -qi 'fuse: device not found\|permission denied\|operation not permitted' "$tmp/nbdfuse-$n.log"; then
            cat "$tmp/nbdfuse-$n.log"
            skip "FUSE mounts do not work here"
        fi
        fail "$name: nbdfuse did not start"
    fi
    [ "$(stat -c %s "$mnt/disk")" = "$(stat -c %s "$orig")" ] ||
        fail "$name: FUSE file is $(stat -c %s "$mnt/disk") bytes, original $(stat -c %s "$orig")"
    tlimit 300 cmp "$mnt/disk" "$orig" || fail "$name: FUSE file differs from $orig"

    if [ "$can_loop_mount" = 1 ] && [ "$orig" = "$CORPUS/disk.img" ]; then
        ext=$tmp/ext4-$n
        mkdir -p "$ext"
        cleanup_fn unmount_loop "$ext"
        if tlimit 60 mount -t ext4 -o ro,loop,noload "$mnt/disk" "$ext" 2>"$tmp/mount.err"; then
            hello=$(cat "$ext/hello.txt")
            [ "$hello" = "autodecomp corpus" ] ||
                fail "$name: hello.txt in the mounted image says '$hello'"
            ls "$ext" > /dev/null
            unmount_loop "$ext"
            note "$name: ext4 mounted through the filter, hello.txt ok"
        else
            note "$name: loop mount not possible here ($(head -1 "$tmp/mount.err")); skipped that part"
            can_loop_mount=0
        fi
    fi
    unmount_fuse "$mnt"
    for (( i = 0; i < 100; i++ )); do kill -0 "$fuse_bg" 2>/dev/null || break; sleep 0.1; done
    wait "$fuse_bg" 2>/dev/null || true
    nbdkit_alive || fail "$name: nbdkit died"
    stop_nbdkit
    n=$((n+1))
    note "$name: nbdfuse ok ($(elapsed))"
done 3< <(family_pairs)
[ "$n" -gt 0 ] || skip "no pairs the filter can serve"
note "$n pairs ok ($(elapsed))"
