/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: zstd images, what the parts of the format share (see
 * zstd.c for the format and how it is indexed).
 *
 *   zstd.c         frame headers, one declared frame, open, the
 *                  persisted index;
 *   zstd-seek.c    the seek table of the seekable format;
 *   zstd-walk.c    the walk over frames, with its parallel pass over
 *                  frames without a content size;
 *   zstd-decode.c  the decoder of one index frame.
 */
#ifndef AUTODECOMP_ZSTD_INT_H
#define AUTODECOMP_ZSTD_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include <zstd.h>

#include "format-int.h"
#include "window.h"

#define FRAME_MAGIC 0xFD2FB528U
#define SKIPPABLE_MASK 0xFFFFFFF0U
#define SKIPPABLE_MAGIC 0x184D2A50U

#define FRAME_HEADER_MIN 5      /* Magic_Number and the descriptor. */
#define FRAME_HEADER_MAX 18
#define BLOCK_HEADER_SIZE 3
#define BLOCK_SIZE_MAX (128 * 1024)
#define CHECKSUM_SIZE 4

#define WALK_CHUNK (1024 * 1024)           /* Reads of the frame walk. */
#define DCTX_POOL_MAX 16                   /* Decoder contexts kept. */
#define AUX_CHECKSUM 1                     /* aux32: the frame has a
                                              Content_Checksum. */

/* The format's own state, in idx->priv. */
struct zstd_priv {
  uint32_t *sums;               /* Seek-table checksum per frame, or NULL. */
  size_t nsums;
  uint64_t max_frame;
  bool declared;                /* One frame sized by its header: what
                                   follows it is found by the decoder. */
  bool walked;                  /* Frames found by zstd_open_walk. */
  /* From a persisted index: XXH64 of the compressed bytes of each frame
   * that has no Content_Checksum (chashed[i]), checked by its decoder.
   */
  bool from_file;               /* The index was loaded from a file. */
  uint64_t *chash;
  unsigned char *chashed;
  size_t nchash;

  pthread_mutex_t lock;         /* Protects the context pool. */
  ZSTD_DCtx *pool[DCTX_POOL_MAX];
  size_t npool;
};

static inline bool
is_skippable (uint32_t magic)
{
  return (magic & SKIPPABLE_MASK) == SKIPPABLE_MAGIC;
}

/* The parsed Frame_Header. */
struct frame_header {
  unsigned size;                /* Bytes, Magic_Number included. */
  bool single_segment;
  bool checksum;
  uint32_t dict_id;
  bool has_fcs;
  uint64_t fcs;                 /* Frame_Content_Size, if has_fcs. */
  uint64_t window_size;
};

/* zstd.c */
extern unsigned zstd_frame_header_size (unsigned char fhd);
extern int zstd_parse_frame_header (const unsigned char *p, uint64_t offset,
                                    struct frame_header *h,
                                    struct ad_error *err);
extern int zstd_window_log (const struct frame_header *h, uint64_t max_frame,
                            uint64_t offset, unsigned *log,
                            struct ad_error *err);
extern int zstd_hop_skippable (struct ad_source *src, uint64_t *pos,
                               uint64_t end, struct ad_error *err);

/* zstd-seek.c */
extern int zstd_open_seek_table (struct ad_index *idx, struct ad_source *src,
                                 bool *found, struct ad_error *err);

/* zstd-walk.c */
extern int zstd_open_walk (struct ad_index *idx, struct ad_source *src,
                           struct ad_error *err);

/* zstd-decode.c */
extern int zstd_decoder_new (struct ad_index *idx, const struct ad_frame *frame,
                             size_t frame_no, void **decoder,
                             struct ad_error *err);
extern ssize_t zstd_decoder_read (void *decoder, struct ad_source *src,
                                  void *out, size_t count,
                                  struct ad_error *err);
extern void zstd_decoder_free (void *decoder);
extern int zstd_check_empty_frame (struct zstd_priv *priv,
                                   struct ad_source *src, uint64_t coff,
                                   uint64_t csize, bool has_sum,
                                   uint32_t sum, struct ad_error *err);

#endif /* AUTODECOMP_ZSTD_INT_H */
