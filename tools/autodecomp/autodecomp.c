/* autodecomp: the command line companion of nbdkit's autodecomp filter.
 *
 *   autodecomp info [--json] [--frames] IMAGE
 *   autodecomp prepare [OPTIONS] IMAGE OUTPUT
 *
 * info opens an image with the same library, options and index as the
 * filter does at connect, and says what a random read of it will cost:
 * how many bytes it decodes and reads below, and whether the image
 * seeks well.
 *
 * prepare reads any image the filter serves (compressed or raw), frame
 * by frame through the same library, and writes it again in a shape
 * that seeks well: zstd frames followed by a seek table (the zstd
 * seekable format), xz blocks, or BGZF members.  With --verify it then
 * opens what it wrote and compares every byte with the input.
 *
 * The tool knows nothing of the formats' insides beyond what lib/
 * gives every user of the library; all of it lives there.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <zstd.h>
#include <lzma.h>
#include <libdeflate.h>
#ifdef HAVE_LIBNBD
#include <libnbd.h>
#endif

#include "export.h"

#define PROGRAM "autodecomp"
#define MiB (1024 * 1024ULL)

/* Decoded data the tool keeps in memory while it reads an image. */
#define TOOL_CACHE (64 * MiB)

/* Bytes handed from the reader to a writer at a time. */
#define PIECE (1 * MiB)

/* What info calls a cheap random read: the decode it costs on average. */
#define SEEKS_WELL (4 * MiB)
#define SEEKS_FAIRLY (32 * MiB)

/* An image opened as the filter opens it. */
struct image {
  const char *path;
  int fd;                       /* A local file, */
#ifdef HAVE_LIBNBD
  struct nbd_handle *nbd;       /* or a URL, read over NBD. */
#endif
  struct ad_source src;
  struct ad_cache *cache;
  struct ad_export *exp;
  struct ad_pool *pool;         /* Decode workers, once reading starts. */
  double open_seconds;
};

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
image_close (struct image *im)
{
  /* The export waits for its decode jobs, so the workers go after it. */
  ad_export_free (im->exp);
  ad_pool_free (im->pool);
  im->pool = NULL;
  ad_cache_free (im->cache);
  if (im->fd >= 0)
    close (im->fd);
#ifdef HAVE_LIBNBD
  if (im->nbd)
    nbd_close (im->nbd);
  im->nbd = NULL;
#endif
  im->exp = NULL;
  im->cache = NULL;
  im->fd = -1;
}

#ifdef HAVE_LIBNBD
/* Reads over NBD go in pieces every server accepts. */
#define NBD_PIECE (4 * MiB)

static int
nbd_source_pread (void *opaque, void *buf, size_t count, uint64_t offset,
                  struct ad_error *err)
{
  struct nbd_handle *nbd = opaque;
  char *p = buf;

