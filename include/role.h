/*
 * role.h — the rules of roles, generations and failover, as pure
 * functions: no I/O, no clock, no global state.  replica.c, primary.c and
 * failover.c gather the inputs (the VM's relationship as the catalog
 * records it, the configuration, the event), ask here, and carry out the
 * decision; tests/unit/test_role.c holds these rules as one table.
 *
 * Identity.  A relationship belongs to one certificate identity.  On a
 * replica it is the host that may send the VM: the one whose HELLO made
 * the relationship, or the one a failover or `replctl reassign` recorded.
 * On a primary it is the host the VM replicates to: the only one that may
 * take the VM over (reverse, or the end of a planned failover).  Any other
 * host is refused (DENIED) whatever generation it claims, and nothing is
 * written.  Identities compare without regard to case, as DNS names do.
 *
 * Generations.  They start at 1 and rise by one at each failover (and at
 * a reassignment, which changes the sender as a failover would).  A host
 * refuses a cycle from below its generation (FENCED) and any message that
 * would make a generation leap (PROTOCOL): a replica welcomes only its
 * own generation, a primary steps down only to its own generation + 1,
 * a PROMOTE or PROMOTED carries exactly the generation + 1.  Two
 * exceptions: a primary that no cycle ever left (its generation is a
 * placeholder, as a new relationship's would be) steps down for its
 * replica at any higher generation; and a replica reassigned to a sender takes
 * that sender's generation if it is higher (its failovers went on
 * elsewhere), else tells it to take the replica's (WELCOME_ADOPT, which
 * also makes it compare the disks: the copy here is another host's).
 */
#ifndef REPLICAD_ROLE_H
#define REPLICAD_ROLE_H

#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "util.h"

/* Above this a generation is refused as corrupt or hostile: 2^62 leaves
 * room for every failover there can ever be. */
#define ROLE_MAX_GENERATION	(UINT64_C(1) << 62)

enum role_state {
	ROLE_NONE,		/* no relationship for the VM on this host */
	ROLE_REPLICA,
	ROLE_PRIMARY,
	ROLE_UNCOMMITTED,	/* primary by an unplanned failover that is
				   not committed yet */
};

/* What a host knows of one VM when an event comes. */
struct role_view {
	enum role_state	 state;
	uint64_t	 generation;
	char		 owner[HOST_MAX_LEN + 1];	/* "" if none */
	int		 reassigned;	/* replica: reassigned to owner, which
					   takes the generation at its next
					   WELCOME */
	int		 fenced;	/* primary: refused as a stale one */
	int		 fresh;		/* primary: no cycle ever left it */
	int		 busy;		/* a role change holds the VM */
};

enum role_verdict {
	ROLE_REFUSE,		/* refuse: why, and the NACK to send */
	ROLE_WELCOME,		/* replica: serve the session */
	ROLE_WELCOME_ADOPT,	/* replica: serve it (reassigned): the sender
				   compares the disks first, and takes the
				   generation if it is above its own */
	ROLE_CREATE,		/* replica: a new relationship, the sender's */
	ROLE_DEMOTE,		/* primary: become the sender's replica */
	ROLE_PROMOTE,		/* replica: become the primary */
	ROLE_PROCEED,		/* primary: the replica welcomed the cycle */
	ROLE_ADOPT,		/* primary: take the generation, go on */
	ROLE_FENCE,		/* primary: this host is a stale primary */
	ROLE_HANDED_OVER,	/* primary: the replica took the VM over */
	ROLE_REPICK,		/* another point for an uncommitted failover */
	ROLE_COMMIT,		/* make an unplanned failover final */
	ROLE_HANDOVER,		/* start a planned failover */
	ROLE_REVERSE,		/* replicate to another host (new primary) */
	ROLE_REASSIGN,		/* the replica takes the VM from another host */
};

enum role_why {
	ROLE_WHY_NONE,
	ROLE_WHY_NOT_ACCEPTED,	/* no [accept] entry admits sender and VM */
	ROLE_WHY_NOT_OWNER,	/* the VM belongs to another host */
	ROLE_WHY_RANGE,		/* generation 0 or above the maximum */
	ROLE_WHY_STALE,		/* generation below this host's */
	ROLE_WHY_LEAP,		/* above what one failover makes */
	ROLE_WHY_BELOW,		/* a replica answered below the generation */
	ROLE_WHY_SAME_GEN,	/* two primaries at one generation */
	ROLE_WHY_UNCOMMITTED,	/* primary here, failover not committed */
	ROLE_WHY_BUSY,		/* another role change holds the VM */
	ROLE_WHY_NOT_AFTER_ACK,	/* PROMOTE not right after an ACKed cycle */
	ROLE_WHY_NO_VM,		/* no such VM on this host */
	ROLE_WHY_IS_PRIMARY,	/* the command runs on the replica */
	ROLE_WHY_IS_REPLICA,	/* the command runs on the primary */
	ROLE_WHY_NOTHING_TO_COMMIT,
	ROLE_WHY_FENCED,	/* this host is a stale primary */
};

