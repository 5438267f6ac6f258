/*
 * trk_qemu.c — the qemu backend: dirty bitmaps kept by a running QEMU,
 * a point-in-time view made by fleecing, both read through QEMU's NBD
 * server (QEMU 7.2, libnbd 1.14).
 *
 * Bitmaps.  Disk i's node carries a dirty bitmap replicad.N, enabled
 * since the cut of cycle N (since[i]).  The cut of cycle C is ONE QMP
 * transaction over all the VM's disks, so it is atomic across them:
 *
 *	block-dirty-bitmap-add		replicad.C (persistent on qcow2)
 *	block-dirty-bitmap-disable	replicad.N
 *	blockdev-backup			NODE -> replicad-flI, sync none
 *
 * The frozen replicad.N holds what changed between cut N and cut C; it
 * is exported with the view and read as NBD block status.  commit(C)
 * removes replicad.N (replicad.C now records since cut C, which is the
 * next cut's since[i]); abort() merges replicad.C back into replicad.N
 * and enables it again, in one transaction, so no write is lost.  A
 * missing, inconsistent (persistent bitmap of a QEMU that was killed) or
 * busy replicad.N, or since[i] == 0, makes the disk report "all".
 * Bitmaps replicad.K left by a replicad that died mid-cycle are merged
 * into replicad.N (or removed when replicad.N records anyway) before the
 * cut.
 *
 * The view.  Each disk gets a qcow2 overlay DIR/NODE.fleece (node
 * replicad-flI, a copy of DIR/NODE.empty, an empty qcow2 of the disk's
 * size made once by qemu-img) whose backing is the disk's node.
 * blockdev-backup with sync none puts a copy-before-write filter above
 * the node, which copies into the overlay every cluster the guest is
 * about to overwrite, so the overlay reads as the disk at the cut.  The
 * export of the overlay (read-only, QEMU's NBD server on DIR/nbd.sock,
 * started once per QMP connection) also finds replicad.N through the
 * backing chain.  Teardown (commit, abort, failed cut) deletes the
 * export, cancels the job (its filter goes with it), deletes the node
 * and the file: nothing of a cut stays in QEMU.
 *
 * Idle cycles.  When every replicad.N counts 0 dirty bytes (and no disk
 * changed size), the cut is the bitmap transaction alone (no overlay,
 * job or export), checked afterwards: a write that slipped in between
 * makes it undo and fleece.  tracker.c reads nothing of such a cut: a
 * disk it reads whole comes with since[i] == 0.
 *
 * One QMP connection is kept across cycles (a QMP socket serves one
 * client at a time); a broken one is reopened at the next call.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libnbd.h>

#include "err.h"
#include "hook.h"
#include "layout.h"
#include "log.h"
#include "nbdview.h"
#include "qmp.h"
#include "trk_backend.h"
#include "util.h"
#include "xmalloc.h"

#define BITMAP_PREFIX	"replicad."
#define FLEECE_PREFIX	"replicad-fl"	/* + disk index: node, job, export */
#define QEMU_IMG_TIMEOUT_MS 30000
#define FLEECE_ROOM	(1ull << 30)	/* free space a view needs, at most */


struct qdisk {
	char		*node;		/* QEMU block node */
	char		*overlay;	/* DIR/NODE.fleece */
	char		*empty;		/* DIR/NODE.empty: what overlay starts as */
	char		*device_mark;	/* DIR/NODE.device: a device wrote
					   through the node at some cut */
	char		 id[32];	/* FLEECE_PREFIX + index */
	int		 qcow2;		/* can hold persistent bitmaps */
	uint64_t	 size;		/* at the cut */
	uint64_t	 last_size;	/* at the last committed cut */
	uint64_t	 base;		/* N: replicad.N is this cut's base; 0:
					   none, the disk reports all */
	int		 rotated;	/* the cut added replicad.<cycle> */
	int		 added;		/* the overlay node exists */
	struct nbd_handle *nbd;
};

struct qemu {
	char		*vm;
	char		*qmp_path;
	char		*nbd_path;
	size_t		 ndisks;
	struct qdisk	*disks;
	struct qmp	*qmp;		/* NULL until needed */
	int		 nbd_server;	/* QEMU's NBD server listens on nbd_path */
	int		 nbd_ours;	/* ... and this process started it */
	int		 stale;		/* fleecing leftovers may be in QEMU */
	int		 active;	/* a cut is held */
	int		 viewed;	/* ... with its view */
	int		 want_view;	/* no idle cut next time */
	uint64_t	 cycle;
};

/* A replicad.K bitmap of a node, as QEMU reports it. */
struct qbitmap {
	uint64_t	 cycle;
	uint64_t	 count;		/* dirty bytes */
	int		 recording;
	int		 busy;
	int		 inconsistent;
};

static void	fleece_cleanup(struct qemu *, int);

/* --- QMP ------------------------------------------------------------------ */

static int
q_connect(struct qemu *s, char *err, size_t errsz)
{
	int reconnect = s->qmp != NULL;
	int r;

	if (s->qmp != NULL && !qmp_broken(s->qmp))
		return 0;
	qmp_close(s->qmp);
	s->qmp = NULL;
	/* A new connection may be to a new QEMU: its NBD server is not
	 * ours, and an old one may have kept what a cut made. */
	s->nbd_server = 0;
	s->nbd_ours = 0;
	s->stale = 1;
	if ((r = qmp_open(s->qmp_path, QMP_TIMEOUT_MS, &s->qmp, err,
	    errsz)) != 0)
		return r;
	if (reconnect)
		log_info("%s: connected again to QEMU at %s", s->vm,
		    s->qmp_path);
	return 0;
}

/* Run cmd (args taken as in qmp_call); a refusal reads "QEMU refused
 * 'cmd': what QEMU said". */
static int
q_call(struct qemu *s, const char *cmd, json_t *args, json_t **ret,
    char *err, size_t errsz)
{
	char why[512];
	int r;

	if (ret != NULL)
		*ret = NULL;
	if ((r = q_connect(s, err, errsz)) != 0) {
		json_decref(args);
		return r;
	}
	r = qmp_call(s->qmp, cmd, args, ret, why, sizeof(why));
	if (r == RD_ERR_PEER && !qmp_broken(s->qmp))
		snprintf(err, errsz, "QEMU refused '%s': %s", cmd, why);
	else if (r != 0)
		snprintf(err, errsz, "%s", why);
	return r;
}

/*
 * query-named-block-nodes.  The first call after QEMU restarted finds
 * the old connection dead: connect again and ask once more.
 */
