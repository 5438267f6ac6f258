/*
 * role.c — the rules of roles, generations and failover (role.h).  Pure:
 * every function here depends on its arguments only.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "role.h"
#include "wire.h"

int
role_same_identity(const char *a, const char *b)
{
	return a != NULL && b != NULL && a[0] != '\0' &&
	    strcasecmp(a, b) == 0;
}

void
role_owner(const struct cat_rel *rel, char *out, size_t outsz)
{
	char host[HOST_MAX_LEN + 1];
	uint16_t port;

	if (outsz == 0)
		return;
	out[0] = '\0';
	if (rel->role == CAT_ROLE_REPLICA)
		snprintf(out, outsz, "%s", rel->peer);
	else if (rel->peer_name[0] != '\0')
		snprintf(out, outsz, "%s", rel->peer_name);
	else if (rel->peer[0] != '\0' && util_parse_hostport(rel->peer, host,
	    sizeof(host), &port) == 0)
		snprintf(out, outsz, "%s", host);
}

void
role_view_of(const struct cat_rel *rel, struct role_view *v)
{
	memset(v, 0, sizeof(*v));
	if (rel == NULL) {
		v->state = ROLE_NONE;
		return;
	}
	if (rel->role == CAT_ROLE_REPLICA)
		v->state = ROLE_REPLICA;
	else
		v->state = rel->at_point != 0 ? ROLE_UNCOMMITTED : ROLE_PRIMARY;
	v->generation = rel->generation;
	role_owner(rel, v->owner, sizeof(v->owner));
	v->reassigned = rel->role == CAT_ROLE_REPLICA && rel->reassigned;
	v->fenced = rel->role == CAT_ROLE_PRIMARY && rel->fenced[0] != '\0';
	v->fresh = rel->role == CAT_ROLE_PRIMARY && rel->at_point == 0 &&
	    rel->last_cycle == 0 && rel->last_point == 0;
}

static struct role_decision
decide(enum role_verdict verdict, uint64_t generation)
{
	struct role_decision d = { .verdict = verdict,
	    .generation = generation };
	return d;
}

static struct role_decision
refuse(enum role_why why, uint16_t nack, uint64_t generation, int warn)
{
	struct role_decision d = { .verdict = ROLE_REFUSE, .why = why,
	    .nack = nack, .generation = generation, .warn = warn };
	return d;
}

static int
in_range(uint64_t g)
{
	return g >= 1 && g <= ROLE_MAX_GENERATION;
}

struct role_decision
role_hello(const struct role_view *v, const char *identity,
    uint64_t g, int accepted)
{
	uint64_t gen = v->generation;

	if (!accepted)
		return refuse(ROLE_WHY_NOT_ACCEPTED, WIRE_NACK_DENIED, gen, 1);
	/* Who first: another host learns who the VM belongs to, not its
	 * generation, and no generation it claims changes anything. */
	if (v->state != ROLE_NONE && !role_same_identity(identity, v->owner))
		return refuse(ROLE_WHY_NOT_OWNER, WIRE_NACK_DENIED, gen, 1);
	if (!in_range(g))
		return refuse(ROLE_WHY_RANGE, WIRE_NACK_PROTOCOL, gen, 1);
	switch (v->state) {
	case ROLE_NONE:
		return decide(ROLE_CREATE, g);
	case ROLE_REPLICA:
		if (v->reassigned) {
			/* The operator gave the VM to this sender, which
			 * compares the disks first (the copy here is another
			 * host's): below, it takes this host's generation;
			 * above (its failovers went on elsewhere), this host
			 * takes its generation with the first point. */
			if (v->busy)
				return refuse(ROLE_WHY_BUSY, WIRE_NACK_BUSY,
				    gen, 0);
			return decide(ROLE_WELCOME_ADOPT, g > gen ? g : gen);
		}
		if (g < gen)
			return refuse(ROLE_WHY_STALE, WIRE_NACK_FENCED, gen, 1);
		if (g > gen)
			return refuse(ROLE_WHY_LEAP, WIRE_NACK_PROTOCOL, gen, 1);
		if (v->busy)
			return refuse(ROLE_WHY_BUSY, WIRE_NACK_BUSY, gen, 0);
		return decide(ROLE_WELCOME, gen);
	case ROLE_PRIMARY:
		if (g < gen)
			return refuse(ROLE_WHY_STALE, WIRE_NACK_FENCED, gen, 1);
		if (g == gen)
			return refuse(ROLE_WHY_SAME_GEN, WIRE_NACK_DENIED, gen,
			    1);
		/* A primary no cycle ever left has no history a leap could
		 * cut short: its generation is a placeholder, as a new
		 * relationship's would be. */
		if (g > gen + 1 && !v->fresh)
			return refuse(ROLE_WHY_LEAP, WIRE_NACK_PROTOCOL, gen, 1);
		if (v->busy)
			return refuse(ROLE_WHY_BUSY, WIRE_NACK_BUSY, gen, 0);
		return decide(ROLE_DEMOTE, g);
	case ROLE_UNCOMMITTED:
		if (g < gen)
			return refuse(ROLE_WHY_STALE, WIRE_NACK_FENCED, gen, 1);
		if (g > gen)
			return refuse(ROLE_WHY_LEAP, WIRE_NACK_PROTOCOL, gen, 1);
		return refuse(ROLE_WHY_UNCOMMITTED, WIRE_NACK_DENIED, gen, 1);
	}
	return refuse(ROLE_WHY_NO_VM, WIRE_NACK_INTERNAL, gen, 1);
}

