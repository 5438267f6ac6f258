/*
 * daemon.c — start-up, the event loop, and an orderly shutdown.
 *
 * The modules come up in this order and go down in reverse: the catalog
 * and TLS contexts, the worker pool, the control socket (it refuses a
 * second replicad), the listener (replica.c), then failover.c, which
 * gives every VM its entry in the VM table and its role objects.
 */
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "catalog.h"
#include "config.h"
#include "control.h"
#include "daemon.h"
#include "dial.h"
#include "err.h"
#include "failover.h"
#include "layout.h"
#include "log.h"
#include "metrics.h"
#include "netio.h"
#include "notify.h"
#include "par.h"
#include "primary.h"
#include "reload.h"
#include "replica.h"
#include "svc.h"
#include "tls.h"
#include "util.h"
#include "vmtab.h"
#include "work.h"
#include "xmalloc.h"

/* More workers than cores: a job waiting for a store's lock (behind a
 * test-failover copy) must not hold up every other VM.  Long jobs (a
 * resync, verify, a test failover copy, prune) have threads of their
 * own, so that no cycle ever waits in a queue behind them (work.h). */
#define WORKERS		4
#define LONG_WORKERS	2

struct daemon {
	struct svc		 svc;
	struct config		*cfg;		/* owned; svc.cfg is it */
	int			 lock_fd;	/* flock on STATE_DIR/.lock */
	struct replica_srv	*rsrv;
	struct control		*ctl;
	struct metrics		*metrics;
	struct event		*sig_term;
	struct event		*sig_int;
	struct event		*sig_hup;
	struct event		*drain_timer;
	struct event		*trim_timer;
	struct event		*ready_ev;	/* the loop's first turn */
	struct event		*status_timer;
	struct event		*watchdog_timer;
	uint64_t		 stop_ms;	/* when SIGTERM came */
};

/*
 * Each replica VM holds a descriptor per disk (and its lock), each session
 * a socket: the soft limit (often 1024) is raised to the hard one, so that
 * the [accept] quotas, not the limit, bound what peers can open.
 */
static void
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max)
		return;
	rlim_t was = rl.rlim_cur;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 :
	    rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		log_warn("cannot raise the file descriptor limit from %llu",
		    (unsigned long long)was);
	else
		log_info("file descriptor limit raised from %llu to %llu",
		    (unsigned long long)was, (unsigned long long)rl.rlim_cur);
}

