/*
 * wire.c — encoder and decoder of the replication protocol (layout in
 * wire.h).  Decoders trust nothing: every read goes through struct rbuf,
 * every count and length is checked against its bound before it is used.
 *
 * Error codes of the decoders: RD_ERR_TRUNCATED when the input ends early
 * (including a RAW payload shorter than its length and an empty ZSTD
 * payload), RD_ERR_VERSION for a wrong magic or version, RD_ERR_NAME for a
 * VM or disk name that is unsafe or repeated, RD_ERR_TOO_LARGE for a count
 * or length above its bound, RD_ERR_INVALID for anything else malformed
 * (including trailing bytes).  On error *m is left partly filled.
 */
#include <string.h>

#include <zstd.h>

#include "buf.h"
#include "err.h"
#include "log.h"
#include "util.h"
#include "wire.h"

/* Start a frame: u32 len (patched by frame_end()) and u8 type. */
static size_t
frame_begin(struct wbuf *b, uint8_t type)
{
	size_t start = b->len;

	wb_put_u32(b, 0);
	wb_put_u8(b, type);
	return start;
}

/* Patch the len of the frame that began at start; extra bytes follow. */
static void
frame_end(struct wbuf *b, size_t start, size_t extra)
{
	size_t len = b->len - start - 4 + extra;

	if (len > WIRE_MAX_FRAME)
		fatalx("wire: frame of %zu bytes exceeds the maximum", len);
	wb_set_u32(b, start, (uint32_t)len);
}

static int
valid_type(uint8_t type)
{
	return type >= WIRE_HELLO && type <= WIRE_DEFINITION;
}

