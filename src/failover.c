/*
 * failover.c — role changes: unplanned and planned failover, commit,
 * reverse, and the replica side of both (failover.h).
 *
 * Each change runs as a chain of steps: loop-thread steps stop or start
 * the VM's roles (struct pvm, struct rvm), worker jobs do what touches
 * disks, the catalog or a hook.  The catalog is the record: a role or
 * generation changes there in one transaction, so a crash leaves the old
 * role or the new one.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "blockmap.h"
#include "catalog.h"
#include "config.h"
#include "daemon.h"
#include "err.h"
#include "failover.h"
#include "fault.h"
#include "hook.h"
#include "log.h"
#include "primary.h"
#include "replica.h"
#include "store.h"
#include "tracker.h"
#include "util.h"
#include "work.h"
#include "xmalloc.h"

#define PROBE_TIMEOUT_MS	5000

/* One role change under way. */
struct fo {
	struct daemon		*d;
	char			 vm[NAME_MAX_LEN + 1];
	failover_done_fn	 done;
	void			*arg;
	struct rvm		*rvm;
	struct pvm		*pvm;
	uint64_t		 point;
	int			 wait;
	int			 rc;
	int			 hook_failed;
	char			 msg[1024];
	char			 hookmsg[512];
	struct cat_rel		 rel;
	char			 to[HOST_MAX_LEN + 8];
	char			 name[HOST_MAX_LEN + 1];
	char			 identity[HOST_MAX_LEN + 1];
	char			 listen[HOST_MAX_LEN + 8];
	const struct cfg_accept	*acc;
	struct wire_hello	 hello;
	struct wire_promote	 promote;
	int			 claimed;	/* holds the VM's role change */
	int			 promoted;	/* the new role is recorded */
};

/*
 * One role change at a time per VM: every change claims the VM's name
 * until it ends, and a second one (another command, a HELLO asking for a
 * demotion) is refused as busy meanwhile.  Control jobs that use a
 * replica's store (test failover, verify, forget, prune) are refused too,
 * and a role change waits for none of them: it is refused while one runs.
 */
struct claim {
	char		 vm[NAME_MAX_LEN + 1];
	struct claim	*next;
};
static struct claim *claims;

int
failover_busy(const char *vm)
{
	for (struct claim *c = claims; c; c = c->next)
		if (strcmp(c->vm, vm) == 0)
			return 1;
	return 0;
}

static int
fo_claim(struct fo *f)
{
	if (failover_busy(f->vm))
		return RD_ERR_BUSY;
	struct claim *c = xcalloc(1, sizeof(*c));
	snprintf(c->vm, sizeof(c->vm), "%s", f->vm);
	c->next = claims;
	claims = c;
	f->claimed = 1;
	return 0;
}

static void
fo_free(struct fo *f)
{
	if (f->claimed) {
		for (struct claim **c = &claims; *c; c = &(*c)->next)
			if (strcmp((*c)->vm, f->vm) == 0) {
				struct claim *dead = *c;
				*c = dead->next;
				free(dead);
				break;
			}
	}
	free(f);
}

