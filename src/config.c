/*
 * config.c — load and validate replicad.conf (see replicad.conf(5)).
 *
 * inih splits "KEY = VALUE" lines; our reader in front of it counts lines,
 * strips '#' and ';' comments, refuses control characters and lines that
 * inih would silently cut, and handles section headers itself (inih
 * truncates section names at 50 bytes and says nothing about a section
 * that has no keys).  Every error message names the file, the line, the
 * section and the key.  Defaults that depend on other keys (state_dir) are
 * filled in after the whole file is read, because [daemon] may come last.
 */
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <ini.h>

#include "config.h"
#include "err.h"
#include "layout.h"
#include "retention.h"
#include "wire.h"
#include "xmalloc.h"

#define CFG_RAW_MAX		4096	/* bytes of a line we look at */
#define CFG_MAX_INTERVAL_MS	(365ULL * 24 * 3600 * 1000)
#define CFG_MIN_BLOCK_SIZE	(4U * 1024)
#define CFG_MAX_BLOCK_SIZE	(4U * 1024 * 1024)
#define CFG_MAX_ZSTD_LEVEL	19
#define CFG_SOCK_MAX	(sizeof(((struct sockaddr_un *)0)->sun_path))

#define NAME_RULES	"1 to 64 of A-Z a-z 0-9 _ . + -, not starting " \
			"with '.' or '-'"
#define HOST_RULES	"1 to 255 of A-Z a-z 0-9 . - _"

enum cfg_section {
	SEC_NONE,
	SEC_DAEMON,
	SEC_VM,
	SEC_ACCEPT,
};

struct cfg_parse;

struct cfg_key {
	enum cfg_section sec;
	const char	*name;
	int		(*set)(struct cfg_parse *, const char *);
	int		 repeatable;
};

struct cfg_parse {
	struct config	*cfg;
	FILE		*fp;
	char		*err;
	size_t		 errsz;
	int		 failed;	/* err holds the first error */
	int		 read_errno;	/* a read(2) failed */
	int		 lineno;
	enum cfg_section sec;
	char		 label[300];	/* "vm web01", for messages */
	const char	*key;		/* key being set, for messages */
	int		 seen[64];	/* key lines in this section */
	int		 daemon_line;
	int		 state_dir_line;
	char		 raw[CFG_RAW_MAX];
};

/*
 * The first error wins: "FILE:LINE: [SECTION] KEY: MESSAGE", leaving out
 * ":LINE" when line is 0 and the section or key when NULL.
 */
static int cfg_error(struct cfg_parse *, int, const char *, const char *,
    const char *, ...) __attribute__((format(printf, 5, 6)));

static int
cfg_error(struct cfg_parse *p, int line, const char *section,
    const char *key, const char *fmt, ...)
{
	char msg[512], where[16] = "";
	va_list ap;

	if (p->failed)
		return RD_ERR_INVALID;
	p->failed = 1;
	if (p->err == NULL || p->errsz == 0)
		return RD_ERR_INVALID;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(where, sizeof(where), ":%d", line);
	snprintf(p->err, p->errsz, "%s%s: %s%s%s%s%s%s", p->cfg->path, where,
	    section != NULL ? "[" : "", section != NULL ? section : "",
	    section != NULL ? "] " : "", key != NULL ? key : "",
	    key != NULL ? ": " : "", msg);
	return RD_ERR_INVALID;
}

/* An error about the current line, section and key. */
#define KEY_ERROR(p, ...) \
	cfg_error((p), (p)->lineno, (p)->sec == SEC_NONE ? NULL : (p)->label, \
	    (p)->key, __VA_ARGS__)

static struct cfg_vm *
cur_vm(struct cfg_parse *p)
{
	return &p->cfg->vms[p->cfg->nvms - 1];
}

static struct cfg_accept *
cur_accept(struct cfg_parse *p)
{
	return &p->cfg->accepts[p->cfg->naccepts - 1];
}

/* Copy an absolute path into *dst; directories lose trailing slashes. */
static int
set_path(struct cfg_parse *p, const char *v, char **dst, int is_dir)
{
	if (v[0] != '/')
		return KEY_ERROR(p, "path '%s' is not absolute", v);
	*dst = xstrdup(v);
	if (is_dir) {
		size_t n = strlen(*dst);
		while (n > 1 && (*dst)[n - 1] == '/')
			(*dst)[--n] = '\0';
	}
	return 0;
}

static int
set_hostport(struct cfg_parse *p, const char *v, char **dst, char *host,
    size_t hostsz, uint16_t *port)
{
	if (util_parse_hostport(v, host, hostsz, port) != 0)
		return KEY_ERROR(p, "invalid address '%s' (expected HOST:PORT "
		    "or [IPV6]:PORT)", v);
	*dst = xstrdup(v);
	return 0;
}

/* [daemon] */

static int
set_state_dir(struct cfg_parse *p, const char *v)
{
	p->state_dir_line = p->lineno;
	return set_path(p, v, &p->cfg->state_dir, 1);
}

static int
set_control_socket(struct cfg_parse *p, const char *v)
{
	if (strlen(v) >= CFG_SOCK_MAX)
		return KEY_ERROR(p, "path '%s' too long for a UNIX socket "
		    "(at most %zu bytes)", v, CFG_SOCK_MAX - 1);
	return set_path(p, v, &p->cfg->control_socket, 0);
}

static int
set_listen(struct cfg_parse *p, const char *v)
{
	struct config *cfg = p->cfg;

	return set_hostport(p, v, &cfg->listen, cfg->listen_host,
	    sizeof(cfg->listen_host), &cfg->listen_port);
}

static int
set_metrics_listen(struct cfg_parse *p, const char *v)
{
	struct config *cfg = p->cfg;

	return set_hostport(p, v, &cfg->metrics_listen, cfg->metrics_host,
	    sizeof(cfg->metrics_host), &cfg->metrics_port);
}

static int
set_tls_cert(struct cfg_parse *p, const char *v)
{
	p->cfg->tls_line[0] = p->lineno;
	return set_path(p, v, &p->cfg->tls_cert, 0);
}

static int
set_tls_key(struct cfg_parse *p, const char *v)
{
	p->cfg->tls_line[1] = p->lineno;
	return set_path(p, v, &p->cfg->tls_key, 0);
}

static int
set_tls_ca(struct cfg_parse *p, const char *v)
{
	p->cfg->tls_line[2] = p->lineno;
	return set_path(p, v, &p->cfg->tls_ca, 0);
}

static int
set_log_level(struct cfg_parse *p, const char *v)
{
	if (log_parse_level(v, &p->cfg->log_level) != 0)
		return KEY_ERROR(p, "invalid log level '%s' (expected error, "
		    "warn, info or debug)", v);
	return 0;
}

static int
set_keepalive(struct cfg_parse *p, const char *v)
{
	uint64_t ms;

	if (util_parse_duration_ms(v, &ms) != 0)
		return KEY_ERROR(p, "invalid duration '%s' (e.g. 10s)", v);
	if (ms < WIRE_KEEPALIVE_MIN_MS || ms > WIRE_KEEPALIVE_MAX_MS)
		return KEY_ERROR(p, "keepalive '%s' out of range (1s to 5m)",
		    v);
	p->cfg->keepalive_ms = (uint32_t)ms;
	return 0;
}

