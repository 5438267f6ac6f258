/*
 * work.c — worker threads with completions handed back to the libevent
 * loop through an eventfd.
 */
#include <errno.h>
#include <pthread.h>
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
	struct job	*next;
};

struct queue {
	struct job	*head;
	struct job	*tail;
};

static pthread_mutex_t	work_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	work_cond = PTHREAD_COND_INITIALIZER;
static struct queue	todo, finished;
static int		work_stopping;
static int		work_count;	/* queued + running + unreported */
static int		work_efd = -1;
static struct event	*work_ev;
static pthread_t	*work_threads;
static int		work_nthreads;

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
worker_main(void *unused)
{
	for (;;) {
		pthread_mutex_lock(&work_mtx);
		while (todo.head == NULL && !work_stopping)
			pthread_cond_wait(&work_cond, &work_mtx);
		struct job *j = q_pop(&todo);
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

void
work_init(struct event_base *base, int nthreads)
{
	work_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (work_efd < 0)
		fatal("eventfd");
	work_ev = event_new(base, work_efd, EV_READ | EV_PERSIST, on_event,
	    NULL);
	if (work_ev == NULL || event_add(work_ev, NULL) != 0)
		fatalx("cannot register the worker event");
	work_nthreads = nthreads;
	work_threads = xcalloc((size_t)nthreads, sizeof(*work_threads));
	for (int i = 0; i < nthreads; i++)
		if (pthread_create(&work_threads[i], NULL, worker_main, NULL))
			fatalx("cannot start worker thread");
}

void
work_submit(work_fn fn, work_fn done, void *arg)
{
	struct job *j = xmalloc(sizeof(*j));
	j->fn = fn;
	j->done = done;
	j->arg = arg;
	work_count++;
	pthread_mutex_lock(&work_mtx);
	q_push(&todo, j);
	pthread_cond_signal(&work_cond);
	pthread_mutex_unlock(&work_mtx);
}

int
work_pending(void)
{
	return work_count;
}

void
work_fini(void)
{
	if (work_threads == NULL)
		return;
	pthread_mutex_lock(&work_mtx);
	work_stopping = 1;
	pthread_cond_broadcast(&work_cond);
	pthread_mutex_unlock(&work_mtx);
	/* Threads drain the queue before they see work_stopping. */
	for (int i = 0; i < work_nthreads; i++)
		pthread_join(work_threads[i], NULL);
	run_finished();
	event_free(work_ev);
	close(work_efd);
	free(work_threads);
	work_threads = NULL;
}
