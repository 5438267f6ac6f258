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
 * librsync's log settings are process-wide: they are set once here.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <librsync.h>

#include "buf.h"
#include "delta.h"
#include "err.h"
#include "log.h"

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

int
delta_make(const uint8_t *sig, size_t sig_len, const uint8_t *data,
    size_t len, struct wbuf *out)
{
	rs_signature_t *sums = NULL;
	rs_job_t *job;
	rs_buffers_t bufs;
	rs_result rr;
	size_t start = out->len, room, used;
	int r;

	if (len == 0 || len > DELTA_MAX_CHUNK)
		return RD_ERR_RANGE;
	if ((r = sig_check(sig, sig_len, len)) != 0)
		return r;
	pthread_once(&delta_once, delta_init);

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
	 * Guess small (most chunks barely change) and double while librsync
	 * is blocked on a full output.
	 */
	job = rs_delta_begin(sums);
	set_input(&bufs, data, len);
	room = len / 16 + 256;
	for (;;) {
		bufs.next_out = (char *)wb_reserve(out, room);
		bufs.avail_out = room;
		rr = rs_job_iter(job, &bufs);
		out->len += room - bufs.avail_out;
		used = out->len - start;
		if (rr != RS_BLOCKED || bufs.avail_out != 0 ||
		    used >= DELTA_OUT_MAX(len))
			break;
		room = used < DELTA_OUT_MAX(len) - used ? used :
		    DELTA_OUT_MAX(len) - used;
	}
	rs_job_free(job);
	if (rr != RS_DONE || bufs.avail_in != 0) {
		log_warnx("delta: librsync delta of %zu bytes failed after "
		    "%zu bytes: %s", len, used, rs_strerror(rr));
		r = RD_ERR_INTERNAL;
		goto out;
	}
	r = 0;
out:
	rs_free_sumset(sums);
	if (r != 0)
		out->len = start;
	return r;
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
