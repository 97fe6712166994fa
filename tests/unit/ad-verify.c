/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * ad-verify: check the library against an original, without nbdkit.
 *
 *   ad-verify [-n READS] [-s SEED] [-t THREADS] [-c CACHE] [-w WORKERS]
 *             [-f MAX-FRAME] [-g GZIP-SPAN] [-k KEEP] [-p]
 *             COMPRESSED ORIGINAL
 *
 * Opens COMPRESSED through the library (detect, index, cache, spill),
 * checks that its size equals ORIGINAL's, walks it with block status
 * (ad_export_extents, as nbdcopy does: every run reported as zeros
 * must be zeros in ORIGINAL), reads the whole image in
 * order in odd-sized pieces, then makes READS random reads of random
 * lengths (1 byte to 4 MiB, many crossing frame boundaries), and
 * compares every byte.  With -t, THREADS threads make the random reads
 * at the same time on the one shared export (for the thread
 * sanitizer).  With -w, frames are decoded by a pool of WORKERS decode
 * threads, with read-ahead for the sequential read (as in the filter);
 * -p also serves frames progressively.  -k sets the bytes a sizing
 * pass may keep (opts.keep_size, default 0).  Prints what it checked.  Used by the unit tests and
 * under the sanitizers.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdbool.h>

#include "format.h"
#include "cache.h"
#include "export.h"
#include "splitmix.h"

static int
check (struct ad_export *exp, struct ad_reader *reader,
       struct ad_source *src, const char *orig, char *buf, size_t count,
       uint64_t offset)
{
  struct ad_error err;

  ad_error_clear (&err);
  if (ad_export_read (exp, reader, src, buf, count, offset, &err) == -1) {
    fprintf (stderr, "ad-verify: read %zu at %" PRIu64 ": %s\n", count,
             offset, err.msg);
    return -1;
  }
  if (memcmp (buf, orig + offset, count) != 0) {
    size_t i;
    for (i = 0; i < count && buf[i] == orig[offset + i]; i++)
      ;
    fprintf (stderr, "ad-verify: WRONG BYTES: read %zu at %" PRIu64
             ": first difference at %" PRIu64 "\n", count, offset,
             offset + i);
    return -1;
  }
  return 0;
}

/* Block status, as a client walks it. */
struct walk {
  const char *orig;
  uint64_t next, zero_bytes;
  int failed;
};

static int
walk_extent (void *opaque, uint64_t offset, uint64_t length, bool zero)
{
  struct walk *w = opaque;
  uint64_t i;

  if (offset != w->next) {
    fprintf (stderr, "ad-verify: extents: a run at %" PRIu64 ", expected "
             "one at %" PRIu64 "\n", offset, w->next);
    w->failed = 1;
  }
  if (zero) {
    for (i = 0; i < length; i++)
      if (w->orig[offset + i] != 0) {
        fprintf (stderr, "ad-verify: WRONG EXTENTS: the run of %" PRIu64
                 " bytes at %" PRIu64 " is said to be zeros, but byte %"
                 PRIu64 " is not\n", length, offset, offset + i);
        w->failed = 1;
        break;
      }
    w->zero_bytes += length;
  }
  w->next = offset + length;
  return 0;
}

static int
walk_extents (struct ad_export *exp, struct ad_source *src,
              const char *orig, uint64_t osize, uint64_t *zero_bytes)
{
  struct walk w = { orig, 0, 0, 0 };
  struct ad_error err;

  while (w.next < osize && !w.failed) {
    uint64_t before = w.next;
    size_t count = osize - w.next < (1ULL << 30) ? osize - w.next : 1ULL << 30;

    ad_error_clear (&err);
    if (ad_export_extents (exp, src, count, w.next, walk_extent, &w,
                           &err) == -1) {
      fprintf (stderr, "ad-verify: extents at %" PRIu64 ": %s\n", w.next,
               err.msg);
      return -1;
    }
    if (w.next == before) {
      fprintf (stderr, "ad-verify: extents at %" PRIu64 " described "
               "nothing\n", before);
      return -1;
    }
  }
  *zero_bytes = w.zero_bytes;
  return w.failed ? -1 : 0;
}

