/*
 * test_wire.c — the replication protocol: every frame round-trips, and
 * every decoder refuses hostile input with the right error code.
 *
 * Hostile payloads are assembled field by field (not with the encoders,
 * which refuse to write them) and handed to the decoders in buffers of
 * exactly their size, so ASan catches any read past the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zstd.h>

#include "buf.h"
#include "digest.h"
#include "err.h"
#include "util.h"
#include "wire.h"

#define TEN	"aaaaaaaaaa"
#define NAME64	TEN TEN TEN TEN TEN TEN "aaaa"
#define NAME65	NAME64 "a"

#define CHECK_RC(what, got, want) do {					\
	int got_ = (got), want_ = (want);				\
	if (got_ != want_)						\
		fail_msg("%s: got %d (%s), want %d (%s)", (what),	\
		    got_, rd_strerror(got_), want_, rd_strerror(want_)); \
} while (0)

typedef int (*decode_fn)(const uint8_t *, size_t, void *);

/* Room for any decoded message. */
union any_msg {
	struct wire_hello	h;
	struct wire_welcome	w;
	struct wire_cycle	c;
	struct wire_data	d;
	struct wire_end		e;
	struct wire_ack		a;
	struct wire_nack_msg	n;
	struct wire_sums	s;
	struct wire_chunk	k;
	struct wire_sigend	se;
	struct wire_promote	pr;
	uint64_t		gen;
};

/* Decode len bytes from a private copy of exactly len bytes. */
static int
decode_exact(decode_fn fn, const uint8_t *p, size_t len, void *m)
{
	uint8_t *copy = malloc(len ? len : 1);
	int r;

	assert_non_null(copy);
	if (len > 0)
		memcpy(copy, p, len);
	r = fn(copy, len, m);
	free(copy);
	return r;
}

static int
dec_hello(const uint8_t *p, size_t len, void *m)
{
	return wire_get_hello(p, len, m);
}

static int
dec_welcome(const uint8_t *p, size_t len, void *m)
{
	return wire_get_welcome(p, len, m);
}

static int
dec_cycle(const uint8_t *p, size_t len, void *m)
{
	return wire_get_cycle(p, len, m);
}

static int
dec_data(const uint8_t *p, size_t len, void *m)
{
	return wire_get_data(p, len, m);
}

static int
dec_end(const uint8_t *p, size_t len, void *m)
{
	return wire_get_end(p, len, m);
}

static int
dec_ack(const uint8_t *p, size_t len, void *m)
{
	return wire_get_ack(p, len, m);
}

static int
dec_nack(const uint8_t *p, size_t len, void *m)
{
	return wire_get_nack(p, len, m);
}

static int
dec_sums(const uint8_t *p, size_t len, void *m)
{
	return wire_get_sums(p, len, m);
}

static int
dec_sig(const uint8_t *p, size_t len, void *m)
{
	return wire_get_sig(p, len, m);
}

static int
dec_sigend(const uint8_t *p, size_t len, void *m)
{
	return wire_get_sigend(p, len, m);
}

static int
dec_delta(const uint8_t *p, size_t len, void *m)
{
	return wire_get_delta(p, len, m);
}

static int
dec_promote(const uint8_t *p, size_t len, void *m)
{
	return wire_get_promote(p, len, m);
}

static int
dec_promoted(const uint8_t *p, size_t len, void *m)
{
	return wire_get_promoted(p, len, m);
}

static int
dec_keepalive(const uint8_t *p, size_t len, void *m)
{
	return wire_get_keepalive(p, len, m);
}

static int
dec_definition(const uint8_t *p, size_t len, void *m)
{
	return wire_get_definition(p, len, m);
}

/* Every proper prefix of a valid payload is RD_ERR_TRUNCATED. */
static void
check_prefixes(const char *what, decode_fn fn, const uint8_t *p, size_t len,
    size_t upto)
{
	union any_msg m;
	char buf[128];

	for (size_t cut = 0; cut < upto && cut < len; cut++) {
		snprintf(buf, sizeof(buf), "%s cut at %zu of %zu", what, cut,
		    len);
		CHECK_RC(buf, decode_exact(fn, p, cut, &m), RD_ERR_TRUNCATED);
	}
}

/* The same payload with one more byte is RD_ERR_INVALID. */
static void
check_trailing(const char *what, decode_fn fn, const uint8_t *p, size_t len)
{
	union any_msg m;
	uint8_t *q = malloc(len + 1);

	assert_non_null(q);
	memcpy(q, p, len);
	q[len] = 0;
	CHECK_RC(what, fn(q, len + 1, &m), RD_ERR_INVALID);
	free(q);
}

/* Check the frame header of the frame at b->p + off; return its payload. */
static const uint8_t *
frame_payload(const struct wbuf *b, size_t off, uint8_t want_type,
    size_t *len)
{
	size_t frame_len;
	uint8_t type;

	assert_true(b->len - off >= WIRE_FRAME_HDR);
	assert_int_equal(wire_frame_header(b->p + off, WIRE_MAX_FRAME,
	    &frame_len, &type), 0);
	assert_int_equal(type, want_type);
	assert_int_equal(frame_len, b->len - off);
	*len = frame_len - WIRE_FRAME_HDR;
	return b->p + off + WIRE_FRAME_HDR;
}

static void
fill_pattern(uint8_t *p, size_t len, uint32_t seed)
{
	uint32_t x = seed ? seed : 1;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (uint8_t)x;
	}
}

static void
fill_text(uint8_t *p, size_t len)
{
	static const char txt[] = "replicad keeps a copy of every disk. ";

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)txt[i % (sizeof(txt) - 1)];
}

/* --- frame header ------------------------------------------------------ */

static void
put_hdr(uint8_t h[WIRE_FRAME_HDR], uint32_t len, uint8_t type)
{
	h[0] = (uint8_t)(len >> 24);
	h[1] = (uint8_t)(len >> 16);
	h[2] = (uint8_t)(len >> 8);
	h[3] = (uint8_t)len;
	h[4] = type;
}

static void
test_frame_header(void **state)
{
	static const struct {
		const char *what;
		uint32_t len;
		uint8_t type;
		size_t max;
		int want;
	} cases[] = {
		{ "one byte", 1, WIRE_ACK, WIRE_MAX_FRAME, 0 },
		{ "largest", WIRE_MAX_FRAME, WIRE_DATA, WIRE_MAX_FRAME, 0 },
		{ "len 0", 0, WIRE_ACK, WIRE_MAX_FRAME, RD_ERR_INVALID },
		{ "above max", WIRE_MAX_FRAME + 1, WIRE_DATA, WIRE_MAX_FRAME,
		    RD_ERR_TOO_LARGE },
		{ "above small max", 65, WIRE_HELLO, 64, RD_ERR_TOO_LARGE },
		{ "at small max", 64, WIRE_HELLO, 64, 0 },
		{ "max clamped", WIRE_MAX_FRAME + 1, WIRE_DATA, SIZE_MAX,
		    RD_ERR_TOO_LARGE },
		{ "u32 max", UINT32_MAX, WIRE_DATA, WIRE_MAX_FRAME,
		    RD_ERR_TOO_LARGE },
		{ "largest delta", WIRE_MAX_FRAME, WIRE_DELTA, WIRE_MAX_FRAME,
		    0 },
		{ "type 0", 10, 0, WIRE_MAX_FRAME, RD_ERR_INVALID },
		{ "type 8 sums", 10, WIRE_SUMS, WIRE_MAX_FRAME, 0 },
		{ "type 13 promoted", 9, WIRE_PROMOTED, WIRE_MAX_FRAME, 0 },
		{ "type 14 keepalive", 14, WIRE_KEEPALIVE, WIRE_MAX_FRAME, 0 },
		{ "type 15 definition", 10, WIRE_DEFINITION, WIRE_MAX_FRAME,
		    0 },
		{ "type 16", 10, 16, WIRE_MAX_FRAME, RD_ERR_INVALID },
		{ "type 255", 10, 255, WIRE_MAX_FRAME, RD_ERR_INVALID },
	};
	uint8_t h[WIRE_FRAME_HDR];
	size_t frame_len;
	uint8_t type;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		put_hdr(h, cases[i].len, cases[i].type);
		frame_len = 0;
		type = 0;
		CHECK_RC(cases[i].what, wire_frame_header(h, cases[i].max,
		    &frame_len, &type), cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(frame_len, 4 + (size_t)cases[i].len);
			assert_int_equal(type, cases[i].type);
		}
	}

	/* Types 1..15, and nothing else, make a frame. */
	for (unsigned t = 0; t <= 255; t++) {
		char what[32];

		snprintf(what, sizeof(what), "type %u", t);
		put_hdr(h, 10, (uint8_t)t);
		CHECK_RC(what, wire_frame_header(h, WIRE_MAX_FRAME, &frame_len,
		    &type), t >= WIRE_HELLO && t <= WIRE_DEFINITION ? 0 :
		    RD_ERR_INVALID);
	}

	/* The largest of each frame fits in WIRE_MAX_FRAME. */
	assert_true(1 + WIRE_DATA_HDR + WIRE_MAX_BLOCK <= WIRE_MAX_FRAME);
	assert_true(1 + WIRE_DELTA_HDR + WIRE_MAX_DELTA <= WIRE_MAX_FRAME);
	assert_true(1 + 2 + 8 + 4 + WIRE_MAX_SIG <= WIRE_MAX_FRAME);
	assert_true(1 + 2 + 8 + 4 + 2 + WIRE_MAX_SUMS * DIGEST_LEN <=
	    WIRE_MAX_FRAME);
	assert_true(1 + WIRE_MAX_DEFINITION <= WIRE_MAX_FRAME);
}

/* --- round trips ------------------------------------------------------- */

static void
sample_hello(struct wire_hello *h)
{
	memset(h, 0, sizeof(*h));
	strcpy(h->vm, "web01");
	h->generation = 7;
	h->block_size = 64 << 10;
	h->interval_ms = 30000;
	h->ndisks = 2;
	strcpy(h->disks[0].name, "vda");
	h->disks[0].size = 10ULL << 30;
	strcpy(h->disks[1].name, "vdb.data");
	h->disks[1].size = (1ULL << 20) + 100;
}

static void
test_hello_roundtrip(void **state)
{
	struct wire_hello h, d;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	sample_hello(&h);
	h.version = 0;		/* the encoder always speaks WIRE_VERSION */
	wb_init(&b);
	wire_put_hello(&b, &h);
	p = frame_payload(&b, 0, WIRE_HELLO, &len);
	assert_int_equal(decode_exact(dec_hello, p, len, &d), 0);
	assert_int_equal(d.version, WIRE_VERSION);
	assert_string_equal(d.vm, "web01");
	assert_int_equal(d.generation, 7);
	assert_int_equal(d.block_size, 64 << 10);
	assert_int_equal(d.interval_ms, 30000);
	assert_int_equal(d.ndisks, 2);
	assert_string_equal(d.disks[0].name, "vda");
	assert_int_equal(d.disks[0].size, 10ULL << 30);
	assert_string_equal(d.disks[1].name, "vdb.data");
	assert_int_equal(d.disks[1].size, (1ULL << 20) + 100);
	check_prefixes("hello", dec_hello, p, len, len);
	check_trailing("hello trailing", dec_hello, p, len);

	/* The largest HELLO: 64 disks with 64-byte names. */
	wb_reset(&b);
	h.ndisks = WIRE_MAX_DISKS;
	strcpy(h.vm, NAME64);
	for (int i = 0; i < WIRE_MAX_DISKS; i++) {
		strcpy(h.disks[i].name, NAME64);
		h.disks[i].name[62] = (char)('0' + i / 10);
		h.disks[i].name[63] = (char)('0' + i % 10);
		h.disks[i].size = (uint64_t)i << 32 | 4096;
	}
	wire_put_hello(&b, &h);
	p = frame_payload(&b, 0, WIRE_HELLO, &len);
	assert_int_equal(decode_exact(dec_hello, p, len, &d), 0);
	assert_int_equal(d.ndisks, WIRE_MAX_DISKS);
	assert_string_equal(d.vm, NAME64);
	for (int i = 0; i < WIRE_MAX_DISKS; i++) {
		assert_string_equal(d.disks[i].name, h.disks[i].name);
		assert_int_equal(d.disks[i].size, h.disks[i].size);
	}
	wb_free(&b);
}

