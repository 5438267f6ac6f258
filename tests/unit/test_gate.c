/*
 * test_gate.c — admission bookkeeping: per-source and total budgets of
 * unauthenticated connections (the oldest gives way), the authenticated
 * budget kept apart, IPv6 sources grouped by /64, and the drop summary.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "gate.h"

static struct sockaddr_storage
addr(const char *s)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (strchr(s, ':')) {
		struct sockaddr_in6 *s6 = (void *)&ss;
		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, s, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (void *)&ss;
		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, s, &s4->sin_addr), 1);
	}
	return ss;
}

#define SA(ss)	((const struct sockaddr *)&(ss))

/* The ninth connection from one address pushes out that address's
 * first, not anyone else's. */
static void
test_per_source_oldest_goes(void **state)
{
	struct gate_limits lim = { 3, 100, 10, 4 };
	struct gate *g = gate_new(&lim);
	struct sockaddr_storage a = addr("192.0.2.1"), b = addr("192.0.2.2");
	struct gate_conn *c[4], *other;
	int owners[4], other_owner;
	void *victim;

	other = gate_enter(g, SA(b), &other_owner, &victim);
	assert_null(victim);
	for (int i = 0; i < 3; i++) {
		c[i] = gate_enter(g, SA(a), &owners[i], &victim);
		assert_null(victim);
	}
	c[3] = gate_enter(g, SA(a), &owners[3], &victim);
	assert_ptr_equal(victim, &owners[0]);
	gate_leave(g, c[0]);
	/* the next one pushes out the second, still not b's */
	struct gate_conn *c4 = gate_enter(g, SA(a), &owners[0], &victim);
	assert_ptr_equal(victim, &owners[1]);
	gate_leave(g, c[1]);
	gate_leave(g, c[2]);
	gate_leave(g, c[3]);
	gate_leave(g, c4);
	gate_leave(g, other);
	struct gate_counters k;
	gate_counters(g, &k);
	assert_int_equal(k.unauth, 0);
	gate_free(g);
}

/* A full table pushes out the oldest of all; authenticated sessions are
 * not in it, and cannot be pushed out by strangers. */
static void
test_total_and_authenticated(void **state)
{
	struct gate_limits lim = { 8, 4, 2, 4 };
	struct gate *g = gate_new(&lim);
	struct gate_conn *c[6];
	int owners[6];
	void *victim;
	char s[32];

	for (int i = 0; i < 2; i++) {
		snprintf(s, sizeof(s), "198.51.100.%d", i + 1);
		struct sockaddr_storage a = addr(s);
		c[i] = gate_enter(g, SA(a), &owners[i], &victim);
		assert_null(victim);
		assert_int_equal(gate_authenticated(g, c[i], "p", &victim), 0);
		assert_null(victim);
	}
	for (int i = 2; i < 6; i++) {
		snprintf(s, sizeof(s), "203.0.113.%d", i);
		struct sockaddr_storage a = addr(s);
		c[i] = gate_enter(g, SA(a), &owners[i], &victim);
		assert_null(victim);
	}
	struct sockaddr_storage n = addr("203.0.113.99");
	int new_owner;
	struct gate_conn *nc = gate_enter(g, SA(n), &new_owner, &victim);
	assert_ptr_equal(victim, &owners[2]);	/* oldest stranger */
	gate_leave(g, c[2]);
	/* the authenticated budget is full: the newcomer stays a stranger */
	assert_int_equal(gate_authenticated(g, nc, "p", &victim), -1);
	struct gate_counters k;
	gate_counters(g, &k);
	assert_int_equal(k.unauth, 4);
	assert_int_equal(k.auth, 2);
	gate_leave(g, c[0]);
	assert_int_equal(gate_authenticated(g, nc, "q", &victim), 0);
	gate_counters(g, &k);
	assert_int_equal(k.unauth, 3);
	assert_int_equal(k.auth, 2);
	for (int i = 1; i < 6; i++)
		if (i != 2)
			gate_leave(g, c[i]);
	gate_leave(g, nc);
	gate_counters(g, &k);
	assert_int_equal(k.unauth + k.auth, 0);
	gate_free(g);
}

/* IPv6 addresses of one /64 are one source; a v4-mapped address is
 * its IPv4 address. */
