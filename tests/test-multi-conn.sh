#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-multi-conn.sh: as test-random-reads.sh, but through 4 connections at
# once to one nbdkit (the filter shares its cache across connections, so this
# is where races show up).  Then again, for one image per format family,
# with a cache of a few frames, three decode threads and
# autodecomp-progressive=true, so that reads wait on frames still decoding,
# read-ahead and eviction race with readers.
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
setup_corpus
make_tmpdir
run_random_reads_all 4 "${AUTODECOMP_MULTICONN_READS:-1000}"
if is_autodecomp; then
    run_random_reads_all 4 "${AUTODECOMP_MULTICONN_READS:-1000}" family_pairs \
        autodecomp-cache-size=8M autodecomp-threads=3 \
        autodecomp-progressive=true
fi
