/*
 * undo.c — undo segments (STORAGE/VM/.undo/CYCLE.undo).
 *
 * Format version 1, integers big-endian:
 *
 *   header
 *     8      magic "RDUNDOSG"
 *     4      version (1)
 *     8      cycle whose overwrites this segment undoes
 *     2      ndisks (1..UNDO_MAX_DISKS)
 *     8*n    each disk's size before the cycle
 *   records, any number
 *     1      type: 1 = DATA, 2 = ZERO
 *     2      disk index (< ndisks)
 *     8      offset
 *     4      length (DATA: 1..UNDO_MAX_DATA; ZERO: >= 1);
 *            offset + length <= the disk's old size
 *     ...    DATA only: length bytes, the old content
 *   trailer
 *     1      type 0xFF
 *     8      number of records
 *     16     XXH3-128 of every byte of the file before this field
 *
 * A segment is written as NAME.tmp and renamed into place only once
 * complete and fsynced, so a segment under its final name is whole.
 * Segments are never symbolic links: every open refuses one.  It
 * is read twice when applied: once to check it, once to write.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "digest.h"
#include "err.h"
#include "log.h"
#include "undo.h"
#include "util.h"
#include "xmalloc.h"

#define UNDO_MAGIC	"RDUNDOSG"
#define UNDO_VERSION	1
#define UNDO_DATA	1
#define UNDO_ZERO	2
#define UNDO_END	0xFF
#define UNDO_REC_HDR	(1 + 2 + 8 + 4)
#define UNDO_CHUNK	(1u << 20)
#define UNDO_WBUF	(8u << 20)

struct undo_writer {
	char		*path;
	char		*tmp;
	int		 fd;
	uint16_t	 ndisks;
	uint64_t	 old_sizes[UNDO_MAX_DISKS];
	uint64_t	 nrecords;
	uint64_t	 written;
	XXH3_state_t	*hs;		/* aligned by XXH3_createState() */
	struct wbuf	 out;		/* buffered output */
	uint8_t		*chunk;
	/* a ZERO record being extended */
	int		 zero_open;
	uint16_t	 zero_disk;
	uint64_t	 zero_off;
	uint64_t	 zero_len;
};

static int
w_flush(struct undo_writer *w)
{
	if (w->out.len == 0)
		return 0;
	XXH3_128bits_update(w->hs, w->out.p, w->out.len);
	int r = util_write_full(w->fd, w->out.p, w->out.len);
	w->written += w->out.len;
	wb_reset(&w->out);
	return r;
}

int
undo_create(const char *path, uint64_t cycle, uint16_t ndisks,
    const uint64_t *old_sizes, struct undo_writer **out)
{
	struct undo_writer *w;

	if (ndisks == 0 || ndisks > UNDO_MAX_DISKS)
		return RD_ERR_RANGE;
	w = xcalloc(1, sizeof(*w));
	w->path = xstrdup(path);
	w->tmp = xasprintf("%s.tmp", path);
	w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
	    O_NOFOLLOW, 0600);
	if (w->fd < 0) {
		int saved = errno;
		free(w->path);
		free(w->tmp);
		free(w);
		errno = saved;
		return RD_ERR_SYSTEM;
	}
	w->ndisks = ndisks;
	memcpy(w->old_sizes, old_sizes, ndisks * sizeof(*old_sizes));
	if ((w->hs = XXH3_createState()) == NULL)
		fatalx("out of memory");
	XXH3_128bits_reset(w->hs);
	wb_init(&w->out);
	wb_put_bytes(&w->out, UNDO_MAGIC, 8);
	wb_put_u32(&w->out, UNDO_VERSION);
	wb_put_u64(&w->out, cycle);
	wb_put_u16(&w->out, ndisks);
	for (uint16_t i = 0; i < ndisks; i++)
		wb_put_u64(&w->out, old_sizes[i]);
	w->chunk = xmalloc(UNDO_CHUNK);
	*out = w;
	return 0;
}