static int fo_claim(struct fo *f);
static void fo_finish(struct fo *f, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Claim the VM for a role change, or finish f as busy (1 returned). */
static int
fo_busy(struct fo *f, struct rvm *rv)
{
	if (rv && rvm_in_use(rv)) {
		fo_finish(f, RD_ERR_BUSY, "%s: a test failover, verify or prune "
		    "of it is running; try again when it is done", f->vm);
		return 1;
	}
	if (fo_claim(f) != 0) {
		fo_finish(f, RD_ERR_BUSY, "%s: another role change of it is "
		    "under way", f->vm);
		return 1;
	}
	return 0;
}

static struct fo *
fo_new(struct daemon *d, const char *vm, failover_done_fn done, void *arg)
{
	struct fo *f = xcalloc(1, sizeof(*f));
	f->d = d;
	snprintf(f->vm, sizeof(f->vm), "%s", vm);
	f->done = done;
	f->arg = arg;
	return f;
}

static void
fo_finish(struct fo *f, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
fo_finish(struct fo *f, int rc, const char *fmt, ...)
{
	char msg[1536];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (rc == 0)
		log_info("%s", msg);
	else
		log_warnx("%s", msg);
	if (f->done)
		f->done(f->arg, rc, msg);
	fo_free(f);
}

/* The VM's relationship for a job; on failure f->rc and f->msg say why. */
static int
fo_rel(struct fo *f, struct cat_rel *rel)
{
	int r = cat_rel_get(f->d->cat, f->vm, rel);
	if (r != 0) {
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
		f->rc = r;
	}
	return r;
}

/* --- the [vm] of a VM that is primary by failover ----------------------- */

struct cfg_vm *
failover_cfg(const struct config *cfg, const struct cat_rel *rel)
{
	struct cfg_vm *v = xmalloc(sizeof(*v));

	cfg_vm_defaults(v);
	snprintf(v->name, sizeof(v->name), "%s", rel->vm);
	v->ndisks = rel->ndisks;
	v->disks = xcalloc(rel->ndisks, sizeof(char *));
	v->disk_names = xcalloc(rel->ndisks, sizeof(char *));
	for (uint16_t i = 0; i < rel->ndisks; i++) {
		v->disks[i] = xasprintf("%s/%s/%s", rel->storage, rel->vm,
		    rel->disks[i].name);
		v->disk_names[i] = xstrdup(rel->disks[i].name);
	}
	if (rel->peer[0] != '\0' && util_parse_hostport(rel->peer,
	    v->replica_host, sizeof(v->replica_host), &v->replica_port) == 0) {
		v->replica = xstrdup(rel->peer);
		v->replica_name = xstrdup(rel->peer_name[0] ? rel->peer_name :
		    v->replica_host);
	}
	v->interval_ms = rel->interval_ms;
	v->tracker = TRACKER_SCAN;
	v->block_size = rel->block_size;
	v->compress_level = 1;
	/* Hooks: those of the [accept] entry the VM came in by. */
	const struct cfg_accept *acc = config_match_accept(cfg,
	    rel->peer_name, rel->vm);
	if (acc && acc->on_promote)
		v->on_promote = xstrdup(acc->on_promote);
	if (acc && acc->on_demote)
		v->on_demote = xstrdup(acc->on_demote);
	return v;
}

/* The pvm of a VM that became primary here. */
static struct pvm *
start_primary(struct daemon *d, const struct cat_rel *rel)
{
	const struct cfg_vm *cv = config_find_vm(d->cfg, rel->vm);
	struct pvm *vm = cv ? pvm_new(d, cv) :
	    pvm_new_owned(d, failover_cfg(d->cfg, rel));
	if (rel->at_point != 0)
		pvm_hold(vm, 1);	/* no cycle before the commit */
	daemon_add_pvm(d, vm);
	return vm;
}

/* A hook for the VM: [vm]'s if this host has one, else the [accept]'s. */
static const char *
role_hook(struct daemon *d, const char *vm, const char *peer_identity,
    int promote)
{
	const struct cfg_vm *cv = config_find_vm(d->cfg, vm);
	if (cv)
		return promote ? cv->on_promote : cv->on_demote;
	const struct cfg_accept *acc = config_match_accept(d->cfg,
	    peer_identity, vm);
	if (acc)
		return promote ? acc->on_promote : acc->on_demote;
	return NULL;
}

/* Image paths of the VM on this host, for REPLICAD_DISKS. */
static char **
disk_paths(struct daemon *d, const struct cat_rel *rel, size_t *n)
{
	const struct cfg_vm *cv = config_find_vm(d->cfg, rel->vm);
	char **v = xcalloc(rel->ndisks + 1, sizeof(char *));
	for (uint16_t i = 0; i < rel->ndisks; i++)
		v[i] = cv && cv->ndisks == rel->ndisks ? xstrdup(cv->disks[i]) :
		    xasprintf("%s/%s/%s", rel->storage, rel->vm,
		    rel->disks[i].name);
	*n = rel->ndisks;
	return v;
}

static int
run_role_hook(struct fo *f, const struct cat_rel *rel, int promote,
    uint64_t point)
{
	const char *cmd = role_hook(f->d, rel->vm, promote ?
	    rel->peer_name : f->identity[0] ? f->identity : rel->peer_name,
	    promote);
	size_t n;
	if (cmd == NULL)
		return 0;
	char **paths = disk_paths(f->d, rel, &n);
	int r = hook_run_role(rel->vm, promote ? "on_promote" : "on_demote",
	    cmd, promote ? "primary" : "replica", rel->generation, point,
	    paths, n, f->hookmsg, sizeof(f->hookmsg));
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
	return r;
}

/*
 * on_promote must run once a promotion is recorded, even if the daemon
 * dies in between: a marker, STATE_DIR/hooks/VM.on_promote, is written
 * before the catalog changes and removed once the hook ran; start-up runs
 * the hook of a marker whose VM is primary, and drops the others.
 *
 * Likewise STATE_DIR/hooks/VM.handover marks a planned failover under way
 * on the old primary, from before on_demote until its end.  If it is cut
 * off, the next replica that welcomes this host at its old generation
 * shows that the handover did not happen: on_promote runs again here;
 * a replica that fences it shows that it did.
 */
static char *
marker_path(struct daemon *d, const char *vm, const char *kind)
{
	return xasprintf("%s/hooks/%s.%s", d->cfg->state_dir, vm, kind);
}

static void
marker_set_kind(struct daemon *d, const char *vm, const char *kind)
{
	char *dir = xasprintf("%s/hooks", d->cfg->state_dir);
	char *p = marker_path(d, vm, kind);
	if (util_mkdir_p(dir, 0700) != 0 || util_write_atomic(p, "", 0) != 0)
		log_warn("%s: cannot write %s", vm, p);
	free(dir);
	free(p);
}

static void
marker_clear_kind(struct daemon *d, const char *vm, const char *kind)
{
	char *p = marker_path(d, vm, kind);
	unlink(p);
	free(p);
}

#define marker_set(d, vm)	marker_set_kind(d, vm, "on_promote")
#define marker_clear(d, vm)	marker_clear_kind(d, vm, "on_promote")
#define HANDOVER		"handover"

static void
job_pending_hook(void *arg)
{
	struct fo *f = arg;
	log_info("%s: running on_promote, which a restart interrupted",
	    f->vm);
	if (run_role_hook(f, &f->rel, 1, f->rel.at_point ? f->rel.at_point :
	    f->rel.last_point) != 0)
		log_warnx("%s: on_promote failed: %s", f->vm, f->hookmsg);
	marker_clear(f->d, f->vm);
}

static void
pending_hook_done(void *arg)
{
	fo_free(arg);
}

static void arm_confirm(struct daemon *d, struct pvm *vm);

static void
job_confirmed(void *arg)
{
	struct fo *f = arg;
	if (fo_rel(f, &f->rel) == 0) {
		log_info("%s: the cut-off handover did not happen: running "
		    "on_promote again", f->vm);
		if (run_role_hook(f, &f->rel, 1, f->rel.last_point) != 0)
			log_warnx("%s: on_promote failed: %s", f->vm,
			    f->hookmsg);
	}
	marker_clear_kind(f->d, f->vm, HANDOVER);
}

static void
confirmed(void *arg, int still_ours)
{
	struct fo *f = arg;
	if (still_ours < 0) {
		fo_free(f);	/* the marker stays for the next start */
		return;
	}
	if (still_ours) {
		work_submit(job_confirmed, pending_hook_done, f);
		return;
	}
	log_info("%s: the cut-off handover happened: the new primary makes "
	    "this host its replica", f->vm);
	marker_clear_kind(f->d, f->vm, HANDOVER);
	fo_free(f);
}

static void
arm_confirm(struct daemon *d, struct pvm *vm)
{
	struct fo *f = fo_new(d, pvm_name(vm), NULL, NULL);
	pvm_confirm(vm, confirmed, f);
}

void
failover_resume(struct daemon *d)
{
	for (size_t i = 0; i < d->npvms; i++) {
		const char *vm = pvm_name(d->pvms[i]);
		char *p = marker_path(d, vm, HANDOVER);
		if (access(p, F_OK) == 0) {
			log_warnx("%s: a planned failover was cut off; the next "
			    "cycle tells whether it happened", vm);
			arm_confirm(d, d->pvms[i]);
		}
		free(p);
	}
}

/* --- start-up ------------------------------------------------------------ */

void
failover_init(struct daemon *d)
{
	struct cat_rel *rels = NULL;
	size_t n = 0;
	char err[512];

	if (cat_rel_list(d->cat, &rels, &n) != 0)
		fatalx("cannot list relationships");
	for (size_t i = 0; i < n; i++) {
		struct cat_rel *rel = &rels[i];
		if (rel->role != CAT_ROLE_PRIMARY)
			continue;
		if (rel->at_point != 0) {
			/* Uncommitted: the store stays open for another
			 * point or the commit. */
			struct rvm *rv = replica_add(d, rel, err, sizeof(err));
			if (rv == NULL)
				log_warnx("%s: the failover's store is "
				    "unavailable: %s", rel->vm, err);
		}
		if (config_find_vm(d->cfg, rel->vm) == NULL ||
		    rel->at_point != 0)
			start_primary(d, rel);
	}
	for (size_t i = 0; i < n; i++) {
		char *p = marker_path(d, rels[i].vm, "on_promote");
		int pending = access(p, F_OK) == 0;
		free(p);
		if (!pending)
			continue;
		if (rels[i].role != CAT_ROLE_PRIMARY) {
			marker_clear(d, rels[i].vm);
			continue;
		}
		struct fo *f = fo_new(d, rels[i].vm, NULL, NULL);
		f->rel = rels[i];
		work_submit(job_pending_hook, pending_hook_done, f);
	}
	free(rels);
}

/* --- unplanned failover -------------------------------------------------- */

static void
job_promote_unplanned(void *arg)
{
	struct fo *f = arg;
	struct store *st = rvm_store(f->rvm);
	struct cat_rel rel;
	int r;

	if (store_test_exists(st)) {
		snprintf(f->msg, sizeof(f->msg), "a test failover copy of %s "
		    "exists: remove it first (replctl failover %s --test "
		    "--cleanup)", f->vm, f->vm);
		f->rc = RD_ERR_STATE;
		return;
	}
	if ((r = fo_rel(f, &rel)) != 0)
		return;
	if (f->point != 0) {
		struct cat_point p;
		if (cat_point_get(f->d->cat, f->vm, f->point, &p) != 0) {
			snprintf(f->msg, sizeof(f->msg), "%s has no point %"
			    PRIu64, f->vm, f->point);
			f->rc = RD_ERR_NOT_FOUND;
			return;
		}
	} else if (rel.last_point == 0) {
		snprintf(f->msg, sizeof(f->msg), "%s has no recovery point yet",
		    f->vm);
		f->rc = RD_ERR_NOT_FOUND;
		return;
	}
	/*
	 * The role and generation first, images still at the newest point
	 * (uncommitted, at_point): from here a crash or a failed rewind
	 * leaves a primary whose images are at a point its journal names,
	 * never a replica rewound behind its newest point's label.
	 */
	rel.role = CAT_ROLE_PRIMARY;
	rel.generation++;
	/* The old primary's identity: reverse expects it by default. */
	memcpy(rel.peer_name, rel.peer, sizeof(rel.peer_name) - 1);
	rel.peer_name[sizeof(rel.peer_name) - 1] = '\0';
	rel.peer[0] = '\0';
	rel.fenced[0] = '\0';
	rel.resync = 0;
	rel.at_point = rel.last_point;
	marker_set(f->d, f->vm);
	if ((r = cat_rel_put(f->d->cat, &rel)) != 0) {
		marker_clear(f->d, f->vm);
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
		f->rc = r;
		return;
	}
	store_reload_rel(st);
	f->promoted = 1;
	if ((r = store_rewind(st, f->point, 0, f->msg, sizeof(f->msg))) != 0)
		f->rc = r;	/* primary all the same, at the point it reached */
	store_rel(st, &rel);
	f->rel = rel;
	if (run_role_hook(f, &rel, 1, rel.at_point) != 0)
		f->hook_failed = 1;
	marker_clear(f->d, f->vm);
}

static void
promote_unplanned_done(void *arg)
{
	struct fo *f = arg;
	rvm_block(f->rvm, 0);
	if (!f->promoted) {
		fo_finish(f, f->rc, "%s: failover refused: %s", f->vm, f->msg);
		return;
	}
	rvm_set_promoted(f->rvm, 1);
	start_primary(f->d, &f->rel);
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: this host is now the primary "
		    "(generation %" PRIu64 "), but moving to point %" PRIu64
		    " failed: %s; the disks hold point %" PRIu64 " (replctl "
		    "failover %s --point ID tries again, --commit keeps it)",
		    f->vm, f->rel.generation, f->point, f->msg,
		    f->rel.at_point, f->vm);
		return;
	}
	fo_finish(f, f->hook_failed ? RD_ERR_PEER : 0, "%s: failed over to "
	    "point %" PRIu64 ", generation %" PRIu64 "; this host is now the "
	    "primary%s%s (replctl failover %s --commit makes it final)",
	    f->vm, f->rel.at_point, f->rel.generation,
	    f->hook_failed ? "; on_promote failed: " : "",
	    f->hook_failed ? f->hookmsg : "", f->vm);
}

