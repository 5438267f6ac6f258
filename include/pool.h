/*
 * pool.h — working memory shared by every VM of the host.
 *
 * A cycle needs megabytes while a job reads, compresses or decompresses
 * it (a tracker's read chunk, zstd contexts), and nothing in between.
 * Held per VM, that memory grows with the number of VMs (a host of 500
 * idle VMs held 2 GiB); taken from here when a job starts and given back
 * when it ends, it is bounded by the jobs that run at once (the worker
 * pools, work.h).  A few of each kind stay here for the next job
 * (POOL_KEEP); the rest go back to the system at once.
 *
 * Buffers are mapped apart from the heap (mmap), so that giving one back
 * returns its pages: the heap keeps what it frees.  Thread-safe.
 */
#ifndef REPLICAD_POOL_H
#define REPLICAD_POOL_H

#include <stddef.h>

#include <zstd.h>

#define POOL_KEEP	4	/* free ones kept of each kind (size) */

/* A buffer of size bytes (contents undefined), the caller's until
 * pool_buf_put() with the same size.  Aborts if out of memory. */
void		*pool_buf_get(size_t size);
void		 pool_buf_put(void *p, size_t size);
/* A compression context (its parameters as the last user left them:
 * set them, or use ZSTD_compressCCtx which sets its own), the caller's
 * until pool_cctx_put().  Aborts if out of memory. */
ZSTD_CCtx	*pool_cctx_get(void);
void		 pool_cctx_put(ZSTD_CCtx *c);
/* A decompression context, likewise. */
ZSTD_DCtx	*pool_dctx_get(void);
void		 pool_dctx_put(ZSTD_DCtx *c);

struct pool_stats {
	size_t	 bufs_out, bufs_kept;	/* taken now, free ones kept */
	size_t	 bytes_out, bytes_kept;
	size_t	 cctx_out, cctx_kept;
	size_t	 dctx_out, dctx_kept;
};
void		 pool_stats(struct pool_stats *st);
/* Give every free one back to the system (at exit; tests). */
void		 pool_trim(void);

#endif
