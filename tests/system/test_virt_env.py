"""The libvirt test environment itself (virt.py), without replicad: a
private libvirtd, the test guest booted under TCG, pull-mode backups with
checkpoints (what tracker = libvirt will use), ACPI shutdown, a teardown
that leaves no process behind, and the point checks (which must also
fail when a point is wrong).

Not SERIAL: each test has its own libvirtd in its own mount namespace (no
cgroups, no shared paths), so two run side by side; a TCG guest keeps about
one core busy, and every wait has a deadline made for a loaded machine.
"""
import json
import os
import subprocess

from virt import (LibvirtDaemon, Guest, check_ext4_point, file_content, make_disk, pid_alive,
                  procs_in_ns, qemu_dir, seq_of)
from harness import TestFailure, check, wait_for


def backup_xml(sockdir, disks, incremental=None):
    """A pull-mode backup exporting disks over NBD on sockdir/nbd.sock."""
    inc = "<incremental>%s</incremental>" % incremental if incremental else ""
    ds = "".join("<disk name='%s' backup='yes' type='file'><scratch file='%s/%s.scratch'/></disk>"
                 % (d, sockdir, d) for d in disks)
    return ("<domainbackup mode='pull'>%s<server transport='unix' socket='%s/nbd.sock'/>"
            "<disks>%s</disks></domainbackup>" % (inc, sockdir, ds))


def checkpoint_xml(name, disks):
    ds = "".join("<disk name='%s' checkpoint='bitmap'/>" % d for d in disks)
    return "<domaincheckpoint><name>%s</name><disks>%s</disks></domaincheckpoint>" % (name, ds)


def begin_backup(env, g, sockdir, checkpoint, incremental=None):
    """Start a pull backup of vda creating checkpoint; returns the NBD URI
    of the export."""
    for sub in ("nbd.sock", "vda.scratch"):
        if os.path.exists(os.path.join(sockdir, sub)):
            os.unlink(os.path.join(sockdir, sub))
    bx, cx = env.path(checkpoint + ".backup.xml"), env.path(checkpoint + ".checkpoint.xml")
    with open(bx, "w") as f:
        f.write(backup_xml(sockdir, ["vda"], incremental))
    with open(cx, "w") as f:
        f.write(checkpoint_xml(checkpoint, ["vda"]))
    g.lv.virsh("backup-begin", g.name, bx, cx)
    sock = os.path.join(sockdir, "nbd.sock")
    wait_for(lambda: os.path.exists(sock), 60, what="the backup's NBD socket")
    return "nbd+unix:///vda?socket=" + sock


def end_backup(g):
    g.lv.virsh("domjobabort", g.name)
    wait_for(lambda: "None" in g.lv.virsh("domjobinfo", g.name).split("\n")[0], 60, 0.1,
             what="the backup job of %s to end" % g.name)


def copy_export(uri, out):
    p = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out],
                       capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, "copying the export %s failed: %s" % (uri, p.stderr.strip()))


def dirty_extents(sock):
    """The extents of the export's incremental bitmap that are dirty
    ([(offset, length)]), read through qemu-img map's x-dirty-bitmap."""
    p = subprocess.run(["qemu-img", "map", "--output=json", "--image-opts",
                        "driver=nbd,server.type=unix,server.path=%s,export=vda,"
                        "x-dirty-bitmap=qemu:dirty-bitmap:backup-vda" % sock],
                       capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, "qemu-img map of the dirty bitmap failed: %s" % p.stderr)
    # With x-dirty-bitmap, "data": false marks the dirty extents.
    return [(e["start"], e["length"]) for e in json.loads(p.stdout) if not e["data"]]


def check_gone(pids, ns):
    """After LibvirtDaemon.stop(): none of the daemon's processes (pids,
    seen while it ran) survives, and its namespace is empty."""
    alive = [p for p in pids if pid_alive(p)]
    check(not alive, "processes of the private libvirtd survived its stop: %s" % alive)
    check(procs_in_ns(ns) == [], "processes left in the daemon's namespace: %s" % procs_in_ns(ns))


