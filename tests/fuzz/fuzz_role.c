/*
 * fuzz_role.c — libFuzzer harness for the rules of roles (src/role.c)
 * fed with decoded frames: one host's relationship for one VM goes
 * through a run of events, each decided by role.c and, unless refused,
 * carried out with the role_rel_*() changes as replica.c, primary.c and
 * failover.c do.
 *
 * Input: records of [op][arg][n][n bytes].  op picks the event: 0 HELLO,
 * 2 PROMOTE, 3 WELCOME, 4 PROMOTED (the n bytes are the frame's payload,
 * decoded by wire.c; an event whose frame does not decode is skipped),
 * 1 a cycle applied or acknowledged, 5 an operator's command, 6 a
 * start-up.  arg: bits 0-1 the peer's identity, bit 2 whether an
 * [accept] entry admits it, bit 3 a role change holds the VM, bits 4-6
 * the command, bit 7 whether the configuration has a [vm] section.
 *
 * It aborts when a promise of role.h breaks: a decision that is carried
 * out gives a generation in 1..ROLE_MAX_GENERATION; the generation never
 * goes down; only the owner's HELLO is served, and only at the host's
 * generation (unless reassigned); a PROMOTE makes exactly one more; every
 * refusal says why, in a line that fits any buffer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "role.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const idents[] = { "host-a", "HOST-A", "host-b", "" };

struct host {
	struct cat_rel	rel;
	int		have;		/* a relationship exists */
	uint64_t	gen;		/* its generation, last seen */
};

/* A decided event's promises; refusals get their log line built. */
static void
check_decision(const struct host *h, const struct role_view *v,
    const char *id, uint64_t g, const struct role_decision *d, size_t bufsz)
{
	char buf[256];

	if (d->verdict == ROLE_REFUSE) {
		if (d->why == ROLE_WHY_NONE)
			abort();
		memset(buf, 'x', sizeof(buf));
		role_refusal(v, h->rel.vm, id, g, d, buf, bufsz);
		if (memchr(buf, '\0', bufsz) == NULL)
			abort();
		return;
	}
	if (d->generation == 0 || d->generation > ROLE_MAX_GENERATION)
		abort();
	if (h->have && d->generation < h->rel.generation)
		abort();
}

static void
on_hello(struct host *h, const struct role_view *v, const char *id,
    int accepted, const uint8_t *p, size_t n, size_t bufsz)
{
	struct wire_hello m;
	struct role_decision d;

	if (wire_get_hello(p, n, &m) != 0)
		return;
	if (h->have && strcmp(m.vm, h->rel.vm) != 0)
		return;		/* another VM's relationship */
	d = role_hello(v, id, m.generation, accepted);
	check_decision(h, v, id, m.generation, &d, bufsz);
	if (d.verdict == ROLE_REFUSE)
		return;
	if (!accepted || (v->state != ROLE_NONE &&
	    !role_same_identity(id, v->owner)))
		abort();
	switch (d.verdict) {
	case ROLE_CREATE:
		if (v->state != ROLE_NONE)
			abort();
		role_rel_create(&h->rel, m.vm, id, d.generation, "/s");
		h->have = 1;
		break;
	case ROLE_WELCOME:
		if (v->state != ROLE_REPLICA || m.generation != v->generation)
			abort();
		break;
	case ROLE_WELCOME_ADOPT:
		if (!v->reassigned)
			abort();
		/* At the first point of the session. */
		h->rel.generation = d.generation;
		h->rel.reassigned = 0;
		break;
	case ROLE_DEMOTE:
		if (v->state != ROLE_PRIMARY || d.generation <= v->generation)
			abort();
		role_rel_demote(&h->rel, d.generation, id, "/s", 0);
		break;
	default:
		abort();
	}
}

static void
on_promote(struct host *h, const struct role_view *v, const char *id,
    int stale_session, const uint8_t *p, size_t n, size_t bufsz)
{
	struct wire_promote m;
	struct role_decision d;
	uint64_t session_gen = h->rel.generation - (stale_session ? 1 : 0);

	if (!h->have || wire_get_promote(p, n, &m) != 0)
		return;
	d = role_promote(v, session_gen, h->rel.last_cycle,
	    h->rel.last_cycle, m.cycle, m.generation);
	check_decision(h, v, id, m.generation, &d, bufsz);
	if (d.verdict == ROLE_REFUSE)
		return;
	if (d.verdict != ROLE_PROMOTE || d.generation != v->generation + 1)
		abort();
	role_rel_promote_planned(&h->rel, d.generation, m.listen, v->owner);
}

