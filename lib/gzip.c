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
 * of three shapes of index.
 *
 * 1. BGZF (bgzip, htslib): every member carries an FEXTRA subfield
 *    SI1='B' SI2='C' LEN=2 holding BSIZE, the member size minus 1, and
 *    outputs at most 64 KiB.  If the first member has it we walk the
 *    member headers only (8 MiB sequential reads, no decoding): each
 *    member is one frame of ISIZE bytes.  If any member is not shaped
 *    so, we fall back to shape 3.  Empty members (the EOF marker) are
 *    never read as frames, so the walk decodes those (a few bytes).
 *
 * 2. One member whose size the trailer proves.  ISIZE is only the size
 *    modulo 2^32.  A deflate stream of D bytes outputs at most 1032 * D
 *    bytes (the densest code is a 258-byte match in 2 bits: a 1-bit
 *    length code and a 1-bit distance code), so if ISIZE + 2^32 is
 *    above that bound the size is ISIZE and nothing else.  (A lower
 *    bound from "encoders never expand much" would not help: it can
 *    only rule out candidates below D, and D is far below 2^32 whenever
 *    the upper bound leaves a single candidate.)  This holds only for
 *    files of up to about 4.1 MB of compressed data; larger ones are
 *    ambiguous: they take shape 3 when opts.gzip_trust_isize is off
 *    (autodecomp-gzip-size=decode); by default we take ISIZE itself,
 *    the smallest candidate, and let the indexing pass catch a member
 *    of 4 GiB or more (see single_member_size).  If the
 *    file ends with a zero byte we cannot tell zero padding from a
 *    trailer that ends in zeros, so shape 3 (this includes every image
 *    under 16 MiB, whose ISIZE ends in a zero byte: cheap to decode).
 *    We also need to know that the file is a single member, without
 *    decoding it: we scan the whole file for
 *    candidate member headers (1f 8b 08 with the reserved FLG bits
 *    zero) and trial-decode each: a real member decodes at least
 *    min (64 KiB, to its end) without error and, if it ends, matches
 *    its CRC32 and ISIZE; random bytes that look like a header fail
 *    within a few bytes.  A candidate that passes means several
 *    members (or a gzip file stored verbatim inside the data), so shape
 *    3; too many failing candidates (a hostile file) also give up to
 *    shape 3, which is always correct.  Guessing wrong in the other
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
 * 3. Everything else (several members, ambiguous sizes): open runs the
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
 * instead (see "Restorable points" below).
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
 * its span; shape 2 knows its size up front and widens the span so
 * that it never needs more.  Buffers are sized by the file (min (8
 * MiB, file size)), so a tiny file costs little.
 *
 * Failures of the shape 2 pass are not remembered.  After an error
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
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>

#include <zlib.h>
#include <libdeflate.h>
#include <isa-l/igzip_lib.h>
#include <isa-l/crc.h>
#include <zstd.h>

#include "buffer.h"
#include "format.h"
#include "persist.h"
#include "seekable-formats.h"

#define CHUNK (8 * 1024 * 1024)         /* Sequential reads. */
#define ONE_READ_MAX (16 * 1024 * 1024) /* A frame read in one go. */
#define NAME_MAX_LEN 65536              /* FNAME, FCOMMENT incl. NUL. */
#define HEADER_MAX (10 + 2 + 65535 + 2 * NAME_MAX_LEN + 2)
#define MEMBER_MIN 20                   /* 10 + 2 (empty block) + 8. */
#define MAX_RATIO 1032                  /* Deflate's output per byte. */
#define TRIAL_OUTPUT (64 * 1024)
#define TRIAL_INPUT (1024 * 1024)       /* Read per candidate member. */
#define TRIAL_MAX_FAILURES 16
#ifndef MAX_SNAP_BYTES                  /* (The fuzz build lowers it.) */
#define MAX_SNAP_BYTES (1ULL << 30)     /* Checkpoint state kept, total. */
#endif
#define LAZY_SNAP_BYTES (1ULL << 30)    /* The same for shape 2 (which the
                                           fuzz build does not lower). */
#define SNAP_HEAD offsetof (struct inflate_state, tmp_out_buffer)
#define SNAP_MAX sizeof (struct inflate_state)
#define SPAN_INPUT_SLACK 8              /* See pass_checkpoint. */
#define SNAP_ZSTD_LEVEL 1               /* See snap_take. */
#define PASS_OUTPUT (1024 * 1024)       /* Output buffer, not kept. */
#define INFLATE_MAX (1U << 30)          /* Bytes per inflate call. */
#define TOTAL_OUT_HIGH (1U << 31)       /* See isal_call. */
#define TOTAL_OUT_LOW (1U << 30)
#define WINDOW_SIZE 32768               /* Deflate's history. */
#define LD_POOL_MAX 16                  /* Idle libdeflate decoders kept. */
#define POINT_OUT (256 * 1024)          /* See scan_to. */
#define POINT_SCRATCH (64 * 1024)       /* At least WINDOW_SIZE. */
#define WIN_ZSTD_LEVEL 3
#define PARTIAL_STEP (64 * 1024 * 1024ULL)  /* See gz_advance. */

#define FLG_FTEXT 1
#define FLG_FHCRC 2
#define FLG_FEXTRA 4
#define FLG_FNAME 8
#define FLG_FCOMMENT 16
#define FLG_RESERVED 0xe0

/* Frame aux: a whole member (header to trailer), no checkpoint. */
#define AUX_WHOLE UINT64_MAX
#define NO_CKPT SIZE_MAX

/* A checkpoint: where a span starts.  Either a member header
 * (at_header), or a snapshot of the inflate state (see snap_take) with
 * the file offset where its input goes on, or a restorable point
 * (is_point, from a persisted index: see "Restorable points" below)
 * whose block boundary is at bit bits of byte coff.  span_crc is the
 * CRC32 of the span's output, set when the span is complete.
 */
struct gz_ckpt {
  uint64_t coff;                /* Header, next input byte, or point. */
  unsigned char *snap;          /* zstd-compressed. */
  uint32_t snap_len;            /* Compressed, */
  uint32_t snap_raw;            /* and as a state. */
  uint32_t span_crc;
  bool at_header;
  bool is_point;
  uint8_t bits;                 /* Point: bits of byte coff before it. */
  uint64_t skip;                /* Point: output from it to the span. */
  unsigned char *win;           /* Point: the window, zstd-compressed, */
  uint32_t win_len, win_raw;    /* its size so, and as output. */
};

/* Input for an inflate state: a buffer holding the file's bytes
 * [base, base + len), read from the source up to end.  The state's
 * next_in and avail_in point into it.
 */
struct gz_input {
  unsigned char *buf;
  size_t alloc;
  uint64_t base;                /* File offset of buf[0]. */
  uint64_t rpos;                /* Next file offset to read. */
  uint64_t end;                 /* Read no further. */
};

/* The sequential inflate pass (shapes 2 and 3). */
enum pass_state { PS_HEADER, PS_DATA, PS_DONE };

struct gz_pass {
  bool lazy;                    /* Shape 2: append frames, one member. */
  uint64_t limit;               /* Shape 2: the size from the trailer. */
  uint64_t span;                /* Output per span. */

  struct inflate_state *st;
  struct gz_input in;           /* min (CHUNK, file size) bytes. */
  ZSTD_CCtx *cctx;              /* Compresses snapshots, */
  unsigned char *zbuf;          /* into this (snap_take). */

  unsigned char *out;           /* Output: the span (keep) or a ring. */
  size_t out_alloc, out_pos;
  bool keep;                    /* Keep the span's bytes for emit. */
  unsigned char past;           /* Where a byte past the size goes. */

  enum pass_state state;
  uint64_t members;
  uint64_t member_coff;
  uint64_t member_usize;
  uint32_t member_crc;          /* Of the spans before this one. */

  uint64_t uoff;                /* Output so far. */
  uint64_t span_uoff, span_len;
  uint32_t span_crc;
  size_t span_ckpt;             /* NO_CKPT: the span starts a member. */

  /* Shape 2: where the current span started, to resume there after a
   * failure (see pass_rewind).  resume_ckpt is NO_CKPT while the pass
   * is in its first span (resume from the start of the file).
   */
  bool broken;                  /* Failed: rewind before going on. */
  size_t resume_ckpt;
  uint64_t resume_uoff;
  uint32_t resume_member_crc;
  uint64_t resume_member_usize;
};

enum gz_kind { GZ_BGZF, GZ_LAZY, GZ_FULL };

struct pt_scan;

struct gz_priv {
  enum gz_kind kind;
  pthread_mutex_t lock;         /* Protects ckpts, nckpts, ckpts_alloc, */
                                /* lds, nlds. */
  struct libdeflate_decompressor *lds[LD_POOL_MAX];  /* Idle ones. */
  size_t nlds;
  struct gz_ckpt *ckpts;
  size_t nckpts, ckpts_alloc;
  uint64_t snap_bytes;          /* Held by checkpoints. */

  struct gz_pass *pass;         /* Shape 2 while indexing. */
  uint64_t appended;            /* Shape 2: output covered by frames. */

  struct ad_frame *coll;        /* Frames collected before appending. */
  size_t ncoll, coll_alloc;

  struct ad_error save_err;     /* Why gz_save failed. */

  /* Shape 2 with a persisted index (see "Partial indexes" below). */
  struct gz_ckpt *pts;          /* The points found so far, by */
  size_t pts_alloc;             /* checkpoint number, */
  struct pt_scan *scan;         /* by this scan, which goes on */
  size_t scan_next;             /* at this frame. */
  uint64_t saved_upto;          /* Output the file written covers. */
  bool resume;                  /* Loaded partial: no pass yet. */
  uint32_t loaded_crc;          /* Its member CRC32 so far. */
};

/* A parsed member header. */
struct gz_header {
  size_t len;                   /* Bytes up to the deflate data. */
  bool bgzf;                    /* Has the BC subfield. */
  uint32_t bsize;
};

/* Parse the member header at p (avail bytes, file offset off).  The
 * caller gives min (HEADER_MAX, bytes left in the file), so running
 * out of bytes means the file is truncated.
 */
