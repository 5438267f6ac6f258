"""A hand-driven peer for hostile-input tests: encoders and decoders of the
replication protocol v2 to v4 (include/wire.h) and of the control protocol v1
(include/ctl.h), plus small TLS / UNIX-socket clients.  Stdlib only.

Everything here builds frames byte by byte from the layouts documented in
the headers, so a test can send exactly the malformed or out-of-place
frame it wants.  Nothing validates what it encodes: that is the point.

Content hashes are XXH3-128 in canonical (big-endian) form.  Python has
no xxhash module, so xxh128() shells out to `xxhsum -H2`, whose hex output
is that canonical form (checked against the replica's .digests files by
test_hostile.test_wireproto_valid_cycle_is_applied).  ZERO extents need no
hash (the field is all zero bytes).
"""
import os
import socket
import ssl
import struct
import subprocess
import time

# --- wire.h constants ------------------------------------------------------

MAGIC = 0x52504C44          # "RPLD"
VERSION = 2                 # what hello() and welcome() say by default
VERSION_CURRENT = 4         # WIRE_VERSION: what a primary offers
VERSION_DEFINITION = 4      # first version with DEFINITION
MAX_DEFINITION = 1 << 20
DIGEST_DEFINITION = 0xFFFF  # its disk index in the END digest
MIN_BLOCK = 4 << 10
MAX_BLOCK = 4 << 20
MAX_DISKS = 64
MAX_ZERO = 1 << 30
MAX_REASON = 1024
CHUNK = 1 << 20             # resync chunk (at least a block)
MAX_SUMS = 1024             # digests in one SUMS frame
MAX_DELTA = MAX_BLOCK + (64 << 10)
MAX_SIG = 64 << 10
DIGEST_LEN = 16
DATA_HDR = 2 + 8 + 4 + 1 + DIGEST_LEN
DELTA_HDR = 2 + 8 + 4 + 1 + 4 + DIGEST_LEN
SUMS_HDR = 2 + 8 + 4 + 2
SIG_HDR = 2 + 8 + 4
MAX_FRAME = 1 + DELTA_HDR + MAX_DELTA
FRAME_HDR = 5

HELLO, WELCOME, CYCLE, DATA, END, ACK, NACK = 1, 2, 3, 4, 5, 6, 7
SUMS, SIG, SIGEND, DELTA, PROMOTE, PROMOTED = 8, 9, 10, 11, 12, 13
KEEPALIVE = 14
DEFINITION = 15
TYPE_NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", CYCLE: "CYCLE", DATA: "DATA",
              END: "END", ACK: "ACK", NACK: "NACK", SUMS: "SUMS", SIG: "SIG",
              SIGEND: "SIGEND", DELTA: "DELTA", PROMOTE: "PROMOTE",
              PROMOTED: "PROMOTED", KEEPALIVE: "KEEPALIVE",
              DEFINITION: "DEFINITION"}
KEEPALIVE_APPLYING = 0x01

ENC_RAW, ENC_ZSTD, ENC_ZERO = 0, 1, 2
CYCLE_FULL = 0x01
CYCLE_RESYNC = 0x02
WELCOME_DATA = 0x01
WELCOME_ADOPT = 0x02

NACK_PROTOCOL = 1
NACK_DENIED = 2
NACK_FENCED = 3
NACK_BAD_DATA = 4
NACK_IO = 5
NACK_NOSPACE = 6
NACK_BUSY = 7
NACK_INTERNAL = 8
NACK_MISMATCH = 9
NACK_NAMES = {1: "protocol", 2: "denied", 3: "fenced", 4: "bad-data", 5: "io",
              6: "no-space", 7: "busy", 8: "internal", 9: "mismatch"}

ZERO_HASH = bytes(DIGEST_LEN)


# --- hashes ----------------------------------------------------------------


