/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the decode workers (see pool.h).
 *
 * Two FIFO queues, urgent and read-ahead, under one mutex; workers take
 * from the urgent queue first.  Slots are a counter with a condition
 * variable.  A batch has a ring of jobs under a mutex of its own, with
 * a condition for work, one for room in the ring and one for the rest
 * (a failure, a freed buffer, ad_batch_wake).  The pool's input
 * buffers and a batch's buffers are both kept as spares (below).
 */

#include <config.h>

#include <stdlib.h>
#include <limits.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"

/* Spare buffers, kept for the next buffer asked for: fresh memory costs
 * page faults.  The owner's lock guards them.
 */
struct spares {
  struct spare {
    void *buf;
    size_t cap;
  } *v;                         /* max of them. */
  unsigned n, max;
};

static int
spares_init (struct spares *s, unsigned max)
{
  s->n = 0;
  s->max = max;
  s->v = calloc (max ? max : 1, sizeof *s->v);
  return s->v ? 0 : -1;
}

static void
spares_free (struct spares *s)
{
  unsigned i;

  for (i = 0; i < s->n; i++)
    free (s->v[i].buf);
  free (s->v);
}

/* Take the smallest spare of at least len bytes (its capacity in *cap),
 * or NULL.
 */
static void *
spares_take (struct spares *s, size_t len, size_t *cap)
{
  void *buf;
  unsigned i, best = UINT_MAX;

  for (i = 0; i < s->n; i++)
    if (s->v[i].cap >= len &&
        (best == UINT_MAX || s->v[i].cap < s->v[best].cap))
      best = i;
  if (best == UINT_MAX)
    return NULL;
  buf = s->v[best].buf;
  *cap = s->v[best].cap;
  s->v[best] = s->v[--s->n];
  return buf;
}

/* Keep buf, or when max are kept the larger buffers.  Returns the
 * buffer to free (buf or a smaller spare), or NULL.
 */
static void *
spares_give (struct spares *s, void *buf, size_t cap)
{
  unsigned i, smallest = 0;

  if (s->n < s->max) {
    s->v[s->n].buf = buf;
    s->v[s->n++].cap = cap;
    return NULL;
  }
  for (i = 1; i < s->n; i++)
    if (s->v[i].cap < s->v[smallest].cap)
      smallest = i;
  if (s->n > 0 && s->v[smallest].cap < cap) {
    void *old = s->v[smallest].buf;

    s->v[smallest].buf = buf;
    s->v[smallest].cap = cap;
    return old;
  }
  return buf;
}

/*----------------------------------------------------------------------
 * The decode workers.
 */

struct job {
  ad_pool_job_fn *fn;
  void *arg;
  struct job *next;
};

struct queue {
  struct job *head, *tail;
};

struct ad_pool {
  pthread_mutex_t lock;
  pthread_cond_t work;          /* A job was queued, or stop was set. */
  pthread_cond_t slot_free;
  struct queue urgent, ahead;
  bool stop;
  unsigned slots, slots_used;
  unsigned nthreads;
  pthread_t *threads;

  struct spares spares;         /* Input buffers (at most slots). */
};

#define BUFFER_MIN (1024 * 1024)

static void
queue_push (struct queue *q, struct job *j)
{
  j->next = NULL;
  if (q->tail)
    q->tail->next = j;
  else
    q->head = j;
  q->tail = j;
}

static struct job *
queue_pop (struct queue *q)
{
  struct job *j = q->head;

  if (j) {
    q->head = j->next;
    if (q->head == NULL)
      q->tail = NULL;
  }
  return j;
}

static void *
worker (void *opaque)
{
  struct ad_pool *pool = opaque;

  pthread_mutex_lock (&pool->lock);
  for (;;) {
    struct job *j = queue_pop (&pool->urgent);

    if (j == NULL)
      j = queue_pop (&pool->ahead);
    if (j == NULL) {
      if (pool->stop)
        break;
      pthread_cond_wait (&pool->work, &pool->lock);
      continue;
    }
    pthread_mutex_unlock (&pool->lock);
    j->fn (j->arg);
    free (j);
    pthread_mutex_lock (&pool->lock);
  }
  pthread_mutex_unlock (&pool->lock);
  return NULL;
}

