/*
 * test_undo.c — undo segments on real files: a segment written over two
 * files restores their exact old bytes and sizes after they were
 * overwritten and grown; a damaged segment (any flipped byte, any
 * truncation, trailing bytes, another disk count) is refused with the
 * target files left exactly as they were.  The inverse of a segment
 * (undo_invert) takes the files back to where they were before the
 * segment was applied, and is not written at all from a damaged one.
 * Format version 2: compressible content is stored compressed, a
 * compressed record never yields more or less than it declares, cloned
 * records (real clones where TMPDIR is on XFS reflink=1 or btrfs) come
 * back exactly through apply and merge, and version 1 segments are still
 * applied.
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
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "digest.h"
#include "err.h"
#include "log.h"
#include "undo.h"
#include "util.h"

#define KB	1024u

struct fixture {
	char	dir[256];
	char	seg[300];
	char	tmp[310];
	char	redo[300];
	char	redo_tmp[310];
	char	disk[2][300];
	int	fd[2];
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
			p[i] = 0x5a;
	}
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/test_undo.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->seg, sizeof(f->seg), "%s/7.undo", f->dir);
	snprintf(f->tmp, sizeof(f->tmp), "%s.tmp", f->seg);
	snprintf(f->redo, sizeof(f->redo), "%s/7.redo", f->dir);
	snprintf(f->redo_tmp, sizeof(f->redo_tmp), "%s.tmp", f->redo);
	for (int i = 0; i < 2; i++) {
		snprintf(f->disk[i], sizeof(f->disk[i]), "%s/disk%d", f->dir, i);
		f->fd[i] = open(f->disk[i], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (f->fd[i] < 0)
			return -1;
	}
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	for (int i = 0; i < 2; i++)
		close(f->fd[i]);
	util_rm_rf(f->dir);
	free(f);
	return 0;
}

/* The whole content of a file (its size in *len). */
static uint8_t *
snapshot(int fd, size_t *len)
{
	struct stat sb;
	uint8_t *p;

	assert_int_equal(fstat(fd, &sb), 0);
	*len = (size_t)sb.st_size;
	p = malloc(*len ? *len : 1);
	assert_non_null(p);
	assert_int_equal(util_pread_full(fd, p, *len, 0), 0);
	return p;
}

static void
assert_content(int fd, const uint8_t *want, size_t len)
{
	size_t got_len;
	uint8_t *got = snapshot(fd, &got_len);

	assert_int_equal(got_len, len);
	assert_memory_equal(got, want, len);
	free(got);
}

static void
set_content(int fd, const uint8_t *p, size_t len)
{
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(util_pwrite_full(fd, p, len, 0), 0);
}

static void
write_file(const char *path, const void *p, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(util_write_full(fd, p, len), 0);
	assert_int_equal(close(fd), 0);
}

static int
exists(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0;
}

/*
 * The main scenario.  disk0: 300K of data with [64K, 192K) zero;
 * disk1: 10000 bytes.  The cycle overwrites:
 *   disk0 [0, 64K)         data              -> DATA
 *   disk0 [64K, 192K)      zeros             -> ZERO
 *   disk0 [192K, 200K)     data              -> DATA (adjacent ranges)
 *   disk0 [256K, 320K)     crosses 300K      -> only [256K, 300K) kept
 *   disk0 [400K, 464K)     past the old size -> nothing
 *   disk1 [0, 16K)         crosses 10000     -> [0, 10000)
 * and grows disk0 to 500K, disk1 to 20000.
 */
#define D0_OLD	(300 * KB)
#define D1_OLD	10000u
#define D0_NEW	(500 * KB)
#define D1_NEW	20000u

struct range {
	uint16_t disk;
	uint64_t off, len;
};

static const struct range ranges[] = {
	{ 0, 0, 64 * KB },
	{ 0, 64 * KB, 128 * KB },
	{ 0, 192 * KB, 8 * KB },
	{ 0, 256 * KB, 64 * KB },
	{ 0, 400 * KB, 64 * KB },
	{ 1, 0, 16 * KB },
};
#define NRANGES	(sizeof(ranges) / sizeof(ranges[0]))

struct scenario {
	uint8_t	*old[2];
	size_t	 old_len[2];
};

static void
make_old(struct fixture *f, struct scenario *sc)
{
	sc->old_len[0] = D0_OLD;
	sc->old_len[1] = D1_OLD;
	for (int i = 0; i < 2; i++) {
		sc->old[i] = malloc(sc->old_len[i]);
		assert_non_null(sc->old[i]);
		fill_random(sc->old[i], sc->old_len[i], (uint64_t)i + 10);
	}
	memset(sc->old[0] + 64 * KB, 0, 128 * KB);
	for (int i = 0; i < 2; i++)
		set_content(f->fd[i], sc->old[i], sc->old_len[i]);
}

static void
free_old(struct scenario *sc)
{
	free(sc->old[0]);
	free(sc->old[1]);
}

/* Write the segment for the scenario; returns its size. */
static uint64_t
write_segment(struct fixture *f)
{
	const uint64_t sizes[2] = { D0_OLD, D1_OLD };
	struct undo_writer *w = NULL;
	uint64_t bytes = 0;

	assert_int_equal(undo_create(f->seg, 7, 2, sizes, &w), 0);
	assert_true(exists(f->tmp));
	assert_false(exists(f->seg));
	for (size_t i = 0; i < NRANGES; i++)
		assert_int_equal(undo_save_range(w, ranges[i].disk,
		    f->fd[ranges[i].disk], ranges[i].off, ranges[i].len), 0);
	assert_int_equal(undo_finish(w, &bytes), 0);
	assert_false(exists(f->tmp));
	assert_true(exists(f->seg));
	return bytes;
}

/* What the cycle does: new data over every range, and growth. */
static void
modify(struct fixture *f, uint64_t seed)
{
	for (size_t i = 0; i < NRANGES; i++) {
		uint8_t *p = malloc(ranges[i].len);
		assert_non_null(p);
		fill_random(p, ranges[i].len, seed + i);
		assert_int_equal(util_pwrite_full(f->fd[ranges[i].disk], p,
		    ranges[i].len, (off_t)ranges[i].off), 0);
		free(p);
	}
	assert_int_equal(ftruncate(f->fd[0], D0_NEW), 0);
	assert_int_equal(ftruncate(f->fd[1], D1_NEW), 0);
}

