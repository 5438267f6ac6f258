"""Recovery point history: forget and prune drop points, merging undo
segments so that every point that remains rebuilds exactly, crash-safely."""
import json
import os

from harness import assert_same, check, fake_clock_env, set_fake_clock, set_vm_keys, vm_status
from workload import random_write, snapshot

VM = "web01"


def point_of(result):
    words = result.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % result.out)
    return int(words[1])


def history(env, n, extra_accept=""):
    """n cycles with random writes (one disk grows on the way); returns
    (primary, replica, disks, {point: copies})."""
    disks = [env.make_disk(env.path("src", "sda.img"), 16 << 20),
             env.make_disk(env.path("src", "sdb.img"), (4 << 20) + 512, "sparse")]
    rep = env.replica(extra=extra_accept).start()
    pri = env.primary({VM: disks}, rep.port).start()
    kept = {}
    for rnd in range(n):
        for _ in range(env.rng.randrange(1, 4)):
            random_write(env.rng, env.rng.choice(disks), max_len=1 << 20)
        if rnd == n // 2:
            with open(disks[1], "r+b") as f:
                f.truncate(os.path.getsize(disks[1]) + (1 << 20) + 4096)
        pt = point_of(pri.ok("sync", VM, "--wait"))
        kept[pt] = snapshot(disks, env.path("kept"), "p%d" % pt)
    return pri, rep, disks, kept


def points(rep):
    return [p["id"] for p in json.loads(rep.ok("points", VM, "--json").out)]


def check_all(rep, disks, kept, what):
    """Every listed point rebuilds exactly; the live copy is the newest."""
    ids = points(rep)
    for pt in ids:
        rep.ok("failover", VM, "--test", "--point", str(pt))
        for c, d in zip(kept[pt], disks):
            assert_same(c, os.path.join(rep.storage, VM, "test", os.path.basename(d)),
                        "%s: point %d rebuilt" % (what, pt))
        rep.ok("failover", VM, "--test", "--cleanup")
    for c, d in zip(kept[max(ids)], disks):
        assert_same(c, os.path.join(rep.storage, VM, os.path.basename(d)), "%s: the live copy" % what)
    rep.ok("verify", VM)
    return ids


def undo_files(rep):
    return sorted(os.listdir(os.path.join(rep.storage, VM, ".undo")))


def with_undo(rep):
    """The points that hold undo data: a cycle that changed nothing (a
    scheduled cycle may take a round's writes before its `sync --wait`)
    makes a point with no segment, and so does the oldest point."""
    return [p["id"] for p in json.loads(rep.ok("points", VM, "--json").out)
            if p["undo_bytes"] > 0]


def test_forget_middle_and_oldest(env):
    pri, rep, disks, kept = history(env, 7)
    ids = points(rep)
    # Middle points, including two neighbours, then the oldest.
    for pt in (ids[3], ids[4], ids[1], ids[0]):
        r = rep.ok("forget", VM, "--point", str(pt))
        check("dropped" in r.out, "forget said %r" % r.out)
        check(pt not in points(rep), "point %d still listed" % pt)
        check_all(rep, disks, kept, "after forgetting %d" % pt)
    left = points(rep)
    check(left == [ids[2], ids[5], ids[6]], "points left %r" % left)
    # One segment per point that has undo data, none for the oldest; no
    # leftover file.
    check(ids[2] not in with_undo(rep), "the oldest point %d has undo data" % ids[2])
    check(len(undo_files(rep)) == len(with_undo(rep)),
          "undo files %r for points %r (with undo data: %r)" % (undo_files(rep), left, with_undo(rep)))
    # Refusals: the newest, an unknown point, a point of another VM.
    r = rep.ctl("forget", VM, "--point", str(ids[6]))
    check(r.rc == 1 and "newest" in r.err, "forget of the newest: %r" % r)
    r = rep.ctl("forget", VM, "--point", "999")
    check(r.rc == 1 and "999" in r.err, "forget of an unknown point: %r" % r)
    r = rep.ctl("forget", "nosuch", "--point", "1")
    check(r.rc == 1, "forget on an unknown VM: %r" % r)
    r = pri.ctl("forget", VM, "--point", str(ids[2]))
    check(r.rc == 1 and "primary" in r.err, "forget on the primary: %r" % r)
    # A point with an open test copy is kept until cleanup.
    rep.ok("failover", VM, "--test", "--point", str(ids[5]))
    r = rep.ctl("forget", VM, "--point", str(ids[5]))
    check(r.rc == 1 and "test copy" in r.err, "forget of a test copy's point: %r" % r)
    rep.ok("failover", VM, "--test", "--cleanup")
    rep.ok("forget", VM, "--point", str(ids[5]))
    # Replication goes on; ids are not reused.
    random_write(env.rng, disks[0])
    pt = point_of(pri.ok("sync", VM, "--wait"))
    check(pt == ids[6] + 1, "next point %d after %d" % (pt, ids[6]))
    kept[pt] = snapshot(disks, env.path("kept"), "p%d" % pt)
    check_all(rep, disks, kept, "after a new cycle")
    pri.stop()
    rep.stop()


