/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the persisted index (see persist.h and
 * docs/index-format.md).
 */

#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "format-int.h"
#include "persist.h"

#define HEADER_SIZE 64
#define FRAME_SIZE 48
#define TRAILER_SIZE 8
#define FLAG_SIZES_UNCHECKED 1
#define FLAG_PARTIAL 2

/* Buffers and cursors. */

void
ad_buf_put (struct ad_buf *b, const void *p, size_t n)
{
  if (b->failed)
    return;
  if (n > b->alloc - b->len) {
    size_t alloc = b->alloc ? b->alloc : 4096;
    unsigned char *d;

    while (n > alloc - b->len) {
      if (alloc > SIZE_MAX / 2) {
        b->failed = true;
        return;
      }
      alloc *= 2;
    }
    d = realloc (b->data, alloc);
    if (d == NULL) {
      b->failed = true;
      return;
    }
    b->data = d;
    b->alloc = alloc;
  }
  memcpy (b->data + b->len, p, n);
  b->len += n;
}

void
ad_buf_put_le32 (struct ad_buf *b, uint32_t v)
{
  unsigned char p[4];

  ad_put_le32 (p, v);
  ad_buf_put (b, p, sizeof p);
}

void
ad_buf_put_le64 (struct ad_buf *b, uint64_t v)
{
  ad_buf_put_le32 (b, v);
  ad_buf_put_le32 (b, v >> 32);
}

static const unsigned char *
cursor_take (struct ad_cursor *c, size_t n)
{
  const unsigned char *p;

  if (c->bad || c->left < n) {
    c->bad = true;
    return NULL;
  }
  p = c->p;
  c->p += n;
  c->left -= n;
  return p;
}

bool
ad_cursor_get_le32 (struct ad_cursor *c, uint32_t *v)
{
  const unsigned char *p = cursor_take (c, 4);

  if (p)
    *v = ad_le32 (p);
  return p != NULL;
}

bool
ad_cursor_get_le64 (struct ad_cursor *c, uint64_t *v)
{
  const unsigned char *p = cursor_take (c, 8);

  if (p)
    *v = ad_le64 (p);
  return p != NULL;
}

bool
ad_cursor_get_u8 (struct ad_cursor *c, uint8_t *v)
{
  const unsigned char *p = cursor_take (c, 1);

  if (p)
    *v = *p;
  return p != NULL;
}

/* The fingerprint: XXH64 of the first and the last AD_FINGERPRINT_SPAN
 * bytes (the whole image when it is smaller) and of the size.
 */
int
ad_fingerprint (struct ad_source *src, uint64_t *fp, struct ad_error *err)
{
  unsigned char *buf, size[8];
  size_t n = src->size < AD_FINGERPRINT_SPAN ? src->size
    : AD_FINGERPRINT_SPAN;
  XXH64_state_t *st;
  int r = -1;

  buf = malloc (n ? n : 1);
  st = XXH64_createState ();
  if (buf == NULL || st == NULL) {
    ad_error_set (err, ENOMEM, "index: out of memory");
    goto out;
  }
  XXH64_reset (st, 0);
  if (ad_source_pread (src, buf, n, 0, err) == -1)
    goto out;
  XXH64_update (st, buf, n);
  if (ad_source_pread (src, buf, n, src->size - n, err) == -1)
    goto out;
  XXH64_update (st, buf, n);
  ad_put_le32 (size, src->size);
  ad_put_le32 (size + 4, src->size >> 32);
  XXH64_update (st, size, sizeof size);
  *fp = XXH64_digest (st);
  r = 0;
 out:
  if (st)
    XXH64_freeState (st);
  free (buf);
  return r;
}

/* The file for this image: PATH itself, or a file in the directory
 * PATH named by the image's size and fingerprint.  NULL if out of
 * memory.
 */
static char *
index_file (const char *path, uint64_t size, uint64_t fp)
{
  struct stat st;
  char *f;

  if (stat (path, &st) == 0 && S_ISDIR (st.st_mode)) {
    if (asprintf (&f, "%s/%016" PRIx64 "-%" PRIu64 ".adindex", path, fp,
                  size) == -1)
      return NULL;
    return f;
  }
  return strdup (path);
}

