/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * nbdkit-autodecomp-filter: serve a compressed image as the disk it
 * holds.
 *
 * This file is the glue between nbdkit and the format library in lib/:
 * it reads the parameters, opens one ad_export per export name (index,
 * spill) over the plugin below (next.c) and keeps one frame cache for
 * the whole process, and answers NBD requests from them.  It reads top
 * to bottom in the order nbdkit calls it.  exports.c keeps the exports
 * by name, shared by the connections to each.
 *
 * Raw images (no known magic, or autodecomp-format=raw) are passed
 * through: reads, size and extents go straight to the plugin.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <time.h>
#include <pthread.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "format.h"
#include "cache.h"
#include "export.h"

#include "autodecomp.h"

/* -D autodecomp.frames=1: log every frame decoded into the cache. */
NBDKIT_DLL_PUBLIC int autodecomp_debug_frames = 0;

/* Parameters. */
static enum ad_format format_param = AD_FORMAT_UNKNOWN;  /* auto */
static int64_t cache_size = 256 * 1024 * 1024;
static struct ad_options options;
static bool progressive = false;
static bool verify_offsets = false;
static int64_t readahead = -1;          /* -1: from the cache size. */
/* May a connection's read-ahead thread read from the plugin below (see
 * open_background)?  Not if the plugin serves one connection or one
 * request of all connections at a time; and if it serves one request
 * of each connection at a time, the connection's reads take turns.
 */
static bool background_ok, background_turns;
static char *index_path;                /* autodecomp-index. */

/* The frame cache and the decode workers, shared by every connection
 * and export.
 */
static struct ad_cache *cache;
static struct ad_pool *pool;

struct handle {
  char *exportname;
  struct named_export *export;  /* Set in prepare. */
  struct ad_reader *reader;     /* This connection's access pattern. */

  /* The read-ahead thread's way to the plugin (see open_background). */
  pthread_mutex_t bg_lock;
  bool bg_tried;
  bool bg_started;
  pthread_mutex_t turns;        /* Reads below take turns (if used). */
  struct next_source bg_ns;
  struct ad_source bg_src;
};

static void
autodecomp_load (void)
{
  nbdkit_debug ("autodecomp: version %s", PACKAGE_VERSION);
  ad_options_init (&options);
  options.keep_size = AD_DEFAULT_KEEP_SIZE;
}

static void
autodecomp_unload (void)
{
  free_exports ();
  ad_cache_free (cache);
  free (index_path);
}

static int
parse_size_param (const char *key, const char *value, uint64_t min,
                  uint64_t *out)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1)
    return -1;
  if ((uint64_t) r < min) {
    nbdkit_error ("%s must be at least %" PRIu64, key, min);
    return -1;
  }
  *out = r;
  return 0;
}

static int
parse_bool_param (const char *value, bool *out)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1)
    return -1;
  *out = r;
  return 0;
}