static int
parse_header (const unsigned char *p, size_t avail, uint64_t off,
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

/* ISA-L's inflate.
 *
 * isal_inflate keeps its whole state in one public struct with no
 * pointers into itself: the bit buffer (read_in), the current block's
 * Huffman tables and state, a match or literals cut short by the end
 * of the output buffer, and in tmp_out_buffer the history (at least
 * the last 32 KiB of output once there is that much, and any output
 * decoded but not yet delivered, tmp_out_valid - tmp_out_processed).
 * The struct up to tmp_out_buffer plus tmp_out_valid bytes of it is
 * therefore the decoder at any point between two calls (53 KiB on
 * average, at most SNAP_MAX), and copying that back into a struct and
 * pointing next_in at the same input offset goes on from there.  A
 * snapshot only ever lives in this process's memory, so it always
 * meets the library build that made it.
 */

static void
isal_start (struct inflate_state *st)
{
  isal_inflate_init (st);
  st->crc_flag = ISAL_DEFLATE;  /* Raw deflate: we check CRCs ourselves. */
}

/* ISA-L's portable C decoder checks a match's distance against
 * total_out (plus the dictionary), a 32-bit count that wraps after
 * 4 GiB, when a valid distance could then be refused.  (The assembly
 * decoder chosen on this project's test machine does not: a 4.3 GB
 * member of 20000-byte repeats decodes either way.)  total_out is only
 * a count to it (we use ISAL_DEFLATE: no trailer check), so keep it in
 * a range that is always above the 32 KiB window and never wraps
 * within one call.
 */
static int
isal_call (struct inflate_state *st)
{
  if (st->total_out > TOTAL_OUT_HIGH)
    st->total_out = TOTAL_OUT_LOW;
  return isal_inflate (st);
}

static const char *
isal_msg (int r)
{
  switch (r) {
  case ISAL_INVALID_BLOCK: return "invalid block";
  case ISAL_INVALID_SYMBOL: return "invalid code";
  case ISAL_INVALID_LOOKBACK: return "distance too far back";
  default: return "inflate error";
  }
}

static size_t
snap_size (const struct inflate_state *st)
{
  return SNAP_HEAD + st->tmp_out_valid;
}

/* Snapshots are kept compressed (zstd level 1): the bench image's
 * 54 KiB on average become 10 KiB, for about 0.09 ms each, a few
 * percent of the pass; putting one back costs less than that.
 */
static int
snap_take (struct gz_pass *P, struct gz_ckpt *ck, struct ad_error *err)
{
  size_t raw = snap_size (P->st), bound = ZSTD_compressBound (SNAP_MAX), n;

  if (P->cctx == NULL && (P->cctx = ZSTD_createCCtx ()) == NULL)
    return ad_error_set (err, ENOMEM, "ZSTD_createCCtx failed");
  if (P->zbuf == NULL && (P->zbuf = malloc (bound)) == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  n = ZSTD_compressCCtx (P->cctx, P->zbuf, bound, P->st, raw,
                         SNAP_ZSTD_LEVEL);
  if (ZSTD_isError (n))
    return ad_error_set (err, EIO, "compressing a checkpoint: %s",
                         ZSTD_getErrorName (n));
  ck->snap = malloc (n);
  if (ck->snap == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  memcpy (ck->snap, P->zbuf, n);
  ck->snap_len = n;
  ck->snap_raw = raw;
  return 0;
}

/* Put a snapshot back into st.  Only snapshots this file took reach
 * here; the checks guard the copy against a damaged checkpoint table.
 */
static int
snap_restore (struct inflate_state *st, const struct gz_ckpt *ck,
              struct ad_error *err)
{
  size_t n;

  if (ck->snap == NULL || ck->snap_raw < SNAP_HEAD ||
      ck->snap_raw > SNAP_MAX)
    return ad_error_set (err, EIO, "checkpoint at offset %" PRIu64
                         " has no usable inflate state", ck->coff);
  n = ZSTD_decompress (st, SNAP_MAX, ck->snap, ck->snap_len);
  if (ZSTD_isError (n) || n != ck->snap_raw)
    return ad_error_set (err, EIO, "checkpoint at offset %" PRIu64
                         ": its inflate state does not decompress",
                         ck->coff);
  if (st->tmp_out_valid < 0 ||
      (size_t) st->tmp_out_valid != n - SNAP_HEAD ||
      st->tmp_out_processed < 0 ||
      st->tmp_out_processed > st->tmp_out_valid)
    return ad_error_set (err, EIO, "checkpoint at offset %" PRIu64
                         " has an inconsistent inflate state", ck->coff);
  st->next_in = NULL;
  st->avail_in = 0;
  st->next_out = NULL;
  st->avail_out = 0;
  return 0;
}

/* Input buffers. */

static uint64_t
input_pos (const struct gz_input *in, const struct inflate_state *st)
{
  return in->base + (st->next_in - in->buf);
}

/* Make at least want bytes available at next_in, or all that is left
 * before in->end.
 */
static int
input_fill (struct gz_input *in, struct inflate_state *st,
            struct ad_source *src, size_t want, struct ad_error *err)
{
  size_t n;

  if (st->avail_in >= want || in->rpos >= in->end)
    return 0;
  in->base = input_pos (in, st);
  if (st->avail_in > 0)
    memmove (in->buf, st->next_in, st->avail_in);
  st->next_in = in->buf;
  n = in->alloc - st->avail_in;
  if (n > in->end - in->rpos)
    n = in->end - in->rpos;
  if (ad_source_pread (src, in->buf + st->avail_in, n, in->rpos, err) == -1)
    return -1;
  in->rpos += n;
  st->avail_in += n;
  return 0;
}

/* Go back (or on) to file offset pos: within the buffer if it still
 * holds it, else by reading from there at the next fill.
 */
static void
input_seek (struct gz_input *in, struct inflate_state *st, uint64_t pos)
{
  uint64_t have_end = input_pos (in, st) + st->avail_in;

  if (pos >= in->base && pos <= have_end) {
    st->next_in = in->buf + (pos - in->base);
    st->avail_in = have_end - pos;
  }
  else {
    in->base = in->rpos = pos;
    st->next_in = in->buf;
    st->avail_in = 0;
  }
}

/* Where the deflate data that st finished (ISAL_BLOCK_FINISH) ends: the
 * state reads ahead up to 8 bytes into its bit buffer, so the first
 * byte after the stream is read_in_length / 8 bytes before next_in.
 */
static uint64_t
input_stream_end (const struct gz_input *in, const struct inflate_state *st)
{
  return input_pos (in, st) - st->read_in_length / 8;
}

/* Checkpoints. */

static int
ckpt_add (struct gz_priv *priv, const struct gz_ckpt *ck, size_t *i,
          struct ad_error *err)
{
  int r = 0;

  pthread_mutex_lock (&priv->lock);
  if (priv->nckpts == priv->ckpts_alloc) {
    size_t n = priv->ckpts_alloc ? priv->ckpts_alloc * 2 : 64;
    struct gz_ckpt *p = realloc (priv->ckpts, n * sizeof *p);
    if (p == NULL) {
      r = ad_error_set (err, ENOMEM, "realloc: %m");
      goto out;
    }
    priv->ckpts = p;
    priv->ckpts_alloc = n;
  }
  *i = priv->nckpts;
  priv->ckpts[priv->nckpts++] = *ck;
  priv->snap_bytes += ck->snap_len;
 out:
  pthread_mutex_unlock (&priv->lock);
  return r;
}

static void
ckpt_set_crc (struct gz_priv *priv, size_t i, uint32_t crc)
{
  pthread_mutex_lock (&priv->lock);
  priv->ckpts[i].span_crc = crc;
  pthread_mutex_unlock (&priv->lock);
}

/* Collected frames (shapes 1 and 3 know the size only at the end). */

static int
coll_push (struct gz_priv *priv, const struct ad_frame *f,
           struct ad_error *err)
{
  if (priv->ncoll == priv->coll_alloc) {
    size_t n = priv->coll_alloc ? priv->coll_alloc * 2 : 256;
    struct ad_frame *p = realloc (priv->coll, n * sizeof *p);
    if (p == NULL)
      return ad_error_set (err, ENOMEM, "realloc: %m");
    priv->coll = p;
    priv->coll_alloc = n;
  }
  priv->coll[priv->ncoll++] = *f;
  return 0;
}

static int
coll_append_all (struct ad_index *idx, struct gz_priv *priv, uint64_t size,
                 struct ad_error *err)
{
  size_t i;

  idx->size = size;
  for (i = 0; i < priv->ncoll; i++)
    if (ad_index_append_frame (idx, &priv->coll[i], err) == -1)
      return -1;
  free (priv->coll);
  priv->coll = NULL;
  priv->ncoll = priv->coll_alloc = 0;
  return 0;
}

/* Merge pairs of neighbouring spans of the same member, freeing the
 * snapshot of the second: halves the state held by a sizing pass.
 * Only during open, before any decoder exists.
 */
static void
coll_coalesce (struct gz_priv *priv)
{
  size_t i, j = 0;
  bool merged = true;

  for (i = 0; i < priv->ncoll; i++) {
    struct ad_frame *a = j > 0 ? &priv->coll[j - 1] : NULL;
    struct ad_frame *b = &priv->coll[i];

    if (a && !merged && a->aux != AUX_WHOLE && b->aux != AUX_WHOLE &&
        !priv->ckpts[b->aux].at_header) {
      struct gz_ckpt *ca = &priv->ckpts[a->aux];
      struct gz_ckpt *cb = &priv->ckpts[b->aux];

      ca->span_crc = crc32_combine (ca->span_crc, cb->span_crc,
                                    (z_off_t) b->usize);
      a->usize += b->usize;
      a->csize = b->coff + b->csize - a->coff;
      free (cb->snap);
      cb->snap = NULL;
      priv->snap_bytes -= cb->snap_len;
      cb->snap_len = 0;
      merged = true;
    }
    else {
      priv->coll[j++] = *b;
      merged = false;
    }
  }
  priv->ncoll = j;
}

/* The pass. */

static uint64_t
pass_pos (const struct gz_pass *P)
{
  return input_pos (&P->in, P->st);
}

static int
pass_fill (struct gz_pass *P, struct ad_source *src, size_t want,
           struct ad_error *err)
{
  return input_fill (&P->in, P->st, src, want, err);
}

static void
pass_free (struct gz_pass *P)
{
  if (P == NULL)
    return;
  free (P->st);
  free (P->in.buf);
  if (P->keep)
    ad_buffer_free (P->out, P->out_alloc);
  else
    free (P->out);
  ZSTD_freeCCtx (P->cctx);
  free (P->zbuf);
  free (P);
}

/* Start a pass at the beginning of the file.  buf (n bytes, read from
 * offset 0, where n = min (CHUNK, file size)) becomes the pass's input
 * buffer, so those bytes are not read again; it is freed on error.
 * Buffers are sized by the file, so a tiny file costs little memory.
 */
static struct gz_pass *
pass_new (struct ad_index *idx, struct ad_source *src, bool lazy,
          uint64_t span, unsigned char *buf, size_t n, struct ad_error *err)
{
  struct gz_pass *P = calloc (1, sizeof *P);

  if (P == NULL) {
    free (buf);
    ad_error_set (err, ENOMEM, "calloc: %m");
    return NULL;
  }
  P->lazy = lazy;
  P->keep = lazy;
  P->limit = idx->size;
  P->span = span;
  P->in.buf = buf;
  P->in.alloc = n;
  P->in.end = src->size;
  if (lazy) {
    /* Output stops at every span's end (see pass_inflate), so a span
     * never holds more than span bytes, nor more than the image.  The
     * buffer is a large one (buffer.h), which emit may take as it is
     * (see ad_emit_fn).
     */
    P->out_alloc = span < P->limit ? span : P->limit;
    if (P->out_alloc == 0)
      P->out_alloc = 1;
    P->out = ad_buffer_alloc (P->out_alloc);
  }
  else {
    P->out_alloc = PASS_OUTPUT;
    /* A ring: any size works, a small file needs little. */
    if (n < CHUNK && n < PASS_OUTPUT / 16)
      P->out_alloc = PASS_OUTPUT / 16;
    P->out = malloc (P->out_alloc);
  }
  P->st = malloc (sizeof *P->st);
  if (P->in.buf == NULL || P->out == NULL || P->st == NULL) {
    ad_error_set (err, ENOMEM, "malloc: %m");
    pass_free (P);
    return NULL;
  }
  isal_start (P->st);
  P->st->next_in = P->in.buf;
  P->st->avail_in = n;
  P->in.rpos = n;
  P->state = PS_HEADER;
  P->resume_ckpt = NO_CKPT;
  return P;
}

/* Hand a finished frame on: shape 2 appends it and emits its bytes,
 * shape 3 collects it.
 */
static int
pass_frame (struct gz_priv *priv, struct ad_index *idx, struct gz_pass *P,
            const struct ad_frame *f, const void *data,
            ad_emit_fn *emit, void *opaque, struct ad_error *err)
{
  if (f->usize == 0)
    return 0;
  if (P->lazy) {
    if (ad_index_append_frame (idx, f, err) == -1)
      return -1;
    priv->appended += f->usize;
    if (emit && data) {
      void *buf = P->out;

      emit (opaque, idx, ad_index_nframes (idx) - 1, &buf, P->out_alloc);
      /* If emit took the buffer, the next span goes into the one it
       * gave, or a new one (pass_inflate).
       */
      P->out = buf;
    }
    return 0;
  }
  if (coll_push (priv, f, err) == -1)
    return -1;
  if (priv->snap_bytes > MAX_SNAP_BYTES) {
    coll_coalesce (priv);
    P->span *= 2;
  }
  return 0;
}

/* Only zero padding may follow the last member. */
static int
pass_skip_zeros (struct gz_pass *P, struct ad_source *src,
                 struct ad_error *err)
{
  for (;;) {
    size_t i;

    if (pass_fill (P, src, 1, err) == -1)
      return -1;
    if (P->st->avail_in == 0)
      return 0;
    for (i = 0; i < P->st->avail_in; i++)
      if (P->st->next_in[i] != 0)
        return ad_error_set (err, EIO, "unexpected data (byte 0x%02x) at "
                             "offset %" PRIu64 " after the last member "
                             "(only zero padding may follow it)",
                             P->st->next_in[i], pass_pos (P) + i);
    P->st->next_in += P->st->avail_in;
    P->st->avail_in = 0;
  }
}

/* At a member boundary: start the next member.  Returns 1 if one
 * started, 0 at the end of the file.
 */
static int
pass_member_start (struct gz_pass *P, struct ad_source *src,
                   struct ad_error *err)
{
  struct gz_header h;
  uint64_t pos;

  if (pass_fill (P, src, HEADER_MAX, err) == -1)
    return -1;
  pos = pass_pos (P);
  if (P->st->avail_in == 0)
    return 0;
  if (P->st->next_in[0] == 0) {
    if (pass_skip_zeros (P, src, err) == -1)
      return -1;
    return 0;
  }
  if (P->lazy && P->members > 0)
    return ad_error_set (err, EIO, "unexpected data at offset %" PRIu64
                         " after the member", pos);
  if (P->st->next_in[0] != 0x1f)
    return ad_error_set (err, EIO, "unexpected data (byte 0x%02x) at "
                         "offset %" PRIu64 " after the last member (only "
                         "zero padding may follow it)", P->st->next_in[0],
                         pos);
  if (parse_header (P->st->next_in, P->st->avail_in, pos, &h, err) == -1)
    return -1;
  P->st->next_in += h.len;
  P->st->avail_in -= h.len;
  isal_inflate_reset (P->st);
  P->st->crc_flag = ISAL_DEFLATE;

  P->members++;
  P->member_coff = pos;
  P->member_usize = 0;
  P->member_crc = 0;
  P->span_uoff = P->uoff;
  P->span_len = 0;
  P->span_crc = 0;
  P->span_ckpt = NO_CKPT;
  P->out_pos = 0;
  P->state = PS_DATA;
  return 1;
}

/* Fold the current span into the member's CRC32 and size. */
static void
pass_close_span (struct gz_pass *P)
{
  P->member_crc = crc32_combine (P->member_crc, P->span_crc,
                                 (z_off_t) P->span_len);
  P->member_usize += P->span_len;
}

/* The span is full: snapshot the inflate state as the next span's
 * checkpoint and hand the span on.
 *
 * The span's compressed range runs from its checkpoint to where the
 * next one's input goes on.  The state read its input ahead into its
 * bit buffer, so every bit the span needs lies before that offset;
 * SPAN_INPUT_SLACK bytes more (within the file) keep the range from
 * being empty when the state already held a whole span's bits, as a
 * small span of zeros can.
 */
static int
pass_checkpoint (struct gz_priv *priv, struct ad_index *idx,
                 struct gz_pass *P, struct ad_source *src,
                 ad_emit_fn *emit, void *opaque, struct ad_error *err)
{
  struct gz_ckpt ck;
  struct ad_frame f;
  uint64_t start, cend;
  size_t next;

  memset (&ck, 0, sizeof ck);
  ck.coff = pass_pos (P);
  if (snap_take (P, &ck, err) == -1)
    return -1;

  /* The span that ends here, starting at the member's header if it is
   * the member's first.
   */
  if (P->span_ckpt == NO_CKPT) {
    struct gz_ckpt hc;

    memset (&hc, 0, sizeof hc);
    hc.coff = P->member_coff;
    hc.at_header = true;
    hc.span_crc = P->span_crc;
    if (ckpt_add (priv, &hc, &P->span_ckpt, err) == -1) {
      free (ck.snap);
      return -1;
    }
  }
  else
    ckpt_set_crc (priv, P->span_ckpt, P->span_crc);
  if (ckpt_add (priv, &ck, &next, err) == -1) {
    free (ck.snap);
    return -1;
  }

  pthread_mutex_lock (&priv->lock);
  start = priv->ckpts[P->span_ckpt].coff;
  pthread_mutex_unlock (&priv->lock);
  cend = ck.coff + SPAN_INPUT_SLACK;
  if (cend > src->size)
    cend = src->size;
  memset (&f, 0, sizeof f);
  f.uoff = P->span_uoff;
  f.usize = P->span_len;
  f.coff = start;
  f.csize = cend - start;
  f.aux = P->span_ckpt;
  pass_close_span (P);
  if (pass_frame (priv, idx, P, &f,
                  P->keep ? P->out : NULL,
                  emit, opaque, err) == -1)
    return -1;

  P->span_uoff = P->uoff;
  P->span_len = 0;
  P->span_crc = 0;
  P->span_ckpt = next;
  P->out_pos = 0;

  /* A later failure resumes here. */
  P->resume_ckpt = next;
  P->resume_uoff = P->uoff;
  P->resume_member_crc = P->member_crc;
  P->resume_member_usize = P->member_usize;
  return 0;
}

/* The deflate stream ended: check the trailer, hand on the last span. */
static int
pass_member_end (struct gz_priv *priv, struct ad_index *idx,
                 struct gz_pass *P, struct ad_source *src,
                 ad_emit_fn *emit, void *opaque, struct ad_error *err)
{
  struct ad_frame f;
  uint64_t tpos = input_stream_end (&P->in, P->st), mend;
  uint32_t crc, isize;

  input_seek (&P->in, P->st, tpos);
  if (pass_fill (P, src, AD_GZIP_TRAILER_SIZE, err) == -1)
    return -1;
  if (P->st->avail_in < AD_GZIP_TRAILER_SIZE)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 ": the "
                         "trailer at offset %" PRIu64 " is truncated",
                         P->member_coff, tpos);
  crc = ad_le32 (P->st->next_in);
  isize = ad_le32 (P->st->next_in + 4);
  P->st->next_in += AD_GZIP_TRAILER_SIZE;
  P->st->avail_in -= AD_GZIP_TRAILER_SIZE;
  mend = tpos + AD_GZIP_TRAILER_SIZE;

  pass_close_span (P);
  if (crc != P->member_crc)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 ": CRC32 "
                         "mismatch (trailer at offset %" PRIu64 " says "
                         "%08" PRIx32 ", the data has %08" PRIx32 ")",
                         P->member_coff, tpos, crc, P->member_crc);
  if (isize != (uint32_t) P->member_usize)
    return ad_error_set (err, EIO, "member at offset %" PRIu64 ": ISIZE "
                         "mismatch (trailer at offset %" PRIu64 " says %"
                         PRIu32 ", the data has %" PRIu64 " bytes)",
                         P->member_coff, tpos, isize, P->member_usize);
  if (P->lazy) {
    /* Nothing may follow (the size came from the last bytes of the
     * file), checked before the last frame makes the index complete.
     */
    if (pass_skip_zeros (P, src, err) == -1) {
      if (!err->transient)
        ad_error_prefix (err, "the member taken to be the whole file ends "
                         "at offset %" PRIu64 " but more follows ("
                         AD_SIZE_CHECK_HINT ")", mend);
      return -1;
    }
    if (P->uoff != P->limit)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 " decodes "
                           "to %" PRIu64 " bytes, not the %" PRIu64 " its "
                           "trailer implied", P->member_coff, P->uoff,
                           P->limit);
  }

  memset (&f, 0, sizeof f);
  f.uoff = P->span_uoff;
  f.usize = P->span_len;
  if (P->span_ckpt == NO_CKPT) {
    f.coff = P->member_coff;
    f.aux = AUX_WHOLE;
  }
  else {
    ckpt_set_crc (priv, P->span_ckpt, P->span_crc);
    pthread_mutex_lock (&priv->lock);
    f.coff = priv->ckpts[P->span_ckpt].coff;
    pthread_mutex_unlock (&priv->lock);
    f.aux = P->span_ckpt;
  }
  f.csize = mend - f.coff;
  if (pass_frame (priv, idx, P, &f,
                  P->keep ? P->out : NULL,
                  emit, opaque, err) == -1)
    return -1;
  P->state = P->lazy ? PS_DONE : PS_HEADER;
  return 0;
}

