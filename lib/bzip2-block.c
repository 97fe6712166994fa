/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: a bzip2 block as libbz2 decodes it (see bzip2-int.h):
 * its bits rewrapped as a one-block stream, libbz2's memory from an
 * arena, and the decode of a rewrapped block or of a span of the image.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>

#include <bzlib.h>

#include "bzip2-int.h"

/* Before each block of the arena (see "libbz2's memory" below): its
 * size, keeping 16-byte alignment.
 */
#define ARENA_HEADER 16

/*----------------------------------------------------------------------
 * Rewrapping a block as a one-block stream.
 */

/* OR n (<= 64) bits of value into buf at bit offset pos, most
 * significant first.  The bits there must be zero.
 */
static void
put_bits (unsigned char *buf, uint64_t pos, uint64_t value, unsigned n)
{
  while (n > 0) {
    n--;
    if ((value >> n) & 1)
      buf[pos / 8] |= 0x80 >> (pos % 8);
    pos++;
  }
}

/* Size of the rewrapped one-block stream for a block of nbits bits. */
size_t
bz_rewrap_size (uint64_t nbits)
{
  return 4 + (nbits + MARKER_BITS + 7) / 8;
}

/* Size of a buffer able to hold the raw block bytes at offset 4 and
 * then the rewrapped stream (see bz_rewrap).
 */
size_t
bz_rewrap_buffer_size (uint64_t nbits)
{
  size_t raw = 4 + (7 + nbits + 7) / 8;
  size_t wrapped = bz_rewrap_size (nbits);

  return (raw > wrapped ? raw : wrapped) + 8;
}

/* Build the one-block stream "BZh" level, block, eos magic, combinedCRC
 * (= blockCRC), padding, into out.  in points to the byte holding the
 * block's first bit, shift is that bit's position in it (0 = most
 * significant), nbits the block's length in bits.  in may be out + 4
 * (the raw bytes read in place): each output byte depends only on the
 * input bytes at the same and the next position.
 */
void
bz_rewrap (unsigned char *out, const unsigned char *in, unsigned shift,
           uint64_t nbits, int level, uint32_t crc)
{
  size_t nout = (nbits + 7) / 8;
  size_t nin = (shift + nbits + 7) / 8;
  size_t total = bz_rewrap_size (nbits);
  size_t i;

  if (shift == 0)
    memmove (out + 4, in, nout);
  else {
    for (i = 0; i + 1 < nin; i++)
      out[4 + i] = (in[i] << shift) | (in[i + 1] >> (8 - shift));
    if (i < nout)
      out[4 + i] = in[i] << shift;
  }
  if (nbits % 8)
    out[4 + nout - 1] &= 0xff << (8 - nbits % 8);
  memset (out + 4 + nout, 0, total - 4 - nout);
  out[0] = 'B';
  out[1] = 'Z';
  out[2] = 'h';
  out[3] = '0' + level;
  put_bits (out + 4, nbits, EOS_MAGIC, 48);
  put_bits (out + 4, nbits + 48, crc, 32);
}

