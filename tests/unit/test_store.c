/*
 * test_store.c — the replica's storage for one VM on real files: cycles
 * applied to the images and recorded as points, test failover rebuilding
 * older points through the undo segments, verify, abort, refusals, and
 * crash recovery from the REPLICAD_FAULT kill points, and the unplanned
 * failover's moves between points (store_rewind): back, forward, the
 * check that the images were left alone, the commit, and the recovery
 * of a move cut by a crash.
 *
 * A model (one byte array per disk and point) holds what each point must
 * contain; every check compares whole files with it.
 *
 * Crashes: fault.c reads REPLICAD_FAULT once per process (pthread_once),
 * and this process has passed fault points long before, so a plain
 * fork() would inherit "no fault".  The child therefore re-executes this
 * binary (--crash-child DIR) with REPLICAD_FAULT set, runs cycle 2 up to
 * store_cycle_commit() and is SIGKILLed at the fault point; the parent
 * then reopens the store and checks the recovery.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "digest.h"
#include "err.h"
#include "log.h"
#include "store.h"
#include "undo.h"
#include "util.h"
#include "work.h"

#define BS	65536u
#define VM	"web01"
#define NDISKS	2

/* --- the model ----------------------------------------------------------- */

struct image {
	uint8_t		*p;
	uint64_t	 size;
};

struct model {
	struct image	 disk[NDISKS];
};

static void
img_resize(struct image *im, uint64_t size)
{
	im->p = realloc(im->p, size ? size : 1);
	assert_non_null(im->p);
	if (size > im->size)
		memset(im->p + im->size, 0, size - im->size);
	im->size = size;
}

static void
model_copy(struct model *dst, const struct model *src)
{
	for (int i = 0; i < NDISKS; i++) {
		dst->disk[i].size = src->disk[i].size;
		dst->disk[i].p = malloc(src->disk[i].size ? src->disk[i].size :
		    1);
		assert_non_null(dst->disk[i].p);
		memcpy(dst->disk[i].p, src->disk[i].p, src->disk[i].size);
	}
}

static void
model_free(struct model *m)
{
	for (int i = 0; i < NDISKS; i++) {
		free(m->disk[i].p);
		m->disk[i].p = NULL;
		m->disk[i].size = 0;
	}
}

static void
block_data(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;

	for (size_t i = 0; i < len; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		p[i] = (uint8_t)(s | 1);	/* never all zero */
	}
}

/* --- cycles as data ------------------------------------------------------ */

struct op {
	uint16_t	disk;
	uint64_t	off;
	uint32_t	len;
	uint64_t	seed;	/* 0: zero extent */
};

struct cycle_def {
	uint64_t	 cycle;
	uint64_t	 sizes[NDISKS];
	const struct op	*ops;
	size_t		 nops;
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* Point 1: every block of two new disks. */
static const struct op ops1[] = {
	{ 0, 0 * BS, BS, 101 }, { 0, 1 * BS, BS, 102 },
	{ 0, 2 * BS, 2 * BS, 0 },
	{ 0, 4 * BS, BS, 104 }, { 0, 5 * BS, BS, 105 },
	{ 0, 6 * BS, BS, 106 }, { 0, 7 * BS, BS, 107 },
	{ 0, 8 * BS, 1000, 108 },
	{ 1, 0 * BS, BS, 111 }, { 1, 1 * BS, BS, 0 },
	{ 1, 2 * BS, BS, 113 }, { 1, 3 * BS, BS, 114 },
};
static const struct cycle_def cyc1 = { 1, { 8 * (uint64_t)BS + 1000,
    4 * (uint64_t)BS }, ops1, NELEM(ops1) };

/* Point 2: overwrites, data over zeros, zeros over data, disk1 grows.
 * The first put goes past disk1's old size (straight into the image);
 * the store's "replica-staging" fault fires after the 8th put. */
static const struct op ops2[] = {
	{ 1, 4 * BS, BS, 214 },
	{ 0, 0 * BS, BS, 200 }, { 0, 3 * BS, BS, 203 },
	{ 0, 5 * BS, BS, 0 }, { 0, 8 * BS, 1000, 208 },
	{ 1, 1 * BS, BS, 211 }, { 1, 3 * BS, BS, 213 },
	{ 1, 5 * BS, BS, 0 }, { 1, 6 * BS, 500, 216 },
	{ 0, 6 * BS, BS, 206 },
};
static const struct cycle_def cyc2 = { 2, { 8 * (uint64_t)BS + 1000,
    6 * (uint64_t)BS + 500 }, ops2, NELEM(ops2) };

/* Point 3: disk0 grows past its short last block, which is sent whole. */
static const struct op ops3[] = {
	{ 0, 0 * BS, BS, 300 }, { 0, 8 * BS, BS, 308 },
	{ 0, 9 * BS, BS, 309 },
	{ 1, 2 * BS, 2 * BS, 0 }, { 1, 6 * BS, 500, 316 },
};
static const struct cycle_def cyc3 = { 3, { 10 * (uint64_t)BS,
    6 * (uint64_t)BS + 500 }, ops3, NELEM(ops3) };

static void
model_apply(struct model *m, const struct cycle_def *c)
{
	for (int i = 0; i < NDISKS; i++)
		img_resize(&m->disk[i], c->sizes[i]);
	for (size_t k = 0; k < c->nops; k++) {
		const struct op *o = &c->ops[k];
		uint8_t *dst = m->disk[o->disk].p + o->off;
		if (o->seed)
			block_data(dst, o->len, o->seed);
		else
			memset(dst, 0, o->len);
	}
}

static void
fill_cycle(struct store_cycle *sc, const struct cycle_def *c)
{
	memset(sc, 0, sizeof(*sc));
	sc->cycle = c->cycle;
	sc->created_ms = 1700000000000 + (int64_t)c->cycle * 1000;
	sc->kind = c->cycle % 2;
	sc->generation = 1;
	sc->ndisks = NDISKS;
	for (int i = 0; i < NDISKS; i++)
		sc->sizes[i] = c->sizes[i];
}

static int
put_op(struct store *st, const struct op *o, char *err, size_t errsz)
{
	uint8_t *buf;
	struct digest h;
	int r;

	if (o->seed == 0)
		return store_cycle_put(st, o->disk, o->off, o->len, NULL, NULL,
		    err, errsz);
	buf = malloc(o->len);
	assert_non_null(buf);
	block_data(buf, o->len, o->seed);
	digest_block(buf, o->len, &h);
	r = store_cycle_put(st, o->disk, o->off, o->len, buf, &h, err,
	    errsz);
	free(buf);
	return r;
}

/* Begin a cycle and put all of its extents. */
static void
stage_cycle(struct store *st, const struct cycle_def *c)
{
	struct store_cycle sc;
	char err[512] = "";

	fill_cycle(&sc, c);
	if (store_cycle_begin(st, &sc, err, sizeof(err)) != 0)
		fail_msg("cycle %llu begin: %s", (unsigned long long)c->cycle,
		    err);
	for (size_t k = 0; k < c->nops; k++)
		if (put_op(st, &c->ops[k], err, sizeof(err)) != 0)
			fail_msg("cycle %llu put %zu: %s",
			    (unsigned long long)c->cycle, k, err);
}

static void
run_cycle(struct store *st, const struct cycle_def *c, struct model *m,
    struct cat_point *pt)
{
	char err[512] = "";
	int r;

	stage_cycle(st, c);
	if ((r = store_cycle_commit(st, pt, err, sizeof(err))) != 0)
		fail_msg("cycle %llu commit: %d %s",
		    (unsigned long long)c->cycle, r, err);
	assert_int_equal(pt->cycle, c->cycle);
	model_apply(m, c);
}

/* --- fixture ------------------------------------------------------------- */

struct fixture {
	char		 dir[256];
	char		 catpath[300];
	char		 storage[300];
	char		 vmdir[320];
	char		 img[NDISKS][400];
	struct catalog	*cat;
	struct store	*st;
};

static const char *disk_names[NDISKS] = { "disk0.img", "disk1.img" };

static void
fixture_paths(struct fixture *f)
{
	snprintf(f->catpath, sizeof(f->catpath), "%s/catalog.db", f->dir);
	snprintf(f->storage, sizeof(f->storage), "%s/storage", f->dir);
	snprintf(f->vmdir, sizeof(f->vmdir), "%s/%s", f->storage, VM);
	for (int i = 0; i < NDISKS; i++)
		snprintf(f->img[i], sizeof(f->img[i]), "%s/%s", f->vmdir,
		    disk_names[i]);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	struct cat_rel rel;

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/test_store.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	fixture_paths(f);
	if (cat_open(f->catpath, &f->cat) != 0)
		return -1;
	memset(&rel, 0, sizeof(rel));
	snprintf(rel.vm, sizeof(rel.vm), VM);
	rel.role = CAT_ROLE_REPLICA;
	rel.generation = 1;
	snprintf(rel.peer, sizeof(rel.peer), "primary.example");
	snprintf(rel.storage, sizeof(rel.storage), "%s", f->storage);
	rel.block_size = BS;
	rel.ndisks = NDISKS;
	for (int i = 0; i < NDISKS; i++) {
		snprintf(rel.disks[i].name, sizeof(rel.disks[i].name), "%s",
		    disk_names[i]);
		rel.disks[i].size = 0;
	}
	if (cat_rel_put(f->cat, &rel) != 0)
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	store_close(f->st);
	cat_close(f->cat);
	util_rm_rf(f->dir);
	free(f);
	return 0;
}

/* Open the store from the relationship as the catalog has it. */
static struct store *
open_store(struct fixture *f)
{
	struct cat_rel rel;
	char err[512] = "";
	int r;

	assert_int_equal(cat_rel_get(f->cat, VM, &rel), 0);
	if ((r = store_open(f->cat, &rel, &f->st, err, sizeof(err))) != 0)
		fail_msg("store_open: %d %s", r, err);
	return f->st;
}

static void
close_store(struct fixture *f)
{
	store_close(f->st);
	f->st = NULL;
}

/* --- checks -------------------------------------------------------------- */

static void
assert_file(const char *path, const struct image *want)
{
	uint8_t *got = NULL;
	size_t len = 0;

	if (util_read_file(path, (size_t)1 << 30, &got, &len) != 0)
		fail_msg("cannot read %s", path);
	if (len != want->size)
		fail_msg("%s: %zu bytes, want %llu", path, len,
		    (unsigned long long)want->size);
	for (size_t i = 0; i < len; i++)
		if (got[i] != want->p[i])
			fail_msg("%s: first difference at offset %zu (block "
			    "%zu)", path, i, i / BS);
	free(got);
}

static void
assert_images(const struct fixture *f, const struct model *m)
{
	for (int i = 0; i < NDISKS; i++)
		assert_file(f->img[i], &m->disk[i]);
}

static int
path_exists(const char *dir, const char *name)
{
	char p[600];
	struct stat sb;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &sb) == 0;
}

