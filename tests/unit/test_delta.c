/*
 * test_delta.c — chunk signatures, deltas and patches: every round trip
 * gives back the new bytes exactly, deltas grow with the changes and not
 * with the chunk, and every hostile signature or delta is refused with
 * nothing written.
 *
 * Signatures, deltas and patch outputs live in buffers of exactly their
 * size, so ASan catches a read or write one byte too far.  Hostile inputs
 * are assembled command by command.  test_timings prints (asserts
 * nothing about) the time and sizes of a 1 MiB chunk with 1% changed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <librsync.h>
#include <pthread.h>
#include <unistd.h>

#include "buf.h"
#include "delta.h"
#include "err.h"
#include "log.h"

#define KB	1024u
#define MB	(1024u * 1024u)

#define CHECK_RC(what, got, want) do {					\
	int got_ = (got), want_ = (want);				\
	if (got_ != want_)						\
		fail_msg("%s: got %d (%s), want %d (%s)", (what),	\
		    got_, rd_strerror(got_), want_, rd_strerror(want_)); \
} while (0)

static uint64_t
next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void
fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(next_rand(&s) >> 24);
}

static uint8_t *
alloc_random(size_t len, uint64_t seed)
{
	uint8_t *p = malloc(len);

	assert_non_null(p);
	fill_random(p, len, seed);
	return p;
}

static uint8_t *
dup_exact(const void *p, size_t len)
{
	uint8_t *q = malloc(len ? len : 1);

	assert_non_null(q);
	if (len > 0)
		memcpy(q, p, len);
	return q;
}

/* Overwrite [off, off+n) of p with fresh random bytes. */
static void
scribble(uint8_t *p, size_t off, size_t n, uint64_t seed)
{
	fill_random(p + off, n, seed);
}

/* A private copy of a wbuf's bytes, exactly its length. */
static uint8_t *
wb_exact(const struct wbuf *b)
{
	return dup_exact(b->p, b->len);
}

/*
 * Sign old, make the delta to new, patch old with it: the result must be
 * new exactly.  Returns the delta's size; *sig_len gets the signature's.
 */
static size_t
round_trip_sizes(const uint8_t *old, const uint8_t *new, size_t len,
    uint32_t block_len, size_t *sig_len)
{
	struct wbuf sig, delta;
	uint8_t *sigx, *deltax, *out;
	size_t n;

	wb_init(&sig);
	wb_init(&delta);
	CHECK_RC("delta_sign", delta_sign(old, len, block_len, &sig), 0);
	assert_int_equal(sig.len, delta_sig_max(len, block_len));
	sigx = wb_exact(&sig);
	CHECK_RC("delta_make", delta_make(sigx, sig.len, new, len, &delta), 0);
	deltax = wb_exact(&delta);
	out = malloc(len);
	assert_non_null(out);
	CHECK_RC("delta_patch", delta_patch(old, deltax, delta.len, out, len),
	    0);
	if (memcmp(out, new, len) != 0)
		fail_msg("len %zu block_len %u: patched chunk differs",
		    len, block_len);
	n = delta.len;
	if (sig_len != NULL)
		*sig_len = sig.len;
	free(out);
	free(deltax);
	free(sigx);
	wb_free(&delta);
	wb_free(&sig);
	return n;
}

static size_t
round_trip(const uint8_t *old, const uint8_t *new, size_t len,
    uint32_t block_len)
{
	return round_trip_sizes(old, new, len, block_len, NULL);
}

/* --- hand-made deltas ------------------------------------------------ */

static void
put_uint(struct wbuf *b, uint64_t v, unsigned width)
{
	switch (width) {
	case 1:
		wb_put_u8(b, (uint8_t)v);
		break;
	case 2:
		wb_put_u16(b, (uint16_t)v);
		break;
	case 4:
		wb_put_u32(b, (uint32_t)v);
		break;
	default:
		wb_put_u64(b, v);
		break;
	}
}

static void
d_start(struct wbuf *b)
{
	wb_init(b);
	wb_put_u32(b, RS_DELTA_MAGIC);
}

static void
d_end(struct wbuf *b)
{
	wb_put_u8(b, 0x00);
}

/* COPY with the position in pw bytes and the length in lw bytes. */
static void
d_copy_w(struct wbuf *b, uint64_t pos, uint64_t n, unsigned pw, unsigned lw)
{
	wb_put_u8(b, (uint8_t)(0x45 + 4 * __builtin_ctz(pw) +
	    __builtin_ctz(lw)));
	put_uint(b, pos, pw);
	put_uint(b, n, lw);
}

static void
d_copy(struct wbuf *b, uint64_t pos, uint64_t n)
{
	d_copy_w(b, pos, n, 8, 8);
}

/* A LITERAL header with its length in width bytes (no data). */
static void
d_lit_hdr(struct wbuf *b, uint64_t n, unsigned width)
{
	wb_put_u8(b, (uint8_t)(0x41 + __builtin_ctz(width)));
	put_uint(b, n, width);
}

static void
d_literal(struct wbuf *b, const uint8_t *p, size_t n)
{
	d_lit_hdr(b, n, 4);
	wb_put_bytes(b, p, n);
}

/*
 * Patch basis[0..len) with the delta in b (then freed) from a private
 * copy of its exact size, into an output of exactly len bytes filled
 * with a sentinel.  Returns delta_patch()'s result; on a refusal the
 * output must still be all sentinel.  *outp (if not NULL) gets the output.
 */
static int
patch_wb(const uint8_t *basis, size_t len, struct wbuf *b, uint8_t **outp)
{
	uint8_t *dx = wb_exact(b), *out = malloc(len);
	int r;

	assert_non_null(out);
	memset(out, 0xA5, len);
	r = delta_patch(basis, dx, b->len, out, len);
	if (r != 0) {
		for (size_t i = 0; i < len; i++)
			if (out[i] != 0xA5)
				fail_msg("refused delta (%d) wrote out[%zu]",
				    r, i);
	}
	free(dx);
	wb_free(b);
	if (outp != NULL)
		*outp = out;
	else
		free(out);
	return r;
}

