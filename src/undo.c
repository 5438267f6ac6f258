/*
 * undo.c — undo segments (STORAGE/VM/.undo/CYCLE.undo).
 *
 * Format version 2, integers big-endian:
 *
 *   header
 *     8      magic "RDUNDOSG"
 *     4      version (2; version 1 is still read, see below)
 *     8      cycle whose overwrites this segment undoes
 *     2      ndisks (1..UNDO_MAX_DISKS)
 *     8*n    each disk's size before the cycle
 *   records, any number
 *     1      type: 1 = DATA, 2 = ZERO, 3 = ZSTD, 4 = CLONE
 *     2      disk index (< ndisks)
 *     8      offset
 *     4      length of the old content (DATA, ZSTD, CLONE:
 *            1..UNDO_MAX_DATA; ZERO: >= 1);
 *            offset + length <= the disk's old size
 *     DATA:  length bytes, the old content, as it was
 *     ZSTD:  4  clen (1..length-1), then clen bytes of zstd frames that
 *               decompress to exactly length bytes (never more: the
 *               decompression buffer is length bytes)
 *     CLONE: 16 XXH3-128 of the old content
 *            4  pad (0..UNDO_MAX_PAD-1), pad zero bytes, then length
 *               bytes of old content, placed so that they start on a
 *               file system block (FICLONERANGE from the image)
 *   trailer
 *     1      type 0xFF
 *     8      number of records
 *     16     XXH3-128 of every byte of the file before this field,
 *            except the content of CLONE records
 *
 * Version 1 is the same with DATA and ZERO records only.
 *
 * Old content that compresses (zstd level 1, each record alone, up to
 * UNDO_CHUNK of contiguous old content: on the bench workload 1 MiB
 * frames gain 2 % over 64 KiB ones, level 3 gains 2-4 % more for 30 %
 * more CPU) is stored as ZSTD if that saves at least an eighth; the rest
 * is stored raw.  Where the segment's file system clones ranges (XFS
 * reflink=1, btrfs), old content that does not compress is cloned from
 * the image instead of written (CLONE): it costs no write, and once the
 * image is overwritten the blocks belong to the segment alone, so it
 * takes the space a raw copy would, plus the pad to the next block.
 * Content that compresses still goes through zstd (less room than the
 * clone), so the clone path reads the old content for the decision.
 * Cloning everything unread (UNDO_CLONE_ALL) costs no read and no CPU
 * but keeps the history at the raw size: 100 cycles of 1 % of a 2 GiB
 * image (tools/bench-history, XFS) keep 2.03 GB of raw copies (format
 * 1), 0.94 GB compressed, 0.98 GB compressed and cloned, 2.15 GB all
 * cloned, against 2.14 GB that btrfs snapshots of the same writes take
 * beside the image: the store uses compressed-and-cloned.
 *
 * The content of a CLONE record is outside the trailer's checksum, so
 * that the segment is written in one pass; its own digest (inside) is
 * taken from the content read for the compression decision, and every
 * check pass reads the content back and compares.
 *
 * A segment is written as NAME.tmp and renamed into place only once
 * complete and fsynced (cloned ranges too: the fsync makes the clones
 * durable), so a segment under its final name is whole.  Segments are
 * never symbolic links: every open refuses one.  It is read twice when
 * applied: once to check it (every ZSTD record is decompressed, every
 * CLONE record's content read and hashed), once to write.  CLONE records are cloned back into the image where the file
 * system can, and copied otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <zstd.h>

#include "buf.h"
#include "digest.h"
#include "err.h"
#include "fault.h"
#include "log.h"
#include "undo.h"
#include "util.h"
#include "xmalloc.h"

#define UNDO_MAGIC	"RDUNDOSG"
#define UNDO_VERSION	2
#define UNDO_DATA	1
#define UNDO_ZERO	2
#define UNDO_ZSTD	3
#define UNDO_CLONE	4
#define UNDO_END	0xFF
#define UNDO_REC_HDR	(1 + 2 + 8 + 4)
#define UNDO_CHUNK	(1u << 20)
#define UNDO_WBUF	(8u << 20)
#define UNDO_MAX_PAD	(1u << 20)	/* the largest block cloned to */
#define UNDO_ZLEVEL	1

