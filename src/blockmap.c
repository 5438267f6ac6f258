/*
 * blockmap.c — the tracker's state files (every tracker keeps them per disk).
 *
 * DISK.map, format version 1, all integers big-endian:
 *
 *   offset  size        field
 *   0       8           magic "RDBLKMAP"
 *   8       4           version (1)
 *   12      4           block_size
 *   16      8           disk_size
 *   24      8           cycle: the acknowledged cycle these digests describe
 *   32      8           nblocks = ceil(disk_size / block_size)
 *   40      24          reserved, zero
 *   64      16*nblocks  XXH3-128 digest of each block (the last block may
 *                       be short: its digest covers only its bytes; all
 *                       zero: not known, the block counts as changed)
 *   end     16          XXH3-128 of every byte before it
 *
 * DISK.map.cycle, format version 1, written when a cycle changed no
 * block, so that an empty cycle costs a small file instead of the whole
 * map:
 *
 *   0       8           magic "RDMAPCYC"
 *   8       4           version (1)
 *   12      4           reserved, zero
 *   16      8           the cycle field of the map it speaks for
 *   24      16          the trailer checksum of that map
 *   40      8           cycle: the acknowledged cycle that map's digests
 *                       also describe (nothing changed since its own)
 *   48      16          XXH3-128 of the 48 bytes before it
 *
 * DISK.map.next, while a cycle runs: the digests that cycle changed, when
 * there are too many to keep in memory (16 bytes per block at the block's
 * index, zero where the cycle changed nothing; a sparse file).  Never read
 * after a restart.
 *
 * Why a crash never leaves a block marked clean that the replica lacks
 * (P1):
 *
 *   - the map is only ever replaced whole, atomically (DISK.map.tmp,
 *     fsync, rename, fsync of the directory), and only after the
 *     replica's ACK: until then the old digests stay, so a block the
 *     failed cycle read is compared with its old digest and sent again;
 *   - a crash between the ACK and the rename leaves the old map, whose
 *     cycle is older than the replica's: the state then proves nothing
 *     (trk_proven()), and the next cycle compares the whole disk with the
 *     replica (a resync) or sends it whole (tracker.c, begin());
 *   - a cycle file counts only for the very map it names (its cycle and
 *     checksum), and says only that the map's digests still hold at a
 *     later cycle; it is replaced atomically.  A missing, damaged or
 *     stale one (a newer map was renamed in: it is removed first, and a
 *     stale one names another map anyway) leaves the map's own cycle,
 *     which is older than the replica's: the same, never a block skipped;
 *   - a map or cycle file that fails any check is treated as lost (the
 *     tracker then cannot prove what changed and sends every block).
 *
 * Memory: the map is read, compared and rewritten in windows of
 * BM_WINDOW digests; a cycle's changes are held in memory up to
 * BM_CHANGES_MEM of them and go to DISK.map.next beyond, so what a disk
 * costs in memory does not depend on its size or on the size of a cycle.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockmap.h"
#include "buf.h"
#include "err.h"
#include "fault.h"
#include "util.h"
#include "xmalloc.h"

#define BM_MAGIC	"RDBLKMAP"
#define BM_VERSION	1
#define BM_HDR		64
#define CYC_MAGIC	"RDMAPCYC"
#define CYC_VERSION	1
#define CYC_LEN		64
#define BM_WINDOW	16384u		/* digests read or written at once */
#define BM_CHANGES_MEM	16384u		/* changes held before DISK.map.next */

struct bm_file {
	int		 fd;
	uint32_t	 block_size;
	uint64_t	 disk_size;
	uint64_t	 map_cycle;	/* the map's own */
	uint64_t	 cycle;		/* the map's, or its cycle file's */
	uint64_t	 nblocks;
	struct digest	 sum;		/* the map's trailer */
	struct digest	*win;		/* win_n digests from win_first */
	uint64_t	 win_first;
	size_t		 win_n;
};

struct bm_change {
	uint64_t	 idx;
	uint64_t	 seq;		/* later ones win */
	struct digest	 d;
};

struct bm_changes {
	char		*path;		/* DISK.map.next */
	uint64_t	 nblocks;
	uint64_t	 count;		/* bm_changes_set() calls */
	struct bm_change *v;		/* in memory, while fd < 0 */
	size_t		 n;
	size_t		 cap;
	int		 fd;		/* the spill file, once opened */
	struct digest	*win;		/* its write-back window */
	uint64_t	 win_first;
	size_t		 win_n;
	int		 win_dirty;
};

