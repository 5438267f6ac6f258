"""Resynchronisation (librsync): after a lost tracker state, on request,
and when seeding from a copy placed on the replica beforehand.  Only the
differences travel, and the recovery point history is kept."""
import json
import os
import shutil

from harness import assert_same, check
from workload import random_write, snapshot


def point_of(result):
    words = result.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % result.out)
    return int(words[1])


def last_cycle(daemon, vm):
    st = json.loads(daemon.ok("status", vm, "--json").out)
    return [v for v in st["vms"] if v["name"] == vm][0]["last_cycle"]


def scatter(env, path, n, length=4096):
    """n small random writes; returns the bytes written."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for _ in range(n):
            off = env.rng.randrange(0, size - length)
            f.seek(off)
            f.write(env.rng.randbytes(length))
    return n * length


def setup(env, size=48 << 20):
    disks = [env.make_disk(env.path("src", "sda.img"), size),
             env.make_disk(env.path("src", "sdb.img"), size // 3 + 12345, "sparse")]
    rep = env.replica().start()
    pri = env.primary({"web01": disks}, rep.port).start()
    return pri, rep, disks


def check_points_rebuild(rep, disks, kept):
    for pt, copies in sorted(kept.items()):
        rep.ok("failover", "web01", "--test", "--point", str(pt))
        for c, d in zip(copies, disks):
            assert_same(c, os.path.join(rep.storage, "web01", "test", os.path.basename(d)),
                        "point %d rebuilt" % pt)
        rep.ok("failover", "web01", "--test", "--cleanup")


def test_lost_tracker_state(env):
    """The primary's tracker state is deleted: the next cycle compares the
    disks instead of sending them whole, and keeps the history."""
    pri, rep, disks = setup(env)
    kept = {}
    pt = point_of(pri.ok("sync", "web01", "--wait"))
    kept[pt] = snapshot(disks, env.path("kept"), "p%d" % pt)
    pri.stop()
    shutil.rmtree(os.path.join(pri.state, "tracker", "web01"))
    changed = scatter(env, disks[0], 20) + scatter(env, disks[1], 3)
    pri.start()
    pt = point_of(pri.ok("sync", "web01", "--wait"))
    kept[pt] = snapshot(disks, env.path("kept"), "p%d" % pt)
    for d in disks:
        assert_same(d, os.path.join(rep.storage, "web01", os.path.basename(d)), "after resync")
    lc = last_cycle(pri, "web01")
    total = sum(os.path.getsize(d) for d in disks)
    check(lc["bytes_sent"] < total // 8,
          "resync sent %d bytes for %d changed of %d" % (lc["bytes_sent"], changed, total))
    check("resynchronising" in pri.log_text(), "the primary did not log a resync")
    # The tracker is whole again: a quiet cycle sends next to nothing.
    point_of(pri.ok("sync", "web01", "--wait"))
    check(last_cycle(pri, "web01")["bytes_sent"] < 64 << 10, "cycle after the resync sent too much")
    pts = json.loads(rep.ok("points", "web01", "--json").out)
    check(len(pts) == 3, "history not kept: %r" % pts)
    check_points_rebuild(rep, disks, kept)
    rep.ok("verify", "web01")
    pri.stop()
    rep.stop()


def test_resync_command_repairs_replica(env):
    """`replctl resync` repairs a replica image damaged behind replicad's
    back, sending only the differences; verify agrees afterwards."""
    pri, rep, disks = setup(env)
    point_of(pri.ok("sync", "web01", "--wait"))
    for _ in range(5):
        random_write(env.rng, disks[0], max_len=256 << 10)
    point_of(pri.ok("sync", "web01", "--wait"))
    img = os.path.join(rep.storage, "web01", "sda.img")
    scatter(env, img, 7)        # damage the replica
    r = rep.ctl("verify", "web01")
    check(r.rc == 1, "verify did not see the damage: %r" % r)
    r = pri.ok("resync", "web01", "--wait")
    point_of(r)
    for d in disks:
        assert_same(d, os.path.join(rep.storage, "web01", os.path.basename(d)), "after resync")
    rep.ok("verify", "web01")
    lc = last_cycle(pri, "web01")
    check(lc["bytes_sent"] < (2 << 20), "resync of 7 damaged blocks sent %d bytes" % lc["bytes_sent"])
    check(lc["bytes_read"] >= sum(os.path.getsize(d) for d in disks),
          "resync read %d bytes, less than the disks" % lc["bytes_read"])
    # Asked for once: the next cycle is an ordinary one again.
    log_before = pri.log_text().count("resynchronising")
    point_of(pri.ok("sync", "web01", "--wait"))
    check(pri.log_text().count("resynchronising") == log_before, "resync repeated")
    # Bad input: resync of a VM this host does not have.
    r = pri.ctl("resync", "nosuch")
    check(r.rc == 1 and "nosuch" in r.err, "resync of an unknown VM: %r" % r)
    r = rep.ctl("resync", "web01")
    check(r.rc == 1 and "replica" in r.err, "resync on the replica side: %r" % r)
    pri.stop()
    rep.stop()


def test_seed_from_copy(env):
    """A copy placed in STORAGE/VM/ before the first contact is compared,
    not overwritten whole."""
    size = 48 << 20
    disks = [env.make_disk(env.path("src", "sda.img"), size)]
    rep = env.replica()
    seed = os.path.join(rep.storage, "web01")
    os.makedirs(seed)
    shutil.copyfile(disks[0], os.path.join(seed, "sda.img"))
    changed = scatter(env, disks[0], 10)
    with open(disks[0], "r+b") as f:     # and the primary's disk grew
        f.truncate(size + (1 << 20) + 4096)
    rep.start()
    pri = env.primary({"web01": disks}, rep.port).start()
    point_of(pri.ok("sync", "web01", "--wait"))
    assert_same(disks[0], os.path.join(seed, "sda.img"), "seeded replica")
    lc = last_cycle(pri, "web01")
    check(lc["bytes_sent"] < size // 8,
          "seeding sent %d bytes for %d changed of %d" % (lc["bytes_sent"], changed, size))
    rep.ok("verify", "web01")
    random_write(env.rng, disks[0])
    point_of(pri.ok("sync", "web01", "--wait"))
    assert_same(disks[0], os.path.join(seed, "sda.img"), "after seeding")
    pri.stop()
    rep.stop()
