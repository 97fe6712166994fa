/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: serving very large frames progressively (see spill.h).
 *
 * Each large frame has a struct spill_frame: the decoder, how far it
 * has decoded (the frontier) and a lock that one decoding reader holds
 * at a time.  Decoded bytes are written to the spill file at the
 * frame's uncompressed offset, so the file is a sparse copy of the
 * image; chunks that decode to zeros are not written at all and read
 * back as holes.  The frontier only moves after the bytes behind it are
 * in the file, so a reader that sees frontier >= its end may read the
 * file without the lock.
 *
 * If the decoder fails (corrupt data, an error from the plugin below),
 * the error is returned to the reader that needed the bytes and the
 * decoder is thrown away.  The bytes behind the frontier stay valid; a
 * later read past the frontier starts a new decoder, which decodes and
 * discards up to the frontier before it writes again.  So an error
 * below that goes away is not remembered.  An error in the data is:
 * decoding again would find it again, so it is returned at once to
 * every later read that needs the decoder to get further.
 *
 * At the end of the frame the decoder's final checks run (the content
 * checksum of a zstd frame, the check of an xz block, that nothing but
 * padding follows the frame in its range).  A read that includes the
 * frame's last byte is served only once they have passed, so a copy of
 * the image can never complete on a frame that is damaged, cut short
 * or followed by more than the index knows of.  Bytes served before
 * the decoder got there were not yet covered by those checks: it is a
 * property of one-frame images, and the man page says so.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>

#include "format-int.h"
#include "spill.h"
#include "cache.h"
#include "frame.h"

#define SPILL_CHUNK (1024 * 1024)

struct spill_frame {
  size_t frame_no;
  pthread_mutex_t lock;         /* Held while decoding. */
  struct ad_frame_reader *reader; /* NULL before the first read, or
                                   after an error. */
  uint64_t frontier;            /* Bytes in the file (atomic). */
  bool finished;                /* Frame ended and verified (atomic). */
  bool failed;                  /* The data is wrong: err says how. */
  struct ad_error err;
  char *chunk;                  /* SPILL_CHUNK bytes of scratch. */
  struct spill_frame *next;
};

struct ad_spill {
  struct ad_index *idx;
  int fd;
  pthread_mutex_t lock;         /* Protects the list of frames. */
  struct spill_frame *frames;
};

struct ad_spill *
ad_spill_new (struct ad_index *idx, struct ad_error *err)
{
  struct ad_spill *spill;
  const char *tmpdir = getenv ("TMPDIR");
  char *template = NULL;

  if (tmpdir == NULL || *tmpdir == '\0')
    tmpdir = "/var/tmp";
  spill = calloc (1, sizeof *spill);
  if (spill == NULL ||
      asprintf (&template, "%s/autodecomp-spillXXXXXX", tmpdir) == -1) {
    ad_error_set (err, ENOMEM, "spill: out of memory");
    free (spill);
    return NULL;
  }
  spill->fd = mkostemp (template, O_CLOEXEC);
  if (spill->fd == -1) {
    ad_error_set (err, errno, "spill: cannot create temporary file %s: %m",
                  template);
    free (template);
    free (spill);
    return NULL;
  }
  unlink (template);
  free (template);
  spill->idx = idx;
  pthread_mutex_init (&spill->lock, NULL);
  return spill;
}

void
ad_spill_free (struct ad_spill *spill)
{
  struct spill_frame *f, *next;

  if (spill == NULL)
    return;
  for (f = spill->frames; f; f = next) {
    next = f->next;
    ad_frame_reader_close (f->reader);
    pthread_mutex_destroy (&f->lock);
    free (f->chunk);
    free (f);
  }
  close (spill->fd);
  pthread_mutex_destroy (&spill->lock);
  free (spill);
}

