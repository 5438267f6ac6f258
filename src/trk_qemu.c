/*
 * trk_qemu.c — the qemu backend (not available in this build).
 */
#include <stdio.h>

#include "err.h"
#include "trk_backend.h"

static int
q_open(const struct cfg_vm *vm, const char *dir, void **state, char *err,
    size_t errsz)
{
	snprintf(err, errsz, "tracker qemu is not available");
	return RD_ERR_UNSUPPORTED;
}

static void q_close(void *state) { }
static int q_sizes(void *state, uint64_t *sizes, char *err, size_t errsz)
{ return RD_ERR_UNSUPPORTED; }
static int q_cut(void *state, uint64_t cycle, const uint64_t *since,
    uint64_t *sizes, struct trk_dirty *dirty, char *err, size_t errsz)
{ return RD_ERR_UNSUPPORTED; }
static int q_read(void *state, size_t disk, uint8_t *buf, size_t len,
    uint64_t off, char *err, size_t errsz)
{ return RD_ERR_UNSUPPORTED; }
static int q_commit(void *state, uint64_t cycle, char *err, size_t errsz)
{ return RD_ERR_UNSUPPORTED; }
static void q_abort(void *state) { }

const struct trk_backend trk_backend_qemu = {
	.name = "qemu", .frozen = 1, .open = q_open, .close = q_close,
	.sizes = q_sizes, .cut = q_cut, .read = q_read, .commit = q_commit,
	.abort = q_abort,
};
