/*
 * test_domxml.c — the domain XML a failover defines, made from a point's
 * definition (domxml.h): a realistic domain (two replicated disks, one a
 * qcow2 with a backing chain, one a block device; a cdrom; a network
 * disk; two interfaces; a serial port on a file with a log; a guest
 * agent channel; NVRAM; host-facing parts a sender may not choose) is
 * rewritten for a promotion and for a test failover, and the result is
 * read back with XPath; then hostile definitions, one element each (a
 * compromised primary naming this host's files, devices and programs),
 * against the policy of where it may name files (domain_paths).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "domxml.h"
#include "err.h"

static const char domain_xml[] =
"<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
"  <name>web01</name>\n"
"  <uuid>4600582e-c9c7-48c8-a5ae-5aebeaf74bf0</uuid>\n"
"  <genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>\n"
"  <title>Web &amp; mail</title>\n"
"  <memory unit='KiB'>1048576</memory>\n"
"  <vcpu placement='static'>2</vcpu>\n"
"  <os>\n"
"    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n"
"    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\n"
"    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram>\n"
"  </os>\n"
"  <on_poweroff>destroy</on_poweroff>\n"
"  <devices>\n"
"    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
"    <disk type='file' device='disk'>\n"
"      <driver name='qemu' type='qcow2' cache='none' discard='unmap'>\n"
"        <metadata_cache><max_size unit='bytes'>1024</max_size></metadata_cache>\n"
"      </driver>\n"
"      <source file='/var/lib/libvirt/images/web01.qcow2' index='2'/>\n"
"      <backingStore type='file' index='3'>\n"
"        <format type='qcow2'/>\n"
"        <source file='/var/lib/libvirt/images/base.qcow2'/>\n"
"        <backingStore/>\n"
"      </backingStore>\n"
"      <target dev='vda' bus='virtio'/>\n"
"      <boot order='1'/>\n"
"      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>\n"
"    </disk>\n"
"    <disk type='block' device='disk'>\n"
"      <driver name='qemu' type='raw' io='native' cache='none'/>\n"
"      <source dev='/dev/vg0/web01-data'/>\n"
"      <target dev='vdb' bus='virtio'/>\n"
"      <serial>DATA01</serial>\n"
"    </disk>\n"
"    <disk type='file' device='cdrom'>\n"
"      <driver name='qemu' type='raw'/>\n"
"      <source file='/srv/iso/debian-12.iso' startupPolicy='optional'/>\n"
"      <target dev='sda' bus='sata'/>\n"
"      <readonly/>\n"
"    </disk>\n"
"    <disk type='network' device='disk'>\n"
"      <driver name='qemu' type='raw'/>\n"
"      <auth username='libvirt'><secret type='ceph' usage='client.libvirt'/></auth>\n"
"      <source protocol='rbd' name='pool/web01-scratch'>\n"
"        <host name='mon1.example.net' port='6789'/>\n"
"      </source>\n"
"      <target dev='vdc' bus='virtio'/>\n"
"    </disk>\n"
"    <interface type='bridge'>\n"
"      <mac address='52:54:00:12:34:56'/>\n"
"      <source bridge='br0'/>\n"
"      <model type='virtio'/>\n"
"    </interface>\n"
"    <interface type='network'>\n"
"      <mac address='52:54:00:ab:cd:ef'/>\n"
"      <source network='backend'/>\n"
"      <link state='up'/>\n"
"    </interface>\n"
"    <serial type='file'>\n"
"      <source path='/var/log/web01/serial.log' append='on'/>\n"
"      <log file='/var/log/libvirt/qemu/web01-serial0.log' append='off'/>\n"
"      <target type='isa-serial' port='0'/>\n"
"    </serial>\n"
"    <serial type='dev'>\n"
"      <source path='/dev/ttyS1'/>\n"
"      <target port='1'/>\n"
"    </serial>\n"
"    <console type='file'>\n"
"      <source path='/var/log/web01/serial.log'/>\n"
"      <target type='serial' port='0'/>\n"
"    </console>\n"
"    <channel type='unix'>\n"
"      <source mode='bind' path='/run/web01/qga.sock'/>\n"
"      <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
"    </channel>\n"
"    <channel type='unix'>\n"
"      <source mode='connect' path='/run/monitor/web01.sock'/>\n"
"      <target type='virtio' name='org.example.monitor'/>\n"
"    </channel>\n"
"  </devices>\n"
"  <seclabel type='static' model='dac' relabel='no'>\n"
"    <label>+0:+0</label>\n"
"  </seclabel>\n"
"  <qemu:commandline>\n"
"    <qemu:arg value='-chardev'/>\n"
"  </qemu:commandline>\n"
"</domain>\n";

static const struct domxml_disk copies[] = {
	{ "vda", "/srv/replicas/web01/vda" },
	{ "vdb", "/srv/replicas/web01/vdb" },
};

/* The realistic domain's files are where this host lets it name files. */
static const char *const dirs[] = { "/var/log/web01",
    "/var/log/libvirt/qemu", "/run/web01", "/var/lib/libvirt/qemu/nvram" };
static const char *const deny[] = { "/srv/replicas", "/var/lib/replicad" };
static const struct domxml_policy policy = { dirs, 4, deny, 2 };

static const struct domxml_disk test_copies[] = {
	{ "vdb", "/srv/replicas/web01/test/vdb" },
	{ "vda", "/srv/replicas/web01/test/vda" },
};

/* --- reading the result back ------------------------------------------------ */

struct result {
	xmlDocPtr		doc;
	xmlXPathContextPtr	xp;
	char			*text;
};

static void
result_parse(struct result *res, char *text)
{
	res->text = text;
	res->doc = xmlReadMemory(text, (int)strlen(text), "out.xml", NULL,
	    XML_PARSE_NONET);
	assert_non_null(res->doc);
	res->xp = xmlXPathNewContext(res->doc);
	assert_non_null(res->xp);
}

static void
result_free(struct result *res)
{
	xmlXPathFreeContext(res->xp);
	xmlFreeDoc(res->doc);
	free(res->text);
}

/* The XPath string value of expr ("" if nothing matches). */
static char *
xs(struct result *res, const char *expr)
{
	char *e = NULL;
	assert_true(asprintf(&e, "string(%s)", expr) > 0);
	xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)e,
	    res->xp);
	free(e);
	assert_non_null(o);
	static char buf[4][512];
	static int turn;
	char *out = buf[turn++ % 4];
	snprintf(out, sizeof(buf[0]), "%s", o->stringval ?
	    (const char *)o->stringval : "");
	xmlXPathFreeObject(o);
	return out;
}

static int
xn(struct result *res, const char *expr)
{
	char *e = NULL;
	assert_true(asprintf(&e, "count(%s)", expr) > 0);
	xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)e,
	    res->xp);
	free(e);
	assert_non_null(o);
	int n = (int)o->floatval;
	xmlXPathFreeObject(o);
	return n;
}

/* The realistic domain rewritten; *left: what was left out (freed by the
 * caller; NULL to ignore it). */
