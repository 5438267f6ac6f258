/*
 * wire.h — the replication protocol between a primary and a replica.
 *
 * Version 4 (a replica also serves version 2 and 3 primaries; see
 * KEEPALIVE and DEFINITION).
 * Everything travels inside TLS 1.3 with mutual certificate
 * authentication.  All integers are big-endian.  A string is a u16 length
 * followed by that many bytes (no NUL inside).
 *
 * Frame
 *   u32  len        bytes that follow this field (type + payload);
 *                   1 <= len <= WIRE_MAX_FRAME
 *   u8   type       one of enum wire_type
 *   ...  payload    len - 1 bytes, laid out per type below
 *
 * A session: the primary (client) sends HELLO; the replica answers WELCOME
 * or NACK.  Then, any number of times: CYCLE, DATA*, END from the primary
 * (with at most one DEFINITION between CYCLE and END), ACK or NACK from
 * the replica.  A resynchronising cycle (CYCLE flag
 * WIRE_CYCLE_RESYNC) carries no DATA: the primary sends SUMS for every
 * unit of every disk, in order; the replica answers SIG for each range
 * of units whose digests differ from its own, then SIGEND; the primary
 * answers each SIG, in order, with a DELTA, then sends END.  After an ACK, a
 * planned failover sends PROMOTE; the replica answers PROMOTED (or NACK)
 * and the session ends.  Either side may send NACK and close at
 * any time.  A frame that fails to decode, or that is valid but not
 * expected in the session's state, ends the session; nothing of the open
 * cycle is applied.
 *
 * HELLO (1), primary -> replica
 *   u32  magic        WIRE_MAGIC ("RPLD")
 *   u16  version      WIRE_VERSION
 *   str  vm           VM name (util_name_valid)
 *   u64  generation   the primary's generation for this VM (>= 1)
 *   u32  block_size   power of two, WIRE_MIN_BLOCK..WIRE_MAX_BLOCK
 *   u64  interval_ms  the primary's cycle interval (0 = on demand), for
 *                     the replica's health report
 *   u16  ndisks       1..WIRE_MAX_DISKS
 *   ndisks x { str name (util_disk_name_valid, unique); u64 size }
 *
 * WELCOME (2), replica -> primary
 *   u16  version      WIRE_VERSION
 *   u64  generation   the replica's generation for this VM
 *   u64  last_cycle   id of the newest cycle applied (0: none)
 *   u64  last_point   id of the newest recovery point (0: none)
 *   u8   flags        WIRE_WELCOME_DATA: the replica's disk files hold
 *                     data (a seed copy, or a former primary's disks);
 *                     WIRE_WELCOME_ADOPT: the replica's operator gave the
 *                     VM to this primary (replctl reassign), which takes
 *                     `generation` (never below its own) before it sends
 *                     a cycle, and whose first cycle is a resync (the
 *                     replica refuses any other until one is applied)
 *
 * CYCLE (3), primary -> replica: a cycle begins
 *   u64  cycle        cycle id, > the replica's last_cycle
 *   u64  created_ms   the cut's time on the primary's clock (Unix ms, UTC)
 *   u8   kind         0 = crash-consistent, 1 = application-consistent
 *   u8   flags        WIRE_CYCLE_FULL: every block of every disk follows;
 *                     WIRE_CYCLE_RESYNC: SUMS / SIG / DELTA, no DATA
 *   u16  ndisks       same count as HELLO
 *   ndisks x u64 size each disk's size at the cut (never below HELLO's)
 *
 * DATA (4), primary -> replica: one extent of one disk
 *   u16  disk         index into HELLO's disk list
 *   u64  offset       multiple of block_size, < the disk's size
 *   u32  length       raw length: a whole block (or the disk's short last
 *                     block) for RAW and ZSTD; any multiple of block_size
 *                     for ZERO (or up to the disk's end), at most
 *                     WIRE_MAX_ZERO; offset + length <= disk size
 *   u8   encoding     WIRE_ENC_RAW, WIRE_ENC_ZSTD or WIRE_ENC_ZERO
 *   u8   hash[16]     XXH3-128 of the raw content (digest.h); all zero
 *                     bytes for ZERO (no content travels)
 *   ...  payload      RAW: exactly length bytes; ZSTD: one zstd frame that
 *                     decompresses to exactly length bytes; ZERO: empty
 *
 * END (5), primary -> replica: the cycle is complete
 *   u64  cycle        same id as CYCLE
 *   u64  nframes      DATA frames sent in this cycle
 *   u64  raw_bytes    sum of DATA lengths
 *   u8   digest[16]   running digest of the DATA headers and of the
 *                     DEFINITION, in the order sent (wire_digest_*)
 *
 * ACK (6), replica -> primary: the cycle is durable as a recovery point
 *   u64  cycle
 *   u64  point        the new recovery point's id
 *
 * NACK (7), either direction
 *   u16  code         enum wire_nack
 *   str  reason       one line for the peer's log (<= WIRE_MAX_REASON)
 *
 * SUMS (8), primary -> replica: digests of consecutive units of a disk
 *   u16  disk
 *   u64  offset       multiple of unit: where the first unit starts
 *   u32  unit         wire_sum_unit(block_size): WIRE_SUM_UNIT, or the
 *                     block size if larger
 *   u16  count        1..WIRE_MAX_SUMS
 *   count x u8[16]    each unit's digest: XXH3-128 of the XXH3-128 of
 *                     each of its blocks (block_size; the last unit and
 *                     block of a disk end at the disk's size at the cut),
 *                     as digest_chunk() makes it
 *
 * SIG (9), replica -> primary: a range of units differs
 *   u16  disk
 *   u64  offset       a unit's offset; ranges come in the order of SUMS
 *                     and never overlap
 *   u32  length       whole units (or up to the disk's end), at most
 *                     wire_chunk_len(block_size)
 *   ...  payload      librsync signature of the replica's range (delta.h)
 *                     at WIRE_SIG_BLOCK bytes per block
 *
 * SIGEND (10), replica -> primary: every SUMS was answered
 *   u64  cycle
 *   u64  nsigs        SIG frames sent in this cycle
 *
 * DELTA (11), primary -> replica: the answer to one SIG, in SIG order
 *   u16  disk
 *   u64  offset
 *   u32  length       the range's length
 *   u8   encoding     WIRE_ENC_RAW or WIRE_ENC_ZSTD (of the delta)
 *   u32  delta_len    the raw delta's length (<= WIRE_MAX_DELTA)
 *   u8   hash[16]     the range's new content's digest (as in SUMS)
 *   ...  payload      the librsync delta, raw or as one zstd frame
 *
 * PROMOTE (12), primary -> replica: a planned failover hands over
 *   u64  cycle        the cycle just acknowledged (the replica's newest)
 *   u64  generation   the replica's new generation (the primary's + 1)
 *   str  listen       HOST:PORT where this host, the new replica, listens
 *
 * PROMOTED (13), replica -> primary: the handover is recorded
 *   u64  generation
 *
 * KEEPALIVE (14), either direction, version 3 sessions only: the sender
 * is alive.  Each side sends one right after WELCOME (the replica with
 * it, the primary when it reads it), then one every every_ms whenever
 * its output is idle, in any state until the session ends (a replica
 * holding a PROMOTE answers PROMOTED only).  A side that reads nothing
 * at all for WIRE_KEEPALIVE_MISSES x the peer's every_ms ends the
 * session: the peer, or the path back from it, is gone.
 *   u64  cycle        the cycle the sender works on (0: none)
 *   u8   flags        WIRE_KEEPALIVE_APPLYING (replica): END of `cycle`
 *                     is in and the cycle is being checked and applied;
 *                     the primary waits for its ACK as long as this comes
 *   u32  every_ms     the sender's interval, WIRE_KEEPALIVE_MIN_MS ..
 *                     WIRE_KEEPALIVE_MAX_MS
 *
 * DEFINITION (15), primary -> replica, version 4 sessions only: the VM's
 * definition (libvirt domain XML) at the cycle's cut, between CYCLE and
 * END, at most once a cycle.  The primary sends it only when it differs
 * from the last one the replica acknowledged in a cycle; the point of a
 * cycle without one keeps the definition of the point before.
 *   ...  xml          the rest of the frame, 1..WIRE_MAX_DEFINITION bytes
 *                     of UTF-8 text (well-formed: no overlong form, no
 *                     surrogate): no NUL, no other C0 control than TAB,
 *                     LF and CR (XML 1.0 allows no others), and no C1
 *                     control U+0080..U+009F (XML 1.0 discourages them;
 *                     a terminal would act on them when `replctl
 *                     definition` prints the text)
 * It counts in END's digest as if it were the header of a DATA frame of
 * disk WIRE_DIGEST_DEFINITION (no disk has that index), offset 0, length
 * the text's length and hash the text's XXH3-128; not in nframes or
 * raw_bytes.
 *
 * Versions: HELLO and WELCOME carry the session's version.  A replica
 * answers a version 2, 3 or 4 HELLO with a WELCOME of the same version;
 * a version 2 session has no KEEPALIVE (a 0.5 peer would end the session
 * at an unknown frame type), a version 2 or 3 session no DEFINITION.  A
 * primary offers 4; a replica that refuses that HELLO for its version is
 * offered one version less at the next try (3, then 2).  After
 * WIRE_REPROBE_S at a lower version the primary offers 4 again (the
 * replica may have been upgraded); refused, it goes straight back to the
 * version last welcomed.
 *
 * In a resynchronising cycle END's nframes counts DELTA frames, its
 * raw_bytes their lengths, and its digest covers each DELTA's
 * disk, offset, length and hash as if it were a DATA header.
 */
