/*
 * netio.h — framing of wire.h messages over libevent bufferevents.
 */
#ifndef REPLICAD_NETIO_H
#define REPLICAD_NETIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct evbuffer;
struct bufferevent;
struct wbuf;

/*
 * If in starts with a whole frame, set *type, *frame_len (header
 * included) and return 1; 0 if more bytes are needed; a negative rd_err
 * if the header is invalid or the frame exceeds max_frame.
 */
int	netio_peek(struct evbuffer *in, size_t max_frame, uint8_t *type,
	    size_t *frame_len);
/* The payload of the frame at the start of in (pulled up, contiguous);
 * the caller drains frame_len bytes afterwards. */
const uint8_t *netio_payload(struct evbuffer *in, size_t frame_len);
/* Queue b's bytes on bev and reset b. */
void	netio_send(struct bufferevent *bev, struct wbuf *b);
/* Why a bufferevent failed (TLS error, errno, or closed), in words. */
void	netio_error(struct bufferevent *bev, short what, char *buf,
	    size_t bufsz);
/* Sent data unacknowledged this long ends a connection (TCP_USER_TIMEOUT). */
#define NETIO_USER_TIMEOUT_S	120
/* TCP options of a session's socket, either role: keepalive probes at a
 * minute's scale, TCP_USER_TIMEOUT, no Nagle delay. */
void	netio_tune(int fd);
/*
 * Close fd (the caller's own descriptor of a socket) gracefully: FIN
 * after what was sent, then read and discard what the peer still sends
 * until it closes, for at most two seconds, so that the kernel sends no
 * reset that could overtake a TLS alert.  At most 64 sockets linger;
 * beyond, fd is closed at once.  Loop thread only.
 */
struct event_base;
void	netio_linger_close(struct event_base *base, int fd);
/* Close every lingering socket now (before the event base goes). */
void	netio_linger_fini(void);
/* "192.0.2.1:7000" or "[::1]:7000" */
void	netio_addr_str(const struct sockaddr *sa, char *buf, size_t bufsz);

#endif
