/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: read-ahead, which decodes frames before a sequential
 * reader asks for them (see export.h).
 *
 * Each reader (a connection) remembers where its recent reads ended.
 * Once enough of them in a row land near there, the reader is
 * sequential, and after each of its reads the frames that follow are
 * queued as decode jobs that nobody waits for yet, into free pool
 * slots only, as far as a window that keeps every worker busy, and
 * not past where another sequential reader of the same export began;
 * then the fetcher reads the next compressed bytes while they decode.
 */

#include <config.h>

#include <stdlib.h>

#include "export-int.h"

/* How far ahead of a reader to decode, for frames of usize bytes, when
 * it has read run bytes in a row: enough to keep every worker busy with
 * a job while the reader consumes one more, and at most
 * config.readahead.  More would only hold decoded frames that nobody
 * reads yet: memory that is touched for the first time (slow on some
 * VMs) and taken from the cache (nbdcopy reads through four
 * connections, each its own reader).  Nor more than the reader has
 * read in a row, but at least one frame: a short run of reads (a file
 * that a booting guest reads) then decodes and fetches little that it
 * does not use, while a long one (a copy) soon has the whole window.
 * (look_ahead also caps the run of a reader of one request at a time
 * at INTERACTIVE_WINDOW.)
 */
static uint64_t
readahead_window (const struct ad_export *exp, uint64_t usize, uint64_t run)
{
  uint64_t unit = usize > JOB_MAX_OUTPUT ? usize : JOB_MAX_OUTPUT;
  uint64_t window = (ad_pool_threads (exp->config.pool) + 2) * unit;

  if (window > exp->config.readahead)
    window = exp->config.readahead;
  if (run < usize)
    run = usize;
  return window < run ? window : run;
}

/* Is frame f within the read-ahead window that starts at uoff (and
 * small enough for the cache)?
 */
static bool
wanted_ahead (const struct ad_export *exp, const struct ad_frame *f,
              uint64_t uoff, uint64_t run)
{
  return f->uoff < uoff + readahead_window (exp, f->usize, run) &&
    f->usize <= AD_LARGE_FRAME;
}

/* Decode frames ahead of a sequential reader that has read run bytes in
 * a row, from frame_no on, until the read-ahead window past uoff is
 * covered, limit is reached (see
 * other_reader_start) or no slot is free.
 * Returns the first frame not yet started.
 */
static size_t
read_ahead (struct ad_export *exp, struct ad_source *src, size_t frame_no,
            uint64_t uoff, uint64_t run, uint64_t limit)
{
  size_t nframes = ad_index_nframes (exp->idx);

  while (frame_no < nframes) {
    struct ad_frame f;
    struct ad_error err;
    struct job *job;
    bool created;

    ad_index_get_frame (exp->idx, frame_no, &f);
    if (!wanted_ahead (exp, &f, uoff, run) || f.uoff >= limit)
      break;
    if (!ad_pool_acquire (exp->config.pool, false))
      break;
    job = calloc (1, sizeof *job);
    if (job == NULL) {
      ad_pool_release (exp->config.pool);
      break;
    }
    job->ahead = true;
    ad_error_clear (&err);
    while (frame_no < nframes) {
      struct ad_cache_entry *e;

      ad_index_get_frame (exp->idx, frame_no, &f);
      if (!wanted_ahead (exp, &f, uoff, run) || f.uoff >= limit ||
          (job->n > 0 && !export_fits_job (job, &f)))
        break;
      e = ad_cache_acquire (exp->cache, exp, frame_no, f.usize, &created,
                            &err);
      if (e == NULL)
        break;
      frame_no++;
      if (!created) {
        ad_cache_put (exp->cache, e);
        if (job->n > 0)
          break;
        continue;
      }
      export_job_add (job, &f, frame_no - 1, e);
    }
    if (job->n == 0) {
      free (job);
      ad_pool_release (exp->config.pool);
      continue;
    }
    if (export_submit_job (exp, src, job, &err) == -1)
      break;
  }
  return frame_no;
}