static void
test_ipv6_prefix(void **state)
{
	struct gate_limits lim = { 2, 100, 10, 4 };
	struct gate *g = gate_new(&lim);
	struct sockaddr_storage a = addr("2001:db8:1:2::1"),
	    b = addr("2001:db8:1:2:ffff::9"), c = addr("2001:db8:1:3::1"),
	    m = addr("::ffff:192.0.2.7"), v4 = addr("192.0.2.7");
	int o[5];
	void *victim;
	struct gate_conn *e[5];

	e[0] = gate_enter(g, SA(a), &o[0], &victim);
	e[1] = gate_enter(g, SA(c), &o[1], &victim);
	assert_null(victim);
	e[2] = gate_enter(g, SA(b), &o[2], &victim);
	assert_null(victim);
	e[3] = gate_enter(g, SA(a), &o[3], &victim);
	assert_ptr_equal(victim, &o[0]);
	gate_leave(g, e[0]);
	e[0] = gate_enter(g, SA(m), &o[0], &victim);
	e[4] = gate_enter(g, SA(v4), &o[4], &victim);
	assert_null(victim);
	struct gate_conn *x = gate_enter(g, SA(v4), &o[4], &victim);
	assert_ptr_equal(victim, &o[0]);
	for (int i = 0; i < 5; i++)
		gate_leave(g, e[i]);
	gate_leave(g, x);
	gate_free(g);
}

/* A burst is logged in full, the rest once in a summary that names the
 * count, the sources and the reasons; counters outlive the interval. */
static void
test_summary(void **state)
{
	struct gate *g = gate_new(NULL);
	char buf[512];
	int full = 0;

	assert_int_equal(gate_summary(g, 60, buf, sizeof(buf)), 0);
	for (int i = 0; i < 1000; i++) {
		char s[32];
		snprintf(s, sizeof(s), "10.0.%d.%d", i / 250, i % 250 / 10);
		struct sockaddr_storage a = addr(s);
		full += gate_note(g, SA(a), i < 990 ? GATE_EVICTED :
		    GATE_DEADLINE);
	}
	assert_int_equal(full, GATE_LOG_BURST);
	assert_int_equal(gate_summary(g, 60, buf, sizeof(buf)), 1);
	assert_non_null(strstr(buf, "dropped 1000 connections from 100 "
	    "sources"));
	assert_non_null(strstr(buf, "990 made room for newer ones"));
	assert_non_null(strstr(buf, "10 handshake deadline"));
	/* a new interval: nothing to say, a burst allowed again */
	assert_int_equal(gate_summary(g, 60, buf, sizeof(buf)), 0);
	struct sockaddr_storage a = addr("10.9.9.9");
	assert_int_equal(gate_note(g, SA(a), GATE_TLS), 1);
	assert_int_equal(gate_summary(g, 60, buf, sizeof(buf)), 0);
	struct gate_counters k;
	gate_counters(g, &k);
	assert_int_equal(k.dropped[GATE_EVICTED], 990);
	assert_int_equal(k.dropped[GATE_DEADLINE], 10);
	assert_int_equal(k.dropped[GATE_TLS], 1);
	gate_free(g);
}

/* When the total is full, the oldest connection of the source holding
 * the most gives way, not the oldest of all: a stranger churning from
 * many addresses pushes out its own connections, not an honest one. */
static void
test_total_busiest_source_goes(void **state)
{
	struct gate_limits lim = { 8, 6, 10, 4 };
	struct gate *g = gate_new(&lim);
	struct sockaddr_storage honest = addr("192.0.2.1"),
	    a1 = addr("203.0.113.1"), a2 = addr("203.0.113.2");
	struct gate_conn *c[7];
	int o[7];
	void *victim;

	c[0] = gate_enter(g, SA(honest), &o[0], &victim);	/* oldest */
	c[1] = gate_enter(g, SA(a1), &o[1], &victim);
	c[2] = gate_enter(g, SA(a2), &o[2], &victim);
	c[3] = gate_enter(g, SA(a2), &o[3], &victim);
	c[4] = gate_enter(g, SA(a1), &o[4], &victim);
	c[5] = gate_enter(g, SA(a2), &o[5], &victim);
	assert_null(victim);
	c[6] = gate_enter(g, SA(a1), &o[6], &victim);
	assert_ptr_equal(victim, &o[2]);	/* a2's oldest: a2 holds 3 */
	gate_leave(g, c[2]);
	struct gate_conn *x = gate_enter(g, SA(a2), &o[2], &victim);
	assert_ptr_equal(victim, &o[1]);	/* now a1 holds the most */
	gate_leave(g, c[1]);
	for (int i = 0; i < 7; i++)
		if (i != 1 && i != 2)
			gate_leave(g, c[i]);
	gate_leave(g, x);
	gate_free(g);
}