struct daemon *
daemon_init(struct config *cfg)
{
	struct daemon *d = xcalloc(1, sizeof(*d));
	struct svc *svc = &d->svc;
	char err[512];
	int r;

	d->cfg = cfg;
	svc->cfg = cfg;
	log_set_level(cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	if (util_mkdir_p(cfg->state_dir, 0700) != 0)
		fatal("cannot create state_dir %s", cfg->state_dir);
	/* Before anything touches the state: one replicad per state_dir. */
	char *lock = lay_lock(cfg->state_dir);
	r = util_lock_file(lock, &d->lock_fd);
	free(lock);
	if (r == RD_ERR_BUSY)
		fatalx("another replicad is running on %s", cfg->state_dir);
	if (r != 0)
		fatal("cannot lock %s", cfg->state_dir);

	char *db = lay_catalog(cfg->state_dir);
	if ((r = cat_open(db, &svc->cat)) != 0)
		fatalx("cannot open the catalog %s: %s", db, rd_strerror(r));
	free(db);

	/* Every host may become a primary (failover): a client context
	 * whenever this host has a certificate. */
	if (cfg->tls_cert && (svc->client_ctx = tls_ctx_new(0, cfg->tls_cert,
	    cfg->tls_key, cfg->tls_ca, err, sizeof(err))) == NULL)
		fatalx("%s", err);
	if (cfg->listen && (svc->server_ctx = tls_ctx_new(1, cfg->tls_cert,
	    cfg->tls_key, cfg->tls_ca, err, sizeof(err))) == NULL)
		fatalx("%s", err);

	/* Until the loop handles it (reload), a SIGHUP must not end a
	 * start-up that takes long (a store's recovery). */
	signal(SIGHUP, SIG_IGN);
	evthread_use_pthreads();
	if ((svc->base = event_base_new()) == NULL)
		fatalx("cannot create the event loop");
	work_init(svc->base, WORKERS, LONG_WORKERS);
	par_init(par_helpers_for_host());
	svc->vt = vt_new(svc->base);
	svc->dialer = dial_new(0);

	d->ctl = control_init(svc);	/* first: it refuses a second replicad */
	d->rsrv = replica_init(svc);
	failover_init(svc, d->rsrv);
	/* Replication goes on without its metrics: a port taken is said,
	 * not fatal (Prometheus' `up` shows the scrape failing). */
	if (cfg->metrics_listen != NULL && (d->metrics = metrics_init(svc,
	    d->ctl, d->rsrv, err, sizeof(err))) == NULL)
		log_warnx("%s; no metrics are served", err);
	return d;
}

/* How long a role change under way may go on after SIGTERM: one that
 * waits between steps (no job queued) is given the time to end. */
#define DRAIN_ROLE_MS	(30 * 1000)
#define DRAIN_ANSWER_MS	(2 * 1000)

static void
on_drain(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	struct vmtab *vt = d->svc.vt;
	size_t claimed = 0;

	if (work_pending() != 0)
		return;
	for (size_t i = 0; i < vt_count(vt); i++)
		claimed += vt_claimed(vt_at(vt, i)) ? 1 : 0;
	if (claimed > 0 && util_mono_ms() - d->stop_ms < DRAIN_ROLE_MS)
		return;
	if (claimed > 0)
		log_warnx("%zu role changes still under way: abandoned (the "
		    "catalog holds the old role or the new one)", claimed);
	/* Answers just made (a failover the stop cut short says why) go
	 * out before the loop ends: a client that does not read them is
	 * given up after a while. */
	if (control_flushing(d->ctl) > 0 &&
	    util_mono_ms() - d->stop_ms < DRAIN_ROLE_MS + DRAIN_ANSWER_MS)
		return;
	event_base_loopbreak(d->svc.base);
}

/*
 * Hundreds of VMs' cycles at once (a start, a replica back after an
 * outage) leave the heap holding their buffers after they are freed,
 * scattered between what stays in use, where the heap cannot give them
 * back by itself: give the free pages back now and then.
 */
#define TRIM_S		30

static int trimming;	/* a trim job is in flight (loop thread's) */

/* On a worker: a trim of a large heap takes tens of milliseconds. */
static void
trim_job(void *arg)
{
	malloc_trim(0);
}

static void
trim_done(void *arg)
{
	trimming = 0;
}

static void
on_trim(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	if (trimming || d->svc.stopping)
		return;
	trimming = 1;
	work_submit(trim_job, trim_done, NULL);
}

/*
 * The service manager (systemd Type=notify, notify.h): READY=1 once the
 * loop turns, so the control socket answers; STATUS= a line of
 * control_summary(), sent when it changes; WATCHDOG=1 at half the
 * interval asked for, from the loop, so a loop that hangs is restarted;
 * STOPPING=1 at SIGTERM.
 */
#define STATUS_S	5

static void
send_status(struct daemon *d)
{
	char line[256];

	if (d->svc.stopping)
		return;
	control_summary(d->ctl, line, sizeof(line));
	notify_status(line);
}

static void
on_ready(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	notify_send("READY=1");
	send_status(d);
}

static void
on_status(evutil_socket_t fd, short what, void *arg)
{
	send_status(arg);
}

static void
on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	notify_send("WATCHDOG=1");
}

static void
notify_start(struct daemon *d)
{
	if (!notify_enabled())
		return;
	struct timeval now = { 0, 0 }, stv = { STATUS_S, 0 };
	d->ready_ev = evtimer_new(d->svc.base, on_ready, d);
	evtimer_add(d->ready_ev, &now);
	d->status_timer = event_new(d->svc.base, -1, EV_PERSIST, on_status, d);
	event_add(d->status_timer, &stv);
	uint64_t wd = notify_watchdog_usec() / 2;
	/* No timer of a few microseconds spinning the loop (and
	 * WATCHDOG_USEC=1 is not "no watchdog"). */
	if (notify_watchdog_usec() > 0 && wd < 10000) {
		log_warnx("service manager watchdog of %" PRIu64 " us: pinged "
		    "every 10 ms", notify_watchdog_usec());
		wd = 10000;
	}
	if (wd > 0) {
		struct timeval wtv = { (time_t)(wd / 1000000),
		    (suseconds_t)(wd % 1000000) };
		d->watchdog_timer = event_new(d->svc.base, -1, EV_PERSIST,
		    on_watchdog, d);
		event_add(d->watchdog_timer, &wtv);
		log_info("service manager watchdog: every %" PRIu64 " ms",
		    wd / 1000);
	}
}

static void
hup_done(void *arg, int rc, const char *message)
{
	struct daemon *d = arg;
	/* reload.c logged what it did; the service manager hears the end. */
	notify_send("READY=1");
	send_status(d);
}

