/*
 * virt.c — libvirt connections, domains and their disks (virt.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "err.h"
#include "log.h"
#include "util.h"
#include "virt.h"
#include "xmalloc.h"

/* libvirt prints every error on stderr unless told otherwise; replicad
 * reports them itself, with what it was doing. */
static void
quiet(void *arg, virErrorPtr e)
{
}

void
virt_init(void)
{
	virInitialize();
	virSetErrorFunc(NULL, quiet);
	xmlInitParser();
}

const char *
virt_last_error(void)
{
	const char *m = virGetLastErrorMessage();
	return m != NULL ? m : "unknown libvirt error";
}

int
virt_last_not_found(void)
{
	int code = virGetLastErrorCode();
	return code == VIR_ERR_NO_DOMAIN ||
	    code == VIR_ERR_NO_DOMAIN_CHECKPOINT;
}

virConnectPtr
virt_open(const char *uri, char *err, size_t errsz)
{
	virConnectPtr c = virConnectOpen(uri);
	if (c == NULL)
		snprintf(err, errsz, "cannot connect to libvirt at %s: %s", uri,
		    virt_last_error());
	return c;
}

int
virt_lookup(virConnectPtr c, const char *name, virDomainPtr *out, char *err,
    size_t errsz)
{
	*out = virDomainLookupByName(c, name);
	if (*out != NULL)
		return 0;
	if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN) {
		snprintf(err, errsz, "no libvirt domain %s", name);
		return RD_ERR_NOT_FOUND;
	}
	snprintf(err, errsz, "cannot look up libvirt domain %s: %s", name,
	    virt_last_error());
	return RD_ERR_PEER;
}

/* --- the domain XML ----------------------------------------------------------- */

static xmlDocPtr
parse(const char *xml, char *err, size_t errsz)
{
	xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), "domain.xml",
	    NULL, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (doc == NULL)
		snprintf(err, errsz, "libvirt gave a domain XML that does not "
		    "parse");
	return doc;
}

/* The first child element of n called name, or NULL. */
static xmlNodePtr
child(xmlNodePtr n, const char *name)
{
	for (xmlNodePtr c = n->children; c != NULL; c = c->next)
		if (c->type == XML_ELEMENT_NODE &&
		    xmlStrcmp(c->name, (const xmlChar *)name) == 0)
			return c;
	return NULL;
}

/* An attribute of n, allocated (NULL if absent or n is NULL). */
static char *
attr(xmlNodePtr n, const char *name)
{
	if (n == NULL)
		return NULL;
	xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
	if (v == NULL)
		return NULL;
	char *s = xstrdup((const char *)v);
	xmlFree(v);
	return s;
}

static int
attr_is(xmlNodePtr n, const char *name, const char *want, const char *dflt)
{
	char *v = attr(n, name);
	int r = strcmp(v != NULL ? v : dflt, want) == 0;
	free(v);
	return r;
}

/* Why a <disk> cannot be replicated, or NULL; its source in *file. */
static char *
disk_why_not(xmlNodePtr disk, char **file)
{
	char *type = attr(disk, "type");
	char *device = attr(disk, "device");
	xmlNodePtr src = child(disk, "source");
	char *why = NULL;

	*file = NULL;
	if (device != NULL && strcmp(device, "disk") != 0) {
		why = xasprintf("a %s, not a disk", device);
	} else if (type != NULL && strcmp(type, "network") == 0) {
		char *proto = attr(src, "protocol");
		why = xasprintf("a network disk (%s): replicad reads files and "
		    "block devices", proto ? proto : "unknown protocol");
		free(proto);
	} else if (type != NULL && strcmp(type, "volume") == 0) {
		why = xasprintf("a storage pool volume: name its file or "
		    "device in the domain instead");
	} else if (type != NULL && strcmp(type, "file") != 0 &&
	    strcmp(type, "block") != 0) {
		why = xasprintf("a disk of type %s: replicad reads files and "
		    "block devices", type);
	} else {
		*file = attr(src, type != NULL && strcmp(type, "block") == 0 ?
		    "dev" : "file");
		if (*file == NULL)
			why = xasprintf("no source file (an empty drive)");
		else if ((*file)[0] != '/')
			why = xasprintf("source %s is not an absolute path",
			    *file);
	}
	free(type);
	free(device);
	return why;
}

