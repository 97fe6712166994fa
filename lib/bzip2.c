/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: bzip2 images.
 *
 * A bzip2 file is one or more streams, each byte aligned (pbzip2 and
 * lbzip2 write many, and so does `cat a.bz2 b.bz2`).  A stream is the
 * header "BZh" followed by the level '1'..'9' (the block size in units
 * of 100000 bytes), then any number of blocks, then the end-of-stream
 * marker, then zero to seven bits of padding to a byte boundary.
 * Everything after the header is a bit stream, most significant bit
 * first, with no byte alignment:
 *
 *   block:          block magic (48 bits, 0x314159265359 = BCD pi),
 *                   blockCRC (32), randomised (1), origPtr (24),
 *                   the symbol map, the Huffman tables, the selectors
 *                   and the Huffman coded data, ending with an EOB
 *                   symbol.
 *   end of stream:  eos magic (48 bits, 0x177245385090 = BCD sqrt(pi)),
 *                   combinedCRC (32), padding.
 *
 * combinedCRC is the stream's block CRCs folded together with
 * combined = ((combined << 1) | (combined >> 31)) ^ blockCRC.
 *
 * bzip2 records no sizes and no offsets: the only way to find where a
 * block ends is to find the next magic, and the only way to learn a
 * block's uncompressed size is to decode it.  Blocks are independent
 * though, so open does the whole sizing pass at once:
 *
 * 1. (bzip2-scan.c) The calling thread reads the image in sequential
 *    8 MiB chunks and looks for both magics at every bit offset
 *    ("hits"), at about 1 GB/s (bzip2-scan.c says how).  At most
 *    size / 12 + 16 hits are accepted (the densest valid file is a run
 *    of 14-byte empty streams).  The span between a block magic and the
 *    next hit is a candidate block: its bits are copied out, shifted to
 *    a byte boundary and rewrapped as a one-block stream: "BZh" +
 *    level, the block, an eos magic and a combinedCRC equal to the
 *    block's CRC, padding (bzip2-block.c).  Worker threads size these
 *    with their own block decoder (bzip2-decode.c), which counts the
 *    bytes a block decodes to and checks its CRC (writing them only to
 *    keep them, see "Keeping the pass's output" in bzip2-scan.c), about
 *    1.5 times as fast as libbz2; a block it does not accept (it never
 *    guesses) is decoded with BZ2_bzDecompress into a small scratch
 *    buffer instead, counting the bytes, and libbz2 verifies the block
 *    CRC (and the combined CRC, the same number).  At most two
 *    candidates per worker wait in the queue, so memory stays at a few
 *    blocks per worker plus the read window.
 *    Once a candidate fails for good (see "False magics" below), open
 *    is all but certain to fail on it, so speculation stops there: no
 *    more candidates are queued and those queued are dropped undecoded.
 *    Step 2 decodes any span it still needs itself, so this changes
 *    how much a corrupt image costs (a mutated image in the fuzzers
 *    nearly always has one bad block), never the outcome.
 *
 * 2. After the workers finish, the calling thread walks the hits in file
 *    order as the stream grammar says: a header "BZh1".."BZh9" whose
 *    block or eos magic starts right after it, blocks, an eos marker
 *    whose combinedCRC must match, padding, and the next stream's
 *    header at the next byte.  Hits found elsewhere (inside the eos
 *    CRC, say) are skipped.
 *
 * False magics.  A 48-bit magic can occur by chance inside compressed
 * data (about once in 2^47 bit positions for either magic; rare, but
 * hostile input can place them anywhere).  A false hit inside a block
 * cuts it in two candidates that both fail to decode.  When a candidate
 * fails and the decoder had consumed bits past the cut (so the failure
 * may come from the missing rest of the block rather than from bits of
 * its own), we merge it with the next span (drop the next hit) and
 * decode again, synchronously, up to MAX_MERGES times and as long as
 * the merged span is within the compressed bound (see "Bounds").  A
 * false eos magic inside a block is handled the same way (the block
 * before it fails, the merge swallows it).  A candidate that fails having read
 * only its own bits is corrupt and is reported at once.  A wrong merge
 * cannot yield wrong bytes: every accepted block has passed its own
 * CRC, and every stream's combinedCRC is checked over the accepted
 * blocks.
 *
 * Bounds.  Blocks have bounds on their decoded and compressed sizes
 * (see bzip2-int.h); a block beyond them, or any span without a magic
 * in that many bytes, is refused.
 *
 * Frames.  One frame per block: coff is the byte holding the block
 * magic's first bit, csize reaches the byte holding the block's last
 * bit (the one before the next magic), aux is the absolute bit offset
 * of the block magic and aux32 the stream number.  idx->priv keeps, by
 * frame number, the start and end bits, the level and the block CRC.
 * Blocks that decode to zeros only are flagged AD_FRAME_ZERO.  A stream
 * with no blocks (bzip2 of an empty file) is valid and adds no frame.
 *
 * After the last stream we accept only zero bytes (padding that some
 * tools and devices add).  Anything else is refused as trailing
 * garbage: bzip2 -d merely warns about it, but an image server should
 * not silently drop data it does not understand.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include <bzlib.h>