/* Apply must fail with want and leave both files as they are now. */
static void
assert_refused_untouched(struct fixture *f, uint16_t ndisks, int want)
{
	size_t len[2];
	uint8_t *before[2];
	uint64_t sizes[2] = { 12345, 67890 };
	int r;

	for (int i = 0; i < 2; i++)
		before[i] = snapshot(f->fd[i], &len[i]);
	r = undo_apply(f->seg, f->fd, ndisks, sizes);
	/* Nothing written first: that is what matters most. */
	int changed = -1;
	for (int i = 0; i < 2; i++) {
		size_t now_len;
		uint8_t *now = snapshot(f->fd[i], &now_len);
		if (changed < 0 && (now_len != len[i] ||
		    memcmp(now, before[i], len[i]) != 0))
			changed = i;
		free(now);
		free(before[i]);
	}
	if (changed >= 0)
		fail_msg("undo_apply returned %d (%s) and changed disk%d", r,
		    rd_strerror(r), changed);
	if (want == 0)
		assert_int_not_equal(r, 0);
	else
		assert_int_equal(r, want);
	assert_int_equal(sizes[0], 12345);
	assert_int_equal(sizes[1], 67890);
}

/* --- tests --------------------------------------------------------------- */

static void
test_round_trip(void **state)
{
	struct fixture *f = *state;
	struct scenario sc;
	struct stat sb;
	uint64_t bytes, sizes[2];

	make_old(f, &sc);
	bytes = write_segment(f);
	assert_int_equal(stat(f->seg, &sb), 0);
	assert_int_equal((uint64_t)sb.st_size, bytes);
	/* The zero range costs no data: the segment holds the data ranges
	 * (64K + 8K + 44K + 10000 bytes) and headers only. */
	assert_true(bytes < 64 * KB + 8 * KB + 44 * KB + D1_OLD + 1024);
	assert_true(bytes > 64 * KB + 8 * KB + 44 * KB + D1_OLD);

	modify(f, 100);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, sizes), 0);
	assert_int_equal(sizes[0], D0_OLD);
	assert_int_equal(sizes[1], D1_OLD);
	assert_content(f->fd[0], sc.old[0], sc.old_len[0]);
	assert_content(f->fd[1], sc.old[1], sc.old_len[1]);

	/* Applying twice is harmless (recovery may do it), and old_sizes
	 * may be NULL. */
	modify(f, 200);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	assert_content(f->fd[0], sc.old[0], sc.old_len[0]);
	assert_content(f->fd[1], sc.old[1], sc.old_len[1]);
	free_old(&sc);
}

/* Ranges longer than one read chunk, data and zeros, several files. */
static void
test_large_ranges(void **state)
{
	struct fixture *f = *state;
	const size_t n0 = (3u << 20) + 777, n1 = 5u << 20;
	uint8_t *old0 = malloc(n0), *old1 = calloc(1, n1), *junk;
	struct undo_writer *w;
	uint64_t sizes[2] = { n0, n1 }, bytes;

	assert_non_null(old0);
	assert_non_null(old1);
	fill_random(old0, n0, 3);
	memset(old0 + (1u << 20), 0, 1u << 20);	/* one zero chunk inside */
	set_content(f->fd[0], old0, n0);
	set_content(f->fd[1], old1, n1);	/* all zero */

	assert_int_equal(undo_create(f->seg, 9, 2, sizes, &w), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 0, n0), 0);
	assert_int_equal(undo_save_range(w, 1, f->fd[1], 0, n1), 0);
	assert_int_equal(undo_finish(w, &bytes), 0);
	/* Zeros are not stored. */
	assert_true(bytes < n0 - (1u << 20) + 4096);

	junk = malloc(n1);
	assert_non_null(junk);
	fill_random(junk, n1, 4);
	set_content(f->fd[0], junk, n1);	/* also grows disk0 */
	set_content(f->fd[1], junk, n1);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	assert_content(f->fd[0], old0, n0);
	assert_content(f->fd[1], old1, n1);
	free(old0);
	free(old1);
	free(junk);
}

/* A segment that saves nothing still restores the sizes. */
static void
test_empty_segment(void **state)
{
	struct fixture *f = *state;
	const uint64_t sizes[2] = { 100, 0 };
	struct undo_writer *w;
	uint8_t old[100], big[5000];
	uint64_t got[2];

	fill_random(old, sizeof(old), 5);
	set_content(f->fd[0], old, sizeof(old));
	assert_int_equal(undo_create(f->seg, 1, 2, sizes, &w), 0);
	/* Ranges wholly past the old sizes save nothing. */
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 100, 4096), 0);
	assert_int_equal(undo_save_range(w, 1, f->fd[1], 0, 4096), 0);
	assert_int_equal(undo_finish(w, NULL), 0);

	fill_random(big, sizeof(big), 6);
	assert_int_equal(util_pwrite_full(f->fd[0], big, sizeof(big), 100), 0);
	assert_int_equal(util_pwrite_full(f->fd[1], big, sizeof(big), 0), 0);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, got), 0);
	assert_int_equal(got[0], 100);
	assert_int_equal(got[1], 0);
	assert_content(f->fd[0], old, sizeof(old));
	assert_content(f->fd[1], old, 0);
}

/* A valid segment over the scenario, its bytes, and the files modified. */
static uint8_t *
damaged_setup(struct fixture *f, struct scenario *sc, size_t *len)
{
	uint8_t *seg;

	make_old(f, sc);
	write_segment(f);
	modify(f, 300);
	assert_int_equal(util_read_file(f->seg, 1 << 30, &seg, len), 0);
	return seg;
}

/* A small segment, so that every byte of it can be damaged in turn. */
static uint8_t *
small_setup(struct fixture *f, size_t *len)
{
	const uint64_t sizes[2] = { 5000, 300 };
	struct undo_writer *w;
	uint8_t d0[5000], d1[300], *seg;

	fill_random(d0, sizeof(d0), 20);
	memset(d0 + 1000, 0, 2000);
	fill_random(d1, sizeof(d1), 21);
	set_content(f->fd[0], d0, sizeof(d0));
	set_content(f->fd[1], d1, sizeof(d1));
	assert_int_equal(undo_create(f->seg, 3, 2, sizes, &w), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 100, 100), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 1000, 2000), 0);
	assert_int_equal(undo_save_range(w, 1, f->fd[1], 250, 100), 0);
	assert_int_equal(undo_finish(w, NULL), 0);
	/* The cycle: new bytes everywhere, larger files. */
	fill_random(d0, sizeof(d0), 22);
	fill_random(d1, sizeof(d1), 23);
	set_content(f->fd[0], d0, sizeof(d0));
	assert_int_equal(util_pwrite_full(f->fd[0], d0, sizeof(d0), 5000), 0);
	set_content(f->fd[1], d1, sizeof(d1));
	assert_int_equal(util_pwrite_full(f->fd[1], d0, 64, 300), 0);
	assert_int_equal(util_read_file(f->seg, 1 << 20, &seg, len), 0);
	/* header 22+16 + DATA 15+100 + ZERO 15 + DATA 15+50 + trailer 25 */
	assert_int_equal(*len, 38 + 115 + 15 + 65 + 25);
	return seg;
}

