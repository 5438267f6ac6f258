/*
 * trk_libvirt.c — the libvirt backend: a domain's disks, tracked by
 * libvirt's checkpoints and read through the NBD export of a pull-mode
 * backup (libvirt 9.0, QEMU 7.2, libnbd 1.14), the way libvirt-based
 * backup tools do it, through libvirt's public API only.
 *
 * A running domain.  The cut of cycle C is ONE virDomainBackupBegin()
 * in pull mode over all the VM's disks that also creates checkpoint
 * replicad.C: QEMU fixes the view of every disk and starts the new
 * dirty bitmap at the same instant, so the cut is consistent across
 * disks.  Each disk whose saved digests describe a cycle at or after
 * the base checkpoint replicad.N (the one of the last acknowledged cut)
 * is backed up incrementally from it: its export carries the bitmap
 * qemu:dirty-bitmap:backup-TARGET, every write since cut N, and only
 * those ranges are read.  Any other disk is exported whole and compared
 * with its digests.  When the replica has acknowledged C (commit),
 * replicad.N is deleted and replicad.C becomes the base (P1: never
 * before); when the cycle fails (abort), replicad.C is deleted, libvirt
 * merges its bitmap back into replicad.N, and the next cut reports
 * everything since N again.  The backup job ends as soon as the view is
 * read (viewed), before the replica's answer.
 *
 * A broken chain — the base checkpoint gone (deleted by someone, the
 * domain redefined), its bitmap missing or inconsistent (QEMU killed, the
 * image replaced), a disk whose source changed — makes libvirt refuse
 * the incremental backup; the cut is then taken again with every disk
 * whole: never a silent gap.  Raw images keep no bitmaps, so libvirt
 * makes no checkpoints for them: a raw disk is exported whole at every
 * cut (still a point-in-time view; only changed blocks are sent, but
 * all are read).
 *
 * Idle cycles.  When every disk is incremental, libvirt's size estimate
 * of the base checkpoint (VIR_DOMAIN_CHECKPOINT_XML_SIZE) is 0 and no
 * disk changed size, the cut is made without a backup job: nothing was
 * written since cut N, the base stays N, and a write after the check
 * is simply found by the next cut (still since N).
 *
 * A shut-off domain.  libvirt cannot back it up; nothing can change its
 * images while it is off, so they are read directly (qemu-nbd, read
 * only, sharing the image so that the domain may still be started)
 * and compared whole with the digests — once: the stat of each image
 * (device, inode, size, mtime, ctime) is recorded with the cut, and an
 * unchanged image at the next shut-off cut has nothing to read.  A
 * domain started while its images are read changes them (QEMU writes
 * the image header when it opens a qcow2, and any guest write changes
 * the mtime): every read checks the stat and fails the cycle if it
 * moved.  The checkpoint chain is left as it is: the first cut after a
 * start is incremental from the base again, which covers everything
 * since (and more than) the last shut-off cut.
 *
 * QEMU runs as its own user (the DAC label of the running domain): the
 * NBD socket and the scratch files live in STATE_DIR/libvirt/VM, owned
 * by that user; STATE_DIR and STATE_DIR/libvirt must be traversable.
 *
 * The tracker's record, STATE_DIR/tracker/VM/libvirt.state: the domain's
 * UUID, the base checkpoint's cycle, and per disk the source and the
 * stat of the last shut-off cut.  Lost or unreadable, every disk is read
 * whole once.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <libnbd.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "err.h"
#include "layout.h"
#include "log.h"
#include "nbdview.h"
#include "trk_backend.h"
#include "util.h"
#include "virt.h"
#include "xmalloc.h"

#define CKPT_PREFIX	"replicad."
#define STATE_MAGIC	"replicad-libvirt 1"
#define SHUTDOWN_REASON_CLEAN	VIR_DOMAIN_SHUTOFF_SHUTDOWN

enum cut_kind {
	CUT_NONE = 0,
	CUT_BACKUP,		/* a pull-mode backup job runs (or ran) */
	CUT_IDLE,		/* nothing written since the base */
	CUT_OFFLINE,		/* a shut-off domain's images, by qemu-nbd */
};

/* The stat of an image at a shut-off cut. */
struct imgsig {
	uint64_t	 cycle;		/* 0: none */
	uint64_t	 dev, ino, size;
	int64_t		 mtime_ns, ctime_ns;
};

struct lvdisk {
	char		*target;	/* vda: the disk's name */
	char		*file;		/* its source at the cut */
	char		*format;	/* qcow2, raw... */
	char		*base_file;	/* its source at the base checkpoint */
	struct imgsig	 sig;		/* committed shut-off cut */
	struct imgsig	 cut_sig;	/* this cut's (CUT_OFFLINE) */
	uint64_t	 size;		/* at the cut */
	int		 incremental;	/* read the bitmap since the base */
	struct nbd_handle *nbd;
};

struct lv {
	char		*vm;
	char		*domain;
	char		*uri;
	char		*dir;		/* STATE_DIR/libvirt/VM */
	char		*sock;		/* DIR/nbd.sock */
	char		*state_path;
	char		*state_dir;
	size_t		 ndisks;
	struct lvdisk	*disks;
	virConnectPtr	 conn;
	virDomainPtr	 dom;
	char		 uuid[VIR_UUID_STRING_BUFLEN];
	uint64_t	 base;		/* the base's cycle; 0: none */
	char		 base_name[64];	/* its checkpoint, replicad.<base>.<ms> */
	char		 new_name[64];	/* the cut's checkpoint */
	/* The cut under way. */
	enum cut_kind	 kind;
	uint64_t	 cycle;
	int		 job;		/* our backup job runs */
	int		 made_ckpt;	/* replicad.<cycle> was created */
	char		*xml;		/* the definition at the last cut */
	int		 frozen;	/* the guest agent froze the guest */
	int		 at_rest;	/* lv_freeze found it shut off cleanly */
};