static void
promote_unplanned_go(void *arg)
{
	struct fo *f = arg;
	work_submit(job_promote_unplanned, promote_unplanned_done, f);
}

/* Another point, before the commit: the guest is stopped first. */
static void
job_repick(void *arg)
{
	struct fo *f = arg;
	struct store *st = rvm_store(f->rvm);
	struct cat_rel rel;
	int r;

	store_rel(st, &rel);
	if (run_role_hook(f, &rel, 0, rel.at_point) != 0) {
		snprintf(f->msg, sizeof(f->msg), "on_demote failed: %s",
		    f->hookmsg);
		f->rc = RD_ERR_PEER;
		return;
	}
	r = store_rewind(st, f->point, 1, f->msg, sizeof(f->msg));
	if (r != 0) {
		f->rc = r;
		if (r == RD_ERR_HASH) {
			size_t len = strlen(f->msg);
			snprintf(f->msg + len, sizeof(f->msg) - len, ": the "
			    "VM wrote to its disks since the failover, and "
			    "those writes cannot be undone; commit with "
			    "replctl failover %s --commit", f->vm);
		}
		/* Left as it was: start the guest again. */
		run_role_hook(f, &rel, 1, rel.at_point);
		return;
	}
	store_rel(st, &rel);
	f->rel = rel;
	if (run_role_hook(f, &rel, 1, rel.at_point) != 0)
		f->hook_failed = 1;
}

