/*
 * primary.h — the primary role: one struct pvm per VM this host is the
 * primary of (from its [vm] section, or made from the catalog after a
 * failover), attached to the VM's entry in the VM table (vmtab.h).
 *
 * Each VM runs cycles on its interval (or when asked): connect to the
 * replica over TLS, HELLO / WELCOME, then the tracker's changed blocks as
 * DATA frames, produced in batches on the worker pool while the loop
 * sends the previous batch; END; on ACK the tracker commits.  A failed
 * cycle is retried with backoff and its blocks are found again.  No
 * cycle starts while a role change holds the VM (except the handover
 * cycle of a planned failover) or while a failover to this host is not
 * committed.  The replica's answers are judged by role.h.
 */
#ifndef REPLICAD_PRIMARY_H
#define REPLICAD_PRIMARY_H

#include <stdint.h>

#include "catalog.h"
#include "config.h"

struct pvm;
struct svc;
struct vme;

enum pvm_state {
	PVM_IDLE,
	PVM_SYNCING,
	PVM_PAUSED,
	PVM_FENCED,
	PVM_ERROR,
};

struct cycle_stats {
	uint64_t	cycle;
	uint64_t	duration_ms;
	uint64_t	dirty_bytes;
	uint64_t	bytes_read;
	uint64_t	bytes_sent;
};

struct pvm_status {
	const char	*name;
	const char	*replica;	/* NULL: none (promoted, not reversed) */
	enum pvm_state	 state;
	uint64_t	 generation;
	uint64_t	 last_point;	/* 0: none yet */
	int64_t		 last_point_ms;	/* its cut, the primary's clock */
	int64_t		 lag_ms;	/* the age of that cut by the monotonic
					   clock, -1: no point */
	uint64_t	 interval_ms;
	uint64_t	 lag_warn_ms;	/* health thresholds (0: none) */
	uint64_t	 lag_crit_ms;
	const char	*tracker;	/* scan, reflink, qemu */
	unsigned	 failures;	/* consecutive failed cycles */
	int		 nospace;	/* the replica refused: no space */
	const char	*error;		/* last failure, "" if none */
	uint64_t	 progress_bytes; /* read so far by a running cycle */
	uint64_t	 progress_total;
	int		 resyncing;	/* the running cycle is a resync */
	int		 silent;	/* the replica is silent past its
					   keepalive interval */
	char		 note[160];	/* what the cycle waits on, or "" */
	struct cycle_stats last;	/* last successful cycle */
	uint64_t	 cycles_total;	/* since the daemon started: */
	uint64_t	 failures_total;
	uint64_t	 read_total;	/* bytes read from the disks */
	uint64_t	 sent_total;	/* payload bytes sent */
};

/*
 * Called when a requested cycle ends: point > 0 on success, else error
 * holds the reason.
 */
typedef void (*pvm_waiter_fn)(void *arg, uint64_t point, const char *error);

/* Told when a planned failover's handover ends: rc 0 once the replica
 * recorded its promotion; else why not (RD_ERR_STATE: PROMOTE was sent
 * but no answer came, so the outcome is unknown). */
typedef void (*pvm_handover_fn)(void *arg, int rc, const char *error);

/* The primary of e's VM, configured by cfg, in the state rel records
 * (the catalog's relationship); attached to e.  NULL (logged) if its
 * tracker state cannot be opened. */
struct pvm *pvm_new(struct svc *svc, struct vme *e, const struct cfg_vm *cfg,
	    const struct cat_rel *rel);
/* The same for a cfg the VM owns (cfg_vm_free() at pvm_free()): a VM
 * this host became the primary of by a failover.  Without a replica
 * (cfg->replica NULL) it runs no cycle. */
struct pvm *pvm_new_owned(struct svc *svc, struct vme *e, struct cfg_vm *cfg,
	    const struct cat_rel *rel);
/* A reload changed vm's section in keys its tracker and replica do not
 * depend on (reload.c): cfg applies from the next cycle on, at once if
 * none runs.  cfg must outlive vm. */
void	pvm_set_cfg(struct pvm *vm, const struct cfg_vm *cfg);
/* A reload will close vm once idle (reload.c): start no new cycle (a
 * planned failover's handover cycle aside); on 0 carry on. */
void	pvm_hold(struct pvm *vm, int on);
/* A session, a job or a close uses vm (pvm_close() must wait). */
int	pvm_busy(const struct pvm *vm);
int	pvm_paused(const struct pvm *vm);
const struct cfg_vm *pvm_cfg(const struct pvm *vm);
uint64_t pvm_generation(const struct pvm *vm);
int	pvm_has_replica(const struct pvm *vm);
/* After a handover that may or may not have happened: fn(arg, 1) once a
 * replica welcomes this host at its generation (it did not), fn(arg, 0)
 * if the replica fences it (it did), fn(arg, -1) if the VM goes first. */
void	pvm_confirm(struct pvm *vm, void (*fn)(void *, int), void *arg);
int	pvm_confirm_pending(const struct pvm *vm);
/* After vt_when_idle() (a role change): detach vm from its entry, close
 * its tracker in a worker job (it may talk to QEMU), free it, then call
 * fn(arg) from the loop. */
void	pvm_close(struct pvm *vm, void (*fn)(void *), void *arg);
/*
 * Planned failover: run a cycle now (after the running one) and, once
 * the replica acknowledged it, ask the replica to become the primary at
 * the next generation, replicating to listen (HOST:PORT of this host).
 */
int	pvm_handover(struct pvm *vm, const char *listen, pvm_handover_fn fn,
	    void *arg);
/* At shutdown: detach and free at once. */
void	pvm_free(struct pvm *vm);
const char *pvm_name(const struct pvm *vm);
void	pvm_status(const struct pvm *vm, struct pvm_status *st);
const char *pvm_state_name(enum pvm_state s);

/*
 * Start a cycle now (or right after the running one, so that it covers
 * every write made before the request).  fn (may be NULL) is called when
 * that cycle ends.  Returns 0, or with nothing started RD_ERR_FENCED,
 * RD_ERR_BUSY (a role change holds the VM) or RD_ERR_STATE (stopping).
 */
int	pvm_sync(struct pvm *vm, pvm_waiter_fn fn, void *arg);
/* The same, comparing the whole disks with the replica (librsync): only
 * the differences travel.  Remembered across restarts until it is done. */
int	pvm_resync(struct pvm *vm, pvm_waiter_fn fn, void *arg);
/* Forget a waiter whose requester went away. */
void	pvm_cancel_waiter(struct pvm *vm, void *arg);
void	pvm_pause(struct pvm *vm);
/* RD_ERR_BUSY (nothing done) while a role change holds the VM. */
int	pvm_resume(struct pvm *vm);
/* Abandon the running cycle (shutdown); the tracker keeps its state. */
void	pvm_stop(struct pvm *vm);

#endif
