/*
 * test_util.c — the parsers and formatters of util.c: exact results for
 * good input, RD_ERR_* for junk, overflow and empty strings.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "err.h"
#include "util.h"

struct num_case {
	const char	*s;
	int		 r;
	uint64_t	 v;
};

static void
check_num(const struct num_case *c, size_t n, int (*fn)(const char *,
    uint64_t *), const char *what)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t v = 0xdeadbeef;
		int r = fn(c[i].s, &v);

		if (r != c[i].r)
			fail_msg("%s(\"%s\") returned %d, expected %d", what,
			    c[i].s, r, c[i].r);
		if (r == 0 && v != c[i].v)
			fail_msg("%s(\"%s\") = %llu, expected %llu", what,
			    c[i].s, (unsigned long long)v,
			    (unsigned long long)c[i].v);
		if (r != 0 && v != 0xdeadbeef)
			fail_msg("%s(\"%s\") wrote a result on error", what,
			    c[i].s);
	}
}

static void
test_parse_size(void **state)
{
	static const struct num_case c[] = {
		{ "0", 0, 0 },
		{ "4096", 0, 4096 },
		{ "512B", 0, 512 },
		{ "4K", 0, 4096 },
		{ "4k", 0, 4096 },
		{ "64K", 0, 65536 },
		{ "1KiB", 0, 1024 },
		{ "1M", 0, 1048576 },
		{ "2MiB", 0, 2097152 },
		{ "4G", 0, 4ULL << 30 },
		{ "1GiB", 0, 1ULL << 30 },
		{ "1T", 0, 1ULL << 40 },
		{ "3TiB", 0, 3ULL << 40 },
		{ "007K", 0, 7168 },
		{ "18446744073709551615", 0, UINT64_MAX },
		{ "16777215T", 0, 16777215ULL << 40 },
		{ "18446744073709551616", RD_ERR_RANGE, 0 },
		{ "99999999999999999999999", RD_ERR_RANGE, 0 },
		{ "16777216T", RD_ERR_RANGE, 0 },
		{ "17179869184G", RD_ERR_RANGE, 0 },
		{ "", RD_ERR_INVALID, 0 },
		{ "K", RD_ERR_INVALID, 0 },
		{ "4X", RD_ERR_INVALID, 0 },
		{ "4KB", RD_ERR_INVALID, 0 },
		{ "4m", RD_ERR_INVALID, 0 },
		{ "4 K", RD_ERR_INVALID, 0 },
		{ " 4K", RD_ERR_INVALID, 0 },
		{ "4K ", RD_ERR_INVALID, 0 },
		{ "-1", RD_ERR_INVALID, 0 },
		{ "+1", RD_ERR_INVALID, 0 },
		{ "0x10", RD_ERR_INVALID, 0 },
		{ "1.5M", RD_ERR_INVALID, 0 },
		{ "4KK", RD_ERR_INVALID, 0 },
	};
	check_num(c, sizeof(c) / sizeof(c[0]), util_parse_size,
	    "util_parse_size");
}

static void
test_parse_duration(void **state)
{
	static const struct num_case c[] = {
		{ "0", 0, 0 },
		{ "0s", 0, 0 },
		{ "30", 0, 30000 },
		{ "30s", 0, 30000 },
		{ "250ms", 0, 250 },
		{ "5m", 0, 300000 },
		{ "1h", 0, 3600000 },
		{ "2d", 0, 172800000 },
		{ "18446744073709551615ms", 0, UINT64_MAX },
		{ "213503982334d", 0, 213503982334ULL * 86400000 },
		{ "213503982335d", RD_ERR_RANGE, 0 },
		{ "18446744073709552", RD_ERR_RANGE, 0 },
		{ "18446744073709551616ms", RD_ERR_RANGE, 0 },
		{ "", RD_ERR_INVALID, 0 },
		{ "s", RD_ERR_INVALID, 0 },
		{ "soon", RD_ERR_INVALID, 0 },
		{ "5M", RD_ERR_INVALID, 0 },
		{ "5 m", RD_ERR_INVALID, 0 },
		{ "5m ", RD_ERR_INVALID, 0 },
		{ "-5s", RD_ERR_INVALID, 0 },
		{ "1.5h", RD_ERR_INVALID, 0 },
		{ "5mss", RD_ERR_INVALID, 0 },
		{ "1w", RD_ERR_INVALID, 0 },
		{ "1min", RD_ERR_INVALID, 0 },
	};
	check_num(c, sizeof(c) / sizeof(c[0]), util_parse_duration_ms,
	    "util_parse_duration_ms");
}

static void
test_parse_hostport(void **state)
{
	static const struct {
		const char	*s;
		const char	*host;	/* NULL: must fail */
		uint16_t	 port;
	} c[] = {
		{ "backup.example.com:7000", "backup.example.com", 7000 },
		{ "10.0.0.1:1", "10.0.0.1", 1 },
		{ "h:65535", "h", 65535 },
		{ "my_host-1:22", "my_host-1", 22 },
		{ "[::1]:7000", "::1", 7000 },
		{ "[fe80::1:2]:443", "fe80::1:2", 443 },
		{ "[host]:80", "host", 80 },
		{ "h:007", "h", 7 },
		{ "", NULL, 0 },
		{ "host", NULL, 0 },
		{ "host:", NULL, 0 },
		{ ":7000", NULL, 0 },
		{ "host:0", NULL, 0 },
		{ "host:65536", NULL, 0 },
		{ "host:99999999999999999999999", NULL, 0 },
		{ "host:70x", NULL, 0 },
		{ "host:+70", NULL, 0 },
		{ "host:-70", NULL, 0 },
		{ "host: 70", NULL, 0 },
		{ "ho st:1", NULL, 0 },
		{ "a/b:1", NULL, 0 },
		{ "::1:7000", NULL, 0 },
		{ "[::1]", NULL, 0 },
		{ "[::1]7000", NULL, 0 },
		{ "[::1]:", NULL, 0 },
		{ "[]:7000", NULL, 0 },
		{ "[::1:7000", NULL, 0 },
		{ "[fe80::1%eth0]:7000", NULL, 0 },
		{ "host]:1", NULL, 0 },
	};

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		char host[HOST_MAX_LEN + 1] = "unchanged";
		uint16_t port = 12345;
		int r = util_parse_hostport(c[i].s, host, sizeof(host), &port);

		if (c[i].host == NULL) {
			if (r != RD_ERR_INVALID)
				fail_msg("\"%s\": returned %d, expected "
				    "RD_ERR_INVALID", c[i].s, r);
			assert_string_equal(host, "unchanged");
			assert_int_equal(port, 12345);
			continue;
		}
		if (r != 0)
			fail_msg("\"%s\": returned %d", c[i].s, r);
		assert_string_equal(host, c[i].host);
		assert_int_equal(port, c[i].port);
	}
}

