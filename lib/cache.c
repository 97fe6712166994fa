/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the shared, bounded cache of decoded frames (see cache.h).
 *
 * Entries live in a hash table with chaining (keyed by owner and frame
 * number) and, while nobody holds them, on a doubly linked LRU list:
 * most recently released at the head, evicted from the tail.  A held
 * entry is off the list, so eviction never sees it.  One mutex guards
 * it all; decoding and copying happen outside it.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>

#include "buffer.h"
#include "cache.h"

enum { ENTRY_LOADING, ENTRY_READY, ENTRY_FAILED };

#define NR_BUCKETS 65536
#define NR_LOADED 16

struct ad_cache {
  pthread_mutex_t lock;
  /* Readers waiting for a LOADING entry sleep on the condition its
   * address hashes to, and are woken only once the entry holds what
   * one of them waits for (see ad_cache_wait): a sequential copy has
   * dozens of requests waiting on a few frames, and each frame's
   * progress would otherwise wake every one of them.
   */
  pthread_cond_t loaded[NR_LOADED];
  uint64_t max_bytes;
  uint64_t bytes;               /* Decoded bytes held (ready or loading). */
  struct ad_cache_entry *buckets[NR_BUCKETS];
  struct ad_cache_entry *lru_head, *lru_tail;
  struct ad_cache_stats stats;

  /* Buffers of entries that went away, kept for new entries of the
   * same size: first-touch page faults cost more than decoding on some
   * virtual machines, so memory is recycled rather than given back.
   * Newest first; counted with bytes against max_bytes, except the
   * newest one, up to SPARE_SLACK bytes (see trim_spares_locked).
   */
  struct spare *spare_head, *spare_tail;
  uint64_t spare_bytes;

  /* Memory of decodes in flight (ad_cache_reserve), and the part of it
   * counted in bytes.
   */
  uint64_t overhead, overhead_counted;
};

/* A spare buffer.  (Not kept inside the buffer itself: leak checkers
 * do not look inside mmapped buffers for pointers.)
 */
struct spare {
  struct spare *prev, *next;
  char *buf;
  size_t size;
};

#define SPARE_MIN (32 * 1024)   /* BGZF's members hold 65280 bytes. */

#define SPARE_SEARCH 64         /* Spares looked at for a matching size. */

bool
ad_is_zero (const void *buf, size_t size)
{
  const unsigned char *p = buf;
  size_t i;

  /* Check the first 16 bytes one at a time, then compare the buffer
   * with itself shifted by 16 bytes: fast, and needs no zero page.
   */
  for (i = 0; i < size && i < 16; i++)
    if (p[i])
      return false;
  if (size <= 16)
    return true;
  return memcmp (p, p + 16, size - 16) == 0;
}

static size_t
bucket_of (const void *owner, uint64_t frame_no)
{
  uint64_t h = (uint64_t) (uintptr_t) owner * 0x9E3779B97F4A7C15ULL;

  h ^= frame_no * 0xC2B2AE3D27D4EB4FULL;
  h ^= h >> 29;
  return h % NR_BUCKETS;
}

struct ad_cache *
ad_cache_new (uint64_t max_bytes)
{
  struct ad_cache *cache = calloc (1, sizeof *cache);
  size_t i;

  if (cache == NULL)
    return NULL;
  pthread_mutex_init (&cache->lock, NULL);
  for (i = 0; i < NR_LOADED; i++)
    pthread_cond_init (&cache->loaded[i], NULL);
  cache->max_bytes = max_bytes;
  return cache;
}

static void
spare_unlink_locked (struct ad_cache *cache, struct spare *sp)
{
  if (sp->prev)
    sp->prev->next = sp->next;
  else
    cache->spare_head = sp->next;
  if (sp->next)
    sp->next->prev = sp->prev;
  else
    cache->spare_tail = sp->prev;
  cache->spare_bytes -= sp->size;
}

