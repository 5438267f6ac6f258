/*
 * config.h — replicad's configuration file (INI, parsed with inih).
 *
 * Sections [daemon], [vm NAME] (repeatable, one per protected VM) and
 * [accept NAME] (repeatable, one per primary host allowed to replicate
 * here).  Keys and defaults are in man/replicad.conf.5 and SPEC.md.
 * config_load() returns a fully validated configuration or an error
 * message that names the file, the line and the key.  All paths in the
 * result are absolute.  The caller owns the result (config_free()).
 */
#ifndef REPLICAD_CONFIG_H
#define REPLICAD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "util.h"

#define CONFIG_DEFAULT_PATH	"/etc/replicad/replicad.conf"
#define CONFIG_DEFAULT_INTERVAL_MS	(5 * 60 * 1000)
#define CONFIG_DEFAULT_BLOCK_SIZE	(64 * 1024)
#define CONFIG_DEFAULT_RETENTION	"last=24"
#define CONFIG_DEFAULT_SNAPSHOT_TIMEOUT_S	60
#define CONFIG_DEFAULT_HANDSHAKE_TIMEOUT_S	15
#define CFG_MAX_DISKS		64	/* disks per VM (the wire's bound) */
#define CONFIG_DEFAULT_DELTA_BUDGET	1024	/* false matches per MiB */
#define CFG_MAX_DISK_SIZE	(UINT64_C(1) << 56)	/* the store's bound */
/* [accept] defaults (replicad.conf(5) says why): min_free is the smaller
 * of 1G and 5% of the storage's file system. */
#define CONFIG_DEFAULT_MIN_FREE		(UINT64_C(1) << 30)
#define CONFIG_DEFAULT_MIN_FREE_PCT	5
#define CONFIG_DEFAULT_MAX_VMS		64
#define CONFIG_DEFAULT_MAX_DISKS	16
#define CONFIG_DEFAULT_MAX_DISK_SIZE	(UINT64_C(16) << 40)

enum cfg_tracker {
	TRACKER_SCAN = 0,
	TRACKER_REFLINK,
	TRACKER_QEMU,
	TRACKER_LIBVIRT,
};

/* How the guest's file systems are frozen for an app-consistent point. */
enum cfg_freeze {
	FREEZE_NONE = 0,	/* pre_snapshot/post_snapshot hooks only */
	FREEZE_AGENT,		/* libvirt's guest agent (tracker libvirt) */
};

#define CONFIG_DEFAULT_LIBVIRT_URI	"qemu:///system"
#define CONFIG_DEFAULT_SHUTDOWN_TIMEOUT_S	120

/* A lag threshold: a duration, or a multiple of the interval. */
struct cfg_lag {
	uint64_t	 ms;		/* 0: factor_pct applies */
	uint32_t	 factor_pct;	/* 200 = twice the interval */
};

struct cfg_vm {
	char		 name[NAME_MAX_LEN + 1];
	char		**disks;	/* absolute paths, in file order (tracker
					   qemu: QEMU block node names; tracker
					   libvirt: the domain's source files,
					   see virt_resolve()) */
	char		**disk_names;	/* base names, unique, util_disk_name_valid */
	int		*disk_lines;	/* where each was set (NULL if made
					   from the catalog) */
	size_t		 ndisks;	/* >= 1 */
	char		*replica;	/* "HOST:PORT" as written */
	char		 replica_host[HOST_MAX_LEN + 1];
	uint16_t	 replica_port;
	char		*replica_name;	/* identity expected in the replica's
					   certificate; default replica_host */
	uint64_t	 interval_ms;	/* 0 = only on `replctl sync` */
	enum cfg_tracker tracker;
	char		*qmp;		/* tracker qemu: QMP socket path */
	char		*domain;	/* tracker libvirt: the domain's name */
	char		*libvirt_uri;	/* default CONFIG_DEFAULT_LIBVIRT_URI */
	int		 disks_chosen;	/* disks = TARGET ... was given (else
					   every disk of the domain) */
	int		 disks_line;
	enum cfg_freeze	 freeze;
	int		 start_on_promote; /* start the domain it defines */
	unsigned	 shutdown_timeout_s; /* ACPI shutdown, then destroy */
	char		**domain_paths;	/* where a point's definition may name
					   files of this host (domxml.h);
					   absolute, no trailing '/' */
	size_t		 ndomain_paths;	/* 0: the [accept] entry's */
	int		 domain_paths_line;
	uint32_t	 block_size;	/* power of two, 4K..4M */
	int		 compress_level; /* 0 = none, else zstd level 1..19 */
	char		*pre_snapshot;	/* NULL if unset */
	char		*post_snapshot;
	unsigned	 snapshot_timeout_s; /* for pre/post_snapshot */
	uint64_t	 app_interval_ms; /* 0: freeze at every cut; else only
					   when the last app point is older */
	struct cfg_lag	 lag_warning;	/* health turns warning past it */
	struct cfg_lag	 lag_critical;
	char		*on_promote;	/* hooks of failover; NULL if unset */
	char		*on_demote;
	char		**receive_into;	/* where this host receives the disks
					   as the VM's replica (absolute, one
					   per disk); NULL: see failover.c */
	size_t		 nreceive;	/* 0 or ndisks */
	int		 receive_line;
	int		 line;		/* line of the section header */
	char		*keys;		/* the section's keys and values as
					   written, in order (NULL if made from
					   the catalog): cfg_vm_same() */
};

