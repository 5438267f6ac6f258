/*
 * domxml.h — the domain XML to define on this host, made from the
 * definition a recovery point carries (libvirt domain XML, libxml2).
 *
 * Pure functions: no libvirt call, no file.  The point's XML comes from
 * the primary and is not trusted (DESIGN S1): any accepted primary may
 * be a compromised host, and libvirtd, which defines and starts the
 * domain, runs as root here.  So the definition may reach this host no
 * further than the VM's own disks:
 *
 * Parsing: at most DOMXML_MAX_LEN bytes; libxml2 without the network,
 * DTD loading, default attributes, entity substitution or XInclude, and
 * a definition with a DOCTYPE is refused outright (a libvirt domain has
 * none; without a DTD no entity can be declared, so none is expanded,
 * billion laughs included).  libxml2's own bounds on depth and text
 * sizes hold (no XML_PARSE_HUGE).
 *
 * Then, for every use:
 *
 *   disks      the replicated disks (by target) become raw files at this
 *              host's copies: <disk type='file' device='disk'>, <driver
 *              name='qemu' type='raw'/> (its other attributes kept),
 *              <source file='PATH'/>; no <backingStore>, <mirror>,
 *              <auth>, <encryption>, rawio or sgio (the copy holds what
 *              the guest saw, in the clear).  Other disks are removed; a
 *              cdrom or floppy keeps its drive, empty.
 *   name       the domain gets the name given.
 *   host       what the sender may not decide for this host, or is this
 *              host's to decide, goes without a word: <emulator> (libvirt
 *              picks this host's), every <seclabel> (this host's security
 *              driver and its defaults apply), attributes in a namespace
 *              (libvirt reads an attribute by its name alone), an
 *              <interface>'s <target> (libvirt names tap devices).
 *   paths      host files the definition names are judged by the
 *              policy (struct domxml_policy): a path must be absolute,
 *              without a ".." component, not in replicad's own files
 *              (deny) and below one of the policy's dirs; a firmware
 *              file (<loader>, <nvram template=>) may also be below
 *              DOMXML_FIRMWARE_DIR.  Symbolic links are not resolved:
 *              a directory of dirs must not link out of itself.
 *              <kernel>, <initrd>, <dtb> or <loader> elsewhere: the
 *              definition is refused (RD_ERR_DENIED, err names element
 *              and path); the guest would not boot without them.  Any
 *              other path elsewhere is left out: a chardev's source
 *              (serial, console, parallel: a pty instead; a virtio
 *              channel's UNIX socket: the path libvirt makes; other
 *              channels, an rng's egd backend: removed), a chardev's
 *              <log>, <nvram> (libvirt makes this host's own from the
 *              template), <nvram template=>, an <acpi><table>, a
 *              <sysinfo type='fwcfg'> entry's file, an <interface>'s
 *              <rom file=> and passt logFile, <graphics> and <listen>
 *              sockets, render nodes, an <audio type='file'> (none
 *              instead), a <lease>, a <pstore>.
 *   devices    what hands this host's devices, directories, programs or
 *              network endpoints to the guest is left out: <filesystem>,
 *              <hostdev>, <shmem>, <memory model='nvdimm'|'virtio-pmem'>,
 *              <interface> other than network, bridge and user (and
 *              <script>, <downscript>, <backend tap= vhost=> of those),
 *              <input> other than mouse, keyboard, tablet, <tpm> other
 *              than emulator, <redirdev> and <smartcard> other than
 *              spicevmc, <graphics> other than vnc, spice, egl-headless
 *              and dbus (and a dbus address), <audio> of this host's
 *              sound (none instead), a chardev on a file, pipe, device
 *              or socket elsewhere, one that connects (tcp) or sends
 *              (udp) from this host, an <rng> reading another file than
 *              /dev/random, /dev/urandom or /dev/hwrng (/dev/urandom
 *              instead).
 *   domain     elements in a namespace (qemu:commandline and friends;
 *              <metadata> keeps its own), <bootloader>, real-time
 *              <cputune> scheduling (fifo, rr), a <resource> partition
 *              other than /machine, and any element replicad does not
 *              know under <domain>, <os> or <devices> are left out.
 *
 * What is left out is listed in *left_out for the operator ("<hostdev
 * type='pci'> (a device of this host), ..."): the replica's VM lacks it.
 *
 *   promote    nothing else changes: same UUID, same MAC addresses.
 *   test       a copy that runs beside production without touching it:
 *              no <uuid> and no <mac> (libvirt makes new ones), <genid>
 *              emptied (a new one: the guest sees a clone), every
 *              <interface> gets <link state='down'/> (the copy has the
 *              production VM's addresses and services: it must not
 *              answer on the production network; an operator may set a
 *              link up with virsh domif-setlink), chardev sources that
 *              are files, pipes or bound UNIX sockets and every <log
 *              file=> get "-test" appended to their path (then judged
 *              as above), a host device (type='dev') becomes
 *              type='null', and <nvram> is emptied.
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

/*
 * Where the definition may name files of this host: below one of dirs
 * (replicad.conf(5) domain_paths), never at or below one of deny
 * (replicad's state, the replica storage with every VM's copies and
 * history, its keys and disks).  Absolute paths.
 */
struct domxml_policy {
	const char *const	*dirs;
	size_t			 ndirs;
	const char *const	*deny;
	size_t			 ndeny;
};

#define DOMXML_TEST_SUFFIX	"-test"
#define DOMXML_FIRMWARE_DIR	"/usr/share"	/* OVMF, SeaBIOS, QEMU's ROMs */
#define DOMXML_MAX_LEN		(1u << 20)	/* the wire's bound */

/*
 * The XML to define: *out is allocated (the caller frees it), and so is
 * *left_out, what was left out of it (NULL: nothing).  0; RD_ERR_INVALID
 * with err (too large, not a <domain>, does not parse, has a DOCTYPE, a
 * replicated disk missing from it); RD_ERR_DENIED with err (a file it
 * needs is not one it may name).
 */
int	domxml_rewrite(const char *xml, enum domxml_use use, const char *name,
	    const struct domxml_disk *disks, size_t ndisks,
	    const struct domxml_policy *pol, char **out, char **left_out,
	    char *err, size_t errsz);

#endif
