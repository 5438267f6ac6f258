/*
 * tracker.c — what every change tracker shares: the block digests of the
 * last acknowledged cycle, the comparison of what a cycle reads with
 * them, and their commit after the replica's ACK.  The backends
 * (trk_scan.c, trk_reflink.c, trk_qemu.c) supply the cut, the ranges that
 * may have changed, and the reads; see trk_backend.h.
 *
 * Memory: the acknowledged digests stay on disk (blockmap.c: read in
 * windows, increasing order); a cycle keeps only the digests that
 * differ from them (struct bm_changes: in memory while few, spilled to a
 * file beyond), and the digests of the range trk_read_range() read last.
 * A cycle in which nothing changed commits by writing the small cycle
 * file, not the map.
 *
 * P1 across crashes: the old map stays as it is until trk_commit(), which
 * runs only after the replica's ACK; bm_commit() replaces it atomically.
 * A crash before that leaves a map (or cycle file) of an older cycle than
 * the replica's: trk_proven() fails (the session resyncs) and begin()
 * reads the whole disk; a commit that saved some disks and not others
 * leaves the others so.  Why the files are safe: blockmap.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blockmap.h"
#include "err.h"
#include "fault.h"
#include "layout.h"
#include "log.h"
#include "par.h"
#include "pool.h"
#include "trk_backend.h"
#include "tracker.h"
#include "util.h"
#include "xmalloc.h"

#define TRK_CHUNK	(4u << 20)	/* bytes read per trk_scan() call */
#define TRK_PIECE	(256u << 10)	/* ... per read */
#define TRK_HOLES	(256u << 20)	/* bytes of holes per trk_scan() call */
#define PREFETCH	(16u << 20)	/* reported bytes read ahead, at most */

enum { BEGIN_SCAN, BEGIN_FULL, BEGIN_RESYNC };

struct trk_disk {
	char		*name;
	char		*path;		/* as configured, for messages */
	char		*map_path;
	int		 known;		/* map loaded and valid */
	int		 whole;		/* this cycle reads and sends every block */
	int		 reset;		/* the new map starts from no digest */
	struct bm_file	*map;		/* as of the acknowledged cycle */
	struct bm_changes *next;	/* what this cycle changed */
	uint64_t	 unknown_from;	/* blocks with no valid old digest */
	uint64_t	 size;		/* at this cycle's cut */
	size_t		 ext;		/* scan cursor: extent of dirty[] */
};

struct tracker {
	char		*vm;
	char		*dir;
	uint32_t	 block_size;
	size_t		 ndisks;
	struct trk_disk	*disks;
	struct trk_dirty *dirty;	/* what the cut reported, per disk */
	const struct trk_backend *be;
	void		*bs;		/* the backend's state */
	int		 active;	/* a cut is held */
	int		 viewed;	/* ... and trk_scan() read all of it */
	int		 tidy_due;	/* committed; the backend may tidy */
	size_t		 cur_disk;	/* scan cursor */
	uint64_t	 cur_off;
	size_t		 pf_disk;	/* prefetched up to here (dirty */
	size_t		 pf_ext;	/* extents before it are) */
	uint64_t	 pf_off;
	uint8_t		*buf;		/* chunk_len() bytes from the pool
					   while a trk_scan()'s blocks are in
					   use (trk_release()), else NULL */
	uint8_t		*zeros;		/* one block of zeros */
	struct digest	 zero_digest;	/* of one whole zero block */
	uint16_t	 range_disk;	/* what trk_read_range() read last */
	uint64_t	 range_first;	/* its first block */
	size_t		 range_n;	/* blocks */
	size_t		 range_cap;
	struct digest	*range;		/* their digests */
	struct trk_stats stats;
	char		*test_def;	/* REPLICAD_TEST_DEFINITION's text */
};

/* --- dirty ranges --------------------------------------------------------- */

void
trk_dirty_add(struct trk_dirty *d, uint64_t off, uint64_t len)
{
	if (len == 0)
		return;
	if (d->n > 0) {
		struct trk_extent *last = &d->ext[d->n - 1];
		if (off >= last->off && off <= last->off + last->len) {
			if (off + len > last->off + last->len)
				last->len = off + len - last->off;
			return;
		}
	}
	if (d->n == d->cap) {
		d->cap = d->cap ? 2 * d->cap : 64;
		d->ext = xreallocarray(d->ext, d->cap, sizeof(*d->ext));
	}
	d->ext[d->n].off = off;
	d->ext[d->n].len = len;
	d->n++;
}

void
trk_dirty_reset(struct trk_dirty *d)
{
	d->n = 0;
	d->all = 0;
}

