"""The qemu tracker against a real QEMU 7.2 without a guest OS: block nodes,
two QMP sockets (replicad's and the test's), writes made with the HMP
command qemu-io.

Two ways to write into a disk:
  * "qemu-io NODE ..." attaches a temporary BlockBackend to the node
    itself, below the copy-before-write filter a cut puts above the node.
    While a cut is held QEMU refuses such writes ("Permission conflict";
    test_qemu_interrupted_cycles), so they are made between syncs only.
  * "qemu-io drvN ..." writes through the BlockBackend of -drive
    if=none,id=drvN, above the filter, as a guest's device does: these may
    land at any time, also during a cut.
"""
import json
import os
import random
import shutil
import socket
import subprocess
import threading

from harness import REPLICAD, LogMark, Skip, TestFailure, assert_same, check, wait_for

MB = 1 << 20
BS = 64 << 10
QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")


class QMP:
    """A minimal QMP client for the test's own socket (thread-safe)."""

    def __init__(self, path):
        # QEMU binds its socket before it listens: a connect between the
        # two is refused, so try again until it listens.
        def attempt():
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(30)
            try:
                s.connect(path)
            except ConnectionRefusedError:
                s.close()
                return False
            self.s = s
            return True
        wait_for(attempt, 30, 0.05, what="QEMU to listen on %s" % path)
        self.f = self.s.makefile("rwb")
        self.lock = threading.Lock()
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        with self.lock:
            msg = {"execute": name}
            if args:
                msg["arguments"] = args
            self.f.write(json.dumps(msg).encode() + b"\n")
            self.f.flush()
            while True:
                line = self.f.readline()
                if not line:
                    raise TestFailure("QEMU closed the test's QMP socket during %s" % name)
                r = json.loads(line)
                if "event" in r:
                    continue
                if "error" in r:
                    raise TestFailure("QMP %s %r: %s" % (name, args, r["error"]["desc"]))
                return r["return"]

    def close(self):
        self.s.close()


