"""Reloading the configuration (SIGHUP, `replctl reload`): VMs added start,
VMs removed stop with their state kept, changed keys apply from the next
cycle (a cycle under way ends with the old ones), [accept] changes apply
to new sessions, [daemon] keys that need a restart are kept and said; an
invalid file is refused with its error and the running configuration
stays.  Cycles are held by a hook waiting for a file, never by sleeping."""
import os
import signal

from harness import LogMark, assert_same, check, vm_status, wait_for
from workload import random_write


def conf_of(d):
    return open(d.conf).read()


def write_conf(d, text):
    with open(d.conf, "w") as f:
        f.write(text)


def vm_section(name, disk, port, extra=""):
    return "[vm %s]\ndisk = %s\nreplica = 127.0.0.1:%d\nreplica_name = replica\ninterval = 0\n%s\n" % (
        name, disk, port, extra)


def reload_ok(d, *want):
    r = d.ok("reload")
    for w in want:
        check(w in r.out, "reload said %r, wanted %r" % (r.out, w))
    return r.out


def test_reload_adds_and_removes(env):
    a = env.make_disk(env.path("src", "a.img"), 2 << 20)
    b = env.make_disk(env.path("src", "b.img"), 2 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [a]}, rep.port).start()
    pri.ok("sync", "web01", "--wait")
    # unknown to the daemon before the reload
    check(pri.ctl("sync", "db02", "--wait").rc == 1, "db02 known before the reload")
    write_conf(pri, conf_of(pri) + vm_section("db02", b, rep.port))
    reload_ok(pri, "1 VM added, 0 removed, 0 changed")
    pri.ok("sync", "db02", "--wait")
    assert_same(b, os.path.join(rep.storage, "db02", "b.img"), "db02 after the reload")
    # web01 removed: no cycles, a note why, its state kept
    text = conf_of(pri)
    start = text.index("[vm web01]")
    end = text.index("[vm db02]")
    write_conf(pri, text[:start] + text[end:])
    reload_ok(pri, "0 VMs added, 1 removed")
    wait_for(lambda: "removed by a reload" in (vm_status(pri, "web01").get("error") or ""), 30,
             what="web01's note after its removal")
    r = pri.ctl("sync", "web01", "--wait")
    check(r.rc != 0, "sync of a removed VM: %r" % r)
    random_write(env.rng, a, max_len=256 << 10)
    # back: the tracker state it kept makes the next cycle incremental
    write_conf(pri, text)
    reload_ok(pri, "1 VM added, 0 removed")
    wait_for(lambda: pri.ctl("sync", "web01", "--wait").rc == 0, 30, what="web01 to sync again")
    st = vm_status(pri, "web01")
    check(0 < st["last_cycle"]["dirty_bytes"] <= (256 << 10) + (128 << 10),
          "the cycle after re-adding sent %r, not an incremental cycle" % st["last_cycle"])
    assert_same(a, os.path.join(rep.storage, "web01", "a.img"), "web01 after re-adding")
    check(pri.alive() and rep.alive(), "a daemon died")


