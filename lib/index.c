/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the seek index (see format.h and format-int.h).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "format-int.h"
#include "fetch.h"
#include "persist.h"
#include "frame.h"

void
ad_options_init (struct ad_options *opts)
{
  memset (opts, 0, sizeof *opts);
  opts->max_frame = AD_DEFAULT_MAX_FRAME;
  opts->gzip_span = AD_DEFAULT_GZIP_SPAN;
  opts->threads = 0;
  opts->gzip_trust_isize = true;
  opts->fetch_size = AD_DEFAULT_FETCH_SIZE;
}

static const struct ad_format_ops *
ops_of_format (enum ad_format format)
{
  switch (format) {
  case AD_FORMAT_GZIP: return &ad_gzip_ops;
  case AD_FORMAT_XZ: return &ad_xz_ops;
  case AD_FORMAT_BZIP2: return &ad_bzip2_ops;
  case AD_FORMAT_ZSTD: return &ad_zstd_ops;
  case AD_FORMAT_LZIP: return &ad_lzip_ops;
  default: return NULL;
  }
}

struct ad_index *
ad_index_new (enum ad_format format, const struct ad_options *opts,
              struct ad_error *err)
{
  const struct ad_format_ops *ops = ops_of_format (format);
  struct ad_index *idx;

  if (ops == NULL) {
    ad_error_set (err, EINVAL, "no index for format %s",
                  ad_format_name (format));
    return NULL;
  }
  idx = calloc (1, sizeof *idx);
  if (idx == NULL) {
    ad_error_set (err, errno, "calloc: %m");
    return NULL;
  }
  idx->format = format;
  idx->ops = ops;
  idx->opts = *opts;
  pthread_mutex_init (&idx->lock, NULL);
  pthread_mutex_init (&idx->advance_lock, NULL);
  return idx;
}

struct ad_index *
ad_index_open (enum ad_format format, struct ad_source *src,
               const struct ad_options *opts, struct ad_error *err)
{
  struct ad_index *idx = ad_index_new (format, opts, err);
  const struct ad_format_ops *ops;

  if (idx == NULL)
    return NULL;
  ops = idx->ops;
  switch (ad_index_load (idx, src, err)) {
  case -1:
    ad_error_in_format (err, ops->name, NULL);
    ad_index_free (idx);
    return NULL;
  case 1:
    idx->index_from = ad_index_complete (idx) ? "a persisted index file"
      : "a persisted partial index file, then checkpoints made as a lazy "
      "pass goes on from its end";
    return idx;
  }
  if (ops->open (idx, src, err) == -1) {
    ad_error_in_format (err, ops->name, NULL);
    ad_index_free (idx);
    return NULL;
  }
  if (idx->indexed < idx->size && ops->advance == NULL) {
    ad_error_set (err, EIO, "%s: index covers %" PRIu64 " of %" PRIu64
                  " bytes", ops->name, idx->indexed, idx->size);
    ad_index_free (idx);
    return NULL;
  }
  /* Keep it for next time (replacing a file that was refused). */
  ad_index_save (idx, src);
  return idx;
}

void
ad_index_free (struct ad_index *idx)
{
  if (idx == NULL)
    return;
  if (idx->ops && idx->ops->close)
    idx->ops->close (idx);
  free (idx->frames);
  pthread_mutex_destroy (&idx->lock);
  pthread_mutex_destroy (&idx->advance_lock);
  free (idx);
}

bool
ad_frame_key_own_bytes (struct ad_index *idx __attribute__ ((unused)),
                        const struct ad_frame *frame __attribute__ ((unused)),
                        size_t frame_no __attribute__ ((unused)),
                        uint64_t key[2] __attribute__ ((unused)))
{
  return true;
}

bool
ad_index_frame_key (struct ad_index *idx, const struct ad_frame *frame,
                    size_t frame_no, uint64_t key[2])
{
  key[0] = key[1] = 0;
  return idx->ops->frame_key != NULL &&
    idx->ops->frame_key (idx, frame, frame_no, key);
}

