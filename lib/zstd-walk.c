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

#include <zstd.h>

#include "seekable-formats.h"
#include "zstd-int.h"
#include "pool.h"

#define MAX_THREADS 64
#define COUNT_BUF_SIZE (256 * 1024)        /* Discarded worker output. */

/* The parallel pass over frames without a content size.
 *
 * The reader (the thread in open) reads the file into large buffers
 * and queues the pieces of each such frame, as chunks pointing into
 * those buffers, on a job; a worker of the walk's batch (see pool.h)
 * takes the job and decodes its chunks as they come, counting the
 * output.  The buffers are the batch's: one is recycled once the
 * reader and every chunk in it are done with it, and at most
 * threads + 3 exist, which bounds the memory.  Only the newest job can
 * be waiting for bytes, so there is always a worker that can make
 * progress and free a buffer.
 */
struct chunk {
  struct chunk *next;
  unsigned char *buffer;        /* The batch's buffer holding it. */
  const unsigned char *data;    /* Within buffer. */
  size_t len;
};

struct job {
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

struct walk_frame {
  uint64_t coff, csize, usize;
  bool checksum;
  struct job *job;              /* If the size is learnt by decoding. */
};

/* The walk over the frames, reading the file in sequential chunks.  It
 * is the context of the batch's functions, which read only batch and
 * max_frame.
 */
struct walker {
  struct ad_source *src;
  struct ad_window win;         /* The file, in the batch's buffers, */
  struct ad_window_buffers buffers; /* or lent while no job is queued. */
  struct ad_batch *batch;
  uint64_t max_frame;
  struct job *job;              /* Frame whose bytes are being queued... */
  uint64_t copied;              /* ...up to here. */
};

/* The window's buffers are the batch's. */
static void *
walk_buffer_get (void *batch, struct ad_error *err)
{
  return ad_batch_buffer_get (batch, err);
}

static void
walk_buffer_put (void *batch, void *buf)
{
  ad_batch_buffer_put (batch, buf);
}

/* A worker's decoder and output buffer. */
struct counter {
  ZSTD_DCtx *dctx;
  unsigned char *out;
};

static void *
counter_new (void *ctx)
{
  struct counter *c = malloc (sizeof *c);

  if (c == NULL)
    return NULL;
  c->dctx = ZSTD_createDCtx ();
  c->out = malloc (COUNT_BUF_SIZE);
  if (c->dctx == NULL || c->out == NULL) {
    ZSTD_freeDCtx (c->dctx);
    free (c->out);
    free (c);
    return NULL;
  }
  return c;
}

static void
counter_free (void *ctx, void *state)
{
  struct counter *c = state;

  if (c) {
    ZSTD_freeDCtx (c->dctx);
    free (c->out);
    free (c);
  }
}

static void
count_frame (struct walker *w, struct job *job, ZSTD_DCtx *dctx,
             unsigned char *out)
{
  struct ad_batch *b = w->batch;
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

    ad_batch_lock (b);
    while (job->head == NULL && !job->complete && !ad_batch_failed (b))
      ad_batch_wait (b);
    if (ad_batch_failed (b)) {
      ad_batch_unlock (b);
      job->failed = job->abandoned = true;
      return;
    }
    c = job->head;
    if (c) {
      job->head = c->next;
      if (job->head == NULL)
        job->tail = NULL;
    }
    ad_batch_unlock (b);
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
      if (total > w->max_frame) {
        ad_error_set (&job->err, EFBIG, "frame at offset %" PRIu64 " has "
                      "no content size and decodes to more than %" PRIu64
                      " bytes, the autodecomp-max-frame limit", job->coff,
                      w->max_frame);
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
    ad_batch_buffer_put (b, c->buffer);
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

/* The batch's job: count the frame of job, or with drop abandon it. */
static bool
count_job (void *ctx, void *state, void *vjob, bool drop)
{
  struct counter *c = state;
  struct job *job = vjob;

  if (drop)
    job->failed = job->abandoned = true;
  else if (c == NULL) {
    ad_error_set (&job->err, ENOMEM, "out of memory for a decoder");
    job->failed = true;
  }
  else
    count_frame (ctx, job, c->dctx, c->out);
  job->done = true;
  return !job->failed;
}

/* Queue the bytes [w->copied, upto) of the window on the current job:
 * in the buffer that holds them, or where they are lent or mapped, in
 * copies of at most a buffer each.
 */
static int
walk_flush (struct walker *w, uint64_t upto, struct ad_error *err)
{
  struct ad_batch *b = w->batch;

  while (w->copied < upto) {
    const unsigned char *from = ad_window_at (&w->win, w->copied);
    unsigned char *copy = NULL;
    struct chunk *c = malloc (sizeof *c);
    size_t len;

    if (c == NULL)
      return ad_error_set (err, ENOMEM, "malloc: %m");
    c->next = NULL;
    c->buffer = w->win.buf;
    c->data = from;
    c->len = upto - w->copied;
    if (w->win.data != w->win.buf) {
      if (c->len > w->buffers.size)
        c->len = w->buffers.size;
      copy = ad_batch_buffer_get (b, err);
      if (copy == NULL) {
        free (c);
        return -1;
      }
      memcpy (copy, from, c->len);
      c->buffer = copy;
      c->data = copy;
    }

    ad_batch_lock (b);
    if (ad_batch_failed (b)) {
      ad_batch_unlock (b);
      ad_batch_buffer_put (b, copy);
      free (c);
      return ad_error_set (err, EIO, "parallel decoding failed");
    }
    if (copy == NULL)
      ad_batch_buffer_hold (c->buffer);
    len = c->len;               /* A worker may take and free c at once. */
    if (w->job->tail)
      w->job->tail->next = c;
    else
      w->job->head = c;
    w->job->tail = c;
    ad_batch_wake (b);
    ad_batch_unlock (b);
    w->copied += len;
  }
  return 0;
}

/* Make the bytes [pos, pos + n) available in the window (n is small).
 * While no frame is being queued, the window borrows the fetcher's
 * memory where it can (the walk reads only headers; copying the rest
 * would cost more than the walk).  While a frame is being queued its
 * bytes go to the workers in the batch's buffers, and the reads stay
 * contiguous, so that every byte of it passes through a buffer.
 */
static int
walk_need (struct walker *w, uint64_t pos, size_t n, struct ad_error *err)
{
  uint64_t size = w->src->size;

  if (pos > size || n > size - pos)
    return ad_error_set (err, EIO, "truncated: %zu bytes needed at offset %"
                         PRIu64 ", the file ends at %" PRIu64, n, pos,
                         size);
  while (w->win.data == NULL || pos < w->win.base ||
         pos + n > w->win.held) {
    uint64_t from = pos;
    size_t want, avail;

    w->win.lend = w->job == NULL;
    if (w->job) {
      if (w->win.data && walk_flush (w, w->win.held, err) == -1)
        return -1;
      if (from > w->win.held)
        from = w->win.held;
    }
    want = pos + n - from;
    if (want > w->buffers.size)
      want = w->buffers.size;
    if (ad_window_need (&w->win, from, want, &avail, err) == NULL)
      return -1;
  }
  return 0;
}

static const unsigned char *
walk_ptr (struct walker *w, uint64_t pos)
{
  return ad_window_at (&w->win, pos);
}

/* Walk the Data_Blocks of the frame number frame_no at pos, from *p
 * (after its header) to the end of its last block, counting them in
 * *nblocks.  Returns 0, or -1 with err.
 */
static int
walk_blocks (struct walker *w, size_t frame_no, uint64_t pos, uint64_t *p,
             uint64_t *nblocks, struct ad_error *err)
{
  uint64_t size = w->src->size;
  bool last = false;

  while (!last) {
    const unsigned char *b;
    uint32_t bh, type, bsize, content;

    if (walk_need (w, *p, BLOCK_HEADER_SIZE, err) == -1)
      return -1;
    b = walk_ptr (w, *p);
    bh = b[0] | (b[1] << 8) | (b[2] << 16);
    last = bh & 1;
    type = (bh >> 1) & 3;
    bsize = bh >> 3;
    if (type == 3)
      return ad_error_set (err, EIO, "block at offset %" PRIu64 " has the "
                           "reserved block type", *p);
    if (bsize > BLOCK_SIZE_MAX)
      return ad_error_set (err, EIO, "block at offset %" PRIu64 " is %"
                           PRIu32 " bytes, more than the maximum %d", *p,
                           bsize, BLOCK_SIZE_MAX);
    /* An empty block that is not the frame's last one is legal, but no
     * encoder writes it (libzstd writes no empty block but an empty
     * frame's last one), while zeroed bytes read as a run of them.
     * Without a seek table, the blocks are all that say where a frame
     * ends: zeroed bytes from a frame's first block header to a later
     * frame's first block header make one frame of the two, whose
     * size and content checksum are the later frame's, so every check
     * passes and the frames in between vanish from the image, shifting
     * everything after them.  Refusing such blocks catches that.
     */
    if (bsize == 0 && !last)
      return ad_error_set (err, EIO, "frame %zu at offset %" PRIu64 ": "
                           "block at offset %" PRIu64 " is empty and not "
                           "the frame's last (zeroed bytes?  No encoder "
                           "writes one)", frame_no, pos, *p);
    content = type == 1 ? 1 : bsize;
    *p += BLOCK_HEADER_SIZE;
    if (content > size - *p)
      return ad_error_set (err, EIO, "truncated: block at offset %" PRIu64
                           " needs %" PRIu32 " bytes, the file ends at %"
                           PRIu64, *p - BLOCK_HEADER_SIZE, content, size);
    *p += content;
    (*nblocks)++;
  }
  return 0;
}

/* Walk zstd frame number frame_no (counting from 0), starting at pos;
 * fill *f.
 */
static int
walk_frame (struct walker *w, struct ad_index *idx, size_t frame_no,
            uint64_t pos, struct walk_frame *f, struct ad_error *err)
{
  struct frame_header h;
  uint64_t p, size = w->src->size, nblocks = 0;
  unsigned log;

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
    struct job *job = calloc (1, sizeof *job);

    if (job == NULL)
      return ad_error_set (err, ENOMEM, "calloc: %m");
    job->coff = pos;
    job->wlog = log;
    if (ad_batch_push (w->batch, job, err) == -1) {
      free (job);
      return -1;
    }
    f->job = job;
    w->job = job;
    w->copied = pos;
  }

  /* Data_Blocks. */
  p = pos + h.size;
  if (walk_blocks (w, frame_no, pos, &p, &nblocks, err) == -1)
    return -1;
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
    if (walk_need (w, p - 1, 1, err) == -1 || walk_flush (w, p, err) == -1)
      return -1;
    ad_batch_lock (w->batch);
    w->job->complete = true;
    ad_batch_wake (w->batch);
    ad_batch_unlock (w->batch);
    w->job = NULL;
  }
  return 0;
}

/* A frame table that grows. */
struct walk_table {
  struct walk_frame *frames;
  size_t n, alloc;
};

/* Walk the frames from the start of the file into t, each one's decode
 * (where its header does not give its size) pushed to the batch.
 * Returns 0, or -1 with err.
 */
static int
walk_frames (struct walker *w, struct ad_index *idx, struct walk_table *t,
             struct ad_error *err)
{
  struct ad_source *src = w->src;
  uint64_t pos = 0;

