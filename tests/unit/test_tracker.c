/*
 * test_tracker.c — the scan tracker on real files in a temporary
 * directory: what the first cycle sends, what later cycles send after
 * writes into the disk files, and that every case where the tracker
 * cannot prove what the replica holds (abort, another replica cycle, a
 * lost or damaged state file, another block size) sends the blocks again
 * (invariant P1).  Every emitted block is checked against the file.
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
#include "config.h"
#include "digest.h"
#include "err.h"
#include "log.h"
#include "par.h"
#include "tracker.h"
#include "util.h"

#define BS		65536u
#define NDISKS		2
#define DISK0_SIZE	(16 * (uint64_t)BS + 1000)	/* 17 blocks */
#define DISK1_SIZE	(4 * (uint64_t)BS)

struct fixture {
	char		 dir[256];
	char		 state_dir[300];
	char		 paths[NDISKS][300];
	char		*disks[NDISKS];
	char		*names[NDISKS];
	struct cfg_vm	 vm;
};

struct emitted {
	uint16_t	disk;
	uint64_t	offset;
	uint32_t	len;
	int		zero;
};

struct collector {
	struct fixture	*f;
	struct emitted	*blocks;
	size_t		 n, cap;
	size_t		 fail_after;	/* 0: never; else fail the n-th call */
	int		 fail_code;
};

static uint64_t
next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void
fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < len; i++) {
		p[i] = (uint8_t)next_rand(&s);
		if (p[i] == 0)
			p[i] = 1;	/* keep data blocks non-zero */
	}
}

static void
write_at(const char *path, uint64_t off, const void *p, size_t len)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(util_pwrite_full(fd, p, len, (off_t)off), 0);
	assert_int_equal(close(fd), 0);
}

static void
set_size(const char *path, uint64_t size)
{
	assert_int_equal(truncate(path, (off_t)size), 0);
}

static uint64_t
file_size(const char *path)
{
	struct stat sb;

	assert_int_equal(stat(path, &sb), 0);
	return (uint64_t)sb.st_size;
}

/* A disk of size bytes of random data, with the blocks in zeros[] zero. */
static void
make_disk(const char *path, uint64_t size, uint64_t seed, const int *zeros,
    size_t nzeros)
{
	uint8_t *p = malloc(size ? size : 1);
	int fd;

	assert_non_null(p);
	fill_random(p, size, seed);
	for (size_t i = 0; i < nzeros; i++)
		memset(p + (uint64_t)zeros[i] * BS, 0, BS);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(util_write_full(fd, p, size), 0);
	assert_int_equal(close(fd), 0);
	free(p);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	static const int zeros0[] = { 5 }, zeros1[] = { 2 };

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/test_tracker.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->state_dir, sizeof(f->state_dir), "%s/state", f->dir);
	for (int i = 0; i < NDISKS; i++) {
		snprintf(f->paths[i], sizeof(f->paths[i]), "%s/disk%d.img",
		    f->dir, i);
		f->disks[i] = f->paths[i];
		f->names[i] = strrchr(f->paths[i], '/') + 1;
	}
	snprintf(f->vm.name, sizeof(f->vm.name), "web01");
	f->vm.disks = f->disks;
	f->vm.disk_names = f->names;
	f->vm.ndisks = NDISKS;
	f->vm.tracker = TRACKER_SCAN;
	f->vm.block_size = BS;
	f->vm.compress_level = 0;
	make_disk(f->paths[0], DISK0_SIZE, 1, zeros0, 1);
	make_disk(f->paths[1], DISK1_SIZE, 2, zeros1, 1);
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

