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

#include "buffer.h"
#include "fetch.h"

#define FETCH_SLOTS 16          /* Buffers of up to fetch_size bytes. */
#define FETCH_STREAMS 4         /* Streams of reads followed. */
#define FETCH_STREAK 2          /* Reads that extend a stream before */
                                /* it fetches. */
#define FETCH_BEHIND (1024 * 1024)  /* A stream continues this far */
#define FETCH_AHEAD (256 * 1024)    /* before and after its end. */
#define FETCH_RUN (16 * 1024 * 1024) /* The same for a reader's stream. */
#define FETCH_MIN (1024 * 1024)    /* The least a run's fetch reads. */
#define FETCH_BIG 8             /* Buffers of fetch_size, at most. */

struct slot {
  struct ad_loan loan;          /* What a borrower gives back. */
  struct ad_fetch *f;
  unsigned lent;                /* Loans of buf not given back. */
  char *buf;                    /* cap bytes, or NULL. */
  size_t cap;
  uint64_t off;                 /* The bytes [off, off + len) */
  size_t len;                   /* (0: none). */
  bool loading;                 /* Being read (they are not there yet). */
  bool read;                    /* Read from since it was loaded. */
  unsigned users;               /* Copying out of buf. */
  uint64_t used;                /* Tick of the last use. */
};

struct ad_fetch_stream {
  const void *reader;           /* Whose reads (NULL: anyone's). */
  uint64_t first;               /* Where it began. */
  uint64_t last;                /* Start of the last read that counted. */
  uint64_t next;                /* Highest end of its reads. */
  unsigned streak;              /* Reads that extended it. */
  bool seq;                     /* Judged sequential since it began. */
  uint64_t used;                /* Tick of the last use (0: free). */
  uint64_t born;                /* Tick at which it (last) began. */
};

struct ad_fetch {
  pthread_mutex_t lock;
  pthread_cond_t loaded;        /* A slot stopped loading. */
  size_t size;
  struct ad_cache *cache;
  uint64_t tick;
  struct slot slots[FETCH_SLOTS];
  size_t nbig;                  /* Buffers of size that may be held. */
  uint64_t held;                /* Bytes of the buffers held. */
  struct ad_fetch_stream streams[FETCH_STREAMS];
  uint64_t hits, fetches, ahead;
};

/* A borrower is done with a slot's bytes (see deliver_locked). */
static void
give_back (struct ad_loan *loan)
{
  struct slot *sl = (struct slot *) loan;
  struct ad_fetch *f = sl->f;

  pthread_mutex_lock (&f->lock);
  sl->lent--;
  pthread_mutex_unlock (&f->lock);
}

/* Free sl's buffer (what it held is gone). */
static void
drop_buffer_locked (struct ad_fetch *f, struct slot *sl)
{
  if (sl->buf == NULL)
    return;
  ad_buffer_free (sl->buf, sl->cap);
  if (f->cache)
    ad_cache_unreserve (f->cache, sl->cap);
  f->held -= sl->cap;
  sl->buf = NULL;
  sl->cap = 0;
  sl->len = 0;
}

struct ad_fetch *
ad_fetch_new (size_t fetch_size, struct ad_cache *cache)
{
  struct ad_fetch *f = calloc (1, sizeof *f);
  struct ad_cache_stats st;
  uint64_t quarter;
  size_t i;

  if (f == NULL)
    return NULL;
  pthread_mutex_init (&f->lock, NULL);
  pthread_cond_init (&f->loaded, NULL);
  f->nbig = FETCH_BIG;
  /* At most a quarter of the cache: fewer buffers, then smaller ones. */
  if (cache) {
    ad_cache_get_stats (cache, &st);
    quarter = st.max_bytes / 4;
    if (quarter / fetch_size < f->nbig)
      f->nbig = quarter / fetch_size > 0 ? quarter / fetch_size : 1;
    if (fetch_size > quarter)
      fetch_size = quarter;
  }
  f->size = fetch_size;
  f->cache = cache;
  for (i = 0; i < FETCH_SLOTS; i++) {
    f->slots[i].f = f;
    f->slots[i].loan.give_back = give_back;
  }
  return f;
}

