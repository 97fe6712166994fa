/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * gzip-lazy: checks of the lazy gzip indexing pass, without nbdkit.
 *
 *   gzip-lazy [-s SEED] [-p PERCENT] [-k RUNS] COMPRESSED.gz ORIGINAL
 *
 * COMPRESSED must be a single-member gzip file large enough to be
 * indexed lazily (GZ_LAZY in lib/gzip.c: a few MB or more).
 *
 * 1. Decode once.  A fresh export is read in order, in 256 KiB reads
 *    taken in turn by 4 threads (as nbdcopy does), every byte compared
 *    with ORIGINAL.  The pass gives each span it decodes to the cache,
 *    so no frame may be decoded a second time: the index's frame decode
 *    counter must stay at 0.  (A reader that finds a frame the pass has
 *    just added, before the pass gave it to the cache, must not decode
 *    it itself.)
 *
 * 2. Transient errors are not remembered.  For each source read K that
 *    the sequential read of step 1 made after open, a fresh export
 *    over a source whose K-th read fails with EIO is read in order in
 *    1 MiB reads: a read that succeeds must be right, one that fails is
 *    ignored (at least one must fail).  Then the errors stop and the
 *    same export must serve the whole image right (before the fix, one
 *    failure of the lazy pass failed every later read past it until
 *    the export was reopened).  The same once more with PERCENT % of
 *    the reads failing (a PRNG seeded with SEED).  -k limits the runs
 *    with one failing read to the first RUNS reads (for large files).
 *
 * Prints what it checked; exits 0 on success, 1 on failure, 2 on
 * usage and setup errors, 77 if the file is not lazily indexed.
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

#include "format.h"
#include "cache.h"
#include "export.h"
#include "splitmix.h"

/* A source that fails some reads, in front of the file's own. */
struct flaky {
  struct ad_source file;
  unsigned percent;             /* Reads that fail, 0 to stop. */
  uint64_t fail_at;             /* Or fail only this read (from 1). */
  uint64_t seed;
  uint64_t reads, failures;
};

static int
flaky_pread (void *opaque, void *buf, size_t count, uint64_t offset,
             struct ad_error *err)
{
  struct flaky *f = opaque;

  f->reads++;
  if ((f->percent && rnd (&f->seed) % 100 < f->percent) ||
      f->reads == f->fail_at) {
    f->failures++;
    return ad_error_set (err, EIO, "injected EIO at offset %" PRIu64,
                         offset);
  }
  return f->file.pread (f->file.opaque, buf, count, offset, err);
}

static int read_all (struct ad_export *exp, struct ad_source *src,
                     const char *orig, uint64_t size, size_t len,
                     bool may_fail, uint64_t *failed);

/* Step 2 with one way of failing (fl->fail_at or fl->percent). */
static int
flaky_run (struct ad_source *src, struct flaky *fl, const char *orig,
           uint64_t osize, const char *name)
{
  struct ad_options opts;
  struct ad_cache *cache = ad_cache_new (64 << 20);
  struct ad_export *exp;
  struct ad_error err;
  uint64_t fail_at = fl->fail_at, failed = 0;
  unsigned percent = fl->percent;

  ad_options_init (&opts);
  fl->fail_at = fl->percent = 0;
  fl->reads = fl->failures = 0;
  exp = ad_export_open (src, AD_FORMAT_GZIP, &opts, cache, NULL, &err);
  if (exp == NULL) {
    fprintf (stderr, "gzip-lazy: %s: %s\n", name, err.msg);
    return -1;
  }
  fl->fail_at = fail_at ? fl->reads + fail_at : 0;
  fl->percent = percent;
  if (read_all (exp, src, orig, osize, 1024 * 1024, true, &failed) == -1)
    return -1;
  if (fail_at && failed == 0) {
    fprintf (stderr, "gzip-lazy: read %" PRIu64 " after open failed, but "
             "no export read did\n", fail_at);
    return -1;
  }
  fl->fail_at = fl->percent = 0;
  if (read_all (exp, src, orig, osize, 1024 * 1024, false, NULL) == -1) {
    fprintf (stderr, "gzip-lazy: the export did not recover after %"
             PRIu64 " injected errors\n", fl->failures);
    return -1;
  }
  printf ("%s: %" PRIu64 " injected EIO (%s %" PRIu64 ") failed %" PRIu64
          " export reads; afterwards every byte read right\n", name,
          fl->failures, fail_at ? "source read" : "percent",
          fail_at ? fail_at : percent, failed);
  ad_export_free (exp);
  ad_cache_free (cache);
  return 0;
}

static int
read_all (struct ad_export *exp, struct ad_source *src, const char *orig,
          uint64_t size, size_t len, bool may_fail, uint64_t *failed)
{
  char *buf = malloc (len);
  uint64_t off;

  if (buf == NULL)
    return -1;
  for (off = 0; off < size; off += len) {
    size_t n = size - off < len ? size - off : len;
    struct ad_error err;

    ad_error_clear (&err);
    if (ad_export_pread (exp, src, buf, n, off, &err) == -1) {
      if (may_fail) {
        (*failed)++;
        continue;
      }
      fprintf (stderr, "gzip-lazy: read %zu at %" PRIu64 ": %s\n",
               n, off, err.msg);
      free (buf);
      return -1;
    }
    if (memcmp (buf, orig + off, n) != 0) {
      fprintf (stderr, "gzip-lazy: WRONG BYTES in the read of %zu at %"
               PRIu64 "\n", n, off);
      free (buf);
      return -1;
    }
  }
  free (buf);
  return 0;
}