/* One spare buffer of at most this size may be kept beyond the
 * cache's size.
 *
 * The memory of the decodes in flight counts against the cache while
 * they run (ad_cache_reserve): a decode that starts makes the cache
 * evict a frame, and when it ends the room comes back.  Without the
 * slack, the evicted frame's buffer was unmapped at once (nothing else
 * fit), and the next miss, finding room, mapped a fresh one: one
 * 16 MiB munmap and mmap, and 4096 page faults, per cold read of a
 * 16 MiB xz block.  Keeping the newest spare beyond the bound lets the
 * next miss take it back, for at most SPARE_SLACK bytes more than the
 * cache's size.
 */
#define SPARE_SLACK (16 * 1024 * 1024ULL)

/* Free the oldest spares until the cache and its spares fit, but for
 * the newest spare if it is at most SPARE_SLACK bytes.
 */
static void
trim_spares_locked (struct ad_cache *cache)
{
  while (cache->spare_tail &&
         cache->bytes + cache->spare_bytes > cache->max_bytes) {
    struct spare *sp = cache->spare_tail;

    if (sp == cache->spare_head && sp->size <= SPARE_SLACK)
      break;

    spare_unlink_locked (cache, sp);
    ad_buffer_free (sp->buf, sp->size);
    free (sp);
  }
}

/* A buffer of size bytes is no longer used by any entry. */
static void
give_back_locked (struct ad_cache *cache, char *data, size_t size)
{
  struct spare *sp;

  if (data == NULL)
    return;
  if (size < SPARE_MIN || (sp = malloc (sizeof *sp)) == NULL) {
    ad_buffer_free (data, size);
    return;
  }
  sp->buf = data;
  sp->size = size;
  sp->prev = NULL;
  sp->next = cache->spare_head;
  if (cache->spare_head)
    cache->spare_head->prev = sp;
  else
    cache->spare_tail = sp;
  cache->spare_head = sp;
  cache->spare_bytes += size;
  trim_spares_locked (cache);
}

/* A spare of exactly size bytes, or NULL. */
static char *
take_spare_locked (struct ad_cache *cache, size_t size)
{
  struct spare *sp;
  int n;

  for (sp = cache->spare_head, n = 0; sp && n < SPARE_SEARCH;
       sp = sp->next, n++)
    if (sp->size == size) {
      char *buf = sp->buf;

      spare_unlink_locked (cache, sp);
      free (sp);
      cache->stats.reused++;
      return buf;
    }
  return NULL;
}

static void
entry_free (struct ad_cache *cache, struct ad_cache_entry *e)
{
  give_back_locked (cache, e->data, e->size);
  free (e->error);
  free (e);
}

void
ad_cache_free (struct ad_cache *cache)
{
  size_t i;

  if (cache == NULL)
    return;
  for (i = 0; i < NR_BUCKETS; i++) {
    struct ad_cache_entry *e = cache->buckets[i], *next;
    for (; e; e = next) {
      next = e->hash_next;
      ad_buffer_free (e->data, e->size);
      free (e->error);
      free (e);
    }
  }
  while (cache->spare_head) {
    struct spare *sp = cache->spare_head;

    spare_unlink_locked (cache, sp);
    ad_buffer_free (sp->buf, sp->size);
    free (sp);
  }
  for (i = 0; i < NR_LOADED; i++)
    pthread_cond_destroy (&cache->loaded[i]);
  pthread_mutex_destroy (&cache->lock);
  free (cache);
}

static struct ad_cache_entry *
lookup_locked (struct ad_cache *cache, const void *owner, uint64_t frame_no)
{
  struct ad_cache_entry *e = cache->buckets[bucket_of (owner, frame_no)];

  for (; e; e = e->hash_next)
    if (e->owner == owner && e->frame_no == frame_no)
      return e;
  return NULL;
}

static void
hash_remove_locked (struct ad_cache *cache, struct ad_cache_entry *e)
{
  struct ad_cache_entry **pp =
    &cache->buckets[bucket_of (e->owner, e->frame_no)];

  for (; *pp; pp = &(*pp)->hash_next)
    if (*pp == e) {
      *pp = e->hash_next;
      return;
    }
}