  while (count > 0) {
    size_t n = count < NBD_PIECE ? count : NBD_PIECE;

    if (nbd_pread (nbd, p, n, offset, 0) == -1) {
      int e = nbd_get_errno ();

      ad_error_set (err, e ? e : EIO, "reading %zu bytes at offset %"
                    PRIu64 ": %s", n, offset, nbd_get_error ());
      err->transient = true;
      return -1;
    }
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static bool
is_nbd_uri (const char *url)
{
  return strncmp (url, "nbd://", 6) == 0 || strncmp (url, "nbds://", 7) == 0
    || strncmp (url, "nbd+", 4) == 0 || strncmp (url, "nbds+", 5) == 0;
}

/* An NBD URI is connected to directly; any other URL (http, https,
 * ftp, ...) through nbdkit's curl plugin, which libnbd runs.
 */
static int
image_connect (struct image *im, const char *url)
{
  int64_t size;

  im->nbd = nbd_create ();
  if (im->nbd == NULL)
    goto fail;
  if (is_nbd_uri (url)) {
    if (nbd_connect_uri (im->nbd, url) == -1)
      goto fail;
  }
  else {
    char *argv[] = { (char *) "nbdkit", (char *) "-s",
                     (char *) "--exit-with-parent", (char *) "-r",
                     (char *) "curl", (char *) url, NULL };

    if (nbd_connect_command (im->nbd, argv) == -1)
      goto fail;
  }
  size = nbd_get_size (im->nbd);
  if (size == -1)
    goto fail;
  memset (&im->src, 0, sizeof im->src);
  im->src.pread = nbd_source_pread;
  im->src.opaque = im->nbd;
  im->src.size = size;
  return 0;

 fail:
  fprintf (stderr, PROGRAM ": %s: %s\n", url, nbd_get_error ());
  return -1;
}
#endif

static int
image_open (struct image *im, const char *path)
{
  struct ad_options opts;
  struct ad_error err;
  struct stat st;
  double t;

  memset (im, 0, sizeof *im);
  im->path = path;
  im->fd = -1;
  if (strstr (path, "://")) {
#ifdef HAVE_LIBNBD
    if (image_connect (im, path) == -1) {
      image_close (im);
      return -1;
    }
#else
    fprintf (stderr, PROGRAM ": %s: this autodecomp was built without "
             "libnbd, so it reads only local files\n", path);
    return -1;
#endif
  }
  else {
    im->fd = open (path, O_RDONLY | O_CLOEXEC);
    if (im->fd == -1 || fstat (im->fd, &st) == -1) {
      fprintf (stderr, PROGRAM ": %s: %s\n", path, strerror (errno));
      image_close (im);
      return -1;
    }
    if (!S_ISREG (st.st_mode)) {
      fprintf (stderr, PROGRAM ": %s: not a regular file\n", path);
      image_close (im);
      return -1;
    }
    ad_source_init_fd (&im->src, im->fd, st.st_size);
  }
  ad_options_init (&opts);
  im->cache = ad_cache_new (TOOL_CACHE);
  if (im->cache == NULL) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    image_close (im);
    return -1;
  }
  t = now ();
  im->exp = ad_export_open (&im->src, AD_FORMAT_UNKNOWN, &opts, im->cache,
                            &err);
  im->open_seconds = now () - t;
  if (im->exp == NULL) {
    fprintf (stderr, PROGRAM ": %s: %s\n", path, err.msg);
    image_close (im);
    return -1;
  }
  return 0;
}

/* Reading an image from start to end, frame by frame.  Frames up to
 * AD_LARGE_FRAME go through the export (and its cache: a gzip pass
 * hands its spans there); a larger frame (a plain one-frame xz, zstd or
 * lzip image) is streamed through its decoder, so that nothing the size of
 * the image is held in memory or on disk.
 */
struct reader {
  struct image *im;
  uint64_t off;
  void *dec;                    /* Streaming a large frame, or NULL. */
  struct ad_frame frame;
  size_t frame_no;
  uint64_t frame_done;
  struct ad_reader seq;         /* So the workers decode ahead. */
  bool progress;                /* Show how far it got, on stderr. */
  double last;
};

static int
reader_fail (struct reader *r, const struct ad_error *err)
{
  fprintf (stderr, PROGRAM ": %s: %s\n", r->im->path, err->msg);
  return -1;
}

/* A sequential reader: as in the filter, decode workers (one per CPU)
 * decode the frames ahead of it, so a conversion decodes on every core
 * while it compresses.  Without workers it still works, in one thread.
 */
static void
reader_init (struct reader *r, struct image *im)
{
  memset (r, 0, sizeof *r);
  r->im = im;
  ad_reader_init (&r->seq);
  if (im->pool == NULL && im->exp->format != AD_FORMAT_RAW) {
    struct ad_error err;

    im->pool = ad_pool_new (0, 0, &err);
    if (im->pool) {
      im->exp->pool = im->pool;
      im->exp->readahead = TOOL_CACHE / 4;
    }
  }
}

static void
reader_drop_decoder (struct reader *r)
{
  if (r->dec)
    r->im->exp->idx->ops->decoder_free (r->dec);
  r->dec = NULL;
}

static void
reader_end (struct reader *r)
{
  reader_drop_decoder (r);
  ad_reader_destroy (&r->seq);
}

static void print_size (FILE *fp, double bytes);

/* At most once a second, and at the end. */
static void
reader_progress (struct reader *r, const char *what)
{
  uint64_t size = r->im->exp->size;
  double t;

  if (!r->progress)
    return;
  t = now ();
  if (t - r->last < 1 && r->off < size)
    return;
  r->last = t;
  fprintf (stderr, "\r%s %s: %3.0f%% of ", what, r->im->path,
           size ? 100.0 * r->off / size : 100.0);
  print_size (stderr, size);
  fprintf (stderr, "   ");
  if (r->off == size)
    fprintf (stderr, "\n");
}

/* Read the next bytes of the image into buf (at most cap).  Returns
 * how many (> 0), 0 at the end, or -1 after printing the error.
 */
static ssize_t
reader_next (struct reader *r, char *buf, size_t cap)
{
  struct image *im = r->im;
  struct ad_export *exp = im->exp;
  struct ad_error err;
  uint64_t left = exp->size - r->off;
  size_t n;

  if (left == 0)
    return 0;
  ad_error_clear (&err);

  if (exp->format == AD_FORMAT_RAW) {
    n = cap < left ? cap : left;
    if (ad_source_pread (&im->src, buf, n, r->off, &err) == -1)
      return reader_fail (r, &err);
    r->off += n;
    return n;
  }

  if (r->dec == NULL) {
    if (ad_export_find (exp, &im->src, r->off, &r->frame, &r->frame_no,
                        &err) == -1)
      return reader_fail (r, &err);
    if (r->frame.usize <= AD_LARGE_FRAME) {
      uint64_t in_frame = r->frame.uoff + r->frame.usize - r->off;

      n = cap < in_frame ? cap : in_frame;
      if (ad_export_read (exp, &r->seq, &im->src, buf, n, r->off,
                          &err) == -1)
        return reader_fail (r, &err);
      r->off += n;
      return n;
    }
    if (exp->idx->ops->decoder_new (exp->idx, &r->frame, r->frame_no,
                                    &r->dec, &err) == -1)
      return reader_fail (r, &err);
    r->frame_done = 0;
  }

  /* Streaming a large frame: exactly its declared size, then its end
   * (which runs the frame's final checks).
   */
  if (r->frame_done < r->frame.usize) {
    uint64_t want = r->frame.usize - r->frame_done;
    ssize_t got;

    if (want > cap)
      want = cap;
    got = exp->idx->ops->decoder_read (r->dec, &im->src, buf, want, &err);
    if (got == -1)
      return reader_fail (r, &err);
    if (got == 0) {
      fprintf (stderr, PROGRAM ": %s: %s: frame %zu decodes to %" PRIu64
               " bytes, fewer than the %" PRIu64 " its header declares\n",
               im->path, exp->idx->ops->name, r->frame_no, r->frame_done,
               r->frame.usize);
      return -1;
    }
    r->frame_done += got;
    r->off += got;
    if (r->frame_done == r->frame.usize) {
      char extra;
      ssize_t more = exp->idx->ops->decoder_read (r->dec, &im->src, &extra,
                                                  1, &err);

      if (more == -1)
        return reader_fail (r, &err);
      if (more > 0) {
        fprintf (stderr, PROGRAM ": %s: %s: frame %zu decodes to more than "
                 "the %" PRIu64 " bytes its header declares\n", im->path,
                 exp->idx->ops->name, r->frame_no, r->frame.usize);
        return -1;
      }
      reader_drop_decoder (r);
    }
    return got;
  }
  return 0;
}

/* Fill buf with exactly count bytes (fewer only at the end). */
static ssize_t
reader_fill (struct reader *r, char *buf, size_t count)
{
  size_t done = 0;

  while (done < count) {
    ssize_t n = reader_next (r, buf + done, count - done);

    if (n == -1)
      return -1;
    if (n == 0)
      break;
    done += n;
  }
  return done;
}

/* Sizes on the command line: a number with an optional K, M or G
 * (powers of 1024).
 */
static int
parse_size (const char *text, uint64_t *out)
{
  char *end;
  unsigned long long v;
  uint64_t mult = 1;

  errno = 0;
  v = strtoull (text, &end, 10);
  if (errno || end == text)
    return -1;
  switch (*end) {
  case 'k': case 'K': mult = 1024; end++; break;
  case 'm': case 'M': mult = MiB; end++; break;
  case 'g': case 'G': mult = 1024 * MiB; end++; break;
  }
  if (*end == 'i' && end[1] == 'B')
    end += 2;
  else if (*end == 'B' && mult > 1)
    end++;
  if (*end != '\0' || v > UINT64_MAX / mult)
    return -1;
  *out = v * mult;
  return 0;
}

static void
print_size (FILE *fp, double bytes)
{
  if (bytes >= 1024 * MiB)
    fprintf (fp, "%.2f GiB", bytes / (1024 * MiB));
  else if (bytes >= MiB)
    fprintf (fp, "%.1f MiB", bytes / MiB);
  else if (bytes >= 1024)
    fprintf (fp, "%.1f KiB", bytes / 1024);
  else
    fprintf (fp, "%.0f byte%s", bytes, bytes == 1 ? "" : "s");
}

/* info ------------------------------------------------------------- */

struct costs {
  size_t frames, zero_frames, large_frames;
  uint64_t largest, smallest, zero_bytes;
  double decode_per_read;       /* Mean bytes a cold random read decodes, */
  double read_per_read;         /* and reads below. */
};

/* A cold random read at a uniformly random offset decodes the frame
 * that holds it: frame i is hit with probability usize_i / size, so
 * the mean decode is sum (usize_i^2) / size.  Zero frames are known
 * (decode nothing); a large frame is decoded progressively from its
 * start, half of it on average for a first read.
 */
static void
image_costs (struct ad_export *exp, struct costs *c)
{
  size_t i, n = ad_index_nframes (exp->idx);
  double size = exp->size ? (double) exp->size : 1;

  memset (c, 0, sizeof *c);
  c->frames = n;
  for (i = 0; i < n; i++) {
    struct ad_frame f;
    double share;

    ad_index_get_frame (exp->idx, i, &f);
    if (f.usize > c->largest)
      c->largest = f.usize;
    if (i == 0 || f.usize < c->smallest)
      c->smallest = f.usize;
    if (f.flags & AD_FRAME_ZERO) {
      c->zero_frames++;
      c->zero_bytes += f.usize;
      continue;
    }
    share = f.usize / size;
    if (f.usize > AD_LARGE_FRAME) {
      c->large_frames++;
      c->decode_per_read += share * f.usize / 2;
      c->read_per_read += share * f.csize / 2;
    }
    else {
      c->decode_per_read += share * f.usize;
      c->read_per_read += share * f.csize;
    }
  }
}

static const char *
verdict (const struct ad_export *exp, const struct costs *c, bool complete)
{
  if (exp->format == AD_FORMAT_RAW)
    return "raw";
  if (!complete || c->large_frames > 0 || c->decode_per_read > SEEKS_FAIRLY)
    return "poor";
  if (c->decode_per_read > SEEKS_WELL)
    return "fair";
  return "good";
}

static void
json_string (const char *s)
{
  putchar ('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      printf ("\\%c", *s);
    else if ((unsigned char) *s < 0x20)
      printf ("\\u%04x", *s);
    else
      putchar (*s);
  }
  putchar ('"');
}

static int
do_info (int argc, char *argv[])
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, 'j' },
    { "frames", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  bool json = false, frames = false, complete;
  struct image im;
  struct costs c;
  const char *v;
  size_t i;
  int opt;

  while ((opt = getopt_long (argc, argv, "jfh", long_options, NULL)) != -1) {
    switch (opt) {
    case 'j': json = true; break;
    case 'f': frames = true; break;
    case 'h':
      printf ("usage: " PROGRAM " info [--json] [--frames] IMAGE\n");
      return 0;
    default:
      return 2;
    }
  }
  if (argc - optind != 1) {
    fprintf (stderr, "usage: " PROGRAM " info [--json] [--frames] IMAGE\n");
    return 2;
  }
  if (image_open (&im, argv[optind]) == -1)
    return 1;

  if (im.exp->format == AD_FORMAT_RAW) {
    memset (&c, 0, sizeof c);
    complete = true;
  }
  else {
    image_costs (im.exp, &c);
    complete = ad_index_complete (im.exp->idx);
  }
  v = verdict (im.exp, &c, complete);

  if (json) {
    printf ("{\n  \"image\": ");
    json_string (im.path);
    printf (",\n  \"format\": \"%s\",\n"
            "  \"compressed_size\": %" PRIu64 ",\n"
            "  \"size\": %" PRIu64 ",\n"
            "  \"open_seconds\": %.3f,\n"
            "  \"index_complete\": %s,\n"
            "  \"frames\": %zu,\n"
            "  \"zero_frames\": %zu,\n"
            "  \"large_frames\": %zu,\n"
            "  \"largest_frame\": %" PRIu64 ",\n"
            "  \"decode_per_random_read\": %.0f,\n"
            "  \"read_per_random_read\": %.0f,\n"
            "  \"index_from\": \"%s\",\n"
            "  \"sizes_unchecked\": %s,\n"
            "  \"seeks\": \"%s\"",
            ad_format_name (im.exp->format), im.src.size, im.exp->size,
            im.open_seconds, complete ? "true" : "false", c.frames,
            c.zero_frames, c.large_frames, c.largest, c.decode_per_read,
            c.read_per_read,
            im.exp->idx && im.exp->idx->index_from ?
            im.exp->idx->index_from : "",
            im.exp->idx && im.exp->idx->sizes_unchecked ? "true" : "false",
            v);
    if (frames) {
      /* [uoff, usize, coff, csize, zero] per frame of the index. */
      printf (",\n  \"frame_table\": [");
      for (i = 0; i < c.frames; i++) {
        struct ad_frame f;

        ad_index_get_frame (im.exp->idx, i, &f);
        printf ("%s\n    [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64
                ", %s]", i ? "," : "", f.uoff, f.usize, f.coff, f.csize,
                f.flags & AD_FRAME_ZERO ? "true" : "false");
      }
      printf ("\n  ]");
    }
    printf ("\n}\n");
    image_close (&im);
    return 0;
  }

  printf ("%s: %s, ", im.path, ad_format_name (im.exp->format));
  print_size (stdout, im.exp->size);
  printf (" (%" PRIu64 " bytes) from ", im.exp->size);
  print_size (stdout, im.src.size);
  printf ("\n");
  if (im.exp->format == AD_FORMAT_RAW) {
    printf ("  not compressed: the filter passes it through untouched\n");
    image_close (&im);
    return 0;
  }
  printf ("  opening it (as the filter does at connect) took %.2f s\n",
          im.open_seconds);
  if (im.exp->idx->index_from)
    printf ("  index from %s\n", im.exp->idx->index_from);
  if (!complete) {
    printf ("  one gzip member: the file has no seek points.  The filter "
            "makes\n  checkpoints (every autodecomp-gzip-span) as one "
            "sequential pass\n  reaches them: a first read at offset X "
            "decodes everything up to X\n  once; after that, any read "
            "decodes at most one span.\n");
  }
  else {
    printf ("  %zu frame%s", c.frames, c.frames == 1 ? "" : "s");
    if (c.frames > 0) {
      printf (" of ");
      print_size (stdout, c.smallest);
      if (c.largest != c.smallest) {
        printf (" to ");
        print_size (stdout, c.largest);
      }
    }
    if (c.zero_frames > 0) {
      printf (", %zu of them known to be zeros (", c.zero_frames);
      print_size (stdout, c.zero_bytes);
      printf (", never decoded)");
    }
    printf ("\n");
    if (c.large_frames > 0)
      printf ("  %zu frame%s larger than %llu MiB: a first read at offset "
              "X in such a\n  frame decodes everything in it up to X "
              "(into a temporary file)\n", c.large_frames,
              c.large_frames == 1 ? "" : "s", AD_LARGE_FRAME / MiB);
    printf ("  a cold random read decodes ");
    print_size (stdout, c.decode_per_read);
    printf (" and reads ");
    print_size (stdout, c.read_per_read);
    printf (" below, on average\n");
  }
  if (im.exp->idx->sizes_unchecked)
    printf ("  frame sizes are not covered by a checksum "
            "(autodecomp-verify-offsets=true proves them)\n");
  if (frames && c.frames > 0) {
    printf ("  %8s %14s %10s %14s %10s\n", "frame", "offset", "size",
            "compressed at", "bytes");
    for (i = 0; i < c.frames; i++) {
      struct ad_frame f;

      ad_index_get_frame (im.exp->idx, i, &f);
      printf ("  %8zu %14" PRIu64 " %10" PRIu64 " %14" PRIu64 " %10" PRIu64
              "%s\n", i, f.uoff, f.usize, f.coff, f.csize,
              f.flags & AD_FRAME_ZERO ? "  zeros" : "");
    }
  }
  if (strcmp (v, "good") == 0)
    printf ("seeks well\n");
  else
    printf ("seeks %s: `" PROGRAM " prepare %s OUTPUT.zst` writes a copy "
            "that seeks well\n", strcmp (v, "fair") == 0 ? "fairly" :
            "poorly", im.path);
  image_close (&im);
  return 0;
}