static void
test_flipped_byte(void **state)
{
	struct fixture *f = *state;
	size_t len;
	uint8_t *seg = small_setup(f, &len);

	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 7) {
			seg[i] ^= (uint8_t)(1u << bit);
			write_file(f->seg, seg, len);
			/* A damaged version field may read as a newer
			 * format; everything else is corrupt. */
			assert_refused_untouched(f, 2, i >= 8 && i < 12 ? 0 :
			    RD_ERR_CORRUPT);
			seg[i] ^= (uint8_t)(1u << bit);
		}
	}
	/* Repaired: applies. */
	write_file(f->seg, seg, len);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	free(seg);
}

static void
test_flipped_byte_large(void **state)
{
	struct fixture *f = *state;
	struct scenario sc;
	size_t len;
	uint8_t *seg = damaged_setup(f, &sc, &len);
	const size_t where[] = { 0, 25, 40, 45, 60, 1000, len / 2, len - 26,
	    len - 25, len - 17, len - 16, len - 1 };

	for (size_t k = 0; k < sizeof(where) / sizeof(where[0]); k++) {
		seg[where[k]] ^= 0x40;
		write_file(f->seg, seg, len);
		assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
		seg[where[k]] ^= 0x40;
	}
	free(seg);
	free_old(&sc);
}

static void
test_truncated(void **state)
{
	struct fixture *f = *state;
	size_t len;
	uint8_t *seg = small_setup(f, &len);

	for (size_t n = 0; n < len; n++) {
		write_file(f->seg, seg, n);
		assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	}
	free(seg);
}

static void
test_trailing_bytes(void **state)
{
	struct fixture *f = *state;
	size_t len;
	uint8_t *seg = small_setup(f, &len), *longer;

	longer = calloc(1, len + 64);
	assert_non_null(longer);
	memcpy(longer, seg, len);
	write_file(f->seg, longer, len + 1);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	longer[len] = 0xFF;
	write_file(f->seg, longer, len + 1);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	/* A whole second trailer behind the first. */
	memcpy(longer + len, seg + len - 25, 25);
	write_file(f->seg, longer, len + 25);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	free(longer);
	free(seg);
}

static void
test_ndisks_mismatch(void **state)
{
	struct fixture *f = *state;
	struct scenario sc;
	size_t len;
	uint8_t *seg = damaged_setup(f, &sc, &len);
	int fds[3] = { f->fd[0], f->fd[1], f->fd[1] };

	assert_refused_untouched(f, 1, 0);
	/* ndisks 3: the third fd is never touched either. */
	size_t l0, l1;
	uint8_t *b0 = snapshot(f->fd[0], &l0), *b1 = snapshot(f->fd[1], &l1);
	assert_int_not_equal(undo_apply(f->seg, fds, 3, NULL), 0);
	assert_content(f->fd[0], b0, l0);
	assert_content(f->fd[1], b1, l1);
	free(b0);
	free(b1);
	assert_refused_untouched(f, 0, 0);
	free(seg);
	free_old(&sc);
}

static void
test_discard(void **state)
{
	struct fixture *f = *state;
	const uint64_t sizes[2] = { 100, 100 };
	struct undo_writer *w;
	uint8_t d[100];

	fill_random(d, sizeof(d), 7);
	set_content(f->fd[0], d, sizeof(d));
	assert_int_equal(undo_create(f->seg, 1, 2, sizes, &w), 0);
	assert_true(exists(f->tmp));
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 0, 100), 0);
	undo_discard(w);
	assert_false(exists(f->tmp));
	assert_false(exists(f->seg));
	undo_discard(NULL);

	/* A complete segment is not touched by discarding a later one. */
	assert_int_equal(undo_create(f->seg, 1, 2, sizes, &w), 0);
	assert_int_equal(undo_finish(w, NULL), 0);
	assert_true(exists(f->seg));
	char other[320];
	snprintf(other, sizeof(other), "%s/8.undo", f->dir);
	assert_int_equal(undo_create(other, 8, 2, sizes, &w), 0);
	undo_discard(w);
	assert_true(exists(f->seg));
	snprintf(other, sizeof(other), "%s/8.undo.tmp", f->dir);
	assert_false(exists(other));
}

static void
test_missing(void **state)
{
	struct fixture *f = *state;

	assert_refused_untouched(f, 2, RD_ERR_NOT_FOUND);
	/* A temporary segment is not a segment. */
	write_file(f->tmp, "RDUNDOSG", 8);
	assert_refused_untouched(f, 2, RD_ERR_NOT_FOUND);
}

static void
test_writer_refusals(void **state)
{
	struct fixture *f = *state;
	uint64_t sizes[UNDO_MAX_DISKS + 1] = { 0 };
	struct undo_writer *w = NULL;
	char path[400];

	assert_int_equal(undo_create(f->seg, 1, 0, sizes, &w), RD_ERR_RANGE);
	assert_int_equal(undo_create(f->seg, 1, UNDO_MAX_DISKS + 1, sizes, &w),
	    RD_ERR_RANGE);
	assert_false(exists(f->tmp));
	snprintf(path, sizeof(path), "%s/missing/1.undo", f->dir);
	assert_int_not_equal(undo_create(path, 1, 1, sizes, &w), 0);

	sizes[0] = sizes[1] = 100;
	assert_int_equal(undo_create(f->seg, 1, 2, sizes, &w), 0);
	assert_int_equal(undo_save_range(w, 2, f->fd[0], 0, 10),
	    RD_ERR_RANGE);
	/* Old size 100 but the file is empty: the read fails. */
	assert_int_not_equal(undo_save_range(w, 1, f->fd[1], 0, 10), 0);
	undo_discard(w);
	assert_false(exists(f->tmp));
}

/*
 * The check pass must refuse a segment the write pass cannot carry out:
 * old sizes that are no file size at all (above INT64_MAX) must not lead
 * to a half-written target.
 */
static void
test_impossible_size_refused_before_writing(void **state)
{
	struct fixture *f = *state;
	const uint64_t sizes[2] = { 1000, UINT64_MAX };
	struct undo_writer *w;
	uint8_t old0[1000], old1[100];

	fill_random(old0, sizeof(old0), 30);
	fill_random(old1, sizeof(old1), 31);
	set_content(f->fd[0], old0, sizeof(old0));
	set_content(f->fd[1], old1, sizeof(old1));
	assert_int_equal(undo_create(f->seg, 1, 2, sizes, &w), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 0, 1000), 0);
	assert_int_equal(undo_save_range(w, 1, f->fd[1], 0, 100), 0);
	assert_int_equal(undo_finish(w, NULL), 0);

	fill_random(old0, sizeof(old0), 32);
	set_content(f->fd[0], old0, sizeof(old0));
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
}

/* --- undo_invert --------------------------------------------------------- */

/* Both files as they are now. */
struct state {
	uint8_t	*p[2];
	size_t	 len[2];
};

