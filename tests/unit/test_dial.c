/*
 * test_dial.c — turns for new connections: at most per_peer held for one
 * endpoint, the others served first come first served, endpoints apart,
 * a waiting turn that is given up leaves the queue, and go() may give
 * its turn back at once.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dial.h"

struct waiter {
	struct dial_turn	 t;
	int			 went;		/* go() calls */
	int			 order;		/* when it went */
	struct dialer		*d;
	int			 give_back;	/* dial_done() inside go() */
};

static int went_so_far;

static void
go(void *arg)
{
	struct waiter *w = arg;
	w->went++;
	w->order = ++went_so_far;
	if (w->give_back)
		dial_done(w->d, &w->t);
}

static void
test_per_peer_and_order(void **state)
{
	struct dialer *d = dial_new(2);
	struct waiter w[6];

	memset(w, 0, sizeof(w));
	went_so_far = 0;
	assert_int_equal(dial_take(d, &w[0].t, "r:1", go, &w[0]), 1);
	assert_int_equal(dial_take(d, &w[1].t, "r:1", go, &w[1]), 1);
	for (int i = 2; i < 5; i++)
		assert_int_equal(dial_take(d, &w[i].t, "r:1", go, &w[i]), 0);
	/* Another endpoint has turns of its own. */
	assert_int_equal(dial_take(d, &w[5].t, "r:2", go, &w[5]), 1);
	assert_int_equal(dial_holding(d, "r:1"), 2);
	assert_int_equal(dial_waiting(d, "r:1"), 3);
	assert_int_equal(dial_holding(d, "r:2"), 1);

	/* A waiting turn given up leaves the queue without going. */
	dial_done(d, &w[3].t);
	assert_int_equal(w[3].t.state, DIAL_NONE);
	assert_int_equal(dial_waiting(d, "r:1"), 2);

	dial_done(d, &w[0].t);
	assert_int_equal(w[2].went, 1);
	assert_int_equal(w[2].t.state, DIAL_HOLDING);
	assert_int_equal(w[4].went, 0);
	dial_done(d, &w[1].t);
	assert_int_equal(w[4].went, 1);
	assert_true(w[2].order < w[4].order);
	assert_int_equal(w[3].went, 0);
	assert_int_equal(dial_waiting(d, "r:1"), 0);

	/* Giving back twice, or a turn never taken, changes nothing. */
	dial_done(d, &w[1].t);
	dial_done(d, &w[3].t);
	assert_int_equal(dial_holding(d, "r:1"), 2);
	dial_done(d, &w[2].t);
	dial_done(d, &w[4].t);
	dial_done(d, &w[5].t);
	assert_int_equal(dial_holding(d, "r:1"), 0);
	assert_int_equal(dial_holding(d, "r:2"), 0);
	dial_free(d);
}

/* go() that gives its turn back at once (its connection failed before
 * it began): the next waiting ones go too, each once, in order. */
static void
test_give_back_inside_go(void **state)
{
	struct dialer *d = dial_new(1);
	struct waiter w[5];

	memset(w, 0, sizeof(w));
	went_so_far = 0;
	for (int i = 0; i < 5; i++) {
		w[i].d = d;
		w[i].give_back = i >= 1 && i <= 3;
		assert_int_equal(dial_take(d, &w[i].t, "r:1", go, &w[i]),
		    i == 0);
	}
	dial_done(d, &w[0].t);
	for (int i = 1; i < 5; i++) {
		assert_int_equal(w[i].went, 1);
		assert_int_equal(w[i].order, i);
	}
	assert_int_equal(w[4].t.state, DIAL_HOLDING);
	assert_int_equal(dial_holding(d, "r:1"), 1);
	assert_int_equal(dial_waiting(d, "r:1"), 0);
	dial_done(d, &w[4].t);
	assert_int_equal(dial_holding(d, "r:1"), 0);
	dial_free(d);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_per_peer_and_order),
		cmocka_unit_test(test_give_back_inside_go),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
