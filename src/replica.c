/*
 * replica.c — sessions from primaries.
 *
 * The loop thread reads frames, checks the session's state, and routes
 * each cycle's CYCLE, DATA and END frames, in order, into batches that a
 * worker job decodes, checks (range, decompression, hash) and stages
 * (store.c).  The job that meets END checks the cycle digest and applies
 * the cycle; then the loop sends ACK.  Any bad frame ends the session
 * with a NACK and a log line, and the store abandons the cycle: nothing
 * of it is applied (S1).
 */
#include <errno.h>
#include <netdb.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <zstd.h>

#include "catalog.h"
#include "config.h"
#include "delta.h"
#include "fault.h"
#include "err.h"
#include "gate.h"
#include "log.h"
#include "netio.h"
#include "pool.h"
#include "replica.h"
#include "role.h"
#include "store.h"
#include "svc.h"
#include "tls.h"
#include "util.h"
#include "vmtab.h"
#include "wire.h"
#include "work.h"
#include "xmalloc.h"

/*
 * A session holds at most a batch being staged, the next one filling and
 * its socket input: with evbuffer chains rounded up to powers of two, about
 * twice BATCH_BYTES * 2 + IN_HIGH of memory however large the cycle.
 */
#define BATCH_BYTES	(4u << 20)	/* frames handed to one stage job */
#define HELLO_MAX	(WIRE_FRAME_HDR + 4096 + WIRE_MAX_DISKS * \
			    (NAME_MAX_LEN + 16))
#define FLUSH_US	20000		/* a pause that stages a partial batch */
#define IN_HIGH		(WIRE_MAX_FRAME + (1u << 20))	/* a whole frame fits */
/* Output waiting for a primary that does not read (a resync's SIG frames
 * come from every batch of SUMS): no more is staged past this until it
 * has all gone. */
#define OUT_CAP		(4u << 20)
/* SUMS frames in one batch: each may ask for the SIGs of 64 MiB of disk
 * (about 330 KiB), so a batch's output stays under 3 MiB. */
#define SUMS_PER_BATCH	8
#define IDLE_TIMEOUT_S	600
#define REFUSE_S	5		/* a NACK's whole way out */
#define LINGER_S	2		/* reading after a NACK's FIN */
#define REPORT_S	60		/* drops are summed up this often */

_Static_assert(WIRE_MAX_DEFINITION <= CAT_MAX_DEFINITION,
    "a definition that may travel can be recorded");

struct rvm {
	struct svc	*svc;
	struct vme	*e;		/* its entry in the VM table */
	char		 name[NAME_MAX_LEN + 1];
	struct store	*st;
	struct rsess	*owner;		/* the session sending a cycle */
	struct rsess	*waiting;	/* takes over once owner is freed */
	uint64_t	 interval_ms;
	char		 error[512];
	uint64_t	 received;
	uint64_t	 last_bytes;
	uint64_t	 points_total;	/* since the daemon started */
	uint64_t	 failures_total;
	uint64_t	 received_total;	/* frame bytes */
	int		 nospace;	/* the last cycle was refused for space */
};

enum rsess_state {
	RS_HANDSHAKE,
	RS_HELLO,	/* waiting for HELLO */
	RS_WAITING,	/* HELLO read; the VM's old session is closing */
	RS_READY,	/* between cycles: CYCLE may come */
	RS_CYCLE,	/* DATA or END may come */
	RS_CLOSING,	/* flushing a NACK */
};

struct rsess {
	struct replica_srv	*srv;
	struct rsess		*next;
	struct bufferevent	*bev;
	enum rsess_state	 state;
	char			 addr[64];
	struct sockaddr_storage	 sa;
	struct gate_conn	*gc;		/* its place in the budgets */
	struct event		*deadline_ev;	/* handshake, then refusal */
	int			 known;		/* an [accept] entry names it */
	char			 identity[HOST_MAX_LEN + 1];
	struct rvm		*vm;
	struct wire_hello	 hello;
	uint64_t		 max_disk_size;	/* [accept] quota (0: none) */
	uint64_t		 gen;		/* the generation it was welcomed
						   at (a reassigned sender's is
						   the replica's, not HELLO's) */
	int			 adopt;		/* WELCOME tells it to take gen */
	/* the cycle being received: touched by jobs only while one runs */
	struct wire_cycle	 cycle;
	int			 cycle_open;	/* store_cycle_begin done */
	struct wire_digest	 dig;
	uint64_t		 nframes;
	uint64_t		 raw_bytes;
	int			 def_seen;	/* DEFINITION came in it */
	ZSTD_DCtx		*dctx;		/* a stage job's (pool.h) */
	uint8_t			*block;		/* likewise: block_size bytes */
	struct evbuffer		*batch;		/* being staged by the job */
	struct evbuffer		*pending;	/* filled by the loop meanwhile */
	int			 pending_full;	/* BATCH_BYTES reached, or END */
	int			 out_paused;	/* reading waits for the output */
	int			 pending_sums;	/* SUMS frames in pending */
	struct event		*flush_ev;	/* stages a partial batch once
						   the stream pauses */
	int			 job_running;
	int			 dead;
	int			 job_rc;
	uint16_t		 nack_code;
	char			 err[512];
	struct cat_point	 point;
	int			 committed;
	struct sess_op		*op;	/* a role change the session waits for */
	uint64_t		 acked;		/* cycle ACKed in this session */
	/* liveness (KEEPALIVE, version 3 sessions) */
	struct event		*ka_ev;		/* sends ours when idle */
	uint64_t		 applying;	/* END of this cycle is in, no
						   ACK or NACK yet */
	uint64_t		 silence_ms;	/* nothing read this long ends
						   the session */
	int			 half_closed;	/* NACK sent, then FIN */
	struct wbuf		 out;
	/* a resynchronising cycle (wire.h): touched by jobs only */
	int			 resync;
	uint32_t		 unit;		/* SUMS granularity */
	uint32_t		 chunk;		/* longest SIG range */
	uint16_t		 sums_disk;	/* where the next SUMS starts */
	uint64_t		 sums_off;
	int			 sums_done;
	uint64_t		 nsigs;
	struct sigq {
		uint16_t	 disk;
		uint64_t	 off;
		uint32_t	 len;
	}			*sigq;		/* SIGs awaiting their DELTA */
	size_t			 sigq_head, sigq_len, sigq_cap;
	uint8_t			*basis;		/* chunk buffers */
	uint8_t			*newc;
	struct digest		*bdig;		/* a chunk's block digests */
	struct digest		*rdig;		/* the digests recorded for it */
	uint64_t		 repaired;	/* damaged blocks put right */
	uint64_t		 lost;		/* damaged and changed since */
	struct wbuf		 tmp;
	struct wbuf		 sigout;	/* SIG frames for the loop */
};

struct replica_srv {
	struct svc		*svc;
	struct evconnlistener	*listener;
	struct event		*pause_ev;	/* accepting again after EMFILE */
	struct rsess		*sessions;
	struct gate		*gate;
	struct event		*report_ev;	/* the drop summary */
	const struct replica_events *ev;
	void			*ev_ctx;
};

/* A role change a session waits for; it may end before the change. */
struct sess_op {
	struct rsess	*s;
	char		 vm[NAME_MAX_LEN + 1];
};

static void sess_read(struct bufferevent *bev, void *arg);
static void sess_end(struct rsess *s);
static void welcome(struct rsess *s, struct rvm *vm);
static void submit_batch(struct rsess *s);
static void skip_empty_disks(struct rsess *s);
static void start_demotion(struct rsess *s, struct vme *e,
    const struct cfg_accept *acc);
