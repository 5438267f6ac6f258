"""Hostile input (DESIGN.md invariant S1): rogue certificates, clients that
do not speak TLS 1.3, hand-made frames that break the rules of wire.h,
idle connections and control-socket abuse.

Every case checks what a user cares about:
  (a) the session is refused: a NACK with the right code (enum wire_nack),
      a failed TLS handshake, or a closed connection;
  (b) the replica logs a clear line naming the client's address;
  (c) nothing is written: every file under STORAGE/VM (images, digests,
      undo, staging) is byte-identical, `points --json` and the VM's
      generation / last point are unchanged, no storage directory appears
      for a refused VM;
  (d) the daemon still serves: a legitimate `sync --wait` succeeds and the
      replica equals the primary.
Cases that share a set-up run in one test function but are checked (and
reported) one by one.
"""
import json
import os
import socket
import ssl
import struct
import subprocess

import wireproto as wp
from harness import (LogMark, TestFailure, assert_same, check, replica_state,
                     wait_for, wait_state_unchanged)
from workload import random_write

VM = "web01"
BS = 65536


class Pair:
    """A replica, a legitimate primary of VM with two disks (one with a
    short last block, one sparse) and, unless first_sync is False, a first
    recovery point so that there is state to protect."""

    def __init__(self, env, vm=VM, vms="*", first_sync=True):
        self.env, self.vm = env, vm
        self.disks = [env.make_disk(env.path("src", "sda.img"), (2 << 20) + 4096 + 512, "random"),
                      env.make_disk(env.path("src", "sdb.img"), 1 << 20, "sparse")]
        self.rep = env.replica(vms=vms).start()
        self.pri = env.primary({vm: self.disks}, self.rep.port).start()
        if first_sync:
            self.legit_sync("first point")

    def disk_list(self):
        """HELLO's disk list: what the legitimate primary would send."""
        return [(os.path.basename(d), os.path.getsize(d)) for d in self.disks]

    def sizes(self):
        return [os.path.getsize(d) for d in self.disks]

    def replica_image(self, i):
        return os.path.join(self.rep.storage, self.vm, os.path.basename(self.disks[i]))

    def legit_sync(self, what):
        """(d): a write, `sync --wait` on the real primary, replica equal."""
        random_write(self.env.rng, self.env.rng.choice(self.disks), max_len=200000)
        r = self.pri.ctl("sync", self.vm, "--wait", timeout=60)
        check(r.rc == 0 and r.out.startswith("point "),
              "%s: legitimate sync failed: %r\nreplica log tail:\n%s"
              % (what, r, self.rep.log_text()[-2000:]))
        for i, d in enumerate(self.disks):
            assert_same(d, self.replica_image(i), what)

    def wait_released(self):
        """A session cut off mid-cycle holds the VM until a worker has
        abandoned its cycle (status "syncing" until then); a new session
        meanwhile gets BUSY.  Wait for the replica to let go."""
        def free():
            r = self.rep.ctl("status", self.vm, "--json")
            return r.rc != 0 or json.loads(r.out)["vms"][0]["state"] != "syncing"
        wait_for(free, 10, 0.05, what="the replica to release %s" % self.vm)

    def ctx(self, cert="primary", pki=None, **kw):
        pki = pki or self.env.pki
        return wp.tls_context(os.path.join(pki, cert + ".pem") if cert else None,
                              os.path.join(pki, cert + ".key") if cert else None,
                              os.path.join(self.env.pki, "ca.pem"), **kw)

    def connect(self, cert="primary"):
        """A TLS 1.3 connection with a certificate the replica accepts."""
        return wp.tls_connect(self.rep.port, self.ctx(cert))

    def session(self):
        """Connect as "primary" and HELLO for the VM exactly as the real
        primary would; returns (conn, welcome).  The replica answers BUSY
        while it still holds the real primary's previous session, so retry
        on BUSY until a deadline."""
        got = {}

        def attempt():
            c = self.connect()
            c.send(wp.hello(self.vm, self.disk_list()))
            fr = c.recv_frame()
            if fr is not None and fr[0] == wp.WELCOME:
                got["w"] = (c, wp.decode_welcome(fr[1]))
                return True
            c.close()
            if fr is not None and fr[0] == wp.NACK and wp.decode_nack(fr[1])[0] == wp.NACK_BUSY:
                return False
            raise TestFailure("a well-formed HELLO for %s got %s" % (self.vm, wp.describe(fr)))
        wait_for(attempt, 10, 0.1, what="the replica to take a session for %s" % self.vm)
        return got["w"]