struct role_decision
role_promote(const struct role_view *v, uint64_t session_gen, uint64_t acked,
    uint64_t last_cycle, uint64_t m_cycle, uint64_t m_gen)
{
	uint64_t gen = v->generation;

	if (v->state != ROLE_REPLICA || session_gen != gen)
		return refuse(ROLE_WHY_NOT_AFTER_ACK, WIRE_NACK_PROTOCOL, gen,
		    1);
	if (m_gen != gen + 1)
		return refuse(m_gen > gen + 1 ? ROLE_WHY_LEAP : ROLE_WHY_STALE,
		    WIRE_NACK_PROTOCOL, gen, 1);
	/* One more than the highest generation there may be. */
	if (!in_range(m_gen))
		return refuse(ROLE_WHY_RANGE, WIRE_NACK_PROTOCOL, gen, 1);
	if (acked == 0 || m_cycle != acked || m_cycle != last_cycle)
		return refuse(ROLE_WHY_NOT_AFTER_ACK, WIRE_NACK_PROTOCOL, gen,
		    1);
	if (v->busy)
		return refuse(ROLE_WHY_BUSY, WIRE_NACK_BUSY, gen, 0);
	return decide(ROLE_PROMOTE, gen + 1);
}

struct role_decision
role_welcome(uint64_t gen, uint64_t w_gen, int adopt)
{
	if (!in_range(w_gen))
		return refuse(ROLE_WHY_RANGE, WIRE_NACK_PROTOCOL, gen, 1);
	if (w_gen < gen)
		return refuse(ROLE_WHY_BELOW, WIRE_NACK_PROTOCOL, gen, 1);
	if (w_gen == gen)
		return decide(ROLE_PROCEED, gen);
	if (adopt)
		return decide(ROLE_ADOPT, w_gen);
	/* A failover happened elsewhere: this host is a stale primary. */
	return refuse(ROLE_WHY_STALE, WIRE_NACK_FENCED, gen, 1);
}

struct role_decision
role_promoted(uint64_t gen, uint64_t p_gen)
{
	if (p_gen != gen + 1)
		return refuse(p_gen > gen + 1 ? ROLE_WHY_LEAP : ROLE_WHY_BELOW,
		    WIRE_NACK_PROTOCOL, gen, 1);
	if (!in_range(p_gen))
		return refuse(ROLE_WHY_RANGE, WIRE_NACK_PROTOCOL, gen, 1);
	return decide(ROLE_HANDED_OVER, p_gen);
}