/* --- the tracker's record ------------------------------------------------------ */

static void
state_load(struct lv *s)
{
	uint8_t *data = NULL;
	size_t len = 0;
	char *save = NULL;

	s->base = 0;
	s->uuid[0] = '\0';
	if (util_read_file(s->state_path, 1 << 20, &data, &len) != 0)
		return;
	char *txt = xmalloc(len + 1);
	memcpy(txt, data, len);
	txt[len] = '\0';
	free(data);
	char *line = strtok_r(txt, "\n", &save);
	if (line == NULL || strcmp(line, STATE_MAGIC) != 0) {
		log_warnx("%s: %s is not a tracker record: every disk is read "
		    "whole once", s->vm, s->state_path);
		free(txt);
		return;
	}
	while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
		char name[128], file[4096];
		uint64_t base;
		struct imgsig g;
		if (sscanf(line, "uuid %36s", s->uuid) == 1)
			continue;
		char bname[64];
		if (sscanf(line, "base %" SCNu64 " %63s", &base, bname) == 2) {
			s->base = base;
			snprintf(s->base_name, sizeof(s->base_name), "%s",
			    base != 0 ? bname : "");
			continue;
		}
		if (sscanf(line, "disk %127s %" SCNu64 " %" SCNu64 " %" SCNu64
		    " %" SCNu64 " %" SCNd64 " %" SCNd64 " %4095[^\n]", name,
		    &g.cycle, &g.dev, &g.ino, &g.size, &g.mtime_ns,
		    &g.ctime_ns, file) != 8)
			continue;
		for (size_t i = 0; i < s->ndisks; i++)
			if (strcmp(s->disks[i].target, name) == 0) {
				s->disks[i].sig = g;
				free(s->disks[i].base_file);
				s->disks[i].base_file = xstrdup(file);
			}
	}
	free(txt);
}

static int
state_save(struct lv *s)
{
	size_t cap = 256, len = 0;
	char *buf = xmalloc(cap);

	len += (size_t)snprintf(buf, cap, "%s\nuuid %s\nbase %" PRIu64 " %s\n",
	    STATE_MAGIC, s->uuid[0] ? s->uuid : "-", s->base,
	    s->base != 0 ? s->base_name : "-");
	for (size_t i = 0; i < s->ndisks; i++) {
		const struct lvdisk *d = &s->disks[i];
		const char *f = d->base_file ? d->base_file : "-";
		size_t need = strlen(d->target) + strlen(f) + 160;
		if (len + need > cap) {
			cap = (len + need) * 2;
			buf = xreallocarray(buf, cap, 1);
		}
		len += (size_t)snprintf(buf + len, cap - len, "disk %s %" PRIu64
		    " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRId64 " %" PRId64
		    " %s\n", d->target, d->sig.cycle, d->sig.dev, d->sig.ino,
		    d->sig.size, d->sig.mtime_ns, d->sig.ctime_ns, f);
	}
	int r = util_write_atomic(s->state_path, buf, len);
	free(buf);
	return r;
}

/* --- libvirt ----------------------------------------------------------------------- */

static void
drop_conn(struct lv *s)
{
	if (s->dom != NULL)
		virDomainFree(s->dom);
	if (s->conn != NULL)
		virConnectClose(s->conn);
	s->dom = NULL;
	s->conn = NULL;
}

/* The domain, through a connection kept across cycles (reopened when
 * libvirtd went away). */
static int
domain(struct lv *s, char *err, size_t errsz)
{
	if (s->conn != NULL && virConnectIsAlive(s->conn) != 1)
		drop_conn(s);
	if (s->conn == NULL &&
	    (s->conn = virt_open(s->uri, err, errsz)) == NULL)
		return RD_ERR_PEER;
	if (s->dom != NULL) {
		/* Still the same domain (not undefined and redefined, nor
		 * renamed)? */
		virDomainPtr d = virDomainLookupByName(s->conn, s->domain);
		unsigned char a[VIR_UUID_BUFLEN], b[VIR_UUID_BUFLEN];
		if (d != NULL && virDomainGetUUID(d, a) == 0 &&
		    virDomainGetUUID(s->dom, b) == 0 &&
		    memcmp(a, b, sizeof(a)) == 0) {
			virDomainFree(d);
			return 0;
		}
		if (d != NULL)
			virDomainFree(d);
		virDomainFree(s->dom);
		s->dom = NULL;
	}
	int r = virt_lookup(s->conn, s->domain, &s->dom, err, errsz);
	if (r == RD_ERR_PEER)
		drop_conn(s);
	return r;
}

static int
lv_fail(char *err, size_t errsz, const char *what, const char *dom)
{
	snprintf(err, errsz, "%s of domain %s: %s", what, dom,
	    virt_last_error());
	return RD_ERR_PEER;
}

/* The disks' sources and formats from the current definition; a disk of
 * the relationship that is gone or cannot be read is an error. */
