/*
 * metrics.c — the Prometheus endpoint (metrics.h).
 *
 * evhttp parses the requests: GET and HEAD only, headers of at most
 * METRICS_MAX_HEADERS bytes, no body, and a connection idle for
 * METRICS_TIMEOUT_S seconds is closed.  The text is made on the loop
 * thread from what `replctl status` shows (no disk is touched beyond a
 * statvfs and a catalog count per replica).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "buf.h"
#include "config.h"
#include "control.h"
#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "replica.h"
#include "util.h"
#include "svc.h"
#include "work.h"
#include "xmalloc.h"

#define METRICS_TIMEOUT_S	10
#define METRICS_MAX_HEADERS	8192
/* evhttp reads on while it writes an answer (http.c, evhttp_write_buffer):
 * without a high watermark a client that pipelines and does not read
 * grows the input buffer without end. */
#define METRICS_MAX_INPUT	(2 * METRICS_MAX_HEADERS)
/* Connections at once; the listener pauses at the cap (the kernel's
 * backlog holds the next ones), so a stranger cannot take the
 * descriptors the disks and the replication listener need. */
#define METRICS_MAX_CONNS	32
/* A connection's whole life, however it drips bytes in (evhttp's timeout
 * is an idle one). */
#define METRICS_LIFETIME_MS	30000
/* The text is made at most once a second, however many ask: making it
 * queries the catalog for every replica on the loop thread. */
#define METRICS_CACHE_MS	1000

struct mconn {
	struct bufferevent	*bev;	/* our reference (bufferevent_incref) */
	uint64_t		 deadline_ms;
	int			 shut;
};

struct metrics {
	struct svc		*svc;
	struct control		*ctl;
	struct replica_srv	*rsrv;
	struct evhttp		*http;
	struct evconnlistener	*lev;
	struct event		*sweep;	/* every second: reap, deadlines */
	int			 emfile_until_sweep;
	struct mconn		 conns[METRICS_MAX_CONNS];
	int			 nconn;
	uint64_t		 scrapes;
	struct wbuf		 cache;
	uint64_t		 cache_ms;	/* when made; 0: never */
};

/* evconnlistener_set_error_cb() hands evhttp's own argument: one
 * endpoint per daemon. */
static struct metrics *the_metrics;

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
	char line[1024];	/* the longest line is a HELP of ~120 */
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

	if (out == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	m->scrapes++;
	uint64_t now = util_mono_ms();
	if (m->cache_ms == 0 || now - m->cache_ms >= METRICS_CACHE_MS) {
		wb_free(&m->cache);
		wb_init(&m->cache);
		control_metrics(m->ctl, &m->cache);
		host_metrics(m, &m->cache);
		m->cache_ms = now;
	}
	evbuffer_add(out, m->cache.p, m->cache.len);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD)
		evbuffer_drain(out, evbuffer_get_length(out));
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

/* evhttp's bufferevent for a connection it accepted: bounded input, and
 * our reference so that the sweep learns when evhttp is done with it
 * (bufferevent_free() clears the callbacks). */
static struct bufferevent *
new_bev(struct event_base *base, void *arg)
{
	struct metrics *m = arg;
	struct bufferevent *bev;

	if (m->nconn >= METRICS_MAX_CONNS)	/* not reached: paused */
		return NULL;
	bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL)
		return NULL;
	bufferevent_setwatermark(bev, EV_READ, 0, METRICS_MAX_INPUT);
	bufferevent_incref(bev);
	m->conns[m->nconn++] = (struct mconn){ bev,
	    util_mono_ms() + METRICS_LIFETIME_MS, 0 };
	if (m->nconn == METRICS_MAX_CONNS)
		evconnlistener_disable(m->lev);
	return bev;
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct metrics *m = arg;
	uint64_t now = util_mono_ms();

	for (int i = 0; i < m->nconn; ) {
		struct mconn *c = &m->conns[i];
		bufferevent_event_cb ecb;
		bufferevent_getcb(c->bev, NULL, NULL, &ecb, NULL);
		if (ecb == NULL) {		/* evhttp freed it */
			bufferevent_disable(c->bev, EV_READ | EV_WRITE);
			bufferevent_decref(c->bev);	/* closes the socket */
			m->conns[i] = m->conns[--m->nconn];
			continue;
		}
		if (!c->shut && now >= c->deadline_ms) {
			/* evhttp sees the end and frees the connection. */
			evutil_socket_t s = bufferevent_getfd(c->bev);
			if (s >= 0)
				shutdown(s, SHUT_RDWR);
			c->shut = 1;
		}
		i++;
	}
	if (m->emfile_until_sweep > 0)
		m->emfile_until_sweep--;
	if (m->nconn < METRICS_MAX_CONNS && m->emfile_until_sweep == 0)
		evconnlistener_enable(m->lev);
}

/* Out of descriptors: evconnlistener would retry accept() at every turn
 * of the loop (and libevent log each failure); pause until a sweep. */
static void
on_accept_error(struct evconnlistener *lev, void *arg)
{
	struct metrics *m = the_metrics;
	int err = EVUTIL_SOCKET_ERROR();

	if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
		log_warnx("metrics: accept: %s",
		    evutil_socket_error_to_string(err));
		return;
	}
	if (m->emfile_until_sweep == 0)
		log_warnx("metrics: accept: %s: not accepting for a second",
		    evutil_socket_error_to_string(err));
	evconnlistener_disable(lev);
	m->emfile_until_sweep = 1;
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
	wb_init(&m->cache);
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
	evhttp_set_bevcb(m->http, new_bev, m);
	struct evhttp_bound_socket *bound;
	if ((bound = evhttp_bind_socket_with_handle(m->http, cfg->metrics_host,
	    cfg->metrics_port)) == NULL) {
		snprintf(err, errsz, "metrics_listen %s: cannot listen there "
		    "(address in use, or not this host's?)",
		    cfg->metrics_listen);
		evhttp_free(m->http);
		free(m);
		return NULL;
	}
	m->lev = evhttp_bound_socket_get_listener(bound);
	evconnlistener_set_error_cb(m->lev, on_accept_error);
	the_metrics = m;
	struct timeval one = { 1, 0 };
	m->sweep = event_new(svc->base, -1, EV_PERSIST, on_sweep, m);
	event_add(m->sweep, &one);
	log_info("metrics on http://%s/metrics", cfg->metrics_listen);
	return m;
}

void
metrics_fini(struct metrics *m)
{
	if (m == NULL)
		return;
	evhttp_free(m->http);
	for (int i = 0; i < m->nconn; i++) {
		bufferevent_disable(m->conns[i].bev, EV_READ | EV_WRITE);
		bufferevent_decref(m->conns[i].bev);
	}
	event_free(m->sweep);
	wb_free(&m->cache);
	the_metrics = NULL;
	free(m);
}
