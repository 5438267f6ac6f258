/*
 * primary.c — cycles of the primary role.
 *
 * A cycle, as seen from the loop thread:
 *
 *   prepare job     resolve the replica's address, check the disks exist
 *   connect         TLS 1.3, replica certificate checked against
 *                   replica_name
 *   HELLO ->        <- WELCOME (or NACK: denied, fenced, ...)
 *   produce jobs    CYCLE, then DATA frames from the tracker, a batch at a
 *                   time; the loop sends one batch while the next is made
 *   END ->          <- ACK
 *   commit job      the tracker's new state, the catalog
 *
 * Anything that fails ends the session; the tracker forgets what the
 * cycle read, so its blocks are found again by the next cycle (P1).
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <zstd.h>

#include "catalog.h"
#include "delta.h"
#include "dial.h"
#include "err.h"
#include "fault.h"
#include "hook.h"
#include "layout.h"
#include "log.h"
#include "netio.h"
#include "pool.h"
#include "primary.h"
#include "role.h"
#include "svc.h"
#include "tls.h"
#include "tracker.h"
#include "trk_backend.h"
#include "util.h"
#include "vmtab.h"
#include "wire.h"
#include "work.h"
#include "xmalloc.h"

#define BATCH_OUT	(4u << 20)	/* bytes of frames per produce job */
#define BATCH_SCATTERED	(1u << 20)	/* ... reading a cut's scattered
					   ranges: smaller jobs keep reads,
					   sends and the replica overlapping
					   (m10: -20 %); a whole disk read in
					   order is faster in big ones */
#define BATCH_READ	(64u << 20)	/* bytes read per produce job, at most */
#define OUT_HIGH	(8u << 20)	/* produce more below this backlog */
#define OUT_LOW		(4u << 20)
#define REPLY_TIMEOUT_S	120		/* PROMOTE's answer */
#define WELCOME_GRACE_MS (15 * 1000)	/* the replica's handshake_timeout */
#define SEND_TIMEOUT_S	NETIO_USER_TIMEOUT_S
/*
 * The replica applies a cycle, then ACKs: it may take ACK_BASE keepalive
 * intervals and a second per ACK_RATE bytes of the cycle's content (a
 * resync: of the disks) from END on.  A replica that says it is applying
 * the cycle (KEEPALIVE) is waited for as long as it says so, up to
 * ACK_CAP budgets or ACK_V2_MS from END, whichever is longer: a replica
 * whose apply hangs (a disk that stopped answering) keeps saying so, and
 * must not hold the VM, or a planned failover's stopped guest, for ever.
 */
#define ACK_BASE	6
#define ACK_RATE	(4u << 20)
#define ACK_CAP		8
/* A version 2 replica (0.5) cannot say that it applies: its ACK is
 * waited for as 0.5 did, at least this long. */
#define ACK_V2_MS	(3600u * 1000)
#define BACKOFF_MAX_MS	(60 * 1000)
#define DELTA_BUDGET_MIN 1024	/* false matches of a range: a few ms */
#define SIGS_MAX	(16u << 20)	/* queued SIG bytes before reads stop */

struct waiter {
	pvm_waiter_fn	 fn;
	void		*arg;
	struct waiter	*next;
};

struct pblock;

enum psess_state {
	PS_PREPARE,		/* waiting for a turn (dial.h), then the job */
	PS_CONNECT,
	PS_HELLO,
	PS_ADOPT,		/* WELCOME said: take its generation (a job) */
	PS_SEND,
	PS_WAIT_ACK,
	PS_COMMIT,
	PS_PROMOTE,		/* PROMOTE sent, PROMOTED awaited */
};

struct psess {
	struct pvm		*vm;
	enum psess_state	 st;
	struct bufferevent	*bev;
	struct dial_turn	 turn;		/* a new connection's, until
						   WELCOME or the end */
	struct event		*welcome_ev;	/* the deadline of connect,
						   TLS, HELLO and WELCOME */
	uint64_t		 connect_ms;	/* when the connection began */
	int			 job_running;
	int			 dead;		/* freed when its job returns */
	int			 job_rc;
	char			 err[512];
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;
	uint64_t		 replica_cycle;
	uint64_t		 cycle;
	uint64_t		 point;
	int			 begun;
	int			 scan_done;
	int			 thaw_due;	/* pre_snapshot ran, post not yet */
	int			 agent_thawed;	/* ... the guest agent froze it */
	int			 aborted;	/* the tracker forgot the cut */
	uint8_t			 kind;		/* 1 = application-consistent */
	uint64_t		 sizes[WIRE_MAX_DISKS];
	uint64_t		 total;
	struct evbuffer		*batch;
	/* Working memory of the running produce job only (pool.h): an idle
	 * VM holds none of it. */
	ZSTD_CCtx		*cctx;
	ZSTD_CCtx		*cctx2;		/* the helper thread's */
	uint8_t			*scratch;	/* a block per collected block */
	size_t			 scratch_blocks;
	struct pblock		*blks;		/* changed blocks of a chunk */
	size_t			 nblk;
	size_t			 blk_cap;
	uint8_t			*outpool;	/* s->out's pool buffer during a job */
	struct wbuf		 hdr;
	struct wbuf		 out;		/* frames of the running job */
	struct wire_digest	 dig;
	uint64_t		 nframes;
	uint64_t		 raw_bytes;
	int			 zr_open;	/* a ZERO extent being grown */
	uint16_t		 zr_disk;
	uint64_t		 zr_off;
	uint64_t		 zr_len;
	struct trk_stats	 tstats;	/* copied out by each job */
	uint64_t		 progress;	/* bytes read, for the loop */
	uint64_t		 progress_total;	/* likewise, to read */
	uint64_t		 started_ms;
	uint64_t		 bytes_sent;
	uint64_t		 bytes_received;
	int64_t			 created_ms;
	uint64_t		 created_mono;	/* the cut, monotonic ms */
	uint64_t		 cut_ms;	/* the cut took (debug log) */
	uint64_t		 end_mono;	/* END handed to the loop */
	uint64_t		 ack_mono;	/* ACK came */
	/* a resynchronising cycle (wire.h) */
	int			 resync;
	uint32_t		 unit;		/* SUMS granularity */
	uint32_t		 chunk;		/* longest SIG range, a read */
	uint16_t		 sums_disk;	/* job: next chunk to sum */
	uint64_t		 sums_off;
	int			 sums_done;	/* job: every SUMS is out */
	uint64_t		 sums_bytes;	/* job: compared so far */
	struct wbuf		 sigs_loop;	/* SIG payloads received, each
						   u32 length + payload */
	struct wbuf		 sigs_job;	/* those the running job answers */
	uint64_t		 sigs_in;	/* SIG frames received */
	uint16_t		 last_sig_disk;
	uint64_t		 last_sig_end;
	int			 sigend;	/* SIGEND received */
	int			 job_final;	/* the job has the last SIGs */
	int			 want_resync;	/* asked for before it started */
	uint64_t		 overruns;	/* SIGs past the delta budget */
	int			 handover;	/* PROMOTE follows the ACK */
	int			 promote_sent;
	struct wire_welcome	 welcome;	/* the replica's answer */
	/* the VM's definition (DEFINITION, wire.h) */
	int			 def_known;	/* def_acked is the replica's */
	struct digest		 def_acked;
	int			 def_sent;	/* this cycle carries def_hash */
	struct digest		 def_hash;
	/* liveness (KEEPALIVE, wire.h) */
	uint16_t		 version;	/* offered in HELLO */
	uint16_t		 peer_version;	/* WELCOME's: the session's */
	int			 ka;		/* keepalives: version 3 */
	uint32_t		 peer_every_ms;	/* the replica's interval */
	uint64_t		 heard_ms;	/* monotonic: last bytes read */
	uint64_t		 ack_due_ms;	/* monotonic: ACK deadline */
	uint64_t		 ack_wait_ms;	/* END went out */
	uint64_t		 applying_ms;	/* the replica said: applying */
	uint64_t		 ack_cap_ms;	/* "applying" extends the ACK's
						   deadline up to this */
	struct event		*tick;		/* keepalives, the deadline */
	struct cat_rel		 rel;		/* as job_commit recorded it */
	int			 rel_ok;
	uint8_t			*cbuf;		/* a chunk (a job's) */
	struct wbuf		 dbuf;		/* a delta (a job's) */
	uint8_t			*zbuf;		/* a compressed delta (a job's) */
};

struct pvm {
	struct svc		*svc;
	struct vme		*e;		/* its entry in the VM table */
	const struct cfg_vm	*cfg;
	struct tracker		*trk;
	enum pvm_state		 state;
	int			 paused;
	char			 error[512];
	const struct cfg_vm	*next_cfg;	/* a reload's, from the next
						   cycle on (pvm_set_cfg) */
	int			 reload_hold;	/* pvm_hold(): no new cycle */
	unsigned		 failures;
	uint64_t		 cycles_total;	/* acknowledged, since start */
	uint64_t		 failures_total;
	uint64_t		 read_total;	/* bytes, since start */
	uint64_t		 sent_total;
	uint64_t		 last_cycle;
	uint64_t		 last_point;
	int64_t			 last_point_ms;
	uint64_t		 last_point_mono; /* its cut, monotonic ms: the
					   lag does not follow clock steps */
	struct cycle_stats	 last;
	struct event		*timer;
	struct psess		*sess;
	struct waiter		*cur;		/* told when this cycle ends */
	struct waiter		*next;		/* want the cycle after it */
	int			 draining;	/* ended sessions with a job */
	int			 resync;	/* next cycle resynchronises */
	int			 nospace;	/* the replica is out of space */
	int64_t			 last_app_ms;	/* cut of the newest app point */
	uint64_t		 started_ms;	/* monotonic start of the last cycle */
	/* Short intervals: the session of the last acknowledged cycle, kept
	 * open for the next one (the replica is at vm->last_cycle on it). */
	struct bufferevent	*keep;
	int			 keep_ka;	/* its keepalives */
	uint32_t		 keep_every_ms;
	uint64_t		 keep_since_ms;
	struct event		*keep_tick;
	uint16_t		 keep_version;	/* its protocol version */
	uint16_t		 wire_version;	/* offered in HELLO */
	uint16_t		 wire_worked;	/* last WELCOMEd; 0 none */
	uint64_t		 wire_lowered_mono; /* when wire_version
					   went below WIRE_VERSION */
	/* The definition the replica acknowledged last (its newest point
	 * has it); not kept across restarts: then it is sent once more. */
	int			 def_acked_set;
	struct digest		 def_acked;
	/* Touched by produce jobs only (one at a time): a definition that
	 * may not travel, said once; a replica too old for them, said once. */
	int			 def_bad_set;
	struct digest		 def_bad;
	int			 def_old_said;
	char			*app_path;	/* where it is kept */
	struct cfg_vm		*owned_cfg;	/* cfg, when made from the catalog */
	/* planned failover: the next cycle hands over */
	char			*handover;	/* this host's listen HOST:PORT */
	pvm_handover_fn		 handover_fn;
	void			*handover_arg;
	/* closing (pvm_close): told once the tracker is closed */
	void			(*close_fn)(void *);
	void			*close_arg;
	/* an interrupted handover: told whether the replica is still ours */
	void			(*confirm_fn)(void *, int);
	void			*confirm_arg;
};

/* The tracker's check at the VM's start (a worker may block on it). */
struct check_job {
	struct pvm	*vm;
	int		 rc;
	char		 err[512];
};

struct fence_job {
	struct pvm	*vm;
	char		 why[512];	/* "" lifts the fence */
	int		 recorded;	/* rel holds what the catalog has */
	struct cat_rel	 rel;
};

/* A reassignment gives this host the replica's generation (WELCOME). */
struct adopt_job {
	struct psess	*s;
	uint64_t	 generation;
	int		 rc;
	struct cat_rel	 rel;
};

static void start_cycle(struct pvm *vm);
static int want_cycle(struct pvm *vm, pvm_waiter_fn fn, void *arg);
static void listen_addr(struct psess *s, const char *listen, char *out,
    size_t outsz);
static void poke(struct pvm *vm);
static void handover_end(struct pvm *vm, int rc, const char *msg);
static void job_fenced(void *arg);
static void fenced_done(void *arg);
static void job_end_cut(void *arg);
static void plan_next(struct pvm *vm);
static void begin_sending(struct psess *s, uint64_t replica_cycle);
static void keep_drop(struct pvm *vm);
static void set_deadlines(struct psess *s);
static void arm_ack(struct psess *s);
static void send_keepalive(struct bufferevent *bev, uint64_t cycle,
    uint32_t every_ms);
static void keep_session(struct psess *s);
static int reuse_session(struct psess *s);
static void sess_fail(struct psess *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

const char *
pvm_state_name(enum pvm_state s)
{
	switch (s) {
	case PVM_IDLE:		return "idle";
	case PVM_SYNCING:	return "syncing";
	case PVM_PAUSED:	return "paused";
	case PVM_FENCED:	return "fenced";
	case PVM_ERROR:		return "error";
	}
	return "unknown";
}

const char *
pvm_name(const struct pvm *vm)
{
	return vm->cfg->name;
}

/*
 * No cycle starts while a role change holds the VM (but the handover
 * cycle of a planned failover), while a failover to this host is not
 * committed, or without a replica.
 */
static int
cycles_held(const struct pvm *vm)
{
	return ((vt_claimed(vm->e) || vm->reload_hold) &&
	    vm->handover == NULL) ||
	    vt_state(vm->e) == ROLE_UNCOMMITTED || vm->cfg->replica == NULL ||
	    vm->close_fn != NULL;
}

/* --- scheduling ---------------------------------------------------------- */

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct pvm *vm = arg;
	if (vm->sess == NULL && !vm->svc->stopping)
		start_cycle(vm);
}

