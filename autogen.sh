#!/bin/sh -
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Generate ./configure and run it with the arguments given.
set -e
test -n "$srcdir" || srcdir=`dirname "$0"`
test -n "$srcdir" || srcdir=.
(cd "$srcdir" && mkdir -p m4 && autoreconf -i)
if test -z "$NOCONFIGURE"; then
  exec "$srcdir"/configure "$@"
fi