int
virt_disks(const char *xml, struct virt_disk **out, size_t *n, char *err,
    size_t errsz)
{
	xmlDocPtr doc = parse(xml, err, errsz);
	struct virt_disk *v = NULL;
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (doc == NULL)
		return RD_ERR_INVALID;
	xmlNodePtr root = xmlDocGetRootElement(doc);
	xmlNodePtr devs = root ? child(root, "devices") : NULL;
	for (xmlNodePtr d = devs ? devs->children : NULL; d; d = d->next) {
		if (d->type != XML_ELEMENT_NODE ||
		    xmlStrcmp(d->name, (const xmlChar *)"disk") != 0)
			continue;
		char *dev = attr(child(d, "target"), "dev");
		if (dev == NULL)
			continue;
		v = xreallocarray(v, k + 1, sizeof(*v));
		memset(&v[k], 0, sizeof(v[k]));
		snprintf(v[k].target, sizeof(v[k].target), "%s", dev);
		free(dev);
		v[k].device_disk = attr_is(d, "device", "disk", "disk");
		v[k].format = attr(child(d, "driver"), "type");
		v[k].why_not = disk_why_not(d, &v[k].file);
		k++;
	}
	xmlFreeDoc(doc);
	*out = v;
	*n = k;
	return 0;
}

void
virt_disks_free(struct virt_disk *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(d[i].file);
		free(d[i].format);
		free(d[i].why_not);
	}
	free(d);
}

int
virt_dac_owner(const char *xml, uid_t *uid, gid_t *gid)
{
	char err[64];
	xmlDocPtr doc = parse(xml, err, sizeof(err));
	int r = -1;

	if (doc == NULL)
		return -1;
	xmlNodePtr root = xmlDocGetRootElement(doc);
	for (xmlNodePtr s = root ? root->children : NULL; s; s = s->next) {
		if (s->type != XML_ELEMENT_NODE ||
		    xmlStrcmp(s->name, (const xmlChar *)"seclabel") != 0 ||
		    !attr_is(s, "model", "dac", ""))
			continue;
		xmlNodePtr l = child(s, "label");
		xmlChar *txt = l ? xmlNodeGetContent(l) : NULL;
		unsigned long u, g;
		/* "+64055:+108" (numeric) as libvirt writes it live. */
		if (txt != NULL && sscanf((const char *)txt, "+%lu:+%lu", &u,
		    &g) == 2) {
			*uid = (uid_t)u;
			*gid = (gid_t)g;
			r = 0;
		}
		xmlFree(txt);
		break;
	}
	xmlFreeDoc(doc);
	return r;
}

/* --- resolving a [vm] with domain = -------------------------------------------- */

static void
set_disks(struct cfg_vm *vm, char **files, char **names, size_t n)
{
	for (size_t i = 0; i < vm->ndisks; i++) {
		free(vm->disks[i]);
		free(vm->disk_names[i]);
	}
	free(vm->disks);
	free(vm->disk_names);
	vm->disks = files;
	vm->disk_names = names;
	vm->ndisks = n;
}

