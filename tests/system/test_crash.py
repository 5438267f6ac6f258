"""Crash recovery (DESIGN.md section 3: P1 no lost writes, R1 atomic points).

The replica or the primary dies at every crash point of a cycle
(REPLICAD_FAULT), by kill -9 at random moments, or by SIGTERM in the middle
of a cycle.  After a restart:

  * the catalog lists no half point: every listed point, rebuilt by test
    failover, equals the copy kept of the disks at that point's sync; no
    point is lost; a cycle whose staging index was written before the crash
    is completed at restart and becomes a point equal to the disks as they
    were at that sync attempt;
  * the replica image is exactly its newest point (R1);
  * no staging leftovers remain (no .staging/index, .staging/data empty or
    absent) and no undo segment of a cycle past the newest point;
  * the next `sync --wait` succeeds, the replica equals the primary byte for
    byte (P1), and `verify` passes.

Every disk copy is kept under ENV/kept/ (run with --keep to inspect).
"""
import json
import os
import signal
import subprocess
import time

from harness import REPLICAD, TestFailure, assert_same, check, file_digest, first_difference, wait_for
from workload import random_fill, random_write, snapshot

VM = "web01"
MiB = 1 << 20

# Two disks: one full of data, one sparse whose size is not a multiple of
# the block size (a short last block).
SMALL = [("sda.img", 24 * MiB, "random"), ("sdb.img", 16 * MiB + 4096 + 512, "sparse")]
# For the large-cycle tests: 88 MiB of disk, most of it rewritten per cycle.
LARGE = [("sda.img", 48 * MiB, "random"), ("sdb.img", 40 * MiB + 512, "sparse")]

VERBOSE = bool(os.environ.get("REPLICAD_TEST_VERBOSE"))


def note(msg):
    if VERBOSE:
        print("     " + msg, flush=True)


def point_of(result):
    words = result.out.split()
    check(len(words) == 2 and words[0] == "point" and words[1].isdigit(),
          "sync --wait printed %r" % result.out)
    return int(words[1])


