/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the decode workers.
 *
 * One pool of worker threads serves a whole process, like the cache:
 * readers hand it the frames they miss (urgent jobs, run first) and the
 * frames a sequential reader will want next (read-ahead jobs), and
 * wait for the bytes they need while the workers decode.  So a read
 * near the start of a large frame is answered as soon as its bytes are
 * decoded, and every core decodes for a sequential reader.
 *
 * Slots bound what is in flight: a reader takes a slot before it reads
 * the compressed input of a job, and the job gives it back when it is
 * done.  The memory of decodes in progress (compressed input, decoder
 * state) is therefore bounded by the number of slots, however many
 * connections miss at once; the decoded output is counted by the
 * cache.  Read-ahead only takes a slot that is free, so it never makes
 * a reader wait.
 *
 * A batch is the parallel part of one pass at open (the bzip2 sizing
 * pass, the zstd frame walk): threads of its own that live as long as
 * the pass, since the pass runs before its image serves any read.  The
 * calling thread pushes jobs and the workers take them in the order
 * pushed.  A bound on the jobs waiting makes ad_batch_push wait while
 * the queue is full (back-pressure), so the caller never runs far
 * ahead of the workers.  Every worker makes state of its own once (scratch memory,
 * a decoder) and hands it to every job it runs.  A job that fails
 * fails the batch: the jobs run after that are only dropped (they free
 * what they hold), and whatever waits in the batch wakes up, since the
 * pass is about to fail.  Buffers of one size, at most a fixed number
 * of them, carry the input that the caller shares with the jobs; they
 * are reference counted and recycled, and a caller that needs one
 * when all are in use waits for a job to give one back, which bounds
 * the memory of what is queued.  Threads start with the first job, as
 * many as will; when none will, a batch that allows it runs its jobs
 * on the calling thread, in ad_batch_push.
 */
#ifndef AUTODECOMP_POOL_H
#define AUTODECOMP_POOL_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

struct ad_pool;

typedef void ad_pool_job_fn (void *arg);

/* threads: workers (0: one per CPU); slots: jobs in flight (0: threads
 * + 1).
 */
extern struct ad_pool *ad_pool_new (unsigned threads, unsigned slots,
                                    struct ad_error *err);

/* Run what is queued, then stop the workers and free the pool. */
extern void ad_pool_free (struct ad_pool *pool);

extern unsigned ad_pool_threads (const struct ad_pool *pool);

/* Take a slot, waiting for one if wait is true; false if none was
 * free (only when not waiting).
 */
extern bool ad_pool_acquire (struct ad_pool *pool, bool wait);
extern void ad_pool_release (struct ad_pool *pool);

/* Queue a job.  Urgent jobs (a reader waits for them) run before
 * read-ahead jobs.  Returns -1 with err only if memory ran out.
 */
extern int ad_pool_submit (struct ad_pool *pool, ad_pool_job_fn *fn,
                           void *arg, bool urgent, struct ad_error *err);

/* Buffers for the compressed input of jobs, recycled (at most one per
 * slot is kept): fresh memory costs page faults.  get returns a buffer
 * of at least len bytes and its capacity in *cap, or NULL.
 */
extern void *ad_pool_buffer_get (struct ad_pool *pool, size_t len,
                                 size_t *cap);
extern void ad_pool_buffer_put (struct ad_pool *pool, void *buf, size_t cap);

/* Batches. */

struct ad_batch;

struct ad_batch_spec {
  /* A worker's own state, made when it starts and freed when it ends,
   * or NULL if memory ran out (run is then given NULL and should fail
   * the job).  Either may be NULL: the workers have no state.
   */
  void *(*worker_new) (void *ctx);
  void (*worker_free) (void *ctx, void *state);

  /* Run job with the worker's state: false if it failed, which fails
   * the batch.  With drop (the batch failed, or is finished with
   * abort) only free what the job holds and record that it did not
   * run.
   */
  bool (*run) (void *ctx, void *state, void *job, bool drop);

  unsigned threads;             /* Workers (see ad_batch_threads_for). */
  size_t queue_max;             /* Jobs waiting at most (0: no bound). */
  bool run_inline;              /* With no thread, push runs the job. */
  size_t buffer_size;           /* The buffers of ad_batch_buffer_get, */
  unsigned max_buffers;         /* at most this many of them. */
};

/* How many workers a pass asking for threads uses: one per CPU for 0,
 * at most max.
 */
extern unsigned ad_batch_threads_for (unsigned threads, unsigned max);

/* A batch, its workers not started yet.  ctx is handed to every
 * function of spec.
 */
extern struct ad_batch *ad_batch_new (const struct ad_batch_spec *spec,
                                      void *ctx, struct ad_error *err);

/* Queue a job, first starting the workers if none runs yet; wait while
 * the queue is full.  Returns -1 with err (the job not queued) if no
 * thread could be started and the batch may not run inline, or if
 * memory ran out.
 */
extern int ad_batch_push (struct ad_batch *b, void *job,
                          struct ad_error *err);

/* Has a job failed (or the batch been finished with abort)?  Callable
 * with or without the batch's lock.
 */
extern bool ad_batch_failed (struct ad_batch *b);

/* Run the queued jobs (or drop them, with abort, which fails the
 * batch), then end the workers.  Every job pushed has been run or
 * dropped when it returns; the buffers stay valid until ad_batch_free.
 */
extern void ad_batch_finish (struct ad_batch *b, bool abort);

/* Finish with abort unless finished, then free the batch and its
 * buffers.  b may be NULL.
 */
extern void ad_batch_free (struct ad_batch *b);

/* The batch's lock and condition, for a job that waits while it runs
 * for what the caller is still pushing to it (the bytes of a zstd
 * frame being read).  With the lock held, ad_batch_wait waits until
 * ad_batch_wake is called, a buffer is freed or the batch fails, and
 * may wake for nothing; so the caller tests what it waits for, and
 * ad_batch_failed, around it.
 */
extern void ad_batch_lock (struct ad_batch *b);
extern void ad_batch_unlock (struct ad_batch *b);
extern void ad_batch_wait (struct ad_batch *b);
extern void ad_batch_wake (struct ad_batch *b);

/* A buffer of spec.buffer_size bytes held once, waiting for one while
 * spec.max_buffers are held; NULL with err if the batch failed or
 * memory ran out.  hold takes one more reference to a held buffer
 * (with or without the lock), put gives one back (without the lock):
 * the last put recycles the buffer.  put ignores NULL.
 */
extern void *ad_batch_buffer_get (struct ad_batch *b, struct ad_error *err);
extern void ad_batch_buffer_hold (void *buf);
extern void ad_batch_buffer_put (struct ad_batch *b, void *buf);

#endif /* AUTODECOMP_POOL_H */
