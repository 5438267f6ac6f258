/*
 * delta.c — chunk signatures, deltas and patches with librsync's
 * in-memory job API: each job is driven by one rs_job_iter() over the
 * whole input (eof_in set) and an output buffer of known size.
 *
 * Formats (librsync 2.x, integers big-endian):
 *
 *   signature of a chunk of len bytes
 *     4      magic RS_BLAKE2_SIG_MAGIC ("rs\x01\x37")
 *     4      block_len, DELTA_MIN_BLOCK..DELTA_MAX_BLOCK
 *     4      strong_len, DELTA_STRONG_LEN
 *     then for each of the ceil(len / block_len) blocks, the last one
 *     possibly short:
 *     4      rolling checksum (rsync's rollsum, bytes offset by 31)
 *     16     the first DELTA_STRONG_LEN bytes of its BLAKE2b-256
 *
 *   delta
 *     4      magic RS_DELTA_MAGIC ("rs\x02\x36")
 *     commands, each an opcode byte then unsigned arguments:
 *     0x00        END; nothing may follow
 *     0x01-0x40   LITERAL of 1-64 bytes, which follow
 *     0x41-0x44   LITERAL, its length in 1, 2, 4 or 8 bytes, then the bytes
 *     0x45-0x54   COPY from the basis: position, then length; with
 *                 k = op - 0x45 the position takes 1 << (k / 4) bytes and
 *                 the length 1 << (k % 4)
 *     0x55-0xff   reserved, refused
 *     Lengths are at least 1, copies lie inside the basis, and the
 *     commands produce exactly len bytes.
 *
 * Neither format is handed to librsync unchecked.  On hostile input
 * librsync 2.3.2 takes a signature cut inside a weak sum for a complete
 * one, reads strong_len 0 as "the largest", accepts other magics, reports
 * success at END whatever follows it, reports success for a delta that
 * produces fewer bytes than the chunk, and only blocks (no error) when a
 * copy runs past the end of the output; it also assert()s (compiled in
 * on Debian) and aborts when an allocation fails.  So both are checked
 * here against the chunk's length first, and librsync's own result is
 * still checked afterwards: all input consumed, output exactly full.
 *
 * A checked signature can still cost time.  librsync slides a window of
 * block_len bytes over the new data; where the window's rolling checksum
 * equals a block's it hashes the window and compares the strong sums:
 * equal, it copies the block and jumps past it; not equal (a false
 * match), it slides one byte.  A signature whose weak sums match the data
 * everywhere (zeros, a repeated pattern) and whose strong sums are made
 * up makes it hash a block at every byte: len * block_len bytes, seconds
 * per MiB.  budget_check() runs the same search first, without hashing
 * where it can, and refuses a signature past its bound; librsync then
 * runs in slices so that a shutdown can stop it.
 *
 * librsync's log settings are process-wide: they are set once here.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <librsync.h>

#include "buf.h"
#include "delta.h"
#include "err.h"
#include "log.h"
#include "xmalloc.h"

#define SIG_HDR_LEN	12
#define SIG_ENTRY_LEN	(4 + DELTA_STRONG_LEN)

/* Delta opcodes (librsync's command.h, not installed). */
#define OP_END		0x00
#define OP_LITERAL_64	0x40
#define OP_LITERAL_N1	0x41
#define OP_LITERAL_N8	0x44
#define OP_COPY_N1_N1	0x45
#define OP_COPY_N8_N8	0x54

/*
 * The most delta_make() will write for a chunk of len bytes.  librsync
 * stays far below (literals are cut at 64 KiB behind a 3-byte header,
 * copies cover whole blocks but near the end), but what a signature from
 * the network can make us allocate has to be bounded here, not by
 * librsync's internals.
 */
#define DELTA_OUT_MAX(len)	(2 * (len) + 4096)

struct basis {
	const uint8_t	*p;
	size_t		 len;
};

static pthread_once_t delta_once = PTHREAD_ONCE_INIT;

/*
 * Only librsync's last words before an abort() are worth a line: every
 * other failure is reported by the caller, with its context.
 */
