/*
 * failover.c — role changes: start-up, unplanned and planned failover,
 * commit, reverse, reassign, and the replica side of a planned failover
 * and of a demotion (failover.h).
 *
 * role.h decides whether a change may happen and what it makes of the
 * relationship; this file carries it out.  Each change holds the VM in
 * the VM table for its whole length (one change at a time, no store job
 * meanwhile) and runs as a chain of steps: loop-thread steps swap the
 * VM's role objects (struct pvm, struct rvm), worker jobs do what touches
 * disks, the catalog or a hook.  The catalog is the record: a role or
 * generation changes there in one transaction, so a crash leaves the old
 * role or the new one; the VM table's view follows each write.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "blockmap.h"
#include "catalog.h"
#include "config.h"
#include "err.h"
#include "failover.h"
#include "fault.h"
#include "hook.h"
#include "layout.h"
#include "log.h"
#include "primary.h"
#include "replica.h"
#include "role.h"
#include "store.h"
#include "svc.h"
#include "tracker.h"
#include "util.h"
#include "vmdom.h"
#include "vmtab.h"
#include "work.h"
#include "xmalloc.h"

#define PROBE_TIMEOUT_MS	5000

/* One role change under way. */
struct fo {
	struct svc		*svc;
	struct vme		*e;
	char			 vm[NAME_MAX_LEN + 1];
	failover_done_fn	 done;
	void			*arg;
	uint64_t		 point;
	int			 wait;
	int			 rc;
	int			 hook_failed;
	char			 msg[2560];
	char			 hookmsg[512];
	struct cat_rel		 rel;
	char			 to[HOST_MAX_LEN + 8];
	char			 name[HOST_MAX_LEN + 1];
	char			 identity[HOST_MAX_LEN + 1];
	char			 listen[HOST_MAX_LEN + 8];
	char			 storage[sizeof(((struct cat_rel *)0)->storage)];
	const struct cfg_accept	*acc;
	struct wire_hello	 hello;
	struct wire_promote	 promote;
	int			 claimed;	/* holds the VM (vt_claim) */
	int			 promoted;	/* the new role is recorded */
	char			*def;		/* the point's domain XML; NULL */
	uint64_t		 def_point;	/* ... of this point */
	char			 dommsg[2048];	/* what vmdom.h did; "" */
	int			 dom_failed;
	enum vmdom_stop		 dom_stopped;	/* what a demotion did */
};

static struct fo *
fo_new(struct svc *svc, struct vme *e, const char *vm, failover_done_fn done,
    void *arg)
{
	struct fo *f = xcalloc(1, sizeof(*f));
	f->svc = svc;
	f->e = e;
	snprintf(f->vm, sizeof(f->vm), "%s", vm);
	f->done = done;
	f->arg = arg;
	return f;
}

/* Let go of the VM: its role objects carry on. */
static void
fo_release(struct fo *f)
{
	if (f->claimed) {
		f->claimed = 0;
		vt_release(f->e);
	}
}

static void
fo_free(struct fo *f)
{
	fo_release(f);
	free(f->def);
	free(f);
}

