/*
 * test_domxml.c — the domain XML a failover defines, made from a point's
 * definition (domxml.h): a realistic domain (two replicated disks, one a
 * qcow2 with a backing chain, one a block device; a cdrom; a network
 * disk; two interfaces; a serial port on a file with a log; a guest
 * agent channel; NVRAM; host-facing parts a sender may not choose) is
 * rewritten for a promotion and for a test failover, and the result is
 * read back with XPath.
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

static void
rewrite(enum domxml_use use, const char *name, const struct domxml_disk *d,
    size_t n, struct result *res)
{
	char err[256] = "", *out = NULL;
	int r = domxml_rewrite(domain_xml, use, name, d, n, &out, err,
	    sizeof(err));
	if (r != 0)
		fail_msg("domxml_rewrite: %s", err);
	assert_non_null(out);
	result_parse(res, out);
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

	rewrite(DOMXML_PROMOTE, "web01", copies, 2, &res);
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
	assert_string_equal(xs(&res, "/domain/devices/serial[2]/@type"), "dev");
	assert_string_equal(xs(&res, "/domain/os/nvram"),
	    "/var/lib/libvirt/qemu/nvram/web01_VARS.fd");
	assert_string_equal(xs(&res, "/domain/os/loader"),
	    "/usr/share/OVMF/OVMF_CODE_4M.fd");
	result_free(&res);
}

static void
test_promote_other_name(void **state)
{
	struct result res;

	rewrite(DOMXML_PROMOTE, "web01-dr", copies, 2, &res);
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
	rewrite(DOMXML_TEST, "web01-test", test_copies, 2, &res);
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
	/* A socket it connects to is not production's file: kept. */
	assert_string_equal(xs(&res, "/domain/devices/channel[2]/source/@path"),
	    "/run/monitor/web01.sock");
	/* Its own NVRAM, from the template. */
	assert_string_equal(xs(&res, "/domain/os/nvram"), "");
	assert_string_equal(xs(&res, "/domain/os/nvram/@template"),
	    "/usr/share/OVMF/OVMF_VARS_4M.fd");
	result_free(&res);
}

static void
test_bad_input(void **state)
{
	char err[256], *out = (char *)"x";

	assert_int_equal(domxml_rewrite("<domain><name>x</name>", DOMXML_TEST,
	    "x-test", copies, 0, &out, err, sizeof(err)), RD_ERR_INVALID);
	assert_null(out);
	assert_non_null(strstr(err, "not well-formed"));
	assert_int_equal(domxml_rewrite("<network><name>x</name></network>",
	    DOMXML_PROMOTE, "x", copies, 0, &out, err, sizeof(err)),
	    RD_ERR_INVALID);
	assert_non_null(strstr(err, "not a libvirt <domain>"));
	/* A replicated disk the definition lacks. */
	const struct domxml_disk three[] = {
		copies[0], copies[1], { "vdz", "/srv/replicas/web01/vdz" },
	};
	assert_int_equal(domxml_rewrite(domain_xml, DOMXML_PROMOTE, "web01",
	    three, 3, &out, err, sizeof(err)), RD_ERR_INVALID);
	assert_string_equal(err, "the definition has no disk vdz");
	assert_null(out);
	/* An external entity is not fetched. */
	assert_int_equal(domxml_rewrite("<!DOCTYPE d [<!ENTITY e SYSTEM "
	    "'file:///etc/passwd'>]><domain><name>&e;</name></domain>",
	    DOMXML_PROMOTE, "x", copies, 0, &out, err, sizeof(err)), 0);
	assert_null(strstr(out, "root:"));
	assert_non_null(strstr(out, "<name>x</name>"));
	free(out);
}

static void
test_minimal(void **state)
{
	struct result res;
	char err[256], *out = NULL;

	/* No <name>, no <devices>: a name is added, no disk asked. */
	assert_int_equal(domxml_rewrite("<domain type='qemu'><memory>1024"
	    "</memory></domain>", DOMXML_TEST, "a-test", copies, 0, &out, err,
	    sizeof(err)), 0);
	result_parse(&res, out);
	assert_string_equal(xs(&res, "/domain/name"), "a-test");
	assert_string_equal(xs(&res, "/domain/memory"), "1024");
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
		cmocka_unit_test(test_minimal),
	};
	xmlInitParser();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
