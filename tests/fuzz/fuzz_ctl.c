/*
 * fuzz_ctl.c — libFuzzer harness for the control protocol decoders.
 *
 * The input is read twice: as a run of request frames (replicad's side)
 * and as a run of reply frames (replctl's side), each decoded for as long
 * as frames decode.  Every decoded frame must re-encode to the very bytes
 * it came from; a mismatch is a codec bug and aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "ctl.h"

static void
fuzz_requests(const uint8_t *data, size_t size)
{
	struct ctl_request req;
	struct wbuf b;
	size_t used, off = 0;

	wb_init(&b);
	while (ctl_get_request(data + off, size - off, &req, &used) == 1) {
		if (used == 0 || used > size - off)
			abort();
		wb_reset(&b);
		ctl_put_request(&b, req.argc, req.argv);
		if (b.len != used || memcmp(b.p, data + off, used) != 0)
			abort();
		ctl_request_free(&req);
		off += used;
	}
	ctl_request_free(&req);
	wb_free(&b);
}

static void
fuzz_replies(const uint8_t *data, size_t size)
{
	const uint8_t *text;
	size_t textlen, used, off = 0;
	struct wbuf b;
	uint8_t type;

	wb_init(&b);
	while (ctl_get_reply(data + off, size - off, &type, &text, &textlen,
	    &used) == 1) {
		if (used != textlen + 5 || used > size - off ||
		    text != data + off + 5)
			abort();
		wb_reset(&b);
		if (type == CTL_EXIT)
			ctl_put_exit(&b, text[0]);
		else
			ctl_put_reply(&b, type, text, textlen);
		if (b.len != used || memcmp(b.p, data + off, used) != 0)
			abort();
		off += used;
	}
	wb_free(&b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_requests(data, size);
	fuzz_replies(data, size);
	return 0;
}
