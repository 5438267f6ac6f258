/*
 * test_par.c — helper threads: every part runs exactly once, par_run()
 * returns only after all have, several callers at once share the helpers
 * without losing a part, and with no helper the caller runs them in order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include <cmocka.h>

#include "par.h"

#define NPARTS	1000
#define CALLERS	4

struct job {
	int		 runs[NPARTS];
	pthread_t	 who[NPARTS];
	size_t		 order[NPARTS];
	size_t		 n;		/* parts finished, under mtx */
	pthread_mutex_t	 mtx;
};

static void
part(void *arg, size_t i)
{
	struct job *j = arg;

	if (i % 7 == 0)
		sched_yield();	/* finish out of order */
	__atomic_add_fetch(&j->runs[i], 1, __ATOMIC_RELAXED);
	j->who[i] = pthread_self();
	pthread_mutex_lock(&j->mtx);
	j->order[j->n++] = i;
	pthread_mutex_unlock(&j->mtx);
}

static void
job_init(struct job *j)
{
	memset(j, 0, sizeof(*j));
	pthread_mutex_init(&j->mtx, NULL);
}

static void
assert_each_once(const struct job *j)
{
	assert_int_equal(j->n, NPARTS);
	for (size_t i = 0; i < NPARTS; i++)
		assert_int_equal(j->runs[i], 1);
}

static void
test_no_helpers_in_order(void **state)
{
	struct job j;

	job_init(&j);
	par_run(part, &j, NPARTS);
	assert_each_once(&j);
	for (size_t i = 0; i < NPARTS; i++) {
		assert_int_equal(j.order[i], i);
		assert_true(pthread_equal(j.who[i], pthread_self()));
	}
	par_run(part, &j, 0);		/* nothing to do: returns */
	assert_int_equal(j.n, NPARTS);
}

struct meet {
	pthread_mutex_t	 mtx;
	pthread_cond_t	 cv;
	int		 started;
	pthread_t	 who[2];
};

static void
meet_part(void *arg, size_t i)
{
	struct meet *m = arg;

	pthread_mutex_lock(&m->mtx);
	m->who[i] = pthread_self();
	m->started++;
	pthread_cond_broadcast(&m->cv);
	while (m->started < 2)
		pthread_cond_wait(&m->cv, &m->mtx);
	pthread_mutex_unlock(&m->mtx);
}

static void *
caller(void *arg)
{
	par_run(part, arg, NPARTS);
	/* Returned: every part of this call has run, none twice. */
	assert_each_once(arg);
	return NULL;
}

static void
test_helpers_share(void **state)
{
	static struct job jobs[CALLERS];
	pthread_t th[CALLERS];

	par_init(3);
	for (int k = 0; k < CALLERS; k++) {
		job_init(&jobs[k]);
		assert_int_equal(pthread_create(&th[k], NULL, caller, &jobs[k]),
		    0);
	}
	for (int k = 0; k < CALLERS; k++)
		assert_int_equal(pthread_join(th[k], NULL), 0);
	for (int k = 0; k < CALLERS; k++)
		assert_each_once(&jobs[k]);

	/* Two parts that must run at once: the first waits for the second
	 * to start, so one of them runs on a helper (were the parts run by
	 * one thread alone, this would never return). */
	struct meet m = { .mtx = PTHREAD_MUTEX_INITIALIZER,
	    .cv = PTHREAD_COND_INITIALIZER };
	par_run(meet_part, &m, 2);
	assert_int_equal(m.started, 2);
	assert_false(pthread_equal(m.who[0], m.who[1]));
	par_fini();

	/* Stopped: the caller runs everything again. */
	struct job j;
	job_init(&j);
	par_run(part, &j, NPARTS);
	assert_each_once(&j);
	for (size_t i = 0; i < NPARTS; i++)
		assert_true(pthread_equal(j.who[i], pthread_self()));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_helpers_in_order),
		cmocka_unit_test(test_helpers_share),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
