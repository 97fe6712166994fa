/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: what the parts of an export share (see export.h): the
 * whole struct ad_export and their own functions.  Only they include
 * it; users of the library include export.h.
 *
 *   export.c        the read path: open and free, readers, reads split
 *                   at frame boundaries and served from the cache or
 *                   the spill, extents, find;
 *   export-jobs.c   decode jobs: the frames a read misses, decoded in
 *                   its thread or by the pool's workers;
 *   export-ahead.c  read-ahead: decode jobs queued ahead of a
 *                   sequential reader;
 *   export-proof.c  offset proofs (autodecomp-verify-offsets).
 */
#ifndef AUTODECOMP_EXPORT_INT_H
#define AUTODECOMP_EXPORT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "export.h"
#include "format-int.h"
#include "spill.h"
#include "fetch.h"

/* The compressed bytes of a frame that decoded to all zeros, and what
 * else its decode depends on (see export-zero.c).
 */
#define ZERO_MEMOS 4

struct zero_memo {
  unsigned char *bytes;         /* frame.csize bytes, or NULL: unused. */
  struct ad_frame frame;
  uint64_t key[2];              /* See ad_index_frame_key. */
  uint64_t used;                /* Tick of the last match. */
};

/* One served image (see export.h). */
struct ad_export {
  enum ad_format format;
  uint64_t size;                /* Uncompressed size. */
  struct ad_index *idx;         /* NULL when raw. */
  struct ad_cache *cache;       /* Not owned. */
  struct ad_fetch *fetch;       /* Large reads for sequential readers
                                   (opts.fetch_size), or NULL. */

  pthread_mutex_t lock;
  struct ad_reader *readers;    /* Those that have read it (under lock). */
  struct ad_spill *spill;       /* Created at the first large read. */
  unsigned jobs;                /* Decode jobs in flight (under lock). */
  pthread_cond_t jobs_done;     /* Signalled when jobs drops to 0. */

  struct ad_export_config config; /* Given to ad_export_open. */

  /* Frames [0, verified) have decoded at least once (verify_offsets). */
  size_t verified;
  unsigned char *decoded_once;  /* Per frame, or NULL. */
  size_t decoded_once_len;

  /* Frames known all zeros by their bytes (export-zero.c). */
  pthread_mutex_t zero_lock;
  struct zero_memo zero_memo[ZERO_MEMOS];
  uint64_t zero_tick;

  /* Counters (updated atomically). */
  uint64_t readahead_frames;    /* Frames decoded by read-ahead. */
  uint64_t zero_probes;         /* Frames extents probed, */
  uint64_t zero_memo_hits;      /* of them found zeros by a memo. */
};

/* One reader of an export (see ad_reader_new). */
struct ad_reader {
  pthread_mutex_t lock;
  uint64_t start;               /* Where its sequential reads began. */
  uint64_t end;                 /* Highest end of a recent read. */
  unsigned streak;              /* Reads near end in a row. */
  unsigned inflight;            /* Its reads in the export now. */
  unsigned depth;               /* The most of them at once since its */
                                /* run began (a copy: tens; a guest: 1-4). */
  bool ran;                     /* It has been sequential once. */
  bool bulk;                    /* It has been a bulk reader once. */
  struct ad_export *exp;        /* The export it reads, once it has. */
  struct ad_reader *next;       /* In exp->readers. */

  /* Looking ahead (export-ahead.c), by one thread at a time. */
  pthread_mutex_t ahead_lock;
  size_t ahead;                 /* Read-ahead issued below this frame. */

  /* The read-ahead thread (see ad_reader_set_background). */
  struct ad_source *bg;         /* Its source, or NULL: no thread. */
  pthread_t thread;
  bool thread_started;
  pthread_cond_t cond;          /* With lock: work for the thread. */
  bool pending, quit;
  uint64_t pending_offset;      /* The read to look ahead of. */
  uint64_t pending_end;
};

/* export.c */

/* Serve [offset, offset + count) (buf NULL: only bring it into the
 * cache or the spill).
 */
extern int export_read_range (struct ad_export *exp,
                              struct ad_reader *reader,
                              struct ad_source *src, char *buf, size_t count,
                              uint64_t offset, bool prove,
                              struct ad_error *err);

/* export-zero.c */

/* Is the frame compressed so well that extents decode it to see
 * whether it is all zeros?
 */
extern bool export_probe_worth (const struct ad_frame *frame);

/* Set *zero if the frame is all zeros, decoding it into the cache
 * unless a memo proves it.  Returns 0, or -1 with err.
 */
extern int export_probe_zero (struct ad_export *exp, struct ad_source *src,
                              const struct ad_frame *frame, size_t frame_no,
                              bool *zero, struct ad_error *err);
extern void export_zero_init (struct ad_export *exp);
extern void export_zero_free (struct ad_export *exp);

/* export-jobs.c */

/* Frames per job are limited by their decoded and compressed sizes. */
#define JOB_MAX_OUTPUT (4 * 1024 * 1024ULL)
#define JOB_MAX_INPUT (16 * 1024 * 1024ULL)
#define JOB_MAX_FRAMES 64

/* A decode job (see export-jobs.c). */
struct job {
  struct ad_export *exp;
  bool ahead;                   /* Read-ahead (nobody waits yet). */
  size_t n;
  size_t frame_no[JOB_MAX_FRAMES];
  struct ad_frame frame[JOB_MAX_FRAMES];
  struct ad_cache_entry *entry[JOB_MAX_FRAMES];
  char *input;                  /* A buffer of the pool, or NULL. */
  size_t input_cap;
  const char *data;             /* The input: in input, or lent. */
  struct ad_loan *loan;
  uint64_t input_off;
  size_t input_len;
  uint64_t source_size;
};

