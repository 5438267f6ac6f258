/*
 * test_role.c — the rules of roles, generations and failover (role.h),
 * written as tables: read them as the specification of failover.
 *
 * Each table lists rules, first match wins.  A test walks every
 * combination of its inputs (every relationship state, the owner or
 * another host, accepted or not, every kind of generation, busy or not),
 * finds the first rule that matches, and checks that role.c decides
 * exactly that; a combination no rule covers fails, and so does a rule
 * that no combination reaches (a rule that can never apply is a mistake
 * in the table).
 *
 * Then a model: three hosts, one VM, random sequences of honest events
 * (cycles, planned and unplanned failover, commit, reverse, a host lost
 * and back, a VM moved with reassign) and of hostile ones (a HELLO from
 * any host, at any generation, to any host that accepts it),
 * each carried out through role.c's decisions and role_rel_*().  After
 * every event: never two primaries at one generation, no generation goes
 * down or leaps, and nothing is written into a VM by a host it was not
 * given.  The operator is honest in two ways: an unplanned failover runs
 * on the replica the lost primary replicates to, at its generation, and
 * reverse runs on a primary that has no replica yet (failing over to a
 * copy the primary stopped sending to, or sending a primary that never
 * heard of a failover to a new replica, forks the VM's history whatever
 * the rules).  The seed is random and
 * printed; a failure prints the run's ROLE_SEED=N and its last events.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "catalog.h"
#include "role.h"
#include "wire.h"

#define G	5		/* this host's generation, where it has one */
#define OWNER	"host-a"	/* the identity the relationship belongs to */
#define OTHER	"host-b"	/* another host, with a valid certificate */

/* --- the dimensions ----------------------------------------------------------- */

enum st {			/* the relationship on this host */
	S_NONE,
	S_REPLICA,
	S_REASSIGNED,		/* a replica reassigned to OWNER */
	S_PRIMARY,
	S_FENCED,		/* a primary refused as a stale one */
	S_FRESH,		/* a primary no cycle ever left */
	S_UNCOMMITTED,		/* primary by an unplanned failover */
	S_COUNT
};
static const char *const st_name[] = { "none", "replica", "reassigned",
    "primary", "fenced", "fresh", "uncommitted" };

enum gk {			/* the generation a message carries */
	GK_ZERO,		/* 0 */
	GK_BELOW,		/* G - 1 */
	GK_EQUAL,		/* G */
	GK_NEXT,		/* G + 1 */
	GK_LEAP,		/* G + 2 */
	GK_FAR,			/* ROLE_MAX_GENERATION */
	GK_OVER,		/* ROLE_MAX_GENERATION + 1 */
	GK_COUNT
};
static const char *const gk_name[] = { "0", "G-1", "G", "G+1", "G+2",
    "2^62", "2^62+1" };
static const uint64_t gk_value[] = { 0, G - 1, G, G + 1, G + 2,
    ROLE_MAX_GENERATION, ROLE_MAX_GENERATION + 1 };

#define BIT(x)		(1u << (x))
#define ALL		0xffffu
/* states */
#define NONE		BIT(S_NONE)
#define REPLICA		BIT(S_REPLICA)
#define REASSIGNED	BIT(S_REASSIGNED)
#define PRIMARY		(BIT(S_PRIMARY) | BIT(S_FENCED) | BIT(S_FRESH))
#define FENCED		BIT(S_FENCED)
#define FRESH		BIT(S_FRESH)
#define UNCOMMITTED	BIT(S_UNCOMMITTED)
#define SOME		(ALL & ~NONE)
/* who sends */
#define IS_OWNER	BIT(0)
#define IS_OTHER	BIT(1)
/* generations */
#define ZERO		BIT(GK_ZERO)
#define BELOW		BIT(GK_BELOW)
#define EQUAL		BIT(GK_EQUAL)
#define NEXT		BIT(GK_NEXT)
#define LEAP		(BIT(GK_LEAP) | BIT(GK_FAR))
#define OUT		(BIT(GK_ZERO) | BIT(GK_OVER))
#define ABOVE		(NEXT | LEAP)
/* flags */
#define YES		BIT(1)
#define NO		BIT(0)

static void
view_of(enum st s, int busy, struct role_view *v)
{
	memset(v, 0, sizeof(*v));
	v->state = s == S_NONE ? ROLE_NONE : s == S_REPLICA ||
	    s == S_REASSIGNED ? ROLE_REPLICA : s == S_UNCOMMITTED ?
	    ROLE_UNCOMMITTED : ROLE_PRIMARY;
	v->generation = s == S_NONE ? 0 : G;
	if (s != S_NONE)
		snprintf(v->owner, sizeof(v->owner), "%s", OWNER);
	v->reassigned = s == S_REASSIGNED;
	v->fenced = s == S_FENCED;
	v->fresh = s == S_FRESH;
	v->busy = busy;
}

#define DECIDED(v)	(v), 0, ROLE_WHY_NONE
#define REFUSED(n, w)	ROLE_REFUSE, WIRE_NACK_##n, ROLE_WHY_##w
#define AS_SENT		1	/* the sender's generation */
#define AS_HERE		2	/* this host's */
#define AS_NEXT		3	/* this host's + 1 */

/* --- HELLO ------------------------------------------------------------------ */

