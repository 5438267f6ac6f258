/*
 * test_catalog.c — the SQLite catalog in a temporary directory: file mode
 * and journal, schema version, round trips, point ids, refusal of bad and
 * damaged rows, and commits from several threads.  A second, raw sqlite3
 * connection looks at (and damages) the file behind the catalog's back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "catalog.h"
#include "err.h"
#include "util.h"

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
	snprintf(f->dir, sizeof(f->dir), "%s/test_catalog.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/catalog.db", f->dir);
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

static struct catalog *
open_cat(const struct fixture *f)
{
	struct catalog *cat = NULL;

	assert_int_equal(cat_open(f->path, &cat), 0);
	assert_non_null(cat);
	return cat;
}

/* A raw connection to the same file, for looking and for damage. */
static sqlite3 *
raw_open(const struct fixture *f)
{
	sqlite3 *db = NULL;

	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static void
raw_exec(sqlite3 *db, const char *sql)
{
	char *err = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("%s: %s", sql, err);
}

/* Prepare sql and bind text parameters (NULL ends the list). */
static sqlite3_stmt *
raw_prepare(sqlite3 *db, const char *sql, ...)
{
	sqlite3_stmt *st = NULL;
	va_list ap;
	const char *s;
	int i = 1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	va_start(ap, sql);
	while ((s = va_arg(ap, const char *)) != NULL)
		assert_int_equal(sqlite3_bind_text(st, i++, s, -1,
		    SQLITE_TRANSIENT), SQLITE_OK);
	va_end(ap);
	return st;
}

/* The integer that sql (with text parameters) returns. */
static int64_t
raw_int(sqlite3 *db, const char *sql, const char *arg)
{
	sqlite3_stmt *st = raw_prepare(db, sql, arg, NULL);
	int64_t v;

	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* Run an update with text parameters a and b. */
static void
raw_update(sqlite3 *db, const char *sql, const char *a, const char *b)
{
	sqlite3_stmt *st = raw_prepare(db, sql, a, b, NULL);

	if (sqlite3_step(st) != SQLITE_DONE)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
}

static int64_t
count_points(const struct fixture *f, const char *vm)
{
	sqlite3 *db = raw_open(f);
	int64_t n = raw_int(db, "SELECT count(*) FROM points WHERE vm = ?1",
	    vm);

	sqlite3_close(db);
	return n;
}

static void
make_rel(struct cat_rel *rel, const char *vm, int ndisks)
{
	memset(rel, 0, sizeof(*rel));
	snprintf(rel->vm, sizeof(rel->vm), "%s", vm);
	rel->role = CAT_ROLE_REPLICA;
	rel->generation = 3;
	snprintf(rel->peer, sizeof(rel->peer), "primary-%s.example", vm);
	snprintf(rel->storage, sizeof(rel->storage), "/srv/replicas");
	rel->block_size = 65536;
	rel->interval_ms = 300000;
	rel->ndisks = (uint16_t)ndisks;
	for (int i = 0; i < ndisks; i++) {
		snprintf(rel->disks[i].name, sizeof(rel->disks[i].name),
		    "disk%d.qcow2", i);
		rel->disks[i].size = (uint64_t)(i + 1) << 30;
	}
}

static void
make_point(struct cat_point *p, uint64_t cycle, int ndisks)
{
	memset(p, 0, sizeof(*p));
	p->cycle = cycle;
	p->created_ms = 1700000000000 + (int64_t)cycle * 1000;
	p->kind = cycle % 2 ? CAT_KIND_APP : CAT_KIND_CRASH;
	p->bytes = cycle * 4096;
	p->undo_bytes = cycle * 1024;
	p->generation = 3;
	p->ndisks = (uint16_t)ndisks;
	for (int i = 0; i < ndisks; i++)
		p->sizes[i] = ((uint64_t)(i + 1) << 30) + cycle * 65536;
}

static void
commit_ok(struct catalog *cat, const char *vm, uint64_t cycle,
    uint64_t want_id)
{
	struct cat_point p;

	make_point(&p, cycle, 2);
	assert_int_equal(cat_point_commit(cat, vm, &p, NULL, 0), 0);
	assert_int_equal(p.id, want_id);
}

static void
test_open_creates(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	char wal[320];		/* -wal, then -shm */
	struct stat st;
	sqlite3 *db;
	sqlite3_stmt *q;

	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	/* SQLite gives its -wal and -shm files the database file's mode. */
	snprintf(wal, sizeof(wal), "%s-wal", f->path);
	assert_int_equal(stat(wal, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	snprintf(wal, sizeof(wal), "%s-shm", f->path);
	assert_int_equal(stat(wal, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	db = raw_open(f);
	q = raw_prepare(db, "PRAGMA journal_mode", NULL);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
	sqlite3_finalize(q);
	assert_int_equal(raw_int(db, "PRAGMA user_version", NULL),
	    CAT_SCHEMA_VERSION);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_schema "
	    "WHERE type = 'table' AND name IN ('relationships', 'rel_disks', "
	    "'points', 'point_disks', 'events')", NULL), 5);
	sqlite3_close(db);
	cat_close(cat);

	/* Open again: nothing to migrate, still version and mode. */
	cat = open_cat(f);
	cat_close(cat);
	db = raw_open(f);
	assert_int_equal(raw_int(db, "PRAGMA user_version", NULL),
	    CAT_SCHEMA_VERSION);
	sqlite3_close(db);
}

static void
test_open_bad_path(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = NULL;
	char path[400];

	snprintf(path, sizeof(path), "%s/missing/catalog.db", f->dir);
	assert_int_equal(cat_open(path, &cat), RD_ERR_SYSTEM);
	assert_null(cat);
}

static void
test_reopen_keeps_data(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel, got;
	struct cat_point p;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	commit_ok(cat, "web01", 7, 1);
	cat_close(cat);

	cat = open_cat(f);
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_string_equal(got.peer, rel.peer);
	assert_int_equal(got.last_cycle, 7);
	assert_int_equal(got.last_point, 1);
	assert_int_equal(cat_point_get(cat, "web01", 1, &p), 0);
	assert_int_equal(p.cycle, 7);
	commit_ok(cat, "web01", 8, 2);
	cat_close(cat);
}

static void
test_newer_schema_refused(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = NULL;
	sqlite3 *db = raw_open(f);
	sqlite3_stmt *q;

	assert_true(CAT_SCHEMA_VERSION < 99);
	raw_exec(db, "CREATE TABLE future (x INTEGER); "
	    "PRAGMA user_version = 99");
	sqlite3_close(db);

	assert_int_equal(cat_open(f->path, &cat), RD_ERR_VERSION);
	assert_null(cat);

	/* Refused untouched: same version, journal mode not switched. */
	db = raw_open(f);
	assert_int_equal(raw_int(db, "PRAGMA user_version", NULL), 99);
	q = raw_prepare(db, "PRAGMA journal_mode", NULL);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(q, 0), "delete");
	sqlite3_finalize(q);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_schema "
	    "WHERE name = 'points'", NULL), 0);
	sqlite3_close(db);
}

static void
test_not_a_database(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = NULL;
	FILE *fp = fopen(f->path, "w");

	assert_non_null(fp);
	for (int i = 0; i < 256; i++)
		fputs("this is not an SQLite database\n", fp);
	fclose(fp);
	assert_int_equal(cat_open(f->path, &cat), RD_ERR_DB);
	assert_null(cat);
}

static void
test_rel_round_trip(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel a, b, got, *list = NULL;
	size_t n = 0;

	/* Every field, at its limits where it has one. */
	make_rel(&a, "web02", CAT_MAX_DISKS);
	a.role = CAT_ROLE_PRIMARY;
	a.generation = UINT64_MAX;
	memset(a.peer, 'p', sizeof(a.peer) - 1);
	memset(a.storage, 's', sizeof(a.storage) - 1);
	a.block_size = UINT32_MAX;
	a.last_cycle = UINT64_MAX - 1;
	a.last_point = 41;
	a.last_point_created_ms = -5;
	a.interval_ms = UINT64_MAX;
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		a.disks[i].size = UINT64_MAX - (uint64_t)i;
	memset(a.disks[7].name, 'n', NAME_MAX_LEN);
	memset(a.peer_name, 'q', sizeof(a.peer_name) - 1);
	memset(a.fenced, 'f', sizeof(a.fenced) - 1);
	a.resync = 1;
	a.at_point = 40;
	a.step_to = 41;
	make_rel(&b, "db01", 1);

	assert_int_equal(cat_rel_list(cat, &list, &n), 0);
	assert_int_equal(n, 0);
	free(list);
	list = NULL;

	assert_int_equal(cat_rel_put(cat, &a), 0);
	assert_int_equal(cat_rel_put(cat, &b), 0);
	assert_int_equal(cat_rel_get(cat, "web02", &got), 0);
	assert_memory_equal(&got, &a, sizeof(a));
	assert_int_equal(cat_rel_get(cat, "db01", &got), 0);
	assert_memory_equal(&got, &b, sizeof(b));
	assert_int_equal(cat_rel_get(cat, "web03", &got), RD_ERR_NOT_FOUND);

	assert_int_equal(cat_rel_list(cat, &list, &n), 0);
	assert_int_equal(n, 2);
	assert_memory_equal(&list[0], &b, sizeof(b));	/* ordered by VM */
	assert_memory_equal(&list[1], &a, sizeof(a));
	free(list);
	cat_close(cat);
}

static void
test_rel_replace(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel, got;

	make_rel(&rel, "web01", 3);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	commit_ok(cat, "web01", 1, 1);

	assert_int_equal(cat_rel_get(cat, "web01", &rel), 0);
	rel.ndisks = 1;
	memset(&rel.disks[1], 0, sizeof(rel.disks[1]) * 2);
	memset(rel.peer, 0, sizeof(rel.peer));
	snprintf(rel.peer, sizeof(rel.peer), "new-primary");
	rel.generation = 4;
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_memory_equal(&got, &rel, sizeof(rel));
	assert_int_equal(got.ndisks, 1);

	/* Replacing the relationship keeps its points. */
	assert_int_equal(count_points(f, "web01"), 1);
	commit_ok(cat, "web01", 2, 2);

	/* Back to no disks at all. */
	rel.ndisks = 0;
	memset(&rel.disks[0], 0, sizeof(rel.disks[0]));
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_int_equal(got.ndisks, 0);
	cat_close(cat);
}

/* The lazy write stores the same row as cat_rel_put (only when it
 * reaches the disk differs), checks its input the same way, and leaves
 * the connection usable for durable writes after it. */
static void
test_rel_put_lazy(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel, got;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	rel.last_cycle = 41;
	rel.last_point = 40;
	rel.last_point_created_ms = 1234;
	assert_int_equal(cat_rel_put_lazy(cat, &rel), 0);
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_memory_equal(&got, &rel, sizeof(rel));

	struct cat_rel bad = rel;
	snprintf(bad.vm, sizeof(bad.vm), "no/slash");
	assert_int_not_equal(cat_rel_put_lazy(cat, &bad), 0);
	assert_int_equal(cat_rel_get(cat, "no/slash", &got), RD_ERR_NOT_FOUND);

	commit_ok(cat, "web01", 42, 41);
	cat_close(cat);

	/* A clean close keeps it (the WAL is checkpointed). */
	cat = open_cat(f);
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_int_equal(got.last_cycle, 42);
	cat_close(cat);
}

/* A failover's commit drops the points after the chosen one with the
 * relationship's change, in one transaction. */
static void
test_rel_put_trim(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel, got;
	struct cat_point p;

	make_rel(&rel, "web01", 1);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	for (uint64_t c = 1; c <= 5; c++)
		commit_ok(cat, "web01", c, c);
	assert_int_equal(cat_rel_get(cat, "web01", &rel), 0);
	rel.at_point = 2;
	rel.step_to = 9;	/* past the newest point: corrupt */
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	assert_int_equal(cat_rel_get(cat, "web01", &got), RD_ERR_CORRUPT);
	rel.step_to = 0;
	rel.role = CAT_ROLE_PRIMARY;
	rel.generation = 2;
	rel.last_point = 2;
	rel.last_cycle = 2;
	rel.at_point = 0;
	assert_int_equal(cat_rel_put_trim(cat, &rel, 2), 0);
	assert_int_equal(count_points(f, "web01"), 2);
	assert_int_equal(cat_point_get(cat, "web01", 3, &p), RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_get(cat, "web01", 2, &p), 0);
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_memory_equal(&got, &rel, sizeof(rel));
	/* A resync flag other than 0 or 1 is refused on the way back. */
	sqlite3 *db = raw_open(f);
	raw_exec(db, "UPDATE relationships SET resync = 1");
	sqlite3_close(db);
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_int_equal(got.resync, 1);
	cat_close(cat);
}

/* Schema 3: dropping a point and giving its neighbour a new segment is
 * one transaction; a missing point changes nothing. */
static void
test_point_drop(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;
	struct cat_point p;

	make_rel(&rel, "web01", 1);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	for (uint64_t c = 1; c <= 4; c++)
		commit_ok(cat, "web01", c, c);
	assert_int_equal(cat_point_get(cat, "web01", 3, &p), 0);
	assert_int_equal(p.seg, 0);
	assert_int_equal(cat_point_drop(cat, "web01", 2, 3, 1, 777), 0);
	assert_int_equal(cat_point_get(cat, "web01", 2, &p), RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_get(cat, "web01", 3, &p), 0);
	assert_int_equal(p.seg, 1);
	assert_int_equal(p.undo_bytes, 777);
	/* The oldest, with no segment left for the next one. */
	assert_int_equal(cat_point_drop(cat, "web01", 1, 3, CAT_SEG_NONE, 0), 0);
	assert_int_equal(cat_point_get(cat, "web01", 3, &p), 0);
	assert_int_equal(p.seg, CAT_SEG_NONE);
	/* Missing point or neighbour: nothing changes. */
	assert_int_equal(cat_point_drop(cat, "web01", 9, 3, 5, 1),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_drop(cat, "web01", 3, 9, 5, 1),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_get(cat, "web01", 3, &p), 0);
	assert_int_equal(p.seg, CAT_SEG_NONE);
	assert_int_equal(count_points(f, "web01"), 2);
	/* A compacted segment: a new version and size for one point; a
	 * missing point is refused and changes nothing. */
	assert_int_equal(cat_point_get(cat, "web01", 4, &p), 0);
	assert_int_equal(cat_point_set_seg(cat, "web01", 4, p.seg + 1, 55), 0);
	struct cat_point q;
	assert_int_equal(cat_point_get(cat, "web01", 4, &q), 0);
	assert_int_equal(q.seg, p.seg + 1);
	assert_int_equal(q.undo_bytes, 55);
	assert_int_equal(cat_point_set_seg(cat, "web01", 9, 3, 1),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_set_seg(cat, "nosuch", 4, 3, 1),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_get(cat, "web01", 4, &q), 0);
	assert_int_equal(q.undo_bytes, 55);
	/* Stats: point 3 has no segment now; point 4's undo bytes count. */
	uint64_t cnt = 0, undo = 0;
	assert_int_equal(cat_point_get(cat, "web01", 4, &p), 0);
	assert_int_equal(cat_point_stats(cat, "web01", &cnt, &undo), 0);
	assert_int_equal(cnt, 2);
	assert_int_equal(undo, p.undo_bytes);
	assert_int_equal(cat_point_stats(cat, "nosuch", &cnt, &undo), 0);
	assert_int_equal(cnt, 0);
	assert_int_equal(undo, 0);
	/* Ids are not given out again. */
	commit_ok(cat, "web01", 5, 5);
	cat_close(cat);
}

static void
test_point_commit_sequence(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel, got;
	struct cat_point p;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	for (uint64_t c = 10; c < 13; c++) {
		make_point(&p, c, 3);	/* a third size: no such disk */
		p.id = 999;		/* ignored, assigned */
		assert_int_equal(cat_point_commit(cat, "web01", &p, NULL, 0), 0);
		assert_int_equal(p.id, c - 9);

		assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
		assert_int_equal(got.last_cycle, c);
		assert_int_equal(got.last_point, c - 9);
		assert_int_equal(got.last_point_created_ms, p.created_ms);
		assert_int_equal(got.ndisks, 2);
		assert_int_equal(got.disks[0].size, p.sizes[0]);
		assert_int_equal(got.disks[1].size, p.sizes[1]);
		assert_string_equal(got.disks[1].name, rel.disks[1].name);
		assert_int_equal(got.generation, rel.generation);
	}
	assert_int_equal(cat_point_get(cat, "web01", 3, &p), 0);
	assert_int_equal(p.ndisks, 3);
	cat_close(cat);
}

static void
test_point_duplicate_cycle(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel, before, after;
	struct cat_point p, got;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	commit_ok(cat, "web01", 5, 1);
	commit_ok(cat, "web01", 6, 2);
	assert_int_equal(cat_rel_get(cat, "web01", &before), 0);

	make_point(&p, 5, 2);
	p.sizes[0] = 1;
	p.created_ms = 42;
	p.id = 77;
	assert_int_equal(cat_point_commit(cat, "web01", &p, NULL, 0), RD_ERR_EXISTS);
	assert_int_equal(p.id, 77);
	assert_int_equal(count_points(f, "web01"), 2);
	assert_int_equal(cat_rel_get(cat, "web01", &after), 0);
	assert_memory_equal(&after, &before, sizeof(before));
	assert_int_equal(cat_point_by_cycle(cat, "web01", 5, &got), 0);
	assert_int_equal(got.id, 1);
	assert_int_not_equal(got.created_ms, 42);

	/* The catalog still works after the refusal. */
	commit_ok(cat, "web01", 7, 3);
	cat_close(cat);
}

static void
test_point_unknown_vm(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_point p;
	struct cat_rel rel;

	make_point(&p, 1, 1);
	assert_int_equal(cat_point_commit(cat, "ghost", &p, NULL, 0), RD_ERR_NOT_FOUND);
	assert_int_equal(count_points(f, "ghost"), 0);
	assert_int_equal(cat_rel_get(cat, "ghost", &rel), RD_ERR_NOT_FOUND);
	cat_close(cat);
}

static void
test_point_get_list(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_point want[3], got, *list = NULL;
	struct cat_rel rel;
	size_t n = 99;

	make_rel(&rel, "web01", 3);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	assert_int_equal(cat_point_list(cat, "web01", &list, &n), 0);
	assert_int_equal(n, 0);
	free(list);
	list = NULL;

	for (int i = 0; i < 3; i++) {
		make_point(&want[i], 100 + (uint64_t)i * 10, i + 1);
		want[i].bytes = UINT64_MAX - (uint64_t)i;
		want[i].generation = UINT64_MAX;
		assert_int_equal(cat_point_commit(cat, "web01", &want[i], NULL, 0), 0);
	}
	assert_int_equal(cat_point_get(cat, "web01", 2, &got), 0);
	assert_memory_equal(&got, &want[1], sizeof(got));
	assert_int_equal(cat_point_by_cycle(cat, "web01", 120, &got), 0);
	assert_memory_equal(&got, &want[2], sizeof(got));
	assert_int_equal(got.ndisks, 3);
	assert_int_equal(cat_point_get(cat, "web01", 4, &got),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_get(cat, "web01", 0, &got),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_by_cycle(cat, "web01", 115, &got),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_point_get(cat, "ghost", 1, &got),
	    RD_ERR_NOT_FOUND);

	assert_int_equal(cat_point_list(cat, "web01", &list, &n), 0);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < 3; i++)
		assert_memory_equal(&list[i], &want[i], sizeof(want[i]));
	free(list);
	list = NULL;
	assert_int_equal(cat_point_list(cat, "ghost", &list, &n), 0);
	assert_int_equal(n, 0);
	free(list);
	cat_close(cat);
}

