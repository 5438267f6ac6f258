"""Many VMs on one host pair (issue 13).

150 VMs start on one primary at the same moment, more than the replica
admits unauthenticated connections from one address (8), authenticated
ones not yet welcomed per host (64) and VMs per host by default (64): the
primary's connections take turns (dial.h), so that every VM's first cycle
succeeds with no connection pushed out; every VM then keeps its session
(interval under a minute) and syncs again on it; every replica image
equals its disk.
"""
import json
import os
import re

from harness import Daemon, assert_same, check, wait_for

NVMS = 150
SIZE = 256 << 10


def vm_name(i):
    return "many%03d" % i


def test_scale_many_vms_one_pair(env):
    rep = env.replica(extra="max_vms = %d\n" % (NVMS + 10)).start()
    disks = {}
    os.makedirs(env.path("src"))
    for i in range(NVMS):
        p = env.path("src", "%s.img" % vm_name(i))
        with open(p, "wb") as f:
            f.truncate(SIZE)
            f.seek(env.rng.randrange(0, SIZE - 65536))
            f.write(env.rng.randbytes(65536))
        disks[vm_name(i)] = p
    # interval 50s: every VM's first cycle comes a second after the start,
    # all at once; no timed cycle follows within the test's own syncs
    # (those reuse the kept sessions).
    secs = "".join("[vm %s]\ndisk = %s\nreplica = 127.0.0.1:%d\nreplica_name = replica\n"
                   "interval = 50s\n\n" % (vm, p, rep.port) for vm, p in disks.items())
    pri = Daemon(env, "primary", "primary", "", secs).start()

    def all_have_points():
        vms = json.loads(pri.ok("status", "--json").out)["vms"]
        return len(vms) == NVMS and all(v["last_point"] for v in vms)
    wait_for(all_have_points, 300, 0.5, what="a first point of each of the %d VMs" % NVMS)

    log = pri.log_text()
    failed = [l for l in log.splitlines() if re.search(r": cycle ([0-9]+ )?failed", l)]
    check(not failed, "%d failed cycles while %d VMs started at once, e.g.:\n%s"
          % (len(failed), NVMS, "\n".join(failed[:5])))
    dropped = [l for l in rep.log_text().splitlines() if "dropped" in l or "too many" in l]
    check(not dropped, "the replica dropped connections of its primary:\n%s" % "\n".join(dropped[:5]))
    for vm in disks:
        check(os.path.exists(os.path.join(rep.storage, vm, os.path.basename(disks[vm]))),
              "%s: no replica image" % vm)

    # A second cycle of every VM, each on its kept session.
    for i, (vm, p) in enumerate(disks.items()):
        with open(p, "r+b") as f:
            f.seek(env.rng.randrange(0, SIZE - 4096))
            f.write(env.rng.randbytes(4096))
    for vm in disks:
        r = pri.ok("sync", vm, "--wait")
        check(r.out.startswith("point "), "%s: sync said %r" % (vm, r.out))
    kept = pri.log_text().count("cycle on the kept session")
    check(kept >= NVMS, "only %d of %d second cycles ran on a kept session" % (kept, NVMS))
    for vm, p in disks.items():
        assert_same(p, os.path.join(rep.storage, vm, os.path.basename(p)), vm)