def refused(pair, what, exchange, nack=None, log=(), legit=True):
    """Run one hostile exchange and check outcomes (a) to (d).

    exchange() opens a connection, sends the hostile bytes and returns the
    Conn.  nack: the expected NACK code, or None when the replica must just
    close (failed TLS handshake, truncated frame).  log: substrings of the
    replica log line the case must produce (besides the client's address).
    """
    state_vm = pair.vm
    before = replica_state(pair.rep, state_vm)
    mark = LogMark(pair.rep)
    conn = exchange()
    try:
        if nack is not None:
            fr = conn.recv_frame(15)
            check(fr is not None and fr[0] == wp.NACK, "%s: expected NACK %s, got %s"
                  % (what, wp.NACK_NAMES[nack], wp.describe(fr)))
            code, reason = wp.decode_nack(fr[1])
            check(code == nack, "%s: expected NACK %d (%s), got %s"
                  % (what, nack, wp.NACK_NAMES[nack], wp.describe(fr)))
            check(reason.strip(), "%s: NACK without a reason" % what)
        check(conn.wait_closed(10), "%s: the replica kept the connection open" % what)
    finally:
        conn.close()
    mark.wait(conn.addr, *log, what="%s: replica log line" % what)
    wait_state_unchanged(pair.rep, state_vm, before, what)
    staging = os.path.join(pair.rep.storage, state_vm, ".staging")
    if os.path.isdir(staging):
        left = {f: os.path.getsize(os.path.join(staging, f)) for f in os.listdir(staging)}
        check("index" not in left and not left.get("data"), "%s: staging holds %r" % (what, left))
    check(pair.rep.alive(), "%s: the replica died:\n%s" % (what, pair.rep.log_text()[-3000:]))
    if legit:
        pair.wait_released()
        pair.legit_sync("after " + what)


class Cases:
    """Run several cases in one test; each is checked on its own and every
    failure is reported (with its name) at the end."""

    def __init__(self, pair):
        self.pair = pair
        self.failures = []
        self.count = 0

    def run(self, name, fn, *args, **kw):
        self.count += 1
        try:
            fn(self.pair, name, *args, **kw)
        except (TestFailure, OSError) as e:
            msg = str(e)
            self.failures.append(msg if msg.startswith(name) else "%s: %s" % (name, msg))
        if not self.pair.rep.alive():
            # Report the crash, then restart so later cases still run.
            self.failures.append("%s: the replica DIED; log tail:\n%s"
                                 % (name, self.pair.rep.log_text()[-1500:]))
            self.pair.rep.start()

    def done(self):
        if self.failures:
            raise TestFailure("%d of %d cases failed:\n  - %s"
                              % (len(self.failures), self.count, "\n  - ".join(self.failures)))


def in_session(pair, build):
    """An exchange: a session as "primary" (HELLO, WELCOME), then the frames
    build(pair, welcome) returns."""
    def exchange():
        c, w = pair.session()
        c.send(build(pair, w))
        return c
    return exchange


def new_block(pair, disk=0, block=1):
    """A valid RAW DATA frame with fresh random content for one block; sent
    before the bad frame of a case, so that wrongly applying the cycle
    would show in the image."""
    size = pair.sizes()[disk]
    off = block * BS
    n = min(BS, size - off)
    return off, pair.env.rng.randbytes(n)


def valid_start(pair, w, dig=None):
    """CYCLE (next id, current sizes) and one valid RAW DATA frame."""
    cyc = w["last_cycle"] + 1
    off, content = new_block(pair)
    return cyc, wp.cycle(cyc, pair.sizes()) + wp.data_raw(0, off, content, digest=dig)


def zstd_compress(b):
    return subprocess.run(["zstd", "-q", "-c", "-1"], input=b, capture_output=True, check=True).stdout


# --- 1-5: who may talk to the replica ----------------------------------------

def test_rogue_ca_certificate(env):
    """A certificate named "primary" from another CA: the handshake fails."""
    pair = Pair(env)
    rogue = env.make_pki("rogue", ["primary"])

    def exchange():
        c = wp.tcp_connect(pair.rep.port)
        try:
            c.handshake(pair.ctx("primary", pki=rogue))
        except (ssl.SSLError, OSError):
            return c            # refused during the handshake
        c.send(wp.hello(VM, pair.disk_list()))   # TLS 1.3: refused on the first read
        fr = c.recv_frame()
        check(fr is None, "rogue-CA client got %s" % wp.describe(fr))
        return c
    refused(pair, "client certificate from another CA", exchange, log=("TLS handshake failed",))


def test_no_client_certificate(env):
    pair = Pair(env)

    def exchange():
        c = wp.tcp_connect(pair.rep.port)
        try:
            c.handshake(pair.ctx(None))
        except (ssl.SSLError, OSError):
            return c
        c.send(wp.hello(VM, pair.disk_list()))
        fr = c.recv_frame()
        check(fr is None, "client without a certificate got %s" % wp.describe(fr))
        return c
    refused(pair, "no client certificate", exchange, log=("TLS handshake failed",))


def test_unaccepted_certificate(env):
    """Cert "other" is signed by the right CA but has no [accept other]."""
    pair = Pair(env)

    def exchange():
        c = pair.connect("other")
        c.send(wp.hello(VM, pair.disk_list()))
        return c
    refused(pair, "identity without [accept] entry", exchange, nack=wp.NACK_DENIED,
            log=("session refused", "other", "may not replicate"))


def test_vm_pattern_denied(env):
    """[accept primary] vms = db*: a HELLO for web01 is denied, nothing of
    web01 appears on the replica; db01 still replicates."""
    pair = Pair(env, vm="db01", vms="db*")
    before_web = replica_state(pair.rep, "web01")
    check(before_web["status"] is None and not before_web["files"], "web01 exists before the test")

    def exchange():
        c = pair.connect()
        c.send(wp.hello("web01", pair.disk_list()))
        return c
    refused(pair, "VM outside the accepted pattern", exchange, nack=wp.NACK_DENIED,
            log=("session refused", "web01", "may not replicate"))
    after_web = replica_state(pair.rep, "web01")
    check(after_web == before_web, "web01 left traces on the replica: %r" % after_web)
    check(not os.path.exists(os.path.join(pair.rep.storage, "web01")), "storage for web01 was created")
    check(pair.rep.ctl("points", "web01").rc == 1, "the replica lists points of web01")


