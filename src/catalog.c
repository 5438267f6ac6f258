/*
 * catalog.c — the SQLite catalog, STATE_DIR/catalog.db: relationships and
 * their disks, recovery points, their disk sizes and the VM definitions
 * they carry, the event log.
 *
 * On-disk format: an SQLite 3 database, WAL journal, created 0600 (SQLite
 * gives the -wal and -shm files the same mode).  PRAGMA user_version is
 * the schema version.  cat_migrations[v] takes a database from version v
 * to v + 1 in one transaction that also sets user_version, so a crash
 * leaves the old schema or the new one, never half of it.  A database
 * newer than this build is refused, untouched.
 *
 * Schema version 2 (all tables STRICT: a column holds only its type):
 *
 *   relationships  vm -> role (0 primary, 1 replica), generation, peer,
 *                  storage, block_size, last_cycle, last_point,
 *                  last_point_created_ms, interval_ms; since version 2
 *                  peer_name, fenced (why this host was refused as a
 *                  stale primary, '' if not), resync (0, 1), at_point
 *                  and step_to (an uncommitted failover's rewind),
 *                  max_point (the highest point id ever given: ids are
 *                  not reused when a failover drops points)
 *   Schema version 3 adds points.seg: the version of the point's undo
 *   segment file (0: CYCLE.undo; n: CYCLE.n.undo after n merges;
 *   CAT_SEG_NONE: none, the oldest point's after a prune).
 *   Schema version 4 adds relationships.reassigned (0, 1): a replica
 *   reassigned to another sender (`replctl reassign`) whose first cycle
 *   at the new generation is still to come.
 *   Schema version 5 adds points.definition (NULL: none) and the table
 *   definitions: each VM definition (libvirt domain XML) a VM's points
 *   carry, once however many points carry it, and only as long as one
 *   does (a drop of points drops the definitions left unused in the same
 *   transaction).
 *   rel_disks      (vm, idx) -> name (unique per vm), size; idx 0..n-1
 *   points         (vm, id) -> cycle (unique per vm), created_ms, kind
 *                  (0 crash, 1 app), bytes, undo_bytes, generation
 *   point_disks    (vm, point, idx) -> size; idx 0..n-1
 *   events         id -> at_ms, vm (NULL: not about one VM), level
 *                  ("info", "warning", "error"), message
 *   definitions    (vm, id) -> xml; id is the hex SHA-256 of xml (a
 *                  cryptographic hash: a sender cannot make two texts
 *                  share one), the value of points.definition
 *
 * A uint64_t is stored as its int64 bit pattern and read back with the
 * same cast.  What is read back is checked before it reaches a struct: a
 * string longer than its field, a name outside the safe set, an unknown
 * role or kind, a gap in disk indexes is RD_ERR_CORRUPT, logged.
 *
 * Statements are prepared once at open and kept, with the connection,
 * behind the catalog's mutex; a statement is reset and its bindings
 * cleared after every use.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "catalog.h"
#include "err.h"
#include "log.h"
#include "util.h"
#include "xmalloc.h"

#define CAT_BUSY_TIMEOUT_MS	5000

/* cat_migrations[v]: schema version v to v + 1, ending with user_version. */
static const char *const cat_migrations[] = {
	/* 0 -> 1: the first schema. */
	"CREATE TABLE relationships ("
	"  vm TEXT NOT NULL PRIMARY KEY,"
	"  role INTEGER NOT NULL CHECK (role IN (0, 1)),"
	"  generation INTEGER NOT NULL,"
	"  peer TEXT NOT NULL,"
	"  storage TEXT NOT NULL,"
	"  block_size INTEGER NOT NULL"
	"    CHECK (block_size BETWEEN 0 AND 4294967295),"
	"  last_cycle INTEGER NOT NULL,"
	"  last_point INTEGER NOT NULL,"
	"  last_point_created_ms INTEGER NOT NULL,"
	"  interval_ms INTEGER NOT NULL"
	") STRICT;"
	"CREATE TABLE rel_disks ("
	"  vm TEXT NOT NULL REFERENCES relationships (vm) ON DELETE CASCADE,"
	"  idx INTEGER NOT NULL CHECK (idx >= 0),"
	"  name TEXT NOT NULL,"
	"  size INTEGER NOT NULL,"
	"  PRIMARY KEY (vm, idx),"
	"  UNIQUE (vm, name)"
	") STRICT, WITHOUT ROWID;"
	"CREATE TABLE points ("
	"  vm TEXT NOT NULL REFERENCES relationships (vm),"
	"  id INTEGER NOT NULL,"
	"  cycle INTEGER NOT NULL,"
	"  created_ms INTEGER NOT NULL,"
	"  kind INTEGER NOT NULL CHECK (kind IN (0, 1)),"
	"  bytes INTEGER NOT NULL,"
	"  undo_bytes INTEGER NOT NULL,"
	"  generation INTEGER NOT NULL,"
	"  PRIMARY KEY (vm, id),"
	"  UNIQUE (vm, cycle)"
	") STRICT, WITHOUT ROWID;"
	"CREATE TABLE point_disks ("
	"  vm TEXT NOT NULL,"
	"  point INTEGER NOT NULL,"
	"  idx INTEGER NOT NULL CHECK (idx >= 0),"
	"  size INTEGER NOT NULL,"
	"  PRIMARY KEY (vm, point, idx),"
	"  FOREIGN KEY (vm, point) REFERENCES points (vm, id)"
	"    ON DELETE CASCADE"
	") STRICT, WITHOUT ROWID;"
	"CREATE TABLE events ("
	"  id INTEGER PRIMARY KEY,"
	"  at_ms INTEGER NOT NULL,"
	"  vm TEXT,"
	"  level TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error')),"
	"  message TEXT NOT NULL"
	") STRICT;"
	"CREATE INDEX events_vm ON events (vm, id);"
	"PRAGMA user_version = 1;",
	/* 1 -> 2: failover, fencing and resynchronisation state. */
	"ALTER TABLE relationships ADD COLUMN peer_name TEXT NOT NULL "
	"  DEFAULT '';"
	"ALTER TABLE relationships ADD COLUMN fenced TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE relationships ADD COLUMN resync INTEGER NOT NULL "
	"  DEFAULT 0 CHECK (resync IN (0, 1));"
	"ALTER TABLE relationships ADD COLUMN at_point INTEGER NOT NULL "
	"  DEFAULT 0;"
	"ALTER TABLE relationships ADD COLUMN step_to INTEGER NOT NULL "
	"  DEFAULT 0;"
	"ALTER TABLE relationships ADD COLUMN max_point INTEGER NOT NULL "
	"  DEFAULT 0;"
	"UPDATE relationships SET max_point = max(last_point, "
	"  coalesce((SELECT max(id) FROM points "
	"  WHERE points.vm = relationships.vm), 0));"
	"PRAGMA user_version = 2;",
	/* 2 -> 3: undo segments rewritten by a merge (pruning). */
	"ALTER TABLE points ADD COLUMN seg INTEGER NOT NULL DEFAULT 0 "
	"  CHECK (seg BETWEEN 0 AND 4294967295);"
	"PRAGMA user_version = 3;",
	/* 3 -> 4: a replica reassigned to another sending host. */
	"ALTER TABLE relationships ADD COLUMN reassigned INTEGER NOT NULL "
	"  DEFAULT 0 CHECK (reassigned IN (0, 1));"
	"PRAGMA user_version = 4;",
	/* 4 -> 5: the VM definition (libvirt domain XML) of each point. */
	"CREATE TABLE definitions ("
	"  vm TEXT NOT NULL,"
	"  id TEXT NOT NULL CHECK (length(id) = 64),"
	"  xml TEXT NOT NULL,"
	"  PRIMARY KEY (vm, id)"
	") STRICT, WITHOUT ROWID;"
	"ALTER TABLE points ADD COLUMN definition TEXT;"
	"CREATE INDEX points_definition ON points (vm, definition);"
	"PRAGMA user_version = 5;",
};