void
ad_fetch_free (struct ad_fetch *f)
{
  size_t i;

  if (f == NULL)
    return;
  for (i = 0; i < FETCH_SLOTS; i++)
    drop_buffer_locked (f, &f->slots[i]);
  pthread_cond_destroy (&f->loaded);
  pthread_mutex_destroy (&f->lock);
  free (f);
}

void
ad_fetch_stats (struct ad_fetch *f, uint64_t *hits, uint64_t *fetches,
                uint64_t *ahead)
{
  pthread_mutex_lock (&f->lock);
  *hits = f->hits;
  *fetches = f->fetches;
  *ahead = f->ahead;
  pthread_mutex_unlock (&f->lock);
}

/* Record a read of [offset, offset + count) by reader in the stream it
 * continues (or a new one) and return that stream.  A reader's reads
 * are one stream, which begins again where a read lands more than
 * FETCH_RUN from its end.  Reads of no known reader (the walks of an
 * open, block status) continue a stream of theirs if they start at
 * most FETCH_BEHIND before its end (requests in flight arrive in any
 * order) or at most FETCH_AHEAD after it.  A read adds to the stream's
 * streak only if it moves the stream forward (starts after the last
 * read that did, and ends past the stream's end): reading the same
 * bytes again, as an open reads headers and indexes, is not a
 * sequential reader.
 */
static struct ad_fetch_stream *
note_stream_locked (struct ad_fetch *f, const void *reader, uint64_t offset,
                    size_t count)
{
  uint64_t end = offset + count;
  struct ad_fetch_stream *s, *lru = &f->streams[0];
  size_t i;

  for (i = 0; i < FETCH_STREAMS; i++) {
    bool near;

    s = &f->streams[i];
    near = offset + FETCH_BEHIND >= s->next &&
      offset <= s->next + FETCH_AHEAD;
    if (s->used && s->reader == reader && reader && !near &&
        (offset + FETCH_RUN < s->next || offset > s->next + FETCH_RUN)) {
      lru = s;
      break;
    }
    if (s->used && s->reader == reader && (reader || near)) {
      if (near && offset > s->last && end > s->next) {
        if (s->streak < FETCH_STREAK)
          s->streak++;
        s->last = offset;
      }
      else if (!near)
        s->streak = 0;
      if (end > s->next)
        s->next = end;
      s->used = ++f->tick;
      return s;
    }
    /* A new stream takes the place of the least recently used one,
     * sequential ones last: a few reads elsewhere (headers, a random
     * reader) do not make the fetcher forget a copy in progress.
     */
    if (s->seq < lru->seq || (s->seq == lru->seq && s->used < lru->used))
      lru = s;
  }
  lru->reader = reader;
  lru->first = lru->last = offset;
  lru->next = end;
  lru->streak = 0;
  lru->seq = false;
  lru->used = lru->born = ++f->tick;
  return lru;
}

/* How many bytes a fetch from start for fs reads (see fetch.h). */
static uint64_t
fetch_size_for (const struct ad_fetch *f, const struct ad_fetch_source *fs,
                uint64_t start)
{
  uint64_t len;

  if (fs->horizon == UINT64_MAX)
    return f->size;
  len = fs->horizon > start ? fs->horizon - start : 0;
  if (len < FETCH_MIN)
    len = FETCH_MIN;
  return len < f->size ? len : f->size;
}

/* The slot holding the byte at offset (loaded or loading), or NULL. */
static struct slot *
slot_at_locked (struct ad_fetch *f, uint64_t offset)
{
  size_t i;

  for (i = 0; i < FETCH_SLOTS; i++) {
    struct slot *sl = &f->slots[i];

    if (sl->len > 0 && offset >= sl->off && offset - sl->off < sl->len)
      return sl;
  }
  return NULL;
}

