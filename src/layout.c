/*
 * layout.c — the paths under STATE_DIR (layout.h documents them).
 */
#include <stdlib.h>
#include <string.h>

#include "layout.h"
#include "xmalloc.h"

/* dir/name, without doubling the slash when dir is "/". */
static char *
join(const char *dir, const char *name)
{
	return xasprintf("%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/",
	    name);
}

char *
lay_lock(const char *state_dir)
{
	return join(state_dir, ".lock");
}

char *
lay_catalog(const char *state_dir)
{
	return join(state_dir, "catalog.db");
}

char *
lay_control_socket(const char *state_dir)
{
	return join(state_dir, "control.sock");
}

char *
lay_default_storage(const char *state_dir)
{
	return join(state_dir, "replicas");
}

char *
lay_tracker_dir(const char *state_dir, const char *vm)
{
	char *top = join(state_dir, "tracker");
	char *p = xasprintf("%s/%s", top, vm);
	free(top);
	return p;
}

/* STATE_DIR/tracker/VM/NAME */
static char *
tracker_file(const char *state_dir, const char *vm, const char *name,
    const char *suffix)
{
	char *dir = lay_tracker_dir(state_dir, vm);
	char *p = xasprintf("%s/%s%s", dir, name, suffix);
	free(dir);
	return p;
}

char *
lay_tracker_map(const char *state_dir, const char *vm, const char *disk)
{
	return tracker_file(state_dir, vm, disk, ".map");
}

char *
lay_app_point(const char *state_dir, const char *vm)
{
	return tracker_file(state_dir, vm, "app-point", "");
}

char *
lay_qemu_socket(const char *state_dir, const char *vm)
{
	return tracker_file(state_dir, vm, "nbd.sock", "");
}

char *
lay_libvirt_top(const char *state_dir)
{
	return xasprintf("%s/libvirt", state_dir);
}

char *
lay_libvirt_dir(const char *state_dir, const char *vm)
{
	return xasprintf("%s/libvirt/%s", state_dir, vm);
}

char *
lay_libvirt_socket(const char *state_dir, const char *vm)
{
	return xasprintf("%s/libvirt/%s/nbd.sock", state_dir, vm);
}

char *
lay_libvirt_scratch(const char *state_dir, const char *vm, const char *disk)
{
	return xasprintf("%s/libvirt/%s/%s.scratch", state_dir, vm, disk);
}

char *
lay_libvirt_state(const char *state_dir, const char *vm)
{
	return tracker_file(state_dir, vm, "libvirt.state", "");
}

char *
lay_qemu_file(const char *state_dir, const char *vm, const char *disk,
    enum lay_qemu_file which)
{
	static const char *const suffix[] = {
		[LAY_QEMU_FLEECE] = ".fleece",
		[LAY_QEMU_EMPTY] = ".empty",
		[LAY_QEMU_DEVICE] = ".device",
	};
	return tracker_file(state_dir, vm, disk, suffix[which]);
}

char *
lay_hooks_dir(const char *state_dir)
{
	return join(state_dir, "hooks");
}

char *
lay_marker(const char *state_dir, const char *vm, enum lay_marker which)
{
	char *dir = lay_hooks_dir(state_dir);
	static const char *const ext[] = {
		[LAY_MARK_PROMOTE] = "on_promote",
		[LAY_MARK_HANDOVER] = "handover",
		[LAY_MARK_DOMAIN] = "domain",
	};
	char *p = xasprintf("%s/%s.%s", dir, vm, ext[which]);
	free(dir);
	return p;
}