static int
set_handshake_timeout(struct cfg_parse *p, const char *v)
{
	uint64_t ms;

	if (util_parse_duration_ms(v, &ms) != 0)
		return KEY_ERROR(p, "invalid duration '%s' (e.g. 15s)", v);
	if (ms < 1000 || ms > 600 * 1000)
		return KEY_ERROR(p, "handshake_timeout '%s' out of range (1s to "
		    "10m)", v);
	p->cfg->handshake_timeout_s = (unsigned)((ms + 999) / 1000);
	return 0;
}

static int
set_delta_budget(struct cfg_parse *p, const char *v)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(v, &end, 10);
	if (*v < '0' || *v > '9' || *end != '\0' || errno != 0 ||
	    n > 1000000)
		return KEY_ERROR(p, "invalid delta budget '%s' (expected 0 to "
		    "1000000 false matches per MiB)", v);
	p->cfg->delta_budget = (uint32_t)n;
	return 0;
}

/* [vm NAME] */

/* Checked once the section is read: what a disk names depends on the
 * tracker (a file or device path; a QEMU block node for qemu). */
static int
set_disk(struct cfg_parse *p, const char *v)
{
	struct cfg_vm *vm = cur_vm(p);

	if (vm->disks_chosen)
		return KEY_ERROR(p, "not used with disks = (a domain's disks "
		    "are chosen by target)");
	if (vm->ndisks == CFG_MAX_DISKS)
		return KEY_ERROR(p, "too many disks (at most %d per VM)",
		    CFG_MAX_DISKS);
	vm->disks = xreallocarray(vm->disks, vm->ndisks + 1, sizeof(char *));
	vm->disk_names = xreallocarray(vm->disk_names, vm->ndisks + 1,
	    sizeof(char *));
	vm->disk_lines = xreallocarray(vm->disk_lines, vm->ndisks + 1,
	    sizeof(int));
	vm->disks[vm->ndisks] = xstrdup(v);
	vm->disk_names[vm->ndisks] = NULL;
	vm->disk_lines[vm->ndisks] = p->lineno;
	vm->ndisks++;
	return 0;
}

/* A libvirt domain's [vm]: domain and tracker libvirt go together. */
static int
check_domain(struct cfg_parse *p, struct cfg_vm *vm, const char *label)
{
	if (vm->domain == NULL) {
		if (vm->tracker == TRACKER_LIBVIRT)
			return cfg_error(p, vm->line, label, "domain",
			    "missing (required with tracker libvirt: the "
			    "libvirt domain's name)");
		if (vm->disks_chosen)
			return cfg_error(p, vm->disks_line, label, "disks",
			    "only used with domain");
		if (vm->libvirt_uri != NULL)
			return cfg_error(p, vm->line, label, "libvirt_uri",
			    "only used with domain");
		if (vm->ndomain_paths > 0)
			return cfg_error(p, vm->domain_paths_line, label,
			    "domain_paths", "only used with domain");
		if (vm->freeze == FREEZE_AGENT)
			return cfg_error(p, vm->line, label, "freeze",
			    "agent needs a libvirt domain (domain = NAME)");
		return 0;
	}
	if (vm->tracker != TRACKER_LIBVIRT && vm->tracker != TRACKER_SCAN)
		return cfg_error(p, vm->line, label, "tracker",
		    "a libvirt domain is tracked by tracker libvirt");
	vm->tracker = TRACKER_LIBVIRT;
	if (vm->ndisks > 0 && !vm->disks_chosen)
		return cfg_error(p, vm->disk_lines[0], label, "disk",
		    "not used with domain (the disks come from the domain's "
		    "definition; choose some with disks = vda ...)");
	if (vm->libvirt_uri == NULL)
		vm->libvirt_uri = xstrdup(CONFIG_DEFAULT_LIBVIRT_URI);
	return 0;
}

static int
check_disks(struct cfg_parse *p, size_t vmi, const char *label)
{
	struct cfg_vm *vm = &p->cfg->vms[vmi];

	for (size_t k = 0; k < vm->ndisks; k++) {
		const char *v = vm->disks[k];
		const char *name = v;
		int line = vm->disk_lines[k];

		if (vm->tracker == TRACKER_LIBVIRT) {
			/* A target (set_disks), checked there. */
		} else if (vm->tracker == TRACKER_QEMU) {
			if (util_disk_name_valid(v) != 0)
				return cfg_error(p, line, label, "disk",
				    "invalid QEMU node name '%s' (with tracker "
				    "qemu, disk names a block node: " NAME_RULES
				    ", not 'test')", v);
		} else {
			if (v[0] != '/')
				return cfg_error(p, line, label, "disk",
				    "path '%s' is not absolute", v);
			name = strrchr(v, '/') + 1;
			if (strcmp(name, "test") == 0)
				return cfg_error(p, line, label, "disk",
				    "disk name 'test' is reserved (test "
				    "failover copies live in STORAGE/VM/test/)");
			if (util_disk_name_valid(name) != 0)
				return cfg_error(p, line, label, "disk",
				    "invalid disk name '%s' in '%s' (the file "
				    "name must be " NAME_RULES ")", name, v);
			for (size_t j = 0; j < vmi; j++) {
				const struct cfg_vm *o = &p->cfg->vms[j];
				if (o->tracker == TRACKER_QEMU ||
				    o->tracker == TRACKER_LIBVIRT)
					continue;
				for (size_t i = 0; i < o->ndisks; i++)
					if (strcmp(o->disks[i], v) == 0)
						return cfg_error(p, line, label,
						    "disk", "%s is already a "
						    "disk of [vm %s]", v,
						    o->name);
			}
		}
		for (size_t i = 0; i < k; i++)
			if (strcmp(vm->disk_names[i], name) == 0)
				return cfg_error(p, line, label, "disk",
				    "duplicate disk name '%s' (%s and %s)",
				    name, vm->disks[i], v);
		free(vm->disk_names[k]);	/* disks = set it already */
		vm->disk_names[k] = xstrdup(name);
	}
	return 0;
}

/* Where this host receives the VM's disks once it is their replica
 * (planned failover, reverse): one path per disk, in disk order. */
static int
set_receive_into(struct cfg_parse *p, const char *v)
{
	struct cfg_vm *vm = cur_vm(p);

	if (vm->nreceive == CFG_MAX_DISKS)
		return KEY_ERROR(p, "too many paths (at most %d per VM)",
		    CFG_MAX_DISKS);
	if (v[0] != '/')
		return KEY_ERROR(p, "path '%s' is not absolute", v);
	for (size_t i = 0; i < vm->nreceive; i++)
		if (strcmp(vm->receive_into[i], v) == 0)
			return KEY_ERROR(p, "%s is named twice", v);
	if (vm->nreceive == 0)
		vm->receive_line = p->lineno;
	vm->receive_into = xreallocarray(vm->receive_into, vm->nreceive + 1,
	    sizeof(char *));
	vm->receive_into[vm->nreceive++] = xstrdup(v);
	return 0;
}

static int
set_replica(struct cfg_parse *p, const char *v)
{
	struct cfg_vm *vm = cur_vm(p);

	return set_hostport(p, v, &vm->replica, vm->replica_host,
	    sizeof(vm->replica_host), &vm->replica_port);
}

static int
set_replica_name(struct cfg_parse *p, const char *v)
{
	if (util_identity_valid(v) != 0)
		return KEY_ERROR(p, "invalid host identity '%s' (" HOST_RULES
		    ")", v);
	cur_vm(p)->replica_name = xstrdup(v);
	return 0;
}

