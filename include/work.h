/*
 * work.h — worker threads for the disk and CPU heavy stages, so that the
 * event loop thread never blocks on them.
 *
 * Two pools of different weight, each with its own queue, so that a long
 * job never holds up a short one:
 *
 *   short   what a replication cycle needs at once: hashing, compression,
 *           staging, apply, commits, hooks, role changes (work_submit)
 *   long    work whose length grows with a disk: a resync's comparison
 *           and deltas, verify, test failover copies, forget, prune
 *           (work_submit_long)
 *
 * When fn returns, done(arg) runs in the event loop thread.  Jobs of one
 * owner must not overlap: each owner (a VM, a session) keeps at most one
 * job in flight, in either pool, and touches what the job uses only from
 * done().
 *
 * Long jobs poll work_cancelled() between chunks (at most a MiB read or a
 * delta's slice hashed apart) and stop early once work_cancel() was
 * called, at shutdown; short jobs always run to the end.
 */
#ifndef REPLICAD_WORK_H
#define REPLICAD_WORK_H

struct event_base;

typedef void (*work_fn)(void *arg);

void	work_init(struct event_base *base, int nshort, int nlong);
void	work_submit(work_fn fn, work_fn done, void *arg);
void	work_submit_long(work_fn fn, work_fn done, void *arg);
/* Jobs queued or running, both pools. */
int	work_pending(void);
/* Long jobs queued or running. */
int	work_pending_long(void);
/* From now on work_cancelled() is true (any thread may ask). */
void	work_cancel(void);
int	work_cancelled(void);
/* Finish the queued jobs, run their done() callbacks, stop the threads. */
void	work_fini(void);

#endif
