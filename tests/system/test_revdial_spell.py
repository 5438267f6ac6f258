"""Review of the primary's connection turns (dial.h): turns are counted
per replica address *as spelled in the configuration*, while the replica's
gate counts unauthenticated connections per source address (8).  One
replica named three ways (127.0.0.1, 127.1, 127.0.1; in practice a name
and an address, or two names) gives the primary 3 x 4 = 12 handshakes at
once to one replica from one source: more than the gate admits, so the
burst pushes out its own handshakes again, which the turns were to
prevent.
"""
import json
import os
import re

from harness import Daemon, check, wait_for

SPELLINGS = ("127.0.0.1", "127.1", "127.0.1")
PER = 12


def test_revdial_spellings_share_one_gate(env):
    rep = env.replica().start()
    os.makedirs(env.path("src"))
    secs = ""
    n = 0
    for sp in SPELLINGS:
        for i in range(PER):
            vm = "sp%02d" % n
            n += 1
            p = env.path("src", vm + ".img")
            with open(p, "wb") as f:
                f.truncate(64 << 10)
                f.write(env.rng.randbytes(4096))
            secs += ("[vm %s]\ndisk = %s\nreplica = %s:%d\nreplica_name = replica\n"
                     "interval = 50s\n\n" % (vm, p, sp, rep.port))
    pri = Daemon(env, "primary", "primary", "", secs).start()

    def all_have_points():
        vms = json.loads(pri.ok("status", "--json").out)["vms"]
        return len(vms) == n and all(v["last_point"] for v in vms)
    wait_for(all_have_points, 120, 0.5, what="a first point of each of the %d VMs" % n)
    failed = [l for l in pri.log_text().splitlines() if re.search(r": cycle ([0-9]+ )?failed", l)]
    dropped = [l for l in rep.log_text().splitlines() if "dropped" in l or "made room" in l]
    check(not failed and not dropped,
          "%d failed cycles, %d replica drop lines with %d VMs on one replica spelled "
          "%d ways, e.g.:\n%s\n%s" % (len(failed), len(dropped), n, len(SPELLINGS),
                                      "\n".join(failed[:3]), "\n".join(dropped[:3])))
