/*
 * notify.h — the service manager's notification protocol (systemd's
 * Type=notify, sd_notify(3)), without libsystemd: datagrams of
 * "KEY=VALUE\n" lines to the unix socket named by $NOTIFY_SOCKET (a path,
 * or "@name" in the abstract namespace).
 *
 * Without $NOTIFY_SOCKET every call does nothing.  The variables are
 * removed from the environment at notify_init(), so that hooks and other
 * children do not speak for the daemon.
 */
#ifndef REPLICAD_NOTIFY_H
#define REPLICAD_NOTIFY_H

#include <stdint.h>

/* Read and remove $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID. */
void		notify_init(void);
/* Whether a service manager listens. */
int		notify_enabled(void);
/* The watchdog's interval asked for by the manager in microseconds, 0 if
 * none (WATCHDOG_USEC unset, or WATCHDOG_PID names another process). */
uint64_t	notify_watchdog_usec(void);
/* Send text (one or more "KEY=VALUE" lines); 0, or -1 with errno. */
int		notify_send(const char *text);
/* STATUS=line, unless it is the line sent last. */
void		notify_status(const char *line);
void		notify_fini(void);

#endif