static int
close_zero(struct undo_writer *w)
{
	while (w->zero_open && w->zero_len > 0) {
		uint32_t n = w->zero_len > UINT32_MAX ? UINT32_MAX :
		    (uint32_t)w->zero_len;
		wb_put_u8(&w->out, UNDO_ZERO);
		wb_put_u16(&w->out, w->zero_disk);
		wb_put_u64(&w->out, w->zero_off);
		wb_put_u32(&w->out, n);
		w->nrecords++;
		w->zero_off += n;
		w->zero_len -= n;
	}
	w->zero_open = 0;
	return w->out.len >= UNDO_WBUF ? w_flush(w) : 0;
}

int
undo_save_range(struct undo_writer *w, uint16_t disk, int fd, uint64_t off,
    uint64_t len)
{
	int r = 0;

	if (disk >= w->ndisks)
		return RD_ERR_RANGE;
	uint64_t old = w->old_sizes[disk];
	if (off >= old)
		return 0;
	if (len > old - off)
		len = old - off;
	while (len > 0) {
		uint32_t n = len < UNDO_CHUNK ? (uint32_t)len : UNDO_CHUNK;
		if ((r = util_pread_full(fd, w->chunk, n, (off_t)off)) != 0)
			return r;
		if (util_is_zero(w->chunk, n)) {
			if (w->zero_open && (w->zero_disk != disk ||
			    w->zero_off + w->zero_len != off))
				if ((r = close_zero(w)) != 0)
					return r;
			if (!w->zero_open) {
				w->zero_open = 1;
				w->zero_disk = disk;
				w->zero_off = off;
				w->zero_len = 0;
			}
			w->zero_len += n;
		} else {
			if ((r = close_zero(w)) != 0)
				return r;
			wb_put_u8(&w->out, UNDO_DATA);
			wb_put_u16(&w->out, disk);
			wb_put_u64(&w->out, off);
			wb_put_u32(&w->out, n);
			wb_put_bytes(&w->out, w->chunk, n);
			w->nrecords++;
			if (w->out.len >= UNDO_WBUF && (r = w_flush(w)) != 0)
				return r;
		}
		off += n;
		len -= n;
	}
	return 0;
}

static void
w_free(struct undo_writer *w)
{
	if (w->fd >= 0)
		close(w->fd);
	wb_free(&w->out);
	XXH3_freeState(w->hs);
	free(w->chunk);
	free(w->path);
	free(w->tmp);
	free(w);
}

