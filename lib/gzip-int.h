/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: gzip images, what the parts of the format share (see
 * gzip.c for the format and how it is indexed).
 *
 *   gzip.c          member headers, open, advance, close, the format's
 *                   operations;
 *   gzip-isal.c     ISA-L's inflate: calls, snapshots of its state,
 *                   input buffers;
 *   gzip-pass.c     the sequential inflate pass (GZ_LAZY and GZ_FULL)
 *                   with its checkpoints and collected frames;
 *   gzip-probe.c    the BGZF member walk (GZ_BGZF) and the test for one
 *                   member whose trailer gives the size (GZ_LAZY);
 *   gzip-decode.c   the decoder of one index frame;
 *   gzip-points.c   restorable points: the scan that finds them;
 *   gzip-persist.c  the persisted index, and partial indexes of GZ_LAZY
 *                   with the pass that goes on from one.
 */
#ifndef AUTODECOMP_GZIP_INT_H
#define AUTODECOMP_GZIP_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <pthread.h>

#include <zlib.h>
#include <libdeflate.h>
#include <isa-l/igzip_lib.h>
#include <zstd.h>

#include "format-int.h"
#include "window.h"

/* ISA-L and zlib count their input in 32 bits: the most bytes of a
 * window given to them at a time.
 */
#define GZ_INPUT_MAX (1024 * 1024 * 1024)

#define NAME_MAX_LEN 65536              /* FNAME, FCOMMENT incl. NUL. */
#define HEADER_MAX (10 + 2 + 65535 + 2 * NAME_MAX_LEN + 2)
#define MEMBER_MIN 20                   /* 10 + 2 (empty block) + 8. */
#define MAX_RATIO 1032                  /* Deflate's output per byte. */
#define SNAP_HEAD offsetof (struct inflate_state, tmp_out_buffer)
#define SNAP_MAX sizeof (struct inflate_state)
#define INFLATE_MAX (1U << 30)          /* Bytes per inflate call. */
#define WINDOW_SIZE 32768               /* Deflate's history. */
#define LD_POOL_MAX 16                  /* Idle libdeflate decoders kept. */

#define FLG_FTEXT 1
#define FLG_FHCRC 2
#define FLG_FEXTRA 4
#define FLG_FNAME 8
#define FLG_FCOMMENT 16
#define FLG_RESERVED 0xe0

/* Frame aux: a whole member (header to trailer), no checkpoint. */
#define AUX_WHOLE UINT64_MAX
#define NO_CKPT SIZE_MAX

/* A checkpoint: where a span starts.  Either a member header
 * (at_header), or a snapshot of the inflate state (see gz_snap_take) with
 * the file offset where its input goes on, or a restorable point
 * (is_point, from a persisted index: see "Restorable points" in
 * gzip-points.c)
 * whose block boundary is at bit bits of byte coff.  span_crc is the
 * CRC32 of the span's output, set when the span is complete.
 */
struct gz_ckpt {
  uint64_t coff;                /* Header, next input byte, or point. */
  unsigned char *snap;          /* zstd-compressed. */
  uint32_t snap_len;            /* Compressed, */
  uint32_t snap_raw;            /* and as a state. */
  uint32_t span_crc;
  bool at_header;
  bool is_point;
  uint8_t bits;                 /* Point: bits of byte coff before it. */
  uint64_t skip;                /* Point: output from it to the span. */
  unsigned char *win;           /* Point: the window, zstd-compressed, */
  uint32_t win_len, win_raw;    /* its size so, and as output. */
};

/* Input for an inflate state: a buffer holding the file's bytes
 * [base, base + len), read from the source up to end.  The state's
 * next_in and avail_in point into it.
 */

/* The sequential inflate pass (GZ_LAZY and GZ_FULL). */
enum pass_state { PS_HEADER, PS_DATA, PS_DONE };

struct gz_pass {
  bool lazy;                    /* GZ_LAZY: append frames, one member,
                                   keeping each span's bytes for emit. */
  uint64_t limit;               /* GZ_LAZY: the size from the trailer. */
  uint64_t span;                /* Output per span. */

  struct inflate_state *st;
  struct ad_window in;          /* The file, in AD_WINDOW_CHUNK reads. */
  ZSTD_CCtx *cctx;              /* Compresses snapshots, */
  unsigned char *zbuf;          /* into this (gz_snap_take). */

  unsigned char *out;           /* Output: the span (lazy) or a ring. */
  size_t out_alloc, out_pos;
  unsigned char past;           /* Where a byte past the size goes. */

  enum pass_state state;
  uint64_t members;
  uint64_t member_coff;
  uint64_t member_usize;
  uint32_t member_crc;          /* Of the spans before this one. */

