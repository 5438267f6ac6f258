/*
 * metrics.h — the Prometheus endpoint: metrics_listen = HOST:PORT serves
 * GET /metrics in the text exposition format (libevent's evhttp), the
 * VMs' metrics (control_metrics()) and the host's.  No authentication:
 * bind it to an address only the monitoring host reaches.
 */
#ifndef REPLICAD_METRICS_H
#define REPLICAD_METRICS_H

#include <stddef.h>

struct control;
struct replica_srv;
struct svc;

/* NULL with err if the address cannot be bound. */
struct metrics *metrics_init(struct svc *svc, struct control *ctl,
	    struct replica_srv *rsrv, char *err, size_t errsz);
void	metrics_fini(struct metrics *m);

#endif
