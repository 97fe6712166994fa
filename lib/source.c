/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the source of compressed bytes (see source.h).
 */

#include <config.h>

#include <stdio.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <unistd.h>

#include "source.h"

int
ad_source_read (struct ad_source *src, void *buf, size_t count,
                uint64_t offset, const void **data, struct ad_loan **loan,
                struct ad_error *err)
{
  int r;

  *data = buf;
  if (loan)
    *loan = NULL;
  if (offset > src->size || count > src->size - offset)
    return ad_error_set (err, EIO,
                         "read of %zu bytes at offset %" PRIu64
                         " is past the end of the %" PRIu64 "-byte image "
                         "(truncated?)", count, offset, src->size);
  if (count == 0)
    return 0;
  __atomic_add_fetch (&src->reads, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch (&src->bytes_read, count, __ATOMIC_RELAXED);
  if (loan && src->lend)
    r = src->lend (src->opaque, buf, count, offset, data, loan, err);
  else
    r = src->pread (src->opaque, buf, count, offset, err);
  if (r == -1) {
    err->transient = true;
    return -1;
  }
  return 0;
}

int
ad_source_pread (struct ad_source *src, void *buf, size_t count,
                 uint64_t offset, struct ad_error *err)
{
  const void *data;

  return ad_source_read (src, buf, count, offset, &data, NULL, err);
}

void
ad_loan_return (struct ad_loan *loan)
{
  if (loan)
    loan->give_back (loan);
}

const void *
ad_source_map (struct ad_source *src, uint64_t offset, size_t count)
{
  if (src->map == NULL || count == 0 ||
      offset > src->size || count > src->size - offset)
    return NULL;
  return src->map (src->opaque, offset, count);
}

static int
fd_pread (void *opaque, void *buf, size_t count, uint64_t offset,
          struct ad_error *err)
{
  int fd = (int) (intptr_t) opaque;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return ad_error_set (err, errno, "pread at offset %" PRIu64 ": %m",
                           offset);
    }
    if (r == 0)
      return ad_error_set (err, EIO, "unexpected end of file at offset %"
                           PRIu64, offset);
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

void
ad_source_init_fd (struct ad_source *src, int fd, uint64_t size)
{
  memset (src, 0, sizeof *src);
  src->pread = fd_pread;
  src->opaque = (void *) (intptr_t) fd;
  src->size = size;
}

static int
mem_pread (void *opaque, void *buf, size_t count, uint64_t offset,
           struct ad_error *err __attribute__ ((unused)))
{
  memcpy (buf, (const char *) opaque + offset, count);
  return 0;
}

static const void *
range_map (void *opaque, uint64_t offset, size_t count)
{
  struct ad_range_source *rs = opaque;

  if (offset < rs->off || offset - rs->off > rs->len ||
      count > rs->len - (offset - rs->off))
    return NULL;
  rs->used = true;
  return rs->data + (offset - rs->off);
}

static int
range_pread (void *opaque, void *buf, size_t count, uint64_t offset,
             struct ad_error *err)
{
  const struct ad_range_source *rs = opaque;
  const void *p = range_map (opaque, offset, count);

  if (p == NULL)
    return ad_error_set (err, EIO, "decoder read %zu bytes at compressed "
                         "offset %" PRIu64 ", outside its frame's %zu "
                         "bytes at %" PRIu64, count, offset, rs->len,
                         rs->off);
  memcpy (buf, p, count);
  return 0;
}

struct ad_source *
ad_source_init_range (struct ad_range_source *rs, const void *data,
                      uint64_t off, size_t len, uint64_t size)
{
  memset (rs, 0, sizeof *rs);
  rs->data = data;
  rs->off = off;
  rs->len = len;
  rs->src.pread = range_pread;
  rs->src.map = range_map;
  rs->src.opaque = rs;
  rs->src.size = size;
  return &rs->src;
}

void
ad_source_init_mem (struct ad_source *src, const void *data, size_t size)
{
  memset (src, 0, sizeof *src);
  src->pread = mem_pread;
  src->opaque = (void *) data;
  src->size = size;
}

/* The opening source: small reads near the start and the end of the
 * image (where formats keep their headers, footers and indexes) are
 * served from two windows, each read from the source once.
 */
static int
open_window_load (struct ad_source *inner, struct ad_open_window *w,
                  uint64_t off, size_t len, struct ad_error *err)
{
  if (ad_source_pread (inner, w->buf, len, off, err) == -1)
    return -1;
  w->off = off;
  w->len = len;
  return 0;
}

static bool
in_window (const struct ad_open_window *w, uint64_t offset, size_t count)
{
  return w->len > 0 && offset >= w->off && offset - w->off <= w->len &&
    count <= w->len - (offset - w->off);
}

/* Reads that miss both windows go to the source below, which may lend
 * what it holds (see ad_source_read).
 */
static int
open_read (void *opaque, void *buf, size_t count, uint64_t offset,
           const void **data, struct ad_loan **loan, struct ad_error *err)
{
  struct ad_open_source *os = opaque;
  struct ad_source *inner = os->inner;
  uint64_t size = inner->size;
  size_t n;

  /* Small reads in the first or last AD_OPEN_WINDOW bytes load that
   * window (once).
   */
  if (count <= AD_OPEN_WINDOW) {
    n = size < AD_OPEN_WINDOW ? size : AD_OPEN_WINDOW;
    if (os->head.len == 0 && offset + count <= n &&
        open_window_load (inner, &os->head, 0, n, err) == -1)
      return -1;
    if (os->tail.len == 0 && offset >= size - n &&
        open_window_load (inner, &os->tail, size - n, n, err) == -1)
      return -1;
  }
  if (in_window (&os->head, offset, count)) {
    memcpy (buf, os->head.buf + (offset - os->head.off), count);
    return 0;
  }
  if (in_window (&os->tail, offset, count)) {
    memcpy (buf, os->tail.buf + (offset - os->tail.off), count);
    return 0;
  }
  /* A read that runs into the tail window reads only what is before. */
  if (os->tail.len > 0 && offset < os->tail.off &&
      offset + count > os->tail.off &&
      offset + count <= os->tail.off + os->tail.len) {
    n = os->tail.off - offset;
    if (ad_source_pread (inner, buf, n, offset, err) == -1)
      return -1;
    memcpy ((char *) buf + n, os->tail.buf, count - n);
    return 0;
  }
  return ad_source_read (inner, buf, count, offset, data, loan, err);
}

static int
open_pread (void *opaque, void *buf, size_t count, uint64_t offset,
            struct ad_error *err)
{
  const void *data;

  return open_read (opaque, buf, count, offset, &data, NULL, err);
}

void
ad_open_source_init (struct ad_open_source *os, struct ad_source *inner)
{
  memset (os, 0, sizeof *os);
  os->inner = inner;
  os->src.pread = open_pread;
  os->src.lend = open_read;
  os->src.opaque = os;
  os->src.size = inner->size;
}
