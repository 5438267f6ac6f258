"""The Prometheus endpoint (metrics_listen): the text passes `promtool
check metrics`, its values agree with replctl, and the real Prometheus
server scrapes both daemons and answers queries on them; the shipped
alerting rules pass `promtool check rules` and load.  Bad requests get
an HTTP error and the daemon goes on."""
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request

from harness import Skip, TestFailure, check, free_port, wait_for

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RULES = os.path.join(ROOT, "tools", "prometheus", "replicad-rules.yml")
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")


def need_prometheus():
    if PROMETHEUS is None or PROMTOOL is None:
        raise Skip("prometheus / promtool are not installed (tools/install-deps)")


def with_metrics(d):
    """metrics_listen on a free port in d's [daemon] section; d.metrics is its URL."""
    port = free_port()
    text = open(d.conf).read().replace("[daemon]\n", "[daemon]\nmetrics_listen = 127.0.0.1:%d\n" % port, 1)
    open(d.conf, "w").write(text)
    d.metrics_port = port
    d.metrics = "http://127.0.0.1:%d/metrics" % port
    return d


def fetch(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, ""


def samples(text):
    """{'name{labels}': value} of the exposition text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def pair(env):
    disk = env.make_disk(env.path("src", "m.img"), 2 << 20)
    rep = with_metrics(env.replica()).start()
    pri = with_metrics(env.primary({"web01": [disk]}, rep.port)).start()
    pri.ok("sync", "web01", "--wait")
    pri.ok("sync", "web01", "--wait")
    return pri, rep


def test_metrics_text(env):
    need_prometheus()
    pri, rep = pair(env)
    for d in (pri, rep):
        status, ctype, text = fetch(d.metrics)
        check(status == 200 and ctype.startswith("text/plain; version=0.0.4"), "%s: %r %r" % (d.name, status, ctype))
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
        check(lint.returncode == 0 and lint.stdout == "" and lint.stderr == "",
              "promtool check metrics on %s: %r\n%s" % (d.name, lint, text))
    st = json.loads(pri.ok("status", "--json").out)["vms"][0]
    p = samples(fetch(pri.metrics)[2])
    pv = '{vm="web01",role="primary"}'
    check(p["replicad_cycles_total" + pv] == 2, "primary cycles: %r" % p)
    check(p["replicad_last_point" + pv] == st["last_point"], "primary last point %r vs %r" % (p, st))
    check(p["replicad_health" + pv] == 0 and p["replicad_fenced" + pv] == 0, "primary health %r" % p)
    check(p['replicad_state{vm="web01",role="primary",state="idle"}'] == 1, "primary state %r" % p)
    check(p["replicad_last_cycle_read_bytes" + pv] == st["last_cycle"]["bytes_read"], "read bytes %r vs %r" % (p, st))
    check(p["replicad_sent_bytes_total" + pv] >= st["last_cycle"]["bytes_sent"] > 0, "sent total %r" % p)
    check(p['replicad_vms{role="primary"}'] == 1 and p['replicad_vms{role="replica"}'] == 0, "vms %r" % p)
    r = samples(fetch(rep.metrics)[2])
    rv = '{vm="web01",role="replica"}'
    pts = rep.ok("points", "web01").out.splitlines()[1:]
    check(r["replicad_points" + rv] == len(pts) == 2, "replica points %r vs %r" % (r, pts))
    check(r["replicad_cycles_total" + rv] == 2 and r["replicad_cycle_failures_total" + rv] == 0, "replica cycles %r" % r)
    check(r["replicad_received_bytes_total" + rv] > 0 and r["replicad_storage_free_bytes" + rv] > 0, "replica bytes %r" % r)
    check("replicad_lag_seconds" + rv in r, "no lag for the replica: %r" % r)
    check(r['replicad_sessions{state="authenticated"}'] >= 0, "sessions %r" % r)


def test_metrics_bad_requests(env):
    """Another path: 404; POST: refused (501); a request line of garbage, headers
    past the limit and a stranger that sends nothing get nothing from the
    daemon but a closed connection, and it goes on serving."""
    need_prometheus()
    pri, rep = pair(env)
    check(fetch(pri.metrics.replace("/metrics", "/"))[0] == 404, "/ is not 404")
    code = fetch(pri.metrics, "POST")[0]
    check(code in (405, 501), "POST answered %r" % code)

    def raw(data):
        s = socket.create_connection(("127.0.0.1", pri.metrics_port), timeout=30)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        s.close()
        return got

    got = raw(b"\x00\xff garbage\r\n\r\n")
    check(got == b"" or got.startswith(b"HTTP/1.1 400"), "garbage request line: %r" % got[:100])
    got = raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n")
    check(not got.startswith(b"HTTP/1.1 200"), "100 kB of headers served: %r" % got[:100])
    idle = socket.create_connection(("127.0.0.1", pri.metrics_port), timeout=30)
    check(fetch(pri.metrics)[0] == 200, "not served while a stranger holds a connection")
    idle.close()
    check(pri.alive() and rep.alive(), "a daemon died")
    pri.ok("sync", "web01", "--wait")


def test_prometheus_scrapes(env):
    """The real Prometheus server scrapes both daemons; its query API
    gives back what replctl says; the shipped rules load."""
    need_prometheus()
    rules = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True)
    check(rules.returncode == 0 and "SUCCESS: 5 rules found" in rules.stdout, "promtool check rules: %r" % rules)
    pri, rep = pair(env)
    port = free_port()
    conf = env.path("prometheus.yml")
    with open(conf, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "rule_files: [%s]\n"
                "scrape_configs:\n  - job_name: replicad\n    static_configs:\n"
                "      - targets: ['127.0.0.1:%d', '127.0.0.1:%d']\n"
                % (RULES, pri.metrics_port, rep.metrics_port))
    log = open(env.path("prometheus.log"), "wb")
    prom = subprocess.Popen([PROMETHEUS, "--config.file=" + conf, "--storage.tsdb.path=" + env.path("tsdb"),
                             "--web.listen-address=127.0.0.1:%d" % port], stdout=log, stderr=log)
    env.procs.append(prom)
    api = "http://127.0.0.1:%d/api/v1/" % port

    def query(q):
        try:
            with urllib.request.urlopen(api + "query?" + urllib.parse.urlencode({"query": q}), timeout=10) as r:
                return json.loads(r.read())["data"]["result"]
        except (urllib.error.URLError, ConnectionError):
            return None

    def value_of(q):
        res = query(q)
        return float(res[0]["value"][1]) if res else None

    try:
        wait_for(lambda: value_of('sum(up{job="replicad"})') == 2, 120, interval=0.5,
                 what="Prometheus to scrape both daemons")
        wait_for(lambda: value_of('replicad_cycles_total{vm="web01",role="primary"}') == 2, 60, interval=0.5,
                 what="the primary's cycles in Prometheus")
        st = json.loads(rep.ok("status", "--json").out)["vms"][0]
        got = value_of('replicad_last_point{vm="web01",role="replica"}')
        check(got == st["last_point"], "last point through Prometheus %r, replctl %r" % (got, st["last_point"]))
        check(value_of('replicad_points{vm="web01",role="replica"}') == 2, "points through Prometheus")
        # One more cycle shows up too.
        pri.ok("sync", "web01", "--wait")
        wait_for(lambda: value_of('replicad_points{vm="web01",role="replica"}') == 3, 60, interval=0.5,
                 what="the third point in Prometheus")
        with urllib.request.urlopen(api + "rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        loaded = [x["name"] for g in groups for x in g["rules"] if x.get("health") in ("ok", "unknown")]
        check(len(loaded) == 5 and "ReplicadFenced" in loaded, "rules loaded in Prometheus: %r" % groups)
        # None fires on a healthy pair.
        wait_for(lambda: all(x.get("health") == "ok" for g in json.loads(
            urllib.request.urlopen(api + "rules", timeout=10).read())["data"]["groups"] for x in g["rules"]),
            60, interval=0.5, what="the rules to be evaluated")
        firing = json.loads(urllib.request.urlopen(api + "alerts", timeout=10).read())["data"]["alerts"]
        check(firing == [], "alerts on a healthy pair: %r" % firing)
    finally:
        prom.terminate()
        prom.wait(30)
        log.close()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_metrics_stranger_bounded(env):
    """A stranger on the metrics port: 200 MB of pipelined requests whose
    answers it never reads do not grow the daemon (its input is bounded);
    40 connections held open get at most 32 descriptors, and replication
    and replctl go on meanwhile; once they close, scrapes work again."""
    need_prometheus()
    from harness import SANITIZE
    pri, rep = pair(env)
    fetch(pri.metrics)
    before = rss_kb(pri.proc.pid)
    s = socket.create_connection(("127.0.0.1", pri.metrics_port), timeout=30)
    s.setblocking(False)
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    sent = 0
    # Write until the daemon stops taking input (our send buffer fills);
    # bounded by 200 MB either way.
    wait_until = 0
    while sent < (200 << 20) and wait_until < 200:
        try:
            sent += s.send(req)
            wait_until = 0
        except BlockingIOError:
            wait_until += 1
            select_wait(s)
    grown = rss_kb(pri.proc.pid) - before
    if not SANITIZE:        # ASan's allocator keeps what is freed
        check(grown < 64 << 10, "RSS grew by %d kB under %d MB of unread pipelined requests" % (grown, sent >> 20))
    pri.ok("sync", "web01", "--wait")
    s.close()
    fds0 = len(os.listdir("/proc/%d/fd" % pri.proc.pid))
    held = []
    for _ in range(40):
        c = socket.create_connection(("127.0.0.1", pri.metrics_port), timeout=30)
        c.sendall(b"G")
        held.append(c)
    pri.ok("sync", "web01", "--wait")
    pri.ok("status")
    fds = len(os.listdir("/proc/%d/fd" % pri.proc.pid))
    check(fds - fds0 <= 33, "40 idle metrics connections took %d descriptors" % (fds - fds0))
    for c in held:
        c.close()
    wait_for(lambda: fetch(pri.metrics)[0] == 200, 60, what="a scrape once the strangers left")
    check(pri.alive(), "the daemon died")


def select_wait(s):
    import select
    select.select([], [s], [], 0.05)
