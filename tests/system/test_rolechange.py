"""Role changes that meet other work: a sync asked for while a role
change holds the VM, a planned failover whose turn comes behind a cycle
that gets fenced, SIGTERM while the handover cycle waits on the network,
and a planned failover retried while the outcome of a cut-off one is
still unknown.  The network is held where needed by a relay of the
test's own (Relay), never by sleeping.
"""
import os
import selectors
import socket
import subprocess
import threading

import harness
from harness import LogMark, check, wait_for
from test_failover import VM, Hosts, point_of, status
from test_failover_crash import expect_fault_death, history, start_with_fault
from workload import random_write


class Relay:
    """A TCP relay on 127.0.0.1 to port.  hold(n) holds the n-th
    connection from now: accepted, but nothing relayed until release().
    blackhole() drops what the target sends on the connections open now
    (read, never relayed, nothing closed).  One thread polls every socket (no thread per connection, no socket
    closed while another thread waits on it)."""

    def __init__(self, port):
        self.target = port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.count = 0
        self.hold_at = None
        self.held = 0
        self.releasing = threading.Event()
        self.releasing.set()
        self.stopping = threading.Event()
        self.errors = []
        self.events = []
        self.mute_asked = []            # Events set once blackhole() holds
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def hold(self, nth=1):
        with self.lock:
            self.hold_at = self.count + nth
            self.releasing.clear()

    def release(self):
        self.releasing.set()

    def blackhole(self):
        done = threading.Event()
        with self.lock:
            self.mute_asked.append(done)
        if not done.wait(30):
            raise harness.TestFailure("the relay did not blackhole its connections")

    def close(self):
        self.stopping.set()
        self.releasing.set()
        self.thread.join(30)

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        self.pairs = {}                 # socket -> its other end
        self.out = {}                   # socket -> bytes still to send it
        waiting = []                    # held client sockets
        self.upstream = set()           # sockets to the target
        self.muted = set()              # upstream sockets whose bytes are dropped
        try:
            while not self.stopping.is_set():
                with self.lock:
                    asked, self.mute_asked = self.mute_asked, []
                if asked:
                    self.muted |= self.upstream & set(self.pairs)
                    for done in asked:
                        done.set()
                if waiting and self.releasing.is_set():
                    for c in waiting:
                        self._open(sel, c)
                    waiting = []
                for key, mask in sel.select(0.05):
                    x = key.fileobj
                    if x is self.sock:
                        c, _ = self.sock.accept()
                        with self.lock:
                            self.count += 1
                            held = self.count == self.hold_at
                            self.events.append("connection %d%s" % (self.count, " held" if held else ""))
                        if held:
                            self.held += 1
                            waiting.append(c)
                        else:
                            self._open(sel, c)
                    elif x in self.pairs:
                        self._step(sel, x, mask)
        except Exception as e:  # noqa: BLE001 - kept for the failure message
            self.errors.append("relay: %r" % e)
        finally:
            for x in list(self.pairs) + waiting + [self.sock]:
                x.close()
            sel.close()

    def _watch(self, sel, x):
        """Read x unless its other end has too much to send; write x while
        something waits for it."""
        y = self.pairs[x]
        mask = (selectors.EVENT_READ if len(self.out[y]) < (1 << 20) else 0) | \
            (selectors.EVENT_WRITE if self.out[x] else 0)
        if mask:
            sel.modify(x, mask) if x in sel.get_map() else sel.register(x, mask)
        elif x in sel.get_map():
            sel.unregister(x)

    def _step(self, sel, x, mask):
        y = self.pairs[x]
        try:
            if mask & selectors.EVENT_WRITE:
                n = x.send(self.out[x])
                self.out[x] = self.out[x][n:]
            if mask & selectors.EVENT_READ:
                d = x.recv(65536)
                if not d:
                    raise ConnectionError("closed")
                if x not in self.muted:
                    self.out[y] += d
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # One side ended: what it sent goes on to the other, then both
            # go (a NACK just before a close must arrive).
            try:
                y.setblocking(True)
                y.settimeout(10)
                y.sendall(self.out[y])
            except OSError:
                pass
            for z in (x, y):
                if z in sel.get_map():
                    sel.unregister(z)
                self.pairs.pop(z, None)
                self.out.pop(z, None)
                self.upstream.discard(z)
                self.muted.discard(z)
                z.close()
            return
        self._watch(sel, x)
        self._watch(sel, y)

    def _open(self, sel, c):
        try:
            u = socket.create_connection(("127.0.0.1", self.target), timeout=30)
        except OSError as e:
            self.errors.append("connect to %d: %s" % (self.target, e))
            c.close()
            return
        for x in (c, u):
            x.setblocking(False)
            self.out[x] = b""
        self.pairs[c], self.pairs[u] = u, c
        self.upstream.add(u)
        self._watch(sel, c)
        self._watch(sel, u)


