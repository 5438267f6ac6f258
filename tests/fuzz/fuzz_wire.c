/*
 * fuzz_wire.c — libFuzzer harness for the replication protocol decoders.
 *
 * Input: one selector byte, then a frame payload.  The selector's low
 * four bits pick the decoder (1..15 are the frame types, so a corpus file
 * is a frame without its u32 length; 0 runs no decoder).  The first five
 * bytes also go through wire_frame_header().
 *
 * Beyond "no crash, no leak", it checks properties and aborts when one
 * fails: what decodes re-encodes to the same bytes and honours the
 * bounds that wire.h documents; borrowed payloads point into the input;
 * a DATA frame whose content checks out round-trips through
 * wire_data_encode().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "buf.h"
#include "digest.h"
#include "err.h"
#include "util.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The session every DATA frame is checked against. */
static const struct wire_cycle fuzz_cycle = {
	.cycle = 1,
	.ndisks = 2,
	.sizes = { 10 * 4096 + 100, 1 << 20 },
};
#define FUZZ_BLOCK	4096

static ZSTD_DCtx *fuzz_dctx;
static ZSTD_CCtx *fuzz_cctx;

/* The frame that wb holds must carry exactly type and payload p[len]. */
static void
same_frame(const struct wbuf *wb, uint8_t type, const uint8_t *p, size_t len)
{
	size_t frame_len;
	uint8_t t;

	if (wire_frame_header(wb->p, WIRE_MAX_FRAME, &frame_len, &t) != 0 ||
	    t != type || frame_len != wb->len ||
	    frame_len - WIRE_FRAME_HDR != len ||
	    memcmp(wb->p + WIRE_FRAME_HDR, p, len) != 0)
		abort();
}

static void
fuzz_header(const uint8_t *data, size_t size)
{
	size_t frame_len;
	uint8_t type;

	if (size < WIRE_FRAME_HDR)
		return;
	if (wire_frame_header(data, WIRE_MAX_FRAME, &frame_len, &type) == 0) {
		uint32_t len = (uint32_t)data[0] << 24 |
		    (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3];
		if (frame_len != 4 + (size_t)len || len == 0 ||
		    len > WIRE_MAX_FRAME || type != data[4] ||
		    strcmp(wire_type_name(type), "unknown") == 0)
			abort();
	}
	if (wire_frame_header(data, 64, &frame_len, &type) == 0 &&
	    frame_len > 4 + 64)
		abort();
}

/*
 * Content of a decoded RAW or ZSTD frame, and encode's round trip.  A
 * hash mismatch still leaves whole content in out: the fuzzer cannot
 * forge hashes, so that is where encode gets its varied input.
 */
static void
fuzz_content(const struct wire_data *m, size_t size)
{
	struct wire_data m2;
	uint8_t *out, *scratch, *again;
	int r;

	out = malloc(m->length);
	if (out == NULL)
		abort();
	r = wire_data_content(m, out, (size & 1) ? NULL : fuzz_dctx);
	if (r != 0 && r != RD_ERR_COMPRESS && r != RD_ERR_HASH)
		abort();
	if (r != 0 && r != RD_ERR_HASH)
		goto out;

	scratch = malloc(m->length);
	again = malloc(m->length);
	if (scratch == NULL || again == NULL)
		abort();
	m2 = *m;
	digest_block(out, m->length, &m2.hash);
	wire_data_encode(fuzz_cctx, 1, out, m->length, scratch, &m2.encoding,
	    &m2.payload, &m2.payload_len);
	if (m2.payload_len > m->length ||
	    wire_data_content(&m2, again, fuzz_dctx) != 0 ||
	    memcmp(again, out, m->length) != 0)
		abort();
	free(scratch);
	free(again);
out:
	free(out);
}

