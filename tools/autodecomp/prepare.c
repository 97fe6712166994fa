/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: autodecomp prepare [OPTIONS] IMAGE OUTPUT
 *
 * prepare reads any image the filter serves (compressed or raw), frame
 * by frame through the same library (reader.c), and writes it again in
 * a shape that seeks well: zstd frames followed by a seek table (the
 * zstd seekable format), xz blocks, or BGZF members (one writer each,
 * write-*.c, in the table below).  With --verify it then opens what it
 * wrote and compares every byte with the input.
 *
 * do_prepare runs the phases in order: options, the format's defaults,
 * the input, the output, writing, verifying.  Whatever fails removes
 * the output file.
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
#include <getopt.h>
#include <unistd.h>
#include <sys/stat.h>

#include "autodecomp.h"

/* The output formats, the first being the default. */
static const struct out_format *const formats[] = {
  &out_zstd, &out_xz, &out_bgzf,
};

int
output_write (struct output *o, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t n = write (o->fd, p, len);

    if (n == -1) {
      if (errno == EINTR)
        continue;
      fprintf (stderr, PROGRAM ": %s: write: %s\n", o->path,
               strerror (errno));
      return -1;
    }
    p += n;
    len -= n;
    o->written += n;
  }
  return 0;
}

static void
prepare_usage (FILE *fp)
{
  fprintf (fp,
           "usage: " PROGRAM " prepare [-F zstd|xz|bgzf] [-s FRAME-SIZE] "
           "[-l LEVEL] [-T THREADS]\n"
           "                          [--force] [--verify] [--quiet] "
           "IMAGE OUTPUT\n");
}

static const struct out_format *
find_format (const char *name)
{
  size_t i;

  for (i = 0; i < sizeof formats / sizeof formats[0]; i++)
    if (strcmp (name, formats[i]->name) == 0 ||
        (formats[i]->alias && strcmp (name, formats[i]->alias) == 0))
      return formats[i];
  return NULL;
}

/* An option that takes an argument.  Returns -1, or 2 after printing
 * why the argument does not fit.
 */
static int
parse_option (int opt, const char *arg, struct prepare_opts *po)
{
  long n;
  char *end;

  switch (opt) {
  case 'F':
    po->format = find_format (arg);
    if (po->format == NULL) {
      fprintf (stderr, PROGRAM ": --format: zstd, xz or bgzf, not %s\n",
               arg);
      return 2;
    }
    break;
  case 's':
    if (parse_size (arg, &po->frame) == -1 || po->frame < 4096 ||
        po->frame > 1024 * MiB) {
      fprintf (stderr, PROGRAM ": --frame-size: a size from 4K to 1G, "
               "not %s\n", arg);
      return 2;
    }
    break;
  case 'l':
    n = strtol (arg, &end, 10);
    if (*end || end == arg || n < 0 || n > 22) {
      fprintf (stderr, PROGRAM ": --level: a number, not %s\n", arg);
      return 2;
    }
    po->level = n;
    break;
  case 'T':
    n = strtol (arg, &end, 10);
    if (*end || end == arg || n < 0 || n > 64) {
      fprintf (stderr, PROGRAM ": --threads: 0 (all CPUs) to 64, not %s\n",
               arg);
      return 2;
    }
    po->threads = n;
    break;
  }
  return -1;
}

