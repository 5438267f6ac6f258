/*
 * reload.c — read the configuration again and apply it (reload.h).
 *
 * A configuration replaced by a reload is kept until exit: a cycle's
 * cfg_vm, a session's [accept] entry and a hook's command may point into
 * it.  A VM whose section was removed or changed is claimed (no cycle or
 * role change starts), its pvm closed and served again from the new
 * configuration (failover_restart_primary()) once nothing uses it: a
 * cycle under way ends first, so the change applies from the next one.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "err.h"
#include "failover.h"
#include "layout.h"
#include "log.h"
#include "primary.h"
#include "reload.h"
#include "svc.h"
#include "virt.h"
#include "vmtab.h"
#include "work.h"
#include "xmalloc.h"

#define RELOAD_POLL_MS	100	/* a VM waiting for its cycle's end */

struct job {
	struct svc	*svc;
	reload_done_fn	 done;
	void		*arg;
	char		*path;
	struct config	*cfg;		/* loaded, or NULL */
	char		 err[1024];
};

/* The VMs to serve again once idle, by name. */
struct waiting {
	char		 name[NAME_MAX_LEN + 1];
	int		 closing;	/* claimed, its pvm being closed */
	int		 paused;	/* replctl pause holds across it */
	struct svc	*svc;
};

static struct config	**reload_made;	/* every configuration loaded here */
static size_t		  reload_nmade;
static struct waiting	**reload_wait;
static size_t		  reload_nwait;
static struct event	 *reload_timer;
static int		  reload_running;
static reload_done_fn	  again_done;	/* a SIGHUP during a reload */
static void		 *again_arg;

static void
job_load(void *arg)
{
	struct job *j = arg;

	if (config_load(j->path, &j->cfg, j->err, sizeof(j->err)) != 0) {
		j->cfg = NULL;
		return;
	}
	/* Unlike at start-up, a domain libvirt cannot resolve now refuses
	 * the reload: leaving its VM out would stop it, keeping it with
	 * unresolved disks would change them. */
	for (size_t i = 0; i < j->cfg->nvms; i++) {
		struct cfg_vm *vm = &j->cfg->vms[i];
		char why[768];
		if (vm->domain == NULL || virt_resolve(vm, NULL, 0, why,
		    sizeof(why)) == 0)
			continue;
		snprintf(j->err, sizeof(j->err), "%s:%d: [vm %s] domain %s: %s",
		    j->cfg->path, vm->line, vm->name, vm->domain, why);
		config_free(j->cfg);
		j->cfg = NULL;
		return;
	}
}

/* Keys of [daemon] a running daemon cannot change: keep the running
 * ones, say so; the number kept. */
static int
keep_fixed(const struct config *old, struct config *nc)
{
	static const struct {
		const char	*key;
		size_t		 off;
	} fixed[] = {
		{ "state_dir", offsetof(struct config, state_dir) },
		{ "control_socket", offsetof(struct config, control_socket) },
		{ "listen", offsetof(struct config, listen) },
		{ "metrics_listen", offsetof(struct config, metrics_listen) },
		{ "tls_cert", offsetof(struct config, tls_cert) },
		{ "tls_key", offsetof(struct config, tls_key) },
		{ "tls_ca", offsetof(struct config, tls_ca) },
	};
	int kept = 0;

	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
		char *const *a = (char *const *)((const char *)old +
		    fixed[i].off);
		char **b = (char **)((char *)nc + fixed[i].off);
		if ((*a == NULL && *b == NULL) || (*a != NULL && *b != NULL &&
		    strcmp(*a, *b) == 0))
			continue;
		log_warnx("%s: %s changed (%s -> %s): it takes effect when "
		    "replicad restarts; %s stays until then", nc->path,
		    fixed[i].key, *a ? *a : "unset", *b ? *b : "unset",
		    *a ? *a : "unset");
		free(*b);
		*b = *a ? xstrdup(*a) : NULL;
		kept++;
	}
	/* What config_load() derived from the state_dir it read follows the
	 * running one. */
	for (size_t i = 0; i < nc->naccepts; i++)
		if (nc->accepts[i].storage_default) {
			free(nc->accepts[i].storage);
			nc->accepts[i].storage = lay_default_storage(
			    nc->state_dir);
		}
	memcpy(nc->listen_host, old->listen_host, sizeof(nc->listen_host));
	nc->listen_port = old->listen_port;
	memcpy(nc->metrics_host, old->metrics_host, sizeof(nc->metrics_host));
	nc->metrics_port = old->metrics_port;
	memcpy(nc->tls_line, old->tls_line, sizeof(nc->tls_line));
	/* replicad -d holds until the process ends. */
	nc->log_debug_forced = old->log_debug_forced;
	if (nc->log_debug_forced)
		nc->log_level = LOG_LVL_DEBUG;
	return kept;
}

