/*
 * trk_backend.h — what a change tracker plugs into tracker.c.
 *
 * tracker.c owns what every tracker shares: the digest of every block as
 * of the last acknowledged cycle (blockmap.c, STATE_DIR/tracker/VM/
 * DISK.map), the comparison of what is read with it, the emission of the
 * blocks that differ, and the commit of the new digests after the
 * replica's ACK (invariant P1).  A backend supplies only:
 *
 *   - the cut: the disks' sizes and a point-in-time view to read from
 *     (scan: the live files; reflink: FICLONE copies; qemu: an NBD export
 *     of a fleecing node);
 *   - for each disk, the byte ranges that may have changed since the cut
 *     of the cycle the disk's saved digests describe, or "all" when it
 *     cannot tell (no earlier cut, lost state, a disk replaced);
 *   - reads from the view;
 *   - commit (the replica holds the cycle: the cut becomes the base of
 *     the next comparison) and abort (the cycle failed: the next cut must
 *     report again every range this one reported).
 *
 * Because every block read is compared with its saved digest, a backend
 * that reports too much costs reads, never correctness; a backend that
 * reports too little loses writes.  When in doubt, report "all".
 *
 * Every function runs on a worker thread, one at a time per tracker
 * (blocking I/O is fine).  Errors: a negative rd_err with one line in err.
 */
#ifndef REPLICAD_TRK_BACKEND_H
#define REPLICAD_TRK_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* The largest disk replicated (its digests alone take 16 bytes a block). */
#define TRK_MAX_DISK_SIZE	(UINT64_C(64) << 40)

/* A byte range of a disk. */
struct trk_extent {
	uint64_t	off;
	uint64_t	len;
};

/* The ranges a cut reports for one disk. */
struct trk_dirty {
	int			 all;	/* every byte may have changed */
	struct trk_extent	*ext;	/* sorted by off, not overlapping */
	size_t			 n;
	size_t			 cap;
};

/* Append [off, off + len) (ranges must come in increasing order; an
 * adjacent or overlapping range is merged into the last one). */
void	trk_dirty_add(struct trk_dirty *d, uint64_t off, uint64_t len);
void	trk_dirty_reset(struct trk_dirty *d);	/* empty, all = 0 */
void	trk_dirty_free(struct trk_dirty *d);

#define TRK_CHECK_NOT_RUNNING	1