static void
rewrite(enum domxml_use use, const char *name, const struct domxml_disk *d,
    size_t n, struct result *res, char **left)
{
	char err[256] = "", *out = NULL, *l = NULL;
	int r = domxml_rewrite(domain_xml, use, name, d, n, &policy, &out, &l,
	    err, sizeof(err));
	if (r != 0)
		fail_msg("domxml_rewrite: %s", err);
	assert_non_null(out);
	result_parse(res, out);
	if (left != NULL)
		*left = l;
	else
		free(l);
}

static void
has(const char *text, const char *want)
{
	if (text == NULL || strstr(text, want) == NULL)
		fail_msg("%s\n  does not say\n%s", text ? text : "(nothing)",
		    want);
}

/* What both uses do with disks. */
static void
check_disks(struct result *res, const char *dir)
{
	char want[128];

	assert_int_equal(xn(res, "/domain/devices/disk"), 3);
	/* vda: a raw file at the copy; qcow2's parts and the chain gone. */
	snprintf(want, sizeof(want), "%s/vda", dir);
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vda']"
	    "/source/@file"), want);
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vda']"
	    "/@type"), "file");
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vda']"
	    "/driver/@type"), "raw");
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vda']"
	    "/driver/@name"), "qemu");
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vda']"
	    "/driver/@cache"), "none");
	assert_int_equal(xn(res, "/domain/devices/disk[target/@dev='vda']"
	    "/driver/*"), 0);
	assert_int_equal(xn(res, "//backingStore"), 0);
	assert_int_equal(xn(res, "/domain/devices/disk[target/@dev='vda']"
	    "/source"), 1);
	assert_int_equal(xn(res, "/domain/devices/disk[target/@dev='vda']"
	    "/source/@index"), 0);
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vda']"
	    "/boot/@order"), "1");
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vda']"
	    "/address/@bus"), "0x04");
	/* vdb: was a block device, now a file; its serial stays. */
	snprintf(want, sizeof(want), "%s/vdb", dir);
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vdb']"
	    "/@type"), "file");
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vdb']"
	    "/source/@file"), want);
	assert_int_equal(xn(res, "/domain/devices/disk[target/@dev='vdb']"
	    "/source/@dev"), 0);
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vdb']"
	    "/driver/@io"), "native");
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='vdb']"
	    "/serial"), "DATA01");
	/* The cdrom drive stays, empty; the network disk is gone. */
	assert_string_equal(xs(res, "/domain/devices/disk[target/@dev='sda']"
	    "/@device"), "cdrom");
	assert_int_equal(xn(res, "/domain/devices/disk[target/@dev='sda']"
	    "/source"), 0);
	assert_int_equal(xn(res, "/domain/devices/disk[target/@dev='sda']"
	    "/readonly"), 1);
	assert_int_equal(xn(res, "/domain/devices/disk[target/@dev='vdc']"), 0);
	assert_int_equal(xn(res, "//auth"), 0);
	assert_null(strstr(res->text, "mon1.example.net"));
	assert_null(strstr(res->text, "/var/lib/libvirt/images"));
	/* What the sender may not decide here. */
	assert_int_equal(xn(res, "/domain/seclabel"), 0);
	assert_int_equal(xn(res, "//emulator"), 0);
	assert_null(strstr(res->text, "commandline"));
	assert_int_equal(xn(res, "/domain/@id"), 0);
	assert_string_equal(xs(res, "/domain/@type"), "kvm");
	assert_string_equal(xs(res, "/domain/title"), "Web & mail");
	assert_string_equal(xs(res, "/domain/memory"), "1048576");
}

/* --- the tests ------------------------------------------------------------------- */

static void
test_promote(void **state)
{
	struct result res;
	char *left;

	rewrite(DOMXML_PROMOTE, "web01", copies, 2, &res, &left);
	check_disks(&res, "/srv/replicas/web01");
	assert_string_equal(xs(&res, "/domain/name"), "web01");
	assert_string_equal(xs(&res, "/domain/uuid"),
	    "4600582e-c9c7-48c8-a5ae-5aebeaf74bf0");
	assert_string_equal(xs(&res, "/domain/genid"),
	    "43dc0cf8-809b-4adb-9bea-a9abb5f3d90d");
	/* Interfaces, chardevs and NVRAM as they were. */
	assert_int_equal(xn(&res, "/domain/devices/interface"), 2);
	assert_string_equal(xs(&res, "/domain/devices/interface[1]/mac/"
	    "@address"), "52:54:00:12:34:56");
	assert_int_equal(xn(&res, "/domain/devices/interface[1]/link"), 0);
	assert_string_equal(xs(&res, "/domain/devices/interface[2]/link/"
	    "@state"), "up");
	assert_string_equal(xs(&res, "/domain/devices/serial[1]/source/@path"),
	    "/var/log/web01/serial.log");
	assert_string_equal(xs(&res, "/domain/devices/serial[1]/log/@file"),
	    "/var/log/libvirt/qemu/web01-serial0.log");
	assert_string_equal(xs(&res, "/domain/devices/channel[1]/source/@path"),
	    "/run/web01/qga.sock");
	assert_string_equal(xs(&res, "/domain/os/nvram"),
	    "/var/lib/libvirt/qemu/nvram/web01_VARS.fd");
	assert_string_equal(xs(&res, "/domain/os/loader"),
	    "/usr/share/OVMF/OVMF_CODE_4M.fd");
	/* This host's serial port is not the guest's: a pty instead. */
	assert_string_equal(xs(&res, "/domain/devices/serial[2]/@type"), "pty");
	assert_int_equal(xn(&res, "/domain/devices/serial[2]/source"), 0);
	assert_string_equal(xs(&res, "/domain/devices/serial[2]/target/@port"),
	    "1");
	/* A socket outside domain_paths: the channel stays, on libvirt's. */
	assert_int_equal(xn(&res, "/domain/devices/channel"), 2);
	assert_int_equal(xn(&res, "/domain/devices/channel[2]/source/@path"),
	    0);
	/* What the replica's domain lacks, said. */
	has(left, "<serial type='dev'> /dev/ttyS1 (outside domain_paths; a "
	    "pty instead)");
	has(left, "<channel type='unix'> /run/monitor/web01.sock (outside "
	    "domain_paths; a socket libvirt makes instead)");
	has(left, "<disk type='network'> vdc (not replicated)");
	has(left, "<disk type='file'> sda (its medium is not replicated");
	has(left, "<qemu:commandline> (QEMU's own options)");
	free(left);
	result_free(&res);
}

static void
test_promote_other_name(void **state)
{
	struct result res;

	rewrite(DOMXML_PROMOTE, "web01-dr", copies, 2, &res, NULL);
	assert_string_equal(xs(&res, "/domain/name"), "web01-dr");
	assert_int_equal(xn(&res, "/domain/name"), 1);
	assert_string_equal(xs(&res, "/domain/uuid"),
	    "4600582e-c9c7-48c8-a5ae-5aebeaf74bf0");
	result_free(&res);
}