static int
collect(void *arg, const struct trk_block *blk)
{
	struct collector *c = arg;
	struct digest d;
	uint8_t *buf;
	int fd;

	/* What the tracker hands out is what the file holds, and its hash. */
	assert_true(blk->disk < NDISKS);
	assert_true(blk->len > 0 && blk->len <= c->f->vm.block_size);
	assert_int_equal(blk->offset % c->f->vm.block_size, 0);
	buf = malloc(blk->len);
	assert_non_null(buf);
	fd = open(c->f->paths[blk->disk], O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(util_pread_full(fd, buf, blk->len,
	    (off_t)blk->offset), 0);
	close(fd);
	assert_memory_equal(blk->data, buf, blk->len);
	assert_int_equal(!!blk->zero, util_is_zero(buf, blk->len));
	free(buf);
	digest_block(blk->data, blk->len, &d);
	assert_true(digest_equal(&d, &blk->hash));

	if (c->n == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 64;
		c->blocks = realloc(c->blocks, c->cap * sizeof(*c->blocks));
		assert_non_null(c->blocks);
	}
	c->blocks[c->n++] = (struct emitted){ blk->disk, blk->offset,
	    blk->len, blk->zero };
	if (c->fail_after && c->n == c->fail_after)
		return c->fail_code;
	return 0;
}

static void
coll_init(struct collector *c, struct fixture *f)
{
	memset(c, 0, sizeof(*c));
	c->f = f;
}

static void
coll_free(struct collector *c)
{
	free(c->blocks);
	c->blocks = NULL;
	c->n = c->cap = 0;
}

/* Begin and scan a whole cycle; returns trk_begin's or trk_scan's code. */
static int
run_cycle(struct tracker *t, uint64_t replica_cycle, int full,
    struct collector *c, size_t max_read, uint64_t *sizes, char *err,
    size_t errsz)
{
	uint64_t sz[NDISKS];
	int r;

	err[0] = '\0';
	if ((r = trk_begin(t, replica_cycle + 1, replica_cycle, full, sizes ? sizes : sz, err,
	    errsz)) != 0)
		return r;
	for (int calls = 0;; calls++) {
		assert_true(calls < 100000);
		r = trk_scan(t, max_read, collect, c, err, errsz);
		if (r != 0)
			break;
	}
	return r == 1 ? 0 : r;
}

static struct tracker *
open_trk(struct fixture *f)
{
	struct tracker *t = NULL;

	assert_int_equal(trk_open(f->state_dir, &f->vm, &t), 0);
	assert_non_null(t);
	return t;
}

/* One expected block. */
struct want {
	uint16_t	disk;
	uint64_t	idx;
	int		zero;	/* -1: don't care */
};

static void
assert_emitted(const struct fixture *f, const struct collector *c,
    const struct want *w, size_t n)
{
	uint32_t bs = f->vm.block_size;

	if (c->n != n) {
		for (size_t i = 0; i < c->n; i++)
			print_message("emitted: disk %u block %llu len %u "
			    "zero %d\n", c->blocks[i].disk,
			    (unsigned long long)(c->blocks[i].offset / bs),
			    c->blocks[i].len, c->blocks[i].zero);
		fail_msg("%zu blocks emitted, want %zu", c->n, n);
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t size = file_size(f->paths[w[i].disk]);
		uint64_t off = w[i].idx * bs;
		uint32_t len = (uint32_t)(size - off < bs ? size - off : bs);

		assert_int_equal(c->blocks[i].disk, w[i].disk);
		assert_int_equal(c->blocks[i].offset, off);
		assert_int_equal(c->blocks[i].len, len);
		if (w[i].zero >= 0)
			assert_int_equal(!!c->blocks[i].zero, w[i].zero);
	}
}

/* Every block of every disk, in order, exactly once. */
static void
assert_all_blocks(const struct fixture *f, const struct collector *c)
{
	struct want *w = calloc(100000, sizeof(*w));
	size_t n = 0;

	assert_non_null(w);
	for (uint16_t d = 0; d < NDISKS; d++) {
		uint64_t nb = bm_nblocks(file_size(f->paths[d]),
		    f->vm.block_size);
		for (uint64_t i = 0; i < nb; i++) {
			assert_true(n < 100000);
			w[n++] = (struct want){ d, i, -1 };
		}
	}
	assert_emitted(f, c, w, n);
	free(w);
}

static uint64_t
total_size(const struct fixture *f)
{
	uint64_t t = 0;

	for (int i = 0; i < NDISKS; i++)
		t += file_size(f->paths[i]);
	return t;
}

/* First cycle, committed as cycle 1. */
static struct tracker *
first_cycle(struct fixture *f)
{
	struct tracker *t = open_trk(f);
	struct collector c;
	char err[256];

	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 0, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_all_blocks(f, &c);
	assert_int_equal(trk_commit(t, 1, err, sizeof(err)), 0);
	assert_int_equal(trk_cycle(t), 1);
	coll_free(&c);
	return t;
}

/* The writes of the incremental tests: one byte in block 3, a range over
 * blocks 7-9, block 12 zeroed. */
static void
dirty_disk0(const struct fixture *f)
{
	uint8_t one = 0xA5, *range, *zero;
	size_t rlen = 2 * BS + 4;	/* last byte: 10 * BS - 1 */

	range = malloc(rlen);
	zero = calloc(1, BS);
	assert_non_null(range);
	assert_non_null(zero);
	fill_random(range, rlen, 77);
	write_at(f->paths[0], 3 * (uint64_t)BS + 4321, &one, 1);
	write_at(f->paths[0], 7 * (uint64_t)BS + BS - 5, range, rlen);
	write_at(f->paths[0], 12 * (uint64_t)BS, zero, BS);
	free(range);
	free(zero);
}

static const struct want dirty0_want[] = {
	{ 0, 3, 0 }, { 0, 7, 0 }, { 0, 8, 0 }, { 0, 9, 0 }, { 0, 12, 1 },
};
#define NDIRTY0	(sizeof(dirty0_want) / sizeof(dirty0_want[0]))

/* --- tests --------------------------------------------------------------- */

static void
test_first_cycle_sends_all(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = open_trk(f);
	struct collector c;
	struct trk_stats st;
	uint64_t sizes[NDISKS];
	char err[256];

	assert_int_equal(trk_cycle(t), 0);
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 0, 0, &c, SIZE_MAX, sizes, err,
	    sizeof(err)), 0);
	assert_int_equal(sizes[0], DISK0_SIZE);
	assert_int_equal(sizes[1], DISK1_SIZE);
	assert_all_blocks(f, &c);
	/* The zero blocks are flagged, the short last block is short. */
	assert_true(c.blocks[5].zero);
	assert_false(c.blocks[4].zero);
	assert_int_equal(c.blocks[16].len, 1000);
	assert_true(c.blocks[17 + 2].zero);
	trk_stats(t, &st);
	assert_int_equal(st.bytes_read, DISK0_SIZE + DISK1_SIZE);
	assert_int_equal(st.dirty_bytes, DISK0_SIZE + DISK1_SIZE);
	/* Nothing is saved before the commit. */
	assert_int_equal(trk_cycle(t), 0);
	trk_abort(t);
	trk_close(t);
	coll_free(&c);
}

