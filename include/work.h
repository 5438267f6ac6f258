/*
 * work.h — a small pool of worker threads for the disk and CPU heavy
 * stages (hashing, compression, staging, apply), so that the event loop
 * thread never blocks on them.
 *
 * work_submit() queues fn(arg) for a worker; when it returns, done(arg)
 * runs in the event loop thread.  Jobs of one owner must not overlap:
 * each owner (a VM, a session) keeps at most one job in flight and touches
 * what the job uses only from done().
 */
#ifndef REPLICAD_WORK_H
#define REPLICAD_WORK_H

struct event_base;

typedef void (*work_fn)(void *arg);

void	work_init(struct event_base *base, int nthreads);
void	work_submit(work_fn fn, work_fn done, void *arg);
/* Jobs queued or running. */
int	work_pending(void);
/* Finish the queued jobs, run their done() callbacks, stop the threads. */
void	work_fini(void);

#endif