/* A HELLO for a VM reaches this host. */
static const struct hello_rule {
	unsigned	 accepted, states, who, gens, busy;
	enum role_verdict verdict;
	uint16_t	 nack;
	enum role_why	 why;
	int		 gen_is;	/* AS_SENT, AS_HERE (or 0: unchecked) */
} hello_rules[] = {
/*   accepted here         who       generation  busy  => decision */
	/* Only hosts an [accept] entry admits for the VM. */
	{ NO,  ALL,         ALL,      ALL,        ALL,  REFUSED(DENIED, NOT_ACCEPTED), 0 },
	/* Any admitted host may make a new relationship: it owns it. */
	{ YES, NONE,        ALL,      OUT,        ALL,  REFUSED(PROTOCOL, RANGE), 0 },
	{ YES, NONE,        ALL,      ALL,        ALL,  DECIDED(ROLE_CREATE), AS_SENT },
	/* Another host may not write into, fence or take over a VM that
	 * belongs to someone else, whatever generation it claims. */
	{ YES, SOME,        IS_OTHER, ALL,        ALL,  REFUSED(DENIED, NOT_OWNER), 0 },
	{ YES, SOME,        IS_OWNER, OUT,        ALL,  REFUSED(PROTOCOL, RANGE), 0 },
	/* Replica: the owner at this host's generation, no other. */
	{ YES, REPLICA,     IS_OWNER, BELOW,      ALL,  REFUSED(FENCED, STALE), 0 },
	{ YES, REPLICA,     IS_OWNER, ABOVE,      ALL,  REFUSED(PROTOCOL, LEAP), 0 },
	{ YES, REPLICA,     IS_OWNER, EQUAL,      YES,  REFUSED(BUSY, BUSY), 0 },
	{ YES, REPLICA,     IS_OWNER, EQUAL,      NO,   DECIDED(ROLE_WELCOME), AS_HERE },
	/* Reassigned by the operator: the new owner compares the disks
	 * first (ADOPT); below this generation it is told to take it, above
	 * (its failovers went on elsewhere) it brings its own. */
	{ YES, REASSIGNED,  IS_OWNER, ALL,        YES,  REFUSED(BUSY, BUSY), 0 },
	{ YES, REASSIGNED,  IS_OWNER, ABOVE,      NO,   DECIDED(ROLE_WELCOME_ADOPT), AS_SENT },
	{ YES, REASSIGNED,  IS_OWNER, ALL,        NO,   DECIDED(ROLE_WELCOME_ADOPT), AS_HERE },
	/* Primary: its replica may take it over one generation up (a
	 * failover there), never at its own or a leap above. */
	{ YES, PRIMARY,     IS_OWNER, BELOW,      ALL,  REFUSED(FENCED, STALE), 0 },
	{ YES, PRIMARY,     IS_OWNER, EQUAL,      ALL,  REFUSED(DENIED, SAME_GEN), 0 },
	/* (a primary no cycle ever left has no history to cut short: its
	 * replica may take it over from any generation above) */
	{ YES, FRESH,       IS_OWNER, LEAP,       YES,  REFUSED(BUSY, BUSY), 0 },
	{ YES, FRESH,       IS_OWNER, LEAP,       NO,   DECIDED(ROLE_DEMOTE), AS_SENT },
	{ YES, PRIMARY,     IS_OWNER, LEAP,       ALL,  REFUSED(PROTOCOL, LEAP), 0 },
	{ YES, PRIMARY,     IS_OWNER, NEXT,       YES,  REFUSED(BUSY, BUSY), 0 },
	{ YES, PRIMARY,     IS_OWNER, NEXT,       NO,   DECIDED(ROLE_DEMOTE), AS_SENT },
	/* Primary by a failover not committed: the old primary is fenced,
	 * nobody takes it over before the commit. */
	{ YES, UNCOMMITTED, IS_OWNER, BELOW,      ALL,  REFUSED(FENCED, STALE), 0 },
	{ YES, UNCOMMITTED, IS_OWNER, ABOVE,      ALL,  REFUSED(PROTOCOL, LEAP), 0 },
	{ YES, UNCOMMITTED, IS_OWNER, EQUAL,      ALL,  REFUSED(DENIED, UNCOMMITTED), 0 },
};
#define NHELLO	(sizeof(hello_rules) / sizeof(hello_rules[0]))

static void
test_hello_table(void **state)
{
	unsigned used[NHELLO] = { 0 };
	int combos = 0;

	for (int acc = 0; acc < 2; acc++)
	for (int s = 0; s < S_COUNT; s++)
	for (int who = 0; who < 2; who++)
	for (int gk = 0; gk < GK_COUNT; gk++)
	for (int busy = 0; busy < 2; busy++) {
		struct role_view v;
		const char *id = who == 0 ? OWNER : OTHER;
		char what[160];
		size_t k;

		view_of((enum st)s, busy, &v);
		snprintf(what, sizeof(what), "HELLO %s, %s, from %s at %s%s",
		    acc ? "accepted" : "not accepted", st_name[s],
		    who == 0 ? "the owner" : "another host", gk_name[gk],
		    busy ? ", busy" : "");
		for (k = 0; k < NHELLO; k++) {
			const struct hello_rule *r = &hello_rules[k];
			if ((r->accepted & BIT(acc)) && (r->states & BIT(s)) &&
			    (r->who & BIT(who)) && (r->gens & BIT(gk)) &&
			    (r->busy & BIT(busy)))
				break;
		}
		if (k == NHELLO)
			fail_msg("no rule for %s", what);
		const struct hello_rule *r = &hello_rules[k];
		struct role_decision d = role_hello(&v, id, gk_value[gk], acc);
		if (d.verdict != r->verdict || (r->verdict == ROLE_REFUSE &&
		    (d.nack != r->nack || d.why != r->why)))
			fail_msg("%s: rule %zu says verdict %d nack %u why %d, "
			    "role.c verdict %d nack %u why %d", what, k,
			    r->verdict, r->nack, r->why, d.verdict, d.nack,
			    d.why);
		if (r->gen_is == AS_SENT && d.generation != gk_value[gk])
			fail_msg("%s: generation %" PRIu64, what, d.generation);
		if (r->gen_is == AS_HERE && d.generation != G)
			fail_msg("%s: generation %" PRIu64, what, d.generation);
		/* A refusal of another host is always worth a warning. */
		if (d.verdict == ROLE_REFUSE && who == 1 && !d.warn)
			fail_msg("%s: refused without a warning", what);
		used[k]++;
		combos++;
	}
	for (size_t k = 0; k < NHELLO; k++)
		if (used[k] == 0)
			fail_msg("HELLO rule %zu applies to nothing", k);
	assert_int_equal(combos, 2 * S_COUNT * 2 * GK_COUNT * 2);
}

/* --- PROMOTE ---------------------------------------------------------------- */

enum pk {			/* how the PROMOTE stands to the session */
	PK_RIGHT,		/* right after the ACK of the newest cycle */
	PK_NO_CYCLE,		/* nothing was acknowledged in the session */
	PK_OLD_CYCLE,		/* names a cycle before the newest */
	PK_OTHER_GEN,		/* the session was at another generation */
	PK_COUNT
};
static const char *const pk_name[] = { "after the ACK", "before any ACK",
    "for an older cycle", "in a session at another generation" };

