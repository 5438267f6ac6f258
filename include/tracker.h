/*
 * tracker.h — change tracking for the disks of one VM on the primary.
 *
 * The digest of every block as of the last acknowledged cycle is kept in
 * STATE_DIR/tracker/VM/DISK.map (blockmap.c).  At each cycle's cut a
 * backend (trk_backend.h: scan, reflink or qemu) fixes a view of the
 * disks and the ranges that may have changed since; the tracker reads
 * those ranges from the view and reports the blocks whose digest
 * changed.  New digests are kept aside until the replica's ACK
 * (trk_commit); a failed cycle (trk_abort) keeps the old ones and the
 * backend reports its ranges again, so its blocks are found again by the
 * next cycle (invariant P1).
 *
 * Only one thread uses a tracker at a time (the owner's worker job).
 */
#ifndef REPLICAD_TRACKER_H
#define REPLICAD_TRACKER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "digest.h"

struct tracker;

/* A changed block handed to the emit callback of trk_scan(). */
struct trk_block {
	uint16_t	 disk;
	uint64_t	 offset;
	uint32_t	 len;
	const uint8_t	*data;
	int		 zero;		/* all bytes zero */
	struct digest	 hash;		/* of data (unset when zero) */
};

/* Return 0 to go on, a negative rd_err to stop the scan with it. */
typedef int (*trk_emit_fn)(void *arg, const struct trk_block *blk);

struct trk_stats {
	uint64_t	bytes_read;
	uint64_t	dirty_bytes;
};

/*
 * Load the state of vm's disks.  A missing, corrupt or mismatched map
 * (other block size) is logged and makes that disk "unknown": its next
 * cycle sends every block.  The caller owns *out (trk_close()).
 */
int	trk_open(const char *state_dir, const struct cfg_vm *vm,
	    struct tracker **out);
void	trk_close(struct tracker *t);
/* "scan", "reflink", "qemu" or "libvirt". */
const char *trk_name(const struct tracker *t);
const char *trk_backend_name(enum cfg_tracker kind);
/* The cut gives a point-in-time view: post_snapshot may run right after
 * trk_begin(), before anything is read. */
int	trk_frozen(const struct tracker *t);
/* Can vm use its tracker on this host (replicad --check, VM start)?  0,
 * an rd_err with err, or TRK_CHECK_NOT_RUNNING (err says what is not
 * there): the guest is not running, so what needs it cannot be checked
 * now; the cycles check again (trk_backend.h). */
int	trk_check(const struct cfg_vm *vm, const char *state_dir, char *err,
	    size_t errsz);
/* This host stops being the primary of VM name: remove the tracker's
 * state (STATE_DIR/tracker/VM), and what the backend of vm (its [vm]
 * section, NULL if none) keeps elsewhere. */
void	trk_forget(const char *state_dir, const char *name,
	    const struct cfg_vm *vm);
/* Remove the clones a reflink tracker may have left beside vm's images
 * (vm now uses another tracker). */
void	trk_forget_clones(const struct cfg_vm *vm);
/* The disks' current sizes, without a cut. */
int	trk_sizes(struct tracker *t, uint64_t *sizes, char *err,
	    size_t errsz);
/* The cycle the saved state describes: the lowest over the disks, 0 if
 * any disk is unknown. */
uint64_t trk_cycle(const struct tracker *t);

/*
 * Begin cycle `cycle`: take the cut and each disk's size into sizes[].  Every
 * block of a disk counts as changed when full is set, when the disk's
 * state is unknown, or when its state describes another cycle than
 * replica_cycle, the last one the replica applied (P1).  Fails with a message in err
 * (and RD_ERR_NOT_FOUND, RD_ERR_SYSTEM or RD_ERR_SHRUNK) if a disk is
 * missing, unreadable, or smaller than at the last acknowledged cycle.
 */
int	trk_begin(struct tracker *t, uint64_t cycle, uint64_t replica_cycle,
	    int full, uint64_t *sizes, char *err, size_t errsz);
/*
 * Read on from where the last call stopped: at most max_read bytes (4 MiB
 * at most; at least one block) of the ranges the cut reported, calling
 * emit for each changed
 * block in disk and offset order.  The blocks' data stay valid until the
 * next call or trk_release().  Returns
 * 1 when every disk has been read, 0 if there is more, or a negative
 * rd_err (with a message in err).
 */
int	trk_scan(struct tracker *t, size_t max_read, trk_emit_fn emit,
	    void *arg, char *err, size_t errsz);
/* 1 if trk_scan() reads on through the whole of a disk (in order),
 * 0 if through the scattered ranges a cut reported. */
/* The bytes this cycle's scan reads: the disks whole, or the ranges the
 * cut reported (the denominator of a cycle's progress). */
uint64_t trk_to_read(const struct tracker *t);
int	trk_reads_whole(const struct tracker *t);
/* The last trk_scan()'s blocks are no longer needed: the buffer they
 * lie in goes back to the shared pool (pool.h) until the next call, so
 * that an idle VM holds none.  The end of a cycle does this too. */
void	trk_release(struct tracker *t);
void	trk_stats(const struct tracker *t, struct trk_stats *st);
/*
 * freeze = agent: freeze the guest's file systems before trk_begin();
 * 0: frozen, trk_thaw() must follow the cut; 1: nothing to freeze, the
 * disks are at rest (a cleanly shut-off domain); else an rd_err with
 * err (the point will be crash consistent).  RD_ERR_UNSUPPORTED if the
 * tracker cannot.
 */
int	trk_freeze(struct tracker *t, unsigned timeout_s, char *err,
	    size_t errsz);
void	trk_thaw(struct tracker *t);
/* The VM's definition (libvirt domain XML) at the last cut, or NULL if
 * the tracker has none.  Valid until the next trk_begin()/trk_close(). */
const char *trk_definition(const struct tracker *t);
/* The saved state of every disk describes exactly replica_cycle: a scan
 * against it finds every block that changed since (P1). */
int	trk_proven(const struct tracker *t, uint64_t replica_cycle);
/*
 * Begin a resynchronising cycle: open the disks and take their sizes
 * like trk_begin(), but read nothing; the new state is built by
 * trk_read_range() calls, which must cover every block before
 * trk_commit().
 */
int	trk_begin_resync(struct tracker *t, uint64_t cycle, uint64_t *sizes,
	    char *err, size_t errsz);
/*
 * Read [off, off + len) of disk into buf and note its blocks' digests in
 * the new state (a later read of the same range replaces them).  off is a
 * multiple of the block size; len whole blocks or up to the disk's end.
 */
int	trk_read_range(struct tracker *t, uint16_t disk, uint64_t off,
	    size_t len, uint8_t *buf, char *err, size_t errsz);
/* The chunk digest (digest_chunk) of a range trk_read_range() read. */
int	trk_range_digest(const struct tracker *t, uint16_t disk, uint64_t off,
	    size_t len, struct digest *out);
/* Count bytes a resync found different in the cycle's statistics. */
void	trk_add_dirty(struct tracker *t, uint64_t bytes);
/* The replica acknowledged the cycle: make the new digests the state. */
int	trk_commit(struct tracker *t, uint64_t cycle, char *err, size_t errsz);
/* After trk_commit(), off the cycle's path: let the backend remove what
 * the old base left.  trk_tidy_due() says whether there is anything. */
int	trk_tidy_due(const struct tracker *t);
void	trk_tidy(struct tracker *t);
/* The cycle failed: forget what this cycle read. */
void	trk_abort(struct tracker *t);

#endif