static void
delta_trace(rs_loglevel level, const char *msg)
{
	log_error("%.*s", (int)strcspn(msg, "\n"), msg);
}

static void
delta_init(void)
{
	rs_trace_set_level(RS_LOG_CRIT);
	rs_trace_to(delta_trace);
}

/* librsync takes a char * for input it only reads. */
static void
set_input(rs_buffers_t *bufs, const uint8_t *p, size_t len)
{
	bufs->next_in = (char *)(uintptr_t)p;
	bufs->avail_in = len;
	bufs->eof_in = 1;
}

size_t
delta_sig_max(size_t len, uint32_t block_len)
{
	size_t nblocks;

	if (block_len < DELTA_MIN_BLOCK || block_len > DELTA_MAX_BLOCK)
		block_len = DELTA_MIN_BLOCK;
	nblocks = len / block_len + (len % block_len != 0);
	return SIG_HDR_LEN + nblocks * SIG_ENTRY_LEN;
}

int
delta_sign(const uint8_t *data, size_t len, uint32_t block_len,
    struct wbuf *out)
{
	rs_buffers_t bufs;
	rs_job_t *job;
	rs_result rr;
	size_t sig_len;

	if (len == 0 || len > DELTA_MAX_CHUNK ||
	    block_len < DELTA_MIN_BLOCK || block_len > DELTA_MAX_BLOCK)
		return RD_ERR_RANGE;
	pthread_once(&delta_once, delta_init);

	sig_len = delta_sig_max(len, block_len);
	set_input(&bufs, data, len);
	bufs.next_out = (char *)wb_reserve(out, sig_len);
	bufs.avail_out = sig_len;
	job = rs_sig_begin(block_len, DELTA_STRONG_LEN, RS_BLAKE2_SIG_MAGIC);
	rr = rs_job_iter(job, &bufs);
	rs_job_free(job);
	if (rr != RS_DONE || bufs.avail_in != 0 || bufs.avail_out != 0) {
		log_warnx("delta: librsync signature of %zu bytes failed "
		    "(%s, %zu bytes short)", len, rs_strerror(rr),
		    bufs.avail_out);
		return RD_ERR_INTERNAL;
	}
	out->len += sig_len;
	return 0;
}

/* The whole signature, against what delta_sign() makes for len bytes. */
static int
sig_check(const uint8_t *sig, size_t sig_len, size_t len)
{
	uint32_t magic, block_len, strong_len;
	struct rbuf rb;

	rb_init(&rb, sig, sig_len);
	if (rb_get_u32(&rb, &magic) != 0 || rb_get_u32(&rb, &block_len) != 0 ||
	    rb_get_u32(&rb, &strong_len) != 0)
		return RD_ERR_INVALID;
	if (magic != RS_BLAKE2_SIG_MAGIC || block_len < DELTA_MIN_BLOCK ||
	    block_len > DELTA_MAX_BLOCK || strong_len != DELTA_STRONG_LEN)
		return RD_ERR_INVALID;
	/* Also catches a signature cut inside a weak sum (see the top). */
	if (sig_len != delta_sig_max(len, block_len))
		return RD_ERR_INVALID;
	return 0;
}

/* --- the search, counted ----------------------------------------------- */

#define ROLL_OFFSET	31	/* rsync's rollsum adds it to every byte */

/* The rolling checksum of a window (librsync's RS_BLAKE2_SIG_MAGIC weak
 * sum): s1 the sum of the bytes, s2 the sum of the running s1, both
 * kept modulo 2^16 in the digest. */
struct roll {
	uint32_t	 s1, s2;
	size_t		 n;
};

static void
roll_init(struct roll *r, const uint8_t *p, size_t n)
{
	r->s1 = r->s2 = 0;
	r->n = n;
	for (size_t i = 0; i < n; i++) {
		r->s1 += p[i] + ROLL_OFFSET;
		r->s2 += r->s1;
	}
}

