"""Failover brings the libvirt domain up (replctl(8), "Failover and libvirt
domains"): a real guest (tests/guest, TCG) under a private libvirtd per
host (virt.py), replicated with tracker = libvirt, so that each point
carries the domain's definition.

What a user relies on, checked here:
* a test failover defines VM-test on the copies, shut off, isolated
  (no production UUID or MAC, links down, its own console file, no
  autostart); --start boots it from the copy; --cleanup removes domain
  and copies;
* what a primary's definition may not bring to the replica host (a
  compromised primary: replicad.conf(5) domain_paths) does not reach the
  domain defined there, and the failover says what was left out: here a
  passthrough of the host's / and a serial port on a file in /etc;
* an unplanned failover defines the domain on the replica's copies with
  the production UUID and MAC, autostart off, and starts it before
  on_promote runs; the guest carries on from the point;
* a planned failover shuts the guest down before the final cycle (the
  point is a clean file system holding every acknowledged file), leaves
  the old domain defined, shut off, autostart off; the new primary
  defines the domain and, with start_on_promote = no, leaves it off.
"""
import os
import re

from harness import Daemon, check, free_port, vm_status, wait_for
from test_libvirt import SIZE, VM, sync
from virt import Guest, LibvirtDaemon, check_ext4_point, make_disk


def xml_of(lv, name):
    return lv.virsh("dumpxml", name)


def info(lv, name):
    """virsh dominfo as {key: value}."""
    out = {}
    for line in lv.virsh("dominfo", name).splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def disk_sources(xml):
    return re.findall(r"<source file='([^']*)'", xml)


def macs(xml):
    return re.findall(r"<mac address='([^']*)'", xml)


def setup(env, rep_accept="", pri_listen=False, default_storage=False):
    """Host a: the guest web01 (a writer on an ext4 qcow2) under libvirtd
    lvp, protected by domain; host b: its replica, with libvirtd lvr
    (rep_accept: more keys of its [accept], "{lvr}" its URI; with
    default_storage, no storage key: STATE_DIR/replicas, in the private
    state directory).  b lets definitions name files in the test's
    directory (domain_paths): the guest's kernel, initrd and console file
    are there.  With pri_listen, a also listens and accepts b (planned
    failover)."""
    lvp = LibvirtDaemon(env, "lvp").start()
    lvr = LibvirtDaemon(env, "lvr").start()
    img = make_disk(env.path("img", "vda.qcow2"), SIZE, fmt="qcow2", fs="ext4")
    g = Guest(lvp, VM, [(img, "qcow2", "vda")]).define().start()
    pb = free_port()
    b_storage = env.path("b", "state", "replicas") if default_storage else env.path("b", "storage")
    rep = Daemon(env, "b", "replica", "listen = 127.0.0.1:%d\n" % pb,
                 "[accept primary]\nvms = *\n%slibvirt_uri = %s\ndomain_paths = %s\n%s"
                 % ("" if default_storage else "storage = %s\n" % b_storage, lvr.uri,
                    env.dir, rep_accept.replace("{lvr}", lvr.uri)))
    rep.port, rep.storage = pb, b_storage
    listen = acc = ""
    if pri_listen:
        pa = free_port()
        listen = "listen = 127.0.0.1:%d\n" % pa
        acc = "[accept replica]\nvms = *\nstorage = %s\n" % env.path("a", "storage")
    pri = Daemon(env, "a", "primary", listen,
                 "[vm %s]\ndomain = %s\nlibvirt_uri = %s\nreplica = 127.0.0.1:%d\n"
                 "replica_name = replica\ninterval = 0\nshutdown_timeout = 3m\n"
                 "domain_paths = %s\n\n%s"
                 % (VM, VM, lvp.uri, pb, env.dir, acc))
    rep.start()
    pri.start()
    return lvp, lvr, g, pri, rep


VICTIM = "/etc/replicad-test-victim"
# What a compromised primary might put in its definition: the replica
# host's / for the guest, and a file of its /etc for QEMU to write.
HOSTILE = ("<filesystem type='mount' accessmode='passthrough'><source dir='/'/>"
           "<target dir='hostroot'/></filesystem>"
           "<serial type='file'><source path='%s'/><target port='1'/></serial>" % VICTIM)


