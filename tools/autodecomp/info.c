/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: autodecomp info [--json] [--frames] IMAGE
 *
 * info opens an image with the same library, options and index as the
 * filter does at connect, and says what a random read of it will cost:
 * how many bytes it decodes and reads below, and whether the image
 * seeks well.  --json says the same for programs, --frames lists the
 * index.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <getopt.h>

#include "autodecomp.h"

/* What info calls a cheap random read: the decode it costs on average. */
#define SEEKS_WELL (4 * MiB)
#define SEEKS_FAIRLY (32 * MiB)

#define INFO_USAGE \
  "usage: " PROGRAM " info [--json] [--frames] [--index INDEX] IMAGE\n"

struct costs {
  size_t frames, zero_frames, large_frames;
  uint64_t largest, smallest, zero_bytes;
  double decode_per_read;       /* Mean bytes a cold random read decodes, */
  double read_per_read;         /* and reads below. */
};

/* What info found, for the two ways of telling it. */
struct info {
  struct image im;
  struct costs c;
  bool complete;                /* The index covers the whole image. */
  const char *verdict;          /* "raw", "good", "fair" or "poor". */
  bool frames;                  /* --frames */
};

/* A cold random read at a uniformly random offset decodes the frame
 * that holds it: frame i is hit with probability usize_i / size, so
 * the mean decode is sum (usize_i^2) / size.  Zero frames are known
 * (decode nothing); a large frame is decoded progressively from its
 * start, half of it on average for a first read.
 */
static void
image_costs (struct ad_export *exp, struct costs *c)
{
  struct ad_index *idx = ad_export_index (exp);
  size_t i, n = ad_index_nframes (idx);
  double size = ad_index_size (idx) ? (double) ad_index_size (idx) : 1;

  memset (c, 0, sizeof *c);
  c->frames = n;
  for (i = 0; i < n; i++) {
    struct ad_frame f;
    double share;

    ad_index_get_frame (idx, i, &f);
    if (f.usize > c->largest)
      c->largest = f.usize;
    if (i == 0 || f.usize < c->smallest)
      c->smallest = f.usize;
    if (f.flags & AD_FRAME_ZERO) {
      c->zero_frames++;
      c->zero_bytes += f.usize;
      continue;
    }
    share = f.usize / size;
    if (f.usize > AD_LARGE_FRAME) {
      c->large_frames++;
      c->decode_per_read += share * f.usize / 2;
      c->read_per_read += share * f.csize / 2;
    }
    else {
      c->decode_per_read += share * f.usize;
      c->read_per_read += share * f.csize;
    }
  }
}

static const char *
verdict (const struct ad_export *exp, const struct costs *c, bool complete)
{
  if (ad_export_format (exp) == AD_FORMAT_RAW)
    return "raw";
  if (!complete || c->large_frames > 0 || c->decode_per_read > SEEKS_FAIRLY)
    return "poor";
  if (c->decode_per_read > SEEKS_WELL)
    return "fair";
  return "good";
}

/* --json ------------------------------------------------------------ */

static void
json_string (const char *s)
{
  putchar ('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      printf ("\\%c", *s);
    else if ((unsigned char) *s < 0x20)
      printf ("\\u%04x", *s);
    else
      putchar (*s);
  }
  putchar ('"');
}

/* [uoff, usize, coff, csize, zero] per frame of the index. */
static void
json_frame_table (const struct info *in)
{
  size_t i;

  printf (",\n  \"frame_table\": [");
  for (i = 0; i < in->c.frames; i++) {
    struct ad_frame f;

    ad_index_get_frame (ad_export_index (in->im.exp), i, &f);
    printf ("%s\n    [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64
            ", %s]", i ? "," : "", f.uoff, f.usize, f.coff, f.csize,
            f.flags & AD_FRAME_ZERO ? "true" : "false");
  }
  printf ("\n  ]");
}

static void
info_json (const struct info *in)
{
  const struct image *im = &in->im;
  const struct costs *c = &in->c;
  struct ad_index *idx = ad_export_index (im->exp);

  printf ("{\n  \"image\": ");
  json_string (im->path);
  printf (",\n  \"format\": \"%s\",\n"
          "  \"compressed_size\": %" PRIu64 ",\n"
          "  \"size\": %" PRIu64 ",\n"
          "  \"open_seconds\": %.3f,\n"
          "  \"index_complete\": %s,\n"
          "  \"frames\": %zu,\n"
          "  \"zero_frames\": %zu,\n"
          "  \"large_frames\": %zu,\n"
          "  \"largest_frame\": %" PRIu64 ",\n"
          "  \"decode_per_random_read\": %.0f,\n"
          "  \"read_per_random_read\": %.0f,\n"
          "  \"index_from\": \"%s\",\n"
          "  \"sizes_unchecked\": %s,\n"
          "  \"persisted_index\": \"%s\",\n"
          "  \"seeks\": \"%s\"",
          ad_format_name (ad_export_format (im->exp)), im->src.size,
          ad_export_size (im->exp),
          im->open_seconds, in->complete ? "true" : "false", c->frames,
          c->zero_frames, c->large_frames, c->largest, c->decode_per_read,
          c->read_per_read,
          idx && ad_index_from (idx) ? ad_index_from (idx) : "",
          idx && ad_index_sizes_unchecked (idx) ? "true" : "false",
          idx && ad_index_loaded (idx) ? "loaded"
          : idx && ad_index_refused (idx) ? "refused" : "",
          in->verdict);
  if (in->frames)
    json_frame_table (in);
  printf ("\n}\n");
}