void
trk_dirty_free(struct trk_dirty *d)
{
	free(d->ext);
	memset(d, 0, sizeof(*d));
}

static int
ext_cmp(const void *a, const void *b)
{
	const struct trk_extent *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* Whole blocks, within the disk, sorted, merged. */
static void
dirty_normalize(struct trk_dirty *d, uint32_t bs, uint64_t size)
{
	size_t n = d->n;
	if (n == 0)
		return;
	qsort(d->ext, n, sizeof(*d->ext), ext_cmp);
	d->n = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t off = d->ext[i].off, end = off + d->ext[i].len;
		if (end < off || end > size)
			end = size;		/* overflow or past the end */
		if (off >= end)
			continue;
		off -= off % bs;
		if (end % bs != 0)
			end = end - end % bs + bs < end ? size :
			    end - end % bs + bs;
		if (end > size)
			end = size;
		/* In place: the output never passes the input. */
		trk_dirty_add(d, off, end - off);
	}
}

const struct trk_backend *
trk_backend_of(enum cfg_tracker kind)
{
	switch (kind) {
	case TRACKER_REFLINK:	return &trk_backend_reflink;
	case TRACKER_QEMU:	return &trk_backend_qemu;
	case TRACKER_LIBVIRT:	return &trk_backend_libvirt;
	case TRACKER_SCAN:	break;
	}
	return &trk_backend_scan;
}

/* --- life ------------------------------------------------------------------ */

int
trk_open(const char *state_dir, const struct cfg_vm *vm, struct tracker **out)
{
	struct tracker *t = xcalloc(1, sizeof(*t));
	char err[512];
	int r;

	t->vm = xstrdup(vm->name);
	t->dir = lay_tracker_dir(state_dir, vm->name);
	t->block_size = vm->block_size;
	t->ndisks = vm->ndisks;
	t->disks = xcalloc(vm->ndisks, sizeof(*t->disks));
	t->dirty = xcalloc(vm->ndisks, sizeof(*t->dirty));
	t->be = trk_backend_of(vm->tracker);
	if ((r = util_mkdir_p(t->dir, 0700)) != 0) {
		log_warn("%s: cannot create %s", vm->name, t->dir);
		trk_close(t);
		return r;
	}
	for (size_t i = 0; i < vm->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		d->name = xstrdup(vm->disk_names[i]);
		d->path = xstrdup(vm->disks[i]);
		d->map_path = lay_tracker_map(state_dir, vm->name,
		    vm->disk_names[i]);
		r = bm_open(d->map_path, &d->map);
		if (r == 0 && bm_file_block_size(d->map) != vm->block_size) {
			log_warnx("%s: %s: block size changed from %u to %u; "
			    "the disk will be sent whole", vm->name,
			    vm->disk_names[i], bm_file_block_size(d->map),
			    vm->block_size);
			bm_close(d->map);
			d->map = NULL;
			r = RD_ERR_INVALID;
		} else if (r != 0 && r != RD_ERR_NOT_FOUND) {
			log_warnx("%s: tracker state %s unusable (%s); the disk "
			    "will be sent whole", vm->name, d->map_path,
			    rd_strerror(r));
		}
		d->known = r == 0;
	}
	if ((r = t->be->open(vm, state_dir, &t->bs, err, sizeof(err))) != 0) {
		log_warnx("%s: tracker %s: %s", vm->name, t->be->name, err);
		trk_close(t);
		return r;
	}
	t->zeros = xcalloc(1, vm->block_size);
	digest_block(t->zeros, vm->block_size, &t->zero_digest);
	*out = t;
	return 0;
}

/* The bytes trk_scan() reads at most in one call. */
static size_t
chunk_len(const struct tracker *t)
{
	return TRK_CHUNK < t->block_size ? t->block_size : TRK_CHUNK;
}

void
trk_release(struct tracker *t)
{
	if (t->buf == NULL)
		return;
	pool_buf_put(t->buf, chunk_len(t));
	t->buf = NULL;
}

static void
drop_cut(struct tracker *t)
{
	for (size_t i = 0; i < t->ndisks; i++) {
		bm_changes_free(t->disks[i].next);
		t->disks[i].next = NULL;
		bm_file_idle(t->disks[i].map);
		trk_dirty_reset(&t->dirty[i]);
	}
	t->active = 0;
	t->viewed = 0;
	trk_release(t);
}