static void
test_incremental(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	struct trk_stats st;
	char err[256], map[400];
	struct stat sb;

	/* The state is on disk. */
	for (int i = 0; i < NDISKS; i++) {
		snprintf(map, sizeof(map), "%s/tracker/web01/%s.map",
		    f->state_dir, f->names[i]);
		assert_int_equal(stat(map, &sb), 0);
	}

	/* Nothing changed: nothing is sent, everything is read. */
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 0);
	trk_stats(t, &st);
	assert_int_equal(st.bytes_read, total_size(f));
	assert_int_equal(st.dirty_bytes, 0);
	assert_int_equal(trk_commit(t, 2, err, sizeof(err)), 0);
	assert_int_equal(trk_cycle(t), 2);

	/* Changes: only the changed blocks. */
	dirty_disk0(f);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_emitted(f, &c, dirty0_want, NDIRTY0);
	trk_stats(t, &st);
	assert_int_equal(st.bytes_read, total_size(f));
	assert_int_equal(st.dirty_bytes, 5 * (uint64_t)BS);
	assert_int_equal(trk_commit(t, 3, err, sizeof(err)), 0);
	trk_close(t);

	/* The state survives a restart: a new tracker sends nothing, then
	 * just the next change (the short last block, one byte). */
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 3);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 3, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 0);
	trk_abort(t);
	write_at(f->paths[0], DISK0_SIZE - 1, "x", 1);
	write_at(f->paths[1], 0, "y", 1);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 3, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	static const struct want w[] = { { 0, 16, 0 }, { 1, 0, 0 } };
	assert_emitted(f, &c, w, 2);
	trk_stats(t, &st);
	assert_int_equal(st.dirty_bytes, 1000 + BS);
	trk_abort(t);
	trk_close(t);
	coll_free(&c);
}

static void
test_abort_keeps_state(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	char err[256];

	dirty_disk0(f);
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_emitted(f, &c, dirty0_want, NDIRTY0);
	trk_abort(t);
	assert_int_equal(trk_cycle(t), 1);
	/* After an abort there is no cycle to commit. */
	assert_int_equal(trk_commit(t, 2, err, sizeof(err)), RD_ERR_STATE);
	assert_int_equal(trk_scan(t, SIZE_MAX, collect, &c, err, sizeof(err)),
	    RD_ERR_STATE);

	/* The next cycle finds the same blocks again, twice in a row. */
	for (int round = 0; round < 2; round++) {
		coll_free(&c);
		assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
		    sizeof(err)), 0);
		assert_emitted(f, &c, dirty0_want, NDIRTY0);
		trk_abort(t);
	}
	/* Also across a restart. */
	trk_close(t);
	t = open_trk(f);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_emitted(f, &c, dirty0_want, NDIRTY0);
	/* A begin without commit or abort in between starts over. */
	coll_free(&c);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_emitted(f, &c, dirty0_want, NDIRTY0);
	trk_close(t);
	coll_free(&c);
}

