/* autodecomp: the source of compressed bytes (see source.h). */

#include <config.h>

#include <stdio.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <unistd.h>

#include "source.h"

int
ad_source_pread (struct ad_source *src, void *buf, size_t count,
                 uint64_t offset, struct ad_error *err)
{
  if (offset > src->size || count > src->size - offset)
    return ad_error_set (err, EIO,
                         "read of %zu bytes at offset %" PRIu64
                         " is past the end of the %" PRIu64 "-byte image "
                         "(truncated?)", count, offset, src->size);
  if (count == 0)
    return 0;
  __atomic_add_fetch (&src->reads, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch (&src->bytes_read, count, __ATOMIC_RELAXED);
  return src->pread (src->opaque, buf, count, offset, err);
}

static int
fd_pread (void *opaque, void *buf, size_t count, uint64_t offset,
          struct ad_error *err)
{
  int fd = (int) (intptr_t) opaque;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return ad_error_set (err, errno, "pread at offset %" PRIu64 ": %m",
                           offset);
    }
    if (r == 0)
      return ad_error_set (err, EIO, "unexpected end of file at offset %"
                           PRIu64, offset);
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

void
ad_source_init_fd (struct ad_source *src, int fd, uint64_t size)
{
  memset (src, 0, sizeof *src);
  src->pread = fd_pread;
  src->opaque = (void *) (intptr_t) fd;
  src->size = size;
}

static int
mem_pread (void *opaque, void *buf, size_t count, uint64_t offset,
           struct ad_error *err __attribute__ ((unused)))
{
  memcpy (buf, (const char *) opaque + offset, count);
  return 0;
}

void
ad_source_init_mem (struct ad_source *src, const void *data, size_t size)
{
  memset (src, 0, sizeof *src);
  src->pread = mem_pread;
  src->opaque = (void *) data;
  src->size = size;
}