void
trk_close(struct tracker *t)
{
	if (t == NULL)
		return;
	if (t->active && t->be && t->bs)
		t->be->abort(t->bs);
	drop_cut(t);
	if (t->be && t->bs)
		t->be->close(t->bs);
	for (size_t i = 0; i < t->ndisks; i++) {
		bm_close(t->disks[i].map);
		trk_dirty_free(&t->dirty[i]);
		free(t->disks[i].name);
		free(t->disks[i].path);
		free(t->disks[i].map_path);
	}
	free(t->disks);
	free(t->dirty);
	free(t->zeros);
	free(t->range);
	free(t->dir);
	free(t->vm);
	free(t->test_def);
	free(t);
}

const char *
trk_name(const struct tracker *t)
{
	return t->be->name;
}

const char *
trk_backend_name(enum cfg_tracker kind)
{
	return trk_backend_of(kind)->name;
}

int
trk_frozen(const struct tracker *t)
{
	return t->be->frozen;
}

int
trk_check(const struct cfg_vm *vm, const char *state_dir, char *err,
    size_t errsz)
{
	const struct trk_backend *be = trk_backend_of(vm->tracker);
	return be->check ? be->check(vm, state_dir, err, errsz) : 0;
}

void
trk_forget(const char *state_dir, const char *name, const struct cfg_vm *vm)
{
	char *dir = lay_tracker_dir(state_dir, name);
	util_rm_rf(dir);
	free(dir);
	if (vm != NULL && trk_backend_of(vm->tracker)->forget)
		trk_backend_of(vm->tracker)->forget(vm);
}

/* A size from a file system or from QEMU: not beyond what we can hold. */
static int
size_ok(const struct tracker *t, size_t i, uint64_t size, char *err,
    size_t errsz)
{
	if (size <= TRK_MAX_DISK_SIZE)
		return 0;
	snprintf(err, errsz, "disk %s reports %llu bytes, more than the 64 TiB "
	    "replicad supports", t->disks[i].path, (unsigned long long)size);
	return RD_ERR_TOO_LARGE;
}

void
trk_forget_clones(const struct cfg_vm *vm)
{
	trk_backend_reflink.forget(vm);
}

int
trk_sizes(struct tracker *t, uint64_t *sizes, char *err, size_t errsz)
{
	int r = t->be->sizes(t->bs, sizes, err, errsz);
	for (size_t i = 0; r == 0 && i < t->ndisks; i++)
		r = size_ok(t, i, sizes[i], err, errsz);
	return r;
}

uint64_t
trk_cycle(const struct tracker *t)
{
	uint64_t c = UINT64_MAX;
	for (size_t i = 0; i < t->ndisks; i++) {
		if (!t->disks[i].known)
			return 0;
		if (bm_file_cycle(t->disks[i].map) < c)
			c = bm_file_cycle(t->disks[i].map);
	}
	return t->ndisks ? c : 0;
}

int
trk_proven(const struct tracker *t, uint64_t replica_cycle)
{
	for (size_t i = 0; i < t->ndisks; i++)
		if (!t->disks[i].known ||
		    bm_file_cycle(t->disks[i].map) != replica_cycle)
			return 0;
	return 1;
}

/* --- the cut ---------------------------------------------------------------- */

/*
 * For tests only: a backend that captures no definition (all but
 * libvirt) reports the text of the file REPLICAD_TEST_DEFINITION names
 * as it is at each cut, so that the system tests can make definitions
 * travel without libvirt.  Unset, as in production, nothing happens.
 */
static void
test_definition(struct tracker *t)
{
	const char *path = getenv("REPLICAD_TEST_DEFINITION");
	uint8_t *data = NULL;
	size_t len = 0;

	free(t->test_def);
	t->test_def = NULL;
	if (path == NULL || t->be->definition != NULL ||
	    util_read_file(path, 4u << 20, &data, &len) != 0)
		return;
	t->test_def = xmalloc(len + 1);
	memcpy(t->test_def, data, len);
	t->test_def[len] = '\0';
	free(data);
}