struct role_decision
role_command(const struct role_view *v, enum role_cmd cmd,
    const char *identity, int accepted)
{
	uint64_t gen = v->generation;

	if (v->state == ROLE_NONE)
		return refuse(ROLE_WHY_NO_VM, 0, 0, 0);
	/* One role change at a time, whatever it would be. */
	if (v->busy)
		return refuse(ROLE_WHY_BUSY, 0, gen, 0);
	switch (cmd) {
	case ROLE_CMD_UNPLANNED:
		if (v->state == ROLE_PRIMARY)
			return refuse(ROLE_WHY_IS_PRIMARY, 0, gen, 0);
		if (v->state == ROLE_UNCOMMITTED)
			return decide(ROLE_REPICK, gen);
		if (gen >= ROLE_MAX_GENERATION)
			return refuse(ROLE_WHY_RANGE, 0, gen, 0);
		return decide(ROLE_PROMOTE, gen + 1);
	case ROLE_CMD_COMMIT:
		if (v->state != ROLE_UNCOMMITTED)
			return refuse(ROLE_WHY_NOTHING_TO_COMMIT, 0, gen, 0);
		return decide(ROLE_COMMIT, gen);
	case ROLE_CMD_PLANNED:
		if (v->state == ROLE_REPLICA)
			return refuse(ROLE_WHY_IS_REPLICA, 0, gen, 0);
		if (v->state == ROLE_UNCOMMITTED)
			return refuse(ROLE_WHY_UNCOMMITTED, 0, gen, 0);
		if (v->fenced)
			return refuse(ROLE_WHY_FENCED, 0, gen, 0);
		if (gen >= ROLE_MAX_GENERATION)
			return refuse(ROLE_WHY_RANGE, 0, gen, 0);
		return decide(ROLE_HANDOVER, gen + 1);
	case ROLE_CMD_REVERSE:
		if (v->state == ROLE_REPLICA)
			return refuse(ROLE_WHY_IS_REPLICA, 0, gen, 0);
		if (v->fenced)
			return refuse(ROLE_WHY_FENCED, 0, gen, 0);
		return decide(ROLE_REVERSE, gen);
	case ROLE_CMD_REASSIGN:
		if (v->state != ROLE_REPLICA)
			return refuse(ROLE_WHY_IS_PRIMARY, 0, gen, 0);
		if (!accepted)
			return refuse(ROLE_WHY_NOT_ACCEPTED, 0, gen, 0);
		if (gen >= ROLE_MAX_GENERATION)
			return refuse(ROLE_WHY_RANGE, 0, gen, 0);
		return decide(ROLE_REASSIGN, gen + 1);
	}
	return refuse(ROLE_WHY_NO_VM, 0, gen, 0);
}

enum role_start
role_startup(const struct cat_rel *rel, int vm_section)
{
	if (rel == NULL)
		return ROLE_START_NEW;
	if (rel->role == CAT_ROLE_REPLICA)
		return ROLE_START_REPLICA;
	if (rel->at_point != 0)
		return ROLE_START_UNCOMMITTED;
	if (vm_section)
		return ROLE_START_PRIMARY;
	if (rel->storage[0] != '\0')
		return ROLE_START_PRIMARY_CATALOG;
	return ROLE_START_NO_DISKS;
}

void
role_refusal(const struct role_view *v, const char *vm, const char *identity,
    uint64_t g, const struct role_decision *d, char *buf, size_t bufsz)
{
	const char *owner = v->owner[0] ? v->owner : "no host";
	uint64_t gen = v->generation;

	switch (d->why) {
	case ROLE_WHY_NOT_ACCEPTED:
		snprintf(buf, bufsz, "host %s may not replicate VM %s here (no "
		    "matching [accept] entry)", identity, vm);
		break;
	case ROLE_WHY_NOT_OWNER:
		if (v->state == ROLE_REPLICA)
			snprintf(buf, bufsz, "%s belongs to %s on this host: %s "
			    "may not write into it (on this host, replctl "
			    "reassign %s --host %s gives it to %s)", vm, owner,
			    identity, vm, identity, identity);
		else
			snprintf(buf, bufsz, "%s is primary here and replicates "
			    "to %s, not to %s: %s may not take it over", vm,
			    owner, identity, identity);
		break;
	case ROLE_WHY_RANGE:
		snprintf(buf, bufsz, "generation %" PRIu64 " for %s is out of "
		    "range", g, vm);
		break;
	case ROLE_WHY_STALE:
		snprintf(buf, bufsz, "generation %" PRIu64 " is below this "
		    "host's %" PRIu64 " for %s: %s has been failed over", g,
		    gen, vm, vm);
		break;
	case ROLE_WHY_LEAP:
		if (v->state == ROLE_REPLICA)
			snprintf(buf, bufsz, "generation %" PRIu64 " of %s "
			    "(from %s) is above this host's %" PRIu64 ", and no "
			    "failover here made it rise: refused (if %s failed "
			    "over elsewhere since and this copy is older, "
			    "replctl reassign %s --host %s on this host takes "
			    "it)", g, vm, identity, gen, vm, vm, identity);
		else
			snprintf(buf, bufsz, "generation %" PRIu64 " of %s "
			    "(from %s) is more than a failover above this "
			    "host's %" PRIu64 ": refused", g, vm, identity, gen);
		break;
	case ROLE_WHY_SAME_GEN:
		snprintf(buf, bufsz, "this host is the primary of %s at "
		    "generation %" PRIu64 "; %s claims the same generation: "
		    "refused", vm, gen, identity);
		break;
	case ROLE_WHY_UNCOMMITTED:
		snprintf(buf, bufsz, "this host is the primary of %s (failover "
		    "not committed)", vm);
		break;
	case ROLE_WHY_BUSY:
		snprintf(buf, bufsz, "%s is changing roles on this host", vm);
		break;
	default:
		snprintf(buf, bufsz, "%s: refused (%d)", vm, (int)d->why);
		break;
	}
}

