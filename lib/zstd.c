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

#include "format.h"
#include "persist.h"
#include "seekable-formats.h"

#define FRAME_MAGIC 0xFD2FB528U
#define SKIPPABLE_MASK 0xFFFFFFF0U
#define SKIPPABLE_MAGIC 0x184D2A50U

#define FRAME_HEADER_MIN 5      /* Magic_Number and the descriptor. */
#define FRAME_HEADER_MAX 18
#define BLOCK_HEADER_SIZE 3
#define BLOCK_SIZE_MAX (128 * 1024)
#define CHECKSUM_SIZE 4

#define CHUNK_SIZE (8 * 1024 * 1024)       /* Sequential reads. */
#define WALK_CHUNK (1024 * 1024)           /* Reads of the frame walk. */
#define WHOLE_READ_MAX (16 * 1024 * 1024)  /* Frames read in one go. */
#define MAX_SKIPPABLE_HOPS 1024            /* Probing without a buffer. */
#define DCTX_POOL_MAX 16                   /* Decoder contexts kept. */
#define DCTX_KEEP_MAX (32 * 1024 * 1024)   /* Larger ones are freed. */
#define MAX_THREADS 64
#define AUX_CHECKSUM 1                     /* aux32: the frame has a
                                              Content_Checksum. */
#define COUNT_BUF_SIZE (256 * 1024)        /* Discarded worker output. */

/* The format's own state, in idx->priv. */
struct zstd_priv {
  uint32_t *sums;               /* Seek-table checksum per frame, or NULL. */
  size_t nsums;
  uint64_t max_frame;
  bool declared;                /* One frame sized by its header: what
                                   follows it is found by the decoder. */
  bool walked;                  /* Frames found by open_walk. */
  /* From a persisted index: XXH64 of the compressed bytes of each frame
   * that has no Content_Checksum (chashed[i]), checked by its decoder.
   */
  bool from_file;               /* The index was loaded from a file. */
  uint64_t *chash;
  unsigned char *chashed;
  size_t nchash;

  pthread_mutex_t lock;         /* Protects the context pool. */
  ZSTD_DCtx *pool[DCTX_POOL_MAX];
  size_t npool;
};

static bool
is_skippable (uint32_t magic)
{
  return (magic & SKIPPABLE_MASK) == SKIPPABLE_MAGIC;
}

/* The parsed Frame_Header. */
struct frame_header {
  unsigned size;                /* Bytes, Magic_Number included. */
  bool single_segment;
  bool checksum;
  uint32_t dict_id;
  bool has_fcs;
  uint64_t fcs;                 /* Frame_Content_Size, if has_fcs. */
  uint64_t window_size;
};

/* Size of a frame header from its descriptor (the byte after the
 * magic).
 */
static unsigned
frame_header_size (unsigned char fhd)
{
  static const unsigned did_size[4] = { 0, 1, 2, 4 };
  static const unsigned fcs_size[4] = { 0, 2, 4, 8 };
  unsigned fcs_flag = fhd >> 6;
  bool single = fhd & 0x20;

  return FRAME_HEADER_MIN + !single + did_size[fhd & 3] +
    (fcs_flag == 0 && single ? 1 : fcs_size[fcs_flag]);
}

/* Parse the frame header in p, which holds at least FRAME_HEADER_MIN
 * bytes and then frame_header_size (p[4]) bytes.  offset is where it
 * is in the file, for messages.
 */
