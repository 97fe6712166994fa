/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: libFuzzer target for the format library.
 *
 * One source, compiled once per format: -DFUZZ_FORMAT=AD_FORMAT_XZ
 * (GZIP, BZIP2, ZSTD, LZIP) gives a target that opens the input as that
 * format whatever its magic says, AD_FORMAT_UNKNOWN (fuzz-detect) one
 * that detects the format the way the filter does.  For each input:
 *
 * 1. Open.  The input is the compressed image, unchanged, so the seeds
 *    are plain files made by the real tools.  It is read through a
 *    memory source (ad_source_init_mem) wrapped in a checker that
 *    aborts if the library reads outside the range it may read.  The
 *    options bound the work: max_frame 8 MiB, gzip_span 32 or 64 KiB,
 *    1 or 2 threads.  Everything else this run chooses (offsets, read
 *    lengths, chunk sizes) comes from a PRNG seeded with a hash of the
 *    input, so an input always replays the same way.
 *
 * 2. Reads through the export (ad_export_pread: cache, spill, read
 *    splitting, lazy gzip indexing) as a client would: the first and
 *    the last bytes, a prefetch (ad_export_prefetch), block status
 *    (ad_export_extents) at the start and anywhere, a few offsets,
 *    reads across frame boundaries.
 *    The per-format targets build the export with ad_export_open when
 *    the magic matches the format, and use ad_index_open alone
 *    otherwise.
 *
 * 3. Every frame in order, extending a lazy index with ad_index_find
 *    (which, when it fails, is called once more and must fail again:
 *    the rewind of a failed lazy pass), decoded whole with
 *    ad_index_decode_frame and again through the
 *    streaming interface (ops->decoder_new, decoder_read in chunks of
 *    random sizes, 1 byte to the whole frame, then the 1-byte read that
 *    must return 0).  Frames above max_frame must be refused by
 *    ad_index_decode_frame and are decoded in part only, then freed
 *    mid-frame.
 *
 * The oracles, besides ASan, UBSan and LeakSanitizer: the two decodes
 * of a frame must agree (both fail, or both succeed with the same
 * bytes); an export read that succeeded must match the frame's bytes;
 * bytes emitted while indexing must match the frame; the index must be
 * contiguous and within the file; decoder_read never returns more than
 * it was asked for; a failure always fills the error; no read outside
 * the image or, while decoding one frame, outside [coff, coff + csize);
 * the cache is empty once the export is freed; a bzip2 frame indexed
 * by the sizing pass (which checked its CRC) decodes; block status
 * tiles the range asked from its start, and what it calls zeros reads
 * as zeros.  A broken oracle prints
 * "fuzz-format: ORACLE NAME: ..." and aborts, unless the environment
 * variable FUZZ_SKIP_ORACLE lists NAME (to fuzz on past a known bug).
 *
 * Total decoded output is bounded by BUDGET per input, so every input
 * runs in bounded time even when a few compressed bytes claim
 * gigabytes.
 *
 * xz protects every header, index and footer with a CRC32, so most
 * mutations of an xz file never get past the first CRC check.  A custom
 * mutator therefore recomputes those CRCs after three mutations in four
 * (of xz inputs only), letting the parser see inconsistent sizes.
 * Likewise for bzip2 inputs it rewrites each stream's combined CRC
 * (block CRCs cover decoded data, so they stay as mutated), and one
 * time in eight first writes a block or end-of-stream magic at a random
 * bit offset, a false magic for the parser to merge spans across.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>

#include <lzma.h>
#include <xxhash.h>

/* ASan's region check, in the ASan build only (FUZZ_SANITIZE=address,
 * the default; see build.sh).
 */
#if defined (__has_feature)
#if __has_feature (address_sanitizer)
#define FUZZ_ASAN 1
#endif
#endif
#ifdef FUZZ_ASAN
#include <sanitizer/asan_interface.h>
#else
#define __asan_region_is_poisoned(p, n) ((void *) 0)
#endif

#include "format-int.h"
#include "source.h"
#include "error.h"
#include "cache.h"
#include "buffer.h"
#include "export.h"

#ifndef FUZZ_FORMAT
#error "compile with -DFUZZ_FORMAT=AD_FORMAT_XZ (GZIP, BZIP2, ZSTD, LZIP, UNKNOWN)"
#endif

#define MAX_FRAME (8 * 1024 * 1024ULL)
#define BUDGET (32 * 1024 * 1024ULL)    /* Decoded bytes per input. */
#define CACHE_BYTES (16 * 1024 * 1024ULL)
#define SPILL_CHUNK (1024 * 1024ULL)    /* What spill.c decodes at once. */
#define MAX_READS 16                    /* Export reads per input. */
#define MAX_READ_LEN (64 * 1024)
#define PARTIAL_MAX (2 * 1024 * 1024ULL) /* Of a frame above max_frame. */
#define MAX_EMITS 4096                  /* Emitted frames remembered. */

/* Is the oracle called name switched off by FUZZ_SKIP_ORACLE (a comma
 * separated list), to fuzz on past a bug already reported?
 */
