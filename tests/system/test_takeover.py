"""Who may write into a VM (DESIGN section 10): a relationship belongs to
the identity that made it, or to the one a failover or an operator's
`replctl reassign` recorded.  Another host with a valid certificate and an
[accept] entry may not write into it, fence it or re-label it; no message
may make a generation leap, on either side; a refused HELLO for a new VM
leaves no relationship behind.  Each refusal is a warning naming both
identities.
"""
import json
import os
import shutil
import sqlite3

import wireproto as wp
from harness import LogMark, assert_same, check, free_port, replica_state, wait_state_unchanged
from test_failover import VM, point_of, status
from workload import random_write


class Site:
    """A replica that accepts two hosts, "primary" (host a) and "other"
    (host b), both with `vms = *` and the same storage; host a replicates
    web01 there.  Host b is configured as the primary of a web01 of its
    own (other content) but not started."""

    def __init__(self, env, sync=True):
        self.env = env
        self.a_disk = env.make_disk(env.path("a-src", "sda.img"), 4 << 20, "random")
        self.b_disk = env.make_disk(env.path("b-src", "sda.img"), 4 << 20, "random")
        self.rep = env.replica(extra="\n[accept other]\nvms = *\nstorage = %s\n"
                               % env.path("replica", "storage")).start()
        self.a = env.primary({VM: [self.a_disk]}, self.rep.port, name="a")
        self.a.start()
        self.b = env.primary({VM: [self.b_disk]}, self.rep.port, name="b", cert="other")
        if sync:
            random_write(env.rng, self.a_disk)
            point_of(self.a.ok("sync", VM, "--wait"))

    def image(self):
        return os.path.join(self.rep.storage, VM, "sda.img")

    def ctx(self, cert):
        pki = self.env.pki
        return wp.tls_context(os.path.join(pki, cert + ".pem"), os.path.join(pki, cert + ".key"),
                              os.path.join(pki, "ca.pem"))

    def hello_refused(self, cert, generation, port=None, nack=wp.NACK_DENIED, vm=VM, disks=None):
        """A hand-made HELLO for vm signed by cert: refused with nack."""
        c = wp.tls_connect(port or self.rep.port, self.ctx(cert))
        try:
            c.send(wp.hello(vm, disks or [("sda.img", 4 << 20)], generation=generation))
            fr = c.recv_frame(15)
            check(fr is not None and fr[0] == wp.NACK, "HELLO from %s at generation %d got %s"
                  % (cert, generation, wp.describe(fr)))
            code, reason = wp.decode_nack(fr[1])
            check(code == nack, "HELLO from %s at generation %d: NACK %s (%s), expected %s"
                  % (cert, generation, wp.NACK_NAMES.get(code), reason, wp.NACK_NAMES[nack]))
            return reason
        finally:
            c.close()

    def legit_sync(self, what):
        random_write(self.env.rng, self.a_disk)
        point_of(self.a.ok("sync", VM, "--wait"))
        assert_same(self.a_disk, self.image(), what)


def test_another_accepted_host_cannot_write(env):
    """Host b, accepted for `vms = *`, runs `sync web01 --wait` for its own
    web01: refused (denied), nothing of the replica changes, a warning
    names both hosts; host a goes on replicating, still the peer."""
    s = Site(env)
    before = replica_state(s.rep, VM)
    mark = LogMark(s.rep)
    s.b.start()
    r = s.b.ctl("sync", VM, "--wait")
    check(r.rc == 1 and "denied" in r.err, "host b's sync into host a's web01: %r" % r)
    check("primary" in r.err and "other" in r.err, "the refusal does not name both hosts: %r" % r)
    line = mark.wait("other", "primary", "warning", what="a warning naming both identities")
    check(VM in line, "the warning does not name the VM: %r" % line)
    wait_state_unchanged(s.rep, VM, before, "host b's sync")
    st = status(s.rep)
    check(st["peer"] == "primary" and st["generation"] == 1, "the replica's view changed: %r" % st)
    sb = status(s.b)
    check(sb["state"] == "error" and sb["health"] in ("warning", "critical"), "host b: %r" % sb)
    s.legit_sync("host a after host b's attempt")
    check(status(s.a)["state"] == "idle", "host a: %r" % status(s.a))
    check(status(s.rep)["peer"] == "primary", "peer re-labelled: %r" % status(s.rep))
    s.b.stop()
    s.a.stop()
    s.rep.stop()


