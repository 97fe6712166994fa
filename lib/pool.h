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

#endif /* AUTODECOMP_POOL_H */