static void serve_waiting(evutil_socket_t fd, short what, void *arg);
static void wait_for_idle(struct svc *svc, const char *name);

static int
str_same(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL &&
	    strcmp(a, b) == 0);
}

/* The keys a VM's tracker and its catalog entry depend on: the same, so
 * that the new section can apply to the pvm in place. */
static int
same_tracker(const struct cfg_vm *a, const struct cfg_vm *b)
{
	if (a->tracker != b->tracker || a->ndisks != b->ndisks ||
	    a->block_size != b->block_size || !str_same(a->qmp, b->qmp) ||
	    !str_same(a->domain, b->domain) || !str_same(a->libvirt_uri,
	    b->libvirt_uri) || !str_same(a->replica, b->replica) ||
	    !str_same(a->replica_name, b->replica_name))
		return 0;
	for (size_t i = 0; i < a->ndisks; i++)
		if (strcmp(a->disks[i], b->disks[i]) != 0 ||
		    strcmp(a->disk_names[i], b->disk_names[i]) != 0)
			return 0;
	return 1;
}

/* A changed section: in place from the next cycle when its pvm serves the
 * old one and nothing structural changed, else the pvm is made again. */
static void
apply_changed(struct svc *svc, const struct cfg_vm *ov,
    const struct cfg_vm *nv)
{
	struct vme *e = vt_find(svc->vt, nv->name);
	struct pvm *pv = e != NULL ? vt_pvm(e) : NULL;

	if (pv != NULL && pvm_cfg(pv) == ov && same_tracker(ov, nv))
		pvm_set_cfg(pv, nv);
	else
		wait_for_idle(svc, nv->name);
}

static void
wait_for_idle(struct svc *svc, const char *name)
{
	for (size_t i = 0; i < reload_nwait; i++)
		if (strcmp(reload_wait[i]->name, name) == 0)
			return;
	struct waiting *w = xcalloc(1, sizeof(*w));
	snprintf(w->name, sizeof(w->name), "%s", name);
	w->svc = svc;
	reload_wait = xreallocarray(reload_wait, reload_nwait + 1,
	    sizeof(*reload_wait));
	reload_wait[reload_nwait++] = w;
}

static void
forget_waiting(struct waiting *w)
{
	for (size_t i = 0; i < reload_nwait; i++)
		if (reload_wait[i] == w) {
			reload_wait[i] = reload_wait[--reload_nwait];
			break;
		}
	free(w);
}

static void
closed(void *arg)
{
	struct waiting *w = arg;
	struct vme *e = vt_find(w->svc->vt, w->name);

	if (e != NULL && w->svc->stopping) {
		vt_release(e);		/* shutting down: serve nothing new */
	} else if (e != NULL) {
		int r = failover_restart_primary(w->svc, e);
		if (w->paused && vt_pvm(e) != NULL)
			pvm_pause(vt_pvm(e));
		if (r != 0 && r != RD_ERR_STATE)
			log_warnx("%s: cannot serve it again after the reload: "
			    "%s", w->name, rd_strerror(r));
		else if (vt_pvm(e) != NULL)
			log_info("%s: serving the reloaded section from now "
			    "on", w->name);
		vt_release(e);
	}
	forget_waiting(w);
}

static void
arm(struct svc *svc)
{
	struct timeval tv = { 0, RELOAD_POLL_MS * 1000 };

	if (reload_timer == NULL)
		reload_timer = evtimer_new(svc->base, serve_waiting, svc);
	if (reload_nwait > 0 && !evtimer_pending(reload_timer, NULL))
		evtimer_add(reload_timer, &tv);
}