static void
state_take(struct fixture *f, struct state *s)
{
	for (int i = 0; i < 2; i++)
		s->p[i] = snapshot(f->fd[i], &s->len[i]);
}

static void
state_assert(struct fixture *f, const struct state *s)
{
	for (int i = 0; i < 2; i++)
		assert_content(f->fd[i], s->p[i], s->len[i]);
}

static void
state_free(struct state *s)
{
	free(s->p[0]);
	free(s->p[1]);
}

/*
 * State A is the scenario's old content (zeros in [64K, 192K) of disk0);
 * U, made the normal way before the cycle, takes the files back to A.
 * State B is the cycle's result with zeros written over data (disk0
 * [192K, 200K), disk1 [0, 4K)) and both disks grown (disk0's tail holds
 * data at [300K, 320K) and [400K, 464K), zeros between).  The inverse R
 * of U, taken at B, must bring B back from A, tail included.
 */
static void
test_invert_round_trip(void **state)
{
	struct fixture *f = *state;
	struct scenario sc;
	struct state a, b;
	struct stat sb;
	uint64_t bytes = 0, sizes[2];
	uint8_t zeros[8 * KB];

	make_old(f, &sc);
	state_take(f, &a);
	write_segment(f);
	modify(f, 400);
	memset(zeros, 0, sizeof(zeros));
	assert_int_equal(util_pwrite_full(f->fd[0], zeros, 8 * KB, 192 * KB),
	    0);
	assert_int_equal(util_pwrite_full(f->fd[1], zeros, 4 * KB, 0), 0);
	state_take(f, &b);
	assert_int_equal(b.len[0], D0_NEW);
	assert_int_equal(b.len[1], D1_NEW);

	assert_int_equal(undo_invert(f->seg, f->fd, 2, 7, f->redo, &bytes), 0);
	assert_true(exists(f->redo));
	assert_false(exists(f->redo_tmp));
	assert_int_equal(stat(f->redo, &sb), 0);
	assert_int_equal((uint64_t)sb.st_size, bytes);
	/* Inverting only reads the files. */
	state_assert(f, &b);

	/* U: back to A.  R: forward to B again, grown tails with their
	 * content, zeros where B has zeros. */
	assert_int_equal(undo_apply(f->seg, f->fd, 2, sizes), 0);
	assert_int_equal(sizes[0], D0_OLD);
	assert_int_equal(sizes[1], D1_OLD);
	state_assert(f, &a);
	assert_int_equal(undo_apply(f->redo, f->fd, 2, sizes), 0);
	assert_int_equal(sizes[0], D0_NEW);
	assert_int_equal(sizes[1], D1_NEW);
	state_assert(f, &b);

	/* Back and forth again: both segments stay valid. */
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	state_assert(f, &a);
	assert_int_equal(undo_apply(f->redo, f->fd, 2, NULL), 0);
	state_assert(f, &b);

	/* Applying R at B changes nothing (it holds B's own bytes). */
	assert_int_equal(undo_apply(f->redo, f->fd, 2, NULL), 0);
	state_assert(f, &b);

	/* The inverse of R, taken at A, is U again: A -> B -> A. */
	char back[320];
	snprintf(back, sizeof(back), "%s/7.back", f->dir);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	assert_int_equal(undo_invert(f->redo, f->fd, 2, 7, back, NULL), 0);
	state_assert(f, &a);
	assert_int_equal(undo_apply(f->redo, f->fd, 2, NULL), 0);
	state_assert(f, &b);
	assert_int_equal(undo_apply(back, f->fd, 2, NULL), 0);
	state_assert(f, &a);

	state_free(&a);
	state_free(&b);
	free_old(&sc);
}

/* A disk that shrank (applying U grows it): R cuts it back to B. */
static void
test_invert_shrunk_disk(void **state)
{
	struct fixture *f = *state;
	struct state a, b;
	const uint64_t sizes[2] = { 50 * KB, 3000 };
	struct undo_writer *w;
	uint8_t d0[50 * KB], d1[3000];

	fill_random(d0, sizeof(d0), 50);
	fill_random(d1, sizeof(d1), 51);
	set_content(f->fd[0], d0, sizeof(d0));
	set_content(f->fd[1], d1, sizeof(d1));
	state_take(f, &a);
	assert_int_equal(undo_create(f->seg, 7, 2, sizes, &w), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 10 * KB, 40 * KB),
	    0);
	assert_int_equal(undo_save_range(w, 1, f->fd[1], 0, 3000), 0);
	assert_int_equal(undo_finish(w, NULL), 0);
	/* B: disk0 cut to 20K with new bytes at [10K, 20K); disk1 grown. */
	fill_random(d0, sizeof(d0), 52);
	assert_int_equal(ftruncate(f->fd[0], 20 * KB), 0);
	assert_int_equal(util_pwrite_full(f->fd[0], d0, 10 * KB, 10 * KB), 0);
	assert_int_equal(util_pwrite_full(f->fd[1], d0, 5000, 3000), 0);
	state_take(f, &b);

	assert_int_equal(undo_invert(f->seg, f->fd, 2, 7, f->redo, NULL), 0);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	state_assert(f, &a);
	assert_int_equal(undo_apply(f->redo, f->fd, 2, NULL), 0);
	state_assert(f, &b);
	state_free(&a);
	state_free(&b);
}

/* undo_invert must fail with want and write nothing: no R, no R.tmp,
 * files unchanged. */
static void
assert_invert_refused(struct fixture *f, uint16_t ndisks, int want)
{
	struct state before;
	uint64_t bytes = 12345;
	int r;

	state_take(f, &before);
	r = undo_invert(f->seg, f->fd, ndisks, 7, f->redo, &bytes);
	if (exists(f->redo) || exists(f->redo_tmp))
		fail_msg("undo_invert returned %d (%s) and left %s", r,
		    rd_strerror(r), exists(f->redo) ? f->redo : f->redo_tmp);
	state_assert(f, &before);
	state_free(&before);
	if (want == 0)
		assert_int_not_equal(r, 0);
	else
		assert_int_equal(r, want);
	assert_int_equal(bytes, 12345);
}

