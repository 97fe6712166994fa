/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: few, large reads of the compressed image (see fetch.h).
 */

#include <config.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "fetch.h"

#define FETCH_SLOTS 4           /* Buffers of fetch_size bytes. */
#define FETCH_STREAMS 4         /* Streams of reads followed. */
#define FETCH_STREAK 2          /* Continuations before fetching. */
#define FETCH_BEHIND (1024 * 1024)  /* A stream continues this far */
#define FETCH_AHEAD (256 * 1024)    /* before and after its end. */

struct slot {
  char *buf;                    /* fetch_size bytes, or NULL. */
  uint64_t off;                 /* The bytes [off, off + len) */
  size_t len;                   /* (0: none). */
  bool loading;                 /* Being read (they are not there yet). */
  unsigned users;               /* Copying out of buf. */
  uint64_t used;                /* Tick of the last use. */
};

struct stream {
  uint64_t next;                /* Highest end of its reads. */
  unsigned streak;              /* Reads that continued it. */
  uint64_t used;                /* Tick of the last use (0: free). */
};

struct ad_fetch {
  pthread_mutex_t lock;
  pthread_cond_t loaded;        /* A slot stopped loading. */
  size_t size;
  struct ad_cache *cache;
  uint64_t tick;
  struct slot slots[FETCH_SLOTS];
  size_t nslots;                /* Of them in use. */
  struct stream streams[FETCH_STREAMS];
  uint64_t hits, fetches;
};

struct ad_fetch *
ad_fetch_new (size_t fetch_size, struct ad_cache *cache)
{
  struct ad_fetch *f = calloc (1, sizeof *f);
  struct ad_cache_stats st;
  uint64_t quarter;

  if (f == NULL)
    return NULL;
  pthread_mutex_init (&f->lock, NULL);
  pthread_cond_init (&f->loaded, NULL);
  f->nslots = FETCH_SLOTS;
  /* At most a quarter of the cache: fewer buffers, then smaller ones. */
  if (cache) {
    ad_cache_get_stats (cache, &st);
    quarter = st.max_bytes / 4;
    if (quarter / fetch_size < f->nslots)
      f->nslots = quarter / fetch_size > 0 ? quarter / fetch_size : 1;
    if (fetch_size > quarter)
      fetch_size = quarter;
  }
  f->size = fetch_size;
  f->cache = cache;
  return f;
}

void
ad_fetch_free (struct ad_fetch *f)
{
  size_t i;

  if (f == NULL)
    return;
  for (i = 0; i < FETCH_SLOTS; i++)
    if (f->slots[i].buf) {
      free (f->slots[i].buf);
      if (f->cache)
        ad_cache_unreserve (f->cache, f->size);
    }
  pthread_cond_destroy (&f->loaded);
  pthread_mutex_destroy (&f->lock);
  free (f);
}

void
ad_fetch_stats (struct ad_fetch *f, uint64_t *hits, uint64_t *fetches)
{
  pthread_mutex_lock (&f->lock);
  *hits = f->hits;
  *fetches = f->fetches;
  pthread_mutex_unlock (&f->lock);
}

/* Record a read of [offset, offset + count) in the stream it
 * continues (or a new one, in place of the least recently used) and
 * say whether that stream is sequential.  A read continues a stream
 * if it starts at most FETCH_BEHIND before its end (requests in flight
 * arrive in any order) or at most FETCH_AHEAD after it.
 */
static bool
note_stream_locked (struct ad_fetch *f, uint64_t offset, size_t count)
{
  uint64_t end = offset + count;
  struct stream *s, *lru = &f->streams[0];
  size_t i;

  for (i = 0; i < FETCH_STREAMS; i++) {
    s = &f->streams[i];
    if (s->used && offset + FETCH_BEHIND >= s->next &&
        offset <= s->next + FETCH_AHEAD) {
      if (s->streak < FETCH_STREAK)
        s->streak++;
      if (end > s->next)
        s->next = end;
      s->used = ++f->tick;
      return s->streak >= FETCH_STREAK;
    }
    if (s->used < lru->used)
      lru = s;
  }
  lru->next = end;
  lru->streak = 0;
  lru->used = ++f->tick;
  return false;
}

