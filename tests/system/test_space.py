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
