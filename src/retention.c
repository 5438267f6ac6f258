/*
 * retention.c — which recovery points a retention policy keeps.
 *
 * The rules follow restic's forget --keep-* (internal/restic/
 * snapshot_policy.go, before 0.17 added "also keep the oldest"), walked
 * down the order of the points, newest first: the order of their ids,
 * which the replica gives in the order it commits the cycles, which is
 * the order the primary cut them.  The primary's clock is no part of
 * that order: it may have been stepped back or forward between two cuts.
 *
 * Each point counts for the period rules and within= at its effective
 * time: its created_ms, but no later than the effective time of the
 * point after it; the newest point's is its own created_ms.  A point was
 * cut before every newer one, so the newer's time bounds it from above;
 * only a stamp "in the future" of a newer point moves, and the newest
 * stamp is the clock's latest word.  So effective times never decrease
 * with the id: after a step back the points stamped ahead count in the
 * period of the first point after the step (a period rule keeps the
 * newest of them, not several); a step forward leaves every time as it
 * is (a gap with no points).
 *
 * last=N keeps the N newest points.  hourly/daily/weekly/monthly/yearly=N
 * keep each point whose hour, day, ISO week (Monday to Sunday), month or
 * year differs from that of the previous point of the walk, until N have
 * been kept; so each of the N most recent periods that have points keeps
 * its newest point.  Periods are UTC calendar periods, or local ones
 * (localtime_r) if the policy says so; in local time the hour repeated
 * when DST ends is one period, as in restic.  within=D keeps every point
 * whose effective time is strictly after (latest - D), latest being the
 * newest point's time.  app: rules do the same over the application-
 * consistent points alone (with the effective times of all points).  A
 * point is kept if any rule keeps it, and the newest point is always kept.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "retention.h"
#include "util.h"
#include "xmalloc.h"

#define MS_PER_HOUR	3600000LL
#define MS_PER_DAY	86400000LL

enum ret_kind { K_LAST, K_HOURLY, K_DAILY, K_WEEKLY, K_MONTHLY, K_YEARLY,
	K_WITHIN };

static const char *const kind_names[] = { "last", "hourly", "daily",
    "weekly", "monthly", "yearly", "within" };
#define NKINDS	(sizeof(kind_names) / sizeof(kind_names[0]))

static const char *const reason_names[16] = { "newest", "last", "hourly",
    "daily", "weekly", "monthly", "yearly", "within", "app:last",
    "app:hourly", "app:daily", "app:weekly", "app:monthly", "app:yearly",
    NULL, "pinned" };

/* The reason bit of counting rule k, plain (app 0) or app: (app 1). */
static unsigned
count_reason(int app, int k)
{
	return app ? (unsigned)RET_APP_LAST << k : (unsigned)RET_LAST << k;
}

static void
set_err(char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
set_err(char *err, size_t errsz, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errsz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errsz, fmt, ap);
	va_end(ap);
}

int
ret_parse(const char *s, int local_time, struct ret_policy *p, char *err,
    size_t errsz)
{
	struct ret_policy np;
	char *copy = xstrdup(s), *item, *next, *val;
	char done[2][NKINDS];
	size_t k;
	int app, r;

	memset(&np, 0, sizeof(np));
	memset(done, 0, sizeof(done));
	np.local_time = local_time != 0;
	for (item = copy; item != NULL; item = next) {
		if ((next = strchr(item, ',')) != NULL)
			*next++ = '\0';
		item += strspn(item, " \t");
		for (size_t n = strlen(item); n > 0 &&
		    (item[n - 1] == ' ' || item[n - 1] == '\t'); n--)
			item[n - 1] = '\0';
		if (*item == '\0') {
			set_err(err, errsz, "empty rule in '%s'", s);
			r = RD_ERR_INVALID;
			goto out;
		}
		const char *rule = item;
		app = strncmp(item, "app:", 4) == 0;
		if (app)
			item += 4;
		if ((val = strchr(item, '=')) == NULL) {
			set_err(err, errsz, "invalid rule '%s' (expected "
			    "KIND=COUNT or within=DURATION)", rule);
			r = RD_ERR_INVALID;
			goto out;
		}
		*val++ = '\0';
		for (k = 0; k < NKINDS; k++)
			if (strcmp(item, kind_names[k]) == 0)
				break;
		if (k == NKINDS || (app && k == K_WITHIN)) {
			set_err(err, errsz, "unknown rule '%s%s' (expected "
			    "[app:]last, hourly, daily, weekly, monthly, "
			    "yearly or within)", app ? "app:" : "", item);
			r = RD_ERR_INVALID;
			goto out;
		}
		if (done[app][k]) {
			set_err(err, errsz, "rule '%s%s' given twice",
			    app ? "app:" : "", item);
			r = RD_ERR_INVALID;
			goto out;
		}
		done[app][k] = 1;
		if (k == K_WITHIN) {
			uint64_t ms;
			if (util_parse_duration_ms(val, &ms) != 0 || ms == 0) {
				set_err(err, errsz, "invalid duration '%s' in "
				    "within=", val);
				r = RD_ERR_INVALID;
				goto out;
			}
			np.within_ms = ms;
		} else {
			long n = 0;
			size_t i;
			for (i = 0; isdigit((unsigned char)val[i]) &&
			    n <= RET_MAX_KEEP; i++)
				n = n * 10 + (val[i] - '0');
			if (i == 0 || val[i] != '\0' || n < 1 ||
			    n > RET_MAX_KEEP) {
				set_err(err, errsz, "invalid count '%s' in "
				    "%s%s= (1 to %d)", val, app ? "app:" : "",
				    item, RET_MAX_KEEP);
				r = RD_ERR_INVALID;
				goto out;
			}
			np.keep[app][k] = (uint32_t)n;
		}
	}
	*p = np;
	r = 0;
out:
	free(copy);
	return r;
}

