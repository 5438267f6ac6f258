"""Failover and resynchronisation cut by a crash (REPLICAD_FAULT crash
points, see src/fault.c callers): a planned failover interrupted on
either side at each step, a reverse whose demotion is cut short, and a
resync killed on the primary or the replica.

After every crash the hosts must converge: exactly one primary, the other
its replica, the replica's files equal the primary's (no write lost), and
on_promote ran on the host that ends up primary.  Hosts (test_failover):
host a is the configured primary of web01 (disks in ENV/src), host b its
replica (ENV/b/storage/web01); each listens and accepts the other, and the
hooks append to ENV/hooks.log lines "a|b promote VM primary GEN POINT" and
"demote VM replica GEN".
"""
import json
import os
import signal

from harness import TestFailure, check, file_digest, wait_for
from test_failover import VM, Hosts, point_of, status
from workload import random_write, snapshot

MiB = 1 << 20


# --- helpers -------------------------------------------------------------------

def start_with_fault(d, fault):
    d.stop()
    d.start(env_extra={"REPLICAD_FAULT": fault})


def expect_fault_death(d, fault, timeout=30):
    """d must die by SIGKILL at crash point fault."""
    proc = d.proc
    check(proc is not None, "%s is not running" % d.name)
    wait_for(lambda: proc.poll() is not None, timeout,
             what="%s to die at crash point %s" % (d.name, fault))
    check(proc.returncode == -signal.SIGKILL, "%s exited %s, expected SIGKILL at %s:\n%s"
          % (d.name, proc.returncode, fault, d.log_text()[-3000:]))
    check("fault point %s reached" % fault in d.log_text(),
          "%s died but never logged reaching %s:\n%s" % (d.name, fault, d.log_text()[-3000:]))
    d.proc = None


def role_gen(d):
    st = status(d)
    check(st is not None, "%s does not list %s" % (d.name, VM))
    return st["role"], st["generation"]


def writes(env, disks, n=3, max_len=1 << 20):
    for _ in range(n):
        random_write(env.rng, env.rng.choice(disks), max_len=max_len)


def history(h, n=2):
    for _ in range(n):
        writes(h.env, h.disks)
        point_of(h.a.ok("sync", VM, "--wait"))
    h.same("history")


def logs(h):
    return "\n--- a log:\n%s\n--- b log:\n%s" % (h.a.log_text()[-3000:], h.b.log_text()[-3000:])


def converge_on_b(h, what, timeout=40):
    """Drive b (the new primary) until its cycle to a succeeds: a, a stale
    primary or fenced, is demoted by b's higher-generation HELLO.  Then
    exactly one primary (b), a its replica, a's disks equal b's."""
    last = [None]

    def synced():
        r = h.b.ctl("sync", VM, "--wait", timeout=60)
        last[0] = r
        return r.rc == 0
    try:
        wait_for(synced, timeout, 0.5, what="%s: a sync from b to succeed" % what)
    except TestFailure:
        raise TestFailure("%s: b's sync never succeeded, last %r%s" % (what, last[0], logs(h)))
    point_of(last[0])
    check_roles(h, "b", what)
    h.same(what + ", after b's sync")
    h.a.ok("verify", VM)


def check_roles(h, primary, what, gen=2):
    """Exactly one primary for VM: primary ("a" or "b"), the other its
    replica, both at generation gen."""
    ra, rb = role_gen(h.a), role_gen(h.b)
    want = {"a": (("primary", gen), ("replica", gen)), "b": (("replica", gen), ("primary", gen))}[primary]
    check((ra, rb) == want, "%s: roles a=%r b=%r, expected a=%r b=%r%s" % (what, ra, rb, want[0], want[1],
                                                                          logs(h)))


def check_hooks(h, primary, gen, what):
    """on_promote ran on exactly the host that ended up primary, at the
    generation of the last change (once); no other host was promoted to
    that generation."""
    lines = h.hooks()
    promotes = [x for x in lines if len(x) >= 5 and x[1] == "promote"]
    at_gen = [x for x in promotes if x[4] == str(gen)]
    check([x[0] for x in at_gen] == [primary],
          "%s: on_promote at generation %d ran on %r, expected once on %s; hook log %r"
          % (what, gen, [x[0] for x in at_gen], primary, lines))
    check(all(x[2:4] == [VM, "primary"] for x in at_gen), "%s: hook lines %r" % (what, lines))
    later = [x for x in promotes if int(x[4]) > gen]
    check(not later, "%s: on_promote ran for a later generation: %r" % (what, lines))


