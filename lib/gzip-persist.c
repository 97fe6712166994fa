/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip images, the persisted index: saving and loading
 * checkpoints, and the partial index of GZ_LAZY with the pass that
 * goes on from one (see docs/index-format.md and gzip.c).
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>

#include "persist.h"
#include "seekable-formats.h"
#include "gzip-int.h"

/* Checkpoint types in the persisted index. */
enum { CK_UNUSED = 0, CK_HEADER = 1, CK_POINT = 2 };

static void
put_u8 (struct ad_buf *out, uint8_t v)
{
  ad_buf_put (out, &v, 1);
}

static void
save_ckpt (struct ad_buf *out, const struct gz_ckpt *ck,
           const struct gz_ckpt *pt)
{
  if (ck->at_header) {
    put_u8 (out, CK_HEADER);
    ad_buf_put_le32 (out, ck->span_crc);
    return;
  }
  if (ck->is_point)
    pt = ck;
  if (pt == NULL || !pt->is_point) {
    put_u8 (out, CK_UNUSED);
    return;
  }
  put_u8 (out, CK_POINT);
  ad_buf_put_le32 (out, ck->span_crc);
  ad_buf_put_le64 (out, pt->coff);
  put_u8 (out, pt->bits);
  ad_buf_put_le64 (out, pt->skip);
  ad_buf_put_le32 (out, pt->win_raw);
  ad_buf_put_le32 (out, pt->win_len);
  if (pt->win_len > 0)
    ad_buf_put (out, pt->win, pt->win_len);
}

/* Partial indexes.
 *
 * A GZ_LAZY pass with a persisted index writes the index as it goes
 * (see gz_advance), so its points are found incrementally: priv->scan
 * stays where the last write left it, and each write scans only the
 * member's data after that, keeping the points it finds in priv->pts
 * (memory of the order of the snapshots') until the index is complete.
 * A partial file holds the frames so far, the checkpoints they use and
 * the member's CRC32 so far; the first advance after loading one
 * (gz_pass_resume) decodes the last frame again from its checkpoint,
 * checks it against its span's CRC32 and takes that decoder's state,
 * at the end of what the file covers, as the pass's, so the pass goes
 * on from there with the member's CRC32 and size so far, and its check
 * of the trailer covers the whole member.  Decoding the last span again
 * (one span, against its CRC32) is what makes the state the pass goes
 * on from one the file cannot get wrong unnoticed.
 *
 * The writes cost what writing the index at the end did: a copy of a
 * 256 MiB one-member image (gzip -6, 79 MiB) with the index takes
 * 1.62-1.86 s of server CPU writing it every 64 MiB, 1.64-1.99 s
 * writing it at the end only (0.78-0.88 s without an index; the zlib
 * scan is the difference), 2.8 MB of file.  A read of its last MiB
 * after a restart that loads the index written at half way takes
 * 0.91-1.12 s of CPU, against 1.64-1.84 s from no file (both scan
 * what they index with zlib; 0.83-1.02 s without autodecomp-index).
 */

/* The member's CRC32 over frames [0, n), all spans of one member. */
static uint32_t
frames_crc (const struct ad_index *idx, const struct gz_priv *priv,
            size_t n)
{
  uint32_t crc = 0;
  size_t i;

  for (i = 0; i < n; i++)
    crc = crc32_combine (crc, priv->ckpts[idx->frames[i].aux].span_crc,
                         (z_off_t) idx->frames[i].usize);
  return crc;
}

/* Are the frames spans of one member: the first at its header, the
 * others at later checkpoints?
 */
static bool
lazy_spans (const struct ad_index *idx, const struct gz_priv *priv)
{
  size_t i;

  for (i = 0; i < idx->nframes; i++)
    if (!gz_frame_has_ckpt (priv, &idx->frames[i]) ||
        (i == 0) != priv->ckpts[idx->frames[i].aux].at_header)
      return false;
  return true;
}

/* GZ_LAZY: find the points of the frames appended since the last
 * write, going on with priv->scan.
 */
