/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: zstd images, the walk over frames and block headers (see zstd.c).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <unistd.h>
#include <pthread.h>

#include <zstd.h>

#include "seekable-formats.h"
#include "zstd-int.h"

#define MAX_THREADS 64
#define COUNT_BUF_SIZE (256 * 1024)        /* Discarded worker output. */

/* The parallel pass over frames without a content size.
 *
 * The reader (the thread in open) reads the file into large buffers
 * and queues the pieces of each such frame, as chunks pointing into
 * those buffers, on a job; a worker takes the job and decodes its
 * chunks as they come, counting the output.  A buffer is reference
 * counted and recycled once the reader and every chunk in it are done
 * with it, and at most max_buffers exist, which bounds the memory.
 * Only the newest job can be waiting for bytes, so there is always a
 * worker that can make progress and free a buffer.
 */
struct buffer {
  struct buffer *next_free;
  unsigned refs;                /* The reader and chunks using it. */
  unsigned char data[];
};

struct chunk {
  struct chunk *next;
  struct buffer *buffer;
  const unsigned char *data;    /* Within buffer->data. */
  size_t len;
};

struct job {
  struct job *next_queued;
  uint64_t coff;                /* Where the frame starts. */
  unsigned wlog;                /* ZSTD_d_windowLogMax for it. */
  struct chunk *head, *tail;    /* Queued, not yet decoded. */
  bool complete;                /* All its bytes were queued. */
  bool done;                    /* A worker has finished with it. */
  bool failed;                  /* ...with err. */
  bool abandoned;               /* ...because another job failed. */
  uint64_t usize;               /* Its decoded size. */
  struct ad_error err;
};

struct pool {
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* Broadcast on every change. */
  struct job *qhead, *qtail;    /* Jobs no worker has taken. */
  struct buffer *free_buffers;
  size_t nbuffers, max_buffers, buffer_size;
  bool stop, failed;
  uint64_t max_frame;
  unsigned nthreads, started;
  pthread_t *threads;
};

/* Get an unused buffer, waiting for one if max_buffers are in use.
 * Returns NULL if a worker failed (or on allocation failure).
 */
static struct buffer *
buffer_get (struct pool *p, struct ad_error *err)
{
  struct buffer *b = NULL;

  pthread_mutex_lock (&p->lock);
  while (!p->failed && p->free_buffers == NULL &&
         p->nbuffers >= p->max_buffers)
    pthread_cond_wait (&p->cond, &p->lock);
  if (p->failed)
    ad_error_set (err, EIO, "parallel decoding failed");
  else if (p->free_buffers) {
    b = p->free_buffers;
    p->free_buffers = b->next_free;
  }
  else if ((b = malloc (sizeof *b + p->buffer_size)) == NULL)
    ad_error_set (err, ENOMEM, "malloc: %m");
  else
    p->nbuffers++;
  if (b)
    b->refs = 1;
  pthread_mutex_unlock (&p->lock);
  return b;
}

static void
buffer_put (struct pool *p, struct buffer *b)
{
  if (b == NULL)
    return;
  pthread_mutex_lock (&p->lock);
  if (--b->refs == 0) {
    b->next_free = p->free_buffers;
    p->free_buffers = b;
    pthread_cond_broadcast (&p->cond);
  }
  pthread_mutex_unlock (&p->lock);
}

