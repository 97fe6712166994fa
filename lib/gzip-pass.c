/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip images, the sequential inflate pass (GZ_LAZY and
 * GZ_FULL): checkpoints, the frames collected before the size is known,
 * the pass itself (see gzip.c).
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>

#include <isa-l/crc.h>

#include "buffer.h"
#include "seekable-formats.h"
#include "gzip-int.h"

#ifndef MAX_SNAP_BYTES                  /* (The fuzz build lowers it.) */
#define MAX_SNAP_BYTES (1ULL << 30)     /* Checkpoint state kept, total. */
#endif
#define LAZY_SNAP_BYTES (1ULL << 30)    /* The same for GZ_LAZY (which the
                                           fuzz build does not lower). */
#define SPAN_INPUT_SLACK 8              /* See pass_checkpoint. */
#define PASS_OUTPUT (1024 * 1024)       /* Output buffer, not kept. */

/* Checkpoints. */

int
gz_ckpt_add (struct gz_priv *priv, const struct gz_ckpt *ck, size_t *i,
             struct ad_error *err)
{
  int r = 0;

  pthread_mutex_lock (&priv->lock);
  if (priv->nckpts == priv->ckpts_alloc) {
    size_t n = priv->ckpts_alloc ? priv->ckpts_alloc * 2 : 64;
    struct gz_ckpt *p = realloc (priv->ckpts, n * sizeof *p);
    if (p == NULL) {
      r = ad_error_set (err, ENOMEM, "realloc: %m");
      goto out;
    }
    priv->ckpts = p;
    priv->ckpts_alloc = n;
  }
  *i = priv->nckpts;
  priv->ckpts[priv->nckpts++] = *ck;
  priv->snap_bytes += ck->snap_len;
 out:
  pthread_mutex_unlock (&priv->lock);
  return r;
}

static void
ckpt_set_crc (struct gz_priv *priv, size_t i, uint32_t crc)
{
  pthread_mutex_lock (&priv->lock);
  priv->ckpts[i].span_crc = crc;
  pthread_mutex_unlock (&priv->lock);
}

/* Collected frames (GZ_BGZF and GZ_FULL know the size only at the
 * end).
 */

int
gz_coll_push (struct gz_priv *priv, const struct ad_frame *f,
              struct ad_error *err)
{
  if (priv->ncoll == priv->coll_alloc) {
    size_t n = priv->coll_alloc ? priv->coll_alloc * 2 : 256;
    struct ad_frame *p = realloc (priv->coll, n * sizeof *p);
    if (p == NULL)
      return ad_error_set (err, ENOMEM, "realloc: %m");
    priv->coll = p;
    priv->coll_alloc = n;
  }
  priv->coll[priv->ncoll++] = *f;
  return 0;
}

int
gz_coll_append_all (struct ad_index *idx, struct gz_priv *priv, uint64_t size,
                    struct ad_error *err)
{
  size_t i;

  idx->size = size;
  for (i = 0; i < priv->ncoll; i++)
    if (ad_index_append_frame (idx, &priv->coll[i], err) == -1)
      return -1;
  free (priv->coll);
  priv->coll = NULL;
  priv->ncoll = priv->coll_alloc = 0;
  return 0;
}

/* Merge pairs of neighbouring spans of the same member, freeing the
 * snapshot of the second: halves the state held by a sizing pass.
 * Only during open, before any decoder exists.
 */
static void
coll_coalesce (struct gz_priv *priv)
{
  size_t i, j = 0;
  bool merged = true;

  for (i = 0; i < priv->ncoll; i++) {
    struct ad_frame *a = j > 0 ? &priv->coll[j - 1] : NULL;
    struct ad_frame *b = &priv->coll[i];

    if (a && !merged && a->aux != AUX_WHOLE && b->aux != AUX_WHOLE &&
        !priv->ckpts[b->aux].at_header) {
      struct gz_ckpt *ca = &priv->ckpts[a->aux];
      struct gz_ckpt *cb = &priv->ckpts[b->aux];

      ca->span_crc = crc32_combine (ca->span_crc, cb->span_crc,
                                    (z_off_t) b->usize);
      a->usize += b->usize;
      a->csize = b->coff + b->csize - a->coff;
      free (cb->snap);
      cb->snap = NULL;
      priv->snap_bytes -= cb->snap_len;
      cb->snap_len = 0;
      merged = true;
    }
    else {
      priv->coll[j++] = *b;
      merged = false;
    }
  }
  priv->ncoll = j;
}

