"""interval = 1s: steady writes with the reflink tracker.  Every recovery
point is one instant of the disk (byte-exact against one of the states the
test went through, in order); points keep coming; the lag status shows is
the age of the newest point, and its health follows from that lag."""
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
POINTS = 50        # points the writer runs for
STALL_S = 120      # no new point for this long: cycles have stopped


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


def created_ms(text):
    """Unix ms of an ISO 8601 "2026-11-27T20:31:00Z" (whole seconds)."""
    import calendar
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) * 1000


def check_lag(pri):
    """One status read: the lag is the age of the newest point (bracketed
    by the wall clock before and after the read; created has whole
    seconds), and the health is what that lag makes it (lag_warning and
    lag_critical default to 2 and 4 intervals).  Returns (point, lag)."""
    before = time.time() * 1000
    v = vm_status(pri, "web01")
    after = time.time() * 1000
    if v["last_point"] in (None, 0):
        check(v["lag_ms"] in (None, -1), "a lag without a point: %r" % v)
        return 0, None
    cut = created_ms(v["last_point_created"])
    lag = v["lag_ms"]
    check(before - cut - 1000 < lag <= after - cut + 1,
          "lag %d ms, but point %d was cut at %s, %d to %d ms before: %r"
          % (lag, v["last_point"], v["last_point_created"], before - cut, after - cut, v))
    if v["state"] != "error" and v["state"] != "fenced":
        want = "critical" if lag > 4000 else "warning" if lag > 2000 else "normal"
        check(v["health"] == want, "health %s at lag %d ms: %r" % (v["health"], lag, v))
    return v["last_point"], lag


def test_one_second_interval(env):
    with LoopFs(env, "fs", "xfs", 512 * MiB) as fs:
        pri, rep, disk = one_second_pair(env, fs, SIZE)
        w = Steps(env, disk)
        w.start()
        worst, newest, seen = 0, 0, time.monotonic()
        follow = {}     # point: writer steps done while it was the newest
        try:
            while newest < POINTS:
                time.sleep(0.25)         # the pace of the status reads
                steps = w.n
                pt, lag = check_lag(pri)
                if pt > newest:
                    newest, seen = pt, time.monotonic()
                    follow[pt] = steps
                check(time.monotonic() - seen < STALL_S, "no new point after %d (%d writer steps) for %d s"
                      % (newest, w.n, STALL_S))
                worst = max(worst, lag or 0)
        finally:
            w.stop = True
            w.join()
        check(w.error is None, "writer: %r" % w.error)
        pts = json.loads(rep.ok("points", "web01", "--json").out)
        check([p["id"] for p in pts] == list(range(1, len(pts) + 1)) and len(pts) >= POINTS,
              "points %r" % [p["id"] for p in pts])
        # Every point is one of the writer's states, and they follow its
        # order.  They follow the writer: while point k was the newest,
        # k + 1 may have been cut already, but k + 2 was not, so it holds
        # every step made before then.
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
            if p["id"] - 2 in follow:
                check(last >= follow[p["id"] - 2], "point %d holds step %d, but step %d was done while "
                      "point %d was the newest" % (p["id"], last, follow[p["id"] - 2], p["id"] - 2))
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


def test_interval_through_clock_steps(env):
    """Cycles every interval go on when the primary's wall clock steps
    back a day and then forward two (libfaketime; the schedule and the
    lag follow the monotonic clock): new points keep coming, each stamped
    with the clock of its cut, and the primary's lag stays the age of its
    newest cut instead of jumping by a day."""
    from harness import fake_clock_env, set_fake_clock, wait_for
    day = 86400
    disk = env.make_disk(env.path("src", "d0.img"), 1 * MiB)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port)
    set_vm_keys(pri, "web01", "lag_critical = 1h\n")
    conf = open(pri.conf).read().replace("interval = 0\n", "interval = 1s\n")
    open(pri.conf, "w").write(conf)
    tsfile = env.path("faketime")
    t0 = int(time.time())
    pri.start(env_extra=fake_clock_env(tsfile, t0))
    for step, t in (("start", t0), ("back a day", t0 - day), ("forward two days", t0 + day)):
        set_fake_clock(tsfile, t)
        n = len(points(rep))
        wait_for(lambda: len(points(rep)) >= n + 3, 120, what="3 cycles after the clock went %s" % step)
        newest = points(rep)[-1]
        check(created_ms(newest["created"]) // 1000 in (t, t - 1), "point %r cut at %s" % (newest, step))
        v = vm_status(pri, "web01")
        check(0 <= v["lag_ms"] < day * 1000 // 2 and v["health"] != "critical",
              "primary's lag after the clock went %s: %r" % (step, v))
    pri.stop()
    rep.stop()
