"""tracker = libvirt: a real Linux guest (tests/guest, TCG) under a private
libvirtd (virt.py), replicated by its domain's name.

What a user relies on, checked here:
* every point is a prefix of the guest's acknowledged writes, with a
  clean ext4 (test failover copies, e2fsck, the manifest's files);
* the replica is byte-exact at every cut (the guest is paused for the
  comparison: QEMU flushes the image when it stops the guest), through
  incremental cycles, idle cycles, broken checkpoint chains, restarts, a
  killed QEMU, a shut-off domain and a primary killed mid-cycle;
* one instant across two disks;
* bad input (unknown domain, libvirt not running, a disk without a file, a
  renamed domain) gives a clear error and leaves other VMs alone.
"""
import json
import os
import subprocess

from harness import REPLICAD, assert_same, check, set_vm_keys, vm_status, wait_for
from virt import Guest, LibvirtDaemon, check_ext4_point, make_disk, seq_of

VM = "web01"
SIZE = 64 << 20


def sync(pri):
    r = pri.ok("sync", VM, "--wait")
    words = r.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % r.out)
    return int(words[1])


def last_cycle(pri):
    return vm_status(pri, VM)["last_cycle"]


def setup(env, disks=(("vda", "qcow2"),), mode="writer", freeze=True, start=True,
          extra_vm="", replica_libvirt=True):
    """A private libvirtd with the guest VM (its disks [(target, format)]),
    a replica (with a libvirtd of its own when replica_libvirt, where a
    test failover's domain may name the guest's kernel, initrd and console
    file: domain_paths, the test's directory), and a primary protecting
    the domain.  Returns (lv, guest, pri, rep, images)."""
    lv = LibvirtDaemon(env, "lvp").start()
    images = []
    for target, fmt in disks:
        path = env.path("img", "%s.%s" % (target, fmt))
        make_disk(path, SIZE, fmt=fmt, fs="ext4" if target == "vda" and mode != "seq2" else None)
        images.append((path, fmt, target))
    g = Guest(lv, VM, images, mode=mode).define()
    if start:
        g.start()
    extra = ""
    if replica_libvirt:
        lvr = LibvirtDaemon(env, "lvr").start()
        extra = "libvirt_uri = %s\ndomain_paths = %s\n" % (lvr.uri, env.dir)
        env.lvr = lvr
    rep = env.replica(extra=extra).start()
    pri = env.primary({VM: []}, rep.port)
    set_vm_keys(pri, VM, "domain = %s\nlibvirt_uri = %s\n%s%s"
                % (VM, lv.uri, "freeze = agent\n" if freeze else "", extra_vm))
    pri.start()
    return lv, g, pri, rep, images


def assert_exact(env, lv, g, pri, rep, images, what):
    """Pause the guest (QEMU flushes its images), sync, and compare each
    replica file with the image's guest-visible content; resume.  Returns
    the point."""
    running = g.state() == "running"
    if running:
        lv.virsh("suspend", g.name)
    try:
        point = sync(pri)
        for path, fmt, target in images:
            raw = env.path("exact-%s.raw" % target)
            subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, raw],
                           check=True)
            assert_same(raw, os.path.join(rep.storage, VM, target), what)
            os.unlink(raw)
    finally:
        if running:
            lv.virsh("resume", g.name)
    return point


def check_point(env, rep, point):
    """Rebuild point by test failover and check its file system; returns
    the manifest's file numbers."""
    out = rep.ok("failover", VM, "--test", "--point", str(point)).out
    copy = os.path.join(rep.storage, VM, "test", "vda")
    check(copy in out, "failover --test did not print %s: %r" % (copy, out))
    try:
        return check_ext4_point(copy, env.path("check"))
    finally:
        rep.ok("failover", VM, "--test", "--cleanup")


def points(rep):
    return json.loads(rep.ok("points", VM, "--json").out)