static void on_closing_write(struct bufferevent *bev, void *arg);
static void on_closing_read(struct bufferevent *bev, void *arg);
static void on_closing_event(struct bufferevent *bev, short what, void *arg);
static void sess_refuse(struct rsess *s, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* --- VMs ------------------------------------------------------------------ */

struct store *
rvm_store(struct rvm *vm)
{
	return vm->st;
}

void
rvm_status(struct rvm *vm, struct rvm_status *out)
{
	struct cat_rel rel;
	store_rel(vm->st, &rel);
	memset(out, 0, sizeof(*out));
	out->name = vm->name;
	out->peer = vt_owner(vm->e);
	out->receiving = vm->owner != NULL && vm->owner->state == RS_CYCLE;
	out->generation = rel.generation;
	out->last_point = rel.last_point;
	out->last_point_ms = rel.last_point_created_ms;
	out->interval_ms = vm->interval_ms;
	out->error = vm->error;
	out->received_bytes = vm->received;
	out->last_bytes = vm->last_bytes;
	out->nospace = vm->nospace;
	out->points_total = vm->points_total;
	out->failures_total = vm->failures_total;
	out->received_total = vm->received_total;
}

/* What the VM table may ask of a replica (vmtab.h): a role change ends
 * the VM's sessions (and refuses new ones while it holds the VM). */
static void
rvm_quiesce(void *obj)
{
	struct rvm *vm = obj;
	if (vm->waiting)
		sess_end(vm->waiting);
	if (vm->owner)
		sess_end(vm->owner);
}

static int
rvm_in_use(void *obj)
{
	const struct rvm *vm = obj;
	return vm->owner != NULL || vm->waiting != NULL;
}

static const struct vt_ops rvm_ops = {
	.quiesce = rvm_quiesce,
	.in_use = rvm_in_use,
	.resume = NULL,
};

/* The replica of e served from store st (now the rvm's). */
static struct rvm *
rvm_attach(struct svc *svc, struct vme *e, const struct cat_rel *rel,
    struct store *st)
{
	struct rvm *vm = xcalloc(1, sizeof(*vm));

	vm->svc = svc;
	vm->e = e;
	snprintf(vm->name, sizeof(vm->name), "%s", rel->vm);
	vm->interval_ms = rel->interval_ms;
	vm->st = st;
	struct cat_rel now;
	struct cat_point last;
	store_rel(vm->st, &now);
	if (now.last_point && cat_point_get(svc->cat, now.vm, now.last_point,
	    &last) == 0)
		vm->last_bytes = last.bytes;
	vt_attach(e, VT_REPLICA, vm, &rvm_ops);
	return vm;
}

struct rvm *
replica_open(struct svc *svc, struct vme *e, const struct cat_rel *rel,
    char *const *paths, char *err, size_t errsz)
{
	struct store *st;

	if (store_open_paths(svc->cat, rel, paths, &st, err, errsz) != 0)
		return NULL;
	return rvm_attach(svc, e, rel, st);
}

void
replica_close(struct rvm *vm)
{
	if (rvm_in_use(vm))
		fatalx("%s: replica closed while a session uses it", vm->name);
	vt_detach(vm->e, VT_REPLICA);
	if (store_recorded(vm->st))
		store_close(vm->st);
	else
		store_discard(vm->st);	/* a HELLO's, never recorded */
	free(vm);
}

/*
 * A new relationship's last session ended before any of its cycles was
 * applied: it was never recorded, and what its HELLO made goes.
 */
static void
drop_unrecorded(struct rvm *vm)
{
	struct vme *e = vm->e;

	log_info("%s: no cycle from %s was applied: the new relationship is "
	    "not recorded, and its files are removed", vm->name, vt_owner(e));
	replica_close(vm);
	vt_remove(e);
}

/* --- session lifetime ---------------------------------------------------- */

static void
sess_free(struct rsess *s)
{
	struct replica_srv *srv = s->srv;
	for (struct rsess **p = &srv->sessions; *p; p = &(*p)->next)
		if (*p == s) {
			*p = s->next;
			break;
		}
	gate_leave(srv->gate, s->gc);
	struct rvm *vm = s->vm;
	struct rsess *next = NULL;
	if (vm && vm->waiting == s)
		vm->waiting = NULL;
	if (vm && vm->owner == s) {
		vm->owner = NULL;
		next = vm->waiting;
		vm->waiting = NULL;
	}
	if (s->bev)
		bufferevent_free(s->bev);
	if (s->batch)
		evbuffer_free(s->batch);
	if (s->pending)
		evbuffer_free(s->pending);
	if (s->flush_ev)
		event_free(s->flush_ev);
	if (s->deadline_ev)
		event_free(s->deadline_ev);
	if (s->ka_ev)
		event_free(s->ka_ev);
	wire_digest_free(&s->dig);
	wb_free(&s->out);
	free(s->sigq);
	free(s->basis);
	free(s->newc);
	free(s->bdig);
	free(s->rdig);
	wb_free(&s->tmp);
	wb_free(&s->sigout);
	if (s->op)
		s->op->s = NULL;	/* the role change goes on alone */
	free(s);
	if (next && vt_claimed(vm->e)) {
		next->vm = NULL;	/* it never had the VM */
		sess_refuse(next, WIRE_NACK_BUSY, "%s is changing roles",
		    vm->name);
		next = NULL;
	}
	if (next) {
		welcome(next, vm);
		sess_read(next->bev, next);	/* what came meanwhile */
	}
	if (vm && vm->owner == NULL && vm->waiting == NULL) {
		if (!store_recorded(vm->st) && !vt_claimed(vm->e) &&
		    !vt_in_use(vm->e))
			drop_unrecorded(vm);
		else
			vt_poke(vm->e);
	}
}

static void
job_abort(void *arg)
{
	struct rsess *s = arg;
	store_cycle_abort(s->vm->st);
	s->cycle_open = 0;
}

static void
abort_done(void *arg)
{
	struct rsess *s = arg;
	s->job_running = 0;
	sess_free(s);
}

/* Free the session once no job uses it; abandon an open cycle first. */
static void
sess_end(struct rsess *s)
{
	if (s->bev) {
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
	if (s->job_running) {
		s->dead = 1;
		return;
	}
	if (s->cycle_open && s->vm) {
		s->job_running = 1;
		work_submit(job_abort, abort_done, s);
		return;
	}
	sess_free(s);
}

static void
on_closing_write(struct bufferevent *bev, void *arg)
{
	struct rsess *s = arg;

	if (evbuffer_get_length(bufferevent_get_output(bev)) != 0 ||
	    s->half_closed)
		return;
	/*
	 * The NACK is out.  Closing now, with the peer's frames still
	 * arriving unread, would reset the connection, and the peer might
	 * never read why: send close_notify and FIN instead, and read on
	 * (throwing it away) until the peer closes, or briefly.
	 */
	s->half_closed = 1;
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	if (ssl)
		SSL_shutdown(ssl);
	shutdown(bufferevent_getfd(bev), SHUT_WR);
	struct timeval tv = { LINGER_S, 0 };
	evtimer_add(s->deadline_ev, &tv);
}

/* What a refused peer still sends is read and thrown away. */
static void
on_closing_read(struct bufferevent *bev, void *arg)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	evbuffer_drain(in, evbuffer_get_length(in));
}

/* The peer left, or the NACK could not be sent in time. */
static void
on_closing_event(struct bufferevent *bev, short what, void *arg)
{
	sess_end(arg);
}

/* Refuse: log, send NACK, close once it is sent. */
static void
sess_refuse(struct rsess *s, uint16_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
sess_refuse(struct rsess *s, uint16_t code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* A host no [accept] entry names is still a stranger: its refusals
	 * are counted, not each logged (a flood must not fill the log). */
	if (s->known || gate_note(s->srv->gate, (struct sockaddr *)&s->sa,
	    GATE_NOT_ACCEPTED))
		log_warnx("%s%s%s (%s): session refused: %s", s->vm ?
		    s->vm->name : "", s->vm ? ": " : "", s->identity[0] ?
		    s->identity : "unauthenticated", s->addr, msg);
	if (s->vm && s->vm->owner == s) {
		snprintf(s->vm->error, sizeof(s->vm->error), "%s", msg);
		s->vm->failures_total++;
	}
	if (s->bev == NULL || s->state == RS_CLOSING) {
		sess_end(s);
		return;
	}
	s->state = RS_CLOSING;
	wb_reset(&s->out);
	wire_put_nack(&s->out, code, msg);
	netio_send(s->bev, &s->out);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	bufferevent_setwatermark(s->bev, EV_READ, 0, 0);
	bufferevent_setcb(s->bev, on_closing_read, on_closing_write,
	    on_closing_event, s);
	bufferevent_enable(s->bev, EV_READ);
	on_closing_read(s->bev, s);
	/* Absolute: a peer that keeps sending does not keep the slot. */
	bufferevent_set_timeouts(s->bev, NULL, NULL);
	struct timeval tv = { REFUSE_S, 0 };
	evtimer_add(s->deadline_ev, &tv);
}

/* --- stage jobs (worker) -------------------------------------------------- */

static int
job_fail(struct rsess *s, uint16_t code, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
job_fail(struct rsess *s, uint16_t code, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->err, sizeof(s->err), fmt, ap);
	va_end(ap);
	s->nack_code = code;
	s->job_rc = rc;
	return rc;
}

static int
stage_cycle(struct rsess *s, const uint8_t *p, size_t len)
{
	struct store_cycle c;
	int r;

	if ((r = wire_get_cycle(p, len, &s->cycle)) != 0)
		return job_fail(s, WIRE_NACK_PROTOCOL, r, "bad CYCLE frame: %s",
		    rd_strerror(r));
	if (s->cycle.ndisks != s->hello.ndisks)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_RANGE, "CYCLE "
		    "has %u disks, HELLO had %u", s->cycle.ndisks,
		    s->hello.ndisks);
	/* Past the store's own bound the store answers (MISMATCH). */
	for (uint16_t i = 0; i < s->cycle.ndisks; i++)
		if (s->max_disk_size && s->cycle.sizes[i] > s->max_disk_size &&
		    s->cycle.sizes[i] <= CFG_MAX_DISK_SIZE)
			return job_fail(s, WIRE_NACK_DENIED, RD_ERR_TOO_LARGE,
			    "quota: disk %s of %s would grow to %" PRIu64 " "
			    "bytes, above max_disk_size (%" PRIu64 " bytes)",
			    s->hello.disks[i].name, s->vm->name,
			    s->cycle.sizes[i], s->max_disk_size);
	/* A session outlives no role change (the replica ends it), but a
	 * cycle is checked against the relationship all the same (F1). */
	struct cat_rel rel;
	store_rel(s->vm->st, &rel);
	if (rel.role != CAT_ROLE_REPLICA || (s->gen != rel.generation &&
	    !(rel.reassigned && s->gen > rel.generation)))
		return job_fail(s, WIRE_NACK_FENCED, RD_ERR_FENCED, "cycle at "
		    "generation %" PRIu64 ", this host is %s at generation %"
		    PRIu64, s->gen, rel.role == CAT_ROLE_REPLICA ?
		    "the replica" : "the primary", rel.generation);
	/* The copy here is another host's: its first cycle compares. */
	if (rel.reassigned && !(s->cycle.flags & WIRE_CYCLE_RESYNC))
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_STATE, "%s was "
		    "reassigned to %s: its first cycle must compare the disks "
		    "(a resync)", s->vm->name, s->identity);
	memset(&c, 0, sizeof(c));
	c.cycle = s->cycle.cycle;
	c.created_ms = (int64_t)s->cycle.created_ms;
	c.kind = s->cycle.kind;
	c.generation = s->gen;
	c.ndisks = s->cycle.ndisks;
	memcpy(c.sizes, s->cycle.sizes, c.ndisks * sizeof(uint64_t));
	char why[sizeof(s->err)];
	if ((r = store_cycle_begin(s->vm->st, &c, why, sizeof(why))) != 0)
		return job_fail(s, r == RD_ERR_RANGE ? WIRE_NACK_PROTOCOL :
		    r == RD_ERR_SHRUNK || r == RD_ERR_TOO_LARGE ?
		    WIRE_NACK_MISMATCH : WIRE_NACK_IO, r,
		    "%s", why);
	s->cycle_open = 1;
	wire_digest_init(&s->dig);
	s->nframes = 0;
	s->raw_bytes = 0;
	s->def_seen = 0;
	s->resync = (s->cycle.flags & WIRE_CYCLE_RESYNC) != 0;
	if (s->resync) {
		s->unit = wire_sum_unit(s->hello.block_size);
		s->chunk = wire_chunk_len(s->hello.block_size);
		s->sums_disk = 0;
		s->sums_off = 0;
		s->sums_done = 0;
		s->nsigs = 0;
		s->repaired = s->lost = 0;
		s->sigq_head = s->sigq_len = 0;
		if (s->basis == NULL) {
			s->basis = xmalloc(s->chunk);
			s->newc = xmalloc(s->chunk);
			s->bdig = xcalloc(s->chunk / s->hello.block_size,
			    sizeof(struct digest));
			s->rdig = xcalloc(s->chunk / s->hello.block_size,
			    sizeof(struct digest));
		}
		skip_empty_disks(s);
		log_info("%s: cycle %" PRIu64 " resynchronises the replica with "
		    "the primary (only differences travel)", s->vm->name,
		    s->cycle.cycle);
	}
	return 0;
}

