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
 * 1. The calling thread reads the image in sequential 8 MiB chunks and
 *    looks for both magics at every bit offset ("hits"): for each byte,
 *    a 65536-entry table indexed by the two bytes 3 and 2 before it
 *    (16 bits that lie inside a magic ending in this byte, whatever its
 *    bit offset) says which of the 16 (magic, shift) forms may end
 *    here; only then (about one byte in 4096 on random data) are the 8
 *    bytes ending here loaded as a 64-bit big-endian shift register
 *    for the full 48-bit compares.  This runs at about 1 GB/s.  At most
 *    size / 12 + 16 hits are accepted (the densest valid file is a run
 *    of 14-byte empty streams).  The span between a block magic and the
 *    next hit is a candidate block: its bits are copied out, shifted to
 *    a byte boundary and rewrapped as a one-block stream: "BZh" +
 *    level, the block, an eos magic and a combinedCRC equal to the
 *    block's CRC, padding.  Worker threads size these with
 *    their own block decoder (bzip2-size.c), which counts the bytes a
 *    block decodes to and checks its CRC (writing them only to keep
 *    them, see "Keeping the pass's output"), about 1.5 times as fast
 *    as libbz2; a block it does not accept (it never
 *    guesses) is decoded with BZ2_bzDecompress into a small scratch
 *    buffer instead, counting the bytes, and libbz2 verifies the block
 *    CRC (and the combined CRC, the same number).  At most two candidates per worker wait in the queue, so
 *    memory stays at a few blocks per worker plus the read window.
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
 * the merged span is within the compressed bound below.  A false eos
 * magic inside a block is handled the same way (the block before it
 * fails, the merge swallows it).  A candidate that fails having read
 * only its own bits is corrupt and is reported at once.  A wrong merge
 * cannot yield wrong bytes: every accepted block has passed its own
 * CRC, and every stream's combinedCRC is checked over the accepted
 * blocks.
 *
 * Bounds.  A block's BWT data holds at most nblockMAX = 100000 * level
 * bytes (libbz2 refuses more).  Undoing the initial run-length coding
 * (RLE1: four equal bytes then a count byte 0..255, although
 * compressors only write up to 251) turns every 5 bytes into at most
 * 4 + 255 = 259, so a block decodes to at most level * 100000 / 5 * 259
 * = level * 5180000 bytes (46620000 for level 9; real compressors stay
 * under level * 100000 * 51 = 45900000, which is what 900 kB of zeros
 * give).  The sizing pass never allocates output by the block's size:
 * libbz2 counts into a 256 KiB scratch buffer, and a worker keeps
 * bytes in a buffer of at most KEEP_BLOCK_MAX; the decoder writes into
 * the caller's buffer.  (A frame larger than max_frame is indexed
 * anyway; it is ad_index_decode_frame that refuses to decode it into
 * memory.)  A
 * block's compressed size is bounded too: at most nblockMAX + 1 Huffman
 * symbols of at most 20 bits, plus headers, 32767 selectors of at most
 * 6 bits and 6 code length tables of 258 lengths of at most 39 bits
 * each, about 32 KiB in all; we allow level * 250000 + 64 KiB bytes.
 * Only a block whose code length deltas wander up and down (legal in
 * the format, written by no compressor) can exceed it; such a block,
 * or any span without a magic in that many bytes, is refused.
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <bzlib.h>

#include "format.h"
#include "persist.h"
#include "bzip2-size.h"
#include "pool.h"

#define BLOCK_MAGIC 0x314159265359ULL
#define EOS_MAGIC 0x177245385090ULL
#define MASK48 ((1ULL << 48) - 1)

/* Bits of the magic, CRC pair that starts every block and ends every
 * stream.
 */
#define MARKER_BITS 80

/* Largest decoded block, as explained above. */
#define MAX_BLOCK_USIZE(level) ((uint64_t) (level) * (100000 / 5 * 259))

/* Largest compressed block (span from its magic to the next) in bytes. */
#define MAX_BLOCK_CSIZE(level) ((uint64_t) (level) * 250000 + 65536)

/* No block is shorter: magic, blockCRC, randomised, origPtr, the 16-bit
 * map of used ranges with at least one 16-bit range, nGroups and
 * nSelectors make 155 bits before anything variable.  Shorter spans are
 * failed without calling libbz2 (as "needs more bits").
 */
#define MIN_BLOCK_BITS 155

/* How many following spans a failing candidate may absorb. */
#define MAX_MERGES 8

#define SCAN_CHUNK (8 * 1024 * 1024)
#define SCRATCH_SIZE (256 * 1024)
#define MAX_THREADS 256

/* Keep the read window from growing without end when no magic follows
 * one: beyond this a span is known to be too long for any block.
 */