/* --- signatures ------------------------------------------------------- */

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static void
set_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void
test_sig_layout(void **state)
{
	static const struct { size_t len; uint32_t bl; size_t nblocks; } c[] = {
		{ 1, 512, 1 }, { 512, 512, 1 }, { 513, 512, 2 },
		{ 100, 64 * KB, 1 }, { 1 * MB, 4096, 256 },
		{ 1 * MB + 1, 4096, 257 }, { 4 * MB, 512, 8192 },
		{ 4 * MB, 64 * KB, 64 },
	};
	uint8_t *data = alloc_random(4 * MB, 1);

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		struct wbuf sig;
		size_t want = 12 + c[i].nblocks * (4 + DELTA_STRONG_LEN);

		assert_int_equal(delta_sig_max(c[i].len, c[i].bl), want);
		/* appended after what is already there */
		wb_init(&sig);
		wb_put_bytes(&sig, "abc", 3);
		CHECK_RC("delta_sign", delta_sign(data, c[i].len, c[i].bl,
		    &sig), 0);
		assert_int_equal(sig.len, 3 + want);
		assert_memory_equal(sig.p, "abc", 3);
		assert_int_equal(be32(sig.p + 3), RS_BLAKE2_SIG_MAGIC);
		assert_int_equal(be32(sig.p + 7), c[i].bl);
		assert_int_equal(be32(sig.p + 11), DELTA_STRONG_LEN);
		wb_free(&sig);
	}
	/* an out-of-range block length counts as the smallest */
	assert_int_equal(delta_sig_max(MB, 0), delta_sig_max(MB, 512));
	assert_int_equal(delta_sig_max(MB, 100 * KB), delta_sig_max(MB, 512));
	assert_int_equal(delta_sig_max(0, 4096), 12);
	free(data);
}

static void
test_sign_bad_args(void **state)
{
	uint8_t *data = alloc_random(DELTA_MAX_CHUNK + 1, 2);
	struct wbuf sig;

	wb_init(&sig);
	wb_put_u8(&sig, 7);
	CHECK_RC("len 0", delta_sign(data, 0, 4096, &sig), RD_ERR_RANGE);
	CHECK_RC("len max+1", delta_sign(data, DELTA_MAX_CHUNK + 1, 4096,
	    &sig), RD_ERR_RANGE);
	CHECK_RC("block 0", delta_sign(data, 4096, 0, &sig), RD_ERR_RANGE);
	CHECK_RC("block 511", delta_sign(data, 4096, 511, &sig),
	    RD_ERR_RANGE);
	CHECK_RC("block 64K+1", delta_sign(data, 4096, 64 * KB + 1, &sig),
	    RD_ERR_RANGE);
	assert_int_equal(sig.len, 1);
	wb_free(&sig);
	free(data);
}

/* --- round trips ------------------------------------------------------ */

static void
test_identical(void **state)
{
	uint8_t *a = alloc_random(4 * MB, 3);
	size_t n;

	/* one COPY of the whole chunk */
	n = round_trip(a, a, MB, 4096);
	assert_true(n < 32);
	n = round_trip(a, a, 4 * MB, 512);
	assert_true(n < 32);
	n = round_trip(a, a, 4 * MB, 64 * KB);
	assert_true(n < 32);
	free(a);
}

static void
test_changes_at_edges(void **state)
{
	static const size_t lens[] = { MB, MB - 1000 };
	uint8_t *old = alloc_random(MB, 4), *new = malloc(MB);
	size_t n;

	assert_non_null(new);
	for (size_t i = 0; i < 2; i++) {
		size_t len = lens[i];

		memcpy(new, old, len);
		new[0] ^= 0xff;
		n = round_trip(old, new, len, 4096);
		assert_true(n <= 4096 + 64);

		memcpy(new, old, len);
		new[len - 1] ^= 0xff;
		n = round_trip(old, new, len, 4096);
		assert_true(n <= 4096 + 64);

		memcpy(new, old, len);
		scribble(new, 0, 10, 5);
		scribble(new, len - 10, 10, 6);
		n = round_trip(old, new, len, 4096);
		assert_true(n >= 20 && n <= 2 * 4096 + 64);
	}
	free(new);
	free(old);
}

/*
 * k scattered writes of 100 bytes, each inside one block: the delta is
 * about k blocks of literal data, whatever the chunk's size.
 */
static size_t
delta_for_writes(const uint8_t *old, uint8_t *new, size_t len, unsigned k,
    uint32_t bl)
{
	memcpy(new, old, len);
	for (unsigned i = 0; i < k; i++) {
		size_t block = (size_t)i * 7 % (len / bl);
		scribble(new, block * bl + (i * 37) % (bl - 100), 100, 100 + i);
	}
	return round_trip(old, new, len, bl);
}

static void
test_delta_proportional(void **state)
{
	uint8_t *old = alloc_random(4 * MB, 7), *new = malloc(4 * MB);
	size_t d1, d4, d16, d16big;

	assert_non_null(new);
	d1 = delta_for_writes(old, new, MB, 1, 4096);
	d4 = delta_for_writes(old, new, MB, 4, 4096);
	d16 = delta_for_writes(old, new, MB, 16, 4096);
	d16big = delta_for_writes(old, new, 4 * MB, 16, 4096);
	print_message("delta for 1, 4, 16 writes in 1 MiB: %zu %zu %zu; "
	    "16 in 4 MiB: %zu\n", d1, d4, d16, d16big);
	assert_true(d1 >= 100 && d1 <= 4096 + 64);
	assert_true(d4 >= 3 * d1 && d4 <= 5 * d1);
	assert_true(d16 >= 12 * d1 && d16 <= 20 * d1);
	/* the chunk's size barely matters */
	assert_true(d16big <= d16 + 256);
	free(new);
	free(old);
}