static void
test_invert_corrupt_refused(void **state)
{
	struct fixture *f = *state;
	size_t len;
	uint8_t *seg = small_setup(f, &len);

	/* Every byte damaged in turn. */
	for (size_t i = 0; i < len; i++) {
		seg[i] ^= 0x01;
		write_file(f->seg, seg, len);
		assert_invert_refused(f, 2, i >= 8 && i < 12 ? 0 :
		    RD_ERR_CORRUPT);
		seg[i] ^= 0x01;
	}
	/* Every truncation, and a byte too many. */
	for (size_t n = 0; n < len; n++) {
		write_file(f->seg, seg, n);
		assert_invert_refused(f, 2, RD_ERR_CORRUPT);
	}
	uint8_t *longer = calloc(1, len + 1);
	assert_non_null(longer);
	memcpy(longer, seg, len);
	write_file(f->seg, longer, len + 1);
	assert_invert_refused(f, 2, RD_ERR_CORRUPT);
	free(longer);

	/* Another disk count; no segment at all. */
	write_file(f->seg, seg, len);
	assert_invert_refused(f, 1, 0);
	unlink(f->seg);
	assert_invert_refused(f, 2, RD_ERR_NOT_FOUND);

	/* Repaired: the inverse is written. */
	write_file(f->seg, seg, len);
	assert_int_equal(undo_invert(f->seg, f->fd, 2, 7, f->redo, NULL), 0);
	assert_true(exists(f->redo));
	free(seg);
}

/* A damaged segment in the middle of a large one: refused before the
 * inverse is started, even where the damage lies past megabytes of good
 * records. */
static void
test_invert_corrupt_large_refused(void **state)
{
	struct fixture *f = *state;
	struct scenario sc;
	size_t len;
	uint8_t *seg = damaged_setup(f, &sc, &len);
	const size_t where[] = { 0, 40, len / 2, len - 26, len - 1 };

	for (size_t k = 0; k < sizeof(where) / sizeof(where[0]); k++) {
		seg[where[k]] ^= 0x40;
		write_file(f->seg, seg, len);
		assert_invert_refused(f, 2, RD_ERR_CORRUPT);
		seg[where[k]] ^= 0x40;
	}
	free(seg);
	free_old(&sc);
}


/*
 * One "cycle": disjoint writes at 4 KiB-aligned slots of both files (some
 * random, some zeros, some past the end, growing the file), each range's
 * old content saved first into a new segment at path, as a replica does.
 */
static void
merge_step(struct fixture *f, const char *path, uint64_t cycle,
    uint64_t seed, uint64_t grow)
{
	uint64_t sizes[2], s = seed * 7919 + 3;
	struct undo_writer *w;
	struct stat sb;
	uint8_t used[2][64] = { { 0 } };

	for (int i = 0; i < 2; i++) {
		assert_int_equal(fstat(f->fd[i], &sb), 0);
		sizes[i] = (uint64_t)sb.st_size;
	}
	assert_int_equal(undo_create(path, cycle, 2, sizes, &w), 0);
	for (int k = 0; k < 12; k++) {
		uint16_t d = (uint16_t)(next_rand(&s) % 2);
		size_t slot = (size_t)(next_rand(&s) % 60);
		size_t n = 1 + (size_t)(next_rand(&s) % 3);	/* slots */
		int clash = 0;
		for (size_t j = slot; j < slot + n; j++)
			clash |= used[d][j];
		if (clash)
			continue;
		for (size_t j = slot; j < slot + n; j++)
			used[d][j] = 1;
		uint64_t off = (uint64_t)slot * 4 * KB + (d == 0 ? grow / 2 : 0);
		size_t len = n * 4 * KB - (size_t)(next_rand(&s) % 100);
		uint8_t *buf = calloc(1, len);
		assert_non_null(buf);
		if (next_rand(&s) % 4 != 0)
			fill_random(buf, len, next_rand(&s));
		assert_int_equal(undo_save_range(w, d, f->fd[d], off, len), 0);
		assert_int_equal(util_pwrite_full(f->fd[d], buf, len,
		    (off_t)off), 0);
		free(buf);
	}
	if (grow > 0) {
		/* A write past the end grows disk 0 (no old content). */
		uint8_t tail[8 * KB];
		uint64_t off = sizes[0] + grow - sizeof(tail);
		fill_random(tail, sizeof(tail), seed + 99);
		assert_int_equal(undo_save_range(w, 0, f->fd[0], off,
		    sizeof(tail)), 0);
		assert_int_equal(util_pwrite_full(f->fd[0], tail, sizeof(tail),
		    (off_t)off), 0);
	}
	uint64_t bytes;
	assert_int_equal(undo_finish(w, &bytes), 0);
}

/*
 * Three states A, B, C; U_j takes B back to A, U_k takes C back to B.
 * Their merge takes C straight back to A: for every byte, the older
 * segment's content wins; sizes are A's.  Corrupt input writes nothing.
 */
static void
test_merge(void **state)
{
	struct fixture *f = *state;
	struct state a, b, c;
	char uj[320], uk[320], m[320], mt[330];
	uint64_t bytes = 0, sizes[2];
	uint8_t d0[200 * KB], d1[100 * KB];

	snprintf(uj, sizeof(uj), "%s/1.undo", f->dir);
	snprintf(uk, sizeof(uk), "%s/2.undo", f->dir);
	snprintf(m, sizeof(m), "%s/2.1.undo", f->dir);
	snprintf(mt, sizeof(mt), "%s.tmp", m);
	fill_random(d0, sizeof(d0), 60);
	fill_random(d1, sizeof(d1), 61);
	set_content(f->fd[0], d0, sizeof(d0));
	set_content(f->fd[1], d1, sizeof(d1));
	state_take(f, &a);
	merge_step(f, uj, 1, 1, 0);
	state_take(f, &b);
	merge_step(f, uk, 2, 2, 128 * KB);	/* disk 0 grows */
	state_take(f, &c);
	assert_true(c.len[0] > b.len[0]);

	assert_int_equal(undo_merge(uk, uj, 2, m, &bytes), 0);
	assert_true(exists(m));
	assert_false(exists(mt));
	state_assert(f, &c);			/* merging only reads */
	assert_int_equal(undo_apply(m, f->fd, 2, sizes), 0);
	assert_int_equal(sizes[0], a.len[0]);
	assert_int_equal(sizes[1], a.len[1]);
	state_assert(f, &a);

	/* The two segments in turn give the same result. */
	assert_int_equal(undo_apply(uj, f->fd, 2, NULL), 0);	/* no-op on A */
	state_assert(f, &a);

	/* Merging a corrupt segment writes nothing. */
	unlink(m);
	int fd = open(uj, O_RDWR);
	assert_true(fd >= 0);
	uint8_t x;
	assert_int_equal(pread(fd, &x, 1, 40), 1);
	x ^= 0x40;
	assert_int_equal(pwrite(fd, &x, 1, 40), 1);
	close(fd);
	assert_int_equal(undo_merge(uk, uj, 2, m, NULL), RD_ERR_CORRUPT);
	assert_false(exists(m));
	assert_false(exists(mt));
	assert_int_equal(undo_merge(uk, "/nonexistent/1.undo", 2, m, NULL),
	    RD_ERR_NOT_FOUND);
	assert_false(exists(m));
	state_free(&a);
	state_free(&b);
	state_free(&c);
}

/* --- format version 2: compressed and cloned records ---------------------- */

