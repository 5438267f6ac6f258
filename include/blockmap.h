/*
 * blockmap.h — per-block digests of one disk, and their state file.
 *
 * The primary's tracker (any kind) keeps, for each disk, the digest of every
 * block as of the last cycle the replica acknowledged.  The file format
 * is documented at the top of blockmap.c.
 */
#ifndef REPLICAD_BLOCKMAP_H
#define REPLICAD_BLOCKMAP_H

#include <stdint.h>

#include "digest.h"

struct blockmap {
	uint32_t	 block_size;
	uint64_t	 disk_size;
	uint64_t	 cycle;		/* cycle these digests describe */
	uint64_t	 nblocks;	/* ceil(disk_size / block_size) */
	struct digest	*d;		/* nblocks entries, owned */
};

/* Blocks needed to cover size bytes. */
uint64_t bm_nblocks(uint64_t size, uint32_t block_size);
/* An empty map (every digest zero) for a disk of disk_size bytes. */
void	bm_init(struct blockmap *bm, uint32_t block_size, uint64_t disk_size);
void	bm_free(struct blockmap *bm);
/* Copy src into dst (dst is overwritten, not freed first). */
void	bm_copy(struct blockmap *dst, const struct blockmap *src);
/* Change the disk size, keeping the digests of the blocks that remain. */
void	bm_resize(struct blockmap *bm, uint64_t disk_size);
/*
 * Load a map; RD_ERR_NOT_FOUND if absent, RD_ERR_CORRUPT if its checks
 * fail (bad magic, size, or checksum), RD_ERR_VERSION for a newer format.
 */
int	bm_load(const char *path, struct blockmap *bm);
/* Save atomically (temporary file, fsync, rename, fsync directory). */
int	bm_save(const char *path, const struct blockmap *bm);

#endif