static int
set_interval(struct cfg_parse *p, const char *v)
{
	uint64_t ms;

	if (util_parse_duration_ms(v, &ms) != 0)
		return KEY_ERROR(p, "invalid duration '%s' (e.g. 30s, 5m, 1h)",
		    v);
	if (ms > CFG_MAX_INTERVAL_MS)
		return KEY_ERROR(p, "interval '%s' too long (at most 365d)", v);
	cur_vm(p)->interval_ms = ms;
	return 0;
}

static int
set_tracker(struct cfg_parse *p, const char *v)
{
	if (strcmp(v, "scan") == 0) {
		cur_vm(p)->tracker = TRACKER_SCAN;
		return 0;
	}
	if (strcmp(v, "reflink") == 0) {
		cur_vm(p)->tracker = TRACKER_REFLINK;
		return 0;
	}
	if (strcmp(v, "qemu") == 0) {
		cur_vm(p)->tracker = TRACKER_QEMU;
		return 0;
	}
	if (strcmp(v, "libvirt") == 0) {
		cur_vm(p)->tracker = TRACKER_LIBVIRT;
		return 0;
	}
	return KEY_ERROR(p, "invalid tracker '%s' (expected scan, reflink, "
	    "qemu or libvirt)", v);
}

static int
set_block_size(struct cfg_parse *p, const char *v)
{
	uint64_t n;

	if (util_parse_size(v, &n) != 0)
		return KEY_ERROR(p, "invalid size '%s' (e.g. 4K, 64K, 1M)", v);
	if (n < CFG_MIN_BLOCK_SIZE || n > CFG_MAX_BLOCK_SIZE)
		return KEY_ERROR(p, "block size '%s' out of range (4K to 4M)",
		    v);
	if ((n & (n - 1)) != 0)
		return KEY_ERROR(p, "block size '%s' is not a power of two", v);
	cur_vm(p)->block_size = (uint32_t)n;
	return 0;
}

static int
set_compress(struct cfg_parse *p, const char *v)
{
	struct cfg_vm *vm = cur_vm(p);
	const char *l;
	int level = 0;

	if (strcmp(v, "none") == 0) {
		vm->compress_level = 0;
		return 0;
	}
	if (strcmp(v, "zstd") == 0) {
		vm->compress_level = 1;
		return 0;
	}
	if (strncmp(v, "zstd:", 5) != 0)
		return KEY_ERROR(p, "invalid compression '%s' (expected zstd, "
		    "zstd:LEVEL or none)", v);
	l = v + 5;
	for (size_t i = 0; l[i] != '\0'; i++) {
		if (!isdigit((unsigned char)l[i]) || i >= 2) {
			level = -1;
			break;
		}
		level = level * 10 + (l[i] - '0');
	}
	if (level < 1 || level > CFG_MAX_ZSTD_LEVEL)
		return KEY_ERROR(p, "invalid zstd level '%s' (1 to %d)", l,
		    CFG_MAX_ZSTD_LEVEL);
	vm->compress_level = level;
	return 0;
}

static int
set_pre_snapshot(struct cfg_parse *p, const char *v)
{
	cur_vm(p)->pre_snapshot = xstrdup(v);
	return 0;
}

static int
set_post_snapshot(struct cfg_parse *p, const char *v)
{
	cur_vm(p)->post_snapshot = xstrdup(v);
	return 0;
}

static int
set_qmp(struct cfg_parse *p, const char *v)
{
	if (v[0] != '/')
		return KEY_ERROR(p, "path '%s' is not absolute", v);
	cur_vm(p)->qmp = xstrdup(v);
	return 0;
}

static int
set_domain(struct cfg_parse *p, const char *v)
{
	if (strlen(v) > NAME_MAX_LEN * 4 || strchr(v, '/') != NULL)
		return KEY_ERROR(p, "invalid domain name '%s'", v);
	cur_vm(p)->domain = xstrdup(v);
	return 0;
}

static int
check_uri(struct cfg_parse *p, const char *v)
{
	if (strstr(v, "://") == NULL || strpbrk(v, " \t") != NULL)
		return KEY_ERROR(p, "invalid libvirt URI '%s' (e.g. "
		    "qemu:///system)", v);
	return 0;
}

static int
set_vm_libvirt_uri(struct cfg_parse *p, const char *v)
{
	int r = check_uri(p, v);
	if (r != 0)
		return r;
	free(cur_vm(p)->libvirt_uri);
	cur_vm(p)->libvirt_uri = xstrdup(v);
	return 0;
}

static int
set_acc_libvirt_uri(struct cfg_parse *p, const char *v)
{
	int r = check_uri(p, v);
	if (r != 0)
		return r;
	free(cur_accept(p)->libvirt_uri);
	cur_accept(p)->libvirt_uri = xstrdup(v);
	return 0;
}

/* disks = vda vdb: the domain's disks to replicate, by target. */
static int
set_disks(struct cfg_parse *p, const char *v)
{
	struct cfg_vm *vm = cur_vm(p);
	char *copy, *save = NULL;

	if (vm->ndisks > 0)
		return KEY_ERROR(p, "not used with disk = lines (disks = "
		    "chooses a domain's disks by target)");
	copy = xstrdup(v);

	for (char *t = strtok_r(copy, " \t,", &save); t != NULL;
	    t = strtok_r(NULL, " \t,", &save)) {
		if (util_disk_name_valid(t) != 0) {
			free(copy);
			return KEY_ERROR(p, "invalid disk target '%s' (a "
			    "target such as vda: " NAME_RULES ")", t);
		}
		for (size_t i = 0; i < vm->ndisks; i++)
			if (strcmp(vm->disk_names[i], t) == 0) {
				free(copy);
				return KEY_ERROR(p, "%s is named twice", t);
			}
		if (vm->ndisks == CFG_MAX_DISKS) {
			free(copy);
			return KEY_ERROR(p, "too many disks (at most %d per "
			    "VM)", CFG_MAX_DISKS);
		}
		vm->disks = xreallocarray(vm->disks, vm->ndisks + 1,
		    sizeof(char *));
		vm->disk_names = xreallocarray(vm->disk_names, vm->ndisks + 1,
		    sizeof(char *));
		vm->disk_lines = xreallocarray(vm->disk_lines, vm->ndisks + 1,
		    sizeof(int));
		vm->disks[vm->ndisks] = xstrdup(t);
		vm->disk_names[vm->ndisks] = xstrdup(t);
		vm->disk_lines[vm->ndisks] = p->lineno;
		vm->ndisks++;
	}
	free(copy);
	if (vm->ndisks == 0)
		return KEY_ERROR(p, "no disk target given");
	vm->disks_chosen = 1;
	vm->disks_line = p->lineno;
	return 0;
}

static int
set_freeze(struct cfg_parse *p, const char *v)
{
	if (strcmp(v, "agent") == 0)
		cur_vm(p)->freeze = FREEZE_AGENT;
	else if (strcmp(v, "none") == 0)
		cur_vm(p)->freeze = FREEZE_NONE;
	else
		return KEY_ERROR(p, "invalid freeze '%s' (expected agent or "
		    "none)", v);
	return 0;
}

static int
parse_yes_no(struct cfg_parse *p, const char *v, int *out)
{
	if (strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 ||
	    strcmp(v, "on") == 0)
		*out = 1;
	else if (strcmp(v, "no") == 0 || strcmp(v, "false") == 0 ||
	    strcmp(v, "off") == 0)
		*out = 0;
	else
		return KEY_ERROR(p, "invalid value '%s' (expected yes or no)",
		    v);
	return 0;
}