static void
schedule(struct pvm *vm, uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	evtimer_del(vm->timer);
	evtimer_add(vm->timer, &tv);
}

/* A reloaded section waits for the cycle under way: it applies between
 * cycles, before the next is planned. */
static void
apply_next_cfg(struct pvm *vm)
{
	if (vm->next_cfg == NULL || vm->sess != NULL || vm->draining > 0)
		return;
	vm->cfg = vm->next_cfg;
	vm->next_cfg = NULL;
	log_info("%s: the reloaded section applies from the next cycle on",
	    vm->cfg->name);
}

/* What to do after a cycle ended. */
static void
plan_next(struct pvm *vm)
{
	apply_next_cfg(vm);
	if (vm->svc->stopping || vm->state == PVM_FENCED || cycles_held(vm))
		return;
	if (vm->next != NULL) {
		schedule(vm, 0);
	} else if (vm->failures > 0) {
		uint64_t ms = 1000ULL << (vm->failures > 6 ? 6 : vm->failures - 1);
		if (ms > BACKOFF_MAX_MS)
			ms = BACKOFF_MAX_MS;
		if (vm->cfg->interval_ms && ms > vm->cfg->interval_ms)
			ms = vm->cfg->interval_ms;
		if (!vm->paused)
			schedule(vm, ms);
	} else if (vm->cfg->interval_ms && !vm->paused) {
		/* Cycles start every interval (never overlapping): a cycle
		 * that took longer is followed at once.  The first one comes
		 * a second after the start. */
		if (vm->started_ms == 0) {
			schedule(vm, 1000);
			return;
		}
		uint64_t since = util_mono_ms() - vm->started_ms;
		schedule(vm, since < vm->cfg->interval_ms ?
		    vm->cfg->interval_ms - since : 0);
	}
}

static void
tell_waiters(struct waiter **list, uint64_t point, const char *error)
{
	struct waiter *w = *list;
	*list = NULL;
	while (w) {
		struct waiter *next = w->next;
		if (w->fn)
			w->fn(w->arg, point, error);
		free(w);
		w = next;
	}
}

/* --- session lifetime ---------------------------------------------------- */

static void
sess_free(struct psess *s)
{
	dial_done(s->vm->svc->dialer, &s->turn);
	if (s->welcome_ev)
		event_free(s->welcome_ev);
	if (s->tick)
		event_free(s->tick);
	if (s->bev)
		bufferevent_free(s->bev);
	if (s->batch)
		evbuffer_free(s->batch);
	free(s->blks);
	wire_digest_free(&s->dig);
	free(s->scratch);
	wb_free(&s->hdr);
	wb_free(&s->out);
	wb_free(&s->sigs_loop);
	wb_free(&s->sigs_job);
	wb_free(&s->dbuf);
	free(s);
}

static void sess_end(struct psess *s);

static void
thaw_done(void *arg)
{
	struct psess *s = arg;
	s->job_running = 0;
	sess_end(s);
}

/*
 * End the session.  A job still running owns the tracker: the VM counts
 * the session as draining and starts no cycle until the job is done and
 * the session freed (then it looks at what is pending again).
 */
