/*
 * layout.h — every path under STATE_DIR, in one place (store.h does the
 * same for STORAGE/VM).  layout.c builds them; no other file formats a
 * path under STATE_DIR.
 *
 *   STATE_DIR/                        mode 0700, created at start-up
 *     .lock                           flock(2) held while a replicad runs
 *                                     on this state directory
 *     catalog.db (-wal, -shm)         the SQLite catalog (catalog.h)
 *     control.sock                    the control socket, unless
 *                                     control_socket names another path
 *     replicas/                       the storage of [accept] entries
 *                                     without `storage` (store.h: VM/...)
 *     tracker/VM/                     a primary's tracker state for VM,
 *                                     removed when VM becomes a replica:
 *       DISK.map                      digest of every block as of the last
 *                                     acknowledged cycle (blockmap.h)
 *       DISK.map.cycle                a later cycle DISK.map also describes
 *                                     (nothing changed since); DISK.map.next:
 *                                     a running cycle's changed digests
 *                                     (blockmap.c names both after DISK.map)
 *       app-point                     cut time (Unix ms, text) of the
 *                                     newest application-consistent point
 *       nbd.sock                      tracker qemu: QEMU's NBD server
 *       DISK.fleece, DISK.empty       tracker qemu: a cut's overlay and
 *                                     the empty image it starts from
 *       DISK.device                   tracker qemu: the device the guest
 *                                     writes through, as of the last cut
 *     hooks/                          markers of role changes (failover.c):
 *       VM.on_promote                 on_promote is still to run for VM
 *                                     (the promotion is recorded); if not
 *                                     empty, the domain XML of the point
 *                                     promoted, whose domain is to be
 *                                     defined and started first (vmdom.h)
 *       VM.handover                   a planned failover of VM is under way
 *                                     on this host (the old primary)
 *       VM.domain                     the name of the libvirt domain a
 *                                     promotion defined for VM here (text),
 *                                     which a demotion shuts down (vmdom.h)
 *
 * Every function returns a string the caller frees.  state_dir is
 * absolute (config.h); vm and disk names are util_name_valid and
 * util_disk_name_valid, so no path leaves its directory.
 */
#ifndef REPLICAD_LAYOUT_H
#define REPLICAD_LAYOUT_H

enum lay_marker {
	LAY_MARK_PROMOTE,	/* VM.on_promote */
	LAY_MARK_HANDOVER,	/* VM.handover */
	LAY_MARK_DOMAIN,	/* VM.domain */
};

enum lay_qemu_file {
	LAY_QEMU_FLEECE,	/* DISK.fleece */
	LAY_QEMU_EMPTY,		/* DISK.empty */
	LAY_QEMU_DEVICE,	/* DISK.device */
};

char	*lay_lock(const char *state_dir);
char	*lay_catalog(const char *state_dir);
char	*lay_control_socket(const char *state_dir);
char	*lay_default_storage(const char *state_dir);
char	*lay_tracker_dir(const char *state_dir, const char *vm);
char	*lay_tracker_map(const char *state_dir, const char *vm,
	    const char *disk);
char	*lay_app_point(const char *state_dir, const char *vm);
char	*lay_qemu_socket(const char *state_dir, const char *vm);
/* Tracker libvirt: STATE_DIR/libvirt/VM, where QEMU (its own user) puts
 * the NBD socket and scratch files of a backup; and the tracker's record
 * of its checkpoint, STATE_DIR/tracker/VM/libvirt.state. */
char	*lay_libvirt_top(const char *state_dir);	/* STATE_DIR/libvirt */
char	*lay_libvirt_dir(const char *state_dir, const char *vm);
char	*lay_libvirt_socket(const char *state_dir, const char *vm);
char	*lay_libvirt_scratch(const char *state_dir, const char *vm,
	    const char *disk);
char	*lay_libvirt_state(const char *state_dir, const char *vm);
char	*lay_qemu_file(const char *state_dir, const char *vm,
	    const char *disk, enum lay_qemu_file which);
char	*lay_hooks_dir(const char *state_dir);
char	*lay_marker(const char *state_dir, const char *vm,
	    enum lay_marker which);

#endif
