/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip images, ISA-L's inflate: its calls, snapshots of
 * its state (the checkpoints of the pass) and the input buffers it
 * reads from (see gzip.c).
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "gzip-int.h"

#define SNAP_ZSTD_LEVEL 1               /* See gz_snap_take. */
#define TOTAL_OUT_HIGH (1U << 31)       /* See gz_isal_call. */
#define TOTAL_OUT_LOW (1U << 30)

/* ISA-L's inflate.
 *
 * isal_inflate keeps its whole state in one public struct with no
 * pointers into itself: the bit buffer (read_in), the current block's
 * Huffman tables and state, a match or literals cut short by the end
 * of the output buffer, and in tmp_out_buffer the history (at least
 * the last 32 KiB of output once there is that much, and any output
 * decoded but not yet delivered, tmp_out_valid - tmp_out_processed).
 * The struct up to tmp_out_buffer plus tmp_out_valid bytes of it is
 * therefore the decoder at any point between two calls (53 KiB on
 * average, at most SNAP_MAX), and copying that back into a struct and
 * pointing next_in at the same input offset goes on from there.  A
 * snapshot only ever lives in this process's memory, so it always
 * meets the library build that made it.
 */

void
gz_isal_start (struct inflate_state *st)
{
  isal_inflate_init (st);
  st->crc_flag = ISAL_DEFLATE;  /* Raw deflate: we check CRCs ourselves. */
}

/* ISA-L's portable C decoder checks a match's distance against
 * total_out (plus the dictionary), a 32-bit count that wraps after
 * 4 GiB, when a valid distance could then be refused.  (The assembly
 * decoder chosen on this project's test machine does not: a 4.3 GB
 * member of 20000-byte repeats decodes either way.)  total_out is only
 * a count to it (we use ISAL_DEFLATE: no trailer check), so keep it in
 * a range that is always above the 32 KiB window and never wraps
 * within one call.
 */
int
gz_isal_call (struct inflate_state *st)
{
  if (st->total_out > TOTAL_OUT_HIGH)
    st->total_out = TOTAL_OUT_LOW;
  return isal_inflate (st);
}

const char *
gz_isal_msg (int r)
{
  switch (r) {
  case ISAL_INVALID_BLOCK: return "invalid block";
  case ISAL_INVALID_SYMBOL: return "invalid code";
  case ISAL_INVALID_LOOKBACK: return "distance too far back";
  default: return "inflate error";
  }
}

static size_t
snap_size (const struct inflate_state *st)
{
  return SNAP_HEAD + st->tmp_out_valid;
}

/* Snapshots are kept compressed (zstd level 1): the bench image's
 * 54 KiB on average become 10 KiB, for about 0.09 ms each, a few
 * percent of the pass; putting one back costs less than that.
 */
int
gz_snap_take (struct gz_pass *P, struct gz_ckpt *ck, struct ad_error *err)
{
  size_t raw = snap_size (P->st), bound = ZSTD_compressBound (SNAP_MAX), n;

  if (P->cctx == NULL && (P->cctx = ZSTD_createCCtx ()) == NULL)
    return ad_error_set (err, ENOMEM, "ZSTD_createCCtx failed");
  if (P->zbuf == NULL && (P->zbuf = malloc (bound)) == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  n = ZSTD_compressCCtx (P->cctx, P->zbuf, bound, P->st, raw,
                         SNAP_ZSTD_LEVEL);
  if (ZSTD_isError (n))
    return ad_error_set (err, EIO, "compressing a checkpoint: %s",
                         ZSTD_getErrorName (n));
  ck->snap = malloc (n);
  if (ck->snap == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  memcpy (ck->snap, P->zbuf, n);
  ck->snap_len = n;
  ck->snap_raw = raw;
  return 0;
}

/* Put a snapshot back into st.  Only snapshots this file took reach
 * here; the checks guard the copy against a damaged checkpoint table.
 */
int
gz_snap_restore (struct inflate_state *st, const struct gz_ckpt *ck,
                 struct ad_error *err)
{
  size_t n;

  if (ck->snap == NULL || ck->snap_raw < SNAP_HEAD ||
      ck->snap_raw > SNAP_MAX)
    return ad_error_set (err, EIO, "checkpoint at offset %" PRIu64
                         " has no usable inflate state", ck->coff);
  n = ZSTD_decompress (st, SNAP_MAX, ck->snap, ck->snap_len);
  if (ZSTD_isError (n) || n != ck->snap_raw)
    return ad_error_set (err, EIO, "checkpoint at offset %" PRIu64
                         ": its inflate state does not decompress",
                         ck->coff);
  if (st->tmp_out_valid < 0 ||
      (size_t) st->tmp_out_valid != n - SNAP_HEAD ||
      st->tmp_out_processed < 0 ||
      st->tmp_out_processed > st->tmp_out_valid)
    return ad_error_set (err, EIO, "checkpoint at offset %" PRIu64
                         " has an inconsistent inflate state", ck->coff);
  st->next_in = NULL;
  st->avail_in = 0;
  st->next_out = NULL;
  st->avail_out = 0;
  return 0;
}

/* Input: a window on the compressed bytes, of which st->next_in points
 * at the next to inflate (at most GZ_INPUT_MAX of them at a time).
 */
static void
input_set (struct ad_window *in, struct inflate_state *st, uint64_t pos)
{
  size_t n = in->held - pos;

  st->next_in = (uint8_t *) ad_window_at (in, pos);
  st->avail_in = n < GZ_INPUT_MAX ? n : GZ_INPUT_MAX;
}

uint64_t
gz_input_pos (const struct ad_window *in, const struct inflate_state *st)
{
  return ad_window_offset (in, st->next_in);
}

/* Make at least want bytes available at next_in, or all that is left
 * before the window's end.
 */
int
gz_input_fill (struct ad_window *in, struct inflate_state *st,
               struct ad_source *src, size_t want, struct ad_error *err)
{
  uint64_t pos = gz_input_pos (in, st);
  size_t n;

  if (st->avail_in >= want)
    return 0;
  if (in->data && in->held - pos > st->avail_in) {
    input_set (in, st, pos);    /* More is held than ISA-L was given. */
    if (st->avail_in >= want)
      return 0;
  }
  if (in->held >= in->end)
    return 0;
  in->src = src;                /* The reader's, which may change. */
  if (ad_window_need (in, pos, want, &n, err) == NULL)
    return -1;
  input_set (in, st, pos);
  return 0;
}

/* Go back (or on) to file offset pos: within the window if it still
 * holds it, else by reading from there at the next fill.
 */
void
gz_input_seek (struct ad_window *in, struct inflate_state *st, uint64_t pos)
{
  ad_window_seek (in, pos);
  if (in->data)
    input_set (in, st, pos);
  else {
    st->next_in = NULL;
    st->avail_in = 0;
  }
}

/* Where the deflate data that st finished (ISAL_BLOCK_FINISH) ends: the
 * state reads ahead up to 8 bytes into its bit buffer, so the first
 * byte after the stream is read_in_length / 8 bytes before next_in.
 */
uint64_t
gz_input_stream_end (const struct ad_window *in, const struct inflate_state *st)
{
  return gz_input_pos (in, st) - st->read_in_length / 8;
}