/* prepare ------------------------------------------------------------ */

enum out_format { OUT_ZSTD, OUT_XZ, OUT_BGZF };

struct prepare_opts {
  enum out_format format;
  uint64_t frame;               /* Uncompressed bytes per frame. */
  int level;                    /* -1: the format's default. */
  unsigned threads;
  bool force, verify, quiet;
};

/* Output, written in order; the file is removed if anything fails. */
struct output {
  const char *path;
  int fd;
  uint64_t written;
};

static int
output_write (struct output *o, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t n = write (o->fd, p, len);

    if (n == -1) {
      if (errno == EINTR)
        continue;
      fprintf (stderr, PROGRAM ": %s: write: %s\n", o->path,
               strerror (errno));
      return -1;
    }
    p += n;
    len -= n;
    o->written += n;
  }
  return 0;
}

/* Frames compressed in parallel, in batches, and written in order
 * (zstd frames and BGZF members are independent of each other).
 */
struct batch;
typedef int compress_fn (struct batch *b, unsigned worker, const char *in,
                         size_t in_len, char *out, size_t *out_len);

struct batch {
  compress_fn *compress;
  size_t frame, bound, n, cap;
  char *in, *out;               /* cap frames each. */
  size_t *in_len, *out_len;
  int *result;
  unsigned threads;
  void **ctx;                   /* Per worker. */
  int level;
};