static int
parse_frame_header (const unsigned char *p, uint64_t offset,
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
  h->size = frame_header_size (fhd);
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
static int
window_log (const struct frame_header *h, uint64_t max_frame,
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

/* Decoder contexts are reused: creating one per frame costs more than
 * decoding a small frame.
 */
static ZSTD_DCtx *
get_dctx (struct zstd_priv *priv)
{
  ZSTD_DCtx *dctx = NULL;

  pthread_mutex_lock (&priv->lock);
  if (priv->npool > 0)
    dctx = priv->pool[--priv->npool];
  pthread_mutex_unlock (&priv->lock);
  if (dctx == NULL)
    dctx = ZSTD_createDCtx ();
  return dctx;
}

static void
put_dctx (struct zstd_priv *priv, ZSTD_DCtx *dctx)
{
  if (dctx == NULL)
    return;
  /* Do not keep the large window buffer of a big frame around. */
  if (ZSTD_sizeof_DCtx (dctx) <= DCTX_KEEP_MAX) {
    pthread_mutex_lock (&priv->lock);
    if (priv->npool < DCTX_POOL_MAX) {
      priv->pool[priv->npool++] = dctx;
      dctx = NULL;
    }
    pthread_mutex_unlock (&priv->lock);
  }
  ZSTD_freeDCtx (dctx);
}

/* The decoder of one index frame. */
enum dec_state {
  DEC_BETWEEN,                  /* Before or after the zstd frame. */
  DEC_SKIP,                     /* Inside a skippable frame. */
  DEC_FRAME,                    /* Inside the zstd frame. */
  DEC_DONE,                     /* Every check passed. */
};

struct zstd_decoder {
  struct zstd_priv *priv;
  ZSTD_DCtx *dctx;
  uint64_t coff, cend;          /* The compressed range. */
  uint64_t next;                /* Next compressed offset to read. */
  unsigned char *in;
  size_t in_alloc;
  ZSTD_inBuffer inb;            /* Bytes read, not yet consumed. */
  uint64_t usize, produced;
  enum dec_state state;
  bool seen_frame;
  uint64_t skip;                /* Left of a skippable frame. */
  bool frame_checksum;          /* The frame has Content_Checksum. */
  bool has_sum;                 /* The seek table has a checksum... */
  uint32_t sum;                 /* ...this one. */
  bool hashing;                 /* We compute it ourselves. */
  XXH64_state_t *xxh;
  bool need_checksum;           /* The index says it has one. */
  bool chashing;                /* Hash the compressed bytes read... */
  uint64_t chash;               /* ...against this (persisted index). */
  XXH64_state_t *cxxh;
};

/* Compressed offset of the next unconsumed byte. */
static uint64_t
dec_offset (const struct zstd_decoder *d)
{
  return d->next - (d->inb.size - d->inb.pos);
}

/* Make at least want bytes available at inb.pos, or all that is left
 * of the range.  Reads as much as the buffer holds.
 */
static int
dec_fill (struct zstd_decoder *d, struct ad_source *src, size_t want,
          struct ad_error *err)
{
  size_t avail = d->inb.size - d->inb.pos;
  uint64_t n;

  if (avail >= want || d->next == d->cend)
    return 0;
  if (d->in == NULL) {
    /* The whole frame in place, no copy; else a buffer. */
    const void *p = ad_source_map (src, d->next, d->cend - d->next);

    if (p) {
      d->inb.src = p;
      d->inb.size = d->cend - d->next;
      d->inb.pos = 0;
      d->next = d->cend;
      if (d->chashing)
        XXH64_update (d->cxxh, p, d->inb.size);
      return 0;
    }
    d->in = malloc (d->in_alloc);
    if (d->in == NULL)
      return ad_error_set (err, ENOMEM, "cannot allocate %zu bytes for "
                           "compressed data: %m", d->in_alloc);
  }
  if (avail > 0)
    memmove (d->in, d->in + d->inb.pos, avail);
  n = d->in_alloc - avail;
  if (n > d->cend - d->next)
    n = d->cend - d->next;
  if (ad_source_pread (src, d->in + avail, n, d->next, err) == -1)
    return -1;
  if (d->chashing)
    XXH64_update (d->cxxh, d->in + avail, n);
  d->next += n;
  d->inb.src = d->in;
  d->inb.size = avail + n;
  d->inb.pos = 0;
  return 0;
}

static int
dec_new (struct zstd_priv *priv, const struct ad_frame *frame,
         bool has_sum, uint32_t sum, struct zstd_decoder **dp,
         struct ad_error *err)
{
  struct zstd_decoder *d;

  if (frame->csize == 0)
    return ad_error_set (err, EIO, "frame has no compressed bytes");
  d = calloc (1, sizeof *d);
  if (d == NULL)
    return ad_error_set (err, errno, "calloc: %m");
  d->priv = priv;
  d->coff = d->next = frame->coff;
  d->cend = frame->coff + frame->csize;
  d->in_alloc = frame->csize <= WHOLE_READ_MAX ? frame->csize : CHUNK_SIZE;
  d->dctx = get_dctx (priv);
  if (d->dctx == NULL) {
    put_dctx (priv, d->dctx);
    free (d);
    return ad_error_set (err, ENOMEM, "out of memory for the decoder");
  }
  d->inb.src = d->in;
  d->usize = frame->usize;
  d->state = DEC_BETWEEN;
  d->has_sum = has_sum;
  d->sum = sum;
  *dp = d;
  return 0;
}

static void zstd_decoder_free (void *decoder);

static int
zstd_decoder_new (struct ad_index *idx, const struct ad_frame *frame,
                  size_t frame_no, void **decoder, struct ad_error *err)
{
  struct zstd_priv *priv = idx->priv;
  bool has_sum = priv->sums != NULL && frame_no < priv->nsums;
  struct zstd_decoder *d;

  if (dec_new (priv, frame, has_sum, has_sum ? priv->sums[frame_no] : 0,
               &d, err) == -1)
    return -1;
  d->need_checksum = priv->from_file && (frame->aux32 & AUX_CHECKSUM);
  if (priv->chashed && frame_no < priv->nchash && priv->chashed[frame_no]) {
    d->cxxh = XXH64_createState ();
    if (d->cxxh == NULL) {
      zstd_decoder_free (d);
      return ad_error_set (err, ENOMEM, "XXH64_createState failed");
    }
    XXH64_reset (d->cxxh, 0);
    d->chashing = true;
    d->chash = priv->chash[frame_no];
  }
  *decoder = d;
  return 0;
}

static void
zstd_decoder_free (void *decoder)
{
  struct zstd_decoder *d = decoder;

  if (d == NULL)
    return;
  put_dctx (d->priv, d->dctx);
  if (d->xxh)
    XXH64_freeState (d->xxh);
  if (d->cxxh)
    XXH64_freeState (d->cxxh);
  free (d->in);
  free (d);
}

/* At a frame boundary inside the range: start the zstd frame, skip a
 * skippable frame, or finish.  Returns 1 to go on, 0 at the end, -1 on
 * error.
 */
static int
dec_between (struct zstd_decoder *d, struct ad_source *src,
             struct ad_error *err)
{
  const unsigned char *p;
  size_t avail;
  uint64_t offset;
  uint32_t magic;
  struct frame_header h;
  unsigned log;
  size_t r;

  if (dec_fill (d, src, FRAME_HEADER_MAX, err) == -1)
    return -1;
  p = (const unsigned char *) d->inb.src + d->inb.pos;
  avail = d->inb.size - d->inb.pos;
  offset = dec_offset (d);

  if (avail == 0) {
    /* The end of the range: the final checks. */
    if (!d->seen_frame)
      return ad_error_set (err, EIO, "no zstd frame in the range");
    if (d->produced != d->usize)
      return ad_error_set (err, EIO, "decodes to %" PRIu64 " bytes, the "
                           "index declares %" PRIu64, d->produced, d->usize);
    if (d->hashing) {
      uint32_t got = (uint32_t) XXH64_digest (d->xxh);
      if (got != d->sum)
        return ad_error_set (err, EIO, "checksum mismatch: the seek table "
                             "has 0x%08" PRIx32 ", the decoded data "
                             "0x%08" PRIx32, d->sum, got);
    }
    if (d->chashing && XXH64_digest (d->cxxh) != d->chash)
      return ad_error_set (err, EIO, "the compressed bytes of the frame do "
                           "not match the persisted index (the image has "
                           "changed since it was indexed)");
    d->state = DEC_DONE;
    return 0;
  }
  if (avail < 4)
    return ad_error_set (err, EIO, "%zu stray bytes at offset %" PRIu64
                         " at the end of the range%s", avail, offset,
                         d->priv->declared ? " (after the frame that "
                         "declared the image's size; "
                         AD_SIZE_CHECK_HINT ")" : "");
  magic = ad_le32 (p);
  if (is_skippable (magic)) {
    if (avail < AD_SKIPPABLE_HEADER_SIZE)
      return ad_error_set (err, EIO, "skippable frame header at offset %"
                           PRIu64 " is truncated", offset);
    d->skip = ad_le32 (p + 4);
    d->inb.pos += AD_SKIPPABLE_HEADER_SIZE;
    d->state = DEC_SKIP;
    return 1;
  }
  if (d->seen_frame && d->priv->declared)
    return ad_error_set (err, EIO, "%s at offset %" PRIu64 " after the "
                         "frame that declared the image's size (%" PRIu64
                         " bytes): the image is more than its first frame; "
                         AD_SIZE_CHECK_HINT, magic == FRAME_MAGIC ?
                         "another zstd frame" : "data that is not a zstd "
                         "frame", offset, d->usize);
  if (magic != FRAME_MAGIC)
    return ad_error_set (err, EIO, "bad magic 0x%08" PRIx32 " at offset %"
                         PRIu64 " (not a zstd frame)", magic, offset);
  if (d->seen_frame)
    return ad_error_set (err, EIO, "a second zstd frame at offset %" PRIu64
                         " inside the frame's range", offset);
  if (avail < FRAME_HEADER_MIN || avail < frame_header_size (p[4]))
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " is truncated", offset);
  if (parse_frame_header (p, offset, &h, err) == -1)
    return -1;
  if (h.has_fcs && h.fcs != d->usize)
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " declares a content size of %" PRIu64 " bytes, "
                         "the index %" PRIu64, offset, h.fcs, d->usize);
  if (window_log (&h, d->priv->max_frame, offset, &log, err) == -1)
    return -1;
  ZSTD_DCtx_reset (d->dctx, ZSTD_reset_session_and_parameters);
  r = ZSTD_DCtx_setParameter (d->dctx, ZSTD_d_windowLogMax, log);
  if (ZSTD_isError (r))
    return ad_error_set (err, EIO, "ZSTD_d_windowLogMax: %s",
                         ZSTD_getErrorName (r));
  if (d->need_checksum && !h.checksum)
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " has no content checksum, but the persisted "
                         "index says it has (the image has changed since "
                         "it was indexed)", offset);
  d->frame_checksum = h.checksum;
  /* With a content checksum, the seek-table checksum is a copy of it
   * (checked at the end of the frame); otherwise we hash the output.
   */
  d->hashing = d->has_sum && !h.checksum;
  if (d->hashing) {
    if (d->xxh == NULL && (d->xxh = XXH64_createState ()) == NULL)
      return ad_error_set (err, ENOMEM, "XXH64_createState failed");
    XXH64_reset (d->xxh, 0);
  }
  d->seen_frame = true;
  d->state = DEC_FRAME;
  return 1;
}