static int
pick(struct cfg_vm *vm, const struct virt_disk *d, size_t nd, char *note,
    size_t notesz, char *err, size_t errsz)
{
	char **files = xcalloc(CFG_MAX_DISKS + 1, sizeof(char *));
	char **names = xcalloc(CFG_MAX_DISKS + 1, sizeof(char *));
	size_t n = 0, used = 0;
	int r = 0;

	if (notesz > 0)
		note[0] = '\0';
	if (vm->disks_chosen) {
		for (size_t k = 0; k < vm->ndisks && r == 0; k++) {
			const struct virt_disk *f = NULL;
			for (size_t i = 0; i < nd; i++)
				if (strcmp(d[i].target, vm->disk_names[k]) == 0)
					f = &d[i];
			if (f == NULL) {
				snprintf(err, errsz, "domain %s has no disk %s",
				    vm->domain, vm->disk_names[k]);
				r = RD_ERR_NOT_FOUND;
			} else if (f->why_not != NULL) {
				snprintf(err, errsz, "disk %s of domain %s "
				    "cannot be replicated: %s", f->target,
				    vm->domain, f->why_not);
				r = RD_ERR_UNSUPPORTED;
			} else {
				files[n] = xstrdup(f->file);
				names[n++] = xstrdup(f->target);
			}
		}
	} else {
		for (size_t i = 0; i < nd; i++) {
			if (d[i].why_not == NULL && n < CFG_MAX_DISKS) {
				files[n] = xstrdup(d[i].file);
				names[n++] = xstrdup(d[i].target);
			} else if (notesz > used) {
				used += (size_t)snprintf(note + used,
				    notesz - used, "%sdisk %s is not "
				    "replicated: %s", used ? "; " : "",
				    d[i].target, d[i].why_not ? d[i].why_not :
				    "too many disks");
				if (used >= notesz)
					used = notesz;
			}
		}
		if (n == 0) {
			snprintf(err, errsz, "domain %s has no disk that can "
			    "be replicated%s%s", vm->domain, nd ? ": " : "",
			    nd ? note : "");
			r = RD_ERR_UNSUPPORTED;
		}
	}
	for (size_t k = 0; r == 0 && k < n; k++) {
		/* What each chosen disk is, for replicad --check. */
		const struct virt_disk *f = NULL;
		for (size_t i = 0; i < nd; i++)
			if (strcmp(d[i].target, names[k]) == 0)
				f = &d[i];
		int raw = f == NULL || f->format == NULL ||
		    strcmp(f->format, "qcow2") != 0;
		if (notesz > used) {
			used += (size_t)snprintf(note + used, notesz - used,
			    "%sdisk %s: %s (%s%s)", used ? "; " : "", names[k],
			    files[k], f && f->format ? f->format : "raw",
			    raw ? ": no checkpoints, so every cycle reads it "
			    "whole" : "");
			if (used >= notesz)
				used = notesz;
		}
	}
	for (size_t i = 0; r == 0 && i < n; i++)
		if (util_disk_name_valid(names[i]) != 0) {
			snprintf(err, errsz, "disk target %s of domain %s "
			    "cannot name a replica file", names[i], vm->domain);
			r = RD_ERR_NAME;
		}
	if (r != 0) {
		for (size_t i = 0; i < n; i++) {
			free(files[i]);
			free(names[i]);
		}
		free(files);
		free(names);
		return r;
	}
	set_disks(vm, files, names, n);
	return 0;
}

int
virt_resolve(struct cfg_vm *vm, char *note, size_t notesz, char *err,
    size_t errsz)
{
	virConnectPtr c = virt_open(vm->libvirt_uri, err, errsz);
	virDomainPtr dom = NULL;
	struct virt_disk *d = NULL;
	size_t nd = 0;
	char *xml = NULL;
	int r;

	if (notesz > 0)
		note[0] = '\0';
	if (c == NULL)
		return RD_ERR_PEER;
	if ((r = virt_lookup(c, vm->domain, &dom, err, errsz)) != 0)
		goto out;
	/* The running definition if it runs (disks hot-plugged count). */
	if ((xml = virDomainGetXMLDesc(dom, 0)) == NULL) {
		snprintf(err, errsz, "cannot read the definition of domain "
		    "%s: %s", vm->domain, virt_last_error());
		r = RD_ERR_PEER;
		goto out;
	}
	if ((r = virt_disks(xml, &d, &nd, err, errsz)) != 0)
		goto out;
	r = pick(vm, d, nd, note, notesz, err, errsz);
 out:
	virt_disks_free(d, nd);
	free(xml);
	if (dom != NULL)
		virDomainFree(dom);
	virConnectClose(c);
	return r;
}

