/*
 * primary.h — the primary role: one struct pvm per [vm] section.
 *
 * Each VM runs cycles on its interval (or when asked): connect to the
 * replica over TLS, HELLO / WELCOME, then the tracker's changed blocks as
 * DATA frames, produced in batches on the worker pool while the loop
 * sends the previous batch; END; on ACK the tracker commits.  A failed
 * cycle is retried with backoff and its blocks are found again.
 */
#ifndef REPLICAD_PRIMARY_H
#define REPLICAD_PRIMARY_H

#include <stdint.h>

#include "config.h"

struct daemon;
struct pvm;

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
	const char	*replica;
	enum pvm_state	 state;
	uint64_t	 generation;
	uint64_t	 last_point;	/* 0: none yet */
	int64_t		 last_point_ms;
	uint64_t	 interval_ms;
	unsigned	 failures;	/* consecutive failed cycles */
	const char	*error;		/* last failure, "" if none */
	uint64_t	 progress_bytes; /* read so far by a running cycle */
	uint64_t	 progress_total;
	struct cycle_stats last;	/* last successful cycle */
};

/*
 * Called when a requested cycle ends: point > 0 on success, else error
 * holds the reason.
 */
typedef void (*pvm_waiter_fn)(void *arg, uint64_t point, const char *error);

struct pvm *pvm_new(struct daemon *d, const struct cfg_vm *cfg);
void	pvm_free(struct pvm *vm);
const char *pvm_name(const struct pvm *vm);
void	pvm_status(const struct pvm *vm, struct pvm_status *st);
const char *pvm_state_name(enum pvm_state s);

/*
 * Start a cycle now (or right after the running one, so that it covers
 * every write made before the request).  fn (may be NULL) is called when
 * that cycle ends.  Returns 0, or RD_ERR_FENCED with nothing started.
 */
int	pvm_sync(struct pvm *vm, pvm_waiter_fn fn, void *arg);
/* The same, comparing the whole disks with the replica (librsync): only
 * the differences travel.  Remembered across restarts until it is done. */
int	pvm_resync(struct pvm *vm, pvm_waiter_fn fn, void *arg);
/* Forget a waiter whose requester went away. */
void	pvm_cancel_waiter(struct pvm *vm, void *arg);
void	pvm_pause(struct pvm *vm);
void	pvm_resume(struct pvm *vm);
/* Abandon the running cycle (shutdown); the tracker keeps its state. */
void	pvm_stop(struct pvm *vm);

#endif