struct undo_writer {
	char		*path;
	char		*tmp;
	int		 fd;
	uint16_t	 ndisks;
	uint64_t	 old_sizes[UNDO_MAX_DISKS];
	uint64_t	 nrecords;
	uint64_t	 written;	/* bytes in the file (flushed) */
	XXH3_state_t	*hs;		/* aligned by XXH3_createState() */
	struct wbuf	 out;		/* buffered output */
	uint8_t		*chunk;
	ZSTD_CCtx	*zc;
	uint8_t		*zbuf;
	size_t		 zcap;
	int		 clone;		/* UNDO_CLONE_* */
	uint32_t	 align;		/* the file system's block */
	int		 faulted;	/* fault points passed */
	/* a ZERO record being extended */
	int		 zero_open;
	uint16_t	 zero_disk;
	uint64_t	 zero_off;
	uint64_t	 zero_len;
	/* a CLONE record being extended */
	int		 clone_open;
	uint16_t	 clone_disk;
	uint64_t	 clone_off;
	uint64_t	 clone_len;
	int		 clone_src;
	uint64_t	 clone_src_off;
	XXH3_state_t	*clone_hs;	/* its content's digest so far */
	int		 clone_hashed;	/* clone_hs has all of it */
};

static int
w_flush(struct undo_writer *w)
{
	if (w->out.len == 0)
		return 0;
	XXH3_128bits_update(w->hs, w->out.p, w->out.len);
	int r = util_pwrite_full(w->fd, w->out.p, w->out.len,
	    (off_t)w->written);
	w->written += w->out.len;
	wb_reset(&w->out);
	if (r == 0 && !(w->faulted & 1)) {
		w->faulted |= 1;
		fault_point("replica-undo-mid-write");
	}
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
	if ((w->hs = XXH3_createState()) == NULL ||
	    (w->clone_hs = XXH3_createState()) == NULL ||
	    (w->zc = ZSTD_createCCtx()) == NULL)
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
	w->zcap = ZSTD_compressBound(UNDO_MAX_DATA);
	w->zbuf = xmalloc(w->zcap);
	w->clone_src = -1;
	*out = w;
	return 0;
}

void
undo_set_clone(struct undo_writer *w, int mode)
{
	struct statfs sf;

	w->clone = UNDO_CLONE_NONE;
	if (mode == UNDO_CLONE_NONE || fstatfs(w->fd, &sf) != 0 ||
	    sf.f_bsize < 512 || (uint64_t)sf.f_bsize > UNDO_MAX_PAD ||
	    (sf.f_bsize & (sf.f_bsize - 1)) != 0)
		return;
	w->align = (uint32_t)sf.f_bsize;
	w->clone = mode;
}

static int
can_clone(const struct undo_writer *w, uint64_t off, uint64_t len,
    uint64_t src_off)
{
	return w->clone != UNDO_CLONE_NONE && off % w->align == 0 &&
	    len % w->align == 0 && src_off % w->align == 0;
}

static void
rec_header(struct undo_writer *w, uint8_t type, uint16_t disk, uint64_t off,
    uint32_t len)
{
	wb_put_u8(&w->out, type);
	wb_put_u16(&w->out, disk);
	wb_put_u64(&w->out, off);
	wb_put_u32(&w->out, len);
	w->nrecords++;
}

static int
close_zero(struct undo_writer *w)
{
	while (w->zero_open && w->zero_len > 0) {
		uint32_t n = w->zero_len > UINT32_MAX ? UINT32_MAX :
		    (uint32_t)w->zero_len;
		rec_header(w, UNDO_ZERO, w->zero_disk, w->zero_off, n);
		w->zero_off += n;
		w->zero_len -= n;
	}
	w->zero_open = 0;
	return w->out.len >= UNDO_WBUF ? w_flush(w) : 0;
}

/* Copy what a clone could not: read it and write it in place. */
static int
copy_in(struct undo_writer *w, int src, uint64_t src_off, uint64_t dst_off,
    uint64_t len)
{
	uint8_t *buf = xmalloc(UNDO_CHUNK);
	int r = 0;

	while (len > 0 && r == 0) {
		size_t n = len < UNDO_CHUNK ? (size_t)len : UNDO_CHUNK;
		if ((r = util_pread_full(src, buf, n, (off_t)src_off)) == 0)
			r = util_pwrite_full(w->fd, buf, n, (off_t)dst_off);
		src_off += n;
		dst_off += n;
		len -= n;
	}
	free(buf);
	return r;
}