static int
query_nodes(struct qemu *s, json_t **nodes, char *err, size_t errsz)
{
	int fresh = s->qmp == NULL || qmp_broken(s->qmp);
	int r;

	for (;;) {
		r = q_call(s, "query-named-block-nodes", json_pack("{s:b}",
		    "flat", 1), nodes, err, errsz);
		if (r == 0 || fresh || s->qmp == NULL || !qmp_broken(s->qmp))
			break;
		fresh = 1;
	}
	if (r == 0 && !json_is_array(*nodes)) {
		json_decref(*nodes);
		*nodes = NULL;
		snprintf(err, errsz, "QMP: query-named-block-nodes did not "
		    "return a list");
		return RD_ERR_INVALID;
	}
	return r;
}

static json_t *
find_node(json_t *nodes, const char *name)
{
	size_t i;
	json_t *n;

	json_array_foreach(nodes, i, n) {
		const char *nn = json_string_value(json_object_get(n,
		    "node-name"));
		if (nn != NULL && strcmp(nn, name) == 0)
			return n;
	}
	return NULL;
}

/* "drive0, f0": the nodes a user named (not QEMU's "#block123", not
 * ours). */
static void
list_nodes(json_t *nodes, char *buf, size_t bufsz)
{
	size_t i, len = 0;
	json_t *n;

	buf[0] = '\0';
	json_array_foreach(nodes, i, n) {
		const char *nn = json_string_value(json_object_get(n,
		    "node-name"));
		if (nn == NULL || nn[0] == '#' ||
		    strncmp(nn, FLEECE_PREFIX, strlen(FLEECE_PREFIX)) == 0)
			continue;
		int k = snprintf(buf + len, bufsz - len, "%s%.64s",
		    len ? ", " : "", nn);
		if (k < 0 || (size_t)k >= bufsz - len) {
			buf[len] = '\0';
			break;
		}
		len += (size_t)k;
	}
}

static int
node_of(json_t *nodes, const char *name, json_t **node, char *err,
    size_t errsz)
{
	char list[256];

	if ((*node = find_node(nodes, name)) != NULL)
		return 0;
	list_nodes(nodes, list, sizeof(list));
	snprintf(err, errsz, "QEMU has no block node '%s' (nodes: %s)", name,
	    list[0] ? list : "none");
	return RD_ERR_NOT_FOUND;
}

static int
node_size(json_t *node, const char *name, uint64_t *size, char *err,
    size_t errsz)
{
	json_t *v = json_object_get(json_object_get(node, "image"),
	    "virtual-size");

	if (!json_is_integer(v) || json_integer_value(v) < 0) {
		snprintf(err, errsz, "QEMU reports no size for block node "
		    "'%s'", name);
		return RD_ERR_INVALID;
	}
	*size = (uint64_t)json_integer_value(v);
	return 0;
}

/* The cycle of a bitmap named replicad.K (K > 0, decimal, no leading 0),
 * or 0 if the name is not one of ours. */
static uint64_t
bitmap_cycle(const char *name)
{
	uint64_t c = 0;
	const char *p;

	if (name == NULL || strncmp(name, BITMAP_PREFIX,
	    strlen(BITMAP_PREFIX)) != 0)
		return 0;
	p = name + strlen(BITMAP_PREFIX);
	if (*p < '1' || *p > '9')
		return 0;
	for (; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || c > (UINT64_MAX - 9) / 10)
			return 0;
		c = c * 10 + (uint64_t)(*p - '0');
	}
	return c;
}

static void
bitmap_name(uint64_t cycle, char *buf, size_t bufsz)
{
	snprintf(buf, bufsz, BITMAP_PREFIX "%" PRIu64, cycle);
}

static int
json_flag(json_t *o, const char *key)
{
	return json_is_true(json_object_get(o, key));
}

/* Our bitmaps on node (caller frees *out). */
static size_t
node_bitmaps(json_t *node, struct qbitmap **out)
{
	json_t *list = json_object_get(node, "dirty-bitmaps"), *b;
	size_t i, n = 0;

	*out = NULL;
	json_array_foreach(list, i, b) {
		uint64_t c = bitmap_cycle(json_string_value(json_object_get(b,
		    "name")));
		json_t *count = json_object_get(b, "count");
		if (c == 0)
			continue;
		*out = xreallocarray(*out, n + 1, sizeof(**out));
		struct qbitmap *q = &(*out)[n++];
		q->cycle = c;
		/* An unknown count is not zero: never take the idle path. */
		q->count = json_is_integer(count) &&
		    json_integer_value(count) >= 0 ?
		    (uint64_t)json_integer_value(count) : UINT64_MAX;
		q->recording = json_flag(b, "recording");
		q->busy = json_flag(b, "busy");
		q->inconsistent = json_flag(b, "inconsistent");
	}
	return n;
}

static struct qbitmap *
bitmap_find(struct qbitmap *v, size_t n, uint64_t cycle)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].cycle == cycle)
			return &v[i];
	return NULL;
}

static json_t *
action(const char *type, json_t *data)
{
	return json_pack("{s:s, s:o}", "type", type, "data", data);
}

static json_t *
bitmap_action(const char *type, const char *node, uint64_t cycle)
{
	char name[32];

	bitmap_name(cycle, name, sizeof(name));
	return action(type, json_pack("{s:s, s:s}", "node", node, "name",
	    name));
}

/* enable N, merge C into N, remove C: N then holds both, and records. */
static void
merge_actions(json_t *actions, const char *node, uint64_t n,
    const uint64_t *from, size_t nfrom)
{
	char target[32], name[32];
	json_t *src = json_array();

	bitmap_name(n, target, sizeof(target));
	json_array_append_new(actions, bitmap_action(
	    "block-dirty-bitmap-enable", node, n));
	for (size_t i = 0; i < nfrom; i++) {
		bitmap_name(from[i], name, sizeof(name));
		json_array_append_new(src, json_string(name));
	}
	json_array_append_new(actions, action("block-dirty-bitmap-merge",
	    json_pack("{s:s, s:s, s:o}", "node", node, "target", target,
	    "bitmaps", src)));
	for (size_t i = 0; i < nfrom; i++)
		json_array_append_new(actions, bitmap_action(
		    "block-dirty-bitmap-remove", node, from[i]));
}

static int
transaction(struct qemu *s, json_t *actions, char *err, size_t errsz)
{
	if (json_array_size(actions) == 0) {
		json_decref(actions);
		return 0;
	}
	return q_call(s, "transaction", json_pack("{s:o}", "actions",
	    actions), NULL, err, errsz);
}