/* Text-like old content: compresses well. */
static void
fill_text(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
	static const char *words[] = { "disk", "cycle", "point", "undo",
	    "replica", "segment", "block", "write" };

	for (size_t i = 0; i < len;) {
		const char *w = words[next_rand(&s) % 8];
		for (size_t k = 0; w[k] && i < len; k++)
			p[i++] = (uint8_t)w[k];
		if (i < len)
			p[i++] = next_rand(&s) % 9 == 0 ? '\n' : ' ';
	}
}

/* Segment bytes built by hand: header, records, trailer. */
struct seg {
	uint8_t	 p[1 << 20];
	size_t	 len;
	uint64_t nrec;
	size_t	 hole_at, hole_len;	/* a CLONE record's content */
};

static void
seg_put(struct seg *s, const void *p, size_t n)
{
	assert_true(s->len + n <= sizeof(s->p));
	memcpy(s->p + s->len, p, n);
	s->len += n;
}

static void
seg_be(struct seg *s, uint64_t v, int n)
{
	uint8_t b[8];
	for (int i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	seg_put(s, b, (size_t)n);
}

static void
seg_begin(struct seg *s, uint32_t version, uint64_t size0, uint64_t size1)
{
	memset(s, 0, sizeof(*s));
	seg_put(s, "RDUNDOSG", 8);
	seg_be(s, version, 4);
	seg_be(s, 7, 8);
	seg_be(s, 2, 2);
	seg_be(s, size0, 8);
	seg_be(s, size1, 8);
}

static void
seg_rec(struct seg *s, uint8_t type, uint16_t disk, uint64_t off,
    uint32_t len)
{
	seg_be(s, type, 1);
	seg_be(s, disk, 2);
	seg_be(s, off, 8);
	seg_be(s, len, 4);
	s->nrec++;
}

/* Trailer and checksum (a CLONE record's content left out), to f->seg. */
static void
seg_end(struct fixture *f, struct seg *s)
{
	XXH3_state_t *hs = XXH3_createState();
	XXH128_canonical_t c;

	seg_be(s, 0xFF, 1);
	seg_be(s, s->nrec, 8);
	assert_non_null(hs);
	XXH3_128bits_reset(hs);
	if (s->hole_len > 0) {
		XXH3_128bits_update(hs, s->p, s->hole_at);
		XXH3_128bits_update(hs, s->p + s->hole_at + s->hole_len,
		    s->len - s->hole_at - s->hole_len);
	} else {
		XXH3_128bits_update(hs, s->p, s->len);
	}
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(hs));
	XXH3_freeState(hs);
	seg_put(s, c.digest, sizeof(c.digest));
	write_file(f->seg, s->p, s->len);
}

/* A ZSTD record of len bytes whose frame holds the first n of src. */
static void
seg_zstd(struct seg *s, uint16_t disk, uint64_t off, uint32_t len,
    const uint8_t *src, size_t n)
{
	uint8_t z[8192];
	size_t clen = ZSTD_compress(z, sizeof(z), src, n, 1);

	assert_false(ZSTD_isError(clen));
	seg_rec(s, 3, disk, off, len);
	seg_be(s, clen, 4);
	seg_put(s, z, clen);
}

/* Compressible content is stored compressed and comes back exactly; any
 * flipped byte of the (small) segment is refused. */
static void
test_compressed_round_trip(void **state)
{
	struct fixture *f = *state;
	const size_t n0 = 512 * KB, n1 = 100000;
	uint8_t *old0 = malloc(n0), *old1 = malloc(n1), *seg;
	uint64_t sizes[2] = { n0, n1 }, bytes;
	struct undo_writer *w;
	size_t seg_len;

	assert_non_null(old0);
	assert_non_null(old1);
	fill_text(old0, n0, 1);
	fill_random(old0 + 128 * KB, 64 * KB, 2);	/* incompressible */
	fill_text(old1, n1, 3);
	set_content(f->fd[0], old0, n0);
	set_content(f->fd[1], old1, n1);
	assert_int_equal(undo_create(f->seg, 7, 2, sizes, &w), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 0, 128 * KB), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 128 * KB, 64 * KB),
	    0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 192 * KB, n0 -
	    192 * KB), 0);
	assert_int_equal(undo_save_range(w, 1, f->fd[1], 0, n1), 0);
	assert_int_equal(undo_finish(w, &bytes), 0);
	/* The random 64K raw, the text at well under half. */
	assert_true(bytes > 64 * KB);
	assert_true(bytes < 64 * KB + (n0 - 64 * KB + n1) / 2);

	modify(f, 300);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, sizes), 0);
	assert_int_equal(sizes[0], n0);
	assert_int_equal(sizes[1], n1);
	assert_content(f->fd[0], old0, n0);
	assert_content(f->fd[1], old1, n1);

	seg = snapshot(open(f->seg, O_RDONLY | O_CLOEXEC), &seg_len);
	for (size_t i = 0; i < seg_len; i += 1 + i / 64) {
		seg[i] ^= 0x01;
		write_file(f->seg, seg, seg_len);
		seg[i] ^= 0x01;
		assert_refused_untouched(f, 2, 0);
	}
	free(seg);
	free(old0);
	free(old1);
}

/* Segments of format version 1 (existing replicas) are still applied;
 * version 1 knows no compressed or cloned records. */
static void
test_version1_read(void **state)
{
	struct fixture *f = *state;
	uint8_t old0[3000], now0[3000], now1[500];
	static struct seg s;

	fill_random(old0, sizeof(old0), 40);
	memset(old0 + 1000, 0, 1000);
	fill_random(now0, sizeof(now0), 41);
	fill_random(now1, sizeof(now1), 42);
	set_content(f->fd[0], now0, sizeof(now0));
	set_content(f->fd[1], now1, sizeof(now1));
	seg_begin(&s, 1, 3000, 200);
	seg_rec(&s, 1, 0, 0, 1000);
	seg_put(&s, old0, 1000);
	seg_rec(&s, 2, 0, 1000, 1000);
	seg_rec(&s, 1, 0, 2000, 1000);
	seg_put(&s, old0 + 2000, 1000);
	seg_end(f, &s);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	assert_content(f->fd[0], old0, sizeof(old0));
	assert_content(f->fd[1], now1, 200);

	set_content(f->fd[0], now0, sizeof(now0));
	seg_begin(&s, 1, 3000, 200);
	seg_zstd(&s, 0, 0, 3000, old0, 3000);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	seg_begin(&s, 3, 3000, 200);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_VERSION);
}

/* A compressed record never yields more (or less) than it declares, and a
 * frame is never longer than its content. */
