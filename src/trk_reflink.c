/*
 * trk_reflink.c — the reflink backend, for images on XFS (reflink=1) or
 * btrfs.
 *
 * The cut of cycle C is an FICLONE copy of each image, CUTDIR/DISK.new,
 * where CUTDIR is .replicad/VM/ beside the image (a clone must stay on the
 * image's file system; names cannot hold '/', so no two VMs share one).  A clone is atomic, so the view is point-in-time
 * per file even while the guest writes; the cuts of a VM's disks are
 * taken one right after the other (a pre_snapshot hook that pauses the
 * guest makes them one instant).  The base of the comparison is the cut
 * of the cycle the tracker's digests describe, DISK.N: the blocks that
 * may have changed are the ranges whose physical placement differs
 * between the two cuts (FS_IOC_FIEMAP after the data is written back,
 * clipped to the file size; addresses are compared, not the SHARED flag,
 * which says nothing about which file changed).  The guest's writes to
 * the image cannot land in place in extents a cut still shares: the file
 * system copies them elsewhere, so an unchanged address means unchanged
 * data.  Unchanged data is never read.
 *
 * Commit renames DISK.new to DISK.C (the new base), then removes DISK.N.  A base that is missing or does not match the digests (a
 * crash between the two, someone removing files) makes the disk report
 * "all": the whole cut is read and compared with the digests, never
 * assumed clean.  A defragmented or rewritten image moves its extents:
 * its ranges are read and compared, only true changes travel.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "trk_backend.h"
#include "trk_files.h"
#include "util.h"
#include "xmalloc.h"

#define FIEMAP_BATCH	1024	/* extents per FS_IOC_FIEMAP call */

/* Flags whose extents carry no usable address: always "changed". */
#define FE_UNSAFE	(FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | \
			 FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_DATA_TAIL | \
			 FIEMAP_EXTENT_NOT_ALIGNED)

struct rdisk {
	char		*path;		/* the image */
	char		*cutdir;	/* .replicad/VM/ beside it */
	char		*prefix;	/* "DISK." */
	int		 fd;		/* the new cut, open while held */
	int		 quiet;		/* nothing changed: the base is the cut */
	uint64_t	 base;		/* cycle of the base in use, 0: none */
	uint64_t	 stale;		/* an old base for tidy() to remove */
	/* The image's identity and times when it last equalled a cut, if
	 * they were old enough to tell a later write (see unchanged()):
	 * cand for this cycle's cut, kept for the base once committed. */
	struct stat	 cand_st, kept_st;
	int		 cand_ok, kept_ok;
	int		 cand_known, kept_known;	/* the stat is set, settled
					   or not: a later change of it says
					   the image was written since */
	uint64_t	 kept_cycle;	/* the base they describe */
};

struct reflink {
	char		*vm;
	size_t		 ndisks;
	struct rdisk	*d;
};

struct fmap {
	struct fiemap_extent	*e;
	size_t			 n;
};

static char *
cut_path(const struct rdisk *d, const char *what)
{
	return xasprintf("%s/%s%s", d->cutdir, d->prefix, what);
}

static char *
base_path(const struct rdisk *d, uint64_t cycle)
{
	return xasprintf("%s/%s%" PRIu64, d->cutdir, d->prefix, cycle);
}

static int
rl_open(const struct cfg_vm *vm, const char *state_dir, void **state,
    char *err, size_t errsz)
{
	struct reflink *rl = xcalloc(1, sizeof(*rl));

	rl->vm = xstrdup(vm->name);
	rl->ndisks = vm->ndisks;
	rl->d = xcalloc(vm->ndisks, sizeof(*rl->d));
	for (size_t i = 0; i < vm->ndisks; i++) {
		struct rdisk *d = &rl->d[i];
		const char *slash = strrchr(vm->disks[i], '/');
		d->path = xstrdup(vm->disks[i]);
		d->cutdir = xasprintf("%.*s/.replicad/%s",
		    (int)(slash - vm->disks[i]), vm->disks[i], vm->name);
		d->prefix = xasprintf("%s.", vm->disk_names[i]);
		d->fd = -1;
	}
	*state = rl;
	return 0;
}