/* Append printf output at *len, never past bufsz (output truncated). */
static void
append(char *buf, size_t bufsz, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
append(char *buf, size_t bufsz, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (*len + 1 >= bufsz)
		return;
	va_start(ap, fmt);
	w = vsnprintf(buf + *len, bufsz - *len, fmt, ap);
	va_end(ap);
	if (w < 0)
		return;
	*len += (size_t)w;
	if (*len >= bufsz)
		*len = bufsz - 1;
}

void
ret_format(const struct ret_policy *p, char *buf, size_t bufsz)
{
	static const struct { const char *sfx; uint64_t ms; } units[] = {
		{ "d", MS_PER_DAY }, { "h", MS_PER_HOUR }, { "m", 60000 },
		{ "s", 1000 }, { "ms", 1 } };
	size_t len = 0;

	if (bufsz == 0)
		return;
	buf[0] = '\0';
	for (int app = 0; app < 2; app++) {
		for (int k = 0; k < RET_NCOUNT; k++)
			if (p->keep[app][k] != 0)
				append(buf, bufsz, &len, "%s%s%s=%" PRIu32,
				    len > 0 ? "," : "", app ? "app:" : "",
				    kind_names[k], p->keep[app][k]);
		if (app == 0 && p->within_ms != 0) {
			size_t u = 0;
			while (p->within_ms % units[u].ms != 0)
				u++;
			append(buf, bufsz, &len, "%swithin=%" PRIu64 "%s",
			    len > 0 ? "," : "", p->within_ms / units[u].ms,
			    units[u].sfx);
		}
	}
}

void
ret_reasons(unsigned why, char *buf, size_t bufsz)
{
	size_t len = 0;

	if (bufsz == 0)
		return;
	buf[0] = '\0';
	for (unsigned b = 0; b < 16; b++)
		if ((why & (1U << b)) != 0 && reason_names[b] != NULL)
			append(buf, bufsz, &len, "%s%s", len > 0 ? "," : "",
			    reason_names[b]);
}

/* --- calendar ----------------------------------------------------------- */

static int64_t
floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = floor_div(y, 400);
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

	return era * 146097 + doe - 719468;
}