/* A PROMOTE (planned failover) in a session the owner opened. */
static const struct promote_rule {
	unsigned	 states, how, gens, busy;
	enum role_verdict verdict;
	uint16_t	 nack;
	enum role_why	 why;
	int		 gen_is;
} promote_rules[] = {
/*   here               session          new generation  busy  => decision */
	{ ~(REPLICA | REASSIGNED) & ALL, ALL, ALL,   ALL,  REFUSED(PROTOCOL, NOT_AFTER_ACK), 0 },
	{ REPLICA | REASSIGNED, BIT(PK_OTHER_GEN), ALL, ALL, REFUSED(PROTOCOL, NOT_AFTER_ACK), 0 },
	/* Exactly one generation up. */
	{ REPLICA | REASSIGNED, ALL,     LEAP | BIT(GK_OVER), ALL, REFUSED(PROTOCOL, LEAP), 0 },
	{ REPLICA | REASSIGNED, ALL,     ~NEXT & ALL,    ALL,  REFUSED(PROTOCOL, STALE), 0 },
	/* Only right after this session's ACK of the newest cycle. */
	{ REPLICA | REASSIGNED, ~BIT(PK_RIGHT) & ALL, NEXT, ALL, REFUSED(PROTOCOL, NOT_AFTER_ACK), 0 },
	{ REPLICA | REASSIGNED, BIT(PK_RIGHT), NEXT,  YES,  REFUSED(BUSY, BUSY), 0 },
	{ REPLICA | REASSIGNED, BIT(PK_RIGHT), NEXT,  NO,   DECIDED(ROLE_PROMOTE), AS_NEXT },
};
#define NPROMOTE	(sizeof(promote_rules) / sizeof(promote_rules[0]))

static void
test_promote_table(void **state)
{
	unsigned used[NPROMOTE] = { 0 };

	for (int s = 0; s < S_COUNT; s++)
	for (int pk = 0; pk < PK_COUNT; pk++)
	for (int gk = 0; gk < GK_COUNT; gk++)
	for (int busy = 0; busy < 2; busy++) {
		struct role_view v;
		uint64_t last = 7, acked = 7, m_cycle = 7, session = G;
		char what[160];
		size_t k;

		view_of((enum st)s, busy, &v);
		if (pk == PK_NO_CYCLE)
			acked = m_cycle = 0;
		else if (pk == PK_OLD_CYCLE)
			acked = m_cycle = 6;
		else if (pk == PK_OTHER_GEN)
			session = G - 1;
		snprintf(what, sizeof(what), "PROMOTE to %s %s, to %s%s",
		    st_name[s], pk_name[pk], gk_name[gk], busy ? ", busy" : "");
		for (k = 0; k < NPROMOTE; k++) {
			const struct promote_rule *r = &promote_rules[k];
			if ((r->states & BIT(s)) && (r->how & BIT(pk)) &&
			    (r->gens & BIT(gk)) && (r->busy & BIT(busy)))
				break;
		}
		if (k == NPROMOTE)
			fail_msg("no rule for %s", what);
		const struct promote_rule *r = &promote_rules[k];
		struct role_decision d = role_promote(&v, session, acked, last,
		    m_cycle, gk_value[gk]);
		if (d.verdict != r->verdict || (r->verdict == ROLE_REFUSE &&
		    (d.nack != r->nack || d.why != r->why)))
			fail_msg("%s: rule %zu says %d/%u/%d, role.c %d/%u/%d",
			    what, k, r->verdict, r->nack, r->why, d.verdict,
			    d.nack, d.why);
		if (r->gen_is == AS_NEXT && d.generation != G + 1)
			fail_msg("%s: generation %" PRIu64, what, d.generation);
		used[k]++;
	}
	for (size_t k = 0; k < NPROMOTE; k++)
		if (used[k] == 0)
			fail_msg("PROMOTE rule %zu applies to nothing", k);
}

/* --- the primary's side: WELCOME and PROMOTED -------------------------------- */

/* A primary at G hears WELCOME at a generation, with the flag that
 * tells it to take that generation (a reassignment) or without. */
static const struct welcome_rule {
	unsigned	 gens, adopt;
	enum role_verdict verdict;
	enum role_why	 why;
} welcome_rules[] = {
/*   replica's generation  adopt => decision */
	{ OUT,                ALL,  ROLE_REFUSE, ROLE_WHY_RANGE },
	/* A replica never answers below the generation it welcomes. */
	{ BELOW,              ALL,  ROLE_REFUSE, ROLE_WHY_BELOW },
	{ EQUAL,              ALL,  ROLE_PROCEED, ROLE_WHY_NONE },
	/* Above: a failover happened elsewhere (fenced), unless the
	 * replica's operator gave the VM to this host. */
	{ ABOVE,              YES,  ROLE_ADOPT, ROLE_WHY_NONE },
	{ ABOVE,              NO,   ROLE_REFUSE, ROLE_WHY_STALE },
};
#define NWELCOME	(sizeof(welcome_rules) / sizeof(welcome_rules[0]))

static void
test_welcome_table(void **state)
{
	unsigned used[NWELCOME] = { 0 };

	for (int gk = 0; gk < GK_COUNT; gk++)
	for (int adopt = 0; adopt < 2; adopt++) {
		size_t k;
		for (k = 0; k < NWELCOME; k++)
			if ((welcome_rules[k].gens & BIT(gk)) &&
			    (welcome_rules[k].adopt & BIT(adopt)))
				break;
		if (k == NWELCOME)
			fail_msg("no rule for WELCOME at %s", gk_name[gk]);
		struct role_decision d = role_welcome(G, gk_value[gk], adopt);
		if (d.verdict != welcome_rules[k].verdict ||
		    d.why != welcome_rules[k].why)
			fail_msg("WELCOME at %s%s: rule %zu says %d/%d, role.c "
			    "%d/%d", gk_name[gk], adopt ? " (adopt)" : "", k,
			    welcome_rules[k].verdict, welcome_rules[k].why,
			    d.verdict, d.why);
		if (d.verdict == ROLE_ADOPT && d.generation != gk_value[gk])
			fail_msg("adopted %" PRIu64, d.generation);
		if (d.verdict == ROLE_REFUSE && d.why == ROLE_WHY_STALE &&
		    d.nack != WIRE_NACK_FENCED)
			fail_msg("a stale primary is not told it is fenced");
		used[k]++;
	}
	for (size_t k = 0; k < NWELCOME; k++)
		if (used[k] == 0)
			fail_msg("WELCOME rule %zu applies to nothing", k);
	/* PROMOTED: the replica took over exactly one generation up. */
	for (int gk = 0; gk < GK_COUNT; gk++) {
		struct role_decision d = role_promoted(G, gk_value[gk]);
		if ((d.verdict == ROLE_HANDED_OVER) != (gk == GK_NEXT))
			fail_msg("PROMOTED at %s: verdict %d", gk_name[gk],
			    d.verdict);
	}
}

/* --- the operator's commands ------------------------------------------------- */

enum rk {			/* reassign: the new sending host */
	RK_NEW,			/* another host, accepted */
	RK_NOT_ACCEPTED,	/* no [accept] entry for it with the storage */
	RK_SAME,		/* the host the VM belongs to already */
	RK_COUNT
};