static void
test_shifted(void **state)
{
	size_t len = MB, n;
	uint8_t *old = alloc_random(len, 8), *new = malloc(len);

	assert_non_null(new);
	/* 100 bytes inserted at 10000, the end pushed out */
	memcpy(new, old, 10000);
	scribble(new, 10000, 100, 9);
	memcpy(new + 10100, old + 10000, len - 10100);
	n = round_trip(old, new, len, 4096);
	assert_true(n <= 3 * 4096 + 64);

	/* one byte in front of everything */
	new[0] = 0x42;
	memcpy(new + 1, old, len - 1);
	n = round_trip(old, new, len, 4096);
	assert_true(n <= 2 * 4096 + 64);

	/* 300 bytes removed at 5000, random bytes at the end */
	memcpy(new, old, 5000);
	memcpy(new + 5000, old + 5300, len - 5300);
	scribble(new, len - 300, 300, 10);
	n = round_trip(old, new, len, 4096);
	assert_true(n <= 3 * 4096 + 64);
	free(new);
	free(old);
}

static void
test_zero_chunks(void **state)
{
	size_t len = MB, n;
	uint8_t *zero = calloc(1, len), *rnd = alloc_random(len, 11);
	uint8_t *new = malloc(len);

	assert_non_null(zero);
	assert_non_null(new);
	/*
	 * Identical blocks all match the first of them, so each zero block
	 * is its own COPY of block 0: a few bytes per block, not one COPY.
	 */
	n = round_trip(zero, zero, len, 4096);
	print_message("delta of a zero chunk over zeros: %zu bytes\n", n);
	assert_true(n <= 256 * 5 + 16);
	/* nothing to copy: the whole chunk as literals */
	n = round_trip(zero, rnd, len, 4096);
	assert_true(n >= len && n <= len + len / 1000 + 64);
	n = round_trip(rnd, zero, len, 4096);
	assert_true(n >= len && n <= len + len / 1000 + 64);
	/* a mostly zero chunk, written in two places */
	memset(new, 0, len);
	scribble(new, 70000, 3000, 12);
	scribble(new, len - 1, 1, 13);
	n = round_trip(zero, new, len, 4096);
	assert_true(n <= 3 * 4096 + 64);
	/* and the write undone */
	n = round_trip(new, zero, len, 4096);
	assert_true(n <= 3 * 4096 + 64);
	free(new);
	free(rnd);
	free(zero);
}

static void
test_odd_lengths(void **state)
{
	static const size_t lens[] = { 1, 2, 511, 512, 513, 4095, 4097,
	    3 * 4096 + 123, 64 * KB + 1, 1 * MB - 1 };
	static const uint32_t bls[] = { 512, 4096, 64 * KB };
	uint8_t *old = alloc_random(MB, 14), *new = malloc(MB);

	assert_non_null(new);
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		for (size_t j = 0; j < sizeof(bls) / sizeof(bls[0]); j++) {
			size_t len = lens[i];

			round_trip(old, old, len, bls[j]);
			/* the tail (maybe short) block changed */
			memcpy(new, old, len);
			new[len - 1] ^= 0x5a;
			round_trip(old, new, len, bls[j]);
			/* the first block changed, the tail kept */
			memcpy(new, old, len);
			new[0] ^= 0x5a;
			round_trip(old, new, len, bls[j]);
		}
	}
	free(new);
	free(old);
}

static void
test_max_chunk(void **state)
{
	size_t len = DELTA_MAX_CHUNK, n;
	uint8_t *old = alloc_random(len, 15), *new = dup_exact(old, len);

	scribble(new, 0, 1, 16);
	scribble(new, 2 * MB + 77, 50000, 17);
	scribble(new, len - 5, 5, 18);
	n = round_trip(old, new, len, 512);
	assert_true(n <= 50000 + 4 * 512 + 256);
	n = round_trip(old, new, len, 64 * KB);
	assert_true(n <= 50000 + 4 * 64 * KB + 256);
	free(new);
	free(old);
}

/* --- hostile signatures ---------------------------------------------- */

/* delta_make() on a private copy of exactly sig_len bytes of sig. */
static int
make_exact(const uint8_t *sig, size_t sig_len, const uint8_t *data,
    size_t len)
{
	uint8_t *copy = dup_exact(sig, sig_len);
	struct wbuf out;
	int r;

	wb_init(&out);
	wb_put_bytes(&out, "xy", 2);
	r = delta_make(copy, sig_len, data, len, &out);
	if (r != 0 && (out.len != 2 || memcmp(out.p, "xy", 2) != 0))
		fail_msg("refused signature (%d) changed the output", r);
	wb_free(&out);
	free(copy);
	return r;
}

/*
 * A copy of sig with header field at off set to v and its blocks padded
 * or cut to nblocks entries of 4 + strong_len bytes.
 */
static int
make_patched(const uint8_t *sig, size_t off, uint32_t v, size_t nblocks,
    uint32_t strong_len, const uint8_t *data, size_t len)
{
	size_t n = 12 + nblocks * (4 + strong_len);
	uint8_t *s = calloc(1, n);
	int r;

	assert_non_null(s);
	memcpy(s, sig, 12);
	set_be32(s + off, v);
	r = make_exact(s, n, data, len);
	free(s);
	return r;
}