#include "format-int.h"
#include "persist.h"
#include "bzip2-int.h"
#include "bzip2-decode.h"
#include "pool.h"

/* How many following spans a failing candidate may absorb. */
#define MAX_MERGES 8

/* Most workers of the sizing pass. */
#define MAX_THREADS 256

static int
block_error (struct ad_error *err, const struct bz_hit *h,
             const struct decode_result *r)
{
  return ad_error_set (err, r->bzret == BZ_MEM_ERROR ? ENOMEM : EIO,
                       "block at compressed offset %" PRIu64 " (bit %"
                       PRIu64 "): %s", h->bit / 8, h->bit,
                       bz_strerror (r->bzret));
}

/* Find the header of the stream that starts at byte pos, moving *k to
 * the hit right after it.  Returns the stream's level, or 0 with the
 * error set if there is none (nstreams streams came before).
 */
static int
stream_header (struct bz_open *st, uint64_t pos, uint32_t nstreams,
               size_t *k, struct ad_error *err)
{
  struct hit_table *t = &st->hits;
  uint64_t first_bit = (pos + 4) * 8;

  while (*k < t->n && bz_hit_at (t, *k)->bit < first_bit)
    (*k)++;
  if (*k == t->n || bz_hit_at (t, *k)->bit != first_bit ||
      bz_hit_at (t, *k)->pre_level == 0) {
    if (nstreams == 0)
      ad_error_set (err, EIO, "no stream header (\"BZh1\"..\"BZh9\" "
                    "followed by a block or end-of-stream magic) at "
                    "offset 0");
    else
      ad_error_set (err, EIO, "unexpected data at offset %" PRIu64
                    " after the end of stream %" PRIu32 " (trailing "
                    "garbage is refused: only zero bytes may follow "
                    "the last stream)", pos, nstreams - 1);
    return 0;
  }
  return bz_hit_at (t, *k)->pre_level;
}

/* Size the block whose magic is hit k, in a stream of the given level:
 * its span runs to the next hit, or further if a false magic cut it.
 * Sets *j to the hit that ends it, *r to its decode (ok) and *kept.
 */
static int
size_span (struct bz_open *st, size_t k, int level, size_t *j_out,
           struct decode_result *r, bool *kept, struct ad_error *err)
{
  struct hit_table *t = &st->hits;
  struct bz_hit *h = bz_hit_at (t, k);
  struct decode_result first;
  size_t j = k + 1;
  int merges = 0;

