/*
 * store.c — applying cycles to a replica VM's images, crash recovery,
 * test-failover rebuilds and verification (see store.h for the layout).
 *
 * Staging index (.staging/index), format version 2, big-endian.  It is
 * written as .staging/index.tmp while the cycle arrives, a record per
 * extent, and renamed into place once every block is staged and it and
 * the staged data are synced.  Its presence means "this cycle is
 * complete and must be applied".  It is never held in memory whole: it
 * is read back a window of records at a time (so the daemon's memory
 * does not grow with the size of a cycle).
 *
 *   8      magic "RDSTAGE1"
 *   4      version (2)
 *   4      block_size
 *   8      cycle
 *   8      created_ms
 *   8      generation
 *   1      kind
 *   2      ndisks
 *   16*n   per disk: u64 size at the newest point, u64 size at this cycle
 *   39*r   records: u16 disk, u64 offset, u32 length, u8 where
 *          (0 staged, 1 direct, 2 zero), u64 offset in .staging/data,
 *          16-byte XXH3-128 of the content (zero for zero extents)
 *   8      nrecords
 *   16     XXH3-128 of every byte before it
 *
 * An empty cycle (no extent, no disk grew) has no staging at all.
 *
 * Digest files (.digests/DISK), no header: one 16-byte record per block
 * of the image at the newest point, block i at offset 16 * i; the file is
 * as long as the disk has blocks.  A record is the block's XXH3-128, or
 * 16 zero bytes for a block that holds only zeros (whatever its length).
 * Zero records are written as holes (ftruncate, hole punching): a disk of
 * zeros, announced or never written, costs no space, however large.  So
 * a record reads as "zeros" exactly where the sparse image reads as
 * zeros.  A block of data whose XXH3-128 is 16 zero bytes (2^-128 by
 * chance, but a hostile sender can solve for one: XXH3 is invertible on
 * short blocks) is refused by store_cycle_put.
 *
 * New relationship marker (STORAGE/VM/.new): "created" or "seeded".  It
 * exists from the HELLO that made the relationship until the catalog
 * records it with its first point; a directory holding it whose VM the
 * catalog does not know is removed at start-up (all of it if replicad
 * created it, only replicad's own files in a directory seeded beforehand).
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
#include <sys/resource.h>
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
#include "work.h"
#include "xmalloc.h"

#define STAGE_MAGIC	"RDSTAGE1"
#define STAGE_VERSION	2
#define STAGE_REC	(2 + 8 + 4 + 1 + 8 + DIGEST_LEN)
#define STAGE_HDR(n)	(8 + 4 + 4 + 8 + 8 + 8 + 1 + 2 + 16 * (size_t)(n))
#define STAGE_TRAILER	(8 + DIGEST_LEN)
#define STAGE_WINDOW	(1024 * STAGE_REC)	/* records read or written at
						   a time */
#define WHERE_STAGED	0
#define WHERE_DIRECT	1
#define WHERE_ZERO	2
#define IO_CHUNK	(4u << 20)
#define NEW_MARK	".new"
#define WRITEBACK_KICK	(32u << 20)

struct stage_rec {
	uint16_t	disk;
	uint64_t	off;
	uint32_t	len;
	uint8_t		where;
	uint64_t	data_off;
	struct digest	hash;
};

/* A staging index checked whole (index_load), read back by ix_next(). */
struct stage_index {
	uint32_t	  block_size;
	struct store_cycle c;
	uint64_t	  old_sizes[CAT_MAX_DISKS];
	uint64_t	  nrec;
	uint64_t	  bytes;	/* the records' lengths, summed */
	int		  fd;		/* the file, or -1 and mem */
	const uint8_t	 *mem;
	uint64_t	  recs_off;	/* where the records start */
};

/* One pass over an index's records, a window at a time. */
struct stage_iter {
	const struct stage_index *ix;
	uint64_t	  k;		/* records returned so far */
	size_t		  pos, have;
	uint8_t		 *buf;		/* STAGE_WINDOW */
};

#define COMPACT_QUEUE	64
#define COMPACT_AT_ONCE	1	/* compactions in the whole daemon */
#define UNDO_LAG	64

struct store {
	pthread_mutex_t	 lock;		/* the images: apply, rebuild, verify */
	pthread_mutex_t	 rel_lock;	/* rel, briefly (the loop reads it) */
	pthread_mutex_t	 fix_lock;	/* unfinished, and its recovery */
	struct catalog	*cat;
	struct cat_rel	 rel;		/* the newest point's view */
	char		*dir;
	int		 created;	/* store_open made dir */
	int		 unrecorded;	/* a new relationship the catalog does
					   not hold yet (.new marker) */
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
	int		 undo_clone;	/* UNDO_CLONE_*: how undo data is saved */
	/* Segments an apply wrote fast (cloned, nothing compressed), to be
	 * compacted by a thread of the store's own, off the cycle's path. */
	pthread_mutex_t	 cq_mu;
	uint64_t	 cq[COMPACT_QUEUE];	/* their cycles, oldest first */
	size_t		 cq_n;
	int		 cq_thread;	/* the thread runs (cq_mu) */
	int		 cq_stop;	/* store_close: stop after this one */
	int		 cq_joinable;	/* a thread was started, not joined */
	pthread_t	 cq_tid;
	uint64_t	 min_free_bytes; /* [accept] min_free */
	unsigned	 min_free_pct;
	int		 unfinished;	/* a complete cycle failed to apply:
					   roll it forward before anything */
	/* the cycle being received */
	uint64_t	 unsynced[CAT_MAX_DISKS]; /* bytes written past the
					   old sizes since the last writeback
					   kick */
	uint8_t		 repaired[CAT_MAX_DISKS]; /* store_repair() wrote
					   the image in place: synced before
					   the point (no index record names
					   it) */
	int		 active;
	struct store_cycle cur;
	int		 data_fd;	/* .staging/data, made by the first
					   staged block (-1: none yet) */
	int		 staging_unsynced; /* an applied cycle's staging was
					   removed without syncing the
					   directory (see remove_staging) */
	uint64_t	 data_off;
	struct wbuf	 recs;		/* index records not written yet */
	int		 ix_fd;		/* .staging/index.tmp, made by the
					   first extent (-1: none yet) */
	XXH3_state_t	*ix_sum;	/* of what ix_fd holds */
	uint64_t	 ix_off;	/* its length */
	uint64_t	 nrec;
	uint64_t	 raw_bytes;
	char		*def;		/* the VM's definition it carries */
	size_t		 def_len;
	uint64_t	 need;		/* space its apply may take (undo,
					   image, digests) */
	/* On storage that clones: its undo segment, cloned as the blocks
	 * arrive (the images are untouched until the apply), each range
	 * UNDO_LAG ranges after the read-ahead of its old content. */
	struct undo_writer *uw;
	int		 uw_used;	/* CYCLE.undo may exist: an abort
					   before the index removes it */
	struct undo_range {
		uint16_t	 disk;
		uint64_t	 off, len;
	}		 uq[UNDO_LAG];
	size_t		 uq_head, uq_n;
};

static const char *open_error(void);
static int io_code(int r);

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

/* --- digest records (the format is at the top of this file) ------------ */

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

/* Whether [off, off + len) of fd holds no data (a hole, or past the end). */
static int
is_hole(int fd, uint64_t off, uint64_t len)
{
	off_t data = lseek(fd, (off_t)off, SEEK_DATA);
	if (data < 0)
		return errno == ENXIO;
	return (uint64_t)data >= off + len;
}

/* Zeros over [off, off + len): nothing to do where it is a hole already
 * (the first cycle of a large disk), a punched hole elsewhere. */
static int
clear_range(int fd, uint64_t off, uint64_t len)
{
	if (len == 0 || is_hole(fd, off, len))
		return 0;
	return punch_zero(fd, off, len);
}

/* Whether d is the digest of len zero bytes (len at most a block). */
static int
is_zero_digest(const struct store *st, const struct digest *d, size_t len)
{
	struct digest z;

	if (len == st->rel.block_size)
		return digest_equal(d, &st->zero_digest);
	uint8_t *buf = xcalloc(1, len);	/* a disk's short last block */
	digest_block(buf, len, &z);
	free(buf);
	return digest_equal(d, &z);
}

/* The record of a block of len bytes whose digest is d. */
static void
to_record(const struct store *st, const struct digest *d, size_t len,
    uint8_t *rec)
{
	if (is_zero_digest(st, d, len))
		memset(rec, 0, DIGEST_LEN);
	else
		memcpy(rec, d->b, DIGEST_LEN);
}

/* Write n records from block first: each run of non-zero records with one
 * pwrite, each run of zero records as a hole. */
static int
put_records(int fd, uint64_t first, const uint8_t *recs, size_t n)
{
	size_t i = 0, j;
	int r = 0;

	while (r == 0 && i < n) {
		int zero = util_is_zero(recs + i * DIGEST_LEN, DIGEST_LEN);
		for (j = i + 1; j < n && util_is_zero(recs + j * DIGEST_LEN,
		    DIGEST_LEN) == zero; j++)
			;
		uint64_t off = (first + i) * DIGEST_LEN;
		size_t len = (j - i) * DIGEST_LEN;
		if (zero)
			r = clear_range(fd, off, len);
		else
			r = util_pwrite_full(fd, recs + i * DIGEST_LEN, len,
			    (off_t)off);
		i = j;
	}
	return r;
}

/* --- staging index ------------------------------------------------------ */

static void
index_header(struct store *st, struct wbuf *b)
{
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
}

/* Write what st->recs holds to .staging/index.tmp. */
static int
index_flush(struct store *st)
{
	int r = util_pwrite_full(st->ix_fd, st->recs.p, st->recs.len,
	    (off_t)st->ix_off);
	if (r == 0) {
		XXH3_128bits_update(st->ix_sum, st->recs.p, st->recs.len);
		st->ix_off += st->recs.len;
		wb_reset(&st->recs);
	}
	return r;
}

/* Create .staging/index.tmp with the cycle's header (not written yet). */
static int
index_start(struct store *st, char *err, size_t errsz)
{
	char *p = xasprintf("%s/index.tmp", st->staging);

	st->ix_fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC |
	    O_NOFOLLOW, 0600);
	if (st->ix_fd < 0) {
		snprintf(err, errsz, "cannot create %s: %s", p, open_error());
		free(p);
		return io_code(RD_ERR_SYSTEM);
	}
	free(p);
	st->ix_off = 0;
	XXH3_128bits_reset(st->ix_sum);
	wb_reset(&st->recs);
	index_header(st, &st->recs);
	return 0;
}

/* The last records and the trailer. */
static int
index_finish(struct store *st)
{
	XXH128_canonical_t c;
	int r;

	wb_put_u64(&st->recs, st->nrec);
	if ((r = index_flush(st)) != 0)
		return r;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st->ix_sum));
	if ((r = util_pwrite_full(st->ix_fd, c.digest, DIGEST_LEN,
	    (off_t)st->ix_off)) == 0)
		st->ix_off += DIGEST_LEN;
	return r;
}

static int
ix_read(const struct stage_index *ix, uint64_t off, uint8_t *dst, size_t n)
{
	if (ix->mem != NULL) {
		memcpy(dst, ix->mem + off, n);
		return 0;
	}
	return util_pread_full(ix->fd, dst, n, (off_t)off);
}

static int
rec_decode(const struct stage_index *ix, const uint8_t *p,
    struct stage_rec *r)
{
	struct rbuf b;

	rb_init(&b, p, STAGE_REC);
	rb_get_u16(&b, &r->disk);
	rb_get_u64(&b, &r->off);
	rb_get_u32(&b, &r->len);
	rb_get_u8(&b, &r->where);
	rb_get_u64(&b, &r->data_off);
	rb_get_bytes(&b, r->hash.b, DIGEST_LEN);
	if (r->disk >= ix->c.ndisks || r->where > WHERE_ZERO ||
	    r->len == 0 || r->off > ix->c.sizes[r->disk] ||
	    r->len > ix->c.sizes[r->disk] - r->off)
		return RD_ERR_CORRUPT;
	return 0;
}

static void
ix_begin(struct stage_iter *it, const struct stage_index *ix)
{
	memset(it, 0, sizeof(*it));
	it->ix = ix;
	it->buf = xmalloc(STAGE_WINDOW);
}

static void
ix_end(struct stage_iter *it)
{
	free(it->buf);
	it->buf = NULL;
}

/* The next record: 1, 0 at the end, or a negative rd_err (errno set for
 * RD_ERR_SYSTEM). */
