"""A replica whose file system fills up: the cycle is refused, nothing is
damaged, and replication recovers once there is room again."""
import json
import os
import subprocess

from harness import assert_same, check, file_digest


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", path],
                   check=True)


def test_replica_file_system_full(env):
    storage = env.path("small")
    mount_tmpfs(storage, "48m")
    try:
        disk = env.make_disk(env.path("src", "d.img"), 16 << 20)
        rep = env.replica()
        text = open(rep.conf).read().replace(rep.storage, storage)
        open(rep.conf, "w").write(text)
        rep.storage = storage
        rep.start()
        pri = env.primary({"web01": [disk]}, rep.port).start()
        pri.ok("sync", "web01", "--wait")
        image = os.path.join(storage, "web01", "d.img")
        before = file_digest(image)
        points = rep.ok("points", "web01", "--json").out

        # Grow the disk by more than the file system can hold.
        with open(disk, "r+b") as f:
            f.seek(16 << 20)
            f.write(env.rng.randbytes(40 << 20))
        r = pri.ctl("sync", "web01", "--wait")
        check(r.rc == 1 and ("space" in r.err or "nospace" in r.err),
              "sync on a full replica: %r" % r)
        st = json.loads(pri.ok("status", "web01", "--json").out)["vms"][0]
        check(st["state"] == "error" and st["error"], "primary status %r" % st)
        check(file_digest(image, 16 << 20) == before and os.path.getsize(image) == 16 << 20,
              "the replica image changed after a refused cycle")
        check(rep.ok("points", "web01", "--json").out == points, "points changed")
        rep.ok("verify", "web01")

        # Overwrite within the old size too: staging + undo do not fit.
        with open(disk, "r+b") as f:
            f.truncate(16 << 20)
        env.make_disk(env.path("src", "d.img"), 16 << 20)   # all new content
        subprocess.run(["mount", "-o", "remount,size=40m", storage], check=True)
        r = pri.ctl("sync", "web01", "--wait")
        if r.rc != 0:
            check(file_digest(image) == before, "image changed after a refused overwrite")
            rep.ok("verify", "web01")

        # Room again: replication catches up, exactly.
        subprocess.run(["mount", "-o", "remount,size=400m", storage], check=True)
        pri.ok("sync", "web01", "--wait")
        assert_same(disk, image, "after space returned")
        rep.ok("verify", "web01")
        rep.stop()
        pri.stop()
    finally:
        for p in env.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", storage])


