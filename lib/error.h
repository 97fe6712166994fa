/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: error reporting in the format library.
 *
 * The library never prints.  A function that fails fills a struct
 * ad_error with an errno value and a message that names the format,
 * the frame and the compressed offset where that is known, and returns
 * -1.  The caller (the nbdkit filter, the command line tool, a test)
 * decides how to show it.
 */
#ifndef AUTODECOMP_ERROR_H
#define AUTODECOMP_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

#define AD_ERROR_MSG_MAX 512

struct ad_error {
  int errnum;                   /* An errno value, EIO unless better. */
  bool transient;               /* The source below failed (trying again
                                   may work), rather than the data. */
  char msg[AD_ERROR_MSG_MAX];
};

/* Set the error and return -1, so callers can write
 *   return ad_error_set (err, EIO, "xz: block %zu ...", ...);
 */
extern int ad_error_set (struct ad_error *err, int errnum,
                         const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Prefix an existing message with more context ("zstd: frame 3: ..."). */
extern int ad_error_prefix (struct ad_error *err, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

extern void ad_error_clear (struct ad_error *err);

#endif /* AUTODECOMP_ERROR_H */
