/*
 * control.h — the control socket: replctl's requests (ctl.h) answered by
 * the daemon.  Only root and the daemon's own user may connect
 * (SO_PEERCRED); the socket is created mode 0600.
 */
#ifndef REPLICAD_CONTROL_H
#define REPLICAD_CONTROL_H

struct daemon;

/* Create the socket (fatal if another replicad holds it). */
void	control_init(struct daemon *d);
/* Stop accepting, drop connections. */
void	control_stop(struct daemon *d);
void	control_fini(struct daemon *d);

#endif
