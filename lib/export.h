/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: one served image, shared by every connection.
 *
 * An export ties together what the filter (or the command line tool)
 * needs to serve an image: its detected format, its index, the shared
 * frame cache and the spill file for frames too large to hold in
 * memory.  Reads go through ad_export_pread, which splits a request at
 * frame boundaries and serves each piece from the cache (decoding the
 * frame once on a miss) or from the spill.
 *
 * The caller passes the source with every call: in nbdkit each
 * connection reads the plugin below through its own context, while the
 * index and the cache are shared.
 *
 * struct ad_export is opaque: how it serves reads is fixed at open
 * (struct ad_export_config), and its users read what it holds through
 * the functions below.  Its parts share export-int.h.
 */
#ifndef AUTODECOMP_EXPORT_H
#define AUTODECOMP_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "cache.h"
#include "pool.h"

/* Frames larger than this are decoded progressively into the spill
 * file instead of whole into memory.
 */
#define AD_LARGE_FRAME (32 * 1024 * 1024ULL)

struct ad_export;

/* How an export serves reads, fixed at open.  Every member is
 * optional: a zeroed config (or none) decodes every frame in the
 * reader's thread, when the read needs it.
 */
struct ad_export_config {
  struct ad_pool *pool;         /* Decode workers (not owned, freed
                                   after the export); NULL: decode in
                                   the reader's thread. */
  bool progressive;             /* Serve bytes of a frame decoding in
                                   memory before its check is verified. */
  uint64_t readahead;           /* Bytes decoded ahead of a sequential
                                   reader, by the pool; 0: none. */
  bool verify_offsets;          /* Where frame sizes are unchecked (see
                                   ad_index_sizes_unchecked), serve a
                                   frame only once every frame before it
                                   has decoded. */

  /* Told about every frame decoded into the cache, in the thread that
   * decoded it.
   */
  void (*on_decode) (void *opaque, size_t frame_no,
                     const struct ad_frame *frame);
  void *on_decode_opaque;
};

/* One reader (a connection): what it did last, to detect sequential
 * access, and its read-ahead.  It reads one export, and is freed
 * before that export is.  ad_reader_new returns NULL (errno set) if
 * out of memory.
 */
struct ad_reader;
extern struct ad_reader *ad_reader_new (void);
extern void ad_reader_free (struct ad_reader *reader);

/* Look ahead of reader in a thread of its own (started with its first
 * sequential read), which reads the image through bg: a source that
 * this thread uses while the reader's requests use theirs (the caller
 * makes them take turns if the image needs it), valid until
 * ad_reader_stop_background.  The reader's requests then only note
 * where they read, and never wait for what is decoded ahead of them:
 * over a slow link a booting guest's reads are answered as soon as
 * their own frames are decoded.  Without it, requests look ahead
 * themselves, through their own source.
 */
extern void ad_reader_set_background (struct ad_reader *reader,
                                      struct ad_source *bg);
/* Stop that thread (waiting for what it reads now); bg is then unused. */
extern void ad_reader_stop_background (struct ad_reader *reader);

/* Detect (format AD_FORMAT_UNKNOWN) or check the forced format, and
 * build the index.  A forced format the data does not match is an
 * error that says what was found; forcing raw always works.  config
 * may be NULL (see struct ad_export_config).
 */
extern struct ad_export *ad_export_open (struct ad_source *src,
                                         enum ad_format format,
                                         const struct ad_options *opts,
                                         struct ad_cache *cache,
                                         const struct ad_export_config *config,
                                         struct ad_error *err);
/* Free the export once the decode jobs it started have finished (the
 * caller makes sure no reader uses it any more).
 */
extern void ad_export_free (struct ad_export *exp);

/* What open found: the format (never AD_FORMAT_UNKNOWN), the size of
 * the uncompressed image, and its index (NULL when raw).
 */
extern enum ad_format ad_export_format (const struct ad_export *exp);
extern uint64_t ad_export_size (const struct ad_export *exp);
extern struct ad_index *ad_export_index (const struct ad_export *exp);

/* Read uncompressed bytes; [offset, offset + count) must be within the
 * export.  Not for raw exports (the caller reads the source directly).
 */
extern int ad_export_pread (struct ad_export *exp, struct ad_source *src,
                            void *buf, size_t count, uint64_t offset,
                            struct ad_error *err);

/* The same for a reader whose sequential reads are served ahead by
 * the decode workers (reader may be NULL).
 */
extern int ad_export_read (struct ad_export *exp, struct ad_reader *reader,
                           struct ad_source *src, void *buf, size_t count,
                           uint64_t offset, struct ad_error *err);

/* Describe the image from offset on as data or zeros: calls fn for
 * consecutive pieces starting at offset, at least one and none past
 * offset + count.  Frames known to be zeros (cached as zeros, or
 * compressed so well that decoding them into the cache to check costs
 * little: a reader that asked where the data is finds them there) are
 * zero; a large frame is described by its spill, which decodes ahead
 * for a client walking the image (see ad_spill_extents), and the
 * answer may then end where the spill has decoded to; everything else
 * is data.
 */
typedef int ad_extent_fn (void *opaque, uint64_t offset, uint64_t length,
                          bool zero);
extern int ad_export_extents (struct ad_export *exp, struct ad_source *src,
                              size_t count, uint64_t offset,
                              ad_extent_fn *fn, void *opaque,
                              struct ad_error *err);

/* Decode the frames that hold [offset, offset + count) into the cache
 * (or the spill) without copying them anywhere.
 */
extern int ad_export_prefetch (struct ad_export *exp, struct ad_source *src,
                               size_t count, uint64_t offset,
                               struct ad_error *err);

/* Find the frame holding offset (< ad_export_size), extending the
 * index if needed; frames the index decodes on the way go to the cache, as for
 * a read.  For callers that stream an image frame by frame.
 */
extern int ad_export_find (struct ad_export *exp, struct ad_source *src,
                           uint64_t offset, struct ad_frame *frame,
                           size_t *frame_no, struct ad_error *err);

/* The export's counters, for debugging and tests. */
struct ad_export_stats {
  struct ad_index_stats index;  /* The index's (zeros when raw). */
  uint64_t readahead_frames;    /* Frames decoded by read-ahead. */
  uint64_t zero_probes;         /* Frames extents probed, */
  uint64_t zero_memo_hits;      /* of them found zeros by a memo. */
  uint64_t spill_bytes;         /* Bytes decoded into the spill file. */
  bool fetcher;                 /* The reads below go through a fetcher
                                   (opts.fetch_size), which served */
  uint64_t fetch_hits;          /* this many compressed reads */
  uint64_t fetches;             /* from this many large fetches, */
  uint64_t fetches_ahead;       /* of them made ahead of the readers. */
};
extern void ad_export_get_stats (struct ad_export *exp,
                                 struct ad_export_stats *stats);

/* The largest frame in the index that holds data, or 0 if there is
 * none yet: a frame known to be all zeros is never decoded, so its
 * size does not matter to random reads.
 */
extern uint64_t ad_export_largest_frame (struct ad_export *exp);

#endif /* AUTODECOMP_EXPORT_H */
