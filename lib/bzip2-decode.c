/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: a bzip2 block decoder, without libbz2, that sizes the
 * blocks at open and serves reads of whole blocks.
 *
 * Opening a bzip2 image decodes every block once, only to learn how
 * many bytes it holds (bzip2 records no sizes) and that its CRC
 * matches.  libbz2 spends most of that time in two places: its Huffman
 * decoder, which reads a code a bit at a time, and its output stage,
 * which copies every byte out.  This file decodes a block the same way
 * but counts instead of writing: Huffman codes come from a 10-bit
 * lookup table, the inverse BWT is walked exactly as libbz2 walks it
 * (its "fast" mode), and the initial run-length coding (RLE1) is undone
 * as a count of bytes per run, with the CRC updated per run.
 * Serving a read that wants a whole block uses the same decoder,
 * writing the bytes straight into the caller's buffer
 * (ad_bz2_block_decode), with the CRC over exactly the bytes written.
 *
 * It only ever answers "yes, this many bytes, CRC matched".  Anything
 * unusual (a randomised block, an over-subscribed code, a field
 * out of range, a CRC mismatch, a block that does not end exactly where
 * the next magic starts) makes it answer "don't know", and the caller
 * decodes that block with libbz2 as before, which then explains what
 * is wrong.  So its job is to be right when it says yes: the walk over
 * the block is libbz2's, step for step, and the CRC over the bytes it
 * counted must match the block's, which a wrong count or a wrong byte
 * would not (but for a chance of 2^-32; and a frame whose decode by
 * libbz2 later disagrees with the index fails, it is never served).
 *
 * Block layout after the 48-bit magic (bits most significant first):
 * blockCRC (32), randomised (1), origPtr (24), the map of bytes used
 * (16 bits, then 16 bits for each range marked), nGroups (3, 2..6),
 * nSelectors (15), the selectors (unary, move-to-front coded), for
 * each group its code lengths (5 bits, then deltas), then the symbols:
 * RUNA/RUNB (runs of the front byte, in bijective base 2), move-to-
 * front indices plus one, and end of block.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "bzip2-decode.h"

#define MAX_GROUPS 6
#define MAX_ALPHA 258
#define MAX_SELECTORS 18002     /* libbz2 ignores selectors beyond. */
#define MAX_CODE_LEN 20
#define GROUP_SIZE 50
#define LOOKUP_BITS 10
#define RUNA 0
#define RUNB 1

/* The bzip2 CRC: CRC-32, polynomial 0x04c11db7, most significant bit
 * first (not reflected, unlike zlib's).
 *
 * RLE1 turns a run of up to 259 equal bytes into 5 (compressors stop at
 * 255: four bytes and a count of 251), so a decoded block is mostly
 * runs, and in the zero-filled parts of a disk image nearly all of them
 * are 255 bytes long: updating the CRC a byte at a time would be most
 * of the work.  Runs are done four bytes at a time instead (crc_slice,
 * the usual "slicing by 4" tables), and a run of exactly LONG_RUN in
 * one step: the CRC is linear, so appending LONG_RUN bytes c to a CRC x
 * gives M(x) ^ K(c), where M (x shifted through LONG_RUN zero bytes) is
 * a table per byte of x and K(c) is the CRC of the run from zero.
 */
#define LONG_RUN 255
static uint32_t crc_slice[4][256];
static uint32_t crc_shift_long_run[4][256];
static uint32_t crc_long_run[256];

static uint32_t
crc_bytes (uint32_t crc, unsigned ch, unsigned n)
{
  while (n-- > 0)
    crc = (crc << 8) ^ crc_slice[0][(crc >> 24) ^ ch];
  return crc;
}

static void __attribute__ ((constructor))
init_crc_tables (void)
{
  uint32_t i, j, c;

  for (i = 0; i < 256; i++) {
    c = i << 24;
    for (j = 0; j < 8; j++)
      c = c & 0x80000000 ? (c << 1) ^ 0x04c11db7 : c << 1;
    crc_slice[0][i] = c;
  }
  for (j = 1; j < 4; j++)
    for (i = 0; i < 256; i++) {
      c = crc_slice[j - 1][i];
      crc_slice[j][i] = (c << 8) ^ crc_slice[0][c >> 24];
    }
  for (i = 0; i < 256; i++) {
    for (j = 0; j < 4; j++)
      crc_shift_long_run[j][i] = crc_bytes (i << (24 - 8 * j), 0, LONG_RUN);
    crc_long_run[i] = crc_bytes (0, i, LONG_RUN);
  }
}

