/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: zstd images, the decoder of one index frame (see zstd.c).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>

#include <zstd.h>
#include <xxhash.h>

#include "seekable-formats.h"
#include "zstd-int.h"

#define DCTX_KEEP_MAX (32 * 1024 * 1024)   /* Larger ones are freed. */

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
  struct ad_window win;         /* The range's bytes. */
  ZSTD_inBuffer inb;            /* Bytes read, not yet consumed. */
  uint64_t usize, produced;
  enum dec_state state;
  bool seen_frame;
  bool frame_start;             /* Nothing of the zstd frame decoded. */
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
 * of the range.  Hashes the bytes read for the first time.
 */
static int
dec_fill (struct zstd_decoder *d, struct ad_source *src, size_t want,
          struct ad_error *err)
{
  size_t avail = d->inb.size - d->inb.pos;
  uint64_t pos = dec_offset (d), old = d->win.held;
  const unsigned char *p;

  if (avail >= want || d->next == d->cend)
    return 0;
  if (d->win.src == NULL)
    ad_window_init (&d->win, src, d->coff, d->cend);
  d->win.src = src;             /* The reader's, which may change. */
  p = ad_window_need (&d->win, pos, want, &avail, err);
  if (p == NULL)
    return -1;
  if (old < pos)
    old = pos;                  /* The bytes skipped were not read. */
  if (d->chashing && d->win.held > old)
    XXH64_update (d->cxxh, ad_window_at (&d->win, old), d->win.held - old);
  d->next = d->win.held;
  d->inb.src = p;
  d->inb.size = avail;
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
  d->dctx = get_dctx (priv);
  if (d->dctx == NULL) {
    put_dctx (priv, d->dctx);
    free (d);
    return ad_error_set (err, ENOMEM, "out of memory for the decoder");
  }
  d->usize = frame->usize;
  d->state = DEC_BETWEEN;
  d->has_sum = has_sum;
  d->sum = sum;
  *dp = d;
  return 0;
}

int
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

void
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
  ad_window_free (&d->win);
  free (d);
}

/* The end of the range: the final checks.  Returns 0, or -1 with err. */
static int
dec_range_end (struct zstd_decoder *d, struct ad_error *err)
{
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

/* Check the header of the frame at p (file offset offset) against the
 * index and set the decoder up for it.  Returns 0, or -1 with err.
 */
static int
dec_frame_setup (struct zstd_decoder *d, const unsigned char *p,
                 uint64_t offset, struct ad_error *err)
{
  struct frame_header h;
  unsigned log;
  size_t r;

  if (zstd_parse_frame_header (p, offset, &h, err) == -1)
    return -1;
  if (h.has_fcs && h.fcs != d->usize)
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " declares a content size of %" PRIu64 " bytes, "
                         "the index %" PRIu64, offset, h.fcs, d->usize);
  if (zstd_window_log (&h, d->priv->max_frame, offset, &log, err) == -1)
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
  return 0;
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

  if (dec_fill (d, src, FRAME_HEADER_MAX, err) == -1)
    return -1;
  p = (const unsigned char *) d->inb.src + d->inb.pos;
  avail = d->inb.size - d->inb.pos;
  offset = dec_offset (d);

  if (avail == 0)
    return dec_range_end (d, err);
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
  if (avail < FRAME_HEADER_MIN || avail < zstd_frame_header_size (p[4]))
    return ad_error_set (err, EIO, "frame header at offset %" PRIu64
                         " is truncated", offset);
  if (dec_frame_setup (d, p, offset, err) == -1)
    return -1;
  d->seen_frame = true;
  d->frame_start = true;
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
/* The whole zstd frame decoded in one call straight into out, when
 * all of its bytes are in the input buffer and out has room for what
 * the index declares.  ZSTD_decompressStream would decode into its own
 * window and copy out of it (unless the frame declares its content
 * size); this saves that copy.  libzstd checks the frame's content
 * checksum here as it does when streaming.  Returns true if it worked
 * (*n bytes are in out, the frame is consumed); false leaves
 * everything as it was, for the streaming decoder, which then finds
 * and describes whatever is wrong.
 */
static bool
dec_whole (struct zstd_decoder *d, void *out, size_t count, size_t *n)
{
  const void *p = (const unsigned char *) d->inb.src + d->inb.pos;
  size_t avail = d->inb.size - d->inb.pos, csize, r;

  if (count < d->usize)
    return false;
  csize = ZSTD_findFrameCompressedSize (p, avail);
  if (ZSTD_isError (csize) || csize > avail)
    return false;
  r = ZSTD_decompressDCtx (d->dctx, out, d->usize, p, csize);
  if (ZSTD_isError (r)) {
    ZSTD_DCtx_reset (d->dctx, ZSTD_reset_session_only);
    return false;
  }
  d->inb.pos += csize;
  *n = r;
  return true;
}

ssize_t
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
      bool whole = false;

      if (d->inb.pos == d->inb.size && dec_fill (d, src, 1, err) == -1)
        return -1;
      before = d->inb.pos;
      if (d->frame_start) {
        d->frame_start = false;
        whole = dec_whole (d, out, count, &ob.pos);
      }
      r = whole ? 0 : ZSTD_decompressStream (d->dctx, &ob, &d->inb);
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
int
zstd_check_empty_frame (struct zstd_priv *priv, struct ad_source *src,
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
