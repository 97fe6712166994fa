/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: offset proofs (autodecomp-verify-offsets; see export.h).
 *
 * Some formats take their frame sizes from fields that no check covers
 * (ad_index_sizes_unchecked in format.h): a damaged size shifts every frame
 * after it, whose own checks still pass.  With verify_offsets set, the
 * export records which frames have decoded once to their declared
 * size, and a read is served only once every frame before its first
 * one has, which proves where that frame starts.  A read past what is
 * proven first decodes the frames before it, in steps.
 */

#include <config.h>

#include <stdlib.h>
#include <errno.h>

#include "export-int.h"

/* Offsets proven by decoding (autodecomp-verify-offsets): a frame's
 * offset is the sum of the sizes of the frames before it, so it is
 * proven once each of them has decoded to its declared size.
 */
bool
export_needs_proof (struct ad_export *exp)
{
  return exp->config.verify_offsets && exp->idx && exp->idx->sizes_unchecked;
}

void
export_mark_decoded (struct ad_export *exp, size_t frame_no)
{
  if (!export_needs_proof (exp))
    return;
  pthread_mutex_lock (&exp->lock);
  if (exp->decoded_once == NULL) {
    /* Formats with unchecked sizes index everything at open. */
    exp->decoded_once_len = ad_index_nframes (exp->idx);
    exp->decoded_once = calloc (exp->decoded_once_len ?
                                exp->decoded_once_len : 1, 1);
  }
  if (exp->decoded_once && frame_no < exp->decoded_once_len) {
    exp->decoded_once[frame_no] = 1;
    while (exp->verified < exp->decoded_once_len &&
           exp->decoded_once[exp->verified])
      exp->verified++;
  }
  pthread_mutex_unlock (&exp->lock);
}

size_t
export_verified_frames (struct ad_export *exp)
{
  size_t v;

  pthread_mutex_lock (&exp->lock);
  v = exp->verified;
  pthread_mutex_unlock (&exp->lock);
  return v;
}

/* Decode (into the cache) every frame before frame_no that has not
 * decoded yet, in steps, so that its offset is proven.
 */
#define PROVE_STEP (32 * 1024 * 1024ULL)

int
export_prove_offset (struct ad_export *exp, struct ad_source *src,
                     size_t frame_no, struct ad_error *err)
{
  for (;;) {
    size_t v = export_verified_frames (exp);
    struct ad_frame first, target;
    uint64_t len;

    if (v >= frame_no)
      return 0;
    ad_index_get_frame (exp->idx, v, &first);
    ad_index_get_frame (exp->idx, frame_no, &target);
    len = target.uoff - first.uoff;
    if (len > PROVE_STEP)
      len = PROVE_STEP;
    if (export_read_range (exp, NULL, src, NULL, len, first.uoff, false,
                           err) == -1)
      return ad_error_prefix (err, "%s: frame %zu is served only once "
                              "every frame before it has decoded "
                              "(autodecomp-verify-offsets), and frame %zu "
                              "did not", exp->idx->ops->name, frame_no, v);
    if (export_verified_frames (exp) == v)
      return ad_error_set (err, EIO, "%s: frame %zu: the frames before it "
                           "could not all be decoded to prove its offset "
                           "(autodecomp-verify-offsets)",
                           exp->idx->ops->name, frame_no);
  }
}
