/*
 * test_retention.c — the retention policy engine: tables of point times
 * with the reasons each point is kept (restic's documented examples,
 * calendar edges in UTC and in Europe/Berlin across DST, clocks going
 * backwards, app: rules), random histories checked against a slow
 * reference built on gmtime_r/localtime_r and strftime, a million points,
 * and the parser's messages, normal form and reason names.
 *
 * The random tests print their seed; RET_TEST_SEED=N reproduces a run.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "err.h"
#include "retention.h"

#define N_	RET_NEWEST
#define L_	RET_LAST
#define H_	RET_HOURLY
#define D_	RET_DAILY
#define W_	RET_WEEKLY
#define M_	RET_MONTHLY
#define Y_	RET_YEARLY
#define WI_	RET_WITHIN
#define AL_	RET_APP_LAST
#define AH_	RET_APP_HOURLY
#define AD_	RET_APP_DAILY
#define AW_	RET_APP_WEEKLY
#define AM_	RET_APP_MONTHLY
#define AY_	RET_APP_YEARLY

/* UTC cases run in this zone, to show that it changes nothing. */
#define OTHER_TZ	"Asia/Kolkata"

static void
set_tz(const char *tz)
{
	setenv("TZ", tz, 1);
	tzset();
}

/* "2024-03-30 22:59:59.999" (the ".mmm" optional), UTC, in Unix ms. */
static int64_t
at(const char *s)
{
	struct tm tm;
	int ms = 0;

	memset(&tm, 0, sizeof(tm));
	if (sscanf(s, "%d-%d-%d %d:%d:%d.%d", &tm.tm_year, &tm.tm_mon,
	    &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) < 6)
		fail_msg("bad time in test table: \"%s\"", s);
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return (int64_t)timegm(&tm) * 1000 + ms;
}

static void
parse_ok(const char *s, int local_time, struct ret_policy *p)
{
	char err[256] = "";

	if (ret_parse(s, local_time, p, err, sizeof(err)) != 0)
		fail_msg("ret_parse(\"%s\"): %s", s, err);
}

static size_t
count_bits(const unsigned *why, size_t n, unsigned bit)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		if (why[i] & bit)
			c++;
	return c;
}

/* --- table-driven cases ------------------------------------------------- */

#define MAXPTS	16

/* Points in id order (id = row + 1); want: the reasons it is kept. */
struct apply_case {
	const char	*name;
	const char	*policy;	/* NULL: the empty policy */
	const char	*tz;		/* buckets in this zone; NULL: UTC */
	struct {
		const char	*at;
		int		 app;
		unsigned	 want;
	} pts[MAXPTS];
};

