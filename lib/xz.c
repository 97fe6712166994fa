/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: xz images, one frame per xz block.
 *
 * An .xz file is one or more Streams, each optionally followed by
 * Stream Padding (a multiple of four null bytes).  A Stream is
 *
 *   Stream Header  12 bytes: Header Magic Bytes (FD 37 7A 58 5A 00),
 *                  Stream Flags (2 bytes, the Check type), CRC32.
 *   Blocks         each: Block Header (Block Header Size, Block Flags,
 *                  optional Compressed Size and Uncompressed Size, List
 *                  of Filter Flags, Header Padding, CRC32), Compressed
 *                  Data, Block Padding (to a multiple of four), Check
 *                  (none, CRC32, CRC64 or SHA-256, as the Stream Flags
 *                  say).
 *   Index          Index Indicator (0x00), Number of Records, one
 *                  Record (Unpadded Size, Uncompressed Size) per Block,
 *                  Index Padding, CRC32.
 *   Stream Footer  12 bytes: CRC32, Backward Size (the size of the
 *                  Index), Stream Flags (must equal the Header's), Footer
 *                  Magic Bytes ("YZ").
 *
 * The Index gives every Block's sizes, so the whole frame table comes
 * from the end of the file without decoding anything: we walk the file
 * backwards, skipping Stream Padding, decoding each Stream Footer, the
 * Index it points to and the Stream Header the Index sizes lead to,
 * and join the Streams' indexes with lzma_index_cat.  Each non-empty
 * Block becomes a frame: coff and csize are the Block's position and
 * Total Size (Block Header to Check inclusive), aux is its Unpadded
 * Size (needed to find where the Block Padding ends) and aux32 its
 * Stream's Check type.  The parsing of each structure is liblzma's
 * (lzma_stream_footer_decode, lzma_index_buffer_decode,
 * lzma_stream_header_decode, lzma_block_header_decode); this file
 * bounds every size against the file before reading or allocating.
 *
 * A frame decodes with lzma_block_decoder, given the Block's sizes
 * from the Index so that liblzma verifies them along with the Check.
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

/* Reads while walking the file backwards cover at least this much, so
 * that the footer, the Index and the padding of a small Stream come in
 * one read.
 */
#define TAIL_WINDOW (64 * 1024)

/* Stream Padding is scanned in chunks growing up to this size. */
#define PADDING_CHUNK_MAX (8 * 1024 * 1024)

/* Largest LZMA2 dictionary, and decoder memory, we accept (xz itself
 * never writes a dictionary larger than 1.5 GiB).
 */
#define MAX_DICT_SIZE (1536 * 1024 * 1024ULL)
#define MAX_DECODER_MEM (MAX_DICT_SIZE + 64 * 1024 * 1024ULL)

/* A window of the file kept while walking it backwards, so that the
 * padding scan, the footer and a small Index share one read.
 */
struct window {
  struct ad_source *src;
  unsigned char *buf;
  size_t alloc;
  uint64_t off;                 /* File offset of buf[0]. */
  size_t len;                   /* Valid bytes in buf. */
};

/* Return a pointer to the count bytes at offset off (the caller has
 * checked that they lie within the file), reading a new window ending
 * at off + count if the current one does not hold them.
 */
static const unsigned char *
window_get (struct window *w, uint64_t off, size_t count,
            struct ad_error *err)
{
  uint64_t end = off + count, start;
  size_t len;

  if (off >= w->off && off - w->off <= w->len &&
      count <= w->len - (off - w->off))
    return w->buf + (off - w->off);

  if (count >= TAIL_WINDOW)
    start = off;
  else
    start = end > TAIL_WINDOW ? end - TAIL_WINDOW : 0;
  len = end - start;
  if (len > w->alloc) {
    unsigned char *p = realloc (w->buf, len);
    if (p == NULL) {
      ad_error_set (err, ENOMEM, "cannot allocate %zu bytes to read the "
                    "index at offset %" PRIu64 ": %m", len, start);
      return NULL;
    }
    w->buf = p;
    w->alloc = len;
  }
  w->len = 0;
  if (ad_source_pread (w->src, w->buf, len, start, err) == -1)
    return NULL;
  w->off = start;
  w->len = len;
  return w->buf + (off - start);
}

/* Skip the Stream Padding that ends at *pos (null 32-bit words),
 * moving *pos back to the end of the Stream before it.  *pos is a
 * multiple of four.  Long runs of padding are read in growing chunks,
 * up to PADDING_CHUNK_MAX.
 */
static int
skip_stream_padding (struct window *w, uint64_t *pos, uint64_t *padding,
                     struct ad_error *err)
{
  size_t chunk = 4;

  *padding = 0;
  while (*pos > 0) {
    size_t len = *pos < chunk ? *pos : chunk, k = len;
    const unsigned char *p = window_get (w, *pos - len, len, err);

    if (p == NULL)
      return -1;
    while (k >= 4 && (p[k - 4] | p[k - 3] | p[k - 2] | p[k - 1]) == 0)
      k -= 4;
    *pos -= len - k;
    *padding += len - k;
    if (k > 0)
      break;
    if (chunk < TAIL_WINDOW)
      chunk = TAIL_WINDOW;
    else if (chunk < PADDING_CHUNK_MAX)
      chunk *= 2;
  }
  return 0;
}

/* Stream Footer: the 12 bytes ending at end. */
static int
parse_stream_footer (struct window *w, uint64_t end, lzma_stream_flags *flags,
                     struct ad_error *err)
{
  const unsigned char *p;
  lzma_ret r;

  if (end < 2 * LZMA_STREAM_HEADER_SIZE)
    return ad_error_set (err, EIO, "%" PRIu64 " bytes before offset %"
                         PRIu64 " are too few for a stream header and "
                         "footer (truncated?)", end, end);
  p = window_get (w, end - LZMA_STREAM_HEADER_SIZE, LZMA_STREAM_HEADER_SIZE,
                  err);
  if (p == NULL)
    return -1;
  r = lzma_stream_footer_decode (flags, p);
  if (r == LZMA_FORMAT_ERROR)
    return ad_error_set (err, EIO, "no stream footer magic at offset %"
                         PRIu64 " (truncated, or trailing garbage?)",
                         end - LZMA_STREAM_HEADER_SIZE);
  if (r == LZMA_DATA_ERROR)
    return ad_error_set (err, EIO, "stream footer at offset %" PRIu64
                         " fails its CRC32", end - LZMA_STREAM_HEADER_SIZE);
  if (r != LZMA_OK)
    return ad_error_set (err, EIO, "stream footer at offset %" PRIu64
                         ": %s", end - LZMA_STREAM_HEADER_SIZE,
                         ad_lzma_ret_string (r));
  if (!lzma_check_is_supported (flags->check))
    return ad_error_set (err, EIO, "stream footer at offset %" PRIu64
                         " declares integrity check type %d, which cannot "
                         "be verified", end - LZMA_STREAM_HEADER_SIZE,
                         (int) flags->check);
  return 0;
}

/* Index: backward_size bytes ending at end. */
static int
parse_index (struct window *w, uint64_t end, lzma_vli backward_size,
             lzma_index **index, struct ad_error *err)
{
  const unsigned char *p;
  uint64_t start, memlimit;
  size_t in_pos = 0;
  lzma_ret r;

  /* The Stream Header must fit before the Index. */
  if (backward_size > end - LZMA_STREAM_HEADER_SIZE)
    return ad_error_set (err, EIO, "stream footer at offset %" PRIu64
                         " declares a %" PRIu64 "-byte index, larger than "
                         "the stream can hold", end, backward_size);
  start = end - backward_size;
  if (backward_size > SIZE_MAX)
    return ad_error_set (err, EIO, "index at offset %" PRIu64 " is too "
                         "large (%" PRIu64 " bytes)", start, backward_size);
  p = window_get (w, start, backward_size, err);
  if (p == NULL)
    return -1;

  /* Every Record takes at least two bytes, so this bounds the memory
   * the Index may need by its size; a Number of Records larger than
   * what fits fails the limit.
   */
  memlimit = lzma_index_memusage (1, backward_size / 2);
  r = lzma_index_buffer_decode (index, &memlimit, NULL, p, &in_pos,
                                backward_size);
  if (r == LZMA_MEMLIMIT_ERROR)
    return ad_error_set (err, EIO, "index at offset %" PRIu64 " declares "
                         "more records than its %" PRIu64 " bytes can hold "
                         "(it would need %" PRIu64 " bytes of memory)",
                         start, backward_size, memlimit);
  if (r == LZMA_DATA_ERROR || r == LZMA_BUF_ERROR)
    return ad_error_set (err, EIO, "index at offset %" PRIu64 " (%" PRIu64
                         " bytes) is corrupt or does not end where the "
                         "stream footer says", start, backward_size);
  if (r != LZMA_OK)
    return ad_error_set (err, ad_lzma_errno (r), "index at offset %" PRIu64
                         ": %s", start, ad_lzma_ret_string (r));
  if (in_pos != backward_size || lzma_index_size (*index) != backward_size) {
    lzma_index_end (*index, NULL);
    *index = NULL;
    return ad_error_set (err, EIO, "index at offset %" PRIu64 " is %zu "
                         "bytes, but the stream footer says %" PRIu64,
                         start, in_pos, backward_size);
  }
  return 0;
}

/* Stream Header at offset start, compared with the footer's flags. */
static int
parse_stream_header (struct window *w, uint64_t start,
                     const lzma_stream_flags *footer, struct ad_error *err)
{
  lzma_stream_flags header;
  const unsigned char *p;
  lzma_ret r;

  p = window_get (w, start, LZMA_STREAM_HEADER_SIZE, err);
  if (p == NULL)
    return -1;
  r = lzma_stream_header_decode (&header, p);
  if (r == LZMA_FORMAT_ERROR)
    return ad_error_set (err, EIO, "no stream header magic at offset %"
                         PRIu64 " where the index says the stream starts",
                         start);
  if (r == LZMA_DATA_ERROR)
    return ad_error_set (err, EIO, "stream header at offset %" PRIu64
                         " fails its CRC32", start);
  if (r != LZMA_OK)
    return ad_error_set (err, EIO, "stream header at offset %" PRIu64
                         ": %s", start, ad_lzma_ret_string (r));
  r = lzma_stream_flags_compare (&header, footer);
  if (r != LZMA_OK)
    return ad_error_set (err, EIO, "stream header at offset %" PRIu64
                         " and its footer disagree on the stream flags",
                         start);
  return 0;
}

/* Parse the Stream that ends (with its footer) at end, and its padding
 * after it.  Returns its index and moves *pos to its start.
 */
static int
parse_stream (struct window *w, uint64_t *pos, uint64_t padding,
              lzma_index **index, struct ad_error *err)
{
  uint64_t end = *pos, index_end, stream_size, start;
  lzma_stream_flags flags;
  lzma_ret r;

  *index = NULL;
  if (parse_stream_footer (w, end, &flags, err) == -1)
    return -1;
  index_end = end - LZMA_STREAM_HEADER_SIZE;
  if (parse_index (w, index_end, flags.backward_size, index, err) == -1)
    return -1;

  /* The Blocks the Index declares, with the header, Index and footer,
   * must fit before the footer's end.
   */
  stream_size = lzma_index_stream_size (*index);
  if (stream_size > end) {
    ad_error_set (err, EIO, "index at offset %" PRIu64 " declares a "
                  "%" PRIu64 "-byte stream, but the stream ends at offset "
                  "%" PRIu64, index_end - flags.backward_size, stream_size,
                  end);
    goto fail;
  }
  start = end - stream_size;
  if (parse_stream_header (w, start, &flags, err) == -1)
    goto fail;

  r = lzma_index_stream_flags (*index, &flags);
  if (r == LZMA_OK)
    r = lzma_index_stream_padding (*index, padding);
  if (r != LZMA_OK) {
    ad_error_set (err, ad_lzma_errno (r), "stream at offset %" PRIu64 ": %s",
                  start, ad_lzma_ret_string (r));
    goto fail;
  }
  *pos = start;
  return 0;

 fail:
  lzma_index_end (*index, NULL);
  *index = NULL;
  return -1;
}

/* Read the index of every Stream, walking back from the end of the
 * file, and join them into one (*combined), checking that they tile
 * the file.  Returns 0, or -1 with err.
 */
static int
read_indexes (struct window *w, struct ad_source *src,
              lzma_index **combined, struct ad_error *err)
{
  lzma_index *index;
  lzma_index **streams = NULL;  /* Last Stream of the file first. */
  size_t nstreams = 0, streams_alloc = 0, i;
  uint64_t pos = src->size, padding;
  lzma_ret r;
  int ret = -1;

  *combined = NULL;
  /* Streams and Stream Padding are all multiples of four bytes. */
  if (src->size % 4 != 0) {
    ad_error_set (err, EIO, "file size %" PRIu64 " is not a multiple of "
                  "four (truncated, or trailing garbage?)", src->size);
    goto out;
  }

  /* Every Stream takes at least 32 bytes, which bounds how many there
   * can be.
   */
  do {
    if (skip_stream_padding (w, &pos, &padding, err) == -1)
      goto out;
    if (pos == 0) {
      ad_error_set (err, EIO, "%s",
                    nstreams ? "stream padding at the start of the file"
                    : "no stream, the file holds only null bytes");
      goto out;
    }
    if (nstreams == streams_alloc) {
      size_t n = streams_alloc ? streams_alloc * 2 : 4;
      lzma_index **p = realloc (streams, n * sizeof *p);
      if (p == NULL) {
        ad_error_set (err, ENOMEM, "realloc: %m");
        goto out;
      }
      streams = p;
      streams_alloc = n;
    }
    if (parse_stream (w, &pos, padding, &index, err) == -1)
      goto out;
    streams[nstreams++] = index;
  } while (pos > 0);

  /* Join the indexes first to last, so that each lzma_index_cat only
   * walks the one Stream it appends.
   */
  *combined = streams[--nstreams];
  while (nstreams > 0) {
    r = lzma_index_cat (*combined, streams[nstreams - 1], NULL);
    if (r != LZMA_OK) {
      ad_error_set (err, ad_lzma_errno (r), "cannot join the index of the "
                    "stream at offset %" PRIu64 " with the streams before "
                    "it: %s", (uint64_t) lzma_index_file_size (*combined),
                    ad_lzma_ret_string (r));
      goto out;
    }
    nstreams--;
  }

  /* Walking back from the end reached offset 0 exactly, so the Streams
   * tile the file; check it anyway since the frames trust it.
   */
  if (lzma_index_file_size (*combined) != src->size) {
    ad_error_set (err, EIO, "streams add up to %" PRIu64 " bytes, but the "
                  "file is %" PRIu64, (uint64_t) lzma_index_file_size
                  (*combined), src->size);
    goto out;
  }
  ret = 0;

 out:
  for (i = 0; i < nstreams; i++)
    lzma_index_end (streams[i], NULL);
  free (streams);
  return ret;
}

static int
xz_open (struct ad_index *idx, struct ad_source *src, struct ad_error *err)
{
  struct window w = { .src = src };
  lzma_index *combined = NULL;
  lzma_index_iter iter;
  int ret = -1;

  idx->index_from = "the stream indexes";
  if (read_indexes (&w, src, &combined, err) == -1)
    goto out;
  idx->size = lzma_index_uncompressed_size (combined);

  lzma_index_iter_init (&iter, combined);
  while (!lzma_index_iter_next (&iter, LZMA_INDEX_ITER_NONEMPTY_BLOCK)) {
    struct ad_frame frame = {
      .uoff = iter.block.uncompressed_file_offset,
      .usize = iter.block.uncompressed_size,
      .coff = iter.block.compressed_file_offset,
      .csize = iter.block.total_size,
      .aux = iter.block.unpadded_size,
      .aux32 = iter.stream.flags->check,
    };

    if (frame.coff > src->size || frame.csize > src->size - frame.coff) {
      ad_error_set (err, EIO, "block %" PRIu64 " of stream %" PRIu64
                    " (%" PRIu64 " bytes at offset %" PRIu64 ") extends "
                    "past the end of the file",
                    (uint64_t) iter.block.number_in_stream,
                    (uint64_t) iter.stream.number, frame.csize, frame.coff);
      goto out;
    }
    if (ad_index_append_frame (idx, &frame, err) == -1)
      goto out;
  }
  ret = 0;

 out:
  if (combined)
    lzma_index_end (combined, NULL);
  free (w.buf);
  return ret;
}

/* The decoder of one Block. */
struct xz_decoder {
  struct ad_lzma_frame f;       /* First: the start hook gets it. */
  lzma_block block;
  lzma_filter filters[LZMA_FILTERS_MAX + 1];
};

static void
free_filters (lzma_filter *filters)
{
  size_t i;

  for (i = 0; i <= LZMA_FILTERS_MAX; i++) {
    free (filters[i].options);
    filters[i].options = NULL;
    filters[i].id = LZMA_VLI_UNKNOWN;
  }
}

/* Block Header: at the start of the first chunk.  Sets up the block
 * decoder with the sizes from the Index.
 */
static int
parse_block_header (struct ad_lzma_frame *f, struct ad_error *err)
{
  struct xz_decoder *d = (struct xz_decoder *) f;
  const unsigned char *p = f->strm.next_in;
  size_t avail = f->strm.avail_in;
  uint64_t declared_usize;
  uint64_t memusage;
  lzma_ret r;
  size_t i;

  if (p[0] == 0)
    return ad_error_set (err, EIO, "found an index indicator where a block "
                         "header should be");
  d->block.version = 1;
  d->block.check = (lzma_check) f->frame.aux32;
  d->block.header_size = lzma_block_header_size_decode (p[0]);
  d->block.filters = d->filters;
  if (d->block.header_size > avail)
    return ad_error_set (err, EIO, "block header (%" PRIu32 " bytes) is "
                         "larger than the block (%zu bytes)",
                         d->block.header_size, avail);
  r = lzma_block_header_decode (&d->block, NULL, p);
  if (r == LZMA_DATA_ERROR)
    return ad_error_set (err, EIO, "block header is corrupt (CRC32 "
                         "mismatch or invalid fields)");
  if (r != LZMA_OK)
    return ad_error_set (err, ad_lzma_errno (r), "block header: %s",
                         ad_lzma_ret_string (r));

  /* The sizes the header may declare must agree with the Index. */
  declared_usize = d->block.uncompressed_size;
  if (declared_usize != LZMA_VLI_UNKNOWN && declared_usize != f->frame.usize)
    return ad_error_set (err, EIO, "block header declares %" PRIu64
                         " uncompressed bytes, the index %" PRIu64,
                         declared_usize, f->frame.usize);
  r = lzma_block_compressed_size (&d->block, f->frame.aux);
  if (r != LZMA_OK)
    return ad_error_set (err, EIO, "block header disagrees with the "
                         "index's unpadded size %" PRIu64 ": %s",
                         f->frame.aux, ad_lzma_ret_string (r));
  d->block.uncompressed_size = f->frame.usize;

  /* A valid Block never refers further back than its own output, so a
   * dictionary larger than the Block's uncompressed size is never used:
   * shrink it, which bounds the memory a hostile header can ask for
   * without changing the result.  Then refuse what is still too large.
   */
  for (i = 0; i < LZMA_FILTERS_MAX && d->filters[i].id != LZMA_VLI_UNKNOWN;
       i++) {
    if (d->filters[i].id == LZMA_FILTER_LZMA2 && d->filters[i].options) {
      lzma_options_lzma *opt = d->filters[i].options;
      if (opt->dict_size > f->frame.usize)
        opt->dict_size = f->frame.usize < LZMA_DICT_SIZE_MIN
          ? LZMA_DICT_SIZE_MIN : f->frame.usize;
      if (opt->dict_size > MAX_DICT_SIZE)
        return ad_error_set (err, EIO, "block needs a %" PRIu32 "-byte "
                             "dictionary, more than the %llu we allow",
                             opt->dict_size, MAX_DICT_SIZE);
    }
  }
  memusage = lzma_raw_decoder_memusage (d->filters);
  if (memusage == UINT64_MAX)
    return ad_error_set (err, EIO, "block header has an unsupported filter "
                         "chain");
  if (memusage > MAX_DECODER_MEM)
    return ad_error_set (err, EIO, "block needs %" PRIu64 " bytes of "
                         "decoder memory, more than the %llu we allow",
                         memusage, MAX_DECODER_MEM);

  r = lzma_block_decoder (&f->strm, &d->block);
  if (r != LZMA_OK)
    return ad_error_set (err, ad_lzma_errno (r), "cannot start the block "
                         "decoder: %s", ad_lzma_ret_string (r));
  f->strm_init = true;
  f->strm.next_in += d->block.header_size;
  f->strm.avail_in -= d->block.header_size;
  return 0;
}

static int
xz_decoder_new (struct ad_index *idx __attribute__ ((unused)),
                const struct ad_frame *frame,
                size_t frame_no __attribute__ ((unused)),
                void **decoder, struct ad_error *err)
{
  struct xz_decoder *d = calloc (1, sizeof *d);
  size_t i;

  if (d == NULL)
    return ad_error_set (err, ENOMEM, "calloc: %m");
  ad_lzma_frame_init (&d->f, frame, "block", "its sizes or integrity check",
                      parse_block_header);
  for (i = 0; i <= LZMA_FILTERS_MAX; i++) {
    d->filters[i].id = LZMA_VLI_UNKNOWN;
    d->filters[i].options = NULL;
  }
  *decoder = d;
  return 0;
}

static void
xz_decoder_free (void *decoder)
{
  struct xz_decoder *d = decoder;

  if (d == NULL)
    return;
  ad_lzma_frame_end (&d->f);
  free_filters (d->filters);
  free (d);
}

static ssize_t
xz_decoder_read (void *decoder, struct ad_source *src, void *out,
                 size_t count, struct ad_error *err)
{
  struct xz_decoder *d = decoder;

  return ad_lzma_frame_read (&d->f, src, out, count, err);
}

const struct ad_format_ops ad_xz_ops = {
  .format = AD_FORMAT_XZ,
  .name = "xz",
  .open = xz_open,
  .advance = NULL,
  .decoder_new = xz_decoder_new,
  .decoder_read = xz_decoder_read,
  .decoder_free = xz_decoder_free,
  .close = NULL,
  /* A block decodes from its own bytes (Block Header to Check) and its
   * entry: Unpadded Size (aux) and the stream's check type (aux32).
   */
  .frame_key = ad_frame_key_own_bytes,
};