def test_writer_backup_shutdown(env):
    """A writer guest on qcow2: a frozen full pull backup and a crash-
    consistent incremental one each export a point whose ext4 holds every
    file the guest had acknowledged; after ACPI shutdown the disk holds all
    of them; stopping the daemon leaves no process."""
    lv = LibvirtDaemon(env).start()
    disk = make_disk(env.path("vm", "a.qcow2"))
    g = Guest(lv, "g1", [(disk, "qcow2", "vda")]).define().start()
    qemu_pid = g.pid()
    check(qemu_pid in lv.pids(), "QEMU (%s) is not in the daemon's namespace %s" % (qemu_pid, lv.pids()))
    g.wait_wrote(5)
    g.wait_agent()
    sockdir = qemu_dir(env.path("bk"))

    # Full backup of a frozen file system, creating checkpoint replicad.1.
    lv.virsh("domfsfreeze", g.name)
    try:
        uri = begin_backup(env, g, sockdir, "replicad.1")
        acked = g.wrote()       # durable before the freeze: in the point
    finally:
        lv.virsh("domfsthaw", g.name)
    copy_export(uri, env.path("p1.raw"))
    end_backup(g)
    got = check_ext4_point(env.path("p1.raw"), env.path("chk"))
    check(got and got[-1] >= acked, "the frozen point lists files 1..%d, the guest had "
          "acknowledged %d before the checkpoint" % (len(got), acked))

    # Writes after the checkpoint show in its size.
    g.wait_wrote(acked + 10)
    size = wait_for(lambda: int(
        lv.virsh("checkpoint-dumpxml", g.name, "replicad.1", "--size").split("size='")[1].split("'")[0]),
        30, what="checkpoint replicad.1 to report a size")
    check(size > 0, "checkpoint replicad.1 reports size %d after writes" % size)

    # Incremental backup since replicad.1, without a freeze (crash-
    # consistent), creating replicad.2.
    acked = g.wrote()
    uri = begin_backup(env, g, sockdir, "replicad.2", incremental="replicad.1")
    dirty = dirty_extents(os.path.join(sockdir, "nbd.sock"))
    check(dirty, "the incremental backup's bitmap has no dirty extent")
    # A few dozen small files since replicad.1: far less than the disk.
    check(sum(n for _, n in dirty) < os.path.getsize(env.path("p1.raw")) // 4,
          "the incremental backup's bitmap marks %d bytes dirty" % sum(n for _, n in dirty))
    copy_export(uri, env.path("p2.raw"))
    end_backup(g)
    got = check_ext4_point(env.path("p2.raw"), env.path("chk"))
    check(got and got[-1] >= acked, "the crash-consistent point lists files 1..%d, the guest "
          "had acknowledged %d before the checkpoint" % (len(got), acked))
    names = lv.virsh("checkpoint-list", g.name, "--name").split()
    check(names == ["replicad.1", "replicad.2"], "checkpoints: %s" % names)

    g.shutdown()
    g.wait_line("replicad-guest: power off")
    final = g.wrote()
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, env.path("final.raw")],
                   check=True, timeout=300)
    got = check_ext4_point(env.path("final.raw"), env.path("chk"))
    check(len(got) >= final > 0, "after shutdown the disk lists files 1..%d, the guest "
          "acknowledged %d" % (len(got), final))

    g.undefine()
    check(lv.domains() == [], "domains left after undefine: %s" % lv.domains())
    pids, ns = lv.pids(), lv.ns
    check(qemu_pid not in pids, "QEMU %d still runs after the guest shut down" % qemu_pid)
    left = lv.stop()
    check(left == [], "processes had to be killed after libvirtd stopped: %s" % left)
    check_gone(pids, ns)


