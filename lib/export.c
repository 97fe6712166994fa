/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: one served image, shared by every connection: the read
 * path (see export.h).
 *
 * A read is split at frame boundaries.  Each piece takes the cache
 * entry of its frame, creating it on a miss; the entries this read
 * created are decoded (see export-jobs.c), read-ahead is started for a
 * sequential reader (see export-ahead.c), and each piece is copied out
 * once its bytes are there.  A frame too large for the cache is served
 * from the spill instead.  Where frame sizes are unchecked, a frame is
 * served only once its offset is proven (see export-proof.c).  Extents
 * and find walk the same index without decoding into memory.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "export-int.h"
#include "frame.h"

struct ad_export *
ad_export_open (struct ad_source *src, enum ad_format format,
                const struct ad_options *opts, struct ad_cache *cache,
                const struct ad_export_config *config, struct ad_error *err)
{
  struct ad_open_source os;
  struct ad_fetch_source fs;
  struct ad_fetch *fetch = NULL;
  struct ad_export *exp;
  enum ad_format found;

  /* Detect and open through the windows (see source.h), and for the
   * walks over the whole image through the fetcher (see fetch.h); the
   * caller's counters still see every read below.
   */
  if (opts->fetch_size > 0) {
    fetch = ad_fetch_new (opts->fetch_size, cache);
    if (fetch == NULL) {
      ad_error_set (err, errno, "calloc: %m");
      return NULL;
    }
  }
  ad_open_source_init (&os, ad_fetch_wrap (&fs, fetch, src));
  src = &os.src;
  found = ad_detect (src, err);
  if (found == AD_FORMAT_UNKNOWN) {
    ad_fetch_free (fetch);
    return NULL;
  }
  if (format == AD_FORMAT_UNKNOWN)
    format = found;
  else if (format != found && format != AD_FORMAT_RAW) {
    if (found == AD_FORMAT_RAW)
      ad_error_set (err, EINVAL, "autodecomp-format=%s, but the image "
                    "does not start with the %s magic bytes (it looks "
                    "uncompressed)", ad_format_name (format),
                    ad_format_name (format));
    else
      ad_error_set (err, EINVAL, "autodecomp-format=%s, but the image is "
                    "%s (found by its magic bytes)", ad_format_name (format),
                    ad_format_name (found));
    ad_fetch_free (fetch);
    return NULL;
  }

  exp = calloc (1, sizeof *exp);
  if (exp == NULL) {
    ad_error_set (err, errno, "calloc: %m");
    ad_fetch_free (fetch);
    return NULL;
  }
  exp->format = format;
  exp->cache = cache;
  exp->fetch = fetch;
  if (config)
    exp->config = *config;
  pthread_mutex_init (&exp->lock, NULL);
  pthread_cond_init (&exp->jobs_done, NULL);
  export_zero_init (exp);
  if (format == AD_FORMAT_RAW) {
    exp->size = src->size;
    return exp;
  }
  exp->idx = ad_index_open (format, src, opts, err);
  if (exp->idx == NULL) {
    ad_export_free (exp);
    return NULL;
  }
  exp->size = exp->idx->size;
  return exp;
}

void
ad_export_free (struct ad_export *exp)
{
  if (exp == NULL)
    return;
  /* Read-ahead jobs may outlive the reader that started them. */
  pthread_mutex_lock (&exp->lock);
  while (exp->jobs > 0)
    pthread_cond_wait (&exp->jobs_done, &exp->lock);
  pthread_mutex_unlock (&exp->lock);
  if (exp->cache)
    ad_cache_drop_owner (exp->cache, exp);
  ad_spill_free (exp->spill);
  ad_fetch_free (exp->fetch);
  free (exp->decoded_once);
  ad_index_free (exp->idx);
  export_zero_free (exp);
  pthread_cond_destroy (&exp->jobs_done);
  pthread_mutex_destroy (&exp->lock);
  free (exp);
}

enum ad_format
ad_export_format (const struct ad_export *exp)
{
  return exp->format;
}

uint64_t
ad_export_size (const struct ad_export *exp)
{
  return exp->size;
}

struct ad_index *
ad_export_index (const struct ad_export *exp)
{
  return exp->idx;
}

void
ad_export_get_stats (struct ad_export *exp, struct ad_export_stats *stats)
{
  struct ad_spill *spill;

  memset (stats, 0, sizeof *stats);
  if (exp->idx)
    ad_index_get_stats (exp->idx, &stats->index);
  stats->readahead_frames = __atomic_load_n (&exp->readahead_frames,
                                             __ATOMIC_RELAXED);
  stats->zero_probes = __atomic_load_n (&exp->zero_probes, __ATOMIC_RELAXED);
  stats->zero_memo_hits = __atomic_load_n (&exp->zero_memo_hits,
                                           __ATOMIC_RELAXED);
  pthread_mutex_lock (&exp->lock);
  spill = exp->spill;
  pthread_mutex_unlock (&exp->lock);
  stats->spill_bytes = ad_spill_total (spill);
  stats->fetcher = exp->fetch != NULL;
  if (exp->fetch)
    ad_fetch_stats (exp->fetch, &stats->fetch_hits, &stats->fetches,
                    &stats->fetches_ahead);
}