static bool
skipped (const char *name)
{
  const char *list = getenv ("FUZZ_SKIP_ORACLE"), *p;
  size_t len = strlen (name);

  for (p = list; p && *p; p += strcspn (p, ","), p += *p == ',')
    if (strncmp (p, name, len) == 0 && (p[len] == ',' || p[len] == '\0'))
      return true;
  return false;
}

/* A broken oracle: print it and abort, unless it is skipped. */
static void oracle (const char *name, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
oracle (const char *name, const char *fmt, ...)
{
  va_list ap;

  if (skipped (name))
    return;
  fprintf (stderr, "fuzz-format: ORACLE %s: ", name);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, " (FUZZ_SKIP_ORACLE=%s to go on past it)\n", name);
  abort ();
}

/* A function that returned -1 must have said why. */
static void
check_err (const struct ad_error *err, const char *what)
{
  if (err->msg[0] == '\0' || err->errnum == 0)
    oracle ("error", "%s failed without filling the error (errnum %d)", what,
            err->errnum);
}

/* splitmix64. */
static uint64_t
rng_next (uint64_t *s)
{
  uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);

  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* Uniform in [lo, hi] (hi >= lo). */
static uint64_t
rng_range (uint64_t *s, uint64_t lo, uint64_t hi)
{
  if (hi - lo == UINT64_MAX)
    return rng_next (s);
  return lo + rng_next (s) % (hi - lo + 1);
}

/* A chunk size for decoder_read, at most left (> 0): single bytes,
 * small, medium and large reads, or all of it.
 */
static size_t
pick_chunk (uint64_t *s, uint64_t left)
{
  uint64_t max;

  switch (rng_next (s) % 8) {
  case 0: max = 1; break;
  case 1: max = 16; break;
  case 2: max = 512; break;
  case 3: max = 4096; break;
  case 4: case 5: max = 65536; break;
  case 6: max = left; break;
  default: max = 1024 * 1024; break;
  }
  if (max > left)
    max = left;
  return rng_range (s, 1, max);
}

/* The source: the input in memory, behind a checker. */
struct checked_source {
  struct ad_source mem;         /* ad_source_init_mem over the input. */
  uint64_t lo, hi;              /* Reads allowed in [lo, hi). */
  const char *what;             /* What is reading, for the message. */
};

static int
checked_pread (void *opaque, void *buf, size_t count, uint64_t offset,
               struct ad_error *err)
{
  struct checked_source *cs = opaque;

  if (offset < cs->lo || offset > cs->hi || count > cs->hi - offset)
    oracle ("range",
            "%s read %zu bytes at offset %" PRIu64 ", outside [%" PRIu64
            ", %" PRIu64 ")", cs->what, count, offset, cs->lo, cs->hi);
  return cs->mem.pread (cs->mem.opaque, buf, count, offset, err);
}

/* A successful export read, kept to compare with the frames. */
struct read_rec {
  uint64_t off;
  size_t len;
  unsigned char *data;
};

/* A frame emitted while indexing: a hash of its bytes. */
struct emit_rec {
  size_t frame_no;
  uint64_t usize;
  uint64_t hash;
};

struct run {
  uint64_t rng;
  struct checked_source cs;
  struct ad_source src;
  struct ad_cache *cache;
  struct ad_export *exp;        /* NULL if only the index was opened. */
  struct ad_index *idx;
  uint64_t spent;               /* Decoded bytes so far. */
  struct read_rec reads[MAX_READS];
  size_t nreads;
  struct emit_rec emits[MAX_EMITS];
  size_t nemits;
  /* For FUZZ_VERBOSE. */
  unsigned nexport_ok, nexport_fail, nwhole_ok, nwhole_fail, npartial;
};

/* A hash of a buffer (of the input: the PRNG seed; of frames emitted
 * while indexing).  libxxhash is not instrumented, so this is cheap.
 */
static uint64_t
hash (const void *data, size_t size)
{
  return XXH64 (data, size, 0);
}

static bool
afford (struct run *r, uint64_t cost)
{
  if (cost > BUDGET - r->spent)
    return false;
  r->spent += cost;
  return true;
}

static void
set_range (struct run *r, uint64_t lo, uint64_t hi, const char *what)
{
  r->cs.lo = lo;
  r->cs.hi = hi;
  r->cs.what = what;
}

static void
whole_range (struct run *r)
{
  set_range (r, 0, r->src.size, "the library");
}

/* The frame table must be sorted, contiguous from 0, and within the
 * file, and a complete one must cover the image.
 */
static void
check_index (struct run *r)
{
  struct ad_index *idx = r->idx;
  uint64_t uoff = 0;
  size_t i, n = ad_index_nframes (idx);

  for (i = 0; i < n; i++) {
    struct ad_frame f;

    ad_index_get_frame (idx, i, &f);
    if (f.uoff != uoff)
      oracle ("index", "frame %zu starts at %" PRIu64 ", expected %" PRIu64,
              i, f.uoff, uoff);
    if (f.coff > r->src.size || f.csize > r->src.size - f.coff)
      oracle ("index", "frame %zu: compressed range %" PRIu64 "+%" PRIu64
              " is outside the %" PRIu64 "-byte file", i, f.coff, f.csize,
              r->src.size);
    uoff += f.usize;
  }
  if (uoff != ad_index_indexed (idx))
    oracle ("index", "frames add up to %" PRIu64 ", the index covers %" PRIu64,
            uoff, ad_index_indexed (idx));
  if (uoff > ad_index_size (idx))
    oracle ("index",
            "frames add up to %" PRIu64 ", more than the size %" PRIu64,
            uoff, ad_index_size (idx));
}