struct worker {
  struct ad_export *exp;
  struct ad_source *src;
  const char *orig;
  uint64_t osize;
  unsigned long reads;
  uint64_t seed;
  int failed;
};

static const uint64_t maxlen = 4 << 20;

static void *
random_reads (void *arg)
{
  struct worker *w = arg;
  uint64_t s = w->seed, off;
  char *buf = malloc (maxlen);
  struct ad_reader *reader = ad_reader_new ();
  unsigned long i;

  if (reader == NULL) {
    perror ("ad_reader_new");
    w->failed = 1;
  }
  for (i = 0; i < w->reads && w->osize > 0 && !w->failed; i++) {
    uint64_t len;
    switch (rnd (&s) % 4) {
    case 0: len = 1 + rnd (&s) % 16; break;
    case 1: len = 1 + rnd (&s) % 65536; break;
    case 2: len = 1 + rnd (&s) % (1 << 20); break;
    default: len = 1 + rnd (&s) % maxlen; break;
    }
    if (len > w->osize)
      len = w->osize;
    off = rnd (&s) % (w->osize - len + 1);
    if (check (w->exp, reader, w->src, w->orig, buf, len, off) == -1)
      w->failed = 1;
  }
  ad_reader_free (reader);
  free (buf);
  return NULL;
}

