/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Unit test of lib/bzip2-decode.c, the bzip2 block decoder of the sizing
 * pass and of whole-block reads.
 *
 * It falls back to libbz2 whenever it does not accept a block, so a
 * bug that made it refuse good blocks would go unseen by the tests
 * that only compare bytes (they would pass, only slower).  Here it must
 * accept the blocks libbz2 writes and give their exact size and bytes:
 * runs of every length around the RLE1 limits, zeros, all byte values,
 * random data, at levels 1 and 9.  ad_bz2_crc_run, which does runs four
 * bytes at a time and runs of 255 in one step, must agree with the CRC
 * taken a byte at a time, for every byte value and run length.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bzlib.h>

#include "bzip2-decode.h"
#include "splitmix.h"

static unsigned failures;

#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      fprintf (stderr, "test-bzip2-decode: FAIL: " __VA_ARGS__);  \
      fprintf (stderr, "\n");                                   \
      failures++;                                               \
    }                                                           \
  } while (0)

static uint32_t
crc_one_by_one (uint32_t crc, unsigned ch, unsigned n)
{
  unsigned i;

  while (n-- > 0) {
    crc ^= (uint32_t) ch << 24;
    for (i = 0; i < 8; i++)
      crc = crc & 0x80000000 ? (crc << 1) ^ 0x04c11db7 : crc << 1;
  }
  return crc;
}

static void
test_crc_run (void)
{
  uint64_t rng = 1;
  unsigned ch, n, k;

  for (ch = 0; ch < 256; ch++)
    for (n = 0; n <= 300; n++)
      for (k = 0; k < 3; k++) {
        uint32_t crc = k == 0 ? 0 : k == 1 ? 0xffffffff
          : (uint32_t) rnd (&rng);

        CHECK (ad_bz2_crc_run (crc, ch, n) == crc_one_by_one (crc, ch, n),
               "crc_run (0x%08x, %u, %u)", crc, ch, n);
      }
}

/* Compress data as one bzip2 stream of one block and return the
 * block's bit span: from the block magic (bit 32) to the end-of-stream
 * magic, found by looking for it at every bit offset from the end.
 */
static unsigned char *
one_block (const unsigned char *data, unsigned len, int level,
           uint64_t *nbits)
{
  unsigned clen = len + len / 50 + 1024;
  unsigned char *comp = malloc (clen);
  const uint64_t eos = 0x177245385090ULL;
  uint64_t bit;

  if (comp == NULL ||
      BZ2_bzBuffToBuffCompress ((char *) comp, &clen, (char *) data, len,
                                level, 0, 0) != BZ_OK) {
    fprintf (stderr, "test-bzip2-decode: compressing failed\n");
    exit (EXIT_FAILURE);
  }
  /* The eos magic and the 32-bit combined CRC end the stream, then up
   * to 7 bits of padding.
   */
  for (bit = (uint64_t) clen * 8 - 80; bit > 32; bit--) {
    uint64_t v = 0, b;

    for (b = bit; b < bit + 48; b++)
      v = v << 1 | ((comp[b / 8] >> (7 - b % 8)) & 1);
    if (v == eos) {
      *nbits = bit - 32;
      memmove (comp, comp + 4, clen - 4);
      return comp;
    }
  }
  fprintf (stderr, "test-bzip2-decode: no end-of-stream magic\n");
  exit (EXIT_FAILURE);
}

static void
test_block (const char *name, const unsigned char *data, unsigned len,
            int level)
{
  struct ad_bz2_sizer sizer;
  uint64_t nbits, usize = 0;
  unsigned char *block = one_block (data, len, level, &nbits);
  unsigned char *out = malloc (len + 1);
  bool zero = false, all_zero = true;
  unsigned i;

  for (i = 0; i < len; i++)
    all_zero &= data[i] == 0;

  ad_bz2_sizer_init (&sizer);
  CHECK (ad_bz2_block_size (&sizer, block, nbits, level, &usize, &zero),
         "%s, level %d: the block was not accepted", name, level);
  CHECK (usize == len, "%s, level %d: size %llu, expected %u", name, level,
         (unsigned long long) usize, len);
  CHECK (zero == all_zero, "%s, level %d: zero flag wrong", name, level);

  usize = 0;
  CHECK (ad_bz2_block_decode (&sizer, block, nbits, level, out, len + 1,
                              &usize, &zero) &&
         usize == len && memcmp (out, data, len) == 0,
         "%s, level %d: decoded bytes differ", name, level);

  /* Writing while the bytes fit: all of them, or counting on past a
   * buffer one byte short.
   */
  {
    bool fit = false;

    usize = 0;
    memset (out, 0xaa, len + 1);
    CHECK (ad_bz2_block_decode_some (&sizer, block, nbits, level, out, len,
                                     &fit, &usize, &zero) &&
           fit && usize == len && zero == all_zero &&
           memcmp (out, data, len) == 0 && out[len] == 0xaa,
           "%s, level %d: kept bytes differ", name, level);
    usize = 0;
    CHECK (ad_bz2_block_decode_some (&sizer, block, nbits, level, out,
                                     len - 1, &fit, &usize, &zero) &&
           !fit && usize == len && zero == all_zero,
           "%s, level %d: a short buffer changed the answer", name, level);
  }

  /* One bit more or less is not the block. */
  CHECK (!ad_bz2_block_size (&sizer, block, nbits - 1, level, &usize, &zero),
         "%s, level %d: accepted one bit short", name, level);
  /* A flipped bit in the stored CRC must be refused. */
  block[6] ^= 0x10;
  CHECK (!ad_bz2_block_size (&sizer, block, nbits, level, &usize, &zero),
         "%s, level %d: accepted a wrong CRC", name, level);

  ad_bz2_sizer_free (&sizer);
  free (out);
  free (block);
}

int
main (void)
{
  /* Under 100000 bytes after RLE1 (a level-1 block). */
  const unsigned len = 90000;
  unsigned char *data = malloc (len);
  uint64_t rng = 42;
  unsigned i, n, pos;
  int level;

  test_crc_run ();

  for (level = 1; level <= 9; level += 8) {
    memset (data, 0, len);
    test_block ("zeros", data, len, level);

    for (i = 0; i < len; i++)
      data[i] = i % 256;
    test_block ("all bytes", data, len, level);

    for (i = 0; i < len; i++)
      data[i] = rnd (&rng);
    test_block ("random", data, len, level);

    /* Runs of every length 1..300 of a changing byte: RLE1 writes
     * runs of 4 + count up to 259 and splits longer ones.
     */
    for (pos = 0, n = 1; pos < len; n = n % 300 + 1) {
      unsigned char ch = rnd (&rng);

      for (i = 0; i < n && pos < len; i++)
        data[pos++] = ch;
    }
    test_block ("runs", data, len, level);
  }

  free (data);
  if (failures) {
    fprintf (stderr, "test-bzip2-decode: %u failures\n", failures);
    return EXIT_FAILURE;
  }
  printf ("test-bzip2-decode: ok\n");
  return EXIT_SUCCESS;
}