#define MAX_WINDOW_SPAN (MAX_BLOCK_CSIZE (9) + 64)

/* The pass keeps a block's bytes (see "Keeping the pass's output"
 * below) only if they fit in its worker's buffer, which starts at
 * KEEP_BUF_START and grows up to KEEP_BLOCK_MAX.
 */
#define KEEP_BUF_START (1024 * 1024)
#define KEEP_BLOCK_MAX (8 * 1024 * 1024)

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

/* Block decoders kept for serving reads (process-wide). */
#define SPARE_SIZERS 4

/* Spare memory for libbz2 (see "libbz2's memory" below). */
#define ARENA_SLOTS 3
/* Before each block: its size, keeping 16-byte alignment. */
#define ARENA_HEADER 16

struct bz_arena {
  pthread_mutex_t *lock;        /* NULL if only one thread uses it. */
  void *spare[ARENA_SLOTS];     /* Freed blocks (headers), or NULL. */
};

struct bz_priv {
  struct bz_block *blocks;
  size_t n;
  int keep_fd;                  /* The keep file, or -1. */
  /* libbz2's memory for the decoders (see "libbz2's memory" below);
   * every decoder is freed before the index is closed.
   */
  pthread_mutex_t arena_lock;
  struct bz_arena arena;
};

/* Block decoders' memory (bzip2-size.c, up to 3.6 MB each), kept for
 * the next decode of any image: at most SPARE_SIZERS in the process,
 * however many images are open.
 */
static pthread_mutex_t sizers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ad_bz2_sizer spare_sizers[SPARE_SIZERS];
static size_t nspare_sizers;

/* The result of decoding one rewrapped block. */
struct decode_result {
  int ok;
  int need_more;
  int bzret;
  uint64_t usize;
  int zero;
};

/*----------------------------------------------------------------------
 * Bits.
 */

static uint16_t scan_table[65536];
static pthread_once_t scan_table_once = PTHREAD_ONCE_INIT;

/* Bit k of an entry (k = 0..7): the block magic may end in this byte
 * with its last bit k bits above the byte's least significant bit; bit
 * 8 + k: the same for the eos magic.  The index is bits 16..31 of the
 * shift register, which lie inside the magic for every k < 8.
 */
static void
init_scan_table (void)
{
  unsigned k;

  for (k = 0; k < 8; k++) {
    scan_table[(BLOCK_MAGIC >> (16 - k)) & 0xffff] |= 1 << k;
    scan_table[(EOS_MAGIC >> (16 - k)) & 0xffff] |= 1 << (8 + k);
  }
}

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

/* Read 32 bits at bit offset pos of buf (which must hold them). */
static uint32_t
get_bits32 (const unsigned char *buf, uint64_t pos)
{
  const unsigned char *p = buf + pos / 8;
  unsigned shift = pos % 8;
  uint64_t v = ((uint64_t) p[0] << 32) | ((uint64_t) p[1] << 24) |
    ((uint64_t) p[2] << 16) | ((uint64_t) p[3] << 8);

  if (shift)
    v |= p[4];
  return (uint32_t) (v >> (8 - shift));
}

/* Size of the rewrapped one-block stream for a block of nbits bits. */
static size_t
rewrap_size (uint64_t nbits)
{
  return 4 + (nbits + MARKER_BITS + 7) / 8;
}

/* Size of a buffer able to hold the raw block bytes at offset 4 and
 * then the rewrapped stream (see rewrap).
 */
static size_t
rewrap_buffer_size (uint64_t nbits)
{
  size_t raw = 4 + (7 + nbits + 7) / 8;
  size_t wrapped = rewrap_size (nbits);

  return (raw > wrapped ? raw : wrapped) + 8;
}

/* Build the one-block stream "BZh" level, block, eos magic, combinedCRC
 * (= blockCRC), padding, into out.  in points to the byte holding the
 * block's first bit, shift is that bit's position in it (0 = most
 * significant), nbits the block's length in bits.  in may be out + 4
 * (the raw bytes read in place): each output byte depends only on the
 * input bytes at the same and the next position.
 */