static void
emit_check (void *opaque, struct ad_index *idx, size_t frame_no,
            void **datap, size_t cap)
{
  struct run *r = opaque;
  const void *data = *datap;
  struct ad_frame f;

  ad_index_get_frame (idx, frame_no, &f);
  if (f.usize > cap)
    oracle ("emit", "frame %zu emitted while indexing: %" PRIu64 " bytes "
            "in a buffer of %zu", frame_no, f.usize, cap);
  if (cap > 0 && __asan_region_is_poisoned (*datap, cap))
    oracle ("emit", "frame %zu emitted while indexing: its buffer of %zu "
            "bytes is not all addressable", frame_no, cap);
  /* libxxhash is not instrumented: ask ASan whether all of it is ours. */
  if (f.usize > 0 && __asan_region_is_poisoned ((void *) data, f.usize))
    oracle ("emit", "frame %zu emitted while indexing: its %" PRIu64
            " bytes are not all addressable", frame_no, f.usize);
  if (r->nemits < MAX_EMITS) {
    struct emit_rec *e = &r->emits[r->nemits++];
    e->frame_no = frame_no;
    e->usize = f.usize;
    e->hash = hash (data, f.usize);
  }
  /* Take every other buffer, as the export does, leaving none (the
   * format then allocates one).
   */
  if (frame_no % 2) {
    ad_buffer_free (*datap, cap);
    *datap = NULL;
  }
}

/* What decoding [off, off + len) through the export costs: indexing
 * up to it, then each frame it touches (whole into the cache, or up
 * to the end of the range through the spill).  Frames indexed by the
 * read itself are emitted into the cache while indexing.  With probe,
 * frames above MAX_FRAME count too: ad_export_extents may decode one
 * (through a small buffer) to see whether it is all zeros.
 */
static uint64_t
range_cost (struct run *r, uint64_t off, size_t len, bool probe)
{
  uint64_t end = off + len, ix = ad_index_indexed (r->idx), pos = off;
  uint64_t cost = 0;
  struct ad_error err = { 0 };

  if (end > ix)
    cost += end - ix;
  while (pos < end && pos < ix) {
    struct ad_frame f;
    size_t no;
    uint64_t fend;

    if (ad_index_find (r->idx, &r->src, pos, &f, &no, NULL, NULL,
                       &err) == -1)
      oracle ("find", "ad_index_find of indexed offset %" PRIu64 " failed: %s",
              pos, err.msg);
    if (f.usize == 0 || f.uoff > pos || pos - f.uoff >= f.usize)
      oracle ("find", "ad_index_find (%" PRIu64 ") gave frame %zu at %" PRIu64
              "+%" PRIu64, pos, no, f.uoff, f.usize);
    fend = f.uoff + f.usize;
    if (f.usize > AD_LARGE_FRAME) {
      uint64_t upto = (end < fend ? end : fend) - f.uoff;
      cost += (upto + SPILL_CHUNK - 1) / SPILL_CHUNK * SPILL_CHUNK;
    }
    else if (f.usize <= MAX_FRAME || probe)
      cost += f.usize;
    pos = fend;
  }
  return cost;
}

static uint64_t
read_cost (struct run *r, uint64_t off, size_t len)
{
  return range_cost (r, off, len, false);
}

static void
export_read (struct run *r, uint64_t off, size_t len)
{
  struct ad_error err = { 0 };
  unsigned char *buf;

  if (len == 0 || off >= ad_index_size (r->idx))
    return;
  if (len > ad_index_size (r->idx) - off)
    len = ad_index_size (r->idx) - off;
  if (!afford (r, read_cost (r, off, len)))
    return;
  buf = malloc (len);
  if (buf == NULL)
    abort ();
  if (ad_export_pread (r->exp, &r->src, buf, len, off, &err) == -1) {
    check_err (&err, "ad_export_pread");
    r->nexport_fail++;
    free (buf);
    return;
  }
  r->nexport_ok++;
  if (r->nreads < MAX_READS) {
    r->reads[r->nreads].off = off;
    r->reads[r->nreads].len = len;
    r->reads[r->nreads].data = buf;
    r->nreads++;
  }
  else
    free (buf);
}

/* ad_export_prefetch decodes without copying (for a large frame, up to
 * the end of the range only).
 */
static void
export_prefetch (struct run *r, uint64_t off, size_t len)
{
  struct ad_error err = { 0 };

  if (len == 0 || off >= ad_index_size (r->idx))
    return;
  if (len > ad_index_size (r->idx) - off)
    len = ad_index_size (r->idx) - off;
  if (!afford (r, read_cost (r, off, len)))
    return;
  if (ad_export_prefetch (r->exp, &r->src, len, off, &err) == -1)
    check_err (&err, "ad_export_prefetch");
}