static int
set_vm_start_on_promote(struct cfg_parse *p, const char *v)
{
	return parse_yes_no(p, v, &cur_vm(p)->start_on_promote);
}

static int
set_acc_start_on_promote(struct cfg_parse *p, const char *v)
{
	return parse_yes_no(p, v, &cur_accept(p)->start_on_promote);
}

static int
parse_shutdown_timeout(struct cfg_parse *p, const char *v, unsigned *out)
{
	uint64_t ms;

	if (util_parse_duration_ms(v, &ms) != 0)
		return KEY_ERROR(p, "invalid duration '%s' (e.g. 30s, 2m)", v);
	if (ms > 3600 * 1000)
		return KEY_ERROR(p, "shutdown_timeout '%s' too long (at most "
		    "1h)", v);
	*out = (unsigned)((ms + 999) / 1000);
	return 0;
}

static int
set_vm_shutdown_timeout(struct cfg_parse *p, const char *v)
{
	return parse_shutdown_timeout(p, v, &cur_vm(p)->shutdown_timeout_s);
}

static int
set_acc_shutdown_timeout(struct cfg_parse *p, const char *v)
{
	return parse_shutdown_timeout(p, v,
	    &cur_accept(p)->shutdown_timeout_s);
}

/*
 * domain_paths = DIR ...: where a point's domain definition may name
 * files of this host (domxml.h).  Absolute, no "..", not / itself.
 */
static int
set_domain_paths(struct cfg_parse *p, const char *v, char ***dirs, size_t *n,
    int *line)
{
	char *copy = xstrdup(v), *tok, *save = NULL;
	int r;

	for (tok = strtok_r(copy, " \t", &save); tok != NULL;
	    tok = strtok_r(NULL, " \t", &save)) {
		size_t len = strlen(tok);
		if (tok[0] != '/') {
			r = KEY_ERROR(p, "path '%s' is not absolute", tok);
			goto out;
		}
		if (strstr(tok, "/../") != NULL || (len >= 3 &&
		    strcmp(tok + len - 3, "/..") == 0)) {
			r = KEY_ERROR(p, "path '%s' has a '..' component", tok);
			goto out;
		}
		while (len > 1 && tok[len - 1] == '/')
			tok[--len] = '\0';
		if (strcmp(tok, "/") == 0) {
			r = KEY_ERROR(p, "/ would let a definition name every "
			    "file of this host: list directories");
			goto out;
		}
		*dirs = xreallocarray(*dirs, *n + 1, sizeof(char *));
		(*dirs)[(*n)++] = xstrdup(tok);
	}
	*line = p->lineno;
	r = 0;
out:
	free(copy);
	return r;
}

static int
set_vm_domain_paths(struct cfg_parse *p, const char *v)
{
	struct cfg_vm *vm = cur_vm(p);
	return set_domain_paths(p, v, &vm->domain_paths, &vm->ndomain_paths,
	    &vm->domain_paths_line);
}

static int
set_acc_domain_paths(struct cfg_parse *p, const char *v)
{
	struct cfg_accept *a = cur_accept(p);
	return set_domain_paths(p, v, &a->domain_paths, &a->ndomain_paths,
	    &a->domain_paths_line);
}

static int
set_app_interval(struct cfg_parse *p, const char *v)
{
	uint64_t ms;

	if (util_parse_duration_ms(v, &ms) != 0)
		return KEY_ERROR(p, "invalid duration '%s' (e.g. 30s, 5m, 1h)",
		    v);
	if (ms > CFG_MAX_INTERVAL_MS)
		return KEY_ERROR(p, "app_interval '%s' too long (at most 365d)",
		    v);
	cur_vm(p)->app_interval_ms = ms;
	return 0;
}

static int
set_snapshot_timeout(struct cfg_parse *p, const char *v)
{
	uint64_t ms;

	if (util_parse_duration_ms(v, &ms) != 0)
		return KEY_ERROR(p, "invalid duration '%s' (e.g. 30s, 5m)", v);
	if (ms < 1000 || ms > 3600 * 1000)
		return KEY_ERROR(p, "snapshot_timeout '%s' out of range (1s to "
		    "1h)", v);
	cur_vm(p)->snapshot_timeout_s = (unsigned)((ms + 999) / 1000);
	return 0;
}

/* "2x" (times the interval, 1 to 1000, one decimal allowed) or a
 * duration. */
static int
set_lag(struct cfg_parse *p, const char *v, struct cfg_lag *out)
{
	size_t n = strlen(v);
	uint64_t ms;

	if (n >= 2 && (v[n - 1] == 'x' || v[n - 1] == 'X')) {
		char *end;
		errno = 0;
		double f = strtod(v, &end);
		if (errno != 0 || end != v + n - 1 || !(f >= 1.0) || f > 1000.0)
			return KEY_ERROR(p, "invalid lag threshold '%s' "
			    "(e.g. 2x the interval, or a duration: 30s)", v);
		out->factor_pct = (uint32_t)(f * 100.0 + 0.5);
		out->ms = 0;
		return 0;
	}
	if (util_parse_duration_ms(v, &ms) != 0 || ms == 0 ||
	    ms > CFG_MAX_INTERVAL_MS)
		return KEY_ERROR(p, "invalid lag threshold '%s' (e.g. 2x the "
		    "interval, or a duration: 30s)", v);
	out->ms = ms;
	out->factor_pct = 0;
	return 0;
}

static int
set_lag_warning(struct cfg_parse *p, const char *v)
{
	return set_lag(p, v, &cur_vm(p)->lag_warning);
}

static int
set_lag_critical(struct cfg_parse *p, const char *v)
{
	return set_lag(p, v, &cur_vm(p)->lag_critical);
}

static int
set_vm_on_promote(struct cfg_parse *p, const char *v)
{
	cur_vm(p)->on_promote = xstrdup(v);
	return 0;
}

static int
set_vm_on_demote(struct cfg_parse *p, const char *v)
{
	cur_vm(p)->on_demote = xstrdup(v);
	return 0;
}

/* [accept NAME] */

static int
set_acc_on_promote(struct cfg_parse *p, const char *v)
{
	cur_accept(p)->on_promote = xstrdup(v);
	return 0;
}

static int
set_acc_on_demote(struct cfg_parse *p, const char *v)
{
	cur_accept(p)->on_demote = xstrdup(v);
	return 0;
}

static int
set_vms(struct cfg_parse *p, const char *v)
{
	struct cfg_accept *a = cur_accept(p);
	char *copy = xstrdup(v), *tok, *save = NULL;
	int r;

	for (tok = strtok_r(copy, " \t", &save); tok != NULL;
	    tok = strtok_r(NULL, " \t", &save)) {
		for (size_t i = 0; tok[i] != '\0'; i++) {
			if (!isalnum((unsigned char)tok[i]) &&
			    strchr("_.+-*?[]", tok[i]) == NULL) {
				r = KEY_ERROR(p, "invalid pattern '%s' (VM "
				    "name characters and * ? [ ])", tok);
				goto out;
			}
		}
		a->vms = xreallocarray(a->vms, a->nvms + 1, sizeof(char *));
		a->vms[a->nvms++] = xstrdup(tok);
	}
	r = 0;
out:
	free(copy);
	return r;
}