int
wire_frame_header(const uint8_t hdr[WIRE_FRAME_HDR], size_t max_frame,
    size_t *frame_len, uint8_t *type)
{
	struct rbuf rb;
	uint32_t len;
	uint8_t t;
	int r;

	if (max_frame > WIRE_MAX_FRAME)
		max_frame = WIRE_MAX_FRAME;
	rb_init(&rb, hdr, WIRE_FRAME_HDR);
	if ((r = rb_get_u32(&rb, &len)) != 0 || (r = rb_get_u8(&rb, &t)) != 0)
		goto out;
	if (len == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if (len > max_frame) {
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	if (!valid_type(t)) {
		r = RD_ERR_INVALID;
		goto out;
	}
	*frame_len = 4 + (size_t)len;
	*type = t;
	r = 0;
out:
	return r;
}

/* --- encoders ---------------------------------------------------------- */

void
wire_put_hello(struct wbuf *b, const struct wire_hello *m)
{
	size_t start;

	if (m->ndisks > WIRE_MAX_DISKS)
		fatalx("wire: HELLO with %u disks", (unsigned)m->ndisks);
	start = frame_begin(b, WIRE_HELLO);
	wb_put_u32(b, WIRE_MAGIC);
	wb_put_u16(b, m->version ? m->version : WIRE_VERSION);
	wb_put_str(b, m->vm);
	wb_put_u64(b, m->generation);
	wb_put_u32(b, m->block_size);
	wb_put_u64(b, m->interval_ms);
	wb_put_u16(b, m->ndisks);
	for (uint16_t i = 0; i < m->ndisks; i++) {
		wb_put_str(b, m->disks[i].name);
		wb_put_u64(b, m->disks[i].size);
	}
	frame_end(b, start, 0);
}

void
wire_put_welcome(struct wbuf *b, const struct wire_welcome *m)
{
	size_t start = frame_begin(b, WIRE_WELCOME);

	wb_put_u16(b, m->version ? m->version : WIRE_VERSION);
	wb_put_u64(b, m->generation);
	wb_put_u64(b, m->last_cycle);
	wb_put_u64(b, m->last_point);
	wb_put_u8(b, m->flags);
	frame_end(b, start, 0);
}

void
wire_put_cycle(struct wbuf *b, const struct wire_cycle *m)
{
	size_t start;

	if (m->ndisks > WIRE_MAX_DISKS)
		fatalx("wire: CYCLE with %u disks", (unsigned)m->ndisks);
	start = frame_begin(b, WIRE_CYCLE);
	wb_put_u64(b, m->cycle);
	wb_put_u64(b, m->created_ms);
	wb_put_u8(b, m->kind);
	wb_put_u8(b, m->flags);
	wb_put_u16(b, m->ndisks);
	for (uint16_t i = 0; i < m->ndisks; i++)
		wb_put_u64(b, m->sizes[i]);
	frame_end(b, start, 0);
}

void
wire_put_data_hdr(struct wbuf *b, const struct wire_data *m,
    size_t payload_len)
{
	size_t start;

	if (payload_len > WIRE_MAX_FRAME - 1 - WIRE_DATA_HDR)
		fatalx("wire: DATA payload of %zu bytes", payload_len);
	start = frame_begin(b, WIRE_DATA);
	wb_put_u16(b, m->disk);
	wb_put_u64(b, m->offset);
	wb_put_u32(b, m->length);
	wb_put_u8(b, m->encoding);
	wb_put_bytes(b, m->hash.b, DIGEST_LEN);
	frame_end(b, start, payload_len);
}

void
wire_put_end(struct wbuf *b, const struct wire_end *m)
{
	size_t start = frame_begin(b, WIRE_END);

	wb_put_u64(b, m->cycle);
	wb_put_u64(b, m->nframes);
	wb_put_u64(b, m->raw_bytes);
	wb_put_bytes(b, m->digest.b, DIGEST_LEN);
	frame_end(b, start, 0);
}

void
wire_put_ack(struct wbuf *b, const struct wire_ack *m)
{
	size_t start = frame_begin(b, WIRE_ACK);

	wb_put_u64(b, m->cycle);
	wb_put_u64(b, m->point);
	frame_end(b, start, 0);
}

/* A reason longer than WIRE_MAX_REASON is cut, so the peer can decode it. */
void
wire_put_nack(struct wbuf *b, uint16_t code, const char *reason)
{
	size_t start = frame_begin(b, WIRE_NACK);
	size_t n = strnlen(reason, WIRE_MAX_REASON);

	wb_put_u16(b, code);
	wb_put_u16(b, (uint16_t)n);
	wb_put_bytes(b, reason, n);
	frame_end(b, start, 0);
}

/* --- decoders ---------------------------------------------------------- */

/* A VM name (disk = 0) or disk name (disk = 1); RD_ERR_NAME if unsafe. */
static int
get_name(struct rbuf *rb, char dst[NAME_MAX_LEN + 1], int disk)
{
	int r;

	r = rb_get_str(rb, dst, NAME_MAX_LEN + 1);
	if (r == RD_ERR_TOO_LARGE || r == RD_ERR_INVALID)
		r = RD_ERR_NAME;
	if (r != 0)
		goto out;
	r = disk ? util_disk_name_valid(dst) : util_name_valid(dst);
out:
	return r;
}

static int
no_trailing(const struct rbuf *rb)
{
	return rb_left(rb) == 0 ? 0 : RD_ERR_INVALID;
}

static int
get_version(struct rbuf *rb, uint16_t *version)
{
	int r;

	if ((r = rb_get_u16(rb, version)) != 0)
		return r;
	return *version >= WIRE_VERSION_MIN && *version <= WIRE_VERSION ? 0 :
	    RD_ERR_VERSION;
}

int
wire_get_hello(const uint8_t *p, size_t len, struct wire_hello *m)
{
	struct rbuf rb;
	uint32_t magic;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u32(&rb, &magic)) != 0)
		goto out;
	if (magic != WIRE_MAGIC) {
		r = RD_ERR_VERSION;
		goto out;
	}
	/* Nothing after the version is read unless we speak it. */
	if ((r = get_version(&rb, &m->version)) != 0 ||
	    (r = get_name(&rb, m->vm, 0)) != 0 ||
	    (r = rb_get_u64(&rb, &m->generation)) != 0)
		goto out;
	if (m->generation == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if ((r = rb_get_u32(&rb, &m->block_size)) != 0)
		goto out;
	if (m->block_size < WIRE_MIN_BLOCK || m->block_size > WIRE_MAX_BLOCK ||
	    (m->block_size & (m->block_size - 1)) != 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if ((r = rb_get_u64(&rb, &m->interval_ms)) != 0 ||
	    (r = rb_get_u16(&rb, &m->ndisks)) != 0)
		goto out;
	if (m->ndisks == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if (m->ndisks > WIRE_MAX_DISKS) {
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	for (uint16_t i = 0; i < m->ndisks; i++) {
		struct wire_disk *d = &m->disks[i];

		if ((r = get_name(&rb, d->name, 1)) != 0)
			goto out;
		for (uint16_t j = 0; j < i; j++) {
			if (strcmp(m->disks[j].name, d->name) == 0) {
				r = RD_ERR_NAME;
				goto out;
			}
		}
		if ((r = rb_get_u64(&rb, &d->size)) != 0)
			goto out;
	}
	r = no_trailing(&rb);
out:
	return r;
}

int
wire_get_welcome(const uint8_t *p, size_t len, struct wire_welcome *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = get_version(&rb, &m->version)) != 0 ||
	    (r = rb_get_u64(&rb, &m->generation)) != 0 ||
	    (r = rb_get_u64(&rb, &m->last_cycle)) != 0 ||
	    (r = rb_get_u64(&rb, &m->last_point)) != 0 ||
	    (r = rb_get_u8(&rb, &m->flags)) != 0)
		goto out;
	if ((m->flags & ~(WIRE_WELCOME_DATA | WIRE_WELCOME_ADOPT)) != 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	r = no_trailing(&rb);
out:
	return r;
}

/* Cycle ids are above the replica's last_cycle (>= 0), so never 0. */
int
wire_get_cycle(const uint8_t *p, size_t len, struct wire_cycle *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u64(&rb, &m->cycle)) != 0 ||
	    (r = rb_get_u64(&rb, &m->created_ms)) != 0 ||
	    (r = rb_get_u8(&rb, &m->kind)) != 0 ||
	    (r = rb_get_u8(&rb, &m->flags)) != 0 ||
	    (r = rb_get_u16(&rb, &m->ndisks)) != 0)
		goto out;
	if (m->cycle == 0 || m->kind > 1 || (m->flags & ~(WIRE_CYCLE_FULL | WIRE_CYCLE_RESYNC)) != 0 ||
	    m->flags == (WIRE_CYCLE_FULL | WIRE_CYCLE_RESYNC) ||
	    m->ndisks == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if (m->ndisks > WIRE_MAX_DISKS) {
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	for (uint16_t i = 0; i < m->ndisks; i++)
		if ((r = rb_get_u64(&rb, &m->sizes[i])) != 0)
			goto out;
	r = no_trailing(&rb);
out:
	return r;
}

int
wire_get_data(const uint8_t *p, size_t len, struct wire_data *m)
{
	static const struct digest zero_hash;
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u16(&rb, &m->disk)) != 0 ||
	    (r = rb_get_u64(&rb, &m->offset)) != 0 ||
	    (r = rb_get_u32(&rb, &m->length)) != 0 ||
	    (r = rb_get_u8(&rb, &m->encoding)) != 0 ||
	    (r = rb_get_bytes(&rb, m->hash.b, DIGEST_LEN)) != 0)
		goto out;
	m->payload_len = rb_left(&rb);
	if ((r = rb_get_ptr(&rb, &m->payload, m->payload_len)) != 0)
		goto out;
	if (m->length == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	switch (m->encoding) {
	case WIRE_ENC_RAW:
		if (m->length > WIRE_MAX_BLOCK)
			r = RD_ERR_TOO_LARGE;
		else if (m->payload_len < m->length)
			r = RD_ERR_TRUNCATED;
		else if (m->payload_len > m->length)
			r = RD_ERR_INVALID;
		break;
	case WIRE_ENC_ZSTD:
		if (m->length > WIRE_MAX_BLOCK ||
		    m->payload_len > WIRE_MAX_BLOCK)
			r = RD_ERR_TOO_LARGE;
		else if (m->payload_len == 0)
			r = RD_ERR_TRUNCATED;
		break;
	case WIRE_ENC_ZERO:
		if (m->length > WIRE_MAX_ZERO)
			r = RD_ERR_TOO_LARGE;
		else if (m->payload_len != 0 ||
		    !digest_equal(&m->hash, &zero_hash))
			r = RD_ERR_INVALID;
		break;
	default:
		r = RD_ERR_INVALID;
		break;
	}
out:
	return r;
}

int
wire_get_end(const uint8_t *p, size_t len, struct wire_end *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u64(&rb, &m->cycle)) != 0 ||
	    (r = rb_get_u64(&rb, &m->nframes)) != 0 ||
	    (r = rb_get_u64(&rb, &m->raw_bytes)) != 0 ||
	    (r = rb_get_bytes(&rb, m->digest.b, DIGEST_LEN)) != 0)
		goto out;
	if (m->cycle == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	r = no_trailing(&rb);
out:
	return r;
}

int
wire_get_ack(const uint8_t *p, size_t len, struct wire_ack *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u64(&rb, &m->cycle)) != 0 ||
	    (r = rb_get_u64(&rb, &m->point)) != 0)
		goto out;
	r = no_trailing(&rb);