static void
count_frame (struct pool *p, struct job *job, ZSTD_DCtx *dctx,
             unsigned char *out)
{
  uint64_t total = 0, in_off = job->coff;
  bool ended = false;
  size_t r;

  ZSTD_DCtx_reset (dctx, ZSTD_reset_session_and_parameters);
  r = ZSTD_DCtx_setParameter (dctx, ZSTD_d_windowLogMax, job->wlog);
  if (ZSTD_isError (r)) {
    ad_error_set (&job->err, EIO, "ZSTD_d_windowLogMax: %s",
                  ZSTD_getErrorName (r));
    job->failed = true;
    return;
  }

  for (;;) {
    struct chunk *c;
    ZSTD_inBuffer in;

    pthread_mutex_lock (&p->lock);
    while (job->head == NULL && !job->complete && !p->failed)
      pthread_cond_wait (&p->cond, &p->lock);
    if (p->failed) {
      pthread_mutex_unlock (&p->lock);
      job->failed = job->abandoned = true;
      return;
    }
    c = job->head;
    if (c) {
      job->head = c->next;
      if (job->head == NULL)
        job->tail = NULL;
    }
    pthread_mutex_unlock (&p->lock);
    if (c == NULL)
      break;

    in.src = c->data;
    in.size = c->len;
    in.pos = 0;
    if (ended) {
      ad_error_set (&job->err, EIO, "data after the end of the frame at "
                    "offset %" PRIu64, in_off);
      job->failed = true;
    }
    while (!ended && !job->failed) {
      ZSTD_outBuffer ob = { .dst = out, .size = COUNT_BUF_SIZE, .pos = 0 };

      r = ZSTD_decompressStream (dctx, &ob, &in);
      if (ZSTD_isError (r)) {
        if (in_off + in.pos > job->coff)
          ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 ": %s "
                        "(near offset %" PRIu64 ")", job->coff,
                        ZSTD_getErrorName (r), in_off + in.pos);
        else
          ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 ": %s",
                        job->coff, ZSTD_getErrorName (r));
        job->failed = true;
        break;
      }
      total += ob.pos;
      if (total > p->max_frame) {
        ad_error_set (&job->err, EFBIG, "frame at offset %" PRIu64 " has "
                      "no content size and decodes to more than %" PRIu64
                      " bytes, the autodecomp-max-frame limit", job->coff,
                      p->max_frame);
        job->failed = true;
        break;
      }
      if (r == 0) {
        ended = true;
        if (in.pos < in.size) {
          ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 " ends "
                        "at offset %" PRIu64 ", before its last block",
                        job->coff, in_off + in.pos);
          job->failed = true;
        }
        break;
      }
      if (in.pos == in.size && ob.pos < ob.size)
        break;                  /* It needs more input. */
    }
    in_off += c->len;
    buffer_put (p, c->buffer);
    free (c);
    if (job->failed)
      return;
  }
  if (!ended) {
    ad_error_set (&job->err, EIO, "frame at offset %" PRIu64 " is "
                  "truncated at offset %" PRIu64, job->coff, in_off);
    job->failed = true;
    return;
  }
  job->usize = total;
}

static void *
worker (void *vp)
{
  struct pool *p = vp;
  ZSTD_DCtx *dctx = ZSTD_createDCtx ();
  unsigned char *out = malloc (COUNT_BUF_SIZE);

  pthread_mutex_lock (&p->lock);
  for (;;) {
    struct job *job;

    while (p->qhead == NULL && !p->stop)
      pthread_cond_wait (&p->cond, &p->lock);
    if (p->qhead == NULL)
      break;
    job = p->qhead;
    p->qhead = job->next_queued;
    if (p->qhead == NULL)
      p->qtail = NULL;
    pthread_mutex_unlock (&p->lock);

    if (dctx == NULL || out == NULL) {
      ad_error_set (&job->err, ENOMEM, "out of memory for a decoder");
      job->failed = true;
    }
    else
      count_frame (p, job, dctx, out);

    pthread_mutex_lock (&p->lock);
    job->done = true;
    if (job->failed)
      p->failed = true;
    pthread_cond_broadcast (&p->cond);
  }
  pthread_mutex_unlock (&p->lock);
  free (out);
  ZSTD_freeDCtx (dctx);
  return NULL;
}

/* Stop the workers once the queued jobs are done (or at once after a
 * failure) and wait for them.
 */
static void
pool_finish (struct pool *p, bool failed)
{
  unsigned i;

  pthread_mutex_lock (&p->lock);
  p->stop = true;
  if (failed)
    p->failed = true;
  pthread_cond_broadcast (&p->cond);
  pthread_mutex_unlock (&p->lock);
  for (i = 0; i < p->started; i++)
    pthread_join (p->threads[i], NULL);
  p->started = 0;
}

static int
pool_start (struct pool *p, struct ad_error *err)
{
  unsigned i;
  int e;

  p->threads = calloc (p->nthreads, sizeof *p->threads);
  if (p->threads == NULL)
    return ad_error_set (err, ENOMEM, "calloc: %m");
  for (i = 0; i < p->nthreads; i++) {
    e = pthread_create (&p->threads[i], NULL, worker, p);
    if (e != 0) {
      if (p->started > 0)
        break;                  /* Fewer workers will do. */
      return ad_error_set (err, e, "pthread_create: %s", strerror (e));
    }
    p->started++;
  }
  return 0;
}