/* The zstd frame ended (ZSTD_decompressStream returned 0): compare its
 * Content_Checksum, already verified by libzstd, with the seek table.
 */
static int
dec_frame_end (struct zstd_decoder *d, struct ad_source *src,
               struct ad_error *err)
{
  unsigned char tail[CHECKSUM_SIZE];
  uint64_t end = dec_offset (d);
  uint32_t got;

  if (!d->has_sum || !d->frame_checksum)
    return 0;
  if (d->inb.pos >= CHECKSUM_SIZE)
    memcpy (tail, (const unsigned char *) d->inb.src + d->inb.pos -
            CHECKSUM_SIZE, CHECKSUM_SIZE);
  else if (ad_source_pread (src, tail, CHECKSUM_SIZE, end - CHECKSUM_SIZE,
                            err) == -1)
    return -1;
  got = ad_le32 (tail);
  if (got != d->sum)
    return ad_error_set (err, EIO, "checksum mismatch: the seek table has "
                         "0x%08" PRIx32 ", the frame's content checksum "
                         "0x%08" PRIx32, d->sum, got);
  return 0;
}

static ssize_t
zstd_decoder_read (void *decoder, struct ad_source *src, void *out,
                   size_t count, struct ad_error *err)
{
  struct zstd_decoder *d = decoder;

  for (;;) {
    switch (d->state) {
    case DEC_DONE:
      return 0;

    case DEC_BETWEEN: {
      int r = dec_between (d, src, err);
      if (r <= 0)
        return r;
      break;
    }

    case DEC_SKIP: {
      size_t avail = d->inb.size - d->inb.pos;
      size_t n = avail < d->skip ? avail : d->skip;

      d->inb.pos += n;
      d->skip -= n;
      if (d->skip > 0) {
        /* The rest of it has not been read: jump over it. */
        if (d->skip > d->cend - d->next)
          return ad_error_set (err, EIO, "skippable frame extends past "
                               "the end of the range at offset %" PRIu64,
                               d->cend);
        d->next += d->skip;
        d->skip = 0;
      }
      d->state = DEC_BETWEEN;
      break;
    }

    case DEC_FRAME: {
      ZSTD_outBuffer ob = { .dst = out, .size = count, .pos = 0 };
      size_t before, r;

      if (d->inb.pos == d->inb.size && dec_fill (d, src, 1, err) == -1)
        return -1;
      before = d->inb.pos;
      r = ZSTD_decompressStream (d->dctx, &ob, &d->inb);
      if (ZSTD_isError (r)) {
        /* libzstd may not say how far it got: name the offset only
         * when it tells us something.
         */
        if (dec_offset (d) > d->coff)
          return ad_error_set (err, EIO, "%s (near offset %" PRIu64 ")",
                               ZSTD_getErrorName (r), dec_offset (d));
        return ad_error_set (err, EIO, "%s", ZSTD_getErrorName (r));
      }
      if (ob.pos > 0) {
        if (ob.pos > d->usize - d->produced)
          return ad_error_set (err, EIO, "decodes to more than the %" PRIu64
                               " bytes the index declares", d->usize);
        if (d->hashing)
          XXH64_update (d->xxh, out, ob.pos);
        d->produced += ob.pos;
      }
      if (r == 0) {
        if (dec_frame_end (d, src, err) == -1)
          return -1;
        d->state = DEC_BETWEEN;
      }
      else if (ob.pos == 0 && d->inb.pos == before) {
        if (d->inb.pos == d->inb.size && d->next == d->cend)
          return ad_error_set (err, EIO, "frame is truncated: its range "
                               "ends at offset %" PRIu64 " before the end "
                               "of the frame", d->cend);
        return ad_error_set (err, EIO, "decoder makes no progress at "
                             "offset %" PRIu64, dec_offset (d));
      }
      if (ob.pos > 0)
        return ob.pos;
      break;
    }
    }
  }
}