struct ad_pool *
ad_pool_new (unsigned threads, unsigned slots, struct ad_error *err)
{
  struct ad_pool *pool;
  unsigned i;
  int r;

  threads = ad_batch_threads_for (threads, UINT_MAX);
  if (slots == 0)
    slots = threads + 1;
  pool = calloc (1, sizeof *pool);
  if (pool == NULL ||
      (pool->threads = calloc (threads, sizeof (pthread_t))) == NULL) {
    free (pool);
    ad_error_set (err, ENOMEM, "decode workers: out of memory");
    return NULL;
  }
  pthread_mutex_init (&pool->lock, NULL);
  pthread_cond_init (&pool->work, NULL);
  pthread_cond_init (&pool->slot_free, NULL);
  pool->slots = slots;
  if (spares_init (&pool->spares, slots) == -1) {
    free (pool->threads);
    free (pool);
    ad_error_set (err, ENOMEM, "decode workers: out of memory");
    return NULL;
  }
  for (i = 0; i < threads; i++) {
    r = pthread_create (&pool->threads[i], NULL, worker, pool);
    if (r != 0) {
      ad_error_set (err, r, "decode workers: pthread_create: %s",
                    strerror (r));
      pool->nthreads = i;
      ad_pool_free (pool);
      return NULL;
    }
  }
  pool->nthreads = threads;
  return pool;
}

void
ad_pool_free (struct ad_pool *pool)
{
  unsigned i;

  if (pool == NULL)
    return;
  pthread_mutex_lock (&pool->lock);
  pool->stop = true;
  pthread_cond_broadcast (&pool->work);
  pthread_mutex_unlock (&pool->lock);
  for (i = 0; i < pool->nthreads; i++)
    pthread_join (pool->threads[i], NULL);
  pthread_cond_destroy (&pool->slot_free);
  pthread_cond_destroy (&pool->work);
  pthread_mutex_destroy (&pool->lock);
  spares_free (&pool->spares);
  free (pool->threads);
  free (pool);
}

unsigned
ad_pool_threads (const struct ad_pool *pool)
{
  return pool->nthreads;
}

bool
ad_pool_acquire (struct ad_pool *pool, bool wait)
{
  bool got = false;

  pthread_mutex_lock (&pool->lock);
  for (;;) {
    if (pool->slots_used < pool->slots) {
      pool->slots_used++;
      got = true;
      break;
    }
    if (!wait)
      break;
    pthread_cond_wait (&pool->slot_free, &pool->lock);
  }
  pthread_mutex_unlock (&pool->lock);
  return got;
}

void
ad_pool_release (struct ad_pool *pool)
{
  pthread_mutex_lock (&pool->lock);
  pool->slots_used--;
  pthread_cond_signal (&pool->slot_free);
  pthread_mutex_unlock (&pool->lock);
}

int
ad_pool_submit (struct ad_pool *pool, ad_pool_job_fn *fn, void *arg,
                bool urgent, struct ad_error *err)
{
  struct job *j = malloc (sizeof *j);

  if (j == NULL)
    return ad_error_set (err, ENOMEM, "decode workers: out of memory");
  j->fn = fn;
  j->arg = arg;
  pthread_mutex_lock (&pool->lock);
  queue_push (urgent ? &pool->urgent : &pool->ahead, j);
  pthread_cond_signal (&pool->work);
  pthread_mutex_unlock (&pool->lock);
  return 0;
}

void *
ad_pool_buffer_get (struct ad_pool *pool, size_t len, size_t *cap)
{
  void *buf;

  pthread_mutex_lock (&pool->lock);
  buf = spares_take (&pool->spares, len, cap);
  pthread_mutex_unlock (&pool->lock);
  if (buf == NULL) {
    *cap = len < BUFFER_MIN ? BUFFER_MIN : len;
    buf = malloc (*cap);
  }
  return buf;
}

void
ad_pool_buffer_put (struct ad_pool *pool, void *buf, size_t cap)
{
  if (buf == NULL)
    return;
  pthread_mutex_lock (&pool->lock);
  buf = spares_give (&pool->spares, buf, cap);
  pthread_mutex_unlock (&pool->lock);
  free (buf);
}

/*----------------------------------------------------------------------
 * Batches.
 */

struct ad_batch {
  struct ad_batch_spec spec;
  void *ctx;
  pthread_mutex_t lock;
  pthread_cond_t work;          /* A job was queued, or stop was set. */
  pthread_cond_t room;          /* A job left the queue, or it failed. */
  pthread_cond_t change;        /* ad_batch_wake, a failure, a buffer. */
  void **queue;                 /* Ring of qcap jobs. */
  size_t qhead, qlen, qcap;
  bool started;                 /* The first push started the threads. */
  bool stop;                    /* No more jobs will come. */
  bool finished;
  bool failed;                  /* Atomic: read without the lock. */
  unsigned nthreads;
  pthread_t *threads;
  void *inline_state;           /* The caller's, with no thread. */
  unsigned nbuffers;            /* Buffers in existence. */
  struct spares buffers;        /* Those not held. */
};