static int
read_definition(struct lv *s, char *err, size_t errsz)
{
	struct virt_disk *vd = NULL;
	size_t nd = 0;
	char *live;
	int r;

	free(s->xml);
	s->xml = virDomainGetXMLDesc(s->dom, VIR_DOMAIN_XML_INACTIVE);
	if (s->xml == NULL)
		return lv_fail(err, errsz, "cannot read the definition",
		    s->domain);
	/* The running one says where QEMU reads now (hot-plugged disks,
	 * block jobs that moved a disk). */
	if ((live = virDomainGetXMLDesc(s->dom, 0)) == NULL)
		return lv_fail(err, errsz, "cannot read the definition",
		    s->domain);
	r = virt_disks(live, &vd, &nd, err, errsz);
	free(live);
	if (r != 0)
		return r;
	for (size_t i = 0; i < s->ndisks && r == 0; i++) {
		struct lvdisk *d = &s->disks[i];
		const struct virt_disk *f = NULL;
		for (size_t k = 0; k < nd; k++)
			if (strcmp(vd[k].target, d->target) == 0)
				f = &vd[k];
		if (f == NULL) {
			snprintf(err, errsz, "domain %s has no disk %s any more",
			    s->domain, d->target);
			r = RD_ERR_NOT_FOUND;
		} else if (f->why_not != NULL) {
			snprintf(err, errsz, "disk %s of domain %s cannot be "
			    "replicated: %s", d->target, s->domain, f->why_not);
			r = RD_ERR_UNSUPPORTED;
		} else {
			free(d->file);
			free(d->format);
			d->file = xstrdup(f->file);
			d->format = xstrdup(f->format ? f->format : "raw");
		}
	}
	virt_disks_free(vd, nd);
	return r;
}

static int
qcow2(const struct lvdisk *d)
{
	return d->format != NULL && strcmp(d->format, "qcow2") == 0;
}

/*
 * The checkpoint of the cut of cycle: replicad.<cycle>.<ms>.  The time
 * makes each name new, also for a cycle number tried again after a
 * failure whose checkpoint could only be forgotten (its bitmap may
 * still be in the image).
 */
static void
ckpt_name(char *buf, size_t sz, uint64_t cycle)
{
	snprintf(buf, sz, CKPT_PREFIX "%" PRIu64 ".%" PRIx64, cycle,
	    util_now_ms());
}

/* The cycle in a checkpoint's name; 0 if it is not one of ours. */
static uint64_t
ckpt_cycle(const char *name)
{
	char *end;
	if (strncmp(name, CKPT_PREFIX, strlen(CKPT_PREFIX)) != 0)
		return 0;
	uint64_t k = strtoull(name + strlen(CKPT_PREFIX), &end, 10);
	return *end == '.' || *end == '\0' ? k : 0;
}

/*
 * Delete checkpoint name; 0 if it is gone (or was).  libvirt 9.0 cannot
 * delete a checkpoint of a shut-off domain (its bitmap is in the image):
 * it is left for the sweep of a later cut of the running domain (it is
 * no base any more), and 0 returned.
 */
static int
ckpt_delete(struct lv *s, const char *name, char *err, size_t errsz)
{
	if (virDomainIsActive(s->dom) == 0) {
		log_debug("%s: checkpoint %s of shut-off domain %s: removed at "
		    "a later cycle while it runs", s->vm, name, s->domain);
		return 0;
	}
	virDomainCheckpointPtr c = virDomainCheckpointLookupByName(s->dom,
	    name, 0);
	if (c == NULL)
		return virt_last_not_found() ? 0 : lv_fail(err, errsz,
		    "cannot look up a checkpoint", s->domain);
	int r = virDomainCheckpointDelete(c, 0);
	if (r != 0) {
		snprintf(err, errsz, "cannot delete checkpoint %s of domain "
		    "%s: %s", name, s->domain, virt_last_error());
		/* A checkpoint whose bitmap is broken or gone cannot be
		 * deleted with it: forget it (it is no base any more). */
		if (virDomainCheckpointDelete(c,
		    VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY) == 0) {
			log_warnx("%s: %s; removed from libvirt's records only",
			    s->vm, err);
			r = 0;
		}
	}
	virDomainCheckpointFree(c);
	return r == 0 ? 0 : RD_ERR_PEER;
}

/*
 * Checkpoints replicad.K other than the base, left by a cycle that
 * failed without its abort (replicad killed): delete them (libvirt
 * merges each one's bitmap into its parent, so the base keeps
 * recording everything since its cut).  Newest first.
 */
static void
ckpt_sweep(struct lv *s)
{
	virDomainCheckpointPtr *list = NULL;
	char err[512];
	int n = virDomainListAllCheckpoints(s->dom, &list, 0);

	for (int pass = 0; pass < 2 && n > 0; pass++)
		for (int i = 0; i < n; i++) {
			const char *name = list[i] ? virDomainCheckpointGetName(
			    list[i]) : NULL;
			uint64_t k = name ? ckpt_cycle(name) : 0;
			if (k == 0 || strcmp(name, s->base_name) == 0)
				continue;
			/* pass 0: those after the base; pass 1: before. */
			if ((pass == 0) != (k >= s->base))
				continue;
			if (ckpt_delete(s, name, err, sizeof(err)) == 0)
				log_info("%s: removed checkpoint %s left by an "
				    "earlier cycle", s->vm, name);
			else
				log_warnx("%s: %s", s->vm, err);
		}
	for (int i = 0; i < n; i++)
		virDomainCheckpointFree(list[i]);
	free(list);
}

/* Does the base checkpoint exist, and what did each disk change since
 * (libvirt's estimate, -1 if unknown)?  0 if it exists. */