static void
rewrap (unsigned char *out, const unsigned char *in, unsigned shift,
        uint64_t nbits, int level, uint32_t crc)
{
  size_t nout = (nbits + 7) / 8;
  size_t nin = (shift + nbits + 7) / 8;
  size_t total = rewrap_size (nbits);
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

static const char *
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
static void
arena_release (struct bz_arena *a)
{
  size_t i;

  for (i = 0; i < ARENA_SLOTS; i++) {
    free (a->spare[i]);
    a->spare[i] = NULL;
  }
}

/* Make s use the arena a (before BZ2_bzDecompressInit). */
static void
use_arena (bz_stream *s, struct bz_arena *a)
{
  s->bzalloc = arena_alloc;
  s->bzfree = arena_free;
  s->opaque = a;
}

/* Decode a rewrapped one-block stream of a block of nbits bits,
 * counting its output in scratch, with libbz2's memory from arena.
 * Fills r; never fails otherwise.
 */
static void
decode_rewrapped (const unsigned char *in, size_t inlen, uint64_t nbits,
                  int level, unsigned char *scratch, struct bz_arena *arena,
                  struct decode_result *r)
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
  use_arena (&s, arena);
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

/*----------------------------------------------------------------------
 * Keeping the pass's output.
 *
 * Sizing a block means decoding it, and decoding (the Huffman codes,
 * the inverse BWT) is nearly all of what serving the block costs; a
 * copy of its bytes is cheap.  So a client that reads the image right
 * after connect (a full copy) would pay for every block twice.  When
 * opts.keep_size is not 0, the workers write the bytes of the blocks
 * they size into the keep file, a temporary file in $TMPDIR (default
 * /var/tmp) unlinked at once, and the decoder of a kept block reads it
 * back instead of decoding.  The file grows to at most opts.keep_size
 * bytes: blocks are packed one after the other, in the order the
 * workers finish them, and once one does not fit no more are kept, so
 * what is kept is (nearly) the first blocks of the image, where a copy
 * starts.  Blocks of zeros are not written (their decoder produces
 * zeros), nor blocks larger than KEEP_BLOCK_MAX (their worker does not
 * buffer them); a block whose span was merged after a false magic, or
 * that the sizing decoder left to libbz2, is not kept either.  All of
 * these are decoded on demand as before.  The file lives as long as
 * the index.
 *
 * The bytes written are those whose CRC the sizing decoder checked
 * (bzip2-size.c), so a kept block is as verified as a decoded one.
 */

struct job {
  struct bz_hit *hit;
  unsigned char *buf;           /* The rewrapped stream. */
  size_t len;
  uint64_t nbits;
  int level;
};

struct bz_keep {
  int fd;
  uint64_t max;                 /* opts.keep_size. */
  uint64_t used;                /* Bytes reserved (atomic). */
  bool full;                    /* A block did not fit (atomic). */
};

/* A worker's buffer for the bytes of the block it sizes. */
struct keep_buf {
  unsigned char *data;
  size_t cap;
};

/* Create the keep file; on failure keep nothing (the pass only runs
 * slower for it).
 */
static void
keep_open (struct bz_keep *k, uint64_t max)
{
  const char *tmpdir = getenv ("TMPDIR");
  char *template = NULL;

  k->fd = -1;
  k->max = max;
  k->used = 0;
  k->full = false;
  if (max == 0)
    return;
  if (tmpdir == NULL || *tmpdir == '\0')
    tmpdir = "/var/tmp";
  if (asprintf (&template, "%s/autodecomp-keepXXXXXX", tmpdir) == -1)
    return;
  k->fd = mkostemp (template, O_CLOEXEC);
  if (k->fd >= 0)
    unlink (template);
  free (template);
}

static bool
keep_is_full (struct bz_keep *k)
{
  return k == NULL || k->fd < 0 || __atomic_load_n (&k->full,
                                                    __ATOMIC_RELAXED);
}

/* Write n bytes of a block to the keep file: true with *off where they
 * are, false if they do not fit (then no later block is kept) or could
 * not be written.
 */
static bool
keep_write (struct bz_keep *k, const unsigned char *data, size_t n,
            uint64_t *off)
{
  uint64_t used = __atomic_load_n (&k->used, __ATOMIC_RELAXED);
  size_t done = 0;

  do {
    if (n > k->max - used) {
      __atomic_store_n (&k->full, true, __ATOMIC_RELAXED);
      return false;
    }
  } while (!__atomic_compare_exchange_n (&k->used, &used, used + n, false,
                                         __ATOMIC_RELAXED,
                                         __ATOMIC_RELAXED));
  while (done < n) {
    ssize_t r = pwrite (k->fd, data + done, n - done, used + done);

    if (r <= 0) {
      if (r == -1 && errno == EINTR)
        continue;
      /* Out of space, most likely: stop keeping. */
      __atomic_store_n (&k->full, true, __ATOMIC_RELAXED);
      return false;
    }
    done += r;
  }
  *off = used;
  return true;
}

/* Size the candidate block of job with our own decoder (see
 * bzip2-size.c), writing its bytes to the keep file if there is room.
 * False if our decoder does not accept it.
 */
static bool
size_block (struct job *job, struct ad_bz2_sizer *sizer,
            struct bz_keep *keep, struct keep_buf *kb, uint64_t *usize,
            bool *zero)
{
  bool fit;

  job->hit->kept = 0;
  if (keep_is_full (keep))
    return ad_bz2_block_size (sizer, job->buf + 4, job->nbits, job->level,
                              usize, zero);
  if (kb->data == NULL) {
    kb->data = malloc (KEEP_BUF_START);
    if (kb->data == NULL)
      return ad_bz2_block_size (sizer, job->buf + 4, job->nbits,
                                job->level, usize, zero);
    kb->cap = KEEP_BUF_START;
  }
  if (!ad_bz2_block_decode_some (sizer, job->buf + 4, job->nbits,
                                 job->level, kb->data, kb->cap, &fit, usize,
                                 zero))
    return false;
  if (*zero)
    return true;
  if (fit) {
    if (keep_write (keep, kb->data, *usize, &job->hit->keep_off))
      job->hit->kept = 1;
  }
  else if (*usize <= KEEP_BLOCK_MAX) {
    /* Room for blocks this large from now on. */
    unsigned char *p = realloc (kb->data, *usize);

    if (p) {
      kb->data = p;
      kb->cap = *usize;
    }
  }
  return true;
}

/*----------------------------------------------------------------------
 * The workers of the sizing pass: a batch (see pool.h) whose context is
 * the keep file.
 */

/* A worker's own memory. */
struct bz_worker {
  unsigned char *scratch;
  struct bz_arena arena;
  struct ad_bz2_sizer sizer;
  struct keep_buf kb;
};

static void *
worker_new (void *ctx)
{
  struct bz_worker *w = calloc (1, sizeof *w);

  if (w == NULL)
    return NULL;
  w->scratch = malloc (SCRATCH_SIZE);
  if (w->scratch == NULL) {
    free (w);
    return NULL;
  }
  ad_bz2_sizer_init (&w->sizer);
  return w;
}

static void
worker_free (void *ctx, void *state)
{
  struct bz_worker *w = state;

  if (w == NULL)
    return;
  arena_release (&w->arena);
  ad_bz2_sizer_free (&w->sizer);
  free (w->kb.data);
  free (w->scratch);
  free (w);
}

/* Decode a job's candidate and record the result in its hit.  With
 * drop, leave it undecoded: the hit goes back to SPEC_NONE, so that
 * parse_streams decodes the span itself if it turns out to need it.
 * Returns false if the candidate failed for good: it failed having
 * read only its own bits, so no merge can save it, and open will fail
 * on it when the stream grammar reaches it (which it almost always
 * does).
 */
static bool
run_job (void *ctx, void *state, void *vjob, bool drop)
{
  struct bz_keep *keep = ctx;
  struct bz_worker *w = state;
  struct job *job = vjob;
  struct decode_result r;
  bool failed = false;
  uint64_t usize;
  bool zero;

  if (drop)
    job->hit->status = SPEC_NONE;
  else if (w == NULL) {
    job->hit->bzret = BZ_MEM_ERROR;
    job->hit->status = SPEC_FAIL;
    failed = true;
  }
  else if (size_block (job, &w->sizer, keep, &w->kb, &usize, &zero)) {
    /* Sized without libbz2 (see bzip2-size.c), CRC checked. */
    job->hit->status = SPEC_OK;
    job->hit->need_more = 0;
    job->hit->bzret = BZ_OK;
    job->hit->usize = usize;
    job->hit->zero = zero;
  }
  else {
    decode_rewrapped (job->buf, job->len, job->nbits, job->level,
                      w->scratch, &w->arena, &r);
    job->hit->status = r.ok ? SPEC_OK : SPEC_FAIL;
    job->hit->need_more = r.need_more;
    job->hit->bzret = r.bzret;
    job->hit->usize = r.usize;
    job->hit->zero = r.zero;
    failed = !r.ok && (!r.need_more || r.bzret == BZ_MEM_ERROR);
  }
  free (job->buf);
  free (job);
  return !failed;
}

/*----------------------------------------------------------------------
 * Hits.
 */

static struct bz_hit *
hit_at (struct hit_table *t, size_t k)
{
  return &t->segs[k >> HIT_SEG_SHIFT][k & (HIT_SEG_SIZE - 1)];
}

static struct bz_hit *
hit_add (struct hit_table *t, struct ad_error *err)
{
  struct bz_hit *h;

  if (t->n >= t->max) {
    ad_error_set (err, EIO, "more than %zu block or end-of-stream magics "
                  "for the image size (not a bzip2 image?)", t->max);
    return NULL;
  }
  if ((t->n >> HIT_SEG_SHIFT) == t->nsegs) {
    if (t->nsegs == t->segs_alloc) {
      size_t n = t->segs_alloc ? 2 * t->segs_alloc : 16;
      struct bz_hit **p = realloc (t->segs, n * sizeof *p);
      if (p == NULL) {
        ad_error_set (err, ENOMEM, "realloc: %m");
        return NULL;
      }
      t->segs = p;
      t->segs_alloc = n;
    }
    t->segs[t->nsegs] = malloc (HIT_SEG_SIZE * sizeof (struct bz_hit));
    if (t->segs[t->nsegs] == NULL) {
      ad_error_set (err, ENOMEM, "malloc: %m");
      return NULL;
    }
    t->nsegs++;
  }
  h = hit_at (t, t->n++);
  memset (h, 0, sizeof *h);
  return h;
}

static void
hit_table_free (struct hit_table *t)
{
  size_t i;

  for (i = 0; i < t->nsegs; i++)
    free (t->segs[i]);
  free (t->segs);
}

/*----------------------------------------------------------------------
 * The sizing pass.
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

  /* The read window: file bytes [wstart, wstart + wlen). */
  unsigned char *win;
  size_t win_cap;
  uint64_t wstart;
  size_t wlen;

  size_t next_fin;              /* First hit not finalized yet. */
  int cur_level;                /* Level of the last header seen. */

  unsigned char *scratch;       /* For synchronous decodes. */
  struct bz_arena arena;        /* Likewise. */

  struct bz_keep keep;          /* The keep file. */
};