static int
set_storage(struct cfg_parse *p, const char *v)
{
	return set_path(p, v, &cur_accept(p)->storage, 1);
}

/*
 * POLICY is RULE[,RULE...]: [app:]KIND=COUNT with KIND one of last,
 * hourly, daily, weekly, monthly, yearly, or within=DURATION.  Stored
 * without the blanks around the commas.
 */
/* Check a retention policy (retention.c); *norm receives its normal form. */
static int
check_retention(struct cfg_parse *p, const char *v, char **norm)
{
	struct ret_policy pol;
	char err[256], buf[RET_POLICY_STRLEN];

	if (ret_parse(v, 0, &pol, err, sizeof(err)) != 0)
		return KEY_ERROR(p, "%s", err);
	ret_format(&pol, buf, sizeof(buf));
	*norm = xstrdup(buf);
	return 0;
}

static int
set_retention(struct cfg_parse *p, const char *v)
{
	return check_retention(p, v, &cur_accept(p)->retention);
}

/* retention.VM = POLICY: the policy of one VM of this entry. */
static int
set_vm_retention(struct cfg_parse *p, const char *vm, const char *v)
{
	struct cfg_accept *a = cur_accept(p);
	char *norm;
	int r;

	if (util_name_valid(vm) != 0)
		return KEY_ERROR(p, "invalid VM name '%s'", vm);
	for (size_t i = 0; i < a->nret; i++)
		if (strcmp(a->ret_vms[i], vm) == 0)
			return KEY_ERROR(p, "duplicate key");
	if ((r = check_retention(p, v, &norm)) != 0)
		return r;
	a->ret_vms = xreallocarray(a->ret_vms, a->nret + 1, sizeof(char *));
	a->ret_policies = xreallocarray(a->ret_policies, a->nret + 1,
	    sizeof(char *));
	a->ret_lines = xreallocarray(a->ret_lines, a->nret + 1, sizeof(int));
	a->ret_lines[a->nret] = p->lineno;
	a->ret_vms[a->nret] = xstrdup(vm);
	a->ret_policies[a->nret++] = norm;
	return 0;
}

static int
set_retention_time(struct cfg_parse *p, const char *v)
{
	if (strcmp(v, "utc") == 0)
		cur_accept(p)->retention_local = 0;
	else if (strcmp(v, "local") == 0)
		cur_accept(p)->retention_local = 1;
	else
		return KEY_ERROR(p, "invalid value '%s' (expected utc or "
		    "local)", v);
	return 0;
}

/* min_free = SIZE or PERCENT% of the storage's file system. */
static int
set_min_free(struct cfg_parse *p, const char *v)
{
	struct cfg_accept *a = cur_accept(p);
	size_t n = strlen(v);
	if (n > 1 && v[n - 1] == '%') {
		unsigned pct = 0;
		size_t i;
		for (i = 0; i < n - 1 && isdigit((unsigned char)v[i]) &&
		    pct < 100; i++)
			pct = pct * 10 + (unsigned)(v[i] - '0');
		if (i != n - 1 || pct < 1 || pct > 90)
			return KEY_ERROR(p, "invalid percentage '%s' (1%% to "
			    "90%%)", v);
		a->min_free_pct = pct;
		a->min_free_bytes = 0;
		return 0;
	}
	if (util_parse_size(v, &a->min_free_bytes) != 0)
		return KEY_ERROR(p, "invalid size '%s' (e.g. 10G, or 5%%)", v);
	a->min_free_pct = 0;
	return 0;
}

/* A count from 1 to max, digits only. */
static int
parse_count(struct cfg_parse *p, const char *v, uint64_t max, uint64_t *out)
{
	uint64_t n = 0;
	size_t i;

	for (i = 0; isdigit((unsigned char)v[i]) && n <= max; i++)
		n = n * 10 + (uint64_t)(v[i] - '0');
	if (i == 0 || v[i] != '\0' || n < 1 || n > max)
		return KEY_ERROR(p, "invalid number '%s' (1 to %" PRIu64 ")", v,
		    max);
	*out = n;
	return 0;
}

/* Quotas of what one primary may make here. */
static int
set_max_vms(struct cfg_parse *p, const char *v)
{
	uint64_t n;
	int r = parse_count(p, v, 100000, &n);
	if (r == 0)
		cur_accept(p)->max_vms = (unsigned)n;
	return r;
}

static int
set_max_disks(struct cfg_parse *p, const char *v)
{
	uint64_t n;
	int r = parse_count(p, v, CFG_MAX_DISKS, &n);
	if (r == 0)
		cur_accept(p)->max_disks = (unsigned)n;
	return r;
}

static int
set_max_disk_size(struct cfg_parse *p, const char *v)
{
	uint64_t n;

	if (util_parse_size(v, &n) != 0 || n == 0 || n > CFG_MAX_DISK_SIZE)
		return KEY_ERROR(p, "invalid size '%s' (e.g. 2T, at most 64P)",
		    v);
	cur_accept(p)->max_disk_size = n;
	return 0;
}

void
cfg_vm_defaults(struct cfg_vm *vm)
{
	memset(vm, 0, sizeof(*vm));
	vm->interval_ms = CONFIG_DEFAULT_INTERVAL_MS;
	vm->tracker = TRACKER_SCAN;
	vm->block_size = CONFIG_DEFAULT_BLOCK_SIZE;
	vm->snapshot_timeout_s = CONFIG_DEFAULT_SNAPSHOT_TIMEOUT_S;
	vm->lag_warning.factor_pct = 200;
	vm->lag_critical.factor_pct = 400;
	vm->compress_level = 1;
	vm->start_on_promote = 1;
	vm->shutdown_timeout_s = CONFIG_DEFAULT_SHUTDOWN_TIMEOUT_S;
}

uint64_t
config_lag_ms(const struct cfg_lag *l, uint64_t interval_ms)
{
	if (l->ms)
		return l->ms;
	return interval_ms * l->factor_pct / 100;
}

const char *
config_retention(const struct cfg_accept *a, const char *vm)
{
	for (size_t i = 0; i < a->nret; i++)
		if (strcmp(a->ret_vms[i], vm) == 0)
			return a->ret_policies[i];
	return a->retention;
}

