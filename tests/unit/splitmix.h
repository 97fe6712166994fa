/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * splitmix64: the small, seedable generator the unit tests use, so a
 * failing run can be repeated from its seed.
 */
#ifndef AUTODECOMP_TEST_SPLITMIX_H
#define AUTODECOMP_TEST_SPLITMIX_H

#include <stdint.h>

static inline uint64_t
rnd (uint64_t *s)
{
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

#endif /* AUTODECOMP_TEST_SPLITMIX_H */