static void
test_test_copy(void **state)
{
	struct result res;

	/* The disks in another order than the definition's. */
	rewrite(DOMXML_TEST, "web01-test", test_copies, 2, &res, NULL);
	check_disks(&res, "/srv/replicas/web01/test");
	assert_string_equal(xs(&res, "/domain/name"), "web01-test");
	assert_int_equal(xn(&res, "/domain/uuid"), 0);
	assert_int_equal(xn(&res, "/domain/genid"), 1);
	assert_string_equal(xs(&res, "/domain/genid"), "");
	/* New MACs, links down. */
	assert_int_equal(xn(&res, "/domain/devices/interface"), 2);
	assert_int_equal(xn(&res, "//mac"), 0);
	assert_int_equal(xn(&res, "/domain/devices/interface/link"), 2);
	assert_int_equal(xn(&res, "/domain/devices/interface/link"
	    "[@state='down']"), 2);
	assert_string_equal(xs(&res, "/domain/devices/interface[1]/source/"
	    "@bridge"), "br0");
	/* No production file written by the test copy. */
	assert_string_equal(xs(&res, "/domain/devices/serial[1]/source/@path"),
	    "/var/log/web01/serial.log-test");
	assert_string_equal(xs(&res, "/domain/devices/serial[1]/source/"
	    "@append"), "on");
	assert_string_equal(xs(&res, "/domain/devices/serial[1]/log/@file"),
	    "/var/log/libvirt/qemu/web01-serial0.log-test");
	assert_string_equal(xs(&res, "/domain/devices/console/source/@path"),
	    "/var/log/web01/serial.log-test");
	assert_string_equal(xs(&res, "/domain/devices/serial[2]/@type"),
	    "null");
	assert_int_equal(xn(&res, "/domain/devices/serial[2]/source"), 0);
	assert_string_equal(xs(&res, "/domain/devices/channel[1]/source/@path"),
	    "/run/web01/qga.sock-test");
	/* A socket it connects to outside domain_paths: libvirt's. */
	assert_int_equal(xn(&res, "/domain/devices/channel[2]/source/@path"),
	    0);
	/* Its own NVRAM, from the template. */
	assert_string_equal(xs(&res, "/domain/os/nvram"), "");
	assert_string_equal(xs(&res, "/domain/os/nvram/@template"),
	    "/usr/share/OVMF/OVMF_VARS_4M.fd");
	result_free(&res);
}

static void
test_bad_input(void **state)
{
	char err[256], *out = (char *)"x", *left = (char *)"x";

	assert_int_equal(domxml_rewrite("<domain><name>x</name>", DOMXML_TEST,
	    "x-test", copies, 0, &policy, &out, &left, err, sizeof(err)),
	    RD_ERR_INVALID);
	assert_null(out);
	assert_null(left);
	assert_non_null(strstr(err, "not well-formed"));
	assert_int_equal(domxml_rewrite("<network><name>x</name></network>",
	    DOMXML_PROMOTE, "x", copies, 0, &policy, &out, &left, err,
	    sizeof(err)), RD_ERR_INVALID);
	assert_non_null(strstr(err, "not a libvirt <domain>"));
	/* A <domain> of another namespace is not libvirt's either. */
	assert_int_equal(domxml_rewrite("<domain xmlns='urn:x'><name>x</name>"
	    "</domain>", DOMXML_PROMOTE, "x", copies, 0, &policy, &out, &left,
	    err, sizeof(err)), RD_ERR_INVALID);
	assert_non_null(strstr(err, "not a libvirt <domain>"));
	/* A replicated disk the definition lacks. */
	const struct domxml_disk three[] = {
		copies[0], copies[1], { "vdz", "/srv/replicas/web01/vdz" },
	};
	assert_int_equal(domxml_rewrite(domain_xml, DOMXML_PROMOTE, "web01",
	    three, 3, &policy, &out, &left, err, sizeof(err)), RD_ERR_INVALID);
	assert_string_equal(err, "the definition has no disk vdz");
	assert_null(out);
	assert_null(left);
}

/* No DTD: no entity is declared, fetched or expanded; no attribute
 * defaulted behind the policy's back.  Bounded size. */
static void
test_doctype(void **state)
{
	const char *docs[] = {
		/* An external entity (a file of this host). */
		"<!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
		"<domain><name>&e;</name></domain>",
		/* Billion laughs, in text and in an attribute. */
		"<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY a 'aaaaaaaaaa'>"
		"<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
		"<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>"
		"<!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;'>"
		"<!ENTITY e '&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;'>"
		"<!ENTITY f '&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;'>"
		"<!ENTITY g '&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;'>]>"
		"<domain><name>&g;</name><title x='&g;'/></domain>",
		/* A default attribute: the serial's type, not written. */
		"<!DOCTYPE domain [<!ATTLIST serial type CDATA 'null'>]>"
		"<domain><name>x</name><devices><serial><source path="
		"'/etc/shadow'/></serial></devices></domain>",
		/* Only a name. */
		"<!DOCTYPE domain><domain><name>x</name></domain>",
	};
	char err[256], *out, *left;

	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
		out = left = NULL;
		assert_int_equal(domxml_rewrite(docs[i], DOMXML_PROMOTE, "x",
		    copies, 0, &policy, &out, &left, err, sizeof(err)),
		    RD_ERR_INVALID);
		assert_null(out);
		has(err, "has a DOCTYPE");
	}
	/* An undeclared entity: not well-formed. */
	assert_int_equal(domxml_rewrite("<domain><name>&e;</name></domain>",
	    DOMXML_PROMOTE, "x", copies, 0, &policy, &out, &left, err,
	    sizeof(err)), RD_ERR_INVALID);
	/* Above the wire's bound. */
	size_t big = DOMXML_MAX_LEN + 64;
	char *huge = malloc(big + 1);
	assert_non_null(huge);
	memset(huge, ' ', big);
	memcpy(huge, "<domain><name>x</name>", 22);
	memcpy(huge + big - 9, "</domain>", 9);
	huge[big] = '\0';
	assert_int_equal(domxml_rewrite(huge, DOMXML_PROMOTE, "x", copies, 0,
	    &policy, &out, &left, err, sizeof(err)), RD_ERR_INVALID);
	has(err, "larger than");
	free(huge);
	/* Deeper than libxml2 goes without XML_PARSE_HUGE: refused. */
	size_t depth = 20000;
	char *deep = malloc(depth * 7 + 64), *p = deep;
	assert_non_null(deep);
	p += sprintf(p, "<domain><name>x</name><metadata>");
	for (size_t i = 0; i < depth; i++)
		p += sprintf(p, "<a>");
	for (size_t i = 0; i < depth; i++)
		p += sprintf(p, "</a>");
	sprintf(p, "</metadata></domain>");
	assert_int_equal(domxml_rewrite(deep, DOMXML_PROMOTE, "x", copies, 0,
	    &policy, &out, &left, err, sizeof(err)), RD_ERR_INVALID);
	free(deep);
}

