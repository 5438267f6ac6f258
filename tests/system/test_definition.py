"""The VM's definition travels with its disks (DEFINITION, wire.h): each
point carries the definition of its cut, sent only when it changed, kept
once per VM in the replica's catalog, right through forget and prune;
`points` shows where it changed and `replctl definition` prints it.

The libvirt tracker captures a domain's XML; these tests use the scan
tracker with REPLICAD_TEST_DEFINITION (tracker.c, test-only), which makes
the primary report the text of a file as it is at each cut.
"""
import hashlib
import json
import os
import sqlite3
import struct
import subprocess

import wireproto as wp
from harness import (REPLCTL, LogMark, TestFailure, check, replica_state, vm_status, wait_for,
                     wait_state_unchanged)
from workload import random_write

VM = "web01"


def make_def(env, name, size=200 << 10):
    """A text like a domain's XML, about size bytes (random, so that two
    are never equal); written to env.path(name).  Returns (path, bytes)."""
    body = env.rng.randbytes(size // 2).hex()
    xml = ("<domain type='kvm'>\n  <name>%s</name>\n  <description>%s</description>\n"
           "</domain>\n" % (VM, body)).encode()
    path = env.path(name)
    with open(path, "wb") as f:
        f.write(xml)
    return path, xml


def set_def(path, xml):
    """Change what the next cut reports (atomically: a cut never reads a
    half-written file)."""
    with open(path + ".new", "wb") as f:
        f.write(xml)
    os.replace(path + ".new", path)


def short_id(xml):
    return hashlib.sha256(xml).hexdigest()[:12]


def point_of(result):
    words = result.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % result.out)
    return int(words[1])


def points(rep):
    return {p["id"]: p for p in json.loads(rep.ok("points", VM, "--json").out)}


def stored_defs(rep):
    """The definition texts the replica's catalog keeps for VM."""
    db = sqlite3.connect(os.path.join(rep.state, "catalog.db"), timeout=10)
    try:
        return sorted(x.encode() for (x,) in db.execute("SELECT xml FROM definitions WHERE vm = ?", (VM,)))
    finally:
        db.close()


def definition(rep, *args):
    """`replctl definition VM ARGS` as bytes (it prints the text as sent)."""
    p = subprocess.run([REPLCTL, "-s", rep.socket, "definition", VM] + list(args),
                       capture_output=True, timeout=60)
    check(p.returncode == 0, "definition %s: rc=%d %r" % (" ".join(args), p.returncode, p.stderr))
    return p.stdout


def sent(pri):
    return vm_status(pri, VM)["last_cycle"]["bytes_sent"]


def setup(env, def_path=None, extra_accept=""):
    disk = env.make_disk(env.path("src", "sda.img"), 4 << 20)
    rep = env.replica(extra=extra_accept).start()
    pri = env.primary({VM: [disk]}, rep.port)
    pri.start(env_extra={"REPLICAD_TEST_DEFINITION": def_path} if def_path else None)
    return pri, rep, disk