_Static_assert(CAT_SEG_NONE == 4294967295u, "ST_POINT_STATS spells it out");
_Static_assert(sizeof(cat_migrations) / sizeof(cat_migrations[0]) ==
    CAT_SCHEMA_VERSION, "one migration step per schema version");

enum cat_stmt {
	ST_BEGIN,
	ST_BEGIN_WRITE,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_REL_GET,
	ST_REL_LIST,
	ST_REL_PUT,
	ST_REL_POINT_IDS,
	ST_REL_SET_POINT,
	ST_RDISK_LIST,
	ST_RDISK_CLEAR,
	ST_RDISK_ADD,
	ST_RDISK_SET_SIZE,
	ST_POINT_GET,
	ST_POINT_BY_CYCLE,
	ST_POINT_LIST,
	ST_POINT_CYCLE_USED,
	ST_POINT_ADD,
	ST_PDISK_LIST,
	ST_PDISK_ADD,
	ST_EVENT_ADD,
	ST_POINT_DROP_AFTER,
	ST_POINT_DROP,
	ST_POINT_SET_SEG,
	ST_POINT_STATS,
	ST_DEF_ADD,
	ST_DEF_NEWEST,
	ST_DEF_GET,
	ST_DEF_SWEEP,
	ST_DEF_KNOWN,
	ST_FREE_BYTES,
	ST_COUNT
};

#define REL_COLS "vm, role, generation, peer, storage, block_size, " \
	"last_cycle, last_point, last_point_created_ms, interval_ms, " \
	"peer_name, fenced, resync, at_point, step_to, reassigned"
#define POINT_COLS "id, cycle, created_ms, kind, bytes, undo_bytes, " \
	"generation, seg, definition"

static const char *const cat_sql[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN",
	[ST_BEGIN_WRITE] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_REL_GET] = "SELECT " REL_COLS " FROM relationships WHERE vm = ?1",
	[ST_REL_LIST] = "SELECT " REL_COLS " FROM relationships ORDER BY vm",
	[ST_REL_PUT] = "INSERT INTO relationships (" REL_COLS ") "
	    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, "
	    "?14, ?15, ?16) "
	    "ON CONFLICT (vm) DO UPDATE SET role = excluded.role, "
	    "generation = excluded.generation, peer = excluded.peer, "
	    "storage = excluded.storage, block_size = excluded.block_size, "
	    "last_cycle = excluded.last_cycle, "
	    "last_point = excluded.last_point, "
	    "last_point_created_ms = excluded.last_point_created_ms, "
	    "interval_ms = excluded.interval_ms, "
	    "peer_name = excluded.peer_name, fenced = excluded.fenced, "
	    "resync = excluded.resync, at_point = excluded.at_point, "
	    "step_to = excluded.step_to, reassigned = excluded.reassigned",
	[ST_REL_POINT_IDS] = "SELECT max(last_point, max_point), "
	    "(SELECT max(id) FROM points WHERE vm = ?1) "
	    "FROM relationships WHERE vm = ?1",
	[ST_REL_SET_POINT] = "UPDATE relationships SET last_cycle = ?2, "
	    "last_point = ?3, last_point_created_ms = ?4, "
	    "max_point = max(max_point, ?3), "
	    "generation = max(generation, ?5), "
	    "reassigned = CASE WHEN ?5 >= generation THEN 0 ELSE reassigned END "
	    "WHERE vm = ?1",
	[ST_RDISK_LIST] = "SELECT idx, name, size FROM rel_disks "
	    "WHERE vm = ?1 ORDER BY idx",
	[ST_RDISK_CLEAR] = "DELETE FROM rel_disks WHERE vm = ?1",
	[ST_RDISK_ADD] = "INSERT INTO rel_disks (vm, idx, name, size) "
	    "VALUES (?1, ?2, ?3, ?4)",
	[ST_RDISK_SET_SIZE] = "UPDATE rel_disks SET size = ?3 "
	    "WHERE vm = ?1 AND idx = ?2",
	[ST_POINT_GET] = "SELECT " POINT_COLS " FROM points "
	    "WHERE vm = ?1 AND id = ?2",
	[ST_POINT_BY_CYCLE] = "SELECT " POINT_COLS " FROM points "
	    "WHERE vm = ?1 AND cycle = ?2",
	[ST_POINT_LIST] = "SELECT " POINT_COLS " FROM points "
	    "WHERE vm = ?1 ORDER BY id",
	[ST_POINT_CYCLE_USED] = "SELECT 1 FROM points "
	    "WHERE vm = ?1 AND cycle = ?2",
	[ST_POINT_ADD] = "INSERT INTO points (vm, " POINT_COLS ") "
	    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
	[ST_POINT_DROP] = "DELETE FROM points WHERE vm = ?1 AND id = ?2",
	[ST_POINT_STATS] = "SELECT count(*), coalesce(sum(CASE WHEN seg = "
	    "4294967295 THEN 0 ELSE undo_bytes END), 0) FROM points "
	    "WHERE vm = ?1",
	[ST_POINT_SET_SEG] = "UPDATE points SET seg = ?3, undo_bytes = ?4 "
	    "WHERE vm = ?1 AND id = ?2",
	[ST_PDISK_LIST] = "SELECT idx, size FROM point_disks "
	    "WHERE vm = ?1 AND point = ?2 ORDER BY idx",
	[ST_PDISK_ADD] = "INSERT INTO point_disks (vm, point, idx, size) "
	    "VALUES (?1, ?2, ?3, ?4)",
	[ST_POINT_DROP_AFTER] = "DELETE FROM points WHERE vm = ?1 AND id > ?2",
	[ST_EVENT_ADD] = "INSERT INTO events (at_ms, vm, level, message) "
	    "VALUES (?1, ?2, ?3, ?4)",
	[ST_DEF_ADD] = "INSERT INTO definitions (vm, id, xml) "
	    "VALUES (?1, ?2, ?3) ON CONFLICT (vm, id) DO NOTHING",
	[ST_DEF_NEWEST] = "SELECT definition FROM points WHERE vm = ?1 "
	    "ORDER BY id DESC LIMIT 1",
	[ST_DEF_GET] = "SELECT p.definition, d.xml FROM points p "
	    "LEFT JOIN definitions d ON d.vm = p.vm AND d.id = p.definition "
	    "WHERE p.vm = ?1 AND p.id = ?2",
	[ST_DEF_SWEEP] = "DELETE FROM definitions WHERE vm = ?1 AND id NOT IN "
	    "(SELECT definition FROM points WHERE vm = ?1 AND "
	    "definition IS NOT NULL)",
	[ST_DEF_KNOWN] = "SELECT 1 FROM definitions WHERE vm = ?1 AND id = ?2",
	[ST_FREE_BYTES] = "SELECT f.freelist_count * p.page_size FROM "
	    "pragma_freelist_count() f, pragma_page_size() p",
};