/* Frames that the index decodes anyway (the gzip pass) go to the cache. */
static void
emit_to_cache (void *opaque, struct ad_index *idx, size_t frame_no,
               void **data, size_t cap)
{
  struct ad_export *exp = opaque;
  struct ad_frame frame;

  ad_index_get_frame (idx, frame_no, &frame);
  if (frame.usize == cap && cap <= AD_LARGE_FRAME)
    *data = ad_cache_insert_take (exp->cache, exp, frame_no, *data, cap);
  else if (frame.usize <= AD_LARGE_FRAME)
    ad_cache_insert (exp->cache, exp, frame_no, *data, frame.usize);
  export_mark_decoded (exp, frame_no);
}

/* A format that indexes lazily (gzip) appends a frame to the index and
 * then emits its bytes to the cache, both while holding advance_lock.
 * A reader that finds the newest frame before it is in the cache waits
 * for that advance to finish instead of decoding the frame again.
 */
static void
wait_for_emit (struct ad_export *exp, size_t frame_no)
{
  struct ad_index *idx = exp->idx;

  if (idx->ops->advance && frame_no + 1 == ad_index_nframes (idx) &&
      !ad_cache_contains (exp->cache, exp, frame_no)) {
    pthread_mutex_lock (&idx->advance_lock);
    pthread_mutex_unlock (&idx->advance_lock);
  }
}

struct ad_reader *
ad_reader_new (void)
{
  struct ad_reader *reader = calloc (1, sizeof *reader);

  if (reader == NULL)
    return NULL;
  pthread_mutex_init (&reader->lock, NULL);
  pthread_mutex_init (&reader->ahead_lock, NULL);
  pthread_cond_init (&reader->cond, NULL);
  return reader;
}

void
ad_reader_free (struct ad_reader *reader)
{
  struct ad_export *exp;
  struct ad_reader **p;

  if (reader == NULL)
    return;
  exp = reader->exp;
  ad_reader_stop_background (reader);
  if (exp) {
    ad_fetch_forget (exp->fetch, reader);
    pthread_mutex_lock (&exp->lock);
    for (p = &exp->readers; *p; p = &(*p)->next)
      if (*p == reader) {
        *p = reader->next;
        break;
      }
    pthread_mutex_unlock (&exp->lock);
  }
  pthread_cond_destroy (&reader->cond);
  pthread_mutex_destroy (&reader->ahead_lock);
  pthread_mutex_destroy (&reader->lock);
  free (reader);
}

static struct ad_spill *
get_spill (struct ad_export *exp, struct ad_error *err)
{
  struct ad_spill *spill;

  pthread_mutex_lock (&exp->lock);
  if (exp->spill == NULL)
    exp->spill = ad_spill_new (exp->idx, err);
  spill = exp->spill;
  pthread_mutex_unlock (&exp->lock);
  return spill;
}

/* Find the frames of [offset, offset + count) and take their cache
 * entries, creating those that are missing: one piece per frame, in
 * *pieces (which starts as stack, of alloc, and grows on the heap).
 * Returns 0, or -1 with err, with *n the pieces taken either way.
 */
static int
find_pieces (struct ad_export *exp, struct ad_source *src, char *buf,
             size_t count, uint64_t offset, struct piece **pieces,
             size_t alloc, size_t *n, struct ad_error *err)
{
  struct piece *stack = *pieces;
  uint64_t pos = offset;
  size_t left = count;

  *n = 0;
  while (left > 0) {
    struct piece *p;
    size_t len;

    if (*n == alloc) {
      struct piece *more = malloc (2 * alloc * sizeof *more);
      if (more == NULL)
        return ad_error_set (err, ENOMEM, "out of memory");
      memcpy (more, *pieces, *n * sizeof *more);
      if (*pieces != stack)
        free (*pieces);
      *pieces = more;
      alloc *= 2;
    }
    p = &(*pieces)[*n];
    memset (p, 0, sizeof *p);
    if (ad_index_find (exp->idx, src, pos, &p->frame, &p->frame_no,
                       emit_to_cache, exp, err) == -1)
      return -1;
    len = p->frame.uoff + p->frame.usize - pos;
    if (len > left)
      len = left;
    p->offset = pos;
    p->count = len;
    p->buf = buf ? buf + (pos - offset) : NULL;
    if (p->frame.usize <= AD_LARGE_FRAME) {
      wait_for_emit (exp, p->frame_no);
      p->entry = ad_cache_acquire (exp->cache, exp, p->frame_no,
                                   p->frame.usize, &p->created, err);
      if (p->entry == NULL)
        return -1;
    }
    (*n)++;
    pos += len;
    left -= len;
  }
  return 0;
}