static void
test_replica_cycle_mismatch(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	struct trk_stats st;
	char err[256];

	dirty_disk0(f);
	/* The replica is ahead (its ACK was lost), behind, or at 0: the map
	 * proves nothing; every block goes. */
	const uint64_t others[] = { 2, 0, UINT64_MAX };
	for (size_t k = 0; k < 3; k++) {
		coll_init(&c, f);
		assert_int_equal(run_cycle(t, others[k], 0, &c, SIZE_MAX, NULL,
		    err, sizeof(err)), 0);
		assert_all_blocks(f, &c);
		trk_stats(t, &st);
		assert_int_equal(st.dirty_bytes, total_size(f));
		trk_abort(t);
		coll_free(&c);
	}
	/* full is a request for the same. */
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 1, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_all_blocks(f, &c);
	trk_abort(t);
	coll_free(&c);

	/* A whole cycle committed at 5 makes cycle 5 the base. */
	assert_int_equal(run_cycle(t, 4, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_all_blocks(f, &c);
	assert_int_equal(trk_commit(t, 5, err, sizeof(err)), 0);
	assert_int_equal(trk_cycle(t), 5);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 5, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 0);
	trk_abort(t);
	trk_close(t);
	coll_free(&c);
}

static void
test_disk_grew(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	struct trk_stats st;
	uint64_t sizes[NDISKS];
	uint8_t *more;
	char err[256];

	/* disk0 grows from 16 blocks + 1000 bytes to 20 blocks + 500 with
	 * data appended; disk1 grows by two zero blocks (ftruncate). */
	size_t add = 4 * BS - 500;
	more = malloc(add);
	assert_non_null(more);
	fill_random(more, add, 99);
	write_at(f->paths[0], DISK0_SIZE, more, add);
	free(more);
	set_size(f->paths[1], DISK1_SIZE + 2 * BS);

	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, sizes, err,
	    sizeof(err)), 0);
	assert_int_equal(sizes[0], 20 * (uint64_t)BS + 500);
	assert_int_equal(sizes[1], DISK1_SIZE + 2 * BS);
	/* disk1's old last block was a whole one: sending it again is
	 * allowed (it costs one block), not required. */
	uint64_t extra = 0;
	if (c.n == 8 && c.blocks[5].disk == 1 && c.blocks[5].offset ==
	    3 * (uint64_t)BS) {
		extra = c.blocks[5].len;
		memmove(&c.blocks[5], &c.blocks[6], 2 * sizeof(*c.blocks));
		c.n--;
	}
	static const struct want w[] = {
		{ 0, 16, 0 }, { 0, 17, 0 }, { 0, 18, 0 }, { 0, 19, 0 },
		{ 0, 20, 0 }, { 1, 4, 1 }, { 1, 5, 1 },
	};
	assert_emitted(f, &c, w, 7);
	trk_stats(t, &st);
	assert_int_equal(st.dirty_bytes, 4 * (uint64_t)BS + 500 + 2 * BS +
	    extra);
	assert_int_equal(trk_commit(t, 2, err, sizeof(err)), 0);

	/* The old short last block is sent again even when only zeros were
	 * appended behind it (its length changed). */
	set_size(f->paths[0], 21 * (uint64_t)BS);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	static const struct want w2[] = { { 0, 20, 0 } };
	assert_emitted(f, &c, w2, 1);
	assert_int_equal(c.blocks[0].len, BS);
	assert_int_equal(trk_commit(t, 3, err, sizeof(err)), 0);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 3, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 0);
	trk_abort(t);
	trk_close(t);
	coll_free(&c);
}

static void
test_disk_shrank(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	uint64_t sizes[NDISKS];
	char err[256];

	set_size(f->paths[1], DISK1_SIZE - 1);
	coll_init(&c, f);
	assert_int_equal(trk_begin(t, 2, 1, 0, sizes, err, sizeof(err)),
	    RD_ERR_SHRUNK);
	assert_non_null(strstr(err, f->paths[1]));
	assert_non_null(strstr(err, "shrank"));
	/* No cycle is open. */
	assert_int_equal(trk_scan(t, SIZE_MAX, collect, &c, err, sizeof(err)),
	    RD_ERR_STATE);
	assert_int_equal(trk_commit(t, 2, err, sizeof(err)), RD_ERR_STATE);
	assert_int_equal(trk_cycle(t), 1);

	/* Back to its size: the tracker carries on where it was. */
	set_size(f->paths[1], DISK1_SIZE);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	static const struct want w[] = { { 1, 3, 0 } };
	assert_emitted(f, &c, w, 1);	/* its last byte is now zero */
	trk_abort(t);
	trk_close(t);
	coll_free(&c);
}