static void
lru_unlink_locked (struct ad_cache *cache, struct ad_cache_entry *e)
{
  if (e->lru_prev)
    e->lru_prev->lru_next = e->lru_next;
  else if (cache->lru_head == e)
    cache->lru_head = e->lru_next;
  if (e->lru_next)
    e->lru_next->lru_prev = e->lru_prev;
  else if (cache->lru_tail == e)
    cache->lru_tail = e->lru_prev;
  e->lru_prev = e->lru_next = NULL;
}

static void
lru_push_head_locked (struct ad_cache *cache, struct ad_cache_entry *e)
{
  e->lru_prev = NULL;
  e->lru_next = cache->lru_head;
  if (cache->lru_head)
    cache->lru_head->lru_prev = e;
  cache->lru_head = e;
  if (cache->lru_tail == NULL)
    cache->lru_tail = e;
}

static void
remove_entry_locked (struct ad_cache *cache, struct ad_cache_entry *e)
{
  hash_remove_locked (cache, e);
  lru_unlink_locked (cache, e);
  if (!e->zero)
    cache->bytes -= e->size;
  cache->stats.entries--;
  entry_free (cache, e);
}

/* Evict unreferenced entries until extra more bytes fit, or nothing is
 * left to evict, then free spares beyond the size.  With want_buffer
 * (extra is then the size of a new entry), return a buffer of exactly
 * extra bytes for it, from an evicted entry or a spare, if there is
 * one: its pages are already mapped, and faulting in fresh ones costs
 * more than decoding on some machines.
 */
static char *
make_room_locked (struct ad_cache *cache, uint64_t extra, bool want_buffer)
{
  char *reuse = NULL;

  while (cache->bytes + extra > cache->max_bytes && cache->lru_tail) {
    struct ad_cache_entry *victim = cache->lru_tail;

    if (want_buffer && reuse == NULL && !victim->zero && victim->data &&
        victim->size == extra) {
      reuse = victim->data;
      victim->data = NULL;
      cache->stats.reused++;
    }
    remove_entry_locked (cache, victim);
    cache->stats.evictions++;
  }
  if (want_buffer && reuse == NULL)
    reuse = take_spare_locked (cache, extra);
  cache->bytes += extra;
  trim_spares_locked (cache);
  cache->bytes -= extra;
  return reuse;
}

static struct ad_cache_entry *
new_entry_locked (struct ad_cache *cache, const void *owner,
                  uint64_t frame_no, size_t size)
{
  struct ad_cache_entry *e = calloc (1, sizeof *e);
  size_t b;

  if (e == NULL)
    return NULL;
  e->owner = owner;
  e->frame_no = frame_no;
  e->size = size;
  e->state = ENTRY_LOADING;
  e->want = SIZE_MAX;
  b = bucket_of (owner, frame_no);
  e->hash_next = cache->buckets[b];
  cache->buckets[b] = e;
  cache->bytes += size;
  cache->stats.entries++;
  return e;
}

struct ad_cache_entry *
ad_cache_acquire (struct ad_cache *cache, const void *owner,
                  uint64_t frame_no, size_t size, bool *created,
                  struct ad_error *err)
{
  struct ad_cache_entry *e;
  char *reuse;

  *created = false;
  pthread_mutex_lock (&cache->lock);
  e = lookup_locked (cache, owner, frame_no);
  if (e) {
    if (e->refs++ == 0)
      lru_unlink_locked (cache, e);
    if (e->state == ENTRY_READY)
      cache->stats.hits++;
    else
      cache->stats.waits++;
    pthread_mutex_unlock (&cache->lock);
    return e;
  }
  pthread_mutex_unlock (&cache->lock);