struct catalog {
	sqlite3		*db;
	char		*path;
	pthread_mutex_t	 lock;
	sqlite3_stmt	*st[ST_COUNT];
};

/* Log the connection's last error for what (about vm, if not NULL). */
static int
cat_dberr(struct catalog *cat, const char *vm, const char *what)
{
	if (vm != NULL)
		log_warnx("catalog: %s: %s: %s", vm, what,
		    sqlite3_errmsg(cat->db));
	else
		log_warnx("catalog: %s: %s", what, sqlite3_errmsg(cat->db));
	return RD_ERR_DB;
}

static int
cat_corrupt(const char *vm, const char *table, const char *column)
{
	log_warnx("catalog: %s: %s.%s holds a value that is invalid or too "
	    "long", vm != NULL ? vm : "(unreadable name)", table, column);
	return RD_ERR_CORRUPT;
}

/* Make st ready for its next use, with no values bound. */
static void
cat_release(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* Step a bound statement that returns no rows, then release it. */
static int
cat_run(struct catalog *cat, enum cat_stmt which, const char *vm,
    const char *what)
{
	sqlite3_stmt *st = cat->st[which];
	int r = 0;

	if (sqlite3_step(st) != SQLITE_DONE)
		r = cat_dberr(cat, vm, what);
	cat_release(st);
	return r;
}

static int
cat_begin(struct catalog *cat, int write)
{
	return cat_run(cat, write ? ST_BEGIN_WRITE : ST_BEGIN, NULL,
	    "begin transaction");
}

/* Commit if r is 0; roll back whatever is open otherwise.  Returns r, or
 * the commit's error. */
static int
cat_end(struct catalog *cat, int r)
{
	if (r == 0)
		r = cat_run(cat, ST_COMMIT, NULL, "commit");
	if (r != 0 && !sqlite3_get_autocommit(cat->db))
		(void)cat_run(cat, ST_ROLLBACK, NULL, "rollback");
	return r;
}

static int
bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s == NULL)
		return sqlite3_bind_null(st, i);
	return sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
}

static int
bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
	return sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

static int
col_i64(sqlite3_stmt *st, int col, int64_t *v)
{
	if (sqlite3_column_type(st, col) != SQLITE_INTEGER)
		return RD_ERR_CORRUPT;
	*v = sqlite3_column_int64(st, col);
	return 0;
}

static int
col_u64(sqlite3_stmt *st, int col, uint64_t *v)
{
	int64_t x;

	if (col_i64(st, col, &x) != 0)
		return RD_ERR_CORRUPT;
	*v = (uint64_t)x;
	return 0;
}

/* Copy a text column into dst (dstsz bytes with its NUL), or refuse. */
static int
col_text(sqlite3_stmt *st, int col, char *dst, size_t dstsz)
{
	const unsigned char *s;
	int n;

	if (sqlite3_column_type(st, col) != SQLITE_TEXT)
		return RD_ERR_CORRUPT;
	s = sqlite3_column_text(st, col);
	n = sqlite3_column_bytes(st, col);
	if (s == NULL || n < 0 || (size_t)n >= dstsz ||
	    memchr(s, '\0', (size_t)n) != NULL)
		return RD_ERR_CORRUPT;
	memcpy(dst, s, (size_t)n);
	dst[n] = '\0';
	return 0;
}

/* 1 if the string in a field of fieldsz bytes ends inside it. */
static int
fits(const char *s, size_t fieldsz)
{
	return memchr(s, '\0', fieldsz) != NULL;
}