def test_seq2_raw_teardown(env):
    """A seq2 guest on two blank raw disks, no agent, no NIC: after ACPI
    shutdown vda = vdb or vda = vdb + 1, and both hold at least the last
    number the guest reported.  Started again, pulled the plug on, started
    once more, it is left running for the teardown Env.cleanup uses, which
    must end QEMU and the daemon."""
    lv = LibvirtDaemon(env).start()
    disks = [(make_disk(env.path("vm", d + ".raw"), 16 << 20, fmt="raw", fs=None), "raw", d)
             for d in ("vda", "vdb")]
    g = Guest(lv, "g2", disks, mode="seq2", agent=False, nic=False).define().start()
    g.wait_line("replicad-guest: seq 20")
    g.shutdown()
    g.wait_line("replicad-guest: power off")
    last = max(int(ln.split()[-1]) for ln in g.console_lines() if "replicad-guest: seq " in ln)
    a, b = seq_of(disks[0][0]), seq_of(disks[1][0])
    check(a in (b, b + 1) and b >= last,
          "after shutdown vda holds %d, vdb %d; the guest reported %d" % (a, b, last))

    g.start()
    g.wait_line("replicad-guest: ready seq2")        # this boot's line, not the last one's
    g.destroy()
    check(g.state() == "shut off", "%s is %s after destroy" % (g.name, g.state()))
    g.start()
    wait_for(lambda: g.pid() in lv.pids(), 60, what="QEMU of %s to run again" % g.name)
    pids, ns = lv.pids(), lv.ns
    check(len(pids) == 2, "the daemon's namespace holds %s, not libvirtd and QEMU" % pids)
    lv.kill()           # what Env.cleanup calls
    check(lv.poll() == 0, "the daemon still counts as running after kill()")
    check_gone(pids, ns)


def test_point_checks(env):
    """check_ext4_point and seq_of on images made without a guest (mkfs.ext4
    -d): a good point passes; a changed byte, a missing file, a gap in the
    manifest, a qcow2 image and a torn seq2 block each fail with a message
    that names the fault."""
    def image(name, files):
        src = env.path(name + ".d")
        os.makedirs(src)
        for fn, data in files.items():
            with open(os.path.join(src, fn), "wb") as f:
                f.write(data)
        img = env.path(name + ".raw")
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", src, img], check=True)
        return img

    def fails(img, *words):
        try:
            check_ext4_point(img, env.path("chk"))
        except TestFailure as e:
            check(all(w in str(e) for w in words), "the failure %r does not name %s" % (str(e), words))
            return
        raise TestFailure("check_ext4_point passed %s" % img)

    good = {"f%d" % n: file_content(n) for n in range(1, 6)}
    good["manifest"] = b"1\n2\n3\n4\n5\n"
    got = check_ext4_point(image("good", dict(good, f6=b"partial")), env.path("chk"))
    check(got == [1, 2, 3, 4, 5], "the good point lists %s" % got)

    bad = dict(good)
    bad["f3"] = good["f3"][:100] + b"X" + good["f3"][101:]
    fails(image("byte", bad), "f3", "offset 100")
    bad = dict(good)
    del bad["f2"]
    fails(image("missing", bad), "f2", "missing")
    fails(image("gap", dict(good, manifest=b"1\n2\n4\n")), "not 1..3")
    fails(image("torn", dict(good, manifest=b"1\n2\n3\n4\n5\n6")), "partial line")
    qcow = env.path("good.qcow2")
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", env.path("good.raw"), qcow], check=True)
    fails(qcow, "qcow2")

    seq = env.path("seq.raw")
    for content, want in ((b"", 0), (b"%-4095d\n" % 42, 42)):
        with open(seq, "wb") as f:
            f.truncate(1 << 20)
            f.write(content)
        check(seq_of(seq) == want, "seq_of reads %d, not %d" % (seq_of(seq), want))
    with open(seq, "r+b") as f:
        f.write(b"%-4095d\n" % 1234)
        f.seek(0)
        f.seek(2000)
        f.write(b"x")           # a block torn by a stray write
    try:
        seq_of(seq)
    except TestFailure as e:
        check("not a seq2 record" in str(e), "seq_of's failure: %s" % e)
    else:
        raise TestFailure("seq_of accepted a torn block")