/* No staged cycle is left behind. */
static void
assert_staging_empty(const struct fixture *f)
{
	char dir[400];
	DIR *d;
	struct dirent *de;

	snprintf(dir, sizeof(dir), "%s/.staging", f->vmdir);
	d = opendir(dir);
	assert_non_null(d);
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..")
		    != 0)
			fail_msg("left in .staging: %s", de->d_name);
	closedir(d);
}

static void
assert_undo(const struct fixture *f, uint64_t cycle, int present)
{
	char dir[400], name[64];

	snprintf(dir, sizeof(dir), "%s/.undo", f->vmdir);
	snprintf(name, sizeof(name), "%llu.undo", (unsigned long long)cycle);
	assert_int_equal(path_exists(dir, name), present);
	snprintf(name, sizeof(name), "%llu.undo.tmp",
	    (unsigned long long)cycle);
	assert_false(path_exists(dir, name));
}

/* The point for c is recorded as id, and it is the newest. */
static void
assert_point(struct fixture *f, uint64_t id, const struct cycle_def *c)
{
	struct cat_point p;
	struct cat_rel rel;

	assert_int_equal(cat_point_get(f->cat, VM, id, &p), 0);
	assert_int_equal(p.cycle, c->cycle);
	assert_int_equal(p.created_ms, 1700000000000 + (int64_t)c->cycle *
	    1000);
	assert_int_equal(p.kind, c->cycle % 2 ? CAT_KIND_APP : CAT_KIND_CRASH);
	assert_int_equal(p.generation, 1);
	assert_int_equal(p.ndisks, NDISKS);
	uint64_t bytes = 0;
	for (size_t k = 0; k < c->nops; k++)
		bytes += c->ops[k].len;
	assert_int_equal(p.bytes, bytes);
	for (int i = 0; i < NDISKS; i++)
		assert_int_equal(p.sizes[i], c->sizes[i]);

	assert_int_equal(cat_rel_get(f->cat, VM, &rel), 0);
	assert_int_equal(rel.last_point, id);
	assert_int_equal(rel.last_cycle, c->cycle);
	for (int i = 0; i < NDISKS; i++)
		assert_int_equal(rel.disks[i].size, c->sizes[i]);
	if (f->st != NULL) {
		store_rel(f->st, &rel);
		assert_int_equal(rel.last_point, id);
		assert_int_equal(rel.last_cycle, c->cycle);
		for (int i = 0; i < NDISKS; i++)
			assert_int_equal(rel.disks[i].size, c->sizes[i]);
	}
}

static void
assert_no_point(struct fixture *f, uint64_t id, uint64_t newest)
{
	struct cat_point p;
	struct cat_rel rel;

	assert_int_equal(cat_point_get(f->cat, VM, id, &p), RD_ERR_NOT_FOUND);
	assert_int_equal(cat_rel_get(f->cat, VM, &rel), 0);
	assert_int_equal(rel.last_point, newest);
	if (f->st != NULL) {
		store_rel(f->st, &rel);
		assert_int_equal(rel.last_point, newest);
	}
}

/* store_point_definition() of point id (0: newest) is want (NULL: none). */
static void
assert_store_def(struct fixture *f, uint64_t id, const char *want)
{
	char *xml = NULL;

	if (want == NULL) {
		assert_int_equal(store_point_definition(f->st, id, &xml),
		    RD_ERR_NOT_FOUND);
		assert_null(xml);
		return;
	}
	assert_int_equal(store_point_definition(f->st, id, &xml), 0);
	assert_non_null(xml);
	assert_string_equal(xml, want);
	free(xml);
}

/* Rebuild point id into test/ and compare with want. */
static void
assert_test_copy(struct fixture *f, uint64_t id, uint64_t want_id,
    const struct model *want)
{
	char *paths[NDISKS], err[512] = "", testdir[400];
	uint64_t point = 0;
	int r;

	if ((r = store_test_failover(f->st, id, &point, paths, err,
	    sizeof(err))) != 0)
		fail_msg("test failover to %llu: %d %s",
		    (unsigned long long)id, r, err);
	assert_int_equal(point, want_id);
	assert_true(store_test_exists(f->st));
	snprintf(testdir, sizeof(testdir), "%s/test", f->vmdir);
	for (int i = 0; i < NDISKS; i++) {
		char want_path[500];
		snprintf(want_path, sizeof(want_path), "%s/%s", testdir,
		    disk_names[i]);
		assert_string_equal(paths[i], want_path);
		assert_file(paths[i], &want->disk[i]);
		free(paths[i]);
	}
}

/* Points 1, 2, 3 with their models. */
static void
three_points(struct fixture *f, struct model m[3])
{
	struct model cur = { 0 };
	struct cat_point pt;
	const struct cycle_def *defs[3] = { &cyc1, &cyc2, &cyc3 };

	open_store(f);
	for (int k = 0; k < 3; k++) {
		run_cycle(f->st, defs[k], &cur, &pt);
		assert_int_equal(pt.id, (uint64_t)k + 1);
		assert_images(f, &cur);
		model_copy(&m[k], &cur);
	}
	model_free(&cur);
}

/* --- five random points -------------------------------------------------- */

/*
 * Five points made of random cycles (fixed seed, so a failure repeats):
 * point 1 writes every block of both disks; points 2, 3 and 5 overwrite
 * random blocks with data or zeros; point 4 also grows both disks (the
 * old short last block and every new block sent).  The cycle numbers
 * have gaps so that point ids and cycles differ.
 */
#define NPTS		5
#define HIST_SEED	0x5eed2024u

static const uint64_t hist_cycles[NPTS] = { 11, 12, 14, 15, 18 };
static const uint64_t hist_sizes[NPTS][NDISKS] = {
	{ 12 * (uint64_t)BS, 6 * (uint64_t)BS + 300 },
	{ 12 * (uint64_t)BS, 6 * (uint64_t)BS + 300 },
	{ 12 * (uint64_t)BS, 6 * (uint64_t)BS + 300 },
	{ 14 * (uint64_t)BS + 4000, 9 * (uint64_t)BS + 700 },
	{ 14 * (uint64_t)BS + 4000, 9 * (uint64_t)BS + 700 },
};

struct history {
	struct cycle_def def[NPTS];
	struct op	*ops[NPTS];
	struct model	 m[NPTS];	/* the images at each point */
	uint64_t	 id[NPTS];
};

static uint64_t
rnd_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/*
 * A cycle taking disks of old sizes to new: every block if all, else
 * about one block in three, a quarter of them zeros (runs of zero blocks
 * become one extent), plus every block from the old short last block on.
 */
static void
gen_cycle(struct cycle_def *def, struct op **opsp, uint64_t cycle,
    const uint64_t *old, const uint64_t *new_sizes, int all, uint64_t *rnd)
{
	size_t n = 0, cap = 64;
	struct op *ops = malloc(cap * sizeof(*ops));

	assert_non_null(ops);
	for (uint16_t d = 0; d < NDISKS; d++) {
		uint64_t size = new_sizes[d];
		uint64_t from = old[d] / BS * BS;	/* sent whole */
		for (uint64_t off = 0; off < size; off += BS) {
			uint32_t len = size - off < BS ?
			    (uint32_t)(size - off) : BS;
			int grown = size > old[d] && off >= from;
			if (!all && !grown && rnd_next(rnd) % 3 != 0)
				continue;
			int zero = rnd_next(rnd) % 4 == 0;
			if (zero && n > 0 && ops[n - 1].seed == 0 &&
			    ops[n - 1].disk == d &&
			    ops[n - 1].off + ops[n - 1].len == off) {
				ops[n - 1].len += len;
				continue;
			}
			if (n == cap) {
				cap *= 2;
				ops = realloc(ops, cap * sizeof(*ops));
				assert_non_null(ops);
			}
			ops[n].disk = d;
			ops[n].off = off;
			ops[n].len = len;
			ops[n].seed = zero ? 0 : cycle * 1000 + n + 1;
			n++;
		}
	}
	def->cycle = cycle;
	for (int d = 0; d < NDISKS; d++)
		def->sizes[d] = new_sizes[d];
	def->ops = ops;
	def->nops = n;
	*opsp = ops;
}

static void
five_points(struct fixture *f, struct history *h)
{
	struct model cur = { 0 };
	struct cat_point pt;
	uint64_t rnd = HIST_SEED, zero[NDISKS] = { 0 };

	memset(h, 0, sizeof(*h));
	open_store(f);
	for (int k = 0; k < NPTS; k++) {
		gen_cycle(&h->def[k], &h->ops[k], hist_cycles[k],
		    k == 0 ? zero : hist_sizes[k - 1], hist_sizes[k], k == 0,
		    &rnd);
		run_cycle(f->st, &h->def[k], &cur, &pt);
		assert_images(f, &cur);
		h->id[k] = pt.id;
		model_copy(&h->m[k], &cur);
	}
	model_free(&cur);
	/* The history has what the tests rely on. */
	for (int k = 0; k < NPTS; k++)
		assert_int_equal(h->id[k], (uint64_t)k + 1);
	int zeros = 0;
	for (int k = 1; k < NPTS; k++)
		for (size_t i = 0; i < h->def[k].nops; i++)
			zeros += h->def[k].ops[i].seed == 0;
	assert_true(zeros >= 3);
}

static void
history_free(struct history *h)
{
	for (int k = 0; k < NPTS; k++) {
		free(h->ops[k]);
		model_free(&h->m[k]);
	}
}

static char *
seg_path(const struct fixture *f, const char *kind, uint64_t cycle)
{
	char *p = malloc(600);

	assert_non_null(p);
	snprintf(p, 600, "%s/.%s/%llu.%s", f->vmdir, kind,
	    (unsigned long long)cycle, kind);
	return p;
}

static int
file_exists(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0;
}

/* Names in STORAGE/VM/.redo. */
static int
redo_entries(const struct fixture *f)
{
	char dir[400];
	DIR *d;
	struct dirent *de;
	int n = 0;

	snprintf(dir, sizeof(dir), "%s/.redo", f->vmdir);
	d = opendir(dir);
	assert_non_null(d);
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..")
		    != 0)
			n++;
	closedir(d);
	return n;
}