#ifndef REPLICAD_WIRE_H
#define REPLICAD_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "digest.h"
#include "util.h"

#define WIRE_MAGIC	0x52504C44u	/* "RPLD" */
#define WIRE_VERSION	4
#define WIRE_VERSION_MIN 2		/* oldest version still served */
#define WIRE_VERSION_KEEPALIVE 3	/* first version with KEEPALIVE */
#define WIRE_VERSION_DEFINITION 4	/* first version with DEFINITION */
#define WIRE_REPROBE_S	3600		/* a lowered offer is raised again */
#define WIRE_MAX_DEFINITION (1u << 20)	/* longest definition text */
#define WIRE_DIGEST_DEFINITION 0xffff	/* its disk index in END's digest */
#define WIRE_KEEPALIVE_MISSES 3
#define WIRE_KEEPALIVE_MIN_MS 1000
#define WIRE_KEEPALIVE_MAX_MS (300 * 1000)
#define WIRE_MIN_BLOCK	(4u << 10)
#define WIRE_MAX_BLOCK	(4u << 20)
#define WIRE_MAX_DISKS	64
#define WIRE_MAX_ZERO	(1u << 30)	/* longest ZERO extent */
#define WIRE_MAX_REASON	1024
#define WIRE_CHUNK	(1u << 20)	/* longest SIG range (at least a block) */
#define WIRE_SUM_UNIT	(64u << 10)	/* SUMS granularity (at least a block) */
#define WIRE_MAX_SUMS	1024		/* digests in one SUMS frame */
#define WIRE_SIG_BLOCK	4096		/* librsync block of a SIG */
#define WIRE_MAX_DELTA	(WIRE_MAX_BLOCK + (64u << 10))
#define WIRE_MAX_SIG	(64u << 10)	/* a 4 MiB chunk signed at 4 KiB
					   blocks takes 20 KiB */
