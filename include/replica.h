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
};

/* Open the stores of the catalog's replica relationships (finishing or
 * abandoning cycles cut by a crash) and start listening if configured. */
void	replica_init(struct daemon *d);
/* Stop listening and drop every session (shutdown). */
void	replica_stop(struct daemon *d);
void	replica_fini(struct daemon *d);

struct rvm *replica_find(struct daemon *d, const char *vm);
void	rvm_status(struct rvm *vm, struct rvm_status *st);
struct store *rvm_store(struct rvm *vm);

#endif