/* The images hold point id (want), the catalog and the store say so. */
static void
assert_at(struct fixture *f, uint64_t id, const struct model *want)
{
	struct cat_rel rel;

	assert_images(f, want);
	assert_int_equal(cat_rel_get(f->cat, VM, &rel), 0);
	assert_int_equal(rel.at_point, id);
	assert_int_equal(rel.step_to, 0);
	if (f->st != NULL) {
		store_rel(f->st, &rel);
		assert_int_equal(rel.at_point, id);
		assert_int_equal(rel.step_to, 0);
	}
}

static void
rewind_ok(struct fixture *f, uint64_t target, int check_unchanged,
    uint64_t want_id, const struct model *want)
{
	char err[512] = "";
	int r;

	if ((r = store_rewind(f->st, target, check_unchanged, err,
	    sizeof(err))) != 0)
		fail_msg("rewind to %llu: %d %s", (unsigned long long)target, r,
		    err);
	assert_at(f, want_id, want);
}

/* The journal of a step under way, as a crash would leave it. */
static void
set_journal(struct fixture *f, uint64_t at, uint64_t step_to)
{
	struct cat_rel rel;

	assert_int_equal(cat_rel_get(f->cat, VM, &rel), 0);
	rel.at_point = at;
	rel.step_to = step_to;
	assert_int_equal(cat_rel_put(f->cat, &rel), 0);
}

/*
 * Part of a step's writes, as a crash would leave them: the sizes set
 * to sizes first (as undo_apply does), then garbage over the first half
 * of c's extents, within those sizes.
 */
static void
half_step(struct fixture *f, const struct cycle_def *c, const uint64_t *sizes)
{
	int fd[NDISKS];

	for (int i = 0; i < NDISKS; i++) {
		fd[i] = open(f->img[i], O_RDWR | O_CLOEXEC);
		assert_true(fd[i] >= 0);
		assert_int_equal(ftruncate(fd[i], (off_t)sizes[i]), 0);
	}
	for (size_t k = 0; k < (c->nops + 1) / 2; k++) {
		const struct op *o = &c->ops[k];
		if (o->off >= sizes[o->disk])
			continue;
		uint64_t len = sizes[o->disk] - o->off < o->len ?
		    sizes[o->disk] - o->off : o->len;
		uint8_t *junk = malloc(len);
		assert_non_null(junk);
		block_data(junk, len, 0xbad0 + k);
		assert_int_equal(util_pwrite_full(fd[o->disk], junk, len,
		    (off_t)o->off), 0);
		free(junk);
	}
	for (int i = 0; i < NDISKS; i++)
		close(fd[i]);
}

/* --- tests --------------------------------------------------------------- */

static void
test_open_empty(void **state)
{
	struct fixture *f = *state;
	struct model empty = { 0 };
	char *paths[NDISKS], err[512];
	uint64_t blocks = 99, point;
	struct cat_rel rel;
	struct stat sb;

	open_store(f);
	assert_images(f, &empty);
	assert_int_equal(stat(f->vmdir, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0700);
	store_rel(f->st, &rel);
	assert_int_equal(rel.last_point, 0);
	assert_int_equal(rel.ndisks, NDISKS);
	assert_int_equal(store_verify(f->st, &blocks, err, sizeof(err)), 0);
	assert_int_equal(blocks, 0);
	assert_false(store_test_exists(f->st));
	assert_int_equal(store_test_failover(f->st, 0, &point, paths, err,
	    sizeof(err)), RD_ERR_NOT_FOUND);
	assert_non_null(strstr(err, VM));
	assert_false(store_test_exists(f->st));
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);

	/* Opening again is harmless. */
	close_store(f);
	open_store(f);
	assert_images(f, &empty);
}

static void
test_cycles_apply(void **state)
{
	struct fixture *f = *state;
	struct model cur = { 0 };
	struct cat_point pt;
	const struct cycle_def *defs[3] = { &cyc1, &cyc2, &cyc3 };

	open_store(f);
	for (int k = 0; k < 3; k++) {
		run_cycle(f->st, defs[k], &cur, &pt);
		assert_int_equal(pt.id, (uint64_t)k + 1);
		assert_images(f, &cur);
		assert_point(f, (uint64_t)k + 1, defs[k]);
		assert_staging_empty(f);
		assert_undo(f, defs[k]->cycle, 1);
	}

	/* Reopened: nothing to recover, same images, same newest point. */
	close_store(f);
	open_store(f);
	assert_images(f, &cur);
	assert_point(f, 3, &cyc3);
	model_free(&cur);
}

static void
test_test_failover(void **state)
{
	struct fixture *f = *state;
	struct model m[3];
	char *paths[NDISKS], err[512] = "", testdir[400];
	uint64_t point = 0;

	three_points(f, m);
	snprintf(testdir, sizeof(testdir), "%s/test", f->vmdir);

	assert_test_copy(f, 1, 1, &m[0]);
	/* The images themselves stay at the newest point. */
	assert_images(f, &m[2]);

	/* A second test failover is refused while the copy exists, and
	 * leaves it alone. */
	assert_int_equal(store_test_failover(f->st, 2, &point, paths, err,
	    sizeof(err)), RD_ERR_EXISTS);
	assert_non_null(strstr(err, testdir));
	for (int i = 0; i < NDISKS; i++)
		assert_null(paths[i]);
	for (int i = 0; i < NDISKS; i++) {
		char p[500];
		snprintf(p, sizeof(p), "%s/%s", testdir, disk_names[i]);
		assert_file(p, &m[0].disk[i]);
	}

	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	assert_false(store_test_exists(f->st));
	assert_false(path_exists(f->vmdir, "test"));
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);

	assert_test_copy(f, 2, 2, &m[1]);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	assert_test_copy(f, 3, 3, &m[2]);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	assert_test_copy(f, 0, 3, &m[2]);	/* 0: the newest */
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);

	/* No such point: refused, nothing left behind. */
	assert_int_equal(store_test_failover(f->st, 4, &point, paths, err,
	    sizeof(err)), RD_ERR_NOT_FOUND);
	assert_false(store_test_exists(f->st));

	/* After a restart the same. */
	close_store(f);
	open_store(f);
	assert_test_copy(f, 1, 1, &m[0]);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	assert_images(f, &m[2]);
	for (int k = 0; k < 3; k++)
		model_free(&m[k]);
}