static void
fuzz_data(const uint8_t *p, size_t len, size_t size, struct wbuf *wb)
{
	struct wire_data m;
	struct wire_digest d = { 0 };
	struct digest dg;
	int r;

	if (wire_get_data(p, len, &m) != 0)
		return;
	if (m.payload < p || m.payload + m.payload_len != p + len)
		abort();
	wire_put_data_hdr(wb, &m, m.payload_len);
	wb_put_bytes(wb, m.payload, m.payload_len);
	same_frame(wb, WIRE_DATA, p, len);

	r = wire_check_data(&m, &fuzz_cycle, FUZZ_BLOCK);
	if (r != 0 && r != RD_ERR_RANGE)
		abort();
	if (r == 0 && (m.disk >= fuzz_cycle.ndisks ||
	    m.offset + m.length > fuzz_cycle.sizes[m.disk]))
		abort();
	if (m.encoding != WIRE_ENC_ZERO)
		fuzz_content(&m, size);

	wire_digest_init(&d);
	wire_digest_update(&d, &m);
	wire_digest_final(&d, &dg);
	wire_digest_free(&d);
}

static int
valid_chunk_len(uint32_t n)
{
	return n >= WIRE_MIN_BLOCK && n <= WIRE_MAX_BLOCK &&
	    (n & (n - 1)) == 0;
}

static void
fuzz_sums(const uint8_t *p, size_t len, struct wbuf *wb)
{
	struct wire_sums m;

	if (wire_get_sums(p, len, &m) != 0)
		return;
	if (m.count == 0 || m.count > WIRE_MAX_SUMS ||
	    !valid_chunk_len(m.chunk) || m.offset % m.chunk != 0 ||
	    m.digests != p + (2 + 8 + 4 + 2) ||
	    len != 2 + 8 + 4 + 2 + (size_t)m.count * DIGEST_LEN)
		abort();
	wire_put_sums(wb, &m);
	same_frame(wb, WIRE_SUMS, p, len);
}

static void
fuzz_sig(const uint8_t *p, size_t len, struct wbuf *wb)
{
	struct wire_chunk m;

	if (wire_get_sig(p, len, &m) != 0)
		return;
	if (m.length == 0 || m.length > WIRE_MAX_BLOCK ||
	    m.payload_len == 0 || m.payload_len > WIRE_MAX_SIG ||
	    m.payload != p + (2 + 8 + 4) ||
	    m.payload + m.payload_len != p + len)
		abort();
	wire_put_sig(wb, &m);
	same_frame(wb, WIRE_SIG, p, len);
}

/* A DELTA, and its part in the END digest (as if a DATA header). */
static void
fuzz_delta(const uint8_t *p, size_t len, struct wbuf *wb)
{
	struct wire_chunk m;
	struct wire_data as_data;
	struct wire_digest d = { 0 };
	struct digest dg;

	if (wire_get_delta(p, len, &m) != 0)
		return;
	if (m.length == 0 || m.length > WIRE_MAX_BLOCK ||
	    m.delta_len == 0 || m.delta_len > WIRE_MAX_DELTA ||
	    m.payload_len == 0 || m.payload_len > WIRE_MAX_DELTA ||
	    (m.encoding != WIRE_ENC_RAW && m.encoding != WIRE_ENC_ZSTD) ||
	    (m.encoding == WIRE_ENC_RAW && m.payload_len != m.delta_len) ||
	    m.payload != p + WIRE_DELTA_HDR ||
	    m.payload + m.payload_len != p + len)
		abort();
	wire_put_delta(wb, &m);
	same_frame(wb, WIRE_DELTA, p, len);

	memset(&as_data, 0, sizeof(as_data));
	as_data.disk = m.disk;
	as_data.offset = m.offset;
	as_data.length = m.length;
	as_data.hash = m.hash;
	wire_digest_init(&d);
	wire_digest_update(&d, &as_data);
	wire_digest_final(&d, &dg);
	wire_digest_free(&d);
}

/* A DEFINITION: the text is the payload, as wire.h bounds it. */
static void
fuzz_definition(const uint8_t *p, size_t len, struct wbuf *wb)
{
	struct wire_definition m;
	struct wire_digest d = { 0 };
	struct digest dg;

	if (wire_get_definition(p, len, &m) != 0)
		return;
	if (m.xml != (const char *)p || m.len != len || len == 0 ||
	    len > WIRE_MAX_DEFINITION || memchr(p, '\0', len) != NULL)
		abort();
	for (size_t i = 0; i < len; i++)
		if (p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' &&
		    p[i] != '\r')
			abort();
	wire_put_definition(wb, m.xml, m.len);
	same_frame(wb, WIRE_DEFINITION, p, len);
	wire_digest_init(&d);
	wire_digest_definition(&d, m.xml, m.len);
	wire_digest_final(&d, &dg);
	wire_digest_free(&d);
}