static void
test_two_vms_independent(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_point *list = NULL, got;
	struct cat_rel rel;
	size_t n = 0;

	make_rel(&rel, "alpha", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	make_rel(&rel, "beta", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);

	commit_ok(cat, "alpha", 1, 1);
	commit_ok(cat, "beta", 1, 1);	/* the same cycle in another VM */
	commit_ok(cat, "alpha", 2, 2);
	commit_ok(cat, "alpha", 3, 3);
	commit_ok(cat, "beta", 9, 2);

	assert_int_equal(cat_point_list(cat, "alpha", &list, &n), 0);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(list[i].id, i + 1);
		assert_int_equal(list[i].cycle, i + 1);
	}
	free(list);
	list = NULL;
	assert_int_equal(cat_point_list(cat, "beta", &list, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(list[1].cycle, 9);
	free(list);
	assert_int_equal(cat_point_by_cycle(cat, "beta", 2, &got),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(cat_rel_get(cat, "alpha", &rel), 0);
	assert_int_equal(rel.last_cycle, 3);
	assert_int_equal(cat_rel_get(cat, "beta", &rel), 0);
	assert_int_equal(rel.last_cycle, 9);
	assert_int_equal(rel.last_point, 2);
	cat_close(cat);
}

static void
test_ids_not_reused(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;
	sqlite3 *db;

	/* A relationship that says point 10 existed: the next is 11. */
	make_rel(&rel, "web01", 1);
	rel.last_point = 10;
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	commit_ok(cat, "web01", 1, 11);
	commit_ok(cat, "web01", 2, 12);

	/* Drop the newest point behind the catalog's back: 12 stays used. */
	db = raw_open(f);
	raw_exec(db, "PRAGMA foreign_keys = ON");
	raw_update(db, "DELETE FROM points WHERE vm = ?1 AND id = 12",
	    "web01", NULL);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM point_disks "
	    "WHERE vm = ?1 AND point = 12", "web01"), 0);
	sqlite3_close(db);
	commit_ok(cat, "web01", 3, 13);
	cat_close(cat);
}

/* A struct read from the catalog followed by bytes that must not move. */
struct guarded_rel {
	struct cat_rel	rel;
	uint8_t		canary[256];
};

static void
expect_corrupt(struct catalog *cat, const char *vm)
{
	struct guarded_rel g;
	struct cat_rel *list = NULL;
	size_t n = 12345;

	memset(g.canary, 0xa5, sizeof(g.canary));
	assert_int_equal(cat_rel_get(cat, vm, &g.rel), RD_ERR_CORRUPT);
	for (size_t i = 0; i < sizeof(g.canary); i++)
		assert_int_equal(g.canary[i], 0xa5);
	assert_int_equal(cat_rel_list(cat, &list, &n), RD_ERR_CORRUPT);
	assert_null(list);
	assert_int_equal(n, 12345);
}

static void
test_corrupt_rows(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel, got;
	struct cat_point p;
	char big[5000];
	sqlite3 *db = raw_open(f);
	sqlite3_stmt *st;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	commit_ok(cat, "web01", 1, 1);

	/* peer one byte longer than its field. */
	memset(big, 'x', sizeof(big));
	big[sizeof(rel.peer)] = '\0';
	raw_update(db, "UPDATE relationships SET peer = ?2 WHERE vm = ?1",
	    "web01", big);
	expect_corrupt(cat, "web01");
	raw_update(db, "UPDATE relationships SET peer = ?2 WHERE vm = ?1",
	    "web01", "ok");
	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);

	/* storage far too long. */
	memset(big, 'x', sizeof(big));
	big[sizeof(big) - 1] = '\0';
	raw_update(db, "UPDATE relationships SET storage = ?2 WHERE vm = ?1",
	    "web01", big);
	expect_corrupt(cat, "web01");
	raw_update(db, "UPDATE relationships SET storage = ?2 WHERE vm = ?1",
	    "web01", "/srv");

	/* A disk name of 65 bytes, then one that climbs out of STORAGE. */
	big[NAME_MAX_LEN + 1] = '\0';
	raw_update(db, "UPDATE rel_disks SET name = ?2 WHERE vm = ?1 AND "
	    "idx = 1", "web01", big);
	expect_corrupt(cat, "web01");
	raw_update(db, "UPDATE rel_disks SET name = ?2 WHERE vm = ?1 AND "
	    "idx = 1", "web01", "../../etc");
	expect_corrupt(cat, "web01");
	raw_update(db, "UPDATE rel_disks SET name = ?2 WHERE vm = ?1 AND "
	    "idx = 1", "web01", "disk1");

	/* A NUL inside a string. */
	st = raw_prepare(db, "UPDATE relationships SET peer = ?1", NULL);
	assert_int_equal(sqlite3_bind_text(st, 1, "a\0b", 3, SQLITE_STATIC),
	    SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	expect_corrupt(cat, "web01");
	raw_update(db, "UPDATE relationships SET peer = ?2 WHERE vm = ?1",
	    "web01", "ok");

	/* Values the schema's CHECKs refuse, planted with them off. */
	raw_exec(db, "PRAGMA ignore_check_constraints = ON");
	raw_update(db, "UPDATE relationships SET role = 7 WHERE vm = ?1",
	    "web01", NULL);
	expect_corrupt(cat, "web01");
	raw_update(db, "UPDATE relationships SET role = 1 WHERE vm = ?1",
	    "web01", NULL);
	raw_update(db, "UPDATE points SET kind = 9 WHERE vm = ?1", "web01",
	    NULL);
	assert_int_equal(cat_point_get(cat, "web01", 1, &p), RD_ERR_CORRUPT);
	raw_update(db, "UPDATE points SET kind = 0 WHERE vm = ?1", "web01",
	    NULL);
	assert_int_equal(cat_point_get(cat, "web01", 1, &p), 0);

	/* A gap in a point's disk indexes. */
	raw_update(db, "UPDATE point_disks SET idx = 5 WHERE vm = ?1 AND "
	    "idx = 1", "web01", NULL);
	assert_int_equal(cat_point_get(cat, "web01", 1, &p), RD_ERR_CORRUPT);
	raw_update(db, "UPDATE point_disks SET idx = 1 WHERE vm = ?1 AND "
	    "idx = 5", "web01", NULL);

	/* A relationship whose name is not a safe VM name. */
	raw_exec(db, "INSERT INTO relationships (vm, role, generation, peer, "
	    "storage, block_size, last_cycle, last_point, "
	    "last_point_created_ms, interval_ms) VALUES ('../x', 0, 1, '', "
	    "'', 4096, 0, 0, 0, 0)");
	expect_corrupt(cat, "../x");
	raw_update(db, "DELETE FROM relationships WHERE vm = ?1", "../x",
	    NULL);
	sqlite3_close(db);

	assert_int_equal(cat_rel_get(cat, "web01", &got), 0);
	assert_int_equal(cat_point_get(cat, "web01", 1, &p), 0);
	commit_ok(cat, "web01", 2, 2);
	cat_close(cat);
}

static void
test_bad_input(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;
	struct cat_point p;
	struct cat_rel *list = NULL;
	size_t n = 0;

	make_rel(&rel, "../x", 1);
	assert_int_equal(cat_rel_put(cat, &rel), RD_ERR_NAME);
	make_rel(&rel, "", 1);
	assert_int_equal(cat_rel_put(cat, &rel), RD_ERR_NAME);
	make_rel(&rel, "web01", 1);
	snprintf(rel.disks[0].name, sizeof(rel.disks[0].name), "test");
	assert_int_equal(cat_rel_put(cat, &rel), RD_ERR_NAME);
	make_rel(&rel, "web01", 2);
	snprintf(rel.disks[1].name, sizeof(rel.disks[1].name), "disk0.qcow2");
	assert_int_equal(cat_rel_put(cat, &rel), RD_ERR_INVALID);
	make_rel(&rel, "web01", 1);
	rel.ndisks = CAT_MAX_DISKS + 1;
	assert_int_equal(cat_rel_put(cat, &rel), RD_ERR_INVALID);
	make_rel(&rel, "web01", 1);
	memset(rel.peer, 'p', sizeof(rel.peer));	/* no NUL */
	assert_int_equal(cat_rel_put(cat, &rel), RD_ERR_INVALID);
	make_rel(&rel, "web01", 1);
	rel.role = (enum cat_role)5;
	assert_int_equal(cat_rel_put(cat, &rel), RD_ERR_INVALID);
	assert_int_equal(cat_rel_list(cat, &list, &n), 0);
	assert_int_equal(n, 0);
	free(list);

	make_rel(&rel, "web01", 1);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	make_point(&p, 1, 1);
	p.ndisks = CAT_MAX_DISKS + 1;
	assert_int_equal(cat_point_commit(cat, "web01", &p, NULL, 0), RD_ERR_INVALID);
	make_point(&p, 1, 1);
	p.kind = (enum cat_kind)3;
	assert_int_equal(cat_point_commit(cat, "web01", &p, NULL, 0), RD_ERR_INVALID);
	assert_int_equal(count_points(f, "web01"), 0);
	cat_close(cat);
}

static void
test_events(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	uint64_t t0 = util_now_ms(), t1;
	sqlite3 *db;
	sqlite3_stmt *q;

	assert_int_equal(cat_event_add(cat, "web01", "info",
	    "cycle 42 applied"), 0);
	assert_int_equal(cat_event_add(cat, NULL, "error", "it's \"quoted\"; "
	    "DROP TABLE events; --"), 0);
	assert_int_equal(cat_event_add(cat, "web01", "warning", ""), 0);
	assert_int_equal(cat_event_add(cat, "web01", "debug", "no"),
	    RD_ERR_INVALID);
	t1 = util_now_ms();
	cat_close(cat);

	db = raw_open(f);
	q = raw_prepare(db, "SELECT at_ms, vm, level, message FROM events "
	    "ORDER BY id", NULL);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_in_range(sqlite3_column_int64(q, 0), t0, t1);
	assert_string_equal((const char *)sqlite3_column_text(q, 1), "web01");
	assert_string_equal((const char *)sqlite3_column_text(q, 2), "info");
	assert_string_equal((const char *)sqlite3_column_text(q, 3),
	    "cycle 42 applied");
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_int_equal(sqlite3_column_type(q, 1), SQLITE_NULL);
	assert_string_equal((const char *)sqlite3_column_text(q, 2), "error");
	assert_string_equal((const char *)sqlite3_column_text(q, 3),
	    "it's \"quoted\"; DROP TABLE events; --");
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(q, 2),
	    "warning");
	assert_int_equal(sqlite3_step(q), SQLITE_DONE);
	sqlite3_finalize(q);
	sqlite3_close(db);
}