def test_libvirt_rounds(env):
    lv, g, pri, rep, images = setup(env)
    g.wait_agent()
    first = g.wait_wrote(3)
    taken = []          # (point, files acknowledged before its sync began)
    acked = first
    for _ in range(6):
        acked = g.wait_wrote(acked + 3)
        taken.append((sync(pri), acked))
    # Incremental: a cycle reads what changed, not the disk.
    lc = last_cycle(pri)
    check(0 < lc["bytes_read"] < SIZE, "an incremental cycle read %d of %d bytes"
          % (lc["bytes_read"], SIZE))
    kinds = {p["id"]: p["kind"] for p in points(rep)}
    check(sum(kinds[p] == "app" for p, _ in taken) >= len(taken) - 1,
          "the guest agent froze few cuts: %r" % kinds)
    prev = 0
    for point, acked in taken:
        ns = check_point(env, rep, point)
        check(len(ns) >= acked, "point %d holds %d files, but %d were acknowledged before its "
              "cut" % (point, len(ns), acked))
        check(len(ns) >= prev, "point %d holds fewer files (%d) than the one before (%d)"
              % (point, len(ns), prev))
        prev = len(ns)
    assert_exact(env, lv, g, pri, rep, images, "after the rounds")
    # The definition travelled with the points, once.
    xml = rep.ok("definition", VM).out
    check("<name>%s</name>" % VM in xml and "vda" in xml, "the stored definition: %r" % xml[:300])
    pts = points(rep)
    check(all(p["definition"] for p in pts), "points without a definition: %r" % pts)
    check(sum(p["definition_changed"] for p in pts) == 1, "the definition changed at more than "
          "one point although the domain was not edited: %r" % pts)
    # Edited (more memory): the next point shows the change.
    xml = lv.virsh("dumpxml", "--inactive", g.name)
    check("<memory unit='KiB'>262144</memory>" in xml, "memory not in the definition: %r" % xml)
    with open(env.path("edited.xml"), "w") as f:
        f.write(xml.replace("<memory unit='KiB'>262144</memory>",
                            "<memory unit='KiB'>327680</memory>"))
    lv.virsh("define", env.path("edited.xml"))
    sync(pri)
    pts = points(rep)
    check(pts[-1]["definition_changed"] and "327680" in rep.ok("definition", VM).out,
          "an edited definition is not the newest point's: %r" % pts[-1])
    # An idle cycle makes no backup: nothing read, nothing to send.
    lv.virsh("suspend", g.name)
    try:
        sync(pri)
        sync(pri)
        lc = last_cycle(pri)
        check(lc["bytes_read"] == 0 and lc["dirty_bytes"] == 0,
              "an idle cycle read %d bytes" % lc["bytes_read"])
    finally:
        lv.virsh("resume", g.name)
    # The backup job ended with the cycle; one checkpoint is left.
    job = lv.virsh("domjobinfo", g.name)
    check("None" in job.splitlines()[0] if job.strip() else True,
          "a job still runs on the domain: %s" % job)
    ckpts = lv.virsh("checkpoint-list", g.name, "--name").split()
    check(len(ckpts) == 1 and ckpts[0].startswith("replicad."),
          "checkpoints left on the domain: %r" % ckpts)


