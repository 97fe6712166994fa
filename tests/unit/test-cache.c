/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Unit test of lib/cache.c: decode-once, bound, LRU, reference counts,
 * failures not cached, zero frames kept as flags.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include "cache.h"

#define FRAME 4096

static unsigned fills[64];
static int fail_next;

static int
fill (void *opaque, void *buf, struct ad_error *err)
{
  unsigned n = (unsigned) (uintptr_t) opaque;

  __atomic_add_fetch (&fills[n], 1, __ATOMIC_SEQ_CST);
  if (__atomic_exchange_n (&fail_next, 0, __ATOMIC_SEQ_CST))
    return ad_error_set (err, EIO, "injected failure of frame %u", n);
  usleep (2000);                /* Let others pile up on the same frame. */
  if (n == 63)
    memset (buf, 0, FRAME);
  else
    memset (buf, 'a' + n % 26, FRAME);
  return 0;
}

#define CHECK(cond) \
  do { if (!(cond)) { fprintf (stderr, "%s:%d: check failed: %s\n", \
                               __FILE__, __LINE__, #cond); exit (1); } \
  } while (0)

static struct ad_cache *shared;
static int owner;

static void *
reader (void *arg)
{
  unsigned seed = (unsigned) (uintptr_t) arg;
  int i;

  for (i = 0; i < 2000; i++) {
    unsigned n = rand_r (&seed) % 8;
    struct ad_error err;
    struct ad_cache_entry *e =
      ad_cache_get (shared, &owner, n, FRAME, fill, (void *) (uintptr_t) n,
                    &err);
    CHECK (e != NULL);
    CHECK (!e->zero && e->data[0] == 'a' + (int) n &&
           e->data[FRAME - 1] == 'a' + (int) n);
    ad_cache_put (shared, e);
  }
  return NULL;
}

int
main (void)
{
  struct ad_cache *c;
  struct ad_cache_entry *e, *held;
  struct ad_cache_stats st;
  struct ad_error err;
  pthread_t t[8];
  int i;

  /* Bound: room for 4 frames. */
  c = ad_cache_new (4 * FRAME);
  CHECK (c);
  for (i = 0; i < 10; i++) {
    e = ad_cache_get (c, &owner, i, FRAME, fill, (void *) (uintptr_t) i,
                      &err);
    CHECK (e && e->data[0] == 'a' + i);
    ad_cache_put (c, e);
  }
  ad_cache_get_stats (c, &st);
  CHECK (st.bytes <= 4 * FRAME);
  CHECK (st.evictions == 6);
  /* The most recent four are still there, the oldest are not. */
  CHECK (ad_cache_contains (c, &owner, 9));
  CHECK (ad_cache_contains (c, &owner, 6));
  CHECK (!ad_cache_contains (c, &owner, 5));

  /* A held entry is never evicted. */
  held = ad_cache_get (c, &owner, 20, FRAME, fill, (void *) 20, &err);
  CHECK (held);
  for (i = 30; i < 40; i++) {
    e = ad_cache_get (c, &owner, i, FRAME, fill, (void *) (uintptr_t) i,
                      &err);
    CHECK (e);
    ad_cache_put (c, e);
  }
  CHECK (held->data[0] == 'a' + 20 % 26);
  CHECK (ad_cache_contains (c, &owner, 20));
  ad_cache_put (c, held);

  /* A failed fill is not cached; the next get decodes again. */
  fills[50] = 0;
  fail_next = 1;
  e = ad_cache_get (c, &owner, 50, FRAME, fill, (void *) 50, &err);
  CHECK (e == NULL && err.errnum == EIO);
  CHECK (!ad_cache_contains (c, &owner, 50));
  e = ad_cache_get (c, &owner, 50, FRAME, fill, (void *) 50, &err);
  CHECK (e && fills[50] == 2);
  ad_cache_put (c, e);

  /* All-zero frames keep no buffer and cost no bytes. */
  e = ad_cache_get (c, &owner, 63, FRAME, fill, (void *) 63, &err);
  CHECK (e && e->zero && e->data == NULL);
  ad_cache_put (c, e);

  /* Owners are separate. */
  {
    int other;
    e = ad_cache_get (c, &other, 63, FRAME, fill, (void *) 1, &err);
    CHECK (e && !e->zero && e->data[0] == 'b');
    ad_cache_put (c, e);
    ad_cache_drop_owner (c, &other);
    CHECK (!ad_cache_contains (c, &other, 63));
    CHECK (ad_cache_contains (c, &owner, 63));
  }
  ad_cache_free (c);

  /* Many threads on few frames: each frame is decoded exactly once. */
  memset (fills, 0, sizeof fills);
  shared = ad_cache_new (64 * FRAME);
  for (i = 0; i < 8; i++)
    pthread_create (&t[i], NULL, reader, (void *) (uintptr_t) (i + 1));
  for (i = 0; i < 8; i++)
    pthread_join (t[i], NULL);
  for (i = 0; i < 8; i++)
    CHECK (fills[i] == 1);
  ad_cache_get_stats (shared, &st);
  printf ("test-cache: hits %lu misses %lu waits %lu\n",
          (unsigned long) st.hits, (unsigned long) st.misses,
          (unsigned long) st.waits);
  ad_cache_free (shared);
  return 0;
}
