/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Unit test of lib/window.c: random walks of consumers over windows on
 * sources that copy, map or lend (some of them failing reads), with
 * and without buffers from the user.  Every byte handed out is checked
 * against the image, every loan and buffer must come back, and a failed
 * read must leave a window that works again.
 *
 * test-window [SEED] (the seed of a failing run is printed).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>

#include "window.h"
#include "splitmix.h"

#define IMAGE 100000
#define SLOT 7000               /* The lending source lends within these. */
#define BUFFER 6000             /* Size of the user's buffers. */

enum mode { COPY, MAP, LEND };

struct test_source {
  struct ad_source src;
  const unsigned char *image;
  enum mode mode;
  uint64_t *seed;
  unsigned fail_per_mille;      /* Reads that fail. */
  long loans;                   /* Not given back. */
  struct ad_loan loan;
};

static unsigned char image[IMAGE];
static long buffers_out;

#define CHECK(cond, ...) \
  do { \
    if (!(cond)) { \
      fprintf (stderr, "test-window: %s:%d: %s: ", __FILE__, __LINE__, \
               #cond); \
      fprintf (stderr, __VA_ARGS__); \
      fprintf (stderr, " (seed %" PRIu64 ")\n", seed0); \
      exit (EXIT_FAILURE); \
    } \
  } while (0)

static uint64_t seed0;

static void
give_back (struct ad_loan *loan)
{
  struct test_source *ts = (struct test_source *)
    ((char *) loan - offsetof (struct test_source, loan));

  ts->loans--;
}

static int
ts_read (void *opaque, void *buf, size_t count, uint64_t offset,
         const void **data, struct ad_loan **loan, struct ad_error *err)
{
  struct test_source *ts = opaque;

  if (ts->fail_per_mille && rnd (ts->seed) % 1000 < ts->fail_per_mille)
    return ad_error_set (err, EIO, "injected failure at %" PRIu64, offset);
  if (loan && offset / SLOT == (offset + count - 1) / SLOT) {
    *data = ts->image + offset;
    *loan = &ts->loan;
    ts->loans++;
    return 0;
  }
  memcpy (buf, ts->image + offset, count);
  return 0;
}

static int
ts_pread (void *opaque, void *buf, size_t count, uint64_t offset,
          struct ad_error *err)
{
  return ts_read (opaque, buf, count, offset, NULL, NULL, err);
}

static const void *
ts_map (void *opaque, uint64_t offset,
        size_t count __attribute__ ((unused)))
{
  struct test_source *ts = opaque;

  return ts->image + offset;
}

static void *
buf_get (void *opaque __attribute__ ((unused)), struct ad_error *err)
{
  void *p = malloc (BUFFER);

  if (p == NULL)
    ad_error_set (err, ENOMEM, "malloc");
  else
    buffers_out++;
  return p;
}

static void
buf_put (void *opaque __attribute__ ((unused)), void *buf)
{
  if (buf) {
    buffers_out--;
    free (buf);
  }
}

static const struct ad_window_buffers user_buffers = {
  .get = buf_get, .put = buf_put, .size = BUFFER,
};

/* One window, one consumer: mostly forward, sometimes back. */
static void
walk (uint64_t *seed, enum mode mode, bool lend, bool buffers,
      unsigned fail)
{
  struct test_source ts = {
    .image = image, .mode = mode, .seed = seed, .fail_per_mille = fail,
  };
  struct ad_window w;
  uint64_t start = rnd (seed) % IMAGE, end, pos;
  unsigned step;

  end = start + rnd (seed) % (IMAGE - start + 1);
  ts.src.pread = ts_pread;
  ts.src.opaque = &ts;
  ts.src.size = IMAGE;
  ts.loan.give_back = give_back;
  if (mode == MAP)
    ts.src.map = ts_map;
  if (mode == LEND)
    ts.src.lend = ts_read;

  ad_window_init (&w, &ts.src, start, end);
  if (rnd (seed) % 2)
    w.chunk = 1 + rnd (seed) % 5000;
  w.lend = lend;
  if (buffers)
    w.buffers = &user_buffers;
  if (!buffers && rnd (seed) % 4 == 0 && end - start >= 10) {
    /* The first bytes are shown, or given. */
    size_t len = 1 + rnd (seed) % (end - start);
    if (rnd (seed) % 2)
      ad_window_show (&w, image + start, len);
    else {
      unsigned char *b = malloc (len);
      CHECK (b != NULL, "malloc");
      memcpy (b, image + start, len);
      ad_window_adopt (&w, b, len);
    }
  }

  pos = start;
  for (step = 0; step < 300; step++) {
    struct ad_error err;
    size_t n = 1 + rnd (seed) % (buffers ? BUFFER : 9000), avail, want;
    const unsigned char *p;

    ad_error_clear (&err);
    want = n < end - pos ? n : end - pos;
    p = ad_window_need (&w, pos, n, &avail, &err);
    if (p == NULL) {
      CHECK (fail > 0, "unexpected error: %s", err.msg);
      CHECK (w.data == NULL && w.loan == NULL, "a failed read holds bytes");
      continue;
    }
    CHECK (avail >= want && avail <= end - pos,
           "at %" PRIu64 " asked %zu, got %zu (end %" PRIu64 ")", pos, n,
           avail, end);
    CHECK (memcmp (p, image + pos, avail) == 0,
           "wrong bytes at %" PRIu64 " (%zu)", pos, avail);
    if (rnd (seed) % 10 == 0)
      pos = start + rnd (seed) % (end - start + 1);
    else if (rnd (seed) % 20 == 0)
      ad_window_drop (&w, pos);
    else
      pos += avail ? rnd (seed) % (avail + 1) : 0;
    if (pos == end && rnd (seed) % 2)
      pos = start;
  }
  ad_window_free (&w);
  CHECK (ts.loans == 0, "%ld loans not given back", ts.loans);
  CHECK (buffers_out == 0, "%ld buffers not given back", buffers_out);
}

int
main (int argc, char *argv[])
{
  uint64_t seed;
  unsigned i;

  seed0 = argc > 1 ? strtoull (argv[1], NULL, 0) : 0x5eed;
  seed = seed0;
  for (i = 0; i < IMAGE; i++)
    image[i] = rnd (&seed) >> 56;
  for (i = 0; i < 3000; i++) {
    enum mode mode = rnd (&seed) % 3;
    bool lend = rnd (&seed) % 2, buffers = rnd (&seed) % 3 == 0;
    unsigned fail = rnd (&seed) % 3 == 0 ? 50 : 0;

    walk (&seed, mode, lend, buffers, fail);
  }
  printf ("test-window: 3000 walks passed (seed %" PRIu64 ")\n", seed0);
  return EXIT_SUCCESS;
}