def test_points_carry_definition(env):
    """The first point carries the definition; an unchanged one is not
    sent again (bytes on the wire, the primary's log) and the next point
    still shows it; a changed one makes the next point show a change, and
    each point prints its own.  A restarted primary sends it once more:
    the point does not show a change and the catalog keeps one copy."""
    dpath, a = make_def(env, "a.xml")
    pri, rep, disk = setup(env, dpath)
    mark = LogMark(pri)
    p1 = point_of(pri.ok("sync", VM, "--wait"))
    mark.wait("cycle ", "carries the VM's definition (%d bytes)" % len(a))
    pts = points(rep)
    check(pts[p1]["definition"] == short_id(a) and pts[p1]["definition_changed"] is True,
          "first point: %r" % {k: pts[p1][k] for k in ("definition", "definition_changed")})
    check(definition(rep) == a, "definition of the newest point differs from what the primary had")

    # Unchanged, nothing else either: the cycle is CYCLE and END.
    mark = LogMark(pri)
    p2 = point_of(pri.ok("sync", VM, "--wait"))
    check(sent(pri) < 4096, "an unchanged definition went again: %d bytes sent" % sent(pri))
    mark.wait("the VM's definition is unchanged; not sent")
    check("carries the VM's definition" not in mark.new(), "sent again:\n%s" % mark.new())
    pts = points(rep)
    check(pts[p2]["definition"] == short_id(a) and pts[p2]["definition_changed"] is False,
          "point without a definition of its own: %r" % pts[p2])
    check(definition(rep, "--point", str(p2)) == a, "point %d does not print the definition" % p2)

    # Changed: the next point carries the new one, the old points keep theirs.
    b = make_def(env, "b.xml")[1]
    set_def(dpath, b)
    random_write(env.rng, disk, max_len=100000)
    p3 = point_of(pri.ok("sync", VM, "--wait"))
    check(sent(pri) >= len(b), "the changed definition (%d bytes) did not travel: %d bytes sent"
          % (len(b), sent(pri)))
    pts = points(rep)
    check(pts[p3]["definition"] == short_id(b) and pts[p3]["definition_changed"] is True,
          "point after the change: %r" % pts[p3])
    check(definition(rep) == b and definition(rep, "--point", str(p3)) == b, "new definition not printed")
    check(definition(rep, "--point", str(p1)) == a, "the first point lost its definition")
    # The table marks where it changed.
    rows = {int(ln.split()[0]): ln.split()[-1] for ln in rep.ok("points", VM).out.splitlines()[1:]}
    check(rows == {p1: short_id(a) + "*", p2: short_id(a), p3: short_id(b) + "*"},
          "points table DEF column: %r" % rows)

    # A restart forgets what the replica acknowledged: sent once more.
    pri.stop()
    pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath})
    mark = LogMark(pri)
    p4 = point_of(pri.ok("sync", VM, "--wait"))
    mark.wait("carries the VM's definition (%d bytes)" % len(b))
    pts = points(rep)
    check(pts[p4]["definition"] == short_id(b) and pts[p4]["definition_changed"] is False,
          "point after a restart: %r" % pts[p4])
    check(stored_defs(rep) == sorted([a, b]), "the catalog keeps %d texts, not the 2 distinct ones"
          % len(stored_defs(rep)))

    # Refusals.
    r = rep.ctl("definition", VM, "--point", "99")
    check(r.rc == 1 and "no point 99" in r.err, "definition of a missing point: %r" % r)
    r = pri.ctl("definition", VM)
    check(r.rc == 1 and "not replicated to this host" in r.err, "definition on the primary: %r" % r)
    pri.stop()
    rep.stop()


def test_forget_and_prune_keep_definitions(env):
    """Points A A B B A A (a definition sent at points 1, 3 and 5): forget
    the point where B came, and the one after still has B (and now shows
    the change); forget that one too, and B is no longer stored; prune to
    the last two keeps theirs."""
    dpath, a = make_def(env, "a.xml", 50 << 10)
    b = make_def(env, "b.xml", 60 << 10)[1]
    pri, rep, disk = setup(env, dpath, extra_accept="retention = last=2\n")
    ids = []
    for text in (a, a, b, b, a, a):
        set_def(dpath, text)
        random_write(env.rng, disk, max_len=100000)
        ids.append(point_of(pri.ok("sync", VM, "--wait")))
    want = dict(zip(ids, (a, a, b, b, a, a)))
    changed = [p for p in ids if points(rep)[p]["definition_changed"]]
    check(changed == [ids[0], ids[2], ids[4]], "changes shown at %r, not %r" % (changed, ids[0::2]))
    check(stored_defs(rep) == sorted([a, b]), "stored: %d texts" % len(stored_defs(rep)))

    rep.ok("forget", VM, "--point", str(ids[2]))
    check(definition(rep, "--point", str(ids[3])) == b, "the point after the forgotten one lost B")
    pts = points(rep)
    check(pts[ids[3]]["definition"] == short_id(b) and pts[ids[3]]["definition_changed"] is True,
          "after forget: %r" % pts[ids[3]])
    check(stored_defs(rep) == sorted([a, b]), "B dropped while a point has it")

    rep.ok("forget", VM, "--point", str(ids[3]))
    check(stored_defs(rep) == [a], "B is kept with no point left that has it")
    pts = points(rep)
    check(pts[ids[4]]["definition_changed"] is False, "A after A shown as a change: %r" % pts[ids[4]])

    r = rep.ok("prune", VM)
    pts = points(rep)
    check(sorted(pts) == ids[4:], "points after prune: %r" % sorted(pts))
    for p in ids[4:]:
        check(definition(rep, "--point", str(p)) == want[p], "point %d after prune" % p)
    check(pts[ids[4]]["definition_changed"] is True and pts[ids[5]]["definition_changed"] is False,
          "after prune: %r" % pts)
    check(stored_defs(rep) == [a], "after prune: %d texts" % len(stored_defs(rep)))
    rep.ok("verify", VM)
    pri.stop()
    rep.stop()


