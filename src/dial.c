/*
 * dial.c — turns for new connections, per replica endpoint (dial.h).
 *
 * A host has few replica endpoints: a list of them, each with the number
 * of turns held and its queue.  An endpoint with neither goes.
 */
#include <stdlib.h>
#include <string.h>

#include "dial.h"
#include "xmalloc.h"

struct dial_peer {
	struct dial_peer	*next;
	char			*name;
	unsigned		 holding;
	struct dial_turn	*head, *tail;	/* waiting, oldest first */
};

struct dialer {
	unsigned		 per_peer;
	struct dial_peer	*peers;
	int			 passing;	/* in pass_on() */
};

struct dialer *
dial_new(unsigned per_peer)
{
	struct dialer *d = xcalloc(1, sizeof(*d));
	d->per_peer = per_peer ? per_peer : DIAL_PER_PEER;
	return d;
}

void
dial_free(struct dialer *d)
{
	if (d == NULL)
		return;
	while (d->peers) {
		struct dial_peer *p = d->peers;
		d->peers = p->next;
		free(p->name);
		free(p);
	}
	free(d);
}

static struct dial_peer *
find_peer(const struct dialer *d, const char *name)
{
	for (struct dial_peer *p = d->peers; p; p = p->next)
		if (strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

/* Peers with neither a turn held nor one waiting go. */
static void
drop_idle_peers(struct dialer *d)
{
	struct dial_peer **pp = &d->peers;
	while (*pp) {
		struct dial_peer *p = *pp;
		if (p->holding || p->head) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		free(p->name);
		free(p);
	}
}

/*
 * Free turns pass to the oldest waiting ones.  go() may take or give
 * back turns itself: such a call only keeps the books, and this loop
 * (the outermost) passes on what it freed.
 */
static void
pass_on(struct dialer *d)
{
	if (d->passing)
		return;
	d->passing = 1;
	for (;;) {
		struct dial_turn *w = NULL;
		for (struct dial_peer *p = d->peers; p && w == NULL;
		    p = p->next) {
			if (p->holding >= d->per_peer || p->head == NULL)
				continue;
			w = p->head;
			p->head = w->next;
			if (p->head == NULL)
				p->tail = NULL;
			p->holding++;
		}
		if (w == NULL)
			break;
		w->next = NULL;
		w->state = DIAL_HOLDING;
		w->go(w->arg);
	}
	d->passing = 0;
	drop_idle_peers(d);
}

int
dial_take(struct dialer *d, struct dial_turn *t, const char *peer,
    void (*go)(void *), void *arg)
{
	struct dial_peer *p = find_peer(d, peer);

	if (p == NULL) {
		p = xcalloc(1, sizeof(*p));
		p->name = xstrdup(peer);
		p->next = d->peers;
		d->peers = p;
	}
	t->peer = p;
	t->go = go;
	t->arg = arg;
	t->next = NULL;
	if (p->holding < d->per_peer && p->head == NULL) {
		p->holding++;
		t->state = DIAL_HOLDING;
		return 1;
	}
	t->state = DIAL_WAITING;
	if (p->tail)
		p->tail->next = t;
	else
		p->head = t;
	p->tail = t;
	return 0;
}

void
dial_done(struct dialer *d, struct dial_turn *t)
{
	struct dial_peer *p = t->peer;

	if (t->state == DIAL_NONE || p == NULL)
		return;
	if (t->state == DIAL_WAITING) {
		struct dial_turn *prev = NULL;
		for (struct dial_turn *w = p->head; w; prev = w, w = w->next) {
			if (w != t)
				continue;
			if (prev)
				prev->next = w->next;
			else
				p->head = w->next;
			if (p->tail == w)
				p->tail = prev;
			break;
		}
	} else {
		p->holding--;
	}
	t->state = DIAL_NONE;
	t->peer = NULL;
	t->next = NULL;
	pass_on(d);
}

unsigned
dial_holding(const struct dialer *d, const char *peer)
{
	const struct dial_peer *p = find_peer(d, peer);
	return p ? p->holding : 0;
}

unsigned
dial_waiting(const struct dialer *d, const char *peer)
{
	const struct dial_peer *p = find_peer(d, peer);
	unsigned n = 0;
	if (p)
		for (const struct dial_turn *t = p->head; t; t = t->next)
			n++;
	return n;
}