static void
test_small_frames_roundtrip(void **state)
{
	struct wire_welcome w = { .generation = 3, .last_cycle = 41,
	    .last_point = UINT64_MAX, .flags = WIRE_WELCOME_DATA }, wd;
	struct wire_end e = { .cycle = 42, .nframes = 1000,
	    .raw_bytes = 1ULL << 40 }, ed;
	struct wire_ack a = { .cycle = 42, .point = 17 }, ad;
	struct wire_nack_msg nd;
	struct wbuf b;
	const uint8_t *p;
	size_t off, len;

	for (int i = 0; i < DIGEST_LEN; i++)
		e.digest.b[i] = (uint8_t)(0xa0 + i);
	/* Frames appended one after another in one buffer. */
	wb_init(&b);
	wire_put_welcome(&b, &w);
	off = b.len;
	wire_put_end(&b, &e);
	p = frame_payload(&b, off, WIRE_END, &len);
	assert_int_equal(decode_exact(dec_end, p, len, &ed), 0);
	assert_int_equal(ed.cycle, 42);
	assert_int_equal(ed.nframes, 1000);
	assert_int_equal(ed.raw_bytes, 1ULL << 40);
	assert_memory_equal(ed.digest.b, e.digest.b, DIGEST_LEN);
	check_prefixes("end", dec_end, p, len, len);
	check_trailing("end trailing", dec_end, p, len);

	b.len = off;
	p = frame_payload(&b, 0, WIRE_WELCOME, &len);
	assert_int_equal(len, 2 + 8 + 8 + 8 + 1);
	assert_int_equal(decode_exact(dec_welcome, p, len, &wd), 0);
	assert_int_equal(wd.version, WIRE_VERSION);
	assert_int_equal(wd.generation, 3);
	assert_int_equal(wd.last_cycle, 41);
	assert_int_equal(wd.last_point, UINT64_MAX);
	assert_int_equal(wd.flags, WIRE_WELCOME_DATA);
	check_prefixes("welcome", dec_welcome, p, len, len);
	check_trailing("welcome trailing", dec_welcome, p, len);

	wb_reset(&b);
	w.flags = 0;
	wire_put_welcome(&b, &w);
	p = frame_payload(&b, 0, WIRE_WELCOME, &len);
	assert_int_equal(decode_exact(dec_welcome, p, len, &wd), 0);
	assert_int_equal(wd.flags, 0);

	/* Both flags decode; a flag this version does not know does not. */
	wb_reset(&b);
	w.flags = WIRE_WELCOME_DATA | WIRE_WELCOME_ADOPT;
	wire_put_welcome(&b, &w);
	p = frame_payload(&b, 0, WIRE_WELCOME, &len);
	assert_int_equal(decode_exact(dec_welcome, p, len, &wd), 0);
	assert_int_equal(wd.flags, WIRE_WELCOME_DATA | WIRE_WELCOME_ADOPT);
	wb_reset(&b);
	w.flags = 0x04;
	wire_put_welcome(&b, &w);
	p = frame_payload(&b, 0, WIRE_WELCOME, &len);
	assert_int_equal(wire_get_welcome(p, len, &wd), RD_ERR_INVALID);

	wb_reset(&b);
	wire_put_ack(&b, &a);
	p = frame_payload(&b, 0, WIRE_ACK, &len);
	assert_int_equal(len, 16);
	assert_int_equal(decode_exact(dec_ack, p, len, &ad), 0);
	assert_int_equal(ad.cycle, 42);
	assert_int_equal(ad.point, 17);
	check_prefixes("ack", dec_ack, p, len, len);
	check_trailing("ack trailing", dec_ack, p, len);

	wb_reset(&b);
	wire_put_nack(&b, WIRE_NACK_FENCED, "generation 3 below 5");
	p = frame_payload(&b, 0, WIRE_NACK, &len);
	assert_int_equal(decode_exact(dec_nack, p, len, &nd), 0);
	assert_int_equal(nd.code, WIRE_NACK_FENCED);
	assert_string_equal(nd.reason, "generation 3 below 5");
	check_prefixes("nack", dec_nack, p, len, len);
	check_trailing("nack trailing", dec_nack, p, len);

	wb_reset(&b);
	wire_put_nack(&b, WIRE_NACK_IO, "");
	p = frame_payload(&b, 0, WIRE_NACK, &len);
	assert_int_equal(decode_exact(dec_nack, p, len, &nd), 0);
	assert_int_equal(nd.code, WIRE_NACK_IO);
	assert_string_equal(nd.reason, "");
	wb_free(&b);
}

static void
test_cycle_roundtrip(void **state)
{
	struct wire_cycle c = { .cycle = 9, .created_ms = 1764275460000ULL,
	    .kind = 1, .flags = WIRE_CYCLE_FULL, .ndisks = 3,
	    .sizes = { 1ULL << 30, 4096, UINT64_MAX } }, d;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	wb_init(&b);
	wire_put_cycle(&b, &c);
	p = frame_payload(&b, 0, WIRE_CYCLE, &len);
	assert_int_equal(decode_exact(dec_cycle, p, len, &d), 0);
	assert_int_equal(d.cycle, 9);
	assert_int_equal(d.created_ms, 1764275460000ULL);
	assert_int_equal(d.kind, 1);
	assert_int_equal(d.flags, WIRE_CYCLE_FULL);
	assert_int_equal(d.ndisks, 3);
	assert_int_equal(d.sizes[0], 1ULL << 30);
	assert_int_equal(d.sizes[1], 4096);
	assert_int_equal(d.sizes[2], UINT64_MAX);
	check_prefixes("cycle", dec_cycle, p, len, len);
	check_trailing("cycle trailing", dec_cycle, p, len);

	wb_reset(&b);
	c.flags = WIRE_CYCLE_RESYNC;
	c.kind = 0;
	wire_put_cycle(&b, &c);
	p = frame_payload(&b, 0, WIRE_CYCLE, &len);
	assert_int_equal(decode_exact(dec_cycle, p, len, &d), 0);
	assert_int_equal(d.flags, WIRE_CYCLE_RESYNC);
	assert_int_equal(d.kind, 0);
	assert_int_equal(d.ndisks, 3);
	wb_free(&b);
}

/* A whole DATA frame for content raw[len] with the given encoding level. */
static void
put_data_frame(struct wbuf *b, uint16_t disk, uint64_t offset,
    const uint8_t *raw, size_t len, int level, uint8_t *enc_out)
{
	struct wire_data m = { .disk = disk, .offset = offset,
	    .length = (uint32_t)len };
	uint8_t *scratch = malloc(len);
	const uint8_t *payload;
	size_t plen;
	ZSTD_CCtx *cctx = ZSTD_createCCtx();

	assert_non_null(scratch);
	assert_non_null(cctx);
	wire_data_encode(cctx, level, raw, len, scratch, &m.encoding,
	    &payload, &plen);
	digest_block(raw, len, &m.hash);
	wire_put_data_hdr(b, &m, plen);
	wb_put_bytes(b, payload, plen);
	*enc_out = m.encoding;
	ZSTD_freeCCtx(cctx);
	free(scratch);
}

static void
test_data_roundtrip(void **state)
{
	struct wire_cycle c = { .cycle = 1, .ndisks = 2,
	    .sizes = { 10 * 4096 + 100, 1 << 20 } };
	struct wire_data m, z = { .disk = 1, .offset = 8192,
	    .length = (1 << 20) - 8192, .encoding = WIRE_ENC_ZERO };
	uint8_t raw[4096], *out;
	struct wbuf b;
	const uint8_t *p;
	size_t len;
	uint8_t enc;

	wb_init(&b);
	for (int level = 0; level <= 3; level += 3) {
		fill_text(raw, sizeof(raw));
		wb_reset(&b);
		put_data_frame(&b, 1, 4096, raw, sizeof(raw), level, &enc);
		assert_int_equal(enc, level ? WIRE_ENC_ZSTD : WIRE_ENC_RAW);
		p = frame_payload(&b, 0, WIRE_DATA, &len);
		/* In place: m.payload borrows from the frame. */
		assert_int_equal(wire_get_data(p, len, &m), 0);
		assert_int_equal(m.disk, 1);
		assert_int_equal(m.offset, 4096);
		assert_int_equal(m.length, 4096);
		assert_int_equal(m.encoding, enc);
		assert_ptr_equal(m.payload, p + WIRE_DATA_HDR);
		assert_int_equal(m.payload_len, len - WIRE_DATA_HDR);
		assert_int_equal(wire_check_data(&m, &c, 4096), 0);
		out = malloc(m.length);
		assert_non_null(out);
		assert_int_equal(wire_data_content(&m, out, NULL), 0);
		assert_memory_equal(out, raw, sizeof(raw));
		free(out);
		/* RAW: every cut is truncated; ZSTD: cuts in the header. */
		check_prefixes(level ? "data zstd" : "data raw", dec_data, p,
		    len, level ? WIRE_DATA_HDR + 1 : len);
		if (!level)
			check_trailing("data raw trailing", dec_data, p, len);
	}

	/* The disk's short last block. */
	wb_reset(&b);
	fill_pattern(raw, 100, 5);
	put_data_frame(&b, 0, 10 * 4096, raw, 100, 3, &enc);
	assert_int_equal(enc, WIRE_ENC_RAW);
	p = frame_payload(&b, 0, WIRE_DATA, &len);
	assert_int_equal(decode_exact(dec_data, p, len, &m), 0);
	assert_int_equal(m.length, 100);
	assert_int_equal(wire_check_data(&m, &c, 4096), 0);

	wb_reset(&b);
	wire_put_data_hdr(&b, &z, 0);
	p = frame_payload(&b, 0, WIRE_DATA, &len);
	assert_int_equal(len, WIRE_DATA_HDR);
	assert_int_equal(decode_exact(dec_data, p, len, &m), 0);
	assert_int_equal(m.encoding, WIRE_ENC_ZERO);
	assert_int_equal(m.length, (1 << 20) - 8192);
	assert_int_equal(m.payload_len, 0);
	assert_int_equal(wire_check_data(&m, &c, 4096), 0);
	check_prefixes("data zero", dec_data, p, len, len);
	check_trailing("data zero trailing", dec_data, p, len);
	wb_free(&b);
}

/* --- hostile HELLO ----------------------------------------------------- */

enum hello_field { H_NONE, H_MAGIC, H_VERSION, H_VM, H_GEN, H_BLOCK,
    H_NDISKS, H_COUNT, H_NAMES, H_NAMELEN };

struct hello_case {
	const char	*what;
	enum hello_field f;
	uint64_t	 v;
	const char	*s;
	int		 want;
};

/* HELLO payload, by default valid: web01, gen 1, 64 KiB, disks vda, vdb. */
static void
build_hello(struct wbuf *b, const struct hello_case *hc)
{
	char names[WIRE_MAX_DISKS + 2][NAME_MAX_LEN + 2];
	const char *list = "vda,vdb";
	uint64_t count;
	size_t n = 0;

	if (hc->f == H_NAMES)
		list = hc->s;
	if (hc->f == H_NDISKS) {
		for (n = 0; n < hc->v; n++)
			snprintf(names[n], sizeof(names[n]), "d%zu", n);
	} else {
		/* Comma-separated: "vda," is "vda" and an empty name. */
		for (const char *s = list;;) {
			size_t k = strcspn(s, ",");

			assert_true(n < WIRE_MAX_DISKS + 2 &&
			    k < sizeof(names[n]));
			memcpy(names[n], s, k);
			names[n++][k] = '\0';
			if (s[k] == '\0')
				break;
			s += k + 1;
		}
	}
	count = hc->f == H_COUNT ? hc->v : n;

	wb_put_u32(b, hc->f == H_MAGIC ? (uint32_t)hc->v : WIRE_MAGIC);
	wb_put_u16(b, hc->f == H_VERSION ? (uint16_t)hc->v : WIRE_VERSION);
	wb_put_str(b, hc->f == H_VM ? hc->s : "web01");
	wb_put_u64(b, hc->f == H_GEN ? hc->v : 1);
	wb_put_u32(b, hc->f == H_BLOCK ? (uint32_t)hc->v : 64 << 10);
	wb_put_u64(b, 0);
	wb_put_u16(b, (uint16_t)count);
	for (size_t i = 0; i < n; i++) {
		if (i == 0 && hc->f == H_NAMELEN) {
			/* A length that promises more than follows. */
			wb_put_u16(b, (uint16_t)hc->v);
			wb_put_bytes(b, "vda", 3);
		} else {
			wb_put_str(b, names[i]);
		}
		wb_put_u64(b, 1 << 20);
	}
}

static void
test_hello_hostile(void **state)
{
	static const struct hello_case cases[] = {
		{ "valid", H_NONE, 0, NULL, 0 },
		{ "bad magic", H_MAGIC, 0x52504C45, NULL, RD_ERR_VERSION },
		{ "zero magic", H_MAGIC, 0, NULL, RD_ERR_VERSION },
		{ "version 0", H_VERSION, 0, NULL, RD_ERR_VERSION },
		{ "version 1", H_VERSION, 1, NULL, RD_ERR_VERSION },
		{ "version 2", H_VERSION, 2, NULL, 0 },
		{ "version 3", H_VERSION, 3, NULL, 0 },
		{ "version 4", H_VERSION, 4, NULL, 0 },
		{ "version 5", H_VERSION, 5, NULL, RD_ERR_VERSION },
		{ "vm with /", H_VM, 0, "a/b", RD_ERR_NAME },
		{ "vm ..", H_VM, 0, "..", RD_ERR_NAME },
		{ "vm leading .", H_VM, 0, ".hidden", RD_ERR_NAME },
		{ "vm leading -", H_VM, 0, "-rf", RD_ERR_NAME },
		{ "vm empty", H_VM, 0, "", RD_ERR_NAME },
		{ "vm space", H_VM, 0, "web 01", RD_ERR_NAME },
		{ "vm newline", H_VM, 0, "web01\n", RD_ERR_NAME },
		{ "vm 65 bytes", H_VM, 0, NAME65, RD_ERR_NAME },
		{ "vm 64 bytes", H_VM, 0, NAME64, 0 },
		{ "vm named test", H_VM, 0, "test", 0 },
		{ "generation 0", H_GEN, 0, NULL, RD_ERR_INVALID },
		{ "generation max", H_GEN, UINT64_MAX, NULL, 0 },
		{ "block 0", H_BLOCK, 0, NULL, RD_ERR_INVALID },
		{ "block 2 KiB", H_BLOCK, 2048, NULL, RD_ERR_INVALID },
		{ "block 4 KiB", H_BLOCK, 4096, NULL, 0 },
		{ "block 4 MiB", H_BLOCK, 4 << 20, NULL, 0 },
		{ "block 8 MiB", H_BLOCK, 8 << 20, NULL, RD_ERR_INVALID },
		{ "block 2^31", H_BLOCK, 1u << 31, NULL, RD_ERR_INVALID },
		{ "block 12 KiB", H_BLOCK, 12288, NULL, RD_ERR_INVALID },
		{ "block 64K+1", H_BLOCK, 65537, NULL, RD_ERR_INVALID },
		{ "block u32 max", H_BLOCK, UINT32_MAX, NULL, RD_ERR_INVALID },
		{ "ndisks 0", H_NDISKS, 0, NULL, RD_ERR_INVALID },
		{ "ndisks 1", H_NDISKS, 1, NULL, 0 },
		{ "ndisks 64", H_NDISKS, 64, NULL, 0 },
		{ "ndisks 65", H_NDISKS, 65, NULL, RD_ERR_TOO_LARGE },
		{ "count 65535", H_COUNT, 65535, NULL, RD_ERR_TOO_LARGE },
		{ "count above list", H_COUNT, 3, NULL, RD_ERR_TRUNCATED },
		{ "count below list", H_COUNT, 1, NULL, RD_ERR_INVALID },
		{ "disk with /", H_NAMES, 0, "vda,../x", RD_ERR_NAME },
		{ "disk ..", H_NAMES, 0, "..", RD_ERR_NAME },
		{ "disk .", H_NAMES, 0, "vda,.", RD_ERR_NAME },
		{ "disk leading .", H_NAMES, 0, ".vda", RD_ERR_NAME },
		{ "disk empty", H_NAMES, 0, "vda,", RD_ERR_NAME },
		{ "disk 65 bytes", H_NAMES, 0, "vda," NAME65, RD_ERR_NAME },
		{ "disk 64 bytes", H_NAMES, 0, "vda," NAME64, 0 },
		{ "disk named test", H_NAMES, 0, "test", RD_ERR_NAME },
		{ "disk named test2", H_NAMES, 0, "test2", 0 },
		{ "duplicate disks", H_NAMES, 0, "vda,vdb,vda", RD_ERR_NAME },
		{ "duplicate adjacent", H_NAMES, 0, "vda,vda", RD_ERR_NAME },
		{ "names differ in case", H_NAMES, 0, "vda,VDA", 0 },
		{ "name len past end", H_NAMELEN, 200, NULL,
		    RD_ERR_TRUNCATED },
	};
	struct wire_hello m;
	struct wbuf b;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_hello(&b, &cases[i]);
		CHECK_RC(cases[i].what, decode_exact(dec_hello, b.p, b.len,
		    &m), cases[i].want);
		if (cases[i].want == 0)
			check_prefixes(cases[i].what, dec_hello, b.p, b.len,
			    b.len);
	}
	wb_free(&b);
}

