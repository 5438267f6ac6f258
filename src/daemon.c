/*
 * daemon.c — start-up, the event loop, and an orderly shutdown.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "catalog.h"
#include "control.h"
#include "daemon.h"
#include "err.h"
#include "failover.h"
#include "log.h"
#include "primary.h"
#include "replica.h"
#include "tls.h"
#include "util.h"
#include "work.h"
#include "xmalloc.h"

/* More workers than cores: a job waiting for a store's lock (behind a
 * test-failover copy) must not hold up every other VM. */
#define WORKERS	4

static struct event *sig_term, *sig_int, *drain_timer;

struct daemon *
daemon_init(struct config *cfg)
{
	struct daemon *d = xcalloc(1, sizeof(*d));
	char err[512];
	int r;

	d->cfg = cfg;
	log_set_level(cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	if (util_mkdir_p(cfg->state_dir, 0700) != 0)
		fatal("cannot create state_dir %s", cfg->state_dir);
	/* Before anything touches the state: one replicad per state_dir. */
	r = util_lock_dir(cfg->state_dir, &d->lock_fd);
	if (r == RD_ERR_BUSY)
		fatalx("another replicad is running on %s", cfg->state_dir);
	if (r != 0)
		fatal("cannot lock %s", cfg->state_dir);

	char *db = xasprintf("%s/catalog.db", cfg->state_dir);
	if ((r = cat_open(db, &d->cat)) != 0)
		fatalx("cannot open the catalog %s: %s", db, rd_strerror(r));
	free(db);

	/* Every host may become a primary (failover): a client context
	 * whenever this host has a certificate. */
	if (cfg->tls_cert && (d->client_ctx = tls_ctx_new(0, cfg->tls_cert,
	    cfg->tls_key, cfg->tls_ca, err, sizeof(err))) == NULL)
		fatalx("%s", err);
	if (cfg->listen && (d->server_ctx = tls_ctx_new(1, cfg->tls_cert,
	    cfg->tls_key, cfg->tls_ca, err, sizeof(err))) == NULL)
		fatalx("%s", err);

	evthread_use_pthreads();
	if ((d->base = event_base_new()) == NULL)
		fatalx("cannot create the event loop");
	work_init(d->base, WORKERS);

	control_init(d);	/* first: it refuses a second replicad */
	replica_init(d);
	failover_init(d);
	for (size_t i = 0; i < cfg->nvms; i++) {
		struct rvm *rv = replica_find(d, cfg->vms[i].name);
		if (daemon_find_pvm(d, cfg->vms[i].name) != NULL)
			continue;	/* primary by a failover not committed */
		if (rv != NULL) {
			log_info("%s: this host is its replica (failover); the "
			    "[vm %s] section names the disks it receives into",
			    cfg->vms[i].name, cfg->vms[i].name);
			continue;
		}
		daemon_add_pvm(d, pvm_new(d, &cfg->vms[i]));
	}
	failover_resume(d);
	return d;
}

void
daemon_add_pvm(struct daemon *d, struct pvm *vm)
{
	d->pvms = xreallocarray(d->pvms, d->npvms + 1, sizeof(*d->pvms));
	d->pvms[d->npvms++] = vm;
}

void
daemon_remove_pvm(struct daemon *d, struct pvm *vm)
{
	for (size_t i = 0; i < d->npvms; i++)
		if (d->pvms[i] == vm) {
			memmove(&d->pvms[i], &d->pvms[i + 1],
			    (d->npvms - i - 1) * sizeof(*d->pvms));
			d->npvms--;
			return;
		}
}

struct pvm *
daemon_find_pvm(struct daemon *d, const char *name)
{
	for (size_t i = 0; i < d->npvms; i++)
		if (strcmp(pvm_name(d->pvms[i]), name) == 0)
			return d->pvms[i];
	return NULL;
}

static void
on_drain(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	if (work_pending() == 0)
		event_base_loopbreak(d->base);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	struct timeval tv = { 0, 20 * 1000 };

	if (d->stopping)
		return;
	log_info("signal %d: shutting down", (int)sig);
	d->stopping = 1;
	/* Cycles first, so that `sync --wait` clients hear why they end. */
	for (size_t i = 0; i < d->npvms; i++)
		pvm_stop(d->pvms[i]);
	control_stop(d);
	replica_stop(d);
	/* Jobs in flight finish (an apply completes; a primary's cycle is
	 * simply not committed), then the loop ends. */
	drain_timer = event_new(d->base, -1, EV_PERSIST, on_drain, d);
	event_add(drain_timer, &tv);
}

int
daemon_run(struct daemon *d)
{
	sig_term = evsignal_new(d->base, SIGTERM, on_signal, d);
	sig_int = evsignal_new(d->base, SIGINT, on_signal, d);
	evsignal_add(sig_term, NULL);
	evsignal_add(sig_int, NULL);
	log_info("replicad ready: %zu primary VMs, %zu replica VMs%s%s",
	    d->npvms, d->nrvms, d->cfg->listen ? ", listening on " : "",
	    d->cfg->listen ? d->cfg->listen : "");
	if (event_base_dispatch(d->base) < 0)
		return 1;
	return 0;
}

void
daemon_fini(struct daemon *d)
{
	work_fini();
	for (size_t i = 0; i < d->npvms; i++)
		pvm_free(d->pvms[i]);
	free(d->pvms);
	control_fini(d);
	replica_fini(d);
	if (drain_timer)
		event_free(drain_timer);
	event_free(sig_term);
	event_free(sig_int);
	cat_close(d->cat);
	SSL_CTX_free(d->client_ctx);
	SSL_CTX_free(d->server_ctx);
	event_base_free(d->base);
	config_free(d->cfg);
	close(d->lock_fd);
	free(d);
	log_info("stopped");
}