static const struct cmd_rule {
	unsigned	 cmds, states, busy, target;
	enum role_verdict verdict;
	enum role_why	 why;
	int		 gen_is;
} cmd_rules[] = {
#define C(x)		BIT(ROLE_CMD_##x)
/*   command            here           busy target         => decision */
	{ ALL,            NONE,          ALL, ALL,            ROLE_REFUSE, ROLE_WHY_NO_VM, 0 },
	/* One role change at a time. */
	{ ALL,            SOME,          YES, ALL,            ROLE_REFUSE, ROLE_WHY_BUSY, 0 },
	/* Unplanned failover: on the replica; again, on its primary,
	 * until the commit (another point). */
	{ C(UNPLANNED),   PRIMARY,       NO,  ALL,            ROLE_REFUSE, ROLE_WHY_IS_PRIMARY, 0 },
	{ C(UNPLANNED),   UNCOMMITTED,   NO,  ALL,            ROLE_REPICK, ROLE_WHY_NONE, AS_HERE },
	{ C(UNPLANNED),   REPLICA | REASSIGNED, NO, ALL,      ROLE_PROMOTE, ROLE_WHY_NONE, AS_NEXT },
	{ C(COMMIT),      UNCOMMITTED,   NO,  ALL,            ROLE_COMMIT, ROLE_WHY_NONE, AS_HERE },
	{ C(COMMIT),      ALL,           NO,  ALL,            ROLE_REFUSE, ROLE_WHY_NOTHING_TO_COMMIT, 0 },
	/* Planned failover: on a committed primary that is not fenced. */
	{ C(PLANNED),     REPLICA | REASSIGNED, NO, ALL,      ROLE_REFUSE, ROLE_WHY_IS_REPLICA, 0 },
	{ C(PLANNED),     UNCOMMITTED,   NO,  ALL,            ROLE_REFUSE, ROLE_WHY_UNCOMMITTED, 0 },
	{ C(PLANNED),     FENCED,        NO,  ALL,            ROLE_REFUSE, ROLE_WHY_FENCED, 0 },
	{ C(PLANNED),     PRIMARY,       NO,  ALL,            ROLE_HANDOVER, ROLE_WHY_NONE, AS_NEXT },
	/* Reverse: on a primary, committed or not, that is not stale. */
	{ C(REVERSE),     REPLICA | REASSIGNED, NO, ALL,      ROLE_REFUSE, ROLE_WHY_IS_REPLICA, 0 },
	{ C(REVERSE),     FENCED,        NO,  ALL,            ROLE_REFUSE, ROLE_WHY_FENCED, 0 },
	{ C(REVERSE),     PRIMARY | UNCOMMITTED, NO, ALL,     ROLE_REVERSE, ROLE_WHY_NONE, AS_HERE },
	/* Reassign: on a replica, to another host an [accept] entry admits
	 * with the storage the VM is in; one generation up. */
	{ C(REASSIGN),    PRIMARY | UNCOMMITTED, NO, ALL,     ROLE_REFUSE, ROLE_WHY_IS_PRIMARY, 0 },
	{ C(REASSIGN),    ALL,           NO,  BIT(RK_NOT_ACCEPTED), ROLE_REFUSE, ROLE_WHY_NOT_ACCEPTED, 0 },
	/* (to the host it belongs to already: it takes that host's
	 * generation again, as after a failover elsewhere) */
	{ C(REASSIGN),    ALL,           NO,  ALL,            ROLE_REASSIGN, ROLE_WHY_NONE, AS_NEXT },
#undef C
};
#define NCMD	(sizeof(cmd_rules) / sizeof(cmd_rules[0]))

static void
test_command_table(void **state)
{
	unsigned used[NCMD] = { 0 };

	for (int cmd = ROLE_CMD_UNPLANNED; cmd <= ROLE_CMD_REASSIGN; cmd++)
	for (int s = 0; s < S_COUNT; s++)
	for (int busy = 0; busy < 2; busy++)
	for (int rk = 0; rk < RK_COUNT; rk++) {
		struct role_view v;
		size_t k;

		view_of((enum st)s, busy, &v);
		for (k = 0; k < NCMD; k++) {
			const struct cmd_rule *r = &cmd_rules[k];
			if ((r->cmds & BIT(cmd)) && (r->states & BIT(s)) &&
			    (r->busy & BIT(busy)) && (r->target & BIT(rk)))
				break;
		}
		if (k == NCMD)
			fail_msg("no rule for command %d on %s%s (%d)", cmd,
			    st_name[s], busy ? ", busy" : "", rk);
		struct role_decision d = role_command(&v, (enum role_cmd)cmd,
		    rk == RK_SAME ? "HOST-A" : OTHER, rk != RK_NOT_ACCEPTED);
		if (d.verdict != cmd_rules[k].verdict ||
		    d.why != cmd_rules[k].why)
			fail_msg("command %d on %s%s (%d): rule %zu says %d/%d, "
			    "role.c %d/%d", cmd, st_name[s], busy ? ", busy" :
			    "", rk, k, cmd_rules[k].verdict, cmd_rules[k].why,
			    d.verdict, d.why);
		if ((cmd_rules[k].gen_is == AS_NEXT && d.generation != G + 1) ||
		    (cmd_rules[k].gen_is == AS_HERE && d.generation != G))
			fail_msg("command %d on %s: generation %" PRIu64, cmd,
			    st_name[s], d.generation);
		used[k]++;
	}
	for (size_t k = 0; k < NCMD; k++)
		if (used[k] == 0)
			fail_msg("command rule %zu applies to nothing", k);
}

/* --- start-up ---------------------------------------------------------------- */

/*
 * At the highest generation nothing may make one more: a failover, a
 * PROMOTE or a PROMOTED there would give a generation every host refuses
 * (found by tests/fuzz/fuzz_role.c: a relationship a HELLO created at
 * ROLE_MAX_GENERATION, then an unplanned failover).
 */