/* Record the magics that end in the byte at file offset pos, given reg,
 * the 8 bytes ending there.
 */
static int
check_byte (struct bz_open *st, uint64_t reg, uint64_t pos,
            struct ad_error *err)
{
  unsigned m = scan_table[(reg >> 16) & 0xffff];
  int k;

  if (m == 0)
    return 0;
  /* Larger shifts start earlier: go down to keep hits sorted. */
  for (k = 7; k >= 0; k--) {
    uint64_t v = (reg >> k) & MASK48;
    uint64_t end_bit = pos * 8 + 8 - k;
    int type = 0;
    struct bz_hit *h;

    if ((m & (1 << k)) && v == BLOCK_MAGIC)
      type = HIT_BLOCK;
    else if ((m & (1 << (8 + k))) && v == EOS_MAGIC)
      type = HIT_EOS;
    if (type == 0 || end_bit < 48)
      continue;
    h = hit_add (&st->hits, err);
    if (h == NULL)
      return -1;
    h->bit = end_bit - 48;
    h->type = type;
  }
  return 0;
}

static inline uint64_t
load_be64 (const unsigned char *p)
{
  uint64_t v;

  memcpy (&v, p, 8);
  return __builtin_bswap64 (v);
}

static inline unsigned
load_be16 (const unsigned char *p)
{
  return (p[0] << 8) | p[1];
}