struct batch_worker {
  struct batch *b;
  unsigned id;
};

static void *
batch_run (void *arg)
{
  struct batch_worker *w = arg;
  struct batch *b = w->b;
  size_t i;

  for (i = w->id; i < b->n; i += b->threads)
    b->result[i] = b->compress (b, w->id, b->in + i * b->frame,
                                b->in_len[i], b->out + i * b->bound,
                                &b->out_len[i]);
  return NULL;
}

static int
batch_compress (struct batch *b)
{
  pthread_t tid[64];
  struct batch_worker w[64];
  uint64_t started = 0;
  unsigned i;

  for (i = 0; i < b->threads; i++) {
    w[i] = (struct batch_worker) { b, i };
    if (i == 0 || pthread_create (&tid[i], NULL, batch_run, &w[i]) != 0)
      continue;
    started |= 1ULL << i;
  }
  /* Worker 0 runs here; a thread that did not start is done here too. */
  for (i = 0; i < b->threads; i++)
    if (!(started & (1ULL << i)))
      batch_run (&w[i]);
  for (i = 1; i < b->threads; i++)
    if (started & (1ULL << i))
      pthread_join (tid[i], NULL);
  for (i = 0; i < b->n; i++)
    if (b->result[i] == -1)
      return -1;
  return 0;
}

