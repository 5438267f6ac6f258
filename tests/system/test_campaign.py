"""Fault campaigns: many cycles through a hostile network, and kill -9 of
either daemon at every crash point and at random moments.

Network: primary -> FaultProxy -> replica.  Between cycles a writer makes
random writes to the primary's disks (and now and then grows one); each
cycle is one `sync --wait`, which may fail while a fault is active.  The
test keeps a copy of the disks for every attempted cycle, keyed by the
cycle number the primary logged for it, and compares only the points the
replica lists.  Kill -9: the crash points of src/ (REPLICAD_FAULT) and
SIGKILL at random moments of a cycle, a resync, a prune or a forget, on
either side; each is followed by a restart.

After a campaign: faults off, the next sync succeeds; no lost write (the
replica equals the primary); every listed point rebuilds byte-exact
against its kept copy; `verify` passes; both daemons alive; their RSS and
open descriptors at the end within a generous bound of what they were a
third of the way in.

The short forms run in `make check`; tests/soak/run.py runs the long ones
(`make soak`).  A campaign prints its seed; the fault proxy's record of
every connection is printed with a failure.
"""
import json
import os
import re
import signal
import subprocess
import time

from faultproxy import KINDS, FaultProxy
from harness import REPLCTL, TestFailure, assert_same, check, wait_for
from test_crash import Rig
from workload import random_write, snapshot

VM = "web01"
MiB = 1 << 20
# Faults of the short network form: every kind, the silent ones
# (faultproxy.SILENT) included: the daemons' keepalive ends them.
SHORT_KINDS = KINDS
RETENTION = 6                   # points the replica keeps (prune every few cycles)
STALL_DEADLINE = 150            # seconds a cycle may wait on a fault before it is a stall


def usage(d):
    """(RSS in KiB, open descriptors) of a running daemon."""
    pid = d.proc.pid
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def check_flat(before, after, what):
    """Resources at the end within a generous bound of a third of the way
    in: a leak per cycle or per connection grows past it over a campaign."""
    for name in before:
        (r0, f0), (r1, f1) = before[name], after[name]
        check(f1 <= f0 + 16, "%s: %s holds %d descriptors, %d a third of the way in" % (what, name, f1, f0))
        check(r1 <= 2 * r0 + 64 * 1024, "%s: %s RSS %d KiB, %d KiB a third of the way in"
              % (what, name, r1, r0))


def fast_keepalive(d):
    """A daemon not yet started, with keepalive = 1s: a silent connection
    (a blackhole) ends after 3 s of silence instead of 30."""
    with open(d.conf) as f:
        text = f.read()
    with open(d.conf, "w") as f:
        f.write(text.replace("[daemon]\n", "[daemon]\nkeepalive = 1s\n", 1))
    return d


class Stats(dict):
    def add(self, key, n=1):
        self[key] = self.get(key, 0) + n

    def line(self):
        return ", ".join("%s %s" % (k, self[k]) for k in sorted(self))


# --- the network campaign ---------------------------------------------------------

