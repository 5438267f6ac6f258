"""Role changes of a VM tracked through QEMU (tracker = qemu), whose disks
are block nodes, not files: planned failover receives into the files
`receive_into` names, reverse after an unplanned failover receives into
them or into the [accept] entry's storage, and a primary whose [vm]
section was removed runs no cycle and can still be taken over.
"""
import os

from harness import Daemon, LogMark, assert_same, check, free_port
from test_failover import VM, point_of, status
from test_qemu import MB, Qemu, make_image, random_writes, skip_without_qemu
from workload import random_write

SIZE = 8 * MB


class Pair:
    """Host a: the primary of web01 with tracker qemu (two raw disks,
    nodes drive0 and drive1), listening and accepting host b; host b: its
    replica.  receive: a's receive_into lines (None: none)."""

    def __init__(self, env, receive=True):
        self.env = env
        self.pa, self.pb = free_port(), free_port()
        specs = [(make_image(env, "d%d.img" % i, SIZE), "raw", "drive%d" % i, None)
                 for i in range(2)]
        self.q = Qemu(env, specs).start()
        self.a_storage = env.path("a", "storage")
        self.b_storage = env.path("b", "storage")
        self.recv = [env.path("a", "recv", "drive%d.raw" % i) for i in range(2)] if receive else None
        self.vm_section = ("[vm %s]\ntracker = qemu\nqmp = %s\ndisk = drive0\ndisk = drive1\n"
                           "replica = 127.0.0.1:%d\nreplica_name = replica\ninterval = 0\n"
                           % (VM, self.q.sock, self.pb))
        if receive:
            self.vm_section += "".join("receive_into = %s\n" % p for p in self.recv)
        self.accept_a = "[accept replica]\nvms = *\nstorage = %s\n" % self.a_storage
        self.a = Daemon(env, "a", "primary", "listen = 127.0.0.1:%d\n" % self.pa,
                        self.vm_section + "\n" + self.accept_a)
        self.b = Daemon(env, "b", "replica", "listen = 127.0.0.1:%d\n" % self.pb,
                        "[accept primary]\nvms = *\nstorage = %s\n" % self.b_storage)
        self.b.start()
        self.a.start()

    def b_disk(self, i):
        return os.path.join(self.b_storage, VM, "drive%d" % i)

    def a_files(self):
        """Where host a holds web01 once it is the replica."""
        if self.recv:
            return self.recv
        return [os.path.join(self.a_storage, VM, "drive%d" % i) for i in range(2)]

    def guest_equals_b(self, what):
        for i in range(2):
            assert_same(self.q.guest_image(i, self.env.path("g%d.raw" % i)), self.b_disk(i), what)

    def a_equals_b(self, what):
        for i, f in enumerate(self.a_files()):
            assert_same(f, self.b_disk(i), what)

    def write_guest(self, n=3):
        for i in range(2):
            random_writes(self.env, self.q, "drive%d" % i, SIZE, n, max_len=256 << 10)

    def stop(self):
        self.a.stop()
        self.b.stop()
        self.q.proc.kill()