static void
test_bad_signatures(void **state)
{
	static const uint32_t magics[] = { RS_MD4_SIG_MAGIC,
	    RS_RK_MD4_SIG_MAGIC, RS_RK_BLAKE2_SIG_MAGIC, RS_DELTA_MAGIC, 0 };
	static const uint32_t bad_bls[] = { 1, 256, 511, 64 * KB + 1,
	    0x7fffffff };
	static const uint32_t bad_strong[] = { 0, 1, 8, 15, 17, 32, 33 };
	size_t len = 10000;	/* 3 blocks of 4096 */
	uint8_t *data = alloc_random(len, 20);
	struct wbuf sig;
	uint8_t *s;

	wb_init(&sig);
	CHECK_RC("sign", delta_sign(data, len, 4096, &sig), 0);
	assert_int_equal(sig.len, 72);
	s = wb_exact(&sig);
	CHECK_RC("good", make_exact(s, 72, data, len), 0);

	for (size_t i = 0; i < sizeof(magics) / sizeof(magics[0]); i++)
		CHECK_RC("magic", make_patched(s, 0, magics[i], 3, 16, data,
		    len), RD_ERR_INVALID);
	/* out of range, even with as many entries as the length implies */
	CHECK_RC("block 0", make_patched(s, 4, 0, 3, 16, data, len),
	    RD_ERR_INVALID);
	for (size_t i = 0; i < sizeof(bad_bls) / sizeof(bad_bls[0]); i++)
		CHECK_RC("block_len", make_patched(s, 4, bad_bls[i],
		    (len + bad_bls[i] - 1) / bad_bls[i], 16, data, len),
		    RD_ERR_INVALID);
	CHECK_RC("block 0x80000000", make_patched(s, 4, 0x80000000u, 1, 16,
	    data, len), RD_ERR_INVALID);
	/* in range but not the number of entries given */
	CHECK_RC("block 8192, 3 entries", make_patched(s, 4, 8192, 3, 16,
	    data, len), RD_ERR_INVALID);
	CHECK_RC("block 2048, 3 entries", make_patched(s, 4, 2048, 3, 16,
	    data, len), RD_ERR_INVALID);
	/* a consistent header with other sums is well-formed */
	CHECK_RC("block 8192, 2 entries", make_patched(s, 4, 8192, 2, 16,
	    data, len), 0);
	for (size_t i = 0; i < sizeof(bad_strong) / sizeof(bad_strong[0]);
	    i++)
		CHECK_RC("strong_len", make_patched(s, 8, bad_strong[i], 3,
		    bad_strong[i], data, len), RD_ERR_INVALID);

	/* every truncation, including one whole entry short (librsync
	 * would take that as a 2-block signature) */
	for (size_t n = 0; n < 72; n++)
		CHECK_RC("truncated", make_exact(s, n, data, len),
		    RD_ERR_INVALID);
	CHECK_RC("NULL", delta_make(NULL, 0, data, len, &sig),
	    RD_ERR_INVALID);
	/* trailing bytes, and one entry too many */
	{
		uint8_t *t = calloc(1, 92);

		assert_non_null(t);
		memcpy(t, s, 72);
		CHECK_RC("one byte more", make_exact(t, 73, data, len),
		    RD_ERR_INVALID);
		CHECK_RC("one entry more", make_exact(t, 92, data, len),
		    RD_ERR_INVALID);
		free(t);
	}
	/* the signature of a basis with another number of blocks */
	CHECK_RC("len 8192", make_exact(s, 72, data, 8192), RD_ERR_INVALID);
	CHECK_RC("len 12289", make_exact(s, 72, data, 12289),
	    RD_ERR_INVALID);
	CHECK_RC("len 0", make_exact(s, 72, data, 0), RD_ERR_RANGE);
	CHECK_RC("len max+1", delta_make(s, 72, data, DELTA_MAX_CHUNK + 1,
	    &sig), RD_ERR_RANGE);
	assert_int_equal(sig.len, 72);
	free(s);
	wb_free(&sig);
	free(data);
}

/*
 * Well-formed signatures with made-up sums: the delta is made, and
 * whatever it says, patching never goes outside the basis.
 */
static void
test_forged_signature(void **state)
{
	size_t len = 2 * 4096 + 100;
	uint8_t *a = alloc_random(3 * 4096, 21), *data = malloc(len);
	uint8_t *basis = alloc_random(len, 22), *out;
	struct wbuf sig, delta;
	size_t sig_len = delta_sig_max(len, 4096);

	assert_non_null(data);
	/* random sums: nothing matches, the delta is the data */
	wb_init(&sig);
	CHECK_RC("sign", delta_sign(a, len, 4096, &sig), 0);
	fill_random(sig.p + 12, sig.len - 12, 23);
	wb_init(&delta);
	CHECK_RC("make", delta_make(sig.p, sig.len, a, len, &delta), 0);
	CHECK_RC("patch", patch_wb(basis, len, &delta, &out), 0);
	assert_memory_equal(out, a, len);
	free(out);
	wb_free(&sig);

	/*
	 * The signature of 3 whole blocks has the size of one for 2 blocks
	 * and 100 bytes, but its last entry covers a whole block: data
	 * starting with that block is "copied" from past the basis's end.
	 */
	wb_init(&sig);
	CHECK_RC("sign", delta_sign(a, 3 * 4096, 4096, &sig), 0);
	assert_int_equal(sig.len, sig_len);
	memcpy(data, a + 2 * 4096, 4096);
	memcpy(data + 4096, a, 4096);
	fill_random(data + 2 * 4096, 100, 24);
	wb_init(&delta);
	CHECK_RC("make", delta_make(sig.p, sig.len, data, len, &delta), 0);
	assert_true(delta.len < 100 + 64);
	CHECK_RC("patch", patch_wb(basis, len, &delta, NULL),
	    RD_ERR_INVALID);
	wb_free(&sig);
	free(basis);
	free(data);
	free(a);
}

/* --- the work budget ---------------------------------------------------- */

/*
 * A signature of len bytes at 4 KiB blocks whose every weak sum is that
 * of the block at weak_of, and whose strong sums are made up: what a
 * hostile replica sends to make each matching window cost a block hashed.
 */