#define THREAD_POINTS	200

struct writer {
	const struct fixture *f;
	struct catalog	*cat;		/* NULL: open a connection of its own */
	const char	*vm;
	int		 r;
	uint64_t	 bad_id;
};

static void *
writer_main(void *arg)
{
	struct writer *w = arg;
	struct catalog *cat = w->cat;
	struct cat_point p;

	if (cat == NULL && (w->r = cat_open(w->f->path, &cat)) != 0)
		return NULL;
	for (uint64_t i = 1; i <= THREAD_POINTS; i++) {
		make_point(&p, 1000 + i, 2);
		if ((w->r = cat_point_commit(cat, w->vm, &p, NULL, 0)) != 0)
			break;
		if (p.id != i) {
			w->bad_id = p.id;
			break;
		}
	}
	if (w->cat == NULL)
		cat_close(cat);
	return NULL;
}

struct reader {
	struct catalog	*cat;
	atomic_int	*stop;
	int		 r;
	int		 torn;		/* a list that was not 1..n */
	unsigned	 rounds;
};

static void *
reader_main(void *arg)
{
	struct reader *rd = arg;
	struct cat_point *list;
	size_t n;

	do {
		list = NULL;
		if ((rd->r = cat_point_list(rd->cat, "alpha", &list, &n)) != 0)
			break;
		for (size_t i = 0; i < n; i++)
			if (list[i].id != i + 1)
				rd->torn = 1;
		free(list);
		rd->rounds++;
	} while (!atomic_load(rd->stop));
	return NULL;
}