int
undo_finish(struct undo_writer *w, uint64_t *bytes)
{
	struct digest d;
	XXH128_canonical_t c;
	int r;

	if ((r = close_zero(w)) != 0)
		goto out;
	wb_put_u8(&w->out, UNDO_END);
	wb_put_u64(&w->out, w->nrecords);
	if ((r = w_flush(w)) != 0)
		goto out;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(w->hs));
	memcpy(d.b, c.digest, DIGEST_LEN);
	if ((r = util_write_full(w->fd, d.b, DIGEST_LEN)) != 0)
		goto out;
	w->written += DIGEST_LEN;
	if (fsync(w->fd) != 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	if (rename(w->tmp, w->path) != 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	r = util_fsync_parent(w->path);
	if (bytes)
		*bytes = w->written;
out:
	if (r != 0) {
		int saved = errno;
		unlink(w->tmp);
		errno = saved;
	}
	w_free(w);
	return r;
}

void
undo_discard(struct undo_writer *w)
{
	if (w == NULL)
		return;
	unlink(w->tmp);
	w_free(w);
}

/*
 * Walk the segment in buffered reads.  With fds NULL only check it;
 * otherwise write the records.  The caller ran a check pass first.
 */
struct undo_reader {
	int		 fd;
	uint64_t	 pos;
	uint64_t	 size;
	XXH3_state_t	 hs;
};

static int
rd_bytes(struct undo_reader *rd, void *dst, size_t n)
{
	if (n > rd->size - rd->pos)
		return RD_ERR_CORRUPT;
	int r = util_pread_full(rd->fd, dst, n, (off_t)rd->pos);
	if (r == RD_ERR_TRUNCATED)
		return RD_ERR_CORRUPT;
	if (r != 0)
		return r;
	XXH3_128bits_update(&rd->hs, dst, n);
	rd->pos += n;
	return 0;
}

static int
set_sizes(const int *fds, uint16_t n, const uint64_t *sizes)
{
	uint64_t was[UNDO_MAX_DISKS];
	uint16_t grown;
	struct stat sb;

	for (uint16_t i = 0; i < n; i++) {
		if (fstat(fds[i], &sb) != 0)
			return RD_ERR_SYSTEM;
		was[i] = (uint64_t)sb.st_size;
	}
	for (grown = 0; grown < n; grown++) {
		if (sizes[grown] <= was[grown])
			continue;
		if (ftruncate(fds[grown], (off_t)sizes[grown]) != 0) {
			int saved = errno;
			for (uint16_t i = 0; i < grown; i++)
				if (sizes[i] > was[i] &&
				    ftruncate(fds[i], (off_t)was[i]) != 0)
					break;
			errno = saved;
			return RD_ERR_SYSTEM;
		}
	}
	for (uint16_t i = 0; i < n; i++)
		if (sizes[i] < was[i] && ftruncate(fds[i], (off_t)sizes[i]) != 0)
			return RD_ERR_SYSTEM;
	return 0;
}

static int walk_cb(int sfd, uint64_t fsize, const int *fds, uint16_t ndisks,
    uint64_t *old_sizes_out, struct undo_writer *save,
    int (*fn)(void *, uint16_t, uint64_t, uint32_t, const uint8_t *),
    void *arg);

/* A record handed to a walk's callback (data NULL for ZERO). */
typedef int (*rec_fn)(void *arg, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *data);

static int
walk_fn(int sfd, uint64_t fsize, uint16_t ndisks, uint64_t *old_sizes_out,
    rec_fn fn, void *arg);

static int
walk(int sfd, uint64_t fsize, const int *fds, uint16_t ndisks,
    uint64_t *old_sizes_out, struct undo_writer *save)
{
	return walk_cb(sfd, fsize, fds, ndisks, old_sizes_out, save, NULL,
	    NULL);
}

static int
walk_fn(int sfd, uint64_t fsize, uint16_t ndisks, uint64_t *old_sizes_out,
    rec_fn fn, void *arg)
{
	return walk_cb(sfd, fsize, NULL, ndisks, old_sizes_out, NULL, fn, arg);
}

static int
walk_cb(int sfd, uint64_t fsize, const int *fds, uint16_t ndisks,
    uint64_t *old_sizes_out, struct undo_writer *save, rec_fn fn, void *arg)
{
	struct undo_reader rd = { .fd = sfd, .pos = 0, .size = fsize };
	uint8_t hdr[8 + 4 + 8 + 2], *data = NULL;
	uint64_t sizes[UNDO_MAX_DISKS], nrec = 0;
	struct rbuf b;
	uint16_t n;
	uint32_t version;
	int r;

	XXH3_128bits_reset(&rd.hs);
	if ((r = rd_bytes(&rd, hdr, sizeof(hdr))) != 0)
		return r;
	rb_init(&b, hdr, sizeof(hdr));
	if (memcmp(hdr, UNDO_MAGIC, 8) != 0)
		return RD_ERR_CORRUPT;
	b.off = 8;
	rb_get_u32(&b, &version);
	if (version != UNDO_VERSION)
		return RD_ERR_VERSION;
	b.off += 8;
	rb_get_u16(&b, &n);
	if (n != ndisks || n == 0 || n > UNDO_MAX_DISKS)
		return RD_ERR_CORRUPT;
	for (uint16_t i = 0; i < n; i++) {
		uint8_t s[8];
		if ((r = rd_bytes(&rd, s, 8)) != 0)
			return r;
		rb_init(&b, s, 8);
		rb_get_u64(&b, &sizes[i]);
	}
	for (uint16_t i = 0; i < n; i++)
		if (sizes[i] > INT64_MAX)
			return RD_ERR_CORRUPT;
	/* Sizes before content, so that a size the file system cannot hold
	 * fails before anything is written: grow (undone exactly if a later
	 * disk fails), then shrink (which cannot run out of room). */
	if (fds && !save && (r = set_sizes(fds, n, sizes)) != 0)
		return r;
	data = xmalloc(UNDO_MAX_DATA);
	for (;;) {
		uint8_t type, rh[UNDO_REC_HDR - 1];
		uint16_t disk;
		uint64_t off;
		uint32_t len;

		if ((r = rd_bytes(&rd, &type, 1)) != 0)
			goto out;
		if (type == UNDO_END)
			break;
		if (type != UNDO_DATA && type != UNDO_ZERO) {
			r = RD_ERR_CORRUPT;
			goto out;
		}
		if ((r = rd_bytes(&rd, rh, sizeof(rh))) != 0)
			goto out;
		rb_init(&b, rh, sizeof(rh));
		rb_get_u16(&b, &disk);
		rb_get_u64(&b, &off);
		rb_get_u32(&b, &len);
		if (disk >= n || len == 0 || off > sizes[disk] ||
		    len > sizes[disk] - off ||
		    (type == UNDO_DATA && len > UNDO_MAX_DATA)) {
			r = RD_ERR_CORRUPT;
			goto out;
		}
		if (fn) {
			if ((type == UNDO_DATA && (r = rd_bytes(&rd, data,
			    len)) != 0) || (r = fn(arg, disk, off, len,
			    type == UNDO_DATA ? data : NULL)) != 0)
				goto out;
		} else if (save) {
			/* The range's content now, before the segment is
			 * applied: what undoes the segment. */
			if ((type == UNDO_DATA && (r = rd_bytes(&rd, data,
			    len)) != 0) || (r = undo_save_range(save, disk,
			    fds[disk], off, len)) != 0)
				goto out;
		} else if (type == UNDO_DATA) {
			if ((r = rd_bytes(&rd, data, len)) != 0)
				goto out;
			if (fds && (r = util_pwrite_full(fds[disk], data, len,
			    (off_t)off)) != 0)
				goto out;
		} else if (fds) {
			if (fallocate(fds[disk], FALLOC_FL_PUNCH_HOLE |
			    FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0) {
				/* No hole punching here: write the zeros. */
				memset(data, 0, UNDO_MAX_DATA);
				for (uint64_t o = 0; o < len; o += UNDO_MAX_DATA) {
					size_t k = len - o < UNDO_MAX_DATA ?
					    (size_t)(len - o) : UNDO_MAX_DATA;
					if ((r = util_pwrite_full(fds[disk],
					    data, k, (off_t)(off + o))) != 0)
						goto out;
				}
			}
		}
		nrec++;
	}
	uint8_t cnt[8], want[DIGEST_LEN];
	uint64_t count;
	if ((r = rd_bytes(&rd, cnt, 8)) != 0)
		goto out;
	rb_init(&b, cnt, 8);
	rb_get_u64(&b, &count);
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&rd.hs));
	if ((r = util_pread_full(sfd, want, DIGEST_LEN, (off_t)rd.pos)) != 0 ||
	    rd.pos + DIGEST_LEN != fsize || count != nrec ||
	    memcmp(want, c.digest, DIGEST_LEN) != 0) {
		r = RD_ERR_CORRUPT;
		goto out;
	}
	if (old_sizes_out)
		memcpy(old_sizes_out, sizes, n * sizeof(*sizes));
	r = 0;
out:
	free(data);
	return r;
}