int
ad_index_append_frame (struct ad_index *idx, const struct ad_frame *frame,
                       struct ad_error *err)
{
  int r = 0;

  pthread_mutex_lock (&idx->lock);
  if (frame->uoff != idx->indexed) {
    r = ad_error_set (err, EIO, "%s: frame %zu starts at uncompressed "
                      "offset %" PRIu64 ", expected %" PRIu64,
                      idx->ops->name, idx->nframes, frame->uoff,
                      idx->indexed);
    goto out;
  }
  if (frame->usize > idx->size - idx->indexed) {
    r = ad_error_set (err, EIO, "%s: frame %zu (%" PRIu64 " bytes at "
                      "compressed offset %" PRIu64 ") extends past the "
                      "image size %" PRIu64, idx->ops->name, idx->nframes,
                      frame->usize, frame->coff, idx->size);
    goto out;
  }
  if (idx->nframes == idx->frames_alloc) {
    size_t n = idx->frames_alloc ? idx->frames_alloc * 2 : 64;
    struct ad_frame *p = realloc (idx->frames, n * sizeof *p);
    if (p == NULL) {
      r = ad_error_set (err, ENOMEM, "%s: realloc: %m", idx->ops->name);
      goto out;
    }
    idx->frames = p;
    idx->frames_alloc = n;
  }
  idx->frames[idx->nframes++] = *frame;
  idx->indexed += frame->usize;
 out:
  pthread_mutex_unlock (&idx->lock);
  return r;
}

/* Binary search; call with idx->lock held and offset < idx->indexed. */
static size_t
find_locked (struct ad_index *idx, uint64_t offset)
{
  size_t lo = 0, hi = idx->nframes;

  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (idx->frames[mid].uoff <= offset)
      lo = mid;
    else
      hi = mid;
  }
  /* Skip empty frames that share the offset. */
  while (lo + 1 < idx->nframes && idx->frames[lo].usize == 0)
    lo++;
  return lo;
}

int
ad_index_find (struct ad_index *idx, struct ad_source *src, uint64_t offset,
               struct ad_frame *frame, size_t *frame_no, ad_emit_fn *emit,
               void *emit_opaque, struct ad_error *err)
{
  size_t i;

  if (offset >= idx->size)
    return ad_error_set (err, EINVAL, "%s: offset %" PRIu64 " is past the "
                         "end of the image (%" PRIu64 " bytes)",
                         idx->ops->name, offset, idx->size);

  pthread_mutex_lock (&idx->lock);
  if (offset >= idx->indexed) {
    pthread_mutex_unlock (&idx->lock);
    pthread_mutex_lock (&idx->advance_lock);
    /* Someone else may have advanced while we waited. */
    pthread_mutex_lock (&idx->lock);
    if (offset >= idx->indexed) {
      int r;
      pthread_mutex_unlock (&idx->lock);
      r = idx->ops->advance (idx, src, offset, emit, emit_opaque, err);
      if (r == -1)
        ad_error_in_format (err, idx->ops->name, "indexing pass");
      pthread_mutex_lock (&idx->lock);
      if (r == 0 && offset >= idx->indexed)
        r = ad_error_set (err, EIO, "%s: index stops at %" PRIu64
                          " before offset %" PRIu64, idx->ops->name,
                          idx->indexed, offset);
      if (r == -1) {
        pthread_mutex_unlock (&idx->lock);
        pthread_mutex_unlock (&idx->advance_lock);
        return -1;
      }
    }
    pthread_mutex_unlock (&idx->advance_lock);
  }
  i = find_locked (idx, offset);
  *frame = idx->frames[i];
  *frame_no = i;
  pthread_mutex_unlock (&idx->lock);
  return 0;
}

size_t
ad_index_nframes (struct ad_index *idx)
{
  size_t n;

  pthread_mutex_lock (&idx->lock);
  n = idx->nframes;
  pthread_mutex_unlock (&idx->lock);
  return n;
}