def test_plaintext_client(env):
    """A plain TCP client sending garbage: closed, "TLS handshake failed"."""
    pair = Pair(env)

    def exchange():
        c = wp.tcp_connect(pair.rep.port)
        c.send(b"GET / HTTP/1.0\r\nHost: replica\r\n\r\n" + env.rng.randbytes(2000))
        return c
    refused(pair, "plaintext garbage", exchange, log=("TLS handshake failed",))

    def exchange_frames():
        c = wp.tcp_connect(pair.rep.port)    # protocol frames without TLS
        c.send(wp.hello(VM, pair.disk_list()))
        return c
    refused(pair, "plaintext HELLO", exchange_frames, log=("TLS handshake failed",))


def test_tls12_client(env):
    """A client offering at most TLS 1.2 cannot complete a handshake."""
    pair = Pair(env)
    outcome = {}

    def exchange():
        c = wp.tcp_connect(pair.rep.port)
        try:
            c.handshake(pair.ctx("primary", max_version=ssl.TLSVersion.TLSv1_2,
                                 min_version=ssl.TLSVersion.TLSv1_2))
            outcome["handshake"] = "completed"
        except (ssl.SSLError, OSError) as e:
            outcome["handshake"] = "failed: %r" % (e,)
        return c
    refused(pair, "TLS 1.2 only client", exchange, log=("TLS handshake failed",))
    check(outcome["handshake"].startswith("failed"),
          "a TLS 1.2 handshake %s" % outcome["handshake"])


# --- 6: malformed frames from an accepted client ---------------------------

