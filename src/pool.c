/*
 * pool.c — shared working memory (pool.h).
 *
 * Few kinds and few free ones of each: small arrays under one mutex.
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"
#include "pool.h"

#define KEPT_BUFS	(4 * POOL_KEEP)		/* free buffers, all sizes */
#define KEPT_CCTX	(2 * POOL_KEEP)		/* a produce job takes two */
#define KEPT_DCTX	POOL_KEEP

struct kept_buf {
	void	*p;
	size_t	 size;		/* as asked for */
};

static pthread_mutex_t	 pool_mu = PTHREAD_MUTEX_INITIALIZER;
static struct kept_buf	 bufs[KEPT_BUFS];
static size_t		 nbufs;
static ZSTD_CCtx	*cctxs[KEPT_CCTX];
static size_t		 ncctx;
static ZSTD_DCtx	*dctxs[KEPT_DCTX];
static size_t		 ndctx;
static struct pool_stats out;	/* the *_out counts */

static size_t
mapped_len(size_t size)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	return (size + page - 1) / page * page;
}

void *
pool_buf_get(size_t size)
{
	void *p = NULL;

	pthread_mutex_lock(&pool_mu);
	for (size_t i = 0; i < nbufs; i++)
		if (bufs[i].size == size) {
			p = bufs[i].p;
			bufs[i] = bufs[--nbufs];
			break;
		}
	out.bufs_out++;
	out.bytes_out += size;
	pthread_mutex_unlock(&pool_mu);
	if (p != NULL)
		return p;
	p = mmap(NULL, mapped_len(size), PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		fatal("mmap of %zu bytes", size);
	return p;
}

void
pool_buf_put(void *p, size_t size)
{
	size_t same = 0;

	if (p == NULL)
		return;
	pthread_mutex_lock(&pool_mu);
	out.bufs_out--;
	out.bytes_out -= size;
	for (size_t i = 0; i < nbufs; i++)
		same += bufs[i].size == size;
	if (same < POOL_KEEP && nbufs < KEPT_BUFS) {
		bufs[nbufs].p = p;
		bufs[nbufs].size = size;
		nbufs++;
		p = NULL;
	}
	pthread_mutex_unlock(&pool_mu);
	if (p != NULL)
		munmap(p, mapped_len(size));
}

ZSTD_CCtx *
pool_cctx_get(void)
{
	ZSTD_CCtx *c = NULL;

	pthread_mutex_lock(&pool_mu);
	if (ncctx > 0)
		c = cctxs[--ncctx];
	out.cctx_out++;
	pthread_mutex_unlock(&pool_mu);
	if (c == NULL && (c = ZSTD_createCCtx()) == NULL)
		fatalx("out of memory (a compression context)");
	return c;
}

void
pool_cctx_put(ZSTD_CCtx *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&pool_mu);
	out.cctx_out--;
	if (ncctx < KEPT_CCTX) {
		cctxs[ncctx++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&pool_mu);
	ZSTD_freeCCtx(c);
}

ZSTD_DCtx *
pool_dctx_get(void)
{
	ZSTD_DCtx *c = NULL;

	pthread_mutex_lock(&pool_mu);
	if (ndctx > 0)
		c = dctxs[--ndctx];
	out.dctx_out++;
	pthread_mutex_unlock(&pool_mu);
	if (c == NULL && (c = ZSTD_createDCtx()) == NULL)
		fatalx("out of memory (a decompression context)");
	return c;
}

void
pool_dctx_put(ZSTD_DCtx *c)
{
	if (c == NULL)
		return;
	/* A frame left half decoded must not reach the next user. */
	ZSTD_DCtx_reset(c, ZSTD_reset_session_only);
	pthread_mutex_lock(&pool_mu);
	out.dctx_out--;
	if (ndctx < KEPT_DCTX) {
		dctxs[ndctx++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&pool_mu);
	ZSTD_freeDCtx(c);
}

void
pool_stats(struct pool_stats *st)
{
	pthread_mutex_lock(&pool_mu);
	*st = out;
	st->bufs_kept = nbufs;
	st->bytes_kept = 0;
	for (size_t i = 0; i < nbufs; i++)
		st->bytes_kept += bufs[i].size;
	st->cctx_kept = ncctx;
	st->dctx_kept = ndctx;
	pthread_mutex_unlock(&pool_mu);
}

void
pool_trim(void)
{
	pthread_mutex_lock(&pool_mu);
	for (size_t i = 0; i < nbufs; i++)
		munmap(bufs[i].p, mapped_len(bufs[i].size));
	nbufs = 0;
	for (size_t i = 0; i < ncctx; i++)
		ZSTD_freeCCtx(cctxs[i]);
	ncctx = 0;
	for (size_t i = 0; i < ndctx; i++)
		ZSTD_freeDCtx(dctxs[i]);
	ndctx = 0;
	pthread_mutex_unlock(&pool_mu);
}
