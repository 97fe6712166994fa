/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: a bzip2 block decoder without libbz2 (see bzip2-decode.c).
 */
#ifndef AUTODECOMP_BZIP2_DECODE_H
#define AUTODECOMP_BZIP2_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Memory one thread reuses from block to block. */
struct ad_bz2_sizer {
  uint32_t *tt;                 /* The block, then its inverse BWT. */
  size_t tt_len;                /* Entries allocated. */
};

extern void ad_bz2_sizer_init (struct ad_bz2_sizer *s);
extern void ad_bz2_sizer_free (struct ad_bz2_sizer *s);

/* The block whose magic starts at bit 0 of p and whose last bit is bit
 * nbits - 1 (the bit before the next magic), of a stream of the given
 * level ('1'..'9' as a number): decode it, count the bytes it decodes
 * to and check its CRC.  Returns true with *usize, and *zero (every
 * byte is zero), if it decoded, ended exactly at bit nbits and matched
 * its CRC; false if not, or if it is a kind of block left to libbz2
 * (randomised).  p must hold (nbits + 7) / 8 bytes.
 *
 * A true answer is what libbz2 would say of the same block: the same
 * size, after the same CRC check.  A false answer says nothing: the
 * caller decodes the block with libbz2, which says what is wrong.
 */
extern bool ad_bz2_block_size (struct ad_bz2_sizer *s, const unsigned char *p,
                               uint64_t nbits, int level, uint64_t *usize,
                               bool *zero);

/* The same, also writing the decoded bytes to out, which has room for
 * out_len; false if they do not fit.  On false, out holds garbage.
 * Since the CRC is computed over exactly the bytes written, a true
 * answer means they are the block's bytes.
 */
extern bool ad_bz2_block_decode (struct ad_bz2_sizer *s,
                                 const unsigned char *p, uint64_t nbits,
                                 int level, unsigned char *out,
                                 size_t out_len, uint64_t *usize,
                                 bool *zero);

/* The same, writing the decoded bytes to out as long as they fit: if
 * they do not, *fit is cleared and the rest is only counted (out then
 * holds the first out_len bytes, of no use).  The answer and *usize
 * are those of ad_bz2_block_size; the bytes in out are the block's
 * when the answer is true and *fit is set.
 */
extern bool ad_bz2_block_decode_some (struct ad_bz2_sizer *s,
                                      const unsigned char *p,
                                      uint64_t nbits, int level,
                                      unsigned char *out, size_t out_len,
                                      bool *fit, uint64_t *usize,
                                      bool *zero);

/* ad_bz2_block_decode with a decoder's memory (up to 3.6 MB) taken
 * from a few kept in the process for any thread, or new.
 */
extern bool ad_bz2_block_decode_spare (const unsigned char *p,
                                       uint64_t nbits, int level,
                                       unsigned char *out, size_t out_len,
                                       uint64_t *usize, bool *zero);

/* The bzip2 CRC (not reflected) crc after n more bytes ch.  The
 * decoder uses it for every run; exported for the unit test.
 */
extern uint32_t ad_bz2_crc_run (uint32_t crc, unsigned ch, unsigned n);

#endif /* AUTODECOMP_BZIP2_DECODE_H */