static int
all_zero (const unsigned char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

const char *
bz_strerror (int ret)
{
  switch (ret) {
  case BZ_OK: return "no error";
  case BZ_SEQUENCE_ERROR: return "libbz2 sequence error";
  case BZ_PARAM_ERROR: return "libbz2 parameter error";
  case BZ_MEM_ERROR: return "out of memory in libbz2 (BZ_MEM_ERROR)";
  case BZ_DATA_ERROR:
    return "corrupt data or CRC mismatch (BZ_DATA_ERROR)";
  case BZ_DATA_ERROR_MAGIC: return "bad magic (BZ_DATA_ERROR_MAGIC)";
  case BZ_UNEXPECTED_EOF:
    return "block ends before its end-of-block symbol (truncated?)";
  case BZ_OUR_TRUNCATED:
    return "no end-of-stream marker follows (truncated?)";
  default: return "unknown libbz2 error";
  }
}

/*----------------------------------------------------------------------
 * libbz2's memory.
 *
 * Every BZ2_bzDecompressInit allocates its state (about 64 KiB), and
 * the first block header then allocates the inverse BWT array, level *
 * 400000 bytes (3.6 MB for -9), freed again by BZ2_bzDecompressEnd.
 * The sizing pass decodes one candidate after another, and every frame
 * read starts a new decoder, so these two allocations repeat for every
 * block.  An arena keeps the last few freed blocks and hands them out
 * again when the same size is asked for (libbz2 asks for only these two
 * sizes in its fast mode).  It is used by one thread at a time (a
 * worker's own), or behind a mutex (the index's, shared by decoders).
 * libbz2 does not expect zeroed memory.
 */

static void *
arena_alloc (void *opaque, int items, int size)
{
  struct bz_arena *a = opaque;
  unsigned char *p = NULL;
  size_t n, i;

  if (items < 0 || size < 0 ||
      (size > 0 && (size_t) items > (SIZE_MAX - ARENA_HEADER) / size))
    return NULL;
  n = (size_t) items * size;
  if (a->lock)
    pthread_mutex_lock (a->lock);
  for (i = 0; i < ARENA_SLOTS; i++) {
    size_t have;

    if (a->spare[i] == NULL)
      continue;
    memcpy (&have, a->spare[i], sizeof have);
    if (have == n) {
      p = a->spare[i];
      a->spare[i] = NULL;
      break;
    }
  }
  if (a->lock)
    pthread_mutex_unlock (a->lock);
  if (p == NULL) {
    p = malloc (ARENA_HEADER + n);
    if (p == NULL)
      return NULL;
    memcpy (p, &n, sizeof n);
  }
  return p + ARENA_HEADER;
}

static void
arena_free (void *opaque, void *ptr)
{
  struct bz_arena *a = opaque;
  unsigned char *p;
  size_t i;

  if (ptr == NULL)
    return;
  p = (unsigned char *) ptr - ARENA_HEADER;
  if (a->lock)
    pthread_mutex_lock (a->lock);
  for (i = 0; i < ARENA_SLOTS; i++)
    if (a->spare[i] == NULL) {
      a->spare[i] = p;
      p = NULL;
      break;
    }
  if (a->lock)
    pthread_mutex_unlock (a->lock);
  free (p);
}

/* Free the spare blocks (when nobody uses the arena any more). */
void
bz_arena_release (struct bz_arena *a)
{
  size_t i;

  for (i = 0; i < ARENA_SLOTS; i++) {
    free (a->spare[i]);
    a->spare[i] = NULL;
  }
}

/* Make s use the arena a (before BZ2_bzDecompressInit). */
void
bz_use_arena (bz_stream *s, struct bz_arena *a)
{
  s->bzalloc = arena_alloc;
  s->bzfree = arena_free;
  s->opaque = a;
}

/* Decode a rewrapped one-block stream of a block of nbits bits,
 * counting its output in scratch, with libbz2's memory from arena.
 * Fills r; never fails otherwise.
 */
void
bz_decode_rewrapped (const unsigned char *in, size_t inlen, uint64_t nbits,
                     int level, unsigned char *scratch,
                     struct bz_arena *arena, struct decode_result *r)
{
  bz_stream s;
  uint64_t total_in;
  int ret;

  memset (r, 0, sizeof *r);
  r->zero = 1;
  if (nbits < MIN_BLOCK_BITS) {
    r->bzret = BZ_UNEXPECTED_EOF;
    r->need_more = 1;
    return;
  }
  memset (&s, 0, sizeof s);
  bz_use_arena (&s, arena);
  ret = BZ2_bzDecompressInit (&s, 0, 0);
  if (ret != BZ_OK) {
    r->bzret = ret;
    return;
  }
  s.next_in = (char *) in;
  s.avail_in = inlen;
  for (;;) {
    size_t produced;

    s.next_out = (char *) scratch;
    s.avail_out = SCRATCH_SIZE;
    ret = BZ2_bzDecompress (&s);
    produced = SCRATCH_SIZE - s.avail_out;
    r->usize += produced;
    if (r->zero && produced)
      r->zero = all_zero (scratch, produced);
    if (ret == BZ_OK && r->usize > MAX_BLOCK_USIZE (level))
      ret = BZ_DATA_ERROR;      /* libbz2 makes this impossible. */
    if (ret == BZ_STREAM_END) {
      r->ok = 1;
      break;
    }
    if (ret != BZ_OK) {
      r->bzret = ret;
      break;
    }
    if (produced == 0 && s.avail_in == 0) {
      r->bzret = BZ_UNEXPECTED_EOF;
      r->need_more = 1;
      break;
    }
  }
  total_in = s.total_in_lo32 | ((uint64_t) s.total_in_hi32 << 32);
  BZ2_bzDecompressEnd (&s);
  /* Bytes before index (32 + nbits) / 8 hold only the header and the
   * block's own bits.  A failure after reading further may be caused by
   * the cut, so merging may help.
   */
  if (!r->ok && total_in > (32 + nbits) / 8)
    r->need_more = 1;
}

/* Decode the span [start_bit, end_bit) on the calling thread, reading
 * it from the source.
 */
int
bz_decode_span_sync (struct bz_open *st, uint64_t start_bit,
                     uint64_t end_bit, int level, uint32_t crc,
                     struct decode_result *r, struct ad_error *err)
{
  uint64_t nbits = end_bit - start_bit;
  size_t nin = (start_bit % 8 + nbits + 7) / 8;
  unsigned char *buf;

  if (st->scratch == NULL) {
    st->scratch = malloc (SCRATCH_SIZE);
    if (st->scratch == NULL)
      return ad_error_set (err, ENOMEM, "malloc: %m");
  }
  if (nbits > MAX_BLOCK_CSIZE (level) * 8)
    return ad_error_set (err, EIO, "internal error: span too long");
  buf = malloc (bz_rewrap_buffer_size (nbits));
  if (buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (ad_source_pread (st->src, buf + 4, nin, start_bit / 8, err) == -1) {
    free (buf);
    return -1;
  }
  bz_rewrap (buf, buf + 4, start_bit % 8, nbits, level, crc);
  bz_decode_rewrapped (buf, bz_rewrap_size (nbits), nbits, level,
                       st->scratch, &st->arena, r);
  free (buf);
  return 0;
}