static const struct apply_case apply_cases[] = {
	/* restic doc/060_forget.rst: a backup every Sunday for 12 weeks. */
	{ "restic doc: 12 Sundays, --keep-daily 4", "daily=4", NULL, {
		{ "2019-09-01 11:00:00", 0, 0 },
		{ "2019-09-08 11:00:00", 0, 0 },
		{ "2019-09-15 11:00:00", 0, 0 },
		{ "2019-09-22 11:00:00", 0, 0 },
		{ "2019-09-29 11:00:00", 0, 0 },
		{ "2019-10-06 11:00:00", 0, 0 },
		{ "2019-10-13 11:00:00", 0, 0 },
		{ "2019-10-20 11:00:00", 0, 0 },
		{ "2019-10-27 11:00:00", 0, D_ },
		{ "2019-11-03 11:00:00", 0, D_ },
		{ "2019-11-10 11:00:00", 0, D_ },
		{ "2019-11-17 11:00:00", 0, N_ | D_ } } },
	{ "restic doc: forget --keep-last 1", "last=1", NULL, {
		{ "2017-02-21 10:48:33", 0, 0 },
		{ "2017-02-21 10:49:18", 0, N_ | L_ } } },
	/* The append-only section: slightly newer fakes in each week push
	 * the real points out of weekly=3; within keeps them. */
	{ "restic doc: append-only, weekly only", "weekly=3", NULL, {
		{ "2024-05-04 12:00:00", 0, 0 },
		{ "2024-05-11 12:00:00", 0, 0 },
		{ "2024-05-18 12:00:00", 0, 0 },
		{ "2024-05-04 12:01:00", 0, W_ },
		{ "2024-05-11 12:01:00", 0, W_ },
		{ "2024-05-18 12:01:00", 0, N_ | W_ } } },
	{ "restic doc: append-only, weekly and within", "weekly=3,within=21d",
	    NULL, {
		{ "2024-05-04 12:00:00", 0, WI_ },
		{ "2024-05-11 12:00:00", 0, WI_ },
		{ "2024-05-18 12:00:00", 0, WI_ },
		{ "2024-05-04 12:01:00", 0, W_ | WI_ },
		{ "2024-05-11 12:01:00", 0, W_ | WI_ },
		{ "2024-05-18 12:01:00", 0, N_ | W_ | WI_ } } },

	{ "one point, empty policy", NULL, NULL, {
		{ "2024-01-01 00:00:00", 0, N_ } } },
	{ "one point, last=1", "last=1", NULL, {
		{ "2024-01-01 00:00:00", 0, N_ | L_ } } },
	{ "one point, daily=3", "daily=3", NULL, {
		{ "2024-01-01 00:00:00", 0, N_ | D_ } } },
	{ "one point, within=1h", "within=1h", NULL, {
		{ "2024-01-01 00:00:00", 0, N_ | WI_ } } },
	{ "one crash-consistent point, app:last=1", "app:last=1", NULL, {
		{ "2024-01-01 00:00:00", 0, N_ } } },
	{ "empty policy keeps only the newest", NULL, NULL, {
		{ "2024-01-01 00:00:00", 1, 0 },
		{ "2024-01-02 00:00:00", 1, 0 },
		{ "2024-01-03 00:00:00", 0, N_ } } },

	{ "one hour, hourly=5", "hourly=5", NULL, {
		{ "2024-01-01 10:00:00.000", 0, 0 },
		{ "2024-01-01 10:15:00", 0, 0 },
		{ "2024-01-01 10:30:00", 0, 0 },
		{ "2024-01-01 10:45:00", 0, 0 },
		{ "2024-01-01 10:59:59.999", 0, N_ | H_ } } },
	{ "UTC hour boundary", "hourly=5", NULL, {
		{ "2024-01-01 09:00:00.000", 0, 0 },
		{ "2024-01-01 09:59:59.999", 0, H_ },
		{ "2024-01-01 10:00:00.000", 0, N_ | H_ } } },

	/* ids 1..4, but the clock was set back before id 4: the points
	 * stamped ahead of it count at its time, so one hour, one day. */
	{ "clock backwards: last and hourly follow the ids", "last=2,hourly=3",
	    NULL, {
		{ "2024-01-01 10:00:00", 0, 0 },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-01 12:00:00", 0, L_ },
		{ "2024-01-01 09:00:00", 0, N_ | L_ | H_ } } },
	{ "clock backwards: daily", "daily=1", NULL, {
		{ "2024-01-01 10:00:00", 0, 0 },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-01 12:00:00", 0, 0 },
		{ "2024-01-01 09:00:00", 0, N_ | D_ } } },
	{ "clock backwards: within from the newest point's time",
	    "within=90m", NULL, {
		{ "2024-01-01 06:00:00", 0, 0 },
		{ "2024-01-01 10:00:00", 0, WI_ },
		{ "2024-01-01 12:00:00", 0, WI_ },
		{ "2024-01-01 09:00:00", 0, N_ | WI_ } } },
	/* Stepped back 3 h after id 3, the clock goes on: ids 1-3 count in
	 * the hour of id 4, whose newest point keeps it. */
	{ "clock backwards, then on: hourly", "hourly=10", NULL, {
		{ "2024-01-01 10:00:00", 0, 0 },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-01 12:00:00", 0, 0 },
		{ "2024-01-01 09:30:00", 0, H_ },
		{ "2024-01-01 10:30:00", 0, H_ },
		{ "2024-01-01 11:30:00", 0, N_ | H_ } } },
	{ "clock backwards a day, then on: daily", "daily=3", NULL, {
		{ "2024-01-02 10:00:00", 0, 0 },
		{ "2024-01-02 23:00:00", 0, 0 },
		{ "2024-01-01 22:00:00", 0, D_ },
		{ "2024-01-02 01:00:00", 0, 0 },
		{ "2024-01-02 02:00:00", 0, N_ | D_ } } },
	/* A step forward moves nothing: a gap with no points. */
	{ "clock forwards: daily", "daily=3,hourly=1", NULL, {
		{ "2024-01-01 10:00:00", 0, 0 },
		{ "2024-01-01 11:00:00", 0, D_ },
		{ "2024-01-03 11:30:00", 0, 0 },
		{ "2024-01-03 12:30:00", 0, N_ | H_ | D_ } } },
	{ "clock forwards, then back", "last=1,hourly=3", NULL, {
		{ "2024-01-01 10:00:00", 0, H_ },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-05 11:00:00", 0, 0 },
		{ "2024-01-01 11:30:00", 0, H_ },
		{ "2024-01-01 12:30:00", 0, N_ | L_ | H_ } } },
	{ "clock backwards: app: rules count app points at their effective "
	    "time", "app:hourly=2", NULL, {
		{ "2024-01-01 08:00:00", 1, AH_ },
		{ "2024-01-01 12:00:00", 1, 0 },
		{ "2024-01-01 09:00:00", 0, 0 },
		{ "2024-01-01 09:10:00", 1, AH_ },
		{ "2024-01-01 09:20:00", 0, N_ } } },
	{ "equal times: the higher id is the newer", "last=1,hourly=1", NULL, {
		{ "2024-01-01 10:00:00", 0, 0 },
		{ "2024-01-01 10:00:00", 0, N_ | L_ | H_ } } },
	{ "equal times, clock backwards: the higher ids first",
	    "last=2", NULL, {
		{ "2024-01-01 10:00:00", 0, 0 },
		{ "2024-01-01 10:00:00", 0, L_ },
		{ "2024-01-01 09:00:00", 0, N_ | L_ } } },

	{ "UTC day boundary", "daily=5", NULL, {
		{ "2024-03-09 00:00:00.000", 0, 0 },
		{ "2024-03-09 23:59:59.999", 0, D_ },
		{ "2024-03-10 00:00:00.000", 0, N_ | D_ } } },
	/* 2024-03-31: Berlin goes from CET to CEST at 01:00 UTC, a 23-hour
	 * day from 2024-03-30 23:00 UTC to 2024-03-31 22:00 UTC. */
	{ "Berlin spring forward: local days", "daily=10", "Europe/Berlin", {
		{ "2024-03-30 22:59:59.999", 0, D_ },	 /* 03-30 23:59 CET */
		{ "2024-03-30 23:00:00.000", 0, 0 },	 /* 03-31 00:00 CET */
		{ "2024-03-31 21:59:59.999", 0, D_ },	 /* 03-31 23:59 CEST */
		{ "2024-03-31 22:00:00.000", 0, N_ | D_ } } }, /* 04-01 */
	{ "Berlin spring forward, same points in UTC", "daily=10", NULL, {
		{ "2024-03-30 22:59:59.999", 0, 0 },
		{ "2024-03-30 23:00:00.000", 0, D_ },
		{ "2024-03-31 21:59:59.999", 0, 0 },
		{ "2024-03-31 22:00:00.000", 0, N_ | D_ } } },
	/* 2024-10-27: CEST to CET at 01:00 UTC, a 25-hour day. */
	{ "Berlin fall back: local days", "daily=10", "Europe/Berlin", {
		{ "2024-10-26 21:59:59.999", 0, D_ },	 /* 10-26 23:59 CEST */
		{ "2024-10-26 22:00:00.000", 0, 0 },	 /* 10-27 00:00 CEST */
		{ "2024-10-27 22:59:59.999", 0, D_ },	 /* 10-27 23:59 CET */
		{ "2024-10-27 23:00:00.000", 0, N_ | D_ } } }, /* 10-28 */
	/* 02:00-02:59 happens twice that night; like restic's YYYYMMDDHH,
	 * both are one hour. */
	{ "Berlin fall back: the repeated hour is one hour", "hourly=5",
	    "Europe/Berlin", {
		{ "2024-10-26 23:30:00", 0, H_ },	/* 01:30 CEST */
		{ "2024-10-27 00:30:00", 0, 0 },	/* 02:30 CEST */
		{ "2024-10-27 01:30:00", 0, N_ | H_ } } }, /* 02:30 CET */
	{ "Berlin fall back: the repeated hour in UTC", "hourly=5", NULL, {
		{ "2024-10-27 00:00:00", 0, 0 },
		{ "2024-10-27 00:30:00", 0, H_ },
		{ "2024-10-27 01:30:00", 0, N_ | H_ } } },
	{ "Berlin: local months and years", "monthly=3,yearly=3",
	    "Europe/Berlin", {
		{ "2023-12-31 22:59:59.999", 0, M_ | Y_ }, /* 23:59 CET */
		{ "2023-12-31 23:00:00.000", 0, 0 },	   /* 01-01 00:00 */
		{ "2024-01-31 22:59:59.999", 0, N_ | M_ | Y_ } } },

	/* 2020-12-28 .. 2021-01-03 is ISO week 2020-W53. */
	{ "weekly across 2020/2021 (ISO 2020-W53)", "weekly=10", NULL, {
		{ "2020-12-27 23:59:59.999", 0, W_ },	/* Sun, 2020-W52 */
		{ "2020-12-28 00:00:00.000", 0, 0 },	/* Mon, 2020-W53 */
		{ "2020-12-31 12:00:00", 0, 0 },	/* Thu */
		{ "2021-01-03 23:59:59.999", 0, W_ },	/* Sun, 2020-W53 */
		{ "2021-01-04 00:00:00.000", 0, N_ | W_ } } }, /* 2021-W01 */
	/* 2024-12-30 .. 2025-01-05 is ISO week 2025-W01. */
	{ "weekly and yearly across 2024/2025 (ISO 2025-W01)",
	    "weekly=10,yearly=10", NULL, {
		{ "2024-12-29 12:00:00", 0, W_ },	/* Sun, 2024-W52 */
		{ "2024-12-30 10:00:00", 0, Y_ },	/* Mon, 2025-W01 */
		{ "2025-01-05 12:00:00", 0, N_ | W_ | Y_ } } },
	{ "monthly with a leap day", "monthly=2", NULL, {
		{ "2024-01-31 23:59:59.999", 0, 0 },
		{ "2024-02-01 00:00:00.000", 0, 0 },
		{ "2024-02-29 12:00:00", 0, M_ },
		{ "2024-03-01 00:00:00.000", 0, 0 },
		{ "2024-03-15 00:00:00", 0, N_ | M_ } } },
	{ "monthly=12 with three months of points", "monthly=12", NULL, {
		{ "2024-01-10 00:00:00", 0, M_ },
		{ "2024-03-10 00:00:00", 0, 0 },
		{ "2024-03-20 00:00:00", 0, M_ },
		{ "2024-06-10 00:00:00", 0, N_ | M_ } } },
	{ "yearly", "yearly=3", NULL, {
		{ "2021-06-01 00:00:00", 0, 0 },
		{ "2022-12-31 23:59:59.999", 0, Y_ },
		{ "2023-01-01 00:00:00.000", 0, 0 },
		{ "2023-07-01 00:00:00", 0, Y_ },
		{ "2024-02-01 00:00:00", 0, N_ | Y_ } } },

	{ "within=2d from the newest point's time (strictly after)",
	    "within=2d", NULL, {
		{ "2020-01-07 00:00:00.000", 0, 0 },
		{ "2020-01-08 00:00:00.000", 0, 0 },
		{ "2020-01-08 00:00:00.001", 0, WI_ },
		{ "2020-01-09 23:00:00.000", 0, WI_ },
		{ "2020-01-10 00:00:00.000", 0, N_ | WI_ } } },

	/* d1 10:00 app, d1 11:00, d2 09:00 app, d2 10:00 app, d2 11:00,
	 * d3 08:00 */
	{ "app:last counts only app points", "app:last=2", NULL, {
		{ "2024-01-01 10:00:00", 1, 0 },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-02 09:00:00", 1, AL_ },
		{ "2024-01-02 10:00:00", 1, AL_ },
		{ "2024-01-02 11:00:00", 0, 0 },
		{ "2024-01-03 08:00:00", 0, N_ } } },
	{ "app:daily counts days that have app points", "app:daily=2,daily=1",
	    NULL, {
		{ "2024-01-01 10:00:00", 1, AD_ },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-02 09:00:00", 1, 0 },
		{ "2024-01-02 10:00:00", 1, AD_ },
		{ "2024-01-02 11:00:00", 0, 0 },
		{ "2024-01-03 08:00:00", 0, N_ | D_ } } },
	{ "app: and plain last side by side", "app:last=1,last=1", NULL, {
		{ "2024-01-01 10:00:00", 1, 0 },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-02 09:00:00", 1, 0 },
		{ "2024-01-02 10:00:00", 1, AL_ },
		{ "2024-01-02 11:00:00", 0, 0 },
		{ "2024-01-03 08:00:00", 0, N_ | L_ } } },
	{ "every app: calendar rule", "app:hourly=1,app:weekly=1,"
	    "app:monthly=1,app:yearly=1", NULL, {
		{ "2024-01-01 10:00:00", 1, 0 },
		{ "2024-01-01 11:00:00", 0, 0 },
		{ "2024-01-02 09:00:00", 1, 0 },
		{ "2024-01-02 10:00:00", 1, AH_ | AW_ | AM_ | AY_ },
		{ "2024-01-02 11:00:00", 0, 0 },
		{ "2024-01-03 08:00:00", 0, N_ } } },

	{ "last=10 of 3 points", "last=10", NULL, {
		{ "2024-01-01 10:00:00", 0, L_ },
		{ "2024-01-01 11:00:00", 1, L_ },
		{ "2024-01-01 12:00:00", 0, N_ | L_ } } },
	{ "a combination keeps the union, with every reason",
	    "last=2,hourly=3,daily=2,within=90m", NULL, {
		{ "2024-01-01 10:00:00", 0, D_ },
		{ "2024-01-02 09:00:00", 0, H_ },
		{ "2024-01-02 10:00:00", 0, WI_ },
		{ "2024-01-02 10:30:00", 0, L_ | H_ | WI_ },
		{ "2024-01-02 11:00:00", 0, N_ | L_ | H_ | D_ | WI_ } } },
};

