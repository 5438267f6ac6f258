/*
 * gate.c — admission bookkeeping of incoming connections (gate.h).
 *
 * The unauthenticated connections form one list in accept order; the
 * budgets are small (hundreds), so a source's count is a walk of it.
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gate.h"
#include "xmalloc.h"

#define GATE_SOURCES_SEEN	1024	/* distinct sources per summary */

/* A source: an IPv4 address, or the /64 of an IPv6 one. */
struct gate_src {
	uint8_t		 b[9];		/* family tag, then 4 or 8 bytes */
};

struct gate_conn {
	struct gate_conn *prev, *next;	/* unauthenticated, or authenticated
					   and not yet welcomed: oldest
					   first, one list each */
	struct gate_src	 src;
	void		*owner;
	int		 authed;
	int		 welcomed;
	char		*identity;	/* once authenticated */
};

struct gate {
	struct gate_limits lim;
	struct gate_conn *head, *tail;	/* unauthenticated */
	struct gate_conn *whead, *wtail; /* authenticated, not welcomed */
	unsigned	 nunauth, nauth;
	uint64_t	 total[GATE_NWHY];
	/* this interval */
	uint64_t	 count[GATE_NWHY];
	uint64_t	 ndrops, nlogged;
	struct gate_src	*seen;
	unsigned	 nseen;
	int		 seen_overflow;
};

static void
src_of(const struct sockaddr *sa, struct gate_src *k)
{
	memset(k, 0, sizeof(*k));
	if (sa == NULL)
		return;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const void *)sa;
		k->b[0] = 4;
		memcpy(k->b + 1, &s4->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			k->b[0] = 4;
			memcpy(k->b + 1, s6->sin6_addr.s6_addr + 12, 4);
		} else {
			k->b[0] = 6;
			memcpy(k->b + 1, s6->sin6_addr.s6_addr, 8);
		}
	}
}

static int
src_eq(const struct gate_src *a, const struct gate_src *b)
{
	return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

void
gate_limits_for(struct gate_limits *lim, uint64_t vms, size_t nhosts)
{
	uint64_t auth = vms + (uint64_t)nhosts * GATE_PER_IDENTITY;

	lim->per_source = GATE_PER_SOURCE;
	lim->unauth = GATE_UNAUTH;
	lim->auth = auth < GATE_AUTH ? GATE_AUTH :
	    auth > UINT32_MAX ? UINT32_MAX : (unsigned)auth;
	lim->per_identity = GATE_PER_IDENTITY;
}

struct gate *
gate_new(const struct gate_limits *lim)
{
	struct gate *g = xcalloc(1, sizeof(*g));
	struct gate_limits def;

	gate_limits_for(&def, 0, 0);
	g->lim = lim ? *lim : def;
	g->seen = xcalloc(GATE_SOURCES_SEEN, sizeof(*g->seen));
	return g;
}

void
gate_free(struct gate *g)
{
	if (g == NULL)
		return;
	/* Entries belong to their callers, who leave before this. */
	free(g->seen);
	free(g);
}

static void
list_unlink(struct gate_conn **head, struct gate_conn **tail,
    struct gate_conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		*head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		*tail = c->prev;
	c->prev = c->next = NULL;
}

static void
list_append(struct gate_conn **head, struct gate_conn **tail,
    struct gate_conn *c)
{
	c->next = NULL;
	c->prev = *tail;
	if (*tail)
		(*tail)->next = c;
	else
		*head = c;
	*tail = c;
}

static void
unlink_conn(struct gate *g, struct gate_conn *c)
{
	list_unlink(&g->head, &g->tail, c);
	g->nunauth--;
}

static uint32_t
src_hash(const struct gate_src *k)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < sizeof(k->b); i++)
		h = (h ^ k->b[i]) * 16777619u;
	return h;
}

/*
 * The oldest connection of the source that holds the most of the
 * unauthenticated budget.  Pushing out the oldest of all would let a
 * stranger with a few dozen addresses churn new connections fast enough
 * that an honest handshake never lasts long enough to finish; this way
 * it pushes out its own connections until it holds no more than any
 * other source.  One pass, counted in a table twice the budget's size.
 */
static struct gate_conn *
busiest_oldest(struct gate *g)
{
	size_t n = 1;
	while (n < 2 * (size_t)g->nunauth)
		n <<= 1;
	struct slot {
		struct gate_conn *first;
		unsigned	 count;
	} *t = xcalloc(n, sizeof(*t)), *best = NULL;

	for (struct gate_conn *c = g->head; c; c = c->next) {
		size_t i = src_hash(&c->src) & (n - 1);
		while (t[i].first && !src_eq(&t[i].first->src, &c->src))
			i = (i + 1) & (n - 1);
		if (t[i].first == NULL)
			t[i].first = c;		/* the list is oldest first */
		t[i].count++;
		if (best == NULL || t[i].count > best->count)
			best = &t[i];
	}
	struct gate_conn *victim = best ? best->first : NULL;
	free(t);
	return victim;
}

