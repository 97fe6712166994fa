/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: one served image, shared by every connection (see
 * export.h).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "export.h"
#include "frame.h"

/* Read-ahead is worth it when this reader keeps reading near where
 * its last reads ended (several requests in flight arrive in any
 * order).
 */
#define SEQ_SLACK (8 * 1024 * 1024ULL)
#define SEQ_STREAK 3

struct ad_export *
ad_export_open (struct ad_source *src, enum ad_format format,
                const struct ad_options *opts, struct ad_cache *cache,
                struct ad_error *err)
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
  pthread_mutex_init (&exp->lock, NULL);
  pthread_cond_init (&exp->jobs_done, NULL);
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
  pthread_cond_destroy (&exp->jobs_done);
  pthread_mutex_destroy (&exp->lock);
  free (exp);
}

/* Offsets proven by decoding (autodecomp-verify-offsets): a frame's
 * offset is the sum of the sizes of the frames before it, so it is
 * proven once each of them has decoded to its declared size.
 */
static bool
needs_proof (struct ad_export *exp)
{
  return exp->verify_offsets && exp->idx && exp->idx->sizes_unchecked;
}

static void
mark_decoded (struct ad_export *exp, size_t frame_no)
{
  if (!needs_proof (exp))
    return;
  pthread_mutex_lock (&exp->lock);
  if (exp->decoded_once == NULL) {
    /* Formats with unchecked sizes index everything at open. */
    exp->decoded_once_len = ad_index_nframes (exp->idx);
    exp->decoded_once = calloc (exp->decoded_once_len ?
                                exp->decoded_once_len : 1, 1);
  }
  if (exp->decoded_once && frame_no < exp->decoded_once_len) {
    exp->decoded_once[frame_no] = 1;
    while (exp->verified < exp->decoded_once_len &&
           exp->decoded_once[exp->verified])
      exp->verified++;
  }
  pthread_mutex_unlock (&exp->lock);
}