/* Largest frame: a DATA header and an incompressible block of the largest
 * size (ZSTD payloads above the block size are refused; RAW is sent). */
#define WIRE_DATA_HDR	(2 + 8 + 4 + 1 + DIGEST_LEN)
#define WIRE_DELTA_HDR	(2 + 8 + 4 + 1 + 4 + DIGEST_LEN)
#define WIRE_MAX_FRAME	(1 + WIRE_DELTA_HDR + WIRE_MAX_DELTA)
#define WIRE_FRAME_HDR	5	/* u32 len + u8 type */

enum wire_type {
	WIRE_HELLO = 1,
	WIRE_WELCOME = 2,
	WIRE_CYCLE = 3,
	WIRE_DATA = 4,
	WIRE_END = 5,
	WIRE_ACK = 6,
	WIRE_NACK = 7,
	WIRE_SUMS = 8,
	WIRE_SIG = 9,
	WIRE_SIGEND = 10,
	WIRE_DELTA = 11,
	WIRE_PROMOTE = 12,
	WIRE_PROMOTED = 13,
	WIRE_KEEPALIVE = 14,
	WIRE_DEFINITION = 15,
};

enum wire_encoding {
	WIRE_ENC_RAW = 0,
	WIRE_ENC_ZSTD = 1,
	WIRE_ENC_ZERO = 2,
};