out:
	return r;
}

/*
 * The reason ends up in our log: control characters (a newline could
 * forge a log line) become '?'.
 */
int
wire_get_nack(const uint8_t *p, size_t len, struct wire_nack_msg *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u16(&rb, &m->code)) != 0 ||
	    (r = rb_get_str(&rb, m->reason, sizeof(m->reason))) != 0)
		goto out;
	for (char *s = m->reason; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
	r = no_trailing(&rb);
out:
	return r;
}

/* --- resynchronisation and handover ---------------------------------- */

void
wire_put_sums(struct wbuf *b, const struct wire_sums *m)
{
	if (m->count == 0 || m->count > WIRE_MAX_SUMS)
		fatalx("wire: SUMS with %u digests", (unsigned)m->count);
	size_t start = frame_begin(b, WIRE_SUMS);
	wb_put_u16(b, m->disk);
	wb_put_u64(b, m->offset);
	wb_put_u32(b, m->chunk);
	wb_put_u16(b, m->count);
	wb_put_bytes(b, m->digests, (size_t)m->count * DIGEST_LEN);
	frame_end(b, start, 0);
}

int
wire_get_sums(const uint8_t *p, size_t len, struct wire_sums *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u16(&rb, &m->disk)) != 0 ||
	    (r = rb_get_u64(&rb, &m->offset)) != 0 ||
	    (r = rb_get_u32(&rb, &m->chunk)) != 0 ||
	    (r = rb_get_u16(&rb, &m->count)) != 0)
		goto out;
	if (m->chunk < WIRE_MIN_BLOCK || m->chunk > WIRE_MAX_BLOCK ||
	    (m->chunk & (m->chunk - 1)) != 0 || m->offset % m->chunk != 0 ||
	    m->count == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if (m->count > WIRE_MAX_SUMS) {
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	if ((r = rb_get_ptr(&rb, &m->digests, (size_t)m->count *
	    DIGEST_LEN)) != 0)
		goto out;
	r = no_trailing(&rb);
out:
	return r;
}

void
wire_put_sig(struct wbuf *b, const struct wire_chunk *m)
{
	if (m->payload_len > WIRE_MAX_SIG)
		fatalx("wire: SIG of %zu bytes", m->payload_len);
	size_t start = frame_begin(b, WIRE_SIG);
	wb_put_u16(b, m->disk);
	wb_put_u64(b, m->offset);
	wb_put_u32(b, m->length);
	wb_put_bytes(b, m->payload, m->payload_len);
	frame_end(b, start, 0);
}

int
wire_get_sig(const uint8_t *p, size_t len, struct wire_chunk *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u16(&rb, &m->disk)) != 0 ||
	    (r = rb_get_u64(&rb, &m->offset)) != 0 ||
	    (r = rb_get_u32(&rb, &m->length)) != 0)
		goto out;
	m->payload_len = rb_left(&rb);
	if (m->length == 0 || m->length > WIRE_MAX_BLOCK ||
	    m->payload_len == 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if (m->payload_len > WIRE_MAX_SIG) {
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	r = rb_get_ptr(&rb, &m->payload, m->payload_len);
out:
	return r;
}

void
wire_put_sigend(struct wbuf *b, const struct wire_sigend *m)
{
	size_t start = frame_begin(b, WIRE_SIGEND);
	wb_put_u64(b, m->cycle);
	wb_put_u64(b, m->nsigs);
	frame_end(b, start, 0);
}

int
wire_get_sigend(const uint8_t *p, size_t len, struct wire_sigend *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u64(&rb, &m->cycle)) != 0 ||
	    (r = rb_get_u64(&rb, &m->nsigs)) != 0)
		goto out;
	r = no_trailing(&rb);