static int
autodecomp_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                   const char *key, const char *value)
{
  uint64_t u;

  if (strcmp (key, "autodecomp-format") == 0) {
    if (strcmp (value, "auto") == 0)
      format_param = AD_FORMAT_UNKNOWN;
    else {
      format_param = ad_format_from_name (value);
      if (format_param == AD_FORMAT_UNKNOWN) {
        nbdkit_error ("autodecomp-format: unknown format '%s' (expected "
                      "auto, gzip, xz, bzip2, zstd, lzip or raw)", value);
        return -1;
      }
    }
    return 0;
  }
  else if (strcmp (key, "autodecomp-cache-size") == 0) {
    if (parse_size_param (key, value, 0, &u) == -1)
      return -1;
    cache_size = u;
    return 0;
  }
  else if (strcmp (key, "autodecomp-max-frame") == 0)
    return parse_size_param (key, value, 1, &options.max_frame);
  else if (strcmp (key, "autodecomp-gzip-span") == 0)
    return parse_size_param (key, value, 32768, &options.gzip_span);
  else if (strcmp (key, "autodecomp-gzip-size") == 0) {
    if (strcmp (value, "trailer") == 0)
      options.gzip_trust_isize = true;
    else if (strcmp (value, "decode") == 0)
      options.gzip_trust_isize = false;
    else {
      nbdkit_error ("autodecomp-gzip-size: expected 'trailer' or 'decode', "
                    "not '%s'", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "autodecomp-size-check") == 0) {
    if (strcmp (value, "lazy") == 0)
      options.size_at_connect = false;
    else if (strcmp (value, "connect") == 0)
      options.size_at_connect = true;
    else {
      nbdkit_error ("autodecomp-size-check: expected 'lazy' or 'connect', "
                    "not '%s'", value);
      return -1;
    }
    return 0;
  }
  else if (strcmp (key, "autodecomp-index") == 0) {
    /* Absolute: nbdkit changes directory when it forks. */
    free (index_path);
    index_path = nbdkit_absolute_path (value);
    if (index_path == NULL)
      return -1;
    options.index_path = index_path;
    return 0;
  }
  else if (strcmp (key, "autodecomp-fetch-size") == 0)
    return parse_size_param (key, value, 0, &options.fetch_size);
  else if (strcmp (key, "autodecomp-keep-size") == 0)
    return parse_size_param (key, value, 0, &options.keep_size);
  else if (strcmp (key, "autodecomp-threads") == 0)
    return nbdkit_parse_unsigned (key, value, &options.threads);
  else if (strcmp (key, "autodecomp-readahead") == 0) {
    if (parse_size_param (key, value, 0, &u) == -1)
      return -1;
    readahead = u;
    return 0;
  }
  else if (strcmp (key, "autodecomp-progressive") == 0)
    return parse_bool_param (value, &progressive);
  else if (strcmp (key, "autodecomp-verify-offsets") == 0)
    return parse_bool_param (value, &verify_offsets);
  else
    return next (nxdata, key, value);
}

#define autodecomp_config_help \
  "autodecomp-format=auto|gzip|xz|bzip2|zstd|lzip|raw\n" \
  "                          Format (default: detected by magic bytes).\n" \
  "autodecomp-cache-size=SIZE  Decoded frame cache (default 256M).\n" \
  "autodecomp-max-frame=SIZE   Largest frame decoded (default 512M).\n" \
  "autodecomp-gzip-span=SIZE   Bytes between gzip checkpoints (default 1M).\n" \
  "autodecomp-gzip-size=trailer|decode\n" \
  "                          Size of one gzip member: from its trailer\n" \
  "                          (default) or by decoding it all at connect.\n" \
  "autodecomp-size-check=lazy|connect\n" \
  "                          A one-frame zstd or one-member gzip takes its\n" \
  "                          declared size, proven when decoding reaches the\n" \
  "                          end (default lazy), or proven at connect.\n" \
  "autodecomp-index=PATH       Keep the index in PATH (a file, or a\n" \
  "                          directory of one file per image) and load it\n" \
  "                          instead of indexing again.\n" \
  "autodecomp-fetch-size=SIZE  Compressed bytes read at once for a\n" \
  "                          sequential reader (default 16M, 0: exact).\n" \
  "autodecomp-keep-size=SIZE   Decoded bzip2 bytes the pass at connect\n" \
  "                          keeps in a temporary file for the reads\n" \
  "                          after it (default 4G, 0: none).\n" \
  "autodecomp-threads=N        Decode threads (default: CPUs).\n" \
  "autodecomp-readahead=SIZE   Decoded ahead of sequential readers\n" \
  "                          (default: a quarter of the cache, at most 64M).\n" \
  "autodecomp-progressive=BOOL Serve a frame's bytes before its check is\n" \
  "                          verified (default false).\n" \
  "autodecomp-verify-offsets=BOOL  Serve a BGZF or zstd frame only once\n" \
  "                          every frame before it has decoded (default false)."

static int
autodecomp_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

static int
autodecomp_get_ready (int thread_model)
{
  background_ok = thread_model >= NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
  background_turns = thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
  cache = ad_cache_new (cache_size);
  if (cache == NULL) {
    nbdkit_error ("autodecomp: cannot allocate the cache: %m");
    return -1;
  }
  if (readahead == -1) {
    readahead = cache_size / 4;
    if (readahead > 64 * 1024 * 1024)
      readahead = 64 * 1024 * 1024;
  }
  return 0;
}

/* Threads are started only now, after nbdkit has forked into the
 * background.
 */
static int
autodecomp_after_fork (nbdkit_backend *nxdata)
{
  struct ad_error err;

  ad_error_clear (&err);
  pool = ad_pool_new (options.threads, 0, &err);
  if (pool == NULL) {
    nbdkit_error ("autodecomp: %s", err.msg);
    return -1;
  }
  nbdkit_debug ("autodecomp: %u decode threads, cache %" PRIi64 " bytes, "
                "read-ahead %" PRIi64 " bytes", ad_pool_threads (pool),
                cache_size, readahead);
  return 0;
}

static void
autodecomp_cleanup (nbdkit_backend *nxdata)
{
  ad_pool_free (pool);
  pool = NULL;
}

static void *
autodecomp_open (nbdkit_next_open *next, nbdkit_context *nxdata,
                 int readonly, const char *exportname, int is_tls)
{
  struct handle *h;

  if (failing_at_once (NULL, exportname))
    return NULL;
  /* The export is read-only whatever the client asked for. */
  if (next (nxdata, 1, exportname) == -1) {
    failed_below (NULL, exportname,
                  "the plugin below could not open it (its error is above)");
    return NULL;
  }
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->exportname = strdup (exportname);
  if (h->exportname == NULL) {
    nbdkit_error ("strdup: %m");
    free (h);
    return NULL;
  }
  h->reader = ad_reader_new ();
  if (h->reader == NULL) {
    nbdkit_error ("calloc: %m");
    free (h->exportname);
    free (h);
    return NULL;
  }
  pthread_mutex_init (&h->bg_lock, NULL);
  pthread_mutex_init (&h->turns, NULL);
  return h;
}

/* The read-ahead thread reads through the connection's context, which
 * is valid until the connection is finalized: it stops before.
 */
static int
autodecomp_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  ad_reader_stop_background (h->reader);
  return 0;
}