def test_vm_without_definition(env):
    """A tracker that captures none: points say so, nothing is stored,
    and `definition` says why it has nothing to print."""
    pri, rep, disk = setup(env)
    p1 = point_of(pri.ok("sync", VM, "--wait"))
    pts = points(rep)
    check(pts[p1]["definition"] is None and pts[p1]["definition_changed"] is False, "%r" % pts[p1])
    r = rep.ctl("definition", VM)
    check(r.rc == 1 and "has no definition" in r.err, "definition without one: %r" % r)
    check(rep.ok("points", VM).out.splitlines()[1].split()[-1] == "-", "points table: %r"
          % rep.ok("points", VM).out)
    check(stored_defs(rep) == [], "something stored")
    pri.stop()
    rep.stop()


def test_replica_crash_before_the_point(env):
    """The replica dies after the staged cycle is complete but before the
    catalog has its point: at restart it finishes the point with the
    definition the cycle brought, and the primary, which never had its
    ACK, sends it once more with the next cycle (one copy stored)."""
    dpath, a = make_def(env, "a.xml", 30 << 10)
    pri, rep, disk = setup(env, dpath)
    p1 = point_of(pri.ok("sync", VM, "--wait"))
    b = make_def(env, "b.xml", 40 << 10)[1]
    set_def(dpath, b)
    random_write(env.rng, disk, max_len=100000)
    rep.stop()
    rep.start(env_extra={"REPLICAD_FAULT": "replica-before-catalog"})
    r = pri.ctl("sync", VM, "--wait")
    check(r.rc == 1, "sync through a replica that died: %r" % r)
    wait_for(lambda: not rep.alive(), 30, what="the replica to kill itself at its fault point")
    rep.start()
    pts = points(rep)
    check(sorted(pts) == [p1, p1 + 1], "points after the restart: %r" % sorted(pts))
    check(definition(rep, "--point", str(p1 + 1)) == b, "the recovered point lacks its definition")
    mark = LogMark(pri)
    p3 = point_of(pri.ok("sync", VM, "--wait"))
    mark.wait("carries the VM's definition (%d bytes)" % len(b))
    pts = points(rep)
    check(pts[p3]["definition"] == short_id(b) and not pts[p3]["definition_changed"], "%r" % pts[p3])
    check(stored_defs(rep) == sorted([a, b]), "stored: %d texts" % len(stored_defs(rep)))
    pri.stop()
    rep.stop()


# --- the primary and older or hand-driven replicas ---------------------------

def data_header(p):
    """(disk, offset, length, hash) of a DATA payload."""
    disk, off, length, _enc = struct.unpack(">HQIB", p[:15])
    return disk, off, length, p[15:31]