struct role_decision {
	enum role_verdict verdict;
	enum role_why	 why;		/* ROLE_REFUSE: why */
	uint16_t	 nack;		/* ROLE_REFUSE: WIRE_NACK_* */
	uint64_t	 generation;	/* the generation the VM gets (CREATE,
					   DEMOTE, PROMOTE, ADOPT, REASSIGN,
					   HANDOVER: the replica's) or keeps */
	int		 warn;		/* worth a warning in the log */
};

enum role_cmd {
	ROLE_CMD_UNPLANNED,	/* replctl failover VM [--point ID] */
	ROLE_CMD_COMMIT,	/* replctl failover VM --commit */
	ROLE_CMD_PLANNED,	/* replctl failover VM --planned */
	ROLE_CMD_REVERSE,	/* replctl reverse VM --to ... */
	ROLE_CMD_REASSIGN,	/* replctl reassign VM --host NAME */
};

/* How a VM is brought up at start-up. */
enum role_start {
	ROLE_START_REPLICA,	/* open its store; receive */
	ROLE_START_PRIMARY,	/* a primary from its [vm] section */
	ROLE_START_PRIMARY_CATALOG, /* a primary by a failover: its disks are
				   STORAGE/VM/DISK, its replica the catalog's */
	ROLE_START_UNCOMMITTED,	/* the store (another point, the commit) and
				   a primary that runs no cycle yet */
	ROLE_START_NO_DISKS,	/* primary, but nothing here names its disks
				   (its [vm] section was removed): no cycles;
				   its replica may still take it over */
	ROLE_START_NEW,		/* a [vm] section and no relationship: a new
				   one at generation 1 */
};

/* Certificate identities compare without regard to case. */
int	role_same_identity(const char *a, const char *b);
/* The identity rel belongs to (see above) into out ("" if none). */
void	role_owner(const struct cat_rel *rel, char *out, size_t outsz);
/* The view of rel (NULL: no relationship); busy is left 0. */
void	role_view_of(const struct cat_rel *rel, struct role_view *v);

/* A HELLO for a VM from identity at generation; accepted: an [accept]
 * entry of this host admits identity for the VM. */
struct role_decision role_hello(const struct role_view *v,
	    const char *identity, uint64_t generation, int accepted);
/* PROMOTE in a session welcomed at session_gen, which acknowledged cycle
 * acked; last_cycle is the relationship's newest; m_cycle and m_gen are
 * the frame's. */
struct role_decision role_promote(const struct role_view *v,
	    uint64_t session_gen, uint64_t acked, uint64_t last_cycle,
	    uint64_t m_cycle, uint64_t m_gen);
/* A primary at gen got WELCOME at w_gen, with the adopt flag or not. */
struct role_decision role_welcome(uint64_t gen, uint64_t w_gen, int adopt);
/* A primary at gen sent PROMOTE and got PROMOTED at p_gen. */
struct role_decision role_promoted(uint64_t gen, uint64_t p_gen);
/* An operator's command; identity and accepted matter to REASSIGN (the
 * new sender, and whether an [accept] entry admits it for the VM with
 * the VM's storage). */
struct role_decision role_command(const struct role_view *v,
	    enum role_cmd cmd, const char *identity, int accepted);
/* Start-up: rel is the catalog's (NULL: none), vm_section says whether
 * the configuration has a [vm] section for the VM. */
enum role_start role_startup(const struct cat_rel *rel, int vm_section);

/*
 * One line for the log and the peer that says why, naming the VM, the
 * sender and the owner: "web01 belongs to host-a on this host; host-b may
 * not write into it".  what is the event ("HELLO", "PROMOTE", ...).
 */
void	role_refusal(const struct role_view *v, const char *vm,
	    const char *identity, uint64_t generation,
	    const struct role_decision *d, char *buf, size_t bufsz);

/*
 * What each decision changes in the relationship; the caller writes rel
 * back to the catalog (one transaction).
 */
/* A new replica relationship of vm owned by identity (the caller adds
 * block size, interval and disks). */
void	role_rel_create(struct cat_rel *rel, const char *vm,
	    const char *identity, uint64_t generation, const char *storage);
/* Unplanned failover: primary at generation + 1, images at the newest
 * point (uncommitted); its replica-to-be is the old primary. */
void	role_rel_unplanned(struct cat_rel *rel);
/* Planned failover, replica side: primary at generation, replicating to
 * listen, whose identity is old_primary. */
void	role_rel_promote_planned(struct cat_rel *rel, uint64_t generation,
	    const char *listen, const char *old_primary);
/* Becoming the replica of identity at generation: a new history in
 * storage; last_cycle 0 makes the new primary compare the disks. */
void	role_rel_demote(struct cat_rel *rel, uint64_t generation,
	    const char *identity, const char *storage, uint64_t last_cycle);
/* Reverse: replicate to `to` (HOST:PORT) whose identity is name; the
 * first cycle compares the disks. */
void	role_rel_reverse(struct cat_rel *rel, const char *to,
	    const char *name);
/* The replica takes the VM from identity from now on, one generation up
 * (identity takes it at its next WELCOME, or brings a higher one). */
void	role_rel_reassign(struct cat_rel *rel, const char *identity);
/* A primary takes the generation a reassignment gave it. */
void	role_rel_adopt(struct cat_rel *rel, uint64_t generation);

#endif