static int
stage_data(struct rsess *s, const uint8_t *p, size_t len)
{
	struct wire_data m;
	int r;

	if (s->resync)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_STATE, "DATA in a "
		    "resync cycle");
	if ((r = wire_get_data(p, len, &m)) != 0)
		return job_fail(s, WIRE_NACK_PROTOCOL, r, "bad DATA frame: %s",
		    rd_strerror(r));
	if ((r = wire_check_data(&m, &s->cycle, s->hello.block_size)) != 0)
		return job_fail(s, WIRE_NACK_BAD_DATA, r, "DATA out of range: "
		    "disk %u offset %" PRIu64 " length %u", m.disk, m.offset,
		    m.length);
	wire_digest_update(&s->dig, &m);
	s->nframes++;
	s->raw_bytes += m.length;
	char why[sizeof(s->err)];
	if (m.encoding == WIRE_ENC_ZERO) {
		r = store_cycle_put(s->vm->st, m.disk, m.offset, m.length,
		    NULL, NULL, why, sizeof(why));
		return r == 0 ? 0 : job_fail(s, WIRE_NACK_IO, r, "%s", why);
	}
	if ((r = wire_data_content(&m, s->block, s->dctx)) != 0)
		return job_fail(s, WIRE_NACK_BAD_DATA, r, "disk %s offset %"
		    PRIu64 ": %s", s->hello.disks[m.disk].name, m.offset,
		    r == RD_ERR_HASH ? "content does not match its hash" :
		    "cannot decompress");
	if ((r = store_cycle_put(s->vm->st, m.disk, m.offset, m.length,
	    s->block, &m.hash, why, sizeof(why))) != 0)
		return job_fail(s, r == RD_ERR_NOSPACE ? WIRE_NACK_NOSPACE :
		    r == RD_ERR_HASH ? WIRE_NACK_BAD_DATA : WIRE_NACK_IO, r,
		    "%s", why);
	return 0;
}

/* The VM's definition at the cut: staged with the cycle, recorded with
 * its point. */
static int
stage_definition(struct rsess *s, const uint8_t *p, size_t len)
{
	struct wire_definition m;
	char why[sizeof(s->err)];
	int r;

	if ((r = wire_get_definition(p, len, &m)) != 0)
		return job_fail(s, WIRE_NACK_PROTOCOL, r, "bad DEFINITION "
		    "frame: %s", rd_strerror(r));
	if (s->def_seen)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_STATE, "a second "
		    "DEFINITION in cycle %" PRIu64, s->cycle.cycle);
	s->def_seen = 1;
	wire_digest_definition(&s->dig, m.xml, m.len);
	if ((r = store_cycle_definition(s->vm->st, m.xml, m.len, why,
	    sizeof(why))) != 0)
		return job_fail(s, WIRE_NACK_INTERNAL, r, "%s", why);
	log_info("%s: cycle %" PRIu64 " carries the VM's definition (%zu "
	    "bytes)", s->vm->name, s->cycle.cycle, m.len);
	return 0;
}

/* SUMS may not start inside a disk with no chunks. */
static void
skip_empty_disks(struct rsess *s)
{
	while (s->sums_disk < s->cycle.ndisks &&
	    s->sums_off >= s->cycle.sizes[s->sums_disk]) {
		s->sums_disk++;
		s->sums_off = 0;
	}
	if (s->sums_disk == s->cycle.ndisks && !s->sums_done) {
		struct wire_sigend e = { .cycle = s->cycle.cycle,
		    .nsigs = s->nsigs };
		s->sums_done = 1;
		wire_put_sigend(&s->sigout, &e);
	}
}

/* Sign the replica's range [off, off + len) of the slice in s->basis
 * that starts at slice, and queue the SIG for the loop to send. */
static int
sign_range(struct rsess *s, uint16_t disk, uint64_t slice, uint64_t off,
    size_t len)
{
	int r;

	wb_reset(&s->tmp);
	if ((r = delta_sign(s->basis + (off - slice), len, WIRE_SIG_BLOCK,
	    &s->tmp)) != 0)
		return job_fail(s, WIRE_NACK_INTERNAL, r, "cannot sign disk %u "
		    "offset %" PRIu64 ": %s", disk, off, rd_strerror(r));
	struct wire_chunk sig = { .disk = disk, .offset = off,
	    .length = (uint32_t)len, .payload = s->tmp.p,
	    .payload_len = s->tmp.len };
	wire_put_sig(&s->sigout, &sig);
	if (s->sigq_len == s->sigq_cap) {
		/* Compact, then grow. */
		if (s->sigq_head > 0)
			memmove(s->sigq, s->sigq + s->sigq_head,
			    (s->sigq_len - s->sigq_head) * sizeof(*s->sigq));
		s->sigq_len -= s->sigq_head;
		s->sigq_head = 0;
		if (s->sigq_len == s->sigq_cap) {
			s->sigq_cap = s->sigq_cap ? 2 * s->sigq_cap : 64;
			s->sigq = xreallocarray(s->sigq, s->sigq_cap,
			    sizeof(*s->sigq));
		}
	}
	s->sigq[s->sigq_len++] = (struct sigq){ disk, off, (uint32_t)len };
	s->nsigs++;
	return 0;
}

/*
 * Compare each unit's digest with the replica's: equal units are done
 * (their block digests are noted for verify); each run of units that
 * differ is signed and the SIG queued for the loop to send.  The data
 * is read once, a slice of up to s->chunk bytes at a time; a run never
 * crosses a slice.
 */
static int
stage_sums(struct rsess *s, const uint8_t *p, size_t len)
{
	struct wire_sums m;
	char why[sizeof(s->err)];
	int r;

	if (!s->resync)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_STATE, "SUMS in a "
		    "cycle that is not a resync");
	if ((r = wire_get_sums(p, len, &m)) != 0)
		return job_fail(s, WIRE_NACK_PROTOCOL, r, "bad SUMS frame: %s",
		    rd_strerror(r));
	if (s->sums_done || m.disk != s->sums_disk || m.offset != s->sums_off ||
	    m.chunk != s->unit)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_RANGE, "SUMS for "
		    "disk %u offset %" PRIu64 " out of order", m.disk, m.offset);
	uint64_t size = s->cycle.sizes[m.disk];
	if ((uint64_t)(m.count - 1) * m.chunk >= size - m.offset)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_RANGE, "SUMS "
		    "past the end of disk %u", m.disk);
	uint32_t bs = s->hello.block_size, u = s->unit;
	uint64_t end = m.offset + (uint64_t)m.count * u;
	if (end > size)
		end = size;
	for (uint64_t slice = m.offset; slice < end; slice += s->chunk) {
		size_t n = end - slice < s->chunk ? (size_t)(end - slice) :
		    s->chunk;
		if ((r = store_read(s->vm->st, m.disk, slice, n, s->basis, why,
		    sizeof(why))) != 0)
			return job_fail(s, WIRE_NACK_IO, r, "%s", why);
		digest_blocks(s->basis, n, bs, s->bdig);
		uint64_t run_off = 0;
		size_t run_len = 0;
		for (uint64_t o = slice; o < slice + n; o += u) {
			size_t ul = slice + n - o < u ? (size_t)(slice + n - o) : u;
			size_t first = (size_t)((o - slice) / bs);
			size_t nb = (ul + bs - 1) / bs;
			struct digest want, have;
			memcpy(want.b, m.digests + (size_t)((o - m.offset) / u) *
			    DIGEST_LEN, DIGEST_LEN);
			digest_chunk(&s->bdig[first], nb, &have);
			if (!digest_equal(&want, &have)) {
				if (run_len == 0)
					run_off = o;
				run_len += ul;
				continue;
			}
			if (run_len > 0 && (r = sign_range(s, m.disk, slice,
			    run_off, run_len)) != 0)
				return r;
			run_len = 0;
			if ((r = store_put_digests(s->vm->st, m.disk, o,
			    &s->bdig[first], nb, why, sizeof(why))) != 0)
				return job_fail(s, WIRE_NACK_IO, r, "%s", why);
		}
		if (run_len > 0 && (r = sign_range(s, m.disk, slice, run_off,
		    run_len)) != 0)
			return r;
	}
	s->sums_off = m.offset + (uint64_t)m.count * m.chunk;
	skip_empty_disks(s);
	return 0;
}

