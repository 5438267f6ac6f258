"""Errors an operator meets: bad configurations, bad command lines, commands
that cannot succeed, disks that vanish, shrink or turn into something
else, a corrupted replica, a replica that is down.  Each case checks the
exit code (SPEC.md: 0 ok, 1 failed, 2 usage/config, 3 unreachable), that
the message names what went wrong, and that nothing else is disturbed.
"""
import json
import os
import shutil
import subprocess

from harness import (REPLCTL, REPLICAD, ROOT, Result, TestFailure, assert_same, check,
                     replica_state, wait_for, wait_state_unchanged)
from workload import random_write

MB = 1 << 20


def one_line_error(r, what, *must):
    """A failed replctl: exit 1, one "replctl: ..." line on stderr holding
    every string in must, nothing on stdout."""
    check(r.rc == 1, "%s: exit %d, want 1: %r" % (what, r.rc, r))
    lines = r.err.strip().splitlines()
    check(len(lines) == 1 and lines[0].startswith("replctl: "),
          "%s: want one 'replctl: ...' line on stderr, got %r" % (what, r.err))
    for m in must:
        check(m in r.err, "%s: the message %r does not mention %r" % (what, r.err.strip(), m))
    check(r.out == "", "%s: stdout %r" % (what, r.out))


def vm_status(d, vm):
    r = d.ok("status", vm, "--json")
    vms = json.loads(r.out)["vms"]
    check(len(vms) == 1 and vms[0]["name"] == vm, "status %s --json: %r" % (vm, r.out))
    return vms[0]


def replica_path(rep, vm, disk):
    return os.path.join(rep.storage, vm, os.path.basename(disk))


# --- 1: replicad --check ------------------------------------------------------

def test_check_configurations(env):
    """Bad configurations: exit 2, the message names the file, the line and
    the key.  A good one: exit 0."""
    pki = env.pki
    disk = env.make_disk(env.path("src", "a.img"), MB, "sparse")
    good = ("[daemon]\n"                                   # 1
            "state_dir = %s\n"                             # 2
            "tls_cert = %s/primary.pem\n"                  # 3
            "tls_key = %s/primary.key\n"                   # 4
            "tls_ca = %s/ca.pem\n"                         # 5
            "\n"                                           # 6
            "[vm web01]\n"                                 # 7
            "disk = %s\n"                                  # 8
            "replica = 127.0.0.1:7000\n"                   # 9
            "interval = 30s\n"                             # 10
            "block_size = 64K\n"                           # 11
            ) % (env.path("state"), pki, pki, pki, disk)
    lines = good.splitlines(keepends=True)

    def with_line(n, text):
        """good with line n (1-based) replaced by text."""
        out = list(lines)
        out[n - 1] = text + "\n"
        return "".join(out)

    def run(name, text):
        path = env.path("conf", name + ".conf")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([REPLICAD, "-c", path, "--check"], capture_output=True, text=True, timeout=30)
        return path, p

    path, p = run("good", good)
    check(p.returncode == 0, "good configuration: exit %d, stderr %r" % (p.returncode, p.stderr))

    bad = [
        ("unknown-key", good + "bogus = 1\n", 12, "bogus"),
        ("unknown-daemon-key", with_line(3, "tls_certificate = %s/primary.pem" % pki), 3, "tls_certificate"),
        ("bad-duration", with_line(10, "interval = 5q"), 10, "interval"),
        ("negative-duration", with_line(10, "interval = -5m"), 10, "interval"),
        ("bad-size", with_line(11, "block_size = 3K"), 11, "block_size"),
        ("huge-size", with_line(11, "block_size = 64M"), 11, "block_size"),
        ("relative-state-dir", with_line(2, "state_dir = state"), 2, "state_dir"),
        ("relative-disk", with_line(8, "disk = src/a.img"), 8, "disk"),
        ("relative-tls-key", with_line(4, "tls_key = primary.key"), 4, "tls_key"),
        ("bad-replica-address", with_line(9, "replica = nohost"), 9, "replica"),
        ("duplicate-key", good + "interval = 1m\n", 12, "interval"),
        ("bad-vm-name", with_line(7, "[vm ../web01]"), 7, None),
        ("missing-tls-cert-file", with_line(3, "tls_cert = %s/nonexistent.pem" % pki), 3, "tls_cert"),
        ("missing-tls-ca-file", with_line(5, "tls_ca = %s/nonexistent-ca.pem" % pki), 5, "tls_ca"),
    ]
    # What TLS would load but no peer accepts: a CA file that is a host's
    # own certificate.
    bad.append(("tls-ca-is-a-host-cert", with_line(5, "tls_ca = %s/replica.pem" % pki), 5, "tls_ca"))
    failures = []
    for name, text, line, key in bad:
        path, p = run(name, text)
        where = "%s:%d" % (path, line)
        try:
            check(p.returncode == 2, "exit %d, want 2 (stderr %r)" % (p.returncode, p.stderr))
            check(where in p.stderr, "stderr %r does not name %s" % (p.stderr, where))
            if key:
                check(key in p.stderr, "stderr %r does not name the key %s" % (p.stderr, key))
            check(p.stdout == "", "stdout %r" % p.stdout)
        except TestFailure as e:
            failures.append("%s: %s" % (name, e))
    # A configuration file that does not exist: exit 2, its path named.
    missing = env.path("conf", "missing.conf")
    p = subprocess.run([REPLICAD, "-c", missing, "--check"], capture_output=True, text=True, timeout=30)
    if p.returncode != 2 or missing not in p.stderr:
        failures.append("missing configuration file: exit %d, stderr %r" % (p.returncode, p.stderr))
    # Found by checking the files, not the text: a disk that does not exist
    # fails (exit 1, its path named); a CA that does not verify this host's
    # own certificate is a warning (sites may run CAs of their own).
    path, p = run("missing-disk", with_line(8, "disk = %s" % env.path("src", "nonexistent.img")))
    if p.returncode != 1 or "%s:7: [vm web01] tracker scan: disk %s: No such file or directory" % (
            path, env.path("src", "nonexistent.img")) not in p.stderr:
        failures.append("missing disk: exit %d, stderr %r" % (p.returncode, p.stderr))
    other = env.make_pki("other-ca", ["x"])
    path, p = run("other-ca", with_line(5, "tls_ca = %s/ca.pem" % other))
    if p.returncode != 0 or "%s:5: [daemon] warning: tls_ca %s/ca.pem does not verify this host's certificate" % (
            path, other) not in p.stderr:
        failures.append("a CA that does not sign this host: exit %d, stderr %r" % (p.returncode, p.stderr))
    if failures:
        raise TestFailure("%d bad configurations not reported as required:\n  - %s"
                          % (len(failures), "\n  - ".join(failures)))