static void
test_parse_hostport_length(void **state)
{
	char s[HOST_MAX_LEN + 16], host[HOST_MAX_LEN + 16];
	uint16_t port;

	memset(s, 'a', HOST_MAX_LEN);
	strcpy(s + HOST_MAX_LEN, ":1");
	assert_int_equal(util_parse_hostport(s, host, sizeof(host), &port), 0);
	assert_int_equal(strlen(host), HOST_MAX_LEN);

	memset(s, 'a', HOST_MAX_LEN + 1);
	strcpy(s + HOST_MAX_LEN + 1, ":1");
	assert_int_equal(util_parse_hostport(s, host, sizeof(host), &port),
	    RD_ERR_INVALID);

	/* The host must fit in the caller's buffer with its NUL. */
	char small[4];
	assert_int_equal(util_parse_hostport("abc:1", small, sizeof(small),
	    &port), 0);
	assert_string_equal(small, "abc");
	assert_int_equal(util_parse_hostport("abcd:1", small, sizeof(small),
	    &port), RD_ERR_INVALID);
	assert_int_equal(util_parse_hostport("[abcd]:1", small, sizeof(small),
	    &port), RD_ERR_INVALID);
}

#define NAME64 \
	"1234567890123456789012345678901234567890123456789012345678901234"

static void
test_name_valid(void **state)
{
	static const char *const good[] = { "web01", "a", "A_b.c+d-e",
	    "vm.qcow2", "a..b", "x-", "0", "test", NAME64 };
	static const char *const bad[] = { "", ".", "..", ".hidden", "-x",
	    "a/b", "/", "../x", "a b", "a\tb", "a\nb", "caf\xc3\xa9",
	    "a*", "a:b", "a\\b", NAME64 "5" };

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (util_name_valid(good[i]) != 0)
			fail_msg("\"%s\" should be a valid name", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (util_name_valid(bad[i]) != RD_ERR_NAME)
			fail_msg("\"%s\" should be an invalid name", bad[i]);
	}
	assert_int_equal(strlen(good[8]), NAME_MAX_LEN);
	assert_int_equal(strlen(bad[15]), NAME_MAX_LEN + 1);
}

static void
test_disk_name_valid(void **state)
{
	assert_int_equal(util_disk_name_valid("vda"), 0);
	assert_int_equal(util_disk_name_valid("web01.qcow2"), 0);
	assert_int_equal(util_disk_name_valid("test2"), 0);
	assert_int_equal(util_disk_name_valid("Test"), 0);
	assert_int_equal(util_disk_name_valid("test.img"), 0);
	assert_int_equal(util_disk_name_valid("test"), RD_ERR_NAME);
	assert_int_equal(util_disk_name_valid(""), RD_ERR_NAME);
	assert_int_equal(util_disk_name_valid(".."), RD_ERR_NAME);
	assert_int_equal(util_disk_name_valid("a/b"), RD_ERR_NAME);
	assert_int_equal(util_disk_name_valid(".vda"), RD_ERR_NAME);
}

