/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: error reporting in the format library.
 */

#include <config.h>

#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>

#include "error.h"

int
ad_error_set (struct ad_error *err, int errnum, const char *fmt, ...)
{
  va_list ap;

  if (err == NULL)
    return -1;
  err->errnum = errnum ? errnum : EIO;
  err->format = NULL;
  err->has_frame = false;
  va_start (ap, fmt);
  vsnprintf (err->msg, sizeof err->msg, fmt, ap);
  va_end (ap);
  return -1;
}

int
ad_error_prefix (struct ad_error *err, const char *fmt, ...)
{
  char prefix[AD_ERROR_MSG_MAX];
  char old[AD_ERROR_MSG_MAX];
  va_list ap;

  if (err == NULL)
    return -1;
  va_start (ap, fmt);
  vsnprintf (prefix, sizeof prefix, fmt, ap);
  va_end (ap);
  memcpy (old, err->msg, sizeof old);
  strncat (prefix, ": ", sizeof prefix - strlen (prefix) - 1);
  strncat (prefix, old, sizeof prefix - strlen (prefix) - 1);
  memcpy (err->msg, prefix, sizeof err->msg);
  if (err->errnum == 0)
    err->errnum = EIO;
  return -1;
}

void
ad_error_clear (struct ad_error *err)
{
  err->errnum = 0;
  err->transient = false;
  err->msg[0] = '\0';
  err->format = NULL;
  err->has_frame = false;
}

int
ad_error_in_frame (struct ad_error *err, const char *format, size_t frame,
                   uint64_t coff)
{
  if (err == NULL || err->format != NULL)
    return -1;
  ad_error_prefix (err, "%s: frame %zu at compressed offset %" PRIu64,
                   format, frame, coff);
  err->format = format;
  err->has_frame = true;
  err->frame = frame;
  err->coff = coff;
  return -1;
}

int
ad_error_in_format (struct ad_error *err, const char *format,
                    const char *context)
{
  if (err == NULL || err->format != NULL)
    return -1;
  if (context)
    ad_error_prefix (err, "%s: %s", format, context);
  else
    ad_error_prefix (err, "%s", format);
  err->format = format;
  return -1;
}
