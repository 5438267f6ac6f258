"""Failover: planned (no data loss, roles reverse, no resync), unplanned
(to any point, changeable until commit), fencing of a stale primary (F1),
reverse with resynchronisation, and the bad inputs of each."""
import json
import os

from harness import Daemon, assert_same, check, file_digest, free_port, wait_for
from workload import random_write, snapshot

VM = "web01"


def point_of(result):
    words = result.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % result.out)
    return int(words[1])


def status(daemon, vm=VM):
    st = json.loads(daemon.ok("status", "--json").out)
    for v in st["vms"]:
        if v["name"] == vm:
            return v
    return None


class Hosts:
    """Host a (primary of web01 at first) and host b (its replica); each
    listens and accepts the other, each has failover hooks that log."""

    def __init__(self, env, sizes=(24 << 20, (8 << 20) + 4096), hooks=True, a_listen=True,
                 a_accept=True, disk_dir=None, vm_extra=""):
        self.env = env
        disk_dir = disk_dir or env.path("src")
        self.pa, self.pb = free_port(), free_port()
        self.hooklog = env.path("hooks.log")
        self.disks = [env.make_disk(os.path.join(disk_dir, "sda.img"), sizes[0]),
                      env.make_disk(os.path.join(disk_dir, "sdb.img"), sizes[1], "sparse")]
        self.a_storage = env.path("a", "storage")
        self.b_storage = env.path("b", "storage")
        hook = ""
        if hooks:
            hook = ("on_promote = echo $(basename $(dirname $(dirname $REPLICAD_DISKS_X))) promote "
                    "$REPLICAD_VM $REPLICAD_ROLE $REPLICAD_GENERATION $REPLICAD_POINT >> %s\n"
                    "on_demote = echo demote $REPLICAD_VM $REPLICAD_ROLE $REPLICAD_GENERATION >> %s\n"
                    % (self.hooklog, self.hooklog))
        hook_a = hook.replace("$(basename $(dirname $(dirname $REPLICAD_DISKS_X)))", "a")
        hook_b = hook.replace("$(basename $(dirname $(dirname $REPLICAD_DISKS_X)))", "b")
        vm = "[vm %s]\n" % VM
        for d in self.disks:
            vm += "disk = %s\n" % d
        vm += "replica = 127.0.0.1:%d\nreplica_name = replica\ninterval = 0\n%s%s\n" % (
            self.pb, hook_a, vm_extra)
        acc_a = ("[accept replica]\nvms = *\nstorage = %s\n\n" % self.a_storage) \
            if a_accept and a_listen else ""
        self.a = Daemon(env, "a", "primary", ("listen = 127.0.0.1:%d\n" % self.pa) if a_listen else "",
                        vm + acc_a)
        self.b = Daemon(env, "b", "replica", "listen = 127.0.0.1:%d\n" % self.pb,
                        "[accept primary]\nvms = *\nstorage = %s\n%s" % (self.b_storage, hook_b))
        self.b.start()
        self.a.start()

    def b_disks(self):
        return [os.path.join(self.b_storage, VM, os.path.basename(d)) for d in self.disks]

    def hooks(self):
        try:
            with open(self.hooklog) as f:
                return [line.split() for line in f.read().splitlines()]
        except FileNotFoundError:
            return []

    def same(self, what):
        for x, y in zip(self.disks, self.b_disks()):
            assert_same(x, y, what)