out:
	return r;
}

void
wire_put_delta(struct wbuf *b, const struct wire_chunk *m)
{
	if (m->payload_len > WIRE_MAX_DELTA || m->delta_len > WIRE_MAX_DELTA)
		fatalx("wire: DELTA of %zu bytes", m->payload_len);
	size_t start = frame_begin(b, WIRE_DELTA);
	wb_put_u16(b, m->disk);
	wb_put_u64(b, m->offset);
	wb_put_u32(b, m->length);
	wb_put_u8(b, m->encoding);
	wb_put_u32(b, m->delta_len);
	wb_put_bytes(b, m->hash.b, DIGEST_LEN);
	wb_put_bytes(b, m->payload, m->payload_len);
	frame_end(b, start, 0);
}

int
wire_get_delta(const uint8_t *p, size_t len, struct wire_chunk *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u16(&rb, &m->disk)) != 0 ||
	    (r = rb_get_u64(&rb, &m->offset)) != 0 ||
	    (r = rb_get_u32(&rb, &m->length)) != 0 ||
	    (r = rb_get_u8(&rb, &m->encoding)) != 0 ||
	    (r = rb_get_u32(&rb, &m->delta_len)) != 0 ||
	    (r = rb_get_bytes(&rb, m->hash.b, DIGEST_LEN)) != 0)
		goto out;
	m->payload_len = rb_left(&rb);
	if (m->length == 0 || m->length > WIRE_MAX_BLOCK ||
	    m->delta_len == 0 || m->payload_len == 0 ||
	    (m->encoding != WIRE_ENC_RAW && m->encoding != WIRE_ENC_ZSTD) ||
	    (m->encoding == WIRE_ENC_RAW && m->payload_len != m->delta_len)) {
		r = RD_ERR_INVALID;
		goto out;
	}
	if (m->delta_len > WIRE_MAX_DELTA || m->payload_len > WIRE_MAX_DELTA) {
		r = RD_ERR_TOO_LARGE;
		goto out;
	}
	r = rb_get_ptr(&rb, &m->payload, m->payload_len);
