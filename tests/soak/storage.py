#!/usr/bin/env python3
"""Long form of the storage-fault campaigns (tests/system/test_storage.py):
I/O errors through the LD_PRELOAD shim swept over the calls of growing
cycles, and a small loop-mounted ext4 running out of space, repeated with
fresh environments until the time is up.

  storage.py [--seed N] [--seconds S]     (or SOAK_SEED / SOAK_SECONDS)

Prints one line of counts per campaign run and a total; exits 1 at the
first failure (with its seed and directory, which is kept).
"""
import argparse
import os
import random
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "system"))
import harness  # noqa: E402
import test_storage  # noqa: E402

ROUNDS = 25


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or None)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    print("storage soak: seed %d, %.0f s" % (seed, a.seconds), flush=True)
    rng = random.Random(seed)
    total = {}
    end = time.monotonic() + a.seconds
    runs = 0
    while time.monotonic() < end:
        kind = ("eio", "enospc")[runs % 2]
        fn = test_storage.eio_campaign if kind == "eio" else test_storage.enospc_campaign
        rseed = rng.randrange(1 << 31)
        env = harness.Env("soak-storage-%s" % kind, rseed)
        ok = False
        try:
            counts = fn(env, ROUNDS)
            ok = True
        except harness.Skip as e:
            print("skip %s: %s" % (kind, e), flush=True)
            counts = {"skipped": 1}
            ok = True
        except Exception as e:  # noqa: BLE001 - report every failure
            print("FAIL %s (seed %d, dir %s): %s" % (kind, rseed, env.dir, e), flush=True)
            if not isinstance(e, harness.TestFailure):
                traceback.print_exc()
        finally:
            env.cleanup(ok)
        if not ok:
            return 1
        runs += 1
        print("%s seed %d: %s" % (kind, rseed, ", ".join("%s %d" % kv for kv in sorted(counts.items()))),
              flush=True)
        for k, v in counts.items():
            key = "%s %s" % (kind, k)
            total[key] = total.get(key, 0) + v
    print("total: %d runs; %s" % (runs, ", ".join("%s %d" % kv for kv in sorted(total.items()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