def read_cycle(conn, res):
    """Read the primary's cycle up to END (keepalives aside); note the
    types in order and check END against the digest of what came."""
    dig = wp.CycleDigest()
    types = []
    while True:
        fr = conn.recv_frame(30)
        check(fr is not None, "the primary closed during the cycle")
        t, p = fr
        if t == wp.KEEPALIVE:
            continue
        types.append(t)
        if t == wp.CYCLE:
            res["cycle"] = wp.decode_cycle(p)["cycle"]
        elif t == wp.DATA:
            dig.add(*data_header(p))
        elif t == wp.DEFINITION:
            res.setdefault("defs", []).append(p)
            dig.add_definition(p)
        elif t == wp.END:
            e = wp.decode_end(p)
            check(e["nframes"] == dig.nframes and e["digest"] == dig.final(),
                  "END %r does not match the frames received (%d DATA)" % (e, dig.nframes))
            break
    res["types"] = types


def test_older_replicas(env):
    """A replica that answers WELCOME at version 3 gets no DEFINITION (and
    the primary says so once); one that refuses a version 4 HELLO is
    offered version 3 at the next try, not 2.  A version 4 replica gets
    the text right after CYCLE, counted in END's digest as wire.h says."""
    from test_hostile_resync import FakeReplica
    dpath, a = make_def(env, "a.xml", 20 << 10)
    disk = env.make_disk(env.path("src", "sda.img"), 1 << 20)
    rep = env.replica()             # not started: its address hosts the fake
    pri = env.primary({VM: [disk]}, rep.port)
    pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath})
    pri.ok("pause", VM)
    fake = FakeReplica(env, rep.port)
    try:
        def answer(version):
            def script(conn, hello, res):
                res["version"] = hello["version"]
                conn.send(wp.welcome(hello["generation"], version=version))
                read_cycle(conn, res)
                conn.send(wp.ack(res["cycle"], res["cycle"]))
            return script

        # Version 4: the text, right after CYCLE.
        fake.serve(answer(4))
        r = pri.ctl("sync", VM, "--wait", timeout=60)
        res = fake.join()
        check(res["error"] is None and r.rc == 0, "version 4 replica: %r %r" % (res["error"], r))
        check(res["version"] == 4, "HELLO offered version %d" % res["version"])
        check(res["types"][:2] == [wp.CYCLE, wp.DEFINITION] and res["defs"] == [a],
              "frames of the cycle: %r" % [wp.TYPE_NAMES.get(t) for t in res["types"]])

        # Version 3: none, and a note in the log, once.
        mark = LogMark(pri)
        set_def(dpath, make_def(env, "b.xml", 20 << 10)[1])
        for _ in range(2):
            fake.serve(answer(3))
            r = pri.ctl("sync", VM, "--wait", timeout=60)
            res = fake.join()
            check(res["error"] is None and r.rc == 0, "version 3 replica: %r %r" % (res["error"], r))
            check(wp.DEFINITION not in res["types"], "DEFINITION sent in a version 3 session")
        check(mark.new().count("speaks protocol version 3: the VM's definition is not sent") == 1,
              "the primary's note on a version 3 replica:\n%s" % mark.new())

        # A replica that refuses version 4 for its version: next, 3.
        def refuse(conn, hello, res):
            res["version"] = hello["version"]
            conn.send(wp.nack(wp.NACK_PROTOCOL, "bad HELLO: unsupported version"))
        pri.stop()
        pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath})
        pri.ok("pause", VM)
        fake.serve(refuse)
        r = pri.ctl("sync", VM, "--wait", timeout=60)
        res = fake.join()
        check(r.rc == 1 and res["version"] == 4, "refused HELLO: %r %r" % (r, res))
        fake.serve(answer(3))
        r = pri.ctl("sync", VM, "--wait", timeout=60)
        res = fake.join()
        check(res["error"] is None and r.rc == 0 and res["version"] == 3,
              "after the refusal the primary offered %r: %r %r" % (res.get("version"), res["error"], r))
    finally:
        fake.close()
    pri.stop()