def test_qemu_planned_into_receive_into(env):
    """A planned failover of a qemu-tracked VM: the final cycle reads
    through QEMU, host b takes over at generation 2, host a becomes its
    replica receiving into the receive_into files; the first cycle back
    fills them (they are not the files QEMU read), later ones send only
    what changed."""
    skip_without_qemu()
    p = Pair(env)
    try:
        p.write_guest()
        point_of(p.a.ok("sync", VM, "--wait"))
        p.guest_equals_b("first cycle")
        p.write_guest(2)               # written before the handover, never synced
        # Refused before anything stops while the files cannot be made.
        r = p.a.ctl("failover", VM, "--planned")
        check(r.rc == 1 and "cannot be received into %s" % p.recv[0] in r.err
              and "No such file or directory" in r.err, "planned failover without its directory: %r" % r)
        check(status(p.a)["role"] == "primary" and status(p.a)["generation"] == 1, "host a changed")
        check(status(p.b)["role"] == "replica" and status(p.b)["generation"] == 1, "host b changed")
        os.makedirs(os.path.dirname(p.recv[0]))
        mark = LogMark(p.a)
        r = p.a.ok("failover", VM, "--planned")
        check("handed over" in r.out, "planned failover said %r" % r.out)
        p.guest_equals_b("after the handover (the final cycle)")
        mark.wait("not those of the final cycle")
        sa, sb = status(p.a), status(p.b)
        check(sa["role"] == "replica" and sa["generation"] == 2, "host a: %r" % sa)
        check(sb["role"] == "primary" and sb["generation"] == 2, "host b: %r" % sb)
        # The first cycle back compares the disks: the receive_into files
        # were empty, so everything travels once.
        point_of(p.b.ok("sync", VM, "--wait"))
        p.a_equals_b("the first cycle back")
        for _ in range(3):
            random_write(env.rng, p.b_disk(env.rng.randrange(2)), max_len=128 << 10)
        point_of(p.b.ok("sync", VM, "--wait"))
        p.a_equals_b("a cycle back")
        check(status(p.b)["last_cycle"]["bytes_sent"] < SIZE // 2,
              "an incremental cycle sent %d bytes" % status(p.b)["last_cycle"]["bytes_sent"])
        p.a.ok("verify", VM)
        # the roles survive a restart; host a still receives into the files
        p.a.stop()
        p.a.start()
        check(status(p.a)["role"] == "replica", "host a after a restart: %r" % status(p.a))
        random_write(env.rng, p.b_disk(0), max_len=128 << 10)
        point_of(p.b.ok("sync", VM, "--wait"))
        p.a_equals_b("after host a's restart")
    finally:
        p.stop()


def unplanned_then_reverse(env, p):
    """Host a dies; host b fails over and commits, then writes; host a
    comes back (a stale primary); host b reverses to it."""
    p.write_guest()
    point_of(p.a.ok("sync", VM, "--wait"))
    p.a.kill9()
    p.b.ok("failover", VM)
    p.b.ok("failover", VM, "--commit")
    for _ in range(3):
        random_write(env.rng, p.b_disk(env.rng.randrange(2)), max_len=128 << 10)


def test_qemu_reverse_into_accept_storage(env):
    """Reverse to a host whose [vm] section tracks the VM through QEMU and
    names no receive_into: it becomes the replica in its [accept] entry's
    storage, STORAGE/VM/DISK, as the log says."""
    skip_without_qemu()
    p = Pair(env, receive=False)
    try:
        unplanned_then_reverse(env, p)
        p.a.start()
        r = p.a.ctl("sync", VM, "--wait")
        check(r.rc == 1 and "fenced" in (r.err + p.a.log_text()), "the stale primary's cycle: %r" % r)
        mark = LogMark(p.a)
        p.b.ok("reverse", VM, "--to", "127.0.0.1:%d" % p.pa, "--name", "primary", "--wait")
        mark.wait("this host is now the replica of replica at generation 2")
        p.a_equals_b("after reverse")
        sa = status(p.a)
        check(sa["role"] == "replica" and sa["generation"] == 2 and sa["peer"] == "replica",
              "host a after reverse: %r" % sa)
        random_write(env.rng, p.b_disk(1), max_len=128 << 10)
        point_of(p.b.ok("sync", VM, "--wait"))
        p.a_equals_b("a cycle after reverse")
        p.a.ok("verify", VM)
    finally:
        p.stop()


def test_qemu_vm_section_removed_then_reverse(env):
    """The operator removes the [vm] section of the old primary: it runs
    no cycle (nothing names its disks), says why in status, and the new
    primary's reverse still makes it the replica in the [accept] entry's
    storage."""
    skip_without_qemu()
    p = Pair(env, receive=False)
    try:
        unplanned_then_reverse(env, p)
        with open(p.a.conf, "w") as f:
            f.write(p.a.text.replace(p.vm_section, ""))
        p.a.start()
        sa = status(p.a)
        check(sa["role"] == "primary" and sa["state"] == "error" and "[vm web01]" in sa["error"],
              "host a without its [vm] section: %r" % sa)
        r = p.a.ctl("sync", VM, "--wait")
        check(r.rc == 1, "sync without disks: %r" % r)
        p.b.ok("reverse", VM, "--to", "127.0.0.1:%d" % p.pa, "--name", "primary", "--wait")
        p.a_equals_b("after reverse")
        check(status(p.a)["role"] == "replica", "host a: %r" % status(p.a))
        check("No such file" not in p.a.log_text(), "host a ran cycles on missing disks")
        point_of(p.b.ok("sync", VM, "--wait"))
        p.a_equals_b("a cycle after reverse")
    finally:
        p.stop()
