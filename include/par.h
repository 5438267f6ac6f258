/*
 * par.h — helper threads for one job's data-parallel work.
 *
 * A job that reads and hashes a whole disk (the scan tracker, an initial
 * sync) spends its time in the kernel's copy from the page cache and in
 * XXH3, one core's worth, while the host's other cores wait.  par_run()
 * splits such work into parts that the calling thread and the helpers
 * take one at a time: the caller never waits for a helper busy elsewhere
 * (it takes the parts left itself), so any number of jobs may call it at
 * once and a host with one core (no helper) runs the parts in order.
 */
#ifndef REPLICAD_PAR_H
#define REPLICAD_PAR_H

#include <stddef.h>

typedef void (*par_fn)(void *arg, size_t part);

/* Start nhelpers threads (at most PAR_MAX_HELPERS; 0: none).  Once, at
 * the daemon's start; without it par_run() runs every part itself. */
#define PAR_MAX_HELPERS	7
void	par_init(int nhelpers);
/* Helpers for this host: one fewer than its online cores, at most
 * PAR_MAX_HELPERS. */
int	par_helpers_for_host(void);
/* fn(arg, i) for every i in [0, nparts), on the caller and any idle
 * helper; returns once all have returned.  Parts must not depend on one
 * another. */
void	par_run(par_fn fn, void *arg, size_t nparts);
/* Stop the helpers (they finish the part they run). */
void	par_fini(void);

#endif