def session(pair, version):
    """A hand-driven session at version: (conn, welcome)."""
    got = {}

    def attempt():
        c = pair.connect()
        c.send(wp.hello(pair.vm, pair.disk_list(), version=version))
        fr = c.recv_frame()
        if fr is not None and fr[0] == wp.WELCOME:
            got["w"] = (c, wp.decode_welcome(fr[1]))
            return True
        c.close()
        if fr is not None and fr[0] == wp.NACK and wp.decode_nack(fr[1])[0] == wp.NACK_BUSY:
            return False
        raise TestFailure("a well-formed HELLO got %s" % wp.describe(fr))
    wait_for(attempt, 10, 0.1, what="the replica to take a session")
    return got["w"]


def answer(conn):
    """The replica's next frame but keepalives."""
    while True:
        fr = conn.recv_frame(30)
        if fr is None or fr[0] != wp.KEEPALIVE:
            return fr


def test_hand_made_definition_frames(env):
    """Against the real replica: a cycle with a DEFINITION is recorded
    with it; a tampered one (END's digest made over other text), a
    second one, one with a NUL or above 1 MiB, one outside a cycle or in
    a version 3 session is refused, and nothing changes."""
    from test_hostile import Pair, valid_start
    pair = Pair(env)
    rep = pair.rep
    xml = b"<domain type='kvm'>\n  <name>web01</name>\n</domain>\n"

    c, w = session(pair, 4)
    dig = wp.CycleDigest()
    cyc, start = valid_start(pair, w, dig)
    # After a DATA frame: its place in the cycle is free, its place in
    # the digest is not.
    c.send(start + wp.definition(xml, dig) + wp.end_of(cyc, dig))
    fr = answer(c)
    check(fr is not None and fr[0] == wp.ACK, "a valid cycle with a definition got %s\n%s"
          % (wp.describe(fr), rep.log_text()[-1500:]))
    pt = wp.decode_ack(fr[1])["point"]
    c.close()
    check(definition(rep, "--point", str(pt)) == xml, "the hand-made definition was not recorded")
    check(points(rep)[pt]["definition"] == short_id(xml), "points: %r" % points(rep)[pt])

    def refused(what, version, build, log):
        before = replica_state(rep, VM)
        mark = LogMark(rep)
        conn, w = session(pair, version)
        conn.send(build(w))
        fr = answer(conn)
        check(fr is not None and fr[0] == wp.NACK, "%s: got %s" % (what, wp.describe(fr)))
        conn.close()
        mark.wait(*log, what="%s: the replica's log line" % what)
        wait_state_unchanged(rep, VM, before, what)

    other = xml.replace(b"web01", b"web02")

    def tampered(w):
        d = wp.CycleDigest()
        cyc, start = valid_start(pair, w, d)
        d.add_definition(other)
        return start + wp.definition(xml) + wp.end_of(cyc, d)
    refused("a definition other than END's digest says", 4, tampered, ("does not match its END",))

    def twice(w):
        d = wp.CycleDigest()
        cyc, start = valid_start(pair, w, d)
        return start + wp.definition(xml, d) + wp.definition(xml, d) + wp.end_of(cyc, d)
    refused("two definitions", 4, twice, ("a second DEFINITION",))

    def bad(text):
        def build(w):
            d = wp.CycleDigest()
            cyc, start = valid_start(pair, w, d)
            return start + wp.definition(text, d) + wp.end_of(cyc, d)
        return build
    refused("a NUL in it", 4, bad(b"<domain>\0</domain>"), ("bad DEFINITION",))
    refused("an escape in it", 4, bad(b"<domain>\x1b[2J</domain>"), ("bad DEFINITION",))
    refused("above 1 MiB", 4, bad(b"x" * (wp.MAX_DEFINITION + 1)), ("bad DEFINITION",))
    refused("before CYCLE", 4, lambda w: wp.definition(xml), ("unexpected definition frame",))

    def v3(w):
        d = wp.CycleDigest()
        cyc, start = valid_start(pair, w, d)
        return start + wp.definition(xml, d) + wp.end_of(cyc, d)
    refused("in a version 3 session", 3, v3, ("unexpected definition frame",))
    # And the real primary goes on.
    pair.legit_sync("after the refusals")
    check(points(rep)[max(points(rep))]["definition"] == short_id(xml),
          "the real primary's point (no definition of its own) does not keep the previous one")


