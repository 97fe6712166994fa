/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: zstd images, the seek table of the seekable format (see zstd.c).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include <zstd.h>

#include "seekable-formats.h"

#include "zstd-int.h"

/* Cheap check of a seek table entry: the frame it points to starts
 * (after skippable frames) with a zstd frame header that agrees.
 */
static int
probe_frame (struct zstd_priv *priv, struct ad_source *src,
             uint64_t coff, uint64_t csize, uint64_t usize,
             struct ad_error *err)
{
  unsigned char buf[FRAME_HEADER_MAX];
  uint64_t pos = coff, end = coff + csize;
  struct frame_header h;
  size_t n;
  unsigned log;

  if (zstd_hop_skippable (src, &pos, end, err) == -1)
    return -1;
  n = end - pos < sizeof buf ? end - pos : sizeof buf;
  if (n < FRAME_HEADER_MIN)
    return ad_error_set (err, EIO, "seek table entry at offset %" PRIu64
                         " holds no zstd frame", coff);
  if (ad_source_pread (src, buf, n, pos, err) == -1)
    return -1;
  if (ad_le32 (buf) != FRAME_MAGIC)
    return ad_error_set (err, EIO, "seek table entry at offset %" PRIu64
                         " does not start with a zstd frame (magic 0x%08"
                         PRIx32 ")", pos, ad_le32 (buf));
  if (n < zstd_frame_header_size (buf[4]))
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " is truncated", pos);
  if (zstd_parse_frame_header (buf, pos, &h, err) == -1)
    return -1;
  if (h.has_fcs && h.fcs != usize)
    return ad_error_set (err, EIO, "frame at offset %" PRIu64 " declares a "
                         "content size of %" PRIu64 " bytes, the seek table "
                         "%" PRIu64, pos, h.fcs, usize);
  return zstd_window_log (&h, priv->max_frame, pos, &log, err);
}

/* Read the skippable frame that holds the seek table's entries
 * (table_size bytes with the footer, at table_start), in large chunks
 * for a huge table, and check its header.  Returns the entries
 * (malloc'd), or NULL with err.
 */
static unsigned char *
read_seek_table (struct ad_source *src, uint32_t nentries,
                 uint64_t entries_size, uint64_t table_start,
                 uint64_t table_size, struct ad_error *err)
{
  unsigned char hdr[AD_SKIPPABLE_HEADER_SIZE];
  unsigned char *table;
  uint64_t done;

  table = malloc (AD_SKIPPABLE_HEADER_SIZE + entries_size);
  if (table == NULL) {
    ad_error_set (err, ENOMEM, "seek table of %" PRIu64 " bytes: %m",
                  entries_size);
    return NULL;
  }
  for (done = 0; done < AD_SKIPPABLE_HEADER_SIZE + entries_size; ) {
    uint64_t n = AD_SKIPPABLE_HEADER_SIZE + entries_size - done;
    if (n > AD_WINDOW_CHUNK)
      n = AD_WINDOW_CHUNK;
    if (ad_source_pread (src, table + done, n, table_start + done,
                         err) == -1)
      goto fail;
    done += n;
  }
  memcpy (hdr, table, sizeof hdr);
  memmove (table, table + AD_SKIPPABLE_HEADER_SIZE, entries_size);
  if (ad_le32 (hdr) != AD_SEEK_TABLE_MAGIC) {
    ad_error_set (err, EIO, "seek table of %" PRIu32 " entries "
                  "should start at offset %" PRIu64 " with magic "
                  "0x%08x, found 0x%08" PRIx32, nentries, table_start,
                  AD_SEEK_TABLE_MAGIC, ad_le32 (hdr));
    goto fail;
  }
  if (ad_le32 (hdr + 4) != table_size) {
    ad_error_set (err, EIO, "seek table frame at offset %" PRIu64
                  " has Frame_Size %" PRIu32 ", the table is %"
                  PRIu64 " bytes", table_start, ad_le32 (hdr + 4),
                  table_size);
    goto fail;
  }
  return table;

 fail:
  free (table);
  return NULL;
}

/* Add up the entries' sizes (*csum compressed, *usum decompressed),
 * which must cover no more than the table_start bytes before the
 * table; *first is the first entry of a frame with content.  Returns 0,
 * or -1 with err.
 */
static int
sum_entries (const unsigned char *table, uint32_t nentries, size_t esize,
             uint64_t table_start, uint64_t *csum, uint64_t *usum,
             uint64_t *first, struct ad_error *err)
{
  uint32_t i;

  *csum = *usum = 0;
  *first = UINT64_MAX;
  for (i = 0; i < nentries; i++) {
    const unsigned char *e = table + (size_t) i * esize;
    uint32_t c = ad_le32 (e), u = ad_le32 (e + 4);

    if (c == 0 && u != 0)
      return ad_error_set (err, EIO, "seek table entry %" PRIu32 " has no "
                           "compressed bytes for %" PRIu32 " decompressed "
                           "bytes", i, u);
    *csum += c;
    *usum += u;
    if (*csum > table_start)
      return ad_error_set (err, EIO, "seek table entries 0-%" PRIu32
                           " describe %" PRIu64 " bytes, more than the %"
                           PRIu64 " bytes before the table", i, *csum,
                           table_start);
    if (u > 0 && *first == UINT64_MAX)
      *first = i;
  }
  if (*usum > INT64_MAX)
    return ad_error_set (err, EIO, "seek table describes %" PRIu64
                         " bytes, too large", *usum);
  return 0;
}