/* The id of a definition: the hex SHA-256 of its text. */
static void
def_id(const char *xml, size_t len, char id[CAT_DEF_ID_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (EVP_Digest(xml, len, md, &n, EVP_sha256(), NULL) != 1 ||
	    n * 2 != CAT_DEF_ID_LEN)
		fatalx("catalog: SHA-256 failed");
	for (unsigned int i = 0; i < n; i++) {
		id[2 * i] = hex[md[i] >> 4];
		id[2 * i + 1] = hex[md[i] & 15];
	}
	id[CAT_DEF_ID_LEN] = '\0';
}

/* A definition id column: NULL (none, "") or 64 lowercase hex digits. */
static int
col_def_id(sqlite3_stmt *st, int col, char id[CAT_DEF_ID_LEN + 1])
{
	if (sqlite3_column_type(st, col) == SQLITE_NULL) {
		id[0] = '\0';
		return 0;
	}
	if (col_text(st, col, id, CAT_DEF_ID_LEN + 1) != 0 ||
	    strlen(id) != CAT_DEF_ID_LEN ||
	    strspn(id, "0123456789abcdef") != CAT_DEF_ID_LEN)
		return RD_ERR_CORRUPT;
	return 0;
}

/* Definitions no point of vm has any more go, in the caller's
 * transaction. */
static int
def_sweep(struct catalog *cat, const char *vm)
{
	sqlite3_stmt *st = cat->st[ST_DEF_SWEEP];

	if (bind_text(st, 1, vm) != SQLITE_OK) {
		cat_release(st);
		return cat_dberr(cat, vm, "drop unused definitions");
	}
	return cat_run(cat, ST_DEF_SWEEP, vm, "drop unused definitions");
}

/*
 * Run a script of constant SQL (no parameters) on a connection with no
 * prepared statements of ours yet: schema migrations and pragmas.
 */
static int
cat_exec(struct catalog *cat, const char *sql)
{
	sqlite3_stmt *st;
	const char *tail = sql;
	int rc, r = 0;

	while (*tail != '\0') {
		if (sqlite3_prepare_v2(cat->db, tail, -1, &st, &tail) !=
		    SQLITE_OK)
			return cat_dberr(cat, cat->path, "prepare");
		if (st == NULL)
			continue;	/* trailing blanks */
		while ((rc = sqlite3_step(st)) == SQLITE_ROW)
			;
		if (rc != SQLITE_DONE)
			r = cat_dberr(cat, cat->path, sqlite3_sql(st));
		sqlite3_finalize(st);
		if (r != 0)
			break;
	}
	return r;
}

/* The first column of the first row of constant sql: a pragma's value. */
static int
cat_query(struct catalog *cat, const char *sql, int64_t *iv, char *sv,
    size_t svsz)
{
	sqlite3_stmt *st = NULL;
	int r;

	if (sqlite3_prepare_v2(cat->db, sql, -1, &st, NULL) != SQLITE_OK) {
		r = cat_dberr(cat, cat->path, sql);
		goto out;
	}
	if (sqlite3_step(st) != SQLITE_ROW) {
		r = cat_dberr(cat, cat->path, sql);
		goto out;
	}
	if (iv != NULL && col_i64(st, 0, iv) != 0) {
		log_warnx("catalog: %s: %s: unexpected result", cat->path, sql);
		r = RD_ERR_DB;
		goto out;
	}
	if (sv != NULL && col_text(st, 0, sv, svsz) != 0) {
		log_warnx("catalog: %s: %s: unexpected result", cat->path, sql);
		r = RD_ERR_DB;
		goto out;
	}
	r = 0;
out:
	sqlite3_finalize(st);
	return r;
}

static int
cat_check_version(struct catalog *cat, int64_t v)
{
	if (v > CAT_SCHEMA_VERSION) {
		log_warnx("catalog: %s has schema version %lld; this replicad "
		    "knows up to %d", cat->path, (long long)v,
		    CAT_SCHEMA_VERSION);
		return RD_ERR_VERSION;
	}
	if (v < 0) {
		log_warnx("catalog: %s has schema version %lld", cat->path,
		    (long long)v);
		return RD_ERR_CORRUPT;
	}
	return 0;
}

/* Bring the schema to CAT_SCHEMA_VERSION, one transaction per step. */
static int
cat_migrate(struct catalog *cat)
{
	int64_t v, now;
	int r;

	for (;;) {
		if ((r = cat_exec(cat, "BEGIN IMMEDIATE")) != 0)
			return r;
		/* Read again under the write lock: another process may have
		 * migrated since we last looked. */
		if ((r = cat_query(cat, "PRAGMA user_version", &v, NULL, 0)) !=
		    0 || (r = cat_check_version(cat, v)) != 0)
			goto out;
		if (v == CAT_SCHEMA_VERSION)
			break;
		log_info("catalog: %s: schema version %lld -> %lld", cat->path,
		    (long long)v, (long long)v + 1);
		if ((r = cat_exec(cat, cat_migrations[v])) != 0 ||
		    (r = cat_query(cat, "PRAGMA user_version", &now, NULL,
		    0)) != 0)
			goto out;
		if (now != v + 1) {
			log_warnx("catalog: %s: migration from schema version "
			    "%lld left version %lld", cat->path, (long long)v,
			    (long long)now);
			r = RD_ERR_INTERNAL;
			goto out;
		}
		if ((r = cat_exec(cat, "COMMIT")) != 0)
			goto out;
	}
	r = cat_exec(cat, "COMMIT");
out:
	if (r != 0 && !sqlite3_get_autocommit(cat->db))
		(void)cat_exec(cat, "ROLLBACK");
	return r;
}

/* Settings that must hold on every connection (synchronous and
 * foreign_keys do not persist in the file). */
static int
cat_configure(struct catalog *cat)
{
	char mode[16];
	int64_t v;
	int r;

	if ((r = cat_query(cat, "PRAGMA journal_mode = WAL", NULL, mode,
	    sizeof(mode))) != 0)
		return r;
	if (strcasecmp(mode, "wal") != 0) {
		log_warnx("catalog: %s: cannot use WAL (journal mode stays "
		    "\"%s\")", cat->path, mode);
		return RD_ERR_DB;
	}
	if ((r = cat_exec(cat, "PRAGMA synchronous = FULL;"
	    "PRAGMA foreign_keys = ON")) != 0)
		return r;
	if ((r = cat_query(cat, "PRAGMA foreign_keys", &v, NULL, 0)) != 0)
		return r;
	if (v != 1) {
		log_warnx("catalog: %s: this SQLite does not enforce foreign "
		    "keys", cat->path);
		return RD_ERR_DB;
	}
	return 0;
}

int
cat_open(const char *path, struct catalog **out)
{
	struct catalog *cat = xcalloc(1, sizeof(*cat));
	int64_t v;
	int fd, rc, r;

	cat->path = xstrdup(path);
	if ((rc = pthread_mutex_init(&cat->lock, NULL)) != 0)
		fatalx("catalog: pthread_mutex_init: %s", strerror(rc));
	/* SQLite would create the file 0644; make it 0600 first.  The -wal
	 * and -shm files SQLite creates take the database file's mode. */
	if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
		log_warn("catalog: %s", path);
		r = RD_ERR_SYSTEM;
		goto out;
	}
	close(fd);
	rc = sqlite3_open_v2(path, &cat->db, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
	if (rc != SQLITE_OK) {
		log_warnx("catalog: %s: open: %s", path, cat->db != NULL ?
		    sqlite3_errmsg(cat->db) : sqlite3_errstr(rc));
		r = RD_ERR_DB;
		goto out;
	}
	/* replctl may read the file from another process: wait for its
	 * locks (SQLite's busy handler) rather than fail. */
	if (sqlite3_busy_timeout(cat->db, CAT_BUSY_TIMEOUT_MS) != SQLITE_OK) {
		r = cat_dberr(cat, path, "busy timeout");
		goto out;
	}
	/* Refuse a newer schema before changing anything in the file. */
	if ((r = cat_query(cat, "PRAGMA user_version", &v, NULL, 0)) != 0 ||
	    (r = cat_check_version(cat, v)) != 0)
		goto out;
	if ((r = cat_configure(cat)) != 0)
		goto out;
	if (v != CAT_SCHEMA_VERSION && (r = cat_migrate(cat)) != 0)
		goto out;
	for (int i = 0; i < ST_COUNT; i++) {
		if (sqlite3_prepare_v3(cat->db, cat_sql[i], -1,
		    SQLITE_PREPARE_PERSISTENT, &cat->st[i], NULL) != SQLITE_OK) {
			r = cat_dberr(cat, path, cat_sql[i]);
			goto out;
		}
	}
	*out = cat;
	cat = NULL;
	r = 0;
out:
	if (cat != NULL) {
		int saved = errno;
		cat_close(cat);
		errno = saved;
	}
	return r;
}

void
cat_close(struct catalog *cat)
{
	if (cat == NULL)
		return;
	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(cat->st[i]);
	if (cat->db != NULL && sqlite3_close(cat->db) != SQLITE_OK)
		cat_dberr(cat, cat->path, "close");
	pthread_mutex_destroy(&cat->lock);
	free(cat->path);
	free(cat);
}

/* The relationship in the current row of ST_REL_GET or ST_REL_LIST. */
static int
rel_from_row(sqlite3_stmt *st, struct cat_rel *rel)
{
	int64_t role, block_size;

	memset(rel, 0, sizeof(*rel));
	if (col_text(st, 0, rel->vm, sizeof(rel->vm)) != 0 ||
	    util_name_valid(rel->vm) != 0)
		return cat_corrupt(NULL, "relationships", "vm");
	if (col_i64(st, 1, &role) != 0 ||
	    (role != CAT_ROLE_PRIMARY && role != CAT_ROLE_REPLICA))
		return cat_corrupt(rel->vm, "relationships", "role");
	rel->role = (enum cat_role)role;
	if (col_u64(st, 2, &rel->generation) != 0)
		return cat_corrupt(rel->vm, "relationships", "generation");
	if (col_text(st, 3, rel->peer, sizeof(rel->peer)) != 0)
		return cat_corrupt(rel->vm, "relationships", "peer");
	if (col_text(st, 4, rel->storage, sizeof(rel->storage)) != 0)
		return cat_corrupt(rel->vm, "relationships", "storage");
	if (col_i64(st, 5, &block_size) != 0 || block_size < 0 ||
	    block_size > UINT32_MAX)
		return cat_corrupt(rel->vm, "relationships", "block_size");
	rel->block_size = (uint32_t)block_size;
	if (col_u64(st, 6, &rel->last_cycle) != 0)
		return cat_corrupt(rel->vm, "relationships", "last_cycle");
	if (col_u64(st, 7, &rel->last_point) != 0)
		return cat_corrupt(rel->vm, "relationships", "last_point");
	if (col_i64(st, 8, &rel->last_point_created_ms) != 0)
		return cat_corrupt(rel->vm, "relationships",
		    "last_point_created_ms");
	if (col_u64(st, 9, &rel->interval_ms) != 0)
		return cat_corrupt(rel->vm, "relationships", "interval_ms");
	if (col_text(st, 10, rel->peer_name, sizeof(rel->peer_name)) != 0)
		return cat_corrupt(rel->vm, "relationships", "peer_name");
	if (col_text(st, 11, rel->fenced, sizeof(rel->fenced)) != 0)
		return cat_corrupt(rel->vm, "relationships", "fenced");
	int64_t resync;
	if (col_i64(st, 12, &resync) != 0 || (resync != 0 && resync != 1))
		return cat_corrupt(rel->vm, "relationships", "resync");
	rel->resync = (int)resync;
	if (col_u64(st, 13, &rel->at_point) != 0 ||
	    (rel->at_point != 0 && rel->at_point > rel->last_point))
		return cat_corrupt(rel->vm, "relationships", "at_point");
	if (col_u64(st, 14, &rel->step_to) != 0 ||
	    (rel->step_to != 0 && rel->step_to > rel->last_point))
		return cat_corrupt(rel->vm, "relationships", "step_to");
	int64_t reassigned;
	if (col_i64(st, 15, &reassigned) != 0 ||
	    (reassigned != 0 && reassigned != 1))
		return cat_corrupt(rel->vm, "relationships", "reassigned");
	rel->reassigned = (int)reassigned;
	return 0;
}

static int
rel_load_disks(struct catalog *cat, struct cat_rel *rel)
{
	sqlite3_stmt *st = cat->st[ST_RDISK_LIST];
	int64_t idx;
	int rc, r;

	rel->ndisks = 0;
	if (bind_text(st, 1, rel->vm) != SQLITE_OK) {
		r = cat_dberr(cat, rel->vm, "list disks");
		goto out;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct cat_disk *d = &rel->disks[rel->ndisks];

		if (rel->ndisks == CAT_MAX_DISKS || col_i64(st, 0, &idx) != 0 ||
		    idx != rel->ndisks) {
			r = cat_corrupt(rel->vm, "rel_disks", "idx");
			goto out;
		}
		if (col_text(st, 1, d->name, sizeof(d->name)) != 0 ||
		    util_disk_name_valid(d->name) != 0) {
			r = cat_corrupt(rel->vm, "rel_disks", "name");
			goto out;
		}
		if (col_u64(st, 2, &d->size) != 0) {
			r = cat_corrupt(rel->vm, "rel_disks", "size");
			goto out;
		}
		rel->ndisks++;
	}
	if (rc != SQLITE_DONE) {
		r = cat_dberr(cat, rel->vm, "list disks");
		goto out;
	}
	r = 0;
out:
	cat_release(st);
	return r;
}

int
cat_rel_get(struct catalog *cat, const char *vm, struct cat_rel *out)
{
	sqlite3_stmt *st = cat->st[ST_REL_GET];
	int rc, r;

	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	if (bind_text(st, 1, vm) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "get relationship");
		goto out;
	}
	if ((rc = sqlite3_step(st)) == SQLITE_DONE) {
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	if (rc != SQLITE_ROW) {
		r = cat_dberr(cat, vm, "get relationship");
		goto out;
	}
	if ((r = rel_from_row(st, out)) != 0)
		goto out;
	cat_release(st);
	r = rel_load_disks(cat, out);
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

/* Check what cat_rel_put would store: names in the safe set, strings
 * ending inside their fields. */
static int
rel_check(const struct cat_rel *rel)
{
	if (!fits(rel->vm, sizeof(rel->vm)) || util_name_valid(rel->vm) != 0)
		return RD_ERR_NAME;
	if ((rel->role != CAT_ROLE_PRIMARY && rel->role != CAT_ROLE_REPLICA) ||
	    !fits(rel->peer, sizeof(rel->peer)) ||
	    !fits(rel->storage, sizeof(rel->storage)) ||
	    !fits(rel->peer_name, sizeof(rel->peer_name)) ||
	    !fits(rel->fenced, sizeof(rel->fenced)) ||
	    rel->ndisks > CAT_MAX_DISKS)
		return RD_ERR_INVALID;
	for (int i = 0; i < rel->ndisks; i++) {
		const char *name = rel->disks[i].name;

		if (!fits(name, sizeof(rel->disks[i].name)) ||
		    util_disk_name_valid(name) != 0)
			return RD_ERR_NAME;
		for (int j = 0; j < i; j++)
			if (strcmp(rel->disks[j].name, name) == 0)
				return RD_ERR_INVALID;
	}
	return 0;
}

int
cat_rel_put(struct catalog *cat, const struct cat_rel *rel)
{
	return cat_rel_put_trim(cat, rel, UINT64_MAX);
}

/* cat_rel_put_trim's statements, in the caller's transaction. */
static int
rel_put_tx(struct catalog *cat, const struct cat_rel *rel, uint64_t keep_upto)
{
	sqlite3_stmt *st;
	int r;

	if (keep_upto != UINT64_MAX) {
		st = cat->st[ST_POINT_DROP_AFTER];
		if (bind_text(st, 1, rel->vm) != SQLITE_OK ||
		    bind_u64(st, 2, keep_upto) != SQLITE_OK) {
			r = cat_dberr(cat, rel->vm, "drop points");
			cat_release(st);
			goto out;
		}
		if ((r = cat_run(cat, ST_POINT_DROP_AFTER, rel->vm,
		    "drop points")) != 0 || (r = def_sweep(cat, rel->vm)) != 0)
			goto out;
	}
	st = cat->st[ST_REL_PUT];
	if (bind_text(st, 1, rel->vm) != SQLITE_OK ||
	    sqlite3_bind_int(st, 2, (int)rel->role) != SQLITE_OK ||
	    bind_u64(st, 3, rel->generation) != SQLITE_OK ||
	    bind_text(st, 4, rel->peer) != SQLITE_OK ||
	    bind_text(st, 5, rel->storage) != SQLITE_OK ||
	    bind_u64(st, 6, rel->block_size) != SQLITE_OK ||
	    bind_u64(st, 7, rel->last_cycle) != SQLITE_OK ||
	    bind_u64(st, 8, rel->last_point) != SQLITE_OK ||
	    sqlite3_bind_int64(st, 9, rel->last_point_created_ms) !=
	    SQLITE_OK ||
	    bind_u64(st, 10, rel->interval_ms) != SQLITE_OK ||
	    bind_text(st, 11, rel->peer_name) != SQLITE_OK ||
	    bind_text(st, 12, rel->fenced) != SQLITE_OK ||
	    sqlite3_bind_int(st, 13, rel->resync ? 1 : 0) != SQLITE_OK ||
	    bind_u64(st, 14, rel->at_point) != SQLITE_OK ||
	    bind_u64(st, 15, rel->step_to) != SQLITE_OK ||
	    sqlite3_bind_int(st, 16, rel->reassigned ? 1 : 0) != SQLITE_OK) {
		r = cat_dberr(cat, rel->vm, "put relationship");
		cat_release(st);
		goto out;
	}
	if ((r = cat_run(cat, ST_REL_PUT, rel->vm, "put relationship")) != 0)
		goto out;
	st = cat->st[ST_RDISK_CLEAR];
	if (bind_text(st, 1, rel->vm) != SQLITE_OK) {
		r = cat_dberr(cat, rel->vm, "clear disks");
		cat_release(st);
		goto out;
	}
	if ((r = cat_run(cat, ST_RDISK_CLEAR, rel->vm, "clear disks")) != 0)
		goto out;
	st = cat->st[ST_RDISK_ADD];
	for (int i = 0; i < rel->ndisks; i++) {
		if (bind_text(st, 1, rel->vm) != SQLITE_OK ||
		    sqlite3_bind_int(st, 2, i) != SQLITE_OK ||
		    bind_text(st, 3, rel->disks[i].name) != SQLITE_OK ||
		    bind_u64(st, 4, rel->disks[i].size) != SQLITE_OK) {
			r = cat_dberr(cat, rel->vm, "add disk");
			cat_release(st);
			goto out;
		}
		if ((r = cat_run(cat, ST_RDISK_ADD, rel->vm, "add disk")) != 0)
			goto out;
	}
	r = 0;
out:
	return r;
}

int
cat_rel_put_trim(struct catalog *cat, const struct cat_rel *rel,
    uint64_t keep_upto)
{
	int r;

	if ((r = rel_check(rel)) != 0)
		return r;
	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 1)) == 0)
		r = rel_put_tx(cat, rel, keep_upto);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_rel_put_lazy(struct catalog *cat, const struct cat_rel *rel)
{
	int r;

	if ((r = rel_check(rel)) != 0)
		return r;
	pthread_mutex_lock(&cat->lock);
	if ((r = cat_exec(cat, "PRAGMA synchronous = NORMAL")) == 0) {
		if ((r = cat_begin(cat, 1)) == 0)
			r = rel_put_tx(cat, rel, UINT64_MAX);
		r = cat_end(cat, r);
		/* Every other transaction stays durable at its COMMIT. */
		if (cat_exec(cat, "PRAGMA synchronous = FULL") != 0)
			fatalx("catalog: %s: cannot restore synchronous = FULL",
			    cat->path);
	}
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_rel_list(struct catalog *cat, struct cat_rel **out, size_t *n)
{
	sqlite3_stmt *st = cat->st[ST_REL_LIST];
	struct cat_rel *rels = NULL;
	size_t nrels = 0, cap = 0;
	int rc, r;

	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (nrels == cap) {
			cap = cap == 0 ? 8 : cap * 2;
			rels = xreallocarray(rels, cap, sizeof(*rels));
		}
		if ((r = rel_from_row(st, &rels[nrels])) != 0 ||
		    (r = rel_load_disks(cat, &rels[nrels])) != 0)
			goto out;
		nrels++;
	}
	if (rc != SQLITE_DONE) {
		r = cat_dberr(cat, NULL, "list relationships");
		goto out;
	}
	*out = rels;
	*n = nrels;
	rels = NULL;
	r = 0;
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	free(rels);
	return r;
}

