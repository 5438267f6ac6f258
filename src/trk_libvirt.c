/*
 * trk_libvirt.c — the libvirt backend (being written).
 */
#include <stdio.h>

#include "err.h"
#include "trk_backend.h"

static int
lv_open(const struct cfg_vm *vm, const char *state_dir, void **state,
    char *err, size_t errsz)
{
	snprintf(err, errsz, "tracker libvirt is not built yet");
	return RD_ERR_UNSUPPORTED;
}

const struct trk_backend trk_backend_libvirt = {
	.name = "libvirt",
	.frozen = 1,
	.open = lv_open,
};