# --- 2: replctl usage ---------------------------------------------------------

def test_replctl_usage(env):
    p = subprocess.run(["sh", os.path.join(ROOT, "tests", "unit", "replctl_usage.sh"), REPLCTL],
                       capture_output=True, text=True, timeout=120)
    check(p.returncode == 0 and " 0 failed" in p.stdout,
          "replctl_usage.sh: exit %d\n%s%s" % (p.returncode, p.stdout, p.stderr))
    p = subprocess.run([REPLCTL, "-s", "/nonexistent/sock", "status"], capture_output=True, text=True, timeout=30)
    check(p.returncode == 3, "replctl -s /nonexistent/sock status: exit %d %r" % (p.returncode, p.stderr))
    check("/nonexistent/sock" in p.stderr and "cannot reach" in p.stderr, "message %r" % p.stderr)


# --- 3: commands that cannot succeed -------------------------------------------

def test_replctl_failures(env):
    disk = env.make_disk(env.path("src", "sda.img"), 2 * MB)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port).start()
    pri.ok("sync", "web01", "--wait")
    before = replica_state(rep, "web01")

    one_line_error(pri.ctl("sync", "NOSUCHVM"), "sync NOSUCHVM", "NOSUCHVM")
    one_line_error(pri.ctl("sync", "NOSUCHVM", "--wait"), "sync NOSUCHVM --wait", "NOSUCHVM")
    one_line_error(pri.ctl("points", "web01"), "points on the primary", "web01", "replica")
    one_line_error(pri.ctl("verify", "web01"), "verify on the primary", "web01", "replica")
    one_line_error(pri.ctl("failover", "web01", "--test"), "test failover on the primary", "web01", "replica")
    one_line_error(rep.ctl("sync", "web01", "--wait"), "sync on the replica", "web01", "primary")
    one_line_error(rep.ctl("status", "NOSUCHVM"), "status NOSUCHVM", "NOSUCHVM")
    one_line_error(rep.ctl("verify", "NOSUCHVM"), "verify NOSUCHVM", "NOSUCHVM")
    one_line_error(rep.ctl("points", "NOSUCHVM"), "points NOSUCHVM", "NOSUCHVM")
    one_line_error(rep.ctl("failover", "web01", "--test", "--point", "999"), "failover --point 999",
                   "no recovery point 999")
    testdir = os.path.join(rep.storage, "web01", "test")
    check(not os.path.exists(testdir), "a failed test failover left %s" % testdir)
    one_line_error(rep.ctl("failover", "web01", "--test", "--cleanup"), "cleanup without a copy", "web01")

    out = rep.ok("failover", "web01", "--test").out
    copy = os.path.join(testdir, "sda.img")
    check(copy in out, "test failover printed %r" % out)
    assert_same(disk, copy, "test copy")
    one_line_error(rep.ctl("failover", "web01", "--test"), "second test failover", "cleanup")
    assert_same(disk, copy, "test copy after a refused second failover")
    rep.ok("failover", "web01", "--test", "--cleanup")
    check(not os.path.exists(testdir), "cleanup left %s" % testdir)
    one_line_error(rep.ctl("failover", "web01", "--test", "--cleanup"), "second cleanup", "web01")
    wait_state_unchanged(rep, "web01", before, "failed commands")
    # And replication goes on.
    random_write(env.rng, disk)
    pri.ok("sync", "web01", "--wait")
    assert_same(disk, replica_path(rep, "web01", disk))


