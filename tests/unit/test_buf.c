/*
 * test_buf.c — bounds-checked getters and the growable put buffer.
 *
 * Read buffers are malloc'd to exactly their length so that ASan catches
 * a getter that reads one byte too far.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf.h"
#include "err.h"

static uint8_t *
dup_exact(const void *p, size_t len)
{
	uint8_t *q = malloc(len ? len : 1);

	assert_non_null(q);
	if (len > 0)
		memcpy(q, p, len);
	return q;
}

static void
test_get_big_endian(void **state)
{
	static const uint8_t src[] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
	    0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f };
	uint8_t *p = dup_exact(src, sizeof(src));
	struct rbuf rb;
	uint8_t v8;
	uint16_t v16;
	uint32_t v32;
	uint64_t v64;

	rb_init(&rb, p, sizeof(src));
	assert_int_equal(rb_left(&rb), 15);
	assert_int_equal(rb_get_u8(&rb, &v8), 0);
	assert_int_equal(v8, 0x01);
	assert_int_equal(rb_get_u16(&rb, &v16), 0);
	assert_int_equal(v16, 0x0203);
	assert_int_equal(rb_get_u32(&rb, &v32), 0);
	assert_int_equal(v32, 0x04050607);
	assert_int_equal(rb_get_u64(&rb, &v64), 0);
	assert_int_equal(v64, 0x08090a0b0c0d0e0fULL);
	assert_int_equal(rb_left(&rb), 0);
	assert_int_equal(rb.off, 15);
	free(p);
}

static void
test_get_high_bits(void **state)
{
	static const uint8_t src[] = { 0xff, 0xfe, 0x80, 0x00, 0x00, 0x01,
	    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe };
	uint8_t *p = dup_exact(src, sizeof(src));
	struct rbuf rb;
	uint16_t v16;
	uint32_t v32;
	uint64_t v64;

	rb_init(&rb, p, sizeof(src));
	assert_int_equal(rb_get_u16(&rb, &v16), 0);
	assert_int_equal(v16, 0xfffe);
	assert_int_equal(rb_get_u32(&rb, &v32), 0);
	assert_int_equal(v32, 0x80000001u);
	assert_int_equal(rb_get_u64(&rb, &v64), 0);
	assert_int_equal(v64, 0xfffffffffffffffeULL);
	free(p);
}

/* Each getter with one byte too few: refused, nothing consumed. */
static void
test_get_truncated(void **state)
{
	static const uint8_t src[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct rbuf rb;
	uint8_t v8 = 0x55, dst[8];
	uint16_t v16 = 0x5555;
	uint32_t v32 = 0x55555555;
	uint64_t v64 = 0x5555555555555555ULL;
	const uint8_t *ptr = NULL;
	uint8_t *p;

	p = dup_exact(src, 0);
	rb_init(&rb, p, 0);
	assert_int_equal(rb_get_u8(&rb, &v8), RD_ERR_TRUNCATED);
	assert_int_equal(v8, 0x55);
	assert_int_equal(rb_get_bytes(&rb, dst, 0), 0);
	assert_int_equal(rb_get_ptr(&rb, &ptr, 0), 0);
	assert_int_equal(rb.off, 0);
	free(p);

	p = dup_exact(src, 1);
	rb_init(&rb, p, 1);
	assert_int_equal(rb_get_u16(&rb, &v16), RD_ERR_TRUNCATED);
	assert_int_equal(v16, 0x5555);
	assert_int_equal(rb.off, 0);
	assert_int_equal(rb_get_u8(&rb, &v8), 0);
	assert_int_equal(v8, 1);
	assert_int_equal(rb_get_u8(&rb, &v8), RD_ERR_TRUNCATED);
	assert_int_equal(rb.off, 1);
	free(p);

	p = dup_exact(src, 3);
	rb_init(&rb, p, 3);
	assert_int_equal(rb_get_u32(&rb, &v32), RD_ERR_TRUNCATED);
	assert_int_equal(v32, 0x55555555);
	assert_int_equal(rb.off, 0);
	free(p);

	p = dup_exact(src, 7);
	rb_init(&rb, p, 7);
	assert_int_equal(rb_get_u64(&rb, &v64), RD_ERR_TRUNCATED);
	assert_int_equal(v64, 0x5555555555555555ULL);
	assert_int_equal(rb_get_bytes(&rb, dst, 8), RD_ERR_TRUNCATED);
	ptr = NULL;
	assert_int_equal(rb_get_ptr(&rb, &ptr, 8), RD_ERR_TRUNCATED);
	assert_null(ptr);
	assert_int_equal(rb.off, 0);
	/* Exactly what is left is fine, and leaves nothing. */
	assert_int_equal(rb_get_ptr(&rb, &ptr, 7), 0);
	assert_ptr_equal(ptr, p);
	assert_int_equal(rb_left(&rb), 0);
	free(p);

	/* A huge n must not wrap around the bounds check. */
	p = dup_exact(src, 8);
	rb_init(&rb, p, 8);
	assert_int_equal(rb_get_u8(&rb, &v8), 0);
	assert_int_equal(rb_get_ptr(&rb, &ptr, SIZE_MAX), RD_ERR_TRUNCATED);
	assert_int_equal(rb_get_ptr(&rb, &ptr, SIZE_MAX - 1),
	    RD_ERR_TRUNCATED);
	assert_int_equal(rb.off, 1);
	assert_int_equal(rb_get_bytes(&rb, dst, 7), 0);
	assert_memory_equal(dst, src + 1, 7);
	free(p);
}

static void
test_get_str(void **state)
{
	static const uint8_t ok[] = { 0, 5, 'h', 'e', 'l', 'l', 'o', 0xaa };
	static const uint8_t empty[] = { 0, 0 };
	struct rbuf rb;
	char dst[8];
	uint8_t *p, v8;

	p = dup_exact(ok, sizeof(ok));
	rb_init(&rb, p, sizeof(ok));
	assert_int_equal(rb_get_str(&rb, dst, sizeof(dst)), 0);
	assert_string_equal(dst, "hello");
	assert_int_equal(rb.off, 7);
	assert_int_equal(rb_get_u8(&rb, &v8), 0);
	assert_int_equal(v8, 0xaa);

	/* Exactly fits: 5 bytes and the NUL in 6. */
	rb_init(&rb, p, sizeof(ok));
	assert_int_equal(rb_get_str(&rb, dst, 6), 0);
	assert_string_equal(dst, "hello");

	/* One too few for the NUL: refused, not consumed, dst untouched. */
	memset(dst, 'Z', sizeof(dst));
	rb_init(&rb, p, sizeof(ok));
	assert_int_equal(rb_get_str(&rb, dst, 5), RD_ERR_TOO_LARGE);
	assert_int_equal(rb.off, 0);
	assert_int_equal(dst[0], 'Z');
	free(p);

	/* Truncated in the length and in the body: offset unchanged. */
	for (size_t cut = 0; cut < 7; cut++) {
		p = dup_exact(ok, cut);
		rb_init(&rb, p, cut);
		assert_int_equal(rb_get_str(&rb, dst, sizeof(dst)),
		    RD_ERR_TRUNCATED);
		assert_int_equal(rb.off, 0);
		free(p);
	}
	/* Also after earlier reads. */
	p = dup_exact(ok, 5);
	rb_init(&rb, p, 5);
	assert_int_equal(rb_get_u8(&rb, &v8), 0);
	assert_int_equal(rb_get_str(&rb, dst, sizeof(dst)),
	    RD_ERR_TRUNCATED);
	assert_int_equal(rb.off, 1);
	free(p);

	p = dup_exact(empty, sizeof(empty));
	rb_init(&rb, p, sizeof(empty));
	assert_int_equal(rb_get_str(&rb, dst, 1), 0);
	assert_string_equal(dst, "");
	assert_int_equal(rb_left(&rb), 0);
	free(p);
}

static void
test_get_str_nul(void **state)
{
	static const uint8_t mid[] = { 0, 3, 'a', 0, 'b' };
	static const uint8_t last[] = { 0, 3, 'a', 'b', 0 };
	static const uint8_t first[] = { 0, 1, 0 };
	const uint8_t *srcs[] = { mid, last, first };
	size_t lens[] = { sizeof(mid), sizeof(last), sizeof(first) };
	struct rbuf rb;
	char dst[16];

	for (size_t i = 0; i < 3; i++) {
		uint8_t *p = dup_exact(srcs[i], lens[i]);

		rb_init(&rb, p, lens[i]);
		assert_int_equal(rb_get_str(&rb, dst, sizeof(dst)),
		    RD_ERR_INVALID);
		assert_int_equal(rb.off, 0);
		free(p);
	}
}

/* A 65535-byte string: the longest the wire can carry. */
static void
test_get_str_longest(void **state)
{
	struct wbuf b;
	struct rbuf rb;
	char *s = malloc(65536), *dst = malloc(65536);

	assert_non_null(s);
	assert_non_null(dst);
	memset(s, 'q', 65535);
	s[65535] = '\0';
	wb_init(&b);
	wb_put_str(&b, s);
	assert_int_equal(b.len, 2 + 65535);
	assert_int_equal(b.p[0], 0xff);
	assert_int_equal(b.p[1], 0xff);
	rb_init(&rb, b.p, b.len);
	assert_int_equal(rb_get_str(&rb, dst, 65535), RD_ERR_TOO_LARGE);
	assert_int_equal(rb_get_str(&rb, dst, 65536), 0);
	assert_string_equal(dst, s);
	wb_free(&b);
	free(s);
	free(dst);
}

static void
test_put_layout(void **state)
{
	static const uint8_t want[] = { 0xab, 0x12, 0x34, 0xde, 0xad, 0xbe,
	    0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0x03,
	    'v', 'd', 'a', 0x00, 0x00, 'x', 'y' };
	struct wbuf b;

	wb_init(&b);
	assert_null(b.p);
	assert_int_equal(b.len, 0);
	wb_put_bytes(&b, "ignored", 0);
	assert_int_equal(b.len, 0);
	wb_put_u8(&b, 0xab);
	wb_put_u16(&b, 0x1234);
	wb_put_u32(&b, 0xdeadbeef);
	wb_put_u64(&b, 0x0123456789abcdefULL);
	wb_put_str(&b, "vda");
	wb_put_str(&b, "");
	wb_put_bytes(&b, "xy", 2);
	assert_int_equal(b.len, sizeof(want));
	assert_memory_equal(b.p, want, sizeof(want));
	wb_free(&b);
	assert_null(b.p);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
}

static void
test_put_growth(void **state)
{
	struct wbuf b;
	uint8_t *r;

	wb_init(&b);
	for (uint32_t i = 0; i < 100000; i++)
		wb_put_u32(&b, i);
	assert_int_equal(b.len, 400000);
	assert_true(b.cap >= b.len);
	for (uint32_t i = 0; i < 100000; i += 997) {
		const uint8_t *q = b.p + 4 * i;
		assert_int_equal((uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 |
		    (uint32_t)q[2] << 8 | q[3], i);
	}

	/* Reserve makes room without changing len; reset keeps memory. */
	r = wb_reserve(&b, 1 << 20);
	assert_ptr_equal(r, b.p + 400000);
	assert_int_equal(b.len, 400000);
	assert_true(b.cap >= 400000 + (1 << 20));
	memset(r, 0x77, 1 << 20);
	b.len += 1 << 20;
	assert_int_equal(b.p[b.len - 1], 0x77);
	wb_reset(&b);
	assert_int_equal(b.len, 0);
	assert_true(b.cap >= 400000 + (1 << 20));
	wb_put_u8(&b, 9);
	assert_int_equal(b.len, 1);
	assert_int_equal(b.p[0], 9);
	wb_free(&b);

	/* One large put into an empty buffer. */
	wb_init(&b);
	r = malloc(3 << 20);
	assert_non_null(r);
	memset(r, 0x3c, 3 << 20);
	wb_put_bytes(&b, r, 3 << 20);
	assert_int_equal(b.len, 3 << 20);
	assert_memory_equal(b.p, r, 3 << 20);
	free(r);
	wb_free(&b);
}

static void
test_set_u32(void **state)
{
	static const uint8_t want[] = { 0x00, 0x00, 0x00, 0x09, 0x01,
	    0xca, 0xfe, 0xba, 0xbe };
	struct wbuf b;

	wb_init(&b);
	wb_put_u32(&b, 0);
	wb_put_u8(&b, 1);
	wb_put_u32(&b, 0);
	wb_set_u32(&b, 0, 9);
	wb_set_u32(&b, 5, 0xcafebabe);	/* the last four bytes */
	assert_int_equal(b.len, sizeof(want));
	assert_memory_equal(b.p, want, sizeof(want));
	wb_free(&b);
}

/* Writing past the end is a caller bug: the process exits. */
static void
test_set_u32_past_end(void **state)
{
	pid_t pid;
	int status;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct wbuf b;

		close(STDERR_FILENO);
		wb_init(&b);
		wb_put_u32(&b, 0);
		wb_put_u8(&b, 1);
		wb_set_u32(&b, 2, 7);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 1);
}

/* A buffer of the caller's (wb_attach): written in place up to its size,
 * then moved to memory of the wbuf's own with everything written so far;
 * wb_free() never frees the caller's memory. */
static void
test_attach(void **state)
{
	static uint8_t mem[16];
	struct wbuf b;

	memset(mem, 0xee, sizeof(mem));
	wb_attach(&b, mem, sizeof(mem));
	wb_put_u32(&b, 0x01020304);
	wb_put_u64(&b, 0x05060708090a0b0cULL);
	assert_ptr_equal(b.p, mem);
	assert_int_equal(b.len, 12);
	assert_int_equal(mem[0], 0x01);
	assert_int_equal(mem[11], 0x0c);
	wb_put_u64(&b, 0x0d0e0f1011121314ULL);	/* 20 > 16 */
	assert_ptr_not_equal(b.p, mem);
	assert_false(b.foreign);
	assert_int_equal(b.len, 20);
	assert_int_equal(b.p[0], 0x01);
	assert_int_equal(b.p[11], 0x0c);
	assert_int_equal(b.p[19], 0x14);
	assert_int_equal(mem[12], 0xee);	/* nothing past its end */
	wb_free(&b);				/* frees the heap copy */

	wb_attach(&b, mem, sizeof(mem));
	wb_put_u8(&b, 7);
	wb_free(&b);				/* not mem: static */
	assert_null(b.p);
	assert_int_equal(mem[0], 7);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_get_big_endian),
		cmocka_unit_test(test_get_high_bits),
		cmocka_unit_test(test_get_truncated),
		cmocka_unit_test(test_get_str),
		cmocka_unit_test(test_get_str_nul),
		cmocka_unit_test(test_get_str_longest),
		cmocka_unit_test(test_put_layout),
		cmocka_unit_test(test_put_growth),
		cmocka_unit_test(test_attach),
		cmocka_unit_test(test_set_u32),
		cmocka_unit_test(test_set_u32_past_end),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
