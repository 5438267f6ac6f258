/*
 * virt.h — libvirt for replicad: connections, domains, their disks.
 *
 * Everything goes through libvirt's public API (libvirt 9.0) and the
 * domain XML (parsed with libxml2).  Errors come back as an rd_err with
 * one line in err that ends with libvirt's own message.  Every call may
 * block on libvirtd: call them from worker jobs, never the event loop.
 */
#ifndef REPLICAD_VIRT_H
#define REPLICAD_VIRT_H

#include <stddef.h>
#include <sys/types.h>

#include <libvirt/libvirt.h>

#include "config.h"

/* One <disk> of a domain's definition. */
struct virt_disk {
	char	 target[64];	/* <target dev=>: vda */
	char	*file;		/* <source file=> or <source dev=>; NULL */
	char	*format;	/* <driver type=>: qcow2, raw...; NULL */
	char	*why_not;	/* why it cannot be replicated; NULL if it can */
	int	 device_disk;	/* device='disk' (not cdrom, floppy, lun) */
};

/* Once, before any other call and before threads start. */
void	virt_init(void);
/* A connection to uri; NULL with err. */
virConnectPtr virt_open(const char *uri, char *err, size_t errsz);
/* The domain called name: 0, RD_ERR_NOT_FOUND (no such domain) or
 * RD_ERR_PEER (libvirt failed), with err. */
int	virt_lookup(virConnectPtr c, const char *name, virDomainPtr *out,
	    char *err, size_t errsz);
/* libvirt's last error in this thread, for messages. */
const char *virt_last_error(void);
/* Did the last error say that the object (domain, checkpoint) does not
 * exist? */
int	virt_last_not_found(void);

/* The disks of a domain XML, in document order.  0 or RD_ERR_INVALID. */
int	virt_disks(const char *xml, struct virt_disk **out, size_t *n,
	    char *err, size_t errsz);
void	virt_disks_free(struct virt_disk *d, size_t n);
/* The uid and gid QEMU runs as, from a running domain's live XML
 * (<seclabel model='dac'>); 0, or -1 if the XML names none. */
int	virt_dac_owner(const char *xml, uid_t *uid, gid_t *gid);

/*
 * Fill the disks of vm (domain = ...) from its domain's definition:
 * every replicable disk (a file or block device with device='disk'), or
 * the targets of disks = ...; disks[i] becomes the source, disk_names[i]
 * the target.  0, or an rd_err with err naming what cannot be replicated
 * and why.  note gets a line per disk left out (cdroms, network disks),
 * or "" (notesz may be 0).
 */
int	virt_resolve(struct cfg_vm *vm, char *note, size_t notesz, char *err,
	    size_t errsz);
/* virt_resolve() for every [vm] with domain =: with check (--check), what
 * it found is printed and a failure counts (1 if any); else a failure is
 * logged and a VM whose disks = names its disks is kept (its cycles fail
 * until libvirt answers), the others left out of cfg; 0. */
int	virt_resolve_all(struct config *cfg, int check);

/* --- domains: define, start, stop, remove ----------------------------------- */

/* What virt_shutdown() did. */
enum virt_stop {
	VIRT_STOP_WAS_OFF,	/* it was not running */
	VIRT_STOP_SHUTDOWN,	/* the guest shut itself down */
	VIRT_STOP_DESTROYED,	/* still running at the timeout: destroyed */
};

/* Whether the domain runs (active, paused included): 1, 0, or -1 with
 * err. */
int	virt_active(virDomainPtr d, char *err, size_t errsz);
/* Define xml as a persistent domain (a domain of the same name and UUID
 * is redefined; its managed save image, the memory of a guest that ran
 * on other disks, is dropped) and set its autostart off; *out is the
 * caller's (virDomainFree). */
int	virt_define(virConnectPtr c, const char *xml, virDomainPtr *out,
	    char *err, size_t errsz);
int	virt_start(virDomainPtr d, char *err, size_t errsz);
int	virt_autostart_off(virDomainPtr d, char *err, size_t errsz);
/*
 * Shut the domain down: virDomainShutdown (ACPI or the guest agent, as
 * libvirt chooses; asked again every VIRT_SHUTDOWN_REPEAT_S, as a guest
 * still booting misses the first), polling its state until it is off;
 * after timeout_s, virDomainDestroy.  *how says which.
 */
#define VIRT_SHUTDOWN_REPEAT_S	10
int	virt_shutdown(virDomainPtr d, unsigned timeout_s, enum virt_stop *how,
	    char *err, size_t errsz);
/* Destroy (if it runs) and undefine the domain called name, with its
 * snapshot and checkpoint metadata, managed save and NVRAM: for a
 * domain replicad made (a test failover's), never production's.
 * 0 (*existed says whether there was one), or an rd_err with err. */
int	virt_remove(virConnectPtr c, const char *name, int *existed, char *err,
	    size_t errsz);

#endif
