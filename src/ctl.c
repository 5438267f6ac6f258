/*
 * ctl.c — encoding and decoding of the control protocol (version 1)
 * between replctl and replicad.  The byte layout is documented in ctl.h.
 *
 * Decoders never trust a length: a frame header announcing more than the
 * protocol allows is refused as soon as its four length bytes are there,
 * before the body arrives, and a body must be consumed exactly.  A request
 * whose frame is complete but whose body is short is RD_ERR_INVALID, not
 * RD_ERR_TRUNCATED: no further byte can repair it.
 */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "ctl.h"
#include "err.h"
#include "log.h"
#include "xmalloc.h"

#define CTL_LEN_SIZE	4	/* the u32 frame length */

void
ctl_put_request(struct wbuf *b, int argc, char *const argv[])
{
	size_t start = b->len, total = 2;

	if (argc < 1 || argc > CTL_MAX_ARGS)
		fatalx("ctl_put_request: argc %d out of range", argc);
	for (int i = 0; i < argc; i++) {
		size_t n = strlen(argv[i]);
		if (n == 0 || n > CTL_MAX_ARG)
			fatalx("ctl_put_request: argument %d is %zu bytes", i, n);
		total += 2 + n;
	}
	if (total > CTL_MAX_REQUEST)
		fatalx("ctl_put_request: request of %zu bytes too large", total);

	wb_put_u32(b, 0);
	wb_put_u8(b, CTL_VERSION);
	wb_put_u8(b, (uint8_t)argc);
	for (int i = 0; i < argc; i++)
		wb_put_str(b, argv[i]);
	wb_set_u32(b, start, (uint32_t)(b->len - start - CTL_LEN_SIZE));
}

/* Decode the body of a complete request frame into req. */
static int
get_request_body(struct rbuf *b, struct ctl_request *req)
{
	uint8_t version, argc;
	int r;

	if ((r = rb_get_u8(b, &version)) != 0)
		goto out;
	if (version != CTL_VERSION) {
		r = RD_ERR_VERSION;
		goto out;
	}
	if ((r = rb_get_u8(b, &argc)) != 0)
		goto out;
	if (argc == 0 || argc > CTL_MAX_ARGS) {
		r = RD_ERR_INVALID;
		goto out;
	}
	for (int i = 0; i < argc; i++) {
		const uint8_t *p;
		uint16_t n;

		if ((r = rb_get_u16(b, &n)) != 0)
			goto out;
		if (n == 0) {
			r = RD_ERR_INVALID;
			goto out;
		}
		if (n > CTL_MAX_ARG) {
			r = RD_ERR_TOO_LARGE;
			goto out;
		}
		if ((r = rb_get_ptr(b, &p, n)) != 0)
			goto out;
		if (memchr(p, '\0', n) != NULL) {
			r = RD_ERR_INVALID;
			goto out;
		}
		req->argv[i] = xmalloc((size_t)n + 1);
		memcpy(req->argv[i], p, n);
		req->argv[i][n] = '\0';
		req->argc = i + 1;
	}
	if (rb_left(b) != 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	r = 0;
out:
	/* The frame is whole: a short body can never be completed. */
	if (r == RD_ERR_TRUNCATED)
		r = RD_ERR_INVALID;
	return r;
}

int
ctl_get_request(const uint8_t *buf, size_t len, struct ctl_request *req,
    size_t *used)
{
	struct rbuf b, body;
	const uint8_t *p;
	uint32_t flen;
	int r;

	/* *req is always left freeable, whatever the outcome. */
	memset(req, 0, sizeof(*req));
	rb_init(&b, buf, len);
	if (rb_get_u32(&b, &flen) != 0)
		return 0;
	if (flen > CTL_MAX_REQUEST)
		return RD_ERR_TOO_LARGE;
	if (rb_get_ptr(&b, &p, flen) != 0)
		return 0;
	rb_init(&body, p, flen);
	if ((r = get_request_body(&body, req)) != 0) {
		ctl_request_free(req);
		return r;
	}
	*used = CTL_LEN_SIZE + (size_t)flen;
	return 1;
}

void
ctl_request_free(struct ctl_request *req)
{
	if (req == NULL)
		return;
	for (int i = 0; i < CTL_MAX_ARGS + 1; i++)
		free(req->argv[i]);
	memset(req, 0, sizeof(*req));
}

static int
reply_type_valid(uint8_t type)
{
	return type == CTL_OUT || type == CTL_ERR || type == CTL_PROGRESS ||
	    type == CTL_EXIT;
}

/*
 * Text longer than one frame can carry is split over several frames of the
 * same type; replctl writes OUT and ERR text as it comes, so the reader
 * sees the same bytes.
 */
void
ctl_put_reply(struct wbuf *b, uint8_t type, const void *text, size_t len)
{
	const uint8_t *p = text;
	const size_t max = CTL_MAX_REPLY - 1;

	if (!reply_type_valid(type))
		fatalx("ctl_put_reply: unknown reply type %u", type);
	if (type == CTL_EXIT && len != 1)
		fatalx("ctl_put_reply: EXIT body of %zu bytes", len);
	do {
		size_t n = len < max ? len : max;
		wb_put_u32(b, (uint32_t)(n + 1));
		wb_put_u8(b, type);
		wb_put_bytes(b, p, n);
		p += n;
		len -= n;
	} while (len > 0);
}

void
ctl_put_exit(struct wbuf *b, uint8_t code)
{
	ctl_put_reply(b, CTL_EXIT, &code, 1);
}

int
ctl_get_reply(const uint8_t *buf, size_t len, uint8_t *type,
    const uint8_t **text, size_t *textlen, size_t *used)
{
	struct rbuf b;
	uint32_t flen;
	uint8_t t;

	rb_init(&b, buf, len);
	if (rb_get_u32(&b, &flen) != 0)
		return 0;
	if (flen == 0)
		return RD_ERR_INVALID;
	if (flen > CTL_MAX_REPLY)
		return RD_ERR_TOO_LARGE;
	/* Refuse a bad type or EXIT size before waiting for the body. */
	if (rb_get_u8(&b, &t) != 0)
		return 0;
	if (!reply_type_valid(t))
		return RD_ERR_INVALID;
	if (t == CTL_EXIT && flen != 2)
		return RD_ERR_INVALID;
	if (rb_get_ptr(&b, text, flen - 1) != 0)
		return 0;
	*type = t;
	*textlen = flen - 1;
	*used = CTL_LEN_SIZE + (size_t)flen;
	return 1;
}
