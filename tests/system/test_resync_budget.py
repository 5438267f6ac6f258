"""Bounded work against a malicious replica (include/delta.h, work.h).

A ForgingReplica answers every resync with forged librsync signatures: at
4 KiB blocks, every weak sum that of a zero block (the primary's disks are
zeros there, so every window position matches), every strong sum made up.
Unbounded, each MiB costs the primary a block hashed per byte.

(a) with the default delta_budget every forged range is sent whole after a
    bounded search, a warning names the replica, and a real replica then
    resyncs byte-exact (honest data that defeats the rolling checksum goes
    the same way, and its resync succeeds);
(b) with the budget off (delta_budget = 0: forged deltas as long as a big
    honest resync) the forged resyncs fill the long-job threads, and an
    honest VM's `sync --wait` completes while every one of them is still
    making its first deltas (no DELTA has reached the forging replica);
(c) SIGTERM then ends the daemon: the forged jobs are cancelled, not
    finished.

Conditions are polled with generous deadlines; whether the forged work is
running is read from the threads' CPU time in /proc, never from a clock.
"""
import json
import os
import re
import socket
import ssl
import struct
import threading

import wireproto as wp
from harness import Daemon, LogMark, TestFailure, assert_same, check, free_port, wait_for

CHUNK = 1 << 20                 # wire_chunk_len(64 KiB)
ZERO_WEAK = wp.rs_rollsum(bytes(wp.SIG_BLOCK))


def forged_signature(length, rng):
    """A signature of length bytes: zero-block weak sums, made-up strong
    sums."""
    out = struct.pack(">III", wp.RS_BLAKE2_SIG_MAGIC, wp.SIG_BLOCK, wp.RS_STRONG_LEN)
    for _ in range(0, length, wp.SIG_BLOCK):
        out += struct.pack(">I", ZERO_WEAK) + rng.randbytes(wp.RS_STRONG_LEN)
    return out