int
main (int argc, char *argv[])
{
  unsigned long reads = 2000, threads = 1, workers = 0;
  bool progressive = false, background = false;
  struct ad_source bg_src;
  int bg_fd = -1;
  struct ad_pool *pool = NULL;
  struct ad_reader *reader;
  uint64_t seed = 1, s, cache_size = 64 << 20;
  struct worker w[64];
  pthread_t tid[64];
  struct ad_options opts;
  struct ad_source src;
  struct ad_export_config config = { .pool = NULL };
  struct ad_export *exp;
  struct ad_cache *cache;
  struct ad_error err;
  struct stat st;
  struct ad_export_stats stats;
  const char *orig;
  uint64_t osize, off, zero_bytes = 0;
  char *buf;
  int fd, ofd, c;
  unsigned long i;

  ad_options_init (&opts);
  while ((c = getopt (argc, argv, "n:s:f:g:t:c:w:k:pb")) != -1) {
    switch (c) {
    case 't': threads = strtoul (optarg, NULL, 0); break;
    case 'c': cache_size = strtoull (optarg, NULL, 0); break;
    case 'n': reads = strtoul (optarg, NULL, 0); break;
    case 's': seed = strtoull (optarg, NULL, 0); break;
    case 'f': opts.max_frame = strtoull (optarg, NULL, 0); break;
    case 'g': opts.gzip_span = strtoull (optarg, NULL, 0); break;
    case 'w': workers = strtoul (optarg, NULL, 0); break;
    case 'k': opts.keep_size = strtoull (optarg, NULL, 0); break;
    case 'p': progressive = true; break;
    case 'b': background = true; break;
    default: goto usage;
    }
  }
  if (threads < 1 || threads > 64)
    goto usage;
  if (argc - optind != 2) {
  usage:
    fprintf (stderr, "usage: ad-verify [-n READS] [-s SEED] [-t THREADS] "
             "[-c CACHE] [-f MAX-FRAME] [-g GZIP-SPAN] [-w WORKERS] [-k KEEP] "
             "[-p] [-b] "
             "COMPRESSED ORIGINAL\n");
    return 2;
  }
  fd = open (argv[optind], O_RDONLY);
  ofd = open (argv[optind + 1], O_RDONLY);
  if (fd == -1 || ofd == -1) {
    perror ("open");
    return 2;
  }
  fstat (fd, &st);
  ad_source_init_fd (&src, fd, st.st_size);
  fstat (ofd, &st);
  osize = st.st_size;
  orig = osize ? mmap (NULL, osize, PROT_READ, MAP_PRIVATE, ofd, 0) : "";
  if (orig == MAP_FAILED) {
    perror ("mmap");
    return 2;
  }

  if (workers > 0) {
    pool = ad_pool_new (workers, 0, &err);
    if (pool == NULL) {
      fprintf (stderr, "ad-verify: %s\n", err.msg);
      return 1;
    }
    config.pool = pool;
    config.readahead = cache_size / 4;
    config.progressive = progressive;
  }
  cache = ad_cache_new (cache_size);
  exp = ad_export_open (&src, AD_FORMAT_UNKNOWN, &opts, cache, &config,
                        &err);
  if (exp == NULL) {
    fprintf (stderr, "ad-verify: %s: %s\n", argv[optind], err.msg);
    return 1;
  }
  if (ad_export_size (exp) != osize) {
    fprintf (stderr, "ad-verify: %s: size %" PRIu64 ", expected %" PRIu64
             "\n", argv[optind], ad_export_size (exp), osize);
    return 1;
  }
  if (ad_export_format (exp) == AD_FORMAT_RAW) {
    printf ("%s: raw, nothing to check\n", argv[optind]);
    return 0;
  }
  buf = malloc (maxlen);
  if (walk_extents (exp, &src, orig, osize, &zero_bytes) == -1)
    return 1;

  /* Random reads first (so the spill and the gzip pass are exercised
   * out of order), in several threads at once with -t; then the whole
   * image in order.
   */
  for (i = 0; i < threads; i++) {
    w[i] = (struct worker) { exp, &src, orig, osize, reads / threads,
                             seed + i * 7919, 0 };
    pthread_create (&tid[i], NULL, random_reads, &w[i]);
  }
  for (i = 0; i < threads; i++) {
    pthread_join (tid[i], NULL);
    if (w[i].failed)
      return 1;
  }
  s = seed;
  reader = ad_reader_new ();
  if (reader == NULL) {
    perror ("ad_reader_new");
    return 1;
  }
  /* With -b the sequential reader looks ahead in a thread of its own,
   * through a source of its own (as the filter's connections do).
   */
  if (background) {
    bg_fd = open (argv[optind], O_RDONLY);
    if (bg_fd == -1) {
      perror ("open");
      return 2;
    }
    ad_source_init_fd (&bg_src, bg_fd, src.size);
    ad_reader_set_background (reader, &bg_src);
  }
  for (off = 0; off < osize; ) {
    uint64_t len = 1 + rnd (&s) % maxlen;
    if (len > osize - off)
      len = osize - off;
    if (check (exp, reader, &src, orig, buf, len, off) == -1)
      return 1;
    off += len;
  }
  ad_reader_free (reader);
  if (bg_fd != -1)
    close (bg_fd);
  /* Let read-ahead still in flight finish before counting. */
  ad_pool_free (pool);
  pool = NULL;
  ad_export_get_stats (exp, &stats);
  printf ("%s: %s, %" PRIu64 " bytes, %zu frames, %lu random reads + "
          "sequential read OK, %" PRIu64 " bytes of zeros by extents, %"
          PRIu64 " frame decodes (%" PRIu64 " by read-ahead), %" PRIu64
          " source reads, %" PRIu64 " frames kept by the pass\n",
          argv[optind], ad_format_name (ad_export_format (exp)),
          osize, stats.index.nframes, reads, zero_bytes,
          stats.index.frames_decoded, stats.readahead_frames, src.reads,
          stats.index.frames_kept);
  free (buf);
  ad_pool_free (pool);
  ad_export_free (exp);
  ad_cache_free (cache);
  return 0;
}
