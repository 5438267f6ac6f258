/*
 * fault.c — REPLICAD_FAULT crash and hold points (see fault.h).
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"

static pthread_once_t fault_once = PTHREAD_ONCE_INIT;
static const char *fault_name;

static void
fault_load(void)
{
	fault_name = getenv("REPLICAD_FAULT");
	if (fault_name && *fault_name == '\0')
		fault_name = NULL;
}

void
fault_point(const char *name)
{
	pthread_once(&fault_once, fault_load);
	if (fault_name == NULL || strcmp(fault_name, name) != 0)
		return;
	log_warnx("fault point %s reached: killing myself", name);
	kill(getpid(), SIGKILL);
	pause();
}

void
fault_hold(const char *name)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };
	const char *release;

	pthread_once(&fault_once, fault_load);
	if (fault_name == NULL || strcmp(fault_name, name) != 0)
		return;
	if ((release = getenv("REPLICAD_FAULT_RELEASE")) == NULL) {
		log_warnx("fault point %s reached: no REPLICAD_FAULT_RELEASE, "
		    "going on", name);
		return;
	}
	log_warnx("fault point %s reached: holding until %s exists", name,
	    release);
	while (access(release, F_OK) != 0)
		nanosleep(&ts, NULL);
	log_warnx("fault point %s released", name);
}
