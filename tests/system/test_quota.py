"""What one authenticated primary may make on a replica (issue 11, defects
3 and 4): the [accept] quotas max_vms, max_disks and max_disk_size, refused
before anything is recorded or created; a relationship recorded only with
its first applied cycle (a HELLO alone, a cycle cut off or a crash before
the first point leaves nothing at the next start); per-block state that
costs nothing for zero blocks; every accepted VM restored at a restart,
even when the daemon starts with a low soft descriptor limit.

A hand-driven primary (wireproto.py) plays the hostile peer; a real
primary checks that replication still works and stays exact (verify).
"""
import json
import os
import resource

import wireproto as wp
from harness import (LogMark, TestFailure, assert_same, check, tree_digest,
                     wait_for)

GIB = 1 << 30


def du(path):
    """Bytes allocated under path (st_blocks, not file sizes)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            total += os.lstat(os.path.join(root, n)).st_blocks * 512
    return total


def allocated(path):
    """{relative path: bytes allocated} of every file under path."""
    out = {}
    for root, dirs, files in os.walk(path):
        for n in files:
            p = os.path.join(root, n)
            out[os.path.relpath(p, path)] = os.lstat(p).st_blocks * 512
    return out


def status_vms(rep):
    """{name: status entry} of every VM the replica lists."""
    r = rep.ok("status", "--json")
    return {v["name"]: v for v in json.loads(r.out)["vms"]}


def storage_dirs(rep):
    return sorted(os.listdir(rep.storage)) if os.path.isdir(rep.storage) else []


class Peer:
    """The hostile primary: TLS with the accepted certificate "primary"."""

    def __init__(self, env, rep):
        self.env, self.rep = env, rep
        pki = env.pki
        self.ctx = wp.tls_context(os.path.join(pki, "primary.pem"),
                                  os.path.join(pki, "primary.key"),
                                  os.path.join(pki, "ca.pem"))

    def hello(self, vm, disks, bs=65536):
        """Connect and send HELLO; returns (conn, first frame)."""
        c = wp.tls_connect(self.rep.port, self.ctx)
        c.send(wp.hello(vm, disks, block_size=bs))
        return c, c.recv_frame(30)

    def welcomed(self, vm, disks, bs=65536):
        c, fr = self.hello(vm, disks, bs)
        check(fr is not None and fr[0] == wp.WELCOME, "HELLO for %s got %s\nlog:\n%s"
              % (vm, wp.describe(fr), self.rep.log_text()[-2000:]))
        return c, wp.decode_welcome(fr[1])

    def refused(self, vm, disks, bs, limit):
        """HELLO must get NACK denied naming limit; the log names the peer,
        the VM and the limit."""
        mark = LogMark(self.rep)
        c, fr = self.hello(vm, disks, bs)
        try:
            check(fr is not None and fr[0] == wp.NACK, "HELLO for %s past %s got %s"
                  % (vm, limit, wp.describe(fr)))
            code, reason = wp.decode_nack(fr[1])
            check(code == wp.NACK_DENIED and limit in reason and "quota" in reason,
                  "HELLO for %s past %s: NACK %d %r" % (vm, limit, code, reason))
            check(c.wait_closed(10), "the replica kept a refused session open")
        finally:
            c.close()
        mark.wait("primary", vm, limit, "session refused", what="log line refusing %s" % vm)

    @staticmethod
    def zero_extents(sizes, dig):
        """ZERO extents covering every disk."""
        out = b""
        for i, size in enumerate(sizes):
            for off in range(0, size, wp.MAX_ZERO):
                out += wp.data_zero(i, off, min(wp.MAX_ZERO, size - off), digest=dig)
        return out

    def cycle(self, c, cyc, sizes, body=None):
        """CYCLE, the extents (default: zeros over every disk), END; returns
        the answer frame."""
        dig = wp.CycleDigest()
        frames = body(dig) if body else self.zero_extents(sizes, dig)
        c.send(wp.cycle(cyc, sizes) + frames + wp.end_of(cyc, dig))
        return c.recv_frame(120)

    def make_vm(self, vm, disks, bs=65536):
        """A new VM with its first point (zeros); returns the point id."""
        c, w = self.welcomed(vm, disks, bs)
        try:
            fr = self.cycle(c, w["last_cycle"] + 1, [s for _, s in disks])
            check(fr is not None and fr[0] == wp.ACK, "first cycle of %s got %s\n%s"
                  % (vm, wp.describe(fr), self.rep.log_text()[-2000:]))
            return wp.decode_ack(fr[1])["point"]
        finally:
            c.close()


def wait_gone(rep, vm, what):
    """The replica no longer lists vm and its storage has no directory for it."""
    wait_for(lambda: vm not in status_vms(rep) and vm not in storage_dirs(rep), 30, 0.1,
             what="%s: %s to leave nothing behind (status %r, storage %r)"
             % (what, vm, sorted(status_vms(rep)), storage_dirs(rep)))


def test_zero_disk_costs_nothing(env):
    """A 256 GiB disk announced and sent as ZERO extents at 4 KiB blocks
    costs a few blocks of storage, not 16 bytes per block; data written
    into it and zeroed again costs nothing once zeroed; verify is exact."""
    rep = env.replica().start()
    peer = Peer(env, rep)
    size, bs = 256 * GIB, 4096
    c, w = peer.welcomed("huge", [("d0.img", size)], bs)
    fr = peer.cycle(c, 1, [size])
    check(fr is not None and fr[0] == wp.ACK, "the zero cycle got %s\n%s"
          % (wp.describe(fr), rep.log_text()[-2000:]))
    vmdir = os.path.join(rep.storage, "huge")
    used = du(vmdir)
    if used > (4 << 20):
        raise TestFailure("256 GiB of zeros took %d bytes of storage under %s: %r"
                          % (used, vmdir, allocated(vmdir)))

    # Data blocks are recorded (and verified), here and there on the disk.
    blocks = {off: env.rng.randbytes(bs) for off in (0, 7 * bs, 100 * GIB, size - bs)}

    def data(dig):
        return b"".join(wp.data_raw(0, off, b, digest=dig) for off, b in sorted(blocks.items()))
    fr = peer.cycle(c, 2, [size], data)
    check(fr is not None and fr[0] == wp.ACK, "the data cycle got %s" % wp.describe(fr))
    with_data = du(vmdir)
    rep.ok("verify", "huge", timeout=600)
    img = os.path.join(vmdir, "d0.img")
    with open(img, "rb") as f:
        for off, b in blocks.items():
            f.seek(off)
            check(f.read(bs) == b, "block at %d not applied" % off)

    # Zeroed again: the records go back to holes, and verify still holds.
    def zero(dig):
        return b"".join(wp.data_zero(0, off, bs, digest=dig) for off in sorted(blocks))
    fr = peer.cycle(c, 3, [size], zero)
    check(fr is not None and fr[0] == wp.ACK, "the zeroing cycle got %s" % wp.describe(fr))
    c.close()
    rep.ok("verify", "huge", timeout=600)
    digests = os.path.join(vmdir, ".digests", "d0.img")
    st = os.stat(digests)
    check(st.st_size == size // bs * 16, "the digest file is %d bytes" % st.st_size)
    check(st.st_blocks * 512 <= (1 << 20), "the digest file of a zeroed disk holds %d bytes"
          % (st.st_blocks * 512))
    check(du(vmdir) <= with_data + (4 << 20), "storage grew to %d after zeroing" % du(vmdir))
    with open(img, "rb") as f:
        for off in blocks:
            f.seek(off)
            check(f.read(bs) == bytes(bs), "block at %d not zeroed" % off)
    rep.stop()


def test_quota_refusals(env):
    """max_disks, max_disk_size and max_vms refuse a HELLO (NACK denied,
    a log line naming the peer, the VM and the limit) before anything is
    recorded or created: storage, status and a restart show no new VM.
    A disk that grows past max_disk_size in a later cycle is refused too."""
    rep = env.replica(extra="max_vms = 2\nmax_disks = 2\nmax_disk_size = 1G\n").start()
    peer = Peer(env, rep)
    mib = 1 << 20

    def nothing_new(what, names):
        check(sorted(status_vms(rep)) == names, "%s: status lists %r" % (what, sorted(status_vms(rep))))
        check(storage_dirs(rep) == names, "%s: storage holds %r" % (what, storage_dirs(rep)))

    peer.refused("wide", [("a.img", mib), ("b.img", mib), ("c.img", mib)], 65536, "max_disks")
    nothing_new("after max_disks", [])
    peer.refused("big", [("a.img", 2 * GIB)], 65536, "max_disk_size")
    nothing_new("after max_disk_size", [])

    peer.make_vm("vm1", [("a.img", mib), ("b.img", mib)])
    peer.make_vm("vm2", [("a.img", GIB)])
    peer.refused("vm3", [("a.img", mib)], 65536, "max_vms")
    nothing_new("after max_vms", ["vm1", "vm2"])

    # An accepted VM's disk may not grow past the limit either.
    before = tree_digest(os.path.join(rep.storage, "vm2"))
    c, w = peer.welcomed("vm2", [("a.img", GIB)])
    fr = peer.cycle(c, w["last_cycle"] + 1, [2 * GIB])
    c.close()
    check(fr is not None and fr[0] == wp.NACK and wp.decode_nack(fr[1])[0] == wp.NACK_DENIED
          and "max_disk_size" in wp.decode_nack(fr[1])[1],
          "a cycle growing vm2 past max_disk_size got %s" % wp.describe(fr))
    wait_for(lambda: tree_digest(os.path.join(rep.storage, "vm2")) == before, 30, 0.1,
             what="vm2's files unchanged after the refused growth")

    rep.stop()
    rep.start()
    nothing_new("after a restart", ["vm1", "vm2"])
    for vm in ("vm1", "vm2"):
        check(status_vms(rep)[vm]["state"] != "error", "%s after a restart: %r"
              % (vm, status_vms(rep)[vm]))
    rep.stop()


def test_many_vms_restart_with_low_fd_limit(env):
    """One peer creates VMs up to max_vms (four disks each), the next is
    refused; the replica restarts with a soft descriptor limit of 64, far
    below what the VMs hold open: it raises the limit and restores every
    accepted VM, each of which takes a session again."""
    n = 40
    rep = env.replica(extra="max_vms = %d\n" % n).start()
    peer = Peer(env, rep)
    disks = [("d%d.img" % i, 1 << 20) for i in range(4)]
    for i in range(n):
        peer.make_vm("vm%02d" % i, disks)
    peer.refused("vm%02d" % n, disks, 65536, "max_vms")
    check(len(status_vms(rep)) == n, "status lists %d VMs" % len(status_vms(rep)))
    rep.stop()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    check(hard > 4 * 64, "the hard descriptor limit (%d) is too low for this test" % hard)
    mark = LogMark(rep)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        rep.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    vms = status_vms(rep)
    bad = {k: v.get("error") for k, v in vms.items() if v["state"] == "error"}
    check(len(vms) == n and not bad, "after a restart %d VMs, %d unavailable: %r"
          % (len(vms), len(bad), bad))
    mark.wait("file descriptor limit raised from 64", what="the limit raised at start")
    for i in (0, n // 2, n - 1):
        c, w = peer.welcomed("vm%02d" % i, disks)
        c.close()
        check(w["last_cycle"] == 1, "vm%02d after the restart: WELCOME %r" % (i, w))
    rep.stop()


def test_hello_without_cycle_leaves_nothing(env):
    """A HELLO that makes a new VM, then a cut connection (no cycle, or a
    cycle cut off, or the replica killed mid-cycle): no relationship, no
    directory, before and after a restart.  A seed copy placed beforehand
    is kept as it was, and nothing of replicad's is left beside it."""
    rep = env.replica().start()
    peer = Peer(env, rep)
    disks = [("d0.img", 4 << 20)]

    c, w = peer.welcomed("lone", disks)
    check(sorted(status_vms(rep)) == ["lone"], "status while the session is open: %r"
          % sorted(status_vms(rep)))
    c.close()
    wait_gone(rep, "lone", "HELLO alone")

    c, w = peer.welcomed("cut", disks)
    dig = wp.CycleDigest()
    c.send(wp.cycle(1, [4 << 20]) + b"".join(
        wp.data_raw(0, off, env.rng.randbytes(65536), digest=dig) for off in range(0, 1 << 20, 65536)))
    mark = LogMark(rep)
    c.close()
    mark.wait("cut", "closed the connection", what="the cut cycle's log line")
    wait_gone(rep, "cut", "a cycle cut off")

    # A seed copy of the operator's.
    seed_dir = os.path.join(rep.storage, "seeded")
    os.makedirs(seed_dir)
    seed = env.make_disk(os.path.join(seed_dir, "d0.img"), 4 << 20)
    with open(seed, "rb") as f:
        seed_bytes = f.read()
    c, w = peer.welcomed("seeded", disks)
    check(w["flags"] & wp.WELCOME_DATA, "a seeded VM's WELCOME has no DATA flag: %r" % w)
    c.close()
    wait_for(lambda: "seeded" not in status_vms(rep), 30, 0.1, what="seeded to be forgotten")
    check(sorted(os.listdir(seed_dir)) == ["d0.img"], "beside the seed copy: %r"
          % sorted(os.listdir(seed_dir)))
    with open(seed, "rb") as f:
        check(f.read() == seed_bytes, "the seed copy changed")

    # Killed in the middle of a new VM's first cycle: the next start sweeps.
    c, w = peer.welcomed("crash", disks)
    c.send(wp.cycle(1, [4 << 20]) + b"".join(
        wp.data_raw(0, off, env.rng.randbytes(65536)) for off in range(0, 1 << 20, 65536)))
    img = os.path.join(rep.storage, "crash", "d0.img")
    wait_for(lambda: os.path.exists(img) and os.stat(img).st_blocks > 0, 30, 0.05,
             what="the first cycle's blocks to reach the new image")
    rep.kill9()
    c.close()
    rep.start()
    check(status_vms(rep) == {}, "after a restart the replica lists %r" % sorted(status_vms(rep)))
    check(storage_dirs(rep) == ["seeded"], "after a restart the storage holds %r" % storage_dirs(rep))
    check(sorted(os.listdir(seed_dir)) == ["d0.img"], "beside the seed copy after a restart: %r"
          % sorted(os.listdir(seed_dir)))
    rep.stop()


