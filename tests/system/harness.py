"""System-test harness: real replicad processes on loopback in temp dirs.

A test is a function test_NAME(env) in a module tests/system/test_*.py.
env gives a fresh temporary directory, certificates, and helpers to start
daemons (Daemon), run replctl, wait for conditions with a deadline, and
compare files.  Every random choice comes from env.rng, seeded from the
run's seed (printed; pass --seed to reproduce).
"""
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# REPLICAD_BIN_DIR runs the tests against other builds (e.g. sanitizers).
BIN_DIR = os.environ.get("REPLICAD_BIN_DIR", ROOT)
REPLICAD = os.path.join(BIN_DIR, "replicad")
REPLCTL = os.path.join(BIN_DIR, "replctl")
MKCERTS = os.path.join(ROOT, "tools", "mkcerts")
# REPLICAD_SANITIZE=1 (make check-asan): the programs are an ASan+UBSan
# build; each test's processes write any report to SANITIZER.PID in the
# test's directory, and a report fails the test (Env.sanitizer_reports).
SANITIZE = os.environ.get("REPLICAD_SANITIZE") == "1"
SANITIZER_OPTS = {v: os.environ.get(v, "") for v in ("ASAN_OPTIONS", "UBSAN_OPTIONS")}


class TestFailure(AssertionError):
    pass


