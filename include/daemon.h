/*
 * daemon.h — one replicad process: start-up, the event loop, an orderly
 * shutdown.  daemon.c owns the shared services (svc.h) and calls each
 * module's init in order and its fini in reverse; nothing else reaches
 * into it.
 */
#ifndef REPLICAD_DAEMON_H
#define REPLICAD_DAEMON_H

struct config;
struct daemon;

/* Set up everything from cfg (which the daemon then owns); fatal on
 * start-up errors. */
struct daemon *daemon_init(struct config *cfg);
/* Run until SIGTERM or SIGINT; returns the exit code. */
int	daemon_run(struct daemon *d);
void	daemon_fini(struct daemon *d);

#endif
