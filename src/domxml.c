/*
 * domxml.c — a recovery point's domain XML made fit to define on this
 * host (domxml.h): libxml2 on a parsed copy, then serialised again.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "domxml.h"
#include "err.h"
#include "xmalloc.h"

#define QEMU_NS	"http://libvirt.org/schemas/domain/qemu/1.0"

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

/* --- disks ------------------------------------------------------------ */

/* A replicated disk: a raw file at path. */
static void
disk_to_copy(xmlNodePtr disk, const char *path)
{
	set_attr(disk, "type", "file");
	set_attr(disk, "device", "disk");

	xmlNodePtr drv = child_made(disk, "driver");
	set_attr(drv, "name", "qemu");
	set_attr(drv, "type", "raw");
	while (drv->children != NULL) {
		/* e.g. <metadata_cache>: qcow2's */
		xmlNodePtr c = drv->children;
		xmlUnlinkNode(c);
		xmlFreeNode(c);
	}

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
	const char *gone[] = { "backingStore", "mirror", "auth", "encryption" };
	for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++)
		drop_all(disk, gone[i]);
}

/* A disk that is not replicated: a removable drive stays, empty. */
static int
disk_left_out(xmlNodePtr disk)
{
	if (!attr_is(disk, "device", "cdrom") &&
	    !attr_is(disk, "device", "floppy"))
		return 0;
	set_attr(disk, "type", "file");
	const char *gone[] = { "source", "backingStore", "mirror", "auth",
	    "encryption" };
	for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++)
		drop_all(disk, gone[i]);
	return 1;
}

static int
rewrite_disks(xmlNodePtr devs, const struct domxml_disk *disks, size_t n,
    char *err, size_t errsz)
{
	int *seen = xcalloc(n + 1, sizeof(int));
	xmlNodePtr d = devs ? devs->children : NULL, next;
	int r = 0;

	for (; d != NULL; d = next) {
		next = d->next;
		if (!is_elem(d, "disk"))
			continue;
		char *dev = attr(child(d, "target"), "dev");
		size_t k = n;
		for (size_t i = 0; dev != NULL && i < n; i++)
			if (!seen[i] && strcmp(dev, disks[i].target) == 0)
				k = i;
		free(dev);
		if (k < n) {
			seen[k] = 1;
			disk_to_copy(d, disks[k].path);
		} else if (!disk_left_out(d)) {
			drop(d);
		}
	}
	for (size_t i = 0; i < n && r == 0; i++)
		if (!seen[i]) {
			snprintf(err, errsz, "the definition has no disk %s",
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
test_domain(xmlNodePtr root, xmlNodePtr devs)
{
	drop_all(root, "uuid");
	xmlNodePtr g = child(root, "genid");
	if (g != NULL)
		set_text(g, NULL);
	xmlNodePtr nv = child(child(root, "os"), "nvram");
	if (nv != NULL) {
		set_text(nv, NULL);
		xmlUnsetProp(nv, (const xmlChar *)"type");
	}
	for (xmlNodePtr d = devs ? devs->children : NULL; d; d = d->next) {
		if (is_elem(d, "interface"))
			test_interface(d);
		else if (is_elem(d, "serial") || is_elem(d, "console") ||
		    is_elem(d, "parallel") || is_elem(d, "channel"))
			test_chardev(d);
	}
}

/* What the sender may not decide for this host (domxml.h). */
static void
drop_host_powers(xmlNodePtr root, xmlNodePtr devs)
{
	xmlNodePtr c, next;

	drop_all(root, "seclabel");
	if (devs != NULL)
		drop_all(devs, "emulator");
	for (c = root->children; c != NULL; c = next) {
		next = c->next;
		if (c->type == XML_ELEMENT_NODE && c->ns != NULL &&
		    xmlStrcmp(c->ns->href, (const xmlChar *)QEMU_NS) == 0)
			drop(c);
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

int
domxml_rewrite(const char *xml, enum domxml_use use, const char *name,
    const struct domxml_disk *disks, size_t ndisks, char **out, char *err,
    size_t errsz)
{
	size_t len = strlen(xml);
	xmlDocPtr doc = NULL;
	int r = RD_ERR_INVALID;

	*out = NULL;
	if (len > INT_MAX || (doc = xmlReadMemory(xml, (int)len, "domain.xml",
	    NULL, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING))
	    == NULL) {
		snprintf(err, errsz, "the point's domain definition is not "
		    "well-formed XML");
		goto out;
	}
	xmlNodePtr root = xmlDocGetRootElement(doc);
	if (!is_elem(root, "domain")) {
		snprintf(err, errsz, "the point's definition is not a libvirt "
		    "<domain>");
		goto out;
	}
	xmlNodePtr devs = child(root, "devices");
	xmlUnsetProp(root, (const xmlChar *)"id");	/* a live domain's */
	set_text(child_made(root, "name"), name);
	if ((r = rewrite_disks(devs, disks, ndisks, err, errsz)) != 0)
		goto out;
	drop_host_powers(root, devs);
	if (use == DOMXML_TEST)
		test_domain(root, devs);
	if ((*out = serialise(doc, root)) == NULL) {
		snprintf(err, errsz, "cannot write the domain XML");
		r = RD_ERR_INTERNAL;
		goto out;
	}
	r = 0;
out:
	if (doc != NULL)
		xmlFreeDoc(doc);
	return r;
}