/* Where the buffers that follow each other from offset end (offset
 * itself if no buffer holds it); *loading is set if one of them is
 * still being read.
 */
static uint64_t
chain_end_locked (struct ad_fetch *f, uint64_t offset, uint64_t upto,
                  bool *loading)
{
  struct slot *sl;

  *loading = false;
  while (offset < upto && (sl = slot_at_locked (f, offset)) != NULL) {
    if (sl->loading)
      *loading = true;
    offset = sl->off + sl->len;
  }
  return offset;
}

/* Copy [offset, offset + count) out of the buffers that hold it (all
 * loaded, see chain_end_locked).  The lock is dropped while copying;
 * the buffers cannot be taken meanwhile (users).
 */
static void
copy_out_locked (struct ad_fetch *f, char *buf, size_t count,
                 uint64_t offset)
{
  struct slot *chain[FETCH_SLOTS];
  size_t n = 0, i;
  uint64_t pos = offset, end = offset + count;

  while (pos < end && n < FETCH_SLOTS) {
    struct slot *sl = slot_at_locked (f, pos);

    sl->users++;
    sl->read = true;
    sl->used = ++f->tick;
    chain[n++] = sl;
    pos = sl->off + sl->len;
  }
  pthread_mutex_unlock (&f->lock);
  pos = offset;
  for (i = 0; i < n; i++) {
    const struct slot *sl = chain[i];
    size_t len = sl->off + sl->len - pos;

    if (len > end - pos)
      len = end - pos;
    memcpy (buf + (pos - offset), sl->buf + (pos - sl->off), len);
    pos += len;
  }
  pthread_mutex_lock (&f->lock);
  for (i = 0; i < n; i++)
    chain[i]->users--;
}

/* Is the slot free to be loaded again?  It must not hold the byte at
 * keep (the start of the read it is taken for).  If spare, it must
 * also not be one that nobody has read yet, nor one that a stream is
 * reading: what a reader is about to use.
 */
static bool
takeable_locked (struct ad_fetch *f, const struct slot *sl, bool spare,
                 uint64_t keep)
{
  size_t i;

  if (sl->loading || sl->users > 0 || sl->lent > 0 ||
      (sl->len > 0 && keep >= sl->off && keep - sl->off < sl->len))
    return false;
  if (!spare || sl->len == 0)
    return true;
  if (!sl->read)
    return false;
  for (i = 0; i < FETCH_STREAMS; i++) {
    const struct ad_fetch_stream *s = &f->streams[i];

    if (s->used && s->seq && s->next >= sl->off &&
        s->next - sl->off < sl->len)
      return false;
  }
  return true;
}

/* The least recently used slot other than not that may be taken (see
 * takeable_locked; spare: one that no reader is about to use) and holds
 * a buffer of at least min_cap bytes (0: or none); NULL if none.
 */
static struct slot *
lru_slot_locked (struct ad_fetch *f, bool spare, uint64_t keep,
                 const struct slot *not, size_t min_cap)
{
  struct slot *best = NULL;
  size_t i;

  for (i = 0; i < FETCH_SLOTS; i++) {
    struct slot *sl = &f->slots[i];

    if (sl == not ||
        (min_cap > 0 && (sl->buf == NULL || sl->cap < min_cap)) ||
        !takeable_locked (f, sl, spare, keep))
      continue;
    if (best == NULL || sl->used < best->used)
      best = sl;
  }
  return best;
}