# --- 4: disks that vanish, shrink or are not files ------------------------------

class TwoVMs:
    """A primary of vma (disk a.img) and vmb (disk b.img), both synced."""

    def __init__(self, env):
        self.env = env
        self.a = env.make_disk(env.path("src", "a.img"), 3 * MB + 12345)
        self.b = env.make_disk(env.path("src", "b.img"), 2 * MB)
        self.a_copy = env.path("a.img.orig")
        self.rep = env.replica().start()
        self.pri = env.primary({"vma": [self.a], "vmb": [self.b]}, self.rep.port).start()
        self.pri.ok("sync", "vma", "--wait")
        self.pri.ok("sync", "vmb", "--wait")
        shutil.copyfile(self.a, self.a_copy)

    def b_still_fine(self, what):
        random_write(self.env.rng, self.b, max_len=300000)
        r = self.pri.ctl("sync", "vmb", "--wait", timeout=60)
        check(r.rc == 0, "%s: vmb could not sync: %r" % (what, r))
        assert_same(self.b, replica_path(self.rep, "vmb", self.b), "vmb %s" % what)

    def a_error_status(self, what, *must):
        """vma shows state error with a message while its cycles fail (the
        primary retries on its own: wait for the state between attempts)."""
        got = {}

        def err():
            got["s"] = vm_status(self.pri, "vma")
            return got["s"]["state"] == "error" and got["s"]["error"]
        try:
            wait_for(err, 15, 0.05, what="vma in state error")
        except TestFailure:
            raise TestFailure("%s: status of vma %r" % (what, got.get("s")))
        for m in must:
            check(m in got["s"]["error"], "%s: status error %r lacks %r" % (what, got["s"]["error"], m))
        check(got["s"]["health"] in ("warning", "critical"), "%s: health %r" % (what, got["s"]["health"]))

    def restore_a(self, what):
        if os.path.isdir(self.a) and not os.path.islink(self.a):
            os.rmdir(self.a)
        elif os.path.lexists(self.a):
            os.unlink(self.a)
        shutil.copyfile(self.a_copy, self.a)
        r = self.pri.ctl("sync", "vma", "--wait", timeout=60)
        check(r.rc == 0, "%s: vma did not recover: %r\n%s" % (what, r, self.pri.log_text()[-2000:]))
        assert_same(self.a, replica_path(self.rep, "vma", self.a), "vma " + what)
        check(vm_status(self.pri, "vma")["error"] is None, "%s: vma still shows an error" % what)


def test_disk_vanishes(env):
    t = TwoVMs(env)
    before = replica_state(t.rep, "vma")
    os.unlink(t.a)
    r = t.pri.ctl("sync", "vma", "--wait", timeout=60)
    one_line_error(r, "sync with the disk deleted", t.a)
    t.a_error_status("disk deleted", t.a)
    wait_state_unchanged(t.rep, "vma", before, "disk deleted")
    t.b_still_fine("while a.img is missing")
    t.restore_a("after the disk came back")


