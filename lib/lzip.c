/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: lzip images, one frame per member.
 *
 * An .lz file (lzip format version 1) is one or more members, each
 *
 *   Header   6 bytes: ID string "LZIP", Version Number (1), Coded
 *            Dictionary Size (bits 4-0: the base 2 logarithm of a
 *            base size from 2^12 to 2^29; bits 7-5: how many
 *            sixteenths of the base size to subtract from it).
 *   LZMA stream  lc=3, lp=0, pb=2, ending with an End Of Stream
 *            marker.
 *   Trailer  20 bytes: CRC32 of the uncompressed data, Data Size (8
 *            bytes, little endian), Member Size (8 bytes: the whole
 *            member, header and trailer included).
 *
 * plzip cuts its input into pieces (16 MiB at -6) and writes one member
 * for each; plain lzip writes one member.  Each member decodes on its
 * own, so one frame is one member.  The trailers give every member's
 * sizes, so the frame table comes from the end of the file without
 * decoding anything: we walk the file backwards, trailer by trailer,
 * each Member Size leading to the header of its member and to the
 * trailer of the member before it, until offset 0.  The members must
 * tile the file exactly: trailing data after the last member (which
 * lzip tolerates) is an error here, as in the other formats.  Every
 * size is bounded before it is trusted: a Member Size by the bytes left
 * before it, a Data Size by the largest expansion LZMA can encode.
 *
 * No check covers the Data Size fields (the CRC32 is of the data): a
 * damaged one fails its own member when it decodes, but shifts every
 * member after it, so the index sets sizes_unchecked, and
 * autodecomp-verify-offsets=true proves the offsets as for BGZF and
 * zstd.  A member that claims to be empty is decoded at open (it must
 * stop before its first byte of output) and left out of the index.
 *
 * A frame decodes with liblzma's lzip decoder (lzma_lzip_decoder, in
 * liblzma since 5.4), one member without LZMA_CONCATENATED, which
 * verifies the member's CRC32, Data Size and Member Size at its end.
 * We chose it over lzlib (LZ_decompress_*) because it measured as fast
 * on the 64 MiB corpus image (see the commit that added this file) and
 * liblzma is a dependency already.  The decoder is fed a copy of the
 * member header whose dictionary size is cut down to the member's data
 * size (a valid stream never refers further back than its own output),
 * which bounds the memory a hostile header can ask for without changing
 * the result.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <limits.h>
#include <errno.h>

#include <lzma.h>

#include "format-int.h"
#include "lzma-frame.h"
#include "persist.h"

#define HEADER_SIZE 6
#define TRAILER_SIZE 20

/* The smallest member lzip writes (an empty one) and the smallest the
 * format allows: a header, an LZMA stream of at least 10 bytes (its
 * first byte, the range coder's initial code and the End Of Stream
 * marker) and a trailer.
 */
#define MIN_MEMBER_SIZE 36

/* LZMA cannot encode more than about 7090 bytes per byte of stream
 * (lzip's own consistency check uses that bound); a Data Size above
 * MAX_RATIO times the member's LZMA stream is a lie.
 */
#define MAX_RATIO 8192

/* The lzip format allows dictionaries of 4 KiB to 512 MiB. */
#define MAX_DECODER_MEM (512 * 1024 * 1024ULL + 64 * 1024 * 1024ULL)

static const unsigned char lzip_magic[4] = { 'L', 'Z', 'I', 'P' };

/* The dictionary size a Coded Dictionary Size byte stands for, or 0 if
 * it is not valid (the rule of lzip and of liblzma's decoder).
 */
static uint32_t
dict_size_decode (unsigned char ds)
{
  unsigned b2log = ds & 0x1f, fracnum = ds >> 5;

  if (b2log < 12 || b2log > 29 || (b2log == 12 && fracnum > 0))
    return 0;
  return (UINT32_C (1) << b2log) - (fracnum << (b2log - 4));
}

/* Check the 6-byte member header at p (file offset off).  Sets
 * *dict_size.
 */
