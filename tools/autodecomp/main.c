/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the command line companion of nbdkit's autodecomp filter.
 *
 *   autodecomp info [--json] [--frames] IMAGE
 *   autodecomp prepare [OPTIONS] IMAGE OUTPUT
 *
 * info (info.c) says how well an image will seek when the filter
 * serves it; prepare (prepare.c) writes a copy that seeks well.  This
 * file dispatches the first argument to its mode through the table of
 * modes below: a new mode is a file with a do_MODE function, declared
 * in autodecomp.h, and one line in the table.  autodecomp.h lists what
 * every file does.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autodecomp.h"

struct mode {
  const char *name;
  int (*run) (int argc, char *argv[]);
  const char *synopsis;         /* The arguments, in usage. */
};

static const struct mode modes[] = {
  { "info", do_info, "[--json] [--frames] [--index INDEX] IMAGE" },
  { "prepare", do_prepare, "[OPTIONS] IMAGE OUTPUT" },
  { "index", do_index, "[-p|--no-progress] [-o INDEX] IMAGE" },
};

#define NR_MODES (sizeof modes / sizeof modes[0])

static void
usage (FILE *fp)
{
  size_t i;

  for (i = 0; i < NR_MODES; i++)
    fprintf (fp, "%s" PROGRAM " %s %s\n", i == 0 ? "usage: " : "       ",
             modes[i].name, modes[i].synopsis);
  fprintf (fp, "See " PROGRAM "(1).\n");
}

static void
version (void)
{
#ifdef HAVE_LIBNBD
  printf (PROGRAM " " PACKAGE_VERSION " (reads files and URLs)\n");
#else
  printf (PROGRAM " " PACKAGE_VERSION " (reads files only: built "
          "without libnbd)\n");
#endif
}

int
main (int argc, char *argv[])
{
  size_t i;

  if (argc < 2) {
    usage (stderr);
    return 2;
  }
  /* The mode parses its own options, from its name on. */
  for (i = 0; i < NR_MODES; i++)
    if (strcmp (argv[1], modes[i].name) == 0)
      return modes[i].run (argc - 1, argv + 1);
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0) {
    usage (stdout);
    return 0;
  }
  if (strcmp (argv[1], "--version") == 0) {
    version ();
    return 0;
  }
  fprintf (stderr, PROGRAM ": unknown command %s\n", argv[1]);
  usage (stderr);
  return 2;
}