static int
ix_next(struct stage_iter *it, struct stage_rec *rec)
{
	const struct stage_index *ix = it->ix;
	int r;

	if (it->k == ix->nrec)
		return 0;
	if (it->pos == it->have) {
		uint64_t left = ix->nrec - it->k;
		size_t n = left < STAGE_WINDOW / STAGE_REC ? (size_t)left :
		    STAGE_WINDOW / STAGE_REC;
		if ((r = ix_read(ix, ix->recs_off + it->k * STAGE_REC, it->buf,
		    n * STAGE_REC)) != 0)
			return r == RD_ERR_SYSTEM ? r : RD_ERR_CORRUPT;
		it->pos = 0;
		it->have = n * STAGE_REC;
	}
	if ((r = rec_decode(ix, it->buf + it->pos, rec)) != 0)
		return r;
	it->pos += STAGE_REC;
	it->k++;
	return 1;
}

/*
 * Check the index of len bytes in ix->fd (or ix->mem) whole: header,
 * length, trailer checksum and every record.  0, RD_ERR_CORRUPT, or
 * RD_ERR_SYSTEM.
 */
static int
index_load(struct stage_index *ix, uint64_t len)
{
	uint8_t hdr[STAGE_HDR(CAT_MAX_DISKS)], tr[STAGE_TRAILER], *buf;
	uint8_t magic[8], kind;
	uint32_t version;
	uint64_t created;
	struct rbuf b;
	struct stage_iter it;
	struct stage_rec rec;
	struct digest sum, want;
	XXH128_canonical_t c;
	int r;

	if (len < STAGE_HDR(1) + STAGE_TRAILER)
		return RD_ERR_CORRUPT;
	size_t hlen = len - STAGE_TRAILER < sizeof(hdr) ?
	    (size_t)(len - STAGE_TRAILER) : sizeof(hdr);
	if ((r = ix_read(ix, 0, hdr, hlen)) != 0 ||
	    (r = ix_read(ix, len - STAGE_TRAILER, tr, STAGE_TRAILER)) != 0)
		return r;
	rb_init(&b, hdr, hlen);
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
	ix->recs_off = STAGE_HDR(ix->c.ndisks);
	rb_init(&b, tr, 8);
	rb_get_u64(&b, &ix->nrec);
	uint64_t body = len - STAGE_TRAILER;
	if (body < ix->recs_off || (body - ix->recs_off) % STAGE_REC != 0 ||
	    (body - ix->recs_off) / STAGE_REC != ix->nrec)
		return RD_ERR_CORRUPT;

	/* The checksum, a window at a time. */
	XXH3_state_t *state = XXH3_createState();
	if (state == NULL)
		fatalx("out of memory");
	XXH3_128bits_reset(state);
	buf = xmalloc(STAGE_WINDOW);
	for (uint64_t off = 0; off < len - DIGEST_LEN && r == 0;) {
		size_t n = len - DIGEST_LEN - off < STAGE_WINDOW ?
		    (size_t)(len - DIGEST_LEN - off) : STAGE_WINDOW;
		if ((r = ix_read(ix, off, buf, n)) == 0)
			XXH3_128bits_update(state, buf, n);
		off += n;
	}
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(state));
	XXH3_freeState(state);
	free(buf);
	if (r != 0)
		return r;
	memcpy(sum.b, c.digest, DIGEST_LEN);
	memcpy(want.b, tr + 8, DIGEST_LEN);
	if (!digest_equal(&sum, &want))
		return RD_ERR_CORRUPT;
	ix_begin(&it, ix);
	while ((r = ix_next(&it, &rec)) > 0)
		ix->bytes += rec.len;
	ix_end(&it);
	return r;
}

/* Open and check .staging/index: 0 with ix->fd open (the caller closes
 * it), RD_ERR_NOT_FOUND, RD_ERR_CORRUPT or RD_ERR_SYSTEM. */
static int
index_open(const char *path, struct stage_index *ix)
{
	struct stat sb;
	int r;

	memset(ix, 0, sizeof(*ix));
	ix->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (ix->fd < 0)
		return errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
	if (fstat(ix->fd, &sb) != 0)
		r = RD_ERR_SYSTEM;
	else if (!S_ISREG(sb.st_mode))
		r = RD_ERR_CORRUPT;
	else
		r = index_load(ix, (uint64_t)sb.st_size);
	if (r != 0) {
		int saved = errno;
		close(ix->fd);
		ix->fd = -1;
		errno = saved;
	}
	return r;
}

int
store_index_check(const uint8_t *p, size_t len, struct store_cycle *c,
    uint64_t *nrec)
{
	struct stage_index ix;
	int r;

	memset(&ix, 0, sizeof(ix));
	ix.fd = -1;
	ix.mem = p;
	if ((r = index_load(&ix, len)) != 0)
		return r;
	*c = ix.c;
	*nrec = ix.nrec;
	return 0;
}

/* --- open, close, recovery ---------------------------------------------- */

/*
 * Files under STORAGE/VM are opened with O_NOFOLLOW: nothing replicad
 * makes there is a symbolic link, and one planted there would have a
 * cycle write wherever it points.  Why an open failed, in words.
 */
static const char *
open_error(void)
{
	if (errno == ELOOP)
		return "it is a symbolic link (refused: the replica's storage "
		    "never holds one)";
	return strerror(errno);
}

/* The directories of STORAGE/VM must be real ones, for the same reason. */
static int
check_dirs(struct store *st, char *err, size_t errsz)
{
	const char *dirs[] = { st->staging, st->undo_dir, st->digest_dir,
	    st->redo_dir, st->test_dir };
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		struct stat sb;
		if (lstat(dirs[i], &sb) == 0 && S_ISLNK(sb.st_mode)) {
			snprintf(err, errsz, "%s is a symbolic link (refused: "
			    "the replica's storage never holds one)", dirs[i]);
			return RD_ERR_INVALID;
		}
	}
	return 0;
}

static int
open_images(struct store *st, char *const *paths, char *err, size_t errsz)
{
	for (uint16_t i = 0; i < st->rel.ndisks; i++) {
		/* A former primary's own disks may be links (LVM names);
		 * images under STORAGE/VM never are. */
		char *p = paths ? xstrdup(paths[i]) : disk_path(st, st->dir, i);
		st->img[i] = open(p, O_RDWR | O_CREAT | O_CLOEXEC |
		    (paths ? 0 : O_NOFOLLOW), 0600);
		if (st->img[i] < 0) {
			struct rlimit rl;
			int e = errno;
			if (e == EMFILE && getrlimit(RLIMIT_NOFILE, &rl) == 0)
				snprintf(err, errsz, "cannot open %s: the file "
				    "descriptor limit (%llu) is reached: raise "
				    "it (LimitNOFILE=) or lower max_vms", p,
				    (unsigned long long)rl.rlim_cur);
			else
				snprintf(err, errsz, "cannot open %s: %s", p,
				    open_error());
			free(p);
			return RD_ERR_SYSTEM;
		}
		free(p);
	}
	return 0;
}

/*
 * Cut every image back to its size at the newest point.  Synced even
 * when the size is right already: an earlier cut whose fsync failed left
 * the size on disk unknown.
 */
static int
trim_images(struct store *st)
{
	int r = 0, saved = 0;

	for (uint16_t i = 0; i < st->rel.ndisks; i++) {
		struct stat sb;
		if (fstat(st->img[i], &sb) != 0 ||
		    ((uint64_t)sb.st_size > st->rel.disks[i].size &&
		    ftruncate(st->img[i], (off_t)st->rel.disks[i].size) != 0) ||
		    fsync(st->img[i]) != 0) {
			/* The others still go back: the first error stands. */
			if (r == 0)
				saved = errno;
			r = RD_ERR_SYSTEM;
		}
	}
	if (r != 0)
		errno = saved;
	return r;
}

/* An I/O failure's code: out of space (or quota) is NOSPACE, so that it
 * is reported as the staging's is; errno is the failed call's. */