def _crash_during_forget(env, fault):
    pri, rep, disks, kept = history(env, 5)
    ids = points(rep)
    rep.stop()
    rep.start(env_extra={"REPLICAD_FAULT": fault})
    r = rep.ctl("forget", VM, "--point", str(ids[2]))
    check(r.rc != 0, "forget went through although replicad was to die at %s: %r" % (fault, r))
    rep.proc.wait(10)
    check(rep.proc.returncode == -9, "replica exited %r, not by SIGKILL at %s" % (rep.proc.returncode, fault))
    rep.start()
    after = points(rep)
    if fault == "replica-after-drop-record":
        check(after == [i for i in ids if i != ids[2]], "points after a crash once recorded: %r" % after)
    else:
        check(after == ids, "points after a crash before the record: %r" % after)
    check_all(rep, disks, kept, "after a crash at %s" % fault)
    check(len(undo_files(rep)) == len(with_undo(rep)),
          "leftover undo files %r for points %r (with undo data: %r)" % (undo_files(rep), after, with_undo(rep)))
    # And the drop can be done now.
    if ids[2] in after:
        rep.ok("forget", VM, "--point", str(ids[2]))
        check_all(rep, disks, kept, "after the forget retried")
    pri.stop()
    rep.stop()


def test_crash_before_merge(env):
    _crash_during_forget(env, "replica-before-merge")


def test_crash_after_merge(env):
    _crash_during_forget(env, "replica-after-merge")


def test_crash_after_drop_record(env):
    _crash_during_forget(env, "replica-after-drop-record")


def test_prune_policy_dry_run_and_pinned(env):
    """prune with last=3: --dry-run lists what it would drop and changes
    nothing; prune drops the rest, oldest first; every remaining point
    rebuilds exactly; the point of an open test copy is kept."""
    pri, rep, disks, kept = history(env, 8, extra_accept="retention = last=3\n")
    ids = points(rep)
    files = undo_files(rep)
    r = rep.ok("prune", VM, "--dry-run")
    check("policy last=3" in r.out and "dry run" in r.out, "dry run said %r" % r.out)
    for pt in ids[:5]:
        check(("drop %6d" % pt) in r.out, "dry run does not list point %d as dropped: %r" % (pt, r.out))
    for pt in ids[5:]:
        check(("keep %6d" % pt) in r.out, "dry run does not keep %d: %r" % (pt, r.out))
    check(points(rep) == ids and undo_files(rep) == files, "--dry-run changed something")
    # A test copy of point 2 keeps it through the prune.
    rep.ok("failover", VM, "--test", "--point", str(ids[1]))
    r = rep.ok("prune", VM)
    check("test-copy" in r.out and ("keep %6d" % ids[1]) in r.out, "prune output %r" % r.out)
    check(points(rep) == [ids[1]] + ids[5:], "points after prune %r" % points(rep))
    rep.ok("failover", VM, "--test", "--cleanup")
    check_all(rep, disks, kept, "after prune")
    r = rep.ok("prune")                     # every VM: now point 2 goes
    check(points(rep) == ids[5:], "points after the second prune %r" % points(rep))
    check_all(rep, disks, kept, "after the second prune")
    r = rep.ok("prune", VM)
    check(points(rep) == ids[5:] and "0 dropped" in r.out, "a third prune changed %r" % r.out)
    # Bad input.
    r = rep.ctl("prune", "nosuch")
    check(r.rc == 1, "prune of an unknown VM: %r" % r)
    r = pri.ctl("prune", VM)
    check(r.rc == 1 and "primary" in r.err, "prune on the primary: %r" % r)
    r = pri.ok("prune")
    check("no replicas" in r.out, "prune on a host with no replica: %r" % r)
    pri.stop()
    rep.stop()