/* Slide by one byte: out leaves, in enters. */
static void
roll_rotate(struct roll *r, uint8_t out, uint8_t in)
{
	r->s1 += (uint32_t)in - out;
	r->s2 += r->s1 - (uint32_t)r->n * (out + ROLL_OFFSET);
}

/* Shrink by one byte at the front (the end of the data). */
static void
roll_rollout(struct roll *r, uint8_t out)
{
	r->s1 -= out + ROLL_OFFSET;
	r->s2 -= (uint32_t)r->n * (out + ROLL_OFFSET);
	r->n--;
}

static uint32_t
roll_digest(const struct roll *r)
{
	return (r->s2 << 16) | (r->s1 & 0xffff);
}

struct sig_entry {
	uint32_t	 weak;
	uint8_t		 strong[DELTA_STRONG_LEN];
};

/* The signature's blocks sorted by weak sum, and an open-addressing
 * table from a weak sum to its first entry. */
struct weak_index {
	struct sig_entry *ent;
	size_t		 n;
	uint32_t	*slot_weak;
	uint32_t	*slot_first;	/* entry index + 1; 0: empty */
	size_t		 mask;
};

static int
entry_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct sig_entry *)a)->weak;
	uint32_t y = ((const struct sig_entry *)b)->weak;
	return x < y ? -1 : x > y;
}

static size_t
weak_slot(const struct weak_index *wi, uint32_t weak)
{
	return (size_t)((weak * 0x9e3779b1u) >> 7) & wi->mask;
}

/* sig has passed sig_check(). */
static void
weak_index_build(struct weak_index *wi, const uint8_t *sig, size_t sig_len)
{
	size_t nslots = 16;

	wi->n = (sig_len - SIG_HDR_LEN) / SIG_ENTRY_LEN;
	wi->ent = xcalloc(wi->n, sizeof(*wi->ent));
	for (size_t i = 0; i < wi->n; i++) {
		const uint8_t *e = sig + SIG_HDR_LEN + i * SIG_ENTRY_LEN;
		wi->ent[i].weak = (uint32_t)e[0] << 24 | (uint32_t)e[1] << 16 |
		    (uint32_t)e[2] << 8 | e[3];
		memcpy(wi->ent[i].strong, e + 4, DELTA_STRONG_LEN);
	}
	qsort(wi->ent, wi->n, sizeof(*wi->ent), entry_cmp);
	while (nslots < 2 * wi->n)
		nslots *= 2;
	wi->mask = nslots - 1;
	wi->slot_weak = xcalloc(nslots, sizeof(*wi->slot_weak));
	wi->slot_first = xcalloc(nslots, sizeof(*wi->slot_first));
	for (size_t i = 0; i < wi->n; i++) {
		if (i > 0 && wi->ent[i].weak == wi->ent[i - 1].weak)
			continue;
		size_t k = weak_slot(wi, wi->ent[i].weak);
		while (wi->slot_first[k] != 0)
			k = (k + 1) & wi->mask;
		wi->slot_weak[k] = wi->ent[i].weak;
		wi->slot_first[k] = (uint32_t)i + 1;
	}
}

static void
weak_index_free(struct weak_index *wi)
{
	free(wi->ent);
	free(wi->slot_weak);
	free(wi->slot_first);
}

/* The first entry of weak in wi->ent, or -1. */
static long
weak_find(const struct weak_index *wi, uint32_t weak)
{
	for (size_t k = weak_slot(wi, weak); wi->slot_first[k] != 0;
	    k = (k + 1) & wi->mask)
		if (wi->slot_weak[k] == weak)
			return (long)wi->slot_first[k] - 1;
	return -1;
}

