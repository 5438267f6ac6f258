"""Which definition a failover defines the domain from: always the one of
the point the disks hold, even when the move to the point asked for
fails half-way (a private libvirtd, no guest started: start_on_promote =
no).  The scan tracker with REPLICAD_TEST_DEFINITION (tracker.c) makes
the definitions travel."""
import os
import re

from harness import check, vm_status, wait_for
from test_definition import VM, set_def
from test_storage import Shim
from virt import LibvirtDaemon
from workload import random_write


def domain(memory_mib):
    return ("<domain type='qemu'>\n  <name>%s</name>\n  <memory unit='MiB'>%d</memory>\n"
            "  <os><type arch='x86_64'>hvm</type></os>\n  <devices>\n"
            "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            "<source file='/nonexistent'/><target dev='vda' bus='virtio'/></disk>\n"
            "  </devices>\n</domain>\n" % (VM, memory_mib)).encode()


def point_of(r):
    words = r.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % r.out)
    return int(words[1])


def memory_of(lv, name):
    m = re.search(r"<memory unit='KiB'>(\d+)</memory>", lv.virsh("dumpxml", name, "--inactive"))
    check(m is not None, "domain %s has no memory element" % name)
    return int(m.group(1)) >> 10


def test_failed_rewind_defines_the_held_points_domain(env):
    """Points 1 (256 MiB), 2 and 3 (512 MiB).  An unplanned failover to
    point 1 whose rewind fails at its first step (the redo file cannot be
    written) leaves the disks at point 3: the domain defined must be
    point 3's (512 MiB), not point 1's."""
    lv = LibvirtDaemon(env, "lvr").start()
    shim = Shim(env)
    disk = env.make_disk(env.path("src", "vda"), 4 << 20)
    rep = env.replica(extra="libvirt_uri = %s\nstart_on_promote = no\n" % lv.uri)
    rep.start(env_extra=shim.environ())
    dpath = env.path("def.xml")
    set_def(dpath, domain(256))
    pri = env.primary({VM: [disk]}, rep.port)
    pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath})
    p1 = point_of(pri.ok("sync", VM, "--wait"))
    set_def(dpath, domain(512))
    random_write(env.rng, disk, max_len=100000)
    point_of(pri.ok("sync", VM, "--wait"))
    random_write(env.rng, disk, max_len=100000)
    p3 = point_of(pri.ok("sync", VM, "--wait"))
    pri.stop()

    shim.set(["/.redo/"], count=0, err="ENOSPC")
    r = rep.ctl("failover", VM, "--point", str(p1))
    shim.clear()
    check(r.rc != 0 and "moving to point %d failed" % p1 in r.err
          and "the disks hold point %d" % p3 in r.err,
          "a failover whose rewind fails: %r" % r)
    check(VM in lv.domains(), "no domain %s defined: %r\n%s" % (VM, r, rep.log_text()[-2000:]))
    got = memory_of(lv, VM)
    check(got == 512, "the domain was defined from point %d's definition (%d MiB) while the "
          "disks hold point %d (512 MiB)" % (p1, got, p3))
    rep.stop()


def test_restart_mid_rewind_defines_the_held_points_domain(env):
    """The same with the replica killed between two steps of the rewind
    (after point 3 -> 2, before 2 -> 1): at the restart the promotion's
    domain is brought up with point 2's definition (512 MiB), the point
    the disks hold, not with point 1's that the promotion aimed at."""
    lv = LibvirtDaemon(env, "lvr").start()
    disk = env.make_disk(env.path("src", "vda"), 4 << 20)
    rep = env.replica(extra="libvirt_uri = %s\nstart_on_promote = no\n" % lv.uri).start()
    dpath = env.path("def.xml")
    set_def(dpath, domain(256))
    pri = env.primary({VM: [disk]}, rep.port)
    pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath})
    p1 = point_of(pri.ok("sync", VM, "--wait"))
    set_def(dpath, domain(512))
    random_write(env.rng, disk, max_len=100000)
    p2 = point_of(pri.ok("sync", VM, "--wait"))
    random_write(env.rng, disk, max_len=100000)
    point_of(pri.ok("sync", VM, "--wait"))
    pri.stop()

    rep.stop()
    rep.start(env_extra={"REPLICAD_FAULT": "replica-mid-rewind"})
    rep.ctl("failover", VM, "--point", str(p1))
    wait_for(lambda: not rep.alive(), 30, what="the replica to kill itself mid-rewind")
    rep.start()
    wait_for(lambda: VM in lv.domains(), 60, what="the interrupted promotion's domain")
    st = vm_status(rep, VM)
    check(st["role"] == "primary", "after the restart: %r" % st)
    got = memory_of(lv, VM)
    check(got == 512, "the domain was defined from point %d's definition (%d MiB) while the "
          "disks hold point %d (512 MiB)" % (p1, got, p2))
    rep.stop()


def test_test_failover_leaves_a_foreign_test_domain(env):
    """A domain called web01-test that is not a test failover's (an
    operator's own, on its own disk) is neither removed nor redefined by
    `failover --test` (refused, saying why, the copy made stays for
    --cleanup) nor by `--test --cleanup` (the copy goes, the domain
    stays); gone, the test failover defines web01-test on the copy and
    the cleanup removes it."""
    lv = LibvirtDaemon(env, "lvr").start()
    other = env.make_disk(env.path("other", "staging.img"), 1 << 20)
    foreign = domain(128).replace(b"<name>web01</name>", b"<name>web01-test</name>") \
                         .replace(b"/nonexistent", other.encode())
    with open(env.path("foreign.xml"), "wb") as f:
        f.write(foreign)
    lv.virsh("define", env.path("foreign.xml"))
    uuid = lv.virsh("domuuid", "web01-test").strip()

    disk = env.make_disk(env.path("src", "vda"), 4 << 20)
    rep = env.replica(extra="libvirt_uri = %s\n" % lv.uri).start()
    dpath = env.path("def.xml")
    set_def(dpath, domain(256))
    pri = env.primary({VM: [disk]}, rep.port)
    pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath})
    pri.ok("sync", VM, "--wait")

    def foreign_intact(what):
        check("web01-test" in lv.domains(), "%s: the operator's web01-test is gone" % what)
        xml = lv.virsh("dumpxml", "web01-test", "--inactive")
        check(lv.virsh("domuuid", "web01-test").strip() == uuid and other in xml
              and memory_of(lv, "web01-test") == 128,
              "%s: the operator's web01-test was redefined:\n%s" % (what, xml))

    r = rep.ctl("failover", VM, "--test")
    foreign_intact("failover --test")
    check(r.rc == 1 and "web01-test" in r.err and "not a test failover" in r.err,
          "failover --test beside a foreign web01-test: %r" % r)
    copy = os.path.join(rep.storage, VM, "test", "vda")
    check(os.path.exists(copy), "the test copy was not made")
    r = rep.ctl("failover", VM, "--test", "--cleanup")
    foreign_intact("failover --test --cleanup")
    check(r.rc == 0 and not os.path.exists(copy), "cleanup beside a foreign web01-test: %r" % r)

    lv.virsh("undefine", "web01-test")
    rep.ok("failover", VM, "--test")
    xml = lv.virsh("dumpxml", "web01-test", "--inactive")
    check(copy in xml and memory_of(lv, "web01-test") == 256, "the test domain:\n%s" % xml)
    rep.ok("failover", VM, "--test", "--cleanup")
    check("web01-test" not in lv.domains(), "the test domain stays after the cleanup")
    pri.stop()
    rep.stop()