  while (pos < src->size) {
    uint32_t magic;

    if (src->size - pos < 4)
      return ad_error_set (err, EIO, "%" PRIu64 " stray bytes at the end "
                           "of the file at offset %" PRIu64, src->size - pos,
                           pos);
    if (walk_need (w, pos, 4, err) == -1)
      return -1;
    magic = ad_le32 (walk_ptr (w, pos));
    if (is_skippable (magic)) {
      uint64_t fsize;

      if (walk_need (w, pos, AD_SKIPPABLE_HEADER_SIZE, err) == -1)
        return -1;
      fsize = ad_le32 (walk_ptr (w, pos) + 4);
      if (fsize > src->size - pos - AD_SKIPPABLE_HEADER_SIZE)
        return ad_error_set (err, EIO, "truncated: skippable frame at "
                             "offset %" PRIu64 " (%" PRIu64 " bytes) "
                             "extends past the end of the file", pos, fsize);
      pos += AD_SKIPPABLE_HEADER_SIZE + fsize;
      continue;
    }
    if (magic != FRAME_MAGIC)
      return ad_error_set (err, EIO, "bad magic 0x%08" PRIx32 " at offset %"
                           PRIu64 " (not a zstd frame)", magic, pos);
    if (t->n == t->alloc) {
      size_t n = t->alloc ? t->alloc * 2 : 64;
      struct walk_frame *nf = realloc (t->frames, n * sizeof *nf);
      if (nf == NULL)
        return ad_error_set (err, ENOMEM, "realloc: %m");
      t->frames = nf;
      t->alloc = n;
    }
    memset (&t->frames[t->n], 0, sizeof t->frames[t->n]);
    /* Count it now so that its job is freed whatever happens. */
    t->n++;
    if (walk_frame (w, idx, t->n - 1, pos, &t->frames[t->n - 1], err) == -1)
      return -1;
    pos += t->frames[t->n - 1].csize;
  }
  return 0;
}

/* Once the batch has finished: take the sizes that its jobs found and
 * add them up in *total.  Returns 0, or -1 with err (an error in a
 * worker explains a failed walk better than the walk's own).
 */
static int
walk_sizes (struct walk_table *t, bool walk_ok, uint64_t *total,
            struct ad_error *err)
{
  size_t i;