class Skip(Exception):
    """A test that cannot run here (a tool is missing): counted as
    skipped in the summary, never as passed."""


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def wait_for(cond, timeout=30.0, interval=0.05, what="condition"):
    """Poll cond() until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TestFailure("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


_ports = None


def free_port():
    """A port nothing listens on now.  Parallel runs (run.py -j) give each
    worker its own range in REPLICAD_TEST_PORTS=LOW-HIGH, below the
    kernel's ephemeral range: two workers never pick the same port, nor
    does bind(0) elsewhere."""
    global _ports
    rng = os.environ.get("REPLICAD_TEST_PORTS")
    if not rng:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port
    lo, hi = map(int, rng.split("-"))
    if _ports is None:
        _ports = lo + os.getpid() % (hi - lo + 1)    # a test run after another starts elsewhere
    for _ in range(hi - lo + 1):
        port, _ports = _ports, lo + (_ports + 1 - lo) % (hi - lo + 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise TestFailure("no free port in REPLICAD_TEST_PORTS=%s" % rng)


def file_digest(path, size=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left is None or left > 0:
            n = 1 << 20 if left is None else min(1 << 20, left)
            b = f.read(n)
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h.hexdigest()


def files_equal(a, b):
    return os.path.getsize(a) == os.path.getsize(b) and file_digest(a) == file_digest(b)


def first_difference(a, b):
    """Offset of the first differing byte (or size mismatch) for messages."""
    if os.path.getsize(a) != os.path.getsize(b):
        return "sizes %d != %d" % (os.path.getsize(a), os.path.getsize(b))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x, y = fa.read(1 << 16), fb.read(1 << 16)
            if not x:
                return "equal"
            if x != y:
                for i in range(len(x)):
                    if x[i] != y[i]:
                        return "first difference at offset %d" % (off + i)
            off += len(x)


def assert_same(a, b, what=""):
    if not files_equal(a, b):
        raise TestFailure("%s: %s and %s differ: %s" % (what or "files", a, b, first_difference(a, b)))


class Result:
    def __init__(self, rc, out, err):
        self.rc, self.out, self.err = rc, out, err

    def __repr__(self):
        return "rc=%d out=%r err=%r" % (self.rc, self.out, self.err)


class Daemon:
    """One replicad process with its own config, state and log."""

    def __init__(self, env, name, cert, daemon_extra="", sections=""):
        self.env, self.name = env, name
        self.dir = os.path.join(env.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.state = os.path.join(self.dir, "state")
        self.conf = os.path.join(self.dir, "replicad.conf")
        self.log = os.path.join(self.dir, "replicad.log")
        self.proc = None
        pki = env.pki
        self.text = ("[daemon]\nstate_dir = %s\ntls_cert = %s/%s.pem\ntls_key = %s/%s.key\n"
                     "tls_ca = %s/ca.pem\nlog_level = debug\n%s\n%s\n"
                     % (self.state, pki, cert, pki, cert, pki, daemon_extra, sections))
        with open(self.conf, "w") as f:
            f.write(self.text)

    @property
    def socket(self):
        return os.path.join(self.state, "control.sock")

    def start(self, wait=True, env_extra=None):
        e = dict(os.environ)
        if env_extra:
            e.update(env_extra)
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([REPLICAD, "-c", self.conf], stdout=logf, stderr=logf, env=e)
        logf.close()
        self.env.procs.append(self.proc)
        if wait:
            wait_for(lambda: self.proc.poll() is not None or self.ctl("status").rc == 0,
                     10, what="%s to answer on its control socket" % self.name)
            check(self.proc.poll() is None, "%s exited at start:\n%s" % (self.name, self.log_text()[-2000:]))
        return self

    def ctl(self, *args, timeout=120):
        p = subprocess.run([REPLCTL, "-s", self.socket] + list(args), capture_output=True,
                           text=True, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr)

    def ok(self, *args, timeout=120):
        r = self.ctl(*args, timeout=timeout)
        check(r.rc == 0, "replctl %s on %s failed: %r\nlog tail:\n%s"
              % (" ".join(args), self.name, r, self.log_text()[-3000:]))
        return r

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise TestFailure("%s did not stop on SIGTERM" % self.name)
            check(rc == 0, "%s exited %d on SIGTERM" % (self.name, rc))
        self.proc = None

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Env:
    """Per-test environment: temp dir, certificates, random source."""

    _pki_cache = {}

    def __init__(self, name, seed, keep=False):
        self.name, self.seed, self.keep = name, seed, keep
        # The name is cut short: unix socket paths below it (the NBD
        # socket of tracker qemu is the deepest) must stay under 108 bytes
        # whatever TMPDIR is.
        self.dir = tempfile.mkdtemp(prefix="replicad-%s-" % name[:24])
        self.rng = random.Random(seed)
        self.procs = []
        self.pki = self.make_pki("main", ["primary", "replica", "other"])
        if SANITIZE:
            # Every process the test starts inherits these (tests run
            # one at a time in a process).
            for var, opts in SANITIZER_OPTS.items():
                os.environ[var] = ":".join(o for o in (opts, "log_path=" + self.path("sanitizer")) if o)

    def sanitizer_reports(self):
        """The text of every sanitizer report written during the test."""
        out = []
        for fn in sorted(os.listdir(self.dir)):
            if fn.startswith("sanitizer."):
                with open(os.path.join(self.dir, fn), errors="replace") as f:
                    out.append("%s:\n%s" % (fn, f.read()))
        return out

    def make_pki(self, label, names):
        """A CA and certificates (cached per run: key generation is slow)."""
        key = (label, tuple(names))
        if key not in Env._pki_cache:
            shared = os.environ.get("REPLICAD_TEST_PKI")     # run.py -j: one per run
            if shared:
                import fcntl
                d = os.path.join(shared, "-".join((label,) + tuple(names)))
                with open(os.path.join(shared, "lock"), "w") as lk:
                    fcntl.flock(lk, fcntl.LOCK_EX)
                    if not os.path.exists(os.path.join(d, "done")):
                        os.makedirs(d, exist_ok=True)
                        subprocess.run([MKCERTS, d] + names, check=True)
                        open(os.path.join(d, "done"), "w").close()
            else:
                d = tempfile.mkdtemp(prefix="replicad-pki-%s-" % label)
                subprocess.run([MKCERTS, d] + names, check=True)
            Env._pki_cache[key] = d
        return Env._pki_cache[key]

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def replica(self, name="replica", cert="replica", accept="primary", vms="*", extra=""):
        port = free_port()
        self.replica_port = port
        storage = self.path(name, "storage")
        d = Daemon(self, name, cert, "listen = 127.0.0.1:%d\n" % port,
                   "[accept %s]\nvms = %s\nstorage = %s\n%s" % (accept, vms, storage, extra))
        d.port, d.storage = port, storage
        return d

    def primary(self, vms, port, name="primary", cert="primary", replica_name="replica"):
        """vms: {vm_name: [disk paths]}; interval 0 (cycles only on sync)."""
        secs = ""
        for vm, disks in vms.items():
            secs += "[vm %s]\n" % vm
            for p in disks:
                secs += "disk = %s\n" % p
            secs += "replica = 127.0.0.1:%d\nreplica_name = %s\ninterval = 0\n\n" % (port, replica_name)
        return Daemon(self, name, cert, "", secs)

    def make_disk(self, path, size, fill="random"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
            if fill == "random":
                pos = 0
                while pos < size:
                    n = min(1 << 20, size - pos)
                    f.write(self.rng.randbytes(n))
                    pos += n
        return path

    def cleanup(self, ok):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if ok and not self.keep:
            subprocess.run(["rm", "-rf", self.dir])


# --- helpers added for the hostile-input and error tests ------------------

def tree_digest(path):
    """{relative path: sha256 of a file, or "dir"} of everything under path
    ({} if path does not exist).  Symlinks are recorded, not followed."""
    out = {}
    if not os.path.isdir(path):
        return out
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, path)
            if os.path.islink(p) or not os.path.isfile(p):
                out[rel] = "special"
            else:
                out[rel] = file_digest(p)
    return out


def replica_state(rep, vm):
    """What a refused session must leave untouched on a replica: every file
    under STORAGE/VM (images, .digests, .undo, .staging), the list of
    storage directories, `points VM --json` and the VM's generation and
    last point in `status --json`."""
    pts = rep.ctl("points", vm, "--json")
    st = rep.ctl("status", "--json")
    view = None
    if st.rc == 0:
        for v in json.loads(st.out)["vms"]:
            if v["name"] == vm:
                view = {k: v.get(k) for k in ("role", "generation", "last_point")}
    return {
        "storage": sorted(os.listdir(rep.storage)) if os.path.isdir(rep.storage) else None,
        "files": tree_digest(os.path.join(rep.storage, vm)),
        "points": (pts.rc, pts.out),
        "status": view,
    }


def state_diff(a, b):
    """A short description of how two replica_state() values differ."""
    out = []
    for k in a:
        if a[k] == b[k]:
            continue
        if k == "files":
            for f in sorted(set(a[k]) | set(b[k])):
                if a[k].get(f) != b[k].get(f):
                    out.append("%s: %s -> %s" % (f, a[k].get(f, "absent"), b[k].get(f, "absent")))
        else:
            out.append("%s: %r -> %r" % (k, a[k], b[k]))
    return "; ".join(out)


def wait_state_unchanged(rep, vm, before, what, timeout=10.0):
    """Wait (an abandoned cycle is cleaned up by a worker job) until the
    replica's state for vm equals before; fail with the difference."""
    last = [None]

    def same():
        last[0] = replica_state(rep, vm)
        return last[0] == before
    try:
        wait_for(same, timeout, 0.1, what="%s: replica state unchanged" % what)
    except TestFailure:
        raise TestFailure("%s: the replica's state changed: %s" % (what, state_diff(before, last[0])))