def first_cycle_crash(env, fault, recorded):
    """The replica dies at crash point fault during a new VM's first cycle
    (from a real primary): after a restart the VM is recorded with its
    point (recorded) or not at all; then replication completes, exactly."""
    disk = env.make_disk(env.path("src", "sda.img"), (2 << 20) + 4096)
    rep = env.replica()
    rep.start(env_extra={"REPLICAD_FAULT": fault})
    pri = env.primary({"web01": [disk]}, rep.port).start()
    r = pri.ctl("sync", "web01", "--wait", timeout=120)
    check(r.rc != 0, "sync --wait succeeded although the replica was to die at %s" % fault)
    wait_for(lambda: rep.proc.poll() is not None, 60, what="the replica to die at %s" % fault)
    check("fault point %s reached" % fault in rep.log_text(), "the replica died elsewhere:\n%s"
          % rep.log_text()[-2000:])
    rep.proc = None
    rep.start()
    vms = status_vms(rep)
    vmdir = os.path.join(rep.storage, "web01")
    if recorded:
        check("web01" in vms and vms["web01"]["last_point"], "after the restart: %r" % vms)
        check(not os.path.exists(os.path.join(vmdir, ".new")), "the new-VM marker is still there")
        rep.ok("verify", "web01")
    else:
        check(vms == {} and storage_dirs(rep) == [], "after the restart: status %r, storage %r"
              % (vms, storage_dirs(rep)))
    pri.ok("sync", "web01", "--wait", timeout=120)
    assert_same(disk, os.path.join(vmdir, "sda.img"), "after the crash at %s" % fault)
    rep.ok("verify", "web01")
    check(not os.path.exists(os.path.join(vmdir, ".new")), "the new-VM marker outlived the first point")
    pri.stop()
    rep.stop()


def test_first_cycle_crash_before_catalog(env):
    first_cycle_crash(env, "replica-before-catalog", False)


def test_first_cycle_crash_after_catalog(env):
    first_cycle_crash(env, "replica-after-catalog", True)


def test_first_cycle_crash_mid_apply(env):
    first_cycle_crash(env, "replica-mid-apply", False)


def test_min_free_default(env):
    """The documented default min_free (the smaller of 1G and 5% of the
    storage's file system) shows in status."""
    rep = env.replica().start()
    Peer(env, rep).make_vm("vm1", [("a.img", 1 << 20)])
    st = os.statvfs(rep.storage)
    want = min(GIB, st.f_blocks * st.f_frsize // 100 * 5)
    v = status_vms(rep)["vm1"]
    got = v.get("min_free_bytes")
    if got is None:
        raise TestFailure("status has no min_free_bytes: %r" % v)
    check(got == want, "min_free_bytes %r, expected %d" % (got, want))
    rep.stop()
