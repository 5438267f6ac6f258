"""The connection gate against hosts with valid certificates: a certificate
no [accept] entry names, an accepted host holding sessions it never uses,
and a flood that runs the replica out of descriptors."""
import os
import socket
import ssl
import subprocess

from harness import LogMark, check
from test_flood import pair, sync_ok, VM


def tls_client(env, cert, port, src="127.0.0.1"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(os.path.join(env.pki, "ca.pem"))
    ctx.load_cert_chain(os.path.join(env.pki, cert + ".pem"), os.path.join(env.pki, cert + ".key"))
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    t = ctx.wrap_socket(s, server_hostname="replica")
    return t



def hold_and_sync(env, rep, pri, disk, cert, who):
    """With the primary stopped, cert opens 1030 TLS connections from 250
    addresses and never sends HELLO; then the primary's sync must succeed
    and the replica log only a bounded number of lines."""
    sync_ok(env, pri, disk, rep, "first sync")
    pri.stop()
    mark = LogMark(rep)
    held = []
    try:
        for i in range(1030):
            try:
                held.append(tls_client(env, cert, rep.port, "127.0.1.%d" % (1 + i % 250)))
            except OSError:
                pass
        # The replica handles these connections' last handshake flight
        # before the primary's, which arrives after them.
        pri.start()
        r = pri.ctl("sync", VM, "--wait", timeout=60)
        log = mark.new()
        check(r.rc == 0, "sync failed while %s held 1030 connections: %r\n%s"
              % (who, r, log[-1500:]))
        check(len(log.splitlines()) < 60, "%d log lines" % len(log.splitlines()))
    finally:
        for t in held:
            t.close()


def test_revgate_auth_exhaustion(env):
    """A host with any certificate of the CA (here "other", in no [accept]
    entry) cannot hold the authenticated slots: it stays in the strangers'
    budget, and the real primary still gets in."""
    rep, pri, disk = pair(env)
    hold_and_sync(env, rep, pri, disk, "other", "a certificate no [accept] entry names")


def test_revgate_accepted_host_exhaustion(env):
    """An accepted host ("other", allowed VMs other than the primary's)
    cannot hold the authenticated slots either: its sessions not yet
    welcomed are capped (its oldest give way)."""
    disk = env.make_disk(env.path("src", "sda.img"), 1 << 20)
    rep = env.replica(extra="\n[accept other]\nvms = o-*\nstorage = %s\n"
                      % env.path("replica", "other")).start()
    pri = env.primary({VM: [disk]}, rep.port).start()
    hold_and_sync(env, rep, pri, disk, "other", "an accepted host")


def test_revgate_accepted_host_exhaustion_large_budget(env):
    """The same with an authenticated budget raised by the configuration
    ([accept other] max_vms = 2000: 2,192 sessions in all): the host may
    keep a session for each of its VMs, but still no more than 64 not yet
    welcomed, so its 1030 idle sessions do not keep the primary out."""
    disk = env.make_disk(env.path("src", "sda.img"), 1 << 20)
    rep = env.replica(extra="\n[accept other]\nvms = o-*\nstorage = %s\nmax_vms = 2000\n"
                      % env.path("replica", "other")).start()
    pri = env.primary({VM: [disk]}, rep.port).start()
    hold_and_sync(env, rep, pri, disk, "other", "an accepted host with max_vms = 2000")


def test_revgate_emfile_spin(env):
    """At a limit of 1024 descriptors (prlimit after the start, as a
    LimitNOFILE=1024 would), authenticated sessions of 1024 descriptors, authenticated sessions
    (budget 1024) + strangers (256) exceed it: accept() fails with EMFILE,
    libevent calls the error callback on every loop turn, log_warn each
    time, with 100% CPU."""
    rep, pri, disk = pair(env)
    pri.stop()
    subprocess.run(["prlimit", "--pid", str(rep.proc.pid), "--nofile=1024:1024"], check=True)
    mark = LogMark(rep)
    held = []
    try:
        for i in range(1100):
            try:
                held.append(tls_client(env, "primary", rep.port, "127.0.1.%d" % (1 + i % 250)))
            except (OSError, ssl.SSLError):
                pass
        n = mark.new().count("accept: ")
        print("held %d; accept error lines: %d" % (len(held), n))
        check(n < 100, "accept errors flood the log: %d lines" % n)
    finally:
        for t in held:
            t.close()