/* Decode a frame that the seek table says is empty, to make sure. */
static int
check_empty_frame (struct zstd_priv *priv, struct ad_source *src,
                   uint64_t coff, uint64_t csize, bool has_sum,
                   uint32_t sum, struct ad_error *err)
{
  struct ad_frame frame = { .coff = coff, .csize = csize };
  struct zstd_decoder *d;
  char byte;
  ssize_t r;

  if (dec_new (priv, &frame, has_sum, sum, &d, err) == -1)
    return -1;
  r = zstd_decoder_read (d, src, &byte, 1, err);
  zstd_decoder_free (d);
  if (r > 0)
    return ad_error_set (err, EIO, "frame at offset %" PRIu64 " is not "
                         "empty as the seek table says", coff);
  if (r == -1)
    return ad_error_prefix (err, "empty frame at offset %" PRIu64, coff);
  return 0;
}

/* Hop over skippable frames from offset *pos, with small reads, up to
 * end.  Leaves *pos at the first other frame, or at end.
 */
static int
hop_skippable (struct ad_source *src, uint64_t *pos, uint64_t end,
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

  if (hop_skippable (src, &pos, end, err) == -1)
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
  if (n < frame_header_size (buf[4]))
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " is truncated", pos);
  if (parse_frame_header (buf, pos, &h, err) == -1)
    return -1;
  if (h.has_fcs && h.fcs != usize)
    return ad_error_set (err, EIO, "frame at offset %" PRIu64 " declares a "
                         "content size of %" PRIu64 " bytes, the seek table "
                         "%" PRIu64, pos, h.fcs, usize);
  return window_log (&h, priv->max_frame, pos, &log, err);
}

/* Read and check the seek table, if the file ends with one.  Sets
 * *found if it does (then any error is fatal).
 */
static int
open_seek_table (struct ad_index *idx, struct ad_source *src,
                 bool *found, struct ad_error *err)
{
  struct zstd_priv *priv = idx->priv;
  unsigned char foot[AD_SEEK_FOOTER_SIZE], hdr[AD_SKIPPABLE_HEADER_SIZE];
  unsigned char *table = NULL;
  uint32_t nentries, i;
  unsigned char desc;
  size_t esize, k;
  uint64_t table_size, table_start, entries_size, done;
  uint64_t csum = 0, usum = 0, lead, pos, coff, uoff;
  uint64_t first = UINT64_MAX;
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

  /* The skippable frame around it and Seek_Table_Entries, read in one
   * go (in large chunks for a huge table; bounded by the file).
   */
  table = malloc (AD_SKIPPABLE_HEADER_SIZE + entries_size);
  if (table == NULL)
    return ad_error_set (err, ENOMEM, "seek table of %" PRIu64 " bytes: "
                         "%m", entries_size);
  for (done = 0; done < AD_SKIPPABLE_HEADER_SIZE + entries_size; ) {
    uint64_t n = AD_SKIPPABLE_HEADER_SIZE + entries_size - done;
    if (n > CHUNK_SIZE)
      n = CHUNK_SIZE;
    if (ad_source_pread (src, table + done, n, table_start + done,
                         err) == -1)
      goto out;
    done += n;
  }
  memcpy (hdr, table, sizeof hdr);
  memmove (table, table + AD_SKIPPABLE_HEADER_SIZE, entries_size);
  if (ad_le32 (hdr) != AD_SEEK_TABLE_MAGIC) {
    ad_error_set (err, EIO, "seek table of %" PRIu32 " entries "
                  "should start at offset %" PRIu64 " with magic "
                  "0x%08x, found 0x%08" PRIx32, nentries, table_start,
                  AD_SEEK_TABLE_MAGIC, ad_le32 (hdr));
    goto out;
  }
  if (ad_le32 (hdr + 4) != table_size) {
    ad_error_set (err, EIO, "seek table frame at offset %" PRIu64
                  " has Frame_Size %" PRIu32 ", the table is %"
                  PRIu64 " bytes", table_start, ad_le32 (hdr + 4),
                  table_size);
    goto out;
  }

  /* The entries must cover exactly the frames before the table. */
  for (i = 0; i < nentries; i++) {
    const unsigned char *e = table + (size_t) i * esize;
    uint32_t c = ad_le32 (e), u = ad_le32 (e + 4);

    if (c == 0 && u != 0) {
      ad_error_set (err, EIO, "seek table entry %" PRIu32 " has no "
                    "compressed bytes for %" PRIu32 " decompressed bytes",
                    i, u);
      goto out;
    }
    csum += c;
    usum += u;
    if (csum > table_start) {
      ad_error_set (err, EIO, "seek table entries 0-%" PRIu32 " describe %"
                    PRIu64 " bytes, more than the %" PRIu64 " bytes before "
                    "the table", i, csum, table_start);
      goto out;
    }
    if (u > 0) {
      if (first == UINT64_MAX)
        first = i;
    }
  }
  if (usum > INT64_MAX) {
    ad_error_set (err, EIO, "seek table describes %" PRIu64 " bytes, "
                  "too large", usum);
    goto out;
  }

  /* Anything before the described frames must be skippable frames. */
  lead = table_start - csum;
  pos = 0;
  if (hop_skippable (src, &pos, lead, err) == -1)
    goto out;
  if (pos != lead) {
    ad_error_set (err, EIO, "seek table describes %" PRIu64 " bytes of "
                  "frames, but %" PRIu64 " bytes precede it (not only "
                  "skippable frames at offset %" PRIu64 ")", csum,
                  table_start, pos);
    goto out;
  }

  idx->size = usum;
  if (has_sums) {
    priv->sums = malloc (((size_t) nentries + 1) * sizeof *priv->sums);
    if (priv->sums == NULL) {
      ad_error_set (err, ENOMEM, "malloc: %m");
      goto out;
    }
  }
  k = 0;
  coff = lead;
  uoff = 0;
  for (i = 0; i < nentries; i++) {
    const unsigned char *e = table + (size_t) i * esize;
    uint32_t c = ad_le32 (e), u = ad_le32 (e + 4);
    uint32_t sum = has_sums ? ad_le32 (e + 8) : 0;

    if (u == 0) {
      if (c > 0 &&
          check_empty_frame (priv, src, coff, c, has_sums, sum, err) == -1)
        goto out;
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
        goto out;
      }
      if (ad_index_append_frame (idx, &frame, err) == -1)
        goto out;
      if (has_sums)
        priv->sums[k] = sum;
      k++;
    }
    coff += c;
    uoff += u;
  }
  priv->nsums = has_sums ? k : 0;
  r = 0;

 out:
  free (table);
  return r;
}

