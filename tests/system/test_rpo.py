"""interval = 1s: a minute of steady writes with the reflink tracker.  Every
recovery point is one instant of the disk (byte-exact against one of the
states the test went through, in order), and the lag stays under 3 s."""
import hashlib
import os
import re
import threading
import time
import json

from harness import LoopFs, assert_same, check, set_vm_keys, vm_status

# Loop devices and mounts: run.py -j runs these alone.
SERIAL = True

MiB = 1 << 20
BS = 64 << 10
SIZE = 16 * MiB
RUN_S = 60


def state_key(blocks):
    return hashlib.sha256(b"".join(blocks)).hexdigest()


def image_key(path):
    blocks = []
    with open(path, "rb") as f:
        for _ in range(SIZE // BS):
            blocks.append(hashlib.sha256(f.read(BS)).digest())
    return state_key(blocks)


class Steps(threading.Thread):
    """One pwrite per step (a reflink cut sees it whole or not at), then a
    short pause; the digest of the disk after every step is recorded."""

    def __init__(self, env, path):
        super().__init__(daemon=True)
        self.env, self.path, self.stop = env, path, False
        self.blocks = []
        with open(path, "rb") as f:
            for _ in range(SIZE // BS):
                self.blocks.append(hashlib.sha256(f.read(BS)).digest())
        self.states = {state_key(self.blocks): 0}
        self.n = 0
        self.error = None

    def run(self):
        rng = self.env.rng
        fd = os.open(self.path, os.O_RDWR)
        try:
            while not self.stop:
                length = rng.choice([4096, 65536, 200000, 256 << 10])
                off = rng.randrange(0, SIZE - length)
                os.pwrite(fd, rng.randbytes(length), off)
                for b in range(off // BS, (off + length - 1) // BS + 1):
                    self.blocks[b] = hashlib.sha256(os.pread(fd, BS, b * BS)).digest()
                self.n += 1
                self.states.setdefault(state_key(self.blocks), self.n)
                time.sleep(rng.random() * 0.08)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            os.close(fd)


def one_second_pair(env, fs, size):
    """A VM on fs with the reflink tracker and interval = 1s, running."""
    disk = os.path.join(fs.mnt, "images", "d0.img")
    env.make_disk(disk, size)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port)
    set_vm_keys(pri, "web01", "tracker = reflink\n")
    conf = open(pri.conf).read().replace("interval = 0\n", "interval = 1s\n")
    open(pri.conf, "w").write(conf)
    pri.start()
    return pri, rep, disk


def test_one_second_interval(env):
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        pri, rep, disk = one_second_pair(env, fs, SIZE)
        w = Steps(env, disk)
        w.start()
        worst = 0
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < RUN_S:
                time.sleep(0.25)
                v = vm_status(pri, "web01")
                if v["lag_ms"] is None:
                    check(time.monotonic() - t0 < 3, "no point after %.1fs" % (time.monotonic() - t0))
                    continue
                worst = max(worst, v["lag_ms"])
                check(v["lag_ms"] < 3000, "lag %d ms at %.1fs: %r" % (v["lag_ms"], time.monotonic() - t0, v))
                check(v["health"] == "normal", "health %s at lag %d ms" % (v["health"], v["lag_ms"]))
        finally:
            w.stop = True
            w.join()
        check(w.error is None, "writer: %r" % w.error)
        pts = json.loads(rep.ok("points", "web01", "--json").out)
        check(len(pts) >= RUN_S - 5, "%d points in %d s at interval 1s" % (len(pts), RUN_S))
        # Every point is one of the writer's states, and they follow its order.
        last = -1
        for p in pts:
            out = rep.ok("failover", "web01", "--test", "--point", str(p["id"])).out
            path = re.search(r"(/\S+/test/d0\.img)", out).group(1)
            k = image_key(path)
            rep.ok("failover", "web01", "--test", "--cleanup")
            check(k in w.states, "point %d is no single instant of the disk" % p["id"])
            check(w.states[k] >= last, "point %d went back from state %d to %d"
                  % (p["id"], last, w.states[k]))
            last = w.states[k]
        check(last >= w.n - 30, "the points stop at step %d of %d" % (last, w.n))
        pri.ok("sync", "web01", "--wait")
        assert_same(disk, os.path.join(rep.storage, "web01", "d0.img"))
        print("  %d points, %d writer steps, worst lag %d ms" % (len(pts), w.n, worst))


def points(rep):
    r = rep.ctl("points", "web01", "--json")
    return json.loads(r.out) if r.rc == 0 else []


def test_kept_session(env):
    """At interval = 1s the session stays open between cycles: many points,
    few sessions.  A replica killed and restarted is reconnected to, and
    the copy catches up."""
    from harness import wait_for
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        pri, rep, disk = one_second_pair(env, fs, 4 * MiB)
        wait_for(lambda: len(points(rep)) >= 8, 20, what="8 points")
        sessions = rep.log_text().count("session from primary")
        check(sessions <= 2, "%d sessions for %d cycles" % (sessions, len(points(rep))))
        rep.kill9()
        with open(disk, "r+b") as f:
            f.write(env.rng.randbytes(65536))
        rep.start()
        n = len(points(rep))
        wait_for(lambda: len(points(rep)) >= n + 3, 20, what="cycles after the replica's restart")
        pri.ok("sync", "web01", "--wait")
        assert_same(disk, os.path.join(rep.storage, "web01", "d0.img"))
        pri.stop()
        rep.stop()


def test_kept_session_and_failover(env):
    """An unplanned failover on the replica while the primary keeps a
    session: the replica ends it, the old primary is fenced at its next
    cycle, and the promoted copy does not change."""
    from harness import wait_for
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        pri, rep, disk = one_second_pair(env, fs, 4 * MiB)
        wait_for(lambda: len(points(rep)) >= 3, 20, what="3 points")
        rep.ok("failover", "web01")
        promoted = os.path.join(rep.storage, "web01", "d0.img")
        before = open(promoted, "rb").read()
        with open(disk, "r+b") as f:
            f.write(env.rng.randbytes(65536))
        wait_for(lambda: vm_status(pri, "web01")["state"] == "fenced", 20,
                 what="the old primary to be fenced")
        check(open(promoted, "rb").read() == before, "the promoted copy changed")
        pri.stop()
        rep.stop()
