/*
 * fuzz_delta.c — libFuzzer harness for delta_patch() and delta_make().
 * Each input is used three ways against a fixed basis of BASIS_LEN bytes:
 *
 *   as a delta: delta_patch() returns 0 or RD_ERR_INVALID, leaves the
 *   output untouched when it refuses, and accepts exactly the deltas that
 *   a plain reading of the format accepts (ref_apply() below), with the
 *   same bytes out;
 *
 *   as a signature: delta_make() against the new content returns 0 or
 *   RD_ERR_INVALID; whatever delta it makes is refused or applied
 *   cleanly, and from the basis's true signature it gives the new
 *   content back;
 *
 *   as new content (up to DATA_MAX bytes): signed basis, delta to the
 *   input, patch: the input comes back.
 *
 * Buffers are allocated to their exact size, so ASan sees any overrun.
 * Any broken promise is an abort().
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "delta.h"
#include "err.h"

#define BASIS_LEN	5000
#define DATA_MAX	(64 * 1024)
#define SENTINEL	0xA5

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *basis;		/* DATA_MAX bytes; the basis is a prefix */
static uint8_t *fresh;		/* BASIS_LEN bytes: the new content */

static void __attribute__((noreturn))
die(const char *what, int r)
{
	fprintf(stderr, "fuzz_delta: %s (%d, %s)\n", what, r, rd_strerror(r));
	abort();
}

static void *
xalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		die("out of memory", 0);
	return p;
}

/*
 * A basis with some repetition (so that copies of the same bytes can come
 * from several places) and new content made of moved, kept and changed
 * parts of it.
 */
static void
fuzz_init(void)
{
	uint64_t s = 0x243F6A8885A308D3ull;

	basis = xalloc(DATA_MAX);
	fresh = xalloc(BASIS_LEN);
	for (size_t i = 0; i < DATA_MAX; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		basis[i] = (uint8_t)(s >> 32);
	}
	memset(basis + 1500, 0, 1100);
	memcpy(fresh, basis + 700, 1300);
	memcpy(fresh + 1300, basis, 700);
	memcpy(fresh + 2000, basis + 2000, 3000);
	memset(fresh + 4000, 'x', 37);
}

static uint64_t
be_uint(const uint8_t *p, unsigned width)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < width; i++)
		v = v << 8 | p[i];
	return v;
}

/*
 * The delta format of delta.c, read as plainly as possible: 0 and len
 * bytes in out, or -1.
 */
static int
ref_apply(const uint8_t *d, size_t n, const uint8_t *base, uint8_t *out,
    size_t len)
{
	size_t i = 4, done = 0;
	uint64_t pos, cnt;

	if (n < 4 || be_uint(d, 4) != 0x72730236)
		return -1;
	for (;;) {
		unsigned op, pw, lw;

		if (i >= n)
			return -1;
		op = d[i++];
		if (op == 0)
			break;
		if (op <= 0x44) {
			lw = op <= 0x40 ? 0 : 1u << (op - 0x41);
			if (n - i < lw)
				return -1;
			cnt = lw == 0 ? op : be_uint(d + i, lw);
			i += lw;
			if (cnt == 0 || cnt > len - done || cnt > n - i)
				return -1;
			memcpy(out + done, d + i, cnt);
			i += cnt;
		} else if (op <= 0x54) {
			pw = 1u << ((op - 0x45) / 4);
			lw = 1u << ((op - 0x45) % 4);
			if (n - i < pw + lw)
				return -1;
			pos = be_uint(d + i, pw);
			cnt = be_uint(d + i + pw, lw);
			i += pw + lw;
			if (cnt == 0 || cnt > len - done || pos >= len ||
			    cnt > len - pos)
				return -1;
			memcpy(out + done, base + pos, cnt);
		} else
			return -1;
		done += cnt;
	}
	return i == n && done == len ? 0 : -1;
}

static void
as_delta(const uint8_t *d, size_t n)
{
	uint8_t *dx = xalloc(n), *out = xalloc(BASIS_LEN);
	uint8_t *ref = xalloc(BASIS_LEN);
	int r, rr;

	memcpy(dx, d, n);
	memset(out, SENTINEL, BASIS_LEN);
	r = delta_patch(basis, dx, n, out, BASIS_LEN);
	rr = ref_apply(d, n, basis, ref, BASIS_LEN);
	if (r != 0 && r != RD_ERR_INVALID)
		die("delta_patch: unexpected result", r);
	if ((r == 0) != (rr == 0))
		die("delta_patch and the reference disagree", r);
	if (r == 0 && memcmp(out, ref, BASIS_LEN) != 0)
		die("delta_patch wrote other bytes than the reference", r);
	for (size_t i = 0; r != 0 && i < BASIS_LEN; i++)
		if (out[i] != SENTINEL)
			die("delta_patch refused but wrote", r);
	free(ref);
	free(out);
	free(dx);
}

static void
as_signature(const uint8_t *s, size_t n)
{
	uint8_t *sx = xalloc(n), *out = xalloc(BASIS_LEN);
	struct wbuf delta, truth;
	uint32_t bl;
	int r, honest = 0;

	memcpy(sx, s, n);
	wb_init(&delta);
	wb_init(&truth);
	r = delta_make(sx, n, fresh, BASIS_LEN, &delta);
	if (r != 0 && r != RD_ERR_INVALID)
		die("delta_make: unexpected result", r);
	if (r != 0 && delta.len != 0)
		die("delta_make refused but wrote", r);
	if (n >= 12) {
		bl = (uint32_t)be_uint(s + 4, 4);
		if (bl >= DELTA_MIN_BLOCK && bl <= DELTA_MAX_BLOCK &&
		    n == delta_sig_max(BASIS_LEN, bl)) {
			if (delta_sign(basis, BASIS_LEN, bl, &truth) != 0)
				die("delta_sign failed", 0);
			honest = memcmp(truth.p, s, n) == 0;
		}
	}
	if (r == 0) {
		r = delta_patch(basis, delta.p, delta.len, out, BASIS_LEN);
		if (r != 0 && r != RD_ERR_INVALID)
			die("delta_patch of a made delta", r);
		if (honest && (r != 0 || memcmp(out, fresh, BASIS_LEN) != 0))
			die("true signature: no round trip", r);
	} else if (honest)
		die("delta_make refused a true signature", r);
	wb_free(&truth);
	wb_free(&delta);
	free(out);
	free(sx);
}

static void
as_content(const uint8_t *d, size_t n)
{
	uint8_t *dx = xalloc(n), *out = xalloc(n);
	struct wbuf sig, delta;
	int r;

	memcpy(dx, d, n);
	wb_init(&sig);
	wb_init(&delta);
	if ((r = delta_sign(basis, n, DELTA_MIN_BLOCK, &sig)) != 0)
		die("delta_sign", r);
	if ((r = delta_make(sig.p, sig.len, dx, n, &delta)) != 0)
		die("delta_make of a true signature", r);
	if ((r = delta_patch(basis, delta.p, delta.len, out, n)) != 0)
		die("delta_patch of a made delta", r);
	if (memcmp(out, d, n) != 0)
		die("content did not round-trip", 0);
	wb_free(&delta);
	wb_free(&sig);
	free(out);
	free(dx);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (basis == NULL)
		fuzz_init();
	as_delta(data, size);
	as_signature(data, size);
	if (size >= 1 && size <= DATA_MAX)
		as_content(data, size);
	return 0;
}
