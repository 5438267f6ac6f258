/*
 * discover.c — [vm] sections for a host's libvirt domains (discover.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discover.h"
#include "err.h"
#include "util.h"
#include "virt.h"
#include "xmalloc.h"

static int
by_name(const void *a, const void *b)
{
	return strcmp(virDomainGetName(*(virDomainPtr const *)a),
	    virDomainGetName(*(virDomainPtr const *)b));
}

/* A VM name for domain name: its characters outside the VM name rules
 * (util_name_valid) become '_'. */
static void
vm_name(const char *dom, char *out, size_t outsz)
{
	size_t n = 0;
	for (const char *p = dom; *p != '\0' && n + 1 < outsz &&
	    n < NAME_MAX_LEN; p++) {
		char ch = *p;
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || strchr("_.+-", ch) != NULL))
			ch = '_';
		if (n == 0 && (ch == '.' || ch == '-'))
			ch = '_';
		out[n++] = ch;
	}
	out[n] = '\0';
}

/* One domain's section. */
static void
section(FILE *out, const char *name, const struct virt_disk *d, size_t nd)
{
	char vm[NAME_MAX_LEN + 1];
	size_t ok = 0, left = 0, raw = 0;
	const char *sep;

	vm_name(name, vm, sizeof(vm));
	for (size_t i = 0; i < nd; i++) {
		if (d[i].why_not == NULL &&
		    util_disk_name_valid(d[i].target) == 0)
			ok++;
		else
			left++;
	}
	if (ok == 0) {
		fprintf(out, "# [vm %s]: domain %s has no disk replicad can "
		    "replicate\n", vm, name);
	} else {
		if (strcmp(vm, name) != 0)
			fprintf(out, "# domain %s: its name is not a valid VM "
			    "name; %s is used here\n", name, vm);
		fprintf(out, "[vm %s]\n"
		    "domain      = %s\n"
		    "tracker     = libvirt\n"
		    "replica     = REPLICA-HOST:PORT     # edit\n"
		    "interval    = 5m\n"
		    "# disks:", vm, name);
		sep = " ";
		for (size_t i = 0; i < nd; i++) {
			if (d[i].why_not != NULL ||
			    util_disk_name_valid(d[i].target) != 0)
				continue;
			const char *fmt = d[i].format ? d[i].format : "raw";
			if (strcmp(fmt, "qcow2") != 0)
				raw++;
			fprintf(out, "%s%s (%s, %s)", sep, d[i].target,
			    d[i].file, fmt);
			sep = ", ";
		}
		fprintf(out, "\n");
	}
	if (left > 0) {
		fprintf(out, "# not replicated:");
		sep = " ";
		for (size_t i = 0; i < nd; i++) {
			if (d[i].why_not == NULL &&
			    util_disk_name_valid(d[i].target) == 0)
				continue;
			fprintf(out, "%s%s (%s)", sep, d[i].target,
			    d[i].why_not ? d[i].why_not : "its target cannot "
			    "name a replica file");
			sep = ", ";
		}
		fprintf(out, "\n");
	}
	for (size_t i = 0; ok > 0 && raw > 0 && i < nd; i++) {
		const char *fmt = d[i].format ? d[i].format : "raw";
		if (d[i].why_not != NULL || strcmp(fmt, "qcow2") == 0 ||
		    util_disk_name_valid(d[i].target) != 0)
			continue;
		fprintf(out, "# %s is %s: each cycle reads all of it (only "
		    "qcow2 keeps checkpoints)\n", d[i].target, fmt);
	}
}

int
discover_print(FILE *out, const char *uri, char *err, size_t errsz)
{
	virConnectPtr c = virt_open(uri, err, errsz);
	virDomainPtr *doms = NULL;
	int n, r = 0;

	if (c == NULL)
		return RD_ERR_PEER;
	if ((n = virConnectListAllDomains(c, &doms, 0)) < 0) {
		snprintf(err, errsz, "cannot list the domains at %s: %s", uri,
		    virt_last_error());
		virConnectClose(c);
		return RD_ERR_PEER;
	}
	qsort(doms, (size_t)n, sizeof(*doms), by_name);
	fprintf(out, "# replicad: the libvirt domains at %s (replctl "
	    "discover)\n", uri);
	if (n == 0)
		fprintf(out, "# no domains\n");
	for (int i = 0; i < n; i++) {
		const char *name = virDomainGetName(doms[i]);
		char *xml = virDomainGetXMLDesc(doms[i], 0);
		struct virt_disk *d = NULL;
		size_t nd = 0;
		char why[256];

		fprintf(out, "\n");
		if (xml == NULL) {
			fprintf(out, "# domain %s: cannot read its definition: "
			    "%s\n", name, virt_last_error());
		} else if (virt_disks(xml, &d, &nd, why, sizeof(why)) != 0) {
			fprintf(out, "# domain %s: %s\n", name, why);
		} else {
			section(out, name, d, nd);
		}
		virt_disks_free(d, nd);
		free(xml);
	}
	for (int i = 0; i < n; i++)
		virDomainFree(doms[i]);
	free(doms);
	virConnectClose(c);
	if (fflush(out) != 0) {
		snprintf(err, errsz, "cannot write the sections");
		r = RD_ERR_SYSTEM;
	}
	return r;
}