static void
test_minimal(void **state)
{
	struct result res;
	char err[256], *out = NULL;

	/* No <name>, no <devices>: a name is added, no disk asked. */
	char *left = (char *)"x";
	assert_int_equal(domxml_rewrite("<domain type='qemu'><memory>1024"
	    "</memory></domain>", DOMXML_TEST, "a-test", copies, 0, &policy,
	    &out, &left, err, sizeof(err)), 0);
	assert_null(left);
	result_parse(&res, out);
	assert_string_equal(xs(&res, "/domain/name"), "a-test");
	assert_string_equal(xs(&res, "/domain/memory"), "1024");
	result_free(&res);
}


/* --- hostile definitions ------------------------------------------------------- */

/*
 * This host lets definitions name files below /srv/vmfiles and
 * /var/log/web01, but never replicad's own (/srv/replicas, the copies
 * and history; /srv/vmfiles/state, as if its state were there).
 */
static const char *const h_dirs[] = { "/srv/vmfiles", "/var/log/web01" };
static const char *const h_deny[] = { "/srv/replicas", "/srv/vmfiles/state" };
static const struct domxml_policy h_policy = { h_dirs, 2, h_deny, 2 };
static const struct domxml_disk h_copy[] = {
	{ "vda", "/srv/replicas/evil/vda" },
};

/* A domain with os_extra in <os>, dev in <devices>, dom in <domain>. */
static char *
hostile_xml(const char *os_extra, const char *dev, const char *dom)
{
	char *x = NULL;
	assert_true(asprintf(&x, "<domain type='kvm' xmlns:qemu='"
	    "http://libvirt.org/schemas/domain/qemu/1.0'>\n"
	    "  <name>evil</name>\n  <memory unit='KiB'>1048576</memory>\n"
	    "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n"
	    "    %s\n  </os>\n  <devices>\n"
	    "    <disk type='file' device='disk'><driver name='qemu' "
	    "type='qcow2'/><source file='/var/lib/libvirt/images/evil.qcow2'/>"
	    "<target dev='vda' bus='virtio'/></disk>\n"
	    "    %s\n    <watchdog model='i6300esb'/>\n  </devices>\n  %s\n"
	    "</domain>\n", os_extra ? os_extra : "", dev ? dev : "",
	    dom ? dom : "") > 0);
	return x;
}

/* Rewritten for use under h_policy: 0 and *res, or the error. */
static int
hostile(enum domxml_use use, const char *os_extra, const char *dev,
    const char *dom, struct result *res, char **left, char *err,
    size_t errsz)
{
	char *x = hostile_xml(os_extra, dev, dom), *out = NULL;
	int r = domxml_rewrite(x, use, use == DOMXML_TEST ? "evil-test" :
	    "evil", h_copy, 1, &h_policy, &out, left, err, errsz);
	free(x);
	if (r == 0)
		result_parse(res, out);
	else
		assert_null(out);
	return r;
}

/* One hostile part each: what must be gone, what stays, what is said. */
struct h_case {
	const char	*os, *dev, *dom;
	const char	*gone;		/* XPath: none of it in the result */
	const char	*kept;		/* XPath: some of it (or NULL) */
	const char	*said;		/* in left_out (NULL: nothing said) */
};