def test_no_generation_leap_into_a_replica(env):
    """Hand-made HELLOs: from "other" at generations 1, 2 and 2^62 (it would
    fence host a for good), and from host a itself at 3 and 2^40 (no
    failover made them): all refused; nothing changes, host a is not
    fenced and replicates on at generation 1."""
    s = Site(env)
    before = replica_state(s.rep, VM)
    for gen in (1, 2, 1 << 62):
        mark = LogMark(s.rep)
        reason = s.hello_refused("other", gen)
        check("primary" in reason and "other" in reason, "NACK does not name both hosts: %r" % reason)
        mark.wait("other", "primary", what="the warning for generation %d" % gen)
    for gen in (3, 1 << 40):
        reason = s.hello_refused("primary", gen, nack=wp.NACK_PROTOCOL)
        check(str(gen) in reason, "leap refusal does not say the generation: %r" % reason)
    wait_state_unchanged(s.rep, VM, before, "hostile HELLOs")
    s.legit_sync("after the hostile HELLOs")
    sa, sr = status(s.a), status(s.rep)
    check(sa["generation"] == 1 and sa["state"] == "idle", "host a: %r" % sa)
    check(sr["generation"] == 1 and sr["peer"] == "primary", "replica: %r" % sr)
    s.a.stop()
    s.rep.stop()


def test_no_generation_leap_into_a_primary(env):
    """Host a listens and accepts its replica ("replica") and "other".  A
    HELLO for web01 from its replica at generation 3 (one failover would
    make 2) and from "other" at 2 are refused: a stays primary at 1 and
    keeps replicating; no demotion hook ran."""
    s = Site(env, sync=False)
    s.a.stop()
    port = __import__("harness").free_port()
    text = open(s.a.conf).read().replace("[daemon]\n", "[daemon]\nlisten = 127.0.0.1:%d\n" % port, 1)
    text += ("\n[accept replica]\nvms = *\nstorage = %s\non_demote = touch %s\n"
             "\n[accept other]\nvms = *\nstorage = %s\n"
             % (env.path("a", "st"), env.path("demoted"), env.path("a", "st2")))
    open(s.a.conf, "w").write(text)
    s.a.start()
    point_of(s.a.ok("sync", VM, "--wait"))
    for cert, gen, nack in (("replica", 3, wp.NACK_PROTOCOL), ("replica", 1 << 62, wp.NACK_PROTOCOL),
                            ("other", 2, wp.NACK_DENIED)):
        mark = LogMark(s.a)
        c = wp.tls_connect(port, s.ctx(cert), server_hostname="primary")
        try:
            c.send(wp.hello(VM, [("sda.img", 4 << 20)], generation=gen))
            fr = c.recv_frame(15)
            check(fr is not None and fr[0] == wp.NACK, "HELLO from %s at %d got %s"
                  % (cert, gen, wp.describe(fr)))
            code, reason = wp.decode_nack(fr[1])
            if nack is not None:
                check(code == nack, "HELLO from %s at %d: %s %r" % (cert, gen, wp.NACK_NAMES.get(code), reason))
        finally:
            c.close()
        mark.wait(cert, "warning", what="host a's warning for %s at %d" % (cert, gen))
    check(not os.path.exists(env.path("demoted")), "on_demote ran")
    sa = status(s.a)
    check(sa["role"] == "primary" and sa["generation"] == 1, "host a: %r" % sa)
    s.legit_sync("host a after the leaps")
    s.a.stop()
    s.rep.stop()


def catalog_vms(daemon):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(daemon.state, "catalog.db"), uri=True)
    try:
        return sorted(r[0] for r in db.execute("SELECT vm FROM relationships"))
    finally:
        db.close()


def test_refused_new_vm_leaves_no_relationship(env):
    """A HELLO for a new VM whose replica cannot be made (a file stands
    where its directory would go) is refused; the catalog holds no
    relationship for it, and once the file is gone the VM replicates."""
    s = Site(env, sync=False)
    os.makedirs(s.rep.storage, exist_ok=True)
    blocker = os.path.join(s.rep.storage, "db01")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    disk = env.make_disk(env.path("a-src", "db.img"), 1 << 20, "random")
    s.a.stop()
    text = open(s.a.conf).read() + "\n[vm db01]\ndisk = %s\nreplica = 127.0.0.1:%d\n" \
        "replica_name = replica\ninterval = 0\n" % (disk, s.rep.port)
    open(s.a.conf, "w").write(text)
    s.a.start()
    for _ in range(3):
        r = s.a.ctl("sync", "db01", "--wait")
        check(r.rc == 1, "sync of db01 with its directory blocked: %r" % r)
    check("db01" not in catalog_vms(s.rep), "half-made relationship: %r" % catalog_vms(s.rep))
    check(status(s.rep, "db01") is None, "the replica lists db01: %r" % status(s.rep, "db01"))
    os.unlink(blocker)
    point_of(s.a.ok("sync", "db01", "--wait"))
    assert_same(disk, os.path.join(s.rep.storage, "db01", "db.img"), "db01 once unblocked")
    check(status(s.rep, "db01")["peer"] == "primary", "db01's owner: %r" % status(s.rep, "db01"))
    s.a.stop()
    s.rep.stop()