/* The walk over the frames, reading the file in sequential chunks. */
struct walk_frame {
  uint64_t coff, csize, usize;
  bool checksum;
  struct job *job;              /* If the size is learnt by decoding. */
};

struct walker {
  struct ad_source *src;
  struct buffer *cur;           /* The buffer being walked, or NULL. */
  unsigned char *buf;           /* Its data. */
  size_t alloc;                 /* Its size. */
  uint64_t start;               /* File offset of buf[0]. */
  size_t len;                   /* Bytes valid in buf. */
  struct pool *pool;
  struct job *job;              /* Frame whose bytes are being queued... */
  uint64_t copied;              /* ...up to here. */
};

/* Queue the bytes [w->copied, upto) of the buffer on the current job. */
static int
walk_flush (struct walker *w, uint64_t upto, struct ad_error *err)
{
  struct pool *p = w->pool;
  struct chunk *c;

  if (upto <= w->copied)
    return 0;
  c = malloc (sizeof *c);
  if (c == NULL)
    return ad_error_set (err, ENOMEM, "malloc: %m");
  c->next = NULL;
  c->buffer = w->cur;
  c->data = w->buf + (w->copied - w->start);
  c->len = upto - w->copied;

  pthread_mutex_lock (&p->lock);
  if (p->failed) {
    pthread_mutex_unlock (&p->lock);
    free (c);
    return ad_error_set (err, EIO, "parallel decoding failed");
  }
  w->cur->refs++;
  if (w->job->tail)
    w->job->tail->next = c;
  else
    w->job->head = c;
  w->job->tail = c;
  pthread_cond_broadcast (&p->cond);
  pthread_mutex_unlock (&p->lock);
  w->copied = upto;
  return 0;
}

/* Make the bytes [pos, pos + n) available in the buffer (n is small).
 * A refill moves to a fresh buffer (the old one may still be in use by
 * chunks), keeping the few bytes before its end that are still needed.
 * While a frame is being queued the reads stay contiguous, so that
 * every byte of it passes through a buffer.
 */
static int
walk_need (struct walker *w, uint64_t pos, size_t n, struct ad_error *err)
{
  uint64_t size = w->src->size;

  if (pos > size || n > size - pos)
    return ad_error_set (err, EIO, "truncated: %zu bytes needed at offset %"
                         PRIu64 ", the file ends at %" PRIu64, n, pos,
                         size);
  while (pos < w->start || pos + n > w->start + w->len) {
    uint64_t end = w->start + w->len;
    uint64_t ns = pos;
    size_t keep = 0, want;
    struct buffer *nb;

    if (w->job) {
      if (walk_flush (w, end, err) == -1)
        return -1;
      if (ns > end)
        ns = end;
    }
    nb = buffer_get (w->pool, err);
    if (nb == NULL)
      return -1;
    if (w->cur && ns >= w->start && ns < end) {
      keep = end - ns;
      memcpy (nb->data, w->buf + (ns - w->start), keep);
    }
    buffer_put (w->pool, w->cur);
    w->cur = nb;
    w->buf = nb->data;
    w->start = ns;
    w->len = keep;
    want = w->alloc - keep;
    if (want > size - (ns + keep))
      want = size - (ns + keep);
    if (want == 0)
      return ad_error_set (err, EIO, "internal error: walk buffer is full "
                           "at offset %" PRIu64, ns);
    if (ad_source_pread (w->src, w->buf + keep, want, ns + keep, err) == -1)
      return -1;
    w->len += want;
  }
  return 0;
}

static const unsigned char *
walk_ptr (struct walker *w, uint64_t pos)
{
  return w->buf + (pos - w->start);
}

/* Walk one zstd frame starting at pos; fill *f. */
static int
walk_frame (struct walker *w, struct ad_index *idx, uint64_t pos,
            struct walk_frame *f, struct ad_error *err)
{
  struct frame_header h;
  uint64_t p, size = w->src->size, nblocks = 0;
  unsigned log;
  bool last = false;

  if (walk_need (w, pos, FRAME_HEADER_MIN, err) == -1)
    return -1;
  if (walk_need (w, pos, zstd_frame_header_size (walk_ptr (w, pos)[4]),
                 err) == -1)
    return -1;
  if (zstd_parse_frame_header (walk_ptr (w, pos), pos, &h, err) == -1 ||
      zstd_window_log (&h, idx->opts.max_frame, pos, &log, err) == -1)
    return -1;