static int
base_sizes(struct lv *s, int64_t *changed)
{
	int found = -1;

	for (size_t i = 0; i < s->ndisks; i++)
		changed[i] = -1;
	if (s->base == 0)
		return -1;
	virDomainCheckpointPtr c = virDomainCheckpointLookupByName(s->dom,
	    s->base_name, 0);
	if (c == NULL)
		return -1;
	/* The estimate covers everything since the base only while it is
	 * the newest checkpoint (another tool's may follow it). */
	int children = virDomainCheckpointListAllChildren(c, NULL, 0);
	char *xml = children != 0 ? NULL : virDomainCheckpointGetXMLDesc(c,
	    VIR_DOMAIN_CHECKPOINT_XML_SIZE | VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
	virDomainCheckpointFree(c);
	if (xml == NULL)
		return 0;	/* exists; no estimate */
	found = 0;
	for (size_t i = 0; i < s->ndisks; i++) {
		/* <disk name='vda' checkpoint='bitmap' bitmap='...' size='N'/> */
		char pat[96];
		snprintf(pat, sizeof(pat), "<disk name='%s' ", s->disks[i].target);
		const char *p = strstr(xml, pat);
		const char *e = p ? strchr(p, '>') : NULL;
		const char *z = p ? strstr(p, " size='") : NULL;
		if (z != NULL && z < e)
			changed[i] = strtoll(z + 7, NULL, 10);
	}
	free(xml);
	return found;
}

/* --- the view directory ---------------------------------------------------------- */

/* STATE_DIR/libvirt/VM, owned by QEMU's user, empty. */
static int
view_dir(struct lv *s, char *err, size_t errsz)
{
	uid_t uid = 0;
	gid_t gid = 0;
	struct stat sb;
	char *live = virDomainGetXMLDesc(s->dom, 0);
	char *top = lay_libvirt_top(s->state_dir);
	int r = 0;

	if (live == NULL) {
		free(top);
		return lv_fail(err, errsz, "cannot read the definition",
		    s->domain);
	}
	if (virt_dac_owner(live, &uid, &gid) != 0) {
		uid = 0;
		gid = 0;
	}
	free(live);
	/* QEMU must reach the directory: STATE_DIR and STATE_DIR/libvirt
	 * traversable, nothing in them readable. */
	if (stat(s->state_dir, &sb) == 0 && (sb.st_mode & 0011) != 0011 &&
	    uid != 0) {
		log_info("%s: making %s traversable (mode %o) for QEMU's user "
		    "%u", s->vm, s->state_dir, (unsigned)((sb.st_mode & 07777) |
		    0011), (unsigned)uid);
		chmod(s->state_dir, (sb.st_mode & 07777) | 0011);
	}
	if (util_mkdir_p(top, 0711) != 0 || chmod(top, 0711) != 0 ||
	    (mkdir(s->dir, 0700) != 0 && errno != EEXIST)) {
		snprintf(err, errsz, "cannot create %s: %s", s->dir,
		    strerror(errno));
		r = RD_ERR_SYSTEM;
	} else if (lstat(s->dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
		snprintf(err, errsz, "%s is not a directory", s->dir);
		r = RD_ERR_SYSTEM;
	} else if (chown(s->dir, uid, gid) != 0 || chmod(s->dir, 0700) != 0) {
		snprintf(err, errsz, "cannot give %s to QEMU's user %u: %s",
		    s->dir, (unsigned)uid, strerror(errno));
		r = RD_ERR_SYSTEM;
	}
	free(top);
	if (r != 0)
		return r;
	/* What a job of an earlier run left. */
	unlink(s->sock);
	for (size_t i = 0; i < s->ndisks; i++) {
		char *f = lay_libvirt_scratch(s->state_dir, s->vm,
		    s->disks[i].target);
		unlink(f);
		free(f);
	}
	return 0;
}

/* --- the backup job -------------------------------------------------------------- */

static char *
backup_xml(struct lv *s, const struct virt_disk *all, size_t nall)
{
	const char *ckpt = s->base_name;
	size_t cap = 1024, len = 0;
	char *x = xmalloc(cap);

#define ADD(...) do {							\
	int n_ = snprintf(x + len, cap - len, __VA_ARGS__);		\
	if ((size_t)n_ >= cap - len) {					\
		cap = (len + (size_t)n_ + 1) * 2;			\
		x = xreallocarray(x, cap, 1);				\
		snprintf(x + len, cap - len, __VA_ARGS__);		\
	}								\
	len += (size_t)n_;						\
} while (0)
	ADD("<domainbackup mode='pull'>"
	    "<server transport='unix' socket='%s'/><disks>", s->sock);
	for (size_t k = 0; k < nall; k++) {
		const struct lvdisk *d = NULL;
		for (size_t i = 0; i < s->ndisks; i++)
			if (strcmp(s->disks[i].target, all[k].target) == 0)
				d = &s->disks[i];
		if (d == NULL) {
			ADD("<disk name='%s' backup='no'/>", all[k].target);
			continue;
		}
		ADD("<disk name='%s' backup='yes' type='file' exportname='%s'",
		    d->target, d->target);
		if (d->incremental)
			ADD(" backupmode='incremental' incremental='%s'", ckpt);
		else
			ADD(" backupmode='full'");
		char *scratch = lay_libvirt_scratch(s->state_dir, s->vm,
		    d->target);
		ADD("><scratch file='%s'/></disk>", scratch);
		free(scratch);
	}
	ADD("</disks></domainbackup>");
	return x;
}

static char *
checkpoint_xml(struct lv *s, const struct virt_disk *all, size_t nall)
{
	size_t cap = 1024, len = 0;
	char *x = xmalloc(cap);
	int any = 0;

	ADD("<domaincheckpoint><name>%s</name><disks>", s->new_name);
	for (size_t k = 0; k < nall; k++) {
		const struct lvdisk *d = NULL;
		for (size_t i = 0; i < s->ndisks; i++)
			if (strcmp(s->disks[i].target, all[k].target) == 0)
				d = &s->disks[i];
		if (d != NULL && qcow2(d)) {
			ADD("<disk name='%s' checkpoint='bitmap'/>", d->target);
			any = 1;
		} else {
			ADD("<disk name='%s' checkpoint='no'/>", all[k].target);
		}
	}
	ADD("</disks></domaincheckpoint>");
#undef ADD
	if (!any) {
		free(x);
		return NULL;
	}
	return x;
}

/* End our backup job, if it still runs. */
static void
job_end(struct lv *s)
{
	if (!s->job)
		return;
	s->job = 0;
	for (size_t i = 0; i < s->ndisks; i++)
		if (s->disks[i].nbd != NULL) {
			nbd_close(s->disks[i].nbd);
			s->disks[i].nbd = NULL;
		}
	if (s->dom != NULL && virDomainAbortJob(s->dom) != 0 &&
	    virGetLastErrorCode() != VIR_ERR_OPERATION_INVALID)
		log_warnx("%s: cannot end the backup job of domain %s: %s",
		    s->vm, s->domain, virt_last_error());
}

/* A backup job of ours left by an earlier run (replicad killed) holds
 * the domain: end it.  Another one's job is left alone (the cut fails
 * with libvirt's reason). */
static void
job_sweep(struct lv *s)
{
	char *x = virDomainBackupGetXMLDesc(s->dom, 0);
	if (x == NULL)
		return;
	if (strstr(x, s->sock) != NULL) {
		log_info("%s: ending a backup job of domain %s left by an "
		    "earlier run", s->vm, s->domain);
		s->job = 1;
		job_end(s);
	}
	free(x);
}

static int
export_open(struct lv *s, struct lvdisk *d, char *err, size_t errsz)
{
	char ctx[128];
	int r;

	snprintf(ctx, sizeof(ctx), "qemu:dirty-bitmap:backup-%s", d->target);
	if ((d->nbd = nbd_create()) == NULL) {
		snprintf(err, errsz, "libnbd: %s", nbd_get_error());
		return RD_ERR_SYSTEM;
	}
	if (nbd_set_export_name(d->nbd, d->target) == -1 ||
	    (d->incremental && nbd_add_meta_context(d->nbd, ctx) == -1) ||
	    nbd_aio_connect_unix(d->nbd, s->sock) == -1) {
		snprintf(err, errsz, "NBD connection to %s: %s", s->sock,
		    nbd_get_error());
		return RD_ERR_PEER;
	}
	if ((r = nbdv_wait(d->nbd, 0, "connection", d->target, err,
	    errsz)) != 0)
		return r;
	if (!nbd_aio_is_ready(d->nbd)) {
		snprintf(err, errsz, "NBD export %s of domain %s: %s",
		    d->target, s->domain, nbd_get_error() ? nbd_get_error() :
		    "refused");
		return RD_ERR_PEER;
	}
	if (d->incremental && nbd_can_meta_context(d->nbd, ctx) != 1) {
		snprintf(err, errsz, "the export of %s offers no %s",
		    d->target, ctx);
		return RD_ERR_PEER;
	}
	int64_t size = nbd_get_size(d->nbd);
	if (size < 0) {
		snprintf(err, errsz, "NBD export %s: %s", d->target,
		    nbd_get_error());
		return RD_ERR_PEER;
	}
	d->size = (uint64_t)size;
	return 0;
}

/* Begin the backup; with broken chains, once more with whole disks. */
static int
backup_begin(struct lv *s, char *err, size_t errsz)
{
	struct virt_disk *all = NULL;
	size_t nall = 0;
	char *live = virDomainGetXMLDesc(s->dom, 0);
	int r;

	if (live == NULL)
		return lv_fail(err, errsz, "cannot read the definition",
		    s->domain);
	r = virt_disks(live, &all, &nall, err, errsz);
	free(live);
	if (r != 0)
		return r;
	for (int attempt = 0; attempt < 2; attempt++) {
		char *bx = backup_xml(s, all, nall);
		char *cx = checkpoint_xml(s, all, nall);
		int ok = virDomainBackupBegin(s->dom, bx, cx, 0) == 0;
		free(bx);
		free(cx);
		if (ok) {
			s->job = 1;
			s->made_ckpt = cx != NULL;
			break;
		}
		int any_incr = 0;
		for (size_t i = 0; i < s->ndisks; i++)
			any_incr |= s->disks[i].incremental;
		if (attempt == 0 && any_incr) {
			log_warnx("%s: cycle %" PRIu64 ": the checkpoint chain "
			    "of domain %s is broken (%s): the disks are "
			    "compared whole", s->vm, s->cycle, s->domain,
			    virt_last_error());
			for (size_t i = 0; i < s->ndisks; i++)
				s->disks[i].incremental = 0;
			/* A checkpoint that libvirt does not know any more
			 * is no base. */
			if (ckpt_delete(s, s->base_name, err, errsz) != 0)
				log_warnx("%s: %s", s->vm, err);
			s->base = 0;
			s->base_name[0] = '\0';
			continue;
		}
		snprintf(err, errsz, "cannot begin a backup of domain %s: %s",
		    s->domain, virt_last_error());
		r = RD_ERR_PEER;
		break;
	}
	virt_disks_free(all, nall);
	return r;
}

/* --- a shut-off domain's images ------------------------------------------------- */

static int
stat_sig(const char *file, struct imgsig *g)
{
	struct stat sb;
	if (stat(file, &sb) != 0)
		return -1;
	g->dev = (uint64_t)sb.st_dev;
	g->ino = (uint64_t)sb.st_ino;
	g->size = (uint64_t)sb.st_size;
	g->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 +
	    sb.st_mtim.tv_nsec;
	g->ctime_ns = (int64_t)sb.st_ctim.tv_sec * 1000000000 +
	    sb.st_ctim.tv_nsec;
	return 0;
}

static int
same_sig(const struct imgsig *a, const struct imgsig *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	    a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

/*
 * qemu-nbd on the image, read only and without taking the image's lock
 * (the domain may still be started meanwhile: lv_read notices).  In
 * --image-opts a comma is written twice.
 */
static int
image_open(struct lv *s, struct lvdisk *d, char *err, size_t errsz)
{
	size_t n = 0;
	char *path = xmalloc(2 * strlen(d->file) + 1);
	for (const char *p = d->file; *p != '\0'; p++) {
		path[n++] = *p;
		if (*p == ',')
			path[n++] = ',';
	}
	path[n] = '\0';
	char *fmt = xasprintf("driver=%s,file.driver=file,file.filename=%s,"
	    "file.locking=off", d->format, path);
	char *argv[] = { "qemu-nbd", "--read-only", "--shared=1",
	    "--image-opts", fmt, NULL };
	int r = 0;

	free(path);
	if ((d->nbd = nbd_create()) == NULL) {
		free(fmt);
		snprintf(err, errsz, "libnbd: %s", nbd_get_error());
		return RD_ERR_SYSTEM;
	}
	if (nbd_connect_systemd_socket_activation(d->nbd, argv) == -1) {
		snprintf(err, errsz, "cannot read %s (disk %s of shut-off "
		    "domain %s) with qemu-nbd: %s", d->file, d->target,
		    s->domain, nbd_get_error());
		r = RD_ERR_SYSTEM;
	} else {
		int64_t size = nbd_get_size(d->nbd);
		if (size < 0) {
			snprintf(err, errsz, "qemu-nbd of %s: %s", d->file,
			    nbd_get_error());
			r = RD_ERR_PEER;
		} else {
			d->size = (uint64_t)size;
		}
	}
	free(fmt);
	return r;
}

/* --- the backend ------------------------------------------------------------------- */

static void
close_views(struct lv *s)
{
	for (size_t i = 0; i < s->ndisks; i++)
		if (s->disks[i].nbd != NULL) {
			nbd_close(s->disks[i].nbd);
			s->disks[i].nbd = NULL;
		}
}

static int
lv_open(const struct cfg_vm *vm, const char *state_dir, void **state,
    char *err, size_t errsz)
{
	struct lv *s = xcalloc(1, sizeof(*s));
	struct sockaddr_un sun;

	s->vm = xstrdup(vm->name);
	s->domain = xstrdup(vm->domain ? vm->domain : vm->name);
	s->uri = xstrdup(vm->libvirt_uri ? vm->libvirt_uri :
	    CONFIG_DEFAULT_LIBVIRT_URI);
	s->state_dir = xstrdup(state_dir);
	s->dir = lay_libvirt_dir(state_dir, vm->name);
	s->sock = lay_libvirt_socket(state_dir, vm->name);
	s->state_path = lay_libvirt_state(state_dir, vm->name);
	s->ndisks = vm->ndisks;
	s->disks = xcalloc(vm->ndisks, sizeof(*s->disks));
	for (size_t i = 0; i < vm->ndisks; i++)
		s->disks[i].target = xstrdup(vm->disk_names[i]);
	*state = s;
	state_load(s);
	if (strlen(s->sock) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "NBD socket path %s is longer than %zu "
		    "bytes: choose a shorter state_dir", s->sock,
		    sizeof(sun.sun_path) - 1);
		return RD_ERR_TOO_LARGE;
	}
	return 0;
}

static void
lv_abort(void *state);

static void
lv_close(void *state)
{
	struct lv *s = state;

	if (s->kind != CUT_NONE)
		lv_abort(s);
	close_views(s);
	drop_conn(s);
	for (size_t i = 0; i < s->ndisks; i++) {
		free(s->disks[i].target);
		free(s->disks[i].file);
		free(s->disks[i].format);
		free(s->disks[i].base_file);
	}
	free(s->disks);
	free(s->xml);
	free(s->vm);
	free(s->domain);
	free(s->uri);
	free(s->state_dir);
	free(s->dir);
	free(s->sock);
	free(s->state_path);
	free(s);
}

static int
lv_sizes(void *state, uint64_t *sizes, char *err, size_t errsz)
{
	struct lv *s = state;
	int r;

	if ((r = domain(s, err, errsz)) != 0)
		return r;
	for (size_t i = 0; i < s->ndisks; i++) {
		virDomainBlockInfo bi;
		if (virDomainGetBlockInfo(s->dom, s->disks[i].target, &bi,
		    0) != 0)
			return lv_fail(err, errsz, "cannot read the size of "
			    "a disk", s->domain);
		sizes[i] = bi.capacity;
	}
	return 0;
}

static int
is_active(struct lv *s, int *active, int *reason, char *err, size_t errsz)
{
	int state;
	if (virDomainGetState(s->dom, &state, reason, 0) != 0)
		return lv_fail(err, errsz, "cannot read the state", s->domain);
	*active = state != VIR_DOMAIN_SHUTOFF;
	return 0;
}

static int
cut_offline(struct lv *s, const uint64_t *since, uint64_t *sizes,
    struct trk_dirty *dirty, char *err, size_t errsz)
{
	int r;

	s->kind = CUT_OFFLINE;
	for (size_t i = 0; i < s->ndisks; i++) {
		struct lvdisk *d = &s->disks[i];
		memset(&d->cut_sig, 0, sizeof(d->cut_sig));
		if (stat_sig(d->file, &d->cut_sig) != 0) {
			snprintf(err, errsz, "disk %s of domain %s: %s: %s",
			    d->target, s->domain, d->file, strerror(errno));
			return errno == ENOENT ? RD_ERR_NOT_FOUND :
			    RD_ERR_SYSTEM;
		}
		d->cut_sig.cycle = s->cycle;
		if (since[i] != 0 && d->sig.cycle == since[i] &&
		    same_sig(&d->sig, &d->cut_sig) && d->base_file != NULL &&
		    strcmp(d->base_file, d->file) == 0) {
			/* At rest since the last shut-off cut: its size is
			 * the one the tracker has. */
			continue;
		}
		if ((r = image_open(s, d, err, errsz)) != 0)
			return r;
		sizes[i] = d->size;
		dirty[i].all = 1;
	}
	return 0;
}

static int
cut_running(struct lv *s, const uint64_t *since, uint64_t *sizes,
    struct trk_dirty *dirty, char *err, size_t errsz)
{
	int64_t changed[CFG_MAX_DISKS];
	int idle = 1, r;

	job_sweep(s);
	ckpt_sweep(s);
	int have_base = base_sizes(s, changed) == 0;
	for (size_t i = 0; i < s->ndisks; i++) {
		struct lvdisk *d = &s->disks[i];
		d->incremental = have_base && qcow2(d) && since[i] != 0 &&
		    since[i] >= s->base && d->base_file != NULL &&
		    strcmp(d->base_file, d->file) == 0;
		if (!d->incremental || changed[i] != 0)
			idle = 0;
	}
	if (idle) {
		uint64_t now[CFG_MAX_DISKS];
		if ((r = lv_sizes(s, now, err, errsz)) != 0)
			return r;
		for (size_t i = 0; i < s->ndisks; i++)
			if (now[i] != sizes[i])
				idle = 0;
		if (idle) {
			s->kind = CUT_IDLE;
			return 0;
		}
	}
	if ((r = view_dir(s, err, errsz)) != 0)
		return r;
	s->kind = CUT_BACKUP;
	if ((r = backup_begin(s, err, errsz)) != 0)
		return r;
	for (size_t i = 0; i < s->ndisks; i++) {
		struct lvdisk *d = &s->disks[i];
		if ((r = export_open(s, d, err, errsz)) != 0)
			return r;
		sizes[i] = d->size;
		if (!d->incremental) {
			dirty[i].all = 1;
			continue;
		}
		char ctx[128];
		snprintf(ctx, sizeof(ctx), "qemu:dirty-bitmap:backup-%s",
		    d->target);
		if ((r = nbdv_dirty(d->nbd, ctx, d->size, d->target, &dirty[i],
		    err, errsz)) != 0)
			return r;
	}
	return 0;
}

static int
lv_cut(void *state, uint64_t cycle, const uint64_t *since, uint64_t *sizes,
    struct trk_dirty *dirty, char *err, size_t errsz)
{
	struct lv *s = state;
	char uuid[VIR_UUID_STRING_BUFLEN];
	int active, reason, r;

	s->cycle = cycle;
	s->made_ckpt = 0;
	ckpt_name(s->new_name, sizeof(s->new_name), cycle);
	if ((r = domain(s, err, errsz)) != 0 ||
	    (r = read_definition(s, err, errsz)) != 0 ||
	    (r = is_active(s, &active, &reason, err, errsz)) != 0)
		goto fail;
	if (s->at_rest && active) {
		/* Started since the freeze found it at rest: the point would
		 * claim a consistency it does not have. */
		s->at_rest = 0;
		snprintf(err, errsz, "domain %s started during the cut: the "
		    "cycle is taken again", s->domain);
		r = RD_ERR_BUSY;
		goto fail;
	}
	s->at_rest = 0;
	if (virDomainGetUUIDString(s->dom, uuid) != 0) {
		r = lv_fail(err, errsz, "cannot read the UUID", s->domain);
		goto fail;
	}
	if (strcmp(uuid, s->uuid) != 0) {
		/* Another domain by this name: nothing of the record holds. */
		if (s->uuid[0] != '\0' && strcmp(s->uuid, "-") != 0)
			log_warnx("%s: domain %s is another domain now (UUID %s, "
			    "was %s): its disks are compared whole", s->vm,
			    s->domain, uuid, s->uuid);
		snprintf(s->uuid, sizeof(s->uuid), "%s", uuid);
		s->base = 0;
		s->base_name[0] = '\0';
		for (size_t i = 0; i < s->ndisks; i++) {
			free(s->disks[i].base_file);
			s->disks[i].base_file = NULL;
			memset(&s->disks[i].sig, 0, sizeof(s->disks[i].sig));
		}
	}
	r = active ? cut_running(s, since, sizes, dirty, err, errsz) :
	    cut_offline(s, since, sizes, dirty, err, errsz);
	if (r == 0)
		return 0;
 fail:
	lv_abort(s);
	return r;
}

static int
lv_read(void *state, size_t disk, uint8_t *buf, size_t len, uint64_t off,
    char *err, size_t errsz)
{
	struct lv *s = state;
	struct lvdisk *d;

	if (s->kind == CUT_NONE || disk >= s->ndisks) {
		snprintf(err, errsz, "no cut to read from");
		return RD_ERR_STATE;
	}
	d = &s->disks[disk];
	if (d->nbd == NULL) {
		snprintf(err, errsz, "no view of disk %s to read from",
		    d->target);
		return RD_ERR_STATE;
	}
	if (off > d->size || len > d->size - off)
		return RD_ERR_TRUNCATED;
	int r = nbdv_pread(&d->nbd, buf, len, off, d->target, err, errsz);
	if (r == 0 && s->kind == CUT_OFFLINE) {
		/* Still at rest?  A domain started meanwhile moves it. */
		struct imgsig now;
		if (stat_sig(d->file, &now) != 0 ||
		    !same_sig(&now, &d->cut_sig)) {
			snprintf(err, errsz, "domain %s started (or %s changed) "
			    "while its disks were read: the cycle is taken "
			    "again", s->domain, d->file);
			return RD_ERR_BUSY;
		}
	}
	return r;
}

static void
lv_viewed(void *state)
{
	struct lv *s = state;

	close_views(s);
	job_end(s);
}

static int
lv_commit(void *state, uint64_t cycle, char *err, size_t errsz)
{
	struct lv *s = state;
	char old[64];

	snprintf(old, sizeof(old), "%s", s->base != 0 ? s->base_name : "");
	int r = 0;

	close_views(s);
	job_end(s);
	switch (s->kind) {
	case CUT_BACKUP:
		if (s->made_ckpt) {
			s->base = cycle;
			snprintf(s->base_name, sizeof(s->base_name), "%s",
			    s->new_name);
		} else {
			s->base = 0;	/* raw disks only: no chain */
			s->base_name[0] = '\0';
		}
		for (size_t i = 0; i < s->ndisks; i++) {
			free(s->disks[i].base_file);
			s->disks[i].base_file = xstrdup(s->disks[i].file);
		}
		break;
	case CUT_OFFLINE:
		for (size_t i = 0; i < s->ndisks; i++) {
			s->disks[i].sig = s->disks[i].cut_sig;
			s->disks[i].sig.cycle = cycle;
			/* The base checkpoint's disks are still these. */
			if (s->disks[i].base_file == NULL)
				s->disks[i].base_file =
				    xstrdup(s->disks[i].file);
		}
		break;
	case CUT_IDLE:
	case CUT_NONE:
		break;
	}
	s->kind = CUT_NONE;
	if (state_save(s) != 0) {
		snprintf(err, errsz, "cannot save %s: %s", s->state_path,
		    strerror(errno));
		s->base = 0;	/* the next cut compares whole disks */
		s->base_name[0] = '\0';
		return RD_ERR_SYSTEM;
	}
	/* Only once the new base is on record: the old checkpoint goes. */
	if (old[0] != '\0' && strcmp(old, s->base_name) != 0 &&
	    s->dom != NULL && (r = ckpt_delete(s, old, err, errsz)) != 0)
		return r;
	return 0;
}

static void
lv_abort(void *state)
{
	struct lv *s = state;
	char err[512];

	close_views(s);
	job_end(s);
	if (s->made_ckpt && s->dom != NULL) {
		/* libvirt merges its bitmap back into the base's. */
		if (ckpt_delete(s, s->new_name, err, sizeof(err)) != 0)
			log_warnx("%s: %s; removed at the next cycle", s->vm,
			    err);
	}
	s->made_ckpt = 0;
	s->at_rest = 0;
	s->kind = CUT_NONE;
}

static int
lv_check(const struct cfg_vm *vm, const char *state_dir, char *err,
    size_t errsz)
{
	struct sockaddr_un sun;
	char *sock = lay_libvirt_socket(state_dir, vm->name);
	if (strlen(sock) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "NBD socket path %s is longer than %zu "
		    "bytes: choose a shorter state_dir", sock,
		    sizeof(sun.sun_path) - 1);
		free(sock);
		return RD_ERR_TOO_LARGE;
	}
	free(sock);
	virConnectPtr c = virt_open(vm->libvirt_uri, err, errsz);
	virDomainPtr dom = NULL;
	if (c == NULL)
		return RD_ERR_PEER;
	int r = virt_lookup(c, vm->domain, &dom, err, errsz);
	if (r == 0)
		virDomainFree(dom);
	virConnectClose(c);
	return r;
}