/* Wait for a piece and copy it out (into p->buf, if any), then let its
 * entry go (r: whether the read has failed already, when it only lets
 * the entry go).  Returns r, or -1 with err.
 */
static int
copy_piece (struct ad_export *exp, struct ad_source *src, struct piece *p,
            bool sequential, int r, struct ad_error *err)
{
  uint64_t in_frame = p->offset - p->frame.uoff;

  if (r == 0 && p->entry == NULL) {
    struct ad_spill *spill = get_spill (exp, err);
    char scratch[1];
    char *to = p->buf;
    size_t cnt = p->count;

    if (to == NULL) {
      /* Decoding up to the end of the range is what is wanted. */
      in_frame += cnt - 1;
      cnt = 1;
      to = scratch;
    }
    if (spill == NULL ||
        ad_spill_read (spill, src, &p->frame, p->frame_no, to, cnt,
                       in_frame, err) == -1)
      r = -1;
    else if (ad_spill_frontier (spill, p->frame_no) >= p->frame.usize)
      export_mark_decoded (exp, p->frame_no);
  }
  else if (p->entry) {
    struct ad_cache_entry *e = p->entry;
    bool zero = false;

    if (r == 0 &&
        ad_cache_wait (exp->cache, e, in_frame + p->count, &zero,
                       err) == -1)
      r = -1;
    if (r == 0 && p->buf) {
      if (zero)
        memset (p->buf, 0, p->count);
      else
        memcpy (p->buf, e->data + in_frame, p->count);
    }
    if (sequential && r == 0 && p->buf)
      ad_cache_put_consumed (exp->cache, e, p->count);
    else
      ad_cache_put (exp->cache, e);
  }
  return r;
}

/* Serve [offset, offset + count) (buf NULL: only bring it into the
 * cache or the spill).
 */
int
export_read_range (struct ad_export *exp, struct ad_reader *reader,
                   struct ad_source *src, char *buf, size_t count,
                   uint64_t offset, bool prove, struct ad_error *err)
{
  struct piece stack_pieces[16], *pieces = stack_pieces;
  size_t n = 0, i;
  bool sequential;
  int r;

  if (offset > exp->size || count > exp->size - offset)
    return ad_error_set (err, EINVAL, "read of %zu bytes at offset %"
                         PRIu64 " is past the end of the %" PRIu64
                         "-byte image", count, offset, exp->size);

  /* 0. Where frame sizes are unchecked, prove where the first frame
   * starts (the later ones follow from the frames of this read).
   */
  if (prove && count > 0 && export_needs_proof (exp)) {
    struct ad_frame f;
    size_t first_no;

    if (ad_index_find (exp->idx, src, offset, &f, &first_no, emit_to_cache,
                       exp, err) == -1 ||
        export_prove_offset (exp, src, first_no, err) == -1)
      return -1;
  }

  /* 1. Find the frames and take their cache entries. */
  r = find_pieces (exp, src, buf, count, offset, &pieces, 16, &n, err);

  /* 2. Start decoding what we created, and read ahead. */
  sequential = reader && export_sequential (reader, offset);
  if (export_start_pieces (exp, src, pieces, n, err) == -1)
    r = -1;
  if (r == 0)
    export_note_read (exp, reader, src, offset, count);

  /* 3. Wait for each piece and copy it. */
  for (i = 0; i < n; i++)
    r = copy_piece (exp, src, &pieces[i], sequential, r, err);
  if (pieces != stack_pieces)
    free (pieces);
  return r;
}

int
ad_export_read (struct ad_export *exp, struct ad_reader *reader,
                struct ad_source *src, void *buf, size_t count,
                uint64_t offset, struct ad_error *err)
{
  struct ad_fetch_source fs;
  int r;

  if (reader) {
    unsigned n = __atomic_add_fetch (&reader->inflight, 1, __ATOMIC_RELAXED);
    uint64_t start, end;

    if (n > __atomic_load_n (&reader->depth, __ATOMIC_RELAXED))
      __atomic_store_n (&reader->depth, n, __ATOMIC_RELAXED);
    export_reader_run (reader, &start, &end);
    export_bulk (reader, start, end);
  }
  src = ad_fetch_wrap_reader (&fs, exp->fetch, src, reader,
                              reader && export_fetches_run (reader, offset));
  fs.horizon = export_fetch_horizon (exp, reader, src, offset);
  r = export_read_range (exp, reader, src, buf, count, offset, true, err);
  if (reader)
    __atomic_sub_fetch (&reader->inflight, 1, __ATOMIC_RELAXED);
  return r;
}

