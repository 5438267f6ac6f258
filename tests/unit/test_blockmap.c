/*
 * test_blockmap.c — the scan tracker's per-block digest map: sizing and
 * resizing in memory, the state file's round trip, and every way a
 * damaged or foreign file must be refused by bm_load().  Hand-made files
 * are built field by field after the format comment in blockmap.c, with
 * a correct trailer checksum so that only the field under test is wrong.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockmap.h"
#include "buf.h"
#include "digest.h"
#include "err.h"
#include "log.h"
#include "util.h"

#define BS	65536u
#define HDR	64

struct fixture {
	char	dir[256];
	char	path[300];
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/test_blockmap.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/disk0.map", f->dir);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	util_rm_rf(f->dir);
	free(f);
	return 0;
}

/* A recognisable digest for block i of map number seed. */
static void
fake_digest(struct digest *d, uint64_t seed, uint64_t i)
{
	for (int k = 0; k < DIGEST_LEN; k++)
		d->b[k] = (unsigned char)((seed * 131 + i * 7 + (uint64_t)k * 13)
		    | 1);
}

static int
is_zero_digest(const struct digest *d)
{
	static const struct digest zero;
	return digest_equal(d, &zero);
}

static void
fill_map(struct blockmap *bm, uint64_t seed)
{
	for (uint64_t i = 0; i < bm->nblocks; i++)
		fake_digest(&bm->d[i], seed, i);
}

static void
read_all(const char *path, uint8_t **data, size_t *len)
{
	assert_int_equal(util_read_file(path, (size_t)1 << 30, data, len), 0);
}

static void
write_all(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(util_write_full(fd, data, len), 0);
	assert_int_equal(close(fd), 0);
}

/* Recompute the trailer of a map file image in place. */
static void
fix_trailer(uint8_t *data, size_t len)
{
	struct digest d;

	assert_true(len >= DIGEST_LEN);
	digest_block(data, len - DIGEST_LEN, &d);
	memcpy(data + len - DIGEST_LEN, d.b, DIGEST_LEN);
}

static void
put_be32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void
put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/*
 * Write a map file field by field: header values as given, ndigests
 * digests, and a correct trailer.
 */
static void
write_map_file(const char *path, const char *magic, uint32_t version,
    uint32_t block_size, uint64_t disk_size, uint64_t cycle,
    uint64_t nblocks, uint64_t ndigests)
{
	size_t len = HDR + (size_t)ndigests * DIGEST_LEN + DIGEST_LEN;
	uint8_t *p = calloc(1, len);

	assert_non_null(p);
	memcpy(p, magic, 8);
	put_be32(p + 8, version);
	put_be32(p + 12, block_size);
	put_be64(p + 16, disk_size);
	put_be64(p + 24, cycle);
	put_be64(p + 32, nblocks);
	for (uint64_t i = 0; i < ndigests; i++)
		fake_digest((struct digest *)(p + HDR + i * DIGEST_LEN), 9, i);
	fix_trailer(p, len);
	write_all(path, p, len);
	free(p);
}

static void
assert_load_fails(const char *path, int want)
{
	struct blockmap bm;

	memset(&bm, 0, sizeof(bm));
	assert_int_equal(bm_load(path, &bm), want);
	assert_null(bm.d);
}

/* --- in memory ----------------------------------------------------------- */

static void
test_nblocks(void **state)
{
	(void)state;
	assert_int_equal(bm_nblocks(0, BS), 0);
	assert_int_equal(bm_nblocks(1, BS), 1);
	assert_int_equal(bm_nblocks(BS - 1, BS), 1);
	assert_int_equal(bm_nblocks(BS, BS), 1);
	assert_int_equal(bm_nblocks(BS + 1, BS), 2);
	assert_int_equal(bm_nblocks(UINT64_MAX, 4096),
	    (UINT64_MAX >> 12) + 1);
}