class Rig:
    """A primary and a replica of one VM with two disks, and a copy of the
    disks kept for every recovery point the replica lists (by point id)."""

    def __init__(self, env, specs):
        self.env, self.rng = env, env.rng
        self.disks = [env.make_disk(env.path("src", n), size, fill) for n, size, fill in specs]
        self.rep = env.replica()
        self.rep.start()
        self.pri = env.primary({VM: self.disks}, self.rep.port)
        self.start_primary()
        self.kept = {}          # point id -> [copy of each disk]
        self.cycles = {}        # point id -> cycle, as first listed
        self.sums = {}          # copy path -> sha256
        self.rebuilt = set()    # points already rebuilt and compared
        self.nsnap = 0
        self.vmdir = os.path.join(self.rep.storage, VM)

    # --- daemons --------------------------------------------------------

    def start_primary(self, fault=None):
        self.pri.start(env_extra={"REPLICAD_FAULT": fault} if fault else None)
        # Cycles run only when the test asks for one (sync still starts a
        # cycle while paused): no retry after a failed cycle can run behind
        # the test's back while it inspects the replica.
        self.pri.ok("pause", VM)

    def start_replica(self, fault=None):
        """Like Daemon.start, with room for rolling a large staged cycle
        forward at start on a busy machine."""
        self.rep.start(wait=False, env_extra={"REPLICAD_FAULT": fault} if fault else None)
        proc = self.rep.proc
        wait_for(lambda: proc.poll() is not None or self.rep.ctl("status").rc == 0, 120,
                 what="the replica to recover and answer on its control socket")
        check(proc.poll() is None, "the replica exited at start:\n%s" % self.rep.log_text()[-3000:])

    def expect_fault_death(self, d, fault, timeout=60):
        """d must die by SIGKILL at crash point fault."""
        proc = d.proc
        wait_for(lambda: proc.poll() is not None, timeout,
                 what="%s to die at crash point %s" % (d.name, fault))
        check(proc.returncode == -signal.SIGKILL,
              "%s exited %s, expected SIGKILL at %s:\n%s"
              % (d.name, proc.returncode, fault, d.log_text()[-3000:]))
        check("fault point %s reached" % fault in d.log_text(),
              "%s died but never logged reaching %s:\n%s" % (d.name, fault, d.log_text()[-3000:]))
        d.proc = None

    def pri_state(self):
        r = self.pri.ok("status", VM, "--json")
        return json.loads(r.out)["vms"][0]

    def rep_state(self):
        r = self.rep.ok("status", VM, "--json")
        return json.loads(r.out)["vms"][0]

    def wait_primary_idle(self, timeout=120):
        """The primary has no cycle in flight."""
        wait_for(lambda: self.pri_state()["state"] != "syncing", timeout,
                 what="the primary's cycle to end")

    def settle_replica(self):
        """After the primary died: wait until no job of its session still
        works on the store.  An apply removes the staging area last; an
        abandoned cycle's staging goes first, then the images are cut back
        under the store lock, which verify takes too."""
        wait_for(lambda: not self.staging_leftovers(), 60,
                 what="the replica to finish or drop the cycle of a dead session")
        self.rep.ok("verify", VM)

    # --- disks and kept copies ------------------------------------------

    def snap(self, tag):
        self.nsnap += 1
        return snapshot(self.disks, self.env.path("kept"), "%02d-%s" % (self.nsnap, tag))

    def digest(self, path):
        if path not in self.sums:
            self.sums[path] = file_digest(path)
        return self.sums[path]

    def same(self, copy, path, what):
        """path equals the kept copy (whose digest is cached)."""
        if os.path.getsize(copy) != os.path.getsize(path) or self.digest(copy) != file_digest(path):
            raise TestFailure("%s: %s differs from %s: %s" % (what, path, copy, first_difference(copy, path)))

    def writes(self, n=None, grow=None):
        """Small guest-like writes, and at least 1 MiB of new random data
        (so a cycle has more than 8 extents); grow: the index of a disk to
        grow by 1-2 MiB of new data (it arrives as blocks past the replica's
        size, which go straight into the image)."""
        for _ in range(n if n is not None else self.rng.randrange(3, 9)):
            random_write(self.rng, self.rng.choice(self.disks))
        random_fill(self.rng, self.disks, MiB, min_len=MiB, max_len=MiB)
        if grow is not None:
            self.grow(grow)

    def grow(self, i):
        d = self.disks[i]
        old = os.path.getsize(d)
        add = self.rng.randrange(1, 3) * MiB + self.rng.randrange(1, 65536)
        with open(d, "r+b") as f:
            f.seek(old)
            f.write(self.rng.randbytes(add - 70000))
            f.truncate(old + add)       # with a zero tail

    def revert_some(self, copies, nranges=6):
        """Write a few block ranges back to what they were in copies (an
        older point): a block changed in an interrupted cycle and changed
        back since must still reach the replica (P1)."""
        for _ in range(nranges):
            i = self.rng.randrange(len(self.disks))
            size = min(os.path.getsize(self.disks[i]), os.path.getsize(copies[i]))
            length = self.rng.randrange(1, 9) * 65536
            off = self.rng.randrange(0, max(1, (size - length) // 65536)) * 65536
            with open(copies[i], "rb") as f:
                f.seek(off)
                data = f.read(length)
            with open(self.disks[i], "r+b") as f:
                f.seek(off)
                f.write(data)

    def replica_image(self, disk):
        return os.path.join(self.vmdir, os.path.basename(disk))

    # --- cycles -----------------------------------------------------------

    def sync(self, what):
        """sync --wait must succeed; keep a copy of the new point."""
        r = self.pri.ctl("sync", VM, "--wait", timeout=300)
        check(r.rc == 0, "%s: sync --wait failed: %r\nprimary log:\n%s\nreplica log:\n%s"
              % (what, r, self.pri.log_text()[-2500:], self.rep.log_text()[-2500:]))
        pt = point_of(r)
        check(pt not in self.kept, "%s: sync returned point %d, which existed before" % (what, pt))
        self.kept[pt] = self.snap("p%d" % pt)
        return pt

    def history(self, n=3):
        for i in range(n):
            self.writes()
            self.sync("history %d" % i)

    # --- invariants ---------------------------------------------------------

    def points(self):
        return json.loads(self.rep.ok("points", VM, "--json").out)

    def staging_leftovers(self):
        st = os.path.join(self.vmdir, ".staging")
        bad = []
        if os.path.exists(os.path.join(st, "index")):
            bad.append("index")
        data = os.path.join(st, "data")
        if os.path.exists(data) and os.path.getsize(data) > 0:
            bad.append("data (%d bytes)" % os.path.getsize(data))
        return bad

    def check_no_leftovers(self, what, pts):
        bad = self.staging_leftovers()
        check(not bad, "%s: staging leftovers in %s/.staging: %s" % (what, self.vmdir, ", ".join(bad)))
        newest = max(p["cycle"] for p in pts)
        udir = os.path.join(self.vmdir, ".undo")
        orphans = [n for n in os.listdir(udir) if n.endswith(".undo")
                   and n.split(".")[0].isdigit() and int(n.split(".")[0]) > newest]
        check(not orphans, "%s: undo segments of cycles past the newest point (cycle %d): %s"
              % (what, newest, orphans))

    def rebuild(self, pt, what):
        r = self.rep.ctl("failover", VM, "--test", "--point", str(pt))
        check(r.rc == 0, "%s: test failover of point %d failed: %r\nreplica log:\n%s"
              % (what, pt, r, self.rep.log_text()[-2500:]))
        try:
            check(r.out.split()[:2] == ["point", str(pt)], "%s: failover printed %r" % (what, r.out))
            for copy, d in zip(self.kept[pt], self.disks):
                t = os.path.join(self.vmdir, "test", os.path.basename(d))
                check(t in r.out, "%s: test failover did not print %s: %r" % (what, t, r.out))
                self.same(copy, t, "%s: point %d rebuilt" % (what, pt))
        finally:
            self.rep.ok("failover", VM, "--test", "--cleanup")
        self.rebuilt.add(pt)

    def check_points(self, what, pending=None, expect_new=None, full=True):
        """Listed points: none lost, at most one new one (the interrupted
        cycle, completed: it equals pending), and each rebuilds to its
        copy.  The replica image is its newest point.  full=False rebuilds
        only what a crash can have touched: points not rebuilt before and
        the point below each (through its new undo segment), the newest,
        and one point at random."""
        pts = self.points()
        ids = [p["id"] for p in pts]
        check(len(set(ids)) == len(ids) and ids, "%s: points listed %r" % (what, pts))
        lost = sorted(set(self.kept) - set(ids))
        check(not lost, "%s: points %s were listed before and are gone: %r" % (what, lost, pts))
        new = sorted(set(ids) - set(self.kept))
        if expect_new is not None:
            check(len(new) == expect_new, "%s: expected %d new point(s) after the restart, the replica "
                  "lists %s (points %r)" % (what, expect_new, new or "none", pts))
        check(len(new) <= 1 and (not new or pending is not None),
              "%s: new points %s, but only one interrupted cycle could have made one: %r" % (what, new, pts))
        for p in pts:
            if p["id"] in self.cycles:
                check(self.cycles[p["id"]] == p["cycle"], "%s: point %d changed cycle: %r" % (what, p["id"], p))
            self.cycles[p["id"]] = p["cycle"]
        by_id = sorted(pts, key=lambda p: p["id"])
        for a, b in zip(by_id, by_id[1:]):
            check(a["cycle"] < b["cycle"], "%s: point ids and cycles out of order: %r" % (what, pts))
        for n in new:
            self.kept[n] = pending
        newest = max(ids)
        # R1: the image is exactly one point, the newest.
        for copy, d in zip(self.kept[newest], self.disks):
            self.same(copy, self.replica_image(d), "%s: replica image vs newest point %d" % (what, newest))
        self.check_no_leftovers(what, pts)
        if full:
            todo = set(ids)
        else:
            todo = {newest, self.rng.choice(ids)}
            for i in ids:
                if i not in self.rebuilt:
                    todo.add(i)
                    below = [j for j in ids if j < i]
                    if below:
                        todo.add(max(below))    # through i's undo segment
        for pt in sorted(todo):
            self.rebuild(pt, what)
        return new

    def converge(self, what, full=True):
        """The next sync succeeds and brings the replica to the primary."""
        pt = self.sync(what + ", next sync")
        for d in self.disks:
            assert_same(d, self.replica_image(d), "%s: replica vs primary after point %d" % (what, pt))
        self.rep.ok("verify", VM)
        pts = self.points()
        check(max(p["id"] for p in pts) == pt, "%s: newest listed point is not %d: %r" % (what, pt, pts))
        self.check_no_leftovers(what + ", after the next sync", pts)
        self.check_points(what + ", after the next sync", full=full)
        return pt


# --- 1. replica crash points -------------------------------------------------

def replica_fault(env, fault, expect_new, inspect=None, empty=False):
    """empty: the interrupted cycle changes nothing (its point is one
    catalog transaction, with no staging and no undo segment)."""
    rig = Rig(env, SMALL)
    rig.history(3)
    base = rig.kept[max(rig.kept)]
    if not empty:
        rig.writes(grow=1)
    pending = rig.snap("attempt-" + fault)
    # The crash point is read from the environment at start.
    rig.rep.stop()
    rig.start_replica(fault)
    r = rig.pri.ctl("sync", VM, "--wait", timeout=120)
    check(r.rc != 0, "sync --wait succeeded although the replica was to die at %s: %r" % (fault, r))
    rig.expect_fault_death(rig.rep, fault)
    rig.wait_primary_idle()
    # Once more with the crash point set: recovery itself reaches it
    # (after-undo, mid-apply, before-catalog) or not; either way the next
    # normal start must finish the job.
    rig.rep.start(wait=False, env_extra={"REPLICAD_FAULT": fault})
    proc = rig.rep.proc
    wait_for(lambda: proc.poll() is not None or rig.rep.ctl("status").rc == 0, 120,
             what="the replica to recover or die")
    if proc.poll() is None:
        rig.rep.stop()
    else:
        rig.expect_fault_death(rig.rep, fault)
        note("%s: recovery reached the crash point again" % fault)
    rig.start_replica()
    what = "after a replica crash at %s" % fault
    rig.check_points(what, pending, expect_new)
    rig.revert_some(base)
    rig.converge(what)
    if inspect:
        inspect(rig)
    rig.pri.stop()
    rig.rep.stop()


def test_replica_staging(env):
    replica_fault(env, "replica-staging", 0)


def test_replica_after_index(env):
    replica_fault(env, "replica-after-index", 1)


def test_replica_after_undo(env):
    replica_fault(env, "replica-after-undo", 1)


def test_replica_undo_mid_write(env):
    replica_fault(env, "replica-undo-mid-write", 1)


def test_replica_mid_apply(env):
    replica_fault(env, "replica-mid-apply", 1)


def test_replica_before_catalog(env):
    replica_fault(env, "replica-before-catalog", 1)


def test_replica_after_catalog(env):
    replica_fault(env, "replica-after-catalog", 1)


def test_replica_after_digests(env):
    replica_fault(env, "replica-after-digests", 1)


def test_replica_empty_before_catalog(env):
    replica_fault(env, "replica-before-catalog", 0, empty=True)


def test_replica_empty_after_catalog(env):
    replica_fault(env, "replica-after-catalog", 1, empty=True)


# --- 2. primary crash points --------------------------------------------------

def primary_fault(env, fault, expect_new):
    rig = Rig(env, SMALL)
    rig.history(3)
    base = rig.kept[max(rig.kept)]
    # sda grows: its new blocks are sent (and written straight into the
    # replica's image) before the primary-mid-send crash, which comes
    # while sdb's changes are sent: more than 8 MiB of them.
    rig.writes(grow=0)
    random_fill(rig.rng, rig.disks[1:], 12 * MiB + rig.rng.randrange(0, 2 * MiB))
    # Overlapping writes may change less than 8 MiB: 10 MiB of one run of
    # random bytes makes sure the cycle sends more than that.
    with open(rig.disks[1], "r+b") as f:
        f.seek(rig.rng.randrange(0, 6 * MiB))
        f.write(rig.rng.randbytes(10 * MiB))
    pending = rig.snap("attempt-" + fault)
    rig.pri.stop()
    rig.start_primary(fault)
    r = rig.pri.ctl("sync", VM, "--wait", timeout=120)
    check(r.rc != 0, "sync --wait succeeded although the primary was to die at %s: %r" % (fault, r))
    rig.expect_fault_death(rig.pri, fault)
    rig.start_primary()
    rig.settle_replica()
    what = "after a primary crash at %s" % fault
    rig.check_points(what, pending, expect_new)
    rig.revert_some(base)
    rig.converge(what)
    # and once more, with changes made after the crash
    rig.writes()
    rig.converge(what + ", one more cycle")
    rig.pri.stop()
    rig.rep.stop()


def test_primary_mid_send(env):
    primary_fault(env, "primary-mid-send", 0)


def test_primary_after_ack(env):
    primary_fault(env, "primary-after-ack", 1)


def test_primary_after_commit(env):
    primary_fault(env, "primary-after-commit", 1)


def test_primary_map_before_rename(env):
    # sda's new map is written but not renamed in: sda is back at the
    # cycle before, sdb never saved, so both are sent whole.
    primary_fault(env, "primary-map-before-rename", 1)


def test_primary_mid_tracker_commit(env):
    # sda's state is saved, sdb's not.
    primary_fault(env, "primary-mid-tracker-commit", 1)


def test_primary_empty_cycle_mid_commit(env):
    """A cycle that changed nothing commits each disk's small cycle file,
    not its map.  Killed after sda's and before sdb's: sdb's map is of the
    cycle before the replica's, so the state proves nothing and the next
    cycle compares with the replica (resync) instead of trusting it (P1:
    never assume clean)."""
    fault = "primary-mid-tracker-commit"
    rig = Rig(env, SMALL)
    rig.history(2)
    pending = rig.snap("attempt-empty")
    rig.pri.stop()
    rig.start_primary(fault)
    r = rig.pri.ctl("sync", VM, "--wait", timeout=120)
    check(r.rc != 0, "sync --wait succeeded although the primary was to die at %s: %r" % (fault, r))
    rig.expect_fault_death(rig.pri, fault)
    mark = log_mark(rig.pri)
    rig.start_primary()
    rig.settle_replica()
    what = "after a primary crash in an empty cycle's commit"
    rig.check_points(what, pending)
    rig.writes()
    rig.converge(what)
    log = rig.pri.log_text()[mark:]
    check("the tracker state does not describe the replica's last cycle" in log,
          "%s: the next cycle took the tracker state as proof:\n%s" % (what, log[-3000:]))
    rig.pri.stop()
    rig.rep.stop()


# --- 3. kill -9 at random moments ---------------------------------------------

def big_writes(rig, grow=None):
    random_fill(rig.rng, rig.disks, rig.rng.randrange(64, 97) * MiB)
    rig.writes(n=rig.rng.randrange(1, 5), grow=grow)


def log_mark(d):
    return len(d.log_text())


def what_happened(rig, victim, mark_pri, mark_rep, new):
    """For the verbose notes: which phase the cycle was in at the kill."""
    rep_log = rig.rep.log_text()[mark_rep:]
    pri_log = rig.pri.log_text()[mark_pri:]
    if not new:
        return "no new point: the cycle was abandoned before its index"
    if "finishing cycle" in rep_log:
        return "point %d: the staged cycle was rolled forward at restart" % new[0]
    if victim == "primary" and " done: point %d" % new[0] in pri_log:
        return "point %d: the cycle had completed before the kill" % new[0]
    if victim == "primary":
        return "point %d: killed after END (ACK or tracker commit lost)" % new[0]
    return "point %d: the cycle had been applied before the kill" % new[0]


def kill_loop(env, victim, rounds=5):
    rig = Rig(env, LARGE)
    rig.history(1)  # the whole disks: a cycle as long as the large ones
    span = rig.pri_state()["last_cycle"]["duration_ms"] / 1000     # the longest so far
    rig.history(1)
    for rnd in range(rounds):
        span = max(span, rig.pri_state()["last_cycle"]["duration_ms"] / 1000)
        base = rig.kept[max(rig.kept)]
        big_writes(rig, grow=(None, 0, 1)[rnd % 3])     # sometimes grow a disk too
        pending = rig.snap("attempt%d" % rnd)
        marks = log_mark(rig.pri), log_mark(rig.rep)
        rig.pri.ok("sync", VM)
        # 0-1.5 s, but within about the length of such a cycle on this
        # machine, so that most kills land inside one.
        delay = rig.rng.uniform(0, min(1.5, max(0.3, 1.3 * span)))
        time.sleep(delay)  # the random moment is the point of this test
        d = rig.rep if victim == "replica" else rig.pri
        was_alive = d.alive()
        d.kill9()
        check(was_alive, "%s had died by itself before the kill:\n%s" % (victim, d.log_text()[-3000:]))
        if victim == "replica":
            rig.wait_primary_idle()
            rig.start_replica()
        else:
            rig.start_primary()
            rig.settle_replica()
        what = "round %d, %s killed %.2fs into a cycle" % (rnd, victim, delay)
        new = rig.check_points(what, pending, full=False)
        note("%s: %s" % (what, what_happened(rig, victim, marks[0], marks[1], new)))
        rig.revert_some(base)
        rig.converge(what, full=False)
    rig.check_points("at the end", full=True)
    rig.pri.stop()
    rig.rep.stop()


def test_kill9_replica(env):
    kill_loop(env, "replica")


def test_kill9_primary(env):
    kill_loop(env, "primary")


# --- 4. SIGTERM during a cycle --------------------------------------------------

def reach_phase(rig, phase, timeout=120):
    """Poll until the replica is in phase of the cycle just requested:
    "receiving" (it reports syncing) or "applying" (the staging index
    exists).  False if the cycle ended before it was seen there."""
    idx = os.path.join(rig.vmdir, ".staging", "index")
    deadline = time.monotonic() + timeout
    last_pri = 0.0
    while time.monotonic() < deadline:
        if phase == "applying":
            if os.path.exists(idx):
                return True
        elif rig.rep_state()["state"] == "syncing":
            return True
        if time.monotonic() - last_pri > 0.05:
            last_pri = time.monotonic()
            if rig.pri_state()["state"] != "syncing":
                return phase == "applying" and os.path.exists(idx)
        time.sleep(0.002)
    raise TestFailure("timed out after %ds waiting for the replica to be %s" % (timeout, phase))


def catch_cycle(rig, phase, tag, make_writes):
    """Start a cycle (sync without --wait) and return, with the copy kept of
    the disks it carries, once the replica is in phase of it.  A cycle too
    quick to be caught just makes a point; then try again."""
    for attempt in range(4):
        make_writes()
        pending = rig.snap("%s-%d" % (tag, attempt))
        rig.pri.ok("sync", VM)
        if reach_phase(rig, phase):
            return pending
        rig.wait_primary_idle()
        st = rig.pri_state()
        check(st["error"] is None and st["last_point"] not in rig.kept, "cycle failed: %r" % st)
        rig.kept[st["last_point"]] = pending
        note("%s: missed the %s phase, again" % (tag, phase))
    raise TestFailure("%s: never caught the replica %s a cycle" % (tag, phase))


def sigterm_loop(env, victim):
    rig = Rig(env, LARGE)
    rig.history(2)
    for rnd, phase in enumerate(["receiving", "applying"]):
        base = rig.kept[max(rig.kept)]
        pending = catch_cycle(rig, phase, "attempt%d" % rnd, lambda: big_writes(rig, grow=0))
        if victim == "replica":
            rig.rep.stop()      # asserts exit status 0
            rig.wait_primary_idle()
            rig.start_replica()
        else:
            rig.pri.stop()      # asserts exit status 0
            rig.start_primary()
            rig.settle_replica()
        what = "round %d, SIGTERM to the %s while the replica was %s a cycle" % (rnd, victim, phase)
        # An apply in progress completes (its point exists, unacknowledged);
        # a cycle still being received is abandoned.
        new = rig.check_points(what, pending, expect_new=1 if phase == "applying" else None)
        note("%s: %s" % (what, "cycle became point %d" % new[0] if new else "no new point"))
        rig.revert_some(base)
        rig.converge(what)
    rig.pri.stop()
    rig.rep.stop()


def test_sigterm_replica(env):
    sigterm_loop(env, "replica")


def test_sigterm_primary(env):
    sigterm_loop(env, "primary")


# --- 5. one replicad per state directory ------------------------------------------

def second_daemon(rig, tag):
    """Start a second replicad on the running replica's own config (same
    state dir, control socket and port); returns its exit status and
    output.  The first must still be running and answering."""
    log = rig.env.path(rig.rep.name, "second-%s.log" % tag)
    with open(log, "wb") as f:
        p = subprocess.Popen([REPLICAD, "-c", rig.rep.conf], stdout=f, stderr=f)
    rig.env.procs.append(p)
    try:
        rc = p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise TestFailure("%s: a second replicad on %s kept running" % (tag, rig.rep.state))
    with open(log, errors="replace") as f:
        text = f.read()
    check(rig.rep.alive(), "%s: the first replicad died:\n%s" % (tag, rig.rep.log_text()[-3000:]))
    rig.rep.ok("status")
    return rc, text


def check_refused(tag, rc, text):
    check(rc != 0, "%s: a second replicad on the same state dir exited 0:\n%s" % (tag, text))
    check("another replicad is running" in text,
          "%s: a second replicad exited %d without saying \"another replicad is running\":\n%s"
          % (tag, rc, text))


def test_second_replica_idle(env):
    rig = Rig(env, SMALL)
    rig.history(2)
    rc, text = second_daemon(rig, "idle")
    check_refused("idle", rc, text)
    rig.writes()
    rig.converge("after a second replicad was refused")
    rig.pri.stop()
    rig.rep.stop()


def test_second_replica_mid_cycle(env):
    """Started while the first receives a cycle (that grows a disk), the
    refused one must not touch the first's state: the cycle completes as a
    point equal to the disks it carried."""
    rig = Rig(env, SMALL)
    rig.history(2)

    def make_writes():
        random_fill(rig.rng, rig.disks, 32 * MiB)
        rig.writes(grow=0)
    pending = catch_cycle(rig, "receiving", "attempt", make_writes)
    rc, text = second_daemon(rig, "mid-cycle")
    rig.wait_primary_idle()
    st = rig.pri_state()
    what = "after a second replicad started during a cycle"
    check(st["state"] != "error", "%s: the cycle failed: %r\nsecond replicad said:\n%s\nreplica log:\n%s"
          % (what, st, text, rig.rep.log_text()[-3000:]))
    rig.settle_replica()
    rig.check_points(what, pending, expect_new=1)
    check_refused("mid-cycle", rc, text)
    rig.converge(what)
    rig.pri.stop()
    rig.rep.stop()


def test_corrupt_index_after_partial_apply(env):
    """The replica dies half way through writing a cycle into the image and
    its staging index is damaged before the restart: the cycle cannot be
    finished, so it is rolled back from its undo segment — the image is
    exactly the newest point again, never a mix."""
    import wireproto as wp
    from test_hostile import Pair, VM, BS
    pair = Pair(env)
    before = [file_digest(pair.replica_image(i)) for i in range(len(pair.disk_list()))]
    points = pair.rep.ok("points", VM, "--json").out
    pair.pri.stop()
    pair.rep.stop()
    pair.rep.start(env_extra={"REPLICAD_FAULT": "replica-mid-apply"})
    c, w = pair.session()
    dig = wp.CycleDigest()
    cyc = w["last_cycle"] + 1
    frames = wp.cycle(cyc, pair.sizes())
    for b in range(8):
        frames += wp.data_raw(0, b * BS, env.rng.randbytes(BS), digest=dig)
    c.send(frames + wp.end_of(cyc, dig))
    c.recv_frame(30)
    wait_for(lambda: not pair.rep.alive(), 20, what="the replica to die at the fault point")
    pair.rep.proc = None
    stg = os.path.join(pair.rep.storage, VM, ".staging")
    check(os.path.exists(os.path.join(stg, "index")), "no staged index after the crash")
    with open(os.path.join(stg, "index"), "r+b") as f:
        f.seek(40)
        x = f.read(1)
        f.seek(40)
        f.write(bytes([x[0] ^ 0xFF]))
    pair.rep.start()
    after = [file_digest(pair.replica_image(i)) for i in range(len(pair.disk_list()))]
    check(after == before, "the image is not the newest point after recovery")
    check(pair.rep.ok("points", VM, "--json").out == points, "points changed")
    pair.rep.ok("verify", VM)
    check("rolling back the unrecorded cycle" in pair.rep.log_text(), "rollback not logged")
    pair.pri.start()
    pair.legit_sync("after a corrupt index")
