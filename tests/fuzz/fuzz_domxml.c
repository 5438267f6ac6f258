/*
 * fuzz_domxml.c — libFuzzer harness for domxml_rewrite(): any bytes as a
 * recovery point's domain definition (it comes from the primary).  Both
 * uses, two replicated disks.  It must give an error or a domain XML
 * that parses, is named as asked, has each replicated disk at its copy,
 * and for a test no UUID and no MAC; never crash or leak.
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
	    count(xp, "count(//interface/mac)") != 0))
		abort();
	xmlXPathFreeContext(xp);
	xmlFreeDoc(doc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int init;
	char *xml = malloc(size + 1), *out = NULL, err[256];
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
		int r = domxml_rewrite(xml, uses[u], names[u], disks, 2, &out,
		    err, sizeof(err));
		if (r == 0)
			check(out, uses[u], names[u]);
		else if (out != NULL || r != RD_ERR_INVALID || err[0] == '\0')
			abort();
		free(out);
		out = NULL;
	}
	free(xml);
	return 0;
}