static void
repick_done(void *arg)
{
	struct fo *f = arg;
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: cannot move to point %" PRIu64 ": %s",
		    f->vm, f->point, f->msg);
		return;
	}
	fo_finish(f, f->hook_failed ? RD_ERR_PEER : 0, "%s: now at point %"
	    PRIu64 ", generation %" PRIu64 "%s%s (not committed)", f->vm,
	    f->rel.at_point, f->rel.generation, f->hook_failed ?
	    "; on_promote failed: " : "", f->hook_failed ? f->hookmsg : "");
}

void
failover_unplanned(struct daemon *d, const char *vm, uint64_t point,
    failover_done_fn done, void *arg)
{
	struct fo *f = fo_new(d, vm, done, arg);
	struct pvm *pv = daemon_find_pvm(d, vm);

	f->point = point;
	f->rvm = replica_find(d, vm);
	if (fo_busy(f, f->rvm))
		return;
	if (f->rvm == NULL) {
		if (pv)
			fo_finish(f, RD_ERR_STATE, "%s is the primary on this "
			    "host (generation %" PRIu64 "): an unplanned "
			    "failover runs on its replica; here use failover "
			    "%s --planned", vm, pvm_generation(pv), vm);
		else
			fo_finish(f, RD_ERR_NOT_FOUND, "no VM named %s on this "
			    "host", vm);
		return;
	}
	if (rvm_promoted(f->rvm)) {
		struct cat_rel rel;
		store_rel(rvm_store(f->rvm), &rel);
		if (point == 0)
			point = f->point = rel.last_point;
		if (point == rel.at_point) {
			fo_finish(f, 0, "%s: already at point %" PRIu64
			    " (generation %" PRIu64 ", not committed)", vm,
			    point, rel.generation);
			return;
		}
		snprintf(f->identity, sizeof(f->identity), "%s", rel.peer_name);
		work_submit(job_repick, repick_done, f);
		return;
	}
	log_info("%s: unplanned failover to %s requested", vm, point ?
	    "a chosen point" : "the newest point");
	rvm_when_idle(f->rvm, promote_unplanned_go, f);
}

/* --- commit -------------------------------------------------------------- */

static void
job_commit(void *arg)
{
	struct fo *f = arg;
	f->rc = store_rewind_commit(rvm_store(f->rvm), &f->rel, f->msg,
	    sizeof(f->msg));
}

static void
commit_done(void *arg)
{
	struct fo *f = arg;
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: cannot commit the failover: %s", f->vm,
		    f->msg);
		return;
	}
	replica_remove(f->d, f->rvm);
	struct pvm *pv = daemon_find_pvm(f->d, f->vm);
	if (pv)
		pvm_hold(pv, 0);
	fo_finish(f, 0, "%s: failover committed at point %" PRIu64 " "
	    "(generation %" PRIu64 "); newer points dropped", f->vm,
	    f->rel.last_point, f->rel.generation);
}

void
failover_commit(struct daemon *d, const char *vm, failover_done_fn done,
    void *arg)
{
	struct fo *f = fo_new(d, vm, done, arg);
	f->rvm = replica_find(d, vm);
	if (fo_busy(f, f->rvm))
		return;
	if (f->rvm == NULL || !rvm_promoted(f->rvm)) {
		fo_finish(f, RD_ERR_STATE, "%s: no failover to commit on this "
		    "host", vm);
		return;
	}
	work_submit(job_commit, commit_done, f);
}

/* --- becoming the replica ------------------------------------------------- */

/* Current size of each of the VM's disk files on this host. */
static int
file_sizes(struct daemon *d, struct cat_rel *rel, char *err, size_t errsz)
{
	size_t n;
	char **paths = disk_paths(d, rel, &n);
	int r = 0;
	for (size_t i = 0; i < n; i++) {
		struct stat sb;
		if (stat(paths[i], &sb) == 0)
			rel->disks[i].size = (uint64_t)sb.st_size;
		else if (errno == ENOENT)
			rel->disks[i].size = 0;
		else if (r == 0) {
			snprintf(err, errsz, "%s: %s", paths[i],
			    strerror(errno));
			r = RD_ERR_SYSTEM;
		}
		free(paths[i]);
	}
	free(paths);
	return r;
}

/*
 * The catalog side of becoming the replica: a new history (points of an
 * earlier time as replica cannot be rebuilt from disks that were primary
 * since), undo and redo data gone, the tracker state gone.
 */
static int
record_replica(struct fo *f, struct cat_rel *rel, uint64_t generation,
    const char *identity, const char *storage, uint64_t last_cycle)
{
	char *p;
	int r;

	rel->role = CAT_ROLE_REPLICA;
	rel->generation = generation;
	snprintf(rel->peer, sizeof(rel->peer), "%s", identity);
	rel->peer_name[0] = '\0';
	snprintf(rel->storage, sizeof(rel->storage), "%s", storage);
	rel->last_cycle = last_cycle;
	rel->last_point = 0;
	rel->last_point_created_ms = 0;
	rel->at_point = 0;
	rel->step_to = 0;
	rel->resync = 0;
	rel->fenced[0] = '\0';
	if ((r = file_sizes(f->d, rel, f->msg, sizeof(f->msg))) != 0)
		return r;
	const char *sub[] = { ".undo", ".redo", ".staging" };
	for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
		p = xasprintf("%s/%s/%s", storage, rel->vm, sub[i]);
		util_rm_rf(p);
		free(p);
	}
	trk_forget(f->d->cfg->state_dir, rel->vm, config_find_vm(f->d->cfg,
	    rel->vm));
	marker_clear_kind(f->d, rel->vm, HANDOVER);
	if ((r = cat_rel_put_trim(f->d->cat, rel, 0)) != 0)
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
	return r;
}

static void
job_demote_hook(void *arg)
{
	struct fo *f = arg;
	struct cat_rel rel;
	int r;

	if ((r = fo_rel(f, &rel)) != 0)
		return;
	rel.generation = f->hello.generation;
	if (run_role_hook(f, &rel, 0, 0) != 0) {
		snprintf(f->msg, sizeof(f->msg), "this host cannot become the "
		    "replica of %s: on_demote failed: %s", f->vm, f->hookmsg);
		f->rc = RD_ERR_PEER;
	}
}

