/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the frame reader (see frame.h).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "format-int.h"
#include "frame.h"

struct ad_frame_reader {
  struct ad_index *idx;
  struct ad_frame frame;
  size_t frame_no;
  void *decoder;
  uint64_t pos;                 /* Bytes produced. */
  bool ended;                   /* The final checks passed. */
  bool failed;
};

struct ad_frame_reader *
ad_frame_reader_open (struct ad_index *idx, const struct ad_frame *frame,
                      size_t frame_no, struct ad_error *err)
{
  struct ad_frame_reader *r = calloc (1, sizeof *r);

  if (r == NULL) {
    ad_error_set (err, ENOMEM, "out of memory for a frame reader");
    ad_error_in_frame (err, idx->ops->name, frame_no, frame->coff);
    return NULL;
  }
  r->idx = idx;
  r->frame = *frame;
  r->frame_no = frame_no;
  if (idx->ops->decoder_new (idx, frame, frame_no, &r->decoder, err) == -1) {
    ad_error_in_frame (err, idx->ops->name, frame_no, frame->coff);
    free (r);
    return NULL;
  }
  return r;
}

static ssize_t
fail (struct ad_frame_reader *r, struct ad_error *err)
{
  r->failed = true;
  if (err->format == NULL && r->pos > 0)
    ad_error_prefix (err, "decoded %" PRIu64 " of %" PRIu64 " bytes",
                     r->pos, r->frame.usize);
  ad_error_in_frame (err, r->idx->ops->name, r->frame_no, r->frame.coff);
  return -1;
}

/* All bytes are out: one more must not exist, which runs the checks. */
static ssize_t
read_end (struct ad_frame_reader *r, struct ad_source *src,
          struct ad_error *err)
{
  char extra;
  ssize_t n;

  n = r->idx->ops->decoder_read (r->decoder, src, &extra, 1, err);
  if (n == -1)
    return fail (r, err);
  if (n > 0) {
    ad_error_set (err, EIO, "decodes to more than the %" PRIu64
                  " bytes the index declares", r->frame.usize);
    return fail (r, err);
  }
  r->ended = true;
  return 0;
}

ssize_t
ad_frame_reader_read (struct ad_frame_reader *r, struct ad_source *src,
                      void *buf, size_t count, struct ad_error *err)
{
  uint64_t left = r->frame.usize - r->pos;
  ssize_t n;

  if (r->failed) {
    ad_error_set (err, EIO, "the frame reader failed before");
    return fail (r, err);
  }
  if (r->ended)
    return 0;
  if (left == 0)
    return read_end (r, src, err);
  if (count > left)
    count = left;
  n = r->idx->ops->decoder_read (r->decoder, src, buf, count, err);
  if (n == -1)
    return fail (r, err);
  if (n == 0) {
    ad_error_set (err, EIO, "decodes to %" PRIu64 " bytes, fewer than "
                  "the %" PRIu64 " the index declares", r->pos,
                  r->frame.usize);
    return fail (r, err);
  }
  if ((size_t) n > count) {
    ad_error_set (err, EIO, "the decoder returned more than it was asked");
    return fail (r, err);
  }
  r->pos += n;
  return n;
}

uint64_t
ad_frame_reader_pos (const struct ad_frame_reader *r)
{
  return r->pos;
}

void
ad_frame_reader_close (struct ad_frame_reader *r)
{
  if (r == NULL)
    return;
  if (r->decoder)
    r->idx->ops->decoder_free (r->decoder);
  free (r);
}