static void
fo_finish(struct fo *f, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
fo_finish(struct fo *f, int rc, const char *fmt, ...)
{
	char msg[4096];
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

/* Take the VM for the change, or finish f as busy (-1). */
static int
fo_claim(struct fo *f)
{
	if (vt_in_use(f->e)) {
		fo_finish(f, RD_ERR_BUSY, "%s: a test failover, verify or prune "
		    "of it is running; try again when it is done", f->vm);
		return -1;
	}
	if (vt_claim(f->e) != 0) {
		fo_finish(f, RD_ERR_BUSY, "%s: another role change of it is "
		    "under way", f->vm);
		return -1;
	}
	f->claimed = 1;
	return 0;
}

/* The VM's relationship for a job; on failure f->rc and f->msg say why. */
static int
fo_rel(struct fo *f, struct cat_rel *rel)
{
	int r = cat_rel_get(f->svc->cat, f->vm, rel);
	if (r != 0) {
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
		f->rc = r;
	}
	return r;
}

/* Write rel (a job); on failure f->rc and f->msg say why. */
static int
fo_put(struct fo *f, const struct cat_rel *rel)
{
	int r = cat_rel_put(f->svc->cat, rel);
	if (r != 0) {
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
		f->rc = r;
	}
	return r;
}

/* The words for a command role_command() refused. */
static void
fo_refused(struct fo *f, const struct role_decision *d, const char *what)
{
	const char *vm = f->vm;
	switch (d->why) {
	case ROLE_WHY_NO_VM:
		fo_finish(f, RD_ERR_NOT_FOUND, "no VM named %s on this host",
		    vm);
		break;
	case ROLE_WHY_IS_PRIMARY:
		fo_finish(f, RD_ERR_STATE, "%s is the primary on this host "
		    "(generation %" PRIu64 "): %s runs on its replica%s%s%s",
		    vm, d->generation, what, strcmp(what, "an unplanned "
		    "failover") == 0 ? "; here use failover " : "",
		    strcmp(what, "an unplanned failover") == 0 ? vm : "",
		    strcmp(what, "an unplanned failover") == 0 ? " --planned" :
		    "");
		break;
	case ROLE_WHY_IS_REPLICA:
		fo_finish(f, RD_ERR_NOT_FOUND, "%s is a replica on this host: %s "
		    "runs on its %sprimary", vm, what, strcmp(what, "reverse") ==
		    0 ? "new " : "");
		break;
	case ROLE_WHY_BUSY:
		fo_finish(f, RD_ERR_BUSY, "%s: another role change of it is "
		    "under way", vm);
		break;
	case ROLE_WHY_NOTHING_TO_COMMIT:
		fo_finish(f, RD_ERR_STATE, "%s: no failover to commit on this "
		    "host", vm);
		break;
	case ROLE_WHY_UNCOMMITTED:
		fo_finish(f, RD_ERR_STATE, "%s: its failover to this host is not "
		    "committed (replctl failover %s --commit first)", vm, vm);
		break;
	case ROLE_WHY_FENCED:
		fo_finish(f, RD_ERR_FENCED, "%s: fenced: this host is a stale "
		    "primary", vm);
		break;
	case ROLE_WHY_NOT_ACCEPTED:
		fo_finish(f, RD_ERR_STATE, "%s: no [accept %s] entry admits %s "
		    "with the storage it is in: add one (vms matching %s, "
		    "storage %s) first", vm, f->identity, vm, vm, f->storage);
		break;
	default:
		fo_finish(f, RD_ERR_STATE, "%s: %s refused (generation %"
		    PRIu64 ")", vm, what, d->generation);
		break;
	}
}

/*
 * Can an operator's command go on?  role.c decided d; the VM must have
 * the role object the command works on (VT_REPLICA: its store).  0, or
 * f is finished with the reason.
 */
static int
fo_usable(struct fo *f, const struct role_decision *d, const char *what,
    enum vt_slot need)
{
	if (d->verdict == ROLE_REFUSE) {
		fo_refused(f, d, what);
		return -1;
	}
	if ((need == VT_REPLICA ? (void *)vt_rvm(f->e) :
	    (void *)vt_pvm(f->e)) == NULL) {
		fo_finish(f, RD_ERR_STATE, "%s: %s", f->vm, vt_note(f->e)[0] ?
		    vt_note(f->e) : "not available on this host");
		return -1;
	}
	return 0;
}

/* The VM's entry and role view; f finished (NULL returned) if none. */
static struct vme *
fo_entry(struct svc *svc, const char *vm, struct role_view *view)
{
	struct vme *e = vt_find(svc->vt, vm);
	if (e != NULL)
		vt_view(e, view);
	else
		role_view_of(NULL, view);
	return e;
}

/* --- where the VM's files are on this host ----------------------------- */

/*
 * The files that hold the VM's disks on this host when it receives them
 * (as their replica, or in the store of an uncommitted failover):
 *   receive_into  of its [vm] section, when set;
 *   disk          of its [vm] section, for the trackers that read files
 *                 (scan, reflink), when their names are the relationship's;
 *   STORAGE/VM/DISK otherwise (tracker qemu's disks are block nodes;
 *                 tracker libvirt's are the domain's images, often qcow2,
 *                 which raw data must not overwrite).
 * NULL stands for STORAGE/VM/DISK; else an array borrowed from cfg.
 */
static char *const *
received_files(const struct config *cfg, const struct cat_rel *rel)
{
	const struct cfg_vm *cv = config_find_vm(cfg, rel->vm);
	if (cv == NULL || cv->ndisks != rel->ndisks)
		return NULL;
	for (size_t i = 0; i < cv->ndisks; i++)
		if (strcmp(cv->disk_names[i], rel->disks[i].name) != 0)
			return NULL;
	if (cv->nreceive > 0)
		return cv->receive_into;
	if (cv->tracker == TRACKER_QEMU || cv->tracker == TRACKER_LIBVIRT)
		return NULL;
	return cv->disks;
}

/* The same paths, allocated (STORAGE/VM/DISK spelt out with storage). */
static char **
disk_paths(const struct config *cfg, const struct cat_rel *rel,
    const char *storage, size_t *n)
{
	char *const *files = received_files(cfg, rel);
	char **v = xcalloc(rel->ndisks + 1, sizeof(char *));
	for (uint16_t i = 0; i < rel->ndisks; i++)
		v[i] = files ? xstrdup(files[i]) : xasprintf("%s/%s/%s",
		    storage, rel->vm, rel->disks[i].name);
	*n = rel->ndisks;
	return v;
}

static void
free_paths(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/*
 * Can this host receive the VM into its files (receive_into or its disk
 * files; STORAGE/VM is made as needed)?  Checked before a role change
 * stops anything: 0, or a message in err.
 */
static int
receivable(const struct config *cfg, const struct cat_rel *rel, char *err,
    size_t errsz)
{
	char *const *files = received_files(cfg, rel);
	for (uint16_t i = 0; files != NULL && i < rel->ndisks; i++) {
		char *dir = xstrdup(files[i]);
		char *slash = strrchr(dir, '/');
		const char *why = NULL;
		struct stat sb;
		*(slash == dir ? slash + 1 : slash) = '\0';
		if (stat(dir, &sb) != 0)
			why = strerror(errno);
		else if (!S_ISDIR(sb.st_mode))
			why = "not a directory";
		else if (access(dir, W_OK) != 0)
			why = strerror(errno);
		if (why != NULL)
			snprintf(err, errsz, "%s cannot be received into %s: "
			    "directory %s: %s", rel->vm, files[i], dir, why);
		free(dir);
		if (why != NULL)
			return RD_ERR_SYSTEM;
		if (stat(files[i], &sb) == 0 && !S_ISREG(sb.st_mode) &&
		    !S_ISBLK(sb.st_mode)) {
			snprintf(err, errsz, "%s cannot be received into %s: not "
			    "a file or block device", rel->vm, files[i]);
			return RD_ERR_SYSTEM;
		}
	}
	return 0;
}

/*
 * STORAGE, once this host receives the VM from acc's host: a VM primary
 * here by a failover keeps the storage its files are in; any other the
 * [accept] entry's.
 */
static const char *
replica_storage(const struct config *cfg, const struct cat_rel *rel,
    const struct cfg_accept *acc)
{
	if (config_find_vm(cfg, rel->vm) == NULL && rel->storage[0] != '\0')
		return rel->storage;
	return acc->storage;
}

/* The [vm] of a VM that is primary here by a failover and has no [vm]
 * section: its disks are STORAGE/VM/DISK, its replica rel->peer. */
static struct cfg_vm *
catalog_cfg(const struct config *cfg, const struct cat_rel *rel)
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
	/* A libvirt domain a promotion defined here runs on these files:
	 * tracker libvirt reads it from consistent cuts (and sends its
	 * definition back), as on the host it came from. */
	char dom[256];
	if (vmdom_recorded(cfg, rel->vm, dom, sizeof(dom)) == 0) {
		v->tracker = TRACKER_LIBVIRT;
		v->domain = xstrdup(dom);
		v->libvirt_uri = xstrdup(acc && acc->libvirt_uri ?
		    acc->libvirt_uri : CONFIG_DEFAULT_LIBVIRT_URI);
		v->disks_chosen = 1;
	}
	if (acc && acc->on_promote)
		v->on_promote = xstrdup(acc->on_promote);
	if (acc && acc->on_demote)
		v->on_demote = xstrdup(acc->on_demote);
	return v;
}

/* The primary of a VM that is primary here (e has no pvm yet); NULL,
 * with a note on e, if its tracker state cannot be opened. */
static struct pvm *
start_primary(struct svc *svc, struct vme *e, const struct cat_rel *rel)
{
	const struct cfg_vm *cv = config_find_vm(svc->cfg, rel->vm);
	struct pvm *pv = cv != NULL ? pvm_new(svc, e, cv, rel) :
	    pvm_new_owned(svc, e, catalog_cfg(svc->cfg, rel), rel);
	if (pv == NULL)
		vt_set_note(e, "primary here, but its tracker state cannot be "
		    "opened (see the log); restart replicad once it can");
	return pv;
}

/* Open the VM's store and attach it to e; 0, or f->rc and f->msg. */
static int
open_replica(struct fo *f, const struct cat_rel *rel)
{
	char err[512];
	if (replica_open(f->svc, f->e, rel, received_files(f->svc->cfg, rel),
	    err, sizeof(err)) != NULL)
		return 0;
	snprintf(f->msg, sizeof(f->msg), "cannot open the replica of %s: %s",
	    rel->vm, err);
	vt_set_note(f->e, f->msg);
	f->rc = RD_ERR_SYSTEM;
	return f->rc;
}

/* --- hooks ----------------------------------------------------------------- */

/* A hook for the VM: [vm]'s if this host has one, else the [accept]'s. */
static const char *
role_hook(const struct config *cfg, const char *vm, const char *peer_identity,
    int promote)
{
	const struct cfg_vm *cv = config_find_vm(cfg, vm);
	if (cv)
		return promote ? cv->on_promote : cv->on_demote;
	const struct cfg_accept *acc = config_match_accept(cfg, peer_identity,
	    vm);
	if (acc)
		return promote ? acc->on_promote : acc->on_demote;
	return NULL;
}

/* The other host, whose [accept] entry speaks for the VM here when it
 * has no [vm] section (hooks, its domain). */
static const char *
fo_peer(const struct fo *f, const struct cat_rel *rel, int promote)
{
	return promote || f->identity[0] == '\0' ? rel->peer_name :
	    f->identity;
}

/* STORAGE of rel on this host. */
static const char *
fo_storage(const struct fo *f, const struct cat_rel *rel)
{
	return rel->storage[0] || f->storage[0] == '\0' ? rel->storage :
	    f->storage;
}

/* on_promote (promote) or on_demote with rel's disks on this host. */
static int
run_role_hook(struct fo *f, const struct cat_rel *rel, int promote,
    uint64_t point)
{
	const char *peer = fo_peer(f, rel, promote);
	const char *cmd = role_hook(f->svc->cfg, rel->vm, peer, promote);
	const char *storage = fo_storage(f, rel);
	size_t n;
	if (cmd == NULL)
		return 0;
	char **paths = disk_paths(f->svc->cfg, rel, storage, &n);
	int r = hook_run_role(rel->vm, promote ? "on_promote" : "on_demote",
	    cmd, promote ? "primary" : "replica", rel->generation, point,
	    paths, n, f->hookmsg, sizeof(f->hookmsg));
	free_paths(paths, n);
	return r;
}

/* --- the VM's libvirt domain (vmdom.h): before the hooks -------------- */

/*
 * The domain XML of point (0: the newest) from the VM's store: into
 * f->def, or NULL if the VM has none.  A definition that exists but
 * cannot be read is a failure of the domain's part (f->dommsg).
 */
static void
point_def(struct fo *f, struct store *st, uint64_t point)
{
	free(f->def);
	f->def = NULL;
	f->def_point = point;
	int r = store_point_definition(st, point, &f->def);
	if (r != 0 && r != RD_ERR_NOT_FOUND) {
		snprintf(f->dommsg, sizeof(f->dommsg), "cannot read the domain "
		    "definition of point %" PRIu64 ": %s", point,
		    rd_strerror(r));
		f->dom_failed = 1;
	}
	if (r != 0) {
		free(f->def);
		f->def = NULL;
	}
}

static void
dom_log(struct fo *f, int r)
{
	if (r != 0) {
		f->dom_failed = 1;
		log_warnx("%s: %s", f->vm, f->dommsg);
	} else if (f->dommsg[0] != '\0') {
		log_info("%s: %s", f->vm, f->dommsg);
	}
}

/* Define and start the domain of f->def on rel's disks here. */
static void
dom_promote(struct fo *f, const struct cat_rel *rel)
{
	const char *storage = fo_storage(f, rel);
	size_t n;
	char **paths;
	struct domxml_disk *d;

	if (f->def == NULL)
		return;
	paths = disk_paths(f->svc->cfg, rel, storage, &n);
	d = xcalloc(n + 1, sizeof(*d));
	for (size_t i = 0; i < n; i++) {
		d[i].target = rel->disks[i].name;
		d[i].path = paths[i];
	}
	f->dom_failed = 0;
	dom_log(f, vmdom_promote(f->svc->cfg, rel->vm, fo_peer(f, rel, 1),
	    f->def, d, n, storage, f->dommsg, sizeof(f->dommsg)));
	free(d);
	free_paths(paths, n);
}

/* Shut the VM's domain here down (f->dom_stopped says how). */
static int
dom_demote(struct fo *f, const struct cat_rel *rel)
{
	int r = vmdom_demote(f->svc->cfg, rel->vm, fo_peer(f, rel, 0),
	    &f->dom_stopped, f->dommsg, sizeof(f->dommsg));
	if (r == 0 && f->dom_stopped == VMDOM_DESTROYED)
		log_warnx("%s: %s", f->vm, f->dommsg);
	else
		dom_log(f, r);
	return r;
}

/* Start it again: always (force), or if start_on_promote. */
static void
dom_restart(struct fo *f, const struct cat_rel *rel, int force)
{
	dom_log(f, vmdom_restart(f->svc->cfg, rel->vm, fo_peer(f, rel, 0),
	    force, f->dommsg, sizeof(f->dommsg)));
}

/* "; " and what the domain's part did, for the command's message. */
static const char *
dom_note(const struct fo *f, char *buf, size_t bufsz)
{
	if (f->dommsg[0] == '\0')
		return "";
	if (f->dom_failed)
		snprintf(buf, bufsz, "; its domain is not up: %s (the disks "
		    "are this host's all the same: start the guest by hand)",
		    f->dommsg);
	else
		snprintf(buf, bufsz, "; %s", f->dommsg);
	return buf;
}

/*
 * on_promote must run once a promotion is recorded, even if the daemon
 * dies in between: a marker (layout.h) is written before the catalog
 * changes and removed once the hook ran; start-up runs the hook of a
 * marker whose VM is primary, and drops the others.
 *
 * Likewise the handover marker stands for a planned failover under way
 * on the old primary, from before on_demote until its end.  If it is cut
 * off, the next replica that welcomes this host at its old generation
 * shows that the handover did not happen: on_promote runs again here;
 * a replica that fences it shows that it did.
 */
static void
marker_set_data(struct svc *svc, const char *vm, enum lay_marker which,
    const char *data)
{
	char *dir = lay_hooks_dir(svc->cfg->state_dir);
	char *p = lay_marker(svc->cfg->state_dir, vm, which);
	if (util_mkdir_p(dir, 0700) != 0 || util_write_atomic(p, data ? data :
	    "", data ? strlen(data) : 0) != 0)
		log_warn("%s: cannot write %s", vm, p);
	free(dir);
	free(p);
}

static void
marker_set(struct svc *svc, const char *vm, enum lay_marker which)
{
	marker_set_data(svc, vm, which, NULL);
}

/* What a marker holds (a domain definition), or NULL if it is empty. */
static char *
marker_data(struct svc *svc, const char *vm, enum lay_marker which)
{
	char *p = lay_marker(svc->cfg->state_dir, vm, which);
	uint8_t *data = NULL;
	size_t len = 0;
	char *s = NULL;
	if (util_read_file(p, (size_t)64 << 20, &data, &len) == 0 && len > 0) {
		s = xmalloc(len + 1);
		memcpy(s, data, len);
		s[len] = '\0';
	}
	free(data);
	free(p);
	return s;
}

static void
marker_clear(struct svc *svc, const char *vm, enum lay_marker which)
{
	char *p = lay_marker(svc->cfg->state_dir, vm, which);
	unlink(p);
	free(p);
}

static int
marker_exists(struct svc *svc, const char *vm, enum lay_marker which)
{
	char *p = lay_marker(svc->cfg->state_dir, vm, which);
	int r = access(p, F_OK) == 0;
	free(p);
	return r;
}

static void
job_pending_hook(void *arg)
{
	struct fo *f = arg;
	if ((f->def = marker_data(f->svc, f->vm, LAY_MARK_PROMOTE)) != NULL) {
		/* The marker has the definition of the point the promotion
		 * aimed at; a rewind cut off by the restart left the disks
		 * at another, whose own definition is the one that fits. */
		uint64_t held = f->rel.at_point ? f->rel.at_point :
		    f->rel.last_point;
		char *xml = NULL;
		if (held != 0 && cat_point_definition(f->svc->cat, f->vm,
		    held, &xml) == 0) {
			free(f->def);
			f->def = xml;
		}
		log_info("%s: bringing up its domain, which a restart "
		    "interrupted", f->vm);
		dom_promote(f, &f->rel);
	}
	log_info("%s: running on_promote, which a restart interrupted",
	    f->vm);
	if (run_role_hook(f, &f->rel, 1, f->rel.at_point ? f->rel.at_point :
	    f->rel.last_point) != 0)
		log_warnx("%s: on_promote failed: %s", f->vm, f->hookmsg);
	marker_clear(f->svc, f->vm, LAY_MARK_PROMOTE);
}

static void
pending_hook_done(void *arg)
{
	fo_free(arg);
}

static void
job_confirmed(void *arg)
{
	struct fo *f = arg;
	if (fo_rel(f, &f->rel) == 0) {
		log_info("%s: the cut-off handover did not happen: running "
		    "on_promote again", f->vm);
		dom_restart(f, &f->rel, 0);
		if (run_role_hook(f, &f->rel, 1, f->rel.last_point) != 0)
			log_warnx("%s: on_promote failed: %s", f->vm,
			    f->hookmsg);
	}
	marker_clear(f->svc, f->vm, LAY_MARK_HANDOVER);
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
		/* The guest starts again here: no role change meanwhile
		 * (a planned failover now would stop it half-started). */
		if (vt_claim(f->e) == 0)
			f->claimed = 1;
		work_submit(job_confirmed, pending_hook_done, f);
		return;
	}
	log_info("%s: the cut-off handover happened: the new primary makes "
	    "this host its replica", f->vm);
	marker_clear(f->svc, f->vm, LAY_MARK_HANDOVER);
	fo_free(f);
}

static void
arm_confirm(struct svc *svc, struct vme *e)
{
	struct fo *f = fo_new(svc, e, vt_name(e), NULL, NULL);
	pvm_confirm(vt_pvm(e), confirmed, f);
}

/* --- start-up ------------------------------------------------------------ */

static const struct replica_events events;

/* A [vm] primary: the catalog records the replica its section names,
 * the only host that may take the VM over. */
static void
follow_vm_section(struct svc *svc, const struct cfg_vm *cv,
    struct cat_rel *rel)
{
	int r;
	if (strcmp(rel->peer, cv->replica) == 0 &&
	    role_same_identity(rel->peer_name, cv->replica_name))
		return;
	if (rel->peer[0] != '\0')
		log_info("%s: replica %s (%s) from its [vm] section; the "
		    "catalog had %s (%s)", rel->vm, cv->replica,
		    cv->replica_name, rel->peer, rel->peer_name[0] ?
		    rel->peer_name : "no identity");
	snprintf(rel->peer, sizeof(rel->peer), "%s", cv->replica);
	snprintf(rel->peer_name, sizeof(rel->peer_name), "%s",
	    cv->replica_name);
	if ((r = cat_rel_put(svc->cat, rel)) != 0)
		fatalx("%s: cannot record its replica: %s", rel->vm,
		    rd_strerror(r));
}

static void
start_vm(struct svc *svc, struct cat_rel *rel)
{
	const struct cfg_vm *cv = config_find_vm(svc->cfg, rel->vm);
	enum role_start how = role_startup(rel, cv != NULL);
	char err[512], note[768];
	struct vme *e;

	if (how == ROLE_START_PRIMARY)
		follow_vm_section(svc, cv, rel);
	e = vt_add(svc->vt, rel);
	switch (how) {
	case ROLE_START_REPLICA:
	case ROLE_START_UNCOMMITTED:
		if (replica_open(svc, e, rel, received_files(svc->cfg, rel),
		    err, sizeof(err)) == NULL) {
			log_warnx("%s: %s unavailable: %s", rel->vm,
			    how == ROLE_START_REPLICA ? "replica" :
			    "the failover's store", err);
			vt_set_note(e, err);
		} else if (how == ROLE_START_REPLICA && cv != NULL) {
			log_info("%s: this host is its replica (failover); it "
			    "receives into the files of [vm %s]", rel->vm,
			    rel->vm);
		}
		if (how == ROLE_START_UNCOMMITTED &&
		    start_primary(svc, e, rel) == NULL)
			fatalx("%s: cannot start as its primary", rel->vm);
		break;
	case ROLE_START_PRIMARY:
	case ROLE_START_PRIMARY_CATALOG:
		if (start_primary(svc, e, rel) == NULL)
			fatalx("%s: cannot start as its primary", rel->vm);
		break;
	case ROLE_START_NO_DISKS:
		snprintf(note, sizeof(note), "primary here, but no [vm %s] "
		    "section names its disks (it was removed): no cycles; %s "
		    "may still take it over (replctl reverse there)", rel->vm,
		    vt_owner(e)[0] ? vt_owner(e) : "its replica");
		vt_set_note(e, note);
		log_warnx("%s: %s", rel->vm, note);
		break;
	case ROLE_START_NEW:
		break;
	}
}

/* A [vm] section the catalog does not know: generation 1.  At start-up a
 * failure ends replicad; a reload's is logged and returned. */
static int
new_primary(struct svc *svc, const struct cfg_vm *cv, int fatal)
{
	struct cat_rel rel;
	int r;

	memset(&rel, 0, sizeof(rel));
	snprintf(rel.vm, sizeof(rel.vm), "%s", cv->name);
	rel.role = CAT_ROLE_PRIMARY;
	rel.generation = 1;
	snprintf(rel.peer, sizeof(rel.peer), "%s", cv->replica);
	snprintf(rel.peer_name, sizeof(rel.peer_name), "%s", cv->replica_name);
	rel.block_size = cv->block_size;
	rel.interval_ms = cv->interval_ms;
	rel.ndisks = (uint16_t)cv->ndisks;
	for (size_t i = 0; i < cv->ndisks; i++)
		snprintf(rel.disks[i].name, sizeof(rel.disks[i].name), "%s",
		    cv->disk_names[i]);
	if ((r = cat_rel_put(svc->cat, &rel)) != 0) {
		if (fatal)
			fatalx("%s: cannot record the relationship: %s",
			    cv->name, rd_strerror(r));
		log_warnx("%s: cannot record the relationship: %s", cv->name,
		    rd_strerror(r));
		return r;
	}
	log_info("%s: new relationship, replica %s (%s)", cv->name,
	    cv->replica, cv->replica_name);
	if (start_primary(svc, vt_add(svc->vt, &rel), &rel) == NULL) {
		if (fatal)
			fatalx("%s: cannot start as its primary", cv->name);
		log_warnx("%s: cannot start as its primary (its status says "
		    "why)", cv->name);
		return RD_ERR_SYSTEM;
	}
	return 0;
}

int
failover_new_section(struct svc *svc, const struct cfg_vm *cv)
{
	if (vt_find(svc->vt, cv->name) != NULL)
		return RD_ERR_EXISTS;
	return new_primary(svc, cv, 0);
}

int
failover_restart_primary(struct svc *svc, struct vme *e)
{
	struct cat_rel rel;
	int r;

	if ((r = cat_rel_get(svc->cat, vt_name(e), &rel)) != 0)
		return r;
	const struct cfg_vm *cv = config_find_vm(svc->cfg, rel.vm);
	char note[768];
	switch (role_startup(&rel, cv != NULL)) {
	case ROLE_START_PRIMARY:
		follow_vm_section(svc, cv, &rel);
		vt_set_rel(e, &rel);
		/* FALLTHROUGH */
	case ROLE_START_PRIMARY_CATALOG:
		vt_set_note(e, "");
		return start_primary(svc, e, &rel) != NULL ? 0 :
		    RD_ERR_SYSTEM;
	case ROLE_START_NO_DISKS:
		snprintf(note, sizeof(note), "primary here, but no [vm %s] "
		    "section names its disks (removed by a reload): no "
		    "cycles; %s may still take it over (replctl reverse "
		    "there)", rel.vm, vt_owner(e)[0] ? vt_owner(e) :
		    "its replica");
		vt_set_note(e, note);
		log_warnx("%s: %s", rel.vm, note);
		return 0;
	default:
		return RD_ERR_STATE;	/* not a primary here: nothing to do */
	}
}

void
failover_init(struct svc *svc, struct replica_srv *srv)
{
	struct cat_rel *rels = NULL;
	size_t n = 0;
	int r;

	replica_set_events(srv, &events, svc);
	if ((r = cat_rel_list(svc->cat, &rels, &n)) != 0)
		fatalx("cannot list relationships: %s", rd_strerror(r));
	for (size_t i = 0; i < n; i++)
		start_vm(svc, &rels[i]);
	for (size_t i = 0; i < svc->cfg->nvms; i++)
		if (vt_find(svc->vt, svc->cfg->vms[i].name) == NULL)
			new_primary(svc, &svc->cfg->vms[i], 1);
	for (size_t i = 0; i < n; i++) {
		struct vme *e = vt_find(svc->vt, rels[i].vm);
		enum role_state st = vt_state(e);
		int primary = st == ROLE_PRIMARY || st == ROLE_UNCOMMITTED;
		if (marker_exists(svc, rels[i].vm, LAY_MARK_PROMOTE)) {
			if (!primary) {
				marker_clear(svc, rels[i].vm, LAY_MARK_PROMOTE);
			} else {
				struct fo *f = fo_new(svc, e, rels[i].vm, NULL,
				    NULL);
				f->rel = rels[i];
				/* No role change until the hook ran. */
				if (vt_claim(e) == 0)
					f->claimed = 1;
				work_submit(job_pending_hook, pending_hook_done,
				    f);
			}
		}
		if (st == ROLE_PRIMARY && vt_pvm(e) != NULL &&
		    marker_exists(svc, rels[i].vm, LAY_MARK_HANDOVER)) {
			log_warnx("%s: a planned failover was cut off; the next "
			    "cycle tells whether it happened", rels[i].vm);
			arm_confirm(svc, e);
		}
	}
	free(rels);
}

/* --- unplanned failover -------------------------------------------------- */

static void
job_promote_unplanned(void *arg)
{
	struct fo *f = arg;
	struct store *st = rvm_store(vt_rvm(f->e));
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
		if (cat_point_get(f->svc->cat, f->vm, f->point, &p) != 0) {
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
	 * never a replica rewound behind its newest point's label.  The
	 * marker keeps the point's domain definition for a restart.
	 */
	point_def(f, st, f->point != 0 ? f->point : rel.last_point);
	role_rel_unplanned(&rel);
	marker_set_data(f->svc, f->vm, LAY_MARK_PROMOTE, f->def);
	if ((r = fo_put(f, &rel)) != 0) {
		marker_clear(f->svc, f->vm, LAY_MARK_PROMOTE);
		return;
	}
	store_reload_rel(st);
	f->promoted = 1;
	if ((r = store_rewind(st, f->point, 0, f->msg, sizeof(f->msg))) != 0)
		f->rc = r;	/* primary all the same, at the point it reached */
	store_rel(st, &rel);
	f->rel = rel;
	/* The domain of the point the disks hold, which a failed rewind
	 * left short of the one asked for. */
	uint64_t held = rel.at_point ? rel.at_point : rel.last_point;
	if (held != f->def_point)
		point_def(f, st, held);
	dom_promote(f, &rel);
	if (run_role_hook(f, &rel, 1, rel.at_point) != 0)
		f->hook_failed = 1;
	marker_clear(f->svc, f->vm, LAY_MARK_PROMOTE);
}

static void
promote_unplanned_done(void *arg)
{
	struct fo *f = arg;
	char note[2560];
	if (!f->promoted) {
		fo_finish(f, f->rc, "%s: failover refused: %s", f->vm, f->msg);
		return;
	}
	vt_set_rel(f->e, &f->rel);
	start_primary(f->svc, f->e, &f->rel);	/* a note says if not */
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: this host is now the primary "
		    "(generation %" PRIu64 "), but moving to point %" PRIu64
		    " failed: %s; the disks hold point %" PRIu64 " (replctl "
		    "failover %s --point ID tries again, --commit keeps it)%s",
		    f->vm, f->rel.generation, f->point, f->msg,
		    f->rel.at_point, f->vm, dom_note(f, note, sizeof(note)));
		return;
	}
	fo_finish(f, f->hook_failed || f->dom_failed ? RD_ERR_PEER : 0, "%s: "
	    "failed over to point %" PRIu64 ", generation %" PRIu64 "; this "
	    "host is now the primary%s%s%s (replctl failover %s --commit makes "
	    "it final)", f->vm, f->rel.at_point, f->rel.generation,
	    dom_note(f, note, sizeof(note)),
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
	struct store *st = rvm_store(vt_rvm(f->e));
	struct cat_rel rel;
	int r;

	store_rel(st, &rel);
	if (dom_demote(f, &rel) != 0) {
		snprintf(f->msg, sizeof(f->msg), "%s", f->dommsg);
		f->rc = RD_ERR_PEER;
		return;
	}
	if (run_role_hook(f, &rel, 0, rel.at_point) != 0) {
		snprintf(f->msg, sizeof(f->msg), "on_demote failed: %s",
		    f->hookmsg);
		f->rc = RD_ERR_PEER;
		if (f->dom_stopped != VMDOM_NOT_RUNNING)
			dom_restart(f, &rel, 1);
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
		if (f->dom_stopped != VMDOM_NOT_RUNNING)
			dom_restart(f, &rel, 1);
		run_role_hook(f, &rel, 1, rel.at_point);
		return;
	}
	store_rel(st, &rel);
	f->rel = rel;
	/* The new point's definition, which may differ. */
	point_def(f, st, rel.at_point);
	dom_promote(f, &rel);
	if (run_role_hook(f, &rel, 1, rel.at_point) != 0)
		f->hook_failed = 1;
}

static void
repick_done(void *arg)
{
	struct fo *f = arg;
	char note[2560];
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: cannot move to point %" PRIu64 ": %s",
		    f->vm, f->point, f->msg);
		return;
	}
	vt_set_rel(f->e, &f->rel);
	fo_finish(f, f->hook_failed || f->dom_failed ? RD_ERR_PEER : 0, "%s: "
	    "now at point %" PRIu64 ", generation %" PRIu64 "%s%s%s (not "
	    "committed)", f->vm, f->rel.at_point, f->rel.generation,
	    dom_note(f, note, sizeof(note)), f->hook_failed ?
	    "; on_promote failed: " : "", f->hook_failed ? f->hookmsg : "");
}