static int
check_header (const unsigned char *p, uint64_t off, uint32_t *dict_size,
              struct ad_error *err)
{
  if (memcmp (p, lzip_magic, sizeof lzip_magic) != 0)
    return ad_error_set (err, EIO, "no member header (\"LZIP\") at offset %"
                         PRIu64 " where the trailer after it says its "
                         "member starts", off);
  if (p[4] != 1)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 " has "
                         "version %u (only version 1 is supported)",
                         off, p[4]);
  *dict_size = dict_size_decode (p[5]);
  if (*dict_size == 0)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 " has an "
                         "invalid coded dictionary size 0x%02x", off, p[5]);
  return 0;
}

/* One member found by the walk. */
struct member {
  uint64_t coff, csize, usize;
};

/* Check the trailer (20 bytes at t) of the member that ends at end,
 * against the bytes before it, and return the member it describes.
 */
static int
check_trailer (const unsigned char *t, uint64_t end, struct member *m,
               struct ad_error *err)
{
  uint64_t dsize = ad_le64 (t + 4), msize = ad_le64 (t + 12);
  uint64_t max_dsize;

  if (msize < MIN_MEMBER_SIZE || msize > end)
    return ad_error_set (err, EIO, "trailer at offset %" PRIu64 " declares "
                         "a %" PRIu64 "-byte member, but %" PRIu64 " bytes "
                         "precede it%s", end - TRAILER_SIZE, msize, end,
                         msize < MIN_MEMBER_SIZE ? " and a member takes at "
                         "least 36" : " (truncated, or trailing data?)");
  if (__builtin_mul_overflow (msize - HEADER_SIZE - TRAILER_SIZE,
                              (uint64_t) MAX_RATIO, &max_dsize))
    max_dsize = UINT64_MAX;
  if (dsize > max_dsize)
    return ad_error_set (err, EIO, "trailer at offset %" PRIu64 " declares "
                         "%" PRIu64 " bytes of data in a %" PRIu64 "-byte "
                         "member, more than LZMA can encode in it",
                         end - TRAILER_SIZE, dsize, msize);
  if (dsize == 0 && ad_le32 (t) != 0)
    return ad_error_set (err, EIO, "trailer at offset %" PRIu64 " declares "
                         "no data but a CRC32 of 0x%08" PRIx32,
                         end - TRAILER_SIZE, ad_le32 (t));
  m->coff = end - msize;
  m->csize = msize;
  m->usize = dsize;
  return 0;
}

/* The members, last one of the file first. */
struct walk {
  struct member *members;
  size_t n, alloc;
};

static int
walk_add (struct walk *w, const struct member *m, struct ad_error *err)
{
  if (w->n == w->alloc) {
    size_t n = w->alloc ? w->alloc * 2 : 16;
    struct member *p = realloc (w->members, n * sizeof *p);

    if (p == NULL)
      return ad_error_set (err, ENOMEM, "realloc: %m");
    w->members = p;
    w->alloc = n;
  }
  w->members[w->n++] = *m;
  return 0;
}

/* Walk the trailers from the end of the file to offset 0.  Each read
 * but the first takes the header of one member and the trailer of the
 * member before it, which lie side by side.
 */
static int
walk_members (struct ad_source *src, struct walk *w, struct ad_error *err)
{
  unsigned char buf[TRAILER_SIZE + HEADER_SIZE];
  uint64_t pos = src->size;
  struct member m;
  uint32_t dict_size;

  if (pos < MIN_MEMBER_SIZE)
    return ad_error_set (err, EIO, "file of %" PRIu64 " bytes is too small "
                         "for a member (at least 36 bytes)", pos);
  if (ad_source_pread (src, buf, TRAILER_SIZE, pos - TRAILER_SIZE,
                       err) == -1)
    return -1;
  for (;;) {
    if (check_trailer (buf, pos, &m, err) == -1)
      return -1;
    if (m.coff > 0 && m.coff < MIN_MEMBER_SIZE)
      return ad_error_set (err, EIO, "%" PRIu64 " bytes before the member "
                           "at offset %" PRIu64 " are too few for a member",
                           m.coff, m.coff);
    if (m.coff == 0) {
      if (ad_source_pread (src, buf + TRAILER_SIZE, HEADER_SIZE, 0,
                           err) == -1)
        return -1;
    }
    else if (ad_source_pread (src, buf, sizeof buf, m.coff - TRAILER_SIZE,
                              err) == -1)
      return -1;
    if (check_header (buf + TRAILER_SIZE, m.coff, &dict_size, err) == -1 ||
        walk_add (w, &m, err) == -1)
      return -1;
    if (m.coff == 0)
      return 0;
    pos = m.coff;
  }
}