static void
fuzz_promote(const uint8_t *p, size_t len, struct wbuf *wb)
{
	struct wire_promote m;
	char host[HOST_MAX_LEN + 1];
	uint16_t port;

	if (wire_get_promote(p, len, &m) != 0)
		return;
	if (m.cycle == 0 || m.generation < 2 ||
	    memchr(m.listen, '\0', sizeof(m.listen)) == NULL ||
	    util_parse_hostport(m.listen, host, sizeof(host), &port) != 0 ||
	    port == 0)
		abort();
	wire_put_promote(wb, &m);
	same_frame(wb, WIRE_PROMOTE, p, len);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	union {
		struct wire_hello h;
		struct wire_welcome w;
		struct wire_cycle c;
		struct wire_end e;
		struct wire_ack a;
		struct wire_nack_msg n;
		struct wire_sigend se;
		uint64_t gen;
		struct wire_keepalive k;
	} m;
	struct wire_nack_msg n2;
	struct wbuf wb;
	const uint8_t *p;
	size_t len;
	uint8_t type;

	if (fuzz_dctx == NULL && (fuzz_dctx = ZSTD_createDCtx()) == NULL)
		abort();
	if (fuzz_cctx == NULL && (fuzz_cctx = ZSTD_createCCtx()) == NULL)
		abort();
	fuzz_header(data, size);
	if (size < 1)
		return 0;
	type = data[0] & 15;
	p = data + 1;
	len = size - 1;
	wb_init(&wb);

	switch (type) {
	case WIRE_HELLO:
		if (wire_get_hello(p, len, &m.h) == 0) {
			wire_put_hello(&wb, &m.h);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_WELCOME:
		if (wire_get_welcome(p, len, &m.w) == 0) {
			wire_put_welcome(&wb, &m.w);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_CYCLE:
		if (wire_get_cycle(p, len, &m.c) == 0) {
			wire_put_cycle(&wb, &m.c);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_DATA:
		fuzz_data(p, len, size, &wb);
		break;
	case WIRE_END:
		if (wire_get_end(p, len, &m.e) == 0) {
			wire_put_end(&wb, &m.e);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_ACK:
		if (wire_get_ack(p, len, &m.a) == 0) {
			wire_put_ack(&wb, &m.a);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_NACK:
		/* Control characters are replaced: compare decoded forms. */
		if (wire_get_nack(p, len, &m.n) == 0) {
			if (wire_nack_name(m.n.code) == NULL)
				abort();
			wire_put_nack(&wb, m.n.code, m.n.reason);
			if (wire_get_nack(wb.p + WIRE_FRAME_HDR,
			    wb.len - WIRE_FRAME_HDR, &n2) != 0 ||
			    n2.code != m.n.code ||
			    strcmp(n2.reason, m.n.reason) != 0)
				abort();
		}
		break;
	case WIRE_SUMS:
		fuzz_sums(p, len, &wb);
		break;
	case WIRE_SIG:
		fuzz_sig(p, len, &wb);
		break;
	case WIRE_SIGEND:
		if (wire_get_sigend(p, len, &m.se) == 0) {
			wire_put_sigend(&wb, &m.se);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_DELTA:
		fuzz_delta(p, len, &wb);
		break;
	case WIRE_PROMOTE:
		fuzz_promote(p, len, &wb);
		break;
	case WIRE_PROMOTED:
		if (wire_get_promoted(p, len, &m.gen) == 0) {
			wire_put_promoted(&wb, m.gen);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_KEEPALIVE:
		if (wire_get_keepalive(p, len, &m.k) == 0) {
			if (m.k.every_ms < WIRE_KEEPALIVE_MIN_MS ||
			    m.k.every_ms > WIRE_KEEPALIVE_MAX_MS ||
			    (m.k.flags & ~WIRE_KEEPALIVE_APPLYING) != 0)
				abort();
			wire_put_keepalive(&wb, &m.k);
			same_frame(&wb, type, p, len);
		}
		break;
	case WIRE_DEFINITION:
		fuzz_definition(p, len, &wb);
		break;
	default:
		break;
	}
	wb_free(&wb);
	return 0;
}
