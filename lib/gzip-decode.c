/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip images, the decoder of one index frame: a whole
 * member, or a span from its checkpoint (see gzip.c).
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>

#include <isa-l/crc.h>

#include "seekable-formats.h"
#include "gzip-int.h"

#define POINT_SCRATCH (64 * 1024)       /* At least WINDOW_SIZE. */

/* Decoders. */

int
gz_decoder_new (struct ad_index *idx, const struct ad_frame *frame,
                size_t frame_no, void **decoder, struct ad_error *err)
{
  struct gz_priv *priv = idx->priv;
  struct gz_decoder *d = calloc (1, sizeof *d);

  (void) frame_no;
  if (d == NULL)
    return ad_error_set (err, ENOMEM, "calloc: %m");
  d->priv = priv;
  d->f = *frame;
  if (frame->aux == AUX_WHOLE) {
    d->whole = true;
    d->at_header = true;
  }
  else {
    struct gz_ckpt ck;
    bool ok;

    pthread_mutex_lock (&priv->lock);
    ok = frame->aux < priv->nckpts;
    if (ok)
      ck = priv->ckpts[frame->aux];
    pthread_mutex_unlock (&priv->lock);
    if (!ok || (ck.snap == NULL && !ck.at_header && !ck.is_point) ||
        ck.coff != frame->coff) {
      free (d);
      return ad_error_set (err, EIO, "the frame's checkpoint %" PRIu64
                           " is not in the index", frame->aux);
    }
    d->at_header = ck.at_header;
    d->ck = ck;
    d->want_crc = ck.span_crc;
  }
  *decoder = d;
  return 0;
}

void
gz_decoder_free (void *decoder)
{
  struct gz_decoder *d = decoder;

  if (d == NULL)
    return;
  free (d->st);
  ad_window_free (&d->in);
  free (d);
}

uint64_t
gz_dec_pos (const struct gz_decoder *d)
{
  return gz_input_pos (&d->in, d->st);
}

/* Refill the input with the frame's next compressed bytes. */
static int
dec_fill (struct gz_decoder *d, struct ad_source *src, size_t want,
          struct ad_error *err)
{
  return gz_input_fill (&d->in, d->st, src, want, err);
}

static int dec_inflate (struct gz_decoder *d, struct ad_source *src,
                        void *out, size_t count, size_t *n, bool *starved,
                        struct ad_error *err);

/* The window of a point, decompressed into buf (WINDOW_SIZE bytes). */
int
gz_point_window (const struct gz_ckpt *ck, unsigned char *buf,
                 struct ad_error *err)
{
  size_t n = ZSTD_decompress (buf, WINDOW_SIZE, ck->win, ck->win_len);

  if (ZSTD_isError (n) || n != ck->win_raw)
    return ad_error_set (err, EIO, "the window of the point at offset %"
                         PRIu64 " does not decompress", ck->coff);
  return 0;
}

/* Put the fresh state at a restorable point, its input at the point's
 * byte: the window as the dictionary, the byte's bits after the
 * boundary in the bit buffer, then skip bytes of output discarded.
 * Everything after the window is parsed from the file itself.
 */