static void
test_zstd_bounds(void **state)
{
	struct fixture *f = *state;
	uint8_t text[4096], now0[8192];
	static struct seg s;

	fill_text(text, sizeof(text), 50);
	fill_random(now0, sizeof(now0), 51);
	set_content(f->fd[0], now0, sizeof(now0));
	set_content(f->fd[1], now0, 100);

	/* Right: 4096 declared, 4096 inside. */
	seg_begin(&s, 2, 8192, 100);
	seg_zstd(&s, 0, 0, 4096, text, 4096);
	seg_end(f, &s);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	memcpy(now0, text, 4096);
	assert_content(f->fd[0], now0, sizeof(now0));

	/* 1000 declared, 4096 inside: refused, not written past. */
	seg_begin(&s, 2, 8192, 100);
	seg_zstd(&s, 0, 0, 1000, text, 4096);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	/* 4096 declared, 4000 inside. */
	seg_begin(&s, 2, 8192, 100);
	seg_zstd(&s, 0, 0, 4096, text, 4000);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	/* A frame as long as its content, and one of length 0. */
	seg_begin(&s, 2, 8192, 100);
	seg_rec(&s, 3, 0, 0, 16);
	seg_be(&s, 16, 4);
	seg_put(&s, text, 16);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	seg_begin(&s, 2, 8192, 100);
	seg_rec(&s, 3, 0, 0, 16);
	seg_be(&s, 0, 4);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	/* A length past UNDO_MAX_DATA, and a frame that is no frame. */
	seg_begin(&s, 2, UINT32_MAX, 100);
	seg_rec(&s, 3, 0, 0, UNDO_MAX_DATA + 1);
	seg_be(&s, 16, 4);
	seg_put(&s, text, 16);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	seg_begin(&s, 2, 8192, 100);
	seg_rec(&s, 3, 0, 0, 4096);
	seg_be(&s, 100, 4);
	seg_put(&s, text, 100);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
}

/* CLONE records by hand: content on a block boundary, outside the
 * trailer's checksum but under its own digest; a changed byte of it, a
 * bad pad or a record running past the file is refused. */
static void
test_clone_record(void **state)
{
	struct fixture *f = *state;
	uint8_t old0[8192], now0[8192];
	static struct seg s;

	fill_random(old0, sizeof(old0), 60);
	fill_random(now0, sizeof(now0), 61);
	set_content(f->fd[0], now0, sizeof(now0));
	set_content(f->fd[1], now0, 100);
	XXH128_canonical_t dg;
	XXH128_canonicalFromHash(&dg, XXH3_128bits(old0 + 4096, 4096));
	seg_begin(&s, 2, 8192, 100);
	seg_rec(&s, 4, 0, 4096, 4096);
	seg_put(&s, dg.digest, sizeof(dg.digest));
	size_t pad = 4096 - (s.len + 4) % 4096;
	seg_be(&s, pad, 4);
	uint8_t zeros[4096] = { 0 };
	seg_put(&s, zeros, pad);
	assert_int_equal(s.len % 4096, 0);
	s.hole_at = s.len;
	s.hole_len = 4096;
	seg_put(&s, old0 + 4096, 4096);
	seg_end(f, &s);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	memcpy(now0 + 4096, old0 + 4096, 4096);
	assert_content(f->fd[0], now0, sizeof(now0));

	/* One byte of the content changed: its digest says so. */
	fill_random(now0, sizeof(now0), 62);
	set_content(f->fd[0], now0, sizeof(now0));
	s.p[s.hole_at + 100] ^= 0x10;
	write_file(f->seg, s.p, s.len);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	s.p[s.hole_at + 100] ^= 0x10;

	/* A pad byte that is not zero. */
	s.p[s.hole_at - 1] = 1;
	s.len -= 1 + 8 + 16;
	s.nrec--;
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	/* The content running into the trailer. */
	seg_begin(&s, 2, 8192, 100);
	seg_rec(&s, 4, 0, 0, 4096);
	seg_put(&s, dg.digest, sizeof(dg.digest));
	seg_be(&s, 0, 4);
	seg_put(&s, old0, 100);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
	/* A pad of a megabyte. */
	seg_begin(&s, 2, 8192, 100);
	seg_rec(&s, 4, 0, 0, 4096);
	seg_put(&s, dg.digest, sizeof(dg.digest));
	seg_be(&s, 1u << 20, 4);
	seg_end(f, &s);
	assert_refused_untouched(f, 2, RD_ERR_CORRUPT);
}

/* 1 if some extent of the file at path is shared (FIEMAP). */
static int
has_shared_extent(const char *path)
{
	struct {
		struct fiemap fm;
		struct fiemap_extent ext[64];
	} q;
	int fd = open(path, O_RDONLY | O_CLOEXEC), shared = 0;

	assert_true(fd >= 0);
	memset(&q, 0, sizeof(q));
	q.fm.fm_length = FIEMAP_MAX_OFFSET;
	q.fm.fm_flags = FIEMAP_FLAG_SYNC;
	q.fm.fm_extent_count = 64;
	if (ioctl(fd, FS_IOC_FIEMAP, &q.fm) == 0)
		for (uint32_t i = 0; i < q.fm.fm_mapped_extents; i++)
			if (q.ext[i].fe_flags & FIEMAP_EXTENT_SHARED)
				shared = 1;
	close(fd);
	return shared;
}

static int
cancel_now(void *arg)
{
	(void)arg;
	return 1;
}

/*
 * Writers that clone (where the directory's file system can: XFS with
 * reflink, btrfs; elsewhere they copy the same records): the images come
 * back exactly, merged segments too, and the clone probe agrees with what
 * the writer manages.
 */