static void
test_generation_ceiling(void **state)
{
	struct role_view v = { .state = ROLE_REPLICA, .owner = "h1",
	    .generation = ROLE_MAX_GENERATION };
	struct role_decision d;

	d = role_command(&v, ROLE_CMD_UNPLANNED, "h1", 1);
	assert_int_equal(d.verdict, ROLE_REFUSE);
	assert_int_equal(d.why, ROLE_WHY_RANGE);
	d = role_promote(&v, ROLE_MAX_GENERATION, 7, 7, 7,
	    ROLE_MAX_GENERATION + 1);
	assert_int_equal(d.verdict, ROLE_REFUSE);
	assert_int_equal(d.why, ROLE_WHY_RANGE);
	v.state = ROLE_PRIMARY;
	d = role_command(&v, ROLE_CMD_PLANNED, "h1", 1);
	assert_int_equal(d.verdict, ROLE_REFUSE);
	assert_int_equal(d.why, ROLE_WHY_RANGE);
	d = role_promoted(ROLE_MAX_GENERATION, ROLE_MAX_GENERATION + 1);
	assert_int_equal(d.verdict, ROLE_REFUSE);
	assert_int_equal(d.why, ROLE_WHY_RANGE);
	/* One below, each still makes one more. */
	v.generation = ROLE_MAX_GENERATION - 1;
	d = role_command(&v, ROLE_CMD_PLANNED, "h1", 1);
	assert_int_equal(d.verdict, ROLE_HANDOVER);
	assert_true(d.generation == ROLE_MAX_GENERATION);
	d = role_promoted(ROLE_MAX_GENERATION - 1, ROLE_MAX_GENERATION);
	assert_int_equal(d.verdict, ROLE_HANDED_OVER);
	v.state = ROLE_REPLICA;
	d = role_command(&v, ROLE_CMD_UNPLANNED, "h1", 1);
	assert_int_equal(d.verdict, ROLE_PROMOTE);
	assert_true(d.generation == ROLE_MAX_GENERATION);
}

static void
test_startup(void **state)
{
	static const struct {
		int		 has;		/* a relationship */
		enum cat_role	 role;
		int		 uncommitted, vm_section, storage;
		enum role_start	 want;
	} rows[] = {
	/*  rel  role               uncommitted [vm] storage => bring up as */
		{ 0, 0,                 0, 1, 0, ROLE_START_NEW },
		{ 1, CAT_ROLE_REPLICA,  0, 0, 1, ROLE_START_REPLICA },
		/* a former primary receiving into its [vm]'s files */
		{ 1, CAT_ROLE_REPLICA,  0, 1, 1, ROLE_START_REPLICA },
		{ 1, CAT_ROLE_PRIMARY,  1, 0, 1, ROLE_START_UNCOMMITTED },
		{ 1, CAT_ROLE_PRIMARY,  1, 1, 1, ROLE_START_UNCOMMITTED },
		{ 1, CAT_ROLE_PRIMARY,  0, 1, 0, ROLE_START_PRIMARY },
		{ 1, CAT_ROLE_PRIMARY,  0, 1, 1, ROLE_START_PRIMARY },
		{ 1, CAT_ROLE_PRIMARY,  0, 0, 1, ROLE_START_PRIMARY_CATALOG },
		/* its [vm] section was removed: nothing names its disks */
		{ 1, CAT_ROLE_PRIMARY,  0, 0, 0, ROLE_START_NO_DISKS },
	};
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct cat_rel rel;
		memset(&rel, 0, sizeof(rel));
		snprintf(rel.vm, sizeof(rel.vm), "web01");
		rel.role = rows[i].role;
		rel.generation = G;
		rel.last_point = 3;
		rel.at_point = rows[i].uncommitted ? 2 : 0;
		if (rows[i].storage)
			snprintf(rel.storage, sizeof(rel.storage), "/srv/r");
		assert_int_equal(role_startup(rows[i].has ? &rel : NULL,
		    rows[i].vm_section), rows[i].want);
	}
}

/* --- owners, views, refusals and what decisions change ---------------------- */

static void
test_owner_and_view(void **state)
{
	struct cat_rel rel;
	struct role_view v;
	char who[HOST_MAX_LEN + 1];

	memset(&rel, 0, sizeof(rel));
	rel.role = CAT_ROLE_REPLICA;
	rel.generation = 3;
	snprintf(rel.peer, sizeof(rel.peer), "host-a");
	role_owner(&rel, who, sizeof(who));
	assert_string_equal(who, "host-a");
	/* A primary belongs to its replica: peer_name, else peer's host. */
	rel.role = CAT_ROLE_PRIMARY;
	snprintf(rel.peer, sizeof(rel.peer), "backup.example.com:7000");
	role_owner(&rel, who, sizeof(who));
	assert_string_equal(who, "backup.example.com");
	snprintf(rel.peer_name, sizeof(rel.peer_name), "replica-1");
	role_owner(&rel, who, sizeof(who));
	assert_string_equal(who, "replica-1");
	rel.peer[0] = rel.peer_name[0] = '\0';
	role_owner(&rel, who, sizeof(who));
	assert_string_equal(who, "");
	/* Nobody is the owner of a relationship that records none. */
	role_view_of(&rel, &v);
	assert_false(role_same_identity("", v.owner));
	assert_int_equal(role_hello(&v, "", 4, 1).why, ROLE_WHY_NOT_OWNER);
	/* Identities compare without case. */
	assert_true(role_same_identity("Host-A", "host-a"));
	assert_false(role_same_identity("host-a", "host-a2"));
	assert_false(role_same_identity(NULL, "host-a"));
	rel.at_point = 0;
	snprintf(rel.fenced, sizeof(rel.fenced), "stale");
	role_view_of(&rel, &v);
	assert_int_equal(v.state, ROLE_PRIMARY);
	assert_true(v.fenced);
	role_view_of(NULL, &v);
	assert_int_equal(v.state, ROLE_NONE);
}

static void
test_refusal_words(void **state)
{
	struct role_view v;
	char buf[512];

	/* Another host: the warning names the VM, the owner and the sender. */
	view_of(S_REPLICA, 0, &v);
	struct role_decision d = role_hello(&v, OTHER, G, 1);
	role_refusal(&v, "web01", OTHER, G, &d, buf, sizeof(buf));
	assert_non_null(strstr(buf, "web01"));
	assert_non_null(strstr(buf, OWNER));
	assert_non_null(strstr(buf, OTHER));
	assert_non_null(strstr(buf, "replctl reassign web01 --host " OTHER));
	view_of(S_PRIMARY, 0, &v);
	d = role_hello(&v, OTHER, G + 1, 1);
	role_refusal(&v, "web01", OTHER, G + 1, &d, buf, sizeof(buf));
	assert_non_null(strstr(buf, "may not take it over"));
	assert_non_null(strstr(buf, OWNER));
	assert_non_null(strstr(buf, OTHER));
	/* A leap says the generations. */
	view_of(S_REPLICA, 0, &v);
	d = role_hello(&v, OWNER, G + 2, 1);
	role_refusal(&v, "web01", OWNER, G + 2, &d, buf, sizeof(buf));
	assert_non_null(strstr(buf, "7"));
	assert_non_null(strstr(buf, "5"));
	d = role_hello(&v, OTHER, G, 0);
	role_refusal(&v, "web01", OTHER, G, &d, buf, sizeof(buf));
	assert_non_null(strstr(buf, "no matching [accept] entry"));
}