static int
lazy_points (struct ad_index *idx, struct gz_priv *priv,
             struct ad_source *src, struct ad_error *err)
{
  const struct ad_frame *m = &idx->frames[0];

  if (priv->pts_alloc < priv->nckpts) {
    struct gz_ckpt *p = realloc (priv->pts, priv->nckpts * sizeof *p);
    if (p == NULL)
      return ad_error_set (err, ENOMEM, "realloc: %m");
    memset (p + priv->pts_alloc, 0,
            (priv->nckpts - priv->pts_alloc) * sizeof *p);
    priv->pts = p;
    priv->pts_alloc = priv->nckpts;
  }
  if (!lazy_spans (idx, priv))
    return ad_error_set (err, EIO, "the frames are not spans of one "
                         "member");
  if (priv->scan_next == 0)
    priv->scan_next = 1;
  if (priv->scan_next >= idx->nframes)
    return 0;
  if (priv->scan == NULL) {
    /* Start at the frame before the first without a point: the header,
     * or a point loaded from a file.
     */
    const struct ad_frame *f = &idx->frames[priv->scan_next - 1];
    const struct gz_ckpt *ck = &priv->ckpts[f->aux];
    int r;

    priv->scan = gz_scan_new (src, err);
    if (priv->scan == NULL)
      return -1;
    if (ck->at_header)
      r = gz_scan_at_header (priv->scan, f->coff, err);
    else if (ck->is_point)
      r = gz_scan_at_point (priv->scan, ck, f->uoff - m->uoff, err);
    else if (priv->pts[f->aux].is_point)
      r = gz_scan_at_point (priv->scan, &priv->pts[f->aux], f->uoff - m->uoff,
                            err);
    else
      r = ad_error_set (err, EIO, "no point to scan from");
    if (r == -1) {
      gz_scan_free (priv->scan);
      priv->scan = NULL;
      return ad_error_in_frame (err, "gzip", priv->scan_next - 1, f->coff);
    }
  }
  priv->scan->src = src;
  if (gz_scan_frames (priv->scan, m, idx->frames, priv->scan_next,
                      idx->nframes, priv->pts, err) == -1) {
    /* Start again from the last point found, next time. */
    gz_scan_free (priv->scan);
    priv->scan = NULL;
    return -1;
  }
  priv->scan_next = idx->nframes;
  return 0;
}

/* Forget the points of a complete GZ_LAZY index, once written. */
void
gz_lazy_points_free (struct gz_priv *priv)
{
  size_t i;

  gz_scan_free (priv->scan);
  priv->scan = NULL;
  for (i = 0; i < priv->pts_alloc; i++)
    free (priv->pts[i].win);
  free (priv->pts);
  priv->pts = NULL;
  priv->pts_alloc = 0;
  priv->scan_next = 0;
}

/* GZ_LAZY after loading a partial index: start the pass at the end of
 * the frames loaded, from the state of a decoder of the last one (see
 * "Partial indexes" above).  On failure nothing changes and the next
 * advance tries again; a last frame that does not decode to its span's
 * CRC32 fails every time (the image is not the one indexed).
 */
int
gz_pass_resume (struct ad_index *idx, struct gz_priv *priv,
                struct ad_source *src, struct ad_error *err)
{
  size_t last = ad_index_nframes (idx) - 1;
  struct gz_decoder *d = NULL;
  struct gz_pass *P;
  struct gz_ckpt ck;
  struct ad_frame f, first;
  uint64_t pos;
  void *dv;
  ssize_t r;

  ad_index_get_frame (idx, last, &f);
  ad_index_get_frame (idx, 0, &first);
  P = gz_pass_new (idx, src, true, gz_pass_span (idx, idx->size), NULL, 0,
                   err);
  if (P == NULL)
    return ad_error_in_frame (err, "gzip", last, f.coff);
  if (gz_decoder_new (idx, &f, last, &dv, err) == -1)
    goto fail;
  d = dv;
  do {
    r = gz_decoder_read (d, src, P->out, P->out_alloc, err);
    if (r == -1) {
      ad_error_prefix (err, "going on from the partial index (remove it "
                       "to index the image again): its last span");
      goto fail;
    }
  } while (r > 0);

