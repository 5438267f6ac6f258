/*
 * buf.h — bounds-checked big-endian encoding and decoding.
 *
 * struct rbuf reads from memory it does not own: every getter checks the
 * remaining length first and returns RD_ERR_TRUNCATED without moving when
 * there is not enough.  struct wbuf is a growable buffer the caller owns
 * (wb_free() releases it).  Strings on the wire are a u16 length followed
 * by that many bytes, with no NUL inside.
 */
#ifndef REPLICAD_BUF_H
#define REPLICAD_BUF_H

#include <stddef.h>
#include <stdint.h>

struct rbuf {
	const uint8_t	*p;
	size_t		 len;
	size_t		 off;
};

struct wbuf {
	uint8_t	*p;
	size_t	 len;
	size_t	 cap;
	int	 foreign;	/* p is the caller's (wb_attach): never
				   realloc'd or freed here */
};

void	rb_init(struct rbuf *b, const void *p, size_t len);
size_t	rb_left(const struct rbuf *b);
int	rb_get_u8(struct rbuf *b, uint8_t *v);
int	rb_get_u16(struct rbuf *b, uint16_t *v);
int	rb_get_u32(struct rbuf *b, uint32_t *v);
int	rb_get_u64(struct rbuf *b, uint64_t *v);
int	rb_get_bytes(struct rbuf *b, void *dst, size_t n);
/* Borrow n bytes in place (*p points into the buffer). */
int	rb_get_ptr(struct rbuf *b, const uint8_t **p, size_t n);
/* A string into dst (NUL-terminated); RD_ERR_TOO_LARGE if it does not fit,
 * RD_ERR_INVALID if it holds a NUL byte. */
int	rb_get_str(struct rbuf *b, char *dst, size_t dstsz);

void	wb_init(struct wbuf *b);
/* Write into mem (cap bytes, the caller's): a write past cap moves what
 * was written to memory of the buffer's own (b->p != mem from then on),
 * and wb_free() never frees mem. */
void	wb_attach(struct wbuf *b, void *mem, size_t cap);
void	wb_free(struct wbuf *b);
void	wb_reset(struct wbuf *b);
/* Make room for n more bytes and return where they go (len unchanged). */
uint8_t *wb_reserve(struct wbuf *b, size_t n);
void	wb_put_u8(struct wbuf *b, uint8_t v);
void	wb_put_u16(struct wbuf *b, uint16_t v);
void	wb_put_u32(struct wbuf *b, uint32_t v);
void	wb_put_u64(struct wbuf *b, uint64_t v);
void	wb_put_bytes(struct wbuf *b, const void *p, size_t n);
/* Strings longer than 65535 bytes are a caller bug (fatal). */
void	wb_put_str(struct wbuf *b, const char *s);
/* Overwrite a u32 already written at offset off. */
void	wb_set_u32(struct wbuf *b, size_t off, uint32_t v);

#endif