static void
sess_end(struct psess *s)
{
	struct pvm *vm = s->vm;
	if (vm->sess == s)
		vm->sess = NULL;
	dial_done(vm->svc->dialer, &s->turn);
	if (s->welcome_ev)
		event_del(s->welcome_ev);
	if (s->tick)
		event_del(s->tick);
	if (s->bev) {
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
	int abort_due = s->st != PS_COMMIT && !s->aborted;
	if (!s->dead && (s->job_running || s->thaw_due || abort_due)) {
		s->dead = 1;
		vm->draining++;
	}
	if (s->job_running)
		return;
	if (abort_due || s->thaw_due) {
		/* The tracker's abort (QMP calls, unlinks) and the thaw may
		 * block: a job does them, then ends s again. */
		s->job_running = 1;
		work_submit(job_end_cut, thaw_done, s);
		return;
	}
	int was_dead = s->dead;
	sess_free(s);
	if (was_dead && --vm->draining == 0 && vm->sess == NULL)
		plan_next(vm);
	poke(vm);
}

/* A session or a job ended: a role change waiting for the VM to be idle
 * looks again (vmtab.h). */
static void
poke(struct pvm *vm)
{
	if (vm->sess == NULL && vm->draining == 0)
		vt_poke(vm->e);
}

static void
sess_fail(struct psess *s, int code, const char *fmt, ...)
{
	struct pvm *vm = s->vm;
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (s->cycle)
		log_warnx("%s: cycle %" PRIu64 " failed: %s", vm->cfg->name,
		    s->cycle, msg);
	else
		log_warnx("%s: cycle failed: %s", vm->cfg->name, msg);
	snprintf(vm->error, sizeof(vm->error), "%s", msg);
	vm->failures++;
	vm->failures_total++;
	vm->read_total += s->tstats.bytes_read;
	vm->sent_total += s->bytes_sent;
	vm->nospace = code == RD_ERR_NOSPACE;
	int promote_sent = s->promote_sent, handover = s->handover;
	if (code == RD_ERR_FENCED && vm->confirm_fn) {
		void (*fn)(void *, int) = vm->confirm_fn;
		vm->confirm_fn = NULL;
		fn(vm->confirm_arg, 0);
	}
	if (code == RD_ERR_FENCED) {
		if (vm->state != PVM_FENCED) {
			/* Remembered across restarts: a stale primary stays
			 * quiet until an operator acts (F1). */
			struct fence_job *fj = xcalloc(1, sizeof(*fj));
			fj->vm = vm;
			snprintf(fj->why, sizeof(fj->why), "%s", msg);
			vm->draining++;
			work_submit(job_fenced, fenced_done, fj);
		}
		vm->state = PVM_FENCED;
	} else {
		vm->state = PVM_ERROR;
	}
	sess_end(s);
	if (handover)
		handover_end(vm, promote_sent ? RD_ERR_STATE : code, msg);
	else if (vm->handover && vm->state == PVM_FENCED)
		/* The handover waited for this cycle; no cycle follows a
		 * fence, so it ends here, before it began. */
		handover_end(vm, RD_ERR_FENCED, msg);
	tell_waiters(&vm->cur, 0, msg);
	if (vm->state == PVM_FENCED)
		tell_waiters(&vm->next, 0, msg);
	plan_next(vm);
}

static void
job_fenced(void *arg)
{
	struct fence_job *fj = arg;
	struct catalog *cat = fj->vm->svc->cat;
	int r = cat_rel_get(cat, fj->vm->cfg->name, &fj->rel);
	if (r == 0) {
		snprintf(fj->rel.fenced, sizeof(fj->rel.fenced), "%.*s",
		    (int)sizeof(fj->rel.fenced) - 1, fj->why);
		r = cat_rel_put(cat, &fj->rel);
	}
	fj->recorded = r == 0;
	if (r != 0)
		log_warnx("%s: cannot record the fence: %s", fj->vm->cfg->name,
		    rd_strerror(r));
}

static void
fenced_done(void *arg)
{
	struct fence_job *fj = arg;
	struct pvm *vm = fj->vm;
	if (fj->recorded)
		vt_set_rel(vm->e, &fj->rel);
	free(fj);
	log_warnx("%s: fenced: %s; no more cycles until an operator acts "
	    "(replctl resume, or reverse from the new primary)", vm->cfg->name,
	    vm->error);
	vm->draining--;
	poke(vm);
}

/* The fence is lifted: a VM with an interval tries again now (if this
 * host is still a stale primary, the replica says so and the VM is
 * fenced again); one without waits for its next sync, as resume says. */
static void
fenced_done_quiet(void *arg)
{
	struct fence_job *fj = arg;
	struct pvm *vm = fj->vm;
	if (fj->recorded)
		vt_set_rel(vm->e, &fj->rel);
	free(fj);
	if (--vm->draining == 0 && vm->sess == NULL) {
		if (vm->cfg->interval_ms != 0)
			start_cycle(vm);
		else
			plan_next(vm);
	}
	poke(vm);
}

static void
job_tidy(void *arg)
{
	struct pvm *vm = arg;
	trk_tidy(vm->trk);
}

static void
tidy_done(void *arg)
{
	struct pvm *vm = arg;
	if (--vm->draining == 0 && vm->sess == NULL)
		plan_next(vm);
	poke(vm);
}

static void
sess_done(struct psess *s)
{
	struct pvm *vm = s->vm;
	vm->last.cycle = s->cycle;
	vm->last.duration_ms = util_mono_ms() - s->started_ms;
	vm->last.dirty_bytes = s->tstats.dirty_bytes;
	vm->last.bytes_read = s->tstats.bytes_read;
	vm->last.bytes_sent = s->bytes_sent;
	vm->cycles_total++;
	vm->read_total += s->tstats.bytes_read;
	vm->sent_total += s->bytes_sent;
	vm->last_cycle = s->cycle;
	vm->last_point = s->point;
	if (s->kind == 1)
		vm->last_app_ms = s->created_ms;
	vm->last_point_ms = s->created_ms;
	vm->last_point_mono = s->created_mono;
	vm->failures = 0;
	vm->nospace = 0;
	vm->error[0] = '\0';
	vm->state = vm->paused ? PVM_PAUSED : PVM_IDLE;
	log_info("%s: cycle %" PRIu64 " done: point %" PRIu64 ", %" PRIu64
	    " bytes changed, %" PRIu64 " read, %" PRIu64 " sent, %" PRIu64
	    " ms", vm->cfg->name, s->cycle, s->point, vm->last.dirty_bytes,
	    vm->last.bytes_read, vm->last.bytes_sent, vm->last.duration_ms);
	log_debug("%s: cycle %" PRIu64 ": %" PRIu64 " ms to the cut, the cut "
	    "%" PRIu64 " ms, %" PRIu64 " ms reading and sending, %" PRIu64
	    " ms to the acknowledgement, %" PRIu64 " ms committing",
	    vm->cfg->name, s->cycle, s->created_mono - s->started_ms,
	    s->cut_ms, s->end_mono - s->created_mono - s->cut_ms,
	    s->ack_mono - s->end_mono, util_mono_ms() - s->ack_mono);
	uint64_t point = s->point;
	keep_session(s);
	sess_end(s);
	tell_waiters(&vm->cur, point, NULL);
	if (trk_tidy_due(vm->trk)) {
		/* The tracker's clean-up runs after the answer, before the
		 * next cycle (draining holds that back). */
		vm->draining++;
		work_submit(job_tidy, tidy_done, vm);
	}
	plan_next(vm);
}

/* --- producing frames (worker) ------------------------------------------- */

/* Frames are built contiguously in s->out and handed to the loop as one
 * buffer per job: few, large TLS writes. */
static void
put_frame(struct psess *s, const struct wire_data *m, const uint8_t *payload,
    size_t len)
{
	wire_put_data_hdr(&s->out, m, len);
	wb_put_bytes(&s->out, payload, len);
	wire_digest_update(&s->dig, m);
	s->nframes++;
	s->raw_bytes += m->length;
}

static void
flush_zero(struct psess *s)
{
	if (!s->zr_open)
		return;
	struct wire_data m = { .disk = s->zr_disk, .offset = s->zr_off,
	    .length = (uint32_t)s->zr_len, .encoding = WIRE_ENC_ZERO };
	put_frame(s, &m, NULL, 0);
	s->zr_open = 0;
}

/*
 * Changed blocks of one chunk are collected first, then compressed by
 * two threads (this job's and a helper), then framed in order: zstd is
 * the primary's main cost, and on a host with cores to spare this halves
 * the time of a cycle that sends a lot.
 */
struct pblock {
	struct trk_block blk;
	uint8_t		 enc;
	const uint8_t	*payload;
	size_t		 plen;
};

static int
collect(void *arg, const struct trk_block *blk)
{
	struct psess *s = arg;
	if (s->nblk == s->blk_cap) {
		s->blk_cap = s->blk_cap ? 2 * s->blk_cap : 64;
		s->blks = xreallocarray(s->blks, s->blk_cap, sizeof(*s->blks));
	}
	s->blks[s->nblk++].blk = *blk;
	return 0;
}

struct compress_part {
	struct psess	*s;
	ZSTD_CCtx	*cctx;
	size_t		 from, to;
};

static void *
compress_part(void *arg)
{
	struct compress_part *cp = arg;
	struct psess *s = cp->s;
	uint32_t bs = s->vm->cfg->block_size;

	for (size_t i = cp->from; i < cp->to; i++) {
		struct pblock *b = &s->blks[i];
		if (b->blk.zero)
			continue;
		wire_data_encode(cp->cctx, s->vm->cfg->compress_level,
		    b->blk.data, b->blk.len, s->scratch + i * bs, &b->enc,
		    &b->payload, &b->plen);
	}
	return NULL;
}

/* Frame the collected blocks in order; zero blocks join ZERO extents. */
static void
frame_blocks(struct psess *s)
{
	struct compress_part a = { s, s->cctx, 0, s->nblk };
	struct compress_part b = { s, s->cctx2, s->nblk / 2, s->nblk };
	pthread_t helper;
	int two = s->vm->cfg->compress_level > 0 && s->nblk >= 8;

	if (two && s->cctx2 == NULL)
		b.cctx = s->cctx2 = pool_cctx_get();

	if (s->scratch_blocks < s->nblk) {
		free(s->scratch);
		s->scratch = xreallocarray(NULL, s->nblk,
		    s->vm->cfg->block_size);
		s->scratch_blocks = s->nblk;
	}
	if (two) {
		a.to = s->nblk / 2;
		if (pthread_create(&helper, NULL, compress_part, &b) != 0) {
			two = 0;
			a.to = s->nblk;
		}
	}
	compress_part(&a);
	if (two)
		pthread_join(helper, NULL);

	for (size_t i = 0; i < s->nblk; i++) {
		const struct trk_block *blk = &s->blks[i].blk;
		if (blk->zero) {
			if (s->zr_open && (s->zr_disk != blk->disk ||
			    s->zr_off + s->zr_len != blk->offset ||
			    s->zr_len + blk->len > WIRE_MAX_ZERO))
				flush_zero(s);
			if (!s->zr_open) {
				s->zr_open = 1;
				s->zr_disk = blk->disk;
				s->zr_off = blk->offset;
				s->zr_len = 0;
			}
			s->zr_len += blk->len;
			continue;
		}
		flush_zero(s);
		struct wire_data m = { .disk = blk->disk, .offset = blk->offset,
		    .length = blk->len, .hash = blk->hash,
		    .encoding = s->blks[i].enc };
		put_frame(s, &m, s->blks[i].payload, s->blks[i].plen);
	}
	s->nblk = 0;
}

/* Run a snapshot hook with the VM's details in its environment. */
static int
run_hook(struct pvm *vm, const char *which, const char *cmd, uint64_t cycle,
    char *why, size_t whysz)
{
	char *env[5];
	size_t len = 1;
	for (size_t i = 0; i < vm->cfg->ndisks; i++)
		len += strlen(vm->cfg->disks[i]) + 1;
	char *disks = xcalloc(1, len);
	for (size_t i = 0; i < vm->cfg->ndisks; i++) {
		if (i)
			strcat(disks, " ");
		strcat(disks, vm->cfg->disks[i]);
	}
	env[0] = xasprintf("REPLICAD_VM=%s", vm->cfg->name);
	env[1] = xasprintf("REPLICAD_HOOK=%s", which);
	env[2] = xasprintf("REPLICAD_DISKS=%s", disks);
	env[3] = xasprintf("REPLICAD_CYCLE=%" PRIu64, cycle);
	env[4] = NULL;
	int r = hook_run(vm->cfg->name, which, cmd, env,
	    vm->cfg->snapshot_timeout_s, why,
	    whysz);
	for (int i = 0; i < 4; i++)
		free(env[i]);
	free(disks);
	return r;
}

/*
 * Freeze for this cut?  At every cut, unless app_interval says how often
 * an application-consistent point is wanted: then only once the newest
 * one is that old (a failed freeze is tried again at the next cut).
 */
static int
want_app(const struct pvm *vm, int64_t now_ms)
{
	uint64_t every = vm->cfg->app_interval_ms;
	/* A clock stepped back since that point: due now, not once the
	 * clock has caught up again. */
	return every == 0 || vm->last_app_ms <= 0 ||
	    now_ms < vm->last_app_ms ||
	    now_ms - vm->last_app_ms >= (int64_t)every;
}

/*
 * The monotonic time of a cut made at wall time created_ms (a point of an
 * earlier run): its age by the wall clock, once, from now on by the
 * monotonic clock.  Never in the future.
 */
static uint64_t
mono_of(int64_t created_ms)
{
	uint64_t mono = util_mono_ms();
	int64_t age = (int64_t)util_now_ms() - created_ms;

	if (age <= 0)
		return mono;
	return (uint64_t)age < mono ? mono - (uint64_t)age : 0;
}

/* The cut time of the newest app point survives restarts (losing it
 * only means an early freeze). */
static void
load_app_time(struct pvm *vm)
{
	uint8_t *data = NULL;
	size_t len = 0;
	if (util_read_file(vm->app_path, 64, &data, &len) == 0) {
		char txt[65];
		memcpy(txt, data, len);
		txt[len] = '\0';
		vm->last_app_ms = strtoll(txt, NULL, 10);
	}
	free(data);
}

static void
save_app_time(struct pvm *vm, int64_t ms)
{
	char txt[32];
	int n = snprintf(txt, sizeof(txt), "%" PRId64 "\n", ms);
	if (util_write_atomic(vm->app_path, txt, (size_t)n) != 0)
		log_warn("%s: cannot write %s", vm->cfg->name, vm->app_path);
}

/*
 * Freeze the guest for an app-consistent point: the pre_snapshot hook
 * (an application's own quiescing), then the guest agent's file system
 * freeze (freeze = agent).  Anything failing makes the point crash
 * consistent, never a failed cycle.
 */
static void
freeze(struct psess *s)
{
	struct pvm *vm = s->vm;
	char why[512];
	int ok = 1;

	if (vm->cfg->pre_snapshot) {
		s->thaw_due = vm->cfg->post_snapshot != NULL;
		if (run_hook(vm, "pre_snapshot", vm->cfg->pre_snapshot,
		    s->cycle, why, sizeof(why)) != 0)
			ok = 0;
	}
	if (ok && vm->cfg->freeze == FREEZE_AGENT) {
		int r = trk_freeze(vm->trk, vm->cfg->snapshot_timeout_s, why,
		    sizeof(why));
		if (r == 0) {
			s->thaw_due = 1;
			s->agent_thawed = 0;
		} else if (r < 0) {
			ok = 0;
		}
		/* r == 1: a cleanly shut-off guest, at rest. */
	}
	if (ok)
		s->kind = 1;
	else
		log_warnx("%s: cycle %" PRIu64 " will be a crash-consistent "
		    "point: %s", vm->cfg->name, s->cycle, why);
}

/* The thaw runs whatever happened to the cycle: the agent's first, then
 * post_snapshot. */
static void
thaw(struct psess *s)
{
	char why[512];
	if (!s->thaw_due)
		return;
	s->thaw_due = 0;
	if (s->vm->cfg->freeze == FREEZE_AGENT && !s->agent_thawed) {
		s->agent_thawed = 1;
		trk_thaw(s->vm->trk);
	}
	if (s->vm->cfg->post_snapshot != NULL)
		run_hook(s->vm, "post_snapshot", s->vm->cfg->post_snapshot,
		    s->cycle, why, sizeof(why));
}

/* A session ended before its commit: the tracker forgets the cut (its
 * blocks are found again), and the guest is thawed if it was frozen. */
static void
job_end_cut(void *arg)
{
	struct psess *s = arg;
	if (s->st != PS_COMMIT && !s->aborted)
		trk_abort(s->vm->trk);
	s->aborted = 1;
	thaw(s);
}

/* --- resynchronising (worker) ---------------------------------------------- */

/* A resync is a long job: at shutdown it stops between chunks. */
static int
resync_cancelled(struct psess *s, uint16_t disk, uint64_t off)
{
	snprintf(s->err, sizeof(s->err), "resync cancelled at disk %u "
	    "offset %" PRIu64 ": replicad is stopping", disk, off);
	log_info("%s: cycle %" PRIu64 ": %s", s->vm->cfg->name, s->cycle,
	    s->err);
	return RD_ERR_CANCELLED;
}

/* SUMS for the next chunks of the disks, reading at most BATCH_READ. */
static int
resync_sums(struct psess *s)
{
	struct pvm *vm = s->vm;
	uint64_t read = 0;
	uint8_t digests[WIRE_MAX_SUMS * DIGEST_LEN];
	int r;

	while (read < BATCH_READ && s->out.len < BATCH_OUT) {
		while (s->sums_disk < vm->cfg->ndisks &&
		    s->sums_off >= s->sizes[s->sums_disk]) {
			s->sums_disk++;
			s->sums_off = 0;
		}
		if (s->sums_disk == vm->cfg->ndisks) {
			s->sums_done = 1;
			thaw(s);
			return 0;
		}
		uint64_t size = s->sizes[s->sums_disk];
		struct wire_sums m = { .disk = s->sums_disk,
		    .offset = s->sums_off, .chunk = s->unit,
		    .digests = digests };
		size_t per_read = s->chunk / s->unit;	/* units per read */
		while (m.count + per_read <= WIRE_MAX_SUMS &&
		    s->sums_off < size && read < BATCH_READ) {
			if (work_cancelled())
				return resync_cancelled(s, s->sums_disk,
				    s->sums_off);
			size_t n = size - s->sums_off < s->chunk ?
			    (size_t)(size - s->sums_off) : s->chunk;
			if ((r = trk_read_range(vm->trk, s->sums_disk,
			    s->sums_off, n, s->cbuf, s->err,
			    sizeof(s->err))) != 0)
				return r;
			for (size_t o = 0; o < n; o += s->unit) {
				struct digest d;
				trk_range_digest(vm->trk, s->sums_disk,
				    s->sums_off + o, n - o < s->unit ? n - o :
				    s->unit, &d);
				memcpy(digests + (size_t)m.count * DIGEST_LEN,
				    d.b, DIGEST_LEN);
				m.count++;
			}
			s->sums_off += n;
			s->sums_bytes += n;
			read += n;
		}
		wire_put_sums(&s->out, &m);
	}
	return 0;
}

/*
 * The delta of one SIG's range (read into cbuf) into dbuf.  Its search is
 * bounded (delta.h): past svc->cfg->delta_budget false matches per MiB
 * (at least DELTA_BUDGET_MIN) the range is sent whole instead, with no
 * more search: a delta as large as the range, still byte-exact since the
 * replica checks each range against the digest of the DELTA frame after
 * patching (R2).  A forged signature thus costs the primary a bounded
 * search and the link the range; the warning names the replica.  Honest
 * data can trip the bound too (regular patterns defeat the rolling
 * checksum), so it must never end the resync.
 */
static int
resync_delta(struct psess *s, const struct wire_chunk *sig)
{
	const struct cfg_vm *cfg = s->vm->cfg;
	uint64_t budget = s->vm->svc->cfg->delta_budget;
	struct delta_limits lim = { .cancelled = work_cancelled };
	int r;

	wb_reset(&s->dbuf);
	if (budget > 0) {
		lim.max_false = budget * sig->length >> 20;
		if (lim.max_false < DELTA_BUDGET_MIN)
			lim.max_false = DELTA_BUDGET_MIN;
	}
	log_debug("%s: delta of disk %u offset %" PRIu64 " (%u bytes)",
	    cfg->name, sig->disk, sig->offset, sig->length);
	r = delta_make_bounded(sig->payload, sig->payload_len, s->cbuf,
	    sig->length, &lim, &s->dbuf);
	switch (r) {
	case 0:
		return 0;
	case RD_ERR_CANCELLED:
		return resync_cancelled(s, sig->disk, sig->offset);
	case RD_ERR_BUDGET:
		if (s->overruns++ == 0)
			log_warnx("%s: the replica %s (%s) sent a signature of "
			    "disk %u offset %" PRIu64 " that makes more than %"
			    PRIu64 " false matches (forged, corrupt, or data "
			    "that defeats the rolling checksum): such ranges "
			    "are sent whole", cfg->name, cfg->replica_name,
			    cfg->replica, sig->disk, sig->offset, lim.max_false);
		wb_reset(&s->dbuf);
		return delta_literal(s->cbuf, sig->length, &s->dbuf);
	default:
		snprintf(s->err, sizeof(s->err), "the replica's signature of "
		    "disk %u offset %" PRIu64 " is invalid", sig->disk,
		    sig->offset);
		return RD_ERR_PEER;
	}
}

/* DELTA frames for the SIGs handed to this job, in order. */
static int
resync_deltas(struct psess *s)
{
	struct pvm *vm = s->vm;
	struct rbuf b;
	int r;

	rb_init(&b, s->sigs_job.p, s->sigs_job.len);
	while (rb_left(&b) > 0 && s->out.len < BATCH_OUT) {
		uint32_t flen;
		const uint8_t *fp;
		struct wire_chunk sig;
		if (rb_get_u32(&b, &flen) != 0 || rb_get_ptr(&b, &fp, flen) != 0 ||
		    wire_get_sig(fp, flen, &sig) != 0) {
			snprintf(s->err, sizeof(s->err), "internal error: SIG "
			    "queue");
			return RD_ERR_INTERNAL;
		}
		if (work_cancelled())
			return resync_cancelled(s, sig.disk, sig.offset);
		if ((r = trk_read_range(vm->trk, sig.disk, sig.offset,
		    sig.length, s->cbuf, s->err, sizeof(s->err))) != 0)
			return r;
		trk_add_dirty(vm->trk, sig.length);
		if ((r = resync_delta(s, &sig)) != 0)
			return r;
		if (s->dbuf.len > WIRE_MAX_DELTA) {
			snprintf(s->err, sizeof(s->err), "delta of disk %u "
			    "offset %" PRIu64 " too large (%zu bytes)", sig.disk,
			    sig.offset, s->dbuf.len);
			return RD_ERR_TOO_LARGE;
		}
		struct wire_chunk m = { .disk = sig.disk, .offset = sig.offset,
		    .length = sig.length, .encoding = WIRE_ENC_RAW,
		    .delta_len = (uint32_t)s->dbuf.len, .payload = s->dbuf.p,
		    .payload_len = s->dbuf.len };
		trk_range_digest(vm->trk, sig.disk, sig.offset, sig.length,
		    &m.hash);
		if (vm->cfg->compress_level > 0) {
			size_t z = ZSTD_compressCCtx(s->cctx, s->zbuf,
			    ZSTD_compressBound(WIRE_MAX_DELTA), s->dbuf.p,
			    s->dbuf.len, vm->cfg->compress_level);
			if (!ZSTD_isError(z) && z < s->dbuf.len - s->dbuf.len / 64) {
				m.encoding = WIRE_ENC_ZSTD;
				m.payload = s->zbuf;
				m.payload_len = z;
			}
		}
		wire_put_delta(&s->out, &m);
		if (s->nframes >= 4)
			fault_point("primary-mid-resync");
		struct wire_data as = { .disk = m.disk, .offset = m.offset,
		    .length = m.length, .hash = m.hash };
		wire_digest_update(&s->dig, &as);
		s->nframes++;
		s->raw_bytes += m.length;
	}
	/* What is left waits for the next job (a batch's worth each). */
	size_t used = b.off;
	if (used > 0 && used < s->sigs_job.len)
		memmove(s->sigs_job.p, s->sigs_job.p + used,
		    s->sigs_job.len - used);
	s->sigs_job.len -= used;
	return 0;
}

static int
resync_produce(struct psess *s)
{
	int r;

	if ((r = resync_deltas(s)) != 0)
		return r;
	if (!s->sums_done && (r = resync_sums(s)) != 0)
		return r;
	if (s->sums_done && s->job_final && s->sigs_job.len == 0) {
		struct wire_end e = { .cycle = s->cycle, .nframes = s->nframes,
		    .raw_bytes = s->raw_bytes };
		wire_digest_final(&s->dig, &e.digest);
		wire_put_end(&s->out, &e);
		s->scan_done = 1;
	}
	return 0;
}

/*
 * The VM's definition at this cut, right after CYCLE: only to a replica
 * that knows the frame, and only when it differs from the one the
 * replica acknowledged last (it keeps that one for points without).
 */
static void
put_definition(struct psess *s)
{
	struct pvm *vm = s->vm;
	const char *xml = trk_definition(vm->trk);
	struct digest h;
	size_t len;
	int r;

	if (xml == NULL)
		return;
	if (s->peer_version < WIRE_VERSION_DEFINITION) {
		if (!vm->def_old_said)
			log_info("%s: replica %s speaks protocol version %u: the "
			    "VM's definition is not sent to it", vm->cfg->name,
			    vm->cfg->replica, s->peer_version);
		vm->def_old_said = 1;
		return;
	}
	len = strlen(xml);
	digest_block(xml, len, &h);
	if (s->def_known && digest_equal(&h, &s->def_acked)) {
		log_debug("%s: cycle %" PRIu64 ": the VM's definition is "
		    "unchanged; not sent", vm->cfg->name, s->cycle);
		return;
	}
	if ((r = wire_definition_check(xml, len)) != 0) {
		if (!vm->def_bad_set || !digest_equal(&h, &vm->def_bad))
			log_warnx("%s: the VM's definition (%zu bytes) cannot "
			    "be sent: %s; the replica's points keep the last "
			    "one it received", vm->cfg->name, len,
			    r == RD_ERR_TOO_LARGE ? "longer than 1 MiB" :
			    "it is not UTF-8 or holds control characters");
		vm->def_bad = h;
		vm->def_bad_set = 1;
		return;
	}
	wire_put_definition(&s->out, xml, len);
	wire_digest_definition(&s->dig, xml, len);
	s->def_sent = 1;
	s->def_hash = h;
	log_info("%s: cycle %" PRIu64 " carries the VM's definition (%zu "
	    "bytes)", vm->cfg->name, s->cycle, len);
}

/*
 * A job's frames are built in a buffer from the shared pool (pool.h),
 * whose pages stay mapped from one job to the next, and handed to the
 * loop by reference: a buffer of the heap's, at the mmap threshold,
 * came back from the kernel zeroed at every job and was copied once
 * more into the batch (two page faults per 4 KiB sent: 790,000 for an
 * initial sync of 1.5 GiB).  A batch never outgrows OUT_POOL (BATCH_OUT
 * and a frame past it, after a CYCLE and a definition); if it did, the
 * frames move to the heap and are copied as before.
 */
#define OUT_POOL	(BATCH_OUT + 3 * WIRE_MAX_FRAME)

static void
out_pool_put(const void *data, size_t len, void *extra)
{
	pool_buf_put((void *)data, OUT_POOL);
}

static void
hand_batch(struct psess *s)
{
	if (s->out.len == 0)
		return;
	if (s->out.foreign && s->out.p == s->outpool) {
		if (evbuffer_add_reference(s->batch, s->outpool, s->out.len,
		    out_pool_put, NULL) == 0) {
			s->outpool = NULL;	/* the batch's now */
			wb_init(&s->out);
			return;
		}
	}
	evbuffer_add(s->batch, s->out.p, s->out.len);
}

static void
produce_batch(struct psess *s)
{
	struct pvm *vm = s->vm;
	int r = 0;

	s->job_rc = 0;
	wb_reset(&s->out);
	if (!s->begun) {
		if ((vm->cfg->pre_snapshot ||
		    vm->cfg->freeze == FREEZE_AGENT) &&
		    want_app(vm, s->created_ms))
			freeze(s);
		uint64_t t0 = util_mono_ms();
		if (s->resync)
			r = trk_begin_resync(vm->trk, s->cycle, s->sizes, s->err,
			    sizeof(s->err));
		else
			r = trk_begin(vm->trk, s->cycle, s->replica_cycle, 0,
			    s->sizes, s->err, sizeof(s->err));
		s->cut_ms = util_mono_ms() - t0;
		/* A point-in-time view is fixed: the guest may run on (the
		 * thaw runs whether or not the cut worked). */
		if (r != 0 || trk_frozen(vm->trk))
			thaw(s);
		if (r != 0) {
			s->job_rc = r;
			return;
		}
		s->begun = 1;
		struct wire_cycle c = { .cycle = s->cycle,
		    .created_ms = (uint64_t)s->created_ms, .kind = s->kind,
		    .flags = s->resync ? WIRE_CYCLE_RESYNC : 0,
		    .ndisks = (uint16_t)vm->cfg->ndisks };
		for (size_t i = 0; i < vm->cfg->ndisks; i++) {
			c.sizes[i] = s->sizes[i];
			s->total += s->sizes[i];
		}
		/* Progress counts what the cycle reads: the ranges the cut
		 * reported (a resync compares the whole disks). */
		if (!s->resync)
			s->total = trk_to_read(vm->trk);
		wire_put_cycle(&s->out, &c);
		put_definition(s);
	}
	if (s->resync) {
		r = resync_produce(s);
		trk_stats(vm->trk, &s->tstats);
		if (r != 0) {
			thaw(s);
			s->job_rc = r;
			return;
		}
		hand_batch(s);
		return;
	}
	uint64_t read0 = s->tstats.bytes_read;
	size_t out_max = trk_reads_whole(vm->trk) ? BATCH_OUT : BATCH_SCATTERED;
	while (s->out.len < out_max) {
		r = trk_scan(vm->trk, out_max, collect, s, s->err,
		    sizeof(s->err));
		trk_stats(vm->trk, &s->tstats);
		if (r >= 0)
			frame_blocks(s);
		if (r != 0 || s->tstats.bytes_read - read0 >= BATCH_READ)
			break;
	}
	if (r < 0) {
		thaw(s);
		s->job_rc = r;
		return;
	}
	if (r == 1) {
		/* Everything is read: the guest may run on. */
		thaw(s);
		flush_zero(s);
		struct wire_end e = { .cycle = s->cycle, .nframes = s->nframes,
		    .raw_bytes = s->raw_bytes };
		wire_digest_final(&s->dig, &e.digest);
		wire_put_end(&s->out, &e);
		s->scan_done = 1;
	}
	hand_batch(s);
}

#define OUT_KEEP	(64u << 10)	/* a session keeps its out buffer
					   between jobs up to this size */

/*
 * A batch of frames, made with working memory taken from the shared pool
 * for this job only, given back before the loop sends the batch: what a
 * host holds for producing is bounded by the jobs running at once, not
 * by its number of VMs.
 */
static void
job_produce(void *arg)
{
	struct psess *s = arg;
	const struct cfg_vm *cfg = s->vm->cfg;
	size_t zlen = ZSTD_compressBound(WIRE_MAX_DELTA);

	if (cfg->compress_level > 0)
		s->cctx = pool_cctx_get();
	wb_free(&s->out);
	s->outpool = pool_buf_get(OUT_POOL);
	wb_attach(&s->out, s->outpool, OUT_POOL);
	if (s->resync) {
		s->cbuf = pool_buf_get(s->chunk);
		if (cfg->compress_level > 0)
			s->zbuf = pool_buf_get(zlen);
	}
	produce_batch(s);
	pool_cctx_put(s->cctx);
	pool_cctx_put(s->cctx2);
	s->cctx = s->cctx2 = NULL;
	if (s->cbuf != NULL)
		pool_buf_put(s->cbuf, s->chunk);
	if (s->zbuf != NULL)
		pool_buf_put(s->zbuf, zlen);
	s->cbuf = s->zbuf = NULL;
	trk_release(s->vm->trk);
	free(s->scratch);
	s->scratch = NULL;
	s->scratch_blocks = 0;
	free(s->blks);
	s->blks = NULL;
	s->nblk = s->blk_cap = 0;
	/* Not handed over (a failure, nothing made): back to the pool. */
	if (s->outpool != NULL) {
		if (s->out.foreign)
			wb_init(&s->out);
		pool_buf_put(s->outpool, OUT_POOL);
		s->outpool = NULL;
	}
	if (s->out.cap > OUT_KEEP)
		wb_free(&s->out);
	if (s->dbuf.cap > OUT_KEEP)
		wb_free(&s->dbuf);
}

static void maybe_produce(struct psess *s);
static void on_read(struct bufferevent *bev, void *arg);

/* Back in the loop after a job: 0 if the session ended meanwhile or the
 * job failed (then it is dealt with), 1 to go on. */
static int
job_returned(struct psess *s)
{
	s->job_running = 0;
	if (s->dead) {
		sess_end(s);
		return 0;
	}
	if (s->job_rc != 0) {
		sess_fail(s, s->job_rc, "%s", s->err);
		return 0;
	}
	return 1;
}

static void
produce_done(void *arg)
{
	struct psess *s = arg;

	if (!job_returned(s))
		return;
	size_t n = evbuffer_get_length(s->batch);
	s->bytes_sent += n;
	/* A resync's progress is the comparison's; the deltas after it
	 * re-read only the chunks that differ. */
	s->progress = s->resync ? s->sums_bytes : s->tstats.bytes_read;
	s->progress_total = s->total;
	if (s->bytes_sent > (8u << 20))
		fault_point("primary-mid-send");
	evbuffer_add_buffer(bufferevent_get_output(s->bev), s->batch);
	if (s->resync && !s->scan_done &&
	    s->sigs_loop.len + s->sigs_job.len < SIGS_MAX &&
	    !(bufferevent_get_enabled(s->bev) & EV_READ)) {
		/* The SIG queue drained: read on, first what is buffered. */
		struct pvm *vm = s->vm;
		bufferevent_enable(s->bev, EV_READ);
		if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
			on_read(s->bev, s);
			if (vm->sess != s)
				return;
		}
	}
	if (s->scan_done) {
		s->end_mono = util_mono_ms();
		s->st = PS_WAIT_ACK;
		arm_ack(s);
		set_deadlines(s);
		return;
	}
	maybe_produce(s);
}