def replica_listener(pki, port, backlog):
    """A TLS 1.3 server context with the replica's certificate, the client
    certificate required and checked against ca.pem, and a socket
    listening on 127.0.0.1:port: what a test's fake replica serves on."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.path.join(pki, "replica.pem"), os.path.join(pki, "replica.key"))
    ctx.load_verify_locations(os.path.join(pki, "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(backlog)
    return ctx, ls

def xxh128(data):
    """XXH3-128 of data, 16 canonical big-endian bytes (via xxhsum -H2)."""
    p = subprocess.run(["xxhsum", "-H2", "-"], input=data, capture_output=True, check=True)
    h = bytes.fromhex(p.stdout.split()[0].decode())
    assert len(h) == DIGEST_LEN, p.stdout
    return h


class CycleDigest:
    """The END digest (wire_digest_*): XXH3-128 over the concatenated
    u16 disk, u64 offset, u32 length, hash[16] of every DATA frame (of
    every DELTA frame in a resynchronising cycle, length being the
    chunk's)."""

    def __init__(self):
        self.parts = []
        self.nframes = 0
        self.raw_bytes = 0

    def add(self, disk, offset, length, hash16):
        self.parts.append(struct.pack(">HQI", disk, offset, length) + hash16)
        self.nframes += 1
        self.raw_bytes += length

    def add_definition(self, xml):
        """A DEFINITION: counted as the header of a DATA frame of disk
        0xFFFF, offset 0, the text's length and hash; not in nframes or
        raw_bytes."""
        self.parts.append(struct.pack(">HQI", DIGEST_DEFINITION, 0, len(xml)) + xxh128(xml))

    def final(self):
        return xxh128(b"".join(self.parts))


# --- encoders ----------------------------------------------------------------

def frame(ftype, payload=b""):
    """u32 len (type + payload), u8 type, payload."""
    return struct.pack(">IB", 1 + len(payload), ftype) + payload


def wstr(s):
    """A wire string: u16 length and the bytes (str is UTF-8 encoded)."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def hello(vm, disks, generation=1, block_size=65536, interval_ms=0,
          magic=MAGIC, version=VERSION):
    """HELLO; disks is a list of (name, size)."""
    p = struct.pack(">IH", magic, version) + wstr(vm)
    p += struct.pack(">QIQH", generation, block_size, interval_ms, len(disks))
    for name, size in disks:
        p += wstr(name) + struct.pack(">Q", size)
    return frame(HELLO, p)


def cycle(cycle_id, sizes, created_ms=None, kind=0, flags=0, ndisks=None):
    if created_ms is None:
        created_ms = int(time.time() * 1000)
    n = len(sizes) if ndisks is None else ndisks
    p = struct.pack(">QQBBH", cycle_id, created_ms, kind, flags, n)
    p += b"".join(struct.pack(">Q", s) for s in sizes)
    return frame(CYCLE, p)


def data(disk, offset, length, encoding, hash16=ZERO_HASH, payload=b""):
    """DATA with every field given explicitly (may be inconsistent)."""
    return frame(DATA, struct.pack(">HQIB", disk, offset, length, encoding) + hash16 + payload)


def data_raw(disk, offset, content, digest=None, hash16=None):
    """A RAW extent; the hash is computed unless hash16 is given.  If digest
    (a CycleDigest) is given, the frame is recorded in it."""
    h = xxh128(content) if hash16 is None else hash16
    if digest is not None:
        digest.add(disk, offset, len(content), h)
    return data(disk, offset, len(content), ENC_RAW, h, content)


def data_zero(disk, offset, length, digest=None):
    if digest is not None:
        digest.add(disk, offset, length, ZERO_HASH)
    return data(disk, offset, length, ENC_ZERO)


def end(cycle_id, nframes, raw_bytes, digest16):
    return frame(END, struct.pack(">QQQ", cycle_id, nframes, raw_bytes) + digest16)


def end_of(cycle_id, digest):
    """The END frame matching a CycleDigest."""
    return end(cycle_id, digest.nframes, digest.raw_bytes, digest.final())


def definition(xml, digest=None):
    """DEFINITION: the payload is the text (bytes) itself.  If digest (a
    CycleDigest) is given, the frame is recorded in it."""
    if digest is not None:
        digest.add_definition(xml)
    return frame(DEFINITION, xml)


def ack(cycle_id, point):
    return frame(ACK, struct.pack(">QQ", cycle_id, point))


def nack(code, reason):
    return frame(NACK, struct.pack(">H", code) + wstr(reason))


def chunk_len(block_size):
    """The chunk length of a resync at block_size (wire_chunk_len)."""
    return max(block_size, CHUNK)


def sums(disk, offset, chunk, digests, count=None):
    """SUMS; digests is a list of 16-byte hashes (or one bytes object of
    the concatenated hashes); count defaults to their number."""
    b = b"".join(digests) if isinstance(digests, (list, tuple)) else digests
    n = len(b) // DIGEST_LEN if count is None else count
    return frame(SUMS, struct.pack(">HQIH", disk, offset, chunk, n) + b)


def sig(disk, offset, length, payload):
    """SIG (replica -> primary): the signature is the rest of the frame."""
    return frame(SIG, struct.pack(">HQI", disk, offset, length) + payload)


def sigend(cycle_id, nsigs):
    return frame(SIGEND, struct.pack(">QQ", cycle_id, nsigs))


def delta(disk, offset, length, encoding, delta_len, hash16, payload):
    """DELTA with every field given explicitly (may be inconsistent)."""
    return frame(DELTA, struct.pack(">HQIBI", disk, offset, length, encoding,
                                    delta_len) + hash16 + payload)


def delta_raw(disk, offset, length, delta_bytes, hash16, digest=None):
    """A RAW DELTA for a chunk of length bytes whose new content hashes to
    hash16.  If digest (a CycleDigest) is given, the frame is recorded in
    it the way END counts DELTA frames."""
    if digest is not None:
        digest.add(disk, offset, length, hash16)
    return delta(disk, offset, length, ENC_RAW, len(delta_bytes), hash16,
                 delta_bytes)


def promote(cycle_id, generation, listen):
    """PROMOTE: listen is "HOST:PORT" (str or bytes)."""
    return frame(PROMOTE, struct.pack(">QQ", cycle_id, generation) + wstr(listen))


def welcome(generation, last_cycle=0, last_point=0, flags=0, version=VERSION):
    """WELCOME (replica -> primary), for a hand-driven replica."""
    return frame(WELCOME, struct.pack(">HQQQB", version, generation, last_cycle,
                                      last_point, flags))


def keepalive(cycle_id=0, flags=0, every_ms=10000):
    """KEEPALIVE (either direction, version 3 sessions)."""
    return frame(KEEPALIVE, struct.pack(">QBI", cycle_id, flags, every_ms))


def promoted(generation):
    """PROMOTED (replica -> primary)."""
    return frame(PROMOTED, struct.pack(">Q", generation))


# --- librsync formats (src/delta.c) ------------------------------------------

RS_DELTA_MAGIC = 0x72730236        # "rs\x02\x36"
RS_BLAKE2_SIG_MAGIC = 0x72730137   # "rs\x01\x37"
SIG_BLOCK = 4096                   # WIRE_SIG_BLOCK
RS_STRONG_LEN = 16                 # DELTA_STRONG_LEN


def _uint_width(v):
    """Index (0..3) of the smallest of 1, 2, 4, 8 bytes that holds v."""
    for i, w in enumerate((1, 2, 4, 8)):
        if v < 1 << (8 * w):
            return i
    raise ValueError(v)


def rs_literal(content):
    """One LITERAL command: 0x01-0x40 for 1-64 bytes, else 0x41-0x44 with
    the length in 1, 2, 4 or 8 bytes; then the bytes."""
    n = len(content)
    if 1 <= n <= 64:
        return bytes([n]) + content
    i = _uint_width(n)
    return bytes([0x41 + i]) + n.to_bytes(1 << i, "big") + content


def rs_copy(pos, n):
    """One COPY command: op 0x45 + 4 * k(pos) + k(len), where the position
    takes 1 << k(pos) bytes and the length 1 << k(len)."""
    a, b = _uint_width(pos), _uint_width(n)
    return (bytes([0x45 + 4 * a + b]) + pos.to_bytes(1 << a, "big")
            + n.to_bytes(1 << b, "big"))


def rs_delta(*commands, magic=RS_DELTA_MAGIC, end=True):
    """A librsync delta: magic, the given encoded commands, END (0x00)."""
    return struct.pack(">I", magic) + b"".join(commands) + (b"\0" if end else b"")


def rs_literal_delta(content):
    """The delta that turns any basis of len(content) bytes into content: one
    LITERAL of the whole range.  Valid whatever the signature was."""
    return rs_delta(rs_literal(content))


def rs_rollsum(block):
    """librsync's rollsum of one block (bytes offset by 31), as the weak sum
    of a signature: s2 << 16 | s1, each kept to 16 bits."""
    n = len(block)
    s1 = sum(block) + 31 * n
    s2 = sum(map(int.__mul__, range(n, 0, -1), block)) + 31 * n * (n + 1) // 2
    return ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)


def rs_signature(basis, block_len=SIG_BLOCK, magic=RS_BLAKE2_SIG_MAGIC,
                 strong_len=RS_STRONG_LEN):
    """The librsync signature of basis: magic, block_len, strong_len, then
    per block (the last one possibly short) its rollsum and the first
    strong_len bytes of its BLAKE2b-256."""
    import hashlib
    out = struct.pack(">III", magic, block_len, strong_len)
    for o in range(0, len(basis), block_len):
        b = basis[o:o + block_len]
        out += struct.pack(">I", rs_rollsum(b))
        out += hashlib.blake2b(b, digest_size=32).digest()[:strong_len]
    return out


# --- decoders --------------------------------------------------------------

def decode_welcome(p):
    version, generation, last_cycle, last_point, flags = struct.unpack(">HQQQB", p)
    return {"version": version, "generation": generation,
            "last_cycle": last_cycle, "last_point": last_point,
            "flags": flags}


def decode_ack(p):
    c, pt = struct.unpack(">QQ", p)
    return {"cycle": c, "point": pt}


def decode_nack(p):
    code, n = struct.unpack(">HH", p[:4])
    return code, p[4:4 + n].decode(errors="replace")


def decode_sig(p):
    disk, offset, length = struct.unpack(">HQI", p[:SIG_HDR])
    return {"disk": disk, "offset": offset, "length": length,
            "payload": p[SIG_HDR:]}


def decode_sigend(p):
    c, n = struct.unpack(">QQ", p)
    return {"cycle": c, "nsigs": n}


def decode_promoted(p):
    (g,) = struct.unpack(">Q", p)
    return {"generation": g}


def decode_hello(p):
    magic, version = struct.unpack(">IH", p[:6])
    i = 6
    (n,) = struct.unpack(">H", p[i:i + 2])
    vm = p[i + 2:i + 2 + n].decode(errors="replace")
    i += 2 + n
    generation, block_size, interval_ms, ndisks = struct.unpack(">QIQH", p[i:i + 22])
    i += 22
    disks = []
    for _ in range(ndisks):
        (n,) = struct.unpack(">H", p[i:i + 2])
        name = p[i + 2:i + 2 + n].decode(errors="replace")
        i += 2 + n
        (size,) = struct.unpack(">Q", p[i:i + 8])
        i += 8
        disks.append((name, size))
    return {"magic": magic, "version": version, "vm": vm,
            "generation": generation, "block_size": block_size,
            "interval_ms": interval_ms, "disks": disks}


def decode_cycle(p):
    c, created, kind, flags, n = struct.unpack(">QQBBH", p[:20])
    sizes = list(struct.unpack(">%dQ" % n, p[20:20 + 8 * n]))
    return {"cycle": c, "created_ms": created, "kind": kind, "flags": flags,
            "sizes": sizes}


def decode_sums(p):
    disk, offset, unit, count = struct.unpack(">HQIH", p[:SUMS_HDR])
    b = p[SUMS_HDR:]
    return {"disk": disk, "offset": offset, "unit": unit, "count": count,
            "digests": [b[i:i + DIGEST_LEN] for i in range(0, len(b), DIGEST_LEN)]}


def decode_delta(p):
    disk, offset, length, enc, dlen = struct.unpack(">HQIBI", p[:DELTA_HDR - DIGEST_LEN])
    return {"disk": disk, "offset": offset, "length": length, "encoding": enc,
            "delta_len": dlen, "hash": p[DELTA_HDR - DIGEST_LEN:DELTA_HDR],
            "payload": p[DELTA_HDR:]}


def decode_end(p):
    c, n, raw = struct.unpack(">QQQ", p[:24])
    return {"cycle": c, "nframes": n, "raw_bytes": raw, "digest": p[24:40]}


def describe(fr):
    """One line for assertion messages."""
    if fr is None:
        return "connection closed"
    t, p = fr
    if t == NACK:
        code, reason = decode_nack(p)
        return "NACK %d (%s): %s" % (code, NACK_NAMES.get(code, "?"), reason)
    return "%s frame (%d bytes)" % (TYPE_NAMES.get(t, "type %d" % t), len(p))


# --- a TLS (or plain) client ---------------------------------------------

class Closed(Exception):
    """The peer closed the connection or the TLS layer failed."""


class Conn:
    """A stream socket with frame reading.  recv_frame() returns
    (type, payload), or None when the peer closed (EOF, reset, TLS alert);
    the reason of a close is kept in .closed_by.  .addr is this end's
    "127.0.0.1:PORT", the way the replica's log lines name the client."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.closed_by = None
        h, p = sock.getsockname()[:2]
        self.addr = "%s:%d" % (h, p)

    def handshake(self, ctx, server_hostname="replica"):
        """Upgrade to TLS.  On failure the exception propagates and the
        connection is gone (Python closes a socket whose handshake failed)."""
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        except BaseException as e:
            self.closed_by = "handshake: %r" % (e,)
            self.sock = None
            raise
        return self

    def send(self, b):
        """Send all bytes; a peer that already closed is not an error here
        (the caller's next read reports it)."""
        if self.sock is None:
            return False
        try:
            self.sock.sendall(b)
            return True
        except (OSError, ssl.SSLError) as e:
            self.closed_by = self.closed_by or repr(e)
            return False

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            if self.sock is None:
                raise Closed(self.closed_by)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete frame from the replica")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no complete frame from the replica")
            except (OSError, ssl.SSLError) as e:
                self.closed_by = repr(e)
                raise Closed(repr(e))
            if not chunk:
                self.closed_by = "EOF"
                raise Closed("EOF")
            self.buf += chunk

    def recv_frame(self, timeout=15.0):
        """The next frame, or None if the connection ends first.  Raises
        TimeoutError if neither happens within timeout seconds."""
        deadline = time.monotonic() + timeout
        try:
            self._fill(FRAME_HDR, deadline)
            n, t = struct.unpack(">IB", self.buf[:FRAME_HDR])
            if n == 0 or n > MAX_FRAME:
                raise AssertionError("replica sent a frame header len=%d" % n)
            self._fill(4 + n, deadline)
        except Closed:
            return None
        p = self.buf[FRAME_HDR:4 + n]
        self.buf = self.buf[4 + n:]
        return t, p

    def wait_closed(self, timeout=15.0):
        """Read (and discard) until the peer closes; True if it did within
        the timeout, False if the connection is still open."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(len(self.buf) + 1, deadline)
            except Closed:
                return True
            except TimeoutError:
                return False

    def finish_and_wait(self, timeout=30.0):
        """Half-close (FIN after every byte sent) and read until the peer
        closes: it has read all that was sent, then the end.  Instead of a
        sleep before close(), whose RST may discard what the peer has not
        read yet.  True if the peer closed within timeout."""
        if self.sock is None:
            return True
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
        except OSError as e:
            self.closed_by = self.closed_by or repr(e)
            return True
        return self.wait_closed(timeout)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def tls_context(cert, key, ca, min_version=ssl.TLSVersion.TLSv1_3, max_version=None):
    """A client context that presents cert/key (unless cert is None) and
    verifies the server against ca."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    ctx.load_verify_locations(ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def tcp_connect(port, host="127.0.0.1", timeout=10.0):
    """A plain TCP connection, as a Conn."""
    return Conn(socket.create_connection((host, port), timeout=timeout))