  f->coff = pos;
  f->checksum = h.checksum;
  f->usize = h.has_fcs ? h.fcs : 0;
  f->job = NULL;
  if (!h.has_fcs || h.fcs == 0) {
    /* Decode it to learn (or check) its size. */
    struct pool *pl = w->pool;
    struct job *job = calloc (1, sizeof *job);

    if (job == NULL)
      return ad_error_set (err, ENOMEM, "calloc: %m");
    job->coff = pos;
    job->wlog = log;
    f->job = job;
    if (pl->started == 0 && pool_start (pl, err) == -1) {
      free (job);
      f->job = NULL;
      return -1;
    }
    pthread_mutex_lock (&pl->lock);
    if (pl->qtail)
      pl->qtail->next_queued = job;
    else
      pl->qhead = job;
    pl->qtail = job;
    pthread_cond_broadcast (&pl->cond);
    pthread_mutex_unlock (&pl->lock);
    w->job = job;
    w->copied = pos;
  }

  /* Data_Blocks. */
  p = pos + h.size;
  while (!last) {
    const unsigned char *b;
    uint32_t bh, type, bsize, content;

    if (walk_need (w, p, BLOCK_HEADER_SIZE, err) == -1)
      return -1;
    b = walk_ptr (w, p);
    bh = b[0] | (b[1] << 8) | (b[2] << 16);
    last = bh & 1;
    type = (bh >> 1) & 3;
    bsize = bh >> 3;
    if (type == 3)
      return ad_error_set (err, EIO, "block at offset %" PRIu64 " has the "
                           "reserved block type", p);
    if (bsize > BLOCK_SIZE_MAX)
      return ad_error_set (err, EIO, "block at offset %" PRIu64 " is %"
                           PRIu32 " bytes, more than the maximum %d", p,
                           bsize, BLOCK_SIZE_MAX);
    content = type == 1 ? 1 : bsize;
    p += BLOCK_HEADER_SIZE;
    if (content > size - p)
      return ad_error_set (err, EIO, "truncated: block at offset %" PRIu64
                           " needs %" PRIu32 " bytes, the file ends at %"
                           PRIu64, p - BLOCK_HEADER_SIZE, content, size);
    p += content;
    nblocks++;
  }
  if (h.checksum) {
    if (CHECKSUM_SIZE > size - p)
      return ad_error_set (err, EIO, "truncated: the checksum of the frame "
                           "at offset %" PRIu64 " is past the end of the "
                           "file", pos);
    p += CHECKSUM_SIZE;
  }
  /* Each block regenerates at most BLOCK_SIZE_MAX bytes. */
  if (h.has_fcs &&
      h.fcs / BLOCK_SIZE_MAX + (h.fcs % BLOCK_SIZE_MAX != 0) > nblocks)
    return ad_error_set (err, EIO, "frame at offset %" PRIu64 " declares %"
                         PRIu64 " bytes of content but has only %" PRIu64
                         " blocks", pos, h.fcs, nblocks);
  f->csize = p - pos;

  if (w->job) {
    struct pool *pl = w->pool;

    if (walk_need (w, p - 1, 1, err) == -1 || walk_flush (w, p, err) == -1)
      return -1;
    pthread_mutex_lock (&pl->lock);
    w->job->complete = true;
    pthread_cond_broadcast (&pl->cond);
    pthread_mutex_unlock (&pl->lock);
    w->job = NULL;
  }
  return 0;
}

int
zstd_open_walk (struct ad_index *idx, struct ad_source *src,
                struct ad_error *err)
{
  struct walker w = { .src = src };
  struct pool pool = { .started = 0 };
  struct walk_frame *frames = NULL;
  size_t nframes = 0, frames_alloc = 0, i;
  uint64_t pos = 0, total = 0, uoff = 0;
  unsigned threads = idx->opts.threads;
  int r = -1;
  bool walk_ok = false;

  if (threads == 0) {
    long n = sysconf (_SC_NPROCESSORS_ONLN);
    threads = n > 0 ? n : 1;
  }
  if (threads > MAX_THREADS)
    threads = MAX_THREADS;
  pthread_mutex_init (&pool.lock, NULL);
  pthread_cond_init (&pool.cond, NULL);
  pool.nthreads = threads;
  pool.max_frame = idx->opts.max_frame;
  w.alloc = src->size < WALK_CHUNK ? src->size : WALK_CHUNK;
  if (w.alloc < 64)
    w.alloc = 64;
  pool.buffer_size = w.alloc;
  pool.max_buffers = threads + 3;
  w.pool = &pool;