out:
	return r;
}

void
wire_put_promote(struct wbuf *b, const struct wire_promote *m)
{
	size_t start = frame_begin(b, WIRE_PROMOTE);
	wb_put_u64(b, m->cycle);
	wb_put_u64(b, m->generation);
	wb_put_str(b, m->listen);
	frame_end(b, start, 0);
}

int
wire_get_promote(const uint8_t *p, size_t len, struct wire_promote *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u64(&rb, &m->cycle)) != 0 ||
	    (r = rb_get_u64(&rb, &m->generation)) != 0 ||
	    (r = rb_get_str(&rb, m->listen, sizeof(m->listen))) != 0)
		goto out;
	char host[HOST_MAX_LEN + 1];
	uint16_t port;
	if (m->cycle == 0 || m->generation < 2 ||
	    util_parse_hostport(m->listen, host, sizeof(host), &port) != 0) {
		r = RD_ERR_INVALID;
		goto out;
	}
	r = no_trailing(&rb);
out:
	return r;
}

void
wire_put_promoted(struct wbuf *b, uint64_t generation)
{
	size_t start = frame_begin(b, WIRE_PROMOTED);
	wb_put_u64(b, generation);
	frame_end(b, start, 0);
}

int
wire_get_promoted(const uint8_t *p, size_t len, uint64_t *generation)
{
	struct rbuf rb;
	int r;

	rb_init(&rb, p, len);
	if ((r = rb_get_u64(&rb, generation)) != 0)
		return r;
	return no_trailing(&rb);
}

