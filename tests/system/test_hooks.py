"""pre_snapshot / post_snapshot hooks around the read of a cycle."""
import json
import os
import time

from harness import assert_same, check, fake_clock_env, set_fake_clock, set_vm_keys


def start(env, pre, post):
    disk = env.make_disk(env.path("src", "h.img"), 4 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port)
    text = open(pri.conf).read().replace(
        "interval = 0\n", "interval = 0\npre_snapshot = %s\npost_snapshot = %s\n" % (pre, post))
    open(pri.conf, "w").write(text)
    pri.start()
    return pri, rep, disk


def test_freeze_ok_gives_app_point(env):
    log = env.path("hooks.log")
    pri, rep, disk = start(env, "echo pre $REPLICAD_VM $REPLICAD_DISKS >> %s" % log,
                           "echo post $REPLICAD_VM >> %s" % log)
    pri.ok("sync", "web01", "--wait")
    lines = open(log).read().splitlines()
    check(lines == ["pre web01 %s" % disk, "post web01"], "hook log %r" % lines)
    pts = json.loads(rep.ok("points", "web01", "--json").out)
    check(pts[-1]["kind"] == "app", "point after a successful freeze is %r" % pts[-1])
    assert_same(disk, os.path.join(rep.storage, "web01", "h.img"))


def test_failed_freeze_gives_crash_point_and_thaws(env):
    log = env.path("hooks.log")
    pri, rep, disk = start(env, "echo frozen-not >&2; exit 3", "echo thawed >> %s" % log)
    pri.ok("sync", "web01", "--wait")
    check(open(log).read().split() == ["thawed"], "thaw did not run once after a failed freeze")
    pts = json.loads(rep.ok("points", "web01", "--json").out)
    check(pts[-1]["kind"] == "crash", "point after a failed freeze is %r" % pts[-1])
    check("pre_snapshot hook exited 3: frozen-not" in pri.log_text(), "hook failure not logged")


def test_thaw_runs_when_cycle_fails(env):
    """The replica is gone mid-cycle: the thaw still runs."""
    log = env.path("hooks.log")
    pri, rep, disk = start(env, "true", "echo thawed >> %s" % log)
    rep.stop()
    r = pri.ctl("sync", "web01", "--wait")
    check(r.rc == 1, "sync with the replica down: %r" % r)
    # the cycle fails at connect, before the freeze: no hook at all
    check(not os.path.exists(log), "hooks ran although the cycle never reached the cut")
    rep.start()
    pri.ok("sync", "web01", "--wait")
    check(open(log).read().split() == ["thawed"], "thaw log %r" % open(log).read())


def hung_freeze(env, freeze, logged):
    """A freeze that hangs is killed after snapshot_timeout: the point is
    crash-consistent, the thaw still runs, the cycle goes on; logged is
    the line that says why.  The freeze would hang for 10 minutes, longer
    than replctl is given, so the sync returns only if it was killed."""
    log = env.path("hooks.log")
    pri, rep, disk = start(env, freeze, "echo thawed >> %s" % log)
    pri.stop()
    set_vm_keys(pri, "web01", "snapshot_timeout = 1s\n")
    pri.start()
    pri.ok("sync", "web01", "--wait", timeout=300)
    check("pre_snapshot hook killed after 1 s" in pri.log_text(), "the freeze was not killed at its deadline")
    check(open(log).read().split() == ["thawed"], "thaw log %r" % open(log).read())
    pts = json.loads(rep.ok("points", "web01", "--json").out)
    check(pts[-1]["kind"] == "crash", "point after a hung freeze is %r" % pts[-1])
    check(logged in pri.log_text(), "not logged: %r" % logged)
    assert_same(disk, os.path.join(rep.storage, "web01", "h.img"))


def test_hanging_freeze_times_out(env):
    hung_freeze(env, "sleep 600", "will be a crash-consistent point")


def test_freeze_that_closes_its_output_still_times_out(env):
    """It closed its output first: the deadline holds all the same."""
    hung_freeze(env, "exec >/dev/null 2>&1; sleep 600", "pre_snapshot hook killed after 1 s")


def test_app_interval(env):
    """app_interval: the freeze runs only when the newest app point is that
    old on the primary's clock (libfaketime steps it: no wall-clock race);
    the other cuts are crash points without hooks; the time of the last
    app point survives a restart; after the clock went back, the next cut
    freezes (it does not wait for the clock to catch up)."""
    log = env.path("hooks.log")
    tsfile = env.path("faketime")
    t0 = int(time.time()) + 3600
    pri, rep, disk = start(env, "echo freeze >> %s" % log, "echo thaw >> %s" % log)
    pri.stop()
    set_vm_keys(pri, "web01", "app_interval = 4s\n")
    clock = fake_clock_env(tsfile, t0)
    pri.start(env_extra=clock)

    def sync_at(t):
        set_fake_clock(tsfile, t)
        pri.ok("sync", "web01", "--wait")
        return [p["kind"] for p in json.loads(rep.ok("points", "web01", "--json").out)]

    sync_at(t0)
    sync_at(t0 + 1)
    pri.stop()
    pri.start(env_extra=clock)
    kinds = sync_at(t0 + 3)
    check(kinds == ["app", "crash", "crash"], "kinds %r" % kinds)
    check(open(log).read().split() == ["freeze", "thaw"], "hooks %r" % open(log).read())
    kinds = sync_at(t0 + 4)
    check(kinds == ["app", "crash", "crash", "app"], "kinds %r" % kinds)
    check(open(log).read().split() == ["freeze", "thaw"] * 2, "hooks %r" % open(log).read())
    # The clock steps back an hour: due at once, then every 4 s again.
    kinds = sync_at(t0 - 3600)
    check(kinds[4:] == ["app"], "kinds after the clock went back %r" % kinds)
    kinds = sync_at(t0 - 3600 + 2)
    check(kinds[5:] == ["crash"], "kinds 2 s after the app point %r" % kinds)
    check(open(log).read().split() == ["freeze", "thaw"] * 3, "hooks %r" % open(log).read())
    pri.stop()
    rep.stop()
