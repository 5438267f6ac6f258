"""replctl's progress line (replctl(8): "On a terminal, long operations show
a progress line on the standard error"): shown when replctl runs on a
terminal, and nothing extra when its output goes to a pipe.

The terminal is a pty: replctl's stdout and stderr are its slave end and
the test reads everything from the master.  The disk is large enough
(576 MiB of random data) for its first cycle to last 1.5 to 2 seconds on
the development machine (2 CPUs; see "cycle 1 done: ... N ms" in the
primary's log), so that the daemon reports progress (every half second)
a few times.
"""
import json
import os
import pty
import re
import select
import subprocess
import time

from harness import REPLCTL, TestFailure, check

VM = "web01"
MiB = 1 << 20
SIZE = 576 * MiB

# "\rweb01: cycle 42%  242.0 MiB of 576.0 MiB  180.2 MiB/s  ETA 1s\033[K"
PROGRESS = re.compile(r"\r%s: (cycle|resync) (\d+)%%  (\S+ \S+) of (\S+ \S+)  \S+ \S+/s  ETA (\S+)\x1b\[K"
                      % VM)


def on_tty(daemon, *args, timeout=60):
    """Run replctl with stdout and stderr on a pty; return (rc, everything
    it wrote, as text)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([REPLCTL, "-s", daemon.socket] + list(args), stdin=subprocess.DEVNULL,
                             stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                p.kill()
                p.wait()
                raise TestFailure("replctl %s on a tty did not finish in %ds; it wrote %r"
                                  % (" ".join(args), timeout, out))
            r, _, _ = select.select([master], [], [], min(left, 0.5))
            if not r:
                continue
            try:
                b = os.read(master, 65536)
            except OSError:         # EIO: every slave end is closed
                break
            if not b:
                break
            out += b
        rc = p.wait(10)
    finally:
        os.close(master)
    return rc, out.decode(errors="replace")


def last_cycle(daemon):
    return json.loads(daemon.ok("status", VM, "--json").out)["vms"][0]["last_cycle"]


def setup(env):
    disk = env.make_disk(env.path("src", "big.img"), SIZE)
    rep = env.replica().start()
    pri = env.primary({VM: [disk]}, rep.port).start()
    return pri, rep, disk


def dirty_everywhere(env, disk, step, length=4096):
    """One random write of length bytes in every step bytes of the disk:
    the next cycle (or resync) has the whole disk to go through."""
    with open(disk, "r+b") as f:
        for off in range(0, SIZE, step):
            f.seek(off + env.rng.randrange(0, step - length + 1))
            f.write(env.rng.randbytes(length))


def size_of(text):
    """Bytes in "12.5 MiB" (as replicad prints sizes)."""
    v, unit = text.split()
    return float(v) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB", "PiB"].index(unit)


def check_tty_output(daemon, rc, text, kind, what):
    """rc 0; at least one progress line of kind with a percentage and an
    ETA, each rewritten in place (\\r ... erase to end of line); then, on
    a line of its own, "point N" and nothing else."""
    check(rc == 0, "%s: rc %d, output %r" % (what, rc, text))
    lines = PROGRESS.findall(text)
    if not lines:
        raise TestFailure("%s: no progress line with a percentage and an ETA on the tty (the cycle "
                          "took %d ms); output %r" % (what, last_cycle(daemon)["duration_ms"], text))
    check(all(k == kind for k, *_ in lines), "%s: progress lines %r, expected %r ones" % (what, lines, kind))
    check("\r" in text and "ETA" in text, "%s: output %r" % (what, text))
    for _, pct, done, total, _ in lines:
        check(0 <= int(pct) <= 100 and size_of(done) <= size_of(total),
              "%s: progress line shows %s%%, %s of %s: %r" % (what, pct, done, total, text))
    rest = PROGRESS.sub("", text)
    # The progress line ends with a newline (the tty shows "\r\n") before
    # the result, which is "point N".
    m = re.fullmatch(r"\r\npoint (\d+)\r\n", rest)
    check(m is not None, "%s: besides the progress lines replctl wrote %r (all of it: %r)" % (what, rest, text))
    return int(m.group(1)), lines


def check_pipe_output(daemon, r, what):
    check(r.rc == 0, "%s: %r" % (what, r))
    check(re.fullmatch(r"point \d+\n", r.out) is not None, "%s: stdout is %r, not \"point N\\n\"" % (what, r.out))
    check(r.err == "", "%s: stderr is %r, not empty" % (what, r.err))
    check(last_cycle(daemon)["duration_ms"] >= 700,
          "%s: the cycle took only %d ms: too short to tell whether progress would show"
          % (what, last_cycle(daemon)["duration_ms"]))
    return int(r.out.split()[1])


def test_sync_progress_on_tty_only(env):
    pri, rep, disk = setup(env)
    rc, text = on_tty(pri, "sync", VM, "--wait")
    pt, _ = check_tty_output(pri, rc, text, "cycle", "first cycle of %d MiB" % (SIZE // MiB))
    # The same kind of cycle, replctl's output in pipes: "point N\n" only.
    # (Half the blocks dirty: a cycle as long as the first.)
    dirty_everywhere(env, disk, 128 << 10)
    r = pri.ctl("sync", VM, "--wait")
    pt2 = check_pipe_output(pri, r, "sync --wait into a pipe")
    check(pt2 > pt, "points %d then %d" % (pt, pt2))
    # stdout a pipe, stderr a terminal: still nothing extra.
    dirty_everywhere(env, disk, 256 << 10)
    master, slave = pty.openpty()
    try:
        p = subprocess.run([REPLCTL, "-s", pri.socket, "sync", VM, "--wait"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=slave, timeout=60)
    finally:
        os.close(slave)
    err = b""
    while select.select([master], [], [], 0)[0]:
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        err += b
    os.close(master)
    check(p.returncode == 0 and re.fullmatch(rb"point \d+\n", p.stdout) is not None and err == b"",
          "sync --wait, stdout a pipe, stderr a tty: rc %d, stdout %r, stderr %r"
          % (p.returncode, p.stdout, err))
    pri.stop()
    rep.stop()


def test_resync_progress_on_tty(env):
    pri, rep, disk = setup(env)
    pri.ok("sync", VM, "--wait")
    # An eighth of every 1 MiB chunk differs: the resync compares the
    # whole disk and patches every chunk (two to three seconds here).
    dirty_everywhere(env, disk, MiB, 128 << 10)
    rc, text = on_tty(pri, "resync", VM, "--wait")
    check_tty_output(pri, rc, text, "resync", "resync on a tty")
    dirty_everywhere(env, disk, MiB, 128 << 10)
    r = pri.ctl("resync", VM, "--wait")
    check_pipe_output(pri, r, "resync --wait into a pipe")
    pri.stop()
    rep.stop()