void
wire_put_keepalive(struct wbuf *b, const struct wire_keepalive *m)
{
	size_t start = frame_begin(b, WIRE_KEEPALIVE);
	wb_put_u64(b, m->cycle);
	wb_put_u8(b, m->flags);
	wb_put_u32(b, m->every_ms);
	frame_end(b, start, 0);
}

int
wire_get_keepalive(const uint8_t *p, size_t len, struct wire_keepalive *m)
{
	struct rbuf rb;
	int r;

	memset(m, 0, sizeof(*m));
	rb_init(&rb, p, len);
	if ((r = rb_get_u64(&rb, &m->cycle)) != 0 ||
	    (r = rb_get_u8(&rb, &m->flags)) != 0 ||
	    (r = rb_get_u32(&rb, &m->every_ms)) != 0)
		goto out;
	if ((m->flags & ~WIRE_KEEPALIVE_APPLYING) != 0 ||
	    ((m->flags & WIRE_KEEPALIVE_APPLYING) && m->cycle == 0) ||
	    m->every_ms < WIRE_KEEPALIVE_MIN_MS ||
	    m->every_ms > WIRE_KEEPALIVE_MAX_MS) {
		r = RD_ERR_INVALID;
		goto out;
	}
	r = no_trailing(&rb);
out:
	return r;
}

/*
 * The length of the well-formed UTF-8 sequence at p (at most n bytes
 * left) and its code point in *cp; 0 if it is not one (a stray or cut
 * continuation, an overlong form, a surrogate, above U+10FFFF).
 */
static size_t
utf8_next(const unsigned char *p, size_t n, uint32_t *cp)
{
	static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
	size_t k;
	uint32_t c;

	if (p[0] < 0x80) {
		*cp = p[0];
		return 1;
	}
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		k = 2;
		c = p[0] & 0x1f;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		k = 3;
		c = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		k = 4;
		c = p[0] & 0x07;
	} else {
		return 0;
	}
	if (k > n)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (p[i] & 0x3f);
	}
	if (c < min[k] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return k;
}

int
wire_definition_check(const char *xml, size_t len)
{
	const unsigned char *p = (const unsigned char *)xml;
	uint32_t c;
	size_t k;

	if (len == 0)
		return RD_ERR_INVALID;
	if (len > WIRE_MAX_DEFINITION)
		return RD_ERR_TOO_LARGE;
	/*
	 * It is stored as text and printed to an operator's terminal: no
	 * C0 control but TAB, LF, CR, and no C1 control either, whether as
	 * one byte (CSI is 0x9b to an 8-bit terminal) or as UTF-8 (U+009B
	 * to xterm); so the text must be UTF-8, as libvirt's XML is.
	 */
	for (size_t i = 0; i < len; i += k) {
		if ((k = utf8_next(p + i, len - i, &c)) == 0)
			return RD_ERR_INVALID;
		if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') ||
		    (c >= 0x80 && c <= 0x9f))
			return RD_ERR_INVALID;
	}
	return 0;
}