static void
run_case(const struct apply_case *c)
{
	struct ret_policy p;
	struct ret_point pts[MAXPTS];
	unsigned why[MAXPTS];
	size_t n;

	set_tz(c->tz != NULL ? c->tz : OTHER_TZ);
	memset(&p, 0, sizeof(p));
	if (c->policy != NULL)
		parse_ok(c->policy, c->tz != NULL, &p);
	for (n = 0; n < MAXPTS && c->pts[n].at != NULL; n++) {
		pts[n].id = n + 1;
		pts[n].created_ms = at(c->pts[n].at);
		pts[n].app = c->pts[n].app;
	}
	ret_apply(&p, pts, n, why);
	for (size_t i = 0; i < n; i++) {
		char got[RET_REASONS_STRLEN], want[RET_REASONS_STRLEN];

		if (why[i] == c->pts[i].want)
			continue;
		ret_reasons(why[i], got, sizeof(got));
		ret_reasons(c->pts[i].want, want, sizeof(want));
		fail_msg("%s: point %zu (%s): kept for \"%s\", expected "
		    "\"%s\"", c->name, i + 1, c->pts[i].at, got, want);
	}
}

static void
test_apply_table(void **state)
{
	for (size_t i = 0; i < sizeof(apply_cases) / sizeof(apply_cases[0]);
	    i++)
		run_case(&apply_cases[i]);
	set_tz("UTC");
}

