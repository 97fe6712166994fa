#!/bin/bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# test-random-reads.sh: thousands of random reads per (compressed, original)
# pair through one connection, each compared with the original
# (random-reads.py: lengths 1 byte .. 4 MiB, biased to cross 1 MiB / 4 MiB /
# BGZF frame edges, to end at the end of the image, and 1-byte reads at edges).
#
# AUTODECOMP_RANDOM_READS (default 1000) sets the reads per pair;
# AUTODECOMP_SEED fixes the seed (otherwise random, printed in the log).
. "${srcdir:-$(dirname "$0")}/functions.sh"
requires nbdkit
requires_python_nbd
setup_corpus
make_tmpdir
run_random_reads_all 1 "${AUTODECOMP_RANDOM_READS:-1000}"