static const struct h_case h_cases[] = {
	/* Host directories: virtiofs and 9p. */
	{ NULL, "<filesystem type='mount' accessmode='passthrough'><driver "
	  "type='virtiofs'/><source dir='/'/><target dir='host_root'/>"
	  "</filesystem>", NULL, "//filesystem", NULL,
	  "<filesystem type='mount'> / (a directory of this host)" },
	{ NULL, "<filesystem type='mount' accessmode='mapped'><source "
	  "dir='/srv/vmfiles/share'/><target dir='share'/></filesystem>",
	  NULL, "//filesystem", NULL, "(a directory of this host)" },
	{ NULL, "<filesystem type='mount'><driver type='virtiofs' "
	  "queue='1024'/><source socket='/run/virtiofsd.sock'/><target "
	  "dir='x'/></filesystem>", NULL, "//filesystem", NULL,
	  "/run/virtiofsd.sock (a directory of this host)" },
	/* Host devices. */
	{ NULL, "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
	  "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>"
	  "</source></hostdev>", NULL, "//hostdev", NULL,
	  "<hostdev type='pci'> (a device of this host)" },
	{ NULL, "<hostdev mode='subsystem' type='usb'><source><vendor "
	  "id='0x1234'/><product id='0xbeef'/></source></hostdev>", NULL,
	  "//hostdev", NULL, "<hostdev type='usb'>" },
	{ NULL, "<hostdev mode='subsystem' type='scsi'><source><adapter "
	  "name='scsi_host0'/><address bus='0' target='0' unit='0'/></source>"
	  "</hostdev>", NULL, "//hostdev", NULL, "<hostdev type='scsi'>" },
	{ NULL, "<redirdev bus='usb' type='tcp'><source mode='connect' "
	  "host='127.0.0.1' service='4000'/></redirdev>", NULL, "//redirdev",
	  NULL, "<redirdev type='tcp'> 127.0.0.1 (it connects from this "
	  "host)" },
	{ NULL, "<redirdev bus='usb' type='spicevmc'/>", NULL, NULL,
	  "//redirdev[@type='spicevmc']", NULL },
	{ NULL, "<input type='evdev'><source dev='/dev/input/event0' "
	  "grab='all'/></input>", NULL, "//input", NULL,
	  "<input type='evdev'> /dev/input/event0 (a device of this host)" },
	{ NULL, "<input type='passthrough' bus='virtio'><source "
	  "evdev='/dev/input/event1'/></input>", NULL, "//input", NULL,
	  "<input type='passthrough'>" },
	{ NULL, "<input type='tablet' bus='usb'/>", NULL, NULL,
	  "//input[@type='tablet']", NULL },
	{ NULL, "<tpm model='tpm-crb'><backend type='passthrough'><device "
	  "path='/dev/tpm0'/></backend></tpm>", NULL, "//tpm", NULL,
	  "<tpm> (a device of this host)" },
	{ NULL, "<tpm model='tpm-crb'><backend type='external'><source "
	  "type='unix' mode='connect' path='/run/swtpm.sock'/></backend>"
	  "</tpm>", NULL, "//tpm", NULL, "/run/swtpm.sock (a device of this "
	  "host)" },
	{ NULL, "<tpm model='tpm-tis'><backend type='emulator' "
	  "version='2.0'/></tpm>", NULL, NULL, "//tpm", NULL },
	{ NULL, "<smartcard mode='host'/>", NULL, "//smartcard", NULL,
	  "<smartcard> (a smartcard reader of this host)" },
	{ NULL, "<smartcard mode='host-certificates'><certificate>c1"
	  "</certificate><certificate>c2</certificate><certificate>c3"
	  "</certificate><database>/etc/pki/nssdb/</database></smartcard>",
	  NULL, "//smartcard", NULL, "(a smartcard reader of this host)" },
	{ NULL, "<smartcard mode='passthrough' type='spicevmc'/>", NULL, NULL,
	  "//smartcard", NULL },
	{ NULL, "<shmem name='ivshmem0'><model type='ivshmem-doorbell'/>"
	  "<server path='/tmp/socket-ivshmem0'/></shmem>", NULL, "//shmem",
	  NULL, "<shmem> ivshmem0 (memory shared on this host)" },
	{ NULL, "<memory model='nvdimm'><source><path>/dev/sda</path>"
	  "</source><target><size unit='KiB'>524288</size><node>0</node>"
	  "</target></memory>", NULL, "//devices/memory", NULL,
	  "<memory> /dev/sda (a file of this host as guest memory)" },
	{ NULL, "<memory model='virtio-pmem' access='shared'><source><path>"
	  "/srv/vmfiles/pmem</path></source><target><size unit='KiB'>524288"
	  "</size></target></memory>", NULL, "//devices/memory", NULL,
	  "(a file of this host as guest memory)" },
	{ NULL, "<memory model='dimm'><target><size unit='KiB'>524288</size>"
	  "<node>0</node></target></memory>", NULL, NULL, "//devices/memory",
	  NULL },
	/* Host network devices and programs. */
	{ NULL, "<interface type='direct'><source dev='eth0' "
	  "mode='passthrough'/></interface>", NULL, "//interface", NULL,
	  "<interface type='direct'> eth0 (a network device of this host)" },
	{ NULL, "<interface type='hostdev' managed='yes'><source><address "
	  "type='pci' domain='0x0000' bus='0x02' slot='0x07' function='0x0'/>"
	  "</source></interface>", NULL, "//interface", NULL,
	  "<interface type='hostdev'>" },
	{ NULL, "<interface type='ethernet'><target dev='tap0' managed='no'/>"
	  "<script path='/tmp/evil.sh'/></interface>", NULL, "//interface",
	  NULL, "<interface type='ethernet'>" },
	{ NULL, "<interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/>"
	  "</interface>", NULL, "//interface", NULL,
	  "<interface type='vdpa'> /dev/vhost-vdpa-0" },
	{ NULL, "<interface type='vhostuser'><source type='unix' "
	  "path='/run/openvswitch/vhu0' mode='client'/></interface>", NULL,
	  "//interface", NULL, "<interface type='vhostuser'>" },
	{ NULL, "<interface type='bridge'><source bridge='br0'/><target "
	  "dev='vnet-evil'/><script path='/etc/qemu-ifup'/><downscript "
	  "path='/etc/qemu-ifdown'/><backend tap='/dev/sda' vhost='/dev/sdb'/>"
	  "<rom file='/etc/shadow'/><model type='virtio'/></interface>", NULL,
	  "//interface/script | //interface/downscript | //interface/target |"
	  " //@tap | //@vhost | //rom/@file",
	  "//interface[@type='bridge']/source[@bridge='br0']",
	  "<script> /etc/qemu-ifup (a program run on this host)" },
	{ NULL, "<interface type='user'><backend type='passt' "
	  "logFile='/etc/passwd'/><model type='virtio'/></interface>", NULL,
	  "//@logFile", "//interface/backend[@type='passt']",
	  "<backend type='passt'> logFile=/etc/passwd (outside domain_paths; no "
	  "log)" },
	/* Chardevs on host files, devices, sockets, addresses. */
	{ NULL, "<serial type='file'><source path='/etc/replicad-test-victim'/>"
	  "<target port='0'/></serial>", NULL,
	  "//serial/source | //serial[@type='file']", "//serial[@type='pty']",
	  "<serial type='file'> /etc/replicad-test-victim" },
	{ NULL, "<serial type='file'><source path='/var/log/web01/ok.log'/>"
	  "<log file='/etc/cron.d/evil'/><target port='0'/></serial>", NULL,
	  "//log", "//serial[@type='file']/source[starts-with(@path, "
	  "'/var/log/web01/ok.log')]",
	  "<log> /etc/cron.d/evil (outside domain_paths)" },
	{ NULL, "<serial type='pipe'><source path='/var/log/web01/../../../"
	  "etc/x'/></serial>", NULL, "//serial/source", "//serial[@type="
	  "'pty']", "(a path with '..' in it; a pty instead)" },
	{ NULL, "<serial type='tcp'><source mode='connect' host='127.0.0.1' "
	  "service='6379'/><protocol type='raw'/></serial>", NULL,
	  "//serial/source | //protocol", "//serial[@type='pty']",
	  "<serial type='tcp'> 127.0.0.1 (it connects from this host; a pty "
	  "instead)" },
	{ NULL, "<serial type='udp'><source mode='bind' host='0.0.0.0' "
	  "service='9999'/><source mode='connect' host='10.0.0.1' "
	  "service='9998'/></serial>", NULL, "//serial/source",
	  "//serial[@type='pty']", "(it sends from this host; a pty instead)" },
	{ NULL, "<serial type='tcp'><source mode='bind' host='127.0.0.1' "
	  "service='4555'/><protocol type='telnet'/></serial>", NULL, NULL,
	  "//serial[@type='tcp']/source[@mode='bind']", NULL },
	{ NULL, "<serial type='stdio'/>", NULL, NULL, "//serial[@type='pty']",
	  "(unknown to replicad; a pty instead)" },
	{ NULL, "<parallel type='file'><source path='relative/path'/>"
	  "</parallel>", NULL, "//parallel/source", "//parallel[@type='pty']",
	  "<parallel type='file'> relative/path (not an absolute path" },
	{ NULL, "<console type='unix'><source mode='connect' "
	  "path='/run/libvirt/libvirt-sock'/><target type='virtio'/>"
	  "</console>", NULL, "//console/source", "//console[@type='pty']",
	  "<console type='unix'> /run/libvirt/libvirt-sock" },
	{ NULL, "<channel type='unix'><source mode='bind' path='/etc/shadow'/>"
	  "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
	  NULL, "//channel/source/@path", "//channel/target[@name="
	  "'org.qemu.guest_agent.0']", "(outside domain_paths; a socket "
	  "libvirt makes instead)" },
	{ NULL, "<channel type='unix'><source mode='connect' "
	  "path='/run/libvirt/libvirt-sock'/><target type='guestfwd' "
	  "address='10.0.2.1' port='4600'/></channel>", NULL, "//channel",
	  NULL, "<channel type='unix'> /run/libvirt/libvirt-sock (outside "
	  "domain_paths)" },
	{ NULL, "<channel type='spicevmc'><target type='virtio' "
	  "name='com.redhat.spice.0'/></channel>", NULL, NULL,
	  "//channel[@type='spicevmc']", NULL },
	{ NULL, "<channel type='unix'><target type='virtio' "
	  "name='org.qemu.guest_agent.0'/></channel>", NULL, NULL,
	  "//channel[@type='unix']", NULL },
	/* Replicad's own files, even inside domain_paths; // and . */
	{ NULL, "<serial type='file'><source path='//srv//replicas/./evil/"
	  ".undo/1'/></serial>", NULL, "//serial/source", NULL,
	  "(among replicad's own files; a pty instead)" },
	{ NULL, "<serial type='file'><source path='/srv/vmfiles/state/"
	  "catalog.db'/></serial>", NULL, "//serial/source", NULL,
	  "(among replicad's own files" },
	{ NULL, "<serial type='file'><source path='/srv/vmfiles-x/a'/>"
	  "</serial>", NULL, "//serial/source", NULL,
	  "/srv/vmfiles-x/a (outside domain_paths" },
	{ NULL, "<serial type='file'><source path='/srv//vmfiles/./a.log'/>"
	  "</serial>", NULL, NULL, "//serial[@type='file']", NULL },
	/* Display, sound, randomness, leases, pstore. */
	{ NULL, "<graphics type='vnc' socket='/etc/vnc.sock'><listen "
	  "type='socket' socket='/etc/vnc.sock'/></graphics>", NULL,
	  "//@socket", "//graphics[@type='vnc']/listen[@type='socket']",
	  "<graphics type='vnc'> socket=/etc/vnc.sock (outside domain_paths; "
	  "a socket libvirt makes instead)" },
	{ NULL, "<graphics type='spice' autoport='yes'><gl enable='yes' "
	  "rendernode='/dev/sda'/></graphics>", NULL, "//@rendernode",
	  "//graphics[@type='spice']/gl", "<gl> rendernode=/dev/sda (outside "
	  "domain_paths; libvirt picks one)" },
	{ NULL, "<graphics type='sdl' display=':0' xauth='/root/.Xauthority'/>",
	  NULL, "//graphics", NULL, "<graphics type='sdl'> (this host's "
	  "display)" },
	{ NULL, "<graphics type='dbus' address='unix:path=/run/dbus/"
	  "system_bus_socket'/>", NULL, "//graphics/@address",
	  "//graphics[@type='dbus']", "(a D-Bus bus of this host" },
	{ NULL, "<video><model type='virtio'><acceleration accel3d='yes' "
	  "rendernode='/dev/sdb'/></model></video>", NULL, "//@rendernode",
	  "//video/model/acceleration", "<acceleration> rendernode=/dev/sdb" },
	{ NULL, "<audio id='1' type='alsa'><input dev='/dev/snd/x'/></audio>",
	  NULL, "//audio[@type='alsa'] | //audio/input",
	  "//audio[@type='none' and @id='1']", "<audio type='alsa'> (this "
	  "host's sound; none instead)" },
	{ NULL, "<audio id='2' type='file' path='/etc/motd'/>", NULL,
	  "//audio/@path", "//audio[@type='none' and @id='2']",
	  "<audio type='file'> /etc/motd (outside domain_paths; none "
	  "instead)" },
	{ NULL, "<rng model='virtio'><backend model='random'>/dev/sda"
	  "</backend></rng>", NULL, NULL,
	  "//rng/backend[.='/dev/urandom']", "<rng> /dev/sda (a file of this "
	  "host; /dev/urandom instead)" },
	{ NULL, "<rng model='virtio'><backend model='random'>/dev/hwrng"
	  "</backend></rng>", NULL, NULL, "//rng/backend[.='/dev/hwrng']",
	  NULL },
	{ NULL, "<rng model='virtio'><backend model='egd' type='unix'><source "
	  "mode='connect' path='/run/libvirt/libvirt-sock'/></backend></rng>",
	  NULL, "//rng", NULL, "<rng> /run/libvirt/libvirt-sock" },
	{ NULL, "<lease><lockspace>x</lockspace><key>y</key><target "
	  "path='/etc/shadow' offset='0'/></lease>", NULL, "//lease", NULL,
	  "<lease> /etc/shadow (outside domain_paths)" },
	{ NULL, "<pstore backend='acpi-erst'><path>/etc/shadow</path><size "
	  "unit='KiB'>8</size></pstore>", NULL, "//pstore", NULL,
	  "<pstore> /etc/shadow" },
	{ NULL, "<evil path='/etc/shadow'/>", NULL, "//evil", NULL,
	  "<evil> (unknown to replicad)" },
	/* Disks: only the replicated one has a source. */
	{ NULL, "<disk type='file' device='cdrom'><source file='/etc/shadow'/>"
	  "<target dev='sdb' bus='sata'/></disk><disk type='block' "
	  "device='floppy'><source dev='/dev/sda'/><target dev='fda'/></disk>",
	  NULL, "//disk[target/@dev!='vda']/source", "//disk[@device='cdrom']"
	  " | //disk[@device='floppy']", "sdb (its medium is not replicated" },
	{ NULL, "<disk type='block' device='lun' rawio='yes' sgio='unfiltered'>"
	  "<source dev='/dev/sda'/><target dev='sdc' bus='scsi'/></disk>",
	  NULL, "//disk[target/@dev='sdc']", NULL, "<disk type='block'> sdc "
	  "(not replicated)" },
	/* <os>: files QEMU reads, the NVRAM it writes. */
	{ "<acpi><table type='slic'>/root/.ssh/id_rsa</table></acpi>", NULL,
	  NULL, "//acpi/table", "//acpi", "<table type='slic'> "
	  "/root/.ssh/id_rsa (outside domain_paths)" },
	{ "<shim>/etc/shadow</shim>", NULL, NULL, "//shim", NULL,
	  "<shim> (unknown to replicad)" },
	/* The domain's own parts. */
	{ NULL, NULL, "<sysinfo type='fwcfg'><entry name='opt/com.example/s' "
	  "file='/etc/shadow'/><entry name='opt/com.example/ok'>hi</entry>"
	  "</sysinfo>", "//entry/@file", "//entry[.='hi']",
	  "<entry> /etc/shadow (outside domain_paths)" },
	{ NULL, NULL, "<cputune><shares>2048</shares><vcpusched vcpus='0' "
	  "scheduler='fifo' priority='99'/><emulatorsched scheduler='rr' "
	  "priority='1'/><iothreadsched iothreads='1' scheduler='batch'/>"
	  "</cputune>", "//vcpusched | //emulatorsched",
	  "//cputune/shares | //iothreadsched", "<vcpusched> fifo (real-time "
	  "scheduling on this host)" },
	{ NULL, NULL, "<resource><partition>/system.slice</partition>"
	  "</resource>", "//partition | //resource", NULL, "<partition> "
	  "/system.slice (a cgroup of this host)" },
	{ NULL, NULL, "<sysinfo type='fwcfg'><entry name='opt/com.example/s' "
	  "file='/etc/passwd'/></sysinfo>", "//sysinfo", NULL,
	  "<entry> /etc/passwd (outside domain_paths)" },
	{ NULL, NULL, "<resource><partition>/machine</partition></resource>",
	  NULL, "//partition[.='/machine']", NULL },
	{ NULL, NULL, "<bootloader>/usr/bin/pygrub</bootloader>",
	  "//bootloader", NULL, "<bootloader> (a program run on this host)" },
	{ NULL, NULL, "<memoryBacking><source type='file'/><access "
	  "mode='shared'/></memoryBacking><launchSecurity type='sev'><policy>"
	  "0x0003</policy><cbitpos>47</cbitpos><reducedPhysBits>1"
	  "</reducedPhysBits></launchSecurity>", NULL,
	  "//memoryBacking/source | //launchSecurity", NULL },
	{ NULL, NULL, "<idmap><uid start='0' target='1000' count='10'/>"
	  "</idmap>", "//idmap", NULL, "<idmap> (unknown to replicad)" },
	/* Namespaces: QEMU's, another, and attributes in one. */
	{ NULL, "<qemu:shmem/>", "<qemu:commandline><qemu:arg value='-chardev'"
	  "/><qemu:arg value='file,id=x,path=/etc/shadow'/></qemu:commandline>"
	  "<qemu:override/><x:evil xmlns:x='urn:x'/>",
	  "//*[namespace-uri()!='']", NULL, "<qemu:commandline> (QEMU's own "
	  "options)" },
	{ NULL, "<serial type='file' xmlns:x='urn:x'><source x:path='/etc/a' "
	  "path='/var/log/web01/a'/></serial><serial type='file' "
	  "xmlns:x='urn:x'><source x:path='/var/log/web01/b' "
	  "path='/etc/b'/></serial>", NULL, "//@*[namespace-uri()!='']",
	  "//serial[@type='file']/source[starts-with(@path, "
	  "'/var/log/web01/a')]",
	  "/etc/b (outside domain_paths; a pty instead)" },
	{ NULL, "<metadata/>", "<metadata><app:x xmlns:app='urn:app' "
	  "app:y='1'>/etc/motd</app:x></metadata>", "//devices/metadata",
	  "/domain/metadata/*[namespace-uri()='urn:app']/@*",
	  "<metadata> (unknown to replicad)" },
	/* Security labels: the host's driver decides, at every level. */
	{ NULL, "<serial type='file'><source path='/var/log/web01/s.log'>"
	  "<seclabel model='dac' relabel='yes'><label>+0:+0</label></seclabel>"
	  "</source></serial>", "<seclabel type='static' model='dac' "
	  "relabel='no'><label>+0:+0</label></seclabel>", "//seclabel",
	  "//serial[@type='file']", NULL },
};

