/*
 * netio.c — wire frames on evbuffers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
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
