/*
 * test_config.c — config_load(): a full file, defaults, comments, and one
 * test per kind of bad file, each checking that the message names the
 * file, the line and the key; config_find_vm() and config_match_accept().
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "err.h"

/* Lines 1-5 */
#define DAEMON \
	"[daemon]\n" \
	"state_dir = /var/lib/replicad\n" \
	"tls_cert = /etc/replicad/cert.pem\n" \
	"tls_key = /etc/replicad/key.pem\n" \
	"tls_ca = /etc/replicad/ca.pem\n"
/* Lines 6-8 when after DAEMON */
#define VM \
	"[vm web01]\n" \
	"disk = /img/web01.raw\n" \
	"replica = backup.example.com:7000\n"
/* Lines 6-7 when after DAEMON */
#define REPLICA \
	"listen = 0.0.0.0:7000\n" \
	"[accept primary.example.com]\n"

#define X50 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define X200 X50 X50 X50 X50

static char conf_path[64];

/* Write len bytes of text to a new temporary file; its name in conf_path. */
static void
write_conf_len(const char *text, size_t len)
{
	int fd;

	snprintf(conf_path, sizeof(conf_path), "/tmp/test_config.XXXXXX");
	fd = mkstemp(conf_path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

static int
load_len(const char *text, size_t len, struct config **cfg, char *err,
    size_t errsz)
{
	int r;

	write_conf_len(text, len);
	r = config_load(conf_path, cfg, err, errsz);
	unlink(conf_path);
	return r;
}

static int
load(const char *text, struct config **cfg, char *err, size_t errsz)
{
	return load_len(text, strlen(text), cfg, err, errsz);
}

static struct config *
load_ok(const char *text)
{
	struct config *cfg = NULL;
	char err[512] = "";
	int r = load(text, &cfg, err, sizeof(err));

	if (r != 0)
		fail_msg("config_load: %d: %s", r, err);
	assert_non_null(cfg);
	return cfg;
}

static void
test_full(void **state)
{
	struct config *cfg = load_ok(
	    "# replicad.conf with every key\n"
	    "[daemon]\n"
	    "state_dir = /var/lib/replicad\n"
	    "control_socket = /run/replicad.sock\n"
	    "listen = [::1]:7001\n"
	    "tls_cert = /etc/replicad/cert.pem\n"
	    "tls_key = /etc/replicad/key.pem\n"
	    "tls_ca = /etc/replicad/ca.pem\n"
	    "log_level = debug\n"
	    "\n"
	    "[vm web01]\n"				/* line 11 */
	    "disk = /var/lib/libvirt/images/web01.qcow2\n"
	    "disk = /dev/vg0/web01-data\n"
	    "replica = backup.example.com:7000\n"
	    "replica_name = backup-cert.example.com\n"
	    "interval = 30s\n"
	    "tracker = scan\n"
	    "block_size = 1M\n"
	    "compress = zstd:19\n"
	    "pre_snapshot = virsh domfsfreeze web01\n"
	    "post_snapshot = virsh domfsthaw web01\n"
	    "\n"
	    "[vm db01]\n"				/* line 23 */
	    "disk = /img/db01.raw\n"
	    "replica = 10.0.0.2:7000\n"
	    "interval = 0\n"
	    "compress = none\n"
	    "block_size = 4K\n"
	    "\n"
	    "[accept primary.example.com]\n"		/* line 30 */
	    "vms = web* db[0-9]\n"
	    "storage = /srv/replicas/\n"
	    "retention = last=24,hourly=48,daily=30,weekly=8,monthly=12,"
	    "yearly=2,app:daily=7,within=2d\n");
	const struct cfg_vm *vm;
	const struct cfg_accept *a;

	assert_string_equal(cfg->state_dir, "/var/lib/replicad");
	assert_string_equal(cfg->control_socket, "/run/replicad.sock");
	assert_string_equal(cfg->listen, "[::1]:7001");
	assert_string_equal(cfg->listen_host, "::1");
	assert_int_equal(cfg->listen_port, 7001);
	assert_string_equal(cfg->tls_cert, "/etc/replicad/cert.pem");
	assert_string_equal(cfg->tls_key, "/etc/replicad/key.pem");
	assert_string_equal(cfg->tls_ca, "/etc/replicad/ca.pem");
	assert_int_equal(cfg->log_level, LOG_LVL_DEBUG);

	assert_int_equal(cfg->nvms, 2);
	vm = &cfg->vms[0];
	assert_string_equal(vm->name, "web01");
	assert_int_equal(vm->line, 11);
	assert_int_equal(vm->ndisks, 2);
	assert_string_equal(vm->disks[0],
	    "/var/lib/libvirt/images/web01.qcow2");
	assert_string_equal(vm->disk_names[0], "web01.qcow2");
	assert_string_equal(vm->disks[1], "/dev/vg0/web01-data");
	assert_string_equal(vm->disk_names[1], "web01-data");
	assert_string_equal(vm->replica, "backup.example.com:7000");
	assert_string_equal(vm->replica_host, "backup.example.com");
	assert_int_equal(vm->replica_port, 7000);
	assert_string_equal(vm->replica_name, "backup-cert.example.com");
	assert_int_equal(vm->interval_ms, 30000);
	assert_int_equal(vm->tracker, TRACKER_SCAN);
	assert_int_equal(vm->block_size, 1024 * 1024);
	assert_int_equal(vm->compress_level, 19);
	assert_string_equal(vm->pre_snapshot, "virsh domfsfreeze web01");
	assert_string_equal(vm->post_snapshot, "virsh domfsthaw web01");

	vm = &cfg->vms[1];
	assert_string_equal(vm->name, "db01");
	assert_int_equal(vm->line, 23);
	assert_int_equal(vm->ndisks, 1);
	assert_string_equal(vm->disk_names[0], "db01.raw");
	assert_string_equal(vm->replica_host, "10.0.0.2");
	assert_string_equal(vm->replica_name, "10.0.0.2");
	assert_int_equal(vm->interval_ms, 0);
	assert_int_equal(vm->compress_level, 0);
	assert_int_equal(vm->block_size, 4096);

	assert_int_equal(cfg->naccepts, 1);
	a = &cfg->accepts[0];
	assert_string_equal(a->name, "primary.example.com");
	assert_int_equal(a->line, 30);
	assert_int_equal(a->nvms, 2);
	assert_string_equal(a->vms[0], "web*");
	assert_string_equal(a->vms[1], "db[0-9]");
	assert_string_equal(a->storage, "/srv/replicas");
	/* The normal form: rules in a fixed order, app: ones last. */
	assert_string_equal(a->retention, "last=24,hourly=48,daily=30,"
	    "weekly=8,monthly=12,yearly=2,within=2d,app:daily=7");

	assert_ptr_equal(config_find_vm(cfg, "db01"), &cfg->vms[1]);
	assert_ptr_equal(config_find_vm(cfg, "web01"), &cfg->vms[0]);
	assert_null(config_find_vm(cfg, "WEB01"));
	assert_null(config_find_vm(cfg, "mail"));
	config_free(cfg);
}

/* The keys of the trackers, consistency hooks and lag health. */
static void
test_tracker_keys(void **state)
{
	struct config *cfg = load_ok(DAEMON
	    "[vm web01]\n"
	    "disk = virtio0\n"			/* before tracker: a node */
	    "tracker = qemu\n"
	    "disk = libvirt-2-format\n"
	    "qmp = /run/libvirt/qemu/web01.qmp\n"
	    "receive_into = /var/lib/replicad/web01-vda.raw\n"
	    "receive_into = /var/lib/replicad/web01-vdb.raw\n"
	    "replica = b:7000\n"
	    "interval = 1s\n"
	    "app_interval = 1h\n"
	    "snapshot_timeout = 90s\n"
	    "lag_warning = 2.5x\n"
	    "lag_critical = 30s\n"
	    "[vm db01]\n"
	    "tracker = reflink\n"
	    "disk = /xfs/db01.raw\n"
	    "replica = b:7000\n");
	const struct cfg_vm *vm = &cfg->vms[0];

	assert_int_equal(vm->tracker, TRACKER_QEMU);
	assert_int_equal(vm->ndisks, 2);
	assert_string_equal(vm->disks[0], "virtio0");
	assert_string_equal(vm->disk_names[0], "virtio0");
	assert_string_equal(vm->disk_names[1], "libvirt-2-format");
	assert_string_equal(vm->qmp, "/run/libvirt/qemu/web01.qmp");
	assert_int_equal(vm->interval_ms, 1000);
	assert_int_equal(vm->app_interval_ms, 3600000);
	assert_int_equal(vm->snapshot_timeout_s, 90);
	assert_int_equal(config_lag_ms(&vm->lag_warning, 1000), 2500);
	assert_int_equal(config_lag_ms(&vm->lag_critical, 1000), 30000);
	assert_int_equal(vm->nreceive, 2);
	assert_string_equal(vm->receive_into[0], "/var/lib/replicad/web01-vda.raw");
	assert_string_equal(vm->receive_into[1], "/var/lib/replicad/web01-vdb.raw");
	vm = &cfg->vms[1];
	assert_int_equal(vm->nreceive, 0);
	assert_null(vm->receive_into);
	assert_int_equal(vm->tracker, TRACKER_REFLINK);
	assert_string_equal(vm->disk_names[0], "db01.raw");
	config_free(cfg);
}

static void
test_defaults(void **state)
{
	/* [daemon] last: the defaults that use state_dir come after. */
	struct config *cfg = load_ok(
	    "[accept primary]\n"
	    "[vm web01]\n"
	    "disk = /img/web01.raw\n"
	    "replica = backup:7000\n"
	    "[daemon]\n"
	    "state_dir = /srv/rd\n"
	    "listen = backup:7000\n"
	    "tls_cert = /c\n"
	    "tls_key = /k\n"
	    "tls_ca = /a\n");
	const struct cfg_vm *vm = &cfg->vms[0];
	const struct cfg_accept *a = &cfg->accepts[0];

	assert_string_equal(cfg->path, conf_path);
	assert_string_equal(cfg->control_socket, "/srv/rd/control.sock");
	assert_int_equal(cfg->log_level, LOG_LVL_INFO);
	assert_int_equal(cfg->delta_budget, CONFIG_DEFAULT_DELTA_BUDGET);
	assert_int_equal(vm->interval_ms, CONFIG_DEFAULT_INTERVAL_MS);
	assert_int_equal(vm->interval_ms, 300000);
	assert_int_equal(vm->tracker, TRACKER_SCAN);
	assert_int_equal(vm->block_size, CONFIG_DEFAULT_BLOCK_SIZE);
	assert_int_equal(vm->block_size, 65536);
	assert_int_equal(vm->compress_level, 1);
	assert_string_equal(vm->replica_name, "backup");
	assert_null(vm->pre_snapshot);
	assert_null(vm->post_snapshot);
	assert_null(vm->qmp);
	assert_int_equal(vm->snapshot_timeout_s, 60);
	assert_int_equal(vm->app_interval_ms, 0);
	assert_int_equal(config_lag_ms(&vm->lag_warning, 300000), 600000);
	assert_int_equal(config_lag_ms(&vm->lag_critical, 300000), 1200000);
	assert_int_equal(vm->line, 2);
	assert_int_equal(a->nvms, 1);
	assert_string_equal(a->vms[0], "*");
	assert_string_equal(a->storage, "/srv/rd/replicas");
	assert_string_equal(a->retention, "last=24");
	/* Quotas and min_free (the smaller of 1G and 5%). */
	assert_int_equal(a->max_vms, 64);
	assert_int_equal(a->max_disks, 16);
	assert_int_equal(a->max_disk_size, (uint64_t)16 << 40);
	assert_int_equal(a->min_free_bytes, (uint64_t)1 << 30);
	assert_int_equal(a->min_free_pct, 5);
	assert_int_equal(a->line, 1);
	config_free(cfg);

	cfg = load_ok(DAEMON REPLICA "max_vms = 3\nmax_disks = 64\n"
	    "max_disk_size = 2T\nmin_free = 0\n");
	a = &cfg->accepts[0];
	assert_int_equal(a->max_vms, 3);
	assert_int_equal(a->max_disks, 64);
	assert_int_equal(a->max_disk_size, (uint64_t)2 << 40);
	assert_int_equal(a->min_free_bytes, 0);
	assert_int_equal(a->min_free_pct, 0);
	config_free(cfg);
	cfg = load_ok(DAEMON REPLICA "min_free = 10%\n");
	assert_int_equal(cfg->accepts[0].min_free_bytes, 0);
	assert_int_equal(cfg->accepts[0].min_free_pct, 10);
	config_free(cfg);

	/* state_dir = / does not make "//control.sock". */
	cfg = load_ok("[daemon]\nstate_dir = /\nlisten = h:1\ntls_cert = /c\n"
	    "tls_key = /k\ntls_ca = /a\n[accept p]\n");
	assert_string_equal(cfg->state_dir, "/");
	assert_string_equal(cfg->control_socket, "/control.sock");
	assert_string_equal(cfg->accepts[0].storage, "/replicas");
	config_free(cfg);

	/* A replica only host: listen, no [vm]. */
	cfg = load_ok(DAEMON "listen = 127.0.0.1:7000\n");
	assert_int_equal(cfg->nvms, 0);
	assert_int_equal(cfg->naccepts, 0);
	assert_string_equal(cfg->listen_host, "127.0.0.1");
	config_free(cfg);
}

static void
test_values(void **state)
{
	static const struct {
		const char	*line;
		uint32_t	 block_size;
		int		 level;
		uint64_t	 interval_ms;
	} cases[] = {
		{ "compress = zstd", 65536, 1, 300000 },
		{ "compress = zstd:1", 65536, 1, 300000 },
		{ "compress = zstd:07", 65536, 7, 300000 },
		{ "compress = none", 65536, 0, 300000 },
		{ "block_size = 4096", 4096, 1, 300000 },
		{ "block_size = 4M", 4194304, 1, 300000 },
		{ "block_size = 128KiB", 131072, 1, 300000 },
		{ "interval = 250ms", 65536, 1, 250 },
		{ "interval = 90", 65536, 1, 90000 },
		{ "interval = 1h", 65536, 1, 3600000 },
		{ "interval = 365d", 65536, 1, 365ULL * 86400000 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char text[512];
		struct config *cfg;

		snprintf(text, sizeof(text), DAEMON VM "%s\n", cases[i].line);
		cfg = load_ok(text);
		assert_int_equal(cfg->vms[0].block_size, cases[i].block_size);
		assert_int_equal(cfg->vms[0].compress_level, cases[i].level);
		assert_int_equal(cfg->vms[0].interval_ms, cases[i].interval_ms);
		config_free(cfg);
	}
}

static void
test_comments(void **state)
{
	struct config *cfg = load_ok(
	    "\xef\xbb\xbf# a comment\n"
	    "; another comment\n"
	    "   # indented comment\n"
	    "[daemon]   # section comment\n"
	    "state_dir = /var/lib/replicad # trailing comment\n"
	    "tls_cert = /c\t# after a tab\n"
	    "tls_key = /k ; semicolon comment\n"
	    "\ttls_ca = /a\r\n"
	    "log_level=warn # " X200 X200 "\n"
	    "[vm web01] ; comment\n"
	    "  disk = /img/web01.raw\n"
	    "replica = b:1\n"
	    "pre_snapshot = echo a#b;c  # and a comment\n"
	    "post_snapshot = echo \"x y\"\n"
	    "# a comment line longer than inih's line limit: " X200 "\n"
	    "\n");

	assert_string_equal(cfg->state_dir, "/var/lib/replicad");
	assert_string_equal(cfg->tls_cert, "/c");
	assert_string_equal(cfg->tls_key, "/k");
	assert_string_equal(cfg->tls_ca, "/a");
	assert_int_equal(cfg->log_level, LOG_LVL_WARN);
	assert_string_equal(cfg->vms[0].disks[0], "/img/web01.raw");
	assert_string_equal(cfg->vms[0].disk_names[0], "web01.raw");
	assert_string_equal(cfg->vms[0].pre_snapshot, "echo a#b;c");
	assert_string_equal(cfg->vms[0].post_snapshot, "echo \"x y\"");
	config_free(cfg);
}

/* Failover hooks, in [vm] and in [accept]; unset is NULL. */
static void
test_role_hooks(void **state)
{
	struct config *cfg = load_ok(
	    "[daemon]\nstate_dir = /s\nlisten = 0.0.0.0:7000\n"
	    "tls_cert = /c\ntls_key = /k\ntls_ca = /a\n"
	    "[vm web01]\ndisk = /img/web01.raw\nreplica = b:1\n"
	    "on_demote = /hooks/stop web01\n"
	    "on_promote = /hooks/start \"web 01\"\n"
	    "[vm db01]\ndisk = /img/db01.raw\nreplica = b:1\n"
	    "[accept backup]\nvms = web01\n"
	    "on_promote = virsh start $REPLICAD_VM\n"
	    "on_demote = virsh shutdown $REPLICAD_VM\n"
	    "[accept other]\n");

	assert_string_equal(cfg->vms[0].on_demote, "/hooks/stop web01");
	assert_string_equal(cfg->vms[0].on_promote, "/hooks/start \"web 01\"");
	assert_null(cfg->vms[1].on_demote);
	assert_null(cfg->vms[1].on_promote);
	assert_string_equal(cfg->accepts[0].on_promote,
	    "virsh start $REPLICAD_VM");
	assert_string_equal(cfg->accepts[0].on_demote,
	    "virsh shutdown $REPLICAD_VM");
	assert_null(cfg->accepts[1].on_promote);
	assert_null(cfg->accepts[1].on_demote);
	config_free(cfg);

	/* Given twice: an error naming the second line. */
	char err[512];
	assert_int_equal(load("[daemon]\nstate_dir = /s\ntls_cert = /c\n"
	    "tls_key = /k\ntls_ca = /a\n[vm web01]\ndisk = /d\nreplica = b:1\n"
	    "on_promote = a\non_promote = b\n", &cfg, err, sizeof(err)),
	    RD_ERR_INVALID);
	assert_non_null(strstr(err, ":10: [vm web01] on_promote:"));
}

/* Where a point's domain definition may name files (domxml.h). */
static void
test_domain_paths(void **state)
{
	struct config *cfg = load_ok(DAEMON
	    "listen = 0.0.0.0:7000\n"
	    "[vm web01]\ndomain = web01\nreplica = b:1\n"
	    "domain_paths = /srv/vmfiles\n"
	    "[vm db01]\ndomain = db01\nreplica = b:1\n"
	    "[accept primary]\n"
	    "domain_paths = /srv/kernels/ /var/log/vm\t/a//b\n"
	    "[accept other]\n");

	assert_int_equal(cfg->vms[0].ndomain_paths, 1);
	assert_string_equal(cfg->vms[0].domain_paths[0], "/srv/vmfiles");
	assert_int_equal(cfg->vms[1].ndomain_paths, 0);
	assert_int_equal(cfg->accepts[0].ndomain_paths, 3);
	assert_string_equal(cfg->accepts[0].domain_paths[0], "/srv/kernels");
	assert_string_equal(cfg->accepts[0].domain_paths[1], "/var/log/vm");
	assert_string_equal(cfg->accepts[0].domain_paths[2], "/a//b");
	assert_int_equal(cfg->accepts[1].ndomain_paths, 0);
	assert_null(cfg->accepts[1].domain_paths);
	config_free(cfg);
}

static void
test_line_limit(void **state)
{
	char text[1024], err[512];
	struct config *cfg = NULL;
	char v[300];
	int r;

	/* "pre_snapshot = " is 15 characters: 182 more make 197, the most. */
	memset(v, 'x', 182);
	v[182] = '\0';
	snprintf(text, sizeof(text), DAEMON VM "pre_snapshot = %s\n", v);
	cfg = load_ok(text);
	assert_int_equal(strlen(cfg->vms[0].pre_snapshot), 182);
	config_free(cfg);

	/* The same with a long comment after it. */
	snprintf(text, sizeof(text), DAEMON VM "pre_snapshot = %s   # %s\n", v,
	    v);
	cfg = load_ok(text);
	config_free(cfg);

	/* One more is too long. */
	snprintf(text, sizeof(text), DAEMON VM "pre_snapshot = %sx\n", v);
	cfg = NULL;
	r = load(text, &cfg, err, sizeof(err));
	assert_int_equal(r, RD_ERR_INVALID);
	assert_null(cfg);
	assert_non_null(strstr(err, ":9: "));
	assert_non_null(strstr(err, "line too long"));
}

static void
test_file_errors(void **state)
{
	struct config *cfg = (struct config *)1;
	char err[512], small[12];
	int r;

	r = config_load("/nonexistent/replicad.conf", &cfg, err, sizeof(err));
	assert_int_equal(r, RD_ERR_NOT_FOUND);
	assert_null(cfg);
	assert_string_equal(err, "/nonexistent/replicad.conf: "
	    "No such file or directory");

	r = config_load("/tmp", &cfg, err, sizeof(err));
	assert_int_equal(r, RD_ERR_SYSTEM);
	assert_null(cfg);
	assert_string_equal(err, "/tmp: Is a directory");

	/* A short error buffer gets a truncated, terminated message. */
	r = load("[bogus]\n", &cfg, small, sizeof(small));
	assert_int_equal(r, RD_ERR_INVALID);
	assert_int_equal(strlen(small), sizeof(small) - 1);
	r = load("[bogus]\n", &cfg, NULL, 0);
	assert_int_equal(r, RD_ERR_INVALID);

	/* Binary junk. */
	r = load_len(DAEMON VM "pre_snapshot = a\0b\n",
	    sizeof(DAEMON VM "pre_snapshot = a\0b\n") - 1, &cfg, err,
	    sizeof(err));
	assert_int_equal(r, RD_ERR_INVALID);
	assert_non_null(strstr(err, ":9: "));
	assert_non_null(strstr(err, "control character 0x00"));
}

static void
test_match_accept(void **state)
{
	struct config *cfg = load_ok(DAEMON
	    "listen = 0.0.0.0:7000\n"
	    "[accept Primary.Example.COM]\n"
	    "vms = web* db[0-9] app?\n"
	    "storage = /srv/a\n"
	    "[accept other.example.com]\n"
	    "storage = /srv/b\n"
	    "[accept third]\n"
	    "vms = mail\n");
	const struct cfg_accept *a;

	a = config_match_accept(cfg, "primary.example.com", "web01");
	assert_non_null(a);
	assert_string_equal(a->storage, "/srv/a");
	assert_ptr_equal(config_match_accept(cfg, "PRIMARY.example.com",
	    "web"), a);
	assert_ptr_equal(config_match_accept(cfg, "primary.example.com",
	    "db7"), a);
	assert_ptr_equal(config_match_accept(cfg, "primary.example.com",
	    "app1"), a);
	assert_null(config_match_accept(cfg, "primary.example.com", "db10"));
	assert_null(config_match_accept(cfg, "primary.example.com", "app"));
	assert_null(config_match_accept(cfg, "primary.example.com", "mail"));
	assert_null(config_match_accept(cfg, "primary.example.co", "web01"));
	assert_null(config_match_accept(cfg, "primary", "web01"));
	assert_null(config_match_accept(cfg, "", "web01"));

	/* No vms key: every VM. */
	a = config_match_accept(cfg, "Other.Example.Com", "anything");
	assert_non_null(a);
	assert_string_equal(a->storage, "/srv/b");
	assert_ptr_equal(config_match_accept(cfg, "other.example.com",
	    "web01"), a);

	a = config_match_accept(cfg, "third", "mail");
	assert_non_null(a);
	assert_string_equal(a->storage, "/var/lib/replicad/replicas");
	assert_null(config_match_accept(cfg, "third", "mail2"));
	config_free(cfg);
}

/* A bad file: the error names the line, and contains key and message. */
struct bad_case {
	const char	*name;
	const char	*text;
	int		 line;		/* 0: no line in the message */
	const char	*key;		/* expected in the message, or NULL */
	const char	*message;
};

static const struct bad_case bad_cases[] = {
	{ "domain_paths relative", DAEMON REPLICA
	    "domain_paths = /srv/vm var/log\n", 8, "domain_paths",
	    "path 'var/log' is not absolute" },
	{ "domain_paths dotdot", DAEMON REPLICA
	    "domain_paths = /srv/vm/../../etc\n", 8, "domain_paths",
	    "has a '..' component" },
	{ "domain_paths root", DAEMON REPLICA "domain_paths = //\n", 8,
	    "domain_paths", "/ would let a definition name every file" },
	{ "domain_paths twice", DAEMON REPLICA "domain_paths = /a\n"
	    "domain_paths = /b\n", 9, "domain_paths", "duplicate key" },
	{ "domain_paths without domain", DAEMON VM "domain_paths = /a\n", 9,
	    "domain_paths", "only used with domain" },
	{ "unknown section", DAEMON VM "[frobnicate]\n", 9, "[frobnicate]",
	    "unknown section" },
	{ "unknown section with name", DAEMON "[host web01]\n", 6,
	    "[host web01]", "unknown section" },
	{ "section without bracket", DAEMON "[vm web01\n", 6, NULL,
	    "invalid section header" },
	{ "daemon with a name", "[daemon main]\n", 1, "[daemon main]",
	    "unexpected name" },
	{ "duplicate daemon", DAEMON VM "[daemon]\n", 9, "[daemon]",
	    "duplicate section (first at line 1)" },
	{ "unknown key", DAEMON VM "colour = blue\n", 9, "colour",
	    "unknown key" },
	{ "daemon key in vm", DAEMON VM "state_dir = /x\n", 9, "state_dir",
	    "unknown key" },
	{ "key outside section", "state_dir = /x\n" DAEMON, 1, "state_dir",
	    "outside any section" },
	{ "syntax error", DAEMON "just some words\n", 6, NULL,
	    "syntax error" },
	{ "colon separator", DAEMON "log_level: debug\n", 6, NULL,
	    "syntax error" },
	{ "no key", DAEMON "= /x\n", 6, NULL, "syntax error" },
	{ "empty value", DAEMON VM "replica_name =\n", 9, "replica_name",
	    "empty value" },
	{ "control character", DAEMON "log_level = de\x01" "bug\n", 6, NULL,
	    "control character 0x01" },
	{ "duplicate key", DAEMON VM "replica = other:7000\n", 9, "replica",
	    "duplicate key (first set at line 8)" },
	{ "duplicate daemon key", DAEMON "tls_ca = /b\n" VM, 6, "tls_ca",
	    "duplicate key" },
	{ "duplicate vm section", DAEMON VM "[vm web01]\n", 9, "[vm web01]",
	    "duplicate section (first at line 6)" },
	{ "relative disk path", DAEMON VM "disk = img/x.raw\n", 9, "disk",
	    "not absolute" },
	{ "relative state_dir", "[daemon]\nstate_dir = var/lib\n", 2,
	    "state_dir", "not absolute" },
	{ "relative tls_key", "[daemon]\ntls_key = key.pem\n", 2, "tls_key",
	    "not absolute" },
	{ "relative storage", DAEMON REPLICA "storage = srv\n", 8, "storage",
	    "not absolute" },
	{ "relative control_socket", DAEMON "control_socket = c.sock\n", 6,
	    "control_socket", "not absolute" },
	{ "bad size", DAEMON VM "block_size = 64Q\n", 9, "block_size",
	    "invalid size '64Q'" },
	{ "empty size unit", DAEMON VM "block_size = K\n", 9, "block_size",
	    "invalid size" },
	{ "block_size not power of two", DAEMON VM "block_size = 48K\n", 9,
	    "block_size", "not a power of two" },
	{ "block_size too small", DAEMON VM "block_size = 2K\n", 9,
	    "block_size", "out of range" },
	{ "block_size zero", DAEMON VM "block_size = 0\n", 9, "block_size",
	    "out of range" },
	{ "block_size too large", DAEMON VM "block_size = 8M\n", 9,
	    "block_size", "out of range" },
	{ "block_size overflow", DAEMON VM "block_size = 99999999999T\n", 9,
	    "block_size", "invalid size" },
	{ "bad duration", DAEMON VM "interval = soon\n", 9, "interval",
	    "invalid duration 'soon'" },
	{ "negative duration", DAEMON VM "interval = -5m\n", 9, "interval",
	    "invalid duration" },
	{ "duration too long", DAEMON VM "interval = 366d\n", 9, "interval",
	    "too long" },
	{ "compress level too high", DAEMON VM "compress = zstd:20\n", 9,
	    "compress", "invalid zstd level '20'" },
	{ "compress level zero", DAEMON VM "compress = zstd:0\n", 9,
	    "compress", "invalid zstd level" },
	{ "compress level empty", DAEMON VM "compress = zstd:\n", 9,
	    "compress", "invalid zstd level" },
	{ "compress level junk", DAEMON VM "compress = zstd:3x\n", 9,
	    "compress", "invalid zstd level" },
	{ "compress level long", DAEMON VM "compress = zstd:0001\n", 9,
	    "compress", "invalid zstd level" },
	{ "compress unknown", DAEMON VM "compress = lz4\n", 9, "compress",
	    "invalid compression 'lz4'" },
	{ "bad tracker", DAEMON VM "tracker = magic\n", 9, "tracker",
	    "invalid tracker 'magic'" },
	{ "bad tracker", DAEMON VM "tracker = lvm\n", 9, "tracker",
	    "invalid tracker 'lvm'" },
	{ "qemu without qmp", DAEMON "[vm web01]\ntracker = qemu\n"
	    "disk = drive0\nreplica = b:1\n", 6, "qmp",
	    "missing (required with tracker qemu" },
	{ "qmp without qemu", DAEMON VM "qmp = /run/q.sock\n", 6, "qmp",
	    "only used with tracker qemu" },
	{ "qmp relative", DAEMON VM "tracker = qemu\nqmp = q.sock\n", 10, "qmp",
	    "not absolute" },
	{ "qemu node is a path", DAEMON "[vm web01]\nqmp = /q\n"
	    "disk = /img/a.raw\ntracker = qemu\nreplica = b:1\n", 8, "disk",
	    "invalid QEMU node name '/img/a.raw'" },
	{ "qemu node test", DAEMON "[vm web01]\nqmp = /q\n"
	    "disk = test\ntracker = qemu\nreplica = b:1\n", 8, "disk",
	    "invalid QEMU node name 'test'" },
	{ "qemu nodes twice", DAEMON "[vm web01]\nqmp = /q\ntracker = qemu\n"
	    "disk = d0\ndisk = d0\nreplica = b:1\n", 10, "disk",
	    "duplicate disk name 'd0'" },
	{ "receive_into relative", DAEMON VM "receive_into = a.raw\n", 9,
	    "receive_into", "not absolute" },
	{ "receive_into twice", DAEMON "[vm web01]\ndisk = /a/x\ndisk = /a/y\n"
	    "receive_into = /r/x\nreceive_into = /r/x\nreplica = b:1\n", 10,
	    "receive_into", "/r/x is named twice" },
	{ "receive_into one short", DAEMON "[vm web01]\ndisk = /a/x\n"
	    "disk = /a/y\nreceive_into = /r/x\nreplica = b:1\n", 9,
	    "receive_into", "1 paths for 2 disks" },
	{ "receive_into another VM's disk", DAEMON VM "[vm db01]\n"
	    "disk = /b/db\nreplica = b:1\nreceive_into = /img/web01.raw\n",
	    12, "receive_into", "/img/web01.raw is a disk of [vm web01]" },
	{ "disk path after tracker line", DAEMON "[vm web01]\ntracker = reflink\n"
	    "replica = b:1\ndisk = img/a.raw\n", 9, "disk", "not absolute" },
	{ "bad app_interval", DAEMON VM "app_interval = often\n", 9,
	    "app_interval", "invalid duration 'often'" },
	{ "snapshot_timeout zero", DAEMON VM "snapshot_timeout = 0\n", 9,
	    "snapshot_timeout", "out of range" },
	{ "snapshot_timeout long", DAEMON VM "snapshot_timeout = 2h\n", 9,
	    "snapshot_timeout", "out of range" },
	{ "lag factor below one", DAEMON VM "lag_warning = 0.5x\n", 9,
	    "lag_warning", "invalid lag threshold '0.5x'" },
	{ "lag factor garbage", DAEMON VM "lag_critical = 2xx\n", 9,
	    "lag_critical", "invalid lag threshold" },
	{ "lag zero", DAEMON VM "lag_critical = 0\n", 9, "lag_critical",
	    "invalid lag threshold" },
	{ "lag factor x only", DAEMON VM "lag_warning = x\n", 9, "lag_warning",
	    "invalid lag threshold" },
	{ "bad log level", DAEMON "log_level = verbose\n" VM, 6, "log_level",
	    "invalid log level 'verbose'" },
	{ "delta budget negative", DAEMON "delta_budget = -1\n" VM, 6,
	    "delta_budget", "invalid delta budget '-1'" },
	{ "delta budget too big", DAEMON "delta_budget = 1000001\n" VM, 6,
	    "delta_budget", "invalid delta budget '1000001'" },
	{ "delta budget garbage", DAEMON "delta_budget = 5k\n" VM, 6,
	    "delta_budget", "invalid delta budget '5k'" },
	{ "listen without port", DAEMON "listen = backup\n", 6, "listen",
	    "invalid address 'backup'" },
	{ "listen port too big", DAEMON "listen = backup:70000\n", 6,
	    "listen", "invalid address" },
	{ "listen port zero", DAEMON "listen = backup:0\n", 6, "listen",
	    "invalid address" },
	{ "listen bare ipv6", DAEMON "listen = ::1:7000\n", 6, "listen",
	    "invalid address" },
	{ "listen ipv6 no colon", DAEMON "listen = [::1]7000\n", 6, "listen",
	    "invalid address" },
	{ "replica bad address", DAEMON VM "[vm db]\nreplica = a b:1\n", 10,
	    "replica", "invalid address" },
	{ "bad replica_name", DAEMON VM "replica_name = a/b\n", 9,
	    "replica_name", "invalid host identity 'a/b'" },
	{ "vm without disk", DAEMON "[vm web01]\nreplica = b:1\n", 6, "disk",
	    "missing" },
	{ "vm without replica", DAEMON VM "[vm db01]\ndisk = /img/db\n", 9,
	    "replica", "missing" },
	{ "duplicate disk name", DAEMON VM "disk = /other/web01.raw\n", 9,
	    "disk", "duplicate disk name 'web01.raw'" },
	{ "same disk in two vms", DAEMON VM
	    "[vm db]\nreplica = b:1\ndisk = /img/web01.raw\n", 11, "disk",
	    "already a disk of [vm web01]" },
	{ "hidden disk name", DAEMON VM "disk = /img/.hidden\n", 9, "disk",
	    "invalid disk name '.hidden'" },
	{ "disk name with dash first", DAEMON VM "disk = /img/-x\n", 9,
	    "disk", "invalid disk name" },
	{ "disk name too long", DAEMON VM "disk = /img/" X50 "xxxxxxxxxxxxxxx"
	    "\n", 9, "disk", "invalid disk name" },
	{ "disk path ends in slash", DAEMON VM "disk = /img/\n", 9, "disk",
	    "invalid disk name ''" },
	{ "disk dot dot", DAEMON VM "disk = /img/..\n", 9, "disk",
	    "invalid disk name '..'" },
	{ "disk name test", DAEMON VM "disk = /img/test\n", 9, "disk",
	    "disk name 'test' is reserved" },
	{ "vm name with slash", DAEMON "[vm a/b]\n", 6, "[vm a/b]",
	    "invalid VM name 'a/b'" },
	{ "vm name dot dot", DAEMON "[vm ..]\n", 6, "[vm ..]",
	    "invalid VM name '..'" },
	{ "vm name leading dot", DAEMON "[vm .web]\n", 6, "[vm .web]",
	    "invalid VM name '.web'" },
	{ "vm name two words", DAEMON "[vm web 01]\n", 6, "[vm web 01]",
	    "invalid VM name 'web 01'" },
	{ "vm name too long", DAEMON "[vm " X50 "xxxxxxxxxxxxxxx]\n", 6,
	    "[vm xxx", "invalid VM name" },
	{ "vm without name", DAEMON "[vm]\n", 6, "[vm]", "missing name" },
	{ "accept without name", DAEMON "[accept]\n", 6, "[accept]",
	    "missing name" },
	{ "accept bad identity", DAEMON "[accept a/b]\n", 6, "[accept a/b]",
	    "invalid host identity" },
	{ "accept duplicate", DAEMON REPLICA "[accept Primary.example.com]\n",
	    8, "[accept Primary.example.com]",
	    "duplicate section (first at line 7)" },
	{ "accept bad pattern", DAEMON REPLICA "vms = web* ../x\n", 8, "vms",
	    "invalid pattern '../x'" },
	{ "no daemon section", VM, 0, NULL, "missing [daemon] section" },
	{ "missing state_dir", "[daemon]\ntls_cert = /c\n" VM, 1,
	    "state_dir", "missing" },
	{ "missing tls_cert", "[daemon]\nstate_dir = /s\ntls_key = /k\n"
	    "tls_ca = /a\n" VM, 1, "tls_cert", "missing" },
	{ "missing tls_key", "[daemon]\nstate_dir = /s\ntls_cert = /k\n"
	    "tls_ca = /a\n" VM, 1, "tls_key", "missing" },
	{ "missing tls_ca", "[daemon]\nstate_dir = /s\ntls_cert = /k\n"
	    "tls_key = /a\nlisten = h:1\n", 1, "tls_ca", "missing" },
	{ "nothing to do", DAEMON, 1, "[daemon]",
	    "nothing to do: no [vm] section and no listen" },
	{ "accept without listen", DAEMON VM "[accept p1]\n", 9,
	    "[accept p1]", "[accept] entries need listen in [daemon]" },
	{ "accept only, without listen", DAEMON "[accept p1]\n", 6,
	    "[accept p1]", "[accept] entries need listen in [daemon]" },
	{ "bad retention", DAEMON REPLICA "retention = forever\n", 8,
	    "retention", "invalid rule 'forever'" },
	{ "retention of a VM the entry does not send", DAEMON REPLICA
	    "vms = web*\nretention.db01 = last=3\n", 9, "retention.db01",
	    "VM db01 is not among this entry's vms" },
	{ "retention of a VM, bad policy", DAEMON REPLICA
	    "retention.web01 = last=0\n", 8, "retention.web01",
	    "invalid count '0'" },
	{ "retention of a VM, bad name", DAEMON REPLICA
	    "retention.../x = last=1\n", 8, "retention.../x",
	    "invalid VM name" },
	{ "retention of a VM twice", DAEMON REPLICA
	    "retention.web01 = last=1\nretention.web01 = last=2\n", 9,
	    "retention.web01", "duplicate key" },
	{ "retention_time junk", DAEMON REPLICA "retention_time = mars\n", 8,
	    "retention_time", "invalid value 'mars'" },
	{ "min_free junk", DAEMON REPLICA "min_free = lots\n", 8, "min_free",
	    "invalid size 'lots'" },
	{ "min_free percent too high", DAEMON REPLICA "min_free = 95%\n", 8,
	    "min_free", "invalid percentage '95%'" },
	{ "max_vms zero", DAEMON REPLICA "max_vms = 0\n", 8, "max_vms",
	    "invalid number '0'" },
	{ "max_vms junk", DAEMON REPLICA "max_vms = 5x\n", 8, "max_vms",
	    "invalid number '5x'" },
	{ "max_disks past the wire's bound", DAEMON REPLICA "max_disks = 65\n",
	    8, "max_disks", "invalid number '65' (1 to 64)" },
	{ "max_disk_size zero", DAEMON REPLICA "max_disk_size = 0\n", 8,
	    "max_disk_size", "invalid size '0'" },
	{ "max_disk_size junk", DAEMON REPLICA "max_disk_size = big\n", 8,
	    "max_disk_size", "invalid size 'big'" },
	{ "retention unknown kind", DAEMON REPLICA "retention = minutely=5\n",
	    8, "retention", "unknown rule 'minutely'" },
	{ "retention zero", DAEMON REPLICA "retention = last=0\n", 8,
	    "retention", "invalid count '0'" },
	{ "retention junk count", DAEMON REPLICA "retention = daily=7d\n", 8,
	    "retention", "invalid count '7d'" },
	{ "retention huge count", DAEMON REPLICA
	    "retention = daily=99999999999999999999999\n", 8, "retention",
	    "invalid count" },
	{ "retention empty count", DAEMON REPLICA "retention = daily=\n", 8,
	    "retention", "invalid count" },
	{ "retention empty rule", DAEMON REPLICA
	    "retention = last=1,,daily=2\n", 8, "retention", "empty rule" },
	{ "retention trailing comma", DAEMON REPLICA "retention = last=1,\n",
	    8, "retention", "empty rule" },
	{ "retention twice", DAEMON REPLICA "retention = last=1,last=2\n", 8,
	    "retention", "given twice" },
	{ "retention app within", DAEMON REPLICA
	    "retention = app:within=1d\n", 8, "retention",
	    "unknown rule 'app:within'" },
	{ "retention bad within", DAEMON REPLICA "retention = within=0\n", 8,
	    "retention", "invalid duration '0'" },
	{ "line too long", DAEMON VM "pre_snapshot = " X200 "\n", 9, NULL,
	    "line too long" },
	{ "very long line", DAEMON VM X200 X200 X200 X200 X200 X200 X200
	    X200 X200 X200 X200 X200 X200 X200 X200 X200 X200 X200 X200 X200
	    X200 X200 X200 X200 "\n", 9, NULL, "line too long" },
	{ "control_socket too long", DAEMON "control_socket = /" X50 X50
	    "xxxxxxxxxx\n", 6, "control_socket", "too long for a UNIX socket" },
	{ "default control_socket too long", "[daemon]\nlisten = h:1\n"
	    "state_dir = /" X50 X50 "\ntls_cert = /c\ntls_key = /k\n"
	    "tls_ca = /a\n", 3, "state_dir",
	    "default control_socket" },
};

static void
test_bad(void **state)
{
	const struct bad_case *c = *state;
	struct config *cfg = (struct config *)1;
	char err[1024] = "", want[96];
	int r;

	r = load(c->text, &cfg, err, sizeof(err));
	if (r != RD_ERR_INVALID)
		fail_msg("%s: expected RD_ERR_INVALID, got %d (%s)", c->name,
		    r, err);
	assert_null(cfg);
	if (strncmp(err, conf_path, strlen(conf_path)) != 0)
		fail_msg("%s: message does not start with the file: %s",
		    c->name, err);
	if (c->line > 0)
		snprintf(want, sizeof(want), "%s:%d: ", conf_path, c->line);
	else
		snprintf(want, sizeof(want), "%s: ", conf_path);
	if (strstr(err, want) == NULL)
		fail_msg("%s: no '%s' in: %s", c->name, want, err);
	if (c->key != NULL && strstr(err, c->key) == NULL)
		fail_msg("%s: no '%s' in: %s", c->name, c->key, err);
	if (strstr(err, c->message) == NULL)
		fail_msg("%s: no '%s' in: %s", c->name, c->message, err);
	if (strchr(err, '\n') != NULL)
		fail_msg("%s: message is not one line: %s", c->name, err);
}

int
main(void)
{
	static const struct CMUnitTest fixed[] = {
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_tracker_keys),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_comments),
		cmocka_unit_test(test_role_hooks),
		cmocka_unit_test(test_domain_paths),
		cmocka_unit_test(test_line_limit),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_match_accept),
	};
	size_t nfixed = sizeof(fixed) / sizeof(fixed[0]);
	size_t nbad = sizeof(bad_cases) / sizeof(bad_cases[0]);
	struct CMUnitTest *tests = calloc(nfixed + nbad, sizeof(*tests));
	int r;

	if (tests == NULL)
		return 1;
	memcpy(tests, fixed, sizeof(fixed));
	for (size_t i = 0; i < nbad; i++) {
		tests[nfixed + i].name = bad_cases[i].name;
		tests[nfixed + i].test_func = test_bad;
		tests[nfixed + i].initial_state = (void *)&bad_cases[i];
	}
	r = _cmocka_run_group_tests("config", tests, nfixed + nbad, NULL,
	    NULL);
	free(tests);
	return r;
}
