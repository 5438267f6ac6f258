#!/usr/bin/env python3
"""A seeded fault-injecting TCP proxy for the fault campaigns.

Every connection accepted on the listening port is relayed to the target
port, and gets one fault drawn from (seed, connection number) alone, so the
n-th connection of a run with seed S always meets the same fault whatever
the timing:

  pass       relayed untouched
  cut        both sides closed after OFFSET bytes of one direction
  rst        the same, with SO_LINGER 0: both sides see a reset
  stall      nothing more of one direction after OFFSET bytes for TICKS
             ticks, then it goes on ("resume") or both sides close ("cut")
  throttle   at most RATE bytes per tick in one direction
  halfclose  after OFFSET bytes the receiver of one direction sees EOF
             (shutdown); what the sender writes next is discarded
  handshake  a cut within the first 2 KiB of either direction (inside the
             TLS handshake)
  blackhole  after OFFSET bytes one direction is read and discarded: no
             data, no FIN, no reset ever reaches the other side

"up" is client to target (primary to replica), "down" the way back.  The
proxy never reads a direction past its fault's offset before the fault
fires, so the receiver gets exactly OFFSET bytes.  One thread polls every
socket; the selector's timeout is the tick (no sleep anywhere).  What
happened to each connection is kept in records (and printed with
verbose=True), so that a failure names the connection and its fault.

As a script:  faultproxy.py --target PORT [--listen PORT] --seed N
              [--kinds cut,rst,...]  prints one line per connection.
"""
import argparse
import errno
import random
import selectors
import socket
import struct
import sys
import threading
import time

KINDS = ("pass", "cut", "rst", "stall", "throttle", "halfclose", "handshake", "blackhole")
# Relative weights when every kind is allowed.
WEIGHTS = {"pass": 3, "cut": 3, "rst": 2, "stall": 2, "throttle": 2, "halfclose": 2,
           "handshake": 2, "blackhole": 1}
# Faults that leave a connection silent for as long as the peers allow:
# only a daemon's own keepalive or deadline ends them.
SILENT = ("blackhole",)
TICK = 0.01                      # seconds; the throttle's and the stall's unit
HIGH_WATER = 1 << 20             # stop reading a side while this much waits for the other
MAX_UP = 4 << 20                 # offsets: up to this far into the primary's stream
MAX_DOWN = 4 << 10               # and the replica's: about 3 KiB a cycle (TLS, WELCOME, ACK)


def plan(seed, n, kinds=KINDS):
    """The fault of connection n (1, 2, ...) of a run with this seed."""
    rng = random.Random("%d:%d" % (seed, n))
    kinds = [k for k in KINDS if k in kinds]
    kind = rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
    dirn = rng.choice(("up", "down"))
    far = MAX_UP if dirn == "up" else MAX_DOWN
    # log-uniform: as many faults in the first KiB as in the last MiB
    offset = int(2 ** rng.uniform(0, far.bit_length() - 1))
    if dirn == "down" and rng.random() < 0.5:
        offset = rng.randrange(2 << 10, 3 << 10)    # past the handshake: WELCOME, the ACK
    p = {"kind": kind}
    if kind in ("cut", "rst", "halfclose", "blackhole"):
        p.update(dir=dirn, offset=offset)
    elif kind == "stall":
        p.update(dir=dirn, offset=offset, ticks=rng.randrange(20, 400),
                 then=rng.choice(("resume", "cut")))
    elif kind == "throttle":
        p.update(dir=dirn, rate=int(2 ** rng.uniform(12, 17)))
    elif kind == "handshake":
        p.update(dir=dirn, offset=rng.randrange(0, 2048))
    return p


def describe(p):
    return " ".join([p["kind"]] + ["%s=%s" % (k, p[k]) for k in sorted(p) if k != "kind"])


class _Pipe:
    """One direction of a connection: bytes read from src wait in out for dst."""

    def __init__(self, name, src, dst):
        self.name, self.src, self.dst = name, src, dst
        self.out = bytearray()
        self.read = 0                   # bytes taken from src
        self.trigger = None             # fire the fault when read reaches this
        self.rate = None                # throttle: bytes per tick
        self.budget = 0
        self.eof = False                # src ended: read no more
        self.fin = False                # shut dst down for writing once out is empty
        self.shut = False               # done
        self.discard = False            # read src and drop it (blackhole, after halfclose)
        self.hold_until = None          # stall: tick at which reading resumes