/* The pass. */

uint64_t
gz_pass_pos (const struct gz_pass *P)
{
  return gz_input_pos (&P->in, P->st);
}

int
gz_pass_fill (struct gz_pass *P, struct ad_source *src, size_t want,
              struct ad_error *err)
{
  return gz_input_fill (&P->in, P->st, src, want, err);
}

void
gz_pass_free (struct gz_pass *P)
{
  if (P == NULL)
    return;
  free (P->st);
  ad_window_free (&P->in);
  if (P->lazy)
    ad_buffer_free (P->out, P->out_alloc);
  else
    free (P->out);
  ZSTD_freeCCtx (P->cctx);
  free (P->zbuf);
  free (P);
}

/* Start a pass at the beginning of the file.  buf (n bytes from malloc,
 * read from offset 0), if not NULL, becomes the pass's input, so those
 * bytes are not read again; it is freed on error.  Buffers are sized
 * by the file, so a tiny file costs little memory.
 */
struct gz_pass *
gz_pass_new (struct ad_index *idx, struct ad_source *src, bool lazy,
             uint64_t span, unsigned char *buf, size_t n, struct ad_error *err)
{
  struct gz_pass *P = calloc (1, sizeof *P);

  if (P == NULL) {
    free (buf);
    ad_error_set (err, ENOMEM, "calloc: %m");
    return NULL;
  }
  P->lazy = lazy;
  P->limit = idx->size;
  P->span = span;
  ad_window_init (&P->in, src, 0, src->size);
  P->in.chunk = AD_WINDOW_CHUNK;
  if (buf)
    ad_window_adopt (&P->in, buf, n);
  if (lazy) {
    /* Output stops at every span's end (see pass_inflate), so a span
     * never holds more than span bytes, nor more than the image.  The
     * buffer is a large one (buffer.h), which emit may take as it is
     * (see ad_emit_fn).
     */
    P->out_alloc = span < P->limit ? span : P->limit;
    if (P->out_alloc == 0)
      P->out_alloc = 1;
    P->out = ad_buffer_alloc (P->out_alloc);
  }
  else {
    P->out_alloc = PASS_OUTPUT;
    /* A ring: any size works, a small file needs little. */
    if (n < AD_WINDOW_CHUNK && n < PASS_OUTPUT / 16)
      P->out_alloc = PASS_OUTPUT / 16;
    P->out = malloc (P->out_alloc);
  }
  P->st = malloc (sizeof *P->st);
  if (P->out == NULL || P->st == NULL) {
    ad_error_set (err, ENOMEM, "malloc: %m");
    gz_pass_free (P);
    return NULL;
  }
  gz_isal_start (P->st);
  gz_input_seek (&P->in, P->st, 0);
  P->state = PS_HEADER;
  P->resume_ckpt = NO_CKPT;
  return P;
}

/* Hand a finished frame on: GZ_LAZY appends it and emits its bytes,
 * GZ_FULL collects it.
 */
static int
pass_frame (struct gz_priv *priv, struct ad_index *idx, struct gz_pass *P,
            const struct ad_frame *f, const void *data,
            ad_emit_fn *emit, void *opaque, struct ad_error *err)
{
  if (f->usize == 0)
    return 0;
  if (P->lazy) {
    if (ad_index_append_frame (idx, f, err) == -1)
      return -1;
    priv->appended += f->usize;
    if (emit && data) {
      void *buf = P->out;

      emit (opaque, idx, ad_index_nframes (idx) - 1, &buf, P->out_alloc);
      /* If emit took the buffer, the next span goes into the one it
       * gave, or a new one (pass_inflate).
       */
      P->out = buf;
    }
    return 0;
  }
  if (gz_coll_push (priv, f, err) == -1)
    return -1;
  if (priv->snap_bytes > MAX_SNAP_BYTES) {
    coll_coalesce (priv);
    P->span *= 2;
  }
  return 0;
}

