"""tracker = reflink on XFS and btrfs made on loop devices: each cut is an
FICLONE copy of the images, the changed blocks come from comparing the
extents of two cuts, and unchanged data is never read."""
import json
import os
import signal
import subprocess
import threading
import time

from harness import (LoopFs, LogMark, assert_same, check, set_vm_keys, vm_status,
                     REPLCTL, REPLICAD)

# Loop devices and mounts: run.py -j runs these alone.
SERIAL = True

MiB = 1 << 20
BS = 64 << 10


def write_random(env, path, size, nwrites, touched):
    """Guest-like writes: 4 KiB to 256 KiB at random places; touched gets
    the 64 KiB blocks written."""
    with open(path, "r+b") as f:
        for _ in range(nwrites):
            length = env.rng.choice([4096, 4096, 65536, 3 * 65536, 256 << 10, 12345])
            off = env.rng.randrange(0, size - length)
            if env.rng.random() < 0.3:
                off -= off % 4096
            f.seek(off)
            f.write(env.rng.randbytes(length))
            for b in range(off // BS, (off + length - 1) // BS + 1):
                touched.add(b)


def rig(env, fs, sizes, extra=""):
    disks = []
    for i, size in enumerate(sizes):
        p = os.path.join(fs.mnt, "images", "d%d.img" % i)
        env.make_disk(p, size)
        # a sparse tail, as VM images have
        with open(p, "r+b") as f:
            f.truncate(size + 8 * MiB)
        disks.append(p)
    rep = env.replica().start()
    pri = env.primary({"web01": disks}, rep.port)
    set_vm_keys(pri, "web01", "tracker = reflink\n" + extra)
    pri.start()
    return pri, rep, disks


def rounds(env, fstype):
    with LoopFs(env, "fs", fstype, 640 * MiB) as fs:
        pri, rep, disks = rig(env, fs, [40 * MiB, 24 * MiB])
        pri.ok("sync", "web01", "--wait")
        first = vm_status(pri, "web01")["last_cycle"]
        total = sum(os.path.getsize(d) for d in disks)
        check(first["bytes_read"] <= total, "first cycle read %d of %d bytes"
              % (first["bytes_read"], total))
        for d in disks:
            assert_same(d, os.path.join(rep.storage, "web01", os.path.basename(d)))
        for rnd in range(6):
            touched = [set(), set()]
            for i, d in enumerate(disks):
                write_random(env, d, os.path.getsize(d), env.rng.randrange(1, 12), touched[i])
            if rnd == 3:
                # a grown disk: new data past the old end
                with open(disks[1], "ab") as f:
                    f.write(env.rng.randbytes(MiB + 777))
                touched[1].update(range(os.path.getsize(disks[1]) // BS - 40,
                                        os.path.getsize(disks[1]) // BS + 1))
            pri.ok("sync", "web01", "--wait")
            for d in disks:
                assert_same(d, os.path.join(rep.storage, "web01", os.path.basename(d)),
                            "round %d" % rnd)
            lc = vm_status(pri, "web01")["last_cycle"]
            changed = sum(len(t) for t in touched) * BS
            # What is read follows what was written (file system extents
            # may round a write up), never the disk size.
            check(lc["bytes_read"] <= 2 * changed + 2 * BS,
                  "round %d: read %d bytes for %d changed (disks %d bytes)"
                  % (rnd, lc["bytes_read"], changed, total))
            check(lc["dirty_bytes"] <= lc["bytes_read"], "dirty > read: %r" % lc)
        # an idle cycle reads nothing
        pri.ok("sync", "web01", "--wait")
        lc = vm_status(pri, "web01")["last_cycle"]
        check(lc["bytes_read"] == 0 and lc["dirty_bytes"] == 0, "idle cycle: %r" % lc)
        # only the base cut of each disk stays beside the images
        cuts = sorted(os.listdir(os.path.join(fs.mnt, "images", ".replicad", "web01")))
        check(len(cuts) == 2 and all(c.startswith("d") for c in cuts), "cuts: %r" % cuts)
        rep.ok("verify", "web01")


def test_rounds_xfs(env):
    rounds(env, "xfs")


def test_rounds_btrfs(env):
    rounds(env, "btrfs")


# --- point-in-time cuts while the guest writes --------------------------------

RECS = 48                      # records, one per 64 KiB block, in write order


def read_recs(path):
    out = []
    with open(path, "rb") as f:
        for j in range(RECS):
            f.seek(j * BS)
            out.append(int.from_bytes(f.read(8), "little"))
    return out


class Writer(threading.Thread):
    """Writes sequence number k into records 0..RECS-1 in order, then k+1:
    at any instant the records read k..k then k-1..k-1."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.stop, self.k = path, False, 0

    def run(self):
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while not self.stop:
                self.k += 1
                for j in range(RECS):
                    os.pwrite(fd, self.k.to_bytes(8, "little") * 512, j * BS)
        finally:
            os.close(fd)


def prefix_consistent(recs):
    """The records of one instant: non-increasing, at most one apart."""
    return all(a >= b for a, b in zip(recs, recs[1:])) and recs[0] - recs[-1] <= 1


def writes_during_cuts(env, fstype):
    with LoopFs(env, "fs", fstype, 512 * MiB) as fs:
        pri, rep, disks = rig(env, fs, [16 * MiB])
        w = Writer(disks[0])
        w.start()
        try:
            seen = set()
            for rnd in range(12):
                time.sleep(env.rng.random() * 0.05)
                pri.ok("sync", "web01", "--wait")
                recs = read_recs(os.path.join(rep.storage, "web01", "d0.img"))
                check(prefix_consistent(recs), "round %d: the replica holds no single "
                      "instant of the disk: %r" % (rnd, recs))
                seen.add(recs[0])
        finally:
            w.stop = True
            w.join()
        check(len(seen) >= 3, "the writer made too little progress between cuts: %r" % seen)
        pri.ok("sync", "web01", "--wait")
        assert_same(disks[0], os.path.join(rep.storage, "web01", "d0.img"))


def test_writes_during_cuts_xfs(env):
    writes_during_cuts(env, "xfs")


def test_writes_during_cuts_btrfs(env):
    writes_during_cuts(env, "btrfs")


WRITER2 = """
import os, sys
a = os.open(sys.argv[1], os.O_WRONLY)
b = os.open(sys.argv[2], os.O_WRONLY)
k = 0
while True:
    k += 1
    os.pwrite(a, k.to_bytes(8, "little") * 512, 0)
    os.pwrite(b, k.to_bytes(8, "little") * 512, 0)
"""


def test_two_disks_one_instant(env):
    """Two disks written "at once" (disk A, then disk B, in a loop): with a
    pre_snapshot hook that pauses the writer the cut of both disks is one
    instant, so B never holds a write A does not."""
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        pri, rep, disks = rig(env, fs, [8 * MiB, 8 * MiB])
        script = env.path("writer.py")
        open(script, "w").write(WRITER2)
        proc = subprocess.Popen(["python3", script] + disks)
        env.procs.append(proc)
        pid = proc.pid
        log = env.path("hooks.log")
        freeze = ("kill -STOP %d; while ! grep -q '^State:.*(stopped)' /proc/%d/status; "
                  "do :; done; echo freeze >> %s" % (pid, pid, log))
        thaw = "kill -CONT %d; echo thaw >> %s" % (pid, log)
        pri.stop()
        set_vm_keys(pri, "web01", "pre_snapshot = %s\npost_snapshot = %s\n" % (freeze, thaw))
        pri.start()
        try:
            last = 0
            for rnd in range(10):
                time.sleep(0.02)
                pri.ok("sync", "web01", "--wait")
                a, b = [read_recs(os.path.join(rep.storage, "web01", "d%d.img" % i))[0]
                        for i in (0, 1)]
                check(a - b in (0, 1), "round %d: disk A at %d, disk B at %d: not one instant"
                      % (rnd, a, b))
                check(a >= last, "round %d: went back from %d to %d" % (rnd, last, a))
                last = a
            check(last > 0, "the writer never ran")
            pts = json.loads(rep.ok("points", "web01", "--json").out)
            check(all(p["kind"] == "app" for p in pts), "points: %r" % pts)
        finally:
            proc.kill()
            proc.wait()
        lines = open(log).read().split()
        check(lines == ["freeze", "thaw"] * (len(lines) // 2) and len(lines) >= 20,
              "freeze and thaw do not alternate: %r" % lines[:10])


# --- lost state, rewritten images, crashes --------------------------------------

def test_lost_base_and_rewritten_image(env):
    with LoopFs(env, "fs", "btrfs", 512 * MiB) as fs:
        pri, rep, disks = rig(env, fs, [16 * MiB])
        d = disks[0]
        pri.ok("sync", "web01", "--wait")
        total = os.path.getsize(d)
        cutdir = os.path.join(fs.mnt, "images", ".replicad", "web01")
        # the base cut is gone: the whole disk is compared, not assumed clean
        for f in os.listdir(cutdir):
            os.unlink(os.path.join(cutdir, f))
        write_random(env, d, total, 3, set())
        mark = LogMark(pri)
        pri.ok("sync", "web01", "--wait")
        mark.wait("no cut of cycle", "comparing the whole disk")
        lc = vm_status(pri, "web01")["last_cycle"]
        check(lc["bytes_read"] == total, "read %d of %d after losing the base" % (lc["bytes_read"], total))
        assert_same(d, os.path.join(rep.storage, "web01", "d0.img"))
        # a base cut someone cut short, and the guest punches a hole past
        # that length: both show no extent there, yet the digests say data
        pri.ok("sync", "web01", "--wait")
        base = [f for f in os.listdir(cutdir) if not f.endswith(".new")]
        check(len(base) == 1, "cuts: %r" % base)
        os.truncate(os.path.join(cutdir, base[0]), MiB)
        subprocess.run(["fallocate", "-p", "-o", str(8 * MiB), "-l", str(BS), d], check=True)
        mark = LogMark(pri)
        pri.ok("sync", "web01", "--wait")
        mark.wait("is not the one the digests describe", "comparing the whole disk")
        assert_same(d, os.path.join(rep.storage, "web01", "d0.img"), "after a hole punched")
        # a copy put in the image's place (every extent moves): read all,
        # send only what differs
        subprocess.run(["cp", "--reflink=never", "--sparse=always", d, d + ".tmp"], check=True)
        write_random(env, d + ".tmp", total, 2, set())
        os.rename(d + ".tmp", d)
        pri.ok("sync", "web01", "--wait")
        lc = vm_status(pri, "web01")["last_cycle"]
        check(lc["bytes_read"] >= 14 * MiB, "a rewritten image was not compared: %r" % lc)
        check(lc["dirty_bytes"] <= 1 * MiB, "unchanged blocks were sent: %r" % lc)
        assert_same(d, os.path.join(rep.storage, "web01", "d0.img"))
        # defragmented (btrfs rewrites the extents)
        subprocess.run(["btrfs", "filesystem", "defragment", "-f", d], check=True)
        pri.ok("sync", "web01", "--wait")
        assert_same(d, os.path.join(rep.storage, "web01", "d0.img"))
        rep.ok("verify", "web01")


def test_crash_mid_cycle(env):
    """kill -9 of the primary at random moments of cycles: the next cycle
    compares against the digests' cut, and nothing is lost."""
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        pri, rep, disks = rig(env, fs, [48 * MiB])
        d = disks[0]
        pri.ok("sync", "web01", "--wait")
        for rnd in range(4):
            write_random(env, d, os.path.getsize(d), 40, set())
            r = subprocess.Popen([REPLCTL, "-s", pri.socket, "sync", "web01", "--wait"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(env.rng.random() * 0.08)
            pri.kill9()
            r.wait()
            write_random(env, d, os.path.getsize(d), 3, set())
            pri.start()
            pri.ok("sync", "web01", "--wait")
            assert_same(d, os.path.join(rep.storage, "web01", "d0.img"), "round %d" % rnd)
        cuts = os.listdir(os.path.join(fs.mnt, "images", ".replicad", "web01"))
        check(len(cuts) == 1, "cuts left behind: %r" % cuts)


def test_no_reflink_said_plainly(env):
    """On a file system without reflinks (tmpfs), --check and the VM's
    start say so, and a sync fails with the reason; nothing is copied."""
    mnt = env.path("tmpfs")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt], check=True)
    try:
        d = env.make_disk(os.path.join(mnt, "d0.img"), 4 * MiB)
        rep = env.replica().start()
        pri = env.primary({"web01": [d]}, rep.port)
        log = env.path("hooks.log")
        set_vm_keys(pri, "web01", "tracker = reflink\npre_snapshot = echo freeze >> %s\n"
                    "post_snapshot = echo thaw >> %s\n" % (log, log))
        r = subprocess.run([REPLICAD, "-c", pri.conf, "--check"], capture_output=True, text=True)
        check(r.returncode == 1 and "cannot make reflinks" in r.stderr and d in r.stderr,
              "--check on tmpfs: rc %d, %r" % (r.returncode, r.stderr))
        mark = LogMark(pri)
        pri.start()
        mark.wait("web01", "cannot make reflinks")
        r = pri.ctl("sync", "web01", "--wait")
        check(r.rc == 1 and "cannot make reflinks" in r.err, "sync: %r" % r)
        # the cut failed after the freeze: the thaw ran all the same
        check(open(log).read().split() == ["freeze", "thaw"], "hooks: %r" % open(log).read())
        pts = rep.ctl("points", "web01", "--json")
        check(pts.rc != 0 or json.loads(pts.out) == [], "a point was made: %r" % pts)
        check(os.listdir(os.path.join(mnt, ".replicad", "web01")) == [],
              "files left beside the image")
        check(pri.alive(), "the daemon died")
        pri.stop()
        rep.stop()
    finally:
        for p in env.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", mnt])


def test_planned_failover_and_back(env):
    """A reflink primary hands over and comes back: its cuts go with the
    primary role, and back as primary it compares the whole disk once
    against the digests (reads all, sends only what changed)."""
    from test_failover import Hosts, VM
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        h = Hosts(env, hooks=False, disk_dir=os.path.join(fs.mnt, "images"),
                  vm_extra="tracker = reflink\n")
        cutdir = os.path.join(fs.mnt, "images", ".replicad", VM)
        write_random(env, h.disks[0], os.path.getsize(h.disks[0]), 4, set())
        h.a.ok("sync", VM, "--wait")
        check(len(os.listdir(cutdir)) == 2, "cuts: %r" % os.listdir(cutdir))
        h.a.ok("failover", VM, "--planned")
        h.same("after the handover")
        check(not os.path.exists(cutdir), "cuts left on the host that became the replica: %r"
              % (os.path.exists(cutdir) and os.listdir(cutdir)))
        for d in h.b_disks():
            write_random(env, d, os.path.getsize(d), 3, set())
        h.b.ok("sync", VM, "--wait")
        h.same("after replicating back")
        h.b.ok("failover", VM, "--planned")
        h.same("after failing back")
        write_random(env, h.disks[1], os.path.getsize(h.disks[1]), 2, set())
        mark = LogMark(h.a)
        h.a.ok("sync", VM, "--wait")
        h.same("after the first reflink cycle back")
        lc = vm_status(h.a, VM)["last_cycle"]
        total = sum(os.path.getsize(d) for d in h.disks)
        check(lc["bytes_read"] == total and lc["dirty_bytes"] < total // 8,
              "first cycle back: %r (disks %d bytes)" % (lc, total))
        check("resynchronising" not in mark.new(), "the first cycle back was a resync")
        write_random(env, h.disks[0], os.path.getsize(h.disks[0]), 2, set())
        h.a.ok("sync", VM, "--wait")
        h.same("after a second cycle")
        lc = vm_status(h.a, VM)["last_cycle"]
        check(lc["bytes_read"] < total // 4, "the second cycle read %r" % lc)
        h.b.ok("verify", VM)
        h.a.stop()
        h.b.stop()


def test_tracker_changed_back_to_scan(env):
    """A VM moved from reflink to scan: the clone left beside the image
    (which would pin the image's old extents for good) is removed at the
    next start, and replication goes on."""
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        pri, rep, disks = rig(env, fs, [8 * MiB])
        pri.ok("sync", "web01", "--wait")
        cutdir = os.path.join(fs.mnt, "images", ".replicad", "web01")
        check(len(os.listdir(cutdir)) == 1, "cuts: %r" % os.listdir(cutdir))
        pri.stop()
        text = open(pri.conf).read().replace("tracker = reflink\n", "")
        open(pri.conf, "w").write(text)
        pri.start()
        write_random(env, disks[0], os.path.getsize(disks[0]), 3, set())
        pri.ok("sync", "web01", "--wait")
        assert_same(disks[0], os.path.join(rep.storage, "web01", "d0.img"))
        check(not os.path.exists(cutdir), "the clone stayed beside the image")
        pri.stop()
        rep.stop()


def idle_by_times(env, fstype):
    """An idle image is known idle by its times alone (no FIEMAP, no
    clone) once they are older than the clock's granularity; any write
    after the cut, a write that puts mtime back, and writes within the
    same second as the cycle before are all still found."""
    with LoopFs(env, "fs", fstype, 400 * MiB) as fs:
        pri, rep, disks = rig(env, fs, [16 * MiB])
        d = disks[0]
        rimg = os.path.join(rep.storage, "web01", os.path.basename(d))
        pri.ok("sync", "web01", "--wait")

        def settle():
            st = os.stat(d)
            # A condition on the wall clock, not on another process.
            while time.time_ns() < max(st.st_mtime_ns, st.st_ctime_ns) + 1_200_000_000:
                time.sleep(0.05)

        settle()
        pri.ok("sync", "web01", "--wait")       # idle by its extents: times kept
        mark = LogMark(pri)
        pri.ok("sync", "web01", "--wait")
        check("its times say so" in mark.new(),
              "an idle, settled image was not known idle by its times:\n%s" % mark.new()[-2000:])
        assert_same(d, rimg, "idle by its times")
        # Writes at once after a cycle (the same second): found.
        for rnd in range(4):
            touched = set()
            write_random(env, d, os.path.getsize(d), 1 + rnd, touched)
            pri.ok("sync", "web01", "--wait")
            assert_same(d, rimg, "written right after a cycle, round %d" % rnd)
        # A write after settled times, then mtime put back: ctime tells.
        settle()
        pri.ok("sync", "web01", "--wait")
        pri.ok("sync", "web01", "--wait")
        before = os.stat(d)
        with open(d, "r+b") as f:
            f.seek(5 * MiB + 4096)
            f.write(env.rng.randbytes(8192))
        os.utime(d, ns=(before.st_atime_ns, before.st_mtime_ns))
        mark = LogMark(pri)
        pri.ok("sync", "web01", "--wait")
        check("its times say so" not in mark.new(),
              "a write whose mtime was put back passed as idle:\n%s" % mark.new()[-2000:])
        assert_same(d, rimg, "written with mtime put back")
        pri.stop()
        rep.stop()


def test_idle_by_times_xfs(env):
    idle_by_times(env, "xfs")


def test_idle_by_times_btrfs(env):
    idle_by_times(env, "btrfs")