/* SIGHUP: read the configuration again (reload.h). */
static void
on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;

	if (d->svc.stopping)
		return;
	log_info("SIGHUP: reloading %s", d->svc.cfg->path);
	notify_send("RELOADING=1");
	reload_signal(&d->svc, hup_done, d);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	struct vmtab *vt = d->svc.vt;
	struct timeval tv = { 0, 20 * 1000 };

	if (d->svc.stopping)
		return;
	log_info("signal %d: shutting down", (int)sig);
	notify_send("STOPPING=1\nSTATUS=shutting down");
	d->svc.stopping = 1;
	d->stop_ms = util_mono_ms();
	/* Cycles first, so that `sync --wait` clients hear why they end. */
	for (size_t i = 0; i < vt_count(vt); i++)
		if (vt_pvm(vt_at(vt, i)) != NULL)
			pvm_stop(vt_pvm(vt_at(vt, i)));
	control_stop(d->ctl);
	replica_stop(d->rsrv);
	/* Long jobs stop at their next chunk; short jobs in flight finish
	 * (an apply completes; a primary's cycle is simply not committed),
	 * then the loop ends. */
	work_cancel();
	if (work_pending_long() > 0)
		log_info("cancelling %d long jobs", work_pending_long());
	d->drain_timer = event_new(d->svc.base, -1, EV_PERSIST, on_drain, d);
	event_add(d->drain_timer, &tv);
}

int
daemon_run(struct daemon *d)
{
	struct vmtab *vt = d->svc.vt;
	size_t np = 0, nr = 0, nu = 0;

	d->sig_term = evsignal_new(d->svc.base, SIGTERM, on_signal, d);
	d->sig_int = evsignal_new(d->svc.base, SIGINT, on_signal, d);
	evsignal_add(d->sig_term, NULL);
	evsignal_add(d->sig_int, NULL);
	d->sig_hup = evsignal_new(d->svc.base, SIGHUP, on_hup, d);
	evsignal_add(d->sig_hup, NULL);
	struct timeval ttv = { TRIM_S, 0 };
	d->trim_timer = event_new(d->svc.base, -1, EV_PERSIST, on_trim, d);
	event_add(d->trim_timer, &ttv);
	for (size_t i = 0; i < vt_count(vt); i++) {
		struct vme *e = vt_at(vt, i);
		if (vt_state(e) == ROLE_REPLICA)
			nr++;
		else
			np++;
		if (vt_state(e) == ROLE_REPLICA && vt_rvm(e) == NULL)
			nu++;
	}
	if (nu > 0)
		log_warnx("%zu of %zu replica VMs could not be opened (each is "
		    "named above with the reason); the others are served", nu,
		    nr);
	log_info("replicad ready: %zu primary VMs, %zu replica VMs%s%s", np, nr,
	    d->cfg->listen ? ", listening on " : "",
	    d->cfg->listen ? d->cfg->listen : "");
	notify_start(d);
	if (event_base_dispatch(d->svc.base) < 0)
		return 1;
	return 0;
}

void
daemon_fini(struct daemon *d)
{
	struct vmtab *vt = d->svc.vt;

	work_fini();
	par_fini();
	for (size_t i = 0; i < vt_count(vt); i++) {
		struct vme *e = vt_at(vt, i);
		if (vt_pvm(e) != NULL)
			pvm_free(vt_pvm(e));
		if (vt_rvm(e) != NULL)
			replica_close(vt_rvm(e));
	}
	metrics_fini(d->metrics);
	control_fini(d->ctl);
	replica_fini(d->rsrv);
	netio_linger_fini();
	vt_free(vt);
	dial_free(d->svc.dialer);
	if (d->drain_timer)
		event_free(d->drain_timer);
	if (d->trim_timer)
		event_free(d->trim_timer);
	if (d->ready_ev)
		event_free(d->ready_ev);
	if (d->status_timer)
		event_free(d->status_timer);
	if (d->watchdog_timer)
		event_free(d->watchdog_timer);
	notify_fini();
	event_free(d->sig_term);
	event_free(d->sig_int);
	event_free(d->sig_hup);
	cat_close(d->svc.cat);
	SSL_CTX_free(d->svc.client_ctx);
	SSL_CTX_free(d->svc.server_ctx);
	reload_fini(&d->svc);		/* its timer is the base's */
	event_base_free(d->svc.base);
	config_free(d->cfg);
	close(d->lock_fd);
	free(d);
	log_info("stopped");
}
