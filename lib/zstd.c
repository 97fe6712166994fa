/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: zstd images.
 *
 * A zstd file (RFC 8878) is a sequence of frames.  A Zstandard frame
 * is
 *
 *   Magic_Number (4 bytes, 0xFD2FB528), Frame_Header, Data_Block...,
 *   [Content_Checksum (4 bytes)]
 *
 * where Frame_Header is Frame_Header_Descriptor (1 byte: bits 7-6
 * Frame_Content_Size_flag, bit 5 Single_Segment_flag, bit 4 unused,
 * bit 3 reserved, bit 2 Content_Checksum_flag, bits 1-0
 * Dictionary_ID_flag), [Window_Descriptor] (1 byte, absent for single
 * segment frames), [Dictionary_ID] (0, 1, 2 or 4 bytes) and
 * [Frame_Content_Size] (0, 1, 2, 4 or 8 bytes; the 2-byte form is
 * offset by 256).  Each block starts with a 3-byte little-endian
 * Block_Header: bit 0 Last_Block, bits 1-2 Block_Type (0 Raw, 1 RLE,
 * 2 Compressed, 3 Reserved), bits 3-23 Block_Size.  Block_Size bytes
 * of content follow, except for an RLE block, whose Block_Size is the
 * regenerated size and whose content is 1 byte.  Content_Checksum is
 * the low 32 bits of XXH64 (seed 0) of the frame's decoded content.
 * A skippable frame is Magic_Number (0x184D2A50 to 0x184D2A5F),
 * Frame_Size (4 bytes) and Frame_Size bytes of user data; it may
 * appear anywhere between frames.
 *
 * Each zstd frame decodes on its own, so one index frame is one zstd
 * frame.  We learn where the frames are in one of two ways:
 *
 * 1. The seekable format (facebook/zstd contrib/seekable_format): the
 * file ends with a skippable frame of magic 0x184D2A5E holding the seek
 * table, Seek_Table_Entries then Seek_Table_Footer.  Each entry is
 * Compressed_Size (u32), Decompressed_Size (u32) and, if the
 * Checksum_Flag is set, Checksum (u32, the low 32 bits of XXH64 of the
 * frame's decoded content).  The 9-byte footer is Number_Of_Frames
 * (u32), Seek_Table_Descriptor (u8: bit 7 Checksum_Flag, bits 6-2
 * reserved and zero, bits 1-0 unused) and Seekable_Magic_Number (u32,
 * 0x8F92EAB1).  The entries must add up exactly to the bytes before the
 * seek table (after any leading skippable frames).  Empty entries are
 * left out of the index (a non-empty frame claiming to be empty is
 * decoded at open to make sure).  The checksums are kept in idx->priv,
 * indexed by frame number, and checked on every decode.
 *
 * 2. Otherwise we walk the file: frame headers and block headers, read
 * in large sequential chunks, tell where each frame ends.  A frame
 * whose header has no Frame_Content_Size (made by a streaming writer)
 * must be decoded to learn its size: the calling thread keeps reading
 * and hands such frames' bytes to worker threads, which decode them
 * from memory, count and discard the output.
 *
 * The decoder streams one frame with ZSTD_decompressStream straight
 * into the caller's buffer, skipping skippable frames inside the
 * frame's range.  It checks the header against the index (the content
 * size, a bounded window), lets libzstd verify the frame's content
 * checksum, checks the seek table's checksum, and returns 0 only after
 * the frame ended exactly at the end of its range.
 *
 * This file holds the frame header parser, the one declared frame (see
 * open_declared) and the persisted index; the seek table (1) is read
 * in zstd-seek.c, the walk (2) is zstd-walk.c, the decoder is
 * zstd-decode.c, and zstd-int.h has what they share.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <unistd.h>
#include <pthread.h>

#include <zstd.h>
#include <xxhash.h>

#include "persist.h"
#include "seekable-formats.h"
#include "zstd-int.h"

#define MAX_SKIPPABLE_HOPS 1024            /* Probing without a buffer. */

/* Size of a frame header from its descriptor (the byte after the
 * magic).
 */
unsigned
zstd_frame_header_size (unsigned char fhd)
{
  static const unsigned did_size[4] = { 0, 1, 2, 4 };
  static const unsigned fcs_size[4] = { 0, 2, 4, 8 };
  unsigned fcs_flag = fhd >> 6;
  bool single = fhd & 0x20;

  return FRAME_HEADER_MIN + !single + did_size[fhd & 3] +
    (fcs_flag == 0 && single ? 1 : fcs_size[fcs_flag]);
}

/* Parse the frame header in p, which holds at least FRAME_HEADER_MIN
 * bytes and then zstd_frame_header_size (p[4]) bytes.  offset is where it
 * is in the file, for messages.
 */
