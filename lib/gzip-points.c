/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip images, restorable points: the scan that finds the
 * points the persisted index keeps in place of snapshots (see below,
 * and gzip.c).
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "gzip-int.h"

#define POINT_OUT (256 * 1024)          /* See scan_to. */
#define WIN_ZSTD_LEVEL 3

/* Restorable points (the persisted index).
 *
 * A snapshot is ISA-L's internal state, which it would use as it is, so
 * it is never taken from a file.  The persisted index keeps instead,
 * for each span that does not start at a member header, a point from
 * which a fresh decoder reaches the span from the file's own bytes
 * (as zlib's examples/zran.c): a deflate block boundary (the byte
 * holding it and the 0-7 bits of that byte that belong to the block
 * before), the up to 32 KiB of output before the boundary (the window,
 * kept compressed with zstd, with zstd's checksum), and skip, the
 * output from the boundary to the span's start.  dec_point starts a span there: the window as
 * the dictionary, the byte's remaining bits in the bit buffer, skip
 * bytes decoded and dropped.  Block headers, Huffman codes and data
 * are then all parsed from the file, and the span's CRC32 is checked
 * as after a snapshot, so a damaged point gives an error, never wrong
 * bytes.
 *
 * ISA-L cannot stop at a block boundary, so gz_save finds the points
 * with a second pass over each member that has spans, by zlib's inflate
 * with Z_BLOCK (which returns at every block boundary), only when an
 * index is written: after the GZ_FULL pass at open, and as the GZ_LAZY
 * pass goes (see "Partial indexes" in gzip-persist.c), each write
 * scanning only what the one before did not.  The indexing pass itself
 * is unchanged, and a pass that writes no index costs nothing
 * more.  Writing one costs one more read of those members and a zlib
 * decode of them: on a 256 MiB one-member image (gzip -6, 79 MiB),
 * 0.80 s of CPU against 0.45 s for the ISA-L pass, once per image.
 * (Running zlib beside the pass instead would save the read but hold
 * the lazy pass, and so the first reads, to zlib's speed.)
 */

static uint64_t
scan_pos (const struct pt_scan *S)
{
  return ad_window_offset (&S->in, S->zs.next_in);
}

/* Give zlib the bytes from its position on (at most GZ_INPUT_MAX). */
static int
scan_fill (struct pt_scan *S, struct ad_error *err)
{
  uint64_t pos = scan_pos (S);
  const unsigned char *p;
  size_t n;

  p = ad_window_need (&S->in, pos, 1, &n, err);
  if (p == NULL)
    return -1;
  S->zs.next_in = (Bytef *) p;
  S->zs.avail_in = n < GZ_INPUT_MAX ? n : GZ_INPUT_MAX;
  return 0;
}

/* Inflate was stopped at a block boundary: remember it and its window.
 * zlib reports in data_type the unused bits of the last byte it took.
 */
static void
scan_boundary (struct pt_scan *S)
{
  unsigned unused = S->zs.data_type & 7;

  S->b_off = scan_pos (S) - (unused ? 1 : 0);
  S->b_bits = unused ? 8 - unused : 0;
  S->b_out = S->total;
  S->win_len = S->total < WINDOW_SIZE ? S->total : WINDOW_SIZE;
  memcpy (S->win, S->out + S->opos - S->win_len, S->win_len);
}

/* Inflate until the member's output reaches target. */
static int
scan_to (struct pt_scan *S, uint64_t target, uint64_t mcoff,
         struct ad_error *err)
{
  while (S->total < target) {
    size_t room, n;
    uInt in_before;
    int r;

    if (S->zs.avail_in == 0 && scan_fill (S, err) == -1)
      return -1;
    if (S->opos == WINDOW_SIZE + POINT_OUT) {
      memmove (S->out, S->out + S->opos - WINDOW_SIZE, WINDOW_SIZE);
      S->opos = WINDOW_SIZE;
    }
    room = WINDOW_SIZE + POINT_OUT - S->opos;
    if (room > target - S->total)
      room = target - S->total;
    S->zs.next_out = S->out + S->opos;
    S->zs.avail_out = room;
    in_before = S->zs.avail_in;
    r = inflate (&S->zs, Z_BLOCK);
    n = room - S->zs.avail_out;
    S->opos += n;
    S->total += n;
    if (r == Z_STREAM_END)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 " ends "
                           "after %" PRIu64 " bytes, before its span at %"
                           PRIu64, mcoff, S->total, target);
    if (r != Z_OK && r != Z_BUF_ERROR)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": "
                           "invalid deflate data near offset %" PRIu64
                           ": %s", mcoff, scan_pos (S),
                           S->zs.msg ? S->zs.msg : "inflate error");
    if ((S->zs.data_type & 128) && !(S->zs.data_type & 64))
      scan_boundary (S);
    else if (n == 0 && S->zs.avail_in == in_before &&
             (S->zs.avail_in > 0 || S->in.held >= S->in.end))
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": no "
                           "progress finding points near offset %" PRIu64,
                           mcoff, scan_pos (S));
  }
  return 0;
}