  /* The decoder's state, at the end of the last span, is the pass's;
   * its input goes on where the decoder's stopped.
   */
  pos = gz_dec_pos (d);
  free (P->st);
  P->st = d->st;
  d->st = NULL;
  gz_input_seek (&P->in, P->st, pos);
  if (gz_pass_fill (P, src, 1, err) == -1)
    goto fail;
  P->members = 1;
  P->member_coff = first.coff;
  P->member_crc = priv->loaded_crc;
  P->uoff = P->span_uoff = P->member_usize = f.uoff + f.usize;
  P->state = PS_DATA;

  /* The next span's checkpoint, as pass_checkpoint takes it. */
  memset (&ck, 0, sizeof ck);
  ck.coff = gz_pass_pos (P);
  if (gz_snap_take (P, &ck, err) == -1)
    goto fail;
  if (gz_ckpt_add (priv, &ck, &P->span_ckpt, err) == -1) {
    free (ck.snap);
    goto fail;
  }
  P->resume_ckpt = P->span_ckpt;
  P->resume_uoff = P->uoff;
  P->resume_member_crc = P->member_crc;
  P->resume_member_usize = P->member_usize;
  gz_decoder_free (d);
  priv->pass = P;
  priv->resume = false;
  return 0;

 fail:
  gz_decoder_free (d);
  gz_pass_free (P);
  return ad_error_in_frame (err, "gzip", last, f.coff);
}

/* Do the frames of idx (an index of that kind) tile the file of
 * file_size bytes (see ad_frames_tile)?  BGZF members follow each
 * other, with perhaps the end-of-file marker (an empty member) between
 * two of them and at the end.  Otherwise each member follows the one
 * before, and a span ends where the next begins or, since its inflater
 * reads ahead, a few bytes later (which span of the member it is, its
 * checkpoint says); a partial index ends before the file.
 */
static bool
frames_tile (const struct ad_index *idx, uint32_t kind, uint64_t file_size)
{
  if (kind == GZ_BGZF)
    return ad_frames_tile (idx, file_size, AD_BGZF_EOF_SIZE, 0);
  return ad_frames_tile (idx, file_size, 0, AD_TILE_OVERLAP |
                         (idx->indexed != idx->size ? AD_TILE_PARTIAL : 0));
}

/* The persisted index keeps the frame table, the kind of index, and
 * every checkpoint: a member header, or the restorable point of a span
 * (found by gz_scan_all, or by lazy_points as GZ_LAZY goes), with
 * the span's CRC32; a partial index then the member's CRC32 so far.
 * See docs/index-format.md.
 */
int
gz_save (struct ad_index *idx, struct ad_source *src, struct ad_buf *out,
         const char **why)
{
  struct gz_priv *priv = idx->priv;
  bool partial = idx->indexed != idx->size;
  bool lazy = priv->kind == GZ_LAZY && idx->nframes > 0 &&
    gz_frame_has_ckpt (priv, &idx->frames[0]);
  struct gz_ckpt *pts;
  size_t i, n;
  int r = -1;

  if (!frames_tile (idx, priv->kind, src->size)) {
    *why = "its frames leave a gap in the file (more than one BGZF "
      "end-of-file marker in a row, or data after the last member), "
      "which a loaded index cannot have";
    return -1;
  }
  if (partial && !lazy) {
    *why = "the index is not complete";
    return -1;
  }
  ad_error_clear (&priv->save_err);
  if (lazy) {
    if (lazy_points (idx, priv, src, &priv->save_err) == -1) {
      *why = priv->save_err.msg;
      return -1;
    }
    pts = priv->pts;
    /* The checkpoints the frames use: not the one of the span the pass
     * is in, so that going on from the file numbers the next one as
     * the pass did.
     */
    n = partial ? idx->frames[idx->nframes - 1].aux + 1 : priv->nckpts;
  }
  else {
    pthread_mutex_lock (&priv->lock);
    n = priv->nckpts;
    pthread_mutex_unlock (&priv->lock);
    pts = calloc (n ? n : 1, sizeof *pts);
    if (pts == NULL) {
      *why = "out of memory";
      return -1;
    }
    if (gz_scan_all (idx, priv, src, pts, &priv->save_err) == -1) {
      *why = priv->save_err.msg;
      goto out;
    }
  }
  ad_buf_put_le32 (out, priv->kind);
  ad_buf_put_le64 (out, n);
  for (i = 0; i < n; i++)
    save_ckpt (out, &priv->ckpts[i], &pts[i]);
  if (partial)
    ad_buf_put_le32 (out, frames_crc (idx, priv, idx->nframes));
  r = 0;
 out:
  if (lazy) {
    if (!partial)
      gz_lazy_points_free (priv);
  }
  else {
    for (i = 0; i < n; i++)
      free (pts[i].win);
    free (pts);
  }
  return r;
}

