/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * nbdkit-autodecomp-filter: what the filter's files share.
 *
 * autodecomp.c is the filter (parameters, connections, requests);
 * exports.c keeps the exports by name; next.c reads the plugin below
 * as a source for the library.
 */
#ifndef AUTODECOMP_FILTER_H
#define AUTODECOMP_FILTER_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>

#include "error.h"
#include "export.h"

/* Exports (exports.c), by name, opened by the first connection that needs them
 * and shared by every connection to the same name.  Opening one (a
 * bzip2 sizing pass can take seconds) holds only that export's lock,
 * so connections to other exports go on meanwhile.
 *
 * An export lives while connections use it, and after that among the
 * MAX_IDLE_EXPORTS most recently used idle ones, so that reconnecting
 * does not index the image again while a server with many names (file
 * dir=) does not keep them all.  If the plugin reports a different
 * size for the image than when the export was opened, the image has
 * changed: the export leaves the list (the connections using it keep
 * it until they close) and the next connection opens a new one.
 *
 * When the plugin below fails while an export is opened (its own open,
 * e.g. the curl plugin against a web server without Range requests, or
 * a read of the image), the failure is logged once, and connections to
 * that export for the next RETRY_DELAY_MIN fail at once without asking
 * the plugin again: clients that reconnect in a loop do not make the
 * plugin log the same cause many times a second.  Each failure in a row
 * doubles the delay, up to RETRY_DELAY_MAX; an export that opens starts
 * over.
 */
struct named_export {
  char *name;
  pthread_mutex_t open_lock;    /* Held while the image is opened. */
  bool opened;                  /* Then exp or failed is set. */
  struct ad_export *exp;        /* NULL if the image could not be opened. */
  char *failed;                 /* Then why (not a failure below). */
  uint64_t compressed_size;
  /* The last error logged for a request, so that a request failing
   * again for the same reason (every read of the end of an image whose
   * declared size was wrong, say) is logged once at error level, then
   * at debug level.
   */
  pthread_mutex_t error_lock;
  char last_error[AD_ERROR_MSG_MAX];
  /* Under exports_lock: */
  uint64_t retry_at;            /* ms (now_ms): fail at once before it. */
  uint64_t retry_delay;         /* ms, after the last failure below. */
  char why[AD_ERROR_MSG_MAX];   /* That failure. */
  unsigned users;               /* Connections holding it. */
  uint64_t last_used;           /* export_clock when last released. */
  bool listed;                  /* In exports (else freed by the last user). */
  struct named_export *next;
};

/* The listed export called name, created (unopened) if there is none,
 * with one more user; NULL (logged) when out of memory.
 */
extern struct named_export *acquire_export (const char *name);

/* One user fewer (see exports.c). */
extern void release_export (struct named_export *e);

/* Take e off the list (the image has changed): the next connection to
 * its name opens a new export.
 */
extern void unlist_export (struct named_export *e);

/* e opened: connections no longer fail at once. */
extern void export_opened (struct named_export *e);

/* Did the plugin below fail to open this export less than the retry
 * delay ago?  Then this connection fails at once.  e is the export when
 * the caller holds it, else NULL.
 */
extern bool failing_at_once (struct named_export *e, const char *name);

/* The plugin below failed while export name was being opened: log why
 * and start (or double) the retry delay.  e as for failing_at_once.
 */
extern void failed_below (struct named_export *e, const char *name,
                          const char *why);

/* Free every export (the filter is unloaded). */
extern void free_exports (void);

/* The plugin below as a source: its context, and the lock that its
 * reads take turns on, or NULL.
 */
struct next_source {
  nbdkit_next *next;
  pthread_mutex_t *turns;
};

/* src reads the plugin below through ns (next.c), its reads taking
 * turns on turns when that is not NULL.
 */
extern void source_of_next (struct ad_source *src, struct next_source *ns,
                            nbdkit_next *next, pthread_mutex_t *turns,
                            uint64_t size);

#endif /* AUTODECOMP_FILTER_H */
