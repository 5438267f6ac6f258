#!/usr/bin/env python3
"""Run replicad's system tests: every test_* function in tests/system/test_*.py.

  run.py [-k SUBSTRING] [--seed N] [--keep] [--list]

Each test gets a fresh temporary directory and a seed derived from the
run's seed; both are printed so a failure can be reproduced with
--seed N -k NAME.  The last line is "N passed, N failed, N skipped" (a
test skips only when a tool it needs is missing, and says which).
"""
import argparse
import importlib.util
import os
import random
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402


def discover():
    tests = []
    for fn in sorted(os.listdir(HERE)):
        if fn.startswith("test_") and fn.endswith(".py"):
            spec = importlib.util.spec_from_file_location(fn[:-3], os.path.join(HERE, fn))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            for name in sorted(dir(mod)):
                if name.startswith("test_") and callable(getattr(mod, name)):
                    tests.append(("%s.%s" % (fn[5:-3], name[5:]), getattr(mod, name)))
    return tests


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep temp dirs of passing tests")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    tests = [t for t in discover() if a.k in t[0]]
    if a.list:
        print("\n".join(t[0] for t in tests))
        return 0
    print("system tests: %d, seed %d (reproduce: tests/system/run.py --seed %d -k NAME)"
          % (len(tests), seed, seed), flush=True)
    passed = failed = skipped = 0
    for name, fn in tests:
        tseed = (seed * 1000003 + sum(map(ord, name))) % (1 << 31)
        env = harness.Env(name.replace(".", "-"), tseed, keep=a.keep)
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
                traceback.print_exc()
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
            skipped += 1
        elif ok:
            passed += 1
            print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
        else:
            failed += 1
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