int
zstd_parse_frame_header (const unsigned char *p, uint64_t offset,
                         struct frame_header *h, struct ad_error *err)
{
  unsigned char fhd = p[4];
  unsigned fcs_flag = fhd >> 6;
  unsigned did_flag = fhd & 3;
  const unsigned char *q = p + FRAME_HEADER_MIN;

  memset (h, 0, sizeof *h);
  if (ad_le32 (p) != FRAME_MAGIC)
    return ad_error_set (err, EIO, "bad frame magic 0x%08" PRIx32 " at "
                         "offset %" PRIu64, ad_le32 (p), offset);
  if (fhd & 0x08)
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " has the reserved bit set (descriptor 0x%02x)",
                         offset, fhd);
  h->size = zstd_frame_header_size (fhd);
  h->single_segment = fhd & 0x20;
  h->checksum = fhd & 0x04;
  if (!h->single_segment) {
    unsigned exponent = *q >> 3, mantissa = *q & 7;
    uint64_t base = (uint64_t) 1 << (10 + exponent);

    h->window_size = base + base / 8 * mantissa;
    q++;
  }
  switch (did_flag) {
  case 0:
    break;
  case 1:
    h->dict_id = q[0];
    q += 1;
    break;
  case 2:
    h->dict_id = q[0] | (q[1] << 8);
    q += 2;
    break;
  case 3:
    h->dict_id = ad_le32 (q);
    q += 4;
    break;
  }
  h->has_fcs = fcs_flag != 0 || h->single_segment;
  switch (fcs_flag) {
  case 0:
    if (h->single_segment)
      h->fcs = q[0];
    break;
  case 1:
    h->fcs = (q[0] | (q[1] << 8)) + 256;
    break;
  case 2:
    h->fcs = ad_le32 (q);
    break;
  case 3:
    h->fcs = ad_le64 (q);
    break;
  }
  if (h->single_segment)
    h->window_size = h->fcs;
  if (h->dict_id != 0)
    return ad_error_set (err, EIO, "frame at offset %" PRIu64 " needs "
                         "dictionary %" PRIu32 ", which we do not have",
                         offset, h->dict_id);
  return 0;
}

/* The largest window we accept, as a power of 2 (for
 * ZSTD_d_windowLogMax): the content size rounded up (at least 1 KiB),
 * or max_frame when the content size is unknown, and never more than
 * 2^31.  Fails if the header's window is larger.
 */
int
zstd_window_log (const struct frame_header *h, uint64_t max_frame,
                 uint64_t offset, unsigned *log, struct ad_error *err)
{
  uint64_t base = h->has_fcs ? h->fcs : max_frame;
  unsigned l = 10;

  while (l < 31 && ((uint64_t) 1 << l) < base)
    l++;
  if (h->window_size > (uint64_t) 1 << l)
    return ad_error_set (err, EIO, "frame at offset %" PRIu64 " asks for a "
                         "%" PRIu64 "-byte window, more than the %" PRIu64
                         " bytes allowed for %s", offset, h->window_size,
                         (uint64_t) 1 << l,
                         h->has_fcs ? "its content size" :
                         "autodecomp-max-frame");
  *log = l;
  return 0;
}

/* Hop over skippable frames from offset *pos, with small reads, up to
 * end.  Leaves *pos at the first other frame, or at end.
 */
int
zstd_hop_skippable (struct ad_source *src, uint64_t *pos, uint64_t end,
                    struct ad_error *err)
{
  unsigned char buf[AD_SKIPPABLE_HEADER_SIZE];
  int hops;

  for (hops = 0; hops < MAX_SKIPPABLE_HOPS; hops++) {
    uint64_t size;

    if (end - *pos < AD_SKIPPABLE_HEADER_SIZE)
      return 0;
    if (ad_source_pread (src, buf, sizeof buf, *pos, err) == -1)
      return -1;
    if (!is_skippable (ad_le32 (buf)))
      return 0;
    size = ad_le32 (buf + 4);
    if (size > end - *pos - AD_SKIPPABLE_HEADER_SIZE)
      return ad_error_set (err, EIO, "skippable frame at offset %" PRIu64
                           " (%" PRIu64 " bytes) extends past offset %"
                           PRIu64, *pos, size, end);
    *pos += AD_SKIPPABLE_HEADER_SIZE + size;
  }
  return ad_error_set (err, EIO, "more than %d skippable frames in a row "
                       "before offset %" PRIu64, MAX_SKIPPABLE_HOPS, end);
}

