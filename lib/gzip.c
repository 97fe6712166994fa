/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip (RFC 1952) with random access.
 *
 * A gzip file is one or more members, each:
 *
 *   ID1 ID2 CM FLG MTIME(4) XFL OS          10 bytes: 1f 8b 08, FLG bits
 *                                           5-7 reserved (zero)
 *   [FEXTRA]   XLEN(2), then XLEN bytes of subfields SI1 SI2 LEN(2) data
 *   [FNAME]    zero-terminated (we allow at most 64 KiB)
 *   [FCOMMENT] zero-terminated (we allow at most 64 KiB)
 *   [FHCRC]    CRC16: the low 16 bits of the CRC32 of the header so far
 *   raw deflate (RFC 1951)
 *   CRC32(4) ISIZE(4)                       of the member's output; ISIZE
 *                                           is the size modulo 2^32
 *
 * Members simply follow one another (cat a.gz b.gz, bgzip).  After the
 * last member we accept zero padding up to the end of the file, as gzip
 * does, and nothing else.  All integers are little endian.
 *
 * Deflate cannot be entered in the middle, so random access needs one
 * of three shapes of index (enum gz_kind).
 *
 * GZ_BGZF (bgzip, htslib): every member carries an FEXTRA subfield
 *    SI1='B' SI2='C' LEN=2 holding BSIZE, the member size minus 1, and
 *    outputs at most 64 KiB.  If the first member has it we walk the
 *    member headers only (8 MiB sequential reads, no decoding): each
 *    member is one frame of ISIZE bytes.  If any member is not shaped
 *    so, we fall back to GZ_FULL.  Empty members (the EOF marker) are
 *    never read as frames, so the walk decodes those (a few bytes).
 *
 * GZ_LAZY: one member whose size the trailer proves.  ISIZE is only the size
 *    modulo 2^32.  A deflate stream of D bytes outputs at most 1032 * D
 *    bytes (the densest code is a 258-byte match in 2 bits: a 1-bit
 *    length code and a 1-bit distance code), so if ISIZE + 2^32 is
 *    above that bound the size is ISIZE and nothing else.  (A lower
 *    bound from "encoders never expand much" would not help: it can
 *    only rule out candidates below D, and D is far below 2^32 whenever
 *    the upper bound leaves a single candidate.)  This holds only for
 *    files of up to about 4.1 MB of compressed data; larger ones are
 *    ambiguous: they take GZ_FULL when opts.gzip_trust_isize is off
 *    (autodecomp-gzip-size=decode); by default we take ISIZE itself,
 *    the smallest candidate, and let the indexing pass catch a member
 *    of 4 GiB or more (see gz_single_member_size).  If the
 *    file ends with a zero byte we cannot tell zero padding from a
 *    trailer that ends in zeros, so GZ_FULL (this includes every image
 *    under 16 MiB, whose ISIZE ends in a zero byte: cheap to decode).
 *    We also need to know that the file is a single member, without
 *    decoding it: we scan the whole file for
 *    candidate member headers (1f 8b 08 with the reserved FLG bits
 *    zero) and trial-decode each: a real member decodes at least
 *    min (64 KiB, to its end) without error and, if it ends, matches
 *    its CRC32 and ISIZE; random bytes that look like a header fail
 *    within a few bytes.  A candidate that passes means several
 *    members (or a gzip file stored verbatim inside the data), so
 *    GZ_FULL; too many failing candidates (a hostile file) also give up
 *    to GZ_FULL, which is always correct.  Guessing wrong in the other
 *    direction cannot serve wrong bytes either: the indexing pass
 *    checks that the member ends at the end of the file with exactly
 *    the announced size (a file with trailing garbage gets a wrong
 *    size at open, and an error when a read reaches the member's end).
 *
 *    The scan reads the file in 8 MiB chunks and finds candidates with
 *    memchr; a candidate's trial input is taken from the chunk when it
 *    lies in it.  It costs one read of the compressed file (about 0.1 s
 *    for a 1 GiB image of 240 MB compressed, from the page cache).
 *
 *    Open then appends no frame.  advance runs ONE sequential inflate
 *    pass, kept in idx->priv between calls, only as far as the offset
 *    asked for, and appends one frame per span: the output between
 *    two checkpoints (see below).  Each span's decoded bytes are given
 *    to emit.  The member's CRC32 and ISIZE can only be checked when
 *    the pass reaches the member's end, so the bytes of spans served
 *    before that were NOT yet verified against the CRC32 (a corrupted
 *    stored block or literal can be served); the last frame is
 *    appended only after the check, and a mismatch is an error from
 *    advance, so reads that reach the end of the image fail.
 *
 * GZ_FULL: everything else (several members, ambiguous sizes): open runs the
 *    same pass to the end, without emitting, verifying every member's
 *    CRC32 and ISIZE, and then knows the size.  Members that end before
 *    a checkpoint are whole frames; larger members are cut into spans.
 *
 * Checkpoints (the idea of zlib's examples/zran.c, with ISA-L's state
 * in place of zlib's window).  The pass inflates with ISA-L's
 * isal_inflate, whose output buffer ends exactly at each span's end:
 * every gzip_span bytes of output.  There it copies the inflate state
 * (see snap_size: the bit buffer, the current block's Huffman tables,
 * the last 32 KiB of output, about 53 KiB in all) and records the file
 * offset where the state's input goes on; that is the next span's
 * checkpoint.  A span is decoded again later by copying the snapshot
 * back into a fresh state and feeding it the file from that offset.
 * (zlib can resume only at a deflate block boundary, from a bit offset
 * and a window, and ISA-L cannot stop at one, so the checkpoints are
 * ISA-L's own; a span is then exactly gzip_span bytes.)  The indexing
 * pass also records each span's CRC32, and the span decoder checks its
 * output against it; spans combine (crc32_combine) to the member's
 * CRC32, which the pass verified against the trailer, so once a member
 * is indexed every read of it is verified, including that a snapshot
 * put back resumes exactly.  A whole-member frame is decoded from its
 * header and its own trailer is checked.  A snapshot never leaves the
 * process: the persisted index keeps a restorable point for each span
 * instead (see "Restorable points" in gzip-points.c).
 *
 * Frames.  A whole member (BGZF, or any member without checkpoints)
 * has aux = AUX_WHOLE and [coff, coff + csize) from its header to the
 * end of its trailer.  A span has aux = its checkpoint's number in
 * priv->ckpts, coff = the checkpoint's input offset (the member header
 * for a member's first span), and csize up to the next checkpoint's
 * input offset plus SPAN_INPUT_SLACK bytes (see pass_checkpoint), or
 * to the end of the trailer.  Empty frames are not appended.
 *
 * Memory: every checkpoint keeps its snapshot, compressed with zstd
 * (53 KiB on average as a state, SNAP_MAX = 85 KiB at most; about
 * 10 KiB compressed on the bench image), 1% of the output at the
 * default 1 MiB span.  To bound it against files that expand enormously, a sizing
 * pass that holds more than MAX_SNAP_BYTES (1 GiB) of snapshots merges
 * pairs of neighbouring spans (freeing one snapshot each) and doubles
 * its span; GZ_LAZY knows its size up front and widens the span so
 * that it never needs more.  Buffers are sized by the file (min (8
 * MiB, file size)), so a tiny file costs little.
 *
 * Failures of the GZ_LAZY pass are not remembered.  After an error
 * (EIO from the plugin below, ENOMEM, or bad data) the pass is marked
 * broken and the next advance rewinds it to the start of the span it
 * was decoding: the last checkpoint (its snapshot put back, as a span
 * decoder starts) with the member's CRC32 and size so far, or the
 * start of the file while in the first span.  A transient error thus
 * costs one span of decoding again; corrupt data fails the same way at
 * every attempt.
 *
 * Libraries.  Measured on this project's 64 MiB corpus image (CPU
 * time, one core): zlib's inflate 0.215 s, ISA-L's isal_inflate
 * 0.062 s, the same stopping for a snapshot every 1 MiB 0.075 s;
 * libdeflate is about as fast as ISA-L but has no streaming interface.
 * A whole member (BGZF, or a member without checkpoints) read whole
 * into the caller's buffer, the usual case, is decoded by libdeflate
 * (libdeflate_deflate_decompress_ex, then its CRC32 and ISIZE checked
 * here); anything libdeflate refuses is decoded again by ISA-L, whose
 * error then names the problem.  The indexing pass, spans and partial
 * reads (the spill file) use ISA-L.  zlib remains for the trial
 * decodes of candidate members and crc32_combine.  CRC32s of output
 * use ISA-L's crc32_gzip_refl (0.02 CPU-s per GiB here, against 0.08
 * for libdeflate_crc32 and 0.19 for zlib's crc32), which computes the
 * same CRC, so crc32_combine applies.
 *
 * The pass of a single member writes each span into a large buffer
 * (buffer.h) that the export's emit takes into the cache as it is,
 * giving back a spare one, so the pass's output is never copied.
 *
 * This file holds the member header parser, open, advance and close;
 * ISA-L's inflate, its snapshots and input buffers are gzip-isal.c,
 * the pass is gzip-pass.c, the BGZF walk and the single-member test
 * are gzip-probe.c, the decoder is gzip-decode.c, restorable points
 * are gzip-points.c, the persisted index is gzip-persist.c, and
 * gzip-int.h has what they share.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>

#include "persist.h"
#include "seekable-formats.h"
#include "gzip-int.h"

#define PARTIAL_STEP (64 * 1024 * 1024ULL)  /* See gz_advance. */

/* Parse the member header at p (avail bytes, file offset off).  The
 * caller gives min (HEADER_MAX, bytes left in the file), so running
 * out of bytes means the file is truncated.
 */
int
gz_parse_header (const unsigned char *p, size_t avail, uint64_t off,
                 struct gz_header *h, struct ad_error *err)
{
  unsigned flg;
  size_t i = 10;

  memset (h, 0, sizeof *h);
  if (avail < 10)
    return ad_error_set (err, EIO, "member header at offset %" PRIu64
                         " is truncated", off);
  if (p[0] != 0x1f || p[1] != 0x8b)
    return ad_error_set (err, EIO, "no member at offset %" PRIu64
                         " (ID1 ID2 = %02x %02x, expected 1f 8b)",
                         off, p[0], p[1]);
  if (p[2] != 8)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 " has "
                         "compression method CM=%u, not deflate (8)",
                         off, p[2]);
  flg = p[3];
  if (flg & FLG_RESERVED)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 " has "
                         "reserved FLG bits set (FLG=0x%02x)", off, flg);

  if (flg & FLG_FEXTRA) {
    size_t xlen, j, end;

    if (avail - i < 2)
      goto truncated;
    xlen = p[i] | (p[i + 1] << 8);
    i += 2;
    if (avail - i < xlen)
      goto truncated;
    /* Subfields: SI1 SI2 LEN(2) data.  A malformed list is ignored
     * (gzip does not look inside) but is not BGZF.
     */
    end = i + xlen;
    for (j = i; end - j >= 4; ) {
      size_t slen = p[j + 2] | (p[j + 3] << 8);
      if (end - j - 4 < slen)
        break;
      if (p[j] == AD_BGZF_SI1 && p[j + 1] == AD_BGZF_SI2 &&
          slen == AD_BGZF_SLEN) {
        h->bgzf = true;
        h->bsize = p[j + 4] | (p[j + 5] << 8);
      }
      j += 4 + slen;
    }
    i = end;
  }
  if (flg & FLG_FNAME) {
    size_t n = avail - i < NAME_MAX_LEN ? avail - i : NAME_MAX_LEN;
    const unsigned char *z = memchr (p + i, 0, n);
    if (z == NULL) {
      if (n < NAME_MAX_LEN)
        goto truncated;
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": FNAME "
                           "is longer than %d bytes", off, NAME_MAX_LEN);
    }
    i += z - (p + i) + 1;
  }
  if (flg & FLG_FCOMMENT) {
    size_t n = avail - i < NAME_MAX_LEN ? avail - i : NAME_MAX_LEN;
    const unsigned char *z = memchr (p + i, 0, n);
    if (z == NULL) {
      if (n < NAME_MAX_LEN)
        goto truncated;
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": "
                           "FCOMMENT is longer than %d bytes",
                           off, NAME_MAX_LEN);
    }
    i += z - (p + i) + 1;
  }
  if (flg & FLG_FHCRC) {
    unsigned want, got;

    if (avail - i < 2)
      goto truncated;
    want = p[i] | (p[i + 1] << 8);
    got = crc32 (0, p, i) & 0xffff;
    if (want != got)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": header "
                           "CRC16 mismatch (FHCRC says %04x, header has "
                           "%04x)", off, want, got);
    i += 2;
  }
  h->len = i;
  return 0;

 truncated:
  return ad_error_set (err, EIO, "member header at offset %" PRIu64
                       " is truncated", off);
}