/* The strong sum librsync compares: a one-block signature's. */
static int
strong_sum(const uint8_t *p, size_t n, uint8_t strong[DELTA_STRONG_LEN])
{
	uint8_t one[SIG_HDR_LEN + SIG_ENTRY_LEN];
	rs_buffers_t bufs;
	rs_job_t *job;
	rs_result rr;

	set_input(&bufs, p, n);
	bufs.next_out = (char *)one;
	bufs.avail_out = sizeof(one);
	job = rs_sig_begin(n, DELTA_STRONG_LEN, RS_BLAKE2_SIG_MAGIC);
	rr = rs_job_iter(job, &bufs);
	rs_job_free(job);
	if (rr != RS_DONE || bufs.avail_out != 0)
		return RD_ERR_INTERNAL;
	memcpy(strong, one + SIG_HDR_LEN + 4, DELTA_STRONG_LEN);
	return 0;
}

/* Does the window data[p..p+n) match one of the entries from first on
 * with the same weak sum? */
static int
strong_match(const struct weak_index *wi, long first, const uint8_t *p,
    size_t n, int *match)
{
	uint8_t strong[DELTA_STRONG_LEN];
	int r;

	if ((r = strong_sum(p, n, strong)) != 0)
		return r;
	*match = 0;
	for (size_t i = (size_t)first; i < wi->n &&
	    wi->ent[i].weak == wi->ent[first].weak; i++)
		if (memcmp(wi->ent[i].strong, strong, DELTA_STRONG_LEN) == 0) {
			*match = 1;
			break;
		}
	return 0;
}

static int
is_cancelled(const struct delta_limits *lim)
{
	return lim->cancelled != NULL && lim->cancelled();
}

/*
 * Weak sum hits at every window position, matched or not: a bound on
 * the false matches that needs no hashing.  Stops counting past max.
 */
static uint64_t
weak_hits(const struct weak_index *wi, const uint8_t *data, size_t len,
    size_t block_len, uint64_t max)
{
	struct roll win;
	uint64_t hits = 0;

	roll_init(&win, data, len < block_len ? len : block_len);
	for (size_t p = 0; p < len && hits <= max; p++) {
		if (weak_find(wi, roll_digest(&win)) >= 0)
			hits++;
		if (p + block_len < len)
			roll_rotate(&win, data[p], data[p + block_len]);
		else
			roll_rollout(&win, data[p]);
	}
	return hits;
}

/*
 * librsync's search over data, counting its false matches: 0 if they stay
 * within lim->max_false, RD_ERR_BUDGET past it, RD_ERR_CANCELLED.
 */
static int
budget_check(const uint8_t *sig, size_t sig_len, const uint8_t *data,
    size_t len, const struct delta_limits *lim)
{
	struct weak_index wi;
	struct roll win;
	uint64_t nfalse = 0;
	size_t block_len, p = 0, next_poll = DELTA_SLICE;
	int r = 0, match;

	block_len = (size_t)sig[4] << 24 | (size_t)sig[5] << 16 |
	    (size_t)sig[6] << 8 | sig[7];
	weak_index_build(&wi, sig, sig_len);
	/* Few weak hits anywhere: few false matches (the usual case). */
	if (weak_hits(&wi, data, len, block_len, lim->max_false) <=
	    lim->max_false)
		goto out;
	roll_init(&win, data, len < block_len ? len : block_len);
	while (p < len) {
		long first = weak_find(&wi, roll_digest(&win));
		if (first >= 0) {
			if ((r = strong_match(&wi, first, data + p, win.n,
			    &match)) != 0)
				goto out;
			if (match) {
				p += win.n;
				roll_init(&win, data + p, len - p < block_len ?
				    len - p : block_len);
				continue;
			}
			if (++nfalse > lim->max_false) {
				r = RD_ERR_BUDGET;
				goto out;
			}
		}
		if (p + block_len < len)
			roll_rotate(&win, data[p], data[p + block_len]);
		else
			roll_rollout(&win, data[p]);
		if (++p >= next_poll) {
			next_poll += DELTA_SLICE;
			if (is_cancelled(lim)) {
				r = RD_ERR_CANCELLED;
				goto out;
			}
		}
	}
out:
	weak_index_free(&wi);
	return r;
}

int
delta_make(const uint8_t *sig, size_t sig_len, const uint8_t *data,
    size_t len, struct wbuf *out)
{
	return delta_make_bounded(sig, sig_len, data, len, NULL, out);
}