/* Text -------------------------------------------------------------- */

/* The frames: how many, how large, what a cold random read costs. */
static void
text_frames (const struct costs *c)
{
  printf ("  %zu frame%s", c->frames, c->frames == 1 ? "" : "s");
  if (c->frames > 0) {
    printf (" of ");
    print_size (stdout, c->smallest);
    if (c->largest != c->smallest) {
      printf (" to ");
      print_size (stdout, c->largest);
    }
  }
  if (c->zero_frames > 0) {
    printf (", %zu of them known to be zeros (", c->zero_frames);
    print_size (stdout, c->zero_bytes);
    printf (", never decoded)");
  }
  printf ("\n");
  if (c->large_frames > 0)
    printf ("  %zu frame%s larger than %llu MiB: a first read at offset "
            "X in such a\n  frame decodes everything in it up to X "
            "(into a temporary file)\n", c->large_frames,
            c->large_frames == 1 ? "" : "s", AD_LARGE_FRAME / MiB);
  printf ("  a cold random read decodes ");
  print_size (stdout, c->decode_per_read);
  printf (" and reads ");
  print_size (stdout, c->read_per_read);
  printf (" below, on average\n");
}

/* --frames: one line per frame of the index. */
static void
text_frame_table (const struct info *in)
{
  size_t i;

  printf ("  %8s %14s %10s %14s %10s\n", "frame", "offset", "size",
          "compressed at", "bytes");
  for (i = 0; i < in->c.frames; i++) {
    struct ad_frame f;

    ad_index_get_frame (ad_export_index (in->im.exp), i, &f);
    printf ("  %8zu %14" PRIu64 " %10" PRIu64 " %14" PRIu64 " %10" PRIu64
            "%s\n", i, f.uoff, f.usize, f.coff, f.csize,
            f.flags & AD_FRAME_ZERO ? "  zeros" : "");
  }
}

/* How the index of a compressed image was made and what it costs. */
static void
text_index (const struct info *in)
{
  const struct image *im = &in->im;
  struct ad_index *idx = ad_export_index (im->exp);
  char note[AD_INDEX_NOTE_SIZE];

  printf ("  opening it (as the filter does at connect) took %.2f s\n",
          im->open_seconds);
  if (ad_index_from (idx))
    printf ("  index from %s\n", ad_index_from (idx));
  ad_index_note (idx, note, sizeof note);
  if (note[0])
    printf ("  persisted index: %s\n", note);
  if (!in->complete) {
    printf ("  one gzip member: the file has no seek points.  The filter "
            "makes\n  checkpoints (every autodecomp-gzip-span) as one "
            "sequential pass\n  reaches them: a first read at offset X "
            "decodes everything up to X\n  once; after that, any read "
            "decodes at most one span.\n");
  }
  else
    text_frames (&in->c);
  if (ad_index_sizes_unchecked (idx))
    printf ("  frame sizes are not covered by a checksum "
            "(autodecomp-verify-offsets=true proves them)\n");
  if (in->frames && in->c.frames > 0)
    text_frame_table (in);
}

static void
info_text (const struct info *in)
{
  const struct image *im = &in->im;

  printf ("%s: %s, ", im->path, ad_format_name (ad_export_format (im->exp)));
  print_size (stdout, ad_export_size (im->exp));
  printf (" (%" PRIu64 " bytes) from ", ad_export_size (im->exp));
  print_size (stdout, im->src.size);
  printf ("\n");
  if (ad_export_format (im->exp) == AD_FORMAT_RAW) {
    printf ("  not compressed: the filter passes it through untouched\n");
    return;
  }
  text_index (in);
  if (strcmp (in->verdict, "good") == 0)
    printf ("seeks well\n");
  else
    printf ("seeks %s: `" PROGRAM " prepare %s OUTPUT.zst` writes a copy "
            "that seeks well\n", strcmp (in->verdict, "fair") == 0 ?
            "fairly" : "poorly", im->path);
}

/* ------------------------------------------------------------------- */

int
do_info (int argc, char *argv[])
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, 'j' },
    { "frames", no_argument, NULL, 'f' },
    { "index", required_argument, NULL, 'i' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct info in;
  const char *index_path = NULL;
  bool json = false;
  int opt;

  memset (&in, 0, sizeof in);
  while ((opt = getopt_long (argc, argv, "jfhi:", long_options, NULL))
         != -1) {
    switch (opt) {
    case 'j': json = true; break;
    case 'i': index_path = optarg; break;
    case 'f': in.frames = true; break;
    case 'h': printf (INFO_USAGE); return 0;
    default: return 2;
    }
  }
  if (argc - optind != 1) {
    fprintf (stderr, INFO_USAGE);
    return 2;
  }
  if (image_open_indexed (&in.im, argv[optind], index_path, false) == -1)
    return 1;

  if (ad_export_format (in.im.exp) == AD_FORMAT_RAW)
    in.complete = true;
  else {
    image_costs (in.im.exp, &in.c);
    in.complete = ad_index_complete (ad_export_index (in.im.exp));
  }
  in.verdict = verdict (in.im.exp, &in.c, in.complete);
  if (json)
    info_json (&in);
  else
    info_text (&in);
  image_close (&in.im);
  return 0;
}