void
failover_unplanned(struct svc *svc, const char *vm, uint64_t point,
    failover_done_fn done, void *arg)
{
	struct role_view view;
	struct vme *e = fo_entry(svc, vm, &view);
	struct fo *f = fo_new(svc, e, vm, done, arg);
	struct role_decision d = role_command(&view, ROLE_CMD_UNPLANNED, NULL,
	    0);

	f->point = point;
	if (fo_usable(f, &d, "an unplanned failover", VT_REPLICA) != 0 ||
	    fo_claim(f) != 0)
		return;
	if (d.verdict == ROLE_REPICK) {
		struct cat_rel rel;
		store_rel(rvm_store(vt_rvm(e)), &rel);
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
	vt_when_idle(e, promote_unplanned_go, f);
}

/* --- commit -------------------------------------------------------------- */

static void
job_commit(void *arg)
{
	struct fo *f = arg;
	f->rc = store_rewind_commit(rvm_store(vt_rvm(f->e)), &f->rel, f->msg,
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
	replica_close(vt_rvm(f->e));
	vt_set_rel(f->e, &f->rel);
	fo_finish(f, 0, "%s: failover committed at point %" PRIu64 " "
	    "(generation %" PRIu64 "); newer points dropped", f->vm,
	    f->rel.last_point, f->rel.generation);
}

void
failover_commit(struct svc *svc, const char *vm, failover_done_fn done,
    void *arg)
{
	struct role_view view;
	struct vme *e = fo_entry(svc, vm, &view);
	struct fo *f = fo_new(svc, e, vm, done, arg);
	struct role_decision d = role_command(&view, ROLE_CMD_COMMIT, NULL, 0);

	if (fo_usable(f, &d, "commit", VT_REPLICA) != 0 || fo_claim(f) != 0)
		return;
	work_submit(job_commit, commit_done, f);
}

/* --- becoming the replica ------------------------------------------------- */

/* Current size of each of the VM's disk files on this host. */
static int
file_sizes(struct fo *f, struct cat_rel *rel)
{
	size_t n;
	char **paths = disk_paths(f->svc->cfg, rel, rel->storage, &n);
	int r = 0;
	for (size_t i = 0; i < n; i++) {
		struct stat sb;
		if (stat(paths[i], &sb) == 0)
			rel->disks[i].size = (uint64_t)sb.st_size;
		else if (errno == ENOENT)
			rel->disks[i].size = 0;
		else if (r == 0) {
			snprintf(f->msg, sizeof(f->msg), "%s: %s", paths[i],
			    strerror(errno));
			r = RD_ERR_SYSTEM;
		}
	}
	free_paths(paths, n);
	return r;
}

/*
 * The catalog side of becoming the replica of identity: a new history
 * (points of an earlier time as replica cannot be rebuilt from disks that
 * were primary since), undo and redo data gone, the tracker state gone.
 */
static int
record_replica(struct fo *f, struct cat_rel *rel, uint64_t generation,
    const char *identity, const char *storage, uint64_t last_cycle)
{
	char *p;
	int r;

	role_rel_demote(rel, generation, identity, storage, last_cycle);
	if ((r = file_sizes(f, rel)) != 0)
		return r;
	const char *sub[] = { ".undo", ".redo", ".staging" };
	for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
		p = xasprintf("%s/%s/%s", storage, rel->vm, sub[i]);
		util_rm_rf(p);
		free(p);
	}
	trk_forget(f->svc->cfg->state_dir, rel->vm, config_find_vm(f->svc->cfg,
	    rel->vm));
	marker_clear(f->svc, rel->vm, LAY_MARK_HANDOVER);
	if ((r = cat_rel_put_trim(f->svc->cat, rel, 0)) != 0)
		snprintf(f->msg, sizeof(f->msg), "catalog: %s", rd_strerror(r));
	return r;
}

/* --- demotion: a HELLO from the new primary ---------------------------- */

static void
job_demote_hook(void *arg)
{
	struct fo *f = arg;
	struct cat_rel rel;
	int r;

	if ((r = fo_rel(f, &rel)) != 0)
		return;
	rel.generation = f->hello.generation;
	if (dom_demote(f, &rel) != 0) {
		snprintf(f->msg, sizeof(f->msg), "this host cannot become the "
		    "replica of %s: %s", f->vm, f->dommsg);
		f->rc = RD_ERR_PEER;
		return;
	}
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
	/*
	 * Last cycle 0: what this host wrote after its last acknowledged
	 * cycle is unknown to the new primary, so its first cycle compares
	 * the disks (a resync) rather than trusting its tracker (P1).
	 */
	fault_point("demote-before-record");
	if ((f->rc = record_replica(f, &rel, f->hello.generation, f->identity,
	    f->storage, 0)) != 0)
		return;
	f->rel = rel;
}

/*
 * Becoming the replica failed after the primary was closed: if the
 * catalog still says primary, the VM is served as one again (its next
 * cycle tells where it stands); else the note says why nothing serves it.
 */
static void
restart_primary(struct fo *f)
{
	struct cat_rel rel;
	if (vt_pvm(f->e) != NULL || vt_rvm(f->e) != NULL ||
	    cat_rel_get(f->svc->cat, f->vm, &rel) != 0) {
		if (vt_pvm(f->e) == NULL && vt_rvm(f->e) == NULL)
			vt_set_note(f->e, f->msg);
		return;
	}
	vt_set_rel(f->e, &rel);
	if (rel.role == CAT_ROLE_PRIMARY)
		start_primary(f->svc, f->e, &rel);
	else
		vt_set_note(f->e, f->msg);
}

/* The demotion's record is written (f->rc 0): open the store; or it is
 * not: serve the VM again.  f->rc after it. */
static int
became_replica(struct fo *f)
{
	if (f->rc == 0) {
		vt_set_rel(f->e, &f->rel);
		open_replica(f, &f->rel);
	} else {
		restart_primary(f);
	}
	return f->rc;
}

static void
demote_done(void *arg)
{
	struct fo *f = arg;
	char note[2560];
	if (became_replica(f) != 0) {
		fo_finish(f, f->rc, "%s: %s", f->vm, f->msg);
		return;
	}
	fo_finish(f, 0, "%s: this host is now the replica of %s at generation %"
	    PRIu64 "%s", f->vm, f->identity, f->rel.generation,
	    dom_note(f, note, sizeof(note)));
}

static void
demote_closed(void *arg)
{
	work_submit(job_demote, demote_done, arg);
}

static void
demote_idle(void *arg)
{
	struct fo *f = arg;
	struct pvm *pv = vt_pvm(f->e);
	if (pv != NULL)
		pvm_close(pv, demote_closed, f);
	else
		demote_closed(f);
}

static void
demote_hook_done(void *arg)
{
	struct fo *f = arg;
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s", f->msg);
		return;
	}
	vt_when_idle(f->e, demote_idle, f);
}