static void
autodecomp_close (void *handle)
{
  struct handle *h = handle;

  ad_reader_stop_background (h->reader);
  pthread_mutex_destroy (&h->turns);
  pthread_mutex_destroy (&h->bg_lock);
  ad_reader_free (h->reader);
  if (h->export)
    release_export (h->export);
  free (h->exportname);
  free (h);
}

/* The connection's reads below, which take turns with its read-ahead
 * thread's where the plugin needs that.
 */
static void
source_of_connection (struct ad_source *src, struct next_source *ns,
                      nbdkit_next *next, struct handle *h)
{
  bool turns = background_turns &&
    __atomic_load_n (&h->bg_started, __ATOMIC_ACQUIRE);

  source_of_next (src, ns, next, turns ? &h->turns : NULL,
                  h->export->compressed_size);
}

static void
log_decode (void *opaque, size_t frame_no, const struct ad_frame *frame)
{
  struct named_export *e = opaque;

  if (autodecomp_debug_frames)
    nbdkit_debug ("autodecomp: decode frame %zu uoff=%" PRIu64
                  " usize=%" PRIu64 " coff=%" PRIu64 " csize=%" PRIu64
                  " (%s)", frame_no, frame->uoff, frame->usize,
                  frame->coff, frame->csize,
                  ad_format_name (ad_export_format (e->exp)));
}

/* Say once, visibly, when random reads will be slow, and how to fix
 * the image.
 */
static void
warn_if_not_seekable (struct named_export *e)
{
  uint64_t largest = ad_export_largest_frame (e->exp);
  const char *fix;

  if (largest <= AD_LARGE_FRAME)
    return;
  switch (ad_export_format (e->exp)) {
  case AD_FORMAT_XZ:
    fix = "'autodecomp prepare IMAGE OUTPUT.zst' (zstd frames with a "
      "seek table), or 'xz -T0 --block-size=16MiB'";
    break;
  case AD_FORMAT_LZIP:
    fix = "'autodecomp prepare IMAGE OUTPUT.zst' (zstd frames with a "
      "seek table), or 'plzip' (16 MiB members at -6)";
    break;
  default:
    fix = "'autodecomp prepare IMAGE OUTPUT.zst' (zstd frames with a "
      "seek table)";
  }
  nbdkit_error ("autodecomp: warning: this %s image is not seekable: it "
                "holds a frame of %" PRIu64 " bytes, which can only be "
                "decoded from its start.  Reads are served as soon as their "
                "bytes are decoded (kept in a temporary file), but a read far "
                "into the frame waits for everything before it.  Recompress "
                "it with %s", ad_format_name (ad_export_format (e->exp)),
                largest, fix);
}

/* Open the image into e (under e->open_lock).  On failure the error
 * is logged; a failure of the image itself is remembered in e, so that
 * later connections do not pay for the same pass again, while a
 * failure of the plugin below leaves e unopened, for a connection after
 * the retry delay to try again.
 */
