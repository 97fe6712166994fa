/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: a window on the compressed bytes.
 *
 * Every pass over compressed bytes in order reads them through one of
 * these: the decoders of a frame (their library takes the input a
 * buffer at a time), the walks that index a file at open (zstd frames,
 * BGZF members) and the bzip2 block scan.  A window covers a range
 * [start, end) of a source and holds the bytes [base, held) of it.
 * ad_window_need (w, pos, n) makes the n bytes at pos available in one
 * piece, keeping the bytes from pos to what is held, so a consumer
 * moves pos forward as it consumes and asks again when it runs short.
 *
 * Where the bytes come from, in order of preference:
 *   - in place, where the source maps the whole rest of the range
 *     (the input of a decode job is already in memory);
 *   - lent by the source, where the window may borrow (w->lend) and the
 *     source holds the bytes in memory (the fetcher's buffers): no copy.
 *     A borrowing window reads the bytes it keeps again with the rest
 *     (from the source's memory where they were lent), so it suits a
 *     consumer that keeps a few bytes (a walk that reads headers);
 *   - read into the window's own memory: the whole range in one read
 *     when it is at most AD_WINDOW_WHOLE bytes, else AD_WINDOW_CHUNK
 *     bytes a read (or w->chunk, when the user sets it).
 * A consumer may go back to any offset of the range (a decoder that
 * restarts a member's trailer): what is not held is read again.
 *
 * The own memory is one buffer, grown as needed, unless the user gives
 * buffers (w->buffers): then each read moves to a fresh buffer, and the
 * old one goes back to its owner, which may still be using it (the
 * zstd walk hands the bytes of frames it cannot size to workers).
 */
#ifndef AUTODECOMP_WINDOW_H
#define AUTODECOMP_WINDOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "source.h"
#include "error.h"

#define AD_WINDOW_WHOLE (16 * 1024 * 1024) /* Ranges read in one go. */
#define AD_WINDOW_CHUNK (8 * 1024 * 1024)  /* Reads of longer ranges. */

/* Buffers of a fixed size from elsewhere (see above). */
struct ad_window_buffers {
  void *(*get) (void *opaque, struct ad_error *err);
  void (*put) (void *opaque, void *buf);
  void *opaque;
  size_t size;
};

struct ad_window {
  struct ad_source *src;
  uint64_t start, end;          /* The range. */
  size_t chunk;                 /* Bytes a read holds, at least. */
  bool lend;                    /* Borrow the source's memory. */
  const struct ad_window_buffers *buffers; /* Or NULL: malloc. */

  const unsigned char *data;    /* The bytes [base, held) are here. */
  uint64_t base, held;
  unsigned char *buf;           /* Own memory, alloc bytes. */
  size_t alloc;
  struct ad_loan *loan;         /* data is lent, to give back. */
  bool mapped;                  /* data is the source's, in place. */
};

/* A window on [start, end) of src, holding nothing yet.  The user may
 * then set chunk, lend and buffers.
 */
extern void ad_window_init (struct ad_window *w, struct ad_source *src,
                            uint64_t start, uint64_t end);

/* Make the bytes [pos, pos + n) available, or all that is left of the
 * range when it ends first (start <= pos <= end).  Returns a pointer to
 * the byte at pos and sets *avail to the bytes held from there (at
 * least that many), or returns NULL after filling err.
 */
extern const unsigned char *ad_window_need (struct ad_window *w,
                                            uint64_t pos, size_t n,
                                            size_t *avail,
                                            struct ad_error *err);

/* The byte at pos, which must be held (base <= pos <= held). */
static inline const unsigned char *
ad_window_at (const struct ad_window *w, uint64_t pos)
{
  return w->data + (pos - w->base);
}

/* The file offset of p, a pointer into what the window holds (base
 * when it holds nothing): where a consumer's library stands.
 */
static inline uint64_t
ad_window_offset (const struct ad_window *w, const void *p)
{
  if (w->data == NULL)
    return w->base;
  return w->base + ((const unsigned char *) p - w->data);
}

/* Forget what the window holds and stand at pos (start <= pos <= end):
 * the next ad_window_need reads from there.
 */
extern void ad_window_drop (struct ad_window *w, uint64_t pos);

/* Go back (or on) to pos: keep what the window holds if that holds
 * pos, else drop it (ad_window_drop).
 */
extern void ad_window_seek (struct ad_window *w, uint64_t pos);

/* The window holds the bytes [start, start + len) at data, which stays
 * the caller's and valid while the window holds them.
 */
extern void ad_window_show (struct ad_window *w, const unsigned char *data,
                            size_t len);

/* The same, but the window takes buf (from malloc, for a window without
 * buffers) as its own memory.
 */
extern void ad_window_adopt (struct ad_window *w, unsigned char *buf,
                             size_t len);

/* Let go of what the window holds (it may be used again). */
extern void ad_window_free (struct ad_window *w);

#endif /* AUTODECOMP_WINDOW_H */