int
delta_make_bounded(const uint8_t *sig, size_t sig_len, const uint8_t *data,
    size_t len, const struct delta_limits *lim, struct wbuf *out)
{
	static const struct delta_limits none;
	rs_signature_t *sums = NULL;
	rs_job_t *job;
	rs_buffers_t bufs;
	rs_result rr;
	size_t start = out->len, room, used = 0, fed;
	int r;

	if (len == 0 || len > DELTA_MAX_CHUNK)
		return RD_ERR_RANGE;
	if ((r = sig_check(sig, sig_len, len)) != 0)
		return r;
	pthread_once(&delta_once, delta_init);
	if (lim == NULL)
		lim = &none;
	if (lim->max_false > 0 &&
	    (r = budget_check(sig, sig_len, data, len, lim)) != 0)
		return r;

	job = rs_loadsig_begin(&sums);
	set_input(&bufs, sig, sig_len);
	bufs.next_out = NULL;
	bufs.avail_out = 0;
	rr = rs_job_iter(job, &bufs);
	rs_job_free(job);
	if (rr != RS_DONE || bufs.avail_in != 0) {
		log_warnx("delta: librsync refused a checked signature: %s",
		    rs_strerror(rr));
		r = RD_ERR_INTERNAL;
		goto out;
	}
	if ((rr = rs_build_hash_table(sums)) != RS_DONE) {
		log_warnx("delta: librsync signature index: %s",
		    rs_strerror(rr));
		r = RD_ERR_INTERNAL;
		goto out;
	}

	/*
	 * The input goes in a slice at a time, so that a shutdown stops even
	 * an unbounded search between slices.  The output: guess small (most
	 * chunks barely change) and double while librsync is blocked on it.
	 */
	job = rs_delta_begin(sums);
	bufs.next_in = (char *)(uintptr_t)data;
	bufs.avail_in = 0;
	bufs.eof_in = 0;
	fed = 0;
	room = len / 16 + 256;
	r = 0;
	for (;;) {
		if (is_cancelled(lim)) {
			r = RD_ERR_CANCELLED;
			break;
		}
		if (bufs.avail_in < DELTA_SLICE && fed < len) {
			size_t n = len - fed < DELTA_SLICE ? len - fed :
			    DELTA_SLICE;
			fed += n;
			bufs.avail_in += n;
			bufs.eof_in = fed == len;
		}
		bufs.next_out = (char *)wb_reserve(out, room);
		bufs.avail_out = room;
		rr = rs_job_iter(job, &bufs);
		out->len += room - bufs.avail_out;
		used = out->len - start;
		if (rr != RS_BLOCKED || used >= DELTA_OUT_MAX(len))
			break;
		if (bufs.avail_out != 0) {
			if (fed == len)
				break;		/* blocked with all it needs */
			continue;		/* wants more input */
		}
		room = used < DELTA_OUT_MAX(len) - used ? used :
		    DELTA_OUT_MAX(len) - used;
	}
	rs_job_free(job);
	if (r == 0 && (rr != RS_DONE || bufs.avail_in != 0)) {
		log_warnx("delta: librsync delta of %zu bytes failed after "
		    "%zu bytes: %s", len, used, rs_strerror(rr));
		r = RD_ERR_INTERNAL;
	}
out:
	rs_free_sumset(sums);
	if (r != 0)
		out->len = start;
	return r;
}

int
delta_literal(const uint8_t *data, size_t len, struct wbuf *out)
{
	size_t off, n;

	if (len == 0 || len > DELTA_MAX_CHUNK)
		return RD_ERR_RANGE;
	wb_put_u32(out, RS_DELTA_MAGIC);
	for (off = 0; off < len; off += n) {
		n = len - off < (64u << 10) ? len - off : (64u << 10);
		/* LITERAL with a 4-byte length (see the top) */
		wb_put_u8(out, OP_LITERAL_N1 + 2);
		wb_put_u32(out, (uint32_t)n);
		wb_put_bytes(out, data + off, n);
	}
	wb_put_u8(out, OP_END);
	return 0;
}

