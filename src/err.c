/*
 * err.c — words for the error codes of err.h.
 */
#include <errno.h>
#include <string.h>

#include "err.h"

const char *
rd_strerror(int r)
{
	switch (r) {
	case RD_OK:			return "success";
	case RD_ERR_INTERNAL:		return "internal error";
	case RD_ERR_SYSTEM:		return strerror(errno);
	case RD_ERR_INVALID:		return "invalid format";
	case RD_ERR_TRUNCATED:		return "message truncated";
	case RD_ERR_TOO_LARGE:		return "length too large";
	case RD_ERR_VERSION:		return "unsupported version";
	case RD_ERR_NOT_FOUND:		return "not found";
	case RD_ERR_EXISTS:		return "already exists";
	case RD_ERR_HASH:		return "content hash mismatch";
	case RD_ERR_RANGE:		return "out of range";
	case RD_ERR_DB:			return "catalog error";
	case RD_ERR_NAME:		return "unsafe name";
	case RD_ERR_DENIED:		return "not authorised";
	case RD_ERR_COMPRESS:		return "compression error";
	case RD_ERR_STATE:		return "not possible in the current state";
	case RD_ERR_BUSY:		return "busy";
	case RD_ERR_FENCED:		return "fenced: stale generation";
	case RD_ERR_CORRUPT:		return "corrupt file";
	case RD_ERR_PEER:		return "refused by peer";
	case RD_ERR_UNSUPPORTED:	return "not supported";
	case RD_ERR_NOSPACE:		return "no space left";
	case RD_ERR_SHRUNK:		return "disk shrank";
	case RD_ERR_BUDGET:		return "work budget exceeded";
	case RD_ERR_CANCELLED:	return "cancelled";
	}
	return "unknown error";
}