def test_prune_vm_override_and_within(env):
    """retention.VM overrides the entry's policy; within keeps everything
    younger than the duration (all points here)."""
    pri, rep, disks, kept = history(env, 5, extra_accept="retention = last=1\nretention.web01 = within=1h\n")
    ids = points(rep)
    r = rep.ok("prune", VM)
    check("policy within=1h" in r.out and points(rep) == ids, "within=1h dropped something: %r" % r.out)
    pri.stop()
    rep.stop()


FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def test_prune_time_buckets(env):
    """Points cut at chosen times (the primary runs under libfaketime):
    last=1,hourly=3,daily=3 keeps exactly the newest of the right hours and
    days; then daily=5 (a per-VM override) drops a point in the middle;
    after each prune every remaining point rebuilds exactly."""
    import calendar
    import time as _time
    check(os.path.exists(FAKETIME), "libfaketime is missing (tools/install-deps installs it)")
    day = 86400
    now = int(_time.time())
    base = (now // day + 2) * day + 600          # 00:10 UTC, two days ahead
    offsets = [0, 3600, 5400, 7200, day + 3600, day + 7200, 2 * day + 3600, 8 * day,
               8 * day + 3600, 15 * day]
    tsfile = env.path("faketime")
    disks = [env.make_disk(env.path("src", "sda.img"), 8 << 20)]
    rep = env.replica(extra="retention = last=1,hourly=3,daily=3\n").start()
    pri = env.primary({VM: disks}, rep.port)
    with open(tsfile, "w") as f:
        f.write(_time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(base)))
    pri.start(env_extra={"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": tsfile,
                         "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "TZ": "UTC",
                         # sanitizer builds: let libfaketime load first
                         "ASAN_OPTIONS": "verify_asan_link_order=0"})
    kept = {}
    for off in offsets:
        with open(tsfile, "w") as f:
            f.write(_time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(base + off)))
        random_write(env.rng, disks[0], max_len=256 << 10)
        pt = point_of(pri.ok("sync", VM, "--wait"))
        kept[pt] = snapshot(disks, env.path("kept"), "p%d" % pt)
    pts = json.loads(rep.ok("points", VM, "--json").out)
    ids = [p["id"] for p in pts]
    got = [calendar.timegm(_time.strptime(p["created"], "%Y-%m-%dT%H:%M:%SZ")) - base for p in pts]
    check(got == offsets, "points were not cut at the fake times: %r" % got)
    r = rep.ok("prune", VM)
    want = ids[6:]                                # P7 (day 2), P8, P9 (day 8), P10 (day 15)
    check(points(rep) == want, "after last=1,hourly=3,daily=3: %r, want %r\n%s" % (points(rep), want, r.out))
    for line, reasons in ((ids[9], "newest,last,hourly,daily"), (ids[8], "hourly,daily"),
                          (ids[7], "hourly"), (ids[6], "daily")):
        check(("keep %6d" % line) in r.out and reasons in r.out.split("keep %6d" % line)[1].split("\n")[0],
              "point %d should be kept for %s: %r" % (line, reasons, r.out))
    check_all(rep, disks, kept, "after the bucket prune")
    # A per-VM override, then prune again: P8 (same day as P9) goes.
    rep.stop()
    text = open(rep.conf).read().replace("retention = last=1,hourly=3,daily=3\n",
                                         "retention = last=1,hourly=3,daily=3\nretention.web01 = daily=5\n")
    open(rep.conf, "w").write(text)
    rep.start()
    r = rep.ok("prune", VM)
    check("policy daily=5" in r.out and points(rep) == [ids[6], ids[8], ids[9]],
          "after daily=5: %r\n%s" % (points(rep), r.out))
    check_all(rep, disks, kept, "after the daily=5 prune")
    pri.stop()
    rep.stop()



