/*
 * ctl.h — the control protocol between replctl and replicad, over the
 * UNIX stream socket named by control_socket.
 *
 * Version 1.  Big-endian; a string is a u16 length and its bytes.
 *
 * Request (replctl -> replicad), one per connection:
 *   u32  len          bytes that follow; <= CTL_MAX_REQUEST
 *   u8   version      CTL_VERSION
 *   u8   argc         1..CTL_MAX_ARGS
 *   argc x str        the command and its arguments, as replctl validated
 *                     them (e.g. "sync", "web01", "--wait")
 *
 * Replies (replicad -> replctl), any number of frames, the last one EXIT:
 *   u32  len          bytes that follow; <= CTL_MAX_REPLY
 *   u8   type         CTL_OUT, CTL_ERR, CTL_PROGRESS or CTL_EXIT
 *   ...               OUT / ERR / PROGRESS: text (no length prefix, the
 *                     rest of the frame); EXIT: u8 exit code
 *
 * OUT text goes to replctl's stdout, ERR to its stderr; PROGRESS is a
 * one-line progress report that replctl shows only on a terminal.
 */
#ifndef REPLICAD_CTL_H
#define REPLICAD_CTL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define CTL_VERSION	1
#define CTL_MAX_ARGS	32
#define CTL_MAX_ARG	4096
#define CTL_MAX_REQUEST	(64 * 1024)
#define CTL_MAX_REPLY	(16 * 1024 * 1024)

enum ctl_type {
	CTL_OUT = 1,
	CTL_ERR = 2,
	CTL_PROGRESS = 3,
	CTL_EXIT = 4,
};

/* Exit codes of replctl and `replicad --check` (SPEC.md). */
enum ctl_exit {
	CTL_EXIT_OK = 0,
	CTL_EXIT_FAILED = 1,
	CTL_EXIT_USAGE = 2,
	CTL_EXIT_UNREACHABLE = 3,
};

struct ctl_request {
	int	 argc;
	char	*argv[CTL_MAX_ARGS + 1];	/* NULL-terminated; owned */
};

/* Append a whole request frame to b.  argc 1..CTL_MAX_ARGS, each argument
 * at most CTL_MAX_ARG bytes (caller bugs otherwise: fatal). */
void	ctl_put_request(struct wbuf *b, int argc, char *const argv[]);
/*
 * If buf starts with a whole request frame: decode it into *req (the
 * caller frees with ctl_request_free()), set *used to its length, return
 * 1.  Return 0 if more bytes are needed, or a negative rd_err if the bytes
 * can never be a valid request.
 */
int	ctl_get_request(const uint8_t *buf, size_t len, struct ctl_request *req,
	    size_t *used);
void	ctl_request_free(struct ctl_request *req);

/* Append one reply frame. */
void	ctl_put_reply(struct wbuf *b, uint8_t type, const void *text,
	    size_t len);
void	ctl_put_exit(struct wbuf *b, uint8_t code);
/*
 * If buf starts with a whole reply frame: set *type, point *text / *textlen
 * at its body (for EXIT, *textlen is 1 and text[0] is the code), set *used
 * and return 1; 0 if more bytes are needed; negative rd_err if invalid.
 */
int	ctl_get_reply(const uint8_t *buf, size_t len, uint8_t *type,
	    const uint8_t **text, size_t *textlen, size_t *used);

#endif