/* Read one checkpoint; false if it is malformed. */
static bool
load_ckpt (struct ad_cursor *in, struct gz_ckpt *ck)
{
  uint8_t type;
  const unsigned char *p;

  memset (ck, 0, sizeof *ck);
  if (!ad_cursor_get_u8 (in, &type) || type > CK_POINT)
    return false;
  if (type == CK_UNUSED)
    return true;
  if (!ad_cursor_get_le32 (in, &ck->span_crc))
    return false;
  if (type == CK_HEADER) {
    ck->at_header = true;
    return true;
  }
  ck->is_point = true;
  if (!ad_cursor_get_le64 (in, &ck->coff) ||
      !ad_cursor_get_u8 (in, &ck->bits) ||
      !ad_cursor_get_le64 (in, &ck->skip) ||
      !ad_cursor_get_le32 (in, &ck->win_raw) ||
      !ad_cursor_get_le32 (in, &ck->win_len) ||
      ck->bits > 7 || ck->win_raw > WINDOW_SIZE ||
      ck->win_len > ZSTD_compressBound (WINDOW_SIZE) + 4 ||
      (ck->win_len == 0) != (ck->win_raw == 0) ||
      in->left < ck->win_len)
    return false;
  if (ck->win_len == 0)
    return true;
  p = in->p;
  in->p += ck->win_len;
  in->left -= ck->win_len;
  if (ZSTD_getFrameContentSize (p, ck->win_len) != ck->win_raw)
    return false;
  ck->win = malloc (ck->win_len);
  if (ck->win == NULL)
    return false;
  memcpy (ck->win, p, ck->win_len);
  return true;
}

/* Check a point against its frame, the member's first frame m and the
 * point before (prev: the byte where the member's data may start, or
 * the last point's byte), then move the frame to start at the point's
 * byte.  Every bound keeps a lying point from costing more than its
 * span could: it lies in the member, before the span's own data, in
 * order, with a window of all the output before it up to 32 KiB and a
 * skip that its compressed bytes could produce.
 */
static bool
load_point (struct ad_frame *f, const struct ad_frame *m,
            struct gz_ckpt *ck, uint64_t *prev)
{
  uint64_t rel = f->uoff - m->uoff, at, end = f->coff + f->csize;

  if (ck->coff < *prev || ck->coff > f->coff || ck->skip > rel)
    return false;
  at = rel - ck->skip;
  if (ck->win_raw != (at < WINDOW_SIZE ? at : WINDOW_SIZE))
    return false;
  if ((ck->skip + f->usize - 1) / MAX_RATIO >= end - ck->coff)
    return false;
  *prev = ck->coff;
  f->coff = ck->coff;
  f->csize = end - ck->coff;
  return true;
}

/* Check the frames against the checkpoints: whole members stand alone;
 * a member's first span starts at a header checkpoint, its other spans
 * at points; each checkpoint serves one frame.
 */