static struct spill_frame *
get_frame (struct ad_spill *spill, size_t frame_no, struct ad_error *err)
{
  struct spill_frame *f;

  pthread_mutex_lock (&spill->lock);
  for (f = spill->frames; f; f = f->next)
    if (f->frame_no == frame_no)
      goto out;
  f = calloc (1, sizeof *f);
  if (f == NULL) {
    ad_error_set (err, ENOMEM, "spill: out of memory");
    goto out;
  }
  f->frame_no = frame_no;
  pthread_mutex_init (&f->lock, NULL);
  f->next = spill->frames;
  spill->frames = f;
 out:
  pthread_mutex_unlock (&spill->lock);
  return f;
}

uint64_t
ad_spill_frontier (struct ad_spill *spill, size_t frame_no)
{
  struct spill_frame *f;
  uint64_t r = 0;

  pthread_mutex_lock (&spill->lock);
  for (f = spill->frames; f; f = f->next)
    if (f->frame_no == frame_no)
      r = __atomic_load_n (&f->frontier, __ATOMIC_ACQUIRE);
  pthread_mutex_unlock (&spill->lock);
  return r;
}

uint64_t
ad_spill_total (struct ad_spill *spill)
{
  struct spill_frame *f;
  uint64_t r = 0;

  if (spill == NULL)
    return 0;
  pthread_mutex_lock (&spill->lock);
  for (f = spill->frames; f; f = f->next)
    r += __atomic_load_n (&f->frontier, __ATOMIC_ACQUIRE);
  pthread_mutex_unlock (&spill->lock);
  return r;
}

