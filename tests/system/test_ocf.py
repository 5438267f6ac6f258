"""The Pacemaker resource agent tools/ocf/replicad: ocf-tester (package
resource-agents) passes against a replica host of a real pair, whose
promote and demote are real failovers (unplanned when the primary was not
demoted, planned for a demote); the agent's monitor codes follow the VM's
role; the disks are byte-exact after every change of hands."""
import os
import shutil
import subprocess

from harness import REPLCTL, ROOT, Skip, TestFailure, assert_same, check, wait_for
from test_failover import VM, Hosts, status
from workload import random_write

AGENT = os.path.join(ROOT, "tools", "ocf", "replicad")
OCF_TESTER = shutil.which("ocf-tester")


def need_tester():
    if OCF_TESTER is None or not os.path.isdir("/usr/lib/ocf/lib/heartbeat"):
        raise Skip("ocf-tester (package resource-agents) is not installed (tools/install-deps)")


def agent_env(env, d, peer_port):
    e = dict(os.environ, OCF_ROOT="/usr/lib/ocf", OCF_RESOURCE_INSTANCE="rd",
             HA_RSCTMP=env.path("rsctmp"),
             OCF_RESKEY_vm=VM, OCF_RESKEY_replctl=REPLCTL, OCF_RESKEY_socket=d.socket,
             OCF_RESKEY_peer="127.0.0.1:%d" % peer_port, OCF_RESKEY_peer_name="primary")
    os.makedirs(e["HA_RSCTMP"], exist_ok=True)
    return e


def agent(env, d, peer_port, action, extra=None):
    e = agent_env(env, d, peer_port)
    e.update(extra or {})
    p = subprocess.run([AGENT, action], env=e, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr


def test_ocf_tester(env):
    need_tester()
    h = Hosts(env, sizes=(8 << 20, 2 << 20))
    h.a.ok("sync", VM, "--wait")
    # Cycles every second on whichever host is primary: after a planned
    # handover the new replica gets its first point, which the next
    # unplanned promote fails over to.
    for d in (h.a, h.b):
        d.stop()
        text = open(d.conf).read().replace("interval = 0\n", "interval = 1s\n")
        open(d.conf, "w").write(text)
        d.start()
    e = agent_env(env, h.b, h.pa)
    args = [OCF_TESTER, "-v", "-n", "rd", "-o", "vm=" + VM, "-o", "replctl=" + REPLCTL,
            "-o", "socket=" + h.b.socket, "-o", "peer=127.0.0.1:%d" % h.pa, "-o", "peer_name=primary", AGENT]
    p = subprocess.run(args, env=e, capture_output=True, text=True, timeout=1800)
    for step in ("Testing: demotion of started resource", "Promoting resource",
                 "Testing: promotion of promoted resource", "Demoting resource", "Stopping resource"):
        check(step in p.stdout, "ocf-tester did not run %r:\n%s" % (step, p.stdout[-3000:]))
    check(p.returncode == 0 and "passed all tests" in p.stdout,
          "ocf-tester: rc %d\n%s\n%s\nb's log tail:\n%s" % (p.returncode, p.stdout[-4000:], p.stderr[-2000:],
                                                            h.b.log_text()[-3000:]))
    # ocf-tester ends with the instance stopped, after promotes and
    # demotes: b handed the VM back to a (planned), which is primary again.
    check(status(h.a)["role"] == "primary" and status(h.b)["role"] == "replica",
          "roles after ocf-tester: a %r, b %r" % (status(h.a)["role"], status(h.b)["role"]))
    random_write(env.rng, h.disks[0])
    h.a.ok("sync", VM, "--wait")
    for src, dst in zip(h.disks, h.b_disks()):
        assert_same(src, dst, "after the agent's failovers")


def test_ocf_monitor_codes(env):
    """Not started: 7; started on the replica: 0; promoted (unplanned,
    the primary was not demoted): 8; the old primary, fenced once it
    meets the new one, reports 9 and demotes to nothing; bad parameters:
    6 (configured) or 5 (installed)."""
    need_tester()
    h = Hosts(env, sizes=(8 << 20, 2 << 20))
    h.a.ok("sync", VM, "--wait")
    rc, out = agent(env, h.b, h.pa, "monitor")
    check(rc == 7, "monitor before start: %d %s" % (rc, out))
    rc, out = agent(env, h.b, h.pa, "start")
    check(rc == 0, "start: %d %s" % (rc, out))
    check(agent(env, h.b, h.pa, "monitor")[0] == 0, "monitor of a started replica")
    # a's instance (its own HA_RSCTMP) is started too: it is promoted.
    a_env = {"HA_RSCTMP": env.path("rsctmp-a")}
    os.makedirs(a_env["HA_RSCTMP"], exist_ok=True)
    check(agent(env, h.a, h.pb, "start", a_env)[0] == 0, "start on a")
    check(agent(env, h.a, h.pb, "monitor", a_env)[0] == 8, "a's monitor is not promoted")
    # b promoted while a was not demoted: an unplanned failover, then
    # replication back to a (peer): a is fenced by the newer generation
    # and turned into b's replica.
    rc, out = agent(env, h.b, h.pa, "promote")
    check(rc == 0, "promote on b: %d %s" % (rc, out))
    check(agent(env, h.b, h.pa, "monitor")[0] == 8, "b's monitor after promote")
    wait_for(lambda: status(h.a)["role"] == "replica", 60, what="a to become b's replica (reverse)")
    check(agent(env, h.a, h.pb, "monitor", a_env)[0] == 0, "a's monitor as the replica")
    check(agent(env, h.a, h.pb, "demote", a_env)[0] == 0, "demote of a replica")
    # The peer as a list for every node: each takes another node's entry.
    me = subprocess.run(["uname", "-n"], capture_output=True, text=True).stdout.strip()
    rc, out = agent(env, h.a, h.pb, "promote", dict(a_env, OCF_RESKEY_peer_name="replica",
                                                    OCF_RESKEY_peer="%s=127.0.0.1:1 other=127.0.0.1:%d"
                                                    % (me, h.pb)))
    check(rc == 0, "a promoted with a peer list: %d %s" % (rc, out))
    wait_for(lambda: status(h.b)["role"] == "replica", 60, what="b to become a's replica (peer list)")
    rc, out = agent(env, h.b, h.pa, "monitor", {"OCF_RESKEY_vm": ""})
    check(rc in (6, 7), "monitor with no vm: %d %s" % (rc, out))
    rc, out = agent(env, h.b, h.pa, "start", {"OCF_RESKEY_replctl": "/nonexistent/replctl"})
    check(rc == 5, "start without replctl: %d %s" % (rc, out))
    rc, out = agent(env, h.b, h.pa, "start", {"OCF_RESKEY_vm": "nosuch"})
    check(rc == 6 and "does not know nosuch" in out, "start of an unknown VM: %d %s" % (rc, out))