static int
point_from_row(const char *vm, sqlite3_stmt *st, struct cat_point *p)
{
	int64_t kind;

	memset(p, 0, sizeof(*p));
	if (col_u64(st, 0, &p->id) != 0)
		return cat_corrupt(vm, "points", "id");
	if (col_u64(st, 1, &p->cycle) != 0)
		return cat_corrupt(vm, "points", "cycle");
	if (col_i64(st, 2, &p->created_ms) != 0)
		return cat_corrupt(vm, "points", "created_ms");
	if (col_i64(st, 3, &kind) != 0 ||
	    (kind != CAT_KIND_CRASH && kind != CAT_KIND_APP))
		return cat_corrupt(vm, "points", "kind");
	p->kind = (enum cat_kind)kind;
	if (col_u64(st, 4, &p->bytes) != 0)
		return cat_corrupt(vm, "points", "bytes");
	if (col_u64(st, 5, &p->undo_bytes) != 0)
		return cat_corrupt(vm, "points", "undo_bytes");
	if (col_u64(st, 6, &p->generation) != 0)
		return cat_corrupt(vm, "points", "generation");
	int64_t seg;
	if (col_i64(st, 7, &seg) != 0 || seg < 0 || seg > UINT32_MAX)
		return cat_corrupt(vm, "points", "seg");
	p->seg = (uint32_t)seg;
	if (col_def_id(st, 8, p->definition) != 0)
		return cat_corrupt(vm, "points", "definition");
	return 0;
}