/* Block status as a client asks it: the runs must tile the range from
 * its start, and a run said to be zeros must read back as zeros.
 */
#define MAX_RUNS 16

struct runs {
  uint64_t next, end;
  size_t n;
  uint64_t off[MAX_RUNS], len[MAX_RUNS];
  bool zero[MAX_RUNS];
};

static int
record_run (void *opaque, uint64_t offset, uint64_t length, bool zero)
{
  struct runs *w = opaque;

  if (offset != w->next || length == 0 || length > w->end - offset)
    oracle ("extents", "a run of %" PRIu64 " bytes at %" PRIu64 ", expected "
            "one at %" PRIu64 " ending by %" PRIu64, length, offset, w->next,
            w->end);
  if (w->n < MAX_RUNS) {
    w->off[w->n] = offset;
    w->len[w->n] = length;
    w->zero[w->n] = zero;
    w->n++;
  }
  w->next = offset + length;
  return 0;
}

static void
export_extents (struct run *r, uint64_t off, size_t len)
{
  struct ad_error err = { 0 };
  struct runs w;
  unsigned char *buf;
  size_t i;

  if (len == 0 || off >= ad_index_size (r->idx))
    return;
  if (len > ad_index_size (r->idx) - off)
    len = ad_index_size (r->idx) - off;
  if (!afford (r, range_cost (r, off, len, true)))
    return;
  memset (&w, 0, sizeof w);
  w.next = off;
  w.end = off + len;
  if (ad_export_extents (r->exp, &r->src, len, off, record_run, &w,
                         &err) == -1) {
    check_err (&err, "ad_export_extents");
    return;
  }
  if (w.next == off)
    oracle ("extents", "no run described at %" PRIu64, off);
  /* Zeros must read as zeros (what the reads cost is paid above). */
  buf = malloc (MAX_READ_LEN);
  if (buf == NULL)
    abort ();
  for (i = 0; i < w.n; i++) {
    size_t n = w.len[i] < MAX_READ_LEN ? w.len[i] : MAX_READ_LEN, k;

    if (!w.zero[i] ||
        ad_export_pread (r->exp, &r->src, buf, n, w.off[i], &err) == -1)
      continue;
    for (k = 0; k < n; k++)
      if (buf[k] != 0)
        oracle ("extents", "the run of %" PRIu64 " bytes at %" PRIu64
                " is said to be zeros, but byte %" PRIu64 " reads 0x%02x",
                w.len[i], w.off[i], w.off[i] + k, buf[k]);
  }
  free (buf);
}

static size_t
pick_len (struct run *r)
{
  switch (rng_next (&r->rng) % 4) {
  case 0: return 1;
  case 1: return rng_range (&r->rng, 1, 512);
  case 2: return 4096;
  default: return rng_range (&r->rng, 1, MAX_READ_LEN);
  }
}

static void
export_reads (struct run *r)
{
  uint64_t size = ad_index_size (r->idx);
  size_t len, n, i;

  if (size == 0)
    return;
  /* The first bytes (a partition table), the last bytes (a GPT backup
   * header), then a few anywhere.
   */
  export_read (r, 0, pick_len (r));
  len = pick_len (r);
  export_read (r, len < size ? size - len : 0, len);
  export_prefetch (r, rng_range (&r->rng, 0, size - 1), pick_len (r));
  export_extents (r, rng_range (&r->rng, 0, size - 1),
                  rng_range (&r->rng, 1, 4 * MAX_READ_LEN));
  export_extents (r, 0, rng_range (&r->rng, 1, 4 * MAX_READ_LEN));
  for (i = 0; i < 4; i++)
    export_read (r, rng_range (&r->rng, 0, size - 1), pick_len (r));

  /* Across frame boundaries of the frames known now. */
  n = ad_index_nframes (r->idx);
  for (i = 0; i < 3 && n > 1; i++) {
    struct ad_frame f;
    size_t k = rng_range (&r->rng, 1, n - 1);

    ad_index_get_frame (r->idx, k, &f);
    if (f.uoff > 0) {
      uint64_t back = rng_range (&r->rng, 1, f.uoff < 4096 ? f.uoff : 4096);
      export_read (r, f.uoff - back, back + rng_range (&r->rng, 1, 4096));
    }
  }
}

/* Decode a frame through the streaming interface into out (usize
 * bytes), in chunks of random sizes, stopping after limit bytes if
 * limit < usize (out then holds at least limit bytes).  Returns 0 if
 * the whole frame decoded and passed the end-of-frame read, 1 if it
 * stopped at limit, -1 on error.
 */
