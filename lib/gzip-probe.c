/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip images, the probes at open: the walk over BGZF
 * member headers (GZ_BGZF) and the test for a single member whose
 * trailer gives the size (GZ_LAZY) (see gzip.c).
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "seekable-formats.h"
#include "gzip-int.h"

#define TRIAL_OUTPUT (64 * 1024)
#define TRIAL_INPUT (1024 * 1024)       /* Read per candidate member. */
#define TRIAL_MAX_FAILURES 16

/* GZ_LAZY, single-member test: does a real member start at p? */
static bool
trial_member (const unsigned char *p, size_t avail, uint64_t off,
              unsigned char *out)
{
  struct ad_error scratch;
  struct gz_header h;
  z_stream zs;
  bool ok = false;
  int r;

  if (gz_parse_header (p, avail, off, &h, &scratch) == -1)
    return false;
  memset (&zs, 0, sizeof zs);
  if (inflateInit2 (&zs, -15) != Z_OK)
    return false;
  zs.next_in = (unsigned char *) p + h.len;
  zs.avail_in = avail - h.len > INFLATE_MAX ? INFLATE_MAX : avail - h.len;
  zs.next_out = out;
  zs.avail_out = TRIAL_OUTPUT;
  r = inflate (&zs, Z_NO_FLUSH);
  if (r == Z_STREAM_END) {
    size_t n = TRIAL_OUTPUT - zs.avail_out;
    if (zs.avail_in >= AD_GZIP_TRAILER_SIZE &&
        ad_le32 (zs.next_in) == crc32 (0, out, n) &&
        ad_le32 (zs.next_in + 4) == n)
      ok = true;
  }
  else if ((r == Z_OK || r == Z_BUF_ERROR) && zs.avail_out == 0)
    ok = true;
  inflateEnd (&zs);
  return ok;
}

/* Scan the chunk in buf (clen bytes, at file offset coff) from index i
 * up to lim for the start of another member: the bytes 1f 8b 08, which
 * a trial decode confirms (from the chunk when its trial input lies in
 * it, else read into *trial, allocated on first use).  Returns 1 if a
 * member was found, or too many candidates failed, 0 if none, -1 with
 * err on a read error.
 */
static int
scan_chunk (struct ad_source *src, const unsigned char *buf, uint64_t coff,
            size_t clen, size_t lim, size_t i, unsigned char *out,
            unsigned char **trial, int *failures, struct ad_error *err)
{
  uint64_t fsize = src->size;

  while (i < lim) {
    const unsigned char *q = memchr (buf + i, 0x1f, lim - i);
    const unsigned char *tp;
    uint64_t pos;
    size_t tlen;

    if (q == NULL)
      break;
    i = q - buf;
    pos = coff + i;
    i++;
    if (pos + MEMBER_MIN > fsize)
      break;
    if (!(q[1] == 0x8b && q[2] == 8 && (q[3] & FLG_RESERVED) == 0))
      continue;
    tlen = fsize - pos < TRIAL_INPUT ? fsize - pos : TRIAL_INPUT;
    if (tlen <= clen - (i - 1))
      tp = q;                   /* All of it is in this chunk. */
    else {
      if (*trial == NULL &&
          (*trial = malloc (fsize < TRIAL_INPUT ? fsize : TRIAL_INPUT))
          == NULL)
        return ad_error_set (err, ENOMEM, "malloc: %m");
      if (ad_source_pread (src, *trial, tlen, pos, err) == -1)
        return -1;
      tp = *trial;
    }
    if (trial_member (tp, tlen, pos, out) ||
        ++*failures > TRIAL_MAX_FAILURES)
      return 1;
  }
  return 0;
}