static void
test_hello_name_with_nul(void **state)
{
	struct hello_case base = { "valid", H_NONE, 0, NULL, 0 };
	struct wire_hello m;
	struct wbuf b;
	uint8_t *p;

	/* "web01" in the default payload becomes "we\0\01". */
	wb_init(&b);
	build_hello(&b, &base);
	p = memmem(b.p, b.len, "web01", 5);
	assert_non_null(p);
	p[2] = '\0';
	CHECK_RC("vm with NUL", decode_exact(dec_hello, b.p, b.len, &m),
	    RD_ERR_NAME);

	wb_reset(&b);
	build_hello(&b, &base);
	p = memmem(b.p, b.len, "vdb", 3);
	assert_non_null(p);
	p[1] = '\0';
	CHECK_RC("disk with NUL", decode_exact(dec_hello, b.p, b.len, &m),
	    RD_ERR_NAME);
	wb_free(&b);
}

/* --- hostile WELCOME, CYCLE, END, ACK, NACK ---------------------------- */

static void
build_welcome(struct wbuf *b, uint16_t version, int with_flags,
    uint8_t flags)
{
	wb_put_u16(b, version);
	wb_put_u64(b, 1);
	wb_put_u64(b, 2);
	wb_put_u64(b, 3);
	if (with_flags)
		wb_put_u8(b, flags);
}

static void
test_welcome_hostile(void **state)
{
	static const uint16_t versions[] = { 0, 1, 5, 0x0100, 0x0200,
	    0x0300, UINT16_MAX };
	static const struct {
		const char *what;
		int with_flags;
		uint8_t flags;
		int want;
	} cases[] = {
		{ "flags 0", 1, 0, 0 },
		{ "data", 1, WIRE_WELCOME_DATA, 0 },
		{ "flags byte missing", 0, 0, RD_ERR_TRUNCATED },
		{ "adopt", 1, WIRE_WELCOME_ADOPT, 0 },
		{ "data and adopt", 1, WIRE_WELCOME_DATA | WIRE_WELCOME_ADOPT,
		    0 },
		{ "flag 0x04", 1, 0x04, RD_ERR_INVALID },
		{ "flag 0x80", 1, 0x80, RD_ERR_INVALID },
		{ "data and 0x04", 1, WIRE_WELCOME_DATA | 0x04,
		    RD_ERR_INVALID },
		{ "all flags", 1, 0xff, RD_ERR_INVALID },
	};
	struct wire_welcome m;
	struct wbuf b;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
		wb_reset(&b);
		build_welcome(&b, versions[i], 1, 0);
		CHECK_RC("welcome version", decode_exact(dec_welcome, b.p,
		    b.len, &m), RD_ERR_VERSION);
	}
	/* A version 1 WELCOME (no flags byte) is refused for its version. */
	wb_reset(&b);
	build_welcome(&b, 1, 0, 0);
	CHECK_RC("welcome v1 layout", decode_exact(dec_welcome, b.p, b.len,
	    &m), RD_ERR_VERSION);
	/* A version this side does not speak is reported before length. */
	wb_reset(&b);
	wb_put_u16(&b, 1);
	CHECK_RC("welcome v1 short", decode_exact(dec_welcome, b.p, b.len,
	    &m), RD_ERR_VERSION);
	wb_reset(&b);
	wb_put_u16(&b, WIRE_VERSION);
	CHECK_RC("welcome v2 short", decode_exact(dec_welcome, b.p, b.len,
	    &m), RD_ERR_TRUNCATED);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_welcome(&b, WIRE_VERSION, cases[i].with_flags,
		    cases[i].flags);
		CHECK_RC(cases[i].what, decode_exact(dec_welcome, b.p, b.len,
		    &m), cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(m.version, WIRE_VERSION);
			assert_int_equal(m.generation, 1);
			assert_int_equal(m.last_cycle, 2);
			assert_int_equal(m.last_point, 3);
			assert_int_equal(m.flags, cases[i].flags);
		}
	}
	wb_free(&b);
}

static void
build_cycle(struct wbuf *b, uint64_t cycle, uint8_t kind, uint8_t flags,
    uint16_t count, size_t nsizes)
{
	wb_put_u64(b, cycle);
	wb_put_u64(b, 1764275460000ULL);
	wb_put_u8(b, kind);
	wb_put_u8(b, flags);
	wb_put_u16(b, count);
	for (size_t i = 0; i < nsizes; i++)
		wb_put_u64(b, (i + 1) << 20);
}

static void
test_cycle_hostile(void **state)
{
	static const struct {
		const char *what;
		uint64_t cycle;
		uint8_t kind, flags;
		uint16_t count;
		size_t nsizes;
		int want;
	} cases[] = {
		{ "valid", 1, 0, 0, 2, 2, 0 },
		{ "valid full app", 5, 1, WIRE_CYCLE_FULL, 64, 64, 0 },
		{ "valid resync", 5, 0, WIRE_CYCLE_RESYNC, 2, 2, 0 },
		{ "valid resync app", 5, 1, WIRE_CYCLE_RESYNC, 1, 1, 0 },
		{ "cycle 0", 0, 0, 0, 2, 2, RD_ERR_INVALID },
		{ "kind 2", 1, 2, 0, 2, 2, RD_ERR_INVALID },
		{ "full and resync", 1, 0, WIRE_CYCLE_FULL |
		    WIRE_CYCLE_RESYNC, 2, 2, RD_ERR_INVALID },
		{ "unknown flag", 1, 0, 0x04, 2, 2, RD_ERR_INVALID },
		{ "resync and unknown", 1, 0, WIRE_CYCLE_RESYNC | 0x04, 2, 2,
		    RD_ERR_INVALID },
		{ "full and unknown", 1, 0, WIRE_CYCLE_FULL | 0x80, 2, 2,
		    RD_ERR_INVALID },
		{ "all flags", 1, 0, 0xff, 2, 2, RD_ERR_INVALID },
		{ "ndisks 0", 1, 0, 0, 0, 0, RD_ERR_INVALID },
		{ "ndisks 65", 1, 0, 0, 65, 65, RD_ERR_TOO_LARGE },
		{ "ndisks 65535", 1, 0, 0, 65535, 0, RD_ERR_TOO_LARGE },
		{ "sizes missing", 1, 0, 0, 3, 2, RD_ERR_TRUNCATED },
		{ "sizes extra", 1, 0, 0, 1, 2, RD_ERR_INVALID },
	};
	struct wire_cycle m;
	struct wbuf b;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_cycle(&b, cases[i].cycle, cases[i].kind, cases[i].flags,
		    cases[i].count, cases[i].nsizes);
		CHECK_RC(cases[i].what, decode_exact(dec_cycle, b.p, b.len,
		    &m), cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(m.flags, cases[i].flags);
			assert_int_equal(m.kind, cases[i].kind);
			assert_int_equal(m.ndisks, cases[i].count);
			assert_int_equal(m.sizes[m.ndisks - 1],
			    (uint64_t)m.ndisks << 20);
		}
	}
	wb_free(&b);
}

static void
test_end_ack_nack_hostile(void **state)
{
	struct wire_end e = { .cycle = 0, .nframes = 1 };
	struct wire_end ed;
	struct wire_nack_msg n;
	struct wbuf b;
	const uint8_t *p;
	size_t len;
	char *reason;

	wb_init(&b);
	wire_put_end(&b, &e);
	p = frame_payload(&b, 0, WIRE_END, &len);
	CHECK_RC("end cycle 0", decode_exact(dec_end, p, len, &ed),
	    RD_ERR_INVALID);

	reason = malloc(WIRE_MAX_REASON + 2);
	assert_non_null(reason);
	memset(reason, 'x', WIRE_MAX_REASON + 1);
	reason[WIRE_MAX_REASON + 1] = '\0';

	/* Longest reason decodes; one more byte is too large. */
	wb_reset(&b);
	wb_put_u16(&b, WIRE_NACK_IO);
	wb_put_u16(&b, WIRE_MAX_REASON);
	wb_put_bytes(&b, reason, WIRE_MAX_REASON);
	CHECK_RC("nack longest", decode_exact(dec_nack, b.p, b.len, &n), 0);
	assert_int_equal(strlen(n.reason), WIRE_MAX_REASON);
	wb_reset(&b);
	wb_put_u16(&b, WIRE_NACK_IO);
	wb_put_str(&b, reason);
	CHECK_RC("nack too long", decode_exact(dec_nack, b.p, b.len, &n),
	    RD_ERR_TOO_LARGE);

	/* The encoder cuts a long reason so that the peer can read it. */
	wb_reset(&b);
	wire_put_nack(&b, WIRE_NACK_INTERNAL, reason);
	p = frame_payload(&b, 0, WIRE_NACK, &len);
	CHECK_RC("nack cut", decode_exact(dec_nack, p, len, &n), 0);
	assert_int_equal(strlen(n.reason), WIRE_MAX_REASON);
	free(reason);

	wb_reset(&b);
	wb_put_u16(&b, WIRE_NACK_PROTOCOL);
	wb_put_u16(&b, 3);
	wb_put_bytes(&b, "a\0b", 3);
	CHECK_RC("nack with NUL", decode_exact(dec_nack, b.p, b.len, &n),
	    RD_ERR_INVALID);

	/* Control characters cannot forge log lines. */
	wb_reset(&b);
	wire_put_nack(&b, WIRE_NACK_DENIED, "no\nfake: line\r\x1b[2J\x7f");
	p = frame_payload(&b, 0, WIRE_NACK, &len);
	CHECK_RC("nack control", decode_exact(dec_nack, p, len, &n), 0);
	assert_string_equal(n.reason, "no?fake: line??[2J?");

	wb_reset(&b);
	wb_put_u16(&b, WIRE_NACK_PROTOCOL);
	wb_put_u16(&b, 10);
	wb_put_bytes(&b, "short", 5);
	CHECK_RC("nack reason cut", decode_exact(dec_nack, b.p, b.len, &n),
	    RD_ERR_TRUNCATED);
	wb_free(&b);
}

/* --- hostile DATA ------------------------------------------------------ */

static void
build_data(struct wbuf *b, uint16_t disk, uint64_t offset, uint32_t length,
    uint8_t enc, int hashed, size_t plen)
{
	uint8_t hash[DIGEST_LEN];

	memset(hash, 0, sizeof(hash));
	if (hashed)
		hash[DIGEST_LEN - 1] = 1;
	wb_put_u16(b, disk);
	wb_put_u64(b, offset);
	wb_put_u32(b, length);
	wb_put_u8(b, enc);
	wb_put_bytes(b, hash, sizeof(hash));
	if (plen > 0) {
		memset(wb_reserve(b, plen), 0x5a, plen);
		b->len += plen;
	}
}

