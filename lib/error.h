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
#include <stddef.h>
#include <stdint.h>

#define AD_ERROR_MSG_MAX 512

struct ad_error {
  int errnum;                   /* An errno value, EIO unless better. */
  bool transient;               /* The source below failed (trying again
                                   may work), rather than the data. */
  char msg[AD_ERROR_MSG_MAX];

  /* Where, once ad_error_in_frame or ad_error_in_format has put it at
   * the head of msg: the format's name (NULL until then) and, when
   * has_frame, the frame number and its compressed offset.
   */
  const char *format;
  bool has_frame;
  size_t frame;
  uint64_t coff;
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

/* Say where the error happened, unless it already says: prefix msg
 * with "FORMAT: frame N at compressed offset C" and set the fields.
 * Both return -1.
 */
extern int ad_error_in_frame (struct ad_error *err, const char *format,
                              size_t frame, uint64_t coff);

/* The same without a frame: "FORMAT: CONTEXT" (e.g. "gzip: indexing
 * pass"), or just "FORMAT" when context is NULL.
 */
extern int ad_error_in_format (struct ad_error *err, const char *format,
                               const char *context);

#endif /* AUTODECOMP_ERROR_H */