/* The command line.  Returns -1 to go on, or the exit status. */
static int
prepare_parse (int argc, char *argv[], struct prepare_opts *po)
{
  static const struct option long_options[] = {
    { "format", required_argument, NULL, 'F' },
    { "frame-size", required_argument, NULL, 's' },
    { "level", required_argument, NULL, 'l' },
    { "threads", required_argument, NULL, 'T' },
    { "force", no_argument, NULL, 'f' },
    { "verify", no_argument, NULL, 'v' },
    { "quiet", no_argument, NULL, 'q' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int opt, status;

  while ((opt = getopt_long (argc, argv, "F:s:l:T:fvqh", long_options,
                             NULL)) != -1) {
    switch (opt) {
    case 'F': case 's': case 'l': case 'T':
      status = parse_option (opt, optarg, po);
      if (status != -1)
        return status;
      break;
    case 'f': po->force = true; break;
    case 'v': po->verify = true; break;
    case 'q': po->quiet = true; break;
    case 'h': prepare_usage (stdout); return 0;
    default: prepare_usage (stderr); return 2;
    }
  }
  if (argc - optind != 2) {
    prepare_usage (stderr);
    return 2;
  }
  return -1;
}

/* The defaults: all CPUs, and the format's frame size and level. */
static int
prepare_settle (struct prepare_opts *po)
{
  if (po->threads == 0) {
    long cpus = sysconf (_SC_NPROCESSORS_ONLN);

    po->threads = cpus < 1 ? 1 : cpus > 64 ? 64 : cpus;
  }
  return po->format->settle (po);
}

/* Open the output: a new file (or any file with --force), or stdout
 * for "-".  Returns -1 to go on, or the exit status.
 */
static int
prepare_open_output (struct image *in, struct output *o,
                     const struct prepare_opts *po, bool *to_stdout)
{
  *to_stdout = strcmp (o->path, "-") == 0;
  if (*to_stdout) {
    if (po->verify) {
      fprintf (stderr, PROGRAM ": --verify needs an OUTPUT file, not -\n");
      return 2;
    }
    if (isatty (STDOUT_FILENO)) {
      fprintf (stderr, PROGRAM ": not writing compressed data to a "
               "terminal\n");
      return 2;
    }
    o->path = "(stdout)";
    o->fd = STDOUT_FILENO;
  }
  else {
    struct stat ist, ost;

    /* --force must not truncate the image it is about to read. */
    if (stat (o->path, &ost) == 0 && fstat (in->fd, &ist) == 0 &&
        ost.st_dev == ist.st_dev && ost.st_ino == ist.st_ino) {
      fprintf (stderr, PROGRAM ": %s: is the input image itself\n", o->path);
      return 1;
    }
    o->fd = open (o->path, O_WRONLY | O_CREAT | O_CLOEXEC |
                  (po->force ? O_TRUNC : O_EXCL), 0644);
  }
  if (o->fd == -1) {
    fprintf (stderr, PROGRAM ": %s: %s%s\n", o->path, strerror (errno),
             errno == EEXIST ? " (--force overwrites it)" : "");
    return 1;
  }
  return -1;
}

/* Write the image to the output in the format, and close the output.
 * Unless --quiet, says how long it took (on stderr when the data went
 * to stdout).
 */
static int
prepare_write (struct image *in, struct output *o,
               const struct prepare_opts *po, bool to_stdout)
{
  struct reader r;
  double t = now ();
  int status;

  reader_init (&r, in);
  r.progress = !po->quiet && isatty (STDERR_FILENO);
  status = po->format->write (&r, o, po);
  reader_end (&r);
  if (status == 0 && !to_stdout && fsync (o->fd) == -1 && errno != EINVAL) {
    fprintf (stderr, PROGRAM ": %s: fsync: %s\n", o->path, strerror (errno));
    status = -1;
  }
  if (close (o->fd) == -1 && status == 0) {
    fprintf (stderr, PROGRAM ": %s: close: %s\n", o->path, strerror (errno));
    status = -1;
  }
  if (status == 0 && !po->quiet) {
    FILE *fp = to_stdout ? stderr : stdout;

    fprintf (fp, "%s: ", o->path);
    print_size (fp, ad_export_size (in->exp));
    fprintf (fp, " into ");
    print_size (fp, o->written);
    fprintf (fp, " in %.1f s\n", now () - t);
  }
  return status;
}

/* Compare two images byte for byte. */
static int
verify (struct image *a, struct image *b, bool progress)
{
  struct reader ra, rb;
  char *ba = malloc (PIECE), *bb = malloc (PIECE);
  uint64_t off = 0;
  int ret = -1;

  if (ba == NULL || bb == NULL) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    goto done;
  }
  if (ad_export_size (a->exp) != ad_export_size (b->exp)) {
    fprintf (stderr, PROGRAM ": verify: %s is %" PRIu64 " bytes, %s is %"
             PRIu64 "\n", a->path, ad_export_size (a->exp), b->path,
             ad_export_size (b->exp));
    goto done;
  }
  reader_init (&ra, a);
  reader_init (&rb, b);
  ra.progress = progress;
  for (;;) {
    ssize_t na = reader_fill (&ra, ba, PIECE);
    ssize_t nb = reader_fill (&rb, bb, PIECE);

    if (na == -1 || nb == -1)
      break;
    if (na != nb || memcmp (ba, bb, na) != 0) {
      size_t i = 0;

      while (i < (size_t) na && i < (size_t) nb && ba[i] == bb[i])
        i++;
      fprintf (stderr, PROGRAM ": verify: %s and %s differ at offset %"
               PRIu64 "\n", a->path, b->path, off + i);
      break;
    }
    if (na == 0) {
      ret = 0;
      break;
    }
    off += na;
    reader_progress (&ra, "verifying");
  }
  reader_end (&ra);
  reader_end (&rb);

 done:
  free (ba);
  free (bb);
  return ret;
}

/* --verify: open what was written, as the filter will, and compare. */
static int
prepare_verify (struct image *in, const struct output *o,
                const struct prepare_opts *po)
{
  struct image out_im;
  int status = 0;

  if (image_open (&out_im, o->path) == -1)
    return -1;
  if (verify (in, &out_im, !po->quiet && isatty (STDERR_FILENO)) == -1)
    status = -1;
  else if (!po->quiet)
    printf ("%s: verified: every byte is the same as %s's\n", o->path,
            in->path);
  image_close (&out_im);
  return status;
}

int
do_prepare (int argc, char *argv[])
{
  struct prepare_opts po = { formats[0], 0, -1, 0, false, false, false };
  struct image in;
  struct output o = { NULL, -1, 0 };
  int status;
  bool to_stdout;

  status = prepare_parse (argc, argv, &po);
  if (status != -1)
    return status;
  if (prepare_settle (&po) == -1)
    return 2;

  if (image_open (&in, argv[optind]) == -1)
    return 1;
  o.path = argv[optind + 1];
  status = prepare_open_output (&in, &o, &po, &to_stdout);
  if (status != -1) {
    image_close (&in);
    return status;
  }

  status = prepare_write (&in, &o, &po, to_stdout);
  if (status == 0 && po.verify)
    status = prepare_verify (&in, &o, &po);
  image_close (&in);
  if (status == -1) {
    if (!to_stdout)
      unlink (o.path);
    return 1;
  }
  return 0;
}