static void
test_data_hostile(void **state)
{
	static const struct {
		const char *what;
		uint32_t length;
		uint8_t enc;
		int hashed;
		size_t plen;
		int want;
	} cases[] = {
		{ "raw valid", 4096, WIRE_ENC_RAW, 1, 4096, 0 },
		{ "raw short payload", 4096, WIRE_ENC_RAW, 1, 4095,
		    RD_ERR_TRUNCATED },
		{ "raw long payload", 4096, WIRE_ENC_RAW, 1, 4097,
		    RD_ERR_INVALID },
		{ "raw no payload", 4096, WIRE_ENC_RAW, 1, 0,
		    RD_ERR_TRUNCATED },
		{ "raw length 0", 0, WIRE_ENC_RAW, 1, 0, RD_ERR_INVALID },
		{ "raw largest", WIRE_MAX_BLOCK, WIRE_ENC_RAW, 1,
		    WIRE_MAX_BLOCK, 0 },
		{ "raw above block max", WIRE_MAX_BLOCK + 1, WIRE_ENC_RAW, 1,
		    WIRE_MAX_BLOCK + 1, RD_ERR_TOO_LARGE },
		{ "zstd valid", 4096, WIRE_ENC_ZSTD, 1, 100, 0 },
		{ "zstd empty", 4096, WIRE_ENC_ZSTD, 1, 0, RD_ERR_TRUNCATED },
		{ "zstd length 0", 0, WIRE_ENC_ZSTD, 1, 100, RD_ERR_INVALID },
		{ "zstd payload at max", 4096, WIRE_ENC_ZSTD, 1,
		    WIRE_MAX_BLOCK, 0 },
		{ "zstd payload above max", 4096, WIRE_ENC_ZSTD, 1,
		    WIRE_MAX_BLOCK + 1, RD_ERR_TOO_LARGE },
		{ "zstd length above max", WIRE_MAX_BLOCK + 1, WIRE_ENC_ZSTD,
		    1, 100, RD_ERR_TOO_LARGE },
		{ "zstd length u32 max", UINT32_MAX, WIRE_ENC_ZSTD, 1, 100,
		    RD_ERR_TOO_LARGE },
		{ "zero valid", 1 << 20, WIRE_ENC_ZERO, 0, 0, 0 },
		{ "zero largest", WIRE_MAX_ZERO, WIRE_ENC_ZERO, 0, 0, 0 },
		{ "zero above max", WIRE_MAX_ZERO + 1, WIRE_ENC_ZERO, 0, 0,
		    RD_ERR_TOO_LARGE },
		{ "zero u32 max", UINT32_MAX, WIRE_ENC_ZERO, 0, 0,
		    RD_ERR_TOO_LARGE },
		{ "zero with payload", 4096, WIRE_ENC_ZERO, 0, 1,
		    RD_ERR_INVALID },
		{ "zero with hash", 4096, WIRE_ENC_ZERO, 1, 0,
		    RD_ERR_INVALID },
		{ "zero length 0", 0, WIRE_ENC_ZERO, 0, 0, RD_ERR_INVALID },
		{ "encoding 3", 4096, 3, 1, 4096, RD_ERR_INVALID },
		{ "encoding 255", 4096, 255, 0, 0, RD_ERR_INVALID },
	};
	struct wire_data m;
	struct wbuf b;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_data(&b, 1, 8192, cases[i].length, cases[i].enc,
		    cases[i].hashed, cases[i].plen);
		CHECK_RC(cases[i].what, decode_exact(dec_data, b.p, b.len,
		    &m), cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(m.disk, 1);
			assert_int_equal(m.offset, 8192);
			assert_int_equal(m.length, cases[i].length);
			assert_int_equal(m.encoding, cases[i].enc);
			assert_int_equal(m.payload_len, cases[i].plen);
		}
	}
	wb_free(&b);
}

/* --- resynchronisation and handover ---------------------------------- */

#define SUMS_HDR	(2 + 8 + 4 + 2)
#define SIG_HDR		(2 + 8 + 4)

static uint8_t *zstd_frame(const uint8_t *src, size_t len, int with_size,
    size_t *out_len);

/* Append n pattern bytes to b. */
static void
put_pattern(struct wbuf *b, size_t n, uint32_t seed)
{
	if (n > 0) {
		fill_pattern(wb_reserve(b, n), n, seed);
		b->len += n;
	}
}

/*
 * Frames appended one after another: walk them with wire_frame_header()
 * the way a reader does and return the payload of the n-th (0-based).
 */
static const uint8_t *
nth_payload(const struct wbuf *b, size_t n, uint8_t want_type, size_t *len)
{
	size_t off = 0, frame_len = 0;
	uint8_t type = 0;

	for (size_t i = 0; i <= n; i++) {
		if (i > 0)
			off += frame_len;
		assert_true(b->len - off >= WIRE_FRAME_HDR);
		assert_int_equal(wire_frame_header(b->p + off, WIRE_MAX_FRAME,
		    &frame_len, &type), 0);
		assert_true(frame_len <= b->len - off);
	}
	assert_int_equal(type, want_type);
	*len = frame_len - WIRE_FRAME_HDR;
	return b->p + off + WIRE_FRAME_HDR;
}

static void
test_sums_roundtrip(void **state)
{
	uint8_t digests[3 * DIGEST_LEN], *big;
	struct wire_sums s = { .disk = 1, .offset = 5ULL << 20,
	    .chunk = WIRE_CHUNK, .count = 3, .digests = digests }, d;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	fill_pattern(digests, sizeof(digests), 11);
	wb_init(&b);
	wire_put_sums(&b, &s);
	p = frame_payload(&b, 0, WIRE_SUMS, &len);
	assert_int_equal(len, SUMS_HDR + sizeof(digests));
	/* In place: the digests are borrowed from the frame. */
	assert_int_equal(wire_get_sums(p, len, &d), 0);
	assert_int_equal(d.disk, 1);
	assert_int_equal(d.offset, 5ULL << 20);
	assert_int_equal(d.chunk, WIRE_CHUNK);
	assert_int_equal(d.count, 3);
	assert_ptr_equal(d.digests, p + SUMS_HDR);
	assert_memory_equal(d.digests, digests, sizeof(digests));
	check_prefixes("sums", dec_sums, p, len, len);
	check_trailing("sums trailing", dec_sums, p, len);

	/* The largest: WIRE_MAX_SUMS digests of the largest chunks. */
	big = malloc(WIRE_MAX_SUMS * DIGEST_LEN);
	assert_non_null(big);
	fill_pattern(big, WIRE_MAX_SUMS * DIGEST_LEN, 12);
	s.disk = WIRE_MAX_DISKS - 1;
	s.chunk = WIRE_MAX_BLOCK;
	s.offset = UINT64_MAX - (WIRE_MAX_BLOCK - 1);
	s.count = WIRE_MAX_SUMS;
	s.digests = big;
	wb_reset(&b);
	wire_put_sums(&b, &s);
	p = frame_payload(&b, 0, WIRE_SUMS, &len);
	assert_int_equal(len, SUMS_HDR + WIRE_MAX_SUMS * DIGEST_LEN);
	assert_int_equal(decode_exact(dec_sums, p, len, &d), 0);
	assert_int_equal(d.disk, WIRE_MAX_DISKS - 1);
	assert_int_equal(d.offset, UINT64_MAX - (WIRE_MAX_BLOCK - 1));
	assert_int_equal(d.chunk, WIRE_MAX_BLOCK);
	assert_int_equal(d.count, WIRE_MAX_SUMS);
	check_prefixes("sums largest", dec_sums, p, len, len);
	check_trailing("sums largest trailing", dec_sums, p, len);
	assert_int_equal(wire_get_sums(p, len, &d), 0);
	assert_memory_equal(d.digests, big, WIRE_MAX_SUMS * DIGEST_LEN);
	free(big);
	wb_free(&b);
}

/* SUMS of disk 1; ndig digests' worth of bytes plus extra (may be < 0). */
static void
build_sums(struct wbuf *b, uint64_t offset, uint32_t chunk, uint16_t count,
    size_t ndig, int extra)
{
	wb_put_u16(b, 1);
	wb_put_u64(b, offset);
	wb_put_u32(b, chunk);
	wb_put_u16(b, count);
	put_pattern(b, ndig * DIGEST_LEN + extra, 13);
}

static void
test_sums_hostile(void **state)
{
	static const uint64_t top = UINT64_MAX & ~(uint64_t)(WIRE_CHUNK - 1);
	static const struct {
		const char *what;
		uint64_t offset;
		uint32_t chunk;
		uint16_t count;
		size_t ndig;
		int extra;
		int want;
	} cases[] = {
		{ "valid", 0, WIRE_CHUNK, 2, 2, 0, 0 },
		{ "one digest", 7 * WIRE_CHUNK, WIRE_CHUNK, 1, 1, 0, 0 },
		{ "smallest chunk", 3 * 4096, WIRE_MIN_BLOCK, 2, 2, 0, 0 },
		{ "largest chunk", 2 * WIRE_MAX_BLOCK, WIRE_MAX_BLOCK, 2, 2, 0,
		    0 },
		{ "top offset", top, WIRE_CHUNK, 1, 1, 0, 0 },
		{ "most digests", 0, WIRE_CHUNK, WIRE_MAX_SUMS, WIRE_MAX_SUMS,
		    0, 0 },
		{ "count 0", 0, WIRE_CHUNK, 0, 0, 0, RD_ERR_INVALID },
		{ "count 0 with a digest", 0, WIRE_CHUNK, 0, 1, 0,
		    RD_ERR_INVALID },
		{ "count above max", 0, WIRE_CHUNK, WIRE_MAX_SUMS + 1,
		    WIRE_MAX_SUMS + 1, 0, RD_ERR_TOO_LARGE },
		{ "count 65535, no digests", 0, WIRE_CHUNK, 65535, 0, 0,
		    RD_ERR_TOO_LARGE },
		{ "chunk 0", 0, 0, 2, 2, 0, RD_ERR_INVALID },
		{ "chunk 1", 0, 1, 2, 2, 0, RD_ERR_INVALID },
		{ "chunk 2 KiB", 0, WIRE_MIN_BLOCK / 2, 2, 2, 0,
		    RD_ERR_INVALID },
		{ "chunk 8 MiB", 0, WIRE_MAX_BLOCK * 2, 2, 2, 0,
		    RD_ERR_INVALID },
		{ "chunk 2^31", 0, 1u << 31, 2, 2, 0, RD_ERR_INVALID },
		{ "chunk 12 KiB", 0, 12288, 2, 2, 0, RD_ERR_INVALID },
		{ "chunk 1 MiB + 1", 0, WIRE_CHUNK + 1, 2, 2, 0,
		    RD_ERR_INVALID },
		{ "chunk u32 max", 0, UINT32_MAX, 2, 2, 0, RD_ERR_INVALID },
		{ "offset 1", 1, WIRE_CHUNK, 2, 2, 0, RD_ERR_INVALID },
		{ "offset one block", 4096, WIRE_CHUNK, 2, 2, 0,
		    RD_ERR_INVALID },
		{ "offset half chunk", WIRE_CHUNK / 2, WIRE_CHUNK, 2, 2, 0,
		    RD_ERR_INVALID },
		{ "offset u64 max", UINT64_MAX, WIRE_CHUNK, 1, 1, 0,
		    RD_ERR_INVALID },
		/* Fields are checked before counts, counts before bytes. */
		{ "count above max, bad chunk", 0, 3000, WIRE_MAX_SUMS + 1,
		    0, 0, RD_ERR_INVALID },
		{ "count above max, no digests", 0, WIRE_CHUNK,
		    WIRE_MAX_SUMS + 1, 0, 0, RD_ERR_TOO_LARGE },
		{ "digest missing", 0, WIRE_CHUNK, 3, 2, 0, RD_ERR_TRUNCATED },
		{ "half a digest missing", 0, WIRE_CHUNK, 3, 3, -8,
		    RD_ERR_TRUNCATED },
		{ "one byte short", 0, WIRE_CHUNK, 3, 3, -1,
		    RD_ERR_TRUNCATED },
		{ "digest extra", 0, WIRE_CHUNK, 2, 3, 0, RD_ERR_INVALID },
		{ "one byte extra", 0, WIRE_CHUNK, 2, 2, 1, RD_ERR_INVALID },
	};
	struct wire_sums m;
	struct wbuf b;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_sums(&b, cases[i].offset, cases[i].chunk, cases[i].count,
		    cases[i].ndig, cases[i].extra);
		CHECK_RC(cases[i].what, decode_exact(dec_sums, b.p, b.len,
		    &m), cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(m.disk, 1);
			assert_int_equal(m.offset, cases[i].offset);
			assert_int_equal(m.chunk, cases[i].chunk);
			assert_int_equal(m.count, cases[i].count);
		}
	}
	wb_free(&b);
}

static void
test_sig_roundtrip(void **state)
{
	uint8_t sig[300], *big;
	struct wire_chunk k = { .disk = 2, .offset = 3ULL << 20,
	    .length = WIRE_CHUNK, .payload = sig, .payload_len = sizeof(sig) },
	    d;
	struct wbuf b;
	const uint8_t *p;
	size_t len;
	char what[64];

	/* Fields that SIG does not carry are not sent. */
	k.encoding = WIRE_ENC_ZSTD;
	k.delta_len = 12345;
	memset(k.hash.b, 0xee, DIGEST_LEN);
	fill_pattern(sig, sizeof(sig), 21);
	wb_init(&b);
	wire_put_sig(&b, &k);
	p = frame_payload(&b, 0, WIRE_SIG, &len);
	assert_int_equal(len, SIG_HDR + sizeof(sig));
	assert_int_equal(wire_get_sig(p, len, &d), 0);
	assert_int_equal(d.disk, 2);
	assert_int_equal(d.offset, 3ULL << 20);
	assert_int_equal(d.length, WIRE_CHUNK);
	assert_int_equal(d.encoding, 0);
	assert_int_equal(d.delta_len, 0);
	assert_true(util_is_zero(d.hash.b, DIGEST_LEN));
	assert_ptr_equal(d.payload, p + SIG_HDR);
	assert_int_equal(d.payload_len, sizeof(sig));
	assert_memory_equal(d.payload, sig, sizeof(sig));

	/*
	 * The signature is the rest of the frame: a cut in the header is
	 * truncated, a cut right after it leaves an empty signature, and a
	 * cut inside the signature (or a byte more) is a signature of
	 * another length, for delta_make() to refuse.
	 */
	check_prefixes("sig", dec_sig, p, len, SIG_HDR);
	CHECK_RC("sig header only", decode_exact(dec_sig, p, SIG_HDR, &d),
	    RD_ERR_INVALID);
	for (size_t cut = SIG_HDR + 1; cut <= len + 1; cut++) {
		uint8_t *q = malloc(cut);

		assert_non_null(q);
		memcpy(q, p, cut <= len ? cut : len);
		if (cut > len)
			q[len] = 0;
		snprintf(what, sizeof(what), "sig of %zu bytes", cut);
		CHECK_RC(what, wire_get_sig(q, cut, &d), 0);
		assert_ptr_equal(d.payload, q + SIG_HDR);
		assert_int_equal(d.payload_len, cut - SIG_HDR);
		free(q);
	}

	/* The largest signature. */
	big = malloc(WIRE_MAX_SIG);
	assert_non_null(big);
	fill_pattern(big, WIRE_MAX_SIG, 22);
	k.payload = big;
	k.payload_len = WIRE_MAX_SIG;
	k.length = WIRE_MAX_BLOCK;
	wb_reset(&b);
	wire_put_sig(&b, &k);
	p = frame_payload(&b, 0, WIRE_SIG, &len);
	assert_int_equal(decode_exact(dec_sig, p, len, &d), 0);
	assert_int_equal(d.length, WIRE_MAX_BLOCK);
	assert_int_equal(d.payload_len, WIRE_MAX_SIG);
	assert_int_equal(wire_get_sig(p, len, &d), 0);
	assert_memory_equal(d.payload, big, WIRE_MAX_SIG);
	free(big);
	wb_free(&b);
}