int
ad_export_pread (struct ad_export *exp, struct ad_source *src, void *buf,
                 size_t count, uint64_t offset, struct ad_error *err)
{
  struct ad_fetch_source fs;

  src = ad_fetch_wrap (&fs, exp->fetch, src);
  return export_read_range (exp, NULL, src, buf, count, offset, true, err);
}

int
ad_export_prefetch (struct ad_export *exp, struct ad_source *src,
                    size_t count, uint64_t offset, struct ad_error *err)
{
  struct ad_fetch_source fs;

  src = ad_fetch_wrap (&fs, exp->fetch, src);
  return export_read_range (exp, NULL, src, NULL, count, offset, true, err);
}

int
ad_export_extents (struct ad_export *exp, struct ad_source *src,
                   size_t count, uint64_t offset, ad_extent_fn *fn,
                   void *opaque, struct ad_error *err)
{
  uint64_t end = offset + count;
  bool first = true;
  struct ad_fetch_source fs;

  src = ad_fetch_wrap (&fs, exp->fetch, src);

  if (offset >= exp->size || count > exp->size - offset)
    return ad_error_set (err, EINVAL, "extents of %zu bytes at offset %"
                         PRIu64 " are past the end of the %" PRIu64
                         "-byte image", count, offset, exp->size);

  while (offset < end) {
    struct ad_frame f;
    size_t frame_no;
    uint64_t len;
    bool zero = false, known;

    if (first) {
      if (ad_index_find (exp->idx, src, offset, &f, &frame_no,
                         emit_to_cache, exp, err) == -1)
        return -1;
    }
    else {
      /* Only frames already indexed: never extend the index here. */
      pthread_mutex_lock (&exp->idx->lock);
      known = offset < exp->idx->indexed;
      pthread_mutex_unlock (&exp->idx->lock);
      if (!known ||
          ad_index_find (exp->idx, src, offset, &f, &frame_no, NULL, NULL,
                         err) == -1)
        break;
    }

    if (export_needs_proof (exp) && frame_no > export_verified_frames (exp))
      zero = false;             /* Where it starts is not proven yet. */
    else if (f.usize > AD_LARGE_FRAME && !(f.flags & AD_FRAME_ZERO)) {
      /* A large frame: what the spill has decoded, in runs (see
       * ad_spill_extents); the rest is data, or left for the client's
       * next request once the spill has decoded that far.
       */
      struct ad_spill *spill = get_spill (exp, err);
      uint64_t in_frame = offset - f.uoff, done;

      len = f.uoff + f.usize - offset;
      if (len > end - offset)
        len = end - offset;
      if (spill == NULL ||
          ad_spill_extents (spill, src, &f, frame_no, in_frame, len, fn,
                            opaque, &done, err) == -1) {
        if (!first)
          break;                /* Report what is known so far. */
        return -1;
      }
      if (done > in_frame) {
        offset = f.uoff + done;
        first = false;
        if (done < in_frame + len)
          break;                /* Decoded no further yet. */
        continue;
      }
      zero = false;             /* Far past what is decoded. */
    }
    else if (f.flags & AD_FRAME_ZERO)
      zero = true;
    else if (!ad_cache_peek (exp->cache, exp, frame_no, &zero) &&
             export_probe_worth (&f)) {
      if (export_probe_zero (exp, src, &f, frame_no, &zero, err) == -1) {
        if (!first)
          break;                /* Report what is known so far. */
        return -1;
      }
      __atomic_add_fetch (&exp->zero_probes, 1, __ATOMIC_RELAXED);
    }
    len = f.uoff + f.usize - offset;
    if (len > end - offset)
      len = end - offset;
    if (fn (opaque, offset, len, zero) == -1)
      return ad_error_set (err, errno ? errno : ENOMEM,
                           "cannot record extents");
    offset += len;
    first = false;
  }
  return 0;
}

int
ad_export_find (struct ad_export *exp, struct ad_source *src,
                uint64_t offset, struct ad_frame *frame, size_t *frame_no,
                struct ad_error *err)
{
  struct ad_fetch_source fs;

  src = ad_fetch_wrap (&fs, exp->fetch, src);
  return ad_index_find (exp->idx, src, offset, frame, frame_no,
                        emit_to_cache, exp, err);
}

uint64_t
ad_export_largest_frame (struct ad_export *exp)
{
  struct ad_index *idx = exp->idx;
  uint64_t largest = 0;
  size_t i;

  if (idx == NULL)
    return 0;
  pthread_mutex_lock (&idx->lock);
  for (i = 0; i < idx->nframes; i++)
    if (!(idx->frames[i].flags & AD_FRAME_ZERO) &&
        idx->frames[i].usize > largest)
      largest = idx->frames[i].usize;
  pthread_mutex_unlock (&idx->lock);
  return largest;
}
