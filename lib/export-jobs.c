/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: decode jobs, which decode the frames a read misses (see
 * export.h).
 *
 * A job decodes a run of consecutive frames (one frame, or several
 * small ones) whose cache entries the reader created LOADING.  The
 * reader reads the compressed bytes of the whole run from the source
 * in one call, in its own thread (the source belongs to a connection
 * and may not be used from elsewhere), and a decode worker decodes
 * them from memory through a "window" source that serves only that
 * range.  The job holds one pool slot from before its input is read
 * until it is done.  Small frames, and every frame of an export
 * without a pool, are decoded in the reader's thread instead.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "export-int.h"

/* What a decoder holds besides its input and output, at most. */
#define DECODER_MEM (8 * 1024 * 1024ULL)

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
  if (exp->config.on_decode)
    exp->config.on_decode (exp->config.on_decode_opaque, frame_no, frame);
  r = ad_cache_alloc (exp->cache, e, &err);
  if (r == 0)
    r = ad_index_decode_frame_progress (exp->idx, src, frame, frame_no,
                                        e->data,
                                        exp->config.progressive
                                        ? publish_progress : NULL,
                                        &p, &err);
  /* Before the entry settles, so that a reader woken by it sees the
   * frame counted.
   */
  if (r == 0)
    export_mark_decoded (exp, frame_no);
  ad_cache_finish (exp->cache, e, r == -1 ? &err : NULL);
}

static void
run_job (void *arg)
{
  struct job *job = arg;
  struct ad_export *exp = job->exp;
  struct ad_range_source input;
  struct ad_source *src;
  uint64_t largest = 0, reserved;
  size_t i;

  src = ad_source_init_range (&input, job->data, job->input_off,
                              job->input_len, job->source_size);
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
    fill_entry (exp, src, &job->frame[i], job->frame_no[i], job->entry[i]);
    ad_cache_put (exp->cache, job->entry[i]);
  }
  if (job->ahead)
    __atomic_add_fetch (&exp->readahead_frames, job->n, __ATOMIC_RELAXED);
  ad_cache_unreserve (exp->cache, reserved);
  ad_loan_return (job->loan);
  ad_pool_buffer_put (exp->config.pool, job->input, job->input_cap);
  ad_pool_release (exp->config.pool);
  free (job);
  job_end (exp);
}

/* Read the job's input and hand it to a worker; the job holds a slot
 * and a reference to each entry.  On failure every entry is settled
 * with the error and the slot given back.
 */
int
export_submit_job (struct ad_export *exp, struct ad_source *src,
                   struct job *job, struct ad_error *err)
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
    if (ad_pool_submit (exp->config.pool, run_job, job, !job->ahead, err) == 0)
      return 0;
  }
  else if ((job->input = ad_pool_buffer_get (exp->config.pool, job->input_len,
                                             &job->input_cap)) == NULL)
    ad_error_set (err, ENOMEM, "cannot allocate %zu bytes of compressed "
                  "input", job->input_len);
  else if (ad_source_read (src, job->input, job->input_len, job->input_off,
                           (const void **) &job->data, &job->loan,
                           err) == 0) {
    /* The fetcher lent its bytes: the buffer is not needed. */
    if (job->loan) {
      ad_pool_buffer_put (exp->config.pool, job->input, job->input_cap);
      job->input = NULL;
      job->input_cap = 0;
    }
    if (ad_pool_submit (exp->config.pool, run_job, job, !job->ahead, err) == 0)
      return 0;
  }

  ad_error_prefix (err, "%s: frame %zu at compressed offset %" PRIu64,
                   exp->idx->ops->name, job->frame_no[0], job->input_off);
  for (i = 0; i < job->n; i++) {
    ad_cache_finish (exp->cache, job->entry[i], err);
    ad_cache_put (exp->cache, job->entry[i]);
  }
  ad_loan_return (job->loan);
  ad_pool_buffer_put (exp->config.pool, job->input, job->input_cap);
  ad_pool_release (exp->config.pool);
  free (job);
  job_end (exp);
  return -1;
}

/* Can frame b join a job that ends with frame a? */
bool
export_fits_job (const struct job *job, const struct ad_frame *b)
{
  const struct ad_frame *first = &job->frame[0];
  const struct ad_frame *a = &job->frame[job->n - 1];
  uint64_t output = b->uoff + b->usize - first->uoff;

  return job->n < JOB_MAX_FRAMES &&
    b->coff >= a->coff && b->coff <= a->coff + a->csize &&
    output <= JOB_MAX_OUTPUT &&
    b->coff + b->csize - first->coff <= JOB_MAX_INPUT;
}

void
export_job_add (struct job *job, const struct ad_frame *frame,
                size_t frame_no, struct ad_cache_entry *entry)
{
  job->frame[job->n] = *frame;
  job->frame_no[job->n] = frame_no;
  job->entry[job->n] = entry;
  job->n++;
}

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
int
export_start_pieces (struct ad_export *exp, struct ad_source *src,
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
    if (exp->config.pool == NULL || pieces[i].frame.usize <= INLINE_MAX) {
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
      if (job->n > 0 && !export_fits_job (job, &pieces[k].frame))
        break;
      ad_cache_ref (exp->cache, pieces[k].entry);
      export_job_add (job, &pieces[k].frame, pieces[k].frame_no,
                      pieces[k].entry);
      pieces[k].created = false;
    }
    i = k;
    ad_pool_acquire (exp->config.pool, true);
    if (export_submit_job (exp, src, job, err) == -1)
      r = -1;
  }
  return r;
}