class NetCampaign:
    def __init__(self, env, kinds=SHORT_KINDS, stall_deadline=STALL_DEADLINE, verbose=False):
        self.env, self.rng = env, env.rng
        self.verbose, self.stall_deadline = verbose, stall_deadline
        self.disks = [env.make_disk(env.path("src", "sda.img"), 6 * MiB),
                      env.make_disk(env.path("src", "sdb.img"), 3 * MiB + 512, "sparse")]
        self.rep = fast_keepalive(env.replica(extra="retention = last=%d\n" % RETENTION)).start()
        self.proxy = FaultProxy(self.rep.port, env.seed, kinds).start()
        self.pri = fast_keepalive(env.primary({VM: self.disks}, self.proxy.port)).start()
        # Cycles only when the test asks (no retry behind its back).
        self.pri.ok("pause", VM)
        self.copies = {}        # cycle number -> [copy of each disk] of its last attempt
        self.stats = Stats()
        self.stalls = []
        self.nattempt = 0

    def note(self, msg):
        if self.verbose:
            print("     " + msg, flush=True)

    def fail(self, msg):
        raise TestFailure("%s (proxy seed %d)\nlast connections:\n%s\nprimary log:\n%s\nreplica log:\n%s"
                          % (msg, self.env.seed, self.proxy.summary(12), self.pri.log_text()[-2500:],
                             self.rep.log_text()[-2500:]))

    def state(self, d):
        """The VM's state on d ("none" on a replica before its first cycle)."""
        for v in json.loads(d.ok("status", "--json").out)["vms"]:
            if v["name"] == VM:
                return v
        return {"state": "none"}

    def settle(self, what):
        """Nothing of this attempt is left in flight: the primary idle, no
        connection open through the proxy, the replica idle with no staged
        cycle.  A fault that keeps things waiting past the deadline is a
        stall: recorded, then ended by cutting the connections."""
        def idle():
            return (self.state(self.pri)["state"] != "syncing" and not self.proxy.open_connections()
                    and self.state(self.rep)["state"] != "syncing"
                    and not os.path.exists(os.path.join(self.rep.storage, VM, ".staging", "index")))
        try:
            wait_for(idle, self.stall_deadline, 0.05, what="%s to end" % what)
        except TestFailure:
            self.stalls.append("%s: still waiting after %ds; open connections:\n%s"
                               % (what, self.stall_deadline,
                                  "\n".join(FaultProxy.line(r) for r in self.proxy.open_connections())))
            self.stats.add("stalls")
            self.proxy.cut_all()
            wait_for(idle, 120, 0.05, what="%s to end after its connections were cut" % what)

    def writes(self):
        for _ in range(self.rng.randrange(1, 5)):
            random_write(self.rng, self.rng.choice(self.disks), max_len=512 << 10)
        if self.rng.random() < 0.06:
            d = self.rng.choice(self.disks)
            add = self.rng.randrange(4096, MiB)
            with open(d, "r+b") as f:
                f.seek(os.path.getsize(d))
                f.write(self.rng.randbytes(add // 2))
                f.truncate(os.path.getsize(d) + add - add // 2)
            self.stats.add("grown")

    def attempt(self):
        self.nattempt += 1
        n = self.nattempt
        self.writes()
        copy = snapshot(self.disks, self.env.path("kept"), "a%d" % n)
        mark = len(self.pri.log_text())
        self.stats.add("cycles attempted")
        try:
            r = self.pri.ctl("sync", VM, "--wait", timeout=self.stall_deadline)
        except subprocess.TimeoutExpired:
            r = None
        self.settle("attempt %d" % n)
        new = self.pri.log_text()[mark:]
        for c in set(re.findall(r"%s: cycle (\d+) " % VM, new)):
            self.copies[int(c)] = copy
        if r is not None and r.rc == 0:
            self.stats.add("cycles acknowledged")
        else:
            self.stats.add("cycles failed")
            if r is not None:
                check(r.err.strip(), "attempt %d: sync --wait failed without a message: %r" % (n, r))
        self.note("attempt %d: %s; %s" % (n, "ok " + r.out.strip() if r and r.rc == 0 else
                                          "failed" if r else "timed out",
                                          FaultProxy.line(self.proxy.records[-1]) if self.proxy.records
                                          else "no connection"))
        for p in (self.pri, self.rep):
            if not p.alive():
                self.fail("attempt %d: %s died:\n%s" % (n, p.name, p.log_text()[-3000:]))

    def points(self):
        return json.loads(self.rep.ok("points", VM, "--json").out)

    def prune(self):
        """Apply retention; forget the copies no listed point can need.
        Before its first cycle is applied the replica has no such VM (a
        relationship is recorded only with its first point): nothing to
        prune yet."""
        if self.state(self.rep)["state"] == "none":
            return
        self.rep.ok("prune", VM)
        self.stats.add("prunes")
        pts = self.points()
        if not pts:
            return
        listed, newest = {p["cycle"] for p in pts}, max(p["cycle"] for p in pts)
        for c in [c for c in self.copies if c < newest and c not in listed]:
            for path in self.copies.pop(c):
                if not any(path in v for v in self.copies.values()):
                    os.unlink(path)

    def run(self, cycles):
        t = self.proxy
        usage_at = None
        for i in range(cycles):
            self.attempt()
            if i % 5 == 4:
                self.prune()
            if i == cycles // 3:
                usage_at = {d.name: usage(d) for d in (self.pri, self.rep)}
        for k, v in t.counts().items():
            self.stats.add("fault " + k, v)
        self.finish(usage_at)

    def finish(self, usage_at):
        what = "after the network campaign"
        self.proxy.faults = False
        self.proxy.cut_all()
        self.settle("the end of the campaign")
        # The final sync may reuse the number of the last attempt's cycle
        # (one cut off before the replica applied it): it holds the disks
        # as they are now, not that attempt's copy.
        copy = snapshot(self.disks, self.env.path("kept"), "final")
        mark = len(self.pri.log_text())
        r = self.pri.ctl("sync", VM, "--wait", timeout=300)
        if r.rc != 0:
            self.fail("%s: the final sync with faults off failed: %r" % (what, r))
        for c in set(re.findall(r"%s: cycle (\d+) " % VM, self.pri.log_text()[mark:])):
            self.copies[int(c)] = copy
        for d in self.disks:
            assert_same(d, os.path.join(self.rep.storage, VM, os.path.basename(d)),
                        "%s: replica vs primary (a lost write)" % what)
        self.rep.ok("verify", VM)
        pts = self.points()
        for p in pts:
            if p["cycle"] not in self.copies and p["cycle"] == max(q["cycle"] for q in pts):
                continue    # the final sync: compared with the disks above
            if p["cycle"] not in self.copies:
                self.fail("%s: point %r lists cycle %d, which no attempt logged" % (what, p, p["cycle"]))
            rebuild(self.rep, p["id"], self.copies[p["cycle"]], self.disks, what)
            self.stats.add("points checked")
        for d in (self.pri, self.rep):
            check(d.alive(), "%s: %s is not running" % (what, d.name))
        if usage_at:
            check_flat(usage_at, {d.name: usage(d) for d in (self.pri, self.rep)}, what)
        self.stats.add("stalls", 0)
        print("     network campaign (seed %d): %s" % (self.env.seed, self.stats.line()), flush=True)
        if self.stalls:
            self.fail("%s: %d stall(s) no daemon noticed:\n%s" % (what, len(self.stalls), "\n".join(self.stalls)))
        check(not self.proxy.errors, "fault proxy: %s" % self.proxy.errors)
        self.proxy.close()
        self.pri.stop()
        self.rep.stop()


def rebuild(rep, pt, copies, disks, what):
    r = rep.ctl("failover", VM, "--test", "--point", str(pt))
    check(r.rc == 0, "%s: test failover of point %d failed: %r\nreplica log:\n%s"
          % (what, pt, r, rep.log_text()[-2500:]))
    try:
        for c, d in zip(copies, disks):
            assert_same(c, os.path.join(rep.storage, VM, "test", os.path.basename(d)),
                        "%s: point %d rebuilt" % (what, pt))
    finally:
        rep.ok("failover", VM, "--test", "--cleanup")


def network_campaign(env, cycles, kinds=SHORT_KINDS, verbose=False):
    c = NetCampaign(env, kinds, verbose=verbose)
    try:
        c.run(cycles)
    finally:
        c.proxy.close()
    return c.stats


def test_network_short(env):
    network_campaign(env, 40, verbose=bool(os.environ.get("REPLICAD_TEST_VERBOSE")))


# --- the kill -9 campaign -----------------------------------------------------------

# Crash points (grep fault_point src/) and what reaches them.  The role
# change points are covered by test_failover_crash.
CRASH_POINTS = [
    ("replica", "sync", "replica-staging"), ("replica", "sync", "replica-after-index"),
    ("replica", "sync", "replica-after-undo"), ("replica", "sync", "replica-mid-apply"),
    ("replica", "sync", "replica-before-catalog"), ("replica", "sync", "replica-after-catalog"),
    ("replica", "sync", "replica-after-digests"),
    ("replica", "resync", "replica-mid-resync"), ("replica", "resync", "replica-commit-after-record"),
    ("replica", "forget", "replica-before-merge"), ("replica", "forget", "replica-after-merge"),
    ("replica", "forget", "replica-after-drop-record"),
    ("primary", "sync", "primary-mid-send"), ("primary", "sync", "primary-after-ack"),
    ("primary", "sync", "primary-after-commit"), ("primary", "resync", "primary-mid-resync"),
    ("primary", "sync", "primary-mid-tracker-commit"), ("primary", "sync", "primary-map-before-rename"),
    ("primary", "resync", "primary-map-before-rename"),
]
KILL_ACTIONS = ("sync", "sync", "sync", "resync", "prune", "forget")
SPECS = [("sda.img", 20 * MiB, "random"), ("sdb.img", 12 * MiB + 512, "sparse")]


class KillCampaign:
    def __init__(self, env, verbose=False):
        self.env, self.rng, self.verbose = env, env.rng, verbose
        rig = self.rig = Rig(env, SPECS)
        # retention for prune: edit the [accept] section (last in the file)
        rig.rep.stop()
        with open(rig.rep.conf, "a") as f:
            f.write("retention = last=4\n")
        rig.start_replica()
        self.stats = Stats()
        rig.history(2)

    def note(self, msg):
        if self.verbose:
            print("     " + msg, flush=True)

    def daemon(self, side):
        return self.rig.pri if side == "primary" else self.rig.rep

    def restart(self, side, fault=None):
        if side == "primary":
            self.rig.start_primary(fault)
        else:
            self.rig.start_replica(fault)

    def command(self, action):
        """The replctl command line of action, and the new point it may make."""
        rig = self.rig
        if action in ("sync", "resync"):
            rig.writes(grow=self.rng.choice((None, None, None, 0, 1)))
            return rig.pri, [action, VM, "--wait"], rig.snap(action)
        if action == "prune":
            return rig.rep, ["prune", VM], None
        ids = sorted(p["id"] for p in rig.points())
        if len(ids) < 2:
            rig.writes()
            rig.sync("a point to forget")
            ids = sorted(p["id"] for p in rig.points())
        self.forget_target = self.rng.choice(ids[:-1])
        return rig.rep, ["forget", VM, "--point", str(self.forget_target)], None

    def round(self, rnd):
        rig = self.rig
        base = rig.kept[max(rig.kept)]
        if self.rng.random() < 0.5:
            side, action, fault = self.rng.choice(CRASH_POINTS)
            victim = self.daemon(side)
            victim.stop()
            self.restart(side, fault)
            what = "round %d: %s %s with crash point %s" % (rnd, side, action, fault)
            d, args, pending = self.command(action)
            r = d.ctl(*args, timeout=300)
            died = victim.proc.poll() is not None or (r.rc != 0 and self.wait_death(victim))
            if died:
                rig.expect_fault_death(victim, fault)
                self.stats.add("kills at crash points")
                self.stats.add("kill " + fault)
            else:
                check(r.rc == 0, "%s: %s failed though the crash point was not reached: %r\n%s"
                      % (what, " ".join(args), r, victim.log_text()[-3000:]))
                victim.stop()
                self.stats.add("crash points not reached")
        else:
            side = self.rng.choice(("primary", "replica"))
            action = self.rng.choice(KILL_ACTIONS)
            if action in ("prune", "forget"):
                side = "replica"
            victim = self.daemon(side)
            d, args, pending = self.command(action)
            p = subprocess.Popen([REPLCTL, "-s", d.socket] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            delay = self.rng.uniform(0, 1.0 if action in ("sync", "resync") else 0.1)
            time.sleep(delay)  # the random moment is the point of this campaign
            check(victim.alive(), "%s had died by itself:\n%s" % (side, victim.log_text()[-3000:]))
            victim.kill9()
            p.communicate(timeout=300)
            what = "round %d: %s killed %.2fs into %s" % (rnd, side, delay, " ".join(args))
            self.stats.add("random kills")
        if victim.proc is None:
            if side == "replica":
                rig.wait_primary_idle()
            self.restart(side)
        if side == "primary":
            rig.settle_replica()
        self.account_drops(action, what)
        new = rig.check_points(what, pending, full=False)
        self.note("%s: %s" % (what, "new point %s" % new if new else "no new point"))
        rig.revert_some(base)
        rig.converge(what, full=False)
        self.stats.add("rounds")

    def wait_death(self, victim):
        try:
            wait_for(lambda: victim.proc.poll() is not None, 30, what="%s to die" % victim.name)
            return True
        except TestFailure:
            return False

    def account_drops(self, action, what):
        """A prune or forget (finished or killed) may have dropped points."""
        rig = self.rig
        ids = {p["id"] for p in rig.points()}
        gone = set(rig.kept) - ids
        if not gone:
            return
        allowed = {"prune": set(sorted(rig.kept)[:-1]),
                   "forget": {getattr(self, "forget_target", None)}}.get(action, set())
        check(gone <= allowed, "%s: points %s are gone (a %s may drop only %s)"
              % (what, sorted(gone), action, sorted(allowed)))
        for g in gone:
            del rig.kept[g]
        rig.rebuilt.clear()     # neighbours' undo segments were merged
        self.stats.add("points dropped", len(gone))

    def run(self, rounds):
        usage_at = None
        for rnd in range(rounds):
            self.round(rnd)
            if rnd == rounds // 3:
                usage_at = {d.name: usage(d) for d in (self.rig.pri, self.rig.rep)}
        rig = self.rig
        what = "after the kill -9 campaign"
        rig.converge(what, full=True)
        self.stats.add("points checked", len(rig.points()))
        for d in (rig.pri, rig.rep):
            check(d.alive(), "%s: %s is not running" % (what, d.name))
        if usage_at:
            check_flat(usage_at, {d.name: usage(d) for d in (rig.pri, rig.rep)}, what)
        print("     kill -9 campaign (seed %d): %s" % (self.env.seed, self.stats.line()), flush=True)
        rig.pri.stop()
        rig.rep.stop()
        return self.stats


def kill_campaign(env, rounds, verbose=False):
    return KillCampaign(env, verbose).run(rounds)


def test_kill9_short(env):
    kill_campaign(env, 12, verbose=bool(os.environ.get("REPLICAD_TEST_VERBOSE")))


# --- the proxy itself ---------------------------------------------------------------

def test_faultproxy_kinds(env):
    """Each fault does what faultproxy.py says, on plain sockets."""
    import socket
    from faultproxy import plan
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    for kind in KINDS:
        seed = next(s for s in range(10000) if plan(s, 1, (kind,))["kind"] == kind)
        px = FaultProxy(srv.getsockname()[1], seed, (kind,)).start()
        p = plan(seed, 1, (kind,))
        try:
            c = socket.create_connection(("127.0.0.1", px.port), timeout=30)
            s, _ = srv.accept()
            s.settimeout(30)
            up, down = (c, s) if p.get("dir") == "up" else (s, c)
            data = env.rng.randbytes(64 << 10 if kind == "throttle" else p.get("offset", 0) + 4096)
            up.sendall(data) if kind != "blackhole" else up.send(data[:p["offset"] + 1])
            got = bytearray()
            want = {"pass": len(data), "throttle": len(data), "stall": len(data) if p.get("then") == "resume"
                    else p.get("offset")}.get(kind, p.get("offset"))
            while len(got) < want:
                b = down.recv(65536)
                if not b:
                    break
                got += b
            check(bytes(got) == data[:len(got)], "%s: the bytes relayed differ" % kind)
            check(len(got) == want, "%s (%s): %d bytes arrived, expected %d\n%s"
                  % (kind, p, len(got), want, px.summary()))
            if kind in ("cut", "rst", "handshake", "halfclose") or (kind == "stall" and p["then"] == "cut"):
                try:
                    end = down.recv(1)
                except ConnectionResetError:
                    end = b"reset"
                check(end in (b"", b"reset"), "%s: data past the offset arrived" % kind)
                if kind == "rst":
                    check(end == b"reset", "rst: the receiver saw %r, not a reset" % end)
            if kind == "blackhole":
                up.shutdown(socket.SHUT_WR)
                down.settimeout(0.5)
                try:
                    extra = down.recv(1)
                except socket.timeout:
                    extra = None
                check(extra is None, "blackhole: the receiver saw %r past the offset" % extra)
            c.close()
            s.close()
            check(px.records[0]["fired"] or kind in ("pass", "throttle"), "%s: never fired: %s"
                  % (kind, px.summary()))
        finally:
            px.close()
    check(not px.errors, "proxy errors: %s" % px.errors)
