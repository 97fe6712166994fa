/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the frame reader.
 *
 * Every caller that decodes a frame (a whole frame into the cache, a
 * large frame progressively into the spill file, a probe for zeros,
 * the tool streaming an image) reads it through this one object, which
 * enforces the contract of format-int.h the same way for all: the frame
 * produces exactly its declared size, never a byte more; the read
 * that reaches the end runs the format's final checks (a checksum,
 * the end of the compressed range) and only then reports the end; and
 * every error names the format, the frame and its compressed offset
 * (see ad_error_in_frame).
 */
#ifndef AUTODECOMP_FRAME_H
#define AUTODECOMP_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "format.h"

struct ad_frame_reader;

/* Start reading frame frame_no (frame is a copy of its entry). */
extern struct ad_frame_reader *ad_frame_reader_open (struct ad_index *idx,
                                                     const struct ad_frame *frame,
                                                     size_t frame_no,
                                                     struct ad_error *err);

/* Read the next bytes of the frame, at most count (> 0).  Returns how
 * many (> 0) while the frame has bytes left; 0 once all of them have
 * been read and the final checks passed; -1 with err.  After -1 the
 * reader can only be closed.
 */
extern ssize_t ad_frame_reader_read (struct ad_frame_reader *r,
                                     struct ad_source *src, void *buf,
                                     size_t count, struct ad_error *err);

/* Bytes of the frame read so far. */
extern uint64_t ad_frame_reader_pos (const struct ad_frame_reader *r);

extern void ad_frame_reader_close (struct ad_frame_reader *r);

#endif /* AUTODECOMP_FRAME_H */
