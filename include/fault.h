/*
 * fault.h — crash points for the system tests.
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

#endif
