/*
 * test_qmp.c — the QMP client against a fake QEMU: a thread that serves
 * one connection on a UNIX socket in a temporary directory and plays a
 * script (send this, expect a command, drip bytes, close, stay silent).
 * Good exchanges give the return value; every bad one (error reply,
 * events first, split writes, over-long line, invalid JSON, a close
 * mid-reply, silence) gives one clear error and no crash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "qmp.h"

#define GREETING \
	"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, " \
	"\"major\": 7}}, \"capabilities\": [\"oob\"]}}\r\n"
#define EVENT \
	"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, " \
	"\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": " \
	"\"running\", \"id\": \"j\"}}\r\n"
#define SHORT_MS	300

enum op {
	OP_END,
	OP_SEND,	/* text; "@" stands for the id of the last command */
	OP_DRIP,	/* text, one byte per write */
	OP_EXPECT,	/* read a command line: its "execute" must be text */
	OP_BIG,		/* n bytes of '[' with no end of line */
	OP_CLOSE,
	OP_SILENT,	/* read and answer nothing until the client closes */
};

struct step {
	enum op		 op;
	const char	*text;
	size_t		 n;
};

struct server {
	char		 dir[32];
	char		 path[100];
	int		 lfd;
	const struct step *script;
	pthread_t	 thread;
	char		 failure[256];	/* what went wrong on the server side */
	char		 last_id[32];
};

static const struct step greet_caps[] = {
	{ OP_SEND, GREETING, 0 },
	{ OP_EXPECT, "qmp_capabilities", 0 },
	{ OP_SEND, "{\"return\": {}, \"id\": @}\r\n", 0 },
};

static int
write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* One line from fd (without its end) into buf. */
static int
read_cmd(int fd, char *buf, size_t bufsz)
{
	size_t len = 0;

	while (len + 1 < bufsz) {
		ssize_t n = read(fd, buf + len, 1);
		if (n <= 0)
			return -1;
		if (buf[len] == '\n') {
			buf[len] = '\0';
			return 0;
		}
		len++;
	}
	return -1;
}

static void
send_text(struct server *s, int fd, const char *text, int drip)
{
	char out[4096];
	size_t o = 0;

	for (const char *p = text; *p != '\0' && o + 32 < sizeof(out); p++) {
		if (*p == '@') {
			o += (size_t)snprintf(out + o, sizeof(out) - o, "%s",
			    s->last_id);
		} else {
			out[o++] = *p;
		}
	}
	if (!drip) {
		write_all(fd, out, o);
		return;
	}
	for (size_t i = 0; i < o; i++) {
		struct timespec ts = { 0, 200 * 1000 };
		write_all(fd, out + i, 1);
		nanosleep(&ts, NULL);
	}
}

static void
expect_cmd(struct server *s, int fd, const char *what)
{
	char line[4096], want[128];
	json_error_t jerr;

	if (read_cmd(fd, line, sizeof(line)) != 0) {
		snprintf(s->failure, sizeof(s->failure), "no command line "
		    "(expected %s)", what);
		return;
	}
	json_t *cmd = json_loads(line, 0, &jerr);
	const char *ex = json_string_value(json_object_get(cmd, "execute"));
	json_t *id = json_object_get(cmd, "id");
	snprintf(want, sizeof(want), "%s", what);
	if (ex == NULL || strcmp(ex, want) != 0 || !json_is_integer(id))
		snprintf(s->failure, sizeof(s->failure), "got %.100s, expected %s",
		    line, what);
	else
		snprintf(s->last_id, sizeof(s->last_id), "%lld",
		    (long long)json_integer_value(id));
	json_decref(cmd);
}

static void *
serve(void *arg)
{
	struct server *s = arg;
	int fd = accept(s->lfd, NULL, NULL);
	char c;

	if (fd < 0) {
		snprintf(s->failure, sizeof(s->failure), "accept: %s",
		    strerror(errno));
		return NULL;
	}
	for (const struct step *st = s->script; st->op != OP_END; st++) {
		switch (st->op) {
		case OP_SEND:
			send_text(s, fd, st->text, 0);
			break;
		case OP_DRIP:
			send_text(s, fd, st->text, 1);
			break;
		case OP_EXPECT:
			expect_cmd(s, fd, st->text);
			break;
		case OP_BIG: {
			char *big = malloc(st->n);
			memset(big, '[', st->n);
			write_all(fd, big, st->n);
			free(big);
			break;
		}
		case OP_CLOSE:
			close(fd);
			return NULL;
		case OP_SILENT:
		case OP_END:
			break;
		}
	}
	/* Drain until the client goes away. */
	while (read(fd, &c, 1) > 0)
		;
	close(fd);
	return NULL;
}