static size_t
verified_frames (struct ad_export *exp)
{
  size_t v;

  pthread_mutex_lock (&exp->lock);
  v = exp->verified;
  pthread_mutex_unlock (&exp->lock);
  return v;
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
  mark_decoded (exp, frame_no);
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

void
ad_reader_init (struct ad_reader *reader)
{
  memset (reader, 0, sizeof *reader);
  pthread_mutex_init (&reader->lock, NULL);
}

void
ad_reader_destroy (struct ad_reader *reader)
{
  struct ad_export *exp = reader->exp;
  struct ad_reader **p;

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
  pthread_mutex_destroy (&reader->lock);
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

/* Decode jobs.
 *
 * A job decodes a run of consecutive frames (one frame, or several
 * small ones) whose cache entries the reader created LOADING.  The
 * reader reads the compressed bytes of the whole run from the source
 * in one call, in its own thread (the source belongs to a connection
 * and may not be used from elsewhere), and a decode worker decodes
 * them from memory through a "window" source that serves only that
 * range.  The job holds one pool slot from before its input is read
 * until it is done.
 */

/* Frames per job are limited by their decoded and compressed sizes. */
#define JOB_MAX_OUTPUT (4 * 1024 * 1024ULL)
#define JOB_MAX_INPUT (16 * 1024 * 1024ULL)
#define JOB_MAX_FRAMES 64

/* What a decoder holds besides its input and output, at most. */
#define DECODER_MEM (8 * 1024 * 1024ULL)

struct job {
  struct ad_export *exp;
  bool ahead;                   /* Read-ahead (nobody waits yet). */
  size_t n;
  size_t frame_no[JOB_MAX_FRAMES];
  struct ad_frame frame[JOB_MAX_FRAMES];
  struct ad_cache_entry *entry[JOB_MAX_FRAMES];
  char *input;                  /* A buffer of the pool, or NULL. */
  size_t input_cap;
  const char *data;             /* The input: in input, or lent. */
  struct ad_loan *loan;
  uint64_t input_off;
  size_t input_len;
  uint64_t source_size;
};

struct window {
  const char *buf;
  uint64_t off;
  size_t len;
};

static const void *
window_map (void *opaque, uint64_t offset, size_t count)
{
  struct window *w = opaque;

  if (offset < w->off || offset - w->off > w->len ||
      count > w->len - (offset - w->off))
    return NULL;
  return w->buf + (offset - w->off);
}

static int
window_pread (void *opaque, void *buf, size_t count, uint64_t offset,
              struct ad_error *err)
{
  const void *p = window_map (opaque, offset, count);

  if (p == NULL)
    return ad_error_set (err, EIO, "decoder read %zu bytes at compressed "
                         "offset %" PRIu64 ", outside its frame", count,
                         offset);
  memcpy (buf, p, count);
  return 0;
}

struct progress_ctx {
  struct ad_cache *cache;
  struct ad_cache_entry *entry;
};

static void
publish_progress (void *opaque, uint64_t done)
{
  struct progress_ctx *p = opaque;

  ad_cache_progress (p->cache, p->entry, done);
}

/* A job holds its export: ad_export_free waits for the last one. */
static void
job_begin (struct ad_export *exp)
{
  pthread_mutex_lock (&exp->lock);
  exp->jobs++;
  pthread_mutex_unlock (&exp->lock);
}

/* The job's last touch of exp. */
static void
job_end (struct ad_export *exp)
{
  pthread_mutex_lock (&exp->lock);
  if (--exp->jobs == 0)
    pthread_cond_broadcast (&exp->jobs_done);
  pthread_mutex_unlock (&exp->lock);
}

/* Decode one frame into its LOADING entry and settle the entry. */
static void
fill_entry (struct ad_export *exp, struct ad_source *src,
            const struct ad_frame *frame, size_t frame_no,
            struct ad_cache_entry *e)
{
  struct progress_ctx p = { exp->cache, e };
  struct ad_error err;
  int r;

  ad_error_clear (&err);
  if (exp->on_decode)
    exp->on_decode (exp->on_decode_opaque, frame_no, frame);
  r = ad_cache_alloc (exp->cache, e, &err);
  if (r == 0)
    r = ad_index_decode_frame_progress (exp->idx, src, frame, frame_no,
                                        e->data,
                                        exp->progressive ? publish_progress
                                        : NULL, &p, &err);
  /* Before the entry settles, so that a reader woken by it sees the
   * frame counted.
   */
  if (r == 0)
    mark_decoded (exp, frame_no);
  ad_cache_finish (exp->cache, e, r == -1 ? &err : NULL);
}

static void
run_job (void *arg)
{
  struct job *job = arg;
  struct ad_export *exp = job->exp;
  struct window w = { job->data, job->input_off, job->input_len };
  struct ad_source src;
  uint64_t largest = 0, reserved;
  size_t i;

  memset (&src, 0, sizeof src);
  src.pread = window_pread;
  src.map = window_map;
  src.opaque = &w;
  src.size = job->source_size;
  /* The decode's own memory (its input, and decoder state of about
   * the frame's size, up to an 8 MiB dictionary) counts against the
   * cache while it runs, so that what the process holds stays near the
   * cache size however many decodes run.
   */
  for (i = 0; i < job->n; i++)
    if (job->frame[i].usize > largest)
      largest = job->frame[i].usize;
  reserved = job->input_cap + (largest < DECODER_MEM ? largest : DECODER_MEM);
  ad_cache_reserve (exp->cache, reserved);
  for (i = 0; i < job->n; i++) {
    fill_entry (exp, &src, &job->frame[i], job->frame_no[i], job->entry[i]);
    ad_cache_put (exp->cache, job->entry[i]);
  }
  if (job->ahead)
    __atomic_add_fetch (&exp->readahead_frames, job->n, __ATOMIC_RELAXED);
  ad_cache_unreserve (exp->cache, reserved);
  ad_loan_return (job->loan);
  ad_pool_buffer_put (exp->pool, job->input, job->input_cap);
  ad_pool_release (exp->pool);
  free (job);
  job_end (exp);
}

/* Read the job's input and hand it to a worker; the job holds a slot
 * and a reference to each entry.  On failure every entry is settled
 * with the error and the slot given back.
 */
static int
submit_job (struct ad_export *exp, struct ad_source *src, struct job *job,
            struct ad_error *err)
{
  const struct ad_frame *last = &job->frame[job->n - 1];
  bool held = true;
  size_t i;

  job->exp = exp;
  job_begin (exp);
  job->source_size = src->size;
  job->input_off = job->frame[0].coff;
  job->input_len = last->coff + last->csize - job->input_off;
  /* Frames whose bytes the format holds need no input. */
  for (i = 0; i < job->n; i++)
    if (!(job->frame[i].flags & (AD_FRAME_ZERO | AD_FRAME_HELD)))
      held = false;
  if (held) {
    job->input_len = 0;
    if (ad_pool_submit (exp->pool, run_job, job, !job->ahead, err) == 0)
      return 0;
  }
  else if ((job->input = ad_pool_buffer_get (exp->pool, job->input_len,
                                             &job->input_cap)) == NULL)
    ad_error_set (err, ENOMEM, "cannot allocate %zu bytes of compressed "
                  "input", job->input_len);
  else if (ad_source_read (src, job->input, job->input_len, job->input_off,
                           (const void **) &job->data, &job->loan,
                           err) == 0) {
    /* The fetcher lent its bytes: the buffer is not needed. */
    if (job->loan) {
      ad_pool_buffer_put (exp->pool, job->input, job->input_cap);
      job->input = NULL;
      job->input_cap = 0;
    }
    if (ad_pool_submit (exp->pool, run_job, job, !job->ahead, err) == 0)
      return 0;
  }

  ad_error_prefix (err, "%s: frame %zu at compressed offset %" PRIu64,
                   exp->idx->ops->name, job->frame_no[0], job->input_off);
  for (i = 0; i < job->n; i++) {
    ad_cache_finish (exp->cache, job->entry[i], err);
    ad_cache_put (exp->cache, job->entry[i]);
  }
  ad_loan_return (job->loan);
  ad_pool_buffer_put (exp->pool, job->input, job->input_cap);
  ad_pool_release (exp->pool);
  free (job);
  job_end (exp);
  return -1;
}

/* Can frame b join a job that ends with frame a? */
static bool
fits_job (const struct job *job, const struct ad_frame *b)
{
  const struct ad_frame *first = &job->frame[0];
  const struct ad_frame *a = &job->frame[job->n - 1];
  uint64_t output = b->uoff + b->usize - first->uoff;

  return job->n < JOB_MAX_FRAMES &&
    b->coff >= a->coff && b->coff <= a->coff + a->csize &&
    output <= JOB_MAX_OUTPUT &&
    b->coff + b->csize - first->coff <= JOB_MAX_INPUT;
}

static void
job_add (struct job *job, const struct ad_frame *frame, size_t frame_no,
         struct ad_cache_entry *entry)
{
  job->frame[job->n] = *frame;
  job->frame_no[job->n] = frame_no;
  job->entry[job->n] = entry;
  job->n++;
}

/* A piece of a request: one frame, the entry that holds it (in-memory
 * frames), and what the reader wants from it.
 */
struct piece {
  struct ad_frame frame;
  size_t frame_no;
  struct ad_cache_entry *entry; /* NULL for a large (spill) frame. */
  bool created;
  uint64_t offset;              /* Uncompressed offset wanted. */
  size_t count;
  char *buf;                    /* Where it goes, or NULL. */
};

/* A frame this small is decoded by the reader that needs it, in its
 * own thread: handing it to a worker would cost more than decoding it
 * (and it needs little memory, so it takes no slot).
 */
#define INLINE_MAX (256 * 1024)

/* Decode the pieces this reader created: in its own thread without
 * workers or when they are small, else in jobs of consecutive frames.
 * On failure, every created entry not yet handed to a job is settled
 * with the error.
 */
static int
start_pieces (struct ad_export *exp, struct ad_source *src,
              struct piece *pieces, size_t n, struct ad_error *err)
{
  size_t i = 0, k;
  int r = 0;

  while (i < n) {
    struct job *job;

    if (!pieces[i].created) {
      i++;
      continue;
    }
    if (r == -1) {
      ad_cache_finish (exp->cache, pieces[i].entry, err);
      pieces[i++].created = false;
      continue;
    }
    if (exp->pool == NULL || pieces[i].frame.usize <= INLINE_MAX) {
      fill_entry (exp, src, &pieces[i].frame, pieces[i].frame_no,
                  pieces[i].entry);
      pieces[i++].created = false;
      continue;
    }
    job = calloc (1, sizeof *job);
    if (job == NULL) {
      r = ad_error_set (err, ENOMEM, "out of memory");
      continue;
    }
    /* Gather the run of created frames that fit one job. */
    for (k = i; k < n && pieces[k].created; k++) {
      if (job->n > 0 && !fits_job (job, &pieces[k].frame))
        break;
      ad_cache_ref (exp->cache, pieces[k].entry);
      job_add (job, &pieces[k].frame, pieces[k].frame_no, pieces[k].entry);
      pieces[k].created = false;
    }
    i = k;
    ad_pool_acquire (exp->pool, true);
    if (submit_job (exp, src, job, err) == -1)
      r = -1;
  }
  return r;
}

/* How far ahead of a reader to decode, for frames of usize bytes:
 * enough to keep every worker busy with a job while the reader
 * consumes one more, and at most exp->readahead.  More would only
 * hold decoded frames that nobody reads yet: memory that is touched
 * for the first time (slow on some VMs) and taken from the cache
 * (nbdcopy reads through four connections, each its own reader).
 */
static uint64_t
readahead_window (const struct ad_export *exp, uint64_t usize)
{
  uint64_t unit = usize > JOB_MAX_OUTPUT ? usize : JOB_MAX_OUTPUT;
  uint64_t window = (ad_pool_threads (exp->pool) + 2) * unit;

  return window < exp->readahead ? window : exp->readahead;
}

/* Is frame f within the read-ahead window that starts at uoff (and
 * small enough for the cache)?
 */
static bool
wanted_ahead (const struct ad_export *exp, const struct ad_frame *f,
              uint64_t uoff)
{
  return f->uoff < uoff + readahead_window (exp, f->usize) &&
    f->usize <= AD_LARGE_FRAME;
}

/* Decode frames ahead of a sequential reader, from frame_no on, until
 * the read-ahead window past uoff is covered, limit is reached (see
 * other_reader_start) or no slot is free.
 * Returns the first frame not yet started.
 */
static size_t
read_ahead (struct ad_export *exp, struct ad_source *src, size_t frame_no,
            uint64_t uoff, uint64_t limit)
{
  size_t nframes = ad_index_nframes (exp->idx);

  while (frame_no < nframes) {
    struct ad_frame f;
    struct ad_error err;
    struct job *job;
    bool created;

    ad_index_get_frame (exp->idx, frame_no, &f);
    if (!wanted_ahead (exp, &f, uoff) || f.uoff >= limit)
      break;
    if (!ad_pool_acquire (exp->pool, false))
      break;
    job = calloc (1, sizeof *job);
    if (job == NULL) {
      ad_pool_release (exp->pool);
      break;
    }
    job->ahead = true;
    ad_error_clear (&err);
    while (frame_no < nframes) {
      struct ad_cache_entry *e;

      ad_index_get_frame (exp->idx, frame_no, &f);
      if (!wanted_ahead (exp, &f, uoff) || f.uoff >= limit ||
          (job->n > 0 && !fits_job (job, &f)))
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
      job_add (job, &f, frame_no - 1, e);
    }
    if (job->n == 0) {
      free (job);
      ad_pool_release (exp->pool);
      continue;
    }
    if (submit_job (exp, src, job, &err) == -1)
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

static void
note_read (struct ad_export *exp, struct ad_reader *reader,
           struct ad_source *src, uint64_t offset, size_t count)
{
  uint64_t end = offset + count;
  size_t from, next;
  struct ad_frame f;
  struct ad_error err;

  if (reader == NULL || exp->pool == NULL || exp->readahead == 0)
    return;
  /* Another request of this reader is looking ahead already. */
  if (pthread_mutex_trylock (&reader->lock) != 0)
    return;
  if (reader->exp == NULL) {
    reader->exp = exp;
    pthread_mutex_lock (&exp->lock);
    reader->next = exp->readers;
    exp->readers = reader;
    pthread_mutex_unlock (&exp->lock);
  }
  /* A sequential reader's requests in flight spread wider (nbdcopy:
   * 64 of 256 KiB) than what makes a reader sequential.
   */
  if (offset + SEQ_SLACK >= reader->end &&
      offset <= reader->end + (reader->streak >= SEQ_STREAK ? 4 : 1) *
      SEQ_SLACK) {
    if (reader->streak < SEQ_STREAK)
      __atomic_store_n (&reader->streak, reader->streak + 1, __ATOMIC_RELAXED);
  }
  else {
    __atomic_store_n (&reader->streak, 0, __ATOMIC_RELAXED);
    __atomic_store_n (&reader->start, offset, __ATOMIC_RELAXED);
    reader->ahead = 0;
  }
  if (end > reader->end || reader->streak == 0)
    reader->end = end;
  if (reader->streak < SEQ_STREAK) {
    pthread_mutex_unlock (&reader->lock);
    return;
  }
  /* Start after the frame holding the end of this read, if the index
   * already knows it (read-ahead never extends the index).
   */
  ad_error_clear (&err);
  pthread_mutex_lock (&exp->idx->lock);
  if (end >= exp->idx->indexed)
    end = exp->size;
  pthread_mutex_unlock (&exp->idx->lock);
  if (end >= exp->size ||
      ad_index_find (exp->idx, src, end, &f, &from, NULL, NULL, &err) == -1) {
    pthread_mutex_unlock (&reader->lock);
    return;
  }
  if (reader->ahead > from)
    from = reader->ahead;
  next = read_ahead (exp, src, from, end,
                     other_reader_start (exp, reader, offset));
  if (next > reader->ahead)
    reader->ahead = next;
  pthread_mutex_unlock (&reader->lock);
  /* With the decodes started, fetch the next compressed bytes while
   * they run.
   */
  ad_fetch_ahead (src);
}

/* Serve [offset, offset + count) (buf NULL: only bring it into the
 * cache or the spill).
 */
static int read_range (struct ad_export *exp, struct ad_reader *reader,
                       struct ad_source *src, char *buf, size_t count,
                       uint64_t offset, bool prove, struct ad_error *err);

/* Decode (into the cache) every frame before frame_no that has not
 * decoded yet, in steps, so that its offset is proven.
 */
#define PROVE_STEP (32 * 1024 * 1024ULL)

static int
prove_offset (struct ad_export *exp, struct ad_source *src, size_t frame_no,
              struct ad_error *err)
{
  for (;;) {
    size_t v = verified_frames (exp);
    struct ad_frame first, target;
    uint64_t len;

    if (v >= frame_no)
      return 0;
    ad_index_get_frame (exp->idx, v, &first);
    ad_index_get_frame (exp->idx, frame_no, &target);
    len = target.uoff - first.uoff;
    if (len > PROVE_STEP)
      len = PROVE_STEP;
    if (read_range (exp, NULL, src, NULL, len, first.uoff, false, err) == -1)
      return ad_error_prefix (err, "%s: frame %zu is served only once "
                              "every frame before it has decoded "
                              "(autodecomp-verify-offsets), and frame %zu "
                              "did not", exp->idx->ops->name, frame_no, v);
    if (verified_frames (exp) == v)
      return ad_error_set (err, EIO, "%s: frame %zu: the frames before it "
                           "could not all be decoded to prove its offset "
                           "(autodecomp-verify-offsets)",
                           exp->idx->ops->name, frame_no);
  }
}

static int
read_range (struct ad_export *exp, struct ad_reader *reader,
            struct ad_source *src, char *buf, size_t count, uint64_t offset,
            bool prove, struct ad_error *err)
{
  struct piece stack_pieces[16], *pieces = stack_pieces;
  size_t n = 0, alloc = 16, i;
  bool sequential;
  uint64_t pos = offset;
  size_t left = count;
  int r = 0;

  if (offset > exp->size || count > exp->size - offset)
    return ad_error_set (err, EINVAL, "read of %zu bytes at offset %"
                         PRIu64 " is past the end of the %" PRIu64
                         "-byte image", count, offset, exp->size);

  /* 0. Where frame sizes are unchecked, prove where the first frame
   * starts (the later ones follow from the frames of this read).
   */
  if (prove && count > 0 && needs_proof (exp)) {
    struct ad_frame f;
    size_t first_no;

    if (ad_index_find (exp->idx, src, offset, &f, &first_no, emit_to_cache,
                       exp, err) == -1 ||
        prove_offset (exp, src, first_no, err) == -1)
      return -1;
  }

  /* 1. Find the frames and take their cache entries, creating those
   * that are missing.
   */
  while (left > 0) {
    struct piece *p;
    size_t len;

    if (n == alloc) {
      struct piece *more = malloc (2 * alloc * sizeof *more);
      if (more == NULL) {
        r = ad_error_set (err, ENOMEM, "out of memory");
        break;
      }
      memcpy (more, pieces, n * sizeof *more);
      if (pieces != stack_pieces)
        free (pieces);
      pieces = more;
      alloc *= 2;
    }
    p = &pieces[n];
    memset (p, 0, sizeof *p);
    if (ad_index_find (exp->idx, src, pos, &p->frame, &p->frame_no,
                       emit_to_cache, exp, err) == -1) {
      r = -1;
      break;
    }
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
      if (p->entry == NULL) {
        r = -1;
        break;
      }
    }
    n++;
    pos += len;
    left -= len;
  }

  /* 2. Start decoding what we created, and read ahead. */
  sequential = reader &&
    __atomic_load_n (&reader->streak, __ATOMIC_RELAXED) >= SEQ_STREAK;
  if (start_pieces (exp, src, pieces, n, err) == -1)
    r = -1;
  if (r == 0)
    note_read (exp, reader, src, offset, count);

  /* 3. Wait for each piece and copy it. */
  for (i = 0; i < n; i++) {
    struct piece *p = &pieces[i];
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
        mark_decoded (exp, p->frame_no);
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
  }
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

  src = ad_fetch_wrap_reader (&fs, exp->fetch, src, reader,
                              reader && __atomic_load_n (&reader->streak,
                                                         __ATOMIC_RELAXED)
                              >= SEQ_STREAK);
  return read_range (exp, reader, src, buf, count, offset, true, err);
}

int
ad_export_pread (struct ad_export *exp, struct ad_source *src, void *buf,
                 size_t count, uint64_t offset, struct ad_error *err)
{
  struct ad_fetch_source fs;

  src = ad_fetch_wrap (&fs, exp->fetch, src);
  return read_range (exp, NULL, src, buf, count, offset, true, err);
}

int
ad_export_prefetch (struct ad_export *exp, struct ad_source *src,
                    size_t count, uint64_t offset, struct ad_error *err)
{
  struct ad_fetch_source fs;

  src = ad_fetch_wrap (&fs, exp->fetch, src);
  return read_range (exp, NULL, src, NULL, count, offset, true, err);
}

/* Frames compressed this well are decoded by extents to see whether
 * they are zeros (through a small buffer, nothing is kept).
 */
#define ZERO_PROBE_RATIO 128
#define ZERO_PROBE_BUF (64 * 1024)

static int
probe_zero (struct ad_export *exp, struct ad_source *src,
            const struct ad_frame *frame, size_t frame_no, bool *zero,
            struct ad_error *err)
{
  struct ad_frame_reader *r;
  char *buf;
  ssize_t n;

  *zero = false;
  buf = malloc (ZERO_PROBE_BUF);
  if (buf == NULL)
    return ad_error_set (err, ENOMEM, "out of memory");
  r = ad_frame_reader_open (exp->idx, frame, frame_no, err);
  if (r == NULL) {
    free (buf);
    return -1;
  }
  /* To the end (which runs the frame's final checks) while zeros. */
  while ((n = ad_frame_reader_read (r, src, buf, ZERO_PROBE_BUF, err)) > 0 &&
         ad_is_zero (buf, n))
    ;
  if (n == 0)
    *zero = true;
  ad_frame_reader_close (r);
  free (buf);
  return n == -1 ? -1 : 0;
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

    if (needs_proof (exp) && frame_no > verified_frames (exp))
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
             f.usize > AD_LARGE_FRAME / 8 / 1024 && /* not tiny */
             f.usize <= AD_LARGE_FRAME &&
             f.csize <= f.usize / ZERO_PROBE_RATIO) {
      if (probe_zero (exp, src, &f, frame_no, &zero, err) == -1) {
        if (!first)
          break;                /* Report what is known so far. */
        return -1;
      }
      __atomic_add_fetch (&exp->zero_probes, 1, __ATOMIC_RELAXED);
      if (zero) {
        ad_cache_insert (exp->cache, exp, frame_no, NULL, f.usize);
        mark_decoded (exp, frame_no);
      }
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