def test_reload_change_applies_after_the_cycle(env):
    """compress = zstd -> none while a cycle is held in its pre_snapshot
    hook: the reload answers at once, the held cycle completes with the
    old key (compressed), the next one sends raw."""
    disk = env.path("src", "t.img")
    os.makedirs(os.path.dirname(disk), exist_ok=True)
    with open(disk, "wb") as f:
        f.write((b"replicad reload test line, compressible text\n" * 50000)[:2 << 20])
    started, go, hook = env.path("started"), env.path("go"), env.path("hold.sh")
    with open(hook, "w") as f:
        f.write("touch %s\nuntil [ -e %s ]; do sleep 0.05; done\nrm -f %s\n" % (started, go, started))
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port)
    write_conf(pri, conf_of(pri).replace("interval = 0\n", "interval = 0\npre_snapshot = sh %s\n" % hook))
    pri.start()
    open(go, "w").close()
    pri.ok("sync", "web01", "--wait")
    first = vm_status(pri, "web01")["last_cycle"]
    check(first["bytes_sent"] < first["dirty_bytes"] // 4, "not compressed at first: %r" % first)
    os.unlink(go)
    with open(disk, "r+b") as f:
        f.write(b"changed line of text, also compressible\n" * 10000)
    import subprocess
    held = subprocess.Popen([os.environ.get("REPLCTL_FOR_TEST", "") or pri_replctl(pri), "-s", pri.socket,
                             "sync", "web01", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: os.path.exists(started), 30, what="the cycle to reach its hook")
    write_conf(pri, conf_of(pri).replace("interval = 0\n", "interval = 0\ncompress = none\n", 1))
    reload_ok(pri, "0 VMs added, 0 removed, 1 changed")
    check(held.poll() is None, "the held cycle ended at the reload")
    open(go, "w").close()
    out, err = held.communicate(timeout=120)
    check(held.returncode == 0, "the held cycle failed: %r %r" % (out, err))
    second = vm_status(pri, "web01")["last_cycle"]
    check(second["bytes_sent"] < second["dirty_bytes"] // 4, "the cycle under way used the new key: %r" % second)
    with open(disk, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"third change, compressible text again\n" * 10000)
    wait_for(lambda: pri.ctl("sync", "web01", "--wait").rc == 0, 30, what="a cycle with the new key")
    third = vm_status(pri, "web01")["last_cycle"]
    check(third["bytes_sent"] >= third["dirty_bytes"] > 0, "compress = none not applied: %r" % third)
    assert_same(disk, os.path.join(rep.storage, "web01", "t.img"), "after the change")


def pri_replctl(d):
    from harness import REPLCTL
    return REPLCTL


def test_reload_invalid_file_refused(env):
    disk = env.make_disk(env.path("src", "i.img"), 1 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port).start()
    pri.ok("sync", "web01", "--wait")
    good = conf_of(pri)
    write_conf(pri, good.replace("interval = 0\n", "interval = 0\nbogus_key = 1\n"))
    r = pri.ctl("reload")
    check(r.rc == 2 and "bogus_key" in r.err and pri.conf in r.err and "running configuration stays" in r.err,
          "reload of a bad file: %r" % r)
    # SIGHUP with the same file: refused in the log, the daemon goes on
    mark = LogMark(pri)
    pri.proc.send_signal(signal.SIGHUP)
    mark.wait("reload refused", "bogus_key", what="the SIGHUP refusal")
    check(pri.alive(), "replicad died on SIGHUP with a bad file")
    pri.ok("sync", "web01", "--wait")
    # a [daemon] key that needs a restart: kept, said
    write_conf(pri, good.replace("log_level = debug\n", "log_level = debug\ncontrol_socket = %s\n"
                                 % env.path("other.sock")))
    out = reload_ok(pri, "need a restart")
    check("control_socket changed" in pri.log_text(), "the kept key is not logged")
    pri.ok("status")            # still on the old socket
    check(not os.path.exists(env.path("other.sock")), "a new control socket appeared")


def test_reload_accept(env):
    """The replica stops accepting db02 for new sessions once its [accept]
    says so, and takes it again after the next reload."""
    a = env.make_disk(env.path("src", "a.img"), 1 << 20)
    b = env.make_disk(env.path("src", "b.img"), 1 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [a], "db02": [b]}, rep.port).start()
    pri.ok("sync", "db02", "--wait")
    good = conf_of(rep)
    write_conf(rep, good.replace("vms = *\n", "vms = web*\n"))
    reload_ok(rep, "0 VMs added")
    r = pri.ctl("sync", "db02", "--wait")
    check(r.rc == 1 and "may not replicate" in r.err, "db02 after its [accept] dropped it: %r" % r)
    pri.ok("sync", "web01", "--wait")
    write_conf(rep, good)
    reload_ok(rep, "reloaded")
    pri.ok("sync", "db02", "--wait")
    assert_same(b, os.path.join(rep.storage, "db02", "b.img"), "db02 back")


def test_reload_disk_moved(env):
    """A change its tracker depends on (the disk's path: the image moved to
    another directory, same name): the VM is served again from the new
    section once idle, and the next cycle makes the replica equal the file
    at the new path."""
    a = env.make_disk(env.path("src", "a.img"), 2 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [a]}, rep.port).start()
    pri.ok("sync", "web01", "--wait")
    moved = env.path("src2", "a.img")
    os.makedirs(os.path.dirname(moved))
    with open(a, "rb") as f, open(moved, "wb") as g:
        g.write(f.read())
    random_write(env.rng, moved, max_len=512 << 10)
    write_conf(pri, conf_of(pri).replace("disk = %s\n" % a, "disk = %s\n" % moved))
    reload_ok(pri, "1 changed")
    wait_for(lambda: pri.ctl("sync", "web01", "--wait").rc == 0, 30, what="a cycle from the moved disk")
    assert_same(moved, os.path.join(rep.storage, "web01", "a.img"), "after the move")
    check("serving the reloaded section" in pri.log_text(), "the VM was not served again")


def test_reload_survives_a_vm_that_cannot_start(env):
    """A [vm] added whose tracker state cannot be opened: logged and shown,
    the daemon and the other VMs go on (it used to end replicad, and every
    restart after)."""
    a = env.make_disk(env.path("src", "a.img"), 1 << 20)
    b = env.make_disk(env.path("src", "b.img"), 1 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [a]}, rep.port).start()
    pri.ok("sync", "web01", "--wait")
    os.makedirs(os.path.join(pri.state, "tracker"), exist_ok=True)
    open(os.path.join(pri.state, "tracker", "db02"), "w").close()     # not a directory
    write_conf(pri, conf_of(pri) + vm_section("db02", b, rep.port))
    pri.ctl("reload")
    check(pri.alive(), "replicad died on a VM that cannot start")
    pri.ok("sync", "web01", "--wait")
    st = vm_status(pri, "db02")
    check(st["health"] == "critical" and "tracker state cannot be opened" in (st["error"] or ""),
          "db02 after a failed start: %r" % st)
    pri.stop()