struct trk_backend {
	const char	*name;
	/* The view stays fixed from the cut on, whatever the guest writes:
	 * the thaw (post_snapshot) may run right after cut(). */
	int		 frozen;
	/* read() and hole() may run on several threads at once for one
	 * state (a whole disk is then read and hashed on several cores). */
	int		 concurrent_reads;
	/*
	 * Make the backend's state for vm (its disks' paths or node names
	 * are vm->disks; the tracker's directory under state_dir exists,
	 * its files are named by layout.h).
	 * Only cheap, local work here: failures to reach anything (QEMU)
	 * belong to cut().  *state is passed to every other call.
	 */
	int	(*open)(const struct cfg_vm *vm, const char *state_dir,
		    void **state, char *err, size_t errsz);
	void	(*close)(void *state);
	/*
	 * The disks' current sizes, without a cut (for HELLO).  sizes has
	 * vm->ndisks entries.
	 */
	int	(*sizes)(void *state, uint64_t *sizes, char *err, size_t errsz);
	/*
	 * Take the cut of cycle `cycle`.  since[i] is the cycle whose cut
	 * disk i's saved digests describe (0: none, or the tracker reads
	 * the whole disk anyway: report all, and give a view of all of it).
	 * On entry sizes[i] is the disk's size at that cut (when since[i]
	 * is not 0): a base of another size cannot be compared with.  Fill
	 * sizes[i] (the size at the cut) and dirty[i] (reset by the caller):
	 * every range written since that cycle's cut, or all = 1.  On
	 * failure nothing of the cut may remain (as if abort() ran).
	 */
	int	(*cut)(void *state, uint64_t cycle, const uint64_t *since,
		    uint64_t *sizes, struct trk_dirty *dirty, char *err,
		    size_t errsz);
	/*
	 * Read len bytes at off of disk's view (off + len <= its size at
	 * the cut).  RD_ERR_TRUNCATED if the view ended early (the disk
	 * shrank), RD_ERR_SYSTEM with errno, or another rd_err with err.
	 */
	int	(*read)(void *state, size_t disk, uint8_t *buf, size_t len,
		    uint64_t off, char *err, size_t errsz);
	/*
	 * Where the hole of disk's view that starts at off ends, at most
	 * end (off + len <= its size at the cut): its bytes read as zeros,
	 * so the tracker need not read them.  off if off is not in a hole
	 * or the backend cannot tell.  May be NULL.
	 */
	uint64_t (*hole)(void *state, size_t disk, uint64_t off, uint64_t end);
	/*
	 * [off, off + len) of disk's view will be read soon: start reading
	 * it without waiting (a hint; the reads that follow must not need
	 * it).  May be NULL.
	 */
	void	(*prefetch)(void *state, size_t disk, uint64_t off,
		    uint64_t len);
	/*
	 * The replica durably holds cycle `cycle` and the tracker saved its
	 * digests: the cut becomes the base of the next comparison (the
	 * next cut gets since[i] == cycle).  A failure here is logged by
	 * the caller and must leave the backend reporting "all" (or the
	 * old base's ranges plus everything since) at the next cut.
	 */
	int	(*commit)(void *state, uint64_t cycle, char *err, size_t errsz);
	/*
	 * After a commit, once the cycle's requester has its answer: remove
	 * what the old base left (it may be slow, e.g. the unlink of a
	 * clone).  Never runs during a cut.  May be NULL.
	 */
	void	(*tidy)(void *state);
	/*
	 * The cycle failed (or the daemon stops mid-cycle): drop the view;
	 * the next cut must report every range this one reported, plus
	 * whatever was written since.
	 */
	void	(*abort)(void *state);
	/*
	 * replicad --check and the VM's start: can vm use this tracker here
	 * (file system supports reflinks, QMP socket reachable...)?  0, an
	 * rd_err with a plain sentence in err, or TRK_CHECK_NOT_RUNNING
	 * with err: the guest is not running, so what needs it cannot be
	 * checked now (a warning; each cycle finds out).  May be NULL.
	 */
	int	(*check)(const struct cfg_vm *vm, const char *state_dir,
		    char *err, size_t errsz);
	/*
	 * The host stops being vm's primary (a failover): remove what the
	 * backend keeps outside the tracker's directory.  May be NULL.
	 */
	void	(*forget)(const struct cfg_vm *vm);
	/*
	 * Every range the cut reported was read: the view may go (the cut
	 * stays the next base if commit() follows).  May be NULL.
	 */
	void	(*viewed)(void *state);
	/*
	 * Freeze the guest's file systems for the next cut (freeze = agent),
	 * waiting at most timeout_s; 0 if frozen (thaw() must follow, after
	 * the cut), 1 if there is nothing to freeze and the disks are at
	 * rest (a cleanly shut-off guest: the point is application
	 * consistent all the same), or an rd_err with err.  May be NULL.
	 */
	int	(*freeze)(void *state, unsigned timeout_s, char *err,
		    size_t errsz);
	void	(*thaw)(void *state);
	/*
	 * The VM's definition (libvirt domain XML) as it was at the last
	 * cut, or NULL.  Valid until the next cut or close.  May be NULL.
	 */
	const char *(*definition)(void *state);
};

extern const struct trk_backend trk_backend_scan;
extern const struct trk_backend trk_backend_reflink;
extern const struct trk_backend trk_backend_qemu;
extern const struct trk_backend trk_backend_libvirt;

const struct trk_backend *trk_backend_of(enum cfg_tracker kind);

#endif
