/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the bzip2 state of a persisted index (see
 * docs/index-format.md): every block's bits, CRC, size, stream and
 * level, checked on load against the frames and against the file, in
 * which the blocks must lie exactly where the state says.
 */

#include <config.h>

#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>

#include "persist.h"
#include "bzip2-int.h"

/* The bits from the end of a stream's last block to the end of the
 * stream: the end-of-stream marker and combined CRC, then padding to a
 * byte (MARKER_BITS to MARKER_BITS + 7).  Then the next stream's header
 * ("BZh" and the level: STREAM_HEADER_BITS) and its first block.
 */
#define STREAM_HEADER_BITS 32

/* Does block b start where the block before it (NULL if none) ends: at
 * once in the same stream, or after the end of that stream and the
 * header of the next?  Blocks of a persisted index must follow each
 * other so (see ad_frames_tile): a block left out of the file would
 * shift those after it, and a block with data is longer than any gap
 * allowed here.  (A stream with no blocks between two others makes the
 * index refused: it is rebuilt.)
 */
static bool
block_follows (const struct bz_block *prev, const struct bz_block *b)
{
  uint64_t gap;

  if (prev == NULL)
    return b->stream == 0 && b->start_bit == STREAM_HEADER_BITS;
  if (b->start_bit < prev->end_bit)
    return false;
  gap = b->start_bit - prev->end_bit;
  if (b->stream == prev->stream)
    return gap == 0;
  return b->stream == prev->stream + 1 &&
    gap >= MARKER_BITS + STREAM_HEADER_BITS &&
    gap <= MARKER_BITS + 7 + STREAM_HEADER_BITS &&
    (b->start_bit - STREAM_HEADER_BITS) % 8 == 0;
}

/* Do the n blocks tile the file of file_size bytes: does each follow
 * the one before, and does the file end with the stream of the last?
 */
static bool
blocks_tile (const struct bz_block *blocks, size_t n, uint64_t file_size)
{
  const struct bz_block *last;
  size_t i;

  if (n == 0)
    return false;
  for (i = 0; i < n; i++)
    if (!block_follows (i > 0 ? &blocks[i - 1] : NULL, &blocks[i]))
      return false;
  last = &blocks[n - 1];
  return file_size <= UINT64_MAX / 8 &&
    file_size * 8 >= last->end_bit + MARKER_BITS &&
    file_size * 8 <= last->end_bit + MARKER_BITS + 7;
}

/* The persisted index (see persist.h) keeps every block: its start
 * and end bits, blockCRC, size, stream number and level.  A block
 * loaded from a file is checked against its frame and the bounds
 * above; decoding it checks its CRC as after a pass.
 */
int
bzip2_save (struct ad_index *idx, struct ad_source *src, struct ad_buf *out,
            const char **why)
{
  struct bz_priv *priv = idx->priv;
  size_t i;

  if (!blocks_tile (priv->blocks, priv->n, src->size)) {
    *why = "its blocks do not follow each other as a loaded index's must "
      "(a stream without blocks, or data after the last stream)";
    return -1;
  }
  ad_buf_put_le64 (out, priv->n);
  for (i = 0; i < priv->n; i++) {
    const struct bz_block *b = &priv->blocks[i];
    ad_buf_put_le64 (out, b->start_bit);
    ad_buf_put_le64 (out, b->end_bit);
    ad_buf_put_le32 (out, b->crc);
    ad_buf_put_le32 (out, b->usize);
    ad_buf_put_le32 (out, b->stream);
    ad_buf_put (out, &b->level, 1);
  }
  return 0;
}

static bool
block_fits_frame (const struct bz_block *b, const struct ad_frame *f)
{
  return b->level >= 1 && b->level <= 9 &&
    b->usize == f->usize && b->usize <= MAX_BLOCK_USIZE (b->level) &&
    b->start_bit == f->aux && b->stream == f->aux32 &&
    b->end_bit > b->start_bit + MARKER_BITS &&
    b->end_bit - b->start_bit <= 8 * MAX_BLOCK_CSIZE (b->level) &&
    f->coff == b->start_bit / 8 &&
    f->csize == (b->end_bit - 1) / 8 + 1 - f->coff;
}

int
bzip2_load (struct ad_index *idx, struct ad_cursor *in, uint64_t file_size)
{
  struct bz_priv *priv;
  uint64_t n, i;

  if (!ad_cursor_get_le64 (in, &n) || n != idx->nframes)
    return -1;
  priv = calloc (1, sizeof *priv);
  if (priv == NULL)
    return -1;
  priv->keep_fd = -1;
  pthread_mutex_init (&priv->arena_lock, NULL);
  priv->arena.lock = &priv->arena_lock;
  idx->priv = priv;
  priv->blocks = calloc (n ? n : 1, sizeof *priv->blocks);
  if (priv->blocks == NULL)
    return -1;
  priv->n = n;
  for (i = 0; i < n; i++) {
    struct bz_block *b = &priv->blocks[i];
    if (!ad_cursor_get_le64 (in, &b->start_bit) ||
        !ad_cursor_get_le64 (in, &b->end_bit) ||
        !ad_cursor_get_le32 (in, &b->crc) ||
        !ad_cursor_get_le32 (in, &b->usize) ||
        !ad_cursor_get_le32 (in, &b->stream) ||
        !ad_cursor_get_u8 (in, &b->level) ||
        !block_fits_frame (b, &idx->frames[i]))
      return -1;
  }
  return blocks_tile (priv->blocks, n, file_size) ? 0 : -1;
}