/* An accepted host's sessions not yet welcomed are capped per identity
 * (the oldest gives way); welcomed ones and other hosts' do not count. */
static void
test_per_identity(void **state)
{
	struct gate_limits lim = { 100, 100, 100, 2 };
	struct gate *g = gate_new(&lim);
	struct sockaddr_storage a = addr("192.0.2.1");
	struct gate_conn *c[5];
	int o[5];
	void *victim;

	for (int i = 0; i < 5; i++)
		c[i] = gate_enter(g, SA(a), &o[i], &victim);
	assert_int_equal(gate_authenticated(g, c[0], "pri", &victim), 0);
	assert_null(victim);
	gate_welcomed(g, c[0]);
	assert_int_equal(gate_authenticated(g, c[1], "PRI", &victim), 0);
	assert_null(victim);
	assert_int_equal(gate_authenticated(g, c[2], "other", &victim), 0);
	assert_null(victim);
	assert_int_equal(gate_authenticated(g, c[3], "pri", &victim), 0);
	assert_null(victim);
	assert_int_equal(gate_authenticated(g, c[4], "pri", &victim), 0);
	assert_ptr_equal(victim, &o[1]);	/* not the welcomed c[0] */
	gate_leave(g, c[1]);
	struct gate_counters k;
	gate_counters(g, &k);
	assert_int_equal(k.auth, 4);
	for (int i = 0; i < 5; i++)
		if (i != 1)
			gate_leave(g, c[i]);
	gate_counters(g, &k);
	assert_int_equal(k.auth + k.unauth, 0);
	gate_free(g);
}

/* The authenticated budget: GATE_AUTH at least, else a session for each
 * VM the accepted hosts may have and GATE_PER_IDENTITY per host. */
static void
test_limits_for(void **state)
{
	struct gate_limits lim;

	gate_limits_for(&lim, 64, 1);
	assert_int_equal(lim.auth, GATE_AUTH);
	assert_int_equal(lim.per_source, GATE_PER_SOURCE);
	assert_int_equal(lim.unauth, GATE_UNAUTH);
	assert_int_equal(lim.per_identity, GATE_PER_IDENTITY);
	gate_limits_for(&lim, 2000, 3);
	assert_int_equal(lim.auth, 2000 + 3 * GATE_PER_IDENTITY);
	gate_limits_for(&lim, UINT64_C(1) << 40, 1);
	assert_int_equal(lim.auth, UINT32_MAX);

	/* A host with 1500 VMs gets a session for each of them. */
	gate_limits_for(&lim, 1500, 1);
	struct gate *g = gate_new(&lim);
	struct gate_conn *c[1500];
	static int o[1500];
	void *victim;
	for (int i = 0; i < 1500; i++) {
		struct sockaddr_storage a = addr(i % 2 ? "192.0.2.1" :
		    "192.0.2.2");
		c[i] = gate_enter(g, SA(a), &o[i], &victim);
		assert_int_equal(gate_authenticated(g, c[i], "pri", &victim),
		    0);
		assert_null(victim);
		gate_welcomed(g, c[i]);
	}
	struct gate_counters k;
	gate_counters(g, &k);
	assert_int_equal(k.auth, 1500);
	for (int i = 0; i < 1500; i++)
		gate_leave(g, c[i]);
	gate_free(g);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_per_source_oldest_goes),
		cmocka_unit_test(test_total_and_authenticated),
		cmocka_unit_test(test_ipv6_prefix),
		cmocka_unit_test(test_summary),
		cmocka_unit_test(test_total_busiest_source_goes),
		cmocka_unit_test(test_per_identity),
		cmocka_unit_test(test_limits_for),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
