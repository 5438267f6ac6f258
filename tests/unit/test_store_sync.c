/*
 * test_store_sync.c — what the replica makes durable before it records a
 * point (and so before the ACK): every image a cycle changed, including
 * the blocks a resync repaired in place (store_repair), which no index
 * record names.
 *
 * fsync() and fdatasync() are interposed (this executable's definitions
 * win over libc's for the library objects linked into it): each call
 * notes the inode it synced, then does the real system call.  A point
 * recorded while a repaired image was never synced is a point a power
 * loss can take back without anyone noticing (the primary was told the
 * replica holds the block; the replica's digests say so too).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "catalog.h"
#include "digest.h"
#include "err.h"
#include "store.h"
#include "util.h"

#define BS	65536u
#define VM	"web01"
#define NDISKS	2

/* --- the interposed syncs ------------------------------------------------- */

#define MAX_SYNCED	256
static ino_t synced[MAX_SYNCED];
static size_t nsynced;

static void
note_sync(int fd)
{
	struct stat sb;
	if (fstat(fd, &sb) == 0 && nsynced < MAX_SYNCED)
		synced[nsynced++] = sb.st_ino;
}

int
fsync(int fd)
{
	note_sync(fd);
	return (int)syscall(SYS_fsync, fd);
}

int
fdatasync(int fd)
{
	note_sync(fd);
	return (int)syscall(SYS_fdatasync, fd);
}

static int
was_synced(const char *path)
{
	struct stat sb;
	assert_int_equal(stat(path, &sb), 0);
	for (size_t i = 0; i < nsynced; i++)
		if (synced[i] == sb.st_ino)
			return 1;
	return 0;
}

/* --- fixture ------------------------------------------------------------- */

struct fixture {
	char		 dir[256];
	char		 catpath[300];
	char		 storage[300];
	char		 img[NDISKS][400];
	struct catalog	*cat;
	struct store	*st;
};

static const char *disk_names[NDISKS] = { "disk0.img", "disk1.img" };

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	struct cat_rel rel;
	char err[512] = "";

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/test_store_sync.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->catpath, sizeof(f->catpath), "%s/catalog.db", f->dir);
	snprintf(f->storage, sizeof(f->storage), "%s/storage", f->dir);
	for (int i = 0; i < NDISKS; i++)
		snprintf(f->img[i], sizeof(f->img[i]), "%s/%s/%s", f->storage,
		    VM, disk_names[i]);
	if (cat_open(f->catpath, &f->cat) != 0)
		return -1;
	memset(&rel, 0, sizeof(rel));
	snprintf(rel.vm, sizeof(rel.vm), VM);
	rel.role = CAT_ROLE_REPLICA;
	rel.generation = 1;
	snprintf(rel.peer, sizeof(rel.peer), "primary.example");
	snprintf(rel.storage, sizeof(rel.storage), "%s", f->storage);
	rel.block_size = BS;
	rel.ndisks = NDISKS;
	for (int i = 0; i < NDISKS; i++)
		snprintf(rel.disks[i].name, sizeof(rel.disks[i].name), "%s",
		    disk_names[i]);
	if (cat_rel_put(f->cat, &rel) != 0 ||
	    cat_rel_get(f->cat, VM, &rel) != 0 ||
	    store_open(f->cat, &rel, &f->st, err, sizeof(err)) != 0) {
		fprintf(stderr, "setup: %s\n", err);
		return -1;
	}
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	store_close(f->st);
	cat_close(f->cat);
	util_rm_rf(f->dir);
	free(f);
	return 0;
}

static void
begin(struct fixture *f, uint64_t cycle)
{
	struct store_cycle sc;
	char err[512] = "";

	memset(&sc, 0, sizeof(sc));
	sc.cycle = cycle;
	sc.created_ms = 1700000000000 + (int64_t)cycle * 1000;
	sc.generation = 1;
	sc.ndisks = NDISKS;
	for (int i = 0; i < NDISKS; i++)
		sc.sizes[i] = 2 * (uint64_t)BS;
	if (store_cycle_begin(f->st, &sc, err, sizeof(err)) != 0)
		fail_msg("cycle %llu begin: %s", (unsigned long long)cycle, err);
}

static void
put(struct fixture *f, uint16_t disk, uint64_t off, uint8_t fill)
{
	uint8_t *buf = malloc(BS);
	struct digest h;
	char err[512] = "";

	assert_non_null(buf);
	memset(buf, fill, BS);
	digest_block(buf, BS, &h);
	if (store_cycle_put(f->st, disk, off, BS, buf, &h, err,
	    sizeof(err)) != 0)
		fail_msg("put: %s", err);
	free(buf);
}

static void
commit(struct fixture *f)
{
	struct cat_point pt;
	char err[512] = "";
	int r;

	if ((r = store_cycle_commit(f->st, &pt, err, sizeof(err))) != 0)
		fail_msg("commit: %d %s", r, err);
}

/* Point 1: both disks hold data in both blocks. */
static void
first_point(struct fixture *f)
{
	begin(f, 1);
	for (uint16_t d = 0; d < NDISKS; d++) {
		put(f, d, 0, 0x11);
		put(f, d, BS, 0x22);
	}
	commit(f);
}

static void
repair(struct fixture *f, uint16_t disk, uint64_t off, uint8_t fill)
{
	uint8_t *buf = malloc(BS);
	char err[512] = "";

	assert_non_null(buf);
	memset(buf, fill, BS);
	if (store_repair(f->st, disk, off, buf, BS, err, sizeof(err)) != 0)
		fail_msg("repair: %s", err);
	free(buf);
}

/*
 * A resync cycle repairs a block of disk 1 in place and changes a block
 * of disk 0: when the point is recorded, disk 1 must have been synced.
 */
static void
test_repair_synced_beside_data(void **state)
{
	struct fixture *f = *state;

	first_point(f);
	begin(f, 2);
	repair(f, 1, 0, 0x11);
	put(f, 0, BS, 0x33);
	nsynced = 0;
	commit(f);
	assert_true(was_synced(f->img[0]));
	if (!was_synced(f->img[1]))
		fail_msg("point 2 recorded, but %s, repaired in place by its "
		    "cycle, was never synced", f->img[1]);
}

/*
 * A resync cycle whose only change is a repair (every differing block
 * was damage): the cycle counts as empty, and the repair must still be
 * durable before the point.
 */
static void
test_repair_synced_in_empty_cycle(void **state)
{
	struct fixture *f = *state;

	first_point(f);
	begin(f, 2);
	repair(f, 1, BS, 0x22);
	nsynced = 0;
	commit(f);
	if (!was_synced(f->img[1]))
		fail_msg("point 2 recorded, but %s, repaired in place by its "
		    "cycle, was never synced", f->img[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_repair_synced_beside_data,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_repair_synced_in_empty_cycle, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
