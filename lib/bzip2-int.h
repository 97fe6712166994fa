/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: bzip2 images, what the parts of the format share (see
 * bzip2.c for the format and how it is indexed).  Only they include
 * it.
 *
 *   bzip2.c         the format: the stream grammar over the magics
 *                   found (parse_streams), open, the persisted index,
 *                   the decoder of one block;
 *   bzip2-scan.c    the sizing pass: the block-magic scanner with its
 *                   hit table and read window, and the jobs that size
 *                   candidate blocks on the workers at open, keeping
 *                   their bytes;
 *   bzip2-block.c   a block as libbz2 decodes it: rewrapped as a
 *                   one-block stream, with libbz2's memory from an
 *                   arena;
 *   bzip2-decode.c  a block decoder without libbz2 (see
 *                   bzip2-decode.h).
 */
#ifndef AUTODECOMP_BZIP2_INT_H
#define AUTODECOMP_BZIP2_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include <bzlib.h>

#include "format-int.h"
#include "window.h"
#include "pool.h"
#include "persist.h"

#define BLOCK_MAGIC 0x314159265359ULL
#define EOS_MAGIC 0x177245385090ULL

/* Bits of the magic, CRC pair that starts every block and ends every
 * stream.
 */
#define MARKER_BITS 80

/* Bounds.  A block's BWT data holds at most nblockMAX = 100000 * level
 * bytes (libbz2 refuses more).  Undoing the initial run-length coding
 * (RLE1: four equal bytes then a count byte 0..255, although
 * compressors only write up to 251) turns every 5 bytes into at most
 * 4 + 255 = 259, so a block decodes to at most level * 100000 / 5 * 259
 * = level * 5180000 bytes (46620000 for level 9; real compressors stay
 * under level * 100000 * 51 = 45900000, which is what 900 kB of zeros
 * give).  The sizing pass never allocates output by the block's size:
 * libbz2 counts into a 256 KiB scratch buffer, and a worker keeps
 * bytes in a buffer of at most KEEP_BLOCK_MAX (bzip2-scan.c); the
 * decoder writes into the caller's buffer.  (A frame larger than
 * max_frame is indexed anyway; it is ad_index_decode_frame that refuses
 * to decode it into memory.)  A block's compressed size is bounded
 * too: at most nblockMAX + 1 Huffman symbols of at most 20 bits, plus
 * headers, 32767 selectors of at most 6 bits and 6 code length tables
 * of 258 lengths of at most 39 bits each, about 32 KiB in all; we allow
 * level * 250000 + 64 KiB bytes.  Only a block whose code length deltas
 * wander up and down (legal in the format, written by no compressor)
 * can exceed it; such a block, or any span without a magic in that
 * many bytes, is refused.
 */

/* Largest decoded block. */
#define MAX_BLOCK_USIZE(level) ((uint64_t) (level) * (100000 / 5 * 259))

/* Largest compressed block (span from its magic to the next) in bytes. */
#define MAX_BLOCK_CSIZE(level) ((uint64_t) (level) * 250000 + 65536)

/* No block is shorter: magic, blockCRC, randomised, origPtr, the 16-bit
 * map of used ranges with at least one 16-bit range, nGroups and
 * nSelectors make 155 bits before anything variable.  Shorter spans are
 * failed without calling libbz2 (as "needs more bits").
 */
#define MIN_BLOCK_BITS 155

/* libbz2 counts a block's bytes into a scratch buffer this large. */
#define SCRATCH_SIZE (256 * 1024)

/* Our own code next to libbz2's (which are -1 .. -9). */
#define BZ_OUR_TRUNCATED (-100)

enum { HIT_BLOCK = 1, HIT_EOS = 2 };
enum { SPEC_NONE = 0, SPEC_PENDING, SPEC_OK, SPEC_FAIL };

/* One magic found by the scanner, and the result of decoding the span
 * it starts (for block magics).  The calling thread fills the first
 * fields before queueing the job; the worker fills the result fields.
 */
struct bz_hit {
  uint64_t bit;                 /* Bit offset of the magic's first bit. */
  uint64_t keep_off;            /* Result: where the keep file holds its
                                   bytes, if kept. */
  uint32_t crc;                 /* The 32 bits after the magic. */
  uint32_t usize;               /* Result: decoded size. */
  uint8_t type;                 /* HIT_BLOCK or HIT_EOS. */
  uint8_t pre_level;            /* 1..9 if "BZh1".."BZh9" is just before. */
  uint8_t crc_ok;               /* The crc bits are within the file. */
  uint8_t job_level;            /* Level the speculative decode used. */
  uint8_t status;               /* SPEC_*. */
  uint8_t need_more;            /* Failed after reading past the cut. */
  uint8_t zero;                 /* Decoded to zeros only. */
  uint8_t kept;                 /* Its bytes are in the keep file. */
  int8_t bzret;                 /* libbz2's (or our) error code. */
};

/* Hits are stored in segments that never move, so workers may write
 * results while the calling thread adds hits.
 */
#define HIT_SEG_SHIFT 12
#define HIT_SEG_SIZE (1 << HIT_SEG_SHIFT)

