/*
 * store.c — applying cycles to a replica VM's images, crash recovery,
 * test-failover rebuilds and verification (see store.h for the layout).
 *
 * Staging index (.staging/index), format version 1, big-endian; written
 * atomically once every block of the cycle is staged and fsynced.  Its
 * presence means "this cycle is complete and must be applied":
 *
 *   8      magic "RDSTAGE1"
 *   4      version (1)
 *   4      block_size
 *   8      cycle
 *   8      created_ms
 *   8      generation
 *   1      kind
 *   2      ndisks
 *   16*n   per disk: u64 size at the newest point, u64 size at this cycle
 *   8      nrecords
 *   39*r   records: u16 disk, u64 offset, u32 length, u8 where
 *          (0 staged, 1 direct, 2 zero), u64 offset in .staging/data,
 *          16-byte XXH3-128 of the content (zero for zero extents)
 *   16     XXH3-128 of every byte before it
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "buf.h"
#include "err.h"
#include "fault.h"
#include "log.h"
#include "store.h"
#include "undo.h"
#include "util.h"
#include "xmalloc.h"

#define STAGE_MAGIC	"RDSTAGE1"
#define STAGE_VERSION	1
#define STAGE_REC	(2 + 8 + 4 + 1 + 8 + DIGEST_LEN)
#define WHERE_STAGED	0
#define WHERE_DIRECT	1
#define WHERE_ZERO	2
#define IO_CHUNK	(4u << 20)
#define WRITEBACK_KICK	(32u << 20)

struct stage_rec {
	uint16_t	disk;
	uint64_t	off;
	uint32_t	len;
	uint8_t		where;
	uint64_t	data_off;
	struct digest	hash;
};

struct stage_index {
	uint32_t	  block_size;
	struct store_cycle c;
	uint64_t	  old_sizes[CAT_MAX_DISKS];
	uint64_t	  nrec;
	struct stage_rec *recs;
};

struct store {
	pthread_mutex_t	 lock;		/* the images: apply, rebuild, verify */
	pthread_mutex_t	 rel_lock;	/* rel, briefly (the loop reads it) */
	pthread_mutex_t	 fix_lock;	/* unfinished, and its recovery */
	struct catalog	*cat;
	struct cat_rel	 rel;		/* the newest point's view */
	char		*dir;
	int		 created;	/* store_open made dir */
	char		*staging;
	char		*undo_dir;
	char		*digest_dir;
	char		*test_dir;
	char		*redo_dir;
	int		 img[CAT_MAX_DISKS];
	int		 dig_fd[CAT_MAX_DISKS];	/* store_put_digests() */
	int		 lock_fd;	/* flock on STORAGE/VM/.lock */
	struct digest	 zero_digest;
	int		 test_busy;	/* a test copy is being built */
	uint64_t	 min_free_bytes; /* [accept] min_free */
	unsigned	 min_free_pct;
	int		 unfinished;	/* a complete cycle failed to apply:
					   roll it forward before anything */
	/* the cycle being received */
	uint64_t	 unsynced[CAT_MAX_DISKS + 1]; /* bytes since the last
					   writeback kick (images, staging) */
	int		 active;
	struct store_cycle cur;
	int		 data_fd;
	uint64_t	 data_off;
	struct wbuf	 recs;
	uint64_t	 nrec;
	uint64_t	 raw_bytes;
};

static uint64_t
nblocks_of(uint64_t size, uint32_t bs)
{
	return size / bs + (size % bs != 0);
}

static char *
disk_path(struct store *st, const char *dir, uint16_t i)
{
	return xasprintf("%s/%s", dir, st->rel.disks[i].name);
}

static char *
undo_path(struct store *st, uint64_t cycle)
{
	return xasprintf("%s/%" PRIu64 ".undo", st->undo_dir, cycle);
}

/* A point's undo segment: CYCLE.undo as its cycle wrote it, CYCLE.N.undo
 * after N merges (pruning). */
static char *
seg_path(struct store *st, const struct cat_point *p)
{
	if (p->seg == 0)
		return undo_path(st, p->cycle);
	return xasprintf("%s/%" PRIu64 ".%u.undo", st->undo_dir, p->cycle,
	    p->seg);
}

/* --- staging index ------------------------------------------------------ */

static void
index_encode(struct store *st, struct wbuf *b)
{
	struct digest d;

	wb_put_bytes(b, STAGE_MAGIC, 8);
	wb_put_u32(b, STAGE_VERSION);
	wb_put_u32(b, st->rel.block_size);
	wb_put_u64(b, st->cur.cycle);
	wb_put_u64(b, (uint64_t)st->cur.created_ms);
	wb_put_u64(b, st->cur.generation);
	wb_put_u8(b, st->cur.kind);
	wb_put_u16(b, st->cur.ndisks);
	for (uint16_t i = 0; i < st->cur.ndisks; i++) {
		wb_put_u64(b, st->rel.disks[i].size);
		wb_put_u64(b, st->cur.sizes[i]);
	}
	wb_put_u64(b, st->nrec);
	wb_put_bytes(b, st->recs.p, st->recs.len);
	digest_block(b->p, b->len, &d);
	wb_put_bytes(b, d.b, DIGEST_LEN);
}

static int
index_decode(const uint8_t *p, size_t len, struct stage_index *ix)
{
	struct rbuf b;
	uint8_t magic[8], kind;
	uint32_t version;
	uint64_t created;
	struct digest sum, want;

	memset(ix, 0, sizeof(*ix));
	if (len < 8 + DIGEST_LEN)
		return RD_ERR_CORRUPT;
	digest_block(p, len - DIGEST_LEN, &sum);
	memcpy(want.b, p + len - DIGEST_LEN, DIGEST_LEN);
	if (!digest_equal(&sum, &want))
		return RD_ERR_CORRUPT;
	rb_init(&b, p, len - DIGEST_LEN);
	if (rb_get_bytes(&b, magic, 8) || memcmp(magic, STAGE_MAGIC, 8) ||
	    rb_get_u32(&b, &version) || version != STAGE_VERSION ||
	    rb_get_u32(&b, &ix->block_size) || rb_get_u64(&b, &ix->c.cycle) ||
	    rb_get_u64(&b, &created) || rb_get_u64(&b, &ix->c.generation) ||
	    rb_get_u8(&b, &kind) || rb_get_u16(&b, &ix->c.ndisks) ||
	    ix->c.ndisks == 0 || ix->c.ndisks > CAT_MAX_DISKS)
		return RD_ERR_CORRUPT;
	ix->c.created_ms = (int64_t)created;
	ix->c.kind = kind;
	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		if (rb_get_u64(&b, &ix->old_sizes[i]) ||
		    rb_get_u64(&b, &ix->c.sizes[i]))
			return RD_ERR_CORRUPT;
	if (rb_get_u64(&b, &ix->nrec) || ix->nrec != rb_left(&b) / STAGE_REC ||
	    rb_left(&b) % STAGE_REC != 0)
		return RD_ERR_CORRUPT;
	ix->recs = xcalloc(ix->nrec, sizeof(*ix->recs));
	for (uint64_t i = 0; i < ix->nrec; i++) {
		struct stage_rec *r = &ix->recs[i];
		rb_get_u16(&b, &r->disk);
		rb_get_u64(&b, &r->off);
		rb_get_u32(&b, &r->len);
		rb_get_u8(&b, &r->where);
		rb_get_u64(&b, &r->data_off);
		rb_get_bytes(&b, r->hash.b, DIGEST_LEN);
		if (r->disk >= ix->c.ndisks || r->where > WHERE_ZERO ||
		    r->len == 0 || r->off > ix->c.sizes[r->disk] ||
		    r->len > ix->c.sizes[r->disk] - r->off) {
			free(ix->recs);
			ix->recs = NULL;
			return RD_ERR_CORRUPT;
		}
	}
	return 0;
}

int
store_index_check(const uint8_t *p, size_t len, struct store_cycle *c,
    uint64_t *nrec)
{
	struct stage_index ix;
	int r;

	if ((r = index_decode(p, len, &ix)) != 0)
		return r;
	*c = ix.c;
	*nrec = ix.nrec;
	free(ix.recs);
	return 0;
}

/* --- open, close, recovery ---------------------------------------------- */

static int
open_images(struct store *st, char *const *paths, char *err, size_t errsz)
{
	for (uint16_t i = 0; i < st->rel.ndisks; i++) {
		char *p = paths ? xstrdup(paths[i]) : disk_path(st, st->dir, i);
		st->img[i] = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (st->img[i] < 0) {
			snprintf(err, errsz, "cannot open %s: %s", p,
			    strerror(errno));
			free(p);
			return RD_ERR_SYSTEM;
		}
		free(p);
	}
	return 0;
}

/* Cut every image back to its size at the newest point. */
static int
trim_images(struct store *st)
{
	for (uint16_t i = 0; i < st->rel.ndisks; i++) {
		struct stat sb;
		if (fstat(st->img[i], &sb) != 0)
			return RD_ERR_SYSTEM;
		if ((uint64_t)sb.st_size > st->rel.disks[i].size &&
		    (ftruncate(st->img[i], (off_t)st->rel.disks[i].size) != 0 ||
		     fsync(st->img[i]) != 0))
			return RD_ERR_SYSTEM;
	}
	return 0;
}

/*
 * Undo segments of cycles newer than the newest point belong to a cycle
 * that was never recorded.  A complete one may mean its apply had begun:
 * write it back (harmless if nothing was overwritten yet) before removing
 * it.  Unfinished ones (.tmp) come before any image write: just remove.
 */