/* Listen in a new directory and serve the script: the greeting and
 * capabilities exchange first unless raw is set. */
static void
server_start(struct server *s, const struct step *body, size_t nbody,
    int raw)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t n = 0;
	struct step *script = calloc(nbody + 4, sizeof(*script));

	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "/tmp/test_qmp.XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	snprintf(s->path, sizeof(s->path), "%s/qmp.sock", s->dir);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", s->path);
	s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->lfd >= 0);
	assert_int_equal(bind(s->lfd, (struct sockaddr *)&sun, sizeof(sun)),
	    0);
	assert_int_equal(listen(s->lfd, 1), 0);
	if (!raw)
		for (size_t i = 0; i < 3; i++)
			script[n++] = greet_caps[i];
	for (size_t i = 0; i < nbody; i++)
		script[n++] = body[i];
	script[n].op = OP_END;
	s->script = script;
	assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
}

static void
server_stop(struct server *s)
{
	pthread_join(s->thread, NULL);
	close(s->lfd);
	unlink(s->path);
	rmdir(s->dir);
	free((void *)s->script);
	if (s->failure[0] != '\0')
		fail_msg("fake QEMU: %s", s->failure);
}

static struct qmp *
open_ok(struct server *s, int timeout_ms)
{
	struct qmp *q = NULL;
	char err[512] = "";
	int r = qmp_open(s->path, timeout_ms, &q, err, sizeof(err));

	if (r != 0)
		fail_msg("qmp_open: %d %s", r, err);
	return q;
}

static void
test_return_value(void **state)
{
	static const struct step body[] = {
		{ OP_EXPECT, "query-status", 0 },
		{ OP_SEND, "{\"return\": {\"status\": \"running\", "
		    "\"running\": true}, \"id\": @}\r\n", 0 },
		{ OP_EXPECT, "stop", 0 },
		{ OP_SEND, "{\"return\": {}, \"id\": @}\r\n", 0 },
	};
	struct server s;
	json_t *ret = NULL;
	char err[256] = "";

	server_start(&s, body, 2 * 2, 0);
	struct qmp *q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-status", NULL, &ret, err,
	    sizeof(err)), 0);
	assert_string_equal(json_string_value(json_object_get(ret, "status")),
	    "running");
	json_decref(ret);
	assert_int_equal(qmp_call(q, "stop", json_pack("{s:b}", "x", 1),
	    NULL, err, sizeof(err)), 0);
	assert_false(qmp_broken(q));
	qmp_close(q);
	server_stop(&s);
}

static void
test_error_reply(void **state)
{
	static const struct step body[] = {
		{ OP_EXPECT, "block-dirty-bitmap-add", 0 },
		{ OP_SEND, "{\"id\": @, \"error\": {\"class\": \"GenericError\", "
		    "\"desc\": \"Bitmap already exists: replicad.3\"}}\r\n", 0 },
		{ OP_EXPECT, "query-jobs", 0 },
		{ OP_SEND, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
		    "\"two\\nlines\\u0007\"}, \"id\": @}\r\n", 0 },
		{ OP_EXPECT, "query-jobs", 0 },
		{ OP_SEND, "{\"return\": [], \"id\": @}\r\n", 0 },
	};
	struct server s;
	json_t *ret = NULL;
	char err[256] = "";

	server_start(&s, body, 6, 0);
	struct qmp *q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "block-dirty-bitmap-add", json_pack(
	    "{s:s, s:s}", "node", "drive0", "name", "replicad.3"), &ret, err,
	    sizeof(err)), RD_ERR_PEER);
	assert_null(ret);
	assert_string_equal(err, "Bitmap already exists: replicad.3");
	assert_false(qmp_broken(q));
	assert_int_equal(qmp_call(q, "query-jobs", NULL, NULL, err,
	    sizeof(err)), RD_ERR_PEER);
	assert_string_equal(err, "two lines ");
	/* A refusal leaves the connection usable. */
	assert_int_equal(qmp_call(q, "query-jobs", NULL, &ret, err,
	    sizeof(err)), 0);
	assert_true(json_is_array(ret));
	json_decref(ret);
	qmp_close(q);
	server_stop(&s);
}