static int
begin(struct tracker *t, uint64_t cycle, uint64_t replica_cycle, int mode,
    uint64_t *sizes, char *err, size_t errsz)
{
	uint64_t since[CFG_MAX_DISKS];
	uint32_t bs = t->block_size;
	int r;

	if (t->active) {
		t->be->abort(t->bs);
		drop_cut(t);
	}
	memset(&t->stats, 0, sizeof(t->stats));
	for (size_t i = 0; i < t->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		trk_dirty_reset(&t->dirty[i]);
		/*
		 * The map proves what the replica holds only if it describes
		 * the very cycle the replica applied last.  If the replica is
		 * ahead (its ACK was lost), a block may have changed in that
		 * cycle and changed back since: send the whole disk.
		 */
		d->whole = mode != BEGIN_SCAN || !d->known ||
		    bm_file_cycle(d->map) != replica_cycle;
		if (d->whole && d->known && mode == BEGIN_SCAN)
			log_info("%s: %s: tracker state is at cycle %llu, the "
			    "replica at %llu: sending the whole disk", t->vm,
			    d->path, (unsigned long long)bm_file_cycle(d->map),
			    (unsigned long long)replica_cycle);
		/* What the backend compares against: the cut whose digests
		 * the map holds, when they count; 0 when the whole disk is
		 * read anyway (the backend then gives a view of all of it). */
		since[i] = d->whole ? 0 : bm_file_cycle(d->map);
		sizes[i] = d->whole ? 0 : bm_file_disk_size(d->map);
	}
	if ((r = t->be->cut(t->bs, cycle, since, sizes, t->dirty, err,
	    errsz)) != 0)
		return r;
	test_definition(t);
	for (size_t i = 0; i < t->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		struct trk_dirty *dy = &t->dirty[i];

		d->size = sizes[i];
		d->ext = 0;
		if ((r = size_ok(t, i, d->size, err, errsz)) != 0) {
			t->be->abort(t->bs);
			drop_cut(t);
			return r;
		}
		uint64_t old_size = d->known ? bm_file_disk_size(d->map) : 0;
		if (d->known && d->size < old_size) {
			snprintf(err, errsz, "disk %s shrank from %llu to %llu "
			    "bytes; shrinking a replicated disk is not "
			    "supported", d->path,
			    (unsigned long long)old_size,
			    (unsigned long long)d->size);
			t->be->abort(t->bs);
			drop_cut(t);
			return RD_ERR_SHRUNK;
		}
		if (d->whole) {
			dy->all = 1;
		} else if (!dy->all) {
			/* A grown disk: its new blocks, and the old last block
			 * (its length changed), count as written. */
			if (d->size != old_size) {
				uint64_t from = old_size - old_size % bs;
				trk_dirty_add(dy, from, d->size - from);
			}
			dirty_normalize(dy, bs, d->size);
		}
		/* Every block is read and noted by trk_read_range(). */
		d->reset = mode == BEGIN_RESYNC;
		d->next = bm_changes_new(d->map_path,
		    bm_nblocks(d->size, bs));
		/* The old digests hold up to the old last block, which
		 * counts as unknown if the disk's size changed (its length
		 * did). */
		d->unknown_from = 0;
		if (d->known && !d->reset) {
			d->unknown_from = bm_file_nblocks(d->map);
			if (d->size != old_size && d->unknown_from > 0)
				d->unknown_from--;
		}
	}
	t->active = 1;
	t->cur_disk = 0;
	t->cur_off = 0;
	t->pf_disk = 0;
	t->pf_ext = 0;
	t->pf_off = 0;
	return 0;
}

int
trk_begin(struct tracker *t, uint64_t cycle, uint64_t replica_cycle, int full,
    uint64_t *sizes, char *err, size_t errsz)
{
	return begin(t, cycle, replica_cycle, full ? BEGIN_FULL : BEGIN_SCAN,
	    sizes, err, errsz);
}

int
trk_begin_resync(struct tracker *t, uint64_t cycle, uint64_t *sizes,
    char *err, size_t errsz)
{
	return begin(t, cycle, 0, BEGIN_RESYNC, sizes, err, errsz);
}

/* --- reading ------------------------------------------------------------------ */

/* A backend read's failure r at off as a sentence in err (the backend's
 * own, berr, for other errors); r. */
static int
read_failed(struct tracker *t, size_t disk, uint64_t off, int r,
    const char *berr, char *err, size_t errsz)
{
	if (r == RD_ERR_TRUNCATED) {
		snprintf(err, errsz, "disk %s shrank while being read",
		    t->disks[disk].path);
		return RD_ERR_SHRUNK;
	} else if (r == RD_ERR_SYSTEM) {
		snprintf(err, errsz, "disk %s: read at %llu: %s",
		    t->disks[disk].path, (unsigned long long)off,
		    strerror(errno));
	} else if (berr != err) {
		snprintf(err, errsz, "%s", berr);
	}
	return r;
}

static int
view_read(struct tracker *t, size_t disk, uint8_t *buf, size_t len,
    uint64_t off, char *err, size_t errsz)
{
	int r = t->be->read(t->bs, disk, buf, len, off, err, errsz);
	if (r != 0)
		return read_failed(t, disk, off, r, err, err, errsz);
	t->stats.bytes_read += len;
	return 0;
}