static void
test_missing_disk(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = open_trk(f);
	uint64_t sizes[NDISKS];
	char err[256];

	assert_int_equal(unlink(f->paths[1]), 0);
	err[0] = '\0';
	assert_int_equal(trk_begin(t, 1, 0, 0, sizes, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);
	assert_non_null(strstr(err, f->paths[1]));
	trk_close(t);

	/* A directory is not a disk. */
	assert_int_equal(mkdir(f->paths[1], 0700), 0);
	t = open_trk(f);
	assert_int_not_equal(trk_begin(t, 1, 0, 0, sizes, err, sizeof(err)), 0);
	trk_close(t);
}

static void
test_corrupt_map(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	char err[256], map[400];
	uint8_t *data;
	size_t len;

	trk_close(t);
	dirty_disk0(f);
	snprintf(map, sizeof(map), "%s/tracker/web01/%s.map", f->state_dir,
	    f->names[0]);
	assert_int_equal(util_read_file(map, 1 << 20, &data, &len), 0);
	data[100] ^= 0x10;
	assert_int_equal(util_write_atomic(map, data, len), 0);
	free(data);

	/* disk0 is unknown now: all of it goes; disk1 is still known. */
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 0);
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 17);
	for (size_t i = 0; i < c.n; i++) {
		assert_int_equal(c.blocks[i].disk, 0);
		assert_int_equal(c.blocks[i].offset, i * BS);
	}
	assert_int_equal(trk_commit(t, 2, err, sizeof(err)), 0);
	assert_int_equal(trk_cycle(t), 2);
	trk_close(t);

	/* A map that is not a map at all, and an empty one. */
	assert_int_equal(util_write_atomic(map, "garbage", 7), 0);
	t = open_trk(f);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 17);
	trk_close(t);
	assert_int_equal(util_write_atomic(map, "", 0), 0);
	t = open_trk(f);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 17);
	trk_close(t);

	/* A lost map: the same. */
	assert_int_equal(unlink(map), 0);
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 0);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 17);
	trk_close(t);
	coll_free(&c);
}

/* An empty cycle writes each disk's small cycle file and leaves its map
 * as it is; a lost cycle file leaves the map's older cycle, so the next
 * cycle sends that disk whole (never "assume clean"). */
static void
test_empty_cycle_keeps_map(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	char err[256], map[NDISKS][400], cyc[420];
	struct stat before[NDISKS], after;

	for (int i = 0; i < NDISKS; i++) {
		snprintf(map[i], sizeof(map[i]), "%s/tracker/web01/%s.map",
		    f->state_dir, f->names[i]);
		assert_int_equal(stat(map[i], &before[i]), 0);
	}
	coll_init(&c, f);
	for (uint64_t cycle = 2; cycle <= 3; cycle++) {
		assert_int_equal(run_cycle(t, cycle - 1, 0, &c, SIZE_MAX, NULL,
		    err, sizeof(err)), 0);
		assert_int_equal(c.n, 0);
		assert_int_equal(trk_commit(t, cycle, err, sizeof(err)), 0);
		assert_int_equal(trk_cycle(t), cycle);
	}
	trk_close(t);
	for (int i = 0; i < NDISKS; i++) {
		assert_int_equal(stat(map[i], &after), 0);
		assert_int_equal(after.st_ino, before[i].st_ino);
		assert_int_equal(after.st_mtim.tv_sec, before[i].st_mtim.tv_sec);
		assert_int_equal(after.st_mtim.tv_nsec,
		    before[i].st_mtim.tv_nsec);
	}
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 3);
	assert_true(trk_proven(t, 3));
	trk_close(t);

	/* disk1's cycle file is lost: it is back at cycle 1, and the next
	 * cycle sends it whole while disk0 goes on incrementally. */
	snprintf(cyc, sizeof(cyc), "%s.cycle", map[1]);
	assert_int_equal(unlink(cyc), 0);
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 1);
	assert_false(trk_proven(t, 3));
	dirty_disk0(f);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 3, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	struct want w[NDIRTY0 + 4];
	memcpy(w, dirty0_want, sizeof(dirty0_want));
	for (int i = 0; i < 4; i++)
		w[NDIRTY0 + i] = (struct want){ 1, (uint64_t)i, -1 };
	assert_emitted(f, &c, w, NDIRTY0 + 4);
	assert_int_equal(trk_commit(t, 4, err, sizeof(err)), 0);
	trk_close(t);
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 4);
	trk_close(t);
	coll_free(&c);
}