/* Order of the input does not matter: the same table reversed. */
static void
test_apply_any_order(void **state)
{
	const struct apply_case *c = &apply_cases[0];
	struct ret_policy p;
	struct ret_point pts[MAXPTS];
	unsigned why[MAXPTS];
	size_t n;

	parse_ok(c->policy, 0, &p);
	for (n = 0; c->pts[n].at != NULL; n++)
		;
	for (size_t i = 0; i < n; i++) {
		pts[n - 1 - i].id = i + 1;
		pts[n - 1 - i].created_ms = at(c->pts[i].at);
		pts[n - 1 - i].app = 0;
	}
	ret_apply(&p, pts, n, why);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(why[n - 1 - i], c->pts[i].want);
}

static void
test_apply_empty_history(void **state)
{
	struct ret_policy p;
	struct ret_point pts[1] = { { 1, 0, 0 } };
	unsigned why[1] = { 12345 };

	parse_ok("last=24,daily=7,within=2d,app:last=3", 0, &p);
	ret_apply(&p, NULL, 0, NULL);
	ret_apply(&p, pts, 0, why);
	assert_int_equal(why[0], 12345);
	memset(&p, 0, sizeof(p));
	ret_apply(&p, NULL, 0, NULL);
}

/* Clocks at the ends of int64_t: no overflow, in UTC or in local time. */
static void
test_apply_extreme_times(void **state)
{
	struct ret_point pts[3] = { { 1, INT64_MIN, 1 }, { 2, 0, 0 },
	    { 3, INT64_MAX, 1 } };
	unsigned why[3];
	struct ret_policy p;

	for (int local_time = 0; local_time < 2; local_time++) {
		set_tz("Europe/Berlin");
		parse_ok("last=1,daily=3,yearly=3,within=1d,app:hourly=5",
		    local_time, &p);
		ret_apply(&p, pts, 3, why);
		assert_int_equal(why[0], D_ | Y_ | AH_);
		assert_int_equal(why[1], D_ | Y_);
		assert_int_equal(why[2], N_ | L_ | D_ | Y_ | WI_ | AH_);
	}
	set_tz("UTC");
}

/*
 * restic doc/060_forget.rst: "suppose you make one backup every day for
 * 100 years.  Then forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12
 * --keep-yearly 75 would keep the most recent 7 daily snapshots and 4
 * last-day-of-the-week ones (since the 7 dailies already include 1
 * weekly).  Additionally, 12 or 11 last-day-of-the-month snapshots ...
 * 75 or 74 last-day-of-the-year snapshots".  The newest is a Sunday here,
 * so those counts are exact: 7 + 4 + 11 + 73.
 */