static int
gz_open (struct ad_index *idx, struct ad_source *src, struct ad_error *err)
{
  struct gz_priv *priv;
  struct gz_header h;
  unsigned char *buf = NULL;
  uint64_t span = gz_pass_span (idx, 0);
  uint64_t size = 0;
  size_t n;
  int r;

  priv = calloc (1, sizeof *priv);
  if (priv == NULL)
    return ad_error_set (err, ENOMEM, "calloc: %m");
  pthread_mutex_init (&priv->lock, NULL);
  idx->priv = priv;

  if (src->size < MEMBER_MIN)
    return ad_error_set (err, EIO, "the file (%" PRIu64 " bytes) is too "
                         "short for a member (at least %d bytes)",
                         src->size, MEMBER_MIN);
  n = src->size < AD_WINDOW_CHUNK ? src->size : AD_WINDOW_CHUNK;
  buf = malloc (n);
  if (buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (ad_source_pread (src, buf, n, 0, err) == -1)
    goto fail;
  if (gz_parse_header (buf, n < HEADER_MAX ? n : HEADER_MAX, 0, &h, err) == -1)
    goto fail;

  if (h.bgzf) {
    r = gz_bgzf_index (idx, priv, src, buf, n, err);
    if (r == -1)
      goto fail;
    if (r == 1) {
      idx->index_from = "BGZF member headers";
      free (buf);
      return 0;
    }
  }
  else {
    r = gz_single_member_size (src, buf, n, &h, idx->opts.gzip_trust_isize,
                               idx->opts.size_at_connect, &size, err);
    if (r == -1)
      goto fail;
    if (r == 1) {
      span = gz_pass_span (idx, size);
      priv->kind = GZ_LAZY;
      idx->index_from = "the trailer, then checkpoints made as a lazy "
        "pass reaches them";
      idx->size = size;
      priv->pass = gz_pass_new (idx, src, true, span, buf, n, err);
      return priv->pass ? 0 : -1;
    }
  }
  idx->index_from = "a pass over the whole file at open";
  return gz_sizing_pass (idx, priv, span, src, buf, n, err);

 fail:
  free (buf);
  return -1;
}

/* GZ_LAZY extends the index as reads need it.  With a persisted index,
 * the index is written again each time the pass has gone
 * max (PARTIAL_STEP, a tenth of the image) further than the file
 * covers, and when it completes (see "Partial indexes" in
 * gzip-persist.c).
 */
static int
gz_advance (struct ad_index *idx, struct ad_source *src, uint64_t offset,
            ad_emit_fn *emit, void *emit_opaque, struct ad_error *err)
{
  struct gz_priv *priv = idx->priv;
  struct gz_pass *P;
  uint64_t step = idx->size / 10 > PARTIAL_STEP ? idx->size / 10
    : PARTIAL_STEP;

  if (priv->resume && gz_pass_resume (idx, priv, src, err) == -1)
    return -1;
  P = priv->pass;
  if (P == NULL)
    return 0;
  /* A failure is not remembered: go back to the last checkpoint. */
  if (P->broken && gz_pass_rewind (priv, P, src, err) == -1)
    return -1;
  while (priv->appended <= offset) {
    int r = gz_pass_step (priv, idx, P, src, emit, emit_opaque, err);
    if (r == -1) {
      P->broken = true;
      return -1;
    }
    if (r == 0)
      break;
    if (P->state == PS_DATA && idx->opts.index_path &&
        priv->appended - priv->saved_upto >= step) {
      ad_index_save (idx, src);
      priv->saved_upto = priv->appended;
    }
  }
  if (priv->pass->state == PS_DONE) {
    gz_pass_free (priv->pass);
    priv->pass = NULL;
    /* The index is complete: keep it (if asked to). */
    ad_index_save (idx, src);
  }
  return 0;
}

static void
gz_close (struct ad_index *idx)
{
  struct gz_priv *priv = idx->priv;
  size_t i;

  if (priv == NULL)
    return;
  gz_pass_free (priv->pass);
  for (i = 0; i < priv->nckpts; i++) {
    free (priv->ckpts[i].snap);
    free (priv->ckpts[i].win);
  }
  free (priv->ckpts);
  gz_lazy_points_free (priv);
  free (priv->coll);
  for (i = 0; i < priv->nlds; i++)
    libdeflate_free_decompressor (priv->lds[i]);
  pthread_mutex_destroy (&priv->lock);
  free (priv);
  idx->priv = NULL;
}

/* A whole member (BGZF, or one of many) decodes from its own bytes,
 * which carry its CRC32 and size; a span from a checkpoint needs the
 * checkpoint's window.
 */
static bool
gz_frame_key (struct ad_index *idx __attribute__ ((unused)),
              const struct ad_frame *frame,
              size_t frame_no __attribute__ ((unused)),
              uint64_t key[2] __attribute__ ((unused)))
{
  return frame->aux == AUX_WHOLE;
}

const struct ad_format_ops ad_gzip_ops = {
  .format = AD_FORMAT_GZIP,
  .name = "gzip",
  .open = gz_open,
  .advance = gz_advance,
  .decoder_new = gz_decoder_new,
  .decoder_read = gz_decoder_read,
  .decoder_free = gz_decoder_free,
  .save = gz_save,
  .load = gz_load,
  .close = gz_close,
  .frame_key = gz_frame_key,
};