def make_hostile(lv, name):
    """Add HOSTILE to the persistent definition of the running domain
    name (the running guest is left as it is; tracker libvirt sends the
    persistent definition with the next point)."""
    x = lv.virsh("dumpxml", "--inactive", name)
    check("</devices>" in x, "no </devices> in %s's definition" % name)
    p = lv.env.path(name + "-hostile.xml")
    with open(p, "w") as f:
        f.write(x.replace("</devices>", HOSTILE + "</devices>", 1))
    lv.virsh("define", p)
    check("hostroot" in lv.virsh("dumpxml", "--inactive", name),
          "the hostile definition did not take")


def test_libvirt_test_failover(env):
    # The default storage: replicad lets QEMU through its state directory.
    lvp, lvr, g, pri, rep = setup(env, default_storage=True)
    check(not os.path.exists(VICTIM) and not os.path.exists(VICTIM + "-test"),
          "%s exists before the test" % VICTIM)
    g.wait_wrote(3)
    make_hostile(lvp, VM)
    point = sync(pri)
    prod = xml_of(lvp, VM)
    test = VM + "-test"
    copy = os.path.join(rep.storage, VM, "test", "vda")

    # Defined, not started, isolated from production.
    r = rep.ok("failover", VM, "--test")
    check("point %d" % point in r.out and copy in r.out, "failover --test printed %r" % r.out)
    check("domain %s defined (not started" % test in r.out, "failover --test printed %r" % r.out)
    # The primary's hostile parts stayed out, and the output says so.
    x = xml_of(lvr, test)
    check("<filesystem" not in x and "hostroot" not in x and VICTIM not in x,
          "%s has the primary's hostile parts:\n%s" % (test, x))
    check("left out of its definition on this host:" in r.out
          and "<filesystem type='mount'> / (a directory of this host)" in r.out
          and "<serial type='file'> %s-test (outside domain_paths; a pty instead)" % VICTIM in r.out,
          "failover --test does not say what it left out: %r" % r.out)
    check(lvr.virsh("domstate", test).strip() == "shut off", "%s is not shut off" % test)
    x = xml_of(lvr, test)
    check(disk_sources(x)[0] == copy and "type='raw'" in x,
          "%s's disk is not the raw test copy: %s" % (test, disk_sources(x)))
    check(macs(x) and not set(macs(x)) & set(macs(prod)),
          "%s has production's MAC: %s / %s" % (test, macs(x), macs(prod)))
    check("<link state='down'/>" in x, "%s's interface link is not down:\n%s" % (test, x))
    check(g.console + "-test" in x, "%s's console is not its own file:\n%s" % (test, x))
    i, ip = info(lvr, test), info(lvp, VM)
    check(i["Autostart"] == "disable", "%s autostarts" % test)
    check(i["UUID"] != ip["UUID"], "%s has production's UUID %s" % (test, ip["UUID"]))
    r = rep.ok("failover", VM, "--test", "--cleanup")
    check("domain %s removed" % test in r.out, "cleanup printed %r" % r.out)
    check(test not in lvr.domains(), "%s still defined after --cleanup" % test)
    check(not os.path.exists(copy), "test copy left after --cleanup")

    # --start boots it from the copy: the writer carries on from the point.
    r = rep.ok("failover", VM, "--test", "--start")
    check("domain %s defined and started" % test in r.out, "--test --start printed %r" % r.out)
    tg = Guest(lvr, test, [])
    tg.console = g.console + "-test"
    tg.wait_line("replicad-guest: mounted")
    tg.wait_line("replicad-guest: wrote")
    check(g.state() == "running", "production stopped during the test failover")
    check(not os.path.exists(VICTIM) and not os.path.exists(VICTIM + "-test"),
          "the test domain wrote %s" % VICTIM)
    r = rep.ok("failover", VM, "--test", "--cleanup")
    check(test not in lvr.domains() and not os.path.exists(copy),
          "--cleanup left the running test domain or its copy: %r" % r.out)
    # Replication went on.
    check(sync(pri) > point, "no new point after the test failover")