class ForgingReplica:
    """A TLS server with the replica's certificate that takes any number of
    primary sessions: WELCOME "I hold data" (so the primary resyncs), read
    every SUMS, answer a forged SIG for every chunk of every disk, SIGEND,
    then count the DELTA frames that come back.  self.vms[vm] records
    sigs_sent, deltas, closed.  last_cycle: {vm: the cycle WELCOME claims}
    (default 0)."""

    def __init__(self, env, port, last_cycle=None):
        self.last_cycle = last_cycle or {}
        self.rng = env.rng
        self.ctx, self.ls = wp.replica_listener(env.pki, port, 16)
        self.lock = threading.Lock()
        self.vms = {}
        self.errors = []
        self.conns = []
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        conn = None
        try:
            s.settimeout(60)
            conn = wp.Conn(self.ctx.wrap_socket(s, server_side=True))
            with self.lock:
                self.conns.append(conn)
            fr = conn.recv_frame(60)
            check(fr is not None and fr[0] == wp.HELLO, "first frame: %s" % wp.describe(fr))
            hello = wp.decode_hello(fr[1])
            rec = {"sigs_sent": False, "deltas": 0, "closed": False}
            with self.lock:
                self.vms[hello["vm"]] = rec
            cyc = self._begin(conn, hello)
            frames, n = b"", 0
            for d, (_, size) in enumerate(hello["disks"]):
                for off in range(0, size, CHUNK):
                    length = min(CHUNK, size - off)
                    frames += wp.sig(d, off, length, forged_signature(length, self.rng))
                    n += 1
            conn.send(frames + wp.sigend(cyc, n))
            rec["sigs_sent"] = True
            while not self.closing:
                fr = self._recv(conn)
                if fr is None:
                    break
                if fr[0] == wp.DELTA:
                    rec["deltas"] += 1
            rec["closed"] = True
        except BaseException as e:      # reported by the main thread
            if not self.closing:
                with self.lock:
                    self.errors.append("%s: %s" % (type(e).__name__, e))
        finally:
            if conn is not None:
                conn.close()

    def _recv(self, conn):
        """The next frame; waits as long as the primary's queues take."""
        while not self.closing:
            try:
                return conn.recv_frame(1.0)
            except TimeoutError:
                continue
        return None

    def _begin(self, conn, hello):
        """WELCOME, then the CYCLE (a resync) and every SUMS."""
        last = self.last_cycle.get(hello["vm"], 0)
        conn.send(wp.welcome(hello["generation"], last_cycle=last, last_point=last,
                             flags=wp.WELCOME_DATA))
        fr = self._recv(conn)
        check(fr is not None and fr[0] == wp.CYCLE, "after WELCOME: %s" % wp.describe(fr))
        cyc = wp.decode_cycle(fr[1])
        check(cyc["flags"] & wp.CYCLE_RESYNC, "not a resync: %r" % cyc)
        unit = max(hello["block_size"], 64 << 10)
        left = sum((size + unit - 1) // unit for _, size in hello["disks"])
        while left > 0:
            fr = self._recv(conn)
            check(fr is not None and fr[0] == wp.SUMS, "waiting for SUMS: %s" % wp.describe(fr))
            left -= wp.decode_sums(fr[1])["count"]
        return cyc["cycle"]

    def close(self):
        self.closing = True
        try:
            self.ls.shutdown(socket.SHUT_RDWR)    # wakes accept()
        except OSError:
            pass
        self.ls.close()
        with self.lock:
            for c in self.conns:
                c.close()


def thread_cpu_ticks(pid):
    """CPU time (utime + stime, in clock ticks) of each thread of pid."""
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out.append(int(fields[11]) + int(fields[12]))
    return out


def forged_setup(env, nforged, budget=None, disk_mib=32):
    """A primary with nforged VMs whose replica forges (zero disks of
    disk_mib MiB) and an honest VM "honest" with a real replica."""
    fake_port = free_port()
    rep = env.replica()
    honest = env.make_disk(env.path("src", "honest.img"), 1 << 20, "random")
    secs = ""
    for i in range(nforged):
        disk = env.make_disk(env.path("src", "f%d.img" % i), disk_mib << 20, "sparse")
        secs += ("[vm forged%d]\ndisk = %s\nreplica = 127.0.0.1:%d\nreplica_name = replica\n"
                 "interval = 0\n\n" % (i, disk, fake_port))
    secs += ("[vm honest]\ndisk = %s\nreplica = 127.0.0.1:%d\nreplica_name = replica\n"
             "interval = 0\n\n" % (honest, rep.port))
    extra = "" if budget is None else "delta_budget = %d\n" % budget
    pri = Daemon(env, "primary", "primary", extra, secs)
    return pri, rep, fake_port, honest


def start_forged(pri, fake, nforged, busy):
    """Start every forged resync and wait until their delta work runs: the
    SIGs of at least busy VMs sent and at least busy threads of the
    primary burning CPU.  (The others may wait in the long-job queue, not
    even summed yet.)"""
    for i in range(nforged):
        pri.ok("sync", "forged%d" % i)
    wait_for(lambda: sum(v["sigs_sent"] for v in list(fake.vms.values())) >= busy,
             120, what="the forged SIGs of %d VMs to go out" % busy)
    check(not fake.errors, "the forging replica: %s" % fake.errors)
    wait_for(lambda: sum(t >= 50 for t in thread_cpu_ticks(pri.proc.pid)) >= busy,
             120, what="%d threads of the primary busy with forged deltas" % busy)


def test_resync_budget_forged_signature(env):
    """(a) A forged signature costs the primary a bounded search: past the
    budget every range goes whole at once (a DELTA for every SIG, where an
    unbounded search spends seconds per MiB), and a warning names the
    replica; a real replica then resyncs byte-exact."""
    rep = env.replica()
    size = 4 << 20
    disk = env.make_disk(env.path("src", "web.img"), size, "sparse")
    with open(disk, "r+b") as f:
        f.write(env.rng.randbytes(100000))
    pri = env.primary({"web": [disk]}, rep.port)
    rep.start()
    pri.start()
    pri.ok("sync", "web", "--wait")
    rep.stop()

    fake = ForgingReplica(env, rep.port, {"web": 1})
    nsigs = (size + CHUNK - 1) // CHUNK
    try:
        mark = LogMark(pri)
        pri.ok("pause", "web")
        pri.ok("resync", "web")
        wait_for(lambda: fake.vms.get("web", {}).get("deltas", 0) >= nsigs, 300,
                 what="a DELTA for each of the %d forged SIGs" % nsigs)
        want = ("web: the replica replica (127.0.0.1:%d) sent a signature of disk 0 offset"
                % rep.port)
        mark.wait(want, "false matches (forged, corrupt, or data that defeats the rolling "
                  "checksum): such ranges are sent whole", what="the primary's warning")
        check(mark.new().count("such ranges are sent whole") == 1, "the warning is repeated")
        check(not fake.errors, "the forging replica: %s" % fake.errors)
    finally:
        fake.close()

    # The forged cycle is cut off with the fake; a real replica resyncs.
    with open(disk, "r+b") as f:
        f.seek(3 << 20)
        f.write(env.rng.randbytes(70000))
    rep.start()
    wait_for(lambda: json.loads(pri.ok("status", "web", "--json").out)["vms"][0]["state"]
             != "syncing", 120, what="the cut-off resync to end")
    r = pri.ok("resync", "web", "--wait", timeout=300)
    check(r.out.startswith("point "), "resync to the real replica: %r" % r)
    assert_same(disk, os.path.join(rep.storage, "web", "web.img"), "after the resync")
    rep.ok("verify", "web")
    pri.stop()
    rep.stop()


def test_resync_budget_honest_patterns(env):
    """Honest data of a regular pattern defeats the rolling checksum (the
    replica holds spaces where the primary now has 0x00 0x40 repeated: a
    false match at nearly every byte): the budget sends those ranges whole
    and the resync still succeeds, byte-exact (it used to end with an error
    blaming the replica, again at every resync)."""
    rep = env.replica()
    disk = env.make_disk(env.path("src", "web.img"), 4 << 20, "sparse")
    with open(disk, "r+b") as f:
        f.seek(1 << 20)
        f.write(b" " * (1 << 20))
    pri = env.primary({"web": [disk]}, rep.port)
    rep.start()
    pri.start()
    pri.ok("sync", "web", "--wait")
    with open(disk, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x00\x40" * (1 << 19))
    mark = LogMark(pri)
    for _ in range(2):
        r = pri.ctl("resync", "web", "--wait", timeout=300)
        check(r.rc == 0 and r.out.startswith("point "), "resync of patterned data: %r\n%s"
              % (r, mark.new()[-2000:]))
    check("such ranges are sent whole" in mark.new(), "the budget was not reached: the test "
          "does not exercise the fallback")
    assert_same(disk, os.path.join(rep.storage, "web", "web.img"), "after the resync")
    rep.ok("verify", "web")
    pri.stop()
    rep.stop()


NFORGED = 4             # as many as the old single pool had workers
LONG_BUSY = 2           # threads the forged work fills (daemon.c LONG_WORKERS)


def test_resync_long_jobs_do_not_hold_cycles(env):
    """(b) Forged resyncs with no budget fill the long-job threads; another
    VM's `sync --wait` still completes, while each forged resync is still
    on its first deltas."""
    pri, rep, fake_port, honest = forged_setup(env, NFORGED, budget=0)
    fake = ForgingReplica(env, fake_port)
    try:
        rep.start()
        pri.start()
        start_forged(pri, fake, NFORGED, LONG_BUSY)
        try:
            r = pri.ctl("sync", "honest", "--wait", timeout=300)
        except Exception as e:
            raise TestFailure("the honest VM's sync did not complete behind the forged "
                              "resyncs: %s" % e)
        check(r.rc == 0 and r.out.startswith("point "), "honest sync: %r" % r)
        # Still in progress: no forged delta job has returned a batch.
        check(len(fake.vms) == NFORGED, "forged sessions: %r" % sorted(fake.vms))
        for vm, rec in sorted(fake.vms.items()):
            check(rec["deltas"] == 0 and not rec["closed"],
                  "%s: the forged resync is no longer running: %r" % (vm, rec))
            st = json.loads(pri.ok("status", vm, "--json").out)["vms"][0]
            check(st["state"] == "resyncing", "%s: %r" % (vm, st))
        check(sum(t >= 50 for t in thread_cpu_ticks(pri.proc.pid)) >= LONG_BUSY,
              "the forged work stopped")
        assert_same(honest, os.path.join(rep.storage, "honest", "honest.img"), "honest VM")
        check(not fake.errors, "the forging replica: %s" % fake.errors)
    finally:
        fake.close()
        pri.kill9()
        rep.stop()


def test_resync_sigterm_cancels_long_jobs(env):
    """(c) SIGTERM while forged deltas run without a budget: the daemon
    exits 0 and its log shows each running job cancelled, not finished."""
    pri, rep, fake_port, _ = forged_setup(env, NFORGED, budget=0)
    fake = ForgingReplica(env, fake_port)
    try:
        pri.start()
        start_forged(pri, fake, NFORGED, LONG_BUSY)
        mark = LogMark(pri)
        pri.proc.terminate()
        try:
            rc = pri.proc.wait(300)
        except Exception:
            raise TestFailure("replicad did not exit after SIGTERM with forged deltas "
                              "running; log:\n%s" % mark.new()[-2000:])
        check(rc == 0, "replicad exited %d" % rc)
        log = mark.new()
        check(re.search(r"cancelling [0-9]+ long jobs", log), "no cancellation line:\n%s" % log[-2000:])
        ncancelled = sum("resync cancelled at disk 0 offset" in l for l in log.splitlines())
        check(ncancelled >= LONG_BUSY, "%d jobs cancelled:\n%s" % (ncancelled, log[-2000:]))
        for vm, rec in sorted(fake.vms.items()):
            check(rec["deltas"] == 0, "%s: forged deltas were finished and sent: %r" % (vm, rec))
        check("stopped" in log, "no final line:\n%s" % log[-1000:])
    finally:
        fake.close()
