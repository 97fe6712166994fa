/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: large buffers (see buffer.h).
 */
#include <config.h>

#include <stdlib.h>
#include <sys/mman.h>

#include "buffer.h"

void *
ad_buffer_alloc (size_t size)
{
  void *p;

  if (size < AD_BUFFER_MAP_MIN)
    return malloc (size ? size : 1);
  p = mmap (NULL, size, PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void
ad_buffer_free (void *p, size_t size)
{
  if (p == NULL)
    return;
  if (size < AD_BUFFER_MAP_MIN)
    free (p);
  else
    munmap (p, size);
}