static bool
load_frames_ckpts (struct ad_index *idx, struct gz_priv *priv)
{
  bool *used = calloc (priv->nckpts ? priv->nckpts : 1, sizeof *used);
  const struct ad_frame *m = NULL;
  uint64_t prev = 0;
  bool ok = false;
  size_t i;

  if (used == NULL)
    return false;
  for (i = 0; i < idx->nframes; i++) {
    struct ad_frame *f = &idx->frames[i];
    struct gz_ckpt *ck;

    if (f->aux32 != 0)
      goto out;
    if (f->aux == AUX_WHOLE) {
      if (f->csize < MEMBER_MIN ||
          (priv->kind == GZ_BGZF && (f->csize > AD_BGZF_MEMBER_MAX ||
                                     f->usize > AD_BGZF_ISIZE_MAX)))
        goto out;
      m = NULL;
      continue;
    }
    if (priv->kind == GZ_BGZF || f->aux >= priv->nckpts || used[f->aux])
      goto out;
    used[f->aux] = true;
    ck = &priv->ckpts[f->aux];
    if (ck->at_header) {
      ck->coff = f->coff;
      m = f;
      prev = f->coff + 10;
    }
    else if (!ck->is_point || m == NULL || !load_point (f, m, ck, &prev))
      goto out;
  }
  ok = true;
 out:
  free (used);
  return ok;
}

/* A partial index (persist.c checked that its frames cover a part of
 * the image) is of one member indexed as reads go, from offset 0, of a
 * size that a trailer gives (ISIZE: below 4 GiB, which bounds the span
 * of the pass that goes on): its first frame at the member's header,
 * every other at a point.  Then the member's CRC32 so far, which must
 * be that of its spans.
 */
static bool
load_partial (struct ad_index *idx, struct gz_priv *priv,
              struct ad_cursor *in)
{
  uint32_t crc;

  if (priv->kind != GZ_LAZY || idx->nframes == 0 ||
      idx->size > UINT32_MAX || idx->frames[0].coff != 0)
    return false;
  if (!lazy_spans (idx, priv) ||
      !ad_cursor_get_le32 (in, &crc) ||
      crc != frames_crc (idx, priv, idx->nframes))
    return false;
  priv->loaded_crc = crc;
  priv->appended = priv->saved_upto = idx->indexed;
  priv->scan_next = idx->nframes;
  priv->resume = true;
  return true;
}

int
gz_load (struct ad_index *idx, struct ad_cursor *in, uint64_t file_size)
{
  struct gz_priv *priv;
  uint32_t kind;
  uint64_t n, i;
  bool ok;

  if (!ad_cursor_get_le32 (in, &kind) ||
      (kind != GZ_BGZF && kind != GZ_LAZY && kind != GZ_FULL) ||
      !ad_cursor_get_le64 (in, &n) || n > in->left)
    return -1;
  priv = calloc (1, sizeof *priv);
  if (priv == NULL)
    return -1;
  pthread_mutex_init (&priv->lock, NULL);
  priv->kind = kind;
  idx->priv = priv;
  if (!frames_tile (idx, kind, file_size))
    return -1;
  /* As gz_bgzf_index says, whatever the file's flags say. */
  if (kind == GZ_BGZF)
    idx->sizes_unchecked = true;
  /* The table grows as checkpoints are read, so a count that the bytes
   * do not back costs nothing.
   */
  for (i = 0; i < n; i++) {
    struct gz_ckpt ck;
    struct ad_error e;
    size_t at;

    ok = load_ckpt (in, &ck);
    if (gz_ckpt_add (priv, &ck, &at, &e) == -1) {
      free (ck.win);
      return -1;
    }
    if (!ok)
      return -1;
  }
  pthread_mutex_lock (&idx->lock);
  ok = load_frames_ckpts (idx, priv);
  pthread_mutex_unlock (&idx->lock);
  if (ok && idx->indexed != idx->size)
    ok = load_partial (idx, priv, in);
  return ok ? 0 : -1;
}
