/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: what the files of the command line tool share.
 *
 *   main.c      options, the table of modes, usage, --version
 *   source.c    opening an image: a local file, a URL (nbdkit's curl
 *               plugin run by libnbd) or an NBD URI
 *   reader.c    reading an image from start to end, frame by frame
 *   utils.c     sizes, the clock
 *   progress.c  how far a pass over the compressed image got
 *   info.c      autodecomp info
 *   prepare.c   autodecomp prepare: options, output, --verify
 *   batch.c     frames compressed in parallel, written in order
 *   write-zstd.c, write-xz.c, write-bgzf.c
 *               the output formats of prepare
 *
 * The tool knows nothing of the formats' insides beyond what lib/
 * gives every user of the library; all of it lives there.
 */
#ifndef AUTODECOMP_TOOL_H
#define AUTODECOMP_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <pthread.h>
#include <sys/types.h>

#include "export.h"

#define PROGRAM "autodecomp"
#define MiB (1024 * 1024ULL)

/* Decoded data the tool keeps in memory while it reads an image. */
#define TOOL_CACHE (64 * MiB)

/* Bytes handed from the reader to a writer at a time. */
#define PIECE (1 * MiB)

/* The modes (main.c dispatches argv[1] to one of them).  Each gets
 * argc and argv from its own name on, and returns the exit status: 0,
 * 1 (it failed) or 2 (bad usage).
 */
extern int do_info (int argc, char *argv[]);
extern int do_index (int argc, char *argv[]);
extern int do_prepare (int argc, char *argv[]);

/* source.c: an image opened as the filter opens it. */
struct image {
  const char *path;
  int fd;                       /* A local file, */
  struct nbd_handle *nbd;       /* or a URL, read over NBD (libnbd). */
  struct ad_source src;
  struct ad_cache *cache;
  struct ad_export *exp;
  struct ad_pool *pool;         /* Decode workers (image_open), or NULL. */
  double open_seconds;
};

/* progress.c: a source that counts the compressed bytes read through
 * it, and shows how far the reads got on stderr (see progress.c).
 */
struct progress {
  struct ad_source src;         /* Read this; */
  struct ad_source *inner;      /* it reads this. */
  const char *what;             /* The image, as the line names it. */
  bool tty;                     /* stderr is a terminal. */
  double interval;              /* Seconds between two updates. */
  double start, last;           /* When it began, and last showed. */
  uint64_t done;                /* Bytes read so far, */
  uint64_t shown;               /* as the last line showed them. */
  pthread_mutex_t lock;         /* Taken to show. */
};

extern void progress_init (struct progress *p, struct ad_source *inner,
                           const char *what);
/* Show the last update and end its line. */
extern void progress_end (struct progress *p);

/* Open path (a file, a URL or an NBD URI), detect its format and build
 * its index, to read it (with decode workers, see reader.c).  Returns
 * 0, or -1 after printing the error.
 */
extern int image_open (struct image *im, const char *path);
/* The same, to look at its index (without decode workers), loading (or
 * writing) the persisted index at index_path (see lib/persist.h), and
 * with progress, showing how far the reads of the open got (see
 * progress.c).
 */
extern int image_open_indexed (struct image *im, const char *path,
                               const char *index_path, bool progress);
extern void image_close (struct image *im);

/* reader.c: reading an image from start to end. */
struct reader {
  struct image *im;
  uint64_t off;
  struct ad_frame_reader *fr;   /* Streaming a large frame, or NULL. */
  struct ad_frame frame;
  size_t frame_no;
  struct ad_reader *seq;        /* So the workers decode ahead (or
                                   NULL: out of memory). */
  bool progress;                /* Show how far it got, on stderr. */
  double last;
};

extern void reader_init (struct reader *r, struct image *im);
extern void reader_end (struct reader *r);
/* The next bytes (at most cap): how many (> 0), 0 at the end, or -1
 * after printing the error.
 */
extern ssize_t reader_next (struct reader *r, char *buf, size_t cap);
/* Exactly count bytes (fewer only at the end), or -1. */
extern ssize_t reader_fill (struct reader *r, char *buf, size_t count);
/* "WHAT IMAGE: N% of SIZE" on stderr, at most once a second. */
extern void reader_progress (struct reader *r, const char *what);

/* prepare.c: the options of prepare, as the writers see them. */
struct out_format;

struct prepare_opts {
  const struct out_format *format;
  uint64_t frame;               /* Uncompressed bytes per frame. */
  int level;                    /* -1: the format's default. */
  unsigned threads;
  bool force, verify, quiet;
};

/* Output, written in order; the file is removed if anything fails. */
struct output {
  const char *path;
  int fd;
  uint64_t written;
};

/* Write all of buf, or print the error and return -1. */
extern int output_write (struct output *o, const void *buf, size_t len);

/* An output format of prepare: one file write-NAME.c each, listed in
 * prepare.c's table of formats.
 */
struct out_format {
  const char *name;             /* As --format takes it, */
  const char *alias;            /* and another name it takes, or NULL. */

  /* Fill in the format's defaults of po->frame and po->level, and
   * check them.  Returns -1 after printing why they do not fit.
   */
  int (*settle) (struct prepare_opts *po);

  /* Write the image read by r to o, all of it and in the format.
   * Returns 0, or -1 after printing the error.
   */
  int (*write) (struct reader *r, struct output *o,
                const struct prepare_opts *po);
};

extern const struct out_format out_zstd, out_xz, out_bgzf;

/* batch.c: frames compressed in parallel, in batches, and written in
 * order (for formats whose frames are independent of each other: zstd
 * frames, BGZF members).
 */
struct batch;

/* Compress in[0, in_len) into out (room for the batch's bound), using
 * and creating as needed b->ctx[worker].  Returns 0 or -1.
 */
typedef int batch_compress_fn (struct batch *b, unsigned worker,
                               const char *in, size_t in_len, char *out,
                               size_t *out_len);

struct batch_ops {
  batch_compress_fn *compress;
  /* Optional: called in order after each frame is written, with the
   * frame and the input size it holds.  Returns 0 or -1 after printing
   * the error.
   */
  int (*written) (struct batch *b, const char *frame, size_t len,
                  size_t in_len);
  void (*ctx_free) (void *ctx); /* A worker's context. */
};

struct batch {
  const struct batch_ops *ops;
  void *opaque;                 /* The writer's own. */
  size_t frame, bound, n, cap;
  char *in, *out;               /* cap frames each. */
  size_t *in_len, *out_len;
  int *result;
  unsigned threads;
  void **ctx;                   /* Per worker. */
  int level;
};

/* Compress everything r reads, in frames of frame bytes whose output
 * is at most bound bytes each, and write the frames to o.  Returns 0,
 * or -1 after printing the error.
 */
extern int batch_write (struct reader *r, struct output *o,
                        const struct prepare_opts *po,
                        const struct batch_ops *ops, size_t frame,
                        size_t bound, void *opaque);

/* utils.c */
extern double now (void);
extern int parse_size (const char *text, uint64_t *out);
extern void print_size (FILE *fp, double bytes);

#endif /* AUTODECOMP_TOOL_H */