/* GZ_LAZY: is the file one member whose trailer gives the size?
 * buf holds the first n bytes of the file (n = min (AD_WINDOW_CHUNK, file size))
 * and is not changed.  Returns 1 (yes, *size set), 0 (no: use GZ_FULL)
 * or -1.
 *
 * When the trailer leaves several candidates (the file is larger than
 * about 4.1 MB) and opts.gzip_trust_isize is set (the default,
 * autodecomp-gzip-size=trailer), we take the smallest, ISIZE itself:
 * that is every image under 4 GiB.  A member of 4 GiB or more is then
 * caught by the indexing pass, which finds more output than the size
 * and fails the reads that reach the end of the image, never serving
 * a wrong byte; autodecomp-gzip-size=decode learns its size instead.
 */
int
gz_single_member_size (struct ad_source *src, unsigned char *buf, size_t n,
                       const struct gz_header *h, bool trust_isize,
                       bool scan_all, uint64_t *size, struct ad_error *err)
{
  uint64_t fsize = src->size, d, umax, start;
  unsigned char trailer[AD_GZIP_TRAILER_SIZE];
  uint32_t isize;
  unsigned char *out = NULL, *trial = NULL;
  uint64_t nchunks, c;
  bool buf_is_start = true;
  int failures = 0, r = 0;

  if (fsize < h->len + 2 + AD_GZIP_TRAILER_SIZE)
    return 0;
  if (ad_source_pread (src, trailer, AD_GZIP_TRAILER_SIZE,
                       fsize - AD_GZIP_TRAILER_SIZE, err) == -1)
    return -1;
  /* A last byte of zero may be padding: decode (see gzip.c). */
  if (trailer[AD_GZIP_TRAILER_SIZE - 1] == 0)
    return 0;
  isize = ad_le32 (trailer + 4);
  d = fsize - h->len - AD_GZIP_TRAILER_SIZE;
  umax = d > UINT64_MAX / MAX_RATIO ? UINT64_MAX : d * MAX_RATIO;
  if (isize > umax)
    return 0;
  if (isize + (UINT64_C (1) << 32) <= umax && !trust_isize)
    return 0;

  /* Any other member?  Scan the file in AD_WINDOW_CHUNK reads (chunk c at
   * c * (AD_WINDOW_CHUNK - 3): an overlap of 3 bytes so that no header is split)
   * for the bytes 1f 8b 08 (memchr for the first: faster here than
   * memmem), and trial-decode every candidate, from the chunk itself
   * when its trial input lies in it.  Every chunk is read into buf
   * (a second 8 MiB buffer would cost more in page faults than reading
   * the first chunk again), the first one (already there) last, so
   * that buf ends up holding the start of the file again.  Unless
   * scan_all (autodecomp-size-check=connect), only the first chunk,
   * already read, is scanned: the lazy pass finds any member after it
   * when it gets there.
   */
  out = malloc (TRIAL_OUTPUT);
  if (out == NULL) {
    r = ad_error_set (err, ENOMEM, "malloc: %m");
    goto out;
  }
  start = h->len + 2 + AD_GZIP_TRAILER_SIZE;
  nchunks = fsize <= AD_WINDOW_CHUNK ? 1 : (fsize - 3 - 1) / (AD_WINDOW_CHUNK - 3) + 1;
  for (c = scan_all ? 1 : nchunks; c <= nchunks; c++) {
    uint64_t coff = (c % nchunks) * (uint64_t) (AD_WINDOW_CHUNK - 3);
    size_t clen = fsize - coff < AD_WINDOW_CHUNK ? fsize - coff : AD_WINDOW_CHUNK;
    bool last = coff + clen == fsize;
    size_t lim = last ? clen : clen - 3;
    size_t i = coff < start ? start - coff : 0;

    if (coff != 0 || !buf_is_start) {
      buf_is_start = false;
      if (ad_source_pread (src, buf, clen, coff, err) == -1) {
        r = -1;
        goto out;
      }
      buf_is_start = coff == 0;
    }
    r = scan_chunk (src, buf, coff, clen, lim, i, out, &trial, &failures,
                    err);
    if (r != 0) {
      r = r == 1 ? 0 : -1;      /* r = 0: several members, GZ_FULL. */
      goto out;
    }
  }
  *size = isize;
  r = 1;

 out:
  free (out);
  free (trial);
  /* Give the caller back the start of the file, if an early exit left
   * another chunk in buf.
   */
  if (r >= 0 && !buf_is_start &&
      ad_source_pread (src, buf, n, 0, err) == -1)
    r = -1;
  return r;
}