static void
maybe_produce(struct psess *s)
{
	if (s->job_running || s->scan_done || s->vm->svc->stopping)
		return;
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) >= OUT_HIGH)
		return;		/* the write callback comes back here */
	if (s->resync && s->begun) {
		/* Work only when there is some: SUMS to send, SIGs to
		 * answer, or END to send once SIGEND came. */
		if (s->sums_done && s->sigs_loop.len == 0 &&
		    s->sigs_job.len == 0 && !s->sigend)
			return;		/* on_read comes back here */
		wb_put_bytes(&s->sigs_job, s->sigs_loop.p, s->sigs_loop.len);
		wb_reset(&s->sigs_loop);
		s->job_final = s->sigend;	/* no SIG can follow */
	}
	s->job_running = 1;
	if (s->resync)
		work_submit_long(job_produce, produce_done, s);
	else
		work_submit(job_produce, produce_done, s);
}

/* --- committing (worker) -------------------------------------------------- */

static void
job_commit(void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;
	struct cat_rel rel;
	int r;

	s->job_rc = 0;
	fault_point("primary-after-ack");
	/* The replica holds the cycle durably: now, and only now, the
	 * tracker may forget its dirty state (P1). */
	if ((r = trk_commit(vm->trk, s->cycle, s->err, sizeof(s->err))) != 0)
		log_warnx("%s: %s; the next cycle sends the whole disk",
		    vm->cfg->name, s->err);
	fault_point("primary-after-commit");
	if ((r = cat_rel_get(vm->svc->cat, vm->cfg->name, &rel)) == 0) {
		/*
		 * An ordinary cycle only advances the count of acknowledged
		 * cycles: that write need not wait for the disk.  If a power
		 * loss undoes it, the tracker's own state (durable above) and
		 * the replica's WELCOME still give the next cycle number
		 * (begin_sending() takes the highest), the definition is sent
		 * again, status shows the older point until the next cycle,
		 * and a demotion compares the disks.  The first cycle (the
		 * VM stops being fresh), a resync's end, a size change and a
		 * handover are written durably.
		 */
		int lazy = rel.last_cycle != 0 && !s->resync &&
		    !s->handover;
		rel.last_cycle = s->cycle;
		rel.last_point = s->point;
		rel.last_point_created_ms = s->created_ms;
		for (size_t i = 0; i < vm->cfg->ndisks && i < CAT_MAX_DISKS;
		    i++) {
			if (rel.disks[i].size != s->sizes[i])
				lazy = 0;
			rel.disks[i].size = s->sizes[i];
		}
		if (s->resync)
			rel.resync = 0;
		r = lazy ? cat_rel_put_lazy(vm->svc->cat, &rel) :
		    cat_rel_put(vm->svc->cat, &rel);
	}
	if (r == 0) {
		s->rel = rel;
		s->rel_ok = 1;
	}
	if (s->kind == 1)
		save_app_time(vm, s->created_ms);
	if (r != 0)
		log_warnx("%s: cannot record cycle %" PRIu64 " in the catalog: "
		    "%s", vm->cfg->name, s->cycle, rd_strerror(r));
}

