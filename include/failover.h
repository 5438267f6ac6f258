/*
 * failover.h — role changes of a VM relationship (SPEC "Roles,
 * generations and failover"; DESIGN sections 3 (F1) and 7).
 *
 * Every change is recorded in the catalog first and raises the
 * generation by one; a host refuses cycles from a lower generation.
 *
 *   unplanned   on the replica: rewind to a point (store_rewind), become
 *               primary at generation + 1 with no replica yet; another
 *               point may be chosen until --commit (or reverse)
 *   planned     on the primary: on_demote, a final cycle, PROMOTE; the
 *               replica becomes primary at generation + 1 and replicates
 *               back to this host, which receives into its own disks; no
 *               resynchronisation
 *   reverse     on the new primary: replicate to the old one, which takes
 *               the higher generation as its cue to become the replica;
 *               the first cycle is a resync (librsync)
 *
 * All calls run in the loop thread; done(arg, rc, message) is called
 * there once, with rc 0 or a negative rd_err and a one-line message for
 * the operator either way.
 */
#ifndef REPLICAD_FAILOVER_H
#define REPLICAD_FAILOVER_H

#include <stdint.h>

#include "catalog.h"
#include "config.h"
#include "wire.h"

struct daemon;
struct rvm;

typedef void (*failover_done_fn)(void *arg, int rc, const char *message);

/* At start-up, after replica_init(): the VMs that are primary here by a
 * failover (no [vm] section) or whose failover is not committed. */
void	failover_init(struct daemon *d);

/* After the [vm] primaries exist: a planned failover cut off by a crash
 * is settled by the next cycle. */
void	failover_resume(struct daemon *d);

/* replctl failover VM [--point ID] (point 0: the newest). */
void	failover_unplanned(struct daemon *d, const char *vm, uint64_t point,
	    failover_done_fn done, void *arg);
/* replctl failover VM --commit */
void	failover_commit(struct daemon *d, const char *vm, failover_done_fn done,
	    void *arg);
/* replctl failover VM --planned */
void	failover_planned(struct daemon *d, const char *vm,
	    failover_done_fn done, void *arg);
/* replctl reverse VM --to HOST:PORT [--name NAME]; with a waiter, done
 * comes once the first cycle (a resync) ended. */
void	failover_reverse(struct daemon *d, const char *vm, const char *to,
	    const char *name, int wait, failover_done_fn done, void *arg);

/* Replica side of a planned failover (PROMOTE in a session). */
void	failover_promote_planned(struct daemon *d, struct rvm *vm,
	    const char *identity, const struct wire_promote *m,
	    failover_done_fn done, void *arg);
/* A HELLO from a higher generation reached a primary: become its
 * replica (acc is the [accept] entry that admits the sender). */
void	failover_demote(struct daemon *d, const struct wire_hello *h,
	    const char *identity, const struct cfg_accept *acc,
	    failover_done_fn done, void *arg);

/* A role change of vm is under way (control refuses store jobs). */
int	failover_busy(const char *vm);

/* The [vm] of a VM that is primary here by a failover and has no [vm]
 * section: its disks are STORAGE/VM/DISK, its replica rel->peer. */
struct cfg_vm *failover_cfg(const struct config *cfg,
	    const struct cat_rel *rel);

#endif