  if (j == t->n || !h->crc_ok)
    return ad_error_set (err, EIO, "block at compressed offset %" PRIu64
                         " (bit %" PRIu64 "): no end-of-stream marker "
                         "follows (truncated?)", h->bit / 8, h->bit);
  if (bz_hit_at (t, j)->bit - h->bit > MAX_BLOCK_CSIZE (level) * 8)
    return ad_error_set (err, EIO, "block at compressed offset %" PRIu64
                         " (bit %" PRIu64 "): no block or end-of-stream "
                         "magic follows within %" PRIu64 " bytes",
                         h->bit / 8, h->bit, MAX_BLOCK_CSIZE (level));
  *kept = false;
  if ((h->status == SPEC_OK || h->status == SPEC_FAIL) &&
      h->job_level == level) {
    *kept = h->status == SPEC_OK && h->kept;
    memset (r, 0, sizeof *r);
    r->ok = h->status == SPEC_OK;
    r->need_more = h->need_more;
    r->bzret = h->bzret;
    r->usize = h->usize;
    r->zero = h->zero;
  }
  else if (bz_decode_span_sync (st, h->bit, bz_hit_at (t, j)->bit, level,
                                h->crc, r, err) == -1)
    return -1;
  first = *r;
  while (!r->ok) {
    if (!r->need_more || r->bzret == BZ_MEM_ERROR ||
        merges >= MAX_MERGES || j + 1 >= t->n ||
        bz_hit_at (t, j + 1)->bit - h->bit > MAX_BLOCK_CSIZE (level) * 8) {
      if (first.need_more && j + 1 >= t->n)
        first.bzret = BZ_OUR_TRUNCATED;
      return block_error (err, h, &first);
    }
    j++;
    merges++;
    *kept = false;
    if (bz_decode_span_sync (st, h->bit, bz_hit_at (t, j)->bit, level,
                             h->crc, r, err) == -1)
      return -1;
  }
  *j_out = j;
  return 0;
}

/* Walk the hits as the stream grammar says, merging spans where a
 * false magic cut a block, and produce the list of blocks.
 */
static int
parse_streams (struct bz_open *st, struct bz_block **blocks_out,
               size_t *nblocks_out, uint64_t *total_out,
               struct ad_error *err)
{
  struct hit_table *t = &st->hits;
  uint64_t size = st->src->size;
  uint64_t pos = 0;             /* Byte where the next stream starts. */
  uint64_t total = 0;
  size_t k = 0;
  uint32_t nstreams = 0;
  struct bz_block *blocks = NULL;
  size_t nblocks = 0, alloc = 0;

  for (;;) {
    uint64_t stream_off;
    uint32_t combined = 0;
    int level;

    if (pos == size)
      break;
    if (nstreams > 0 && (!st->have_nonzero || st->last_nonzero < pos))
      break;                    /* Only zero bytes follow. */
    level = stream_header (st, pos, nstreams, &k, err);
    if (level == 0)
      goto fail;
    stream_off = pos;

    for (;;) {
      struct bz_hit *h = bz_hit_at (t, k);
      struct decode_result r;
      size_t j = 0;
      bool kept = false;

      if (h->type == HIT_EOS) {
        if (!h->crc_ok) {
          ad_error_set (err, EIO, "end-of-stream marker at offset %"
                        PRIu64 " is truncated", h->bit / 8);
          goto fail;
        }
        if (h->crc != combined) {
          ad_error_set (err, EIO, "stream %" PRIu32 " at offset %" PRIu64
                        ": combined CRC mismatch (stored 0x%08" PRIx32
                        ", computed 0x%08" PRIx32 ")", nstreams,
                        stream_off, h->crc, combined);
          goto fail;
        }
        pos = (h->bit + MARKER_BITS + 7) / 8;
        k++;
        nstreams++;
        break;
      }

      if (size_span (st, k, level, &j, &r, &kept, err) == -1)
        goto fail;
      if (nblocks == alloc) {
        size_t n = alloc ? 2 * alloc : 64;
        struct bz_block *p = realloc (blocks, n * sizeof *p);
        if (p == NULL) {
          ad_error_set (err, ENOMEM, "realloc: %m");
          goto fail;
        }
        blocks = p;
        alloc = n;
      }
      blocks[nblocks].start_bit = h->bit;
      blocks[nblocks].end_bit = bz_hit_at (t, j)->bit;
      blocks[nblocks].crc = h->crc;
      blocks[nblocks].usize = r.usize;
      blocks[nblocks].stream = nstreams;
      blocks[nblocks].level = level;
      blocks[nblocks].zero = r.zero;
      blocks[nblocks].kept = kept;
      blocks[nblocks].keep_off = kept ? h->keep_off : 0;
      nblocks++;
      total += r.usize;
      combined = ((combined << 1) | (combined >> 31)) ^ h->crc;
      k = j;
    }
  }

  if (nstreams == 0) {
    ad_error_set (err, EIO, "empty image: no stream header at offset 0");
    goto fail;
  }
  *blocks_out = blocks;
  *nblocks_out = nblocks;
  *total_out = total;
  return 0;

 fail:
  free (blocks);
  return -1;
}

