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