static const struct cfg_key cfg_keys[] = {
	{ SEC_DAEMON, "state_dir", set_state_dir, 0 },
	{ SEC_DAEMON, "control_socket", set_control_socket, 0 },
	{ SEC_DAEMON, "listen", set_listen, 0 },
	{ SEC_DAEMON, "metrics_listen", set_metrics_listen, 0 },
	{ SEC_DAEMON, "tls_cert", set_tls_cert, 0 },
	{ SEC_DAEMON, "tls_key", set_tls_key, 0 },
	{ SEC_DAEMON, "tls_ca", set_tls_ca, 0 },
	{ SEC_DAEMON, "log_level", set_log_level, 0 },
	{ SEC_DAEMON, "handshake_timeout", set_handshake_timeout, 0 },
	{ SEC_DAEMON, "delta_budget", set_delta_budget, 0 },
	{ SEC_DAEMON, "keepalive", set_keepalive, 0 },
	{ SEC_VM, "disk", set_disk, 1 },
	{ SEC_VM, "replica", set_replica, 0 },
	{ SEC_VM, "replica_name", set_replica_name, 0 },
	{ SEC_VM, "interval", set_interval, 0 },
	{ SEC_VM, "tracker", set_tracker, 0 },
	{ SEC_VM, "block_size", set_block_size, 0 },
	{ SEC_VM, "compress", set_compress, 0 },
	{ SEC_VM, "pre_snapshot", set_pre_snapshot, 0 },
	{ SEC_VM, "post_snapshot", set_post_snapshot, 0 },
	{ SEC_VM, "qmp", set_qmp, 0 },
	{ SEC_VM, "app_interval", set_app_interval, 0 },
	{ SEC_VM, "snapshot_timeout", set_snapshot_timeout, 0 },
	{ SEC_VM, "lag_warning", set_lag_warning, 0 },
	{ SEC_VM, "lag_critical", set_lag_critical, 0 },
	{ SEC_VM, "on_promote", set_vm_on_promote, 0 },
	{ SEC_VM, "on_demote", set_vm_on_demote, 0 },
	{ SEC_VM, "receive_into", set_receive_into, 1 },
	{ SEC_VM, "domain", set_domain, 0 },
	{ SEC_VM, "libvirt_uri", set_vm_libvirt_uri, 0 },
	{ SEC_VM, "disks", set_disks, 0 },
	{ SEC_VM, "freeze", set_freeze, 0 },
	{ SEC_VM, "start_on_promote", set_vm_start_on_promote, 0 },
	{ SEC_VM, "shutdown_timeout", set_vm_shutdown_timeout, 0 },
	{ SEC_VM, "domain_paths", set_vm_domain_paths, 0 },
	{ SEC_ACCEPT, "libvirt_uri", set_acc_libvirt_uri, 0 },
	{ SEC_ACCEPT, "start_on_promote", set_acc_start_on_promote, 0 },
	{ SEC_ACCEPT, "shutdown_timeout", set_acc_shutdown_timeout, 0 },
	{ SEC_ACCEPT, "domain_paths", set_acc_domain_paths, 0 },
	{ SEC_ACCEPT, "on_promote", set_acc_on_promote, 0 },
	{ SEC_ACCEPT, "on_demote", set_acc_on_demote, 0 },
	{ SEC_ACCEPT, "vms", set_vms, 0 },
	{ SEC_ACCEPT, "storage", set_storage, 0 },
	{ SEC_ACCEPT, "retention", set_retention, 0 },
	{ SEC_ACCEPT, "retention_time", set_retention_time, 0 },
	{ SEC_ACCEPT, "min_free", set_min_free, 0 },
	{ SEC_ACCEPT, "max_vms", set_max_vms, 0 },
	{ SEC_ACCEPT, "max_disks", set_max_disks, 0 },
	{ SEC_ACCEPT, "max_disk_size", set_max_disk_size, 0 },
};
_Static_assert(sizeof(cfg_keys) / sizeof(cfg_keys[0]) <=
    sizeof(((struct cfg_parse *)0)->seen) / sizeof(int), "seen[] too small");

static int
cfg_handler(void *user, const char *section, const char *name,
    const char *value)
{
	struct cfg_parse *p = user;
	size_t i;
	int r;

	if (p->failed)
		return 0;
	p->key = name;
	if (p->sec == SEC_NONE) {
		r = KEY_ERROR(p, "key outside any section (expected [daemon], "
		    "[vm NAME] or [accept NAME] first)");
		goto out;
	}
	if (p->sec == SEC_ACCEPT && strncmp(name, "retention.", 10) == 0) {
		r = *value == '\0' ? KEY_ERROR(p, "empty value") :
		    set_vm_retention(p, name + 10, value);
		goto out;
	}
	for (i = 0; i < sizeof(cfg_keys) / sizeof(cfg_keys[0]); i++)
		if (cfg_keys[i].sec == p->sec &&
		    strcmp(cfg_keys[i].name, name) == 0)
			break;
	if (i == sizeof(cfg_keys) / sizeof(cfg_keys[0])) {
		r = KEY_ERROR(p, "unknown key");
		goto out;
	}
	if (p->seen[i] != 0 && !cfg_keys[i].repeatable) {
		r = KEY_ERROR(p, "duplicate key (first set at line %d)",
		    p->seen[i]);
		goto out;
	}
	p->seen[i] = p->lineno;
	if (*value == '\0') {
		r = KEY_ERROR(p, "empty value");
		goto out;
	}
	r = cfg_keys[i].set(p, value);
	if (r == 0 && p->sec == SEC_VM) {
		struct cfg_vm *vm = cur_vm(p);
		char *k = xasprintf("%s%s=%s\n", vm->keys ? vm->keys : "",
		    name, value);
		free(vm->keys);
		vm->keys = k;
	}
out:
	p->key = NULL;
	return r == 0;
}

/* A "[TYPE NAME]" line; text is what is between the brackets. */
static int
cfg_section(struct cfg_parse *p, char *text)
{
	struct config *cfg = p->cfg;
	char *name, *end;
	size_t n;

	text += strspn(text, " \t");
	for (n = strlen(text); n > 0 && (text[n - 1] == ' ' ||
	    text[n - 1] == '\t'); n--)
		text[n - 1] = '\0';
	end = text + strcspn(text, " \t");
	name = end + strspn(end, " \t");
	*end = '\0';
	snprintf(p->label, sizeof(p->label), "%s%s%s", text,
	    *name != '\0' ? " " : "", name);
	p->sec = SEC_NONE;
	memset(p->seen, 0, sizeof(p->seen));

	if (strcmp(text, "daemon") == 0) {
		if (*name != '\0')
			return cfg_error(p, p->lineno, p->label, NULL,
			    "unexpected name: the section is [daemon]");
		if (p->daemon_line != 0)
			return cfg_error(p, p->lineno, p->label, NULL,
			    "duplicate section (first at line %d)",
			    p->daemon_line);
		p->daemon_line = p->lineno;
		p->sec = SEC_DAEMON;
	} else if (strcmp(text, "vm") == 0) {
		if (*name == '\0')
			return cfg_error(p, p->lineno, p->label, NULL,
			    "missing name: expected [vm NAME]");
		if (util_name_valid(name) != 0)
			return cfg_error(p, p->lineno, p->label, NULL,
			    "invalid VM name '%s' (" NAME_RULES ")", name);
		for (size_t i = 0; i < cfg->nvms; i++)
			if (strcmp(cfg->vms[i].name, name) == 0)
				return cfg_error(p, p->lineno, p->label, NULL,
				    "duplicate section (first at line %d)",
				    cfg->vms[i].line);
		cfg->vms = xreallocarray(cfg->vms, cfg->nvms + 1,
		    sizeof(*cfg->vms));
		struct cfg_vm *vm = &cfg->vms[cfg->nvms++];
		memset(vm, 0, sizeof(*vm));
		cfg_vm_defaults(vm);
		snprintf(vm->name, sizeof(vm->name), "%s", name);
		vm->line = p->lineno;
		p->sec = SEC_VM;
	} else if (strcmp(text, "accept") == 0) {
		if (*name == '\0')
			return cfg_error(p, p->lineno, p->label, NULL,
			    "missing name: expected [accept NAME]");
		if (util_identity_valid(name) != 0)
			return cfg_error(p, p->lineno, p->label, NULL,
			    "invalid host identity '%s' (" HOST_RULES ")",
			    name);
		for (size_t i = 0; i < cfg->naccepts; i++)
			if (strcasecmp(cfg->accepts[i].name, name) == 0)
				return cfg_error(p, p->lineno, p->label, NULL,
				    "duplicate section (first at line %d)",
				    cfg->accepts[i].line);
		cfg->accepts = xreallocarray(cfg->accepts, cfg->naccepts + 1,
		    sizeof(*cfg->accepts));
		struct cfg_accept *a = &cfg->accepts[cfg->naccepts++];
		memset(a, 0, sizeof(*a));
		snprintf(a->name, sizeof(a->name), "%s", name);
		a->min_free_bytes = CONFIG_DEFAULT_MIN_FREE;
		a->min_free_pct = CONFIG_DEFAULT_MIN_FREE_PCT;
		a->max_vms = CONFIG_DEFAULT_MAX_VMS;
		a->max_disks = CONFIG_DEFAULT_MAX_DISKS;
		a->max_disk_size = CONFIG_DEFAULT_MAX_DISK_SIZE;
		a->libvirt_uri = xstrdup(CONFIG_DEFAULT_LIBVIRT_URI);
		a->start_on_promote = 1;
		a->shutdown_timeout_s = CONFIG_DEFAULT_SHUTDOWN_TIMEOUT_S;
		a->line = p->lineno;
		p->sec = SEC_ACCEPT;
	} else
		return cfg_error(p, p->lineno, p->label, NULL,
		    "unknown section (expected [daemon], [vm NAME] or "
		    "[accept NAME])");
	return 0;
}