def test_min_free_drops_oldest_then_refuses(env):
    """min_free: the oldest points go first (each logged), every point that
    remains stays exact; when no point is left to drop the cycle is refused
    (critical health on both sides, nothing damaged); room again, it goes on."""
    storage = env.path("small")
    mount_tmpfs(storage, "72m")
    try:
        disk = env.make_disk(env.path("src", "d.img"), 16 << 20)
        rep = env.replica(extra="min_free = 24M\n")
        text = open(rep.conf).read().replace(rep.storage, storage)
        open(rep.conf, "w").write(text)
        rep.storage = storage
        rep.start()
        pri = env.primary({"web01": [disk]}, rep.port).start()
        pri.ok("sync", "web01", "--wait")
        image = os.path.join(storage, "web01", "d.img")
        kept = {}
        for rnd in range(8):
            with open(disk, "r+b") as f:     # 6 MiB of new data each time
                f.seek((rnd % 2) * (8 << 20))
                f.write(env.rng.randbytes(6 << 20))
            pt = int(pri.ok("sync", "web01", "--wait").out.split()[1])
            kept[pt] = env.path("kept", "p%d" % pt)
            os.makedirs(env.path("kept"), exist_ok=True)
            subprocess.run(["cp", disk, kept[pt]], check=True)
            assert_same(disk, image, "round %d" % rnd)
        log = rep.log_text()
        check("dropped to keep min_free" in log, "no point was dropped for min_free")
        pts = [p["id"] for p in json.loads(rep.ok("points", "web01", "--json").out)]
        check(len(pts) < 9 and pts[-1] == max(kept), "points %r" % pts)
        for p in pts:
            if p not in kept:
                continue
            rep.ok("failover", "web01", "--test", "--point", str(p))
            assert_same(kept[p], os.path.join(storage, "web01", "test", "d.img"), "point %d" % p)
            rep.ok("failover", "web01", "--test", "--cleanup")
        rep.ok("verify", "web01")

        # A cycle bigger than what min_free allows, even with no history.
        before = file_digest(image)
        with open(disk, "r+b") as f:
            f.write(env.rng.randbytes(16 << 20))
        r = pri.ctl("sync", "web01", "--wait")
        check(r.rc == 1 and "space" in r.err, "sync past min_free: %r" % r)
        sp = json.loads(pri.ok("status", "web01", "--json").out)["vms"][0]
        sr = json.loads(rep.ok("status", "web01", "--json").out)["vms"][0]
        check(sp["health"] == "critical" and sr["health"] == "critical",
              "health after the refusal: primary %r, replica %r" % (sp, sr))
        check(file_digest(image) == before, "the image changed after a refused cycle")
        left = [p["id"] for p in json.loads(rep.ok("points", "web01", "--json").out)]
        check(left == pts, "points after the refusal %r, before %r: dropping them could not "
              "have made room, so none may go" % (left, pts))
        check("none was dropped" in rep.log_text(), "the refusal does not say why")
        rep.ok("verify", "web01")

        # Room again: the primary kept its changes and replication goes on.
        subprocess.run(["mount", "-o", "remount,size=400m", storage], check=True)
        pri.ok("sync", "web01", "--wait")
        assert_same(disk, image, "after space returned")
        sp = json.loads(pri.ok("status", "web01", "--json").out)["vms"][0]
        check(sp["health"] == "normal", "primary health after recovery %r" % sp)
        rep.ok("verify", "web01")
        pri.stop()
        rep.stop()
    finally:
        subprocess.run(["umount", "-l", storage])


def test_min_free_on_btrfs(env):
    """On btrfs, space freed by deleting an undo segment shows only at the
    next transaction: min_free must count what each drop frees, not drop
    every point before statvfs notices.  The history never collapses while
    the cycles fit."""
    import shutil
    if shutil.which("mkfs.btrfs") is None:
        check(False, "mkfs.btrfs missing (tools/install-deps installs btrfs-progs)")
    img = env.path("btrfs.img")
    mnt = env.path("bt")
    os.makedirs(mnt)
    with open(img, "wb") as f:
        f.truncate(320 << 20)
    dev = subprocess.run(["losetup", "-f", "--show", img], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["mkfs.btrfs", "-q", "-f", dev], check=True, capture_output=True)
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            disk = env.make_disk(env.path("src", "d.img"), 16 << 20)
            rep = env.replica(extra="min_free = 150M\n")
            text = open(rep.conf).read().replace(rep.storage, mnt)
            open(rep.conf, "w").write(text)
            rep.storage = mnt
            rep.start()
            pri = env.primary({"web01": [disk]}, rep.port).start()
            pri.ok("sync", "web01", "--wait")
            most = 0
            for rnd in range(14):
                with open(disk, "r+b") as f:
                    f.seek((rnd % 2) * (8 << 20))
                    f.write(env.rng.randbytes(6 << 20))
                pri.ok("sync", "web01", "--wait")
                assert_same(disk, os.path.join(mnt, "web01", "d.img"), "round %d" % rnd)
                n = len(json.loads(rep.ok("points", "web01", "--json").out))
                most = max(most, n)
                check(n >= 2 or most < 2, "round %d: the history collapsed to %d point(s) (it had %d)"
                      % (rnd, n, most))
            check("dropped to keep min_free" in rep.log_text(), "min_free never dropped a point")
            rep.ok("verify", "web01")
            pri.stop()
            rep.stop()
        finally:
            for p in env.procs:         # nothing may hold the mount
                if p.poll() is None:
                    p.kill()
                    p.wait()
            subprocess.run(["umount", "-l", mnt])
    finally:
        subprocess.run(["losetup", "-d", dev])