def test_reassign_to_another_sending_host(env):
    """web01 moves from host a to host b (a copy of its disk, then writes
    on b).  b is refused until the replica's operator runs `replctl
    reassign web01 --host other`; then b's first cycle sends only what
    differs, the history stays, b takes the relationship's new
    generation, and host a is refused from then on."""
    s = Site(env)
    for _ in range(2):
        s.legit_sync("history on host a")
    pts = json.loads(s.rep.ok("points", VM, "--json").out)
    shutil.copyfile(s.a_disk, s.b_disk)          # the VM moved to host b
    for _ in range(3):
        random_write(env.rng, s.b_disk, max_len=64 << 10)
    s.b.start()
    r = s.b.ctl("sync", VM, "--wait")
    check(r.rc == 1 and "denied" in r.err, "host b before the reassignment: %r" % r)
    # refusals of the command itself
    for args, code, said in ((("reassign", VM), 2, "--host"),
                             (("reassign", VM, "--host", "nobody"), 1, "[accept nobody]"),
                             (("reassign", "nosuchvm", "--host", "other"), 1, "nosuchvm"),
                             (("reassign", VM, "--host", "bad/name"), 2, "bad")):
        r = s.rep.ctl(*args)
        check(r.rc == code and said in r.err, "replctl %s: %r" % (" ".join(args), r))
    r = s.a.ctl("reassign", VM, "--host", "other")
    check(r.rc == 1 and "primary" in r.err, "reassign on the primary: %r" % r)
    check(status(s.rep)["generation"] == 1, "a refused reassign changed the generation")
    r = s.rep.ok("reassign", VM, "--host", "other")
    check("other" in r.out and "generation 2" in r.out, "reassign said %r" % r.out)
    sr = status(s.rep)
    check(sr["peer"] == "other" and sr["generation"] == 2, "replica after reassign: %r" % sr)
    pt = point_of(s.b.ok("sync", VM, "--wait"))
    assert_same(s.b_disk, s.image(), "after host b's first cycle")
    lc = status(s.b)["last_cycle"]
    check(lc["bytes_sent"] < (4 << 20) // 2, "host b's first cycle sent %d bytes" % lc["bytes_sent"])
    check(status(s.b)["generation"] == 2, "host b did not take generation 2: %r" % status(s.b))
    after = json.loads(s.rep.ok("points", VM, "--json").out)
    check([p["id"] for p in after[:len(pts)]] == [p["id"] for p in pts] and after[-1]["id"] == pt,
          "history after the reassignment: %r (was %r)" % (after, pts))
    s.rep.ok("verify", VM)
    # host a is refused now, and host b goes on, also after restarts
    r = s.a.ctl("sync", VM, "--wait")
    check(r.rc == 1 and "denied" in r.err, "host a after the reassignment: %r" % r)
    s.rep.stop()
    s.b.stop()
    s.rep.start()
    s.b.start()
    random_write(env.rng, s.b_disk)
    point_of(s.b.ok("sync", VM, "--wait"))
    assert_same(s.b_disk, s.image(), "host b after restarts")
    check(status(s.b)["generation"] == 2 and status(s.rep)["generation"] == 2, "generations after restarts")
    s.a.stop()
    s.b.stop()
    s.rep.stop()


def test_reassigned_first_cycle_compares(env):
    """The new host's tracker already counts cycles (it replicated its
    web01 elsewhere), as many as the replica holds: after the reassign its
    first cycle still compares the disks (the copy is another host's), and
    the replica ends up equal to the new host's disk."""
    s = Site(env)
    r2 = env.replica(name="replica2", accept="other").start()
    b = env.primary({VM: [s.b_disk]}, r2.port, name="b2", cert="other").start()
    point_of(b.ok("sync", VM, "--wait"))         # b's tracker: cycle 1, like a's
    b.stop()
    text = open(b.conf).read().replace("127.0.0.1:%d" % r2.port, "127.0.0.1:%d" % s.rep.port)
    open(b.conf, "w").write(text)
    b.start()
    s.rep.ok("reassign", VM, "--host", "other")
    mark = LogMark(b)
    point_of(b.ok("sync", VM, "--wait"))
    mark.wait("resynchronising with the replica")
    assert_same(s.b_disk, s.image(), "the replica after the reassigned host's first cycle")
    s.rep.ok("verify", VM)
    random_write(env.rng, s.b_disk, max_len=64 << 10)
    point_of(b.ok("sync", VM, "--wait"))
    assert_same(s.b_disk, s.image(), "the cycle after")
    for d in (b, s.a, r2, s.rep):
        d.stop()


def test_common_name_does_not_count_beside_dns_names(env):
    """A certificate whose DNS name is "evilhost" and whose common name is
    "primary" (a CA that copies the requested CN as it is) is evilhost:
    refused, not taken for the host that owns web01."""
    import subprocess
    s = Site(env)
    d = env.path("evil")
    os.makedirs(d)
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(d, "evil.key"), "-out", os.path.join(d, "evil.csr"),
                    "-subj", "/CN=primary"], check=True, capture_output=True)
    with open(os.path.join(d, "evil.ext"), "w") as f:
        f.write("subjectAltName=DNS:evilhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", os.path.join(d, "evil.csr"),
                    "-CA", os.path.join(env.pki, "ca.pem"), "-CAkey", os.path.join(env.pki, "ca.key"),
                    "-CAcreateserial", "-CAserial", os.path.join(d, "ca.srl"),
                    "-out", os.path.join(d, "evil.pem"), "-days", "30",
                    "-extfile", os.path.join(d, "evil.ext")], check=True, capture_output=True)
    before = replica_state(s.rep, VM)
    ctx = wp.tls_context(os.path.join(d, "evil.pem"), os.path.join(d, "evil.key"),
                         os.path.join(env.pki, "ca.pem"))
    c = wp.tls_connect(s.rep.port, ctx)
    try:
        c.send(wp.hello(VM, [("sda.img", 4 << 20)], generation=1))
        fr = c.recv_frame(15)
        check(fr is not None and fr[0] == wp.NACK, "HELLO from CN=primary, DNS=evilhost got %s"
              % wp.describe(fr))
        code, reason = wp.decode_nack(fr[1])
        check(code == wp.NACK_DENIED and "host evilhost may not" in reason, "NACK %r" % ((code, reason),))
    finally:
        c.close()
    wait_state_unchanged(s.rep, VM, before, "the CN=primary certificate")
    s.legit_sync("after the CN=primary certificate")
    s.a.stop()
    s.rep.stop()


