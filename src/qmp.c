/*
 * qmp.c — a small blocking QMP client (see qmp.h).
 *
 * QMP sends one JSON object per line ("\r\n"): first a greeting
 * {"QMP": {...}}, then, after {"execute": "qmp_capabilities"}, one reply
 * per command ({"return": ...} or {"error": {"class", "desc"}}, carrying
 * the command's "id") with asynchronous {"event": ...} lines anywhere in
 * between.  The socket is non-blocking; every wait is a poll() bounded by
 * the command's deadline.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "qmp.h"
#include "util.h"
#include "xmalloc.h"

struct qmp {
	int		 fd;
	int		 timeout_ms;
	int		 broken;
	int		 timed_out;	/* the last failure was a timeout */
	json_int_t	 next_id;
	char		*buf;		/* received, not yet parsed */
	size_t		 len;
	size_t		 cap;
	size_t		 scanned;	/* bytes of buf known to hold no '\n' */
};

/* "10 s" or "250 ms". */
static void
fmt_timeout(int ms, char *buf, size_t bufsz)
{
	if (ms % 1000 == 0)
		snprintf(buf, bufsz, "%d s", ms / 1000);
	else
		snprintf(buf, bufsz, "%d ms", ms);
}

/* Milliseconds left until deadline (0 once it passed). */
static int
left_ms(uint64_t deadline)
{
	uint64_t now = util_mono_ms();
	return now >= deadline ? 0 : (int)(deadline - now);
}

static int
fail(struct qmp *q, int r, char *err, size_t errsz, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The connection is unusable from now on. */
static int
fail(struct qmp *q, int r, char *err, size_t errsz, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errsz, fmt, ap);
	va_end(ap);
	q->broken = 1;
	return r;
}

static int
timed_out(struct qmp *q, const char *what, char *err, size_t errsz)
{
	char t[32];

	fmt_timeout(q->timeout_ms, t, sizeof(t));
	q->timed_out = 1;
	return fail(q, RD_ERR_PEER, err, errsz, "QMP: QEMU did not answer "
	    "'%s' within %s", what, t);
}

static int
send_all(struct qmp *q, const char *p, size_t len, uint64_t deadline,
    const char *what, char *err, size_t errsz)
{
	while (len > 0) {
		ssize_t n = send(q->fd, p, len, MSG_NOSIGNAL);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN)
			return fail(q, RD_ERR_PEER, err, errsz, "QMP: cannot "
			    "send '%s': %s", what, strerror(errno));
		struct pollfd pfd = { .fd = q->fd, .events = POLLOUT };
		int ms = left_ms(deadline);
		if (ms == 0 || poll(&pfd, 1, ms) == 0)
			return timed_out(q, what, err, errsz);
	}
	return 0;
}

/*
 * The next line from QEMU, without its end: *line points into q->buf and
 * stays valid until the next read.  *used is what to drop afterwards.
 */
static int
read_line(struct qmp *q, uint64_t deadline, const char *what, char **line,
    size_t *linelen, size_t *used, char *err, size_t errsz)
{
	for (;;) {
		char *nl = q->len > q->scanned ? memchr(q->buf + q->scanned,
		    '\n', q->len - q->scanned) : NULL;
		if (nl != NULL) {
			*line = q->buf;
			*linelen = (size_t)(nl - q->buf);
			*used = *linelen + 1;
			return 0;
		}
		q->scanned = q->len;
		if (q->len >= QMP_MAX_LINE)
			return fail(q, RD_ERR_TOO_LARGE, err, errsz, "QMP: a "
			    "message from QEMU is longer than %u MiB",
			    QMP_MAX_LINE >> 20);
		if (q->cap - q->len < 4096) {
			size_t cap = q->cap ? 2 * q->cap : 65536;
			if (cap > QMP_MAX_LINE + 4096)
				cap = QMP_MAX_LINE + 4096;
			q->buf = xreallocarray(q->buf, cap, 1);
			q->cap = cap;
		}
		size_t room = q->cap - q->len;
		if (room > QMP_MAX_LINE - q->len + 1)
			room = QMP_MAX_LINE - q->len + 1;
		ssize_t n = recv(q->fd, q->buf + q->len, room, 0);
		if (n > 0) {
			q->len += (size_t)n;
			continue;
		}
		if (n == 0)
			return fail(q, RD_ERR_PEER, err, errsz, "QMP: QEMU "
			    "closed the connection during '%s'", what);
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return fail(q, RD_ERR_PEER, err, errsz, "QMP: reading "
			    "the answer to '%s': %s", what, strerror(errno));
		struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
		int ms = left_ms(deadline);
		if (ms == 0 || poll(&pfd, 1, ms) == 0)
			return timed_out(q, what, err, errsz);
	}
}

