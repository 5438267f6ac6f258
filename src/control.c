/*
 * control.c — replctl's requests, answered in the daemon.
 *
 * One request per connection (ctl.h).  Commands that read or write disk
 * images (test failover, verify) run as worker jobs; `sync --wait` keeps
 * the connection until the cycle ends.  The daemon checks every argument
 * again: replctl is not trusted any more than the network.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "catalog.h"
#include "config.h"
#include "control.h"
#include "ctl.h"
#include "err.h"
#include "failover.h"
#include "log.h"
#include "primary.h"
#include "reload.h"
#include "replica.h"
#include "retention.h"
#include "store.h"
#include "svc.h"
#include "util.h"
#include "vmdom.h"
#include "vmtab.h"
#include "work.h"
#include "xmalloc.h"

#define REQUEST_TIMEOUT_S	30

struct control {
	struct svc		*svc;
	struct evconnlistener	*listener;
	struct cconn		*conns;
};

/* Options a request may carry, after the command and the VM. */
struct opts {
	const char	*vm;
	int		 json, wait, test, cleanup, planned, commit, dry_run;
	int		 start;
	int		 has_point;
	uint64_t	 point;
	const char	*to;
	const char	*name;
	const char	*host;
};

struct cconn {
	struct control		*ctl;
	struct cconn		*next;
	struct bufferevent	*bev;
	int			 busy;		/* a job or a sync waits */
	int			 gone;		/* the client left */
	int			 finished;	/* EXIT queued */
	int			 dispatched;	/* the request was read */
	struct wbuf		 out;
	struct pvm		*waiting;	/* sync --wait */
	struct event		*progress_ev;	/* reports while waiting */
	uint64_t		 prog_bytes;	/* at the last report */
	uint64_t		 prog_ms;
	/* job state */
	struct vme		*e;		/* the VM a store job uses */
	struct rvm		*rvm;
	struct opts		 o;
	int			 rc;
	char			 err[1024];
	char			*paths[CAT_MAX_DISKS];
	char			 dommsg[2048];	/* test failover's domain */
	int			 dom_failed;
	uint64_t		 point;
	uint64_t		 blocks;
	uint64_t		 segments;	/* verify --point: undo segments checked */
	/* prune: the VMs left to do, and what to print */
	char			**todo;
	size_t			 ntodo, itodo;
	struct wbuf		 text;
	int			 failed;
	char			 policy[512];
	int			 local_time;
};

/* --- replies ------------------------------------------------------------- */

static void conn_free(struct cconn *c);

static void
reply(struct cconn *c, uint8_t type, const char *fmt, va_list ap)
{
	char *text;
	if (vasprintf(&text, fmt, ap) < 0)
		fatalx("out of memory");
	if (!c->gone && c->bev) {
		ctl_put_reply(&c->out, type, text, strlen(text));
		bufferevent_write(c->bev, c->out.p, c->out.len);
		wb_reset(&c->out);
	}
	free(text);
}