/*
 * Patch the replica's chunk with the primary's delta, check the result
 * against the primary's digest (R2), and stage the blocks that differ:
 * from here on the cycle is applied like any other (undo, image, point).
 */
static int
stage_delta(struct rsess *s, const uint8_t *p, size_t len)
{
	struct wire_chunk m;
	char why[sizeof(s->err)];
	int r;

	if (!s->resync)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_STATE, "DELTA in a "
		    "cycle that is not a resync");
	if ((r = wire_get_delta(p, len, &m)) != 0)
		return job_fail(s, WIRE_NACK_PROTOCOL, r, "bad DELTA frame: %s",
		    rd_strerror(r));
	if (s->sigq_head == s->sigq_len)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_STATE, "DELTA "
		    "without a SIG");
	struct sigq *q = &s->sigq[s->sigq_head];
	if (m.disk != q->disk || m.offset != q->off || m.length != q->len)
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_RANGE, "DELTA for "
		    "disk %u offset %" PRIu64 ", expected disk %u offset %"
		    PRIu64, m.disk, m.offset, q->disk, q->off);
	s->sigq_head++;
	const uint8_t *delta = m.payload;
	if (m.encoding == WIRE_ENC_ZSTD) {
		wb_reset(&s->tmp);
		uint8_t *dst = wb_reserve(&s->tmp, m.delta_len);
		size_t n = ZSTD_decompressDCtx(s->dctx, dst, m.delta_len,
		    m.payload, m.payload_len);
		if (ZSTD_isError(n) || n != m.delta_len)
			return job_fail(s, WIRE_NACK_BAD_DATA, RD_ERR_COMPRESS,
			    "disk %s offset %" PRIu64 ": cannot decompress the "
			    "delta", s->hello.disks[m.disk].name, m.offset);
		delta = dst;
	}
	if ((r = store_read(s->vm->st, m.disk, m.offset, m.length, s->basis,
	    why, sizeof(why))) != 0)
		return job_fail(s, WIRE_NACK_IO, r, "%s", why);
	struct digest have;
	uint32_t bs = s->hello.block_size;
	if ((r = delta_patch(s->basis, delta, m.delta_len, s->newc,
	    m.length)) == 0) {
		digest_blocks(s->newc, m.length, bs, s->bdig);
		digest_chunk(s->bdig, (m.length + bs - 1) / bs, &have);
	}
	if (r != 0 || !digest_equal(&have, &m.hash))
		return job_fail(s, WIRE_NACK_BAD_DATA, r ? r : RD_ERR_HASH,
		    "disk %s offset %" PRIu64 ": %s", s->hello.disks[m.disk].name,
		    m.offset, r ? "bad delta" : "the patched chunk does not "
		    "match its hash");
	struct wire_data as = { .disk = m.disk, .offset = m.offset,
	    .length = m.length, .hash = m.hash };
	wire_digest_update(&s->dig, &as);
	s->nframes++;
	s->raw_bytes += m.length;
	if (s->nframes > 4)
		fault_point("replica-mid-resync");
	/*
	 * A block that differs may differ because the replica's copy was
	 * damaged (its content no longer matches the digest recorded when
	 * it was applied).  If the new content is what was recorded, the
	 * damage is simply put right in place: the newest point becomes
	 * true again, and its undo data stays exact.  If the block also
	 * changed on the primary, its content at the older points is lost.
	 */
	static const struct digest unknown;
	struct cat_rel rel;
	store_rel(s->vm->st, &rel);
	uint64_t old_size = rel.disks[m.disk].size;
	store_get_digests(s->vm->st, m.disk, m.offset, s->rdig,
	    (m.length + bs - 1) / bs);
	for (uint32_t o = 0, i = 0; o < m.length; o += bs, i++) {
		uint32_t n = m.length - o < bs ? m.length - o : bs;
		const uint8_t *nb = s->newc + o;
		struct digest was;
		if (memcmp(nb, s->basis + o, n) == 0) {
			r = store_put_digests(s->vm->st, m.disk, m.offset + o,
			    &s->bdig[i], 1, why, sizeof(why));
			goto next;
		}
		if (m.offset + o + n <= old_size &&
		    !digest_equal(&s->rdig[i], &unknown) &&
		    (digest_block(s->basis + o, n, &was),
		    !digest_equal(&was, &s->rdig[i]))) {
			if (digest_equal(&s->bdig[i], &s->rdig[i])) {
				r = store_repair(s->vm->st, m.disk, m.offset + o,
				    nb, n, why, sizeof(why));
				s->repaired++;
				goto next;
			}
			s->lost++;
		}
		if (util_is_zero(nb, n))
			r = store_cycle_put(s->vm->st, m.disk, m.offset + o, n,
			    NULL, NULL, why, sizeof(why));
		else
			r = store_cycle_put(s->vm->st, m.disk, m.offset + o, n,
			    nb, &s->bdig[i], why, sizeof(why));
next:
		if (r != 0)
			return job_fail(s, r == RD_ERR_NOSPACE ?
			    WIRE_NACK_NOSPACE : r == RD_ERR_HASH ?
			    WIRE_NACK_BAD_DATA : WIRE_NACK_IO, r, "%s", why);
	}
	return 0;
}

static int
stage_end(struct rsess *s, const uint8_t *p, size_t len)
{
	struct wire_end e;
	struct digest d;
	int r;

	if ((r = wire_get_end(p, len, &e)) != 0)
		return job_fail(s, WIRE_NACK_PROTOCOL, r, "bad END frame: %s",
		    rd_strerror(r));
	if (s->resync && (!s->sums_done || s->sigq_head != s->sigq_len))
		return job_fail(s, WIRE_NACK_PROTOCOL, RD_ERR_STATE, "END before "
		    "every chunk was compared and patched");
	if (s->repaired)
		log_warnx("%s: %" PRIu64 " damaged blocks of the replica put "
		    "right from the primary's copy", s->vm->name, s->repaired);
	if (s->lost)
		log_warnx("%s: %" PRIu64 " damaged blocks had changed on the "
		    "primary too: points older than this cycle hold the damaged "
		    "content in them", s->vm->name, s->lost);
	wire_digest_final(&s->dig, &d);
	if (e.cycle != s->cycle.cycle || e.nframes != s->nframes ||
	    e.raw_bytes != s->raw_bytes || !digest_equal(&d, &e.digest))
		return job_fail(s, WIRE_NACK_BAD_DATA, RD_ERR_HASH, "cycle %"
		    PRIu64 " does not match its END record (%" PRIu64 " frames "
		    "received, %" PRIu64 " announced)", s->cycle.cycle,
		    s->nframes, e.nframes);
	char why[sizeof(s->err)];
	fault_hold("replica-hold-apply");
	r = store_cycle_commit(s->vm->st, &s->point, why, sizeof(why));
	s->cycle_open = 0;
	if (r != 0)
		return job_fail(s, r == RD_ERR_NOSPACE ? WIRE_NACK_NOSPACE :
		    WIRE_NACK_IO, r, "cannot apply cycle %" PRIu64 ": %s",
		    s->cycle.cycle, why);
	s->committed = 1;
	return 0;
}

static void
stage_batch(struct rsess *s)
{
	int r = 0;

	s->job_rc = 0;
	s->committed = 0;
	while (r == 0 && evbuffer_get_length(s->batch) > 0) {
		uint8_t type;
		size_t flen;
		if (netio_peek(s->batch, WIRE_MAX_FRAME, &type, &flen) != 1) {
			r = job_fail(s, WIRE_NACK_INTERNAL, RD_ERR_INTERNAL,
			    "internal error: partial frame in batch");
			break;
		}
		const uint8_t *p = netio_payload(s->batch, flen);
		size_t plen = flen - WIRE_FRAME_HDR;
		if (type == WIRE_CYCLE)
			r = stage_cycle(s, p, plen);
		else if (type == WIRE_DATA)
			r = stage_data(s, p, plen);
		else if (type == WIRE_END)
			r = stage_end(s, p, plen);
		else if (type == WIRE_SUMS)
			r = stage_sums(s, p, plen);
		else if (type == WIRE_DELTA)
			r = stage_delta(s, p, plen);
		else if (type == WIRE_DEFINITION)
			r = stage_definition(s, p, plen);
		evbuffer_drain(s->batch, flen);
	}
	evbuffer_drain(s->batch, evbuffer_get_length(s->batch));
	if (r != 0 && s->cycle_open) {
		store_cycle_abort(s->vm->st);
		s->cycle_open = 0;
	}
}

/*
 * Stage a batch, with a decompression context and a block buffer taken
 * from the shared pool for the job only: an idle session holds neither,
 * and what the host holds for them is bounded by the jobs running at
 * once, not by its number of sessions.
 */
static void
job_stage(void *arg)
{
	struct rsess *s = arg;
	size_t bs = s->hello.block_size;

	s->dctx = pool_dctx_get();
	s->block = pool_buf_get(bs);
	stage_batch(s);
	pool_dctx_put(s->dctx);
	pool_buf_put(s->block, bs);
	s->dctx = NULL;
	s->block = NULL;
}

/* A resync's chunk buffers go once its cycle is applied (a kept session
 * may live on for many cycles that need none). */
static void
free_resync_buffers(struct rsess *s)
{
	free(s->basis);
	free(s->newc);
	free(s->bdig);
	free(s->rdig);
	s->basis = s->newc = NULL;
	s->bdig = s->rdig = NULL;
}

