/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: autodecomp index [-o INDEX] IMAGE
 *
 * Builds the image's index as the filter does at connect and writes it
 * where the filter's autodecomp-index=INDEX loads it (see
 * lib/persist.h): INDEX is a file, or a directory of one file per
 * image; by default IMAGE.adindex beside a local image.  An index
 * already there and valid is loaded, not rebuilt; a damaged or stale
 * one is replaced.  An index that reads would build as they go (one
 * large gzip member) is built to the end first.
 *
 * On a terminal, or with --progress, it shows how far the reads of
 * the image got (see progress.c): passes over the whole image take
 * minutes for a large one or a slow URL.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <getopt.h>
#include <unistd.h>

#include "autodecomp.h"

#define INDEX_USAGE \
  "usage: " PROGRAM " index [-p|--progress|--no-progress] [-o INDEX] IMAGE\n"

/* An index built as reads need it (one large gzip member), or loaded
 * partial, is complete only when its pass reaches the end: run it
 * there (which writes it).
 */
static int
finish_lazy (struct image *im, struct ad_index *idx)
{
  struct ad_frame f;
  struct ad_error err;
  size_t frame_no;
  double t = now ();

  if (ad_index_complete (idx) || ad_index_size (idx) == 0)
    return 0;
  if (ad_index_find (idx, &im->src, ad_index_size (idx) - 1, &f, &frame_no,
                     NULL,
                     NULL, &err) == -1) {
    fprintf (stderr, PROGRAM ": %s: %s\n", im->path, err.msg);
    return -1;
  }
  im->open_seconds += now () - t;
  return 0;
}

int
do_index (int argc, char *argv[])
{
  static const struct option long_options[] = {
    { "output", required_argument, NULL, 'o' },
    { "progress", no_argument, NULL, 'p' },
    { "no-progress", no_argument, NULL, 'P' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *out = NULL, *path;
  char *def = NULL;
  struct image im;
  struct ad_index *idx;
  char note[AD_INDEX_NOTE_SIZE];
  bool progress = isatty (STDERR_FILENO);
  int opt, r = 1;

  while ((opt = getopt_long (argc, argv, "o:ph", long_options, NULL)) != -1) {
    switch (opt) {
    case 'o': out = optarg; break;
    case 'p': progress = true; break;
    case 'P': progress = false; break;
    case 'h': printf (INDEX_USAGE); return 0;
    default: return 2;
    }
  }
  if (argc - optind != 1) {
    fprintf (stderr, INDEX_USAGE);
    return 2;
  }
  path = argv[optind];
  if (out == NULL) {
    if (strstr (path, "://")) {
      fprintf (stderr, PROGRAM ": %s: give -o INDEX for an image that is "
               "not a local file\n", path);
      return 2;
    }
    if (asprintf (&def, "%s.adindex", path) == -1) {
      fprintf (stderr, PROGRAM ": out of memory\n");
      return 1;
    }
    out = def;
  }
  if (image_open_indexed (&im, path, out, progress) == -1)
    goto done;
  idx = ad_export_index (im.exp);
  if (idx && finish_lazy (&im, idx) == -1) {
    image_close (&im);
    goto done;
  }
  if (idx == NULL)
    fprintf (stderr, PROGRAM ": %s: not compressed: there is nothing to "
             "index\n", path);
  else {
    ad_index_note (idx, note, sizeof note);
    if (ad_index_loaded (idx) || strstr (note, "written to")) {
      printf ("%s: %s index: %s (%.2f s)\n", path,
              ad_format_name (ad_export_format (im.exp)), note,
              im.open_seconds);
      r = 0;
    }
    else
      fprintf (stderr, PROGRAM ": %s: %s\n", path,
               note[0] ? note
               : "this format's index is not kept: its own index is read "
               "in a few reads");
  }
  image_close (&im);
 done:
  free (def);
  return r;
}