static void
test_is_zero(void **state)
{
	uint8_t buf[100];

	memset(buf, 0, sizeof(buf));
	assert_int_equal(util_is_zero(buf, 0), 1);
	for (size_t len = 1; len <= sizeof(buf); len++) {
		assert_int_equal(util_is_zero(buf, len), 1);
		for (size_t i = 0; i < len; i++) {
			buf[i] = 0x01;
			if (util_is_zero(buf, len) != 0)
				fail_msg("len %zu, byte %zu set: said zero",
				    len, i);
			buf[i] = 0x80;
			if (util_is_zero(buf, len) != 0)
				fail_msg("len %zu, byte %zu = 0x80: said zero",
				    len, i);
			buf[i] = 0;
		}
		/* A byte past len does not count. */
		if (len < sizeof(buf)) {
			buf[len] = 0xff;
			assert_int_equal(util_is_zero(buf, len), 1);
			buf[len] = 0;
		}
	}
	/* All bytes equal but not zero. */
	memset(buf, 0x5a, sizeof(buf));
	assert_int_equal(util_is_zero(buf, sizeof(buf)), 0);
}

static void
test_format_bytes(void **state)
{
	static const struct {
		uint64_t	 b;
		const char	*s;
	} c[] = {
		{ 0, "0 B" },
		{ 1, "1 B" },
		{ 1023, "1023 B" },
		{ 1024, "1.0 KiB" },
		{ 1536, "1.5 KiB" },
		{ 1048575, "1.0 MiB" },
		{ 1048576, "1.0 MiB" },
		{ 1048576 * 1023 + 1048576 / 2, "1023.5 MiB" },
		{ 3ULL << 29, "1.5 GiB" },
		{ 5ULL << 40, "5.0 TiB" },
		{ 1ULL << 50, "1.0 PiB" },
		{ UINT64_MAX, "16384.0 PiB" },
	};
	char buf[32];

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		util_format_bytes(c[i].b, buf, sizeof(buf));
		if (strcmp(buf, c[i].s) != 0)
			fail_msg("%llu bytes: \"%s\", expected \"%s\"",
			    (unsigned long long)c[i].b, buf, c[i].s);
	}
	/* A short buffer is truncated and terminated. */
	util_format_bytes(1536, buf, 4);
	assert_string_equal(buf, "1.5");
}

static void
test_format_time(void **state)
{
	char buf[32];

	util_format_time(0, buf, sizeof(buf));
	assert_string_equal(buf, "1970-01-01T00:00:00Z");
	util_format_time(1795811460, buf, sizeof(buf));
	assert_string_equal(buf, "2026-11-27T20:31:00Z");
}

/* Holes read as zeros without a read; data as pread gives it; a range
 * past the end is TRUNCATED, like util_pread_full(). */
static void
test_pread_holes(void **state)
{
	char path[] = "/tmp/test_util_holes.XXXXXX";
	int fd = mkstemp(path);
	const size_t size = 3u << 20;
	uint8_t *want = calloc(1, size), *got = malloc(size);
	assert_true(fd >= 0 && want != NULL && got != NULL);
	unlink(path);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	/* Data at 64K..200K, at 1M+5 (odd), and in the last block. */
	const struct { size_t off, len; } runs[] = {
		{ 64u << 10, 136u << 10 }, { (1u << 20) + 5, 9000 },
		{ size - 4096, 4096 },
	};
	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		for (size_t k = 0; k < runs[i].len; k++)
			want[runs[i].off + k] = (uint8_t)(k * 7 + i + 1);
		assert_int_equal(util_pwrite_full(fd, want + runs[i].off,
		    runs[i].len, (off_t)runs[i].off), 0);
	}
	assert_int_equal(fsync(fd), 0);
	const struct { size_t off, len; } reads[] = {
		{ 0, size }, { 0, 64u << 10 }, { 60u << 10, 8u << 10 },
		{ 100u << 10, 1u << 20 }, { (1u << 20) + 4, 2 },
		{ size - 5000, 5000 }, { size - 1, 1 }, { 300u << 10, 4096 },
	};
	for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
		memset(got, 0xAA, size);
		assert_int_equal(util_pread_holes(fd, got, reads[i].len,
		    (off_t)reads[i].off), 0);
		assert_memory_equal(got, want + reads[i].off, reads[i].len);
	}
	assert_int_equal(util_pread_holes(fd, got, 8192, (off_t)size - 4096),
	    RD_ERR_TRUNCATED);
	assert_int_equal(util_pread_holes(fd, got, 1, (off_t)size),
	    RD_ERR_TRUNCATED);
	/* A file with no data at all. */
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(ftruncate(fd, 1 << 20), 0);
	memset(got, 0xAA, 1 << 20);
	assert_int_equal(util_pread_holes(fd, got, 1 << 20, 0), 0);
	assert_true(util_is_zero(got, 1 << 20));
	close(fd);
	free(want);
	free(got);
}

int
main(void)
{
	static const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_hostport),
		cmocka_unit_test(test_parse_hostport_length),
		cmocka_unit_test(test_name_valid),
		cmocka_unit_test(test_disk_name_valid),
		cmocka_unit_test(test_is_zero),
		cmocka_unit_test(test_format_bytes),
		cmocka_unit_test(test_format_time),
		cmocka_unit_test(test_pread_holes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