static void
commit_done(void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;
	s->job_running = 0;
	if (s->resync && s->want_resync)
		vm->resync = 0;
	if (s->rel_ok)
		vt_set_rel(vm->e, &s->rel);	/* a cycle left: not fresh */
	if (s->dead) {
		sess_end(s);
		return;
	}
	if (s->handover && vm->handover) {
		/* Planned failover: the replica holds everything; now it
		 * takes over at the next generation. */
		struct wire_promote m = { .cycle = s->cycle,
		    .generation = vt_generation(vm->e) + 1 };
		listen_addr(s, vm->handover, m.listen, sizeof(m.listen));
		fault_point("primary-before-promote");
		vm->last_cycle = s->cycle;
		vm->last_point = s->point;
		vm->last_point_ms = s->created_ms;
		vm->last_point_mono = s->created_mono;
		wb_reset(&s->hdr);
		wire_put_promote(&s->hdr, &m);
		netio_send(s->bev, &s->hdr);
		s->promote_sent = 1;
		s->st = PS_PROMOTE;
		struct timeval tv = { REPLY_TIMEOUT_S, 0 };
		bufferevent_set_timeouts(s->bev, &tv, &tv);
		bufferevent_enable(s->bev, EV_READ);
		log_info("%s: cycle %" PRIu64 " acknowledged; handing over to %s "
		    "at generation %" PRIu64, vm->cfg->name, s->cycle,
		    vm->cfg->replica, m.generation);
		return;
	}
	sess_done(s);
}

/*
 * Where the replica is to reach this host: `listen` as written, unless
 * it names every address (0.0.0.0, ::); then the address this session
 * runs from, which the replica can reach.
 */
static void
listen_addr(struct psess *s, const char *listen, char *out, size_t outsz)
{
	char host[HOST_MAX_LEN + 1];
	uint16_t port;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	snprintf(out, outsz, "%s", listen);
	if (util_parse_hostport(listen, host, sizeof(host), &port) != 0 ||
	    (strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0))
		return;
	if (getsockname(bufferevent_getfd(s->bev), (struct sockaddr *)&ss,
	    &sl) != 0 || getnameinfo((struct sockaddr *)&ss, sl, host,
	    sizeof(host), NULL, 0, NI_NUMERICHOST) != 0)
		return;
	snprintf(out, outsz, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
	    port);
}

static void
on_promoted(struct psess *s, const uint8_t *p, size_t len)
{
	struct pvm *vm = s->vm;
	uint64_t gen;
	if (wire_get_promoted(p, len, &gen) != 0 ||
	    role_promoted(vt_generation(vm->e), gen).verdict != ROLE_HANDED_OVER) {
		sess_fail(s, RD_ERR_PEER, "bad PROMOTED from the replica");
		return;
	}
	s->handover = 0;
	uint64_t point = s->point;
	sess_end(s);
	vm->state = PVM_IDLE;
	tell_waiters(&vm->cur, point, NULL);
	handover_end(vm, 0, NULL);
}

static void
handover_end(struct pvm *vm, int rc, const char *msg)
{
	pvm_handover_fn fn = vm->handover_fn;
	void *arg = vm->handover_arg;
	free(vm->handover);
	vm->handover = NULL;
	vm->handover_fn = NULL;
	if (fn)
		fn(arg, rc, msg);
}

/* --- liveness (KEEPALIVE, wire.h) ------------------------------------------ */

static uint32_t
own_every_ms(const struct pvm *vm)
{
	return vm->svc->cfg->keepalive_ms;
}

/* A replica with keepalives that is silent this long is gone. */
static uint64_t
silence_ms(const struct psess *s)
{
	return (uint64_t)WIRE_KEEPALIVE_MISSES * (s->peer_every_ms ?
	    s->peer_every_ms : own_every_ms(s->vm));
}

static struct timeval
ms_tv(uint64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000),
	    (suseconds_t)(ms % 1000) * 1000 };
	return tv;
}

static uint64_t
disks_bytes(const struct psess *s)
{
	uint64_t n = 0;
	for (size_t i = 0; i < s->vm->cfg->ndisks; i++)
		n += s->sizes[i];
	return n;
}

/* From END to ACK, for a cycle of so many bytes (ACK_BASE, ACK_RATE). */
static uint64_t
ack_budget_ms(const struct psess *s, uint64_t bytes)
{
	return ACK_BASE * (uint64_t)own_every_ms(s->vm) +
	    bytes / ACK_RATE * 1000;
}

/*
 * Deadlines while cycle frames flow and the ACK is due.  With keepalives
 * the replica is never silent for long; without (a version 2 replica)
 * nothing is due while sending but a resync's SIGs, and the ACK has its
 * own deadline (on_tick).
 */
static void
set_deadlines(struct psess *s)
{
	struct timeval wtv = { SEND_TIMEOUT_S, 0 }, rtv;

	if (s->ka) {
		rtv = ms_tv(silence_ms(s));
		bufferevent_set_timeouts(s->bev, &rtv, &wtv);
	} else if (s->resync && s->st == PS_SEND) {
		uint64_t ms = ack_budget_ms(s, disks_bytes(s));
		rtv = ms_tv(ms < ACK_V2_MS ? ACK_V2_MS : ms);
		bufferevent_set_timeouts(s->bev, &rtv, &wtv);
	} else {
		bufferevent_set_timeouts(s->bev, NULL, &wtv);
	}
}

static void
send_keepalive(struct bufferevent *bev, uint64_t cycle, uint32_t every_ms)
{
	struct wire_keepalive k = { .cycle = cycle, .every_ms = every_ms };
	struct wbuf b;

	wb_init(&b);
	wire_put_keepalive(&b, &k);
	netio_send(bev, &b);
	wb_free(&b);
}

/* END went out: the ACK is due within the cycle's budget. */
static void
arm_ack(struct psess *s)
{
	uint64_t bytes = s->resync ? disks_bytes(s) : s->raw_bytes;
	bytes += evbuffer_get_length(bufferevent_get_output(s->bev));
	uint64_t budget = ack_budget_ms(s, bytes);
	if (!s->ka && budget < ACK_V2_MS)
		budget = ACK_V2_MS;	/* no KEEPALIVE can extend it */
	s->ack_wait_ms = util_mono_ms();
	s->ack_due_ms = s->ack_wait_ms + budget;
	s->ack_cap_ms = s->ack_wait_ms + (ACK_CAP * budget > ACK_V2_MS ?
	    ACK_CAP * budget : ACK_V2_MS);
}

/* Every keepalive interval: ours when the line is idle; the ACK's
 * deadline. */
static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;
	uint64_t now = util_mono_ms();

	if (s->bev == NULL || vm->sess != s)
		return;
	if (s->st == PS_WAIT_ACK && now >= s->ack_due_ms) {
		sess_fail(s, RD_ERR_PEER, "replica %s did not acknowledge cycle "
		    "%" PRIu64 " within %" PRIu64 " s of its end%s",
		    vm->cfg->replica, s->cycle, (now - s->ack_wait_ms) / 1000,
		    s->applying_ms == 0 ? "" : now >= s->ack_cap_ms ?
		    " (it still says it applies it: the longest wait for an "
		    "ACK is over)" : " (it stopped saying it applies it)");
		return;
	}
	if (s->ka && s->st != PS_PROMOTE &&
	    evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		send_keepalive(s->bev, s->cycle, own_every_ms(vm));
}

static void
start_tick(struct psess *s)
{
	if (s->tick != NULL)
		return;
	struct timeval tv = ms_tv(own_every_ms(s->vm));
	s->tick = event_new(s->vm->svc->base, -1, EV_PERSIST, on_tick, s);
	event_add(s->tick, &tv);
}

/* The replica is alive: its interval sets how long it may be silent;
 * while it applies the cycle, the ACK may take longer. */
static void
on_keepalive(struct psess *s, const uint8_t *p, size_t len)
{
	struct wire_keepalive k;
	int r;

	if ((r = wire_get_keepalive(p, len, &k)) != 0) {
		sess_fail(s, RD_ERR_PEER, "bad KEEPALIVE from the replica: %s",
		    rd_strerror(r));
		return;
	}
	if (k.every_ms != s->peer_every_ms) {
		s->peer_every_ms = k.every_ms;
		if (s->st == PS_SEND || s->st == PS_WAIT_ACK)
			set_deadlines(s);
	}
	if (s->st == PS_WAIT_ACK && (k.flags & WIRE_KEEPALIVE_APPLYING) &&
	    k.cycle == s->cycle) {
		uint64_t now = util_mono_ms();
		if (s->applying_ms == 0)
			s->applying_ms = now;
		uint64_t due = now + silence_ms(s);
		if (due > s->ack_cap_ms)
			due = s->ack_cap_ms;
		if (s->ack_due_ms < due)
			s->ack_due_ms = due;
	}
}

/* What status says of a session that waits on the replica. */
static void
liveness_note(const struct psess *s, struct pvm_status *st)
{
	const struct pvm *vm = s->vm;
	uint64_t now = util_mono_ms(), quiet = now - s->heard_ms;
	uint64_t every = s->peer_every_ms ? s->peer_every_ms :
	    own_every_ms(vm);

	if (s->bev == NULL || (s->st != PS_SEND && s->st != PS_WAIT_ACK))
		return;
	if (s->ka && (bufferevent_get_enabled(s->bev) & EV_READ) &&
	    quiet > every * 3 / 2) {
		st->silent = 1;
		snprintf(st->note, sizeof(st->note), "no answer from replica "
		    "%s for %" PRIu64 " s", vm->cfg->replica, quiet / 1000);
	} else if (s->st == PS_WAIT_ACK && s->applying_ms) {
		snprintf(st->note, sizeof(st->note), "replica %s applying "
		    "cycle %" PRIu64 " for %" PRIu64 " s", vm->cfg->replica,
		    s->cycle, (now - s->applying_ms) / 1000);
	} else if (s->st == PS_WAIT_ACK && now - s->ack_wait_ms >= every) {
		snprintf(st->note, sizeof(st->note), "waiting for the ACK of "
		    "cycle %" PRIu64 " for %" PRIu64 " s", s->cycle,
		    (now - s->ack_wait_ms) / 1000);
	}
}

/* --- frames from the replica --------------------------------------------- */

static void welcomed(struct psess *s);

static void
job_adopt(void *arg)
{
	struct adopt_job *aj = arg;
	struct pvm *vm = aj->s->vm;
	aj->rc = cat_rel_get(vm->svc->cat, vm->cfg->name, &aj->rel);
	if (aj->rc == 0) {
		role_rel_adopt(&aj->rel, aj->generation);
		aj->rc = cat_rel_put(vm->svc->cat, &aj->rel);
	}
}