static void
rl_abort(void *state)
{
	struct reflink *rl = state;
	for (size_t i = 0; i < rl->ndisks; i++) {
		struct rdisk *d = &rl->d[i];
		d->quiet = 0;
		d->cand_ok = d->cand_known = 0;
		if (d->fd < 0)
			continue;
		close(d->fd);
		d->fd = -1;
		char *p = cut_path(d, "new");
		if (unlink(p) != 0 && errno != ENOENT)
			log_warn("%s: cannot remove %s", rl->vm, p);
		free(p);
	}
}

static void
rl_close(void *state)
{
	struct reflink *rl = state;
	rl_abort(rl);
	for (size_t i = 0; i < rl->ndisks; i++) {
		free(rl->d[i].path);
		free(rl->d[i].cutdir);
		free(rl->d[i].prefix);
	}
	free(rl->d);
	free(rl->vm);
	free(rl);
}

static int
rl_sizes(void *state, uint64_t *sizes, char *err, size_t errsz)
{
	struct reflink *rl = state;
	for (size_t i = 0; i < rl->ndisks; i++) {
		int r = trk_file_sizes(&rl->d[i].path, 1, &sizes[i], err, errsz);
		if (r != 0)
			return r;
	}
	return 0;
}

/* Remove what earlier runs left: cuts other than keep (0: keep none). */
static void
remove_stale(const char *vm, const struct rdisk *d, uint64_t keep)
{
	DIR *dir = opendir(d->cutdir);
	struct dirent *de;
	size_t plen = strlen(d->prefix);

	if (dir == NULL)
		return;
	while ((de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, d->prefix, plen) != 0)
			continue;
		const char *rest = de->d_name + plen;
		char *end;
		errno = 0;
		unsigned long long c = strtoull(rest, &end, 10);
		if (strcmp(rest, "new") != 0 &&
		    (*rest < '0' || *rest > '9' || *end != '\0' || errno != 0))
			continue;	/* not ours */
		if (strcmp(rest, "new") != 0 && keep != 0 && c == keep)
			continue;
		if (unlinkat(dirfd(dir), de->d_name, 0) != 0)
			log_warn("%s: cannot remove %s/%s", vm, d->cutdir,
			    de->d_name);
	}
	closedir(dir);
}

/* Every extent of fd within [0, size), written back first. */
static int
get_map(int fd, uint64_t size, struct fmap *m)
{
	size_t bytes = sizeof(struct fiemap) +
	    FIEMAP_BATCH * sizeof(struct fiemap_extent);
	struct fiemap *fm = xmalloc(bytes);
	uint64_t pos = 0;
	int r = 0;

	m->e = NULL;
	m->n = 0;
	size_t cap = 0;
	while (pos < size) {
		memset(fm, 0, sizeof(*fm));
		fm->fm_start = pos;
		fm->fm_length = size - pos;
		fm->fm_flags = FIEMAP_FLAG_SYNC;
		fm->fm_extent_count = FIEMAP_BATCH;
		if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) {
			r = RD_ERR_SYSTEM;
			break;
		}
		if (fm->fm_mapped_extents == 0)
			break;
		int last = 0;
		for (uint32_t k = 0; k < fm->fm_mapped_extents; k++) {
			struct fiemap_extent *e = &fm->fm_extents[k];
			if (e->fe_logical >= size || e->fe_length == 0 ||
			    e->fe_logical + e->fe_length < e->fe_logical) {
				last = 1;
				break;
			}
			struct fiemap_extent x = *e;
			uint64_t prev = m->n == 0 ? 0 : m->e[m->n - 1].fe_logical +
			    m->e[m->n - 1].fe_length;
			if (x.fe_logical < prev) {
				/* Reported twice (across calls): keep the rest
				 * only, and never trust its address. */
				if (x.fe_logical + x.fe_length <= prev)
					continue;
				x.fe_length -= prev - x.fe_logical;
				x.fe_logical = prev;
				x.fe_flags |= FIEMAP_EXTENT_UNKNOWN;
			}
			if (m->n == cap) {
				cap = cap ? 2 * cap : 256;
				m->e = xreallocarray(m->e, cap, sizeof(*m->e));
			}
			m->e[m->n++] = x;
			if (e->fe_flags & FIEMAP_EXTENT_LAST)
				last = 1;
		}
		if (r != 0 || last)
			break;
		uint64_t end = m->n == 0 ? 0 : m->e[m->n - 1].fe_logical +
		    m->e[m->n - 1].fe_length;
		if (end <= pos) {
			/* No progress: whatever the rest holds, it is read and
			 * compared (an unknown address is never "the same"). */
			if (m->n == cap) {
				cap = cap ? 2 * cap : 256;
				m->e = xreallocarray(m->e, cap, sizeof(*m->e));
			}
			m->e[m->n++] = (struct fiemap_extent){ .fe_logical = pos,
			    .fe_length = size - pos,
			    .fe_flags = FIEMAP_EXTENT_UNKNOWN };
			break;
		}
		pos = end;
	}
	free(fm);
	return r;
}