static void
test_apply_restic_hundred_years(void **state)
{
	struct ret_policy p;
	int64_t first = at("1919-11-18 11:00:00"), last = at("2019-11-17 "
	    "11:00:00"), day = 86400000;
	size_t n = (size_t)((last - first) / day) + 1, kept = 0;
	struct ret_point *pts = calloc(n, sizeof(*pts));
	unsigned *why = calloc(n, sizeof(*why));

	assert_non_null(pts);
	assert_non_null(why);
	for (size_t i = 0; i < n; i++) {
		pts[i].id = i + 1;
		pts[i].created_ms = first + (int64_t)i * day;
	}
	parse_ok("daily=7,weekly=5,monthly=12,yearly=75", 0, &p);
	ret_apply(&p, pts, n, why);
	for (size_t i = 0; i < n; i++)
		kept += why[i] != 0;
	assert_int_equal(kept, 7 + 4 + 11 + 73);
	assert_int_equal(count_bits(why, n, RET_DAILY), 7);
	assert_int_equal(count_bits(why, n, RET_WEEKLY), 5);
	assert_int_equal(count_bits(why, n, RET_MONTHLY), 12);
	assert_int_equal(count_bits(why, n, RET_YEARLY), 75);
	/* Spot checks, by days before the newest. */
	assert_int_equal(why[n - 1], N_ | D_ | W_ | M_ | Y_);	/* 11-17 */
	assert_int_equal(why[n - 7], D_);			/* 11-11 */
	assert_int_equal(why[n - 8], W_);			/* 11-10 Sun */
	assert_int_equal(why[n - 9], 0);
	assert_int_equal(why[n - 29], W_);			/* 10-20 Sun */
	assert_int_equal(why[n - 36], 0);			/* 10-13 Sun */
	assert_int_equal(why[n - 18], M_);			/* 10-31 */
	assert_int_equal(why[n - 1 - 321], M_ | Y_);		/* 2018-12-31 */
	assert_int_equal(why[n - 1 - 321 - 365], Y_);		/* 2017-12-31 */
	assert_int_equal(pts[n - 1 - 321].created_ms, at("2018-12-31 11:00:00"));
	free(pts);
	free(why);
}

/* --- clock steps on the primary ---------------------------------------- */

/*
 * 65 points 5 minutes apart from 10:00; the primary's clock steps by
 * `step` ms before the 60th.  The ids the policy keeps, as "48,60-65".
 */
static const char *
kept_after_step(const char *policy, int64_t step)
{
	static char buf[256];
	struct ret_point pts[65];
	unsigned why[65];
	struct ret_policy p;
	size_t len = 0;

	for (size_t i = 0; i < 65; i++) {
		pts[i].id = i + 1;
		pts[i].created_ms = at("2024-05-02 10:00:00") +
		    (int64_t)i * 300000 + (i >= 59 ? step : 0);
		pts[i].app = 0;
	}
	parse_ok(policy, 0, &p);
	ret_apply(&p, pts, 65, why);
	buf[0] = '\0';
	for (size_t i = 0; i < 65; i++) {
		size_t j = i;
		if (why[i] == 0)
			continue;
		while (j + 1 < 65 && why[j + 1] != 0)
			j++;
		len += (size_t)snprintf(buf + len, sizeof(buf) - len,
		    j > i ? "%s%zu-%zu" : "%s%zu", len ? "," : "", i + 1,
		    j + 1);
		i = j;
	}
	return buf;
}

static void
test_apply_clock_steps(void **state)
{
	const int64_t day = 86400000LL;

	set_tz(OTHER_TZ);
	/* Back a day: the six newest are kept, not the six stamped latest;
	 * points 1-59 count at point 60's time (2024-05-01 14:55). */
	assert_string_equal(kept_after_step("last=6", -day), "60-65");
	assert_string_equal(kept_after_step("daily=2", -day), "65");
	assert_string_equal(kept_after_step("hourly=3", -day), "60,65");
	assert_string_equal(kept_after_step("within=30m", -day), "1-65");
	assert_string_equal(kept_after_step("within=20m", -day), "62-65");
	/* Back 12 minutes (point 60 at 14:43): points 58 and 59, stamped
	 * 14:45 and 14:50, count at 14:43; nothing else moves. */
	assert_string_equal(kept_after_step("last=6", -720000), "60-65");
	assert_string_equal(kept_after_step("hourly=3", -720000), "48,63,65");
	assert_string_equal(kept_after_step("within=26m", -720000), "58-65");
	/* Forward a day: nothing moves. */
	assert_string_equal(kept_after_step("last=6", day), "60-65");
	assert_string_equal(kept_after_step("daily=2", day), "59,65");
	assert_string_equal(kept_after_step("within=1h", day), "60-65");
	set_tz("UTC");
}

/* --- random histories against a slow reference ----------------------- */

static uint64_t rng_state;

static uint64_t
rng(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static uint64_t
test_seed(const char *what)
{
	const char *s = getenv("RET_TEST_SEED");
	uint64_t seed = s != NULL ? strtoull(s, NULL, 0) :
	    (uint64_t)time(NULL);

	printf("%s: seed %llu (RET_TEST_SEED to reproduce)\n", what,
	    (unsigned long long)seed);
	return seed;
}

/* The period of t for counting rule k, as strftime names it. */
static void
ref_period(int64_t ms, int local_time, int k, char *buf, size_t bufsz)
{
	time_t t = (time_t)(ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000));
	struct tm tm;

	if (local_time)
		localtime_r(&t, &tm);
	else
		gmtime_r(&t, &tm);
	switch (k) {
	case 1:
		strftime(buf, bufsz, "%Y-%m-%d %H", &tm);
		break;
	case 2:
		strftime(buf, bufsz, "%Y-%m-%d", &tm);
		break;
	case 3:
		strftime(buf, bufsz, "%G-W%V", &tm);	/* ISO 8601 week */
		break;
	case 4:
		strftime(buf, bufsz, "%Y-%m", &tm);
		break;
	default:
		strftime(buf, bufsz, "%Y", &tm);
		break;
	}
}

/* The order of points: their ids, nothing else. */
static int
ref_newer(const struct ret_point *a, const struct ret_point *b)
{
	return a->id > b->id;
}