/* Where the nearest other sequential reader of exp began reading after
 * uoff (UINT64_MAX if none).  Read-ahead stops there: past it, that
 * reader has read the frames already (nbdcopy gives each connection
 * its own part of the image), so decoding them again for this one is
 * work and compressed reads that nobody uses.
 */
static uint64_t
other_reader_start (struct ad_export *exp, const struct ad_reader *reader,
                    uint64_t uoff)
{
  uint64_t limit = UINT64_MAX;
  const struct ad_reader *r;

  pthread_mutex_lock (&exp->lock);
  for (r = exp->readers; r; r = r->next) {
    uint64_t start = __atomic_load_n (&r->start, __ATOMIC_RELAXED);

    if (r != reader &&
        __atomic_load_n (&r->streak, __ATOMIC_RELAXED) >= SEQ_STREAK &&
        start > uoff && start < limit)
      limit = start;
  }
  pthread_mutex_unlock (&exp->lock);
  return limit;
}

/* The frame holding uoff, if the index knows it already: read-ahead
 * never extends the index.  Returns 0, or -1 if it is not known (or not
 * found).
 */
static int
find_known (struct ad_export *exp, struct ad_source *src, uint64_t uoff,
            struct ad_frame *f, size_t *frame_no)
{
  struct ad_error err;
  bool known;

  pthread_mutex_lock (&exp->idx->lock);
  known = uoff < exp->idx->indexed;
  pthread_mutex_unlock (&exp->idx->lock);
  if (!known)
    return -1;
  ad_error_clear (&err);
  return ad_index_find (exp->idx, src, uoff, f, frame_no, NULL, NULL, &err);
}

/* Look ahead of a read of reader that ended at end: decode the frames
 * that follow (the caller then has the fetcher fetch the next
 * compressed bytes while they decode, ad_fetch_ahead).  Called with
 * reader->ahead_lock held.
 */
static void
look_ahead (struct ad_export *exp, struct ad_reader *reader,
            struct ad_source *src, uint64_t offset, uint64_t end)
{
  uint64_t start = __atomic_load_n (&reader->start, __ATOMIC_RELAXED);
  uint64_t run;
  size_t from, next, ahead;
  struct ad_frame f;

  /* Start after the frame holding the end of this read. */
  if (end >= exp->size || find_known (exp, src, end, &f, &from) == -1)
    return;
  ahead = __atomic_load_n (&reader->ahead, __ATOMIC_RELAXED);
  if (ahead > from)
    from = ahead;
  /* A reader of one request at a time (a guest reading its files)
   * decodes at most INTERACTIVE_WINDOW ahead, however long its run:
   * its run may end at any read, and what was decoded past that end
   * (and fetched for it) is waste.
   */
  run = end > start ? end - start : 0;
  if (!__atomic_load_n (&reader->bulk, __ATOMIC_RELAXED) &&
      run > INTERACTIVE_WINDOW)
    run = INTERACTIVE_WINDOW;
  next = read_ahead (exp, src, from, end, run,
                     other_reader_start (exp, reader, offset));
  if (next > ahead)
    __atomic_store_n (&reader->ahead, next, __ATOMIC_RELAXED);
}

/* The read-ahead thread of a reader (see ad_reader_set_background). */
static void *
ahead_thread (void *arg)
{
  struct ad_reader *reader = arg;

  pthread_mutex_lock (&reader->lock);
  for (;;) {
    struct ad_fetch_source fs;
    struct ad_source *src;
    uint64_t offset, end, now;

    while (!reader->pending && !reader->quit)
      pthread_cond_wait (&reader->cond, &reader->lock);
    if (reader->quit)
      break;
    reader->pending = false;
    offset = reader->pending_offset;
    end = reader->pending_end;
    pthread_mutex_unlock (&reader->lock);

    src = ad_fetch_wrap_reader (&fs, reader->exp->fetch, reader->bg, reader,
                                true);
    fs.horizon = export_fetch_horizon (reader->exp, reader, reader->bg,
                                       offset);
    pthread_mutex_lock (&reader->ahead_lock);
    look_ahead (reader->exp, reader, src, offset, end);
    /* The decodes queued may have taken round trips, and the reader
     * may have read on, or elsewhere, meanwhile: the fetch ahead goes
     * as far as its run reaches now (nowhere if it has left the run).
     */
    now = __atomic_load_n (&reader->end, __ATOMIC_RELAXED);
    fs.horizon = export_fetch_horizon (reader->exp, reader, reader->bg,
                                       now > offset ? now - 1 : offset);
    ad_fetch_ahead (src);
    pthread_mutex_unlock (&reader->ahead_lock);
    pthread_mutex_lock (&reader->lock);
  }
  pthread_mutex_unlock (&reader->lock);
  return NULL;
}