static int
write_chunk (struct ad_spill *spill, const char *buf, size_t count,
             uint64_t offset, struct ad_error *err)
{
  while (count > 0) {
    ssize_t r = pwrite (spill->fd, buf, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return ad_error_set (err, errno, "spill: write to temporary file at "
                           "offset %" PRIu64 ": %m", offset);
    }
    buf += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* Must the decoder run to serve bytes up to want?  Also when want is
 * the end of the frame and its final checks have not passed yet.
 */
static bool
need_decoding (const struct ad_frame *frame, struct spill_frame *f,
               uint64_t want)
{
  return __atomic_load_n (&f->frontier, __ATOMIC_ACQUIRE) < want ||
    (want == frame->usize &&
     !__atomic_load_n (&f->finished, __ATOMIC_ACQUIRE));
}

/* Run the decoder of f until its frontier reaches want.  Called with
 * f->lock held.
 */
static int
decode_to (struct ad_spill *spill, struct ad_source *src,
           const struct ad_frame *frame, struct spill_frame *f,
           uint64_t want, struct ad_error *err)
{
  /* Another reader may have done the work while we waited. */
  if (!need_decoding (frame, f, want))
    return 0;
  if (f->failed) {
    *err = f->err;
    return -1;
  }
  if (f->chunk == NULL) {
    f->chunk = malloc (SPILL_CHUNK);
    if (f->chunk == NULL)
      return ad_error_set (err, ENOMEM, "spill: out of memory");
  }
  if (f->reader == NULL) {
    f->reader = ad_frame_reader_open (spill->idx, frame, f->frame_no, err);
    if (f->reader == NULL)
      return -1;
    __atomic_add_fetch (&spill->idx->frames_decoded, 1, __ATOMIC_RELAXED);
  }

  while (need_decoding (frame, f, want)) {
    uint64_t decoded = ad_frame_reader_pos (f->reader);
    ssize_t r = ad_frame_reader_read (f->reader, src, f->chunk, SPILL_CHUNK,
                                      err);

    if (r == -1)
      goto fail;
    if (r == 0) {
      /* The end, and the frame's final checks passed. */
      __atomic_store_n (&f->finished, true, __ATOMIC_RELEASE);
      ad_frame_reader_close (f->reader);
      f->reader = NULL;
      break;
    }
    /* After an earlier failure, skip what is already in the file. */
    if (decoded + r > f->frontier) {
      size_t skip = f->frontier > decoded ? f->frontier - decoded : 0;
      if (!ad_is_zero (f->chunk + skip, r - skip) &&
          write_chunk (spill, f->chunk + skip, r - skip,
                       frame->uoff + decoded + skip, err) == -1)
        goto fail;
    }
    if (decoded + r > f->frontier)
      __atomic_store_n (&f->frontier, decoded + r, __ATOMIC_RELEASE);
  }
  return 0;

 fail:
  ad_frame_reader_close (f->reader);
  f->reader = NULL;
  ad_error_in_frame (err, spill->idx->ops->name, f->frame_no, frame->coff);
  if (!err->transient && err->errnum == EIO) {
    f->failed = true;
    f->err = *err;
  }
  return -1;
}

int
ad_spill_extents (struct ad_spill *spill, struct ad_source *src,
                  const struct ad_frame *frame, size_t frame_no,
                  uint64_t offset, uint64_t count, ad_spill_extent_fn *fn,
                  void *opaque, uint64_t *described, struct ad_error *err)
{
  struct spill_frame *f = get_frame (spill, frame_no, err);
  uint64_t end = offset + count, frontier, pos;
  off_t file_end;

  *described = offset;
  if (f == NULL)
    return -1;
  frontier = __atomic_load_n (&f->frontier, __ATOMIC_ACQUIRE);
  if (frontier < end && offset <= frontier + SPILL_EXTENTS_NEAR) {
    uint64_t want = offset + SPILL_EXTENTS_STEP < end
      ? offset + SPILL_EXTENTS_STEP : end;
    int r;

    pthread_mutex_lock (&f->lock);
    r = decode_to (spill, src, frame, f, want, err);
    pthread_mutex_unlock (&f->lock);
    if (r == -1)
      return -1;
    frontier = __atomic_load_n (&f->frontier, __ATOMIC_ACQUIRE);
  }
  if (frontier <= offset)
    return 0;
  if (end > frontier)
    end = frontier;

  /* Runs of data and holes in the file, in image offsets; past the
   * file's end (zero chunks at the end are not written) it is zeros.
   * Where the file system cannot tell holes, lseek says data.
   */
  file_end = lseek (spill->fd, 0, SEEK_END);
  if (file_end == -1)
    return ad_error_set (err, errno, "spill: lseek: %m");
  pos = frame->uoff + offset;
  while (pos < frame->uoff + end) {
    uint64_t stop = frame->uoff + end, next;
    bool zero;
    off_t r;

    if ((off_t) pos >= file_end) {
      zero = true;
      next = stop;
    }
    else {
      r = lseek (spill->fd, pos, SEEK_DATA);
      if (r == -1 && errno == ENXIO)
        r = file_end;           /* Only a hole to the end. */
      if (r == -1)
        return ad_error_set (err, errno, "spill: lseek (SEEK_DATA): %m");
      if ((uint64_t) r > pos) {
        zero = true;
        next = r;
      }
      else {
        r = lseek (spill->fd, pos, SEEK_HOLE);
        if (r == -1)
          return ad_error_set (err, errno, "spill: lseek (SEEK_HOLE): %m");
        zero = false;
        next = r;
      }
    }
    if (next > stop)
      next = stop;
    if (next <= pos)
      break;                    /* Not expected: describe no further. */
    if (fn (opaque, pos, next - pos, zero) == -1)
      return ad_error_set (err, errno ? errno : ENOMEM,
                           "cannot record extents");
    pos = next;
    *described = pos - frame->uoff;
  }
  return 0;
}

int
ad_spill_read (struct ad_spill *spill, struct ad_source *src,
               const struct ad_frame *frame, size_t frame_no,
               void *buf, size_t count, uint64_t offset,
               struct ad_error *err)
{
  struct spill_frame *f = get_frame (spill, frame_no, err);
  uint64_t end = offset + count;
  char *p = buf;

  if (f == NULL)
    return -1;
  if (need_decoding (frame, f, end)) {
    int r;
    pthread_mutex_lock (&f->lock);
    r = decode_to (spill, src, frame, f, end, err);
    pthread_mutex_unlock (&f->lock);
    if (r == -1)
      return -1;
  }

  /* The file is sparse: holes (zero chunks not written, or past its
   * end) read back as zeros.
   */
  while (count > 0) {
    ssize_t r = pread (spill->fd, p, count, frame->uoff + offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return ad_error_set (err, errno, "spill: read temporary file: %m");
    }
    if (r == 0) {
      memset (p, 0, count);
      break;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}