static void
test_transitions(void **state)
{
	struct cat_rel rel;

	role_rel_create(&rel, "web01", "host-a", 4, "/srv/r");
	assert_int_equal(rel.role, CAT_ROLE_REPLICA);
	assert_int_equal(rel.generation, 4);
	assert_string_equal(rel.peer, "host-a");
	assert_string_equal(rel.storage, "/srv/r");
	rel.last_point = 9;
	rel.last_cycle = 12;
	/* Unplanned: one up, uncommitted at the newest point; the old
	 * primary is the one reverse goes back to. */
	role_rel_unplanned(&rel);
	assert_int_equal(rel.role, CAT_ROLE_PRIMARY);
	assert_int_equal(rel.generation, 5);
	assert_int_equal(rel.at_point, 9);
	assert_string_equal(rel.peer_name, "host-a");
	assert_string_equal(rel.peer, "");
	role_rel_reverse(&rel, "10.0.0.1:7000", "host-a");
	assert_string_equal(rel.peer, "10.0.0.1:7000");
	assert_int_equal(rel.resync, 1);
	/* Demoted by host-b one up: a new history, no tracker trust. */
	rel.at_point = 0;
	snprintf(rel.fenced, sizeof(rel.fenced), "x");
	role_rel_demote(&rel, 6, "host-b", "/srv/s", 0);
	assert_int_equal(rel.role, CAT_ROLE_REPLICA);
	assert_int_equal(rel.generation, 6);
	assert_string_equal(rel.peer, "host-b");
	assert_string_equal(rel.peer_name, "");
	assert_string_equal(rel.storage, "/srv/s");
	assert_int_equal(rel.last_point, 0);
	assert_int_equal(rel.last_cycle, 0);
	assert_string_equal(rel.fenced, "");
	/* Reassigned: one up, to be taken by the new sender. */
	role_rel_reassign(&rel, "host-c");
	assert_int_equal(rel.generation, 7);
	assert_string_equal(rel.peer, "host-c");
	assert_true(rel.reassigned);
	/* Planned failover on this replica. */
	role_rel_promote_planned(&rel, 8, "10.0.0.3:7000", "host-c");
	assert_int_equal(rel.role, CAT_ROLE_PRIMARY);
	assert_int_equal(rel.generation, 8);
	assert_string_equal(rel.peer_name, "host-c");
	assert_false(rel.reassigned);
	role_rel_adopt(&rel, 11);
	assert_int_equal(rel.generation, 11);
}

/* --- the model ---------------------------------------------------------------- */

#define NH	3

struct host {
	int		 has;		/* a relationship for the VM */
	struct cat_rel	 rel;
	int		 lost;		/* down (honest actions skip it) */
	int		 fresh;		/* primary by configuration only */
	int		 grant;		/* model: who may write its replica */
	uint64_t	 last_gen;	/* for "no generation goes down" */
};

#define TRAIL	40

struct model {
	struct host	 h[NH];
	unsigned	 rng;
	unsigned	 seed;		/* of this run */
	int		 writes, demotions, promotions, adoptions, refusals;
	char		 trail[TRAIL][200];	/* the last events */
	int		 steps;
};

static struct model *current;

/* A model failure: the run's seed and the events that led to it. */
#define model_fail(...) do { \
	if (current != NULL) { \
		fprintf(stderr, "model run with ROLE_SEED=%u, last events:\n", \
		    current->seed); \
		for (int i_ = current->steps > TRAIL ? current->steps - TRAIL : \
		    0; i_ < current->steps; i_++) \
			fprintf(stderr, "  %4d %s\n", i_, \
			    current->trail[i_ % TRAIL]); \
	} \
	fail_msg(__VA_ARGS__); \
} while (0)

static const char *const idn[NH] = { "h0", "h1", "h2" };

static unsigned
rnd(struct model *m, unsigned n)
{
	m->rng = m->rng * 1103515245u + 12345u;
	return (m->rng >> 16) % n;
}

static int
host_of(const char *id)
{
	for (int i = 0; i < NH; i++)
		if (role_same_identity(id, idn[i]))
			return i;
	return -1;
}

static enum role_state
state_of(const struct host *x)
{
	struct role_view v;
	role_view_of(x->has ? &x->rel : NULL, &v);
	return v.state;
}

static int
is_primary(const struct host *x)
{
	enum role_state s = state_of(x);
	return s == ROLE_PRIMARY || s == ROLE_UNCOMMITTED;
}

/* The host a primary replicates to (its owner), -1 if none. */
static int
target_of(const struct host *x)
{
	char who[HOST_MAX_LEN + 1];
	if (!x->has || x->rel.role != CAT_ROLE_PRIMARY)
		return -1;
	role_owner(&x->rel, who, sizeof(who));
	return host_of(who);
}

static void
set_target(struct host *x, int t)
{
	snprintf(x->rel.peer, sizeof(x->rel.peer), "%s:7000", idn[t]);
	snprintf(x->rel.peer_name, sizeof(x->rel.peer_name), "%s", idn[t]);
}

static void
check_invariants(struct model *m, const char *event)
{
	for (int i = 0; i < NH; i++) {
		struct host *x = &m->h[i];
		if (!x->has)
			continue;
		/* No generation goes down. */
		if (x->rel.generation < x->last_gen)
			model_fail("after %s: %s went from generation %" PRIu64
			    " down to %" PRIu64, event, idn[i], x->last_gen,
			    x->rel.generation);
		x->last_gen = x->rel.generation;
		/* Never two primaries at one generation. */
		for (int j = i + 1; j < NH; j++) {
			struct host *y = &m->h[j];
			if (y->has && is_primary(x) && is_primary(y) &&
			    !x->fresh && !y->fresh &&
			    x->rel.generation == y->rel.generation)
				model_fail("after %s: %s and %s are both primary at "
				    "generation %" PRIu64, event, idn[i], idn[j],
				    x->rel.generation);
		}
	}
}

/* A cycle from s is applied on t at generation g. */
static void
model_write(struct model *m, int s, int t, uint64_t g, const char *event)
{
	struct host *x = &m->h[t];
	if (m->h[t].grant != s)
		model_fail("%s: %s wrote into %s, which was given to %s", event,
		    idn[s], idn[t], m->h[t].grant < 0 ? "nobody" :
		    idn[m->h[t].grant]);
	/* The replica's check of CYCLE (replica.c, stage_cycle). */
	if (g != x->rel.generation && !(x->rel.reassigned &&
	    g > x->rel.generation))
		model_fail("%s: a cycle at %" PRIu64 " applied at %" PRIu64,
		    event, g, x->rel.generation);
	if (g > x->rel.generation)
		x->rel.generation = g;	/* cat_point_commit() */
	x->rel.last_cycle++;
	x->rel.last_point++;
	x->rel.reassigned = 0;		/* cat_point_commit() */
	m->writes++;
}