/* Errors that say "this file system (or this pair of files) cannot
 * clone": the copy path takes over, nothing is wrong. */
static int
clone_unsupported(int e)
{
	return e == EOPNOTSUPP || e == ENOTTY || e == EXDEV || e == EINVAL ||
	    e == ENOSYS || e == ETXTBSY;
}

/* Hash [off, off+len) of fd into hs, read for it. */
static int
hash_range(XXH3_state_t *hs, int fd, uint64_t off, uint64_t len)
{
	uint8_t *buf = xmalloc(UNDO_CHUNK);
	int r = 0;

	while (len > 0 && r == 0) {
		size_t n = len < UNDO_CHUNK ? (size_t)len : UNDO_CHUNK;
		if ((r = util_pread_full(fd, buf, n, (off_t)off)) == 0)
			XXH3_128bits_update(hs, buf, n);
		off += n;
		len -= n;
	}
	free(buf);
	return r;
}

static int
close_clone(struct undo_writer *w)
{
	int r;

	if (!w->clone_open)
		return 0;
	w->clone_open = 0;
	if (!w->clone_hashed && (r = hash_range(w->clone_hs, w->clone_src,
	    w->clone_src_off, w->clone_len)) != 0)
		return r;
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(w->clone_hs));
	uint64_t at = w->written + w->out.len + UNDO_REC_HDR + DIGEST_LEN + 4;
	uint32_t pad = (uint32_t)((w->align - at % w->align) % w->align);
	rec_header(w, UNDO_CLONE, w->clone_disk, w->clone_off,
	    (uint32_t)w->clone_len);
	wb_put_bytes(&w->out, c.digest, DIGEST_LEN);
	wb_put_u32(&w->out, pad);
	memset(wb_reserve(&w->out, pad), 0, pad);
	w->out.len += pad;
	if ((r = w_flush(w)) != 0)
		return r;
	struct file_clone_range fcr = {
		.src_fd = w->clone_src,
		.src_offset = w->clone_src_off,
		.src_length = w->clone_len,
		.dest_offset = w->written,
	};
	if (ioctl(w->fd, FICLONERANGE, &fcr) != 0) {
		if (!clone_unsupported(errno))
			return RD_ERR_SYSTEM;
		log_debug("%s: cannot clone (%s): copying", w->tmp,
		    strerror(errno));
		w->clone = UNDO_CLONE_NONE;
		if ((r = copy_in(w, w->clone_src, w->clone_src_off, w->written,
		    w->clone_len)) != 0)
			return r;
	} else if (!(w->faulted & 2)) {
		w->faulted |= 2;
		fault_point("replica-undo-after-clone");
	}
	w->written += w->clone_len;
	return 0;
}

static int
close_pending(struct undo_writer *w)
{
	int r;
	if ((r = close_zero(w)) != 0)
		return r;
	return close_clone(w);
}