int
trk_read_range(struct tracker *t, uint16_t disk, uint64_t off, size_t len,
    uint8_t *buf, char *err, size_t errsz)
{
	uint32_t bs = t->block_size;
	int r;

	if (!t->active || disk >= t->ndisks)
		return RD_ERR_STATE;
	struct trk_disk *d = &t->disks[disk];
	if (off % bs != 0 || off > d->size || len > d->size - off ||
	    (len % bs != 0 && off + len != d->size))
		return RD_ERR_RANGE;
	t->range_n = 0;
	if ((r = view_read(t, disk, buf, len, off, err, errsz)) != 0)
		return r;
	size_t nb = len / bs + (len % bs != 0);
	if (nb > t->range_cap) {
		t->range = xreallocarray(t->range, nb, sizeof(*t->range));
		t->range_cap = nb;
	}
	for (size_t o = 0, i = 0; o < len; o += bs, i++) {
		size_t n = len - o < bs ? len - o : bs;
		struct digest *dg = &t->range[i];
		if (n == bs && util_is_zero(buf + o, n))
			*dg = t->zero_digest;
		else
			digest_block(buf + o, n, dg);
		if ((r = bm_changes_set(d->next, (off + o) / bs, dg)) != 0) {
			snprintf(err, errsz, "tracker state %s.next: %s",
			    d->map_path, r == RD_ERR_SYSTEM ?
			    strerror(errno) : rd_strerror(r));
			return r;
		}
	}
	t->range_disk = disk;
	t->range_first = off / bs;
	t->range_n = nb;
	return 0;
}

int
trk_range_digest(const struct tracker *t, uint16_t disk, uint64_t off,
    size_t len, struct digest *out)
{
	if (!t->active || disk >= t->ndisks || len == 0)
		return RD_ERR_STATE;
	/* Only what trk_read_range() read last is kept. */
	uint64_t first = off / t->block_size;
	uint64_t n = (len + t->block_size - 1) / t->block_size;
	if (disk != t->range_disk || first < t->range_first ||
	    first - t->range_first > t->range_n ||
	    n > t->range_n - (first - t->range_first))
		return RD_ERR_RANGE;
	digest_chunk(&t->range[first - t->range_first], (size_t)n, out);
	return 0;
}

void
trk_add_dirty(struct tracker *t, uint64_t bytes)
{
	t->stats.dirty_bytes += bytes;
}

/*
 * The next range of the current disk to read, at most max bytes, from
 * the scan cursor on; 0 when the disk has nothing more.
 */
static size_t
next_range(struct tracker *t, size_t max, uint64_t *off)
{
	struct trk_disk *d = &t->disks[t->cur_disk];
	struct trk_dirty *dy = &t->dirty[t->cur_disk];
	uint64_t start, end;

	if (dy->all) {
		start = t->cur_off;
		end = d->size;
	} else {
		while (d->ext < dy->n && dy->ext[d->ext].off +
		    dy->ext[d->ext].len <= t->cur_off)
			d->ext++;
		if (d->ext == dy->n)
			return 0;
		start = dy->ext[d->ext].off > t->cur_off ?
		    dy->ext[d->ext].off : t->cur_off;
		end = dy->ext[d->ext].off + dy->ext[d->ext].len;
	}
	if (start >= end)
		return 0;
	*off = start;
	return end - start < max ? (size_t)(end - start) : max;
}

/* Reported bytes hinted already and not yet read: between the cursor and
 * the prefetch position, on the current disk. */
static uint64_t
hinted_ahead(const struct tracker *t)
{
	const struct trk_disk *d = &t->disks[t->cur_disk];
	const struct trk_dirty *dy = &t->dirty[t->cur_disk];
	uint64_t sum = 0;

	for (size_t i = d->ext; i < dy->n && i <= t->pf_ext; i++) {
		const struct trk_extent *x = &dy->ext[i];
		if (x->off >= t->pf_off)
			break;
		uint64_t s = x->off > t->cur_off ? x->off : t->cur_off;
		uint64_t e = x->off + x->len < t->pf_off ? x->off + x->len :
		    t->pf_off;
		if (e > s)
			sum += e - s;
	}
	return sum;
}

/*
 * Ask the backend to read ahead the reported ranges, PREFETCH bytes of
 * them past the scan cursor however far apart they lie: a cycle's changed
 * blocks lie scattered, and read one after the other each would wait for
 * the disk alone (hinted many at once, the disk serves them together).  A
 * disk read whole is read in order (the kernel's own readahead serves it).
 */
