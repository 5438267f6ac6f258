/*
 * domxml.c — a recovery point's domain XML made fit to define on this
 * host (domxml.h): libxml2 on a parsed copy, then serialised again.
 * What a definition may name of this host is decided here, in one
 * place: the paths it may use (path_refused()) and the elements kept.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "domxml.h"
#include "err.h"
#include "wire.h"
#include "xmalloc.h"

_Static_assert(WIRE_MAX_DEFINITION <= DOMXML_MAX_LEN,
    "a definition the wire carries must be one domxml takes");

#define QEMU_NS		"http://libvirt.org/schemas/domain/qemu/1.0"
#define NOTE_SIZE	1024	/* what is left out, listed */
#define SHOWN_MAX	72	/* bytes of a sender's string shown */

static int
is_elem(xmlNodePtr n, const char *name)
{
	return n != NULL && n->type == XML_ELEMENT_NODE &&
	    xmlStrcmp(n->name, (const xmlChar *)name) == 0;
}

static xmlNodePtr
child(xmlNodePtr n, const char *name)
{
	for (xmlNodePtr c = n ? n->children : NULL; c != NULL; c = c->next)
		if (is_elem(c, name))
			return c;
	return NULL;
}

/* An attribute's value, allocated; NULL if absent. */
static char *
attr(xmlNodePtr n, const char *name)
{
	xmlChar *v = n ? xmlGetProp(n, (const xmlChar *)name) : NULL;
	if (v == NULL)
		return NULL;
	char *s = xstrdup((const char *)v);
	xmlFree(v);
	return s;
}

static int
attr_is(xmlNodePtr n, const char *name, const char *want)
{
	char *v = attr(n, name);
	int r = v != NULL && strcmp(v, want) == 0;
	free(v);
	return r;
}

static void
set_attr(xmlNodePtr n, const char *name, const char *value)
{
	xmlSetProp(n, (const xmlChar *)name, (const xmlChar *)value);
}

static void
unset_attr(xmlNodePtr n, const char *name)
{
	xmlUnsetProp(n, (const xmlChar *)name);
}

/* The text of n (XPath's string value), allocated. */
static char *
text(xmlNodePtr n)
{
	xmlChar *v = xmlNodeGetContent(n);
	char *s = xstrdup(v != NULL ? (const char *)v : "");
	xmlFree(v);
	return s;
}

/* Unlink and free n, with the indentation before it. */
static void
drop(xmlNodePtr n)
{
	xmlNodePtr prev = n->prev;
	if (prev != NULL && xmlIsBlankNode(prev)) {
		xmlUnlinkNode(prev);
		xmlFreeNode(prev);
	}
	xmlUnlinkNode(n);
	xmlFreeNode(n);
}

/* Drop every child element of n called name. */
static void
drop_all(xmlNodePtr n, const char *name)
{
	xmlNodePtr c = n->children, next;
	for (; c != NULL; c = next) {
		next = c->next;
		if (is_elem(c, name))
			drop(c);
	}
}

/* Drop every child node of n. */
static void
drop_children(xmlNodePtr n)
{
	while (n->children != NULL) {
		xmlNodePtr c = n->children;
		xmlUnlinkNode(c);
		xmlFreeNode(c);
	}
}

/* The first child called name, made if n has none. */
static xmlNodePtr
child_made(xmlNodePtr n, const char *name)
{
	xmlNodePtr c = child(n, name);
	return c != NULL ? c : xmlNewChild(n, NULL, (const xmlChar *)name,
	    NULL);
}

/* Replace the text of n by text (NULL: no content). */
static void
set_text(xmlNodePtr n, const char *text)
{
	xmlNodeSetContent(n, NULL);
	if (text != NULL)
		xmlNodeAddContent(n, (const xmlChar *)text);
}

/* attr name of n gets DOMXML_TEST_SUFFIX, if n has it. */
static void
suffix_attr(xmlNodePtr n, const char *name)
{
	char *v = attr(n, name);
	if (v == NULL || v[0] == '\0') {
		free(v);
		return;
	}
	char *s = xasprintf("%s%s", v, DOMXML_TEST_SUFFIX);
	set_attr(n, name, s);
	free(s);
	free(v);
}

static int
one_of(const char *s, const char *const *set)
{
	for (; s != NULL && *set != NULL; set++)
		if (strcmp(s, *set) == 0)
			return 1;
	return 0;
}

/* --- what is left out, and why ------------------------------------------ */

/* One rewriting: the policy, what it left out, or why it refused. */
struct san {
	const struct domxml_policy *pol;
	enum domxml_use	 use;
	char		 note[NOTE_SIZE];
	size_t		 nnote;		/* items in note */
	size_t		 more;		/* items that did not fit */
	char		*err;
	size_t		 errsz;
	int		 refused;	/* RD_ERR_DENIED, err set */
};

