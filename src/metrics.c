/*
 * metrics.c — the Prometheus endpoint (metrics.h).
 *
 * evhttp parses the requests: GET and HEAD only, headers of at most
 * METRICS_MAX_HEADERS bytes, no body, and a connection idle for
 * METRICS_TIMEOUT_S seconds is closed.  The text is made on the loop
 * thread from what `replctl status` shows (no disk is touched beyond a
 * statvfs and a catalog count per replica).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "buf.h"
#include "config.h"
#include "control.h"
#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "replica.h"
#include "svc.h"
#include "work.h"
#include "xmalloc.h"

#define METRICS_TIMEOUT_S	10
#define METRICS_MAX_HEADERS	8192

struct metrics {
	struct svc		*svc;
	struct control		*ctl;
	struct replica_srv	*rsrv;
	struct evhttp		*http;
	uint64_t		 scrapes;
};

/* Short, fixed label values for gate_why (gate_why_str() is prose). */
static const char *const reason_label[GATE_NWHY] = {
	[GATE_EVICTED] = "evicted",
	[GATE_DEADLINE] = "deadline",
	[GATE_TLS] = "tls",
	[GATE_AUTH_FULL] = "too_many_sessions",
	[GATE_STOPPING] = "stopping",
	[GATE_NOT_ACCEPTED] = "not_accepted",
};

static void
host_metrics(struct metrics *m, struct wbuf *b)
{
	struct gate_counters gc;
	char line[256];
	int n;

	replica_gate_counters(m->rsrv, &gc);
#define PUT(...) do {							\
	n = snprintf(line, sizeof(line), __VA_ARGS__);			\
	if (n >= (int)sizeof(line))					\
		n = (int)sizeof(line) - 1;				\
	wb_put_bytes(b, line, n > 0 ? (size_t)n : 0);			\
} while (0)
	PUT("# HELP replicad_sessions Connections from primaries now, by "
	    "whether their certificate was verified.\n"
	    "# TYPE replicad_sessions gauge\n");
	PUT("replicad_sessions{state=\"unauthenticated\"} %u\n", gc.unauth);
	PUT("replicad_sessions{state=\"authenticated\"} %u\n", gc.auth);
	PUT("# HELP replicad_refused_connections_total Connections dropped "
	    "before authentication since replicad started, by reason.\n"
	    "# TYPE replicad_refused_connections_total counter\n");
	for (int i = 0; i < GATE_NWHY; i++)
		PUT("replicad_refused_connections_total{reason=\"%s\"} %llu\n",
		    reason_label[i], (unsigned long long)gc.dropped[i]);
	PUT("# HELP replicad_worker_jobs Jobs queued or running on the "
	    "worker threads.\n# TYPE replicad_worker_jobs gauge\n"
	    "replicad_worker_jobs %d\n", work_pending());
	PUT("# HELP replicad_scrapes_total Requests for /metrics answered.\n"
	    "# TYPE replicad_scrapes_total counter\n"
	    "replicad_scrapes_total %llu\n", (unsigned long long)m->scrapes);
#undef PUT
}

static void
on_metrics(struct evhttp_request *req, void *arg)
{
	struct metrics *m = arg;
	struct evbuffer *out = evbuffer_new();
	struct wbuf b;

	if (out == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	m->scrapes++;
	wb_init(&b);
	control_metrics(m->ctl, &b);
	host_metrics(m, &b);
	evbuffer_add(out, b.p, b.len);
	wb_free(&b);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

static void
on_other(struct evhttp_request *req, void *arg)
{
	evhttp_send_error(req, HTTP_NOTFOUND, "replicad serves /metrics only");
}

struct metrics *
metrics_init(struct svc *svc, struct control *ctl, struct replica_srv *rsrv,
    char *err, size_t errsz)
{
	const struct config *cfg = svc->cfg;
	struct metrics *m = xcalloc(1, sizeof(*m));

	m->svc = svc;
	m->ctl = ctl;
	m->rsrv = rsrv;
	if ((m->http = evhttp_new(svc->base)) == NULL) {
		snprintf(err, errsz, "metrics_listen: cannot create the HTTP "
		    "server");
		free(m);
		return NULL;
	}
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_max_headers_size(m->http, METRICS_MAX_HEADERS);
	evhttp_set_max_body_size(m->http, 0);
	evhttp_set_timeout(m->http, METRICS_TIMEOUT_S);
	evhttp_set_cb(m->http, "/metrics", on_metrics, m);
	evhttp_set_gencb(m->http, on_other, m);
	if (evhttp_bind_socket_with_handle(m->http, cfg->metrics_host,
	    cfg->metrics_port) == NULL) {
		snprintf(err, errsz, "metrics_listen %s: cannot listen there "
		    "(address in use, or not this host's?)",
		    cfg->metrics_listen);
		evhttp_free(m->http);
		free(m);
		return NULL;
	}
	log_info("metrics on http://%s/metrics", cfg->metrics_listen);
	return m;
}

void
metrics_fini(struct metrics *m)
{
	if (m == NULL)
		return;
	evhttp_free(m->http);
	free(m);
}
