/*
 * qmp.h — a small blocking client for QEMU's QMP (JSON over a UNIX
 * socket), used by the qemu tracker from worker threads.
 *
 * One command at a time; asynchronous events are read and dropped.
 * Everything QEMU sends is untrusted: each wait is bounded by the
 * handle's timeout and each line by QMP_MAX_LINE.  A handle has no
 * global state, so different threads may use different handles.
 */
#ifndef REPLICAD_QMP_H
#define REPLICAD_QMP_H

#include <stddef.h>

#include <jansson.h>

#define QMP_TIMEOUT_MS	10000		/* per command */
#define QMP_MAX_LINE	(16u << 20)	/* bytes of one message from QEMU */

struct qmp;

/*
 * Connect to the QMP socket at path, read QEMU's greeting and leave
 * capabilities negotiation mode.  timeout_ms bounds each step.  On
 * failure err holds one line such as "QMP socket /run/web01.qmp: No such
 * file or directory".  The caller owns *out (qmp_close()).
 */
int	qmp_open(const char *path, int timeout_ms, struct qmp **out,
	    char *err, size_t errsz);
void	qmp_close(struct qmp *q);

/*
 * Run command cmd with args (a JSON object or NULL; the call takes the
 * reference, as json_pack() makes it).  On success, if ret is not NULL,
 * *ret is the reply's "return" value (a new reference: json_decref() it).
 * If QEMU refused the command: RD_ERR_PEER with QEMU's error description
 * in err, word for word on one line.  Any other failure (timeout, closed
 * connection, invalid or over-long reply) breaks the handle for good:
 * qmp_broken() turns true and err says what happened, e.g. "QMP: QEMU did
 * not answer 'transaction' within 10 s".
 */
int	qmp_call(struct qmp *q, const char *cmd, json_t *args, json_t **ret,
	    char *err, size_t errsz);
/* The connection failed: every further call fails at once. */
int	qmp_broken(const struct qmp *q);

#endif