class Qemu:
    """qemu-system-x86_64 -machine none with one block node per disk.

    disks: [(image path, format, node name, BlockBackend id or None)]."""

    def __init__(self, env, disks, name="qemu"):
        self.env, self.disks = env, disks
        self.sock = env.path(name + ".qmp")          # replicad's
        self.tsock = env.path(name + "-test.qmp")    # the test's
        self.log = env.path(name + ".log")
        self.proc = self.qmp = None
        self.tmp = env.path(name + "-data")
        os.makedirs(self.tmp, exist_ok=True)

    def start(self):
        args = [QEMU, "-machine", "none", "-nodefaults", "-display", "none"]
        for i, (path, fmt, node, bb) in enumerate(self.disks):
            if bb:
                args += ["-drive", "if=none,id=%s,file=%s,format=%s,node-name=%s" % (bb, path, fmt, node)]
            else:
                args += ["-blockdev", "driver=file,filename=%s,node-name=f%d" % (path, i),
                         "-blockdev", "driver=%s,file=f%d,node-name=%s" % (fmt, i, node)]
        for s in (self.sock, self.tsock):
            if os.path.exists(s):
                os.unlink(s)
            args += ["-qmp", "unix:%s,server=on,wait=off" % s]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=logf)
        self.env.procs.append(self.proc)
        wait_for(lambda: self.proc.poll() is not None or os.path.exists(self.tsock), 10,
                 what="QEMU's QMP socket")
        check(self.proc.poll() is None, "QEMU exited at start: %s" % open(self.log).read()[-2000:])
        self.qmp = QMP(self.tsock)
        return self

    def kill9(self):
        self.qmp.close()
        self.proc.kill()
        self.proc.wait(10)

    def quit(self):
        """A clean shutdown: qcow2 images store their persistent bitmaps."""
        try:
            self.qmp.cmd("quit")
        except (TestFailure, OSError):
            pass
        self.qmp.close()
        self.proc.wait(10)

    def hmp(self, line):
        return self.qmp.cmd("human-monitor-command", **{"command-line": line})

    def write(self, target, off, data):
        """Write data at off through target (a node or a BlockBackend id)."""
        if len(set(data)) == 1:
            cmd = 'qemu-io %s "write -P 0x%02x %d %d"' % (target, data[0], off, len(data))
        else:
            src = os.path.join(self.tmp, "w-%d" % threading.get_ident())
            with open(src, "wb") as f:
                f.write(data)
            cmd = 'qemu-io %s "write -s %s %d %d"' % (target, src, off, len(data))
        out = self.hmp(cmd)
        check(out == "", "%s: %s" % (cmd, out.strip()))

    def nodes(self):
        return self.qmp.cmd("query-named-block-nodes", flat=True)

    def bitmaps(self, node):
        for n in self.nodes():
            if n["node-name"] == node:
                return [b for b in n.get("dirty-bitmaps", []) if "name" in b]
        raise TestFailure("QEMU has no node %s" % node)

    def assert_no_cut_left(self, what, bitmaps=1):
        """(g) Nothing of a cut stays in QEMU after a cycle: no export, no
        job, no node, `bitmaps` replicad.* bitmaps per disk."""
        check(self.qmp.cmd("query-block-exports") == [], "%s: exports left: %r"
              % (what, self.qmp.cmd("query-block-exports")))
        check(self.qmp.cmd("query-block-jobs") == [], "%s: block jobs left: %r"
              % (what, self.qmp.cmd("query-block-jobs")))
        names = sorted(n["node-name"] for n in self.nodes())
        want = sorted([d[2] for d in self.disks] +
                      ["f%d" % i for i, d in enumerate(self.disks) if not d[3]])
        extra = [n for n in names if n not in want and not n.startswith("#")]
        check(extra == [], "%s: nodes left: %r" % (what, extra))
        # the images' own file nodes are anonymous with -drive; a fleecing
        # node's file or filter is anonymous too: count them
        check(len(names) == 2 * len(self.disks), "%s: nodes %r" % (what, names))
        for d in self.disks:
            bms = [b["name"] for b in self.bitmaps(d[2]) if b["name"].startswith("replicad.")]
            check(len(bms) == bitmaps, "%s: %s has bitmaps %r" % (what, d[2], bms))

    def guest_image(self, i, out):
        """Disk i as the guest sees it, as a raw file (qcow2 converted)."""
        path, fmt, node = self.disks[i][0], self.disks[i][1], self.disks[i][2]
        if fmt == "raw":
            return path
        # QEMU caches qcow2 metadata: write it out before reading the file
        if self.proc.poll() is None:
            check(self.hmp('qemu-io %s "flush"' % node) == "", "flush of %s" % node)
        subprocess.run([QEMU_IMG, "convert", "-U", "-f", fmt, "-O", "raw", path, out], check=True)
        return out


def skip_without_qemu():
    if QEMU is None or QEMU_IMG is None:
        raise Skip("qemu-system-x86_64 or qemu-img is not installed (tools/install-deps)")
    return False


def make_image(env, name, size, fmt="raw"):
    path = env.path("src", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if fmt == "raw":
        with open(path, "wb") as f:
            f.truncate(size)
            pos = 0
            while pos < size:             # random content, with holes
                n = min(MB, size - pos)
                if env.rng.random() < 0.5:
                    f.seek(pos)
                    f.write(env.rng.randbytes(n))
                pos += n
    else:
        subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, path, str(size)], check=True)
    return path


def setup(env, disks, vm="web01", start_qemu=True):
    """disks: [(file name, size, format, node, BlockBackend id or None)]."""
    specs = [(make_image(env, f, size, fmt), fmt, node, bb) for f, size, fmt, node, bb in disks]
    q = Qemu(env, specs)
    if start_qemu:
        q.start()
    rep = env.replica().start()
    pri = env.primary({vm: [d[2] for d in specs]}, rep.port)
    text = open(pri.conf).read().replace(
        "[vm %s]\n" % vm, "[vm %s]\ntracker = qemu\nqmp = %s\n" % (vm, q.sock))
    open(pri.conf, "w").write(text)
    pri.start()
    return q, pri, rep


def last_cycle(pri, vm="web01"):
    return json.loads(pri.ok("status", vm, "--json").out)["vms"][0]["last_cycle"]


def sync(pri, vm="web01"):
    r = pri.ok("sync", vm, "--wait")
    words = r.out.split()
    check(len(words) == 2 and words[0] == "point", "sync --wait printed %r" % r.out)
    return int(words[1])


def check_replica(q, rep, what, vm="web01"):
    for i, d in enumerate(q.disks):
        guest = q.guest_image(i, q.env.path("guest-%d.raw" % i))
        assert_same(guest, os.path.join(rep.storage, vm, d[2]), what)