/* A slot to fetch up to want bytes into: free, or the least recently
 * used of those that no reader is about to use (see takeable_locked),
 * or for a fetch that a reader waits for (not ahead), of any that may
 * be taken; NULL if there is none or no buffer can be had.  Its buffer
 * holds want bytes rounded up to a power of two times FETCH_MIN (at
 * most fetch_size), and all the buffers together at most nbig times
 * fetch_size: the short fetches of a guest's runs keep many buffers,
 * whose bytes its later reads nearby find, where a copy's fetches keep
 * a few whole ones.  Buffers are freed (least recently used first) to
 * make room.  With reuse (the reads of an open, which pass once), a
 * buffer that fits and that nobody is about to use is taken first, so
 * that such a pass goes round two buffers instead of mapping all.
 */
static struct slot *
take_slot_locked (struct ad_fetch *f, bool ahead, uint64_t keep,
                  uint64_t want, bool reuse)
{
  uint64_t budget = (uint64_t) f->nbig * f->size;
  struct slot *best = NULL, *o;
  size_t cap = FETCH_MIN < f->size ? FETCH_MIN : f->size;
  bool spare;
  int pass;

  while (cap < want && cap < f->size)
    cap = cap * 2 < f->size ? cap * 2 : f->size;
  if (reuse && (o = lru_slot_locked (f, true, keep, NULL, cap)) != NULL)
    return o;
  for (pass = 0; pass < (ahead ? 1 : 2) && best == NULL; pass++)
    best = lru_slot_locked (f, pass == 0, keep, NULL, 0);
  if (best == NULL)
    return NULL;
  if (best->buf && best->cap >= cap)
    return best;
  if (f->held - (best->buf ? best->cap : 0) + cap > budget) {
    /* Room would have to be made: rather than free a buffer and map a
     * new one (its pages faulted in again), take the least recently
     * used that fits.
     */
    for (pass = 0; pass < (ahead ? 1 : 2); pass++)
      if ((o = lru_slot_locked (f, pass == 0, keep, NULL, cap)) != NULL)
        return o;
  }
  drop_buffer_locked (f, best);
  spare = true;
  while (f->held + cap > budget) {
    o = lru_slot_locked (f, spare, keep, best, 1);
    if (o == NULL && spare && !ahead) {
      spare = false;
      continue;
    }
    if (o == NULL)
      return NULL;
    drop_buffer_locked (f, o);
  }
  best->buf = ad_buffer_alloc (cap);
  if (best->buf == NULL)
    return NULL;
  best->cap = cap;
  f->held += cap;
  if (f->cache)
    ad_cache_reserve (f->cache, cap);
  return best;
}

/* Fetch into sl the bytes from start, up to want of them (at most
 * fetch_size), up to the end of the image and up to the next buffer (so
 * that buffers never hold the same bytes twice), but at least up to
 * need.  A fetch
 * for the stream own also stops where another reader's sequential
 * stream began, and none starts in what such a stream has read: that
 * reader has read the bytes already (nbdcopy gives each connection its
 * own part of the image, and the export's read-ahead stops there too),
 * and what is left to read there is a few frames.  (The walks of an
 * open and of block status cover the image without reading it for a
 * client, so they do not count.)  Returns 0, or -1 if the bytes up to
 * need do not fit or the read failed (sl is then empty).  Called and
 * returns with the lock held.
 */
