/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the persisted index.
 *
 * What a connect-time pass learns about an image (the frame table, and
 * the format's own state beside it: bzip2 block bit offsets, zstd
 * frame checksums, gzip restorable points) can be kept in a file, so
 * that a later open of the same image loads it instead of reading the
 * whole image again.  The file format is documented in
 * docs/index-format.md.
 *
 * The file is tied to the image by the image's compressed size and a
 * fingerprint (XXH64 of its first and last AD_FINGERPRINT_SPAN bytes),
 * and guarded by its own checksum.  It is not trusted: every field is
 * bounds checked, the frames must tile the image exactly and lie
 * within the file, and the format checks its own state against them.
 * A file that fails any check is refused (open then indexes the image
 * again and writes a new file).  Loading an index never makes the
 * filter serve bytes the frames' own checks would not: frames are
 * still decoded and verified as after a pass; only the work of finding
 * them is saved.  Where a frame's format carries no checksum (a zstd
 * frame written with --no-check), the index keeps a hash of the
 * frame's compressed bytes, which its decoder checks, so a changed
 * image that the fingerprint missed is still caught.
 *
 * PATH (autodecomp-index=PATH) is a file, or an existing directory
 * that holds one file per image, named by the image's size and
 * fingerprint.  Files are written to a temporary name and renamed, so
 * a reader never sees half a file.
 */
#ifndef AUTODECOMP_PERSIST_H
#define AUTODECOMP_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

#define AD_INDEX_MAGIC "ADINDEX\n"
#define AD_INDEX_VERSION 3
#define AD_FINGERPRINT_SPAN (64 * 1024)

/* Largest index file loaded (about 22 million frames). */
#define AD_INDEX_FILE_MAX (1024 * 1024 * 1024ULL)

/* A growing buffer the formats write their state into. */
struct ad_buf {
  unsigned char *data;
  size_t len, alloc;
  bool failed;                  /* An allocation failed. */
};

extern void ad_buf_put (struct ad_buf *b, const void *p, size_t n);
extern void ad_buf_put_le32 (struct ad_buf *b, uint32_t v);
extern void ad_buf_put_le64 (struct ad_buf *b, uint64_t v);

/* A cursor over the bytes a format saved, for its load: every get
 * fails (returns false, and keeps failing) once the bytes run out.
 */
struct ad_cursor {
  const unsigned char *p;
  size_t left;
  bool bad;
};

extern bool ad_cursor_get_le32 (struct ad_cursor *c, uint32_t *v);
extern bool ad_cursor_get_le64 (struct ad_cursor *c, uint64_t *v);
extern bool ad_cursor_get_u8 (struct ad_cursor *c, uint8_t *v);

/* Do the frames of idx tile the compressed file of file_size bytes:
 * the first starting at 0, each where the one before ends, the last
 * ending at file_size?  Except that, if gap is not 0, a gap of exactly
 * gap bytes may come between two frames and after the last (a format's
 * empty member, which cannot hide one with data); with AD_TILE_OVERLAP,
 * a frame's range may reach past the next one's start (a gzip span's
 * inflater reads a few bytes ahead), though never leave a gap; with
 * AD_TILE_PARTIAL, the frames may end before the file does (an index
 * built as reads go).  A loaded index must say where each frame is
 * exactly: a frame of an index file that points at another frame's
 * bytes (the frames of most formats check only themselves, so those
 * bytes decode well) or that leaves a frame out (the later ones then
 * move up) would serve the bytes of one place of the image at another.
 * The formats call it from their load with the layout they write, and
 * from their save, so that they never write a file that would be
 * refused; bzip2, whose blocks start at a bit, checks its own.
 */
#define AD_TILE_OVERLAP 1
#define AD_TILE_PARTIAL 2
extern bool ad_frames_tile (const struct ad_index *idx, uint64_t file_size,
                            uint64_t gap, unsigned flags);

/* The image's fingerprint. */
extern int ad_fingerprint (struct ad_source *src, uint64_t *fp,
                           struct ad_error *err);

/* Load the index at opts.index_path into idx (format, ops and opts
 * set, nothing else).  Returns 1 if loaded, 0 if there is none or it
 * was refused (idx->index_note says why; idx is as it was), -1 on an
 * error reading the image.
 */
extern int ad_index_load (struct ad_index *idx, struct ad_source *src,
                          struct ad_error *err);

/* Write the index idx to opts.index_path, if the format can persist
 * it (called after open, and by a format's advance as it extends the
 * index and when it completes it).  An index that advance is still
 * building is written as partial: its frames so far and what the
 * format needs to go on from their end (see docs/index-format.md).
 * Failures only set idx->index_note: the index in memory is as good as
 * ever.
 */
extern void ad_index_save (struct ad_index *idx, struct ad_source *src);

/* The same on bytes in memory (for the tool, tests and fuzzers): load
 * the index file held in data into the empty idx (name is used in
 * messages); returns 1, or 0 (refused, idx->index_note says why) or
 * -1 (the image could not be read).  ad_index_save_bytes appends the
 * file for idx (complete, or partial as above) to out; -1 (and the
 * note) if the format cannot keep it.
 */
extern int ad_index_load_bytes (struct ad_index *idx, struct ad_source *src,
                                const char *name, const unsigned char *data,
                                size_t len, struct ad_error *err);
extern int ad_index_save_bytes (struct ad_index *idx, struct ad_source *src,
                                struct ad_buf *out);

#endif /* AUTODECOMP_PERSIST_H */
