/*
 * lvcost.c — what one cycle of tracker = libvirt costs libvirt and QEMU,
 * measured on a running domain with the same public API calls that
 * src/trk_libvirt.c makes (tools/bench-trackers builds and runs it).
 *
 * Usage: lvcost URI DOMAIN TARGET DIR N
 *
 * DIR must be writable by QEMU's user (the NBD socket and the scratch
 * file go there).  The domain's disk TARGET must be qcow2.  Checkpoints
 * are named lvcost.*; every one made is deleted before the end (libvirt
 * merges a deleted child's bitmap into its parent: the domain's other
 * checkpoints keep recording everything).
 *
 * Prints one line per measured step, "STEP ms ms ms ..." (N samples):
 *   idle-cut      the calls of an idle cut (domain lookup and UUIDs, both
 *                 definitions, state, job and checkpoint sweeps, the base
 *                 checkpoint's size estimate, the disk's block info)
 *   size-query    only virDomainCheckpointGetXMLDesc(..._XML_SIZE)
 *   ckpt-create   virDomainCheckpointCreateXML of a leaf checkpoint
 *   ckpt-delete   virDomainCheckpointDelete of that leaf (bitmap merged
 *                 into its parent)
 *   backup-begin  virDomainBackupBegin, pull mode, incremental from the
 *                 base checkpoint, creating the next checkpoint
 *   nbd-connect   libnbd: connect to the export with the dirty-bitmap
 *                 meta context, plus block status of the whole disk
 *   job-end       nbd_close + virDomainAbortJob (how a pull backup ends)
 *   base-delete   virDomainCheckpointDelete of the old base (the commit)
 *   cycle         backup-begin + nbd-connect + job-end + base-delete
 * Exit status 0, or 1 with a message on stderr.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#define MAXN	1000

static const char *target, *dir;
static virDomainPtr dom;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void
die(const char *what)
{
	virErrorPtr e = virGetLastError();

	fprintf(stderr, "lvcost: %s: %s\n", what, e && e->message ?
	    e->message : "failed");
	exit(1);
}

static void
quiet(void *arg, virErrorPtr e)
{
	(void)arg;
	(void)e;	/* expected failures stay silent; die() reports */
}

static void
print(const char *step, const double *v, int n)
{
	printf("%s", step);
	for (int i = 0; i < n; i++)
		printf(" %.3f", v[i]);
	printf("\n");
}

static void
ckpt_create(const char *name)
{
	char xml[512];

	snprintf(xml, sizeof(xml), "<domaincheckpoint><name>%s</name><disks>"
	    "<disk name='%s' checkpoint='bitmap'/></disks></domaincheckpoint>",
	    name, target);
	virDomainCheckpointPtr c = virDomainCheckpointCreateXML(dom, xml, 0);
	if (c == NULL)
		die("checkpoint create");
	virDomainCheckpointFree(c);
}

static void
ckpt_delete(const char *name)
{
	virDomainCheckpointPtr c = virDomainCheckpointLookupByName(dom, name, 0);

	if (c == NULL || virDomainCheckpointDelete(c, 0) != 0)
		die("checkpoint delete");
	virDomainCheckpointFree(c);
}

static int
extent(void *arg, const char *ctx, uint64_t off, uint32_t *e, size_t n,
    int *error)
{
	uint64_t *next = arg;

	(void)ctx;
	(void)error;
	for (size_t i = 0; i + 1 < n; i += 2)
		off += e[i];
	if (off > *next)
		*next = off;
	return 0;
}

/* Connect to the export and walk the dirty bitmap, as trk_libvirt.c's
 * export_open + nbdv_dirty do. */
static struct nbd_handle *
nbd_view(const char *sock)
{
	char ctx[128];
	struct nbd_handle *h = nbd_create();

	snprintf(ctx, sizeof(ctx), "qemu:dirty-bitmap:backup-%s", target);
	if (h == NULL || nbd_set_export_name(h, target) == -1 ||
	    nbd_add_meta_context(h, ctx) == -1 || nbd_connect_unix(h, sock) == -1 ||
	    nbd_can_meta_context(h, ctx) != 1) {
		fprintf(stderr, "lvcost: NBD: %s\n", nbd_get_error());
		exit(1);
	}
	int64_t size = nbd_get_size(h);
	uint64_t off = 0;
	while (size > 0 && off < (uint64_t)size) {
		uint64_t next = off, count = (uint64_t)size - off;
		if (count > (1ull << 31))
			count = 1ull << 31;
		nbd_extent_callback cb = { .callback = extent, .user_data = &next };
		if (nbd_block_status(h, count, off, cb, 0) == -1 || next <= off) {
			fprintf(stderr, "lvcost: NBD block status: %s\n",
			    nbd_get_error() ? nbd_get_error() : "no progress");
			exit(1);
		}
		off = next;
	}
	return h;
}