bool
ad_index_complete (struct ad_index *idx)
{
  bool r;

  pthread_mutex_lock (&idx->lock);
  r = idx->indexed == idx->size;
  pthread_mutex_unlock (&idx->lock);
  return r;
}

void
ad_index_get_frame (struct ad_index *idx, size_t frame_no,
                    struct ad_frame *frame)
{
  pthread_mutex_lock (&idx->lock);
  *frame = idx->frames[frame_no];
  pthread_mutex_unlock (&idx->lock);
}

uint64_t
ad_index_indexed (struct ad_index *idx)
{
  uint64_t r;

  pthread_mutex_lock (&idx->lock);
  r = idx->indexed;
  pthread_mutex_unlock (&idx->lock);
  return r;
}

enum ad_format
ad_index_format (const struct ad_index *idx)
{
  return idx->format;
}

uint64_t
ad_index_size (const struct ad_index *idx)
{
  return idx->size;
}

const char *
ad_index_from (const struct ad_index *idx)
{
  return idx->index_from;
}

bool
ad_index_sizes_unchecked (const struct ad_index *idx)
{
  return idx->sizes_unchecked;
}

bool
ad_index_loaded (const struct ad_index *idx)
{
  return idx->index_loaded;
}

bool
ad_index_refused (const struct ad_index *idx)
{
  return idx->index_refused;
}

void
ad_index_note (struct ad_index *idx, char *note, size_t len)
{
  pthread_mutex_lock (&idx->advance_lock);
  snprintf (note, len, "%s", idx->index_note);
  pthread_mutex_unlock (&idx->advance_lock);
}

void
ad_index_get_stats (struct ad_index *idx, struct ad_index_stats *stats)
{
  pthread_mutex_lock (&idx->lock);
  stats->nframes = idx->nframes;
  stats->indexed = idx->indexed;
  pthread_mutex_unlock (&idx->lock);
  stats->frames_decoded = __atomic_load_n (&idx->frames_decoded,
                                           __ATOMIC_RELAXED);
  stats->frames_kept = idx->frames_kept;
  stats->bytes_kept = idx->bytes_kept;
}

int
ad_index_decode_frame (struct ad_index *idx, struct ad_source *src,
                       const struct ad_frame *frame, size_t frame_no,
                       void *out, struct ad_error *err)
{
  return ad_index_decode_frame_progress (idx, src, frame, frame_no, out,
                                         NULL, NULL, err);
}

/* With progress, the output is produced in steps of this size. */
#define PROGRESS_STEP (1024 * 1024)

int
ad_index_decode_frame_progress (struct ad_index *idx, struct ad_source *src,
                                const struct ad_frame *frame,
                                size_t frame_no, void *out,
                                ad_progress_fn *progress, void *opaque,
                                struct ad_error *err)
{
  struct ad_frame_reader *r;
  uint64_t done = 0;
  ssize_t n;

  if (frame->usize > idx->opts.max_frame) {
    ad_error_set (err, EFBIG, "it is %" PRIu64 " bytes, larger than "
                  "autodecomp-max-frame=%" PRIu64, frame->usize,
                  idx->opts.max_frame);
    return ad_error_in_frame (err, idx->ops->name, frame_no, frame->coff);
  }
  __atomic_add_fetch (&idx->frames_decoded, 1, __ATOMIC_RELAXED);
  r = ad_frame_reader_open (idx, frame, frame_no, err);
  if (r == NULL)
    return -1;
  do {
    uint64_t want = frame->usize - done;

    if (progress && want > PROGRESS_STEP)
      want = PROGRESS_STEP;
    n = ad_frame_reader_read (r, src, (char *) out + done,
                              want > 0 ? want : 1, err);
    if (n > 0) {
      done += n;
      if (progress)
        progress (opaque, done);
    }
  } while (n > 0);
  ad_frame_reader_close (r);
  return n == 0 ? 0 : -1;
}