#define WIRE_CYCLE_FULL		0x01
#define WIRE_CYCLE_RESYNC	0x02
#define WIRE_WELCOME_DATA	0x01
#define WIRE_WELCOME_ADOPT	0x02
#define WIRE_KEEPALIVE_APPLYING	0x01

enum wire_nack {
	WIRE_NACK_PROTOCOL = 1,	/* malformed or unexpected frame */
	WIRE_NACK_DENIED = 2,	/* identity not accepted for this VM */
	WIRE_NACK_FENCED = 3,	/* generation below the replica's */
	WIRE_NACK_BAD_DATA = 4,	/* hash mismatch, range, decompression */
	WIRE_NACK_IO = 5,	/* replica could not store the cycle */
	WIRE_NACK_NOSPACE = 6,
	WIRE_NACK_BUSY = 7,	/* another session holds this VM */
	WIRE_NACK_INTERNAL = 8,
	WIRE_NACK_MISMATCH = 9,	/* disks or block size differ from the catalog */
};

struct wire_disk {
	char		name[NAME_MAX_LEN + 1];
	uint64_t	size;
};

struct wire_hello {
	uint16_t	version;
	char		vm[NAME_MAX_LEN + 1];
	uint64_t	generation;
	uint32_t	block_size;
	uint64_t	interval_ms;
	uint16_t	ndisks;
	struct wire_disk disks[WIRE_MAX_DISKS];
};

struct wire_welcome {
	uint16_t	version;
	uint64_t	generation;
	uint64_t	last_cycle;
	uint64_t	last_point;
	uint8_t		flags;
};

struct wire_cycle {
	uint64_t	cycle;
	uint64_t	created_ms;
	uint8_t		kind;
	uint8_t		flags;
	uint16_t	ndisks;
	uint64_t	sizes[WIRE_MAX_DISKS];
};

struct wire_data {
	uint16_t	disk;
	uint64_t	offset;
	uint32_t	length;
	uint8_t		encoding;
	struct digest	hash;
	const uint8_t	*payload;	/* borrowed from the frame */
	size_t		payload_len;
};

struct wire_end {
	uint64_t	cycle;
	uint64_t	nframes;
	uint64_t	raw_bytes;
	struct digest	digest;
};

struct wire_ack {
	uint64_t	cycle;
	uint64_t	point;
};

struct wire_nack_msg {
	uint16_t	code;
	char		reason[WIRE_MAX_REASON + 1];
};

struct wire_sums {
	uint16_t	disk;
	uint64_t	offset;
	uint32_t	chunk;
	uint16_t	count;
	const uint8_t	*digests;	/* count x DIGEST_LEN, borrowed */
};