void
wire_put_definition(struct wbuf *b, const char *xml, size_t len)
{
	if (wire_definition_check(xml, len) != 0)
		fatalx("wire: DEFINITION of %zu bytes that may not travel", len);
	size_t start = frame_begin(b, WIRE_DEFINITION);
	wb_put_bytes(b, xml, len);
	frame_end(b, start, 0);
}

int
wire_get_definition(const uint8_t *p, size_t len, struct wire_definition *m)
{
	int r;

	memset(m, 0, sizeof(*m));
	if ((r = wire_definition_check((const char *)p, len)) != 0)
		return r;
	m->xml = (const char *)p;
	m->len = len;
	return 0;
}

/* --- DATA in its session --------------------------------------------- */

int
wire_check_data(const struct wire_data *m, const struct wire_cycle *c,
    uint32_t block_size)
{
	uint64_t size, left;
	int r = RD_ERR_RANGE;

	if (block_size == 0) {
		r = RD_ERR_INTERNAL;
		goto out;
	}
	if (m->disk >= c->ndisks || m->disk >= WIRE_MAX_DISKS)
		goto out;
	size = c->sizes[m->disk];
	if (m->offset % block_size != 0 || m->offset >= size)
		goto out;
	left = size - m->offset;
	if (m->length > left)
		goto out;
	switch (m->encoding) {
	case WIRE_ENC_RAW:
	case WIRE_ENC_ZSTD:
		if (m->length != (left < block_size ? left : block_size))
			goto out;
		break;
	case WIRE_ENC_ZERO:
		if (m->length % block_size != 0 && m->length != left)
			goto out;
		break;
	default:
		r = RD_ERR_INVALID;
		goto out;
	}
	r = 0;
out:
	return r;
}

static uint32_t
le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
}

static int
zstd_content(const struct wire_data *m, uint8_t *out, ZSTD_DCtx *dctx)
{
	ZSTD_DCtx *own = NULL;
	unsigned long long csize;
	size_t n;
	int r = RD_ERR_COMPRESS;

	/* One standard frame: no skippable or legacy frames, nothing after. */
	if (m->payload_len < 4 || le32(m->payload) != ZSTD_MAGICNUMBER)
		goto out;
	csize = ZSTD_getFrameContentSize(m->payload, m->payload_len);
	if (csize == ZSTD_CONTENTSIZE_ERROR ||
	    (csize != ZSTD_CONTENTSIZE_UNKNOWN && csize != m->length))
		goto out;
	n = ZSTD_findFrameCompressedSize(m->payload, m->payload_len);
	if (ZSTD_isError(n) || n != m->payload_len)
		goto out;
	if (dctx == NULL && (dctx = own = ZSTD_createDCtx()) == NULL)
		fatalx("out of memory creating a zstd context");
	/* A frame larger than m->length fails with dstSize_tooSmall. */
	n = ZSTD_decompressDCtx(dctx, out, m->length, m->payload,
	    m->payload_len);
	if (ZSTD_isError(n) || n != m->length)
		goto out;
	r = 0;
out:
	ZSTD_freeDCtx(own);
	return r;
}

int
wire_data_content(const struct wire_data *m, uint8_t *out,
    struct ZSTD_DCtx_s *dctx)
{
	struct digest d;
	int r;

	switch (m->encoding) {
	case WIRE_ENC_RAW:
		if (m->payload_len != m->length) {
			r = RD_ERR_INTERNAL;
			goto out;
		}
		memcpy(out, m->payload, m->length);
		break;
	case WIRE_ENC_ZSTD:
		if ((r = zstd_content(m, out, dctx)) != 0)
			goto out;
		break;
	default:
		r = RD_ERR_INTERNAL;
		goto out;
	}
	digest_block(out, m->length, &d);
	if (!digest_equal(&d, &m->hash)) {
		r = RD_ERR_HASH;
		goto out;
	}
	r = 0;
out:
	return r;
}