static void
prefetch(struct tracker *t)
{
	uint64_t budget = PREFETCH;

	if (t->be->prefetch == NULL)
		return;
	if (t->pf_disk != t->cur_disk) {
		t->pf_disk = t->cur_disk;
		t->pf_ext = 0;
		t->pf_off = 0;
	} else if (t->cur_disk < t->ndisks) {
		uint64_t ahead = hinted_ahead(t);
		if (ahead >= PREFETCH)
			return;
		budget -= ahead;
	}
	/* The current disk only: the cursor bounds what is hinted. */
	while (t->pf_disk < t->ndisks && budget > 0) {
		struct trk_dirty *dy = &t->dirty[t->pf_disk];
		if (dy->all || t->pf_ext >= dy->n)
			return;
		const struct trk_extent *x = &dy->ext[t->pf_ext];
		uint64_t from = x->off > t->pf_off ? x->off : t->pf_off;
		if (from < t->cur_off)
			from = t->cur_off;
		uint64_t end = x->off + x->len;
		if (from >= end) {
			t->pf_ext++;
			continue;
		}
		uint64_t n = end - from < budget ? end - from : budget;
		t->be->prefetch(t->bs, t->pf_disk, from, n);
		budget -= n;
		t->pf_off = from + n;
		if (t->pf_off >= end)
			t->pf_ext++;
	}
}

uint64_t
trk_to_read(const struct tracker *t)
{
	uint64_t sum = 0;

	if (!t->active)
		return 0;
	for (size_t i = 0; i < t->ndisks; i++) {
		const struct trk_dirty *dy = &t->dirty[i];
		uint64_t size = t->disks[i].size;
		if (dy->all) {
			sum += size;
			continue;
		}
		for (size_t k = 0; k < dy->n; k++) {
			const struct trk_extent *x = &dy->ext[k];
			if (x->off >= size)
				continue;
			sum += x->len < size - x->off ? x->len : size - x->off;
		}
	}
	return sum;
}

int
trk_reads_whole(const struct tracker *t)
{
	return t->active && t->cur_disk < t->ndisks &&
	    t->dirty[t->cur_disk].all;
}

/*
 * One block read (or known to be a hole: data is t->zeros): compared with
 * its old digest, recorded in the new map if it changed, and emitted if
 * the cycle sends it.  1 if emitted, 0 if not, or an rd_err with err.
 */
static int
visit_block(struct tracker *t, struct trk_block *blk, trk_emit_fn emit,
    void *arg, char *err, size_t errsz)
{
	struct trk_disk *d = &t->disks[blk->disk];
	uint64_t idx = blk->offset / t->block_size;
	struct digest old;
	int r;

	memset(&old, 0, sizeof(old));
	if (idx < d->unknown_from && (r = bm_file_get(d->map, idx, &old)) !=
	    0) {
		snprintf(err, errsz, "tracker state %s: %s", d->map_path,
		    r == RD_ERR_SYSTEM ? strerror(errno) : rd_strerror(r));
		return r;
	}
	int differs = !digest_equal(&old, &blk->hash);
	if ((differs || d->reset) && (r = bm_changes_set(d->next, idx,
	    &blk->hash)) != 0) {
		snprintf(err, errsz, "tracker state %s.next: %s", d->map_path,
		    r == RD_ERR_SYSTEM ? strerror(errno) : rd_strerror(r));
		return r;
	}
	if (!d->whole && !differs)
		return 0;
	t->stats.dirty_bytes += blk->len;
	if ((r = emit(arg, blk)) != 0) {
		snprintf(err, errsz, "%s", rd_strerror(r));
		return r;
	}
	return 1;
}

/* A block's digest and zero mark, from its data (NULL: a hole). */
static void
hash_block(const struct tracker *t, struct trk_block *blk, const uint8_t *p)
{
	blk->data = p != NULL ? p : t->zeros;
	blk->zero = p == NULL || util_is_zero(blk->data, blk->len);
	if (blk->zero && blk->len == t->block_size)
		blk->hash = t->zero_digest;
	else
		digest_block(blk->data, blk->len, &blk->hash);
}

/*
 * A span of a disk read whole, read and hashed in parts on several cores
 * (par.h): the kernel's copy from the page cache and XXH3 take a whole
 * disk's scan, and one core does half as much of it with two.  Each part
 * skips the hole it starts in, as the loop in trk_scan() does.
 */
#define SPAN_PARTS	(TRK_CHUNK / TRK_PIECE)

struct span {
	struct tracker	*t;
	size_t		 disk;
	uint64_t	 off;
	size_t		 len;
	size_t		 piece;		/* bytes per part, whole blocks */
	uint8_t		*buf;		/* len bytes */
	uint64_t	 holes[SPAN_PARTS];	/* bytes of hole in each */
	int		 rc[SPAN_PARTS];
	int		 errnum[SPAN_PARTS];
	char		 err[SPAN_PARTS][160];
	struct trk_block blk[];		/* one per block of the span */
};