static void
job_demote(void *arg)
{
	struct fo *f = arg;
	struct cat_rel rel;
	int r;

	if ((r = fo_rel(f, &rel)) != 0)
		return;
	/* Receiving into its own disks, or where a failover put them. */
	const char *storage = config_find_vm(f->d->cfg, f->vm) ?
	    f->acc->storage : rel.storage;
	/*
	 * Last cycle 0: what this host wrote after its last acknowledged
	 * cycle is unknown to the new primary, so its first cycle compares
	 * the disks (a resync) rather than trusting its tracker (P1).
	 */
	char store_dir[4096];
	snprintf(store_dir, sizeof(store_dir), "%s", storage);
	fault_point("demote-before-record");
	if ((f->rc = record_replica(f, &rel, f->hello.generation, f->identity,
	    store_dir, 0)) != 0)
		return;
	f->rel = rel;
}

static void
demote_done(void *arg)
{
	struct fo *f = arg;
	char err[512];
	if (f->rc == 0 && replica_add(f->d, &f->rel, err, sizeof(err)) == NULL) {
		snprintf(f->msg, sizeof(f->msg), "cannot open the replica of "
		    "%s: %s", f->vm, err);
		f->rc = RD_ERR_SYSTEM;
	}
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: %s", f->vm, f->msg);
		return;
	}
	fo_finish(f, 0, "%s: this host is now the replica of %s at generation %"
	    PRIu64, f->vm, f->identity, f->rel.generation);
}

static void
demote_retired(void *arg)
{
	struct fo *f = arg;
	if (f->pvm) {
		daemon_remove_pvm(f->d, f->pvm);
		pvm_free(f->pvm);
		f->pvm = NULL;
	}
	work_submit(job_demote, demote_done, f);
}

static void
demote_hook_done(void *arg)
{
	struct fo *f = arg;
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s", f->msg);
		return;
	}
	f->pvm = daemon_find_pvm(f->d, f->vm);
	if (f->pvm)
		pvm_retire(f->pvm, demote_retired, f);
	else
		demote_retired(f);
}

void
failover_demote(struct daemon *d, const struct wire_hello *h,
    const char *identity, const struct cfg_accept *acc, failover_done_fn done,
    void *arg)
{
	struct fo *f = fo_new(d, h->vm, done, arg);
	struct cat_rel rel;

	f->hello = *h;
	f->acc = acc;
	snprintf(f->identity, sizeof(f->identity), "%s", identity);
	if (fo_busy(f, replica_find(d, h->vm)))
		return;
	if (cat_rel_get(d->cat, h->vm, &rel) != 0 ||
	    rel.block_size != h->block_size || rel.ndisks != h->ndisks) {
		fo_finish(f, RD_ERR_STATE, "%s: the new primary's block size or "
		    "disks differ from this host's", h->vm);
		return;
	}
	for (uint16_t i = 0; i < h->ndisks; i++)
		if (strcmp(rel.disks[i].name, h->disks[i].name) != 0) {
			fo_finish(f, RD_ERR_STATE, "%s: disk %u is %s here, %s "
			    "on the new primary", h->vm, i, rel.disks[i].name,
			    h->disks[i].name);
			return;
		}
	struct rvm *rv = replica_find(d, h->vm);
	if (rv != NULL) {
		fo_finish(f, RD_ERR_STATE, "%s: a failover on this host is not "
		    "committed", h->vm);
		return;
	}
	work_submit(job_demote_hook, demote_hook_done, f);
}

/* --- planned failover, primary side -------------------------------------- */

static int probe(struct daemon *d, const char *to, const char *name,
    char *err, size_t errsz);

static void
job_planned_demote_hook(void *arg)
{
	struct fo *f = arg;
	struct cat_rel rel;
	int r;

	if ((r = fo_rel(f, &rel)) != 0)
		return;
	/* Before anything stops: the replica answers, with its certificate. */
	if ((r = probe(f->d, f->to, f->identity, f->msg, sizeof(f->msg))) != 0) {
		f->rc = r;
		return;
	}
	f->rel = rel;
	rel.generation++;
	marker_set_kind(f->d, f->vm, HANDOVER);
	if (run_role_hook(f, &rel, 0, rel.last_point) != 0) {
		snprintf(f->msg, sizeof(f->msg), "on_demote failed: %s",
		    f->hookmsg);
		f->rc = RD_ERR_PEER;
		/* Left as it was. */
		run_role_hook(f, &f->rel, 1, f->rel.last_point);
		marker_clear_kind(f->d, f->vm, HANDOVER);
	}
}

static void
job_restore_primary(void *arg)
{
	struct fo *f = arg;
	run_role_hook(f, &f->rel, 1, f->rel.last_point);
	marker_clear_kind(f->d, f->vm, HANDOVER);
}

static void
restore_done(void *arg)
{
	struct fo *f = arg;
	fo_finish(f, f->rc, "%s: planned failover failed, this host is still "
	    "the primary: %s", f->vm, f->msg);
}

/*
 * The old primary's disks become a replica at the final cycle: hash them
 * into the new replica's .digests (for verify), and tell whether they are
 * still exactly what the tracker recorded at that cycle.  If the guest
 * wrote after the cut (no on_demote hook stopped it), they are not, and
 * the first cycle from the new primary must compare (P1).  1 if clean.
 */
static int
disks_to_digests(struct fo *f, const struct cat_rel *rel)
{
	size_t n;
	char **paths = disk_paths(f->d, rel, &n);
	uint32_t bs = rel->block_size;
	size_t chunk = (4u << 20) < bs ? bs : (4u << 20);
	uint8_t *buf = xmalloc(chunk);
	int clean = 1;

	for (size_t i = 0; i < n; i++) {
		struct blockmap bm;
		struct wbuf dig;
		char *map = xasprintf("%s/tracker/%s/%s.map",
		    f->d->cfg->state_dir, rel->vm, rel->disks[i].name);
		char *dir = xasprintf("%s/%s/.digests", rel->storage, rel->vm);
		char *dst = xasprintf("%s/%s", dir, rel->disks[i].name);
		int have = bm_load(map, &bm) == 0;
		int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
		struct stat sb;
		wb_init(&dig);
		if (fd < 0 || fstat(fd, &sb) != 0) {
			clean = 0;
		} else {
			uint64_t size = (uint64_t)sb.st_size;
			if (!have || bm.disk_size != size ||
			    bm.cycle != rel->last_cycle)
				clean = 0;
			for (uint64_t off = 0; off < size; off += chunk) {
				size_t k = size - off < chunk ?
				    (size_t)(size - off) : chunk;
				if (util_pread_full(fd, buf, k, (off_t)off) != 0) {
					clean = 0;
					break;
				}
				size_t nb = (k + bs - 1) / bs;
				struct digest *d = (struct digest *)wb_reserve(&dig,
				    nb * sizeof(*d));
				digest_blocks(buf, k, bs, d);
				if (have && clean && memcmp(d, &bm.d[off / bs],
				    nb * sizeof(*d)) != 0)
					clean = 0;
				dig.len += nb * sizeof(*d);
			}
			if (util_mkdir_p(dir, 0700) != 0 ||
			    util_write_atomic(dst, dig.p, dig.len) != 0)
				log_warnx("%s: cannot write %s; verify fails until "
				    "the next resync", rel->vm, dst);
		}
		if (fd >= 0)
			close(fd);
		if (have)
			bm_free(&bm);
		wb_free(&dig);
		free(map);
		free(dir);
		free(dst);
		free(paths[i]);
	}
	free(paths);
	free(buf);
	return clean;
}