static void
stage_done(void *arg)
{
	struct rsess *s = arg;
	struct rvm *vm = s->vm;

	s->job_running = 0;
	if (s->dead) {
		sess_end(s);
		return;
	}
	if (s->state == RS_CLOSING)
		return;		/* refused meanwhile: no ACK after a NACK */
	if (s->job_rc != 0 || s->committed)
		s->applying = 0;
	if (s->job_rc != 0) {
		if (vm && s->nack_code == WIRE_NACK_NOSPACE)
			vm->nospace = 1;
		sess_refuse(s, s->nack_code, "%s", s->err);
		return;
	}
	if (s->sigout.len > 0)
		netio_send(s->bev, &s->sigout);
	if (s->committed) {
		struct wire_ack a = { .cycle = s->cycle.cycle,
		    .point = s->point.id };
		log_info("%s: cycle %" PRIu64 " applied as point %" PRIu64
		    " (%" PRIu64 " bytes, undo %" PRIu64 " bytes)", vm->name,
		    s->cycle.cycle, s->point.id, s->point.bytes,
		    s->point.undo_bytes);
		vm->error[0] = '\0';
		vm->nospace = 0;
		vm->last_bytes = s->point.bytes;
		vm->points_total++;
		struct role_view view;
		vt_view(vm->e, &view);
		if (view.reassigned) {
			/* The reassignment is done: the point cleared it
			 * (and raised the generation to the sender's). */
			struct cat_rel rel;
			store_rel(vm->st, &rel);
			vt_set_rel(vm->e, &rel);
			s->adopt = 0;
		}
		vm->received = 0;
		free_resync_buffers(s);
		wb_reset(&s->out);
		wire_put_ack(&s->out, &a);
		netio_send(s->bev, &s->out);
		s->acked = a.cycle;
		s->state = RS_READY;
		s->committed = 0;
	}
	/* Go on with what arrived meanwhile. */
	if (s->state == RS_READY || s->state == RS_CYCLE)
		bufferevent_enable(s->bev, EV_READ);
	submit_batch(s);
	sess_read(s->bev, s);
}

/*
 * The output has all gone: a session that stopped reading because of it
 * (out_full()) goes on.
 */
static void
sess_write(struct bufferevent *bev, void *arg)
{
	struct rsess *s = arg;

	if (!s->out_paused || s->state == RS_CLOSING ||
	    s->state == RS_WAITING)
		return;
	s->out_paused = 0;
	bufferevent_enable(bev, EV_READ);
	submit_batch(s);
	sess_read(bev, s);
}

static int
out_full(const struct rsess *s)
{
	return evbuffer_get_length(bufferevent_get_output(s->bev)) >= OUT_CAP;
}

/*
 * Hand a full batch to a worker.  The loop goes on reading into the next
 * one meanwhile (up to the input watermark), so receiving and staging
 * overlap, and each worker job carries megabytes, not one block.  Not
 * while the output waits for the primary (out_full()).
 */
static void
submit_batch(struct rsess *s)
{
	if (s->job_running || !s->pending_full || out_full(s))
		return;
	struct evbuffer *t = s->batch;
	s->batch = s->pending;
	s->pending = t;
	s->pending_full = 0;
	s->pending_sums = 0;
	s->job_running = 1;
	work_submit(job_stage, stage_done, s);
}

/* --- role changes a session asks for ------------------------------------- */

static struct sess_op *
op_new(struct rsess *s, const char *vm)
{
	struct sess_op *op = xcalloc(1, sizeof(*op));
	op->s = s;
	snprintf(op->vm, sizeof(op->vm), "%s", vm);
	s->op = op;
	return op;
}

/* The demotion ended: welcome the HELLO that asked for it, or refuse. */
static void
demotion_done(void *arg, int rc, const char *msg)
{
	struct sess_op *op = arg;
	struct rsess *s = op->s;
	free(op);
	if (s == NULL)
		return;		/* the primary went away meanwhile */
	s->op = NULL;
	struct vme *e = vt_find(s->srv->svc->vt, s->hello.vm);
	struct rvm *vm = e ? vt_rvm(e) : NULL;
	if (rc != 0 || vm == NULL) {
		sess_refuse(s, rc == RD_ERR_BUSY ? WIRE_NACK_BUSY :
		    WIRE_NACK_DENIED, "%s", msg ? msg :
		    "cannot become the replica");
		return;
	}
	s->gen = vt_generation(e);
	welcome(s, vm);
	sess_read(s->bev, s);
}

/*
 * The primary of the VM with a generation one above this host's: a
 * failover happened elsewhere and this host is asked to become its
 * replica (reverse, or a planned failover finishing).  The session waits.
 */
static void
start_demotion(struct rsess *s, struct vme *e, const struct cfg_accept *acc)
{
	struct replica_srv *srv = s->srv;

	if (srv->ev == NULL) {
		sess_refuse(s, WIRE_NACK_INTERNAL, "this host cannot change "
		    "roles now");
		return;
	}
	log_info("%s: %s (%s) is the primary at generation %" PRIu64 "; this "
	    "host becomes its replica", s->hello.vm, s->identity, s->addr,
	    s->hello.generation);
	s->state = RS_WAITING;
	bufferevent_disable(s->bev, EV_READ);
	srv->ev->demote(srv->ev_ctx, e, &s->hello, s->identity, acc,
	    demotion_done, op_new(s, s->hello.vm));
}

static void
promotion_done(void *arg, int rc, const char *msg)
{
	struct sess_op *op = arg;
	struct rsess *s = op->s;
	free(op);
	if (s == NULL)
		return;
	s->op = NULL;
	if (rc != 0) {
		sess_refuse(s, rc == RD_ERR_BUSY ? WIRE_NACK_BUSY : WIRE_NACK_IO,
		    "cannot take over: %s", msg);
		return;
	}
	wb_reset(&s->out);
	wire_put_promoted(&s->out, s->gen + 1);
	/* Sent, then closed: the session belongs to the old roles. */
	s->state = RS_CLOSING;
	struct rvm *vm = s->vm;
	if (vm && vm->owner == s)
		vm->owner = NULL;
	s->vm = NULL;
	netio_send(s->bev, &s->out);
	bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
	bufferevent_setwatermark(s->bev, EV_READ, 0, 0);
	bufferevent_setcb(s->bev, on_closing_read, on_closing_write,
	    on_closing_event, s);
	bufferevent_enable(s->bev, EV_READ);
	struct timeval tv = { 5, 0 };
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	if (vm && vm->waiting == NULL)
		vt_poke(vm->e);
}

/* Planned failover: the primary hands the VM over to this host. */
static void
on_promote(struct rsess *s, const uint8_t *p, size_t len)
{
	struct replica_srv *srv = s->srv;
	struct wire_promote m;
	struct role_view view;
	struct cat_rel rel;
	int r;

	if ((r = wire_get_promote(p, len, &m)) != 0) {
		sess_refuse(s, WIRE_NACK_PROTOCOL, "bad PROMOTE: %s",
		    rd_strerror(r));
		return;
	}
	store_rel(s->vm->st, &rel);
	vt_view(s->vm->e, &view);
	struct role_decision d = role_promote(&view, s->gen, s->acked,
	    rel.last_cycle, m.cycle, m.generation);
	if (d.verdict != ROLE_PROMOTE) {
		if (d.why == ROLE_WHY_LEAP || d.why == ROLE_WHY_STALE)
			sess_refuse(s, d.nack, "PROMOTE to generation %" PRIu64
			    ": this host is at %" PRIu64 ", and a planned "
			    "failover raises it by exactly one", m.generation,
			    rel.generation);
		else if (d.why == ROLE_WHY_BUSY)
			sess_refuse(s, d.nack, "PROMOTE: a role change, test "
			    "failover, verify or prune of %s is running here",
			    s->vm->name);
		else
			sess_refuse(s, d.nack, "PROMOTE for cycle %" PRIu64
			    " does not follow a cycle this session acknowledged "
			    "(newest cycle %" PRIu64 ")", m.cycle,
			    rel.last_cycle);
		return;
	}
	if (srv->ev == NULL) {
		sess_refuse(s, WIRE_NACK_INTERNAL, "this host cannot change "
		    "roles now");
		return;
	}
	log_info("%s: %s hands the VM over at generation %" PRIu64 "; it "
	    "becomes the replica at %s", s->vm->name, s->identity, m.generation,
	    m.listen);
	s->state = RS_WAITING;
	bufferevent_disable(s->bev, EV_READ);
	srv->ev->promote(srv->ev_ctx, s->vm->e, s->identity, &m,
	    promotion_done, op_new(s, s->vm->name));
}

/* --- HELLO ----------------------------------------------------------------- */

/*
 * A new relationship, the sender's: its store (directory, images) and its
 * entry in the VM table, but not the catalog: the first cycle applied
 * records it with its point (store.c), and a session that ends before
 * that leaves nothing behind (drop_unrecorded, or the next start's
 * sweep).  0, or the session is refused.
 */
static int
create_replica(struct rsess *s, const struct cfg_accept *acc, uint64_t gen)
{
	struct svc *svc = s->srv->svc;
	struct wire_hello *h = &s->hello;
	struct cat_rel rel;
	struct store *st;
	char err[512];

	role_rel_create(&rel, h->vm, s->identity, gen, acc->storage);
	rel.block_size = h->block_size;
	rel.interval_ms = h->interval_ms;
	rel.ndisks = h->ndisks;
	for (uint16_t i = 0; i < h->ndisks; i++) {
		snprintf(rel.disks[i].name, sizeof(rel.disks[i].name), "%s",
		    h->disks[i].name);
		/* A copy placed here beforehand (seeding) is kept, up to the
		 * primary's disk size, and compared by the first cycle. */
		struct stat sb;
		char *img = xasprintf("%s/%s/%s", acc->storage, h->vm,
		    h->disks[i].name);
		if (stat(img, &sb) == 0 && S_ISREG(sb.st_mode) &&
		    sb.st_size > 0) {
			uint64_t n = (uint64_t)sb.st_size;
			rel.disks[i].size = n < h->disks[i].size ? n :
			    h->disks[i].size;
			log_info("%s: %s holds %" PRIu64 " bytes: seeding from "
			    "it", h->vm, img, n);
		}
		free(img);
	}
	if (store_create(svc->cat, &rel, &st, err, sizeof(err)) != 0) {
		sess_refuse(s, WIRE_NACK_IO, "cannot make the replica of %s: %s",
		    h->vm, err);
		return -1;
	}
	rvm_attach(svc, vt_add(svc->vt, &rel), &rel, st);
	log_info("%s: new replica relationship from %s at generation %" PRIu64
	    ", %u disks, storage %s (recorded once its first cycle is "
	    "applied)", h->vm, s->identity, gen, h->ndisks, acc->storage);
	return 0;
}