/* Only zero padding may follow the last member. */
static int
pass_skip_zeros (struct gz_pass *P, struct ad_source *src,
                 struct ad_error *err)
{
  for (;;) {
    size_t i;

    if (gz_pass_fill (P, src, 1, err) == -1)
      return -1;
    if (P->st->avail_in == 0)
      return 0;
    for (i = 0; i < P->st->avail_in; i++)
      if (P->st->next_in[i] != 0)
        return ad_error_set (err, EIO, "unexpected data (byte 0x%02x) at "
                             "offset %" PRIu64 " after the last member "
                             "(only zero padding may follow it)",
                             P->st->next_in[i], gz_pass_pos (P) + i);
    P->st->next_in += P->st->avail_in;
    P->st->avail_in = 0;
  }
}

/* At a member boundary: start the next member.  Returns 1 if one
 * started, 0 at the end of the file.
 */
static int
pass_member_start (struct gz_pass *P, struct ad_source *src,
                   struct ad_error *err)
{
  struct gz_header h;
  uint64_t pos;

  if (gz_pass_fill (P, src, HEADER_MAX, err) == -1)
    return -1;
  pos = gz_pass_pos (P);
  if (P->st->avail_in == 0)
    return 0;
  if (P->st->next_in[0] == 0) {
    if (pass_skip_zeros (P, src, err) == -1)
      return -1;
    return 0;
  }
  if (P->lazy && P->members > 0)
    return ad_error_set (err, EIO, "unexpected data at offset %" PRIu64
                         " after the member", pos);
  if (P->st->next_in[0] != 0x1f)
    return ad_error_set (err, EIO, "unexpected data (byte 0x%02x) at "
                         "offset %" PRIu64 " after the last member (only "
                         "zero padding may follow it)", P->st->next_in[0],
                         pos);
  if (gz_parse_header (P->st->next_in, P->st->avail_in, pos, &h, err) == -1)
    return -1;
  P->st->next_in += h.len;
  P->st->avail_in -= h.len;
  isal_inflate_reset (P->st);
  P->st->crc_flag = ISAL_DEFLATE;

  P->members++;
  P->member_coff = pos;
  P->member_usize = 0;
  P->member_crc = 0;
  P->span_uoff = P->uoff;
  P->span_len = 0;
  P->span_crc = 0;
  P->span_ckpt = NO_CKPT;
  P->out_pos = 0;
  P->state = PS_DATA;
  return 1;
}

/* Fold the current span into the member's CRC32 and size. */
static void
pass_close_span (struct gz_pass *P)
{
  P->member_crc = crc32_combine (P->member_crc, P->span_crc,
                                 (z_off_t) P->span_len);
  P->member_usize += P->span_len;
}

/* The span is full: snapshot the inflate state as the next span's
 * checkpoint and hand the span on.
 *
 * The span's compressed range runs from its checkpoint to where the
 * next one's input goes on.  The state read its input ahead into its
 * bit buffer, so every bit the span needs lies before that offset;
 * SPAN_INPUT_SLACK bytes more (within the file) keep the range from
 * being empty when the state already held a whole span's bits, as a
 * small span of zeros can.
 */
static int
pass_checkpoint (struct gz_priv *priv, struct ad_index *idx,
                 struct gz_pass *P, struct ad_source *src,
                 ad_emit_fn *emit, void *opaque, struct ad_error *err)
{
  struct gz_ckpt ck;
  struct ad_frame f;
  uint64_t start, cend;
  size_t next;

  memset (&ck, 0, sizeof ck);
  ck.coff = gz_pass_pos (P);
  if (gz_snap_take (P, &ck, err) == -1)
    return -1;

  /* The span that ends here, starting at the member's header if it is
   * the member's first.
   */
  if (P->span_ckpt == NO_CKPT) {
    struct gz_ckpt hc;

    memset (&hc, 0, sizeof hc);
    hc.coff = P->member_coff;
    hc.at_header = true;
    hc.span_crc = P->span_crc;
    if (gz_ckpt_add (priv, &hc, &P->span_ckpt, err) == -1) {
      free (ck.snap);
      return -1;
    }
  }
  else
    ckpt_set_crc (priv, P->span_ckpt, P->span_crc);
  if (gz_ckpt_add (priv, &ck, &next, err) == -1) {
    free (ck.snap);
    return -1;
  }

  pthread_mutex_lock (&priv->lock);
  start = priv->ckpts[P->span_ckpt].coff;
  pthread_mutex_unlock (&priv->lock);
  cend = ck.coff + SPAN_INPUT_SLACK;
  if (cend > src->size)
    cend = src->size;
  memset (&f, 0, sizeof f);
  f.uoff = P->span_uoff;
  f.usize = P->span_len;
  f.coff = start;
  f.csize = cend - start;
  f.aux = P->span_ckpt;
  pass_close_span (P);
  if (pass_frame (priv, idx, P, &f,
                  P->lazy ? P->out : NULL,
                  emit, opaque, err) == -1)
    return -1;

  P->span_uoff = P->uoff;
  P->span_len = 0;
  P->span_crc = 0;
  P->span_ckpt = next;
  P->out_pos = 0;

  /* A later failure resumes here. */
  P->resume_ckpt = next;
  P->resume_uoff = P->uoff;
  P->resume_member_crc = P->member_crc;
  P->resume_member_usize = P->member_usize;
  return 0;
}