static int
roll_back_orphans(struct store *st, char *err, size_t errsz)
{
	DIR *d = opendir(st->undo_dir);
	struct dirent *de;
	int r = 0;

	if (d == NULL)
		return errno == ENOENT ? 0 : RD_ERR_SYSTEM;
	while (r == 0 && (de = readdir(d)) != NULL) {
		char *end;
		unsigned long long c = strtoull(de->d_name, &end, 10);
		if (end == de->d_name)
			continue;
		int tmp = strcmp(end, ".undo.tmp") == 0;
		if (!tmp && (strcmp(end, ".undo") != 0 ||
		    c <= st->rel.last_cycle))
			continue;
		char *p = xasprintf("%s/%s", st->undo_dir, de->d_name);
		if (!tmp) {
			log_warnx("%s: rolling back the unrecorded cycle %llu "
			    "from %s", st->rel.vm, c, p);
			r = undo_apply(p, st->img, st->rel.ndisks, NULL);
			for (uint16_t i = 0; r == 0 && i < st->rel.ndisks; i++)
				if (fsync(st->img[i]) != 0)
					r = RD_ERR_SYSTEM;
			if (r != 0)
				snprintf(err, errsz, "cannot roll back with %s: %s",
				    p, r == RD_ERR_SYSTEM ? strerror(errno) :
				    rd_strerror(r));
		}
		if (r == 0 && unlink(p) != 0 && errno != ENOENT) {
			snprintf(err, errsz, "cannot remove %s: %s", p,
			    strerror(errno));
			r = RD_ERR_SYSTEM;
		}
		free(p);
	}
	closedir(d);
	if (r == 0)
		util_fsync_dir(st->undo_dir);
	return r;
}

static void
remove_staging(struct store *st)
{
	char *ix = xasprintf("%s/index", st->staging);
	char *data = xasprintf("%s/data", st->staging);
	unlink(ix);
	unlink(data);
	util_fsync_dir(st->staging);
	free(ix);
	free(data);
}

static int apply_index(struct store *st, const struct stage_index *ix,
    struct cat_point *out, int *rolled_back, char *err, size_t errsz);
static int recover_rewind(struct store *st, char *err, size_t errsz);
static void close_digest_fds(struct store *st);
static void remove_unreferenced(struct store *st);
static int make_room(struct store *st, uint64_t need, char *err,
    size_t errsz);

/* Finish a complete staged cycle or abandon an incomplete one. */
static int
recover(struct store *st, char *err, size_t errsz)
{
	char *path = xasprintf("%s/index", st->staging);
	uint8_t *data = NULL;
	size_t len;
	struct stage_index ix = { 0 };
	struct cat_point pt;
	int r;

	r = util_read_file(path, (size_t)1 << 34, &data, &len);
	if (r == 0)
		r = index_decode(data, len, &ix);
	if (r != 0 && r != RD_ERR_NOT_FOUND && r != RD_ERR_CORRUPT) {
		/* Cannot tell whether a cycle is pending: touch nothing. */
		snprintf(err, errsz, "cannot read %s: %s", path,
		    r == RD_ERR_SYSTEM ? strerror(errno) : rd_strerror(r));
		goto out;
	}
	if (r == RD_ERR_CORRUPT)
		log_warnx("%s: staged cycle index %s is corrupt; abandoning "
		    "that cycle", st->rel.vm, path);
	if (r == 0 && ix.c.cycle <= st->rel.last_cycle) {
		/* Applied and recorded before the crash: only clean up. */
		remove_staging(st);
	} else if (r == 0) {
		log_info("%s: finishing cycle %" PRIu64 " staged before a "
		    "restart", st->rel.vm, ix.c.cycle);
		int rolled_back;
		r = apply_index(st, &ix, &pt, &rolled_back, err, errsz);
		if (r == 0)
			log_info("%s: cycle %" PRIu64 " recovered as point %"
			    PRIu64, st->rel.vm, ix.c.cycle, pt.id);
		else if (rolled_back) {
			/* Consistent at the newest point: serve on. */
			log_warnx("%s: staged cycle %" PRIu64 " dropped: %s",
			    st->rel.vm, ix.c.cycle, err);
			r = 0;
		}
	} else {
		/* No complete cycle: undo what an interrupted apply may have
		 * written, then drop what was received. */
		pthread_mutex_lock(&st->lock);
		if ((r = roll_back_orphans(st, err, errsz)) == 0) {
			remove_staging(st);
			if ((r = trim_images(st)) != 0)
				snprintf(err, errsz, "cannot trim images: %s",
				    strerror(errno));
		}
		pthread_mutex_unlock(&st->lock);
	}
out:
	free(ix.recs);
	free(data);
	free(path);
	return r;
}

int
store_open(struct catalog *cat, const struct cat_rel *rel, struct store **out,
    char *err, size_t errsz)
{
	return store_open_paths(cat, rel, NULL, out, err, errsz);
}

int
store_open_paths(struct catalog *cat, const struct cat_rel *rel,
    char *const *paths, struct store **out, char *err, size_t errsz)
{
	struct store *st = xcalloc(1, sizeof(*st));
	int r;

	pthread_mutex_init(&st->lock, NULL);
	pthread_mutex_init(&st->rel_lock, NULL);
	pthread_mutex_init(&st->fix_lock, NULL);
	st->cat = cat;
	st->rel = *rel;
	st->data_fd = -1;
	st->lock_fd = -1;
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		st->img[i] = st->dig_fd[i] = -1;
	st->dir = xasprintf("%s/%s", rel->storage, rel->vm);
	st->staging = xasprintf("%s/.staging", st->dir);
	st->undo_dir = xasprintf("%s/.undo", st->dir);
	st->digest_dir = xasprintf("%s/.digests", st->dir);
	st->test_dir = xasprintf("%s/test", st->dir);
	st->redo_dir = xasprintf("%s/.redo", st->dir);
	struct stat sb;
	st->created = lstat(st->dir, &sb) != 0 && errno == ENOENT;
	wb_init(&st->recs);
	uint8_t *zero = xcalloc(1, rel->block_size);
	digest_block(zero, rel->block_size, &st->zero_digest);
	free(zero);

	const char *dirs[] = { st->dir, st->staging, st->undo_dir,
	    st->digest_dir, st->redo_dir };
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		if (util_mkdir_p(dirs[i], 0700) != 0) {
			snprintf(err, errsz, "cannot create %s: %s", dirs[i],
			    strerror(errno));
			r = RD_ERR_SYSTEM;
			goto fail;
		}
	}
	/* Two daemons must never share a replica (a storage path given to
	 * two state dirs): recovery alone would wreck the other's cycle. */
	char *lock = xasprintf("%s/.lock", st->dir);
	r = util_lock_file(lock, &st->lock_fd);
	free(lock);
	if (r != 0) {
		snprintf(err, errsz, "%s is in use by another replicad",
		    st->dir);
		goto fail;
	}
	if ((r = open_images(st, paths, err, errsz)) != 0)
		goto fail;
	if ((r = recover(st, err, errsz)) != 0)
		goto fail;
	if (st->rel.step_to != 0 && (r = recover_rewind(st, err, errsz)) != 0)
		goto fail;
	remove_unreferenced(st);
	*out = st;
	return 0;
fail:
	store_discard(st);
	return r;
}

void
store_discard(struct store *st)
{
	char *dir = st->created ? xstrdup(st->dir) : NULL;
	store_close(st);
	if (dir != NULL)
		util_rm_rf(dir);
	free(dir);
}

void
store_close(struct store *st)
{
	if (st == NULL)
		return;
	if (st->active)
		store_cycle_abort(st);
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		if (st->img[i] >= 0)
			close(st->img[i]);
	close_digest_fds(st);
	if (st->lock_fd >= 0)
		close(st->lock_fd);
	wb_free(&st->recs);
	pthread_mutex_destroy(&st->lock);
	pthread_mutex_destroy(&st->rel_lock);
	pthread_mutex_destroy(&st->fix_lock);
	free(st->dir);
	free(st->staging);
	free(st->undo_dir);
	free(st->digest_dir);
	free(st->test_dir);
	free(st->redo_dir);
	free(st);
}

void
store_rel(struct store *st, struct cat_rel *out)
{
	pthread_mutex_lock(&st->rel_lock);
	*out = st->rel;
	pthread_mutex_unlock(&st->rel_lock);
}

void
store_reload_rel(struct store *st)
{
	struct cat_rel rel;
	if (cat_rel_get(st->cat, st->rel.vm, &rel) != 0)
		return;
	pthread_mutex_lock(&st->rel_lock);
	st->rel = rel;
	pthread_mutex_unlock(&st->rel_lock);
}

/*
 * A complete cycle whose apply failed leaves the image between two
 * points: nothing may use the image until recovery has rolled it forward.
 */
static int
finish_unfinished(struct store *st, char *err, size_t errsz)
{
	char why[512];
	int r = 0;

	pthread_mutex_lock(&st->fix_lock);
	if (st->unfinished && recover(st, why, sizeof(why)) != 0) {
		snprintf(err, errsz, "the replica of %s could not finish applying "
		    "a cycle (%s); it refuses new work until that succeeds",
		    st->rel.vm, why);
		r = RD_ERR_STATE;
	} else {
		st->unfinished = 0;
	}
	pthread_mutex_unlock(&st->fix_lock);
	return r;
}

/* --- unplanned failover: moving the images between points -------------- */

/*
 * An unplanned failover may pick any point, and pick again until it is
 * committed, so a rewind must keep what it overwrites.  Going back from
 * point k to the point before it applies k's undo segment, after saving
 * its inverse (undo_invert) as the redo segment .redo/CYCLE.redo; going
 * forward applies the redo segment.  Each step is journalled in the
 * catalog (at_point: where the images are; step_to: a step under way),
 * so that a crash mid-step is undone at the next open: a step back is
 * undone by its redo segment, once complete (before that the images
 * were not touched); a step forward by the undo segment of the point it
 * went to.  Redo segments of a point always hold that point's content,
 * so applying a stale one is harmless.
 */

