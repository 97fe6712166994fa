/* autodecomp: one served image, shared by every connection (see
 * export.h).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "export.h"

struct ad_export *
ad_export_open (struct ad_source *src, enum ad_format format,
                const struct ad_options *opts, struct ad_cache *cache,
                struct ad_error *err)
{
  struct ad_export *exp;
  enum ad_format found;

  found = ad_detect (src, err);
  if (found == AD_FORMAT_UNKNOWN)
    return NULL;
  if (format == AD_FORMAT_UNKNOWN)
    format = found;
  else if (format != found && format != AD_FORMAT_RAW) {
    if (found == AD_FORMAT_RAW)
      ad_error_set (err, EINVAL, "autodecomp-format=%s, but the image "
                    "does not start with the %s magic bytes (it looks "
                    "uncompressed)", ad_format_name (format),
                    ad_format_name (format));
    else
      ad_error_set (err, EINVAL, "autodecomp-format=%s, but the image is "
                    "%s (found by its magic bytes)", ad_format_name (format),
                    ad_format_name (found));
    return NULL;
  }

  exp = calloc (1, sizeof *exp);
  if (exp == NULL) {
    ad_error_set (err, errno, "calloc: %m");
    return NULL;
  }
  exp->format = format;
  exp->cache = cache;
  pthread_mutex_init (&exp->lock, NULL);
  if (format == AD_FORMAT_RAW) {
    exp->size = src->size;
    return exp;
  }
  exp->idx = ad_index_open (format, src, opts, err);
  if (exp->idx == NULL) {
    ad_export_free (exp);
    return NULL;
  }
  exp->size = exp->idx->size;
  return exp;
}

void
ad_export_free (struct ad_export *exp)
{
  if (exp == NULL)
    return;
  if (exp->cache)
    ad_cache_drop_owner (exp->cache, exp);
  ad_spill_free (exp->spill);
  ad_index_free (exp->idx);
  pthread_mutex_destroy (&exp->lock);
  free (exp);
}

/* Frames that the index decodes anyway (the gzip pass) go to the cache. */
static void
emit_to_cache (void *opaque, struct ad_index *idx, size_t frame_no,
               const void *data)
{
  struct ad_export *exp = opaque;
  struct ad_frame frame;

  ad_index_get_frame (idx, frame_no, &frame);
  if (frame.usize <= AD_LARGE_FRAME)
    ad_cache_insert (exp->cache, exp, frame_no, data, frame.usize);
}

struct fill_ctx {
  struct ad_export *exp;
  struct ad_source *src;
  const struct ad_frame *frame;
  size_t frame_no;
};

static int
fill_frame (void *opaque, void *buf, struct ad_error *err)
{
  struct fill_ctx *ctx = opaque;

  if (ctx->exp->on_decode)
    ctx->exp->on_decode (ctx->exp->on_decode_opaque, ctx->frame_no,
                         ctx->frame);
  return ad_index_decode_frame (ctx->exp->idx, ctx->src, ctx->frame,
                                ctx->frame_no, buf, err);
}

static struct ad_spill *
get_spill (struct ad_export *exp, struct ad_error *err)
{
  struct ad_spill *spill;

  pthread_mutex_lock (&exp->lock);
  if (exp->spill == NULL)
    exp->spill = ad_spill_new (exp->idx, err);
  spill = exp->spill;
  pthread_mutex_unlock (&exp->lock);
  return spill;
}

/* Serve [offset, offset + count) of one frame; buf may be NULL to
 * only bring the frame into the cache or the spill.
 */
static int
read_in_frame (struct ad_export *exp, struct ad_source *src,
               const struct ad_frame *frame, size_t frame_no,
               char *buf, size_t count, uint64_t offset,
               struct ad_error *err)
{
  uint64_t in_frame = offset - frame->uoff;

  if (frame->usize > AD_LARGE_FRAME) {
    struct ad_spill *spill = get_spill (exp, err);
    char scratch[1];

    if (spill == NULL)
      return -1;
    if (buf == NULL) {
      /* Decoding up to the end of the range is what is wanted. */
      in_frame += count - 1;
      count = 1;
      buf = scratch;
    }
    return ad_spill_read (spill, src, frame, frame_no, buf, count, in_frame,
                          err);
  }
  else {
    struct fill_ctx ctx = { exp, src, frame, frame_no };
    struct ad_cache_entry *e;

    e = ad_cache_get (exp->cache, exp, frame_no, frame->usize, fill_frame,
                      &ctx, err);
    if (e == NULL)
      return -1;
    if (buf) {
      if (e->zero)
        memset (buf, 0, count);
      else
        memcpy (buf, e->data + in_frame, count);
    }
    ad_cache_put (exp->cache, e);
    return 0;
  }
}

static int
read_range (struct ad_export *exp, struct ad_source *src, char *buf,
            size_t count, uint64_t offset, struct ad_error *err)
{
  if (offset > exp->size || count > exp->size - offset)
    return ad_error_set (err, EINVAL, "read of %zu bytes at offset %"
                         PRIu64 " is past the end of the %" PRIu64
                         "-byte image", count, offset, exp->size);

  while (count > 0) {
    struct ad_frame frame;
    size_t frame_no, n;

    if (ad_index_find (exp->idx, src, offset, &frame, &frame_no,
                       emit_to_cache, exp, err) == -1)
      return -1;
    n = frame.uoff + frame.usize - offset;
    if (n > count)
      n = count;
    if (read_in_frame (exp, src, &frame, frame_no, buf, n, offset,
                       err) == -1)
      return -1;
    if (buf)
      buf += n;
    count -= n;
    offset += n;
  }
  return 0;
}

int
ad_export_pread (struct ad_export *exp, struct ad_source *src, void *buf,
                 size_t count, uint64_t offset, struct ad_error *err)
{
  return read_range (exp, src, buf, count, offset, err);
}

int
ad_export_prefetch (struct ad_export *exp, struct ad_source *src,
                    size_t count, uint64_t offset, struct ad_error *err)
{
  return read_range (exp, src, NULL, count, offset, err);
}

uint64_t
ad_export_largest_frame (struct ad_export *exp)
{
  struct ad_index *idx = exp->idx;
  uint64_t largest = 0;
  size_t i;

  if (idx == NULL)
    return 0;
  pthread_mutex_lock (&idx->lock);
  for (i = 0; i < idx->nframes; i++)
    if (idx->frames[i].usize > largest)
      largest = idx->frames[i].usize;
  pthread_mutex_unlock (&idx->lock);
  return largest;
}