/* Find the magics ending in the bytes p[0..n), which are at file offset
 * st->scanned.  The table is indexed by the two bytes 3 and 2 before
 * the current one, so the bulk of the loop reads them straight from
 * memory, eight positions per branch, with no dependency between
 * positions.
 */
static int
scan_bytes (struct bz_open *st, const unsigned char *p, size_t n,
            struct ad_error *err)
{
  uint64_t reg = st->reg;
  uint64_t base = st->scanned;
  size_t i, j;

  /* The first bytes need the previous ones from the shift register. */
  for (i = 0; i < n && i < 7; i++) {
    reg = (reg << 8) | p[i];
    if (check_byte (st, reg, base + i, err) == -1)
      return -1;
  }
  for (; i + 8 <= n; i += 8) {
    unsigned m = 0;

    for (j = 0; j < 8; j++)
      m |= scan_table[load_be16 (p + i + j - 3)];
    if (__builtin_expect (m != 0, 0)) {
      for (j = 0; j < 8; j++)
        if (check_byte (st, load_be64 (p + i + j - 7), base + i + j,
                        err) == -1)
          return -1;
    }
  }
  for (; i < n; i++)
    if (check_byte (st, load_be64 (p + i - 7), base + i, err) == -1)
      return -1;
  if (n >= 8)
    reg = load_be64 (p + n - 8);
  st->reg = reg;
  st->scanned += n;
  return 0;
}

/* Record what lies around hit h (which must be in the window): the
 * header before it and the CRC after it.
 */