/* Close the pvm of each waiting VM that nothing uses now. */
static void
serve_waiting(evutil_socket_t fd, short what, void *arg)
{
	struct svc *svc = arg;

	for (size_t i = 0; i < reload_nwait && !svc->stopping; i++) {
		struct waiting *w = reload_wait[i];
		struct vme *e = vt_find(svc->vt, w->name);
		struct pvm *pv = e != NULL ? vt_pvm(e) : NULL;
		if (w->closing)
			continue;
		if (e != NULL && vt_state(e) == ROLE_UNCOMMITTED)
			continue;	/* served again once committed */
		if (e == NULL || vt_state(e) != ROLE_PRIMARY) {
			/* Gone, or not a primary here (any more): its role
			 * change reads the configuration itself. */
			if (pv != NULL)
				pvm_hold(pv, 0);
			forget_waiting(w);
			i--;
			continue;
		}
		if (pv == NULL) {
			/* No pvm (no disks were named): serve it now. */
			if (vt_claim(e) != 0)
				continue;
			w->closing = 1;
			closed(w);
			i--;
			continue;
		}
		/* The cycle under way is the last: a VM whose cycles follow
		 * each other at once would never be seen idle here. */
		pvm_hold(pv, 1);
		if (pvm_busy(pv) || vt_claim(e) != 0)
			continue;	/* a cycle, a job or a role change */
		w->closing = 1;
		w->paused = pvm_paused(pv);
		pvm_close(pv, closed, w);
	}
	arm(svc);
}

static void
load_done(void *arg)
{
	struct job *j = arg;
	struct svc *svc = j->svc;
	char msg[1200];
	size_t added = 0, removed = 0, changed = 0;
	int kept;

	reload_running = 0;
	if (j->cfg == NULL) {
		snprintf(msg, sizeof(msg), "reload refused, the running "
		    "configuration stays: %s", j->err);
		log_warnx("%s", msg);
		j->done(j->arg, RD_ERR_INVALID, msg);
		goto out;
	}
	if (svc->stopping) {
		config_free(j->cfg);
		j->done(j->arg, RD_ERR_STATE, "replicad is shutting down");
		goto out;
	}
	const struct config *old = svc->cfg;
	struct config *nc = j->cfg;
	kept = keep_fixed(old, nc);
	reload_made = xreallocarray(reload_made, reload_nmade + 1,
	    sizeof(*reload_made));
	reload_made[reload_nmade++] = nc;
	svc->cfg = nc;
	log_set_level(nc->log_level);
	for (size_t i = 0; i < old->nvms; i++) {
		const struct cfg_vm *nv = config_find_vm(nc, old->vms[i].name);
		if (nv == NULL) {
			removed++;
			wait_for_idle(svc, old->vms[i].name);
		} else if (!cfg_vm_same(&old->vms[i], nv)) {
			changed++;
			apply_changed(svc, &old->vms[i], nv);
		}
	}
	for (size_t i = 0; i < nc->nvms; i++) {
		const struct cfg_vm *nv = &nc->vms[i];
		if (config_find_vm(old, nv->name) != NULL)
			continue;
		added++;
		struct vme *e = vt_find(svc->vt, nv->name);
		if (e == NULL)
			failover_new_section(svc, nv);
		else
			wait_for_idle(svc, nv->name);	/* known: serve anew */
	}
	snprintf(msg, sizeof(msg), "configuration %s reloaded: %zu VM%s "
	    "added, %zu removed, %zu changed (each applied once its cycle "
	    "ends)%s", nc->path, added, added == 1 ? "" : "s", removed,
	    changed, kept > 0 ? "; some [daemon] keys need a restart (see "
	    "the log)" : "");
	log_info("%s", msg);
	serve_waiting(-1, 0, svc);
	j->done(j->arg, 0, msg);
out:
	free(j->path);
	free(j);
	if (again_done != NULL) {
		reload_done_fn fn = again_done;
		again_done = NULL;
		reload_start(svc, fn, again_arg);
	}
}

void
reload_start(struct svc *svc, reload_done_fn done, void *arg)
{
	if (reload_running) {
		done(arg, RD_ERR_BUSY, "a reload is already under way");
		return;
	}
	if (svc->stopping) {
		done(arg, RD_ERR_STATE, "replicad is shutting down");
		return;
	}
	struct job *j = xcalloc(1, sizeof(*j));
	j->svc = svc;
	j->done = done;
	j->arg = arg;
	j->path = xstrdup(svc->cfg->path);
	reload_running = 1;
	work_submit(job_load, load_done, j);
}

void
reload_signal(struct svc *svc, reload_done_fn done, void *arg)
{
	if (reload_running && !svc->stopping) {
		log_info("a reload is under way: the file is read again once "
		    "it ends");
		again_done = done;
		again_arg = arg;
		return;
	}
	reload_start(svc, done, arg);
}

void
reload_fini(struct svc *svc)
{
	if (reload_timer != NULL)
		event_free(reload_timer);
	reload_timer = NULL;
	while (reload_nwait > 0)
		forget_waiting(reload_wait[0]);
	free(reload_wait);
	reload_wait = NULL;
	for (size_t i = 0; i < reload_nmade; i++)
		config_free(reload_made[i]);
	free(reload_made);
	reload_made = NULL;
	reload_nmade = 0;
}