/* SIG and DELTA: one chunk and a payload borrowed from the frame. */
struct wire_chunk {
	uint16_t	disk;
	uint64_t	offset;
	uint32_t	length;
	uint8_t		encoding;	/* DELTA only */
	uint32_t	delta_len;	/* DELTA only */
	struct digest	hash;		/* DELTA only */
	const uint8_t	*payload;
	size_t		payload_len;
};

struct wire_sigend {
	uint64_t	cycle;
	uint64_t	nsigs;
};

struct wire_keepalive {
	uint64_t	cycle;
	uint8_t		flags;
	uint32_t	every_ms;
};

/* DEFINITION: the text, borrowed from the frame (not NUL-terminated). */
struct wire_definition {
	const char	*xml;
	size_t		 len;
};

struct wire_promote {
	uint64_t	cycle;
	uint64_t	generation;
	char		listen[HOST_MAX_LEN + 8];
};

/*
 * Frame header: from the first WIRE_FRAME_HDR bytes, the frame's total
 * length on the wire (header included) and its type.  RD_ERR_TOO_LARGE if
 * len exceeds max_frame (<= WIRE_MAX_FRAME), RD_ERR_INVALID if len is 0 or
 * the type is unknown.
 */
int	wire_frame_header(const uint8_t hdr[WIRE_FRAME_HDR], size_t max_frame,
	    size_t *frame_len, uint8_t *type);

/*
 * Encoders append one whole frame (header included) to b.
 * wire_put_data_hdr() appends the frame header and DATA fields for a
 * payload of payload_len bytes that the caller appends next.  HELLO and
 * WELCOME carry m->version (0: WIRE_VERSION).
 */
void	wire_put_hello(struct wbuf *b, const struct wire_hello *m);
void	wire_put_welcome(struct wbuf *b, const struct wire_welcome *m);
void	wire_put_cycle(struct wbuf *b, const struct wire_cycle *m);
void	wire_put_data_hdr(struct wbuf *b, const struct wire_data *m,
	    size_t payload_len);
void	wire_put_end(struct wbuf *b, const struct wire_end *m);
void	wire_put_ack(struct wbuf *b, const struct wire_ack *m);
void	wire_put_nack(struct wbuf *b, uint16_t code, const char *reason);
void	wire_put_sums(struct wbuf *b, const struct wire_sums *m);
void	wire_put_sig(struct wbuf *b, const struct wire_chunk *m);
void	wire_put_sigend(struct wbuf *b, const struct wire_sigend *m);
void	wire_put_delta(struct wbuf *b, const struct wire_chunk *m);
void	wire_put_promote(struct wbuf *b, const struct wire_promote *m);
void	wire_put_promoted(struct wbuf *b, uint64_t generation);
void	wire_put_keepalive(struct wbuf *b, const struct wire_keepalive *m);
/* The caller checked the text with wire_definition_check() (fatal
 * otherwise). */
void	wire_put_definition(struct wbuf *b, const char *xml, size_t len);

/*
 * Decoders take a frame's payload (after the type byte) and fill *m.
 * They check every field that can be checked without session context
 * (magic, version in WIRE_VERSION_MIN..WIRE_VERSION, name syntax, counts, encodings, bounds of lengths, no
 * trailing bytes) and return 0 or a negative rd_err.  wire_get_data()
 * leaves m->payload pointing into p.
 */