/* Does the image lack the header "BZh1".."BZh9" followed by a block or
 * end-of-stream magic at offset 0 (which parse_streams requires)?
 * Returns 1 with the error filled if it does, or if it could not be
 * read, else 0.
 */
static int
bad_first_header (struct ad_source *src, struct ad_error *err)
{
  unsigned char h[10];
  uint64_t magic;

  if (src->size >= sizeof h) {
    if (ad_source_pread (src, h, sizeof h, 0, err) == -1)
      return 1;
    magic = ((uint64_t) ad_be32 (h + 4) << 16) | ((h[8] << 8) | h[9]);
    if (h[0] == 'B' && h[1] == 'Z' && h[2] == 'h' &&
        h[3] >= '1' && h[3] <= '9' &&
        (magic == BLOCK_MAGIC || magic == EOS_MAGIC))
      return 0;
  }
  ad_error_set (err, EIO, "no stream header (\"BZh1\"..\"BZh9\" followed "
                "by a block or end-of-stream magic) at offset 0");
  return 1;
}

/* Append the frame of every block of priv to the index. */
static int
append_frames (struct ad_index *idx, const struct bz_priv *priv,
               struct ad_error *err)
{
  size_t i;

  for (i = 0; i < priv->n; i++) {
    const struct bz_block *b = &priv->blocks[i];
    struct ad_frame f;

    memset (&f, 0, sizeof f);
    f.uoff = idx->indexed;
    f.usize = b->usize;
    f.coff = b->start_bit / 8;
    f.csize = (b->end_bit - 1) / 8 + 1 - f.coff;
    f.aux = b->start_bit;
    f.aux32 = b->stream;
    f.flags = b->zero ? AD_FRAME_ZERO : 0;
    if (b->kept && priv->keep_fd >= 0)
      f.flags |= AD_FRAME_HELD;
    if (ad_index_append_frame (idx, &f, err) == -1)
      return -1;
  }
  return 0;
}

static int
bzip2_open (struct ad_index *idx, struct ad_source *src,
            struct ad_error *err)
{
  struct bz_open st;
  struct ad_batch_spec spec = {
    .worker_new = bz_worker_new, .worker_free = bz_worker_free,
    .run = bz_run_job,
    .run_inline = true,
  };
  struct bz_priv *priv = NULL;
  struct bz_block *blocks = NULL;
  size_t nblocks = 0, i;
  uint64_t total = 0;
  int r = -1;

  idx->index_from = "a pass over the whole file at open (blocks found "
    "by their magic)";
  memset (&st, 0, sizeof st);
  st.keep.fd = -1;
  st.idx = idx;
  st.src = src;
  /* The densest valid image is a run of empty streams, 14 bytes and one
   * magic each; allow a little more for false magics.
   */
  st.hits.max = src->size / 12 + 16;

  /* Without a stream header at offset 0 open fails whatever follows:
   * say so before the sizing pass decodes anything.  (parse_streams
   * would report the same, after decoding every candidate.)
   */
  if (src->size > 0 && bad_first_header (src, err))
    goto out;

  bz_keep_open (&st.keep, idx->opts.keep_size);
  spec.threads = ad_batch_threads_for (idx->opts.threads, MAX_THREADS);
  spec.queue_max = 2 * (size_t) spec.threads;
  st.batch = ad_batch_new (&spec, &st.keep, err);
  if (st.batch == NULL || bz_sizing_scan (&st, err) == -1)
    goto out;
  ad_batch_finish (st.batch, false);
  ad_window_free (&st.win);

  if (parse_streams (&st, &blocks, &nblocks, &total, err) == -1)
    goto out;

  priv = calloc (1, sizeof *priv);
  if (priv == NULL) {
    ad_error_set (err, ENOMEM, "calloc: %m");
    goto out;
  }
  priv->blocks = blocks;
  priv->n = nblocks;
  priv->keep_fd = -1;
  for (i = 0; i < nblocks; i++)
    if (blocks[i].kept) {
      idx->frames_kept++;
      idx->bytes_kept += blocks[i].usize;
    }
  if (idx->frames_kept > 0) {
    priv->keep_fd = st.keep.fd;
    st.keep.fd = -1;
  }
  pthread_mutex_init (&priv->arena_lock, NULL);
  priv->arena.lock = &priv->arena_lock;
  blocks = NULL;
  idx->priv = priv;
  idx->size = total;