static int
open_export (struct named_export *e, nbdkit_next *next, uint64_t size)
{
  struct next_source ns;
  struct ad_source src;
  struct ad_error err;
  const struct ad_export_config config = {
    .pool = pool,
    .progressive = progressive,
    .readahead = readahead,
    .verify_offsets = verify_offsets,
    .on_decode = log_decode,
    .on_decode_opaque = e,
  };
  struct ad_index *idx;

  e->compressed_size = size;
  source_of_next (&src, &ns, next, NULL, size);
  ad_error_clear (&err);
  e->exp = ad_export_open (&src, format_param, &options, cache, &config,
                           &err);
  if (e->exp == NULL) {
    if (err.transient)
      failed_below (e, e->name, err.msg);
    else {
      nbdkit_error ("autodecomp: %s", err.msg);
      if (err.errnum != ENOMEM && (e->failed = strdup (err.msg)) != NULL)
        e->opened = true;
    }
    return -1;
  }
  e->opened = true;
  idx = ad_export_index (e->exp);
  nbdkit_debug ("autodecomp: export '%s': %s, %" PRIu64 " bytes from %"
                PRIu64 " compressed, %zu frames indexed%s, "
                "%" PRIu64 " reads below", e->name,
                ad_format_name (ad_export_format (e->exp)),
                ad_export_size (e->exp), e->compressed_size,
                idx ? ad_index_nframes (idx) : 0,
                idx && !ad_index_complete (idx)
                ? " so far" : "", src.reads);
  if (idx) {
    struct ad_export_stats st;
    char note[AD_INDEX_NOTE_SIZE];

    ad_index_note (idx, note, sizeof note);
    if (note[0] && ad_index_refused (idx))
      nbdkit_error ("autodecomp: warning: persisted index: %s", note);
    else if (note[0])
      nbdkit_debug ("autodecomp: persisted index: %s", note);
    ad_export_get_stats (e->exp, &st);
    if (st.index.frames_kept > 0)
      nbdkit_debug ("autodecomp: export '%s': the pass kept %" PRIu64
                    " frames (%" PRIu64 " bytes) in a temporary file "
                    "(autodecomp-keep-size=%" PRIu64 ")", e->name,
                    st.index.frames_kept, st.index.bytes_kept,
                    options.keep_size);
  }
  warn_if_not_seekable (e);
  return 0;
}

static int
autodecomp_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;
  struct named_export *e;
  int64_t size;
  bool failed_before = false, ok;

  /* nbdkit checks our reads below against the size of this
   * connection's context, which it learns only when asked for it.
   */
  size = next->get_size (next);
  if (size == -1)
    return -1;

  for (;;) {
    e = acquire_export (h->exportname);
    if (e == NULL)
      return -1;
    pthread_mutex_lock (&e->open_lock);
    if (!e->opened || e->compressed_size == (uint64_t) size)
      break;
    /* The image has changed since this export was opened. */
    pthread_mutex_unlock (&e->open_lock);
    nbdkit_debug ("autodecomp: export '%s' is now %" PRIi64 " bytes, was %"
                  PRIu64 ": opening it again", h->exportname, size,
                  e->compressed_size);
    unlist_export (e);
    release_export (e);
  }
  if (e->opened)
    failed_before = e->exp == NULL;
  else if (!failing_at_once (e, h->exportname))
    open_export (e, next, size);
  ok = e->exp != NULL;
  pthread_mutex_unlock (&e->open_lock);

  if (!ok) {
    if (failed_before)
      nbdkit_error ("autodecomp: %s (as when an earlier connection opened "
                    "this export)", e->failed);
    release_export (e);
    return -1;
  }
  export_opened (e);
  h->export = e;
  return 0;
}

static bool
is_raw (struct handle *h)
{
  return ad_export_format (h->export->exp) == AD_FORMAT_RAW;
}

static int64_t
autodecomp_get_size (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (is_raw (h))
    return next->get_size (next);
  return ad_export_size (h->export->exp);
}

static int
autodecomp_can_write (nbdkit_next *next, void *handle)
{
  return 0;
}

static int
autodecomp_can_extents (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (is_raw (h))
    return next->can_extents (next);
  return 1;
}