/* Holes punched into data are zero blocks to send; holes the scan backend
 * skips without a read still count as read, and still compare. */
static void
test_holes(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	struct trk_stats st;
	char err[256];
	int fd = open(f->paths[0], O_WRONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	/* Blocks 6 and 7 whole (5 is zero already, next to them); the last,
	 * short block (1000 bytes) whole;
	 * 4 KiB inside block 2 (data around it: read as usual). */
	assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE |
	    FALLOC_FL_KEEP_SIZE, 6 * (off_t)BS, 2 * (off_t)BS), 0);
	assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE |
	    FALLOC_FL_KEEP_SIZE, 16 * (off_t)BS, 1000), 0);
	assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE |
	    FALLOC_FL_KEEP_SIZE, 2 * (off_t)BS + 4096, 4096), 0);
	assert_int_equal(close(fd), 0);

	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	const struct want w[] = { { 0, 2, 0 }, { 0, 6, 1 }, { 0, 7, 1 },
	    { 0, 16, 1 } };
	assert_emitted(f, &c, w, 4);
	for (size_t i = 0; i < c.n; i++)
		assert_int_equal(c.blocks[i].len, i == 3 ? 1000 : BS);
	trk_stats(t, &st);
	assert_int_equal(st.bytes_read, total_size(f));
	assert_int_equal(trk_commit(t, 2, err, sizeof(err)), 0);

	/* Nothing changed since: nothing sent, the holes compare equal. */
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(c.n, 0);
	trk_stats(t, &st);
	assert_int_equal(st.bytes_read, total_size(f));
	assert_int_equal(trk_commit(t, 3, err, sizeof(err)), 0);

	/* Sent whole (full): the hole blocks go too, as zeros. */
	coll_free(&c);
	assert_int_equal(run_cycle(t, 3, 1, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_all_blocks(f, &c);
	assert_true(c.blocks[5].zero && c.blocks[6].zero && c.blocks[7].zero &&
	    c.blocks[16].zero);
	trk_abort(t);
	trk_close(t);
	coll_free(&c);
}

static void
test_block_size_change(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = first_cycle(f);
	struct collector c;
	char err[256];

	trk_close(t);
	f->vm.block_size = 4096;
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 0);
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_all_blocks(f, &c);
	assert_int_equal(c.n, 16 * 16 + 1 + 4 * 16);
	assert_int_equal(trk_commit(t, 2, err, sizeof(err)), 0);
	trk_close(t);

	/* At the new size the tracker works incrementally again. */
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 2);
	write_at(f->paths[0], 3 * (uint64_t)BS + 4321, "z", 1);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	static const struct want w[] = { { 0, (3 * BS + 4321) / 4096, 0 } };
	assert_emitted(f, &c, w, 1);
	trk_close(t);
	coll_free(&c);
}

static void
test_emit_error_stops(void **state)
{
	struct fixture *f = *state;
	struct tracker *t = open_trk(f);
	struct collector c;
	uint64_t sizes[NDISKS];
	char err[256];

	coll_init(&c, f);
	c.fail_after = 3;
	c.fail_code = RD_ERR_NOSPACE;
	err[0] = '\0';
	assert_int_equal(run_cycle(t, 0, 0, &c, SIZE_MAX, sizes, err,
	    sizeof(err)), RD_ERR_NOSPACE);
	assert_int_equal(c.n, 3);
	assert_true(err[0] != '\0');
	trk_abort(t);
	assert_int_equal(trk_cycle(t), 0);

	/* Nothing was learnt from the stopped cycle. */
	coll_free(&c);
	c.fail_after = 0;
	assert_int_equal(run_cycle(t, 0, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_all_blocks(f, &c);
	assert_int_equal(trk_commit(t, 1, err, sizeof(err)), 0);

	/* Stopped in the middle of an incremental cycle: the blocks of
	 * that cycle come again, including those emitted before the stop. */
	dirty_disk0(f);
	coll_free(&c);
	c.fail_after = 2;
	c.fail_code = RD_ERR_PEER;
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), RD_ERR_PEER);
	assert_int_equal(c.n, 2);
	trk_abort(t);
	coll_free(&c);
	c.fail_after = 0;
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	assert_emitted(f, &c, dirty0_want, NDIRTY0);
	trk_close(t);
	coll_free(&c);
}

