/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the sizing pass over a bzip2 image (see bzip2.c, step 1):
 * the block-magic scanner, with its hit table and its read window, and
 * the jobs that size candidate blocks on the workers, keeping their
 * bytes.
 *
 * The scanner looks for both magics at every bit offset: for each
 * byte, a 65536-entry table indexed by the two bytes 3 and 2 before it
 * (16 bits that lie inside a magic ending in this byte, whatever its
 * bit offset) says which of the 16 (magic, shift) forms may end here;
 * only then (about one byte in 4096 on random data) are the 8 bytes
 * ending here loaded as a 64-bit big-endian shift register for the
 * full 48-bit compares.  This runs at about 1 GB/s.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <bzlib.h>

#include "bzip2-int.h"
#include "bzip2-decode.h"

#define MASK48 ((1ULL << 48) - 1)

/* The image is read in chunks this large. */
#define SCAN_CHUNK (8 * 1024 * 1024)

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
 * (bzip2-decode.c), so a kept block is as verified as a decoded one.
 */

struct job {
  struct bz_hit *hit;
  unsigned char *buf;           /* The rewrapped stream. */
  size_t len;
  uint64_t nbits;
  int level;
};

/* A worker's buffer for the bytes of the block it sizes. */
struct keep_buf {
  unsigned char *data;
  size_t cap;
};

/* Create the keep file; on failure keep nothing (the pass only runs
 * slower for it).
 */
void
bz_keep_open (struct bz_keep *k, uint64_t max)
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
 * bzip2-decode.c), writing its bytes to the keep file if there is room.
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

void *
bz_worker_new (void *ctx)
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

void
bz_worker_free (void *ctx, void *state)
{
  struct bz_worker *w = state;

  if (w == NULL)
    return;
  bz_arena_release (&w->arena);
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
bool
bz_run_job (void *ctx, void *state, void *vjob, bool drop)
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
    /* Sized without libbz2 (see bzip2-decode.c), CRC checked. */
    job->hit->status = SPEC_OK;
    job->hit->need_more = 0;
    job->hit->bzret = BZ_OK;
    job->hit->usize = usize;
    job->hit->zero = zero;
  }
  else {
    bz_decode_rewrapped (job->buf, job->len, job->nbits, job->level,
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
  h = bz_hit_at (t, t->n++);
  memset (h, 0, sizeof *h);
  return h;
}

void
bz_hit_table_free (struct hit_table *t)
{
  size_t i;

  for (i = 0; i < t->nsegs; i++)
    free (t->segs[i]);
  free (t->segs);
}

/*----------------------------------------------------------------------
 * The scanner.
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
  uint64_t wend = st->wend, wstart = st->win.base;
  uint64_t hb = h->bit / 8;

  if (h->bit % 8 == 0 && hb >= 4 && hb - 4 >= wstart && hb <= wend) {
    const unsigned char *q = ad_window_at (&st->win, hb - 4);
    if (q[0] == 'B' && q[1] == 'Z' && q[2] == 'h' &&
        q[3] >= '1' && q[3] <= '9')
      h->pre_level = q[3] - '0';
  }
  if ((h->bit + MARKER_BITS + 7) / 8 <= wend && hb >= wstart) {
    h->crc = get_bits32 (ad_window_at (&st->win, hb), h->bit % 8 + 48);
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
   * jobs are queued and the workers drop those queued (see bz_run_job),
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
  job->len = bz_rewrap_size (nbits);
  job->buf = malloc (job->len);
  if (job->buf == NULL) {
    free (job);
    return ad_error_set (err, ENOMEM, "malloc: %m");
  }
  bz_rewrap (job->buf, ad_window_at (&st->win, h->bit / 8), h->bit % 8,
             nbits, level, h->crc);
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
  uint64_t wend = st->wend;

  while (st->next_fin < st->hits.n) {
    struct bz_hit *h = bz_hit_at (&st->hits, st->next_fin);
    int have_next = st->next_fin + 1 < st->hits.n;

    if (!eof && (h->bit + MARKER_BITS + 7) / 8 > wend)
      break;
    if (!eof && h->type == HIT_BLOCK && !have_next)
      break;
    snapshot (st, h);
    if (h->pre_level)
      st->cur_level = h->pre_level;
    if (h->type == HIT_BLOCK && have_next && st->cur_level && h->crc_ok) {
      struct bz_hit *next = bz_hit_at (&st->hits, st->next_fin + 1);
      if (queue_span (st, h, next->bit, err) == -1)
        return -1;
    }
    st->next_fin++;
  }
  return 0;
}

/* Where the window may start: before it lie only bytes nobody needs
 * any more.  Finalizes the hits whose span has grown too long for any
 * block.
 */
static uint64_t
window_keep (struct bz_open *st)
{
  uint64_t wend = st->wend;
  uint64_t keep;

  while (st->next_fin < st->hits.n) {
    struct bz_hit *h = bz_hit_at (&st->hits, st->next_fin);
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
    uint64_t hb = bz_hit_at (&st->hits, st->next_fin)->bit / 8;
    hb = hb >= 4 ? hb - 4 : 0;
    if (hb < keep)
      keep = hb;
  }
  if (keep < st->win.base)
    keep = st->win.base;
  return keep;
}

/* Read the whole image, finding its magics and queueing the decodes of
 * the candidate blocks between them on the workers.
 */
int
bz_sizing_scan (struct bz_open *st, struct ad_error *err)
{
  struct ad_source *src = st->src;

  pthread_once (&scan_table_once, init_scan_table);
  ad_window_init (&st->win, src, 0, src->size);
  st->win.chunk = 0;            /* Each read holds what is asked. */
  st->wend = 0;
  while (st->wend < src->size) {
    uint64_t wend = st->wend, keep = window_keep (st);
    size_t n, i, avail;
    const unsigned char *p;

    n = src->size - wend < SCAN_CHUNK ? src->size - wend : SCAN_CHUNK;
    if (ad_window_need (&st->win, keep, wend - keep + n, &avail,
                        err) == NULL)
      return -1;
    p = ad_window_at (&st->win, wend);
    for (i = n; i > 0; i--)
      if (p[i - 1] != 0) {
        st->have_nonzero = 1;
        st->last_nonzero = wend + i - 1;
        break;
      }
    if (scan_bytes (st, p, n, err) == -1)
      return -1;
    st->wend += n;
    if (finalize_hits (st, st->wend == src->size, err) == -1)
      return -1;
  }
  return finalize_hits (st, 1, err);
}