/* Make ck (a span's checkpoint, a copy) the point for the span at
 * member output offset target.
 */
static int
scan_point (struct pt_scan *S, struct gz_ckpt *ck, uint64_t target,
            struct ad_error *err)
{
  size_t bound = ZSTD_compressBound (WINDOW_SIZE) + 4, n;

  free (ck->win);
  memset (ck, 0, sizeof *ck);
  ck->is_point = true;
  ck->coff = S->b_off;
  ck->bits = S->b_bits;
  ck->skip = target - S->b_out;
  ck->win_raw = S->win_len;
  if (S->win_len == 0)
    return 0;
  if (S->cctx == NULL) {
    S->cctx = ZSTD_createCCtx ();
    if (S->cctx == NULL)
      return ad_error_set (err, ENOMEM, "ZSTD_createCCtx failed");
    /* The window's own checksum: a damaged one fails to decompress. */
    ZSTD_CCtx_setParameter (S->cctx, ZSTD_c_compressionLevel,
                            WIN_ZSTD_LEVEL);
    ZSTD_CCtx_setParameter (S->cctx, ZSTD_c_checksumFlag, 1);
  }
  ck->win = malloc (bound);
  if (ck->win == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  n = ZSTD_compress2 (S->cctx, ck->win, bound, S->win, S->win_len);
  if (ZSTD_isError (n))
    return ad_error_set (err, EIO, "compressing a window: %s",
                         ZSTD_getErrorName (n));
  ck->win_len = n;
  return 0;
}

/* A new scan (gz_scan_at_header or gz_scan_at_point starts it); NULL if
 * memory ran out.
 */
struct pt_scan *
gz_scan_new (struct ad_source *src, struct ad_error *err)
{
  struct pt_scan *S = calloc (1, sizeof *S);

  if (S == NULL) {
    ad_error_set (err, ENOMEM, "calloc: %m");
    return NULL;
  }
  S->src = src;
  ad_window_init (&S->in, src, 0, src->size);
  S->in.chunk = AD_WINDOW_CHUNK;
  S->out = malloc (WINDOW_SIZE + POINT_OUT);
  if (S->out == NULL) {
    ad_error_set (err, ENOMEM, "malloc: %m");
    free (S);
    return NULL;
  }
  return S;
}

void
gz_scan_free (struct pt_scan *S)
{
  if (S == NULL)
    return;
  if (S->zs_ready)
    inflateEnd (&S->zs);
  ZSTD_freeCCtx (S->cctx);
  ad_window_free (&S->in);
  free (S->out);
  free (S);
}

/* A fresh raw inflate, its input read from offset coff. */
static int
scan_reset (struct pt_scan *S, uint64_t coff, struct ad_error *err)
{
  if (S->zs_ready)
    inflateEnd (&S->zs);
  memset (&S->zs, 0, sizeof S->zs);
  S->zs_ready = false;
  if (inflateInit2 (&S->zs, -15) != Z_OK)
    return ad_error_set (err, ENOMEM, "inflateInit2 failed");
  S->zs_ready = true;
  ad_window_seek (&S->in, coff);
  S->zs.next_in = (Bytef *) (S->in.data ? ad_window_at (&S->in, coff) : NULL);
  S->win_len = 0;
  S->opos = 0;
  return scan_fill (S, err);
}

/* Start the scan at the member header at coff. */
int
gz_scan_at_header (struct pt_scan *S, uint64_t coff, struct ad_error *err)
{
  struct gz_header h;

  if (scan_reset (S, coff, err) == -1)
    return -1;
  if (gz_parse_header (S->zs.next_in, S->zs.avail_in < HEADER_MAX
                       ? S->zs.avail_in : HEADER_MAX, coff, &h, err) == -1)
    return -1;
  S->zs.next_in += h.len;
  S->zs.avail_in -= h.len;
  S->total = S->b_out = 0;
  S->b_off = scan_pos (S);
  S->b_bits = 0;
  return 0;
}

/* Start the scan at the point ck of the span at member output offset
 * rel (a point load_point checked), as dec_point starts a decoder.
 */
int
gz_scan_at_point (struct pt_scan *S, const struct gz_ckpt *ck, uint64_t rel,
                  struct ad_error *err)
{
  if (scan_reset (S, ck->coff, err) == -1)
    return -1;
  if (ck->win_raw > 0) {
    if (gz_point_window (ck, S->out, err) == -1)
      return -1;
    if (inflateSetDictionary (&S->zs, S->out, ck->win_raw) != Z_OK)
      return ad_error_set (err, EIO, "the window of the point at offset %"
                           PRIu64 " is refused", ck->coff);
    memcpy (S->win, S->out, ck->win_raw);
  }
  S->opos = S->win_len = ck->win_raw;
  if (ck->bits > 0) {
    if (S->zs.avail_in == 0)
      return ad_error_set (err, EIO, "the point at offset %" PRIu64
                           " is past the end of the file", ck->coff);
    if (inflatePrime (&S->zs, 8 - ck->bits,
                      S->zs.next_in[0] >> ck->bits) != Z_OK)
      return ad_error_set (err, EIO, "the point at offset %" PRIu64
                           " is refused", ck->coff);
    S->zs.next_in++;
    S->zs.avail_in--;
  }
  S->total = S->b_out = rel - ck->skip;
  S->b_off = ck->coff;
  S->b_bits = ck->bits;
  return 0;
}

/* The points of frames f[from] to f[to - 1], spans of the member whose
 * first frame is m, in order after where the scan stands; pts is
 * indexed by checkpoint number.
 */
int
gz_scan_frames (struct pt_scan *S, const struct ad_frame *m,
                const struct ad_frame *f, size_t from, size_t to,
                struct gz_ckpt *pts, struct ad_error *err)
{
  size_t k;

