/*
 * buf.c — bounds-checked big-endian getters and a growable put buffer.
 */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "err.h"
#include "log.h"
#include "xmalloc.h"

void
rb_init(struct rbuf *b, const void *p, size_t len)
{
	b->p = p;
	b->len = len;
	b->off = 0;
}

size_t
rb_left(const struct rbuf *b)
{
	return b->len - b->off;
}

int
rb_get_ptr(struct rbuf *b, const uint8_t **p, size_t n)
{
	if (rb_left(b) < n)
		return RD_ERR_TRUNCATED;
	*p = b->p + b->off;
	b->off += n;
	return 0;
}

int
rb_get_bytes(struct rbuf *b, void *dst, size_t n)
{
	const uint8_t *p;
	int r = rb_get_ptr(b, &p, n);
	if (r == 0 && n > 0)
		memcpy(dst, p, n);
	return r;
}

static uint64_t
be_load(const uint8_t *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

#define GETTER(name, type, n)					\
	int name(struct rbuf *b, type *v)			\
	{							\
		const uint8_t *p;				\
		int r = rb_get_ptr(b, &p, n);			\
		if (r == 0)					\
			*v = (type)be_load(p, n);		\
		return r;					\
	}

GETTER(rb_get_u8, uint8_t, 1)
GETTER(rb_get_u16, uint16_t, 2)
GETTER(rb_get_u32, uint32_t, 4)
GETTER(rb_get_u64, uint64_t, 8)

int
rb_get_str(struct rbuf *b, char *dst, size_t dstsz)
{
	size_t start = b->off;
	uint16_t n;
	const uint8_t *p;
	int r;

	if ((r = rb_get_u16(b, &n)) != 0)
		return r;
	if ((r = rb_get_ptr(b, &p, n)) != 0)
		goto fail;
	if ((size_t)n + 1 > dstsz) {
		r = RD_ERR_TOO_LARGE;
		goto fail;
	}
	if (memchr(p, '\0', n) != NULL) {
		r = RD_ERR_INVALID;
		goto fail;
	}
	memcpy(dst, p, n);
	dst[n] = '\0';
	return 0;
fail:
	b->off = start;
	return r;
}

void
wb_init(struct wbuf *b)
{
	b->p = NULL;
	b->len = b->cap = 0;
	b->foreign = 0;
}

void
wb_attach(struct wbuf *b, void *mem, size_t cap)
{
	b->p = mem;
	b->len = 0;
	b->cap = cap;
	b->foreign = 1;
}

void
wb_free(struct wbuf *b)
{
	if (!b->foreign)
		free(b->p);
	wb_init(b);
}

void
wb_reset(struct wbuf *b)
{
	b->len = 0;
}

uint8_t *
wb_reserve(struct wbuf *b, size_t n)
{
	if (n > SIZE_MAX - b->len)
		fatalx("wbuf size overflow");
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
		if (b->foreign) {
			uint8_t *q = xmalloc(cap);
			if (b->len > 0)
				memcpy(q, b->p, b->len);
			b->p = q;
			b->foreign = 0;
		} else {
			b->p = xreallocarray(b->p, cap, 1);
		}
		b->cap = cap;
	}
	return b->p + b->len;
}

static void
be_store(struct wbuf *b, uint64_t v, size_t n)
{
	uint8_t *p = wb_reserve(b, n);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	b->len += n;
}

void wb_put_u8(struct wbuf *b, uint8_t v)   { be_store(b, v, 1); }
void wb_put_u16(struct wbuf *b, uint16_t v) { be_store(b, v, 2); }
void wb_put_u32(struct wbuf *b, uint32_t v) { be_store(b, v, 4); }
void wb_put_u64(struct wbuf *b, uint64_t v) { be_store(b, v, 8); }

void
wb_put_bytes(struct wbuf *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	memcpy(wb_reserve(b, n), p, n);
	b->len += n;
}

void
wb_put_str(struct wbuf *b, const char *s)
{
	size_t n = strlen(s);
	if (n > UINT16_MAX)
		fatalx("string too long for the wire: %zu bytes", n);
	wb_put_u16(b, (uint16_t)n);
	wb_put_bytes(b, s, n);
}

void
wb_set_u32(struct wbuf *b, size_t off, uint32_t v)
{
	if (off + 4 > b->len)
		fatalx("wb_set_u32 past the end");
	for (int i = 0; i < 4; i++)
		b->p[off + i] = (uint8_t)(v >> (8 * (3 - i)));
}