/* Before each buffer: its references, keeping 16-byte alignment. */
#define BATCH_BUFFER_HEADER 16

unsigned
ad_batch_threads_for (unsigned threads, unsigned max)
{
  if (threads == 0) {
    long n = sysconf (_SC_NPROCESSORS_ONLN);
    threads = n > 0 ? n : 1;
  }
  return threads > max ? max : threads;
}

struct ad_batch *
ad_batch_new (const struct ad_batch_spec *spec, void *ctx,
              struct ad_error *err)
{
  struct ad_batch *b = calloc (1, sizeof *b);

  if (b == NULL)
    goto nomem;
  b->spec = *spec;
  b->ctx = ctx;
  b->qcap = spec->queue_max ? spec->queue_max : 16;
  b->queue = calloc (b->qcap, sizeof *b->queue);
  b->threads = calloc (spec->threads ? spec->threads : 1,
                       sizeof *b->threads);
  if (b->queue == NULL || b->threads == NULL ||
      spares_init (&b->buffers, spec->max_buffers) == -1) {
    free (b->queue);
    free (b->threads);
    free (b);
    goto nomem;
  }
  pthread_mutex_init (&b->lock, NULL);
  pthread_cond_init (&b->work, NULL);
  pthread_cond_init (&b->room, NULL);
  pthread_cond_init (&b->change, NULL);
  return b;

 nomem:
  ad_error_set (err, ENOMEM, "calloc: %m");
  return NULL;
}

/* With the lock held. */
static void
batch_fail (struct ad_batch *b)
{
  __atomic_store_n (&b->failed, true, __ATOMIC_RELEASE);
  pthread_cond_broadcast (&b->change);
  pthread_cond_broadcast (&b->room);
}

bool
ad_batch_failed (struct ad_batch *b)
{
  return __atomic_load_n (&b->failed, __ATOMIC_ACQUIRE);
}

static void *
batch_worker (void *arg)
{
  struct ad_batch *b = arg;
  void *state = b->spec.worker_new ? b->spec.worker_new (b->ctx) : NULL;

  pthread_mutex_lock (&b->lock);
  for (;;) {
    void *job;
    bool drop;

    while (b->qlen == 0 && !b->stop)
      pthread_cond_wait (&b->work, &b->lock);
    if (b->qlen == 0)
      break;
    job = b->queue[b->qhead];
    b->qhead = (b->qhead + 1) % b->qcap;
    b->qlen--;
    drop = b->failed;
    pthread_cond_signal (&b->room);
    pthread_mutex_unlock (&b->lock);
    if (!b->spec.run (b->ctx, state, job, drop)) {
      pthread_mutex_lock (&b->lock);
      batch_fail (b);
    }
    else
      pthread_mutex_lock (&b->lock);
  }
  pthread_mutex_unlock (&b->lock);
  if (b->spec.worker_free)
    b->spec.worker_free (b->ctx, state);
  return NULL;
}

/* Start the workers, as many as will; with none, make the caller's
 * state for running jobs inline, if the batch allows it.  On failure
 * the next push tries again.
 */
static int
batch_start (struct ad_batch *b, struct ad_error *err)
{
  unsigned i;
  int e = 0;

  for (i = 0; i < b->spec.threads; i++) {
    e = pthread_create (&b->threads[i], NULL, batch_worker, b);
    if (e != 0)
      break;
    b->nthreads++;
  }
  if (b->nthreads == 0) {
    if (!b->spec.run_inline)
      return ad_error_set (err, e, "pthread_create: %s", strerror (e));
    if (b->spec.worker_new &&
        (b->inline_state = b->spec.worker_new (b->ctx)) == NULL)
      return ad_error_set (err, ENOMEM, "malloc: %s", strerror (ENOMEM));
  }
  b->started = true;
  return 0;
}