def random_writes(env, q, target, size, n, max_len=MB):
    """n seeded random writes (random bytes or a repeated byte); returns
    the bytes written."""
    total = 0
    for _ in range(n):
        length = env.rng.randrange(1, max_len)
        off = env.rng.randrange(0, size - length)
        if env.rng.random() < 0.7:
            data = env.rng.randbytes(length)
        else:
            data = bytes([env.rng.randrange(256)]) * length
        q.write(target, off, data)
        total += length
    return total


class Writer(threading.Thread):
    """Writes through BlockBackends until stopped; a write failing ends it."""

    def __init__(self, env, q, targets, size, seed):
        super().__init__(daemon=True)
        self.q, self.targets, self.size = q, targets, size
        self.rng = random.Random(seed)
        self.stop_ev = threading.Event()
        self.error = None
        self.count = 0

    def run(self):
        try:
            while not self.stop_ev.is_set():
                t = self.rng.choice(self.targets)
                length = self.rng.randrange(512, 256 << 10)
                off = self.rng.randrange(0, self.size - length)
                self.q.write(t, off, self.rng.randbytes(length))
                self.count += 1
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self):
        self.stop_ev.set()
        self.join(30)
        check(self.error is None, "writer failed: %s" % self.error)


# --- (a), (g): rounds of writes, incremental reads, nothing left in QEMU --------

def test_qemu_rounds(env):
    if skip_without_qemu():
        return
    size = 32 * MB
    q, pri, rep = setup(env, [("a.img", size, "raw", "drive0", None),
                              ("b.img", size, "raw", "drive1", "drv1")])
    try:
        sync(pri)
        check_replica(q, rep, "first cycle")
        q.assert_no_cut_left("after the first cycle")
        check(last_cycle(pri)["bytes_read"] == 2 * size,
              "the first cycle read %d bytes" % last_cycle(pri)["bytes_read"])
        for rnd in range(5):
            # qemu-io NODE (drive0) and the BlockBackend (drv1), between syncs
            n0, n1 = env.rng.randrange(1, 5), env.rng.randrange(0, 4)
            written = random_writes(env, q, "drive0", size, n0)
            written += random_writes(env, q, "drv1", size, n1)
            nwrites = n0 + n1
            sync(pri)
            check_replica(q, rep, "round %d" % rnd)
            q.assert_no_cut_left("round %d" % rnd)
            lc = last_cycle(pri)
            # each write dirties its bytes plus at most a granule each side
            check(lc["bytes_read"] <= written + nwrites * 2 * BS,
                  "round %d: %d bytes written, %d read" % (rnd, written, lc["bytes_read"]))
        # idle cycles read nothing and leave nothing
        times = []
        for _ in range(5):
            sync(pri)
            lc = last_cycle(pri)
            check(lc["bytes_read"] == 0, "an idle cycle read %d bytes" % lc["bytes_read"])
            times.append(lc["duration_ms"])
        q.assert_no_cut_left("after idle cycles")
        print("     idle qemu cycles took %s ms" % times)
        check_replica(q, rep, "after idle cycles")
        # a resync of an idle VM reads the whole disks through a view
        mark = LogMark(pri)
        pri.ok("resync", "web01", "--wait")
        check(last_cycle(pri)["bytes_read"] == 2 * size, "resync read %d" % last_cycle(pri)["bytes_read"])
        check("guest wrote" not in mark.new(), "resync: %s" % mark.new())
        q.assert_no_cut_left("after a resync")
        # a write between idle cycles is found
        q.write("drive0", 5 * MB + 123, b"\x77" * 1000)
        sync(pri)
        check_replica(q, rep, "after a write following idle cycles")
        check(0 < last_cycle(pri)["bytes_read"] <= 2 * BS, "read %d" % last_cycle(pri)["bytes_read"])
        pri.stop()
        rep.stop()
        # the daemon's stop leaves no NBD server behind: one can be started
        q.qmp.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": env.path("x.sock")}})
        q.qmp.cmd("nbd-server-stop")
    finally:
        q.proc.kill()


# --- (b): writes while cycles run ------------------------------------------------