static void
forge_signature(const uint8_t *weak_of, size_t len, struct wbuf *sig)
{
	struct wbuf one;

	wb_init(&one);
	CHECK_RC("sign one block", delta_sign(weak_of, 4096, 4096, &one), 0);
	wb_init(sig);
	CHECK_RC("sign", delta_sign(weak_of, len, 4096, sig), 0);
	for (size_t o = 12; o < sig->len; o += 20) {
		memcpy(sig->p + o, one.p + 12, 4);
		fill_random(sig->p + o + 4, 16, o);
	}
	wb_free(&one);
}

/* Zeros against forged zero-block weak sums: refused, nothing written,
 * after at most the budget's worth of false matches (else this test
 * would take seconds of hashing to come back with 0). */
static void
test_budget_forged(void **state)
{
	size_t len = 1 * MB;
	uint8_t *zeros = calloc(1, len);
	struct delta_limits lim = { .max_false = 1024 };
	struct wbuf sig, delta;

	assert_non_null(zeros);
	forge_signature(zeros, len, &sig);
	wb_init(&delta);
	wb_put_u8(&delta, 0x5a);
	CHECK_RC("forged", delta_make_bounded(sig.p, sig.len, zeros, len, &lim,
	    &delta), RD_ERR_BUDGET);
	assert_int_equal(delta.len, 1);
	wb_free(&delta);
	wb_free(&sig);
	free(zeros);
}

/* A repeated 16-byte pattern: 16 distinct window sums, all listed with
 * made-up strong sums.  No zero block, no duplicate weak sum needed. */
static void
test_budget_forged_pattern(void **state)
{
	size_t len = 1 * MB;
	uint8_t *data = malloc(len), *win = malloc(4096 * 16);
	struct delta_limits lim = { .max_false = 1024 };
	struct wbuf sig, delta, one;

	assert_non_null(data);
	assert_non_null(win);
	for (size_t i = 0; i < len; i++)
		data[i] = (uint8_t)(i % 16 * 7 + 1);
	wb_init(&sig);
	CHECK_RC("sign", delta_sign(data, len, 4096, &sig), 0);
	for (size_t k = 0, o = 12; o < sig.len; k++, o += 20) {
		wb_init(&one);
		CHECK_RC("sign window", delta_sign(data + k % 16, 4096, 4096,
		    &one), 0);
		memcpy(sig.p + o, one.p + 12, 4);
		fill_random(sig.p + o + 4, 16, o);
		wb_free(&one);
	}
	wb_init(&delta);
	CHECK_RC("forged", delta_make_bounded(sig.p, sig.len, data, len, &lim,
	    &delta), RD_ERR_BUDGET);
	assert_int_equal(delta.len, 0);
	wb_free(&delta);
	wb_free(&sig);
	free(win);
	free(data);
}

/*
 * The count is exact: random data around a run of zeros gives one false
 * match per window inside the run (run - 4096 + 1 of them) against a
 * forged zero block: that many are allowed, one fewer is not.
 */
static void
test_budget_exact(void **state)
{
	size_t len = 256 * KB, run = 6000, nfalse = run - 4096 + 1;
	uint8_t *data = alloc_random(len, 31), *zeros = calloc(1, len);
	uint8_t *basis = alloc_random(len, 32), *out;
	struct delta_limits lim = { .max_false = nfalse };
	struct wbuf sig, delta;

	assert_non_null(zeros);
	memset(data + 100 * KB, 0, run);
	forge_signature(zeros, len, &sig);
	wb_init(&delta);
	CHECK_RC("at the budget", delta_make_bounded(sig.p, sig.len, data, len,
	    &lim, &delta), 0);
	CHECK_RC("patch", patch_wb(basis, len, &delta, &out), 0);
	assert_memory_equal(out, data, len);
	free(out);
	lim.max_false = nfalse - 1;
	wb_init(&delta);
	CHECK_RC("one past", delta_make_bounded(sig.p, sig.len, data, len,
	    &lim, &delta), RD_ERR_BUDGET);
	assert_int_equal(delta.len, 0);
	wb_free(&delta);
	wb_free(&sig);
	free(basis);
	free(zeros);
	free(data);
}

/* Honest signatures pass a budget of one false match: zeros (a weak hit
 * at every byte, each a true match), and 1 % changed random data. */
static void
test_budget_honest(void **state)
{
	size_t len = 1 * MB;
	uint8_t *zeros = calloc(1, len), *old = alloc_random(len, 41);
	uint8_t *new = dup_exact(old, len), *out;
	struct delta_limits lim = { .max_false = 1 };
	struct wbuf sig, delta;

	assert_non_null(zeros);
	wb_init(&sig);
	CHECK_RC("sign zeros", delta_sign(zeros, len, 4096, &sig), 0);
	wb_init(&delta);
	CHECK_RC("zeros", delta_make_bounded(sig.p, sig.len, zeros, len, &lim,
	    &delta), 0);
	assert_true(delta.len < 4096);
	CHECK_RC("patch zeros", patch_wb(zeros, len, &delta, &out), 0);
	assert_memory_equal(out, zeros, len);
	free(out);
	wb_free(&sig);

	for (size_t off = 5000; off < len; off += 100 * KB)
		scribble(new, off, 1000, off);
	wb_init(&sig);
	CHECK_RC("sign", delta_sign(old, len, 4096, &sig), 0);
	wb_init(&delta);
	CHECK_RC("1 %", delta_make_bounded(sig.p, sig.len, new, len, &lim,
	    &delta), 0);
	assert_true(delta.len < 64 * KB);
	CHECK_RC("patch", patch_wb(old, len, &delta, &out), 0);
	assert_memory_equal(out, new, len);
	free(out);
	wb_free(&sig);
	free(new);
	free(old);
	free(zeros);
}

static int polls, polls_until_stop;

static int
stop_after_polls(void)
{
	return ++polls >= polls_until_stop;
}

/* Without a budget a forged signature is still stopped between slices:
 * the search polls, and ends with RD_ERR_CANCELLED, nothing written. */
