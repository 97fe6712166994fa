/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the decoder of one frame through liblzma (an xz Block or
 * an lzip member).
 *
 * Both formats decode a frame the same way: read its compressed range
 * through a window, let the format start the liblzma decoder from the
 * first bytes (the xz Block Header, the lzip member header), then run
 * lzma_code until the decoder reports the end, which must come exactly
 * at the end of the range: liblzma has then verified the frame's sizes
 * and its check (the xz Check, the lzip trailer's CRC32 and sizes).
 * Only the start differs, so a format supplies it as a hook, and embeds
 * struct ad_lzma_frame first in its decoder.
 */
#ifndef AUTODECOMP_LZMA_FRAME_H
#define AUTODECOMP_LZMA_FRAME_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <lzma.h>

#include "format-int.h"
#include "window.h"

struct ad_lzma_frame;

/* Start the decoder: strm.next_in holds the first bytes of the frame
 * (strm.avail_in of them, up to a window's chunk).  The hook calls
 * lzma_*_decoder, sets strm_init, and leaves strm.next_in at the first
 * byte liblzma has not consumed.
 */
typedef int (*ad_lzma_start) (struct ad_lzma_frame *f, struct ad_error *err);

struct ad_lzma_frame {
  struct ad_frame frame;
  const char *unit;             /* "block", "member": in messages. */
  const char *checked;          /* What liblzma verifies: in messages. */
  ad_lzma_start start;
  bool started;
  bool finished;
  bool failed;                  /* An error was returned: keep failing. */
  lzma_stream strm;
  bool strm_init;
  struct ad_window win;         /* The frame's compressed bytes, */
  uint64_t next;                /* fed to liblzma up to here. */
  uint64_t end;                 /* End of the frame in the file. */
};

/* Set up f for frame (nothing is read or allocated). */
extern void ad_lzma_frame_init (struct ad_lzma_frame *f,
                                const struct ad_frame *frame,
                                const char *unit, const char *checked,
                                ad_lzma_start start);

/* Free what f holds (not f itself). */
extern void ad_lzma_frame_end (struct ad_lzma_frame *f);

/* The decoder_read of format.h: up to count bytes of output. */
extern ssize_t ad_lzma_frame_read (struct ad_lzma_frame *f,
                                   struct ad_source *src, void *out,
                                   size_t count, struct ad_error *err);

/* liblzma's return codes, as words and as errno. */
extern const char *ad_lzma_ret_string (lzma_ret r);
extern int ad_lzma_errno (lzma_ret r);

#endif /* AUTODECOMP_LZMA_FRAME_H */