static int
fetch_locked (struct ad_fetch *f, struct ad_source *inner, struct slot *sl,
              uint64_t start, uint64_t need, uint64_t want,
              const struct ad_fetch_stream *own)
{
  uint64_t limit = inner->size;
  struct ad_error err;
  size_t i;
  int r;

  if (want < need - start)
    want = need - start;
  if (want > sl->cap)
    want = sl->cap;
  if (limit - start > want)
    limit = start + want;
  for (i = 0; i < FETCH_SLOTS; i++) {
    const struct slot *o = &f->slots[i];

    if (o != sl && o->len > 0 && o->off > start && o->off < limit)
      limit = o->off;
  }
  for (i = 0; i < FETCH_STREAMS; i++) {
    const struct ad_fetch_stream *s = &f->streams[i];

    if (s == own || !s->used || !s->seq || s->reader == NULL)
      continue;
    if (s->first >= start && s->first < limit)
      limit = s->first;
    if (s->first <= start && start < s->next)
      limit = start;
  }
  if (limit < need || limit <= start) {
    sl->len = 0;
    return -1;
  }
  sl->loading = true;
  sl->read = false;
  sl->off = start;
  sl->len = limit - start;
  sl->used = ++f->tick;
  pthread_mutex_unlock (&f->lock);
  ad_error_clear (&err);
  r = ad_source_pread (inner, sl->buf, sl->len, start, &err);
  pthread_mutex_lock (&f->lock);
  sl->loading = false;
  pthread_cond_broadcast (&f->loaded);
  if (r == -1) {
    sl->len = 0;
    return -1;
  }
  f->fetches++;
  return 0;
}

/* Hand [offset, offset + count) (all loaded) to a reader: lend it in
 * place when the reader can take a loan (data is not NULL), one buffer
 * holds all of it, and at most half of the buffers would then be lent
 * (a decode holds its loan while it runs, and a lent buffer cannot be
 * fetched into); else copy it into buf.  Called and returns with the
 * lock held.
 */
static void
deliver_locked (struct ad_fetch *f, char *buf, size_t count, uint64_t offset,
                const void **data, struct ad_loan **loan)
{
  struct slot *sl = slot_at_locked (f, offset);
  size_t i, lent = 0;

  if (data && offset + count <= sl->off + sl->len) {
    for (i = 0; i < FETCH_SLOTS; i++)
      if (f->slots[i].lent > 0 || &f->slots[i] == sl)
        lent++;
    if (lent <= f->nbig / 2) {
      sl->lent++;
      sl->read = true;
      sl->used = ++f->tick;
      *data = sl->buf + (offset - sl->off);
      *loan = &sl->loan;
      return;
    }
  }
  copy_out_locked (f, buf, count, offset);
}

static int
fetch_read (void *opaque, void *buf, size_t count, uint64_t offset,
            const void **data, struct ad_loan **loan, struct ad_error *err)
{
  struct ad_fetch_source *fs = opaque;
  struct ad_fetch *f = fs->f;
  struct ad_source *inner = fs->inner;
  uint64_t end = offset + count, covered, start, want;
  struct ad_fetch_stream *s;
  struct slot *sl;
  bool loading;
  size_t i;

  if (count >= f->size / 2)
    return ad_source_pread (inner, buf, count, offset, err);

  pthread_mutex_lock (&f->lock);
  s = note_stream_locked (f, fs->reader, offset, count);
  if (fs->sequential || s->streak >= FETCH_STREAK) {
    s->seq = true;
    fs->stream = s;
    fs->born = s->born;
  }
  else
    fs->stream = NULL;
  for (;;) {
    covered = chain_end_locked (f, offset, end, &loading);
    if (!loading)
      break;
    pthread_cond_wait (&f->loaded, &f->lock);
  }
  if (covered >= end) {
    f->hits++;
    deliver_locked (f, buf, count, offset, data, loan);
    pthread_mutex_unlock (&f->lock);
    return 0;
  }
  if (fs->stream == NULL)
    goto exact;

  /* Fetch from the end of the buffers that hold the start of the read,
   * or from the end of a buffer just before it, so that a stream's
   * buffers follow each other without a gap or an overlap.
   */
  start = covered;
  if (covered == offset) {
    for (i = 0; i < FETCH_SLOTS; i++) {
      const struct slot *o = &f->slots[i];
      uint64_t oend = o->off + o->len;

      if (o->len > 0 && !o->loading && oend <= offset &&
          offset - oend <= FETCH_AHEAD && end - oend <= f->size &&
          slot_at_locked (f, oend) == NULL)
        start = oend;
    }
  }
  want = fetch_size_for (f, fs, start);
  if (want < end - start)
    want = end - start;
  if ((sl = take_slot_locked (f, false, offset, want,
                              fs->reader == NULL)) == NULL ||
      fetch_locked (f, inner, sl, start, end, want, fs->stream) == -1)
    goto exact;
  if (chain_end_locked (f, offset, end, &loading) < end || loading)
    goto exact;
  deliver_locked (f, buf, count, offset, data, loan);
  pthread_mutex_unlock (&f->lock);
  return 0;

 exact:
  /* Also where a fetch failed: the bytes past what was asked may be
   * unreadable, and this read's own error is the one to report.
   */
  pthread_mutex_unlock (&f->lock);
  return ad_source_pread (inner, buf, count, offset, err);
}