  uint64_t uoff;                /* Output so far. */
  uint64_t span_uoff, span_len;
  uint32_t span_crc;
  size_t span_ckpt;             /* NO_CKPT: the span starts a member. */

  /* GZ_LAZY: where the current span started, to resume there after a
   * failure (see gz_pass_rewind).  resume_ckpt is NO_CKPT while the pass
   * is in its first span (resume from the start of the file).
   */
  bool broken;                  /* Failed: rewind before going on. */
  size_t resume_ckpt;
  uint64_t resume_uoff;
  uint32_t resume_member_crc;
  uint64_t resume_member_usize;
};

enum gz_kind { GZ_BGZF, GZ_LAZY, GZ_FULL };

struct pt_scan;

struct gz_priv {
  enum gz_kind kind;
  pthread_mutex_t lock;         /* Protects ckpts, nckpts, ckpts_alloc, */
                                /* lds, nlds. */
  struct libdeflate_decompressor *lds[LD_POOL_MAX];  /* Idle ones. */
  size_t nlds;
  struct gz_ckpt *ckpts;
  size_t nckpts, ckpts_alloc;
  uint64_t snap_bytes;          /* Held by checkpoints. */

  struct gz_pass *pass;         /* GZ_LAZY while indexing. */
  uint64_t appended;            /* GZ_LAZY: output covered by frames. */

  struct ad_frame *coll;        /* Frames collected before appending. */
  size_t ncoll, coll_alloc;

  struct ad_error save_err;     /* Why gz_save failed. */

  /* GZ_LAZY with a persisted index (see "Partial indexes" in
   * gzip-persist.c).
   */
  struct gz_ckpt *pts;          /* The points found so far, by */
  size_t pts_alloc;             /* checkpoint number, */
  struct pt_scan *scan;         /* by this scan, which goes on */
  size_t scan_next;             /* at this frame. */
  uint64_t saved_upto;          /* Output the file written covers. */
  bool resume;                  /* Loaded partial: no pass yet. */
  uint32_t loaded_crc;          /* Its member CRC32 so far. */
};

/* A parsed member header. */
struct gz_header {
  size_t len;                   /* Bytes up to the deflate data. */
  bool bgzf;                    /* Has the BC subfield. */
  uint32_t bsize;
};

/* gzip.c */

/* Parse the member header at p (see there). */
extern int gz_parse_header (const unsigned char *p, size_t avail, uint64_t off,
                            struct gz_header *h, struct ad_error *err);

/* gzip-isal.c */

/* ISA-L's inflate: a fresh raw inflate, one call, an error named. */
extern void gz_isal_start (struct inflate_state *st);

extern int gz_isal_call (struct inflate_state *st);

extern const char *gz_isal_msg (int r);

/* Snapshots of the inflate state, taken and put back. */
extern int gz_snap_take (struct gz_pass *P, struct gz_ckpt *ck,
                         struct ad_error *err);

extern int gz_snap_restore (struct inflate_state *st, const struct gz_ckpt *ck,
                            struct ad_error *err);

/* Input buffers: the file offset of next_in, fill, seek, and where
 * a finished deflate stream ends.
 */
extern uint64_t gz_input_pos (const struct ad_window *in,
                              const struct inflate_state *st);

extern int gz_input_fill (struct ad_window *in, struct inflate_state *st,
                          struct ad_source *src, size_t want,
                          struct ad_error *err);

extern void gz_input_seek (struct ad_window *in, struct inflate_state *st,
                           uint64_t pos);

extern uint64_t gz_input_stream_end (const struct ad_window *in,
                                     const struct inflate_state *st);

/* gzip-pass.c */

/* Add a checkpoint to priv->ckpts; *i gets its number. */
extern int gz_ckpt_add (struct gz_priv *priv, const struct gz_ckpt *ck,
                        size_t *i, struct ad_error *err);

/* Collected frames, appended once the size is known. */
extern int gz_coll_push (struct gz_priv *priv, const struct ad_frame *f,
                         struct ad_error *err);

extern int gz_coll_append_all (struct ad_index *idx, struct gz_priv *priv,
                               uint64_t size, struct ad_error *err);

/* The pass. */
extern uint64_t gz_pass_pos (const struct gz_pass *P);

extern int gz_pass_fill (struct gz_pass *P, struct ad_source *src, size_t want,
                         struct ad_error *err);

extern void gz_pass_free (struct gz_pass *P);

extern struct gz_pass *gz_pass_new (struct ad_index *idx,
                                    struct ad_source *src, bool lazy,
                                    uint64_t span, unsigned char *buf,
                                    size_t n, struct ad_error *err);

extern int gz_pass_step (struct gz_priv *priv, struct ad_index *idx,
                         struct gz_pass *P, struct ad_source *src,
                         ad_emit_fn *emit, void *opaque, struct ad_error *err);

