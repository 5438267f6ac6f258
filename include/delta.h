/*
 * delta.h — rsync-style resynchronisation of one chunk with librsync.
 *
 * The side holding the old content of a chunk (the basis) signs it with
 * delta_sign(); the side holding the new content turns that signature
 * into a delta with delta_make(); the first side applies the delta with
 * delta_patch().  Basis and new content always have the same length, 1 to
 * DELTA_MAX_CHUNK bytes.  Signatures and deltas are librsync 2.x formats,
 * described at the top of delta.c; both come from the network, so both
 * are checked completely before librsync sees them.
 *
 * A delta is only as good as the signature it was made from: the result
 * of a patch should still be checked against a digest of the new content.
 *
 * Thread-safe; nothing is kept between calls.
 */
#ifndef REPLICAD_DELTA_H
#define REPLICAD_DELTA_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define DELTA_MAX_CHUNK		(4u << 20)	/* largest chunk */
#define DELTA_MIN_BLOCK		512
#define DELTA_MAX_BLOCK		(64u << 10)
#define DELTA_STRONG_LEN	16	/* bytes of BLAKE2 kept per block */

/*
 * Upper bound of a signature's size for a chunk of len bytes at block_len
 * (the exact size when block_len is within [DELTA_MIN_BLOCK,
 * DELTA_MAX_BLOCK]; a block_len outside counts as DELTA_MIN_BLOCK).
 */
size_t	delta_sig_max(size_t len, uint32_t block_len);

/*
 * Append to out the librsync signature (RS_BLAKE2_SIG_MAGIC, block_len,
 * DELTA_STRONG_LEN) of data[0..len): exactly delta_sig_max(len,
 * block_len) bytes.  RD_ERR_RANGE if len is 0 or above DELTA_MAX_CHUNK,
 * or block_len is out of range; nothing is appended on error.
 */
int	delta_sign(const uint8_t *data, size_t len, uint32_t block_len,
	    struct wbuf *out);

/*
 * Append to out the delta that turns the basis signed by sig into
 * data[0..len).  sig is untrusted: it must be exactly what delta_sign()
 * makes for a basis of len bytes (magic, a block_len within range,
 * strong_len DELTA_STRONG_LEN, one entry per block), RD_ERR_INVALID
 * otherwise.  RD_ERR_RANGE for a len of 0 or above DELTA_MAX_CHUNK.
 * Nothing is appended on error.  The delta takes at most 2 * len + 4096
 * bytes, but a well-formed signature with made-up sums can still cost
 * time: up to about len * block_len bytes hashed (seconds per MiB), where
 * an honest one costs milliseconds.
 */
int	delta_make(const uint8_t *sig, size_t sig_len, const uint8_t *data,
	    size_t len, struct wbuf *out);

/*
 * What delta_make_bounded() may spend on a signature from the network.
 *
 * max_false bounds the false matches: window positions of the new data
 * whose rolling checksum equals a block's in the signature but whose
 * strong sum does not, each costing a block hashed.  An honest signature
 * makes almost none; one whose weak sums were chosen to match and whose
 * strong sums were made up makes one at nearly every byte.  0: no bound.
 *
 * cancelled, if not NULL, is polled between slices of the work (at most
 * DELTA_SLICE window positions apart); once it returns non-zero the call
 * ends with RD_ERR_CANCELLED.
 */
struct delta_limits {
	uint64_t	 max_false;
	int		(*cancelled)(void);
};

#define DELTA_SLICE		(16u << 10)

/*
 * delta_make() within lim (NULL: none).  The bound is checked before
 * librsync searches, by the same search (the rolling checksum at every
 * window position, BLAKE2 only where it matches): RD_ERR_BUDGET when it
 * would make more than lim->max_false false matches, having hashed at
 * most that many blocks more than an honest signature costs.  The
 * result does not depend on the speed of the machine.  Nothing is
 * appended on error.
 */
int	delta_make_bounded(const uint8_t *sig, size_t sig_len,
	    const uint8_t *data, size_t len, const struct delta_limits *lim,
	    struct wbuf *out);

/*
 * Append a delta that carries data[0..len) whole, as literals: what
 * answers a signature that cannot be trusted (it needs none).
 * RD_ERR_RANGE for a len of 0 or above DELTA_MAX_CHUNK.
 */
int	delta_literal(const uint8_t *data, size_t len, struct wbuf *out);

/*
 * Apply delta (untrusted) to basis[0..len) and write the result, exactly
 * len bytes, to out, which must not overlap basis.  RD_ERR_INVALID if the
 * delta is malformed, copies from outside the basis, produces more or
 * fewer than len bytes, or has anything after its END command; out is
 * then untouched.  RD_ERR_RANGE for a len of 0 or above DELTA_MAX_CHUNK.
 * RD_ERR_INTERNAL if librsync disagreed with the checks (out may then
 * be partly written).
 */
int	delta_patch(const uint8_t *basis, const uint8_t *delta,
	    size_t delta_len, uint8_t *out, size_t len);

#endif