static void
job_planned_demote(void *arg)
{
	struct fo *f = arg;
	struct cat_rel rel;
	int r;

	if ((r = fo_rel(f, &rel)) != 0)
		return;
	fault_point("primary-after-promoted");
	if (rel.role != CAT_ROLE_PRIMARY ||
	    rel.generation != f->rel.generation) {
		/* Changed since the handover began (it cannot, one role
		 * change at a time): record nothing over it. */
		snprintf(f->msg, sizeof(f->msg), "the relationship changed "
		    "during the handover (now %s at generation %" PRIu64 ")",
		    rel.role == CAT_ROLE_PRIMARY ? "primary" : "replica",
		    rel.generation);
		f->rc = RD_ERR_STATE;
		return;
	}
	uint64_t gen = rel.generation + 1, cycle = rel.last_cycle;
	snprintf(rel.storage, sizeof(rel.storage), "%s", f->acc->storage);
	if (!disks_to_digests(f, &rel)) {
		log_warnx("%s: the disks changed after the final cycle (was the "
		    "guest stopped?): the new primary's first cycle compares "
		    "them", f->vm);
		cycle = 0;
	}
	f->rc = record_replica(f, &rel, gen, f->acc->name, f->acc->storage,
	    cycle);
	if (f->rc == 0)
		marker_clear_kind(f->d, f->vm, HANDOVER);
	f->rel = rel;
}

static void
planned_demote_done(void *arg)
{
	struct fo *f = arg;
	char err[512];
	if (f->rc == 0 && replica_add(f->d, &f->rel, err, sizeof(err)) == NULL) {
		snprintf(f->msg, sizeof(f->msg), "cannot open the replica: %s",
		    err);
		f->rc = RD_ERR_SYSTEM;
	}
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: handed over, but recording this host "
		    "as the replica failed: %s", f->vm, f->msg);
		return;
	}
	fo_finish(f, 0, "%s: handed over to %s at generation %" PRIu64 "; this "
	    "host is now its replica", f->vm, f->acc->name, f->rel.generation);
}

static void
planned_retired(void *arg)
{
	struct fo *f = arg;
	daemon_remove_pvm(f->d, f->pvm);
	pvm_free(f->pvm);
	f->pvm = NULL;
	work_submit(job_planned_demote, planned_demote_done, f);
}

static void
handed_over(void *arg, int rc, const char *error)
{
	struct fo *f = arg;
	if (rc == 0) {
		pvm_retire(f->pvm, planned_retired, f);
		return;
	}
	f->rc = rc;
	snprintf(f->msg, sizeof(f->msg), "%s", error ? error : "failed");
	if (rc == RD_ERR_STATE) {
		/* PROMOTE went out and no answer came: the replica may have
		 * taken over.  Starting the guest here could run it twice;
		 * the next cycle tells (confirm_handover). */
		arm_confirm(f->d, f->pvm);
		fo_finish(f, rc, "%s: the handover's outcome is unknown (%s); "
		    "the next cycle tells: if the other host took over, this "
		    "host becomes its replica, else on_promote runs here again",
		    f->vm, f->msg);
		return;
	}
	work_submit(job_restore_primary, restore_done, f);
}

static void
planned_hook_done(void *arg)
{
	struct fo *f = arg;
	int r;
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: planned failover refused, this host is "
		    "still the primary: %s", f->vm, f->msg);
		return;
	}
	f->pvm = daemon_find_pvm(f->d, f->vm);
	if (f->pvm == NULL || (r = pvm_handover(f->pvm, f->listen, handed_over,
	    f)) != 0) {
		snprintf(f->msg, sizeof(f->msg), "the VM cannot hand over now");
		f->rc = RD_ERR_STATE;
		work_submit(job_restore_primary, restore_done, f);
	}
}

void
failover_planned(struct daemon *d, const char *vm, failover_done_fn done,
    void *arg)
{
	struct fo *f = fo_new(d, vm, done, arg);
	struct pvm *pv = daemon_find_pvm(d, vm);

	if (fo_busy(f, NULL))
		return;
	if (pv == NULL) {
		fo_finish(f, RD_ERR_NOT_FOUND, replica_find(d, vm) ?
		    "%s is a replica on this host: a planned failover runs on "
		    "its primary" : "no VM named %s on this host", vm);
		return;
	}
	const struct cfg_vm *cv = pvm_cfg(pv);
	if (cv->tracker == TRACKER_QEMU) {
		fo_finish(f, RD_ERR_STATE, "%s: tracker qemu names QEMU block "
		    "nodes, which this host cannot receive into: a planned "
		    "failover is not possible (stop the guest, then fail over "
		    "on the replica with replctl failover %s)", vm, vm);
		return;
	}
	if (!pvm_has_replica(pv)) {
		fo_finish(f, RD_ERR_STATE, "%s has no replica to hand over to "
		    "(replctl reverse %s --to HOST:PORT first)", vm, vm);
		return;
	}
	if (d->cfg->listen == NULL || d->server_ctx == NULL) {
		fo_finish(f, RD_ERR_STATE, "%s: this host has no `listen` in "
		    "[daemon]: after a planned failover it must receive %s from "
		    "%s", vm, vm, cv->replica);
		return;
	}
	f->acc = config_match_accept(d->cfg, cv->replica_name, vm);
	if (f->acc == NULL) {
		fo_finish(f, RD_ERR_STATE, "%s: no [accept %s] entry whose vms "
		    "match %s: after a planned failover this host must accept "
		    "it from %s", vm, cv->replica_name, vm, cv->replica_name);
		return;
	}
	struct pvm_status ps;
	pvm_status(pv, &ps);
	if (ps.state == PVM_FENCED) {
		fo_finish(f, RD_ERR_FENCED, "%s: fenced: this host is a stale "
		    "primary", vm);
		return;
	}
	/* The final cycle runs with the guest stopped: the replica must
	 * be a recent copy, so that it is short. */
	if (ps.last_point == 0 || ps.state == PVM_ERROR) {
		fo_finish(f, RD_ERR_STATE, "%s: the replica is not up to date "
		    "(%s); run replctl sync %s --wait first", vm,
		    ps.last_point == 0 ? "no cycle has reached it yet" :
		    ps.error, vm);
		return;
	}
	snprintf(f->listen, sizeof(f->listen), "%s", d->cfg->listen);
	snprintf(f->identity, sizeof(f->identity), "%s", cv->replica_name);
	snprintf(f->to, sizeof(f->to), "%s", cv->replica);
	log_info("%s: planned failover to %s requested", vm, cv->replica);
	work_submit(job_planned_demote_hook, planned_hook_done, f);
}