static void
bitmap_remove(struct qemu *s, struct qdisk *d, uint64_t cycle)
{
	char name[32], err[512];

	bitmap_name(cycle, name, sizeof(name));
	if (q_call(s, "block-dirty-bitmap-remove", json_pack("{s:s, s:s}",
	    "node", d->node, "name", name), NULL, err, sizeof(err)) != 0)
		log_warnx("%s: %s: cannot remove dirty bitmap %s: %s", s->vm,
		    d->node, name, err);
}

/* --- the bitmaps before a cut ------------------------------------------- */

/*
 * Choose disk d's base for the cut of cycle `cycle` from what QEMU holds
 * and since, the cycle of the saved digests: d->base = since if
 * replicad.<since> can say what changed since then, else 0 (all).  Stale
 * bitmaps are merged or removed.  *clean: the base's count, as queried,
 * is still exact (nothing was merged into it).
 */
static void
disk_prepare(struct qemu *s, struct qdisk *d, json_t *node, uint64_t since,
    uint64_t cycle, int *clean)
{
	struct qbitmap *bms, *base;
	const char *why = NULL;
	char err[512];
	size_t n = node_bitmaps(node, &bms);

	*clean = 0;
	d->base = 0;
	/* since == 0: no earlier cut to compare with, nothing to say. */
	base = since != 0 && since < cycle ? bitmap_find(bms, n, since) :
	    NULL;
	if (since == 0 || since >= cycle)
		why = NULL;
	else if (base == NULL)
		why = "is missing (QEMU restarted, or a commit did not "
		    "finish)";
	else if (base->inconsistent)
		why = "is inconsistent (QEMU stopped without saving it)";
	else if (base->busy)
		why = "is in use by another QEMU operation";
	else if (!base->recording) {
		/* A cut happened and neither commit nor abort followed (the
		 * daemon died): what replicad.N missed since, the bitmaps of
		 * the later cuts recorded.  Fold them back. */
		uint64_t *from = xcalloc(n, sizeof(*from));
		size_t nfrom = 0;
		int recorded = 0, unusable = 0;
		for (size_t i = 0; i < n; i++) {
			if (bms[i].cycle <= since)
				continue;
			if (bms[i].inconsistent || bms[i].busy) {
				/* What it holds cannot be taken back. */
				unusable = 1;
				continue;
			}
			from[nfrom++] = bms[i].cycle;
			recorded |= bms[i].recording;
		}
		json_t *actions = json_array();
		merge_actions(actions, d->node, since, from, nfrom);
		if (unusable) {
			why = "stopped recording, and a later bitmap is "
			    "inconsistent or in use";
			recorded = 0;
		} else if (!recorded)
			why = "stopped recording (replicad stopped during a "
			    "cycle?)";
		else if (transaction(s, actions, err, sizeof(err)) != 0) {
			log_warnx("%s: %s: cannot merge the dirty bitmaps of an "
			    "unfinished cycle: %s", s->vm, d->node, err);
			why = "could not take back what later bitmaps recorded";
		} else {
			log_info("%s: %s: merged the dirty bitmaps of an "
			    "unfinished cycle into %s%" PRIu64, s->vm,
			    d->node, BITMAP_PREFIX, since);
			d->base = since;
		}
		if (!recorded)
			json_decref(actions);
		/* The merged ones are gone; the rest is removed below. */
		for (size_t i = 0; d->base != 0 && i < nfrom; i++)
			bitmap_find(bms, n, from[i])->cycle = 0;
		free(from);
	} else {
		d->base = since;
		*clean = 1;
	}
	if (why != NULL)
		log_warnx("%s: %s: dirty bitmap %s%" PRIu64 " %s: comparing "
		    "the whole disk", s->vm, d->node, BITMAP_PREFIX, since,
		    why);
	for (size_t i = 0; i < n; i++)
		if (bms[i].cycle != 0 && bms[i].cycle != d->base)
			bitmap_remove(s, d, bms[i].cycle);
	if (*clean)
		*clean = base->count == 0;
	free(bms);
}

/*
 * The cut's bitmap actions: replicad.<cycle> starts, each base stops.
 */
static void
rotate_actions(struct qemu *s, json_t *actions)
{
	char name[32];

	bitmap_name(s->cycle, name, sizeof(name));
	for (size_t i = 0; i < s->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		json_array_append_new(actions, action("block-dirty-bitmap-add",
		    json_pack("{s:s, s:s, s:b}", "node", d->node, "name", name,
		    "persistent", d->qcow2)));
		if (d->base != 0)
			json_array_append_new(actions, bitmap_action(
			    "block-dirty-bitmap-disable", d->node, d->base));
	}
}

/*
 * Undo the cut's bitmap actions without losing a write.  Inside a
 * transaction QEMU drains all I/O, so no write falls between the
 * actions; the base is enabled first all the same.
 */
static int
unrotate(struct qemu *s, char *err, size_t errsz)
{
	json_t *actions = json_array();
	int r;

	for (size_t i = 0; i < s->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		if (!d->rotated)
			continue;
		if (d->base != 0)
			merge_actions(actions, d->node, d->base, &s->cycle, 1);
		else
			json_array_append_new(actions, bitmap_action(
			    "block-dirty-bitmap-remove", d->node, s->cycle));
	}
	if ((r = transaction(s, actions, err, errsz)) != 0)
		return r;
	for (size_t i = 0; i < s->ndisks; i++)
		s->disks[i].rotated = 0;
	return 0;
}

/* Every disk's base counts no dirty byte. */
static int
bases_clean(struct qemu *s, int *zero, char *err, size_t errsz)
{
	json_t *nodes = NULL, *node;
	int r;

	*zero = 1;
	if ((r = query_nodes(s, &nodes, err, errsz)) != 0)
		return r;
	for (size_t i = 0; i < s->ndisks && *zero; i++) {
		struct qdisk *d = &s->disks[i];
		struct qbitmap *bms, *b;
		if ((r = node_of(nodes, d->node, &node, err, errsz)) != 0)
			break;
		size_t n = node_bitmaps(node, &bms);
		b = bitmap_find(bms, n, d->base);
		if (b == NULL || b->count != 0)
			*zero = 0;
		free(bms);
	}
	json_decref(nodes);
	return r;
}

/* --- the view --------------------------------------------------------------- */