  /* A miss: reserve the bytes and insert the entry LOADING.  Its
   * buffer is allocated by the filler, when the decode starts.
   */
  pthread_mutex_lock (&cache->lock);
  e = lookup_locked (cache, owner, frame_no);
  if (e) {
    if (e->refs++ == 0)
      lru_unlink_locked (cache, e);
    cache->stats.waits++;
    pthread_mutex_unlock (&cache->lock);
    return e;
  }
  cache->stats.misses++;
  reuse = make_room_locked (cache, size, true);
  e = new_entry_locked (cache, owner, frame_no, size);
  if (e == NULL) {
    pthread_mutex_unlock (&cache->lock);
    ad_buffer_free (reuse, size);
    ad_error_set (err, ENOMEM, "cache: out of memory");
    return NULL;
  }
  e->data = reuse;
  e->refs = 1;
  *created = true;
  pthread_mutex_unlock (&cache->lock);
  return e;
}

/* Decodes in flight may use this much memory outside the cache before
 * the cache gives up room for them.
 */
#define OVERHEAD_ALLOWANCE (8 * 1024 * 1024ULL)

/* Count the part of the decodes' memory beyond the allowance in bytes. */
static void
account_overhead_locked (struct ad_cache *cache)
{
  uint64_t want = cache->overhead > OVERHEAD_ALLOWANCE
    ? cache->overhead - OVERHEAD_ALLOWANCE : 0;

  if (want > cache->overhead_counted) {
    uint64_t more = want - cache->overhead_counted;

    make_room_locked (cache, more, false);
    cache->bytes += more;
  }
  else
    cache->bytes -= cache->overhead_counted - want;
  cache->overhead_counted = want;
}

void
ad_cache_reserve (struct ad_cache *cache, uint64_t bytes)
{
  pthread_mutex_lock (&cache->lock);
  cache->overhead += bytes;
  account_overhead_locked (cache);
  pthread_mutex_unlock (&cache->lock);
}

void
ad_cache_unreserve (struct ad_cache *cache, uint64_t bytes)
{
  pthread_mutex_lock (&cache->lock);
  cache->overhead -= bytes;
  account_overhead_locked (cache);
  pthread_mutex_unlock (&cache->lock);
}

int
ad_cache_alloc (struct ad_cache *cache, struct ad_cache_entry *e,
                struct ad_error *err)
{
  if (e->data)
    return 0;                   /* Handed over by an evicted entry. */
  pthread_mutex_lock (&cache->lock);
  e->data = take_spare_locked (cache, e->size);
  pthread_mutex_unlock (&cache->lock);
  if (e->data)
    return 0;
  e->data = ad_buffer_alloc (e->size);
  if (e->data == NULL)
    return ad_error_set (err, ENOMEM, "cannot allocate %zu bytes for a "
                         "frame", e->size);
  return 0;
}

/* The condition that readers of a LOADING entry wait on. */
static pthread_cond_t *
loaded_cond (struct ad_cache *cache, const struct ad_cache_entry *e)
{
  return &cache->loaded[((uintptr_t) e / sizeof *e) % NR_LOADED];
}

/* Wake the readers of e if one of them waits for what it now holds. */
static void
wake_locked (struct ad_cache *cache, struct ad_cache_entry *e)
{
  if (e->waiters > 0 && (e->state != ENTRY_LOADING || e->ready >= e->want)) {
    e->want = SIZE_MAX;
    pthread_cond_broadcast (loaded_cond (cache, e));
  }
}

void
ad_cache_ref (struct ad_cache *cache, struct ad_cache_entry *e)
{
  pthread_mutex_lock (&cache->lock);
  if (e->refs++ == 0)
    lru_unlink_locked (cache, e);
  pthread_mutex_unlock (&cache->lock);
}

void
ad_cache_progress (struct ad_cache *cache, struct ad_cache_entry *e,
                   size_t ready)
{
  pthread_mutex_lock (&cache->lock);
  e->ready = ready;
  wake_locked (cache, e);
  pthread_mutex_unlock (&cache->lock);
}