static void
span_part(void *arg, size_t i)
{
	struct span *sp = arg;
	struct tracker *t = sp->t;
	uint32_t bs = t->block_size;
	size_t at = i * sp->piece;
	size_t len = sp->len - at < sp->piece ? sp->len - at : sp->piece;
	uint64_t off = sp->off + at;
	size_t hole = 0;

	if (t->be->hole != NULL) {
		uint64_t hend = t->be->hole(t->bs, sp->disk, off, off + len);
		if (hend > off && hend <= off + len)
			hole = (size_t)(hend - off);
		if (hole < len)
			hole -= hole % bs;
	}
	sp->holes[i] = hole;
	sp->err[i][0] = '\0';
	sp->rc[i] = hole == len ? 0 : t->be->read(t->bs, sp->disk,
	    sp->buf + at + hole, len - hole, off + hole, sp->err[i],
	    sizeof(sp->err[i]));
	sp->errnum[i] = errno;
	if (sp->rc[i] != 0)
		return;
	for (size_t o = 0; o < len; o += bs) {
		struct trk_block *blk = &sp->blk[(at + o) / bs];
		blk->disk = (uint16_t)sp->disk;
		blk->offset = off + o;
		blk->len = (uint32_t)(len - o < bs ? len - o : bs);
		hash_block(t, blk, o < hole ? NULL : sp->buf + at + o);
	}
}

static int
scan_span(struct tracker *t, uint64_t off, size_t len, uint8_t *buf,
    trk_emit_fn emit, void *arg, char *err, size_t errsz)
{
	uint32_t bs = t->block_size;
	size_t nblk = len / bs + (len % bs != 0);
	struct span *sp = xmalloc(sizeof(*sp) + nblk * sizeof(sp->blk[0]));
	int r = 0;

	sp->t = t;
	sp->disk = t->cur_disk;
	sp->off = off;
	sp->len = len;
	/* Parts of about TRK_PIECE, whole blocks, at most SPAN_PARTS. */
	size_t piece = TRK_PIECE < bs ? bs : TRK_PIECE - TRK_PIECE % bs;
	if ((len + piece - 1) / piece > SPAN_PARTS) {
		piece = (len + SPAN_PARTS - 1) / SPAN_PARTS;
		piece += (bs - piece % bs) % bs;
	}
	sp->piece = piece;
	sp->buf = buf;
	size_t nparts = (len + piece - 1) / piece;
	par_run(span_part, sp, nparts);
	for (size_t i = 0; i < nparts && r == 0; i++) {
		if (sp->rc[i] == 0)
			continue;
		errno = sp->errnum[i];
		r = read_failed(t, sp->disk, off + i * sp->piece +
		    sp->holes[i], sp->rc[i], sp->err[i], err, errsz);
	}
	if (r == 0)
		t->stats.bytes_read += len;
	for (size_t o = 0; r == 0 && o < len; o += bs)
		if ((r = visit_block(t, &sp->blk[o / bs], emit, arg, err,
		    errsz)) > 0)
			r = 0;
	free(sp);
	return r;
}

