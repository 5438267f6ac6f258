/*
 * fuzz_blockmap.c — libFuzzer harness for bm_load(), the scan tracker's
 * state file reader.  The input is a map file, written to a temporary
 * file (bm_load reads a path).
 *
 * Each input is loaded twice: as it is, and with its last 16 bytes
 * replaced by the correct trailer checksum, so that the fuzzer also
 * reaches the header checks behind the checksum.  A load either fails
 * with RD_ERR_CORRUPT or RD_ERR_VERSION and leaves the map untouched, or
 * succeeds with a map that keeps the format's promises; a loaded map
 * saved again loads to the same map, and to the same bytes when the
 * reserved header bytes were zero.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockmap.h"
#include "digest.h"
#include "err.h"
#include "util.h"

#define HDR	64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir[64], fuzz_in[96], fuzz_out[96];

static void
fuzz_cleanup(void)
{
	util_rm_rf(fuzz_dir);
}

/* A broken promise: report it as a crash, leaving no temporary files. */
static void __attribute__((noreturn))
die(void)
{
	fuzz_cleanup();
	abort();
}

static void
fuzz_init(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/fuzz_blockmap.XXXXXX",
	    tmp != NULL && *tmp != '\0' && strlen(tmp) < 32 ? tmp : "/tmp");
	if (mkdtemp(fuzz_dir) == NULL) {
		perror(fuzz_dir);
		die();
	}
	snprintf(fuzz_in, sizeof(fuzz_in), "%s/in.map", fuzz_dir);
	snprintf(fuzz_out, sizeof(fuzz_out), "%s/out.map", fuzz_dir);
	atexit(fuzz_cleanup);
}

static void
put_file(const char *path, const uint8_t *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	if (fd < 0 || util_write_full(fd, data, size) != 0) {
		perror(path);
		die();
	}
	close(fd);
}

static int
same_map(const struct blockmap *a, const struct blockmap *b)
{
	return a->block_size == b->block_size &&
	    a->disk_size == b->disk_size && a->cycle == b->cycle &&
	    a->nblocks == b->nblocks && (a->nblocks == 0 ||
	    memcmp(a->d, b->d, a->nblocks * sizeof(*a->d)) == 0);
}

static void
load_one(const uint8_t *data, size_t size)
{
	struct blockmap bm, again;
	uint8_t *saved = NULL;
	size_t saved_len = 0;
	int r;

	put_file(fuzz_in, data, size);
	memset(&bm, 0, sizeof(bm));
	r = bm_load(fuzz_in, &bm);
	if (r != 0) {
		if ((r != RD_ERR_CORRUPT && r != RD_ERR_VERSION) ||
		    bm.d != NULL || bm.nblocks != 0)
			die();
		return;
	}

	/* What a loaded map promises. */
	if (bm.block_size < 4096 || (bm.block_size & (bm.block_size - 1)) ||
	    bm.nblocks != bm_nblocks(bm.disk_size, bm.block_size) ||
	    size != HDR + bm.nblocks * DIGEST_LEN + DIGEST_LEN ||
	    (bm.nblocks > 0 && (bm.d == NULL || memcmp(bm.d, data + HDR,
	    bm.nblocks * DIGEST_LEN) != 0)))
		die();

	/* Saved again: loads to the same map; same bytes unless the input
	 * had something in the reserved bytes (the writer zeroes them). */
	if (bm_save(fuzz_out, &bm) != 0)
		die();
	memset(&again, 0, sizeof(again));
	if (bm_load(fuzz_out, &again) != 0 || !same_map(&bm, &again))
		die();
	if (util_read_file(fuzz_out, size + 1, &saved, &saved_len) != 0)
		die();
	int reserved_zero = 1;
	for (size_t i = 40; i < HDR; i++)
		if (data[i] != 0)
			reserved_zero = 0;
	if (reserved_zero && (saved_len != size ||
	    memcmp(saved, data, size) != 0))
		die();
	free(saved);
	bm_free(&again);
	bm_free(&bm);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fuzz_dir[0] == '\0')
		fuzz_init();
	load_one(data, size);

	/* The same bytes behind a correct checksum. */
	if (size >= DIGEST_LEN) {
		uint8_t *fixed = malloc(size);
		struct digest d;

		if (fixed == NULL)
			die();
		memcpy(fixed, data, size);
		digest_block(fixed, size - DIGEST_LEN, &d);
		memcpy(fixed + size - DIGEST_LEN, d.b, DIGEST_LEN);
		load_one(fixed, size);
		free(fixed);
	}
	return 0;
}
