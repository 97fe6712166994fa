/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the source of compressed bytes.
 *
 * The format library reads the compressed image only through this
 * small interface, so it knows nothing of nbdkit: the filter wraps the
 * plugin below, the command line tool and the unit tests wrap a file
 * descriptor, the fuzzers wrap a memory buffer.
 *
 * A source may be used from several threads at once only if its pread
 * is thread safe.  The library reads from the thread that called it;
 * where it decodes in parallel it reads compressed data first, in large
 * sequential chunks, and hands memory to worker threads.
 */
#ifndef AUTODECOMP_SOURCE_H
#define AUTODECOMP_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct ad_loan;

struct ad_source {
  /* Read exactly count bytes at offset.  Return 0, or -1 after
   * filling err.  Never called with a range outside [0, size).
   */
  int (*pread) (void *opaque, void *buf, size_t count, uint64_t offset,
                struct ad_error *err);
  void *opaque;
  uint64_t size;                /* Size of the compressed image. */

  /* Optional: the bytes [offset, offset + count) where they already
   * lie in memory that stays valid while the source lives, or NULL
   * (then pread them).  Decoders use it to read their input in place.
   */
  const void *(*map) (void *opaque, uint64_t offset, size_t count);

  /* Optional: read like pread, but where the bytes lie in the source's
   * own memory, lend them instead of copying them into buf (see
   * ad_source_read).
   */
  int (*lend) (void *opaque, void *buf, size_t count, uint64_t offset,
               const void **data, struct ad_loan **loan,
               struct ad_error *err);

  /* Statistics, updated atomically by ad_source_pread. */
  uint64_t reads;
  uint64_t bytes_read;
};

/* Bounds-checked read: a range past the end of the source is an error
 * (EIO, "truncated") rather than a call to the source.
 */
extern int ad_source_pread (struct ad_source *src, void *buf, size_t count,
                            uint64_t offset, struct ad_error *err);

/* Bytes a source lends (see ad_source_read): they stay where they are
 * until ad_loan_return, which any thread may call, even once the source
 * is gone.
 */
struct ad_loan {
  void (*give_back) (struct ad_loan *loan);
};

/* Read like ad_source_pread, except that a source which holds the bytes
 * in memory may lend them instead of copying them into buf: *data
 * points to the bytes, in buf or in the source's memory, and *loan is
 * NULL or must be given back with ad_loan_return once the caller is
 * done with them.
 */
extern int ad_source_read (struct ad_source *src, void *buf, size_t count,
                           uint64_t offset, const void **data,
                           struct ad_loan **loan, struct ad_error *err);
extern void ad_loan_return (struct ad_loan *loan);

/* The bytes [offset, offset + count) in place, if the source can map
 * them (see map above), else NULL.  Not counted as a read.
 */
extern const void *ad_source_map (struct ad_source *src, uint64_t offset,
                                  size_t count);

/* Sources over a file descriptor and over memory, for tools, tests and
 * fuzzers.  Neither owns what it wraps.
 */
extern void ad_source_init_fd (struct ad_source *src, int fd, uint64_t size);
extern void ad_source_init_mem (struct ad_source *src,
                                const void *data, size_t size);

/* A source over only the bytes [off, off + len) of an image of size
 * bytes, held at data (not owned): for a decoder given its frame's
 * compressed bytes.  Reads of them are served from data (in place
 * where the reader maps them); reads elsewhere fail with EIO.  used is
 * set once a read or a map has taken bytes from it.
 */
struct ad_range_source {
  struct ad_source src;
  const char *data;
  uint64_t off;
  size_t len;
  bool used;
};

extern struct ad_source *ad_source_init_range (struct ad_range_source *rs,
                                               const void *data,
                                               uint64_t off, size_t len,
                                               uint64_t size);

/* A source for opening an image: small reads within the first and the
 * last AD_OPEN_WINDOW bytes are served from one read of each, so that
 * detecting the format and reading its headers, footer and index cost
 * a few reads of the source below, not one per field.  Wraps inner
 * (not owned); valid as long as it lives.
 */
#define AD_OPEN_WINDOW 4096

struct ad_open_window {
  uint64_t off;
  size_t len;                   /* 0: not loaded. */
  char buf[AD_OPEN_WINDOW];
};

struct ad_open_source {
  struct ad_source src;         /* Read this. */
  struct ad_source *inner;
  struct ad_open_window head, tail;
};

extern void ad_open_source_init (struct ad_open_source *os,
                                 struct ad_source *inner);

#endif /* AUTODECOMP_SOURCE_H */
