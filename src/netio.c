/*
 * netio.c — wire frames on evbuffers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "netio.h"
#include "tls.h"
#include "wire.h"

int
netio_peek(struct evbuffer *in, size_t max_frame, uint8_t *type,
    size_t *frame_len)
{
	uint8_t hdr[WIRE_FRAME_HDR];
	if (evbuffer_get_length(in) < WIRE_FRAME_HDR)
		return 0;
	evbuffer_copyout(in, hdr, sizeof(hdr));
	int r = wire_frame_header(hdr, max_frame, frame_len, type);
	if (r != 0)
		return r;
	return evbuffer_get_length(in) >= *frame_len;
}

const uint8_t *
netio_payload(struct evbuffer *in, size_t frame_len)
{
	return evbuffer_pullup(in, (ev_ssize_t)frame_len) + WIRE_FRAME_HDR;
}

void
netio_send(struct bufferevent *bev, struct wbuf *b)
{
	bufferevent_write(bev, b->p, b->len);
	wb_reset(b);
}

void
netio_addr_str(const struct sockaddr *sa, char *buf, size_t bufsz)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const void *)sa;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		port = ntohs(s4->sin_port);
		snprintf(buf, bufsz, "%s:%u", host, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		port = ntohs(s6->sin6_port);
		snprintf(buf, bufsz, "[%s]:%u", host, port);
	} else {
		snprintf(buf, bufsz, "local");
	}
}

void
netio_error(struct bufferevent *bev, short what, char *buf, size_t bufsz)
{
	unsigned long e = bufferevent_get_openssl_error(bev);
	int err = EVUTIL_SOCKET_ERROR();

	/* libevent files SSL_ERROR_SYSCALL and friends as "library 0"
	 * errors: the real reason is then in errno. */
	if (tls_why(bufferevent_openssl_get_ssl(bev), e, buf, bufsz))
		return;
	if ((what & BEV_EVENT_ERROR) && err != 0)
		snprintf(buf, bufsz, "%s", evutil_socket_error_to_string(err));
	else
		snprintf(buf, bufsz, "connection closed");
}

/*
 * Keepalive probes find a peer host that vanished while the session is
 * idle (after 30 s, every 10 s, 3 misses: about a minute, not the
 * system's two hours); TCP_USER_TIMEOUT ends a session whose sent data
 * stays unacknowledged (a cut network).  Neither sees a peer whose TCP
 * answers while its daemon, or the path back from it, is silent: the
 * KEEPALIVE frames of wire.h do.
 */
#define KEEPIDLE_S	30
#define KEEPINTVL_S	10
#define KEEPCNT		3

void
netio_tune(int fd)
{
	int one = 1, idle = KEEPIDLE_S, intvl = KEEPINTVL_S, cnt = KEEPCNT;
	unsigned int user_ms = NETIO_USER_TIMEOUT_S * 1000;

	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) != 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) != 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl,
	    sizeof(intvl)) != 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) != 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms,
	    sizeof(user_ms)) != 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
		log_debug("cannot set TCP keepalive options: %s",
		    strerror(errno));
}

/* --- lingering close ------------------------------------------------------ */

#define LINGER_MAX	64	/* sockets lingering at once */
#define LINGER_S	2	/* at most this long each */

struct lingerer {
	struct event	*ev;
	int		 fd;
	struct lingerer	*next;
};

static struct lingerer *lingerers;
static int lingering;

static void
linger_end(struct lingerer *l)
{
	for (struct lingerer **p = &lingerers; *p != NULL; p = &(*p)->next)
		if (*p == l) {
			*p = l->next;
			break;
		}
	event_free(l->ev);
	close(l->fd);
	free(l);
	lingering--;
}

void
netio_linger_fini(void)
{
	while (lingerers != NULL)
		linger_end(lingerers);
}

static void
linger_read(evutil_socket_t fd, short what, void *arg)
{
	struct lingerer *l = arg;
	char scratch[4096];

	if (what & EV_TIMEOUT) {
		linger_end(l);
		return;
	}
	for (;;) {
		ssize_t n = read(fd, scratch, sizeof(scratch));
		if (n > 0)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		linger_end(l);		/* the peer closed, or an error */
		return;
	}
}

void
netio_linger_close(struct event_base *base, int fd)
{
	struct timeval tv = { LINGER_S, 0 };
	struct lingerer *l;

	if (fd < 0)
		return;
	/* FIN after what was sent (a TLS alert); a close with unread bytes
	 * would send a reset instead, and the peer could lose the alert. */
	shutdown(fd, SHUT_WR);
	if (lingering >= LINGER_MAX || evutil_make_socket_nonblocking(fd) != 0 ||
	    (l = calloc(1, sizeof(*l))) == NULL) {
		close(fd);
		return;
	}
	l->fd = fd;
	if ((l->ev = event_new(base, fd, EV_READ | EV_PERSIST, linger_read,
	    l)) == NULL || event_add(l->ev, &tv) != 0) {
		if (l->ev)
			event_free(l->ev);
		close(fd);
		free(l);
		return;
	}
	l->next = lingerers;
	lingerers = l;
	lingering++;
}