static int
stream_frame (struct run *r, const struct ad_frame *f, size_t frame_no,
              unsigned char *out, uint64_t limit, struct ad_error *err)
{
  const struct ad_format_ops *ops = r->idx->ops;
  void *dec = NULL;
  uint64_t done = 0;
  int ret = -1;

  set_range (r, f->coff, f->coff + f->csize, "decoder_read (streaming)");
  if (ops->decoder_new (r->idx, f, frame_no, &dec, err) == -1) {
    check_err (err, "decoder_new");
    goto out;
  }
  while (done < f->usize && done < limit) {
    uint64_t left = (limit < f->usize ? limit : f->usize) - done;
    size_t chunk = pick_chunk (&r->rng, left);
    ssize_t n = ops->decoder_read (dec, &r->src, out + done, chunk, err);

    if (n == -1) {
      check_err (err, "decoder_read");
      goto out;
    }
    if (n < -1 || (size_t) n > chunk)
      oracle ("count", "decoder_read returned %zd, asked for %zu", n, chunk);
    if (n == 0) {
      ad_error_set (err, EIO, "stream: decodes to %" PRIu64 " bytes, fewer "
                    "than the %" PRIu64 " declared", done, f->usize);
      goto out;
    }
    done += n;
  }
  if (done < f->usize) {
    ret = 1;                    /* Freed mid-frame below. */
    goto out;
  }
  {
    char extra[2];
    ssize_t n = ops->decoder_read (dec, &r->src, extra, 1, err);

    if (n == -1) {
      check_err (err, "decoder_read at the end");
      goto out;
    }
    if (n != 0 && n != 1)
      oracle ("count", "decoder_read returned %zd, asked for 1", n);
    if (n > 0) {
      ad_error_set (err, EIO, "stream: decodes to more than %" PRIu64
                    " bytes", f->usize);
      goto out;
    }
    /* Once at the end it stays there. */
    n = ops->decoder_read (dec, &r->src, extra, 1, err);
    if (n != 0)
      oracle ("count", "decoder_read after the end returned %zd", n);
  }
  ret = 0;
 out:
  if (dec)
    ops->decoder_free (dec);
  whole_range (r);
  return ret;
}

/* Compare the first have bytes of a decoded frame with what the export
 * read and (if it is the whole frame) what the indexing pass emitted.
 */
static void
compare_frame (struct run *r, const struct ad_frame *f, size_t frame_no,
               const unsigned char *data, uint64_t have)
{
  size_t i;

  for (i = 0; i < r->nreads; i++) {
    const struct read_rec *rd = &r->reads[i];
    uint64_t lo = rd->off > f->uoff ? rd->off : f->uoff;
    uint64_t hi_r = rd->off + rd->len, hi_f = f->uoff + have;
    uint64_t hi = hi_r < hi_f ? hi_r : hi_f;

    if (lo < hi &&
        memcmp (rd->data + (lo - rd->off), data + (lo - f->uoff),
                hi - lo) != 0)
      oracle ("export",
              "export read of %zu bytes at %" PRIu64 " differs from frame "
              "%zu (%" PRIu64 "+%" PRIu64 ")", rd->len, rd->off, frame_no,
              f->uoff, f->usize);
  }
  for (i = 0; have == f->usize && i < r->nemits; i++)
    if (r->emits[i].frame_no == frame_no &&
        (r->emits[i].usize != f->usize ||
         r->emits[i].hash != hash (data, f->usize)))
      oracle ("emit",
              "frame %zu emitted while indexing differs from its decode",
              frame_no);
}

static void
decode_one (struct run *r, const struct ad_frame *f, size_t frame_no)
{
  struct ad_error err1 = { 0 }, err2 = { 0 };
  unsigned char *a, *b;
  int r1, r2;

  if (f->usize > MAX_FRAME) {
    /* Must be refused before anything is decoded. */
    char dummy;
    uint64_t limit;

    if (ad_index_decode_frame (r->idx, &r->src, f, frame_no, &dummy,
                               &err1) != -1)
      oracle ("max-frame", "frame %zu of %" PRIu64 " bytes was not refused by "
              "max_frame", frame_no, f->usize);
    check_err (&err1, "ad_index_decode_frame (max_frame)");

    /* A prefix through the streaming interface, as the spill does. */
    limit = rng_range (&r->rng, 1, PARTIAL_MAX);
    if (!afford (r, limit))
      return;
    a = malloc (limit);
    if (a == NULL)
      abort ();
    /* Only limit bytes: every chunk asks for at most limit - done. */
    r->npartial++;
    if (stream_frame (r, f, frame_no, a, limit, &err2) == 1)
      compare_frame (r, f, frame_no, a, limit);
    free (a);
    return;
  }

  if (!afford (r, 2 * f->usize))
    return;
  a = malloc (f->usize ? f->usize : 1);
  b = malloc (f->usize ? f->usize : 1);
  if (a == NULL || b == NULL)
    abort ();
  set_range (r, f->coff, f->coff + f->csize, "ad_index_decode_frame");
  r1 = ad_index_decode_frame (r->idx, &r->src, f, frame_no, a, &err1);
  whole_range (r);
  if (r1 == -1)
    check_err (&err1, "ad_index_decode_frame");
  /* bzip2's sizing pass decoded every block and checked its CRC, with
   * libbz2 or with lib/bzip2-decode.c, which must agree with libbz2: so
   * libbz2 must now decode the frame to the size the pass found.
   */
  if (r1 == -1 && ad_index_format (r->idx) == AD_FORMAT_BZIP2 &&
      err1.errnum != ENOMEM)
    oracle ("bzip2-size", "frame %zu (%" PRIu64 " bytes by the sizing "
            "pass) does not decode: %s", frame_no, f->usize, err1.msg);
  r2 = stream_frame (r, f, frame_no, b, f->usize, &err2);
  if (r1 != r2)
    oracle ("stream",
            "frame %zu (%" PRIu64 "+%" PRIu64 " at compressed %" PRIu64
            "+%" PRIu64 "): ad_index_decode_frame %s%s, streaming decode "
            "%s%s", frame_no, f->uoff, f->usize, f->coff, f->csize,
            r1 ? "failed: " : "succeeded", r1 ? err1.msg : "",
            r2 ? "failed: " : "succeeded", r2 ? err2.msg : "");
  if (r1 == 0)
    r->nwhole_ok++;
  else
    r->nwhole_fail++;
  if (r1 == 0) {
    if (memcmp (a, b, f->usize) != 0)
      oracle ("stream",
              "frame %zu: whole and streaming decodes differ", frame_no);
    if ((f->flags & AD_FRAME_ZERO) && !ad_is_zero (a, f->usize))
      oracle ("zero-flag", "frame %zu is flagged zero but is not", frame_no);
    compare_frame (r, f, frame_no, a, f->usize);
  }
  free (a);
  free (b);
}

