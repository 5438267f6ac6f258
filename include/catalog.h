/*
 * catalog.h — the SQLite catalog: relationships, disks, recovery points
 * and the VM definitions they carry, events.  One file, STATE_DIR/catalog.db, in WAL mode with
 * synchronous=FULL; a schema version (PRAGMA user_version) with
 * migrations applied at open.  Every statement is prepared with bound
 * parameters.
 *
 * A struct catalog may be used from several threads: each call takes the
 * catalog's mutex for its whole transaction.  Functions return 0 or a
 * negative rd_err (RD_ERR_NOT_FOUND when a row is missing, RD_ERR_DB on
 * an SQLite error, which is logged).
 */
#ifndef REPLICAD_CATALOG_H
#define REPLICAD_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define CAT_SCHEMA_VERSION	5
#define CAT_SEG_NONE		UINT32_MAX	/* no undo segment */
#define CAT_MAX_DISKS		64
#define CAT_DEF_ID_LEN		64		/* hex SHA-256 of a definition */
#define CAT_DEF_SHORT		12		/* what replctl shows of it */
#define CAT_MAX_DEFINITION	(1u << 20)	/* longest definition text */

enum cat_role {
	CAT_ROLE_PRIMARY = 0,
	CAT_ROLE_REPLICA = 1,
};

enum cat_kind {
	CAT_KIND_CRASH = 0,
	CAT_KIND_APP = 1,
};

struct cat_disk {
	char		name[NAME_MAX_LEN + 1];
	uint64_t	size;
};

/* One VM relationship as this host sees it. */
struct cat_rel {
	char		vm[NAME_MAX_LEN + 1];
	enum cat_role	role;
	uint64_t	generation;	/* >= 1 */
	char		peer[HOST_MAX_LEN + 8];	/* primary role: replica
					   HOST:PORT; replica role: the
					   primary's identity */
	char		storage[4096];	/* replica role: STORAGE directory
					   (the VM's files are STORAGE/VM/) */
	uint32_t	block_size;
	uint64_t	last_cycle;	/* newest cycle applied / acknowledged */
	uint64_t	last_point;	/* newest point id, 0 if none */
	int64_t		last_point_created_ms; /* its cut time, 0 if none */
	uint64_t	interval_ms;	/* the primary's interval, as last told */
	uint16_t	ndisks;
	struct cat_disk	disks[CAT_MAX_DISKS]; /* sizes at the newest point */
	char		peer_name[HOST_MAX_LEN + 1]; /* primary role: the
					   identity the replica's certificate
					   must show; "" = the host of peer */
	char		fenced[256];	/* primary role: why the replica
					   refused this host as a stale
					   primary; "" if it did not */
	int		resync;		/* primary role: the next cycle
					   compares whole disks (librsync) */
	uint64_t	at_point;	/* after an uncommitted unplanned
					   failover: the point the images hold
					   (0: committed, images at last_point) */
	uint64_t	step_to;	/* a rewind step under way to this
					   point (0: none); see store.c */
	int		reassigned;	/* replica role: reassigned to peer
					   (replctl reassign), which takes the
					   generation at its next WELCOME;
					   cleared by its first point */
};

/* One recovery point (replica role). */
struct cat_point {
	uint64_t	id;		/* per VM, increasing from 1 */
	uint64_t	cycle;
	int64_t		created_ms;	/* primary's clock, Unix ms UTC */
	enum cat_kind	kind;
	uint64_t	bytes;		/* raw bytes the cycle changed */
	uint64_t	undo_bytes;	/* size of its undo segment */
	uint64_t	generation;
	uint32_t	seg;		/* version of its undo segment file */
	uint16_t	ndisks;
	uint64_t	sizes[CAT_MAX_DISKS]; /* each disk's size at the point */
	char		definition[CAT_DEF_ID_LEN + 1]; /* the id of the VM's
					   definition at the point (libvirt
					   domain XML): hex SHA-256 of its
					   text; "" if none */
};

struct catalog;

/* Open (creating if needed) and migrate path; the caller owns *out. */
int	cat_open(const char *path, struct catalog **out);
void	cat_close(struct catalog *cat);
/* The database file's path (the file system its growth takes room on). */
const char *cat_file(const struct catalog *cat);

int	cat_rel_get(struct catalog *cat, const char *vm, struct cat_rel *out);
/* Insert or replace the relationship and its disk list. */
int	cat_rel_put(struct catalog *cat, const struct cat_rel *rel);
/* The same, and in the same transaction drop every point of the VM newer
 * than keep_upto (UINT64_MAX: none). */