/*
 * inih's reader: one line into str (num bytes), or NULL at the end of the
 * file or after the first error.  inih sees only "KEY = VALUE" lines and
 * blank lines, without comments, so its line count stays ours.
 */
static char *
cfg_reader(char *str, int num, void *stream)
{
	struct cfg_parse *p = stream;
	char *s = p->raw, *q;
	size_t len = 0, n;
	int c, overflow = 0, bad = -1, comment = 0;

	if (p->failed || num < 4)
		return NULL;
	while ((c = getc(p->fp)) != EOF && c != '\n') {
		if (bad < 0 && (c < 0x20 || c == 0x7f) && c != '\t' &&
		    c != '\r')
			bad = c;
		if (len < sizeof(p->raw) - 1)
			p->raw[len++] = (char)c;
		else
			overflow = 1;
	}
	if (c == EOF) {
		if (ferror(p->fp)) {
			p->read_errno = errno != 0 ? errno : EIO;
			p->failed = 1;
			return NULL;
		}
		if (len == 0 && !overflow)
			return NULL;
	}
	p->raw[len] = '\0';
	p->lineno++;
	/* A '\r' is allowed only as part of a "\r\n" line end. */
	if (len > 0 && p->raw[len - 1] == '\r' && !overflow)
		p->raw[--len] = '\0';
	if (bad < 0 && memchr(p->raw, '\r', len) != NULL)
		bad = '\r';
	if (bad >= 0) {
		cfg_error(p, p->lineno, p->sec == SEC_NONE ? NULL : p->label,
		    NULL, "invalid control character 0x%02x", bad);
		return NULL;
	}
	if (p->lineno == 1 && strncmp(s, "\xef\xbb\xbf", 3) == 0)
		s += 3;

	s += strspn(s, " \t");
	if (*s == '#' || *s == ';') {
		*s = '\0';
		comment = 1;
	}
	for (q = s; *q != '\0'; q++) {
		if ((*q == '#' || *q == ';') && q > s && (q[-1] == ' ' ||
		    q[-1] == '\t')) {
			*q = '\0';
			comment = 1;
			break;
		}
	}
	for (n = strlen(s); n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t');
	    n--)
		s[n - 1] = '\0';
	if ((overflow && !comment) || n > (size_t)num - 3) {
		cfg_error(p, p->lineno, p->sec == SEC_NONE ? NULL : p->label,
		    NULL, "line too long (at most %d characters before a "
		    "comment)", num - 3);
		return NULL;
	}

	if (*s == '[') {
		if (s[n - 1] != ']') {
			cfg_error(p, p->lineno, NULL, NULL, "invalid section "
			    "header (expected [daemon], [vm NAME] or "
			    "[accept NAME])");
			return NULL;
		}
		s[n - 1] = '\0';
		if (cfg_section(p, s + 1) != 0)
			return NULL;
		*s = '\0';
	} else if (*s != '\0') {
		/* inih splits at the first '=' or ':'; we want '=' only. */
		size_t klen = strcspn(s, "=:");
		if (s[klen] != '=' || klen == 0) {
			cfg_error(p, p->lineno, p->sec == SEC_NONE ? NULL :
			    p->label, NULL, "syntax error (expected "
			    "KEY = VALUE or [SECTION])");
			return NULL;
		}
	}
	snprintf(str, (size_t)num, "%s\n", s);
	return str;
}

static int
cfg_check_and_fill(struct cfg_parse *p)
{
	struct config *cfg = p->cfg;
	static const char *const tls_names[] = { "tls_cert", "tls_key",
	    "tls_ca" };
	char *tls[3];
	int r;

	if (p->daemon_line == 0)
		return cfg_error(p, 0, NULL, NULL, "missing [daemon] section "
		    "(state_dir is required)");
	if (cfg->state_dir == NULL)
		return cfg_error(p, p->daemon_line, "daemon", "state_dir",
		    "missing (required)");
	if (cfg->naccepts > 0 && cfg->listen == NULL) {
		char label[HOST_MAX_LEN + 8];

		snprintf(label, sizeof(label), "accept %s",
		    cfg->accepts[0].name);
		return cfg_error(p, cfg->accepts[0].line, label, NULL,
		    "[accept] entries need listen in [daemon]");
	}
	if (cfg->nvms == 0 && cfg->listen == NULL)
		return cfg_error(p, p->daemon_line, "daemon", NULL,
		    "nothing to do: no [vm] section and no listen");
	for (size_t i = 0; i < cfg->nvms; i++) {
		struct cfg_vm *vm = &cfg->vms[i];
		char label[NAME_MAX_LEN + 8];

		snprintf(label, sizeof(label), "vm %s", vm->name);
		if ((r = check_domain(p, vm, label)) != 0)
			return r;
		if (vm->ndisks == 0 && vm->domain == NULL)
			return cfg_error(p, vm->line, label, "disk", "missing "
			    "(at least one is required)");
		if (vm->replica == NULL)
			return cfg_error(p, vm->line, label, "replica",
			    "missing (required)");
		if (vm->tracker == TRACKER_QEMU && vm->qmp == NULL)
			return cfg_error(p, vm->line, label, "qmp",
			    "missing (required with tracker qemu: the path of "
			    "the guest's QMP socket)");
		if (vm->tracker != TRACKER_QEMU && vm->qmp != NULL)
			return cfg_error(p, vm->line, label, "qmp",
			    "only used with tracker qemu");
		if ((r = check_disks(p, i, label)) != 0)
			return r;
		if (vm->nreceive != 0 && vm->nreceive != vm->ndisks)
			return cfg_error(p, vm->receive_line, label,
			    "receive_into", "%zu paths for %zu disks (one per "
			    "disk, in the order of the disk lines)",
			    vm->nreceive, vm->ndisks);
		for (size_t k = 0; k < vm->nreceive; k++)
			for (size_t j = 0; j < cfg->nvms; j++)
				for (size_t d = 0; j != i && d <
				    cfg->vms[j].ndisks; d++)
					if (strcmp(cfg->vms[j].disks[d],
					    vm->receive_into[k]) == 0)
						return cfg_error(p,
						    vm->receive_line, label,
						    "receive_into", "%s is a "
						    "disk of [vm %s]",
						    vm->receive_into[k],
						    cfg->vms[j].name);
	}
	tls[0] = cfg->tls_cert;
	tls[1] = cfg->tls_key;
	tls[2] = cfg->tls_ca;
	for (size_t i = 0; i < 3; i++)
		if (tls[i] == NULL)
			return cfg_error(p, p->daemon_line, "daemon",
			    tls_names[i], "missing (required with [vm] "
			    "sections or listen)");

	if (cfg->control_socket == NULL) {
		cfg->control_socket = lay_control_socket(cfg->state_dir);
		if (strlen(cfg->control_socket) >= CFG_SOCK_MAX)
			return cfg_error(p, p->state_dir_line, "daemon",
			    "state_dir", "default control_socket '%s' too "
			    "long for a UNIX socket (at most %zu bytes): set "
			    "control_socket", cfg->control_socket,
			    CFG_SOCK_MAX - 1);
	}
	for (size_t i = 0; i < cfg->nvms; i++)
		if (cfg->vms[i].replica_name == NULL)
			cfg->vms[i].replica_name =
			    xstrdup(cfg->vms[i].replica_host);
	for (size_t i = 0; i < cfg->naccepts; i++) {
		struct cfg_accept *a = &cfg->accepts[i];

		if (a->nvms == 0) {
			a->vms = xcalloc(1, sizeof(char *));
			a->vms[a->nvms++] = xstrdup("*");
		}
		if (a->storage == NULL) {
			a->storage = lay_default_storage(cfg->state_dir);
			a->storage_default = 1;
		}
		if (a->retention == NULL)
			a->retention = xstrdup(CONFIG_DEFAULT_RETENTION);
		/* A policy for a VM this entry never sends is a typo. */
		for (size_t k = 0; k < a->nret; k++) {
			int match = 0;
			for (size_t v = 0; v < a->nvms && !match; v++)
				match = fnmatch(a->vms[v], a->ret_vms[k], 0) == 0;
			if (!match) {
				char label[HOST_MAX_LEN + 16], key[NAME_MAX_LEN + 16];
				snprintf(label, sizeof(label), "accept %s", a->name);
				snprintf(key, sizeof(key), "retention.%s",
				    a->ret_vms[k]);
				return cfg_error(p, a->ret_lines[k], label, key,
				    "VM %s is not among this entry's vms",
				    a->ret_vms[k]);
			}
		}
	}
	return 0;
}

