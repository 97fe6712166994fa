/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: which frames are all zeros, for extents.
 *
 * A client that asks where the data is (nbdcopy, qemu-img convert)
 * skips what is reported as zeros.  A frame compressed very well is
 * likely to be zeros, but only decoding it proves it, so extents
 * decode such frames (probe_zero).  A disk image holds many of them:
 * the BGZF copy of the 1 GiB bench image has 6,329 members of 64 KiB
 * compressed 128 times or more, and decoding them was a fifth of the
 * CPU of copying it.
 *
 * But an encoder compresses equal input to equal bytes, and 6,314 of
 * those members are the same 105 bytes.  So the export remembers the
 * compressed bytes of a few frames that decoded to zeros (ZERO_MEMOS,
 * the least recently matched replaced), and a frame with exactly the
 * same bytes and the same index entry is zeros without a decode.  That
 * is a proof, not a guess, where the format says that the frame
 * decodes from its bytes alone (ad_index_frame_key: a BGZF member, an
 * xz block, a zstd frame with the checksum the seek table holds for
 * it); elsewhere (a gzip span, which needs its checkpoint's window;
 * bzip2) every probe decodes.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "export-int.h"

/* Frames compressed this well are decoded by extents to see whether
 * they are zeros.  The frame goes into the cache as a read would put it
 * there (a frame of zeros as a flag, without its bytes): a frame that
 * holds data is what the client that asked where the data is reads
 * next, and it then neither decodes nor reads below twice.
 */
#define ZERO_PROBE_RATIO 128

/* The most compressed bytes that a frame of zeros may have to be
 * remembered (a few frames of them, ZERO_MEMOS, per export).
 */
#define ZERO_MEMO_MAX (64 * 1024)

bool
export_probe_worth (const struct ad_frame *f)
{
  return f->usize > AD_LARGE_FRAME / 8 / 1024 && /* not tiny */
    f->usize <= AD_LARGE_FRAME &&
    f->csize <= f->usize / ZERO_PROBE_RATIO;
}

/* Do a memo and the frame agree on all that its decode depends on but
 * its bytes?
 */
static bool
same_entry (const struct zero_memo *m, const struct ad_frame *f,
            const uint64_t key[2])
{
  return m->bytes != NULL && m->frame.usize == f->usize &&
    m->frame.csize == f->csize && m->frame.aux == f->aux &&
    m->frame.aux32 == f->aux32 && m->frame.flags == f->flags &&
    m->key[0] == key[0] && m->key[1] == key[1];
}

/* Read the frame's compressed bytes into a new buffer, or NULL (the
 * probe then decodes from the source, and reports its error).
 */
static unsigned char *
read_bytes (struct ad_source *src, const struct ad_frame *f)
{
  unsigned char *bytes = malloc (f->csize > 0 ? f->csize : 1);
  struct ad_error err;

  ad_error_clear (&err);
  if (bytes && ad_source_pread (src, bytes, f->csize, f->coff, &err) == -1) {
    free (bytes);
    bytes = NULL;
  }
  return bytes;
}

/* Does a memo hold exactly these bytes for this entry?  Marks it used. */
static bool
memo_match (struct ad_export *exp, const struct ad_frame *f,
            const uint64_t key[2], const unsigned char *bytes)
{
  bool match = false;
  size_t i;

  pthread_mutex_lock (&exp->zero_lock);
  for (i = 0; i < ZERO_MEMOS && !match; i++) {
    struct zero_memo *m = &exp->zero_memo[i];

    if (same_entry (m, f, key) && memcmp (m->bytes, bytes, f->csize) == 0) {
      m->used = ++exp->zero_tick;
      match = true;
    }
  }
  pthread_mutex_unlock (&exp->zero_lock);
  return match;
}

/* Remember a frame whose bytes (taken over) decoded to zeros, in place
 * of the least recently used memo, unless a memo holds them already.
 */
static void
memo_learn (struct ad_export *exp, const struct ad_frame *f,
            const uint64_t key[2], unsigned char *bytes)
{
  struct zero_memo *lru;
  size_t i;

  if (memo_match (exp, f, key, bytes)) {
    free (bytes);
    return;
  }
  pthread_mutex_lock (&exp->zero_lock);
  lru = &exp->zero_memo[0];
  for (i = 1; i < ZERO_MEMOS; i++)
    if (exp->zero_memo[i].used < lru->used)
      lru = &exp->zero_memo[i];
  free (lru->bytes);
  lru->bytes = bytes;
  lru->frame = *f;
  lru->key[0] = key[0];
  lru->key[1] = key[1];
  lru->used = ++exp->zero_tick;
  pthread_mutex_unlock (&exp->zero_lock);
}

int
export_probe_zero (struct ad_export *exp, struct ad_source *src,
                   const struct ad_frame *frame, size_t frame_no, bool *zero,
                   struct ad_error *err)
{
  unsigned char *bytes = NULL;
  struct ad_range_source held;
  uint64_t key[2];

  *zero = false;
  if (frame->csize <= ZERO_MEMO_MAX &&
      ad_index_frame_key (exp->idx, frame, frame_no, key))
    bytes = read_bytes (src, frame);
  if (bytes && memo_match (exp, frame, key, bytes)) {
    free (bytes);
    ad_cache_insert (exp->cache, exp, frame_no, NULL, frame->usize);
    __atomic_add_fetch (&exp->zero_memo_hits, 1, __ATOMIC_RELAXED);
    *zero = true;
    return 0;
  }
  /* The decode reads the very bytes that are remembered if they are
   * zeros.  (A frame that another reader was decoding already is
   * decoded from what that reader read: then nothing is read from
   * held, and nothing is remembered.)
   */
  if (bytes)
    src = ad_source_init_range (&held, bytes, frame->coff, frame->csize,
                                src->size);
  if (export_read_range (exp, NULL, src, NULL, frame->usize, frame->uoff,
                         false, err) == -1) {
    free (bytes);
    return -1;
  }
  ad_cache_peek (exp->cache, exp, frame_no, zero);
  if (*zero && bytes && held.used)
    memo_learn (exp, frame, key, bytes);
  else
    free (bytes);
  return 0;
}

void
export_zero_init (struct ad_export *exp)
{
  pthread_mutex_init (&exp->zero_lock, NULL);
}

void
export_zero_free (struct ad_export *exp)
{
  size_t i;

  for (i = 0; i < ZERO_MEMOS; i++)
    free (exp->zero_memo[i].bytes);
  pthread_mutex_destroy (&exp->zero_lock);
}