/* The extent of m covering pos (from *k on), or NULL; *next: where the
 * answer may change. */
static const struct fiemap_extent *
extent_at(const struct fmap *m, size_t *k, uint64_t pos, uint64_t *next)
{
	while (*k < m->n && m->e[*k].fe_logical + m->e[*k].fe_length <= pos)
		(*k)++;
	if (*k == m->n) {
		*next = UINT64_MAX;
		return NULL;
	}
	const struct fiemap_extent *e = &m->e[*k];
	if (e->fe_logical > pos) {
		*next = e->fe_logical;
		return NULL;
	}
	*next = e->fe_logical + e->fe_length;
	return e;
}

/* Does [pos, ...) hold the same data in both cuts, by placement? */
static int
same_place(const struct fiemap_extent *a, const struct fiemap_extent *b,
    uint64_t pos)
{
	if (a == NULL || b == NULL)
		return a == b;			/* both holes */
	if ((a->fe_flags | b->fe_flags) & FE_UNSAFE)
		return 0;
	if ((a->fe_flags ^ b->fe_flags) &
	    (FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_ENCODED))
		return 0;
	if (a->fe_flags & FIEMAP_EXTENT_ENCODED) {
		/* A compressed extent has one address for all its bytes:
		 * the same reference, at the same place, of the same length. */
		return a->fe_physical == b->fe_physical &&
		    a->fe_logical == b->fe_logical &&
		    a->fe_length == b->fe_length;
	}
	return a->fe_physical + (pos - a->fe_logical) ==
	    b->fe_physical + (pos - b->fe_logical);
}

/* The ranges of [0, size) whose placement differs between base and cut. */
static void
compare_maps(const struct fmap *base, const struct fmap *cut, uint64_t size,
    struct trk_dirty *dirty)
{
	size_t ka = 0, kb = 0;
	uint64_t pos = 0;

	while (pos < size) {
		uint64_t na, nb;
		const struct fiemap_extent *a = extent_at(base, &ka, pos, &na);
		const struct fiemap_extent *b = extent_at(cut, &kb, pos, &nb);
		uint64_t end = na < nb ? na : nb;
		if (end > size)
			end = size;
		if (!same_place(a, b, pos))
			trk_dirty_add(dirty, pos, end - pos);
		pos = end;
	}
}

/*
 * An image's times say whether it was written since a moment only when
 * they are older than that moment by more than the clock's granularity:
 * the kernel sets mtime and ctime before a write's data reaches the file
 * (buffered, direct and through a mapping alike), but from a coarse
 * clock, so a write within the same tick as the last one leaves them as
 * they were.  A second is far above any tick.
 */
#define TIMES_SETTLED_NS	1000000000LL

static int64_t
ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec;
}

/* st, taken at or before a moment when the image equalled a cut, can
 * tell later writes if both its times are settled by then (now). */
static int
times_settled(const struct stat *st, int64_t now_ns)
{
	return ts_ns(&st->st_mtim) <= now_ns - TIMES_SETTLED_NS &&
	    ts_ns(&st->st_ctim) <= now_ns - TIMES_SETTLED_NS;
}

static int64_t
realtime_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return ts_ns(&t);
}

