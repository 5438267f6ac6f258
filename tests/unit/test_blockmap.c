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

/* --- windows, changes, commits and the cycle file ------------------------ */

/* Every digest of the map at path, through bm_open() and bm_file_get(). */
static void
assert_file_map(const char *path, const struct blockmap *want)
{
	struct bm_file *bf;
	struct digest d;

	assert_int_equal(bm_open(path, &bf), 0);
	assert_int_equal(bm_file_block_size(bf), want->block_size);
	assert_int_equal(bm_file_disk_size(bf), want->disk_size);
	assert_int_equal(bm_file_cycle(bf), want->cycle);
	assert_int_equal(bm_file_nblocks(bf), want->nblocks);
	/* Backwards too: a window is reloaded when left. */
	for (uint64_t i = want->nblocks; i-- > 0;) {
		assert_int_equal(bm_file_get(bf, i, &d), 0);
		assert_memory_equal(&d, &want->d[i], sizeof(d));
	}
	assert_int_equal(bm_file_get(bf, want->nblocks, &d), 0);
	assert_true(is_zero_digest(&d));
	bm_close(bf);
}

static void
file_stat(const char *path, struct stat *sb)
{
	assert_int_equal(stat(path, sb), 0);
}

/* Few changes (in memory), then more than memory holds (spilled), in any
 * order, a later one for a block replacing an earlier one. */
static void
commit_changes(struct fixture *f, uint64_t nblocks, uint64_t nchanges)
{
	struct blockmap bm;
	struct bm_file *bf = NULL;
	struct bm_changes *ch;
	struct digest d;
	char next[320];
	struct stat sb;

	bm_init(&bm, 4096, nblocks * 4096);
	bm.cycle = 3;
	fill_map(&bm, 1);
	assert_int_equal(bm_save(f->path, &bm), 0);
	assert_int_equal(bm_open(f->path, &bf), 0);
	ch = bm_changes_new(f->path, nblocks);
	for (uint64_t k = 0; k < nchanges; k++) {
		/* Every 7th block, going round twice: the second wins. */
		uint64_t i = (k * 7) % nblocks;
		fake_digest(&d, 50 + k, i);
		assert_int_equal(bm_changes_set(ch, i, &d), 0);
		bm.d[i] = d;
	}
	assert_int_equal(bm_changes_set(ch, nblocks, &d), RD_ERR_RANGE);
	assert_int_equal(bm_changes_count(ch), nchanges);
	snprintf(next, sizeof(next), "%s.next", f->path);
	assert_int_equal(stat(next, &sb) == 0, nchanges > 16384);
	assert_int_equal(bm_commit(f->path, &bf, 4096, nblocks * 4096, 4, ch,
	    0), 0);
	assert_int_equal(bm_file_cycle(bf), 4);
	bm_changes_free(ch);
	assert_int_equal(stat(next, &sb), -1);	/* removed */
	bm_close(bf);
	bm.cycle = 4;
	assert_file_map(f->path, &bm);
	bm_free(&bm);
}

static void
test_commit_few_changes(void **state)
{
	commit_changes(*state, 1000, 300);
}

static void
test_commit_spilled_changes(void **state)
{
	commit_changes(*state, 40000, 60000);
}

/* A commit with no change writes the cycle file, not the map; a map
 * written later makes that cycle file count no more. */