static int
lv_freeze(void *state, unsigned timeout_s, char *err, size_t errsz)
{
	struct lv *s = state;
	int active, reason, r;

	s->frozen = 0;
	s->at_rest = 0;
	if ((r = domain(s, err, errsz)) != 0 ||
	    (r = is_active(s, &active, &reason, err, errsz)) != 0)
		return r;
	if (!active) {
		if (reason == SHUTDOWN_REASON_CLEAN) {
			s->at_rest = 1;
			return 1;
		}
		snprintf(err, errsz, "domain %s is shut off, not cleanly (it "
		    "crashed or was destroyed)", s->domain);
		return RD_ERR_STATE;
	}
	/* libvirt waits for the agent at most this long. */
	virDomainAgentSetResponseTimeout(s->dom, (int)timeout_s, 0);
	int n = virDomainFSFreeze(s->dom, NULL, 0, 0);
	if (n < 0)
		return lv_fail(err, errsz, "the guest agent cannot freeze the "
		    "file systems", s->domain);
	if (n == 0) {
		snprintf(err, errsz, "the guest agent of domain %s froze no "
		    "file system", s->domain);
		virDomainFSThaw(s->dom, NULL, 0, 0);
		return RD_ERR_STATE;
	}
	s->frozen = 1;
	return 0;
}