static void
test_events_first(void **state)
{
	static const struct step body[] = {
		{ OP_SEND, EVENT, 0 },
		{ OP_EXPECT, "query-block-jobs", 0 },
		{ OP_SEND, EVENT EVENT "\r\n" EVENT, 0 },
		{ OP_SEND, "{\"return\": [1, 2], \"id\": @}\r\n" EVENT, 0 },
		{ OP_EXPECT, "query-block-jobs", 0 },
		{ OP_SEND, "{\"return\": [3], \"id\": @}\r\n", 0 },
	};
	struct server s;
	json_t *ret = NULL;
	char err[256] = "";

	server_start(&s, body, 6, 0);
	struct qmp *q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-block-jobs", NULL, &ret, err,
	    sizeof(err)), 0);
	assert_int_equal(json_array_size(ret), 2);
	json_decref(ret);
	assert_int_equal(qmp_call(q, "query-block-jobs", NULL, &ret, err,
	    sizeof(err)), 0);
	assert_int_equal(json_integer_value(json_array_get(ret, 0)), 3);
	json_decref(ret);
	qmp_close(q);
	server_stop(&s);
}

static void
test_split_writes(void **state)
{
	static const struct step body[] = {
		{ OP_DRIP, GREETING, 0 },
		{ OP_EXPECT, "qmp_capabilities", 0 },
		{ OP_DRIP, "{\"return\": {}, \"id\": @}\r\n", 0 },
		{ OP_EXPECT, "query-named-block-nodes", 0 },
		{ OP_DRIP, EVENT "{\"return\": [{\"node-name\": \"drive0\", "
		    "\"drv\": \"raw\"}], \"id\": @}\r\n", 0 },
	};
	struct server s;
	json_t *ret = NULL;
	char err[256] = "";

	server_start(&s, body, 5, 1);
	struct qmp *q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-named-block-nodes", NULL, &ret,
	    err, sizeof(err)), 0);
	assert_string_equal(json_string_value(json_object_get(json_array_get(
	    ret, 0), "node-name")), "drive0");
	json_decref(ret);
	qmp_close(q);
	server_stop(&s);
}

static void
test_long_line(void **state)
{
	static const struct step body[] = {
		{ OP_EXPECT, "query-named-block-nodes", 0 },
		{ OP_BIG, NULL, QMP_MAX_LINE + 100 },
	};
	struct server s;
	json_t *ret = NULL;
	char err[256] = "";

	server_start(&s, body, 2, 0);
	struct qmp *q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-named-block-nodes", NULL, &ret,
	    err, sizeof(err)), RD_ERR_TOO_LARGE);
	assert_null(ret);
	assert_string_equal(err, "QMP: a message from QEMU is longer than 16 "
	    "MiB");
	assert_true(qmp_broken(q));
	/* A broken handle refuses at once. */
	assert_int_equal(qmp_call(q, "query-jobs", NULL, &ret, err,
	    sizeof(err)), RD_ERR_STATE);
	qmp_close(q);
	server_stop(&s);
}

static void
test_invalid_json(void **state)
{
	static const struct step body[] = {
		{ OP_EXPECT, "query-jobs", 0 },
		{ OP_SEND, "{\"return\": [1, 2,, \"id\": @}\r\n", 0 },
	};
	static const struct step not_object[] = {
		{ OP_EXPECT, "query-jobs", 0 },
		{ OP_SEND, "[\"return\"]\r\n", 0 },
	};
	static const struct step no_return[] = {
		{ OP_EXPECT, "query-jobs", 0 },
		{ OP_SEND, "{\"id\": @, \"retour\": 1}\r\n", 0 },
	};
	static const struct step other_id[] = {
		{ OP_EXPECT, "query-jobs", 0 },
		{ OP_SEND, "{\"return\": {}, \"id\": 99}\r\n", 0 },
	};
	struct server s;
	char err[256] = "";

	server_start(&s, body, 2, 0);
	struct qmp *q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-jobs", NULL, NULL, err,
	    sizeof(err)), RD_ERR_INVALID);
	assert_non_null(strstr(err, "QMP: invalid JSON from QEMU in the "
	    "answer to 'query-jobs'"));
	assert_true(qmp_broken(q));
	qmp_close(q);
	server_stop(&s);

	server_start(&s, not_object, 2, 0);
	q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-jobs", NULL, NULL, err,
	    sizeof(err)), RD_ERR_INVALID);
	assert_string_equal(err, "QMP: a message from QEMU is not a JSON "
	    "object");
	qmp_close(q);
	server_stop(&s);

	server_start(&s, no_return, 2, 0);
	q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-jobs", NULL, NULL, err,
	    sizeof(err)), RD_ERR_INVALID);
	assert_string_equal(err, "QMP: QEMU's answer to 'query-jobs' has "
	    "neither a return value nor an error");
	qmp_close(q);
	server_stop(&s);

	server_start(&s, other_id, 2, 0);
	q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "query-jobs", NULL, NULL, err,
	    sizeof(err)), RD_ERR_INVALID);
	assert_string_equal(err, "QMP: QEMU's answer to 'query-jobs' is not "
	    "for that command");
	qmp_close(q);
	server_stop(&s);
}

