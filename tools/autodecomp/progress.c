/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: how far a pass over the compressed image got, on stderr.
 *
 * Building an index may read the whole image (the bzip2 sizing pass,
 * the walk over zstd frames or BGZF members, the gzip pass), which
 * takes minutes for a large image or a slow URL.  The library knows
 * nothing of terminals; it only reads through a source.  So the tool
 * puts a source of its own between the library and the image: it
 * counts the compressed bytes read through it and, from the reading
 * thread, at most every PROGRESS_INTERVAL seconds, shows the bytes
 * read, the image's compressed size, the rate and the percentage on
 * stderr: on a terminal by rewriting one line, elsewhere (a log, when
 * asked for with --progress) as one line per update, at most every
 * PROGRESS_INTERVAL_LOG seconds.  progress_end writes the last update
 * and ends its line.
 *
 * A format that reads its index from the end of the file (xz, a
 * seekable zstd, lzip) reads a small part of it: the last line then
 * shows how little was read, not 100%.  Bytes read twice (the end
 * read again, the fetcher's read-ahead over what it had) count twice,
 * so the count may pass the size: the line then shows the size, and
 * 100%.  The library's fetcher reads a sequential pass in pieces of
 * its fetch size (16 MiB), so the line moves in such steps, and the
 * decoding of the last piece follows its 100%.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include "autodecomp.h"

/* Seconds between two updates, on a terminal and elsewhere. */
#define PROGRESS_INTERVAL 0.2
#define PROGRESS_INTERVAL_LOG 1.0

/* Write the line (under p->lock). */
static void
progress_show_locked (struct progress *p, double t)
{
  uint64_t read = __atomic_load_n (&p->done, __ATOMIC_RELAXED), done = read;
  uint64_t size = p->inner->size;
  double secs = t - p->start;
  double rate = secs > 0 ? read / secs : 0;

  if (done > size)
    done = size;
  if (p->tty)
    fprintf (stderr, "\r");
  fprintf (stderr, "%s: ", p->what);
  print_size (stderr, done);
  fprintf (stderr, " of ");
  print_size (stderr, size);
  fprintf (stderr, " read, ");
  print_size (stderr, rate);
  /* On a terminal, erase what a longer line before left. */
  fprintf (stderr, "/s, %.0f%%%s", size ? 100.0 * done / size : 100.0,
           p->tty ? "\033[K" : "\n");
  fflush (stderr);
  __atomic_store (&p->last, &t, __ATOMIC_RELAXED);
  p->shown = read;
}

static int
progress_pread (void *opaque, void *buf, size_t count, uint64_t offset,
                struct ad_error *err)
{
  struct progress *p = opaque;
  double t, last;

  if (ad_source_pread (p->inner, buf, count, offset, err) == -1)
    return -1;
  __atomic_add_fetch (&p->done, count, __ATOMIC_RELAXED);
  t = now ();
  __atomic_load (&p->last, &last, __ATOMIC_RELAXED);
  /* A reader that finds another one printing leaves the line to it. */
  if (t - last >= p->interval &&
      pthread_mutex_trylock (&p->lock) == 0) {
    if (t - p->last >= p->interval)
      progress_show_locked (p, t);
    pthread_mutex_unlock (&p->lock);
  }
  return 0;
}

void
progress_init (struct progress *p, struct ad_source *inner,
               const char *what)
{
  memset (p, 0, sizeof *p);
  pthread_mutex_init (&p->lock, NULL);
  p->inner = inner;
  p->what = what;
  p->tty = isatty (STDERR_FILENO);
  p->interval = p->tty ? PROGRESS_INTERVAL : PROGRESS_INTERVAL_LOG;
  p->start = p->last = now ();
  p->shown = UINT64_MAX;
  p->src.pread = progress_pread;
  p->src.opaque = p;
  p->src.size = inner->size;
  /* No map: every byte the library takes goes through pread. */
}

void
progress_end (struct progress *p)
{
  pthread_mutex_lock (&p->lock);
  /* Not the same line again in a log. */
  if (p->tty || p->shown != p->done)
    progress_show_locked (p, now ());
  if (p->tty)
    fprintf (stderr, "\n");
  pthread_mutex_unlock (&p->lock);
  pthread_mutex_destroy (&p->lock);
}
