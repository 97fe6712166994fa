/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: serving very large frames progressively.
 *
 * A frame too large to hold in memory (a one-block xz, a one-frame
 * zstd, what `xz` without -T and `zstd` write by default) cannot be
 * decoded at random: its bytes can only be produced in order from its
 * start.  So the first read of such a frame starts a decoder that runs
 * only as far as the read needs, and keeps what it decoded in a local
 * temporary file (sparse where the data is zero), which serves every
 * later read of the region already decoded.  A read further on resumes
 * the same decoder.  Nothing is decoded twice and the first byte does
 * not wait for the whole image.
 *
 * The spill belongs to one export.  It holds one decoder per large
 * frame, created on demand; decoders run under a per-frame lock, while
 * reads of what is already decoded go straight to the file.
 */
#ifndef AUTODECOMP_SPILL_H
#define AUTODECOMP_SPILL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

struct ad_spill;

/* The file is created in $TMPDIR (default /var/tmp) and unlinked at
 * once.
 */
extern struct ad_spill *ad_spill_new (struct ad_index *idx,
                                      struct ad_error *err);
extern void ad_spill_free (struct ad_spill *spill);

/* Read count bytes at offset (relative to the frame's start) of the
 * large frame frame_no.
 */
extern int ad_spill_read (struct ad_spill *spill, struct ad_source *src,
                          const struct ad_frame *frame, size_t frame_no,
                          void *buf, size_t count, uint64_t offset,
                          struct ad_error *err);

/* Describe [offset, offset + count) of the large frame frame_no
 * (offsets relative to its start) as data or zeros, for block status:
 * calls fn (offsets in the image) for consecutive pieces from offset,
 * as far as the frame has been decoded, and sets *described to the
 * end of what it described (offset when nothing).  A request that
 * starts at most SPILL_EXTENTS_NEAR past what is decoded first decodes
 * on to SPILL_EXTENTS_STEP past its start, so a client that walks the
 * image with block status (nbdcopy, qemu-img convert) sees its zeros
 * and decodes it in large steps; a request further on describes
 * nothing, without decoding.  Zeros are the chunks that decoded to
 * zeros (holes of the spill file), not yet covered by the frame's
 * final check, like every byte served before the decoder reaches the
 * end.
 */
#define SPILL_EXTENTS_NEAR (256 * 1024 * 1024ULL)
#define SPILL_EXTENTS_STEP (64 * 1024 * 1024ULL)
typedef int ad_spill_extent_fn (void *opaque, uint64_t offset,
                                uint64_t length, bool zero);
extern int ad_spill_extents (struct ad_spill *spill, struct ad_source *src,
                             const struct ad_frame *frame, size_t frame_no,
                             uint64_t offset, uint64_t count,
                             ad_spill_extent_fn *fn, void *opaque,
                             uint64_t *described, struct ad_error *err);

/* How far frame_no has been decoded, and the sum over all large
 * frames (for tests and debugging).
 */
extern uint64_t ad_spill_frontier (struct ad_spill *spill, size_t frame_no);
extern uint64_t ad_spill_total (struct ad_spill *spill);

#endif /* AUTODECOMP_SPILL_H */
