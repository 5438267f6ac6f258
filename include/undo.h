/*
 * undo.h — undo segments: for recovery point k, the contents that cycle k
 * overwrote (i.e. the bytes of point k-1) and the disk sizes before it.
 * Applying segments k, k-1, ..., j+1 to a copy of the image at point k
 * gives point j.  The format is documented at the top of undo.c.
 */
#ifndef REPLICAD_UNDO_H
#define REPLICAD_UNDO_H

#include <stdint.h>

#define UNDO_MAX_DISKS	64
#define UNDO_MAX_DATA	(4u << 20)	/* longest DATA record */

struct undo_writer;

/*
 * Start writing the segment that will be path once complete (it is
 * written as path.tmp until undo_finish()).  old_sizes: each disk's size
 * before the cycle.
 */
int	undo_create(const char *path, uint64_t cycle, uint16_t ndisks,
	    const uint64_t *old_sizes, struct undo_writer **out);
/*
 * Save the current content of [off, off+len) of disk, read from fd: only
 * the part below the disk's old size is kept (the rest is undone by the
 * size), stored as ZERO records where it is all zero, compressed where
 * it compresses, else raw or cloned from fd (undo_set_clone).  Once it
 * returns, the range's old content is in the writer or in the segment
 * file (cloned ranges too), so the caller may overwrite it; it is
 * durable only after undo_finish().
 */
int	undo_save_range(struct undo_writer *w, uint16_t disk, int fd,
	    uint64_t off, uint64_t len);
/*
 * How a writer saves old content that does not compress (undo_set_clone):
 * NONE writes it raw; RAW clones it from the image (FICLONERANGE) where
 * the range is aligned to the segment's file system block, and writes it
 * raw where the clone fails (the writer then stops trying); ALL clones
 * every aligned range that is not a hole without reading it (nothing is
 * compressed).  A new writer is NONE.
 */
#define UNDO_CLONE_NONE	0
#define UNDO_CLONE_RAW	1
#define UNDO_CLONE_ALL	2
void	undo_set_clone(struct undo_writer *w, int mode);
/*
 * 1 if a range of fd can be cloned into a new file in dir (FICLONERANGE
 * of one block, into a file removed at once), else 0.
 */
int	undo_clone_probe(const char *dir, int fd);
/* Write the trailer, fsync, rename into place, fsync the directory.
 * *bytes is the segment's size.  Frees w either way. */
int	undo_finish(struct undo_writer *w, uint64_t *bytes);
/* Remove the temporary file and free w. */
void	undo_discard(struct undo_writer *w);

/*
 * Check the segment at path completely (magic, bounds, trailer digest),
 * then write its old contents into fds[0..ndisks-1] and truncate each to
 * its old size.  The segment's ndisks must equal ndisks.  Nothing is
 * written if the check fails (RD_ERR_CORRUPT).  old_sizes (may be NULL)
 * receives the sizes the files now have.
 */
int	undo_apply(const char *path, const int *fds, uint16_t ndisks,
	    uint64_t *old_sizes);
/* The check undo_apply() makes first, alone: every record in bounds and
 * whole, every ZSTD record decompressed, every CLONE record's content
 * read and hashed, the trailer's digest.  0, RD_ERR_CORRUPT (or another
 * rd_err), RD_ERR_NOT_FOUND if path does not exist. */
int	undo_check(const char *path, uint16_t ndisks);

/*
 * The inverse of the segment at path for images fds at their current
 * contents: a new segment, written at out_path like any other, holding
 * what applying path would overwrite or cut off (each range it touches,
 * and the tail each disk has past its old size), with the current sizes
 * as its "old" sizes.  Applying path then out_path leaves the images as
 * they are now.  path is checked completely first; fds are only read.
 */
int	undo_invert(const char *path, const int *fds, uint16_t ndisks,
	    uint64_t cycle, const char *out_path, uint64_t *bytes);

/*
 * The segment at path (written with UNDO_CLONE_ALL: cloned, nothing
 * compressed) written again at out, as a segment of cycle, the way
 * UNDO_CLONE_RAW saves old content: zero ranges as ZERO records, what
 * compresses compressed, the rest cloned again from path (or raw where
 * the file system cannot).  Same content, less room.  path is checked
 * completely first; nothing is written if it is corrupt.  cancelled (may
 * be NULL) is asked before each record: RD_ERR_CANCELLED once it says 1
 * (out is not left behind).
 */
int	undo_compact(const char *path, uint64_t cycle, const char *out,
	    uint64_t *bytes, int (*cancelled)(void *), void *arg);

/*
 * Merge the segments of two neighbouring points into one at out (written
 * like any segment): newer takes point k back to point j, older takes j
 * back to i; the result takes k straight back to i.  For each byte the
 * older segment's content wins; the result has older's disk sizes.  Both
 * are checked completely first; nothing is written if either is corrupt.
 * Used when point j is dropped.
 */
int	undo_merge(const char *newer, const char *older, uint64_t cycle,
	    const char *out, uint64_t *bytes);

#endif