static int
io_code(int r)
{
	if (r == RD_ERR_SYSTEM && (errno == ENOSPC || errno == EDQUOT))
		return RD_ERR_NOSPACE;
	return r;
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
		if (!tmp && (st->rel.at_point != 0 || st->rel.step_to != 0)) {
			/* The images were failed over since: they are no
			 * longer what that cycle began from. */
			log_warnx("%s: removing %s of an unrecorded cycle "
			    "without writing it back (the replica was failed "
			    "over since)", st->rel.vm, p);
		} else if (!tmp) {
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

static char *
def_path(struct store *st)
{
	return xasprintf("%s/definition", st->staging);
}

/*
 * Remove the staging area.  sync 0 only once the cycle it held is the
 * newest point and its digests are synced: an index brought back by a
 * crash then names the newest point's cycle, which recovery only
 * rewrites the digests of; before anything else can make that cycle
 * not the newest (a rewind, a role change), sync_staging() syncs.
 */
static void
remove_staging(struct store *st, int sync)
{
	char *ix = xasprintf("%s/index", st->staging);
	char *tmp = xasprintf("%s/index.tmp", st->staging);
	char *data = xasprintf("%s/data", st->staging);
	char *mark = xasprintf("%s/applied", st->staging);  /* version 1's */
	char *def = def_path(st);
	unlink(tmp);
	free(tmp);
	unlink(ix);
	unlink(data);
	unlink(mark);
	unlink(def);
	if (sync)
		util_fsync_dir(st->staging);
	st->staging_unsynced = !sync;
	free(ix);
	free(data);
	free(mark);
	free(def);
}

/* Make the removal of an applied cycle's staging durable. */
static void
sync_staging(struct store *st)
{
	if (st->staging_unsynced && util_fsync_dir(st->staging) == 0)
		st->staging_unsynced = 0;
}

/* The cycle is over (applied or abandoned): its definition goes. */
static void
forget_def(struct store *st)
{
	free(st->def);
	st->def = NULL;
	st->def_len = 0;
}

static int apply_index(struct store *st, const struct stage_index *ix,
    int recovering, struct cat_point *out, int *rolled_back, char *err,
    size_t errsz);
static int recover_rewind(struct store *st, char *err, size_t errsz);
static int drop_index(struct store *st);
static void close_digest_fds(struct store *st);
static void remove_unreferenced(struct store *st, int at_open);
static int make_room(struct store *st, uint64_t need, char *err,
    size_t errsz);
static int write_digests(struct store *st, const struct stage_index *ix);
static void compact_stop(struct store *st);
static void compact_later(struct store *st, uint64_t cycle);

/* Finish a complete staged cycle or abandon an incomplete one. */
static int
recover(struct store *st, char *err, size_t errsz)
{
	char *path = xasprintf("%s/index", st->staging);
	struct stage_index ix;
	struct cat_point pt;
	int r;

	r = index_open(path, &ix);
	if (r != 0 && r != RD_ERR_NOT_FOUND && r != RD_ERR_CORRUPT) {
		/* Cannot tell whether a cycle is pending: touch nothing. */
		snprintf(err, errsz, "cannot read %s: %s", path,
		    r == RD_ERR_SYSTEM ? strerror(errno) : rd_strerror(r));
		goto out;
	}
	if (r == RD_ERR_CORRUPT)
		log_warnx("%s: staged cycle index %s is corrupt; abandoning "
		    "that cycle", st->rel.vm, path);
	if (r == 0 && ix.c.cycle == st->rel.last_cycle &&
	    st->rel.at_point == 0) {
		/* Recorded before the crash: its digests are written after
		 * the point is recorded, so write them (again).  (Not while
		 * a rewind holds the images at another point: a rewind
		 * syncs the staging's removal before it starts, so this is
		 * a stale index.) */
		pthread_mutex_lock(&st->lock);
		r = write_digests(st, &ix);
		pthread_mutex_unlock(&st->lock);
		if (r != 0) {
			r = io_code(r);
			snprintf(err, errsz, "cannot write the digests of cycle %"
			    PRIu64 ": %s", ix.c.cycle, strerror(errno));
			goto out;
		}
	}
	if (r == 0 && ix.c.cycle > st->rel.last_cycle) {
		log_info("%s: finishing cycle %" PRIu64 " staged before a "
		    "restart", st->rel.vm, ix.c.cycle);
		int rolled_back;
		r = apply_index(st, &ix, 1, &pt, &rolled_back, err, errsz);
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
		/* No complete cycle (or a recorded one's index, done with
		 * now): undo what an interrupted apply may have written, then
		 * drop what was received. */
		pthread_mutex_lock(&st->lock);
		if ((r = roll_back_orphans(st, err, errsz)) == 0) {
			remove_staging(st, 1);
			if ((r = trim_images(st)) != 0) {
				r = io_code(r);
				snprintf(err, errsz, "cannot trim images: %s",
				    strerror(errno));
			}
		}
		pthread_mutex_unlock(&st->lock);
	}
out:
	if (ix.fd >= 0)
		close(ix.fd);
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
	pthread_mutex_init(&st->cq_mu, NULL);
	st->cat = cat;
	st->rel = *rel;
	st->data_fd = -1;
	st->ix_fd = -1;
	if ((st->ix_sum = XXH3_createState()) == NULL)
		fatalx("out of memory");
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
	if (r == RD_ERR_BUSY)
		snprintf(err, errsz, "%s is in use by another replicad",
		    st->dir);
	else if (r != 0)
		snprintf(err, errsz, "cannot open %s: %s", lock,
		    strerror(errno));
	free(lock);
	if (r != 0)
		goto fail;
	if ((r = check_dirs(st, err, errsz)) != 0 ||
	    (r = open_images(st, paths, err, errsz)) != 0)
		goto fail;
	/* Once per store: where the storage clones ranges, undo data that
	 * does not compress is cloned from the image, not copied. */
	st->undo_clone = undo_clone_probe(st->undo_dir, st->img[0]) ?
	    UNDO_CLONE_RAW : UNDO_CLONE_NONE;
	log_info("%s: undo data %s", st->rel.vm, st->undo_clone ==
	    UNDO_CLONE_NONE ? "copied" : "cloned where it does not compress");
	if ((r = recover(st, err, errsz)) != 0)
		goto fail;
	if (st->rel.step_to != 0 && (r = recover_rewind(st, err, errsz)) != 0)
		goto fail;
	remove_unreferenced(st, 1);
	*out = st;
	return 0;
fail:
	store_discard(st);
	return r;
}

/* --- new relationships (the marker is described at the top) ------------- */

/*
 * Remove what a relationship the catalog never recorded left in dir: all
 * of it if replicad created dir, else (a seed copy the operator placed)
 * only replicad's own files, the marker last, so that a crash on the way
 * leaves it to do again.  The caller holds dir's lock or made sure that
 * nobody else uses dir.
 */
static int
remove_new(const char *dir)
{
	static const char *own[] = { ".staging", ".undo", ".digests", ".redo",
	    ".lock" };
	char *mark = xasprintf("%s/%s", dir, NEW_MARK);
	uint8_t *text = NULL;
	size_t len = 0;
	int r = 0;

	int created = util_read_file(mark, 64, &text, &len) == 0 && len >= 7 &&
	    memcmp(text, "created", 7) == 0;
	free(text);
	if (created) {
		if ((r = util_rm_rf(dir)) == 0)
			util_fsync_parent(dir);
	} else {
		for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
			char *p = xasprintf("%s/%s", dir, own[i]);
			if (util_rm_rf(p) != 0)
				r = RD_ERR_SYSTEM;
			free(p);
		}
		if (r == 0 && unlink(mark) != 0 && errno != ENOENT)
			r = RD_ERR_SYSTEM;
		util_fsync_dir(dir);
	}
	free(mark);
	return r;
}

/* remove_new() under dir's lock: RD_ERR_BUSY if another replicad has it. */
static int
remove_new_locked(const char *dir)
{
	char *lock = xasprintf("%s/.lock", dir);
	int fd = -1, r;

	if ((r = util_lock_file(lock, &fd)) == 0) {
		r = remove_new(dir);
		close(fd);
	}
	free(lock);
	return r;
}

int
store_create(struct catalog *cat, const struct cat_rel *rel,
    struct store **out, char *err, size_t errsz)
{
	char *dir = xasprintf("%s/%s", rel->storage, rel->vm);
	char *mark = xasprintf("%s/%s", dir, NEW_MARK);
	struct stat sb;
	int r;

	/* Left by an earlier HELLO whose clean-up did not finish. */
	if (lstat(mark, &sb) == 0 && (r = remove_new_locked(dir)) != 0) {
		snprintf(err, errsz, "cannot remove what an unrecorded "
		    "relationship left in %s: %s", dir, r == RD_ERR_BUSY ?
		    "another replicad uses it" : strerror(errno));
		goto out;
	}
	int created = lstat(dir, &sb) != 0 && errno == ENOENT;
	const char *what = created ? "created\n" : "seeded\n";
	if (util_mkdir_p(dir, 0700) != 0 ||
	    util_write_atomic(mark, what, strlen(what)) != 0 ||
	    (created && util_fsync_parent(dir) != 0)) {
		snprintf(err, errsz, "cannot create %s: %s", mark,
		    strerror(errno));
		r = RD_ERR_SYSTEM;
		if (created)
			util_rm_rf(dir);
		else
			unlink(mark);
		goto out;
	}
	if ((r = store_open_paths(cat, rel, NULL, out, err, errsz)) != 0) {
		remove_new_locked(dir);
		goto out;
	}
	(*out)->created = created;
	(*out)->unrecorded = 1;
out:
	free(mark);
	free(dir);
	return r;
}

int
store_recorded(struct store *st)
{
	pthread_mutex_lock(&st->rel_lock);
	int r = !st->unrecorded;
	pthread_mutex_unlock(&st->rel_lock);
	return r;
}

void
store_discard(struct store *st)
{
	char *dir = xstrdup(st->dir);
	int unrecorded = st->unrecorded, created = st->created;

	store_close(st);
	if (unrecorded) {
		if (remove_new_locked(dir) != 0)
			log_warn("cannot remove %s (it is removed at the next "
			    "start)", dir);
	} else if (created) {
		util_rm_rf(dir);
	}
	free(dir);
}

void
store_sweep_new(struct catalog *cat, const char *storage)
{
	DIR *d = opendir(storage);
	struct dirent *de;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		struct cat_rel rel;
		struct stat sb;
		if (util_name_valid(de->d_name) != 0)
			continue;
		char *dir = xasprintf("%s/%s", storage, de->d_name);
		char *mark = xasprintf("%s/%s", dir, NEW_MARK);
		int r = RD_ERR_NOT_FOUND;
		if (lstat(mark, &sb) != 0) {
			free(mark);
			free(dir);
			continue;
		}
		r = cat_rel_get(cat, de->d_name, &rel);
		if (r == 0 && strcmp(rel.storage, storage) == 0) {
			/* Recorded with its first point; stopped before the
			 * marker went. */
			if (unlink(mark) == 0)
				util_fsync_dir(dir);
		} else if (r == 0) {
			/* Recorded in another storage: this may be a copy an
			 * operator moved; only a VM the catalog does not
			 * know is swept. */
			log_warnx("%s: %s holds a new relationship's marker, but "
			    "the catalog records the VM in %s: left as it is",
			    de->d_name, dir, rel.storage);
		} else if (r == RD_ERR_NOT_FOUND) {
			log_info("%s: removing what a new relationship left in "
			    "%s: it has no recorded point (its primary sends "
			    "the first cycle again)", de->d_name, dir);
			if ((r = remove_new_locked(dir)) != 0)
				log_warnx("%s: cannot remove %s: %s", de->d_name,
				    dir, r == RD_ERR_BUSY ? "another replicad "
				    "uses it" : strerror(errno));
		} else {
			log_warnx("%s: %s holds a new relationship's marker, "
			    "and the catalog cannot tell whether it is "
			    "recorded (%s): left as it is", de->d_name, dir,
			    rd_strerror(r));
		}
		free(mark);
		free(dir);
	}
	closedir(d);
}