/* qemu-img create -f qcow2 path size, at most QEMU_IMG_TIMEOUT_MS. */
static int
qemu_img_create(const char *path, uint64_t size, char *err, size_t errsz)
{
	char sizebuf[32], out[256];
	int status, timed_out;

	snprintf(sizebuf, sizeof(sizebuf), "%" PRIu64, size);
	char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2",
	    (char *)path, sizebuf, NULL };
	if (hook_spawn(argv, NULL, QEMU_IMG_TIMEOUT_MS, out, sizeof(out),
	    &status, &timed_out) != 0) {
		snprintf(err, errsz, "cannot run qemu-img (package "
		    "qemu-utils): %s", strerror(errno));
		return RD_ERR_SYSTEM;
	}
	if (!timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	if (timed_out)
		snprintf(err, errsz, "qemu-img create %s: killed after %d s",
		    path, QEMU_IMG_TIMEOUT_MS / 1000);
	else
		snprintf(err, errsz, "qemu-img create %s failed%s%s", path,
		    out[0] ? ": " : "", out);
	return RD_ERR_SYSTEM;
}

/* The virtual size in the header of the qcow2 image at path. */
static int
qcow2_size(const char *path, uint64_t *size)
{
	uint8_t h[32];
	int fd, r = RD_ERR_INVALID;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return RD_ERR_SYSTEM;
	if (util_pread_full(fd, h, sizeof(h), 0) == 0 &&
	    memcmp(h, "QFI\xfb", 4) == 0) {
		*size = 0;
		for (int i = 24; i < 32; i++)
			*size = *size << 8 | h[i];
		r = 0;
	}
	close(fd);
	return r;
}

static int
copy_file(const char *from, const char *to, char *err, size_t errsz)
{
	uint8_t buf[65536];
	const char *what = from;
	int in, out = -1, r = RD_ERR_SYSTEM;
	ssize_t n;

	if ((in = open(from, O_RDONLY | O_CLOEXEC)) < 0)
		goto out;
	what = to;
	if ((out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0600)) < 0)
		goto out;
	for (;;) {
		if ((n = read(in, buf, sizeof(buf))) < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			what = from;
			goto out;
		}
		if (n == 0)
			break;
		if (util_write_full(out, buf, (size_t)n) != 0)
			goto out;
	}
	r = 0;
 out:
	if (r != 0)
		snprintf(err, errsz, "%s: %s", what, strerror(errno));
	if (out >= 0)
		close(out);
	if (in >= 0)
		close(in);
	return r;
}

/*
 * An empty qcow2 overlay of the disk's size: a copy of DIR/NODE.empty,
 * which qemu-img makes when it is missing or of another size.  qemu-img
 * (a process, no QMP job to poll) takes ~10 ms here, blockdev-create's
 * two jobs ~18 ms, the copy of ~200 KiB well under one.
 */
static int
overlay_make(struct qdisk *d, char *err, size_t errsz)
{
	uint64_t size;
	int r = 0;

	if (qcow2_size(d->empty, &size) != 0 || size != d->size) {
		char *tmp = xasprintf("%s.tmp", d->empty);
		if ((r = qemu_img_create(tmp, d->size, err, errsz)) == 0 &&
		    rename(tmp, d->empty) != 0) {
			snprintf(err, errsz, "%s: %s", d->empty,
			    strerror(errno));
			r = RD_ERR_SYSTEM;
		}
		free(tmp);
	}
	if (r == 0)
		r = copy_file(d->empty, d->overlay, err, errsz);
	return r;
}

static int
nbd_server(struct qemu *s, char *err, size_t errsz)
{
	struct sockaddr_un sun;
	int r;

	if (s->nbd_server)
		return 0;
	if (strlen(s->nbd_path) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "NBD socket path %s is longer than %zu "
		    "bytes", s->nbd_path, sizeof(sun.sun_path) - 1);
		return RD_ERR_TOO_LARGE;
	}
	r = q_call(s, "nbd-server-start", json_pack("{s:{s:s, s:{s:s}}}",
	    "addr", "type", "unix", "data", "path", s->nbd_path), NULL, err,
	    errsz);
	if (r == 0) {
		s->nbd_ours = 1;
	} else if (strstr(err, "already running") != NULL) {
		/* Perhaps ours, left by an earlier replicad: connecting to
		 * nbd_path tells (export_open). */
		s->nbd_ours = 0;
	} else {
		return r;
	}
	s->nbd_server = 1;
	return 0;
}

/* Connect libnbd to d's export (with the base's bitmap context). */
static int
export_open(struct qemu *s, struct qdisk *d, int bitmap, char *err,
    size_t errsz)
{
	char ctx[64];
	int r;

	snprintf(ctx, sizeof(ctx), "qemu:dirty-bitmap:" BITMAP_PREFIX "%"
	    PRIu64, d->base);
	if ((d->nbd = nbd_create()) == NULL) {
		snprintf(err, errsz, "libnbd: %s", nbd_get_error());
		return RD_ERR_SYSTEM;
	}
	if (nbd_set_export_name(d->nbd, d->id) == -1 ||
	    (bitmap && nbd_add_meta_context(d->nbd, ctx) == -1) ||
	    nbd_aio_connect_unix(d->nbd, s->nbd_path) == -1) {
		r = RD_ERR_PEER;
		snprintf(err, errsz, "NBD connection to %s: %s", s->nbd_path,
		    nbd_get_error());
	} else {
		r = nbdv_wait(d->nbd, 0, "connection", d->node, err, errsz);
	}
	if (r == 0 && !nbd_aio_is_ready(d->nbd)) {
		snprintf(err, errsz, "NBD connection to %s: %s", s->nbd_path,
		    nbd_get_error() ? nbd_get_error() : "refused");
		r = RD_ERR_PEER;
	}
	if (r != 0 && !s->nbd_ours) {
		snprintf(err, errsz, "QEMU's NBD server is already running and "
		    "does not serve %s (started by another program?)",
		    s->nbd_path);
		s->nbd_server = 0;	/* try again at the next cut */
		return RD_ERR_BUSY;
	}
	if (r != 0)
		return r;
	s->nbd_ours = 1;
	if (bitmap && nbd_can_meta_context(d->nbd, ctx) != 1) {
		snprintf(err, errsz, "QEMU's NBD export of %s offers no %s",
		    d->node, ctx);
		return RD_ERR_PEER;
	}
	int64_t size = nbd_get_size(d->nbd);
	if (size < 0 || (uint64_t)size < d->size) {
		snprintf(err, errsz, "QEMU's NBD export of %s is %" PRId64
		    " bytes, not %" PRIu64, d->node, size, d->size);
		return RD_ERR_PEER;
	}
	return 0;
}