static void
test_cancelled(void **state)
{
	size_t len = 1 * MB;
	uint8_t *zeros = calloc(1, len);
	struct delta_limits lim = { .cancelled = stop_after_polls };
	struct wbuf sig, delta;

	assert_non_null(zeros);
	forge_signature(zeros, len, &sig);
	polls = 0;
	polls_until_stop = 3;
	wb_init(&delta);
	CHECK_RC("unbounded", delta_make_bounded(sig.p, sig.len, zeros, len,
	    &lim, &delta), RD_ERR_CANCELLED);
	assert_int_equal(polls, 3);
	assert_int_equal(delta.len, 0);
	/* the budget's own search polls as well */
	lim.max_false = len;
	polls = 0;
	CHECK_RC("budget search", delta_make_bounded(sig.p, sig.len, zeros,
	    len, &lim, &delta), RD_ERR_CANCELLED);
	assert_int_equal(polls, 3);
	assert_int_equal(delta.len, 0);
	wb_free(&delta);
	wb_free(&sig);
	free(zeros);
}

/* The fallback answer to an untrusted signature: any basis, same bytes. */
static void
test_literal(void **state)
{
	size_t lens[] = { 1, 64, 65, 64 * KB, 64 * KB + 1, DELTA_MAX_CHUNK };
	struct wbuf delta;
	uint8_t *out;

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		uint8_t *data = alloc_random(lens[i], 50 + i);
		uint8_t *basis = alloc_random(lens[i], 60 + i);
		wb_init(&delta);
		CHECK_RC("literal", delta_literal(data, lens[i], &delta), 0);
		assert_true(delta.len <= lens[i] + 4 + 1 + 5 *
		    (lens[i] / (64 * KB) + 1));
		CHECK_RC("patch", patch_wb(basis, lens[i], &delta, &out), 0);
		assert_memory_equal(out, data, lens[i]);
		free(out);
		free(basis);
		free(data);
	}
	wb_init(&delta);
	CHECK_RC("len 0", delta_literal((const uint8_t *)"", 0, &delta),
	    RD_ERR_RANGE);
	assert_int_equal(delta.len, 0);
	wb_free(&delta);
}

/* --- hostile deltas --------------------------------------------------- */

static void
test_truncated_and_trailing(void **state)
{
	size_t len = 10000;
	uint8_t *old = alloc_random(len, 30), *new = dup_exact(old, len);
	struct wbuf sig, delta, b;
	uint8_t *d;
	size_t dlen;

	scribble(new, 5000, 10, 31);
	wb_init(&sig);
	wb_init(&delta);
	CHECK_RC("sign", delta_sign(old, len, 1024, &sig), 0);
	CHECK_RC("make", delta_make(sig.p, sig.len, new, len, &delta), 0);
	d = wb_exact(&delta);
	dlen = delta.len;
	assert_true(dlen > 1024);

	/* every prefix: a short result or a cut command, never success */
	for (size_t n = 0; n < dlen; n++) {
		wb_init(&b);
		wb_put_bytes(&b, d, n);
		CHECK_RC("truncated", patch_wb(old, len, &b, NULL),
		    RD_ERR_INVALID);
	}
	/*
	 * Anything after END is refused, although librsync itself stops
	 * at END and reports success with the rest unread: a delta is one
	 * frame, and bytes after its end mean the sender and we disagree.
	 */
	wb_init(&b);
	wb_put_bytes(&b, d, dlen);
	wb_put_u8(&b, 0);
	CHECK_RC("END END", patch_wb(old, len, &b, NULL), RD_ERR_INVALID);
	wb_init(&b);
	wb_put_bytes(&b, d, dlen);
	d_literal(&b, new, 1);
	d_end(&b);
	CHECK_RC("command after END", patch_wb(old, len, &b, NULL),
	    RD_ERR_INVALID);
	/* the untouched delta still works */
	wb_init(&b);
	wb_put_bytes(&b, d, dlen);
	{
		uint8_t *out;

		CHECK_RC("whole", patch_wb(old, len, &b, &out), 0);
		assert_memory_equal(out, new, len);
		free(out);
	}
	free(d);
	wb_free(&delta);
	wb_free(&sig);
	free(new);
	free(old);
}