static void
build_sig(struct wbuf *b, uint32_t length, size_t plen)
{
	wb_put_u16(b, 1);
	wb_put_u64(b, 2 * WIRE_CHUNK);
	wb_put_u32(b, length);
	put_pattern(b, plen, 23);
}

static void
test_sig_hostile(void **state)
{
	static const struct {
		const char *what;
		uint32_t length;
		size_t plen;
		int want;
	} cases[] = {
		{ "valid", WIRE_CHUNK, 20492, 0 },
		{ "one byte", 1, 1, 0 },
		{ "largest chunk", WIRE_MAX_BLOCK, 100, 0 },
		{ "largest signature", WIRE_CHUNK, WIRE_MAX_SIG, 0 },
		{ "length 0", 0, 100, RD_ERR_INVALID },
		{ "length above block max", WIRE_MAX_BLOCK + 1, 100,
		    RD_ERR_INVALID },
		{ "length u32 max", UINT32_MAX, 100, RD_ERR_INVALID },
		{ "empty signature", WIRE_CHUNK, 0, RD_ERR_INVALID },
		{ "signature above max", WIRE_CHUNK, WIRE_MAX_SIG + 1,
		    RD_ERR_TOO_LARGE },
		{ "signature far above max", WIRE_CHUNK, 4 * WIRE_MAX_SIG,
		    RD_ERR_TOO_LARGE },
		{ "length 0, signature above max", 0, WIRE_MAX_SIG + 1,
		    RD_ERR_INVALID },
	};
	struct wire_chunk m;
	struct wbuf b;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_sig(&b, cases[i].length, cases[i].plen);
		CHECK_RC(cases[i].what, decode_exact(dec_sig, b.p, b.len, &m),
		    cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(m.disk, 1);
			assert_int_equal(m.offset, 2 * WIRE_CHUNK);
			assert_int_equal(m.length, cases[i].length);
			assert_int_equal(m.payload_len, cases[i].plen);
		}
	}
	wb_free(&b);
}

static void
test_sigend_roundtrip(void **state)
{
	struct wire_sigend s = { .cycle = 42, .nsigs = 1ULL << 40 }, d;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	wb_init(&b);
	wire_put_sigend(&b, &s);
	p = frame_payload(&b, 0, WIRE_SIGEND, &len);
	assert_int_equal(len, 16);
	assert_int_equal(decode_exact(dec_sigend, p, len, &d), 0);
	assert_int_equal(d.cycle, 42);
	assert_int_equal(d.nsigs, 1ULL << 40);
	check_prefixes("sigend", dec_sigend, p, len, len);
	check_trailing("sigend trailing", dec_sigend, p, len);

	/* No chunk differed. */
	wb_reset(&b);
	s.cycle = UINT64_MAX;
	s.nsigs = 0;
	wire_put_sigend(&b, &s);
	p = frame_payload(&b, 0, WIRE_SIGEND, &len);
	assert_int_equal(decode_exact(dec_sigend, p, len, &d), 0);
	assert_int_equal(d.cycle, UINT64_MAX);
	assert_int_equal(d.nsigs, 0);
	wb_free(&b);
}

static void
test_delta_roundtrip(void **state)
{
	uint8_t raw[500], *big, *z;
	struct wire_chunk k = { .disk = 3, .offset = 9ULL << 20,
	    .length = WIRE_CHUNK, .encoding = WIRE_ENC_RAW,
	    .delta_len = sizeof(raw), .payload = raw,
	    .payload_len = sizeof(raw) }, d;
	struct wbuf b;
	const uint8_t *p;
	size_t len, zlen;
	char what[64];

	fill_pattern(raw, sizeof(raw), 31);
	fill_pattern(k.hash.b, DIGEST_LEN, 32);
	wb_init(&b);
	wire_put_delta(&b, &k);
	p = frame_payload(&b, 0, WIRE_DELTA, &len);
	assert_int_equal(len, WIRE_DELTA_HDR + sizeof(raw));
	assert_int_equal(wire_get_delta(p, len, &d), 0);
	assert_int_equal(d.disk, 3);
	assert_int_equal(d.offset, 9ULL << 20);
	assert_int_equal(d.length, WIRE_CHUNK);
	assert_int_equal(d.encoding, WIRE_ENC_RAW);
	assert_int_equal(d.delta_len, sizeof(raw));
	assert_memory_equal(d.hash.b, k.hash.b, DIGEST_LEN);
	assert_ptr_equal(d.payload, p + WIRE_DELTA_HDR);
	assert_int_equal(d.payload_len, sizeof(raw));
	assert_memory_equal(d.payload, raw, sizeof(raw));
	/* RAW: a cut in the header is truncated, any other cut or a byte
	 * more no longer matches delta_len. */
	check_prefixes("delta raw", dec_delta, p, len, WIRE_DELTA_HDR);
	for (size_t cut = WIRE_DELTA_HDR; cut < len; cut++) {
		snprintf(what, sizeof(what), "delta raw cut at %zu", cut);
		CHECK_RC(what, decode_exact(dec_delta, p, cut, &d),
		    RD_ERR_INVALID);
	}
	check_trailing("delta raw trailing", dec_delta, p, len);

	/* ZSTD: the payload is one zstd frame of the delta. */
	fill_text(raw, sizeof(raw));
	z = zstd_frame(raw, sizeof(raw), 1, &zlen);
	assert_true(zlen < sizeof(raw));
	k.encoding = WIRE_ENC_ZSTD;
	k.payload = z;
	k.payload_len = zlen;
	wb_reset(&b);
	wire_put_delta(&b, &k);
	p = frame_payload(&b, 0, WIRE_DELTA, &len);
	assert_int_equal(wire_get_delta(p, len, &d), 0);
	assert_int_equal(d.encoding, WIRE_ENC_ZSTD);
	assert_int_equal(d.delta_len, sizeof(raw));
	assert_ptr_equal(d.payload, p + WIRE_DELTA_HDR);
	assert_int_equal(d.payload_len, zlen);
	assert_memory_equal(d.payload, z, zlen);
	check_prefixes("delta zstd", dec_delta, p, len, WIRE_DELTA_HDR);
	CHECK_RC("delta zstd header only", decode_exact(dec_delta, p,
	    WIRE_DELTA_HDR, &d), RD_ERR_INVALID);
	free(z);

	/* The largest: a RAW delta of WIRE_MAX_DELTA is WIRE_MAX_FRAME. */
	big = malloc(WIRE_MAX_DELTA);
	assert_non_null(big);
	fill_pattern(big, WIRE_MAX_DELTA, 33);
	k.encoding = WIRE_ENC_RAW;
	k.length = WIRE_MAX_BLOCK;
	k.delta_len = WIRE_MAX_DELTA;
	k.payload = big;
	k.payload_len = WIRE_MAX_DELTA;
	wb_reset(&b);
	wire_put_delta(&b, &k);
	p = frame_payload(&b, 0, WIRE_DELTA, &len);
	assert_int_equal(len + 1, WIRE_MAX_FRAME);
	assert_int_equal(decode_exact(dec_delta, p, len, &d), 0);
	assert_int_equal(d.length, WIRE_MAX_BLOCK);
	assert_int_equal(d.delta_len, WIRE_MAX_DELTA);
	assert_int_equal(wire_get_delta(p, len, &d), 0);
	assert_memory_equal(d.payload, big, WIRE_MAX_DELTA);
	free(big);
	wb_free(&b);
}

static void
build_delta(struct wbuf *b, uint32_t length, uint8_t enc, uint32_t delta_len,
    size_t plen)
{
	uint8_t hash[DIGEST_LEN];

	fill_pattern(hash, sizeof(hash), 34);
	wb_put_u16(b, 1);
	wb_put_u64(b, 2 * WIRE_CHUNK);
	wb_put_u32(b, length);
	wb_put_u8(b, enc);
	wb_put_u32(b, delta_len);
	wb_put_bytes(b, hash, sizeof(hash));
	put_pattern(b, plen, 35);
}

static void
test_delta_hostile(void **state)
{
	static const struct {
		const char *what;
		uint32_t length;
		uint8_t enc;
		uint32_t delta_len;
		size_t plen;
		int want;
	} cases[] = {
		{ "raw valid", WIRE_CHUNK, WIRE_ENC_RAW, 300, 300, 0 },
		{ "raw one byte", 1, WIRE_ENC_RAW, 1, 1, 0 },
		{ "raw largest", WIRE_MAX_BLOCK, WIRE_ENC_RAW, WIRE_MAX_DELTA,
		    WIRE_MAX_DELTA, 0 },
		{ "raw short payload", WIRE_CHUNK, WIRE_ENC_RAW, 300, 299,
		    RD_ERR_INVALID },
		{ "raw long payload", WIRE_CHUNK, WIRE_ENC_RAW, 300, 301,
		    RD_ERR_INVALID },
		{ "raw no payload", WIRE_CHUNK, WIRE_ENC_RAW, 300, 0,
		    RD_ERR_INVALID },
		{ "raw delta_len 0", WIRE_CHUNK, WIRE_ENC_RAW, 0, 0,
		    RD_ERR_INVALID },
		{ "raw delta_len above max", WIRE_CHUNK, WIRE_ENC_RAW,
		    WIRE_MAX_DELTA + 1, WIRE_MAX_DELTA + 1, RD_ERR_TOO_LARGE },
		{ "raw delta_len above max, short", WIRE_CHUNK, WIRE_ENC_RAW,
		    WIRE_MAX_DELTA + 1, 300, RD_ERR_INVALID },
		{ "zstd valid", WIRE_CHUNK, WIRE_ENC_ZSTD, 5000, 100, 0 },
		{ "zstd larger than delta", WIRE_CHUNK, WIRE_ENC_ZSTD, 100,
		    150, 0 },
		{ "zstd largest delta", WIRE_CHUNK, WIRE_ENC_ZSTD,
		    WIRE_MAX_DELTA, 100, 0 },
		{ "zstd largest payload", WIRE_CHUNK, WIRE_ENC_ZSTD, 100,
		    WIRE_MAX_DELTA, 0 },
		{ "zstd empty", WIRE_CHUNK, WIRE_ENC_ZSTD, 5000, 0,
		    RD_ERR_INVALID },
		{ "zstd delta_len 0", WIRE_CHUNK, WIRE_ENC_ZSTD, 0, 100,
		    RD_ERR_INVALID },
		{ "zstd delta_len above max", WIRE_CHUNK, WIRE_ENC_ZSTD,
		    WIRE_MAX_DELTA + 1, 100, RD_ERR_TOO_LARGE },
		{ "zstd delta_len u32 max", WIRE_CHUNK, WIRE_ENC_ZSTD,
		    UINT32_MAX, 100, RD_ERR_TOO_LARGE },
		{ "zstd payload above max", WIRE_CHUNK, WIRE_ENC_ZSTD, 100,
		    WIRE_MAX_DELTA + 1, RD_ERR_TOO_LARGE },
		{ "zero", WIRE_CHUNK, WIRE_ENC_ZERO, 300, 300,
		    RD_ERR_INVALID },
		{ "zero without payload", WIRE_CHUNK, WIRE_ENC_ZERO, 300, 0,
		    RD_ERR_INVALID },
		{ "encoding 3", WIRE_CHUNK, 3, 300, 300, RD_ERR_INVALID },
		{ "encoding 255", WIRE_CHUNK, 255, 300, 300, RD_ERR_INVALID },
		{ "length 0", 0, WIRE_ENC_RAW, 300, 300, RD_ERR_INVALID },
		{ "length above block max", WIRE_MAX_BLOCK + 1, WIRE_ENC_RAW,
		    300, 300, RD_ERR_INVALID },
		{ "length u32 max", UINT32_MAX, WIRE_ENC_ZSTD, 300, 100,
		    RD_ERR_INVALID },
	};
	struct wire_chunk m;
	struct wbuf b;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_delta(&b, cases[i].length, cases[i].enc,
		    cases[i].delta_len, cases[i].plen);
		CHECK_RC(cases[i].what, decode_exact(dec_delta, b.p, b.len,
		    &m), cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(m.disk, 1);
			assert_int_equal(m.offset, 2 * WIRE_CHUNK);
			assert_int_equal(m.length, cases[i].length);
			assert_int_equal(m.encoding, cases[i].enc);
			assert_int_equal(m.delta_len, cases[i].delta_len);
			assert_int_equal(m.payload_len, cases[i].plen);
		}
	}
	wb_free(&b);
}

static void
test_promote_roundtrip(void **state)
{
	static const char *listens[] = { "replica2.example.net:7000",
	    "10.0.0.2:1", "[::1]:65535", "[fe80::1]:7000" };
	struct wire_promote m = { .cycle = 42, .generation = 8 }, d;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(listens) / sizeof(listens[0]); i++) {
		wb_reset(&b);
		strcpy(m.listen, listens[i]);
		wire_put_promote(&b, &m);
		p = frame_payload(&b, 0, WIRE_PROMOTE, &len);
		assert_int_equal(len, 8 + 8 + 2 + strlen(listens[i]));
		assert_int_equal(decode_exact(dec_promote, p, len, &d), 0);
		assert_int_equal(d.cycle, 42);
		assert_int_equal(d.generation, 8);
		assert_string_equal(d.listen, listens[i]);
		check_prefixes(listens[i], dec_promote, p, len, len);
		check_trailing(listens[i], dec_promote, p, len);
	}
	wb_free(&b);
}

