"""Crash recovery (R1) with the replica's storage on XFS with reflink=1 (a
loop device): undo data that does not compress is cloned from the image
into the undo segment (FICLONERANGE) instead of copied.  The replica dies
by kill -9 at each crash point of a cycle, the new ones of the undo writer
included (after its first clone, and after its first write of a segment),
and recovery must give what test_crash.py asks of the copy path: no half
point, every point rebuilt equal to its copy, the image at the newest
point, and the next sync equal to the primary.  Each test also proves the
clone path ran: the replica says its undo data is cloned, and the undo
segments hold CLONE records."""
import os
import struct

from harness import LoopFs, check
import test_crash as crash

# Loop devices and mounts: run.py -j runs these alone.
SERIAL = True

MiB = 1 << 20


def undo_record_types(path):
    """{record type: count} of an undo segment (format version 1 or 2)."""
    with open(path, "rb") as f:
        b = f.read()
    check(b[:8] == b"RDUNDOSG", "%s is no undo segment" % path)
    n = struct.unpack(">H", b[20:22])[0]
    pos, types = 22 + 8 * n, {}
    while b[pos] != 0xFF:
        t, _disk, _off, length = struct.unpack(">BHQI", b[pos:pos + 15])
        pos += 15
        types[t] = types.get(t, 0) + 1
        if t == 1:
            pos += length
        elif t == 3:
            pos += 4 + struct.unpack(">I", b[pos:pos + 4])[0]
        elif t == 4:
            pos += 16       # the content's digest
            pad = struct.unpack(">I", b[pos:pos + 4])[0]
            pos += 4 + pad
            check(pos % 4096 == 0, "%s: CLONE content at %d, not on a block" % (path, pos))
            pos += length
    return types


def on_xfs(env, fault, expect_new):
    storage = os.path.join("replica", "storage")
    with LoopFs(env, storage, "xfs", 768 * MiB):
        seen = {}

        def inspect(rig):
            check("undo data cloned" in rig.rep.log_text(),
                  "the replica on XFS did not say its undo data is cloned:\n%s"
                  % rig.rep.log_text()[-3000:])
            udir = os.path.join(rig.vmdir, ".undo")
            for name in os.listdir(udir):
                if name.endswith(".undo"):
                    for t, k in undo_record_types(os.path.join(udir, name)).items():
                        seen[t] = seen.get(t, 0) + k
        crash.replica_fault(env, fault, expect_new, inspect=inspect)
        check(seen.get(4, 0) > 0, "no CLONE record in the undo segments on XFS: %r" % seen)


def test_xfs_replica_after_index(env):
    on_xfs(env, "replica-after-index", 1)


def test_xfs_replica_undo_after_clone(env):
    on_xfs(env, "replica-undo-after-clone", 0)


def test_xfs_replica_undo_mid_write(env):
    on_xfs(env, "replica-undo-mid-write", 0)


def test_xfs_replica_undo_before_index(env):
    # The segment saved as the cycle arrived is in place, the index is
    # not: the cycle is rolled back (nothing was written yet).
    on_xfs(env, "replica-undo-before-index", 0)


def test_xfs_replica_after_undo(env):
    on_xfs(env, "replica-after-undo", 1)


def test_xfs_replica_mid_apply(env):
    on_xfs(env, "replica-mid-apply", 1)


def test_xfs_replica_before_catalog(env):
    on_xfs(env, "replica-before-catalog", 1)


def test_xfs_replica_after_catalog(env):
    on_xfs(env, "replica-after-catalog", 1)


def test_xfs_replica_after_digests(env):
    on_xfs(env, "replica-after-digests", 1)


def compact_fault(env, fault):
    """The replica dies while it compacts (compresses) the undo segment a
    cycle wrote fast (cloned): after the point was acknowledged, before or
    after the compacted segment is recorded.  Every point must still
    rebuild to its copy, each point must keep exactly the segment the
    catalog names (no segment left behind once the next start tidied), and
    the next sync must converge."""
    storage = os.path.join("replica", "storage")
    with LoopFs(env, storage, "xfs", 768 * MiB):
        rig = crash.Rig(env, crash.SMALL)
        rig.history(3)
        # Old content that compresses, overwritten by the crashing cycle:
        # its fast segment is sure to shrink when compacted (written after
        # the history, whose random writes could cover it).
        text = (b"replicad compacts undo segments off the cycle's path. " * 20000)[:2 * MiB]
        with open(rig.disks[0], "r+b") as f:
            f.seek(4 * MiB)
            f.write(text)
        rig.sync("compressible content")
        rig.writes(grow=1)
        with open(rig.disks[0], "r+b") as f:
            f.seek(4 * MiB)
            f.write(os.urandom(2 * MiB))
        pending = rig.snap("attempt-" + fault)
        rig.rep.stop()
        rig.start_replica(fault)
        # The point is acknowledged before its segment is compacted.
        r = rig.pri.ctl("sync", crash.VM, "--wait", timeout=120)
        check(r.rc == 0, "sync --wait failed before the compaction: %r" % (r,))
        rig.expect_fault_death(rig.rep, fault)
        rig.wait_primary_idle()
        rig.start_replica()
        what = "after a replica crash at %s" % fault
        rig.check_points(what, pending, 1)
        udir = os.path.join(rig.vmdir, ".undo")
        names = sorted(n for n in os.listdir(udir) if ".undo" in n)
        check(not any(n.endswith(".tmp") for n in names),
              "%s: temporary segments left: %r" % (what, names))
        cycles = [n.split(".")[0] for n in names]
        check(len(cycles) == len(set(cycles)),
              "%s: a point has two segments on disk: %r" % (what, names))
        rig.converge(what)
        rig.pri.stop()
        rig.rep.stop()


def test_xfs_replica_before_compact_record(env):
    compact_fault(env, "replica-before-compact-record")


def test_xfs_replica_after_compact_record(env):
    compact_fault(env, "replica-after-compact-record")
