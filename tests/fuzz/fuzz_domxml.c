/*
 * fuzz_domxml.c — libFuzzer harness for domxml_rewrite(): any bytes as a
 * recovery point's domain definition (it comes from the primary).  Both
 * uses, two replicated disks, files allowed below /srv/vm only.  It must
 * give an error or a domain XML that parses, is named as asked, has each
 * replicated disk at its copy, for a test no UUID and no MAC, and names
 * no host file outside the policy, no device, directory or program of
 * the host, nothing in a namespace outside <metadata>, no <seclabel>;
 * never crash or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "domxml.h"
#include "err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct domxml_disk disks[] = {
	{ "vda", "/srv/replicas/web01/vda" },
	{ "vdb", "/srv/replicas/web01/vdb" },
};
static const char *const dirs[] = { "/srv/vm" };
static const char *const deny[] = { "/srv/replicas", "/srv/vm/state" };
static const struct domxml_policy policy = { dirs, 1, deny, 2 };

/* Nothing of these may be left, outside <metadata>. */
static const char *const never[] = {
	"/domain/devices/filesystem", "/domain/devices/hostdev",
	"/domain/devices/shmem", "/domain/devices/emulator",
	"/domain/*[not(self::metadata)]/descendant-or-self::seclabel",
	"/domain/seclabel",
	"/domain/devices/interface[@type!='network' and @type!='bridge' and "
	"@type!='user']",
	"/domain/devices/input[@type!='mouse' and @type!='keyboard' and "
	"@type!='tablet']",
	"/domain/devices/memory[@model='nvdimm' or @model='virtio-pmem']",
	"/domain/devices/interface/script", "/domain/devices/interface/downscript",
	"/domain/devices/interface/target", "/domain/devices/interface/backend"
	"[@tap or @vhost]", "/domain/bootloader",
	"/domain/devices/*[@type='tcp']/source[not(@mode='bind')]",
	"/domain/devices/*[@type='udp']",
	"/domain/*[not(self::metadata)]/descendant-or-self::*"
	"[namespace-uri()!='']",
	"/domain/*[not(self::metadata)]/descendant-or-self::*/@*"
	"[namespace-uri()!='']",
	"/domain/cputune/*[@scheduler='fifo' or @scheduler='rr']",
	NULL,
};

/*
 * Where libvirt reads host files from the result: each must be empty, a
 * replicated disk's copy, a random device, or below /srv/vm (not
 * /srv/vm/state); firmware may be below /usr/share too.
 */
static const char *const paths[] = {
	/* chardevs, and devices on one */
	"/domain/devices/*[self::serial or self::parallel or self::console or "
	"self::channel or self::smartcard or self::redirdev]/source/@path",
	"/domain/devices/*[self::serial or self::parallel or self::console or "
	"self::channel]/log/@file",
	"/domain/devices/rng/backend/source/@path",
	"/domain/devices/lease/target/@path", "/domain/devices/audio/@path",
	"/domain/devices/graphics/@socket",
	"/domain/devices/graphics/listen/@socket",
	"/domain/devices/graphics/gl/@rendernode",
	"/domain/devices/video/model/acceleration/@rendernode",
	"/domain/devices/interface/backend/@logFile",
	"/domain/devices/interface/rom/@file",
	"/domain/devices/disk/source/@file", "/domain/devices/disk/source/@dev",
	"/domain/devices/rng/backend[@model='random']",
	"/domain/devices/pstore/path",
	"/domain/sysinfo/entry/@file", "/domain/os/kernel", "/domain/os/initrd",
	"/domain/os/dtb", "/domain/os/nvram", "/domain/os/nvram/source/@file",
	"/domain/os/nvram/source/@dev", "/domain/os/acpi/table",
	NULL,
};
static const char *const firmware[] = { "/domain/os/loader",
    "/domain/os/nvram/@template", NULL };

