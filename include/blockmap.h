/*
 * blockmap.h — per-block digests of one disk, and their state file.
 *
 * The primary's tracker (any kind) keeps, for each disk, the digest of every
 * block as of the last cycle the replica acknowledged.  The file formats,
 * and why a crash never loses a write, are documented at the top of
 * blockmap.c.
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
 * Load a map whole; RD_ERR_NOT_FOUND if absent, RD_ERR_CORRUPT if its
 * checks fail (bad magic, size, or checksum), RD_ERR_VERSION for a newer
 * format.  Its cycle is the one its cycle file (PATH.cycle) adds, if any.
 */
int	bm_load(const char *path, struct blockmap *bm);
/* Save atomically (temporary file, fsync, rename, fsync directory); a
 * cycle file of the map replaced is removed first. */
int	bm_save(const char *path, const struct blockmap *bm);

/* Fills digests [first, first + n) of a map being written (n is at most
 * a window); 0 or an rd_err. */
typedef int (*bm_fill_fn)(void *arg, uint64_t first, size_t n,
    struct digest *out);
/* bm_save() with the digests from fill, in windows: never held whole. */
int	bm_save_from(const char *path, uint32_t block_size, uint64_t disk_size,
	    uint64_t cycle, bm_fill_fn fill, void *arg);

/*
 * The same file read in windows, never held whole (the tracker's state
 * between cycles).  bm_open() checks the whole file as bm_load() does;
 * the caller owns *out (bm_close()).
 */
struct bm_file;

int	bm_open(const char *path, struct bm_file **out);
void	bm_close(struct bm_file *f);
uint32_t bm_file_block_size(const struct bm_file *f);
uint64_t bm_file_disk_size(const struct bm_file *f);
uint64_t bm_file_cycle(const struct bm_file *f);
uint64_t bm_file_nblocks(const struct bm_file *f);
/* The digest of block idx (zero past the map's end); fastest in
 * increasing order. */
int	bm_file_get(struct bm_file *f, uint64_t idx, struct digest *out);
/* Free the read window until the next bm_file_get() (between cycles). */
void	bm_file_idle(struct bm_file *f);
/* Digests [first, first + n) into out (zero past the map's end). */
int	bm_file_read(struct bm_file *f, uint64_t first, size_t n,
	    struct digest *out);

/*
 * The digests one cycle changed, for a disk of nblocks blocks: in memory
 * while they are few, in PATH.next beyond (removed by bm_changes_free()).
 * A later digest for the same block replaces the earlier one.  An
 * all-zero digest cannot be recorded (it means "none").
 */
struct bm_changes;

struct bm_changes *bm_changes_new(const char *map_path, uint64_t nblocks);
void	bm_changes_free(struct bm_changes *c);
int	bm_changes_set(struct bm_changes *c, uint64_t idx,
	    const struct digest *d);
uint64_t bm_changes_count(const struct bm_changes *c);

/*
 * The replica acknowledged cycle `cycle`: make the map at path describe
 * it.  *f is the map as of the last acknowledged cycle (NULL if unknown);
 * reset: start from no digest at all instead of *f's.  With no change
 * and the same size, only the cycle file is written; otherwise the map
 * is rewritten in windows and replaced atomically.  On success *f is the
 * new map; on failure the files and *f are the old ones.
 */
int	bm_commit(const char *path, struct bm_file **f, uint32_t block_size,
	    uint64_t disk_size, uint64_t cycle, struct bm_changes *c,
	    int reset);

#endif
