/*
 * par.c — helper threads for one job's data-parallel work (par.h).
 *
 * Open tasks sit in a list under one mutex; a helper takes the next part
 * of the first task with parts left, runs it unlocked and counts it done.
 * The caller takes parts the same way, then waits for the parts helpers
 * still run.  A task lives on its caller's stack: it leaves the list once
 * its last part is taken, and the caller returns only after the last
 * part is counted done, which is the last touch a helper makes.
 */
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include "log.h"
#include "par.h"

struct task {
	par_fn		 fn;
	void		*arg;
	size_t		 nparts;
	size_t		 next;		/* the next part to take */
	size_t		 done;		/* parts finished */
	pthread_cond_t	 finished;	/* done == nparts */
	struct task	*link;
};

static pthread_mutex_t	 par_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 par_work = PTHREAD_COND_INITIALIZER;
static struct task	*par_open;	/* tasks with parts left */
static pthread_t	 par_threads[PAR_MAX_HELPERS];
static int		 par_n;
static int		 par_stop;

/* With par_mtx held: take a part of t, unlinking t once none is left. */
static size_t
take(struct task *t)
{
	size_t i = t->next++;

	if (t->next == t->nparts) {
		struct task **pp = &par_open;
		while (*pp != t)
			pp = &(*pp)->link;
		*pp = t->link;
	}
	return i;
}

static void
run_part(struct task *t, size_t i)
{
	pthread_mutex_unlock(&par_mtx);
	t->fn(t->arg, i);
	pthread_mutex_lock(&par_mtx);
	if (++t->done == t->nparts)
		pthread_cond_signal(&t->finished);
}

static void *
helper_main(void *unused)
{
	pthread_mutex_lock(&par_mtx);
	for (;;) {
		while (par_open == NULL && !par_stop)
			pthread_cond_wait(&par_work, &par_mtx);
		if (par_stop)
			break;
		struct task *t = par_open;
		run_part(t, take(t));
	}
	pthread_mutex_unlock(&par_mtx);
	return NULL;
}

int
par_helpers_for_host(void)
{
	cpu_set_t set;
	/* The cores this process may run on (taskset, a cpuset), else all
	 * online ones. */
	long n = sched_getaffinity(0, sizeof(set), &set) == 0 ?
	    CPU_COUNT(&set) : sysconf(_SC_NPROCESSORS_ONLN);

	if (n <= 1)
		return 0;
	return n - 1 > PAR_MAX_HELPERS ? PAR_MAX_HELPERS : (int)n - 1;
}

void
par_init(int nhelpers)
{
	if (nhelpers > PAR_MAX_HELPERS)
		nhelpers = PAR_MAX_HELPERS;
	pthread_mutex_lock(&par_mtx);
	par_stop = 0;
	for (par_n = 0; par_n < nhelpers; par_n++)
		if (pthread_create(&par_threads[par_n], NULL, helper_main,
		    NULL) != 0)
			fatalx("cannot start a helper thread");
	pthread_mutex_unlock(&par_mtx);
}

void
par_run(par_fn fn, void *arg, size_t nparts)
{
	struct task t = { .fn = fn, .arg = arg, .nparts = nparts };

	if (nparts == 0)
		return;
	if (nparts == 1) {
		fn(arg, 0);
		return;
	}
	pthread_mutex_lock(&par_mtx);
	if (par_n == 0 || par_stop) {
		pthread_mutex_unlock(&par_mtx);
		for (size_t i = 0; i < nparts; i++)
			fn(arg, i);
		return;
	}
	pthread_cond_init(&t.finished, NULL);
	t.link = par_open;
	par_open = &t;
	pthread_cond_broadcast(&par_work);
	while (t.next < t.nparts)
		run_part(&t, take(&t));
	while (t.done < t.nparts)
		pthread_cond_wait(&t.finished, &par_mtx);
	pthread_mutex_unlock(&par_mtx);
	pthread_cond_destroy(&t.finished);
}

void
par_fini(void)
{
	pthread_mutex_lock(&par_mtx);
	int n = par_n;
	par_n = 0;
	par_stop = 1;
	pthread_cond_broadcast(&par_work);
	pthread_mutex_unlock(&par_mtx);
	for (int i = 0; i < n; i++)
		pthread_join(par_threads[i], NULL);
}
