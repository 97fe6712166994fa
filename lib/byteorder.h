/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: little and big endian integers in byte strings, for the
 * formats that read them (through format-int.h) and the command line
 * tool that writes them.
 */
#ifndef AUTODECOMP_BYTEORDER_H
#define AUTODECOMP_BYTEORDER_H

#include <stdint.h>

static inline uint32_t
ad_le32 (const unsigned char *p)
{
  return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t) p[3] << 24);
}

static inline uint64_t
ad_le64 (const unsigned char *p)
{
  return ad_le32 (p) | ((uint64_t) ad_le32 (p + 4) << 32);
}

static inline void
ad_put_le32 (unsigned char *p, uint32_t v)
{
  p[0] = v;
  p[1] = v >> 8;
  p[2] = v >> 16;
  p[3] = v >> 24;
}

static inline uint32_t
ad_be32 (const unsigned char *p)
{
  return ((uint32_t) p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
}

#endif /* AUTODECOMP_BYTEORDER_H */
