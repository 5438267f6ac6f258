/*
 * domxml.h — the domain XML to define on this host, made from the
 * definition a recovery point carries (libvirt domain XML, libxml2).
 *
 * Pure functions: no libvirt call, no file.  The point's XML comes from
 * the primary and is not trusted (DESIGN S1): it is parsed without the
 * network or external entities, and what it says about the host is
 * rewritten or dropped:
 *
 *   every use  the replicated disks (by target) become raw files at this
 *              host's copies: <disk type='file' device='disk'>, <driver
 *              name='qemu' type='raw'/> (its other attributes kept),
 *              <source file='PATH'/>; no <backingStore>, <mirror>,
 *              <auth> or <encryption> (the copy holds what the guest
 *              saw, in the clear).  Other disks are removed; a cdrom or
 *              floppy keeps its drive, empty.  The domain gets the name
 *              given.  What would give the sender power over this host
 *              beyond its guest goes: <emulator> (libvirt picks this
 *              host's), domain-level <seclabel> (this host's security
 *              driver defaults apply), and elements of libvirt's QEMU
 *              namespace (qemu:commandline and friends).
 *   promote    nothing else changes: same UUID, same MAC addresses.
 *   test       a copy that runs beside production without touching it:
 *              no <uuid> and no <mac> (libvirt makes new ones), <genid>
 *              emptied (a new one: the guest sees a clone), every
 *              <interface> gets <link state='down'/> (the copy has the
 *              production VM's addresses and services: it must not
 *              answer on the production network; an operator may set a
 *              link up with virsh domif-setlink), chardev sources that
 *              are files, pipes or bound UNIX sockets and every <log
 *              file=> get "-test" appended to their path, a host
 *              device (type='dev') becomes type='null', and <nvram> is
 *              emptied (libvirt makes the test domain its own from the
 *              template).
 */
#ifndef REPLICAD_DOMXML_H
#define REPLICAD_DOMXML_H

#include <stddef.h>

enum domxml_use {
	DOMXML_PROMOTE,		/* this host now runs the VM */
	DOMXML_TEST,		/* a test failover beside production */
};

/* One replicated disk: its target (vda) and this host's raw copy. */
struct domxml_disk {
	const char	*target;
	const char	*path;
};

#define DOMXML_TEST_SUFFIX	"-test"

/*
 * The XML to define: *out is allocated (the caller frees it).  0, or
 * RD_ERR_INVALID with err (not a <domain>, does not parse, a replicated
 * disk missing from it).
 */
int	domxml_rewrite(const char *xml, enum domxml_use use, const char *name,
	    const struct domxml_disk *disks, size_t ndisks, char **out,
	    char *err, size_t errsz);

#endif