class _Conn:
    def __init__(self, n, client, server, p):
        self.n, self.p = n, p
        self.up = _Pipe("up", client, server)
        self.down = _Pipe("down", server, client)
        self.socks = (client, server)
        self.fired = None               # what the fault did, and when
        self.closing = None             # "cut" / "rst": close once both outs are flushed
        self.ended = None
        pipe = {"up": self.up, "down": self.down}.get(p.get("dir"))
        if p["kind"] == "throttle":
            pipe.rate = p["rate"]
        elif pipe is not None:
            pipe.trigger = p["offset"]

    def pipes(self):
        return (self.up, self.down)


class FaultProxy:
    """start() returns at once; the proxy runs in one thread until close().
    faults = False makes new connections pass-through (running ones keep
    their fault; cut_all() ends them)."""

    def __init__(self, target, seed, kinds=KINDS, listen=0, verbose=False):
        self.target, self.seed, self.kinds = target, seed, tuple(kinds)
        self.verbose = verbose
        self.faults = True
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", listen))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.records = []               # one dict per connection, in order
        self.errors = []
        self._lock = threading.Lock()
        self._cut_all = None            # an Event to set once done
        self._stop = threading.Event()
        self._conns = {}                # socket -> _Conn
        self._tick = 0
        self.thread = None

    # --- control, from any thread --------------------------------------------

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def close(self):
        self._stop.set()
        if self.thread:
            self.thread.join(30)

    def cut_all(self):
        """Reset every open connection (a fault that never ends, ended);
        returns once the proxy's thread has done it."""
        done = threading.Event()
        with self._lock:
            self._cut_all = done
        if self.thread and self.thread.is_alive():
            done.wait(60)

    def open_connections(self):
        with self._lock:
            return [r for r in self.records if r["end"] is None]

    def counts(self):
        """{kind: connections that met it and where it fired}."""
        out = {}
        with self._lock:
            for r in self.records:
                if r["fired"]:
                    out[r["plan"]["kind"]] = out.get(r["plan"]["kind"], 0) + 1
        return out

    def summary(self, last=None):
        with self._lock:
            rs = self.records[-last:] if last else list(self.records)
        return "\n".join(self.line(r) for r in rs)

    @staticmethod
    def line(r):
        return "conn %d: %s; %s; up %d B, down %d B; %s" % (
            r["n"], describe(r["plan"]), r["fired"] or "fault not reached",
            r["up"], r["down"], r["end"] or "open")

    # --- the loop ------------------------------------------------------------

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        self.sel = sel
        next_tick = time.monotonic() + TICK
        try:
            while not self._stop.is_set():
                for key, mask in sel.select(max(0.0, next_tick - time.monotonic())):
                    if key.fileobj is self.sock:
                        self._accept()
                    elif key.fileobj in self._conns:
                        self._io(self._conns[key.fileobj], key.fileobj, mask)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK
                    self._on_tick()
        except Exception as e:  # noqa: BLE001 - kept for the failure message
            self.errors.append("faultproxy: %r" % e)
            raise
        finally:
            for c in set(self._conns.values()):
                self._end(c, "proxy closed", rst=True)
            sel.close()
            self.sock.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with self._lock:
                n = len(self.records) + 1
                p = plan(self.seed, n, self.kinds) if self.faults else {"kind": "pass"}
                rec = {"n": n, "plan": p, "fired": None, "up": 0, "down": 0, "end": None}
                self.records.append(rec)
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError as e:
                client.close()
                rec["end"] = "connect to %d failed: %s" % (self.target, e)
                continue
            for s in (client, server):
                s.setblocking(False)
            c = _Conn(n, client, server, p)
            c.rec = rec
            self._conns[client] = self._conns[server] = c
            self._watch(c)

    def _fire(self, c, pipe):
        """pipe has carried its offset: the fault happens now."""
        p = c.p
        pipe.trigger = None
        what = "%s at %s byte %d" % (p["kind"], pipe.name, pipe.read)
        if p["kind"] in ("cut", "handshake"):
            c.closing = "cut"
        elif p["kind"] == "rst":
            c.closing = "rst"
        elif p["kind"] == "stall":
            pipe.hold_until = self._tick + p["ticks"]
        elif p["kind"] == "halfclose":
            pipe.fin = pipe.discard = True
        elif p["kind"] == "blackhole":
            pipe.discard = True
        with self._lock:
            c.rec["fired"] = what
        if self.verbose:
            print("faultproxy: conn %d: %s" % (c.n, what), flush=True)

    def _on_tick(self):
        self._tick += 1
        with self._lock:
            cut, self._cut_all = self._cut_all, None
        if cut:
            for c in set(self._conns.values()):
                self._end(c, "cut by the test", rst=True)
            cut.set()
        for c in set(self._conns.values()):
            for pipe in c.pipes():
                pipe.budget = pipe.rate or 0
                if pipe.hold_until is not None and self._tick >= pipe.hold_until:
                    pipe.hold_until = None
                    if c.p.get("then") == "cut":
                        c.closing = "cut"
                        with self._lock:
                            c.rec["fired"] += ", then cut"
                    else:
                        with self._lock:
                            c.rec["fired"] += ", then resumed"
            if c in self._conns.values():
                self._io(c, None, 0)

    def _want_read(self, c, pipe):
        if c.closing or pipe.eof or pipe.hold_until is not None:
            return False
        if pipe.rate is not None and pipe.budget <= 0:
            return False
        return pipe.discard or len(pipe.out) < HIGH_WATER

    def _watch(self, c):
        for s in c.socks:
            mask = 0
            for pipe in c.pipes():
                if pipe.src is s and self._want_read(c, pipe):
                    mask |= selectors.EVENT_READ
                if pipe.dst is s and pipe.out and not pipe.shut:
                    mask |= selectors.EVENT_WRITE
            registered = s in self.sel.get_map()
            if mask and registered:
                self.sel.modify(s, mask)
            elif mask:
                self.sel.register(s, mask)
            elif registered:
                self.sel.unregister(s)

    def _io(self, c, s, mask):
        try:
            for pipe in c.pipes():
                if s is pipe.src and mask & selectors.EVENT_READ and self._want_read(c, pipe):
                    self._read(c, pipe)
            for pipe in c.pipes():
                if pipe.out and not pipe.shut:
                    self._write(pipe)
                if pipe.fin and not pipe.out and not pipe.shut:
                    pipe.dst.shutdown(socket.SHUT_WR)
                    pipe.shut = True
        except OSError as e:
            self._end(c, "%s: %s" % ("reset" if e.errno == errno.ECONNRESET else "error",
                                     e.strerror or e), rst=False)
            return
        if c.closing and not c.up.out and not c.down.out:
            self._end(c, "closed by the fault", rst=c.closing == "rst")
        elif c.up.eof and c.down.eof and not c.up.out and not c.down.out:
            self._end(c, "closed by both ends", rst=False)
        else:
            self._watch(c)

    def _read(self, c, pipe):
        n = 65536
        if pipe.trigger is not None:
            n = min(n, pipe.trigger - pipe.read)
        if pipe.rate is not None:
            n = min(n, pipe.budget)
        if n > 0:
            try:
                d = pipe.src.recv(n)
            except (BlockingIOError, InterruptedError):
                return
            if not d:
                # A blackhole swallows the FIN too.
                pipe.eof = True
                pipe.fin = pipe.fin or not (pipe.discard and c.p["kind"] == "blackhole")
                return
            pipe.read += len(d)
            if pipe.rate is not None:
                pipe.budget -= len(d)
            with self._lock:
                c.rec[pipe.name] = pipe.read
            if not pipe.discard:
                pipe.out += d
        if pipe.trigger is not None and pipe.read >= pipe.trigger:
            self._fire(c, pipe)

    @staticmethod
    def _write(pipe):
        try:
            k = pipe.dst.send(pipe.out)
        except (BlockingIOError, InterruptedError):
            return
        del pipe.out[:k]

    def _end(self, c, why, rst):
        for s in c.socks:
            if rst:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            if s in self.sel.get_map():
                self.sel.unregister(s)
            self._conns.pop(s, None)
            s.close()
        with self._lock:
            c.rec["end"] = why
        if self.verbose:
            print("faultproxy: " + self.line(c.rec), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=int, required=True, help="port on 127.0.0.1 to relay to")
    ap.add_argument("--listen", type=int, default=0, help="port to listen on (default: any)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ",".join(KINDS))
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    kinds = a.kinds.split(",")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error("unknown fault kind(s): %s" % ",".join(bad))
    px = FaultProxy(a.target, seed, kinds, a.listen, verbose=True).start()
    print("faultproxy: 127.0.0.1:%d -> 127.0.0.1:%d, seed %d, kinds %s"
          % (px.port, a.target, seed, ",".join(kinds)), flush=True)
    try:
        px.thread.join()
    except KeyboardInterrupt:
        px.close()
    return 1 if px.errors else 0


if __name__ == "__main__":
    sys.exit(main())