def test_qemu_writes_during_cycles(env):
    if skip_without_qemu():
        return
    size = 16 * MB
    q, pri, rep = setup(env, [("a.img", size, "raw", "drive0", "drv0"),
                              ("b.img", size, "qcow2", "drive1", "drv1")])
    try:
        sync(pri)
        w = Writer(env, q, ["drv0", "drv1"], size, env.rng.randrange(1 << 30))
        w.start()
        try:
            n = 0
            while n < 6 or (w.count < 30 and n < 40):
                sync(pri)
                q.assert_no_cut_left("while writing")
                n += 1
        finally:
            w.stop()
        check(w.count >= 30, "the writer made only %d writes" % w.count)
        sync(pri)
        check_replica(q, rep, "after writes during cycles")
        rep.ok("verify", "web01")
    finally:
        q.proc.kill()


# --- (c): two disks, one cut ---------------------------------------------------------

def seq_of(path):
    """The highest k such that 512-byte sector k (k >= 1) is non-zero."""
    best = 0
    with open(path, "rb") as f:
        data = f.read()
    for k in range(1, len(data) // 512):
        if data[k * 512] != 0:
            best = k
        elif best:
            break
    return best


def test_qemu_two_disks(env):
    """The writer puts sequence number k into disk A, then into disk B
    (sector k of each), while cycles run.  Every point must hold
    seq(A) >= seq(B): never B's write without A's."""
    if skip_without_qemu():
        return
    size = 4 * MB
    q, pri, rep = setup(env, [("a.img", size, "raw", "diskA", "drvA"),
                              ("b.img", size, "raw", "diskB", "drvB")])
    for p, _, _, _ in q.disks:      # start from zeros: seq 0
        with open(p, "r+b") as f:
            f.truncate(0)
            f.truncate(size)
    state = {"k": 0, "stop": False, "error": None}

    def writer():
        try:
            while not state["stop"] and state["k"] < size // 512 - 2:
                k = state["k"] + 1
                q.write("drvA", k * 512, bytes([k % 255 + 1]) * 512)
                q.write("drvB", k * 512, bytes([k % 255 + 1]) * 512)
                state["k"] = k
        except Exception as e:  # noqa: BLE001
            state["error"] = e

    try:
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        points = []
        try:
            while len(points) < 8 or (state["k"] < 40 and len(points) < 40):
                points.append(sync(pri))
        finally:
            state["stop"] = True
            t.join(30)
        check(state["error"] is None, "writer: %s" % state["error"])
        check(state["k"] >= 40, "the writer wrote only %d numbers" % state["k"])
        seen = []
        for pt in points:
            out = rep.ok("failover", "web01", "--test", "--point", str(pt)).out
            a = seq_of(os.path.join(rep.storage, "web01", "test", "diskA"))
            b = seq_of(os.path.join(rep.storage, "web01", "test", "diskB"))
            rep.ok("failover", "web01", "--test", "--cleanup")
            check(a >= b, "point %d holds seq %d on A but %d on B (%s)" % (pt, a, b, out))
            check(a - b <= 1, "point %d: A at %d, B at %d: the cut is not one instant" % (pt, a, b))
            seen.append((a, b))
        check(len(set(seen)) > 2, "the points do not differ: %r" % seen)
        print("     points (seq A, seq B): %s" % seen)
        sync(pri)
        check_replica(q, rep, "after the writer stopped")
    finally:
        q.proc.kill()


# --- (d): QEMU killed and restarted: bitmaps gone -------------------------------------

def test_qemu_restart(env):
    if skip_without_qemu():
        return
    size = 16 * MB + 5120       # the last block is partial
    q, pri, rep = setup(env, [("a.img", size, "raw", "drive0", None)])
    try:
        sync(pri)
        random_writes(env, q, "drive0", size, 3)
        sync(pri)
        bms = q.bitmaps("drive0")
        q.kill9()
        q.start()
        check(q.bitmaps("drive0") == [], "a raw image kept bitmaps %r" % bms)
        random_writes(env, q, "drive0", size, 2)
        mark = LogMark(pri)
        sync(pri)
        mark.wait("drive0: dirty bitmap replicad.", "is missing (QEMU restarted, or a commit did not finish): comparing the whole disk")
        lc = last_cycle(pri)
        check(lc["bytes_read"] == size, "after QEMU's restart the cycle read %d bytes, not %d"
              % (lc["bytes_read"], size))
        check_replica(q, rep, "after QEMU's restart")
        q.assert_no_cut_left("after QEMU's restart")
        # and incremental again
        random_writes(env, q, "drive0", size, 1, max_len=100000)
        sync(pri)
        check(last_cycle(pri)["bytes_read"] < size // 4, "not incremental after the restart")
        check_replica(q, rep, "the cycle after the restart")
    finally:
        q.proc.kill()


# --- (e): qcow2, persistent bitmaps, QEMU killed --------------------------------------

def test_qemu_qcow2_persistent(env):
    if skip_without_qemu():
        return
    size = 16 * MB
    q, pri, rep = setup(env, [("a.qcow2", size, "qcow2", "drive0", "drv0")])
    try:
        random_writes(env, q, "drv0", size, 4)
        sync(pri)
        check(all(b["persistent"] for b in q.bitmaps("drive0")), "bitmaps %r" % q.bitmaps("drive0"))
        random_writes(env, q, "drv0", size, 2, max_len=200000)
        sync(pri)
        check_replica(q, rep, "qcow2")
        # a clean restart keeps the bitmap: the next cycle is incremental
        q.quit()
        q.start()
        random_writes(env, q, "drv0", size, 1, max_len=100000)
        sync(pri)
        check(last_cycle(pri)["bytes_read"] <= 100000 + 2 * BS,
              "after a clean restart the cycle read %d bytes" % last_cycle(pri)["bytes_read"])
        check_replica(q, rep, "after a clean restart")
        # QEMU stores a persistent bitmap at its clean exit; the one it
        # loads at start stays marked in use in the image until then.  A
        # cycle's commit replaces it with one kept in memory, so it is a kill
        # right after a restart that leaves an inconsistent bitmap.
        q.quit()
        q.start()
        random_writes(env, q, "drv0", size, 2)
        q.kill9()
        q.start()
        bms = q.bitmaps("drive0")
        check(len(bms) == 1 and bms[0].get("inconsistent"), "after kill -9: bitmaps %r" % bms)
        random_writes(env, q, "drv0", size, 2)
        mark = LogMark(pri)
        sync(pri)
        mark.wait("drive0: dirty bitmap replicad.", "is inconsistent", "comparing the whole disk")
        check(last_cycle(pri)["bytes_read"] == size, "read %d bytes" % last_cycle(pri)["bytes_read"])
        check_replica(q, rep, "after kill -9 of QEMU with a qcow2")
        q.assert_no_cut_left("after kill -9 of QEMU with a qcow2")
        bms = q.bitmaps("drive0")
        check(not any(b.get("inconsistent") for b in bms), "the inconsistent bitmap stayed: %r" % bms)
    finally:
        q.proc.kill()


# --- interrupted cycles: abort, and replicad killed mid-cycle -------------------------

def test_qemu_interrupted_cycles(env):
    """A cycle that fails after its cut puts the bitmaps back (abort); a
    replicad killed during a cycle leaves its view and two bitmaps per disk
    in QEMU, which the next run clears and merges.  No write is lost: the
    replica ends equal, and incremental cycles stay incremental."""
    if skip_without_qemu():
        return
    size = 32 * MB
    q, pri, rep = setup(env, [("a.img", size, "raw", "drive0", "drv0"),
                              ("b.img", size, "qcow2", "drive1", "drv1")])
    try:
        sync(pri)
        # the replica dies while it stages the cycle: the primary aborts it
        rep.stop()
        rep.start(env_extra={"REPLICAD_FAULT": "replica-staging"})
        written = random_writes(env, q, "drv0", size, 3) + random_writes(env, q, "drv1", size, 3)
        r = pri.ctl("sync", "web01", "--wait", timeout=60)
        check(r.rc != 0, "sync succeeded although the replica was to die: %r" % r)
        wait_for(lambda: not rep.alive(), 30, what="the replica to die at replica-staging")

        def settled():
            try:
                q.assert_no_cut_left("after an aborted cycle")
                return True
            except TestFailure:
                return False
        wait_for(settled, 20, what="QEMU to hold nothing of the aborted cycle")
        written += random_writes(env, q, "drv0", size, 2)
        rep.start()
        sync(pri)
        check_replica(q, rep, "after an aborted cycle")
        lc = last_cycle(pri)
        check(lc["bytes_read"] <= written + 16 * 2 * BS,
              "after an abort the cycle read %d bytes for %d written" % (lc["bytes_read"], written))

        for fault in ("primary-mid-send", "primary-after-ack", "primary-after-commit"):
            pri.stop()
            pri.start(env_extra={"REPLICAD_FAULT": fault})
            for _ in range(12):       # more than 8 MiB to send
                q.write(env.rng.choice(["drv0", "drv1"]), env.rng.randrange(0, size - MB),
                        env.rng.randbytes(MB))
            r = pri.ctl("sync", "web01", "--wait", timeout=60)
            check(r.rc != 0, "sync succeeded although the primary was to die at %s" % fault)
            wait_for(lambda: not pri.alive(), 30, what="the primary to die at %s" % fault)
            pri.proc = None
            if fault != "primary-after-commit":
                # The dead cycle's copy-before-write filter is still above
                # the nodes: a writer attached below it (qemu-io NODE) is
                # refused, so it cannot slip past the point-in-time view.
                out = q.hmp('qemu-io drive0 "write -P 0x33 0 4096"')
                check("Permission conflict" in out, "qemu-io drive0 during a cut: %r" % out)
            # the guest writes on while replicad is down
            random_writes(env, q, "drv0", size, 2)
            random_writes(env, q, "drv1", size, 2)
            mark = LogMark(pri)
            pri.start()
            sync(pri)
            what = "after replicad was killed at %s" % fault
            check_replica(q, rep, what)
            q.assert_no_cut_left(what)
            if fault == "primary-mid-send":
                # (after the ACK the tracker reads the whole disks anyway)
                mark.wait("merged the dirty bitmaps of an unfinished cycle")
            random_writes(env, q, "drive0", size, 1, max_len=100000)
            sync(pri)
            check(last_cycle(pri)["bytes_read"] <= 100000 + 2 * BS,
                  "%s: the next cycle read %d bytes" % (what, last_cycle(pri)["bytes_read"]))
            check_replica(q, rep, what + ", one more cycle")
    finally:
        q.proc.kill()


# --- (f): bad input -------------------------------------------------------------------

def test_qemu_bad_input(env):
    if skip_without_qemu():
        return
    size = 4 * MB
    q, pri, rep = setup(env, [("a.img", size, "raw", "drive0", None)], start_qemu=False)
    # no QEMU: the socket is missing
    r = pri.ctl("sync", "web01", "--wait", timeout=60)
    check(r.rc == 1 and q.sock in r.err and "No such file or directory" in r.err,
          "sync without QEMU: %r" % r)
    check(pri.alive(), "the daemon died when QEMU was missing")
    # --check: a guest not running is a warning, not a failure (a service
    # that runs --check first must start before its guests)
    p = subprocess.run([REPLICAD, "-c", pri.conf, "--check"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0 and
          "[vm web01] warning: tracker qemu: QMP socket %s: No such file or directory" % q.sock in p.stderr
          and "configuration OK" in p.stdout,
          "replicad --check without QEMU: %r" % p)
    # QEMU comes, but another program runs QEMU's only NBD server
    q.start()
    other = env.path("other-nbd.sock")
    q.qmp.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": other}})
    r = pri.ctl("sync", "web01", "--wait", timeout=60)
    check(r.rc == 1 and "QEMU's NBD server is already running and does not serve" in r.err,
          "sync with a foreign NBD server: %r" % r)
    q.assert_no_cut_left("after a cut that found a foreign NBD server", bitmaps=0)
    # once it is gone, the next sync works
    q.qmp.cmd("nbd-server-stop")
    sync(pri)
    check_replica(q, rep, "once QEMU runs")
    # a node QEMU does not have
    pri.stop()
    text = open(pri.conf).read().replace("disk = drive0\n", "disk = drive0\ndisk = drive9\n")
    open(pri.conf, "w").write(text)
    p = subprocess.run([REPLICAD, "-c", pri.conf, "--check"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 1 and p.stderr.strip().endswith(
        "[vm web01] tracker qemu: QEMU has no block node 'drive9' (nodes: drive0, f0)"),
        "replicad --check with a node QEMU does not have: %r" % p)
    pri.start()
    r = pri.ctl("sync", "web01", "--wait", timeout=60)
    check(r.rc == 1 and "QEMU has no block node 'drive9' (nodes: drive0, f0)" in r.err,
          "sync with a node QEMU does not have: %r" % r)
    check(pri.alive(), "the daemon died on a missing node")
    q.assert_no_cut_left("after a refused cut")
    q.proc.kill()


def test_qemu_no_room_for_the_view(env):
    """The point-in-time view copies every cluster the guest overwrites
    during the read into an overlay in STATE_DIR/tracker/VM; QEMU 7.2 fails
    the guest's write when that copy has no room.  So no view is started
    without room: the cycle fails with the reason, the guest runs on and
    writes, nothing of a cut stays in QEMU, and once there is room the
    next cycle replicates everything."""
    if skip_without_qemu():
        return
    size = 256 * MB
    q, pri, rep = setup(env, [("a.img", size, "raw", "drive0", "drv0")])
    tdir = os.path.join(pri.state, "tracker", "web01")
    os.makedirs(tdir, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", tdir], check=True)
    try:
        r = pri.ctl("sync", "web01", "--wait", timeout=60)
        check(r.rc == 1 and "free in %s" % tdir in r.err and "no cut until there is" in r.err,
              "sync without room for the view: %r" % r)
        check(q.qmp.cmd("query-status")["status"] == "running", "the guest was paused")
        random_writes(env, q, "drv0", size, 5)
        q.assert_no_cut_left("after a cut refused for room", bitmaps=0)
        subprocess.run(["mount", "-o", "remount,size=600m", tdir], check=True)
        sync(pri)
        check_replica(q, rep, "once there is room")
        pri.stop()
    finally:
        subprocess.run(["umount", "-l", tdir])
        q.proc.kill()


def test_qemu_external_snapshot_is_not_missed(env):
    """An external snapshot (virsh snapshot-create --disk-only) puts a new
    node above the configured one: the guest writes there, and the old
    node's bitmap would count nothing.  The cycle must fail plainly, not
    report an empty change; naming the new node brings everything over."""
    if skip_without_qemu():
        return
    size = 16 * MB
    q, pri, rep = setup(env, [("a.img", size, "raw", "drive0", "drv0")])
    try:
        sync(pri)
        q.qmp.cmd("blockdev-snapshot-sync", device="drv0", **{
            "snapshot-file": env.path("snap.qcow2"), "snapshot-node-name": "snap0",
            "format": "qcow2"})
        q.write("drv0", 2 * MB, b"\x22" * 65536)          # the guest's write
        r = pri.ctl("sync", "web01", "--wait", timeout=60)
        check(r.rc == 1 and "node drive0 is no longer where the guest writes" in r.err
              and "snap0" in r.err, "sync after an external snapshot: %r" % r)
        check(json.loads(pri.ok("status", "web01", "--json").out)["vms"][0]["health"] != "normal",
              "health stays normal while nothing is replicated")
        with open(os.path.join(rep.storage, "web01", "drive0"), "rb") as f:
            f.seek(2 * MB)
            check(f.read(4) != b"\x22" * 4, "the write arrived through the old node?")
        check(pri.alive(), "the daemon died")
    finally:
        q.proc.kill()


def test_qemu_absurd_disk_size(env):
    """A size QEMU reports is checked before anything is allocated for it
    (a null-co node of 100 TiB): a clear error, the daemon lives on."""
    if skip_without_qemu():
        return
    sock = env.path("big.qmp")
    qlog = open(env.path("big.log"), "ab")
    proc = subprocess.Popen([QEMU, "-machine", "none", "-nodefaults", "-display", "none",
                             "-blockdev", "driver=null-co,size=%d,node-name=big" % (100 << 40),
                             "-qmp", "unix:%s,server=on,wait=off" % sock], stdout=qlog, stderr=qlog)
    env.procs.append(proc)
    try:
        wait_for(lambda: os.path.exists(sock), 10, what="QEMU's QMP socket")
        rep = env.replica().start()
        pri = env.primary({"web01": ["big"]}, rep.port)
        text = open(pri.conf).read().replace(
            "[vm web01]\n", "[vm web01]\ntracker = qemu\nqmp = %s\n" % sock)
        open(pri.conf, "w").write(text)
        pri.start()
        r = pri.ctl("sync", "web01", "--wait", timeout=60)
        check(r.rc == 1 and "more than the 64 TiB replicad supports" in r.err,
              "sync of a 100 TiB node: %r" % r)
        check(pri.alive(), "the daemon died")
    finally:
        proc.kill()
        qlog.close()


def custom_qemu(env, args, name):
    """QEMU with the given block/device arguments and two QMP sockets."""
    q = Qemu(env, [], name=name)
    full = [QEMU] + args
    for s in (q.sock, q.tsock):
        full += ["-qmp", "unix:%s,server=on,wait=off" % s]
    with open(q.log, "ab") as logf:
        q.proc = subprocess.Popen(full, stdout=logf, stderr=logf)
    env.procs.append(q.proc)
    wait_for(lambda: q.proc.poll() is not None or os.path.exists(q.tsock), 10,
             what="QEMU's QMP socket")
    check(q.proc.poll() is None, "QEMU exited at start: %s" % open(q.log).read()[-2000:])
    q.qmp = QMP(q.tsock)
    return q


def custom_pair(env, q, nodes):
    rep = env.replica().start()
    pri = env.primary({"web01": nodes}, rep.port)
    text = open(pri.conf).read().replace(
        "[vm web01]\n", "[vm web01]\ntracker = qemu\nqmp = %s\n" % q.sock)
    open(pri.conf, "w").write(text)
    pri.start()
    return pri, rep


def test_qemu_filter_above_the_node(env):
    """A throttle filter above the disk's node (as libvirt's I/O limits
    make) is part of the guest's path: cycles go on through it."""
    if skip_without_qemu():
        return
    img = make_image(env, "a.img", 8 * MB)
    q = custom_qemu(env, ["-machine", "none", "-nodefaults", "-display", "none",
                          "-object", "throttle-group,id=tg0,x-bps-total=1000000000",
                          "-blockdev", "driver=file,filename=%s,node-name=f0" % img,
                          "-blockdev", "driver=raw,file=f0,node-name=drive0",
                          "-blockdev", "driver=throttle,node-name=thr0,file=drive0,"
                          "throttle-group=tg0"], "thr")
    try:
        pri, rep = custom_pair(env, q, ["drive0"])
        sync(pri)
        q.write("thr0", 3 * MB, b"\x33" * 65536)
        sync(pri)
        assert_same(img, os.path.join(rep.storage, "web01", "drive0"), "through a filter")
        check(last_cycle(pri)["bytes_read"] < MB, "read %r" % last_cycle(pri))
    finally:
        q.proc.kill()


def test_qemu_mirror_moves_the_guest(env):
    """A block mirror that moves the guest's device to another node leaves
    the configured node with no device above it: its bitmaps would count
    nothing, so the cycle fails plainly instead of making an empty point."""
    if skip_without_qemu():
        return
    img = make_image(env, "a.img", 8 * MB)
    tgt = env.path("src", "tgt.img")
    shutil.copyfile(img, tgt)
    q = custom_qemu(env, ["-machine", "pc", "-S", "-nodefaults", "-display", "none",
                          "-blockdev", "driver=file,filename=%s,node-name=f0" % img,
                          "-blockdev", "driver=raw,file=f0,node-name=drive0",
                          "-device", "virtio-blk-pci,drive=drive0,id=vd0"], "mirror")
    try:
        pri, rep = custom_pair(env, q, ["drive0"])
        sync(pri)
        q.qmp.cmd("blockdev-add", driver="raw", **{"node-name": "tgt"},
                  file={"driver": "file", "filename": tgt})
        q.qmp.cmd("blockdev-mirror", device="drive0", target="tgt", sync="full",
                  **{"job-id": "m0"})
        wait_for(lambda: any(j["id"] == "m0" and j["status"] == "ready"
                             for j in q.qmp.cmd("query-jobs")), 20, what="the mirror to be ready")
        r = pri.ctl("sync", "web01", "--wait", timeout=60)
        check(r.rc == 1 and "held by a block job" in r.err, "sync during the mirror: %r" % r)
        q.qmp.cmd("job-complete", id="m0")
        wait_for(lambda: not q.qmp.cmd("query-jobs"), 20, what="the mirror to finish")
        out = q.hmp('qemu-io -d /machine/peripheral/vd0/virtio-backend "write -P 0x5a %d 65536"'
                    % (2 * MB))
        check(out == "", "write through the device: %r" % out)
        r = pri.ctl("sync", "web01", "--wait", timeout=60)
        check(r.rc == 1 and "no device writes through node drive0" in r.err,
              "sync after the mirror moved the guest: %r" % r)
        check(pri.alive(), "the daemon died")
    finally:
        q.proc.kill()
