/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the seek index, as its users see it.
 *
 * An image is a sequence of frames: pieces of the uncompressed image
 * that can be decoded on their own, given the compressed bytes at
 * [coff, coff + csize) and whatever the format keeps beside its frame
 * table (a gzip checkpoint snapshot, the check type of an xz stream).
 * For xz a frame is a block, for zstd a frame, for bzip2 a block, for
 * gzip a member or the span between two checkpoints of a member, for
 * lzip a member.
 *
 * The index is the sorted, contiguous table of frames.  Most formats
 * build all of it at open.  A format that can only learn its frames by
 * decoding (a large gzip member) builds a prefix at open and extends
 * it as far as reads need (ad_index_find), so the first read never
 * waits for the whole image; the image size is known after open.
 *
 * struct ad_index is opaque: its users read it through the functions
 * below, which take its locks where a field changes while it is read.
 * The formats implement the interface in format-int.h, which only the
 * library includes.
 */
#ifndef AUTODECOMP_FORMAT_H
#define AUTODECOMP_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"
#include "source.h"

/* The values are kept in persisted index files: never renumber. */
enum ad_format {
  AD_FORMAT_UNKNOWN = 0,
  AD_FORMAT_RAW = 1,
  AD_FORMAT_GZIP = 2,
  AD_FORMAT_XZ = 3,
  AD_FORMAT_BZIP2 = 4,
  AD_FORMAT_ZSTD = 5,
  AD_FORMAT_LZIP = 6,
};

struct ad_options {
  uint64_t max_frame;           /* Largest frame decoded into memory. */
  uint64_t gzip_span;           /* Output bytes between gzip checkpoints. */
  unsigned threads;             /* Workers for parallel passes (0: nproc). */
  bool gzip_trust_isize;        /* Take an ambiguous single-member ISIZE
                                   as the size (verified by the pass). */
  const char *index_path;       /* Persisted index file or directory
                                   (see persist.h), or NULL. */
  bool size_at_connect;         /* Prove at open that a size a header or
                                   trailer declares covers the whole file
                                   (else the decoder proves it when it
                                   reaches the end). */
  uint64_t fetch_size;          /* Compressed bytes read at once for a
                                   sequential reader (see fetch.h); 0:
                                   read exactly what decoders ask. */
  uint64_t keep_size;           /* Decoded bytes a sizing pass (bzip2)
                                   may keep in a temporary file for the
                                   reads after it; 0: none. */
};

/* Named in the errors of an image whose declared size the decoder
 * found wrong, as the way to size such an image at connect.
 */
#define AD_SIZE_CHECK_HINT \
  "serve it with autodecomp-size-check=connect, which sizes it at connect"


#define AD_DEFAULT_MAX_FRAME (512 * 1024 * 1024ULL)
#define AD_DEFAULT_GZIP_SPAN (1024 * 1024ULL)

/* The filter's autodecomp-keep-size (ad_options_init keeps nothing). */
#define AD_DEFAULT_KEEP_SIZE (4 * 1024 * 1024 * 1024ULL)

/* Frame flags. */
#define AD_FRAME_ZERO 1         /* Known to decode to zeros. */
#define AD_FRAME_HELD 2         /* The format holds its bytes (bzip2's
                                   keep file): its decoder reads nothing
                                   of the image. */

struct ad_frame {
  uint64_t uoff;                /* Offset of its first uncompressed byte. */
  uint64_t usize;               /* Uncompressed size (may be 0). */
  uint64_t coff;                /* First compressed byte it needs. */
  uint64_t csize;               /* Compressed bytes it needs. */
  uint64_t aux;                 /* Format's own (bit offset, checkpoint). */
  uint32_t aux32;               /* Format's own (stream number, level). */
  uint32_t flags;               /* AD_FRAME_*. */
};

struct ad_index;

/* Called by ad_index_find with frames that extending the index
 * decoded anyway, so the caller may cache them.  *data holds the
 * frame's usize bytes, at its start, in a buffer of cap bytes from
 * ad_buffer_alloc (buffer.h).  The caller may copy them (they are valid
 * only during the call), or take the buffer and leave in *data another
 * buffer of cap bytes from ad_buffer_alloc, or NULL.
 */
typedef void ad_emit_fn (void *opaque, struct ad_index *idx, size_t frame_no,
                         void **data, size_t cap);