static void
test_init(void **state)
{
	struct blockmap bm;

	(void)state;
	bm_init(&bm, BS, 5 * BS + 100);
	assert_int_equal(bm.block_size, BS);
	assert_int_equal(bm.disk_size, 5 * BS + 100);
	assert_int_equal(bm.cycle, 0);
	assert_int_equal(bm.nblocks, 6);
	assert_non_null(bm.d);
	for (uint64_t i = 0; i < bm.nblocks; i++)
		assert_true(is_zero_digest(&bm.d[i]));
	bm_free(&bm);
	assert_null(bm.d);
	assert_int_equal(bm.nblocks, 0);

	bm_init(&bm, BS, 0);
	assert_int_equal(bm.nblocks, 0);
	bm_free(&bm);
}

static void
test_copy(void **state)
{
	struct blockmap a, b;

	(void)state;
	bm_init(&a, BS, 3 * BS);
	a.cycle = 12;
	fill_map(&a, 4);
	bm_copy(&b, &a);
	assert_ptr_not_equal(a.d, b.d);
	assert_int_equal(b.cycle, 12);
	assert_int_equal(b.nblocks, 3);
	assert_memory_equal(a.d, b.d, 3 * sizeof(*a.d));
	/* Independent copies. */
	fake_digest(&b.d[0], 99, 0);
	assert_false(digest_equal(&a.d[0], &b.d[0]));
	bm_free(&a);
	bm_free(&b);
}

static void
test_resize_grow_partial(void **state)
{
	struct blockmap bm, orig;

	(void)state;
	/* 2 blocks, the last one 100 bytes long. */
	bm_init(&bm, BS, BS + 100);
	bm.cycle = 7;
	fill_map(&bm, 1);
	bm_copy(&orig, &bm);

	bm_resize(&bm, 4 * BS + 5);
	assert_int_equal(bm.nblocks, 5);
	assert_int_equal(bm.disk_size, 4 * BS + 5);
	assert_int_equal(bm.cycle, 7);
	assert_true(digest_equal(&bm.d[0], &orig.d[0]));
	/* The old short last block is longer now: its digest is gone. */
	assert_true(is_zero_digest(&bm.d[1]));
	for (uint64_t i = 2; i < 5; i++)
		assert_true(is_zero_digest(&bm.d[i]));
	bm_free(&bm);
	bm_free(&orig);
}

static void
test_resize_grow_aligned(void **state)
{
	struct blockmap bm, orig;

	(void)state;
	bm_init(&bm, BS, 3 * BS);
	fill_map(&bm, 2);
	bm_copy(&orig, &bm);
	bm_resize(&bm, 6 * BS);
	assert_int_equal(bm.nblocks, 6);
	/* Full blocks keep their digests (the last one may be dropped:
	 * that only costs a resend). */
	assert_true(digest_equal(&bm.d[0], &orig.d[0]));
	assert_true(digest_equal(&bm.d[1], &orig.d[1]));
	assert_true(digest_equal(&bm.d[2], &orig.d[2]) ||
	    is_zero_digest(&bm.d[2]));
	for (uint64_t i = 3; i < 6; i++)
		assert_true(is_zero_digest(&bm.d[i]));
	bm_free(&bm);
	bm_free(&orig);
}

static void
test_resize_same_block_count(void **state)
{
	struct blockmap bm, orig;

	(void)state;
	/* The last block grows from 100 to 4000 bytes: still 3 blocks. */
	bm_init(&bm, BS, 2 * BS + 100);
	fill_map(&bm, 3);
	bm_copy(&orig, &bm);
	bm_resize(&bm, 2 * BS + 4000);
	assert_int_equal(bm.nblocks, 3);
	assert_int_equal(bm.disk_size, 2 * BS + 4000);
	assert_true(digest_equal(&bm.d[0], &orig.d[0]));
	assert_true(digest_equal(&bm.d[1], &orig.d[1]));
	assert_true(is_zero_digest(&bm.d[2]));

	/* Same size: nothing changes. */
	fill_map(&bm, 3);
	bm_resize(&bm, 2 * BS + 4000);
	assert_memory_equal(bm.d, orig.d, 3 * sizeof(*bm.d));
	bm_free(&bm);
	bm_free(&orig);
}