/* The effective time of pts[i]: the lowest stamp of it and every newer
 * point. */
static int64_t
ref_effective(const struct ret_point *pts, size_t n, size_t i)
{
	int64_t t = pts[i].created_ms;

	for (size_t j = 0; j < n; j++)
		if (ref_newer(&pts[j], &pts[i]) && pts[j].created_ms < t)
			t = pts[j].created_ms;
	return t;
}

/*
 * Straight from the definitions, O(n^2): rule k with count N keeps a point
 * if it is the newest of its period (at effective times) and fewer than N
 * other periods have a newer newest point (for last=, fewer than N points
 * are newer).
 */
static void
ref_apply(const struct ret_policy *p, const struct ret_point *pts, size_t n,
    unsigned *why)
{
	size_t newest = 0;
	int64_t *eff = calloc(n + 1, sizeof(*eff));

	assert_non_null(eff);
	for (size_t i = 0; i < n; i++) {
		why[i] = 0;
		if (pts[i].id > pts[newest].id)
			newest = i;
		eff[i] = ref_effective(pts, n, i);
	}
	if (n == 0) {
		free(eff);
		return;
	}
	why[newest] |= RET_NEWEST;
	for (size_t i = 0; i < n; i++)
		if (p->within_ms != 0 &&
		    (uint64_t)eff[newest] - (uint64_t)eff[i] < p->within_ms)
			why[i] |= RET_WITHIN;
	for (int app = 0; app < 2; app++) {
		for (int k = 0; k < RET_NCOUNT; k++) {
			unsigned bit = (app ? RET_APP_LAST : RET_LAST) << k;
			uint32_t keep = p->keep[app][k];
			if (keep == 0)
				continue;
			for (size_t i = 0; i < n; i++) {
				char pi[32], pj[32];
				size_t newer = 0;
				int head = 1;
				if (app && !pts[i].app)
					continue;
				if (k > 0)
					ref_period(eff[i], p->local_time, k,
					    pi, sizeof(pi));
				for (size_t j = 0; j < n && head; j++) {
					if (j == i || (app && !pts[j].app) ||
					    !ref_newer(&pts[j], &pts[i]))
						continue;
					if (k == 0) {
						newer++;
						continue;
					}
					ref_period(eff[j], p->local_time, k,
					    pj, sizeof(pj));
					if (strcmp(pi, pj) == 0) {
						head = 0;
						continue;
					}
					/* count j if it heads its period */
					int jhead = 1;
					for (size_t m = 0; m < n && jhead;
					    m++) {
						char pm[32];
						if (m == j || (app && !pts[m].app)
						    || !ref_newer(&pts[m],
						    &pts[j]))
							continue;
						ref_period(eff[m],
						    p->local_time, k, pm,
						    sizeof(pm));
						if (strcmp(pm, pj) == 0)
							jhead = 0;
					}
					newer += jhead;
				}
				if (head && newer < keep)
					why[i] |= bit;
			}
		}
	}
	free(eff);
}

static void
random_policy(struct ret_policy *p, int local_time)
{
	memset(p, 0, sizeof(*p));
	p->local_time = local_time;
	for (int app = 0; app < 2; app++)
		for (int k = 0; k < RET_NCOUNT; k++)
			if (rng() % 3 == 0)
				p->keep[app][k] = (uint32_t)(1 + rng() % 6);
	if (rng() % 3 == 0)
		p->within_ms = 1 + rng() % (3ULL * 86400000);
}

static void
check_random(int local_time, int64_t base, int rounds)
{
	static const int64_t spans[] = { 3600000LL * 3, 86400000LL * 4,
	    86400000LL * 70, 86400000LL * 1200 };
	struct ret_point pts[40];
	unsigned why[40], want[40];
	struct ret_policy p;

	for (int round = 0; round < rounds; round++) {
		size_t n = (size_t)(rng() % 40) + 1;
		int64_t span = spans[rng() % 4];

		random_policy(&p, local_time);
		int stepped = rng() % 2;	/* else times at random */
		int64_t t = base - span / 2;
		for (size_t i = 0; i < n; i++) {
			pts[i].id = 100 + i;
			if (stepped) {
				/* a clock running on, stepped now and then */
				t += (int64_t)(rng() % (uint64_t)(span / 20 + 1));
				if (rng() % 6 == 0)
					t += (int64_t)(rng() % (uint64_t)span) -
					    span / 2;
				pts[i].created_ms = t;
			} else {
				pts[i].created_ms = base + (int64_t)(rng() %
				    (uint64_t)span) - span / 2;
			}
			if (i > 0 && rng() % 8 == 0)	/* equal times */
				pts[i].created_ms = pts[i - 1].created_ms;
			pts[i].app = rng() % 2;
		}
		for (size_t i = n - 1; i > 0; i--) {	/* any input order */
			size_t j = (size_t)(rng() % (i + 1));
			struct ret_point tmp = pts[i];
			pts[i] = pts[j];
			pts[j] = tmp;
		}
		ret_apply(&p, pts, n, why);
		ref_apply(&p, pts, n, want);
		for (size_t i = 0; i < n; i++) {
			char got[RET_REASONS_STRLEN], exp[RET_REASONS_STRLEN];
			char pol[RET_POLICY_STRLEN];

			if (why[i] == want[i])
				continue;
			ret_reasons(why[i], got, sizeof(got));
			ret_reasons(want[i], exp, sizeof(exp));
			ret_format(&p, pol, sizeof(pol));
			fail_msg("round %d, policy %s%s, point id %llu at "
			    "%lld app %d: \"%s\", reference \"%s\"", round,
			    pol, local_time ? " (local)" : "",
			    (unsigned long long)pts[i].id,
			    (long long)pts[i].created_ms, pts[i].app, got,
			    exp);
		}
	}
}