def write_on_b_and_sync(h, what, rounds=2):
    """Writes on the new primary reach a's own disk files."""
    for _ in range(rounds):
        writes(h.env, h.b_disks())
        point_of(h.b.ok("sync", VM, "--wait"))
        h.same(what)
    h.a.ok("verify", VM)


# --- 1. the old primary dies before PROMOTE -------------------------------------

def test_planned_killed_before_promote(env):
    """a dies after the final cycle was acknowledged and committed, before
    PROMOTE: nothing changed hands.  a restarts as the primary (generation
    1), b is still its replica; cycles go on; a later planned failover
    works."""
    h = Hosts(env)
    history(h)
    start_with_fault(h.a, "primary-before-promote")
    writes(env, h.disks)            # travels in the final cycle
    r = h.a.ctl("failover", VM, "--planned")
    check(r.rc != 0, "planned failover succeeded although a was to die: %r" % r)
    expect_fault_death(h.a, "primary-before-promote")
    # The final cycle was acknowledged: b holds every write.
    h.same("after the final cycle")
    check(role_gen(h.b) == ("replica", 1), "b after a died before PROMOTE: %r" % (role_gen(h.b),))
    h.a.start()
    check_roles(h, "a", "after a's restart", gen=1)
    check(status(h.a)["state"] in ("idle", "paused"), "a after restart: %r" % status(h.a))
    writes(env, h.disks)
    point_of(h.a.ok("sync", VM, "--wait"))
    h.same("a sync after the restart")
    h.b.ok("verify", VM)
    # on_demote had stopped the guest; the replica still at generation 1
    # shows the handover did not happen, so on_promote starts it again.
    wait_for(lambda: ["a", "promote", VM, "primary", "1"] in [x[:5] for x in h.hooks()], 10,
             what="on_promote again on a after the cut-off handover: %r" % h.hooks())
    check(not os.path.exists(os.path.join(h.a.state, "hooks", VM + ".handover")),
          "the handover marker is still there")
    # Now a planned failover that goes through.
    writes(env, h.disks)
    r = h.a.ok("failover", VM, "--planned")
    check("handed over" in r.out, "planned failover said %r" % r)
    h.same("after the handover")
    check_roles(h, "b", "after the handover")
    wait_for(lambda: any(x[:2] == ["b", "promote"] for x in h.hooks()), 10, what="on_promote on b")
    write_on_b_and_sync(h, "after the handover, b's writes")
    check_hooks(h, "b", 2, "planned failover after a crash before PROMOTE")
    h.a.stop()
    h.b.stop()


# --- 2. the new primary dies after recording its promotion ------------------------

def test_planned_replica_killed_after_promote_record(env):
    """b records itself primary at generation 2 and dies before PROMOTED:
    a cannot know the outcome (rc 1, "outcome is unknown").  After b's
    restart b is the primary; a is fenced or demoted; b's sync makes a its
    replica with b's data."""
    h = Hosts(env)
    history(h)
    start_with_fault(h.b, "replica-after-promote-record")
    writes(env, h.disks)
    r = h.a.ctl("failover", VM, "--planned")
    check(r.rc == 1 and "outcome is unknown" in r.err, "planned failover with b dying: %r" % r)
    expect_fault_death(h.b, "replica-after-promote-record")
    handed = [file_digest(p) for p in h.disks]
    h.b.start()
    check(role_gen(h.b) == ("primary", 2), "b after restart: %r%s" % (role_gen(h.b), logs(h)))
    check([file_digest(p) for p in h.b_disks()] == handed, "b's disks are not what a handed over")
    # b's on_promote, cut off by the crash, runs at its restart.
    try:
        wait_for(lambda: any(x[:2] == ["b", "promote"] for x in h.hooks()), 10, what="on_promote on b")
    except TestFailure as e:
        raise TestFailure("%s after b's restart: hook log %r%s" % (e, h.hooks(), logs(h)))
    # a (which may have retried on its own meanwhile) is a stale primary.
    r = h.a.ctl("sync", VM, "--wait")
    check(r.rc == 1, "a's cycle after b took over: %r" % r)
    wait_for(lambda: status(h.a)["state"] == "fenced", 10, what="a to show fenced")
    check(role_gen(h.a) == ("primary", 1), "a before b's first cycle: %r" % (role_gen(h.a),))
    converge_on_b(h, "after b died recording its promotion")
    write_on_b_and_sync(h, "b's writes after converging")
    check_hooks(h, "b", 2, "b died after recording its promotion")
    h.a.stop()
    h.b.stop()


# --- 3. the old primary dies after PROMOTED ---------------------------------------

