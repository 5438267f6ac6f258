"""pre_snapshot / post_snapshot hooks around the read of a cycle."""
import json
import os

from harness import assert_same, check


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