def test_terminal_controls_refused(env):
    """`replctl definition` prints the text to an operator's terminal: a
    C1 control (CSI as the one byte 0x9b, or as UTF-8 U+009B) or text
    that is not UTF-8 is refused like an escape, and nothing changes; a
    primary whose domain XML holds one does not send it (and says so),
    so the point keeps the definition before it."""
    from test_hostile import Pair, valid_start
    pair = Pair(env)
    rep = pair.rep

    def refused(what, text):
        before = replica_state(rep, VM)
        mark = LogMark(rep)
        conn, w = session(pair, 4)
        d = wp.CycleDigest()
        cyc, start = valid_start(pair, w, d)
        conn.send(start + wp.definition(text, d) + wp.end_of(cyc, d))
        fr = answer(conn)
        check(fr is not None and fr[0] == wp.NACK, "%s: got %s" % (what, wp.describe(fr)))
        conn.close()
        mark.wait("bad DEFINITION", what="%s: the replica's log line" % what)
        wait_state_unchanged(rep, VM, before, what)

    refused("CSI as UTF-8 U+009B", "<domain><description>\u009b2J\u009b31m</description></domain>".encode())
    refused("CSI as the byte 0x9b", b"<domain><description>\x9b2J</description></domain>")
    refused("OSC as UTF-8 U+009D", "<domain>\u009d0;owned\u009c</domain>".encode())
    refused("not UTF-8", b"<domain>\xff\xfe</domain>")
    refused("an overlong '<'", b"<domain>\xc0\xbc</domain>")

    # The real primary: a domain XML with a C1 control is not sent.
    good = "<domain type='kvm'>\n  <name>web01</name>\n  <description>caf\u00e9</description>\n</domain>\n".encode()
    dpath = env.path("def.xml")
    set_def(dpath, good)
    pair.pri.stop()
    pair.pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath})
    pair.legit_sync("a UTF-8 definition")
    check(definition(rep) == good, "the UTF-8 definition was not recorded as sent")
    set_def(dpath, good.replace("caf\u00e9".encode(), "\u009b2J".encode()))
    mark = LogMark(pair.pri)
    pair.legit_sync("a definition with a C1 control")
    mark.wait("the VM's definition", "cannot be sent", "not UTF-8 or holds control characters")
    out = definition(rep)
    check(out == good, "after a C1 definition, `definition` printed %r" % out[:200])
    check(not any(0x80 <= ord(c) <= 0x9f for c in out.decode("utf-8")), "a C1 control reached the output")
    pair.pri.stop()
    rep.stop()


class _Sender:
    """What session() needs to speak for the primary of VM by hand."""

    def __init__(self, env, rep, disks):
        self.env, self.rep, self.vm, self.disks = env, rep, VM, disks

    def disk_list(self):
        return [(os.path.basename(d), os.path.getsize(d)) for d in self.disks]

    def connect(self):
        pki = self.env.pki
        ctx = wp.tls_context(os.path.join(pki, "primary.pem"), os.path.join(pki, "primary.key"),
                             os.path.join(pki, "ca.pem"))
        return wp.tls_connect(self.rep.port, ctx)