static void
adopt_done(void *arg)
{
	struct adopt_job *aj = arg;
	struct psess *s = aj->s;
	struct pvm *vm = s->vm;
	int rc = aj->rc;
	uint64_t was = vt_generation(vm->e);

	if (rc == 0) {
		vt_set_rel(vm->e, &aj->rel);
		log_info("%s: the replica %s reassigned %s to this host: "
		    "generation %" PRIu64 " -> %" PRIu64, vm->cfg->name,
		    vm->cfg->replica_name, vm->cfg->name, was,
		    vt_generation(vm->e));
	}
	free(aj);
	if (!job_returned(s))
		return;
	if (rc != 0) {
		sess_fail(s, rc, "cannot record generation %" PRIu64 " that "
		    "the replica gave this host: %s", s->welcome.generation,
		    rd_strerror(rc));
		return;
	}
	welcomed(s);
	/* What the replica sent during the job (nothing is due): judged
	 * now, as on_read() would have. */
	if (vm->sess == s && s->bev != NULL &&
	    evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
		on_read(s->bev, s);
}

static void
on_welcome(struct psess *s, const uint8_t *p, size_t len)
{
	struct pvm *vm = s->vm;
	struct wire_welcome *w = &s->welcome;
	int r;

	/* The replica has taken this session: the next may connect. */
	dial_done(vm->svc->dialer, &s->turn);
	if (s->welcome_ev)
		event_del(s->welcome_ev);
	if ((r = wire_get_welcome(p, len, w)) != 0) {
		sess_fail(s, r, "bad WELCOME from the replica: %s",
		    rd_strerror(r));
		return;
	}
	if (w->version > s->version) {
		sess_fail(s, RD_ERR_PEER, "the replica answered a version %u "
		    "HELLO with version %u", s->version, w->version);
		return;
	}
	s->peer_version = w->version;
	vm->wire_worked = w->version;
	/* Keepalives both ways: ours first says our interval. */
	s->ka = w->version >= WIRE_VERSION_KEEPALIVE;
	if (s->ka) {
		/* Ticking from now on: an adopt job before the cycle must
		 * not look like silence to the replica. */
		send_keepalive(s->bev, 0, own_every_ms(vm));
		start_tick(s);
	}
	struct role_decision d = role_welcome(vt_generation(vm->e), w->generation,
	    (w->flags & WIRE_WELCOME_ADOPT) != 0);
	switch (d.verdict) {
	case ROLE_PROCEED:
		break;
	case ROLE_ADOPT: {
		/* Recorded before any cycle goes out at the new generation. */
		struct adopt_job *aj = xcalloc(1, sizeof(*aj));
		aj->s = s;
		aj->generation = d.generation;
		s->st = PS_ADOPT;	/* no frame is read until it is done */
		s->job_running = 1;
		bufferevent_disable(s->bev, EV_READ);
		work_submit(job_adopt, adopt_done, aj);
		return;
	}
	default:
		if (d.why == ROLE_WHY_STALE)
			sess_fail(s, RD_ERR_FENCED, "the replica is at "
			    "generation %" PRIu64 ", this host at %" PRIu64 ": "
			    "this host is a stale primary", w->generation,
			    vt_generation(vm->e));
		else
			sess_fail(s, RD_ERR_PEER, "the replica answered at "
			    "generation %" PRIu64 ", this host is at %" PRIu64
			    ": refused", w->generation, vt_generation(vm->e));
		return;
	}
	if (vm->confirm_fn) {
		/* The replica is still at this host's generation: a handover
		 * that was cut off did not happen. */
		void (*fn)(void *, int) = vm->confirm_fn;
		vm->confirm_fn = NULL;
		fn(vm->confirm_arg, 1);
	}
	welcomed(s);
}

/* The replica takes the cycle: compare or send. */
static void
welcomed(struct psess *s)
{
	struct pvm *vm = s->vm;
	struct wire_welcome w = s->welcome;

	bufferevent_enable(s->bev, EV_READ);
	s->replica_cycle = w.last_cycle;
	/* Another newest point than the one this host saw acknowledged (a
	 * new replica, a lost ACK): its definition is not known here. */
	if (w.last_cycle != vm->last_cycle)
		vm->def_acked_set = 0;
	/*
	 * Where the tracker cannot prove what the replica holds, but the
	 * replica holds something (a seed, a former primary's disks, a
	 * cycle whose ACK was lost), compare instead of sending it all.
	 * A replica reassigned to this host holds another host's copy: its
	 * cycle numbers say nothing of this tracker's, so compare too.
	 */
	s->resync = s->want_resync || (w.flags & WIRE_WELCOME_ADOPT) ||
	    (!trk_proven(vm->trk, w.last_cycle) &&
	    (w.last_cycle > 0 || (w.flags & WIRE_WELCOME_DATA)));
	begin_sending(s, w.last_cycle);
}

/* The replica is at replica_cycle: start cycle base + 1. */
static void
begin_sending(struct psess *s, uint64_t replica_cycle)
{
	struct pvm *vm = s->vm;

	if (s->resync) {
		s->unit = wire_sum_unit(vm->cfg->block_size);
		s->chunk = wire_chunk_len(vm->cfg->block_size);
		log_info("%s: resynchronising with the replica (%s)",
		    vm->cfg->name, s->want_resync ? "requested" :
		    (s->welcome.flags & WIRE_WELCOME_ADOPT) ? "it was reassigned "
		    "to this host: its copy is another host's" :
		    replica_cycle > 0 ? "the tracker state does not describe "
		    "the replica's last cycle" : "the replica holds a copy");
	}
	uint64_t base = vm->last_cycle;
	if (replica_cycle > base)
		base = replica_cycle;
	if (trk_cycle(vm->trk) > base)
		base = trk_cycle(vm->trk);
	if (base >= UINT64_MAX - 1) {
		/* No cycle id is left above it (and 0 means "none"). */
		sess_fail(s, RD_ERR_PEER, "the replica reports last cycle %"
		    PRIu64 ", which leaves no cycle id", replica_cycle);
		return;
	}
	s->cycle = base + 1;
	s->def_known = vm->def_acked_set && !s->resync;
	s->def_acked = vm->def_acked;
	s->created_ms = (int64_t)util_now_ms();
	s->created_mono = util_mono_ms();
	s->st = PS_SEND;
	wire_digest_init(&s->dig);
	set_deadlines(s);
	start_tick(s);
	maybe_produce(s);
}

static void
on_ack(struct psess *s, const uint8_t *p, size_t len)
{
	struct wire_ack a;
	int r;

	if ((r = wire_get_ack(p, len, &a)) != 0 || s->st != PS_WAIT_ACK ||
	    a.cycle != s->cycle || a.point == 0) {
		sess_fail(s, RD_ERR_PEER, "unexpected ACK from the replica");
		return;
	}
	s->point = a.point;
	s->ack_mono = util_mono_ms();
	if (s->def_sent) {
		/* The replica recorded it with the point. */
		s->vm->def_acked = s->def_hash;
		s->vm->def_acked_set = 1;
	}
	s->st = PS_COMMIT;
	bufferevent_disable(s->bev, EV_READ);
	s->job_running = 1;
	work_submit(job_commit, commit_done, s);
}

static void
on_nack(struct psess *s, const uint8_t *p, size_t len)
{
	struct wire_nack_msg n;
	int r = wire_get_nack(p, len, &n);
	if (r != 0) {
		sess_fail(s, r, "bad NACK from the replica");
		return;
	}
	if (s->st == PS_HELLO && n.code == WIRE_NACK_PROTOCOL &&
	    s->version > WIRE_VERSION_MIN && strstr(n.reason, "version")) {
		/* An older replicad: offer it one version less next time
		 * (version 3: no definitions; version 2, replicad 0.5: no
		 * keepalives either, the ACK deadline still holds), or at
		 * once the one it took last (a refused probe, see
		 * send_hello). */
		uint16_t worked = s->vm->wire_worked;
		s->vm->wire_version = worked != 0 && worked < s->version ?
		    worked : s->version - 1;
		s->vm->wire_lowered_mono = util_mono_ms();
		log_warnx("%s: replica %s does not speak protocol version %u; "
		    "the next cycle offers version %u (%s)",
		    s->vm->cfg->name, s->vm->cfg->replica, s->version,
		    s->vm->wire_version, s->vm->wire_version <
		    WIRE_VERSION_KEEPALIVE ? "no keepalives" :
		    "no definitions");
	}
	sess_fail(s, n.code == WIRE_NACK_FENCED ? RD_ERR_FENCED :
	    n.code == WIRE_NACK_NOSPACE ? RD_ERR_NOSPACE : RD_ERR_PEER,
	    "replica refused: %s: %s", wire_nack_name(n.code), n.reason);
}

/* The replica asks for a delta of a chunk, or says it asked for all. */
static void
on_sig(struct psess *s, uint8_t type, const uint8_t *p, size_t len)
{
	struct pvm *vm = s->vm;
	int r;

	s->bytes_received += len + WIRE_FRAME_HDR;
	if (type == WIRE_SIGEND) {
		struct wire_sigend e;
		if ((r = wire_get_sigend(p, len, &e)) != 0 || s->sigend ||
		    e.cycle != s->cycle || e.nsigs != s->sigs_in) {
			sess_fail(s, RD_ERR_PEER, "bad SIGEND from the replica");
			return;
		}
		s->sigend = 1;
		maybe_produce(s);
		return;
	}
	struct wire_chunk m;
	if ((r = wire_get_sig(p, len, &m)) != 0) {
		sess_fail(s, RD_ERR_PEER, "bad SIG from the replica: %s",
		    rd_strerror(r));
		return;
	}
	/* Chunks in order, each once, each a real chunk of a disk. */
	int after = s->sigs_in == 0 || m.disk > s->last_sig_disk ||
	    (m.disk == s->last_sig_disk && m.offset >= s->last_sig_end);
	if (s->sigend || !after || m.disk >= vm->cfg->ndisks ||
	    m.offset % s->unit != 0 || m.offset >= s->sizes[m.disk] ||
	    m.length > s->chunk || m.length > s->sizes[m.disk] - m.offset ||
	    (m.length % s->unit != 0 &&
	     m.offset + m.length != s->sizes[m.disk])) {
		sess_fail(s, RD_ERR_PEER, "SIG from the replica for disk %u "
		    "offset %" PRIu64 " is out of place", m.disk, m.offset);
		return;
	}
	/* The block size the protocol fixes: a signature at tiny blocks
	 * would only make the delta slow. */
	if (m.payload_len < 8 || ((uint32_t)m.payload[4] << 24 |
	    (uint32_t)m.payload[5] << 16 | (uint32_t)m.payload[6] << 8 |
	    m.payload[7]) != WIRE_SIG_BLOCK) {
		sess_fail(s, RD_ERR_PEER, "SIG from the replica is not at %u-byte "
		    "blocks", WIRE_SIG_BLOCK);
		return;
	}
	s->last_sig_disk = m.disk;
	s->last_sig_end = m.offset + m.length;
	s->sigs_in++;
	wb_put_u32(&s->sigs_loop, (uint32_t)len);
	wb_put_bytes(&s->sigs_loop, p, len);
	/* Bounded: a replica that asks faster than the deltas go out waits
	 * (TCP) until the queue drains. */
	if (s->sigs_loop.len + s->sigs_job.len >= SIGS_MAX)
		bufferevent_disable(s->bev, EV_READ);
	maybe_produce(s);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;		/* s may be freed by a handler */
	struct evbuffer *in = bufferevent_get_input(bev);

	s->heard_ms = util_mono_ms();
	while (vm->sess == s && s->st != PS_COMMIT && s->st != PS_ADOPT) {
		if (s->st == PS_PROMOTE && evbuffer_get_length(in) == 0)
			return;
		uint8_t type;
		size_t flen;
		int r = netio_peek(in, WIRE_FRAME_HDR + 16 + WIRE_MAX_SIG,
		    &type, &flen);
		if (r == 0)
			return;
		if (r < 0) {
			sess_fail(s, r, "bad frame from the replica: %s",
			    rd_strerror(r));
			return;
		}
		const uint8_t *p = netio_payload(in, flen);
		size_t plen = flen - WIRE_FRAME_HDR;
		if (type == WIRE_NACK)
			on_nack(s, p, plen);
		else if (type == WIRE_WELCOME && s->st == PS_HELLO)
			on_welcome(s, p, plen);
		else if (type == WIRE_ACK)
			on_ack(s, p, plen);
		else if (type == WIRE_PROMOTED && s->st == PS_PROMOTE)
			on_promoted(s, p, plen);
		else if (type == WIRE_KEEPALIVE && s->ka)
			on_keepalive(s, p, plen);
		else if ((type == WIRE_SIG || type == WIRE_SIGEND) &&
		    s->resync && s->st == PS_SEND && s->begun)
			on_sig(s, type, p, plen);
		else
			sess_fail(s, RD_ERR_PEER, "unexpected %s frame from "
			    "the replica", wire_type_name(type));
		if (vm->sess != s)
			return;		/* ended; s may be freed */
		evbuffer_drain(in, flen);
	}
}

static void
on_write(struct bufferevent *bev, void *arg)
{
	struct psess *s = arg;
	if (s->st == PS_SEND)
		maybe_produce(s);
}

/*
 * How long a primary offers a lower version before it offers its own
 * again: a replica that refused it may have been upgraded since (and
 * until then it gets no definitions).  REPLICAD_TEST_REPROBE_MS
 * shortens it for the system tests.
 */
static uint64_t
reprobe_ms(void)
{
	const char *v = getenv("REPLICAD_TEST_REPROBE_MS");
	char *end;
	unsigned long long ms;

	if (v != NULL && *v != '\0') {
		errno = 0;
		ms = strtoull(v, &end, 10);
		if (errno == 0 && *end == '\0')
			return ms;
	}
	return WIRE_REPROBE_S * 1000;
}

static void
send_hello(struct psess *s)
{
	struct pvm *vm = s->vm;

	if (vm->wire_version < WIRE_VERSION &&
	    util_mono_ms() - vm->wire_lowered_mono >= reprobe_ms()) {
		log_info("%s: offers protocol version %u again to replica %s "
		    "(it took %u; it may have been upgraded since)",
		    vm->cfg->name, WIRE_VERSION, vm->cfg->replica,
		    vm->wire_version);
		vm->wire_version = WIRE_VERSION;
	}
	struct wire_hello h = { .version = vm->wire_version,
	    .generation = vt_generation(vm->e), .block_size = vm->cfg->block_size,
	    .interval_ms = vm->cfg->interval_ms,
	    .ndisks = (uint16_t)vm->cfg->ndisks };
	snprintf(h.vm, sizeof(h.vm), "%s", vm->cfg->name);
	for (size_t i = 0; i < vm->cfg->ndisks; i++) {
		snprintf(h.disks[i].name, sizeof(h.disks[i].name), "%s",
		    vm->cfg->disk_names[i]);
		h.disks[i].size = s->sizes[i];
	}
	wb_reset(&s->hdr);
	wire_put_hello(&s->hdr, &h);
	netio_send(s->bev, &s->hdr);
	s->version = h.version;
	s->st = PS_HELLO;
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;

	if (what & BEV_EVENT_CONNECTED) {
		/* A replica that stops acknowledging what it was sent (a cut
		 * network, a kept session to a host that went away) ends the
		 * session soon, not after the ACK's deadline. */
		netio_tune(bufferevent_getfd(bev));
		s->heard_ms = util_mono_ms();
		send_hello(s);
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) &&
	    s->ka && (s->st == PS_SEND || s->st == PS_WAIT_ACK)) {
		sess_fail(s, RD_ERR_PEER, "no answer from replica %s for %"
		    PRIu64 " s: it, or the path back from it, is gone",
		    vm->cfg->replica, (util_mono_ms() - s->heard_ms) / 1000);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		sess_fail(s, RD_ERR_PEER, "replica %s did not answer in time",
		    vm->cfg->replica);
		return;
	}
	char detail[256];
	netio_error(bev, what, detail, sizeof(detail));
	if (s->st == PS_CONNECT)
		sess_fail(s, RD_ERR_PEER, "cannot connect to replica %s: %s",
		    vm->cfg->replica, detail);
	else
		sess_fail(s, RD_ERR_PEER, "replica %s: %s after %" PRIu64
		    " bytes sent", vm->cfg->replica, detail, s->bytes_sent);
}