/* Every frame in order, extending a lazy index as it goes. */
static void
decode_all (struct run *r)
{
  struct ad_index *idx = r->idx;
  size_t i;

  for (i = 0; r->spent < BUDGET; i++) {
    struct ad_frame f;

    if (i >= ad_index_nframes (idx)) {
      uint64_t ix = ad_index_indexed (idx);
      struct ad_error err = { 0 };
      size_t no;

      if (ix >= ad_index_size (idx))
        break;
      /* Indexing decodes at least the next span. */
      if (!afford (r, idx->opts.gzip_span))
        break;
      if (ad_index_find (idx, &r->src, ix, &f, &no, emit_check, r,
                         &err) == -1) {
        check_err (&err, "ad_index_find");
        /* Once more: a lazy pass that failed rewinds to its last
         * checkpoint (or the start of the file) and must fail the same
         * way on the same bytes, without a crash.
         */
        memset (&err, 0, sizeof err);
        if (ad_index_find (idx, &r->src, ix, &f, &no, emit_check, r,
                           &err) == -1) {
          check_err (&err, "ad_index_find (again)");
          break;
        }
        oracle ("find", "ad_index_find (%" PRIu64 ") failed, then "
                "succeeded on the same bytes", ix);
      }
      if (ad_index_indexed (idx) <= ix)
        oracle ("find",
                "ad_index_find (%" PRIu64 ") succeeded without indexing "
                "it", ix);
      if (ad_index_indexed (idx) - ix > idx->opts.gzip_span)
        r->spent += ad_index_indexed (idx) - ix - idx->opts.gzip_span;
      check_index (r);
      if (i >= ad_index_nframes (idx))
        oracle ("find", "the index grew to %" PRIu64 " but has no frame %zu",
                ad_index_indexed (idx), i);
    }
    ad_index_get_frame (idx, i, &f);
    decode_one (r, &f, i);
  }
}

static int
open_image (struct run *r, const struct ad_options *opts)
{
  struct ad_error err = { 0 };
  enum ad_format want = FUZZ_FORMAT, found;

  found = ad_detect (&r->src, &err);
  if (found == AD_FORMAT_UNKNOWN)
    oracle ("detect", "ad_detect failed on a memory source: %s", err.msg);
  if (want == AD_FORMAT_UNKNOWN || want == found) {
    /* One cache for the process, as in the filter: an export drops its
     * entries when freed (checked in close_image), so no state carries
     * over from one input to the next.
     */
    static struct ad_cache *cache;

    if (cache == NULL && (cache = ad_cache_new (CACHE_BYTES)) == NULL)
      abort ();
    r->cache = cache;
    r->exp = ad_export_open (&r->src, want, opts, r->cache, NULL, &err);
    if (r->exp == NULL) {
      check_err (&err, "ad_export_open");
      if (getenv ("FUZZ_VERBOSE"))
        fprintf (stderr, "fuzz-format: %s: %s\n", "ad_export_open", err.msg);
      return -1;
    }
    if (ad_export_format (r->exp) != found)
      oracle ("detect",
              "detected %s, the export is %s", ad_format_name (found),
              ad_format_name (ad_export_format (r->exp)));
    r->idx = ad_export_index (r->exp);
    if (ad_export_format (r->exp) == AD_FORMAT_RAW) {
      if (r->idx != NULL || ad_export_size (r->exp) != r->src.size)
        oracle ("detect", "a raw export has an index or the wrong size");
      return -1;
    }
    if (ad_export_size (r->exp) != ad_index_size (r->idx))
      oracle ("size", "export size %" PRIu64 ", index size %" PRIu64,
              ad_export_size (r->exp), ad_index_size (r->idx));
  }
  else {
    r->idx = ad_index_open (want, &r->src, opts, &err);
    if (r->idx == NULL) {
      check_err (&err, "ad_index_open");
      if (getenv ("FUZZ_VERBOSE"))
        fprintf (stderr, "fuzz-format: %s: %s\n", "ad_index_open", err.msg);
      return -1;
    }
  }
  return 0;
}