/*
 * Make the cut with its view: an overlay per disk, ONE transaction (the
 * bitmap actions and the backup jobs), then the exports and the NBD
 * connections.  On failure, everything made is gone again, but the
 * bitmap actions stay (the caller undoes them).
 */
/*
 * QEMU 7.2 fails a guest write whose old cluster cannot be copied into
 * the overlay: never start a view without room for what a guest may
 * write during the read (at least FLEECE_ROOM, or all of the disks if
 * they are smaller).
 */
static int
room_for_view(struct qemu *s, char *err, size_t errsz)
{
	struct statvfs sv;
	uint64_t need = 0, have;
	char *dir = xstrdup(s->nbd_path);

	*strrchr(dir, '/') = '\0';
	for (size_t i = 0; i < s->ndisks; i++)
		need += s->disks[i].size;
	if (need > FLEECE_ROOM)
		need = FLEECE_ROOM;
	if (statvfs(dir, &sv) != 0) {
		snprintf(err, errsz, "%s: %s", dir, strerror(errno));
		free(dir);
		return RD_ERR_SYSTEM;
	}
	have = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (have < need) {
		char h[32], n[32];
		util_format_bytes(have, h, sizeof(h));
		util_format_bytes(need, n, sizeof(n));
		snprintf(err, errsz, "only %s free in %s: the point-in-time "
		    "view needs room for what the guest writes during the "
		    "read (at least %s); no cut until there is", h, dir, n);
		free(dir);
		return RD_ERR_NOSPACE;
	}
	free(dir);
	return 0;
}

static int
view_create(struct qemu *s, char *err, size_t errsz)
{
	json_t *actions = json_array();
	int r;

	if ((r = room_for_view(s, err, errsz)) != 0) {
		json_decref(actions);
		return r;
	}

	for (size_t i = 0; i < s->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		if ((r = overlay_make(d, err, errsz)) != 0)
			goto fail;
		if ((r = q_call(s, "blockdev-add", json_pack("{s:s, s:s, "
		    "s:{s:s, s:s}, s:s}", "driver", "qcow2", "node-name",
		    d->id, "file", "driver", "file", "filename", d->overlay,
		    "backing", d->node), NULL, err, errsz)) != 0)
			goto fail;
		d->added = 1;
	}
	rotate_actions(s, actions);
	for (size_t i = 0; i < s->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		json_array_append_new(actions, action("blockdev-backup",
		    json_pack("{s:s, s:s, s:s, s:s}", "device", d->node,
		    "target", d->id, "sync", "none", "job-id", d->id)));
	}
	r = transaction(s, actions, err, errsz);
	actions = NULL;
	if (r != 0)
		goto fail;
	for (size_t i = 0; i < s->ndisks; i++)
		s->disks[i].rotated = 1;
	s->viewed = 1;
	if ((r = nbd_server(s, err, errsz)) != 0)
		goto fail;
	for (size_t i = 0; i < s->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		json_t *args = json_pack("{s:s, s:s, s:s, s:s, s:b}", "type",
		    "nbd", "id", d->id, "node-name", d->id, "name", d->id,
		    "writable", 0);
		int bitmap = d->base != 0;
		if (bitmap) {
			/* Found through the overlay's backing chain. */
			char name[32];
			bitmap_name(d->base, name, sizeof(name));
			json_object_set_new(args, "bitmaps", json_pack("[s]",
			    name));
		}
		if ((r = q_call(s, "block-export-add", args, NULL, err,
		    errsz)) != 0 ||
		    (r = export_open(s, d, bitmap, err, errsz)) != 0)
			goto fail;
	}
	return 0;
 fail:
	json_decref(actions);
	fleece_cleanup(s, 0);
	return r;
}

/* Drop what an item list (query) names with our prefix. */
static int
drop_ours(struct qemu *s, const char *query, const char *key,
    const char *cmd, int *left, char *err, size_t errsz)
{
	json_t *list = NULL, *it;
	size_t i;
	int r;

	*left = 0;
	if ((r = q_call(s, query, NULL, &list, err, errsz)) != 0)
		return r;
	json_array_foreach(list, i, it) {
		const char *id = json_string_value(json_object_get(it, key));
		if (id == NULL || strncmp(id, FLEECE_PREFIX,
		    strlen(FLEECE_PREFIX)) != 0)
			continue;
		(*left)++;
		if (cmd == NULL)
			continue;
		json_t *args = strcmp(cmd, "block-export-del") == 0 ?
		    json_pack("{s:s, s:s}", "id", id, "mode", "hard") :
		    json_pack("{s:s, s:b}", "device", id, "force", 1);
		if ((r = q_call(s, cmd, args, NULL, err, errsz)) != 0)
			break;
	}
	json_decref(list);
	return r;
}

/* Issue cmd on what query lists of ours, then wait until it is gone. */
static int
drop_and_wait(struct qemu *s, const char *query, const char *key,
    const char *cmd, char *err, size_t errsz)
{
	uint64_t deadline = util_mono_ms() + QMP_TIMEOUT_MS;
	long ns = 500 * 1000;
	int r, left;

	if ((r = drop_ours(s, query, key, cmd, &left, err, errsz)) != 0 ||
	    left == 0)
		return r;
	for (;;) {
		if ((r = drop_ours(s, query, key, NULL, &left, err,
		    errsz)) != 0 || left == 0)
			return r;
		if (util_mono_ms() >= deadline) {
			snprintf(err, errsz, "QEMU still lists %d of replicad's "
			    "entries in %s after %d s", left, query,
			    QMP_TIMEOUT_MS / 1000);
			return RD_ERR_BUSY;
		}
		struct timespec ts = { 0, ns };
		nanosleep(&ts, NULL);
		if (ns < 20 * 1000 * 1000)
			ns *= 2;
	}
}

/*
 * Remove the view: NBD connections, exports, backup jobs (their
 * copy-before-write filters go with them), overlay nodes and files.  By
 * listing what QEMU holds rather than trusting our flags, it also clears
 * what an earlier replicad or a failed teardown left (thorough: every
 * node named FLEECE_PREFIX*).  A failure marks the state stale: the next
 * cut tries again before anything else.
 */