static int
put_zero(struct undo_writer *w, uint16_t disk, uint64_t off, uint64_t len)
{
	int r;
	if ((r = close_clone(w)) != 0)
		return r;
	if (w->zero_open && (w->zero_disk != disk ||
	    w->zero_off + w->zero_len != off) && (r = close_zero(w)) != 0)
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

/* data: the content, if at hand (else it is read for its digest). */
static int
put_clone(struct undo_writer *w, uint16_t disk, uint64_t off, uint64_t len,
    const uint8_t *data, int src, uint64_t src_off)
{
	int r;
	if ((r = close_zero(w)) != 0)
		return r;
	if (w->clone_open && (w->clone_disk != disk || w->clone_src != src ||
	    w->clone_off + w->clone_len != off ||
	    w->clone_src_off + w->clone_len != src_off ||
	    w->clone_len + len > UNDO_MAX_DATA) && (r = close_clone(w)) != 0)
		return r;
	if (w->clone == UNDO_CLONE_NONE)	/* the close found it cannot */
		return RD_ERR_UNSUPPORTED;
	if (!w->clone_open) {
		w->clone_open = 1;
		w->clone_disk = disk;
		w->clone_off = off;
		w->clone_len = 0;
		w->clone_src = src;
		w->clone_src_off = src_off;
		w->clone_hashed = 1;
		XXH3_128bits_reset(w->clone_hs);
	}
	if (data == NULL)
		w->clone_hashed = 0;
	else if (w->clone_hashed)
		XXH3_128bits_update(w->clone_hs, data, len);
	w->clone_len += len;
	return 0;
}

/* zstd into w->zbuf; the compressed length if it saves an eighth, else 0. */
static size_t
compress(struct undo_writer *w, const uint8_t *data, size_t len)
{
	size_t z = ZSTD_compressCCtx(w->zc, w->zbuf, w->zcap, data, len,
	    UNDO_ZLEVEL);
	if (ZSTD_isError(z) || z == 0 || z > len - len / 8)
		return 0;
	return z;
}

/* Old content as a ZSTD record if clen (in w->zbuf), else raw. */
static int
put_bytes(struct undo_writer *w, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *data, size_t clen)
{
	int r;
	if ((r = close_pending(w)) != 0)
		return r;
	if (clen > 0) {
		rec_header(w, UNDO_ZSTD, disk, off, len);
		wb_put_u32(&w->out, (uint32_t)clen);
		wb_put_bytes(&w->out, w->zbuf, clen);
	} else {
		rec_header(w, UNDO_DATA, disk, off, len);
		wb_put_bytes(&w->out, data, len);
	}
	return w->out.len >= UNDO_WBUF ? w_flush(w) : 0;
}

/*
 * Old content [off, off+len) of disk (len <= UNDO_CHUNK, non-zero), in
 * data, found at src_off of src (src -1: nowhere to clone it from):
 * compressed if it compresses, else cloned where the file system can,
 * else raw.
 */
static int
put_data(struct undo_writer *w, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *data, int src, uint64_t src_off)
{
	size_t clen = compress(w, data, len);
	int r;
	if (clen == 0 && src >= 0 && can_clone(w, off, len, src_off) &&
	    (r = put_clone(w, disk, off, len, data, src, src_off)) !=
	    RD_ERR_UNSUPPORTED)
		return r;
	return put_bytes(w, disk, off, len, data, clen);
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
		if (w->clone == UNDO_CLONE_ALL && can_clone(w, off, n, off)) {
			/* Holes stay ZERO records; the rest is cloned
			 * unread. */
			off_t d = lseek(fd, (off_t)off, SEEK_DATA);
			if ((d < 0 && errno == ENXIO) ||
			    (d >= 0 && (uint64_t)d >= off + n))
				r = put_zero(w, disk, off, n);
			else
				r = put_clone(w, disk, off, n, NULL, fd, off);
			if (r != RD_ERR_UNSUPPORTED) {
				if (r != 0)
					return r;
				off += n;
				len -= n;
				continue;
			}
		}
		if ((r = util_pread_full(fd, w->chunk, n, (off_t)off)) != 0)
			return r;
		if (util_is_zero(w->chunk, n))
			r = put_zero(w, disk, off, n);
		else
			r = put_data(w, disk, off, n, w->chunk, fd, off);
		if (r != 0)
			return r;
		off += n;
		len -= n;
	}
	/* The clone now, not with the next record: the caller may write
	 * the range as soon as this returns. */
	return close_clone(w);
}

static void
w_free(struct undo_writer *w)
{
	if (w->fd >= 0)
		close(w->fd);
	wb_free(&w->out);
	XXH3_freeState(w->hs);
	XXH3_freeState(w->clone_hs);
	ZSTD_freeCCtx(w->zc);
	free(w->zbuf);
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

	if ((r = close_pending(w)) != 0)
		goto out;
	wb_put_u8(&w->out, UNDO_END);
	wb_put_u64(&w->out, w->nrecords);
	if ((r = w_flush(w)) != 0)
		goto out;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(w->hs));
	memcpy(d.b, c.digest, DIGEST_LEN);
	if ((r = util_pwrite_full(w->fd, d.b, DIGEST_LEN,
	    (off_t)w->written)) != 0)
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