/* A test copy does its own with these (test_test_copy): promotions only. */
static const struct h_case h_promote_cases[] = {
	{ NULL, "<serial type='dev'><source path='/dev/sda'/><target "
	  "port='1'/></serial>", NULL, "//serial/source",
	  "//serial[@type='pty']", "<serial type='dev'> /dev/sda (outside "
	  "domain_paths; a pty instead)" },
	{ "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd"
	  "</loader><nvram template='/etc/shadow'>/etc/passwd</nvram>", NULL,
	  NULL, "//nvram/@template | //nvram[.!='']", "//loader",
	  "<nvram> template=/etc/shadow (outside domain_paths; libvirt's "
	  "default instead)" },
	{ "<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/etc/passwd</nvram>",
	  NULL, NULL, "//nvram[.!='']", "//nvram[@template="
	  "'/usr/share/OVMF/OVMF_VARS.fd']", "<nvram> /etc/passwd (outside "
	  "domain_paths; libvirt makes this host's own)" },
	{ "<nvram type='network'><source protocol='iscsi' name='x'><host "
	  "name='10.0.0.1'/></source></nvram>", NULL, NULL, "//nvram/*",
	  "//nvram", "(not a file; libvirt makes this host's own)" },
	{ "<nvram>/srv/vmfiles/evil_VARS.fd</nvram>", NULL, NULL, NULL,
	  "//nvram[.='/srv/vmfiles/evil_VARS.fd']", NULL },
};

