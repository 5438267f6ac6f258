/*
 * blockmap.c — the tracker's state file (every tracker keeps one per disk).
 *
 * Format version 1, all integers big-endian:
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
 *                       be short: its digest covers only its bytes)
 *   end     16          XXH3-128 of every byte before it
 *
 * The file is replaced atomically after each acknowledged cycle, so a
 * crash leaves either the old or the new map, never a mix; a file that
 * fails any check is treated as lost (the tracker then cannot prove what
 * changed and sends every block).
 */
#include <stdlib.h>
#include <string.h>

#include "blockmap.h"
#include "buf.h"
#include "err.h"
#include "util.h"
#include "xmalloc.h"

#define BM_MAGIC	"RDBLKMAP"
#define BM_VERSION	1
#define BM_HDR		64

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

int
bm_save(const char *path, const struct blockmap *bm)
{
	struct wbuf b;
	struct digest sum;
	int r;

	wb_init(&b);
	wb_put_bytes(&b, BM_MAGIC, 8);
	wb_put_u32(&b, BM_VERSION);
	wb_put_u32(&b, bm->block_size);
	wb_put_u64(&b, bm->disk_size);
	wb_put_u64(&b, bm->cycle);
	wb_put_u64(&b, bm->nblocks);
	memset(wb_reserve(&b, 24), 0, 24);
	b.len += 24;
	wb_put_bytes(&b, bm->d, bm->nblocks * sizeof(*bm->d));
	digest_block(b.p, b.len, &sum);
	wb_put_bytes(&b, sum.b, DIGEST_LEN);
	r = util_write_atomic(path, b.p, b.len);
	wb_free(&b);
	return r;
}

int
bm_load(const char *path, struct blockmap *bm)
{
	uint8_t *data = NULL, magic[8];
	size_t len;
	struct rbuf b;
	struct digest sum, want;
	uint32_t version, block_size;
	uint64_t disk_size, cycle, nblocks;
	int r;

	/* 2^40 bytes of map is far beyond any disk we could track. */
	if ((r = util_read_file(path, (size_t)1 << 40, &data, &len)) != 0)
		return r;
	r = RD_ERR_CORRUPT;
	if (len < BM_HDR + DIGEST_LEN)
		goto out;
	rb_init(&b, data, len);
	if (rb_get_bytes(&b, magic, 8) != 0 || memcmp(magic, BM_MAGIC, 8) != 0)
		goto out;
	if (rb_get_u32(&b, &version) != 0)
		goto out;
	if (version != BM_VERSION) {
		r = RD_ERR_VERSION;
		goto out;
	}
	if (rb_get_u32(&b, &block_size) != 0 || rb_get_u64(&b, &disk_size) ||
	    rb_get_u64(&b, &cycle) != 0 || rb_get_u64(&b, &nblocks) != 0)
		goto out;
	if (block_size < 4096 || (block_size & (block_size - 1)) != 0 ||
	    nblocks != bm_nblocks(disk_size, block_size) ||
	    nblocks > (len - BM_HDR - DIGEST_LEN) / DIGEST_LEN ||
	    len != BM_HDR + nblocks * DIGEST_LEN + DIGEST_LEN)
		goto out;
	digest_block(data, len - DIGEST_LEN, &sum);
	memcpy(want.b, data + len - DIGEST_LEN, DIGEST_LEN);
	if (!digest_equal(&sum, &want))
		goto out;
	bm->block_size = block_size;
	bm->disk_size = disk_size;
	bm->cycle = cycle;
	bm->nblocks = nblocks;
	bm->d = xcalloc(nblocks, sizeof(*bm->d));
	if (nblocks)
		memcpy(bm->d, data + BM_HDR, nblocks * DIGEST_LEN);
	r = 0;
out:
	free(data);
	return r;
}