static void
lv_thaw(void *state)
{
	struct lv *s = state;

	if (!s->frozen || s->dom == NULL)
		return;
	s->frozen = 0;
	/* A guest left frozen stops writing: try hard. */
	for (int i = 0; i < 3; i++) {
		if (virDomainFSThaw(s->dom, NULL, 0, 0) >= 0)
			return;
		log_warnx("%s: the guest agent cannot thaw domain %s: %s", s->vm,
		    s->domain, virt_last_error());
	}
}

static const char *
lv_definition(void *state)
{
	struct lv *s = state;
	return s->xml;
}

/* The host stops being the primary: its checkpoints go (each one keeps
 * a bitmap that every guest write updates). */
static void
lv_forget(const struct cfg_vm *vm)
{
	struct lv s;
	char err[512];

	if (vm == NULL || vm->domain == NULL)
		return;
	memset(&s, 0, sizeof(s));
	s.vm = (char *)vm->name;
	s.domain = (char *)vm->domain;
	s.uri = (char *)vm->libvirt_uri;
	if (domain(&s, err, sizeof(err)) != 0) {
		log_warnx("%s: cannot remove its checkpoints: %s", vm->name, err);
		return;
	}
	s.base = 0;
	s.base_name[0] = '\0';
	ckpt_sweep(&s);
	drop_conn(&s);
}

const struct trk_backend trk_backend_libvirt = {
	.name = "libvirt",
	.frozen = 1,
	.open = lv_open,
	.close = lv_close,
	.sizes = lv_sizes,
	.cut = lv_cut,
	.read = lv_read,
	.commit = lv_commit,
	.abort = lv_abort,
	.check = lv_check,
	.forget = lv_forget,
	.viewed = lv_viewed,
	.freeze = lv_freeze,
	.thaw = lv_thaw,
	.definition = lv_definition,
};