static void
hostile_cases(const struct h_case *cases, size_t n, int uses)
{
	for (size_t i = 0; i < n; i++) {
		const struct h_case *c = &cases[i];
		for (int u = 0; u < uses; u++) {
			enum domxml_use use = u ? DOMXML_TEST : DOMXML_PROMOTE;
			struct result res;
			char err[512] = "", *left = NULL;
			if (hostile(use, c->os, c->dev, c->dom, &res, &left, err,
			    sizeof(err)) != 0)
				fail_msg("case %zu: %s", i, err);
			if (c->gone && xn(&res, c->gone) != 0)
				fail_msg("case %zu: %s is still there:\n%s", i,
				    c->gone, res.text);
			if (c->kept && xn(&res, c->kept) == 0)
				fail_msg("case %zu: %s is gone:\n%s", i, c->kept,
				    res.text);
			/* A test copy's files are suffixed before they are
			 * judged: say what it says without the suffix. */
			for (char *t; u && left && (t = strstr(left, "-test "));)
				memmove(t, t + 5, strlen(t + 5) + 1);
			if (c->said)
				has(left, c->said);
			else if (left != NULL)
				fail_msg("case %zu: said %s", i, left);
			/* Always: the copy, and the watchdog after it. */
			assert_int_equal(xn(&res, "//disk[target/@dev='vda']/"
			    "source[@file='/srv/replicas/evil/vda']"), 1);
			assert_int_equal(xn(&res, "//watchdog"), 1);
			assert_null(strstr(res.text, "/etc/shadow"));
			free(left);
			result_free(&res);
		}
	}
}

static void
test_hostile_elements(void **state)
{
	hostile_cases(h_cases, sizeof(h_cases) / sizeof(h_cases[0]), 2);
	hostile_cases(h_promote_cases, sizeof(h_promote_cases) /
	    sizeof(h_promote_cases[0]), 1);
}

/* Files the guest boots from: outside the policy, nothing is defined. */
static void
test_boot_files(void **state)
{
	static const struct {
		const char	*os;
		const char	*err;		/* NULL: defined */
	} cases[] = {
		{ "<kernel>/etc/shadow</kernel>", "its <kernel> /etc/shadow is "
		  "outside domain_paths: the guest cannot boot without it" },
		{ "<kernel>/srv/vmfiles/vmlinuz</kernel><initrd>/boot/initrd.img"
		  "</initrd>", "its <initrd> /boot/initrd.img is outside" },
		{ "<kernel>/srv/vmfiles/vmlinuz</kernel><dtb>/etc/x.dtb</dtb>",
		  "its <dtb> /etc/x.dtb" },
		{ "<kernel>vmlinuz</kernel>", "is not an absolute path" },
		{ "<kernel>/srv/vmfiles/../../etc/shadow</kernel>",
		  "is a path with '..' in it" },
		{ "<kernel>/srv/vmfiles/..</kernel>", "'..'" },
		{ "<kernel>/srv/vmfiles/state/catalog.db</kernel>",
		  "is among replicad's own files" },
		{ "<kernel>/srv/replicas/evil/vda</kernel>", "replicad's own" },
		/* /usr/share is for firmware only. */
		{ "<kernel>/usr/share/qemu/vmlinuz</kernel>", "outside" },
		{ "<loader type='pflash'>/etc/shadow</loader>",
		  "its <loader> /etc/shadow" },
		{ "<loader type='rom'>/usr/share/../../etc/shadow</loader>",
		  "'..'" },
		{ "<kernel> /srv/vmfiles/vmlinuz</kernel>", "not an absolute" },
		{ "<kernel>/srv/vm<!-- -->files/../../etc/shadow</kernel>",
		  "'..'" },
		{ "<kernel>/srv/vmfiles/vmlinuz</kernel><initrd>"
		  "/srv/vmfiles/initrd.img</initrd><dtb>/srv//vmfiles/./x.dtb"
		  "</dtb><cmdline>console=ttyS0 root=/dev/vda</cmdline>", NULL },
		{ "<loader readonly='yes' type='pflash'>/usr/share/OVMF/"
		  "OVMF_CODE_4M.fd</loader>", NULL },
		{ "<loader readonly='yes' type='pflash'>/srv/vmfiles/OVMF.fd"
		  "</loader>", NULL },
		{ "<kernel></kernel><loader/>", NULL },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int u = 0; u < 2; u++) {
			struct result res;
			char err[512] = "", *left = NULL;
			int r = hostile(u ? DOMXML_TEST : DOMXML_PROMOTE,
			    cases[i].os, NULL, NULL, &res, &left, err,
			    sizeof(err));
			if (cases[i].err == NULL) {
				if (r != 0)
					fail_msg("case %zu: %s", i, err);
				assert_null(left);
				result_free(&res);
				continue;
			}
			if (r != RD_ERR_DENIED)
				fail_msg("case %zu: %d, not refused", i, r);
			assert_null(left);
			has(err, cases[i].err);
			has(err, "domain_paths");
		}
	}
}

