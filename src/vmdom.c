/*
 * vmdom.c — a VM's libvirt domain through role changes (vmdom.h): which
 * domain and where, from the configuration; then virt.h's operations.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "domxml.h"
#include "err.h"
#include "layout.h"
#include "log.h"
#include "util.h"
#include "virt.h"
#include "vmdom.h"
#include "xmalloc.h"

#define DOMAIN_NAME_MAX	(NAME_MAX_LEN * 4 + 16)	/* config.c: set_domain */

/* The VM's domain on this host and what to do with it. */
struct where {
	char		 name[DOMAIN_NAME_MAX];
	const char	*uri;
	int		 start;		/* start_on_promote */
	unsigned	 timeout_s;	/* shutdown_timeout */
	int		 known;		/* [vm] domain = or a promotion's */
	char *const	*paths;		/* domain_paths */
	size_t		 npaths;
};

/* The name a promotion recorded, or "". */
static void
recorded(const struct config *cfg, const char *vm, char *name, size_t namesz)
{
	char *p = lay_marker(cfg->state_dir, vm, LAY_MARK_DOMAIN);
	uint8_t *data = NULL;
	size_t len = 0;

	name[0] = '\0';
	if (util_read_file(p, namesz - 1, &data, &len) == 0 && len > 0 &&
	    memchr(data, '\0', len) == NULL) {
		memcpy(name, data, len);
		name[len] = '\0';
		name[strcspn(name, "\n")] = '\0';
	}
	free(data);
	free(p);
}

int
vmdom_recorded(const struct config *cfg, const char *vm, char *name,
    size_t namesz)
{
	recorded(cfg, vm, name, namesz);
	return name[0] != '\0' ? 0 : RD_ERR_NOT_FOUND;
}

static void
record(const struct config *cfg, const char *vm, const char *name)
{
	char *dir = lay_hooks_dir(cfg->state_dir);
	char *p = lay_marker(cfg->state_dir, vm, LAY_MARK_DOMAIN);
	if (util_mkdir_p(dir, 0700) != 0 ||
	    util_write_atomic(p, name, strlen(name)) != 0)
		log_warn("%s: cannot write %s; a demotion will not shut domain "
		    "%s down", vm, p, name);
	free(dir);
	free(p);
}

static void
where(const struct config *cfg, const char *vm, const char *peer,
    struct where *w)
{
	const struct cfg_vm *cv = config_find_vm(cfg, vm);
	const struct cfg_accept *acc = peer != NULL && peer[0] != '\0' ?
	    config_match_accept(cfg, peer, vm) : NULL;

	memset(w, 0, sizeof(*w));
	w->uri = cv && cv->libvirt_uri ? cv->libvirt_uri : acc ?
	    acc->libvirt_uri : CONFIG_DEFAULT_LIBVIRT_URI;
	w->start = cv ? cv->start_on_promote : acc ? acc->start_on_promote : 1;
	w->timeout_s = cv ? cv->shutdown_timeout_s : acc ?
	    acc->shutdown_timeout_s : CONFIG_DEFAULT_SHUTDOWN_TIMEOUT_S;
	if (cv != NULL && cv->ndomain_paths > 0) {
		w->paths = cv->domain_paths;
		w->npaths = cv->ndomain_paths;
	} else if (acc != NULL) {
		w->paths = acc->domain_paths;
		w->npaths = acc->ndomain_paths;
	}
	if (cv != NULL && cv->domain != NULL) {
		snprintf(w->name, sizeof(w->name), "%s", cv->domain);
		w->known = 1;
		return;
	}
	recorded(cfg, vm, w->name, sizeof(w->name));
	w->known = w->name[0] != '\0';
	if (!w->known)
		snprintf(w->name, sizeof(w->name), "%s", vm);
}