  for (i = 0; i < t->n; i++) {
    struct job *job = t->frames[i].job;
    if (job && job->failed && !job->abandoned) {
      *err = job->err;
      return -1;
    }
  }
  if (!walk_ok)
    return -1;
  *total = 0;
  for (i = 0; i < t->n; i++) {
    struct job *job = t->frames[i].job;
    if (job) {
      if (!job->done || job->failed)
        return ad_error_set (err, EIO, "frame at offset %" PRIu64 " was not "
                             "decoded", job->coff);
      t->frames[i].usize = job->usize;
    }
    if (t->frames[i].usize > INT64_MAX - *total)
      return ad_error_set (err, EIO, "frames up to offset %" PRIu64 " add "
                           "up to more than %" PRId64 " bytes",
                           t->frames[i].coff, INT64_MAX);
    *total += t->frames[i].usize;
  }
  return 0;
}

/* Append the frames of t to the index, so that they tile the file of
 * file_size bytes (see ad_frames_tile): an empty frame, or skippable
 * frames, before a frame are part of its range, and those after the
 * last frame part of the last one's (the decoder skips them, and an
 * empty frame adds nothing).
 */
static int
walk_append (struct ad_index *idx, const struct walk_table *t,
             uint64_t file_size, struct ad_error *err)
{
  uint64_t uoff = 0, cend = 0;
  size_t i, last = t->n;

  for (i = 0; i < t->n; i++)
    if (t->frames[i].usize > 0)
      last = i;
  for (i = 0; i < t->n; i++) {
    struct ad_frame frame = {
      .uoff = uoff, .usize = t->frames[i].usize,
      .coff = cend,
      .csize = i == last ? file_size - cend
      : t->frames[i].coff + t->frames[i].csize - cend,
      .aux32 = t->frames[i].checksum ? AUX_CHECKSUM : 0,
    };
    if (frame.usize == 0)
      continue;
    if (ad_index_append_frame (idx, &frame, err) == -1)
      return -1;
    uoff += frame.usize;
    cend = frame.coff + frame.csize;
  }
  return 0;
}

/* Free the jobs of t and what they still hold, and t's frames. */
static void
walk_free (struct walker *w, struct walk_table *t)
{
  size_t i;

  for (i = 0; i < t->n; i++) {
    struct job *job = t->frames[i].job;
    if (job) {
      while (job->head) {
        struct chunk *c = job->head;
        job->head = c->next;
        ad_batch_buffer_put (w->batch, c->buffer);
        free (c);
      }
      free (job);
    }
  }
  free (t->frames);
}

int
zstd_open_walk (struct ad_index *idx, struct ad_source *src,
                struct ad_error *err)
{
  struct walker w = { .src = src, .max_frame = idx->opts.max_frame };
  unsigned threads = ad_batch_threads_for (idx->opts.threads, MAX_THREADS);
  struct ad_batch_spec spec = {
    .worker_new = counter_new, .worker_free = counter_free,
    .run = count_job, .threads = threads, .max_buffers = threads + 3,
  };
  struct walk_table t = { NULL, 0, 0 };
  uint64_t total = 0;
  bool walk_ok;
  int r = -1;

  spec.buffer_size = src->size < WALK_CHUNK ? src->size : WALK_CHUNK;
  if (spec.buffer_size < 64)
    spec.buffer_size = 64;
  w.batch = ad_batch_new (&spec, &w, err);
  if (w.batch == NULL)
    return -1;
  w.buffers.get = walk_buffer_get;
  w.buffers.put = walk_buffer_put;
  w.buffers.opaque = w.batch;
  w.buffers.size = spec.buffer_size;
  ad_window_init (&w.win, src, 0, src->size);
  w.win.chunk = spec.buffer_size;
  w.win.buffers = &w.buffers;

  walk_ok = walk_frames (&w, idx, &t, err) == 0;
  ad_batch_finish (w.batch, !walk_ok);
  if (walk_sizes (&t, walk_ok, &total, err) == 0) {
    idx->size = total;
    if (walk_append (idx, &t, src->size, err) == 0)
      r = 0;
  }
  walk_free (&w, &t);
  ad_window_free (&w.win);
  ad_batch_free (w.batch);
  return r;
}
