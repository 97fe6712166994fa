/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: prepare's xz output: liblzma's multithreaded encoder cuts
 * the stream into blocks of --frame-size bytes (4 MiB by default) and
 * records each in the index at the end, which the filter reads to seek.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <lzma.h>

#include "autodecomp.h"

static int
xz_write (struct reader *r, struct output *o, const struct prepare_opts *po)
{
  lzma_stream strm = LZMA_STREAM_INIT;
  lzma_mt mt;
  char *in = malloc (PIECE), *out = malloc (PIECE);
  lzma_action action = LZMA_RUN;
  lzma_ret lr;
  int ret = -1;

  memset (&mt, 0, sizeof mt);
  mt.threads = po->threads;
  mt.block_size = po->frame;
  mt.preset = po->level;
  mt.check = LZMA_CHECK_CRC64;
  if (in == NULL || out == NULL) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    goto done;
  }
  lr = lzma_stream_encoder_mt (&strm, &mt);
  if (lr != LZMA_OK) {
    fprintf (stderr, PROGRAM ": xz encoder: error %d (out of memory, or "
             "a bad level)\n", (int) lr);
    goto done;
  }
  strm.next_out = (uint8_t *) out;
  strm.avail_out = PIECE;
  for (;;) {
    if (strm.avail_in == 0 && action == LZMA_RUN) {
      ssize_t n = reader_next (r, in, PIECE);

      if (n == -1)
        goto done;
      if (n == 0)
        action = LZMA_FINISH;
      else
        reader_progress (r, "reading");
      strm.next_in = (const uint8_t *) in;
      strm.avail_in = n;
    }
    lr = lzma_code (&strm, action);
    if (strm.avail_out == 0 || lr == LZMA_STREAM_END) {
      if (output_write (o, out, PIECE - strm.avail_out) == -1)
        goto done;
      strm.next_out = (uint8_t *) out;
      strm.avail_out = PIECE;
    }
    if (lr == LZMA_STREAM_END)
      break;
    if (lr != LZMA_OK) {
      fprintf (stderr, PROGRAM ": xz encoder: error %d\n", (int) lr);
      goto done;
    }
  }
  ret = 0;

 done:
  lzma_end (&strm);
  free (in);
  free (out);
  return ret;
}

static int
xz_settle (struct prepare_opts *po)
{
  if (po->frame == 0)
    po->frame = 4 * MiB;
  if (po->level == -1)
    po->level = 6;
  if (po->level > 9) {
    fprintf (stderr, PROGRAM ": --level: xz levels are 0 to 9\n");
    return -1;
  }
  return 0;
}

const struct out_format out_xz = {
  .name = "xz",
  .settle = xz_settle,
  .write = xz_write,
};