/* GZ_BGZF: an empty member (the BGZF end-of-file marker) is never
 * decoded as a frame, so check it here: it must decode to nothing,
 * ending exactly at its trailer, with CRC32 0.
 */
static bool
empty_member_ok (const unsigned char *b, size_t msize, size_t hlen)
{
  unsigned char out[1];
  z_stream zs;
  bool ok;
  int r;

  if (ad_le32 (b + msize - 8) != 0)
    return false;
  memset (&zs, 0, sizeof zs);
  if (inflateInit2 (&zs, -15) != Z_OK)
    return false;
  zs.next_in = (unsigned char *) b + hlen;
  zs.avail_in = msize - hlen - AD_GZIP_TRAILER_SIZE;
  zs.next_out = out;
  zs.avail_out = sizeof out;
  r = inflate (&zs, Z_FINISH);
  ok = r == Z_STREAM_END && zs.avail_out == sizeof out && zs.avail_in == 0;
  inflateEnd (&zs);
  return ok;
}

/* GZ_BGZF: walk BGZF member headers.  buf holds the first n bytes (it
 * is not changed).
 * Returns 1 if the index is done, 0 if the file is not BGZF-shaped
 * (use GZ_FULL), -1 on error.
 */
int
gz_bgzf_index (struct ad_index *idx, struct gz_priv *priv,
               struct ad_source *src, const unsigned char *buf, size_t n,
               struct ad_error *err)
{
  struct ad_error scratch;
  struct ad_window w;
  uint64_t fsize = src->size, pos = 0, total = 0;
  int r = 0;

  ad_window_init (&w, src, 0, fsize);
  w.chunk = AD_WINDOW_CHUNK;
  ad_window_show (&w, buf, n);
  while (pos < fsize) {
    size_t want = fsize - pos < AD_BGZF_MEMBER_MAX ? fsize - pos
      : AD_BGZF_MEMBER_MAX, avail;
    struct gz_header h;
    struct ad_frame f;
    const unsigned char *b;
    uint64_t msize;
    uint32_t isize;

    b = ad_window_need (&w, pos, want, &avail, err);
    if (b == NULL)
      goto fail;
    if (b[0] == 0) {
      /* Zero padding to the end, or not BGZF. */
      for (;;) {
        size_t i;
        for (i = 0; i < avail; i++)
          if (b[i] != 0)
            goto not_bgzf;
        pos += avail;
        if (pos >= fsize)
          break;
        b = ad_window_need (&w, pos, 1, &avail, err);
        if (b == NULL)
          goto fail;
      }
      break;
    }
    if (gz_parse_header (b, want, pos, &h, &scratch) == -1 || !h.bgzf)
      goto not_bgzf;
    msize = (uint64_t) h.bsize + 1;
    if (msize < h.len + 2 + AD_GZIP_TRAILER_SIZE || msize > want)
      goto not_bgzf;
    isize = ad_le32 (b + msize - 4);
    if (isize > AD_BGZF_ISIZE_MAX)
      goto not_bgzf;
    if (isize == 0 && !empty_member_ok (b, msize, h.len))
      goto not_bgzf;            /* The sizing pass will say why. */

    memset (&f, 0, sizeof f);
    f.uoff = total;
    f.usize = isize;
    f.coff = pos;
    f.csize = msize;
    f.aux = AUX_WHOLE;
    if (isize > 0 && gz_coll_push (priv, &f, err) == -1)
      goto fail;
    total += isize;
    pos += msize;
  }
  priv->kind = GZ_BGZF;
  idx->sizes_unchecked = true;
  if (gz_coll_append_all (idx, priv, total, err) == -1)
    goto fail;
  r = 1;
  goto out;

 not_bgzf:
  priv->ncoll = 0;
  goto out;
 fail:
  r = -1;
 out:
  ad_window_free (&w);
  return r;
}