/* --- what the decisions change --------------------------------------------- */

void
role_rel_create(struct cat_rel *rel, const char *vm, const char *identity,
    uint64_t generation, const char *storage)
{
	memset(rel, 0, sizeof(*rel));
	snprintf(rel->vm, sizeof(rel->vm), "%s", vm);
	rel->role = CAT_ROLE_REPLICA;
	rel->generation = generation;
	snprintf(rel->peer, sizeof(rel->peer), "%s", identity);
	snprintf(rel->storage, sizeof(rel->storage), "%s", storage);
}

void
role_rel_unplanned(struct cat_rel *rel)
{
	rel->role = CAT_ROLE_PRIMARY;
	rel->generation++;
	/* The old primary's identity: reverse goes to it by default. */
	snprintf(rel->peer_name, sizeof(rel->peer_name), "%.*s",
	    (int)sizeof(rel->peer_name) - 1, rel->peer);
	rel->peer[0] = '\0';
	rel->fenced[0] = '\0';
	rel->resync = 0;
	rel->reassigned = 0;
	rel->at_point = rel->last_point;
}

void
role_rel_promote_planned(struct cat_rel *rel, uint64_t generation,
    const char *listen, const char *old_primary)
{
	rel->role = CAT_ROLE_PRIMARY;
	rel->generation = generation;
	snprintf(rel->peer, sizeof(rel->peer), "%s", listen);
	snprintf(rel->peer_name, sizeof(rel->peer_name), "%s", old_primary);
	rel->resync = 0;
	rel->fenced[0] = '\0';
	rel->at_point = 0;
	rel->reassigned = 0;
}

void
role_rel_demote(struct cat_rel *rel, uint64_t generation, const char *identity,
    const char *storage, uint64_t last_cycle)
{
	rel->role = CAT_ROLE_REPLICA;
	rel->generation = generation;
	snprintf(rel->peer, sizeof(rel->peer), "%s", identity);
	rel->peer_name[0] = '\0';
	snprintf(rel->storage, sizeof(rel->storage), "%s", storage);
	rel->last_cycle = last_cycle;
	rel->last_point = 0;
	rel->last_point_created_ms = 0;
	rel->at_point = 0;
	rel->step_to = 0;
	rel->resync = 0;
	rel->fenced[0] = '\0';
	rel->reassigned = 0;
}

void
role_rel_reverse(struct cat_rel *rel, const char *to, const char *name)
{
	snprintf(rel->peer, sizeof(rel->peer), "%s", to);
	snprintf(rel->peer_name, sizeof(rel->peer_name), "%s", name);
	rel->resync = 1;
}

void
role_rel_reassign(struct cat_rel *rel, const char *identity)
{
	snprintf(rel->peer, sizeof(rel->peer), "%s", identity);
	rel->generation++;
	rel->reassigned = 1;
}

void
role_rel_adopt(struct cat_rel *rel, uint64_t generation)
{
	rel->generation = generation;
	rel->fenced[0] = '\0';
}