uint64_t
bm_nblocks(uint64_t size, uint32_t block_size)
{
	return size / block_size + (size % block_size != 0);
}

void
bm_init(struct blockmap *bm, uint32_t block_size, uint64_t disk_size)
{
	bm->block_size = block_size;
	bm->disk_size = disk_size;
	bm->cycle = 0;
	bm->nblocks = bm_nblocks(disk_size, block_size);
	bm->d = xcalloc(bm->nblocks, sizeof(*bm->d));
}

void
bm_free(struct blockmap *bm)
{
	free(bm->d);
	bm->d = NULL;
	bm->nblocks = 0;
}

void
bm_copy(struct blockmap *dst, const struct blockmap *src)
{
	*dst = *src;
	dst->d = xcalloc(src->nblocks, sizeof(*dst->d));
	if (src->nblocks)
		memcpy(dst->d, src->d, src->nblocks * sizeof(*dst->d));
}

void
bm_resize(struct blockmap *bm, uint64_t disk_size)
{
	uint64_t n = bm_nblocks(disk_size, bm->block_size);
	uint64_t old_n = bm->nblocks, old_size = bm->disk_size;

	bm->d = xreallocarray(bm->d, n ? n : 1, sizeof(*bm->d));
	if (n > old_n)
		memset(bm->d + old_n, 0, (n - old_n) * sizeof(*bm->d));
	bm->nblocks = n;
	bm->disk_size = disk_size;
	if (disk_size == old_size)
		return;
	/* A last block whose length changes no longer has a valid digest:
	 * the old one's (growing) or the new one's (shrinking). */
	if (old_n > 0 && old_n - 1 < n)
		memset(&bm->d[old_n - 1], 0, sizeof(*bm->d));
	if (n > 0 && disk_size % bm->block_size != 0)
		memset(&bm->d[n - 1], 0, sizeof(*bm->d));
}


static char *
cycle_path(const char *map_path)
{
	return xasprintf("%s.cycle", map_path);
}

/* The header of a map, parsed and checked against the file's length. */
static int
parse_header(const uint8_t *p, uint64_t len, struct blockmap *bm)
{
	struct rbuf b;
	uint8_t magic[8];
	uint32_t version, block_size;
	uint64_t disk_size, cycle, nblocks;

	if (len < BM_HDR + DIGEST_LEN)
		return RD_ERR_CORRUPT;
	rb_init(&b, p, BM_HDR);
	if (rb_get_bytes(&b, magic, 8) != 0 || memcmp(magic, BM_MAGIC, 8) != 0)
		return RD_ERR_CORRUPT;
	if (rb_get_u32(&b, &version) != 0)
		return RD_ERR_CORRUPT;
	if (version != BM_VERSION)
		return RD_ERR_VERSION;
	if (rb_get_u32(&b, &block_size) != 0 || rb_get_u64(&b, &disk_size) ||
	    rb_get_u64(&b, &cycle) != 0 || rb_get_u64(&b, &nblocks) != 0)
		return RD_ERR_CORRUPT;
	if (block_size < 4096 || (block_size & (block_size - 1)) != 0 ||
	    nblocks != bm_nblocks(disk_size, block_size) ||
	    nblocks > (len - BM_HDR - DIGEST_LEN) / DIGEST_LEN ||
	    len != BM_HDR + nblocks * DIGEST_LEN + DIGEST_LEN)
		return RD_ERR_CORRUPT;
	bm->block_size = block_size;
	bm->disk_size = disk_size;
	bm->cycle = cycle;
	bm->nblocks = nblocks;
	bm->d = NULL;
	return 0;
}

static void
put_header(uint8_t *p, uint32_t block_size, uint64_t disk_size,
    uint64_t cycle)
{
	struct wbuf b;

	wb_init(&b);
	wb_put_bytes(&b, BM_MAGIC, 8);
	wb_put_u32(&b, BM_VERSION);
	wb_put_u32(&b, block_size);
	wb_put_u64(&b, disk_size);
	wb_put_u64(&b, cycle);
	wb_put_u64(&b, bm_nblocks(disk_size, block_size));
	memset(p, 0, BM_HDR);
	memcpy(p, b.p, b.len);
	wb_free(&b);
}

