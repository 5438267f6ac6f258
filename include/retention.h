/*
 * retention.h — the retention policy engine: which recovery points of a VM
 * a replica keeps.  Pure functions, no I/O.
 *
 * A policy is "RULE[,RULE...]" with RULE one of last=N, hourly=N, daily=N,
 * weekly=N, monthly=N, yearly=N (N 1..1000000), within=DURATION, or app:
 * before a counting rule to count only application-consistent points.  The
 * rules mean what restic's forget --keep-* options mean (see retention.c).
 */
#ifndef REPLICAD_RETENTION_H
#define REPLICAD_RETENTION_H

#include <stddef.h>
#include <stdint.h>

#define RET_MAX_KEEP		1000000	/* largest N of a counting rule */
#define RET_NCOUNT		6	/* last, hourly, ..., yearly */
#define RET_POLICY_STRLEN	320	/* enough for any ret_format() */
#define RET_REASONS_STRLEN	128	/* enough for any ret_reasons() */

/* Why a point is kept: bit flags. */
enum ret_reason {
	RET_NEWEST = 1 << 0,	/* the point with the highest id, always */
	RET_LAST = 1 << 1,
	RET_HOURLY = 1 << 2,
	RET_DAILY = 1 << 3,
	RET_WEEKLY = 1 << 4,
	RET_MONTHLY = 1 << 5,
	RET_YEARLY = 1 << 6,
	RET_WITHIN = 1 << 7,
	RET_APP_LAST = 1 << 8,
	RET_APP_HOURLY = 1 << 9,
	RET_APP_DAILY = 1 << 10,
	RET_APP_WEEKLY = 1 << 11,
	RET_APP_MONTHLY = 1 << 12,
	RET_APP_YEARLY = 1 << 13,
	RET_PINNED = 1 << 15,	/* never set by ret_apply(): the caller ORs
				   it in, e.g. for the point of an open test
				   copy */
};

/*
 * Fill it with ret_parse(); callers read only local_time.  A zeroed
 * struct is the empty policy, which keeps only the newest point.
 */
struct ret_policy {
	uint32_t	keep[2][RET_NCOUNT];	/* [app][last..yearly], 0: none */
	uint64_t	within_ms;		/* 0: no within rule */
	int		local_time;		/* buckets in TZ, not UTC */
};

struct ret_point {
	uint64_t	id;		/* creation order on the replica: the
					   order of the points */
	int64_t		created_ms;	/* the primary's clock, Unix ms UTC;
					   not in order if it was stepped */
	int		app;		/* application-consistent */
};

/*
 * Parse "rule,rule,..." (blanks around items allowed) into *p.  local_time
 * puts the hour/day/week/month/year boundaries in the local time zone
 * (localtime_r(), honouring TZ) instead of UTC.  Returns 0 or
 * RD_ERR_INVALID with a one-line message in err (the same words as
 * replicad.conf's retention key); *p is untouched on error.  The empty
 * string is an error ("empty rule in ''").
 */
int	ret_parse(const char *s, int local_time, struct ret_policy *p,
	    char *err, size_t errsz);
/*
 * Normal form of *p ("last=24,daily=30,within=2d,app:daily=7": the rules
 * in that order, durations in the largest exact unit), which ret_parse()
 * reads back to the same policy; "" for the empty policy.  local_time is
 * not part of it.  Truncated to bufsz; RET_POLICY_STRLEN always suffices.
 */
void	ret_format(const struct ret_policy *p, char *buf, size_t bufsz);
/*
 * For each of the n points (any order; ids unique), why[i] receives the
 * reasons pts[i] is kept, 0 if it is to be dropped.  The points' order is
 * their ids'; the period rules and within= see each point at its
 * effective time (ret_effective()).  O(n log n) time and O(n) temporary
 * memory (allocation failure is fatal).
 */
void	ret_apply(const struct ret_policy *p, const struct ret_point *pts,
	    size_t n, unsigned *why);
/*
 * eff[i] receives the time pts[i] counts at in the period rules and
 * within=: its created_ms, but no later than the effective time of the
 * next point by id (the newest point's is its own created_ms).  Equal to
 * created_ms unless the primary's clock was stepped back after the cut.
 */
void	ret_effective(const struct ret_point *pts, size_t n, int64_t *eff);
/* "newest,last,daily" style names of the bits of why (lowest bit first;
 * unknown bits ignored, "" for 0).  RET_REASONS_STRLEN always suffices. */
void	ret_reasons(unsigned why, char *buf, size_t bufsz);

#endif