static void
out(struct cconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
out(struct cconn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply(c, CTL_OUT, fmt, ap);
	va_end(ap);
}

static void
err(struct cconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
err(struct cconn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply(c, CTL_ERR, fmt, ap);
	va_end(ap);
}

static void
progress(struct cconn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void
progress(struct cconn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply(c, CTL_PROGRESS, fmt, ap);
	va_end(ap);
}

static void
on_flushed(struct bufferevent *bev, void *arg)
{
	struct cconn *c = arg;
	if (c->finished && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		c->gone = 1;
		if (!c->busy)
			conn_free(c);
	}
}

static void
finish(struct cconn *c, int code)
{
	if (c->gone || c->bev == NULL) {
		if (!c->busy)
			conn_free(c);
		return;
	}
	ctl_put_exit(&c->out, (uint8_t)code);
	bufferevent_write(c->bev, c->out.p, c->out.len);
	wb_reset(&c->out);
	c->finished = 1;
	on_flushed(c->bev, c);
}

static void
fail(struct cconn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void
fail(struct cconn *c, int code, const char *fmt, ...)
{
	va_list ap;
	char msg[3072];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	err(c, "replctl: %s\n", msg);
	finish(c, code);
}

/* --- JSON ---------------------------------------------------------------- */

static void
json_str(struct wbuf *b, const char *s)
{
	wb_put_bytes(b, "\"", 1);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		char esc[8];
		if (ch == '"' || ch == '\\') {
			esc[0] = '\\';
			esc[1] = (char)ch;
			wb_put_bytes(b, esc, 2);
		} else if (ch < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", ch);
			wb_put_bytes(b, esc, 6);
		} else {
			wb_put_bytes(b, s, 1);
		}
	}
	wb_put_bytes(b, "\"", 1);
}

/* Append formatted text (JSON, prune's report) to b. */
static void
bufprintf(struct wbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void
bufprintf(struct wbuf *b, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	wb_put_bytes(b, tmp, n < (int)sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void
send_wbuf(struct cconn *c, struct wbuf *b)
{
	wb_put_bytes(b, "\n", 1);
	wb_put_bytes(b, "", 1);
	out(c, "%s", (const char *)b->p);
}

/* --- the VM a request names ------------------------------------------------ */

static struct pvm *
find_pvm(struct svc *svc, const char *name)
{
	struct vme *e = vt_find(svc->vt, name);
	return e ? vt_pvm(e) : NULL;
}

/* The store of a replica, or of a failover not committed. */
static struct rvm *
find_rvm(struct svc *svc, const char *name)
{
	struct vme *e = vt_find(svc->vt, name);
	return e ? vt_rvm(e) : NULL;
}

/* The VM is primary here by a failover that is not committed. */
static int
uncommitted(struct svc *svc, const char *name)
{
	struct vme *e = vt_find(svc->vt, name);
	return e != NULL && vt_state(e) == ROLE_UNCOMMITTED;
}

/* Why a VM has no role object of the kind a command needs. */
static void
fail_no_vm(struct cconn *c, int replica_role, const char *what)
{
	struct vme *e = vt_find(c->ctl->svc->vt, c->o.vm);
	if (e == NULL)
		fail(c, 1, "no VM named %s on this host", c->o.vm);
	else if (vt_note(e)[0] != '\0')
		fail(c, 1, "%s: %s", c->o.vm, vt_note(e));
	else if (replica_role)
		fail(c, 1, "%s is a primary on this host; %s runs on its "
		    "replica", c->o.vm, what);
	else
		fail(c, 1, "%s is a replica on this host; %s runs on its "
		    "primary", c->o.vm, what);
}

/* --- status -------------------------------------------------------------- */

struct vm_view {
	const char	*name;
	const char	*role;
	const char	*peer;
	const char	*state;
	const char	*health;
	uint64_t	 generation;
	uint64_t	 last_point;
	int64_t		 last_point_ms;
	int64_t		 lag_s;		/* -1: no point */
	int64_t		 lag_ms;	/* -1: no point */
	const char	*tracker;	/* primary: its tracker */
	const char	*error;
	char		 note[160];	/* what a cycle waits on, or "" */
	struct cycle_stats last;
	uint64_t	 progress;
	uint64_t	 total;
	uint64_t	 uncommitted;	/* failover not committed: its point */
	int		 has_space;	/* replica: the next four are set */
	uint64_t	 history_bytes;	/* undo data of the points */
	uint64_t	 npoints;
	uint64_t	 free_bytes;	/* storage file system */
	uint64_t	 min_free;
	int		 compacting;	/* replica: segments not compacted yet */
	uint64_t	 cycles_total;	/* since start: acknowledged cycles /
					   points applied */
	uint64_t	 failures_total;
	uint64_t	 read_total;	/* primary: bytes read, sent */
	uint64_t	 sent_total;
	uint64_t	 received_total; /* replica: bytes received */
	uint64_t	 lag_crit_ms;	/* health's critical lag, 0: none */
};

/* lag_ms < 0: no point yet; a threshold of 0: none. */
static const char *
health_of(const char *state, unsigned failures, int64_t lag_ms,
    uint64_t warn_ms, uint64_t crit_ms)
{
	if (strcmp(state, "fenced") == 0 || failures >= 3)
		return "critical";
	if (lag_ms >= 0) {
		if (crit_ms > 0 && (uint64_t)lag_ms > crit_ms)
			return "critical";
		if (warn_ms > 0 && (uint64_t)lag_ms > warn_ms)
			return "warning";
	}
	if (strcmp(state, "error") == 0)
		return "warning";
	return "normal";
}

/* The age of the newest acknowledged point (clocks a little apart
 * never make it negative). */
static void
set_lag(struct vm_view *x, uint64_t point, int64_t point_ms, int64_t now_ms)
{
	x->lag_ms = point ? now_ms - point_ms : -1;
	if (point && x->lag_ms < 0)
		x->lag_ms = 0;
	x->lag_s = x->lag_ms < 0 ? -1 : x->lag_ms / 1000;
}

static void
view_primary(struct vme *e, struct vm_view *x)
{
	struct pvm_status st;
	pvm_status(vt_pvm(e), &st);
	x->role = "primary";
	x->peer = st.replica ? st.replica : "-";
	x->state = st.resyncing && st.state == PVM_SYNCING ? "resyncing" :
	    pvm_state_name(st.state);
	if (vt_state(e) == ROLE_UNCOMMITTED && vt_rvm(e) != NULL) {
		struct cat_rel rel;
		store_rel(rvm_store(vt_rvm(e)), &rel);
		x->uncommitted = rel.at_point;
	}
	x->generation = st.generation;
	x->last_point = st.last_point;
	x->last_point_ms = st.last_point_ms;
	x->lag_ms = st.lag_ms;		/* steady, unlike now - last_point_ms */
	x->lag_s = x->lag_ms < 0 ? -1 : x->lag_ms / 1000;
	x->error = st.error;
	x->last = st.last;
	x->progress = st.progress_bytes;
	x->total = st.progress_total;
	x->lag_crit_ms = st.lag_crit_ms;
	x->health = st.nospace ? "critical" : health_of(x->state,
	    st.failures, x->lag_ms, st.lag_warn_ms, st.lag_crit_ms);
	/* A replica gone silent is worth a look whatever the interval. */
	if (st.silent && strcmp(x->health, "normal") == 0)
		x->health = "warning";
	snprintf(x->note, sizeof(x->note), "%s", st.note);
	if (st.replica == NULL) {
		/* Failed over, no replica yet: nothing to lag behind, but the
		 * VM is not protected. */
		x->lag_ms = x->lag_s = -1;
		if (strcmp(x->state, "fenced") != 0)	/* fenced: critical */
			x->health = "warning";
		snprintf(x->note, sizeof(x->note), "no replica configured: "
		    "`replctl reverse %s --to HOST:PORT` starts one", x->name);
	}
	x->tracker = st.tracker;
	x->cycles_total = st.cycles_total;
	x->failures_total = st.failures_total;
	x->read_total = st.read_total;
	x->sent_total = st.sent_total;
}

static void
view_replica(struct svc *svc, struct vme *e, struct vm_view *x,
    int64_t now_ms, int light)
{
	struct rvm_status st;
	rvm_status(vt_rvm(e), &st);
	x->role = "replica";
	x->peer = st.peer;
	x->state = st.receiving ? "syncing" : st.error[0] ? "error" : "idle";
	x->generation = st.generation;
	x->last_point = st.last_point;
	x->last_point_ms = st.last_point_ms;
	set_lag(x, st.last_point, st.last_point_ms, now_ms);
	x->error = st.error;
	x->last.dirty_bytes = st.last_bytes;
	/* The history's size and the room left for it. */
	uint64_t total;
	if (!light && cat_point_stats(svc->cat, st.name, &x->npoints,
	    &x->history_bytes) == 0 && store_space(rvm_store(vt_rvm(e)),
	    &x->free_bytes, &total, &x->min_free) == 0)
		x->has_space = 1;
	x->compacting = !light &&
	    store_compact_pending(rvm_store(vt_rvm(e)));
	x->progress = st.received_bytes;
	x->cycles_total = st.points_total;
	x->failures_total = st.failures_total;
	x->received_total = st.received_total;
	x->lag_crit_ms = 4 * st.interval_ms;
	x->health = st.nospace ? "critical" : health_of(x->state, 0,
	    x->lag_ms, 2 * st.interval_ms, 4 * st.interval_ms);
}

/* A VM no role object serves here: what the catalog says, and why. */
static void
view_unserved(struct vme *e, struct vm_view *x)
{
	x->role = vt_state(e) == ROLE_REPLICA ? "replica" : "primary";
	x->peer = vt_owner(e)[0] ? vt_owner(e) : "-";
	x->state = "error";
	x->health = "critical";
	x->generation = vt_generation(e);
	x->lag_ms = x->lag_s = -1;
	x->error = vt_note(e);
}

/* Every VM of the table (or only one), in name order; light: without
 * the replicas' history and storage figures (no catalog query). */
static size_t
collect_views(struct svc *svc, const char *only, int light,
    struct vm_view **out_views)
{
	struct vmtab *vt = svc->vt;
	struct vm_view *v = xcalloc(vt_count(vt) + 1, sizeof(*v));
	size_t n = 0;
	int64_t now_ms = (int64_t)util_now_ms();

	for (size_t i = 0; i < vt_count(vt); i++) {
		struct vme *e = vt_at(vt, i);
		if (only && strcmp(only, vt_name(e)) != 0)
			continue;
		struct vm_view *x = &v[n++];
		x->name = vt_name(e);
		if (vt_state(e) != ROLE_REPLICA && vt_pvm(e) != NULL)
			view_primary(e, x);
		else if (vt_state(e) == ROLE_REPLICA && vt_rvm(e) != NULL)
			view_replica(svc, e, x, now_ms, light);
		else
			view_unserved(e, x);
	}
	*out_views = v;
	return n;
}

static size_t
collect(struct svc *svc, const char *only, struct vm_view **out_views)
{
	return collect_views(svc, only, 0, out_views);
}

/* --- metrics (Prometheus text exposition format, metrics.c serves it) --- */

static void
metric_head(struct wbuf *b, const char *name, const char *type,
    const char *help)
{
	bufprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample per VM of v for which get() says there is one. */
typedef int (*metric_get)(const struct vm_view *x, double *value);

static void
metric_vms(struct wbuf *b, const struct vm_view *v, size_t n,
    const char *name, const char *type, const char *help, metric_get get)
{
	int head = 0;
	double value;

	for (size_t i = 0; i < n; i++) {
		if (!get(&v[i], &value))
			continue;
		if (!head)
			metric_head(b, name, type, help);
		head = 1;
		/* Counts as integers, seconds to the millisecond: no
		 * 181.47300000000001. */
		if (value == (double)(uint64_t)value)
			bufprintf(b, "%s{vm=\"%s\",role=\"%s\"} %.0f\n", name,
			    v[i].name, v[i].role, value);
		else
			bufprintf(b, "%s{vm=\"%s\",role=\"%s\"} %.3f\n", name,
			    v[i].name, v[i].role, value);
	}
}

static int
is_primary(const struct vm_view *x)
{
	return strcmp(x->role, "primary") == 0;
}

static int
has_space(const struct vm_view *x)
{
	return x->has_space;
}

#define GETTER(fn, cond, expr)						\
static int								\
fn(const struct vm_view *x, double *value)				\
{									\
	if (!(cond))							\
		return 0;						\
	*value = (double)(expr);					\
	return 1;							\
}

GETTER(get_health, 1, strcmp(x->health, "normal") == 0 ? 0 :
    strcmp(x->health, "warning") == 0 ? 1 : 2)
GETTER(get_fenced, 1, strcmp(x->state, "fenced") == 0)
GETTER(get_generation, 1, x->generation)
GETTER(get_lag, x->lag_ms >= 0, x->lag_ms / 1000.0)
GETTER(get_lag_crit, x->lag_crit_ms > 0, x->lag_crit_ms / 1000.0)
GETTER(get_last_point, 1, x->last_point)
GETTER(get_duration, is_primary(x) && x->last.cycle != 0,
    x->last.duration_ms / 1000.0)
GETTER(get_changed, x->last.cycle != 0 || !is_primary(x), x->last.dirty_bytes)
GETTER(get_read, is_primary(x) && x->last.cycle != 0, x->last.bytes_read)
GETTER(get_sent, is_primary(x) && x->last.cycle != 0, x->last.bytes_sent)
GETTER(get_cycles, 1, x->cycles_total)
GETTER(get_failures, 1, x->failures_total)
GETTER(get_read_total, is_primary(x), x->read_total)
GETTER(get_sent_total, is_primary(x), x->sent_total)
GETTER(get_received_total, !is_primary(x), x->received_total)
GETTER(get_points, has_space(x), x->npoints)
GETTER(get_history, has_space(x), x->history_bytes)
GETTER(get_free, has_space(x), x->free_bytes)
GETTER(get_min_free, has_space(x), x->min_free)
#undef GETTER

/* Per VM, after health and state (metric_vms() for each). */
static const struct vm_metric {
	const char	*name;
	const char	*type;
	const char	*help;
	metric_get	 get;
} vm_metrics[] = {
	{ "replicad_fenced", "gauge",
	    "1 if the VM's replica refused this host as a stale "
	    "primary.",
	    get_fenced },
	{ "replicad_generation", "gauge",
	    "The VM's generation (raised by every failover).",
	    get_generation },
	{ "replicad_lag_seconds", "gauge",
	    "Age of the newest recovery point (absent before the "
	    "first).",
	    get_lag },
	{ "replicad_lag_critical_seconds", "gauge",
	    "The lag above which the VM's health is critical "
	    "(absent: none).",
	    get_lag_crit },
	{ "replicad_last_point", "gauge",
	    "Id of the newest recovery point (0: none).",
	    get_last_point },
	{ "replicad_last_cycle_duration_seconds", "gauge",
	    "Duration of the last acknowledged cycle.",
	    get_duration },
	{ "replicad_last_cycle_changed_bytes", "gauge",
	    "Bytes the last cycle changed (primary: found dirty; "
	    "replica: the newest point's).",
	    get_changed },
	{ "replicad_last_cycle_read_bytes", "gauge",
	    "Bytes the last cycle read from the primary's disks.",
	    get_read },
	{ "replicad_last_cycle_sent_bytes", "gauge",
	    "Bytes the last cycle sent (payload before TLS).",
	    get_sent },
	{ "replicad_cycles_total", "counter",
	    "Cycles acknowledged (primary) or applied as points "
	    "(replica) since replicad started.",
	    get_cycles },
	{ "replicad_cycle_failures_total", "counter",
	    "Cycles that failed or were refused since replicad "
	    "started.",
	    get_failures },
	{ "replicad_read_bytes_total", "counter",
	    "Bytes read from the VM's disks by cycles since replicad "
	    "started.",
	    get_read_total },
	{ "replicad_sent_bytes_total", "counter",
	    "Bytes sent for the VM (payload before TLS) since "
	    "replicad started.",
	    get_sent_total },
	{ "replicad_received_bytes_total", "counter",
	    "Bytes of frames received for the VM since replicad "
	    "started.",
	    get_received_total },
	{ "replicad_points", "gauge",
	    "Recovery points the replica keeps.",
	    get_points },
	{ "replicad_history_bytes", "gauge",
	    "Bytes of undo data the replica keeps for its older "
	    "points.",
	    get_history },
	{ "replicad_storage_free_bytes", "gauge",
	    "Free bytes on the file system of the replica's storage.",
	    get_free },
	{ "replicad_storage_min_free_bytes", "gauge",
	    "Room the replica keeps free (min_free); below it cycles "
	    "are refused.",
	    get_min_free },
};

static const char *const metric_states[] = {
	"idle", "syncing", "resyncing", "paused", "fenced", "error",
};

void
control_metrics(struct control *ctl, struct wbuf *b)
{
	struct vm_view *v;
	size_t n = collect(ctl->svc, NULL, &v), np = 0;

	for (size_t i = 0; i < n; i++)
		np += is_primary(&v[i]);
	metric_head(b, "replicad_vms", "gauge", "VMs this host serves, by "
	    "role.");
	bufprintf(b, "replicad_vms{role=\"primary\"} %zu\n"
	    "replicad_vms{role=\"replica\"} %zu\n", np, n - np);
	metric_vms(b, v, n, "replicad_health", "gauge", "Health of the VM's "
	    "replication: 0 normal, 1 warning, 2 critical (replctl status).",
	    get_health);
	if (n > 0) {
		metric_head(b, "replicad_state", "gauge", "1 for the VM's state "
		    "(replctl status), 0 for the others.");
		for (size_t i = 0; i < n; i++)
			for (size_t k = 0; k < sizeof(metric_states) /
			    sizeof(metric_states[0]); k++)
				bufprintf(b, "replicad_state{vm=\"%s\",role=\"%s\","
				    "state=\"%s\"} %d\n", v[i].name, v[i].role,
				    metric_states[k], strcmp(v[i].state,
				    metric_states[k]) == 0);
	}
	for (size_t k = 0; k < sizeof(vm_metrics) / sizeof(vm_metrics[0]);
	    k++)
		metric_vms(b, v, n, vm_metrics[k].name, vm_metrics[k].type,
		    vm_metrics[k].help, vm_metrics[k].get);
	free(v);
}

void
control_summary(struct control *ctl, char *buf, size_t len)
{
	struct vm_view *v;
	size_t n = collect_views(ctl->svc, NULL, 1, &v);
	size_t np = 0, busy = 0, warn = 0, crit = 0;

	for (size_t i = 0; i < n; i++) {
		np += strcmp(v[i].role, "primary") == 0;
		busy += strcmp(v[i].state, "syncing") == 0 ||
		    strcmp(v[i].state, "resyncing") == 0;
		warn += strcmp(v[i].health, "warning") == 0;
		crit += strcmp(v[i].health, "critical") == 0;
	}
	free(v);
	if (n == 0) {
		snprintf(buf, len, "no VMs");
		return;
	}
	snprintf(buf, len, "%zu VM%s (%zu primary, %zu replica): %zu syncing, "
	    "%s", n, n == 1 ? "" : "s", np, n - np, busy, crit + warn == 0 ?
	    "all normal" : "");
	if (crit + warn > 0) {
		size_t used = strlen(buf);
		snprintf(buf + used, len - used, "%zu critical, %zu warning "
		    "(replctl status)", crit, warn);
	}
}

static void
cmd_status(struct cconn *c)
{
	struct vm_view *v;
	size_t n = collect(c->ctl->svc, c->o.vm, &v);
	struct wbuf b;
	char when[32], lag[32], bytes[4][32];

	if (c->o.vm && n == 0) {
		free(v);
		fail(c, 1, "no VM named %s on this host", c->o.vm);
		return;
	}
	wb_init(&b);
	if (c->o.json) {
		bufprintf(&b, "{\"vms\":[");
		for (size_t i = 0; i < n; i++) {
			struct vm_view *x = &v[i];
			bufprintf(&b, "%s{\"name\":", i ? "," : "");
			json_str(&b, x->name);
			bufprintf(&b, ",\"role\":\"%s\",\"peer\":", x->role);
			json_str(&b, x->peer);
			bufprintf(&b, ",\"generation\":%" PRIu64 ",\"state\":"
			    "\"%s\",\"health\":\"%s\",", x->generation,
			    x->state, x->health);
			if (x->last_point) {
				util_format_time(x->last_point_ms / 1000, when,
				    sizeof(when));
				bufprintf(&b, "\"last_point\":%" PRIu64 ","
				    "\"last_point_created\":\"%s\",",
				    x->last_point, when);
				/* No lag without a replica to lag behind. */
				if (x->lag_ms < 0)
					bufprintf(&b, "\"lag_seconds\":null,"
					    "\"lag_ms\":null,");
				else
					bufprintf(&b, "\"lag_seconds\":%" PRId64
					    ",\"lag_ms\":%" PRId64 ",", x->lag_s,
					    x->lag_ms);
			} else {
				bufprintf(&b, "\"last_point\":null,"
				    "\"last_point_created\":null,"
				    "\"lag_seconds\":null,\"lag_ms\":null,");
			}
			if (x->tracker)
				bufprintf(&b, "\"tracker\":\"%s\",", x->tracker);
			if (x->uncommitted)
				bufprintf(&b, "\"uncommitted_point\":%" PRIu64
				    ",", x->uncommitted);
			if (x->has_space)
				bufprintf(&b, "\"points\":%" PRIu64 ","
				    "\"history_bytes\":%" PRIu64 ","
				    "\"storage_free_bytes\":%" PRIu64 ","
				    "\"min_free_bytes\":%" PRIu64 ","
				    "\"history_compacting\":%d,", x->npoints,
				    x->history_bytes, x->free_bytes, x->min_free,
				    x->compacting);
			bufprintf(&b, "\"note\":");
			if (x->note[0])
				json_str(&b, x->note);
			else
				bufprintf(&b, "null");
			bufprintf(&b, ",\"error\":");
			if (x->error && x->error[0])
				json_str(&b, x->error);
			else
				bufprintf(&b, "null");
			bufprintf(&b, ",\"last_cycle\":{\"cycle\":%" PRIu64 ","
			    "\"duration_ms\":%" PRIu64 ",\"dirty_bytes\":%"
			    PRIu64 ",\"bytes_read\":%" PRIu64 ","
			    "\"bytes_sent\":%" PRIu64 "},\"progress\":{"
			    "\"bytes\":%" PRIu64 ",\"total\":%" PRIu64 "}}",
			    x->last.cycle, x->last.duration_ms,
			    x->last.dirty_bytes, x->last.bytes_read,
			    x->last.bytes_sent, x->progress, x->total);
		}
		bufprintf(&b, "]}");
		send_wbuf(c, &b);
	} else if (n == 0) {
		out(c, "no VMs\n");
	} else {
		out(c, "%-16s %-8s %4s %-9s %-8s %-6s %-21s %-7s %s\n", "VM",
		    "ROLE", "GEN", "STATE", "HEALTH", "POINT", "CREATED", "LAG",
		    "LAST CYCLE");
		for (size_t i = 0; i < n; i++) {
			struct vm_view *x = &v[i];
			char pt[24];
			if (x->last_point) {
				util_format_time(x->last_point_ms / 1000, when,
				    sizeof(when));
				snprintf(pt, sizeof(pt), "%" PRIu64,
				    x->last_point);
				if (x->lag_s < 0)
					snprintf(lag, sizeof(lag), "-");
				else
					snprintf(lag, sizeof(lag), "%" PRId64
					    "s", x->lag_s);
			} else {
				snprintf(when, sizeof(when), "-");
				snprintf(pt, sizeof(pt), "-");
				snprintf(lag, sizeof(lag), "-");
			}
			util_format_bytes(x->last.dirty_bytes, bytes[0], 32);
			util_format_bytes(x->last.bytes_read, bytes[1], 32);
			util_format_bytes(x->last.bytes_sent, bytes[2], 32);
			char cyc[160], dur[32];
			if (x->last.duration_ms < 1000)
				snprintf(dur, sizeof(dur), "%" PRIu64 "ms",
				    x->last.duration_ms);
			else
				snprintf(dur, sizeof(dur), "%.1fs",
				    (double)x->last.duration_ms / 1000);
			if (strcmp(x->role, "primary") == 0 && x->last.cycle)
				snprintf(cyc, sizeof(cyc), "%s, %s changed, "
				    "%s read (%s), %s sent", dur, bytes[0],
				    bytes[1], x->tracker, bytes[2]);
			else if (strcmp(x->role, "replica") == 0 &&
			    x->last_point)
				snprintf(cyc, sizeof(cyc), "%s changed",
				    bytes[0]);
			else
				snprintf(cyc, sizeof(cyc), "-");
			out(c, "%-16s %-8s %4" PRIu64 " %-9s %-8s %-6s %-21s "
			    "%-7s %s\n", x->name, x->role, x->generation,
			    x->state, x->health, pt, when, lag, cyc);
			if (x->has_space) {
				util_format_bytes(x->history_bytes, bytes[0], 32);
				util_format_bytes(x->free_bytes, bytes[1], 32);
				util_format_bytes(x->min_free, bytes[2], 32);
				out(c, "%16s history: %" PRIu64 " points, %s of "
				    "undo data; storage: %s free%s%s\n", "",
				    x->npoints, bytes[0], bytes[1], x->min_free ?
				    ", min_free " : "", x->min_free ? bytes[2] : "");
			}
			if (x->uncommitted)
				out(c, "%16s failover to point %" PRIu64 " not "
				    "committed (replctl failover %s --commit)\n",
				    "", x->uncommitted, x->name);
			if (x->total && (strcmp(x->state, "syncing") == 0 ||
			    strcmp(x->state, "resyncing") == 0)) {
				util_format_bytes(x->progress, bytes[3], 32);
				util_format_bytes(x->total, bytes[1], 32);
				out(c, "%16s progress: %s of %s read (%.0f%%)\n",
				    "", bytes[3], bytes[1], 100.0 *
				    (double)x->progress / (double)x->total);
			}
			if (x->note[0])
				out(c, "%16s note: %s\n", "", x->note);
			if (x->error && x->error[0])
				out(c, "%16s error: %s\n", "", x->error);
		}
	}
	wb_free(&b);
	free(v);
	finish(c, 0);
}

/* --- points -------------------------------------------------------------- */

/* Point i has a definition other than the point listed before it (the
 * oldest: it has one). */
static int
def_changed(const struct cat_point *pts, size_t i)
{
	if (pts[i].definition[0] == '\0')
		return 0;
	return i == 0 || strcmp(pts[i].definition, pts[i - 1].definition) != 0;
}

static void
cmd_points(struct cconn *c)
{
	struct svc *svc = c->ctl->svc;
	struct cat_point *pts = NULL;
	size_t n = 0;
	char when[32], bytes[32];
	struct wbuf b;
	int r;

	/* Also on a primary whose failover is not committed: the points
	 * to choose from. */
	if (find_rvm(svc, c->o.vm) == NULL) {
		fail(c, 1, "%s is not replicated to this host (points are kept "
		    "on the replica)", c->o.vm);
		return;
	}
	if ((r = cat_point_list(svc->cat, c->o.vm, &pts, &n)) != 0) {
		fail(c, 1, "cannot list points of %s: %s", c->o.vm,
		    rd_strerror(r));
		return;
	}
	wb_init(&b);
	if (c->o.json) {
		bufprintf(&b, "[");
		for (size_t i = 0; i < n; i++) {
			util_format_time(pts[i].created_ms / 1000, when,
			    sizeof(when));
			bufprintf(&b, "%s{\"id\":%" PRIu64 ",\"created\":\"%s\","
			    "\"kind\":\"%s\",\"bytes\":%" PRIu64 ","
			    "\"undo_bytes\":%" PRIu64 ",\"cycle\":%" PRIu64
			    ",\"generation\":%" PRIu64 ",", i ? "," : "",
			    pts[i].id, when, pts[i].kind == CAT_KIND_APP ?
			    "app" : "crash", pts[i].bytes, pts[i].undo_bytes,
			    pts[i].cycle, pts[i].generation);
			if (pts[i].definition[0])
				bufprintf(&b, "\"definition\":\"%.*s\",",
				    CAT_DEF_SHORT, pts[i].definition);
			else
				bufprintf(&b, "\"definition\":null,");
			bufprintf(&b, "\"definition_changed\":%s}",
			    def_changed(pts, i) ? "true" : "false");
		}
		bufprintf(&b, "]");
		send_wbuf(c, &b);
	} else {
		char held[32], def[CAT_DEF_SHORT + 2];
		out(c, "%6s  %-20s  %-5s  %10s  %10s  %s\n", "ID", "CREATED",
		    "KIND", "BYTES", "UNDO", "DEF");
		for (size_t i = 0; i < n; i++) {
			util_format_time(pts[i].created_ms / 1000, when,
			    sizeof(when));
			util_format_bytes(pts[i].bytes, bytes, sizeof(bytes));
			util_format_bytes(pts[i].undo_bytes, held, sizeof(held));
			/* "*": the definition changed at this point. */
			snprintf(def, sizeof(def), "%.*s%s", CAT_DEF_SHORT,
			    pts[i].definition[0] ? pts[i].definition : "-",
			    def_changed(pts, i) ? "*" : "");
			out(c, "%6" PRIu64 "  %-20s  %-5s  %10s  %10s  %s\n",
			    pts[i].id, when, pts[i].kind == CAT_KIND_APP ?
			    "app" : "crash", bytes, held, def);
		}
	}
	wb_free(&b);
	free(pts);
	finish(c, 0);
}

/* definition VM [--point ID]: the VM's definition at a point (default
 * the newest), as the primary sent it. */
static void
cmd_definition(struct cconn *c)
{
	struct svc *svc = c->ctl->svc;
	struct rvm *rv = find_rvm(svc, c->o.vm);
	struct cat_point pt;
	struct cat_rel rel;
	char *xml = NULL;
	uint64_t id;
	int r;

	if (rv == NULL) {
		fail(c, 1, "%s is not replicated to this host (points are kept "
		    "on the replica)", c->o.vm);
		return;
	}
	store_rel(rvm_store(rv), &rel);
	id = c->o.has_point ? c->o.point : rel.last_point;
	if (id == 0 || (r = cat_point_get(svc->cat, c->o.vm, id, &pt)) ==
	    RD_ERR_NOT_FOUND) {
		if (id == 0)
			fail(c, 1, "%s has no recovery point yet", c->o.vm);
		else
			fail(c, 1, "%s has no point %" PRIu64, c->o.vm, id);
		return;
	}
	if (r == 0)
		r = store_point_definition(rvm_store(rv), id, &xml);
	if (r == RD_ERR_NOT_FOUND) {
		fail(c, 1, "point %" PRIu64 " of %s has no definition (its "
		    "primary's tracker captures none)", id, c->o.vm);
		return;
	}
	if (r != 0) {
		fail(c, 1, "cannot read the definition of %s at point %" PRIu64
		    ": %s", c->o.vm, id, rd_strerror(r));
		return;
	}
	/* As sent: what an operator saves is what the primary defined. */
	out(c, "%s", xml);
	free(xml);
	finish(c, 0);
}

/* --- sync, pause, resume ------------------------------------------------- */

static struct pvm *
need_pvm(struct cconn *c, const char *what)
{
	struct pvm *vm = find_pvm(c->ctl->svc, c->o.vm);
	if (vm == NULL)
		fail_no_vm(c, 0, what);
	return vm;
}

/*
 * While a client waits for a cycle: once a second, how far the cycle
 * got (replctl shows it on a terminal only).
 */
static void
on_progress(evutil_socket_t fd, short what, void *arg)
{
	struct cconn *c = arg;
	struct pvm *vm = c->o.vm ? find_pvm(c->ctl->svc, c->o.vm) : NULL;
	struct pvm_status st;
	char done[32], total[32], rate[32];

	if (vm == NULL || c->gone)
		return;
	pvm_status(vm, &st);
	uint64_t now = util_mono_ms();
	if (st.progress_total == 0 || st.progress_bytes < c->prog_bytes) {
		c->prog_bytes = 0;
		c->prog_ms = now;
		return;
	}
	double secs = (double)(now - c->prog_ms) / 1000.0;
	double bps = secs > 0 ? (double)(st.progress_bytes - c->prog_bytes) /
	    secs : 0;
	c->prog_bytes = st.progress_bytes;
	c->prog_ms = now;
	util_format_bytes(st.progress_bytes, done, sizeof(done));
	util_format_bytes(st.progress_total, total, sizeof(total));
	util_format_bytes((uint64_t)bps, rate, sizeof(rate));
	uint64_t left = st.progress_total > st.progress_bytes ?
	    st.progress_total - st.progress_bytes : 0;
	char eta[32] = "-";
	if (bps > 0)
		snprintf(eta, sizeof(eta), "%.0fs", (double)left / bps);
	progress(c, "%s: %s %.0f%%  %s of %s  %s/s  ETA %s", c->o.vm,
	    st.resyncing ? "resync" : "cycle", 100.0 *
	    (double)st.progress_bytes / (double)st.progress_total, done, total,
	    rate, eta);
}

static void
progress_start(struct cconn *c)
{
	struct timeval tv = { 0, 500 * 1000 };
	if (c->progress_ev == NULL)
		c->progress_ev = event_new(c->ctl->svc->base, -1, EV_PERSIST,
		    on_progress, c);
	c->prog_bytes = 0;
	c->prog_ms = util_mono_ms();
	event_add(c->progress_ev, &tv);
}

static void
progress_stop(struct cconn *c)
{
	if (c->progress_ev)
		event_del(c->progress_ev);
}

static void
sync_finished(void *arg, uint64_t point, const char *error)
{
	struct cconn *c = arg;
	progress_stop(c);
	c->busy = 0;
	c->waiting = NULL;
	if (point)
		out(c, "point %" PRIu64 "\n", point);
	else
		err(c, "replctl: sync %s failed: %s\n", c->o.vm, error);
	finish(c, point ? 0 : 1);
}

/* Why pvm_sync() or pvm_resync() started nothing. */
static const char *
sync_refusal(int r)
{
	switch (r) {
	case RD_ERR_FENCED:
		return "fenced: this host is a stale primary";
	case RD_ERR_BUSY:
		return "a role change of it is under way; try again when it is "
		    "done";
	case RD_ERR_STATE:
		return "replicad is shutting down";
	}
	return rd_strerror(r);
}

static void
cmd_sync(struct cconn *c)
{
	struct pvm *vm = need_pvm(c, "sync");
	int r;
	if (vm == NULL)
		return;
	if (c->o.wait) {
		c->busy = 1;
		c->waiting = vm;
		progress_start(c);
		if ((r = pvm_sync(vm, sync_finished, c)) != 0) {
			progress_stop(c);
			c->busy = 0;
			c->waiting = NULL;
			fail(c, 1, "%s: %s", c->o.vm, sync_refusal(r));
		}
		return;
	}
	if ((r = pvm_sync(vm, NULL, NULL)) != 0) {
		fail(c, 1, "%s: %s", c->o.vm, sync_refusal(r));
		return;
	}
	out(c, "cycle of %s requested\n", c->o.vm);
	finish(c, 0);
}

static void
cmd_resync(struct cconn *c)
{
	struct pvm *vm = need_pvm(c, "resync");
	int r;
	if (vm == NULL)
		return;
	c->busy = c->o.wait;
	c->waiting = c->o.wait ? vm : NULL;
	if (c->o.wait)
		progress_start(c);
	if ((r = pvm_resync(vm, c->o.wait ? sync_finished : NULL,
	    c->o.wait ? c : NULL)) != 0) {
		progress_stop(c);
		c->busy = 0;
		c->waiting = NULL;
		fail(c, 1, "%s: %s", c->o.vm, sync_refusal(r));
		return;
	}
	if (!c->o.wait) {
		out(c, "resynchronisation of %s requested\n", c->o.vm);
		finish(c, 0);
	}
}

static void
pause_or_resume(struct cconn *c, int pause)
{
	struct pvm *vm = need_pvm(c, pause ? "pause" : "resume");
	if (vm == NULL)
		return;
	if (pause)
		pvm_pause(vm);
	else if (pvm_resume(vm) != 0) {
		fail(c, 1, "%s: %s", c->o.vm, sync_refusal(RD_ERR_BUSY));
		return;
	}
	out(c, "%s %s\n", c->o.vm, pause ? "paused" : "resumed");
	finish(c, 0);
}

static void cmd_pause(struct cconn *c) { pause_or_resume(c, 1); }
static void cmd_resume(struct cconn *c) { pause_or_resume(c, 0); }

/* --- jobs on a replica's store ------------------------------------------- */

/*
 * A control job on a replica's store: refused while a role change of the
 * VM is under way, and counted on the VM meanwhile so that no role change
 * starts under it (failover.c).  Its done() calls store_job_end().
 */
static int
store_job(struct cconn *c, struct rvm *rv, work_fn job, work_fn done)
{
	struct vme *e = vt_find(c->ctl->svc->vt, c->o.vm);
	if (e == NULL || vt_use(e) != 0) {
		fail(c, 1, "%s: a role change of it is under way; try again",
		    c->o.vm);
		return -1;
	}
	c->e = e;
	c->rvm = rv;
	c->busy = 1;
	/* test, verify, forget: as long as the VM's disks (work.h) */
	work_submit_long(job, done, c);
	return 0;
}

static void
store_job_end(struct cconn *c)
{
	vt_unuse(c->e);
	c->busy = 0;
}

/*
 * A test failover's domain (vmdom.h), for a VM whose point carries a
 * definition: VM-test on the copies, made after them; removed before
 * them.  A copy whose domain cannot be made stays (the message says so).
 */
static void
test_domain(struct cconn *c, struct store *st)
{
	const struct config *cfg = c->ctl->svc->cfg;
	struct domxml_disk d[CAT_MAX_DISKS];
	struct cat_rel rel;
	char *def = NULL;
	int r;

	store_rel(st, &rel);
	if (c->o.cleanup) {
		/* Whether the VM has domains at all: the copy's point, or
		 * the newest if the copy's is not known. */
		uint64_t id = store_pinned_point(st);
		r = store_point_definition(st, id == UINT64_MAX ? 0 : id, &def);
	} else {
		r = store_point_definition(st, c->point, &def);
	}
	if (r == RD_ERR_NOT_FOUND)
		return;
	if (r != 0) {
		snprintf(c->dommsg, sizeof(c->dommsg), "cannot read the domain "
		    "definition: %s", rd_strerror(r));
		c->dom_failed = 1;
		return;
	}
	if (c->o.cleanup) {
		r = vmdom_untest(cfg, rel.vm, rel.peer, store_test_dir(st),
		    c->dommsg, sizeof(c->dommsg));
	} else {
		for (uint16_t i = 0; i < rel.ndisks; i++) {
			d[i].target = rel.disks[i].name;
			d[i].path = c->paths[i];
		}
		r = vmdom_test(cfg, rel.vm, rel.peer, def, d, rel.ndisks,
		    rel.storage, store_test_dir(st), c->o.start, c->dommsg,
		    sizeof(c->dommsg));
	}
	free(def);
	c->dom_failed = r != 0;
	if (r != 0)
		log_warnx("%s: test failover: %s", rel.vm, c->dommsg);
	else
		log_info("%s: test failover: %s", rel.vm, c->dommsg);
}

static void
job_test(void *arg)
{
	struct cconn *c = arg;
	struct store *st = rvm_store(c->rvm);
	if (c->o.cleanup) {
		test_domain(c, st);
		if (c->dom_failed)
			return;	/* the copy stays: a guest may use it */
		c->rc = store_test_cleanup(st, c->err, sizeof(c->err));
	} else {
		c->rc = store_test_failover(st, c->o.point, &c->point,
		    c->paths, c->err, sizeof(c->err));
		if (c->rc == 0)
			test_domain(c, st);
	}
}

static void
test_done(void *arg)
{
	struct cconn *c = arg;
	store_job_end(c);
	if (c->o.cleanup && c->dom_failed) {
		fail(c, 1, "failover %s --test --cleanup: %s; the test copy "
		    "stays", c->o.vm, c->dommsg);
		return;
	}
	if (c->o.cleanup && c->dommsg[0] != '\0')
		out(c, "%s\n", c->dommsg);
	if (c->rc != 0) {
		fail(c, 1, "failover %s --test%s: %s", c->o.vm, c->o.cleanup ?
		    " --cleanup" : "", c->err);
		return;
	}
	if (c->o.cleanup) {
		out(c, "test copy of %s removed\n", c->o.vm);
		log_info("%s: test copy removed", c->o.vm);
	} else {
		struct cat_rel rel;
		store_rel(rvm_store(c->rvm), &rel);
		out(c, "point %" PRIu64 "\n", c->point);
		for (uint16_t i = 0; i < rel.ndisks; i++) {
			if (c->paths[i])
				out(c, "%s\n", c->paths[i]);
			free(c->paths[i]);
			c->paths[i] = NULL;
		}
		log_info("%s: test copy of point %" PRIu64 " made", c->o.vm,
		    c->point);
		if (c->dom_failed) {
			fail(c, 1, "failover %s --test: the test copy is made, "
			    "but %s (replctl failover %s --test --cleanup "
			    "removes the copy)", c->o.vm, c->dommsg, c->o.vm);
			return;
		}
		if (c->dommsg[0] != '\0')
			out(c, "%s\n", c->dommsg);
	}
	finish(c, 0);
}

static void
job_verify(void *arg)
{
	struct cconn *c = arg;
	if (c->o.has_point)
		c->rc = store_verify_point(rvm_store(c->rvm), c->o.point,
		    &c->blocks, &c->segments, c->err, sizeof(c->err));
	else
		c->rc = store_verify(rvm_store(c->rvm), &c->blocks, c->err,
		    sizeof(c->err));
}

static void
verify_done(void *arg)
{
	struct cconn *c = arg;
	store_job_end(c);
	if (c->rc != 0) {
		log_warnx("%s: verify failed: %s", c->o.vm, c->err);
		fail(c, 1, "verify %s: %s", c->o.vm, c->err);
		return;
	}
	if (c->o.has_point)
		out(c, "%s: point %" PRIu64 " can be rebuilt exactly: %" PRIu64
		    " blocks match their digests and the %" PRIu64 " undo "
		    "segment%s down to it check out\n", c->o.vm, c->o.point,
		    c->blocks, c->segments, c->segments == 1 ? "" : "s");
	else
		out(c, "%s: %" PRIu64 " blocks match their digests\n",
		    c->o.vm, c->blocks);
	finish(c, 0);
}

static struct rvm *
need_rvm(struct cconn *c, const char *what)
{
	struct rvm *vm = find_rvm(c->ctl->svc, c->o.vm);
	if (vm == NULL)
		fail_no_vm(c, 1, what);
	return vm;
}

/* A role change ended (failover.h). */
static void
role_done(void *arg, int rc, const char *msg)
{
	struct cconn *c = arg;
	c->busy = 0;
	progress_stop(c);
	if (rc == 0)
		out(c, "%s\n", msg);
	else
		err(c, "replctl: %s\n", msg);
	finish(c, rc == 0 ? 0 : 1);
}

/* replctl reload: the file refused is a configuration error (exit 2). */
static void
reload_done(void *arg, int rc, const char *msg)
{
	struct cconn *c = arg;
	c->busy = 0;
	if (rc == 0)
		out(c, "%s\n", msg);
	else
		err(c, "replctl: %s\n", msg);
	finish(c, rc == 0 ? 0 : rc == RD_ERR_INVALID ? 2 : 1);
}

static void
cmd_reload(struct cconn *c)
{
	c->busy = 1;
	reload_start(c->ctl->svc, reload_done, c);
}

static void
cmd_failover(struct cconn *c)
{
	struct svc *svc = c->ctl->svc;
	if (!c->o.test) {
		if (c->o.start) {
			fail(c, 2, "failover %s: --start needs --test", c->o.vm);
			return;
		}
		c->busy = 1;
		if (c->o.planned)
			failover_planned(svc, c->o.vm, role_done, c);
		else if (c->o.commit)
			failover_commit(svc, c->o.vm, role_done, c);
		else
			failover_unplanned(svc, c->o.vm, c->o.has_point ?
			    c->o.point : 0, role_done, c);
		return;
	}
	if (c->o.start && c->o.cleanup) {
		fail(c, 2, "failover %s: --start cannot be used with --cleanup",
		    c->o.vm);
		return;
	}
	if (uncommitted(svc, c->o.vm)) {
		fail(c, 1, "failover %s --test: %s is primary on this host (its "
		    "failover is not committed)", c->o.vm, c->o.vm);
		return;
	}
	if ((c->rvm = need_rvm(c, "test failover")) == NULL)
		return;
	c->point = 0;
	store_job(c, c->rvm, job_test, test_done);
}

static void
cmd_verify(struct cconn *c)
{
	if ((c->rvm = need_rvm(c, "verify")) == NULL)
		return;
	if (uncommitted(c->ctl->svc, c->o.vm)) {
		fail(c, 1, "verify %s: %s is primary on this host (its failover "
		    "is not committed)", c->o.vm, c->o.vm);
		return;
	}
	store_job(c, c->rvm, job_verify, verify_done);
}

static void
job_forget(void *arg)
{
	struct cconn *c = arg;
	c->rc = store_drop_point(rvm_store(c->rvm), c->o.point, &c->blocks,
	    c->err, sizeof(c->err));
}

static void
forget_done(void *arg)
{
	struct cconn *c = arg;
	char b[32];
	store_job_end(c);
	if (c->rc != 0) {
		fail(c, 1, "forget %s --point %" PRIu64 ": %s", c->o.vm,
		    c->o.point, c->err);
		return;
	}
	util_format_bytes(c->blocks, b, sizeof(b));
	log_info("%s: point %" PRIu64 " dropped (forget), %s of undo data "
	    "freed", c->o.vm, c->o.point, b);
	out(c, "%s: point %" PRIu64 " dropped, %s freed\n", c->o.vm,
	    c->o.point, b);
	finish(c, 0);
}

static void
cmd_forget(struct cconn *c)
{
	if ((c->rvm = need_rvm(c, "forget")) == NULL)
		return;
	if (uncommitted(c->ctl->svc, c->o.vm)) {
		fail(c, 1, "forget %s: %s is primary on this host (its failover "
		    "is not committed)", c->o.vm, c->o.vm);
		return;
	}
	if (!c->o.has_point) {
		fail(c, 2, "forget %s: --point is required", c->o.vm);
		return;
	}
	store_job(c, c->rvm, job_forget, forget_done);
}

/*
 * prune [VM] [--dry-run]: apply each VM's retention policy (its [accept]
 * entry's) and drop the points it does not keep, oldest first; print what
 * is kept and why, what is dropped, and the space freed.
 */
static void prune_next(struct cconn *c);

/*
 * "" or, for a point stamped later than a newer one (the primary's clock
 * went back), the time retention counts it at (retention.h).
 */
static const char *
counted_note(const struct cat_point *pt, int64_t eff, char *buf,
    size_t bufsz)
{
	char when[32];

	if (eff == pt->created_ms)
		return "";
	util_format_time(eff / 1000, when, sizeof(when));
	snprintf(buf, bufsz, "  (counted at %s: a newer point is stamped "
	    "earlier)", when);
	return buf;
}

static void
job_prune(void *arg)
{
	struct cconn *c = arg;
	struct store *st = rvm_store(c->rvm);
	const char *vm = c->todo[c->itodo];
	struct ret_policy pol;
	struct cat_point *pts = NULL;
	size_t n = 0;
	unsigned *why = NULL;
	char err[512], when[32], bytes[32], reasons[RET_REASONS_STRLEN];
	char note[128];
	uint64_t freed = 0, dropped = 0, kept = 0;
	int r;

	if (ret_parse(c->policy, c->local_time, &pol, err, sizeof(err)) != 0) {
		bufprintf(&c->text, "%s: bad retention policy: %s\n", vm, err);
		c->failed = 1;
		return;
	}
	if ((r = cat_point_list(c->ctl->svc->cat, vm, &pts, &n)) != 0) {
		bufprintf(&c->text, "%s: cannot list points: %s\n", vm, rd_strerror(r));
		c->failed = 1;
		return;
	}
	struct ret_point *rp = xcalloc(n + 1, sizeof(*rp));
	int64_t *eff = xcalloc(n + 1, sizeof(*eff));
	why = xcalloc(n + 1, sizeof(*why));
	for (size_t i = 0; i < n; i++)
		rp[i] = (struct ret_point){ pts[i].id, pts[i].created_ms,
		    pts[i].kind == CAT_KIND_APP };
	ret_apply(&pol, rp, n, why);
	ret_effective(rp, n, eff);
	uint64_t pinned = store_pinned_point(st);
	for (size_t i = 0; i < n; i++)
		if (pts[i].id == pinned)
			why[i] |= RET_PINNED;
	bufprintf(&c->text, "%s: policy %s%s, %zu points\n", vm, c->policy,
	    c->local_time ? " (local time)" : "", n);
	for (size_t i = 0; i < n; i++) {
		util_format_time(pts[i].created_ms / 1000, when, sizeof(when));
		util_format_bytes(pts[i].seg == CAT_SEG_NONE ? 0 :
		    pts[i].undo_bytes, bytes, sizeof(bytes));
		if (why[i]) {
			ret_reasons(why[i] & ~RET_PINNED, reasons,
			    sizeof(reasons));
			bufprintf(&c->text, "  keep %6" PRIu64 "  %s  %-5s  %s%s%s\n",
			    pts[i].id, when, pts[i].kind == CAT_KIND_APP ?
			    "app" : "crash", reasons, (why[i] & RET_PINNED) ?
			    (reasons[0] ? ",test-copy" : "test-copy") : "",
			    counted_note(&pts[i], eff[i], note, sizeof(note)));
			kept++;
			continue;
		}
		if (c->o.dry_run) {
			/* About its own undo data: a merge keeps part of it
			 * when a newer point needs the same blocks. */
			uint64_t est = pts[i].seg == CAT_SEG_NONE ? 0 :
			    pts[i].undo_bytes;
			util_format_bytes(est, bytes, sizeof(bytes));
			bufprintf(&c->text, "  drop %6" PRIu64 "  %s  %-5s  up to %s "
			    "(dry run)%s\n", pts[i].id, when, pts[i].kind ==
			    CAT_KIND_APP ? "app" : "crash", bytes,
			    counted_note(&pts[i], eff[i], note, sizeof(note)));
			freed += est;
			dropped++;
			continue;
		}
		uint64_t f = 0;
		if ((r = store_drop_point(st, pts[i].id, &f, err,
		    sizeof(err))) != 0) {
			bufprintf(&c->text, "  FAIL %6" PRIu64 "  %s\n", pts[i].id, err);
			c->failed = 1;
			continue;
		}
		util_format_bytes(f, bytes, sizeof(bytes));
		bufprintf(&c->text, "  drop %6" PRIu64 "  %s  %-5s  %s freed%s\n",
		    pts[i].id, when, pts[i].kind == CAT_KIND_APP ? "app" :
		    "crash", bytes, counted_note(&pts[i], eff[i], note,
		    sizeof(note)));
		log_info("%s: point %" PRIu64 " dropped by prune (%s freed)",
		    vm, pts[i].id, bytes);
		freed += f;
		dropped++;
	}
	util_format_bytes(freed, bytes, sizeof(bytes));
	bufprintf(&c->text, "%s: %" PRIu64 " kept, %" PRIu64 " %s, %s%s freed\n", vm,
	    kept, dropped, c->o.dry_run ? "to drop (dry run: nothing changed)" :
	    "dropped", c->o.dry_run ? "up to " : "", bytes);
	free(rp);
	free(eff);
	free(why);
	free(pts);
}

static void
prune_done(void *arg)
{
	struct cconn *c = arg;
	vt_unuse(c->e);
	c->itodo++;
	prune_next(c);
}

static void
prune_next(struct cconn *c)
{
	struct svc *svc = c->ctl->svc;
	while (c->itodo < c->ntodo) {
		const char *vm = c->todo[c->itodo];
		struct vme *e = vt_find(svc->vt, vm);
		struct rvm *rv = e ? vt_rvm(e) : NULL;
		if (rv == NULL || vt_state(e) != ROLE_REPLICA) {
			c->itodo++;		/* changed role meanwhile */
			continue;
		}
		struct cat_rel rel;
		store_rel(rvm_store(rv), &rel);
		const struct cfg_accept *acc = config_match_accept(svc->cfg,
		    rel.peer, vm);
		snprintf(c->policy, sizeof(c->policy), "%s", acc ?
		    config_retention(acc, vm) : CONFIG_DEFAULT_RETENTION);
		c->local_time = acc ? acc->retention_local : 0;
		if (vt_use(e) != 0) {
			bufprintf(&c->text, "%s: a role change of it is under way; not "
			    "pruned\n", vm);
			c->failed = 1;
			c->itodo++;
			continue;
		}
		c->e = e;
		c->rvm = rv;
		work_submit_long(job_prune, prune_done, c);
		return;
	}
	c->busy = 0;
	if (c->text.len > 0) {
		wb_put_bytes(&c->text, "", 1);
		out(c, "%s", (const char *)c->text.p);
	}
	finish(c, c->failed ? 1 : 0);
}

static void
cmd_prune(struct cconn *c)
{
	struct vmtab *vt = c->ctl->svc->vt;
	if (c->o.vm) {
		struct rvm *rv = need_rvm(c, "prune");
		if (rv == NULL)
			return;
		if (uncommitted(c->ctl->svc, c->o.vm)) {
			fail(c, 1, "prune %s: %s is primary on this host (its "
			    "failover is not committed)", c->o.vm, c->o.vm);
			return;
		}
	}
	wb_init(&c->text);
	c->todo = xcalloc(vt_count(vt) + 1, sizeof(char *));
	for (size_t i = 0; i < vt_count(vt); i++) {
		struct vme *e = vt_at(vt, i);
		if (vt_state(e) != ROLE_REPLICA || vt_rvm(e) == NULL)
			continue;
		if (c->o.vm == NULL || strcmp(c->o.vm, vt_name(e)) == 0)
			c->todo[c->ntodo++] = xstrdup(vt_name(e));
	}
	if (c->ntodo == 0) {
		out(c, "no replicas on this host\n");
		finish(c, 0);
		return;
	}
	c->busy = 1;
	prune_next(c);
}

static void
cmd_reverse(struct cconn *c)
{
	c->busy = 1;
	if (c->o.wait)
		progress_start(c);
	failover_reverse(c->ctl->svc, c->o.vm, c->o.to, c->o.name, c->o.wait,
	    role_done, c);
}

static void
cmd_reassign(struct cconn *c)
{
	if (c->o.host == NULL) {
		fail(c, 2, "reassign %s: --host NAME is required", c->o.vm);
		return;
	}
	c->busy = 1;
	failover_reassign(c->ctl->svc, c->o.vm, c->o.host, role_done, c);
}

/* --- dispatch ------------------------------------------------------------ */

struct command {
	const char	*name;
	int		 vm;		/* 0 none, 1 optional, 2 required */
	void		(*fn)(struct cconn *);
};

static const struct command commands[] = {
	{ "status",	1, cmd_status },
	{ "sync",	2, cmd_sync },
	{ "points",	2, cmd_points },
	{ "definition",	2, cmd_definition },
	{ "failover",	2, cmd_failover },
	{ "verify",	2, cmd_verify },
	{ "pause",	2, cmd_pause },
	{ "resume",	2, cmd_resume },
	{ "reverse",	2, cmd_reverse },
	{ "resync",	2, cmd_resync },
	{ "prune",	1, cmd_prune },
	{ "forget",	2, cmd_forget },
	{ "reassign",	2, cmd_reassign },
	{ "reload",	0, cmd_reload },
};

static int
parse_id(const char *s, uint64_t *out)
{
	char *end;
	if (*s < '1' || *s > '9')
		return RD_ERR_INVALID;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return RD_ERR_INVALID;
	*out = v;
	return 0;
}

static int
parse_opts(struct ctl_request *req, struct opts *o, char *msg, size_t msgsz)
{
	for (int i = 1; i < req->argc; i++) {
		const char *a = req->argv[i];
		if (a[0] != '-') {
			if (o->vm != NULL || util_name_valid(a) != 0) {
				snprintf(msg, msgsz, "bad argument '%.64s'", a);
				return RD_ERR_INVALID;
			}
			o->vm = xstrdup(a);	/* owned by the connection */
		} else if (strcmp(a, "--json") == 0) {
			o->json = 1;
		} else if (strcmp(a, "--wait") == 0) {
			o->wait = 1;
		} else if (strcmp(a, "--test") == 0) {
			o->test = 1;
		} else if (strcmp(a, "--cleanup") == 0) {
			o->cleanup = 1;
		} else if (strcmp(a, "--start") == 0) {
			o->start = 1;
		} else if (strcmp(a, "--planned") == 0) {
			o->planned = 1;
		} else if (strcmp(a, "--commit") == 0) {
			o->commit = 1;
		} else if (strcmp(a, "--dry-run") == 0) {
			o->dry_run = 1;
		} else if (strcmp(a, "--point") == 0 && i + 1 < req->argc) {
			if (parse_id(req->argv[++i], &o->point) != 0) {
				snprintf(msg, msgsz, "bad point id '%.32s'",
				    req->argv[i]);
				return RD_ERR_INVALID;
			}
			o->has_point = 1;
		} else if (strcmp(a, "--to") == 0 && i + 1 < req->argc) {
			free((char *)o->to);
			o->to = xstrdup(req->argv[++i]);	/* owned too */
		} else if (strcmp(a, "--name") == 0 && i + 1 < req->argc) {
			free((char *)o->name);
			o->name = xstrdup(req->argv[++i]);
		} else if (strcmp(a, "--host") == 0 && i + 1 < req->argc) {
			if (util_identity_valid(req->argv[i + 1]) != 0) {
				snprintf(msg, msgsz, "bad host name '%.64s'",
				    req->argv[i + 1]);
				return RD_ERR_INVALID;
			}
			free((char *)o->host);
			o->host = xstrdup(req->argv[++i]);
		} else {
			snprintf(msg, msgsz, "unknown option '%.32s'", a);
			return RD_ERR_INVALID;
		}
	}
	return 0;
}

static void
dispatch(struct cconn *c, struct ctl_request *req)
{
	char msg[256];
	const struct command *cmd = NULL;

	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, req->argv[0]) == 0)
			cmd = &commands[i];
	if (cmd == NULL) {
		fail(c, 2, "unknown command '%.32s'", req->argv[0]);
		return;
	}
	if (parse_opts(req, &c->o, msg, sizeof(msg)) != 0) {
		fail(c, 2, "%s: %s", cmd->name, msg);
		return;
	}
	if (cmd->vm == 2 && c->o.vm == NULL) {
		fail(c, 2, "%s: a VM name is required", cmd->name);
		return;
	}
	log_debug("control: %s%s%s", cmd->name, c->o.vm ? " " : "",
	    c->o.vm ? c->o.vm : "");
	cmd->fn(c);
}

/* --- connections --------------------------------------------------------- */

static void
conn_free(struct cconn *c)
{
	struct control *ctl = c->ctl;
	for (struct cconn **p = &ctl->conns; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	if (c->bev)
		bufferevent_free(c->bev);
	for (int i = 0; i < CAT_MAX_DISKS; i++)
		free(c->paths[i]);
	wb_free(&c->out);
	if (c->progress_ev)
		event_free(c->progress_ev);
	for (size_t i = 0; i < c->ntodo; i++)
		free(c->todo[i]);
	free(c->todo);
	wb_free(&c->text);
	free((char *)c->o.vm);
	free((char *)c->o.to);
	free((char *)c->o.name);
	free((char *)c->o.host);
	free(c);
}

/* The client went away (or the daemon stops). */
static void
conn_gone(struct cconn *c)
{
	c->gone = 1;
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	if (c->waiting) {
		pvm_cancel_waiter(c->waiting, c);
		c->waiting = NULL;
		c->busy = 0;
	}
	if (!c->busy)
		conn_free(c);
}

static void
conn_read(struct bufferevent *bev, void *arg)
{
	struct cconn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct ctl_request req;
	size_t used;
	int r;

	if (c->finished || c->dispatched) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	size_t len = evbuffer_get_length(in);
	r = ctl_get_request(evbuffer_pullup(in, (ev_ssize_t)len), len, &req,
	    &used);
	if (r == 0)
		return;
	if (r < 0) {
		log_warnx("control: bad request: %s", rd_strerror(r));
		fail(c, 2, "bad request: %s", rd_strerror(r));
		ctl_request_free(&req);
		return;
	}
	evbuffer_drain(in, used);
	c->dispatched = 1;
	bufferevent_set_timeouts(bev, NULL, NULL);
	dispatch(c, &req);
	ctl_request_free(&req);
}

static void
conn_event(struct bufferevent *bev, short what, void *arg)
{
	conn_gone(arg);
}

static void
on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct control *ctl = arg;
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
	    (cred.uid != 0 && cred.uid != geteuid())) {
		log_warnx("control: connection from uid %d refused",
		    len == sizeof(cred) ? (int)cred.uid : -1);
		evutil_closesocket(fd);
		return;
	}
	struct cconn *c = xcalloc(1, sizeof(*c));
	c->ctl = ctl;
	wb_init(&c->out);
	c->bev = bufferevent_socket_new(ctl->svc->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		evutil_closesocket(fd);
		free(c);
		return;
	}
	c->next = ctl->conns;
	ctl->conns = c;
	bufferevent_setcb(c->bev, conn_read, on_flushed, conn_event, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, CTL_MAX_REQUEST + 8);
	struct timeval tv = { REQUEST_TIMEOUT_S, 0 };
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

struct control *
control_init(struct svc *svc)
{
	struct control *ctl = xcalloc(1, sizeof(*ctl));
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	const char *path = svc->cfg->control_socket;

	ctl->svc = svc;
	if (strlen(path) >= sizeof(sun.sun_path))
		fatalx("control_socket %s: path too long", path);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);

	/* A socket file that answers belongs to a running replicad. */
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sun,
	    sizeof(sun)) == 0)
		fatalx("another replicad is running on %s", path);
	if (probe >= 0)
		close(probe);
	if (unlink(path) != 0 && errno != ENOENT)
		fatal("cannot remove stale %s", path);

	mode_t old = umask(0077);
	ctl->listener = evconnlistener_new_bind(svc->base, on_accept, ctl,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
	    (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (ctl->listener == NULL)
		fatal("cannot create control socket %s", path);
	if (chmod(path, 0600) != 0)
		fatal("chmod %s", path);
	return ctl;
}

void
control_stop(struct control *ctl)
{
	if (ctl == NULL)
		return;
	if (ctl->listener) {
		evconnlistener_free(ctl->listener);
		ctl->listener = NULL;
		unlink(ctl->svc->cfg->control_socket);
	}
	struct cconn *c = ctl->conns, *next;
	for (; c; c = next) {
		next = c->next;
		if (c->waiting)
			conn_gone(c);
	}
}

int
control_flushing(const struct control *ctl)
{
	int n = 0;

	if (ctl == NULL)
		return 0;
	for (const struct cconn *c = ctl->conns; c; c = c->next)
		if (c->bev != NULL && evbuffer_get_length(
		    bufferevent_get_output(c->bev)) > 0)
			n++;
	return n;
}

void
control_fini(struct control *ctl)
{
	if (ctl == NULL)
		return;
	while (ctl->conns) {
		ctl->conns->busy = 0;
		conn_free(ctl->conns);
	}
	free(ctl);
}