/* Is the file one frame that declares its content size (what `zstd`
 * writes from a file)?  Then that is the image's size, taken without
 * reading the rest of the file, after cheap checks that catch the
 * common many-frame shapes: the frame must have a Frame_Content_Size,
 * the file (after leading skippable frames) must be no larger than the
 * most the frame could compress to (ZSTD_COMPRESSBOUND), and the frame
 * must not end within the first WALK_CHUNK bytes, whose block headers
 * are walked.  The frame's range is then the rest of the file: the
 * decoder checks that it decodes to exactly the declared size and that
 * nothing but skippable frames follows it, before the last bytes of
 * the image are served (see ad_spill_read, and
 * ad_index_decode_frame).  Returns 1 if taken, 0 to walk the file.
 */
static int
open_declared (struct ad_index *idx, struct ad_source *src,
               struct ad_error *err)
{
  struct zstd_priv *priv = idx->priv;
  uint64_t pos = 0, rest, p;
  struct frame_header h;
  struct ad_error scratch;
  unsigned char *buf;
  size_t n;
  int r = 0;

  if (idx->opts.size_at_connect)
    return 0;
  if (zstd_hop_skippable (src, &pos, src->size, err) == -1)
    return -1;
  rest = src->size - pos;
  if (rest <= WALK_CHUNK)
    return 0;                   /* Small: the walk costs no more. */
  n = WALK_CHUNK;
  buf = malloc (n);
  if (buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (ad_source_pread (src, buf, n, pos, err) == -1) {
    r = -1;
    goto out;
  }
  /* Anything odd is left to the walk, which names it. */
  if (ad_le32 (buf) != FRAME_MAGIC ||
      zstd_parse_frame_header (buf, pos, &h, &scratch) == -1 ||
      !h.has_fcs || h.fcs == 0 || h.fcs > INT64_MAX / 2 ||
      rest > ZSTD_COMPRESSBOUND (h.fcs))
    goto out;
  for (p = h.size; p + BLOCK_HEADER_SIZE <= n; ) {
    uint32_t bh = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16);
    uint32_t type = (bh >> 1) & 3, bsize = bh >> 3;

    /* An empty block (here, not the last) is what zeroed bytes read
     * as: see walk_frame.
     */
    if (type == 3 || bsize > BLOCK_SIZE_MAX || (bh & 1) || bsize == 0)
      goto out;                 /* Bad, or the frame ends early. */
    p += BLOCK_HEADER_SIZE + (type == 1 ? 1 : bsize);
  }

  {
    struct ad_frame frame = {
      .uoff = 0, .usize = h.fcs, .coff = pos, .csize = rest,
    };
    idx->size = h.fcs;
    if (ad_index_append_frame (idx, &frame, err) == -1) {
      r = -1;
      goto out;
    }
  }
  priv->declared = true;
  r = 1;
 out:
  free (buf);
  return r;
}

static void
zstd_close (struct ad_index *idx)
{
  struct zstd_priv *priv = idx->priv;
  size_t i;

  if (priv == NULL)
    return;
  for (i = 0; i < priv->npool; i++)
    ZSTD_freeDCtx (priv->pool[i]);
  pthread_mutex_destroy (&priv->lock);
  free (priv->sums);
  free (priv->chash);
  free (priv->chashed);
  free (priv);
  idx->priv = NULL;
}

/* The persisted index (see persist.h) keeps the frames of a walk, and
 * for each frame without a Content_Checksum the XXH64 of its
 * compressed bytes: a count, then (frame number, hash) pairs.
 */
static int
hash_range (struct ad_source *src, uint64_t coff, uint64_t csize,
            uint64_t *hash)
{
  XXH64_state_t *st = XXH64_createState ();
  struct ad_window w;
  struct ad_error e;
  uint64_t pos = coff;
  int r = -1;

  if (st == NULL)
    return -1;
  ad_window_init (&w, src, coff, coff + csize);
  XXH64_reset (st, 0);
  while (pos < coff + csize) {
    size_t n;
    const unsigned char *p = ad_window_need (&w, pos, 1, &n, &e);

    if (p == NULL)
      goto out;
    XXH64_update (st, p, n);
    pos += n;
  }
  *hash = XXH64_digest (st);
  r = 0;
 out:
  ad_window_free (&w);
  XXH64_freeState (st);
  return r;
}

static int
zstd_save (struct ad_index *idx, struct ad_source *src, struct ad_buf *out,
           const char **why)
{
  struct zstd_priv *priv = idx->priv;
  uint64_t n = 0, hash;
  size_t i;

  if (!priv->walked) {
    *why = priv->declared ? "the size is the one the frame header "
      "declares, proven only when decoding reaches the end"
      : "the seek table is an index already";
    return -1;
  }
  if (!ad_frames_tile (idx, src->size, 0, 0)) {
    *why = "its frames do not tile the file";
    return -1;
  }
  for (i = 0; i < idx->nframes; i++)
    n += !(idx->frames[i].aux32 & AUX_CHECKSUM);
  ad_buf_put_le64 (out, n);
  for (i = 0; i < idx->nframes; i++) {
    const struct ad_frame *f = &idx->frames[i];
    if (f->aux32 & AUX_CHECKSUM)
      continue;
    if (hash_range (src, f->coff, f->csize, &hash) == -1) {
      *why = "the image could not be read to hash a frame";
      return -1;
    }
    ad_buf_put_le64 (out, i);
    ad_buf_put_le64 (out, hash);
  }
  return 0;
}