/* s sends HELLO at generation g to t; honest: s follows the protocol
 * (it judges the WELCOME), else it is an attacker that writes anyway. */
static void
model_hello(struct model *m, int s, int t, uint64_t g, int honest)
{
	struct host *x = &m->h[s], *y = &m->h[t];
	struct role_view v;
	char event[96];

	snprintf(event, sizeof(event), "%s HELLO %s -> %s at %" PRIu64,
	    honest ? "honest" : "hostile", idn[s], idn[t], g);
	role_view_of(y->has ? &y->rel : NULL, &v);
	struct role_decision d = role_hello(&v, idn[s], g, 1);
	uint64_t before = y->has ? y->rel.generation : 0;
	switch (d.verdict) {
	case ROLE_REFUSE:
		m->refusals++;
		if (honest && d.nack == WIRE_NACK_FENCED)
			snprintf(x->rel.fenced, sizeof(x->rel.fenced),
			    "fenced by %s", idn[t]);
		return;
	case ROLE_CREATE:
		role_rel_create(&y->rel, "web01", idn[s], d.generation, "/r");
		y->has = 1;
		y->grant = s;
		y->last_gen = d.generation;
		break;
	case ROLE_DEMOTE:
		/* Only the host the primary replicates to takes it over,
		 * exactly one generation up. */
		if (target_of(y) != s)
			model_fail("%s: %s demoted by %s, its replica is %d",
			    event, idn[t], idn[s], target_of(y));
		{
			struct role_view vy;
			role_view_of(&y->rel, &vy);
			if (d.generation != before + 1 && !vy.fresh)
				model_fail("%s: demoted from %" PRIu64 " to %"
				    PRIu64, event, before, d.generation);
		}
		role_rel_demote(&y->rel, d.generation, idn[s], "/r", 0);
		y->grant = s;
		y->fresh = 0;
		m->demotions++;
		break;
	case ROLE_WELCOME:
	case ROLE_WELCOME_ADOPT:
		break;
	default:
		model_fail("%s: verdict %d", event, d.verdict);
	}
	if (honest) {
		struct role_decision w = role_welcome(x->rel.generation,
		    d.generation, d.verdict == ROLE_WELCOME_ADOPT);
		if (w.verdict == ROLE_REFUSE) {
			if (w.nack == WIRE_NACK_FENCED)
				snprintf(x->rel.fenced, sizeof(x->rel.fenced),
				    "stale");
			return;
		}
		if (w.verdict == ROLE_ADOPT) {
			role_rel_adopt(&x->rel, w.generation);
			m->adoptions++;
		}
		x->fresh = 0;
		g = x->rel.generation;
	} else {
		g = d.generation;	/* the session's generation */
	}
	model_write(m, s, t, g, event);
	if (honest) {			/* the ACK: job_commit() */
		x->rel.last_cycle = y->rel.last_cycle;
		x->rel.last_point = y->rel.last_point;
	}
}

/* A planned failover of s to its replica; crash: s dies before it
 * records its own demotion. */
static void
model_planned(struct model *m, int s, int crash)
{
	struct host *x = &m->h[s];
	int t = target_of(x);
	struct role_view vs, vt;

	role_view_of(&x->rel, &vs);
	/* (a primary without a replica cannot hand over: pvm_has_replica) */
	if (role_command(&vs, ROLE_CMD_PLANNED, NULL, 0).verdict !=
	    ROLE_HANDOVER || x->rel.peer[0] == '\0' || t < 0 || t == s ||
	    !m->h[t].has)
		return;
	struct host *y = &m->h[t];
	role_view_of(&y->rel, &vt);
	if (!role_same_identity(vt.owner, idn[s]) || vt.generation !=
	    x->rel.generation || y->rel.last_cycle == 0)
		return;		/* no session would reach the PROMOTE */
	struct role_decision d = role_promote(&vt, x->rel.generation,
	    y->rel.last_cycle, y->rel.last_cycle, y->rel.last_cycle,
	    x->rel.generation + 1);
	if (d.verdict != ROLE_PROMOTE)
		return;
	role_rel_promote_planned(&y->rel, d.generation, "h:7000", idn[s]);
	m->promotions++;
	check_invariants(m, "PROMOTE");
	if (crash)
		return;
	if (role_promoted(x->rel.generation, d.generation).verdict !=
	    ROLE_HANDED_OVER)
		model_fail("PROMOTED refused");
	role_rel_demote(&x->rel, d.generation, idn[t], "/r",
	    x->rel.last_cycle);
	x->grant = t;
}