/* zstd: one frame per PIECE of input, with its content size and
 * checksum, and the seek table at the end.
 */
#define SEEK_TABLE_MAGIC 0x184D2A5EU
#define SEEK_ENTRY 12                   /* Sizes and checksum. */
#define SEEKABLE_MAGIC 0x8F92EAB1U

static int
zstd_compress (struct batch *b, unsigned worker, const char *in,
               size_t in_len, char *out, size_t *out_len)
{
  ZSTD_CCtx *cctx = b->ctx[worker];
  size_t r;

  if (cctx == NULL) {
    cctx = b->ctx[worker] = ZSTD_createCCtx ();
    if (cctx == NULL ||
        ZSTD_isError (ZSTD_CCtx_setParameter (cctx, ZSTD_c_compressionLevel,
                                              b->level)) ||
        ZSTD_isError (ZSTD_CCtx_setParameter (cctx, ZSTD_c_checksumFlag, 1)))
      return -1;
  }
  r = ZSTD_compress2 (cctx, out, b->bound, in, in_len);
  if (ZSTD_isError (r))
    return -1;
  *out_len = r;
  return 0;
}

/* BGZF: gzip members of at most 65280 input bytes, each with the BC
 * extra field that gives its compressed size, and the empty member
 * that marks the end.
 */
#define BGZF_INPUT 65280
#define BGZF_HEADER 18
#define BGZF_TRAILER 8
#define BGZF_MAX 65536