static void
close_image (struct run *r)
{
  size_t i;

  if (r->exp) {
    ad_export_free (r->exp);
    if (r->cache) {
      struct ad_cache_stats st;

      ad_cache_get_stats (r->cache, &st);
      if (st.entries != 0 || st.bytes != 0)
        oracle ("cache",
                "the cache holds %" PRIu64 " entries (%" PRIu64 " bytes) "
                "after the export was freed", st.entries, st.bytes);
    }
  }
  else
    ad_index_free (r->idx);
  for (i = 0; i < r->nreads; i++)
    free (r->reads[i].data);
}

/* xz: recompute the CRC32s of the Stream Headers and Footers, the
 * Indexes and the Block Headers that can be found walking the file
 * backwards, as xz.c does.  Stops at the first thing that does not
 * parse.
 */
static bool
get_vli (const unsigned char *p, size_t len, size_t *pos, uint64_t *v)
{
  unsigned i;

  *v = 0;
  for (i = 0; i < 9 && *pos < len; i++) {
    unsigned char b = p[(*pos)++];
    *v |= (uint64_t) (b & 0x7f) << (7 * i);
    if (!(b & 0x80))
      return true;
  }
  return false;
}

/* Walk the Index records of size len at index: the sum of the Blocks'
 * Total Sizes (Unpadded Size, which includes the Check, rounded up to
 * four), and (if d is not NULL) fix each Block Header's CRC32, the
 * Blocks starting at p.
 */
static bool
xz_walk_index (const unsigned char *index, size_t len, unsigned char *d,
               uint64_t p, uint64_t end, uint64_t *total)
{
  size_t ip = 1;
  uint64_t n, i;

  *total = 0;
  if (len < 1 || index[0] != 0 || !get_vli (index, len, &ip, &n))
    return false;
  for (i = 0; i < n; i++) {
    uint64_t unpadded, usize, t;

    if (!get_vli (index, len, &ip, &unpadded) ||
        !get_vli (index, len, &ip, &usize) || unpadded > UINT32_MAX)
      return false;
    t = (unpadded + 3) / 4 * 4;         /* Total Size. */
    if (d) {
      uint64_t hsize;

      if (p >= end || d[p] == 0)
        return false;
      hsize = (d[p] + 1) * 4;
      if (hsize > end - p)
        return false;
      ad_put_le32 (d + p + hsize - 4, lzma_crc32 (d + p, hsize - 4, 0));
      p += t;
    }
    *total += t;
  }
  return true;
}

static void
xz_fix_crcs (unsigned char *d, size_t size)
{
  uint64_t pos = size / 4 * 4;
  int streams;

  for (streams = 0; streams < 64; streams++) {
    unsigned char *foot;
    uint64_t bsize, index_start, blocks, start;

    while (pos >= 4 && (d[pos - 4] | d[pos - 3] | d[pos - 2] | d[pos - 1])
           == 0)
      pos -= 4;
    if (pos < 24)
      return;
    foot = d + pos - 12;
    if (foot[10] != 'Y' || foot[11] != 'Z')
      return;
    ad_put_le32 (foot, lzma_crc32 (foot + 4, 6, 0));
    bsize = ((uint64_t) ad_le32 (foot + 4) + 1) * 4;
    if (bsize < 8 || bsize > pos - 24)
      return;
    index_start = pos - 12 - bsize;
    ad_put_le32 (d + index_start + bsize - 4,
              lzma_crc32 (d + index_start, bsize - 4, 0));
    if (!xz_walk_index (d + index_start, bsize - 4, NULL, 0, 0, &blocks) ||
        blocks > index_start - 12)
      return;
    start = index_start - blocks - 12;
    ad_put_le32 (d + start + 8, lzma_crc32 (d + start + 6, 2, 0));
    xz_walk_index (d + index_start, bsize - 4, d, start + 12, index_start,
                   &blocks);
    pos = start;
  }
}

/* bzip2: block CRCs cover the decoded data and cannot be fixed up
 * cheaply, but the combined CRC of each stream (after the end-of-stream
 * magic: the block CRCs folded together) can.  Find the magics at every
 * bit offset (a byte of the magic prefilters, as lib/bzip2.c does with
 * two), fold the CRC after each block magic, and write the result after
 * each end-of-stream magic, so that mutations that drop, duplicate or
 * reorder blocks get past the combined CRC check.
 */
#define BZ_BLOCK_MAGIC 0x314159265359ULL
#define BZ_EOS_MAGIC 0x177245385090ULL
#define BZ_MASK48 ((1ULL << 48) - 1)

static uint64_t
bz_get_bits (const unsigned char *d, uint64_t pos, unsigned n)
{
  uint64_t v = 0;

  while (n-- > 0) {
    v = (v << 1) | ((d[pos / 8] >> (7 - pos % 8)) & 1);
    pos++;
  }
  return v;
}