/* The parallel pass over frames without a content size.
 *
 * The reader (the thread in open) reads the file into large buffers
 * and queues the pieces of each such frame, as chunks pointing into
 * those buffers, on a job; a worker takes the job and decodes its
 * chunks as they come, counting the output.  A buffer is reference
 * counted and recycled once the reader and every chunk in it are done
 * with it, and at most max_buffers exist, which bounds the memory.
 * Only the newest job can be waiting for bytes, so there is always a
 * worker that can make progress and free a buffer.
 */
struct buffer {
  struct buffer *next_free;
  unsigned refs;                /* The reader and chunks using it. */
  unsigned char data[];
};

struct chunk {
  struct chunk *next;
  struct buffer *buffer;
  const unsigned char *data;    /* Within buffer->data. */
  size_t len;
};

struct job {
  struct job *next_queued;
  uint64_t coff;                /* Where the frame starts. */
  unsigned wlog;                /* ZSTD_d_windowLogMax for it. */
  struct chunk *head, *tail;    /* Queued, not yet decoded. */
  bool complete;                /* All its bytes were queued. */
  bool done;                    /* A worker has finished with it. */
  bool failed;                  /* ...with err. */
  bool abandoned;               /* ...because another job failed. */
  uint64_t usize;               /* Its decoded size. */
  struct ad_error err;
};

struct pool {
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* Broadcast on every change. */
  struct job *qhead, *qtail;    /* Jobs no worker has taken. */
  struct buffer *free_buffers;
  size_t nbuffers, max_buffers, buffer_size;
  bool stop, failed;
  uint64_t max_frame;
  unsigned nthreads, started;
  pthread_t *threads;
};

/* Get an unused buffer, waiting for one if max_buffers are in use.
 * Returns NULL if a worker failed (or on allocation failure).
 */
static struct buffer *
buffer_get (struct pool *p, struct ad_error *err)
{
  struct buffer *b = NULL;

  pthread_mutex_lock (&p->lock);
  while (!p->failed && p->free_buffers == NULL &&
         p->nbuffers >= p->max_buffers)
    pthread_cond_wait (&p->cond, &p->lock);
  if (p->failed)
    ad_error_set (err, EIO, "parallel decoding failed");
  else if (p->free_buffers) {
    b = p->free_buffers;
    p->free_buffers = b->next_free;
  }
  else if ((b = malloc (sizeof *b + p->buffer_size)) == NULL)
    ad_error_set (err, ENOMEM, "malloc: %m");
  else
    p->nbuffers++;
  if (b)
    b->refs = 1;
  pthread_mutex_unlock (&p->lock);
  return b;
}

static void
buffer_put (struct pool *p, struct buffer *b)
{
  if (b == NULL)
    return;
  pthread_mutex_lock (&p->lock);
  if (--b->refs == 0) {
    b->next_free = p->free_buffers;
    p->free_buffers = b;
    pthread_cond_broadcast (&p->cond);
  }
  pthread_mutex_unlock (&p->lock);
}

static void
count_frame (struct pool *p, struct job *job, ZSTD_DCtx *dctx,
             unsigned char *out)
{
  uint64_t total = 0, in_off = job->coff;
  bool ended = false;
  size_t r;

  ZSTD_DCtx_reset (dctx, ZSTD_reset_session_and_parameters);
  r = ZSTD_DCtx_setParameter (dctx, ZSTD_d_windowLogMax, job->wlog);
  if (ZSTD_isError (r)) {
    ad_error_set (&job->err, EIO, "ZSTD_d_windowLogMax: %s",
                  ZSTD_getErrorName (r));
    job->failed = true;
    return;
  }

  for (;;) {
    struct chunk *c;
    ZSTD_inBuffer in;

    pthread_mutex_lock (&p->lock);
    while (job->head == NULL && !job->complete && !p->failed)
      pthread_cond_wait (&p->cond, &p->lock);
    if (p->failed) {
      pthread_mutex_unlock (&p->lock);
      job->failed = job->abandoned = true;
      return;
    }
    c = job->head;
    if (c) {
      job->head = c->next;
      if (job->head == NULL)
        job->tail = NULL;
    }
    pthread_mutex_unlock (&p->lock);
    if (c == NULL)
      break;

    in.src = c->data;
    in.size = c->len;
    in.pos = 0;
    if (ended) {
      ad_error_set (&job->err, EIO, "data after the end of the frame at "
                    "offset %" PRIu64, in_off);
      job->failed = true;
    }
    while (!ended && !job->failed) {
      ZSTD_outBuffer ob = { .dst = out, .size = COUNT_BUF_SIZE, .pos = 0 };

      r = ZSTD_decompressStream (dctx, &ob, &in);
      if (ZSTD_isError (r)) {
        if (in_off + in.pos > job->coff)
          ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 ": %s "
                        "(near offset %" PRIu64 ")", job->coff,
                        ZSTD_getErrorName (r), in_off + in.pos);
        else
          ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 ": %s",
                        job->coff, ZSTD_getErrorName (r));
        job->failed = true;
        break;
      }
      total += ob.pos;
      if (total > p->max_frame) {
        ad_error_set (&job->err, EFBIG, "frame at offset %" PRIu64 " has "
                      "no content size and decodes to more than %" PRIu64
                      " bytes, the autodecomp-max-frame limit", job->coff,
                      p->max_frame);
        job->failed = true;
        break;
      }
      if (r == 0) {
        ended = true;
        if (in.pos < in.size) {
          ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 " ends "
                        "at offset %" PRIu64 ", before its last block",
                        job->coff, in_off + in.pos);
          job->failed = true;
        }
        break;
      }
      if (in.pos == in.size && ob.pos < ob.size)
        break;                  /* It needs more input. */
    }
    in_off += c->len;
    buffer_put (p, c->buffer);
    free (c);
    if (job->failed)
      return;
  }
  if (!ended) {
    ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 " is "
                  "truncated at offset %" PRIu64, job->coff, in_off);
    job->failed = true;
    return;
  }
  job->usize = total;
}

