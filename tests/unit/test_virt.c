/*
 * test_virt.c — domain operations of virt.h against libvirt's built-in
 * test driver (test:///default, in this process): define with autostart
 * off, start, shut down, remove; and the errors each gives.  The real
 * QEMU driver (ACPI, a timeout, destroy) is tried by the system tests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "virt.h"

#define URI	"test:///default"

static const char dom_xml[] =
    "<domain type='test'>"
    "  <name>%s</name>"
    "  <uuid>%s</uuid>"
    "  <memory>65536</memory>"
    "  <os><type>hvm</type></os>"
    "  <devices>"
    "    <disk type='file' device='disk'>"
    "      <driver name='qemu' type='raw'/>"
    "      <source file='/srv/replicas/%s/vda'/>"
    "      <target dev='vda' bus='virtio'/>"
    "    </disk>"
    "    <interface type='network'><source network='default'/>"
    "      <link state='down'/></interface>"
    "  </devices>"
    "</domain>";

static virConnectPtr
conn(void)
{
	char err[256];
	virConnectPtr c = virt_open(URI, err, sizeof(err));
	if (c == NULL)
		fail_msg("%s", err);
	return c;
}

/* A domain of this name has always the same UUID (a redefinition). */
static virDomainPtr
define(virConnectPtr c, const char *name)
{
	char xml[2048], err[256], uuid[40];
	virDomainPtr d = NULL;
	unsigned h = 5381;
	for (const char *p = name; *p; p++)
		h = h * 33 + (unsigned char)*p;
	snprintf(uuid, sizeof(uuid), "%08x-0000-4000-8000-000000000001", h);
	snprintf(xml, sizeof(xml), dom_xml, name, uuid, name);
	int r = virt_define(c, xml, &d, err, sizeof(err));
	if (r != 0)
		fail_msg("virt_define: %s", err);
	return d;
}

static void
test_define_autostart_off(void **state)
{
	virConnectPtr c = conn();
	virDomainPtr d = define(c, "web01");
	int autostart = -1;
	char err[256];

	assert_int_equal(virDomainIsPersistent(d), 1);
	assert_int_equal(virt_active(d, err, sizeof(err)), 0);
	/* Redefining a domain whose autostart was on turns it off. */
	assert_int_equal(virDomainSetAutostart(d, 1), 0);
	virDomainFree(d);
	d = define(c, "web01");
	assert_int_equal(virDomainGetAutostart(d, &autostart), 0);
	assert_int_equal(autostart, 0);
	virDomainFree(d);
	virConnectClose(c);
}

static void
test_start_shutdown(void **state)
{
	virConnectPtr c = conn();
	virDomainPtr d = define(c, "db02");
	enum virt_stop how;
	char err[256];

	assert_int_equal(virt_start(d, err, sizeof(err)), 0);
	assert_int_equal(virt_active(d, err, sizeof(err)), 1);
	/* Started twice: libvirt's reason in the message. */
	assert_int_equal(virt_start(d, err, sizeof(err)), RD_ERR_PEER);
	assert_non_null(strstr(err, "cannot start domain db02: "));
	assert_int_equal(virt_shutdown(d, 5, &how, err, sizeof(err)), 0);
	assert_int_equal(how, VIRT_STOP_SHUTDOWN);
	assert_int_equal(virt_active(d, err, sizeof(err)), 0);
	assert_int_equal(virt_shutdown(d, 5, &how, err, sizeof(err)), 0);
	assert_int_equal(how, VIRT_STOP_WAS_OFF);
	/* Still defined. */
	virDomainPtr again = NULL;
	assert_int_equal(virt_lookup(c, "db02", &again, err, sizeof(err)), 0);
	virDomainFree(again);
	virDomainFree(d);
	virConnectClose(c);
}

static void
test_remove(void **state)
{
	virConnectPtr c = conn();
	virDomainPtr d = define(c, "web01-test");
	virDomainPtr gone = NULL;
	char err[256];
	int existed = -1;

	assert_int_equal(virt_start(d, err, sizeof(err)), 0);
	virDomainFree(d);
	if (virt_remove(c, "web01-test", &existed, err, sizeof(err)) != 0)
		fail_msg("virt_remove: %s", err);
	assert_int_equal(existed, 1);
	assert_int_equal(virt_lookup(c, "web01-test", &gone, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);
	assert_null(gone);
	/* Nothing to remove is no error. */
	assert_int_equal(virt_remove(c, "web01-test", &existed, err,
	    sizeof(err)), 0);
	assert_int_equal(existed, 0);
	/* A shut-off domain is undefined as well. */
	virDomainFree(define(c, "web01-test"));
	assert_int_equal(virt_remove(c, "web01-test", &existed, err,
	    sizeof(err)), 0);
	assert_int_equal(existed, 1);
	assert_int_equal(virt_lookup(c, "web01-test", &gone, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);
	virConnectClose(c);
}

static void
test_define_drops_managed_save(void **state)
{
	virConnectPtr c = conn();
	virDomainPtr d = define(c, "app03");
	char err[256];

	assert_int_equal(virt_start(d, err, sizeof(err)), 0);
	assert_int_equal(virDomainManagedSave(d, 0), 0);
	assert_int_equal(virDomainHasManagedSaveImage(d, 0), 1);
	virDomainFree(d);
	/* Redefined on other disks: that memory must not be resumed. */
	d = define(c, "app03");
	assert_int_equal(virDomainHasManagedSaveImage(d, 0), 0);
	assert_int_equal(virt_active(d, err, sizeof(err)), 0);
	virDomainFree(d);
	virConnectClose(c);
}

static void
test_define_refused(void **state)
{
	virConnectPtr c = conn();
	virDomainPtr d = (virDomainPtr)1;
	char err[256];

	assert_int_equal(virt_define(c, "<domain type='test'><memory>1"
	    "</memory></domain>", &d, err, sizeof(err)), RD_ERR_PEER);
	assert_null(d);
	assert_non_null(strstr(err, "libvirt refused the definition: "));
	virConnectClose(c);
}

static void
test_unreachable(void **state)
{
	char err[512];
	virConnectPtr c = virt_open("qemu:///system?socket=/nonexistent/sock",
	    err, sizeof(err));
	assert_null(c);
	assert_non_null(strstr(err, "cannot connect to libvirt at "
	    "qemu:///system?socket=/nonexistent/sock: "));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_define_autostart_off),
		cmocka_unit_test(test_start_shutdown),
		cmocka_unit_test(test_remove),
		cmocka_unit_test(test_define_drops_managed_save),
		cmocka_unit_test(test_define_refused),
		cmocka_unit_test(test_unreachable),
	};
	virt_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