static void
fleece_cleanup(struct qemu *s, int thorough)
{
	json_t *nodes = NULL, *n;
	char err[512];
	size_t i;
	int r;

	for (i = 0; i < s->ndisks; i++) {
		if (s->disks[i].nbd != NULL)
			nbd_close(s->disks[i].nbd);
		s->disks[i].nbd = NULL;
	}
	if ((r = drop_and_wait(s, "query-block-exports", "id",
	    "block-export-del", err, sizeof(err))) != 0 ||
	    (r = drop_and_wait(s, "query-block-jobs", "device",
	    "block-job-cancel", err, sizeof(err))) != 0)
		goto out;
	if (thorough) {
		if ((r = query_nodes(s, &nodes, err, sizeof(err))) != 0)
			goto out;
		json_array_foreach(nodes, i, n) {
			const char *nn = json_string_value(json_object_get(n,
			    "node-name"));
			if (nn != NULL && strncmp(nn, FLEECE_PREFIX,
			    strlen(FLEECE_PREFIX)) == 0 &&
			    (r = q_call(s, "blockdev-del", json_pack("{s:s}",
			    "node-name", nn), NULL, err, sizeof(err))) != 0)
				goto out;
		}
	} else {
		for (i = 0; i < s->ndisks; i++) {
			struct qdisk *d = &s->disks[i];
			if (d->added && (r = q_call(s, "blockdev-del",
			    json_pack("{s:s}", "node-name", d->id), NULL, err,
			    sizeof(err))) != 0)
				goto out;
			d->added = 0;
		}
	}
 out:
	json_decref(nodes);
	for (i = 0; i < s->ndisks; i++) {
		if (r == 0)
			s->disks[i].added = 0;
		if (unlink(s->disks[i].overlay) != 0 && errno != ENOENT)
			log_warn("%s: cannot remove %s", s->vm,
			    s->disks[i].overlay);
	}
	s->viewed = 0;
	s->stale = r != 0;
	if (r != 0)
		log_warnx("%s: cannot remove the view of cycle %" PRIu64 " from "
		    "QEMU: %s; trying again at the next cycle", s->vm, s->cycle,
		    err);
}

/* --- what changed ----------------------------------------------------------- */

/* The dirty ranges of d's base, from NBD block status. */
static int
read_dirty(struct qdisk *d, struct trk_dirty *dirty, char *err,
    size_t errsz)
{
	char ctx[64];

	snprintf(ctx, sizeof(ctx), "qemu:dirty-bitmap:" BITMAP_PREFIX "%"
	    PRIu64, d->base);
	return nbdv_dirty(d->nbd, ctx, d->size, d->node, dirty, err, errsz);
}

/* --- the backend -------------------------------------------------------------- */

static int
qemu_open(const struct cfg_vm *vm, const char *state_dir, void **state,
    char *err, size_t errsz)
{
	struct qemu *s = xcalloc(1, sizeof(*s));

	s->vm = xstrdup(vm->name);
	s->qmp_path = xstrdup(vm->qmp);
	s->nbd_path = lay_qemu_socket(state_dir, vm->name);
	s->ndisks = vm->ndisks;
	s->disks = xcalloc(vm->ndisks, sizeof(*s->disks));
	s->stale = 1;
	for (size_t i = 0; i < vm->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		d->node = xstrdup(vm->disks[i]);
		d->overlay = lay_qemu_file(state_dir, vm->name,
		    vm->disk_names[i], LAY_QEMU_FLEECE);
		d->empty = lay_qemu_file(state_dir, vm->name, vm->disk_names[i],
		    LAY_QEMU_EMPTY);
		d->device_mark = lay_qemu_file(state_dir, vm->name,
		    vm->disk_names[i], LAY_QEMU_DEVICE);
		snprintf(d->id, sizeof(d->id), FLEECE_PREFIX "%zu", i);
	}
	*state = s;
	return 0;
}

static void qemu_abort(void *);

static void
qemu_close(void *state)
{
	struct qemu *s = state;
	char err[512];

	if (s->active)
		qemu_abort(s);
	/* QEMU runs one NBD server: leave none behind for others. */
	if (s->qmp != NULL && !qmp_broken(s->qmp) && s->nbd_ours)
		q_call(s, "nbd-server-stop", NULL, NULL, err, sizeof(err));
	qmp_close(s->qmp);
	for (size_t i = 0; i < s->ndisks; i++) {
		if (s->disks[i].nbd != NULL)
			nbd_close(s->disks[i].nbd);
		free(s->disks[i].node);
		free(s->disks[i].overlay);
		free(s->disks[i].empty);
		free(s->disks[i].device_mark);
	}
	free(s->disks);
	free(s->nbd_path);
	free(s->qmp_path);
	free(s->vm);
	free(s);
}

static int
qemu_sizes(void *state, uint64_t *sizes, char *err, size_t errsz)
{
	struct qemu *s = state;
	json_t *nodes = NULL, *node;
	int r;

	if ((r = query_nodes(s, &nodes, err, errsz)) != 0)
		return r;
	for (size_t i = 0; i < s->ndisks; i++)
		if ((r = node_of(nodes, s->disks[i].node, &node, err,
		    errsz)) != 0 ||
		    (r = node_size(node, s->disks[i].node, &sizes[i], err,
		    errsz)) != 0)
			break;
	json_decref(nodes);
	return r;
}

/* Drivers that pass every write down their "file" child unchanged. */
static int
filter_driver(const char *drv)
{
	static const char *const filters[] = { "throttle", "copy-on-read",
	    "preallocate", "compress", "blkdebug", "blklogwrites",
	    "copy-before-write", NULL };
	for (size_t i = 0; drv != NULL && filters[i] != NULL; i++)
		if (strcmp(drv, filters[i]) == 0)
			return 1;
	return 0;
}

static json_t *
graph_node(json_t *nodes, json_int_t id)
{
	size_t i;
	json_t *n;
	json_array_foreach(nodes, i, n)
		if (json_integer_value(json_object_get(n, "id")) == id)
			return n;
	return NULL;
}

/*
 * Is disk d's node still where the guest writes?  Going up from it in
 * QEMU's block graph, through filters (throttle, copy-on-read...) only,
 * there may be BlockBackends (the guest's device) and replicad's own
 * view, nothing else: an external snapshot puts a node above it (its
 * backing file), a block job may move the guest elsewhere, and a node
 * beneath a format node is not the guest's disk.  *backends: how many
 * BlockBackends write through it.
 */
