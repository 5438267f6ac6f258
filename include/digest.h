/*
 * digest.h — the one content hash of replicad: XXH3-128 of a block, kept
 * as 16 big-endian bytes (xxhash's canonical form).  The primary's tracker
 * state, the wire's DATA frames and the replica's digest files all hold it.
 */
#ifndef REPLICAD_DIGEST_H
#define REPLICAD_DIGEST_H

#include <stddef.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY	/* XXH3_state_t on the stack */
#include <xxhash.h>

#define DIGEST_LEN 16

struct digest {
	unsigned char b[DIGEST_LEN];
};

static inline void
digest_block(const void *p, size_t len, struct digest *out)
{
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits(p, len));
	memcpy(out->b, c.digest, DIGEST_LEN);
}

static inline int
digest_equal(const struct digest *a, const struct digest *b)
{
	return memcmp(a->b, b->b, DIGEST_LEN) == 0;
}

/* The digest of each block of p[0..len) at block size bs (the last one
 * may be short) into out[0..ceil(len / bs)). */
static inline void
digest_blocks(const void *p, size_t len, size_t bs, struct digest *out)
{
	for (size_t o = 0, i = 0; o < len; o += bs, i++)
		digest_block((const char *)p + o, len - o < bs ? len - o : bs,
		    &out[i]);
}

/* A chunk's digest in a resync: the digest of its blocks' digests, so that
 * each side hashes the data once (wire.h, SUMS). */
static inline void
digest_chunk(const struct digest *blocks, size_t n, struct digest *out)
{
	digest_block(blocks, n * sizeof(*blocks), out);
}

/* Lower-case hex into buf (at least 33 bytes). */
static inline void
digest_hex(const struct digest *d, char *buf)
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < DIGEST_LEN; i++) {
		buf[2 * i] = hex[d->b[i] >> 4];
		buf[2 * i + 1] = hex[d->b[i] & 15];
	}
	buf[2 * DIGEST_LEN] = '\0';
}

#endif
