/*
 * replicad — the replication daemon.  See replicad(8).
 */
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "daemon.h"
#include "err.h"
#include "log.h"
#include "notify.h"
#include "tls.h"
#include "tracker.h"
#include "trk_backend.h"
#include "virt.h"

#define REPLICAD_VERSION "0.8.0"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: replicad [-c FILE] [--check] [--syslog] [-d]\n"
	    "\n"
	    "  -c, --config FILE  configuration (default %s)\n"
	    "      --check        validate the configuration and its TLS files, and that\n"
	    "                     each VM's tracker can work on this host (disks readable,\n"
	    "                     reflinks, QEMU's nodes; exit 1 if not; a guest not\n"
	    "                     running is a warning), and exit\n"
	    "      --syslog       log to syslog as well as stderr\n"
	    "  -d, --debug        log at debug level\n"
	    "  -h, --help         this help\n"
	    "  -V, --version      print the version\n"
	    "\n"
	    "Exit codes: 0 success, 1 failure, 2 usage or configuration error.\n",
	    CONFIG_DEFAULT_PATH);
}

/*
 * What TLS itself would accept but no peer will: a tls_ca with no CA in it
 * (a host's own certificate given by mistake: every handshake fails) is
 * an error; a CA that does not verify this host's own certificate (peers
 * that trust the same file refuse it) a warning (sites may use CAs of
 * their own).  tls_ctx_new() checked the rest: files readable, the key
 * the certificate's and not readable by others.  The number of errors.
 */
static int
check_tls_material(const struct config *cfg)
{
	int errors = 0, cas = 0;
	X509 *x;
	FILE *f = fopen(cfg->tls_ca, "r");

	while (f != NULL && (x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
		cas += X509_check_ca(x) > 0;
		X509_free(x);
	}
	if (f != NULL)
		fclose(f);
	if (cas == 0) {
		fprintf(stderr, "replicad: %s:%d: [daemon] tls_ca %s holds no "
		    "CA certificate (is it a host's own certificate?): no "
		    "peer's certificate can be verified\n", cfg->path,
		    cfg->tls_line[2], cfg->tls_ca);
		errors++;
	}

	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	STACK_OF(X509) *chain = sk_X509_new_null();
	X509 *own = NULL;
	if ((f = fopen(cfg->tls_cert, "r")) != NULL) {
		own = PEM_read_X509(f, NULL, NULL, NULL);
		while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL)
			sk_X509_push(chain, x);
		fclose(f);
	}
	if (cas > 0 && own != NULL && store && ctx && chain &&
	    X509_STORE_load_file(store, cfg->tls_ca) == 1 &&
	    X509_STORE_CTX_init(ctx, store, own, chain) == 1 &&
	    X509_verify_cert(ctx) != 1)
		fprintf(stderr, "replicad: %s:%d: [daemon] warning: tls_ca %s "
		    "does not verify this host's certificate %s (%s): peers "
		    "that trust the same CA refuse it\n", cfg->path,
		    cfg->tls_line[2], cfg->tls_ca, cfg->tls_cert,
		    X509_verify_cert_error_string(
		    X509_STORE_CTX_get_error(ctx)));
	X509_free(own);
	sk_X509_pop_free(chain, X509_free);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return errors;
}

/* --check: the file, then the TLS material it names. */
static int
check(struct config *cfg)
{
	static const char *keys[] = { "tls_cert", "tls_key", "tls_ca" };
	char err[512];
	SSL_CTX *ctx;

	if (cfg->tls_cert && cfg->tls_key && cfg->tls_ca) {
		if ((ctx = tls_ctx_new(1, cfg->tls_cert, cfg->tls_key,
		    cfg->tls_ca, err, sizeof(err))) == NULL) {
			/* tls_ctx_new names the key first: find its line. */
			int line = 0;
			for (int i = 0; i < 3; i++)
				if (strncmp(err, keys[i], strlen(keys[i])) == 0)
					line = cfg->tls_line[i];
			fprintf(stderr, "replicad: %s:%d: [daemon] %s\n",
			    cfg->path, line, err);
			return 2;
		}
		SSL_CTX_free(ctx);
		if (check_tls_material(cfg) != 0)
			return 2;
	}
	/* Can each VM's tracker work here (disks readable, reflinks, QEMU
	 * reachable)? */
	int rc = 0, r;
	for (size_t i = 0; i < cfg->nvms; i++) {
		const struct cfg_vm *vm = &cfg->vms[i];
		if ((r = trk_check(vm, cfg->state_dir, err, sizeof(err))) ==
		    TRK_CHECK_NOT_RUNNING) {
			fprintf(stderr, "replicad: %s:%d: [vm %s] warning: "
			    "tracker %s: %s (the guest is not running? its "
			    "cycles wait for it)\n", cfg->path, vm->line,
			    vm->name, trk_backend_name(vm->tracker), err);
		} else if (r != 0) {
			fprintf(stderr, "replicad: %s:%d: [vm %s] tracker %s: "
			    "%s\n", cfg->path, vm->line, vm->name,
			    trk_backend_name(vm->tracker),
			    err);
			rc = 1;
		}
	}
	if (rc != 0)
		return rc;
	printf("%s: configuration OK (%zu VMs, %zu accept entries%s)\n",
	    cfg->path, cfg->nvms, cfg->naccepts, cfg->listen ?
	    ", listening" : "");
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 'C' },
		{ "syslog", no_argument, NULL, 'S' },
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	const char *path = CONFIG_DEFAULT_PATH;
	int do_check = 0, use_syslog = 0, debug = 0, ch, rc;
	struct config *cfg;
	char err[1024];

	while ((ch = getopt_long(argc, argv, "c:dhV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': path = optarg; break;
		case 'C': do_check = 1; break;
		case 'S': use_syslog = 1; break;
		case 'd': debug = 1; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("replicad %s\n", REPLICAD_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "replicad: unexpected argument '%s'\n",
		    argv[optind]);
		usage(stderr);
		return 2;
	}
	log_init("replicad", use_syslog);
	/*
	 * Buffers of a megabyte or more come and go by the hundred per
	 * cycle, often freed by another thread than the one that made them.
	 * A fixed mmap threshold returns them to the system at once; glibc's
	 * sliding one would keep them in the heap, and the daemon's memory
	 * would grow with the amount of data replicated.
	 */
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
	if (config_load(path, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "replicad: %s\n", err);
		return 2;
	}
	if (debug) {
		cfg->log_level = LOG_LVL_DEBUG;
		cfg->log_debug_forced = 1;
	}
	virt_init();
	if (virt_resolve_all(cfg, do_check) != 0) {
		config_free(cfg);
		return 1;
	}
	if (do_check) {
		rc = check(cfg);
		config_free(cfg);
		return rc;
	}
	notify_init();
	struct daemon *d = daemon_init(cfg);
	rc = daemon_run(d);
	daemon_fini(d);
	return rc;
}
