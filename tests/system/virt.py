"""libvirt for the system tests: a private libvirtd per test, the tiny test
guest (tests/guest), its disks and domain XML, and checks of the points
(disk images) a guest's writes leave behind.

LibvirtDaemon runs libvirtd as root in a mount namespace of its own, where
/run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and
/etc/libvirt are bind mounts of directories in the test's directory: it
never sees nor touches the host's libvirt (domains, networks, pools), and
two tests run two daemons side by side.  Clients reach it through the
URI qemu:///system?socket=... (LibvirtDaemon.uri).

QEMU runs as user libvirt-qemu.  libvirt chowns the files a domain uses
(images, kernel, initrd, console log) but not directories: every parent
of those files must be traversable by that user, and a directory QEMU
creates files in (an NBD socket, a backup's scratch file) must be
writable by it (qemu_dir).
"""
import fcntl
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
from xml.sax.saxutils import escape, quoteattr

from harness import ROOT, Skip, TestFailure, check, wait_for

MKGUEST = os.path.join(ROOT, "tests", "guest", "mkguest")
QEMU_USER = "libvirt-qemu"
# Generous: a TCG guest boots in seconds on an idle machine, far slower on
# a loaded one.
BOOT_TIMEOUT = 240.0


def _which(prog):
    """prog on PATH or in the sbin directories (not on every root's PATH)."""
    return shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _run(args, what, timeout=300, ok=(0,), **kw):
    """Run a command; fail the test with its output if it exits otherwise."""
    p = subprocess.run(args, capture_output=True, text=True, errors="replace",
                       timeout=timeout, **kw)
    if p.returncode not in ok:
        raise TestFailure("%s: %s exited %d:\n%s%s" % (what, " ".join(map(shlex.quote, args)),
                                                   p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
    return p


# --- processes in a mount namespace -----------------------------------------

def _mnt_ns(pid):
    """(dev, inode) naming the mount namespace of process pid, or None if
    it has gone (or is a zombie)."""
    try:
        st = os.stat("/proc/%d/ns/mnt" % pid)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pid_alive(pid):
    """Whether process pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def procs_in_ns(ns):
    """The PIDs of the live processes in mount namespace ns."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and _mnt_ns(int(d)) == ns:
            out.append(int(d))
    return out


def _signal_in_ns(pids, ns, sig):
    """Send sig to each of pids still in namespace ns (a PID reused by an
    unrelated process since is left alone)."""
    for pid in pids:
        if _mnt_ns(pid) == ns:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


# --- the private daemon --------------------------------------------------------

class LibvirtDaemon:
    """A private libvirtd (QEMU driver) under env.path(name).

    Its files: etc/ (libvirtd.conf, qemu.conf), run/, lib/, cache/, log/
    (bound over the system's paths inside the namespace; log/qemu/DOM.log
    has QEMU's own messages), sock/libvirt-sock, libvirtd.log.

    It sits in env.procs like a Popen (poll/kill/wait), so Env.cleanup
    ends it: kill() destroys every domain, stops libvirtd and ends any
    process left in its namespace.  The namespace's processes are found by
    /proc/PID/ns/mnt: QEMU is not libvirtd's child (libvirt daemonizes it),
    but it shares libvirtd's namespace (qemu.conf: namespaces = [ ])."""

    def __init__(self, env, name="lv"):
        for prog in ("libvirtd", "virsh", "unshare", "qemu-system-x86_64", "qemu-img"):
            if _which(prog) is None:
                raise Skip("%s is not installed (tools/install-deps installs it)" % prog)
        if os.geteuid() != 0:
            raise Skip("a private libvirtd needs root (bind mounts in a mount namespace)")
        self.env, self.name = env, name
        self.dir = env.path(name)
        self.sock = os.path.join(self.dir, "sock", "libvirt-sock")
        check(len(self.sock) <= 100, "libvirt socket path too long for a unix socket: %s" % self.sock)
        self.uri = "qemu:///system?socket=" + self.sock
        self.log = os.path.join(self.dir, "libvirtd.log")
        self.proc = self.ns = None
        make_traversable(env.dir)

    def start(self):
        d = self.dir
        for sub in ("etc", "run", "lib", "cache", "log", "sock"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "etc", "libvirtd.conf"), "w") as f:
            f.write('unix_sock_dir = "%s"\n' % os.path.dirname(self.sock)
                    + 'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                    + 'log_outputs = "3:file:%s"\n' % self.log)
        with open(os.path.join(d, "etc", "qemu.conf"), "w") as f:
            # No cgroups: the host's cgroup tree is shared, and two private
            # daemons would both name their first domain's group
            # machine/qemu-1-NAME.  No AppArmor/SELinux profiles (written
            # under the host's /etc/apparmor.d); DAC (user libvirt-qemu)
            # stays.  QEMU writes its log and file chardevs itself: no
            # virtlogd to run and stop.  QEMU stays in the daemon's mount
            # namespace (libvirt would give each one its own, with a
            # private /dev): stop() finds every process there.
            f.write('cgroup_controllers = [ ]\nsecurity_driver = "none"\nstdio_handler = "file"\n'
                    'namespaces = [ ]\n')
        binds = " ".join("%s:%s" % (shlex.quote(os.path.join(d, sub)), target)
                         for sub, target in (("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
                                             ("cache", "/var/cache/libvirt"),
                                             ("log", "/var/log/libvirt"), ("etc", "/etc/libvirt")))
        script = ("set -e\n"
                  "for b in %s; do mkdir -p \"${b#*:}\"; mount --bind \"${b%%:*}\" \"${b#*:}\"; done\n"
                  # The default PID file, /run/libvirtd.pid, is shared with
                  # the host's libvirtd (and other private ones).
                  "exec %s -p /run/libvirt/libvirtd.pid\n" % (binds, shlex.quote(_which("libvirtd"))))
        logf = open(self.log, "ab")
        # Its own session: the process group is the daemon's alone.
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                     start_new_session=True)
        logf.close()
        self.env.procs.append(self)
        # It answers once its drivers are up: probing QEMU's capabilities
        # takes some 8 s here (not cached: the host CPUID differs between
        # runs, which invalidates libvirt's cache).
        wait_for(lambda: self.proc.poll() is not None
                 or self.virsh("version", check=False, timeout=60) is not None,
                 120, 0.1, what="the private libvirtd to answer on %s" % self.sock)
        check(self.proc.poll() is None, "libvirtd exited at start (%s):\n%s"
              % (self.proc.returncode, self.log_text()[-3000:]))
        self.ns = _mnt_ns(self.proc.pid)
        check(self.ns is not None and self.ns != _mnt_ns(os.getpid()),
              "libvirtd is not in a mount namespace of its own")
        return self

    def virsh(self, *args, check=True, timeout=120):
        """Run virsh against this daemon; its stdout, or None on failure
        (or after timeout seconds) when check is False, a TestFailure when
        it is True."""
        cmd = [_which("virsh"), "-q", "-c", self.uri] + [str(a) for a in args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
            rc, err = p.returncode, p.stderr.strip()
        except subprocess.TimeoutExpired:
            rc, err = None, "no answer in %.0fs" % timeout
        if rc != 0:
            if not check:
                return None
            raise TestFailure("virsh %s failed (exit %s): %s\nlibvirtd log tail:\n%s"
                              % (" ".join(map(str, args)), rc, err, self.log_text()[-2000:]))
        return p.stdout

    def domains(self):
        """Names of all defined or running domains."""
        out = self.virsh("list", "--all", "--name")
        return [ln.strip() for ln in out.splitlines() if ln.strip()]

    def pids(self):
        """The PIDs of every process of this daemon (libvirtd, QEMU...)."""
        return procs_in_ns(self.ns) if self.ns else []

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, timeout=60.0):
        """Destroy every running domain, stop libvirtd, and make sure no
        process of the namespace is left (SIGKILL by PID as a last resort).
        Returns the PIDs that had to be killed that way (a test asserts
        it is empty)."""
        if self.proc is None:
            return []
        if self.ns is None and self.proc.poll() is None:
            self.ns = _mnt_ns(self.proc.pid)     # start() failed before it looked
            if self.ns == _mnt_ns(os.getpid()):
                self.ns = None                   # not yet in its namespace: nothing else is
        leftovers = []
        if self.proc.poll() is None:
            running = (self.virsh("list", "--name", check=False, timeout=30) or "").split()
            for dom in running:
                self.virsh("destroy", dom, check=False, timeout=60)
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.ns:
            left = self.pids()
            if left:
                leftovers = left
                _signal_in_ns(left, self.ns, signal.SIGKILL)
                try:
                    wait_for(lambda: not self.pids(), 30, 0.1,
                             what="processes of libvirtd's namespace to end")
                except TestFailure:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None
        return leftovers

    # Env.cleanup treats it like one of its Popen objects.
    def poll(self):
        return None if self.proc is not None else 0

    def kill(self):
        self.stop()

    def wait(self, timeout=None):
        return 0


# --- files QEMU uses --------------------------------------------------------------

def _qemu_ids():
    try:
        pw = pwd.getpwnam(QEMU_USER)
    except KeyError:
        raise Skip("no user %s (libvirt-daemon-system creates it)" % QEMU_USER)
    return pw.pw_uid, pw.pw_gid


def make_traversable(path):
    """Let QEMU (user libvirt-qemu) reach files under path: o+x on path,
    and check every parent already allows it (tempfile.mkdtemp makes 0700
    directories; TMPDIR under /root would not do)."""
    os.chmod(path, os.stat(path).st_mode | 0o001)
    p = os.path.dirname(os.path.abspath(path))
    while p != "/":
        check(os.stat(p).st_mode & 0o001, "%s is not traversable by others: QEMU (user %s) "
              "cannot reach files under it; choose another TMPDIR" % (p, QEMU_USER))
        p = os.path.dirname(p)


def qemu_dir(path):
    """A directory QEMU may create files in (an NBD socket, a scratch
    file): owned by libvirt-qemu, mode 0755.  Returns path."""
    uid, gid = _qemu_ids()
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, 0o755)
    return path


# --- the guest ---------------------------------------------------------------------

def guest_dir():
    """The directory of the test guest's vmlinuz and initrd.img, built by
    tests/guest/mkguest (a no-op when it is up to date).  One cache for all
    tests and runs: $REPLICAD_GUEST_CACHE, else
    ${XDG_CACHE_HOME:-~/.cache}/replicad/guest; a lock beside it lets
    concurrent tests build it once."""
    d = os.environ.get("REPLICAD_GUEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "replicad", "guest")
    d = os.path.abspath(d)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    for prog in ("apt-get", "dpkg-deb", "depmod", "modinfo", "cpio"):
        if _which(prog) is None:
            raise Skip("tests/guest/mkguest needs %s" % prog)
    with open(d + ".lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        _run([MKGUEST, d], "building the test guest", timeout=900)
    return d


def stage_guest(env):
    """A copy of the guest's kernel and initrd in env.path("guest"), where
    QEMU can read them (the cache is often under /root, 0700), returned as
    a directory for domain_xml(guest=...)."""
    d = env.path("guest")
    if not os.path.exists(os.path.join(d, "initrd.img")):
        src = guest_dir()
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        for fn in ("vmlinuz", "initrd.img"):
            shutil.copyfile(os.path.join(src, fn), os.path.join(d, fn + ".tmp"))
            os.rename(os.path.join(d, fn + ".tmp"), os.path.join(d, fn))
    return d


def make_disk(path, size=64 << 20, fmt="qcow2", fs="ext4"):
    """A disk image of size bytes at path: format fmt ("qcow2" or "raw"),
    holding an empty file system fs ("ext4"), or blank (fs None).
    Returns path."""
    check(fmt in ("qcow2", "raw"), "make_disk: format %r" % fmt)
    check(fs in ("ext4", None), "make_disk: file system %r" % fs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    make_traversable(os.path.dirname(os.path.abspath(path)))
    raw = path if fmt == "raw" else path + ".tmp.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
    try:
        if fs == "ext4":
            _run(["mkfs.ext4", "-q", "-F", raw], "make_disk")
        if fmt == "qcow2":
            _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], "make_disk")
    finally:
        if raw != path:
            os.unlink(raw)
    return path


def domain_xml(name, disks, mode="writer", console=None, agent=True, nic=True,
               memory_mib=256, guest=None):
    """The XML of a TCG domain booting the test guest in mode (see
    tests/guest/init) with disks [(image path, "qcow2"|"raw", target dev
    e.g. "vda")] on virtio, the serial console appended to the file
    console (or none), a guest agent channel and a user-mode NIC if
    asked.  guest: the directory of vmlinuz and initrd.img (default:
    guest_dir(); see stage_guest for one QEMU can read)."""
    guest = guest or guest_dir()
    q = quoteattr
    dev = []
    for path, fmt, target in disks:
        dev.append("<disk type='file' device='disk'><driver name='qemu' type=%s/>"
                   "<source file=%s/><target dev=%s bus='virtio'/></disk>"
                   % (q(fmt), q(os.path.abspath(path)), q(target)))
    if nic:
        dev.append("<interface type='user'><model type='virtio'/></interface>")
    if console:
        dev.append("<serial type='file'><source path=%s append='on'/><target port='0'/></serial>"
                   % q(os.path.abspath(console)))
    if agent:
        dev.append("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>")
    # no_timer_check: under TCG on a loaded machine the kernel's check of
    # the IO-APIC timer can fail and panic the boot.
    return ("<domain type='qemu'>\n<name>%s</name>\n<memory unit='MiB'>%d</memory>\n<vcpu>1</vcpu>\n"
            "<os><type arch='x86_64' machine='pc'>hvm</type>"
            "<kernel>%s</kernel><initrd>%s</initrd>"
            "<cmdline>console=ttyS0 quiet no_timer_check replicad.mode=%s</cmdline></os>\n"
            "<features><acpi/></features>\n<on_poweroff>destroy</on_poweroff>\n"
            "<devices>\n%s\n</devices>\n</domain>\n"
            % (escape(name), memory_mib, escape(os.path.join(guest, "vmlinuz")),
               escape(os.path.join(guest, "initrd.img")), escape(mode), "\n".join(dev)))


WROTE = re.compile(r"replicad-guest: wrote (\d+)$")


class Guest:
    """One domain of the test guest on a LibvirtDaemon.  disks: as for
    domain_xml; the console is appended to env.path(NAME + ".console"),
    and the console methods read what the current boot (the last start())
    printed."""

    def __init__(self, lv, name, disks, mode="writer", **xml_opts):
        self.lv, self.name, self.mode = lv, name, mode
        self.console = lv.env.path(name + ".console")
        self.boot_at = 0        # where the current boot's console output starts
        self.xml = domain_xml(name, disks, mode=mode, console=self.console,
                              guest=stage_guest(lv.env), **xml_opts)
        self.xml_path = lv.env.path(name + ".xml")

    def define(self):
        with open(self.xml_path, "w") as f:
            f.write(self.xml)
        self.lv.virsh("define", self.xml_path)
        return self

    def start(self):
        self.boot_at = len(self.console_text(whole=True).encode())
        self.lv.virsh("start", self.name)
        return self

    def state(self):
        """"running", "shut off", "paused"..."""
        return self.lv.virsh("domstate", self.name).strip()

    def shutdown(self, wait=True, timeout=BOOT_TIMEOUT, mode="acpi"):
        """Power off through ACPI's power button (or mode "agent": the
        guest agent's guest-shutdown); the guest stops its work, syncs and
        unmounts first."""
        self.lv.virsh("shutdown", self.name, "--mode", mode)
        if wait:
            self.wait_state("shut off", timeout)

    def wait_state(self, state, timeout=BOOT_TIMEOUT):
        try:
            wait_for(lambda: self.state() == state, timeout, 0.2,
                     what="domain %s to be %s" % (self.name, state))
        except TestFailure:
            raise TestFailure("domain %s is %s, not %s; console tail:\n%s"
                              % (self.name, self.state(), state, self.console_text()[-2000:]))

    def destroy(self):
        """Pull the plug (no error if it is not running)."""
        if self.state() != "shut off":
            self.lv.virsh("destroy", self.name)

    def undefine(self):
        """Forget the domain (and its checkpoints' metadata)."""
        self.lv.virsh("undefine", self.name, "--checkpoints-metadata")

    def pid(self):
        """QEMU's PID (from libvirt's PID file), or None."""
        try:
            with open(os.path.join(self.lv.dir, "run", "qemu", self.name + ".pid")) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def wait_agent(self, timeout=BOOT_TIMEOUT):
        """Wait until the guest agent answers (needed for domfsfreeze)."""
        wait_for(lambda: self.lv.virsh("qemu-agent-command", self.name,
                                       '{"execute":"guest-ping"}', check=False) is not None,
                 timeout, 0.5, what="the guest agent of %s" % self.name)

    def console_text(self, whole=False):
        """What the current boot printed on the console (whole: every boot)."""
        try:
            with open(self.console, "rb") as f:
                if not whole:
                    f.seek(self.boot_at)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def console_lines(self):
        """The console's complete lines (a line being written is left out)."""
        text = self.console_text().replace("\r", "")
        return text[:text.rfind("\n") + 1].splitlines()

    def wrote(self):
        """The highest N of the writer's "wrote N" lines in this boot (0
        before any): files f1..fN and their manifest lines are durable on
        the disk."""
        n = 0
        for line in self.console_lines():
            m = WROTE.search(line)
            if m:
                n = max(n, int(m.group(1)))
        return n

    def wait_wrote(self, n, timeout=BOOT_TIMEOUT):
        """Wait until the guest has acknowledged file n; returns wrote()."""
        def done():
            w = self.wrote()
            return w if w >= n else 0
        try:
            return wait_for(done, timeout, 0.2, what="%s to write file %d" % (self.name, n))
        except TestFailure:
            raise TestFailure("%s wrote %d files, not %d, in %.0fs; console tail:\n%s"
                              % (self.name, self.wrote(), n, timeout, self.console_text()[-2000:]))

    def wait_line(self, substr, timeout=BOOT_TIMEOUT):
        """Wait for a console line holding substr; return it."""
        def find():
            for line in self.console_lines():
                if substr in line:
                    return line
            return None
        try:
            return wait_for(find, timeout, 0.2, what="%r on %s's console" % (substr, self.name))
        except TestFailure:
            raise TestFailure("no console line with %r from %s in %.0fs; console tail:\n%s"
                              % (substr, self.name, timeout, self.console_text()[-2000:]))


# --- checks of points (images of a guest's disk) ----------------------------------

def file_content(n):
    """What the writer puts in file fN (tests/guest/init, content())."""
    line = b"replicad-guest file %d\n" % n
    size = 4096 * (1 + n % 8)
    return (line * (size // len(line) + 1))[:size]


def check_ext4_point(path, tmpdir, strict=True):
    """Check a raw image of a writer guest's disk as a point should be, on
    a copy in tmpdir (the image is left alone), without mounting it:
      * the file system is consistent once its journal is replayed:
        strict: `e2fsck -E journal_only -y` (replay, nothing else), then
        `e2fsck -fn` exits 0 -- anything beyond the journal that needed a
        repair fails the point;  strict=False: `e2fsck -fy` (exit 0 or 1:
        replay and any repair), then `e2fsck -fn` exits 0.
        (A crash-consistent ext4 has stale free counts in its superblock:
        e2fsck reports them, and does not count them as errors.)
      * /manifest lists 1..K and each fN it lists holds exactly the
        writer's content (read with debugfs rdump).
    Returns [1..K]; a TestFailure says what is wrong."""
    with open(path, "rb") as f:
        check(f.read(4) != b"QFI\xfb", "%s is a qcow2 image: check_ext4_point reads raw images "
              "(qemu-img convert -O raw first)" % path)
    os.makedirs(tmpdir, exist_ok=True)
    copy = os.path.join(tmpdir, "ext4-check.raw")
    out = os.path.join(tmpdir, "ext4-check.files")
    subprocess.run(["rm", "-rf", copy, out], check=True)
    first = ["e2fsck", "-E", "journal_only", "-y"] if strict else ["e2fsck", "-fy"]
    try:
        _run(["cp", "--sparse=always", path, copy], "copying the point")
        p = subprocess.run(first + [copy], capture_output=True, text=True, errors="replace")
        check(p.returncode in (0, 1), "%s: %s exited %d:\n%s%s"
              % (path, " ".join(first), p.returncode, p.stdout[-3000:], p.stderr[-1000:]))
        p = subprocess.run(["e2fsck", "-fn", copy], capture_output=True, text=True, errors="replace")
        check(p.returncode == 0, "%s: e2fsck -fn after %s exited %d:\n%s%s"
              % (path, " ".join(first), p.returncode, p.stdout[-3000:], p.stderr[-1000:]))
        os.makedirs(out)
        # rdump of / copies the root directory's files into out (flat: the
        # writer makes no subdirectories).
        p = _run(["debugfs", "-R", "rdump / %s" % out, copy], "debugfs rdump")
        check(os.path.exists(os.path.join(out, "manifest")),
              "%s: no /manifest in the file system (debugfs: %s)" % (path, p.stderr.strip()[-500:]))
        with open(os.path.join(out, "manifest"), "rb") as f:
            lines = f.read().split(b"\n")
        check(lines[-1] == b"", "%s: /manifest ends in a partial line %r" % (path, lines[-1][:40]))
        ns = []
        for i, line in enumerate(lines[:-1]):
            check(line.isdigit(), "%s: /manifest line %d is %r, not a number" % (path, i + 1, line[:40]))
            ns.append(int(line))
        check(ns == list(range(1, len(ns) + 1)),
              "%s: /manifest is not 1..%d: %s" % (path, len(ns), _short(ns)))
        for n in ns:
            fn = os.path.join(out, "f%d" % n)
            check(os.path.exists(fn), "%s: f%d is listed in /manifest but missing" % (path, n))
            with open(fn, "rb") as f:
                data = f.read()
            want = file_content(n)
            if data != want:
                at = next((i for i in range(min(len(data), len(want))) if data[i] != want[i]),
                          min(len(data), len(want)))
                raise TestFailure("%s: f%d (listed in /manifest) has %d bytes, %d expected, "
                                  "first difference at offset %d" % (path, n, len(data), len(want), at))
        return ns
    finally:
        subprocess.run(["rm", "-rf", copy, out])


def _short(ns):
    return repr(ns) if len(ns) <= 20 else "%r ... %r" % (ns[:10], ns[-10:])


def seq_of(path):
    """The sequence number a seq2 guest left in the first 4 KiB block of
    the raw image path: the number left-justified and space-padded to 4095
    characters, then a newline; 0 for an all-zero block (never written)."""
    with open(path, "rb") as f:
        block = f.read(4096)
    if block == bytes(len(block)):
        return 0
    body = block[:4095].rstrip(b" ")
    check(len(block) == 4096 and block[4095:] == b"\n" and body.isdigit()
          and block[len(body):4095] == b" " * (4095 - len(body)),
          "%s: the first block is not a seq2 record: %r..." % (path, block[:40]))
    return int(body)