def test_planned_killed_after_promoted(env):
    """b took over (generation 2); a dies before recording its demotion and
    restarts believing it is the primary at generation 1.  b's sync demotes
    it."""
    h = Hosts(env)
    history(h)
    start_with_fault(h.a, "primary-after-promoted")
    writes(env, h.disks)
    r = h.a.ctl("failover", VM, "--planned")
    check(r.rc != 0, "planned failover succeeded although a was to die: %r" % r)
    expect_fault_death(h.a, "primary-after-promoted")
    h.same("b holds what a handed over")
    wait_for(lambda: role_gen(h.b) == ("primary", 2), 10, what="b to be the primary")
    h.a.start()
    ra = role_gen(h.a)
    check(ra == ("primary", 1), "a after restart: %r" % (ra,))
    # a's own cycles are refused: it is a stale primary.
    r = h.a.ctl("sync", VM, "--wait")
    check(r.rc == 1, "the stale primary's cycle was accepted: %r" % r)
    wait_for(lambda: status(h.a)["state"] == "fenced", 10, what="a to show fenced")
    h.a.stop()
    h.a.start()
    check(status(h.a)["state"] == "fenced", "fence forgotten at restart")
    # resume lifts the fence (interval 0: it starts no cycle), the next
    # sync tries again: b refuses a again.  (Checked at the end, so that
    # the rest is tested whatever happens here.)
    mark = len(h.a.log_text())
    h.a.ok("resume", VM)
    problems = []
    try:
        check(status(h.a)["state"] == "idle", "a after resume: %r" % status(h.a))
        r = h.a.ctl("sync", VM, "--wait")
        check(r.rc == 1, "the stale primary's cycle after resume was accepted: %r" % r)
        wait_for(lambda: "generation 1 is below" in h.a.log_text()[mark:] and status(h.a)["state"] == "fenced",
                 30, what="a's sync after `replctl resume` to be fenced again")
    except TestFailure as e:
        problems.append("%s: a shows %r; a's log since resume:\n%s" % (e, status(h.a), h.a.log_text()[mark:]))
    writes(env, h.b_disks())
    converge_on_b(h, "after a died after PROMOTED")
    write_on_b_and_sync(h, "b's writes after converging")
    check_hooks(h, "b", 2, "a died after PROMOTED")
    check(not problems, "\n".join(problems))
    h.a.stop()
    h.b.stop()


# --- 4. reverse: the old primary dies while being demoted ---------------------------

def test_reverse_killed_before_demote_record(env):
    h = Hosts(env, sizes=(32 << 20, 8 << 20))
    history(h)
    h.a.kill9()
    h.b.ok("failover", VM)
    h.b.ok("failover", VM, "--commit")
    writes(env, h.b_disks())        # b's writes before the reverse
    before = [file_digest(p) for p in h.b_disks()]
    h.a.start(env_extra={"REPLICAD_FAULT": "demote-before-record"})
    r = h.b.ctl("reverse", VM, "--to", "127.0.0.1:%d" % h.pa, "--name", "primary", "--wait")
    check(r.rc != 0, "reverse succeeded although a was to die demoting: %r" % r)
    expect_fault_death(h.a, "demote-before-record")
    check(["demote", VM, "replica", "2"] in h.hooks(), "on_demote did not run on a: %r" % h.hooks())
    check([file_digest(p) for p in h.b_disks()] == before, "b's disks changed")
    h.a.start()
    ra = role_gen(h.a)
    check(ra in (("primary", 1), ("replica", 2)), "a after restart: %r" % (ra,))
    writes(env, h.b_disks())        # and after
    converge_on_b(h, "after a died being demoted")
    write_on_b_and_sync(h, "b's writes after converging")
    check_hooks(h, "b", 2, "reverse cut by a's crash")
    h.a.stop()
    h.b.stop()


# --- 5. resync killed on either side ------------------------------------------------