static void
test_verify(void **state)
{
	struct fixture *f = *state;
	struct model m[3];
	char err[512] = "";
	uint64_t blocks = 0;
	int fd;
	uint8_t b;

	three_points(f, m);
	if (store_verify(f->st, &blocks, err, sizeof(err)) != 0)
		fail_msg("verify: %s", err);
	assert_int_equal(blocks, 10 + 7);

	/* One byte of disk1's block 4 changes behind the store's back. */
	fd = open(f->img[1], O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(util_pread_full(fd, &b, 1, 4 * BS + 17), 0);
	b ^= 0x01;
	assert_int_equal(util_pwrite_full(fd, &b, 1, 4 * BS + 17), 0);
	err[0] = '\0';
	assert_int_equal(store_verify(f->st, &blocks, err, sizeof(err)),
	    RD_ERR_HASH);
	assert_non_null(strstr(err, "disk1.img"));
	assert_non_null(strstr(err, "block 4 "));
	b ^= 0x01;
	assert_int_equal(util_pwrite_full(fd, &b, 1, 4 * BS + 17), 0);
	close(fd);
	assert_int_equal(store_verify(f->st, &blocks, err, sizeof(err)), 0);

	/* The short last block of disk1 too. */
	fd = open(f->img[1], O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(util_pwrite_full(fd, "\x42", 1, 6 * BS + 499), 0);
	close(fd);
	err[0] = '\0';
	assert_int_equal(store_verify(f->st, &blocks, err, sizeof(err)),
	    RD_ERR_HASH);
	assert_non_null(strstr(err, "block 6 "));
	for (int k = 0; k < 3; k++)
		model_free(&m[k]);
}

/*
 * The definition a cycle carries is recorded with its point, a cycle
 * without one gives its point the previous point's, and dropping points
 * keeps those of the points left.  An abandoned cycle's definition goes
 * with it: the next cycle does not pick it up.
 */
static void
test_definitions(void **state)
{
	struct fixture *f = *state;
	static const char def_a[] = "<domain><name>web01</name></domain>";
	static const char def_b[] = "<domain><name>web01</name>"
	    "<vcpu>4</vcpu></domain>";
	struct model cur = { 0 };
	struct cat_point pt;
	char err[512] = "", dir[400];
	uint64_t freed;

	open_store(f);
	assert_store_def(f, 0, NULL);		/* no point yet */
	run_cycle(f->st, &cyc1, &cur, &pt);
	assert_store_def(f, 0, NULL);		/* a point without one */
	assert_string_equal(pt.definition, "");

	stage_cycle(f->st, &cyc2);
	assert_int_equal(store_cycle_definition(f->st, def_a, strlen(def_a),
	    err, sizeof(err)), 0);
	/* Given twice, the last one counts. */
	assert_int_equal(store_cycle_definition(f->st, def_b, strlen(def_b),
	    err, sizeof(err)), 0);
	assert_int_equal(store_cycle_definition(f->st, "a\0b", 3, err,
	    sizeof(err)), RD_ERR_INVALID);
	assert_int_equal(store_cycle_commit(f->st, &pt, err, sizeof(err)), 0);
	model_apply(&cur, &cyc2);
	assert_int_equal(pt.id, 2);
	assert_int_equal(strlen(pt.definition), CAT_DEF_ID_LEN);
	assert_store_def(f, 2, def_b);
	assert_store_def(f, 0, def_b);
	assert_staging_empty(f);

	/* An abandoned cycle with a definition leaves nothing behind. */
	stage_cycle(f->st, &cyc3);
	assert_int_equal(store_cycle_definition(f->st, def_a, strlen(def_a),
	    err, sizeof(err)), 0);
	store_cycle_abort(f->st);
	assert_staging_empty(f);
	/* Outside a cycle there is nothing to attach it to. */
	assert_int_equal(store_cycle_definition(f->st, def_a, strlen(def_a),
	    err, sizeof(err)), RD_ERR_INVALID);
	/* A stale staged definition (left by a crash) is not taken for the
	 * next cycle's. */
	snprintf(dir, sizeof(dir), "%s/.staging/definition", f->vmdir);
	assert_int_equal(util_write_atomic(dir, def_a, strlen(def_a)), 0);
	run_cycle(f->st, &cyc3, &cur, &pt);
	assert_int_equal(pt.id, 3);
	assert_store_def(f, 3, def_b);		/* inherited */
	assert_store_def(f, 0, def_b);
	assert_staging_empty(f);

	/* Point 2, where def_b came, is merged away: 3 keeps it. */
	assert_int_equal(store_drop_point(f->st, 2, &freed, err, sizeof(err)),
	    0);
	assert_store_def(f, 3, def_b);
	assert_store_def(f, 1, NULL);
	assert_store_def(f, 2, NULL);		/* gone */
	assert_images(f, &cur);

	/* Reopened: the same. */
	close_store(f);
	open_store(f);
	assert_store_def(f, 0, def_b);
	model_free(&cur);
}

static void
test_abort(void **state)
{
	struct fixture *f = *state;
	struct model m1 = { 0 }, cur = { 0 };
	struct cat_point pt;
	char err[512] = "";
	static const struct op grow_ops[] = {
		{ 0, 0 * BS, BS, 900 },		/* staged */
		{ 0, 10 * BS, BS, 910 },	/* past the old size: direct */
		{ 0, 8 * BS, 1000, 908 },	/* the short last block */
		{ 0, 1 * BS, BS, 0 },		/* zeros over data */
		{ 1, 2 * BS, BS, 902 },
	};
	static const struct cycle_def grow = { 2, { 12 * (uint64_t)BS,
	    4 * (uint64_t)BS }, grow_ops, NELEM(grow_ops) };

	open_store(f);
	run_cycle(f->st, &cyc1, &cur, &pt);
	model_copy(&m1, &cur);

	stage_cycle(f->st, &grow);
	store_cycle_abort(f->st);
	assert_images(f, &m1);		/* incl. the direct write cut off */
	assert_no_point(f, 2, 1);
	assert_staging_empty(f);
	assert_undo(f, 2, 0);
	assert_int_equal(store_cycle_commit(f->st, &pt, err, sizeof(err)),
	    RD_ERR_STATE);
	store_cycle_abort(f->st);	/* twice is harmless */
	assert_images(f, &m1);

	/* A new begin abandons a cycle left open. */
	stage_cycle(f->st, &grow);
	run_cycle(f->st, &cyc2, &cur, &pt);
	assert_int_equal(pt.id, 2);
	assert_images(f, &cur);
	assert_point(f, 2, &cyc2);

	/* Closing the store with a cycle open abandons it. */
	struct model m2;
	model_copy(&m2, &cur);
	static const struct op ops[] = { { 1, 7 * BS, BS, 777 },
	    { 1, 0, BS, 778 } };
	static const struct cycle_def c3 = { 3, { 8 * (uint64_t)BS + 1000,
	    8 * (uint64_t)BS }, ops, NELEM(ops) };
	stage_cycle(f->st, &c3);
	close_store(f);
	assert_images(f, &m2);
	open_store(f);
	assert_images(f, &m2);
	assert_no_point(f, 3, 2);
	assert_int_equal(store_verify(f->st, &(uint64_t){ 0 }, err,
	    sizeof(err)), 0);

	/* The aborted cycle's id can be used again. */
	run_cycle(f->st, &cyc3, &cur, &pt);
	assert_int_equal(pt.id, 3);
	assert_images(f, &cur);
	assert_test_copy(f, 1, 1, &m1);
	model_free(&m1);
	model_free(&m2);
	model_free(&cur);
}

static void
test_refusals(void **state)
{
	struct fixture *f = *state;
	struct model cur = { 0 }, m1;
	struct store_cycle sc;
	struct cat_point pt;
	struct digest h;
	uint8_t buf[BS];
	char err[512];
	int r;

	open_store(f);
	err[0] = '\0';
	assert_int_equal(store_cycle_put(f->st, 0, 0, BS, buf, &h, err,
	    sizeof(err)), RD_ERR_RANGE);		/* no cycle open */
	assert_int_equal(store_cycle_commit(f->st, &pt, err, sizeof(err)),
	    RD_ERR_STATE);
	run_cycle(f->st, &cyc1, &cur, &pt);
	model_copy(&m1, &cur);

	/* Not newer than the last applied cycle. */
	fill_cycle(&sc, &cyc2);
	sc.cycle = 1;
	err[0] = '\0';
	assert_int_equal(store_cycle_begin(f->st, &sc, err, sizeof(err)),
	    RD_ERR_RANGE);
	assert_non_null(strstr(err, "cycle 1"));
	sc.cycle = 0;
	assert_int_equal(store_cycle_begin(f->st, &sc, err, sizeof(err)),
	    RD_ERR_RANGE);

	/* Disk count. */
	fill_cycle(&sc, &cyc2);
	sc.ndisks = 1;
	err[0] = '\0';
	assert_int_equal(store_cycle_begin(f->st, &sc, err, sizeof(err)),
	    RD_ERR_RANGE);
	assert_true(err[0] != '\0');
	sc.ndisks = 3;
	assert_int_equal(store_cycle_begin(f->st, &sc, err, sizeof(err)),
	    RD_ERR_RANGE);

	/* A disk smaller than at the newest point. */
	fill_cycle(&sc, &cyc2);
	sc.sizes[1] = cyc1.sizes[1] - 1;
	err[0] = '\0';
	assert_int_equal(store_cycle_begin(f->st, &sc, err, sizeof(err)),
	    RD_ERR_SHRUNK);
	assert_non_null(strstr(err, "disk1.img"));
	/* Absurdly large (either code says so). */
	fill_cycle(&sc, &cyc2);
	sc.sizes[0] = UINT64_MAX;
	err[0] = '\0';
	r = store_cycle_begin(f->st, &sc, err, sizeof(err));
	assert_true(r == RD_ERR_RANGE || r == RD_ERR_TOO_LARGE);
	assert_non_null(strstr(err, "disk0.img"));
	assert_images(f, &m1);

	/* Extents outside the cycle's disks. */
	fill_cycle(&sc, &cyc2);
	assert_int_equal(store_cycle_begin(f->st, &sc, err, sizeof(err)), 0);
	block_data(buf, BS, 5);
	digest_block(buf, BS, &h);
	uint64_t end1 = cyc2.sizes[1];		/* 6 blocks + 500 */
	assert_int_equal(store_cycle_put(f->st, 1, 6 * BS, BS, buf, &h, err,
	    sizeof(err)), RD_ERR_RANGE);	/* ends past the size */
	assert_int_equal(store_cycle_put(f->st, 1, end1 + 1, 1, buf, &h, err,
	    sizeof(err)), RD_ERR_RANGE);	/* starts past it */
	assert_int_equal(store_cycle_put(f->st, 1, UINT64_MAX - 10, 100, buf,
	    &h, err, sizeof(err)), RD_ERR_RANGE);	/* wraps */
	assert_int_equal(store_cycle_put(f->st, 1, end1, 1, NULL, NULL, err,
	    sizeof(err)), RD_ERR_RANGE);
	assert_int_equal(store_cycle_put(f->st, 2, 0, BS, buf, &h, err,
	    sizeof(err)), RD_ERR_RANGE);	/* no disk 2 */
	assert_int_equal(store_cycle_put(f->st, 0, 0, 0, buf, &h, err,
	    sizeof(err)), RD_ERR_RANGE);	/* empty */
	/* Nothing of that reached the images. */
	assert_images(f, &m1);

	/* The cycle still goes through afterwards (a new begin). */
	run_cycle(f->st, &cyc2, &cur, &pt);
	assert_int_equal(pt.id, 2);
	assert_images(f, &cur);
	assert_test_copy(f, 1, 1, &m1);
	model_free(&cur);
	model_free(&m1);
}

/*
 * A write error while applying (a full replica file system; here the
 * file size limit makes the image write at block 6 fail, and the
 * roll-back's too): the store must not use the half-written images for
 * anything else, and must finish rolling the cycle back once it can.
 */
static void
test_apply_error_rolled_back(void **state)
{
	struct fixture *f = *state;
	struct model m1 = { 0 }, cur = { 0 };
	struct cat_point pt;
	struct store_cycle sc;
	struct rlimit old, lim;
	char *paths[NDISKS], err[512] = "";
	uint64_t blocks, point;
	int r;
	static const struct op try1_ops[] = {
		{ 0, 0 * BS, BS, 600 }, { 0, 6 * BS, BS, 606 },
	};
	static const struct cycle_def try1 = { 2, { 8 * (uint64_t)BS + 1000,
	    4 * (uint64_t)BS }, try1_ops, NELEM(try1_ops) };
	static const struct op next_ops[] = {
		{ 0, 0 * BS, BS, 700 }, { 0, 2 * BS, BS, 702 },
		{ 0, 6 * BS, BS, 706 },
	};
	static const struct cycle_def c3 = { 3, { 8 * (uint64_t)BS + 1000,
	    4 * (uint64_t)BS }, next_ops, NELEM(next_ops) };

	open_store(f);
	run_cycle(f->st, &cyc1, &cur, &pt);
	model_copy(&m1, &cur);

	stage_cycle(f->st, &try1);
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 5 * BS;		/* below block 6 of disk0 */
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	r = store_cycle_commit(f->st, &pt, err, sizeof(err));
	assert_int_not_equal(r, 0);
	assert_non_null(strstr(err, "disk0.img"));
	assert_no_point(f, 2, 1);
	/* While it cannot be finished, nothing else uses the images. */
	fill_cycle(&sc, &c3);
	err[0] = '\0';
	assert_int_equal(store_cycle_begin(f->st, &sc, err, sizeof(err)),
	    RD_ERR_STATE);
	assert_true(err[0] != '\0');
	assert_int_equal(store_verify(f->st, &blocks, err, sizeof(err)),
	    RD_ERR_STATE);
	assert_int_equal(store_test_failover(f->st, 1, &point, paths, err,
	    sizeof(err)), RD_ERR_STATE);
	assert_false(store_test_exists(f->st));
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);

	/* The roll-back failed after the index was gone: the store
	 * finishes rolling back from the undo segment before anything uses
	 * the images, so the primary's retry of cycle 2 is new again. */
	if (store_verify(f->st, &blocks, err, sizeof(err)) != 0)
		fail_msg("verify after the roll-back: %s", err);
	assert_images(f, &m1);
	assert_no_point(f, 2, 1);
	assert_staging_empty(f);
	assert_undo(f, 2, 0);
	run_cycle(f->st, &try1, &cur, &pt);
	assert_int_equal(pt.cycle, 2);
	assert_images(f, &cur);
	assert_staging_empty(f);
	assert_test_copy(f, 1, 1, &m1);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);

	/* And on from there. */
	run_cycle(f->st, &c3, &cur, &pt);
	assert_int_equal(pt.id, 3);
	assert_images(f, &cur);
	assert_test_copy(f, 1, 1, &m1);
	model_free(&m1);
	model_free(&cur);
}