struct gate_conn *
gate_enter(struct gate *g, const struct sockaddr *sa, void *owner,
    void **victim)
{
	struct gate_conn *c = xcalloc(1, sizeof(*c)), *oldest = NULL;
	unsigned same = 0;

	src_of(sa, &c->src);
	c->owner = owner;
	for (struct gate_conn *o = g->head; o; o = o->next)
		if (src_eq(&o->src, &c->src) && same++ == 0)
			oldest = o;
	*victim = NULL;
	if (same >= g->lim.per_source)
		*victim = oldest->owner;
	else if (g->nunauth >= g->lim.unauth && g->head)
		*victim = busiest_oldest(g)->owner;

	list_append(&g->head, &g->tail, c);
	g->nunauth++;
	return c;
}

int
gate_authenticated(struct gate *g, struct gate_conn *c, const char *identity,
    void **victim)
{
	struct gate_conn *oldest = NULL;
	unsigned same = 0;

	*victim = NULL;
	if (c->authed)
		return 0;
	if (g->nauth >= g->lim.auth)
		return -1;
	for (struct gate_conn *o = g->whead; o; o = o->next)
		if (strcasecmp(o->identity, identity) == 0 && same++ == 0)
			oldest = o;
	if (same >= g->lim.per_identity)
		*victim = oldest->owner;
	unlink_conn(g, c);
	c->authed = 1;
	c->identity = xstrdup(identity);
	list_append(&g->whead, &g->wtail, c);
	g->nauth++;
	return 0;
}

void
gate_welcomed(struct gate *g, struct gate_conn *c)
{
	if (c == NULL || !c->authed || c->welcomed)
		return;
	list_unlink(&g->whead, &g->wtail, c);
	c->welcomed = 1;
}

void
gate_leave(struct gate *g, struct gate_conn *c)
{
	if (c == NULL)
		return;
	if (c->authed) {
		if (!c->welcomed)
			list_unlink(&g->whead, &g->wtail, c);
		g->nauth--;
	} else
		unlink_conn(g, c);
	free(c->identity);
	free(c);
}

int
gate_note(struct gate *g, const struct sockaddr *sa, enum gate_why why)
{
	struct gate_src k;
	unsigned i;

	g->total[why]++;
	g->count[why]++;
	g->ndrops++;
	src_of(sa, &k);
	for (i = 0; i < g->nseen; i++)
		if (src_eq(&g->seen[i], &k))
			break;
	if (i == g->nseen) {
		if (g->nseen < GATE_SOURCES_SEEN)
			g->seen[g->nseen++] = k;
		else
			g->seen_overflow = 1;
	}
	if (g->nlogged >= GATE_LOG_BURST)
		return 0;
	g->nlogged++;
	return 1;
}

const char *
gate_why_str(enum gate_why why)
{
	static const char *const s[GATE_NWHY] = {
		[GATE_EVICTED] = "made room for newer ones",
		[GATE_DEADLINE] = "handshake deadline",
		[GATE_TLS] = "TLS handshake failed",
		[GATE_AUTH_FULL] = "too many sessions",
		[GATE_STOPPING] = "shutting down",
		[GATE_NOT_ACCEPTED] = "certificate not accepted",
	};
	return why < GATE_NWHY ? s[why] : "?";
}

int
gate_summary(struct gate *g, unsigned interval_s, char *buf, size_t bufsz)
{
	int r = 0;

	if (g->ndrops > g->nlogged) {
		size_t n = (size_t)snprintf(buf, bufsz, "dropped %llu "
		    "connections from %u%s sources before they were welcomed in "
		    "%u s, %llu of them logged above (",
		    (unsigned long long)g->ndrops, g->nseen,
		    g->seen_overflow ? "+" : "", interval_s,
		    (unsigned long long)g->nlogged);
		const char *sep = "";
		for (int w = 0; w < GATE_NWHY && n < bufsz; w++) {
			if (g->count[w] == 0)
				continue;
			n += (size_t)snprintf(buf + n, bufsz - n, "%s%llu %s",
			    sep, (unsigned long long)g->count[w],
			    gate_why_str((enum gate_why)w));
			sep = ", ";
		}
		if (n < bufsz)
			snprintf(buf + n, bufsz - n, ")");
		r = 1;
	}
	memset(g->count, 0, sizeof(g->count));
	g->ndrops = g->nlogged = 0;
	g->nseen = 0;
	g->seen_overflow = 0;
	return r;
}

void
gate_counters(const struct gate *g, struct gate_counters *out)
{
	out->unauth = g->nunauth;
	out->auth = g->nauth;
	memcpy(out->dropped, g->total, sizeof(out->dropped));
}