/* Without domain_paths (no policy at all): only firmware. */
static void
test_no_paths(void **state)
{
	static const struct domxml_policy none = { NULL, 0, NULL, 0 };
	char *x = hostile_xml("<loader readonly='yes' type='pflash'>/usr/share/"
	    "OVMF/OVMF_CODE.fd</loader><nvram template='/usr/share/OVMF/"
	    "OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/evil_VARS.fd</nvram>",
	    "<serial type='file'><source path='/var/log/evil.log'/></serial>",
	    NULL), *out = NULL, *left = NULL, err[256];
	struct result res;

	assert_int_equal(domxml_rewrite(x, DOMXML_PROMOTE, "evil", h_copy, 1,
	    &none, &out, &left, err, sizeof(err)), 0);
	result_parse(&res, out);
	assert_string_equal(xs(&res, "//loader"),
	    "/usr/share/OVMF/OVMF_CODE.fd");
	assert_string_equal(xs(&res, "//nvram/@template"),
	    "/usr/share/OVMF/OVMF_VARS.fd");
	assert_string_equal(xs(&res, "//nvram"), "");
	assert_string_equal(xs(&res, "//serial/@type"), "pty");
	has(left, "<nvram> /var/lib/libvirt/qemu/nvram/evil_VARS.fd");
	has(left, "<serial type='file'> /var/log/evil.log");
	free(left);
	result_free(&res);
	free(x);
	/* The configuration's own paths are taken as open() takes them. */
	static const char *const d2[] = { "/srv/" };
	static const char *const n2[] = { "/srv/a/../replicas//" };
	static const struct domxml_policy p2 = { d2, 1, n2, 1 };
	x = hostile_xml("<kernel>/srv/replicas/evil/vda</kernel>", NULL, NULL);
	assert_int_equal(domxml_rewrite(x, DOMXML_PROMOTE, "evil", h_copy, 1,
	    &p2, &out, &left, err, sizeof(err)), RD_ERR_DENIED);
	has(err, "among replicad's own files");
	free(x);
	x = hostile_xml("<kernel>/srv/kernels/vmlinuz</kernel>", NULL, NULL);
	assert_int_equal(domxml_rewrite(x, DOMXML_PROMOTE, "evil", h_copy, 1,
	    &p2, &out, &left, err, sizeof(err)), 0);
	free(out);
	free(left);
	free(x);
	/* A kernel: refused. */
	x = hostile_xml("<kernel>/var/lib/libvirt/boot/vmlinuz</kernel>", NULL,
	    NULL);
	assert_int_equal(domxml_rewrite(x, DOMXML_PROMOTE, "evil", h_copy, 1,
	    &none, &out, &left, err, sizeof(err)), RD_ERR_DENIED);
	free(x);
}

/* libvirt reads every <devices> and <os>: so does the policy. */
static void
test_twice(void **state)
{
	struct result res;
	char err[256], *left = NULL;

	assert_int_equal(hostile(DOMXML_PROMOTE, NULL, NULL,
	    "<devices><hostdev mode='subsystem' type='pci'><source><address "
	    "bus='0x03' slot='0x00' function='0x0'/></source></hostdev>"
	    "<filesystem><source dir='/'/><target dir='r'/></filesystem>"
	    "<disk type='file' device='disk'><source file='/etc/shadow'/>"
	    "<target dev='vdz'/></disk><emulator>/bin/sh</emulator></devices>",
	    &res, &left, err, sizeof(err)), 0);
	assert_int_equal(xn(&res, "//hostdev | //filesystem | //emulator"), 0);
	assert_int_equal(xn(&res, "//disk"), 1);
	has(left, "<hostdev type='pci'>");
	has(left, "<disk type='file'> vdz (not replicated)");
	free(left);
	result_free(&res);
	assert_int_equal(hostile(DOMXML_PROMOTE, NULL, NULL, "<os><kernel>"
	    "/etc/shadow</kernel></os>", &res, &left, err, sizeof(err)),
	    RD_ERR_DENIED);
	has(err, "<kernel> /etc/shadow");
}

/* What is said is bounded and printable, whatever the sender wrote. */
static void
test_note_bounded(void **state)
{
	size_t n = 500, len = 0;
	char *dev = malloc(n * 64 + 128), err[256], *left = NULL;
	struct result res;

	assert_non_null(dev);
	len += (size_t)sprintf(dev, "<serial type='file'><source path='/etc/"
	    "a&#10;b&#9;c&#127;d&#233;%s'/></serial>", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
	for (size_t i = 0; i < n; i++)
		len += (size_t)sprintf(dev + len, "<hostdev mode='subsystem' "
		    "type='pci'/>");
	assert_int_equal(hostile(DOMXML_PROMOTE, NULL, dev, NULL, &res, &left,
	    err, sizeof(err)), 0);
	assert_int_equal(xn(&res, "//hostdev"), 0);
	assert_non_null(left);
	assert_true(strlen(left) < 1100);
	has(left, "<serial type='file'> /etc/a?b?c?d??xxx");
	has(left, "...");
	has(left, "more");
	for (const char *p = left; *p; p++)
		assert_true(*p >= 0x20 && *p < 0x7f);
	free(left);
	free(dev);
	result_free(&res);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_promote),
		cmocka_unit_test(test_promote_other_name),
		cmocka_unit_test(test_test_copy),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_doctype),
		cmocka_unit_test(test_minimal),
		cmocka_unit_test(test_hostile_elements),
		cmocka_unit_test(test_boot_files),
		cmocka_unit_test(test_no_paths),
		cmocka_unit_test(test_twice),
		cmocka_unit_test(test_note_bounded),
	};
	xmlInitParser();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