static char *
redo_path(struct store *st, uint64_t cycle)
{
	return xasprintf("%s/%" PRIu64 ".redo", st->redo_dir, cycle);
}

static int
set_rewind(struct store *st, uint64_t at, uint64_t step, char *err,
    size_t errsz)
{
	struct cat_rel rel;
	int r = cat_rel_get(st->cat, st->rel.vm, &rel);
	if (r == 0) {
		rel.at_point = at;
		rel.step_to = step;
		r = cat_rel_put(st->cat, &rel);
	}
	if (r != 0) {
		snprintf(err, errsz, "cannot record the rewind in the catalog: "
		    "%s", rd_strerror(r));
		return r;
	}
	pthread_mutex_lock(&st->rel_lock);
	st->rel.at_point = at;
	st->rel.step_to = step;
	pthread_mutex_unlock(&st->rel_lock);
	return 0;
}

static int
sync_images(struct store *st)
{
	for (uint16_t i = 0; i < st->rel.ndisks; i++)
		if (fsync(st->img[i]) != 0)
			return RD_ERR_SYSTEM;
	return 0;
}

/* Apply a segment to the images and make it durable. */
static int
apply_segment(struct store *st, const char *path, char *err, size_t errsz)
{
	int r = undo_apply(path, st->img, st->rel.ndisks, NULL);
	if (r == 0)
		r = sync_images(st);
	if (r != 0)
		snprintf(err, errsz, "cannot apply %s: %s", path,
		    r == RD_ERR_SYSTEM ? strerror(errno) : rd_strerror(r));
	return r;
}

/*
 * Digests of the images as they are (sizes from the files): written to
 * .digests/ (write), or compared with it (RD_ERR_HASH on a difference,
 * named in err).
 */
static int
digest_images(struct store *st, int write, char *err, size_t errsz)
{
	uint32_t bs = st->rel.block_size;
	size_t chunk = IO_CHUNK < bs ? bs : IO_CHUNK;
	uint8_t *buf = xmalloc(chunk);
	struct wbuf dig;
	int r = 0;

	wb_init(&dig);
	for (uint16_t i = 0; i < st->rel.ndisks && r == 0; i++) {
		struct stat sb;
		if (fstat(st->img[i], &sb) != 0) {
			r = RD_ERR_SYSTEM;
			break;
		}
		uint64_t size = (uint64_t)sb.st_size;
		wb_reset(&dig);
		for (uint64_t off = 0; off < size && r == 0; off += chunk) {
			size_t n = size - off < chunk ? (size_t)(size - off) :
			    chunk;
			if ((r = util_pread_full(st->img[i], buf, n,
			    (off_t)off)) != 0)
				break;
			for (size_t o = 0; o < n; o += bs) {
				size_t k = n - o < bs ? n - o : bs;
				struct digest d;
				if (k == bs && util_is_zero(buf + o, k))
					d = st->zero_digest;
				else
					digest_block(buf + o, k, &d);
				wb_put_bytes(&dig, d.b, DIGEST_LEN);
			}
		}
		if (r != 0)
			break;
		char *p = disk_path(st, st->digest_dir, i);
		if (write) {
			r = util_write_atomic(p, dig.p, dig.len);
		} else {
			uint8_t *old = NULL;
			size_t len = 0;
			r = util_read_file(p, (size_t)1 << 34, &old, &len);
			if (r == 0 && (len != dig.len ||
			    memcmp(old, dig.p, len) != 0)) {
				size_t k = 0;
				while (k + DIGEST_LEN <= len && k < dig.len &&
				    memcmp(old + k, dig.p + k, DIGEST_LEN) == 0)
					k += DIGEST_LEN;
				snprintf(err, errsz, "disk %s changed at offset "
				    "%" PRIu64 " since the failover",
				    st->rel.disks[i].name,
				    (uint64_t)(k / DIGEST_LEN) * bs);
				r = RD_ERR_HASH;
			}
			free(old);
		}
		free(p);
	}
	if (r != 0 && r != RD_ERR_HASH)
		snprintf(err, errsz, "cannot digest the images of %s: %s",
		    st->rel.vm, r == RD_ERR_SYSTEM ? strerror(errno) :
		    rd_strerror(r));
	wb_free(&dig);
	free(buf);
	return r;
}

static int
find_point(const struct cat_point *pts, size_t n, uint64_t id)
{
	for (size_t i = 0; i < n; i++)
		if (pts[i].id == id)
			return (int)i;
	return -1;
}

/* A step cut by a crash: back to the point the journal says. */
static int
recover_rewind(struct store *st, char *err, size_t errsz)
{
	struct cat_point *pts = NULL;
	size_t n = 0;
	char *path = NULL;
	int r;

	if ((r = cat_point_list(st->cat, st->rel.vm, &pts, &n)) != 0) {
		snprintf(err, errsz, "cannot list points: %s", rd_strerror(r));
		return r;
	}
	uint64_t at = st->rel.at_point ? st->rel.at_point : st->rel.last_point;
	int ia = find_point(pts, n, at), is = find_point(pts, n,
	    st->rel.step_to);
	if (ia < 0 || is < 0) {
		snprintf(err, errsz, "the rewind journal names points %" PRIu64
		    " and %" PRIu64 ", which do not exist", at, st->rel.step_to);
		r = RD_ERR_CORRUPT;
		goto out;
	}
	log_warnx("%s: a move from point %" PRIu64 " to point %" PRIu64 " was "
	    "cut off; going back to point %" PRIu64, st->rel.vm, at,
	    st->rel.step_to, at);
	if (is < ia) {
		path = redo_path(st, pts[ia].cycle);
		if (access(path, F_OK) == 0) {
			if ((r = apply_segment(st, path, err, errsz)) != 0)
				goto out;
			unlink(path);
		}
		char *tmp = xasprintf("%s.tmp", path);
		unlink(tmp);
		free(tmp);
	} else {
		path = seg_path(st, &pts[is]);
		if ((r = apply_segment(st, path, err, errsz)) != 0)
			goto out;
	}
	if ((r = digest_images(st, 1, err, errsz)) == 0)
		r = set_rewind(st, at, 0, err, errsz);
out:
	free(path);
	free(pts);
	return r;
}