/* Inflate until the current span ends (at a checkpoint or at the end of
 * the member) and its frame has been handed on.  Output stops exactly
 * at each span's end, where the checkpoint is taken.
 */
static int
pass_inflate (struct gz_priv *priv, struct ad_index *idx, struct gz_pass *P,
              struct ad_source *src, ad_emit_fn *emit, void *opaque,
              struct ad_error *err)
{
  for (;;) {
    unsigned char *dst;
    size_t room, n;
    bool probe;
    uint32_t in_before;
    int r;

    if (P->st->avail_in == 0 && pass_fill (P, src, 1, err) == -1)
      return -1;
    /* emit took the last buffer and none could be had then. */
    if (P->out == NULL && (P->out = ad_buffer_alloc (P->out_alloc)) == NULL)
      return ad_error_set (err, ENOMEM, "cannot allocate %zu bytes for the "
                           "pass's output", P->out_alloc);

    /* A kept span is full only where the image's size is reached
     * (spans end at checkpoints before that): one byte more, into
     * past, shows whether the member runs on (an error below).  A ring
     * starts again.
     */
    probe = P->keep && P->out_pos == P->out_alloc;
    if (!P->keep && P->out_pos == P->out_alloc)
      P->out_pos = 0;
    if (probe) {
      dst = &P->past;
      room = 1;
    }
    else {
      dst = P->out + P->out_pos;
      room = P->out_alloc - P->out_pos;
      if (room > INFLATE_MAX)
        room = INFLATE_MAX;
      if (P->span_len < P->span && room > P->span - P->span_len)
        room = P->span - P->span_len;
    }
    P->st->next_out = dst;
    P->st->avail_out = room;
    in_before = P->st->avail_in;

    r = isal_call (P->st);

    n = room - P->st->avail_out;
    if (n > 0) {
      P->span_crc = crc32_gzip_refl (P->span_crc, dst, n);
      if (!probe)
        P->out_pos += n;
      P->span_len += n;
      P->uoff += n;
      if (P->lazy && P->uoff > P->limit)
        return ad_error_set (err, EIO, "member at offset %" PRIu64
                             " decodes to more than the %" PRIu64 " bytes "
                             "the trailer at the end of the file implied: "
                             "either the file holds several members ("
                             AD_SIZE_CHECK_HINT ") or the image is 4 GiB "
                             "or larger (the trailer holds the size modulo "
                             "4 GiB: serve it with "
                             "autodecomp-gzip-size=decode)", P->member_coff,
                             P->limit);
    }
    if (r < 0)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": "
                           "invalid deflate data near offset %" PRIu64
                           ": %s", P->member_coff, pass_pos (P),
                           isal_msg (r));
    if (P->st->block_state == ISAL_BLOCK_FINISH)
      return pass_member_end (priv, idx, P, src, emit, opaque, err);
    /* In lazy mode the span that reaches the size the trailer gave is
     * closed only by the member's end, after its trailer is checked: a
     * checkpoint exactly there would complete the index unverified
     * (and hide a member of 4 GiB or more).
     */
    if (P->span_len >= P->span && !(P->lazy && P->uoff >= P->limit))
      return pass_checkpoint (priv, idx, P, src, emit, opaque, err);
    if (n == 0 && P->st->avail_in == in_before) {
      if (P->st->avail_in == 0 && P->in.rpos >= src->size)
        return ad_error_set (err, EIO, "member at offset %" PRIu64 " is "
                             "truncated: the file ends inside its deflate "
                             "data", P->member_coff);
      if (P->st->avail_in > 0)
        return ad_error_set (err, EIO, "member at offset %" PRIu64 ": "
                             "inflate makes no progress at offset %"
                             PRIu64, P->member_coff, pass_pos (P));
    }
  }
}

/* Advance the pass by one frame.  Returns 1 if it made progress, 0 when
 * the file is done, -1 on error.
 */
static int
pass_step (struct gz_priv *priv, struct ad_index *idx, struct gz_pass *P,
           struct ad_source *src, ad_emit_fn *emit, void *opaque,
           struct ad_error *err)
{
  int r;

  switch (P->state) {
  case PS_DONE:
    return 0;
  case PS_HEADER:
    r = pass_member_start (P, src, err);
    if (r == -1)
      return -1;
    if (r == 0) {
      P->state = PS_DONE;
      return 0;
    }
    return 1;
  case PS_DATA:
    if (pass_inflate (priv, idx, P, src, emit, opaque, err) == -1)
      return -1;
    return 1;
  }
  abort ();
}

/* Shape 2, after a failure: put the pass back at the start of the span
 * it was decoding (the last checkpoint, or the start of the file), so
 * that a transient error (EIO from the plugin below, ENOMEM) is not
 * remembered.  A definite error in the data is found again by the next
 * attempt, from the same checkpoint, so it fails the same way.
 *
 * Checkpoints added after the resume point belong to no frame (the
 * frame that would have used them was never appended): they are
 * dropped, so that repeated failures do not pile up snapshots.  If this
 * fails (the read at the checkpoint), the pass stays broken and the
 * next advance tries again.
 */
static int
pass_rewind (struct gz_priv *priv, struct gz_pass *P, struct ad_source *src,
             struct ad_error *err)
{
  struct gz_ckpt ck;
  size_t keep = P->resume_ckpt == NO_CKPT ? 0 : P->resume_ckpt + 1;

  pthread_mutex_lock (&priv->lock);
  while (priv->nckpts > keep) {
    struct gz_ckpt *c = &priv->ckpts[--priv->nckpts];
    free (c->snap);
    priv->snap_bytes -= c->snap_len;
  }
  if (keep > 0)
    ck = priv->ckpts[P->resume_ckpt];
  pthread_mutex_unlock (&priv->lock);