/* A sender's string fit for a log line: printable ASCII, bounded. */
static const char *
shown(const char *s, char *buf, size_t bufsz)
{
	size_t i, max = bufsz - 4 < SHOWN_MAX ? bufsz - 4 : SHOWN_MAX;
	for (i = 0; s[i] != '\0' && i < max; i++)
		buf[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
	buf[i] = '\0';
	if (s[i] != '\0')
		strcpy(buf + i, "...");
	return buf;
}

/* "<name type='T'>" of n (its type, if it has one). */
static const char *
label(xmlNodePtr n, char *buf, size_t bufsz)
{
	char *type = attr(n, "type"), t[SHOWN_MAX + 4];
	char nm[SHOWN_MAX + 4], pf[SHOWN_MAX + 4] = "";

	if (n->ns != NULL && n->ns->prefix != NULL)
		snprintf(pf, sizeof(pf), "%s:", shown((const char *)
		    n->ns->prefix, t, sizeof(t)));
	shown((const char *)n->name, nm, sizeof(nm));
	if (type != NULL)
		snprintf(buf, bufsz, "<%s%s type='%s'>", pf, nm,
		    shown(type, t, sizeof(t)));
	else
		snprintf(buf, bufsz, "<%s%s>", pf, nm);
	free(type);
	return buf;
}

static void
note(struct san *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One more item of what is left out ("<hostdev> (a device of this host)"). */
static void
note(struct san *s, const char *fmt, ...)
{
	char item[384];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(item, sizeof(item), fmt, ap);
	va_end(ap);
	size_t len = strlen(s->note), need = strlen(item) + 2;
	/* Room kept for ", and N more". */
	if (len + need + 24 >= sizeof(s->note)) {
		s->more++;
		return;
	}
	snprintf(s->note + len, sizeof(s->note) - len, "%s%s",
	    s->nnote > 0 ? ", " : "", item);
	s->nnote++;
}

/* Item of element n, with a path or detail of the sender's (or NULL). */
static void
note_elem(struct san *s, xmlNodePtr n, const char *detail, const char *why)
{
	char l[2 * SHOWN_MAX + 32], d[SHOWN_MAX + 4];
	label(n, l, sizeof(l));
	if (detail != NULL && detail[0] != '\0')
		note(s, "%s %s (%s)", l, shown(detail, d, sizeof(d)), why);
	else
		note(s, "%s (%s)", l, why);
}

static void
refuse(struct san *s, xmlNodePtr n, const char *path, const char *why)
{
	char d[SHOWN_MAX + 4];
	if (s->refused)
		return;
	s->refused = 1;
	snprintf(s->err, s->errsz, "its <%s> %s is %s: the guest cannot "
	    "boot without it (replicad.conf(5): domain_paths)",
	    (const char *)n->name, shown(path, d, sizeof(d)), why);
}

/* --- which host files it may name ---------------------------------------- */

/*
 * path made canonical into buf: one '/' between components, no "." and
 * no trailing '/'.  -1 if it is relative, -2 if it has a ".." component
 * (trusted: the configuration's, where ".." takes the component before
 * it away), -3 if it does not fit (no host path is that long).
 */
static int
canonical(const char *path, int trusted, char *buf, size_t bufsz)
{
	size_t len = 0;
	const char *p = path;

	if (path[0] != '/')
		return -1;
	while (*p != '\0') {
		while (*p == '/')
			p++;
		size_t n = strcspn(p, "/");
		if (n == 0 || (n == 1 && p[0] == '.')) {
			p += n;
			continue;
		}
		if (n == 2 && p[0] == '.' && p[1] == '.') {
			if (!trusted)
				return -2;
			while (len > 0 && buf[--len] != '/')
				;
			p += n;
			continue;
		}
		if (len + 1 + n + 1 > bufsz)
			return -3;
		buf[len++] = '/';
		memcpy(buf + len, p, n);
		len += n;
		p += n;
	}
	if (len == 0)
		buf[len++] = '/';
	buf[len] = '\0';
	return 0;
}

/* Whether canonical path c is below directory dir (or at it, if at). */
static int
under(const char *c, const char *dir, int at)
{
	char d[PATH_MAX];
	if (canonical(dir, 1, d, sizeof(d)) != 0)
		return 0;
	if (strcmp(d, "/") == 0)
		return at || c[1] != '\0';
	size_t n = strlen(d);
	return strncmp(c, d, n) == 0 && (c[n] == '/' || (at && c[n] == '\0'));
}

/*
 * Why the definition may not name path on this host, or NULL if it may.
 * firmware: a file QEMU gets to read as firmware, which may also be in
 * DOMXML_FIRMWARE_DIR.
 */
static const char *
path_refused(const struct domxml_policy *pol, const char *path, int firmware)
{
	char c[PATH_MAX];

	switch (canonical(path, 0, c, sizeof(c))) {
	case 0:
		break;
	case -1:
		return "not an absolute path";
	case -2:
		return "a path with '..' in it";
	default:
		return "too long a path";
	}
	for (size_t i = 0; pol != NULL && i < pol->ndeny; i++)
		if (under(c, pol->deny[i], 1))
			return "among replicad's own files";
	if (firmware && under(c, DOMXML_FIRMWARE_DIR, 0))
		return NULL;
	for (size_t i = 0; pol != NULL && i < pol->ndirs; i++)
		if (under(c, pol->dirs[i], 0))
			return NULL;
	return "outside domain_paths";
}

/* --- disks ------------------------------------------------------------ */

static const char *const disk_gone[] = { "backingStore", "mirror", "auth",
    "encryption", NULL };

/* Attributes of a <disk> that give QEMU more than a file. */
static void
disk_plain(xmlNodePtr disk)
{
	unset_attr(disk, "rawio");
	unset_attr(disk, "sgio");
	for (const char *const *g = disk_gone; *g != NULL; g++)
		drop_all(disk, *g);
}

/* A replicated disk: a raw file at path. */
static void
disk_to_copy(xmlNodePtr disk, const char *path)
{
	set_attr(disk, "type", "file");
	set_attr(disk, "device", "disk");

	xmlNodePtr drv = child_made(disk, "driver");
	set_attr(drv, "name", "qemu");
	set_attr(drv, "type", "raw");
	drop_children(drv);	/* e.g. <metadata_cache>: qcow2's */

	/* A new <source> where the first one was (children, index gone). */
	xmlNodePtr src = xmlNewNode(NULL, (const xmlChar *)"source");
	set_attr(src, "file", path);
	xmlNodePtr old = child(disk, "source");
	if (old != NULL) {
		xmlReplaceNode(old, src);
		xmlFreeNode(old);
	} else {
		xmlAddChild(disk, src);
	}
	for (xmlNodePtr c = disk->children, next; c != NULL; c = next) {
		next = c->next;
		if (c != src && is_elem(c, "source"))
			drop(c);
	}
	disk_plain(disk);
}

/* A disk that is not replicated: a removable drive stays, empty. */
static void
disk_left_out(struct san *s, xmlNodePtr disk, const char *target)
{
	if (!attr_is(disk, "device", "cdrom") &&
	    !attr_is(disk, "device", "floppy")) {
		note_elem(s, disk, target, "not replicated");
		drop(disk);
		return;
	}
	if (child(disk, "source") != NULL)
		note_elem(s, disk, target, "its medium is not replicated: the "
		    "drive stays, empty");
	set_attr(disk, "type", "file");
	drop_all(disk, "source");
	disk_plain(disk);
}

/* Every <devices> of root: libvirt reads them all as one. */
#define FOR_DEVICES(root, devs) \
	for (xmlNodePtr devs = (root)->children; devs != NULL; \
	    devs = devs->next) \
		if (is_elem(devs, "devices"))

static int
rewrite_disks(struct san *s, xmlNodePtr root, const struct domxml_disk *disks,
    size_t n)
{
	int *seen = xcalloc(n + 1, sizeof(int));
	int r = 0;

	FOR_DEVICES(root, devs) {
		xmlNodePtr d, next;
		for (d = devs->children; d != NULL; d = next) {
			next = d->next;
			if (!is_elem(d, "disk"))
				continue;
			char *dev = attr(child(d, "target"), "dev");
			size_t k = n;
			for (size_t i = 0; dev != NULL && i < n; i++)
				if (!seen[i] && strcmp(dev, disks[i].target) == 0)
					k = i;
			if (k < n) {
				seen[k] = 1;
				disk_to_copy(d, disks[k].path);
			} else {
				disk_left_out(s, d, dev);
			}
			free(dev);
		}
	}
	for (size_t i = 0; i < n && r == 0; i++)
		if (!seen[i]) {
			snprintf(s->err, s->errsz, "the definition has no disk %s",
			    disks[i].target);
			r = RD_ERR_INVALID;
		}
	free(seen);
	return r;
}

/* --- a test copy ------------------------------------------------------ */

static void
test_interface(xmlNodePtr ifc)
{
	drop_all(ifc, "mac");
	set_attr(child_made(ifc, "link"), "state", "down");
}

/* serial, console, parallel, channel: nothing of production's files. */
static void
test_chardev(xmlNodePtr c)
{
	char *type = attr(c, "type");
	xmlNodePtr src, next;

	if (type != NULL && strcmp(type, "dev") == 0) {
		set_attr(c, "type", "null");
		drop_all(c, "source");
	} else if (type != NULL && (strcmp(type, "file") == 0 ||
	    strcmp(type, "pipe") == 0 || strcmp(type, "unix") == 0)) {
		for (src = c->children; src != NULL; src = next) {
			next = src->next;
			if (!is_elem(src, "source"))
				continue;
			if (strcmp(type, "unix") == 0 &&
			    !attr_is(src, "mode", "bind"))
				continue;
			suffix_attr(src, "path");
		}
	}
	for (src = c->children; src != NULL; src = src->next)
		if (is_elem(src, "log"))
			suffix_attr(src, "file");
	free(type);
}

static void
test_domain(xmlNodePtr root)
{
	drop_all(root, "uuid");
	for (xmlNodePtr g = root->children; g != NULL; g = g->next)
		if (is_elem(g, "genid"))
			set_text(g, NULL);
	for (xmlNodePtr os = root->children; os != NULL; os = os->next) {
		if (!is_elem(os, "os"))
			continue;
		for (xmlNodePtr nv = os->children; nv != NULL; nv = nv->next)
			if (is_elem(nv, "nvram")) {
				set_text(nv, NULL);
				unset_attr(nv, "type");
			}
	}
	FOR_DEVICES(root, devs) {
		for (xmlNodePtr d = devs->children; d; d = d->next) {
			if (is_elem(d, "interface"))
				test_interface(d);
			else if (is_elem(d, "serial") || is_elem(d, "console") ||
			    is_elem(d, "parallel") || is_elem(d, "channel"))
				test_chardev(d);
		}
	}
}

/* --- what the sender may not decide for this host ------------------------ */

/*
 * Elements and attributes in a namespace, anywhere but in <metadata>:
 * libvirt's QEMU namespace passes arguments to QEMU as they are, and
 * libvirt reads an attribute by its name whatever its namespace.  Every
 * <seclabel>, the domain's and a device's: this host's security driver
 * decides.
 */
static void
strip(struct san *s, xmlNodePtr n, int top)
{
	xmlAttrPtr a, an;
	xmlNodePtr c, next;

	for (a = n->properties; a != NULL; a = an) {
		an = a->next;
		if (a->ns != NULL)
			xmlRemoveProp(a);
	}
	for (c = n->children; c != NULL; c = next) {
		next = c->next;
		if (c->type != XML_ELEMENT_NODE)
			continue;
		if (c->ns != NULL) {
			note_elem(s, c, NULL, xmlStrcmp(c->ns->href,
			    (const xmlChar *)QEMU_NS) == 0 ? "QEMU's own "
			    "options" : "not libvirt's");
			drop(c);
		} else if (is_elem(c, "seclabel")) {
			drop(c);
		} else if (!(top && is_elem(c, "metadata"))) {
			strip(s, c, 0);
		}
	}
}

/* A path attribute of n the definition may not name: noted and unset. */
static int
path_attr(struct san *s, xmlNodePtr n, const char *name, int firmware,
    const char *instead)
{
	char *p = attr(n, name);
	const char *no = p != NULL && p[0] != '\0' ?
	    path_refused(s->pol, p, firmware) : NULL;
	if (no != NULL) {
		char l[2 * SHOWN_MAX + 32], d[SHOWN_MAX + 4];
		note(s, "%s %s=%s (%s; %s)", label(n, l, sizeof(l)), name,
		    shown(p, d, sizeof(d)), no, instead);
		unset_attr(n, name);
	}
	free(p);
	return no != NULL;
}

/* --- <os> --- */

static const char *const os_known[] = { "type", "firmware", "loader",
    "nvram", "kernel", "initrd", "cmdline", "dtb", "acpi", "boot",
    "bootmenu", "bios", "smbios", NULL };

/* <nvram>: this host's own unless it is a file the definition may name. */
static void
san_nvram(struct san *s, xmlNodePtr nv)
{
	char *type = attr(nv, "type"), *path = NULL;
	const char *why;

	path_attr(s, nv, "template", 1, "libvirt's default instead");
	if (type == NULL)
		path = text(nv);
	else if (strcmp(type, "file") == 0)
		path = attr(child(nv, "source"), "file");
	else if (strcmp(type, "block") == 0)
		path = attr(child(nv, "source"), "dev");
	if (type == NULL && path[0] == '\0')
		why = NULL;
	else if (path == NULL)
		why = "not a file";
	else
		why = path_refused(s->pol, path, 0);
	if (why != NULL) {
		char w[160];
		snprintf(w, sizeof(w), "%s; libvirt makes this host's own",
		    why);
		note_elem(s, nv, path, w);
		set_text(nv, NULL);
		unset_attr(nv, "type");
	}
	free(type);
	free(path);
}

static void
san_os(struct san *s, xmlNodePtr os)
{
	xmlNodePtr c, next, t, tn;

	for (c = os->children; c != NULL; c = next) {
		next = c->next;
		if (c->type != XML_ELEMENT_NODE)
			continue;
		if (is_elem(c, "kernel") || is_elem(c, "initrd") ||
		    is_elem(c, "dtb") || is_elem(c, "loader")) {
			char *p = text(c);
			const char *why = p[0] == '\0' ? NULL :
			    path_refused(s->pol, p, is_elem(c, "loader"));
			if (why != NULL)
				refuse(s, c, p, why);
			free(p);
		} else if (is_elem(c, "nvram")) {
			san_nvram(s, c);
		} else if (is_elem(c, "acpi")) {
			for (t = c->children; t != NULL; t = tn) {
				tn = t->next;
				if (!is_elem(t, "table"))
					continue;
				char *p = text(t);
				const char *why = path_refused(s->pol, p, 0);
				if (why != NULL) {
					note_elem(s, t, p, why);
					drop(t);
				}
				free(p);
			}
		} else if (!one_of((const char *)c->name, os_known)) {
			note_elem(s, c, NULL, "unknown to replicad");
			drop(c);
		}
	}
}

/* --- chardevs: serial, console, parallel, channel; and their kin --- */

static const char *const chr_safe[] = { "null", "vc", "pty", "spicevmc",
    "spiceport", "qemu-vdagent", "dbus", NULL };
static const char *const chr_paths[] = { "file", "pipe", "dev", "unix",
    NULL };

/*
 * Why the chardev backend of c (its type and <source>s) may not be used
 * here, or NULL; *detail: the path or address at fault (allocated).
 */
static const char *
chr_refused(struct san *s, xmlNodePtr c, char **detail)
{
	char *type = attr(c, "type");
	const char *why = NULL;
	xmlNodePtr src;

	*detail = NULL;
	if (type == NULL || one_of(type, chr_safe)) {
		/* No type: a pty.  A pty's path is the one libvirt opened
		 * (live XML); none of these opens one of the sender's. */
		for (src = c->children; src != NULL; src = src->next)
			if (is_elem(src, "source"))
				unset_attr(src, "path");
		goto out;
	}
	if (one_of(type, chr_paths)) {
		for (src = c->children; src != NULL && why == NULL;
		    src = src->next) {
			if (!is_elem(src, "source"))
				continue;
			char *p = attr(src, "path");
			if (p != NULL && (why = path_refused(s->pol, p, 0)))
				*detail = p;
			else
				free(p);
		}
	} else if (strcmp(type, "tcp") == 0) {
		for (src = c->children; src != NULL && why == NULL;
		    src = src->next)
			if (is_elem(src, "source") && !attr_is(src, "mode",
			    "bind")) {
				why = "it connects from this host";
				*detail = attr(src, "host");
			}
	} else if (strcmp(type, "udp") == 0) {
		why = "it sends from this host";
	} else {
		why = "unknown to replicad";
	}
out:
	free(type);
	return why;
}

static void
to_pty(xmlNodePtr c)
{
	set_attr(c, "type", "pty");
	drop_all(c, "source");
	drop_all(c, "protocol");
}

static void
san_chardev(struct san *s, xmlNodePtr c)
{
	xmlNodePtr l, ln, src;
	char *detail, w[160];

	for (l = c->children; l != NULL; l = ln) {
		ln = l->next;
		if (!is_elem(l, "log"))
			continue;
		char *f = attr(l, "file");
		const char *why = f ? path_refused(s->pol, f, 0) : NULL;
		if (why != NULL) {
			note_elem(s, l, f, why);
			drop(l);
		}
		free(f);
	}
	const char *why = chr_refused(s, c, &detail);
	if (why == NULL)
		return;
	if (!is_elem(c, "channel")) {
		snprintf(w, sizeof(w), "%s; a pty instead", why);
		note_elem(s, c, detail, w);
		to_pty(c);
	} else if (attr_is(c, "type", "unix") && detail != NULL &&
	    attr_is(child(c, "target"), "type", "virtio")) {
		snprintf(w, sizeof(w), "%s; a socket libvirt makes instead",
		    why);
		note_elem(s, c, detail, w);
		for (src = c->children; src != NULL; src = src->next)
			if (is_elem(src, "source")) {
				unset_attr(src, "path");
				set_attr(src, "mode", "bind");
			}
	} else {
		note_elem(s, c, detail, why);
		drop(c);
	}
	free(detail);
}

/* --- network, display, sound, randomness --- */

static const char *const ifc_kept[] = { "network", "bridge", "user", NULL };

static void
san_interface(struct san *s, xmlNodePtr c)
{
	xmlNodePtr k, next;
	char *type = attr(c, "type");

	if (!one_of(type, ifc_kept)) {
		char *dev = attr(child(c, "source"), "dev");
		note_elem(s, c, dev, "a network device of this host");
		free(dev);
		drop(c);
		goto out;
	}
	for (k = c->children; k != NULL; k = next) {
		next = k->next;
		if (is_elem(k, "script") || is_elem(k, "downscript")) {
			char *p = attr(k, "path");
			note_elem(s, k, p, "a program run on this host");
			free(p);
			drop(k);
		} else if (is_elem(k, "target")) {
			drop(k);	/* libvirt names tap devices */
		} else if (is_elem(k, "backend")) {
			for (size_t i = 0; i < 2; i++) {
				const char *a = i == 0 ? "tap" : "vhost";
				char *p = attr(k, a);
				if (p != NULL) {
					note(s, "<backend %s=> (a device of "
					    "this host)", a);
					unset_attr(k, a);
				}
				free(p);
			}
			path_attr(s, k, "logFile", 0, "no log");
		} else if (is_elem(k, "rom")) {
			path_attr(s, k, "file", 0, "no ROM file");
		}
	}
out:
	free(type);
}

static const char *const gfx_kept[] = { "vnc", "spice", "egl-headless",
    "dbus", NULL };

/* Render nodes: <graphics><gl rendernode=>, <video><model><acceleration
 * rendernode=>. */
static void
san_rendernodes(struct san *s, xmlNodePtr n)
{
	for (xmlNodePtr k = n->children; k != NULL; k = k->next) {
		if (is_elem(k, "gl") || is_elem(k, "acceleration"))
			path_attr(s, k, "rendernode", 0, "libvirt picks one");
		else if (is_elem(k, "model"))
			san_rendernodes(s, k);
	}
}

static void
san_graphics(struct san *s, xmlNodePtr c)
{
	char *type = attr(c, "type");

	if (!one_of(type, gfx_kept)) {
		note_elem(s, c, NULL, "this host's display");
		drop(c);
		goto out;
	}
	path_attr(s, c, "socket", 0, "a socket libvirt makes instead");
	for (xmlNodePtr k = c->children; k != NULL; k = k->next)
		if (is_elem(k, "listen"))
			path_attr(s, k, "socket", 0, "a socket libvirt makes "
			    "instead");
	san_rendernodes(s, c);
	char *bus = attr(c, "address");
	if (bus != NULL && strcmp(type, "dbus") == 0) {
		note_elem(s, c, bus, "a D-Bus bus of this host; libvirt's "
		    "own instead");
		unset_attr(c, "address");
	}
	free(bus);
out:
	free(type);
}

static const char *const audio_kept[] = { "none", "spice", "dbus", "file",
    NULL };

static void
san_audio(struct san *s, xmlNodePtr c)
{
	char *type = attr(c, "type"), *path = attr(c, "path");
	const char *why = NULL;

	if (!one_of(type, audio_kept))
		why = "this host's sound";
	else if (strcmp(type, "file") == 0)
		why = path == NULL ? NULL : path_refused(s->pol, path, 0);
	if (why != NULL) {
		char w[160];
		snprintf(w, sizeof(w), "%s; none instead", why);
		note_elem(s, c, type != NULL && strcmp(type, "file") == 0 ?
		    path : NULL, w);
		xmlAttrPtr a, an;
		for (a = c->properties; a != NULL; a = an) {
			an = a->next;
			if (xmlStrcmp(a->name, (const xmlChar *)"id") != 0 &&
			    xmlStrcmp(a->name, (const xmlChar *)"timerPeriod")
			    != 0)
				xmlRemoveProp(a);
		}
		drop_children(c);
		set_attr(c, "type", "none");
	}
	free(type);
	free(path);
}

static const char *const rng_files[] = { "/dev/random", "/dev/urandom",
    "/dev/hwrng", NULL };

/* 1 if the <rng> c goes. */
static int
san_rng(struct san *s, xmlNodePtr c)
{
	for (xmlNodePtr b = c->children; b != NULL; b = b->next) {
		if (!is_elem(b, "backend"))
			continue;
		char *model = attr(b, "model"), *p = NULL;
		const char *why = NULL;
		if (model != NULL && strcmp(model, "random") == 0) {
			p = text(b);
			if (p[0] != '\0' && !one_of(p, rng_files)) {
				note_elem(s, c, p, "a file of this host; "
				    "/dev/urandom instead");
				set_text(b, "/dev/urandom");
			}
		} else if (model != NULL && strcmp(model, "egd") == 0) {
			why = chr_refused(s, b, &p);
		} else if (model == NULL || strcmp(model, "builtin") != 0) {
			why = "unknown to replicad";
		}
		if (why != NULL)
			note_elem(s, c, p, why);
		free(model);
		free(p);
		if (why != NULL)
			return 1;
	}
	return 0;
}

/* --- <devices> --- */

static const char *const dev_kept[] = { "disk", "controller", "sound",
    "hub", "watchdog", "memballoon", "panic", "iommu", "vsock", "nvram",
    "crypto", "redirfilter", NULL };

/* The host path an element is about (its <source>'s), for the note. */
static char *
source_of(xmlNodePtr c)
{
	const char *names[] = { "dir", "file", "dev", "socket", "path",
	    "name", NULL };
	xmlNodePtr src = child(c, "source");
	for (const char **n = names; src != NULL && *n != NULL; n++) {
		char *v = attr(src, *n);
		if (v != NULL)
			return v;
	}
	return NULL;
}

/*
 * Why the device c may not be defined here as it is, or NULL to keep it
 * (after any change of its own); *detail: what of this host it names
 * (allocated, or NULL).  "": it went, and said why itself.
 */
static const char *
san_device(struct san *s, xmlNodePtr c, char **detail)
{
	static const char *const inputs[] = { "mouse", "keyboard", "tablet",
	    NULL };
	const char *why = NULL;

	*detail = NULL;
	if (one_of((const char *)c->name, dev_kept))
		return NULL;
	if (is_elem(c, "filesystem")) {
		*detail = source_of(c);
		why = "a directory of this host";
	} else if (is_elem(c, "hostdev")) {
		*detail = source_of(c);
		why = "a device of this host";
	} else if (is_elem(c, "input")) {
		char *type = attr(c, "type");
		if (!one_of(type, inputs)) {
			*detail = source_of(c);
			why = "a device of this host";
		}
		free(type);
	} else if (is_elem(c, "tpm")) {
		xmlNodePtr b = child(c, "backend");
		if (!attr_is(b, "type", "emulator") ||
		    child(b, "source") != NULL) {
			*detail = source_of(b);
			why = "a device of this host";
		}
	} else if (is_elem(c, "shmem")) {
		*detail = attr(c, "name");
		why = "memory shared on this host";
	} else if (is_elem(c, "memory")) {
		xmlNodePtr src = child(c, "source");
		*detail = src != NULL ? text(child(src, "path")) : NULL;
		if ((*detail != NULL && (*detail)[0] != '\0') ||
		    attr_is(c, "model", "nvdimm") ||
		    attr_is(c, "model", "virtio-pmem"))
			why = "a file of this host as guest memory";
	} else if (is_elem(c, "lease")) {
		*detail = attr(child(c, "target"), "path");
		why = *detail ? path_refused(s->pol, *detail, 0) : NULL;
	} else if (is_elem(c, "pstore")) {
		*detail = text(child(c, "path"));
		why = path_refused(s->pol, *detail, 0);
	} else if (is_elem(c, "redirdev") || (is_elem(c, "smartcard") &&
	    attr_is(c, "mode", "passthrough"))) {
		why = chr_refused(s, c, detail);
	} else if (is_elem(c, "smartcard")) {
		why = "a smartcard reader of this host";
	} else if (is_elem(c, "serial") || is_elem(c, "console") ||
	    is_elem(c, "parallel") || is_elem(c, "channel")) {
		san_chardev(s, c);
	} else if (is_elem(c, "interface")) {
		san_interface(s, c);
	} else if (is_elem(c, "graphics")) {
		san_graphics(s, c);
	} else if (is_elem(c, "video")) {
		san_rendernodes(s, c);
	} else if (is_elem(c, "audio")) {
		san_audio(s, c);
	} else if (is_elem(c, "rng")) {
		why = san_rng(s, c) ? "" : NULL;
	} else {
		why = "unknown to replicad";
	}
	return why;
}

static void
san_devices(struct san *s, xmlNodePtr devs)
{
	xmlNodePtr c, next;

	for (c = devs->children; c != NULL; c = next) {
		next = c->next;
		if (c->type != XML_ELEMENT_NODE)
			continue;
		if (is_elem(c, "emulator")) {
			drop(c);	/* libvirt picks this host's */
			continue;
		}
		/* Those that change themselves may drop themselves too. */
		int self = is_elem(c, "serial") || is_elem(c, "console") ||
		    is_elem(c, "parallel") || is_elem(c, "channel") ||
		    is_elem(c, "interface") || is_elem(c, "graphics");
		char *detail = NULL;
		const char *why = san_device(s, c, &detail);
		if (why != NULL && !self) {
			if (why[0] != '\0')	/* "": noted already */
				note_elem(s, c, detail, why);
			drop(c);
		}
		free(detail);
	}
}

/* --- the domain --- */

static const char *const domain_known[] = { "name", "uuid", "genid",
    "title", "description", "metadata", "maxMemory", "memory",
    "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu",
    "vcpus", "iothreads", "iothreadids", "defaultiothread", "cputune",
    "numatune", "resource", "sysinfo", "os", "features", "cpu", "clock",
    "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf",
    "devices", "keywrap", "launchSecurity", "throttlegroups", NULL };

static void
san_domain(struct san *s, xmlNodePtr root)
{
	static const char *const rt[] = { "fifo", "rr", NULL };
	xmlNodePtr c, next, k, kn;

	for (c = root->children; c != NULL; c = next) {
		next = c->next;
		if (c->type != XML_ELEMENT_NODE)
			continue;
		if (is_elem(c, "os")) {
			san_os(s, c);
		} else if (is_elem(c, "devices")) {
			san_devices(s, c);
		} else if (is_elem(c, "sysinfo")) {
			/* type='fwcfg': files QEMU hands the firmware */
			for (k = c->children; k != NULL; k = kn) {
				kn = k->next;
				char *f = is_elem(k, "entry") ? attr(k, "file") :
				    NULL;
				const char *why = f ? path_refused(s->pol, f, 0) :
				    NULL;
				if (why != NULL) {
					note_elem(s, k, f, why);
					drop(k);
				}
				free(f);
			}
			if (child(c, "entry") == NULL && attr_is(c, "type",
			    "fwcfg"))
				drop(c);	/* libvirt wants one */
		} else if (is_elem(c, "cputune")) {
			for (k = c->children; k != NULL; k = kn) {
				kn = k->next;
				char *sch = k->type == XML_ELEMENT_NODE ?
				    attr(k, "scheduler") : NULL;
				if (one_of(sch, rt)) {
					note_elem(s, k, sch, "real-time "
					    "scheduling on this host");
					drop(k);
				}
				free(sch);
			}
		} else if (is_elem(c, "resource")) {
			for (k = c->children; k != NULL; k = kn) {
				kn = k->next;
				if (!is_elem(k, "partition"))
					continue;
				char *p = text(k);
				if (strcmp(p, "/machine") != 0) {
					note_elem(s, k, p, "a cgroup of this "
					    "host");
					drop(k);
				}
				free(p);
			}
			if (xmlFirstElementChild(c) == NULL)
				drop(c);	/* libvirt wants a partition */
		} else if (is_elem(c, "bootloader") ||
		    is_elem(c, "bootloader_args")) {
			note_elem(s, c, NULL, "a program run on this host");
			drop(c);
		} else if (!one_of((const char *)c->name, domain_known)) {
			note_elem(s, c, NULL, "unknown to replicad");
			drop(c);
		}
	}
}

/* --- the whole -------------------------------------------------------- */

static char *
serialise(xmlDocPtr doc, xmlNodePtr root)
{
	xmlBufferPtr buf = xmlBufferCreate();
	char *s = NULL;
	if (buf == NULL)
		return NULL;
	if (xmlNodeDump(buf, doc, root, 0, 0) >= 0)
		s = xstrdup((const char *)xmlBufferContent(buf));
	xmlBufferFree(buf);
	return s;
}

/*
 * No DTD: nothing is loaded, no entity declared or expanded, no default
 * attribute added (XML_PARSE_NOENT, DTDLOAD, DTDATTR and XINCLUDE off).
 * A DOCTYPE is refused before libxml2 parses it, and again after.
 */
static xmlDocPtr
parse(const char *xml, struct san *s)
{
	size_t len = strlen(xml);
	xmlDocPtr doc;

	if (len > DOMXML_MAX_LEN) {
		snprintf(s->err, s->errsz, "the point's domain definition is "
		    "larger than %u bytes", DOMXML_MAX_LEN);
		return NULL;
	}
	if (strstr(xml, "<!DOCTYPE") != NULL) {
		snprintf(s->err, s->errsz, "the point's domain definition has "
		    "a DOCTYPE (a libvirt domain has none)");
		return NULL;
	}
	doc = xmlReadMemory(xml, (int)len, "domain.xml", NULL,
	    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (doc == NULL) {
		snprintf(s->err, s->errsz, "the point's domain definition is "
		    "not well-formed XML");
		return NULL;
	}
	if (doc->intSubset != NULL || doc->extSubset != NULL) {
		snprintf(s->err, s->errsz, "the point's domain definition has "
		    "a DOCTYPE (a libvirt domain has none)");
		xmlFreeDoc(doc);
		return NULL;
	}
	return doc;
}

int
domxml_rewrite(const char *xml, enum domxml_use use, const char *name,
    const struct domxml_disk *disks, size_t ndisks,
    const struct domxml_policy *pol, char **out, char **left_out, char *err,
    size_t errsz)
{
	struct san *s = xcalloc(1, sizeof(*s));
	xmlDocPtr doc;
	int r = RD_ERR_INVALID;

	*out = NULL;
	*left_out = NULL;
	s->pol = pol;
	s->use = use;
	s->err = err;
	s->errsz = errsz;
	if ((doc = parse(xml, s)) == NULL)
		goto out;
	xmlNodePtr root = xmlDocGetRootElement(doc);
	if (!is_elem(root, "domain") || root->ns != NULL) {
		snprintf(err, errsz, "the point's definition is not a libvirt "
		    "<domain>");
		goto out;
	}
	strip(s, root, 1);
	unset_attr(root, "id");		/* a live domain's */
	set_text(child_made(root, "name"), name);
	if ((r = rewrite_disks(s, root, disks, ndisks)) != 0)
		goto out;
	if (use == DOMXML_TEST)
		test_domain(root);
	san_domain(s, root);
	if (s->refused) {
		r = RD_ERR_DENIED;
		goto out;
	}
	if ((*out = serialise(doc, root)) == NULL) {
		snprintf(err, errsz, "cannot write the domain XML");
		r = RD_ERR_INTERNAL;
		goto out;
	}
	if (s->nnote > 0) {
		if (s->more > 0)
			*left_out = xasprintf("%s, and %zu more", s->note,
			    s->more);
		else
			*left_out = xstrdup(s->note);
	}
	r = 0;
out:
	if (doc != NULL)
		xmlFreeDoc(doc);
	free(s);
	return r;
}