static void *
worker (void *vp)
{
  struct pool *p = vp;
  ZSTD_DCtx *dctx = ZSTD_createDCtx ();
  unsigned char *out = malloc (COUNT_BUF_SIZE);

  pthread_mutex_lock (&p->lock);
  for (;;) {
    struct job *job;

    while (p->qhead == NULL && !p->stop)
      pthread_cond_wait (&p->cond, &p->lock);
    if (p->qhead == NULL)
      break;
    job = p->qhead;
    p->qhead = job->next_queued;
    if (p->qhead == NULL)
      p->qtail = NULL;
    pthread_mutex_unlock (&p->lock);

    if (dctx == NULL || out == NULL) {
      ad_error_set (&job->err, ENOMEM, "out of memory for a decoder");
      job->failed = true;
    }
    else
      count_frame (p, job, dctx, out);

    pthread_mutex_lock (&p->lock);
    job->done = true;
    if (job->failed)
      p->failed = true;
    pthread_cond_broadcast (&p->cond);
  }
  pthread_mutex_unlock (&p->lock);
  free (out);
  ZSTD_freeDCtx (dctx);
  return NULL;
}

/* Stop the workers once the queued jobs are done (or at once after a
 * failure) and wait for them.
 */
static void
pool_finish (struct pool *p, bool failed)
{
  unsigned i;

  pthread_mutex_lock (&p->lock);
  p->stop = true;
  if (failed)
    p->failed = true;
  pthread_cond_broadcast (&p->cond);
  pthread_mutex_unlock (&p->lock);
  for (i = 0; i < p->started; i++)
    pthread_join (p->threads[i], NULL);
  p->started = 0;
}

static int
pool_start (struct pool *p, struct ad_error *err)
{
  unsigned i;
  int e;

  p->threads = calloc (p->nthreads, sizeof *p->threads);
  if (p->threads == NULL)
    return ad_error_set (err, ENOMEM, "calloc: %m");
  for (i = 0; i < p->nthreads; i++) {
    e = pthread_create (&p->threads[i], NULL, worker, p);
    if (e != 0) {
      if (p->started > 0)
        break;                  /* Fewer workers will do. */
      return ad_error_set (err, e, "pthread_create: %s", strerror (e));
    }
    p->started++;
  }
  return 0;
}

/* The walk over the frames, reading the file in sequential chunks. */
struct walk_frame {
  uint64_t coff, csize, usize;
  bool checksum;
  struct job *job;              /* If the size is learnt by decoding. */
};

struct walker {
  struct ad_source *src;
  struct buffer *cur;           /* The buffer being walked, or NULL. */
  unsigned char *buf;           /* Its data. */
  size_t alloc;                 /* Its size. */
  uint64_t start;               /* File offset of buf[0]. */
  size_t len;                   /* Bytes valid in buf. */
  struct pool *pool;
  struct job *job;              /* Frame whose bytes are being queued... */
  uint64_t copied;              /* ...up to here. */
};

