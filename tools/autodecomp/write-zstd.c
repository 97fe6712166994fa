/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: prepare's zstd output, in the zstd seekable format: one
 * frame per --frame-size bytes of input (1 MiB by default), each with
 * its content size and checksum, compressed in parallel (batch.c), and
 * the seek table at the end (lib/seekable-formats.h has its layout).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <zstd.h>

#include "autodecomp.h"
#include "byteorder.h"
#include "seekable-formats.h"

/* The seek table, built as the frames are written. */
struct seek_table {
  unsigned char *entries;
  size_t len, alloc;
  uint64_t nframes;
};

static int
zstd_compress (struct batch *b, unsigned worker, const char *in,
               size_t in_len, char *out, size_t *out_len)
{
  ZSTD_CCtx *cctx = b->ctx[worker];
  size_t r;

  if (cctx == NULL) {
    cctx = b->ctx[worker] = ZSTD_createCCtx ();
    if (cctx == NULL ||
        ZSTD_isError (ZSTD_CCtx_setParameter (cctx, ZSTD_c_compressionLevel,
                                              b->level)) ||
        ZSTD_isError (ZSTD_CCtx_setParameter (cctx, ZSTD_c_checksumFlag, 1)))
      return -1;
  }
  r = ZSTD_compress2 (cctx, out, b->bound, in, in_len);
  if (ZSTD_isError (r))
    return -1;
  *out_len = r;
  return 0;
}

static void
zstd_ctx_free (void *ctx)
{
  ZSTD_freeCCtx (ctx);
}

/* A frame was written: its entry in the seek table. */
static int
zstd_written (struct batch *b, const char *frame, size_t len,
              size_t in_len)
{
  struct seek_table *t = b->opaque;
  const unsigned char *frame_end = (const unsigned char *) frame + len;

  if (t->len + AD_SEEK_ENTRY_SUM_SIZE > t->alloc) {
    size_t na = t->alloc ? 2 * t->alloc : 4096;
    unsigned char *p = realloc (t->entries, na);

    if (p == NULL) {
      fprintf (stderr, PROGRAM ": out of memory\n");
      return -1;
    }
    t->entries = p;
    t->alloc = na;
  }
  ad_put_le32 (t->entries + t->len, len);
  ad_put_le32 (t->entries + t->len + 4, in_len);
  /* The entry's checksum (the low 32 bits of the frame's XXH64) is the
   * frame's own Content_Checksum, its last 4 bytes.
   */
  memcpy (t->entries + t->len + 8, frame_end - 4, 4);
  t->len += AD_SEEK_ENTRY_SUM_SIZE;
  t->nframes++;
  return 0;
}

/* The skippable frame holding the seek table, after the last frame. */
static int
seek_table_write (const struct seek_table *t, struct output *o)
{
  unsigned char head[AD_SKIPPABLE_HEADER_SIZE], foot[AD_SEEK_FOOTER_SIZE];

  if (t->nframes > (UINT32_MAX - AD_SEEK_FOOTER_SIZE) /
      AD_SEEK_ENTRY_SUM_SIZE) {
    fprintf (stderr, PROGRAM ": %s: too many frames for a seek table "
             "(use a larger --frame-size)\n", o->path);
    return -1;
  }
  ad_put_le32 (head, AD_SEEK_TABLE_MAGIC);
  ad_put_le32 (head + 4, t->len + AD_SEEK_FOOTER_SIZE);
  ad_put_le32 (foot, t->nframes);
  foot[4] = AD_SEEK_DESC_CHECKSUM;      /* Entries have a checksum. */
  ad_put_le32 (foot + 5, AD_SEEKABLE_MAGIC);
  if (output_write (o, head, sizeof head) == -1 ||
      output_write (o, t->entries, t->len) == -1 ||
      output_write (o, foot, sizeof foot) == -1)
    return -1;
  return 0;
}

static const struct batch_ops zstd_ops = {
  .compress = zstd_compress,
  .written = zstd_written,
  .ctx_free = zstd_ctx_free,
};

static int
zstd_write (struct reader *r, struct output *o,
            const struct prepare_opts *po)
{
  struct seek_table t;
  int ret;

  memset (&t, 0, sizeof t);
  ret = batch_write (r, o, po, &zstd_ops, po->frame,
                     ZSTD_compressBound (po->frame), &t);
  if (ret == 0)
    ret = seek_table_write (&t, o);
  free (t.entries);
  return ret;
}

static int
zstd_settle (struct prepare_opts *po)
{
  if (po->frame == 0)
    po->frame = 1 * MiB;
  if (po->level == -1)
    po->level = 3;
  if (po->level < 1 || po->level > ZSTD_maxCLevel ()) {
    fprintf (stderr, PROGRAM ": --level: zstd levels are 1 to %d\n",
             ZSTD_maxCLevel ());
    return -1;
  }
  return 0;
}

const struct out_format out_zstd = {
  .name = "zstd",
  .settle = zstd_settle,
  .write = zstd_write,
};