static int
get_uint(struct rbuf *rb, unsigned width, uint64_t *v)
{
	uint8_t v8;
	uint16_t v16;
	uint32_t v32;
	int r;

	switch (width) {
	case 1:
		if ((r = rb_get_u8(rb, &v8)) == 0)
			*v = v8;
		return r;
	case 2:
		if ((r = rb_get_u16(rb, &v16)) == 0)
			*v = v16;
		return r;
	case 4:
		if ((r = rb_get_u32(rb, &v32)) == 0)
			*v = v32;
		return r;
	default:
		return rb_get_u64(rb, v);
	}
}

/*
 * Walk every command of the delta without applying it: the same grammar
 * as librsync's patch job, with the bounds of a chunk of len bytes.
 */
static int
delta_check(const uint8_t *delta, size_t delta_len, size_t len)
{
	const uint8_t *lit;
	struct rbuf rb;
	uint64_t pos, n;
	uint32_t magic;
	size_t done = 0;
	unsigned k;
	uint8_t op;

	rb_init(&rb, delta, delta_len);
	if (rb_get_u32(&rb, &magic) != 0 || magic != RS_DELTA_MAGIC)
		return RD_ERR_INVALID;
	for (;;) {
		if (rb_get_u8(&rb, &op) != 0)
			return RD_ERR_INVALID;		/* truncated */
		if (op == OP_END)
			break;
		if (op <= OP_LITERAL_N8) {
			if (op <= OP_LITERAL_64)
				n = op;
			else if (get_uint(&rb, 1u << (op - OP_LITERAL_N1),
			    &n) != 0)
				return RD_ERR_INVALID;
			if (n == 0 || n > len - done ||
			    rb_get_ptr(&rb, &lit, (size_t)n) != 0)
				return RD_ERR_INVALID;
		} else if (op <= OP_COPY_N8_N8) {
			k = op - OP_COPY_N1_N1;
			if (get_uint(&rb, 1u << (k / 4), &pos) != 0 ||
			    get_uint(&rb, 1u << (k % 4), &n) != 0)
				return RD_ERR_INVALID;
			if (n == 0 || n > len - done || pos > len ||
			    n > len - pos)
				return RD_ERR_INVALID;
		} else
			return RD_ERR_INVALID;		/* reserved */
		done += (size_t)n;
	}
	if (done != len || rb_left(&rb) != 0)
		return RD_ERR_INVALID;
	return 0;
}

/* librsync's copy callback: never anything outside the basis. */
static rs_result
basis_copy(void *arg, rs_long_t pos, size_t *len, void **buf)
{
	const struct basis *b = arg;

	if (pos < 0 || (uintmax_t)pos > b->len || *len > b->len - (size_t)pos)
		return RS_IO_ERROR;
	memcpy(*buf, b->p + pos, *len);
	return RS_DONE;
}

int
delta_patch(const uint8_t *basis, const uint8_t *delta, size_t delta_len,
    uint8_t *out, size_t len)
{
	struct basis b = { basis, len };
	rs_buffers_t bufs;
	rs_job_t *job;
	rs_result rr;
	int r;

	if (len == 0 || len > DELTA_MAX_CHUNK)
		return RD_ERR_RANGE;
	if ((r = delta_check(delta, delta_len, len)) != 0)
		return r;
	pthread_once(&delta_once, delta_init);

	job = rs_patch_begin(basis_copy, &b);
	set_input(&bufs, delta, delta_len);
	bufs.next_out = (char *)out;
	bufs.avail_out = len;
	rr = rs_job_iter(job, &bufs);
	rs_job_free(job);
	/* Blocked with a full output: more to write than the chunk. */
	if (rr != RS_DONE || bufs.avail_in != 0 || bufs.avail_out != 0) {
		log_warnx("delta: librsync refused a checked delta: %s, "
		    "%zu of %zu bytes written", rs_strerror(rr),
		    len - bufs.avail_out, len);
		return RD_ERR_INTERNAL;
	}
	return 0;
}