/*
 * The cycle a cycle file adds to the map f: f->map_cycle when it is
 * missing, damaged, or speaks for another map.
 */
static uint64_t
read_cycle_file(const char *map_path, const struct bm_file *f)
{
	char *path = cycle_path(map_path);
	uint8_t *data = NULL;
	size_t len = 0;
	uint64_t cycle = f->map_cycle, map_cycle, c;
	uint32_t version;
	struct digest sum, want;
	uint8_t magic[8];
	struct rbuf b;

	if (util_read_file(path, 4096, &data, &len) != 0 || len != CYC_LEN)
		goto out;
	digest_block(data, CYC_LEN - DIGEST_LEN, &sum);
	if (memcmp(sum.b, data + CYC_LEN - DIGEST_LEN, DIGEST_LEN) != 0)
		goto out;
	rb_init(&b, data, CYC_LEN - DIGEST_LEN);
	if (rb_get_bytes(&b, magic, 8) != 0 ||
	    memcmp(magic, CYC_MAGIC, 8) != 0 ||
	    rb_get_u32(&b, &version) != 0 || version != CYC_VERSION ||
	    rb_get_u32(&b, &version) != 0 || rb_get_u64(&b, &map_cycle) != 0 ||
	    rb_get_bytes(&b, want.b, DIGEST_LEN) != 0 ||
	    rb_get_u64(&b, &c) != 0)
		goto out;
	if (map_cycle == f->map_cycle && digest_equal(&want, &f->sum) &&
	    c >= f->map_cycle)
		cycle = c;
out:
	free(data);
	free(path);
	return cycle;
}

int
bm_open(const char *path, struct bm_file **out)
{
	struct bm_file *f = xcalloc(1, sizeof(*f));
	uint8_t hdr[BM_HDR], *buf = NULL;
	struct blockmap h;
	struct stat st;
	XXH3_state_t hs;
	XXH128_canonical_t c;
	int r;

	f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (f->fd < 0) {
		r = errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
		goto out;
	}
	if (fstat(f->fd, &st) != 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	r = RD_ERR_CORRUPT;
	if (!S_ISREG(st.st_mode) || st.st_size < BM_HDR + DIGEST_LEN ||
	    util_pread_full(f->fd, hdr, BM_HDR, 0) != 0)
		goto out;
	if ((r = parse_header(hdr, (uint64_t)st.st_size, &h)) != 0)
		goto out;
	/* The whole file is checked once here, in windows; later reads come
	 * from the same file (this descriptor), which only we write. */
	uint64_t body = (uint64_t)st.st_size - DIGEST_LEN;
	size_t chunk = BM_WINDOW * DIGEST_LEN;
	buf = xmalloc(chunk);
	XXH3_128bits_reset(&hs);
	for (uint64_t off = 0; off < body; off += chunk) {
		size_t n = body - off < chunk ? (size_t)(body - off) : chunk;
		if (util_pread_full(f->fd, buf, n, (off_t)off) != 0) {
			r = RD_ERR_CORRUPT;
			goto out;
		}
		XXH3_128bits_update(&hs, buf, n);
	}
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&hs));
	if (util_pread_full(f->fd, f->sum.b, DIGEST_LEN, (off_t)body) != 0 ||
	    memcmp(c.digest, f->sum.b, DIGEST_LEN) != 0) {
		r = RD_ERR_CORRUPT;
		goto out;
	}
	f->block_size = h.block_size;
	f->disk_size = h.disk_size;
	f->map_cycle = h.cycle;
	f->nblocks = h.nblocks;
	f->cycle = read_cycle_file(path, f);
	r = 0;
out:
	free(buf);
	if (r != 0) {
		bm_close(f);
		f = NULL;
	}
	*out = f;
	return r;
}

void
bm_close(struct bm_file *f)
{
	if (f == NULL)
		return;
	if (f->fd >= 0)
		close(f->fd);
	free(f->win);
	free(f);
}

uint32_t bm_file_block_size(const struct bm_file *f) { return f->block_size; }
uint64_t bm_file_disk_size(const struct bm_file *f) { return f->disk_size; }
uint64_t bm_file_cycle(const struct bm_file *f) { return f->cycle; }
uint64_t bm_file_nblocks(const struct bm_file *f) { return f->nblocks; }