def test_definitions_count_in_space(env):
    """An accepted primary that sends a new 1 MiB definition with every
    (empty) cycle grows the catalog by that much a cycle.  With the
    state directory on another file system than the storage, min_free
    must hold there too: the cycles are refused (NOSPACE) before the
    catalog's file system has less than min_free left, and what was
    recorded stays readable.  A prune makes room again: the pages of
    the definitions it drops take the next ones."""
    state_fs = env.path("replica", "state")
    os.makedirs(state_fs, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", state_fs], check=True)
    try:
        disk = env.make_disk(env.path("src", "sda.img"), 1 << 20)
        rep = env.replica(extra="min_free = 16M\nretention = last=2\n").start()
        check(rep.state == state_fs, "the replica's state is not where the tmpfs is")
        pri = env.primary({VM: [disk]}, rep.port).start()
        pri.ok("sync", VM, "--wait")
        pri.stop()
        keep = 16 << 20

        def free():
            sv = os.statvfs(state_fs)
            return sv.f_bavail * sv.f_frsize

        sender = _Sender(env, rep, [disk])

        def big(i):
            head = b"<domain type='kvm'><name>web01</name><description>%d " % i
            tail = b"</description></domain>\n"
            return head + b"x" * (wp.MAX_DEFINITION - len(head) - len(tail)) + tail

        def send(conn, cyc, text):
            d = wp.CycleDigest()
            conn.send(wp.cycle(cyc, [os.path.getsize(disk)]) + wp.definition(text, d) + wp.end_of(cyc, d))
            return answer(conn)

        conn, w = session(sender, 4)
        cyc = w["last_cycle"]
        acked, lowest, nack = 0, free(), None
        for i in range(80):
            cyc += 1
            fr = send(conn, cyc, big(i))
            lowest = min(lowest, free())
            if fr is None or fr[0] != wp.ACK:
                nack = fr
                break
            acked += 1
        conn.close()
        check(nack is not None and nack[0] == wp.NACK and wp.decode_nack(nack[1])[0] == wp.NACK_NOSPACE,
              "after %d cycles of new definitions: %s (the catalog's file system has %d KiB free)\n%s"
              % (acked, wp.describe(nack), free() >> 10, rep.log_text()[-1500:]))
        # Slack: the WAL grows once to its working size (a checkpoint
        # interval, 1000 pages, and the transaction that ends it).
        slack = 6 << 20
        check(lowest >= keep - slack, "the catalog's file system went down to %d KiB free "
              "(min_free %d KiB)" % (lowest >> 10, keep >> 10))
        rep.ok("definition", VM)
        rep.ok("points", VM)

        # Pruned to the last two points: the next new definition fits.
        wait_for(lambda: vm_status(rep, VM)["state"] != "syncing", 10, 0.05,
                 what="the replica to release %s" % VM)
        rep.ok("prune", VM)
        conn, w = session(sender, 4)
        fr = send(conn, w["last_cycle"] + 1, big(1000))
        conn.close()
        check(fr is not None and fr[0] == wp.ACK, "a new definition after a prune: %s\n%s"
              % (wp.describe(fr), rep.log_text()[-1500:]))
        check(free() >= keep - slack, "after the prune the catalog's file system has %d KiB free"
              % (free() >> 10))
        rep.stop()
    finally:
        for p in env.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", state_fs])



def test_replica_upgraded_after_a_downgrade(env):
    """A primary upgraded before its replica lowers the version it offers
    (the replica refuses version 4); once the replica is upgraded too,
    the definition must travel again without a restart of the primary:
    after a while (REPLICAD_TEST_REPROBE_MS: 1.5 s here) the primary
    offers its own version again, and a replica still old is offered the
    version that worked at once, not one less."""
    from test_hostile_resync import FakeReplica
    dpath, a = make_def(env, "a.xml", 20 << 10)
    disk = env.make_disk(env.path("src", "sda.img"), 1 << 20)
    rep = env.replica()             # not started: its address hosts the fake
    pri = env.primary({VM: [disk]}, rep.port)
    pri.start(env_extra={"REPLICAD_TEST_DEFINITION": dpath, "REPLICAD_TEST_REPROBE_MS": "1500"})
    pri.ok("pause", VM)
    fake = FakeReplica(env, rep.port)
    offered = []

    def old(conn, hello, res):
        offered.append(hello["version"])
        if hello["version"] > 3:
            conn.send(wp.nack(wp.NACK_PROTOCOL, "bad HELLO: unsupported version"))
            return
        conn.send(wp.welcome(hello["generation"], version=hello["version"]))
        read_cycle(conn, res)
        conn.send(wp.ack(res["cycle"], res["cycle"]))

    def sync_old():
        fake.serve(old)
        pri.ctl("sync", VM, "--wait", timeout=60)
        res = fake.join()
        check(res["error"] is None, "the fake version 3 replica: %r" % res["error"])

    try:
        sync_old()
        sync_old()
        check(offered == [4, 3], "versions offered to a version 3 replica: %r" % offered)
        # Still old after the delay: one probe at 4, then 3 again.
        wait_for(lambda: sync_old() or offered[-1] == 4, 60, 0.2,
                 what="the primary to offer version 4 again")
        check(set(offered[2:-1]) <= {3}, "versions offered meanwhile: %r" % offered)
        sync_old()
        check(offered[-1] == 3, "after a refused probe the primary offered %r" % offered[-2:])
    finally:
        fake.close()

    # The replica is upgraded: the definition travels again.
    rep.start()

    def got_definition():
        pri.ctl("sync", VM, "--wait", timeout=60)
        return rep.ctl("definition", VM).rc == 0
    wait_for(got_definition, 60, 0.2, what="the definition to reach the upgraded replica")
    check(definition(rep) == a, "the upgraded replica has another definition")
    pri.stop()
    rep.stop()


def test_aborted_cycle_leaves_no_definition(env):
    """A definition that came in a cycle that did not become a point (its
    END digest made over other text; its session cut before END; a replica
    restarted meanwhile) is not the definition of the next point, which
    carries none of its own: that point keeps the one before (none)."""
    from test_hostile import Pair, valid_start
    pair = Pair(env)
    rep = pair.rep
    xml = b"<domain type='kvm'><name>web01</name><description>never a point's</description></domain>\n"

    def next_point_has_none(what):
        conn, w = session(pair, 4)
        d = wp.CycleDigest()
        cyc, start = valid_start(pair, w, d)
        conn.send(start + wp.end_of(cyc, d))
        fr = answer(conn)
        conn.close()
        check(fr is not None and fr[0] == wp.ACK, "%s: a valid cycle got %s" % (what, wp.describe(fr)))
        pt = wp.decode_ack(fr[1])["point"]
        check(points(rep)[pt]["definition"] is None, "%s: point %d has definition %r"
              % (what, pt, points(rep)[pt]["definition"]))
        check(stored_defs(rep) == [], "%s: the catalog stores %d texts" % (what, len(stored_defs(rep))))

    # END over other text: refused.
    conn, w = session(pair, 4)
    d = wp.CycleDigest()
    cyc, start = valid_start(pair, w, d)
    d.add_definition(xml + b" ")
    conn.send(start + wp.definition(xml) + wp.end_of(cyc, d))
    fr = answer(conn)
    conn.close()
    check(fr is not None and fr[0] == wp.NACK, "a tampered cycle got %s" % wp.describe(fr))
    pair.wait_released()
    next_point_has_none("after a refused cycle")

    # Cut before END.
    conn, w = session(pair, 4)
    d = wp.CycleDigest()
    cyc, start = valid_start(pair, w, d)
    mark = LogMark(rep)
    conn.send(start + wp.definition(xml, d))
    mark.wait("carries the VM's definition", what="the replica to stage the definition")
    conn.close()
    pair.wait_released()
    next_point_has_none("after a cut session")

    # Cut before END, and the replica restarted.
    conn, w = session(pair, 4)
    d = wp.CycleDigest()
    cyc, start = valid_start(pair, w, d)
    mark = LogMark(rep)
    conn.send(start + wp.definition(xml, d))
    mark.wait("carries the VM's definition", what="the replica to stage the definition")
    rep.stop()
    conn.close()
    rep.start()
    next_point_has_none("after a restart")
    pair.legit_sync("the real primary afterwards")
    pair.pri.stop()
    rep.stop()