int
undo_apply(const char *path, const int *fds, uint16_t ndisks,
    uint64_t *old_sizes)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
	off_t end = lseek(fd, 0, SEEK_END);
	int r;
	if (end < 0)
		r = RD_ERR_SYSTEM;
	else if ((r = walk(fd, (uint64_t)end, NULL, ndisks, NULL, NULL)) == 0)
		r = walk(fd, (uint64_t)end, fds, ndisks, old_sizes, NULL);
	int saved = errno;
	close(fd);
	errno = saved;
	return r;
}

int
undo_invert(const char *path, const int *fds, uint16_t ndisks, uint64_t cycle,
    const char *out_path, uint64_t *bytes)
{
	uint64_t now[UNDO_MAX_DISKS], then[UNDO_MAX_DISKS];
	struct undo_writer *w = NULL;
	struct stat sb;
	int r;

	if (ndisks == 0 || ndisks > UNDO_MAX_DISKS)
		return RD_ERR_INVALID;
	for (uint16_t i = 0; i < ndisks; i++) {
		if (fstat(fds[i], &sb) != 0)
			return RD_ERR_SYSTEM;
		now[i] = (uint64_t)sb.st_size;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
	off_t end = lseek(fd, 0, SEEK_END);
	if (end < 0)
		r = RD_ERR_SYSTEM;
	else if ((r = walk(fd, (uint64_t)end, NULL, ndisks, then, NULL)) == 0 &&
	    (r = undo_create(out_path, cycle, ndisks, now, &w)) == 0)
		r = walk(fd, (uint64_t)end, fds, ndisks, NULL, w);
	/* What the segment cuts off by size comes back by size and
	 * content: save the tail each disk grew by. */
	for (uint16_t i = 0; r == 0 && i < ndisks; i++)
		if (now[i] > then[i])
			r = undo_save_range(w, i, fds[i], then[i],
			    now[i] - then[i]);
	int saved = errno;
	close(fd);
	if (r == 0) {
		r = undo_finish(w, bytes);
	} else if (w != NULL) {
		undo_discard(w);
	}
	errno = saved;
	return r;
}

/* --- merging (pruning a point in the middle) -------------------------- */

/* Write one record as given (clipped to the old size of its disk). */
static int
put_rec(struct undo_writer *w, uint16_t disk, uint64_t off, uint64_t len,
    const uint8_t *data)
{
	int r;
	uint64_t old = w->old_sizes[disk];
	if (off >= old)
		return 0;
	if (len > old - off)
		len = old - off;
	if (data == NULL) {
		if (w->zero_open && (w->zero_disk != disk ||
		    w->zero_off + w->zero_len != off) &&
		    (r = close_zero(w)) != 0)
			return r;
		if (!w->zero_open) {
			w->zero_open = 1;
			w->zero_disk = disk;
			w->zero_off = off;
			w->zero_len = 0;
		}
		w->zero_len += len;
		return 0;
	}
	if ((r = close_zero(w)) != 0)
		return r;
	wb_put_u8(&w->out, UNDO_DATA);
	wb_put_u16(&w->out, disk);
	wb_put_u64(&w->out, off);
	wb_put_u32(&w->out, (uint32_t)len);
	wb_put_bytes(&w->out, data, len);
	w->nrecords++;
	return w->out.len >= UNDO_WBUF ? w_flush(w) : 0;
}

/* The byte ranges an older segment restores, per disk, sorted, merged. */
struct cover {
	uint16_t	 disk;
	uint64_t	 off, end;
};

struct merge {
	struct undo_writer *w;
	struct cover	*cv;
	size_t		 n, cap;
};

static int
collect_cover(void *arg, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *data)
{
	struct merge *m = arg;
	if (m->n == m->cap) {
		m->cap = m->cap ? 2 * m->cap : 256;
		m->cv = xreallocarray(m->cv, m->cap, sizeof(*m->cv));
	}
	m->cv[m->n++] = (struct cover){ disk, off, off + len };
	return 0;
}

static int
cover_cmp(const void *a, const void *b)
{
	const struct cover *x = a, *y = b;
	if (x->disk != y->disk)
		return x->disk < y->disk ? -1 : 1;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* First cover entry that ends after off on disk (binary search). */
static size_t
cover_find(const struct merge *m, uint16_t disk, uint64_t off)
{
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct cover *c = &m->cv[mid];
		if (c->disk < disk || (c->disk == disk && c->end <= off))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* A record of the newer segment: only what the older one does not cover. */
static int
put_uncovered(void *arg, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *data)
{
	struct merge *m = arg;
	uint64_t pos = off, end = off + len;
	int r;

	for (size_t i = cover_find(m, disk, off); pos < end; i++) {
		uint64_t gap_end = end;
		if (i < m->n && m->cv[i].disk == disk && m->cv[i].off < end)
			gap_end = m->cv[i].off > pos ? m->cv[i].off : pos;
		if (gap_end > pos && (r = put_rec(m->w, disk, pos, gap_end - pos,
		    data ? data + (pos - off) : NULL)) != 0)
			return r;
		if (gap_end == end)
			break;
		pos = m->cv[i].end > pos ? m->cv[i].end : pos;
	}
	return 0;
}

static int
put_all(void *arg, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *data)
{
	struct merge *m = arg;
	return put_rec(m->w, disk, off, len, data);
}

int
undo_merge(const char *newer, const char *older, uint64_t cycle,
    const char *out, uint64_t *bytes)
{
	uint64_t sizes[UNDO_MAX_DISKS], nsizes[UNDO_MAX_DISKS];
	struct merge m = { 0 };
	int nfd = -1, ofd = -1, r;
	off_t nend = -1, oend = -1;
	uint16_t nd = 0;

	if ((nfd = open(newer, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0 ||
	    (ofd = open(older, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
		r = errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
		goto out;
	}
	if ((nend = lseek(nfd, 0, SEEK_END)) < 0 ||
	    (oend = lseek(ofd, 0, SEEK_END)) < 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	/* Both whole and consistent before anything is written; the disk
	 * count comes from the headers (walk checks it against nd). */
	uint8_t hdr[22];
	if ((r = util_pread_full(ofd, hdr, sizeof(hdr), 0)) != 0) {
		r = RD_ERR_CORRUPT;
		goto out;
	}
	nd = (uint16_t)(hdr[20] << 8 | hdr[21]);
	if ((r = walk_fn(ofd, (uint64_t)oend, nd, sizes, collect_cover,
	    &m)) != 0 || (r = walk_fn(nfd, (uint64_t)nend, nd, nsizes, NULL,
	    NULL)) != 0)
		goto out;
	qsort(m.cv, m.n, sizeof(*m.cv), cover_cmp);
	size_t k = 0;		/* merge overlapping or touching ranges */
	for (size_t i = 0; i < m.n; i++) {
		if (k > 0 && m.cv[k - 1].disk == m.cv[i].disk &&
		    m.cv[i].off <= m.cv[k - 1].end) {
			if (m.cv[i].end > m.cv[k - 1].end)
				m.cv[k - 1].end = m.cv[i].end;
		} else {
			m.cv[k++] = m.cv[i];
		}
	}
	m.n = k;
	/* The older segment's sizes (the older point's): the newer one's
	 * records past them are undone by the sizes. */
	if ((r = undo_create(out, cycle, nd, sizes, &m.w)) != 0)
		goto out;
	if ((r = walk_fn(nfd, (uint64_t)nend, nd, NULL, put_uncovered,
	    &m)) == 0)
		r = walk_fn(ofd, (uint64_t)oend, nd, NULL, put_all, &m);
	if (r == 0)
		r = undo_finish(m.w, bytes);
	else
		undo_discard(m.w);
out:
	if (nfd >= 0)
		close(nfd);
	if (ofd >= 0)
		close(ofd);
	free(m.cv);
	return r;
}