  P->span_len = 0;
  P->span_crc = 0;
  P->out_pos = 0;

  if (keep == 0) {
    /* From the start of the file, as pass_new left it (read again). */
    isal_start (P->st);
    P->in.base = P->in.rpos = 0;
    P->st->next_in = P->in.buf;
    P->st->avail_in = 0;
    P->members = 0;
    P->uoff = P->span_uoff = 0;
    P->member_crc = 0;
    P->member_usize = 0;
    P->span_ckpt = NO_CKPT;
    P->state = PS_HEADER;
    P->broken = false;
    return 0;
  }

  if (snap_restore (P->st, &ck, err) == -1)
    return -1;
  P->st->next_in = P->in.buf;
  P->in.base = P->in.rpos = ck.coff;
  if (pass_fill (P, src, 1, err) == -1)
    return -1;
  P->members = 1;
  P->uoff = P->span_uoff = P->resume_uoff;
  P->member_crc = P->resume_member_crc;
  P->member_usize = P->resume_member_usize;
  P->span_ckpt = P->resume_ckpt;
  P->state = PS_DATA;
  P->broken = false;
  return 0;
}

/* Shape 3: decode everything now. */
static int
sizing_pass (struct ad_index *idx, struct gz_priv *priv, uint64_t span,
             struct ad_source *src, unsigned char *buf, size_t n,
             struct ad_error *err)
{
  struct gz_pass *P;
  int r;

  priv->kind = GZ_FULL;
  P = pass_new (idx, src, false, span, buf, n, err);
  if (P == NULL)
    return -1;
  while ((r = pass_step (priv, idx, P, src, NULL, NULL, err)) == 1)
    ;
  if (r == 0 && P->members == 0)
    r = ad_error_set (err, EIO, "no member found");
  if (r == 0)
    r = coll_append_all (idx, priv, P->uoff, err);
  pass_free (P);
  return r;
}

/* Shape 2, single-member test: does a real member start at p? */
static bool
trial_member (const unsigned char *p, size_t avail, uint64_t off,
              unsigned char *out)
{
  struct ad_error scratch;
  struct gz_header h;
  z_stream zs;
  bool ok = false;
  int r;

  if (parse_header (p, avail, off, &h, &scratch) == -1)
    return false;
  memset (&zs, 0, sizeof zs);
  if (inflateInit2 (&zs, -15) != Z_OK)
    return false;
  zs.next_in = (unsigned char *) p + h.len;
  zs.avail_in = avail - h.len > INFLATE_MAX ? INFLATE_MAX : avail - h.len;
  zs.next_out = out;
  zs.avail_out = TRIAL_OUTPUT;
  r = inflate (&zs, Z_NO_FLUSH);
  if (r == Z_STREAM_END) {
    size_t n = TRIAL_OUTPUT - zs.avail_out;
    if (zs.avail_in >= AD_GZIP_TRAILER_SIZE &&
        ad_le32 (zs.next_in) == crc32 (0, out, n) &&
        ad_le32 (zs.next_in + 4) == n)
      ok = true;
  }
  else if ((r == Z_OK || r == Z_BUF_ERROR) && zs.avail_out == 0)
    ok = true;
  inflateEnd (&zs);
  return ok;
}

/* Shape 2: is the file one member whose trailer gives the size?
 * buf holds the first n bytes of the file (n = min (CHUNK, file size))
 * and is not changed.  Returns 1 (yes, *size set), 0 (no: use shape 3) or -1.
 *
 * When the trailer leaves several candidates (the file is larger than
 * about 4.1 MB) and opts.gzip_trust_isize is set (the default,
 * autodecomp-gzip-size=trailer), we take the smallest, ISIZE itself:
 * that is every image under 4 GiB.  A member of 4 GiB or more is then
 * caught by the indexing pass, which finds more output than the size
 * and fails the reads that reach the end of the image, never serving
 * a wrong byte; autodecomp-gzip-size=decode learns its size instead.
 */
static int
single_member_size (struct ad_source *src, unsigned char *buf, size_t n,
                    const struct gz_header *h, bool trust_isize,
                    bool scan_all, uint64_t *size, struct ad_error *err)
{
  uint64_t fsize = src->size, d, umax, start;
  unsigned char trailer[AD_GZIP_TRAILER_SIZE];
  uint32_t isize;
  unsigned char *out = NULL, *trial = NULL;
  uint64_t nchunks, c;
  bool buf_is_start = true;
  int failures = 0, r = 0;

  if (fsize < h->len + 2 + AD_GZIP_TRAILER_SIZE)
    return 0;
  if (ad_source_pread (src, trailer, AD_GZIP_TRAILER_SIZE,
                       fsize - AD_GZIP_TRAILER_SIZE, err) == -1)
    return -1;
  /* A last byte of zero may be padding: decode (see the top). */
  if (trailer[AD_GZIP_TRAILER_SIZE - 1] == 0)
    return 0;
  isize = ad_le32 (trailer + 4);
  d = fsize - h->len - AD_GZIP_TRAILER_SIZE;
  umax = d > UINT64_MAX / MAX_RATIO ? UINT64_MAX : d * MAX_RATIO;
  if (isize > umax)
    return 0;
  if (isize + (UINT64_C (1) << 32) <= umax && !trust_isize)
    return 0;

  /* Any other member?  Scan the file in CHUNK reads (chunk c at
   * c * (CHUNK - 3): an overlap of 3 bytes so that no header is split)
   * for the bytes 1f 8b 08 (memchr for the first: faster here than
   * memmem), and trial-decode every candidate, from the chunk itself
   * when its trial input lies in it.  Every chunk is read into buf
   * (a second 8 MiB buffer would cost more in page faults than reading
   * the first chunk again), the first one (already there) last, so
   * that buf ends up holding the start of the file again.  Unless
   * scan_all (autodecomp-size-check=connect), only the first chunk,
   * already read, is scanned: the lazy pass finds any member after it
   * when it gets there.
   */
  out = malloc (TRIAL_OUTPUT);
  if (out == NULL) {
    r = ad_error_set (err, ENOMEM, "malloc: %m");
    goto out;
  }
  start = h->len + 2 + AD_GZIP_TRAILER_SIZE;
  nchunks = fsize <= CHUNK ? 1 : (fsize - 3 - 1) / (CHUNK - 3) + 1;
  for (c = scan_all ? 1 : nchunks; c <= nchunks; c++) {
    uint64_t coff = (c % nchunks) * (uint64_t) (CHUNK - 3);
    size_t clen = fsize - coff < CHUNK ? fsize - coff : CHUNK;
    bool last = coff + clen == fsize;
    size_t lim = last ? clen : clen - 3;
    size_t i = coff < start ? start - coff : 0;

    if (coff != 0 || !buf_is_start) {
      buf_is_start = false;
      if (ad_source_pread (src, buf, clen, coff, err) == -1) {
        r = -1;
        goto out;
      }
      buf_is_start = coff == 0;
    }
    while (i < lim) {
      const unsigned char *q = memchr (buf + i, 0x1f, lim - i);
      const unsigned char *tp;
      uint64_t pos;
      size_t tlen;

      if (q == NULL)
        break;
      i = q - buf;
      pos = coff + i;
      i++;
      if (pos + MEMBER_MIN > fsize)
        break;
      if (!(q[1] == 0x8b && q[2] == 8 && (q[3] & FLG_RESERVED) == 0))
        continue;
      tlen = fsize - pos < TRIAL_INPUT ? fsize - pos : TRIAL_INPUT;
      if (tlen <= clen - (i - 1))
        tp = q;                 /* All of it is in this chunk. */
      else {
        if (trial == NULL &&
            (trial = malloc (fsize < TRIAL_INPUT ? fsize : TRIAL_INPUT))
            == NULL) {
          r = ad_error_set (err, ENOMEM, "malloc: %m");
          goto out;
        }
        if (ad_source_pread (src, trial, tlen, pos, err) == -1) {
          r = -1;
          goto out;
        }
        tp = trial;
      }
      if (trial_member (tp, tlen, pos, out) ||
          ++failures > TRIAL_MAX_FAILURES)
        goto out;               /* r = 0: several members, shape 3. */
    }
  }
  *size = isize;
  r = 1;

 out:
  free (out);
  free (trial);
  /* Give the caller back the start of the file, if an early exit left
   * another chunk in buf.
   */
  if (r >= 0 && !buf_is_start &&
      ad_source_pread (src, buf, n, 0, err) == -1)
    r = -1;
  return r;
}

/* Shape 1: an empty member (the BGZF end-of-file marker) is never
 * decoded as a frame, so check it here: it must decode to nothing,
 * ending exactly at its trailer, with CRC32 0.
 */
static bool
empty_member_ok (const unsigned char *b, size_t msize, size_t hlen)
{
  unsigned char out[1];
  z_stream zs;
  bool ok;
  int r;

  if (ad_le32 (b + msize - 8) != 0)
    return false;
  memset (&zs, 0, sizeof zs);
  if (inflateInit2 (&zs, -15) != Z_OK)
    return false;
  zs.next_in = (unsigned char *) b + hlen;
  zs.avail_in = msize - hlen - AD_GZIP_TRAILER_SIZE;
  zs.next_out = out;
  zs.avail_out = sizeof out;
  r = inflate (&zs, Z_FINISH);
  ok = r == Z_STREAM_END && zs.avail_out == sizeof out && zs.avail_in == 0;
  inflateEnd (&zs);
  return ok;
}

/* Shape 1: walk BGZF member headers.  buf holds the first n bytes.
 * Returns 1 if the index is done, 0 if the file is not BGZF-shaped
 * (use shape 3), -1 on error.
 */
static int
bgzf_index (struct ad_index *idx, struct gz_priv *priv,
            struct ad_source *src, unsigned char *buf, size_t n,
            struct ad_error *err)
{
  struct ad_error scratch;
  uint64_t fsize = src->size, pos = 0, boff = 0, total = 0;
  size_t blen = n;

  while (pos < fsize) {
    uint64_t want = fsize - pos < AD_BGZF_MEMBER_MAX ? fsize - pos
      : AD_BGZF_MEMBER_MAX;
    struct gz_header h;
    struct ad_frame f;
    const unsigned char *b;
    uint64_t msize;
    uint32_t isize;

    if (pos + want > boff + blen) {
      boff = pos;
      blen = fsize - pos < CHUNK ? fsize - pos : CHUNK;
      if (ad_source_pread (src, buf, blen, boff, err) == -1)
        return -1;
    }
    b = buf + (pos - boff);

    if (b[0] == 0) {
      /* Zero padding to the end, or not BGZF. */
      for (;;) {
        size_t avail = boff + blen - pos, i;
        for (i = 0; i < avail; i++)
          if (b[i] != 0)
            goto not_bgzf;
        pos += avail;
        if (pos >= fsize)
          break;
        boff = pos;
        blen = fsize - pos < CHUNK ? fsize - pos : CHUNK;
        if (ad_source_pread (src, buf, blen, boff, err) == -1)
          return -1;
        b = buf;
      }
      break;
    }
    if (parse_header (b, want, pos, &h, &scratch) == -1 || !h.bgzf)
      goto not_bgzf;
    msize = (uint64_t) h.bsize + 1;
    if (msize < h.len + 2 + AD_GZIP_TRAILER_SIZE || msize > want)
      goto not_bgzf;
    isize = ad_le32 (b + msize - 4);
    if (isize > AD_BGZF_ISIZE_MAX)
      goto not_bgzf;
    if (isize == 0 && !empty_member_ok (b, msize, h.len))
      goto not_bgzf;            /* The sizing pass will say why. */

    memset (&f, 0, sizeof f);
    f.uoff = total;
    f.usize = isize;
    f.coff = pos;
    f.csize = msize;
    f.aux = AUX_WHOLE;
    if (isize > 0 && coll_push (priv, &f, err) == -1)
      return -1;
    total += isize;
    pos += msize;
  }
  priv->kind = GZ_BGZF;
  idx->sizes_unchecked = true;
  if (coll_append_all (idx, priv, total, err) == -1)
    return -1;
  return 1;

 not_bgzf:
  priv->ncoll = 0;
  return 0;
}

static void gz_close (struct ad_index *idx);

/* The span of a pass: opts.gzip_span, leaving room in max_frame for a
 * block's overshoot.  For shape 2 (size known, else 0) it is widened
 * so that the snapshots stay within LAZY_SNAP_BYTES, at the largest
 * each (as if none compressed).
 */