/* --- planned failover, replica side -------------------------------------- */

/* The replica's digests are the new primary's tracker state: the first
 * cycle back sends only what the guest writes from now on. */
static int
digests_to_maps(struct fo *f, struct store *st, const struct cat_rel *rel)
{
	char *dir = xasprintf("%s/tracker/%s", f->d->cfg->state_dir, rel->vm);
	int r = util_mkdir_p(dir, 0700);
	for (uint16_t i = 0; i < rel->ndisks && r == 0; i++) {
		char *dg = xasprintf("%s/%s/.digests/%s", rel->storage, rel->vm,
		    rel->disks[i].name);
		char *map = xasprintf("%s/%s.map", dir, rel->disks[i].name);
		uint8_t *data = NULL;
		size_t len = 0;
		struct blockmap bm;
		bm_init(&bm, rel->block_size, rel->disks[i].size);
		r = util_read_file(dg, (size_t)1 << 34, &data, &len);
		if (r == 0 && len != bm.nblocks * sizeof(struct digest))
			r = RD_ERR_CORRUPT;
		if (r == 0) {
			memcpy(bm.d, data, len);
			bm.cycle = rel->last_cycle;
			r = bm_save(map, &bm);
		}
		if (r != 0)
			unlink(map);	/* unknown: the disk is compared */
		bm_free(&bm);
		free(data);
		free(dg);
		free(map);
	}
	free(dir);
	(void)st;
	return r;
}

static void
job_promote_planned(void *arg)
{
	struct fo *f = arg;
	struct store *st = rvm_store(f->rvm);
	struct cat_rel rel;
	int r;

	store_rel(st, &rel);
	if (digests_to_maps(f, st, &rel) != 0)
		log_warnx("%s: the replica's digests are not usable as tracker "
		    "state; the first cycle back compares the disks", f->vm);
	if ((r = fo_rel(f, &rel)) != 0)
		return;
	rel.role = CAT_ROLE_PRIMARY;
	rel.generation = f->promote.generation;
	snprintf(rel.peer, sizeof(rel.peer), "%s", f->promote.listen);
	snprintf(rel.peer_name, sizeof(rel.peer_name), "%s", f->identity);
	rel.resync = 0;
	rel.fenced[0] = '\0';
	rel.at_point = 0;
	marker_set(f->d, f->vm);
	if ((r = cat_rel_put(f->d->cat, &rel)) != 0) {
		marker_clear(f->d, f->vm);
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
		f->rc = r;
		return;
	}
	fault_point("replica-after-promote-record");
	f->rel = rel;
}

static void
job_promote_hook(void *arg)
{
	struct fo *f = arg;
	if (run_role_hook(f, &f->rel, 1, f->rel.last_point) != 0)
		f->hook_failed = 1;
	marker_clear(f->d, f->vm);
}

static void
promote_hook_done(void *arg)
{
	struct fo *f = arg;
	if (f->hook_failed)
		log_warnx("%s: on_promote failed: %s", f->vm, f->hookmsg);
	else
		log_info("%s: this host is now the primary (generation %" PRIu64
		    "), replicating to %s", f->vm, f->rel.generation,
		    f->rel.peer);
	fo_free(f);
}

static void
promote_planned_idle(void *arg)
{
	struct fo *f = arg;
	replica_remove(f->d, f->rvm);
	f->rvm = NULL;
	start_primary(f->d, &f->rel);
	work_submit(job_promote_hook, promote_hook_done, f);
}

static void
promote_planned_done(void *arg)
{
	struct fo *f = arg;
	failover_done_fn done = f->done;
	void *darg = f->arg;
	f->done = NULL;
	if (f->rc != 0) {
		rvm_block(f->rvm, 0);
		done(darg, f->rc, f->msg);
		fo_free(f);
		return;
	}
	/* PROMOTED goes out; the session lets go of the VM. */
	done(darg, 0, NULL);
	rvm_when_idle(f->rvm, promote_planned_idle, f);
}

void
failover_promote_planned(struct daemon *d, struct rvm *vm,
    const char *identity, const struct wire_promote *m,
    failover_done_fn done, void *arg)
{
	struct fo *f = fo_new(d, "", done, arg);
	struct cat_rel rel;
	store_rel(rvm_store(vm), &rel);
	snprintf(f->vm, sizeof(f->vm), "%s", rel.vm);
	f->rvm = vm;
	f->promote = *m;
	snprintf(f->identity, sizeof(f->identity), "%s", identity);
	if (rvm_in_use(vm) || fo_claim(f) != 0) {
		failover_done_fn dn = f->done;
		f->done = NULL;
		fo_finish(f, RD_ERR_BUSY, "busy");
		dn(arg, RD_ERR_BUSY, "a test failover, verify, prune or role "
		    "change of the VM is running here");
		return;
	}
	rvm_block(vm, 1);
	work_submit(job_promote_planned, promote_planned_done, f);
}

/* --- reverse -------------------------------------------------------------- */

