/* autodecomp: serving very large frames progressively.
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

/* How far frame_no has been decoded, and the sum over all large
 * frames (for tests and debugging).
 */
extern uint64_t ad_spill_frontier (struct ad_spill *spill, size_t frame_no);
extern uint64_t ad_spill_total (struct ad_spill *spill);

#endif /* AUTODECOMP_SPILL_H */