static void
test_resize_shrink(void **state)
{
	struct blockmap bm, orig;

	(void)state;
	bm_init(&bm, BS, 6 * BS);
	fill_map(&bm, 5);
	bm_copy(&orig, &bm);
	/* Block 2 was a full block; it is now 100 bytes long. */
	bm_resize(&bm, 2 * BS + 100);
	assert_int_equal(bm.nblocks, 3);
	assert_int_equal(bm.disk_size, 2 * BS + 100);
	int kept = digest_equal(&bm.d[0], &orig.d[0]) &&
	    digest_equal(&bm.d[1], &orig.d[1]);
	/* A last block whose length changed has no valid digest. */
	int dropped = is_zero_digest(&bm.d[2]);
	int stale = digest_equal(&bm.d[2], &orig.d[2]);
	bm_free(&bm);
	bm_free(&orig);
	assert_true(kept);
	if (!dropped)
		fail_msg("block 2 became a 100-byte block but keeps %s digest",
		    stale ? "its old full-block" : "a non-zero");
}

static void
test_resize_to_zero_and_back(void **state)
{
	struct blockmap bm;

	(void)state;
	bm_init(&bm, BS, 3 * BS);
	fill_map(&bm, 6);
	bm_resize(&bm, 0);
	assert_int_equal(bm.nblocks, 0);
	assert_int_equal(bm.disk_size, 0);
	bm_resize(&bm, 2 * BS);
	assert_int_equal(bm.nblocks, 2);
	assert_true(is_zero_digest(&bm.d[0]));
	assert_true(is_zero_digest(&bm.d[1]));
	bm_free(&bm);
}

/* --- the state file ------------------------------------------------------ */

static void
test_save_load_round_trip(void **state)
{
	struct fixture *f = *state;
	struct blockmap bm, got;
	char tmp[320];
	struct stat sb;

	bm_init(&bm, BS, 9 * BS + 12345);
	bm.cycle = UINT64_MAX - 3;
	fill_map(&bm, 8);
	assert_int_equal(bm_save(f->path, &bm), 0);
	assert_int_equal(stat(f->path, &sb), 0);
	assert_int_equal(sb.st_size, HDR + 10 * DIGEST_LEN + DIGEST_LEN);
	snprintf(tmp, sizeof(tmp), "%s.tmp", f->path);
	assert_int_equal(stat(tmp, &sb), -1);

	memset(&got, 0, sizeof(got));
	assert_int_equal(bm_load(f->path, &got), 0);
	assert_int_equal(got.block_size, BS);
	assert_int_equal(got.disk_size, 9 * BS + 12345);
	assert_int_equal(got.cycle, UINT64_MAX - 3);
	assert_int_equal(got.nblocks, 10);
	assert_memory_equal(got.d, bm.d, 10 * sizeof(*bm.d));
	bm_free(&got);

	/* Saving again replaces the file. */
	bm_resize(&bm, 2 * BS);
	bm.cycle = 4;
	fill_map(&bm, 11);
	assert_int_equal(bm_save(f->path, &bm), 0);
	assert_int_equal(bm_load(f->path, &got), 0);
	assert_int_equal(got.nblocks, 2);
	assert_int_equal(got.cycle, 4);
	assert_memory_equal(got.d, bm.d, 2 * sizeof(*bm.d));
	bm_free(&got);
	bm_free(&bm);
}

static void
test_save_load_empty(void **state)
{
	struct fixture *f = *state;
	struct blockmap bm, got;

	bm_init(&bm, 4096, 0);
	bm.cycle = 1;
	assert_int_equal(bm_save(f->path, &bm), 0);
	memset(&got, 0, sizeof(got));
	assert_int_equal(bm_load(f->path, &got), 0);
	assert_int_equal(got.block_size, 4096);
	assert_int_equal(got.disk_size, 0);
	assert_int_equal(got.nblocks, 0);
	assert_int_equal(got.cycle, 1);
	bm_free(&got);
	bm_free(&bm);
}