static const unsigned char bgzf_eof[28] = {
  0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, 'B', 'C', 2, 0,
  0x1b, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

struct bgzf_ctx {
  struct libdeflate_compressor *c, *stored;
};

static int
bgzf_compress (struct batch *b, unsigned worker, const char *in,
               size_t in_len, char *out, size_t *out_len)
{
  struct bgzf_ctx *x = b->ctx[worker];
  unsigned char *o = (unsigned char *) out;
  size_t n, total;
  uint32_t crc;

  if (x == NULL) {
    x = b->ctx[worker] = calloc (1, sizeof *x);
    if (x == NULL ||
        (x->c = libdeflate_alloc_compressor (b->level)) == NULL ||
        (x->stored = libdeflate_alloc_compressor (0)) == NULL)
      return -1;
  }
  n = libdeflate_deflate_compress (x->c, in, in_len, o + BGZF_HEADER,
                                   BGZF_MAX - BGZF_HEADER - BGZF_TRAILER);
  if (n == 0)                   /* Did not shrink enough: store it. */
    n = libdeflate_deflate_compress (x->stored, in, in_len,
                                     o + BGZF_HEADER,
                                     BGZF_MAX - BGZF_HEADER - BGZF_TRAILER);
  if (n == 0)
    return -1;
  total = BGZF_HEADER + n + BGZF_TRAILER;
  memcpy (o, bgzf_eof, BGZF_HEADER);
  o[16] = (total - 1) & 0xff;
  o[17] = (total - 1) >> 8;
  crc = libdeflate_crc32 (0, in, in_len);
  ad_put_le32 (o + BGZF_HEADER + n, crc);
  ad_put_le32 (o + BGZF_HEADER + n + 4, in_len);
  *out_len = total;
  return 0;
}

/* Compress the reader's bytes in batches of frames. */
static int
prepare_batches (struct reader *r, struct output *o,
                 const struct prepare_opts *po)
{
  struct batch b;
  unsigned char *table = NULL;
  size_t table_len = 0, table_alloc = 0, i;
  uint64_t nframes = 0;
  int ret = -1;

  memset (&b, 0, sizeof b);
  b.threads = po->threads;
  b.level = po->level;
  if (po->format == OUT_ZSTD) {
    b.compress = zstd_compress;
    b.frame = po->frame;
    b.bound = ZSTD_compressBound (b.frame);
  }
  else {
    b.compress = bgzf_compress;
    b.frame = BGZF_INPUT;
    b.bound = BGZF_MAX;
  }
  /* Enough frames to keep every thread busy, about 32 MiB of input. */
  b.cap = 32 * MiB / b.frame;
  if (b.cap < 2 * b.threads)
    b.cap = 2 * b.threads;
  b.in = malloc (b.cap * b.frame);
  b.out = malloc (b.cap * b.bound);
  b.in_len = calloc (b.cap, sizeof *b.in_len);
  b.out_len = calloc (b.cap, sizeof *b.out_len);
  b.result = calloc (b.cap, sizeof *b.result);
  b.ctx = calloc (b.threads, sizeof *b.ctx);
  if (!b.in || !b.out || !b.in_len || !b.out_len || !b.result || !b.ctx) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    goto out;
  }

  for (;;) {
    bool end = false;

    for (b.n = 0; b.n < b.cap; b.n++) {
      ssize_t n = reader_fill (r, b.in + b.n * b.frame, b.frame);

      if (n == -1)
        goto out;
      if (n == 0) {
        end = true;
        break;
      }
      b.in_len[b.n] = n;
      reader_progress (r, "reading");
    }
    if (b.n > 0 && batch_compress (&b) == -1) {
      fprintf (stderr, PROGRAM ": %s: compressing failed\n", o->path);
      goto out;
    }
    for (i = 0; i < b.n; i++) {
      if (output_write (o, b.out + i * b.bound, b.out_len[i]) == -1)
        goto out;
      if (po->format == OUT_ZSTD) {
        const unsigned char *frame_end =
          (unsigned char *) b.out + i * b.bound + b.out_len[i];

        if (table_len + SEEK_ENTRY > table_alloc) {
          size_t na = table_alloc ? 2 * table_alloc : 4096;
          unsigned char *p = realloc (table, na);

          if (p == NULL) {
            fprintf (stderr, PROGRAM ": out of memory\n");
            goto out;
          }
          table = p;
          table_alloc = na;
        }
        ad_put_le32 (table + table_len, b.out_len[i]);
        ad_put_le32 (table + table_len + 4, b.in_len[i]);
        /* The entry's checksum (the low 32 bits of the frame's XXH64)
         * is the frame's own Content_Checksum, its last 4 bytes.
         */
        memcpy (table + table_len + 8, frame_end - 4, 4);
        table_len += SEEK_ENTRY;
        nframes++;
      }
    }
    if (end || b.n < b.cap)
      break;
  }

  if (po->format == OUT_ZSTD) {
    unsigned char head[8], foot[9];

    if (nframes > (UINT32_MAX - 9) / SEEK_ENTRY) {
      fprintf (stderr, PROGRAM ": %s: too many frames for a seek table "
               "(use a larger --frame-size)\n", o->path);
      goto out;
    }
    ad_put_le32 (head, SEEK_TABLE_MAGIC);
    ad_put_le32 (head + 4, table_len + 9);
    ad_put_le32 (foot, nframes);
    foot[4] = 0x80;             /* Checksum_Flag: entries have one. */
    ad_put_le32 (foot + 5, SEEKABLE_MAGIC);
    if (output_write (o, head, sizeof head) == -1 ||
        output_write (o, table, table_len) == -1 ||
        output_write (o, foot, sizeof foot) == -1)
      goto out;
  }
  else if (output_write (o, bgzf_eof, sizeof bgzf_eof) == -1)
    goto out;
  ret = 0;

 out:
  if (b.ctx) {
    for (i = 0; i < b.threads; i++) {
      if (b.ctx[i] == NULL)
        continue;
      if (po->format == OUT_ZSTD)
        ZSTD_freeCCtx (b.ctx[i]);
      else {
        struct bgzf_ctx *x = b.ctx[i];

        libdeflate_free_compressor (x->c);
        libdeflate_free_compressor (x->stored);
        free (x);
      }
    }
  }
  free (b.ctx);
  free (b.in);
  free (b.out);
  free (b.in_len);
  free (b.out_len);
  free (b.result);
  free (table);
  return ret;
}

/* xz: liblzma's multithreaded encoder cuts the stream into blocks of
 * the frame size and records each in the index at the end.
 */
static int
prepare_xz (struct reader *r, struct output *o, const struct prepare_opts *po)
{
  lzma_stream strm = LZMA_STREAM_INIT;
  lzma_mt mt;
  char *in = malloc (PIECE), *out = malloc (PIECE);
  lzma_action action = LZMA_RUN;
  lzma_ret lr;
  int ret = -1;

  memset (&mt, 0, sizeof mt);
  mt.threads = po->threads;
  mt.block_size = po->frame;
  mt.preset = po->level;
  mt.check = LZMA_CHECK_CRC64;
  if (in == NULL || out == NULL) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    goto done;
  }
  lr = lzma_stream_encoder_mt (&strm, &mt);
  if (lr != LZMA_OK) {
    fprintf (stderr, PROGRAM ": xz encoder: error %d (out of memory, or "
             "a bad level)\n", (int) lr);
    goto done;
  }
  strm.next_out = (uint8_t *) out;
  strm.avail_out = PIECE;
  for (;;) {
    if (strm.avail_in == 0 && action == LZMA_RUN) {
      ssize_t n = reader_next (r, in, PIECE);

      if (n == -1)
        goto done;
      if (n == 0)
        action = LZMA_FINISH;
      else
        reader_progress (r, "reading");
      strm.next_in = (const uint8_t *) in;
      strm.avail_in = n;
    }
    lr = lzma_code (&strm, action);
    if (strm.avail_out == 0 || lr == LZMA_STREAM_END) {
      if (output_write (o, out, PIECE - strm.avail_out) == -1)
        goto done;
      strm.next_out = (uint8_t *) out;
      strm.avail_out = PIECE;
    }
    if (lr == LZMA_STREAM_END)
      break;
    if (lr != LZMA_OK) {
      fprintf (stderr, PROGRAM ": xz encoder: error %d\n", (int) lr);
      goto done;
    }
  }
  ret = 0;

 done:
  lzma_end (&strm);
  free (in);
  free (out);
  return ret;
}

