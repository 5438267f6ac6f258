/*
 * nbdview.c — reading a disk's view through NBD (nbdview.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "nbdview.h"
#include "util.h"

#define STATUS_CHUNK	(1ull << 31)	/* bytes per block status request */
#define READ_CHUNK	(1u << 20)	/* bytes per NBD read request */
#define READ_DEPTH	64		/* read requests in flight */

int
nbdv_wait(struct nbd_handle *h, int64_t cookie, const char *what,
    const char *name, char *err, size_t errsz)
{
	uint64_t deadline = util_mono_ms() + NBDV_TIMEOUT_MS;

	for (;;) {
		int done = cookie == 0 ? !nbd_aio_is_connecting(h) :
		    nbd_aio_command_completed(h, cookie);
		if (done < 0)
			break;
		if (done > 0)
			return 0;
		uint64_t now = util_mono_ms();
		if (now >= deadline) {
			snprintf(err, errsz, "NBD %s of %s: no answer within "
			    "%d s", what, name, NBDV_TIMEOUT_MS / 1000);
			return RD_ERR_PEER;
		}
		if (nbd_poll(h, (int)(deadline - now)) < 0)
			break;
	}
	snprintf(err, errsz, "NBD %s of %s: %s", what, name,
	    nbd_get_error() ? nbd_get_error() : "failed");
	return RD_ERR_PEER;
}

struct status_walk {
	struct trk_dirty *dirty;
	const char	*ctx;
	uint64_t	 off;		/* of the request */
	uint64_t	 end;
	uint64_t	 next;		/* end of what the replies covered */
	int		 bad;
};

static int
status_extent(void *arg, const char *ctx, uint64_t off, uint32_t *e,
    size_t n, int *error)
{
	struct status_walk *w = arg;
	uint64_t pos = off;

	if (strcmp(ctx, w->ctx) != 0)
		return 0;
	if (off != w->off || n % 2 != 0) {
		w->bad = 1;
		return 0;
	}
	for (size_t i = 0; i + 1 < n && pos < w->end; i += 2) {
		uint64_t len = e[i];
		if (len == 0) {
			w->bad = 1;
			break;
		}
		if (len > w->end - pos)
			len = w->end - pos;
		if (e[i + 1] & 1)
			trk_dirty_add(w->dirty, pos, len);
		pos += len;
	}
	if (pos > w->next)
		w->next = pos;
	return 0;
}

/* libnbd 1.14 has no 64-bit call: requests under 4 GiB. */
int
nbdv_dirty(struct nbd_handle *h, const char *ctx, uint64_t size,
    const char *name, struct trk_dirty *dirty, char *err, size_t errsz)
{
	uint64_t off = 0;
	int r;

	while (off < size) {
		struct status_walk w = { .dirty = dirty, .ctx = ctx,
		    .off = off, .next = off };
		uint64_t count = size - off < STATUS_CHUNK ? size - off :
		    STATUS_CHUNK;
		w.end = off + count;
		nbd_extent_callback cb = { .callback = status_extent,
		    .user_data = &w };
		int64_t cookie = nbd_aio_block_status(h, count, off, cb,
		    NBD_NULL_COMPLETION, 0);
		if (cookie == -1) {
			snprintf(err, errsz, "NBD block status of %s: %s",
			    name, nbd_get_error());
			return RD_ERR_PEER;
		}
		if ((r = nbdv_wait(h, cookie, "block status", name, err,
		    errsz)) != 0)
			return r;
		if (w.bad || w.next <= off) {
			snprintf(err, errsz, "NBD block status of %s: invalid "
			    "extents at %" PRIu64, name, off);
			return RD_ERR_PEER;
		}
		off = w.next;
	}
	return 0;
}

int
nbdv_pread(struct nbd_handle **hp, uint8_t *buf, size_t len, uint64_t off,
    const char *name, char *err, size_t errsz)
{
	struct nbd_handle *h = *hp;
	int64_t cookies[READ_DEPTH];
	size_t n = 0, done = 0;
	int r = 0;

	/* Up to READ_DEPTH requests in flight, then wait for all of them. */
	while (done < len && r == 0) {
		size_t k = len - done < READ_CHUNK ? len - done : READ_CHUNK;
		cookies[n] = nbd_aio_pread(h, buf + done, k, off + done,
		    NBD_NULL_COMPLETION, 0);
		if (cookies[n] == -1) {
			snprintf(err, errsz, "NBD read of %s at %" PRIu64 ": %s",
			    name, off + done, nbd_get_error());
			r = RD_ERR_PEER;
			break;
		}
		n++;
		done += k;
		if (n == READ_DEPTH || done == len) {
			for (size_t i = 0; i < n && r == 0; i++)
				r = nbdv_wait(h, cookies[i], "read", name, err,
				    errsz);
			n = 0;
		}
	}
	if (r != 0) {
		/* Requests may still be in flight into buf: closing the
		 * handle ends them. */
		nbd_close(h);
		*hp = NULL;
	}
	return r;
}
