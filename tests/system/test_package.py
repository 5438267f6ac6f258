"""The Debian package (`make deb`, tools/debian): lintian finds no error;
installed with dpkg it puts every piece in Debian's places, the installed
programs run, a daemon started from them with an example-style
configuration answers, and dpkg removes it cleanly (purge leaves no file
of it behind)."""
import glob
import os
import shutil
import subprocess

from harness import ROOT, Skip, check, free_port, wait_for

FILES = [
    "/usr/sbin/replicad", "/usr/sbin/replctl",
    "/usr/share/man/man8/replicad.8.gz", "/usr/share/man/man8/replctl.8.gz",
    "/usr/share/man/man5/replicad.conf.5.gz",
    "/lib/systemd/system/replicad.service", "/lib/systemd/system/replicad-prune.service",
    "/lib/systemd/system/replicad-prune.timer",
    "/usr/share/bash-completion/completions/replctl",
    "/usr/lib/replicad/hooks/libvirt-on-demote", "/usr/lib/replicad/hooks/libvirt-on-promote",
    "/usr/share/replicad/replicad-rules.yml", "/usr/lib/ocf/resource.d/replicad/replicad",
    "/usr/share/doc/replicad/copyright", "/usr/share/doc/replicad/examples/replicad.conf",
    "/usr/share/doc/replicad/examples/replicad.cron",
]


def the_deb(env):
    """build/deb/replicad_*.deb (made by `make check` before the system
    tests), or one made now in the test's directory."""
    debs = glob.glob(os.path.join(ROOT, "build", "deb", "replicad_*.deb"))
    if debs:
        return debs[0]
    build = env.path("debbuild")
    p = subprocess.run(["make", "-C", ROOT, "deb", "BUILD=" + build], capture_output=True, text=True,
                       timeout=1800)
    check(p.returncode == 0, "make deb: %s" % (p.stdout[-3000:] + p.stderr[-3000:]))
    return glob.glob(os.path.join(build, "deb", "replicad_*.deb"))[0]


def test_deb_lintian_install_remove(env):
    if shutil.which("dpkg") is None or shutil.which("lintian") is None:
        raise Skip("dpkg or lintian is missing (tools/install-deps)")
    if os.geteuid() != 0:
        raise Skip("installing a package needs root")
    if subprocess.run(["dpkg-query", "-W", "-f=${Status}", "replicad"], capture_output=True,
                      text=True).stdout.startswith("install ok"):
        raise Skip("a replicad package is installed on this host: not replaced by a test")
    for f in FILES + ["/var/lib/replicad"]:
        check(not os.path.lexists(f), "%s exists before the package is installed" % f)
    deb = the_deb(env)
    lint = subprocess.run(["lintian", "--fail-on", "error", deb], capture_output=True, text=True, timeout=600)
    check(lint.returncode == 0 and "E:" not in lint.stdout, "lintian: %r" % lint)
    inst = subprocess.run(["dpkg", "-i", deb], capture_output=True, text=True, timeout=600)
    try:
        check(inst.returncode == 0, "dpkg -i: %r" % inst)
        for f in FILES:
            check(os.path.isfile(f), "%s not installed" % f)
        st = os.stat("/var/lib/replicad")
        check(st.st_mode & 0o777 == 0o700, "/var/lib/replicad has mode %o" % (st.st_mode & 0o777))
        v = subprocess.run(["/usr/sbin/replicad", "--version"], capture_output=True, text=True)
        check(v.returncode == 0 and v.stdout.startswith("replicad "), "installed replicad: %r" % v)
        # The installed daemon runs: a replica configuration of the test's own.
        port = free_port()
        state = env.path("pkgstate")
        conf = env.path("pkg.conf")
        with open(conf, "w") as f:
            f.write("[daemon]\nstate_dir = %s\nlisten = 127.0.0.1:%d\ntls_cert = %s/replica.pem\n"
                    "tls_key = %s/replica.key\ntls_ca = %s/ca.pem\n\n[accept primary]\nvms = *\n"
                    % (state, port, env.pki, env.pki, env.pki))
        chk = subprocess.run(["/usr/sbin/replicad", "-c", conf, "--check"], capture_output=True, text=True)
        check(chk.returncode == 0, "installed replicad --check: %r" % chk)
        log = open(env.path("pkg.log"), "wb")
        d = subprocess.Popen(["/usr/sbin/replicad", "-c", conf], stdout=log, stderr=log)
        env.procs.append(d)
        sock = os.path.join(state, "control.sock")
        wait_for(lambda: d.poll() is not None or subprocess.run(
            ["/usr/sbin/replctl", "-s", sock, "status"], capture_output=True).returncode == 0,
            30, what="the installed replicad to answer")
        check(d.poll() is None, "the installed replicad exited")
        d.terminate()
        check(d.wait(60) == 0, "the installed replicad did not stop cleanly")
        log.close()
        ver = subprocess.run(["systemd-analyze", "verify", "--man=no", "/lib/systemd/system/replicad.service",
                              "/lib/systemd/system/replicad-prune.service",
                              "/lib/systemd/system/replicad-prune.timer"], capture_output=True, text=True)
        check(ver.returncode == 0 and ver.stderr == "", "installed units: %r" % ver)
    finally:
        purge = subprocess.run(["dpkg", "-P", "replicad"], capture_output=True, text=True, timeout=600)
    check(purge.returncode == 0, "dpkg -P: %r" % purge)
    left = [f for f in FILES if os.path.lexists(f)]
    check(left == [], "left behind after purge: %r" % left)
    check(not os.path.exists("/var/lib/replicad"), "the empty state directory is left after purge")