static int
allowed(const char *path, int fw)
{
	char p[4096];
	size_t n = 0;

	if (path[0] == '\0' || strcmp(path, "/dev/random") == 0 ||
	    strcmp(path, "/dev/urandom") == 0 || strcmp(path, "/dev/hwrng") == 0)
		return 1;
	for (size_t i = 0; i < sizeof(disks) / sizeof(disks[0]); i++)
		if (strcmp(path, disks[i].path) == 0)
			return 1;
	if (path[0] != '/' || strlen(path) >= sizeof(p))
		return 0;
	/* As open() takes it, symbolic links aside: no "//", "." or "..". */
	for (const char *c = path; *c != '\0';) {
		while (*c == '/')
			c++;
		size_t k = strcspn(c, "/");
		if (k == 2 && c[0] == '.' && c[1] == '.')
			return 0;
		if (k > 0 && !(k == 1 && c[0] == '.')) {
			p[n++] = '/';
			memcpy(p + n, c, k);
			n += k;
		}
		c += k;
	}
	p[n] = '\0';
	if (fw && strncmp(p, "/usr/share/", 11) == 0)
		return 1;
	return strncmp(p, "/srv/vm/", 8) == 0 &&
	    strncmp(p, "/srv/vm/state/", 14) != 0 &&
	    strcmp(p, "/srv/vm/state") != 0;
}

/* Every node expr finds names a file the policy allows. */
static void
check_paths(xmlXPathContextPtr xp, const char *expr, int fw)
{
	xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, xp);
	if (o == NULL)
		abort();
	for (int i = 0; o->nodesetval && i < o->nodesetval->nodeNr; i++) {
		xmlChar *v = xmlNodeGetContent(o->nodesetval->nodeTab[i]);
		int ok = v == NULL || allowed((const char *)v, fw);
		xmlFree(v);
		if (!ok)
			abort();
	}
	xmlXPathFreeObject(o);
}

static double
count(xmlXPathContextPtr xp, const char *expr)
{
	xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, xp);
	double n = o ? o->floatval : -1;
	xmlXPathFreeObject(o);
	return n;
}

static void
check(const char *out, enum domxml_use use, const char *name)
{
	char expr[256];
	xmlDocPtr doc = xmlReadMemory(out, (int)strlen(out), "out.xml", NULL,
	    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (doc == NULL)
		abort();	/* it wrote XML that does not parse */
	xmlXPathContextPtr xp = xmlXPathNewContext(doc);
	snprintf(expr, sizeof(expr), "count(/domain/name[.='%s'])", name);
	if (count(xp, expr) < 1)
		abort();
	for (size_t i = 0; i < sizeof(disks) / sizeof(disks[0]); i++) {
		snprintf(expr, sizeof(expr), "count(/domain/devices/disk[target/"
		    "@dev='%s' and source/@file='%s' and driver/@type='raw'])",
		    disks[i].target, disks[i].path);
		if (count(xp, expr) < 1)
			abort();
	}
	if (use == DOMXML_TEST && (count(xp, "count(/domain/uuid)") != 0 ||
	    count(xp, "count(/domain/devices/interface/mac)") != 0))
		abort();
	for (size_t i = 0; never[i] != NULL; i++) {
		snprintf(expr, sizeof(expr), "count(%s)", never[i]);
		if (count(xp, expr) != 0)
			abort();
	}
	for (size_t i = 0; paths[i] != NULL; i++)
		check_paths(xp, paths[i], 0);
	for (size_t i = 0; firmware[i] != NULL; i++)
		check_paths(xp, firmware[i], 1);
	xmlXPathFreeContext(xp);
	xmlFreeDoc(doc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int init;
	char *xml = malloc(size + 1), *out = NULL, *left = NULL, err[256];
	enum domxml_use uses[] = { DOMXML_PROMOTE, DOMXML_TEST };
	const char *names[] = { "web01", "web01-test" };

	if (!init) {
		xmlInitParser();
		init = 1;
	}
	if (xml == NULL)
		return 0;
	memcpy(xml, data, size);
	xml[size] = '\0';
	for (int u = 0; u < 2; u++) {
		int r = domxml_rewrite(xml, uses[u], names[u], disks, 2,
		    &policy, &out, &left, err, sizeof(err));
		if (r == 0)
			check(out, uses[u], names[u]);
		else if (out != NULL || left != NULL || (r != RD_ERR_INVALID &&
		    r != RD_ERR_DENIED) || err[0] == '\0')
			abort();
		for (const char *p = left; p != NULL && *p != '\0'; p++)
			if (*p < 0x20 || *p >= 0x7f)
				abort();	/* it goes into log lines */
		free(out);
		free(left);
		out = left = NULL;
	}
	free(xml);
	return 0;
}
