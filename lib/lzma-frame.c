/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the decoder of one frame through liblzma (lzma-frame.h).
 */

#include <config.h>

#include <stdlib.h>
#include <inttypes.h>
#include <limits.h>
#include <errno.h>

#include <lzma.h>

#include "lzma-frame.h"

const char *
ad_lzma_ret_string (lzma_ret r)
{
  switch (r) {
  case LZMA_OK: return "ok";
  case LZMA_STREAM_END: return "end of stream";
  case LZMA_NO_CHECK: return "no integrity check";
  case LZMA_UNSUPPORTED_CHECK: return "unsupported integrity check";
  case LZMA_GET_CHECK: return "integrity check type available";
  case LZMA_MEM_ERROR: return "out of memory";
  case LZMA_MEMLIMIT_ERROR: return "memory usage limit reached";
  case LZMA_FORMAT_ERROR: return "file format not recognized";
  case LZMA_OPTIONS_ERROR: return "unsupported options";
  case LZMA_DATA_ERROR: return "compressed data is corrupt";
  case LZMA_BUF_ERROR: return "unexpected end of input";
  case LZMA_PROG_ERROR: return "programming error";
  default: return "unknown liblzma error";
  }
}

int
ad_lzma_errno (lzma_ret r)
{
  return r == LZMA_MEM_ERROR ? ENOMEM : EIO;
}

void
ad_lzma_frame_init (struct ad_lzma_frame *f, const struct ad_frame *frame,
                    const char *unit, const char *checked,
                    ad_lzma_start start)
{
  lzma_stream init = LZMA_STREAM_INIT;

  *f = (struct ad_lzma_frame) {
    .frame = *frame, .unit = unit, .checked = checked, .start = start,
    .strm = init, .next = frame->coff, .end = frame->coff + frame->csize,
  };
}

void
ad_lzma_frame_end (struct ad_lzma_frame *f)
{
  if (f->strm_init)
    lzma_end (&f->strm);
  f->strm_init = false;
  ad_window_free (&f->win);
}

/* Give liblzma the next piece of the frame's compressed bytes (it has
 * consumed those before f->next).
 */
static int
read_chunk (struct ad_lzma_frame *f, struct ad_source *src,
            struct ad_error *err)
{
  const unsigned char *p;
  size_t avail;

  if (f->next == f->end)
    return ad_error_set (err, EIO, "%s is empty", f->unit);
  if (f->win.src == NULL)
    ad_window_init (&f->win, src, f->frame.coff, f->end);
  f->win.src = src;             /* The reader's, which may change. */
  p = ad_window_need (&f->win, f->next, 1, &avail, err);
  if (p == NULL)
    return -1;
  f->strm.next_in = p;
  f->strm.avail_in = avail;
  f->next += avail;
  return 0;
}

/* The error for what lzma_code returned in the middle of a frame. */
static int
code_error (struct ad_lzma_frame *f, lzma_ret r, struct ad_error *err)
{
  if (r == LZMA_DATA_ERROR)
    return ad_error_set (err, EIO, "compressed data is corrupt, or does not "
                         "match %s (near compressed offset %" PRIu64 ")",
                         f->checked, f->next - f->strm.avail_in);
  if (r == LZMA_BUF_ERROR)
    return ad_error_set (err, EIO, "%s is truncated: its %" PRIu64
                         " compressed bytes end before its data does",
                         f->unit, f->frame.csize);
  return ad_error_set (err, ad_lzma_errno (r), "lzma_code: %s",
                       ad_lzma_ret_string (r));
}

ssize_t
ad_lzma_frame_read (struct ad_lzma_frame *f, struct ad_source *src,
                    void *out, size_t count, struct ad_error *err)
{
  size_t produced;
  lzma_ret r;

  if (f->failed)
    return ad_error_set (err, EIO, "%s decoder failed earlier", f->unit);
  if (f->finished)
    return 0;
  if (!f->started) {
    f->started = true;
    if (read_chunk (f, src, err) == -1 || f->start (f, err) == -1)
      goto fail;
  }

  if (count > SSIZE_MAX)
    count = SSIZE_MAX;
  f->strm.next_out = out;
  f->strm.avail_out = count;
  for (;;) {
    lzma_action action = LZMA_RUN;
    uint64_t in_before, out_before;

    if (f->strm.avail_in == 0) {
      if (f->next < f->end) {
        if (read_chunk (f, src, err) == -1)
          goto fail;
      }
      else
        action = LZMA_FINISH;
    }
    in_before = f->strm.total_in;
    out_before = f->strm.total_out;
    r = lzma_code (&f->strm, action);
    produced = count - f->strm.avail_out;
    if (r == LZMA_STREAM_END) {
      /* liblzma has verified the frame's sizes and check; the frame
       * must end here.
       */
      f->finished = true;
      if (f->next != f->end || f->strm.avail_in != 0) {
        ad_error_set (err, EIO, "%s ends before its last %" PRIu64
                      " compressed bytes", f->unit,
                      (f->end - f->next) + f->strm.avail_in);
        goto fail;
      }
      return produced;
    }
    if (r != LZMA_OK) {
      code_error (f, r, err);
      goto fail;
    }
    if (produced > 0)
      return produced;
    if (action == LZMA_FINISH && f->strm.total_in == in_before &&
        f->strm.total_out == out_before) {
      code_error (f, LZMA_BUF_ERROR, err);
      goto fail;
    }
  }

 fail:
  f->failed = true;
  return -1;
}