static int
clone_image(struct reflink *rl, struct rdisk *d, uint64_t *size, char *err,
    size_t errsz)
{
	int src, r;
	char *newp = cut_path(d, "new");

	if ((r = trk_file_open(d->path, &src, err, errsz)) != 0)
		goto out;
	struct stat st;
	if (fstat(src, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errsz, "disk %s: not a regular file (tracker "
		    "reflink clones image files)", d->path);
		r = RD_ERR_INVALID;
		close(src);
		goto out;
	}
	/* The image's times before the clone: any write after them
	 * changes them (unchanged()). */
	int64_t now = realtime_ns();
	d->cand_ok = times_settled(&st, now);
	d->cand_known = 1;
	d->cand_st = st;
	unlink(newp);
	d->fd = open(newp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (d->fd < 0) {
		snprintf(err, errsz, "cannot create %s: %s", newp,
		    strerror(errno));
		r = RD_ERR_SYSTEM;
		close(src);
		goto out;
	}
	if (ioctl(d->fd, FICLONE, src) != 0) {
		int e = errno;
		if (e == EOPNOTSUPP || e == EXDEV || e == EINVAL || e == ENOTTY)
			snprintf(err, errsz, "the file system of %s cannot make "
			    "reflinks (FICLONE: %s); tracker reflink needs XFS "
			    "with reflink=1 or btrfs, use tracker = scan",
			    d->path, strerror(e));
		else
			snprintf(err, errsz, "cannot clone %s: %s", d->path,
			    strerror(e));
		r = e == ENOSPC ? RD_ERR_NOSPACE : RD_ERR_SYSTEM;
		close(src);
		goto out;
	}
	close(src);
	/* The clone's own size is the one of the instant it was taken. */
	if (fstat(d->fd, &st) != 0) {
		snprintf(err, errsz, "%s: %s", newp, strerror(errno));
		r = RD_ERR_SYSTEM;
		goto out;
	}
	*size = (uint64_t)st.st_size;
out:
	free(newp);
	return r;
}

static int
dirty_since(struct reflink *rl, struct rdisk *d, uint64_t since,
    uint64_t since_size, uint64_t size, struct trk_dirty *dirty, char *err,
    size_t errsz)
{
	struct fmap a = { NULL, 0 }, b = { NULL, 0 };
	char *bp = since ? base_path(d, since) : NULL;
	int bfd = bp ? open(bp, O_RDONLY | O_CLOEXEC) : -1;
	struct stat st;
	int r = 0;

	if (bfd < 0) {
		if (since != 0)
			log_warnx("%s: %s: no cut of cycle %" PRIu64 " to "
			    "compare with (%s): comparing the whole disk",
			    rl->vm, d->path, since, strerror(errno));
		dirty->all = 1;
		goto out;
	}
	if (fstat(bfd, &st) != 0 || (uint64_t)st.st_size != since_size) {
		/* Not the cut the digests describe (someone changed it). */
		log_warnx("%s: %s: the cut of cycle %" PRIu64 " is not the one "
		    "the digests describe: comparing the whole disk", rl->vm,
		    d->path, since);
		dirty->all = 1;
		goto out;
	}
	if ((uint64_t)st.st_size > size) {
		/* A shrunk disk: tracker.c says so; nothing to compare. */
		dirty->all = 1;
		goto out;
	}
	if (get_map(bfd, (uint64_t)st.st_size, &a) != 0 ||
	    get_map(d->fd, size, &b) != 0) {
		snprintf(err, errsz, "disk %s: FIEMAP: %s", d->path,
		    strerror(errno));
		r = RD_ERR_SYSTEM;
		goto out;
	}
	compare_maps(&a, &b, size, dirty);
	d->base = since;
out:
	if (bfd >= 0)
		close(bfd);
	free(bp);
	free(a.e);
	free(b.e);
	return r;
}

/*
 * Wait for the direct writes to fd in flight: FIEMAP takes no lock that
 * waits for them, and a direct write's times are set when it starts, not
 * when its blocks land.  Cloning one block of the image (into a nameless
 * file in dir) waits for them (generic_remap_file_range_prep()), as the
 * cut's own FICLONE does.  1 once they are done, 0 if it could not.
 */
static int
dio_settled(const char *dir, int fd, const struct stat *st)
{
	struct statfs sf;
	int tmp, ok = 0;

	if (fstatfs(fd, &sf) != 0 || sf.f_bsize <= 0 ||
	    st->st_size < (off_t)sf.f_bsize)
		return 0;
	if ((tmp = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)) < 0)
		return 0;
	struct file_clone_range fcr = {
		.src_fd = fd,
		.src_offset = 0,
		.src_length = (uint64_t)sf.f_bsize,
		.dest_offset = 0,
	};
	ok = ioctl(tmp, FICLONERANGE, &fcr) == 0;
	close(tmp);
	return ok;
}