static int
point_load_disks(struct catalog *cat, const char *vm, struct cat_point *p)
{
	sqlite3_stmt *st = cat->st[ST_PDISK_LIST];
	int64_t idx;
	int rc, r;

	p->ndisks = 0;
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, p->id) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "list point disks");
		goto out;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (p->ndisks == CAT_MAX_DISKS || col_i64(st, 0, &idx) != 0 ||
		    idx != p->ndisks) {
			r = cat_corrupt(vm, "point_disks", "idx");
			goto out;
		}
		if (col_u64(st, 1, &p->sizes[p->ndisks]) != 0) {
			r = cat_corrupt(vm, "point_disks", "size");
			goto out;
		}
		p->ndisks++;
	}
	if (rc != SQLITE_DONE) {
		r = cat_dberr(cat, vm, "list point disks");
		goto out;
	}
	r = 0;
out:
	cat_release(st);
	return r;
}

/*
 * The definition a new point of vm carries, into p->definition: def
 * (stored unless a point has it already), or the newest point's.  In
 * the caller's transaction, before the point is added.
 */
static int
point_def_tx(struct catalog *cat, const char *vm, struct cat_point *p,
    const char *def, size_t def_len)
{
	sqlite3_stmt *st;
	int rc, r = 0;

	p->definition[0] = '\0';
	if (def == NULL) {
		st = cat->st[ST_DEF_NEWEST];
		if (bind_text(st, 1, vm) != SQLITE_OK)
			r = cat_dberr(cat, vm, "newest definition");
		else if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			if (col_def_id(st, 0, p->definition) != 0)
				r = cat_corrupt(vm, "points", "definition");
		} else if (rc != SQLITE_DONE)
			r = cat_dberr(cat, vm, "newest definition");
		cat_release(st);
		return r;
	}
	def_id(def, def_len, p->definition);
	st = cat->st[ST_DEF_ADD];
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_text(st, 2, p->definition) != SQLITE_OK ||
	    sqlite3_bind_text(st, 3, def, (int)def_len, SQLITE_TRANSIENT) !=
	    SQLITE_OK) {
		cat_release(st);
		return cat_dberr(cat, vm, "add definition");
	}
	return cat_run(cat, ST_DEF_ADD, vm, "add definition");
}

/* cat_point_commit's statements, in the caller's transaction; *idp
 * receives the point's id. */