/* --- unplanned failover: moving between points --------------------------- */

static void
test_rewind_moves(void **state)
{
	struct fixture *f = *state;
	struct history h;

	five_points(f, &h);
	/* Not moved yet: the journal is empty. */
	assert_at(f, 0, &h.m[4]);

	/* Newest to oldest: four steps back, each keeping a redo segment. */
	rewind_ok(f, 1, 1, 1, &h.m[0]);
	for (int k = 1; k < NPTS; k++) {
		char *p = seg_path(f, "redo", h.def[k].cycle);
		if (!file_exists(p))
			fail_msg("at point 1 without %s", p);
		free(p);
	}
	/* Forward to a middle one, then the newest (0), then back. */
	rewind_ok(f, 3, 1, 3, &h.m[2]);
	rewind_ok(f, 0, 1, 5, &h.m[4]);
	rewind_ok(f, 2, 1, 2, &h.m[1]);
	/* Where it already is: nothing changes. */
	rewind_ok(f, 2, 1, 2, &h.m[1]);

	/* A restart keeps the images where they are, and the moves go on
	 * from there. */
	close_store(f);
	open_store(f);
	assert_at(f, 2, &h.m[1]);
	rewind_ok(f, 4, 1, 4, &h.m[3]);
	rewind_ok(f, 1, 0, 1, &h.m[0]);
	rewind_ok(f, 5, 0, 5, &h.m[4]);

	/* While the images are rewound (not committed), test copies are
	 * refused; committed at the newest point, nothing is dropped, and
	 * the undo segments were left alone: test failover still rebuilds
	 * every point from the newest. */
	{
		char err[512] = "";
		uint64_t pt;
		char *paths[CAT_MAX_DISKS];
		assert_int_equal(store_test_failover(f->st, h.id[0], &pt, paths,
		    err, sizeof(err)), RD_ERR_STATE);
		assert_int_equal(store_rewind_commit(f->st, NULL, err,
		    sizeof(err)), 0);
	}
	for (int k = 0; k < NPTS; k++) {
		char err[512] = "";
		assert_test_copy(f, h.id[k], h.id[k], &h.m[k]);
		assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)),
		    0);
	}
	history_free(&h);
}