void
ad_reader_set_background (struct ad_reader *reader, struct ad_source *bg)
{
  pthread_mutex_lock (&reader->lock);
  if (!reader->thread_started)
    reader->bg = bg;
  pthread_mutex_unlock (&reader->lock);
}

void
ad_reader_stop_background (struct ad_reader *reader)
{
  bool started;

  pthread_mutex_lock (&reader->lock);
  reader->quit = true;
  started = reader->thread_started;
  pthread_cond_signal (&reader->cond);
  pthread_mutex_unlock (&reader->lock);
  if (started)
    pthread_join (reader->thread, NULL);
  pthread_mutex_lock (&reader->lock);
  reader->thread_started = false;
  reader->bg = NULL;
  pthread_mutex_unlock (&reader->lock);
}

bool
export_sequential (const struct ad_reader *reader, uint64_t offset)
{
  return __atomic_load_n (&reader->streak, __ATOMIC_RELAXED) >= SEQ_STREAK &&
    export_in_run (reader, offset);
}

bool
export_fetches_run (const struct ad_reader *reader, uint64_t offset)
{
  return export_sequential (reader, offset) ||
    (__atomic_load_n (&reader->ran, __ATOMIC_RELAXED) &&
     !__atomic_load_n (&reader->bulk, __ATOMIC_RELAXED));
}

void
export_reader_run (struct ad_reader *reader, uint64_t *start, uint64_t *end)
{
  pthread_mutex_lock (&reader->lock);
  *start = reader->start;
  *end = reader->end;
  pthread_mutex_unlock (&reader->lock);
}

bool
export_bulk (struct ad_reader *reader, uint64_t start, uint64_t end)
{
  bool bulk = __atomic_load_n (&reader->depth, __ATOMIC_RELAXED) >= BULK_DEPTH ||
    (end > start && end - start >= BULK_RUN);

  if (bulk)
    __atomic_store_n (&reader->bulk, true, __ATOMIC_RELAXED);
  return bulk;
}

bool
export_in_run (const struct ad_reader *reader, uint64_t offset)
{
  uint64_t end = __atomic_load_n (&reader->end, __ATOMIC_RELAXED);
  unsigned streak = __atomic_load_n (&reader->streak, __ATOMIC_RELAXED);

  /* A sequential reader's requests in flight spread wider (nbdcopy:
   * 64 of 256 KiB) than what makes a reader sequential.
   */
  return offset + SEQ_SLACK >= end &&
    offset <= end + (streak >= SEQ_STREAK ? 4 : 1) * SEQ_SLACK;
}

void
export_note_read (struct ad_export *exp, struct ad_reader *reader,
                  struct ad_source *src, uint64_t offset, size_t count)
{
  uint64_t end = offset + count;

