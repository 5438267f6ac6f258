/*
 * fuzz_stage.c — libFuzzer harness for the staging index decoder that
 * crash recovery runs on .staging/index (store_index_check(); the format
 * is documented at the top of src/store.c).
 *
 * Each input is decoded twice: as it is, and with its last 16 bytes
 * replaced by the correct trailer checksum, so that the fuzzer also
 * reaches the header and record checks behind the checksum.
 *
 * The harness parses the format again on its own, and aborts when the
 * two disagree: an index decodes if and only if its checksum, magic,
 * version, disk count and length are right and every record names a
 * disk of the cycle, a known kind, and a non-empty range inside that
 * disk's size; a decoded index reports the header's values.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "err.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HDR	(8 + 4 + 4 + 8 + 8 + 8 + 1 + 2)
#define REC	(2 + 8 + 4 + 1 + 8 + DIGEST_LEN)

static uint64_t
be(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/* The harness's own reading: 1 if the index is valid, with *c and *nrec. */
static int
valid(const uint8_t *p, size_t len, struct store_cycle *c, uint64_t *nrec)
{
	XXH128_canonical_t sum;
	size_t body, off;

	if (len < HDR + 16 + 8 + DIGEST_LEN)
		return 0;
	body = len - DIGEST_LEN;
	XXH128_canonicalFromHash(&sum, XXH3_128bits(p, body));
	if (memcmp(sum.digest, p + body, DIGEST_LEN) != 0 ||
	    memcmp(p, "RDSTAGE1", 8) != 0 || be(p + 8, 4) != 2)
		return 0;
	body -= 8;		/* the record count */
	*nrec = be(p + body, 8);
	memset(c, 0, sizeof(*c));
	c->cycle = be(p + 16, 8);
	c->created_ms = (int64_t)be(p + 24, 8);
	c->generation = be(p + 32, 8);
	c->kind = p[40];
	c->ndisks = (uint16_t)be(p + 41, 2);
	if (c->ndisks == 0 || c->ndisks > CAT_MAX_DISKS)
		return 0;
	off = HDR;
	if (body - off < 16 * (size_t)c->ndisks)
		return 0;
	for (uint16_t i = 0; i < c->ndisks; i++, off += 16)
		c->sizes[i] = be(p + off + 8, 8);
	if ((body - off) % REC != 0 || (body - off) / REC != *nrec)
		return 0;
	for (; off < body; off += REC) {
		uint64_t disk = be(p + off, 2), roff = be(p + off + 2, 8);
		uint64_t rlen = be(p + off + 10, 4);
		if (disk >= c->ndisks || p[off + 14] > 2 || rlen == 0 ||
		    roff > c->sizes[disk] || rlen > c->sizes[disk] - roff)
			return 0;
	}
	return 1;
}

static void
decode_one(const uint8_t *data, size_t size)
{
	struct store_cycle c, want;
	uint64_t nrec = 0, want_nrec = 0;
	int r, ok;

	memset(&c, 0, sizeof(c));
	r = store_index_check(data, size, &c, &nrec);
	ok = valid(data, size, &want, &want_nrec);
	if (r != 0 && r != RD_ERR_CORRUPT)
		abort();
	if ((r == 0) != ok)
		abort();
	if (ok && (nrec != want_nrec || c.cycle != want.cycle ||
	    c.created_ms != want.created_ms ||
	    c.generation != want.generation || c.kind != want.kind ||
	    c.ndisks != want.ndisks ||
	    memcmp(c.sizes, want.sizes, sizeof(c.sizes)) != 0))
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	decode_one(data, size);

	/* The same bytes behind a correct checksum. */
	if (size >= DIGEST_LEN) {
		uint8_t *fixed = malloc(size);
		XXH128_canonical_t c;

		if (fixed == NULL)
			abort();
		memcpy(fixed, data, size);
		XXH128_canonicalFromHash(&c, XXH3_128bits(fixed,
		    size - DIGEST_LEN));
		memcpy(fixed + size - DIGEST_LEN, c.digest, DIGEST_LEN);
		decode_one(fixed, size);
		free(fixed);
	}
	return 0;
}