def tls_connect(port, ctx, server_hostname="replica", timeout=10.0):
    """Connect and complete the TLS handshake (client side).  Raises
    ssl.SSLError / OSError if the handshake fails.  With TLS 1.3 the
    server checks the client certificate after the client considers the
    handshake done, so a refused client certificate shows up on the first
    read instead (recv_frame() returns None)."""
    return tcp_connect(port, timeout=timeout).handshake(ctx, server_hostname)


# --- control protocol (ctl.h) -------------------------------------------

CTL_VERSION = 1
CTL_MAX_ARGS = 32
CTL_MAX_ARG = 4096
CTL_MAX_REQUEST = 64 * 1024
CTL_OUT, CTL_ERR, CTL_PROGRESS, CTL_EXIT = 1, 2, 3, 4


def ctl_request(argv, version=CTL_VERSION):
    """u32 len, u8 version, u8 argc, argc x str."""
    body = struct.pack(">BB", version, len(argv)) + b"".join(wstr(a) for a in argv)
    return struct.pack(">I", len(body)) + body


def ctl_exchange(path, raw, timeout=10.0, shut_write=True):
    """Send raw bytes on the control socket, read replies until the daemon
    closes.  Returns (exit_code or None, out_text, err_text, closed) where
    closed tells whether the daemon closed the connection in time."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        try:
            s.sendall(raw)
            if shut_write:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        buf = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
    finally:
        s.close()
    code, out, err = None, [], []
    while len(buf) >= 5:
        n, t = struct.unpack(">IB", buf[:5])
        if len(buf) < 4 + n:
            break
        body = buf[5:4 + n]
        buf = buf[4 + n:]
        if t == CTL_EXIT and len(body) == 1:
            code = body[0]
        elif t == CTL_OUT:
            out.append(body.decode(errors="replace"))
        elif t == CTL_ERR:
            err.append(body.decode(errors="replace"))
    return code, "".join(out), "".join(err), closed