int
store_rewind(struct store *st, uint64_t target, int check_unchanged,
    char *err, size_t errsz)
{
	struct cat_point *pts = NULL;
	size_t n = 0;
	char *path = NULL;
	int r;

	if ((r = finish_unfinished(st, err, errsz)) != 0)
		return r;
	pthread_mutex_lock(&st->lock);
	if (st->active || st->test_busy) {
		snprintf(err, errsz, "the replica of %s is busy", st->rel.vm);
		r = RD_ERR_BUSY;
		goto out;
	}
	/* A step that failed half-way: back to where it started first. */
	if (st->rel.step_to != 0 && (r = recover_rewind(st, err, errsz)) != 0)
		goto out;
	if ((r = cat_point_list(st->cat, st->rel.vm, &pts, &n)) != 0) {
		snprintf(err, errsz, "cannot list points: %s", rd_strerror(r));
		goto out;
	}
	uint64_t at = st->rel.at_point ? st->rel.at_point : st->rel.last_point;
	if (target == 0)
		target = st->rel.last_point;
	int i = find_point(pts, n, at), want = find_point(pts, n, target);
	if (want < 0) {
		snprintf(err, errsz, "%s has no point %" PRIu64, st->rel.vm,
		    target);
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	if (i < 0) {
		snprintf(err, errsz, "%s has no recovery point yet", st->rel.vm);
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	/* The images must still be exactly the point they were left at:
	 * a VM that ran on them since made writes no segment knows. */
	if (check_unchanged && (r = digest_images(st, 0, err, errsz)) != 0)
		goto out;
	while (r == 0 && i > want) {
		const struct cat_point *p = &pts[i];
		if ((r = set_rewind(st, p->id, pts[i - 1].id, err, errsz)) != 0)
			break;
		free(path);
		path = redo_path(st, p->cycle);
		char *upath = seg_path(st, p);
		uint64_t bytes;
		r = undo_invert(upath, st->img, st->rel.ndisks, p->cycle, path,
		    &bytes);
		if (r != 0)
			snprintf(err, errsz, "cannot save what point %" PRIu64
			    " overwrites: %s", p->id, r == RD_ERR_SYSTEM ?
			    strerror(errno) : rd_strerror(r));
		else
			r = apply_segment(st, upath, err, errsz);
		free(upath);
		if (r == 0)
			r = set_rewind(st, pts[i - 1].id, 0, err, errsz);
		i--;
	}
	while (r == 0 && i < want) {
		const struct cat_point *q = &pts[i + 1];
		if ((r = set_rewind(st, pts[i].id, q->id, err, errsz)) != 0)
			break;
		free(path);
		path = redo_path(st, q->cycle);
		if ((r = apply_segment(st, path, err, errsz)) == 0 &&
		    (r = set_rewind(st, q->id, 0, err, errsz)) == 0)
			unlink(path);
		i++;
	}
	if (r != 0 && st->rel.step_to != 0) {
		/* Undo the failed step now, not at the next start. */
		char why[512];
		if (recover_rewind(st, why, sizeof(why)) != 0)
			log_warnx("%s: %s; the images are between two points "
			    "until a restart finishes it", st->rel.vm, why);
	}
	if (r == 0)
		r = digest_images(st, 1, err, errsz);
	if (r == 0)
		util_fsync_dir(st->redo_dir);
out:
	pthread_mutex_unlock(&st->lock);
	free(path);
	free(pts);
	return r;
}

int
store_rewind_commit(struct store *st, struct cat_rel *out, char *err,
    size_t errsz)
{
	struct cat_point *pts = NULL;
	size_t n = 0;
	struct cat_rel rel;
	int r;

	pthread_mutex_lock(&st->lock);
	if (st->rel.step_to != 0 && (r = recover_rewind(st, err, errsz)) != 0)
		goto out;
	if ((r = cat_rel_get(st->cat, st->rel.vm, &rel)) != 0 ||
	    (r = cat_point_list(st->cat, st->rel.vm, &pts, &n)) != 0) {
		snprintf(err, errsz, "catalog: %s", rd_strerror(r));
		goto out;
	}
	uint64_t at = rel.at_point ? rel.at_point : rel.last_point;
	int i = find_point(pts, n, at);
	if (i < 0) {
		snprintf(err, errsz, "%s has no point %" PRIu64, rel.vm, at);
		r = RD_ERR_CORRUPT;
		goto out;
	}
	/*
	 * The newer points' segments are renamed aside first (an undo
	 * segment newer than the newest recorded point would be taken for
	 * an interrupted cycle's and applied), then the catalog changes,
	 * then they go.  A crash between: the next open renames back those
	 * whose point is still recorded and removes the others.
	 */
	size_t moved = (size_t)i + 1;
	for (; moved < n && r == 0; moved++) {
		char *p = seg_path(st, &pts[moved]);
		char *q = xasprintf("%s.dropped", p);
		if (rename(p, q) != 0 && errno != ENOENT) {
			snprintf(err, errsz, "cannot rename %s: %s", p,
			    strerror(errno));
			r = RD_ERR_SYSTEM;
		}
		free(p);
		free(q);
	}
	if (r != 0) {
		/* Put back what was set aside: nothing was committed. */
		for (size_t k = (size_t)i + 1; k + 1 < moved; k++) {
			char *p = seg_path(st, &pts[k]);
			char *q = xasprintf("%s.dropped", p);
			rename(q, p);
			free(p);
			free(q);
		}
	}
	util_fsync_dir(st->undo_dir);
	if (r != 0)
		goto out;
	rel.at_point = 0;
	rel.step_to = 0;
	rel.last_point = pts[i].id;
	rel.last_cycle = pts[i].cycle;
	rel.last_point_created_ms = pts[i].created_ms;
	for (uint16_t k = 0; k < rel.ndisks && k < pts[i].ndisks; k++)
		rel.disks[k].size = pts[i].sizes[k];
	if ((r = cat_rel_put_trim(st->cat, &rel, pts[i].id)) != 0) {
		snprintf(err, errsz, "catalog: %s", rd_strerror(r));
		goto out;
	}
	pthread_mutex_lock(&st->rel_lock);
	st->rel = rel;
	pthread_mutex_unlock(&st->rel_lock);
	fault_point("replica-commit-after-record");
	remove_unreferenced(st);
	if (util_rm_rf(st->redo_dir) != 0 ||
	    util_mkdir_p(st->redo_dir, 0700) != 0)
		log_warn("%s: cannot empty %s", rel.vm, st->redo_dir);
	if (out)
		*out = rel;
out:
	pthread_mutex_unlock(&st->lock);
	free(pts);
	return r;
}

/* --- space ---------------------------------------------------------------- */

void
store_set_space(struct store *st, uint64_t min_free_bytes,
    unsigned min_free_pct)
{
	pthread_mutex_lock(&st->rel_lock);
	st->min_free_bytes = min_free_bytes;
	st->min_free_pct = min_free_pct;
	pthread_mutex_unlock(&st->rel_lock);
}

int
store_space(struct store *st, uint64_t *avail, uint64_t *total,
    uint64_t *keep)
{
	struct statvfs sv;
	if (statvfs(st->dir, &sv) != 0)
		return RD_ERR_SYSTEM;
	*avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	*total = (uint64_t)sv.f_blocks * sv.f_frsize;
	pthread_mutex_lock(&st->rel_lock);
	*keep = st->min_free_pct ? *total / 100 * st->min_free_pct :
	    st->min_free_bytes;
	pthread_mutex_unlock(&st->rel_lock);
	return 0;
}

/*
 * Before a cycle is applied: if what it needs (up to twice its raw size:
 * the undo data of what it overwrites and the new blocks of the images)
 * would leave less than min_free, drop the oldest points, one at a time,
 * each logged, counting the bytes each drop frees (some file systems,
 * btrfs, show freed space only later).  If dropping every point but the
 * newest (and a test copy's) could not make room, drop none and refuse
 * the cycle (NOSPACE): the primary keeps its changes and tries again.
 */
static int
make_room(struct store *st, uint64_t need, char *err, size_t errsz)
{
	uint64_t avail, total, keep, freed, droppable = 0;
	struct cat_point *pts = NULL;
	size_t n = 0;
	char a[32], b[32], c[32];
	int r;

	if (store_space(st, &avail, &total, &keep) != 0 || keep == 0)
		return 0;
	if (avail >= need && avail - need >= keep)
		return 0;
	if ((r = cat_point_list(st->cat, st->rel.vm, &pts, &n)) != 0) {
		snprintf(err, errsz, "cannot list points: %s", rd_strerror(r));
		return r;
	}
	uint64_t pinned = store_pinned_point(st);
	for (size_t i = 0; i + 1 < n; i++)
		if (pts[i].id != pinned && pts[i].seg != CAT_SEG_NONE)
			droppable += pts[i].undo_bytes;
	util_format_bytes(avail, a, sizeof(a));
	util_format_bytes(need, b, sizeof(b));
	util_format_bytes(keep, c, sizeof(c));
	if (pinned == UINT64_MAX || avail + droppable < need + keep) {
		snprintf(err, errsz, "no space: %s free on the storage of %s, "
		    "the cycle needs about %s and min_free keeps %s; dropping "
		    "the older points would not make room, so none was dropped",
		    a, st->rel.vm, b, c);
		free(pts);
		return RD_ERR_NOSPACE;
	}
	for (size_t i = 0; i + 1 < n && avail < need + keep; i++) {
		if (pts[i].id == pinned)
			continue;
		char why[512];
		if ((r = store_drop_point(st, pts[i].id, &freed, why,
		    sizeof(why))) != 0) {
			snprintf(err, errsz, "no space, and dropping point %"
			    PRIu64 " failed: %s", pts[i].id, why);
			free(pts);
			return RD_ERR_NOSPACE;
		}
		avail += freed;
		log_warnx("%s: point %" PRIu64 " dropped to keep min_free (%s "
		    "free before, the cycle needs about %s, min_free %s)",
		    st->rel.vm, pts[i].id, a, b, c);
	}
	free(pts);
	return 0;
}

/* --- dropping points (prune, forget) ------------------------------------- */

/*
 * Dropping the oldest point deletes its segment and the next point's
 * (which only rebuilt the dropped one).  Dropping a point j in the middle
 * merges its segment with the next point k's (undo_merge: k straight back
 * to the point before j) into k's next segment version, then records both
 * changes in one catalog transaction, then deletes the two old files.  A
 * crash leaves either the old segments in force or the new one; the files
 * no point refers to are removed at the next open.
 */

/* The point an open test copy was made of (0: none), kept until cleanup. */
static uint64_t
test_point(struct store *st)
{
	char *p = xasprintf("%s/.point", st->test_dir);
	uint8_t *data = NULL;
	size_t len = 0;
	uint64_t id = 0;
	if (util_read_file(p, 64, &data, &len) == 0) {
		char buf[32];
		snprintf(buf, sizeof(buf), "%.*s", (int)len, (const char *)data);
		id = strtoull(buf, NULL, 10);
	}
	free(data);
	free(p);
	return id;
}

uint64_t
store_pinned_point(struct store *st)
{
	if (!store_test_exists(st))
		return 0;
	uint64_t id = test_point(st);
	return id ? id : UINT64_MAX;	/* a copy of an unknown point */
}

int
store_drop_point(struct store *st, uint64_t id, uint64_t *freed, char *err,
    size_t errsz)
{
	struct cat_point *pts = NULL;
	size_t n = 0;
	char *a = NULL, *b = NULL, *merged = NULL;
	int r;

	*freed = 0;
	if ((r = finish_unfinished(st, err, errsz)) != 0)
		return r;
	pthread_mutex_lock(&st->lock);
	if (st->rel.at_point != 0 || st->rel.step_to != 0) {
		snprintf(err, errsz, "%s was failed over (not committed)",
		    st->rel.vm);
		r = RD_ERR_STATE;
		goto out;
	}
	if (st->test_busy) {
		snprintf(err, errsz, "a test copy of %s is being made",
		    st->rel.vm);
		r = RD_ERR_BUSY;
		goto out;
	}
	if ((r = cat_point_list(st->cat, st->rel.vm, &pts, &n)) != 0) {
		snprintf(err, errsz, "cannot list points: %s", rd_strerror(r));
		goto out;
	}
	int i = find_point(pts, n, id);
	if (i < 0) {
		snprintf(err, errsz, "%s has no point %" PRIu64, st->rel.vm, id);
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	if ((size_t)i == n - 1 || id == st->rel.last_point) {
		snprintf(err, errsz, "point %" PRIu64 " is the newest point of "
		    "%s: the replica's disks are that point; it cannot be "
		    "dropped", id, st->rel.vm);
		r = RD_ERR_STATE;
		goto out;
	}
	uint64_t pin = store_pinned_point(st);
	if (pin == UINT64_MAX) {
		snprintf(err, errsz, "a test copy of %s is open and the point "
		    "it was made of is not known; remove it first (failover %s "
		    "--test --cleanup)", st->rel.vm, st->rel.vm);
		r = RD_ERR_BUSY;
		goto out;
	}
	if (pin == id) {
		snprintf(err, errsz, "point %" PRIu64 " has an open test copy; "
		    "remove it first (failover %s --test --cleanup)", id,
		    st->rel.vm);
		r = RD_ERR_BUSY;
		goto out;
	}
	const struct cat_point *j = &pts[i], *k = &pts[i + 1];
	uint64_t was = (j->seg != CAT_SEG_NONE ? j->undo_bytes : 0) +
	    (k->seg != CAT_SEG_NONE ? k->undo_bytes : 0);
	a = j->seg != CAT_SEG_NONE ? seg_path(st, j) : NULL;
	b = k->seg != CAT_SEG_NONE ? seg_path(st, k) : NULL;
	if (i == 0) {
		/* The oldest: nothing older to rebuild, no segment needed. */
		if ((r = cat_point_drop(st->cat, st->rel.vm, j->id, k->id,
		    CAT_SEG_NONE, 0)) != 0) {
			snprintf(err, errsz, "catalog: %s", rd_strerror(r));
			goto out;
		}
		*freed = was;
	} else {
		if (a == NULL || b == NULL) {
			snprintf(err, errsz, "points %" PRIu64 " and %" PRIu64
			    " of %s lack undo segments", j->id, k->id,
			    st->rel.vm);
			r = RD_ERR_CORRUPT;
			goto out;
		}
		struct cat_point nk = *k;
		uint64_t bytes = 0;
		nk.seg = k->seg + 1;
		merged = seg_path(st, &nk);
		fault_point("replica-before-merge");
		if ((r = undo_merge(b, a, k->cycle, merged, &bytes)) != 0) {
			snprintf(err, errsz, "cannot merge the undo segments of "
			    "points %" PRIu64 " and %" PRIu64 ": %s", j->id,
			    k->id, r == RD_ERR_SYSTEM ? strerror(errno) :
			    rd_strerror(r));
			goto out;
		}
		fault_point("replica-after-merge");
		if ((r = cat_point_drop(st->cat, st->rel.vm, j->id, k->id,
		    nk.seg, bytes)) != 0) {
			unlink(merged);
			snprintf(err, errsz, "catalog: %s", rd_strerror(r));
			goto out;
		}
		*freed = was > bytes ? was - bytes : 0;
	}
	fault_point("replica-after-drop-record");
	if (a)
		unlink(a);
	if (b)
		unlink(b);
	util_fsync_dir(st->undo_dir);
out:
	pthread_mutex_unlock(&st->lock);
	free(a);
	free(b);
	free(merged);
	free(pts);
	return r;
}

/* Segment files no point refers to: left by a crash during a drop (or a
 * merge's temporary file).  Unrecorded cycles' are roll_back_orphans'. */
static void
remove_unreferenced(struct store *st)
{
	struct cat_point *pts = NULL;
	size_t n = 0;
	DIR *d;
	struct dirent *de;

	if (cat_point_list(st->cat, st->rel.vm, &pts, &n) != 0 ||
	    (d = opendir(st->undo_dir)) == NULL) {
		free(pts);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		char *end;
		unsigned long long c = strtoull(de->d_name, &end, 10);
		unsigned long v = 0;
		if (end == de->d_name)
			continue;
		if (*end == '.' && isdigit((unsigned char)end[1]))
			v = strtoul(end + 1, &end, 10);
		int dropped = strcmp(end, ".undo.dropped") == 0;
		if (strcmp(end, ".undo") != 0 && strcmp(end, ".undo.tmp") != 0 &&
		    !dropped)
			continue;
		if (!dropped && c > st->rel.last_cycle)
			continue;	/* an unrecorded cycle's: recover()'s */
		int used = 0;
		for (size_t i = 0; i < n && !used; i++)
			used = pts[i].cycle == c && pts[i].seg == v &&
			    strcmp(end, ".undo.tmp") != 0;
		if (used && !dropped)
			continue;
		char *p = xasprintf("%s/%s", st->undo_dir, de->d_name);
		if (used) {
			/* Set aside by a commit that did not happen. */
			char *live = xstrdup(p);
			live[strlen(live) - strlen(".dropped")] = '\0';
			if (rename(p, live) != 0)
				log_warn("%s: cannot rename %s back", st->rel.vm,
				    p);
			free(live);
			free(p);
			continue;
		}
		log_info("%s: removing %s, which no point uses", st->rel.vm, p);
		unlink(p);
		free(p);
	}
	closedir(d);
	free(pts);
}

/* --- resynchronisation ---------------------------------------------------- */

int
store_has_data(struct store *st)
{
	for (uint16_t i = 0; i < st->rel.ndisks; i++) {
		struct stat sb;
		if (fstat(st->img[i], &sb) == 0 && sb.st_size > 0)
			return 1;
	}
	return 0;
}

int
store_read(struct store *st, uint16_t disk, uint64_t off, size_t len,
    uint8_t *buf, char *err, size_t errsz)
{
	struct stat sb;
	if (disk >= st->rel.ndisks)
		return RD_ERR_RANGE;
	if (fstat(st->img[disk], &sb) != 0)
		goto fail;
	/* Past the end: zeros.  Holes: zeros, without reading them. */
	uint64_t size = (uint64_t)sb.st_size;
	size_t have = off >= size ? 0 : size - off < len ? (size_t)(size - off) :
	    len;
	if (have > 0 && util_pread_holes(st->img[disk], buf, have,
	    (off_t)off) != 0)
		goto fail;
	memset(buf + have, 0, len - have);
	return 0;
fail:
	snprintf(err, errsz, "cannot read the replica of %s: %s",
	    st->rel.disks[disk].name, strerror(errno));
	return RD_ERR_SYSTEM;
}

int
store_put_digests(struct store *st, uint16_t disk, uint64_t off,
    const struct digest *d, size_t n, char *err, size_t errsz)
{
	uint32_t bs = st->rel.block_size;
	if (disk >= st->rel.ndisks || off % bs != 0)
		return RD_ERR_RANGE;
	if (st->dig_fd[disk] < 0) {
		char *p = disk_path(st, st->digest_dir, disk);
		st->dig_fd[disk] = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		if (st->dig_fd[disk] < 0) {
			snprintf(err, errsz, "cannot open %s: %s", p,
			    strerror(errno));
			free(p);
			return RD_ERR_SYSTEM;
		}
		free(p);
	}
	int r = util_pwrite_full(st->dig_fd[disk], d, n * sizeof(*d),
	    (off_t)(off / bs * DIGEST_LEN));
	if (r != 0)
		snprintf(err, errsz, "cannot write the digests of %s: %s",
		    st->rel.disks[disk].name, strerror(errno));
	return r;
}

int
store_get_digests(struct store *st, uint16_t disk, uint64_t off,
    struct digest *d, size_t n)
{
	uint32_t bs = st->rel.block_size;
	memset(d, 0, n * sizeof(*d));
	if (disk >= st->rel.ndisks || off % bs != 0)
		return RD_ERR_RANGE;
	char *p = disk_path(st, st->digest_dir, disk);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	free(p);
	if (fd < 0)
		return 0;		/* none recorded: all unknown */
	ssize_t got = pread(fd, d, n * sizeof(*d), (off_t)(off / bs *
	    DIGEST_LEN));
	close(fd);
	if (got < 0)
		memset(d, 0, n * sizeof(*d));
	return 0;
}

int
store_repair(struct store *st, uint16_t disk, uint64_t off,
    const uint8_t *data, size_t len, char *err, size_t errsz)
{
	int r = 0;
	if (disk >= st->rel.ndisks)
		return RD_ERR_RANGE;
	pthread_mutex_lock(&st->lock);
	if (off + len > st->rel.disks[disk].size) {
		r = RD_ERR_RANGE;
	} else if ((r = util_pwrite_full(st->img[disk], data, len,
	    (off_t)off)) != 0) {
		snprintf(err, errsz, "cannot repair the replica of %s: %s",
		    st->rel.disks[disk].name, strerror(errno));
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* Digest files opened by store_put_digests(), closed with the cycle. */
static void
close_digest_fds(struct store *st)
{
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		if (st->dig_fd[i] >= 0) {
			close(st->dig_fd[i]);
			st->dig_fd[i] = -1;
		}
}

/* --- receiving a cycle --------------------------------------------------- */

int
store_cycle_begin(struct store *st, const struct store_cycle *c, char *err,
    size_t errsz)
{
	int r;
	if (st->active)
		store_cycle_abort(st);
	if ((r = finish_unfinished(st, err, errsz)) != 0)
		return r;
	if (st->rel.at_point != 0 || st->rel.step_to != 0) {
		snprintf(err, errsz, "the replica of %s was failed over and "
		    "holds point %" PRIu64 ", not the newest", st->rel.vm,
		    st->rel.at_point);
		return RD_ERR_STATE;
	}
	if (c->cycle <= st->rel.last_cycle) {
		snprintf(err, errsz, "cycle %" PRIu64 " is not newer than the "
		    "last applied cycle %" PRIu64, c->cycle, st->rel.last_cycle);
		return RD_ERR_RANGE;
	}
	if (c->ndisks != st->rel.ndisks) {
		snprintf(err, errsz, "cycle has %u disks, the replica %u",
		    c->ndisks, st->rel.ndisks);
		return RD_ERR_RANGE;
	}
	for (uint16_t i = 0; i < c->ndisks; i++) {
		if (c->sizes[i] < st->rel.disks[i].size) {
			snprintf(err, errsz, "disk %s shrank from %" PRIu64
			    " to %" PRIu64 " bytes", st->rel.disks[i].name,
			    st->rel.disks[i].size, c->sizes[i]);
			return RD_ERR_SHRUNK;
		}
		if (c->sizes[i] > (UINT64_C(1) << 56)) {
			snprintf(err, errsz, "disk %s size %" PRIu64 " is too "
			    "large", st->rel.disks[i].name, c->sizes[i]);
			return RD_ERR_TOO_LARGE;
		}
	}
	char *data = xasprintf("%s/data", st->staging);
	st->data_fd = open(data, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (st->data_fd < 0) {
		snprintf(err, errsz, "cannot create %s: %s", data,
		    strerror(errno));
		free(data);
		return RD_ERR_SYSTEM;
	}
	free(data);
	st->cur = *c;
	memset(st->unsynced, 0, sizeof(st->unsynced));
	st->data_off = 0;
	st->nrec = 0;
	st->raw_bytes = 0;
	wb_reset(&st->recs);
	st->active = 1;
	return 0;
}

/*
 * Start writing back what a cycle wrote so far without waiting for it:
 * the fsync at the end of the cycle then finds little left to do, and
 * the disk works while the network does.
 */
static void
kick_writeback(struct store *st, int slot, int fd, uint64_t len)
{
	st->unsynced[slot] += len;
	if (st->unsynced[slot] < WRITEBACK_KICK)
		return;
	st->unsynced[slot] = 0;
	(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

int
store_cycle_put(struct store *st, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *data, const struct digest *hash, char *err, size_t errsz)
{
	uint8_t where;
	uint64_t data_off = 0;
	int r;

	if (!st->active || disk >= st->cur.ndisks || len == 0 ||
	    off > st->cur.sizes[disk] || len > st->cur.sizes[disk] - off) {
		snprintf(err, errsz, "extent out of range");
		return RD_ERR_RANGE;
	}
	if (data == NULL) {
		where = WHERE_ZERO;
	} else if (off >= st->rel.disks[disk].size) {
		where = WHERE_DIRECT;
		r = util_pwrite_full(st->img[disk], data, len, (off_t)off);
		if (r != 0) {
			snprintf(err, errsz, "write to %s at %" PRIu64 ": %s",
			    st->rel.disks[disk].name, off, strerror(errno));
			return errno == ENOSPC ? RD_ERR_NOSPACE : r;
		}
		kick_writeback(st, disk, st->img[disk], len);
	} else {
		where = WHERE_STAGED;
		data_off = st->data_off;
		r = util_pwrite_full(st->data_fd, data, len, (off_t)data_off);
		if (r != 0) {
			snprintf(err, errsz, "staging write: %s",
			    strerror(errno));
			return errno == ENOSPC ? RD_ERR_NOSPACE : r;
		}
		st->data_off += len;
		kick_writeback(st, CAT_MAX_DISKS, st->data_fd, len);
	}
	wb_put_u16(&st->recs, disk);
	wb_put_u64(&st->recs, off);
	wb_put_u32(&st->recs, len);
	wb_put_u8(&st->recs, where);
	wb_put_u64(&st->recs, data_off);
	if (hash && data)
		wb_put_bytes(&st->recs, hash->b, DIGEST_LEN);
	else
		memset(wb_reserve(&st->recs, DIGEST_LEN), 0, DIGEST_LEN),
		    st->recs.len += DIGEST_LEN;
	st->nrec++;
	st->raw_bytes += len;
	if (st->nrec == 8)
		fault_point("replica-staging");
	return 0;
}

void
store_cycle_abort(struct store *st)
{
	close_digest_fds(st);
	if (!st->active)
		return;
	if (st->data_fd >= 0)
		close(st->data_fd);
	st->data_fd = -1;
	st->active = 0;
	remove_staging(st);
	pthread_mutex_lock(&st->lock);
	if (trim_images(st) != 0)
		log_warn("%s: cannot cut images back after an abandoned cycle",
		    st->rel.vm);
	pthread_mutex_unlock(&st->lock);
}

/* --- applying ------------------------------------------------------------ */

static int
punch_zero(int fd, uint64_t off, uint64_t len)
{
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
	    (off_t)off, (off_t)len) == 0)
		return 0;
	static const uint8_t zeros[64 * 1024];
	for (uint64_t o = 0; o < len; o += sizeof(zeros)) {
		size_t n = len - o < sizeof(zeros) ? (size_t)(len - o) :
		    sizeof(zeros);
		int r = util_pwrite_full(fd, zeros, n, (off_t)(off + o));
		if (r != 0)
			return r;
	}
	return 0;
}

/* Record the digest of every block of each extent in .digests/DISK. */
static int
write_digests(struct store *st, const struct stage_index *ix)
{
	uint32_t bs = ix->block_size;
	int fds[CAT_MAX_DISKS], r = 0;

	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		fds[i] = -1;
	for (uint16_t i = 0; i < ix->c.ndisks; i++) {
		char *p = disk_path(st, st->digest_dir, i);
		fds[i] = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		free(p);
		if (fds[i] < 0 || ftruncate(fds[i], (off_t)(nblocks_of(
		    ix->c.sizes[i], bs) * DIGEST_LEN)) != 0) {
			r = RD_ERR_SYSTEM;
			goto out;
		}
	}
	/* Extents arrive in disk and offset order: write each run of
	 * consecutive digests with one pwrite. */
	struct wbuf run;
	uint16_t run_disk = 0;
	uint64_t run_block = 0;
	wb_init(&run);
	for (uint64_t k = 0; k < ix->nrec; k++) {
		const struct stage_rec *rec = &ix->recs[k];
		uint64_t size = ix->c.sizes[rec->disk];
		uint64_t first = rec->off / bs;
		if (run.len > 0 && (rec->disk != run_disk || first !=
		    run_block + run.len / DIGEST_LEN || run.len >= (1u << 20))) {
			if ((r = util_pwrite_full(fds[run_disk], run.p, run.len,
			    (off_t)(run_block * DIGEST_LEN))) != 0)
				break;
			wb_reset(&run);
		}
		if (run.len == 0) {
			run_disk = rec->disk;
			run_block = first;
		}
		for (uint64_t o = rec->off; o < rec->off + rec->len; o += bs) {
			struct digest d = rec->hash;
			if (rec->where == WHERE_ZERO) {
				uint64_t n = size - o < bs ? size - o : bs;
				if (n == bs) {
					d = st->zero_digest;
				} else {
					uint8_t *z = xcalloc(1, (size_t)n);
					digest_block(z, (size_t)n, &d);
					free(z);
				}
			}
			wb_put_bytes(&run, d.b, DIGEST_LEN);
		}
	}
	if (r == 0 && run.len > 0)
		r = util_pwrite_full(fds[run_disk], run.p, run.len,
		    (off_t)(run_block * DIGEST_LEN));
	wb_free(&run);
	if (r != 0)
		goto out;
	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		if (fsync(fds[i]) != 0) {
			r = RD_ERR_SYSTEM;
			goto out;
		}
	r = util_fsync_dir(st->digest_dir);	/* files it may have created */
out:
	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return r;
}

/*
 * Apply a complete staged cycle: undo segment (unless a complete one
 * exists from an interrupted attempt), image writes, sizes, fsync,
 * digests, catalog, staging removal.  Idempotent from any crash point.
 */
/* Every staged block still matches its hash (checked before the image
 * is touched: staging may have been damaged while the host was down). */
static int
check_staged(const struct stage_index *ix, int data_fd, uint8_t *buf,
    char *err, size_t errsz)
{
	for (uint64_t k = 0; k < ix->nrec; k++) {
		const struct stage_rec *rec = &ix->recs[k];
		struct digest d;
		if (rec->where != WHERE_STAGED)
			continue;
		if (data_fd < 0 || rec->len > IO_CHUNK || util_pread_full(
		    data_fd, buf, rec->len, (off_t)rec->data_off) != 0) {
			snprintf(err, errsz, "staged data of cycle %" PRIu64
			    " is missing or short", ix->c.cycle);
			return RD_ERR_CORRUPT;
		}
		digest_block(buf, rec->len, &d);
		if (!digest_equal(&d, &rec->hash)) {
			snprintf(err, errsz, "staged block at offset %" PRIu64
			    " of cycle %" PRIu64 " no longer matches its hash",
			    rec->off, ix->c.cycle);
			return RD_ERR_HASH;
		}
	}
	return 0;
}

/*
 * Take the images back to the newest point after a failed apply: the
 * complete undo segment restores what was overwritten (and the sizes);
 * without one nothing below the old sizes was touched.  Then the cycle
 * is dropped.  Called with st->lock held.
 */
static int
rollback(struct store *st, const struct stage_index *ix, const char *upath)
{
	struct stat sb;
	int r;

	if (stat(upath, &sb) == 0)
		r = undo_apply(upath, st->img, ix->c.ndisks, NULL);
	else
		r = trim_images(st);
	for (uint16_t i = 0; r == 0 && i < ix->c.ndisks; i++)
		if (fsync(st->img[i]) != 0)
			r = RD_ERR_SYSTEM;
	if (r != 0)
		return r;
	if (unlink(upath) != 0 && errno != ENOENT)
		return RD_ERR_SYSTEM;
	remove_staging(st);
	util_fsync_dir(st->undo_dir);
	log_warnx("%s: cycle %" PRIu64 " rolled back; the replica stays at "
	    "point %" PRIu64, st->rel.vm, ix->c.cycle, st->rel.last_point);
	return 0;
}

static int
apply_index(struct store *st, const struct stage_index *ix,
    struct cat_point *out, int *rolled_back, char *err, size_t errsz)
{
	char *upath = undo_path(st, ix->c.cycle), *data_path = NULL;
	uint8_t *buf = NULL;
	uint64_t undo_bytes = 0;
	int data_fd = -1, r, may_roll_back = 0;
	struct stat sb;

	*rolled_back = 0;
	pthread_mutex_lock(&st->lock);
	if (ix->c.ndisks != st->rel.ndisks || ix->block_size !=
	    st->rel.block_size) {
		snprintf(err, errsz, "staged cycle does not match the "
		    "relationship");
		r = RD_ERR_CORRUPT;
		goto out;
	}
	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		if (ix->old_sizes[i] != st->rel.disks[i].size) {
			snprintf(err, errsz, "staged cycle was cut against "
			    "other disk sizes");
			r = RD_ERR_CORRUPT;
			goto out;
		}

	data_path = xasprintf("%s/data", st->staging);
	data_fd = open(data_path, O_RDONLY | O_CLOEXEC);
	buf = xmalloc(IO_CHUNK);
	may_roll_back = 1;
	if ((r = check_staged(ix, data_fd, buf, err, errsz)) != 0)
		goto out;

	/* 1. undo: the old content of everything the cycle overwrites */
	if (stat(upath, &sb) != 0) {
		struct undo_writer *w;
		if ((r = undo_create(upath, ix->c.cycle, ix->c.ndisks,
		    ix->old_sizes, &w)) != 0) {
			snprintf(err, errsz, "cannot create undo segment %s: %s",
			    upath, strerror(errno));
			goto out;
		}
		for (uint64_t k = 0; k < ix->nrec; k++) {
			const struct stage_rec *rec = &ix->recs[k];
			if (rec->where == WHERE_DIRECT)
				continue;
			if ((r = undo_save_range(w, rec->disk,
			    st->img[rec->disk], rec->off, rec->len)) != 0)
				break;
		}
		if (r != 0) {
			snprintf(err, errsz, "cannot save undo data: %s",
			    strerror(errno));
			undo_discard(w);
			goto out;
		}
		if ((r = undo_finish(w, &undo_bytes)) != 0) {
			snprintf(err, errsz, "cannot write undo segment %s: %s",
			    upath, strerror(errno));
			goto out;
		}
	} else {
		undo_bytes = (uint64_t)sb.st_size;
	}
	fault_point("replica-after-undo");

	/* 2. the new content */
	for (uint64_t k = 0; k < ix->nrec; k++) {
		const struct stage_rec *rec = &ix->recs[k];
		int fd = st->img[rec->disk];
		if (rec->where == WHERE_ZERO) {
			r = punch_zero(fd, rec->off, rec->len);
		} else if (rec->where == WHERE_STAGED) {
			if (data_fd < 0 || rec->len > IO_CHUNK) {
				r = RD_ERR_CORRUPT;
			} else if ((r = util_pread_full(data_fd, buf, rec->len,
			    (off_t)rec->data_off)) == 0) {
				struct digest d;
				digest_block(buf, rec->len, &d);
				if (!digest_equal(&d, &rec->hash))
					r = RD_ERR_HASH;
				else
					r = util_pwrite_full(fd, buf, rec->len,
					    (off_t)rec->off);
			}
		}
		if (k == ix->nrec / 2)
			fault_point("replica-mid-apply");
		if (r != 0) {
			snprintf(err, errsz, "applying cycle %" PRIu64 " to %s: "
			    "%s", ix->c.cycle, st->rel.disks[rec->disk].name,
			    r == RD_ERR_SYSTEM ? strerror(errno) :
			    rd_strerror(r));
			goto out;
		}
	}
	for (uint16_t i = 0; i < ix->c.ndisks; i++) {
		if (ftruncate(st->img[i], (off_t)ix->c.sizes[i]) != 0 ||
		    fsync(st->img[i]) != 0) {
			r = RD_ERR_SYSTEM;
			snprintf(err, errsz, "cannot sync %s: %s",
			    st->rel.disks[i].name, strerror(errno));
			goto out;
		}
	}

	/* 3. digests, then the catalog: from here the point exists, and a
	 * failure is finished later (rolled forward), not rolled back. */
	may_roll_back = 0;
	if ((r = write_digests(st, ix)) != 0) {
		snprintf(err, errsz, "cannot write digests: %s",
		    strerror(errno));
		goto out;
	}
	fault_point("replica-before-catalog");
	memset(out, 0, sizeof(*out));
	out->cycle = ix->c.cycle;
	out->created_ms = ix->c.created_ms;
	out->kind = ix->c.kind ? CAT_KIND_APP : CAT_KIND_CRASH;
	out->undo_bytes = undo_bytes;
	out->generation = ix->c.generation;
	out->ndisks = ix->c.ndisks;
	for (uint64_t k = 0; k < ix->nrec; k++)
		out->bytes += ix->recs[k].len;
	memcpy(out->sizes, ix->c.sizes, ix->c.ndisks * sizeof(uint64_t));
	r = cat_point_commit(st->cat, st->rel.vm, out);
	if (r == RD_ERR_EXISTS)
		r = cat_point_by_cycle(st->cat, st->rel.vm, ix->c.cycle, out);
	if (r != 0) {
		snprintf(err, errsz, "cannot record the point: %s",
		    rd_strerror(r));
		goto out;
	}
	fault_point("replica-after-catalog");
	pthread_mutex_lock(&st->rel_lock);
	st->rel.last_cycle = ix->c.cycle;
	st->rel.last_point = out->id;
	st->rel.last_point_created_ms = ix->c.created_ms;
	if (ix->c.generation >= st->rel.generation)
		st->rel.reassigned = 0;	/* the new sender's first point */
	st->rel.generation = ix->c.generation > st->rel.generation ?
	    ix->c.generation : st->rel.generation;
	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		st->rel.disks[i].size = ix->c.sizes[i];
	pthread_mutex_unlock(&st->rel_lock);
	remove_staging(st);
	r = 0;
out:
	if (r != 0 && may_roll_back) {
		char why[256];
		snprintf(why, sizeof(why), "%s", rd_strerror(r));
		if (rollback(st, ix, upath) == 0)
			*rolled_back = 1;
		else
			log_warn("%s: cannot roll back cycle %" PRIu64 " (%s)",
			    st->rel.vm, ix->c.cycle, why);
	}
	pthread_mutex_unlock(&st->lock);
	if (data_fd >= 0)
		close(data_fd);
	free(buf);
	free(data_path);
	free(upath);
	return r;
}

int
store_cycle_commit(struct store *st, struct cat_point *out, char *err,
    size_t errsz)
{
	struct wbuf b;
	struct stage_index ix;
	char *path = NULL;
	int r;

	if (!st->active)
		return RD_ERR_STATE;
	if ((r = make_room(st, 2 * st->raw_bytes, err, errsz)) != 0) {
		store_cycle_abort(st);
		return r;
	}
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		if (st->dig_fd[i] >= 0 && fsync(st->dig_fd[i]) != 0)
			log_warn("%s: fsync of the digests of disk %d", st->rel.vm,
			    i);
	close_digest_fds(st);
	uint64_t t0 = util_mono_ms();
	if (fdatasync(st->data_fd) != 0) {
		snprintf(err, errsz, "cannot sync staging: %s", strerror(errno));
		r = errno == ENOSPC ? RD_ERR_NOSPACE : RD_ERR_SYSTEM;
		store_cycle_abort(st);
		return r;
	}
	for (uint16_t i = 0; i < st->cur.ndisks; i++)
		if (fdatasync(st->img[i]) != 0) {
			snprintf(err, errsz, "cannot sync %s: %s",
			    st->rel.disks[i].name, strerror(errno));
			r = RD_ERR_SYSTEM;
			store_cycle_abort(st);
			return r;
		}
	close(st->data_fd);
	st->data_fd = -1;
	st->active = 0;

	wb_init(&b);
	index_encode(st, &b);
	path = xasprintf("%s/index", st->staging);
	if ((r = util_write_atomic(path, b.p, b.len)) != 0) {
		snprintf(err, errsz, "cannot write %s: %s", path,
		    strerror(errno));
		r = errno == ENOSPC ? RD_ERR_NOSPACE : r;
		st->active = 1;		/* so that abort cleans up */
		store_cycle_abort(st);
		goto out;
	}
	fault_point("replica-after-index");
	/* Apply from the decoded index: the same path recovery takes. */
	if ((r = index_decode(b.p, b.len, &ix)) != 0) {
		snprintf(err, errsz, "staged index does not decode");
		goto out;
	}
	uint64_t t1 = util_mono_ms();
	int rolled_back;
	r = apply_index(st, &ix, out, &rolled_back, err, errsz);
	log_debug("%s: cycle %" PRIu64 ": %" PRIu64 " ms to make the staged "
	    "cycle durable, %" PRIu64 " ms to apply it", st->rel.vm,
	    ix.c.cycle, t1 - t0, util_mono_ms() - t1);
	free(ix.recs);
	if (r != 0 && !rolled_back) {
		/* Neither finished nor undone: the image is between two
		 * points.  Finish it before anything else touches it. */
		pthread_mutex_lock(&st->fix_lock);
		st->unfinished = 1;
		pthread_mutex_unlock(&st->fix_lock);
	}
out:
	free(path);
	wb_free(&b);
	return r;
}

/* --- test failover ------------------------------------------------------- */

static int
copy_range(int src, int dst, uint64_t off, uint64_t len)
{
	while (len > 0) {
		loff_t in = (loff_t)off, o = (loff_t)off;
		ssize_t n = copy_file_range(src, &in, dst, &o,
		    len > (1u << 30) ? (1u << 30) : (size_t)len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* Fall back to read/write (e.g. across devices). */
			uint8_t *buf = xmalloc(IO_CHUNK);
			int r = 0;
			while (len > 0 && r == 0) {
				size_t k = len < IO_CHUNK ? (size_t)len :
				    IO_CHUNK;
				r = util_pread_full(src, buf, k, (off_t)off);
				if (r == 0)
					r = util_pwrite_full(dst, buf, k,
					    (off_t)off);
				off += k;
				len -= k;
			}
			free(buf);
			return r;
		}
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

/* Copy the first size bytes of src into dst, keeping holes; reflink when
 * the file system can. */
static int
copy_image(int src, int dst, uint64_t size)
{
	int r;
	if (ioctl(dst, FICLONE, src) == 0)
		return ftruncate(dst, (off_t)size) == 0 ? 0 : RD_ERR_SYSTEM;
	if (ftruncate(dst, (off_t)size) != 0)
		return RD_ERR_SYSTEM;
	uint64_t off = 0;
	while (off < size) {
		off_t data = lseek(src, (off_t)off, SEEK_DATA);
		if (data < 0)
			return errno == ENXIO ? 0 : RD_ERR_SYSTEM;
		if ((uint64_t)data >= size)
			break;
		off_t hole = lseek(src, data, SEEK_HOLE);
		if (hole < 0)
			return RD_ERR_SYSTEM;
		uint64_t end = (uint64_t)hole < size ? (uint64_t)hole : size;
		if ((r = copy_range(src, dst, (uint64_t)data,
		    end - (uint64_t)data)) != 0)
			return r;
		off = end;
	}
	return 0;
}

int
store_test_exists(struct store *st)
{
	struct stat sb;
	return stat(st->test_dir, &sb) == 0;
}

int
store_test_failover(struct store *st, uint64_t id, uint64_t *point,
    char **paths, char *err, size_t errsz)
{
	int fds[CAT_MAX_DISKS];
	struct cat_point target, *pts = NULL;
	size_t npts = 0;
	uint64_t newest;
	uint16_t nd = st->rel.ndisks;
	int r, mine = 0;

	for (uint16_t i = 0; i < nd; i++) {
		fds[i] = -1;
		paths[i] = NULL;
	}
	if ((r = finish_unfinished(st, err, errsz)) != 0)
		return r;
	pthread_mutex_lock(&st->lock);
	newest = st->rel.last_point;
	if (st->rel.at_point != 0 || st->rel.step_to != 0) {
		snprintf(err, errsz, "%s was failed over (not committed): its "
		    "images are not the newest point", st->rel.vm);
		r = RD_ERR_STATE;
		goto unlock;
	}
	if (st->test_busy || store_test_exists(st)) {
		snprintf(err, errsz, "a test copy exists in %s; remove it with "
		    "failover %s --test --cleanup", st->test_dir, st->rel.vm);
		r = RD_ERR_EXISTS;
		goto unlock;
	}
	if (newest == 0) {
		snprintf(err, errsz, "%s has no recovery point yet", st->rel.vm);
		r = RD_ERR_NOT_FOUND;
		goto unlock;
	}
	if (id == 0)
		id = newest;
	if (id > newest || (r = cat_point_get(st->cat, st->rel.vm, id,
	    &target)) != 0) {
		snprintf(err, errsz, "%s has no recovery point %" PRIu64,
		    st->rel.vm, id);
		r = RD_ERR_NOT_FOUND;
		goto unlock;
	}
	if (util_mkdir_p(st->test_dir, 0700) != 0) {
		snprintf(err, errsz, "cannot create %s: %s", st->test_dir,
		    strerror(errno));
		r = RD_ERR_SYSTEM;
		goto unlock;
	}
	st->test_busy = mine = 1;	/* until the copy is done or removed */
	for (uint16_t i = 0; i < nd; i++) {
		paths[i] = disk_path(st, st->test_dir, i);
		fds[i] = open(paths[i], O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
		    0600);
		if (fds[i] < 0 || (r = copy_image(st->img[i], fds[i],
		    st->rel.disks[i].size)) != 0) {
			snprintf(err, errsz, "cannot copy %s: %s",
			    st->rel.disks[i].name, strerror(errno));
			r = RD_ERR_SYSTEM;
			goto unlock;
		}
	}
	r = 0;
unlock:
	pthread_mutex_unlock(&st->lock);
	if (r != 0)
		goto out;

	/* Walk back from the newest point: undo k, k-1, ..., id+1. */
	if ((r = cat_point_list(st->cat, st->rel.vm, &pts, &npts)) != 0) {
		snprintf(err, errsz, "cannot list points: %s", rd_strerror(r));
		goto out;
	}
	for (size_t k = npts; k-- > 0;) {
		if (pts[k].id > newest || pts[k].id <= id)
			continue;
		char *up = seg_path(st, &pts[k]);
		r = undo_apply(up, fds, nd, NULL);
		if (r != 0) {
			snprintf(err, errsz, "undo segment %s: %s", up,
			    r == RD_ERR_SYSTEM ? strerror(errno) :
			    rd_strerror(r));
			free(up);
			goto out;
		}
		free(up);
	}
	for (uint16_t i = 0; i < nd; i++) {
		if (ftruncate(fds[i], (off_t)target.sizes[i]) != 0 ||
		    fsync(fds[i]) != 0) {
			snprintf(err, errsz, "cannot sync %s: %s", paths[i],
			    strerror(errno));
			r = RD_ERR_SYSTEM;
			goto out;
		}
	}
	char *pf = xasprintf("%s/.point", st->test_dir);
	char num[32];
	int nlen = snprintf(num, sizeof(num), "%" PRIu64 "\n", id);
	if (util_write_atomic(pf, num, (size_t)nlen) != 0) {
		/* Without it the point could be pruned under the copy. */
		snprintf(err, errsz, "cannot write %s: %s", pf, strerror(errno));
		free(pf);
		r = RD_ERR_SYSTEM;
		goto out;
	}
	free(pf);
	util_fsync_dir(st->test_dir);
	*point = id;
out:
	for (uint16_t i = 0; i < nd; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (r != 0) {
		for (uint16_t i = 0; i < nd; i++) {
			free(paths[i]);
			paths[i] = NULL;
		}
	}
	if (mine) {
		pthread_mutex_lock(&st->lock);
		if (r != 0)
			util_rm_rf(st->test_dir);	/* ours, half made */
		st->test_busy = 0;
		pthread_mutex_unlock(&st->lock);
	}
	free(pts);
	return r;
}

int
store_test_cleanup(struct store *st, char *err, size_t errsz)
{
	int r = 0;

	pthread_mutex_lock(&st->lock);
	if (st->test_busy) {
		snprintf(err, errsz, "a test copy of %s is being made",
		    st->rel.vm);
		r = RD_ERR_BUSY;
	} else if (!store_test_exists(st)) {
		snprintf(err, errsz, "%s has no test copy", st->rel.vm);
		r = RD_ERR_NOT_FOUND;
	} else if (util_rm_rf(st->test_dir) != 0) {
		snprintf(err, errsz, "cannot remove %s: %s", st->test_dir,
		    strerror(errno));
		r = RD_ERR_SYSTEM;
	} else {
		util_fsync_dir(st->dir);
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* --- verify -------------------------------------------------------------- */

/*
 * One pass over every disk, a chunk at a time: the image and its digests
 * are read under the lock (so an apply never lands between them) and
 * hashed outside it, so a long verify does not hold up replication.
 * RD_ERR_BUSY if a cycle was applied during the pass.
 */
static int
verify_pass(struct store *st, uint64_t *blocks, char *err, size_t errsz)
{
	uint32_t bs = st->rel.block_size;
	size_t chunk = IO_CHUNK < bs ? bs : IO_CHUNK;
	uint8_t *buf = xmalloc(chunk);
	uint8_t *dig = xmalloc(chunk / bs * DIGEST_LEN);
	int r = 0, dfd = -1;

	pthread_mutex_lock(&st->lock);
	uint64_t cycle = st->rel.last_cycle;
	pthread_mutex_unlock(&st->lock);
	*blocks = 0;
	for (uint16_t i = 0; i < st->rel.ndisks && r == 0; i++) {
		char *dp = disk_path(st, st->digest_dir, i);
		dfd = open(dp, O_RDONLY | O_CLOEXEC);
		free(dp);
		for (uint64_t off = 0; r == 0; off += chunk) {
			pthread_mutex_lock(&st->lock);
			uint64_t size = st->rel.disks[i].size;
			if (st->rel.last_cycle != cycle) {
				r = RD_ERR_BUSY;
			} else if (off >= size) {
				pthread_mutex_unlock(&st->lock);
				break;
			} else if (dfd < 0) {
				snprintf(err, errsz, "disk %s: no digests",
				    st->rel.disks[i].name);
				r = RD_ERR_CORRUPT;
			}
			size_t n = size - off < chunk ? (size_t)(size - off) :
			    chunk;
			size_t nb = (n + bs - 1) / bs;
			if (r == 0 && (util_pread_full(st->img[i], buf, n,
			    (off_t)off) || util_pread_full(dfd, dig,
			    nb * DIGEST_LEN, (off_t)(off / bs * DIGEST_LEN)))) {
				snprintf(err, errsz, "disk %s: cannot read at "
				    "%" PRIu64, st->rel.disks[i].name, off);
				r = RD_ERR_CORRUPT;
			}
			pthread_mutex_unlock(&st->lock);
			for (size_t b = 0; r == 0 && b < nb; b++) {
				size_t len = n - b * bs < bs ? n - b * bs : bs;
				struct digest d;
				digest_block(buf + b * bs, len, &d);
				if (memcmp(d.b, dig + b * DIGEST_LEN,
				    DIGEST_LEN) != 0) {
					uint64_t o = off + b * bs;
					snprintf(err, errsz, "disk %s: block %"
					    PRIu64 " (offset %" PRIu64 ", %zu "
					    "bytes) does not match its digest",
					    st->rel.disks[i].name, o / bs, o,
					    len);
					r = RD_ERR_HASH;
				} else {
					(*blocks)++;
				}
			}
		}
		if (dfd >= 0)
			close(dfd);
		dfd = -1;
	}
	free(buf);
	free(dig);
	return r;
}

int
store_verify(struct store *st, uint64_t *blocks, char *err, size_t errsz)
{
	int r;

	if (st->rel.at_point != 0 || st->rel.step_to != 0) {
		snprintf(err, errsz, "%s was failed over (not committed): its "
		    "images are not the newest point", st->rel.vm);
		return RD_ERR_STATE;
	}
	if ((r = finish_unfinished(st, err, errsz)) != 0)
		return r;
	for (int attempt = 0; attempt < 5; attempt++)
		if ((r = verify_pass(st, blocks, err, errsz)) != RD_ERR_BUSY)
			return r;
	snprintf(err, errsz, "cycles kept arriving while verifying; try again "
	    "or pause the primary");
	return RD_ERR_BUSY;
}
