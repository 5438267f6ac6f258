/*
 * gate.h — admission of the replica's incoming connections.
 *
 * A connection is unauthenticated from accept until its TLS handshake
 * has verified the peer's certificate.  Unauthenticated connections are
 * counted per source (an IPv4 address, an IPv6 /64) and in total;
 * authenticated sessions have a budget of their own, so that a flood of
 * strangers never keeps a known primary out.
 *
 * When an unauthenticated budget is full, the oldest connection of that
 * budget gives way to the new one (when the total is full, the oldest of
 * the source holding the most).  An honest handshake takes a few
 * round trips, so the oldest is almost always an idle or dribbling
 * stranger; refusing the newest instead would let a thousand idle
 * connections lock every primary out for as long as they stay open.
 *
 * An accepted host's sessions that are authenticated but not yet
 * welcomed to a VM are counted per identity, the oldest giving way, so
 * that one accepted host cannot hold the authenticated budget either
 * (a welcomed session is one per VM, bounded by the host's max_vms).
 * The authenticated budget is at least GATE_AUTH, and as much as the
 * accepted hosts may hold at once (gate_limits_for()): a host with many
 * VMs keeps a session per VM, and is never refused for the others'.
 *
 * Connections dropped before authentication are counted by reason; a
 * few per interval are logged one by one, the rest in one summary line.
 *
 * Pure bookkeeping: no sockets, no timers, no logging.
 */
#ifndef REPLICAD_GATE_H
#define REPLICAD_GATE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define GATE_PER_SOURCE		8	/* unauthenticated, per source */
#define GATE_UNAUTH		256	/* unauthenticated, in total */
#define GATE_AUTH		1024	/* authenticated sessions, at least */
#define GATE_PER_IDENTITY	64	/* authenticated, not yet welcomed,
					   per identity */
#define GATE_LOG_BURST		5	/* drops logged in full per interval */

struct gate;
struct gate_conn;

struct gate_limits {
	unsigned	per_source;
	unsigned	unauth;
	unsigned	auth;
	unsigned	per_identity;
};

/* Why a connection was dropped or refused before authentication. */
enum gate_why {
	GATE_EVICTED,		/* made room for a newer connection */
	GATE_DEADLINE,		/* no valid HELLO within the deadline */
	GATE_TLS,		/* the TLS handshake failed */
	GATE_AUTH_FULL,		/* the authenticated budget is full */
	GATE_STOPPING,		/* the daemon is shutting down */
	GATE_NOT_ACCEPTED,	/* a certificate no [accept] entry names */
	GATE_NWHY
};

struct gate_counters {
	unsigned	unauth;			/* now */
	unsigned	auth;
	uint64_t	dropped[GATE_NWHY];	/* since gate_new() */
};

/*
 * The defaults above, the authenticated budget raised to what nhosts
 * accepted hosts allowed vms VMs in all (their max_vms) may hold at once:
 * a session per VM, and per host GATE_PER_IDENTITY not yet welcomed.
 */
void		 gate_limits_for(struct gate_limits *lim, uint64_t vms,
		    size_t nhosts);
/* limits NULL: the defaults above.  The caller frees with gate_free(). */
struct gate	*gate_new(const struct gate_limits *lim);
void		 gate_free(struct gate *g);

/*
 * Admit a connection from sa on behalf of owner (never refused).  If a
 * budget was full, *victim is the owner of the connection that must give
 * way: the caller closes it, which calls gate_leave() for it.  Else
 * *victim is NULL.  The entry is the caller's until gate_leave().
 */
struct gate_conn *gate_enter(struct gate *g, const struct sockaddr *sa,
	    void *owner, void **victim);
/*
 * c verified its peer as identity: 0, or -1 if the authenticated budget
 * is full (c stays unauthenticated; the caller closes it).  If identity
 * already had per_identity sessions not yet welcomed, *victim is the
 * owner of the oldest, which the caller closes; else NULL.
 */
int		 gate_authenticated(struct gate *g, struct gate_conn *c,
		    const char *identity, void **victim);
/* c was welcomed to a VM: it no longer counts against its identity. */
void		 gate_welcomed(struct gate *g, struct gate_conn *c);
void		 gate_leave(struct gate *g, struct gate_conn *c);

/* Count a drop of a connection from sa; 1 if the caller should log it
 * in full, 0 if the interval's summary covers it. */
int		 gate_note(struct gate *g, const struct sockaddr *sa,
		    enum gate_why why);
/*
 * End the interval: if some drop of it was not logged in full, write a
 * summary line into buf ("dropped 1000 connections from 3 sources before
 * authentication in 60 s (...)") and return 1; else return 0.
 */
int		 gate_summary(struct gate *g, unsigned interval_s, char *buf,
		    size_t bufsz);
void		 gate_counters(const struct gate *g, struct gate_counters *out);
const char	*gate_why_str(enum gate_why why);

#endif