struct cfg_accept {
	char		 name[HOST_MAX_LEN + 1]; /* identity in the certificate */
	char		**vms;		/* glob patterns; default one "*" */
	size_t		 nvms;
	char		*storage;	/* default STATE_DIR/replicas */
	int		 storage_default; /* storage not set: follows state_dir */
	char		*retention;	/* default "last=24" */
	char		**ret_vms;	/* retention.VM = POLICY overrides */
	char		**ret_policies;
	int		*ret_lines;	/* where each was set */
	size_t		 nret;
	int		 retention_local; /* buckets in local time, not UTC */
	uint64_t	 min_free_bytes; /* 0: none (or a percentage) */
	unsigned	 min_free_pct;	/* 0: none; both set: the smaller */
	unsigned	 max_vms;	/* relationships it may have here */
	unsigned	 max_disks;	/* disks of a new VM */
	uint64_t	 max_disk_size;	/* bytes of each disk */
	char		*on_promote;	/* run when a VM of this entry becomes
					   primary here; NULL if unset */
	char		*on_demote;
	char		*libvirt_uri;	/* where its domains are defined */
	int		 start_on_promote;
	unsigned	 shutdown_timeout_s;
	char		**domain_paths;	/* as in [vm]; 0: none */
	size_t		 ndomain_paths;
	int		 domain_paths_line;
	int		 line;
};

struct config {
	char		*path;		/* the file, as given */
	char		*state_dir;
	char		*control_socket; /* default STATE_DIR/control.sock */
	char		*listen;	/* NULL if not a replica */
	char		 listen_host[HOST_MAX_LEN + 1];
	uint16_t	 listen_port;
	char		*metrics_listen; /* NULL: no metrics endpoint */
	char		 metrics_host[HOST_MAX_LEN + 1];
	uint16_t	 metrics_port;
	char		*tls_cert;
	char		*tls_key;
	char		*tls_ca;
	int		 tls_line[3];	/* lines of tls_cert, tls_key, tls_ca */
	enum log_level	 log_level;
	int		 log_debug_forced; /* replicad -d: debug whatever
					   log_level says (reloads keep it) */
	unsigned	 handshake_timeout_s; /* accept to a valid HELLO */
	uint32_t	 delta_budget;	/* false matches per MiB of a resync
					   delta; 0: no bound */
	uint32_t	 keepalive_ms;	/* KEEPALIVE frames when idle (wire.h) */
	struct cfg_vm	*vms;
	size_t		 nvms;
	struct cfg_accept *accepts;
	size_t		 naccepts;
};

/*
 * Load and validate path.  On failure returns RD_ERR_INVALID (or
 * RD_ERR_NOT_FOUND / RD_ERR_SYSTEM if the file cannot be read) and writes
 * one line such as "replicad.conf:12: [vm web01] interval: invalid
 * duration 'soon'" into err.
 */
int	config_load(const char *path, struct config **out, char *err,
	    size_t errsz);
void	config_free(struct config *cfg);
/* The same section, to a reload: the same keys and values in the same
 * order, and the same disks (a domain's are resolved from libvirt). */
int	cfg_vm_same(const struct cfg_vm *a, const struct cfg_vm *b);
/* The retention policy of vm under the [accept] entry a. */
const char *config_retention(const struct cfg_accept *a, const char *vm);
/* Every field of vm to its default (zero, or the documented default). */
void	cfg_vm_defaults(struct cfg_vm *vm);
/* Remove the [vm] section cfg->vms[i] (the later ones move down). */
void	config_drop_vm(struct config *cfg, size_t i);
/* Free a struct cfg_vm allocated on its own (every field, then vm). */
void	cfg_vm_free(struct cfg_vm *vm);

/* A lag threshold in milliseconds for interval_ms (0: no threshold). */
uint64_t config_lag_ms(const struct cfg_lag *l, uint64_t interval_ms);

/* The [vm] section named name, or NULL. */
const struct cfg_vm *config_find_vm(const struct config *cfg,
	    const char *name);
/* The first [accept] entry whose name equals identity (case-insensitive)
 * and one of whose vms patterns matches vm (fnmatch), or NULL. */
const struct cfg_accept *config_match_accept(const struct config *cfg,
	    const char *identity, const char *vm);

#endif