  while (pos < src->size) {
    uint32_t magic;

    if (src->size - pos < 4) {
      ad_error_set (err, EIO, "%" PRIu64 " stray bytes at the end of the "
                    "file at offset %" PRIu64, src->size - pos, pos);
      goto out;
    }
    if (walk_need (&w, pos, 4, err) == -1)
      goto out;
    magic = ad_le32 (walk_ptr (&w, pos));
    if (is_skippable (magic)) {
      uint64_t fsize;

      if (walk_need (&w, pos, AD_SKIPPABLE_HEADER_SIZE, err) == -1)
        goto out;
      fsize = ad_le32 (walk_ptr (&w, pos) + 4);
      if (fsize > src->size - pos - AD_SKIPPABLE_HEADER_SIZE) {
        ad_error_set (err, EIO, "truncated: skippable frame at offset %"
                      PRIu64 " (%" PRIu64 " bytes) extends past the end "
                      "of the file", pos, fsize);
        goto out;
      }
      pos += AD_SKIPPABLE_HEADER_SIZE + fsize;
      continue;
    }
    if (magic != FRAME_MAGIC) {
      ad_error_set (err, EIO, "bad magic 0x%08" PRIx32 " at offset %" PRIu64
                    " (not a zstd frame)", magic, pos);
      goto out;
    }
    if (nframes == frames_alloc) {
      size_t n = frames_alloc ? frames_alloc * 2 : 64;
      struct walk_frame *nf = realloc (frames, n * sizeof *nf);
      if (nf == NULL) {
        ad_error_set (err, ENOMEM, "realloc: %m");
        goto out;
      }
      frames = nf;
      frames_alloc = n;
    }
    memset (&frames[nframes], 0, sizeof frames[nframes]);
    /* Count it now so that its job is freed whatever happens. */
    nframes++;
    if (walk_frame (&w, idx, pos, &frames[nframes - 1], err) == -1)
      goto out;
    pos += frames[nframes - 1].csize;
  }
  walk_ok = true;

 out:
  pool_finish (&pool, !walk_ok);
  /* An error in a worker explains a failed walk better. */
  for (i = 0; i < nframes; i++) {
    struct job *job = frames[i].job;
    if (job && job->failed && !job->abandoned) {
      *err = job->err;
      walk_ok = false;
      break;
    }
  }
  if (walk_ok) {
    for (i = 0; i < nframes; i++) {
      struct job *job = frames[i].job;
      if (job) {
        if (!job->done || job->failed) {
          ad_error_set (err, EIO, "frame at offset %" PRIu64 " was not "
                        "decoded", job->coff);
          walk_ok = false;
          break;
        }
        frames[i].usize = job->usize;
      }
      if (frames[i].usize > INT64_MAX - total) {
        ad_error_set (err, EIO, "frames up to offset %" PRIu64 " add up "
                      "to more than %" PRId64 " bytes", frames[i].coff,
                      INT64_MAX);
        walk_ok = false;
        break;
      }
      total += frames[i].usize;
    }
  }
  if (walk_ok) {
    idx->size = total;
    for (i = 0; i < nframes; i++) {
      struct ad_frame frame = {
        .uoff = uoff, .usize = frames[i].usize,
        .coff = frames[i].coff, .csize = frames[i].csize,
        .aux32 = frames[i].checksum ? AUX_CHECKSUM : 0,
      };
      if (frame.usize == 0)
        continue;
      if (ad_index_append_frame (idx, &frame, err) == -1)
        break;
      uoff += frame.usize;
    }
    if (i == nframes)
      r = 0;
  }

  for (i = 0; i < nframes; i++) {
    struct job *job = frames[i].job;
    if (job) {
      while (job->head) {
        struct chunk *c = job->head;
        job->head = c->next;
        buffer_put (&pool, c->buffer);
        free (c);
      }
      free (job);
    }
  }
  free (frames);
  buffer_put (&pool, w.cur);
  while (pool.free_buffers) {
    struct buffer *b = pool.free_buffers;
    pool.free_buffers = b->next_free;
    free (b);
  }
  free (pool.threads);
  pthread_mutex_destroy (&pool.lock);
  pthread_cond_destroy (&pool.cond);
  return r;
}