def test_libvirt_chain_breaks(env):
    lv, g, pri, rep, images = setup(env, freeze=False)
    g.wait_wrote(3)
    assert_exact(env, lv, g, pri, rep, images, "initial")
    g.wait_wrote(g.wrote() + 3)
    assert_exact(env, lv, g, pri, rep, images, "incremental")

    # The checkpoint deleted behind replicad's back (metadata only: the
    # bitmap stays in the image, libvirt no longer knows it).
    for c in lv.virsh("checkpoint-list", g.name, "--name").split():
        lv.virsh("checkpoint-delete", g.name, c, "--metadata")
    g.wait_wrote(g.wrote() + 3)
    assert_exact(env, lv, g, pri, rep, images, "checkpoint deleted by hand")
    check(last_cycle(pri)["bytes_read"] >= SIZE,
          "after the checkpoint was deleted the cycle read %d bytes, not the whole disk"
          % last_cycle(pri)["bytes_read"])

    # A clean restart keeps the bitmaps (qcow2): incremental again.
    g.shutdown()
    g.start()
    g.wait_wrote(g.wrote() + 3)
    assert_exact(env, lv, g, pri, rep, images, "restart")

    # QEMU killed: its bitmaps are inconsistent, libvirt refuses them.
    pid = g.pid()
    check(pid is not None, "no QEMU PID for the guest")
    os.kill(pid, 9)
    g.wait_state("shut off")
    g.start()
    g.wait_wrote(g.wrote() + 3)
    mark = len(pri.log_text())
    assert_exact(env, lv, g, pri, rep, images, "QEMU killed")
    check("is broken" in pri.log_text()[mark:],
          "no broken-chain warning after QEMU was killed:\n%s" % pri.log_text()[mark:][-2000:])

    # Shut off: read from the images once, then nothing.
    g.shutdown()
    assert_exact(env, lv, g, pri, rep, images, "shut off")
    sync(pri)
    lc = last_cycle(pri)
    check(lc["bytes_read"] == 0, "a second cycle of a shut-off domain read %d bytes"
          % lc["bytes_read"])
    kinds = [p["kind"] for p in points(rep)]
    g.start()
    g.wait_wrote(g.wrote() + 3)
    assert_exact(env, lv, g, pri, rep, images, "started again")
    check(last_cycle(pri)["bytes_read"] < SIZE, "the first cycle after a start read the whole "
          "disk: the checkpoint chain did not survive the shut-off cycles")

    # A cycle that fails before the replica has it all (the replica dies
    # while staging it): its checkpoint is deleted, libvirt merges its
    # bitmap into the last acknowledged one, and the next cycle is
    # incremental from there.  (40 files: more than the 8 records the
    # fault point waits for.)
    rep.stop()
    rep.start(env_extra={"REPLICAD_FAULT": "replica-staging"})
    g.wait_wrote(g.wrote() + 40)
    r = pri.ctl("sync", VM, "--wait")
    check(r.rc != 0, "sync succeeded although the replica was to die while staging")
    wait_for(lambda: not rep.alive(), 30, what="the replica to die at its fault point")
    rep.start()
    g.wait_wrote(g.wrote() + 3)
    mark = len(pri.log_text())
    assert_exact(env, lv, g, pri, rep, images, "after a failed cycle")
    check(last_cycle(pri)["bytes_read"] < SIZE and "is broken" not in pri.log_text()[mark:],
          "the cycle after a failed one was not incremental:\n%s" % pri.log_text()[mark:][-2000:])

    # The replica dies after END, while applying: it finishes the cycle at
    # its restart, the primary never had the ACK and resynchronises (a
    # whole view of the disks, compared with librsync).
    rep.stop()
    rep.start(env_extra={"REPLICAD_FAULT": "replica-mid-apply"})
    g.wait_wrote(g.wrote() + 3)
    r = pri.ctl("sync", VM, "--wait")
    check(r.rc != 0, "sync succeeded although the replica was to die while applying")
    wait_for(lambda: not rep.alive(), 30, what="the replica to die at its fault point")
    rep.start()
    g.wait_wrote(g.wrote() + 3)
    assert_exact(env, lv, g, pri, rep, images, "after a cycle the replica finished alone")

    # The primary killed between the replica's ACK and its own commit: the
    # next run finds the cycle's checkpoint, removes it, and compares.
    pri.stop()
    pri.start(env_extra={"REPLICAD_FAULT": "primary-after-ack"})
    g.wait_wrote(g.wrote() + 3)
    r = pri.ctl("sync", VM, "--wait")
    wait_for(lambda: not pri.alive(), 30, what="the primary to die at its fault point")
    pri.start()
    g.wait_wrote(g.wrote() + 3)
    assert_exact(env, lv, g, pri, rep, images, "primary killed after the ACK")
    ckpts = lv.virsh("checkpoint-list", g.name, "--name").split()
    check(len(ckpts) == 1, "checkpoints left: %r" % ckpts)
    check(kinds, "no points")


def test_libvirt_two_disks(env):
    # freeze = agent on a guest with no file system mounted: the agent
    # freezes nothing, so the points are crash-consistent, and say so.
    lv, g, pri, rep, images = setup(env, disks=(("vda", "qcow2"), ("vdb", "qcow2")),
                                    mode="seq2", freeze=True)
    g.wait_line("seq 5")
    seen = []
    for _ in range(8):
        sync(pri)
        a = seq_of(os.path.join(rep.storage, VM, "vda"))
        b = seq_of(os.path.join(rep.storage, VM, "vdb"))
        check(a == b or a == b + 1, "a point holds vda at %d and vdb at %d: not one instant "
              "across the disks" % (a, b))
        seen.append(a)
    check(seen[-1] > seen[0], "the guest made no progress between points: %r" % seen)
    kinds = [p["kind"] for p in points(rep)]
    check(kinds and all(k == "crash" for k in kinds), "points of a guest nothing could be "
          "frozen in: %r" % kinds)
    check("will be a crash-consistent point" in pri.log_text(), "no reason logged for the "
          "crash-consistent points")


def test_libvirt_raw_disk(env):
    lv, g, pri, rep, images = setup(env, disks=(("vda", "raw"),))
    g.wait_wrote(3)
    p = assert_exact(env, lv, g, pri, rep, images, "raw, first")
    g.wait_wrote(g.wrote() + 3)
    acked = g.wrote()
    p = sync(pri)
    check(last_cycle(pri)["bytes_read"] == SIZE, "a raw disk keeps no bitmap: every cycle "
          "reads it whole, but this one read %d bytes" % last_cycle(pri)["bytes_read"])
    ns = check_point(env, rep, p)
    check(len(ns) >= acked, "point %d holds %d files, %d acknowledged before" % (p, len(ns), acked))
    assert_exact(env, lv, g, pri, rep, images, "raw, again")