class LogMark:
    """Remember where a daemon's log ends, to look only at what follows."""

    def __init__(self, daemon):
        self.d = daemon
        self.pos = len(daemon.log_text())

    def new(self):
        return self.d.log_text()[self.pos:]

    def wait(self, *substrings, timeout=10.0, what=None):
        """Wait for one new log line holding every substring; return it."""
        def find():
            for line in self.new().splitlines():
                if all(s in line for s in substrings):
                    return line
            return None
        try:
            return wait_for(find, timeout, 0.05, what=what or "log line with %r" % (substrings,))
        except TestFailure:
            raise TestFailure("%s log has no line with %r; new lines:\n%s"
                              % (self.d.name, substrings, self.new()[-3000:]))


# --- file systems on loop devices (reflink and space tests) -----------------

class LoopFs:
    """A file system of type fstype made on a loop device over a sparse
    file inside the test's directory, mounted at env.path(name).  Use as a
    context manager: on exit every process the test started is ended (a
    process must not hold the mount) and the mount and device go."""

    def __init__(self, env, name, fstype, size):
        import shutil
        self.env = env
        mkfs = {"xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
                "btrfs": ["mkfs.btrfs", "-q", "-f"],
                "ext4": ["mkfs.ext4", "-q", "-F", "-m", "0"]}[fstype]
        check(shutil.which(mkfs[0]) is not None,
              "%s missing (tools/install-deps installs it)" % mkfs[0])
        self.img = env.path(name + ".fs")
        self.mnt = env.path(name)
        os.makedirs(self.mnt)
        with open(self.img, "wb") as f:
            f.truncate(size)
        self.dev = subprocess.run(["losetup", "-f", "--show", self.img], check=True,
                                  capture_output=True, text=True).stdout.strip()
        try:
            subprocess.run(mkfs + [self.dev], check=True, capture_output=True)
            subprocess.run(["mount", self.dev, self.mnt], check=True)
        except Exception:
            subprocess.run(["losetup", "-d", self.dev])
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.env.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", self.mnt])
        subprocess.run(["losetup", "-d", self.dev])
        return False


def vm_status(d, vm):
    """The VM's entry in `status --json`."""
    for v in json.loads(d.ok("status", "--json").out)["vms"]:
        if v["name"] == vm:
            return v
    raise TestFailure("%s has no VM %s in status" % (d.name, vm))


def set_vm_keys(d, vm, text):
    """Add key lines to the [vm VM] section of d's configuration."""
    conf = open(d.conf).read()
    head = "[vm %s]\n" % vm
    check(head in conf, "no [vm %s] in %s" % (vm, d.conf))
    open(d.conf, "w").write(conf.replace(head, head + text, 1))


# --- a daemon's wall clock under libfaketime (clock steps) ------------------

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def fake_clock_env(tsfile, t):
    """Set the clock of the daemon started with the returned environment
    (Daemon.start(env_extra=...)) to Unix time t; set_fake_clock() steps it.
    Only the wall clock: CLOCK_MONOTONIC stays true, as on a host whose
    time is stepped."""
    check(os.path.exists(FAKETIME), "libfaketime is missing (tools/install-deps installs it)")
    set_fake_clock(tsfile, t)
    return {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": tsfile, "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "TZ": "UTC",
            "ASAN_OPTIONS": "verify_asan_link_order=0"}   # sanitizer builds


def set_fake_clock(tsfile, t):
    """The faked clock stands at Unix time t (libfaketime reads the file at
    every call)."""
    with open(tsfile, "w") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)))