int
undo_clone_probe(const char *dir, int src)
{
	char *p = xasprintf("%s/.clone-probe.XXXXXX", dir), *q = NULL;
	int dst = -1, tmp = -1, ok = 0;
	struct statfs sf;
	struct stat sb;

	if ((dst = mkostemp(p, O_CLOEXEC)) < 0)
		goto out;
	unlink(p);
	if (fstatfs(dst, &sf) != 0 || sf.f_bsize < 512 ||
	    (uint64_t)sf.f_bsize > UNDO_MAX_PAD || fstat(src, &sb) != 0)
		goto out;
	struct file_clone_range fcr = {
		.src_fd = src,
		.src_length = (uint64_t)sf.f_bsize,
	};
	if ((uint64_t)sb.st_size < (uint64_t)sf.f_bsize) {
		/* Too small an image: a block of our own, beside it. */
		q = xasprintf("%s/.clone-probe.XXXXXX", dir);
		if ((tmp = mkostemp(q, O_CLOEXEC)) < 0)
			goto out;
		unlink(q);
		uint8_t *blk = xcalloc(1, (size_t)sf.f_bsize);
		blk[0] = 1;
		int r = util_pwrite_full(tmp, blk, (size_t)sf.f_bsize, 0);
		free(blk);
		if (r != 0)
			goto out;
		fcr.src_fd = tmp;
	}
	ok = ioctl(dst, FICLONERANGE, &fcr) == 0;
out:
	if (dst >= 0)
		close(dst);
	if (tmp >= 0)
		close(tmp);
	free(p);
	free(q);
	return ok;
}

/*
 * Walking a segment in buffered reads.  With fds NULL only check it;
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
rd_u32(struct undo_reader *rd, uint32_t *v)
{
	uint8_t b[4];
	int r = rd_bytes(rd, b, 4);
	*v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 |
	    (uint32_t)b[2] << 8 | b[3];
	return r;
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

/*
 * A record handed to a walk's callback: data NULL for ZERO, else the
 * old content; for a CLONE record src is the segment and src_off where
 * the content lies in it (else src is -1).
 */
struct undo_rec {
	uint16_t	 disk;
	uint64_t	 off;
	uint32_t	 len;
	const uint8_t	*data;
	int		 src;
	uint64_t	 src_off;
};

typedef int (*rec_fn)(void *arg, const struct undo_rec *rec);

struct walk {
	int		 sfd;
	uint64_t	 fsize;
	uint16_t	 ndisks;
	const int	*fds;		/* apply (or read, with save) */
	struct undo_writer *save;	/* invert: save what fds hold */
	rec_fn		 fn;		/* or hand each record to fn */
	void		*arg;
	uint64_t	*old_sizes_out;
	int		 noclone;	/* cloning into fds failed once */
	int		(*cancelled)(void *);	/* asked before each record */
	void		*carg;
};

/* The content of a CLONE record into fd at off: cloned back, or copied. */
static int
clone_back(struct walk *wk, int fd, uint64_t src_off, uint64_t off,
    uint32_t len, uint8_t *buf)
{
	if (!wk->noclone) {
		struct file_clone_range fcr = {
			.src_fd = wk->sfd,
			.src_offset = src_off,
			.src_length = len,
			.dest_offset = off,
		};
		if (ioctl(fd, FICLONERANGE, &fcr) == 0)
			return 0;
		if (!clone_unsupported(errno))
			return RD_ERR_SYSTEM;
		wk->noclone = 1;
	}
	int r = util_pread_full(wk->sfd, buf, len, (off_t)src_off);
	if (r == RD_ERR_TRUNCATED)
		return RD_ERR_CORRUPT;
	return r != 0 ? r : util_pwrite_full(fd, buf, len, (off_t)off);
}

static int
zero_range(int fd, uint64_t off, uint64_t len, uint8_t *buf)
{
	int r;
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
	    (off_t)off, (off_t)len) == 0)
		return 0;
	/* No hole punching here: write the zeros. */
	memset(buf, 0, UNDO_MAX_DATA);
	for (uint64_t o = 0; o < len; o += UNDO_MAX_DATA) {
		size_t k = len - o < UNDO_MAX_DATA ? (size_t)(len - o) :
		    UNDO_MAX_DATA;
		if ((r = util_pwrite_full(fd, buf, k, (off_t)(off + o))) != 0)
			return r;
	}
	return 0;
}

