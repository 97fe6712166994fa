/* Copyright (C) 2026 The nbdkit-autodecomp authors
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * autodecomp: the on-disk constants of the two seekable shapes of a
 * standard format that the library reads (lib/zstd.c, lib/gzip.c) and
 * the command line tool writes (autodecomp prepare): the zstd seekable
 * format's seek table, and BGZF members.  They are defined here once,
 * so that the reader and the writer cannot disagree.
 *
 * The zstd seekable format (facebook/zstd contrib/seekable_format)
 * ends the file with a skippable frame:
 *
 *   Magic_Number (u32, AD_SEEK_TABLE_MAGIC), Frame_Size (u32),
 *   Seek_Table_Entries: Number_Of_Frames entries of
 *     Compressed_Size (u32), Decompressed_Size (u32),
 *     [Checksum (u32): the low 32 bits of XXH64 of the decoded frame],
 *   Seek_Table_Footer (AD_SEEK_FOOTER_SIZE bytes):
 *     Number_Of_Frames (u32), Seek_Table_Descriptor (u8),
 *     Seekable_Magic_Number (u32, AD_SEEKABLE_MAGIC).
 *
 * BGZF (htslib, bgzip) is gzip whose every member carries an FEXTRA
 * subfield SI1='B' SI2='C' LEN=2 holding BSIZE (u16), the member's
 * size minus 1, so a member is at most AD_BGZF_MEMBER_MAX bytes.  The
 * file ends with an empty member, AD_BGZF_EOF.  All integers are
 * little endian.
 */
#ifndef AUTODECOMP_SEEKABLE_FORMATS_H
#define AUTODECOMP_SEEKABLE_FORMATS_H

/* zstd seekable format. */
#define AD_SEEK_TABLE_MAGIC 0x184D2A5EU   /* A skippable frame's magic. */
#define AD_SEEKABLE_MAGIC 0x8F92EAB1U     /* The footer's last 4 bytes. */
#define AD_SKIPPABLE_HEADER_SIZE 8        /* Magic_Number, Frame_Size. */
#define AD_SEEK_FOOTER_SIZE 9
#define AD_SEEK_ENTRY_SIZE 8              /* Without a checksum, */
#define AD_SEEK_ENTRY_SUM_SIZE 12         /* and with one. */
#define AD_SEEK_DESC_CHECKSUM 0x80        /* Descriptor: Checksum_Flag, */
#define AD_SEEK_DESC_RESERVED 0x7c        /* and bits that must be zero. */

/* BGZF. */
#define AD_BGZF_SI1 'B'                   /* The FEXTRA subfield, */
#define AD_BGZF_SI2 'C'
#define AD_BGZF_SLEN 2                    /* holding BSIZE. */
#define AD_BGZF_MEMBER_MAX 65536          /* BSIZE + 1. */
#define AD_BGZF_ISIZE_MAX 65536           /* Output of one member. */
#define AD_BGZF_INPUT 65280               /* Input bgzip puts in a member. */
#define AD_BGZF_HEADER_SIZE 18            /* With the BC subfield only, */
#define AD_BGZF_BSIZE_OFFSET 16           /* which holds BSIZE here. */
#define AD_GZIP_TRAILER_SIZE 8            /* CRC32, ISIZE. */

/* The empty member that ends a BGZF file: the header of every member
 * the tool writes (with its own BSIZE), then an empty deflate block and
 * a zero trailer.
 */
#define AD_BGZF_EOF_SIZE 28
#define AD_BGZF_EOF { \
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, \
    AD_BGZF_SI1, AD_BGZF_SI2, AD_BGZF_SLEN, 0, 0x1b, 0, \
    3, 0, 0, 0, 0, 0, 0, 0, 0, 0 }

#endif /* AUTODECOMP_SEEKABLE_FORMATS_H */