static void
test_trk_cycle_lowest(void **state)
{
	struct fixture *f = *state;
	struct tracker *t;
	struct blockmap bm;
	struct collector c;
	char err[256], map[NDISKS][400], tmp[420], ctmp[430];

	/* Maps saved at cycles 7 and 5 (by hand, with the disks' sizes). */
	assert_int_equal(util_mkdir_p(f->state_dir, 0700), 0);
	for (int i = 0; i < NDISKS; i++) {
		snprintf(map[i], sizeof(map[i]), "%s/tracker/web01/%s.map",
		    f->state_dir, f->names[i]);
		t = open_trk(f);	/* creates the directory */
		trk_close(t);
		bm_init(&bm, BS, file_size(f->paths[i]));
		bm.cycle = i == 0 ? 7 : 5;
		assert_int_equal(bm_save(map[i], &bm), 0);
		bm_free(&bm);
	}
	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 5);
	trk_close(t);

	/* A commit that saves disk0's map but not disk1's leaves disk1 at
	 * the older cycle; trk_cycle reports that one, and the next cycle
	 * sends disk1 whole but disk0 incrementally. */
	t = first_cycle(f);		/* both at 1 */
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 1, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	/* Neither the map nor (nothing changed) its cycle file can be
	 * written. */
	snprintf(tmp, sizeof(tmp), "%s.tmp", map[1]);
	assert_int_equal(mkdir(tmp, 0700), 0);
	snprintf(ctmp, sizeof(ctmp), "%s.cycle.tmp", map[1]);
	assert_int_equal(mkdir(ctmp, 0700), 0);
	err[0] = '\0';
	assert_int_not_equal(trk_commit(t, 2, err, sizeof(err)), 0);
	assert_non_null(strstr(err, map[1]));
	assert_int_equal(trk_cycle(t), 1);
	assert_int_equal(rmdir(tmp), 0);
	assert_int_equal(rmdir(ctmp), 0);
	trk_close(t);

	t = open_trk(f);
	assert_int_equal(trk_cycle(t), 1);
	dirty_disk0(f);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 2, 0, &c, SIZE_MAX, NULL, err,
	    sizeof(err)), 0);
	struct want w[NDIRTY0 + 4];
	memcpy(w, dirty0_want, sizeof(dirty0_want));
	for (int i = 0; i < 4; i++)
		w[NDIRTY0 + i] = (struct want){ 1, (uint64_t)i, -1 };
	assert_emitted(f, &c, w, NDIRTY0 + 4);
	trk_close(t);
	coll_free(&c);
}

/* 4K blocks over more than two 4 MiB read chunks, read a chunk per call. */
static void
test_small_blocks_many_chunks(void **state)
{
	struct fixture *f = *state;
	struct tracker *t;
	struct collector c;
	struct trk_stats st;
	char err[256];
	int calls = 0, r;
	static const int none[1];

	f->vm.block_size = 4096;
	make_disk(f->paths[0], (9u << 20) + 100, 5, none, 0);
	t = open_trk(f);
	coll_init(&c, f);
	assert_int_equal(trk_begin(t, 1, 0, 0, (uint64_t[NDISKS]){ 0 }, err,
	    sizeof(err)), 0);
	while ((r = trk_scan(t, 1, collect, &c, err, sizeof(err))) == 0)
		calls++;
	assert_int_equal(r, 1);
	assert_true(calls >= 3);
	assert_all_blocks(f, &c);
	trk_stats(t, &st);
	assert_int_equal(st.bytes_read, total_size(f));
	assert_int_equal(trk_commit(t, 1, err, sizeof(err)), 0);

	/* Bytes on both sides of the first chunk boundary, and the short
	 * last block. */
	write_at(f->paths[0], (4u << 20) - 1, "ab", 2);
	write_at(f->paths[0], (9u << 20) + 99, "c", 1);
	coll_free(&c);
	assert_int_equal(run_cycle(t, 1, 0, &c, 1, NULL, err, sizeof(err)),
	    0);
	static const struct want w[] = {
		{ 0, 1023, 0 }, { 0, 1024, 0 }, { 0, 9 * 256, 0 },
	};
	assert_emitted(f, &c, w, 3);
	assert_int_equal(c.blocks[2].len, 100);
	trk_stats(t, &st);
	assert_int_equal(st.dirty_bytes, 2 * 4096 + 100);
	assert_int_equal(st.bytes_read, total_size(f));
	trk_close(t);
	coll_free(&c);
}