def test_reload_removal_stops_back_to_back_cycles(env):
    """Cycles longer than the interval follow each other at once: a VM
    removed by a reload runs no cycle after the one under way."""
    a = env.make_disk(env.path("src", "a.img"), 1 << 20)
    go, runs, hook = env.path("go"), env.path("runs"), env.path("hold.sh")
    with open(hook, "w") as f:
        f.write("echo run >> %s\nuntil [ -e %s ]; do sleep 0.05; done\n" % (runs, go))
    rep = env.replica().start()
    pri = env.primary({"web01": [a]}, rep.port)
    write_conf(pri, conf_of(pri).replace("interval = 0\n", "interval = 1s\npre_snapshot = sh %s\n" % hook))
    pri.start()
    wait_for(lambda: os.path.exists(runs), 30, what="the first cycle to reach its hook")
    text = conf_of(pri)
    other = env.make_disk(env.path("src", "o.img"), 1 << 20)
    write_conf(pri, text[:text.index("[vm web01]")] + vm_section("other", other, rep.port))
    reload_ok(pri, "removed")
    n = len(open(runs).read().split())
    open(go, "w").close()           # the cycle under way ends
    wait_for(lambda: "removed by a reload" in (vm_status(pri, "web01").get("error") or ""), 60,
             what="web01 to stop after its cycle")
    check(len(open(runs).read().split()) == n, "web01 ran another cycle after its removal")


def test_reload_accept_revoked_for_kept_sessions(env):
    """With an interval of a minute or less the session stays open between
    cycles: a reload that takes the VM from the host refuses its next
    cycle all the same."""
    a = env.make_disk(env.path("src", "a.img"), 1 << 20)
    b = env.make_disk(env.path("src", "b.img"), 1 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [a], "db02": [b]}, rep.port)
    write_conf(pri, conf_of(pri).replace("interval = 0\n", "interval = 1s\n"))
    pri.start()
    wait_for(lambda: vm_status(pri, "db02")["last_cycle"]["cycle"] >= 2, 60, what="db02's kept session")
    write_conf(rep, conf_of(rep).replace("vms = *\n", "vms = web*\n"))
    reload_ok(rep, "reloaded")
    wait_for(lambda: "may not replicate" in (vm_status(pri, "db02").get("error") or ""), 60,
             what="db02's next cycle to be refused")
    c = vm_status(pri, "web01")["last_cycle"]["cycle"]
    wait_for(lambda: vm_status(pri, "web01")["last_cycle"]["cycle"] > c, 60, what="web01 to go on")


def test_reload_keeps_a_pause(env):
    """A paused VM served again for a structural change stays paused."""
    a = env.make_disk(env.path("src", "a.img"), 1 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [a]}, rep.port)
    write_conf(pri, conf_of(pri).replace("interval = 0\n", "interval = 1s\n"))
    pri.start()
    wait_for(lambda: vm_status(pri, "web01")["last_cycle"]["cycle"] >= 1, 60, what="a first cycle")
    pri.ok("pause", "web01")
    moved = env.path("src2", "a.img")
    os.makedirs(os.path.dirname(moved))
    with open(a, "rb") as f, open(moved, "wb") as g:
        g.write(f.read())
    mark = LogMark(pri)
    write_conf(pri, conf_of(pri).replace("disk = %s\n" % a, "disk = %s\n" % moved))
    reload_ok(pri, "1 changed")
    mark.wait("serving the reloaded section", what="web01 served again")
    check(vm_status(pri, "web01")["state"] == "paused", "the pause was lost: %r" % vm_status(pri, "web01"))
    pri.ok("resume", "web01")
    wait_for(lambda: pri.ctl("sync", "web01", "--wait").rc == 0, 30, what="a cycle after resume")
    assert_same(moved, os.path.join(rep.storage, "web01", "a.img"), "after the move")
