/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: prepare's BGZF output: gzip members of at most
 * AD_BGZF_INPUT input bytes, each with the BC extra field that gives
 * its compressed size, compressed in parallel (batch.c) with
 * libdeflate, and the empty member that marks the end
 * (lib/seekable-formats.h has the constants).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <libdeflate.h>

#include "autodecomp.h"
#include "byteorder.h"
#include "seekable-formats.h"

static const unsigned char bgzf_eof[AD_BGZF_EOF_SIZE] = AD_BGZF_EOF;

/* Room for the deflate data of one member. */
#define BGZF_DEFLATE_MAX \
  (AD_BGZF_MEMBER_MAX - AD_BGZF_HEADER_SIZE - AD_GZIP_TRAILER_SIZE)

struct bgzf_ctx {
  struct libdeflate_compressor *c, *stored;
};

static int
bgzf_compress (struct batch *b, unsigned worker, const char *in,
               size_t in_len, char *out, size_t *out_len)
{
  struct bgzf_ctx *x = b->ctx[worker];
  unsigned char *o = (unsigned char *) out;
  size_t n, total;
  uint32_t crc;

  if (x == NULL) {
    x = b->ctx[worker] = calloc (1, sizeof *x);
    if (x == NULL ||
        (x->c = libdeflate_alloc_compressor (b->level)) == NULL ||
        (x->stored = libdeflate_alloc_compressor (0)) == NULL)
      return -1;
  }
  n = libdeflate_deflate_compress (x->c, in, in_len,
                                   o + AD_BGZF_HEADER_SIZE,
                                   BGZF_DEFLATE_MAX);
  if (n == 0)                   /* Did not shrink enough: store it. */
    n = libdeflate_deflate_compress (x->stored, in, in_len,
                                     o + AD_BGZF_HEADER_SIZE,
                                     BGZF_DEFLATE_MAX);
  if (n == 0)
    return -1;
  total = AD_BGZF_HEADER_SIZE + n + AD_GZIP_TRAILER_SIZE;
  /* The end marker's header, with this member's BSIZE. */
  memcpy (o, bgzf_eof, AD_BGZF_HEADER_SIZE);
  o[AD_BGZF_BSIZE_OFFSET] = (total - 1) & 0xff;
  o[AD_BGZF_BSIZE_OFFSET + 1] = (total - 1) >> 8;
  crc = libdeflate_crc32 (0, in, in_len);
  ad_put_le32 (o + AD_BGZF_HEADER_SIZE + n, crc);
  ad_put_le32 (o + AD_BGZF_HEADER_SIZE + n + 4, in_len);
  *out_len = total;
  return 0;
}

static void
bgzf_ctx_free (void *ctx)
{
  struct bgzf_ctx *x = ctx;

  libdeflate_free_compressor (x->c);
  libdeflate_free_compressor (x->stored);
  free (x);
}

static const struct batch_ops bgzf_ops = {
  .compress = bgzf_compress,
  .ctx_free = bgzf_ctx_free,
};

static int
bgzf_write (struct reader *r, struct output *o,
            const struct prepare_opts *po)
{
  if (batch_write (r, o, po, &bgzf_ops, AD_BGZF_INPUT, AD_BGZF_MEMBER_MAX,
                   NULL) == -1)
    return -1;
  return output_write (o, bgzf_eof, sizeof bgzf_eof);
}

/* Members hold AD_BGZF_INPUT bytes, whatever --frame-size says. */
static int
bgzf_settle (struct prepare_opts *po)
{
  if (po->frame != 0 && po->frame != AD_BGZF_INPUT)
    fprintf (stderr, PROGRAM ": note: BGZF members hold %d bytes each; "
             "--frame-size is ignored\n", AD_BGZF_INPUT);
  po->frame = AD_BGZF_INPUT;
  if (po->level == -1)
    po->level = 6;
  if (po->level < 1 || po->level > 12) {
    fprintf (stderr, PROGRAM ": --level: BGZF levels are 1 to 12\n");
    return -1;
  }
  return 0;
}

const struct out_format out_bgzf = {
  .name = "bgzf",
  .alias = "gzip",
  .settle = bgzf_settle,
  .write = bgzf_write,
};