static void
clone_mode(struct fixture *f, int mode)
{
	const size_t n = 1u << 20;
	uint8_t *a = malloc(n), *b = malloc(n), *c = malloc(n);
	uint64_t sizes[2] = { n, 4096 };
	struct undo_writer *w;
	char older[300], merged[300];

	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	snprintf(older, sizeof(older), "%s/6.undo", f->dir);
	snprintf(merged, sizeof(merged), "%s/m.undo", f->dir);
	fill_random(a, n, 70);
	fill_text(a + 256 * KB, 128 * KB, 71);
	memset(a + 512 * KB, 0, 64 * KB);
	set_content(f->fd[0], a, n);
	fill_random(b, 4096, 72);
	set_content(f->fd[1], b, 4096);

	/* older: point i (a) -> j; overwrites [0, 640K) (random, text,
	 * random and zeros, one range each) and 100 bytes at 700K
	 * (unaligned: copied). */
	assert_int_equal(undo_create(older, 6, 2, sizes, &w), 0);
	undo_set_clone(w, mode);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 0, 256 * KB), 0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 256 * KB, 128 * KB),
	    0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 384 * KB, 256 * KB),
	    0);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 700 * KB, 100), 0);
	assert_int_equal(undo_finish(w, NULL), 0);
	/* Where the probe says it can, the segment shares the image's
	 * blocks (until the image is overwritten). */
	assert_int_equal(has_shared_extent(older),
	    undo_clone_probe(f->dir, f->fd[0]));
	memcpy(b, a, n);
	fill_random(b, 640 * KB, 73);
	fill_random(b + 700 * KB, 100, 74);
	assert_int_equal(util_pwrite_full(f->fd[0], b, n, 0), 0);

	/* newer: j (b) -> k; overwrites [320K, 1M). */
	assert_int_equal(undo_create(f->seg, 7, 2, sizes, &w), 0);
	undo_set_clone(w, mode);
	assert_int_equal(undo_save_range(w, 0, f->fd[0], 320 * KB, n -
	    320 * KB), 0);
	assert_int_equal(undo_finish(w, NULL), 0);
	memcpy(c, b, n);
	fill_random(c + 320 * KB, n - 320 * KB, 75);
	assert_int_equal(util_pwrite_full(f->fd[0], c, n, 0), 0);

	assert_int_equal(undo_merge(f->seg, older, 7, merged, NULL), 0);
	assert_int_equal(undo_apply(f->seg, f->fd, 2, NULL), 0);
	assert_content(f->fd[0], b, n);
	assert_int_equal(undo_apply(older, f->fd, 2, NULL), 0);
	assert_content(f->fd[0], a, n);
	assert_int_equal(util_pwrite_full(f->fd[0], c, n, 0), 0);
	assert_int_equal(undo_apply(merged, f->fd, 2, NULL), 0);
	assert_content(f->fd[0], a, n);

	/* Compacted (written again: zeros as ZERO, what compresses
	 * compressed, the rest cloned again), a segment takes the image
	 * back exactly as before; one written unread (ALL) on storage that
	 * clones gets smaller; a cancelled compaction leaves no file. */
	char compacted[300], ctmp[310];
	struct stat sb;
	uint64_t cb = 0;
	snprintf(compacted, sizeof(compacted), "%s/c.undo", f->dir);
	snprintf(ctmp, sizeof(ctmp), "%s.tmp", compacted);
	assert_int_equal(undo_compact(older, 6, compacted, &cb, NULL, NULL), 0);
	assert_int_equal(stat(older, &sb), 0);
	if (mode == UNDO_CLONE_ALL && undo_clone_probe(f->dir, f->fd[0]))
		assert_true(cb < (uint64_t)sb.st_size);
	assert_int_equal(util_pwrite_full(f->fd[0], b, n, 0), 0);
	assert_int_equal(undo_apply(compacted, f->fd, 2, NULL), 0);
	assert_content(f->fd[0], a, n);
	unlink(compacted);
	assert_int_equal(undo_compact(older, 6, compacted, &cb, cancel_now,
	    NULL), RD_ERR_CANCELLED);
	assert_false(exists(compacted));
	assert_false(exists(ctmp));
	assert_int_equal(undo_compact("/nonexistent/x.undo", 6, compacted, &cb,
	    NULL, NULL), RD_ERR_NOT_FOUND);
	free(a);
	free(b);
	free(c);
}

static void
test_clone_raw(void **state)
{
	clone_mode(*state, UNDO_CLONE_RAW);
}

static void
test_clone_all(void **state)
{
	clone_mode(*state, UNDO_CLONE_ALL);
}

static void
test_clone_probe(void **state)
{
	struct fixture *f = *state;
	/* Whatever the file system: an answer, and no file left behind. */
	int r = undo_clone_probe(f->dir, f->fd[0]);
	assert_true(r == 0 || r == 1);
	assert_int_equal(undo_clone_probe("/nonexistent", f->fd[0]), 0);
	print_message("clone probe in %s: %s\n", f->dir, r ? "clones" :
	    "copies");
}

/* A version 1 segment (an existing replica's) merges with a version 2 one
 * (compressed records): older content wins where both restore a range. */
static void
test_merge_version1_with_version2(void **state)
{
	struct fixture *f = *state;
	uint8_t now0[3000], now1[200], a0[1000], t[2000], b1[200];
	uint8_t want0[3000];
	uint64_t sizes[2];
	char older[320], newer[320], merged[320];
	static struct seg s;

	snprintf(older, sizeof(older), "%s/1.undo", f->dir);
	snprintf(newer, sizeof(newer), "%s/2.undo", f->dir);
	snprintf(merged, sizeof(merged), "%s/2.1.undo", f->dir);
	fill_random(now0, sizeof(now0), 70);
	fill_random(now1, sizeof(now1), 71);
	fill_random(a0, sizeof(a0), 72);
	fill_text(t, sizeof(t), 73);
	fill_random(b1, sizeof(b1), 74);

	seg_begin(&s, 1, 3000, 200);		/* the older point's */
	seg_rec(&s, 1, 0, 0, 1000);
	seg_put(&s, a0, 1000);
	seg_rec(&s, 2, 0, 1000, 500);
	seg_end(f, &s);
	assert_int_equal(rename(f->seg, older), 0);
	seg_begin(&s, 2, 3000, 200);		/* the newer point's */
	seg_zstd(&s, 0, 500, 2000, t, 2000);
	seg_rec(&s, 1, 1, 0, 200);
	seg_put(&s, b1, 200);
	seg_end(f, &s);
	assert_int_equal(rename(f->seg, newer), 0);

	assert_int_equal(undo_merge(newer, older, 2, merged, NULL), 0);
	set_content(f->fd[0], now0, sizeof(now0));
	set_content(f->fd[1], now1, sizeof(now1));
	assert_int_equal(undo_apply(merged, f->fd, 2, sizes), 0);
	memcpy(want0, a0, 1000);
	memset(want0 + 1000, 0, 500);
	memcpy(want0 + 1500, t + 1000, 1000);
	memcpy(want0 + 2500, now0 + 2500, 500);
	assert_content(f->fd[0], want0, sizeof(want0));
	assert_content(f->fd[1], b1, sizeof(b1));
	assert_int_equal(sizes[0], 3000);
	assert_int_equal(sizes[1], 200);
}

int
main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_round_trip),
		T(test_large_ranges),
		T(test_empty_segment),
		T(test_flipped_byte),
		T(test_flipped_byte_large),
		T(test_truncated),
		T(test_trailing_bytes),
		T(test_ndisks_mismatch),
		T(test_discard),
		T(test_missing),
		T(test_writer_refusals),
		T(test_impossible_size_refused_before_writing),
		T(test_merge),
		T(test_invert_round_trip),
		T(test_invert_shrunk_disk),
		T(test_invert_corrupt_refused),
		T(test_invert_corrupt_large_refused),
		T(test_compressed_round_trip),
		T(test_version1_read),
		T(test_zstd_bounds),
		T(test_clone_record),
		T(test_clone_raw),
		T(test_clone_all),
		T(test_clone_probe),
		T(test_merge_version1_with_version2),
	};
#undef T

	log_set_level(LOG_LVL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