/* The deflate stream ended: check the trailer, hand on the last span. */
static int
pass_member_end (struct gz_priv *priv, struct ad_index *idx,
                 struct gz_pass *P, struct ad_source *src,
                 ad_emit_fn *emit, void *opaque, struct ad_error *err)
{
  struct ad_frame f;
  uint64_t tpos = gz_input_stream_end (&P->in, P->st), mend;
  uint32_t crc, isize;

  gz_input_seek (&P->in, P->st, tpos);
  if (gz_pass_fill (P, src, AD_GZIP_TRAILER_SIZE, err) == -1)
    return -1;
  if (P->st->avail_in < AD_GZIP_TRAILER_SIZE)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 ": the "
                         "trailer at offset %" PRIu64 " is truncated",
                         P->member_coff, tpos);
  crc = ad_le32 (P->st->next_in);
  isize = ad_le32 (P->st->next_in + 4);
  P->st->next_in += AD_GZIP_TRAILER_SIZE;
  P->st->avail_in -= AD_GZIP_TRAILER_SIZE;
  mend = tpos + AD_GZIP_TRAILER_SIZE;

  pass_close_span (P);
  if (crc != P->member_crc)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 ": CRC32 "
                         "mismatch (trailer at offset %" PRIu64 " says "
                         "%08" PRIx32 ", the data has %08" PRIx32 ")",
                         P->member_coff, tpos, crc, P->member_crc);
  if (isize != (uint32_t) P->member_usize)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 ": ISIZE "
                         "mismatch (trailer at offset %" PRIu64 " says %"
                         PRIu32 ", the data has %" PRIu64 " bytes)",
                         P->member_coff, tpos, isize, P->member_usize);
  if (P->lazy) {
    /* Nothing may follow (the size came from the last bytes of the
     * file), checked before the last frame makes the index complete.
     */
    if (pass_skip_zeros (P, src, err) == -1) {
      if (!err->transient)
        ad_error_prefix (err, "the member taken to be the whole file ends "
                         "at offset %" PRIu64 " but more follows ("
                         AD_SIZE_CHECK_HINT ")", mend);
      return -1;
    }
    if (P->uoff != P->limit)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 " decodes "
                           "to %" PRIu64 " bytes, not the %" PRIu64 " its "
                           "trailer implied", P->member_coff, P->uoff,
                           P->limit);
  }

  memset (&f, 0, sizeof f);
  f.uoff = P->span_uoff;
  f.usize = P->span_len;
  if (P->span_ckpt == NO_CKPT) {
    f.coff = P->member_coff;
    f.aux = AUX_WHOLE;
  }
  else {
    ckpt_set_crc (priv, P->span_ckpt, P->span_crc);
    pthread_mutex_lock (&priv->lock);
    f.coff = priv->ckpts[P->span_ckpt].coff;
    pthread_mutex_unlock (&priv->lock);
    f.aux = P->span_ckpt;
  }
  f.csize = mend - f.coff;
  if (pass_frame (priv, idx, P, &f,
                  P->lazy ? P->out : NULL,
                  emit, opaque, err) == -1)
    return -1;
  P->state = P->lazy ? PS_DONE : PS_HEADER;
  return 0;
}