def b_listening(env, s, b):
    """Host b (cert "other") also listens and accepts its replica, so that
    it can hand over or be taken over."""
    port = free_port()
    b.stop() if b.alive() else None
    text = open(b.conf).read().replace("[daemon]\n", "[daemon]\nlisten = 127.0.0.1:%d\n" % port, 1)
    text += "\n[accept replica]\nvms = *\nstorage = %s\n" % env.path("b", "st")
    open(b.conf, "w").write(text)
    b.start()
    return port


def test_planned_failover_right_after_reassign(env):
    """The host a replica was just reassigned to hands the VM over to that
    replica at once: its final cycle is the one that takes the replica's
    generation (and compares the disks); the handover is recorded at the
    generation above it, on both hosts."""
    s = Site(env)
    r2 = env.replica(name="replica2", accept="other").start()
    b = env.primary({VM: [s.b_disk]}, r2.port, name="b2", cert="other")
    b_listening(env, s, b)
    point_of(b.ok("sync", VM, "--wait"))         # b has a history of its own
    b.stop()
    text = open(b.conf).read().replace("127.0.0.1:%d" % r2.port, "127.0.0.1:%d" % s.rep.port)
    open(b.conf, "w").write(text)
    b.start()
    s.rep.ok("reassign", VM, "--host", "other")
    r = b.ok("failover", VM, "--planned")
    check("handed over" in r.out and "generation 3" in r.out, "planned failover: %r" % r.out)
    sb, sr = status(b), status(s.rep)
    check(sb["role"] == "replica" and sb["generation"] == 3, "host b: %r" % sb)
    check(sr["role"] == "primary" and sr["generation"] == 3, "the former replica: %r" % sr)
    assert_same(s.b_disk, s.image(), "the former replica's disk after the handover")
    for d in (b, s.a, r2, s.rep):
        d.stop()


def test_reverse_to_a_primary_that_never_replicated(env):
    """The replica is reassigned to host b, which has not sent a cycle yet,
    then fails over itself (generation 3) and reverses to b: b, a primary
    that no cycle ever left, becomes its replica although 3 is more than
    one above its generation 1 (it has no history a leap could cut)."""
    s = Site(env)
    b = env.primary({VM: [s.b_disk]}, s.rep.port, name="b2", cert="other")
    pb = b_listening(env, s, b)
    s.rep.ok("reassign", VM, "--host", "other")
    s.a.stop()
    s.rep.ok("failover", VM)
    s.rep.ok("failover", VM, "--commit")
    check(status(s.rep)["generation"] == 3, "the replica after its failover: %r" % status(s.rep))
    s.rep.ok("reverse", VM, "--to", "127.0.0.1:%d" % pb, "--name", "other", "--wait")
    sb = status(b)
    check(sb["role"] == "replica" and sb["generation"] == 3 and sb["peer"] == "replica", "host b: %r" % sb)
    assert_same(s.image(), s.b_disk, "host b after the reverse")
    for d in (b, s.rep):
        d.stop()