int
config_load(const char *path, struct config **out, char *err, size_t errsz)
{
	struct cfg_parse *p = xcalloc(1, sizeof(*p));
	struct config *cfg = xcalloc(1, sizeof(*cfg));
	int r, pr, saved_errno = 0;

	*out = NULL;
	if (err != NULL && errsz > 0)
		err[0] = '\0';
	cfg->path = xstrdup(path);
	cfg->log_level = LOG_LVL_INFO;
	cfg->handshake_timeout_s = CONFIG_DEFAULT_HANDSHAKE_TIMEOUT_S;
	cfg->delta_budget = CONFIG_DEFAULT_DELTA_BUDGET;
	cfg->keepalive_ms = 10 * 1000;
	p->cfg = cfg;
	p->err = err;
	p->errsz = errsz;

	if ((p->fp = fopen(path, "re")) == NULL) {
		saved_errno = errno;
		r = errno == ENOENT ? RD_ERR_NOT_FOUND : RD_ERR_SYSTEM;
		goto out;
	}
	pr = ini_parse_stream(cfg_reader, p, cfg_handler, p);
	if (p->read_errno != 0) {
		saved_errno = p->read_errno;
		r = RD_ERR_SYSTEM;
		goto out;
	}
	if (p->failed) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if (pr != 0) {
		/* Not reached: our reader passes inih only lines it parses. */
		r = cfg_error(p, pr > 0 ? pr : 0, NULL, NULL, "syntax error");
		goto out;
	}
	if ((r = cfg_check_and_fill(p)) != 0)
		goto out;
	*out = cfg;
	cfg = NULL;
	r = 0;
out:
	if (saved_errno != 0 && err != NULL && errsz > 0)
		snprintf(err, errsz, "%s: %s", path, strerror(saved_errno));
	if (p->fp != NULL)
		fclose(p->fp);
	free(p);
	config_free(cfg);
	if (saved_errno != 0)
		errno = saved_errno;
	return r;
}

static void
free_strv(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void
vm_fields_free(struct cfg_vm *vm)
{
	free(vm->keys);
	free_strv(vm->disks, vm->ndisks);
	free_strv(vm->disk_names, vm->ndisks);
	free(vm->disk_lines);
	free(vm->qmp);
	free(vm->domain);
	free(vm->libvirt_uri);
	free(vm->replica);
	free(vm->replica_name);
	free(vm->pre_snapshot);
	free(vm->post_snapshot);
	free(vm->on_promote);
	free(vm->on_demote);
	free_strv(vm->receive_into, vm->nreceive);
	free_strv(vm->domain_paths, vm->ndomain_paths);
}

void
config_drop_vm(struct config *cfg, size_t i)
{
	vm_fields_free(&cfg->vms[i]);
	memmove(&cfg->vms[i], &cfg->vms[i + 1], (cfg->nvms - i - 1) *
	    sizeof(cfg->vms[0]));
	cfg->nvms--;
}

void
cfg_vm_free(struct cfg_vm *vm)
{
	if (vm == NULL)
		return;
	vm_fields_free(vm);
	free(vm);
}

int
cfg_vm_same(const struct cfg_vm *a, const struct cfg_vm *b)
{
	if (a->keys == NULL || b->keys == NULL || strcmp(a->keys, b->keys) != 0
	    || a->ndisks != b->ndisks)
		return 0;
	for (size_t i = 0; i < a->ndisks; i++)
		if (strcmp(a->disks[i], b->disks[i]) != 0)
			return 0;
	return 1;
}

void
config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->nvms; i++) {
		struct cfg_vm *vm = &cfg->vms[i];

		vm_fields_free(vm);
	}
	free(cfg->vms);
	for (size_t i = 0; i < cfg->naccepts; i++) {
		struct cfg_accept *a = &cfg->accepts[i];

		free_strv(a->vms, a->nvms);
		free(a->storage);
		free(a->retention);
		free_strv(a->ret_vms, a->nret);
		free_strv(a->ret_policies, a->nret);
		free(a->ret_lines);
		free(a->on_promote);
		free(a->on_demote);
		free(a->libvirt_uri);
		free_strv(a->domain_paths, a->ndomain_paths);
	}
	free(cfg->accepts);
	free(cfg->path);
	free(cfg->state_dir);
	free(cfg->control_socket);
	free(cfg->listen);
	free(cfg->metrics_listen);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->tls_ca);
	free(cfg);
}

const struct cfg_vm *
config_find_vm(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nvms; i++)
		if (strcmp(cfg->vms[i].name, name) == 0)
			return &cfg->vms[i];
	return NULL;
}

const struct cfg_accept *
config_match_accept(const struct config *cfg, const char *identity,
    const char *vm)
{
	for (size_t i = 0; i < cfg->naccepts; i++) {
		const struct cfg_accept *a = &cfg->accepts[i];

		if (strcasecmp(a->name, identity) != 0)
			continue;
		for (size_t j = 0; j < a->nvms; j++)
			if (fnmatch(a->vms[j], vm, 0) == 0)
				return a;
	}
	return NULL;
}
