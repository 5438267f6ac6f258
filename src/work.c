/*
 * work.c — two pools of worker threads (work.h), completions handed back
 * to the libevent loop through one eventfd.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "work.h"
#include "xmalloc.h"

struct job {
	work_fn		 fn;
	work_fn		 done;
	void		*arg;
	int		 is_long;
	struct job	*next;
};

struct queue {
	struct job	*head;
	struct job	*tail;
};

/* One pool: its threads take jobs from its own queue only. */
struct pool {
	struct queue	 todo;
	pthread_cond_t	 cond;
	pthread_t	*threads;
	int		 nthreads;
};

static pthread_mutex_t	work_mtx = PTHREAD_MUTEX_INITIALIZER;
static struct pool	pools[2];	/* [0] short, [1] long */
static struct queue	finished;
static int		work_stopping;
static int		work_count;	/* queued + running + unreported */
static int		work_count_long;
static atomic_int	work_cancel_flag;
static int		work_efd = -1;
static struct event	*work_ev;

static void
q_push(struct queue *q, struct job *j)
{
	j->next = NULL;
	if (q->tail)
		q->tail->next = j;
	else
		q->head = j;
	q->tail = j;
}

static struct job *
q_pop(struct queue *q)
{
	struct job *j = q->head;
	if (j) {
		q->head = j->next;
		if (q->head == NULL)
			q->tail = NULL;
	}
	return j;
}

static void *
worker_main(void *arg)
{
	struct pool *p = arg;

	for (;;) {
		pthread_mutex_lock(&work_mtx);
		while (p->todo.head == NULL && !work_stopping)
			pthread_cond_wait(&p->cond, &work_mtx);
		struct job *j = q_pop(&p->todo);
		pthread_mutex_unlock(&work_mtx);
		if (j == NULL)
			return NULL;
		j->fn(j->arg);
		pthread_mutex_lock(&work_mtx);
		q_push(&finished, j);
		pthread_mutex_unlock(&work_mtx);
		uint64_t one = 1;
		while (write(work_efd, &one, sizeof(one)) < 0 && errno == EINTR)
			;
	}
}

/* In the loop thread: run the done() of every finished job. */
static void
run_finished(void)
{
	for (;;) {
		pthread_mutex_lock(&work_mtx);
		struct job *j = q_pop(&finished);
		pthread_mutex_unlock(&work_mtx);
		if (j == NULL)
			return;
		work_count--;
		if (j->is_long)
			work_count_long--;
		if (j->done)
			j->done(j->arg);
		free(j);
	}
}

static void
on_event(evutil_socket_t fd, short what, void *unused)
{
	uint64_t n;
	while (read(fd, &n, sizeof(n)) < 0 && errno == EINTR)
		;
	run_finished();
}

static void
pool_start(struct pool *p, int nthreads)
{
	pthread_cond_init(&p->cond, NULL);
	p->nthreads = nthreads;
	p->threads = xcalloc((size_t)nthreads, sizeof(*p->threads));
	for (int i = 0; i < nthreads; i++)
		if (pthread_create(&p->threads[i], NULL, worker_main, p))
			fatalx("cannot start worker thread");
}

void
work_init(struct event_base *base, int nshort, int nlong)
{
	work_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (work_efd < 0)
		fatal("eventfd");
	work_ev = event_new(base, work_efd, EV_READ | EV_PERSIST, on_event,
	    NULL);
	if (work_ev == NULL || event_add(work_ev, NULL) != 0)
		fatalx("cannot register the worker event");
	pool_start(&pools[0], nshort);
	pool_start(&pools[1], nlong);
}

static void
submit(int is_long, work_fn fn, work_fn done, void *arg)
{
	struct pool *p = &pools[is_long];
	struct job *j = xmalloc(sizeof(*j));

	j->fn = fn;
	j->done = done;
	j->arg = arg;
	j->is_long = is_long;
	work_count++;
	if (is_long)
		work_count_long++;
	pthread_mutex_lock(&work_mtx);
	q_push(&p->todo, j);
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&work_mtx);
}

void
work_submit(work_fn fn, work_fn done, void *arg)
{
	submit(0, fn, done, arg);
}

void
work_submit_long(work_fn fn, work_fn done, void *arg)
{
	submit(1, fn, done, arg);
}

int
work_pending(void)
{
	return work_count;
}

int
work_pending_long(void)
{
	return work_count_long;
}

void
work_cancel(void)
{
	atomic_store(&work_cancel_flag, 1);
}

int
work_cancelled(void)
{
	return atomic_load_explicit(&work_cancel_flag, memory_order_relaxed);
}

void
work_fini(void)
{
	if (pools[0].threads == NULL)
		return;
	pthread_mutex_lock(&work_mtx);
	work_stopping = 1;
	for (int k = 0; k < 2; k++)
		pthread_cond_broadcast(&pools[k].cond);
	pthread_mutex_unlock(&work_mtx);
	/* Threads drain their queue before they see work_stopping. */
	for (int k = 0; k < 2; k++) {
		for (int i = 0; i < pools[k].nthreads; i++)
			pthread_join(pools[k].threads[i], NULL);
		free(pools[k].threads);
		pools[k].threads = NULL;
		pthread_cond_destroy(&pools[k].cond);
	}
	run_finished();
	event_free(work_ev);
	close(work_efd);
}