static int check_empty_member (struct ad_index *idx, struct ad_source *src,
                               const struct member *m, size_t member_no,
                               struct ad_error *err);

static int
lzip_open (struct ad_index *idx, struct ad_source *src, struct ad_error *err)
{
  struct walk w = { NULL, 0, 0 };
  uint64_t total = 0;
  size_t i;
  int ret = -1;

  idx->index_from = "the member trailers";
  idx->sizes_unchecked = true;
  if (walk_members (src, &w, err) == -1)
    goto out;

  for (i = 0; i < w.n; i++) {
    if (w.members[i].usize > INT64_MAX - total) {
      ad_error_set (err, EIO, "members add up to more than %" PRId64
                    " bytes of data", INT64_MAX);
      goto out;
    }
    total += w.members[i].usize;
  }
  idx->size = total;

  /* Members in file order: the walk found the last one first. */
  for (i = w.n; i-- > 0; ) {
    const struct member *m = &w.members[i];
    struct ad_frame frame = {
      .uoff = idx->indexed,
      .usize = m->usize,
      .coff = m->coff,
      .csize = m->csize,
    };

    if (m->usize == 0) {
      if (check_empty_member (idx, src, m, w.n - 1 - i, err) == -1)
        goto out;
      continue;
    }
    if (ad_index_append_frame (idx, &frame, err) == -1)
      goto out;
  }
  ret = 0;

 out:
  free (w.members);
  return ret;
}

/* The Coded Dictionary Size of the smallest power of two that holds
 * usize bytes, if it is smaller than dict_size, else coded.
 */
static unsigned char
shrink_dict (unsigned char coded, uint32_t dict_size, uint64_t usize)
{
  unsigned b2log = 12;

  while (b2log < 29 && (UINT64_C (1) << b2log) < usize)
    b2log++;
  return (UINT64_C (1) << b2log) < dict_size ? b2log : coded;
}

/* Feed liblzma the 6 bytes of header (a copy of the member's), which
 * produce no output, then point it back at the member's bytes after
 * its header.
 */
static int
feed_header (struct ad_lzma_frame *f, const unsigned char *header,
             struct ad_error *err)
{
  const uint8_t *next_in = f->strm.next_in + HEADER_SIZE;
  size_t avail_in = f->strm.avail_in - HEADER_SIZE;
  unsigned char none;
  lzma_ret r;

  f->strm.next_in = header;
  f->strm.avail_in = HEADER_SIZE;
  f->strm.next_out = &none;
  f->strm.avail_out = 0;
  r = lzma_code (&f->strm, LZMA_RUN);
  if (r != LZMA_OK || f->strm.avail_in != 0)
    return ad_error_set (err, EIO, "member header at offset %" PRIu64
                         ": %s", f->frame.coff, ad_lzma_ret_string (r));
  f->strm.next_in = next_in;
  f->strm.avail_in = avail_in;
  return 0;
}

/* Member header: at the start of the first chunk.  Starts liblzma's
 * lzip decoder and feeds it the header, with the dictionary cut down to
 * the member's data size.
 */