/* --- domains: define, start, stop, remove ----------------------------- */

#define POLL_MS	250

static const char *
dom_name(virDomainPtr d)
{
	const char *n = virDomainGetName(d);
	return n != NULL ? n : "(unnamed)";
}

/*
 * "WHAT domain NAME: libvirt's message" in err.  Every libvirt call,
 * virDomainGetName() too, frees the last error: it is copied first.
 */
static void
dom_error(virDomainPtr d, const char *what, char *err, size_t errsz)
{
	char lv[512];

	snprintf(lv, sizeof(lv), "%s", virt_last_error());
	snprintf(err, errsz, "%s domain %s: %s", what, dom_name(d), lv);
}

int
virt_active(virDomainPtr d, char *err, size_t errsz)
{
	int a = virDomainIsActive(d);
	if (a < 0) {
		dom_error(d, "cannot read the state of", err, errsz);
		return RD_ERR_PEER;
	}
	return a;
}

int
virt_autostart_off(virDomainPtr d, char *err, size_t errsz)
{
	int autostart = 0;
	/* A transient domain has no autostart to turn off. */
	if (virDomainIsPersistent(d) != 1 ||
	    (virDomainGetAutostart(d, &autostart) == 0 && !autostart))
		return 0;
	if (virDomainSetAutostart(d, 0) != 0) {
		dom_error(d, "cannot turn off the autostart of", err, errsz);
		return RD_ERR_PEER;
	}
	return 0;
}

int
virt_define(virConnectPtr c, const char *xml, virDomainPtr *out, char *err,
    size_t errsz)
{
	int r;

	if ((*out = virDomainDefineXML(c, xml)) == NULL) {
		snprintf(err, errsz, "libvirt refused the definition: %s",
		    virt_last_error());
		return RD_ERR_PEER;
	}
	/* Starting would resume that memory on disks it never saw. */
	if (virDomainHasManagedSaveImage(*out, 0) == 1 &&
	    virDomainManagedSaveRemove(*out, 0) != 0) {
		dom_error(*out, "cannot remove the managed save image of", err,
		    errsz);
		r = RD_ERR_PEER;
	} else {
		r = virt_autostart_off(*out, err, errsz);
	}
	if (r != 0) {
		virDomainFree(*out);
		*out = NULL;
	}
	return r;
}

int
virt_start(virDomainPtr d, char *err, size_t errsz)
{
	if (virDomainCreate(d) != 0) {
		dom_error(d, "cannot start", err, errsz);
		return RD_ERR_PEER;
	}
	return 0;
}

static uint64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
pause_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Destroy d, which should still run; why is what err says on success. */
static int
destroy(virDomainPtr d, const char *why, char *err, size_t errsz)
{
	char msg[512];

	snprintf(msg, sizeof(msg), "%s", why);
	if (virDomainDestroy(d) != 0) {
		char lv[256];
		/* Every libvirt call resets the last error: keep it. */
		snprintf(lv, sizeof(lv), "%s", virt_last_error());
		if (virt_active(d, err, errsz) != 0) {
			snprintf(err, errsz, "cannot destroy domain %s%s%s%s: "
			    "%s", dom_name(d), msg[0] ? " (" : "", msg,
			    msg[0] ? ")" : "", lv);
			return RD_ERR_PEER;
		}
	}
	snprintf(err, errsz, "%s", msg);
	return 0;
}

