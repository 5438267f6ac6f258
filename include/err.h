/*
 * err.h — one set of error codes for all of replicad.
 *
 * Functions that can fail return 0 or one of these negative codes;
 * rd_strerror() turns a code into words.  RD_ERR_SYSTEM means "look at
 * errno", which the failing function leaves set.
 */
#ifndef REPLICAD_ERR_H
#define REPLICAD_ERR_H

enum rd_err {
	RD_OK = 0,
	RD_ERR_INTERNAL = -1,	/* broken internal invariant */
	RD_ERR_SYSTEM = -2,	/* a system call failed; errno says why */
	RD_ERR_INVALID = -3,	/* malformed input */
	RD_ERR_TRUNCATED = -4,	/* input ended too early */
	RD_ERR_TOO_LARGE = -5,	/* a length above its bound */
	RD_ERR_VERSION = -6,	/* unsupported format or protocol version */
	RD_ERR_NOT_FOUND = -7,
	RD_ERR_EXISTS = -8,
	RD_ERR_HASH = -9,	/* content does not match its hash */
	RD_ERR_RANGE = -10,	/* offset, index or size out of range */
	RD_ERR_DB = -11,	/* catalog (SQLite) error */
	RD_ERR_NAME = -12,	/* unsafe VM or disk name */
	RD_ERR_DENIED = -13,	/* not authorised */
	RD_ERR_COMPRESS = -14,	/* zstd failed or output too large */
	RD_ERR_STATE = -15,	/* operation not valid in the current state */
	RD_ERR_BUSY = -16,
	RD_ERR_FENCED = -17,	/* stale generation */
	RD_ERR_CORRUPT = -18,	/* an on-disk file failed its checks */
	RD_ERR_PEER = -19,	/* the peer refused or closed */
	RD_ERR_UNSUPPORTED = -20,
	RD_ERR_NOSPACE = -21,
	RD_ERR_SHRUNK = -22,	/* a disk became smaller than replicated */
	RD_ERR_BUDGET = -23,	/* input would cost more work than allowed */
	RD_ERR_CANCELLED = -24,	/* stopped: replicad is shutting down */
};

/* A static description of code r (never NULL). */
const char *rd_strerror(int r);

#endif