static bool
covers (const struct slot *sl, uint64_t offset, size_t count)
{
  return sl->len > 0 && offset >= sl->off &&
    offset - sl->off <= sl->len && count <= sl->len - (offset - sl->off);
}

/* A slot to fetch into: free, or the least recently used that nobody
 * reads; NULL if all are busy or no buffer can be had.
 */
static struct slot *
take_slot_locked (struct ad_fetch *f)
{
  struct slot *best = NULL;
  size_t i;

  for (i = 0; i < f->nslots; i++) {
    struct slot *sl = &f->slots[i];

    if (sl->loading || sl->users > 0)
      continue;
    if (best == NULL || sl->used < best->used)
      best = sl;
  }
  if (best && best->buf == NULL) {
    best->buf = malloc (f->size);
    if (best->buf == NULL)
      return NULL;
    if (f->cache)
      ad_cache_reserve (f->cache, f->size);
  }
  return best;
}

static int
fetch_pread (void *opaque, void *buf, size_t count, uint64_t offset,
             struct ad_error *err)
{
  struct ad_fetch_source *fs = opaque;
  struct ad_fetch *f = fs->f;
  struct ad_source *inner = fs->inner;
  struct slot *sl = NULL;
  struct ad_error ferr;
  size_t i, len;
  int r;

  pthread_mutex_lock (&f->lock);
 again:
  for (i = 0; i < FETCH_SLOTS; i++) {
    if (covers (&f->slots[i], offset, count)) {
      sl = &f->slots[i];
      break;
    }
  }
  if (sl && sl->loading) {
    pthread_cond_wait (&f->loaded, &f->lock);
    sl = NULL;
    goto again;
  }
  if (sl) {
    note_stream_locked (f, offset, count);
    f->hits++;
  }
  else if (count >= f->size / 2 || !note_stream_locked (f, offset, count) ||
           (sl = take_slot_locked (f)) == NULL) {
    pthread_mutex_unlock (&f->lock);
    return ad_source_pread (inner, buf, count, offset, err);
  }
  else {
    /* Fetch fetch_size bytes from offset (count of them are wanted),
     * or from the end of a buffer that ends just before it, so that a
     * stream's buffers follow each other without a gap or an overlap.
     */
    uint64_t start = offset;

    for (i = 0; i < f->nslots; i++) {
      const struct slot *o = &f->slots[i];
      uint64_t end = o->off + o->len;

      if (o != sl && o->len > 0 && end <= offset &&
          offset - end <= FETCH_AHEAD && offset + count - end <= f->size)
        start = end;
    }
    len = inner->size - start < f->size ? inner->size - start : f->size;
    sl->loading = true;
    sl->off = start;
    sl->len = len;
    sl->used = ++f->tick;
    pthread_mutex_unlock (&f->lock);
    ad_error_clear (&ferr);
    r = ad_source_pread (inner, sl->buf, len, start, &ferr);
    pthread_mutex_lock (&f->lock);
    sl->loading = false;
    pthread_cond_broadcast (&f->loaded);
    if (r == -1) {
      sl->len = 0;
      pthread_mutex_unlock (&f->lock);
      return ad_source_pread (inner, buf, count, offset, err);
    }
    f->fetches++;
  }
  sl->users++;
  sl->used = ++f->tick;
  pthread_mutex_unlock (&f->lock);
  memcpy (buf, sl->buf + (offset - sl->off), count);
  pthread_mutex_lock (&f->lock);
  sl->users--;
  pthread_mutex_unlock (&f->lock);
  return 0;
}

struct ad_source *
ad_fetch_wrap (struct ad_fetch_source *fs, struct ad_fetch *f,
               struct ad_source *inner)
{
  if (f == NULL)
    return inner;
  memset (fs, 0, sizeof *fs);
  fs->f = f;
  fs->inner = inner;
  fs->src.pread = fetch_pread;
  fs->src.opaque = fs;
  fs->src.size = inner->size;
  return &fs->src;
}