static void
test_apply_random_utc(void **state)
{
	rng_state = test_seed("random UTC histories");
	set_tz(OTHER_TZ);
	check_random(0, at("2020-12-31 12:00:00"), 400);
	check_random(0, at("1969-12-31 23:00:00"), 100);  /* negative times */
	set_tz("UTC");
}

static void
test_apply_random_berlin(void **state)
{
	rng_state = test_seed("random Berlin histories");
	set_tz("Europe/Berlin");
	check_random(1, at("2024-10-27 01:00:00"), 300);
	check_random(1, at("2024-03-31 01:00:00"), 300);
	set_tz("UTC");
}

/* --- a million points -------------------------------------------------- */

static void
test_apply_million(void **state)
{
	const size_t n = 1000000;
	struct ret_point *pts = calloc(n, sizeof(*pts));
	unsigned *why = calloc(n, sizeof(*why));
	struct ret_policy p;
	size_t newest = 0, i;
	int64_t base = at("2015-01-01 00:00:00");

	assert_non_null(pts);
	assert_non_null(why);
	rng_state = test_seed("a million points");
	/* Nine and a half years of a point every 5 minutes, by a clock
	 * stepped by up to a day either way now and then. */
	int64_t t = base;
	for (i = 0; i < n; i++) {
		pts[i].id = i + 1;
		t += 300000;
		if (rng() % 1000 == 0)
			t += (int64_t)(rng() % (2 * 86400000ULL)) - 86400000LL;
		pts[i].created_ms = t;
		pts[i].app = rng() % 4 == 0;
	}
	for (i = n - 1; i > 0; i--) {	/* stored in any order */
		size_t j = (size_t)(rng() % (i + 1));
		struct ret_point tmp = pts[i];
		pts[i] = pts[j];
		pts[j] = tmp;
	}
	for (i = 0; i < n; i++)
		if (pts[i].id > pts[newest].id)
			newest = i;

	parse_ok("last=1000,daily=30,app:last=77", 0, &p);
	ret_apply(&p, pts, n, why);
	assert_true(why[newest] & RET_NEWEST);
	assert_int_equal(count_bits(why, n, RET_NEWEST), 1);
	assert_int_equal(count_bits(why, n, RET_LAST), 1000);
	assert_int_equal(count_bits(why, n, RET_DAILY), 30);
	assert_int_equal(count_bits(why, n, RET_APP_LAST), 77);
	/* last= took the newest by id: every kept one is newer than every
	 * other one. */
	size_t oldest_kept = n, newest_dropped = n;
	for (i = 0; i < n; i++) {
		if (why[i] & RET_LAST) {
			if (oldest_kept == n ||
			    ref_newer(&pts[oldest_kept], &pts[i]))
				oldest_kept = i;
		} else if (newest_dropped == n ||
		    ref_newer(&pts[i], &pts[newest_dropped])) {
			newest_dropped = i;
		}
	}
	assert_true(ref_newer(&pts[oldest_kept], &pts[newest_dropped]));

	parse_ok("last=1000000", 0, &p);
	ret_apply(&p, pts, n, why);
	assert_int_equal(count_bits(why, n, RET_LAST), n);

	/* The whole policy of replicad.conf(5)'s example, in local time. */
	set_tz("Europe/Berlin");
	parse_ok("last=24,hourly=48,daily=30,weekly=8,monthly=12,yearly=2,"
	    "within=2d,app:daily=7", 1, &p);
	ret_apply(&p, pts, n, why);
	assert_true(why[newest] & RET_NEWEST);
	assert_int_equal(count_bits(why, n, RET_LAST), 24);
	assert_int_equal(count_bits(why, n, RET_HOURLY), 48);
	assert_int_equal(count_bits(why, n, RET_YEARLY), 2);
	assert_int_equal(count_bits(why, n, RET_APP_DAILY), 7);
	set_tz("UTC");
	free(pts);
	free(why);
}

/* --- parsing and formatting -------------------------------------------- */

#define EXPECTED_KINDS	"(expected [app:]last, hourly, daily, weekly, " \
			"monthly, yearly or within)"

static void
test_parse_errors(void **state)
{
	static const struct { const char *s, *msg; } c[] = {
		{ "minutely=5", "unknown rule 'minutely' " EXPECTED_KINDS },
		{ "last=1,app:within=1d",
		    "unknown rule 'app:within' " EXPECTED_KINDS },
		{ "app:=3", "unknown rule 'app:' " EXPECTED_KINDS },
		{ "last = 5", "unknown rule 'last ' " EXPECTED_KINDS },
		{ "last=0", "invalid count '0' in last= (1 to 1000000)" },
		{ "daily=1000001",
		    "invalid count '1000001' in daily= (1 to 1000000)" },
		{ "app:weekly=0",
		    "invalid count '0' in app:weekly= (1 to 1000000)" },
		{ "daily=99999999999999999999999", "invalid count "
		    "'99999999999999999999999' in daily= (1 to 1000000)" },
		{ "daily=7d", "invalid count '7d' in daily= (1 to 1000000)" },
		{ "daily=", "invalid count '' in daily= (1 to 1000000)" },
		{ "daily=-1", "invalid count '-1' in daily= (1 to 1000000)" },
		{ "last=1,last=2", "rule 'last' given twice" },
		{ "app:yearly=1,yearly=1,app:yearly=2",
		    "rule 'app:yearly' given twice" },
		{ "within=1d,within=2d", "rule 'within' given twice" },
		{ "last=1,,daily=2", "empty rule in 'last=1,,daily=2'" },
		{ "last=1,", "empty rule in 'last=1,'" },
		{ " , last=1", "empty rule in ' , last=1'" },
		{ "", "empty rule in ''" },
		{ "forever", "invalid rule 'forever' (expected KIND=COUNT or "
		    "within=DURATION)" },
		{ "app:daily", "invalid rule 'app:daily' (expected KIND=COUNT "
		    "or within=DURATION)" },
		{ "within=2w", "invalid duration '2w' in within=" },
		{ "within=0", "invalid duration '0' in within=" },
		{ "within=", "invalid duration '' in within=" },
		{ "within=99999999999999999999d",
		    "invalid duration '99999999999999999999d' in within=" },
	};
	struct ret_policy p, before;

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		char err[256] = "";

		memset(&p, 0xa5, sizeof(p));
		memcpy(&before, &p, sizeof(p));
		if (ret_parse(c[i].s, 0, &p, err, sizeof(err)) !=
		    RD_ERR_INVALID)
			fail_msg("ret_parse(\"%s\") accepted it", c[i].s);
		if (strcmp(err, c[i].msg) != 0)
			fail_msg("ret_parse(\"%s\"): \"%s\", expected \"%s\"",
			    c[i].s, err, c[i].msg);
		assert_memory_equal(&p, &before, sizeof(p));
	}
	/* No room for a message, or a short one: still an error. */
	assert_int_equal(ret_parse("last=0", 0, &p, NULL, 0), RD_ERR_INVALID);
	char small[8];
	assert_int_equal(ret_parse("last=0", 0, &p, small, sizeof(small)),
	    RD_ERR_INVALID);
	assert_string_equal(small, "invalid");
}

