/*
 * test_ctl.c — the control protocol codec: round trips, partial frames,
 * and the hostile requests and replies a decoder must refuse.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "ctl.h"
#include "err.h"

/* Start a hand-made frame: a u32 length to fill in by frame_end(). */
static size_t
frame_begin(struct wbuf *b)
{
	size_t off = b->len;
	wb_put_u32(b, 0);
	return off;
}

static void
frame_end(struct wbuf *b, size_t off)
{
	wb_set_u32(b, off, (uint32_t)(b->len - off - 4));
}

static void
put_raw_str(struct wbuf *b, const void *p, size_t n)
{
	wb_put_u16(b, (uint16_t)n);
	wb_put_bytes(b, p, n);
}

static int
decode_request(const struct wbuf *b, struct ctl_request *req, size_t *used)
{
	return ctl_get_request(b->p, b->len, req, used);
}

/* Encode argv, decode it back, and check every argument and the length. */
static void
round_trip(int argc, char **argv)
{
	struct wbuf b;
	struct ctl_request req;
	size_t used = 0;

	wb_init(&b);
	ctl_put_request(&b, argc, argv);
	assert_int_equal(decode_request(&b, &req, &used), 1);
	assert_int_equal(used, b.len);
	assert_int_equal(req.argc, argc);
	for (int i = 0; i < argc; i++)
		assert_string_equal(req.argv[i], argv[i]);
	assert_null(req.argv[argc]);
	ctl_request_free(&req);
	wb_free(&b);
}