def damage(env, path, nchunks=12, length=8192, bs=64 << 10):
    """Random bytes written straight into the replica's image, behind
    replicad's back, in nchunks different 1 MiB chunks (each inside one
    block).  Returns [(offset, the bytes written)]."""
    size = os.path.getsize(path)
    chunks = sorted(env.rng.sample(range(size // MiB), nchunks))
    out = []
    with open(path, "r+b") as f:
        for c in chunks:
            off = c * MiB + env.rng.randrange(0, MiB // bs) * bs + env.rng.randrange(0, bs - length)
            data = env.rng.randbytes(length)
            f.seek(off)
            f.write(data)
            out.append((off, data))
    return out


def list_points(h):
    return sorted(p["id"] for p in json.loads(h.b.ok("points", VM, "--json").out))


def resync_fault(env, victim, fault):
    """Three points, then the replica's image is damaged in 12 chunks and a
    resync is requested; victim dies in the middle of it.  After the
    restart a resync repairs the replica, which lists every point it
    listed before, each still rebuildable, and one or two new ones (an
    automatic retry may run one first)."""
    h = Hosts(env, sizes=(48 << 20, 8 << 20))
    kept = {}
    for _ in range(3):
        writes(env, h.disks)
        pt = point_of(h.a.ok("sync", VM, "--wait"))
        kept[pt] = snapshot(h.disks, env.path("kept"), "p%d" % pt)
    h.same("history")
    listed = list_points(h)
    check(listed == sorted(kept), "points %r, kept %r" % (listed, sorted(kept)))
    damaged = damage(env, h.b_disks()[0])
    r = h.b.ctl("verify", VM)
    check(r.rc == 1, "verify did not see the damage: %r" % r)
    d = h.a if victim == "a" else h.b
    start_with_fault(d, fault)
    mark = len(h.a.log_text())
    r = h.a.ctl("resync", VM, "--wait")
    check(r.rc != 0, "resync succeeded although %s was to die at %s: %r" % (victim, fault, r))
    expect_fault_death(d, fault)
    check("resynchronising" in h.a.log_text()[mark:], "the cycle cut by the crash was not a resync")
    d.start()
    # The cut cycle left no point, half or whole.
    check(list_points(h) == listed, "points after the crash: %r, before %r" % (list_points(h), listed))
    r = h.a.ctl("resync", VM, "--wait")
    check(r.rc == 0, "resync after the crash failed: %r%s" % (r, logs(h)))
    pt = point_of(r)
    now = snapshot(h.disks, env.path("kept"), "p%d" % pt)
    h.same("after the resync")
    h.b.ok("verify", VM)
    pts = list_points(h)
    new = sorted(set(pts) - set(listed))
    check(set(listed) <= set(pts), "points lost: listed %r before, %r after" % (listed, pts))
    check(pt in new and len(new) <= 2, "points after the resync: %r (before %r), resync said %d"
          % (pts, listed, pt))
    for p in new:
        kept[p] = now           # no write since the crash
    # The damaged blocks had not changed on the primary since the newest
    # point: the resync put them right in place, so every point, older
    # ones included, rebuilds exactly.
    check("damaged blocks of the replica put right" in h.b.log_text(),
          "the replica did not report the repair%s" % logs(h))
    for p in pts:
        rebuild(h, p, kept[p], [], "after a crash at %s" % fault)
    writes(env, h.disks)
    mark = len(h.a.log_text())
    point_of(h.a.ok("sync", VM, "--wait"))
    check("resynchronising" not in h.a.log_text()[mark:], "the cycle after the resync was a resync")
    h.same("a cycle after")
    h.b.ok("verify", VM)
    check(h.hooks() == [], "a hook ran without a role change: %r" % h.hooks())
    h.a.stop()
    h.b.stop()


def rebuild(h, pt, copies, damaged, what):
    """Point pt rebuilt by a test failover equals its copy.  In a range
    damaged behind replicad's back, a point older than the repair may hold
    the damage (the image was every point's data there, and the repair's
    undo segment keeps what it overwrote) but nothing else: the range is
    wholly the point's data or wholly the damage."""
    r = h.b.ctl("failover", VM, "--test", "--point", str(pt))
    check(r.rc == 0, "%s: test failover of point %d: %r" % (what, pt, r))
    try:
        for i, (c, d) in enumerate(zip(copies, h.disks)):
            t = os.path.join(h.b_storage, VM, "test", os.path.basename(d))
            same_but(c, t, damaged if i == 0 else [], "%s: point %d rebuilt" % (what, pt))
    finally:
        h.b.ok("failover", VM, "--test", "--cleanup")


def same_but(kept, rebuilt, damaged, what):
    check(os.path.getsize(kept) == os.path.getsize(rebuilt), "%s: sizes %d != %d"
          % (what, os.path.getsize(kept), os.path.getsize(rebuilt)))
    with open(kept, "rb") as fa, open(rebuilt, "rb") as fb:
        x, y = bytearray(fa.read()), bytearray(fb.read())
    for off, data in damaged:
        n = len(data)
        check(y[off:off + n] in (x[off:off + n], data),
              "%s: %s at %d+%d is neither the point's data nor the damage" % (what, rebuilt, off, n))
        x[off:off + n] = bytes(n)
        y[off:off + n] = bytes(n)
    if x != y:
        i = next(i for i in range(len(x)) if x[i] != y[i])
        raise TestFailure("%s: %s and %s differ at offset %d" % (what, kept, rebuilt, i))


def test_resync_killed_primary(env):
    resync_fault(env, "a", "primary-mid-resync")


def test_resync_killed_replica(env):
    resync_fault(env, "b", "replica-mid-resync")