static int
start_member (struct ad_lzma_frame *f, struct ad_error *err)
{
  unsigned char header[HEADER_SIZE];
  uint32_t dict_size;
  lzma_ret r;

  if (f->strm.avail_in < HEADER_SIZE)
    return ad_error_set (err, EIO, "member (%zu bytes) is too small for "
                         "its header", f->strm.avail_in);
  memcpy (header, f->strm.next_in, HEADER_SIZE);
  if (check_header (header, f->frame.coff, &dict_size, err) == -1)
    return -1;
  header[5] = shrink_dict (header[5], dict_size, f->frame.usize);

  r = lzma_lzip_decoder (&f->strm, MAX_DECODER_MEM, 0);
  if (r != LZMA_OK)
    return ad_error_set (err, ad_lzma_errno (r),
                         "cannot start the lzip decoder: %s",
                         ad_lzma_ret_string (r));
  f->strm_init = true;
  return feed_header (f, header, err);
}

/* The decoder of one member. */
static int
lzip_decoder_new (struct ad_index *idx __attribute__ ((unused)),
                  const struct ad_frame *frame,
                  size_t frame_no __attribute__ ((unused)),
                  void **decoder, struct ad_error *err)
{
  struct ad_lzma_frame *f = malloc (sizeof *f);

  if (f == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  ad_lzma_frame_init (f, frame, "member",
                      "the CRC32 or sizes of its trailer", start_member);
  *decoder = f;
  return 0;
}

static void
lzip_decoder_free (void *decoder)
{
  struct ad_lzma_frame *f = decoder;

  if (f == NULL)
    return;
  ad_lzma_frame_end (f);
  free (f);
}

static ssize_t
lzip_decoder_read (void *decoder, struct ad_source *src, void *out,
                   size_t count, struct ad_error *err)
{
  return ad_lzma_frame_read (decoder, src, out, count, err);
}

/* A member whose trailer says it is empty: it must decode to nothing,
 * which costs one small read (any output at all is an error).  Then it
 * can be left out of the index without trusting its trailer.
 */
static int
check_empty_member (struct ad_index *idx, struct ad_source *src,
                    const struct member *m, size_t member_no,
                    struct ad_error *err)
{
  struct ad_frame frame = { .coff = m->coff, .csize = m->csize };
  void *dec = NULL;
  char byte;
  ssize_t n;

  if (lzip_decoder_new (idx, &frame, 0, &dec, err) == -1)
    return -1;
  n = lzip_decoder_read (dec, src, &byte, 1, err);
  lzip_decoder_free (dec);
  if (n > 0)
    ad_error_set (err, EIO, "member %zu at offset %" PRIu64 " declares no "
                  "data in its trailer, but decodes to some", member_no,
                  m->coff);
  else if (n == -1)
    ad_error_prefix (err, "empty member %zu at offset %" PRIu64, member_no,
                     m->coff);
  return n == 0 ? 0 : -1;
}

/* The persisted index (see persist.h) keeps the frame table alone:
 * walking the trailers costs one read per member, which over a slow
 * link adds up.  A member decodes from its own header and checks its
 * own trailer, so a frame from a file needs nothing more.
 */
static int
lzip_save (struct ad_index *idx, struct ad_source *src, struct ad_buf *out,
           const char **why)
{
  if (!ad_frames_tile (idx, src->size, 0, 0)) {
    *why = "it has an empty member, which a loaded index cannot have";
    return -1;
  }
  return 0;
}

static int
lzip_load (struct ad_index *idx, struct ad_cursor *in, uint64_t file_size)
{
  size_t i;

  if (!ad_frames_tile (idx, file_size, 0, 0))
    return -1;
  idx->sizes_unchecked = true;

  for (i = 0; i < idx->nframes; i++)
    if (idx->frames[i].aux != 0 || idx->frames[i].aux32 != 0 ||
        idx->frames[i].csize < MIN_MEMBER_SIZE)
      return -1;
  return 0;
}

const struct ad_format_ops ad_lzip_ops = {
  .format = AD_FORMAT_LZIP,
  .name = "lzip",
  .open = lzip_open,
  .advance = NULL,
  .decoder_new = lzip_decoder_new,
  .decoder_read = lzip_decoder_read,
  .decoder_free = lzip_decoder_free,
  .save = lzip_save,
  .load = lzip_load,
  .close = NULL,
  /* A member decodes from its own bytes, whose trailer has its CRC32
   * and sizes.
   */
  .frame_key = ad_frame_key_own_bytes,
};