/* Queue the bytes [w->copied, upto) of the buffer on the current job. */
static int
walk_flush (struct walker *w, uint64_t upto, struct ad_error *err)
{
  struct pool *p = w->pool;
  struct chunk *c;

  if (upto <= w->copied)
    return 0;
  c = malloc (sizeof *c);
  if (c == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  c->next = NULL;
  c->buffer = w->cur;
  c->data = w->buf + (w->copied - w->start);
  c->len = upto - w->copied;

  pthread_mutex_lock (&p->lock);
  if (p->failed) {
    pthread_mutex_unlock (&p->lock);
    free (c);
    return ad_error_set (err, EIO, "parallel decoding failed");
  }
  w->cur->refs++;
  if (w->job->tail)
    w->job->tail->next = c;
  else
    w->job->head = c;
  w->job->tail = c;
  pthread_cond_broadcast (&p->cond);
  pthread_mutex_unlock (&p->lock);
  w->copied = upto;
  return 0;
}

/* Make the bytes [pos, pos + n) available in the buffer (n is small).
 * A refill moves to a fresh buffer (the old one may still be in use by
 * chunks), keeping the few bytes before its end that are still needed.
 * While a frame is being queued the reads stay contiguous, so that
 * every byte of it passes through a buffer.
 */
static int
walk_need (struct walker *w, uint64_t pos, size_t n, struct ad_error *err)
{
  uint64_t size = w->src->size;

  if (pos > size || n > size - pos)
    return ad_error_set (err, EIO, "truncated: %zu bytes needed at offset %"
                         PRIu64 ", the file ends at %" PRIu64, n, pos,
                         size);
  while (pos < w->start || pos + n > w->start + w->len) {
    uint64_t end = w->start + w->len;
    uint64_t ns = pos;
    size_t keep = 0, want;
    struct buffer *nb;

    if (w->job) {
      if (walk_flush (w, end, err) == -1)
        return -1;
      if (ns > end)
        ns = end;
    }
    nb = buffer_get (w->pool, err);
    if (nb == NULL)
      return -1;
    if (w->cur && ns >= w->start && ns < end) {
      keep = end - ns;
      memcpy (nb->data, w->buf + (ns - w->start), keep);
    }
    buffer_put (w->pool, w->cur);
    w->cur = nb;
    w->buf = nb->data;
    w->start = ns;
    w->len = keep;
    want = w->alloc - keep;
    if (want > size - (ns + keep))
      want = size - (ns + keep);
    if (want == 0)
      return ad_error_set (err, EIO, "internal error: walk buffer is full "
                           "at offset %" PRIu64, ns);
    if (ad_source_pread (w->src, w->buf + keep, want, ns + keep, err) == -1)
      return -1;
    w->len += want;
  }
  return 0;
}

static const unsigned char *
walk_ptr (struct walker *w, uint64_t pos)
{
  return w->buf + (pos - w->start);
}

/* Walk one zstd frame starting at pos; fill *f. */
static int
walk_frame (struct walker *w, struct ad_index *idx, uint64_t pos,
            struct walk_frame *f, struct ad_error *err)
{
  struct frame_header h;
  uint64_t p, size = w->src->size, nblocks = 0;
  unsigned log;
  bool last = false;

  if (walk_need (w, pos, FRAME_HEADER_MIN, err) == -1)
    return -1;
  if (walk_need (w, pos, frame_header_size (walk_ptr (w, pos)[4]),
                 err) == -1)
    return -1;
  if (parse_frame_header (walk_ptr (w, pos), pos, &h, err) == -1 ||
      window_log (&h, idx->opts.max_frame, pos, &log, err) == -1)
    return -1;

  f->coff = pos;
  f->checksum = h.checksum;
  f->usize = h.has_fcs ? h.fcs : 0;
  f->job = NULL;
  if (!h.has_fcs || h.fcs == 0) {
    /* Decode it to learn (or check) its size. */
    struct pool *pl = w->pool;
    struct job *job = calloc (1, sizeof *job);

    if (job == NULL)
      return ad_error_set (err, ENOMEM, "calloc: %m");
    job->coff = pos;
    job->wlog = log;
    f->job = job;
    if (pl->started == 0 && pool_start (pl, err) == -1) {
      free (job);
      f->job = NULL;
      return -1;
    }
    pthread_mutex_lock (&pl->lock);
    if (pl->qtail)
      pl->qtail->next_queued = job;
    else
      pl->qhead = job;
    pl->qtail = job;
    pthread_cond_broadcast (&pl->cond);
    pthread_mutex_unlock (&pl->lock);
    w->job = job;
    w->copied = pos;
  }

  /* Data_Blocks. */
  p = pos + h.size;
  while (!last) {
    const unsigned char *b;
    uint32_t bh, type, bsize, content;

    if (walk_need (w, p, BLOCK_HEADER_SIZE, err) == -1)
      return -1;
    b = walk_ptr (w, p);
    bh = b[0] | (b[1] << 8) | (b[2] << 16);
    last = bh & 1;
    type = (bh >> 1) & 3;
    bsize = bh >> 3;
    if (type == 3)
      return ad_error_set (err, EIO, "block at offset %" PRIu64 " has the "
                           "reserved block type", p);
    if (bsize > BLOCK_SIZE_MAX)
      return ad_error_set (err, EIO, "block at offset %" PRIu64 " is %"
                           PRIu32 " bytes, more than the maximum %d", p,
                           bsize, BLOCK_SIZE_MAX);
    content = type == 1 ? 1 : bsize;
    p += BLOCK_HEADER_SIZE;
    if (content > size - p)
      return ad_error_set (err, EIO, "truncated: block at offset %" PRIu64
                           " needs %" PRIu32 " bytes, the file ends at %"
                           PRIu64, p - BLOCK_HEADER_SIZE, content, size);
    p += content;
    nblocks++;
  }
  if (h.checksum) {
    if (CHECKSUM_SIZE > size - p)
      return ad_error_set (err, EIO, "truncated: the checksum of the frame "
                           "at offset %" PRIu64 " is past the end of the "
                           "file", pos);
    p += CHECKSUM_SIZE;
  }
  /* Each block regenerates at most BLOCK_SIZE_MAX bytes. */
  if (h.has_fcs &&
      h.fcs / BLOCK_SIZE_MAX + (h.fcs % BLOCK_SIZE_MAX != 0) > nblocks)
    return ad_error_set (err, EIO, "frame at offset %" PRIu64 " declares %"
                         PRIu64 " bytes of content but has only %" PRIu64
                         " blocks", pos, h.fcs, nblocks);
  f->csize = p - pos;

  if (w->job) {
    struct pool *pl = w->pool;

    if (walk_need (w, p - 1, 1, err) == -1 || walk_flush (w, p, err) == -1)
      return -1;
    pthread_mutex_lock (&pl->lock);
    w->job->complete = true;
    pthread_cond_broadcast (&pl->cond);
    pthread_mutex_unlock (&pl->lock);
    w->job = NULL;
  }
  return 0;
}

static int
open_walk (struct ad_index *idx, struct ad_source *src,
           struct ad_error *err)
{
  struct walker w = { .src = src };
  struct pool pool = { .started = 0 };
  struct walk_frame *frames = NULL;
  size_t nframes = 0, frames_alloc = 0, i;
  uint64_t pos = 0, total = 0, uoff = 0;
  unsigned threads = idx->opts.threads;
  int r = -1;
  bool walk_ok = false;

  if (threads == 0) {
    long n = sysconf (_SC_NPROCESSORS_ONLN);
    threads = n > 0 ? n : 1;
  }
  if (threads > MAX_THREADS)
    threads = MAX_THREADS;
  pthread_mutex_init (&pool.lock, NULL);
  pthread_cond_init (&pool.cond, NULL);
  pool.nthreads = threads;
  pool.max_frame = idx->opts.max_frame;
  w.alloc = src->size < WALK_CHUNK ? src->size : WALK_CHUNK;
  if (w.alloc < 64)
    w.alloc = 64;
  pool.buffer_size = w.alloc;
  pool.max_buffers = threads + 3;
  w.pool = &pool;

  while (pos < src->size) {
    uint32_t magic;

    if (src->size - pos < 4) {
      ad_error_set (err, EIO, "%" PRIu64 " stray bytes at the end of the "
                    "file at offset %" PRIu64, src->size - pos, pos);
      goto out;
    }
    if (walk_need (&w, pos, 4, err) == -1)
      goto out;
    magic = ad_le32 (walk_ptr (&w, pos));
    if (is_skippable (magic)) {
      uint64_t fsize;

      if (walk_need (&w, pos, AD_SKIPPABLE_HEADER_SIZE, err) == -1)
        goto out;
      fsize = ad_le32 (walk_ptr (&w, pos) + 4);
      if (fsize > src->size - pos - AD_SKIPPABLE_HEADER_SIZE) {
        ad_error_set (err, EIO, "truncated: skippable frame at offset %"
                      PRIu64 " (%" PRIu64 " bytes) extends past the end "
                      "of the file", pos, fsize);
        goto out;
      }
      pos += AD_SKIPPABLE_HEADER_SIZE + fsize;
      continue;
    }
    if (magic != FRAME_MAGIC) {
      ad_error_set (err, EIO, "bad magic 0x%08" PRIx32 " at offset %" PRIu64
                    " (not a zstd frame)", magic, pos);
      goto out;
    }
    if (nframes == frames_alloc) {
      size_t n = frames_alloc ? frames_alloc * 2 : 64;
      struct walk_frame *nf = realloc (frames, n * sizeof *nf);
      if (nf == NULL) {
        ad_error_set (err, ENOMEM, "realloc: %m");
        goto out;
      }
      frames = nf;
      frames_alloc = n;
    }
    memset (&frames[nframes], 0, sizeof frames[nframes]);
    /* Count it now so that its job is freed whatever happens. */
    nframes++;
    if (walk_frame (&w, idx, pos, &frames[nframes - 1], err) == -1)
      goto out;
    pos += frames[nframes - 1].csize;
  }
  walk_ok = true;

 out:
  pool_finish (&pool, !walk_ok);
  /* An error in a worker explains a failed walk better. */
  for (i = 0; i < nframes; i++) {
    struct job *job = frames[i].job;
    if (job && job->failed && !job->abandoned) {
      *err = job->err;
      walk_ok = false;
      break;
    }
  }
  if (walk_ok) {
    for (i = 0; i < nframes; i++) {
      struct job *job = frames[i].job;
      if (job) {
        if (!job->done || job->failed) {
          ad_error_set (err, EIO, "frame at offset %" PRIu64 " was not "
                        "decoded", job->coff);
          walk_ok = false;
          break;
        }
        frames[i].usize = job->usize;
      }
      if (frames[i].usize > INT64_MAX - total) {
        ad_error_set (err, EIO, "frames up to offset %" PRIu64 " add up "
                      "to more than %" PRId64 " bytes", frames[i].coff,
                      INT64_MAX);
        walk_ok = false;
        break;
      }
      total += frames[i].usize;
    }
  }
  if (walk_ok) {
    idx->size = total;
    for (i = 0; i < nframes; i++) {
      struct ad_frame frame = {
        .uoff = uoff, .usize = frames[i].usize,
        .coff = frames[i].coff, .csize = frames[i].csize,
        .aux32 = frames[i].checksum ? AUX_CHECKSUM : 0,
      };
      if (frame.usize == 0)
        continue;
      if (ad_index_append_frame (idx, &frame, err) == -1)
        break;
      uoff += frame.usize;
    }
    if (i == nframes)
      r = 0;
  }

  for (i = 0; i < nframes; i++) {
    struct job *job = frames[i].job;
    if (job) {
      while (job->head) {
        struct chunk *c = job->head;
        job->head = c->next;
        buffer_put (&pool, c->buffer);
        free (c);
      }
      free (job);
    }
  }
  free (frames);
  buffer_put (&pool, w.cur);
  while (pool.free_buffers) {
    struct buffer *b = pool.free_buffers;
    pool.free_buffers = b->next_free;
    free (b);
  }
  free (pool.threads);
  pthread_mutex_destroy (&pool.lock);
  pthread_cond_destroy (&pool.cond);
  return r;
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
  if (hop_skippable (src, &pos, src->size, err) == -1)
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
      parse_frame_header (buf, pos, &h, &scratch) == -1 ||
      !h.has_fcs || h.fcs == 0 || h.fcs > INT64_MAX / 2 ||
      rest > ZSTD_COMPRESSBOUND (h.fcs))
    goto out;
  for (p = h.size; p + BLOCK_HEADER_SIZE <= n; ) {
    uint32_t bh = buf[p] | (buf[p + 1] << 8) | (buf[p + 2] << 16);
    uint32_t type = (bh >> 1) & 3, bsize = bh >> 3;

    if (type == 3 || bsize > BLOCK_SIZE_MAX || (bh & 1))
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
  size_t alloc = csize < CHUNK_SIZE ? csize : CHUNK_SIZE;
  unsigned char *buf = malloc (alloc ? alloc : 1);
  struct ad_error e;
  int r = -1;

  if (st == NULL || buf == NULL)
    goto out;
  XXH64_reset (st, 0);
  while (csize > 0) {
    size_t n = csize < alloc ? csize : alloc;
    if (ad_source_pread (src, buf, n, coff, &e) == -1)
      goto out;
    XXH64_update (st, buf, n);
    coff += n;
    csize -= n;
  }
  *hash = XXH64_digest (st);
  r = 0;
 out:
  if (st)
    XXH64_freeState (st);
  free (buf);
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
zstd_load (struct ad_index *idx, struct ad_cursor *in)
{
  struct zstd_priv *priv;
  uint64_t n, i, unchecked = 0, last = 0;

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
  if (open_seek_table (idx, src, &found, err) == -1)
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
  return open_walk (idx, src, err);
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
};