  if (append_frames (idx, priv, err) == -1)
    goto out;
  r = 0;

 out:
  ad_batch_free (st.batch);
  free (blocks);
  ad_window_free (&st.win);
  free (st.scratch);
  bz_arena_release (&st.arena);
  bz_hit_table_free (&st.hits);
  if (st.keep.fd >= 0)
    close (st.keep.fd);
  return r;
}

static void
bzip2_close (struct ad_index *idx)
{
  struct bz_priv *priv = idx->priv;

  if (priv) {
    if (priv->keep_fd >= 0)
      close (priv->keep_fd);
    free (priv->blocks);
    bz_arena_release (&priv->arena);
    pthread_mutex_destroy (&priv->arena_lock);
    free (priv);
    idx->priv = NULL;
  }
}

/*----------------------------------------------------------------------
 * The decoder of one block.
 */

struct bz_decoder {
  struct bz_block block;
  struct bz_arena *arena;       /* The index's. */
  int keep_fd;                  /* The index's keep file. */
  uint64_t served;              /* Bytes served from it or as zeros. */
  uint64_t coff, csize;
  unsigned char *buf;           /* The rewrapped stream. */
  bz_stream strm;
  int strm_init;
  int started;
  int done;
};

static int
bzip2_decoder_new (struct ad_index *idx, const struct ad_frame *frame,
                   size_t frame_no, void **decoder, struct ad_error *err)
{
  struct bz_priv *priv = idx->priv;
  struct bz_decoder *d;
  const struct bz_block *b;

  if (priv == NULL || frame_no >= priv->n)
    return ad_error_set (err, EINVAL, "no such block");
  b = &priv->blocks[frame_no];
  if (frame->aux != b->start_bit || frame->coff != b->start_bit / 8 ||
      frame->csize != (b->end_bit - 1) / 8 + 1 - b->start_bit / 8)
    return ad_error_set (err, EINVAL, "frame does not match block %zu",
                         frame_no);
  d = calloc (1, sizeof *d);
  if (d == NULL)
    return ad_error_set (err, ENOMEM, "calloc: %m");
  d->block = *b;
  d->arena = &priv->arena;
  d->keep_fd = priv->keep_fd;
  d->coff = frame->coff;
  d->csize = frame->csize;
  *decoder = d;
  return 0;
}

/* Read the block's bytes in one read and bz_rewrap them. */
static int
decoder_start (struct bz_decoder *d, struct ad_source *src,
               struct ad_error *err)
{
  const struct bz_block *b = &d->block;
  uint64_t nbits = b->end_bit - b->start_bit;
  unsigned shift = b->start_bit % 8;

  /* Guaranteed by open; checked again since we allocate from it. */
  if (nbits > MAX_BLOCK_CSIZE (b->level) * 8 || nbits < MIN_BLOCK_BITS ||
      d->csize != (shift + nbits + 7) / 8)
    return ad_error_set (err, EIO, "inconsistent block bounds");
  d->buf = malloc (bz_rewrap_buffer_size (nbits));
  if (d->buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (ad_source_pread (src, d->buf + 4, d->csize, d->coff, err) == -1)
    return -1;
  bz_rewrap (d->buf, d->buf + 4, shift, nbits, b->level, b->crc);
  /* The image must not have changed since it was indexed. */
  if (ad_be32 (d->buf + 4) != (BLOCK_MAGIC >> 16) ||
      ((d->buf[8] << 8) | d->buf[9]) != (BLOCK_MAGIC & 0xffff) ||
      ad_be32 (d->buf + 10) != b->crc)
    return ad_error_set (err, EIO, "block magic or CRC differs from what "
                         "the index recorded (image changed?)");
  return 0;
}

/* Start libbz2 on the rewrapped stream. */
static int
decoder_start_libbz2 (struct bz_decoder *d, struct ad_error *err)
{
  uint64_t nbits = d->block.end_bit - d->block.start_bit;
  int ret;

  bz_use_arena (&d->strm, d->arena);
  ret = BZ2_bzDecompressInit (&d->strm, 0, 0);
  if (ret != BZ_OK)
    return ad_error_set (err, ret == BZ_MEM_ERROR ? ENOMEM : EIO,
                         "BZ2_bzDecompressInit: %s", bz_strerror (ret));
  d->strm_init = 1;
  d->strm.next_in = (char *) d->buf;
  d->strm.avail_in = bz_rewrap_size (nbits);
  return 0;
}

/* Decode the whole block into out with bzip2-decode.c.  True if it
 * decoded to exactly the block's size and its CRC matched.
 */
static bool
decode_whole (struct bz_decoder *d, void *out, size_t count)
{
  uint64_t usize;
  bool zero;

  return ad_bz2_block_decode_spare (d->buf + 4, d->block.end_bit -
                                    d->block.start_bit, d->block.level,
                                    out, count, &usize, &zero) &&
    usize == d->block.usize;
}

/* Serve a block that decoded to zeros at open, or that the keep file
 * holds, without decoding it.
 */
static ssize_t
serve_known (struct bz_decoder *d, void *out, size_t count,
             struct ad_error *err)
{
  const struct bz_block *b = &d->block;
  uint64_t left = b->usize - d->served;
  size_t done = 0;

