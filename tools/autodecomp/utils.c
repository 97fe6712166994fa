/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: small helpers of the command line tool: the clock, and
 * sizes as the command line takes them and the output shows them.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <errno.h>
#include <time.h>

#include "autodecomp.h"

double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sizes on the command line: a number with an optional K, M or G
 * (powers of 1024).
 */
int
parse_size (const char *text, uint64_t *out)
{
  char *end;
  unsigned long long v;
  uint64_t mult = 1;

  errno = 0;
  v = strtoull (text, &end, 10);
  if (errno || end == text)
    return -1;
  switch (*end) {
  case 'k': case 'K': mult = 1024; end++; break;
  case 'm': case 'M': mult = MiB; end++; break;
  case 'g': case 'G': mult = 1024 * MiB; end++; break;
  }
  if (*end == 'i' && end[1] == 'B')
    end += 2;
  else if (*end == 'B' && mult > 1)
    end++;
  if (*end != '\0' || v > UINT64_MAX / mult)
    return -1;
  *out = v * mult;
  return 0;
}

void
print_size (FILE *fp, double bytes)
{
  if (bytes >= 1024 * MiB)
    fprintf (fp, "%.2f GiB", bytes / (1024 * MiB));
  else if (bytes >= MiB)
    fprintf (fp, "%.1f MiB", bytes / MiB);
  else if (bytes >= 1024)
    fprintf (fp, "%.1f KiB", bytes / 1024);
  else
    fprintf (fp, "%.0f byte%s", bytes, bytes == 1 ? "" : "s");
}
