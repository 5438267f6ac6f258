/*
 * control.h — the control socket: replctl's requests (ctl.h) answered by
 * the daemon.  Only root and the daemon's own user may connect
 * (SO_PEERCRED); the socket is created mode 0600.
 */
#ifndef REPLICAD_CONTROL_H
#define REPLICAD_CONTROL_H

struct control;
struct svc;

/* Create the socket (fatal if another replicad holds it). */
struct control *control_init(struct svc *svc);
/* Stop accepting, drop connections that wait for a cycle. */
void	control_stop(struct control *ctl);
/* Connections with an answer not yet written out. */
int	control_flushing(const struct control *ctl);
void	control_fini(struct control *ctl);
/* One line for the service manager's STATUS=: VMs by role, how many
 * sync, how many are not normal. */
void	control_summary(struct control *ctl, char *buf, size_t len);
/* The VMs' metrics in Prometheus' text exposition format, appended to b
 * (metrics.c serves them with the host's own). */
struct wbuf;
void	control_metrics(struct control *ctl, struct wbuf *b);

#endif