static int
point_add_tx(struct catalog *cat, const char *vm, struct cat_point *p,
    const char *def, size_t def_len, uint64_t *idp)
{
	sqlite3_stmt *st;
	uint64_t last_point, max_id = 0, id = 0;
	int rc, r = 0;

	/* The next id: above every point there is and above the newest the
	 * relationship ever recorded, so a dropped newest point's id is not
	 * given out again. */
	st = cat->st[ST_REL_POINT_IDS];
	if (bind_text(st, 1, vm) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "commit point");
		cat_release(st);
		goto out;
	}
	if ((rc = sqlite3_step(st)) == SQLITE_DONE)
		r = RD_ERR_NOT_FOUND;
	else if (rc != SQLITE_ROW)
		r = cat_dberr(cat, vm, "commit point");
	else if (col_u64(st, 0, &last_point) != 0)
		r = cat_corrupt(vm, "relationships", "last_point");
	else if (sqlite3_column_type(st, 1) != SQLITE_NULL &&
	    col_u64(st, 1, &max_id) != 0)
		r = cat_corrupt(vm, "points", "id");
	cat_release(st);
	if (r != 0)
		goto out;
	id = (last_point > max_id ? last_point : max_id) + 1;
	if (id == 0) {
		log_warnx("catalog: %s: point ids exhausted", vm);
		r = RD_ERR_RANGE;
		goto out;
	}

	st = cat->st[ST_POINT_CYCLE_USED];
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, p->cycle) != SQLITE_OK)
		r = cat_dberr(cat, vm, "commit point");
	else if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		r = RD_ERR_EXISTS;
	else if (rc != SQLITE_DONE)
		r = cat_dberr(cat, vm, "commit point");
	cat_release(st);
	if (r != 0 || (r = point_def_tx(cat, vm, p, def, def_len)) != 0)
		goto out;

	st = cat->st[ST_POINT_ADD];
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, id) != SQLITE_OK ||
	    bind_u64(st, 3, p->cycle) != SQLITE_OK ||
	    sqlite3_bind_int64(st, 4, p->created_ms) != SQLITE_OK ||
	    sqlite3_bind_int(st, 5, (int)p->kind) != SQLITE_OK ||
	    bind_u64(st, 6, p->bytes) != SQLITE_OK ||
	    bind_u64(st, 7, p->undo_bytes) != SQLITE_OK ||
	    bind_u64(st, 8, p->generation) != SQLITE_OK ||
	    sqlite3_bind_int64(st, 9, (int64_t)p->seg) != SQLITE_OK ||
	    bind_text(st, 10, p->definition[0] ? p->definition : NULL) !=
	    SQLITE_OK) {
		r = cat_dberr(cat, vm, "add point");
		cat_release(st);
		goto out;
	}
	if ((r = cat_run(cat, ST_POINT_ADD, vm, "add point")) != 0)
		goto out;

	for (int i = 0; i < p->ndisks; i++) {
		st = cat->st[ST_PDISK_ADD];
		if (bind_text(st, 1, vm) != SQLITE_OK ||
		    bind_u64(st, 2, id) != SQLITE_OK ||
		    sqlite3_bind_int(st, 3, i) != SQLITE_OK ||
		    bind_u64(st, 4, p->sizes[i]) != SQLITE_OK) {
			r = cat_dberr(cat, vm, "add point disk");
			cat_release(st);
			goto out;
		}
		if ((r = cat_run(cat, ST_PDISK_ADD, vm, "add point disk")) != 0)
			goto out;
		/* Only disks the relationship has; no row, no change. */
		st = cat->st[ST_RDISK_SET_SIZE];
		if (bind_text(st, 1, vm) != SQLITE_OK ||
		    sqlite3_bind_int(st, 2, i) != SQLITE_OK ||
		    bind_u64(st, 3, p->sizes[i]) != SQLITE_OK) {
			r = cat_dberr(cat, vm, "set disk size");
			cat_release(st);
			goto out;
		}
		if ((r = cat_run(cat, ST_RDISK_SET_SIZE, vm,
		    "set disk size")) != 0)
			goto out;
	}

	st = cat->st[ST_REL_SET_POINT];
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, p->cycle) != SQLITE_OK ||
	    bind_u64(st, 3, id) != SQLITE_OK ||
	    sqlite3_bind_int64(st, 4, p->created_ms) != SQLITE_OK ||
	    bind_u64(st, 5, p->generation) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "update relationship");
		cat_release(st);
		goto out;
	}
	if ((r = cat_run(cat, ST_REL_SET_POINT, vm,
	    "update relationship")) != 0)
		goto out;
	*idp = id;
	r = 0;
out:
	return r;
}

/* What a new point may carry: a text SQLite keeps whole. */
static int
def_check(const char *def, size_t def_len)
{
	if (def != NULL && (def_len == 0 || def_len > CAT_MAX_DEFINITION ||
	    memchr(def, '\0', def_len) != NULL))
		return RD_ERR_INVALID;
	return 0;
}

int
cat_point_commit(struct catalog *cat, const char *vm, struct cat_point *p,
    const char *def, size_t def_len)
{
	uint64_t id = 0;
	int r;

	if (p->ndisks > CAT_MAX_DISKS ||
	    (p->kind != CAT_KIND_CRASH && p->kind != CAT_KIND_APP) ||
	    def_check(def, def_len) != 0)
		return RD_ERR_INVALID;
	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 1)) == 0)
		r = point_add_tx(cat, vm, p, def, def_len, &id);
	r = cat_end(cat, r);
	if (r == 0)
		p->id = id;
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_point_commit_new(struct catalog *cat, const struct cat_rel *rel,
    struct cat_point *p, const char *def, size_t def_len)
{
	uint64_t id = 0;
	int r;

	if (p->ndisks > CAT_MAX_DISKS ||
	    (p->kind != CAT_KIND_CRASH && p->kind != CAT_KIND_APP) ||
	    def_check(def, def_len) != 0)
		return RD_ERR_INVALID;
	if ((r = rel_check(rel)) != 0)
		return r;
	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 1)) == 0 &&
	    (r = rel_put_tx(cat, rel, UINT64_MAX)) == 0)
		r = point_add_tx(cat, rel->vm, p, def, def_len, &id);
	r = cat_end(cat, r);
	if (r == 0)
		p->id = id;
	pthread_mutex_unlock(&cat->lock);
	return r;
}

/* One point by id (ST_POINT_GET) or by cycle (ST_POINT_BY_CYCLE). */
static int
point_get_by(struct catalog *cat, enum cat_stmt which, const char *vm,
    uint64_t key, struct cat_point *out)
{
	sqlite3_stmt *st = cat->st[which];
	int rc, r;

	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, key) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "get point");
		goto out;
	}
	if ((rc = sqlite3_step(st)) == SQLITE_DONE) {
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	if (rc != SQLITE_ROW) {
		r = cat_dberr(cat, vm, "get point");
		goto out;
	}
	if ((r = point_from_row(vm, st, out)) != 0)
		goto out;
	cat_release(st);
	r = point_load_disks(cat, vm, out);
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_point_get(struct catalog *cat, const char *vm, uint64_t id,
    struct cat_point *out)
{
	return point_get_by(cat, ST_POINT_GET, vm, id, out);
}

int
cat_point_by_cycle(struct catalog *cat, const char *vm, uint64_t cycle,
    struct cat_point *out)
{
	return point_get_by(cat, ST_POINT_BY_CYCLE, vm, cycle, out);
}

int
cat_point_list(struct catalog *cat, const char *vm, struct cat_point **out,
    size_t *n)
{
	sqlite3_stmt *st = cat->st[ST_POINT_LIST];
	struct cat_point *points = NULL;
	size_t npoints = 0, cap = 0;
	int rc, r;

	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	if (bind_text(st, 1, vm) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "list points");
		goto out;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (npoints == cap) {
			cap = cap == 0 ? 16 : cap * 2;
			points = xreallocarray(points, cap, sizeof(*points));
		}
		if ((r = point_from_row(vm, st, &points[npoints])) != 0 ||
		    (r = point_load_disks(cat, vm, &points[npoints])) != 0)
			goto out;
		npoints++;
	}
	if (rc != SQLITE_DONE) {
		r = cat_dberr(cat, vm, "list points");
		goto out;
	}
	*out = points;
	*n = npoints;
	points = NULL;
	r = 0;
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	free(points);
	return r;
}