/* Step 1: threads taking the next 256 KiB of the image in turn. */
struct seq {
  struct ad_export *exp;
  struct ad_source *src;
  const char *orig;
  uint64_t size, next;
  int failed;
};

static void *
seq_reader (void *arg)
{
  struct seq *q = arg;
  const size_t len = 256 * 1024;
  char *buf = malloc (len);

  for (;;) {
    uint64_t off = __atomic_fetch_add (&q->next, len, __ATOMIC_SEQ_CST);
    size_t n;
    struct ad_error err;

    if (off >= q->size || buf == NULL)
      break;
    n = q->size - off < len ? q->size - off : len;
    ad_error_clear (&err);
    if (ad_export_pread (q->exp, q->src, buf, n, off, &err) == -1) {
      fprintf (stderr, "gzip-lazy: read %zu at %" PRIu64 ": %s\n",
               n, off, err.msg);
      q->failed = 1;
      break;
    }
    if (memcmp (buf, q->orig + off, n) != 0) {
      fprintf (stderr, "gzip-lazy: WRONG BYTES in the read of %zu at %"
               PRIu64 "\n", n, off);
      q->failed = 1;
      break;
    }
  }
  free (buf);
  return NULL;
}

int
main (int argc, char *argv[])
{
  struct flaky fl = { .seed = 1, .percent = 30 };
  unsigned percent;
  struct ad_options opts;
  struct ad_source src;
  struct ad_export *exp;
  struct ad_cache *cache;
  struct ad_error err;
  struct stat st;
  const char *orig;
  uint64_t osize, decodes, pass_reads, k, max_runs = UINT64_MAX;
  int fd, ofd, c;

  ad_options_init (&opts);
  while ((c = getopt (argc, argv, "s:p:k:")) != -1) {
    switch (c) {
    case 'k': max_runs = strtoull (optarg, NULL, 0); break;
    case 's': fl.seed = strtoull (optarg, NULL, 0); break;
    case 'p': fl.percent = strtoul (optarg, NULL, 0); break;
    default: goto usage;
    }
  }
  if (argc - optind != 2 || fl.percent > 90) {
  usage:
    fprintf (stderr, "usage: gzip-lazy [-s SEED] [-p PERCENT] [-k RUNS] "
             "COMPRESSED.gz ORIGINAL\n");
    return 2;
  }
  percent = fl.percent;
  fl.percent = 0;               /* Open without errors. */
  fd = open (argv[optind], O_RDONLY);
  ofd = open (argv[optind + 1], O_RDONLY);
  if (fd == -1 || ofd == -1) {
    perror ("open");
    return 2;
  }
  fstat (fd, &st);
  ad_source_init_fd (&fl.file, fd, st.st_size);
  memset (&src, 0, sizeof src);
  src.pread = flaky_pread;
  src.opaque = &fl;
  src.size = st.st_size;
  fstat (ofd, &st);
  osize = st.st_size;
  orig = osize ? mmap (NULL, osize, PROT_READ, MAP_PRIVATE, ofd, 0) : "";
  if (orig == MAP_FAILED) {
    perror ("mmap");
    return 2;
  }

  /* 1. A sequential read decodes every span once, in the pass. */
  cache = ad_cache_new (256 << 20);
  exp = ad_export_open (&src, AD_FORMAT_GZIP, &opts, cache, NULL, &err);
  if (exp == NULL) {
    fprintf (stderr, "gzip-lazy: %s: %s\n", argv[optind], err.msg);
    return 1;
  }
  if (ad_export_size (exp) != osize) {
    fprintf (stderr, "gzip-lazy: size %" PRIu64 ", expected %" PRIu64 "\n",
             ad_export_size (exp), osize);
    return 1;
  }
  if (ad_index_complete (ad_export_index (exp))) {
    printf ("%s: not indexed lazily, nothing to check\n", argv[optind]);
    return 77;
  }
  fl.reads = 0;
  {
    struct seq q = { exp, &src, orig, osize, 0, 0 };
    pthread_t tid[4];
    int i;

    for (i = 0; i < 4; i++)
      pthread_create (&tid[i], NULL, seq_reader, &q);
    for (i = 0; i < 4; i++)
      pthread_join (tid[i], NULL);
    if (q.failed)
      return 1;
  }
  pass_reads = fl.reads;
  {
    struct ad_export_stats stats;

    ad_export_get_stats (exp, &stats);
    decodes = stats.index.frames_decoded;
  }
  if (decodes != 0) {
    fprintf (stderr, "gzip-lazy: a sequential read decoded %" PRIu64
             " of the %zu frames again after the indexing pass\n",
             decodes, ad_index_nframes (ad_export_index (exp)));
    return 1;
  }
  printf ("%s: sequential read of %" PRIu64 " bytes OK, %zu frames, "
          "decoded once each (by the pass)\n", argv[optind], osize,
          ad_index_nframes (ad_export_index (exp)));
  ad_export_free (exp);
  ad_cache_free (cache);

  /* 2. EIO from below while indexing, then no more errors. */
  for (k = 1; k <= pass_reads && k <= max_runs; k++) {
    fl.fail_at = k;
    if (flaky_run (&src, &fl, orig, osize, argv[optind]) == -1)
      return 1;
  }
  fl.percent = percent;
  if (percent && flaky_run (&src, &fl, orig, osize, argv[optind]) == -1)
    return 1;
  return 0;
}
