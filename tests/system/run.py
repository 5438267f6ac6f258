#!/usr/bin/env python3
"""Run replicad's system tests: every test_* function in tests/system/test_*.py.

  run.py [-k SUBSTRING] [-j N] [--seed N] [--keep] [--list]

Each test gets a fresh temporary directory and a seed derived from the
run's seed; both are printed so a failure can be reproduced with
--seed N -k NAME.  The last line is "N passed, N failed, N skipped" (a
test skips only when a tool it needs is missing, and says which).

-j N (default: the number of CPUs) runs N tests at a time, each in its own
process with its own range of ports; a test's output is printed in one
piece when it ends.  Tests of a module that sets SERIAL = True (loop
devices, mounts shared with the host) run one at a time, in a lane of
their own beside the others.
"""
import argparse
import concurrent.futures
import importlib.util
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402

PORT_BASE, PORTS_PER_WORKER = 20000, 500     # below the kernel's ephemeral range


def discover(module=None):
    """[(name, function, serial)] in a stable order (of one module's file)."""
    tests = []
    for fn in sorted(os.listdir(HERE)):
        if fn.startswith("test_") and fn.endswith(".py") and module in (None, fn[5:-3]):
            spec = importlib.util.spec_from_file_location(fn[:-3], os.path.join(HERE, fn))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            for name in sorted(dir(mod)):
                if name.startswith("test_") and callable(getattr(mod, name)):
                    tests.append(("%s.%s" % (fn[5:-3], name[5:]), getattr(mod, name),
                                  bool(getattr(mod, "SERIAL", False))))
    return tests


def run_one(name, fn, seed, keep):
    """Run one test here; print its lines; return "passed", "failed" or "skipped"."""
    tseed = (seed * 1000003 + sum(map(ord, name))) % (1 << 31)
    env = harness.Env(name.replace(".", "-"), tseed, keep=keep)
    t0 = time.monotonic()
    ok = skip = False
    try:
        fn(env)
        ok = True
    except harness.Skip as e:
        ok = skip = True
        print("skip %s: %s" % (name, e), flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure
        print("FAIL %s (seed %d, dir %s): %s" % (name, tseed, env.dir, e), flush=True)
        if not isinstance(e, harness.TestFailure):
            traceback.print_exc(file=sys.stdout)
    finally:
        # A sanitizer report fails the test, whatever else it saw.
        reports = env.sanitizer_reports()
        if reports:
            if ok:
                print("FAIL %s (seed %d, dir %s): sanitizer report"
                      % (name, tseed, env.dir), flush=True)
            print("\n".join(reports), flush=True)
            ok = skip = False
        env.cleanup(ok)
    if skip:
        return "skipped"
    if ok:
        print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
        return "passed"
    return "failed"


SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", re.M)


def run_parallel(tests, seed, keep, jobs):
    """Each test in a child process (run.py --only NAME); at most jobs at a
    time, the serial ones one after another among them.  Returns the three
    counts."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    slots = queue.Queue()
    for i in range(jobs):
        slots.put(i)
    out_lock = threading.Lock()
    pki = tempfile.mkdtemp(prefix="replicad-pki-run-")

    def child(name):
        slot = slots.get()
        try:
            lo = PORT_BASE + slot * PORTS_PER_WORKER
            env = dict(os.environ, REPLICAD_TEST_PORTS="%d-%d" % (lo, lo + PORTS_PER_WORKER - 1),
                       REPLICAD_TEST_PKI=pki, PYTHONUNBUFFERED="1")
            cmd = [sys.executable, os.path.abspath(__file__), "--only", name, "--seed", str(seed)]
            if keep:
                cmd.append("--keep")
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               text=True, errors="replace")
        finally:
            slots.put(slot)
        m = SUMMARY.search(p.stdout)
        text = SUMMARY.sub("", p.stdout).rstrip("\n")
        with out_lock:
            if m:
                for k, v in zip(("passed", "failed", "skipped"), m.groups()):
                    counts[k] += int(v)
            else:
                counts["failed"] += 1
                text += "\nFAIL %s: its process exited %d without a summary" % (name, p.returncode)
            if text:
                print(text, flush=True)

    try:
        parallel = [t[0] for t in tests if not t[2]]
        serial = [t[0] for t in tests if t[2]]

        def serial_lane():
            for name in serial:
                child(name)
        # The serial tests run one after another in a lane of their own,
        # beside the others (a slot each, like every test), so that the
        # run does not end with one test at a time.
        with concurrent.futures.ThreadPoolExecutor(jobs + 1) as ex:
            lane = ex.submit(serial_lane)
            list(ex.map(child, parallel))
            lane.result()
    finally:
        shutil.rmtree(pki, ignore_errors=True)
    return counts["passed"], counts["failed"], counts["skipped"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1, help="tests at a time (default: CPUs)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep temp dirs of passing tests")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--only", help=argparse.SUPPRESS)     # one test by exact name (a -j child)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    if a.only:
        tests = [t for t in discover(a.only.split(".")[0]) if t[0] == a.only]
    else:
        tests = [t for t in discover() if a.k in t[0]]
    if a.list:
        print("\n".join(t[0] + (" (serial)" if t[2] else "") for t in tests))
        return 0
    if not a.only:
        print("system tests: %d, seed %d, %d at a time (reproduce: tests/system/run.py --seed %d -k NAME)"
              % (len(tests), seed, max(1, a.j), seed), flush=True)
    if a.j > 1 and not a.only and len(tests) > 1:
        passed, failed, skipped = run_parallel(tests, seed, a.keep, a.j)
    else:
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for name, fn, _ in tests:
            counts[run_one(name, fn, seed, a.keep)] += 1
        passed, failed, skipped = counts["passed"], counts["failed"], counts["skipped"]
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