static void
note (struct ad_index *idx, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
note (struct ad_index *idx, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (idx->index_note, sizeof idx->index_note, fmt, ap);
  va_end (ap);
}

/* The same, after what the note already says (a refused file, when a
 * new one is written).
 */
static void
note_more (struct ad_index *idx, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
note_more (struct ad_index *idx, const char *fmt, ...)
{
  size_t len = strlen (idx->index_note);
  va_list ap;

  if (len > 0 && len + 2 < sizeof idx->index_note) {
    memcpy (idx->index_note + len, "; ", 3);
    len += 2;
  }
  else
    len = 0;
  va_start (ap, fmt);
  vsnprintf (idx->index_note + len, sizeof idx->index_note - len, fmt, ap);
  va_end (ap);
}

/* Read the whole file; NULL (and a note) if it cannot be. */
static unsigned char *
read_file (struct ad_index *idx, const char *file, size_t *len)
{
  struct stat st;
  unsigned char *data = NULL;
  size_t got = 0;
  int fd;

  fd = open (file, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    if (errno == ENOENT)
      note (idx, "no index file %s yet", file);
    else {
      note (idx, "cannot open index file %s: %m", file);
      idx->index_refused = true;
    }
    return NULL;
  }
  if (fstat (fd, &st) == -1 || !S_ISREG (st.st_mode) ||
      st.st_size < HEADER_SIZE + TRAILER_SIZE ||
      (uint64_t) st.st_size > AD_INDEX_FILE_MAX) {
    note (idx, "index file %s refused: not a regular file of a possible "
          "size", file);
    idx->index_refused = true;
    goto out;
  }
  data = malloc (st.st_size);
  if (data == NULL) {
    note (idx, "index file %s: out of memory", file);
    goto out;
  }
  while (got < (size_t) st.st_size) {
    ssize_t r = read (fd, data + got, st.st_size - got);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      note (idx, "index file %s refused: read failed", file);
      idx->index_refused = true;
      free (data);
      data = NULL;
      goto out;
    }
    got += r;
  }
  *len = got;
 out:
  close (fd);
  return data;
}

/* Check the header; fills *nframes and *priv_len.  Returns false with
 * a note.
 */
static bool
check_header (struct ad_index *idx, const char *file,
              const unsigned char *d, size_t len, struct ad_source *src,
              uint64_t fp, uint64_t *nframes, uint32_t *priv_len)
{
  uint32_t version = ad_le32 (d + 8), format = ad_le32 (d + 12);

  if (XXH64 (d, len - TRAILER_SIZE, 0) != ad_le64 (d + len - TRAILER_SIZE)) {
    note (idx, "index file %s refused: damaged (its checksum does not "
          "match)", file);
    return false;
  }
  if (memcmp (d, AD_INDEX_MAGIC, 8) != 0) {
    note (idx, "index file %s refused: not an autodecomp index", file);
    return false;
  }
  if (version != AD_INDEX_VERSION) {
    note (idx, "index file %s refused: format version %" PRIu32 ", this "
          "build reads version %d", file, version, AD_INDEX_VERSION);
    return false;
  }
  if (format != (uint32_t) idx->format || ad_le64 (d + 16) != src->size ||
      ad_le64 (d + 24) != fp) {
    note (idx, "index file %s refused: it was made for another image (or "
          "the image has changed)", file);
    return false;
  }
  *nframes = ad_le64 (d + 40);
  *priv_len = ad_le32 (d + 52);
  if (*nframes > (len - HEADER_SIZE - TRAILER_SIZE) / FRAME_SIZE ||
      HEADER_SIZE + *nframes * FRAME_SIZE + *priv_len + TRAILER_SIZE != len) {
    note (idx, "index file %s refused: its parts do not add up to its "
          "size", file);
    return false;
  }
  return true;
}

/* Append the frames, checking that they tile [0, size) and lie within
 * the compressed file.
 */
static bool
load_frames (struct ad_index *idx, const char *file, const unsigned char *p,
             uint64_t nframes, bool partial, struct ad_source *src)
{
  uint64_t i, prev_coff = 0;
  struct ad_error e;

  for (i = 0; i < nframes; i++, p += FRAME_SIZE) {
    struct ad_frame f = {
      .uoff = ad_le64 (p), .usize = ad_le64 (p + 8),
      .coff = ad_le64 (p + 16), .csize = ad_le64 (p + 24),
      .aux = ad_le64 (p + 32), .aux32 = ad_le32 (p + 40),
      /* A frame said to be zeros would never be decoded: not taken
       * from a file (such frames are found again by probing).
       */
      .flags = 0,
    };
    if (f.usize == 0 || f.csize == 0 || f.coff > src->size ||
        f.csize > src->size - f.coff ||
        ad_index_append_frame (idx, &f, &e) == -1) {
      note (idx, "index file %s refused: frame %" PRIu64 " does not fit "
            "the image", file, i);
      return false;
    }
    /* Frames start in the compressed file in their order too (see
     * ad_frames_tile for the formats' own, exact checks).
     */
    if (i > 0 && f.coff <= prev_coff) {
      note (idx, "index file %s refused: frame %" PRIu64 " (compressed "
            "offset %" PRIu64 ") does not follow frame %" PRIu64
            " in the image", file, i, f.coff, i - 1);
      return false;
    }
    prev_coff = f.coff;
  }
  if (partial ? idx->indexed == 0 || idx->indexed >= idx->size
      : idx->indexed != idx->size) {
    note (idx, "index file %s refused: its frames cover %" PRIu64 " of "
          "%" PRIu64 " bytes%s", file, idx->indexed, idx->size,
          partial ? " (a partial index covers some but not all)" : "");
    return false;
  }
  return true;
}

bool
ad_frames_tile (const struct ad_index *idx, uint64_t file_size,
                uint64_t gap, unsigned flags)
{
  uint64_t end = 0;
  size_t i;

  for (i = 0; i < idx->nframes; i++) {
    const struct ad_frame *f = &idx->frames[i];
    bool follows = f->coff == end ||
      (i > 0 && (flags & AD_TILE_OVERLAP) && f->coff < end) ||
      (i > 0 && gap > 0 && f->coff > end && f->coff - end == gap);

    if (!follows || f->coff > file_size || f->csize > file_size - f->coff)
      return false;
    if (f->coff + f->csize > end)
      end = f->coff + f->csize;
  }
  return end == file_size || (flags & AD_TILE_PARTIAL) ||
    (gap > 0 && file_size - end == gap);
}

static void
unload (struct ad_index *idx)
{
  if (idx->ops->close)
    idx->ops->close (idx);
  pthread_mutex_lock (&idx->lock);
  free (idx->frames);
  idx->frames = NULL;
  idx->nframes = idx->frames_alloc = 0;
  idx->indexed = idx->size = 0;
  pthread_mutex_unlock (&idx->lock);
}

/* Make sure idx->fingerprint is set. */
static int
get_fingerprint (struct ad_index *idx, struct ad_source *src,
                 struct ad_error *err)
{
  if (!idx->has_fingerprint) {
    if (ad_fingerprint (src, &idx->fingerprint, err) == -1)
      return -1;
    idx->has_fingerprint = true;
  }
  return 0;
}

int
ad_index_load_bytes (struct ad_index *idx, struct ad_source *src,
                     const char *name, const unsigned char *d, size_t len,
                     struct ad_error *err)
{
  uint64_t nframes;
  uint32_t priv_len;
  bool partial;

  if (idx->ops->load == NULL)
    return 0;
  if (get_fingerprint (idx, src, err) == -1)
    return -1;
  idx->index_refused = true;
  if (len < HEADER_SIZE + TRAILER_SIZE) {
    note (idx, "index file %s refused: too short (%zu bytes)", name, len);
    return 0;
  }
  if (!check_header (idx, name, d, len, src, idx->fingerprint, &nframes,
                     &priv_len))
    return 0;
  idx->size = ad_le64 (d + 32);
  idx->sizes_unchecked = ad_le32 (d + 48) & FLAG_SIZES_UNCHECKED;
  partial = ad_le32 (d + 48) & FLAG_PARTIAL;
  if (partial && idx->ops->advance == NULL) {
    note (idx, "index file %s refused: it is partial, and the %s index "
          "is not built as reads go", name, idx->ops->name);
    idx->size = 0;
    return 0;
  }
  if (idx->size > INT64_MAX) {
    note (idx, "index file %s refused: image size out of range", name);
    idx->size = 0;
    return 0;
  }
  if (!load_frames (idx, name, d + HEADER_SIZE, nframes, partial, src)) {
    unload (idx);
    return 0;
  }
  {
    struct ad_cursor c = {
      .p = d + HEADER_SIZE + nframes * FRAME_SIZE, .left = priv_len,
    };
    if (idx->ops->load (idx, &c, src->size) == -1 || c.bad || c.left != 0) {
      note (idx, "index file %s refused: the %s state in it does not "
            "match its frames", name, idx->ops->name);
      unload (idx);
      return 0;
    }
  }
  if (partial)
    note (idx, "loaded from %s (partial: %" PRIu64 " of %" PRIu64 " bytes; "
          "the pass goes on from there)", name, idx->indexed, idx->size);
  else
    note (idx, "loaded from %s", name);
  idx->index_refused = false;
  idx->index_loaded = true;
  return 1;
}

int
ad_index_load (struct ad_index *idx, struct ad_source *src,
               struct ad_error *err)
{
  const char *path = idx->opts.index_path;
  unsigned char *d;
  char *file;
  size_t len;
  int r = 0;

  if (path == NULL || idx->ops->load == NULL)
    return 0;
  if (get_fingerprint (idx, src, err) == -1)
    return -1;
  file = index_file (path, src->size, idx->fingerprint);
  if (file == NULL)
    return ad_error_set (err, ENOMEM, "index: out of memory");
  d = read_file (idx, file, &len);
  if (d)
    r = ad_index_load_bytes (idx, src, file, d, len, err);
  free (d);
  free (file);
  return r;
}

/* Write data to file through a temporary file and a rename. */
static void
write_atomically (struct ad_index *idx, const char *file,
                  const unsigned char *data, size_t len)
{
  char *tmp;
  size_t done = 0;
  int fd;

  if (asprintf (&tmp, "%s.tmpXXXXXX", file) == -1) {
    note_more (idx, "cannot write index file %s: out of memory", file);
    return;
  }
  fd = mkostemp (tmp, O_CLOEXEC);
  if (fd == -1) {
    note_more (idx, "cannot write index file %s: %m", file);
    free (tmp);
    return;
  }
  while (done < len) {
    ssize_t r = write (fd, data + done, len - done);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    done += r;
  }
  if (done < len || fchmod (fd, 0644) == -1 || close (fd) == -1 ||
      rename (tmp, file) == -1) {
    note_more (idx, "cannot write index file %s: %m", file);
    if (done < len)
      close (fd);
    unlink (tmp);
  }
  else if (idx->indexed == idx->size)
    /* (A partial write, one of several as the index grows, says
     * nothing.)
     */
    note_more (idx, "written to %s", file);
  free (tmp);
}

int
ad_index_save_bytes (struct ad_index *idx, struct ad_source *src,
                     struct ad_buf *b)
{
  const char *why = NULL;
  struct ad_error e;
  size_t i, start = b->len, priv_at;

  if (idx->ops->save == NULL) {
    note_more (idx, "not written: the %s format's own index is read in a "
               "few reads", idx->ops->name);
    return -1;
  }
  if (idx->indexed != idx->size &&
      (idx->ops->advance == NULL || idx->nframes == 0)) {
    note_more (idx, "not written yet: the index is built as reads need "
               "it, and written as they extend it");
    return -1;
  }
  if (get_fingerprint (idx, src, &e) == -1) {
    note_more (idx, "not written: %s", e.msg);
    return -1;
  }
  ad_buf_put (b, AD_INDEX_MAGIC, 8);
  ad_buf_put_le32 (b, AD_INDEX_VERSION);
  ad_buf_put_le32 (b, idx->format);
  ad_buf_put_le64 (b, src->size);
  ad_buf_put_le64 (b, idx->fingerprint);
  ad_buf_put_le64 (b, idx->size);
  ad_buf_put_le64 (b, idx->nframes);
  ad_buf_put_le32 (b, (idx->sizes_unchecked ? FLAG_SIZES_UNCHECKED : 0) |
                   (idx->indexed != idx->size ? FLAG_PARTIAL : 0));
  ad_buf_put_le32 (b, 0);       /* Length of the format's state, below. */
  ad_buf_put_le64 (b, 0);
  for (i = 0; i < idx->nframes; i++) {
    const struct ad_frame *f = &idx->frames[i];
    ad_buf_put_le64 (b, f->uoff);
    ad_buf_put_le64 (b, f->usize);
    ad_buf_put_le64 (b, f->coff);
    ad_buf_put_le64 (b, f->csize);
    ad_buf_put_le64 (b, f->aux);
    ad_buf_put_le32 (b, f->aux32);
    ad_buf_put_le32 (b, 0);
  }
  priv_at = b->len;
  if (idx->ops->save (idx, src, b, &why) == -1) {
    note_more (idx, "not written: %s",
               why ? why : "the format cannot keep it");
    return -1;
  }
  if (!b->failed && b->len - priv_at > UINT32_MAX)
    b->failed = true;
  if (!b->failed) {
    ad_put_le32 (b->data + start + 52, b->len - priv_at);
    ad_buf_put_le64 (b, XXH64 (b->data + start, b->len - start, 0));
  }
  if (b->failed) {
    note_more (idx, "not written: out of memory");
    return -1;
  }
  return 0;
}

void
ad_index_save (struct ad_index *idx, struct ad_source *src)
{
  struct ad_buf b = { .data = NULL };
  char *file;

  if (idx->opts.index_path == NULL || idx->ops->save == NULL)
    return;
  if (ad_index_save_bytes (idx, src, &b) == 0) {
    file = index_file (idx->opts.index_path, src->size, idx->fingerprint);
    if (file == NULL)
      note_more (idx, "not written: out of memory");
    else
      write_atomically (idx, file, b.data, b.len);
    free (file);
  }
  free (b.data);
}