static void
model_step(struct model *m)
{
	int a = (int)rnd(m, NH), b = (int)rnd(m, NH);
	struct host *x = &m->h[a];
	struct role_view v;
	char event[64];

	role_view_of(x->has ? &x->rel : NULL, &v);
	switch (rnd(m, 12)) {
	case 0: case 1: case 2:		/* a cycle */
		/* (a primary by an unplanned failover has no replica
		 * until reverse: rel.peer is empty) */
		if (x->has && v.state == ROLE_PRIMARY && !v.fenced && !x->lost &&
		    x->rel.peer[0] != '\0' && target_of(x) >= 0 &&
		    target_of(x) != a)
			model_hello(m, a, target_of(x), x->rel.generation, 1);
		snprintf(event, sizeof(event), "a cycle of %s", idn[a]);
		break;
	case 3:				/* planned failover */
		if (x->has && !x->lost)
			model_planned(m, a, rnd(m, 4) == 0);
		snprintf(event, sizeof(event), "planned failover of %s", idn[a]);
		break;
	case 4:
		/* Unplanned failover: on the replica a lost primary
		 * replicates to, at its generation (an operator fails over
		 * to the VM's replica, not to a copy the primary stopped
		 * sending to or could not reach). */
		if (x->has && !x->lost && v.state == ROLE_REPLICA &&
		    host_of(v.owner) >= 0 && m->h[host_of(v.owner)].lost &&
		    m->h[host_of(v.owner)].rel.peer[0] != '\0' &&
		    target_of(&m->h[host_of(v.owner)]) == a &&
		    m->h[host_of(v.owner)].rel.generation == v.generation &&
		    role_command(&v, ROLE_CMD_UNPLANNED, NULL, 0).verdict ==
		    ROLE_PROMOTE) {
			uint64_t was = x->rel.generation;
			role_rel_unplanned(&x->rel);
			if (x->rel.generation != was + 1)
				model_fail("unplanned: %" PRIu64 " -> %" PRIu64,
				    was, x->rel.generation);
			m->promotions++;
		}
		snprintf(event, sizeof(event), "unplanned failover on %s",
		    idn[a]);
		break;
	case 5:				/* commit, or reverse */
		if (x->lost)
			;
		else if (x->has && role_command(&v, ROLE_CMD_COMMIT, NULL, 0).verdict
		    == ROLE_COMMIT)
			x->rel.at_point = 0;
		else if (x->has && b != a && x->rel.peer[0] == '\0' &&
		    role_command(&v, ROLE_CMD_REVERSE, NULL, 0).verdict ==
		    ROLE_REVERSE) {
			/* (on a primary by an unplanned failover: one that
			 * replicates already keeps its replica) */
			x->rel.at_point = 0;
			role_rel_reverse(&x->rel, "h:7000", idn[b]);
			set_target(x, b);
		}
		snprintf(event, sizeof(event), "commit or reverse on %s", idn[a]);
		break;
	case 6:				/* a host is lost, or comes back */
		x->lost = !x->lost;
		snprintf(event, sizeof(event), "%s %s", idn[a], x->lost ?
		    "lost" : "back");
		break;
	case 7:				/* the VM moves to b: reassign */
		if (x->has && !x->lost && b != a && !m->h[b].has &&
		    v.state == ROLE_REPLICA &&
		    role_command(&v, ROLE_CMD_REASSIGN, idn[b], 1).verdict ==
		    ROLE_REASSIGN) {
			struct host *y = &m->h[b];
			int old = host_of(v.owner);
			if (old >= 0)
				m->h[old].lost = 1;	/* the VM left it */
			memset(&y->rel, 0, sizeof(y->rel));
			snprintf(y->rel.vm, sizeof(y->rel.vm), "web01");
			y->rel.role = CAT_ROLE_PRIMARY;
			y->rel.generation = 1;
			set_target(y, a);
			y->has = 1;
			y->fresh = 1;
			y->lost = 0;
			y->last_gen = 1;
			role_rel_reassign(&x->rel, idn[b]);
			x->grant = b;
		}
		snprintf(event, sizeof(event), "reassign on %s to %s", idn[a],
		    idn[b]);
		break;
	case 8: case 9: case 10: {	/* a hostile HELLO */
		static const int64_t dg[] = { -1, 0, 1, 2, 1000 };
		uint64_t g = x->has ? x->rel.generation : 1;
		int64_t k = dg[rnd(m, 5)];
		uint64_t hg = k < 0 && g == 0 ? 0 : (uint64_t)((int64_t)g + k);
		if (rnd(m, 8) == 0)
			hg = rnd(m, 2) ? ROLE_MAX_GENERATION + 1 : 0;
		if (b != a)
			model_hello(m, a, b, hg, 0);
		snprintf(event, sizeof(event), "hostile HELLO %s -> %s at %"
		    PRIu64, idn[a], idn[b], hg);
		break;
	}
	default:
		/*
		 * No hostile PROMOTE: one comes only in a session the
		 * replica welcomed, so from the host the VM belongs to,
		 * which is trusted with its own VM (the PROMOTE table covers
		 * what the replica checks of it).
		 */
		snprintf(event, sizeof(event), "nothing");
		break;
	}
	char states[120] = "";
	for (int i = 0; i < NH; i++) {
		const struct host *y = &m->h[i];
		size_t n = strlen(states);
		char who[HOST_MAX_LEN + 1] = "-";
		if (y->has)
			role_owner(&y->rel, who, sizeof(who));
		snprintf(states + n, sizeof(states) - n, " %s:%s%" PRIu64 "%s%s%s",
		    idn[i], !y->has ? "-" : state_of(y) == ROLE_REPLICA ? "R" :
		    state_of(y) == ROLE_UNCOMMITTED ? "U" : "P",
		    y->has ? y->rel.generation : 0, state_of(y) == ROLE_REPLICA ?
		    "<" : ">", who, y->lost ? "(lost)" : "");
	}
	snprintf(m->trail[m->steps % TRAIL], sizeof(m->trail[0]), "%-40s |%s",
	    event, states);
	m->steps++;
	check_invariants(m, event);
}

static void
test_model(void **state)
{
	const char *env = getenv("ROLE_SEED");
	unsigned seed = env ? (unsigned)strtoul(env, NULL, 10) :
	    (unsigned)time(NULL) ^ ((unsigned)getpid() << 16);
	int runs = env ? 1 : 2000, total_writes = 0, total_demotions = 0,
	    total_promotions = 0, total_adoptions = 0;

	printf("     role model: seed %u (ROLE_SEED=N replays one run)\n",
	    seed);
	for (int run = 0; run < runs; run++) {
		struct model m;
		memset(&m, 0, sizeof(m));
		m.seed = m.rng = seed + (unsigned)run * 7919u;
		current = &m;
		for (int i = 0; i < NH; i++)
			m.h[i].grant = -1;
		/* h0 is the VM's primary, replicating to h1. */
		snprintf(m.h[0].rel.vm, sizeof(m.h[0].rel.vm), "web01");
		m.h[0].rel.role = CAT_ROLE_PRIMARY;
		m.h[0].rel.generation = 1;
		set_target(&m.h[0], 1);
		m.h[0].has = 1;
		m.h[0].last_gen = 1;
		for (int step = 0; step < 300; step++)
			model_step(&m);
		total_writes += m.writes;
		total_demotions += m.demotions;
		total_promotions += m.promotions;
		total_adoptions += m.adoptions;
	}
	current = NULL;
	printf("     role model: %d runs, %d cycles applied, %d promotions, "
	    "%d demotions, %d adoptions\n", runs, total_writes,
	    total_promotions, total_demotions, total_adoptions);
	/* The model did reach every kind of change it checks. */
	if (!env) {
		assert_true(total_writes > 1000);
		assert_true(total_promotions > 100);
		assert_true(total_demotions > 100);
		assert_true(total_adoptions > 10);
	}
}

int
main(void)
{
	static const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hello_table),
		cmocka_unit_test(test_promote_table),
		cmocka_unit_test(test_welcome_table),
		cmocka_unit_test(test_command_table),
		cmocka_unit_test(test_generation_ceiling),
		cmocka_unit_test(test_startup),
		cmocka_unit_test(test_owner_and_view),
		cmocka_unit_test(test_refusal_words),
		cmocka_unit_test(test_transitions),
		cmocka_unit_test(test_model),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