/* Can this host reach HOST:PORT and does it show the right certificate? */
static int
probe(struct daemon *d, const char *to, const char *name, char *err,
    size_t errsz)
{
	char host[HOST_MAX_LEN + 1], port[8];
	uint16_t p;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	int fd = -1, r;
	SSL *ssl = NULL;

	if (util_parse_hostport(to, host, sizeof(host), &p) != 0) {
		snprintf(err, errsz, "%s is not HOST:PORT", to);
		return RD_ERR_INVALID;
	}
	snprintf(port, sizeof(port), "%u", p);
	if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
		snprintf(err, errsz, "cannot resolve %s: %s", host,
		    gai_strerror(r));
		return RD_ERR_PEER;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
	    0);
	r = fd < 0 ? -1 : connect(fd, res->ai_addr, res->ai_addrlen);
	if (r != 0 && errno == EINPROGRESS) {
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		r = poll(&pf, 1, PROBE_TIMEOUT_MS);
		if (r == 0)
			errno = ETIMEDOUT;
		r = r == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr,
		    &sl) == 0 && soerr == 0 ? 0 : -1;
		if (soerr)
			errno = soerr;
	}
	freeaddrinfo(res);
	if (r != 0) {
		snprintf(err, errsz, "cannot connect to %s: %s", to,
		    strerror(errno));
		goto fail;
	}
	int flags = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
	struct timeval tv = { PROBE_TIMEOUT_MS / 1000, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if ((ssl = SSL_new(d->client_ctx)) == NULL) {
		snprintf(err, errsz, "SSL_new failed");
		goto fail;
	}
	X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
	if (X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1) {
		SSL_set1_host(ssl, name);
		SSL_set_tlsext_host_name(ssl, name);
	}
	SSL_set_fd(ssl, fd);
	ERR_clear_error();
	if (SSL_connect(ssl) != 1) {
		long v = SSL_get_verify_result(ssl);
		snprintf(err, errsz, "TLS with %s failed: %s", to,
		    v != X509_V_OK ? X509_verify_cert_error_string(v) :
		    "handshake refused");
		goto fail;
	}
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	return 0;
fail:
	if (ssl)
		SSL_free(ssl);
	if (fd >= 0)
		close(fd);
	return RD_ERR_PEER;
}

static void
job_reverse(void *arg)
{
	struct fo *f = arg;
	struct cat_rel rel;
	int r;

	if ((r = probe(f->d, f->to, f->name, f->msg, sizeof(f->msg))) != 0) {
		f->rc = r;
		return;
	}
	if (f->rvm && (r = store_rewind_commit(rvm_store(f->rvm), NULL, f->msg,
	    sizeof(f->msg))) != 0) {
		f->rc = r;
		return;
	}
	if ((r = fo_rel(f, &rel)) != 0)
		return;
	snprintf(rel.peer, sizeof(rel.peer), "%s", f->to);
	snprintf(rel.peer_name, sizeof(rel.peer_name), "%s", f->name);
	rel.resync = 1;
	if ((r = cat_rel_put(f->d->cat, &rel)) != 0) {
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
		f->rc = r;
		return;
	}
	f->rel = rel;
}

static void
reverse_synced(void *arg, uint64_t point, const char *error)
{
	struct fo *f = arg;
	if (point == 0) {
		fo_finish(f, RD_ERR_PEER, "%s: replicating to %s, but the first "
		    "cycle failed: %s (it is retried)", f->vm, f->to, error);
		return;
	}
	fo_finish(f, 0, "%s: %s is now the replica; point %" PRIu64, f->vm,
	    f->to, point);
}

static void
reverse_retired(void *arg)
{
	struct fo *f = arg;
	daemon_remove_pvm(f->d, f->pvm);
	pvm_free(f->pvm);
	struct pvm *pv = start_primary(f->d, &f->rel);
	if (f->wait) {
		if (pvm_resync(pv, reverse_synced, f) != 0)
			fo_finish(f, RD_ERR_STATE, "%s: cannot start the first "
			    "cycle", f->vm);
		return;
	}
	pvm_resync(pv, NULL, NULL);
	fo_finish(f, 0, "%s: replicating to %s (resynchronising first)", f->vm,
	    f->to);
}

static void
reverse_done(void *arg)
{
	struct fo *f = arg;
	if (f->rc != 0) {
		if (f->rvm)
			rvm_block(f->rvm, 0);
		fo_finish(f, f->rc, "%s: reverse refused, nothing changed: %s",
		    f->vm, f->msg);
		return;
	}
	if (f->rvm) {
		replica_remove(f->d, f->rvm);
		f->rvm = NULL;
	}
	pvm_retire(f->pvm, reverse_retired, f);
}

void
failover_reverse(struct daemon *d, const char *vm, const char *to,
    const char *name, int wait, failover_done_fn done, void *arg)
{
	struct fo *f = fo_new(d, vm, done, arg);
	char host[HOST_MAX_LEN + 1];
	uint16_t port;

	f->wait = wait;
	f->pvm = daemon_find_pvm(d, vm);
	if (fo_busy(f, replica_find(d, vm)))
		return;
	if (f->pvm == NULL) {
		fo_finish(f, RD_ERR_NOT_FOUND, replica_find(d, vm) ? "%s is a "
		    "replica on this host: reverse runs on its new primary" :
		    "no VM named %s on this host", vm);
		return;
	}
	if (util_parse_hostport(to, host, sizeof(host), &port) != 0) {
		fo_finish(f, RD_ERR_INVALID, "%s: --to %s is not HOST:PORT", vm,
		    to);
		return;
	}
	const struct cfg_vm *cv = config_find_vm(d->cfg, vm);
	if (cv && strcmp(cv->replica, to) != 0) {
		fo_finish(f, RD_ERR_STATE, "%s: its replica is set by [vm %s] "
		    "in %s (replica = %s)", vm, vm, d->cfg->path, cv->replica);
		return;
	}
	snprintf(f->to, sizeof(f->to), "%s", to);
	struct cat_rel rel;
	if (cat_rel_get(d->cat, vm, &rel) != 0) {
		fo_finish(f, RD_ERR_STATE, "%s: not in the catalog", vm);
		return;
	}
	snprintf(f->name, sizeof(f->name), "%s", name ? name : cv ?
	    cv->replica_name : rel.peer_name[0] ? rel.peer_name : host);
	f->rvm = replica_find(d, vm);
	if (f->rvm && !rvm_promoted(f->rvm))
		f->rvm = NULL;
	if (f->rvm)
		rvm_block(f->rvm, 1);
	log_info("%s: reverse to %s (%s) requested", vm, to, f->name);
	work_submit(job_reverse, reverse_done, f);
}
