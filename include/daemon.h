/*
 * daemon.h — the state one replicad process owns, handed to each module:
 * configuration, event loop, catalog, TLS contexts, and the VMs in both
 * roles.  Created by daemon_init(), run by daemon_run().
 */
#ifndef REPLICAD_DAEMON_H
#define REPLICAD_DAEMON_H

#include <stddef.h>
#include <openssl/ssl.h>

#include "catalog.h"
#include "config.h"

struct event_base;
struct pvm;
struct rvm;

struct daemon {
	struct config		*cfg;
	struct event_base	*base;
	struct catalog		*cat;
	SSL_CTX			*client_ctx;	/* NULL if no [vm] */
	SSL_CTX			*server_ctx;	/* NULL if no listen */
	struct pvm		**pvms;		/* primary role */
	size_t			 npvms;
	struct rvm		**rvms;		/* replica role */
	size_t			 nrvms;
	int			 stopping;
	int			 lock_fd;	/* flock on STATE_DIR/.lock */
	struct replica_srv	*rsrv;
	struct control		*ctl;
};

/* Set up everything from cfg (which the daemon then owns); fatal on
 * start-up errors. */
struct daemon *daemon_init(struct config *cfg);
/* Run until SIGTERM or SIGINT; returns the exit code. */
int	daemon_run(struct daemon *d);
void	daemon_fini(struct daemon *d);
/* The VMs of the primary role come and go with failovers. */
void	daemon_add_pvm(struct daemon *d, struct pvm *vm);
void	daemon_remove_pvm(struct daemon *d, struct pvm *vm);
struct pvm *daemon_find_pvm(struct daemon *d, const char *name);

#endif