void
ad_cache_finish (struct ad_cache *cache, struct ad_cache_entry *e,
                 const struct ad_error *failed)
{
  struct ad_error *copy = NULL;
  bool zero = false;

  if (failed) {
    copy = malloc (sizeof *copy);
    if (copy)
      *copy = *failed;
  }
  else
    zero = ad_is_zero (e->data, e->size);

  pthread_mutex_lock (&cache->lock);
  if (failed) {
    /* The buffer, if any, goes with the last reference. */
    /* Forget it, so a later read tries again; the readers holding it
     * see the error, and the last one frees it.
     */
    e->state = ENTRY_FAILED;
    e->error = copy;
    hash_remove_locked (cache, e);
    cache->bytes -= e->size;
    cache->stats.entries--;
  }
  else {
    e->state = ENTRY_READY;
    e->ready = e->size;
    if (zero) {
      /* Keep a flag, not the buffer.  Readers that hold the entry may
       * still be copying from it: the last one frees it.
       */
      e->zero = true;
      cache->bytes -= e->size;
      if (e->refs == 1) {
        give_back_locked (cache, e->data, e->size);
        e->data = NULL;
      }
    }
  }
  wake_locked (cache, e);
  pthread_mutex_unlock (&cache->lock);
}

int
ad_cache_wait (struct ad_cache *cache, struct ad_cache_entry *e, size_t end,
               bool *zero, struct ad_error *err)
{
  int r = 0;

  if (end == 0 || end > e->size)
    end = e->size;
  pthread_mutex_lock (&cache->lock);
  while (e->state == ENTRY_LOADING && e->ready < end) {
    if (end < e->want)
      e->want = end;
    e->waiters++;
    pthread_cond_wait (loaded_cond (cache, e), &cache->lock);
    e->waiters--;
  }
  if (e->state == ENTRY_FAILED) {
    if (e->error)
      *err = *e->error;
    else
      ad_error_set (err, EIO, "decoding the frame failed");
    r = -1;
  }
  if (zero)
    *zero = e->zero;
  pthread_mutex_unlock (&cache->lock);
  return r;
}

bool
ad_cache_peek (struct ad_cache *cache, const void *owner, uint64_t frame_no,
               bool *zero)
{
  struct ad_cache_entry *e;
  bool r;

  pthread_mutex_lock (&cache->lock);
  e = lookup_locked (cache, owner, frame_no);
  r = e && e->state == ENTRY_READY;
  *zero = r && e->zero;
  pthread_mutex_unlock (&cache->lock);
  return r;
}

struct ad_cache_entry *
ad_cache_get (struct ad_cache *cache, const void *owner, uint64_t frame_no,
              size_t size, ad_cache_fill_fn *fill, void *opaque,
              struct ad_error *err)
{
  struct ad_cache_entry *e;
  bool created;

  e = ad_cache_acquire (cache, owner, frame_no, size, &created, err);
  if (e == NULL)
    return NULL;
  if (created) {
    int r = ad_cache_alloc (cache, e, err);

    if (r == 0)
      r = fill (opaque, e->data, err);
    ad_cache_finish (cache, e, r == -1 ? err : NULL);
  }
  if (ad_cache_wait (cache, e, 0, NULL, err) == -1) {
    ad_cache_put (cache, e);
    return NULL;
  }
  return e;
}

static void
lru_push_tail_locked (struct ad_cache *cache, struct ad_cache_entry *e)
{
  e->lru_next = NULL;
  e->lru_prev = cache->lru_tail;
  if (cache->lru_tail)
    cache->lru_tail->lru_next = e;
  cache->lru_tail = e;
  if (cache->lru_head == NULL)
    cache->lru_head = e;
}

static void put_locked (struct ad_cache *cache, struct ad_cache_entry *e,
                        size_t consumed);

void
ad_cache_put (struct ad_cache *cache, struct ad_cache_entry *e)
{
  pthread_mutex_lock (&cache->lock);
  put_locked (cache, e, 0);
  pthread_mutex_unlock (&cache->lock);
}

void
ad_cache_put_consumed (struct ad_cache *cache, struct ad_cache_entry *e,
                       size_t count)
{
  pthread_mutex_lock (&cache->lock);
  put_locked (cache, e, count ? count : 1);
  pthread_mutex_unlock (&cache->lock);
}

