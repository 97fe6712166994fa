/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: large buffers.
 *
 * Buffers of at least AD_BUFFER_MAP_MIN bytes are mapped directly
 * rather than taken from malloc, so that freeing one gives its memory
 * back (malloc keeps large freed chunks in per-thread arenas, and the
 * process then holds more than the cache's size).  They are mapped
 * populated: their users write every byte anyway, and the kernel fills
 * the pages in one go far faster than they fault them in one by one
 * (about 13 us a page on a virtual machine).  Cold random reads of
 * 16 MiB xz blocks, where most decodes get a fresh buffer, went from
 * 11.9-12.5 to 14.6-15.6 IOPS.  Smaller buffers come from malloc.
 */
#ifndef AUTODECOMP_BUFFER_H
#define AUTODECOMP_BUFFER_H

#include <stddef.h>

#define AD_BUFFER_MAP_MIN (1024 * 1024)

/* A buffer of size bytes (of at least one byte), or NULL. */
extern void *ad_buffer_alloc (size_t size);

/* Free a buffer from ad_buffer_alloc of that size; NULL is ignored. */
extern void ad_buffer_free (void *p, size_t size);

#endif /* AUTODECOMP_BUFFER_H */