int
virt_shutdown(virDomainPtr d, unsigned timeout_s, enum virt_stop *how,
    char *err, size_t errsz)
{
	uint64_t start = now_ms(), asked = 0, waited;
	int a, first = 1;
	char why[512];

	*how = VIRT_STOP_WAS_OFF;
	if ((a = virt_active(d, err, errsz)) <= 0)
		return a;
	for (;;) {
		waited = now_ms() - start;
		if (first || waited - asked >= VIRT_SHUTDOWN_REPEAT_S * 1000) {
			if (virDomainShutdown(d) != 0 && first) {
				snprintf(why, sizeof(why), "it refused to shut "
				    "down: %s", virt_last_error());
				/* Nothing would bring it down cleanly. */
				if (virt_active(d, err, errsz) > 0) {
					*how = VIRT_STOP_DESTROYED;
					return destroy(d, why, err, errsz);
				}
			}
			asked = waited;
			first = 0;
		}
		if ((a = virt_active(d, err, errsz)) <= 0) {
			if (a == 0)
				*how = VIRT_STOP_SHUTDOWN;
			return a;
		}
		if (waited >= (uint64_t)timeout_s * 1000)
			break;
		pause_ms(POLL_MS);
	}
	snprintf(why, sizeof(why), "still running %u s after it was asked to "
	    "shut down", timeout_s);
	*how = VIRT_STOP_DESTROYED;
	return destroy(d, why, err, errsz);
}

int
virt_remove(virConnectPtr c, const char *name, int *existed, char *err,
    size_t errsz)
{
	const unsigned flags = VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
	    VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
	    VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
	    VIR_DOMAIN_UNDEFINE_NVRAM;
	virDomainPtr d = NULL;
	int r, a;

	*existed = 0;
	if ((r = virt_lookup(c, name, &d, err, errsz)) != 0)
		return r == RD_ERR_NOT_FOUND ? 0 : r;
	*existed = 1;
	if ((a = virt_active(d, err, errsz)) < 0) {
		r = a;
		goto out;
	}
	if (a > 0 && (r = destroy(d, "", err, errsz)) != 0)
		goto out;
	/* A transient domain is gone once destroyed.  A driver without
	 * checkpoints or NVRAM refuses their flags (VIR_ERR_INVALID_ARG). */
	if (virDomainIsPersistent(d) == 1 &&
	    virDomainUndefineFlags(d, flags) != 0 &&
	    (virGetLastErrorCode() != VIR_ERR_INVALID_ARG ||
	    virDomainUndefineFlags(d, flags & ~(unsigned)(
	    VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
	    VIR_DOMAIN_UNDEFINE_NVRAM)) != 0)) {
		snprintf(err, errsz, "cannot undefine domain %s: %s", name,
		    virt_last_error());
		r = RD_ERR_PEER;
		goto out;
	}
	r = 0;
out:
	virDomainFree(d);
	return r;
}

/*
 * The disks of each [vm] with domain = come from the domain's definition.
 * --check says what it found and fails on what it cannot use; the daemon
 * logs it, keeps a VM whose disks = names its disks (cycles fail with
 * the reason until libvirt answers), and leaves out the others.
 */
int
virt_resolve_all(struct config *cfg, int check)
{
	char err[1024], note[2048];
	int rc = 0;

	for (size_t i = 0; i < cfg->nvms; i++) {
		struct cfg_vm *vm = &cfg->vms[i];
		if (vm->domain == NULL)
			continue;
		if (virt_resolve(vm, note, sizeof(note), err,
		    sizeof(err)) == 0) {
			if (check)
				printf("%s:%d: [vm %s] domain %s: %s\n",
				    cfg->path, vm->line, vm->name, vm->domain,
				    note);
			continue;
		}
		if (check) {
			fprintf(stderr, "replicad: %s:%d: [vm %s] domain %s: "
			    "%s\n", cfg->path, vm->line, vm->name, vm->domain,
			    err);
			rc = 1;
		} else if (vm->disks_chosen) {
			log_warnx("%s: domain %s: %s; its cycles fail until "
			    "libvirt knows it", vm->name, vm->domain, err);
		} else {
			log_warnx("%s: domain %s: %s; not replicated until "
			    "replicad restarts (name its disks with disks = "
			    "to start it without libvirt)", vm->name,
			    vm->domain, err);
			config_drop_vm(cfg, i--);
		}
	}
	return rc;
}