def via_relay(h):
    """Host a reaches host b through a Relay (the same identity)."""
    relay = Relay(h.pb)
    h.a.stop()
    text = open(h.a.conf).read().replace("replica = 127.0.0.1:%d\n" % h.pb,
                                         "replica = 127.0.0.1:%d\n" % relay.port)
    open(h.a.conf, "w").write(text)
    h.a.start()
    return relay


def replctl(d, *args):
    return subprocess.Popen([harness.REPLCTL, "-s", d.socket] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sync_refused_while_a_role_change_holds_the_vm(env):
    """A cycle runs (its pre_snapshot hook waits for the test); reverse is
    asked for and waits for it; a `sync --wait` meanwhile is refused at
    once (the VM may not be this host's afterwards), the reverse then
    goes through, and the daemon stops cleanly."""
    started, go, hook = env.path("started"), env.path("go"), env.path("hold.sh")
    with open(hook, "w") as f:
        f.write("touch %s\nuntil [ -e %s ]; do sleep 0.05; done\n" % (started, go))
    h = Hosts(env, hooks=False, vm_extra="pre_snapshot = sh %s\n" % hook)
    with open(go, "w"):
        pass
    point_of(h.a.ok("sync", VM, "--wait"))
    os.unlink(go)
    os.unlink(started)
    h.a.ok("sync", VM)
    wait_for(lambda: os.path.exists(started), 30, what="the cycle's hook to start")
    mark = LogMark(h.a)
    rev = replctl(h.a, "reverse", VM, "--to", "127.0.0.1:%d" % h.pb, "--name", "replica")
    mark.wait("reverse to", "requested")
    r = h.a.ctl("sync", VM, "--wait", timeout=30)
    check(r.rc == 1 and "role change" in r.err, "sync during the reverse: %r" % r)
    r = h.a.ctl("resync", VM, "--wait", timeout=30)
    check(r.rc == 1 and "role change" in r.err, "resync during the reverse: %r" % r)
    r = h.a.ctl("resume", VM, timeout=30)
    check(r.rc == 1 and "role change" in r.err, "resume during the reverse: %r" % r)
    with open(go, "w"):
        pass
    out, err = rev.communicate(timeout=60)
    check(rev.returncode == 0, "reverse: %r %r" % (out, err))
    point_of(h.a.ok("sync", VM, "--wait"))
    h.same("after the reverse")
    h.a.stop()
    h.b.stop()


def test_planned_behind_a_fenced_cycle(env):
    """A planned failover waits for the running cycle, which is fenced (the
    replica failed over meanwhile): the planned failover ends at once,
    refused, instead of holding the VM for ever; the guest that on_demote
    stopped stays stopped (the other host is the primary)."""
    h = Hosts(env)
    relay = via_relay(h)
    try:
        history(h, 1)
        relay.hold()
        h.a.ok("sync", VM)                      # its connection is held
        wait_for(lambda: relay.held == 1, 30, what="the cycle's connection to be held")
        h.b.ok("failover", VM)                  # the replica takes over meanwhile
        h.b.ok("failover", VM, "--commit")
        mark = LogMark(h.a)
        planned = replctl(h.a, "failover", VM, "--planned")
        mark.wait("the next cycle hands the VM over (after the running one)")
        relay.release()
        out, err = planned.communicate(timeout=60)
        check(planned.returncode == 1 and "fenced" in err and "stale primary" in err
              and "stays stopped" in err, "planned failover: %r %r" % (out, err))
        hooks = h.hooks()
        check(hooks[-1] == ["demote", VM, "replica", "2"], "a hook ran after on_demote: %r" % hooks)
        sa = status(h.a)
        check(sa["state"] == "fenced" and sa["role"] == "primary", "host a: %r" % sa)
        r = h.a.ctl("failover", VM, "--planned")     # no role change left behind
        check(r.rc == 1 and "fenced" in r.err and "under way" not in r.err, "again: %r" % r)
        h.a.stop()
        h.b.stop()
    finally:
        relay.close()


def test_sigterm_during_handover(env):
    """SIGTERM while the handover cycle waits on the network: replicad
    exits 0, the operator hears why, the planned failover did not happen
    and the guest is started again (on_promote); after a restart the VM
    replicates as before."""
    h = Hosts(env)
    relay = via_relay(h)
    try:
        history(h, 1)
        relay.hold(2)                           # the probe passes, the cycle waits
        mark = LogMark(h.a)
        planned = replctl(h.a, "failover", VM, "--planned")
        try:
            mark.wait("the next cycle hands the VM over")
        except harness.TestFailure as e:
            raise harness.TestFailure("%s (relay: %r %r)" % (e, relay.events, relay.errors))
        wait_for(lambda: relay.held == 1, 30, what="the handover cycle's connection to be held")
        h.a.stop()                              # SIGTERM; must exit 0
        out, err = planned.communicate(timeout=60)
        check(planned.returncode == 1 and "shutting down" in err and "still the primary" in err,
              "planned failover at SIGTERM: %r %r" % (out, err))
        hooks = h.hooks()
        check(hooks[-2:] == [["demote", VM, "replica", "2"], ["a", "promote", VM, "primary", "1",
                                                              hooks[-1][-1]]],
              "on_demote then on_promote on a, at generation 1: %r" % hooks)
        relay.release()
        h.a.start()
        check(status(h.a)["role"] == "primary" and status(h.a)["generation"] == 1, "a: %r" % status(h.a))
        check(status(h.b)["role"] == "replica" and status(h.b)["generation"] == 1, "b: %r" % status(h.b))
        random_write(env.rng, h.disks[0])
        point_of(h.a.ok("sync", VM, "--wait"))
        h.same("after the restart")
        h.a.stop()
        h.b.stop()
    finally:
        relay.close()


def test_planned_retried_before_outcome_known(env):
    """A planned failover cut off before PROMOTE leaves its outcome to the
    next cycle; a second planned failover asked for before that cycle is
    refused, and so is one asked for while the on_promote that the answer
    runs (the guest starts again here) has not ended: else the guest
    would start here after the other host took it over.  Then the second
    planned failover goes through, and on_promote ran once on a."""
    h = Hosts(env)
    started, go, hook = env.path("started"), env.path("go"), env.path("promote.sh")
    with open(hook, "w") as f:
        f.write("touch %s\nuntil [ -e %s ]; do sleep 0.05; done\n"
                "echo a promote $REPLICAD_VM $REPLICAD_ROLE $REPLICAD_GENERATION $REPLICAD_POINT >> %s\n"
                % (started, go, h.hooklog))
    h.a.stop()
    text = open(h.a.conf).read()
    i = text.index("on_promote = ")
    text = text[:i] + "on_promote = sh %s\n" % hook + text[text.index("\n", i) + 1:]
    open(h.a.conf, "w").write(text)
    h.a.start()
    history(h, 1)
    start_with_fault(h.a, "primary-before-promote")
    r = h.a.ctl("failover", VM, "--planned")
    check(r.rc != 0, "the cut-off failover succeeded: %r" % r)
    expect_fault_death(h.a, "primary-before-promote")
    h.a.start()
    r = h.a.ctl("failover", VM, "--planned")
    check(r.rc == 1 and "not known yet" in r.err, "planned failover before the outcome is known: %r" % r)
    mark = LogMark(h.a)
    point_of(h.a.ok("sync", VM, "--wait"))
    mark.wait("the cut-off handover did not happen")
    wait_for(lambda: os.path.exists(started), 30, what="on_promote to start on a")
    r = h.a.ctl("failover", VM, "--planned")
    check(r.rc == 1 and "under way" in r.err, "planned failover while on_promote runs: %r" % r)
    with open(go, "w"):
        pass
    wait_for(lambda: any(x[:2] == ["a", "promote"] for x in h.hooks()), 30,
             what="on_promote to end on a")

    def handed_over():
        r = h.a.ctl("failover", VM, "--planned")
        check(r.rc == 0 or "under way" in r.err, "planned failover: %r" % r)
        return r.rc == 0
    wait_for(handed_over, 30, 0.2, what="the planned failover once on_promote is done")
    wait_for(lambda: any(x[:2] == ["b", "promote"] for x in h.hooks()), 30, what="on_promote on b")
    check(status(h.b)["role"] == "primary" and status(h.b)["generation"] == 2, "b: %r" % status(h.b))
    promotes_a = [x for x in h.hooks() if x[:2] == ["a", "promote"]]
    check(len(promotes_a) == 1, "on_promote on a ran %d times: %r" % (len(promotes_a), h.hooks()))
    h.same("after the second planned failover")
    h.a.stop()
    h.b.stop()