static char *
filled(size_t n, char c)
{
	char *s = malloc(n + 1);
	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static void
test_request_argc1(void **state)
{
	char *argv[] = { "status", NULL };
	round_trip(1, argv);
}

static void
test_request_argc32(void **state)
{
	char *argv[CTL_MAX_ARGS + 1];
	char names[CTL_MAX_ARGS][16];

	for (int i = 0; i < CTL_MAX_ARGS; i++) {
		snprintf(names[i], sizeof(names[i]), "a%d", i);
		argv[i] = names[i];
	}
	argv[CTL_MAX_ARGS] = NULL;
	round_trip(CTL_MAX_ARGS, argv);
}

static void
test_request_max_arg(void **state)
{
	char *argv[] = { "verify", filled(CTL_MAX_ARG, 'x'), NULL };
	round_trip(2, argv);
	free(argv[1]);
}

/* 15 arguments of CTL_MAX_ARG bytes and one of 4062 make a frame body of
 * exactly CTL_MAX_REQUEST bytes: the largest valid request. */
static void
test_request_exactly_max(void **state)
{
	char *argv[17];
	struct wbuf b;
	struct ctl_request req;
	size_t used;

	for (int i = 0; i < 15; i++)
		argv[i] = filled(CTL_MAX_ARG, (char)('a' + i));
	argv[15] = filled(4062, 'z');
	argv[16] = NULL;
	round_trip(16, argv);

	wb_init(&b);
	ctl_put_request(&b, 16, argv);
	assert_int_equal(b.len, 4 + CTL_MAX_REQUEST);
	/* One byte more in the length header is too large. */
	wb_put_u8(&b, 'z');
	wb_set_u32(&b, 0, CTL_MAX_REQUEST + 1);
	assert_int_equal(decode_request(&b, &req, &used), RD_ERR_TOO_LARGE);
	ctl_request_free(&req);
	wb_free(&b);
	for (int i = 0; i < 16; i++)
		free(argv[i]);
}

static void
test_request_partial(void **state)
{
	char *argv[] = { "failover", "web01", "--test", "--point", "3", NULL };
	struct wbuf b;
	struct ctl_request req;
	size_t used = 12345;

	wb_init(&b);
	ctl_put_request(&b, 5, argv);
	for (size_t k = 0; k < b.len; k++) {
		/* A fresh copy of exactly k bytes so ASan sees any overread. */
		uint8_t *copy = malloc(k ? k : 1);
		assert_non_null(copy);
		memcpy(copy, b.p, k);
		assert_int_equal(ctl_get_request(copy, k, &req, &used), 0);
		assert_int_equal(req.argc, 0);
		ctl_request_free(&req);
		free(copy);
	}
	assert_int_equal(used, 12345);
	wb_free(&b);
}

static void
test_request_two_frames(void **state)
{
	char *a1[] = { "sync", "web01", "--wait", NULL };
	char *a2[] = { "pause", "db02", NULL };
	struct wbuf b;
	struct ctl_request req;
	size_t used, first;

	wb_init(&b);
	ctl_put_request(&b, 3, a1);
	first = b.len;
	ctl_put_request(&b, 2, a2);
	assert_int_equal(decode_request(&b, &req, &used), 1);
	assert_int_equal(used, first);
	assert_string_equal(req.argv[2], "--wait");
	ctl_request_free(&req);
	assert_int_equal(ctl_get_request(b.p + used, b.len - used, &req,
	    &used), 1);
	assert_int_equal(used, b.len - first);
	assert_string_equal(req.argv[1], "db02");
	ctl_request_free(&req);
	wb_free(&b);
}

/* A huge length is refused from its four bytes alone. */
static void
test_request_huge_len(void **state)
{
	const uint8_t huge[4] = { 0xff, 0xff, 0xff, 0xff };
	const uint8_t over[4] = { 0x00, 0x01, 0x00, 0x01 };	/* 65537 */
	struct ctl_request req;
	size_t used;

	assert_int_equal(ctl_get_request(huge, 4, &req, &used),
	    RD_ERR_TOO_LARGE);
	assert_int_equal(ctl_get_request(over, 4, &req, &used),
	    RD_ERR_TOO_LARGE);
	assert_int_equal(ctl_get_request(huge, 3, &req, &used), 0);
}

/* The hostile request bodies, each in a complete frame. */
enum hostile {
	H_VERSION,
	H_ARGC0,
	H_ARGC33,
	H_LONG_ARG,
	H_NUL_ARG,
	H_EMPTY_ARG,
	H_TRAILING,
	H_SHORT_ARGV,
	H_SHORT_STR,
	H_SHORT_LEN,
	H_NO_VERSION,
	H_NO_ARGC,
};

static void
build_hostile(struct wbuf *b, enum hostile h)
{
	size_t off = frame_begin(b);
	char *big;

	if (h == H_NO_VERSION)
		goto done;
	wb_put_u8(b, h == H_VERSION ? CTL_VERSION + 1 : CTL_VERSION);
	if (h == H_NO_ARGC)
		goto done;
	switch (h) {
	case H_ARGC0:
		wb_put_u8(b, 0);
		break;
	case H_ARGC33:
		wb_put_u8(b, CTL_MAX_ARGS + 1);
		for (int i = 0; i < CTL_MAX_ARGS + 1; i++)
			wb_put_str(b, "x");
		break;
	case H_LONG_ARG:
		wb_put_u8(b, 2);
		wb_put_str(b, "verify");
		big = filled(CTL_MAX_ARG + 1, 'y');
		wb_put_str(b, big);
		free(big);
		break;
	case H_NUL_ARG:
		wb_put_u8(b, 2);
		wb_put_str(b, "sync");	/* allocated before the bad one */
		put_raw_str(b, "web\0001", 6);
		break;
	case H_EMPTY_ARG:
		wb_put_u8(b, 2);
		wb_put_str(b, "status");
		put_raw_str(b, "", 0);
		break;
	case H_TRAILING:
		wb_put_u8(b, 1);
		wb_put_str(b, "status");
		wb_put_u8(b, 0);
		break;
	case H_SHORT_ARGV:	/* argc 3, two strings */
		wb_put_u8(b, 3);
		wb_put_str(b, "sync");
		wb_put_str(b, "web01");
		break;
	case H_SHORT_STR:	/* a string running past the frame */
		wb_put_u8(b, 1);
		wb_put_u16(b, 10);
		wb_put_bytes(b, "status", 6);
		break;
	case H_SHORT_LEN:	/* half a string length */
		wb_put_u8(b, 1);
		wb_put_u8(b, 0);
		break;
	default:
		wb_put_u8(b, 1);
		wb_put_str(b, "status");
		break;
	}
done:
	frame_end(b, off);
}

static void
check_hostile(enum hostile h, int want)
{
	struct wbuf b;
	struct ctl_request req;
	size_t used = 777;

	wb_init(&b);
	build_hostile(&b, h);
	assert_int_equal(decode_request(&b, &req, &used), want);
	assert_int_equal(used, 777);
	assert_int_equal(req.argc, 0);
	ctl_request_free(&req);
	/* Bytes after the frame do not change the verdict. */
	wb_put_bytes(&b, "\0\0\0\1\1", 5);
	assert_int_equal(decode_request(&b, &req, &used), want);
	ctl_request_free(&req);
	wb_free(&b);
}

static void
test_request_hostile(void **state)
{
	check_hostile(H_VERSION, RD_ERR_VERSION);
	check_hostile(H_ARGC0, RD_ERR_INVALID);
	check_hostile(H_ARGC33, RD_ERR_INVALID);
	check_hostile(H_LONG_ARG, RD_ERR_TOO_LARGE);
	check_hostile(H_NUL_ARG, RD_ERR_INVALID);
	check_hostile(H_EMPTY_ARG, RD_ERR_INVALID);
	check_hostile(H_TRAILING, RD_ERR_INVALID);
	check_hostile(H_SHORT_ARGV, RD_ERR_INVALID);
	check_hostile(H_SHORT_STR, RD_ERR_INVALID);
	check_hostile(H_SHORT_LEN, RD_ERR_INVALID);
	check_hostile(H_NO_VERSION, RD_ERR_INVALID);
	check_hostile(H_NO_ARGC, RD_ERR_INVALID);
}

static void
test_reply_round_trip(void **state)
{
	static const char *texts[] = { "web01 primary gen 1 idle\n",
	    "replctl: no such VM\n", "web01: 42% 1.2 GiB", "" };
	static const uint8_t types[] = { CTL_OUT, CTL_ERR, CTL_PROGRESS,
	    CTL_OUT };
	struct wbuf b;
	const uint8_t *text;
	size_t textlen, used, off = 0;
	uint8_t type;

	wb_init(&b);
	for (int i = 0; i < 4; i++)
		ctl_put_reply(&b, types[i], texts[i], strlen(texts[i]));
	ctl_put_exit(&b, CTL_EXIT_USAGE);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(ctl_get_reply(b.p + off, b.len - off, &type,
		    &text, &textlen, &used), 1);
		assert_int_equal(type, types[i]);
		assert_int_equal(textlen, strlen(texts[i]));
		assert_memory_equal(text, texts[i], textlen);
		assert_int_equal(used, 5 + textlen);
		off += used;
	}
	assert_int_equal(ctl_get_reply(b.p + off, b.len - off, &type, &text,
	    &textlen, &used), 1);
	assert_int_equal(type, CTL_EXIT);
	assert_int_equal(textlen, 1);
	assert_int_equal(text[0], CTL_EXIT_USAGE);
	assert_int_equal(off + used, b.len);
	wb_free(&b);
}