/* --- starting a cycle ---------------------------------------------------- */

/*
 * The whole handshake is over its deadline.  The inactivity timeouts
 * alone do not bound it: a peer that sends a byte now and then (a TLS
 * record never finished) resets them, and would hold this VM's cycle,
 * and its turn to connect (dial.h) with the other VMs' behind it, for
 * good.
 */
static void
on_welcome_due(evutil_socket_t fd, short what, void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;

	if (vm->sess != s || (s->st != PS_CONNECT && s->st != PS_HELLO))
		return;
	sess_fail(s, RD_ERR_PEER, "replica %s did not answer in time (no "
	    "WELCOME within %" PRIu64 " s of the connection's start)",
	    vm->cfg->replica, (util_mono_ms() - s->connect_ms) / 1000);
}

static void
job_prepare(void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	char port[8];

	s->job_rc = 0;
	if (s->want_resync) {
		/* Asked for: a restart must not forget it. */
		struct cat_rel rel;
		if (cat_rel_get(vm->svc->cat, vm->cfg->name, &rel) == 0 &&
		    !rel.resync) {
			rel.resync = 1;
			cat_rel_put(vm->svc->cat, &rel);
		}
	}
	int r = trk_sizes(vm->trk, s->sizes, s->err, sizeof(s->err));
	if (r != 0) {
		s->job_rc = r;
		return;
	}
	snprintf(port, sizeof(port), "%u", vm->cfg->replica_port);
	r = getaddrinfo(vm->cfg->replica_host, port, &hints, &res);
	if (r != 0 || res == NULL) {
		snprintf(s->err, sizeof(s->err), "cannot resolve %s: %s",
		    vm->cfg->replica_host, gai_strerror(r));
		s->job_rc = RD_ERR_PEER;
		return;
	}
	memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
	s->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
}

static void
prepare_done(void *arg)
{
	struct psess *s = arg;
	struct pvm *vm = s->vm;
	SSL *ssl;

	if (!job_returned(s))
		return;
	/* The replica's certificate must name replica_name (tls.h). */
	ssl = tls_ssl_new(vm->svc->client_ctx, vm->cfg->replica_name);
	if (ssl == NULL) {
		sess_fail(s, RD_ERR_INTERNAL, "SSL_new: %s", tls_last_error());
		return;
	}
	s->bev = bufferevent_openssl_socket_new(vm->svc->base, -1, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		SSL_free(ssl);
		sess_fail(s, RD_ERR_INTERNAL, "cannot create a connection");
		return;
	}
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(s->bev, EV_WRITE, OUT_LOW, 0);
	bufferevent_set_max_single_write(s->bev, 1u << 20);
	/*
	 * Connect, handshake, HELLO and WELCOME: keepalives start only with
	 * WELCOME, so a replica (or path) gone silent before it is caught by
	 * this timeout, three keepalive intervals past the replica's own
	 * default handshake deadline.
	 */
	uint64_t ms = WELCOME_GRACE_MS + 3 * (uint64_t)vm->svc->cfg->keepalive_ms;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	bufferevent_set_timeouts(s->bev, &tv, &tv);
	s->connect_ms = util_mono_ms();
	s->welcome_ev = evtimer_new(vm->svc->base, on_welcome_due, s);
	evtimer_add(s->welcome_ev, &tv);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	s->st = PS_CONNECT;
	if (bufferevent_socket_connect(s->bev, (struct sockaddr *)&s->addr,
	    (int)s->addrlen) != 0)
		sess_fail(s, RD_ERR_PEER, "cannot connect to replica %s",
		    vm->cfg->replica);
}

/* The session's turn to connect has come. */
static void
turn_come(void *arg)
{
	struct psess *s = arg;
	s->job_running = 1;
	work_submit(job_prepare, prepare_done, s);
}

static void
start_cycle(struct pvm *vm)
{
	struct psess *s;

	if (vm->sess != NULL || vm->draining || vm->svc->stopping ||
	    vm->state == PVM_FENCED || cycles_held(vm))
		return;
	if (vm->paused && vm->next == NULL)
		return;
	evtimer_del(vm->timer);
	s = xcalloc(1, sizeof(*s));
	s->vm = vm;
	s->st = PS_PREPARE;
	s->batch = evbuffer_new();
	s->started_ms = util_mono_ms();
	vm->started_ms = s->started_ms;
	wb_init(&s->hdr);
	wb_init(&s->out);
	wb_init(&s->sigs_loop);
	wb_init(&s->sigs_job);
	wb_init(&s->dbuf);
	vm->sess = s;
	vm->state = PVM_SYNCING;
	s->want_resync = vm->resync;
	s->handover = vm->handover != NULL;
	/* Requests made before this cycle started are answered by it. */
	struct waiter **tail = &vm->cur;
	while (*tail)
		tail = &(*tail)->next;
	*tail = vm->next;
	vm->next = NULL;
	if (reuse_session(s))
		return;
	/*
	 * A new connection: in its turn (dial.h).  Turns are the replica
	 * daemon's, named by the identity its certificate must carry and its
	 * port, not by the address as spelled: a replica named two ways (a
	 * name and an address) is still one gate counting our handshakes.
	 */
	char *peer = xasprintf("%s:%u", vm->cfg->replica_name,
	    (unsigned)vm->cfg->replica_port);
	int now = dial_take(vm->svc->dialer, &s->turn, peer, turn_come, s);
	free(peer);
	if (now)
		turn_come(s);
	else
		log_debug("%s: waiting for a turn to connect to %s",
		    vm->cfg->name, vm->cfg->replica);
}

/* --- a session kept between cycles ------------------------------------------ */

#define KEEP_MAX_INTERVAL_MS	(60 * 1000)

/* The kept session, for a cycle or to close it. */
static struct bufferevent *
keep_take(struct pvm *vm)
{
	struct bufferevent *bev = vm->keep;
	vm->keep = NULL;
	if (vm->keep_tick)
		event_del(vm->keep_tick);
	return bev;
}

static void
keep_drop(struct pvm *vm)
{
	struct bufferevent *bev = keep_take(vm);
	if (bev)
		bufferevent_free(bev);
}

/* Nothing but keepalives is due from the replica between cycles:
 * anything else (a close, an error, other bytes) ends the kept session. */
static void
keep_read(struct bufferevent *bev, void *arg)
{
	struct pvm *vm = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct wire_keepalive k;
	uint8_t type;
	size_t flen;
	int r;

	for (;;) {
		r = netio_peek(in, WIRE_FRAME_HDR + 64, &type, &flen);
		if (r == 0)
			return;		/* nothing, or a frame's start */
		if (r < 0 || type != WIRE_KEEPALIVE || !vm->keep_ka ||
		    wire_get_keepalive(netio_payload(in, flen),
		    flen - WIRE_FRAME_HDR, &k) != 0)
			break;
		evbuffer_drain(in, flen);
	}
	log_debug("%s: the replica sent data between cycles; closing the "
	    "session", vm->cfg->name);
	keep_drop(vm);
}

/* Ours while the kept session idles; idle too long, it goes. */
static void
keep_tick(evutil_socket_t fd, short what, void *arg)
{
	struct pvm *vm = arg;

	if (vm->keep == NULL)
		return;
	if (util_mono_ms() - vm->keep_since_ms > 2 * vm->cfg->interval_ms +
	    1000) {
		log_debug("%s: the kept session idled for two intervals; "
		    "closing it", vm->cfg->name);
		keep_drop(vm);
		return;
	}
	if (evbuffer_get_length(bufferevent_get_output(vm->keep)) == 0)
		send_keepalive(vm->keep, 0, own_every_ms(vm));
}

static void
keep_event(struct bufferevent *bev, short what, void *arg)
{
	struct pvm *vm = arg;
	log_debug("%s: the kept session to %s ended", vm->cfg->name,
	    vm->cfg->replica);
	keep_drop(vm);
}

/*
 * After an acknowledged cycle with a short interval, the session stays
 * open: the next cycle needs no connection, handshake or HELLO, only
 * CYCLE .. END and the ACK.  The replica ends it on any role change of
 * the VM, so a kept session never outlives its generation (F1).
 */
static void
keep_session(struct psess *s)
{
	struct pvm *vm = s->vm;
	uint64_t every = vm->cfg->interval_ms;

	keep_drop(vm);
	if (every == 0 || every > KEEP_MAX_INTERVAL_MS || s->bev == NULL ||
	    s->handover || cycles_held(vm) || vm->svc->stopping)
		return;
	vm->keep = s->bev;
	s->bev = NULL;
	vm->keep_ka = s->ka;
	vm->keep_version = s->peer_version;
	vm->keep_every_ms = s->peer_every_ms;
	vm->keep_since_ms = util_mono_ms();
	bufferevent_setcb(vm->keep, keep_read, NULL, keep_event, vm);
	if (s->ka) {
		/* Keepalives both ways; idle at most two intervals (the
		 * tick), then the next cycle reconnects. */
		struct timeval tv = ms_tv(silence_ms(s));
		struct timeval ktv = ms_tv(own_every_ms(vm));
		bufferevent_set_timeouts(vm->keep, &tv, NULL);
		if (vm->keep_tick == NULL)
			vm->keep_tick = event_new(vm->svc->base, -1, EV_PERSIST,
			    keep_tick, vm);
		event_add(vm->keep_tick, &ktv);
	} else {
		/* Idle at most two intervals, then the next cycle
		 * reconnects. */
		struct timeval tv = { (time_t)(2 * every / 1000) + 1, 0 };
		bufferevent_set_timeouts(vm->keep, &tv, NULL);
	}
	bufferevent_enable(vm->keep, EV_READ);
	if (evbuffer_get_length(bufferevent_get_input(vm->keep)) > 0)
		keep_read(vm->keep, vm);
}

/* Start the cycle on the kept session, if it can: 1 if it did. */
static int
reuse_session(struct psess *s)
{
	struct pvm *vm = s->vm;
	struct bufferevent *bev = keep_take(vm);

	if (bev == NULL)
		return 0;
	/* A resync, a handover, a tracker that cannot prove the replica's
	 * state: the full way, with HELLO and WELCOME. */
	if (s->want_resync || s->handover || !trk_proven(vm->trk,
	    vm->last_cycle)) {
		bufferevent_free(bev);
		return 0;
	}
	s->bev = bev;
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	s->ka = vm->keep_ka;
	s->peer_version = vm->keep_version;
	s->peer_every_ms = vm->keep_every_ms;
	s->heard_ms = util_mono_ms();
	s->replica_cycle = vm->last_cycle;
	s->resync = 0;
	log_debug("%s: cycle on the kept session", vm->cfg->name);
	begin_sending(s, vm->last_cycle);
	return 1;
}

/* --- public -------------------------------------------------------------- */

static void
job_check(void *arg)
{
	struct check_job *cj = arg;
	const struct cfg_vm *cfg = cj->vm->cfg;
	/* Clones of an earlier reflink configuration would pin the old
	 * extents of the images for good. */
	if (cfg->tracker == TRACKER_SCAN)
		trk_forget_clones(cfg);
	cj->rc = trk_check(cfg, cj->vm->svc->cfg->state_dir, cj->err,
	    sizeof(cj->err));
}