static void
put_locked (struct ad_cache *cache, struct ad_cache_entry *e, size_t consumed)
{
  if (consumed)
    e->consumed += consumed;
  if (--e->refs == 0) {
    if (e->state == ENTRY_FAILED)
      entry_free (cache, e);
    else {
      if (e->zero && e->data) {
        give_back_locked (cache, e->data, e->size);
        e->data = NULL;
      }
      if (e->consumed >= e->size && e->state == ENTRY_READY) {
        /* Read whole by sequential readers: recycle it now. */
        hash_remove_locked (cache, e);
        if (!e->zero)
          cache->bytes -= e->size;
        cache->stats.entries--;
        cache->stats.consumed++;
        entry_free (cache, e);
        return;
      }
      if (consumed)
        lru_push_tail_locked (cache, e);
      else
        lru_push_head_locked (cache, e);
      make_room_locked (cache, 0, false);
    }
  }
}

/* Insert the frame with buf (size bytes, or a zero frame: buf unused)
 * unless it is present.  Returns true if buf now belongs to the cache.
 */
static bool
insert (struct ad_cache *cache, const void *owner, uint64_t frame_no,
        char *buf, size_t size, bool zero)
{
  struct ad_cache_entry *e;

  pthread_mutex_lock (&cache->lock);
  if (lookup_locked (cache, owner, frame_no) != NULL) {
    pthread_mutex_unlock (&cache->lock);
    return false;
  }
  cache->stats.inserts++;
  make_room_locked (cache, zero ? 0 : size, false);
  e = new_entry_locked (cache, owner, frame_no, size);
  if (e == NULL) {
    pthread_mutex_unlock (&cache->lock);
    return false;
  }
  if (zero) {
    e->zero = true;
    cache->bytes -= size;
  }
  else
    e->data = buf;
  e->state = ENTRY_READY;
  e->ready = size;
  lru_push_head_locked (cache, e);
  pthread_mutex_unlock (&cache->lock);
  return !zero;
}

void
ad_cache_insert (struct ad_cache *cache, const void *owner,
                 uint64_t frame_no, const void *data, size_t size)
{
  bool zero = data == NULL || ad_is_zero (data, size);
  char *buf = NULL;

  if (!zero) {
    if (size > cache->max_bytes)
      return;
    pthread_mutex_lock (&cache->lock);
    buf = take_spare_locked (cache, size);
    pthread_mutex_unlock (&cache->lock);
    if (buf == NULL)
      buf = ad_buffer_alloc (size);
    if (buf == NULL)
      return;
    memcpy (buf, data, size);
  }
  if (!insert (cache, owner, frame_no, buf, size, zero) && buf) {
    pthread_mutex_lock (&cache->lock);
    give_back_locked (cache, buf, size);
    pthread_mutex_unlock (&cache->lock);
  }
}

void *
ad_cache_insert_take (struct ad_cache *cache, const void *owner,
                      uint64_t frame_no, void *buf, size_t size)
{
  bool zero = ad_is_zero (buf, size);
  char *other;

  if (!zero && size > cache->max_bytes)
    return buf;
  if (!insert (cache, owner, frame_no, buf, size, zero))
    return buf;
  pthread_mutex_lock (&cache->lock);
  other = take_spare_locked (cache, size);
  pthread_mutex_unlock (&cache->lock);
  return other;
}

bool
ad_cache_contains (struct ad_cache *cache, const void *owner,
                   uint64_t frame_no)
{
  bool zero;

  return ad_cache_peek (cache, owner, frame_no, &zero);
}

void
ad_cache_drop_owner (struct ad_cache *cache, const void *owner)
{
  struct ad_cache_entry *e, *prev;

  pthread_mutex_lock (&cache->lock);
  for (e = cache->lru_tail; e; e = prev) {
    prev = e->lru_prev;
    if (e->owner == owner)
      remove_entry_locked (cache, e);
  }
  pthread_mutex_unlock (&cache->lock);
}

void
ad_cache_get_stats (struct ad_cache *cache, struct ad_cache_stats *stats)
{
  pthread_mutex_lock (&cache->lock);
  *stats = cache->stats;
  stats->bytes = cache->bytes;
  stats->max_bytes = cache->max_bytes;
  pthread_mutex_unlock (&cache->lock);
}