int	wire_get_hello(const uint8_t *p, size_t len, struct wire_hello *m);
int	wire_get_welcome(const uint8_t *p, size_t len, struct wire_welcome *m);
int	wire_get_cycle(const uint8_t *p, size_t len, struct wire_cycle *m);
int	wire_get_data(const uint8_t *p, size_t len, struct wire_data *m);
int	wire_get_end(const uint8_t *p, size_t len, struct wire_end *m);
int	wire_get_ack(const uint8_t *p, size_t len, struct wire_ack *m);
int	wire_get_nack(const uint8_t *p, size_t len, struct wire_nack_msg *m);
int	wire_get_sums(const uint8_t *p, size_t len, struct wire_sums *m);
int	wire_get_sig(const uint8_t *p, size_t len, struct wire_chunk *m);
int	wire_get_sigend(const uint8_t *p, size_t len, struct wire_sigend *m);
int	wire_get_delta(const uint8_t *p, size_t len, struct wire_chunk *m);
int	wire_get_promote(const uint8_t *p, size_t len, struct wire_promote *m);
int	wire_get_promoted(const uint8_t *p, size_t len, uint64_t *generation);
int	wire_get_keepalive(const uint8_t *p, size_t len,
	    struct wire_keepalive *m);
int	wire_get_definition(const uint8_t *p, size_t len,
	    struct wire_definition *m);

/*
 * Whether len bytes of xml may travel in a DEFINITION: 0, RD_ERR_INVALID
 * (empty, not UTF-8, a NUL, another C0 control than TAB, LF, CR, or a C1
 * control) or
 * RD_ERR_TOO_LARGE (above WIRE_MAX_DEFINITION).
 */
int	wire_definition_check(const char *xml, size_t len);

/* The longest SIG range of a resync at block_size. */
static inline uint32_t
wire_chunk_len(uint32_t block_size)
{
	return block_size > WIRE_CHUNK ? block_size : WIRE_CHUNK;
}

/* The unit SUMS compare at block_size. */
static inline uint32_t
wire_sum_unit(uint32_t block_size)
{
	return block_size > WIRE_SUM_UNIT ? block_size : WIRE_SUM_UNIT;
}

/*
 * Session-context checks of a decoded DATA frame against the cycle's disk
 * sizes and the block size (both already validated): disk index, offset
 * alignment, offset + length within the disk, RAW/ZSTD length equal to a
 * whole block or the disk's last short block.  0 or RD_ERR_RANGE.
 */
int	wire_check_data(const struct wire_data *m, const struct wire_cycle *c,
	    uint32_t block_size);

/*
 * Content of a RAW or ZSTD frame into out (capacity >= m->length): ZSTD is
 * decompressed without ever writing past m->length; the result must be
 * exactly m->length bytes and hash to m->hash.  Returns 0, RD_ERR_COMPRESS
 * (bad zstd data or wrong size) or RD_ERR_HASH.  dctx may be NULL (one is
 * made and freed per call).
 */
struct ZSTD_DCtx_s;
int	wire_data_content(const struct wire_data *m, uint8_t *out,
	    struct ZSTD_DCtx_s *dctx);

/*
 * Encode one block of raw content for a DATA frame: with level > 0, try
 * zstd into scratch (capacity >= len); keep it if it saves at least 1/64
 * of len, else send RAW.  Sets *enc and points *payload / *payload_len at
 * scratch or raw.  cctx may be NULL when level is 0.
 */
struct ZSTD_CCtx_s;
void	wire_data_encode(struct ZSTD_CCtx_s *cctx, int level,
	    const uint8_t *raw, size_t len, uint8_t *scratch,
	    uint8_t *enc, const uint8_t **payload, size_t *payload_len);

/*
 * The END digest: both sides feed every DATA frame's header fields (disk,
 * offset, length, hash; not the encoding) and the DEFINITION (as wire.h's
 * layout says) in order.  Zero-initialise the struct; wire_digest_init()
 * may be called again to restart, and wire_digest_free() releases it.
 */
struct wire_digest {
	XXH3_state_t	*st;
};
void	wire_digest_init(struct wire_digest *d);
void	wire_digest_free(struct wire_digest *d);
void	wire_digest_update(struct wire_digest *d, const struct wire_data *m);
void	wire_digest_definition(struct wire_digest *d, const char *xml,
	    size_t len);
void	wire_digest_final(struct wire_digest *d, struct digest *out);

/* Names for logs. */
const char *wire_type_name(uint8_t type);
const char *wire_nack_name(uint16_t code);

#endif