static void
drop_line(struct qmp *q, size_t used)
{
	memmove(q->buf, q->buf + used, q->len - used);
	q->len -= used;
	q->scanned = 0;
	if (q->len == 0 && q->cap > (1u << 20)) {
		/* A huge answer is done with: do not keep its buffer. */
		free(q->buf);
		q->buf = NULL;
		q->cap = 0;
	}
}

/* QEMU's words on one line, control characters made spaces. */
static void
copy_line(char *dst, size_t dstsz, const char *src)
{
	size_t i;

	if (dstsz == 0)
		return;
	for (i = 0; i + 1 < dstsz && src[i] != '\0'; i++)
		dst[i] = (unsigned char)src[i] < 0x20 || src[i] == 0x7f ?
		    ' ' : src[i];
	dst[i] = '\0';
}

/* The next message that is not an event, as a JSON object (caller owns). */
static int
read_message(struct qmp *q, uint64_t deadline, const char *what,
    json_t **out, char *err, size_t errsz)
{
	for (;;) {
		char *line = NULL;
		size_t linelen = 0, used = 0;
		json_error_t jerr;
		int r;

		if ((r = read_line(q, deadline, what, &line, &linelen, &used,
		    err, errsz)) != 0)
			return r;
		while (linelen > 0 && (line[linelen - 1] == '\r' ||
		    line[linelen - 1] == ' '))
			linelen--;
		if (linelen == 0) {
			drop_line(q, used);
			continue;
		}
		json_t *msg = json_loadb(line, linelen, 0, &jerr);
		drop_line(q, used);
		if (msg == NULL) {
			/* jansson quotes the input: keep it on one line. */
			char why[sizeof(jerr.text)];
			copy_line(why, sizeof(why), jerr.text);
			return fail(q, RD_ERR_INVALID, err, errsz, "QMP: invalid "
			    "JSON from QEMU in the answer to '%s': %s (column "
			    "%d)", what, why, jerr.column);
		}
		if (!json_is_object(msg)) {
			json_decref(msg);
			return fail(q, RD_ERR_INVALID, err, errsz, "QMP: a "
			    "message from QEMU is not a JSON object");
		}
		if (json_object_get(msg, "event") != NULL) {
			json_decref(msg);
			continue;
		}
		*out = msg;
		return 0;
	}
}