static void
test_close_mid_reply(void **state)
{
	static const struct step body[] = {
		{ OP_EXPECT, "transaction", 0 },
		{ OP_SEND, "{\"return\": {\"a\": ", 0 },
		{ OP_CLOSE, NULL, 0 },
	};
	struct server s;
	char err[256] = "";

	server_start(&s, body, 3, 0);
	struct qmp *q = open_ok(&s, QMP_TIMEOUT_MS);
	assert_int_equal(qmp_call(q, "transaction", json_pack("{s:[]}",
	    "actions"), NULL, err, sizeof(err)), RD_ERR_PEER);
	assert_string_equal(err, "QMP: QEMU closed the connection during "
	    "'transaction'");
	assert_true(qmp_broken(q));
	qmp_close(q);
	server_stop(&s);
}

static void
test_no_answer(void **state)
{
	static const struct step body[] = {
		{ OP_EXPECT, "transaction", 0 },
		{ OP_SEND, EVENT, 0 },
		{ OP_SILENT, NULL, 0 },
	};
	struct server s;
	char err[256] = "";

	server_start(&s, body, 3, 0);
	struct qmp *q = open_ok(&s, SHORT_MS);
	uint64_t t0 = (uint64_t)time(NULL);
	assert_int_equal(qmp_call(q, "transaction", json_pack("{s:[]}",
	    "actions"), NULL, err, sizeof(err)), RD_ERR_PEER);
	assert_true((uint64_t)time(NULL) - t0 <= 2);
	assert_string_equal(err, "QMP: QEMU did not answer 'transaction' "
	    "within 300 ms");
	assert_true(qmp_broken(q));
	qmp_close(q);
	server_stop(&s);
}

static void
test_open_failures(void **state)
{
	static const struct step silent[] = {
		{ OP_SILENT, NULL, 0 },
	};
	static const struct step not_qmp[] = {
		{ OP_SEND, "{\"hello\": 1}\r\n", 0 },
	};
	static const struct step refused[] = {
		{ OP_SEND, GREETING, 0 },
		{ OP_EXPECT, "qmp_capabilities", 0 },
		{ OP_SEND, "{\"error\": {\"class\": \"CommandNotFound\", "
		    "\"desc\": \"Capabilities negotiation is already "
		    "complete\"}, \"id\": @}\r\n", 0 },
	};
	struct server s;
	struct qmp *q = NULL;
	char err[256] = "";

	assert_int_equal(qmp_open("/nonexistent/web01.qmp", SHORT_MS, &q, err,
	    sizeof(err)), RD_ERR_NOT_FOUND);
	assert_string_equal(err, "QMP socket /nonexistent/web01.qmp: No such "
	    "file or directory");
	assert_null(q);

	server_start(&s, silent, 1, 1);
	assert_int_equal(qmp_open(s.path, SHORT_MS, &q, err, sizeof(err)),
	    RD_ERR_PEER);
	assert_non_null(strstr(err, "no greeting from QEMU within 300 ms"));
	server_stop(&s);

	server_start(&s, not_qmp, 1, 1);
	assert_int_equal(qmp_open(s.path, SHORT_MS, &q, err, sizeof(err)),
	    RD_ERR_INVALID);
	assert_non_null(strstr(err, "not a QMP greeting"));
	server_stop(&s);

	server_start(&s, refused, 3, 1);
	assert_int_equal(qmp_open(s.path, SHORT_MS, &q, err, sizeof(err)),
	    RD_ERR_PEER);
	assert_non_null(strstr(err, ": Capabilities negotiation is already "
	    "complete"));
	server_stop(&s);
	assert_null(q);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_return_value),
		cmocka_unit_test(test_error_reply),
		cmocka_unit_test(test_events_first),
		cmocka_unit_test(test_split_writes),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_invalid_json),
		cmocka_unit_test(test_close_mid_reply),
		cmocka_unit_test(test_no_answer),
		cmocka_unit_test(test_open_failures),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
