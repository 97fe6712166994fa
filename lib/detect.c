/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: detect the format from magic bytes.
 *
 * Only the bytes decide, never a file name.  A zstd image may begin
 * with skippable frames (magic 0x184D2A50..0x184D2A5F followed by a
 * 32-bit length); we hop over them, a bounded number of times, to the
 * first real frame.  bzip2 is accepted only when "BZh1".."BZh9" is
 * followed by a block magic or an end-of-stream magic, so a text file
 * that happens to start with "BZh" stays raw.  lzip is "LZIP" followed
 * by version 1 (version 0, from lzip 1.3 and older, is not served).
 */

#include <config.h>

#include <string.h>
#include <strings.h>
#include <errno.h>

#include "format-int.h"

#define MAX_SKIPPABLE_HOPS 64

static const unsigned char gzip_magic[] = { 0x1f, 0x8b, 0x08 };
static const unsigned char xz_magic[] = { 0xfd, '7', 'z', 'X', 'Z', 0x00 };
static const unsigned char lzip_magic[] = { 'L', 'Z', 'I', 'P', 1 };
static const unsigned char bzip2_block_magic[] =
  { 0x31, 0x41, 0x59, 0x26, 0x53, 0x59 };
static const unsigned char bzip2_eos_magic[] =
  { 0x17, 0x72, 0x45, 0x38, 0x50, 0x90 };
#define ZSTD_MAGIC 0xFD2FB528U
#define ZSTD_SKIPPABLE_MASK 0xFFFFFFF0U
#define ZSTD_SKIPPABLE_MAGIC 0x184D2A50U

enum ad_format
ad_detect (struct ad_source *src, struct ad_error *err)
{
  unsigned char buf[16];
  size_t n = src->size < sizeof buf ? src->size : sizeof buf;
  uint64_t offset = 0;
  int hops;

  memset (buf, 0, sizeof buf);
  if (ad_source_pread (src, buf, n, 0, err) == -1)
    return AD_FORMAT_UNKNOWN;

  if (n >= sizeof gzip_magic && memcmp (buf, gzip_magic, 3) == 0)
    return AD_FORMAT_GZIP;
  if (n >= sizeof xz_magic && memcmp (buf, xz_magic, 6) == 0)
    return AD_FORMAT_XZ;
  if (n >= 10 && buf[0] == 'B' && buf[1] == 'Z' && buf[2] == 'h' &&
      buf[3] >= '1' && buf[3] <= '9' &&
      (memcmp (buf + 4, bzip2_block_magic, 6) == 0 ||
       memcmp (buf + 4, bzip2_eos_magic, 6) == 0))
    return AD_FORMAT_BZIP2;
  if (n >= sizeof lzip_magic && memcmp (buf, lzip_magic, 5) == 0)
    return AD_FORMAT_LZIP;

  /* zstd, possibly behind skippable frames. */
  for (hops = 0; hops < MAX_SKIPPABLE_HOPS; hops++) {
    uint32_t magic;

    if (src->size - offset < 8)
      break;
    if (offset > 0 && ad_source_pread (src, buf, 8, offset, err) == -1)
      return AD_FORMAT_UNKNOWN;
    magic = ad_le32 (buf);
    if (magic == ZSTD_MAGIC)
      return AD_FORMAT_ZSTD;
    if ((magic & ZSTD_SKIPPABLE_MASK) != ZSTD_SKIPPABLE_MAGIC)
      break;
    offset += 8 + (uint64_t) ad_le32 (buf + 4);
    if (offset >= src->size)
      break;
    /* Bytes after the first 16 are read one skippable frame at a time. */
    memset (buf, 0, sizeof buf);
  }
  return AD_FORMAT_RAW;
}

const char *
ad_format_name (enum ad_format format)
{
  switch (format) {
  case AD_FORMAT_RAW: return "raw";
  case AD_FORMAT_GZIP: return "gzip";
  case AD_FORMAT_XZ: return "xz";
  case AD_FORMAT_BZIP2: return "bzip2";
  case AD_FORMAT_ZSTD: return "zstd";
  case AD_FORMAT_LZIP: return "lzip";
  default: return "unknown";
  }
}

enum ad_format
ad_format_from_name (const char *name)
{
  static const enum ad_format all[] = {
    AD_FORMAT_RAW, AD_FORMAT_GZIP, AD_FORMAT_XZ, AD_FORMAT_BZIP2,
    AD_FORMAT_ZSTD, AD_FORMAT_LZIP,
  };
  size_t i;

  for (i = 0; i < sizeof all / sizeof all[0]; i++)
    if (strcasecmp (name, ad_format_name (all[i])) == 0)
      return all[i];
  return AD_FORMAT_UNKNOWN;
}