int
main(int argc, char **argv)
{
	static double idle[MAXN], size_q[MAXN], create[MAXN], delete[MAXN],
	    begin[MAXN], nbdc[MAXN], end[MAXN], bdel[MAXN], cycle[MAXN];
	char base[64], next[64], sock[512], scratch[512], bx[2048], cx[512];

	if (argc != 6 || atoi(argv[5]) < 1 || atoi(argv[5]) > MAXN) {
		fprintf(stderr, "usage: lvcost URI DOMAIN TARGET DIR N\n");
		return 1;
	}
	target = argv[3];
	dir = argv[4];
	int n = atoi(argv[5]);
	snprintf(sock, sizeof(sock), "%s/lvcost.sock", dir);
	snprintf(scratch, sizeof(scratch), "%s/lvcost.%s.scratch", dir, target);

	virSetErrorFunc(NULL, quiet);
	virConnectPtr conn = virConnectOpen(argv[1]);
	if (conn == NULL)
		die("connect");
	if ((dom = virDomainLookupByName(conn, argv[2])) == NULL)
		die("domain lookup");

	snprintf(base, sizeof(base), "lvcost.0");
	ckpt_create(base);

	for (int i = 0; i < n; i++) {
		/* The idle cut of trk_libvirt.c. */
		unsigned char a[VIR_UUID_BUFLEN], b[VIR_UUID_BUFLEN];
		char uuid[VIR_UUID_STRING_BUFLEN];
		virDomainCheckpointPtr *list = NULL;
		virDomainBlockInfo bi;
		int state, reason;
		double t0 = now_ms();
		if (virConnectIsAlive(conn) != 1)
			die("connection");
		virDomainPtr d = virDomainLookupByName(conn, argv[2]);
		if (d == NULL || virDomainGetUUID(d, a) != 0 ||
		    virDomainGetUUID(dom, b) != 0)
			die("domain lookup");
		virDomainFree(d);
		char *x1 = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
		char *x2 = virDomainGetXMLDesc(dom, 0);
		if (x1 == NULL || x2 == NULL ||
		    virDomainGetState(dom, &state, &reason, 0) != 0 ||
		    virDomainGetUUIDString(dom, uuid) != 0)
			die("definition");
		free(x1);
		free(x2);
		free(virDomainBackupGetXMLDesc(dom, 0));	/* none: fails */
		int nc = virDomainListAllCheckpoints(dom, &list, 0);
		for (int k = 0; k < nc; k++)
			virDomainCheckpointFree(list[k]);
		free(list);
		virDomainCheckpointPtr c = virDomainCheckpointLookupByName(dom,
		    base, 0);
		if (c == NULL || virDomainCheckpointListAllChildren(c, NULL,
		    0) != 0)
			die("base checkpoint");
		double q0 = now_ms();
		char *sx = virDomainCheckpointGetXMLDesc(c,
		    VIR_DOMAIN_CHECKPOINT_XML_SIZE |
		    VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
		double q1 = now_ms();
		if (sx == NULL)
			die("checkpoint size");
		free(sx);
		virDomainCheckpointFree(c);
		if (virDomainGetBlockInfo(dom, target, &bi, 0) != 0)
			die("block info");
		idle[i] = now_ms() - t0;
		size_q[i] = q1 - q0;

		/* A checkpoint alone: create a leaf, delete it. */
		snprintf(next, sizeof(next), "lvcost.leaf%d", i);
		t0 = now_ms();
		ckpt_create(next);
		double t1 = now_ms();
		ckpt_delete(next);
		create[i] = t1 - t0;
		delete[i] = now_ms() - t1;

		/* A cycle with changes: begin, connect, end, old base gone. */
		snprintf(next, sizeof(next), "lvcost.%d", i + 1);
		snprintf(bx, sizeof(bx), "<domainbackup mode='pull'>"
		    "<server transport='unix' socket='%s'/><disks>"
		    "<disk name='%s' backup='yes' type='file' exportname='%s' "
		    "backupmode='incremental' incremental='%s'>"
		    "<scratch file='%s'/></disk></disks></domainbackup>",
		    sock, target, target, base, scratch);
		snprintf(cx, sizeof(cx), "<domaincheckpoint><name>%s</name>"
		    "<disks><disk name='%s' checkpoint='bitmap'/></disks>"
		    "</domaincheckpoint>", next, target);
		unlink(sock);
		unlink(scratch);
		t0 = now_ms();
		if (virDomainBackupBegin(dom, bx, cx, 0) != 0)
			die("backup begin");
		t1 = now_ms();
		struct nbd_handle *h = nbd_view(sock);
		double t2 = now_ms();
		nbd_close(h);
		if (virDomainAbortJob(dom) != 0)
			die("abort job");
		double t3 = now_ms();
		ckpt_delete(base);
		double t4 = now_ms();
		begin[i] = t1 - t0;
		nbdc[i] = t2 - t1;
		end[i] = t3 - t2;
		bdel[i] = t4 - t3;
		cycle[i] = t4 - t0;
		snprintf(base, sizeof(base), "%s", next);
	}
	ckpt_delete(base);
	print("idle-cut", idle, n);
	print("size-query", size_q, n);
	print("ckpt-create", create, n);
	print("ckpt-delete", delete, n);
	print("backup-begin", begin, n);
	print("nbd-connect", nbdc, n);
	print("job-end", end, n);
	print("base-delete", bdel, n);
	print("cycle", cycle, n);
	virDomainFree(dom);
	virConnectClose(conn);
	return 0;
}
