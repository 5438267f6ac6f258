#!/usr/bin/env python3
"""make soak: the long forms of the fault campaigns (tests/system/test_campaign.py).

  run.py [--seed N] [--seconds S] [--cycles N] [--kills N] [--keep]

Runs network campaigns (100 cycles each through the fault proxy) and kill -9
campaigns (25 rounds each) in turn, each in a fresh directory with a seed
derived from --seed, until at least --cycles cycles (default 1000) and
--kills kill -9s (default 200) are done, or --seconds have passed.  Every
campaign ends with the full check (final sync, no lost write, every listed
point rebuilt byte-exact, verify, daemons alive, RSS and descriptors flat).
Every fault kind is used, blackholes included (the daemons' keepalive
ends a silent connection).  Prints the counts and
a final PASS or FAIL; the first failing campaign stops the run and keeps
its directory.  Reproduce one campaign with the seed it prints.
"""
import argparse
import os
import random
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "system"))
import harness  # noqa: E402
from faultproxy import KINDS  # noqa: E402
from test_campaign import kill_campaign, network_campaign  # noqa: E402

CYCLES_PER_CAMPAIGN = 100
ROUNDS_PER_CAMPAIGN = 25


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: no limit)")
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    kinds = KINDS
    print("soak: seed %d, targets %d cycles and %d kill -9s%s, faults %s"
          % (seed, a.cycles, a.kills, ", at most %gs" % a.seconds if a.seconds else "", ",".join(kinds)),
          flush=True)
    rng = random.Random(seed)
    t0 = time.monotonic()
    totals, n, ok = {}, 0, True
    cycles = kills = 0
    while cycles < a.cycles or kills < a.kills:
        if a.seconds and time.monotonic() - t0 > a.seconds:
            break
        n += 1
        kind = "network" if cycles * a.kills <= kills * a.cycles else "kill"
        cseed = rng.randrange(1 << 31)
        env = harness.Env("soak-%s-%d" % (kind, n), cseed, keep=a.keep)
        try:
            if kind == "network":
                stats = network_campaign(env, CYCLES_PER_CAMPAIGN, kinds, verbose=a.verbose)
            else:
                stats = kill_campaign(env, ROUNDS_PER_CAMPAIGN, verbose=a.verbose)
        except Exception as e:  # noqa: BLE001 - report, keep the directory
            print("FAIL %s campaign %d (seed %d, dir %s): %s" % (kind, n, cseed, env.dir, e), flush=True)
            if not isinstance(e, harness.TestFailure):
                traceback.print_exc(file=sys.stdout)
            env.cleanup(False)
            ok = False
            break
        env.cleanup(True)
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
        cycles = totals.get("cycles attempted", 0)
        kills = totals.get("kills at crash points", 0) + totals.get("random kills", 0)
        print("soak: %d campaigns, %.0fs: %d cycles attempted, %d kill -9s"
              % (n, time.monotonic() - t0, cycles, kills), flush=True)
    faulted = sum(v for k, v in totals.items() if k.startswith("fault "))
    print("soak totals (seed %d, %.0fs): %s" % (seed, time.monotonic() - t0,
          ", ".join("%s %d" % (k, totals[k]) for k in sorted(totals))))
    print("soak: %d cycles attempted (%d met a fault), %d acknowledged; %d kill -9s; %d points checked"
          % (cycles, faulted, totals.get("cycles acknowledged", 0), kills, totals.get("points checked", 0)))
    reached = cycles >= a.cycles and kills >= a.kills
    if ok and not reached:
        print("soak: time ran out before the targets (%d cycles, %d kills)" % (a.cycles, a.kills))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