  for (k = from; k < to; k++) {
    uint64_t target = f[k].uoff - m->uoff;

    if (scan_to (S, target, m->coff, err) == -1 ||
        scan_point (S, &pts[f[k].aux], target, err) == -1)
      return ad_error_in_frame (err, "gzip", k, f[k].coff);
  }
  return 0;
}

bool
gz_frame_has_ckpt (const struct gz_priv *priv, const struct ad_frame *f)
{
  return f->aux != AUX_WHOLE && f->aux < priv->nckpts;
}

/* Find the points of every span that starts at a snapshot; pts (one per
 * checkpoint, zeroed) gets them.
 */
int
gz_scan_all (struct ad_index *idx, struct gz_priv *priv, struct ad_source *src,
             struct gz_ckpt *pts, struct ad_error *err)
{
  struct pt_scan *S = gz_scan_new (src, err);
  size_t i = 0, j;
  int r = -1;

  if (S == NULL)
    return -1;
  while (i < idx->nframes) {
    const struct ad_frame *f = &idx->frames[i];

    for (j = i + 1; j < idx->nframes &&
           gz_frame_has_ckpt (priv, &idx->frames[j]) &&
           !priv->ckpts[idx->frames[j].aux].at_header; j++)
      ;
    if (j > i + 1 && gz_frame_has_ckpt (priv, f) &&
        priv->ckpts[f->aux].at_header &&
        !priv->ckpts[idx->frames[i + 1].aux].is_point) {
      if (gz_scan_at_header (S, f->coff, err) == -1) {
        ad_error_in_frame (err, "gzip", i, f->coff);
        goto out;
      }
      if (gz_scan_frames (S, f, idx->frames, i + 1, j, pts, err) == -1)
        goto out;
    }
    i = j;
  }
  r = 0;
 out:
  gz_scan_free (S);
  return r;
}
