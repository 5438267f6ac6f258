/*
 * replica.h — the replica role: the TLS listener, sessions from
 * primaries, and one struct rvm per VM whose store is open here (attached
 * to the VM's entry in the VM table, vmtab.h).
 *
 * Who may send what is role.h's to say: a HELLO is welcomed only from
 * the identity the relationship belongs to, at its generation.  A HELLO
 * that asks this host to step down (it is the VM's primary) and a PROMOTE
 * are role changes: the session reports them through struct
 * replica_events (failover.c registers them at start-up) and waits.
 */
#ifndef REPLICAD_REPLICA_H
#define REPLICAD_REPLICA_H

#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "config.h"
#include "wire.h"

struct replica_srv;
struct rvm;
struct store;
struct svc;
struct vme;

struct rvm_status {
	const char	*name;
	const char	*peer;		/* the identity it belongs to */
	int		 receiving;	/* a cycle is arriving */
	uint64_t	 generation;
	uint64_t	 last_point;
	int64_t		 last_point_ms;
	uint64_t	 interval_ms;	/* the primary's, as last told */
	const char	*error;		/* last failed cycle, "" if none */
	uint64_t	 received_bytes; /* of the arriving cycle */
	uint64_t	 last_bytes;	/* raw bytes of the last point */
	int		 nospace;	/* last cycle refused: no space */
	uint64_t	 points_total;	/* since the daemon started: */
	uint64_t	 failures_total;	/* cycles refused or failed */
	uint64_t	 received_total;	/* frame bytes received */
};

/* Called once, from the loop: rc 0 (done) or a negative rd_err with a
 * one-line message for the peer. */
typedef void (*replica_done_fn)(void *arg, int rc, const char *message);

struct replica_events {
	/* identity, the replica of e's VM, is its primary now at
	 * h->generation (role_hello said DEMOTE; acc admits identity):
	 * become its replica.  done() once e has its rvm, or why not. */
	void	(*demote)(void *ctx, struct vme *e, const struct wire_hello *h,
		    const char *identity, const struct cfg_accept *acc,
		    replica_done_fn done, void *arg);
	/* PROMOTE from identity, the primary (role_promote said PROMOTE):
	 * become the primary.  done(0) once that is recorded: the session
	 * answers PROMOTED and lets go of the VM. */
	void	(*promote)(void *ctx, struct vme *e, const char *identity,
		    const struct wire_promote *m, replica_done_fn done,
		    void *arg);
};

/* Start listening if [daemon] has listen (fatal if it cannot). */
struct replica_srv *replica_init(struct svc *svc);
void	replica_set_events(struct replica_srv *srv,
	    const struct replica_events *ev, void *ctx);
/* Stop listening and drop every session (shutdown). */
void	replica_stop(struct replica_srv *srv);
void	replica_fini(struct replica_srv *srv);
/* Connections now and dropped before authentication (gate.h). */
struct gate_counters;
void	replica_gate_counters(const struct replica_srv *srv,
	    struct gate_counters *out);

/*
 * Open the store of e's VM, whose relationship is rel, with the images at
 * paths[0 .. rel->ndisks - 1] (NULL: STORAGE/VM/DISK), finishing or
 * abandoning a cycle cut by a crash, and attach it to e; NULL with a
 * message in err.
 */
struct rvm *replica_open(struct svc *svc, struct vme *e,
	    const struct cat_rel *rel, char *const *paths, char *err,
	    size_t errsz);
/* Detach from the entry and close the store (vt_when_idle first: no
 * session may use it). */
void	replica_close(struct rvm *vm);
void	rvm_status(struct rvm *vm, struct rvm_status *st);
struct store *rvm_store(struct rvm *vm);

#endif
