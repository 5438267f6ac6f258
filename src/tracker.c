/*
 * tracker.c — the scan tracker: one sequential read of each disk per
 * cycle, shipping the blocks whose XXH3-128 digest changed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockmap.h"
#include "err.h"
#include "log.h"
#include "tracker.h"
#include "util.h"
#include "xmalloc.h"

#define TRK_CHUNK	(4u << 20)	/* bytes per read(2) */

enum { BEGIN_SCAN, BEGIN_FULL, BEGIN_RESYNC };

struct trk_disk {
	char		*path;
	char		*map_path;
	int		 fd;
	int		 known;		/* map loaded and valid */
	int		 whole;		/* this cycle sends every block */
	struct blockmap	 map;		/* as of the acknowledged cycle */
	struct blockmap	 next;		/* being filled by this cycle */
	uint64_t	 size;		/* at this cycle's begin */
};

struct tracker {
	char		*vm;
	char		*dir;
	uint32_t	 block_size;
	size_t		 ndisks;
	struct trk_disk	*disks;
	int		 active;
	size_t		 cur_disk;	/* scan cursor */
	uint64_t	 cur_off;
	uint8_t		*buf;		/* TRK_CHUNK bytes */
	struct digest	 zero_digest;	/* of one whole zero block */
	struct trk_stats stats;
};

int
trk_open(const char *state_dir, const struct cfg_vm *vm, struct tracker **out)
{
	struct tracker *t = xcalloc(1, sizeof(*t));
	int r;

	t->vm = xstrdup(vm->name);
	t->dir = xasprintf("%s/tracker/%s", state_dir, vm->name);
	t->block_size = vm->block_size;
	t->ndisks = vm->ndisks;
	t->disks = xcalloc(vm->ndisks, sizeof(*t->disks));
	if ((r = util_mkdir_p(t->dir, 0700)) != 0) {
		log_warn("%s: cannot create %s", vm->name, t->dir);
		trk_close(t);
		return r;
	}
	for (size_t i = 0; i < vm->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		d->fd = -1;
		d->path = xstrdup(vm->disks[i]);
		d->map_path = xasprintf("%s/%s.map", t->dir, vm->disk_names[i]);
		r = bm_load(d->map_path, &d->map);
		if (r == 0 && d->map.block_size != vm->block_size) {
			log_warnx("%s: %s: block size changed from %u to %u; "
			    "the disk will be sent whole", vm->name,
			    vm->disk_names[i], d->map.block_size,
			    vm->block_size);
			bm_free(&d->map);
			r = RD_ERR_INVALID;
		} else if (r != 0 && r != RD_ERR_NOT_FOUND) {
			log_warnx("%s: tracker state %s unusable (%s); the disk "
			    "will be sent whole", vm->name, d->map_path,
			    rd_strerror(r));
		}
		d->known = r == 0;
		if (!d->known)
			bm_init(&d->map, vm->block_size, 0);
	}
	t->buf = xmalloc(TRK_CHUNK < vm->block_size ? vm->block_size :
	    TRK_CHUNK);
	uint8_t *zero = xcalloc(1, vm->block_size);
	digest_block(zero, vm->block_size, &t->zero_digest);
	free(zero);
	*out = t;
	return 0;
}

static void
close_disks(struct tracker *t)
{
	for (size_t i = 0; i < t->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		if (d->fd >= 0)
			close(d->fd);
		d->fd = -1;
		bm_free(&d->next);
	}
	t->active = 0;
}

void
trk_close(struct tracker *t)
{
	if (t == NULL)
		return;
	close_disks(t);
	for (size_t i = 0; i < t->ndisks; i++) {
		bm_free(&t->disks[i].map);
		free(t->disks[i].path);
		free(t->disks[i].map_path);
	}
	free(t->disks);
	free(t->buf);
	free(t->dir);
	free(t->vm);
	free(t);
}

uint64_t
trk_cycle(const struct tracker *t)
{
	uint64_t c = UINT64_MAX;
	for (size_t i = 0; i < t->ndisks; i++) {
		if (!t->disks[i].known)
			return 0;
		if (t->disks[i].map.cycle < c)
			c = t->disks[i].map.cycle;
	}
	return t->ndisks ? c : 0;
}

static int begin(struct tracker *t, uint64_t replica_cycle, int mode,
    uint64_t *sizes, char *err, size_t errsz);

