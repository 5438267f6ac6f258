/*
 * fault.h — crash and hold points for the system tests.
 *
 * If the environment variable REPLICAD_FAULT names a point (e.g.
 * "replica-after-undo"), the process kills itself with SIGKILL when it
 * reaches that point, exactly as a power cut or kill -9 would, so the
 * tests can check recovery from every step of a cycle.  REPLICAD_FAULT
 * unset (always, in production) costs one getenv() per process.
 */
#ifndef REPLICAD_FAULT_H
#define REPLICAD_FAULT_H

void	fault_point(const char *name);

/*
 * A hold point: if REPLICAD_FAULT names it, the calling thread waits
 * there until the file REPLICAD_FAULT_RELEASE names exists (a slow disk,
 * a long apply, on the test's cue).  Same cost as fault_point() unset.
 */
void	fault_hold(const char *name);

#endif
