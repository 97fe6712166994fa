/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: reading an image from start to end, frame by frame,
 * through the library, as prepare and its --verify do.
 *
 * Frames up to AD_LARGE_FRAME go through the export (and its cache: a
 * gzip pass hands its spans there); a larger frame (a plain one-frame
 * xz or zstd image) is streamed through its decoder, so that nothing
 * the size of the image is held in memory or on disk.  A raw image is
 * read straight from its source.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "frame.h"
#include "autodecomp.h"

static int
reader_fail (struct reader *r, const struct ad_error *err)
{
  fprintf (stderr, PROGRAM ": %s: %s\n", r->im->path, err->msg);
  return -1;
}

/* A sequential reader: as in the filter, the image's decode workers
 * (see image_open) decode the frames ahead of it.
 */
void
reader_init (struct reader *r, struct image *im)
{
  memset (r, 0, sizeof *r);
  r->im = im;
  r->seq = ad_reader_new ();
}

static void
reader_drop_decoder (struct reader *r)
{
  ad_frame_reader_close (r->fr);
  r->fr = NULL;
}

void
reader_end (struct reader *r)
{
  reader_drop_decoder (r);
  ad_reader_free (r->seq);
}

/* At most once a second, and at the end. */
void
reader_progress (struct reader *r, const char *what)
{
  uint64_t size = ad_export_size (r->im->exp);
  double t;

  if (!r->progress)
    return;
  t = now ();
  if (t - r->last < 1 && r->off < size)
    return;
  r->last = t;
  fprintf (stderr, "\r%s %s: %3.0f%% of ", what, r->im->path,
           size ? 100.0 * r->off / size : 100.0);
  print_size (stderr, size);
  fprintf (stderr, "   ");
  if (r->off == size)
    fprintf (stderr, "\n");
}

/* A raw image: straight from the source. */
static ssize_t
reader_next_raw (struct reader *r, char *buf, size_t cap, uint64_t left)
{
  struct ad_error err;
  size_t n = cap < left ? cap : left;

  ad_error_clear (&err);
  if (ad_source_pread (&r->im->src, buf, n, r->off, &err) == -1)
    return reader_fail (r, &err);
  r->off += n;
  return n;
}

/* Find the frame at r->off.  A frame up to AD_LARGE_FRAME is read
 * through the export at once: returns how many bytes.  For a larger
 * one, starts its decoder and returns 0 (then stream it).
 */
static ssize_t
reader_next_frame (struct reader *r, char *buf, size_t cap)
{
  struct image *im = r->im;
  struct ad_export *exp = im->exp;
  struct ad_error err;
  size_t n;

  ad_error_clear (&err);
  if (ad_export_find (exp, &im->src, r->off, &r->frame, &r->frame_no,
                      &err) == -1)
    return reader_fail (r, &err);
  if (r->frame.usize <= AD_LARGE_FRAME) {
    uint64_t in_frame = r->frame.uoff + r->frame.usize - r->off;

    n = cap < in_frame ? cap : in_frame;
    if (ad_export_read (exp, r->seq, &im->src, buf, n, r->off,
                        &err) == -1)
      return reader_fail (r, &err);
    r->off += n;
    return n;
  }
  r->fr = ad_frame_reader_open (ad_export_index (exp), &r->frame,
                                r->frame_no, &err);
  if (r->fr == NULL)
    return reader_fail (r, &err);
  return 0;
}

/* Streaming a large frame through the frame reader: exactly its
 * declared size, and the read after its last byte runs its final
 * checks.
 */
static ssize_t
reader_stream (struct reader *r, char *buf, size_t cap)
{
  struct image *im = r->im;
  struct ad_error err;
  ssize_t got, end;
  char extra;

  ad_error_clear (&err);
  got = ad_frame_reader_read (r->fr, &im->src, buf, cap, &err);
  if (got == 0)
    ad_error_set (&err, EIO, "the frame ended before its declared size");
  if (got <= 0)
    return reader_fail (r, &err);
  r->off += got;
  if (ad_frame_reader_pos (r->fr) == r->frame.usize) {
    /* The frame's last byte: its end and checks, before going on. */
    end = ad_frame_reader_read (r->fr, &im->src, &extra, 1, &err);
    if (end != 0)
      return reader_fail (r, &err);
    reader_drop_decoder (r);
  }
  return got;
}

ssize_t
reader_next (struct reader *r, char *buf, size_t cap)
{
  uint64_t left = ad_export_size (r->im->exp) - r->off;

  if (left == 0)
    return 0;
  if (ad_export_format (r->im->exp) == AD_FORMAT_RAW)
    return reader_next_raw (r, buf, cap, left);
  if (r->fr == NULL) {
    ssize_t n = reader_next_frame (r, buf, cap);

    if (n != 0)
      return n;
  }
  return reader_stream (r, buf, cap);
}

ssize_t
reader_fill (struct reader *r, char *buf, size_t count)
{
  size_t done = 0;

  while (done < count) {
    ssize_t n = reader_next (r, buf + done, count - done);

    if (n == -1)
      return -1;
    if (n == 0)
      break;
    done += n;
  }
  return done;
}
