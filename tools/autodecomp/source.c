/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the command line tool's image sources.  An image is a
 * local file, or (when built with libnbd) a URL: an NBD URI is
 * connected to directly, any other URL (http, https, ftp, ...) is read
 * through nbdkit's curl plugin, which libnbd runs.  Either way it is
 * opened as the filter opens it: format detected, index built, with a
 * cache of TOOL_CACHE bytes.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

#ifdef HAVE_LIBNBD
#include <libnbd.h>
#endif

#include "autodecomp.h"

void
image_close (struct image *im)
{
  /* The export waits for its decode jobs, so the workers go after it. */
  ad_export_free (im->exp);
  ad_pool_free (im->pool);
  im->pool = NULL;
  ad_cache_free (im->cache);
  if (im->fd >= 0)
    close (im->fd);
#ifdef HAVE_LIBNBD
  if (im->nbd)
    nbd_close (im->nbd);
#endif
  im->nbd = NULL;
  im->exp = NULL;
  im->cache = NULL;
  im->fd = -1;
}

#ifdef HAVE_LIBNBD
/* Reads over NBD go in pieces every server accepts. */
#define NBD_PIECE (4 * MiB)

static int
nbd_source_pread (void *opaque, void *buf, size_t count, uint64_t offset,
                  struct ad_error *err)
{
  struct nbd_handle *nbd = opaque;
  char *p = buf;

  while (count > 0) {
    size_t n = count < NBD_PIECE ? count : NBD_PIECE;

    if (nbd_pread (nbd, p, n, offset, 0) == -1) {
      int e = nbd_get_errno ();

      ad_error_set (err, e ? e : EIO, "reading %zu bytes at offset %"
                    PRIu64 ": %s", n, offset, nbd_get_error ());
      err->transient = true;
      return -1;
    }
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static bool
is_nbd_uri (const char *url)
{
  return strncmp (url, "nbd://", 6) == 0 || strncmp (url, "nbds://", 7) == 0
    || strncmp (url, "nbd+", 4) == 0 || strncmp (url, "nbds+", 5) == 0;
}

/* An NBD URI is connected to directly; any other URL (http, https,
 * ftp, ...) through nbdkit's curl plugin, which libnbd runs.
 */
static int
image_connect (struct image *im, const char *url)
{
  int64_t size;

  im->nbd = nbd_create ();
  if (im->nbd == NULL)
    goto fail;
  if (is_nbd_uri (url)) {
    if (nbd_connect_uri (im->nbd, url) == -1)
      goto fail;
  }
  else {
    char *argv[] = { (char *) "nbdkit", (char *) "-s",
                     (char *) "--exit-with-parent", (char *) "-r",
                     (char *) "curl", (char *) url, NULL };

    if (nbd_connect_command (im->nbd, argv) == -1)
      goto fail;
  }
  size = nbd_get_size (im->nbd);
  if (size == -1)
    goto fail;
  memset (&im->src, 0, sizeof im->src);
  im->src.pread = nbd_source_pread;
  im->src.opaque = im->nbd;
  im->src.size = size;
  return 0;

 fail:
  fprintf (stderr, PROGRAM ": %s: %s\n", url, nbd_get_error ());
  return -1;
}
#endif

/* A URL, read over NBD. */
static int
image_open_url (struct image *im, const char *path)
{
#ifdef HAVE_LIBNBD
  return image_connect (im, path);
#else
  fprintf (stderr, PROGRAM ": %s: this autodecomp was built without "
           "libnbd, so it reads only local files\n", path);
  return -1;
#endif
}

/* A local file, which must be a regular file. */
static int
image_open_file (struct image *im, const char *path)
{
  struct stat st;

  im->fd = open (path, O_RDONLY | O_CLOEXEC);
  if (im->fd == -1 || fstat (im->fd, &st) == -1) {
    fprintf (stderr, PROGRAM ": %s: %s\n", path, strerror (errno));
    return -1;
  }
  if (!S_ISREG (st.st_mode)) {
    fprintf (stderr, PROGRAM ": %s: not a regular file\n", path);
    return -1;
  }
  ad_source_init_fd (&im->src, im->fd, st.st_size);
  return 0;
}

/* Open the image; with workers, decode workers (one per CPU) decode
 * the frames ahead of its sequential reader (see reader.c), so that a
 * conversion decodes on every core while it compresses.  Without them
 * (or if they cannot start) it still works, in one thread.
 */
static int
open_image (struct image *im, const char *path, const char *index_path,
            bool progress, bool workers)
{
  struct ad_options opts;
  struct ad_export_config config = { .pool = NULL };
  struct ad_error err;
  struct progress pr;
  double t;
  int r;

  memset (im, 0, sizeof *im);
  im->path = path;
  im->fd = -1;
  if (strstr (path, "://"))
    r = image_open_url (im, path);
  else
    r = image_open_file (im, path);
  if (r == -1) {
    image_close (im);
    return -1;
  }
  ad_options_init (&opts);
  opts.index_path = index_path;
  im->cache = ad_cache_new (TOOL_CACHE);
  if (im->cache == NULL) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    image_close (im);
    return -1;
  }
  /* The export keeps no source: the counting one serves the open
   * only, and later reads go to im->src directly.
   */
  if (workers) {
    im->pool = ad_pool_new (0, 0, &err);
    if (im->pool) {
      config.pool = im->pool;
      config.readahead = TOOL_CACHE / 4;
    }
  }
  if (progress)
    progress_init (&pr, &im->src, path);
  t = now ();
  im->exp = ad_export_open (progress ? &pr.src : &im->src, AD_FORMAT_UNKNOWN,
                            &opts, im->cache, &config, &err);
  im->open_seconds = now () - t;
  if (progress)
    progress_end (&pr);
  if (im->exp == NULL) {
    fprintf (stderr, PROGRAM ": %s: %s\n", path, err.msg);
    image_close (im);
    return -1;
  }
  return 0;
}

int
image_open (struct image *im, const char *path)
{
  return open_image (im, path, NULL, false, true);
}

int
image_open_indexed (struct image *im, const char *path,
                    const char *index_path, bool progress)
{
  return open_image (im, path, index_path, progress, false);
}
