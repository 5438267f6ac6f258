"""Core replication: random writes, sync, byte-equal replicas, every point
rebuilt by test failover equals the copy kept of it."""
import json
import os

from harness import assert_same, check
from workload import random_write, snapshot


def setup_pair(env, disks_spec, vm="web01"):
    disks = [env.make_disk(env.path("src", name), size, fill) for name, size, fill in disks_spec]
    rep = env.replica().start()
    pri = env.primary({vm: disks}, rep.port).start()
    return pri, rep, disks


def point_of(result):
    words = result.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % result.out)
    return int(words[1])


def check_replica(rep, vm, disks, what):
    for d in disks:
        assert_same(d, os.path.join(rep.storage, vm, os.path.basename(d)), what)


def test_rounds_two_disks(env):
    pri, rep, disks = setup_pair(env, [("sda.img", 24 << 20, "random"),
                                       ("sdb.img", (16 << 20) + 4096 + 512, "sparse")])
    kept = {}
    for rnd in range(12):
        for _ in range(env.rng.randrange(1, 8)):
            random_write(env.rng, env.rng.choice(disks))
        if rnd == 5:  # grow a disk between cycles
            with open(disks[1], "r+b") as f:
                f.truncate(os.path.getsize(disks[1]) + (3 << 20) + 1234)
        pt = point_of(pri.ok("sync", "web01", "--wait"))
        check_replica(rep, "web01", disks, "round %d" % rnd)
        kept[pt] = snapshot(disks, env.path("kept"), "p%d" % pt)
    pts = json.loads(rep.ok("points", "web01", "--json").out)
    check(sorted(p["id"] for p in pts) == sorted(kept), "points listed %r, kept %r" % (pts, sorted(kept)))
    for p in pts:
        check(p["kind"] in ("crash", "app") and isinstance(p["bytes"], int) and p["created"].endswith("Z"),
              "bad point entry %r" % p)
    rep.ok("verify", "web01")
    # Every point, rebuilt, equals what the primary had at its cut.
    for pt, copies in sorted(kept.items()):
        out = rep.ok("failover", "web01", "--test", "--point", str(pt)).out
        for c, d in zip(copies, disks):
            t = os.path.join(rep.storage, "web01", "test", os.path.basename(d))
            check(t in out, "test failover did not print %s: %r" % (t, out))
            assert_same(c, t, "point %d rebuilt" % pt)
        rep.ok("failover", "web01", "--test", "--cleanup")
    pri.stop()
    rep.stop()


def test_sparse_and_zero(env):
    """Zero blocks travel as zero extents and stay holes on the replica."""
    pri, rep, disks = setup_pair(env, [("big.img", 64 << 20, "sparse")])
    with open(disks[0], "r+b") as f:
        f.seek(5 << 20)
        f.write(env.rng.randbytes(1 << 20))
    pri.ok("sync", "web01", "--wait")
    rimg = os.path.join(rep.storage, "web01", "big.img")
    assert_same(disks[0], rimg, "sparse disk")
    used = os.stat(rimg).st_blocks * 512
    check(used < 4 << 20, "replica of a 64 MiB disk with 1 MiB of data uses %d bytes" % used)
    st = json.loads(pri.ok("status", "web01", "--json").out)["vms"][0]
    check(st["last_cycle"]["bytes_sent"] < 2 << 20,
          "a mostly empty 64 MiB disk took %d bytes on the wire" % st["last_cycle"]["bytes_sent"])
    # zero a written range: it becomes a hole again
    with open(disks[0], "r+b") as f:
        f.seek(5 << 20)
        f.write(bytes(1 << 20))
    pri.ok("sync", "web01", "--wait")
    assert_same(disks[0], rimg, "after zeroing")
    check(os.stat(rimg).st_blocks * 512 < 1 << 20, "zeroed range was not punched out")