static void
civil_from_days(int64_t z, int64_t *y, int *m)
{
	z += 719468;
	int64_t era = floor_div(z, 146097);
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;

	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

/*
 * One number per calendar period of a point, indexed by enum ret_kind
 * (K_LAST unused): equal numbers, same period.  A week is numbered by its
 * Monday, which is what an ISO (year, week) pair identifies.
 */
static void
period_keys(int64_t ms, int local_time, int64_t key[RET_NCOUNT])
{
	int64_t day, year;
	int month, hour;
	struct tm tm;
	time_t t = (time_t)floor_div(ms, 1000);

	if (local_time && localtime_r(&t, &tm) != NULL) {
		year = (int64_t)tm.tm_year + 1900;
		month = tm.tm_mon + 1;
		hour = tm.tm_hour;
		day = days_from_civil(year, month, tm.tm_mday);
	} else {
		int64_t in_day = ms % MS_PER_DAY;
		if (in_day < 0)
			in_day += MS_PER_DAY;
		day = floor_div(ms, MS_PER_DAY);
		hour = (int)(in_day / MS_PER_HOUR);
		civil_from_days(day, &year, &month);
	}
	key[K_HOURLY] = day * 24 + hour;
	key[K_DAILY] = day;
	key[K_WEEKLY] = floor_div(day + 3, 7);	/* 1970-01-01 was a Thursday */
	key[K_MONTHLY] = year * 12 + month;
	key[K_YEARLY] = year;
}

/* --- applying a policy ------------------------------------------------- */

struct ret_entry {
	uint64_t	id;
	size_t		idx;		/* into pts[] and why[] */
};

/* Newest first: by id. */
static int
entry_cmp(const void *a, const void *b)
{
	const struct ret_entry *x = a, *y = b;

	if (x->id != y->id)
		return x->id > y->id ? -1 : 1;
	return 0;
}

/* The walk of one set of counting rules (plain or app:) down the order. */
struct ret_walk {
	uint32_t	left[RET_NCOUNT];	/* points still to keep */
	int64_t		prev[RET_NCOUNT];	/* period of the last kept */
	int		have_prev[RET_NCOUNT];
};

static int
walk_active(const struct ret_walk *w)
{
	for (int k = 0; k < RET_NCOUNT; k++)
		if (w->left[k] > 0)
			return 1;
	return 0;
}

/* Whether any rule but last= needs the periods of the points. */
static int
walk_needs_keys(const struct ret_walk *w)
{
	for (int k = K_HOURLY; k < RET_NCOUNT; k++)
		if (w->left[k] > 0)
			return 1;
	return 0;
}

static unsigned
walk_step(struct ret_walk *w, int app, const int64_t key[RET_NCOUNT])
{
	unsigned why = 0;

	for (int k = 0; k < RET_NCOUNT; k++) {
		if (w->left[k] == 0)
			continue;
		if (k != K_LAST && w->have_prev[k] && key[k] == w->prev[k])
			continue;
		w->prev[k] = key[k];
		w->have_prev[k] = 1;
		w->left[k]--;
		why |= count_reason(app, k);
	}
	return why;
}

/* The n points' indices, newest (highest id) first; the caller frees. */
static struct ret_entry *
newest_first(const struct ret_point *pts, size_t n)
{
	struct ret_entry *e = xreallocarray(NULL, n, sizeof(*e));

	for (size_t i = 0; i < n; i++) {
		e[i].id = pts[i].id;
		e[i].idx = i;
	}
	qsort(e, n, sizeof(*e), entry_cmp);
	return e;
}

/* eff[e[i].idx] for each i, e newest first (see the top of the file). */
static void
effective_times(const struct ret_point *pts, const struct ret_entry *e,
    size_t n, int64_t *eff)
{
	int64_t bound = INT64_MAX;

	for (size_t i = 0; i < n; i++) {
		int64_t t = pts[e[i].idx].created_ms;
		if (t > bound)
			t = bound;
		eff[e[i].idx] = bound = t;
	}
}

void
ret_effective(const struct ret_point *pts, size_t n, int64_t *eff)
{
	struct ret_entry *e;

	if (n == 0)
		return;
	e = newest_first(pts, n);
	effective_times(pts, e, n, eff);
	free(e);
}

void
ret_apply(const struct ret_policy *p, const struct ret_point *pts, size_t n,
    unsigned *why)
{
	struct ret_entry *e;
	struct ret_walk walk[2];
	int64_t key[RET_NCOUNT] = { 0 }, *eff;
	size_t i;

	if (n == 0)
		return;
	for (i = 0; i < n; i++)
		why[i] = 0;
	e = newest_first(pts, n);
	eff = xreallocarray(NULL, n, sizeof(*eff));
	effective_times(pts, e, n, eff);
	why[e[0].idx] = RET_NEWEST;

	memset(walk, 0, sizeof(walk));
	for (int app = 0; app < 2; app++)
		memcpy(walk[app].left, p->keep[app], sizeof(walk[app].left));
	int64_t latest = eff[e[0].idx];
	for (i = 0; i < n; i++) {
		size_t x = e[i].idx;
		unsigned w = 0;
		/* Exact even when latest - eff overflows int64_t. */
		int within = p->within_ms != 0 && (uint64_t)latest -
		    (uint64_t)eff[x] < p->within_ms;

		if (!within && !walk_active(&walk[0]) && !walk_active(&walk[1]))
			break;	/* older points are outside within, too */
		if (within)
			w |= RET_WITHIN;
		if (walk_needs_keys(&walk[0]) ||
		    (pts[x].app && walk_needs_keys(&walk[1])))
			period_keys(eff[x], p->local_time, key);
		w |= walk_step(&walk[0], 0, key);
		if (pts[x].app)
			w |= walk_step(&walk[1], 1, key);
		why[x] |= w;
	}
	free(eff);
	free(e);
}