/* A piece of a request: one frame, the entry that holds it (in-memory
 * frames), and what the reader wants from it.
 */
struct piece {
  struct ad_frame frame;
  size_t frame_no;
  struct ad_cache_entry *entry; /* NULL for a large (spill) frame. */
  bool created;
  uint64_t offset;              /* Uncompressed offset wanted. */
  size_t count;
  char *buf;                    /* Where it goes, or NULL. */
};

extern int export_submit_job (struct ad_export *exp, struct ad_source *src,
                              struct job *job, struct ad_error *err);
extern bool export_fits_job (const struct job *job,
                             const struct ad_frame *b);
extern void export_job_add (struct job *job, const struct ad_frame *frame,
                            size_t frame_no, struct ad_cache_entry *entry);
extern int export_start_pieces (struct ad_export *exp, struct ad_source *src,
                                struct piece *pieces, size_t n,
                                struct ad_error *err);

/* export-ahead.c */

/* Read-ahead is worth it when this reader keeps reading near where
 * its last reads ended (several requests in flight arrive in any
 * order).
 */
#define SEQ_SLACK (8 * 1024 * 1024ULL)
#define SEQ_STREAK 3

/* export_in_run: a read at offset continues reader's run of reads (it
 * lands near where its recent reads end).  export_sequential: reader is
 * sequential and the read at offset continues its run; a read
 * elsewhere begins a new run, which is not sequential yet.
 */
extern bool export_in_run (const struct ad_reader *reader, uint64_t offset);
extern bool export_sequential (const struct ad_reader *reader,
                               uint64_t offset);

/* A reader with this many reads in flight at once is a bulk reader
 * (nbdcopy keeps 64 in flight; a booting guest 1, at most 4), and so is
 * one whose run of reads has reached BULK_RUN bytes: where the plugin
 * below serves one request of a connection at a time (curl), nbdkit
 * hands the filter one at a time too, so a copy has one in flight.  A
 * guest reads its files in runs of a few MiB.
 */
#define BULK_DEPTH 8
#define BULK_RUN (16 * 1024 * 1024ULL)

/* Where reader's current run of reads starts and ends, as one pair:
 * export_note_read moves both (under reader->lock) when a read begins
 * a new run, and the start of a new run with the end of the one before
 * it may look like a run of hundreds of MiB (a bulk reader, for good).
 */
extern void export_reader_run (struct ad_reader *reader, uint64_t *start,
                               uint64_t *end);

/* Is reader's run of reads from start to end a bulk read (BULK_DEPTH
 * reads in flight, or BULK_RUN bytes)?  If it is, reader is marked as
 * having been a bulk reader (ad_reader.bulk), for good.
 */
extern bool export_bulk (struct ad_reader *reader, uint64_t start,
                         uint64_t end);

/* Does the read at offset fetch for a run of reads (see fetch.h)?  It
 * does if reader is sequential, and also where a reader that has read
 * in runs before, never with BULK_DEPTH reads in flight (a guest
 * reading files), reads elsewhere: that begins its next run, so its
 * first fetch reads at least FETCH_MIN, which the run's next reads
 * find.  A reader that has only read at random, and a bulk reader
 * (whose reads elsewhere are another part of a copy), read exactly
 * their frames there.
 */
extern bool export_fetches_run (const struct ad_reader *reader,
                                uint64_t offset);

/* How far past its run a reader with fewer reads in flight fetches, at
 * most (decoded bytes), and how far ahead of it read-ahead decodes (at
 * least one frame): a guest reads a file at 20-60 MB/s, so a round trip
 * and a decode take less than that, and what lies further has been
 * fetched and decoded for nothing where its run of reads ends (in a
 * boot from seekable zstd of 1 MiB frames, 8 MiB and 16 MiB fetched
 * 75 MiB below for the 38 MiB of frames it read; 4 MiB and 2 MiB, 58
 * MiB, with as many reads waiting on a round trip).
 */
#define INTERACTIVE_AHEAD (4 * 1024 * 1024ULL)
#define INTERACTIVE_WINDOW (2 * 1024 * 1024ULL)

/* Where the compressed bytes end that reader will read if its run of
 * reads, up to the furthest of them, goes on: for a bulk reader, for
 * eight times as long again, or two full read-ahead windows if that is
 * further; otherwise as long again, up to INTERACTIVE_AHEAD (see
 * ad_fetch_source.horizon; 0 if it reads at random).
 */
extern uint64_t export_fetch_horizon (struct ad_export *exp,
                                      struct ad_reader *reader,
                                      struct ad_source *src,
                                      uint64_t offset);
extern void export_note_read (struct ad_export *exp,
                              struct ad_reader *reader,
                              struct ad_source *src, uint64_t offset,
                              size_t count);

/* export-proof.c */

extern bool export_needs_proof (struct ad_export *exp);
extern void export_mark_decoded (struct ad_export *exp, size_t frame_no);
extern size_t export_verified_frames (struct ad_export *exp);
extern int export_prove_offset (struct ad_export *exp, struct ad_source *src,
                                size_t frame_no, struct ad_error *err);

#endif /* AUTODECOMP_EXPORT_INT_H */
