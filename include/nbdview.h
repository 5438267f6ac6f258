/*
 * nbdview.h — reading a point-in-time view of a disk through NBD
 * (libnbd 1.14): the QEMU exports of the qemu and libvirt trackers and
 * the qemu-nbd of a shut-off domain's image.
 *
 * Every call waits at most NBDV_TIMEOUT_MS per request and fails with
 * RD_ERR_PEER and one line in err (what, of which disk, why).
 */
#ifndef REPLICAD_NBDVIEW_H
#define REPLICAD_NBDVIEW_H

#include <stddef.h>
#include <stdint.h>

#include <libnbd.h>

#include "trk_backend.h"

#define NBDV_TIMEOUT_MS	60000

/* Wait for the command cookie (or the connection, cookie 0).  name
 * names the disk in messages. */
int	nbdv_wait(struct nbd_handle *h, int64_t cookie, const char *what,
	    const char *name, char *err, size_t errsz);
/* Add to dirty the ranges of [0, size) that the meta context ctx (a
 * qemu:dirty-bitmap:NAME) marks dirty, from NBD block status. */
int	nbdv_dirty(struct nbd_handle *h, const char *ctx, uint64_t size,
	    const char *name, struct trk_dirty *dirty, char *err,
	    size_t errsz);
/* Read len bytes at off into buf, many requests in flight.  On failure
 * the handle is closed (requests may still have been in flight into
 * buf) and *h set to NULL. */
int	nbdv_pread(struct nbd_handle **h, uint8_t *buf, size_t len,
	    uint64_t off, const char *name, char *err, size_t errsz);

#endif