/*
 * The quotas of the [accept] entry, checked before anything is made or
 * recorded: how many VMs the sender may have here and how many disks a
 * new one may have (creating), and how large each disk may be (always:
 * a disk grows).  0, or the session is refused.
 */
static int
check_quota(struct rsess *s, const struct cfg_accept *acc, int creating)
{
	struct vmtab *vt = s->srv->svc->vt;
	struct wire_hello *h = &s->hello;
	char a[32], b[32];
	unsigned n = 0;

	if (creating) {
		for (size_t i = 0; i < vt_count(vt); i++)
			if (vt_state(vt_at(vt, i)) == ROLE_REPLICA &&
			    role_same_identity(vt_owner(vt_at(vt, i)),
			    s->identity))
				n++;
		if (n >= acc->max_vms) {
			sess_refuse(s, WIRE_NACK_DENIED, "quota: %s may not "
			    "add %s: it has %u VMs here, and max_vms of "
			    "[accept %s] is %u", s->identity, h->vm, n,
			    acc->name, acc->max_vms);
			return -1;
		}
		if (h->ndisks > acc->max_disks) {
			sess_refuse(s, WIRE_NACK_DENIED, "quota: %s has %u "
			    "disks, and max_disks of [accept %s] is %u", h->vm,
			    h->ndisks, acc->name, acc->max_disks);
			return -1;
		}
	}
	for (uint16_t i = 0; i < h->ndisks; i++)
		if (h->disks[i].size > acc->max_disk_size) {
			util_format_bytes(h->disks[i].size, a, sizeof(a));
			util_format_bytes(acc->max_disk_size, b, sizeof(b));
			sess_refuse(s, WIRE_NACK_DENIED, "quota: disk %s of %s "
			    "is %s, and max_disk_size of [accept %s] is %s",
			    h->disks[i].name, h->vm, a, acc->name, b);
			return -1;
		}
	return 0;
}

static void
on_hello(struct rsess *s, const uint8_t *p, size_t len)
{
	struct svc *svc = s->srv->svc;
	struct wire_hello *h = &s->hello;
	const struct cfg_accept *acc;
	struct role_view view;
	struct cat_rel rel;
	struct rvm *vm;
	struct vme *e;
	char why[768];
	int r;

	if ((r = wire_get_hello(p, len, h)) != 0) {
		sess_refuse(s, WIRE_NACK_PROTOCOL, "bad HELLO: %s",
		    rd_strerror(r));
		return;
	}
	evtimer_del(s->deadline_ev);	/* a refusal sets its own */
	acc = config_match_accept(svc->cfg, s->identity, h->vm);
	e = vt_find(svc->vt, h->vm);
	if (e != NULL)
		vt_view(e, &view);
	else
		role_view_of(NULL, &view);
	struct role_decision d = role_hello(&view, s->identity, h->generation,
	    acc != NULL);
	switch (d.verdict) {
	case ROLE_REFUSE:
		role_refusal(&view, h->vm, s->identity, h->generation, &d, why,
		    sizeof(why));
		sess_refuse(s, d.nack, "%s", why);
		return;
	case ROLE_DEMOTE:
		start_demotion(s, e, acc);
		return;
	case ROLE_CREATE:
		if (check_quota(s, acc, 1) != 0 ||
		    create_replica(s, acc, d.generation) != 0)
			return;
		e = vt_find(svc->vt, h->vm);
		break;
	default:		/* ROLE_WELCOME, ROLE_WELCOME_ADOPT */
		if (check_quota(s, acc, 0) != 0)
			return;
		break;
	}
	s->max_disk_size = acc->max_disk_size;
	if ((vm = vt_rvm(e)) == NULL) {
		sess_refuse(s, WIRE_NACK_IO, "the replica of %s is unavailable "
		    "on this host%s%s", h->vm, vt_note(e)[0] ? ": " : "",
		    vt_note(e));
		return;
	}
	store_rel(vm->st, &rel);
	store_set_space(vm->st, acc->min_free_bytes, acc->min_free_pct);
	if (strcmp(rel.storage, acc->storage) != 0) {
		sess_refuse(s, WIRE_NACK_DENIED, "%s is stored in %s, but the "
		    "[accept %s] entry names %s", h->vm, rel.storage, acc->name,
		    acc->storage);
		return;
	}
	if (h->block_size != rel.block_size || h->ndisks != rel.ndisks) {
		sess_refuse(s, WIRE_NACK_MISMATCH, "%s: block size or disk "
		    "count differs from the replica (%u bytes, %u disks)",
		    h->vm, rel.block_size, rel.ndisks);
		return;
	}
	for (uint16_t i = 0; i < h->ndisks; i++)
		if (strcmp(h->disks[i].name, rel.disks[i].name) != 0) {
			sess_refuse(s, WIRE_NACK_MISMATCH, "%s: disk %u is %s "
			    "on the replica, %s on the primary", h->vm, i,
			    rel.disks[i].name, h->disks[i].name);
			return;
		}
	s->gen = d.generation;
	s->adopt = d.verdict == ROLE_WELCOME_ADOPT;
	if (vm->owner != NULL) {
		/*
		 * A primary runs one cycle at a time: a new session from the
		 * same host means the old one is dead (its host crashed, or
		 * the network cut it without a reset).  Close it and go on
		 * once its cycle is abandoned.  Anyone else waits its turn.
		 */
		if (!role_same_identity(vm->owner->identity, s->identity) ||
		    vm->waiting != NULL) {
			sess_refuse(s, WIRE_NACK_BUSY, "another session is "
			    "replicating %s", h->vm);
			return;
		}
		log_info("%s: new session from %s (%s) replaces the one from %s",
		    h->vm, s->identity, s->addr, vm->owner->addr);
		s->vm = vm;
		s->state = RS_WAITING;
		vm->waiting = s;
		bufferevent_disable(s->bev, EV_READ);
		sess_end(vm->owner);
		return;
	}
	welcome(s, vm);
}

/* --- liveness (KEEPALIVE, wire.h) ------------------------------------------ */

static int
keepalive_on(const struct rsess *s)
{
	return s->hello.version >= WIRE_VERSION_KEEPALIVE;
}

/* Nothing read for WIRE_KEEPALIVE_MISSES x every_ms ends the session. */
static void
set_silence(struct rsess *s, uint32_t every_ms)
{
	s->silence_ms = (uint64_t)WIRE_KEEPALIVE_MISSES * every_ms;
	struct timeval rtv = { (time_t)(s->silence_ms / 1000),
	    (suseconds_t)(s->silence_ms % 1000) * 1000 };
	struct timeval wtv = { IDLE_TIMEOUT_S, 0 };
	bufferevent_set_timeouts(s->bev, &rtv, &wtv);
}

static void
put_keepalive(struct rsess *s, struct wbuf *b)
{
	struct wire_keepalive k = { .cycle = s->applying,
	    .flags = s->applying ? WIRE_KEEPALIVE_APPLYING : 0,
	    .every_ms = s->srv->svc->cfg->keepalive_ms };
	wire_put_keepalive(b, &k);
}

/* Said whenever the session has nothing else to say: the primary knows
 * this host is alive, and applying its cycle while it waits for ACK. */