/* Read digests [first, first + n) of the map, zero past its end. */
static int
file_read(struct bm_file *f, uint64_t first, size_t n, struct digest *out)
{
	size_t have = first >= f->nblocks ? 0 : f->nblocks - first < n ?
	    (size_t)(f->nblocks - first) : n;

	memset(out + have, 0, (n - have) * sizeof(*out));
	if (have == 0)
		return 0;
	int r = util_pread_full(f->fd, out, have * DIGEST_LEN,
	    (off_t)(BM_HDR + first * DIGEST_LEN));
	/* The file was checked whole when opened: short now, it was cut
	 * under us. */
	return r == RD_ERR_TRUNCATED ? RD_ERR_CORRUPT : r;
}

int
bm_file_read(struct bm_file *f, uint64_t first, size_t n, struct digest *out)
{
	return file_read(f, first, n, out);
}

void
bm_file_idle(struct bm_file *f)
{
	if (f == NULL)
		return;
	free(f->win);
	f->win = NULL;
	f->win_n = 0;
}

int
bm_file_get(struct bm_file *f, uint64_t idx, struct digest *out)
{
	int r;

	if (idx >= f->nblocks) {
		memset(out, 0, sizeof(*out));
		return 0;
	}
	if (f->win_n == 0 || idx < f->win_first ||
	    idx - f->win_first >= f->win_n) {
		/* A small disk's window is the disk: hundreds of VMs
		 * scanning at once must not hold BM_WINDOW each. */
		size_t wn = f->nblocks < BM_WINDOW ? (size_t)f->nblocks :
		    BM_WINDOW;
		uint64_t first = idx - idx % BM_WINDOW;
		if (f->win == NULL)
			f->win = xcalloc(wn, sizeof(*f->win));
		f->win_n = 0;
		if ((r = file_read(f, first, wn, f->win)) != 0)
			return r;
		f->win_first = first;
		f->win_n = wn;
	}
	*out = f->win[idx - f->win_first];
	return 0;
}

/* --- a cycle's changes --------------------------------------------------- */

struct bm_changes *
bm_changes_new(const char *map_path, uint64_t nblocks)
{
	struct bm_changes *c = xcalloc(1, sizeof(*c));

	c->path = xasprintf("%s.next", map_path);
	c->nblocks = nblocks;
	c->fd = -1;
	unlink(c->path);	/* a crashed cycle's: never read */
	return c;
}

void
bm_changes_free(struct bm_changes *c)
{
	if (c == NULL)
		return;
	if (c->fd >= 0) {
		close(c->fd);
		unlink(c->path);
	}
	free(c->path);
	free(c->v);
	free(c->win);
	free(c);
}

uint64_t
bm_changes_count(const struct bm_changes *c)
{
	return c->count;
}

static int
spill_flush(struct bm_changes *c)
{
	if (!c->win_dirty || c->win_n == 0)
		return 0;
	c->win_dirty = 0;
	return util_pwrite_full(c->fd, c->win, c->win_n * DIGEST_LEN,
	    (off_t)(c->win_first * DIGEST_LEN));
}

/* Make the spill file's window hold idx. */
static int
spill_window(struct bm_changes *c, uint64_t idx)
{
	int r;

	if (c->win_n != 0 && idx >= c->win_first &&
	    idx - c->win_first < c->win_n)
		return 0;
	if ((r = spill_flush(c)) != 0)
		return r;
	uint64_t first = idx - idx % BM_WINDOW;
	size_t n = c->nblocks - first < BM_WINDOW ?
	    (size_t)(c->nblocks - first) : BM_WINDOW;
	c->win_n = 0;
	if ((r = util_pread_full(c->fd, c->win, n * DIGEST_LEN,
	    (off_t)(first * DIGEST_LEN))) != 0)
		return r;
	c->win_first = first;
	c->win_n = n;
	return 0;
}

static int
spill_set(struct bm_changes *c, uint64_t idx, const struct digest *d)
{
	int r = spill_window(c, idx);
	if (r == 0) {
		c->win[idx - c->win_first] = *d;
		c->win_dirty = 1;
	}
	return r;
}