static void
check_dense(struct catalog *cat, const char *vm)
{
	struct cat_point *list = NULL;
	struct cat_rel rel;
	size_t n = 0;

	assert_int_equal(cat_point_list(cat, vm, &list, &n), 0);
	assert_int_equal(n, THREAD_POINTS);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(list[i].id, i + 1);
		assert_int_equal(list[i].cycle, 1000 + i + 1);
		assert_int_equal(list[i].ndisks, 2);
	}
	free(list);
	assert_int_equal(cat_rel_get(cat, vm, &rel), 0);
	assert_int_equal(rel.last_point, THREAD_POINTS);
	assert_int_equal(rel.last_cycle, 1000 + THREAD_POINTS);
}

static void
run_writers(const struct fixture *f, int shared)
{
	struct catalog *cat = open_cat(f);
	struct writer w[2] = {
		{ .f = f, .cat = shared ? cat : NULL, .vm = "alpha" },
		{ .f = f, .cat = shared ? cat : NULL, .vm = "beta" },
	};
	atomic_int stop = 0;
	struct reader rd = { .cat = cat, .stop = &stop };
	pthread_t tw[2], tr;
	struct cat_rel rel;

	make_rel(&rel, "alpha", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	make_rel(&rel, "beta", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);

	assert_int_equal(pthread_create(&tr, NULL, reader_main, &rd), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&tw[i], NULL, writer_main,
		    &w[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(tw[i], NULL);
	atomic_store(&stop, 1);
	pthread_join(tr, NULL);

	for (int i = 0; i < 2; i++) {
		assert_int_equal(w[i].r, 0);
		assert_int_equal(w[i].bad_id, 0);
	}
	assert_int_equal(rd.r, 0);
	assert_int_equal(rd.torn, 0);
	assert_true(rd.rounds > 0);
	check_dense(cat, "alpha");
	check_dense(cat, "beta");
	cat_close(cat);
}

/* Two threads on one struct catalog (its mutex), a third listing. */
static void
test_threads_shared(void **state)
{
	run_writers(*state, 1);
}

/* Two threads with a connection each: SQLite's lock and busy timeout. */
static void
test_threads_own_connection(void **state)
{
	run_writers(*state, 0);
}

/* --- definitions ---------------------------------------------------------- */

#define DEF_A	"<domain type='kvm'>\n  <name>web01</name>\n</domain>\n"
#define DEF_B	"<domain type='kvm'>\n  <name>web01</name>\n  " \
		"<memory unit='GiB'>4</memory>\n</domain>\n"

/* The id the catalog must give a text: its hex SHA-256. */
static void
sha256_hex(const char *text, char out[CAT_DEF_ID_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	assert_int_equal(EVP_Digest(text, strlen(text), md, &n, EVP_sha256(),
	    NULL), 1);
	assert_int_equal(n, 32);
	for (unsigned int i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void
commit_def(struct catalog *cat, const char *vm, uint64_t cycle,
    const char *def, uint64_t want_id, const char *want_def)
{
	struct cat_point p, got;
	char id[CAT_DEF_ID_LEN + 1] = "";

	make_point(&p, cycle, 2);
	assert_int_equal(cat_point_commit(cat, vm, &p, def, def ? strlen(def) :
	    0), 0);
	assert_int_equal(p.id, want_id);
	if (want_def != NULL)
		sha256_hex(want_def, id);
	assert_string_equal(p.definition, id);
	assert_int_equal(cat_point_get(cat, vm, want_id, &got), 0);
	assert_string_equal(got.definition, id);
}

/* Point id of vm has the text want (NULL: none). */
static void
assert_def(struct catalog *cat, const char *vm, uint64_t id, const char *want)
{
	char *xml = (char *)1;

	if (want == NULL) {
		assert_int_equal(cat_point_definition(cat, vm, id, &xml),
		    RD_ERR_NOT_FOUND);
		assert_null(xml);
		return;
	}
	assert_int_equal(cat_point_definition(cat, vm, id, &xml), 0);
	assert_string_equal(xml, want);
	free(xml);
}

static int64_t
count_defs(const struct fixture *f, const char *vm)
{
	sqlite3 *db = raw_open(f);
	int64_t n = raw_int(db, "SELECT count(*) FROM definitions WHERE vm = "
	    "?1", vm);

	sqlite3_close(db);
	return n;
}

/*
 * Each point carries a definition: the one its cycle brought, else the
 * newest point's before it.  Each text is stored once per VM.
 */
static void
test_definitions_inherited_and_shared(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;
	struct cat_point *pts = NULL;
	size_t n = 0;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	make_rel(&rel, "db01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	/* A VM whose tracker sends none: its points have none. */
	commit_def(cat, "db01", 1, NULL, 1, NULL);
	assert_def(cat, "db01", 1, NULL);
	commit_def(cat, "web01", 10, NULL, 1, NULL);
	commit_def(cat, "web01", 11, DEF_A, 2, DEF_A);
	commit_def(cat, "web01", 12, NULL, 3, DEF_A);
	commit_def(cat, "web01", 13, DEF_B, 4, DEF_B);
	commit_def(cat, "web01", 14, NULL, 5, DEF_B);
	commit_def(cat, "web01", 15, DEF_A, 6, DEF_A);	/* sent again */
	commit_def(cat, "web01", 16, DEF_A, 7, DEF_A);	/* a restart */
	/* Another VM with the same text has its own copy. */
	commit_def(cat, "db01", 2, DEF_A, 2, DEF_A);
	assert_int_equal(count_defs(f, "web01"), 2);
	assert_int_equal(count_defs(f, "db01"), 1);

	assert_def(cat, "web01", 1, NULL);
	assert_def(cat, "web01", 2, DEF_A);
	assert_def(cat, "web01", 3, DEF_A);
	assert_def(cat, "web01", 4, DEF_B);
	assert_def(cat, "web01", 5, DEF_B);
	assert_def(cat, "web01", 6, DEF_A);
	assert_def(cat, "web01", 99, NULL);
	assert_def(cat, "ghost", 1, NULL);

	assert_int_equal(cat_point_list(cat, "web01", &pts, &n), 0);
	assert_int_equal(n, 7);
	assert_string_equal(pts[0].definition, "");
	assert_string_equal(pts[1].definition, pts[2].definition);
	assert_string_equal(pts[3].definition, pts[4].definition);
	assert_string_equal(pts[1].definition, pts[5].definition);
	assert_string_not_equal(pts[1].definition, pts[3].definition);
	free(pts);

	/* Read back after a reopen. */
	cat_close(cat);
	cat = open_cat(f);
	assert_def(cat, "web01", 5, DEF_B);
	cat_close(cat);
}

/*
 * Dropping points (prune, forget, a failover's trim) keeps the
 * definitions of the points left exactly, and drops a text no point
 * carries any more, in the same transaction.
 */
static void
test_definitions_follow_drops(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	commit_def(cat, "web01", 1, DEF_A, 1, DEF_A);
	commit_def(cat, "web01", 2, DEF_B, 2, DEF_B);	/* B changes here */
	commit_def(cat, "web01", 3, NULL, 3, DEF_B);
	commit_def(cat, "web01", 4, DEF_A, 4, DEF_A);
	commit_def(cat, "web01", 5, NULL, 5, DEF_A);

	/* The point where B came is merged away: 3 keeps it. */
	assert_int_equal(cat_point_drop(cat, "web01", 2, 3, 1, 100), 0);
	assert_def(cat, "web01", 3, DEF_B);
	assert_int_equal(count_defs(f, "web01"), 2);
	/* The last point with B goes, and B with it. */
	assert_int_equal(cat_point_drop(cat, "web01", 3, 4, 1, 100), 0);
	assert_int_equal(count_defs(f, "web01"), 1);
	assert_def(cat, "web01", 4, DEF_A);
	/* A failed drop changes nothing. */
	assert_int_equal(cat_point_drop(cat, "web01", 9, 4, 1, 1),
	    RD_ERR_NOT_FOUND);
	assert_int_equal(count_defs(f, "web01"), 1);
	/* A new point without one inherits the newest's, whatever was
	 * dropped before it. */
	commit_def(cat, "web01", 6, NULL, 6, DEF_A);
	commit_def(cat, "web01", 7, DEF_B, 7, DEF_B);

	/* A failover's trim: points after 5 go, B with them. */
	assert_int_equal(cat_rel_get(cat, "web01", &rel), 0);
	assert_int_equal(cat_rel_put_trim(cat, &rel, 5), 0);
	assert_int_equal(count_points(f, "web01"), 3);
	assert_int_equal(count_defs(f, "web01"), 1);
	assert_def(cat, "web01", 1, DEF_A);
	assert_def(cat, "web01", 5, DEF_A);
	/* ... and the next point inherits point 5's. */
	commit_def(cat, "web01", 8, NULL, 8, DEF_A);
	/* All of them: nothing left. */
	assert_int_equal(cat_rel_put_trim(cat, &rel, 0), 0);
	assert_int_equal(count_defs(f, "web01"), 0);
	commit_def(cat, "web01", 9, NULL, 9, NULL);
	cat_close(cat);
}

/*
 * What the replica's space check asks: whether a text is stored for a
 * VM already (then a point carrying it costs nothing), and how much of
 * the database file is free pages (dropped definitions leave them).
 */
static void
test_definition_room(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;
	uint64_t before, after;
	size_t big_len = 256 << 10;
	char *big = malloc(big_len + 1);
	int known = -1;

	assert_non_null(big);
	memset(big, 'x', big_len);
	big[big_len] = '\0';
	assert_non_null(cat_file(cat));
	assert_int_equal(strcmp(cat_file(cat) + strlen(cat_file(cat)) -
	    strlen("catalog.db"), "catalog.db"), 0);
	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	assert_int_equal(cat_definition_known(cat, "web01", DEF_A,
	    strlen(DEF_A), &known), 0);
	assert_int_equal(known, 0);
	commit_def(cat, "web01", 1, DEF_A, 1, DEF_A);
	assert_int_equal(cat_definition_known(cat, "web01", DEF_A,
	    strlen(DEF_A), &known), 0);
	assert_int_equal(known, 1);
	/* Per VM, and per text. */
	assert_int_equal(cat_definition_known(cat, "web02", DEF_A,
	    strlen(DEF_A), &known), 0);
	assert_int_equal(known, 0);
	assert_int_equal(cat_definition_known(cat, "web01", DEF_B,
	    strlen(DEF_B), &known), 0);
	assert_int_equal(known, 0);
	assert_int_equal(cat_definition_known(cat, "web01", "", 0, &known),
	    RD_ERR_INVALID);

	/* A big definition, then the points that have it go: its pages are
	 * free for the next one. */
	commit_def(cat, "web01", 2, big, 2, big);
	commit_def(cat, "web01", 3, DEF_B, 3, DEF_B);
	assert_int_equal(cat_free_bytes(cat, &before), 0);
	assert_int_equal(cat_point_drop(cat, "web01", 2, 3, 1, 100), 0);
	assert_int_equal(count_defs(f, "web01"), 2);
	assert_int_equal(cat_free_bytes(cat, &after), 0);
	assert_true(after >= before + big_len - (16 << 10));
	cat_close(cat);
	free(big);
}

static void
test_definitions_refused(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;
	struct cat_point p;
	char *big = malloc(CAT_MAX_DEFINITION + 2);
	sqlite3 *db;

	assert_non_null(big);
	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	make_point(&p, 1, 2);
	assert_int_equal(cat_point_commit(cat, "web01", &p, "<a>\0</a>", 8),
	    RD_ERR_INVALID);
	assert_int_equal(cat_point_commit(cat, "web01", &p, "", 0),
	    RD_ERR_INVALID);
	memset(big, 'x', CAT_MAX_DEFINITION + 1);
	big[CAT_MAX_DEFINITION + 1] = '\0';
	assert_int_equal(cat_point_commit(cat, "web01", &p, big,
	    CAT_MAX_DEFINITION + 1), RD_ERR_INVALID);
	assert_int_equal(count_points(f, "web01"), 0);
	assert_int_equal(count_defs(f, "web01"), 0);
	/* The largest one is kept whole. */
	big[CAT_MAX_DEFINITION] = '\0';
	commit_def(cat, "web01", 1, big, 1, big);
	assert_def(cat, "web01", 1, big);
	/* A duplicate cycle stores nothing either. */
	make_point(&p, 1, 2);
	assert_int_equal(cat_point_commit(cat, "web01", &p, DEF_B,
	    strlen(DEF_B)), RD_ERR_EXISTS);
	assert_int_equal(count_defs(f, "web01"), 1);
	/* A first point of a new relationship, with its definition. */
	make_rel(&rel, "new01", 2);
	make_point(&p, 1, 2);
	assert_int_equal(cat_point_commit_new(cat, &rel, &p, DEF_B,
	    strlen(DEF_B)), 0);
	assert_def(cat, "new01", 1, DEF_B);

	/* Damage behind the catalog's back is refused, not served. */
	db = raw_open(f);
	raw_update(db, "UPDATE definitions SET xml = ?1 WHERE vm = ?2",
	    DEF_A, "new01");
	sqlite3_close(db);
	char *xml = NULL;
	assert_int_equal(cat_point_definition(cat, "new01", 1, &xml),
	    RD_ERR_CORRUPT);
	assert_null(xml);
	db = raw_open(f);
	raw_update(db, "UPDATE points SET definition = ?1 WHERE vm = ?2",
	    "../../etc/passwd", "new01");
	sqlite3_close(db);
	assert_int_equal(cat_point_get(cat, "new01", 1, &p), RD_ERR_CORRUPT);
	assert_int_equal(cat_point_definition(cat, "new01", 1, &xml),
	    RD_ERR_CORRUPT);
	free(big);
	cat_close(cat);
}

/*
 * A catalog of schema version 4 (before definitions) is migrated at
 * open: its points keep everything and carry no definition, and the
 * next ones can.  The old file is made from a new one by undoing what
 * the migration adds.
 */
static void
test_migrate_from_v4(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = open_cat(f);
	struct cat_rel rel;
	struct cat_point p;
	sqlite3 *db;

	make_rel(&rel, "web01", 2);
	assert_int_equal(cat_rel_put(cat, &rel), 0);
	commit_ok(cat, "web01", 1, 1);
	commit_ok(cat, "web01", 2, 2);
	cat_close(cat);
	db = raw_open(f);
	raw_exec(db, "DROP INDEX points_definition; "
	    "ALTER TABLE points DROP COLUMN definition; "
	    "DROP TABLE definitions; PRAGMA user_version = 4");
	assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_schema "
	    "WHERE name = 'definitions'", NULL), 0);
	sqlite3_close(db);

	cat = open_cat(f);
	db = raw_open(f);
	assert_int_equal(raw_int(db, "PRAGMA user_version", NULL),
	    CAT_SCHEMA_VERSION);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM points WHERE "
	    "definition IS NULL", NULL), 2);
	sqlite3_close(db);
	assert_int_equal(cat_point_get(cat, "web01", 2, &p), 0);
	assert_int_equal(p.cycle, 2);
	assert_int_equal(p.bytes, 2 * 4096);
	assert_string_equal(p.definition, "");
	assert_def(cat, "web01", 2, NULL);
	commit_def(cat, "web01", 3, NULL, 3, NULL);
	commit_def(cat, "web01", 4, DEF_A, 4, DEF_A);
	commit_def(cat, "web01", 5, NULL, 5, DEF_A);
	cat_close(cat);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_creates, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_open_bad_path, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_newer_schema_refused,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_a_database, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_rel_round_trip, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_rel_replace, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_rel_put_lazy, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_rel_put_trim, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_point_drop, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_point_commit_sequence,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_point_duplicate_cycle,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_point_unknown_vm, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_point_get_list, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_two_vms_independent,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_ids_not_reused, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_rows, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_bad_input, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_threads_shared, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_threads_own_connection,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_definitions_inherited_and_shared, setup, teardown),
		cmocka_unit_test_setup_teardown(test_definitions_follow_drops,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_definition_room, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_definitions_refused,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_from_v4, setup,
		    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
