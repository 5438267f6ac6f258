/*
 * dial.h — turns for a primary's new connections to its replicas.
 *
 * Each VM's cycle opens its own session.  At start-up, or when a replica
 * comes back, every VM of the host would start its TLS handshake at the
 * same moment; a replica admits only GATE_PER_SOURCE unauthenticated
 * connections from one address, the oldest giving way to the newest
 * (gate.h), so a burst of hundreds from one host pushes out its own
 * handshakes and most cycles fail with "connection closed" (and then
 * again, after their backoff).  Here a connection waits for a turn: at
 * most DIAL_PER_PEER of them to one replica endpoint are between their
 * start and the replica's answer to HELLO; the others wait, first come
 * first served.  Kept sessions (primary.c) need no turn.
 *
 * Pure bookkeeping: no sockets, no timers.  A waiting turn's go(arg) is
 * called from dial_done() of another turn, never from dial_take().
 */
#ifndef REPLICAD_DIAL_H
#define REPLICAD_DIAL_H

/* Below GATE_PER_SOURCE (8): two hosts behind one address still fit. */
#define DIAL_PER_PEER	4

struct dialer;
struct dial_peer;

enum dial_state {
	DIAL_NONE = 0,		/* neither waiting nor holding a turn */
	DIAL_WAITING,
	DIAL_HOLDING,
};

/* The caller's, embedded in what waits (zeroed: DIAL_NONE). */
struct dial_turn {
	struct dial_turn	*next;		/* the peer's queue */
	struct dial_peer	*peer;
	enum dial_state		 state;
	void			(*go)(void *arg);
	void			*arg;
};

/* per_peer 0: DIAL_PER_PEER.  The caller frees with dial_free(), once
 * no turn is waiting or held. */
struct dialer	*dial_new(unsigned per_peer);
void		 dial_free(struct dialer *d);

/*
 * Ask for a turn to connect to peer (the replica daemon: primary.c names
 * it by its identity and port, so that two spellings of one address
 * share its turns): 1 if
 * t holds one now; 0 if t waits, and go(arg) is called once it holds one.
 * t must be DIAL_NONE.
 */
int		 dial_take(struct dialer *d, struct dial_turn *t,
		    const char *peer, void (*go)(void *), void *arg);
/* t's connection has its answer, or was given up: a held turn passes to
 * the oldest waiting one, a waiting one leaves the queue.  Any state. */
void		 dial_done(struct dialer *d, struct dial_turn *t);
/* Turns held / waiting for peer now (tests, status). */
unsigned	 dial_holding(const struct dialer *d, const char *peer);
unsigned	 dial_waiting(const struct dialer *d, const char *peer);

#endif
