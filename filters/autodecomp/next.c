/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * nbdkit-autodecomp-filter: the plugin below as a source for the
 * library (see autodecomp.h).
 */

#include <config.h>

#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <pthread.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "source.h"

#include "autodecomp.h"

static int
next_pread (void *opaque, void *buf, size_t count, uint64_t offset,
            struct ad_error *err)
{
  const struct next_source *ns = opaque;
  nbdkit_next *next = ns->next;
  char *p = buf;

  while (count > 0) {
    uint32_t n = count > 64 * 1024 * 1024 ? 64 * 1024 * 1024 : count;
    int errnum = 0, r;

    if (ns->turns)
      pthread_mutex_lock (ns->turns);
    r = next->pread (next, p, n, offset, 0, &errnum);
    if (ns->turns)
      pthread_mutex_unlock (ns->turns);
    if (r == -1)
      return ad_error_set (err, errnum ? errnum : EIO,
                           "read of %" PRIu32 " bytes at compressed offset %"
                           PRIu64 " from the plugin failed: %s", n, offset,
                           strerror (errnum ? errnum : EIO));
    p += n;
    count -= n;
    offset += n;
  }
  return 0;
}

void
source_of_next (struct ad_source *src, struct next_source *ns,
                nbdkit_next *next, pthread_mutex_t *turns, uint64_t size)
{
  ns->next = next;
  ns->turns = turns;
  memset (src, 0, sizeof *src);
  src->pread = next_pread;
  src->opaque = ns;
  src->size = size;
}

