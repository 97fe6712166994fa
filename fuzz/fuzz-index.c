/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: libFuzzer target for the persisted index loader
 * (lib/persist.c and the formats' load functions).
 *
 * Six small images are made in memory at start, of the formats that
 * keep a persisted index: zstd frames (one of them without a content
 * checksum, so its compressed bytes are hashed), two bzip2 streams of
 * several blocks, BGZF members, one plain gzip member cut into spans
 * (its checkpoints kept as restorable points), one gzip member of 16
 * MiB indexed as reads go, whose index is kept partial (after four
 * spans), and three gzip members of the same size (whole members).
 * The input's first byte picks the image (its low bits), the rest is
 * taken as an index file for it; with bit 7 of that byte set, the
 * file's checksum is made right first, so that mutations reach the
 * field checks and the formats' load functions instead of stopping at
 * the checksum.
 * Whatever the file says, loading it must not crash, and if it is
 * accepted, every byte of the image read through it must be the
 * image's own or an error: never a wrong byte.  A partial index is
 * also extended by one frame (the pass going on from its end), which
 * must hold the image's bytes or fail.
 *
 * With AD_FUZZ_WRITE_SEEDS=DIR in the environment the target writes
 * the valid index file of each image to DIR (the seeds in
 * fuzz/seeds/index) and exits.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#include <zstd.h>
#include <xxhash.h>
#include <bzlib.h>
#include <libdeflate.h>

#include "format-int.h"
#include "persist.h"

#define NIMAGES 6

struct image {
  enum ad_format format;
  unsigned char *comp;
  size_t clen;
  unsigned char *data;
  size_t dlen;
  struct ad_buf index;          /* The valid index file. */
};

static struct image images[NIMAGES];

/* Compressible, deterministic data: words from a small table. */
static unsigned char *
make_data (size_t n, uint32_t seed)
{
  static const char *words[] = { "alpha ", "beta ", "gamma\n", "delta ",
                                 "\0\0\0\0\0\0\0\0", "epsilon " };
  unsigned char *d = malloc (n);
  size_t i = 0;

  if (d == NULL)
    abort ();
  while (i < n) {
    const char *w;
    size_t len, k;

    seed = seed * 1103515245 + 12345;
    w = words[(seed >> 16) % 6];
    len = (seed >> 16) % 6 == 4 ? 8 : strlen (w);
    for (k = 0; k < len && i < n; k++)
      d[i++] = w[k];
  }
  return d;
}

static void
append (struct image *im, const void *p, size_t n)
{
  im->comp = realloc (im->comp, im->clen + n);
  if (im->comp == NULL)
    abort ();
  memcpy (im->comp + im->clen, p, n);
  im->clen += n;
}

/* zstd: four 16 KiB frames, the third without a content checksum. */
static void
make_zstd (struct image *im)
{
  ZSTD_CCtx *cctx = ZSTD_createCCtx ();
  unsigned char out[ZSTD_COMPRESSBOUND (16384)];
  int i;

  im->format = AD_FORMAT_ZSTD;
  im->dlen = 4 * 16384;
  im->data = make_data (im->dlen, 1);
  for (i = 0; i < 4; i++) {
    size_t n;
    ZSTD_CCtx_reset (cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter (cctx, ZSTD_c_checksumFlag, i != 2);
    n = ZSTD_compress2 (cctx, out, sizeof out, im->data + i * 16384, 16384);
    if (ZSTD_isError (n))
      abort ();
    append (im, out, n);
  }
  ZSTD_freeCCtx (cctx);
}

/* bzip2: two streams of 250 kB at level 1 (100 kB blocks). */
static void
make_bzip2 (struct image *im)
{
  unsigned int half = 250000, n;
  unsigned char *out = malloc (300000);
  int i;

  im->format = AD_FORMAT_BZIP2;
  im->dlen = 2 * half;
  im->data = make_data (im->dlen, 2);
  for (i = 0; i < 2; i++) {
    n = 300000;
    if (out == NULL ||
        BZ2_bzBuffToBuffCompress ((char *) out, &n,
                                  (char *) im->data + i * half, half,
                                  1, 0, 0) != BZ_OK)
      abort ();
    append (im, out, n);
  }
  free (out);
}

/* BGZF: 60000-byte members, then the empty end-of-file member. */
static void
make_bgzf (struct image *im)
{
  struct libdeflate_compressor *c = libdeflate_alloc_compressor (6);
  unsigned char member[65536];
  size_t off;

  im->format = AD_FORMAT_GZIP;
  im->dlen = 200000;
  im->data = make_data (im->dlen, 3);
  for (off = 0; off <= im->dlen; off += 60000) {
    size_t n = im->dlen - off < 60000 ? im->dlen - off : 60000, clen, msize;
    static const unsigned char head[16] = {
      0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, 'B', 'C', 2, 0
    };
    uint32_t crc = libdeflate_crc32 (0, im->data + off, n);

    memcpy (member, head, 16);
    clen = libdeflate_deflate_compress (c, im->data + off, n, member + 18,
                                        sizeof member - 26);
    if (clen == 0)
      abort ();
    msize = 18 + clen + 8;
    member[16] = (msize - 1) & 0xff;
    member[17] = (msize - 1) >> 8;
    ad_put_le32 (member + 18 + clen, crc);
    ad_put_le32 (member + 18 + clen + 4, n);
    append (im, member, msize);
    if (n == 0)
      break;
  }
  libdeflate_free_compressor (c);
}

/* One gzip member of size bytes of make_data (seed). */
static void
make_gzip_member (struct image *im, size_t size, uint32_t seed)
{
  struct libdeflate_compressor *c = libdeflate_alloc_compressor (6);
  size_t bound;

  im->format = AD_FORMAT_GZIP;
  im->dlen = size;
  im->data = make_data (im->dlen, seed);
  bound = libdeflate_gzip_compress_bound (c, im->dlen);
  im->comp = malloc (bound);
  if (c == NULL || im->comp == NULL)
    abort ();
  im->clen = libdeflate_gzip_compress (c, im->data, im->dlen, im->comp,
                                       bound);
  if (im->clen == 0)
    abort ();
  libdeflate_free_compressor (c);
}

/* One gzip member of 300000 bytes: with 64 KiB spans (see
 * init_options), five spans, four of them at restorable points.
 */
static void
make_gzip (struct image *im)
{
  make_gzip_member (im, 300000, 4);
}

/* One gzip member of 16 MiB + 1 byte (the trailer then gives the size:
 * indexed as reads go), whose index is saved partial, after 4 spans.
 */
#define LAZY_SIZE (16 * 1024 * 1024 + 1)
#define LAZY_SPANS 4

static void
make_gzip_lazy (struct image *im)
{
  make_gzip_member (im, LAZY_SIZE, 5);
}

/* Three gzip members of 20000 bytes each: frames that are whole
 * members, each checked by its own CRC32 only.
 */
static void
make_gzip_members (struct image *im)
{
  struct image m;
  int i;

  memset (&m, 0, sizeof m);
  im->format = AD_FORMAT_GZIP;
  im->dlen = 0;
  im->data = NULL;
  for (i = 0; i < 3; i++) {
    make_gzip_member (&m, 20000, 6 + i);
    append (im, m.comp, m.clen);
    im->data = realloc (im->data, im->dlen + m.dlen);
    if (im->data == NULL)
      abort ();
    memcpy (im->data + im->dlen, m.data, m.dlen);
    im->dlen += m.dlen;
    free (m.comp);
    free (m.data);
  }
}

static void
init_options (struct ad_options *opts)
{
  ad_options_init (opts);
  opts->max_frame = 4 * 1024 * 1024;
  opts->gzip_span = 65536;
  opts->threads = 1;
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  const char *seeds = getenv ("AD_FUZZ_WRITE_SEEDS");
  int i;

  make_zstd (&images[0]);
  make_bzip2 (&images[1]);
  make_bgzf (&images[2]);
  make_gzip (&images[3]);
  make_gzip_lazy (&images[4]);
  make_gzip_members (&images[5]);
  for (i = 0; i < NIMAGES; i++) {
    struct image *im = &images[i];
    struct ad_source src;
    struct ad_options opts;
    struct ad_error err;
    struct ad_index *idx;

    init_options (&opts);
    ad_source_init_mem (&src, im->comp, im->clen);
    idx = ad_index_open (im->format, &src, &opts, &err);
    if (idx && !ad_index_complete (idx)) {
      struct ad_frame f;
      size_t frame_no;

      if (ad_index_find (idx, &src, (LAZY_SPANS - 1) * opts.gzip_span, &f,
                         &frame_no, NULL, NULL, &err) == -1 ||
          ad_index_complete (idx)) {
        fprintf (stderr, "fuzz-index: image %d: no partial index\n", i);
        abort ();
      }
    }
    if (idx == NULL || ad_index_save_bytes (idx, &src, &im->index) == -1) {
      fprintf (stderr, "fuzz-index: image %d: %s\n", i,
               idx ? idx->index_note : err.msg);
      abort ();
    }
    ad_index_free (idx);
    if (seeds) {
      char name[4096];
      FILE *f;

      snprintf (name, sizeof name, "%s/image%d.adindex", seeds, i);
      f = fopen (name, "wb");
      if (f == NULL)
        abort ();
      fputc (i | 0x80, f);     /* Mutations keep a good checksum. */
      fwrite (im->index.data, 1, im->index.len, f);
      fclose (f);
    }
  }
  if (seeds)
    exit (0);
  return 0;
}

/* Read the whole image through the loaded index, one frame at a time:
 * each frame either fails or decodes to the image's own bytes.
 */
static void
read_all (struct image *im, struct ad_index *idx, struct ad_source *src)
{
  size_t i, n = ad_index_nframes (idx);

  for (i = 0; i < n; i++) {
    struct ad_frame f;
    struct ad_error err;
    unsigned char *buf;

    ad_index_get_frame (idx, i, &f);
    if (f.usize > idx->opts.max_frame)
      continue;
    buf = malloc (f.usize ? f.usize : 1);
    if (buf == NULL)
      abort ();
    if (ad_index_decode_frame (idx, src, &f, i, buf, &err) == 0 &&
        (f.uoff + f.usize > im->dlen ||
         memcmp (buf, im->data + f.uoff, f.usize) != 0)) {
      fprintf (stderr, "fuzz-index: frame %zu served wrong bytes\n", i);
      abort ();
    }
    free (buf);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct image *im;
  struct ad_source src;
  struct ad_options opts;
  struct ad_error err;
  struct ad_index *idx;

  unsigned char *file;

  if (size < 1)
    return 0;
  im = &images[(data[0] & 0x7f) % NIMAGES];
  file = malloc (size);
  if (file == NULL)
    abort ();
  memcpy (file, data + 1, size - 1);
  if ((data[0] & 0x80) && size - 1 >= 16) {
    uint64_t h = XXH64 (file, size - 1 - 8, 0);
    ad_put_le32 (file + size - 1 - 8, h);
    ad_put_le32 (file + size - 1 - 4, h >> 32);
  }
  init_options (&opts);
  ad_source_init_mem (&src, im->comp, im->clen);
  idx = ad_index_new (im->format, &opts, &err);
  if (idx == NULL)
    abort ();
  if (ad_index_load_bytes (idx, &src, "input", file, size - 1,
                           &err) == 1) {
    read_all (im, idx, &src);
    /* A partial index: the pass goes on from its end, for one frame. */
    if (!ad_index_complete (idx)) {
      struct ad_frame f;
      size_t frame_no, n = ad_index_nframes (idx);

      ad_index_get_frame (idx, n - 1, &f);
      if (ad_index_find (idx, &src, f.uoff + f.usize, &f, &frame_no, NULL,
                         NULL, &err) == 0)
        read_all (im, idx, &src);
    }
  }
  ad_index_free (idx);
  free (file);
  return 0;
}