/* Make room for one more job in an unbounded queue (with the lock). */
static int
batch_grow (struct ad_batch *b, struct ad_error *err)
{
  void **q = malloc (2 * b->qcap * sizeof *q);
  size_t i;

  if (q == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  for (i = 0; i < b->qlen; i++)
    q[i] = b->queue[(b->qhead + i) % b->qcap];
  free (b->queue);
  b->queue = q;
  b->qhead = 0;
  b->qcap *= 2;
  return 0;
}

int
ad_batch_push (struct ad_batch *b, void *job, struct ad_error *err)
{
  if (!b->started && batch_start (b, err) == -1)
    return -1;
  if (b->nthreads == 0) {
    if (!b->spec.run (b->ctx, b->inline_state, job, ad_batch_failed (b))) {
      pthread_mutex_lock (&b->lock);
      batch_fail (b);
      pthread_mutex_unlock (&b->lock);
    }
    return 0;
  }
  pthread_mutex_lock (&b->lock);
  while (b->qlen == b->qcap) {
    if (b->spec.queue_max == 0) {
      if (batch_grow (b, err) == -1) {
        pthread_mutex_unlock (&b->lock);
        return -1;
      }
      break;
    }
    pthread_cond_wait (&b->room, &b->lock);
  }
  b->queue[(b->qhead + b->qlen) % b->qcap] = job;
  b->qlen++;
  pthread_cond_signal (&b->work);
  pthread_mutex_unlock (&b->lock);
  return 0;
}

void
ad_batch_finish (struct ad_batch *b, bool abort)
{
  unsigned i;

  if (b->finished)
    return;
  b->finished = true;
  pthread_mutex_lock (&b->lock);
  b->stop = true;
  if (abort)
    batch_fail (b);
  pthread_cond_broadcast (&b->work);
  pthread_mutex_unlock (&b->lock);
  for (i = 0; i < b->nthreads; i++)
    pthread_join (b->threads[i], NULL);
  if (b->spec.worker_free && b->inline_state)
    b->spec.worker_free (b->ctx, b->inline_state);
  b->inline_state = NULL;
}

void
ad_batch_free (struct ad_batch *b)
{
  if (b == NULL)
    return;
  ad_batch_finish (b, true);
  spares_free (&b->buffers);
  pthread_cond_destroy (&b->change);
  pthread_cond_destroy (&b->room);
  pthread_cond_destroy (&b->work);
  pthread_mutex_destroy (&b->lock);
  free (b->threads);
  free (b->queue);
  free (b);
}

void
ad_batch_lock (struct ad_batch *b)
{
  pthread_mutex_lock (&b->lock);
}

void
ad_batch_unlock (struct ad_batch *b)
{
  pthread_mutex_unlock (&b->lock);
}

void
ad_batch_wait (struct ad_batch *b)
{
  pthread_cond_wait (&b->change, &b->lock);
}

void
ad_batch_wake (struct ad_batch *b)
{
  pthread_cond_broadcast (&b->change);
}

static unsigned *
buffer_refs (void *buf)
{
  return (unsigned *) ((unsigned char *) buf - BATCH_BUFFER_HEADER);
}

void *
ad_batch_buffer_get (struct ad_batch *b, struct ad_error *err)
{
  unsigned char *p = NULL;
  size_t cap;

  pthread_mutex_lock (&b->lock);
  while (!b->failed && b->buffers.n == 0 &&
         b->nbuffers >= b->spec.max_buffers)
    pthread_cond_wait (&b->change, &b->lock);
  if (b->failed)
    ad_error_set (err, EIO, "parallel decoding failed");
  else if ((p = spares_take (&b->buffers, 0, &cap)) == NULL) {
    p = malloc (BATCH_BUFFER_HEADER + b->spec.buffer_size);
    if (p == NULL)
      ad_error_set (err, ENOMEM, "malloc: %m");
    else
      b->nbuffers++;
  }
  pthread_mutex_unlock (&b->lock);
  if (p == NULL)
    return NULL;
  p += BATCH_BUFFER_HEADER;
  *buffer_refs (p) = 1;
  return p;
}

void
ad_batch_buffer_hold (void *buf)
{
  __atomic_add_fetch (buffer_refs (buf), 1, __ATOMIC_RELAXED);
}

void
ad_batch_buffer_put (struct ad_batch *b, void *buf)
{
  if (buf == NULL ||
      __atomic_sub_fetch (buffer_refs (buf), 1, __ATOMIC_ACQ_REL) > 0)
    return;
  pthread_mutex_lock (&b->lock);
  /* There is room: no more buffers exist than spares are kept. */
  spares_give (&b->buffers, (unsigned char *) buf - BATCH_BUFFER_HEADER,
               b->spec.buffer_size);
  pthread_cond_broadcast (&b->change);
  pthread_mutex_unlock (&b->lock);
}