uint32_t
ad_bz2_crc_run (uint32_t crc, unsigned ch, unsigned n)
{
  uint32_t pattern = ch * 0x01010101u, x;

  if (n == LONG_RUN)
    return crc_shift_long_run[0][crc >> 24] ^
      crc_shift_long_run[1][(crc >> 16) & 0xff] ^
      crc_shift_long_run[2][(crc >> 8) & 0xff] ^
      crc_shift_long_run[3][crc & 0xff] ^ crc_long_run[ch];
  for (; n >= 4; n -= 4) {
    x = crc ^ pattern;
    crc = crc_slice[3][x >> 24] ^ crc_slice[2][(x >> 16) & 0xff] ^
      crc_slice[1][(x >> 8) & 0xff] ^ crc_slice[0][x & 0xff];
  }
  return crc_bytes (crc, ch, n);
}

/* A bit reader over [0, limit) bits of p.  Past the end it reads zeros
 * and keeps counting, so callers check pos against limit where it
 * matters (a code made only of zero bits still ends).
 */
struct bits {
  const unsigned char *p;
  size_t nbytes;
  size_t next;                  /* Next byte to load. */
  uint64_t buf;                 /* Bits, left aligned. */
  unsigned count;               /* Valid bits in buf. */
  uint64_t pos;                 /* Bits consumed. */
  uint64_t limit;
};

static inline void
refill (struct bits *b)
{
  while (b->count <= 56) {
    uint64_t byte = b->next < b->nbytes ? b->p[b->next] : 0;

    b->next++;
    b->buf |= byte << (56 - b->count);
    b->count += 8;
  }
}

/* Peek at n bits (1 <= n <= 32, after refill). */
static inline uint32_t
peek (const struct bits *b, unsigned n)
{
  return b->buf >> (64 - n);
}

static inline void
skip (struct bits *b, unsigned n)
{
  b->buf <<= n;
  b->count -= n;
  b->pos += n;
}

static inline uint32_t
get (struct bits *b, unsigned n)
{
  uint32_t v;

  refill (b);
  v = peek (b, n);
  skip (b, n);
  return v;
}

/* One group's canonical Huffman code. */
struct code {
  uint32_t lookup[1 << LOOKUP_BITS];  /* symbol << 5 | length, or 0. */
  uint32_t first[MAX_CODE_LEN + 2];   /* First code of each length. */
  uint32_t count[MAX_CODE_LEN + 2];   /* Codes of each length. */
  uint32_t offset[MAX_CODE_LEN + 2];  /* Index of it in perm. */
  uint16_t perm[MAX_ALPHA];           /* Symbols by (length, value). */
};

/* Build the code from lengths 1..20.  bzip2 assigns codes canonically
 * (by length, then by symbol), as here.  A code may be incomplete
 * (lbzip2 writes such tables): a bit string that starts no code is
 * then an error, for libbz2 as here.  An over-subscribed code is left
 * to libbz2, whose tables give such bits some meaning.
 */
static bool
build_code (struct code *c, const uint8_t *len, unsigned n)
{
  uint32_t code = 0, idx = 0, kraft = 0;
  uint32_t next[MAX_CODE_LEN + 2];
  unsigned l, i;

  memset (c->count, 0, sizeof c->count);
  for (i = 0; i < n; i++)
    c->count[len[i]]++;
  for (l = 1; l <= MAX_CODE_LEN; l++)
    kraft += c->count[l] << (MAX_CODE_LEN - l);
  if (kraft > 1u << MAX_CODE_LEN)
    return false;
  for (l = 1; l <= MAX_CODE_LEN; l++) {
    c->first[l] = code;
    c->offset[l] = next[l] = idx;
    idx += c->count[l];
    code = (code + c->count[l]) << 1;
  }
  /* Symbols by (length, value): one counting-sort pass. */
  for (i = 0; i < n; i++)
    c->perm[next[len[i]]++] = i;
  memset (c->lookup, 0, sizeof c->lookup);
  for (l = 1; l <= LOOKUP_BITS; l++)
    for (i = 0; i < c->count[l]; i++) {
      uint32_t v = c->first[l] + i, lo = v << (LOOKUP_BITS - l);
      uint32_t hi = (v + 1) << (LOOKUP_BITS - l), k;

      for (k = lo; k < hi; k++)
        c->lookup[k] = (uint32_t) c->perm[c->offset[l] + i] << 5 | l;
    }
  return true;
}