struct hit_table {
  struct bz_hit **segs;
  size_t nsegs, segs_alloc;
  size_t n;
  size_t max;                   /* Refuse more hits than this. */
};

/* Spare memory for libbz2 (see "libbz2's memory" in bzip2-block.c). */
#define ARENA_SLOTS 3

struct bz_arena {
  pthread_mutex_t *lock;        /* NULL if only one thread uses it. */
  void *spare[ARENA_SLOTS];     /* Freed blocks (headers), or NULL. */
};

/* The result of decoding one rewrapped block. */
struct decode_result {
  int ok;
  int need_more;
  int bzret;
  uint64_t usize;
  int zero;
};

/* The keep file (see bzip2-scan.c). */
struct bz_keep {
  int fd;
  uint64_t max;                 /* opts.keep_size. */
  uint64_t used;                /* Bytes reserved (atomic). */
  bool full;                    /* A block did not fit (atomic). */
};

/* The state of open's sizing pass (bzip2-scan.c) and of the walk over
 * its hits (parse_streams).
 */
struct bz_open {
  struct ad_index *idx;
  struct ad_source *src;
  struct hit_table hits;
  struct ad_batch *batch;       /* The workers. */

  /* The scanner. */
  uint64_t reg;                 /* The last 8 bytes scanned. */
  uint64_t scanned;             /* Bytes scanned so far. */
  int have_nonzero;
  uint64_t last_nonzero;        /* Offset of the last nonzero byte. */

  /* The file, scanned up to wend, holding the bytes from where the
   * first hit not finalized may need them.
   */
  struct ad_window win;
  uint64_t wend;

  size_t next_fin;              /* First hit not finalized yet. */
  int cur_level;                /* Level of the last header seen. */

  unsigned char *scratch;       /* For synchronous decodes. */
  struct bz_arena arena;        /* Likewise. */

  struct bz_keep keep;          /* The keep file. */
};

/* Hit number k. */
static inline struct bz_hit *
bz_hit_at (struct hit_table *t, size_t k)
{
  return &t->segs[k >> HIT_SEG_SHIFT][k & (HIT_SEG_SIZE - 1)];
}

/* bzip2-block.c */

/* What the index keeps per frame (block). */
struct bz_block {
  uint64_t start_bit;           /* Block magic. */
  uint64_t end_bit;             /* The next magic (exclusive end). */
  uint32_t crc;                 /* blockCRC. */
  uint32_t usize;
  uint32_t stream;
  uint8_t level;
  uint8_t zero;                 /* Decoded to zeros at open (never set
                                   by a persisted index). */
  uint8_t kept;                 /* Its bytes are in the keep file, */
  uint64_t keep_off;            /* from this offset. */
};

struct bz_priv {
  struct bz_block *blocks;
  size_t n;
  int keep_fd;                  /* The keep file, or -1. */
  /* libbz2's memory for the decoders (see "libbz2's memory" in
   * bzip2-block.c); every decoder is freed before the index is closed.
   */
  pthread_mutex_t arena_lock;
  struct bz_arena arena;
};

/* The persisted index's bzip2 state (see docs/index-format.md). */
extern int bzip2_save (struct ad_index *idx, struct ad_source *src,
                       struct ad_buf *out, const char **why);
extern int bzip2_load (struct ad_index *idx, struct ad_cursor *in,
                       uint64_t file_size);

/* A block of nbits bits rewrapped as a one-block stream: its size, the
 * size of a buffer to rewrap it in place, and the rewrapping.
 */
extern size_t bz_rewrap_size (uint64_t nbits);
extern size_t bz_rewrap_buffer_size (uint64_t nbits);
extern void bz_rewrap (unsigned char *out, const unsigned char *in,
                       unsigned shift, uint64_t nbits, int level,
                       uint32_t crc);
extern const char *bz_strerror (int ret);

/* libbz2's memory. */
extern void bz_arena_release (struct bz_arena *a);
extern void bz_use_arena (bz_stream *s, struct bz_arena *a);

/* Decode a rewrapped block with libbz2, counting its bytes; decode the
 * span [start_bit, end_bit) of the image so, on the calling thread.
 */
extern void bz_decode_rewrapped (const unsigned char *in, size_t inlen,
                                 uint64_t nbits, int level,
                                 unsigned char *scratch,
                                 struct bz_arena *arena,
                                 struct decode_result *r);
extern int bz_decode_span_sync (struct bz_open *st, uint64_t start_bit,
                                uint64_t end_bit, int level, uint32_t crc,
                                struct decode_result *r,
                                struct ad_error *err);

/* bzip2-scan.c */

/* Create the keep file. */
extern void bz_keep_open (struct bz_keep *k, uint64_t max);

/* The workers of the sizing pass (a batch of pool.h). */
extern void *bz_worker_new (void *ctx);
extern void bz_worker_free (void *ctx, void *state);
extern bool bz_run_job (void *ctx, void *state, void *vjob, bool drop);
extern void bz_hit_table_free (struct hit_table *t);

/* Scan the whole image for magics, queueing the candidate blocks. */
extern int bz_sizing_scan (struct bz_open *st, struct ad_error *err);

#endif /* AUTODECOMP_BZIP2_INT_H */
