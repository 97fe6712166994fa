/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: few, large reads of the compressed image.
 *
 * Over a web server every read of the source is a request that pays a
 * round trip, and nbdkit's curl plugin serves them one at a time, so
 * what a remote image costs is mostly the number of reads.  Decoders
 * read one frame (or one job of a few frames) at a time; a copy of an
 * image of small frames would make one request per frame.
 *
 * The fetcher sits between an export and its source.  It follows up to
 * FETCH_STREAMS streams of reads.  The reads of one reader (a
 * connection, ad_fetch_wrap_reader) are one stream, which the export
 * may tell the fetcher is sequential (it follows each reader's
 * requests).  Other reads (the walks of an open, block status) form
 * streams by where they land: a read that starts near where an earlier
 * one ended continues that stream.  A read moves its stream forward if
 * it starts after the last one that did and ends past it, near its end
 * (reading headers again does not); a stream that has moved forward
 * FETCH_STREAK times in a row is sequential too.  For a sequential
 * stream, a read that is not already in memory fetches up to
 * fetch_size bytes in one read into one of FETCH_SLOTS buffers, and
 * later reads of that range are copied from there; a read may span two
 * buffers.  A fetch starts where the buffers holding the start of the
 * read end (or at the read), and stops where the next buffer starts,
 * so no byte is held or read twice while it is held, and where another
 * sequential stream began (nbdcopy gives each connection its own part
 * of the image: what lies past its start, that connection reads).  So
 * a sequential reader makes one read per fetch_size bytes, while a
 * random reader reads exactly what it asked for: one frame (the export
 * may also call a reader's first read of a new run sequential:
 * export_fetches_run).  Reads of at least half of fetch_size are large
 * already and go straight to the source.
 *
 * Where the export tells (horizon), a reader's fetches stop where the
 * frames end that it will read if its run of reads goes on (for a
 * copy, eight times as long again, and at least two read-ahead windows
 * past the read; for a guest, as long again and at most a few MiB:
 * export_fetch_horizon, BULK_DEPTH and BULK_RUN), but read at least
 * FETCH_MIN (about what a round trip costs at a web server's rate) and
 * at most fetch_size.  A short run (a file that a booting guest reads)
 * then fetches a few frames ahead, and its reads never wait for a long
 * fetch to end, while a copy soon fetches whole buffers.
 *
 * A sequential reader also fetches ahead (ad_fetch_ahead, called by the
 * export's read-ahead once it has started its decodes): when less than
 * half a fetch of its stream's bytes is left in the buffers and its
 * horizon is past them, the next fetch is made then, into a buffer that
 * nobody is about to read, so that over a slow link the next bytes
 * arrive while the decoders work.
 *
 * The buffers are allocated on first use, each as large as its fetch
 * (rounded up to a power of two times FETCH_MIN), counted against the
 * frame cache (ad_cache_reserve) so that what the process holds stays
 * within the cache size: together at most FETCH_BIG times fetch_size
 * and a quarter of the cache (fewer, then smaller ones), and shared by
 * every reader of the export.  A copy's fetches hold a few whole
 * buffers; a guest's short ones up to FETCH_SLOTS, whose bytes its
 * later reads nearby may find (the least recently used are freed to
 * make room, unless one that fits can be taken instead).  The reads of
 * an open, which pass once (a zstd frame walk), go round two or three
 * buffers rather than mapping new ones.  A fetch that fails (the bytes
 * past what was asked may be unreadable) is retried as the exact read,
 * whose error is the one reported.
 */
#ifndef AUTODECOMP_FETCH_H
#define AUTODECOMP_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "source.h"
#include "cache.h"

#define AD_DEFAULT_FETCH_SIZE (16 * 1024 * 1024ULL)

struct ad_fetch;

/* A fetcher of fetch_size-byte reads (> 0), its buffers counted
 * against cache (may be NULL).
 */
extern struct ad_fetch *ad_fetch_new (size_t fetch_size,
                                      struct ad_cache *cache);
extern void ad_fetch_free (struct ad_fetch *f);

/* A source that reads inner through f, valid while both live.  Each
 * caller (a connection) wraps its own source; the fetcher is shared.
 */
struct ad_fetch_source {
  struct ad_source src;
  struct ad_fetch *f;
  struct ad_source *inner;
  const void *reader;           /* Whose reads (NULL: anyone's). */
  bool sequential;              /* Known to be (else judged by its stream). */
  uint64_t horizon;             /* Where the reader's fetches stop */
                                /* (UINT64_MAX: after fetch_size). */
  struct ad_fetch_stream *stream; /* Of the last read, if sequential. */
  uint64_t born;                /* When that stream began (its tick). */
};

/* Wrap inner in fs and return the source to read: &fs->src, or inner
 * itself when f is NULL.  The reads are judged sequential by their
 * stream's streak.
 */
extern struct ad_source *ad_fetch_wrap (struct ad_fetch_source *fs,
                                        struct ad_fetch *f,
                                        struct ad_source *inner);

/* The same for the reads of one reader (a connection), which the
 * caller may know to be sequential.  Its reads are one stream, which
 * begins again only where a read lands far from its end.
 */
extern struct ad_source *ad_fetch_wrap_reader (struct ad_fetch_source *fs,
                                               struct ad_fetch *f,
                                               struct ad_source *inner,
                                               const void *reader,
                                               bool sequential);

/* Forget the stream of a reader that is gone. */
extern void ad_fetch_forget (struct ad_fetch *f, const void *reader);

/* If src is a fetcher's source (ad_fetch_wrap) whose last read was
 * part of a sequential stream, that stream has not begun again since
 * (its reader's next run, elsewhere, which src's horizon is not for),
 * and it has less than half a fetch of its bytes left in the buffers,
 * fetch the next bytes now.
 */
extern void ad_fetch_ahead (struct ad_source *src);

/* Counters, for debugging and tests: reads served from the buffers,
 * fetches made, and how many of those were made ahead.
 */
extern void ad_fetch_stats (struct ad_fetch *f, uint64_t *hits,
                            uint64_t *fetches, uint64_t *ahead);

#endif /* AUTODECOMP_FETCH_H */
