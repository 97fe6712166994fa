/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the shared, bounded cache of decoded frames.
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
 * the lock (or hands it to a decode worker); the others wait for it.
 * A decode that fails leaves nothing in the cache: the readers waiting
 * for it get its error, and a later read tries again (so a transient
 * error below is not remembered).
 *
 * A frame that decodes to all zeros keeps no buffer, only a flag.
 *
 * Buffers of entries that went away are kept for new entries (mapping
 * fresh memory costs page faults), within the bound, and one of at
 * most 16 MiB beyond it (see cache.c).
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
  bool zero;                    /* All zeros: do not read data. */
  char *data;                   /* size bytes, unless zero. */
  /* Private to cache.c from here on. */
  int state;
  size_t ready;                 /* While loading: [0, ready) decoded. */
  size_t consumed;              /* Bytes read by sequential readers. */
  struct ad_error *error;       /* Why the fill failed. */
  unsigned refs;
  unsigned waiters;             /* Readers in ad_cache_wait. */
  size_t want;                  /* Least end they wait for (SIZE_MAX: none). */
  struct ad_cache_entry *hash_next;
  struct ad_cache_entry *lru_prev, *lru_next;
};

struct ad_cache_stats {
  uint64_t hits, misses, waits, evictions, inserts;
  uint64_t reused;              /* Buffers handed from evicted entries. */
  uint64_t consumed;            /* Frames dropped after a sequential read. */
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

/* The same for a sequential reader that has read count bytes of the
 * frame: the frame goes first in line for eviction, and once sequential
 * readers have read as many bytes as it holds, it is dropped and its
 * buffer recycled at once.  So a long copy does not push out what
 * random readers use, and streams through a few frames of memory.
 */
extern void ad_cache_put_consumed (struct ad_cache *cache,
                                   struct ad_cache_entry *entry,
                                   size_t count);

/* The same in steps, for fills that run on another thread (the
 * decode workers) and readers that may use a frame's first bytes
 * before the rest is decoded.
 *
 * ad_cache_acquire returns the entry with a reference.  If it was not
 * there, it is created LOADING, *created is set, and the caller must
 * give it a buffer (ad_cache_alloc, when the decode starts), fill it
 * and call ad_cache_finish exactly once (with NULL, or the error that
 * stopped it).  A filler may
 * publish progress with ad_cache_progress.  ad_cache_wait waits until
 * [0, end) of the entry can be read (end 0: until it is complete) and
 * returns 0, or -1 with the filler's error; *zero (if not NULL) says
 * whether to read zeros rather than data (a reader must not look at
 * entry->zero itself while the entry may still be loading).
 */
extern struct ad_cache_entry *ad_cache_acquire (struct ad_cache *cache,
                                                const void *owner,
                                                uint64_t frame_no,
                                                size_t size, bool *created,
                                                struct ad_error *err);
/* Memory used outside the cache (a decode's input and state) while it
 * is used: beyond an allowance of 8 MiB for all of it, it counts
 * against the cache's size, evicting to make room.
 */
extern void ad_cache_reserve (struct ad_cache *cache, uint64_t bytes);
extern void ad_cache_unreserve (struct ad_cache *cache, uint64_t bytes);

extern int ad_cache_alloc (struct ad_cache *cache,
                           struct ad_cache_entry *entry,
                           struct ad_error *err);
extern void ad_cache_ref (struct ad_cache *cache,
                          struct ad_cache_entry *entry);
extern void ad_cache_progress (struct ad_cache *cache,
                               struct ad_cache_entry *entry, size_t ready);
extern void ad_cache_finish (struct ad_cache *cache,
                             struct ad_cache_entry *entry,
                             const struct ad_error *failed);
extern int ad_cache_wait (struct ad_cache *cache,
                          struct ad_cache_entry *entry, size_t end,
                          bool *zero, struct ad_error *err);

/* Is the frame known (ready) now, and is it all zeros? */
extern bool ad_cache_peek (struct ad_cache *cache, const void *owner,
                           uint64_t frame_no, bool *zero);

/* Insert a copy of an already decoded frame, unless it is present.
 * Used for frames decoded anyway while indexing.  data NULL: the frame
 * is known to be all zeros.
 */
extern void ad_cache_insert (struct ad_cache *cache, const void *owner,
                             uint64_t frame_no, const void *data,
                             size_t size);

/* Insert the frame with buf itself (size bytes from ad_buffer_alloc),
 * unless it is present.  Returns the buffer the caller has now: buf
 * if the cache did not keep it (present, or all zeros: then a flag is
 * kept), else a spare buffer of the same size, or NULL.
 */
extern void *ad_cache_insert_take (struct ad_cache *cache, const void *owner,
                                   uint64_t frame_no, void *buf, size_t size);

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