/* Decode one symbol, or return MAX_ALPHA if the bits start no code. */
static inline unsigned
decode_symbol (struct bits *b, const struct code *c)
{
  uint32_t e, v;
  unsigned l;

  refill (b);
  e = c->lookup[peek (b, LOOKUP_BITS)];
  if (e != 0) {
    skip (b, e & 31);
    return e >> 5;
  }
  for (l = LOOKUP_BITS + 1; l <= MAX_CODE_LEN; l++) {
    v = peek (b, l);
    if (v - c->first[l] < c->count[l]) {
      skip (b, l);
      return c->perm[c->offset[l] + (v - c->first[l])];
    }
  }
  return MAX_ALPHA;             /* No code: an error. */
}

void
ad_bz2_sizer_init (struct ad_bz2_sizer *s)
{
  s->tt = NULL;
  s->tt_len = 0;
}

void
ad_bz2_sizer_free (struct ad_bz2_sizer *s)
{
  free (s->tt);
  s->tt = NULL;
  s->tt_len = 0;
}

/* Decoders' memory kept for the next ad_bz2_block_decode_spare, of
 * any image: at most SPARE_SIZERS in the process, however many images
 * are open.
 */
#define SPARE_SIZERS 4
static pthread_mutex_t sizers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ad_bz2_sizer spare_sizers[SPARE_SIZERS];
static size_t nspare_sizers;

static bool block_decode (struct ad_bz2_sizer *s, const unsigned char *p,
                          uint64_t nbits, int level, unsigned char *dst,
                          size_t dst_len, bool *fit, uint64_t *usize,
                          bool *zero);

bool
ad_bz2_block_size (struct ad_bz2_sizer *s, const unsigned char *p,
                   uint64_t nbits, int level, uint64_t *usize, bool *zero)
{
  return block_decode (s, p, nbits, level, NULL, 0, NULL, usize, zero);
}

bool
ad_bz2_block_decode (struct ad_bz2_sizer *s, const unsigned char *p,
                     uint64_t nbits, int level, unsigned char *out,
                     size_t out_len, uint64_t *usize, bool *zero)
{
  return block_decode (s, p, nbits, level, out, out_len, NULL, usize, zero);
}

bool
ad_bz2_block_decode_some (struct ad_bz2_sizer *s, const unsigned char *p,
                          uint64_t nbits, int level, unsigned char *out,
                          size_t out_len, bool *fit, uint64_t *usize,
                          bool *zero)
{
  *fit = true;
  return block_decode (s, p, nbits, level, out, out_len, fit, usize, zero);
}

bool
ad_bz2_block_decode_spare (const unsigned char *p, uint64_t nbits,
                           int level, unsigned char *out, size_t out_len,
                           uint64_t *usize, bool *zero)
{
  struct ad_bz2_sizer s;
  bool ok;

  pthread_mutex_lock (&sizers_lock);
  if (nspare_sizers > 0)
    s = spare_sizers[--nspare_sizers];
  else
    ad_bz2_sizer_init (&s);
  pthread_mutex_unlock (&sizers_lock);

  ok = ad_bz2_block_decode (&s, p, nbits, level, out, out_len, usize,
                            zero);

  pthread_mutex_lock (&sizers_lock);
  if (nspare_sizers < SPARE_SIZERS)
    spare_sizers[nspare_sizers++] = s;
  else
    ad_bz2_sizer_free (&s);
  pthread_mutex_unlock (&sizers_lock);
  return ok;
}

/* A block being decoded: what its phases pass on. */
struct block {
  struct bits b;
  uint32_t stored_crc, orig_ptr, nblock_max;
  uint32_t nblock;                    /* Bytes of BWT data in tt. */
  uint32_t *tt;
  unsigned n_in_use, alpha, n_groups, n_selectors;
  unsigned char seq_to_unseq[256];
  unsigned char *selectors;
  struct code *codes;
  uint32_t unzftab[256];              /* Count of each byte in tt. */
};

/* Phase 1: the block header and the map of bytes used.  False if the
 * block is randomised (libbz2's) or uses no byte.
 */
static bool
read_header (struct block *k)
{
  struct bits *b = &k->b;
  uint32_t in_use16;
  unsigned i, j;

  get (b, 24);                  /* The magic, checked by the caller. */
  get (b, 24);
  k->stored_crc = get (b, 32);
  if (get (b, 1))
    return false;               /* Randomised (bzip2 0.9.0): libbz2's. */
  k->orig_ptr = get (b, 24);

  /* The bytes used. */
  in_use16 = get (b, 16);
  for (i = 0; i < 16; i++)
    if (in_use16 & (0x8000 >> i)) {
      uint32_t bits16 = get (b, 16);

      for (j = 0; j < 16; j++)
        if (bits16 & (0x8000 >> j))
          k->seq_to_unseq[k->n_in_use++] = i * 16 + j;
    }
  if (k->n_in_use == 0)
    return false;
  k->alpha = k->n_in_use + 2;
  return true;
}

