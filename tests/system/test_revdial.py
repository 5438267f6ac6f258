"""Review of the primary's connection turns (dial.h): a turn must end.

A primary lets at most DIAL_PER_PEER (4) of its new connections to one
replica address be between their start and WELCOME; the rest wait.  Here
the first four connections reach something at the replica's address that
trickles a byte every two seconds and never finishes the TLS handshake
(a hostile or broken replica, a middlebox, anyone on the path); every
later connection reaches the real replica.  The trickle keeps resetting
the connections' inactivity timeouts, so without a deadline for the whole
handshake (connect, TLS, HELLO, WELCOME) the four turns are never given
back and the other VMs to that replica never even connect: no cycle, no
error.  Each handshake must give up within its deadline, the turns pass
on, and every VM gets its point.
"""
import json
import os
import socket
import threading

from harness import Daemon, check, free_port, wait_for

NVMS = 6
TRICKLED = 4


class Trickler:
    """The first `trickled` connections get a byte every `every` s and
    nothing else; later ones are forwarded to the replica."""

    def __init__(self, target_port, trickled, every=2.0):
        self.port = free_port()
        self.target = target_port
        self.left = trickled
        self.every = every
        self.stop = threading.Event()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.socks = []
        self.trickled_conns = 0
        self.forwarded = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.socks.append(c)
            if self.left > 0:
                self.left -= 1
                self.trickled_conns += 1
                threading.Thread(target=self._trickle, args=(c,), daemon=True).start()
            else:
                self.forwarded += 1
                u = socket.create_connection(("127.0.0.1", self.target))
                self.socks.append(u)
                threading.Thread(target=self._pipe, args=(c, u), daemon=True).start()
                threading.Thread(target=self._pipe, args=(u, c), daemon=True).start()

    def _trickle(self, c):
        # A TLS handshake record of 16 KiB, a byte at a time: its header,
        # then its body, never whole.
        data = b"\x16\x03\x03\x40\x00"
        try:
            i = 0
            while not self.stop.wait(self.every):
                c.send(data[i:i + 1] if i < len(data) else b"\x00")
                i += 1
        except OSError:
            pass

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        for s in [self.ls] + self.socks:
            try:
                s.close()
            except OSError:
                pass


def test_revdial_trickling_handshakes_give_turns_back(env):
    rep = env.replica().start()
    tr = Trickler(rep.port, TRICKLED)
    try:
        disks = {}
        for i in range(NVMS):
            vm = "turn%d" % i
            disks[vm] = env.make_disk(env.path("src", vm + ".img"), 256 << 10)
        secs = "".join("[vm %s]\ndisk = %s\nreplica = 127.0.0.1:%d\nreplica_name = replica\n"
                       "interval = 0\n\n" % (vm, p, tr.port) for vm, p in disks.items())
        # keepalive 1s: a handshake's inactivity timeout is 15 + 3 x 1 s.
        pri = Daemon(env, "primary", "primary", "keepalive = 1s\n", secs).start()
        for vm in disks:
            pri.ok("sync", vm)

        def points():
            vms = json.loads(pri.ok("status", "--json").out)["vms"]
            return sum(1 for v in vms if v["last_point"])
        wait_for(lambda: tr.trickled_conns == TRICKLED, 20, what="the trickled connections")
        try:
            wait_for(lambda: points() == NVMS, 75, 0.5,
                     what="a point of each of the %d VMs" % NVMS)
        except Exception:
            waiting = pri.log_text().count("waiting for a turn to connect")
            raise AssertionError(
                "%d of %d VMs have a point 75 s after their sync: %d connections "
                "trickled (still open), %d forwarded to the replica, %d VMs "
                "logged waiting for a turn; the trickled handshakes never gave "
                "their turns back" % (points(), NVMS, tr.trickled_conns,
                                      tr.forwarded, waiting))
        log = pri.log_text()
        check("did not answer in time" in log or "handshake" in log,
              "the trickled handshakes ended without a line saying why:\n%s" % log[-3000:])
    finally:
        tr.close()


def test_revdial_stop_with_turns_held_and_queued(env):
    """SIGTERM while four handshakes hold the turns (trickled) and two VMs
    wait for one: every session ends, the queue is emptied, the daemon
    exits 0 at once (no turn passed to a VM being stopped starts a
    connection; no turn left behind for a freed session)."""
    rep = env.replica().start()
    tr = Trickler(rep.port, 1000)
    try:
        disks = {}
        for i in range(NVMS):
            vm = "stop%d" % i
            disks[vm] = env.make_disk(env.path("src", vm + ".img"), 64 << 10)
        secs = "".join("[vm %s]\ndisk = %s\nreplica = 127.0.0.1:%d\nreplica_name = replica\n"
                       "interval = 0\n\n" % (vm, p, tr.port) for vm, p in disks.items())
        pri = Daemon(env, "primary", "primary", "", secs).start()
        for vm in disks:
            pri.ok("sync", vm)
        wait_for(lambda: tr.trickled_conns == TRICKLED, 20, what="the trickled connections")
        wait_for(lambda: pri.log_text().count("waiting for a turn to connect") == NVMS - TRICKLED,
                 10, what="the other VMs to wait for a turn")
        n = tr.trickled_conns
        pri.stop()
        check(tr.trickled_conns == n, "%d connections started while the primary stopped"
              % (tr.trickled_conns - n))
    finally:
        tr.close()