static int
node_on_top(struct qemu *s, const struct qdisk *d, json_t *g, json_t *named,
    int *backends, char *err, size_t errsz)
{
	json_t *nodes = json_object_get(g, "nodes");
	json_t *edges = json_object_get(g, "edges");
	json_int_t todo[64];
	size_t ntodo = 0, i, j;
	json_t *n, *e;

	*backends = 0;
	json_array_foreach(nodes, i, n) {
		const char *type = json_string_value(json_object_get(n, "type"));
		const char *name = json_string_value(json_object_get(n, "name"));
		if (type && name && strcmp(type, "block-driver") == 0 &&
		    strcmp(name, d->node) == 0)
			todo[ntodo++] = json_integer_value(json_object_get(n,
			    "id"));
		if (ntodo > 0)
			break;
	}
	for (size_t k = 0; k < ntodo; k++) {
		json_array_foreach(edges, j, e) {
			if (json_integer_value(json_object_get(e, "child")) !=
			    todo[k])
				continue;
			json_t *p = graph_node(nodes, json_integer_value(
			    json_object_get(e, "parent")));
			const char *ptype = json_string_value(json_object_get(p,
			    "type"));
			const char *pname = json_string_value(json_object_get(p,
			    "name"));
			const char *edge = json_string_value(json_object_get(e,
			    "name"));
			if (ptype == NULL || pname == NULL || edge == NULL)
				goto odd;
			if (strncmp(pname, FLEECE_PREFIX,
			    strlen(FLEECE_PREFIX)) == 0)
				continue;		/* our view */
			if (strcmp(ptype, "block-backend") == 0) {
				(*backends)++;
				continue;
			}
			if (strcmp(ptype, "block-job") == 0) {
				snprintf(err, errsz, "node %s is held by a block "
				    "job (%.64s): the guest may be moved to another "
				    "node; no cut until it is done (then name the "
				    "guest's node in `disk`)", d->node, pname);
				return RD_ERR_BUSY;
			}
			json_t *pn = find_node(named, pname);
			const char *drv = pn ? json_string_value(
			    json_object_get(pn, "drv")) : NULL;
			if (drv != NULL && (strcmp(drv, "mirror_top") == 0 ||
			    strcmp(drv, "commit_top") == 0)) {
				snprintf(err, errsz, "node %s is held by a block "
				    "job (%s): the guest may be moved to another "
				    "node; no cut until it is done (then name the "
				    "guest's node in `disk`)", d->node, drv);
				return RD_ERR_BUSY;
			}
			if (strcmp(edge, "file") == 0 && filter_driver(drv)) {
				if (ntodo == sizeof(todo) / sizeof(todo[0]))
					goto odd;
				todo[ntodo++] = json_integer_value(
				    json_object_get(p, "id"));
				continue;
			}
			snprintf(err, errsz, "node %s is no longer where the "
			    "guest writes: node %.64s (%s) holds it as its %s"
			    "%s; name the guest's top node in `disk`", d->node,
			    pname, drv ? drv : "?", edge,
			    strcmp(edge, "backing") == 0 ?
			    " (an external snapshot?)" : "");
			return RD_ERR_STATE;
		}
	}
	return 0;
 odd:
	snprintf(err, errsz, "QMP: x-debug-query-block-graph around node %s "
	    "is not what replicad understands", d->node);
	return RD_ERR_INVALID;
}

/*
 * Every disk's node is where the guest writes, and a node that had a
 * device writing through it at an earlier cut still has one (a block
 * mirror that moved the guest to another node leaves the old node with
 * no parent, and its bitmaps would count nothing).  Whether a device was
 * seen is kept in DIR/NODE.device.
 */
static int
nodes_on_top(struct qemu *s, json_t *named, char *err, size_t errsz)
{
	json_t *g = NULL;
	int r;

	if ((r = q_call(s, "x-debug-query-block-graph", NULL, &g, err,
	    errsz)) != 0)
		return r;
	if (!json_is_array(json_object_get(g, "nodes")) ||
	    !json_is_array(json_object_get(g, "edges"))) {
		json_decref(g);
		snprintf(err, errsz, "QMP: x-debug-query-block-graph did not "
		    "return nodes and edges");
		return RD_ERR_INVALID;
	}
	for (size_t k = 0; k < s->ndisks && r == 0; k++) {
		struct qdisk *d = &s->disks[k];
		int backends;
		struct stat sb;
		if ((r = node_on_top(s, d, g, named, &backends, err,
		    errsz)) != 0)
			break;
		int had = stat(d->device_mark, &sb) == 0;
		if (backends > 0 && !had) {
			int fd = open(d->device_mark, O_WRONLY | O_CREAT |
			    O_CLOEXEC, 0600);
			if (fd >= 0)
				close(fd);
		} else if (backends == 0 && had) {
			snprintf(err, errsz, "no device writes through node %s "
			    "any more (one did at an earlier cycle: a block "
			    "mirror that moved the guest?); name the guest's "
			    "node in `disk`, or remove %s if the device is gone "
			    "on purpose", d->node, d->device_mark);
			r = RD_ERR_STATE;
		}
	}
	json_decref(g);
	return r;
}

/* Nodes, sizes, drivers and bases; 1 in *idle when no base counts a
 * write. */
static int
cut_prepare(struct qemu *s, const uint64_t *since, int *idle, char *err,
    size_t errsz)
{
	json_t *nodes = NULL, *node;
	int r, clean;

	if ((r = query_nodes(s, &nodes, err, errsz)) != 0)
		return r;
	for (size_t i = 0; i < s->ndisks; i++)
		if (find_node(nodes, s->disks[i].id) != NULL) {
			log_info("%s: QEMU holds the view of an unfinished "
			    "cycle: removing it", s->vm);
			s->stale = 1;
			break;
		}
	if (s->stale) {
		fleece_cleanup(s, 1);
		json_decref(nodes);
		nodes = NULL;
		if (s->stale) {
			snprintf(err, errsz, "QEMU still holds the view of an "
			    "earlier cycle");
			return RD_ERR_BUSY;
		}
		if ((r = query_nodes(s, &nodes, err, errsz)) != 0)
			return r;
	}
	if ((r = nodes_on_top(s, nodes, err, errsz)) != 0) {
		json_decref(nodes);
		return r;
	}
	*idle = 1;
	for (size_t i = 0; i < s->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		const char *drv;
		if ((r = node_of(nodes, d->node, &node, err, errsz)) != 0 ||
		    (r = node_size(node, d->node, &d->size, err, errsz)) != 0)
			break;
		drv = json_string_value(json_object_get(node, "drv"));
		/* Raw images cannot hold persistent bitmaps. */
		d->qcow2 = drv != NULL && strcmp(drv, "qcow2") == 0;
		disk_prepare(s, d, node, since[i], s->cycle, &clean);
		/* A grown disk's new blocks are read (tracker.c), but QEMU
		 * does not count them dirty. */
		if (!clean || d->size != d->last_size || s->want_view)
			*idle = 0;
	}
	json_decref(nodes);
	return r;
}

