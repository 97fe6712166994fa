/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: a window on the compressed bytes (see window.h).
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

#include "window.h"

void
ad_window_init (struct ad_window *w, struct ad_source *src,
                uint64_t start, uint64_t end)
{
  memset (w, 0, sizeof *w);
  w->src = src;
  w->start = w->base = w->held = start;
  w->end = end;
  w->chunk = end - start <= AD_WINDOW_WHOLE ? end - start : AD_WINDOW_CHUNK;
}

/* Own memory of at least len bytes to read into, holding the keep bytes
 * at from first.  With buffers from the user it is a fresh one.
 */
static unsigned char *
own_memory (struct ad_window *w, const unsigned char *from, size_t keep,
            size_t len, struct ad_error *err)
{
  unsigned char *nb;

  if (w->buffers) {
    if (len > w->buffers->size) {
      ad_error_set (err, EIO, "internal error: %zu bytes do not fit in a "
                    "%zu-byte window buffer", len, w->buffers->size);
      return NULL;
    }
    nb = w->buffers->get (w->buffers->opaque, err);
    if (nb == NULL)
      return NULL;
    if (keep > 0)
      memcpy (nb, from, keep);
    w->buffers->put (w->buffers->opaque, w->buf);
    w->buf = nb;
    w->alloc = w->buffers->size;
    return nb;
  }
  if (len <= w->alloc) {
    if (keep > 0)
      memmove (w->buf, from, keep);
    return w->buf;
  }
  nb = malloc (len);
  if (nb == NULL) {
    ad_error_set (err, ENOMEM, "cannot allocate %zu bytes for compressed "
                  "data: %m", len);
    return NULL;
  }
  if (keep > 0)
    memcpy (nb, from, keep);
  free (w->buf);
  w->buf = nb;
  w->alloc = len;
  return nb;
}

const unsigned char *
ad_window_need (struct ad_window *w, uint64_t pos, size_t n, size_t *avail,
                struct ad_error *err)
{
  struct ad_loan *old = w->loan, *loan = NULL;
  const void *data;
  const unsigned char *p;
  uint64_t left;
  size_t len, keep;
  unsigned char *nb;

  if (pos < w->start || pos > w->end) {
    ad_error_set (err, EIO, "internal error: offset %" PRIu64 " is outside "
                  "the window [%" PRIu64 ", %" PRIu64 ")", pos, w->start,
                  w->end);
    return NULL;
  }
  left = w->end - pos;
  if (n > left)
    n = left;
  if (w->data && pos >= w->base && pos <= w->held && n <= w->held - pos) {
    *avail = w->held - pos;
    return ad_window_at (w, pos);
  }
  if (left == 0) {
    /* Nothing is held and nothing is left: an empty piece at pos. */
    w->base = w->held = pos;
    w->data = w->buf ? w->buf : (const unsigned char *) "";
    *avail = 0;
    return w->data;
  }

  /* The rest of the range in place. */
  if (!w->mapped && old == NULL &&
      (p = ad_source_map (w->src, pos, left)) != NULL) {
    w->data = p;
    w->mapped = true;
    w->base = pos;
    w->held = w->end;
    *avail = left;
    return p;
  }

  len = w->chunk > n ? w->chunk : n;
  if (len > left)
    len = left;
  if (w->buffers && len > w->buffers->size)
    len = w->buffers->size > n ? w->buffers->size : n;

  if (w->lend || old) {
    /* Read all of [pos, pos + len), the kept bytes included: a lent
     * piece is lent whole.  Bytes kept from a loan are still in the
     * source's memory (the old loan holds them), so reading them again
     * reads nothing below.  Where the source does not lend, it copies
     * into own memory.
     */
    nb = own_memory (w, NULL, 0, len, err);
    if (nb == NULL ||
        ad_source_read (w->src, nb, len, pos, &data,
                        w->lend ? &loan : NULL, err) == -1)
      goto fail;
    ad_loan_return (old);
    w->loan = loan;
    w->data = data;
  }
  else {
    keep = w->data && pos >= w->base && pos < w->held ? w->held - pos : 0;
    nb = own_memory (w, keep ? ad_window_at (w, pos) : NULL, keep, len, err);
    if (nb == NULL ||
        ad_source_pread (w->src, nb + keep, len - keep, pos + keep,
                         err) == -1)
      goto fail;
    w->data = nb;
  }
  w->mapped = false;
  w->base = pos;
  w->held = pos + len;
  *avail = len;
  return w->data;

 fail:
  /* What was held may have moved or gone: hold nothing. */
  ad_window_drop (w, pos);
  return NULL;
}

void
ad_window_drop (struct ad_window *w, uint64_t pos)
{
  ad_loan_return (w->loan);
  w->loan = NULL;
  w->data = NULL;
  w->mapped = false;
  w->base = w->held = pos;
}

void
ad_window_seek (struct ad_window *w, uint64_t pos)
{
  if (w->data == NULL || pos < w->base || pos > w->held)
    ad_window_drop (w, pos);
}

void
ad_window_show (struct ad_window *w, const unsigned char *data, size_t len)
{
  ad_window_drop (w, w->start);
  w->data = data;
  w->held = w->start + len;
}

void
ad_window_adopt (struct ad_window *w, unsigned char *buf, size_t len)
{
  ad_window_show (w, buf, len);
  free (w->buf);
  w->buf = buf;
  w->alloc = len;
}

void
ad_window_free (struct ad_window *w)
{
  ad_loan_return (w->loan);
  w->loan = NULL;
  if (w->buffers)
    w->buffers->put (w->buffers->opaque, w->buf);
  else
    free (w->buf);
  w->buf = NULL;
  w->alloc = 0;
  w->data = NULL;
  w->mapped = false;
  w->base = w->held = w->start;
}