static void
test_bad_deltas(void **state)
{
	size_t len = 10000;
	uint8_t *basis = alloc_random(len, 40), *lit = alloc_random(len + 8, 41);
	uint8_t *out;
	struct wbuf b;

	/* sanity of the builders: a whole copy, and copy + literal */
	d_start(&b);
	d_copy(&b, 0, len);
	d_end(&b);
	CHECK_RC("copy all", patch_wb(basis, len, &b, &out), 0);
	assert_memory_equal(out, basis, len);
	free(out);
	d_start(&b);
	d_copy(&b, len - 1, 1);
	d_literal(&b, lit, len - 1);
	d_end(&b);
	CHECK_RC("last byte + literal", patch_wb(basis, len, &b, &out), 0);
	assert_int_equal(out[0], basis[len - 1]);
	assert_memory_equal(out + 1, lit, len - 1);
	free(out);

	/* framing */
	wb_init(&b);
	CHECK_RC("empty", patch_wb(basis, len, &b, NULL), RD_ERR_INVALID);
	wb_init(&b);
	wb_put_u32(&b, RS_BLAKE2_SIG_MAGIC);
	d_copy(&b, 0, len);
	d_end(&b);
	CHECK_RC("magic", patch_wb(basis, len, &b, NULL), RD_ERR_INVALID);
	d_start(&b);
	CHECK_RC("no END", patch_wb(basis, len, &b, NULL), RD_ERR_INVALID);
	d_start(&b);
	d_end(&b);
	CHECK_RC("nothing", patch_wb(basis, len, &b, NULL), RD_ERR_INVALID);
	for (unsigned op = 0x55; op <= 0xff; op += 0x15) {
		d_start(&b);
		wb_put_u8(&b, (uint8_t)op);
		d_copy(&b, 0, len);
		d_end(&b);
		CHECK_RC("reserved", patch_wb(basis, len, &b, NULL),
		    RD_ERR_INVALID);
	}

	/* too short, too long */
	d_start(&b);
	d_copy(&b, 0, len - 1);
	d_end(&b);
	CHECK_RC("short", patch_wb(basis, len, &b, NULL), RD_ERR_INVALID);
	d_start(&b);
	d_copy(&b, 0, len);
	d_literal(&b, lit, 1);
	d_end(&b);
	CHECK_RC("long", patch_wb(basis, len, &b, NULL), RD_ERR_INVALID);

	/* copies outside the basis */
	d_start(&b);
	d_copy(&b, 1, len);
	d_end(&b);
	CHECK_RC("copy past end", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_copy(&b, len, 1);
	d_copy(&b, 0, len - 1);
	d_end(&b);
	CHECK_RC("copy at end", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_copy(&b, 1ull << 63, 4);
	d_copy(&b, 0, len - 4);
	d_end(&b);
	CHECK_RC("copy pos 2^63", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_copy(&b, UINT64_MAX, 1);
	d_copy(&b, 0, len - 1);
	d_end(&b);
	CHECK_RC("copy pos -1", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	/* lengths that would wrap in 32 bits */
	d_start(&b);
	d_copy(&b, 0, (1ull << 32) + len);
	d_end(&b);
	CHECK_RC("copy len 2^32+len", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_copy(&b, 0, 0);
	d_copy(&b, 0, len);
	d_end(&b);
	CHECK_RC("copy len 0", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);

	/* literals larger than the room left, or than what follows */
	d_start(&b);
	d_literal(&b, lit, len + 1);
	d_end(&b);
	CHECK_RC("literal len+1", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_copy(&b, 0, len - 10);
	d_literal(&b, lit, 11);
	d_end(&b);
	CHECK_RC("literal past end", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_lit_hdr(&b, 0x80000000u, 4);
	wb_put_bytes(&b, lit, len);
	d_end(&b);
	CHECK_RC("literal 2^31", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_lit_hdr(&b, (1ull << 32) + 2, 8);
	wb_put_bytes(&b, lit, len);
	d_end(&b);
	CHECK_RC("literal 2^32+2", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_lit_hdr(&b, len, 2);
	wb_put_bytes(&b, lit, len - 1);
	CHECK_RC("literal cut", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	d_start(&b);
	d_lit_hdr(&b, 0, 1);
	d_copy(&b, 0, len);
	d_end(&b);
	CHECK_RC("literal 0", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);
	/* an argument cut short */
	d_start(&b);
	wb_put_u8(&b, 0x54);
	wb_put_u64(&b, 0);
	wb_put_u16(&b, 0);
	CHECK_RC("copy args cut", patch_wb(basis, len, &b, NULL),
	    RD_ERR_INVALID);

	CHECK_RC("len 0", delta_patch(basis, lit, 10, lit, 0), RD_ERR_RANGE);
	CHECK_RC("len max+1", delta_patch(basis, lit, 10, lit,
	    DELTA_MAX_CHUNK + 1), RD_ERR_RANGE);
	free(lit);
	free(basis);
}

/* Every opcode form librsync defines gives the bytes it says. */
static void
test_all_opcodes(void **state)
{
	static const unsigned widths[] = { 1, 2, 4, 8 };
	size_t len = 300;
	uint8_t *basis = alloc_random(len, 50), *lit = alloc_random(len, 51);
	uint8_t *out;
	struct wbuf b;

	for (size_t i = 0; i < 4; i++) {
		for (size_t j = 0; j < 4; j++) {
			d_start(&b);
			d_copy_w(&b, 5, 100, widths[i], widths[j]);
			d_lit_hdr(&b, 200, widths[j] < 2 ? 2 : widths[j]);
			wb_put_bytes(&b, lit, 200);
			d_end(&b);
			CHECK_RC("copy op", patch_wb(basis, len, &b, &out), 0);
			assert_memory_equal(out, basis + 5, 100);
			assert_memory_equal(out + 100, lit, 200);
			free(out);
		}
		d_start(&b);
		d_lit_hdr(&b, 50, widths[i]);
		wb_put_bytes(&b, lit, 50);
		d_copy_w(&b, 0, len - 50, 2, 2);
		d_end(&b);
		CHECK_RC("literal op", patch_wb(basis, len, &b, &out), 0);
		assert_memory_equal(out, lit, 50);
		assert_memory_equal(out + 50, basis, len - 50);
		free(out);
	}
	for (unsigned n = 1; n <= 64; n++) {
		d_start(&b);
		wb_put_u8(&b, (uint8_t)n);
		wb_put_bytes(&b, lit, n);
		d_copy_w(&b, n, len - n, 2, 2);
		d_end(&b);
		CHECK_RC("immediate literal", patch_wb(basis, len, &b, &out),
		    0);
		assert_memory_equal(out, lit, n);
		assert_memory_equal(out + n, basis + n, len - n);
		free(out);
	}
	free(lit);
	free(basis);
}

/* --- the rest --------------------------------------------------------- */

struct thread_arg {
	uint64_t	seed;
	int		failures;
};

static void *
thread_main(void *p)
{
	struct thread_arg *a = p;
	size_t len = 256 * KB;
	uint8_t *old = malloc(len), *new = malloc(len), *out = malloc(len);

	if (old == NULL || new == NULL || out == NULL) {
		a->failures++;
		goto out;
	}
	for (int i = 0; i < 20; i++) {
		struct wbuf sig, delta;

		fill_random(old, len, a->seed * 100 + (uint64_t)i);
		memcpy(new, old, len);
		scribble(new, (size_t)i * 9000, 5000, a->seed + (uint64_t)i);
		wb_init(&sig);
		wb_init(&delta);
		if (delta_sign(old, len, 4096, &sig) != 0 ||
		    delta_make(sig.p, sig.len, new, len, &delta) != 0 ||
		    delta_patch(old, delta.p, delta.len, out, len) != 0 ||
		    memcmp(out, new, len) != 0)
			a->failures++;
		wb_free(&delta);
		wb_free(&sig);
	}
out:
	free(out);
	free(new);
	free(old);
	return NULL;
}

static void
test_threads(void **state)
{
	pthread_t t[6];
	struct thread_arg a[6];

	for (int i = 0; i < 6; i++) {
		a[i].seed = 60 + (uint64_t)i;
		a[i].failures = 0;
		assert_int_equal(pthread_create(&t[i], NULL, thread_main,
		    &a[i]), 0);
	}
	for (int i = 0; i < 6; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(a[i].failures, 0);
	}
}

/* After any delta_*() call, librsync's own errors stay off stderr. */
static void
test_librsync_quiet(void **state)
{
	static const uint8_t bad[] = { 'x', 'x', 'x', 'x', 0 };
	uint8_t data[600], out[16];
	char path[] = "/tmp/test_delta.XXXXXX";
	struct wbuf sig;
	rs_buffers_t bufs;
	rs_job_t *job;
	rs_result rr;
	off_t end;
	int fd, saved;

	memset(data, 1, sizeof(data));
	wb_init(&sig);
	CHECK_RC("sign", delta_sign(data, sizeof(data), 512, &sig), 0);
	wb_free(&sig);

	fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	fflush(stderr);
	saved = dup(2);
	assert_true(saved >= 0);
	dup2(fd, 2);
	job = rs_patch_begin(NULL, NULL);
	bufs.next_in = (char *)(uintptr_t)bad;
	bufs.avail_in = sizeof(bad);
	bufs.eof_in = 1;
	bufs.next_out = (char *)out;
	bufs.avail_out = sizeof(out);
	rr = rs_job_iter(job, &bufs);
	rs_job_free(job);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	end = lseek(fd, 0, SEEK_END);
	close(fd);
	assert_int_equal(rr, RS_BAD_MAGIC);
	assert_int_equal(end, 0);
}

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double
best(double a, double b)
{
	return a < b ? a : b;
}

/* The best of a few runs of each step. */
static void
time_one(const char *what, const uint8_t *old, const uint8_t *new,
    size_t len, uint32_t bl)
{
	double t_sign = 1e9, t_make = 1e9, t_patch = 1e9, t0;
	uint8_t *out = malloc(len);
	struct wbuf sig, delta;

	assert_non_null(out);
	wb_init(&sig);
	wb_init(&delta);
	for (int i = 0; i < 7; i++) {
		wb_reset(&sig);
		wb_reset(&delta);
		t0 = now_ms();
		CHECK_RC("sign", delta_sign(old, len, bl, &sig), 0);
		t_sign = best(t_sign, now_ms() - t0);
		t0 = now_ms();
		CHECK_RC("make", delta_make(sig.p, sig.len, new, len, &delta),
		    0);
		t_make = best(t_make, now_ms() - t0);
		t0 = now_ms();
		CHECK_RC("patch", delta_patch(old, delta.p, delta.len, out,
		    len), 0);
		t_patch = best(t_patch, now_ms() - t0);
		assert_memory_equal(out, new, len);
	}
	print_message("timing %-22s block %5u: sign %6.2f ms, delta %6.2f "
	    "ms, patch %5.2f ms; signature %6zu B, delta %7zu B\n", what, bl,
	    t_sign, t_make, t_patch, sig.len, delta.len);
	wb_free(&delta);
	wb_free(&sig);
	free(out);
}

static void
test_timings(void **state)
{
	static const uint32_t bls[] = { 4096, 8192, 16384 };
	size_t len = MB;
	uint8_t *old = alloc_random(len, 70), *clustered = dup_exact(old, len);
	uint8_t *scattered = dup_exact(old, len);

	/* 1% of the bytes: 10 writes of 1048 B, or 105 writes of 100 B */
	for (size_t i = 0; i < 10; i++)
		scribble(clustered, i * 104000 + 3000, len / 1000, 71 + i);
	for (size_t i = 0; i < 105; i++)
		scribble(scattered, i * 9973 + 11, 100, 200 + i);
	for (size_t i = 0; i < 3; i++) {
		time_one("1 MiB, unchanged", old, old, len, bls[i]);
		time_one("1 MiB, 10 x 1048 B", old, clustered, len, bls[i]);
		time_one("1 MiB, 105 x 100 B", old, scattered, len, bls[i]);
	}
	free(scattered);
	free(clustered);
	free(old);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sig_layout),
		cmocka_unit_test(test_sign_bad_args),
		cmocka_unit_test(test_identical),
		cmocka_unit_test(test_changes_at_edges),
		cmocka_unit_test(test_delta_proportional),
		cmocka_unit_test(test_shifted),
		cmocka_unit_test(test_zero_chunks),
		cmocka_unit_test(test_odd_lengths),
		cmocka_unit_test(test_max_chunk),
		cmocka_unit_test(test_bad_signatures),
		cmocka_unit_test(test_forged_signature),
		cmocka_unit_test(test_budget_forged),
		cmocka_unit_test(test_budget_forged_pattern),
		cmocka_unit_test(test_budget_exact),
		cmocka_unit_test(test_budget_honest),
		cmocka_unit_test(test_cancelled),
		cmocka_unit_test(test_literal),
		cmocka_unit_test(test_truncated_and_trailing),
		cmocka_unit_test(test_bad_deltas),
		cmocka_unit_test(test_all_opcodes),
		cmocka_unit_test(test_threads),
		cmocka_unit_test(test_librsync_quiet),
		cmocka_unit_test(test_timings),
	};

	log_set_level(LOG_LVL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