static void
test_reply_partial(void **state)
{
	struct wbuf b;
	const uint8_t *text;
	size_t textlen, used;
	uint8_t type;

	wb_init(&b);
	ctl_put_reply(&b, CTL_OUT, "point 7\n", 8);
	for (size_t k = 0; k < b.len; k++) {
		uint8_t *copy = malloc(k ? k : 1);
		assert_non_null(copy);
		memcpy(copy, b.p, k);
		assert_int_equal(ctl_get_reply(copy, k, &type, &text, &textlen,
		    &used), 0);
		free(copy);
	}
	wb_reset(&b);
	ctl_put_exit(&b, 0);
	for (size_t k = 0; k < b.len; k++)
		assert_int_equal(ctl_get_reply(b.p, k, &type, &text, &textlen,
		    &used), 0);
	wb_free(&b);
}

static int
decode_reply_bytes(const void *p, size_t n)
{
	const uint8_t *text;
	size_t textlen, used;
	uint8_t type;

	return ctl_get_reply(p, n, &type, &text, &textlen, &used);
}

static void
test_reply_hostile(void **state)
{
	/* Length 0. */
	assert_int_equal(decode_reply_bytes("\0\0\0\0", 4), RD_ERR_INVALID);
	/* Huge lengths, refused before the body. */
	assert_int_equal(decode_reply_bytes("\xff\xff\xff\xff", 4),
	    RD_ERR_TOO_LARGE);
	assert_int_equal(decode_reply_bytes("\x01\x00\x00\x01", 4),
	    RD_ERR_TOO_LARGE);
	/* Unknown types, with and without the body. */
	assert_int_equal(decode_reply_bytes("\0\0\0\1\0", 5), RD_ERR_INVALID);
	assert_int_equal(decode_reply_bytes("\0\0\0\3\5ab", 7),
	    RD_ERR_INVALID);
	assert_int_equal(decode_reply_bytes("\0\0\0\3\x7f", 5),
	    RD_ERR_INVALID);
	/* EXIT with a body of 0 or 2 bytes. */
	assert_int_equal(decode_reply_bytes("\0\0\0\1\4", 5), RD_ERR_INVALID);
	assert_int_equal(decode_reply_bytes("\0\0\0\3\4\0\0", 7),
	    RD_ERR_INVALID);
	assert_int_equal(decode_reply_bytes("\0\0\0\3\4", 5), RD_ERR_INVALID);
}