static void
bz_put_bits (unsigned char *d, uint64_t pos, uint64_t v, unsigned n)
{
  while (n-- > 0) {
    unsigned char bit = 0x80 >> (pos % 8);

    if ((v >> n) & 1)
      d[pos / 8] |= bit;
    else
      d[pos / 8] &= ~bit;
    pos++;
  }
}

static void
bz_fix_crcs (unsigned char *d, size_t size)
{
  static bool table[256];
  static bool table_done;
  uint32_t combined = 0;
  size_t i;

  if (!table_done) {
    unsigned k;

    for (k = 0; k < 8; k++) {
      table[(BZ_BLOCK_MAGIC >> (16 - k)) & 0xff] = true;
      table[(BZ_EOS_MAGIC >> (16 - k)) & 0xff] = true;
    }
    table_done = true;
  }
  /* i is the byte holding the magic's last bit; byte i - 2 lies inside
   * the magic whatever its bit offset.
   */
  for (i = 7; i < size; i++) {
    uint64_t reg;
    int k;

    if (!table[d[i - 2]])
      continue;
    reg = ((uint64_t) d[i - 7] << 56) | ((uint64_t) d[i - 6] << 48) |
      ((uint64_t) d[i - 5] << 40) | ((uint64_t) d[i - 4] << 32) |
      ((uint64_t) d[i - 3] << 24) | ((uint64_t) d[i - 2] << 16) |
      ((uint64_t) d[i - 1] << 8) | d[i];
    for (k = 7; k >= 0; k--) {
      uint64_t v = (reg >> k) & BZ_MASK48;
      uint64_t end = (uint64_t) i * 8 + 8 - k;      /* After the magic. */

      if (end + 32 > (uint64_t) size * 8)
        continue;
      if (v == BZ_BLOCK_MAGIC)
        combined = ((combined << 1) | (combined >> 31)) ^
          (uint32_t) bz_get_bits (d, end, 32);
      else if (v == BZ_EOS_MAGIC) {
        bz_put_bits (d, end, combined, 32);
        combined = 0;
      }
    }
  }
}

/* bzip2: overwrite 48 bits at a random bit offset with a block or an
 * end-of-stream magic, as chance (or an attacker) may put inside a
 * block: the false magics that lib/bzip2.c merges spans across.
 */
static void
bz_insert_magic (unsigned char *d, size_t size, unsigned seed)
{
  uint64_t nbits = (uint64_t) size * 8;

  if (nbits < 48)
    return;
  bz_put_bits (d, (seed >> 4) % (nbits - 48 + 1),
               seed & 8 ? BZ_EOS_MAGIC : BZ_BLOCK_MAGIC, 48);
}

size_t LLVMFuzzerMutate (uint8_t *data, size_t size, size_t max_size);

size_t
LLVMFuzzerCustomMutator (uint8_t *data, size_t size, size_t max_size,
                         unsigned int seed)
{
  static const unsigned char xz_magic[6] = { 0xfd, '7', 'z', 'X', 'Z', 0 };

  size = LLVMFuzzerMutate (data, size, max_size);
  if (seed % 4 != 0 &&
      (FUZZ_FORMAT == AD_FORMAT_XZ ||
       (size >= 6 && memcmp (data, xz_magic, 6) == 0)))
    xz_fix_crcs (data, size);
  if (FUZZ_FORMAT == AD_FORMAT_BZIP2 ||
      (size >= 3 && memcmp (data, "BZh", 3) == 0)) {
    if (seed % 8 == 1)
      bz_insert_magic (data, size, seed);
    if (seed % 4 != 0)
      bz_fix_crcs (data, size);
  }
  return size;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static struct run run;        /* Large: keep it off the stack. */
  struct run *r = &run;
  struct ad_options opts;

  memset (r, 0, sizeof *r);
  r->rng = hash (data, size);

  ad_source_init_mem (&r->cs.mem, data, size);
  r->src = r->cs.mem;
  r->src.pread = checked_pread;
  r->src.opaque = &r->cs;
  whole_range (r);

  ad_options_init (&opts);
  opts.max_frame = MAX_FRAME;
  opts.gzip_span = rng_next (&r->rng) & 1 ? 64 * 1024 : 32 * 1024;
  opts.threads = 1 + (rng_next (&r->rng) & 1);

  if (open_image (r, &opts) == 0) {
    if (ad_index_size (r->idx) > INT64_MAX)
      oracle ("size",
              "image size %" PRIu64 " is above INT64_MAX",
              ad_index_size (r->idx));
    check_index (r);
    if (r->exp)
      export_reads (r);
    check_index (r);
    decode_all (r);
    check_index (r);
    if (getenv ("FUZZ_VERBOSE"))
      fprintf (stderr, "fuzz-format: %s %" PRIu64 " bytes, %zu frames%s; "
               "export reads %u ok %u failed; frames decoded %u ok %u "
               "failed, %u in part; %" PRIu64 " bytes decoded\n",
               r->idx->ops->name, ad_index_size (r->idx),
               ad_index_nframes (r->idx),
               ad_index_complete (r->idx) ? "" : " (index incomplete)",
               r->nexport_ok, r->nexport_fail, r->nwhole_ok, r->nwhole_fail,
               r->npartial, r->spent);
  }
  close_image (r);
  return 0;
}