def test_malformed_frames(env):
    """Truncated frames, oversized and zero lengths, unknown types, a bad
    magic or version: PROTOCOL (or a logged close), nothing written."""
    pair = Pair(env)
    cases = Cases(pair)

    def raw_after_tls(b):
        def exchange():
            c = pair.connect()
            c.send(b)
            return c
        return exchange

    def truncated_then_close(b):
        def exchange():
            c = raw_after_tls(b)()
            # the replica reads the partial frame, then the end
            check(c.finish_and_wait(), "the replica kept the connection open after its end")
            c.close()
            return c
        return exchange

    hello = wp.hello(VM, pair.disk_list())
    cases.run("truncated HELLO then close", refused,
              truncated_then_close(hello[:len(hello) - 7]))

    def truncated_data(pair, w):
        cyc, start = valid_start(pair, w)
        off, content = new_block(pair, block=2)
        fr = wp.data_raw(0, off, content)
        return start + fr[:len(fr) // 2]

    def exchange_truncated_data():
        c = in_session(pair, truncated_data)()
        check(c.finish_and_wait(), "the replica kept the connection open after its end")
        c.close()
        return c
    cases.run("truncated DATA mid-cycle then close", refused, exchange_truncated_data,
              log=("closed the connection during cycle", "nothing of it is applied"))

    too_big = struct.pack(">IB", wp.MAX_FRAME + 1, wp.DATA)
    cases.run("frame length > WIRE_MAX_FRAME before HELLO", refused, raw_after_tls(too_big + b"x" * 64),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad frame header"))
    cases.run("frame length > WIRE_MAX_FRAME after WELCOME", refused,
              in_session(pair, lambda p, w: too_big + b"x" * 64),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad frame header"))
    cases.run("frame length > WIRE_MAX_FRAME in a cycle", refused,
              in_session(pair, lambda p, w: valid_start(p, w)[1] + struct.pack(">IB", 0xFFFFFFFF, wp.DATA)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad frame header"))
    cases.run("frame length 0", refused, raw_after_tls(struct.pack(">IB", 0, wp.HELLO) + b"\0" * 16),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad frame header"))
    cases.run("unknown frame type before HELLO", refused, raw_after_tls(wp.frame(99, b"\0" * 20)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad frame header"))
    cases.run("unknown frame type in a cycle", refused,
              in_session(pair, lambda p, w: valid_start(p, w)[1] + wp.frame(0, b"\0" * 20)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad frame header"))
    cases.run("DATA instead of HELLO", refused, raw_after_tls(wp.data_zero(0, 0, BS)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "expected HELLO"))
    cases.run("HELLO with a bad magic", refused,
              raw_after_tls(wp.hello(VM, pair.disk_list(), magic=0x52504C45)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.run("HELLO of protocol version 1", refused,
              raw_after_tls(wp.hello(VM, pair.disk_list(), version=1)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.run("HELLO of protocol version 5 (newer than the replica)", refused,
              raw_after_tls(wp.hello(VM, pair.disk_list(), version=wp.VERSION_CURRENT + 1)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.run("HELLO with trailing bytes", refused,
              raw_after_tls(wp.frame(wp.HELLO, wp.hello(VM, pair.disk_list())[5:] + b"\0")),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.run("HELLO with block size 3000", refused,
              raw_after_tls(wp.hello(VM, pair.disk_list(), block_size=3000)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.run("HELLO announcing 65 disks", refused,
              raw_after_tls(wp.hello(VM, [("d%d" % i, BS) for i in range(65)])),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.run("HELLO with generation 0", refused,
              raw_after_tls(wp.hello(VM, pair.disk_list(), generation=0)),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.done()


def test_hello_unsafe_names(env):
    """VM and disk names that could escape the storage directory or hide
    in it: PROTOCOL, and no file or directory appears anywhere."""
    pair = Pair(env)
    top = sorted(os.listdir(env.dir))
    rep_top = sorted(os.listdir(pair.rep.dir))
    cases = Cases(pair)

    def bad_hello(vm, disks):
        def exchange():
            c = pair.connect()
            c.send(wp.hello(vm, disks))
            return c
        return exchange

    ok_disks = pair.disk_list()
    for vm in ["../etc", "a/b", ".hidden", "", "..", "web01/../../x", "x" * 65, "web\n01", "web 01"]:
        cases.run("VM name %r" % vm, refused, bad_hello(vm, ok_disks),
                  nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    for disk in ["test", "../x", ".x", "a/b", "", ".staging", "y" * 65]:
        cases.run("disk name %r" % disk, refused, bad_hello("web02", [(disk, 1 << 20)]),
                  nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
        cases.run("disk name %r for the existing VM" % disk, refused,
                  bad_hello(VM, [(disk, 1 << 20), ok_disks[1]]),
                  nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.run("two disks with one name", refused, bad_hello("web02", [("a.img", BS), ("a.img", BS)]),
              nack=wp.NACK_PROTOCOL, log=("session refused", "bad HELLO"))
    cases.done()
    check(sorted(os.listdir(env.dir)) == top, "new entries in %s: %r" % (env.dir, os.listdir(env.dir)))
    check(sorted(os.listdir(pair.rep.dir)) == rep_top, "new entries in %s" % pair.rep.dir)
    check(sorted(os.listdir(pair.rep.storage)) == [VM], "storage holds %r" % os.listdir(pair.rep.storage))
    check(pair.rep.ctl("status", "web02").rc == 1, "web02 became a relationship")


def test_data_frames_out_of_bounds(env):
    """DATA frames that point outside the cycle, or whose content is not
    what they claim: BAD_DATA, nothing of the cycle applied."""
    pair = Pair(env)
    cases = Cases(pair)
    size0 = pair.sizes()[0]
    past_end = (size0 + BS - 1) // BS * BS

    def case(name, bad, code=wp.NACK_BAD_DATA, log=("session refused",)):
        cases.run(name, refused, in_session(pair, lambda p, w: valid_start(p, w)[1] + bad(p)),
                  nack=code, log=log)

    case("DATA ZERO at an offset past the disk end",
         lambda p: wp.data_zero(0, past_end, BS), log=("session refused", "DATA out of range"))
    case("DATA RAW at an offset past the disk end",
         lambda p: wp.data_raw(0, past_end, bytes(range(256)) * 256), log=("session refused", "DATA out of range"))
    case("DATA ZERO running past the disk end",
         lambda p: wp.data_zero(0, past_end - 2 * BS, 4 * BS), log=("session refused", "DATA out of range"))
    case("DATA with offset 2^64-64K",
         lambda p: wp.data_zero(0, (1 << 64) - BS, BS), log=("session refused", "DATA out of range"))
    case("DATA with disk index 2 of 2",
         lambda p: wp.data_zero(2, 0, BS), log=("session refused", "DATA out of range"))
    case("DATA with disk index 65535",
         lambda p: wp.data_raw(65535, 0, b"\1" * BS), log=("session refused", "DATA out of range"))
    case("DATA at an offset not a multiple of the block size",
         lambda p: wp.data_raw(0, 4096, b"\1" * BS), log=("session refused", "DATA out of range"))
    case("DATA RAW shorter than a block",
         lambda p: wp.data_raw(0, BS, b"\1" * 4096), log=("session refused", "DATA out of range"))
    case("DATA RAW whose content does not match its hash",
         lambda p: wp.data_raw(0, 2 * BS, b"\2" * BS, hash16=wp.xxh128(b"\3" * BS)),
         log=("session refused", "content does not match its hash"))
    case("DATA RAW on the short last block with a wrong hash",
         lambda p: wp.data_raw(0, size0 // BS * BS, b"\2" * (size0 % BS), hash16=bytes(range(16))),
         log=("session refused", "content does not match its hash"))
    case("DATA ZSTD with a garbage payload",
         lambda p: wp.data(0, 2 * BS, BS, wp.ENC_ZSTD, wp.xxh128(b"\0" * BS), p.env.rng.randbytes(3000)),
         log=("session refused", "cannot decompress"))
    case("DATA ZSTD with a zstd magic and garbage after it",
         lambda p: wp.data(0, 2 * BS, BS, wp.ENC_ZSTD, wp.xxh128(b"\0" * BS),
                           b"\x28\xb5\x2f\xfd" + p.env.rng.randbytes(500)),
         log=("session refused", "cannot decompress"))
    big = zstd_compress(b"\0" * (4 * BS))
    case("DATA ZSTD that decompresses to 4 blocks (declared 1)",
         lambda p: wp.data(0, 2 * BS, BS, wp.ENC_ZSTD, wp.xxh128(b"\0" * BS), big),
         log=("session refused", "cannot decompress"))
    good = b"\5" * BS
    case("DATA ZSTD valid frame but the wrong hash",
         lambda p: wp.data(0, 2 * BS, BS, wp.ENC_ZSTD, wp.xxh128(b"\6" * BS), zstd_compress(good)),
         log=("session refused", "content does not match its hash"))
    case("DATA ZERO with a non-zero hash",
         lambda p: wp.data(0, 2 * BS, BS, wp.ENC_ZERO, b"\1" * 16),
         code=wp.NACK_PROTOCOL, log=("session refused", "bad DATA frame"))
    case("DATA with encoding 7",
         lambda p: wp.data(0, 2 * BS, BS, 7, b"\0" * 16, b"\0" * BS),
         code=wp.NACK_PROTOCOL, log=("session refused", "bad DATA frame"))
    case("DATA RAW with a payload longer than its length",
         lambda p: wp.data(0, 2 * BS, BS, wp.ENC_RAW, wp.xxh128(b"\0" * BS), b"\0" * (BS + 1)),
         code=wp.NACK_PROTOCOL, log=("session refused", "bad DATA frame"))
    cases.done()


def test_end_frames_wrong(env):
    """END records that do not describe the cycle received: BAD_DATA."""
    pair = Pair(env)
    cases = Cases(pair)

    def case(name, make_end):
        def build(p, w):
            dig = wp.CycleDigest()
            cyc, frames = valid_start(p, w, dig)
            frames += wp.data_zero(1, 3 * BS, 2 * BS, digest=dig)
            return frames + make_end(cyc, dig)
        cases.run(name, refused, in_session(pair, build), nack=wp.NACK_BAD_DATA,
                  log=("session refused", "does not match its END record"))

    def flip(b):
        return bytes([b[0] ^ 1]) + b[1:]
    case("END with a wrong digest", lambda c, d: wp.end(c, d.nframes, d.raw_bytes, flip(d.final())))
    case("END with a wrong frame count", lambda c, d: wp.end(c, d.nframes + 1, d.raw_bytes, d.final()))
    case("END with too few frames", lambda c, d: wp.end(c, d.nframes - 1, d.raw_bytes, d.final()))
    case("END with wrong raw bytes", lambda c, d: wp.end(c, d.nframes, d.raw_bytes + BS, d.final()))
    case("END for another cycle id", lambda c, d: wp.end(c + 1, d.nframes, d.raw_bytes, d.final()))
    cases.done()


def test_session_order_violations(env):
    """Valid frames in the wrong place, and CYCLEs the replica's state
    forbids: refused with the code of wire.h, nothing applied."""
    pair = Pair(env)
    cases = Cases(pair)
    hello = wp.hello(VM, pair.disk_list())

    def case(name, build, code, *log):
        cases.run(name, refused, in_session(pair, build), nack=code, log=("session refused",) + log)

    case("second HELLO between cycles", lambda p, w: hello, wp.NACK_PROTOCOL, "unexpected hello")
    case("second HELLO inside a cycle", lambda p, w: valid_start(p, w)[1] + hello,
         wp.NACK_PROTOCOL, "unexpected hello")
    case("DATA before any CYCLE", lambda p, w: wp.data_zero(0, 0, BS), wp.NACK_PROTOCOL, "unexpected data")
    case("END before any CYCLE", lambda p, w: wp.end(w["last_cycle"] + 1, 0, 0, bytes(16)),
         wp.NACK_PROTOCOL, "unexpected end")
    case("CYCLE inside a cycle", lambda p, w: valid_start(p, w)[1] + wp.cycle(w["last_cycle"] + 2, p.sizes()),
         wp.NACK_PROTOCOL, "unexpected cycle")
    case("ACK from the primary", lambda p, w: wp.ack(1, 1), wp.NACK_PROTOCOL, "unexpected ack")
    case("WELCOME from the primary", lambda p, w: wp.frame(wp.WELCOME, struct.pack(">HQQQ", 1, 1, 0, 0)),
         wp.NACK_PROTOCOL, "unexpected welcome")
    case("CYCLE id 0", lambda p, w: wp.cycle(0, p.sizes()), wp.NACK_PROTOCOL, "bad CYCLE")
    case("CYCLE with kind 7", lambda p, w: wp.cycle(w["last_cycle"] + 1, p.sizes(), kind=7),
         wp.NACK_PROTOCOL, "bad CYCLE")
    case("CYCLE with 1 disk, HELLO had 2", lambda p, w: wp.cycle(w["last_cycle"] + 1, p.sizes()[:1]),
         wp.NACK_PROTOCOL, "CYCLE has 1 disks")
    case("CYCLE with 64 disks, HELLO had 2", lambda p, w: wp.cycle(w["last_cycle"] + 1, [BS] * 64),
         wp.NACK_PROTOCOL, "CYCLE has 64 disks")

    def stale(p, w):
        check(w["last_cycle"] >= 1, "WELCOME says no cycle applied yet: %r" % w)
        off, content = new_block(p)
        return wp.cycle(w["last_cycle"], p.sizes()) + wp.data_raw(0, off, content)
    # A cycle id not above the replica's last_cycle breaks wire.h's rule for
    # CYCLE: a malformed or unexpected frame, i.e. PROTOCOL.
    case("CYCLE whose id is the replica's last cycle", stale, wp.NACK_PROTOCOL, "not newer")

    def older(p, w):
        off, content = new_block(p)
        return wp.cycle(1, p.sizes()) + wp.data_raw(0, off, content)
    case("CYCLE whose id is older than the replica's last cycle", older, wp.NACK_PROTOCOL, "not newer")

    def shrink(p, w):
        sizes = p.sizes()
        sizes[0] -= BS
        return wp.cycle(w["last_cycle"] + 1, sizes) + wp.data_zero(1, 0, BS)
    case("CYCLE that shrinks a disk", shrink, wp.NACK_MISMATCH, "shrank")

    def huge(p, w):
        return wp.cycle(w["last_cycle"] + 1, [p.sizes()[0], 1 << 62]) + wp.data_zero(1, (1 << 62) - BS, BS)
    case("CYCLE growing a disk to 2^62 bytes", huge, wp.NACK_MISMATCH, "too large")

    cases.run("HELLO with the disks in another order", refused,
              lambda: _hello_only(pair, list(reversed(pair.disk_list()))),
              nack=wp.NACK_MISMATCH, log=("session refused", "disk 0 is"))
    cases.run("HELLO with another block size", refused,
              lambda: _hello_only(pair, pair.disk_list(), block_size=4096),
              nack=wp.NACK_MISMATCH, log=("session refused", "block size"))
    cases.done()


def _hello_only(pair, disks, **kw):
    c = pair.connect()
    c.send(wp.hello(VM, disks, **kw))
    return c


def test_grown_disk_rolled_back(env):
    """A CYCLE that grows a disk lets DATA beyond the old end go straight to
    the image; when the cycle is then refused or cut off, the image must be
    cut back: same size, same bytes, same points."""
    pair = Pair(env)
    cases = Cases(pair)

    def grow(p, w):
        sizes = p.sizes()
        old = sizes[1]
        sizes[1] = old + 3 * BS
        cyc = w["last_cycle"] + 1
        return (wp.cycle(cyc, sizes) + wp.data_raw(1, old, p.env.rng.randbytes(BS))
                + wp.data_raw(1, old + BS, p.env.rng.randbytes(BS)))

    cases.run("grow, write beyond the old end, then a bad hash", refused,
              in_session(pair, lambda p, w: grow(p, w) + wp.data_raw(0, 0, b"\7" * BS, hash16=bytes(16))),
              nack=wp.NACK_BAD_DATA, log=("session refused", "content does not match its hash"))

    def cut_off():
        c = in_session(pair, grow)()
        # The replica has written beyond the old end before the cut.
        old = pair.sizes()[1]
        wait_for(lambda: os.path.getsize(pair.replica_image(1)) > old, 30, 0.01,
                 what="the replica to write beyond the old end of sdb.img")
        check(c.finish_and_wait(), "the replica kept the connection open after its end")
        c.close()
        return c
    cases.run("grow, write beyond the old end, then the connection drops", refused, cut_off,
              log=("closed the connection during cycle",))

    def bad_end():
        def build(p, w):
            sizes = p.sizes()
            old = sizes[1]
            sizes[1] = old + 2 * BS
            dig = wp.CycleDigest()
            cyc = w["last_cycle"] + 1
            fr = wp.cycle(cyc, sizes) + wp.data_raw(1, old, p.env.rng.randbytes(BS), digest=dig)
            return fr + wp.end(cyc, dig.nframes, dig.raw_bytes, bytes(16))
        return in_session(pair, build)()
    cases.run("grow, write beyond the old end, then a wrong END digest", refused, bad_end,
              nack=wp.NACK_BAD_DATA, log=("session refused", "END record"))
    cases.done()


def test_wireproto_valid_cycle_is_applied(env):
    """Control for every case above: a cycle made by hand with these
    encoders (RAW with xxhsum hashes, ZERO, the END digest) is accepted and
    applied, so each refusal above is due to the one field the case breaks.
    Also checks xxhsum's byte order against the replica's .digests file."""
    pair = Pair(env)
    c, w = pair.session()
    before = replica_state(pair.rep, VM)
    size0 = pair.sizes()[0]
    dig = wp.CycleDigest()
    cyc = w["last_cycle"] + 1
    blk = env.rng.randbytes(BS)
    tail_off = size0 // BS * BS
    tail = env.rng.randbytes(size0 - tail_off)
    frames = (wp.cycle(cyc, pair.sizes(), kind=1) + wp.data_raw(0, BS, blk, digest=dig)
              + wp.data_raw(0, tail_off, tail, digest=dig) + wp.data_zero(0, 3 * BS, 2 * BS, digest=dig)
              + wp.data_zero(1, 0, 1 << 20, digest=dig))
    c.send(frames + wp.end_of(cyc, dig))
    fr = c.recv_frame(30)
    check(fr is not None and fr[0] == wp.ACK, "a valid hand-made cycle got %s\n%s"
          % (wp.describe(fr), pair.rep.log_text()[-2000:]))
    a = wp.decode_ack(fr[1])
    check(a["cycle"] == cyc and a["point"] == w["last_point"] + 1, "ACK %r after WELCOME %r" % (a, w))
    c.close()
    img = pair.replica_image(0)
    with open(img, "rb") as f:
        f.seek(BS)
        check(f.read(BS) == blk, "block 1 not applied")
        f.seek(3 * BS)
        check(f.read(2 * BS) == bytes(2 * BS), "zero extent not applied")
        f.seek(tail_off)
        check(f.read() == tail, "short last block not applied")
    with open(os.path.join(pair.rep.storage, VM, ".digests", "sda.img"), "rb") as f:
        f.seek(16)
        check(f.read(16) == wp.xxh128(blk), "xxhsum -H2 and the replica disagree on the digest of block 1")
    after = replica_state(pair.rep, VM)
    check(after["points"] != before["points"], "no new point listed")
    pts = json.loads(after["points"][1])
    check(pts[-1]["kind"] == "app", "hand-made application-consistent point listed as %r" % pts[-1])
    pair.rep.ok("verify", VM)
    # The real primary notices the replica moved and sends what differs.
    pair.legit_sync("primary after a foreign cycle")


# --- 7: idle clients ------------------------------------------------------

def test_idle_connections_do_not_block(env):
    """Clients that connect and send nothing (plain TCP, half a TLS
    ClientHello, a finished handshake, half a HELLO) hold no lock: a
    legitimate sync goes through while they stay open."""
    pair = Pair(env, first_sync=False)
    mark = LogMark(pair.rep)
    idle = []
    try:
        idle.append(wp.tcp_connect(pair.rep.port))
        half = wp.tcp_connect(pair.rep.port)
        half.send(b"\x16\x03\x01\x02\x00\x01\x00")      # the start of a ClientHello
        idle.append(half)
        idle.append(pair.connect())
        h = wp.hello(VM, pair.disk_list())
        part = pair.connect()
        part.send(h[:9])
        idle.append(part)
        pair.legit_sync("first sync with idle connections open")
        pair.legit_sync("second sync with idle connections open")
        # The syncs did not wait for the idle clients to go: all of them
        # are still open.
        for c in idle:
            check(not c.wait_closed(0.2), "an idle connection (%s) was closed before the syncs were done"
                  % c.addr)
        # A session that completed HELLO for another VM does not block this one.
        other = pair.connect()
        other.send(wp.hello("web02", [("x.img", BS)]))
        fr = other.recv_frame()
        check(fr is not None and fr[0] == wp.WELCOME, "HELLO for web02 got %s" % wp.describe(fr))
        idle.append(other)
        pair.legit_sync("sync while another VM's session idles")
    finally:
        for c in idle:
            c.close()
    check(pair.rep.alive(), "replica died")
    check("session refused" not in mark.new(), "a session was refused:\n%s" % mark.new())
    pair.rep.ok("status")
    pair.legit_sync("after the idle clients left")


# --- 8: control socket abuse ------------------------------------------------

def test_control_socket_abuse(env):
    """Garbage, oversized lengths, malformed and unknown requests on the
    control socket: an error (exit 2) or a close, the daemon lives on and
    `replctl status` works after each."""
    pair = Pair(env)
    sock = pair.rep.socket
    failures = []
    mark = LogMark(pair.rep)

    def case(name, raw, expect_code=2, err_has=None, must_answer=True):
        cmark = LogMark(pair.rep)
        try:
            code, out, err, closed = wp.ctl_exchange(sock, raw, timeout=10)
            r = pair.rep.ctl("status", timeout=20)
            if r.rc != 0:
                try:
                    pair.rep.proc.wait(2)
                except subprocess.TimeoutExpired:
                    pass
            if not pair.rep.alive():
                raise TestFailure("the daemon DIED (exit %s) after answering %r; log:\n%s"
                                  % (pair.rep.proc.returncode, err, cmark.new()[-600:]))
            check(r.rc == 0 and VM in r.out, "replctl status afterwards: %r" % r)
            check(closed, "the daemon neither answered nor closed within 10 s")
            if must_answer:
                check(code == expect_code, "exit code %r, want %d (out %r err %r)"
                      % (code, expect_code, out, err))
                if err_has:
                    check(err_has in err, "error %r lacks %r" % (err, err_has))
            else:
                check(code in (None, expect_code), "exit code %r" % code)
        except (TestFailure, OSError) as e:
            failures.append("%s: %s" % (name, e))
        if not pair.rep.alive():
            pair.rep.start()     # so that the remaining cases still run

    req = wp.ctl_request
    case("random garbage", b"\x00\x00\x00\x20" + env.rng.randbytes(0x20), err_has="bad request")
    case("HTTP request", b"GET / HTTP/1.0\r\n\r\n", err_has="bad request")
    case("length 0xFFFFFFFF", b"\xff\xff\xff\xff" + b"x" * 100, err_has="bad request")
    case("length CTL_MAX_REQUEST + 1, body sent", struct.pack(">I", wp.CTL_MAX_REQUEST + 1)
         + b"\x01\x01" + b"a" * (wp.CTL_MAX_REQUEST - 1), err_has="bad request")
    case("version 9", req(["status"], version=9), err_has="bad request")
    case("argc 0", struct.pack(">IBB", 2, 1, 0), err_has="bad request")
    case("argc 33", req(["status"] + ["x"] * 32), err_has="bad request")
    case("argc says 3, one argument", struct.pack(">IBB", 2 + 2 + 6, 1, 3) + wp.wstr("status"),
         err_has="bad request")
    case("empty argument", req(["status", ""]), err_has="bad request")
    case("argument with a NUL", req(["status", "web\x0001"]), err_has="bad request")
    case("argument longer than CTL_MAX_ARG", req(["status", "a" * (wp.CTL_MAX_ARG + 1)]),
         err_has="bad request")
    r = req(["status"])
    case("a byte after the arguments, inside the frame",
         struct.pack(">I", len(r) - 4 + 1) + r[4:] + b"\0", err_has="bad request")
    case("a second request after the first", r + req(["frobnicate"]), expect_code=0)
    case("unknown command", req(["frobnicate", VM]), err_has="unknown command")
    case("unknown option", req(["status", "--frob"]), err_has="unknown option")
    case("bad VM name", req(["points", "../etc"]), err_has="bad argument")
    case("VM name with a newline", req(["verify", "web01\nFAKE LOG LINE"]), err_has="bad argument")
    forged = [ln for ln in mark.new().splitlines() if ln.startswith("FAKE LOG LINE")]
    if forged:
        failures.append("a control request forged a log line: %r" % forged)
    case("bad point id after a VM", req(["failover", VM, "--test", "--point", "0x10"]),
         err_has="bad point")
    case("unknown option after a VM", req(["sync", VM, "--frob"]), err_has="unknown option")
    case("two VM names", req(["sync", VM, "web02"]), err_has="bad argument")
    case("sync without a VM", req(["sync"]), err_has="VM name is required")
    case("truncated request, then close", req(["status"])[:7], must_answer=False)
    case("connect and close at once", b"", must_answer=False)

    # Idle and half-sent requests held open do not stop other requests.
    held = []
    try:
        for i in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            if i % 2:
                s.sendall(req(["status", "--json"])[:6])
            held.append(s)
        r = pair.rep.ctl("status", timeout=20)
        if r.rc != 0:
            failures.append("status with 20 idle control connections: %r" % r)
    finally:
        for s in held:
            s.close()
    check(pair.rep.alive(), "the daemon died:\n%s" % pair.rep.log_text()[-2000:])
    pair.legit_sync("after control socket abuse")
    if failures:
        raise TestFailure("%d control-socket cases failed:\n  - %s" % (len(failures), "\n  - ".join(failures)))


def test_control_socket_permissions(env):
    """The control socket is mode 0600, and even when its mode is loosened
    the daemon refuses a peer that is neither root nor its own user
    (SO_PEERCRED).  The other user runs a copy of replctl from a directory
    of its own under /tmp, and the socket lives there too: the checkout
    and TMPDIR may be where others cannot enter (a home directory of mode
    700, a mktemp -d)."""
    import shutil
    import stat
    import subprocess
    import tempfile
    from harness import REPLCTL, Daemon, free_port, wait_for
    shared = tempfile.mkdtemp(prefix="replicad-perm-", dir="/tmp")
    try:
        os.chmod(shared, 0o755)
        d = shared
        while d != "/":          # every parent lets others through
            d = os.path.dirname(d)
            check(os.stat(d).st_mode & stat.S_IXOTH, "%s cannot be entered by others" % d)
        ctl = os.path.join(shared, "replctl")
        shutil.copy(REPLCTL, ctl)
        os.chmod(ctl, 0o755)
        sock = os.path.join(shared, "control.sock")

        class SharedSocket(Daemon):
            socket = sock
        rep = SharedSocket(env, "replica", "replica", "listen = 127.0.0.1:%d\ncontrol_socket = %s\n"
                           % (free_port(), sock)).start()
        mode = stat.S_IMODE(os.stat(sock).st_mode)
        check(mode == 0o600, "control socket mode is %o" % mode)
        os.chmod(sock, 0o666)

        def as_nobody():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        # The other user can run the copy: a refusal below is the daemon's.
        p = subprocess.run([ctl, "--help"], capture_output=True, text=True, preexec_fn=as_nobody,
                           cwd=shared, timeout=30)
        check(p.returncode == 0, "nobody cannot run %s: rc=%d err=%r" % (ctl, p.returncode, p.stderr))
        p = subprocess.run([ctl, "-s", sock, "status"], capture_output=True, text=True,
                           preexec_fn=as_nobody, cwd=shared, timeout=30)
        check(p.returncode != 0 and "status" not in p.stdout.lower(),
              "an unprivileged user got an answer: rc=%d out=%r" % (p.returncode, p.stdout))
        wait_for(lambda: "connection from uid 65534 refused" in rep.log_text(), 10,
                 what="the refusal in the log")
        rep.ok("status")
        rep.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_takeover_of_an_idle_stale_session(env):
    """A primary whose old connection went silent (host crash behind a
    half-open TCP connection) reconnects: the new session replaces the old
    one at once instead of being refused."""
    pair = Pair(env)
    a, wa = pair.session()            # owns the VM, then says nothing
    b = pair.connect()
    b.send(wp.hello(VM, pair.disk_list()))
    fr = b.recv_frame(10)
    check(fr is not None and fr[0] == wp.WELCOME,
          "the new session got %s instead of WELCOME" % wp.describe(fr))
    # and it works: a real cycle through the new session is applied
    dig = wp.CycleDigest()
    cyc = wa["last_cycle"] + 1
    frames = wp.cycle(cyc, pair.sizes())
    frames += wp.data_zero(0, 0, BS, digest=dig)
    b.send(frames + wp.end_of(cyc, dig))
    fr = b.recv_frame(30)
    check(fr is not None and fr[0] == wp.ACK, "cycle on the new session: %s" % wp.describe(fr))
    check("replaces the one from" in pair.rep.log_text(), "takeover not logged")
    a.close()
    b.close()
    pair.wait_released()
    pair.legit_sync("after a takeover")