static void
test_reply_max(void **state)
{
	struct wbuf b;
	const uint8_t *text;
	size_t textlen, used;
	uint8_t type;
	char *big = filled(CTL_MAX_REPLY - 1, 'o');

	/* The largest frame decodes; the header alone says it is fine. */
	wb_init(&b);
	ctl_put_reply(&b, CTL_OUT, big, CTL_MAX_REPLY - 1);
	assert_int_equal(b.len, 4 + CTL_MAX_REPLY);
	assert_int_equal(ctl_get_reply(b.p, 5, &type, &text, &textlen, &used),
	    0);
	assert_int_equal(ctl_get_reply(b.p, b.len, &type, &text, &textlen,
	    &used), 1);
	assert_int_equal(textlen, CTL_MAX_REPLY - 1);
	wb_reset(&b);
	/* Longer text is split over two frames. */
	ctl_put_reply(&b, CTL_OUT, big, CTL_MAX_REPLY - 1);
	ctl_put_reply(&b, CTL_OUT, "tail", 4);
	size_t whole = b.len;
	wb_reset(&b);
	char *bigger = filled(CTL_MAX_REPLY + 3, 'o');
	memcpy(bigger + CTL_MAX_REPLY - 1, "tail", 4);
	ctl_put_reply(&b, CTL_OUT, bigger, CTL_MAX_REPLY + 3);
	assert_int_equal(b.len, whole);
	assert_int_equal(ctl_get_reply(b.p, b.len, &type, &text, &textlen,
	    &used), 1);
	assert_int_equal(ctl_get_reply(b.p + used, b.len - used, &type, &text,
	    &textlen, &used), 1);
	assert_int_equal(textlen, 4);
	assert_memory_equal(text, "tail", 4);
	free(bigger);
	free(big);
	wb_free(&b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_argc1),
		cmocka_unit_test(test_request_argc32),
		cmocka_unit_test(test_request_max_arg),
		cmocka_unit_test(test_request_exactly_max),
		cmocka_unit_test(test_request_partial),
		cmocka_unit_test(test_request_two_frames),
		cmocka_unit_test(test_request_huge_len),
		cmocka_unit_test(test_request_hostile),
		cmocka_unit_test(test_reply_round_trip),
		cmocka_unit_test(test_reply_partial),
		cmocka_unit_test(test_reply_hostile),
		cmocka_unit_test(test_reply_max),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