/*
 * A disk cut short while a cycle reads it whole (the scan tracker reads
 * the live file): the read of the span past the new end fails, on
 * whichever thread read it, as "shrank"; nothing is committed.
 */
static void
test_shrank_while_read(void **state)
{
	struct fixture *f = *state;
	struct tracker *t;
	struct collector c;
	char err[256];
	int r;
	static const int none[1];

	f->vm.block_size = 4096;
	make_disk(f->paths[0], 9u << 20, 5, none, 0);
	t = open_trk(f);
	coll_init(&c, f);
	assert_int_equal(trk_begin(t, 1, 0, 0, (uint64_t[NDISKS]){ 0 }, err,
	    sizeof(err)), 0);
	set_size(f->paths[0], (5u << 20) + 512);
	while ((r = trk_scan(t, SIZE_MAX, collect, &c, err, sizeof(err))) == 0)
		;
	assert_int_equal(r, RD_ERR_SHRUNK);
	assert_non_null(strstr(err, "shrank"));
	assert_non_null(strstr(err, f->paths[0]));
	trk_abort(t);
	assert_int_equal(trk_cycle(t), 0);
	trk_close(t);
	coll_free(&c);
}

/*
 * REPLICAD_TEST_DEFINITION (test-only): a scan tracker reports the file's
 * text as it is at each cut, valid until the next; unset, none.
 */
static void
test_test_definition(void **state)
{
	struct fixture *f = *state;
	struct tracker *t;
	struct collector c;
	char err[256], path[400];
	uint64_t sizes[NDISKS];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/def.xml", f->dir);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("<domain><name>web01</name></domain>\n", fp);
	fclose(fp);
	t = open_trk(f);
	assert_null(trk_definition(t));		/* no cut yet */
	unsetenv("REPLICAD_TEST_DEFINITION");
	assert_int_equal(trk_begin(t, 1, 0, 0, sizes, err, sizeof(err)), 0);
	assert_null(trk_definition(t));
	trk_abort(t);

	setenv("REPLICAD_TEST_DEFINITION", path, 1);
	coll_init(&c, f);
	assert_int_equal(run_cycle(t, 0, 0, &c, 4u << 20, NULL, err,
	    sizeof(err)), 0);
	assert_non_null(trk_definition(t));
	assert_string_equal(trk_definition(t),
	    "<domain><name>web01</name></domain>\n");
	assert_int_equal(trk_commit(t, 1, err, sizeof(err)), 0);
	/* Changed between cuts: the next cut reports the new text. */
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("<domain><name>web01</name><vcpu>2</vcpu></domain>\n", fp);
	fclose(fp);
	assert_string_equal(trk_definition(t),
	    "<domain><name>web01</name></domain>\n");
	assert_int_equal(trk_begin(t, 2, 1, 0, sizes, err, sizeof(err)), 0);
	assert_string_equal(trk_definition(t),
	    "<domain><name>web01</name><vcpu>2</vcpu></domain>\n");
	trk_abort(t);
	/* A file that went: none. */
	unlink(path);
	assert_int_equal(trk_begin(t, 2, 1, 0, sizes, err, sizeof(err)), 0);
	assert_null(trk_definition(t));
	unsetenv("REPLICAD_TEST_DEFINITION");
	trk_close(t);
	coll_free(&c);
}

int
main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_first_cycle_sends_all),
		T(test_incremental),
		T(test_abort_keeps_state),
		T(test_replica_cycle_mismatch),
		T(test_disk_grew),
		T(test_disk_shrank),
		T(test_missing_disk),
		T(test_corrupt_map),
		T(test_empty_cycle_keeps_map),
		T(test_holes),
		T(test_block_size_change),
		T(test_emit_error_stops),
		T(test_trk_cycle_lowest),
		T(test_small_blocks_many_chunks),
		T(test_shrank_while_read),
		T(test_test_definition),
	};
#undef T

	log_set_level(LOG_LVL_ERROR);
	/* Whole disks read by the calling thread alone, then in parts on
	 * helper threads too (par.h): more helpers than this host has
	 * cores, so that parts finish out of order. */
	int r = cmocka_run_group_tests_name("one thread", tests, NULL, NULL);
	par_init(3);
	r |= cmocka_run_group_tests_name("with helpers", tests, NULL, NULL);
	par_fini();
	return r;
}