static int
qemu_cut(void *state, uint64_t cycle, const uint64_t *since, uint64_t *sizes,
    struct trk_dirty *dirty, char *err, size_t errsz)
{
	struct qemu *s = state;
	char why[512];
	int r, idle, zero;

	if (s->active)
		qemu_abort(s);
	s->cycle = cycle;
	for (size_t i = 0; i < s->ndisks; i++)
		s->disks[i].rotated = 0;
	if ((r = cut_prepare(s, since, &idle, err, errsz)) != 0)
		return r;
	if (idle) {
		json_t *actions = json_array();
		rotate_actions(s, actions);
		if ((r = transaction(s, actions, err, errsz)) != 0)
			return r;
		for (size_t i = 0; i < s->ndisks; i++)
			s->disks[i].rotated = 1;
		/* A write may have landed between the query and the
		 * transaction. */
		if ((r = bases_clean(s, &zero, err, errsz)) != 0)
			goto fail;
		if (!zero && (r = unrotate(s, err, errsz)) != 0)
			goto fail;
		idle = zero;
	}
	if (!idle && (r = view_create(s, err, errsz)) != 0)
		goto fail;
	s->want_view = 0;
	for (size_t i = 0; i < s->ndisks; i++) {
		struct qdisk *d = &s->disks[i];
		sizes[i] = d->size;
		if (d->base == 0)
			dirty[i].all = 1;
		else if (!idle && (r = read_dirty(d, &dirty[i], err,
		    errsz)) != 0)
			goto fail;
	}
	s->active = 1;
	return 0;
 fail:
	if (s->viewed)
		fleece_cleanup(s, 0);
	if (unrotate(s, why, sizeof(why)) != 0)
		log_warnx("%s: cannot undo the dirty bitmaps of cycle %" PRIu64
		    ": %s", s->vm, cycle, why);
	return r;
}

static int
qemu_read(void *state, size_t disk, uint8_t *buf, size_t len, uint64_t off,
    char *err, size_t errsz)
{
	struct qemu *s = state;
	struct qdisk *d;

	if (!s->active || disk >= s->ndisks) {
		snprintf(err, errsz, "no cut to read from");
		return RD_ERR_STATE;
	}
	d = &s->disks[disk];
	if (!s->viewed) {
		/* tracker.c reads only what a cut reports: a bug.  Fail
		 * safe, and give the next cut a view. */
		snprintf(err, errsz, "a read of %s from a cut without a view",
		    d->node);
		s->want_view = 1;
		return RD_ERR_INTERNAL;
	}
	if (d->nbd == NULL) {
		snprintf(err, errsz, "the view of %s was closed after an "
		    "error", d->node);
		return RD_ERR_STATE;
	}
	if (off > d->size || len > d->size - off)
		return RD_ERR_TRUNCATED;
	return nbdv_pread(&d->nbd, buf, len, off, d->node, err, errsz);
}

static int
qemu_commit(void *state, uint64_t cycle, char *err, size_t errsz)
{
	struct qemu *s = state;
	json_t *actions;

	if (!s->active) {
		snprintf(err, errsz, "no cut to commit");
		return RD_ERR_STATE;
	}
	s->active = 0;
	if (s->viewed)
		fleece_cleanup(s, 0);
	/* replicad.<cycle> records since this cut: the bases go.  Should
	 * this fail, the next cut removes them (older than its since). */
	actions = json_array();
	for (size_t i = 0; i < s->ndisks; i++)
		if (s->disks[i].base != 0 && s->disks[i].rotated)
			json_array_append_new(actions, bitmap_action(
			    "block-dirty-bitmap-remove", s->disks[i].node,
			    s->disks[i].base));
	for (size_t i = 0; i < s->ndisks; i++) {
		s->disks[i].rotated = 0;
		s->disks[i].last_size = s->disks[i].size;
	}
	return transaction(s, actions, err, errsz);
}

static void
qemu_abort(void *state)
{
	struct qemu *s = state;
	char err[512];

	if (!s->active)
		return;
	s->active = 0;
	if (s->viewed)
		fleece_cleanup(s, 0);
	/* Should this fail, the next cut merges what is left. */
	if (unrotate(s, err, sizeof(err)) != 0)
		log_warnx("%s: cannot restore the dirty bitmaps after cycle %"
		    PRIu64 ": %s", s->vm, s->cycle, err);
}

static int
qemu_check(const struct cfg_vm *vm, const char *state_dir, char *err,
    size_t errsz)
{
	struct sockaddr_un sun;
	struct qmp *q = NULL;
	json_t *nodes = NULL, *node;
	char why[512];
	int r;

	char *nbd_path = lay_qemu_socket(state_dir, vm->name);
	if (strlen(nbd_path) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "NBD socket path %s is longer than %zu "
		    "bytes: choose a shorter state_dir", nbd_path,
		    sizeof(sun.sun_path) - 1);
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	if ((r = qmp_open(vm->qmp, QMP_TIMEOUT_MS, &q, err, errsz)) != 0) {
		/* No socket, or nobody listening: QEMU is not running. */
		if (r == RD_ERR_NOT_FOUND || r == RD_ERR_PEER)
			r = TRK_CHECK_NOT_RUNNING;
		goto out;
	}
	if ((r = qmp_call(q, "query-named-block-nodes", json_pack("{s:b}",
	    "flat", 1), &nodes, why, sizeof(why))) != 0) {
		snprintf(err, errsz, "QMP socket %s: %s", vm->qmp, why);
		goto out;
	}
	for (size_t i = 0; i < vm->ndisks; i++)
		if ((r = node_of(nodes, vm->disks[i], &node, err,
		    errsz)) != 0)
			goto out;
	r = 0;
 out:
	json_decref(nodes);
	qmp_close(q);
	free(nbd_path);
	return r;
}

const struct trk_backend trk_backend_qemu = {
	.name = "qemu",
	.frozen = 1,
	.open = qemu_open,
	.close = qemu_close,
	.sizes = qemu_sizes,
	.cut = qemu_cut,
	.read = qemu_read,
	.commit = qemu_commit,
	.abort = qemu_abort,
	.check = qemu_check,
};
