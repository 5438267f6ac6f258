/*
 * store.h — the replica's files for one VM, under STORAGE/VM/:
 *
 *   DISK              the replica image, always at the newest point
 *   .staging/data     contents of the cycle being received
 *   .staging/index.tmp  its index as the extents arrive (streamed)
 *   .staging/index    its index, present only once the cycle is complete
 *   .staging/definition  the VM's definition the cycle carries, if any
 *                     (written before the index; recovery records it)
 *   .undo/CYCLE.undo  undo segment of each point (undo.c)
 *   .digests/DISK     XXH3-128 of each block of the image, for verify;
 *                     blocks of zeros are holes (format in store.c)
 *   .new              a new relationship not recorded yet (store_create)
 *   test/DISK         test-failover copies
 *
 * A cycle is applied in this order (R1, R2): every block's hash is checked
 * as it is staged, and its record appended to index.tmp; at the end the
 * index is fdatasynced and renamed into place (one directory fsync) —
 * the staged data is not synced: until the images are, recovery rolls
 * back with the undo segment if any staged block fails its hash, and
 * once they are, they hold the cycle; the undo segment (old contents)
 * is written and renamed into place; the images the cycle wrote are written and
 * fsynced; the catalog records the point (with the definition the cycle
 * carried, or the previous point's); the digests are written and synced;
 * the staging area is removed (its directory not synced: an index that
 * comes back names the newest point's cycle, whose digests recovery
 * writes again).  A crash before the index exists abandons the cycle
 * (images are cut back to the newest point's sizes); after it, recovery
 * rolls forward, or back with the undo segment if the staged data is
 * damaged and the images do not hold the whole cycle yet.  An empty
 * cycle (no extent, no disk grew) is only its catalog transaction: no
 * staging, no undo segment (the point's segment is CAT_SEG_NONE, the
 * same content as the point before it), no digests.
 * Blocks that lie wholly past a disk's size at the newest point go
 * straight into the image while they arrive: no point contains them, and
 * abandoning the cycle cuts them off again.  So a roll-back removes the
 * index first (its cut would leave an index describing blocks that are
 * gone), and recovery checks those blocks against their hashes before it
 * rolls a cycle forward.  Nothing here is ever a symbolic link: every
 * file is opened with O_NOFOLLOW.
 *
 * Threads: cycle functions run in the owner's worker job; test failover
 * and verify may run in another worker at the same time: the store's
 * lock keeps them off the image while a cycle is being applied.
 */
#ifndef REPLICAD_STORE_H
#define REPLICAD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "digest.h"

struct store;

struct store_cycle {
	uint64_t	cycle;
	int64_t		created_ms;
	uint8_t		kind;
	uint64_t	generation;
	uint16_t	ndisks;
	uint64_t	sizes[CAT_MAX_DISKS];	/* at the cut */
};

/*
 * Open the store of rel (a replica relationship read from the catalog),
 * creating its directories and missing images, and finish or abandon a
 * cycle left by a crash.  The caller owns *out (store_close()).
 */
int	store_open(struct catalog *cat, const struct cat_rel *rel,
	    struct store **out, char *err, size_t errsz);
/* The same with the images at paths[0..ndisks-1] instead of
 * STORAGE/VM/DISK: a former primary receives into its own disk files. */
int	store_open_paths(struct catalog *cat, const struct cat_rel *rel,
	    char *const *paths, struct store **out, char *err, size_t errsz);
void	store_close(struct store *st);
/*
 * The store of a new relationship (from a HELLO) that the catalog does
 * not hold yet: STORAGE/VM/.new marks it until store_cycle_commit records
 * rel with its first point (one transaction).  Until then nothing of it
 * outlives the daemon: store_discard(), or store_sweep_new() at the next
 * start, removes what it made (a seed copy placed beforehand is kept).
 */
int	store_create(struct catalog *cat, const struct cat_rel *rel,
	    struct store **out, char *err, size_t errsz);
/* Whether the catalog holds the store's relationship (the loop may ask). */
int	store_recorded(struct store *st);
/* Close; a store whose relationship was never recorded also removes
 * what it made (and STORAGE/VM if store_open made it). */
void	store_discard(struct store *st);
/* Start-up: under storage, remove what new relationships that were never
 * recorded left behind (a crash between HELLO and the first point). */
void	store_sweep_new(struct catalog *cat, const char *storage);
/* The relationship as the store knows it (newest point, sizes); never
 * waits for an apply, so the loop thread may call it. */
void	store_rel(struct store *st, struct cat_rel *out);

/* Read the relationship again from the catalog (a role change). */
void	store_reload_rel(struct store *st);

int	store_cycle_begin(struct store *st, const struct store_cycle *c,
	    char *err, size_t errsz);
/* One extent whose content was already checked against hash.  data NULL
 * for a zero extent. */
int	store_cycle_put(struct store *st, uint16_t disk, uint64_t off,
	    uint32_t len, const uint8_t *data, const struct digest *hash,
	    char *err, size_t errsz);
/* The VM's definition (libvirt domain XML, len bytes, checked by the
 * wire decoder) that the cycle being received carries; copied.  A cycle
 * without one makes a point with the previous point's. */
int	store_cycle_definition(struct store *st, const char *xml, size_t len,
	    char *err, size_t errsz);
/* Apply the complete cycle and record it as point *out. */
int	store_cycle_commit(struct store *st, struct cat_point *out,
	    char *err, size_t errsz);
/* Abandon the cycle being received. */
void	store_cycle_abort(struct store *st);

