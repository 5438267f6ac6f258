/*
 * notify.c — the service manager's notification protocol (notify.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"
#include "xmalloc.h"

static int			 notify_fd = -1;
static struct sockaddr_un	 notify_addr;
static socklen_t		 notify_len;
static uint64_t			 notify_wd_usec;
static char			*notify_last;	/* STATUS= sent last */

void
notify_init(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	const char *wd = getenv("WATCHDOG_USEC");
	const char *wpid = getenv("WATCHDOG_PID");
	size_t len;

	if (wd != NULL && (wpid == NULL || strtol(wpid, NULL, 10) ==
	    (long)getpid())) {
		char *end;
		errno = 0;
		/* Digits only: strtoull() takes "-1" (as ULLONG_MAX) and
		 * leading blanks. */
		unsigned long long v = strtoull(wd, &end, 10);
		if (wd[0] >= '0' && wd[0] <= '9' && errno == 0 && *end == '\0')
			notify_wd_usec = v;
		else
			log_warnx("WATCHDOG_USEC=%s is not a number of "
			    "microseconds: no watchdog", wd);
	}
	if (path != NULL && (path[0] == '/' || path[0] == '@') &&
	    (len = strlen(path)) < sizeof(notify_addr.sun_path) && len > 1) {
		memset(&notify_addr, 0, sizeof(notify_addr));
		notify_addr.sun_family = AF_UNIX;
		memcpy(notify_addr.sun_path, path, len);
		if (path[0] == '@')
			notify_addr.sun_path[0] = '\0';	/* abstract */
		notify_len = (socklen_t)(offsetof(struct sockaddr_un,
		    sun_path) + len + (path[0] == '/'));
		/* Non-blocking: the loop sends, and a manager that does not
		 * read (its queue holds net.unix.max_dgram_qlen datagrams)
		 * must not stop it; a WATCHDOG=1 lost is sent again. */
		notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC |
		    SOCK_NONBLOCK, 0);
		if (notify_fd < 0)
			log_warn("cannot open a socket to notify the service "
			    "manager");
	} else if (path != NULL) {
		log_warnx("NOTIFY_SOCKET=%s is not a socket address: the "
		    "service manager is not notified", path);
	}
	if (notify_wd_usec > 0 && notify_fd < 0)
		notify_wd_usec = 0;
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

int
notify_enabled(void)
{
	return notify_fd >= 0;
}

uint64_t
notify_watchdog_usec(void)
{
	return notify_wd_usec;
}

int
notify_send(const char *text)
{
	if (notify_fd < 0)
		return 0;
	ssize_t n = sendto(notify_fd, text, strlen(text), MSG_NOSIGNAL,
	    (struct sockaddr *)&notify_addr, notify_len);
	if (n < 0) {
		log_debug("notify: %s", strerror(errno));
		return -1;
	}
	return 0;
}

void
notify_status(const char *line)
{
	if (notify_fd < 0 || (notify_last != NULL &&
	    strcmp(notify_last, line) == 0))
		return;
	char *msg = xasprintf("STATUS=%s", line);
	if (notify_send(msg) == 0) {
		free(notify_last);
		notify_last = xstrdup(line);
	}
	free(msg);
}

void
notify_fini(void)
{
	if (notify_fd >= 0)
		close(notify_fd);
	notify_fd = -1;
	free(notify_last);
	notify_last = NULL;
}