static void
test_save_bad_dir(void **state)
{
	struct fixture *f = *state;
	struct blockmap bm;
	char path[400];

	bm_init(&bm, BS, BS);
	snprintf(path, sizeof(path), "%s/missing/disk0.map", f->dir);
	assert_int_not_equal(bm_save(path, &bm), 0);
	bm_free(&bm);
}

static void
test_load_missing(void **state)
{
	struct fixture *f = *state;

	assert_load_fails(f->path, RD_ERR_NOT_FOUND);
}

/* A small valid file to damage. */
static void
save_sample(const struct fixture *f, uint8_t **data, size_t *len)
{
	struct blockmap bm;

	bm_init(&bm, BS, 3 * BS + 77);
	bm.cycle = 42;
	fill_map(&bm, 12);
	assert_int_equal(bm_save(f->path, &bm), 0);
	bm_free(&bm);
	read_all(f->path, data, len);
	assert_int_equal(*len, HDR + 4 * DIGEST_LEN + DIGEST_LEN);
}

static void
test_load_truncated(void **state)
{
	struct fixture *f = *state;
	uint8_t *data;
	size_t len;

	save_sample(f, &data, &len);
	for (size_t n = 0; n < len; n++) {
		write_all(f->path, data, n);
		assert_load_fails(f->path, RD_ERR_CORRUPT);
	}
	/* One byte too many is as bad as one too few. */
	uint8_t *longer = calloc(1, len + 1);
	assert_non_null(longer);
	memcpy(longer, data, len);
	write_all(f->path, longer, len + 1);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	free(longer);
	free(data);
}

static void
test_load_flipped_byte(void **state)
{
	struct fixture *f = *state;
	uint8_t *data;
	size_t len;

	save_sample(f, &data, &len);
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 7) {
			struct blockmap bm;
			int r;

			data[i] ^= (uint8_t)(1u << bit);
			write_all(f->path, data, len);
			memset(&bm, 0, sizeof(bm));
			r = bm_load(f->path, &bm);
			if (i >= 8 && i < 12) {
				/* A damaged version field cannot be told
				 * from a newer format: either refusal. */
				assert_true(r == RD_ERR_CORRUPT ||
				    r == RD_ERR_VERSION);
			} else if (r != RD_ERR_CORRUPT) {
				fail_msg("byte %zu bit %d flipped: bm_load "
				    "returned %d (%s), want RD_ERR_CORRUPT",
				    i, bit, r, rd_strerror(r));
			}
			assert_null(bm.d);
			data[i] ^= (uint8_t)(1u << bit);
		}
	}
	/* Undamaged again: loads. */
	write_all(f->path, data, len);
	struct blockmap bm;
	assert_int_equal(bm_load(f->path, &bm), 0);
	bm_free(&bm);
	free(data);
}

static void
test_load_wrong_magic(void **state)
{
	struct fixture *f = *state;

	write_map_file(f->path, "RDBLKMAQ", 1, BS, 2 * BS, 1, 2, 2);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	write_map_file(f->path, "RDUNDOSG", 1, BS, 2 * BS, 1, 2, 2);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	/* Control: the same file with the right magic loads. */
	write_map_file(f->path, "RDBLKMAP", 1, BS, 2 * BS, 1, 2, 2);
	struct blockmap bm;
	assert_int_equal(bm_load(f->path, &bm), 0);
	assert_int_equal(bm.nblocks, 2);
	bm_free(&bm);
}