/* Phase 2: the selectors and the Huffman code of each group, into
 * k->selectors and k->codes (which the caller frees).
 */
static bool
read_tables (struct block *k)
{
  struct bits *b = &k->b;
  unsigned char sel_mtf[MAX_GROUPS];
  uint8_t len[MAX_ALPHA];
  unsigned n_groups, i, t;

  n_groups = k->n_groups = get (b, 3);
  k->n_selectors = get (b, 15);
  if (n_groups < 2 || n_groups > MAX_GROUPS || k->n_selectors < 1)
    return false;
  k->selectors = malloc (k->n_selectors);
  k->codes = malloc (n_groups * sizeof *k->codes);
  if (k->selectors == NULL || k->codes == NULL)
    return false;
  for (i = 0; i < n_groups; i++)
    sel_mtf[i] = i;
  for (i = 0; i < k->n_selectors; i++) {
    unsigned m = 0;
    unsigned char v;

    while (get (b, 1)) {
      if (++m >= n_groups)
        return false;
    }
    if (b->pos > b->limit)
      return false;
    v = sel_mtf[m];
    memmove (sel_mtf + 1, sel_mtf, m);
    sel_mtf[0] = v;
    k->selectors[i] = v;
  }
  if (k->n_selectors > MAX_SELECTORS)
    k->n_selectors = MAX_SELECTORS;

  /* The code lengths of each group. */
  for (t = 0; t < n_groups; t++) {
    int curr = get (b, 5);

    for (i = 0; i < k->alpha; i++) {
      for (;;) {
        if (curr < 1 || curr > MAX_CODE_LEN || b->pos > b->limit)
          return false;
        if (!get (b, 1))
          break;
        curr += get (b, 1) ? -1 : 1;
      }
      len[i] = curr;
    }
    if (!build_code (&k->codes[t], len, k->alpha))
      return false;
  }
  return true;
}

/* Phase 3: the symbols, move-to-front indices and runs of the front
 * byte, up to the end of block, into k->tt and k->unzftab.  The loop
 * works on local copies of the bit reader and the counters, written
 * back at the end.
 */
static bool
read_symbols (struct block *k)
{
  struct bits b = k->b;
  uint32_t *tt = k->tt, nblock_max = k->nblock_max, nblock = 0;
  unsigned char mtf[256];
  const unsigned char *selectors = k->selectors;
  const struct code *codes = k->codes;
  unsigned n_selectors = k->n_selectors, alpha = k->alpha;
  unsigned eob = k->n_in_use + 1, group_no = 0, group_left = 0, sym, i;
  const struct code *c = NULL;

  for (i = 0; i < 256; i++)
    mtf[i] = i;
  memset (k->unzftab, 0, sizeof k->unzftab);

#define NEXT_SYMBOL()                                           \
  do {                                                          \
    if (group_left == 0) {                                      \
      if (group_no >= n_selectors || b.pos > b.limit)           \
        return false;                                           \
      c = &codes[selectors[group_no++]];                        \
      group_left = GROUP_SIZE;                                  \
    }                                                           \
    group_left--;                                               \
    sym = decode_symbol (&b, c);                                \
    if (sym >= alpha)                                           \
      return false;                                             \
  } while (0)

  NEXT_SYMBOL ();
  for (;;) {
    if (sym == eob)
      break;
    if (sym == RUNA || sym == RUNB) {
      uint32_t es = 0, n = 1;
      unsigned char uc;

      do {
        if (n >= 2 * 1024 * 1024)
          return false;
        es += (sym == RUNA ? 1 : 2) * n;
        n *= 2;
        NEXT_SYMBOL ();
      } while (sym == RUNA || sym == RUNB);
      uc = k->seq_to_unseq[mtf[0]];
      if (es > nblock_max - nblock)
        return false;
      k->unzftab[uc] += es;
      while (es-- > 0)
        tt[nblock++] = uc;
      continue;
    }
    else {
      unsigned nn = sym - 1;
      unsigned char v, uc;

      if (nblock >= nblock_max)
        return false;
      v = mtf[nn];
      memmove (mtf + 1, mtf, nn);
      mtf[0] = v;
      uc = k->seq_to_unseq[v];
      k->unzftab[uc]++;
      tt[nblock++] = uc;
      NEXT_SYMBOL ();
    }
  }
#undef NEXT_SYMBOL
  k->b = b;
  k->nblock = nblock;
  return true;
}