static void
check_done(void *arg)
{
	struct check_job *cj = arg;
	struct pvm *vm = cj->vm;
	if (cj->rc == TRK_CHECK_NOT_RUNNING) {
		log_info("%s: %s; the cycles find out when it runs",
		    vm->cfg->name, cj->err);
	} else if (cj->rc != 0) {
		/* Said once, plainly; each cycle fails with the reason until
		 * the operator acts. */
		log_warnx("%s: tracker %s cannot work here: %s", vm->cfg->name,
		    trk_backend_name(vm->cfg->tracker), cj->err);
		if (vm->sess == NULL && vm->state == PVM_IDLE) {
			vm->state = PVM_ERROR;
			snprintf(vm->error, sizeof(vm->error), "%s", cj->err);
		}
	}
	free(cj);
	vm->draining--;
	if (vm->draining == 0 && vm->sess == NULL)
		plan_next(vm);
	poke(vm);
}

/*
 * Stop the VM's cycles now (a role change, shutdown): the running one is
 * abandoned (the tracker finds its blocks again), a handover waiting for
 * it ends (before PROMOTE it did not happen; after, nobody knows:
 * RD_ERR_STATE, the next cycle tells), and every waiter hears why.
 */
static void
abandon(struct pvm *vm, const char *why)
{
	int promote_sent = 0;

	evtimer_del(vm->timer);
	keep_drop(vm);
	if (vm->sess) {
		promote_sent = vm->sess->promote_sent;
		log_info("%s: abandoning cycle %" PRIu64 " (%s)",
		    vm->cfg->name, vm->sess->cycle, why);
		sess_end(vm->sess);
	}
	if (vm->handover)
		handover_end(vm, promote_sent ? RD_ERR_STATE : RD_ERR_BUSY,
		    why);
	tell_waiters(&vm->cur, 0, why);
	tell_waiters(&vm->next, 0, why);
}

/* What the VM table may ask of a primary (vmtab.h). */
static void
pvm_quiesce(void *obj)
{
	abandon(obj, "the VM is changing roles");
}

static int
pvm_in_use(void *obj)
{
	struct pvm *vm = obj;
	return vm->sess != NULL || vm->draining > 0;
}

static void
pvm_carry_on(void *obj)
{
	struct pvm *vm = obj;
	if (vm->sess == NULL && vm->draining == 0)
		plan_next(vm);
}

static const struct vt_ops pvm_ops = {
	.quiesce = pvm_quiesce,
	.in_use = pvm_in_use,
	.resume = pvm_carry_on,
};

struct pvm *
pvm_new(struct svc *svc, struct vme *e, const struct cfg_vm *cfg,
    const struct cat_rel *rel)
{
	struct pvm *vm = xcalloc(1, sizeof(*vm));
	int r;

	vm->svc = svc;
	vm->e = e;
	vm->cfg = cfg;
	if ((r = trk_open(svc->cfg->state_dir, cfg, &vm->trk)) != 0) {
		log_warnx("%s: cannot open the tracker state: %s", cfg->name,
		    rd_strerror(r));
		free(vm);
		return NULL;
	}
	vm->timer = evtimer_new(svc->base, on_timer, vm);
	vm->wire_version = WIRE_VERSION;
	vm->app_path = lay_app_point(svc->cfg->state_dir, cfg->name);
	load_app_time(vm);
	vt_attach(e, VT_PRIMARY, vm, &pvm_ops);
	vm->resync = rel->resync;
	vm->last_cycle = rel->last_cycle;
	vm->last_point = rel->last_point;
	vm->last_point_ms = rel->last_point_created_ms;
	vm->last_point_mono = mono_of(rel->last_point_created_ms);
	if (rel->fenced[0] != '\0') {
		vm->state = PVM_FENCED;
		snprintf(vm->error, sizeof(vm->error), "%s", rel->fenced);
		log_warnx("%s: fenced: %s; not replicating until an operator "
		    "acts", cfg->name, rel->fenced);
		return vm;
	}
	vm->state = PVM_IDLE;
	/* A first cycle soon after start, then every interval. */
	if (cfg->interval_ms && !cycles_held(vm))
		schedule(vm, 1000);
	{
		struct check_job *cj = xcalloc(1, sizeof(*cj));
		cj->vm = vm;
		vm->draining++;
		work_submit(job_check, check_done, cj);
	}
	return vm;
}

struct pvm *
pvm_new_owned(struct svc *svc, struct vme *e, struct cfg_vm *cfg,
    const struct cat_rel *rel)
{
	struct pvm *vm = pvm_new(svc, e, cfg, rel);
	if (vm == NULL)
		cfg_vm_free(cfg);
	else
		vm->owned_cfg = cfg;
	return vm;
}

void
pvm_set_cfg(struct pvm *vm, const struct cfg_vm *cfg)
{
	vm->next_cfg = cfg;
	if (vm->sess != NULL || vm->draining > 0)
		return;		/* plan_next() applies it */
	evtimer_del(vm->timer);
	plan_next(vm);
}

void
pvm_hold(struct pvm *vm, int on)
{
	if (vm->reload_hold == on)
		return;
	vm->reload_hold = on;
	if (on && vm->sess == NULL)
		evtimer_del(vm->timer);
	else if (!on && vm->sess == NULL && vm->draining == 0)
		plan_next(vm);
}

int
pvm_busy(const struct pvm *vm)
{
	return pvm_in_use((void *)vm) || vm->close_fn != NULL;
}

int
pvm_paused(const struct pvm *vm)
{
	return vm->paused;
}

const struct cfg_vm *
pvm_cfg(const struct pvm *vm)
{
	return vm->cfg;
}

uint64_t
pvm_generation(const struct pvm *vm)
{
	return vt_generation(vm->e);
}

int
pvm_has_replica(const struct pvm *vm)
{
	return vm->cfg->replica != NULL;
}

void
pvm_confirm(struct pvm *vm, void (*fn)(void *, int), void *arg)
{
	if (vm->confirm_fn)
		vm->confirm_fn(vm->confirm_arg, -1);	/* forget it */
	vm->confirm_fn = fn;
	vm->confirm_arg = arg;
}

int
pvm_confirm_pending(const struct pvm *vm)
{
	return vm->confirm_fn != NULL;
}

int
pvm_handover(struct pvm *vm, const char *listen, pvm_handover_fn fn,
    void *arg)
{
	if (vm->state == PVM_FENCED)
		return RD_ERR_FENCED;
	if (vm->cfg->replica == NULL || vm->handover || vm->close_fn ||
	    vm->svc->stopping)
		return RD_ERR_STATE;
	vm->handover = xstrdup(listen);
	vm->handover_fn = fn;
	vm->handover_arg = arg;
	log_info("%s: the next cycle hands the VM over%s", vm->cfg->name,
	    vm->sess ? " (after the running one)" : "");
	/* A cycle that starts after this call: every write made before
	 * the guest was stopped travels in it. */
	return want_cycle(vm, NULL, NULL);
}

/* Free what pvm_new made, the tracker aside. */
static void
pvm_release(struct pvm *vm)
{
	/* Nobody waits on a VM that goes (sync refuses meanwhile). */
	tell_waiters(&vm->cur, 0, "the VM changed roles");
	tell_waiters(&vm->next, 0, "the VM changed roles");
	if (vm->handover)
		handover_end(vm, RD_ERR_BUSY, "the VM changed roles");
	vt_detach(vm->e, VT_PRIMARY);
	event_free(vm->timer);
	if (vm->keep_tick)
		event_free(vm->keep_tick);
	if (vm->confirm_fn)
		vm->confirm_fn(vm->confirm_arg, -1);	/* forget it */
	if (vm->owned_cfg)
		cfg_vm_free(vm->owned_cfg);
	free(vm->handover);
	free(vm->app_path);
	free(vm);
}

/* Closing a tracker may block (QMP): a job, alone on it. */
static void
job_close_tracker(void *arg)
{
	struct pvm *vm = arg;
	trk_close(vm->trk);
	vm->trk = NULL;
}

static void
close_tracker_done(void *arg)
{
	struct pvm *vm = arg;
	void (*fn)(void *) = vm->close_fn;
	void *fn_arg = vm->close_arg;
	pvm_release(vm);
	fn(fn_arg);
}

void
pvm_close(struct pvm *vm, void (*fn)(void *), void *arg)
{
	if (pvm_in_use(vm) || vm->close_fn)
		fatalx("%s: closed while in use", vm->cfg->name);
	evtimer_del(vm->timer);
	keep_drop(vm);
	vm->close_fn = fn;
	vm->close_arg = arg;
	work_submit(job_close_tracker, close_tracker_done, vm);
}

void
pvm_free(struct pvm *vm)
{
	if (vm == NULL)
		return;
	pvm_stop(vm);		/* also answers every waiter */
	trk_close(vm->trk);
	pvm_release(vm);
}

void
pvm_status(const struct pvm *vm, struct pvm_status *st)
{
	memset(st, 0, sizeof(*st));
	st->name = vm->cfg->name;
	st->replica = vm->cfg->replica;
	st->state = vm->paused && vm->state == PVM_IDLE ? PVM_PAUSED :
	    vm->state;
	st->generation = vt_generation(vm->e);
	st->last_point = vm->last_point;
	st->last_point_ms = vm->last_point_ms;
	st->lag_ms = vm->last_point == 0 ? -1 :
	    (int64_t)(util_mono_ms() - vm->last_point_mono);
	st->interval_ms = vm->cfg->interval_ms;
	st->lag_warn_ms = config_lag_ms(&vm->cfg->lag_warning,
	    vm->cfg->interval_ms);
	st->lag_crit_ms = config_lag_ms(&vm->cfg->lag_critical,
	    vm->cfg->interval_ms);
	st->tracker = trk_backend_name(vm->cfg->tracker);
	st->failures = vm->failures;
	st->nospace = vm->nospace;
	st->error = vm->error;
	st->last = vm->last;
	st->cycles_total = vm->cycles_total;
	st->failures_total = vm->failures_total;
	st->read_total = vm->read_total;
	st->sent_total = vm->sent_total;
	if (vm->sess) {
		st->progress_bytes = vm->sess->progress;
		st->progress_total = vm->sess->progress_total;
		st->resyncing = vm->sess->resync;
		liveness_note(vm->sess, st);
	}
}

/* Ask for a cycle that starts after now; fn (may be NULL) hears its end. */
static int
want_cycle(struct pvm *vm, pvm_waiter_fn fn, void *arg)
{
	struct waiter *w = xcalloc(1, sizeof(*w));
	w->fn = fn;
	w->arg = arg;
	struct waiter **tail = &vm->next;
	while (*tail)
		tail = &(*tail)->next;
	*tail = w;
	if (vm->sess == NULL)
		start_cycle(vm);
	return 0;
}

/* Why a cycle cannot be asked for now (0: it can). */
static int
sync_refused(const struct pvm *vm)
{
	if (vm->state == PVM_FENCED)
		return RD_ERR_FENCED;
	if (vm->svc->stopping)
		return RD_ERR_STATE;
	/* A role change holds the VM (its own handover cycle aside): no
	 * cycle would start, and the VM may not be this host's after it. */
	if (vm->close_fn != NULL || ((vt_claimed(vm->e) || vm->reload_hold)
	    && vm->handover == NULL))
		return RD_ERR_BUSY;
	return 0;
}

int
pvm_sync(struct pvm *vm, pvm_waiter_fn fn, void *arg)
{
	int r = sync_refused(vm);
	return r != 0 ? r : want_cycle(vm, fn, arg);
}

int
pvm_resync(struct pvm *vm, pvm_waiter_fn fn, void *arg)
{
	int r = sync_refused(vm);
	if (r != 0)
		return r;
	vm->resync = 1;
	return want_cycle(vm, fn, arg);
}

void
pvm_cancel_waiter(struct pvm *vm, void *arg)
{
	struct waiter **lists[] = { &vm->cur, &vm->next };
	for (int i = 0; i < 2; i++) {
		for (struct waiter **w = lists[i]; *w;) {
			if ((*w)->arg == arg) {
				struct waiter *dead = *w;
				*w = dead->next;
				free(dead);
			} else {
				w = &(*w)->next;
			}
		}
	}
}

void
pvm_pause(struct pvm *vm)
{
	vm->paused = 1;
	evtimer_del(vm->timer);
	if (vm->state == PVM_IDLE)
		vm->state = PVM_PAUSED;
}

int
pvm_resume(struct pvm *vm)
{
	/* Lifting a fence writes the relationship: not under a role
	 * change, which writes it too. */
	if (vm->close_fn != NULL || vt_claimed(vm->e))
		return RD_ERR_BUSY;
	if (vm->state == PVM_FENCED && !vm->svc->stopping) {
		/* The operator says try again: if this host is still a stale
		 * primary, the replica fences it again. */
		log_info("%s: fence lifted by the operator", vm->cfg->name);
		struct fence_job *fj = xcalloc(1, sizeof(*fj));
		fj->vm = vm;
		vm->draining++;
		work_submit(job_fenced, fenced_done_quiet, fj);
		vm->state = PVM_IDLE;
		vm->error[0] = '\0';
		vm->failures = 0;
	}
	vm->paused = 0;
	if (vm->state == PVM_PAUSED)
		vm->state = PVM_IDLE;
	if (vm->sess != NULL || vm->state == PVM_FENCED)
		return 0;
	/* A VM with an interval is due at once.  One without (interval 0)
	 * has no scheduled cycle to restart: only a failed cycle's retry,
	 * held by the pause; else the next sync runs a cycle. */
	if (vm->cfg->interval_ms != 0)
		schedule(vm, 0);
	else
		plan_next(vm);
	return 0;
}

void
pvm_stop(struct pvm *vm)
{
	abandon(vm, "replicad is shutting down");
}