/*
 * Nothing has been written to the image since it last equalled the base
 * cut of cycle since: the same file, size, mtime and ctime as then (no
 * write, truncation, hole punch, clone into it or utimensat() leaves
 * both times as they were; ctime cannot be set).  No FIEMAP, no clone:
 * an idle cycle of a heavily fragmented image costs a stat().
 */
static int
unchanged(const struct rdisk *d, uint64_t since, uint64_t *size)
{
	struct stat st;

	if (!d->kept_known || d->kept_cycle != since || d->base != since ||
	    stat(d->path, &st) != 0 || !S_ISREG(st.st_mode))
		return 0;
	if (st.st_dev != d->kept_st.st_dev || st.st_ino != d->kept_st.st_ino ||
	    st.st_size != d->kept_st.st_size ||
	    ts_ns(&st.st_mtim) != ts_ns(&d->kept_st.st_mtim) ||
	    ts_ns(&st.st_ctim) != ts_ns(&d->kept_st.st_ctim))
		return -1;	/* written (or touched) since: cut it */
	if (!d->kept_ok)
		return 0;
	*size = (uint64_t)st.st_size;
	return 1;
}

/*
 * An idle disk: the image's own extents (written back first) are still
 * exactly those of the base cut, so nothing reached the file system since
 * that cut, and the base is this cut too: no clone is needed.  This is
 * the comparison of two cuts with the image in the new cut's place; what
 * the guest writes afterwards lands elsewhere (the base still shares the
 * extents) and is found by the next cut.  1 if idle, else 0.
 */