/* Phase 4: the inverse BWT, as libbz2 builds it: tt[i] keeps the byte
 * in its low 8 bits and gets the index of its successor above them.
 */
static void
undo_bwt (struct block *k)
{
  uint32_t cftab[257], *tt = k->tt, nblock = k->nblock, i;

  cftab[0] = 0;
  for (i = 0; i < 256; i++)
    cftab[i + 1] = cftab[i] + k->unzftab[i];
  for (i = 0; i < nblock; i++) {
    unsigned char uc = tt[i] & 0xff;

    tt[cftab[uc]] |= i << 8;
    cftab[uc]++;
  }
}

/* Phase 5: walk the inverse BWT and undo RLE1 exactly as libbz2's
 * unRLE_obuf_to_output_FAST does, counting (and writing to dst, see
 * block_decode) instead of copying out: after four equal bytes comes a
 * count of further copies.  The walk reads one byte ahead; the block
 * ends when that read is one past the end.  Then check the CRC.
 */
static bool
undo_rle1 (const struct block *k, unsigned char *dst, size_t dst_len,
           bool *fit, uint64_t *usize, bool *zero)
{
  const uint32_t *tt = k->tt;
  uint32_t nblock = k->nblock;
  uint32_t tpos = tt[k->orig_ptr] >> 8, used = 0, crc = 0xffffffff;
  uint64_t total = 0;
  bool all_zero = true;
  unsigned k0, k1, run;

#define GET_BYTE(c)                                     \
  do {                                                  \
    if (tpos >= nblock)                                 \
      return false;                                     \
    tpos = tt[tpos];                                    \
    (c) = tpos & 0xff;                                  \
    tpos >>= 8;                                         \
    used++;                                             \
  } while (0)

  GET_BYTE (k0);
  for (;;) {
    unsigned ch;

    if (used == nblock + 1)
      break;
    if (used > nblock + 1)
      return false;             /* Four equal bytes and no count. */
    ch = k0;
    run = 1;
    GET_BYTE (k1);
    if (used != nblock + 1 && k1 == k0) {
      run = 2;
      GET_BYTE (k1);
      if (used != nblock + 1 && k1 == k0) {
        run = 3;
        GET_BYTE (k1);
        if (used != nblock + 1 && k1 == k0) {
          GET_BYTE (k1);
          run = k1 + 4;
          GET_BYTE (k1);
        }
      }
    }
    k0 = k1;
    if (dst && run > dst_len - total) {
      if (fit == NULL)
        return false;
      *fit = false;
      dst = NULL;
    }
    if (dst) {
      if (run == 1)
        dst[total] = ch;
      else
        memset (dst + total, ch, run);
    }
    total += run;
    if (ch != 0)
      all_zero = false;
    crc = run == 1 ? crc_bytes (crc, ch, 1) : ad_bz2_crc_run (crc, ch, run);
  }
#undef GET_BYTE
  if (~crc != k->stored_crc)
    return false;
  *usize = total;
  *zero = all_zero;
  return true;
}

/* Decode the block in the phases above.  dst NULL: count only.  fit
 * NULL: fail if the bytes do not fit in dst; else stop writing when
 * they do not, clear *fit and count on.
 */
static bool
block_decode (struct ad_bz2_sizer *s, const unsigned char *p,
              uint64_t nbits, int level, unsigned char *dst, size_t dst_len,
              bool *fit, uint64_t *usize, bool *zero)
{
  struct block k;
  uint32_t nblock_max;
  bool ok;

  if (level < 1 || level > 9 || nbits < 48 + 32 + 1 + 24 + 16)
    return false;
  nblock_max = 100000u * level;
  if (s->tt_len < nblock_max) {
    free (s->tt);
    s->tt_len = 0;
    s->tt = malloc (nblock_max * sizeof *s->tt);
    if (s->tt == NULL)
      return false;
    s->tt_len = nblock_max;
  }

  memset (&k.b, 0, sizeof k.b);
  k.b.p = p;
  k.b.nbytes = (nbits + 7) / 8;
  k.b.limit = nbits;
  k.nblock_max = nblock_max;
  k.nblock = 0;
  k.tt = s->tt;
  k.n_in_use = 0;
  k.selectors = NULL;
  k.codes = NULL;

  ok = read_header (&k) && read_tables (&k) && read_symbols (&k) &&
    /* The block must end exactly where the next magic starts. */
    k.b.pos == k.b.limit && k.orig_ptr < k.nblock;
  if (ok) {
    undo_bwt (&k);
    ok = undo_rle1 (&k, dst, dst_len, fit, usize, zero);
  }
  free (k.selectors);
  free (k.codes);
  return ok;
}