/* Too many changes for memory: move them into DISK.map.next. */
static int
spill_open(struct bm_changes *c)
{
	int r;

	c->fd = open(c->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC |
	    O_NOFOLLOW, 0600);
	if (c->fd < 0)
		return RD_ERR_SYSTEM;
	if (ftruncate(c->fd, (off_t)(c->nblocks * DIGEST_LEN)) != 0)
		return RD_ERR_SYSTEM;
	c->win = xcalloc(BM_WINDOW, sizeof(*c->win));
	for (size_t i = 0; i < c->n; i++)
		if ((r = spill_set(c, c->v[i].idx, &c->v[i].d)) != 0)
			return r;
	c->n = 0;
	free(c->v);
	c->v = NULL;
	c->cap = 0;
	return 0;
}

int
bm_changes_set(struct bm_changes *c, uint64_t idx, const struct digest *d)
{
	int r;

	if (idx >= c->nblocks)
		return RD_ERR_RANGE;
	c->count++;
	if (c->fd < 0 && c->n == BM_CHANGES_MEM &&
	    (r = spill_open(c)) != 0)
		return r;
	if (c->fd >= 0)
		return spill_set(c, idx, d);
	if (c->n == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 256;
		c->v = xreallocarray(c->v, c->cap, sizeof(*c->v));
	}
	c->v[c->n].idx = idx;
	c->v[c->n].seq = c->count;
	c->v[c->n].d = *d;
	c->n++;
	return 0;
}

static int
change_cmp(const void *a, const void *b)
{
	const struct bm_change *x = a, *y = b;
	if (x->idx != y->idx)
		return x->idx < y->idx ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* --- writing a map ---------------------------------------------------------- */

/*
 * Write the map at path whole and atomically, its digests from fill in
 * windows.  A cycle file of the map it replaces goes first: it speaks
 * for that map only.  The new map's trailer checksum into *sum.
 */
static int
write_map(const char *path, uint32_t block_size, uint64_t disk_size,
    uint64_t cycle, bm_fill_fn fill, void *arg, struct digest *sum)
{
	char *tmp = xasprintf("%s.tmp", path), *cyc = cycle_path(path);
	uint64_t nblocks = bm_nblocks(disk_size, block_size);
	struct digest *win = xcalloc(BM_WINDOW, sizeof(*win));
	uint8_t hdr[BM_HDR];
	XXH3_state_t hs;
	XXH128_canonical_t c;
	int fd, r;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
	    0600);
	if (fd < 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	XXH3_128bits_reset(&hs);
	put_header(hdr, block_size, disk_size, cycle);
	XXH3_128bits_update(&hs, hdr, BM_HDR);
	if ((r = util_write_full(fd, hdr, BM_HDR)) != 0)
		goto out;
	for (uint64_t first = 0; first < nblocks; first += BM_WINDOW) {
		size_t n = nblocks - first < BM_WINDOW ?
		    (size_t)(nblocks - first) : BM_WINDOW;
		if ((r = fill(arg, first, n, win)) != 0)
			goto out;
		XXH3_128bits_update(&hs, win, n * DIGEST_LEN);
		if ((r = util_write_full(fd, win, n * DIGEST_LEN)) != 0)
			goto out;
	}
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&hs));
	memcpy(sum->b, c.digest, DIGEST_LEN);
	if ((r = util_write_full(fd, sum->b, DIGEST_LEN)) != 0)
		goto out;
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		r = RD_ERR_SYSTEM;
		goto out;
	}
	fd = -1;
	if (unlink(cyc) != 0 && errno != ENOENT) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	fault_point("primary-map-before-rename");
	if (rename(tmp, path) != 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	r = util_fsync_parent(path);
out:
	if (fd >= 0)
		close(fd);
	if (r != 0) {
		int saved = errno;
		unlink(tmp);
		errno = saved;
	}
	free(win);
	free(tmp);
	free(cyc);
	return r;
}

static int
fill_array(void *arg, uint64_t first, size_t n, struct digest *out)
{
	const struct blockmap *bm = arg;
	memcpy(out, bm->d + first, n * sizeof(*out));
	return 0;
}

int
bm_save(const char *path, const struct blockmap *bm)
{
	struct digest sum;
	return write_map(path, bm->block_size, bm->disk_size, bm->cycle,
	    fill_array, (void *)bm, &sum);
}

int
bm_save_from(const char *path, uint32_t block_size, uint64_t disk_size,
    uint64_t cycle, bm_fill_fn fill, void *arg)
{
	struct digest sum;
	return write_map(path, block_size, disk_size, cycle, fill, arg, &sum);
}

