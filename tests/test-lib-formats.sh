#!/usr/bin/env bash
# Copyright (C) 2026 The nbdkit-autodecomp authors
# SPDX-License-Identifier: BSD-3-Clause
#
# Library-level check of every corpus pair, without nbdkit: size, a
# sequential read and random reads through lib/ (ad-verify), every byte
# compared with the original.
corpus_only=1
. "${srcdir:-$(dirname "$0")}/functions.sh"

: "${AD_VERIFY:=$top_builddir/tests/unit/ad-verify}"
[ -x "$AD_VERIFY" ] || fail "ad-verify not built: $AD_VERIFY"
setup_corpus

n=0
while read -r compressed original; do
    "$AD_VERIFY" -n "$(reads_for "$compressed" 1500)" -s $((RANDOM + 1)) \
        "$compressed" "$original" || fail "$compressed"
    n=$((n + 1))
done < <(corpus_pairs)
note "$n pairs verified"