static void
test_rewind_no_such_point(void **state)
{
	struct fixture *f = *state;
	struct model m[3];
	char err[512] = "";

	/* No point at all yet. */
	open_store(f);
	assert_int_equal(store_rewind(f->st, 0, 0, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);
	assert_non_null(strstr(err, VM));
	close_store(f);

	three_points(f, m);
	err[0] = '\0';
	assert_int_equal(store_rewind(f->st, 4, 1, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);
	assert_non_null(strstr(err, VM));
	assert_at(f, 0, &m[2]);
	assert_int_equal(redo_entries(f), 0);

	/* From a rewound state too. */
	rewind_ok(f, 1, 1, 1, &m[0]);
	int n = redo_entries(f);
	err[0] = '\0';
	assert_int_equal(store_rewind(f->st, 99, 1, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);
	assert_non_null(strstr(err, "99"));
	assert_at(f, 1, &m[0]);
	assert_int_equal(redo_entries(f), n);
	rewind_ok(f, 3, 1, 3, &m[2]);
	for (int k = 0; k < 3; k++)
		model_free(&m[k]);
}

/* Write one byte of disk behind the store's back; the old byte in *old. */
static void
poke(struct fixture *f, int disk, uint64_t off, uint8_t *old, uint8_t val)
{
	int fd = open(f->img[disk], O_RDWR | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(util_pread_full(fd, old, 1, (off_t)off), 0);
	assert_int_equal(util_pwrite_full(fd, &val, 1, (off_t)off), 0);
	close(fd);
}

static void
test_rewind_check_unchanged(void **state)
{
	struct fixture *f = *state;
	struct model m[3], changed;
	char err[512] = "", *redo2;
	uint8_t old;

	three_points(f, m);
	redo2 = seg_path(f, "redo", cyc2.cycle);

	/* At the newest point, never moved: a VM wrote into disk1. */
	poke(f, 1, 3 * BS + 5, &old, 0xEE);
	err[0] = '\0';
	assert_int_equal(store_rewind(f->st, 1, 1, err, sizeof(err)),
	    RD_ERR_HASH);
	assert_non_null(strstr(err, "disk1.img"));
	model_copy(&changed, &m[2]);
	changed.disk[1].p[3 * BS + 5] = 0xEE;
	assert_at(f, 0, &changed);
	assert_int_equal(redo_entries(f), 0);
	model_free(&changed);
	poke(f, 1, 3 * BS + 5, &old, old);

	/* After a rewind: the digests are those of the point moved to. */
	rewind_ok(f, 2, 1, 2, &m[1]);
	assert_false(file_exists(redo2));
	poke(f, 0, 7 * BS + 100, &old, (uint8_t)(m[1].disk[0].p[7 * BS + 100]
	    ^ 0x10));
	model_copy(&changed, &m[1]);
	changed.disk[0].p[7 * BS + 100] ^= 0x10;
	err[0] = '\0';
	assert_int_equal(store_rewind(f->st, 1, 1, err, sizeof(err)),
	    RD_ERR_HASH);
	assert_non_null(strstr(err, "disk0.img"));
	assert_at(f, 2, &changed);
	assert_false(file_exists(redo2));	/* no step begun */
	/* Forward is refused just the same. */
	err[0] = '\0';
	assert_int_equal(store_rewind(f->st, 3, 1, err, sizeof(err)),
	    RD_ERR_HASH);
	assert_non_null(strstr(err, "disk0.img"));
	assert_at(f, 2, &changed);
	model_free(&changed);

	/* A disk that grew by one byte is changed too. */
	poke(f, 0, 7 * BS + 100, &old, m[1].disk[0].p[7 * BS + 100]);
	assert_at(f, 2, &m[1]);
	int fd = open(f->img[1], O_WRONLY | O_APPEND | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(util_write_full(fd, "\x01", 1), 0);
	close(fd);
	err[0] = '\0';
	assert_int_equal(store_rewind(f->st, 1, 1, err, sizeof(err)),
	    RD_ERR_HASH);
	assert_non_null(strstr(err, "disk1.img"));
	assert_int_equal(truncate(f->img[1], (off_t)m[1].disk[1].size), 0);

	/* Put back: the moves go on, checked. */
	rewind_ok(f, 1, 1, 1, &m[0]);
	rewind_ok(f, 3, 1, 3, &m[2]);
	free(redo2);
	for (int k = 0; k < 3; k++)
		model_free(&m[k]);
}

static void
test_rewind_commit(void **state)
{
	struct fixture *f = *state;
	struct history h;
	struct cat_rel rel, got;
	struct cat_point *pts = NULL, pt;
	size_t n = 0;
	char err[512] = "";
	int r;

	five_points(f, &h);
	rewind_ok(f, 1, 1, 1, &h.m[0]);
	rewind_ok(f, 3, 1, 3, &h.m[2]);
	if ((r = store_rewind_commit(f->st, &rel, err, sizeof(err))) != 0)
		fail_msg("commit: %d %s", r, err);

	/* Point 3 is the newest now, recorded as such everywhere. */
	assert_int_equal(rel.last_point, 3);
	assert_int_equal(rel.last_cycle, h.def[2].cycle);
	assert_int_equal(rel.last_point_created_ms, 1700000000000 +
	    (int64_t)h.def[2].cycle * 1000);
	assert_int_equal(rel.at_point, 0);
	assert_int_equal(rel.step_to, 0);
	for (int i = 0; i < NDISKS; i++)
		assert_int_equal(rel.disks[i].size, hist_sizes[2][i]);
	assert_int_equal(cat_rel_get(f->cat, VM, &got), 0);
	assert_memory_equal(&got, &rel, sizeof(rel));
	store_rel(f->st, &got);
	assert_int_equal(got.last_point, 3);
	assert_int_equal(got.last_cycle, h.def[2].cycle);
	assert_int_equal(got.at_point, 0);
	for (int i = 0; i < NDISKS; i++)
		assert_int_equal(got.disks[i].size, hist_sizes[2][i]);
	assert_images(f, &h.m[2]);

	/* Points 4 and 5 are gone with their segments; no redo is left. */
	assert_int_equal(cat_point_list(f->cat, VM, &pts, &n), 0);
	assert_int_equal(n, 3);
	for (size_t k = 0; k < n; k++) {
		assert_int_equal(pts[k].id, k + 1);
		assert_int_equal(pts[k].cycle, h.def[k].cycle);
	}
	free(pts);
	for (int k = 0; k < NPTS; k++)
		assert_undo(f, h.def[k].cycle, k < 3);
	assert_int_equal(redo_entries(f), 0);
	assert_int_equal(store_rewind(f->st, 4, 0, err, sizeof(err)),
	    RD_ERR_NOT_FOUND);

	/* The older points are still there. */
	for (int k = 0; k < 3; k++) {
		assert_test_copy(f, h.id[k], h.id[k], &h.m[k]);
		assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)),
		    0);
	}
	assert_test_copy(f, 0, 3, &h.m[2]);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	if (store_verify(f->st, &(uint64_t){ 0 }, err, sizeof(err)) != 0)
		fail_msg("verify after the commit: %s", err);

	/* A restart finds nothing to roll back. */
	close_store(f);
	open_store(f);
	assert_at(f, 0, &h.m[2]);

	/* The next cycle goes on top of point 3.  It reuses the number of
	 * the dropped point 4's cycle: that cycle's undo segment must not
	 * be taken for this one's. */
	struct cycle_def next;
	struct op *next_ops;
	struct model cur;
	uint64_t rnd = HIST_SEED ^ 0x77, grow[NDISKS] = {
	    hist_sizes[2][0] + 2 * BS, hist_sizes[2][1] };
	gen_cycle(&next, &next_ops, h.def[2].cycle + 1, hist_sizes[2], grow,
	    0, &rnd);
	assert_int_equal(next.cycle, h.def[3].cycle);
	model_copy(&cur, &h.m[2]);
	run_cycle(f->st, &next, &cur, &pt);
	assert_images(f, &cur);
	assert_true(pt.id > 3);
	assert_int_equal(cat_rel_get(f->cat, VM, &got), 0);
	assert_int_equal(got.last_point, pt.id);
	assert_int_equal(got.last_cycle, next.cycle);
	assert_int_equal(cat_point_list(f->cat, VM, &pts, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(pts[3].id, pt.id);
	assert_int_equal(pts[3].cycle, next.cycle);
	for (int i = 0; i < NDISKS; i++)
		assert_int_equal(pts[3].sizes[i], grow[i]);
	free(pts);
	assert_test_copy(f, 3, 3, &h.m[2]);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	assert_test_copy(f, 1, 1, &h.m[0]);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	if (store_verify(f->st, &(uint64_t){ 0 }, err, sizeof(err)) != 0)
		fail_msg("verify after the next cycle: %s", err);
	/* And a rewind over the new point works. */
	rewind_ok(f, 2, 1, 2, &h.m[1]);
	rewind_ok(f, 0, 1, pt.id, &cur);
	model_free(&cur);
	free(next_ops);
	history_free(&h);
}

/*
 * cat_point_commit() gives "above every point there is and above the
 * newest the relationship ever recorded, so a dropped newest point's id
 * is not given out again".  After a commit at point 1 of 3, the next
 * point must therefore not be called 2 or 3 again: those names were
 * shown (and maybe written down) for other contents.
 */
static void
test_rewind_commit_ids_not_reused(void **state)
{
	struct fixture *f = *state;
	struct model m[3], cur;
	struct cat_point pt;
	char err[512] = "";
	int r;

	three_points(f, m);
	rewind_ok(f, 1, 1, 1, &m[0]);
	if ((r = store_rewind_commit(f->st, NULL, err, sizeof(err))) != 0)
		fail_msg("commit: %d %s", r, err);
	model_copy(&cur, &m[0]);
	run_cycle(f->st, &cyc2, &cur, &pt);
	assert_images(f, &m[1]);
	for (int k = 0; k < 3; k++)
		model_free(&m[k]);
	model_free(&cur);
	if (pt.id <= 3)
		fail_msg("the cycle after the commit became point %llu, an id "
		    "the dropped points had", (unsigned long long)pt.id);
}

/* A commit where the images never moved drops nothing. */
static void
test_rewind_commit_at_newest(void **state)
{
	struct fixture *f = *state;
	struct model m[3];
	struct cat_rel rel;
	char err[512] = "";

	three_points(f, m);
	assert_int_equal(store_rewind_commit(f->st, &rel, err, sizeof(err)),
	    0);
	assert_int_equal(rel.last_point, 3);
	assert_int_equal(rel.last_cycle, 3);
	assert_int_equal(rel.at_point, 0);
	assert_at(f, 0, &m[2]);
	for (int k = 0; k < 3; k++)
		assert_undo(f, (uint64_t)k + 1, 1);
	assert_test_copy(f, 1, 1, &m[0]);
	for (int k = 0; k < 3; k++)
		model_free(&m[k]);
}

/*
 * A step back from point 4 to 3 cut by a crash after its redo segment
 * was complete and part of the undo segment written (sizes cut, some
 * ranges overwritten): the next open goes back to point 4.
 */
static void
test_rewind_crash_step_back(void **state)
{
	struct fixture *f = *state;
	struct history h;
	int fd[NDISKS];
	char *upath, *rpath, rtmp[620];

	five_points(f, &h);
	rewind_ok(f, 4, 1, 4, &h.m[3]);
	close_store(f);

	upath = seg_path(f, "undo", h.def[3].cycle);
	rpath = seg_path(f, "redo", h.def[3].cycle);
	snprintf(rtmp, sizeof(rtmp), "%s.tmp", rpath);
	for (int i = 0; i < NDISKS; i++) {
		fd[i] = open(f->img[i], O_RDONLY | O_CLOEXEC);
		assert_true(fd[i] >= 0);
	}
	assert_int_equal(undo_invert(upath, fd, NDISKS, h.def[3].cycle, rpath,
	    NULL), 0);
	for (int i = 0; i < NDISKS; i++)
		close(fd[i]);
	set_journal(f, 4, 3);
	/* Point 4 grew both disks: the cut takes the tails too. */
	half_step(f, &h.def[3], hist_sizes[2]);

	open_store(f);
	assert_at(f, 4, &h.m[3]);
	assert_false(file_exists(rtmp));
	/* The redo segments of the newer point still work, and the step
	 * can be made again. */
	rewind_ok(f, 5, 1, 5, &h.m[4]);
	rewind_ok(f, 3, 1, 3, &h.m[2]);
	rewind_ok(f, 1, 1, 1, &h.m[0]);
	rewind_ok(f, 4, 1, 4, &h.m[3]);
	free(upath);
	free(rpath);
	history_free(&h);
}

/* The same from the newest point, never moved before (at_point 0). */
static void
test_rewind_crash_first_step_back(void **state)
{
	struct fixture *f = *state;
	struct history h;
	int fd[NDISKS];
	char *upath, *rpath;

	five_points(f, &h);
	close_store(f);
	upath = seg_path(f, "undo", h.def[4].cycle);
	rpath = seg_path(f, "redo", h.def[4].cycle);
	for (int i = 0; i < NDISKS; i++) {
		fd[i] = open(f->img[i], O_RDONLY | O_CLOEXEC);
		assert_true(fd[i] >= 0);
	}
	assert_int_equal(undo_invert(upath, fd, NDISKS, h.def[4].cycle, rpath,
	    NULL), 0);
	for (int i = 0; i < NDISKS; i++)
		close(fd[i]);
	set_journal(f, 5, 4);
	half_step(f, &h.def[4], hist_sizes[3]);

	open_store(f);
	assert_at(f, 5, &h.m[4]);
	rewind_ok(f, 2, 1, 2, &h.m[1]);
	rewind_ok(f, 0, 1, 5, &h.m[4]);
	free(upath);
	free(rpath);
	history_free(&h);
}

/*
 * A step forward from point 3 to 4 cut by a crash, the images grown and
 * partly overwritten: the next open goes back to point 3.
 */
static void
test_rewind_crash_step_forward(void **state)
{
	struct fixture *f = *state;
	struct history h;

	five_points(f, &h);
	rewind_ok(f, 3, 1, 3, &h.m[2]);
	close_store(f);
	set_journal(f, 3, 4);
	half_step(f, &h.def[3], hist_sizes[3]);

	open_store(f);
	assert_at(f, 3, &h.m[2]);
	/* Point 4's redo segment is intact: forward works. */
	rewind_ok(f, 4, 1, 4, &h.m[3]);
	rewind_ok(f, 5, 1, 5, &h.m[4]);
	rewind_ok(f, 1, 1, 1, &h.m[0]);
	history_free(&h);
}

/*
 * A step back cut before its redo segment was complete (only the .tmp
 * exists): the images were not touched yet; the next open leaves them
 * at point 5 and removes the temporary file.
 */
static void
test_rewind_crash_before_redo(void **state)
{
	struct fixture *f = *state;
	struct history h;
	char *rpath, rtmp[620];
	int fd;

	five_points(f, &h);
	close_store(f);
	rpath = seg_path(f, "redo", h.def[4].cycle);
	snprintf(rtmp, sizeof(rtmp), "%s.tmp", rpath);
	fd = open(rtmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(util_write_full(fd, "RDUNDOSG\0\0\0\1garbage", 20),
	    0);
	close(fd);
	set_journal(f, 5, 4);

	open_store(f);
	assert_at(f, 5, &h.m[4]);
	assert_false(file_exists(rtmp));
	assert_false(file_exists(rpath));
	rewind_ok(f, 4, 1, 4, &h.m[3]);
	rewind_ok(f, 5, 1, 5, &h.m[4]);
	free(rpath);
	history_free(&h);
}

/*
 * A step back that fails half-way without a crash (the image write hits
 * the file size limit: a full file system behaves alike): points 1-3,
 * then 4 (disk0 grows to 64 blocks, data in its last one) and 5 (the
 * first and the last block of disk0).  Undoing point 5 writes block 0,
 * then fails at block 63.  The catalog still says a step is under way.
 */
static void
fail_step_back(struct fixture *f, struct model *m4, struct model *m5)
{
	struct model m[3];
	struct cat_point pt;
	struct rlimit old, lim;
	struct cat_rel rel;
	char err[512] = "";
	int r;
	static const struct op grow_ops[] = {
		{ 0, 10 * BS, 53 * BS, 0 }, { 0, 63 * BS, BS, 463 },
	};
	static const struct cycle_def c4 = { 4, { 64 * (uint64_t)BS,
	    6 * (uint64_t)BS + 500 }, grow_ops, NELEM(grow_ops) };
	static const struct op ops5[] = {
		{ 0, 0, BS, 500 }, { 0, 63 * BS, BS, 563 },
	};
	static const struct cycle_def c5 = { 5, { 64 * (uint64_t)BS,
	    6 * (uint64_t)BS + 500 }, ops5, NELEM(ops5) };

	three_points(f, m);
	model_copy(m4, &m[2]);
	run_cycle(f->st, &c4, m4, &pt);
	model_copy(m5, m4);
	run_cycle(f->st, &c5, m5, &pt);
	assert_images(f, m5);
	for (int k = 0; k < 3; k++)
		model_free(&m[k]);

	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 32 * BS;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	r = store_rewind(f->st, 4, 0, err, sizeof(err));
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	assert_int_equal(r, RD_ERR_SYSTEM);
	assert_non_null(strstr(err, "5.undo"));
	assert_int_equal(cat_rel_get(f->cat, VM, &rel), 0);
	assert_int_equal(rel.at_point, 5);
	assert_int_equal(rel.step_to, 4);
}

/* A restart after the failed step goes back to point 5. */
static void
test_rewind_failed_step_restart(void **state)
{
	struct fixture *f = *state;
	struct model m4, m5;

	fail_step_back(f, &m4, &m5);
	close_store(f);
	open_store(f);
	assert_at(f, 5, &m5);
	rewind_ok(f, 4, 1, 4, &m4);
	rewind_ok(f, 5, 1, 5, &m5);
	model_free(&m4);
	model_free(&m5);
}

/*
 * Without a restart, the same process must not carry on as if the
 * images held a point: retrying the move back and then going forward
 * again must give the points' exact bytes.
 */
static void
test_rewind_failed_step_retried(void **state)
{
	struct fixture *f = *state;
	struct model m4, m5;
	char err[512] = "";
	int r;

	fail_step_back(f, &m4, &m5);
	r = store_rewind(f->st, 4, 0, err, sizeof(err));
	if (r == 0)
		assert_images(f, &m4);
	err[0] = '\0';
	if ((r = store_rewind(f->st, 5, 0, err, sizeof(err))) == 0) {
		uint8_t *got = NULL;
		size_t len = 0;
		assert_int_equal(util_read_file(f->img[0], 1 << 30, &got,
		    &len), 0);
		assert_int_equal(len, m5.disk[0].size);
		if (memcmp(got, m5.disk[0].p, BS) != 0)
			fail_msg("back at point 5 after a failed step, block 0 "
			    "of disk0.img holds point %s's bytes",
			    memcmp(got, m4.disk[0].p, BS) == 0 ? "4" : "no");
		free(got);
		assert_at(f, 5, &m5);
	}
	model_free(&m4);
	model_free(&m5);
}

/* Asked to stay at the point it claims after the failed step, the store
 * must not answer "done" with images between two points. */
static void
test_rewind_failed_step_stay(void **state)
{
	struct fixture *f = *state;
	struct model m4, m5;
	char err[512] = "";
	int r;

	fail_step_back(f, &m4, &m5);
	r = store_rewind(f->st, 0, 0, err, sizeof(err));
	if (r == 0) {
		uint8_t *got = NULL;
		size_t len = 0;
		assert_int_equal(util_read_file(f->img[0], 1 << 30, &got,
		    &len), 0);
		if (len != m5.disk[0].size || memcmp(got, m5.disk[0].p,
		    m5.disk[0].size) != 0)
			fail_msg("store_rewind to the newest point returned 0 "
			    "but disk0.img is not point 5 (block 0 is point "
			    "%s's)", memcmp(got, m4.disk[0].p, BS) == 0 ?
			    "4" : "5");
		free(got);
		assert_at(f, 5, &m5);
	}
	model_free(&m4);
	model_free(&m5);
}

/* --- crashes ------------------------------------------------------------- */

/* What the crashed cycle 2 carries (the child stages it). */
#define CRASH_DEF	"<domain type='kvm'><name>web01</name></domain>\n"

/*
 * The child: open everything afresh and run cycle 2 up to its commit.
 * It must not come back from store_cycle_commit().
 */
static int
crash_child(const char *dir)
{
	struct fixture f;
	struct cat_rel rel;
	struct cat_point pt;
	char err[512] = "";

	memset(&f, 0, sizeof(f));
	snprintf(f.dir, sizeof(f.dir), "%s", dir);
	fixture_paths(&f);
	if (cat_open(f.catpath, &f.cat) != 0 ||
	    cat_rel_get(f.cat, VM, &rel) != 0)
		return 10;
	if (store_open(f.cat, &rel, &f.st, err, sizeof(err)) != 0)
		return 11;
	stage_cycle(f.st, &cyc2);
	if (store_cycle_definition(f.st, CRASH_DEF, strlen(CRASH_DEF), err,
	    sizeof(err)) != 0)
		return 13;
	store_cycle_commit(f.st, &pt, err, sizeof(err));
	return 12;
}

static char *self_exe;

/* Run the child with REPLICAD_FAULT=fault; it must die of SIGKILL. */
static void
crash_at(struct fixture *f, const char *fault)
{
	int status;
	pid_t pid;

	/* Nothing of ours is open across the crash. */
	close_store(f);
	cat_close(f->cat);
	f->cat = NULL;
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *argv[] = { self_exe, "--crash-child", f->dir, NULL };
		setenv("REPLICAD_FAULT", fault, 1);
		execv(self_exe, argv);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
		fail_msg("child for fault %s: %s %d", fault,
		    WIFSIGNALED(status) ? "signal" : "exit",
		    WIFSIGNALED(status) ? WTERMSIG(status) :
		    WEXITSTATUS(status));
	assert_int_equal(cat_open(f->catpath, &f->cat), 0);
}

/* Point 1 by the parent, then cycle 2 crashed at fault. */
static void
crash_setup(struct fixture *f, const char *fault, struct model *m1,
    struct model *m2)
{
	struct model cur = { 0 };
	struct cat_point pt;

	open_store(f);
	run_cycle(f->st, &cyc1, &cur, &pt);
	model_copy(m1, &cur);
	model_apply(&cur, &cyc2);
	model_copy(m2, &cur);
	model_free(&cur);
	crash_at(f, fault);
}

static void
roll_forward(void **state, const char *fault, int index_expected)
{
	struct fixture *f = *state;
	struct model m1, m2;
	char err[512] = "", dir[400];
	uint64_t blocks;

	crash_setup(f, fault, &m1, &m2);
	snprintf(dir, sizeof(dir), "%s/.staging", f->vmdir);
	/* The child got as far as the complete index. */
	assert_int_equal(path_exists(dir, "index"), index_expected);

	open_store(f);
	assert_images(f, &m2);
	assert_point(f, 2, &cyc2);
	assert_staging_empty(f);
	assert_undo(f, 2, 1);
	/* The definition came through the crash with its point. */
	assert_store_def(f, 2, CRASH_DEF);
	assert_store_def(f, 1, NULL);
	if (store_verify(f->st, &blocks, err, sizeof(err)) != 0)
		fail_msg("verify after recovery: %s", err);
	/* The undo segment holds point 1's bytes, not half-applied ones. */
	assert_test_copy(f, 1, 1, &m1);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);

	/* And replication goes on. */
	struct model cur;
	struct cat_point pt;
	model_copy(&cur, &m2);
	run_cycle(f->st, &cyc3, &cur, &pt);
	assert_int_equal(pt.id, 3);
	assert_images(f, &cur);
	assert_store_def(f, 3, CRASH_DEF);
	assert_test_copy(f, 2, 2, &m2);
	model_free(&cur);
	model_free(&m1);
	model_free(&m2);
}

static void
test_crash_after_index(void **state)
{
	roll_forward(state, "replica-after-index", 1);
}

static void
test_crash_after_undo(void **state)
{
	roll_forward(state, "replica-after-undo", 1);
}

static void
test_crash_mid_apply(void **state)
{
	roll_forward(state, "replica-mid-apply", 1);
}

static void
test_crash_before_catalog(void **state)
{
	roll_forward(state, "replica-before-catalog", 1);
}

static void
test_crash_after_catalog(void **state)
{
	roll_forward(state, "replica-after-catalog", 1);
}

/* Digests written, the staging not removed yet: the index names the
 * newest point's cycle; its digests are written again, it goes. */
static void
test_crash_after_digests(void **state)
{
	roll_forward(state, "replica-after-digests", 1);
}

static void
test_crash_while_staging(void **state)
{
	struct fixture *f = *state;
	struct model m1, m2, cur;
	struct cat_point pt;
	char err[512] = "", dir[400];

	crash_setup(f, "replica-staging", &m1, &m2);
	snprintf(dir, sizeof(dir), "%s/.staging", f->vmdir);
	assert_false(path_exists(dir, "index"));
	/* The direct write past disk1's old size did reach the image. */
	struct stat sb;
	assert_int_equal(stat(f->img[1], &sb), 0);
	assert_true((uint64_t)sb.st_size > m1.disk[1].size);

	open_store(f);
	assert_images(f, &m1);		/* cut back to point 1 */
	assert_no_point(f, 2, 1);
	assert_staging_empty(f);
	assert_undo(f, 2, 0);
	assert_store_def(f, 0, NULL);
	assert_int_equal(store_verify(f->st, &(uint64_t){ 0 }, err,
	    sizeof(err)), 0);

	/* The primary sends cycle 2 again (its definition was not
	 * acknowledged, so it comes again too). */
	model_copy(&cur, &m1);
	stage_cycle(f->st, &cyc2);
	assert_int_equal(store_cycle_definition(f->st, CRASH_DEF,
	    strlen(CRASH_DEF), err, sizeof(err)), 0);
	assert_int_equal(store_cycle_commit(f->st, &pt, err, sizeof(err)), 0);
	model_apply(&cur, &cyc2);
	assert_int_equal(pt.id, 2);
	assert_images(f, &m2);
	assert_store_def(f, 0, CRASH_DEF);
	assert_test_copy(f, 1, 1, &m1);
	model_free(&cur);
	model_free(&m1);
	model_free(&m2);
}

/*
 * Staged data damaged on disk between the crash and the restart (the
 * hash check before writing exists for this).  The cycle cannot be
 * finished; the images must still be exactly point 1 (R1: never a half
 * applied point), whatever store_open() answers.
 */
static void
test_crash_then_bad_staged_data(void **state)
{
	struct fixture *f = *state;
	struct model m1, m2;
	struct cat_rel rel;
	char err[512] = "", data[400];
	int fd, r;
	struct stat sb;

	crash_setup(f, "replica-after-index", &m1, &m2);
	/* Damage the last byte of staged data: the last staged extent. */
	snprintf(data, sizeof(data), "%s/.staging/data", f->vmdir);
	fd = open(data, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	assert_true(sb.st_size > 0);
	uint8_t b;
	assert_int_equal(util_pread_full(fd, &b, 1, sb.st_size - 1), 0);
	b ^= 0x80;
	assert_int_equal(util_pwrite_full(fd, &b, 1, sb.st_size - 1), 0);
	close(fd);

	assert_int_equal(cat_rel_get(f->cat, VM, &rel), 0);
	r = store_open(f->cat, &rel, &f->st, err, sizeof(err));
	assert_no_point(f, 2, 1);
	/* Staged extents before the damaged one must not be in the images. */
	int bad = -1;
	for (int i = 0; i < NDISKS && bad < 0; i++) {
		struct image im = m1.disk[i];
		uint8_t *got;
		size_t len;
		assert_int_equal(util_read_file(f->img[i], 1 << 30, &got,
		    &len), 0);
		if (len < im.size || memcmp(got, im.p, im.size) != 0)
			bad = i;
		free(got);
	}
	model_free(&m1);
	model_free(&m2);
	if (bad >= 0)
		fail_msg("store_open returned %d (%s) and %s no longer holds "
		    "point 1 within its old size", r, err, disk_names[bad]);
}

/*
 * A crash once the images hold point 2 and its digests are written, but
 * before the catalog has the point; then the staged data is damaged
 * while the host is down.  The images are point 2 already and the
 * digests describe it: recovery must finish point 2 (it needs no staged
 * data), not roll the images back under digests of a dropped cycle
 * (verify would then fail, and a resync would "repair" point 1's blocks
 * with cycle 2's content, no undo kept).
 */
static void
test_crash_before_catalog_bad_staged_data(void **state)
{
	struct fixture *f = *state;
	struct model m1, m2;
	char err[512] = "", data[400];
	uint64_t blocks;
	struct stat sb;

	crash_setup(f, "replica-before-catalog", &m1, &m2);
	snprintf(data, sizeof(data), "%s/.staging/data", f->vmdir);
	int fd = open(data, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	uint8_t b;
	assert_int_equal(util_pread_full(fd, &b, 1, sb.st_size - 1), 0);
	b ^= 0x80;
	assert_int_equal(util_pwrite_full(fd, &b, 1, sb.st_size - 1), 0);
	close(fd);

	open_store(f);
	if (store_verify(f->st, &blocks, err, sizeof(err)) != 0)
		fail_msg("verify after recovery: %s", err);
	assert_images(f, &m2);
	assert_point(f, 2, &cyc2);
	assert_staging_empty(f);
	assert_test_copy(f, 1, 1, &m1);
	assert_int_equal(store_test_cleanup(f->st, err, sizeof(err)), 0);
	model_free(&m1);
	model_free(&m2);
}

/*
 * The staged data is never synced: a host crash may lose it, and the
 * blocks written past the old sizes, after the images were half written
 * (mid-apply).  The cycle is rolled back with its undo segment: the
 * images are exactly point 1 again, and verify agrees.
 */
static void
test_crash_mid_apply_staged_data_lost(void **state)
{
	struct fixture *f = *state;
	struct model m1, m2;
	char err[512] = "", data[400];
	uint64_t blocks;

	crash_setup(f, "replica-mid-apply", &m1, &m2);
	snprintf(data, sizeof(data), "%s/.staging/data", f->vmdir);
	assert_int_equal(truncate(data, 0), 0);
	/* disk1 grew: its first block past the old size went straight in */
	assert_int_equal(truncate(f->img[1], 4 * (uint64_t)BS), 0);

	open_store(f);
	assert_no_point(f, 2, 1);
	assert_images(f, &m1);
	assert_staging_empty(f);
	assert_undo(f, 2, 0);
	if (store_verify(f->st, &blocks, err, sizeof(err)) != 0)
		fail_msg("verify after recovery: %s", err);
	model_free(&m1);
	model_free(&m2);
}

/* --- empty cycles ------------------------------------------------------- */

/*
 * Points of cycles that change nothing among data points: 1 = cyc1,
 * 2 = empty, 3 = cyc2's changes, 4 and 5 = empty, 6 = cyc3's changes,
 * 7 = empty.  An empty cycle leaves no staging, no undo segment (the
 * catalog records none), and every reader of segments steps over its
 * point: test copies, drops of every kind of neighbour (empty j, empty
 * k, both), a rewind through them, recovery at the next open, verify.
 */
static const struct cycle_def ecyc[7] = {
	{ 1, { 8 * (uint64_t)BS + 1000, 4 * (uint64_t)BS }, ops1,
	    NELEM(ops1) },
	{ 10, { 8 * (uint64_t)BS + 1000, 4 * (uint64_t)BS }, NULL, 0 },
	{ 11, { 8 * (uint64_t)BS + 1000, 6 * (uint64_t)BS + 500 }, ops2,
	    NELEM(ops2) },
	{ 12, { 8 * (uint64_t)BS + 1000, 6 * (uint64_t)BS + 500 }, NULL, 0 },
	{ 13, { 8 * (uint64_t)BS + 1000, 6 * (uint64_t)BS + 500 }, NULL, 0 },
	{ 14, { 10 * (uint64_t)BS, 6 * (uint64_t)BS + 500 }, ops3,
	    NELEM(ops3) },
	{ 15, { 10 * (uint64_t)BS, 6 * (uint64_t)BS + 500 }, NULL, 0 },
};

static void
copy_and_clean(struct fixture *f, uint64_t id, const struct model *want)
{
	char err[512] = "";

	assert_test_copy(f, id, id, want);
	if (store_test_cleanup(f->st, err, sizeof(err)) != 0)
		fail_msg("test cleanup: %s", err);
}

static void
drop_ok(struct fixture *f, uint64_t id)
{
	char err[512] = "";
	uint64_t freed;

	if (store_drop_point(f->st, id, &freed, err, sizeof(err)) != 0)
		fail_msg("drop %llu: %s", (unsigned long long)id, err);
}

static void
verify_ok(struct fixture *f)
{
	char err[512] = "";
	uint64_t blocks;

	if (store_verify(f->st, &blocks, err, sizeof(err)) != 0)
		fail_msg("verify: %s", err);
}

static void
test_empty_cycles(void **state)
{
	struct fixture *f = *state;
	struct model cur = { 0 }, m[7];
	struct cat_point pt, got;

	open_store(f);
	for (int k = 0; k < 7; k++) {
		run_cycle(f->st, &ecyc[k], &cur, &pt);
		assert_int_equal(pt.id, (uint64_t)k + 1);
		assert_point(f, pt.id, &ecyc[k]);
		assert_images(f, &cur);
		assert_staging_empty(f);
		assert_int_equal(cat_point_get(f->cat, VM, pt.id, &got), 0);
		if (ecyc[k].nops == 0) {
			assert_int_equal(got.seg, CAT_SEG_NONE);
			assert_int_equal(got.undo_bytes, 0);
			assert_undo(f, ecyc[k].cycle, 0);
		} else {
			assert_int_not_equal(got.seg, CAT_SEG_NONE);
		}
		model_copy(&m[k], &cur);
	}
	verify_ok(f);
	for (uint64_t id = 1; id <= 7; id++)
		copy_and_clean(f, id, &m[id - 1]);

	/* The next open finds nothing to recover. */
	close_store(f);
	open_store(f);
	assert_images(f, &m[6]);
	verify_ok(f);

	drop_ok(f, 4);		/* empty, before an empty one */
	copy_and_clean(f, 5, &m[4]);
	copy_and_clean(f, 3, &m[2]);
	drop_ok(f, 3);		/* data, before an empty one: merged */
	copy_and_clean(f, 5, &m[4]);
	copy_and_clean(f, 2, &m[1]);
	drop_ok(f, 2);		/* empty, before one with data */
	copy_and_clean(f, 5, &m[4]);
	copy_and_clean(f, 1, &m[0]);
	drop_ok(f, 6);		/* data, before the newest, empty */
	copy_and_clean(f, 7, &m[6]);
	copy_and_clean(f, 5, &m[4]);
	copy_and_clean(f, 1, &m[0]);
	verify_ok(f);

	/* A rewind through them and back, then committed. */
	rewind_ok(f, 1, 1, 1, &m[0]);
	rewind_ok(f, 5, 1, 5, &m[4]);
	char err[512] = "";
	struct cat_rel rel;
	if (store_rewind_commit(f->st, &rel, err, sizeof(err)) != 0)
		fail_msg("rewind commit: %s", err);
	assert_int_equal(rel.last_point, 5);
	assert_images(f, &m[4]);
	verify_ok(f);
	copy_and_clean(f, 1, &m[0]);
	close_store(f);
	open_store(f);
	assert_images(f, &m[4]);
	for (int k = 0; k < 7; k++)
		model_free(&m[k]);
	model_free(&cur);
}

/* At shutdown (work_cancel()) verify and a test copy, long jobs, stop
 * between chunks instead of reading or copying whole disks first; a
 * cancelled test copy leaves nothing behind.  Last: the flag stays set. */
static void
test_long_jobs_cancelled(void **state)
{
	struct fixture *f = *state;
	struct model m[3];
	char *paths[NDISKS], err[512] = "";
	uint64_t point = 0, blocks = 0;

	three_points(f, m);
	work_cancel();
	assert_int_equal(store_verify(f->st, &blocks, err, sizeof(err)),
	    RD_ERR_CANCELLED);
	assert_non_null(strstr(err, "cancelled"));
	err[0] = '\0';
	assert_int_equal(store_test_failover(f->st, 1, &point, paths, err,
	    sizeof(err)), RD_ERR_CANCELLED);
	assert_non_null(strstr(err, "cancelled"));
	for (int i = 0; i < NDISKS; i++)
		assert_null(paths[i]);
	assert_false(store_test_exists(f->st));
	assert_images(f, &m[2]);
	for (int i = 0; i < 3; i++)
		model_free(&m[i]);
}

/* The records of .digests as a reader outside the store sees them (a
 * planned failover makes them tracker state): an all-zero record is the
 * digest of a block of zeros, a short one at the end of the disk too,
 * and other records stay as they are. */
static void
test_records_expand(void **state)
{
	uint64_t size = 2 * BS + 100;	/* two blocks and a short one */
	struct digest d[3], want[3];
	static uint8_t zeros[BS], data[BS];

	memset(data, 0x5a, sizeof(data));
	memset(d, 0, sizeof(d));
	digest_block(data, BS, &d[1]);
	digest_block(zeros, BS, &want[0]);
	want[1] = d[1];
	digest_block(zeros, 100, &want[2]);
	store_records_expand(d, 3, 0, BS, size);
	for (int i = 0; i < 3; i++)
		assert_memory_equal(d[i].b, want[i].b, DIGEST_LEN);
	/* from a later block on, past the end untouched */
	struct digest e[2];
	memset(e, 0, sizeof(e));
	store_records_expand(e, 2, 2 * BS, BS, size);
	assert_memory_equal(e[0].b, want[2].b, DIGEST_LEN);
	uint8_t none[DIGEST_LEN] = { 0 };
	assert_memory_equal(e[1].b, none, DIGEST_LEN);
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--crash-child") == 0) {
		log_set_level(LOG_LVL_ERROR);
		return crash_child(argv[2]);
	}
	self_exe = realpath("/proc/self/exe", NULL);
	if (self_exe == NULL) {
		perror("/proc/self/exe");
		return 1;
	}
	unsetenv("REPLICAD_FAULT");

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_open_empty),
		T(test_cycles_apply),
		T(test_test_failover),
		T(test_verify),
		T(test_abort),
		T(test_definitions),
		T(test_refusals),
		T(test_apply_error_rolled_back),
		T(test_crash_after_index),
		T(test_crash_after_undo),
		T(test_crash_mid_apply),
		T(test_crash_before_catalog),
		T(test_crash_after_catalog),
		T(test_crash_after_digests),
		T(test_crash_while_staging),
		T(test_crash_then_bad_staged_data),
		T(test_crash_before_catalog_bad_staged_data),
		T(test_crash_mid_apply_staged_data_lost),
		T(test_empty_cycles),
		T(test_rewind_moves),
		T(test_rewind_no_such_point),
		T(test_rewind_check_unchanged),
		T(test_rewind_commit),
		T(test_rewind_commit_ids_not_reused),
		T(test_rewind_commit_at_newest),
		T(test_rewind_crash_step_back),
		T(test_rewind_crash_first_step_back),
		T(test_rewind_crash_step_forward),
		T(test_rewind_crash_before_redo),
		T(test_rewind_failed_step_restart),
		T(test_rewind_failed_step_retried),
		T(test_rewind_failed_step_stay),
		cmocka_unit_test(test_records_expand),
		T(test_long_jobs_cancelled),	/* last (work_cancel) */
	};
#undef T

	log_set_level(LOG_LVL_ERROR);
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	free(self_exe);
	return r;
}