def test_disk_shrinks(env):
    t = TwoVMs(env)
    before = replica_state(t.rep, "vma")
    with open(t.a, "r+b") as f:
        f.truncate(MB)
    r = t.pri.ctl("sync", "vma", "--wait", timeout=60)
    one_line_error(r, "sync of a shrunk disk", "shrank", t.a)
    t.a_error_status("disk shrunk", "shrank")
    wait_state_unchanged(t.rep, "vma", before, "disk shrunk")
    t.b_still_fine("while a.img is shrunk")
    t.restore_a("after the disk got its size back")


def test_disk_is_a_directory(env):
    t = TwoVMs(env)
    before = replica_state(t.rep, "vma")
    os.unlink(t.a)
    os.mkdir(t.a)
    r = t.pri.ctl("sync", "vma", "--wait", timeout=60)
    one_line_error(r, "sync of a disk that is a directory", t.a)
    t.a_error_status("disk is a directory", t.a)
    wait_state_unchanged(t.rep, "vma", before, "disk is a directory")
    t.b_still_fine("while a.img is a directory")
    t.restore_a("after the directory became a disk again")


def test_disk_is_a_fifo(env):
    """A FIFO in place of a disk: opening it for reading waits for a writer
    that never comes.  The cycle must fail with a clear error, not hang,
    and the other VM must go on meanwhile."""
    t = TwoVMs(env)
    before = replica_state(t.rep, "vma")
    os.unlink(t.a)
    os.mkfifo(t.a)
    sync_a = subprocess.Popen([REPLCTL, "-s", t.pri.socket, "sync", "vma", "--wait"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    env.procs.append(sync_a)
    failures = []
    try:
        try:
            out, err = sync_a.communicate(timeout=20)
            one_line_error(Result(sync_a.returncode, out, err), "sync of a disk that is a FIFO", t.a)
            t.a_error_status("disk is a FIFO", t.a)
        except subprocess.TimeoutExpired:
            failures.append("sync vma --wait with a FIFO as its disk had no answer after 20 s "
                            "(the cycle hangs); status of vma: %r" % vm_status(t.pri, "vma"))
        except TestFailure as e:
            failures.append(str(e))
        try:
            t.b_still_fine("while a.img is a FIFO")
        except (TestFailure, subprocess.TimeoutExpired) as e:
            failures.append("vmb affected by vma's FIFO: %s" % e)
        try:
            wait_state_unchanged(t.rep, "vma", before, "disk is a FIFO")
        except TestFailure as e:
            failures.append(str(e))
    finally:
        unblock_fifo_readers(t.a)
        if sync_a.poll() is None:
            try:
                sync_a.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                sync_a.kill()
                sync_a.communicate()
    if failures:
        raise TestFailure("\n  - ".join(["disk replaced by a FIFO:"] + failures))
    t.restore_a("after the FIFO became a disk again")


def unblock_fifo_readers(path):
    """Let any reader blocked opening the FIFO through (open for writing
    succeeds only while a reader waits), so the daemon can finish."""
    for _ in range(8):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        os.close(fd)


# --- 5: verify ------------------------------------------------------------------

def test_verify_detects_corruption(env):
    disk = env.make_disk(env.path("src", "sda.img"), 4 * MB + 4096)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port).start()
    pri.ok("sync", "web01", "--wait")
    rep.ok("verify", "web01")
    img = replica_path(rep, "web01", disk)
    for off in [37 * 65536 + 1234, 0, os.path.getsize(img) - 1]:
        with open(img, "r+b") as f:
            f.seek(off)
            orig = f.read(1)
            f.seek(off)
            f.write(bytes([orig[0] ^ 0x40]))
        r = rep.ctl("verify", "web01")
        one_line_error(r, "verify with byte %d flipped" % off, "sda.img", "block %d" % (off // 65536))
        with open(img, "r+b") as f:
            f.seek(off)
            f.write(orig)
        rep.ok("verify", "web01")
    check(rep.alive(), "replica died")


def test_verify_older_point(env):
    """verify --point ID: the images and every undo segment down to that
    point; a damaged segment fails the points below it (named), not the
    ones above; a point that does not exist is said."""
    disk = env.make_disk(env.path("src", "sda.img"), 4 * MB)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port).start()
    ids = []
    for _ in range(4):
        random_write(env.rng, disk, max_len=512 << 10)
        ids.append(int(pri.ok("sync", "web01", "--wait").out.split()[1]))
    wait_for(lambda: vm_status(rep, "web01").get("history_compacting") == 0, 60,
             what="the undo segments to be compacted")
    r = rep.ok("verify", "web01", "--point", str(ids[0]))
    check("point %d can be rebuilt exactly" % ids[0] in r.out and "3 undo segments" in r.out,
          "verify of the oldest point: %r" % r.out)
    r = rep.ctl("verify", "web01", "--point", "999")
    check(r.rc == 1 and "no recovery point 999" in r.err, "verify of a point that does not exist: %r" % r)
    # Damage the segment that undoes the third cycle (point 3 -> 2).
    undo_dir = os.path.join(rep.storage, "web01", ".undo")
    segs = sorted(os.listdir(undo_dir), key=lambda n: int(n.split(".")[0]))
    check(len(segs) >= 3, "undo segments: %r" % segs)
    victim = os.path.join(undo_dir, segs[-2])
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x01]))
    r = rep.ctl("verify", "web01", "--point", str(ids[0]))
    one_line_error(r, "verify --point below a damaged segment", "undo segment", segs[-2])
    rep.ok("verify", "web01", "--point", str(ids[2]))     # above it: fine
    rep.ok("verify", "web01")
    check(rep.alive(), "replica died")


