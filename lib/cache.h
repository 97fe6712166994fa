/* autodecomp: the shared, bounded cache of decoded frames.
 *
 * One cache serves a whole process: every connection and every export
 * (the key is an owner pointer, the export, and a frame number).  It
 * holds at most max_bytes of decoded data that no one is using; entries
 * that readers hold (reference counted) are never freed under them, so
 * the cache may briefly exceed its bound by what is in use.  The least
 * recently used unreferenced entry is evicted first.
 *
 * A frame is decoded once however many readers ask for it at the same
 * time: the first reader inserts a LOADING entry and decodes outside
 * the lock; the others wait for it.  A decode that fails leaves nothing
 * in the cache, and the waiters try again themselves (so a transient
 * error below is not remembered).
 *
 * A frame that decodes to all zeros keeps no buffer, only a flag.
 */
#ifndef AUTODECOMP_CACHE_H
#define AUTODECOMP_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct ad_cache;

struct ad_cache_entry {
  const void *owner;
  uint64_t frame_no;
  size_t size;
  bool zero;                    /* All zeros: data is NULL. */
  char *data;                   /* size bytes, unless zero. */
  /* Private to cache.c from here on. */
  int state;
  unsigned refs;
  struct ad_cache_entry *hash_next;
  struct ad_cache_entry *lru_prev, *lru_next;
};

struct ad_cache_stats {
  uint64_t hits, misses, waits, evictions, inserts;
  uint64_t bytes, max_bytes, entries;
};

/* Fill buf with the frame's size bytes; return 0 or -1 with err. */
typedef int ad_cache_fill_fn (void *opaque, void *buf, struct ad_error *err);

extern struct ad_cache *ad_cache_new (uint64_t max_bytes);
extern void ad_cache_free (struct ad_cache *cache);

/* Return the entry for (owner, frame_no), decoding it with fill if it
 * is not cached.  The caller must ad_cache_put the entry.  Returns
 * NULL with err if fill failed or memory ran out.
 */
extern struct ad_cache_entry *ad_cache_get (struct ad_cache *cache,
                                            const void *owner,
                                            uint64_t frame_no, size_t size,
                                            ad_cache_fill_fn *fill,
                                            void *opaque,
                                            struct ad_error *err);
extern void ad_cache_put (struct ad_cache *cache,
                          struct ad_cache_entry *entry);

/* Insert a copy of an already decoded frame, unless it is present.
 * Used for frames decoded anyway while indexing.
 */
extern void ad_cache_insert (struct ad_cache *cache, const void *owner,
                             uint64_t frame_no, const void *data,
                             size_t size);

/* Is the frame cached (ready) now? */
extern bool ad_cache_contains (struct ad_cache *cache, const void *owner,
                               uint64_t frame_no);

/* Drop every unreferenced entry of owner (when an export closes). */
extern void ad_cache_drop_owner (struct ad_cache *cache, const void *owner);

extern void ad_cache_get_stats (struct ad_cache *cache,
                                struct ad_cache_stats *stats);

/* True if the buffer holds only zero bytes. */
extern bool ad_is_zero (const void *buf, size_t size);

#endif /* AUTODECOMP_CACHE_H */