void
store_close(struct store *st)
{
	if (st == NULL)
		return;
	compact_stop(st);
	if (st->active)
		store_cycle_abort(st);
	sync_staging(st);
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		if (st->img[i] >= 0)
			close(st->img[i]);
	close_digest_fds(st);
	if (st->lock_fd >= 0)
		close(st->lock_fd);
	wb_free(&st->recs);
	XXH3_freeState(st->ix_sum);
	forget_def(st);
	pthread_mutex_destroy(&st->lock);
	pthread_mutex_destroy(&st->rel_lock);
	pthread_mutex_destroy(&st->fix_lock);
	pthread_mutex_destroy(&st->cq_mu);
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
	if (st->unfinished && (r = recover(st, why, sizeof(why))) != 0) {
		snprintf(err, errsz, "the replica of %s could not finish applying "
		    "or rolling back a cycle (%s); it refuses new work until "
		    "that succeeds", st->rel.vm, why);
		r = r == RD_ERR_NOSPACE ? r : RD_ERR_STATE;
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
 * The records of one chunk of an image, read at off (n bytes) into buf:
 * zero records for blocks of zeros, read as holes without hashing.
 */
static int
chunk_records(struct store *st, int fd, uint64_t off, size_t n, uint8_t *buf,
    uint8_t *recs)
{
	uint32_t bs = st->rel.block_size;
	size_t nb = (n + bs - 1) / bs;
	int r;

	if (is_hole(fd, off, n)) {
		memset(recs, 0, nb * DIGEST_LEN);
		return 0;
	}
	if ((r = util_pread_holes(fd, buf, n, (off_t)off)) != 0)
		return r;
	for (size_t b = 0; b < nb; b++) {
		size_t k = n - b * bs < bs ? n - b * bs : bs;
		struct digest d;
		if (util_is_zero(buf + b * bs, k)) {
			memset(recs + b * DIGEST_LEN, 0, DIGEST_LEN);
			continue;
		}
		digest_block(buf + b * bs, k, &d);
		memcpy(recs + b * DIGEST_LEN, d.b, DIGEST_LEN);
	}
	return 0;
}

/*
 * Compare a chunk's records with those of the digest file dfd (old_nb
 * records): the index of the first block that differs, or nb.  A recorded
 * digest of zeros (a file from before zero records) counts as a zero
 * record; a block past the file's end differs (the image grew).
 */
static size_t
first_changed(struct store *st, int dfd, uint64_t old_nb, uint64_t first,
    const uint8_t *recs, size_t nb, uint64_t size)
{
	uint32_t bs = st->rel.block_size;
	size_t have = old_nb <= first ? 0 : old_nb - first < nb ?
	    (size_t)(old_nb - first) : nb;
	uint8_t *old = xmalloc(nb * DIGEST_LEN);
	size_t b = 0;

	if (util_pread_holes(dfd, old, have * DIGEST_LEN,
	    (off_t)(first * DIGEST_LEN)) != 0)
		goto out;
	for (; b < have; b++) {
		uint8_t *o = old + b * DIGEST_LEN;
		uint64_t at = (first + b) * bs;
		size_t len = size - at < bs ? (size_t)(size - at) : bs;
		struct digest d;
		memcpy(d.b, o, DIGEST_LEN);
		if (!util_is_zero(o, DIGEST_LEN))
			to_record(st, &d, len, o);
		if (memcmp(o, recs + b * DIGEST_LEN, DIGEST_LEN) != 0)
			break;
	}
out:
	free(old);
	return b;
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
	uint8_t *recs = xmalloc(chunk / bs * DIGEST_LEN);
	char *p = NULL, *tmp = NULL;
	int r = 0, fd = -1;

	for (uint16_t i = 0; i < st->rel.ndisks && r == 0; i++) {
		struct stat sb, db;
		if (fstat(st->img[i], &sb) != 0) {
			r = RD_ERR_SYSTEM;
			break;
		}
		uint64_t size = (uint64_t)sb.st_size, nb = nblocks_of(size, bs);
		p = disk_path(st, st->digest_dir, i);
		tmp = xasprintf("%s.tmp", p);
		if (write)
			fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
			    0600);
		else
			fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &db) != 0 || (write && ftruncate(fd,
		    (off_t)(nb * DIGEST_LEN)) != 0)) {
			r = RD_ERR_SYSTEM;
			break;
		}
		uint64_t old_nb = (uint64_t)db.st_size / DIGEST_LEN;
		for (uint64_t off = 0; off < size && r == 0; off += chunk) {
			size_t n = size - off < chunk ? (size_t)(size - off) :
			    chunk;
			size_t k = (n + bs - 1) / bs;
			if ((r = chunk_records(st, st->img[i], off, n, buf,
			    recs)) != 0)
				break;
			if (write) {
				r = put_records(fd, off / bs, recs, k);
				continue;
			}
			size_t b = first_changed(st, fd, old_nb, off / bs, recs,
			    k, size);
			if (b < k) {
				snprintf(err, errsz, "disk %s changed at offset "
				    "%" PRIu64 " since the failover",
				    st->rel.disks[i].name, off + b * bs);
				r = RD_ERR_HASH;
			}
		}
		if (r == 0 && !write && old_nb != nb) {
			snprintf(err, errsz, "disk %s changed at offset %" PRIu64
			    " since the failover", st->rel.disks[i].name,
			    (old_nb < nb ? old_nb : nb) * bs);
			r = RD_ERR_HASH;
		}
		if (r == 0 && write && (fsync(fd) != 0 || rename(tmp, p) != 0 ||
		    util_fsync_dir(st->digest_dir) != 0))
			r = RD_ERR_SYSTEM;
		if (r != 0)
			break;
		close(fd);
		fd = -1;
		free(p);
		free(tmp);
		p = tmp = NULL;
	}
	if (r != 0 && r != RD_ERR_HASH)
		snprintf(err, errsz, "cannot digest the images of %s: %s",
		    st->rel.vm, r == RD_ERR_SYSTEM ? strerror(errno) :
		    rd_strerror(r));
	if (fd >= 0)
		close(fd);
	if (r != 0 && write && tmp != NULL)
		unlink(tmp);
	free(p);
	free(tmp);
	free(recs);
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
	} else if (pts[is].seg != CAT_SEG_NONE) {
		/* (A point with no segment is the point before it.) */
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
	/* The rewind makes an older point the newest: an applied cycle's
	 * index must not come back as one newer than it. */
	sync_staging(st);
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
		if (p->seg != CAT_SEG_NONE) {
			/* (None: an empty cycle's point, the same images.) */
			char *upath = seg_path(st, p);
			uint64_t bytes;
			r = undo_invert(upath, st->img, st->rel.ndisks, p->cycle,
			    path, &bytes);
			if (r != 0)
				snprintf(err, errsz, "cannot save what point %"
				    PRIu64 " overwrites: %s", p->id,
				    r == RD_ERR_SYSTEM ? strerror(errno) :
				    rd_strerror(r));
			else
				r = apply_segment(st, upath, err, errsz);
			free(upath);
		}
		if (r == 0)
			r = set_rewind(st, pts[i - 1].id, 0, err, errsz);
		i--;
		if (r == 0 && i > want)
			fault_point("replica-mid-rewind");
	}
	while (r == 0 && i < want) {
		const struct cat_point *q = &pts[i + 1];
		if ((r = set_rewind(st, pts[i].id, q->id, err, errsz)) != 0)
			break;
		free(path);
		path = redo_path(st, q->cycle);
		if ((q->seg == CAT_SEG_NONE ||
		    (r = apply_segment(st, path, err, errsz)) == 0) &&
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
	sync_staging(st);
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
		if (pts[moved].seg == CAT_SEG_NONE)
			continue;
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
			if (pts[k].seg == CAT_SEG_NONE)
				continue;
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
	remove_unreferenced(st, 0);
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

/* What min_free keeps free on a file system of total bytes. */
static uint64_t
keep_free(struct store *st, uint64_t total)
{
	uint64_t keep;

	pthread_mutex_lock(&st->rel_lock);
	uint64_t pct = total / 100 * st->min_free_pct;
	/* Both set (the default): the smaller. */
	if (st->min_free_pct && st->min_free_bytes)
		keep = pct < st->min_free_bytes ? pct : st->min_free_bytes;
	else
		keep = st->min_free_pct ? pct : st->min_free_bytes;
	pthread_mutex_unlock(&st->rel_lock);
	return keep;
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
	*keep = keep_free(st, *total);
	return 0;
}

/*
 * Room for the definition the cycle carries: its staged copy on the
 * storage and, unless the catalog holds that text already, the pages
 * of its row in the catalog's database beyond the free pages it has
 * (the WAL stays at the size its busiest checkpoint interval made it:
 * once, not per definition).  On the storage's file system both count
 * in what the cycle needs (make_room); on another, min_free holds there
 * too, and since dropping points gives that file system nothing back
 * (the database keeps their pages for new rows, which is why its free
 * pages count), a cycle that does not fit is refused (NOSPACE) rather
 * than made room for.
 */
static int
def_room(struct store *st, char *err, size_t errsz)
{
	uint64_t cost = st->def_len, avail, total, keep, spare = 0;
	const char *cpath = cat_file(st->cat);
	struct stat cs, ss;
	struct statvfs sv;
	char a[32], b[32], c[32];
	int known = 0;

	st->need += st->def_len;
	if (cat_definition_known(st->cat, st->rel.vm, st->def, st->def_len,
	    &known) == 0 && known)
		return 0;
	if (cat_free_bytes(st->cat, &spare) == 0)
		cost = cost > spare ? cost - spare : 0;
	if (stat(cpath, &cs) != 0 || stat(st->dir, &ss) != 0 ||
	    cs.st_dev == ss.st_dev) {
		st->need += cost;
		return 0;
	}
	if (statvfs(cpath, &sv) != 0)
		return 0;
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	total = (uint64_t)sv.f_blocks * sv.f_frsize;
	keep = keep_free(st, total);
	if (keep == 0 || cost == 0 || (avail >= cost && avail - cost >= keep))
		return 0;
	util_format_bytes(avail, a, sizeof(a));
	util_format_bytes(cost, b, sizeof(b));
	util_format_bytes(keep, c, sizeof(c));
	snprintf(err, errsz, "no space for the VM's new definition: %s free "
	    "on the file system of the catalog %s, the definition needs about "
	    "%s and min_free keeps %s (a prune makes room: the definitions of "
	    "the points it drops leave their pages to new ones)", a, cpath, b,
	    c);
	return RD_ERR_NOSPACE;
}

/*
 * Before a cycle is applied: if what it needs (store_cycle_put counts it:
 * the undo data of what it overwrites, the new blocks of the images and
 * their digest records) would leave less than min_free, drop the oldest points, one at a time,
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

const char *
store_test_dir(const struct store *st)
{
	return st->test_dir;
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
store_point_definition(struct store *st, uint64_t point, char **xml)
{
	struct cat_rel rel;

	*xml = NULL;
	if (point == 0) {
		store_rel(st, &rel);
		if ((point = rel.last_point) == 0)
			return RD_ERR_NOT_FOUND;
	}
	return cat_point_definition(st->cat, st->rel.vm, point, xml);
}

int
store_drop_point(struct store *st, uint64_t id, uint64_t *freed, char *err,
    size_t errsz)
{
	struct cat_point *pts = NULL;
	size_t n = 0;
	char *a = NULL, *b = NULL, *merged = NULL;
	int r, made_empty = 0;

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
	} else if (a == NULL) {
		/* j is an empty cycle's point, the same as the one before
		 * it: k's segment takes k back to that one already. */
		if ((r = cat_point_drop(st->cat, st->rel.vm, j->id, k->id,
		    k->seg, k->undo_bytes)) != 0) {
			snprintf(err, errsz, "catalog: %s", rd_strerror(r));
			goto out;
		}
		free(b);
		b = NULL;	/* k keeps it */
		*freed = was - k->undo_bytes;
	} else {
		struct cat_point nk = *k;
		uint64_t bytes = 0;
		nk.seg = k->seg == CAT_SEG_NONE ? 1 : k->seg + 1;
		merged = seg_path(st, &nk);
		if (b == NULL) {
			/* k is an empty cycle's point: merge j's segment with
			 * an empty one of k's (k's name, so a crash leaves it
			 * to remove_unreferenced). */
			struct cat_point ek = *k;
			struct undo_writer *w;
			uint64_t eb;
			ek.seg = 0;
			b = seg_path(st, &ek);
			if ((r = undo_create(b, k->cycle, k->ndisks, j->sizes,
			    &w)) != 0 || (r = undo_finish(w, &eb)) != 0) {
				snprintf(err, errsz, "cannot write %s: %s", b,
				    strerror(errno));
				goto out;
			}
			made_empty = 1;
		}
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
	if (r != 0 && made_empty)
		unlink(b);
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
remove_unreferenced(struct store *st, int at_open)
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
		if (strcmp(end, ".compact.undo") == 0 ||
		    strcmp(end, ".compact.undo.tmp") == 0) {
			/* A compaction a crash interrupted (later, one that
			 * runs: its own to finish or remove). */
			if (!at_open)
				continue;
			char *p = xasprintf("%s/%s", st->undo_dir, de->d_name);
			unlink(p);
			free(p);
			continue;
		}
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

/* --- compacting undo segments ------------------------------------------ */

/* The compacted copy's name while it is written and not yet recorded:
 * never a name a point or a merge takes (remove_unreferenced() removes
 * one a crash left). */
static char *
compact_path(struct store *st, uint64_t cycle)
{
	return xasprintf("%s/%" PRIu64 ".compact.undo", st->undo_dir, cycle);
}

static int
compact_cancelled(void *arg)
{
	struct store *st = arg;
	pthread_mutex_lock(&st->cq_mu);
	int stop = st->cq_stop;
	pthread_mutex_unlock(&st->cq_mu);
	return stop;
}

/* Point cycle's segment as it stands: 0 and *out if it is one to
 * compact now.  Under st->lock. */
static int
compact_target(struct store *st, uint64_t cycle, struct cat_point *out)
{
	struct cat_point *pts = NULL;
	size_t n = 0, i;
	int found = 0;

	if (st->rel.at_point != 0 || st->rel.step_to != 0 || st->test_busy ||
	    cat_point_list(st->cat, st->rel.vm, &pts, &n) != 0)
		return RD_ERR_STATE;
	for (i = 0; i < n && !found; i++)
		if (pts[i].cycle == cycle && pts[i].seg != CAT_SEG_NONE &&
		    pts[i].seg < CAT_SEG_NONE - 1) {
			*out = pts[i];
			found = 1;
		}
	free(pts);
	return found ? 0 : RD_ERR_NOT_FOUND;
}

/*
 * Point cycle's segment, written fast, again with compression.  The copy
 * is written without the store's lock (an apply, a prune, a rewind go on
 * meanwhile), as CYCLE.compact.undo; under the lock, if the point still
 * has that same segment, it becomes CYCLE.(N+1).undo, is recorded, and
 * the old one is removed.  A crash at any step leaves the segment the
 * catalog names and files no point uses (remove_unreferenced()).
 * Nothing is done for a store failed over, being rewound or copied for
 * a test, or a point dropped or merged meanwhile.
 */
static void
compact_one(struct store *st, uint64_t cycle)
{
	struct cat_point p, now;
	char *from = NULL, *to = NULL, *tmp = compact_path(st, cycle);
	uint64_t bytes = 0;
	int r;

	pthread_mutex_lock(&st->lock);
	r = compact_target(st, cycle, &p);
	pthread_mutex_unlock(&st->lock);
	if (r != 0) {
		log_debug("%s: undo segment of cycle %" PRIu64 " not compacted "
		    "(%s)", st->rel.vm, cycle, rd_strerror(r));
		goto out;
	}
	from = seg_path(st, &p);
	if ((r = undo_compact(from, cycle, tmp, &bytes, compact_cancelled,
	    st)) != 0) {
		if (r != RD_ERR_CANCELLED && r != RD_ERR_NOT_FOUND)
			log_warnx("%s: cannot compact the undo segment %s: %s "
			    "(it stays as it is)", st->rel.vm, from,
			    r == RD_ERR_SYSTEM ? strerror(errno) :
			    rd_strerror(r));
		goto out;
	}
	pthread_mutex_lock(&st->lock);
	if (bytes >= p.undo_bytes || compact_target(st, cycle, &now) != 0 ||
	    now.id != p.id || now.seg != p.seg) {
		/* No gain, or the point changed meanwhile. */
		log_debug("%s: undo segment of point %" PRIu64 " kept as it "
		    "is (compacted: %" PRIu64 " of %" PRIu64 " bytes, or the "
		    "point changed)", st->rel.vm, p.id, bytes, p.undo_bytes);
		unlink(tmp);
		pthread_mutex_unlock(&st->lock);
		goto out;
	}
	struct cat_point np = p;
	np.seg = p.seg + 1;
	to = seg_path(st, &np);
	/* In place durably before the catalog names it: a power loss must
	 * not find the catalog naming a file still called tmp (the next
	 * start removes both that and the old one). */
	if (rename(tmp, to) != 0 || util_fsync_dir(st->undo_dir) != 0) {
		log_warn("%s: cannot put %s in place", st->rel.vm, tmp);
		unlink(tmp);
		unlink(to);
		pthread_mutex_unlock(&st->lock);
		goto out;
	}
	fault_point("replica-before-compact-record");
	if ((r = cat_point_set_seg(st->cat, st->rel.vm, p.id, np.seg,
	    bytes)) != 0) {
		/* It may have been recorded all the same: both stay, and
		 * the next start removes the one no point uses. */
		log_warnx("%s: cannot record the compacted undo segment of "
		    "point %" PRIu64 ": %s", st->rel.vm, p.id, rd_strerror(r));
		pthread_mutex_unlock(&st->lock);
		goto out;
	}
	fault_point("replica-after-compact-record");
	/* Unsynced: a removal lost to a crash leaves a file no point
	 * uses, which the next start removes. */
	unlink(from);
	pthread_mutex_unlock(&st->lock);
	log_debug("%s: undo segment of point %" PRIu64 " compacted from %"
	    PRIu64 " to %" PRIu64 " bytes", st->rel.vm, p.id, p.undo_bytes,
	    bytes);
out:
	free(from);
	free(to);
	free(tmp);
}

/*
 * Compactions of every store of the daemon take turns, COMPACT_AT_ONCE at
 * a time: each holds some megabytes of buffers and reads and writes its
 * segment, and a host of hundreds of VMs must not run hundreds at once.
 */
static pthread_mutex_t	compact_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	compact_cv = PTHREAD_COND_INITIALIZER;
static int		compact_busy;

/* 1 with a turn, 0 if the store is closing meanwhile. */
static int
compact_turn(struct store *st)
{
	int ok;

	pthread_mutex_lock(&compact_mu);
	for (;;) {
		pthread_mutex_lock(&st->cq_mu);
		int stop = st->cq_stop;
		pthread_mutex_unlock(&st->cq_mu);
		if (stop || compact_busy < COMPACT_AT_ONCE)
			break;
		pthread_cond_wait(&compact_cv, &compact_mu);
	}
	pthread_mutex_lock(&st->cq_mu);
	ok = !st->cq_stop;
	pthread_mutex_unlock(&st->cq_mu);
	if (ok)
		compact_busy++;
	pthread_mutex_unlock(&compact_mu);
	return ok;
}

static void
compact_turn_end(void)
{
	pthread_mutex_lock(&compact_mu);
	compact_busy--;
	pthread_cond_broadcast(&compact_cv);
	pthread_mutex_unlock(&compact_mu);
}

static void *
compact_thread(void *arg)
{
	struct store *st = arg;

	for (;;) {
		pthread_mutex_lock(&st->cq_mu);
		if (st->cq_stop || st->cq_n == 0) {
			st->cq_thread = 0;
			pthread_mutex_unlock(&st->cq_mu);
			return NULL;
		}
		uint64_t cycle = st->cq[0];
		memmove(st->cq, st->cq + 1, --st->cq_n * sizeof(st->cq[0]));
		pthread_mutex_unlock(&st->cq_mu);
		if (!compact_turn(st))
			continue;	/* closing: the loop ends */
		compact_one(st, cycle);
		compact_turn_end();
	}
}

/* Queue cycle's segment; start the thread if none runs.  A full queue
 * forgets its oldest (that segment only keeps its fast form). */
static void
compact_later(struct store *st, uint64_t cycle)
{
	pthread_mutex_lock(&st->cq_mu);
	if (st->cq_stop) {
		pthread_mutex_unlock(&st->cq_mu);
		return;
	}
	if (st->cq_n == COMPACT_QUEUE)
		memmove(st->cq, st->cq + 1, --st->cq_n * sizeof(st->cq[0]));
	st->cq[st->cq_n++] = cycle;
	if (!st->cq_thread) {
		if (st->cq_joinable) {
			/* The last one returned (cq_thread 0): reap it. */
			pthread_join(st->cq_tid, NULL);
			st->cq_joinable = 0;
		}
		if (pthread_create(&st->cq_tid, NULL, compact_thread, st) ==
		    0) {
			st->cq_thread = 1;
			st->cq_joinable = 1;
		} else {
			st->cq_n = 0;	/* no thread: they stay as they are */
		}
	}
	pthread_mutex_unlock(&st->cq_mu);
}

/* Before the store goes: the segment being compacted is finished, the
 * rest stay as they are. */
static void
compact_stop(struct store *st)
{
	pthread_mutex_lock(&st->cq_mu);
	st->cq_stop = 1;
	int join = st->cq_joinable;
	st->cq_joinable = 0;
	pthread_mutex_unlock(&st->cq_mu);
	/* A thread waiting for its turn sees the stop. */
	pthread_mutex_lock(&compact_mu);
	pthread_cond_broadcast(&compact_cv);
	pthread_mutex_unlock(&compact_mu);
	if (join)
		pthread_join(st->cq_tid, NULL);
}

int
store_compact_pending(struct store *st)
{
	pthread_mutex_lock(&st->cq_mu);
	int n = (int)st->cq_n + st->cq_thread;
	pthread_mutex_unlock(&st->cq_mu);
	return n;
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
		st->dig_fd[disk] = open(p, O_WRONLY | O_CREAT | O_CLOEXEC |
		    O_NOFOLLOW, 0600);
		if (st->dig_fd[disk] < 0) {
			snprintf(err, errsz, "cannot open %s: %s", p,
			    open_error());
			free(p);
			return RD_ERR_SYSTEM;
		}
		free(p);
	}
	/* The blocks' lengths are the cycle's (the new size). */
	uint64_t size = st->active ? st->cur.sizes[disk] :
	    st->rel.disks[disk].size;
	uint8_t *recs = xmalloc(n * DIGEST_LEN);
	for (size_t i = 0; i < n; i++) {
		uint64_t at = off + i * bs;
		size_t len = at < size && size - at < bs ? (size_t)(size - at) :
		    bs;
		to_record(st, &d[i], len, recs + i * DIGEST_LEN);
	}
	int r = put_records(st->dig_fd[disk], off / bs, recs, n);
	free(recs);
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
	/* Before the first point nothing recorded is known to be true (a
	 * resync cut off may have left a few records). */
	if (st->rel.last_point == 0)
		return 0;
	char *p = disk_path(st, st->digest_dir, disk);
	int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	free(p);
	if (fd < 0)
		return 0;		/* none recorded: all unknown */
	ssize_t got = pread(fd, d, n * sizeof(*d), (off_t)(off / bs *
	    DIGEST_LEN));
	close(fd);
	if (got < 0)
		got = 0;
	size_t have = (size_t)got / DIGEST_LEN;
	store_records_expand(d, have, off, bs, st->rel.disks[disk].size);
	memset(d + have, 0, (n - have) * sizeof(*d));	/* unknown */
	return 0;
}

void
store_records_expand(struct digest *d, size_t n, uint64_t off, uint32_t bs,
    uint64_t size)
{
	struct digest zero;
	int have_zero = 0;

	/* A zero record is a block of zeros at the newest point's size. */
	for (size_t i = 0; i < n; i++) {
		uint64_t at = off + i * bs;
		if (at >= size || !util_is_zero(d[i].b, DIGEST_LEN))
			continue;
		uint32_t len = size - at < bs ? (uint32_t)(size - at) : bs;
		if (len == bs && have_zero) {
			d[i] = zero;
			continue;
		}
		uint8_t *z = xcalloc(1, len);
		digest_block(z, len, &d[i]);
		free(z);
		if (len == bs) {
			zero = d[i];
			have_zero = 1;
		}
	}
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
	} else {
		st->repaired[disk] = 1;
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
	/* An index of an earlier, abandoned cycle must be gone for good
	 * before this one writes anything: one brought back by a crash
	 * (its removal not synced) would have recovery check it against
	 * this cycle's data and direct writes, and finish a mix.  So must
	 * its definition (drop_index syncs the directory). */
	/* Only what was there needs syncing: an applied cycle's staging,
	 * removed unsynced, names the newest point's cycle (remove_staging),
	 * and every other removal was synced. */
	char *def = def_path(st);
	forget_def(st);
	int had_def = unlink(def) == 0;
	r = had_def || errno == ENOENT ? drop_index(st) : RD_ERR_SYSTEM;
	if (r == 0 && had_def)
		r = util_fsync_dir(st->staging);
	free(def);
	if (r != 0) {
		snprintf(err, errsz, "cannot clear %s: %s", st->staging,
		    strerror(errno));
		return io_code(RD_ERR_SYSTEM);
	}
	/* .staging/data is made by the first block staged, index.tmp by
	 * the first extent: a cycle that changes nothing needs neither. */
	st->data_fd = -1;
	st->ix_fd = -1;
	st->ix_off = 0;
	st->cur = *c;
	memset(st->unsynced, 0, sizeof(st->unsynced));
	memset(st->repaired, 0, sizeof(st->repaired));
	st->data_off = 0;
	st->nrec = 0;
	st->raw_bytes = 0;
	st->need = 0;
	wb_reset(&st->recs);
	undo_discard(st->uw);
	st->uw = NULL;
	st->uw_used = 0;
	st->uq_head = st->uq_n = 0;
	st->active = 1;
	return 0;
}

/*
 * Start writing back what a cycle wrote into the images so far without
 * waiting for it: the images' fsync then finds little left to do, and
 * the disk works while the network does.  (Not the staged data: it is
 * never synced, and a small cycle's is removed before it is written.)
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

/* Save the oldest queued range's old content into the cycle's undo
 * segment. */
static int
undo_pop(struct store *st)
{
	struct undo_range *u = &st->uq[st->uq_head];
	st->uq_head = (st->uq_head + 1) % UNDO_LAG;
	st->uq_n--;
	return undo_save_range(st->uw, u->disk, st->img[u->disk], u->off,
	    u->len);
}

/*
 * On storage that clones, the old content [off, off + len) of disk (below
 * its old size) goes into the undo segment while the cycle arrives: read
 * ahead now, cloned (and hashed) UNDO_LAG ranges later.  Nothing writes
 * the images below their old sizes before the apply, so what is saved is
 * the point before the cycle.  The segment is finished (synced, in
 * place) before the index: a crash before that removes its .tmp, one
 * after it rolls back with it, which changes nothing then.
 */
static int
undo_early(struct store *st, uint16_t disk, uint64_t off, uint64_t len,
    char *err, size_t errsz)
{
	uint64_t old = st->rel.disks[disk].size;
	int r;

	if (st->undo_clone != UNDO_CLONE_RAW || off >= old)
		return 0;
	if (len > old - off)
		len = old - off;
	if (st->uw == NULL) {
		char *upath = undo_path(st, st->cur.cycle);
		uint64_t sizes[CAT_MAX_DISKS];
		for (uint16_t i = 0; i < st->cur.ndisks; i++)
			sizes[i] = st->rel.disks[i].size;
		r = undo_create(upath, st->cur.cycle, st->cur.ndisks, sizes,
		    &st->uw);
		if (r != 0) {
			snprintf(err, errsz, "cannot create undo segment %s: "
			    "%s", upath, open_error());
			free(upath);
			return io_code(r);
		}
		free(upath);
		undo_set_clone(st->uw, UNDO_CLONE_ALL);
		st->uw_used = 1;
	}
	posix_fadvise(st->img[disk], (off_t)off, (off_t)len,
	    POSIX_FADV_WILLNEED);
	if (st->uq_n == UNDO_LAG && (r = undo_pop(st)) != 0)
		goto fail;
	struct undo_range *u = &st->uq[(st->uq_head + st->uq_n) % UNDO_LAG];
	u->disk = disk;
	u->off = off;
	u->len = len;
	st->uq_n++;
	return 0;
fail:
	snprintf(err, errsz, "cannot save undo data: %s", r == RD_ERR_SYSTEM ?
	    strerror(errno) : rd_strerror(r));
	return io_code(r);
}

/* The rest of the queue, then the segment made durable in place. */
static int
undo_early_finish(struct store *st, char *err, size_t errsz)
{
	uint64_t bytes;
	int r = 0;

	if (st->uw == NULL)
		return 0;
	while (st->uq_n > 0 && (r = undo_pop(st)) == 0)
		;
	if (r == 0) {
		r = undo_finish(st->uw, &bytes);
	} else {
		int saved = errno;
		undo_discard(st->uw);
		errno = saved;
	}
	st->uw = NULL;
	st->uq_n = 0;
	if (r != 0) {
		snprintf(err, errsz, "cannot write the undo segment: %s",
		    r == RD_ERR_SYSTEM ? strerror(errno) : rd_strerror(r));
		return io_code(r);
	}
	return 0;
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
	/* An all-zero record means a block of zeros (the format above): a
	 * block of data whose XXH3-128 is all zeros (a hostile sender can
	 * solve for one: XXH3 is not a cryptographic hash) would be recorded
	 * as zeros, and verify and resync repairs would take the image for
	 * damaged.  An honest sender meets one with a chance of 2^-128. */
	if (data != NULL && hash != NULL &&
	    util_is_zero(hash->b, DIGEST_LEN) && !util_is_zero(data, len)) {
		snprintf(err, errsz, "disk %s offset %" PRIu64 ": a block of "
		    "data whose hash is all zeros (refused: its record would "
		    "read as a block of zeros)", st->rel.disks[disk].name, off);
		return RD_ERR_HASH;
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
		if (st->data_fd < 0) {
			char *p = xasprintf("%s/data", st->staging);
			st->data_fd = open(p, O_RDWR | O_CREAT | O_TRUNC |
			    O_CLOEXEC | O_NOFOLLOW, 0600);
			if (st->data_fd < 0) {
				snprintf(err, errsz, "cannot create %s: %s", p,
				    open_error());
				free(p);
				return io_code(RD_ERR_SYSTEM);
			}
			free(p);
		}
		r = util_pwrite_full(st->data_fd, data, len, (off_t)data_off);
		if (r != 0) {
			snprintf(err, errsz, "staging write: %s",
			    strerror(errno));
			return errno == ENOSPC ? RD_ERR_NOSPACE : r;
		}
		st->data_off += len;
	}
	if (where != WHERE_DIRECT && (r = undo_early(st, disk, off, len, err,
	    errsz)) != 0)
		return r;
	if (st->ix_fd < 0 && (r = index_start(st, err, errsz)) != 0)
		return r;
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
	if (st->recs.len >= STAGE_WINDOW && (r = index_flush(st)) != 0) {
		snprintf(err, errsz, "staging index write: %s",
		    strerror(errno));
		return io_code(r);
	}
	/* What applying it may take: a staged block's undo copy, its place
	 * in the image and its digest record; a block past the old size, in
	 * the image already, its record; a zero extent, at most the undo copy
	 * of what it clears below the old size (its records are holes). */
	uint64_t old = st->rel.disks[disk].size;
	if (where == WHERE_STAGED)
		st->need += 2 * (uint64_t)len + DIGEST_LEN;
	else if (where == WHERE_DIRECT)
		st->need += DIGEST_LEN;
	else if (off < old)
		st->need += old - off < len ? old - off : len;
	if (st->nrec == 8)
		fault_point("replica-staging");
	return 0;
}

int
store_cycle_definition(struct store *st, const char *xml, size_t len,
    char *err, size_t errsz)
{
	if (!st->active || len == 0 || len > CAT_MAX_DEFINITION ||
	    memchr(xml, '\0', len) != NULL) {
		snprintf(err, errsz, "definition out of place or invalid");
		return RD_ERR_INVALID;
	}
	forget_def(st);
	st->def = xmalloc(len);
	memcpy(st->def, xml, len);
	st->def_len = len;
	return 0;
}

void
store_cycle_abort(struct store *st)
{
	close_digest_fds(st);
	forget_def(st);
	undo_discard(st->uw);
	st->uw = NULL;
	st->uq_n = 0;
	if (st->uw_used) {
		/* Finished before a failure that kept the index from being
		 * made: it must not outlive the cycle (roll_back_orphans()
		 * would write it back over whatever the images hold then).
		 * Nothing below the old sizes was written yet. */
		char *up = undo_path(st, st->cur.cycle);
		if (unlink(up) == 0)
			util_fsync_dir(st->undo_dir);
		free(up);
		st->uw_used = 0;
	}
	if (!st->active)
		return;
	if (st->data_fd >= 0)
		close(st->data_fd);
	st->data_fd = -1;
	if (st->ix_fd >= 0)
		close(st->ix_fd);
	st->ix_fd = -1;
	st->active = 0;
	remove_staging(st, 1);
	pthread_mutex_lock(&st->lock);
	int r = trim_images(st);
	pthread_mutex_unlock(&st->lock);
	if (r != 0) {
		/* Blocks past the old sizes may remain: cut them before
		 * anything else uses the images. */
		log_warn("%s: cannot cut images back after an abandoned cycle",
		    st->rel.vm);
		pthread_mutex_lock(&st->fix_lock);
		st->unfinished = 1;
		pthread_mutex_unlock(&st->fix_lock);
	}
}

/* --- applying ------------------------------------------------------------ */

/*
 * Record the digest of every block of each extent in .digests/DISK: the
 * hash of a data block, a hole for a zero extent (punched where an older
 * point had data), so that only data blocks cost space.
 */
static int
write_digests(struct store *st, const struct stage_index *ix)
{
	uint32_t bs = ix->block_size;
	int fds[CAT_MAX_DISKS], touched[CAT_MAX_DISKS], created = 0, r = 0;
	struct wbuf run;
	uint16_t run_disk = 0;
	uint64_t run_block = 0;

	wb_init(&run);
	for (uint16_t i = 0; i < ix->c.ndisks; i++) {
		fds[i] = -1;
		touched[i] = 0;
	}
	for (uint16_t i = 0; i < ix->c.ndisks; i++) {
		char *p = disk_path(st, st->digest_dir, i);
		struct stat sb;
		off_t want = (off_t)(nblocks_of(ix->c.sizes[i], bs) *
		    DIGEST_LEN);
		fds[i] = open(p, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		if (fds[i] < 0 && errno == ENOENT) {
			fds[i] = open(p, O_RDWR | O_CREAT | O_CLOEXEC |
			    O_NOFOLLOW, 0600);
			created = touched[i] = 1;
		}
		free(p);
		if (fds[i] < 0 || fstat(fds[i], &sb) != 0) {
			r = RD_ERR_SYSTEM;
			goto out;
		}
		if (sb.st_size != want) {
			touched[i] = 1;
			if (ftruncate(fds[i], want) != 0) {
				r = RD_ERR_SYSTEM;
				goto out;
			}
		}
	}
	/* Extents arrive in disk and offset order: write each run of
	 * consecutive data blocks' records at once. */
	struct stage_iter it;
	struct stage_rec one_rec;
	const struct stage_rec *rec = &one_rec;
	int got = 0;
	ix_begin(&it, ix);
	while (r == 0 && (got = ix_next(&it, &one_rec)) > 0) {
		uint64_t first = rec->off / bs;
		uint64_t nb = nblocks_of(rec->len, bs);
		touched[rec->disk] = 1;
		if (run.len > 0 && (rec->where == WHERE_ZERO ||
		    rec->disk != run_disk || first != run_block +
		    run.len / DIGEST_LEN || run.len >= (1u << 20))) {
			r = put_records(fds[run_disk], run_block, run.p,
			    run.len / DIGEST_LEN);
			wb_reset(&run);
		}
		if (r != 0)
			break;
		if (rec->where == WHERE_ZERO) {
			r = clear_range(fds[rec->disk], first * DIGEST_LEN,
			    nb * DIGEST_LEN);
			continue;
		}
		if (run.len == 0) {
			run_disk = rec->disk;
			run_block = first;
		}
		/* A data extent is one block (or a disk's short last one). */
		uint8_t one[DIGEST_LEN];
		to_record(st, &rec->hash, rec->len < bs ? rec->len : bs, one);
		for (uint64_t b = 0; b < nb; b++)
			wb_put_bytes(&run, one, DIGEST_LEN);
	}
	ix_end(&it);
	if (r == 0 && got < 0) {
		r = got;
		if (r != RD_ERR_SYSTEM)
			errno = EIO;
	}
	if (r == 0 && run.len > 0)
		r = put_records(fds[run_disk], run_block, run.p,
		    run.len / DIGEST_LEN);
	if (r != 0)
		goto out;
	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		if (touched[i] && fdatasync(fds[i]) != 0) {
			r = RD_ERR_SYSTEM;
			goto out;
		}
	if (created)
		r = util_fsync_dir(st->digest_dir);
out:
	wb_free(&run);
	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return r;
}

/*
 * Every staged block still matches its hash (checked before the image
 * is touched: staging may have been damaged while the host was down).
 * With direct, so does every block the cycle wrote straight into the
 * images past their old sizes: a cycle finished at recovery must not
 * trust them (a roll-back or an I/O error may have lost them since the
 * index was written); a mismatch drops the cycle, and the primary sends
 * it again.
 */
static int
check_rec(struct store *st, const struct stage_index *ix,
    const struct stage_rec *rec, int data_fd, uint8_t *buf, int direct,
    char *err, size_t errsz)
{
	struct digest d;
	if (rec->where == WHERE_DIRECT && direct) {
		if (rec->len > IO_CHUNK || util_pread_full(
		    st->img[rec->disk], buf, rec->len,
		    (off_t)rec->off) != 0) {
			snprintf(err, errsz, "%s lost the blocks cycle %"
			    PRIu64 " wrote past its old size (offset %"
			    PRIu64 ")", st->rel.disks[rec->disk].name,
			    ix->c.cycle, rec->off);
			return RD_ERR_CORRUPT;
		}
		digest_block(buf, rec->len, &d);
		if (!digest_equal(&d, &rec->hash)) {
			snprintf(err, errsz, "the block at offset %"
			    PRIu64 " of %s, written past its old size by "
			    "cycle %" PRIu64 ", no longer matches its "
			    "hash", rec->off,
			    st->rel.disks[rec->disk].name, ix->c.cycle);
			return RD_ERR_HASH;
		}
		return 0;
	}
	if (rec->where != WHERE_STAGED)
		return 0;
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
	return 0;
}

static int
check_staged(struct store *st, const struct stage_index *ix, int data_fd,
    uint8_t *buf, int direct, char *err, size_t errsz)
{
	struct stage_iter it;
	struct stage_rec rec;
	int r = 0, got;

	ix_begin(&it, ix);
	while ((got = ix_next(&it, &rec)) > 0 &&
	    (r = check_rec(st, ix, &rec, data_fd, buf, direct, err,
	    errsz)) == 0)
		;
	ix_end(&it);
	if (r == 0 && got < 0) {
		snprintf(err, errsz, "the staged index of cycle %" PRIu64
		    " cannot be read back", ix->c.cycle);
		r = RD_ERR_CORRUPT;
	}
	return r;
}

/*
 * The staged cycle is no longer one to finish: its index goes, durably.
 * A roll-back does this first, because it cuts off the blocks the cycle
 * wrote straight past the old sizes: an index left behind would have
 * recovery "finish" the cycle without them (a point whose grown region
 * is wrong).  Once it is gone, recovery redoes an interrupted or failed
 * roll-back from the undo segment (roll_back_orphans, trim_images).
 */
static int
drop_index(struct store *st)
{
	char *ix = xasprintf("%s/index", st->staging);
	int r = unlink(ix) == 0 ? 1 : errno == ENOENT ? 0 : RD_ERR_SYSTEM;
	if (r == 1)
		r = util_fsync_dir(st->staging);
	free(ix);
	return r;
}

/*
 * Take the images back to the newest point after a failed apply: the
 * complete undo segment restores what was overwritten (and the sizes);
 * without one nothing below the old sizes was touched.  Then the cycle
 * is dropped.  Called with st->lock held.  If this fails, the images are
 * between two points until recover() (the caller marks the store
 * unfinished) or the next start rolls back again.
 */
static int
rollback(struct store *st, const struct stage_index *ix, const char *upath)
{
	struct stat sb;
	int r;

	if ((r = drop_index(st)) != 0)
		return r;	/* still to be finished: the images untouched */
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
	remove_staging(st, 1);
	util_fsync_dir(st->undo_dir);
	log_warnx("%s: cycle %" PRIu64 " rolled back; the replica stays at "
	    "point %" PRIu64, st->rel.vm, ix->c.cycle, st->rel.last_point);
	return 0;
}

/*
 * The definition staged with the cycle (.staging/definition): *def NULL
 * if it carries none.  One that cannot be read back whole (damaged while
 * the host was down) is left out rather than holding up the point: the
 * cycle was never acknowledged, so the primary sends it again with its
 * next cycle.
 */
static void
staged_def(struct store *st, uint64_t cycle, uint8_t **def, size_t *len)
{
	char *p = def_path(st);
	int r;

	*def = NULL;
	*len = 0;
	r = util_read_file(p, CAT_MAX_DEFINITION, def, len);
	if (r == 0 && (*len == 0 || memchr(*def, '\0', *len) != NULL))
		r = RD_ERR_CORRUPT;
	if (r != 0 && r != RD_ERR_NOT_FOUND)
		log_warnx("%s: the VM's definition staged with cycle %" PRIu64
		    " is unreadable (%s: %s); its point keeps the previous "
		    "one", st->rel.vm, cycle, p, r == RD_ERR_SYSTEM ?
		    strerror(errno) : rd_strerror(r));
	if (r != 0) {
		free(*def);
		*def = NULL;
		*len = 0;
	}
	free(p);
}

/*
 * Whether the images hold every extent of the cycle and its sizes (the
 * apply of a cycle whose staged data is gone was complete).
 */
static int
images_hold(struct store *st, const struct stage_index *ix, uint8_t *buf)
{
	struct stage_iter it;
	struct stage_rec rec;
	struct digest d;
	struct stat sb;
	int got, yes = 1;

	for (uint16_t i = 0; i < ix->c.ndisks; i++)
		if (fstat(st->img[i], &sb) != 0 ||
		    (uint64_t)sb.st_size != ix->c.sizes[i])
			return 0;
	ix_begin(&it, ix);
	while (yes && (got = ix_next(&it, &rec)) > 0) {
		if (rec.where == WHERE_ZERO) {
			for (uint64_t o = 0; yes && o < rec.len; o += IO_CHUNK) {
				size_t n = rec.len - o < IO_CHUNK ?
				    (size_t)(rec.len - o) : IO_CHUNK;
				yes = util_pread_holes(st->img[rec.disk], buf, n,
				    (off_t)(rec.off + o)) == 0 &&
				    util_is_zero(buf, n);
			}
		} else if (rec.len > IO_CHUNK || util_pread_holes(
		    st->img[rec.disk], buf, rec.len, (off_t)rec.off) != 0) {
			yes = 0;
		} else {
			digest_block(buf, rec.len, &d);
			yes = digest_equal(&d, &rec.hash);
		}
	}
	ix_end(&it);
	return yes && got == 0;
}

/*
 * Record cycle c as a new point (*out filled but for its id) in one
 * catalog transaction, with def (may be NULL: the previous point's).
 * A cycle recorded already (recovery finishing it again) gives its point.
 */
static int
record_point(struct store *st, const struct store_cycle *c,
    struct cat_point *out, const char *def, size_t def_len)
{
	int r;

	if (st->unrecorded) {
		struct cat_rel rel;
		store_rel(st, &rel);
		r = cat_point_commit_new(st->cat, &rel, out, def, def_len);
	} else {
		r = cat_point_commit(st->cat, st->rel.vm, out, def, def_len);
	}
	if (r == RD_ERR_EXISTS)
		r = cat_point_by_cycle(st->cat, st->rel.vm, c->cycle, out);
	return r;
}

/* The catalog recorded cycle c as point out: the store's view follows. */
static void
point_recorded(struct store *st, const struct store_cycle *c,
    const struct cat_point *out)
{
	pthread_mutex_lock(&st->rel_lock);
	st->rel.last_cycle = c->cycle;
	st->rel.last_point = out->id;
	st->rel.last_point_created_ms = c->created_ms;
	if (c->generation >= st->rel.generation)
		st->rel.reassigned = 0;	/* the new sender's first point */
	st->rel.generation = c->generation > st->rel.generation ?
	    c->generation : st->rel.generation;
	for (uint16_t i = 0; i < c->ndisks; i++)
		st->rel.disks[i].size = c->sizes[i];
	int was_new = st->unrecorded;
	st->unrecorded = 0;
	pthread_mutex_unlock(&st->rel_lock);
	if (was_new) {
		/* Recorded: the marker goes (start-up removes it if not). */
		char *nm = xasprintf("%s/%s", st->dir, NEW_MARK);
		if (unlink(nm) != 0 && errno != ENOENT)
			log_warn("%s: cannot remove %s", st->rel.vm, nm);
		util_fsync_dir(st->dir);
		free(nm);
	}
}

/* The point a cycle makes, as far as the cycle itself says. */
static void
point_of(const struct store_cycle *c, struct cat_point *out)
{
	memset(out, 0, sizeof(*out));
	out->cycle = c->cycle;
	out->created_ms = c->created_ms;
	out->kind = c->kind ? CAT_KIND_APP : CAT_KIND_CRASH;
	out->generation = c->generation;
	out->ndisks = c->ndisks;
	memcpy(out->sizes, c->sizes, c->ndisks * sizeof(uint64_t));
}

/*
 * Apply a complete staged cycle: undo segment (unless a complete one
 * exists from an interrupted attempt), image writes, sizes, fsync,
 * catalog, digests, staging removal.  Idempotent from any crash point.
 * recovering: the cycle was staged before a restart or a failure, so
 * the blocks it wrote into the images are checked first.
 */
static int
apply_index(struct store *st, const struct stage_index *ix, int recovering,
    struct cat_point *out, int *rolled_back, char *err, size_t errsz)
{
	char *upath = undo_path(st, ix->c.cycle), *data_path = NULL;
	uint8_t *buf = NULL, *def = NULL;
	size_t def_len = 0;
	uint64_t undo_bytes = 0;
	int data_fd = -1, r = 0, got = 0, may_roll_back = 0, fast = 0;
	int wrote[CAT_MAX_DISKS] = { 0 };
	struct stage_iter it;
	struct stage_rec rec;
	struct stat sb;

	*rolled_back = 0;
	pthread_mutex_lock(&st->lock);
	uint64_t t_start = util_mono_ms(), t_undo = t_start, t_sync = t_start;
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
	buf = xmalloc(IO_CHUNK);
	data_fd = open(data_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	may_roll_back = 1;
	/* Staged data this run wrote was checked as it arrived, and the
	 * apply below checks each block again before it writes it (a
	 * mismatch there rolls back): only recovery checks it all first. */
	if (recovering && (r = check_staged(st, ix, data_fd, buf, recovering,
	    err, errsz)) != 0) {
		/* Staged data damaged after the images were written (a crash
		 * before the catalog): if the images hold the whole cycle,
		 * it needs no staged data; else it is rolled back. */
		if (!recovering || stat(upath, &sb) != 0 ||
		    !images_hold(st, ix, buf))
			goto out;
		log_warnx("%s: %s, but the images hold cycle %" PRIu64
		    " already: recording it", st->rel.vm, err, ix->c.cycle);
		undo_bytes = (uint64_t)sb.st_size;
		for (uint16_t i = 0; i < ix->c.ndisks; i++)
			wrote[i] = 1;
		r = 0;
		goto sync;
	}

	/* 1. undo: the old content of everything the cycle overwrites */
	if (stat(upath, &sb) != 0) {
		struct undo_writer *w;
		if ((r = undo_create(upath, ix->c.cycle, ix->c.ndisks,
		    ix->old_sizes, &w)) != 0) {
			r = io_code(r);
			snprintf(err, errsz, "cannot create undo segment %s: %s",
			    upath, open_error());
			goto out;
		}
		/* Where the storage clones, everything is cloned and a
		 * thread compresses the segment afterwards: the cycle waits
		 * for no compression (undo_early() does the same as the
		 * cycle arrives; this is recovery's or an older path). */
		undo_set_clone(w, st->undo_clone == UNDO_CLONE_RAW &&
		    !recovering ? UNDO_CLONE_ALL : st->undo_clone);
		ix_begin(&it, ix);
		while ((got = ix_next(&it, &rec)) > 0) {
			if (rec.where == WHERE_DIRECT)
				continue;
			if ((r = undo_save_range(w, rec.disk,
			    st->img[rec.disk], rec.off, rec.len)) != 0)
				break;
		}
		ix_end(&it);
		if (r == 0 && got < 0) {
			r = got;
			if (r != RD_ERR_SYSTEM)
				errno = EIO;
		}
		if (r != 0) {
			r = io_code(r);
			snprintf(err, errsz, "cannot save undo data: %s",
			    strerror(errno));
			undo_discard(w);
			goto out;
		}
		if ((r = undo_finish(w, &undo_bytes)) != 0) {
			r = io_code(r);
			snprintf(err, errsz, "cannot write undo segment %s: %s",
			    upath, strerror(errno));
			goto out;
		}
	} else {
		/* Saved as the cycle arrived (undo_early()), or by an apply
		 * a crash interrupted. */
		undo_bytes = (uint64_t)sb.st_size;
	}
	/* Cloned whole: compacted once recorded (not by recovery, which
	 * runs before the store is open: the segment stays as it is). */
	fast = st->undo_clone == UNDO_CLONE_RAW && !recovering;
	fault_point("replica-after-undo");
	t_undo = util_mono_ms();

	/* 2. the new content */
	ix_begin(&it, ix);
	for (uint64_t k = 0; (got = ix_next(&it, &rec)) > 0; k++) {
		int fd = st->img[rec.disk];
		if (rec.where == WHERE_ZERO) {
			r = punch_zero(fd, rec.off, rec.len);
		} else if (rec.where == WHERE_STAGED) {
			if (data_fd < 0 || rec.len > IO_CHUNK) {
				r = RD_ERR_CORRUPT;
			} else if ((r = util_pread_full(data_fd, buf, rec.len,
			    (off_t)rec.data_off)) == 0) {
				struct digest d;
				digest_block(buf, rec.len, &d);
				if (!digest_equal(&d, &rec.hash))
					r = RD_ERR_HASH;
				else
					r = util_pwrite_full(fd, buf, rec.len,
					    (off_t)rec.off);
			}
		}
		if (k == ix->nrec / 2)
			fault_point("replica-mid-apply");
		if (r != 0) {
			snprintf(err, errsz, "applying cycle %" PRIu64 " to %s: "
			    "%s", ix->c.cycle, st->rel.disks[rec.disk].name,
			    r == RD_ERR_SYSTEM ? strerror(errno) :
			    rd_strerror(r));
			r = io_code(r);
			break;
		}
		if (rec.where != WHERE_DIRECT)
			wrote[rec.disk] = 1;
	}
	ix_end(&it);
	if (r == 0 && got < 0) {
		snprintf(err, errsz, "the staged index of cycle %" PRIu64
		    " cannot be read back", ix->c.cycle);
		r = RD_ERR_CORRUPT;
	}
	if (r != 0)
		goto out;
	/* Synced: every image this cycle wrote below its old size or
	 * resized (what it wrote past the old size was synced with the
	 * staged data). */
sync:
	for (uint16_t i = 0; i < ix->c.ndisks; i++) {
		if (ix->c.sizes[i] != ix->old_sizes[i])
			wrote[i] = 1;
		if (!wrote[i])
			continue;
		if (ftruncate(st->img[i], (off_t)ix->c.sizes[i]) != 0 ||
		    fsync(st->img[i]) != 0) {
			r = io_code(RD_ERR_SYSTEM);
			snprintf(err, errsz, "cannot sync %s: %s",
			    st->rel.disks[i].name, strerror(errno));
			goto out;
		}
	}

	t_sync = util_mono_ms();
	/* 3. the catalog: from here the point may exist (a commit that
	 * reports a failure may still have been made durable), and a
	 * failure is finished later (rolled forward), not rolled back. */
	fault_point("replica-before-catalog");
	may_roll_back = 0;
	point_of(&ix->c, out);
	out->undo_bytes = undo_bytes;
	out->bytes = ix->bytes;
	staged_def(st, ix->c.cycle, &def, &def_len);
	if ((r = record_point(st, &ix->c, out, (char *)def, def_len)) != 0) {
		snprintf(err, errsz, "cannot record the point: %s",
		    rd_strerror(r));
		goto out;
	}
	fault_point("replica-after-catalog");
	point_recorded(st, &ix->c, out);
	/* 4. the digests: a crash before they are synced finds the index
	 * of the newest point's cycle, and recovery writes them again. */
	if ((r = write_digests(st, ix)) != 0) {
		r = io_code(r);
		snprintf(err, errsz, "cannot write digests: %s",
		    strerror(errno));
		goto out;
	}
	fault_point("replica-after-digests");
	log_debug("%s: cycle %" PRIu64 " applied: undo %" PRIu64 " ms, "
	    "images written and synced %" PRIu64 " ms, point and digests %"
	    PRIu64 " ms", st->rel.vm, ix->c.cycle, t_undo - t_start,
	    t_sync - t_undo, util_mono_ms() - t_sync);
	remove_staging(st, 0);
	if (fast)
		compact_later(st, ix->c.cycle);
	r = 0;
out:
	if (r != 0 && may_roll_back) {
		char why[256];
		snprintf(why, sizeof(why), "%s", rd_strerror(r));
		if (rollback(st, ix, upath) == 0)
			*rolled_back = 1;
		else
			log_warn("%s: cannot roll back cycle %" PRIu64 " (%s); "
			    "it is done again before anything else uses the "
			    "replica, or at the next start", st->rel.vm,
			    ix->c.cycle, why);
	}
	pthread_mutex_unlock(&st->lock);
	if (data_fd >= 0)
		close(data_fd);
	free(def);
	free(buf);
	free(data_path);
	free(upath);
	return r;
}

/* A cycle that changes nothing: no block, no disk grew, and no digests
 * recorded by a resync (those need the digest files made whole, as an
 * apply does). */
static int
cycle_is_empty(const struct store *st)
{
	if (st->nrec != 0)
		return 0;
	for (uint16_t i = 0; i < st->cur.ndisks; i++)
		if (st->cur.sizes[i] != st->rel.disks[i].size ||
		    st->dig_fd[i] >= 0)
			return 0;
	return 1;
}

/*
 * An empty cycle's point: the images already are it, so it needs no
 * staging, no undo segment (the catalog records none: CAT_SEG_NONE, and
 * every reader of segments steps over such a point, whose content is the
 * point before it) and no digests; one catalog transaction, with the
 * definition the cycle carries, makes it durable.
 */
static int
commit_empty(struct store *st, struct cat_point *out, char *err, size_t errsz)
{
	int r;

	st->active = 0;
	if (st->data_fd >= 0)
		close(st->data_fd);
	st->data_fd = -1;
	point_of(&st->cur, out);
	out->seg = CAT_SEG_NONE;
	pthread_mutex_lock(&st->lock);
	fault_point("replica-before-catalog");
	r = record_point(st, &st->cur, out, st->def, st->def_len);
	if (r == 0) {
		fault_point("replica-after-catalog");
		point_recorded(st, &st->cur, out);
	}
	pthread_mutex_unlock(&st->lock);
	forget_def(st);
	if (r != 0) {
		snprintf(err, errsz, "cannot record the point: %s",
		    rd_strerror(r));
	}
	return r;
}

int
store_cycle_commit(struct store *st, struct cat_point *out, char *err,
    size_t errsz)
{
	struct stage_index ix;
	char *path = NULL, *tmp = NULL;
	int r;

	if (!st->active)
		return RD_ERR_STATE;
	if ((st->def != NULL && (r = def_room(st, err, errsz)) != 0) ||
	    (r = make_room(st, st->need, err, errsz)) != 0) {
		store_cycle_abort(st);
		return r;
	}
	/* Repairs made in place are part of the point the ACK promises, and
	 * neither path below syncs an image no index record names. */
	for (uint16_t i = 0; i < st->rel.ndisks; i++) {
		if (!st->repaired[i])
			continue;
		if (fsync(st->img[i]) != 0) {
			r = io_code(RD_ERR_SYSTEM);
			snprintf(err, errsz, "cannot sync the repairs of %s: %s",
			    st->rel.disks[i].name, strerror(errno));
			store_cycle_abort(st);
			return r;
		}
		st->repaired[i] = 0;
	}
	int empty = cycle_is_empty(st);
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		if (st->dig_fd[i] >= 0 && fsync(st->dig_fd[i]) != 0)
			log_warn("%s: fsync of the digests of disk %d", st->rel.vm,
			    i);
	close_digest_fds(st);
	if (empty)
		return commit_empty(st, out, err, errsz);
	uint64_t t0 = util_mono_ms();
	/*
	 * The staged data and the blocks written past the old sizes are not
	 * synced: nothing needs them durable.  Until the undo segment is
	 * durable no image block below the old sizes is touched; from then
	 * on a crash rolls back with it whenever recovery finds a staged or
	 * direct block that does not match its hash (or no index at all);
	 * once the images are synced they hold the cycle (images_hold()).
	 * A cycle is acknowledged only once recorded.  So a small cycle's
	 * staged data is usually never written to disk at all.
	 */
	if (st->data_fd >= 0)
		close(st->data_fd);
	st->data_fd = -1;
	st->active = 0;

	/* Durable before the index: a cycle finished after a crash records
	 * it too. */
	if (st->def != NULL) {
		char *dp = def_path(st);
		if ((r = util_write_atomic(dp, st->def, st->def_len)) != 0) {
			r = io_code(r);
			snprintf(err, errsz, "cannot write %s: %s", dp,
			    strerror(errno));
		}
		free(dp);
		forget_def(st);
		if (r != 0) {
			st->active = 1;		/* so that abort cleans up */
			store_cycle_abort(st);
			return r;
		}
	}

	/* The undo segment saved as the cycle arrived, in place before the
	 * index names the cycle complete (apply_index() finds it). */
	if ((r = undo_early_finish(st, err, errsz)) != 0) {
		st->active = 1;		/* so that abort cleans up */
		store_cycle_abort(st);
		return r;
	}
	fault_point("replica-undo-before-index");
	/* The index: its last records and trailer, synced, renamed into
	 * place and the rename synced. */
	path = xasprintf("%s/index", st->staging);
	tmp = xasprintf("%s.tmp", path);
	if ((st->ix_fd < 0 && (r = index_start(st, err, errsz)) != 0) ||
	    (r = index_finish(st)) != 0 || (r = fdatasync(st->ix_fd) != 0 ||
	    rename(tmp, path) != 0 || util_fsync_dir(st->staging) != 0 ?
	    RD_ERR_SYSTEM : 0) != 0) {
		r = io_code(r);
		snprintf(err, errsz, "cannot write %s: %s", path,
		    strerror(errno));
		st->active = 1;		/* so that abort cleans up */
		store_cycle_abort(st);
		goto out;
	}
	close(st->ix_fd);
	st->ix_fd = -1;
	st->uw_used = 0;	/* the staged cycle's now: recovery's to use */
	fault_point("replica-after-index");
	/* Apply from the index read back: the same path recovery takes. */
	if ((r = index_open(path, &ix)) != 0) {
		snprintf(err, errsz, "the staged index %s does not read back: "
		    "%s", path, r == RD_ERR_SYSTEM ? strerror(errno) :
		    rd_strerror(r));
		pthread_mutex_lock(&st->fix_lock);
		st->unfinished = 1;	/* recovery finishes or drops it */
		pthread_mutex_unlock(&st->fix_lock);
		goto out;
	}
	uint64_t t1 = util_mono_ms();
	int rolled_back;
	r = apply_index(st, &ix, 0, out, &rolled_back, err, errsz);
	log_debug("%s: cycle %" PRIu64 ": %" PRIu64 " ms to make the staged "
	    "cycle durable, %" PRIu64 " ms to apply it", st->rel.vm,
	    ix.c.cycle, t1 - t0, util_mono_ms() - t1);
	close(ix.fd);
	if (r != 0 && !rolled_back) {
		/* Neither finished nor undone: the image is between two
		 * points.  Finish it before anything else touches it. */
		pthread_mutex_lock(&st->fix_lock);
		st->unfinished = 1;
		pthread_mutex_unlock(&st->fix_lock);
	}
out:
	free(path);
	free(tmp);
	return r;
}

/* --- test failover ------------------------------------------------------- */

/* A test copy is a long job (work.h): it stops at shutdown between pieces
 * of at most COPY_PIECE bytes. */
#define COPY_PIECE	(64u << 20)

static int
copy_range(int src, int dst, uint64_t off, uint64_t len)
{
	while (len > 0) {
		if (work_cancelled())
			return RD_ERR_CANCELLED;
		loff_t in = (loff_t)off, o = (loff_t)off;
		ssize_t n = copy_file_range(src, &in, dst, &o,
		    len > COPY_PIECE ? COPY_PIECE : (size_t)len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* Fall back to read/write (e.g. across devices). */
			uint8_t *buf = xmalloc(IO_CHUNK);
			int r = 0;
			while (len > 0 && r == 0) {
				size_t k = len < IO_CHUNK ? (size_t)len :
				    IO_CHUNK;
				if (work_cancelled()) {
					r = RD_ERR_CANCELLED;
					break;
				}
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
	if (work_cancelled())
		return RD_ERR_CANCELLED;
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
		fds[i] = open(paths[i], O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC |
		    O_NOFOLLOW, 0600);
		if (fds[i] >= 0 && (r = copy_image(st->img[i], fds[i],
		    st->rel.disks[i].size)) == RD_ERR_CANCELLED) {
			snprintf(err, errsz, "test copy of %s cancelled: "
			    "replicad is stopping", st->rel.disks[i].name);
			goto unlock;
		}
		if (fds[i] < 0 || r != 0) {
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
		/* A point with no segment (an empty cycle's) is the point
		 * before it. */
		if (pts[k].id > newest || pts[k].id <= id ||
		    pts[k].seg == CAT_SEG_NONE)
			continue;
		if (work_cancelled()) {
			snprintf(err, errsz, "test copy cancelled: replicad is "
			    "stopping");
			r = RD_ERR_CANCELLED;
			goto out;
		}
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
 * hashed outside it, so a long verify does not hold up replication.  A
 * zero record means the block must hold zeros; holes are read as zeros
 * without reading them.  RD_ERR_BUSY if a cycle was applied during the
 * pass.
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
		dfd = open(dp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		free(dp);
		for (uint64_t off = 0; r == 0; off += chunk) {
			/* A long job (work.h): it stops at shutdown. */
			if (work_cancelled()) {
				snprintf(err, errsz, "verify cancelled at disk "
				    "%s offset %" PRIu64 ": replicad is "
				    "stopping", st->rel.disks[i].name, off);
				r = RD_ERR_CANCELLED;
				break;
			}
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
			struct stat sb;
			int hole = r == 0 && is_hole(st->img[i], off, n) &&
			    fstat(st->img[i], &sb) == 0 &&
			    (uint64_t)sb.st_size >= off + n;	/* not cut short */
			if (r == 0 && ((!hole && util_pread_holes(st->img[i],
			    buf, n, (off_t)off)) || util_pread_holes(dfd, dig,
			    nb * DIGEST_LEN, (off_t)(off / bs * DIGEST_LEN)))) {
				snprintf(err, errsz, "disk %s: cannot read at "
				    "%" PRIu64, st->rel.disks[i].name, off);
				r = RD_ERR_CORRUPT;
			}
			pthread_mutex_unlock(&st->lock);
			for (size_t b = 0; r == 0 && b < nb; b++) {
				size_t len = n - b * bs < bs ? n - b * bs : bs;
				const uint8_t *rec = dig + b * DIGEST_LEN;
				int ok;
				if (hole && util_is_zero(rec, DIGEST_LEN)) {
					ok = 1;
				} else if (hole) {
					struct digest d;
					memcpy(d.b, rec, DIGEST_LEN);
					ok = is_zero_digest(st, &d, len);
				} else if (util_is_zero(rec, DIGEST_LEN)) {
					ok = util_is_zero(buf + b * bs, len);
				} else {
					struct digest d;
					digest_block(buf + b * bs, len, &d);
					ok = memcmp(d.b, rec, DIGEST_LEN) == 0;
				}
				if (!ok) {
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

int
store_verify_point(struct store *st, uint64_t point, uint64_t *blocks,
    uint64_t *segments, char *err, size_t errsz)
{
	struct cat_point *pts = NULL;
	size_t npts = 0;
	int r;

	*segments = 0;
	if ((r = store_verify(st, blocks, err, errsz)) != 0)
		return r;
	/* A segment merged or dropped by a prune meanwhile: list again. */
	for (int attempt = 0; attempt < 5; attempt++) {
		free(pts);
		pts = NULL;
		*segments = 0;
		if ((r = cat_point_list(st->cat, st->rel.vm, &pts, &npts)) !=
		    0) {
			snprintf(err, errsz, "cannot list points: %s",
			    rd_strerror(r));
			break;
		}
		r = RD_ERR_NOT_FOUND;
		for (size_t k = 0; k < npts; k++)
			if (pts[k].id == point)
				r = 0;
		if (r != 0) {
			snprintf(err, errsz, "%s has no recovery point %" PRIu64,
			    st->rel.vm, point);
			break;
		}
		for (size_t k = npts; r == 0 && k-- > 0;) {
			if (pts[k].id <= point || pts[k].seg == CAT_SEG_NONE)
				continue;
			if (work_cancelled()) {
				snprintf(err, errsz, "verify cancelled: "
				    "replicad is stopping");
				r = RD_ERR_CANCELLED;
				break;
			}
			char *up = seg_path(st, &pts[k]);
			r = undo_check(up, st->rel.ndisks);
			if (r != 0 && r != RD_ERR_NOT_FOUND)
				snprintf(err, errsz, "undo segment %s of point "
				    "%" PRIu64 ": %s", up, pts[k].id,
				    r == RD_ERR_SYSTEM ? strerror(errno) :
				    rd_strerror(r));
			free(up);
			(*segments)++;
		}
		if (r != RD_ERR_NOT_FOUND)
			break;
		snprintf(err, errsz, "an undo segment kept disappearing while "
		    "being checked (prune running?)");
	}
	free(pts);
	return r;
}