int
bm_load(const char *path, struct blockmap *bm)
{
	struct bm_file *f;
	int r;

	if ((r = bm_open(path, &f)) != 0)
		return r;
	bm->block_size = f->block_size;
	bm->disk_size = f->disk_size;
	bm->cycle = f->cycle;
	bm->nblocks = f->nblocks;
	bm->d = xcalloc(f->nblocks ? f->nblocks : 1, sizeof(*bm->d));
	for (uint64_t i = 0; i < f->nblocks && r == 0; i += BM_WINDOW)
		r = file_read(f, i, f->nblocks - i < BM_WINDOW ?
		    (size_t)(f->nblocks - i) : BM_WINDOW, bm->d + i);
	bm_close(f);
	if (r != 0)
		bm_free(bm);
	return r;
}

/* The new map of a commit: the old one's digests (none when reset or
 * unknown), the old last block's dropped if its length changed, and the
 * cycle's changes over them. */
struct merge {
	struct bm_file		*old;
	struct bm_changes	*ch;
	uint64_t		 drop;	/* a digest no longer valid, or ~0 */
	size_t			 pos;	/* in ch->v, sorted */
};

static int
fill_merge(void *arg, uint64_t first, size_t n, struct digest *out)
{
	struct merge *m = arg;
	struct bm_changes *c = m->ch;
	int r;

	if (m->old != NULL) {
		if ((r = file_read(m->old, first, n, out)) != 0)
			return r;
	} else {
		memset(out, 0, n * sizeof(*out));
	}
	if (m->drop >= first && m->drop - first < n)
		memset(&out[m->drop - first], 0, sizeof(*out));
	if (c->fd >= 0) {
		/* The spill file holds every change, zero where none. */
		if ((r = spill_window(c, first)) != 0)
			return r;
		for (size_t i = 0; i < n; i++) {
			static const struct digest none;
			if (!digest_equal(&c->win[i], &none))
				out[i] = c->win[i];
		}
		return 0;
	}
	while (m->pos < c->n && c->v[m->pos].idx < first + n) {
		out[c->v[m->pos].idx - first] = c->v[m->pos].d;
		m->pos++;
	}
	return 0;
}

int
bm_commit(const char *path, struct bm_file **fp, uint32_t block_size,
    uint64_t disk_size, uint64_t cycle, struct bm_changes *ch, int reset)
{
	struct bm_file *f = *fp, *nf;
	struct digest sum;
	int r;

	if (f != NULL && !reset && ch->count == 0 &&
	    f->block_size == block_size && f->disk_size == disk_size) {
		/* Nothing changed: the map stands, at a later cycle. */
		char *cyc = cycle_path(path);
		struct wbuf b;
		wb_init(&b);
		wb_put_bytes(&b, CYC_MAGIC, 8);
		wb_put_u32(&b, CYC_VERSION);
		wb_put_u32(&b, 0);
		wb_put_u64(&b, f->map_cycle);
		wb_put_bytes(&b, f->sum.b, DIGEST_LEN);
		wb_put_u64(&b, cycle);
		digest_block(b.p, b.len, &sum);
		wb_put_bytes(&b, sum.b, DIGEST_LEN);
		r = util_write_atomic(cyc, b.p, b.len);
		wb_free(&b);
		free(cyc);
		if (r == 0)
			f->cycle = cycle;
		return r;
	}

	struct merge m = { .old = reset || f == NULL ||
	    f->block_size != block_size ? NULL : f, .ch = ch, .drop = ~(uint64_t)0 };
	if (m.old != NULL && disk_size != f->disk_size && f->nblocks > 0)
		m.drop = f->nblocks - 1;
	if (ch->fd < 0 && ch->n > 0)
		qsort(ch->v, ch->n, sizeof(*ch->v), change_cmp);
	else if ((r = spill_flush(ch)) != 0)
		return r;
	if ((r = write_map(path, block_size, disk_size, cycle, fill_merge, &m,
	    &sum)) != 0)
		return r;
	nf = xcalloc(1, sizeof(*nf));
	nf->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (nf->fd < 0) {
		free(nf);
		return RD_ERR_SYSTEM;
	}
	nf->block_size = block_size;
	nf->disk_size = disk_size;
	nf->map_cycle = nf->cycle = cycle;
	nf->nblocks = bm_nblocks(disk_size, block_size);
	nf->sum = sum;
	bm_close(f);
	*fp = nf;
	return 0;
}