  if (count > left)
    count = left;
  if (b->zero)
    memset (out, 0, count);
  else
    while (done < count) {
      ssize_t r = pread (d->keep_fd, (char *) out + done, count - done,
                         b->keep_off + d->served + done);

      if (r == -1 && errno == EINTR)
        continue;
      if (r <= 0) {
        if (r == 0)
          errno = EIO;
        return ad_error_set (err, errno, "reading the block's bytes "
                             "kept at open (offset %" PRIu64 " of the "
                             "keep file): %m",
                             b->keep_off + d->served + done);
      }
      done += r;
    }
  d->served += count;
  return count;
}

static ssize_t
bzip2_decoder_read (void *decoder, struct ad_source *src, void *out,
                    size_t count, struct ad_error *err)
{
  struct bz_decoder *d = decoder;

  if (d->block.zero || (d->block.kept && d->keep_fd >= 0))
    return serve_known (d, out, count, err);

  if (!d->started) {
    d->started = 1;
    if (decoder_start (d, src, err) == -1) {
      d->done = -1;
      return -1;
    }
    /* The usual read of a whole block: our own decoder, straight into
     * out; anything it does not accept goes to libbz2.
     */
    if (count >= d->block.usize && decode_whole (d, out, count)) {
      d->done = 1;
      free (d->buf);
      d->buf = NULL;
      return d->block.usize;
    }
    if (decoder_start_libbz2 (d, err) == -1) {
      d->done = -1;
      return -1;
    }
  }
  if (d->done == -1)
    return ad_error_set (err, EIO, "read after an error");
  if (d->done)
    return 0;
  if (count > (1U << 30))
    count = 1U << 30;

  for (;;) {
    size_t produced;
    int ret;

    d->strm.next_out = out;
    d->strm.avail_out = count;
    ret = BZ2_bzDecompress (&d->strm);
    produced = count - d->strm.avail_out;
    if (ret == BZ_STREAM_END) {
      /* libbz2 has checked the block CRC and the combined CRC (the
       * same number) before reporting the end.
       */
      d->done = 1;
      BZ2_bzDecompressEnd (&d->strm);
      d->strm_init = 0;
      free (d->buf);
      d->buf = NULL;
      return produced;
    }
    if (ret != BZ_OK) {
      d->done = -1;
      return ad_error_set (err, ret == BZ_MEM_ERROR ? ENOMEM : EIO,
                           "%s", bz_strerror (ret));
    }
    if (produced > 0)
      return produced;
    if (d->strm.avail_in == 0) {
      d->done = -1;
      return ad_error_set (err, EIO, "%s", bz_strerror (BZ_UNEXPECTED_EOF));
    }
  }
}

static void
bzip2_decoder_free (void *decoder)
{
  struct bz_decoder *d = decoder;

  if (d == NULL)
    return;
  if (d->strm_init)
    BZ2_bzDecompressEnd (&d->strm);
  free (d->buf);
  free (d);
}

const struct ad_format_ops ad_bzip2_ops = {
  .format = AD_FORMAT_BZIP2,
  .name = "bzip2",
  .open = bzip2_open,
  .advance = NULL,
  .decoder_new = bzip2_decoder_new,
  .decoder_read = bzip2_decoder_read,
  .decoder_free = bzip2_decoder_free,
  .save = bzip2_save,
  .load = bzip2_load,
  .close = bzip2_close,
};