static void
test_parse_format(void **state)
{
	static const struct { const char *s, *norm; } c[] = {
		{ "last=24,hourly=48,daily=30,weekly=8,monthly=12,yearly=2,"
		    "within=2d,app:daily=7", NULL },
		{ " daily=7 ,\tlast=3\t", "last=3,daily=7" },
		{ "app:last=5,last=5", "last=5,app:last=5" },
		{ "app:yearly=1,app:monthly=2,app:weekly=3,app:daily=4,"
		    "app:hourly=5,app:last=6", "app:last=6,app:hourly=5,"
		    "app:daily=4,app:weekly=3,app:monthly=2,app:yearly=1" },
		{ "last=007", "last=7" },
		{ "last=1000000", NULL },
		{ "within=48h", "within=2d" },
		{ "within=90m", NULL },
		{ "within=3600000ms", "within=1h" },
		{ "within=1500ms", NULL },
		{ "within=30", "within=30s" },
		{ "within=86400", "within=1d" },
		{ "within=18446744073709551615ms", NULL },
	};
	char buf[RET_POLICY_STRLEN], again[RET_POLICY_STRLEN];
	struct ret_policy p, q;

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		const char *norm = c[i].norm != NULL ? c[i].norm : c[i].s;

		parse_ok(c[i].s, 1, &p);
		assert_int_equal(p.local_time, 1);
		ret_format(&p, buf, sizeof(buf));
		if (strcmp(buf, norm) != 0)
			fail_msg("ret_format(ret_parse(\"%s\")) = \"%s\", "
			    "expected \"%s\"", c[i].s, buf, norm);
		parse_ok(buf, 1, &q);
		assert_memory_equal(p.keep, q.keep, sizeof(p.keep));
		assert_true(p.within_ms == q.within_ms);
		ret_format(&q, again, sizeof(again));
		assert_string_equal(buf, again);
	}

	/* The longest policy fits RET_POLICY_STRLEN. */
	parse_ok("last=1000000,hourly=1000000,daily=1000000,weekly=1000000,"
	    "monthly=1000000,yearly=1000000,within=18446744073709551615ms,"
	    "app:last=1000000,app:hourly=1000000,app:daily=1000000,"
	    "app:weekly=1000000,app:monthly=1000000,app:yearly=1000000", 0,
	    &p);
	ret_format(&p, buf, sizeof(buf));
	assert_true(strlen(buf) + 1 < sizeof(buf));
	parse_ok(buf, 0, &q);
	assert_memory_equal(p.keep, q.keep, sizeof(p.keep));

	/* The empty policy, and truncation. */
	memset(&p, 0, sizeof(p));
	ret_format(&p, buf, sizeof(buf));
	assert_string_equal(buf, "");
	parse_ok("last=24,daily=30", 0, &p);
	ret_format(&p, buf, 10);
	assert_string_equal(buf, "last=24,d");
	assert_int_equal(p.local_time, 0);
}

static void
test_reasons(void **state)
{
	char buf[RET_REASONS_STRLEN];

	ret_reasons(0, buf, sizeof(buf));
	assert_string_equal(buf, "");
	ret_reasons(RET_NEWEST | RET_LAST | RET_DAILY, buf, sizeof(buf));
	assert_string_equal(buf, "newest,last,daily");
	ret_reasons(RET_WITHIN | RET_APP_DAILY | RET_PINNED, buf,
	    sizeof(buf));
	assert_string_equal(buf, "within,app:daily,pinned");
	ret_reasons(0xffffffffu, buf, sizeof(buf));
	assert_string_equal(buf, "newest,last,hourly,daily,weekly,monthly,"
	    "yearly,within,app:last,app:hourly,app:daily,app:weekly,"
	    "app:monthly,app:yearly,pinned");
	ret_reasons(RET_NEWEST | RET_LAST, buf, 8);
	assert_string_equal(buf, "newest,");
}

int
main(void)
{
	static const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_apply_table),
		cmocka_unit_test(test_apply_any_order),
		cmocka_unit_test(test_apply_empty_history),
		cmocka_unit_test(test_apply_extreme_times),
		cmocka_unit_test(test_apply_restic_hundred_years),
		cmocka_unit_test(test_apply_clock_steps),
		cmocka_unit_test(test_apply_random_utc),
		cmocka_unit_test(test_apply_random_berlin),
		cmocka_unit_test(test_apply_million),
		cmocka_unit_test(test_parse_errors),
		cmocka_unit_test(test_parse_format),
		cmocka_unit_test(test_reasons),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