def test_prune_clock_steps(env):
    """The primary's clock steps back a day, then forward two, between
    cycles (libfaketime).  prune keeps the newest points by id, not those
    stamped latest; the points stamped later than a newer one count at
    its time (prune says so); every remaining point rebuilds exactly."""
    import time as _time
    day = 86400
    base = (int(_time.time()) // day + 2) * day + 10 * 3600    # 10:00 UTC, two days ahead
    # ids 1-4 on day 2, (step back) 5-8 on day 1, (step forward) 9-10 on day 3
    times = [base + m * 600 for m in range(4)] + \
        [base - day + m * 600 for m in range(4)] + [base + day + m * 600 for m in range(2)]
    tsfile = env.path("faketime")
    disks = [env.make_disk(env.path("src", "sda.img"), 4 << 20)]
    rep = env.replica(extra="retention = last=3,hourly=2,daily=2\n").start()
    pri = env.primary({VM: disks}, rep.port)
    set_vm_keys(pri, VM, "lag_critical = 1h\n")
    pri.start(env_extra=fake_clock_env(tsfile, times[0]))
    kept = {}
    for t in times:
        set_fake_clock(tsfile, t)
        random_write(env.rng, disks[0], max_len=256 << 10)
        pt = point_of(pri.ok("sync", VM, "--wait"))
        kept[pt] = snapshot(disks, env.path("kept"), "p%d" % pt)
    ids = points(rep)
    check(len(ids) == 10, "points %r" % ids)
    stamped = [p["created"] for p in json.loads(rep.ok("points", VM, "--json").out)]
    check(stamped == [_time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(t)) for t in times],
          "points were not cut at the fake times: %r" % stamped)
    # Ids 1-4 count at id 5's time (day 1, 10:00): one hour, one day with
    # ids 5-8, whose newest (8) is the one hourly= and daily= keep.
    step_back = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(times[4]))
    want = {ids[7]: "last,hourly,daily", ids[8]: "last", ids[9]: "newest,last,hourly,daily"}
    r = rep.ok("prune", VM, "--dry-run")
    lines = {}
    for pt in ids:
        line = [ln for ln in r.out.splitlines() if ln.startswith(("  keep %6d " % pt, "  drop %6d " % pt))]
        check(len(line) == 1, "dry run has no line for point %d: %r" % (pt, r.out))
        lines[pt] = line[0]
    would_keep = {pt: ln.split()[4] for pt, ln in lines.items() if ln.startswith("  keep")}
    check(would_keep == want, "dry run keeps %r, want %r:\n%s" % (would_keep, want, r.out))
    for i, pt in enumerate(ids):
        counted = "counted at %s" % step_back
        check((counted in lines[pt]) == (i < 4), "point %d: 'counted at' note wrong: %r" % (pt, lines[pt]))
    check(points(rep) == ids, "--dry-run dropped points")
    r = rep.ok("prune", VM)
    check(points(rep) == sorted(want), "after prune: %r, want %r\n%s" % (points(rep), sorted(want), r.out))
    check("3 kept, 7 dropped" in r.out, "prune summary: %r" % r.out)
    check_all(rep, disks, kept, "after the prune")
    # The primary's lag is the age of its last cut by its own steady clock:
    # a step forward of the wall clock does not make it a day old.
    set_fake_clock(tsfile, times[-1] + 2 * day)
    st = vm_status(pri, VM)
    check(0 <= st["lag_seconds"] < day, "primary's lag after its clock stepped a day forward: %r" % st)
    check(st["health"] == "normal", "primary's health after its clock stepped forward: %r" % st)
    pri.stop()
    rep.stop()