/* PROMOTE with a listen string of n bytes from s (which may hold NUL). */
static void
build_promote(struct wbuf *b, uint64_t cycle, uint64_t generation,
    const char *s, size_t n)
{
	wb_put_u64(b, cycle);
	wb_put_u64(b, generation);
	wb_put_u16(b, (uint16_t)n);
	wb_put_bytes(b, s, n);
}

static void
test_promote_hostile(void **state)
{
	static const struct {
		const char *what;
		uint64_t cycle, generation;
		const char *listen;
		int want;
	} cases[] = {
		{ "valid", 1, 2, "replica2:7000", 0 },
		{ "largest ids", UINT64_MAX, UINT64_MAX, "replica2:7000", 0 },
		{ "cycle 0", 0, 2, "replica2:7000", RD_ERR_INVALID },
		{ "generation 0", 1, 0, "replica2:7000", RD_ERR_INVALID },
		{ "generation 1", 1, 1, "replica2:7000", RD_ERR_INVALID },
		{ "listen empty", 1, 2, "", RD_ERR_INVALID },
		{ "listen host only", 1, 2, "replica2", RD_ERR_INVALID },
		{ "listen no port", 1, 2, "replica2:", RD_ERR_INVALID },
		{ "listen no host", 1, 2, ":7000", RD_ERR_INVALID },
		{ "listen port 0", 1, 2, "replica2:0", RD_ERR_INVALID },
		{ "listen port 65535", 1, 2, "replica2:65535", 0 },
		{ "listen port 65536", 1, 2, "replica2:65536", RD_ERR_INVALID },
		{ "listen port not a number", 1, 2, "replica2:ssh",
		    RD_ERR_INVALID },
		{ "listen bare ipv6", 1, 2, "::1:7000", RD_ERR_INVALID },
		{ "listen ipv6", 1, 2, "[::1]:7000", 0 },
		{ "listen ipv6 no port", 1, 2, "[::1]", RD_ERR_INVALID },
		{ "listen space", 1, 2, "replica 2:7000", RD_ERR_INVALID },
		{ "listen slash", 1, 2, "a/b:7000", RD_ERR_INVALID },
		{ "listen newline", 1, 2, "replica2:7000\n", RD_ERR_INVALID },
		{ "cycle 0, bad listen", 0, 2, "x", RD_ERR_INVALID },
	};
	struct wire_promote m;
	struct wbuf b;
	char s[HOST_MAX_LEN + 16];

	wb_init(&b);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		wb_reset(&b);
		build_promote(&b, cases[i].cycle, cases[i].generation,
		    cases[i].listen, strlen(cases[i].listen));
		CHECK_RC(cases[i].what, decode_exact(dec_promote, b.p, b.len,
		    &m), cases[i].want);
		if (cases[i].want == 0) {
			assert_int_equal(m.cycle, cases[i].cycle);
			assert_int_equal(m.generation, cases[i].generation);
			assert_string_equal(m.listen, cases[i].listen);
		}
	}

	wb_reset(&b);
	build_promote(&b, 1, 2, "a\0b:7000", 8);
	CHECK_RC("listen with NUL", decode_exact(dec_promote, b.p, b.len, &m),
	    RD_ERR_INVALID);

	/* The longest host name with the longest port. */
	memset(s, 'h', HOST_MAX_LEN);
	strcpy(s + HOST_MAX_LEN, ":65535");
	wb_reset(&b);
	build_promote(&b, 1, 2, s, strlen(s));
	CHECK_RC("listen longest", decode_exact(dec_promote, b.p, b.len, &m),
	    0);
	assert_string_equal(m.listen, s);
	/* A host name of HOST_MAX_LEN + 1 bytes. */
	memset(s, 'h', HOST_MAX_LEN + 1);
	strcpy(s + HOST_MAX_LEN + 1, ":1");
	wb_reset(&b);
	build_promote(&b, 1, 2, s, strlen(s));
	CHECK_RC("listen host too long", decode_exact(dec_promote, b.p, b.len,
	    &m), RD_ERR_INVALID);
	/* More than the field holds. */
	memset(s, 'h', sizeof(s) - 1);
	s[sizeof(s) - 1] = '\0';
	assert_true(strlen(s) >= sizeof(m.listen));
	wb_reset(&b);
	build_promote(&b, 1, 2, s, sizeof(m.listen));
	CHECK_RC("listen above field", decode_exact(dec_promote, b.p, b.len,
	    &m), RD_ERR_TOO_LARGE);
	wb_reset(&b);
	build_promote(&b, 1, 2, s, strlen(s));
	CHECK_RC("listen far above field", decode_exact(dec_promote, b.p,
	    b.len, &m), RD_ERR_TOO_LARGE);

	/* A length that promises more than follows. */
	wb_reset(&b);
	build_promote(&b, 1, 2, "replica2:7000", 13);
	b.p[16 + 1] = 50;
	CHECK_RC("listen len past end", decode_exact(dec_promote, b.p, b.len,
	    &m), RD_ERR_TRUNCATED);
	wb_free(&b);
}

static void
test_promoted(void **state)
{
	static const uint64_t gens[] = { 2, 9, UINT64_MAX };
	uint64_t g;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(gens) / sizeof(gens[0]); i++) {
		wb_reset(&b);
		wire_put_promoted(&b, gens[i]);
		p = frame_payload(&b, 0, WIRE_PROMOTED, &len);
		assert_int_equal(len, 8);
		g = 0;
		assert_int_equal(decode_exact(dec_promoted, p, len, &g), 0);
		assert_int_equal(g, gens[i]);
		check_prefixes("promoted", dec_promoted, p, len, len);
		check_trailing("promoted trailing", dec_promoted, p, len);
	}
	/* Many bytes more. */
	wb_reset(&b);
	wb_put_u64(&b, 5);
	wb_put_u64(&b, 6);
	CHECK_RC("promoted two values", decode_exact(dec_promoted, b.p, b.len,
	    &g), RD_ERR_INVALID);
	wb_free(&b);
}

/* Both versions still served; the encoder writes the one asked for. */
static void
test_versions(void **state)
{
	struct wire_hello h, hd;
	struct wire_welcome w = { .generation = 1 }, wd;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	wb_init(&b);
	for (uint16_t v = WIRE_VERSION_MIN; v <= WIRE_VERSION; v++) {
		sample_hello(&h);
		h.version = v;
		wb_reset(&b);
		wire_put_hello(&b, &h);
		p = frame_payload(&b, 0, WIRE_HELLO, &len);
		assert_int_equal(decode_exact(dec_hello, p, len, &hd), 0);
		assert_int_equal(hd.version, v);
		w.version = v;
		wb_reset(&b);
		wire_put_welcome(&b, &w);
		p = frame_payload(&b, 0, WIRE_WELCOME, &len);
		assert_int_equal(decode_exact(dec_welcome, p, len, &wd), 0);
		assert_int_equal(wd.version, v);
	}
	wb_free(&b);
}

static void
test_keepalive(void **state)
{
	static const struct wire_keepalive good[] = {
		{ 0, 0, WIRE_KEEPALIVE_MIN_MS },
		{ 42, 0, 10000 },
		{ 42, WIRE_KEEPALIVE_APPLYING, 10000 },
		{ UINT64_MAX, WIRE_KEEPALIVE_APPLYING, WIRE_KEEPALIVE_MAX_MS },
	};
	static const struct {
		const char *what;
		struct wire_keepalive k;
	} bad[] = {
		{ "interval 0", { 1, 0, 0 } },
		{ "interval below 1 s", { 1, 0, WIRE_KEEPALIVE_MIN_MS - 1 } },
		{ "interval above 5 min", { 1, 0, WIRE_KEEPALIVE_MAX_MS + 1 } },
		{ "interval u32 max", { 1, 0, UINT32_MAX } },
		{ "applying no cycle", { 0, WIRE_KEEPALIVE_APPLYING, 10000 } },
		{ "flag 0x02", { 1, 0x02, 10000 } },
		{ "all flags", { 1, 0xff, 10000 } },
	};
	struct wire_keepalive kd;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		wb_reset(&b);
		wire_put_keepalive(&b, &good[i]);
		p = frame_payload(&b, 0, WIRE_KEEPALIVE, &len);
		assert_int_equal(len, 8 + 1 + 4);
		assert_int_equal(decode_exact(dec_keepalive, p, len, &kd), 0);
		assert_int_equal(kd.cycle, good[i].cycle);
		assert_int_equal(kd.flags, good[i].flags);
		assert_int_equal(kd.every_ms, good[i].every_ms);
		check_prefixes("keepalive", dec_keepalive, p, len, len);
		check_trailing("keepalive trailing", dec_keepalive, p, len);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		wb_reset(&b);
		wire_put_keepalive(&b, &bad[i].k);
		p = frame_payload(&b, 0, WIRE_KEEPALIVE, &len);
		CHECK_RC(bad[i].what, decode_exact(dec_keepalive, p, len, &kd),
		    RD_ERR_INVALID);
	}
	assert_string_equal(wire_type_name(WIRE_KEEPALIVE), "keepalive");
	wb_free(&b);
}

/* A whole resync exchange in one buffer, read back frame by frame. */
/* --- DEFINITION ---------------------------------------------------------- */

/* A text like a libvirt domain's, of exactly len bytes. */
static char *
domain_xml(size_t len)
{
	static const char head[] = "<domain type='kvm'>\n  <name>web01</name>"
	    "\n";
	static const char tail[] = "</domain>\n";
	static const char line[] = "  <description>x\ty\r</description>\n";
	char *x = malloc(len + 1);

	assert_non_null(x);
	assert_true(len >= sizeof(head) + sizeof(tail));
	memcpy(x, head, sizeof(head) - 1);
	for (size_t i = sizeof(head) - 1; i < len; i++)
		x[i] = line[(i - sizeof(head) + 1) % (sizeof(line) - 1)];
	memcpy(x + len - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
	x[len] = '\0';
	return x;
}

static void
test_definition_roundtrip(void **state)
{
	static const size_t sizes[] = { 64, 4096, 100000,
	    WIRE_MAX_DEFINITION };
	struct wire_definition m;
	struct wbuf b;
	const uint8_t *p;
	size_t len;

	wb_init(&b);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		char *x = domain_xml(sizes[i]);
		wb_reset(&b);
		assert_int_equal(wire_definition_check(x, sizes[i]), 0);
		wire_put_definition(&b, x, sizes[i]);
		p = frame_payload(&b, 0, WIRE_DEFINITION, &len);
		/* The payload is the text itself, nothing around it. */
		assert_int_equal(len, sizes[i]);
		assert_memory_equal(p, x, len);
		assert_int_equal(wire_get_definition(p, len, &m), 0);
		/* Borrowed from the frame, not copied. */
		assert_ptr_equal(m.xml, (const char *)p);
		assert_int_equal(m.len, sizes[i]);
		free(x);
	}
	/* One byte is a definition (the smallest). */
	wb_reset(&b);
	wire_put_definition(&b, "x", 1);
	p = frame_payload(&b, 0, WIRE_DEFINITION, &len);
	assert_int_equal(decode_exact(dec_definition, p, len, &m), 0);
	assert_int_equal(m.len, 1);
	wb_free(&b);
}

#define T(s)	s, sizeof(s) - 1	/* a literal and its length */

static void
test_definition_hostile(void **state)
{
	static const struct {
		const char *what;
		const char *text;
		size_t len;
		int want;
	} cases[] = {
		{ "empty", "", 0, RD_ERR_INVALID },
		{ "a NUL inside", "<domain>\0</domain>", 18, RD_ERR_INVALID },
		{ "a NUL at the end", "<domain/>\0", 10, RD_ERR_INVALID },
		{ "a NUL alone", "\0", 1, RD_ERR_INVALID },
		{ "escape", "<domain>\033[2J</domain>", 21, RD_ERR_INVALID },
		{ "bell", "\a", 1, RD_ERR_INVALID },
		{ "0x1f", "<a>\037</a>", 8, RD_ERR_INVALID },
		{ "tab, newline, return", "<a>\t\n\r</a>", 10, 0 },
		{ "DEL and UTF-8", "<a>\177\303\251</a>", 10, 0 },
		/* C1 controls act on terminals too: CSI as one byte (8-bit
		 * terminals) or as UTF-8 U+009B (xterm); and the text is
		 * UTF-8, as libvirt's XML always is. */
		{ "8-bit CSI", T("<a>\2332J</a>"), RD_ERR_INVALID },
		{ "U+009B CSI", T("<a>\302\2332J</a>"), RD_ERR_INVALID },
		{ "U+0085 NEL", T("<a>\302\205</a>"), RD_ERR_INVALID },
		{ "U+0080", T("<a>\302\200</a>"), RD_ERR_INVALID },
		{ "U+00A0 after C1", T("<a>\302\240</a>"), 0 },
		{ "3-byte UTF-8", T("<a>\342\202\254</a>"), 0 },
		{ "4-byte UTF-8", T("<a>\360\237\230\200</a>"), 0 },
		{ "U+10FFFF", T("<a>\364\217\277\277</a>"), 0 },
		{ "a lone continuation", T("<a>\200</a>"), RD_ERR_INVALID },
		{ "a cut sequence", T("<a>\342\202</a>"), RD_ERR_INVALID },
		{ "cut at the end", T("<a/>\303"), RD_ERR_INVALID },
		{ "overlong slash", T("<a>\300\257</a>"), RD_ERR_INVALID },
		{ "overlong 3-byte", T("<a>\340\200\257</a>"), RD_ERR_INVALID },
		{ "overlong 4-byte", T("<a>\360\200\200\257</a>"),
		    RD_ERR_INVALID },
		{ "a surrogate", T("<a>\355\240\200</a>"), RD_ERR_INVALID },
		{ "above U+10FFFF", T("<a>\364\220\200\200</a>"),
		    RD_ERR_INVALID },
		{ "0xff", T("<a>\377</a>"), RD_ERR_INVALID },
	};
	struct wire_definition m;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK_RC(cases[i].what, wire_definition_check(cases[i].text,
		    cases[i].len), cases[i].want);
		CHECK_RC(cases[i].what, decode_exact(dec_definition,
		    (const uint8_t *)cases[i].text, cases[i].len, &m),
		    cases[i].want);
	}
	/* One byte above the bound, however valid the text. */
	char *x = domain_xml(WIRE_MAX_DEFINITION + 1);
	CHECK_RC("oversize", wire_definition_check(x, WIRE_MAX_DEFINITION + 1),
	    RD_ERR_TOO_LARGE);
	CHECK_RC("oversize", decode_exact(dec_definition, (const uint8_t *)x,
	    WIRE_MAX_DEFINITION + 1, &m), RD_ERR_TOO_LARGE);
	CHECK_RC("at the bound", decode_exact(dec_definition,
	    (const uint8_t *)x, WIRE_MAX_DEFINITION, &m), 0);
	free(x);
}