static void
test_commit_empty_cycle(void **state)
{
	struct fixture *f = *state;
	struct blockmap bm, got;
	struct bm_file *bf = NULL;
	struct bm_changes *ch;
	struct stat before, after;
	char cyc[320];
	struct digest d;

	snprintf(cyc, sizeof(cyc), "%s.cycle", f->path);
	bm_init(&bm, BS, 20 * BS + 1);
	bm.cycle = 10;
	fill_map(&bm, 2);
	assert_int_equal(bm_save(f->path, &bm), 0);
	file_stat(f->path, &before);
	assert_int_equal(bm_open(f->path, &bf), 0);
	for (uint64_t c = 11; c <= 13; c++) {
		ch = bm_changes_new(f->path, bm.nblocks);
		assert_int_equal(bm_commit(f->path, &bf, BS, bm.disk_size, c,
		    ch, 0), 0);
		bm_changes_free(ch);
		assert_int_equal(bm_file_cycle(bf), c);
	}
	bm_close(bf);
	file_stat(f->path, &after);
	assert_int_equal(after.st_ino, before.st_ino);	/* not rewritten */
	assert_int_equal(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
	assert_int_equal(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
	file_stat(cyc, &after);
	bm.cycle = 13;
	assert_file_map(f->path, &bm);
	memset(&got, 0, sizeof(got));
	assert_int_equal(bm_load(f->path, &got), 0);
	assert_int_equal(got.cycle, 13);
	bm_free(&got);

	/* A change: the map is rewritten at 14 and the cycle file goes. */
	assert_int_equal(bm_open(f->path, &bf), 0);
	ch = bm_changes_new(f->path, bm.nblocks);
	fake_digest(&d, 77, 5);
	assert_int_equal(bm_changes_set(ch, 5, &d), 0);
	assert_int_equal(bm_commit(f->path, &bf, BS, bm.disk_size, 14, ch, 0),
	    0);
	bm_changes_free(ch);
	bm_close(bf);
	assert_int_equal(stat(cyc, &after), -1);
	bm.d[5] = d;
	bm.cycle = 14;
	assert_file_map(f->path, &bm);
	bm_free(&bm);
}

/* A cycle file that is damaged, of another map, or lost leaves the map's
 * own (older) cycle: the tracker then sends the disk whole. */
static void
test_cycle_file_stale(void **state)
{
	struct fixture *f = *state;
	struct blockmap bm, other;
	struct bm_file *bf = NULL;
	struct bm_changes *ch;
	uint8_t *data, *saved;
	size_t len;
	char cyc[320];

	snprintf(cyc, sizeof(cyc), "%s.cycle", f->path);
	bm_init(&bm, BS, 8 * BS);
	bm.cycle = 5;
	fill_map(&bm, 3);
	assert_int_equal(bm_save(f->path, &bm), 0);
	assert_int_equal(bm_open(f->path, &bf), 0);
	ch = bm_changes_new(f->path, bm.nblocks);
	assert_int_equal(bm_commit(f->path, &bf, BS, bm.disk_size, 9, ch, 0),
	    0);
	bm_changes_free(ch);
	bm_close(bf);
	read_all(cyc, &saved, &len);
	assert_int_equal(len, 64);

	/* Every byte flipped in turn: refused, the map's own cycle. */
	for (size_t i = 0; i < len; i++) {
		data = malloc(len);
		assert_non_null(data);
		memcpy(data, saved, len);
		data[i] ^= 0x20;
		write_all(cyc, data, len);
		free(data);
		bm.cycle = 5;
		assert_file_map(f->path, &bm);
	}
	write_all(cyc, saved, len - 1);			/* short */
	assert_file_map(f->path, &bm);
	assert_int_equal(unlink(cyc), 0);		/* lost */
	assert_file_map(f->path, &bm);

	/* Another map with the same cycle (a failover wrote it): the cycle
	 * file, put back by hand, speaks for the old map only. */
	bm_init(&other, BS, 8 * BS);
	other.cycle = 5;
	fill_map(&other, 4);
	assert_int_equal(bm_save(f->path, &other), 0);
	write_all(cyc, saved, len);
	assert_file_map(f->path, &other);
	/* The right one counts again. */
	assert_int_equal(bm_save(f->path, &bm), 0);
	write_all(cyc, saved, len);
	bm.cycle = 9;
	assert_file_map(f->path, &bm);
	free(saved);
	bm_free(&other);
	bm_free(&bm);
}

/* A grown disk: the old last block's digest goes (its length changed),
 * the new blocks have none but what the cycle read; reset: none of the
 * old digests stay. */
static void
test_commit_grow_and_reset(void **state)
{
	struct fixture *f = *state;
	struct blockmap bm;
	struct bm_file *bf = NULL;
	struct bm_changes *ch;
	struct digest d;

	bm_init(&bm, BS, 4 * BS + 100);
	bm.cycle = 2;
	fill_map(&bm, 5);
	assert_int_equal(bm_save(f->path, &bm), 0);
	assert_int_equal(bm_open(f->path, &bf), 0);
	ch = bm_changes_new(f->path, 8);
	fake_digest(&d, 6, 6);
	assert_int_equal(bm_changes_set(ch, 6, &d), 0);
	assert_int_equal(bm_commit(f->path, &bf, BS, 8 * BS, 3, ch, 0), 0);
	bm_changes_free(ch);
	bm_resize(&bm, 8 * BS);		/* drops the old last block's */
	bm.d[6] = d;
	bm.cycle = 3;
	assert_file_map(f->path, &bm);

	ch = bm_changes_new(f->path, 8);
	fake_digest(&d, 7, 1);
	assert_int_equal(bm_changes_set(ch, 1, &d), 0);
	assert_int_equal(bm_commit(f->path, &bf, BS, 8 * BS, 4, ch, 1), 0);
	bm_changes_free(ch);
	bm_close(bf);
	memset(bm.d, 0, 8 * sizeof(*bm.d));
	bm.d[1] = d;
	bm.cycle = 4;
	assert_file_map(f->path, &bm);
	bm_free(&bm);
}

/* A commit that cannot write leaves the old map and its cycle. */
static void
test_commit_fails(void **state)
{
	struct fixture *f = *state;
	struct blockmap bm;
	struct bm_file *bf = NULL;
	struct bm_changes *ch;
	struct digest d;
	char tmp[320];

	bm_init(&bm, BS, 3 * BS);
	bm.cycle = 6;
	fill_map(&bm, 8);
	assert_int_equal(bm_save(f->path, &bm), 0);
	assert_int_equal(bm_open(f->path, &bf), 0);
	snprintf(tmp, sizeof(tmp), "%s.tmp", f->path);
	assert_int_equal(mkdir(tmp, 0700), 0);
	ch = bm_changes_new(f->path, 3);
	fake_digest(&d, 9, 0);
	assert_int_equal(bm_changes_set(ch, 0, &d), 0);
	assert_int_not_equal(bm_commit(f->path, &bf, BS, 3 * BS, 7, ch, 0), 0);
	assert_int_equal(bm_file_cycle(bf), 6);
	bm_changes_free(ch);
	assert_int_equal(rmdir(tmp), 0);
	snprintf(tmp, sizeof(tmp), "%s.cycle.tmp", f->path);
	assert_int_equal(mkdir(tmp, 0700), 0);
	ch = bm_changes_new(f->path, 3);
	assert_int_not_equal(bm_commit(f->path, &bf, BS, 3 * BS, 7, ch, 0), 0);
	assert_int_equal(bm_file_cycle(bf), 6);
	bm_changes_free(ch);
	bm_close(bf);
	assert_file_map(f->path, &bm);
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
		cmocka_unit_test_setup_teardown(test_commit_few_changes, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_commit_spilled_changes,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_empty_cycle, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_cycle_file_stale, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_commit_grow_and_reset,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_fails, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_load_bad_block_size,
		    setup, teardown),
	};

	log_set_level(LOG_LVL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
