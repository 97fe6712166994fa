#!/bin/bash
# test-multi-conn.sh: as test-random-reads.sh, but through 4 connections at
# once to one nbdkit (the filter shares its cache across connections, so this
# is where races show up).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
setup_corpus
make_tmpdir
run_random_reads_all 4 "${AUTODECOMP_MULTICONN_READS:-1000}"