int
qmp_call(struct qmp *q, const char *cmd, json_t *args, json_t **ret,
    char *err, size_t errsz)
{
	json_t *req = NULL, *reply = NULL, *v;
	char *text = NULL;
	json_int_t id;
	int r;

	if (ret != NULL)
		*ret = NULL;
	if (q->broken) {
		json_decref(args);
		snprintf(err, errsz, "QMP: the connection to QEMU is closed");
		return RD_ERR_STATE;
	}
	uint64_t deadline = util_mono_ms() + (uint64_t)q->timeout_ms;
	id = q->next_id++;
	req = json_pack("{s:s, s:I}", "execute", cmd, "id", id);
	if (req == NULL || (args != NULL &&
	    json_object_set_new(req, "arguments", args) != 0))
		fatalx("QMP: cannot build the command '%s'", cmd);
	args = NULL;
	if ((text = json_dumps(req, JSON_COMPACT)) == NULL)
		fatalx("QMP: cannot encode the command '%s'", cmd);
	size_t n = strlen(text);
	text = xreallocarray(text, n + 2, 1);
	memcpy(text + n, "\n", 2);
	if ((r = send_all(q, text, n + 1, deadline, cmd, err, errsz)) != 0)
		goto out;
	if ((r = read_message(q, deadline, cmd, &reply, err, errsz)) != 0)
		goto out;
	v = json_object_get(reply, "id");
	if (!json_is_integer(v) || json_integer_value(v) != id) {
		r = fail(q, RD_ERR_INVALID, err, errsz, "QMP: QEMU's answer to "
		    "'%s' is not for that command", cmd);
		goto out;
	}
	if ((v = json_object_get(reply, "return")) != NULL) {
		if (ret != NULL)
			*ret = json_incref(v);
		r = 0;
		goto out;
	}
	v = json_object_get(reply, "error");
	if (json_is_object(v)) {
		const char *desc = json_string_value(json_object_get(v,
		    "desc"));
		if (desc == NULL || *desc == '\0')
			snprintf(err, errsz, "QEMU refused '%s' without saying "
			    "why", cmd);
		else
			copy_line(err, errsz, desc);
		r = RD_ERR_PEER;
		goto out;
	}
	r = fail(q, RD_ERR_INVALID, err, errsz, "QMP: QEMU's answer to '%s' "
	    "has neither a return value nor an error", cmd);
 out:
	json_decref(reply);
	json_decref(req);
	json_decref(args);
	free(text);
	return r;
}

int
qmp_broken(const struct qmp *q)
{
	return q->broken;
}

static int
connect_unix(const char *path, uint64_t deadline, int *fd, char *err,
    size_t errsz)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errsz, "QMP socket %s: path longer than %zu "
		    "bytes", path, sizeof(sun.sun_path) - 1);
		return RD_ERR_TOO_LARGE;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	*fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (*fd < 0) {
		snprintf(err, errsz, "QMP socket %s: %s", path,
		    strerror(errno));
		return RD_ERR_SYSTEM;
	}
	/* A full listen queue makes a non-blocking connect fail with
	 * EAGAIN: try again until the deadline. */
	while (connect(*fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN || left_ms(deadline) == 0) {
			snprintf(err, errsz, "QMP socket %s: %s", path,
			    errno == EAGAIN ? "QEMU does not accept "
			    "connections (another client connected?)" :
			    strerror(errno));
			close(*fd);
			*fd = -1;
			return errno == ENOENT ? RD_ERR_NOT_FOUND :
			    RD_ERR_PEER;
		}
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return 0;
}

int
qmp_open(const char *path, int timeout_ms, struct qmp **out, char *err,
    size_t errsz)
{
	struct qmp *q = xcalloc(1, sizeof(*q));
	json_t *greeting = NULL;
	char why[512], t[32];
	int r;

	q->fd = -1;
	q->timeout_ms = timeout_ms;
	q->next_id = 1;
	uint64_t deadline = util_mono_ms() + (uint64_t)timeout_ms;
	if ((r = connect_unix(path, deadline, &q->fd, err, errsz)) != 0)
		goto out;
	r = read_message(q, deadline, "greeting", &greeting, why, sizeof(why));
	if (r != 0) {
		fmt_timeout(timeout_ms, t, sizeof(t));
		if (q->timed_out)
			snprintf(err, errsz, "QMP socket %s: no greeting from "
			    "QEMU within %s (another QMP client connected?)",
			    path, t);
		else
			snprintf(err, errsz, "QMP socket %s: %s", path, why);
		goto out;
	}
	if (!json_is_object(json_object_get(greeting, "QMP"))) {
		snprintf(err, errsz, "QMP socket %s: not a QMP greeting", path);
		r = RD_ERR_INVALID;
		goto out;
	}
	if ((r = qmp_call(q, "qmp_capabilities", NULL, NULL, why,
	    sizeof(why))) != 0) {
		snprintf(err, errsz, "QMP socket %s: %s", path, why);
		goto out;
	}
	*out = q;
	q = NULL;
	r = 0;
 out:
	json_decref(greeting);
	qmp_close(q);
	return r;
}

void
qmp_close(struct qmp *q)
{
	if (q == NULL)
		return;
	if (q->fd >= 0)
		close(q->fd);
	free(q->buf);
	free(q);
}