static int
fetch_pread (void *opaque, void *buf, size_t count, uint64_t offset,
             struct ad_error *err)
{
  return fetch_read (opaque, buf, count, offset, NULL, NULL, err);
}

static int
fetch_lend (void *opaque, void *buf, size_t count, uint64_t offset,
            const void **data, struct ad_loan **loan, struct ad_error *err)
{
  return fetch_read (opaque, buf, count, offset, data, loan, err);
}

struct ad_source *
ad_fetch_wrap (struct ad_fetch_source *fs, struct ad_fetch *f,
               struct ad_source *inner)
{
  return ad_fetch_wrap_reader (fs, f, inner, NULL, false);
}

struct ad_source *
ad_fetch_wrap_reader (struct ad_fetch_source *fs, struct ad_fetch *f,
                      struct ad_source *inner, const void *reader,
                      bool sequential)
{
  if (f == NULL)
    return inner;
  memset (fs, 0, sizeof *fs);
  fs->f = f;
  fs->inner = inner;
  fs->reader = reader;
  fs->sequential = sequential;
  fs->horizon = UINT64_MAX;
  fs->src.pread = fetch_pread;
  fs->src.lend = fetch_lend;
  fs->src.opaque = fs;
  fs->src.size = inner->size;
  return &fs->src;
}

void
ad_fetch_forget (struct ad_fetch *f, const void *reader)
{
  size_t i;

  if (f == NULL || reader == NULL)
    return;
  pthread_mutex_lock (&f->lock);
  for (i = 0; i < FETCH_STREAMS; i++)
    if (f->streams[i].reader == reader)
      memset (&f->streams[i], 0, sizeof f->streams[i]);
  pthread_mutex_unlock (&f->lock);
}

void
ad_fetch_ahead (struct ad_source *src)
{
  struct ad_fetch_source *fs;
  struct ad_fetch *f;
  struct slot *sl;
  uint64_t pos, end, want;
  bool loading;

  if (src->pread != fetch_pread)
    return;
  fs = src->opaque;
  f = fs->f;
  if (fs->stream == NULL)
    return;
  pthread_mutex_lock (&f->lock);
  /* The stream's reads are within the buffers, with less than half of
   * the next fetch left ahead, and its horizon is past them: fetch
   * that.  Not if the stream has begun again since fs read through it
   * (the reader's next run, elsewhere): fs->horizon is that of the run
   * before.
   */
  pos = fs->stream->next;
  if (fs->stream->born == fs->born && fs->stream->seq && pos > 0 &&
      pos < fs->inner->size && slot_at_locked (f, pos - 1) != NULL) {
    end = chain_end_locked (f, pos - 1, pos + f->size, &loading);
    want = fetch_size_for (f, fs, end);
    if (end - pos < want / 2 && end < fs->inner->size &&
        fs->horizon > end &&
        (sl = take_slot_locked (f, true, pos - 1, want, false)) != NULL &&
        fetch_locked (f, fs->inner, sl, end, end + 1, want, fs->stream) == 0)
      f->ahead++;
  }
  fs->stream = NULL;
  pthread_mutex_unlock (&f->lock);
}