/*
 * The definition counts in the END digest as a DATA header of disk
 * WIRE_DIGEST_DEFINITION, offset 0, the text's length and XXH3-128:
 * where it comes among the frames counts, and so does every byte.
 */
static void
test_definition_digest(void **state)
{
	static const char xml[] = "<domain><name>web01</name></domain>";
	struct wire_digest d = { 0 };
	struct wire_data blk = { .disk = 0, .offset = 65536, .length = 4096 };
	struct digest a, b, c;
	struct wbuf w;

	fill_pattern(blk.hash.b, DIGEST_LEN, 9);
	wire_digest_init(&d);
	wire_digest_definition(&d, xml, sizeof(xml) - 1);
	wire_digest_update(&d, &blk);
	wire_digest_final(&d, &a);

	/* The exact bytes fed. */
	wb_init(&w);
	wb_put_u16(&w, WIRE_DIGEST_DEFINITION);
	wb_put_u64(&w, 0);
	wb_put_u32(&w, sizeof(xml) - 1);
	digest_block(xml, sizeof(xml) - 1, &c);
	wb_put_bytes(&w, c.b, DIGEST_LEN);
	wb_put_u16(&w, blk.disk);
	wb_put_u64(&w, blk.offset);
	wb_put_u32(&w, blk.length);
	wb_put_bytes(&w, blk.hash.b, DIGEST_LEN);
	digest_block(w.p, w.len, &b);
	assert_true(digest_equal(&a, &b));
	wb_free(&w);

	/* Without it, after the block, or with one byte changed: another. */
	wire_digest_init(&d);
	wire_digest_update(&d, &blk);
	wire_digest_final(&d, &b);
	assert_false(digest_equal(&a, &b));
	wire_digest_init(&d);
	wire_digest_update(&d, &blk);
	wire_digest_definition(&d, xml, sizeof(xml) - 1);
	wire_digest_final(&d, &b);
	assert_false(digest_equal(&a, &b));
	char other[sizeof(xml)];
	memcpy(other, xml, sizeof(xml));
	other[9] ^= 0x20;
	wire_digest_init(&d);
	wire_digest_definition(&d, other, sizeof(xml) - 1);
	wire_digest_update(&d, &blk);
	wire_digest_final(&d, &b);
	assert_false(digest_equal(&a, &b));
	wire_digest_free(&d);
}

static void
test_resync_sequence(void **state)
{
	uint8_t digests[2 * DIGEST_LEN], sig[40], delta[60];
	struct wire_cycle c = { .cycle = 7, .created_ms = 1,
	    .flags = WIRE_CYCLE_RESYNC, .ndisks = 1,
	    .sizes = { 2 * WIRE_CHUNK } }, cd;
	struct wire_sums s = { .disk = 0, .offset = 0, .chunk = WIRE_CHUNK,
	    .count = 2, .digests = digests }, sd;
	struct wire_chunk k = { .disk = 0, .offset = WIRE_CHUNK,
	    .length = WIRE_CHUNK, .payload = sig, .payload_len = sizeof(sig) },
	    dk = { .disk = 0, .offset = WIRE_CHUNK, .length = WIRE_CHUNK,
	    .encoding = WIRE_ENC_RAW, .delta_len = sizeof(delta),
	    .payload = delta, .payload_len = sizeof(delta) }, kd;
	struct wire_sigend se = { .cycle = 7, .nsigs = 1 }, sed;
	struct wire_end e = { .cycle = 7, .nframes = 1,
	    .raw_bytes = WIRE_CHUNK }, ed;
	struct wire_ack a = { .cycle = 7, .point = 3 }, ad;
	struct wire_promote pr = { .cycle = 7, .generation = 2,
	    .listen = "old-primary:7000" }, prd;
	struct wbuf b;
	const uint8_t *p;
	size_t len;
	uint64_t g;

	fill_pattern(digests, sizeof(digests), 41);
	fill_pattern(sig, sizeof(sig), 42);
	fill_pattern(delta, sizeof(delta), 43);
	fill_pattern(dk.hash.b, DIGEST_LEN, 44);
	fill_pattern(e.digest.b, DIGEST_LEN, 45);
	wb_init(&b);
	wire_put_cycle(&b, &c);
	wire_put_sums(&b, &s);
	wire_put_sig(&b, &k);
	wire_put_sigend(&b, &se);
	wire_put_delta(&b, &dk);
	wire_put_end(&b, &e);
	wire_put_ack(&b, &a);
	wire_put_promote(&b, &pr);
	wire_put_promoted(&b, 2);

	p = nth_payload(&b, 0, WIRE_CYCLE, &len);
	assert_int_equal(wire_get_cycle(p, len, &cd), 0);
	assert_int_equal(cd.flags, WIRE_CYCLE_RESYNC);
	p = nth_payload(&b, 1, WIRE_SUMS, &len);
	assert_int_equal(wire_get_sums(p, len, &sd), 0);
	assert_memory_equal(sd.digests, digests, sizeof(digests));
	p = nth_payload(&b, 2, WIRE_SIG, &len);
	assert_int_equal(wire_get_sig(p, len, &kd), 0);
	assert_int_equal(kd.payload_len, sizeof(sig));
	assert_memory_equal(kd.payload, sig, sizeof(sig));
	p = nth_payload(&b, 3, WIRE_SIGEND, &len);
	assert_int_equal(wire_get_sigend(p, len, &sed), 0);
	assert_int_equal(sed.nsigs, 1);
	p = nth_payload(&b, 4, WIRE_DELTA, &len);
	assert_int_equal(wire_get_delta(p, len, &kd), 0);
	assert_int_equal(kd.payload_len, sizeof(delta));
	assert_memory_equal(kd.payload, delta, sizeof(delta));
	assert_memory_equal(kd.hash.b, dk.hash.b, DIGEST_LEN);
	p = nth_payload(&b, 5, WIRE_END, &len);
	assert_int_equal(wire_get_end(p, len, &ed), 0);
	assert_int_equal(ed.raw_bytes, WIRE_CHUNK);
	p = nth_payload(&b, 6, WIRE_ACK, &len);
	assert_int_equal(wire_get_ack(p, len, &ad), 0);
	p = nth_payload(&b, 7, WIRE_PROMOTE, &len);
	assert_int_equal(wire_get_promote(p, len, &prd), 0);
	assert_string_equal(prd.listen, "old-primary:7000");
	p = nth_payload(&b, 8, WIRE_PROMOTED, &len);
	assert_int_equal(wire_get_promoted(p, len, &g), 0);
	assert_int_equal(g, 2);
	/* The last frame ends the buffer. */
	assert_ptr_equal(p + len, b.p + b.len);
	wb_free(&b);
}

/* --- DATA in its session ----------------------------------------------- */

static void
test_check_data(void **state)
{
	/* Sizes past ndisks are stale values, not zeros. */
	static const struct wire_cycle c = { .cycle = 1, .ndisks = 3,
	    .sizes = { 10 * 4096 + 100, 1 << 20, UINT64_MAX, 1 << 20,
	    1 << 20 } };
	static const uint64_t top = UINT64_MAX & ~4095ULL;
	static const struct {
		const char *what;
		uint16_t disk;
		uint64_t offset;
		uint32_t length;
		uint8_t enc;
		int want;
	} cases[] = {
		{ "first block", 0, 0, 4096, WIRE_ENC_RAW, 0 },
		{ "zstd block", 1, 4096, 4096, WIRE_ENC_ZSTD, 0 },
		{ "disk 3 of 3", 3, 0, 4096, WIRE_ENC_RAW, RD_ERR_RANGE },
		{ "disk 64", 64, 0, 4096, WIRE_ENC_RAW, RD_ERR_RANGE },
		{ "disk 65535", 65535, 0, 4096, WIRE_ENC_RAW, RD_ERR_RANGE },
		{ "unaligned offset", 0, 100, 4096, WIRE_ENC_RAW,
		    RD_ERR_RANGE },
		{ "offset half block", 1, 2048, 4096, WIRE_ENC_ZERO,
		    RD_ERR_RANGE },
		{ "offset at end", 1, 1 << 20, 4096, WIRE_ENC_ZERO,
		    RD_ERR_RANGE },
		{ "offset past end", 1, 2 << 20, 4096, WIRE_ENC_RAW,
		    RD_ERR_RANGE },
		{ "short last block raw", 0, 10 * 4096, 100, WIRE_ENC_RAW, 0 },
		{ "short last block zstd", 0, 10 * 4096, 100, WIRE_ENC_ZSTD,
		    0 },
		{ "short last block zero", 0, 10 * 4096, 100, WIRE_ENC_ZERO,
		    0 },
		{ "full block past end", 0, 10 * 4096, 4096, WIRE_ENC_RAW,
		    RD_ERR_RANGE },
		{ "short block too short", 0, 10 * 4096, 99, WIRE_ENC_RAW,
		    RD_ERR_RANGE },
		{ "raw half block", 0, 0, 2048, WIRE_ENC_RAW, RD_ERR_RANGE },
		{ "zstd two blocks", 1, 0, 8192, WIRE_ENC_ZSTD, RD_ERR_RANGE },
		{ "raw two blocks to end", 1, (1 << 20) - 8192, 8192,
		    WIRE_ENC_RAW, RD_ERR_RANGE },
		{ "zero many blocks", 1, 4096, 200 * 4096, WIRE_ENC_ZERO, 0 },
		{ "zero to disk end", 0, 4096, 9 * 4096 + 100, WIRE_ENC_ZERO,
		    0 },
		{ "zero whole disk", 1, 0, 1 << 20, WIRE_ENC_ZERO, 0 },
		{ "zero past end", 1, 4096, 1 << 20, WIRE_ENC_ZERO,
		    RD_ERR_RANGE },
		{ "zero odd length", 1, 0, 4097, WIRE_ENC_ZERO, RD_ERR_RANGE },
		{ "zero ragged before end", 0, 0, 5 * 4096 + 100,
		    WIRE_ENC_ZERO, RD_ERR_RANGE },
		{ "zero near u64 max", 2, top, 1u << 30, WIRE_ENC_ZERO,
		    RD_ERR_RANGE },
		{ "raw near u64 max", 2, top, 4096, WIRE_ENC_RAW,
		    RD_ERR_RANGE },
		{ "raw last of u64 max", 2, top, 4095, WIRE_ENC_RAW, 0 },
		{ "zero last of u64 max", 2, top, 4095, WIRE_ENC_ZERO, 0 },
		{ "zero wraps", 2, top - 4096, 3 * 4096, WIRE_ENC_ZERO,
		    RD_ERR_RANGE },
		{ "unknown encoding", 0, 0, 4096, 7, RD_ERR_INVALID },
	};
	struct wire_data m;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(&m, 0, sizeof(m));
		m.disk = cases[i].disk;
		m.offset = cases[i].offset;
		m.length = cases[i].length;
		m.encoding = cases[i].enc;
		CHECK_RC(cases[i].what, wire_check_data(&m, &c, 4096),
		    cases[i].want);
	}
	/* Block size is the session's, not a constant. */
	memset(&m, 0, sizeof(m));
	m.disk = 1;
	m.offset = 65536;
	m.length = 65536;
	m.encoding = WIRE_ENC_RAW;
	CHECK_RC("64 KiB block", wire_check_data(&m, &c, 65536), 0);
	m.offset = 4096;
	CHECK_RC("64 KiB unaligned", wire_check_data(&m, &c, 65536),
	    RD_ERR_RANGE);
	CHECK_RC("block size 0", wire_check_data(&m, &c, 0),
	    RD_ERR_INTERNAL);
}

/* --- content ----------------------------------------------------------- */

/* Compress src into a new buffer; with_size = 0 leaves the size unknown. */
static uint8_t *
zstd_frame(const uint8_t *src, size_t len, int with_size, size_t *out_len)
{
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	size_t cap = ZSTD_compressBound(len), n;
	uint8_t *dst = malloc(cap);

	assert_non_null(cctx);
	assert_non_null(dst);
	assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx,
	    ZSTD_c_contentSizeFlag, with_size)));
	n = ZSTD_compress2(cctx, dst, cap, src, len);
	assert_false(ZSTD_isError(n));
	assert_int_equal(ZSTD_getFrameContentSize(dst, n),
	    with_size ? len : ZSTD_CONTENTSIZE_UNKNOWN);
	ZSTD_freeCCtx(cctx);
	*out_len = n;
	return dst;
}

/* m for a ZSTD frame of claimed length whose hash is of raw[hash_len]. */
static int
content_of(const uint8_t *payload, size_t plen, uint32_t length,
    const uint8_t *raw, size_t hash_len, ZSTD_DCtx *dctx)
{
	struct wire_data m = { .length = length, .encoding = WIRE_ENC_ZSTD,
	    .payload = payload, .payload_len = plen };
	uint8_t *out = malloc(length);
	int r;

	assert_non_null(out);
	digest_block(raw, hash_len, &m.hash);
	r = wire_data_content(&m, out, dctx);
	if (r == 0)
		assert_memory_equal(out, raw, length);
	free(out);
	return r;
}