static int
dec_point (struct gz_decoder *d, struct ad_source *src, struct ad_error *err)
{
  unsigned char *scratch = malloc (POINT_SCRATCH);
  uint64_t left = d->ck.skip;
  int r = -1;

  if (scratch == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (d->ck.win_raw > 0) {
    if (gz_point_window (&d->ck, scratch, err) == -1)
      goto out;
    if (isal_inflate_set_dict (d->st, scratch, d->ck.win_raw) != COMP_OK) {
      ad_error_set (err, EIO, "the window of the point at offset %" PRIu64
                    " is refused", d->ck.coff);
      goto out;
    }
  }
  if (d->ck.bits > 0) {
    if (d->st->avail_in == 0) {
      ad_error_set (err, EIO, "the point at offset %" PRIu64 " is past "
                    "the frame's data", d->ck.coff);
      goto out;
    }
    d->st->read_in = d->st->next_in[0] >> d->ck.bits;
    d->st->read_in_length = 8 - d->ck.bits;
    d->st->next_in++;
    d->st->avail_in--;
  }
  while (left > 0) {
    size_t want = left < POINT_SCRATCH ? left : POINT_SCRATCH, n = 0;
    bool starved = false;

    if (dec_inflate (d, src, scratch, want, &n, &starved, err) == -1)
      goto out;
    left -= n;
    if (left > 0 && (d->ended || starved)) {
      ad_error_set (err, EIO, "the data from the point at offset %" PRIu64
                    " ends %" PRIu64 " bytes before the span", d->ck.coff,
                    left);
      goto out;
    }
  }
  r = 0;
 out:
  free (scratch);
  return r;
}

static int
dec_start (struct gz_decoder *d, struct ad_source *src, struct ad_error *err)
{
  if (d->f.csize == 0 || d->f.coff > src->size ||
      d->f.csize > src->size - d->f.coff)
    return ad_error_set (err, EIO, "compressed range of %" PRIu64 " bytes "
                         "is outside the %" PRIu64 "-byte file",
                         d->f.csize, src->size);
  ad_window_init (&d->in, src, d->f.coff, d->f.coff + d->f.csize);
  d->st = malloc (sizeof *d->st);
  if (d->st == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (d->at_header || d->ck.is_point)
    gz_isal_start (d->st);
  else if (gz_snap_restore (d->st, &d->ck, err) == -1)
    return -1;
  d->st->next_in = NULL;
  d->st->avail_in = 0;
  if (dec_fill (d, src, 1, err) == -1)
    return -1;

  if (d->at_header) {
    struct gz_header h;
    size_t avail = d->st->avail_in < HEADER_MAX ? d->st->avail_in
      : HEADER_MAX;

    if (gz_parse_header (d->st->next_in, avail, d->f.coff, &h, err) == -1)
      return -1;
    d->st->next_in += h.len;
    d->st->avail_in -= h.len;
  }
  else if (d->ck.is_point && dec_point (d, src, err) == -1)
    return -1;
  d->started = true;
  return 0;
}

/* The member ended: its trailer must close the frame's range and match. */
static int
dec_check_trailer (struct gz_decoder *d, struct ad_source *src,
                   struct ad_error *err)
{
  uint64_t tpos = gz_input_stream_end (&d->in, d->st);
  uint32_t crc, isize;

  if (tpos + AD_GZIP_TRAILER_SIZE != d->in.end)
    return ad_error_set (err, EIO, "the deflate data ends at offset %"
                         PRIu64 ", but the member's trailer should be at "
                         "offset %" PRIu64, tpos,
                         d->in.end - AD_GZIP_TRAILER_SIZE);
  gz_input_seek (&d->in, d->st, tpos);
  if (dec_fill (d, src, AD_GZIP_TRAILER_SIZE, err) == -1)
    return -1;
  if (d->st->avail_in < AD_GZIP_TRAILER_SIZE)
    return ad_error_set (err, EIO, "the trailer at offset %" PRIu64
                         " is truncated", tpos);
  crc = ad_le32 (d->st->next_in);
  isize = ad_le32 (d->st->next_in + 4);
  if (crc != d->crc)
    return ad_error_set (err, EIO, "CRC32 mismatch (trailer at offset %"
                         PRIu64 " says %08" PRIx32 ", the data has %08"
                         PRIx32 ")", tpos, crc, d->crc);
  if (isize != (uint32_t) d->done)
    return ad_error_set (err, EIO, "ISIZE mismatch (trailer at offset %"
                         PRIu64 " says %" PRIu32 ", the data has %" PRIu64
                         " bytes)", tpos, isize, d->done);
  return 0;
}

static ssize_t dec_read (struct gz_decoder *d, struct ad_source *src,
                         void *out, size_t count, struct ad_error *err);

/* After an error the decoder stays failed (it never answers 0 later). */
ssize_t
gz_decoder_read (void *decoder, struct ad_source *src, void *out,
                 size_t count, struct ad_error *err)
{
  struct gz_decoder *d = decoder;
  ssize_t r;

  if (d->failed)
    return ad_error_set (err, EIO, "the decoder failed earlier");
  r = dec_read (d, src, out, count, err);
  if (r == -1)
    d->failed = true;
  return r;
}

/* A libdeflate decompressor of the image's pool (they hold no state
 * between calls, and making one per member costs page faults), or a
 * new one; NULL if memory ran out.
 */
static struct libdeflate_decompressor *
ld_get (struct gz_priv *priv)
{
  struct libdeflate_decompressor *ld = NULL;

  pthread_mutex_lock (&priv->lock);
  if (priv->nlds > 0)
    ld = priv->lds[--priv->nlds];
  pthread_mutex_unlock (&priv->lock);
  return ld ? ld : libdeflate_alloc_decompressor ();
}

static void
ld_put (struct gz_priv *priv, struct libdeflate_decompressor *ld)
{
  pthread_mutex_lock (&priv->lock);
  if (priv->nlds < LD_POOL_MAX) {
    priv->lds[priv->nlds++] = ld;
    ld = NULL;
  }
  pthread_mutex_unlock (&priv->lock);
  if (ld)
    libdeflate_free_decompressor (ld);
}

/* A whole member decoded in one call into the caller's buffer, by
 * libdeflate (about twice as fast as zlib's inflate: see gzip.c).
 * Returns 1 if it worked and every check passed (the frame is done),
 * 0 if the caller should decode it again with ISA-L from a clean state
 * (which then finds and describes whatever is wrong), -1 on a read
 * error.
 */
static int
dec_whole_fast (struct gz_decoder *d, struct ad_source *src, void *out,
                struct ad_error *err)
{
  struct libdeflate_decompressor *ld;
  struct gz_header h;
  struct ad_error scratch;
  const unsigned char *p, *t;
  size_t clen = d->f.csize, in_used, out_used, avail;
  enum libdeflate_result r;

  if (clen > AD_WINDOW_WHOLE || clen < MEMBER_MIN ||
      d->f.coff > src->size || clen > src->size - d->f.coff)
    return 0;
  ad_window_init (&d->in, src, d->f.coff, d->f.coff + clen);
  p = ad_window_need (&d->in, d->f.coff, clen, &avail, err);
  if (p == NULL)
    return -1;
  if (gz_parse_header (p, clen < HEADER_MAX ? clen : HEADER_MAX, d->f.coff, &h,
                       &scratch) == -1 ||
      clen - h.len < 2 + AD_GZIP_TRAILER_SIZE)
    return 0;
  ld = ld_get (d->priv);
  if (ld == NULL)
    return 0;
  r = libdeflate_deflate_decompress_ex (ld, p + h.len,
                                        clen - h.len - AD_GZIP_TRAILER_SIZE,
                                        out, d->f.usize, &in_used,
                                        &out_used);
  ld_put (d->priv, ld);
  if (r != LIBDEFLATE_SUCCESS || out_used != d->f.usize ||
      in_used != clen - h.len - AD_GZIP_TRAILER_SIZE)
    return 0;
  t = p + clen - AD_GZIP_TRAILER_SIZE;
  d->crc = crc32_gzip_refl (0, out, out_used);
  if (ad_le32 (t) != d->crc || ad_le32 (t + 4) != (uint32_t) out_used)
    return 0;
  d->done = out_used;
  d->started = d->ended = true;
  return 1;
}

/* Inflate up to count bytes into out; *n says how many came.  Stops
 * early at the end of the member (d->ended) or when the frame's input
 * is used up and the state makes no more progress (*starved).
 */
static int
dec_inflate (struct gz_decoder *d, struct ad_source *src, void *out,
             size_t count, size_t *n, bool *starved, struct ad_error *err)
{
  d->st->next_out = out;
  d->st->avail_out = count;
  while (d->st->avail_out > 0) {
    uint32_t before_in, before_out;
    int r;

    /* With all input read, the state may still hold output (in its
     * bit buffer, or decoded but not delivered): call it anyway, and
     * only call the data short when it makes no progress.
     */
    if (d->st->avail_in == 0 && d->in.held < d->in.end &&
        dec_fill (d, src, 1, err) == -1)
      return -1;
    before_in = d->st->avail_in;
    before_out = d->st->avail_out;
    r = gz_isal_call (d->st);
    if (r < 0)
      return ad_error_set (err, EIO, "invalid deflate data near offset %"
                           PRIu64 ": %s", gz_dec_pos (d), gz_isal_msg (r));
    if (d->st->block_state == ISAL_BLOCK_FINISH) {
      d->ended = true;
      break;
    }
    if (d->st->avail_in == before_in && d->st->avail_out == before_out) {
      if (d->st->avail_in == 0 && d->in.held >= d->in.end) {
        *starved = true;
        break;
      }
      if (d->st->avail_in == 0)
        continue;               /* Refill above. */
      return ad_error_set (err, EIO, "inflate makes no progress at "
                           "offset %" PRIu64, gz_dec_pos (d));
    }
  }
  *n = count - d->st->avail_out;
  return 0;
}

static ssize_t
dec_read (struct gz_decoder *d, struct ad_source *src, void *out,
          size_t count, struct ad_error *err)
{
  bool starved = false;
  size_t n;

  /* The usual case of a whole member (BGZF): all of it at once. */
  if (!d->started && d->whole && count >= d->f.usize && d->f.usize > 0 &&
      d->f.usize <= INFLATE_MAX) {
    int r = dec_whole_fast (d, src, out, err);
    if (r == -1)
      return -1;
    if (r == 1)
      return d->f.usize;
    /* Start again with ISA-L, from a clean state. */
    ad_window_free (&d->in);
    d->crc = 0;
    d->done = 0;
  }
  if (!d->started && dec_start (d, src, err) == -1)
    return -1;
  if (d->ended)
    return 0;                   /* Trailer or span CRC already checked. */
  if (!d->whole) {
    /* A span stops at its size even though the member goes on. */
    if (d->done >= d->f.usize)
      return 0;
    if (count > d->f.usize - d->done)
      count = d->f.usize - d->done;
  }
  if (count > INFLATE_MAX)
    count = INFLATE_MAX;

  if (dec_inflate (d, src, out, count, &n, &starved, err) == -1)
    return -1;
  if (n > 0)
    d->crc = crc32_gzip_refl (d->crc, out, n);
  d->done += n;

  if (d->whole) {
    if (d->ended && dec_check_trailer (d, src, err) == -1)
      return -1;
  }
  else {
    if (d->ended && d->done < d->f.usize)
      return ad_error_set (err, EIO, "the member ends after %" PRIu64
                           " bytes of the %" PRIu64 "-byte span",
                           d->done, d->f.usize);
    if (d->done == d->f.usize) {
      if (d->crc != d->want_crc)
        return ad_error_set (err, EIO, "CRC32 of the span (%08" PRIx32
                             ") differs from the one recorded while "
                             "indexing (%08" PRIx32 ")",
                             d->crc, d->want_crc);
      d->ended = true;
    }
  }
  if (starved && !d->ended)
    return ad_error_set (err, EIO, "the compressed data ends at offset %"
                         PRIu64 " before the frame is complete "
                         "(truncated?)", d->in.end);
  return n;
}