int
trk_scan(struct tracker *t, size_t max_read, trk_emit_fn emit, void *arg,
    char *err, size_t errsz)
{
	uint32_t bs = t->block_size;
	size_t chunk = chunk_len(t);
	size_t pos = 0;		/* bytes of t->buf used by this call */
	size_t zeros = 0;	/* bytes of holes emitted by this call */
	uint64_t holes = 0;	/* bytes of holes passed by this call */
	int r;

	if (!t->active)
		return RD_ERR_STATE;
	if (t->buf == NULL)
		t->buf = pool_buf_get(chunk);
	if (max_read < chunk)
		chunk = max_read < bs ? bs : max_read - max_read % bs;
	prefetch(t);
	/* Emitted blocks point into t->buf: valid until the next call. */
	while (t->cur_disk < t->ndisks) {
		struct trk_disk *d = &t->disks[t->cur_disk];
		uint64_t off = 0;
		/* Whole blocks only: a read ends on a block boundary or at
		 * the disk's end.  Emitted holes count as read: a call emits
		 * at most a chunk's worth of blocks. */
		size_t room = pos + zeros < chunk ? chunk - pos - zeros : 0;
		room -= room % bs;
		/* Read in pieces, each hashed while the copy is still in the
		 * CPU's cache (a whole chunk is not). */
		size_t piece = room < TRK_PIECE ? room :
		    TRK_PIECE < bs ? bs : TRK_PIECE - TRK_PIECE % bs;
		size_t want = piece ? next_range(t, piece, &off) : 0;
		if (want == 0) {
			if (room == 0)
				return 0;
			t->cur_disk++;
			t->cur_off = 0;
			continue;
		}
		uint8_t *p = t->buf + pos;
		/* Whole blocks of a hole (or up to the disk's end) are zeros
		 * without a read. */
		uint64_t hend = t->be->hole == NULL || holes >= TRK_HOLES ? off :
		    t->be->hole(t->bs, t->cur_disk, off, off + want);
		size_t inhole = hend > off && hend <= off + want ?
		    (size_t)(hend - off) : 0;
		if (inhole < want && off + inhole != d->size)
			inhole -= inhole % bs;
		if (inhole == 0 && t->dirty[t->cur_disk].all &&
		    t->be->concurrent_reads && room >= 2 * piece) {
			/* A disk read whole: the rest of the room at once,
			 * on several cores. */
			want = next_range(t, room, &off);
			if ((r = scan_span(t, off, want, p, emit, arg, err,
			    errsz)) != 0)
				return r;
			pos += want;
			t->cur_off = off + want;
			continue;
		}
		if (inhole > 0) {
			want = inhole;
			p = NULL;
			holes += want;
			t->stats.bytes_read += want;
		} else {
			if ((r = view_read(t, t->cur_disk, p, want, off, err,
			    errsz)) != 0)
				return r;
			pos += want;
		}
		for (size_t o = 0; o < want; o += bs) {
			struct trk_block blk;
			blk.disk = (uint16_t)t->cur_disk;
			blk.offset = off + o;
			blk.len = (uint32_t)(want - o < bs ? want - o : bs);
			hash_block(t, &blk, p != NULL ? p + o : NULL);
			if ((r = visit_block(t, &blk, emit, arg, err,
			    errsz)) < 0)
				return r;
			if (r > 0 && p == NULL)
				zeros += blk.len;
		}
		t->cur_off = off + want;
		if (holes >= TRK_HOLES)
			return 0;	/* a long run of holes: let others work */
	}
	if (t->be->viewed != NULL && !t->viewed) {
		t->viewed = 1;
		t->be->viewed(t->bs);
	}
	return 1;
}

int
trk_freeze(struct tracker *t, unsigned timeout_s, char *err, size_t errsz)
{
	if (t->be->freeze == NULL) {
		snprintf(err, errsz, "tracker %s cannot freeze the guest",
		    t->be->name);
		return RD_ERR_UNSUPPORTED;
	}
	return t->be->freeze(t->bs, timeout_s, err, errsz);
}

void
trk_thaw(struct tracker *t)
{
	if (t->be->thaw != NULL)
		t->be->thaw(t->bs);
}

const char *
trk_definition(const struct tracker *t)
{
	return t->be->definition ? t->be->definition(t->bs) : t->test_def;
}

void
trk_stats(const struct tracker *t, struct trk_stats *st)
{
	*st = t->stats;
}

/* --- the end of a cycle ------------------------------------------------------- */

int
trk_commit(struct tracker *t, uint64_t cycle, char *err, size_t errsz)
{
	int r = 0, saved = 1;

	if (!t->active)
		return RD_ERR_STATE;
	for (size_t i = 0; i < t->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		if (i > 0)
			fault_point("primary-mid-tracker-commit");
		if ((r = bm_commit(d->map_path, &d->map, t->block_size, d->size,
		    cycle, d->next, d->reset)) != 0) {
			snprintf(err, errsz, "cannot save tracker state %s: %s",
			    d->map_path, r == RD_ERR_SYSTEM ? strerror(errno) :
			    rd_strerror(r));
			/* The saved maps are older than the replica: that only
			 * makes the next cycle send more. */
			saved = 0;
			break;
		}
		d->known = 1;
	}
	if (saved) {
		/* Only now may the backend forget what the cut reported: the
		 * digests of the new base are on disk. */
		if ((r = t->be->commit(t->bs, cycle, err, errsz)) != 0)
			log_warnx("%s: tracker %s: %s; the next cycle may "
			    "read more than changed", t->vm, t->be->name, err);
		t->tidy_due = t->be->tidy != NULL;
		r = 0;
	} else {
		t->be->abort(t->bs);
	}
	drop_cut(t);
	return r;
}

int
trk_tidy_due(const struct tracker *t)
{
	return t->tidy_due;
}

void
trk_tidy(struct tracker *t)
{
	if (t->tidy_due && !t->active)
		t->be->tidy(t->bs);
	t->tidy_due = 0;
}

void
trk_abort(struct tracker *t)
{
	if (t->active)
		t->be->abort(t->bs);
	drop_cut(t);
}