static void
on_keepalive_tick(evutil_socket_t fd, short what, void *arg)
{
	struct rsess *s = arg;
	struct wbuf b;

	if (s->bev == NULL || (s->state != RS_READY && s->state != RS_CYCLE) ||
	    evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
		return;
	wb_init(&b);
	put_keepalive(s, &b);
	netio_send(s->bev, &b);
	wb_free(&b);
}

/* The primary's KEEPALIVE: its interval sets how long silence may last.
 * 0, or the session is refused. */
static int
on_keepalive(struct rsess *s, const uint8_t *p, size_t len)
{
	struct wire_keepalive k;
	int r;

	if (!keepalive_on(s)) {
		sess_refuse(s, WIRE_NACK_PROTOCOL, "unexpected keepalive frame "
		    "in a version %u session", s->hello.version);
		return -1;
	}
	if ((r = wire_get_keepalive(p, len, &k)) != 0) {
		sess_refuse(s, WIRE_NACK_PROTOCOL, "bad KEEPALIVE: %s",
		    rd_strerror(r));
		return -1;
	}
	if ((uint64_t)WIRE_KEEPALIVE_MISSES * k.every_ms != s->silence_ms)
		set_silence(s, k.every_ms);
	return 0;
}

/* The session owns vm now: answer its HELLO. */
static void
welcome(struct rsess *s, struct rvm *vm)
{
	struct wire_hello *h = &s->hello;
	struct cat_rel rel;

	store_rel(vm->st, &rel);
	s->vm = vm;
	vm->owner = s;
	gate_welcomed(s->srv->gate, s->gc);
	vm->interval_ms = h->interval_ms;
	struct wire_welcome w = { .version = h->version,
	    .generation = s->gen, .last_cycle = rel.last_cycle,
	    .last_point = rel.last_point,
	    .flags = (store_has_data(vm->st) ? WIRE_WELCOME_DATA : 0) |
	    (s->adopt ? WIRE_WELCOME_ADOPT : 0) };
	wb_reset(&s->out);
	wire_put_welcome(&s->out, &w);
	if (keepalive_on(s))
		put_keepalive(s, &s->out);	/* says our interval */
	netio_send(s->bev, &s->out);
	s->state = RS_READY;
	if (keepalive_on(s)) {
		/* Our own interval until the primary says its own. */
		uint32_t every = s->srv->svc->cfg->keepalive_ms;
		struct timeval ktv = { (time_t)(every / 1000),
		    (suseconds_t)(every % 1000) * 1000 };
		set_silence(s, every);
		s->ka_ev = event_new(s->srv->svc->base, -1, EV_PERSIST,
		    on_keepalive_tick, s);
		event_add(s->ka_ev, &ktv);
	} else {
		struct timeval tv = { IDLE_TIMEOUT_S, 0 };
		bufferevent_set_timeouts(s->bev, &tv, &tv);
	}
	bufferevent_enable(s->bev, EV_READ);
	if (s->adopt)
		log_info("%s: %s (%s) sends it from now on (reassigned); it "
		    "takes generation %" PRIu64, h->vm, s->identity, s->addr,
		    s->gen);
	log_debug("%s: session from %s (%s)", h->vm, s->identity, s->addr);
}

/* --- reading -------------------------------------------------------------- */

static void
sess_read(struct bufferevent *bev, void *arg)
{
	struct rsess *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	while (s->state != RS_CLOSING && s->state != RS_WAITING &&
	    !s->pending_full && !out_full(s)) {
		uint8_t type;
		size_t flen;
		size_t max = s->state == RS_HELLO ? HELLO_MAX : WIRE_MAX_FRAME;
		int r = netio_peek(in, max, &type, &flen);
		if (r < 0) {
			sess_refuse(s, WIRE_NACK_PROTOCOL, "bad frame header: "
			    "%s", rd_strerror(r));
			return;
		}
		if (r == 0)
			break;
		if (s->state == RS_HELLO) {
			if (type != WIRE_HELLO) {
				sess_refuse(s, WIRE_NACK_PROTOCOL, "expected "
				    "HELLO, got %s", wire_type_name(type));
				return;
			}
			/* Off the input first: taking over a stale session
			 * may read this session's input again (welcome). */
			uint8_t hello[HELLO_MAX];
			size_t hlen = flen - WIRE_FRAME_HDR;
			memcpy(hello, netio_payload(in, flen), hlen);
			evbuffer_drain(in, flen);
			on_hello(s, hello, hlen);
			if (s->state == RS_CLOSING || s->state == RS_WAITING)
				return;
			continue;
		}
		if (type == WIRE_NACK) {
			struct wire_nack_msg n;
			if (wire_get_nack(netio_payload(in, flen),
			    flen - WIRE_FRAME_HDR, &n) == 0)
				log_warnx("%s: primary %s gave up: %s",
				    s->vm->name, s->identity, n.reason);
			sess_end(s);
			return;
		}
		if (type == WIRE_KEEPALIVE) {
			if (on_keepalive(s, netio_payload(in, flen),
			    flen - WIRE_FRAME_HDR) != 0)
				return;
			evbuffer_drain(in, flen);
			continue;
		}
		if (type == WIRE_PROMOTE && s->state == RS_READY &&
		    !s->job_running && !s->pending_full &&
		    evbuffer_get_length(s->pending) == 0) {
			uint8_t pm[WIRE_FRAME_HDR + 8 + 8 + 2 + HOST_MAX_LEN + 8];
			size_t plen = flen - WIRE_FRAME_HDR;
			if (plen > sizeof(pm)) {
				sess_refuse(s, WIRE_NACK_PROTOCOL, "PROMOTE too "
				    "long");
				return;
			}
			memcpy(pm, netio_payload(in, flen), plen);
			evbuffer_drain(in, flen);
			on_promote(s, pm, plen);
			return;
		}
		int ok = (type == WIRE_CYCLE && s->state == RS_READY) ||
		    ((type == WIRE_DATA || type == WIRE_END ||
		      type == WIRE_SUMS || type == WIRE_DELTA) &&
		     s->state == RS_CYCLE) ||
		    (type == WIRE_DEFINITION && s->state == RS_CYCLE &&
		     s->hello.version >= WIRE_VERSION_DEFINITION);
		if (!ok) {
			sess_refuse(s, WIRE_NACK_PROTOCOL, "unexpected %s frame",
			    wire_type_name(type));
			return;
		}
		/* A session kept between cycles was admitted under the
		 * [accept] entries of its HELLO: a reload may have taken the
		 * VM from its host since. */
		if (type == WIRE_CYCLE && config_match_accept(s->srv->svc->cfg,
		    s->identity, s->vm->name) == NULL) {
			sess_refuse(s, WIRE_NACK_DENIED, "host %s may not "
			    "replicate VM %s here any more (no matching "
			    "[accept] entry since the configuration was "
			    "reloaded)", s->identity, s->vm->name);
			return;
		}
		if (type == WIRE_CYCLE)
			s->state = RS_CYCLE;
		if (type == WIRE_END) {
			/* Keepalives say it is being applied (the job judges
			 * the frame). */
			struct wire_end e;
			s->applying = wire_get_end(netio_payload(in, flen),
			    flen - WIRE_FRAME_HDR, &e) == 0 ? e.cycle : 0;
		}
		evbuffer_remove_buffer(in, s->pending, flen);
		s->vm->received += flen;
		s->vm->received_total += flen;
		if (type == WIRE_END) {
			s->state = RS_READY;	/* ACK follows the job */
			s->pending_full = 1;
		} else if (evbuffer_get_length(s->pending) >= BATCH_BYTES ||
		    (type == WIRE_SUMS &&
		    ++s->pending_sums >= SUMS_PER_BATCH)) {
			s->pending_full = 1;
		}
	}
	submit_batch(s);
	if (!s->job_running && evbuffer_get_length(s->pending) > 0 &&
	    !evtimer_pending(s->flush_ev, NULL) && !out_full(s)) {
		struct timeval tv = { 0, FLUSH_US };
		evtimer_add(s->flush_ev, &tv);
	}
	if (s->state == RS_CLOSING || s->state == RS_WAITING)
		return;
	/*
	 * A full batch waits for the job, or the output for the primary:
	 * stop reading until then (stage_done(), sess_write()).  At the
	 * input's watermark libevent would otherwise call this again at
	 * once, over and over.
	 */
	if (out_full(s)) {
		s->out_paused = 1;
		bufferevent_disable(bev, EV_READ);
	} else if (s->pending_full && s->job_running &&
	    evbuffer_get_length(in) >= IN_HIGH) {
		bufferevent_disable(bev, EV_READ);
	}
}

/* The stream paused with frames waiting: stage them now. */
static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct rsess *s = arg;
	if (s->job_running || s->dead || s->state == RS_CLOSING ||
	    evbuffer_get_length(s->pending) == 0)
		return;
	s->pending_full = 1;
	submit_batch(s);
}

/*
 * A connection dropped before it authenticated: counted, and logged in
 * full only while the interval's burst lasts (the summary covers the
 * rest: a flood must not fill the log).
 */
static void
drop_stranger(struct rsess *s, enum gate_why why, const char *detail)
{
	struct event_base *base = s->srv->svc->base;
	int fd = -1;

	if (gate_note(s->srv->gate, (struct sockaddr *)&s->sa, why))
		log_warnx("%s: connection dropped: %s", s->addr, detail);
	/* A refused handshake: the peer must read the alert that says why
	 * (an expired certificate...), not a reset. */
	if (why == GATE_TLS && s->bev != NULL &&
	    bufferevent_getfd(s->bev) >= 0)
		fd = dup(bufferevent_getfd(s->bev));
	sess_end(s);		/* s may be gone */
	if (fd >= 0)
		netio_linger_close(base, fd);
}

/* The identity is the first of its names an [accept] entry knows
 * (s->known), else its first name. */
static void
set_identity(struct rsess *s, char *const *names, int n)
{
	const struct config *cfg = s->srv->svc->cfg;

	snprintf(s->identity, sizeof(s->identity), "%s", names[0]);
	for (int i = 0; i < n; i++)
		for (size_t k = 0; k < cfg->naccepts; k++)
			if (strcasecmp(cfg->accepts[k].name, names[i]) == 0) {
				snprintf(s->identity, sizeof(s->identity), "%s",
				    names[i]);
				s->known = 1;
				return;
			}
}