int	cat_rel_put_trim(struct catalog *cat, const struct cat_rel *rel,
	    uint64_t keep_upto);
/* cat_rel_put, committed without waiting for the disk (SQLite's
 * synchronous = NORMAL in WAL mode): it survives a crash of the process,
 * but a power loss may undo it, with every such write after the last
 * durable one (any later durable write makes it durable too).  For the
 * primary's count of acknowledged cycles only (primary.c says why). */
int	cat_rel_put_lazy(struct catalog *cat, const struct cat_rel *rel);
/* All relationships, ordered by VM name; *out is the caller's (free()). */
int	cat_rel_list(struct catalog *cat, struct cat_rel **out, size_t *n);

/*
 * Record a new recovery point for vm in one transaction: assigns p->id
 * (previous newest + 1), inserts the point and its disk sizes, and updates
 * the relationship (last_cycle, last_point, last_point_created_ms, disk
 * sizes from p->sizes, its generation raised to p->generation, and
 * reassigned cleared if p->generation is not below it: the new sender's
 * first cycle; a cycle of the old sender finished at start-up is not).
 * The point's definition is def (def_len bytes, no NUL, at most
 * CAT_MAX_DEFINITION), stored once per VM however many points have it;
 * def NULL: the definition of the newest point before it, if any.
 * p->definition receives its id.  RD_ERR_NOT_FOUND if the relationship
 * is missing, RD_ERR_EXISTS if a point for p->cycle exists,
 * RD_ERR_INVALID for a bad point or definition.
 */
int	cat_point_commit(struct catalog *cat, const char *vm,
	    struct cat_point *p, const char *def, size_t def_len);
/* The same for the first point of a relationship not recorded yet: rel
 * and the point in one transaction, so that a relationship exists only
 * with a point. */
int	cat_point_commit_new(struct catalog *cat, const struct cat_rel *rel,
	    struct cat_point *p, const char *def, size_t def_len);
int	cat_point_get(struct catalog *cat, const char *vm, uint64_t id,
	    struct cat_point *out);
/* The point recorded for a cycle; RD_ERR_NOT_FOUND if none. */
int	cat_point_by_cycle(struct catalog *cat, const char *vm,
	    uint64_t cycle, struct cat_point *out);
/* Points of vm, oldest first; *out is the caller's (free()). */
int	cat_point_list(struct catalog *cat, const char *vm,
	    struct cat_point **out, size_t *n);
/*
 * The definition of point id of vm: 0 and its text, NUL-terminated, in
 * *xml (the caller's, free()); RD_ERR_NOT_FOUND if there is no such
 * point or it has no definition.
 */
int	cat_point_definition(struct catalog *cat, const char *vm, uint64_t id,
	    char **xml);
/* The bytes of the database file's free pages, which new rows take
 * before the file grows (dropped points and definitions leave them). */
int	cat_free_bytes(struct catalog *cat, uint64_t *bytes);
/* Whether the catalog holds the definition def (def_len bytes) for vm
 * already (a point carrying it again costs no room): *known 0 or 1. */
int	cat_definition_known(struct catalog *cat, const char *vm,
	    const char *def, size_t def_len, int *known);

/*
 * Drop point id of vm and, in the same transaction, give point next (0:
 * none) its new undo segment version and size (a prune: the segments of
 * the dropped point and of next were merged into next's new one).
 * RD_ERR_NOT_FOUND if either point is missing (nothing changes).  A
 * definition no point has any more goes with it (so too in
 * cat_rel_put_trim).
 */
int	cat_point_drop(struct catalog *cat, const char *vm, uint64_t id,
	    uint64_t next, uint32_t next_seg, uint64_t next_undo_bytes);

/* Give point id of vm a new undo segment version and size (the segment
 * was written again, compacted).  RD_ERR_NOT_FOUND if it is gone. */
int	cat_point_set_seg(struct catalog *cat, const char *vm, uint64_t id,
	    uint32_t seg, uint64_t undo_bytes);

/* How many points vm has and the bytes of their undo segments (one
 * query: cheap enough for the loop thread). */
int	cat_point_stats(struct catalog *cat, const char *vm, uint64_t *count,
	    uint64_t *undo_bytes);

/* Append an event (level "info", "warning", "error") to the event log. */
int	cat_event_add(struct catalog *cat, const char *vm, const char *level,
	    const char *message);

#endif