static void
ev_demote(void *ctx, struct vme *e, const struct wire_hello *h,
    const char *identity, const struct cfg_accept *acc,
    replica_done_fn done, void *arg)
{
	struct svc *svc = ctx;
	struct fo *f = fo_new(svc, e, h->vm, done, arg);
	struct cat_rel rel;

	f->hello = *h;
	f->acc = acc;
	snprintf(f->identity, sizeof(f->identity), "%s", identity);
	if (cat_rel_get(svc->cat, h->vm, &rel) != 0 ||
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
	snprintf(f->storage, sizeof(f->storage), "%s",
	    replica_storage(svc->cfg, &rel, acc));
	if (receivable(svc->cfg, &rel, f->msg, sizeof(f->msg)) != 0) {
		fo_finish(f, RD_ERR_STATE, "this host cannot become the replica "
		    "of %s: %s", h->vm, f->msg);
		return;
	}
	if (fo_claim(f) != 0)
		return;
	work_submit(job_demote_hook, demote_hook_done, f);
}

/* --- planned failover, primary side -------------------------------------- */

static int probe(struct svc *svc, const char *to, const char *name,
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
	if ((r = probe(f->svc, f->to, f->identity, f->msg,
	    sizeof(f->msg))) != 0) {
		f->rc = r;
		return;
	}
	f->rel = rel;
	rel.generation++;
	marker_set(f->svc, f->vm, LAY_MARK_HANDOVER);
	/* The final cycle is cut from a guest at rest. */
	if (dom_demote(f, &rel) != 0) {
		snprintf(f->msg, sizeof(f->msg), "%s", f->dommsg);
		f->rc = RD_ERR_PEER;
		marker_clear(f->svc, f->vm, LAY_MARK_HANDOVER);
		return;
	}
	if (run_role_hook(f, &rel, 0, rel.last_point) != 0) {
		snprintf(f->msg, sizeof(f->msg), "on_demote failed: %s",
		    f->hookmsg);
		f->rc = RD_ERR_PEER;
		/* Left as it was. */
		if (f->dom_stopped != VMDOM_NOT_RUNNING)
			dom_restart(f, &f->rel, 1);
		run_role_hook(f, &f->rel, 1, f->rel.last_point);
		marker_clear(f->svc, f->vm, LAY_MARK_HANDOVER);
	}
}

static void
job_restore_primary(void *arg)
{
	struct fo *f = arg;
	if (f->dom_stopped != VMDOM_NOT_RUNNING)
		dom_restart(f, &f->rel, 1);
	run_role_hook(f, &f->rel, 1, f->rel.last_point);
	marker_clear(f->svc, f->vm, LAY_MARK_HANDOVER);
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
 * wrote after the cut (no on_demote hook stopped it), or the files are
 * not the ones the tracker read (tracker qemu), they are not, and the
 * first cycle from the new primary must compare (P1).  1 if clean.
 */
/* Write .digests/DISK through a temporary file, in chunks. */
struct dig_out {
	char	*tmp;
	int	 fd;
	int	 failed;
};

static void
dig_out_put(struct dig_out *o, const void *p, size_t len)
{
	if (o->fd >= 0 && !o->failed && util_write_full(o->fd, p, len) != 0)
		o->failed = 1;
}

/* Rename into dst if all went well; 0 or -1. */
static int
dig_out_end(struct dig_out *o, const char *dst)
{
	int r = -1;
	if (o->fd >= 0) {
		int ok = !o->failed && fsync(o->fd) == 0;
		if (close(o->fd) == 0 && ok && rename(o->tmp, dst) == 0 &&
		    util_fsync_parent(dst) == 0)
			r = 0;
		if (r != 0)
			unlink(o->tmp);
	}
	free(o->tmp);
	return r;
}

/*
 * The old primary's disks become a replica at the final cycle: hash them
 * into the new replica's .digests (for verify), and tell whether they are
 * still exactly what the tracker recorded at that cycle.  If the guest
 * wrote after the cut (no on_demote hook stopped it), or the files are
 * not the ones the tracker read (tracker qemu), they are not, and the
 * first cycle from the new primary must compare (P1).  1 if clean.
 * Done in chunks: the tracker map is read, and .digests written, in
 * windows.
 */
static int
disks_to_digests(struct fo *f, const struct cat_rel *rel)
{
	const char *sd = f->svc->cfg->state_dir;
	size_t n;
	char **paths = disk_paths(f->svc->cfg, rel, rel->storage, &n);
	uint32_t bs = rel->block_size;
	size_t chunk = (4u << 20) < bs ? bs : (4u << 20);
	size_t maxnb = (chunk + bs - 1) / bs;
	uint8_t *buf = xmalloc(chunk);
	struct digest *d = xcalloc(maxnb, sizeof(*d));
	struct digest *old = xcalloc(maxnb, sizeof(*old));
	int clean = 1;

	for (size_t i = 0; i < n; i++) {
		struct bm_file *bm = NULL;
		struct dig_out out = { .fd = -1 };
		char *map = lay_tracker_map(sd, rel->vm, rel->disks[i].name);
		char *dir = xasprintf("%s/%s/.digests", rel->storage, rel->vm);
		char *dst = xasprintf("%s/%s", dir, rel->disks[i].name);
		int have = bm_open(map, &bm) == 0;
		int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
		struct stat sb;
		if (fd < 0 || fstat(fd, &sb) != 0) {
			clean = 0;
		} else {
			uint64_t size = (uint64_t)sb.st_size;
			if (!have || bm_file_disk_size(bm) != size ||
			    bm_file_block_size(bm) != bs ||
			    bm_file_cycle(bm) != rel->last_cycle)
				clean = 0;
			out.tmp = xasprintf("%s.tmp", dst);
			if (util_mkdir_p(dir, 0700) == 0)
				out.fd = open(out.tmp, O_WRONLY | O_CREAT |
				    O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
			for (uint64_t off = 0; off < size; off += chunk) {
				size_t k = size - off < chunk ?
				    (size_t)(size - off) : chunk;
				if (util_pread_full(fd, buf, k, (off_t)off) != 0) {
					clean = 0;
					break;
				}
				size_t nb = (k + bs - 1) / bs;
				digest_blocks(buf, k, bs, d);
				if (have && clean && (bm_file_read(bm, off / bs,
				    nb, old) != 0 || memcmp(d, old,
				    nb * sizeof(*d)) != 0))
					clean = 0;
				dig_out_put(&out, d, nb * sizeof(*d));
			}
			if (dig_out_end(&out, dst) != 0)
				log_warnx("%s: cannot write %s; verify fails until "
				    "the next resync", rel->vm, dst);
		}
		if (fd >= 0)
			close(fd);
		bm_close(bm);
		free(map);
		free(dir);
		free(dst);
	}
	free_paths(paths, n);
	free(buf);
	free(d);
	free(old);
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
	snprintf(rel.storage, sizeof(rel.storage), "%s", f->storage);
	if (!disks_to_digests(f, &rel)) {
		log_warnx("%s: the disks here are not those of the final cycle "
		    "(was the guest stopped? are they the files the tracker "
		    "read?): the new primary's first cycle compares them",
		    f->vm);
		cycle = 0;
	}
	f->rc = record_replica(f, &rel, gen, f->acc->name, f->storage, cycle);
	f->rel = rel;
}

static void
planned_demote_done(void *arg)
{
	struct fo *f = arg;
	if (became_replica(f) != 0) {
		fo_finish(f, f->rc, "%s: handed over, but recording this host "
		    "as the replica failed: %s", f->vm, f->msg);
		return;
	}
	char note[2560];
	fo_finish(f, 0, "%s: handed over to %s at generation %" PRIu64 "; this "
	    "host is now its replica%s", f->vm, f->acc->name, f->rel.generation,
	    dom_note(f, note, sizeof(note)));
}

static void
planned_closed(void *arg)
{
	work_submit(job_planned_demote, planned_demote_done, arg);
}

static void
planned_idle(void *arg)
{
	struct fo *f = arg;
	pvm_close(vt_pvm(f->e), planned_closed, f);
}

static void
handed_over(void *arg, int rc, const char *error)
{
	struct fo *f = arg;
	if (rc == 0) {
		/* The handover ran at the primary's generation, which a
		 * reassignment on the replica may have raised since. */
		f->rel.generation = pvm_generation(vt_pvm(f->e));
		vt_when_idle(f->e, planned_idle, f);
		return;
	}
	f->rc = rc;
	snprintf(f->msg, sizeof(f->msg), "%s", error ? error : "failed");
	if (rc == RD_ERR_FENCED) {
		/* The other host is the primary: this one is stale, and its
		 * guest, stopped by on_demote, stays stopped. */
		marker_clear(f->svc, f->vm, LAY_MARK_HANDOVER);
		fo_finish(f, rc, "%s: planned failover refused: this host is a "
		    "stale primary (%s); the guest stays stopped here; the "
		    "other host's reverse makes this host its replica", f->vm,
		    f->msg);
		return;
	}
	if (rc == RD_ERR_STATE) {
		/* PROMOTE went out and no answer came: the replica may have
		 * taken over.  Starting the guest here could run it twice;
		 * the next cycle tells (confirmed()). */
		arm_confirm(f->svc, f->e);
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
	struct pvm *pv = vt_pvm(f->e);
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: planned failover refused, this host is "
		    "still the primary: %s", f->vm, f->msg);
		return;
	}
	if (pv == NULL || pvm_handover(pv, f->listen, handed_over, f) != 0) {
		snprintf(f->msg, sizeof(f->msg), "the VM cannot hand over now");
		f->rc = RD_ERR_STATE;
		work_submit(job_restore_primary, restore_done, f);
	}
}

void
failover_planned(struct svc *svc, const char *vm, failover_done_fn done,
    void *arg)
{
	const struct config *cfg = svc->cfg;
	struct role_view view;
	struct vme *e = fo_entry(svc, vm, &view);
	struct fo *f = fo_new(svc, e, vm, done, arg);
	struct role_decision d = role_command(&view, ROLE_CMD_PLANNED, NULL, 0);
	struct pvm *pv = e ? vt_pvm(e) : NULL;

	if (fo_usable(f, &d, "a planned failover", VT_PRIMARY) != 0)
		return;
	const struct cfg_vm *cv = pvm_cfg(pv);
	if (pvm_confirm_pending(pv)) {
		fo_finish(f, RD_ERR_STATE, "%s: whether the last planned "
		    "failover happened is not known yet: the next cycle tells "
		    "(replctl sync %s --wait); try again after it", vm, vm);
		return;
	}
	if (!pvm_has_replica(pv)) {
		fo_finish(f, RD_ERR_STATE, "%s has no replica to hand over to "
		    "(replctl reverse %s --to HOST:PORT first)", vm, vm);
		return;
	}
	if (cfg->listen == NULL || svc->server_ctx == NULL) {
		fo_finish(f, RD_ERR_STATE, "%s: this host has no `listen` in "
		    "[daemon]: after a planned failover it must receive %s from "
		    "%s", vm, vm, cv->replica);
		return;
	}
	f->acc = config_match_accept(cfg, cv->replica_name, vm);
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
	struct cat_rel rel;
	if (cat_rel_get(svc->cat, vm, &rel) != 0) {
		fo_finish(f, RD_ERR_STATE, "%s: not in the catalog", vm);
		return;
	}
	snprintf(f->storage, sizeof(f->storage), "%s",
	    replica_storage(cfg, &rel, f->acc));
	if (receivable(cfg, &rel, f->msg, sizeof(f->msg)) != 0) {
		fo_finish(f, RD_ERR_STATE, "%s: after a planned failover this "
		    "host must receive it, but %s", vm, f->msg);
		return;
	}
	snprintf(f->listen, sizeof(f->listen), "%s", cfg->listen);
	snprintf(f->identity, sizeof(f->identity), "%s", cv->replica_name);
	snprintf(f->to, sizeof(f->to), "%s", cv->replica);
	if (fo_claim(f) != 0)
		return;
	log_info("%s: planned failover to %s requested", vm, cv->replica);
	work_submit(job_planned_demote_hook, planned_hook_done, f);
}

/* --- planned failover, replica side -------------------------------------- */

/* The replica's .digests records of one disk, as tracker digests. */
struct dig_in {
	int		 fd;
	uint32_t	 bs;
	uint64_t	 size;
};

static int
fill_from_digests(void *arg, uint64_t first, size_t n, struct digest *out)
{
	struct dig_in *in = arg;
	int r = util_pread_full(in->fd, out, n * sizeof(*out),
	    (off_t)(first * sizeof(*out)));
	if (r == RD_ERR_TRUNCATED)
		return RD_ERR_CORRUPT;
	if (r == 0)
		store_records_expand(out, n, first * in->bs, in->bs, in->size);
	return r;
}

/* The replica's digests are the new primary's tracker state: the first
 * cycle back sends only what the guest writes from now on.  Read and
 * written in windows. */
static int
digests_to_maps(struct fo *f, const struct cat_rel *rel)
{
	const char *sd = f->svc->cfg->state_dir;
	char *dir = lay_tracker_dir(sd, rel->vm);
	int r = util_mkdir_p(dir, 0700);
	for (uint16_t i = 0; i < rel->ndisks && r == 0; i++) {
		char *dg = xasprintf("%s/%s/.digests/%s", rel->storage, rel->vm,
		    rel->disks[i].name);
		char *map = lay_tracker_map(sd, rel->vm, rel->disks[i].name);
		struct dig_in in = { .bs = rel->block_size,
		    .size = rel->disks[i].size };
		struct stat sb;
		uint64_t nblocks = bm_nblocks(in.size, in.bs);
		in.fd = open(dg, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (in.fd < 0)
			r = errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
		else if (fstat(in.fd, &sb) != 0)
			r = RD_ERR_SYSTEM;
		else if (!S_ISREG(sb.st_mode) ||
		    (uint64_t)sb.st_size != nblocks * sizeof(struct digest))
			r = RD_ERR_CORRUPT;
		if (r == 0)
			r = bm_save_from(map, in.bs, in.size, rel->last_cycle,
			    fill_from_digests, &in);
		if (r != 0)
			unlink(map);	/* unknown: the disk is compared */
		if (in.fd >= 0)
			close(in.fd);
		free(dg);
		free(map);
	}
	free(dir);
	return r;
}

static void
job_promote_planned(void *arg)
{
	struct fo *f = arg;
	struct store *st = rvm_store(vt_rvm(f->e));
	struct cat_rel rel;
	int r;

	store_rel(st, &rel);
	if (digests_to_maps(f, &rel) != 0)
		log_warnx("%s: the replica's digests are not usable as tracker "
		    "state; the first cycle back compares the disks", f->vm);
	point_def(f, st, rel.last_point);
	if ((r = fo_rel(f, &rel)) != 0)
		return;
	role_rel_promote_planned(&rel, f->promote.generation,
	    f->promote.listen, f->identity);
	marker_set_data(f->svc, f->vm, LAY_MARK_PROMOTE, f->def);
	if ((r = fo_put(f, &rel)) != 0) {
		marker_clear(f->svc, f->vm, LAY_MARK_PROMOTE);
		return;
	}
	fault_point("replica-after-promote-record");
	f->rel = rel;
}

static void
job_promote_hook(void *arg)
{
	struct fo *f = arg;
	dom_promote(f, &f->rel);
	if (run_role_hook(f, &f->rel, 1, f->rel.last_point) != 0)
		f->hook_failed = 1;
	marker_clear(f->svc, f->vm, LAY_MARK_PROMOTE);
}

static void
promote_hook_done(void *arg)
{
	struct fo *f = arg;
	/* After the domain's define: its tracker is libvirt's. */
	start_primary(f->svc, f->e, &f->rel);
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
	replica_close(vt_rvm(f->e));
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
		done(darg, f->rc, f->msg);
		fo_free(f);
		return;
	}
	vt_set_rel(f->e, &f->rel);
	/* PROMOTED goes out; the session lets go of the VM. */
	done(darg, 0, NULL);
	vt_when_idle(f->e, promote_planned_idle, f);
}

static void
ev_promote(void *ctx, struct vme *e, const char *identity,
    const struct wire_promote *m, replica_done_fn done, void *arg)
{
	struct svc *svc = ctx;
	struct fo *f = fo_new(svc, e, vt_name(e), NULL, NULL);

	f->promote = *m;
	snprintf(f->identity, sizeof(f->identity), "%s", identity);
	if (vt_in_use(e) || vt_claim(e) != 0) {
		log_warnx("%s: PROMOTE from %s refused: a test failover, "
		    "verify, prune or role change of it is running", f->vm,
		    identity);
		fo_free(f);
		done(arg, RD_ERR_BUSY, "a test failover, verify, prune or role "
		    "change of the VM is running here");
		return;
	}
	f->claimed = 1;
	f->done = done;
	f->arg = arg;
	work_submit(job_promote_planned, promote_planned_done, f);
}

static const struct replica_events events = {
	.demote = ev_demote,
	.promote = ev_promote,
};

/* --- reverse -------------------------------------------------------------- */

/* Can this host reach HOST:PORT and does it show the right certificate? */
static int
probe(struct svc *svc, const char *to, const char *name, char *err,
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
	if ((ssl = SSL_new(svc->client_ctx)) == NULL) {
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

/* Before anything stops: the new replica answers, with its certificate. */
static void
job_reverse_probe(void *arg)
{
	struct fo *f = arg;
	f->rc = probe(f->svc, f->to, f->name, f->msg, sizeof(f->msg));
}

/* The VM is idle (no cycle writes its relationship meanwhile): commit an
 * uncommitted failover, record the new replica. */
static void
job_reverse(void *arg)
{
	struct fo *f = arg;
	struct rvm *rv = vt_rvm(f->e);
	struct cat_rel rel;
	int r;

	if (rv != NULL && (r = store_rewind_commit(rvm_store(rv), NULL, f->msg,
	    sizeof(f->msg))) != 0) {
		f->rc = r;
		return;
	}
	if (rv != NULL)
		f->promoted = 1;	/* committed, whatever follows */
	if ((r = fo_rel(f, &rel)) != 0)
		return;
	role_rel_reverse(&rel, f->to, f->name);
	if ((r = fo_put(f, &rel)) != 0)
		return;
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
reverse_closed(void *arg)
{
	struct fo *f = arg;
	struct pvm *pv = start_primary(f->svc, f->e, &f->rel);
	/* Cycles start once the VM is let go: now. */
	fo_release(f);
	if (pv == NULL) {
		fo_finish(f, RD_ERR_SYSTEM, "%s: replicating to %s is recorded, "
		    "but %s", f->vm, f->to, vt_note(f->e));
		return;
	}
	if (f->wait) {
		if (pvm_resync(pv, reverse_synced, f) != 0)
			fo_finish(f, RD_ERR_STATE, "%s: cannot start the first "
			    "cycle", f->vm);
		return;
	}
	int r = pvm_resync(pv, NULL, NULL);
	if (r != 0) {
		fo_finish(f, r, "%s: replicating to %s is recorded, but no cycle "
		    "can start: %s", f->vm, f->to, rd_strerror(r));
		return;
	}
	fo_finish(f, 0, "%s: replicating to %s (resynchronising first)", f->vm,
	    f->to);
}

static void
reverse_recorded(void *arg)
{
	struct fo *f = arg;
	struct rvm *rv = vt_rvm(f->e);
	struct cat_rel rel;

	if (f->rc != 0) {
		if (f->promoted && rv != NULL) {
			/* The commit went through: the store says so. */
			store_rel(rvm_store(rv), &rel);
			vt_set_rel(f->e, &rel);
			replica_close(rv);
			fo_finish(f, f->rc, "%s: the failover is committed, but "
			    "recording %s as its replica failed: %s", f->vm,
			    f->to, f->msg);
			return;
		}
		fo_finish(f, f->rc, "%s: reverse refused, nothing changed: %s",
		    f->vm, f->msg);
		return;
	}
	vt_set_rel(f->e, &f->rel);
	if (rv != NULL)
		replica_close(rv);
	pvm_close(vt_pvm(f->e), reverse_closed, f);
}

static void
reverse_idle(void *arg)
{
	work_submit(job_reverse, reverse_recorded, arg);
}

static void
reverse_probed(void *arg)
{
	struct fo *f = arg;
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: reverse refused, nothing changed: %s",
		    f->vm, f->msg);
		return;
	}
	vt_when_idle(f->e, reverse_idle, f);
}

void
failover_reverse(struct svc *svc, const char *vm, const char *to,
    const char *name, int wait, failover_done_fn done, void *arg)
{
	struct role_view view;
	struct vme *e = fo_entry(svc, vm, &view);
	struct fo *f = fo_new(svc, e, vm, done, arg);
	struct role_decision d = role_command(&view, ROLE_CMD_REVERSE, NULL, 0);
	char host[HOST_MAX_LEN + 1];
	uint16_t port;

	f->wait = wait;
	if (fo_usable(f, &d, "reverse", VT_PRIMARY) != 0)
		return;
	if (util_parse_hostport(to, host, sizeof(host), &port) != 0) {
		fo_finish(f, RD_ERR_INVALID, "%s: --to %s is not HOST:PORT", vm,
		    to);
		return;
	}
	const struct cfg_vm *cv = config_find_vm(svc->cfg, vm);
	if (cv && strcmp(cv->replica, to) != 0) {
		fo_finish(f, RD_ERR_STATE, "%s: its replica is set by [vm %s] "
		    "in %s (replica = %s)", vm, vm, svc->cfg->path, cv->replica);
		return;
	}
	snprintf(f->to, sizeof(f->to), "%s", to);
	snprintf(f->name, sizeof(f->name), "%s", name ? name : cv ?
	    cv->replica_name : view.owner[0] ? view.owner : host);
	if (fo_claim(f) != 0)
		return;
	log_info("%s: reverse to %s (%s) requested", vm, to, f->name);
	work_submit(job_reverse_probe, reverse_probed, f);
}

/* --- reassign --------------------------------------------------------------- */

static void
job_reassign(void *arg)
{
	struct fo *f = arg;
	struct cat_rel rel;
	char why[1024];

	if (fo_rel(f, &rel) != 0)
		return;
	snprintf(f->name, sizeof(f->name), "%.*s", (int)sizeof(f->name) - 1,
	    rel.peer);
	role_rel_reassign(&rel, f->identity);
	if (fo_put(f, &rel) != 0)
		return;
	store_reload_rel(rvm_store(vt_rvm(f->e)));
	snprintf(why, sizeof(why), "reassigned from %s to %s at generation %"
	    PRIu64, f->name, f->identity, rel.generation);
	cat_event_add(f->svc->cat, f->vm, "info", why);
	f->rel = rel;
}

static void
reassign_done(void *arg)
{
	struct fo *f = arg;
	if (f->rc != 0) {
		fo_finish(f, f->rc, "%s: reassign refused, nothing changed: %s",
		    f->vm, f->msg);
		return;
	}
	vt_set_rel(f->e, &f->rel);
	fo_finish(f, 0, "%s: reassigned from %s to %s at generation %" PRIu64
	    "; %s takes that generation at its next cycle, which compares the "
	    "disks (only differences travel); %s is refused from now on",
	    f->vm, f->name, f->identity, f->rel.generation, f->identity,
	    f->name);
}

static void
reassign_idle(void *arg)
{
	work_submit(job_reassign, reassign_done, arg);
}

void
failover_reassign(struct svc *svc, const char *vm, const char *host,
    failover_done_fn done, void *arg)
{
	struct role_view view;
	struct vme *e = fo_entry(svc, vm, &view);
	struct fo *f = fo_new(svc, e, vm, done, arg);
	const struct cfg_accept *acc = config_match_accept(svc->cfg, host, vm);
	struct cat_rel rel;
	int accepted = 0;

	snprintf(f->identity, sizeof(f->identity), "%s", acc ? acc->name :
	    host);
	if (e != NULL && vt_rvm(e) != NULL) {
		store_rel(rvm_store(vt_rvm(e)), &rel);
		snprintf(f->storage, sizeof(f->storage), "%s", rel.storage);
		accepted = acc != NULL && strcmp(acc->storage, rel.storage) == 0;
	}
	struct role_decision d = role_command(&view, ROLE_CMD_REASSIGN,
	    f->identity, accepted);
	if (fo_usable(f, &d, "reassign", VT_REPLICA) != 0 || fo_claim(f) != 0)
		return;
	log_info("%s: reassign to %s requested", vm, f->identity);
	vt_when_idle(e, reassign_idle, f);
}