static void
snapshot (struct bz_open *st, struct bz_hit *h)
{
  uint64_t wend = st->wstart + st->wlen;
  uint64_t hb = h->bit / 8;

  if (h->bit % 8 == 0 && hb >= 4 && hb - 4 >= st->wstart && hb <= wend) {
    const unsigned char *q = st->win + (hb - 4 - st->wstart);
    if (q[0] == 'B' && q[1] == 'Z' && q[2] == 'h' &&
        q[3] >= '1' && q[3] <= '9')
      h->pre_level = q[3] - '0';
  }
  if ((h->bit + MARKER_BITS + 7) / 8 <= wend && hb >= st->wstart) {
    h->crc = get_bits32 (st->win + (hb - st->wstart), h->bit % 8 + 48);
    h->crc_ok = 1;
  }
}

/* Queue the speculative decode of the span [h->bit, end_bit), which is
 * in the window.
 */
static int
queue_span (struct bz_open *st, struct bz_hit *h, uint64_t end_bit,
            struct ad_error *err)
{
  uint64_t nbits = end_bit - h->bit;
  int level = st->cur_level;
  struct job *job;

  h->job_level = level;
  /* Once a candidate has failed for good, speculation stops: no more
   * jobs are queued and the workers drop those queued (see run_job),
   * since open is about to fail.  Parsing still decodes whatever span
   * it reaches without a result, so an early stop never changes the
   * outcome, only how much work a corrupt image costs.
   */
  if (nbits > MAX_BLOCK_CSIZE (level) * 8 || ad_batch_failed (st->batch)) {
    h->status = SPEC_NONE;
    return 0;
  }
  if (nbits < MIN_BLOCK_BITS) {
    h->status = SPEC_FAIL;
    h->need_more = 1;
    h->bzret = BZ_UNEXPECTED_EOF;
    return 0;
  }
  job = malloc (sizeof *job);
  if (job == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  job->hit = h;
  job->nbits = nbits;
  job->level = level;
  job->len = rewrap_size (nbits);
  job->buf = malloc (job->len);
  if (job->buf == NULL) {
    free (job);
    return ad_error_set (err, ENOMEM, "malloc: %m");
  }
  rewrap (job->buf, st->win + (h->bit / 8 - st->wstart), h->bit % 8, nbits,
          level, h->crc);
  h->status = SPEC_PENDING;
  if (ad_batch_push (st->batch, job, err) == -1) {
    h->status = SPEC_NONE;
    free (job->buf);
    free (job);
    return -1;
  }
  return 0;
}

/* Finalize the hits whose surroundings are now known: take their
 * snapshot and queue the spans of block magics.
 */
static int
finalize_hits (struct bz_open *st, int eof, struct ad_error *err)
{
  uint64_t wend = st->wstart + st->wlen;

  while (st->next_fin < st->hits.n) {
    struct bz_hit *h = hit_at (&st->hits, st->next_fin);
    int have_next = st->next_fin + 1 < st->hits.n;

    if (!eof && (h->bit + MARKER_BITS + 7) / 8 > wend)
      break;
    if (!eof && h->type == HIT_BLOCK && !have_next)
      break;
    snapshot (st, h);
    if (h->pre_level)
      st->cur_level = h->pre_level;
    if (h->type == HIT_BLOCK && have_next && st->cur_level && h->crc_ok) {
      struct bz_hit *next = hit_at (&st->hits, st->next_fin + 1);
      if (queue_span (st, h, next->bit, err) == -1)
        return -1;
    }
    st->next_fin++;
  }
  return 0;
}

/* Drop window bytes nobody needs any more, finalizing hits whose span
 * has grown too long for any block.
 */
static void
compact_window (struct bz_open *st)
{
  uint64_t wend = st->wstart + st->wlen;
  uint64_t keep;

  while (st->next_fin < st->hits.n) {
    struct bz_hit *h = hit_at (&st->hits, st->next_fin);
    if (h->bit / 8 + MAX_WINDOW_SPAN >= wend)
      break;
    snapshot (st, h);
    if (h->pre_level)
      st->cur_level = h->pre_level;
    h->status = SPEC_NONE;
    st->next_fin++;
  }

  keep = wend >= 16 ? wend - 16 : 0;
  if (st->next_fin < st->hits.n) {
    uint64_t hb = hit_at (&st->hits, st->next_fin)->bit / 8;
    hb = hb >= 4 ? hb - 4 : 0;
    if (hb < keep)
      keep = hb;
  }
  if (keep < st->wstart)
    keep = st->wstart;
  if (keep > st->wstart)
    memmove (st->win, st->win + (keep - st->wstart), wend - keep);
  st->wlen = wend - keep;
  st->wstart = keep;
}

static int
sizing_scan (struct bz_open *st, struct ad_error *err)
{
  struct ad_source *src = st->src;

  while (st->wstart + st->wlen < src->size) {
    uint64_t wend;
    size_t n, i;

    compact_window (st);
    wend = st->wstart + st->wlen;
    n = src->size - wend < SCAN_CHUNK ? src->size - wend : SCAN_CHUNK;
    if (st->wlen + n > st->win_cap) {
      size_t cap = st->wlen + n;
      unsigned char *p = realloc (st->win, cap);
      if (p == NULL)
        return ad_error_set (err, ENOMEM, "realloc: %m");
      st->win = p;
      st->win_cap = cap;
    }
    if (ad_source_pread (src, st->win + st->wlen, n, wend, err) == -1)
      return -1;
    for (i = n; i > 0; i--)
      if (st->win[st->wlen + i - 1] != 0) {
        st->have_nonzero = 1;
        st->last_nonzero = wend + i - 1;
        break;
      }
    if (scan_bytes (st, st->win + st->wlen, n, err) == -1)
      return -1;
    st->wlen += n;
    if (finalize_hits (st, st->wstart + st->wlen == src->size, err) == -1)
      return -1;
  }
  return finalize_hits (st, 1, err);
}

/* Decode the span [start_bit, end_bit) on the calling thread, reading
 * it from the source.
 */
static int
decode_span_sync (struct bz_open *st, uint64_t start_bit, uint64_t end_bit,
                  int level, uint32_t crc, struct decode_result *r,
                  struct ad_error *err)
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
  buf = malloc (rewrap_buffer_size (nbits));
  if (buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (ad_source_pread (st->src, buf + 4, nin, start_bit / 8, err) == -1) {
    free (buf);
    return -1;
  }
  rewrap (buf, buf + 4, start_bit % 8, nbits, level, crc);
  decode_rewrapped (buf, rewrap_size (nbits), nbits, level, st->scratch,
                    &st->arena, r);
  free (buf);
  return 0;
}

static int
block_error (struct ad_error *err, const struct bz_hit *h,
             const struct decode_result *r)
{
  return ad_error_set (err, r->bzret == BZ_MEM_ERROR ? ENOMEM : EIO,
                       "block at compressed offset %" PRIu64 " (bit %"
                       PRIu64 "): %s", h->bit / 8, h->bit,
                       bz_strerror (r->bzret));
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
    uint64_t first_bit, stream_off;
    uint32_t combined = 0;
    int level;

    if (pos == size)
      break;
    if (nstreams > 0 && (!st->have_nonzero || st->last_nonzero < pos))
      break;                    /* Only zero bytes follow. */
    first_bit = (pos + 4) * 8;
    while (k < t->n && hit_at (t, k)->bit < first_bit)
      k++;
    if (k == t->n || hit_at (t, k)->bit != first_bit ||
        hit_at (t, k)->pre_level == 0) {
      if (nstreams == 0)
        ad_error_set (err, EIO, "no stream header (\"BZh1\"..\"BZh9\" "
                      "followed by a block or end-of-stream magic) at "
                      "offset 0");
      else
        ad_error_set (err, EIO, "unexpected data at offset %" PRIu64
                      " after the end of stream %" PRIu32 " (trailing "
                      "garbage is refused: only zero bytes may follow "
                      "the last stream)", pos, nstreams - 1);
      goto fail;
    }
    level = hit_at (t, k)->pre_level;
    stream_off = pos;

    for (;;) {
      struct bz_hit *h = hit_at (t, k);
      struct decode_result r, first;
      size_t j;
      int merges = 0;
      bool kept;

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

      /* A block: its span runs to the next hit, or further if a false
       * magic cut it.
       */
      j = k + 1;
      if (j == t->n || !h->crc_ok) {
        ad_error_set (err, EIO, "block at compressed offset %" PRIu64
                      " (bit %" PRIu64 "): no end-of-stream marker "
                      "follows (truncated?)", h->bit / 8, h->bit);
        goto fail;
      }
      if (hit_at (t, j)->bit - h->bit > MAX_BLOCK_CSIZE (level) * 8) {
        ad_error_set (err, EIO, "block at compressed offset %" PRIu64
                      " (bit %" PRIu64 "): no block or end-of-stream "
                      "magic follows within %" PRIu64 " bytes",
                      h->bit / 8, h->bit, MAX_BLOCK_CSIZE (level));
        goto fail;
      }
      kept = false;
      if ((h->status == SPEC_OK || h->status == SPEC_FAIL) &&
          h->job_level == level) {
        kept = h->status == SPEC_OK && h->kept;
        memset (&r, 0, sizeof r);
        r.ok = h->status == SPEC_OK;
        r.need_more = h->need_more;
        r.bzret = h->bzret;
        r.usize = h->usize;
        r.zero = h->zero;
      }
      else if (decode_span_sync (st, h->bit, hit_at (t, j)->bit, level,
                                 h->crc, &r, err) == -1)
        goto fail;
      first = r;
      while (!r.ok) {
        if (!r.need_more || r.bzret == BZ_MEM_ERROR ||
            merges >= MAX_MERGES || j + 1 >= t->n ||
            hit_at (t, j + 1)->bit - h->bit > MAX_BLOCK_CSIZE (level) * 8) {
          if (first.need_more && j + 1 >= t->n)
            first.bzret = BZ_OUR_TRUNCATED;
          block_error (err, h, &first);
          goto fail;
        }
        j++;
        merges++;
        kept = false;
        if (decode_span_sync (st, h->bit, hit_at (t, j)->bit, level,
                              h->crc, &r, err) == -1)
          goto fail;
      }

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
      blocks[nblocks].end_bit = hit_at (t, j)->bit;
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

static int
bzip2_open (struct ad_index *idx, struct ad_source *src,
            struct ad_error *err)
{
  struct bz_open st;
  struct ad_batch_spec spec = {
    .worker_new = worker_new, .worker_free = worker_free, .run = run_job,
    .run_inline = true,
  };
  struct bz_priv *priv = NULL;
  struct bz_block *blocks = NULL;
  size_t nblocks = 0, i;
  uint64_t total = 0;
  int r = -1;

  pthread_once (&scan_table_once, init_scan_table);

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

  keep_open (&st.keep, idx->opts.keep_size);
  spec.threads = ad_batch_threads_for (idx->opts.threads, MAX_THREADS);
  spec.queue_max = 2 * (size_t) spec.threads;
  st.batch = ad_batch_new (&spec, &st.keep, err);
  if (st.batch == NULL || sizing_scan (&st, err) == -1)
    goto out;
  ad_batch_finish (st.batch, false);
  free (st.win);
  st.win = NULL;

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

  for (i = 0; i < nblocks; i++) {
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
      goto out;
  }
  r = 0;

 out:
  ad_batch_free (st.batch);
  free (blocks);
  free (st.win);
  free (st.scratch);
  arena_release (&st.arena);
  hit_table_free (&st.hits);
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
    arena_release (&priv->arena);
    pthread_mutex_destroy (&priv->arena_lock);
    free (priv);
    idx->priv = NULL;
  }
}

/* The persisted index (see persist.h) keeps every block: its start
 * and end bits, blockCRC, size, stream number and level.  A block
 * loaded from a file is checked against its frame and the bounds
 * above; decoding it checks its CRC as after a pass.
 */
static int
bzip2_save (struct ad_index *idx, struct ad_source *src, struct ad_buf *out,
            const char **why)
{
  struct bz_priv *priv = idx->priv;
  size_t i;

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

static int
bzip2_load (struct ad_index *idx, struct ad_cursor *in)
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
  return 0;
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

/* Read the block's bytes in one read and rewrap them. */
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
  d->buf = malloc (rewrap_buffer_size (nbits));
  if (d->buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (ad_source_pread (src, d->buf + 4, d->csize, d->coff, err) == -1)
    return -1;
  rewrap (d->buf, d->buf + 4, shift, nbits, b->level, b->crc);
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

  use_arena (&d->strm, d->arena);
  ret = BZ2_bzDecompressInit (&d->strm, 0, 0);
  if (ret != BZ_OK)
    return ad_error_set (err, ret == BZ_MEM_ERROR ? ENOMEM : EIO,
                         "BZ2_bzDecompressInit: %s", bz_strerror (ret));
  d->strm_init = 1;
  d->strm.next_in = (char *) d->buf;
  d->strm.avail_in = rewrap_size (nbits);
  return 0;
}

/* Decode the whole block into out with bzip2-size.c, with a spare
 * decoder if there is one.  True if it decoded to exactly the block's
 * size and its CRC matched.
 */
static bool
decode_whole (struct bz_decoder *d, void *out, size_t count)
{
  struct ad_bz2_sizer s;
  uint64_t usize;
  bool zero, ok;

  pthread_mutex_lock (&sizers_lock);
  if (nspare_sizers > 0)
    s = spare_sizers[--nspare_sizers];
  else
    ad_bz2_sizer_init (&s);
  pthread_mutex_unlock (&sizers_lock);

  ok = ad_bz2_block_decode (&s, d->buf + 4, d->block.end_bit -
                            d->block.start_bit, d->block.level, out,
                            count, &usize, &zero) &&
    usize == d->block.usize;

  pthread_mutex_lock (&sizers_lock);
  if (nspare_sizers < SPARE_SIZERS)
    spare_sizers[nspare_sizers++] = s;
  else
    ad_bz2_sizer_free (&s);
  pthread_mutex_unlock (&sizers_lock);
  return ok;
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
