"""Liveness of a session: a replica whose answers stop arriving (the path
back from it drops everything, nothing is closed) ends the wait with a
clear error and shows in status while it lasts; a replica that takes long
to apply a cycle, but says so (KEEPALIVE), is waited for.  The network is
held by the relay of test_rolechange, the apply by a hold point, never
by sleeping.
"""
import os
import re
import subprocess
import time

from harness import TestFailure, check, wait_for
from test_failover import VM, Hosts, point_of, status
from test_rolechange import replctl, via_relay
from workload import random_write


def set_keepalive(d, every):
    """keepalive = every in d's [daemon] section (d restarted by the caller)."""
    with open(d.conf) as f:
        text = f.read()
    with open(d.conf, "w") as f:
        f.write(text.replace("[daemon]\n", "[daemon]\nkeepalive = %s\n" % every, 1))


def wait_or_hang(proc, what, timeout=120):
    """proc's (out, err); a process still running after timeout is a hang."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TestFailure("%s still running after %d s: it hangs" % (what, timeout))


def test_lost_ack_ends_the_wait(env):
    """The path from the replica goes silent once the cycle is under way
    (its ACK is lost): `sync --wait` ends with "no answer from replica"
    after three keepalive intervals, status says so meanwhile (state
    syncing, health warning), and the next cycle, on a new connection,
    makes the replica byte-exact."""
    started, go, hook = env.path("started"), env.path("go"), env.path("hold.sh")
    with open(hook, "w") as f:
        f.write("touch %s\nuntil [ -e %s ]; do sleep 0.05; done\n" % (started, go))
    h = Hosts(env, hooks=False, vm_extra="pre_snapshot = sh %s\n" % hook)
    h.b.stop()
    set_keepalive(h.b, "5s")
    h.b.start()
    set_keepalive(h.a, "5s")
    relay = via_relay(h)                        # restarts a
    try:
        with open(go, "w"):
            pass
        point_of(h.a.ok("sync", VM, "--wait"))
        for _ in range(3):
            random_write(env.rng, env.rng.choice(h.disks), max_len=1 << 20)
        os.unlink(go)
        os.unlink(started)
        sync = replctl(h.a, "sync", VM, "--wait")
        wait_for(lambda: os.path.exists(started), 60, what="the cycle's hook to start")
        relay.blackhole()                       # WELCOME is in; nothing more comes back
        with open(go, "w"):
            pass
        # While it waits, status names the silent replica.
        seen, deadline = None, time.monotonic() + 120
        while seen is None and sync.poll() is None and time.monotonic() < deadline:
            st = status(h.a)
            if "no answer from replica" in (st.get("note") or ""):
                seen = st
            else:
                time.sleep(0.1)
        out, err = wait_or_hang(sync, "sync --wait behind a silent replica")
        check(sync.returncode == 1 and "no answer from replica" in err,
              "sync --wait: rc=%d %r %r" % (sync.returncode, out, err))
        check(seen is not None, "status never showed the silent replica")
        check(seen["state"] == "syncing" and seen["health"] == "warning",
              "status while waiting: %r" % seen)
        check(re.search(r"for \d+ s", seen["note"]), "note: %r" % seen["note"])
        # The replica did apply it: only the answer was lost.
        check(h.b.log_text().count("applied as point") == 2,
              "the replica did not apply the cycle:\n%s" % h.b.log_text()[-2000:])
        st = status(h.a)
        check(st["state"] == "error" and "no answer from replica" in (st["error"] or ""),
              "status after: %r" % st)
        # Nothing is forgotten: the next cycle (a new connection) puts it right.
        point_of(h.a.ok("sync", VM, "--wait"))
        h.same("after the lost ACK")
        st = status(h.a)
        check(st["state"] == "idle" and st["health"] == "normal" and st["note"] is None,
              "status after the next cycle: %r" % st)
        h.a.stop()
        h.b.stop()
    finally:
        relay.close()


def test_long_apply_is_waited_for(env):
    """The replica holds the apply of a cycle far past the silence window
    and the cycle's ACK budget: its keepalives say it is applying, status
    shows it, and `sync --wait` succeeds once the apply goes on."""
    release = env.path("release")
    h = Hosts(env, hooks=False)
    h.b.stop()
    set_keepalive(h.b, "2s")
    h.b.start()
    h.a.stop()
    set_keepalive(h.a, "2s")
    h.a.start()
    point_of(h.a.ok("sync", VM, "--wait"))
    h.b.stop()
    h.b.start(env_extra={"REPLICAD_FAULT": "replica-hold-apply",
                         "REPLICAD_FAULT_RELEASE": release})
    for _ in range(3):
        random_write(env.rng, env.rng.choice(h.disks), max_len=1 << 20)
    sync = replctl(h.a, "sync", VM, "--wait")
    wait_for(lambda: "fault point replica-hold-apply reached" in h.b.log_text(), 60,
             what="the replica to hold the apply")

    # Silence ends a session after 6 s here and the ACK budget of this
    # cycle is about 12 s: the primary still waits after 30 s of apply.
    def applying_for():
        note = status(h.a)["note"] or ""
        m = re.search(r"applying cycle \d+ for (\d+) s", note)
        return int(m.group(1)) if m else -1
    try:
        wait_for(lambda: sync.poll() is not None or applying_for() >= 30, 180,
                 what="the primary to report 30 s of apply")
        st = status(h.a)
        check(sync.poll() is None, "sync --wait ended during the apply")
        check(st["state"] == "syncing" and st["health"] == "normal", "status: %r" % st)
    finally:
        with open(release, "w"):
            pass
    out, err = wait_or_hang(sync, "sync --wait after the apply")
    check(sync.returncode == 0, "sync --wait: rc=%d %r %r" % (sync.returncode, out, err))
    check(out.startswith("point "), "sync --wait printed %r" % out)
    h.same("after a long apply")
    log = h.a.log_text()
    check("no answer from replica" not in log and "did not acknowledge" not in log,
          "the primary gave up on a working replica:\n%s" % log[-2000:])
    h.a.stop()
    h.b.stop()


def test_version2_replica_slow_apply(env):
    """A version 2 replica (replicad 0.5) cannot say that it applies a
    cycle: the primary waits for its ACK as 0.5 did (an hour), not the
    keepalive budget (6 x keepalive + 1 s per 4 MiB), which would fail
    every cycle whose apply takes a few seconds more.  A fake replica
    answers WELCOME at version 2 and ACKs 10 s after END (keepalive 1 s
    here: a budget of about 6 s)."""
    from test_hostile_resync import FakeReplica
    import wireproto as wp
    disks = [env.make_disk(env.path("src", "sda.img"), 1 << 20, "random")]
    rep = env.replica()             # not started: its address hosts the fake
    pri = env.primary({VM: disks}, rep.port)
    set_keepalive(pri, "1s")
    pri.start()
    pri.ok("pause", VM)
    fake = FakeReplica(env, rep.port)

    def script(conn, hello, res):
        check(hello["version"] == wp.VERSION_CURRENT, "HELLO version %d" % hello["version"])
        conn.send(wp.welcome(hello["generation"], version=2))
        while True:
            fr = conn.recv_frame(20)
            check(fr is not None, "the primary closed before END")
            check(fr[0] != wp.KEEPALIVE, "KEEPALIVE in a version 2 session")
            if fr[0] == wp.END:
                res["cycle"] = wp.decode_end(fr[1])["cycle"]
                break
        time.sleep(10)              # a slow apply, silently (version 2)
        conn.send(wp.ack(res["cycle"], 1))
    try:
        fake.serve(script)
        r = pri.ctl("sync", VM, "--wait", timeout=60)
        res = fake.join()
        check(r.rc == 0, "sync --wait behind a slow version 2 replica: %r\n%s"
              % (r, pri.log_text()[-1500:]))
        check(res["error"] is None, "the fake replica: %s" % res["error"])
    finally:
        fake.close()
    pri.stop()