extern int gz_pass_rewind (struct gz_priv *priv, struct gz_pass *P,
                           struct ad_source *src, struct ad_error *err);

/* GZ_FULL: the whole pass at open. */
extern int gz_sizing_pass (struct ad_index *idx, struct gz_priv *priv,
                           uint64_t span, struct ad_source *src,
                           unsigned char *buf, size_t n, struct ad_error *err);

/* The span of a pass (size: GZ_LAZY's, else 0). */
extern uint64_t gz_pass_span (const struct ad_index *idx, uint64_t size);

/* gzip-probe.c */

/* GZ_LAZY: is the file one member whose trailer gives the size? */
extern int gz_single_member_size (struct ad_source *src, unsigned char *buf,
                                  size_t n, const struct gz_header *h,
                                  bool trust_isize, bool scan_all,
                                  uint64_t *size, struct ad_error *err);

/* GZ_BGZF: walk the member headers. */
extern int gz_bgzf_index (struct ad_index *idx, struct gz_priv *priv,
                          struct ad_source *src, const unsigned char *buf,
                          size_t n, struct ad_error *err);

/* gzip-decode.c */

/* A decoder of one frame. */
struct gz_decoder {
  struct gz_priv *priv;
  struct ad_frame f;
  bool whole;                   /* Header to trailer; check the trailer. */
  bool at_header;               /* Starts with a member header. */
  struct gz_ckpt ck;             /* Else: the checkpoint. */
  uint32_t want_crc;            /* Of the span (not whole). */

  struct inflate_state *st;
  bool started, ended, failed;
  struct ad_window in;          /* The frame's range. */
  uint64_t done;
  uint32_t crc;
};

/* The file offset of the decoder's next input byte. */
extern uint64_t gz_dec_pos (const struct gz_decoder *d);

/* The window of a point, decompressed (WINDOW_SIZE bytes). */
extern int gz_point_window (const struct gz_ckpt *ck, unsigned char *buf,
                            struct ad_error *err);

/* The format's decoder operations. */
extern int gz_decoder_new (struct ad_index *idx, const struct ad_frame *frame,
                           size_t frame_no, void **decoder,
                           struct ad_error *err);

extern ssize_t gz_decoder_read (void *decoder, struct ad_source *src,
                                void *out, size_t count, struct ad_error *err);

extern void gz_decoder_free (void *decoder);

/* gzip-points.c */

/* A member's scan: zlib reads the file through in. */
struct pt_scan {
  struct ad_source *src;
  z_stream zs;
  bool zs_ready;
  struct ad_window in;
  unsigned char *out;           /* WINDOW_SIZE + POINT_OUT bytes. */
  size_t opos;
  uint64_t total;               /* Member output so far. */
  uint64_t b_off, b_out;        /* The last block boundary seen, */
  uint8_t b_bits;
  unsigned char win[WINDOW_SIZE];  /* and its window. */
  size_t win_len;
  ZSTD_CCtx *cctx;
};

/* A scan: made, freed, started at a member header or a point. */
extern struct pt_scan *gz_scan_new (struct ad_source *src,
                                    struct ad_error *err);

extern void gz_scan_free (struct pt_scan *S);

extern int gz_scan_at_header (struct pt_scan *S, uint64_t coff,
                              struct ad_error *err);

extern int gz_scan_at_point (struct pt_scan *S, const struct gz_ckpt *ck,
                             uint64_t rel, struct ad_error *err);

/* The points of a member's spans (see there). */
extern int gz_scan_frames (struct pt_scan *S, const struct ad_frame *m,
                           const struct ad_frame *f, size_t from, size_t to,
                           struct gz_ckpt *pts, struct ad_error *err);

/* Is the frame a span, its checkpoint in the table? */
extern bool gz_frame_has_ckpt (const struct gz_priv *priv,
                               const struct ad_frame *f);

/* The points of every span that starts at a snapshot. */
extern int gz_scan_all (struct ad_index *idx, struct gz_priv *priv,
                        struct ad_source *src, struct gz_ckpt *pts,
                        struct ad_error *err);

/* gzip-persist.c */

/* Forget the points of a complete GZ_LAZY index. */
extern void gz_lazy_points_free (struct gz_priv *priv);

/* GZ_LAZY after loading a partial index: start the pass. */
extern int gz_pass_resume (struct ad_index *idx, struct gz_priv *priv,
                           struct ad_source *src, struct ad_error *err);

/* The format's save and load operations. */
extern int gz_save (struct ad_index *idx, struct ad_source *src,
                    struct ad_buf *out, const char **why);

extern int gz_load (struct ad_index *idx, struct ad_cursor *in,
                    uint64_t file_size);

#endif /* AUTODECOMP_GZIP_INT_H */