def test_planned_failover_and_back(env):
    h = Hosts(env)
    for _ in range(3):
        for _ in range(3):
            random_write(env.rng, env.rng.choice(h.disks))
        point_of(h.a.ok("sync", VM, "--wait"))
    random_write(env.rng, h.disks[0])    # written before the handover, never synced
    r = h.a.ok("failover", VM, "--planned")
    check("handed over" in r.out, "planned failover said %r" % r.out)
    # The last write travelled in the final cycle: no data loss.
    h.same("after the handover")
    sa, sb = status(h.a), status(h.b)
    check(sa["role"] == "replica" and sa["generation"] == 2, "host a after handover: %r" % sa)
    check(sb["role"] == "primary" and sb["generation"] == 2, "host b after handover: %r" % sb)
    hooks = h.hooks()
    check(["demote", VM, "replica", "2"] in hooks, "on_demote did not run on a: %r" % hooks)
    wait_for(lambda: any(x[:4] == ["b", "promote", VM, "primary"] for x in h.hooks()), 10,
             what="on_promote on b")
    # Writes on the new primary come back to the old one's own disk files.
    for _ in range(4):
        random_write(env.rng, env.rng.choice(h.b_disks()))
    point_of(h.b.ok("sync", VM, "--wait"))
    h.same("after replicating back")
    lc = status(h.b)["last_cycle"]
    total = sum(os.path.getsize(d) for d in h.disks)
    check("resynchronising" not in h.b.log_text(), "the first cycle back was a resync")
    check(lc["bytes_sent"] < total // 2, "first cycle back sent %d of %d bytes" % (lc["bytes_sent"], total))
    h.a.ok("verify", VM)
    # And back again the same way.
    random_write(env.rng, h.b_disks()[1])
    h.b.ok("failover", VM, "--planned")
    h.same("after failing back")
    sa, sb = status(h.a), status(h.b)
    check(sa["role"] == "primary" and sa["generation"] == 3, "host a after failback: %r" % sa)
    check(sb["role"] == "replica" and sb["generation"] == 3, "host b after failback: %r" % sb)
    random_write(env.rng, h.disks[0])
    point_of(h.a.ok("sync", VM, "--wait"))
    h.same("after failback and a cycle")
    check("resynchronising" not in h.a.log_text(), "a resync happened after failback")
    h.b.ok("verify", VM)
    # Roles survive a restart.
    h.a.stop()
    h.b.stop()
    h.b.start()
    h.a.start()
    check(status(h.a)["role"] == "primary" and status(h.b)["role"] == "replica", "roles after restart")
    random_write(env.rng, h.disks[1])
    point_of(h.a.ok("sync", VM, "--wait"))
    h.same("after restart")
    h.a.stop()
    h.b.stop()


def test_planned_failover_refusals(env):
    """Missing pieces are found before anything stops."""
    h = Hosts(env, a_listen=False)
    point_of(h.a.ok("sync", VM, "--wait"))
    r = h.a.ctl("failover", VM, "--planned")
    check(r.rc == 1 and "listen" in r.err, "planned failover without listen: %r" % r)
    check(h.hooks() == [], "a hook ran for a refused failover: %r" % h.hooks())
    check(status(h.a)["role"] == "primary", "a changed role")
    r = h.b.ctl("failover", VM, "--planned")
    check(r.rc == 1 and "replica" in r.err, "planned failover on the replica: %r" % r)
    r = h.a.ctl("failover", "nosuch", "--planned")
    check(r.rc == 1 and "nosuch" in r.err, "planned failover of an unknown VM: %r" % r)
    point_of(h.a.ok("sync", VM, "--wait"))
    h.a.stop()
    h.b.stop()
    h2 = Hosts(env.__class__(env.name + "-2", env.seed, env.keep), a_accept=False)
    try:
        r = h2.a.ctl("failover", VM, "--planned")
        check(r.rc == 1 and "accept" in r.err, "planned failover without [accept]: %r" % r)
        check(status(h2.a)["role"] == "primary", "a changed role")
    finally:
        h2.env.cleanup(True)
    # A replica that never got a cycle, or does not answer: refused before
    # any hook runs.
    h3 = Hosts(env.__class__(env.name + "-3", env.seed, env.keep))
    try:
        r = h3.a.ctl("failover", VM, "--planned")
        check(r.rc == 1 and "not up to date" in r.err, "planned failover before any cycle: %r" % r)
        point_of(h3.a.ok("sync", VM, "--wait"))
        h3.b.stop()
        r = h3.a.ctl("failover", VM, "--planned")
        check(r.rc == 1 and "cannot connect" in r.err and "still the primary" in r.err,
              "planned failover to a stopped replica: %r" % r)
        check(h3.hooks() == [], "a hook ran for a refused failover: %r" % h3.hooks())
        check(status(h3.a)["role"] == "primary" and status(h3.a)["generation"] == 1,
              "a changed: %r" % status(h3.a))
        h3.b.start()
        random_write(env.rng, h3.disks[0])
        point_of(h3.a.ok("sync", VM, "--wait"))
        h3.same("replication after the refusals")
    finally:
        h3.env.cleanup(True)


def test_unplanned_points_then_commit(env):
    h = Hosts(env)
    kept = {}
    for rnd in range(4):
        for _ in range(env.rng.randrange(2, 5)):
            random_write(env.rng, env.rng.choice(h.disks))
        if rnd == 2:
            with open(h.disks[1], "r+b") as f:
                f.truncate(os.path.getsize(h.disks[1]) + (1 << 20) + 512)
        pt = point_of(h.a.ok("sync", VM, "--wait"))
        kept[pt] = snapshot(h.disks, env.path("kept"), "p%d" % pt)
    ids = sorted(kept)
    h.a.kill9()         # the primary host is lost

    def at(pt, what):
        for c, d in zip(kept[pt], h.b_disks()):
            assert_same(c, d, what)

    r = h.b.ctl("failover", VM, "--point", "999")
    check(r.rc == 1 and "999" in r.err, "failover to a missing point: %r" % r)
    check(status(h.b)["role"] == "replica", "a refused failover changed the role")
    h.b.ok("failover", VM, "--point", str(ids[0]))
    at(ids[0], "after failover to the oldest point")
    st = status(h.b)
    check(st["role"] == "primary" and st["generation"] == 2 and st.get("uncommitted_point") == ids[0],
          "status after unplanned failover: %r" % st)
    check(["b", "promote", VM, "primary", "2", str(ids[0])] in h.hooks(), "on_promote: %r" % h.hooks())
    h.b.ok("failover", VM, "--point", str(ids[-1]))
    at(ids[-1], "after moving to the newest point")
    h.b.ok("failover", VM, "--point", str(ids[1]))
    at(ids[1], "after moving back to point %d" % ids[1])
    # The store survives a restart in the uncommitted state.
    h.b.stop()
    h.b.start()
    check(status(h.b).get("uncommitted_point") == ids[1], "uncommitted state lost at restart")
    h.b.ok("failover", VM, "--point", str(ids[2]))
    at(ids[2], "after restart and a move")
    r = h.b.ok("failover", VM, "--commit")
    check("committed" in r.out, "commit said %r" % r.out)
    at(ids[2], "after commit")
    st = status(h.b)
    check(st["role"] == "primary" and "uncommitted_point" not in st, "status after commit: %r" % st)
    # No replica yet: said, no lag counted, a warning (not protected),
    # not the critical of a lag growing without a reason.
    check(st["health"] == "warning" and st["lag_seconds"] is None and
          "no replica configured" in (st["note"] or ""), "status with no replica: %r" % st)
    check("no replica configured" in h.b.ok("status").out, "plain status does not say it")
    r = h.b.ctl("failover", VM, "--commit")
    check(r.rc == 1 and "no failover" in r.err, "second commit: %r" % r)
    r = h.b.ctl("failover", VM)
    check(r.rc == 1 and "primary" in r.err, "failover twice: %r" % r)
    r = h.b.ctl("failover", VM, "--point", str(ids[0]))
    check(r.rc == 1, "failover to another point after the commit: %r" % r)
    r = h.b.ctl("failover", "nosuch")
    check(r.rc == 1 and "nosuch" in r.err, "failover of an unknown VM: %r" % r)
    at(ids[2], "after the refused requests")
    h.b.stop()


def test_split_brain_fenced_then_reverse(env):
    h = Hosts(env, sizes=(32 << 20, 8 << 20))
    for _ in range(2):
        random_write(env.rng, h.disks[0])
        point_of(h.a.ok("sync", VM, "--wait"))
    h.a.kill9()
    h.b.ok("failover", VM)          # the newest point
    h.b.ok("failover", VM, "--commit")
    before = [file_digest(p) for p in h.b_disks()]
    # The old primary comes back believing it is primary, and writes.
    h.a.start()
    changed_a = 0
    for _ in range(3):
        changed_a += random_write(env.rng, h.disks[0], max_len=64 << 10)[1]
    r = h.a.ctl("sync", VM, "--wait")
    check(r.rc == 1, "the stale primary's cycle was accepted: %r" % r)
    wait_for(lambda: status(h.a)["state"] == "fenced", 10, what="a to show fenced")
    check(status(h.a)["health"] == "critical", "a fenced VM is not critical")
    check([file_digest(p) for p in h.b_disks()] == before, "the promoted copy changed")
    check("fenced" in h.a.log_text(), "the fence was not logged")
    r = h.a.ctl("sync", VM, "--wait")
    check(r.rc == 1 and "fenced" in r.err, "sync on a fenced primary: %r" % r)
    # Fenced survives a restart: no retry against the new primary.
    h.a.stop()
    h.a.start()
    check(status(h.a)["state"] == "fenced", "fence forgotten at restart")
    # The new primary writes too; then reverse brings a in line.
    changed_b = 0
    for _ in range(3):
        changed_b += random_write(env.rng, h.b_disks()[0], max_len=64 << 10)[1]
    r = h.b.ctl("reverse", VM, "--to", "127.0.0.1:1", "--wait")
    check(r.rc == 1 and "cannot connect" in r.err, "reverse to a closed port: %r" % r)
    check(status(h.b)["peer"] == "-", "a failed reverse changed the peer: %r" % status(h.b))
    h.b.ok("reverse", VM, "--to", "127.0.0.1:%d" % h.pa, "--name", "primary", "--wait")
    h.same("after reverse")
    sa, sb = status(h.a), status(h.b)
    check(sa["role"] == "replica" and sa["generation"] == 2, "a after reverse: %r" % sa)
    check(sb["peer"] == "127.0.0.1:%d" % h.pa, "b's peer after reverse: %r" % sb)
    total = sum(os.path.getsize(d) for d in h.disks)
    sent = sb["last_cycle"]["bytes_sent"]
    check(sent < total // 8, "reverse sent %d bytes for ~%d changed of %d" % (sent, changed_a + changed_b, total))
    check(["demote", VM, "replica", "2"] in h.hooks(), "on_demote did not run on a: %r" % h.hooks())
    # Replication goes on in the new direction.
    random_write(env.rng, h.b_disks()[1])
    point_of(h.b.ok("sync", VM, "--wait"))
    h.same("after a cycle in the new direction")
    h.a.ok("verify", VM)
    h.a.stop()
    h.b.stop()


def test_unplanned_refusals(env):
    h = Hosts(env, hooks=False)
    point_of(h.a.ok("sync", VM, "--wait"))
    r = h.a.ctl("failover", VM)
    check(r.rc == 1 and "replica" in r.err, "unplanned failover on the primary: %r" % r)
    r = h.a.ctl("reverse", VM, "--to", "127.0.0.1:%d" % h.pa)
    check(r.rc == 1 and "[vm web01]" in r.err, "reverse on the configured primary to another address: %r" % r)
    r = h.a.ctl("reverse", VM, "--to", "not-an-address")
    check(r.rc == 2, "reverse to a bad address: %r" % r)
    r = h.b.ctl("reverse", VM, "--to", "127.0.0.1:%d" % h.pa)
    check(r.rc == 1 and "replica" in r.err, "reverse on the replica: %r" % r)
    h.b.ok("failover", VM, "--test")
    r = h.b.ctl("failover", VM)
    check(r.rc == 1 and "test" in r.err, "failover with a test copy open: %r" % r)
    check(status(h.b)["role"] == "replica", "role changed by a refused failover")
    h.b.ok("failover", VM, "--test", "--cleanup")
    point_of(h.a.ok("sync", VM, "--wait"))
    h.same("replication unharmed by the refusals")
    h.a.stop()
    h.b.stop()


def test_only_the_peer_may_take_over(env):
    """A host this primary accepts for other VMs ("other") sends a HELLO
    for web01 at a higher generation: refused, the primary stays primary,
    runs no hook and keeps its tracker state; the real replica still can."""
    import wireproto as wp
    h = Hosts(env)
    h.a.stop()
    text = open(h.a.conf).read() + "\n[accept other]\nvms = *\nstorage = %s\n" % env.path("a", "other")
    open(h.a.conf, "w").write(text)
    h.a.start()
    point_of(h.a.ok("sync", VM, "--wait"))
    tracker = os.path.join(h.a.state, "tracker", VM)
    before = sorted(os.listdir(tracker))
    ctx = wp.tls_context(os.path.join(env.pki, "other.pem"), os.path.join(env.pki, "other.key"),
                         os.path.join(env.pki, "ca.pem"))
    c = wp.tls_connect(h.pa, ctx, server_hostname="primary")
    disks = [(os.path.basename(d), os.path.getsize(d)) for d in h.disks]
    c.send(wp.hello(VM, disks, generation=2))
    fr = c.recv_frame(10)
    check(fr is not None and fr[0] == wp.NACK, "a stranger's takeover HELLO got %s" % wp.describe(fr))
    code, reason = wp.decode_nack(fr[1])
    check(code == wp.NACK_DENIED and "may not take it over" in reason, "NACK %r" % ((code, reason),))
    c.close()
    st = status(h.a)
    check(st["role"] == "primary" and st["generation"] == 1, "a after the stranger: %r" % st)
    check(h.hooks() == [], "a hook ran: %r" % h.hooks())
    check(sorted(os.listdir(tracker)) == before, "the tracker state changed")
    random_write(env.rng, h.disks[0])
    point_of(h.a.ok("sync", VM, "--wait"))
    h.same("replication after the stranger")
    h.a.stop()
    h.b.stop()


def test_one_role_change_at_a_time(env):
    """While a failover of a VM runs (its on_promote takes 2 s), a second
    role change, a test failover or a prune of it is refused as busy;
    afterwards each works."""
    import subprocess
    import harness
    h = Hosts(env, hooks=False)
    for _ in range(2):
        random_write(env.rng, h.disks[0])
        point_of(h.a.ok("sync", VM, "--wait"))
    h.a.kill9()
    h.b.stop()
    text = open(h.b.conf).read() + "on_promote = sleep 2\n"
    open(h.b.conf, "w").write(text)
    h.b.start()
    first = subprocess.Popen([harness.REPLCTL, "-s", h.b.socket, "failover", VM], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: "unplanned failover" in h.b.log_text(), 10, what="the failover to start")
    for args in (("failover", VM, "--commit"), ("failover", VM, "--point", "1"),
                 ("failover", VM, "--test"), ("prune", VM), ("verify", VM)):
        r = h.b.ctl(*args)
        said = r.out + r.err        # prune reports on stdout
        check(r.rc == 1 and ("under way" in said or "primary" in said or "role change" in said),
              "%s during a failover: %r" % (" ".join(args), r))
    out, err = first.communicate(30)
    check(first.returncode == 0, "the first failover: %r %r" % (out, err))
    h.b.ok("failover", VM, "--commit")
    check(status(h.b)["role"] == "primary", "b after the commit: %r" % status(h.b))
    h.b.stop()