static int
walk_run(struct walk *wk)
{
	struct undo_reader rd = { .fd = wk->sfd, .pos = 0, .size = wk->fsize };
	uint8_t hdr[8 + 4 + 8 + 2], *data = NULL, *zin = NULL;
	uint64_t sizes[UNDO_MAX_DISKS], nrec = 0;
	ZSTD_DCtx *zd = NULL;
	struct rbuf b;
	uint16_t n;
	uint32_t version;
	const int *fds = wk->save ? NULL : wk->fds;
	int r;

	XXH3_128bits_reset(&rd.hs);
	if ((r = rd_bytes(&rd, hdr, sizeof(hdr))) != 0)
		return r;
	rb_init(&b, hdr, sizeof(hdr));
	if (memcmp(hdr, UNDO_MAGIC, 8) != 0)
		return RD_ERR_CORRUPT;
	b.off = 8;
	rb_get_u32(&b, &version);
	if (version != 1 && version != UNDO_VERSION)
		return RD_ERR_VERSION;
	b.off += 8;
	rb_get_u16(&b, &n);
	if (n != wk->ndisks || n == 0 || n > UNDO_MAX_DISKS)
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
	if (fds && (r = set_sizes(fds, n, sizes)) != 0)
		return r;
	data = xmalloc(UNDO_MAX_DATA);
	for (;;) {
		uint8_t type, rh[UNDO_REC_HDR - 1], want_clone[DIGEST_LEN];
		struct undo_rec rec = { .src = -1 };
		uint32_t clen = 0, pad = 0;

		if (wk->cancelled != NULL && wk->cancelled(wk->carg)) {
			r = RD_ERR_CANCELLED;
			goto out;
		}
		if ((r = rd_bytes(&rd, &type, 1)) != 0)
			goto out;
		if (type == UNDO_END)
			break;
		if ((type != UNDO_DATA && type != UNDO_ZERO &&
		    type != UNDO_ZSTD && type != UNDO_CLONE) ||
		    (version == 1 && type > UNDO_ZERO)) {
			r = RD_ERR_CORRUPT;
			goto out;
		}
		if ((r = rd_bytes(&rd, rh, sizeof(rh))) != 0)
			goto out;
		rb_init(&b, rh, sizeof(rh));
		rb_get_u16(&b, &rec.disk);
		rb_get_u64(&b, &rec.off);
		rb_get_u32(&b, &rec.len);
		if (rec.disk >= n || rec.len == 0 || rec.off > sizes[rec.disk] ||
		    rec.len > sizes[rec.disk] - rec.off ||
		    (type != UNDO_ZERO && rec.len > UNDO_MAX_DATA)) {
			r = RD_ERR_CORRUPT;
			goto out;
		}
		switch (type) {
		case UNDO_DATA:
			if ((r = rd_bytes(&rd, data, rec.len)) != 0)
				goto out;
			rec.data = data;
			break;
		case UNDO_ZSTD:
			/* Never more out than the record says: the buffer
			 * given to zstd is rec.len bytes. */
			if ((r = rd_u32(&rd, &clen)) != 0)
				goto out;
			if (clen == 0 || clen >= rec.len) {
				r = RD_ERR_CORRUPT;
				goto out;
			}
			if (zin == NULL) {
				zin = xmalloc(UNDO_MAX_DATA);
				if ((zd = ZSTD_createDCtx()) == NULL)
					fatalx("out of memory");
			}
			if ((r = rd_bytes(&rd, zin, clen)) != 0)
				goto out;
			size_t z = ZSTD_decompressDCtx(zd, data, rec.len, zin,
			    clen);
			if (ZSTD_isError(z) || z != rec.len) {
				r = RD_ERR_CORRUPT;
				goto out;
			}
			rec.data = data;
			break;
		case UNDO_CLONE:
			/* The content is outside the trailer's checksum: it
			 * is read and compared with its own digest by every
			 * pass but one that clones it back (after a check). */
			if ((r = rd_bytes(&rd, want_clone, DIGEST_LEN)) != 0 ||
			    (r = rd_u32(&rd, &pad)) != 0)
				goto out;
			if (pad >= UNDO_MAX_PAD) {
				r = RD_ERR_CORRUPT;
				goto out;
			}
			if (pad > 0) {
				uint8_t *p = zin ? zin : data;
				if ((r = rd_bytes(&rd, p, pad)) != 0)
					goto out;
				if (!util_is_zero(p, pad)) {
					r = RD_ERR_CORRUPT;
					goto out;
				}
			}
			if (rec.len > rd.size - rd.pos) {
				r = RD_ERR_CORRUPT;
				goto out;
			}
			rec.src = wk->sfd;
			rec.src_off = rd.pos;
			rd.pos += rec.len;
			if (wk->fn || (!fds && !wk->save)) {
				XXH128_canonical_t got;
				r = util_pread_full(wk->sfd, data, rec.len,
				    (off_t)rec.src_off);
				if (r != 0) {
					r = r == RD_ERR_TRUNCATED ?
					    RD_ERR_CORRUPT : r;
					goto out;
				}
				XXH128_canonicalFromHash(&got,
				    XXH3_128bits(data, rec.len));
				if (memcmp(got.digest, want_clone,
				    DIGEST_LEN) != 0) {
					r = RD_ERR_CORRUPT;
					goto out;
				}
				rec.data = data;
			}
			break;
		}
		if (wk->fn) {
			r = wk->fn(wk->arg, &rec);
		} else if (wk->save) {
			/* The range's content now, before the segment is
			 * applied: what undoes the segment. */
			r = undo_save_range(wk->save, rec.disk,
			    wk->fds[rec.disk], rec.off, rec.len);
		} else if (fds && type == UNDO_CLONE) {
			r = clone_back(wk, fds[rec.disk], rec.src_off, rec.off,
			    rec.len, data);
		} else if (fds && type == UNDO_ZERO) {
			r = zero_range(fds[rec.disk], rec.off, rec.len, data);
		} else if (fds) {
			r = util_pwrite_full(fds[rec.disk], rec.data, rec.len,
			    (off_t)rec.off);
		}
		if (r != 0)
			goto out;
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
	if (rd.pos + DIGEST_LEN != wk->fsize ||
	    (r = util_pread_full(wk->sfd, want, DIGEST_LEN,
	    (off_t)rd.pos)) != 0 || count != nrec ||
	    memcmp(want, c.digest, DIGEST_LEN) != 0) {
		r = RD_ERR_CORRUPT;
		goto out;
	}
	if (wk->old_sizes_out)
		memcpy(wk->old_sizes_out, sizes, n * sizeof(*sizes));
	r = 0;
out:
	ZSTD_freeDCtx(zd);
	free(zin);
	free(data);
	return r;
}

/* Check only (fds NULL), or apply onto fds. */
static int
walk(int sfd, uint64_t fsize, const int *fds, uint16_t ndisks,
    uint64_t *old_sizes_out, struct undo_writer *save)
{
	struct walk wk = { .sfd = sfd, .fsize = fsize, .ndisks = ndisks,
	    .fds = fds, .save = save, .old_sizes_out = old_sizes_out };
	return walk_run(&wk);
}

static int
walk_fn(int sfd, uint64_t fsize, uint16_t ndisks, uint64_t *old_sizes_out,
    rec_fn fn, void *arg)
{
	struct walk wk = { .sfd = sfd, .fsize = fsize, .ndisks = ndisks,
	    .fn = fn, .arg = arg, .old_sizes_out = old_sizes_out };
	return walk_run(&wk);
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
undo_check(const char *path, uint16_t ndisks)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
	off_t end = lseek(fd, 0, SEEK_END);
	int r = end < 0 ? RD_ERR_SYSTEM : walk(fd, (uint64_t)end, NULL,
	    ndisks, NULL, NULL);
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

/* --- compacting ------------------------------------------------------- */

/*
 * A record of a segment written fast (UNDO_CLONE_ALL), again as the
 * store's other writers would: zeros as ZERO, content that compresses as
 * ZSTD, the rest cloned again from the segment (or raw).
 */
struct compact {
	struct undo_writer *w;
	int		(*cancelled)(void *);
	void		*arg;
};

static int
put_compact(void *arg, const struct undo_rec *rec)
{
	struct compact *c = arg;
	struct undo_writer *w = c->w;
	int r = 0;

	if (c->cancelled != NULL && c->cancelled(c->arg))
		return RD_ERR_CANCELLED;

	if (rec->data == NULL)
		return put_zero(w, rec->disk, rec->off, rec->len);
	for (uint32_t k = 0; k < rec->len && r == 0; k += UNDO_CHUNK) {
		uint32_t n = rec->len - k < UNDO_CHUNK ? rec->len - k :
		    UNDO_CHUNK;
		if (util_is_zero(rec->data + k, n))
			r = put_zero(w, rec->disk, rec->off + k, n);
		else
			r = put_data(w, rec->disk, rec->off + k, n,
			    rec->data + k, rec->src, rec->src >= 0 ?
			    rec->src_off + k : 0);
	}
	return r;
}

int
undo_compact(const char *path, uint64_t cycle, const char *out,
    uint64_t *bytes, int (*cancelled)(void *), void *arg)
{
	uint64_t sizes[UNDO_MAX_DISKS];
	struct undo_writer *w = NULL;
	uint8_t hdr[22];
	uint16_t nd;
	off_t end;
	int fd, r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
		return errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
	if ((end = lseek(fd, 0, SEEK_END)) < 0) {
		r = RD_ERR_SYSTEM;
		goto out;
	}
	if ((r = util_pread_full(fd, hdr, sizeof(hdr), 0)) != 0) {
		r = RD_ERR_CORRUPT;
		goto out;
	}
	nd = (uint16_t)(hdr[20] << 8 | hdr[21]);
	/* Checked whole first: its sizes head the new one. */
	struct walk ck = { .sfd = fd, .fsize = (uint64_t)end, .ndisks = nd,
	    .old_sizes_out = sizes, .cancelled = cancelled, .carg = arg };
	if ((r = walk_run(&ck)) != 0 ||
	    (r = undo_create(out, cycle, nd, sizes, &w)) != 0)
		goto out;
	undo_set_clone(w, UNDO_CLONE_RAW);
	struct compact c = { w, cancelled, arg };
	if ((r = walk_fn(fd, (uint64_t)end, nd, NULL, put_compact, &c)) == 0)
		r = undo_finish(w, bytes);
	else
		undo_discard(w);
out:
	close(fd);
	return r;
}

/* --- merging (pruning a point in the middle) -------------------------- */

/*
 * Write [off, off+len) of a record, whose content (NULL for zeros)
 * starts at data, clipped to the old size of its disk.  Content that
 * was cloned (src >= 0, at src_off) is cloned again where it can be.
 */
static int
put_rec(struct undo_writer *w, uint16_t disk, uint64_t off, uint64_t len,
    const uint8_t *data, int src, uint64_t src_off)
{
	uint64_t old = w->old_sizes[disk];
	int r;

	if (off >= old)
		return 0;
	if (len > old - off)
		len = old - off;
	if (data == NULL)
		return put_zero(w, disk, off, len);
	if (src >= 0 && can_clone(w, off, len, src_off) &&
	    (r = put_clone(w, disk, off, len, data, src, src_off)) !=
	    RD_ERR_UNSUPPORTED)
		return r;
	return put_bytes(w, disk, off, (uint32_t)len, data,
	    compress(w, data, (size_t)len));
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
collect_cover(void *arg, const struct undo_rec *rec)
{
	struct merge *m = arg;
	if (m->n == m->cap) {
		m->cap = m->cap ? 2 * m->cap : 256;
		m->cv = xreallocarray(m->cv, m->cap, sizeof(*m->cv));
	}
	m->cv[m->n++] = (struct cover){ rec->disk, rec->off,
	    rec->off + rec->len };
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
put_uncovered(void *arg, const struct undo_rec *rec)
{
	struct merge *m = arg;
	uint64_t off = rec->off, pos = off, end = off + rec->len;
	int r;

	for (size_t i = cover_find(m, rec->disk, off); pos < end; i++) {
		uint64_t gap_end = end;
		if (i < m->n && m->cv[i].disk == rec->disk &&
		    m->cv[i].off < end)
			gap_end = m->cv[i].off > pos ? m->cv[i].off : pos;
		if (gap_end > pos && (r = put_rec(m->w, rec->disk, pos,
		    gap_end - pos, rec->data ? rec->data + (pos - off) : NULL,
		    rec->src, rec->src_off + (pos - off))) != 0)
			return r;
		if (gap_end == end)
			break;
		pos = m->cv[i].end > pos ? m->cv[i].end : pos;
	}
	return 0;
}

static int
put_all(void *arg, const struct undo_rec *rec)
{
	struct merge *m = arg;
	return put_rec(m->w, rec->disk, rec->off, rec->len, rec->data,
	    rec->src, rec->src_off);
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
	 * records past them are undone by the sizes.  Cloned content is
	 * cloned again (from the segments, on the same file system). */
	if ((r = undo_create(out, cycle, nd, sizes, &m.w)) != 0)
		goto out;
	undo_set_clone(m.w, UNDO_CLONE_RAW);
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