def test_incremental_sends_only_changes(env):
    pri, rep, disks = setup_pair(env, [("a.img", 32 << 20, "random")])
    pri.ok("sync", "web01", "--wait")
    with open(disks[0], "r+b") as f:
        f.seek((7 << 20) - 10000)
        f.write(env.rng.randbytes(100000))   # blocks 111, 112 and 113
    pri.ok("sync", "web01", "--wait")
    st = json.loads(pri.ok("status", "web01", "--json").out)["vms"][0]
    lc = st["last_cycle"]
    check(lc["dirty_bytes"] == 3 * 65536, "dirty bytes %d, expected 3 blocks" % lc["dirty_bytes"])
    check(lc["bytes_read"] == 32 << 20, "scan read %d bytes" % lc["bytes_read"])
    check(lc["bytes_sent"] < 4 * 65536, "sent %d bytes for 3 changed blocks" % lc["bytes_sent"])
    check(st["state"] == "idle" and st["health"] == "normal" and st["role"] == "primary",
          "status %r" % st)
    assert_same(disks[0], os.path.join(rep.storage, "web01", "a.img"))
    rs = json.loads(rep.ok("status", "--json").out)["vms"][0]
    check(rs["role"] == "replica" and rs["last_point"] == 2, "replica status %r" % rs)


def test_several_vms_small_blocks(env):
    """Two VMs with different block sizes replicate independently."""
    rep = env.replica().start()
    a = env.make_disk(env.path("src", "a1.img"), 8 << 20)
    b = env.make_disk(env.path("src", "b1.img"), 6 << 20)
    pri = env.primary({"vma": [a], "vmb": [b]}, rep.port)
    with open(pri.conf, "a") as f:
        pass
    text = open(pri.conf).read().replace("[vm vmb]\n", "[vm vmb]\nblock_size = 4K\ncompress = none\n")
    open(pri.conf, "w").write(text)
    pri.start()
    for rnd in range(4):
        for p in (a, b):
            random_write(env.rng, p, max_len=300000)
        pri.ok("sync", "vma", "--wait")
        pri.ok("sync", "vmb", "--wait")
        assert_same(a, os.path.join(rep.storage, "vma", "a1.img"))
        assert_same(b, os.path.join(rep.storage, "vmb", "b1.img"))
    rep.ok("verify", "vma")
    rep.ok("verify", "vmb")


def test_largest_blocks_incompressible(env):
    """block_size = 4M (the largest) with random data: every DATA frame is
    the largest the wire allows (RAW, zstd cannot shrink it), so the
    replica's input budget must hold whole frames; a cycle of many of them
    (more than the batches a session holds) arrives whole."""
    rep = env.replica().start()
    a = env.make_disk(env.path("src", "big.img"), (40 << 20) + 12345, "random")
    pri = env.primary({"vmbig": [a]}, rep.port)
    text = open(pri.conf).read().replace("[vm vmbig]\n", "[vm vmbig]\nblock_size = 4M\n")
    open(pri.conf, "w").write(text)
    pri.start()
    pri.ok("sync", "vmbig", "--wait")
    assert_same(a, os.path.join(rep.storage, "vmbig", "big.img"), "initial sync, 4 MiB blocks")
    for rnd in range(3):
        for _ in range(env.rng.randrange(2, 6)):
            random_write(env.rng, a, max_len=6 << 20)
        pri.ok("sync", "vmbig", "--wait")
        assert_same(a, os.path.join(rep.storage, "vmbig", "big.img"), "round %d, 4 MiB blocks" % rnd)
    rep.ok("verify", "vmbig")


def test_resume_manual_only(env):
    """With interval = 0, resume only lifts the pause: it starts no cycle
    (the next sync does), so the sync after it makes the very next point
    and no cycle ran in between."""
    from harness import LogMark, vm_status
    pri, rep, disks = setup_pair(env, [("sda.img", 4 << 20, "random")])
    first = point_of(pri.ok("sync", "web01", "--wait"))
    pri.ok("pause", "web01")
    check(vm_status(pri, "web01")["state"] == "paused", "not paused: %r" % vm_status(pri, "web01"))
    random_write(env.rng, disks[0])
    mark = LogMark(pri)
    r = pri.ok("resume", "web01")
    check("resumed" in r.out, "resume said %r" % r.out)
    st = vm_status(pri, "web01")
    check(st["state"] == "idle" and st["last_point"] == first, "after resume: %r" % st)
    pt = point_of(pri.ok("sync", "web01", "--wait"))
    check(pt == first + 1, "the sync after resume made point %d, not %d: resume started a cycle" % (pt, first + 1))
    done = [ln for ln in mark.new().splitlines() if ": cycle " in ln and " done: point " in ln]
    check(len(done) == 1, "cycles since resume: %r" % done)
    check_replica(rep, "web01", disks, "after resume and sync")
    pri.stop()
    rep.stop()
