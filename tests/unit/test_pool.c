/*
 * test_pool.c — shared working memory: a buffer given back is handed out
 * again, at most POOL_KEEP free ones of a size stay, other sizes are kept
 * apart, and contexts are reused the same way.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pool.h"

#define BIG	(4u << 20)

static void
test_buffers(void **state)
{
	void *b[POOL_KEEP + 2];
	struct pool_stats st;

	pool_trim();
	for (int i = 0; i < POOL_KEEP + 2; i++) {
		b[i] = pool_buf_get(BIG);
		memset(b[i], i, BIG);		/* writable, whole */
	}
	pool_stats(&st);
	assert_int_equal(st.bufs_out, POOL_KEEP + 2);
	assert_int_equal(st.bytes_out, (size_t)(POOL_KEEP + 2) * BIG);
	assert_int_equal(st.bufs_kept, 0);
	for (int i = 0; i < POOL_KEEP + 2; i++)
		pool_buf_put(b[i], BIG);
	pool_stats(&st);
	assert_int_equal(st.bufs_out, 0);
	assert_int_equal(st.bufs_kept, POOL_KEEP);	/* two went back */
	assert_int_equal(st.bytes_kept, (size_t)POOL_KEEP * BIG);

	/* A kept one is handed out again; another size is not it. */
	void *again = pool_buf_get(BIG);
	int found = 0;
	for (int i = 0; i < POOL_KEEP + 2; i++)
		found |= again == b[i];
	assert_true(found);
	void *small = pool_buf_get(65536);
	assert_ptr_not_equal(small, again);
	memset(small, 0, 65536);
	pool_buf_put(small, 65536);
	pool_buf_put(again, BIG);
	pool_stats(&st);
	assert_int_equal(st.bufs_kept, POOL_KEEP + 1);
	pool_trim();
	pool_stats(&st);
	assert_int_equal(st.bufs_kept, 0);
	pool_buf_put(NULL, BIG);
}

static void
test_contexts(void **state)
{
	struct pool_stats st;
	uint8_t src[4096], z[8192], back[4096];

	pool_trim();
	memset(src, 'a', sizeof(src));
	ZSTD_CCtx *c = pool_cctx_get();
	size_t n = ZSTD_compressCCtx(c, z, sizeof(z), src, sizeof(src), 1);
	assert_false(ZSTD_isError(n));
	pool_cctx_put(c);
	assert_ptr_equal(pool_cctx_get(), c);	/* reused */
	pool_cctx_put(c);

	ZSTD_DCtx *d = pool_dctx_get();
	assert_int_equal(ZSTD_decompressDCtx(d, back, sizeof(back), z, n),
	    sizeof(back));
	assert_memory_equal(back, src, sizeof(src));
	pool_dctx_put(d);
	ZSTD_DCtx *d2 = pool_dctx_get();
	assert_ptr_equal(d2, d);
	assert_int_equal(ZSTD_decompressDCtx(d2, back, sizeof(back), z, n),
	    sizeof(back));
	pool_dctx_put(d2);
	pool_stats(&st);
	assert_int_equal(st.cctx_out, 0);
	assert_int_equal(st.dctx_out, 0);
	assert_int_equal(st.cctx_kept, 1);
	assert_int_equal(st.dctx_kept, 1);
	pool_trim();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buffers),
		cmocka_unit_test(test_contexts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