int
trk_proven(const struct tracker *t, uint64_t replica_cycle)
{
	for (size_t i = 0; i < t->ndisks; i++)
		if (!t->disks[i].known || t->disks[i].map.cycle != replica_cycle)
			return 0;
	return 1;
}

int
trk_begin(struct tracker *t, uint64_t replica_cycle, int full,
    uint64_t *sizes, char *err, size_t errsz)
{
	return begin(t, replica_cycle, full ? BEGIN_FULL : BEGIN_SCAN, sizes,
	    err, errsz);
}

int
trk_begin_resync(struct tracker *t, uint64_t *sizes, char *err, size_t errsz)
{
	return begin(t, 0, BEGIN_RESYNC, sizes, err, errsz);
}

static int
begin(struct tracker *t, uint64_t replica_cycle, int mode, uint64_t *sizes,
    char *err, size_t errsz)
{
	int full = mode != BEGIN_SCAN;
	int r = 0;

	close_disks(t);
	memset(&t->stats, 0, sizeof(t->stats));
	for (size_t i = 0; i < t->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		struct stat st;

		/* O_NONBLOCK: a FIFO in a disk's place must not hang us. */
		d->fd = open(d->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		if (d->fd < 0) {
			r = errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
			snprintf(err, errsz, "disk %s: %s", d->path,
			    strerror(errno));
			goto out;
		}
		if (fstat(d->fd, &st) != 0) {
			r = RD_ERR_SYSTEM;
			snprintf(err, errsz, "disk %s: %s", d->path,
			    strerror(errno));
			goto out;
		}
		if (S_ISBLK(st.st_mode)) {
			off_t end = lseek(d->fd, 0, SEEK_END);
			d->size = end < 0 ? 0 : (uint64_t)end;
		} else if (S_ISREG(st.st_mode)) {
			d->size = (uint64_t)st.st_size;
		} else {
			r = RD_ERR_INVALID;
			snprintf(err, errsz, "disk %s: not a regular file or "
			    "block device", d->path);
			goto out;
		}
		if (d->known && d->size < d->map.disk_size) {
			r = RD_ERR_SHRUNK;
			snprintf(err, errsz, "disk %s shrank from %llu to %llu "
			    "bytes; shrinking a replicated disk is not "
			    "supported", d->path,
			    (unsigned long long)d->map.disk_size,
			    (unsigned long long)d->size);
			goto out;
		}
		/*
		 * The map proves what the replica holds only if it describes
		 * the very cycle the replica applied last.  If the replica is
		 * ahead (its ACK was lost), a block may have changed in that
		 * cycle and changed back since: send the whole disk.
		 */
		d->whole = full || !d->known || d->map.cycle != replica_cycle;
		if (d->whole && d->known && mode == BEGIN_SCAN)
			log_info("%s: %s: tracker state is at cycle %llu, the "
			    "replica at %llu: sending the whole disk", t->vm,
			    d->path, (unsigned long long)d->map.cycle,
			    (unsigned long long)replica_cycle);
		posix_fadvise(d->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
		if (mode == BEGIN_RESYNC) {
			/* Every block is read and noted by trk_read_range(). */
			bm_init(&d->next, t->block_size, d->size);
		} else {
			bm_copy(&d->next, &d->map);
			bm_resize(&d->next, d->size);
		}
		sizes[i] = d->size;
	}
	t->active = 1;
	t->cur_disk = 0;
	t->cur_off = 0;
out:
	if (r != 0)
		close_disks(t);
	return r;
}

int
trk_read_range(struct tracker *t, uint16_t disk, uint64_t off, size_t len,
    uint8_t *buf, char *err, size_t errsz)
{
	uint32_t bs = t->block_size;

	if (!t->active || disk >= t->ndisks)
		return RD_ERR_STATE;
	struct trk_disk *d = &t->disks[disk];
	if (off % bs != 0 || off > d->size || len > d->size - off ||
	    (len % bs != 0 && off + len != d->size))
		return RD_ERR_RANGE;
	int r = util_pread_holes(d->fd, buf, len, (off_t)off);
	if (r == RD_ERR_TRUNCATED) {
		snprintf(err, errsz, "disk %s shrank while being read",
		    d->path);
		return RD_ERR_SHRUNK;
	} else if (r != 0) {
		snprintf(err, errsz, "disk %s: read at %llu: %s", d->path,
		    (unsigned long long)off, strerror(errno));
		return r;
	}
	t->stats.bytes_read += len;
	for (size_t o = 0; o < len; o += bs) {
		size_t n = len - o < bs ? len - o : bs;
		struct digest *dg = &d->next.d[(off + o) / bs];
		if (n == bs && util_is_zero(buf + o, n))
			*dg = t->zero_digest;
		else
			digest_block(buf + o, n, dg);
	}
	return 0;
}

int
trk_range_digest(const struct tracker *t, uint16_t disk, uint64_t off,
    size_t len, struct digest *out)
{
	if (!t->active || disk >= t->ndisks || len == 0)
		return RD_ERR_STATE;
	const struct trk_disk *d = &t->disks[disk];
	uint64_t first = off / t->block_size;
	uint64_t n = (len + t->block_size - 1) / t->block_size;
	if (first > d->next.nblocks || n > d->next.nblocks - first)
		return RD_ERR_RANGE;
	digest_chunk(&d->next.d[first], (size_t)n, out);
	return 0;
}

void
trk_add_dirty(struct tracker *t, uint64_t bytes)
{
	t->stats.dirty_bytes += bytes;
}

int
trk_scan(struct tracker *t, size_t max_read, trk_emit_fn emit, void *arg,
    char *err, size_t errsz)
{
	size_t done = 0;
	uint32_t bs = t->block_size;
	size_t chunk = TRK_CHUNK < bs ? bs : TRK_CHUNK;
	int r;

	if (!t->active)
		return RD_ERR_STATE;
	while (t->cur_disk < t->ndisks) {
		struct trk_disk *d = &t->disks[t->cur_disk];
		if (t->cur_off >= d->size) {
			t->cur_disk++;
			t->cur_off = 0;
			continue;
		}
		/* One read per call: emitted blocks point into t->buf and
		 * stay valid until the next call. */
		if (done > 0 || done >= max_read)
			return 0;
		size_t want = d->size - t->cur_off < chunk ?
		    (size_t)(d->size - t->cur_off) : chunk;
		r = util_pread_holes(d->fd, t->buf, want, (off_t)t->cur_off);
		if (r == RD_ERR_TRUNCATED) {
			snprintf(err, errsz, "disk %s shrank while being read",
			    d->path);
			return RD_ERR_SHRUNK;
		} else if (r != 0) {
			snprintf(err, errsz, "disk %s: read at %llu: %s",
			    d->path, (unsigned long long)t->cur_off,
			    strerror(errno));
			return r;
		}
		t->stats.bytes_read += want;
		done += want;
		for (size_t o = 0; o < want; o += bs) {
			struct trk_block blk;
			uint64_t idx = (t->cur_off + o) / bs;
			blk.disk = (uint16_t)t->cur_disk;
			blk.offset = t->cur_off + o;
			blk.len = (uint32_t)(want - o < bs ? want - o : bs);
			blk.data = t->buf + o;
			blk.zero = util_is_zero(blk.data, blk.len);
			if (blk.zero && blk.len == bs)
				blk.hash = t->zero_digest;
			else
				digest_block(blk.data, blk.len, &blk.hash);
			int changed = d->whole ||
			    idx >= d->map.nblocks ||
			    !digest_equal(&d->map.d[idx], &blk.hash) ||
			    (idx == d->map.nblocks - 1 &&
			     d->map.disk_size != d->size);
			d->next.d[idx] = blk.hash;
			if (!changed)
				continue;
			t->stats.dirty_bytes += blk.len;
			if ((r = emit(arg, &blk)) != 0) {
				snprintf(err, errsz, "%s", rd_strerror(r));
				return r;
			}
		}
		t->cur_off += want;
	}
	return 1;
}

void
trk_stats(const struct tracker *t, struct trk_stats *st)
{
	*st = t->stats;
}

int
trk_commit(struct tracker *t, uint64_t cycle, char *err, size_t errsz)
{
	int r = 0;

	if (!t->active)
		return RD_ERR_STATE;
	for (size_t i = 0; i < t->ndisks; i++) {
		struct trk_disk *d = &t->disks[i];
		d->next.cycle = cycle;
		if ((r = bm_save(d->map_path, &d->next)) != 0) {
			snprintf(err, errsz, "cannot save tracker state %s: %s",
			    d->map_path, strerror(errno));
			/* The saved maps are older than the replica: that only
			 * makes the next cycle send more. */
			break;
		}
		bm_free(&d->map);
		d->map = d->next;
		d->next.d = NULL;
		d->next.nblocks = 0;
		d->known = 1;
	}
	close_disks(t);
	return r;
}

void
trk_abort(struct tracker *t)
{
	close_disks(t);
}
