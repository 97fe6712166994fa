/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the interface every format implements, and the whole
 * seek index it fills (see format.h for what the index is).  Only the
 * library includes it; users of the index include format.h.
 *
 * Frames are decoded through a small streaming decoder (decoder_new,
 * decoder_read, decoder_free) so that the same code serves a whole
 * frame into a cache buffer and a very large frame progressively into
 * a spill file.  ad_index_decode_frame wraps it with the checks every
 * format needs: the frame decodes to exactly its declared size, never
 * more, and never more than the max-frame limit.
 */
#ifndef AUTODECOMP_FORMAT_INT_H
#define AUTODECOMP_FORMAT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>

#include "format.h"
#include "byteorder.h"

struct ad_buf;
struct ad_cursor;

struct ad_format_ops {
  enum ad_format format;
  const char *name;             /* "gzip", "xz", "bzip2", "zstd", "lzip". */

  /* Read the headers and indexes, set idx->size and append frames with
   * ad_index_append_frame: all of them, or (only if advance is set) a
   * prefix.  May decode the whole image where the format records no
   * sizes.  Must bound every size it reads against the source size and
   * idx->opts before trusting it.
   */
  int (*open) (struct ad_index *idx, struct ad_source *src,
               struct ad_error *err);

  /* Optional.  Extend the index until idx->indexed > offset (or the
   * index is complete).  Called with idx->advance_lock held.
   */
  int (*advance) (struct ad_index *idx, struct ad_source *src,
                  uint64_t offset, ad_emit_fn *emit, void *emit_opaque,
                  struct ad_error *err);

  /* Start decoding one frame.  frame is a copy of the index entry. */
  int (*decoder_new) (struct ad_index *idx, const struct ad_frame *frame,
                      size_t frame_no, void **decoder, struct ad_error *err);

  /* Produce the next bytes of the frame's output, at most count (count
   * is never 0).  Return how many were produced (> 0), 0 at the end of
   * the frame (only after every check the format carries has been
   * verified), or -1 after filling err.  Read compressed bytes from src
   * only within [coff, coff + csize) of the frame.
   */
  ssize_t (*decoder_read) (void *decoder, struct ad_source *src,
                           void *out, size_t count, struct ad_error *err);

  void (*decoder_free) (void *decoder);

  /* Optional: the persisted index (see persist.h).  save appends the
   * format's own state for the complete index to out, or returns -1
   * with *why when this index cannot be kept (it needs state that
   * cannot be trusted from a file).  load sets idx->priv from what
   * save wrote, given the frames already loaded, checking everything
   * against them and the frames against file_size, the size of the
   * compressed file (see ad_frames_tile); -1 if it does not match.
   */
  int (*save) (struct ad_index *idx, struct ad_source *src,
               struct ad_buf *out, const char **why);
  int (*load) (struct ad_index *idx, struct ad_cursor *in,
               uint64_t file_size);

  /* Free idx->priv. */
  void (*close) (struct ad_index *idx);

  /* Optional: does frame frame_no decode from its compressed bytes
   * alone?  True if what it decodes to, and whether it decodes at all,
   * depends on nothing but those bytes, its index entry (sizes, aux,
   * aux32, flags) and key[0] and key[1], values the index holds for
   * that frame (the format sets them; both are 0 when called): no
   * window or state of other frames, and no check but those.  Two such
   * frames that agree on all of it decode alike (probe_zero in
   * export-zero.c relies on it).  NULL: no frame does.
   */
  bool (*frame_key) (struct ad_index *idx, const struct ad_frame *frame,
                     size_t frame_no, uint64_t key[2]);
};

struct ad_index {
  enum ad_format format;
  const struct ad_format_ops *ops;
  struct ad_options opts;
  uint64_t size;                /* Uncompressed size: the export size. */

  /* Sorted by uoff, contiguous from 0, covering [0, indexed).  Grown
   * only by ad_index_append_frame; read with ad_index_find.
   */
  pthread_mutex_t lock;
  struct ad_frame *frames;
  size_t nframes, frames_alloc;
  uint64_t indexed;

  pthread_mutex_t advance_lock;

  /* Set by open when the frame sizes come from fields that no check
   * covers (see ad_index_sizes_unchecked in format.h).  (An xz index
   * has a CRC32; bzip2 and non-BGZF gzip sizes come from decoding.)
   */
  bool sizes_unchecked;

  /* Where open found the frames, in a few words, for tools to show
   * ("the seek table", "a pass over the whole file").
   */
  const char *index_from;

  /* What happened to the persisted index (see ad_index_note), written
   * at open and, under advance_lock, by advance.
   */
  char index_note[AD_INDEX_NOTE_SIZE];
  bool index_loaded;            /* The frames came from the file. */
  bool index_refused;           /* A file was there but not used. */
  uint64_t fingerprint;         /* Of the image (see persist.h), */
  bool has_fingerprint;         /* once computed. */

  /* Counters for debugging and tests (updated atomically). */
  uint64_t frames_decoded;
  uint64_t frames_kept;         /* Frames whose bytes open kept (see
                                   opts.keep_size), and */
  uint64_t bytes_kept;          /* their size. */

  void *priv;                   /* The format's own state. */
};

extern const struct ad_format_ops ad_gzip_ops;
extern const struct ad_format_ops ad_xz_ops;
extern const struct ad_format_ops ad_bzip2_ops;
extern const struct ad_format_ops ad_zstd_ops;
extern const struct ad_format_ops ad_lzip_ops;

/* An empty index of the given format (for ad_index_open and the
 * persisted index).
 */
extern struct ad_index *ad_index_new (enum ad_format format,
                                      const struct ad_options *opts,
                                      struct ad_error *err);

/* A frame_key for formats whose every frame decodes from its own bytes
 * and index entry, with no key: true.
 */
extern bool ad_frame_key_own_bytes (struct ad_index *idx,
                                    const struct ad_frame *frame,
                                    size_t frame_no, uint64_t key[2]);

/* ops->frame_key, or false where the format has none. */
extern bool ad_index_frame_key (struct ad_index *idx,
                                const struct ad_frame *frame,
                                size_t frame_no, uint64_t key[2]);

/* Append the next frame (for formats, in open and advance).  The frame
 * must start at idx->indexed and end within idx->size; its usize must
 * not exceed the size left.  Returns -1 with err (naming the format
 * and frame) if it does not fit, or on allocation failure.
 */
extern int ad_index_append_frame (struct ad_index *idx,
                                  const struct ad_frame *frame,
                                  struct ad_error *err);

#endif /* AUTODECOMP_FORMAT_INT_H */
