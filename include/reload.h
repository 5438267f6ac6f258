/*
 * reload.h — SIGHUP and `replctl reload`: read the configuration file
 * again and apply it without a restart.
 *
 *   [vm] added      starts replicating (a new relationship, or the disks
 *                   of a primary that had none named)
 *   [vm] removed    stops replicating once its cycle ends; its tracker
 *                   state and catalog entry stay (as after a restart
 *                   without the section)
 *   [vm] changed    served again from the new section once its cycle
 *                   ends: the next cycle uses the new keys
 *   [accept]        new sessions use the new entries (a session open now
 *                   keeps the entry it was admitted with)
 *   [daemon]        log_level and the other tunables apply at once;
 *                   state_dir, control_socket, listen, metrics_listen and
 *                   the TLS files need a restart: a change is logged and
 *                   the running value stays
 *
 * A file that does not load (any error config_load() reports) is
 * refused with that error and the running configuration stays.  The
 * file is read and libvirt domains are resolved on a worker thread; the
 * rest runs in the loop thread.
 */
#ifndef REPLICAD_RELOAD_H
#define REPLICAD_RELOAD_H

struct svc;

/* done(arg, rc, message): rc 0 and what changed, or the refusal. */
typedef void (*reload_done_fn)(void *arg, int rc, const char *message);

void	reload_start(struct svc *svc, reload_done_fn done, void *arg);
/* SIGHUP: reload_start(), but a signal that comes while a reload runs is
 * not lost: the file is read again once that reload ends (done is called
 * then). */
void	reload_signal(struct svc *svc, reload_done_fn done, void *arg);
/* At exit, after everything that may point into a configuration: free
 * the ones reloads made (svc->cfg may be one; the first is the
 * daemon's). */
void	reload_fini(struct svc *svc);

#endif