def test_libvirt_bad_input(env):
    lv = LibvirtDaemon(env, "lvp").start()
    # A domain with a disk and an empty cdrom, never started.
    img = make_disk(env.path("img", "vda.qcow2"), SIZE)
    g = Guest(lv, VM, [(img, "qcow2", "vda")], mode="idle")
    g.xml = g.xml.replace("</devices>", "<disk type='file' device='cdrom'><target dev='hdc' "
                          "bus='ide'/><readonly/></disk></devices>")
    g.define()
    # Another VM, plain files, in the same daemon: never disturbed.
    other = env.make_disk(env.path("img", "other.img"), 4 << 20)
    rep = env.replica().start()
    pri = env.primary({VM: [], "other": [other]}, rep.port)
    set_vm_keys(pri, VM, "domain = %s\nlibvirt_uri = %s\n" % (VM, lv.uri))
    base = open(pri.conf).read()

    def run_check(text):
        open(pri.conf, "w").write(text)
        return subprocess.run([REPLICAD, "-c", pri.conf, "--check"], capture_output=True,
                              text=True)

    r = run_check(base)
    check(r.returncode == 0, "--check failed on a good domain: %s" % r.stderr)
    check("disk vda" in r.stdout and "hdc is not replicated" in r.stdout,
          "--check does not say what it found and what it leaves out: %r" % r.stdout)

    r = run_check(base.replace("domain = %s\n" % VM, "domain = nosuch\n"))
    check(r.returncode == 1 and "no libvirt domain nosuch" in r.stderr,
          "--check with an unknown domain: %d %r" % (r.returncode, r.stderr))
    r = run_check(base.replace(lv.uri, lv.uri.replace("libvirt-sock", "nothing-here")))
    check(r.returncode == 1 and "cannot connect to libvirt" in r.stderr,
          "--check without libvirt: %d %r" % (r.returncode, r.stderr))
    r = run_check(base.replace("domain = %s\n" % VM, "domain = %s\ndisks = vda hdc\n" % VM))
    check(r.returncode == 1 and "hdc" in r.stderr and "cannot be replicated" in r.stderr,
          "--check with a cdrom chosen: %d %r" % (r.returncode, r.stderr))
    r = run_check(base.replace("domain = %s\n" % VM, "domain = %s\ndisk = %s\n" % (VM, img)))
    check(r.returncode == 2 and "disk" in r.stderr, "disk = with domain =: %d %r"
          % (r.returncode, r.stderr))

    # The daemon: an unknown domain is left out with the reason; the other
    # VM replicates.
    open(pri.conf, "w").write(base.replace("domain = %s\n" % VM, "domain = nosuch\n"))
    pri.start()
    check("no libvirt domain nosuch" in pri.log_text(), "the log does not say why %s is left "
          "out:\n%s" % (VM, pri.log_text()[-2000:]))
    pri.ok("sync", "other", "--wait")
    pri.stop()

    # libvirt gone with disks = named: the VM is there, its cycles fail
    # with the reason, the other VM goes on.
    open(pri.conf, "w").write(base.replace(lv.uri, lv.uri.replace("libvirt-sock", "nothing-here"))
                              .replace("domain = %s\n" % VM, "domain = %s\ndisks = vda\n" % VM))
    pri.start()
    r = pri.ctl("sync", VM, "--wait")
    check(r.rc == 1 and "cannot connect to libvirt" in r.err, "sync without libvirt: %r" % (r,))
    pri.ok("sync", "other", "--wait")
    pri.stop()

    # A renamed domain: the next cycle says so.
    open(pri.conf, "w").write(base)
    pri.start()
    sync(pri)
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, env.path("vda.raw")],
                   check=True)
    assert_same(env.path("vda.raw"), os.path.join(rep.storage, VM, "vda"), "shut-off domain")
    lv.virsh("domrename", VM, "renamed")
    r = pri.ctl("sync", VM, "--wait")
    check(r.rc == 1 and "no libvirt domain %s" % VM in r.err, "sync of a renamed domain: %r" % (r,))
    check(vm_status(pri, VM)["state"] == "error", "status of a VM whose domain is gone: %r"
          % vm_status(pri, VM))
    pri.ok("sync", "other", "--wait")