/* Append a frame for every entry with content, the frames starting at
 * lead (checking the first one's header and the empty ones), and keep
 * the checksums of the entries.  Returns 0, or -1 with err.
 */
static int
append_entries (struct ad_index *idx, struct ad_source *src,
                const unsigned char *table, uint32_t nentries, size_t esize,
                bool has_sums, uint64_t lead, uint64_t first,
                struct ad_error *err)
{
  struct zstd_priv *priv = idx->priv;
  uint64_t coff = lead, uoff = 0;
  uint32_t i;
  size_t k = 0;

  if (has_sums) {
    priv->sums = malloc (((size_t) nentries + 1) * sizeof *priv->sums);
    if (priv->sums == NULL)
      return ad_error_set (err, ENOMEM, "malloc: %m");
  }
  for (i = 0; i < nentries; i++) {
    const unsigned char *e = table + (size_t) i * esize;
    uint32_t c = ad_le32 (e), u = ad_le32 (e + 4);
    uint32_t sum = has_sums ? ad_le32 (e + 8) : 0;

    if (u == 0) {
      if (c > 0 &&
          zstd_check_empty_frame (priv, src, coff, c, has_sums, sum, err) == -1)
        return -1;
    }
    else {
      struct ad_frame frame = {
        .uoff = uoff, .usize = u, .coff = coff, .csize = c,
      };

      /* The first frame's header is read cheaply with the file's
       * first bytes; every frame is checked against its entry when it
       * is decoded.
       */
      if (i == first &&
          probe_frame (priv, src, coff, c, u, err) == -1) {
        ad_error_prefix (err, "seek table entry %" PRIu32, i);
        return -1;
      }
      if (ad_index_append_frame (idx, &frame, err) == -1)
        return -1;
      if (has_sums)
        priv->sums[k] = sum;
      k++;
    }
    coff += c;
    uoff += u;
  }
  priv->nsums = has_sums ? k : 0;
  return 0;
}

/* Read and check the seek table, if the file ends with one.  Sets
 * *found if it does (then any error is fatal).
 */
int
zstd_open_seek_table (struct ad_index *idx, struct ad_source *src,
                      bool *found, struct ad_error *err)
{
  unsigned char foot[AD_SEEK_FOOTER_SIZE];
  unsigned char *table;
  uint32_t nentries;
  unsigned char desc;
  size_t esize;
  uint64_t table_size, table_start, entries_size;
  uint64_t csum, usum, lead, pos, first;
  bool has_sums;
  int r = -1;

  *found = false;
  if (src->size < AD_SKIPPABLE_HEADER_SIZE + AD_SEEK_FOOTER_SIZE)
    return 0;
  if (ad_source_pread (src, foot, sizeof foot, src->size - sizeof foot,
                       err) == -1)
    return -1;
  if (ad_le32 (foot + 5) != AD_SEEKABLE_MAGIC)
    return 0;
  *found = true;

  /* Seek_Table_Footer. */
  nentries = ad_le32 (foot);
  desc = foot[4];
  if (desc & AD_SEEK_DESC_RESERVED)
    return ad_error_set (err, EIO, "seek table descriptor 0x%02x at offset %"
                         PRIu64 " has reserved bits set", desc,
                         src->size - 5);
  has_sums = desc & AD_SEEK_DESC_CHECKSUM;
  esize = has_sums ? AD_SEEK_ENTRY_SUM_SIZE : AD_SEEK_ENTRY_SIZE;
  entries_size = (uint64_t) nentries * esize;
  table_size = entries_size + AD_SEEK_FOOTER_SIZE;
  if (table_size > src->size - AD_SKIPPABLE_HEADER_SIZE)
    return ad_error_set (err, EIO, "seek table of %" PRIu32 " entries (%"
                         PRIu64 " bytes) is larger than the %" PRIu64
                         "-byte file", nentries, table_size, src->size);
  table_start = src->size - AD_SKIPPABLE_HEADER_SIZE - table_size;

  table = read_seek_table (src, nentries, entries_size, table_start,
                           table_size, err);
  if (table == NULL)
    return -1;

  /* The entries must cover exactly the frames before the table. */
  if (sum_entries (table, nentries, esize, table_start, &csum, &usum,
                   &first, err) == -1)
    goto out;

  /* Anything before the described frames must be skippable frames. */
  lead = table_start - csum;
  pos = 0;
  if (zstd_hop_skippable (src, &pos, lead, err) == -1)
    goto out;
  if (pos != lead) {
    ad_error_set (err, EIO, "seek table describes %" PRIu64 " bytes of "
                  "frames, but %" PRIu64 " bytes precede it (not only "
                  "skippable frames at offset %" PRIu64 ")", csum,
                  table_start, pos);
    goto out;
  }

  idx->size = usum;
  if (append_entries (idx, src, table, nentries, esize, has_sums, lead,
                      first, err) == 0)
    r = 0;

 out:
  free (table);
  return r;
}