def test_libvirt_unplanned_failover(env):
    hooklog = env.path("hooks.log")
    hook = env.path("promote.sh")
    # A script: the command itself would pass the configuration's line
    # length with a long TMPDIR.
    lvp, lvr, g, pri, rep = setup(env, rep_accept="on_promote = sh %s\n" % hook)
    with open(hook, "w") as f:
        f.write("virsh -c '%s' domstate %s >> %s\n" % (lvr.uri, VM, hooklog))
    acked = g.wait_wrote(3)
    point = sync(pri)
    prod = info(lvp, VM)
    prod_macs = macs(xml_of(lvp, VM))
    # The primary host is lost.
    pri.kill9()
    g.destroy()

    r = rep.ok("failover", VM)
    check("domain %s defined and started" % VM in r.out, "failover printed %r" % r.out)
    i = info(lvr, VM)
    check(i["State"] == "running", "%s is %s after the failover" % (VM, i["State"]))
    check(i["UUID"] == prod["UUID"], "the UUID changed: %s, was %s" % (i["UUID"], prod["UUID"]))
    check(i["Autostart"] == "disable", "%s autostarts on the new primary" % VM)
    x = xml_of(lvr, VM)
    check(macs(x) == prod_macs, "the MACs changed: %s, were %s" % (macs(x), prod_macs))
    check(disk_sources(x)[0] == os.path.join(rep.storage, VM, "vda"),
          "the disk is not the replica's: %s" % disk_sources(x))
    # Built-in first: the domain ran when on_promote did.
    with open(hooklog) as f:
        check(f.read().split() == ["running"], "on_promote did not see the domain running")
    # The guest carries on from the point, on the replica's copy.
    ng = Guest(lvr, VM, [])
    ng.console = g.console
    wait_for(lambda: ng.wrote() > acked, 240, 0.5, what="the failed-over guest to write")
    r = rep.ok("failover", VM, "--commit")
    check("committed at point %d" % point in r.out, "commit printed %r" % r.out)


def test_libvirt_planned_failover(env):
    lvp, lvr, g, pri, rep = setup(env, rep_accept="start_on_promote = no\n", pri_listen=True)
    g.wait_wrote(3)
    sync(pri)
    r = pri.ok("failover", VM, "--planned", timeout=600)
    check("handed over" in r.out and "domain %s shut down" % VM in r.out,
          "planned failover printed %r" % r.out)
    # The old primary's domain: defined, shut off, autostart off.
    check(g.state() == "shut off", "the old primary's guest is %s" % g.state())
    check(info(lvp, VM)["Autostart"] == "disable", "the old primary's domain autostarts")
    # The new primary's: defined on its copy, left off (start_on_promote = no).
    wait_for(lambda: VM in lvr.domains(), 60, 0.2, what="the domain defined on the new primary")
    check(lvr.virsh("domstate", VM).strip() == "shut off",
          "start_on_promote = no, yet %s runs" % VM)
    disk = os.path.join(rep.storage, VM, "vda")
    check(disk_sources(xml_of(lvr, VM))[0] == disk, "the new domain's disk is not %s" % disk)
    # The final cycle was cut from a guest at rest: a clean file system
    # holding every file the guest acknowledged before it shut down.
    ns = check_ext4_point(disk, env.path("check"))
    check(len(ns) >= g.wrote(), "the final point holds %d files, the guest acknowledged %d"
          % (len(ns), g.wrote()))
    # It boots on the new primary.
    lvr.virsh("start", VM)
    ng = Guest(lvr, VM, [])
    ng.console = g.console
    n = len(ns)
    wait_for(lambda: ng.wrote() > n, 240, 0.5, what="the guest to write on the new primary")
    # b replicates it back to a with tracker libvirt (consistent cuts;
    # the definition travels back), although b has no [vm] section.
    rep.ok("sync", VM, "--wait")
    st = vm_status(rep, VM)
    check(st.get("tracker") == "libvirt", "b replicates %s with tracker %r, not libvirt"
          % (VM, st.get("tracker")))
    # And back again, the guest running: no acknowledged file is lost.
    ng.wait_wrote(n + 5)
    r = rep.ok("failover", VM, "--planned", timeout=600)
    # Its power-off is the last line of b's boot: what follows is a's.
    ng.wait_line("power off")
    mark = len(ng.console_text())
    check("handed over" in r.out and "domain %s shut down" % VM in r.out,
          "planned failover back printed %r" % r.out)
    check(ng.state() == "shut off", "b's guest is %s after handing over" % ng.state())
    acked = ng.wrote()
    # a defines it on the copy it received, starts it (start_on_promote's
    # default), and the guest checks every file it finds there.
    wait_for(lambda: lvp.virsh("domstate", VM).strip() == "running", 120, 0.2,
             what="the domain to run on a again")

    def checked():
        return re.search(r"checked (\d+) files, (\d+) bad", ng.console_text()[mark:])
    m = wait_for(checked, 240, 0.5, what="the guest on a to check its files")
    line = m.group(0)
    check(m and int(m.group(1)) >= acked and m.group(2) == "0",
          "back on a, the guest found %r; it had acknowledged %d files on b" % (line, acked))
