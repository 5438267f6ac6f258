/*
 * fuzz_undo.c — libFuzzer harness for undo_apply(): the input is an undo
 * segment, written to a temporary file and applied with ndisks 2 onto two
 * small files of fixed content.
 *
 * Each input is applied twice: as it is, and with its last 16 bytes
 * replaced by the correct trailer checksum, so that the fuzzer also
 * reaches the record checks and the write pass behind the checksum
 * (format version 2 leaves the content of CLONE records out of the
 * checksum, under a digest of their own: the fix follows the records as
 * far as they parse and leaves that content out too).  Compressed (ZSTD) records are decompressed by both
 * passes; none may yield more than its declared length.
 *
 * Never a crash; when undo_apply() fails the two files are exactly as
 * they were (abort() otherwise); when it succeeds each file has the size
 * it reports.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "digest.h"
#include "err.h"
#include "undo.h"
#include "util.h"

#define SIZE0	3000
#define SIZE1	5000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir[64], fuzz_seg[96], fuzz_disk[2][96];
static uint8_t content[2][SIZE1];
static const size_t content_len[2] = { SIZE0, SIZE1 };

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

	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/fuzz_undo.XXXXXX",
	    tmp != NULL && *tmp != '\0' && strlen(tmp) < 32 ? tmp : "/tmp");
	if (mkdtemp(fuzz_dir) == NULL) {
		perror(fuzz_dir);
		die();
	}
	snprintf(fuzz_seg, sizeof(fuzz_seg), "%s/1.undo", fuzz_dir);
	for (int i = 0; i < 2; i++) {
		snprintf(fuzz_disk[i], sizeof(fuzz_disk[i]), "%s/disk%d",
		    fuzz_dir, i);
		for (size_t k = 0; k < content_len[i]; k++)
			content[i][k] = (uint8_t)(k * 7 + (size_t)i * 101 + 1);
	}
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

/* 1 if the file behind fd holds exactly content[i]. */
static int
unchanged(int fd, int i)
{
	uint8_t buf[SIZE1 + 1];
	struct stat sb;

	if (fstat(fd, &sb) != 0 || (size_t)sb.st_size != content_len[i])
		return 0;
	if (util_pread_full(fd, buf, content_len[i], 0) != 0)
		return 0;
	return memcmp(buf, content[i], content_len[i]) == 0;
}

static void
apply_one(const uint8_t *data, size_t size)
{
	uint64_t sizes[2] = { 0, 0 };
	int fds[2], r;

	put_file(fuzz_seg, data, size);
	for (int i = 0; i < 2; i++) {
		put_file(fuzz_disk[i], content[i], content_len[i]);
		fds[i] = open(fuzz_disk[i], O_RDWR | O_CLOEXEC);
		if (fds[i] < 0)
			die();
	}
	r = undo_apply(fuzz_seg, fds, 2, sizes);
	if (r > 0)
		die();
	for (int i = 0; i < 2; i++) {
		if (r != 0 && !unchanged(fds[i], i)) {
			fprintf(stderr, "undo_apply returned %d (%s) and "
			    "changed disk%d\n", r, rd_strerror(r), i);
			die();
		}
		if (r == 0) {
			struct stat sb;
			if (fstat(fds[i], &sb) != 0 ||
			    (uint64_t)sb.st_size != sizes[i])
				die();
		}
		close(fds[i]);
	}
}

static uint64_t
be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/*
 * The checksum of the first n bytes of a segment, without the content of
 * the CLONE records found by following the records (leniently: where they
 * stop parsing, the rest counts).
 */
static void
segment_sum(const uint8_t *p, size_t n, XXH128_canonical_t *c)
{
	XXH3_state_t *hs = XXH3_createState();
	size_t pos = 22, from = 0;

	if (hs == NULL)
		die();
	XXH3_128bits_reset(hs);
	if (n >= 22)
		pos += 8 * (size_t)be(p + 20, 2);
	while (n >= 22 && pos < n && p[pos] != 0xFF) {
		uint8_t type = p[pos];
		if (pos + 15 > n)
			break;
		uint64_t len = be(p + pos + 11, 4);
		pos += 15;
		if (type == 1) {
			pos += len;
		} else if (type == 3 || type == 4) {
			if (type == 4)
				pos += 16;	/* the content's digest */
			if (pos + 4 > n)
				break;
			uint64_t k = be(p + pos, 4);
			pos += 4 + k;
			if (type == 4 && pos <= n) {
				XXH3_128bits_update(hs, p + from, pos - from);
				from = pos + len < n ? pos + len : n;
				pos += len;
			}
		} else if (type != 2) {
			break;
		}
	}
	if (from < n)
		XXH3_128bits_update(hs, p + from, n - from);
	XXH128_canonicalFromHash(c, XXH3_128bits_digest(hs));
	XXH3_freeState(hs);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fuzz_dir[0] == '\0')
		fuzz_init();
	apply_one(data, size);

	/* The same bytes behind a correct checksum. */
	if (size >= DIGEST_LEN) {
		uint8_t *fixed = malloc(size);
		XXH128_canonical_t c;

		if (fixed == NULL)
			die();
		memcpy(fixed, data, size);
		segment_sum(fixed, size - DIGEST_LEN, &c);
		memcpy(fixed + size - DIGEST_LEN, c.digest, DIGEST_LEN);
		apply_one(fixed, size);
		free(fixed);
	}
	return 0;
}
