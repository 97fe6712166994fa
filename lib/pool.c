/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the decode workers (see pool.h).
 *
 * Two FIFO queues, urgent and read-ahead, under one mutex; workers take
 * from the urgent queue first.  Slots are a counter with a condition
 * variable.
 */

#include <config.h>

#include <stdlib.h>
#include <limits.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"

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

  /* Spare input buffers (at most slots of them). */
  struct spare_buffer {
    void *buf;
    size_t cap;
  } *spares;
  unsigned nspares;
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

  if (threads == 0) {
    long n = sysconf (_SC_NPROCESSORS_ONLN);
    threads = n > 0 ? n : 1;
  }
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
  pool->spares = calloc (slots, sizeof *pool->spares);
  if (pool->spares == NULL) {
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
  for (i = 0; i < pool->nspares; i++)
    free (pool->spares[i].buf);
  free (pool->spares);
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
  void *buf = NULL;
  unsigned i, best = UINT_MAX;

  pthread_mutex_lock (&pool->lock);
  for (i = 0; i < pool->nspares; i++)
    if (pool->spares[i].cap >= len &&
        (best == UINT_MAX || pool->spares[i].cap < pool->spares[best].cap))
      best = i;
  if (best != UINT_MAX) {
    buf = pool->spares[best].buf;
    *cap = pool->spares[best].cap;
    pool->spares[best] = pool->spares[--pool->nspares];
  }
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
  unsigned i, smallest = 0;

  if (buf == NULL)
    return;
  pthread_mutex_lock (&pool->lock);
  if (pool->nspares < pool->slots) {
    pool->spares[pool->nspares].buf = buf;
    pool->spares[pool->nspares++].cap = cap;
    buf = NULL;
  }
  else {
    /* Keep the larger buffers. */
    for (i = 1; i < pool->nspares; i++)
      if (pool->spares[i].cap < pool->spares[smallest].cap)
        smallest = i;
    if (pool->nspares > 0 && pool->spares[smallest].cap < cap) {
      void *old = pool->spares[smallest].buf;
      pool->spares[smallest].buf = buf;
      pool->spares[smallest].cap = cap;
      buf = old;
    }
  }
  pthread_mutex_unlock (&pool->lock);
  free (buf);
}