void
wire_data_encode(struct ZSTD_CCtx_s *cctx, int level,
    const uint8_t *raw, size_t len, uint8_t *scratch,
    uint8_t *enc, const uint8_t **payload, size_t *payload_len)
{
	/* Saving at least one byte, so ZSTD is never longer than RAW. */
	size_t n, min_saving = len / 64 > 0 ? len / 64 : 1;

	*enc = WIRE_ENC_RAW;
	*payload = raw;
	*payload_len = len;
	if (level <= 0 || len == 0)
		return;
	if (cctx != NULL)
		n = ZSTD_compressCCtx(cctx, scratch, len, raw, len, level);
	else
		n = ZSTD_compress(scratch, len, raw, len, level);
	if (ZSTD_isError(n) || n == 0 || n > len - min_saving)
		return;
	*enc = WIRE_ENC_ZSTD;
	*payload = scratch;
	*payload_len = n;
}

/* --- END digest -------------------------------------------------------- */

void
wire_digest_init(struct wire_digest *d)
{
	/* XXH3_createState() gives the 64-byte alignment the state needs,
	 * which a struct inside a heap object would not have. */
	if (d->st == NULL && (d->st = XXH3_createState()) == NULL)
		fatalx("out of memory");
	(void)XXH3_128bits_reset(d->st);
}

void
wire_digest_free(struct wire_digest *d)
{
	XXH3_freeState(d->st);
	d->st = NULL;
}

void
wire_digest_update(struct wire_digest *d, const struct wire_data *m)
{
	uint8_t b[2 + 8 + 4 + DIGEST_LEN];
	size_t i = 0;

	for (int k = 1; k >= 0; k--)
		b[i++] = (uint8_t)(m->disk >> (8 * k));
	for (int k = 7; k >= 0; k--)
		b[i++] = (uint8_t)(m->offset >> (8 * k));
	for (int k = 3; k >= 0; k--)
		b[i++] = (uint8_t)(m->length >> (8 * k));
	memcpy(b + i, m->hash.b, DIGEST_LEN);
	(void)XXH3_128bits_update(d->st, b, sizeof(b));
}

/* As the header of a DATA frame no disk can have (wire.h). */
void
wire_digest_definition(struct wire_digest *d, const char *xml, size_t len)
{
	struct wire_data as = { .disk = WIRE_DIGEST_DEFINITION,
	    .length = (uint32_t)len };

	digest_block(xml, len, &as.hash);
	wire_digest_update(d, &as);
}

void
wire_digest_final(struct wire_digest *d, struct digest *out)
{
	XXH128_canonical_t c;

	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(d->st));
	memcpy(out->b, c.digest, DIGEST_LEN);
}

/* --- names ------------------------------------------------------------- */

const char *
wire_type_name(uint8_t type)
{
	switch (type) {
	case WIRE_HELLO:	return "hello";
	case WIRE_WELCOME:	return "welcome";
	case WIRE_CYCLE:	return "cycle";
	case WIRE_DATA:		return "data";
	case WIRE_END:		return "end";
	case WIRE_ACK:		return "ack";
	case WIRE_NACK:		return "nack";
	case WIRE_SUMS:		return "sums";
	case WIRE_SIG:		return "sig";
	case WIRE_SIGEND:	return "sigend";
	case WIRE_DELTA:	return "delta";
	case WIRE_PROMOTE:	return "promote";
	case WIRE_PROMOTED:	return "promoted";
	case WIRE_KEEPALIVE:	return "keepalive";
	case WIRE_DEFINITION:	return "definition";
	}
	return "unknown";
}

const char *
wire_nack_name(uint16_t code)
{
	switch (code) {
	case WIRE_NACK_PROTOCOL:	return "protocol";
	case WIRE_NACK_DENIED:		return "denied";
	case WIRE_NACK_FENCED:		return "fenced";
	case WIRE_NACK_BAD_DATA:	return "bad-data";
	case WIRE_NACK_IO:		return "io";
	case WIRE_NACK_NOSPACE:		return "no-space";
	case WIRE_NACK_BUSY:		return "busy";
	case WIRE_NACK_INTERNAL:	return "internal";
	case WIRE_NACK_MISMATCH:	return "mismatch";
	}
	return "unknown";
}
