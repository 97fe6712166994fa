/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the seek index and the interface every format implements.
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
 * build all of it in open.  A format that can only learn its frames by
 * decoding (a large gzip member) builds a prefix in open and extends it
 * in advance, as far as reads need, so the first read never waits for
 * the whole image; the export size must still be known after open.
 *
 * Frames are decoded through a small streaming decoder (decoder_new,
 * decoder_read, decoder_free) so that the same code serves a whole
 * frame into a cache buffer and a very large frame progressively into
 * a spill file.  ad_index_decode_frame wraps it with the checks every
 * format needs: the frame decodes to exactly its declared size, never
 * more, and never more than the max-frame limit.
 */
#ifndef AUTODECOMP_FORMAT_H
#define AUTODECOMP_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
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
struct ad_buf;
struct ad_cursor;

/* Called by advance with frames it decoded anyway while indexing, so
 * the caller may cache them.  *data holds the frame's usize bytes, at
 * its start, in a buffer of cap bytes from ad_buffer_alloc (buffer.h).
 * The caller may copy them (they are valid only during the call), or
 * take the buffer and leave in *data another buffer of cap bytes from
 * ad_buffer_alloc, or NULL.
 */
typedef void ad_emit_fn (void *opaque, struct ad_index *idx, size_t frame_no,
                         void **data, size_t cap);

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
   * against them; -1 if it does not match.
   */
  int (*save) (struct ad_index *idx, struct ad_source *src,
               struct ad_buf *out, const char **why);
  int (*load) (struct ad_index *idx, struct ad_cursor *in);

  /* Free idx->priv. */
  void (*close) (struct ad_index *idx);
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
   * covers (BGZF ISIZE, zstd frame headers and seek tables): a damaged
   * size fails its own frame, but shifts every frame after it, whose
   * own checks still pass.  (An xz index has a CRC32; bzip2 and
   * non-BGZF gzip sizes come from decoding.)
   */
  bool sizes_unchecked;

  /* Where open found the frames, in a few words, for tools to show
   * ("the seek table", "a pass over the whole file").
   */
  const char *index_from;

  /* What happened to the persisted index (loaded, written, refused and
   * why), for the caller to show; empty if there is none.
   */
  char index_note[256];
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

/* An empty index of the given format (for ad_index_open and the
 * persisted index).
 */
extern struct ad_index *ad_index_new (enum ad_format format,
                                      const struct ad_options *opts,
                                      struct ad_error *err);

/* Append the next frame (for formats, in open and advance).  The frame
 * must start at idx->indexed and end within idx->size; its usize must
 * not exceed the size left.  Returns -1 with err (naming the format
 * and frame) if it does not fit, or on allocation failure.
 */
extern int ad_index_append_frame (struct ad_index *idx,
                                  const struct ad_frame *frame,
                                  struct ad_error *err);

/* Find the frame holding uncompressed offset (< idx->size), extending
 * the index with advance if needed.  Copies the entry to *frame and
 * its number to *frame_no.  emit may be NULL.
 */
extern int ad_index_find (struct ad_index *idx, struct ad_source *src,
                          uint64_t offset, struct ad_frame *frame,
                          size_t *frame_no, ad_emit_fn *emit,
                          void *emit_opaque, struct ad_error *err);

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

/* Portable helpers for the formats. */
static inline uint32_t
ad_le32 (const unsigned char *p)
{
  return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t) p[3] << 24);
}

static inline uint64_t
ad_le64 (const unsigned char *p)
{
  return ad_le32 (p) | ((uint64_t) ad_le32 (p + 4) << 32);
}

static inline void
ad_put_le32 (unsigned char *p, uint32_t v)
{
  p[0] = v;
  p[1] = v >> 8;
  p[2] = v >> 16;
  p[3] = v >> 24;
}

static inline uint32_t
ad_be32 (const unsigned char *p)
{
  return ((uint32_t) p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
}

#endif /* AUTODECOMP_FORMAT_H */