static int
autodecomp_can_multi_conn (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
autodecomp_can_cache (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (is_raw (h))
    return next->can_cache (next);
  return NBDKIT_CACHE_NATIVE;
}

/* Fail a request with the library's error: logged at error level
 * unless it is the same as the last one logged for this export.
 */
static int
report (struct handle *h, struct ad_error *e, int *err)
{
  struct named_export *ne = h->export;
  bool again;

  pthread_mutex_lock (&ne->error_lock);
  again = strcmp (ne->last_error, e->msg) == 0;
  if (!again)
    memcpy (ne->last_error, e->msg, sizeof ne->last_error);
  pthread_mutex_unlock (&ne->error_lock);
  if (again)
    nbdkit_debug ("autodecomp: again: %s", e->msg);
  else
    nbdkit_error ("autodecomp: %s", e->msg);
  *err = e->errnum ? e->errnum : EIO;
  return -1;
}

/* Let the connection's read-ahead run in a thread of its own, which
 * reads through the connection's context below, once, on its first
 * read: the connection's requests then never wait for what is read
 * ahead of them (except for their turn, with a plugin that serves one
 * request of a connection at a time).  Without it, the requests read
 * ahead themselves.
 */
static void
open_background (struct handle *h, nbdkit_next *next)
{
  pthread_mutex_lock (&h->bg_lock);
  if (!h->bg_tried && background_ok) {
    source_of_next (&h->bg_src, &h->bg_ns, next,
                    background_turns ? &h->turns : NULL,
                    h->export->compressed_size);
    __atomic_store_n (&h->bg_started, true, __ATOMIC_RELEASE);
    ad_reader_set_background (h->reader, &h->bg_src);
  }
  __atomic_store_n (&h->bg_tried, true, __ATOMIC_RELEASE);
  pthread_mutex_unlock (&h->bg_lock);
}

static int
autodecomp_pread (nbdkit_next *next, void *handle, void *buf,
                  uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  struct next_source ns;
  struct ad_source src;
  struct ad_error e;

  if (is_raw (h))
    return next->pread (next, buf, count, offset, flags, err);

  if (!__atomic_load_n (&h->bg_tried, __ATOMIC_ACQUIRE))
    open_background (h, next);
  source_of_connection (&src, &ns, next, h);
  ad_error_clear (&e);
  if (ad_export_read (h->export->exp, h->reader, &src, buf, count, offset,
                      &e) == -1)
    return report (h, &e, err);
  return 0;
}

static int
add_extent (void *opaque, uint64_t offset, uint64_t length, bool zero)
{
  struct nbdkit_extents *extents = opaque;

  return nbdkit_add_extent (extents, offset, length,
                            zero ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO
                            : 0);
}

static int
autodecomp_extents (nbdkit_next *next, void *handle, uint32_t count,
                    uint64_t offset, uint32_t flags,
                    struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;
  struct next_source ns;
  struct ad_source src;
  struct ad_error e;

  if (is_raw (h))
    return next->extents (next, count, offset, flags, extents, err);

  source_of_connection (&src, &ns, next, h);
  ad_error_clear (&e);
  if (ad_export_extents (h->export->exp, &src, count, offset, add_extent,
                         extents, &e) == -1)
    return report (h, &e, err);
  return 0;
}

static int
autodecomp_cache (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;
  struct next_source ns;
  struct ad_source src;
  struct ad_error e;

  if (is_raw (h))
    return next->cache (next, count, offset, flags, err);

  source_of_connection (&src, &ns, next, h);
  ad_error_clear (&e);
  if (ad_export_prefetch (h->export->exp, &src, count, offset, &e) == -1)
    return report (h, &e, err);
  return 0;
}

static struct nbdkit_filter filter = {
  .name               = "autodecomp",
  .longname           = "nbdkit autodecomp filter " PACKAGE_VERSION,
  .load               = autodecomp_load,
  .unload             = autodecomp_unload,
  .config             = autodecomp_config,
  .config_help        = autodecomp_config_help,
  .thread_model       = autodecomp_thread_model,
  .get_ready          = autodecomp_get_ready,
  .after_fork         = autodecomp_after_fork,
  .cleanup            = autodecomp_cleanup,
  .open               = autodecomp_open,
  .close              = autodecomp_close,
  .prepare            = autodecomp_prepare,
  .finalize           = autodecomp_finalize,
  .get_size           = autodecomp_get_size,
  .can_write          = autodecomp_can_write,
  .can_extents        = autodecomp_can_extents,
  .can_multi_conn     = autodecomp_can_multi_conn,
  .can_cache          = autodecomp_can_cache,
  .pread              = autodecomp_pread,
  .extents            = autodecomp_extents,
  .cache              = autodecomp_cache,
};

NBDKIT_REGISTER_FILTER (filter)