static uint64_t
pass_span (const struct ad_index *idx, uint64_t size)
{
  uint64_t span = idx->opts.gzip_span ? idx->opts.gzip_span
    : AD_DEFAULT_GZIP_SPAN;
  uint64_t max_spans = LAZY_SNAP_BYTES / ZSTD_compressBound (SNAP_MAX);

  if (idx->opts.max_frame >= 2 && span > idx->opts.max_frame / 2)
    span = idx->opts.max_frame / 2;
  if (max_spans == 0)
    max_spans = 1;
  if (size > 0 && span < size / max_spans + 1)
    span = size / max_spans + 1;
  return span;
}

static int
gz_open (struct ad_index *idx, struct ad_source *src, struct ad_error *err)
{
  struct gz_priv *priv;
  struct gz_header h;
  unsigned char *buf = NULL;
  uint64_t span = pass_span (idx, 0);
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
  n = src->size < CHUNK ? src->size : CHUNK;
  buf = malloc (n);
  if (buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (ad_source_pread (src, buf, n, 0, err) == -1)
    goto fail;
  if (parse_header (buf, n < HEADER_MAX ? n : HEADER_MAX, 0, &h, err) == -1)
    goto fail;

  if (h.bgzf) {
    r = bgzf_index (idx, priv, src, buf, n, err);
    if (r == -1)
      goto fail;
    if (r == 1) {
      idx->index_from = "BGZF member headers";
      free (buf);
      return 0;
    }
  }
  else {
    r = single_member_size (src, buf, n, &h, idx->opts.gzip_trust_isize,
                            idx->opts.size_at_connect, &size, err);
    if (r == -1)
      goto fail;
    if (r == 1) {
      span = pass_span (idx, size);
      priv->kind = GZ_LAZY;
      idx->index_from = "the trailer, then checkpoints made as a lazy "
        "pass reaches them";
      idx->size = size;
      priv->pass = pass_new (idx, src, true, span, buf, n, err);
      return priv->pass ? 0 : -1;
    }
  }
  /* A failed BGZF walk may have overwritten buf: read it again. */
  if (h.bgzf && ad_source_pread (src, buf, n, 0, err) == -1)
    goto fail;
  idx->index_from = "a pass over the whole file at open";
  return sizing_pass (idx, priv, span, src, buf, n, err);

 fail:
  free (buf);
  return -1;
}

static int pass_resume (struct ad_index *idx, struct gz_priv *priv,
                        struct ad_source *src, struct ad_error *err);

/* Shape 2 extends the index as reads need it.  With a persisted index,
 * the index is written again each time the pass has gone
 * max (PARTIAL_STEP, a tenth of the image) further than the file
 * covers, and when it completes (see "Partial indexes" below).
 */
static int
gz_advance (struct ad_index *idx, struct ad_source *src, uint64_t offset,
            ad_emit_fn *emit, void *emit_opaque, struct ad_error *err)
{
  struct gz_priv *priv = idx->priv;
  struct gz_pass *P;
  uint64_t step = idx->size / 10 > PARTIAL_STEP ? idx->size / 10
    : PARTIAL_STEP;

  if (priv->resume && pass_resume (idx, priv, src, err) == -1)
    return -1;
  P = priv->pass;
  if (P == NULL)
    return 0;
  /* A failure is not remembered: go back to the last checkpoint. */
  if (P->broken && pass_rewind (priv, P, src, err) == -1)
    return -1;
  while (priv->appended <= offset) {
    int r = pass_step (priv, idx, P, src, emit, emit_opaque, err);
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
    pass_free (priv->pass);
    priv->pass = NULL;
    /* The index is complete: keep it (if asked to). */
    ad_index_save (idx, src);
  }
  return 0;
}

/* Decoders. */

struct gz_decoder {
  struct gz_priv *priv;
  struct ad_frame f;
  bool whole;                   /* Header to trailer; check the trailer. */
  bool at_header;               /* Starts with a member header. */
  struct gz_ckpt ck;             /* Else: the checkpoint. */
  uint32_t want_crc;            /* Of the span (not whole). */

  struct inflate_state *st;
  bool started, ended, failed;
  struct gz_input in;           /* Up to the end of the frame's range. */
  uint64_t done;
  uint32_t crc;
};

static int
gz_decoder_new (struct ad_index *idx, const struct ad_frame *frame,
                size_t frame_no, void **decoder, struct ad_error *err)
{
  struct gz_priv *priv = idx->priv;
  struct gz_decoder *d = calloc (1, sizeof *d);

  (void) frame_no;
  if (d == NULL)
    return ad_error_set (err, ENOMEM, "calloc: %m");
  d->priv = priv;
  d->f = *frame;
  if (frame->aux == AUX_WHOLE) {
    d->whole = true;
    d->at_header = true;
  }
  else {
    struct gz_ckpt ck;
    bool ok;

    pthread_mutex_lock (&priv->lock);
    ok = frame->aux < priv->nckpts;
    if (ok)
      ck = priv->ckpts[frame->aux];
    pthread_mutex_unlock (&priv->lock);
    if (!ok || (ck.snap == NULL && !ck.at_header && !ck.is_point) ||
        ck.coff != frame->coff) {
      free (d);
      return ad_error_set (err, EIO, "the frame's checkpoint %" PRIu64
                           " is not in the index", frame->aux);
    }
    d->at_header = ck.at_header;
    d->ck = ck;
    d->want_crc = ck.span_crc;
  }
  *decoder = d;
  return 0;
}

static void
gz_decoder_free (void *decoder)
{
  struct gz_decoder *d = decoder;

  if (d == NULL)
    return;
  free (d->st);
  free (d->in.buf);
  free (d);
}

static uint64_t
dec_pos (const struct gz_decoder *d)
{
  return input_pos (&d->in, d->st);
}

/* Refill the input with the frame's next compressed bytes. */
static int
dec_fill (struct gz_decoder *d, struct ad_source *src, size_t want,
          struct ad_error *err)
{
  return input_fill (&d->in, d->st, src, want, err);
}

static int dec_inflate (struct gz_decoder *d, struct ad_source *src,
                        void *out, size_t count, size_t *n, bool *starved,
                        struct ad_error *err);

/* The window of a point, decompressed into buf (WINDOW_SIZE bytes). */
static int
point_window (const struct gz_ckpt *ck, unsigned char *buf,
              struct ad_error *err)
{
  size_t n = ZSTD_decompress (buf, WINDOW_SIZE, ck->win, ck->win_len);

  if (ZSTD_isError (n) || n != ck->win_raw)
    return ad_error_set (err, EIO, "the window of the point at offset %"
                         PRIu64 " does not decompress", ck->coff);
  return 0;
}

/* Put the fresh state at a restorable point, its input at the point's
 * byte: the window as the dictionary, the byte's bits after the
 * boundary in the bit buffer, then skip bytes of output discarded.
 * Everything after the window is parsed from the file itself.
 */
static int
dec_point (struct gz_decoder *d, struct ad_source *src, struct ad_error *err)
{
  unsigned char *scratch = malloc (POINT_SCRATCH);
  uint64_t left = d->ck.skip;
  int r = -1;

  if (scratch == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (d->ck.win_raw > 0) {
    if (point_window (&d->ck, scratch, err) == -1)
      goto out;
    if (isal_inflate_set_dict (d->st, scratch, d->ck.win_raw) != COMP_OK) {
      ad_error_set (err, EIO, "the window of the point at offset %" PRIu64
                    " is refused", d->ck.coff);
      goto out;
    }
  }
  if (d->ck.bits > 0) {
    if (d->st->avail_in == 0) {
      ad_error_set (err, EIO, "the point at offset %" PRIu64 " is past "
                    "the frame's data", d->ck.coff);
      goto out;
    }
    d->st->read_in = d->st->next_in[0] >> d->ck.bits;
    d->st->read_in_length = 8 - d->ck.bits;
    d->st->next_in++;
    d->st->avail_in--;
  }
  while (left > 0) {
    size_t want = left < POINT_SCRATCH ? left : POINT_SCRATCH, n = 0;
    bool starved = false;

    if (dec_inflate (d, src, scratch, want, &n, &starved, err) == -1)
      goto out;
    left -= n;
    if (left > 0 && (d->ended || starved)) {
      ad_error_set (err, EIO, "the data from the point at offset %" PRIu64
                    " ends %" PRIu64 " bytes before the span", d->ck.coff,
                    left);
      goto out;
    }
  }
  r = 0;
 out:
  free (scratch);
  return r;
}

static int
dec_start (struct gz_decoder *d, struct ad_source *src, struct ad_error *err)
{
  if (d->f.csize == 0 || d->f.coff > src->size ||
      d->f.csize > src->size - d->f.coff)
    return ad_error_set (err, EIO, "compressed range of %" PRIu64 " bytes "
                         "is outside the %" PRIu64 "-byte file",
                         d->f.csize, src->size);
  d->in.alloc = d->f.csize <= ONE_READ_MAX ? d->f.csize : CHUNK;
  d->in.buf = malloc (d->in.alloc);
  d->st = malloc (sizeof *d->st);
  if (d->in.buf == NULL || d->st == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  if (d->at_header || d->ck.is_point)
    isal_start (d->st);
  else if (snap_restore (d->st, &d->ck, err) == -1)
    return -1;
  d->in.base = d->in.rpos = d->f.coff;
  d->in.end = d->f.coff + d->f.csize;
  d->st->next_in = d->in.buf;
  d->st->avail_in = 0;
  if (dec_fill (d, src, 1, err) == -1)
    return -1;

  if (d->at_header) {
    struct gz_header h;
    size_t avail = d->st->avail_in < HEADER_MAX ? d->st->avail_in
      : HEADER_MAX;

    if (parse_header (d->st->next_in, avail, d->f.coff, &h, err) == -1)
      return -1;
    d->st->next_in += h.len;
    d->st->avail_in -= h.len;
  }
  else if (d->ck.is_point && dec_point (d, src, err) == -1)
    return -1;
  d->started = true;
  return 0;
}

/* The member ended: its trailer must close the frame's range and match. */
static int
dec_check_trailer (struct gz_decoder *d, struct ad_source *src,
                   struct ad_error *err)
{
  uint64_t tpos = input_stream_end (&d->in, d->st);
  uint32_t crc, isize;

  if (tpos + AD_GZIP_TRAILER_SIZE != d->in.end)
    return ad_error_set (err, EIO, "the deflate data ends at offset %"
                         PRIu64 ", but the member's trailer should be at "
                         "offset %" PRIu64, tpos,
                         d->in.end - AD_GZIP_TRAILER_SIZE);
  input_seek (&d->in, d->st, tpos);
  if (dec_fill (d, src, AD_GZIP_TRAILER_SIZE, err) == -1)
    return -1;
  if (d->st->avail_in < AD_GZIP_TRAILER_SIZE)
    return ad_error_set (err, EIO, "the trailer at offset %" PRIu64
                         " is truncated", tpos);
  crc = ad_le32 (d->st->next_in);
  isize = ad_le32 (d->st->next_in + 4);
  if (crc != d->crc)
    return ad_error_set (err, EIO, "CRC32 mismatch (trailer at offset %"
                         PRIu64 " says %08" PRIx32 ", the data has %08"
                         PRIx32 ")", tpos, crc, d->crc);
  if (isize != (uint32_t) d->done)
    return ad_error_set (err, EIO, "ISIZE mismatch (trailer at offset %"
                         PRIu64 " says %" PRIu32 ", the data has %" PRIu64
                         " bytes)", tpos, isize, d->done);
  return 0;
}

static ssize_t dec_read (struct gz_decoder *d, struct ad_source *src,
                         void *out, size_t count, struct ad_error *err);

/* After an error the decoder stays failed (it never answers 0 later). */
static ssize_t
gz_decoder_read (void *decoder, struct ad_source *src, void *out,
                 size_t count, struct ad_error *err)
{
  struct gz_decoder *d = decoder;
  ssize_t r;

  if (d->failed)
    return ad_error_set (err, EIO, "the decoder failed earlier");
  r = dec_read (d, src, out, count, err);
  if (r == -1)
    d->failed = true;
  return r;
}

/* A whole member decoded in one call into the caller's buffer, by
 * libdeflate (about twice as fast as zlib's inflate: see the top).
 * Returns 1 if it worked and every check passed (the frame is done),
 * 0 if the caller should decode it with zlib instead (which then finds
 * and describes whatever is wrong), -1 on a read error.
 */
/* A libdeflate decompressor of the image's pool (they hold no state
 * between calls, and making one per member costs page faults), or a
 * new one; NULL if memory ran out.
 */
static struct libdeflate_decompressor *
ld_get (struct gz_priv *priv)
{
  struct libdeflate_decompressor *ld = NULL;

  pthread_mutex_lock (&priv->lock);
  if (priv->nlds > 0)
    ld = priv->lds[--priv->nlds];
  pthread_mutex_unlock (&priv->lock);
  return ld ? ld : libdeflate_alloc_decompressor ();
}

static void
ld_put (struct gz_priv *priv, struct libdeflate_decompressor *ld)
{
  pthread_mutex_lock (&priv->lock);
  if (priv->nlds < LD_POOL_MAX) {
    priv->lds[priv->nlds++] = ld;
    ld = NULL;
  }
  pthread_mutex_unlock (&priv->lock);
  if (ld)
    libdeflate_free_decompressor (ld);
}

static int
dec_whole_fast (struct gz_decoder *d, struct ad_source *src, void *out,
                struct ad_error *err)
{
  struct libdeflate_decompressor *ld;
  struct gz_header h;
  struct ad_error scratch;
  const unsigned char *p, *t;
  size_t clen = d->f.csize, in_used, out_used;
  enum libdeflate_result r;

  if (clen > ONE_READ_MAX || clen < MEMBER_MIN ||
      d->f.coff > src->size || clen > src->size - d->f.coff)
    return 0;
  p = ad_source_map (src, d->f.coff, clen);  /* In place, no copy. */
  if (p == NULL) {
    d->in.buf = malloc (clen);
    if (d->in.buf == NULL)
      return 0;
    d->in.alloc = clen;
    if (ad_source_pread (src, d->in.buf, clen, d->f.coff, err) == -1)
      return -1;
    p = d->in.buf;
  }
  if (parse_header (p, clen < HEADER_MAX ? clen : HEADER_MAX, d->f.coff, &h,
                    &scratch) == -1 ||
      clen - h.len < 2 + AD_GZIP_TRAILER_SIZE)
    return 0;
  ld = ld_get (d->priv);
  if (ld == NULL)
    return 0;
  r = libdeflate_deflate_decompress_ex (ld, p + h.len,
                                        clen - h.len - AD_GZIP_TRAILER_SIZE,
                                        out, d->f.usize, &in_used,
                                        &out_used);
  ld_put (d->priv, ld);
  if (r != LIBDEFLATE_SUCCESS || out_used != d->f.usize ||
      in_used != clen - h.len - AD_GZIP_TRAILER_SIZE)
    return 0;
  t = p + clen - AD_GZIP_TRAILER_SIZE;
  d->crc = crc32_gzip_refl (0, out, out_used);
  if (ad_le32 (t) != d->crc || ad_le32 (t + 4) != (uint32_t) out_used)
    return 0;
  d->done = out_used;
  d->started = d->ended = true;
  return 1;
}

/* Inflate up to count bytes into out; *n says how many came.  Stops
 * early at the end of the member (d->ended) or when the frame's input
 * is used up and the state makes no more progress (*starved).
 */
static int
dec_inflate (struct gz_decoder *d, struct ad_source *src, void *out,
             size_t count, size_t *n, bool *starved, struct ad_error *err)
{
  d->st->next_out = out;
  d->st->avail_out = count;
  while (d->st->avail_out > 0) {
    uint32_t before_in, before_out;
    int r;

    /* With all input read, the state may still hold output (in its
     * bit buffer, or decoded but not delivered): call it anyway, and
     * only call the data short when it makes no progress.
     */
    if (d->st->avail_in == 0 && d->in.rpos < d->in.end &&
        dec_fill (d, src, 1, err) == -1)
      return -1;
    before_in = d->st->avail_in;
    before_out = d->st->avail_out;
    r = isal_call (d->st);
    if (r < 0)
      return ad_error_set (err, EIO, "invalid deflate data near offset %"
                           PRIu64 ": %s", dec_pos (d), isal_msg (r));
    if (d->st->block_state == ISAL_BLOCK_FINISH) {
      d->ended = true;
      break;
    }
    if (d->st->avail_in == before_in && d->st->avail_out == before_out) {
      if (d->st->avail_in == 0 && d->in.rpos >= d->in.end) {
        *starved = true;
        break;
      }
      if (d->st->avail_in == 0)
        continue;               /* Refill above. */
      return ad_error_set (err, EIO, "inflate makes no progress at "
                           "offset %" PRIu64, dec_pos (d));
    }
  }
  *n = count - d->st->avail_out;
  return 0;
}

static ssize_t
dec_read (struct gz_decoder *d, struct ad_source *src, void *out,
          size_t count, struct ad_error *err)
{
  bool starved = false;
  size_t n;

  /* The usual case of a whole member (BGZF): all of it at once. */
  if (!d->started && d->whole && count >= d->f.usize && d->f.usize > 0 &&
      d->f.usize <= INFLATE_MAX) {
    int r = dec_whole_fast (d, src, out, err);
    if (r == -1)
      return -1;
    if (r == 1)
      return d->f.usize;
    /* Start again with ISA-L, from a clean state. */
    free (d->in.buf);
    d->in.buf = NULL;
    d->in.alloc = 0;
    d->crc = 0;
    d->done = 0;
  }
  if (!d->started && dec_start (d, src, err) == -1)
    return -1;
  if (d->ended)
    return 0;                   /* Trailer or span CRC already checked. */
  if (!d->whole) {
    /* A span stops at its size even though the member goes on. */
    if (d->done >= d->f.usize)
      return 0;
    if (count > d->f.usize - d->done)
      count = d->f.usize - d->done;
  }
  if (count > INFLATE_MAX)
    count = INFLATE_MAX;

  if (dec_inflate (d, src, out, count, &n, &starved, err) == -1)
    return -1;
  if (n > 0)
    d->crc = crc32_gzip_refl (d->crc, out, n);
  d->done += n;

  if (d->whole) {
    if (d->ended && dec_check_trailer (d, src, err) == -1)
      return -1;
  }
  else {
    if (d->ended && d->done < d->f.usize)
      return ad_error_set (err, EIO, "the member ends after %" PRIu64
                           " bytes of the %" PRIu64 "-byte span",
                           d->done, d->f.usize);
    if (d->done == d->f.usize) {
      if (d->crc != d->want_crc)
        return ad_error_set (err, EIO, "CRC32 of the span (%08" PRIx32
                             ") differs from the one recorded while "
                             "indexing (%08" PRIx32 ")",
                             d->crc, d->want_crc);
      d->ended = true;
    }
  }
  if (starved && !d->ended)
    return ad_error_set (err, EIO, "the compressed data ends at offset %"
                         PRIu64 " before the frame is complete "
                         "(truncated?)", d->in.end);
  return n;
}

static void lazy_points_free (struct gz_priv *priv);

static void
gz_close (struct ad_index *idx)
{
  struct gz_priv *priv = idx->priv;
  size_t i;

  if (priv == NULL)
    return;
  pass_free (priv->pass);
  for (i = 0; i < priv->nckpts; i++) {
    free (priv->ckpts[i].snap);
    free (priv->ckpts[i].win);
  }
  free (priv->ckpts);
  lazy_points_free (priv);
  free (priv->coll);
  for (i = 0; i < priv->nlds; i++)
    libdeflate_free_decompressor (priv->lds[i]);
  pthread_mutex_destroy (&priv->lock);
  free (priv);
  idx->priv = NULL;
}

/* Restorable points (the persisted index).
 *
 * A snapshot is ISA-L's internal state, which it would use as it is, so
 * it is never taken from a file.  The persisted index keeps instead,
 * for each span that does not start at a member header, a point from
 * which a fresh decoder reaches the span from the file's own bytes
 * (as zlib's examples/zran.c): a deflate block boundary (the byte
 * holding it and the 0-7 bits of that byte that belong to the block
 * before), the up to 32 KiB of output before the boundary (the window,
 * kept compressed with zstd, with zstd's checksum), and skip, the
 * output from the boundary to the span's start.  dec_point starts a span there: the window as
 * the dictionary, the byte's remaining bits in the bit buffer, skip
 * bytes decoded and dropped.  Block headers, Huffman codes and data
 * are then all parsed from the file, and the span's CRC32 is checked
 * as after a snapshot, so a damaged point gives an error, never wrong
 * bytes.
 *
 * ISA-L cannot stop at a block boundary, so gz_save finds the points
 * with a second pass over each member that has spans, by zlib's inflate
 * with Z_BLOCK (which returns at every block boundary), only when an
 * index is written: after the shape 3 pass at open, and as the shape 2
 * pass goes (see "Partial indexes" below), each write scanning only
 * what the one before did not.  The indexing pass itself is unchanged,
 * and a pass that writes no index costs nothing more.  Writing one costs one more read of those members and a zlib
 * decode of them: on a 256 MiB one-member image (gzip -6, 79 MiB),
 * 0.80 s of CPU against 0.45 s for the ISA-L pass, once per image.
 * (Running zlib beside the pass instead would save the read but hold
 * the lazy pass, and so the first reads, to zlib's speed.)
 */

/* A member's scan: zlib reads the file in CHUNK reads into in. */
struct pt_scan {
  struct ad_source *src;
  z_stream zs;
  bool zs_ready;
  unsigned char *in, *out;      /* out: WINDOW_SIZE + POINT_OUT bytes. */
  size_t in_alloc, opos;
  uint64_t in_base, rpos;
  uint64_t total;               /* Member output so far. */
  uint64_t b_off, b_out;        /* The last block boundary seen, */
  uint8_t b_bits;
  unsigned char win[WINDOW_SIZE];  /* and its window. */
  size_t win_len;
  ZSTD_CCtx *cctx;
};

static uint64_t
scan_pos (const struct pt_scan *S)
{
  return S->in_base + (S->zs.next_in - S->in);
}

static int
scan_fill (struct pt_scan *S, struct ad_error *err)
{
  size_t n = S->in_alloc;

  if (n > S->src->size - S->rpos)
    n = S->src->size - S->rpos;
  if (n > 0 && ad_source_pread (S->src, S->in, n, S->rpos, err) == -1)
    return -1;
  S->in_base = S->rpos;
  S->rpos += n;
  S->zs.next_in = S->in;
  S->zs.avail_in = n;
  return 0;
}

/* Inflate was stopped at a block boundary: remember it and its window.
 * zlib reports in data_type the unused bits of the last byte it took.
 */
static void
scan_boundary (struct pt_scan *S)
{
  unsigned unused = S->zs.data_type & 7;

  S->b_off = scan_pos (S) - (unused ? 1 : 0);
  S->b_bits = unused ? 8 - unused : 0;
  S->b_out = S->total;
  S->win_len = S->total < WINDOW_SIZE ? S->total : WINDOW_SIZE;
  memcpy (S->win, S->out + S->opos - S->win_len, S->win_len);
}

/* Inflate until the member's output reaches target. */
static int
scan_to (struct pt_scan *S, uint64_t target, uint64_t mcoff,
         struct ad_error *err)
{
  while (S->total < target) {
    size_t room, n;
    uInt in_before;
    int r;

    if (S->zs.avail_in == 0 && scan_fill (S, err) == -1)
      return -1;
    if (S->opos == WINDOW_SIZE + POINT_OUT) {
      memmove (S->out, S->out + S->opos - WINDOW_SIZE, WINDOW_SIZE);
      S->opos = WINDOW_SIZE;
    }
    room = WINDOW_SIZE + POINT_OUT - S->opos;
    if (room > target - S->total)
      room = target - S->total;
    S->zs.next_out = S->out + S->opos;
    S->zs.avail_out = room;
    in_before = S->zs.avail_in;
    r = inflate (&S->zs, Z_BLOCK);
    n = room - S->zs.avail_out;
    S->opos += n;
    S->total += n;
    if (r == Z_STREAM_END)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 " ends "
                           "after %" PRIu64 " bytes, before its span at %"
                           PRIu64, mcoff, S->total, target);
    if (r != Z_OK && r != Z_BUF_ERROR)
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": "
                           "invalid deflate data near offset %" PRIu64
                           ": %s", mcoff, scan_pos (S),
                           S->zs.msg ? S->zs.msg : "inflate error");
    if ((S->zs.data_type & 128) && !(S->zs.data_type & 64))
      scan_boundary (S);
    else if (n == 0 && S->zs.avail_in == in_before &&
             (S->zs.avail_in > 0 || S->rpos >= S->src->size))
      return ad_error_set (err, EIO, "member at offset %" PRIu64 ": no "
                           "progress finding points near offset %" PRIu64,
                           mcoff, scan_pos (S));
  }
  return 0;
}

/* Make ck (a span's checkpoint, a copy) the point for the span at
 * member output offset target.
 */
static int
scan_point (struct pt_scan *S, struct gz_ckpt *ck, uint64_t target,
            struct ad_error *err)
{
  size_t bound = ZSTD_compressBound (WINDOW_SIZE) + 4, n;

  free (ck->win);
  memset (ck, 0, sizeof *ck);
  ck->is_point = true;
  ck->coff = S->b_off;
  ck->bits = S->b_bits;
  ck->skip = target - S->b_out;
  ck->win_raw = S->win_len;
  if (S->win_len == 0)
    return 0;
  if (S->cctx == NULL) {
    S->cctx = ZSTD_createCCtx ();
    if (S->cctx == NULL)
      return ad_error_set (err, ENOMEM, "ZSTD_createCCtx failed");
    /* The window's own checksum: a damaged one fails to decompress. */
    ZSTD_CCtx_setParameter (S->cctx, ZSTD_c_compressionLevel,
                            WIN_ZSTD_LEVEL);
    ZSTD_CCtx_setParameter (S->cctx, ZSTD_c_checksumFlag, 1);
  }
  ck->win = malloc (bound);
  if (ck->win == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  n = ZSTD_compress2 (S->cctx, ck->win, bound, S->win, S->win_len);
  if (ZSTD_isError (n))
    return ad_error_set (err, EIO, "compressing a window: %s",
                         ZSTD_getErrorName (n));
  ck->win_len = n;
  return 0;
}

/* A new scan (scan_at_header or scan_at_point starts it); NULL if
 * memory ran out.
 */
static struct pt_scan *
scan_new (struct ad_source *src, struct ad_error *err)
{
  struct pt_scan *S = calloc (1, sizeof *S);

  if (S == NULL) {
    ad_error_set (err, ENOMEM, "calloc: %m");
    return NULL;
  }
  S->src = src;
  S->in_alloc = src->size < CHUNK ? src->size : CHUNK;
  S->in = malloc (S->in_alloc);
  S->out = malloc (WINDOW_SIZE + POINT_OUT);
  if (S->in == NULL || S->out == NULL) {
    ad_error_set (err, ENOMEM, "malloc: %m");
    free (S->in);
    free (S->out);
    free (S);
    return NULL;
  }
  return S;
}

static void
scan_free (struct pt_scan *S)
{
  if (S == NULL)
    return;
  if (S->zs_ready)
    inflateEnd (&S->zs);
  ZSTD_freeCCtx (S->cctx);
  free (S->in);
  free (S->out);
  free (S);
}

/* A fresh raw inflate, its input read from offset coff. */
static int
scan_reset (struct pt_scan *S, uint64_t coff, struct ad_error *err)
{
  if (S->zs_ready)
    inflateEnd (&S->zs);
  memset (&S->zs, 0, sizeof S->zs);
  S->zs_ready = false;
  if (inflateInit2 (&S->zs, -15) != Z_OK)
    return ad_error_set (err, ENOMEM, "inflateInit2 failed");
  S->zs_ready = true;
  S->rpos = coff;
  S->win_len = 0;
  S->opos = 0;
  return scan_fill (S, err);
}

/* Start the scan at the member header at coff. */
static int
scan_at_header (struct pt_scan *S, uint64_t coff, struct ad_error *err)
{
  struct gz_header h;

  if (scan_reset (S, coff, err) == -1)
    return -1;
  if (parse_header (S->zs.next_in, S->zs.avail_in < HEADER_MAX
                    ? S->zs.avail_in : HEADER_MAX, coff, &h, err) == -1)
    return -1;
  S->zs.next_in += h.len;
  S->zs.avail_in -= h.len;
  S->total = S->b_out = 0;
  S->b_off = scan_pos (S);
  S->b_bits = 0;
  return 0;
}

/* Start the scan at the point ck of the span at member output offset
 * rel (a point load_point checked), as dec_point starts a decoder.
 */
static int
scan_at_point (struct pt_scan *S, const struct gz_ckpt *ck, uint64_t rel,
               struct ad_error *err)
{
  if (scan_reset (S, ck->coff, err) == -1)
    return -1;
  if (ck->win_raw > 0) {
    if (point_window (ck, S->out, err) == -1)
      return -1;
    if (inflateSetDictionary (&S->zs, S->out, ck->win_raw) != Z_OK)
      return ad_error_set (err, EIO, "the window of the point at offset %"
                           PRIu64 " is refused", ck->coff);
    memcpy (S->win, S->out, ck->win_raw);
  }
  S->opos = S->win_len = ck->win_raw;
  if (ck->bits > 0) {
    if (S->zs.avail_in == 0)
      return ad_error_set (err, EIO, "the point at offset %" PRIu64
                           " is past the end of the file", ck->coff);
    if (inflatePrime (&S->zs, 8 - ck->bits,
                      S->zs.next_in[0] >> ck->bits) != Z_OK)
      return ad_error_set (err, EIO, "the point at offset %" PRIu64
                           " is refused", ck->coff);
    S->zs.next_in++;
    S->zs.avail_in--;
  }
  S->total = S->b_out = rel - ck->skip;
  S->b_off = ck->coff;
  S->b_bits = ck->bits;
  return 0;
}

/* The points of frames f[from] to f[to - 1], spans of the member whose
 * first frame is m, in order after where the scan stands; pts is
 * indexed by checkpoint number.
 */
static int
scan_frames (struct pt_scan *S, const struct ad_frame *m,
             const struct ad_frame *f, size_t from, size_t to,
             struct gz_ckpt *pts, struct ad_error *err)
{
  size_t k;

  for (k = from; k < to; k++) {
    uint64_t target = f[k].uoff - m->uoff;

    if (scan_to (S, target, m->coff, err) == -1 ||
        scan_point (S, &pts[f[k].aux], target, err) == -1)
      return ad_error_in_frame (err, "gzip", k, f[k].coff);
  }
  return 0;
}

static bool
frame_has_ckpt (const struct gz_priv *priv, const struct ad_frame *f)
{
  return f->aux != AUX_WHOLE && f->aux < priv->nckpts;
}

/* Find the points of every span that starts at a snapshot; pts (one per
 * checkpoint, zeroed) gets them.
 */
static int
scan_all (struct ad_index *idx, struct gz_priv *priv, struct ad_source *src,
          struct gz_ckpt *pts, struct ad_error *err)
{
  struct pt_scan *S = scan_new (src, err);
  size_t i = 0, j;
  int r = -1;

  if (S == NULL)
    return -1;
  while (i < idx->nframes) {
    const struct ad_frame *f = &idx->frames[i];

    for (j = i + 1; j < idx->nframes &&
           frame_has_ckpt (priv, &idx->frames[j]) &&
           !priv->ckpts[idx->frames[j].aux].at_header; j++)
      ;
    if (j > i + 1 && frame_has_ckpt (priv, f) &&
        priv->ckpts[f->aux].at_header &&
        !priv->ckpts[idx->frames[i + 1].aux].is_point) {
      if (scan_at_header (S, f->coff, err) == -1) {
        ad_error_in_frame (err, "gzip", i, f->coff);
        goto out;
      }
      if (scan_frames (S, f, idx->frames, i + 1, j, pts, err) == -1)
        goto out;
    }
    i = j;
  }
  r = 0;
 out:
  scan_free (S);
  return r;
}

/* Checkpoint types in the persisted index. */
enum { CK_UNUSED = 0, CK_HEADER = 1, CK_POINT = 2 };

static void
put_u8 (struct ad_buf *out, uint8_t v)
{
  ad_buf_put (out, &v, 1);
}

static void
save_ckpt (struct ad_buf *out, const struct gz_ckpt *ck,
           const struct gz_ckpt *pt)
{
  if (ck->at_header) {
    put_u8 (out, CK_HEADER);
    ad_buf_put_le32 (out, ck->span_crc);
    return;
  }
  if (ck->is_point)
    pt = ck;
  if (pt == NULL || !pt->is_point) {
    put_u8 (out, CK_UNUSED);
    return;
  }
  put_u8 (out, CK_POINT);
  ad_buf_put_le32 (out, ck->span_crc);
  ad_buf_put_le64 (out, pt->coff);
  put_u8 (out, pt->bits);
  ad_buf_put_le64 (out, pt->skip);
  ad_buf_put_le32 (out, pt->win_raw);
  ad_buf_put_le32 (out, pt->win_len);
  if (pt->win_len > 0)
    ad_buf_put (out, pt->win, pt->win_len);
}

/* Partial indexes.
 *
 * A shape 2 pass with a persisted index writes the index as it goes
 * (see gz_advance), so its points are found incrementally: priv->scan
 * stays where the last write left it, and each write scans only the
 * member's data after that, keeping the points it finds in priv->pts
 * (memory of the order of the snapshots') until the index is complete.
 * A partial file holds the frames so far, the checkpoints they use and
 * the member's CRC32 so far; the first advance after loading one
 * (pass_resume) decodes the last frame again from its checkpoint,
 * checks it against its span's CRC32 and takes that decoder's state,
 * at the end of what the file covers, as the pass's, so the pass goes
 * on from there with the member's CRC32 and size so far, and its check
 * of the trailer covers the whole member.  Decoding the last span again
 * (one span, against its CRC32) is what makes the state the pass goes
 * on from one the file cannot get wrong unnoticed.
 *
 * The writes cost what writing the index at the end did: a copy of a
 * 256 MiB one-member image (gzip -6, 79 MiB) with the index takes
 * 1.62-1.86 s of server CPU writing it every 64 MiB, 1.64-1.99 s
 * writing it at the end only (0.78-0.88 s without an index; the zlib
 * scan is the difference), 2.8 MB of file.  A read of its last MiB
 * after a restart that loads the index written at half way takes
 * 0.91-1.12 s of CPU, against 1.64-1.84 s from no file (both scan
 * what they index with zlib; 0.83-1.02 s without autodecomp-index).
 */

/* The member's CRC32 over frames [0, n), all spans of one member. */
static uint32_t
frames_crc (const struct ad_index *idx, const struct gz_priv *priv,
            size_t n)
{
  uint32_t crc = 0;
  size_t i;

  for (i = 0; i < n; i++)
    crc = crc32_combine (crc, priv->ckpts[idx->frames[i].aux].span_crc,
                         (z_off_t) idx->frames[i].usize);
  return crc;
}

/* Are the frames spans of one member: the first at its header, the
 * others at later checkpoints?
 */
static bool
lazy_spans (const struct ad_index *idx, const struct gz_priv *priv)
{
  size_t i;

  for (i = 0; i < idx->nframes; i++)
    if (!frame_has_ckpt (priv, &idx->frames[i]) ||
        (i == 0) != priv->ckpts[idx->frames[i].aux].at_header)
      return false;
  return true;
}

/* Shape 2: find the points of the frames appended since the last
 * write, going on with priv->scan.
 */
static int
lazy_points (struct ad_index *idx, struct gz_priv *priv,
             struct ad_source *src, struct ad_error *err)
{
  const struct ad_frame *m = &idx->frames[0];

  if (priv->pts_alloc < priv->nckpts) {
    struct gz_ckpt *p = realloc (priv->pts, priv->nckpts * sizeof *p);
    if (p == NULL)
      return ad_error_set (err, ENOMEM, "realloc: %m");
    memset (p + priv->pts_alloc, 0,
            (priv->nckpts - priv->pts_alloc) * sizeof *p);
    priv->pts = p;
    priv->pts_alloc = priv->nckpts;
  }
  if (!lazy_spans (idx, priv))
    return ad_error_set (err, EIO, "the frames are not spans of one "
                         "member");
  if (priv->scan_next == 0)
    priv->scan_next = 1;
  if (priv->scan_next >= idx->nframes)
    return 0;
  if (priv->scan == NULL) {
    /* Start at the frame before the first without a point: the header,
     * or a point loaded from a file.
     */
    const struct ad_frame *f = &idx->frames[priv->scan_next - 1];
    const struct gz_ckpt *ck = &priv->ckpts[f->aux];
    int r;

    priv->scan = scan_new (src, err);
    if (priv->scan == NULL)
      return -1;
    if (ck->at_header)
      r = scan_at_header (priv->scan, f->coff, err);
    else if (ck->is_point)
      r = scan_at_point (priv->scan, ck, f->uoff - m->uoff, err);
    else if (priv->pts[f->aux].is_point)
      r = scan_at_point (priv->scan, &priv->pts[f->aux], f->uoff - m->uoff,
                         err);
    else
      r = ad_error_set (err, EIO, "no point to scan from");
    if (r == -1) {
      scan_free (priv->scan);
      priv->scan = NULL;
      return ad_error_in_frame (err, "gzip", priv->scan_next - 1, f->coff);
    }
  }
  priv->scan->src = src;
  if (scan_frames (priv->scan, m, idx->frames, priv->scan_next,
                   idx->nframes, priv->pts, err) == -1) {
    /* Start again from the last point found, next time. */
    scan_free (priv->scan);
    priv->scan = NULL;
    return -1;
  }
  priv->scan_next = idx->nframes;
  return 0;
}

/* Forget the points of a complete shape 2 index, once written. */
static void
lazy_points_free (struct gz_priv *priv)
{
  size_t i;

  scan_free (priv->scan);
  priv->scan = NULL;
  for (i = 0; i < priv->pts_alloc; i++)
    free (priv->pts[i].win);
  free (priv->pts);
  priv->pts = NULL;
  priv->pts_alloc = 0;
  priv->scan_next = 0;
}

/* Shape 2 after loading a partial index: start the pass at the end of
 * the frames loaded, from the state of a decoder of the last one (see
 * "Partial indexes" above).  On failure nothing changes and the next
 * advance tries again; a last frame that does not decode to its span's
 * CRC32 fails every time (the image is not the one indexed).
 */
static int
pass_resume (struct ad_index *idx, struct gz_priv *priv,
             struct ad_source *src, struct ad_error *err)
{
  size_t last = ad_index_nframes (idx) - 1, n;
  struct gz_decoder *d = NULL;
  struct gz_pass *P;
  struct gz_ckpt ck;
  struct ad_frame f, first;
  unsigned char *buf;
  void *dv;
  ssize_t r;

  ad_index_get_frame (idx, last, &f);
  ad_index_get_frame (idx, 0, &first);
  n = src->size < CHUNK ? src->size : CHUNK;
  buf = malloc (n);
  if (buf == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  P = pass_new (idx, src, true, pass_span (idx, idx->size), buf, n, err);
  if (P == NULL)
    return ad_error_in_frame (err, "gzip", last, f.coff);
  if (gz_decoder_new (idx, &f, last, &dv, err) == -1)
    goto fail;
  d = dv;
  do {
    r = gz_decoder_read (d, src, P->out, P->out_alloc, err);
    if (r == -1) {
      ad_error_prefix (err, "going on from the partial index (remove it "
                       "to index the image again): its last span");
      goto fail;
    }
  } while (r > 0);

  /* The decoder's state, at the end of the last span, is the pass's;
   * its input goes on where the decoder's stopped.
   */
  P->in.base = P->in.rpos = dec_pos (d);
  free (P->st);
  P->st = d->st;
  d->st = NULL;
  P->st->next_in = P->in.buf;
  P->st->avail_in = 0;
  if (pass_fill (P, src, 1, err) == -1)
    goto fail;
  P->members = 1;
  P->member_coff = first.coff;
  P->member_crc = priv->loaded_crc;
  P->uoff = P->span_uoff = P->member_usize = f.uoff + f.usize;
  P->state = PS_DATA;

  /* The next span's checkpoint, as pass_checkpoint takes it. */
  memset (&ck, 0, sizeof ck);
  ck.coff = pass_pos (P);
  if (snap_take (P, &ck, err) == -1)
    goto fail;
  if (ckpt_add (priv, &ck, &P->span_ckpt, err) == -1) {
    free (ck.snap);
    goto fail;
  }
  P->resume_ckpt = P->span_ckpt;
  P->resume_uoff = P->uoff;
  P->resume_member_crc = P->member_crc;
  P->resume_member_usize = P->member_usize;
  gz_decoder_free (d);
  priv->pass = P;
  priv->resume = false;
  return 0;

 fail:
  gz_decoder_free (d);
  pass_free (P);
  return ad_error_in_frame (err, "gzip", last, f.coff);
}

/* The persisted index keeps the frame table, the kind of index, and
 * every checkpoint: a member header, or the restorable point of a span
 * (found here by scan_all, or by lazy_points as shape 2 goes), with
 * the span's CRC32; a partial index then the member's CRC32 so far.
 * See docs/index-format.md.
 */
static int
gz_save (struct ad_index *idx, struct ad_source *src, struct ad_buf *out,
         const char **why)
{
  struct gz_priv *priv = idx->priv;
  bool partial = idx->indexed != idx->size;
  bool lazy = priv->kind == GZ_LAZY && idx->nframes > 0 &&
    frame_has_ckpt (priv, &idx->frames[0]);
  struct gz_ckpt *pts;
  size_t i, n;
  int r = -1;

  if (partial && !lazy) {
    *why = "the index is not complete";
    return -1;
  }
  ad_error_clear (&priv->save_err);
  if (lazy) {
    if (lazy_points (idx, priv, src, &priv->save_err) == -1) {
      *why = priv->save_err.msg;
      return -1;
    }
    pts = priv->pts;
    /* The checkpoints the frames use: not the one of the span the pass
     * is in, so that going on from the file numbers the next one as
     * the pass did.
     */
    n = partial ? idx->frames[idx->nframes - 1].aux + 1 : priv->nckpts;
  }
  else {
    pthread_mutex_lock (&priv->lock);
    n = priv->nckpts;
    pthread_mutex_unlock (&priv->lock);
    pts = calloc (n ? n : 1, sizeof *pts);
    if (pts == NULL) {
      *why = "out of memory";
      return -1;
    }
    if (scan_all (idx, priv, src, pts, &priv->save_err) == -1) {
      *why = priv->save_err.msg;
      goto out;
    }
  }
  ad_buf_put_le32 (out, priv->kind);
  ad_buf_put_le64 (out, n);
  for (i = 0; i < n; i++)
    save_ckpt (out, &priv->ckpts[i], &pts[i]);
  if (partial)
    ad_buf_put_le32 (out, frames_crc (idx, priv, idx->nframes));
  r = 0;
 out:
  if (lazy) {
    if (!partial)
      lazy_points_free (priv);
  }
  else {
    for (i = 0; i < n; i++)
      free (pts[i].win);
    free (pts);
  }
  return r;
}

/* Read one checkpoint; false if it is malformed. */
static bool
load_ckpt (struct ad_cursor *in, struct gz_ckpt *ck)
{
  uint8_t type;
  const unsigned char *p;

  memset (ck, 0, sizeof *ck);
  if (!ad_cursor_get_u8 (in, &type) || type > CK_POINT)
    return false;
  if (type == CK_UNUSED)
    return true;
  if (!ad_cursor_get_le32 (in, &ck->span_crc))
    return false;
  if (type == CK_HEADER) {
    ck->at_header = true;
    return true;
  }
  ck->is_point = true;
  if (!ad_cursor_get_le64 (in, &ck->coff) ||
      !ad_cursor_get_u8 (in, &ck->bits) ||
      !ad_cursor_get_le64 (in, &ck->skip) ||
      !ad_cursor_get_le32 (in, &ck->win_raw) ||
      !ad_cursor_get_le32 (in, &ck->win_len) ||
      ck->bits > 7 || ck->win_raw > WINDOW_SIZE ||
      ck->win_len > ZSTD_compressBound (WINDOW_SIZE) + 4 ||
      (ck->win_len == 0) != (ck->win_raw == 0) ||
      in->left < ck->win_len)
    return false;
  if (ck->win_len == 0)
    return true;
  p = in->p;
  in->p += ck->win_len;
  in->left -= ck->win_len;
  if (ZSTD_getFrameContentSize (p, ck->win_len) != ck->win_raw)
    return false;
  ck->win = malloc (ck->win_len);
  if (ck->win == NULL)
    return false;
  memcpy (ck->win, p, ck->win_len);
  return true;
}

/* Check a point against its frame, the member's first frame m and the
 * point before (prev: the byte where the member's data may start, or
 * the last point's byte), then move the frame to start at the point's
 * byte.  Every bound keeps a lying point from costing more than its
 * span could: it lies in the member, before the span's own data, in
 * order, with a window of all the output before it up to 32 KiB and a
 * skip that its compressed bytes could produce.
 */
static bool
load_point (struct ad_frame *f, const struct ad_frame *m,
            struct gz_ckpt *ck, uint64_t *prev)
{
  uint64_t rel = f->uoff - m->uoff, at, end = f->coff + f->csize;

  if (ck->coff < *prev || ck->coff > f->coff || ck->skip > rel)
    return false;
  at = rel - ck->skip;
  if (ck->win_raw != (at < WINDOW_SIZE ? at : WINDOW_SIZE))
    return false;
  if ((ck->skip + f->usize - 1) / MAX_RATIO >= end - ck->coff)
    return false;
  *prev = ck->coff;
  f->coff = ck->coff;
  f->csize = end - ck->coff;
  return true;
}

/* Check the frames against the checkpoints: whole members stand alone;
 * a member's first span starts at a header checkpoint, its other spans
 * at points; each checkpoint serves one frame.
 */
static bool
load_frames_ckpts (struct ad_index *idx, struct gz_priv *priv)
{
  bool *used = calloc (priv->nckpts ? priv->nckpts : 1, sizeof *used);
  const struct ad_frame *m = NULL;
  uint64_t prev = 0;
  bool ok = false;
  size_t i;

  if (used == NULL)
    return false;
  for (i = 0; i < idx->nframes; i++) {
    struct ad_frame *f = &idx->frames[i];
    struct gz_ckpt *ck;

    if (f->aux32 != 0)
      goto out;
    if (f->aux == AUX_WHOLE) {
      if (f->csize < MEMBER_MIN ||
          (priv->kind == GZ_BGZF && (f->csize > AD_BGZF_MEMBER_MAX ||
                                     f->usize > AD_BGZF_ISIZE_MAX)))
        goto out;
      m = NULL;
      continue;
    }
    if (priv->kind == GZ_BGZF || f->aux >= priv->nckpts || used[f->aux])
      goto out;
    used[f->aux] = true;
    ck = &priv->ckpts[f->aux];
    if (ck->at_header) {
      ck->coff = f->coff;
      m = f;
      prev = f->coff + 10;
    }
    else if (!ck->is_point || m == NULL || !load_point (f, m, ck, &prev))
      goto out;
  }
  ok = true;
 out:
  free (used);
  return ok;
}

/* A partial index (persist.c checked that its frames cover a part of
 * the image) is of one member indexed as reads go, from offset 0, of a
 * size that a trailer gives (ISIZE: below 4 GiB, which bounds the span
 * of the pass that goes on): its first frame at the member's header,
 * every other at a point.  Then the member's CRC32 so far, which must
 * be that of its spans.
 */
static bool
load_partial (struct ad_index *idx, struct gz_priv *priv,
              struct ad_cursor *in)
{
  uint32_t crc;

  if (priv->kind != GZ_LAZY || idx->nframes == 0 ||
      idx->size > UINT32_MAX || idx->frames[0].coff != 0)
    return false;
  if (!lazy_spans (idx, priv) ||
      !ad_cursor_get_le32 (in, &crc) ||
      crc != frames_crc (idx, priv, idx->nframes))
    return false;
  priv->loaded_crc = crc;
  priv->appended = priv->saved_upto = idx->indexed;
  priv->scan_next = idx->nframes;
  priv->resume = true;
  return true;
}

static int
gz_load (struct ad_index *idx, struct ad_cursor *in)
{
  struct gz_priv *priv;
  uint32_t kind;
  uint64_t n, i;
  bool ok;

  if (!ad_cursor_get_le32 (in, &kind) ||
      (kind != GZ_BGZF && kind != GZ_LAZY && kind != GZ_FULL) ||
      !ad_cursor_get_le64 (in, &n) || n > in->left)
    return -1;
  priv = calloc (1, sizeof *priv);
  if (priv == NULL)
    return -1;
  pthread_mutex_init (&priv->lock, NULL);
  priv->kind = kind;
  idx->priv = priv;
  /* The table grows as checkpoints are read, so a count that the bytes
   * do not back costs nothing.
   */
  for (i = 0; i < n; i++) {
    struct gz_ckpt ck;
    struct ad_error e;
    size_t at;

    ok = load_ckpt (in, &ck);
    if (ckpt_add (priv, &ck, &at, &e) == -1) {
      free (ck.win);
      return -1;
    }
    if (!ok)
      return -1;
  }
  pthread_mutex_lock (&idx->lock);
  ok = load_frames_ckpts (idx, priv);
  pthread_mutex_unlock (&idx->lock);
  if (ok && idx->indexed != idx->size)
    ok = load_partial (idx, priv, in);
  return ok ? 0 : -1;
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
};