static void
sess_event(struct bufferevent *bev, short what, void *arg)
{
	struct rsess *s = arg;
	char detail[512];

	if (what & BEV_EVENT_CONNECTED) {
		char *names[TLS_MAX_NAMES];
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		int n = tls_peer_names(ssl, names);
		if (n == 0) {
			drop_stranger(s, GATE_NOT_ACCEPTED, "session refused: "
			    "the client certificate names no usable identity");
			return;
		}
		set_identity(s, names, n);
		tls_names_free(names, n);
		/*
		 * A certificate of the CA that no [accept] entry names can
		 * never be welcomed: it stays in the strangers' budget (per
		 * source, oldest gives way) and hears its NACK from there,
		 * so that it cannot hold the sessions' slots.
		 */
		void *victim = NULL;
		if (s->known && gate_authenticated(s->srv->gate, s->gc,
		    s->identity, &victim) != 0) {
			snprintf(detail, sizeof(detail), "%s: too many sessions "
			    "(%u)", s->identity, GATE_AUTH);
			drop_stranger(s, GATE_AUTH_FULL, detail);
			return;
		}
		if (victim) {
			/* An accepted host with GATE_PER_IDENTITY sessions
			 * not yet welcomed: its oldest gives way. */
			snprintf(detail, sizeof(detail), "%s: %u sessions "
			    "not yet welcomed to a VM: the oldest makes room",
			    s->identity, GATE_PER_IDENTITY);
			drop_stranger(victim, GATE_EVICTED, detail);
		}
		s->state = RS_HELLO;
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && s->ka_ev != NULL && s->vm != NULL) {
		log_warnx("%s: %s (%s): nothing heard for %" PRIu64 " s: the "
		    "primary, or the path from it, is gone; session ended%s",
		    s->vm->name, s->identity, s->addr, s->silence_ms / 1000,
		    s->state == RS_CYCLE ? " (nothing of the cycle is "
		    "applied)" : "");
		if (s->state == RS_CYCLE)
			snprintf(s->vm->error, sizeof(s->vm->error), "cycle cut "
			    "off: the primary went silent for %" PRIu64 " s",
			    s->silence_ms / 1000);
		sess_end(s);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		log_warnx("%s (%s): session timed out", s->identity[0] ?
		    s->identity : "unauthenticated", s->addr);
		sess_end(s);
		return;
	}
	if (s->state == RS_HANDSHAKE) {
		char why[400];
		netio_error(bev, what, why, sizeof(why));
		snprintf(detail, sizeof(detail), "TLS handshake failed: %s",
		    why);
		drop_stranger(s, GATE_TLS, detail);
		return;
	} else if (s->state == RS_HELLO && !s->known) {
		drop_stranger(s, GATE_NOT_ACCEPTED, "closed the connection "
		    "before a complete HELLO");
		return;
	} else if (s->state == RS_HELLO) {
		log_warnx("%s (%s): closed the connection before a complete "
		    "HELLO (%zu bytes of it received)", s->identity, s->addr,
		    evbuffer_get_length(bufferevent_get_input(bev)));
	} else if (s->state == RS_CYCLE || s->job_running) {
		log_warnx("%s: %s (%s) closed the connection during cycle %"
		    PRIu64 "; nothing of it is applied", s->vm ? s->vm->name :
		    "?", s->identity, s->addr, s->cycle.cycle);
		if (s->vm)
			snprintf(s->vm->error, sizeof(s->vm->error), "cycle %"
			    PRIu64 " cut off: the primary closed the "
			    "connection", s->cycle.cycle);
	}
	sess_end(s);
}

/*
 * The one-shot timer of a session: from accept to a valid HELLO (not
 * moved by traffic, so dribbling bytes keeps no slot), then from a
 * refusal to the close.
 */
static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct rsess *s = arg;
	char detail[HOST_MAX_LEN + 64];

	if (s->state == RS_CLOSING) {
		sess_end(s);
		return;
	}
	if (s->state == RS_HANDSHAKE) {
		snprintf(detail, sizeof(detail), "no TLS handshake within %u s",
		    s->srv->svc->cfg->handshake_timeout_s);
		drop_stranger(s, GATE_DEADLINE, detail);
		return;
	}
	if (!s->known) {
		snprintf(detail, sizeof(detail), "%s: no complete HELLO within "
		    "%u s", s->identity, s->srv->svc->cfg->handshake_timeout_s);
		drop_stranger(s, GATE_DEADLINE, detail);
		return;
	}
	log_warnx("%s (%s): session closed: no complete HELLO within %u s "
	    "(%zu bytes of it received)", s->identity, s->addr,
	    s->srv->svc->cfg->handshake_timeout_s, s->bev ?
	    evbuffer_get_length(bufferevent_get_input(s->bev)) : 0);
	sess_end(s);
}

/* Make room for a newcomer: the oldest stranger goes (gate.h). */
static void
evict(struct rsess *s)
{
	drop_stranger(s, GATE_EVICTED, "too many unauthenticated "
	    "connections: the oldest makes room for a new one");
}

static void
on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct replica_srv *srv = arg;
	struct rsess *s;
	char addr[64];
	SSL *ssl;
	void *victim;

	netio_addr_str(sa, addr, sizeof(addr));
	if (srv->svc->stopping) {
		if (gate_note(srv->gate, sa, GATE_STOPPING))
			log_warnx("%s: connection refused: shutting down", addr);
		evutil_closesocket(fd);
		return;
	}
	if ((ssl = tls_ssl_new(srv->svc->server_ctx, NULL)) == NULL) {
		log_warnx("%s: SSL_new: %s", addr, tls_last_error());
		evutil_closesocket(fd);
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->srv = srv;
	snprintf(s->addr, sizeof(s->addr), "%s", addr);
	if ((size_t)salen <= sizeof(s->sa))
		memcpy(&s->sa, sa, (size_t)salen);
	s->state = RS_HANDSHAKE;
	s->batch = evbuffer_new();
	s->pending = evbuffer_new();
	s->flush_ev = evtimer_new(srv->svc->base, on_flush, s);
	s->deadline_ev = evtimer_new(srv->svc->base, on_deadline, s);
	wb_init(&s->out);
	wb_init(&s->tmp);
	wb_init(&s->sigout);
	s->bev = bufferevent_openssl_socket_new(srv->svc->base, fd, ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		SSL_free(ssl);
		evutil_closesocket(fd);
		evbuffer_free(s->batch);
		evbuffer_free(s->pending);
		event_free(s->flush_ev);
		event_free(s->deadline_ev);
		free(s);
		return;
	}
	s->next = srv->sessions;
	srv->sessions = s;
	s->gc = gate_enter(srv->gate, sa, s, &victim);
	if (victim)
		evict(victim);
	netio_tune(fd);
	bufferevent_setcb(s->bev, sess_read, sess_write, sess_event, s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, IN_HIGH);
	bufferevent_set_max_single_read(s->bev, 64u << 10);
	struct timeval tv = { srv->svc->cfg->handshake_timeout_s, 0 };
	evtimer_add(s->deadline_ev, &tv);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* Every REPORT_S: one line for the drops not logged one by one. */
static void
on_report(evutil_socket_t fd, short what, void *arg)
{
	struct replica_srv *srv = arg;
	char line[512];

	if (gate_summary(srv->gate, REPORT_S, line, sizeof(line)))
		log_warnx("%s", line);
}

#define ACCEPT_PAUSE_MS	500	/* out of descriptors: accept again after */

/*
 * accept() failed.  Out of descriptors (or memory), the pending
 * connection stays queued and the listener would fire again at once, on
 * every turn of the loop: pause it instead, and say so once per pause.
 */
static void
on_accept_error(struct evconnlistener *l, void *arg)
{
	struct replica_srv *srv = arg;
	int err = EVUTIL_SOCKET_ERROR();

	if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
		log_warn("accept");
		return;
	}
	log_warnx("accept: %s: not accepting connections for %d ms",
	    evutil_socket_error_to_string(err), ACCEPT_PAUSE_MS);
	evconnlistener_disable(l);
	struct timeval tv = { 0, ACCEPT_PAUSE_MS * 1000 };
	evtimer_add(srv->pause_ev, &tv);
}

static void
on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	struct replica_srv *srv = arg;

	if (srv->listener)
		evconnlistener_enable(srv->listener);
}

/* --- init / fini ---------------------------------------------------------- */

struct replica_srv *
replica_init(struct svc *svc)
{
	struct replica_srv *srv = xcalloc(1, sizeof(*srv));
	const struct config *cfg = svc->cfg;
	struct gate_limits lim;
	uint64_t vms = 0;
	int r;

	srv->svc = svc;
	/* Every VM the accepted hosts may have here keeps a session. */
	for (size_t i = 0; i < cfg->naccepts; i++)
		vms += cfg->accepts[i].max_vms;
	gate_limits_for(&lim, vms, cfg->naccepts);
	srv->gate = gate_new(&lim);
	if (cfg->listen == NULL)
		return srv;
	/* What HELLOs made before a crash, never recorded, goes first. */
	for (size_t i = 0; i < cfg->naccepts; i++)
		store_sweep_new(svc->cat, cfg->accepts[i].storage);

	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
	    .ai_flags = AI_PASSIVE }, *res = NULL;
	char port[8];
	snprintf(port, sizeof(port), "%u", cfg->listen_port);
	if ((r = getaddrinfo(cfg->listen_host, port, &hints, &res)) != 0)
		fatalx("listen %s: %s", cfg->listen, gai_strerror(r));
	srv->listener = evconnlistener_new_bind(svc->base, on_accept, srv,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
	    64, res->ai_addr, (int)res->ai_addrlen);
	freeaddrinfo(res);
	if (srv->listener == NULL)
		fatal("cannot listen on %s", cfg->listen);
	evconnlistener_set_error_cb(srv->listener, on_accept_error);
	srv->pause_ev = evtimer_new(svc->base, on_accept_resume, srv);
	srv->report_ev = event_new(svc->base, -1, EV_PERSIST, on_report, srv);
	struct timeval tv = { REPORT_S, 0 };
	event_add(srv->report_ev, &tv);
	log_info("listening on %s", cfg->listen);
	return srv;
}

void
replica_set_events(struct replica_srv *srv, const struct replica_events *ev,
    void *ctx)
{
	srv->ev = ev;
	srv->ev_ctx = ctx;
}

void
replica_stop(struct replica_srv *srv)
{
	if (srv == NULL)
		return;
	if (srv->listener) {
		evconnlistener_free(srv->listener);
		srv->listener = NULL;
	}
	if (srv->pause_ev) {
		event_free(srv->pause_ev);
		srv->pause_ev = NULL;
	}
	if (srv->report_ev) {
		on_report(-1, 0, srv);
		event_free(srv->report_ev);
		srv->report_ev = NULL;
	}
	struct rsess *s = srv->sessions, *next;
	for (; s; s = next) {
		next = s->next;
		if (s->bev) {
			bufferevent_free(s->bev);
			s->bev = NULL;
		}
		sess_end(s);
	}
}

void
replica_fini(struct replica_srv *srv)
{
	if (srv == NULL)
		return;
	gate_free(srv->gate);
	free(srv);
}

void
replica_gate_counters(const struct replica_srv *srv, struct gate_counters *out)
{
	gate_counters(srv->gate, out);
}