static void
on_welcome(struct host *h, const struct role_view *v, const char *id,
    const uint8_t *p, size_t n, size_t bufsz)
{
	struct wire_welcome m;
	struct role_decision d;

	if (!h->have || h->rel.role == CAT_ROLE_REPLICA ||
	    wire_get_welcome(p, n, &m) != 0)
		return;
	d = role_welcome(h->rel.generation, m.generation,
	    (m.flags & WIRE_WELCOME_ADOPT) != 0);
	check_decision(h, v, id, m.generation, &d, bufsz);
	if (d.verdict == ROLE_ADOPT)
		role_rel_adopt(&h->rel, d.generation);
	else if (d.verdict == ROLE_REFUSE && d.nack == WIRE_NACK_FENCED)
		snprintf(h->rel.fenced, sizeof(h->rel.fenced), "stale");
}

static void
on_promoted(struct host *h, const struct role_view *v, const char *id,
    const uint8_t *p, size_t n, size_t bufsz)
{
	struct role_decision d;
	uint64_t g;

	if (!h->have || h->rel.role == CAT_ROLE_REPLICA ||
	    wire_get_promoted(p, n, &g) != 0)
		return;
	d = role_promoted(h->rel.generation, g);
	check_decision(h, v, id, g, &d, bufsz);
	if (d.verdict == ROLE_HANDED_OVER)
		role_rel_demote(&h->rel, d.generation, v->owner, "/s",
		    h->rel.last_cycle);
}

static void
on_command(struct host *h, const struct role_view *v, const char *id,
    enum role_cmd cmd, int accepted, size_t bufsz)
{
	struct role_decision d = role_command(v, cmd, id, accepted);

	check_decision(h, v, id, v->generation, &d, bufsz);
	switch (d.verdict) {
	case ROLE_PROMOTE:
		role_rel_unplanned(&h->rel);
		break;
	case ROLE_COMMIT:
		h->rel.at_point = 0;
		break;
	case ROLE_HANDOVER:
		/* The end of a planned failover: the replica is primary. */
		role_rel_demote(&h->rel, d.generation, v->owner, "/s",
		    h->rel.last_cycle);
		break;
	case ROLE_REVERSE:
		role_rel_reverse(&h->rel, "host-b:7000", id);
		break;
	case ROLE_REASSIGN:
		role_rel_reassign(&h->rel, id);
		break;
	default:
		break;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct host h;
	struct role_view v;
	size_t off = 0;

	memset(&h, 0, sizeof(h));
	while (size - off >= 3) {
		uint8_t op = data[off], arg = data[off + 1];
		size_t n = data[off + 2];
		const uint8_t *p = data + off + 3;
		const char *id = idents[arg & 3];
		int accepted = (arg >> 2) & 1;
		size_t bufsz = 1 + (size_t)(op >> 3) * 8;

		if (n > size - off - 3)
			n = size - off - 3;
		off += 3 + n;
		role_view_of(h.have ? &h.rel : NULL, &v);
		v.busy = (arg >> 3) & 1;
		switch (op & 7) {
		case 0:
			on_hello(&h, &v, id, accepted, p, n, bufsz);
			break;
		case 1:
			if (h.have) {
				h.rel.last_cycle++;
				h.rel.last_point++;
			}
			break;
		case 2:
			on_promote(&h, &v, id, accepted, p, n, bufsz);
			break;
		case 3:
			on_welcome(&h, &v, id, p, n, bufsz);
			break;
		case 4:
			on_promoted(&h, &v, id, p, n, bufsz);
			break;
		case 5:
			on_command(&h, &v, id, (enum role_cmd)((arg >> 4) % 5),
			    accepted, bufsz);
			break;
		case 6: {
			enum role_start s = role_startup(h.have ? &h.rel :
			    NULL, arg >> 7);
			if ((!h.have) != (s == ROLE_START_NEW) ||
			    (h.have && (h.rel.role == CAT_ROLE_REPLICA) !=
			    (s == ROLE_START_REPLICA)))
				abort();
			break;
		}
		default:
			break;
		}
		if (h.have && h.rel.generation < h.gen)
			abort();
		h.gen = h.rel.generation;
	}
	return 0;
}
