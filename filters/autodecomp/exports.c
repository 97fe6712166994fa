/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * nbdkit-autodecomp-filter: the exports, by name (see autodecomp.h).
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <time.h>
#include <pthread.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "format.h"
#include "export.h"

#include "autodecomp.h"

#define MAX_IDLE_EXPORTS 16
#define RETRY_DELAY_MIN 1000    /* ms */
#define RETRY_DELAY_MAX 16000   /* ms */

static pthread_mutex_t exports_lock = PTHREAD_MUTEX_INITIALIZER;
static struct named_export *exports;
static uint64_t export_clock;

/* Free e, after logging what its export did. */
static void
free_export (struct named_export *e)
{
  struct ad_export_stats st;

  if (e->exp) {
    ad_export_get_stats (e->exp, &st);
    if (st.fetcher)
      nbdkit_debug ("autodecomp: export '%s': %" PRIu64 " compressed reads "
                    "served from %" PRIu64 " large fetches (%" PRIu64
                    " of them ahead of the readers)", e->name, st.fetch_hits,
                    st.fetches, st.fetches_ahead);
    if (ad_export_index (e->exp))
      nbdkit_debug ("autodecomp: export '%s': %" PRIu64 " frame decodes "
                    "(%" PRIu64 " by read-ahead), %" PRIu64 " zero probes (%"
                    PRIu64 " proven by a frame seen before), "
                    "indexed %" PRIu64 " of %" PRIu64 " bytes in %zu "
                    "frames, %" PRIu64 " bytes decoded into the spill file",
                    e->name, st.index.frames_decoded, st.readahead_frames,
                    st.zero_probes, st.zero_memo_hits, st.index.indexed,
                    ad_export_size (e->exp), st.index.nframes,
                    st.spill_bytes);
  }
  ad_export_free (e->exp);
  pthread_mutex_destroy (&e->open_lock);
  pthread_mutex_destroy (&e->error_lock);
  free (e->failed);
  free (e->name);
  free (e);
}

/* The listed export called name, created (unopened) if there is none,
 * with one more user.
 */
struct named_export *
acquire_export (const char *name)
{
  struct named_export *e;

  pthread_mutex_lock (&exports_lock);
  for (e = exports; e; e = e->next)
    if (strcmp (e->name, name) == 0)
      break;
  if (e == NULL) {
    e = calloc (1, sizeof *e);
    if (e == NULL || (e->name = strdup (name)) == NULL) {
      pthread_mutex_unlock (&exports_lock);
      free (e);
      nbdkit_error ("autodecomp: out of memory");
      return NULL;
    }
    pthread_mutex_init (&e->open_lock, NULL);
    pthread_mutex_init (&e->error_lock, NULL);
    e->listed = true;
    e->next = exports;
    exports = e;
  }
  e->users++;
  pthread_mutex_unlock (&exports_lock);
  return e;
}

static void
unlist_locked (struct named_export *e)
{
  struct named_export **p;

  for (p = &exports; *p; p = &(*p)->next)
    if (*p == e) {
      *p = e->next;
      e->listed = false;
      return;
    }
}

/* One user fewer.  Frees e if it has left the list and this was its
 * last user, and the least recently used idle exports beyond
 * MAX_IDLE_EXPORTS.
 */
void
release_export (struct named_export *e)
{
  struct named_export *doomed = NULL, *p, *oldest;
  unsigned idle;

  pthread_mutex_lock (&exports_lock);
  e->users--;
  e->last_used = ++export_clock;
  if (!e->listed && e->users == 0) {
    e->next = doomed;
    doomed = e;
  }
  for (;;) {
    idle = 0;
    oldest = NULL;
    for (p = exports; p; p = p->next)
      if (p->users == 0) {
        idle++;
        if (oldest == NULL || p->last_used < oldest->last_used)
          oldest = p;
      }
    if (idle <= MAX_IDLE_EXPORTS)
      break;
    unlist_locked (oldest);
    oldest->next = doomed;
    doomed = oldest;
  }
  pthread_mutex_unlock (&exports_lock);

  /* Outside the lock: freeing waits for the export's decode jobs. */
  while (doomed) {
    p = doomed->next;
    free_export (doomed);
    doomed = p;
  }
}

static uint64_t
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/* Did the plugin below fail to open this export less than the retry
 * delay ago?  Then this connection fails at once, said at debug level
 * only (the cause was logged when it happened).  e is the export when
 * the caller holds it, else NULL and the export is looked up by name.
 */
bool
failing_at_once (struct named_export *e, const char *name)
{
  uint64_t now = now_ms (), left = 0;
  char why[AD_ERROR_MSG_MAX];

  pthread_mutex_lock (&exports_lock);
  if (e == NULL)
    for (e = exports; e; e = e->next)
      if (strcmp (e->name, name) == 0)
        break;
  if (e && e->retry_at > now) {
    left = e->retry_at - now;
    memcpy (why, e->why, sizeof why);
  }
  pthread_mutex_unlock (&exports_lock);
  if (left == 0)
    return false;
  nbdkit_debug ("autodecomp: export '%s': failing this connection at once: "
                "%s (the plugin is asked again in %.1f s)",
                name, why, left / 1000.0);
  return true;
}

/* The plugin below failed while export name was being opened: log why
 * and start (or double) the retry delay.  e is the export when the
 * caller holds it, else NULL.
 */
void
failed_below (struct named_export *e, const char *name, const char *why)
{
  struct named_export *held = e;
  uint64_t now = now_ms (), delay = RETRY_DELAY_MIN;

  if (e == NULL)
    e = acquire_export (name);
  if (e) {
    pthread_mutex_lock (&exports_lock);
    /* Failing again soon after the last failure: a longer delay. */
    if (e->retry_delay && now < e->retry_at + RETRY_DELAY_MAX) {
      delay = e->retry_delay * 2;
      if (delay > RETRY_DELAY_MAX)
        delay = RETRY_DELAY_MAX;
    }
    e->retry_delay = delay;
    e->retry_at = now + delay;
    snprintf (e->why, sizeof e->why, "%s", why);
    pthread_mutex_unlock (&exports_lock);
    if (held == NULL)
      release_export (e);
  }
  nbdkit_error ("autodecomp: export '%s': %s; connections to it in the "
                "next %" PRIu64 " s fail at once, without asking the "
                "plugin again", name, why, delay / 1000);
}

void
unlist_export (struct named_export *e)
{
  pthread_mutex_lock (&exports_lock);
  if (e->listed)
    unlist_locked (e);
  pthread_mutex_unlock (&exports_lock);
}

void
export_opened (struct named_export *e)
{
  pthread_mutex_lock (&exports_lock);
  e->retry_at = e->retry_delay = 0;
  pthread_mutex_unlock (&exports_lock);
}

void
free_exports (void)
{
  struct named_export *e, *next;

  for (e = exports; e; e = next) {
    next = e->next;
    free_export (e);
  }
  exports = NULL;
}