static int
zstd_load (struct ad_index *idx, struct ad_cursor *in, uint64_t file_size)
{
  struct zstd_priv *priv;
  uint64_t n, i, unchecked = 0, last = 0;

  /* A walk's frames tile the file (see walk_append). */
  if (!ad_frames_tile (idx, file_size, 0, 0))
    return -1;
  idx->sizes_unchecked = true;

  priv = calloc (1, sizeof *priv);
  if (priv == NULL)
    return -1;
  pthread_mutex_init (&priv->lock, NULL);
  priv->max_frame = idx->opts.max_frame;
  priv->from_file = true;
  idx->priv = priv;
  for (i = 0; i < idx->nframes; i++) {
    if (idx->frames[i].aux != 0 || (idx->frames[i].aux32 & ~AUX_CHECKSUM))
      return -1;
    unchecked += !(idx->frames[i].aux32 & AUX_CHECKSUM);
  }
  if (!ad_cursor_get_le64 (in, &n) || n != unchecked)
    return -1;
  if (n == 0)
    return 0;
  priv->chash = calloc (idx->nframes, sizeof *priv->chash);
  priv->chashed = calloc (idx->nframes, 1);
  if (priv->chash == NULL || priv->chashed == NULL)
    return -1;
  priv->nchash = idx->nframes;
  for (i = 0; i < n; i++) {
    uint64_t frame_no, hash;

    if (!ad_cursor_get_le64 (in, &frame_no) ||
        !ad_cursor_get_le64 (in, &hash) ||
        frame_no >= idx->nframes || (i > 0 && frame_no <= last) ||
        (idx->frames[frame_no].aux32 & AUX_CHECKSUM))
      return -1;
    priv->chash[frame_no] = hash;
    priv->chashed[frame_no] = 1;
    last = frame_no;
  }
  return 0;
}

static int
zstd_open (struct ad_index *idx, struct ad_source *src, struct ad_error *err)
{
  struct zstd_priv *priv;
  bool found;

  priv = calloc (1, sizeof *priv);
  if (priv == NULL)
    return ad_error_set (err, errno, "calloc: %m");
  pthread_mutex_init (&priv->lock, NULL);
  priv->max_frame = idx->opts.max_frame;
  idx->priv = priv;

  /* Frame sizes come from the seek table or the frame headers, which
   * no check covers (see format.h).
   */
  idx->sizes_unchecked = true;
  if (zstd_open_seek_table (idx, src, &found, err) == -1)
    return -1;
  if (found) {
    idx->index_from = "the seek table";
    return 0;
  }
  switch (open_declared (idx, src, err)) {
  case -1:
    return -1;
  case 1:
    idx->index_from = "the content size in the frame header (the end of "
      "the file is proven when decoding reaches it)";
    return 0;
  }
  idx->index_from = "frame and block headers";
  priv->walked = true;
  return zstd_open_walk (idx, src, err);
}

/* A frame decodes from its own bytes, and is checked against the seek
 * table's checksum for it, or the persisted index's hash of its bytes,
 * where there is one: those are its key.  Not the one frame sized by
 * its header, whose end the decoder finds.
 */
static bool
zstd_frame_key (struct ad_index *idx,
                const struct ad_frame *frame __attribute__ ((unused)),
                size_t frame_no, uint64_t key[2])
{
  const struct zstd_priv *priv = idx->priv;

  if (priv->declared)
    return false;
  if (priv->sums && frame_no < priv->nsums)
    key[0] = (UINT64_C (1) << 32) | priv->sums[frame_no];
  if (priv->chashed && frame_no < priv->nchash && priv->chashed[frame_no]) {
    key[0] |= UINT64_C (1) << 33;
    key[1] = priv->chash[frame_no];
  }
  return true;
}

const struct ad_format_ops ad_zstd_ops = {
  .format = AD_FORMAT_ZSTD,
  .name = "zstd",
  .open = zstd_open,
  .advance = NULL,
  .decoder_new = zstd_decoder_new,
  .decoder_read = zstd_decoder_read,
  .decoder_free = zstd_decoder_free,
  .save = zstd_save,
  .load = zstd_load,
  .close = zstd_close,
  .frame_key = zstd_frame_key,
};