/* Detect the format from its magic bytes.  Returns AD_FORMAT_RAW for
 * anything not recognized, AD_FORMAT_UNKNOWN (and err) if the source
 * could not be read.
 */
extern enum ad_format ad_detect (struct ad_source *src, struct ad_error *err);
extern const char *ad_format_name (enum ad_format format);
extern enum ad_format ad_format_from_name (const char *name);

extern void ad_options_init (struct ad_options *opts);

/* Open the index of a compressed (not raw) image of the given format. */
extern struct ad_index *ad_index_open (enum ad_format format,
                                       struct ad_source *src,
                                       const struct ad_options *opts,
                                       struct ad_error *err);
extern void ad_index_free (struct ad_index *idx);

/* Find the frame holding uncompressed offset (< ad_index_size),
 * extending the index if needed.  Copies the entry to *frame and
 * its number to *frame_no.  emit may be NULL.
 */
extern int ad_index_find (struct ad_index *idx, struct ad_source *src,
                          uint64_t offset, struct ad_frame *frame,
                          size_t *frame_no, ad_emit_fn *emit,
                          void *emit_opaque, struct ad_error *err);

/* What open found, which stays as it is: the format, the size of the
 * uncompressed image (the export size), where the frames came from in
 * a few words, for tools to show ("the seek table", "a pass over the
 * whole file"), and whether the frame sizes come from fields that no
 * check covers (BGZF ISIZE, zstd frame headers and seek tables, lzip
 * trailers): a damaged size fails its own frame, but shifts every
 * frame after it, whose own checks still pass.
 */
extern enum ad_format ad_index_format (const struct ad_index *idx);
extern uint64_t ad_index_size (const struct ad_index *idx);
extern const char *ad_index_from (const struct ad_index *idx);
extern bool ad_index_sizes_unchecked (const struct ad_index *idx);

/* The persisted index (see persist.h): whether the frames came from
 * its file, and whether a file was there but not used.  These stay as
 * open left them.
 */
extern bool ad_index_loaded (const struct ad_index *idx);
extern bool ad_index_refused (const struct ad_index *idx);

/* What happened to the persisted index (loaded, written, refused and
 * why), copied to note (len bytes, at least 1; AD_INDEX_NOTE_SIZE
 * holds all of it), for the caller to show; empty if there is none.
 * Extending the index may write the file again: this waits for an
 * extension in progress.
 */
#define AD_INDEX_NOTE_SIZE 256
extern void ad_index_note (struct ad_index *idx, char *note, size_t len);

/* The index's counters, for debugging and tests. */
struct ad_index_stats {
  size_t nframes;               /* Frames known now, */
  uint64_t indexed;             /* covering [0, indexed). */
  uint64_t frames_decoded;      /* Frames decoded (each time). */
  uint64_t frames_kept;         /* Frames whose bytes open kept (see */
  uint64_t bytes_kept;          /* opts.keep_size), and their size. */
};
extern void ad_index_get_stats (struct ad_index *idx,
                                struct ad_index_stats *stats);

/* Bytes covered by the frames known now (the size once complete). */
extern uint64_t ad_index_indexed (struct ad_index *idx);

/* Number of frames known now, and a copy of one of them. */
extern size_t ad_index_nframes (struct ad_index *idx);
extern bool ad_index_complete (struct ad_index *idx);
extern void ad_index_get_frame (struct ad_index *idx, size_t frame_no,
                                struct ad_frame *frame);

/* Decode one whole frame into out (frame->usize bytes), verifying that
 * it decodes to exactly that many bytes.  Refuses frames larger than
 * opts.max_frame.
 */
extern int ad_index_decode_frame (struct ad_index *idx,
                                  struct ad_source *src,
                                  const struct ad_frame *frame,
                                  size_t frame_no, void *out,
                                  struct ad_error *err);

/* The same, telling progress how many bytes of out are decoded so far
 * (they are not yet verified by the frame's check: only a return of 0
 * says that the whole frame is right).
 */
typedef void ad_progress_fn (void *opaque, uint64_t done);
extern int ad_index_decode_frame_progress (struct ad_index *idx,
                                           struct ad_source *src,
                                           const struct ad_frame *frame,
                                           size_t frame_no, void *out,
                                           ad_progress_fn *progress,
                                           void *opaque,
                                           struct ad_error *err);

#endif /* AUTODECOMP_FORMAT_H */