int
cat_point_definition(struct catalog *cat, const char *vm, uint64_t id,
    char **xml)
{
	sqlite3_stmt *st = cat->st[ST_DEF_GET];
	char def[CAT_DEF_ID_LEN + 1], check[CAT_DEF_ID_LEN + 1];
	const unsigned char *text;
	int rc, n, r;

	*xml = NULL;
	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, id) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "get definition");
		goto out;
	}
	if ((rc = sqlite3_step(st)) == SQLITE_DONE) {
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	if (rc != SQLITE_ROW) {
		r = cat_dberr(cat, vm, "get definition");
		goto out;
	}
	if (col_def_id(st, 0, def) != 0) {
		r = cat_corrupt(vm, "points", "definition");
		goto out;
	}
	if (def[0] == '\0') {
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	/* The text must be the one its id names, whole. */
	if (sqlite3_column_type(st, 1) != SQLITE_TEXT ||
	    (text = sqlite3_column_text(st, 1)) == NULL ||
	    (n = sqlite3_column_bytes(st, 1)) <= 0 ||
	    (size_t)n > CAT_MAX_DEFINITION ||
	    memchr(text, '\0', (size_t)n) != NULL ||
	    (def_id((const char *)text, (size_t)n, check),
	    strcmp(check, def) != 0)) {
		r = cat_corrupt(vm, "definitions", "xml");
		goto out;
	}
	*xml = xmalloc((size_t)n + 1);
	memcpy(*xml, text, (size_t)n);
	(*xml)[n] = '\0';
	r = 0;
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_event_add(struct catalog *cat, const char *vm, const char *level,
    const char *message)
{
	sqlite3_stmt *st = cat->st[ST_EVENT_ADD];
	int r;

	if (level == NULL || message == NULL ||
	    (strcmp(level, "info") != 0 && strcmp(level, "warning") != 0 &&
	    strcmp(level, "error") != 0))
		return RD_ERR_INVALID;
	pthread_mutex_lock(&cat->lock);
	if (bind_u64(st, 1, util_now_ms()) != SQLITE_OK ||
	    bind_text(st, 2, vm) != SQLITE_OK ||
	    bind_text(st, 3, level) != SQLITE_OK ||
	    bind_text(st, 4, message) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "add event");
		cat_release(st);
		goto out;
	}
	r = cat_run(cat, ST_EVENT_ADD, vm, "add event");
out:
	pthread_mutex_unlock(&cat->lock);
	return r;
}

/* Point id's segment version and size, inside a transaction. */
static int
set_seg(struct catalog *cat, const char *vm, uint64_t id, uint32_t seg,
    uint64_t undo_bytes)
{
	sqlite3_stmt *st = cat->st[ST_POINT_SET_SEG];
	int r;

	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, id) != SQLITE_OK ||
	    sqlite3_bind_int64(st, 3, (int64_t)seg) != SQLITE_OK ||
	    bind_u64(st, 4, undo_bytes) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "set segment");
		cat_release(st);
		return r;
	}
	if ((r = cat_run(cat, ST_POINT_SET_SEG, vm, "set segment")) != 0)
		return r;
	return sqlite3_changes(cat->db) == 1 ? 0 : RD_ERR_NOT_FOUND;
}

int
cat_point_set_seg(struct catalog *cat, const char *vm, uint64_t id,
    uint32_t seg, uint64_t undo_bytes)
{
	int r;

	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 1)) == 0)
		r = set_seg(cat, vm, id, seg, undo_bytes);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_point_drop(struct catalog *cat, const char *vm, uint64_t id,
    uint64_t next, uint32_t next_seg, uint64_t next_undo_bytes)
{
	sqlite3_stmt *st;
	int r;

	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 1)) != 0)
		goto out;
	st = cat->st[ST_POINT_DROP];
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_u64(st, 2, id) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "drop point");
		cat_release(st);
		goto out;
	}
	if ((r = cat_run(cat, ST_POINT_DROP, vm, "drop point")) != 0)
		goto out;
	if (sqlite3_changes(cat->db) != 1) {
		r = RD_ERR_NOT_FOUND;
		goto out;
	}
	if ((r = def_sweep(cat, vm)) != 0)
		goto out;
	if (next != 0 && (r = set_seg(cat, vm, next, next_seg,
	    next_undo_bytes)) != 0)
		goto out;
	r = 0;
out:
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

const char *
cat_file(const struct catalog *cat)
{
	return cat->path;
}

int
cat_definition_known(struct catalog *cat, const char *vm, const char *def,
    size_t def_len, int *known)
{
	sqlite3_stmt *st = cat->st[ST_DEF_KNOWN];
	char id[CAT_DEF_ID_LEN + 1];
	int rc, r;

	*known = 0;
	if (def_len == 0 || def_len > CAT_MAX_DEFINITION)
		return RD_ERR_INVALID;
	def_id(def, def_len, id);
	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	if (bind_text(st, 1, vm) != SQLITE_OK ||
	    bind_text(st, 2, id) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "look up a definition");
		goto out;
	}
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		*known = 1;
	else if (rc != SQLITE_DONE)
		r = cat_dberr(cat, vm, "look up a definition");
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_free_bytes(struct catalog *cat, uint64_t *bytes)
{
	sqlite3_stmt *st = cat->st[ST_FREE_BYTES];
	int r;

	*bytes = 0;
	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	if (sqlite3_step(st) != SQLITE_ROW)
		r = cat_dberr(cat, NULL, "free pages");
	else if (col_u64(st, 0, bytes) != 0)
		r = RD_ERR_CORRUPT;
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}

int
cat_point_stats(struct catalog *cat, const char *vm, uint64_t *count,
    uint64_t *undo_bytes)
{
	sqlite3_stmt *st = cat->st[ST_POINT_STATS];
	int rc, r;

	pthread_mutex_lock(&cat->lock);
	if ((r = cat_begin(cat, 0)) != 0)
		goto out;
	if (bind_text(st, 1, vm) != SQLITE_OK) {
		r = cat_dberr(cat, vm, "point stats");
		goto out;
	}
	if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
		r = cat_dberr(cat, vm, "point stats");
		goto out;
	}
	if (col_u64(st, 0, count) != 0 || col_u64(st, 1, undo_bytes) != 0)
		r = cat_corrupt(vm, "points", "undo_bytes");
out:
	cat_release(st);
	r = cat_end(cat, r);
	pthread_mutex_unlock(&cat->lock);
	return r;
}