/* Compare two images byte for byte. */
static int
verify (struct image *a, struct image *b, bool progress)
{
  struct reader ra, rb;
  char *ba = malloc (PIECE), *bb = malloc (PIECE);
  uint64_t off = 0;
  int ret = -1;

  if (ba == NULL || bb == NULL) {
    fprintf (stderr, PROGRAM ": out of memory\n");
    goto done;
  }
  if (a->exp->size != b->exp->size) {
    fprintf (stderr, PROGRAM ": verify: %s is %" PRIu64 " bytes, %s is %"
             PRIu64 "\n", a->path, a->exp->size, b->path, b->exp->size);
    goto done;
  }
  reader_init (&ra, a);
  reader_init (&rb, b);
  ra.progress = progress;
  for (;;) {
    ssize_t na = reader_fill (&ra, ba, PIECE);
    ssize_t nb = reader_fill (&rb, bb, PIECE);

    if (na == -1 || nb == -1)
      break;
    if (na != nb || memcmp (ba, bb, na) != 0) {
      size_t i = 0;

      while (i < (size_t) na && i < (size_t) nb && ba[i] == bb[i])
        i++;
      fprintf (stderr, PROGRAM ": verify: %s and %s differ at offset %"
               PRIu64 "\n", a->path, b->path, off + i);
      break;
    }
    if (na == 0) {
      ret = 0;
      break;
    }
    off += na;
    reader_progress (&ra, "verifying");
  }
  reader_end (&ra);
  reader_end (&rb);

 done:
  free (ba);
  free (bb);
  return ret;
}

static void
prepare_usage (FILE *fp)
{
  fprintf (fp,
           "usage: " PROGRAM " prepare [-F zstd|xz|bgzf] [-s FRAME-SIZE] "
           "[-l LEVEL] [-T THREADS]\n"
           "                          [--force] [--verify] [--quiet] "
           "IMAGE OUTPUT\n");
}

