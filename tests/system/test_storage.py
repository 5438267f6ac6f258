"""Storage faults on the replica: I/O errors (EIO, ENOSPC) at any write or
fsync of a cycle, through an LD_PRELOAD shim (tests/fault/ioshim.c), and a
real file system that fills up (a small ext4 on a loop device).

After every fault (R1): the replica holds the previous point exactly or
the new one exactly, never a mix; a restart finds the same; every point
`points` lists rebuilds byte for byte to the copy kept of the primary's
disks at that point; `verify` passes; no write is lost (P1: the next sync
brings the replica to the primary); the daemons stay up.

The campaigns take a seed (env.rng) and a number of rounds; the long
forms run from tests/soak/storage.py.
"""
import json
import os
import subprocess

from harness import ROOT, LogMark, Skip, check, vm_status, wait_for
from test_crash import MiB, SMALL, VM, Rig

SHIM = os.path.join(ROOT, "build", "ioshim.so")
IMAGES = ["/%s/%s" % (VM, name) for name, _, _ in SMALL]


class Shim:
    """The control file of ioshim.so for one daemon (see ioshim.c)."""

    def __init__(self, env, name="ioshim"):
        check(os.path.exists(SHIM), "%s missing: `make %s` builds it (make check does)"
              % (SHIM, os.path.relpath(SHIM, ROOT)))
        self.ctl = env.path(name + ".ctl")
        self.trace = env.path(name + ".trace")

    def environ(self):
        return {"LD_PRELOAD": SHIM, "IOSHIM_CTL": self.ctl}

    def set(self, match, ops="", nth=1, count=1, err="EIO", trace=True):
        """Fail count calls (0: all) from the nth matching one; a new
        setting restarts the count and the trace."""
        if os.path.exists(self.trace):
            os.unlink(self.trace)
        line = "match=%s nth=%d count=%d errno=%s" % (",".join(match), nth, count, err)
        if ops:
            line += " ops=%s" % ",".join(ops)
        if trace:
            line += " trace=%s" % self.trace
        tmp = self.ctl + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.rename(tmp, self.ctl)        # a new inode: the shim reloads

    def clear(self):
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)

    def calls(self):
        """The matching calls traced so far: [(op, path, failed)]."""
        if not os.path.exists(self.trace):
            return []
        out = []
        with open(self.trace) as f:
            for line in f:
                w = line.split()
                out.append((w[1], w[2], w[-1] == "FAIL"))
        return out


def shim_replica(rig, shim):
    """Restart rig's replica with the shim loaded (no fault set yet)."""
    shim.clear()
    rig.rep.stop()
    rig.rep.start(wait=False, env_extra=shim.environ())
    proc = rig.rep.proc
    wait_for(lambda: proc.poll() is not None or rig.rep.ctl("status").rc == 0, 120,
             what="the replica to answer on its control socket")
    check(proc.poll() is None, "the replica exited at start:\n%s" % rig.rep.log_text()[-3000:])


def failed_sync(rig, what):
    r = rig.pri.ctl("sync", VM, "--wait", timeout=300)
    check(r.rc != 0, "%s: sync --wait succeeded through the fault: %r" % (what, r))
    rig.wait_primary_idle()
    check(rig.rep.alive() and rig.pri.alive(), "%s: a daemon died" % what)
    return r


def restart_replica(rig, shim, kill=True):
    """A restart with the fault gone (kill -9 or SIGTERM)."""
    shim.clear()
    if kill:
        rig.rep.kill9()
    else:
        rig.rep.stop()
    rig.rep.start(wait=False, env_extra=shim.environ())
    proc = rig.rep.proc
    wait_for(lambda: proc.poll() is not None or rig.rep.ctl("status").rc == 0, 120,
             what="the replica to recover and answer on its control socket")
    check(proc.poll() is None, "the replica refused to start after the fault:\n%s"
          % rig.rep.log_text()[-3000:])


def exact(rig, what, pending):
    """R1 after a fault: at most the attempted cycle became a point, equal
    to the disks at the attempt; every point rebuilds; verify passes."""
    r = rig.rep.ctl("verify", VM)
    check(r.rc == 0, "%s: verify failed: %r" % (what, r))
    rig.check_points(what, pending, full=False)