/* Whether path lies below dir. */
static int
below(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/*
 * QEMU opens the disks as its own user: let it search the directories
 * replicad made for them, from each disk's directory up to storage, or
 * up to the state directory when storage is inside it (the default;
 * tracker libvirt opens it likewise).  Nothing in them becomes readable.
 */
static void
reach(const struct config *cfg, const char *storage,
    const struct domxml_disk *disks, size_t n)
{
	const char *top = storage && below(storage, cfg->state_dir) ?
	    cfg->state_dir : storage;
	size_t slen = top ? strlen(top) : 0;

	for (size_t i = 0; slen > 0 && i < n; i++) {
		if (!below(disks[i].path, storage))
			continue;
		char *dir = xstrdup(disks[i].path);
		char *slash;
		while ((slash = strrchr(dir, '/')) != NULL &&
		    (size_t)(slash - dir) >= slen) {
			struct stat sb;
			*slash = '\0';
			if (lstat(dir, &sb) == 0 && S_ISDIR(sb.st_mode) &&
			    !(sb.st_mode & S_IXOTH) &&
			    chmod(dir, (sb.st_mode & 07777) | S_IXOTH) != 0)
				log_warn("cannot let QEMU reach %s", dir);
		}
		free(dir);
	}
}

/* A start that failed for want of permission: say what to look at. */
static void
start_hint(const char *err, char *msg, size_t msgsz)
{
	size_t len = strlen(msg);
	if (strstr(err, "ermission denied") != NULL && len < msgsz)
		snprintf(msg + len, msgsz - len, " (QEMU runs as its own user: "
		    "every directory above the disks must let it search)");
}

/*
 * What a definition may name here (domxml.h): w's domain_paths; never
 * replicad's own files: its state directory, configuration, keys and
 * control socket, every replica storage (each VM's copies and history:
 * storage, every [accept] entry's), and the disks, receive_into files
 * and QMP sockets of every [vm] section.
 * pol's arrays are allocated (policy_free()); the strings are cfg's.
 */
static void
policy(const struct config *cfg, const struct where *w, const char *storage,
    struct domxml_policy *pol)
{
	size_t n = 0, max = 7 + cfg->naccepts;
	const char **deny;

	for (size_t i = 0; i < cfg->nvms; i++)
		max += cfg->vms[i].ndisks + cfg->vms[i].nreceive + 1;
	deny = xcalloc(max, sizeof(*deny));
	const char *own[] = { cfg->state_dir, cfg->path, cfg->tls_cert,
	    cfg->tls_key, cfg->tls_ca, cfg->control_socket, storage };
	for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
		if (own[i] != NULL && own[i][0] == '/')
			deny[n++] = own[i];
	for (size_t i = 0; i < cfg->naccepts; i++)
		if (cfg->accepts[i].storage != NULL)
			deny[n++] = cfg->accepts[i].storage;
	for (size_t i = 0; i < cfg->nvms; i++) {
		const struct cfg_vm *v = &cfg->vms[i];
		for (size_t k = 0; k < v->ndisks; k++)
			if (v->disks[k] != NULL && v->disks[k][0] == '/')
				deny[n++] = v->disks[k];
		for (size_t k = 0; k < v->nreceive; k++)
			deny[n++] = v->receive_into[k];
		if (v->qmp != NULL && v->qmp[0] == '/')
			deny[n++] = v->qmp;	/* its QEMU's monitor */
	}
	pol->deny = deny;
	pol->ndeny = n;
	pol->dirs = (const char *const *)w->paths;
	pol->ndirs = w->npaths;
}

static void
policy_free(struct domxml_policy *pol)
{
	free((void *)pol->deny);
}

/* "; left out: ..." after msg (domxml.h: what the domain lacks). */
static void
left_out_note(const char *left_out, char *msg, size_t msgsz)
{
	size_t len = strlen(msg);
	if (left_out != NULL && len < msgsz)
		snprintf(msg + len, msgsz - len, "; left out of its definition "
		    "on this host: %s", left_out);
}

static virConnectPtr
open_conn(const struct where *w, char *msg, size_t msgsz)
{
	char err[512];
	virConnectPtr c = virt_open(w->uri, err, sizeof(err));
	if (c == NULL)
		snprintf(msg, msgsz, "%s", err);
	return c;
}

/* Define xml as w->name (not over a domain of that name that runs:
 * RD_ERR_STATE), *defined set once it is; then start it if start, or
 * say why not (not_started). */
static int
define_start(const struct where *w, const char *xml, int start,
    const char *not_started, int *defined, char *msg, size_t msgsz)
{
	virConnectPtr c = open_conn(w, msg, msgsz);
	virDomainPtr d = NULL;
	char err[768];
	int r;

	*defined = 0;
	if (c == NULL)
		return RD_ERR_PEER;
	r = virt_lookup(c, w->name, &d, err, sizeof(err));
	if (r == 0 && (r = virt_active(d, err, sizeof(err))) > 0) {
		snprintf(msg, msgsz, "domain %s already runs on this host: "
		    "not redefined", w->name);
		r = RD_ERR_STATE;
		goto out;
	}
	if (d != NULL) {
		virDomainFree(d);
		d = NULL;
	}
	if (r < 0 && r != RD_ERR_NOT_FOUND) {
		snprintf(msg, msgsz, "%s", err);
		goto out;
	}
	if ((r = virt_define(c, xml, &d, err, sizeof(err))) != 0) {
		snprintf(msg, msgsz, "cannot define domain %s: %s", w->name,
		    err);
		goto out;
	}
	*defined = 1;
	if (!start) {
		snprintf(msg, msgsz, "domain %s defined (%s)", w->name,
		    not_started);
		goto out;
	}
	if ((r = virt_start(d, err, sizeof(err))) != 0) {
		snprintf(msg, msgsz, "domain %s defined, but not started: %s",
		    w->name, err);
		start_hint(err, msg, msgsz);
		goto out;
	}
	snprintf(msg, msgsz, "domain %s defined and started", w->name);
out:
	if (d != NULL)
		virDomainFree(d);
	virConnectClose(c);
	return r;
}

int
vmdom_promote(const struct config *cfg, const char *vm, const char *peer,
    const char *def, const struct domxml_disk *disks, size_t ndisks,
    const char *storage, char *msg, size_t msgsz)
{
	struct where w;
	struct domxml_policy pol;
	char err[512], *xml = NULL, *left = NULL;
	int r, defined;

	where(cfg, vm, peer, &w);
	policy(cfg, &w, storage, &pol);
	r = domxml_rewrite(def, DOMXML_PROMOTE, w.name, disks, ndisks, &pol,
	    &xml, &left, err, sizeof(err));
	policy_free(&pol);
	if (r != 0) {
		snprintf(msg, msgsz, "cannot define domain %s: %s", w.name,
		    err);
		return r;
	}
	reach(cfg, storage, disks, ndisks);
	r = define_start(&w, xml, w.start, "start_on_promote is off: not "
	    "started", &defined, msg, msgsz);
	if (defined)
		record(cfg, vm, w.name);
	left_out_note(left, msg, msgsz);
	free(left);
	free(xml);
	return r;
}

int
vmdom_demote(const struct config *cfg, const char *vm, const char *peer,
    enum vmdom_stop *stopped, char *msg, size_t msgsz)
{
	struct where w;
	virConnectPtr c;
	virDomainPtr d = NULL;
	enum virt_stop how;
	char err[768];
	int r;

	*stopped = VMDOM_NOT_RUNNING;
	msg[0] = '\0';
	where(cfg, vm, peer, &w);
	if (!w.known)
		return 0;
	if ((c = open_conn(&w, msg, msgsz)) == NULL)
		return RD_ERR_PEER;
	if ((r = virt_lookup(c, w.name, &d, err, sizeof(err))) != 0) {
		if (r == RD_ERR_NOT_FOUND) {
			snprintf(msg, msgsz, "no domain %s on this host: "
			    "nothing to shut down", w.name);
			r = 0;
		} else {
			snprintf(msg, msgsz, "%s", err);
		}
		goto out;
	}
	if ((r = virt_shutdown(d, w.timeout_s, &how, err, sizeof(err))) != 0) {
		snprintf(msg, msgsz, "%s", err);
		goto out;
	}
	switch (how) {
	case VIRT_STOP_WAS_OFF:
		snprintf(msg, msgsz, "domain %s was not running", w.name);
		break;
	case VIRT_STOP_SHUTDOWN:
		*stopped = VMDOM_SHUT_DOWN;
		snprintf(msg, msgsz, "domain %s shut down", w.name);
		break;
	case VIRT_STOP_DESTROYED:
		*stopped = VMDOM_DESTROYED;
		snprintf(msg, msgsz, "domain %s destroyed: %s", w.name, err);
		break;
	}
	if ((r = virt_autostart_off(d, err, sizeof(err))) != 0) {
		size_t len = strlen(msg);
		snprintf(msg + len, msgsz - len, ", but %s", err);
	}
out:
	if (d != NULL)
		virDomainFree(d);
	virConnectClose(c);
	return r;
}

int
vmdom_restart(const struct config *cfg, const char *vm, const char *peer,
    int force, char *msg, size_t msgsz)
{
	struct where w;
	virConnectPtr c;
	virDomainPtr d = NULL;
	char err[768];
	int r;

	msg[0] = '\0';
	where(cfg, vm, peer, &w);
	if (!w.known || (!force && !w.start))
		return 0;
	if ((c = open_conn(&w, msg, msgsz)) == NULL)
		return RD_ERR_PEER;
	if ((r = virt_lookup(c, w.name, &d, err, sizeof(err))) != 0 ||
	    (r = virt_active(d, err, sizeof(err))) < 0) {
		snprintf(msg, msgsz, "%s", err);
		goto out;
	}
	if (r > 0) {
		r = 0;
		snprintf(msg, msgsz, "domain %s runs", w.name);
		goto out;
	}
	if ((r = virt_start(d, err, sizeof(err))) != 0) {
		snprintf(msg, msgsz, "%s", err);
		goto out;
	}
	snprintf(msg, msgsz, "domain %s started again", w.name);
out:
	if (d != NULL)
		virDomainFree(d);
	virConnectClose(c);
	return r;
}

/* Whose the domain called name is, for test and untest. */
enum owner {
	OWNER_NONE,		/* no such domain */
	OWNER_TEST,		/* a test failover's: a disk is a test copy */
	OWNER_OTHER,		/* someone else's: not ours to remove */
};

/*
 * Whether the domain called name is a test failover's: one of its disks
 * is in test_dir, where domxml.h puts the copies (and no other disk).
 * The name alone proves nothing: operators call their own domains
 * NAME-test too.  0 with *owner, or an rd_err with msg.
 */
static int
test_owner(virConnectPtr c, const char *name, const char *test_dir,
    enum owner *owner, char *msg, size_t msgsz)
{
	virDomainPtr d = NULL;
	struct virt_disk *dk = NULL;
	char err[512], *xml = NULL;
	size_t n = 0;
	int r;

	*owner = OWNER_NONE;
	if ((r = virt_lookup(c, name, &d, err, sizeof(err))) != 0) {
		if (r == RD_ERR_NOT_FOUND)
			return 0;
		snprintf(msg, msgsz, "%s", err);
		return r;
	}
	if ((xml = virDomainGetXMLDesc(d, VIR_DOMAIN_XML_INACTIVE)) == NULL) {
		snprintf(msg, msgsz, "cannot read the definition of domain %s: "
		    "%s", name, virt_last_error());
		r = RD_ERR_PEER;
		goto out;
	}
	if ((r = virt_disks(xml, &dk, &n, err, sizeof(err))) != 0) {
		snprintf(msg, msgsz, "domain %s: %s", name, err);
		goto out;
	}
	*owner = OWNER_OTHER;
	for (size_t i = 0; i < n; i++)
		if (dk[i].file != NULL && below(dk[i].file, test_dir))
			*owner = OWNER_TEST;
	r = 0;
out:
	virt_disks_free(dk, n);
	free(xml);
	virDomainFree(d);
	return r;
}

int
vmdom_test(const struct config *cfg, const char *vm, const char *peer,
    const char *def, const struct domxml_disk *disks, size_t ndisks,
    const char *storage, const char *test_dir, int start, char *msg,
    size_t msgsz)
{
	struct where w;
	struct domxml_policy pol;
	virConnectPtr c;
	enum owner owner;
	char err[768], *xml = NULL, *left = NULL;
	int r, existed = 0, defined;

	where(cfg, vm, peer, &w);
	snprintf(w.name, sizeof(w.name), "%s%s", vm, VMDOM_TEST_SUFFIX);
	policy(cfg, &w, storage, &pol);
	r = domxml_rewrite(def, DOMXML_TEST, w.name, disks, ndisks, &pol, &xml,
	    &left, err, sizeof(err));
	policy_free(&pol);
	if (r != 0) {
		snprintf(msg, msgsz, "cannot define domain %s: %s", w.name,
		    err);
		return r;
	}
	/* An old test domain (its copy was removed by hand): ours. */
	if ((c = open_conn(&w, msg, msgsz)) == NULL) {
		free(xml);
		free(left);
		return RD_ERR_PEER;
	}
	if ((r = test_owner(c, w.name, test_dir, &owner, msg, msgsz)) == 0 &&
	    owner == OWNER_OTHER) {
		snprintf(msg, msgsz, "domain %s exists and is not a test "
		    "failover's (none of its disks is in %s): not replaced; "
		    "rename or remove it first", w.name, test_dir);
		r = RD_ERR_STATE;
	}
	if (r == 0 && owner == OWNER_TEST &&
	    (r = virt_remove(c, w.name, &existed, err, sizeof(err))) != 0)
		snprintf(msg, msgsz, "an old domain %s is in the way: %s",
		    w.name, err);
	virConnectClose(c);
	if (r != 0) {
		free(xml);
		free(left);
		return r;
	}
	if (existed)
		log_info("%s: removed the old test domain %s", vm, w.name);
	reach(cfg, storage, disks, ndisks);
	r = define_start(&w, xml, start, "not started: --start starts it",
	    &defined, msg, msgsz);
	if (r == 0 && start) {
		size_t len = strlen(msg);
		snprintf(msg + len, msgsz - len, " (network links down)");
	}
	left_out_note(left, msg, msgsz);
	free(left);
	free(xml);
	return r;
}

int
vmdom_untest(const struct config *cfg, const char *vm, const char *peer,
    const char *test_dir, char *msg, size_t msgsz)
{
	struct where w;
	virConnectPtr c;
	enum owner owner;
	char err[768];
	int r, existed = 0;

	msg[0] = '\0';
	where(cfg, vm, peer, &w);
	snprintf(w.name, sizeof(w.name), "%s%s", vm, VMDOM_TEST_SUFFIX);
	if ((c = open_conn(&w, msg, msgsz)) == NULL)
		return RD_ERR_PEER;
	if ((r = test_owner(c, w.name, test_dir, &owner, msg, msgsz)) != 0 ||
	    owner == OWNER_NONE) {
		virConnectClose(c);
		return r;
	}
	if (owner == OWNER_OTHER) {
		virConnectClose(c);
		snprintf(msg, msgsz, "domain %s is not a test failover's (none "
		    "of its disks is in %s): left alone", w.name, test_dir);
		return 0;
	}
	r = virt_remove(c, w.name, &existed, err, sizeof(err));
	virConnectClose(c);
	if (r != 0)
		snprintf(msg, msgsz, "%s", err);
	else if (existed)
		snprintf(msg, msgsz, "domain %s removed", w.name);
	return r;
}