static int
do_prepare (int argc, char *argv[])
{
  static const struct option long_options[] = {
    { "format", required_argument, NULL, 'F' },
    { "frame-size", required_argument, NULL, 's' },
    { "level", required_argument, NULL, 'l' },
    { "threads", required_argument, NULL, 'T' },
    { "force", no_argument, NULL, 'f' },
    { "verify", no_argument, NULL, 'v' },
    { "quiet", no_argument, NULL, 'q' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct prepare_opts po = { OUT_ZSTD, 0, -1, 0, false, false, false };
  struct image in, out_im;
  struct output o = { NULL, -1, 0 };
  struct reader r;
  double t;
  long n;
  char *end;
  int opt, status = -1;
  bool to_stdout;

  while ((opt = getopt_long (argc, argv, "F:s:l:T:fvqh", long_options,
                             NULL)) != -1) {
    switch (opt) {
    case 'F':
      if (strcmp (optarg, "zstd") == 0)
        po.format = OUT_ZSTD;
      else if (strcmp (optarg, "xz") == 0)
        po.format = OUT_XZ;
      else if (strcmp (optarg, "bgzf") == 0 || strcmp (optarg, "gzip") == 0)
        po.format = OUT_BGZF;
      else {
        fprintf (stderr, PROGRAM ": --format: zstd, xz or bgzf, not %s\n",
                 optarg);
        return 2;
      }
      break;
    case 's':
      if (parse_size (optarg, &po.frame) == -1 || po.frame < 4096 ||
          po.frame > 1024 * MiB) {
        fprintf (stderr, PROGRAM ": --frame-size: a size from 4K to 1G, "
                 "not %s\n", optarg);
        return 2;
      }
      break;
    case 'l':
      n = strtol (optarg, &end, 10);
      if (*end || end == optarg || n < 0 || n > 22) {
        fprintf (stderr, PROGRAM ": --level: a number, not %s\n", optarg);
        return 2;
      }
      po.level = n;
      break;
    case 'T':
      n = strtol (optarg, &end, 10);
      if (*end || end == optarg || n < 0 || n > 64) {
        fprintf (stderr, PROGRAM ": --threads: 0 (all CPUs) to 64, not %s\n",
                 optarg);
        return 2;
      }
      po.threads = n;
      break;
    case 'f': po.force = true; break;
    case 'v': po.verify = true; break;
    case 'q': po.quiet = true; break;
    case 'h': prepare_usage (stdout); return 0;
    default: prepare_usage (stderr); return 2;
    }
  }
  if (argc - optind != 2) {
    prepare_usage (stderr);
    return 2;
  }
  if (po.threads == 0) {
    long cpus = sysconf (_SC_NPROCESSORS_ONLN);

    po.threads = cpus < 1 ? 1 : cpus > 64 ? 64 : cpus;
  }
  switch (po.format) {
  case OUT_ZSTD:
    if (po.frame == 0)
      po.frame = 1 * MiB;
    if (po.level == -1)
      po.level = 3;
    if (po.level < 1 || po.level > ZSTD_maxCLevel ()) {
      fprintf (stderr, PROGRAM ": --level: zstd levels are 1 to %d\n",
               ZSTD_maxCLevel ());
      return 2;
    }
    break;
  case OUT_XZ:
    if (po.frame == 0)
      po.frame = 4 * MiB;
    if (po.level == -1)
      po.level = 6;
    if (po.level > 9) {
      fprintf (stderr, PROGRAM ": --level: xz levels are 0 to 9\n");
      return 2;
    }
    break;
  case OUT_BGZF:
    if (po.frame != 0 && po.frame != BGZF_INPUT)
      fprintf (stderr, PROGRAM ": note: BGZF members hold %d bytes each; "
               "--frame-size is ignored\n", BGZF_INPUT);
    po.frame = BGZF_INPUT;
    if (po.level == -1)
      po.level = 6;
    if (po.level < 1 || po.level > 12) {
      fprintf (stderr, PROGRAM ": --level: BGZF levels are 1 to 12\n");
      return 2;
    }
    break;
  }

  if (image_open (&in, argv[optind]) == -1)
    return 1;
  o.path = argv[optind + 1];
  to_stdout = strcmp (o.path, "-") == 0;
  if (to_stdout) {
    if (po.verify) {
      fprintf (stderr, PROGRAM ": --verify needs an OUTPUT file, not -\n");
      image_close (&in);
      return 2;
    }
    if (isatty (STDOUT_FILENO)) {
      fprintf (stderr, PROGRAM ": not writing compressed data to a "
               "terminal\n");
      image_close (&in);
      return 2;
    }
    o.path = "(stdout)";
    o.fd = STDOUT_FILENO;
  }
  else {
    struct stat ist, ost;

    /* --force must not truncate the image it is about to read. */
    if (stat (o.path, &ost) == 0 && fstat (in.fd, &ist) == 0 &&
        ost.st_dev == ist.st_dev && ost.st_ino == ist.st_ino) {
      fprintf (stderr, PROGRAM ": %s: is the input image itself\n", o.path);
      image_close (&in);
      return 1;
    }
    o.fd = open (o.path, O_WRONLY | O_CREAT | O_CLOEXEC |
                 (po.force ? O_TRUNC : O_EXCL), 0644);
  }
  if (o.fd == -1) {
    fprintf (stderr, PROGRAM ": %s: %s%s\n", o.path, strerror (errno),
             errno == EEXIST ? " (--force overwrites it)" : "");
    image_close (&in);
    return 1;
  }

  t = now ();
  reader_init (&r, &in);
  r.progress = !po.quiet && isatty (STDERR_FILENO);
  if (po.format == OUT_XZ)
    status = prepare_xz (&r, &o, &po);
  else
    status = prepare_batches (&r, &o, &po);
  reader_end (&r);
  if (status == 0 && !to_stdout && fsync (o.fd) == -1 && errno != EINVAL) {
    fprintf (stderr, PROGRAM ": %s: fsync: %s\n", o.path, strerror (errno));
    status = -1;
  }
  if (close (o.fd) == -1 && status == 0) {
    fprintf (stderr, PROGRAM ": %s: close: %s\n", o.path, strerror (errno));
    status = -1;
  }
  if (status == 0 && !po.quiet) {
    /* The summary goes to stderr when the data went to stdout. */
    FILE *fp = to_stdout ? stderr : stdout;

    fprintf (fp, "%s: ", o.path);
    print_size (fp, in.exp->size);
    fprintf (fp, " into ");
    print_size (fp, o.written);
    fprintf (fp, " in %.1f s\n", now () - t);
  }

  if (status == 0 && po.verify) {
    if (image_open (&out_im, o.path) == -1)
      status = -1;
    else {
      if (verify (&in, &out_im, !po.quiet && isatty (STDERR_FILENO)) == -1)
        status = -1;
      else if (!po.quiet)
        printf ("%s: verified: every byte is the same as %s's\n", o.path,
                argv[optind]);
      image_close (&out_im);
    }
  }
  image_close (&in);
  if (status == -1) {
    if (!to_stdout)
      unlink (o.path);
    return 1;
  }
  return 0;
}

static void
usage (FILE *fp)
{
  fprintf (fp,
           "usage: " PROGRAM " info [--json] [--frames] IMAGE\n"
           "       " PROGRAM " prepare [OPTIONS] IMAGE OUTPUT\n"
           "See " PROGRAM "(1).\n");
}

int
main (int argc, char *argv[])
{
  if (argc < 2) {
    usage (stderr);
    return 2;
  }
  if (strcmp (argv[1], "info") == 0)
    return do_info (argc - 1, argv + 1);
  if (strcmp (argv[1], "prepare") == 0)
    return do_prepare (argc - 1, argv + 1);
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0) {
    usage (stdout);
    return 0;
  }
  if (strcmp (argv[1], "--version") == 0) {
#ifdef HAVE_LIBNBD
    printf (PROGRAM " " PACKAGE_VERSION " (reads files and URLs)\n");
#else
    printf (PROGRAM " " PACKAGE_VERSION " (reads files only: built "
            "without libnbd)\n");
#endif
    return 0;
  }
  fprintf (stderr, PROGRAM ": unknown command %s\n", argv[1]);
  usage (stderr);
  return 2;
}
