/*
 * replica.h — the replica role: the TLS listener, sessions from
 * primaries, and one struct rvm per replicated VM (its store).
 */
#ifndef REPLICAD_REPLICA_H
#define REPLICAD_REPLICA_H

#include <stdint.h>

#include "catalog.h"

struct daemon;
struct rvm;
struct store;

struct rvm_status {
	const char	*name;
	const char	*peer;		/* the primary's identity */
	int		 receiving;	/* a cycle is arriving */
	uint64_t	 generation;
	uint64_t	 last_point;
	int64_t		 last_point_ms;
	uint64_t	 interval_ms;	/* the primary's, as last told */
	const char	*error;		/* last failed cycle, "" if none */
	uint64_t	 received_bytes; /* of the arriving cycle */
	uint64_t	 last_bytes;	/* raw bytes of the last point */
	int		 nospace;	/* last cycle refused: no space */
};

/* Open the stores of the catalog's replica relationships (finishing or
 * abandoning cycles cut by a crash) and start listening if configured. */
void	replica_init(struct daemon *d);
/* Stop listening and drop every session (shutdown). */
void	replica_stop(struct daemon *d);
void	replica_fini(struct daemon *d);

struct rvm *replica_find(struct daemon *d, const char *vm);
/* Open the store of a replica relationship (a demotion, or a promotion
 * not committed yet) and add it; NULL with a message in err. */
struct rvm *replica_add(struct daemon *d, const struct cat_rel *rel,
	    char *err, size_t errsz);
/* Close its store and forget it (no session may use it). */
void	replica_remove(struct daemon *d, struct rvm *vm);
/* Refuse sessions for vm from now on; fn(arg) once none is left. */
void	rvm_when_idle(struct rvm *vm, void (*fn)(void *), void *arg);
void	rvm_block(struct rvm *vm, int blocked);
/* The VM is primary here by an unplanned failover not yet committed:
 * the store stays open for another choice of point or the commit. */
int	rvm_promoted(const struct rvm *vm);
/* Control jobs using the store (a role change waits for none). */
void	rvm_use(struct rvm *vm, int delta);
int	rvm_in_use(const struct rvm *vm);
void	rvm_set_promoted(struct rvm *vm, int promoted);
void	rvm_status(struct rvm *vm, struct rvm_status *st);
struct store *rvm_store(struct rvm *vm);

#endif