# --- defect 5: EIO while saving undo data, and the roll-back fails too -------

def test_eio_undo_fsync_growing_cycle(env):
    """A cycle that grows a disk: the fsync of its undo segment fails with
    EIO and so does every fsync of the images, so the roll-back fails too.
    Neither the running daemon nor a restart may then present the cycle
    as a point whose grown region is zeros (it was cut off by the failed
    roll-back): the replica is the previous point or the new one, exactly."""
    shim = Shim(env)
    rig = Rig(env, SMALL)
    rig.history(2)
    shim_replica(rig, shim)
    for rnd, kill in enumerate((True, False, None)):
        what = "round %d (%s)" % (rnd, {True: "kill -9", False: "SIGTERM", None: "no restart"}[kill])
        rig.writes(grow=1)
        pending = rig.snap("attempt%d" % rnd)
        mark = LogMark(rig.rep)
        shim.set([".undo/"] + IMAGES, ops=["fsync"], count=0)
        failed_sync(rig, what)
        mark.wait("cannot roll back cycle", what=what + ": the failed roll-back logged")
        check(any(f for op, p, f in shim.calls() if ".undo/" in p),
              "%s: the undo fsync never failed: %r" % (what, shim.calls()))
        st = vm_status(rig.rep, VM)
        check(st["health"] != "normal", "%s: replica health %r after a failed roll-back" % (what, st))
        if kill is None:
            shim.clear()
        else:
            restart_replica(rig, shim, kill)
        exact(rig, what, pending)
        rig.converge(what, full=False)
    rig.pri.stop()
    rig.rep.stop()


# --- campaigns ------------------------------------------------------------

def attempt(rig, what):
    """One sync of the writes made so far: the new point (its copy kept),
    or None if it failed (the copy of the disks at the attempt returned
    as pending for check_points)."""
    pending = rig.snap("attempt")
    r = rig.pri.ctl("sync", VM, "--wait", timeout=300)
    rig.wait_primary_idle()
    check(rig.rep.alive() and rig.pri.alive(), "%s: a daemon died:\n%s"
          % (what, rig.rep.log_text()[-2000:]))
    if r.rc == 0:
        pt = int(r.out.split()[1])
        rig.kept[pt] = pending
        return pt, pending
    return None, pending