  if (reader == NULL || exp->config.pool == NULL || exp->config.readahead == 0)
    return;
  /* Another request of this reader is noting its read already. */
  if (pthread_mutex_trylock (&reader->lock) != 0)
    return;
  if (reader->exp == NULL) {
    reader->exp = exp;
    pthread_mutex_lock (&exp->lock);
    reader->next = exp->readers;
    exp->readers = reader;
    pthread_mutex_unlock (&exp->lock);
  }
  if (export_in_run (reader, offset)) {
    if (reader->streak < SEQ_STREAK)
      __atomic_store_n (&reader->streak, reader->streak + 1, __ATOMIC_RELAXED);
    if (reader->streak >= SEQ_STREAK)
      __atomic_store_n (&reader->ran, true, __ATOMIC_RELAXED);
  }
  else {
    __atomic_store_n (&reader->streak, 0, __ATOMIC_RELAXED);
    __atomic_store_n (&reader->start, offset, __ATOMIC_RELAXED);
    __atomic_store_n (&reader->ahead, 0, __ATOMIC_RELAXED);
    __atomic_store_n (&reader->depth,
                      __atomic_load_n (&reader->inflight, __ATOMIC_RELAXED),
                      __ATOMIC_RELAXED);
  }
  if (end > reader->end || reader->streak == 0)
    __atomic_store_n (&reader->end, end, __ATOMIC_RELAXED);
  export_bulk (reader, reader->start, reader->end);
  if (reader->streak < SEQ_STREAK) {
    pthread_mutex_unlock (&reader->lock);
    return;
  }
  /* Hand the looking ahead to the reader's thread, if it has one. */
  if (reader->bg && !reader->quit && !reader->thread_started &&
      pthread_create (&reader->thread, NULL, ahead_thread, reader) == 0)
    reader->thread_started = true;
  if (reader->thread_started) {
    reader->pending = true;
    reader->pending_offset = offset;
    reader->pending_end = end;
    pthread_cond_signal (&reader->cond);
    pthread_mutex_unlock (&reader->lock);
    return;
  }
  pthread_mutex_unlock (&reader->lock);
  /* Another request of this reader is looking ahead already. */
  if (pthread_mutex_trylock (&reader->ahead_lock) != 0)
    return;
  look_ahead (exp, reader, src, offset, end);
  ad_fetch_ahead (src);
  pthread_mutex_unlock (&reader->ahead_lock);
}

uint64_t
export_fetch_horizon (struct ad_export *exp, struct ad_reader *reader,
                      struct ad_source *src, uint64_t offset)
{
  uint64_t start, end, target, ahead, floor;
  struct ad_frame f;
  size_t frame_no;

  if (reader == NULL)
    return UINT64_MAX;
  /* A reader that reads in runs (not in bulk) and has begun its next
   * one fetches for it from its second read on, before it is
   * sequential again: a guest's first reads of a file skip ahead a few
   * frames at a time (its metadata, then its data).
   */
  if (!export_sequential (reader, offset) &&
      !(__atomic_load_n (&reader->ran, __ATOMIC_RELAXED) &&
        !__atomic_load_n (&reader->bulk, __ATOMIC_RELAXED) &&
        export_in_run (reader, offset)))
    return 0;
  /* With many requests in flight (nbdcopy), the run reaches as far as
   * the furthest of them.
   */
  export_reader_run (reader, &start, &end);
  if (end < offset + 1)
    end = offset + 1;
  if (export_bulk (reader, start, end)) {
    /* A copy: at least as far as two full read-ahead windows of small
     * frames, what the decoders want next and after (32 MiB on two
     * CPUs, a few MiB compressed), so that its first fetches are not
     * small.
     */
    ahead = end > start ? 8 * (end - start) : 0;
    floor = 2 * (exp->config.pool ? ad_pool_threads (exp->config.pool) + 2 : 2) *
      JOB_MAX_OUTPUT;
    if (floor > exp->config.readahead)
      floor = exp->config.readahead;
    if (ahead < floor)
      ahead = floor;
  }
  else {
    /* One read at a time (a guest reading a file): as far again as
     * its run, up to INTERACTIVE_AHEAD.  Its run may end at any read,
     * and what was fetched past that end is waste; and the
     * connection's next read, elsewhere, may wait for the fetch in
     * progress (a plugin that serves one request of a connection at a
     * time), so fetches stay short.
     */
    ahead = end > start ? end - start : 0;
    if (ahead > INTERACTIVE_AHEAD)
      ahead = INTERACTIVE_AHEAD;
  }
  target = end + ahead;
  if (target > exp->size)
    target = exp->size;
  if (find_known (exp, src, target - 1, &f, &frame_no) == -1)
    return UINT64_MAX;
  return f.coff + f.csize;
}
