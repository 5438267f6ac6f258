/*
 * vmdom.h — what role changes do with a VM's libvirt domain on this host
 * (SPEC "Fixed for the open issues"; replctl(8) FAILOVER AND LIBVIRT
 * DOMAINS).  failover.c and control.c call these from worker jobs: each
 * may block on libvirtd, and a shutdown for up to shutdown_timeout.
 *
 * Where and how come from this host's [vm] section of the VM if it has
 * one, else from the [accept] entry the VM comes in by (peer: the other
 * host's identity): libvirt_uri, start_on_promote, shutdown_timeout,
 * domain_paths (the [vm]'s if it sets it, else the entry's).
 * The domain is called as [vm] domain = says, else as the VM; a test
 * failover's is VM-test.
 *
 *   promote  define the domain from a point's definition made fit for
 *            this host (domxml.h: disks at this host's files; host files
 *            only where domain_paths lets it name them, never replicad's
 *            own -- state, configuration, keys, every replica storage,
 *            every [vm]'s disks and QMP socket; this host's devices,
 *            directories and programs left out), autostart off; start
 *            it if start_on_promote.  A domain of that name
 *            that runs here already is left alone (an error).  Its name
 *            is recorded (layout.h: hooks/VM.domain) for demotions.
 *   demote   a domain this host has for the VM ([vm] domain =, or the
 *            one a promotion defined): shut it down (ACPI or the guest
 *            agent; destroyed after shutdown_timeout), autostart off.
 *            It stays defined: production's domain is never undefined.
 *   restart  start that domain again (a handover that did not happen).
 *   test     define VM-test on the test copies, after removing an old
 *            VM-test; start it only if asked.
 *   untest   destroy and undefine VM-test.
 *            Both touch a VM-test only if it is a test failover's: one
 *            of its disks is in test_dir (STORAGE/VM/test).  A domain of
 *            that name that is an operator's own is left alone: test
 *            refuses (RD_ERR_STATE), untest says so and succeeds.
 *
 * QEMU runs as its own user and opens the disks itself: the directories
 * replicad made for them (STORAGE, STORAGE/VM, STORAGE/VM/test, and
 * STATE_DIR when STORAGE is inside it) get search permission for others
 * (o+x) before a define; what is above is the operator's (a failed
 * start says so).
 *
 * Each call writes one line for the operator into msg (what happened,
 * or why not; "" when there was nothing to do) and returns 0 or an
 * rd_err.  After a define, the line ends with what was left out of the
 * point's definition ("; left out of its definition on this host: ..."):
 * the VM here lacks it.
 */
#ifndef REPLICAD_VMDOM_H
#define REPLICAD_VMDOM_H

#include <stddef.h>

#include "config.h"
#include "domxml.h"

#define VMDOM_TEST_SUFFIX	"-test"

/* def: the point's definition; disks: targets and this host's files;
 * storage: STORAGE (NULL: no directory of replicad's is involved). */
int	vmdom_promote(const struct config *cfg, const char *vm,
	    const char *peer, const char *def, const struct domxml_disk *disks,
	    size_t ndisks, const char *storage, char *msg, size_t msgsz);
/* What vmdom_demote() did. */
enum vmdom_stop {
	VMDOM_NOT_RUNNING,
	VMDOM_SHUT_DOWN,	/* the guest shut itself down */
	VMDOM_DESTROYED,	/* it did not within shutdown_timeout */
};
int	vmdom_demote(const struct config *cfg, const char *vm,
	    const char *peer, enum vmdom_stop *how, char *msg, size_t msgsz);
/* Start the domain of a demotion again, if it is off: always (force),
 * or only if start_on_promote. */
int	vmdom_restart(const struct config *cfg, const char *vm,
	    const char *peer, int force, char *msg, size_t msgsz);
int	vmdom_test(const struct config *cfg, const char *vm, const char *peer,
	    const char *def, const struct domxml_disk *disks, size_t ndisks,
	    const char *storage, const char *test_dir, int start, char *msg,
	    size_t msgsz);
/* The domain a promotion defined for vm here (hooks/VM.domain): 0 with
 * its name, or RD_ERR_NOT_FOUND. */
int	vmdom_recorded(const struct config *cfg, const char *vm, char *name,
	    size_t namesz);
int	vmdom_untest(const struct config *cfg, const char *vm,
	    const char *peer, const char *test_dir, char *msg, size_t msgsz);

#endif
