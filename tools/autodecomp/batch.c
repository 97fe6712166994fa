/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: prepare's parallel compressor.  Frames are compressed
 * in parallel, in batches, and written in order: the formats it serves
 * (zstd frames, BGZF members) have frames independent of each other.
 * The writer (write-zstd.c, write-bgzf.c) gives the compressor and a
 * hook called for every frame written; it writes what follows the
 * frames itself.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>

#include "autodecomp.h"

struct batch_worker {
  struct batch *b;
  unsigned id;
};

static void *
batch_run (void *arg)
{
  struct batch_worker *w = arg;
  struct batch *b = w->b;
  size_t i;

  for (i = w->id; i < b->n; i += b->threads)
    b->result[i] = b->ops->compress (b, w->id, b->in + i * b->frame,
                                     b->in_len[i], b->out + i * b->bound,
                                     &b->out_len[i]);
  return NULL;
}

/* Compress the b->n frames of the batch, on b->threads threads. */
static int
batch_compress (struct batch *b)
{
  pthread_t tid[64];
  struct batch_worker w[64];
  uint64_t started = 0;
  unsigned i;

  for (i = 0; i < b->threads; i++) {
    w[i] = (struct batch_worker) { b, i };
    if (i == 0 || pthread_create (&tid[i], NULL, batch_run, &w[i]) != 0)
      continue;
    started |= 1ULL << i;
  }
  /* Worker 0 runs here; a thread that did not start is done here too. */
  for (i = 0; i < b->threads; i++)
    if (!(started & (1ULL << i)))
      batch_run (&w[i]);
  for (i = 1; i < b->threads; i++)
    if (started & (1ULL << i))
      pthread_join (tid[i], NULL);
  for (i = 0; i < b->n; i++)
    if (b->result[i] == -1)
      return -1;
  return 0;
}

static int
batch_alloc (struct batch *b)
{
  /* Enough frames to keep every thread busy, about 32 MiB of input. */
  b->cap = 32 * MiB / b->frame;
  if (b->cap < 2 * b->threads)
    b->cap = 2 * b->threads;
  b->in = malloc (b->cap * b->frame);
  b->out = malloc (b->cap * b->bound);
  b->in_len = calloc (b->cap, sizeof *b->in_len);
  b->out_len = calloc (b->cap, sizeof *b->out_len);
  b->result = calloc (b->cap, sizeof *b->result);
  b->ctx = calloc (b->threads, sizeof *b->ctx);
  if (!b->in || !b->out || !b->in_len || !b->out_len || !b->result ||
      !b->ctx) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    return -1;
  }
  return 0;
}

static void
batch_free (struct batch *b)
{
  size_t i;

  if (b->ctx) {
    for (i = 0; i < b->threads; i++)
      if (b->ctx[i] != NULL)
        b->ops->ctx_free (b->ctx[i]);
  }
  free (b->ctx);
  free (b->in);
  free (b->out);
  free (b->in_len);
  free (b->out_len);
  free (b->result);
}

/* Fill the batch with up to cap frames of input.  Sets *end when the
 * reader reached the end of the image.
 */
static int
batch_fill (struct batch *b, struct reader *r, bool *end)
{
  for (b->n = 0; b->n < b->cap; b->n++) {
    ssize_t n = reader_fill (r, b->in + b->n * b->frame, b->frame);

    if (n == -1)
      return -1;
    if (n == 0) {
      *end = true;
      break;
    }
    b->in_len[b->n] = n;
    reader_progress (r, "reading");
  }
  return 0;
}

/* Write the batch's frames in order. */
static int
batch_flush (struct batch *b, struct output *o)
{
  size_t i;

  for (i = 0; i < b->n; i++) {
    const char *frame = b->out + i * b->bound;

    if (output_write (o, frame, b->out_len[i]) == -1)
      return -1;
    if (b->ops->written &&
        b->ops->written (b, frame, b->out_len[i], b->in_len[i]) == -1)
      return -1;
  }
  return 0;
}

int
batch_write (struct reader *r, struct output *o,
             const struct prepare_opts *po, const struct batch_ops *ops,
             size_t frame, size_t bound, void *opaque)
{
  struct batch b;
  int ret = -1;

  memset (&b, 0, sizeof b);
  b.ops = ops;
  b.opaque = opaque;
  b.threads = po->threads;
  b.level = po->level;
  b.frame = frame;
  b.bound = bound;
  if (batch_alloc (&b) == -1)
    goto out;
  for (;;) {
    bool end = false;

    if (batch_fill (&b, r, &end) == -1)
      goto out;
    if (b.n > 0 && batch_compress (&b) == -1) {
      fprintf (stderr, PROGRAM ": %s: compressing failed\n", o->path);
      goto out;
    }
    if (batch_flush (&b, o) == -1)
      goto out;
    if (end || b.n < b.cap)
      break;
  }
  ret = 0;

 out:
  batch_free (&b);
  return ret;
}
