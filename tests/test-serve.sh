#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-serve.sh: ./serve, the script a user runs first.
#   - run from another directory with a relative IMAGE path and -p PORT, it
#     builds (nothing to do here), says "serving IMAGE on
#     nbd://localhost:PORT" once nbdkit listens there, and serves the
#     image's bytes; a second ./serve on the same port says the port is in
#     use and exits non-zero; SIGINT (Ctrl-C) stops it and nbdkit;
#   - --help prints the usage and exits 0; an unknown option before IMAGE
#     is an error that prints it too;
#   - a URL on a web server without Range requests (python3 -m http.server)
#     is refused before serving, saying so; a missing one says 404.
# And the filter over the curl plugin against that web server: a burst of
# connections makes the plugin fail (and log why) once or twice, not once
# per connection.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires nbdcopy
requires nbdinfo
requires curl
requires xz
serve=$top_srcdir/serve
[ -x "$serve" ] || fail "$serve is missing"
# ./serve builds in its own checkout, which is this build tree only when
# the build is in the source tree.
[ -f "$top_srcdir/Makefile" ] ||
    skip "the build is not in the source tree, where ./serve builds"
nbdkit curl --dump-plugin >/dev/null 2>&1 ||
    fail "nbdkit curl plugin is not installed (scripts/install-deps.sh)"
make_tmpdir

mkdir -p "$tmp/img" "$tmp/cwd"
{ head -c 1M /dev/urandom; head -c 2M /dev/zero; head -c 12345 /dev/urandom; } \
    > "$tmp/img/t.img"
xz -T1 --block-size=1MiB -k "$tmp/img/t.img"

# ---------------------------------------------------------------- --help
rc=0; "$serve" --help > "$tmp/help.out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "serve --help: exit status $rc"
grep -q '^Usage: ' "$tmp/help.out" || fail "serve --help: no usage text"
grep -q -- '-p 10810' "$tmp/help.out" || fail "serve --help: no example with -p"
grep -q 'https\?://' "$tmp/help.out" || fail "serve --help: does not say a URL works"
rc=0; "$serve" --no-such-option > "$tmp/opt.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "serve --no-such-option: exit status 0"
grep -q "unknown option '--no-such-option'" "$tmp/opt.out" &&
    grep -q '^Usage: ' "$tmp/opt.out" ||
    fail "serve --no-such-option: $(cat "$tmp/opt.out")"
note "--help and an unknown option: ok"

# ---------------------------------------------------------------- a file
port=$(free_port)
progress "serve ../img/t.img.xz -p $port from another directory ($(elapsed))"
# As from a terminal, where Ctrl-C sends SIGINT: a background job of a
# script ignores SIGINT, so restore its default before running serve.
(
    cd "$tmp/cwd"
    exec /usr/bin/python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "$serve" ../img/t.img.xz -p "$port"
) > "$tmp/serve.out" 2>&1 </dev/null &
serve_pid=$!
cleanup_fn stop_pid "$serve_pid"
show_log_on_failure "$tmp/serve.out"
want="serving $tmp/img/t.img.xz on nbd://localhost:$port (Ctrl-C to stop)"
for (( i = 0; i < 3000 * ${AUTODECOMP_TEST_TIMEOUT_SCALE:-1}; i++ )); do
    grep -qF "$want" "$tmp/serve.out" && break
    kill -0 "$serve_pid" 2>/dev/null || fail "serve exited before serving"
    sleep 0.1
done
grep -qF "$want" "$tmp/serve.out" || fail "serve did not say '$want' in 300 s"
grep -q '^serve: building (log: ' "$tmp/serve.out" || fail "serve: no 'building' line"
tlimit 120 nbdcopy "nbd://localhost:$port" - | cmp - "$tmp/img/t.img" ||
    fail "the export differs from the image"
note "serve: $(grep -c . "$tmp/serve.out") lines, the export is the image ($(elapsed))"