/* Inflate until the current span ends (at a checkpoint or at the end of
 * the member) and its frame has been handed on.  Output stops exactly
 * at each span's end, where the checkpoint is taken.
 */
static int
pass_inflate (struct gz_priv *priv, struct ad_index *idx, struct gz_pass *P,
              struct ad_source *src, ad_emit_fn *emit, void *opaque,
              struct ad_error *err)
{
  for (;;) {
    unsigned char *dst;
    size_t room, n;
    bool probe;
    uint32_t in_before;
    int r;

    if (P->st->avail_in == 0 && gz_pass_fill (P, src, 1, err) == -1)
      return -1;
    /* emit took the last buffer and none could be had then. */
    if (P->out == NULL && (P->out = ad_buffer_alloc (P->out_alloc)) == NULL)
      return ad_error_set (err, ENOMEM, "cannot allocate %zu bytes for the "
                           "pass's output", P->out_alloc);

    /* A kept span is full only where the image's size is reached
     * (spans end at checkpoints before that): one byte more, into
     * past, shows whether the member runs on (an error below).  A ring
     * starts again.
     */
    probe = P->lazy && P->out_pos == P->out_alloc;
    if (!P->lazy && P->out_pos == P->out_alloc)
      P->out_pos = 0;
    if (probe) {
      dst = &P->past;
      room = 1;
    }
    else {
      dst = P->out + P->out_pos;
      room = P->out_alloc - P->out_pos;
      if (room > INFLATE_MAX)
        room = INFLATE_MAX;
      if (P->span_len < P->span && room > P->span - P->span_len)
        room = P->span - P->span_len;
    }
    P->st->next_out = dst;
    P->st->avail_out = room;
    in_before = P->st->avail_in;

    r = gz_isal_call (P->st);

    n = room - P->st->avail_out;
    if (n > 0) {
      P->span_crc = crc32_gzip_refl (P->span_crc, dst, n);
      if (!probe)
        P->out_pos += n;
      P->span_len += n;
      P->uoff += n;
      if (P->lazy && P->uoff > P->limit)
        return ad_error_set (err, EIO, "member at offset %" PRIu64
                             " decodes to more than the %" PRIu64 " bytes "
                             "the trailer at the end of the file implied: "
                             "either the file holds several members ("
                             AD_SIZE_CHECK_HINT ") or the image is 4 GiB "
                             "or larger (the trailer holds the size modulo "
                             "4 GiB: serve it with "
                             "autodecomp-gzip-size=decode)", P->member_coff,
                             P->limit);
    }
    if (r < 0)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": "
                           "invalid deflate data near offset %" PRIu64
                           ": %s", P->member_coff, gz_pass_pos (P),
                           gz_isal_msg (r));
    if (P->st->block_state == ISAL_BLOCK_FINISH)
      return pass_member_end (priv, idx, P, src, emit, opaque, err);
    /* In lazy mode the span that reaches the size the trailer gave is
     * closed only by the member's end, after its trailer is checked: a
     * checkpoint exactly there would complete the index unverified
     * (and hide a member of 4 GiB or more).
     */
    if (P->span_len >= P->span && !(P->lazy && P->uoff >= P->limit))
      return pass_checkpoint (priv, idx, P, src, emit, opaque, err);
    if (n == 0 && P->st->avail_in == in_before) {
      if (P->st->avail_in == 0 && P->in.held >= P->in.end)
        return ad_error_set (err, EIO, "member at offset %" PRIu64 " is "
                             "truncated: the file ends inside its deflate "
                             "data", P->member_coff);
      if (P->st->avail_in > 0)
        return ad_error_set (err, EIO, "member at offset %" PRIu64 ": "
                             "inflate makes no progress at offset %"
                             PRIu64, P->member_coff, gz_pass_pos (P));
    }
  }
}

/* Advance the pass by one frame.  Returns 1 if it made progress, 0 when
 * the file is done, -1 on error.
 */
int
gz_pass_step (struct gz_priv *priv, struct ad_index *idx, struct gz_pass *P,
              struct ad_source *src, ad_emit_fn *emit, void *opaque,
              struct ad_error *err)
{
  int r;