static void
test_load_version(void **state)
{
	struct fixture *f = *state;
	uint8_t *data;
	size_t len;

	/* A file from the real writer, version patched to 2 with a correct
	 * trailer: only the version is wrong. */
	save_sample(f, &data, &len);
	put_be32(data + 8, 2);
	fix_trailer(data, len);
	write_all(f->path, data, len);
	assert_load_fails(f->path, RD_ERR_VERSION);

	put_be32(data + 8, UINT32_MAX);
	fix_trailer(data, len);
	write_all(f->path, data, len);
	assert_load_fails(f->path, RD_ERR_VERSION);

	/* Version 0 is no version we ever wrote either. */
	put_be32(data + 8, 0);
	fix_trailer(data, len);
	write_all(f->path, data, len);
	assert_int_not_equal(bm_load(f->path, &(struct blockmap){ 0 }), 0);

	/* And back to 1: the patching itself is sound. */
	put_be32(data + 8, 1);
	fix_trailer(data, len);
	write_all(f->path, data, len);
	struct blockmap bm;
	assert_int_equal(bm_load(f->path, &bm), 0);
	assert_int_equal(bm.cycle, 42);
	bm_free(&bm);
	free(data);
}

static void
test_load_nblocks_inconsistent(void **state)
{
	struct fixture *f = *state;

	/* disk_size says 3 blocks; nblocks and the digests say 2 or 4. */
	write_map_file(f->path, "RDBLKMAP", 1, BS, 3 * BS, 1, 2, 2);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	write_map_file(f->path, "RDBLKMAP", 1, BS, 3 * BS, 1, 4, 4);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	/* nblocks right, digests missing or extra. */
	write_map_file(f->path, "RDBLKMAP", 1, BS, 3 * BS, 1, 3, 2);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	write_map_file(f->path, "RDBLKMAP", 1, BS, 3 * BS, 1, 3, 4);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	/* A huge claim consistent with a huge disk: refused, not allocated. */
	write_map_file(f->path, "RDBLKMAP", 1, 4096, UINT64_MAX, 1,
	    (UINT64_MAX >> 12) + 1, 1);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	write_map_file(f->path, "RDBLKMAP", 1, 4096, (uint64_t)1 << 52, 1,
	    (uint64_t)1 << 40, 3);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	/* Control. */
	write_map_file(f->path, "RDBLKMAP", 1, BS, 3 * BS, 1, 3, 3);
	struct blockmap bm;
	assert_int_equal(bm_load(f->path, &bm), 0);
	bm_free(&bm);
}

static void
test_load_bad_block_size(void **state)
{
	struct fixture *f = *state;

	/* 96K: not a power of two; nblocks consistent with it. */
	write_map_file(f->path, "RDBLKMAP", 1, 98304, 2 * 98304, 1, 2, 2);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	write_map_file(f->path, "RDBLKMAP", 1, 65537, 65537, 1, 1, 1);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	write_map_file(f->path, "RDBLKMAP", 1, UINT32_MAX, 10, 1, 1, 1);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	/* Zero must not divide. */
	write_map_file(f->path, "RDBLKMAP", 1, 0, 0, 1, 0, 0);
	assert_load_fails(f->path, RD_ERR_CORRUPT);
	/* Control: a power of two. */
	write_map_file(f->path, "RDBLKMAP", 1, 1u << 22, 3u << 22, 1, 3, 3);
	struct blockmap bm;
	assert_int_equal(bm_load(f->path, &bm), 0);
	assert_int_equal(bm.block_size, 1u << 22);
	bm_free(&bm);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nblocks),
		cmocka_unit_test(test_init),
		cmocka_unit_test(test_copy),
		cmocka_unit_test(test_resize_grow_partial),
		cmocka_unit_test(test_resize_grow_aligned),
		cmocka_unit_test(test_resize_same_block_count),
		cmocka_unit_test(test_resize_shrink),
		cmocka_unit_test(test_resize_to_zero_and_back),
		cmocka_unit_test_setup_teardown(test_save_load_round_trip,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_load_empty, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_save_bad_dir, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_load_missing, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_load_truncated, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_load_flipped_byte, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_load_wrong_magic, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_load_version, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_load_nblocks_inconsistent,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_load_bad_block_size,
		    setup, teardown),
	};

	log_set_level(LOG_LVL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