# A second one on the same port.
rc=0; tlimit 300 "$serve" "$tmp/img/t.img.xz" -p "$port" > "$tmp/busy.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a second serve on port $port: exit status 0"
grep -q "nbd://localhost:$port: something else is listening there" "$tmp/busy.out" ||
    fail "a second serve on port $port: $(cat "$tmp/busy.out")"
grep -q "serving" "$tmp/busy.out" && fail "a second serve on port $port said it serves"
note "serve on a port in use: status $rc, $(tail -n 1 "$tmp/busy.out")"

# Ctrl-C.
kill -INT "$serve_pid"
rc=0
for (( i = 0; i < 100; i++ )); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$serve_pid" 2>/dev/null && fail "serve still runs 10 s after SIGINT"
wait "$serve_pid" || rc=$?
[ "$rc" -eq 130 ] || fail "serve after SIGINT: exit status $rc, expected 130"
tlimit 30 nbdinfo --size "nbd://localhost:$port" >/dev/null 2>&1 &&
    fail "nbd://localhost:$port still answers after serve was stopped"
note "SIGINT stops serve (status 130) and nbdkit"

# ---------------------------------------------------------------- URLs
hport=$(free_port)
/usr/bin/python3 -m http.server "$hport" --bind 127.0.0.1 --directory "$tmp/img" \
    > "$tmp/http.log" 2>&1 </dev/null &
http_pid=$!
cleanup_fn stop_pid "$http_pid"
show_log_on_failure "$tmp/http.log"
for (( i = 0; i < 300; i++ )); do
    curl -s -o /dev/null "http://127.0.0.1:$hport/" && break
    kill -0 "$http_pid" 2>/dev/null || fail "python3 -m http.server exited"
    sleep 0.1
done
url=http://127.0.0.1:$hport/t.img.xz
port=$(free_port)
progress "serve $url, which ignores Range requests ($(elapsed))"
rc=0; tlimit 300 "$serve" "$url" -p "$port" > "$tmp/norange.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "serve of a URL without Range requests: exit status 0"
grep -q "$url: .*does not support Range requests" "$tmp/norange.out" ||
    fail "serve of a URL without Range requests: $(cat "$tmp/norange.out")"
grep -q "serving" "$tmp/norange.out" && fail "serve of a URL without Range requests said it serves"
note "serve of a URL without Range requests: status $rc"
rc=0; tlimit 300 "$serve" "${url%/*}/no-such.img.xz" -p "$port" > "$tmp/404.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "serve of a missing URL: exit status 0"
grep -q "no-such.img.xz: .*HTTP 404.*the URL is wrong" "$tmp/404.out" ||
    fail "serve of a missing URL: $(cat "$tmp/404.out")"
note "serve of a missing URL: status $rc"

# The filter over the curl plugin against that server: the plugin fails
# at open; connections right after a failure fail at once, without it.
if is_autodecomp; then
    start_nbdkit curl --filter="$FILTER" curl "$url"
    conns=0
    end=$(( SECONDS + 2 ))
    while [ "$SECONDS" -lt "$end" ] || [ "$conns" -lt 5 ]; do
        tlimit 30 nbdinfo --size "$uri" >/dev/null 2>&1 &&
            fail "a connection succeeded without Range requests"
        conns=$(( conns + 1 ))
    done
    causes=$(grep -c "does not support 'range'" "$nbdkit_log") || :
    ours=$(grep -c 'autodecomp: export .*fail at once' "$nbdkit_log") || :
    note "$conns connections: the curl plugin failed $causes time(s)," \
         "the filter said so $ours time(s)"
    [ "$causes" -ge 1 ] && [ "$ours" -ge 1 ] ||
        fail "no error from the curl plugin or the filter"
    [ "$causes" -le 3 ] ||
        fail "$conns connections in 2 s made the curl plugin fail $causes times"
    stop_nbdkit
fi
note "ok ($(elapsed))"