static int
idle_since(struct rdisk *d, uint64_t since, uint64_t since_size,
    uint64_t *size)
{
	struct fmap a = { NULL, 0 }, b = { NULL, 0 };
	struct trk_dirty dy = { 0 };
	struct stat sa, sb;
	char *bp = base_path(d, since);
	int fa = open(d->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	int fb = open(bp, O_RDONLY | O_CLOEXEC);
	int64_t now = realtime_ns();
	int idle = 0, settled;

	if (fa < 0 || fb < 0 || fstat(fa, &sa) != 0 || fstat(fb, &sb) != 0 ||
	    !S_ISREG(sa.st_mode) || sa.st_size != sb.st_size ||
	    (uint64_t)sb.st_size != since_size)
		goto out;
	/* The times first, then the writes in flight done, then the maps:
	 * a write the maps miss started after the times were taken. */
	settled = times_settled(&sa, now) && dio_settled(d->cutdir, fa, &sa);
	if (get_map(fa, (uint64_t)sa.st_size, &a) != 0 ||
	    get_map(fb, (uint64_t)sb.st_size, &b) != 0)
		goto out;
	compare_maps(&b, &a, (uint64_t)sa.st_size, &dy);
	idle = dy.n == 0;
	*size = (uint64_t)sa.st_size;
	d->cand_st = sa;
	d->cand_ok = idle && settled;
	d->cand_known = idle;
out:
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	free(bp);
	free(a.e);
	free(b.e);
	trk_dirty_free(&dy);
	return idle;
}

static int
rl_cut(void *state, uint64_t cycle, const uint64_t *since, uint64_t *sizes,
    struct trk_dirty *dirty, char *err, size_t errsz)
{
	struct reflink *rl = state;
	uint64_t since_size[CFG_MAX_DISKS];
	int r = 0, idle = 1;

	memcpy(since_size, sizes, rl->ndisks * sizeof(*sizes));
	for (size_t i = 0; i < rl->ndisks; i++)
		rl->d[i].cand_ok = rl->d[i].cand_known = 0;
	for (size_t i = 0; i < rl->ndisks && idle; i++) {
		struct rdisk *d = &rl->d[i];
		int u = since[i] != 0 ? unchanged(d, since[i], &sizes[i]) : 0;
		if (u > 0) {
			log_debug("%s: %s: not written since the cut of cycle %"
			    PRIu64 " (its times say so)", rl->vm, d->path,
			    since[i]);
			d->cand_st = d->kept_st;
			d->cand_ok = 1;
			d->cand_known = 1;
			continue;
		}
		/* Times that moved mean a write since: comparing the extents
		 * would only find it (a wasted FIEMAP of both); the clone
		 * below is right either way. */
		idle = u == 0 && since[i] != 0 && idle_since(d, since[i],
		    since_size[i], &sizes[i]);
	}
	if (idle) {
		for (size_t i = 0; i < rl->ndisks; i++) {
			rl->d[i].quiet = 1;
			rl->d[i].base = since[i];
		}
		return 0;
	}

	for (size_t i = 0; i < rl->ndisks; i++) {
		struct rdisk *d = &rl->d[i];
		remove_stale(rl->vm, d, since[i]);
		if (util_mkdir_p(d->cutdir, 0700) != 0) {
			snprintf(err, errsz, "cannot create %s: %s", d->cutdir,
			    strerror(errno));
			r = RD_ERR_SYSTEM;
			goto fail;
		}
	}
	/* The clones first, one right after the other: the cut. */
	for (size_t i = 0; i < rl->ndisks; i++)
		if ((r = clone_image(rl, &rl->d[i], &sizes[i], err,
		    errsz)) != 0)
			goto fail;
	for (size_t i = 0; i < rl->ndisks; i++) {
		struct rdisk *d = &rl->d[i];
		d->base = 0;
		if ((r = dirty_since(rl, d, since[i], since_size[i], sizes[i],
		    &dirty[i], err, errsz)) != 0)
			goto fail;
		posix_fadvise(d->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	}
	return 0;
fail:
	rl_abort(rl);
	return r;
}

static int
rl_read(void *state, size_t disk, uint8_t *buf, size_t len, uint64_t off,
    char *err, size_t errsz)
{
	struct reflink *rl = state;
	int r = util_pread_holes(rl->d[disk].fd, buf, len, (off_t)off);
	/* The cut's pages duplicate the image's and are never read again:
	 * drop them now rather than at the unlink of the cut, which would
	 * then take the time on the next cycle's path. */
	posix_fadvise(rl->d[disk].fd, (off_t)off, (off_t)len,
	    POSIX_FADV_DONTNEED);
	return r;
}

/* The cut is a clone: its holes are the image's at the cut. */
static uint64_t
rl_hole(void *state, size_t disk, uint64_t off, uint64_t end)
{
	struct reflink *rl = state;
	return trk_file_hole(rl->d[disk].fd, off, end);
}

static void
rl_prefetch(void *state, size_t disk, uint64_t off, uint64_t len)
{
	struct reflink *rl = state;
	posix_fadvise(rl->d[disk].fd, (off_t)off, (off_t)len,
	    POSIX_FADV_WILLNEED);
}

static void
rl_tidy(void *state)
{
	struct reflink *rl = state;
	for (size_t i = 0; i < rl->ndisks; i++) {
		struct rdisk *d = &rl->d[i];
		if (d->stale == 0)
			continue;
		char *old = base_path(d, d->stale);
		if (unlink(old) != 0 && errno != ENOENT)
			log_warn("%s: cannot remove %s", rl->vm, old);
		free(old);
		d->stale = 0;
	}
}

static int
rl_commit(void *state, uint64_t cycle, char *err, size_t errsz)
{
	struct reflink *rl = state;
	int r = 0;

	for (size_t i = 0; i < rl->ndisks; i++) {
		struct rdisk *d = &rl->d[i];
		/* Idle: the base is this cycle's cut, only its name moves. */
		int quiet = d->quiet;
		char *newp = quiet ? base_path(d, d->base) : cut_path(d, "new");
		char *bp = base_path(d, cycle);
		if (d->fd >= 0)
			close(d->fd);
		d->fd = -1;
		d->quiet = 0;
		if (quiet)
			d->base = 0;
		/* The new base first: a crash before the old one is gone
		 * leaves both, and the digests say which is in force.  An
		 * idle disk's rename is not synced: if a power loss undoes
		 * it, the base is found under its old name only, the digests
		 * name the new one, and the next cut compares the whole disk
		 * (dirty_since()); every idle cycle would otherwise wait for
		 * the file system's log. */
		if (rename(newp, bp) != 0 ||
		    (!quiet && util_fsync_dir(d->cutdir) != 0)) {
			if (r == 0)
				snprintf(err, errsz, "cannot keep the cut %s: %s",
				    bp, strerror(errno));
			r = RD_ERR_SYSTEM;
			if (!quiet)
				unlink(newp);
		} else if (d->base != 0 && d->base != cycle) {
			/* Removed by tidy() once the requester has its answer
			 * (or by the next cut's remove_stale()). */
			d->stale = d->base;
		}
		d->base = cycle;
		d->kept_st = d->cand_st;
		d->kept_ok = d->cand_ok && r == 0;
		d->kept_known = d->cand_known && r == 0;
		d->kept_cycle = cycle;
		d->cand_ok = 0;
		d->cand_known = 0;
		free(newp);
		free(bp);
	}
	return r;
}

/*
 * Can the file system of each image make reflinks?  Tried on two small
 * files in the cut directory (the image itself is not touched).
 */
static int
rl_check(const struct cfg_vm *vm, const char *state_dir, char *err,
    size_t errsz)
{
	void *state;
	int r = 0;

	rl_open(vm, NULL, &state, err, errsz);
	struct reflink *rl = state;
	for (size_t i = 0; i < rl->ndisks && r == 0; i++) {
		struct rdisk *d = &rl->d[i];
		struct stat st;
		if (stat(d->path, &st) != 0) {
			snprintf(err, errsz, "disk %s: %s", d->path,
			    strerror(errno));
			r = errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
			break;
		}
		if (!S_ISREG(st.st_mode)) {
			snprintf(err, errsz, "disk %s: not a regular file "
			    "(tracker reflink clones image files)", d->path);
			r = RD_ERR_INVALID;
			break;
		}
		if (util_mkdir_p(d->cutdir, 0700) != 0) {
			snprintf(err, errsz, "cannot create %s: %s", d->cutdir,
			    strerror(errno));
			r = RD_ERR_SYSTEM;
			break;
		}
		/* Names of this process alone: the VM's start and a manual
		 * --check may run at once. */
		char ta[32], tb[32];
		snprintf(ta, sizeof(ta), "check-a-%ld", (long)getpid());
		snprintf(tb, sizeof(tb), "check-b-%ld", (long)getpid());
		char *a = cut_path(d, ta), *b = cut_path(d, tb);
		char block[4096];
		memset(block, 0x5a, sizeof(block));
		int fa = open(a, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		int fb = open(b, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fa < 0 || fb < 0 ||
		    util_pwrite_full(fa, block, sizeof(block), 0) != 0) {
			snprintf(err, errsz, "cannot write in %s: %s", d->cutdir,
			    strerror(errno));
			r = RD_ERR_SYSTEM;
		} else if (ioctl(fb, FICLONE, fa) != 0) {
			snprintf(err, errsz, "the file system of %s cannot make "
			    "reflinks (FICLONE: %s); tracker reflink needs XFS "
			    "with reflink=1 or btrfs, use tracker = scan",
			    d->path, strerror(errno));
			r = RD_ERR_UNSUPPORTED;
		}
		if (fa >= 0)
			close(fa);
		if (fb >= 0)
			close(fb);
		unlink(a);
		unlink(b);
		free(a);
		free(b);
	}
	rl_close(rl);
	return r;
}

/* The cuts beside the images go with the primary role. */
static void
rl_forget(const struct cfg_vm *vm)
{
	void *state;
	char err[256];

	rl_open(vm, NULL, &state, err, sizeof(err));
	struct reflink *rl = state;
	for (size_t i = 0; i < rl->ndisks; i++) {
		remove_stale(rl->vm, &rl->d[i], 0);
		rmdir(rl->d[i].cutdir);		/* if nothing else is left */
	}
	rl_close(rl);
}

const struct trk_backend trk_backend_reflink = {
	.name = "reflink",
	.frozen = 1,
	.concurrent_reads = 1,
	.open = rl_open,
	.close = rl_close,
	.sizes = rl_sizes,
	.cut = rl_cut,
	.read = rl_read,
	.hole = rl_hole,
	.prefetch = rl_prefetch,
	.commit = rl_commit,
	.tidy = rl_tidy,
	.abort = rl_abort,
	.check = rl_check,
	.forget = rl_forget,
};