# --- 6: the replica is down -------------------------------------------------------

def test_replica_down(env):
    disk = env.make_disk(env.path("src", "sda.img"), 2 * MB)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port).start()
    pri.ok("sync", "web01", "--wait")
    rep.stop()
    random_write(env.rng, disk)
    r = pri.ctl("sync", "web01", "--wait", timeout=60)
    one_line_error(r, "sync with the replica down", "cannot connect", "127.0.0.1:%d" % rep.port)
    st = vm_status(pri, "web01")
    check(st["state"] in ("error", "syncing") and st["health"] in ("warning", "critical"),
          "status with the replica down: %r" % st)
    wait_for(lambda: vm_status(pri, "web01")["state"] == "error", 15,
             what="state error with the replica down")
    check("cannot connect" in (vm_status(pri, "web01")["error"] or ""), "status error %r"
          % vm_status(pri, "web01")["error"])
    rep.start()
    r = pri.ctl("sync", "web01", "--wait", timeout=60)
    check(r.rc == 0 and r.out.startswith("point "), "sync after the replica came back: %r" % r)
    assert_same(disk, replica_path(rep, "web01", disk))
    st = vm_status(pri, "web01")
    check(st["error"] is None and st["health"] == "normal", "status after recovery: %r" % st)


def test_retry_after_replica_outage(env):
    """With interval = 1s, cycles resume on their own after an outage."""
    disk = env.make_disk(env.path("src", "sda.img"), 2 * MB)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port)
    text = open(pri.conf).read()
    check("interval = 0\n" in text, "unexpected primary configuration:\n" + text)
    with open(pri.conf, "w") as f:
        f.write(text.replace("interval = 0\n", "interval = 1s\n"))
    pri.start()
    wait_for(lambda: vm_status(pri, "web01")["last_point"], 20, what="a first scheduled point")
    rep.stop()
    wait_for(lambda: "cannot connect" in (vm_status(pri, "web01")["error"] or ""), 20,
             what="the primary to notice the replica is down")
    random_write(env.rng, disk)
    # Let a few attempts fail (backoff), then bring the replica back.
    failed_at = vm_status(pri, "web01")["last_point"]
    wait_for(lambda: pri.log_text().count("cannot connect") >= 3, 20, what="three failed attempts")
    rep.start()
    wait_for(lambda: (vm_status(pri, "web01")["last_point"] or 0) > failed_at, 20,
             what="a new point after the replica came back")
    st = vm_status(pri, "web01")
    check(st["error"] is None, "status after the outage: %r" % st)
    wait_for(lambda: os.path.exists(replica_path(rep, "web01", disk)), 5, what="replica image")
    assert_same(disk, replica_path(rep, "web01", disk), "after the outage")