static void
test_content_zstd(void **state)
{
	uint8_t raw[8192], *z, *zu, *zs, *zsu, *bad;
	size_t zlen, zulen, zslen, zsulen;
	ZSTD_DCtx *dctx = ZSTD_createDCtx();

	assert_non_null(dctx);
	fill_text(raw, sizeof(raw));
	raw[100] = 1;	/* not a pure repetition */
	z = zstd_frame(raw, 4096, 1, &zlen);
	zu = zstd_frame(raw, 4096, 0, &zulen);
	assert_true(zlen < 4096);

	CHECK_RC("valid", content_of(z, zlen, 4096, raw, 4096, NULL), 0);
	CHECK_RC("valid dctx", content_of(z, zlen, 4096, raw, 4096, dctx), 0);
	CHECK_RC("valid unknown size", content_of(zu, zulen, 4096, raw, 4096,
	    dctx), 0);
	CHECK_RC("hash of other content", content_of(z, zlen, 4096, raw + 1,
	    4096, dctx), RD_ERR_HASH);

	/* Frames that decompress to more or less than length. */
	zs = zstd_frame(raw, 8192, 1, &zslen);
	zsu = zstd_frame(raw, 8192, 0, &zsulen);
	CHECK_RC("larger, declared", content_of(zs, zslen, 4096, raw, 4096,
	    dctx), RD_ERR_COMPRESS);
	CHECK_RC("larger, unknown", content_of(zsu, zsulen, 4096, raw, 4096,
	    dctx), RD_ERR_COMPRESS);
	CHECK_RC("larger, unknown, no dctx", content_of(zsu, zsulen, 4096,
	    raw, 4096, NULL), RD_ERR_COMPRESS);
	CHECK_RC("smaller, declared", content_of(z, zlen, 8192, raw, 8192,
	    dctx), RD_ERR_COMPRESS);
	CHECK_RC("smaller, unknown", content_of(zu, zulen, 8192, raw, 8192,
	    dctx), RD_ERR_COMPRESS);
	CHECK_RC("one byte more", content_of(z, zlen, 4097, raw, 4097,
	    dctx), RD_ERR_COMPRESS);

	/* Corrupt and malformed frames. */
	bad = malloc(zlen + zlen);
	assert_non_null(bad);
	memcpy(bad, z, zlen);
	bad[0] ^= 0xff;
	CHECK_RC("bad magic", content_of(bad, zlen, 4096, raw, 4096, dctx),
	    RD_ERR_COMPRESS);
	memcpy(bad, z, zlen);
	CHECK_RC("cut frame", content_of(bad, zlen - 1, 4096, raw, 4096,
	    dctx), RD_ERR_COMPRESS);
	CHECK_RC("magic only", content_of(bad, 4, 4096, raw, 4096, dctx),
	    RD_ERR_COMPRESS);
	CHECK_RC("three bytes", content_of(bad, 3, 4096, raw, 4096, dctx),
	    RD_ERR_COMPRESS);
	memcpy(bad + zlen, z, zlen);
	CHECK_RC("two frames", content_of(bad, zlen + zlen, 4096, raw, 4096,
	    dctx), RD_ERR_COMPRESS);
	bad[zlen] = 0;
	CHECK_RC("trailing byte", content_of(bad, zlen + 1, 4096, raw, 4096,
	    dctx), RD_ERR_COMPRESS);
	for (size_t i = 6; i < zlen; i++) {
		int r;

		memcpy(bad, z, zlen);
		bad[i] ^= 0x55;
		r = content_of(bad, zlen, 4096, raw, 4096, dctx);
		if (r != RD_ERR_COMPRESS && r != RD_ERR_HASH)
			fail_msg("byte %zu flipped: got %d", i, r);
	}

	/* Skippable frames: alone, or after the frame, they are refused. */
	{
		static const uint8_t skip[] = { 0x50, 0x2a, 0x4d, 0x18,
		    4, 0, 0, 0, 1, 2, 3, 4 };
		CHECK_RC("skippable", content_of(skip, sizeof(skip), 4096, raw,
		    4096, dctx), RD_ERR_COMPRESS);
		memcpy(bad, z, zlen);
		memcpy(bad + zlen, skip, sizeof(skip));
		CHECK_RC("frame then skippable", content_of(bad,
		    zlen + sizeof(skip), 4096, raw, 4096, dctx),
		    RD_ERR_COMPRESS);
	}
	free(bad);
	free(z);
	free(zu);
	free(zs);
	free(zsu);
	ZSTD_freeDCtx(dctx);
}

static void
test_content_raw(void **state)
{
	uint8_t raw[4096], *out = malloc(sizeof(raw));
	struct wire_data m = { .length = sizeof(raw),
	    .encoding = WIRE_ENC_RAW, .payload = raw,
	    .payload_len = sizeof(raw) };

	assert_non_null(out);
	fill_pattern(raw, sizeof(raw), 9);
	digest_block(raw, sizeof(raw), &m.hash);
	CHECK_RC("raw", wire_data_content(&m, out, NULL), 0);
	assert_memory_equal(out, raw, sizeof(raw));
	m.hash.b[0] ^= 1;
	CHECK_RC("raw hash", wire_data_content(&m, out, NULL), RD_ERR_HASH);
	m.hash.b[0] ^= 1;
	raw[4095] ^= 1;
	CHECK_RC("raw content", wire_data_content(&m, out, NULL),
	    RD_ERR_HASH);
	m.encoding = WIRE_ENC_ZERO;
	CHECK_RC("zero has no content", wire_data_content(&m, out, NULL),
	    RD_ERR_INTERNAL);
	free(out);
}

/* --- encode ------------------------------------------------------------ */

static void
test_encode(void **state)
{
	enum { LEN = 64 << 10 };
	uint8_t *raw = malloc(LEN), *scratch = malloc(LEN), *out = malloc(LEN);
	ZSTD_CCtx *cctx = ZSTD_createCCtx();
	struct wire_data m = { .length = LEN };
	const uint8_t *payload;
	size_t plen;

	assert_non_null(raw);
	assert_non_null(scratch);
	assert_non_null(out);
	assert_non_null(cctx);

	fill_text(raw, LEN);
	wire_data_encode(cctx, 3, raw, LEN, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_ZSTD);
	assert_ptr_equal(payload, scratch);
	assert_true(plen <= LEN - LEN / 64);
	m.payload = payload;
	m.payload_len = plen;
	digest_block(raw, LEN, &m.hash);
	CHECK_RC("zstd round trip", wire_data_content(&m, out, NULL), 0);
	assert_memory_equal(out, raw, LEN);

	/* No context: one is made for the call. */
	wire_data_encode(NULL, 1, raw, LEN, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_ZSTD);
	m.payload = payload;
	m.payload_len = plen;
	CHECK_RC("zstd no cctx", wire_data_content(&m, out, NULL), 0);

	wire_data_encode(cctx, 0, raw, LEN, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_RAW);
	assert_ptr_equal(payload, raw);
	assert_int_equal(plen, LEN);

	fill_pattern(raw, LEN, 77);
	wire_data_encode(cctx, 19, raw, LEN, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_RAW);
	assert_ptr_equal(payload, raw);
	assert_int_equal(plen, LEN);

	/*
	 * 768 zeros then random: level 19 saves about 700 bytes, short of
	 * the 1024 (1/64) that make it worth sending compressed.
	 */
	memset(raw, 0, 768);
	wire_data_encode(cctx, 19, raw, LEN, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_RAW);
	assert_int_equal(plen, LEN);
	assert_true(ZSTD_compress(scratch, LEN, raw, LEN, 19) < LEN);
	memset(raw, 0, 2048);
	wire_data_encode(cctx, 19, raw, LEN, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_ZSTD);
	assert_true(plen <= LEN - LEN / 64);
	/* Half zeros: worth it. */
	memset(raw, 0, LEN / 2);
	wire_data_encode(cctx, 3, raw, LEN, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_ZSTD);
	assert_true(plen < LEN / 2 + LEN / 64);

	/* Tiny blocks: zstd cannot beat them, scratch is not overrun. */
	for (size_t n = 1; n <= 32; n++) {
		uint8_t *small = malloc(n);

		assert_non_null(small);
		memset(raw, 0, n);
		wire_data_encode(cctx, 3, raw, n, small, &m.encoding,
		    &payload, &plen);
		assert_true(m.encoding == WIRE_ENC_RAW ? plen == n && payload
		    == raw : plen < n && payload == small);
		free(small);
	}
	wire_data_encode(cctx, 3, raw, 0, scratch, &m.encoding, &payload,
	    &plen);
	assert_int_equal(m.encoding, WIRE_ENC_RAW);
	assert_int_equal(plen, 0);

	ZSTD_freeCCtx(cctx);
	free(raw);
	free(scratch);
	free(out);
}

/* --- digest ------------------------------------------------------------ */

static void
digest_of(const struct wire_data *ms, size_t n, struct digest *out)
{
	struct wire_digest d = { 0 };

	wire_digest_init(&d);
	for (size_t i = 0; i < n; i++)
		wire_digest_update(&d, &ms[i]);
	wire_digest_final(&d, out);
	wire_digest_free(&d);
}

static void
test_digest(void **state)
{
	struct wire_data ms[3], alt[3];
	struct digest a, b;
	struct wbuf w;

	memset(ms, 0, sizeof(ms));
	for (int i = 0; i < 3; i++) {
		ms[i].disk = (uint16_t)i;
		ms[i].offset = (uint64_t)i * 4096;
		ms[i].length = 4096;
		ms[i].encoding = WIRE_ENC_RAW;
		fill_pattern(ms[i].hash.b, DIGEST_LEN, (uint32_t)i + 1);
	}
	digest_of(ms, 3, &a);
	digest_of(ms, 3, &b);
	assert_true(digest_equal(&a, &b));

	/* The exact bytes fed: u16 disk, u64 offset, u32 length, hash. */
	wb_init(&w);
	for (int i = 0; i < 3; i++) {
		wb_put_u16(&w, ms[i].disk);
		wb_put_u64(&w, ms[i].offset);
		wb_put_u32(&w, ms[i].length);
		wb_put_bytes(&w, ms[i].hash.b, DIGEST_LEN);
	}
	assert_int_equal(w.len, 3 * (2 + 8 + 4 + DIGEST_LEN));
	digest_block(w.p, w.len, &b);
	assert_true(digest_equal(&a, &b));
	wb_free(&w);

	/* The encoding is not part of it. */
	memcpy(alt, ms, sizeof(ms));
	alt[1].encoding = WIRE_ENC_ZSTD;
	digest_of(alt, 3, &b);
	assert_true(digest_equal(&a, &b));

	memcpy(alt, ms, sizeof(ms));
	alt[0] = ms[1];
	alt[1] = ms[0];
	digest_of(alt, 3, &b);
	assert_false(digest_equal(&a, &b));

	digest_of(ms, 2, &b);
	assert_false(digest_equal(&a, &b));

	memcpy(alt, ms, sizeof(ms));
	alt[2].disk = 3;
	digest_of(alt, 3, &b);
	assert_false(digest_equal(&a, &b));

	memcpy(alt, ms, sizeof(ms));
	alt[2].offset += 1ULL << 40;
	digest_of(alt, 3, &b);
	assert_false(digest_equal(&a, &b));

	memcpy(alt, ms, sizeof(ms));
	alt[2].length = 4095;
	digest_of(alt, 3, &b);
	assert_false(digest_equal(&a, &b));

	memcpy(alt, ms, sizeof(ms));
	alt[0].hash.b[15] ^= 0x80;
	digest_of(alt, 3, &b);
	assert_false(digest_equal(&a, &b));

	/* No frames: the hash of nothing. */
	digest_of(ms, 0, &a);
	digest_block("", 0, &b);
	assert_true(digest_equal(&a, &b));
}

static void
test_names(void **state)
{
	static const char *types[] = { "unknown", "hello", "welcome", "cycle",
	    "data", "end", "ack", "nack", "sums", "sig", "sigend", "delta",
	    "promote", "promoted", "keepalive", "definition", "unknown" };
	static const char *nacks[] = { "unknown", "protocol", "denied",
	    "fenced", "bad-data", "io", "no-space", "busy", "internal",
	    "mismatch", "unknown" };

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		assert_string_equal(wire_type_name((uint8_t)i), types[i]);
	assert_string_equal(wire_type_name(255), "unknown");
	for (size_t i = 0; i < sizeof(nacks) / sizeof(nacks[0]); i++)
		assert_string_equal(wire_nack_name((uint16_t)i), nacks[i]);
	assert_string_equal(wire_nack_name(UINT16_MAX), "unknown");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame_header),
		cmocka_unit_test(test_hello_roundtrip),
		cmocka_unit_test(test_small_frames_roundtrip),
		cmocka_unit_test(test_cycle_roundtrip),
		cmocka_unit_test(test_data_roundtrip),
		cmocka_unit_test(test_hello_hostile),
		cmocka_unit_test(test_hello_name_with_nul),
		cmocka_unit_test(test_welcome_hostile),
		cmocka_unit_test(test_cycle_hostile),
		cmocka_unit_test(test_end_ack_nack_hostile),
		cmocka_unit_test(test_data_hostile),
		cmocka_unit_test(test_sums_roundtrip),
		cmocka_unit_test(test_sums_hostile),
		cmocka_unit_test(test_sig_roundtrip),
		cmocka_unit_test(test_sig_hostile),
		cmocka_unit_test(test_sigend_roundtrip),
		cmocka_unit_test(test_delta_roundtrip),
		cmocka_unit_test(test_delta_hostile),
		cmocka_unit_test(test_versions),
		cmocka_unit_test(test_keepalive),
		cmocka_unit_test(test_definition_roundtrip),
		cmocka_unit_test(test_definition_hostile),
		cmocka_unit_test(test_definition_digest),
		cmocka_unit_test(test_promote_roundtrip),
		cmocka_unit_test(test_promote_hostile),
		cmocka_unit_test(test_promoted),
		cmocka_unit_test(test_resync_sequence),
		cmocka_unit_test(test_check_data),
		cmocka_unit_test(test_content_zstd),
		cmocka_unit_test(test_content_raw),
		cmocka_unit_test(test_encode),
		cmocka_unit_test(test_digest),
		cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
