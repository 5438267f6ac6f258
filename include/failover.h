/*
 * failover.h — role changes of a VM relationship (SPEC "Roles,
 * generations and failover"; DESIGN sections 3 (F1), 7 and 10).
 *
 * role.h decides; this module carries the decisions out: it records each
 * change in the catalog first (the generation rises by one at each
 * failover), keeps the VM table's view in step, and swaps the VM's role
 * objects (primary.h, replica.h) while it holds the VM (vt_claim).
 *
 *   unplanned   on the replica: rewind to a point (store_rewind), become
 *               primary at generation + 1 with no replica yet; another
 *               point may be chosen until --commit (or reverse)
 *   planned     on the primary: on_demote, a final cycle, PROMOTE; the
 *               replica becomes primary at generation + 1 and replicates
 *               back to this host, which receives into its own files
 *               (receive_into, its disk files, or STORAGE/VM/DISK); no
 *               resynchronisation when they are still the final cycle's
 *   reverse     on the new primary: replicate to the old one, which takes
 *               the higher generation as its cue to become the replica;
 *               the first cycle is a resync (librsync)
 *   reassign    on the replica: another host sends the VM from now on
 *               (the VM moved); generation + 1, which that host takes at
 *               its next WELCOME; the old sender is refused
 *
 * All calls run in the loop thread; done(arg, rc, message) is called
 * there once, with rc 0 or a negative rd_err and a one-line message for
 * the operator either way.
 */
#ifndef REPLICAD_FAILOVER_H
#define REPLICAD_FAILOVER_H

#include <stdint.h>

struct replica_srv;
struct svc;

typedef void (*failover_done_fn)(void *arg, int rc, const char *message);

/*
 * Start-up: every relationship of the catalog and every [vm] section
 * gets its entry in the VM table and the role objects role_startup()
 * names; on_promote hooks that a crash interrupted run, and a planned
 * failover cut off here waits for the next cycle to tell whether it
 * happened.  Registers the role changes sessions ask for with srv.
 */
void	failover_init(struct svc *svc, struct replica_srv *srv);
/*
 * For a reload (reload.c), from the configuration svc->cfg holds now:
 * failover_new_section() starts a [vm] section the VM table does not know
 * (a new relationship; RD_ERR_EXISTS if it knows it);
 * failover_restart_primary() serves e, a primary here whose pvm was
 * closed (e claimed), as start-up would: from its section, from the
 * catalog (primary by failover) or, with neither, with no cycles and a
 * note.  RD_ERR_STATE if e is not a primary here.
 */
struct cfg_vm;
struct vme;
int	failover_new_section(struct svc *svc, const struct cfg_vm *cv);
int	failover_restart_primary(struct svc *svc, struct vme *e);

/* replctl failover VM [--point ID] (point 0: the newest). */
void	failover_unplanned(struct svc *svc, const char *vm, uint64_t point,
	    failover_done_fn done, void *arg);
/* replctl failover VM --commit */
void	failover_commit(struct svc *svc, const char *vm,
	    failover_done_fn done, void *arg);
/* replctl failover VM --planned */
void	failover_planned(struct svc *svc, const char *vm,
	    failover_done_fn done, void *arg);
/* replctl reverse VM --to HOST:PORT [--name NAME]; with a waiter, done
 * comes once the first cycle (a resync) ended. */
void	failover_reverse(struct svc *svc, const char *vm, const char *to,
	    const char *name, int wait, failover_done_fn done, void *arg);
/* replctl reassign VM --host NAME */
void	failover_reassign(struct svc *svc, const char *vm, const char *host,
	    failover_done_fn done, void *arg);

#endif
