/*
 * netio.c — wire frames on evbuffers.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <string.h>

#include "buf.h"
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
