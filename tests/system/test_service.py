"""Running under a service manager: systemd's notification protocol
(Type=notify) on a socket of the test's own, and the unit files shipped
in tools/systemd checked by systemd-analyze."""
import os
import select
import shlex
import signal
import socket
import subprocess

from harness import REPLCTL, TestFailure, check


def notify_socket(env, abstract=False):
    """A datagram socket like systemd's: (socket, NOTIFY_SOCKET value)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = "replicad-test-%d-%d" % (os.getpid(), env.rng.randrange(1 << 30))
        s.bind("\0" + name)
        return s, "@" + name
    path = env.path("notify.sock")
    s.bind(path)
    return s, path


def next_message(s, proc, what, timeout=60):
    """The next datagram's KEY=VALUE lines as a dict.  The timeout only
    ends a test whose daemon never says it (a hang), it measures nothing."""
    r, _, _ = select.select([s], [], [], timeout)
    if not r:
        raise TestFailure("no notification while waiting for %s (daemon %s)"
                          % (what, "running" if proc.poll() is None else "exited %d" % proc.returncode))
    data = s.recv(4096).decode()
    out = {}
    for line in data.split("\n"):
        if line:
            k, _, v = line.partition("=")
            out[k] = v
    return out


def wait_message(s, proc, key, what, seen=None):
    while True:
        m = next_message(s, proc, what)
        if seen is not None:
            seen.append(m)
        if key in m:
            return m


def start_pair(env, notify, hook_log):
    disk = env.make_disk(env.path("src", "n.img"), 2 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk]}, rep.port)
    text = open(pri.conf).read().replace(
        "interval = 0\n", "interval = 0\npre_snapshot = env > %s\n" % hook_log)
    open(pri.conf, "w").write(text)
    pri.start(wait=False, env_extra={"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "200000"})
    return pri, rep


def check_protocol(env, abstract):
    s, addr = notify_socket(env, abstract)
    hook_log = env.path("hook.env")
    try:
        pri, rep = start_pair(env, addr, hook_log)
        seen = []
        m = wait_message(s, pri.proc, "READY", "READY=1", seen)
        check(m["READY"] == "1", "READY=%r" % m["READY"])
        # Ready means the control socket answers, at once.
        pri.ok("status")
        st = wait_message(s, pri.proc, "STATUS", "STATUS=", seen)
        check(st["STATUS"].startswith("1 VM (1 primary, 0 replica)"), "STATUS=%r" % st["STATUS"])
        # The watchdog: pings at half of WATCHDOG_USEC, from the loop.
        for _ in range(2):
            wait_message(s, pri.proc, "WATCHDOG", "WATCHDOG=1", seen)
        # SIGHUP: RELOADING=1, then READY=1 once the file is applied.
        pri.proc.send_signal(signal.SIGHUP)
        wait_message(s, pri.proc, "RELOADING", "RELOADING=1", seen)
        wait_message(s, pri.proc, "READY", "READY=1 after the reload", seen)
        # Hooks do not inherit the manager's variables.
        pri.ok("sync", "web01", "--wait")
        env_text = open(hook_log).read()
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            check(var + "=" not in env_text, "a hook inherited %s" % var)
        pri.proc.send_signal(signal.SIGTERM)
        m = wait_message(s, pri.proc, "STOPPING", "STOPPING=1", seen)
        check(m["STOPPING"] == "1", "STOPPING=%r" % m["STOPPING"])
        check(pri.proc.wait(60) == 0, "replicad exited %r on SIGTERM" % pri.proc.returncode)
        pri.proc = None
        readies = [x for x in seen if "READY" in x]
        check(len(readies) == 2, "READY at start and after the reload only: %r" % seen)
    finally:
        s.close()


def test_notify_path_socket(env):
    """READY=1 once `replctl status` answers, STATUS= a summary, WATCHDOG=1
    at half the interval asked for, STOPPING=1 at SIGTERM; a hook run by
    the daemon does not see NOTIFY_SOCKET."""
    check_protocol(env, abstract=False)


def test_notify_abstract_socket(env):
    """The same on an abstract socket (NOTIFY_SOCKET=@name), as systemd
    gives in some set-ups."""
    check_protocol(env, abstract=True)


def test_notify_status_follows(env):
    """STATUS= changes when the VMs' health does: a replica that goes away
    turns the line to "critical" after three failed cycles."""
    s, addr = notify_socket(env)
    try:
        pri, rep = start_pair(env, addr, env.path("hook.env"))
        wait_message(s, pri.proc, "READY", "READY=1")
        pri.ok("sync", "web01", "--wait")
        rep.stop()
        for _ in range(3):
            check(pri.ctl("sync", "web01", "--wait").rc == 1, "sync with the replica down succeeded")
        while True:
            m = wait_message(s, pri.proc, "STATUS", "a STATUS= naming the critical VM")
            if "1 critical" in m["STATUS"]:
                break
        pri.stop()
    finally:
        s.close()


# --- bash completion ----------------------------------------------------------

COMPLETION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                          "tools", "bash-completion", "replctl")


def complete(words):
    """What tools/bash-completion/replctl offers for words (the last is
    the word being completed), replctl found on PATH as a shell finds it."""
    script = "source %s; COMP_WORDS=(%s); COMP_CWORD=%d; _replctl; printf '%%s\\n' \"${COMPREPLY[@]}\"" % (
        shlex.quote(COMPLETION), " ".join(shlex.quote(w) for w in words), len(words) - 1)
    env = dict(os.environ, PATH=os.path.dirname(REPLCTL) + os.pathsep + os.environ.get("PATH", ""))
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                       env=env, timeout=60)
    check(p.returncode == 0 and p.stderr == "", "completion of %r: %r" % (words, p))
    return [w for w in p.stdout.split("\n") if w]


def test_bash_completion(env):
    """Commands, each command's options, the VM names the daemon knows (on
    either side) and a VM's point ids, through -s SOCKET as typed."""
    disk = env.make_disk(env.path("src", "c.img"), 1 << 20)
    rep = env.replica().start()
    pri = env.primary({"web01": [disk], "db02": [env.make_disk(env.path("src", "d.img"), 1 << 20)]},
                      rep.port).start()
    pri.ok("sync", "web01", "--wait")
    pri.ok("sync", "web01", "--wait")
    got = complete(["replctl", "-s", pri.socket, "sy"])
    check(got == ["sync"], "commands for 'sy': %r" % got)
    got = complete(["replctl", "-s", pri.socket, ""])
    check("failover" in got and "reload" in got and len(got) == 15, "all commands: %r" % got)
    got = complete(["replctl", "-s", pri.socket, "sync", ""])
    check(sorted(got) == ["db02", "web01"], "VMs of the primary: %r" % got)
    got = complete(["replctl", "-s", rep.socket, "points", "w"])
    check(got == ["web01"], "VMs of the replica for 'w': %r" % got)
    got = complete(["replctl", "-s", rep.socket, "failover", "web01", "--p"])
    check(got == ["--point", "--planned"], "failover options for '--p': %r" % got)
    got = complete(["replctl", "-s", rep.socket, "verify", "web01", "--point", ""])
    pts = [l.split()[0] for l in rep.ok("points", "web01").out.splitlines()[1:]]
    check(len(pts) == 2 and got == pts, "point ids %r, the daemon lists %r" % (got, pts))
    # The VM already given: no more VM names.
    got = complete(["replctl", "-s", pri.socket, "sync", "web01", ""])
    check(got == [], "after the VM: %r" % got)
    # No daemon there: nothing offered, no error on the terminal.
    got = complete(["replctl", "-s", env.path("nothing.sock"), "sync", ""])
    check(got == [], "without a daemon: %r" % got)


def test_notify_socket_never_read(env):
    """A service manager that does not read its socket (its queue full
    after a few datagrams: WATCHDOG=1 every 10 ms) never stops the
    daemon: replctl keeps getting answers and SIGTERM still ends it."""
    s, addr = notify_socket(env)
    try:
        disk = env.make_disk(env.path("src", "u.img"), 1 << 20)
        rep = env.replica().start()
        pri = env.primary({"web01": [disk]}, rep.port)
        pri.start(env_extra={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "20000"})
        for _ in range(100):            # well past a full queue at 10 ms a ping
            pri.ok("status")
        pri.ok("sync", "web01", "--wait")
        pri.stop()                      # exits 0 on SIGTERM, or fails
    finally:
        s.close()