def eio_campaign(env, rounds, counts=None):
    """Sweep the failing call over the I/O calls of growing cycles: first
    one cycle traced to count its calls on the VM's storage, then for each
    round a seeded N, errno (EIO or ENOSPC), a single failure or one that
    lasts (so that the roll-back fails too), and a restart or none."""
    counts = counts if counts is not None else {}
    rng = env.rng
    shim = Shim(env)
    rig = Rig(env, SMALL)
    rig.history(1)
    shim_replica(rig, shim)
    where = ["/%s/" % VM]
    rig.writes(grow=1)
    shim.set(where, nth=0, count=0)          # trace only
    pt, _ = attempt(rig, "traced cycle")
    check(pt is not None, "the traced cycle failed")
    total = len(shim.calls())
    check(total > 20, "only %d I/O calls traced in a growing cycle: %r" % (total, shim.calls()))
    for rnd in range(rounds):
        n = 1 + (rnd * total // rounds + rng.randrange(max(1, total // rounds))) % total
        err = rng.choice(["EIO", "ENOSPC"])
        lasting = rng.random() < 0.4
        restart = rng.choice([None, "kill", "term"])
        what = "round %d: %s at call %d of ~%d%s, %s" % (
            rnd, err, n, total, " and after" if lasting else "", restart or "no restart")
        rig.writes(grow=rng.randrange(2) if rng.random() < 0.7 else None)
        shim.set(where, nth=n, count=0 if lasting else 1, err=err)
        pt, pending = attempt(rig, what)
        hit = [c for c in shim.calls() if c[2]]
        counts["faults"] = counts.get("faults", 0) + (1 if hit else 0)
        counts["failed cycles"] = counts.get("failed cycles", 0) + (pt is None)
        if hit:
            key = "%s %s" % (hit[0][0], "undo" if ".undo/" in hit[0][1] else
                             "staging" if ".staging/" in hit[0][1] else
                             "digests" if ".digests/" in hit[0][1] else "image")
            counts[key] = counts.get(key, 0) + 1
        if restart:
            restart_replica(rig, shim, restart == "kill")
            counts["restarts"] = counts.get("restarts", 0) + 1
        else:
            shim.clear()
        exact(rig, what, None if pt else pending)
        rig.converge(what, full=False)
        counts["rounds"] = counts.get("rounds", 0) + 1
    check(counts.get("faults", 0) > 0, "no fault was injected in %d rounds" % rounds)
    rig.pri.stop()
    rig.rep.stop()
    return counts


def test_eio_sweep(env):
    eio_campaign(env, 8)


def fill_to(path, free):
    """Leave about free bytes on path's file system with a ballast file."""
    ballast = os.path.join(path, "ballast")
    if os.path.exists(ballast):
        os.unlink(ballast)
    st = os.statvfs(path)
    avail = st.f_bavail * st.f_frsize
    if avail > free:
        with open(ballast, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, avail - free)
    return ballast


def enospc_campaign(env, rounds, counts=None):
    """A small ext4 on a loop device as the replica's storage; before
    each cycle a ballast file leaves a seeded amount of room (from none to
    more than the cycle needs), so that space runs out while staging,
    while saving undo data or while the images grow; then the ballast
    goes, and the replica must be exact and catch up."""
    import shutil
    from harness import LoopFs
    counts = counts if counts is not None else {}
    for tool in ("losetup", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise Skip("%s missing" % tool)
    check(os.geteuid() == 0, "the ENOSPC campaign mounts a loop device: run as root")
    rng = env.rng
    with LoopFs(env, "small", "ext4", 160 * MiB) as fs:
        rig = Rig(env, SMALL)
        rig.rep.stop()
        with open(rig.rep.conf) as f:
            # min_free = 0: this campaign is about running out of space,
            # not about the points a reserve would drop to keep it; a
            # retention pruned every round keeps a long run's history
            # (and the test copies that check it) inside the file system.
            text = f.read().replace("storage = %s\n" % rig.rep.storage,
                                    "storage = %s\nmin_free = 0\nretention = last=4\n"
                                    % fs.mnt)
        with open(rig.rep.conf, "w") as f:
            f.write(text)
        rig.rep.storage, rig.vmdir = fs.mnt, os.path.join(fs.mnt, VM)
        rig.start_replica()
        rig.history(1)
        for rnd in range(rounds):
            rig.writes(grow=rng.randrange(2) if rng.random() < 0.6 else None)
            free = rng.randrange(0, 12 * MiB)
            what = "round %d: %.1f MiB free" % (rnd, free / MiB)
            ballast = fill_to(fs.mnt, free)
            mark = LogMark(rig.rep)
            pt, pending = attempt(rig, what)
            if pt is None:
                counts["no-space"] = counts.get("no-space", 0) + 1
                new = mark.new()
                for phase, text in (("staging", "staging write"), ("undo", "undo"),
                                    ("growth", "write to "), ("apply", "applying cycle")):
                    if text in new:
                        counts[phase] = counts.get(phase, 0) + 1
                        break
                st = vm_status(rig.pri, VM)
                check(st["health"] == "critical" or "space" not in (st["error"] or ""),
                      "%s: primary status %r" % (what, st))
            if os.path.exists(ballast):
                os.unlink(ballast)
            exact(rig, what, None if pt else pending)
            rig.converge(what, full=False)
            prune_kept(rig, what)
            counts["rounds"] = counts.get("rounds", 0) + 1
        check(counts.get("no-space", 0) > 0, "space never ran out in %d rounds: %r" % (rounds, counts))
        rig.pri.stop()
        rig.rep.stop()
    return counts


def prune_kept(rig, what):
    """Apply the retention; forget the kept copies of the points it
    dropped (never the newest)."""
    rig.rep.ok("prune", VM)
    ids = {p["id"] for p in rig.points()}
    gone = set(rig.kept) - ids
    check(max(rig.kept) not in gone, "%s: prune dropped the newest point %d" % (what, max(rig.kept)))
    for g in gone:
        del rig.kept[g]
    if gone:
        rig.rebuilt.clear()     # neighbours' undo segments were merged


def test_enospc_loop_fs(env):
    enospc_campaign(env, 8)


# --- item 8: out of space while saving undo data ----------------------------

def test_undo_nospace_is_no_space(env):
    """Out of space while the undo segment is written is reported as the
    staging's is: NACK no-space, health critical on both sides; nothing
    changes; room again, the cycle goes through."""
    shim = Shim(env)
    rig = Rig(env, SMALL)
    rig.history(1)
    shim_replica(rig, shim)
    rig.writes()
    pending = rig.snap("attempt")
    shim.set([".undo/"], ops=["write", "pwrite"], count=0, err="ENOSPC")
    mark = LogMark(rig.rep)
    r = failed_sync(rig, "undo out of space")
    check("space" in r.err, "sync --wait on a full replica said %r" % r.err)
    mark.wait("undo", "No space left", what="the undo failure logged")
    sp, sr = vm_status(rig.pri, VM), vm_status(rig.rep, VM)
    check(sp["health"] == "critical" and sr["health"] == "critical",
          "health after running out of space while saving undo data: primary %r, replica %r"
          % (sp, sr))
    shim.clear()
    exact(rig, "undo out of space", pending)
    rig.converge("undo out of space")
    sp = vm_status(rig.pri, VM)
    check(sp["health"] == "normal", "primary health once there is room %r" % sp)
    rig.pri.stop()
    rig.rep.stop()


# --- item 8: no symbolic link under STORAGE/VM is followed ------------------

def test_symlink_in_storage_refused(env):
    """A symbolic link planted under STORAGE/VM (an image, the staging
    data) is refused with an error that says so; the file it points to is
    never written; with the link gone, replication goes on exactly."""
    rig = Rig(env, SMALL)
    rig.history(1)
    victim = env.path("victim")
    with open(victim, "wb") as f:
        f.write(b"not a disk image\n" * 1000)
    before = open(victim, "rb").read()

    # 1. The staging data, while the replica runs.
    data = os.path.join(rig.vmdir, ".staging", "data")
    if os.path.exists(data):
        os.unlink(data)
    os.symlink(victim, data)
    rig.writes()
    pending = rig.snap("attempt-staging")
    r = rig.pri.ctl("sync", VM, "--wait", timeout=300)
    check(r.rc != 0, "a cycle was staged through a symbolic link: %r" % r)
    check("symbolic link" in r.err, "the refusal does not say why: %r" % r)
    check(open(victim, "rb").read() == before, "the staging wrote through a symbolic link")
    rig.wait_primary_idle()
    # The staging data is made by a cycle's first staged block: the
    # abandoned cycle's clean-up may have removed the link (never what
    # it points to) already.
    if os.path.lexists(data):
        os.unlink(data)
    exact(rig, "staging link", pending)
    rig.converge("staging link", full=False)

    # 2. An image, planted while the replica is down: the VM is refused.
    img = rig.replica_image(rig.disks[1])
    real = img + ".real"
    rig.rep.stop()
    os.rename(img, real)
    os.symlink(victim, img)
    rig.rep.start()
    st = vm_status(rig.rep, VM)
    check(st["health"] == "critical" and "symbolic link" in (st["error"] or ""),
          "replica status with an image replaced by a link: %r" % st)
    rig.writes()
    r = rig.pri.ctl("sync", VM, "--wait", timeout=300)
    check(r.rc != 0, "a cycle was applied through a symbolic link: %r" % r)
    rig.wait_primary_idle()
    check(open(victim, "rb").read() == before, "the replica wrote through a symbolic link")
    rig.rep.stop()
    os.unlink(img)
    os.rename(real, img)
    rig.start_replica()
    rig.rep.ok("verify", VM)
    rig.converge("image link", full=False)
    rig.pri.stop()
    rig.rep.stop()