  switch (P->state) {
  case PS_DONE:
    return 0;
  case PS_HEADER:
    r = pass_member_start (P, src, err);
    if (r == -1)
      return -1;
    if (r == 0) {
      P->state = PS_DONE;
      return 0;
    }
    return 1;
  case PS_DATA:
    if (pass_inflate (priv, idx, P, src, emit, opaque, err) == -1)
      return -1;
    return 1;
  }
  abort ();
}

/* GZ_LAZY, after a failure: put the pass back at the start of the span
 * it was decoding (the last checkpoint, or the start of the file), so
 * that a transient error (EIO from the plugin below, ENOMEM) is not
 * remembered.  A definite error in the data is found again by the next
 * attempt, from the same checkpoint, so it fails the same way.
 *
 * Checkpoints added after the resume point belong to no frame (the
 * frame that would have used them was never appended): they are
 * dropped, so that repeated failures do not pile up snapshots.  If this
 * fails (the read at the checkpoint), the pass stays broken and the
 * next advance tries again.
 */
int
gz_pass_rewind (struct gz_priv *priv, struct gz_pass *P, struct ad_source *src,
                struct ad_error *err)
{
  struct gz_ckpt ck;
  size_t keep = P->resume_ckpt == NO_CKPT ? 0 : P->resume_ckpt + 1;

  pthread_mutex_lock (&priv->lock);
  while (priv->nckpts > keep) {
    struct gz_ckpt *c = &priv->ckpts[--priv->nckpts];
    free (c->snap);
    priv->snap_bytes -= c->snap_len;
  }
  if (keep > 0)
    ck = priv->ckpts[P->resume_ckpt];
  pthread_mutex_unlock (&priv->lock);

  P->span_len = 0;
  P->span_crc = 0;
  P->out_pos = 0;

  if (keep == 0) {
    /* From the start of the file, as gz_pass_new left it. */
    gz_isal_start (P->st);
    gz_input_seek (&P->in, P->st, 0);
    P->members = 0;
    P->uoff = P->span_uoff = 0;
    P->member_crc = 0;
    P->member_usize = 0;
    P->span_ckpt = NO_CKPT;
    P->state = PS_HEADER;
    P->broken = false;
    return 0;
  }

  if (gz_snap_restore (P->st, &ck, err) == -1)
    return -1;
  gz_input_seek (&P->in, P->st, ck.coff);
  if (gz_pass_fill (P, src, 1, err) == -1)
    return -1;
  P->members = 1;
  P->uoff = P->span_uoff = P->resume_uoff;
  P->member_crc = P->resume_member_crc;
  P->member_usize = P->resume_member_usize;
  P->span_ckpt = P->resume_ckpt;
  P->state = PS_DATA;
  P->broken = false;
  return 0;
}

/* GZ_FULL: decode everything now. */
int
gz_sizing_pass (struct ad_index *idx, struct gz_priv *priv, uint64_t span,
                struct ad_source *src, unsigned char *buf, size_t n,
                struct ad_error *err)
{
  struct gz_pass *P;
  int r;

  priv->kind = GZ_FULL;
  P = gz_pass_new (idx, src, false, span, buf, n, err);
  if (P == NULL)
    return -1;
  while ((r = gz_pass_step (priv, idx, P, src, NULL, NULL, err)) == 1)
    ;
  if (r == 0 && P->members == 0)
    r = ad_error_set (err, EIO, "no member found");
  if (r == 0)
    r = gz_coll_append_all (idx, priv, P->uoff, err);
  gz_pass_free (P);
  return r;
}

/* The span of a pass: opts.gzip_span, leaving room in max_frame for a
 * block's overshoot.  For GZ_LAZY (size known, else 0) it is widened
 * so that the snapshots stay within LAZY_SNAP_BYTES, at the largest
 * each (as if none compressed).
 */
uint64_t
gz_pass_span (const struct ad_index *idx, uint64_t size)
{
  uint64_t span = idx->opts.gzip_span ? idx->opts.gzip_span
    : AD_DEFAULT_GZIP_SPAN;
  uint64_t max_spans = LAZY_SNAP_BYTES / ZSTD_compressBound (SNAP_MAX);

  if (idx->opts.max_frame >= 2 && span > idx->opts.max_frame / 2)
    span = idx->opts.max_frame / 2;
  if (max_spans == 0)
    max_spans = 1;
  if (size > 0 && span < size / max_spans + 1)
    span = size / max_spans + 1;
  return span;
}