/* The recorded digests of n blocks from off: a block of zeros gives the
 * digest of its zeros; all zero bytes where none is recorded (past the
 * file, or before the first point): unknown. */
int	store_get_digests(struct store *st, uint16_t disk, uint64_t off,
	    struct digest *d, size_t n);
/* Records of .digests/DISK as read from the file (n of them, the first
 * for the block at off) into digests: an all-zero record is a block of
 * zeros of a disk of size bytes.  For readers of the file outside a
 * store (a planned failover turns them into tracker state). */
void	store_records_expand(struct digest *d, size_t n, uint64_t off,
	    uint32_t bs, uint64_t size);
/*
 * Write back the newest point's true content of a damaged range (its
 * digest is recorded and the caller checked data against it): the image
 * becomes again what the point says, so the cycle's undo data will hold
 * the right old content.  Only below the newest point's disk size.
 */
int	store_repair(struct store *st, uint16_t disk, uint64_t off,
	    const uint8_t *data, size_t len, char *err, size_t errsz);

/*
 * Unplanned failover: move the images to point target (0: the newest),
 * older or newer than the point they hold, keeping what each step
 * overwrites (redo segments) until store_rewind_commit(); each step is
 * journalled in the catalog and a crash mid-step is undone at the next
 * open.  With check_unchanged, first refuse (RD_ERR_HASH) if the images
 * differ from the point they were left at (a VM ran on them).
 */
int	store_rewind(struct store *st, uint64_t target, int check_unchanged,
	    char *err, size_t errsz);
/* Make the point the images hold the newest: drop the newer points, their
 * undo segments and the redo segments.  *out (may be NULL) receives the
 * relationship as recorded. */
int	store_rewind_commit(struct store *st, struct cat_rel *out, char *err,
	    size_t errsz);

/*
 * Drop recovery point id (not the newest, not one with an open test
 * copy): the oldest loses its undo data, one in the middle has its undo
 * segment merged into the next point's (undo_merge), crash-safely.
 * *freed: bytes of undo data freed.
 */
int	store_drop_point(struct store *st, uint64_t id, uint64_t *freed,
	    char *err, size_t errsz);
/* Decode a staging index (the format at the top of store.c) as recovery
 * does: 0 and the cycle it describes and its number of records, or
 * RD_ERR_CORRUPT.  For tests/fuzz/fuzz_stage.c. */
int	store_index_check(const uint8_t *p, size_t len, struct store_cycle *c,
	    uint64_t *nrec);
/* Space of the storage: min_free from the [accept] entry (0: none; both
 * set: the smaller). */
void	store_set_space(struct store *st, uint64_t min_free_bytes,
	    unsigned min_free_pct);
/* Free and total bytes of the storage's file system, and what min_free
 * keeps free there. */
int	store_space(struct store *st, uint64_t *avail, uint64_t *total,
	    uint64_t *keep);
/* The point of the open test copy, 0 if none. */
uint64_t store_pinned_point(struct store *st);
/* STORAGE/VM/test, where the test copies are (whether or not they
 * exist); the store's. */
const char *store_test_dir(const struct store *st);

/*
 * The VM's definition recorded with point (0: the newest): 0 and its
 * text, NUL-terminated, in *xml (the caller's, free()); RD_ERR_NOT_FOUND
 * if the VM has no such point or the point has no definition (a VM
 * whose tracker captures none); another rd_err if the catalog fails.
 * Reads the catalog only: any thread, never waits for an apply.
 */
int	store_point_definition(struct store *st, uint64_t point, char **xml);

/* How many points' undo segments, written fast by their cycles (cloned,
 * not compressed), wait to be compacted (compressed) by the store's
 * thread: history_bytes shrinks as they are. */
int	store_compact_pending(struct store *st);

/* Resynchronisation.  Whether any image holds data (a seed copy, or a
 * former primary's disks). */
int	store_has_data(struct store *st);
/* Read [off, off + len) of a disk's image, zeros past its end. */
int	store_read(struct store *st, uint16_t disk, uint64_t off, size_t len,
	    uint8_t *buf, char *err, size_t errsz);
/* Record the digests of n blocks from off that a resync found equal on
 * both sides (their content is the same at the old and the new point). */
int	store_put_digests(struct store *st, uint16_t disk, uint64_t off,
	    const struct digest *d, size_t n, char *err, size_t errsz);

/*
 * Rebuild point id (0: newest) into STORAGE/VM/test/.  Refuses if a test
 * copy exists.  paths receives each disk's path (caller frees each).
 */
int	store_test_failover(struct store *st, uint64_t id, uint64_t *point,
	    char **paths, char *err, size_t errsz);
int	store_test_cleanup(struct store *st, char *err, size_t errsz);
int	store_test_exists(struct store *st);

/*
 * Re-hash the image against the digests the primary sent.  0 if all
 * match; RD_ERR_HASH with the first bad block named in err otherwise.
 * *blocks receives the number of blocks checked.
 */
int	store_verify(struct store *st, uint64_t *blocks, char *err,
	    size_t errsz);
/*
 * Verify that point can be rebuilt exactly: the images verify (as
 * store_verify()) and every undo segment between the newest point and
 * point is whole (undo_check(): every record, every cloned range's
 * content against its digest).  *segments receives how many were
 * checked.  RD_ERR_NOT_FOUND if there is no such point.
 */
int	store_verify_point(struct store *st, uint64_t point, uint64_t *blocks,
	    uint64_t *segments, char *err, size_t errsz);

#endif
