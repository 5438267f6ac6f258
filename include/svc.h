/*
 * svc.h — what one replicad process shares with its modules: the
 * configuration, the event loop, the catalog, the VM table and the TLS
 * contexts.  daemon.c makes it at start-up and hands it to each module's
 * init; nothing in it points back at a module above (control, failover,
 * the roles), so that those never reach each other through it.
 */
#ifndef REPLICAD_SVC_H
#define REPLICAD_SVC_H

#include <openssl/ssl.h>

struct catalog;
struct config;
struct dialer;
struct event_base;
struct vmtab;

struct svc {
	const struct config	*cfg;
	struct event_base	*base;
	struct catalog		*cat;
	struct vmtab		*vt;
	SSL_CTX			*client_ctx;	/* NULL without tls_cert */
	SSL_CTX			*server_ctx;	/* NULL without listen */
	struct dialer		*dialer;	/* turns for new connections to
						   replicas (dial.h) */
	int			 stopping;	/* SIGTERM: no new work */
};

#endif
