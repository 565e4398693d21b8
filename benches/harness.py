#!/usr/bin/env python3
"""End-to-end attack harness: Rampart side by side with nginx (limit_req + geoip2)
and HAProxy (stick tables), on loopback, with real GeoIP/ASN data.

    [RAMPART=/path/to/rampart] benches/harness.py [--quick] [--flood N] [--only rampart,nginx,haproxy] [--scenarios S5,S6]

Every proxy gets the closest equivalent policy: 429 above 50 requests/s (burst 100)
per client address and per ASN, 403 for one denied country (not HAProxy: it has no
GeoIP reader in Debian), keep-alive to the origin, access logs off, one worker.
Client addresses come through X-Forwarded-For from loopback, which every proxy
trusts. The origin (nginx) logs each request's X-Class, so attack requests that
reach it are counted. Each scenario checks that the proxy really enforced its
policy. Results go to benches/results/latest.{json,md} (partial.* with --only).
Binaries come from CARGO_TARGET_DIR (default target/); RAMPART=/path/to/rampart
runs that build instead of building one (scripts/build-pgo trains its
instrumented binary this way). Loopback only, bounded.
"""
import argparse, csv, ipaddress, json, os, random, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benches" / "data"
RESULTS = ROOT / "benches" / "results"
# Cargo resolves a relative CARGO_TARGET_DIR against the directory it runs in: ROOT.
RELEASE = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"
RAMPART_BIN = Path(os.environ.get("RAMPART") or RELEASE / "rampart").resolve()
ORIGIN, RAMPART, RAMPART_ADMIN, NGINX, HAPROXY = 19000, 18080, 19901, 19080, 19180
TOKEN = "bench-token-0123456789abcdef"
BOTNET_ASN = 14061          # a hosting provider's network
# S6: a botnet rotating over four hosting networks, users on eight carriers.
HOSTING_ASNS = [14061, 16509, 24940, 63949]       # DigitalOcean, AWS, Hetzner, Linode
CARRIER_ASNS = [4134, 4837, 9808, 7922, 3320, 701, 12322, 3215]
S6_LEGIT_PER_ASN = 8        # requests/s each carrier's users need
S6_ATTACK_FACTOR = 10       # the botnet sends 10x the legitimate rate
FLOOD_RANGE = "11.0.0.0/10"  # one AS (749), 4 M addresses
DENIED_COUNTRY = "KP"
HZ = os.sysconf("SC_CLK_TCK")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools(only):
    # nginx is the origin in every run; npm fetches the GeoIP data.
    need = [p for p, b in [("nginx-light", "nginx"), ("npm", "npm")] if not shutil.which(b)]
    if "haproxy" in only and not shutil.which("haproxy"):
        need.append("haproxy")
    if "nginx" in only and not Path("/usr/lib/nginx/modules/ngx_http_geoip2_module.so").exists():
        need.append("libnginx-mod-http-geoip2")
    if need:
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", *need, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    # One package per build, as ratio.sh and instructions.sh do: building both in one
    # invocation unifies features differently and rebuilds the whole Pingora stack.
    if not os.environ.get("RAMPART"):
        sh("cargo", "build", "--release", "-q", "-p", "rampart", cwd=ROOT)
    sh("cargo", "build", "--release", "-q", "-p", "rampart-benches", "--bin", "rampart-loadgen", cwd=ROOT)
    if not (DATA / "country.mmdb").exists() or not (DATA / "asn.mmdb").exists():
        sh(str(ROOT / "deploy/geoip/fetch.sh"), str(DATA), str(RAMPART_BIN))
    if not (DATA / "asn-ipv4.csv").exists():
        with tempfile.TemporaryDirectory() as t:
            sh("npm", "pack", "--silent", "@ip-location-db/asn", cwd=t, stdout=subprocess.DEVNULL)
            tgz = next(Path(t).glob("*.tgz"))
            sh("tar", "xzf", str(tgz), "-C", t)
            shutil.copy(Path(t) / "package/asn-ipv4.csv", DATA / "asn-ipv4.csv")


def pools(work: Path):
    """Legit clients: one network from each of 2000 ASNs; botnet: every range of one AS;
    an HAProxy map of every IPv4 range to its ASN."""
    by_asn, mapping = {}, []
    with open(DATA / "asn-ipv4.csv") as f:
        for first, last, asn, *_ in csv.reader(f):
            nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(first), ipaddress.ip_address(last)))
            by_asn.setdefault(int(asn), []).extend(nets)
            mapping.extend(f"{n} {asn}\n" for n in nets)
    rnd = random.Random(7)
    candidates = [a for a, nets in by_asn.items() if a != BOTNET_ASN and a != 749 and any(n.prefixlen <= 24 for n in nets)]
    legit = [next(n for n in by_asn[a] if n.prefixlen <= 24) for a in rnd.sample(sorted(candidates), 2000)]
    (work / "legit.txt").write_text("".join(f"{n}\n" for n in legit))
    (work / "botnet.txt").write_text("".join(f"{n}\n" for n in by_asn[BOTNET_ASN]))
    (work / "hosting.txt").write_text("".join(f"{n}\n" for a in HOSTING_ASNS for n in by_asn.get(a, [])))
    (work / "carriers.txt").write_text("".join(f"{n}\n" for a in CARRIER_ASNS for n in by_asn.get(a, [])))
    (work / "asn.map").write_text("".join(mapping))


def configs(work: Path):
    (work / "origin.conf").write_text(f"""
worker_processes 1; pid {work}/origin.pid; error_log {work}/origin.err warn; daemon on;
events {{ worker_connections 8192; }}
http {{ keepalive_requests 10000000; log_format cls '$http_x_class';
  server {{ listen 127.0.0.1:{ORIGIN} reuseport; access_log {work}/origin.log cls buffer=256k flush=1s;
    location / {{ return 200 "ok\\n"; }} }} }}
""")
    (work / "rampart.toml").write_text(f"""
[server]
threads = 1
work_stealing = false
[client_ip]
trusted_proxies = ["127.0.0.1/32"]
[[listeners]]
address = "127.0.0.1:{RAMPART}"
[admin]
address = "127.0.0.1:{RAMPART_ADMIN}"
[geoip]
country_db = "{DATA}/country.mmdb"
asn_db = "{DATA}/asn.mmdb"
[pools.origin]
servers = ["127.0.0.1:{ORIGIN}"]
[pools.origin.health_check]
kind = "tcp"
interval = "5s"
[[routes]]
name = "all"
pool = "origin"
[[access]]
name = "denied-country"
action = "deny"
countries = ["{DENIED_COUNTRY}"]
[[limits]]
name = "per-ip"
key = "ip"
rate = "50/s"
burst = 100
[[limits]]
name = "per-asn"
key = "asn"
rate = "50/s"
burst = 100
ban = {{ after = 20, within = "2s", for = "1m", max = "10m" }}
# The shipped "hosting networks" example (conf/examples-geo.toml): a tight
# budget and a penalty box for data-centre ASNs, carriers untouched.
[[limits]]
name = "hosting-asn"
key = "asn"
rate = "2/s"
burst = 10
asns = [{",".join(str(a) for a in HOSTING_ASNS)}]
ban = {{ after = 5, within = "2s", for = "1m", max = "1h" }}
[[flags]]
name = "under_attack"
limit_scale = 0.5
[[escalations]]
name = "attack"
flag = "under_attack"
signal = "rejected_share"
enter_above = 0.3
enter_for = "2s"
leave_below = 0.05
leave_for = "30s"
min_hold = "1m"
[access_log]
enabled = false
[lockdown]
state_file = "{work}/lockdown.json"
audit_log = "{work}/audit.jsonl"
""")
    (work / "nginx.conf").write_text(f"""
load_module /usr/lib/nginx/modules/ngx_http_geoip2_module.so;
worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err warn; daemon on;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000;
  set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For; real_ip_recursive on;
  geoip2 {DATA}/country.mmdb {{ $geo_cc country_code; }}
  geoip2 {DATA}/asn.mmdb {{ $geo_asn autonomous_system_number; }}
  map $geo_cc $denied {{ {DENIED_COUNTRY} 1; default 0; }}
  limit_req_zone $binary_remote_addr zone=ip:64m rate=50r/s;
  limit_req_zone $geo_asn zone=asn:16m rate=50r/s;
  map $geo_asn $hosting_key {{ {" ".join(f"{a} $geo_asn;" for a in HOSTING_ASNS)} default ""; }}
  limit_req_zone $hosting_key zone=hosting:1m rate=2r/s;
  limit_req_status 429;
  upstream o {{ server 127.0.0.1:{ORIGIN}; keepalive 256; }}
  server {{ listen 127.0.0.1:{NGINX};
    location / {{
      if ($denied) {{ return 403; }}
      limit_req zone=ip burst=100 nodelay; limit_req zone=asn burst=100 nodelay;
      limit_req zone=hosting burst=10 nodelay;
      proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Class $http_x_class; }} }} }}
""")
    (work / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  maxconn 8000
  pidfile {work}/haproxy.pid
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{HAPROXY}
  http-request set-var(txn.cip) req.hdr_ip(x-forwarded-for,-1)
  http-request set-var(txn.asn) var(txn.cip),map_ip_int({work}/asn.map,0)
  acl hosting var(txn.asn) -m int {" ".join(str(a) for a in HOSTING_ASNS)}
  http-request track-sc0 var(txn.cip) table st_ip
  http-request track-sc1 var(txn.asn) table st_asn
  http-request track-sc2 var(txn.asn) table st_hosting if hosting
  http-request deny deny_status 429 if {{ sc_get_gpc0(2) gt 5 }}
  http-request sc-inc-gpc0(2) if hosting {{ sc_http_req_rate(2) gt 10 }}
  http-request deny deny_status 429 if hosting {{ sc_http_req_rate(2) gt 10 }}
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 100 }}
  http-request deny deny_status 429 if {{ sc_http_req_rate(1) gt 100 }}
  default_backend be
backend be
  http-reuse always
  server o 127.0.0.1:{ORIGIN}
backend st_ip
  stick-table type ip size 2m expire 10s store http_req_rate(2s)
backend st_asn
  stick-table type integer size 200k expire 10s store http_req_rate(2s)
backend st_hosting
  stick-table type integer size 1k expire 60s store http_req_rate(5s),gpc0
""")


class Proxy:
    def __init__(self, name, port, work):
        self.name, self.port, self.work, self.proc, self.pids = name, port, work, None, []

    def start(self):
        w = self.work
        if self.name == "rampart":
            env = {**os.environ, "RAMPART_ADMIN_TOKEN": TOKEN, "RUST_LOG": "warn"}
            self.proc = subprocess.Popen([str(RAMPART_BIN), "run", "--config", str(w / "rampart.toml")],
                                         env=env, stdout=open(w / "rampart.log", "w"), stderr=subprocess.STDOUT)
            self.pids = [self.proc.pid]
            time.sleep(1.5)
        elif self.name == "nginx":
            sh("nginx", "-c", str(w / "nginx.conf"), "-e", str(w / "nginx.err"))
            time.sleep(0.5)
            master = int((w / "nginx.pid").read_text())
            self.pids = [master] + [int(p) for p in subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()]
        else:
            self.proc = subprocess.Popen(["haproxy", "-f", str(w / "haproxy.cfg"), "-db"], stdout=open(w / "haproxy.log", "w"), stderr=subprocess.STDOUT)
            self.pids = [self.proc.pid]
            time.sleep(1.0)

    def stop(self):
        if self.name == "nginx":
            subprocess.run(["nginx", "-c", str(self.work / "nginx.conf"), "-s", "stop"], capture_output=True)
            time.sleep(0.5)
        elif self.proc:
            self.proc.send_signal(signal.SIGINT if self.name == "rampart" else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def cpu(self):
        t = 0
        for p in self.pids:
            try:
                f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                t += int(f[11]) + int(f[12])
            except (FileNotFoundError, IndexError):
                pass
        return t / HZ

    def rss_mib(self):
        total = 0
        for p in self.pids:
            try:
                total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * 4096
            except FileNotFoundError:
                pass
        return total / 1048576


def loadgen(port, seconds, clients, cls="legit", connections=32, rate=None, max_requests=None, wait=True):
    cmd = [str(RELEASE / "rampart-loadgen"), "--target", f"127.0.0.1:{port}", "--duration", str(seconds),
           "--connections", str(connections), "--clients", clients, "--class", cls]
    if rate:
        cmd += ["--rate", str(rate)]
    if max_requests:
        cmd += ["--max-requests", str(max_requests)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if not wait:
        return p
    return json.loads(p.communicate()[0])


def origin_hits(work, cls):
    time.sleep(1.2)  # the origin's log buffer flushes every second
    try:
        return sum(1 for line in open(work / "origin.log") if line.strip() == cls)
    except FileNotFoundError:
        return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 round, shorter runs (a smoke test)")
    ap.add_argument("--flood", type=int, default=2_000_000, help="distinct addresses in S3 (up to 10 M)")
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,S5,S6",
                    help="comma-separated subset of S1..S6 (S2 runs with S1); a subset writes partial.*")
    ap.add_argument("--only", default="rampart,nginx,haproxy",
                    help="comma-separated subset of rampart,nginx,haproxy; a subset writes "
                         "benches/results/partial.{json,md} and leaves latest.* alone")
    args = ap.parse_args()
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(only) - {"rampart", "nginx", "haproxy"})
    if unknown or not only:
        ap.error(f"--only takes rampart, nginx and haproxy, not {', '.join(unknown) or 'nothing'}")
    want = {x.strip().upper() for x in args.scenarios.split(",") if x.strip()}
    if "S2" in want:
        want.add("S1")
    rounds, secs = (1, 3) if args.quick else (3, 6)
    ensure_tools(only)
    work = Path(tempfile.mkdtemp(prefix="rampart-harness-"))
    print(f"work folder {work}; building address pools and peer configs", flush=True)
    pools(work)
    configs(work)
    sh("nginx", "-c", str(work / "origin.conf"), "-e", str(work / "origin.err"))
    proxies = [Proxy(n, p, work) for n, p in [("rampart", RAMPART), ("nginx", NGINX), ("haproxy", HAPROXY)]
               if n in only]
    legit = f"pool:{work}/legit.txt"
    botnet = f"pool:{work}/botnet.txt"
    out = {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
           "versions": {"nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]},
           "scenarios": {}}
    problems = []
    try:
        for px in proxies:
            res = out["scenarios"].setdefault(px.name, {})
            print(f"== {px.name}", flush=True)
            # S1: clean traffic, nobody limited.
            if "S1" in want:
                scenario_s1_s2(px, res, problems, rounds, secs, legit)
            if "S4" in want:
                scenario_s4(px, res, problems, rounds, secs)
            if "S5" in want:
                scenario_s5(px, res, problems, rounds, secs, legit, botnet, work)
            if "S6" in want:
                scenario_s6(px, res, problems, rounds, secs, work)
            if "S3" in want:
                scenario_s3(px, res, rounds, legit, args.flood)
            print(json.dumps(res), flush=True)
    finally:
        for px in proxies:
            px.stop()
        subprocess.run(["nginx", "-c", str(work / "origin.conf"), "-s", "stop"], capture_output=True)
    out["problems"] = problems
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "latest" if len(only) == 3 and want >= {"S1", "S2", "S3", "S4", "S5", "S6"} else "partial"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{stem}.md").write_text(report(out, rounds, secs))
    print(report(out, rounds, secs))
    return 1 if problems else 0


def scenario_s1_s2(px, res, problems, rounds, secs, legit):
    """S1: clean traffic, nobody limited; S2: open-loop latency at fixed rates."""
    px.start()
    s1 = []
    for _ in range(rounds):
        c0 = px.cpu()
        r = loadgen(px.port, secs, legit)
        s1.append((r["rps"], 1e6 * (px.cpu() - c0) / max(1, r["answered"]), r["limited"] + r["forbidden"] + r["other"] + r["errors"]))
    res["S1"] = {"rps": statistics.median(x[0] for x in s1), "cpu_us_per_req": statistics.median(x[1] for x in s1),
                 "not_ok": sum(x[2] for x in s1)}
    if res["S1"]["rps"] < 100:
        problems.append(f"{px.name} S1: the proxy did not serve traffic (see {px.work})")
    if res["S1"]["not_ok"]:
        problems.append(f"{px.name} S1: {res['S1']['not_ok']} legit requests were not served")
    res["S2"] = {}
    for rate in (2000, 8000):
        rs = [loadgen(px.port, secs, legit, rate=rate) for _ in range(rounds)]
        res["S2"][str(rate)] = {"p50_us": statistics.median(r["p50_us"] for r in rs), "p99_us": statistics.median(r["p99_us"] for r in rs)}
    px.stop()


def scenario_s4(px, res, problems, rounds, secs):
    """S4: one hot attacker."""
    px.start()
    s4 = []
    for _ in range(rounds):
        c0 = px.cpu()
        r = loadgen(px.port, secs, "fixed:198.18.0.1", cls="attack")
        s4.append((1e6 * (px.cpu() - c0) / max(1, r["answered"]), r["limited"] / max(1, r["answered"]), r["rps"]))
    res["S4"] = {"cpu_us_per_rejected": statistics.median(x[0] for x in s4), "rejected_share": statistics.median(x[1] for x in s4),
                 "rps": statistics.median(x[2] for x in s4)}
    if "S1" in res:
        res["S4"]["rejected_vs_proxied_cpu"] = res["S4"]["cpu_us_per_rejected"] / max(1e-9, res["S1"]["cpu_us_per_req"])
    if res["S4"]["rejected_share"] < 0.95:
        problems.append(f"{px.name} S4: only {res['S4']['rejected_share']:.1%} of the hot attacker's requests were rejected")
    px.stop()


def escalation_watch(px, t0, stop):
    """Seconds from t0 until Rampart's escalation enters its flag, or None."""
    import urllib.request
    while not stop.is_set():
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{RAMPART_ADMIN}/lockdown",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            flags = json.loads(urllib.request.urlopen(req, timeout=1).read())["flags"]
            if any(f["name"] == "under_attack" and f["active"] for f in flags):
                return time.time() - t0
        except Exception:
            pass
        time.sleep(0.2)
    return None


def attack_round(px, work, attack_pool, attack_rate, legit_pool, legit_rate, secs):
    """One round on a fresh process: the attack and legitimate users together,
    open loop. Returns (legit served, attack reaching origin, seconds to escalation)."""
    import threading
    # A fresh start: no flag left on by an earlier round's escalation.
    for stale in ("lockdown.json", "audit.jsonl"):
        (work / stale).unlink(missing_ok=True)
    px.start()
    a0 = origin_hits(work, "attack")
    stop = threading.Event()
    found = {}
    t0 = time.time()
    if px.name == "rampart":
        watcher = threading.Thread(target=lambda: found.setdefault("t", escalation_watch(px, t0, stop)))
        watcher.start()
    bot = loadgen(px.port, secs + 1, attack_pool, cls="attack", connections=32, rate=attack_rate, wait=False)
    good = loadgen(px.port, secs, legit_pool, cls="legit", connections=8, rate=legit_rate)
    bad = json.loads(bot.communicate()[0])
    stop.set()
    if px.name == "rampart":
        watcher.join()
    reached = origin_hits(work, "attack") - a0
    px.stop()
    return (good["ok"] / max(1, good["answered"] + good["errors"]),
            reached / max(1, bad["answered"] + bad["errors"]), found.get("t"))


def scenario_s5(px, res, problems, rounds, secs, legit, botnet, work):
    """S5: a botnet in one hosting ASN plus users from 2000 ASNs; a fresh process
    per round, so bans start from nothing each time."""
    s5 = [attack_round(px, work, botnet, 4000, legit, 400, secs) for _ in range(rounds)]
    res["S5"] = {"legit_served": statistics.median(x[0] for x in s5),
                 "attack_reached_origin": statistics.median(x[1] for x in s5)}
    if res["S5"]["attack_reached_origin"] > 0.5:
        problems.append(f"{px.name} S5: {res['S5']['attack_reached_origin']:.1%} of the botnet reached the origin: policy not enforced")


def scenario_s6(px, res, problems, rounds, secs, work):
    """S6: a botnet rotating addresses over four hosting ASNs at 10x the legitimate
    rate; legitimate users on eight carrier ASNs, 8 requests/s each."""
    legit_rate = S6_LEGIT_PER_ASN * len(CARRIER_ASNS)
    s6 = [attack_round(px, work, f"pool:{work}/hosting.txt", S6_ATTACK_FACTOR * legit_rate,
                       f"pool:{work}/carriers.txt", legit_rate, max(secs, 12)) for _ in range(rounds)]
    times = [x[2] for x in s6 if x[2] is not None]
    res["S6"] = {"legit_served": statistics.median(x[0] for x in s6),
                 "attack_reached_origin": statistics.median(x[1] for x in s6),
                 "escalation_seconds": statistics.median(times) if times else None}
    if res["S6"]["attack_reached_origin"] > 0.5:
        problems.append(f"{px.name} S6: {res['S6']['attack_reached_origin']:.1%} of the botnet reached the origin: policy not enforced")


def scenario_s3(px, res, rounds, legit, flood_count):
    """S3: flood of distinct addresses from one AS, RSS sampled, a legit client
    measured; a fresh process per round, so each round floods from empty."""
    s3 = []
    for _ in range(rounds):
        px.start()
        rss = [px.rss_mib()]
        flood = loadgen(px.port, 600, f"distinct:{FLOOD_RANGE}", cls="attack", connections=32, max_requests=flood_count, wait=False)
        good = loadgen(px.port, 600, legit, cls="legit", connections=4, rate=200, wait=False)
        t0 = time.time()
        while flood.poll() is None and time.time() - t0 < 600:
            time.sleep(1)
            rss.append(px.rss_mib())
        f = json.loads(flood.communicate()[0])
        good.send_signal(signal.SIGINT)
        try:
            g = json.loads(good.communicate(timeout=5)[0] or "{}")
        except Exception:
            good.kill()
            g = {}
        s3.append((f["limited"] / max(0.1, f["seconds"]), f["limited"] / max(1, f["answered"]), rss[0], max(rss), rss[-1], g.get("p99_us") or 0, f["seconds"]))
        px.stop()
    res["S3"] = {"distinct_sources": flood_count, "seconds": statistics.median(x[6] for x in s3),
                 "rejected_per_s": statistics.median(x[0] for x in s3), "rejected_share": statistics.median(x[1] for x in s3),
                 "rss_mib_start": statistics.median(x[2] for x in s3), "rss_mib_max": max(x[3] for x in s3),
                 "rss_mib_end": statistics.median(x[4] for x in s3), "legit_p99_us": statistics.median(x[5] for x in s3)}


def report(out, rounds, secs):
    s = out["scenarios"]
    names = [n for n in ("rampart", "nginx", "haproxy") if n in s]
    ng = s.get("nginx", {})
    def ratio(n, scen, key):
        try:
            return f"{s[n][scen][key] / ng[scen][key]:.2f}x"
        except (KeyError, ZeroDivisionError):
            return "-"
    lines = [f"# Attack harness results\n",
             f"Machine: {out['machine']['cores']} cores, kernel {out['machine']['kernel']}; {out['versions']['nginx']}; {out['versions']['haproxy']}.",
             f"Medians of {rounds} rounds of {secs} s per scenario; loopback; one worker each; keep-alive to the origin; access logs off.",
             "Policy on every proxy: 429 above 50/s (burst 100) per client address and per ASN; 403 for one country (not HAProxy); "
             "hosting ASNs 2/s (burst 10) per ASN. Rampart adds penalty boxes (per-ASN and hosting) and an escalation "
             "(rejected share above 30 % for 2 s enters `under_attack`); HAProxy bans a hosting ASN through a gpc0 "
             "stick counter; nginx has neither (limit_req cannot ban or escalate).\n",
             "| scenario | measure | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    def row(scen, label, key, fmt):
        code = scen.split()[0]
        lines.append(f"| {scen} | {label} | " + " | ".join(fmt(s[n].get(code, {}).get(key)) for n in names) + " |")
    f0 = lambda v: "-" if v is None else f"{v:,.0f}"
    f1 = lambda v: "-" if v is None else f"{v:.1f}"
    pc = lambda v: "-" if v is None else f"{v:.2%}"
    row("S1 clean", "requests/s", "rps", f0)
    row("S1 clean", "CPU µs per request", "cpu_us_per_req", f1)
    for rate in ("2000", "8000"):
        lines.append(f"| S2 {rate}/s open loop | p50 / p99 µs | " + " | ".join(
            f"{s[n]['S2'][rate]['p50_us']:,} / {s[n]['S2'][rate]['p99_us']:,}" if "S2" in s[n] else "-" for n in names) + " |")
    row("S3 flood", "distinct sources", "distinct_sources", f0)
    row("S3 flood", "rejected/s", "rejected_per_s", f0)
    row("S3 flood", "RSS MiB start", "rss_mib_start", f1)
    row("S3 flood", "RSS MiB max", "rss_mib_max", f1)
    row("S3 flood", "legit client p99 µs", "legit_p99_us", f0)
    row("S4 hot attacker", "rejected share", "rejected_share", pc)
    row("S4 hot attacker", "CPU µs per rejected request", "cpu_us_per_rejected", f1)
    row("S4 hot attacker", "rejected / proxied CPU", "rejected_vs_proxied_cpu", lambda v: "-" if v is None else f"{v:.2f}")
    row("S5 botnet", "legit served", "legit_served", pc)
    row("S5 botnet", "attack reaching origin", "attack_reached_origin", pc)
    row("S6 rotating botnet, 4 hosting ASNs", "legit served", "legit_served", pc)
    row("S6 rotating botnet, 4 hosting ASNs", "attack reaching origin", "attack_reached_origin", pc)
    row("S6 rotating botnet, 4 hosting ASNs", "seconds to escalation", "escalation_seconds", f1)
    lines.append("")
    if "rampart" in s and "nginx" in s:
        lines.append(f"Rampart vs nginx: S1 throughput {ratio('rampart', 'S1', 'rps')}, CPU per request {ratio('rampart', 'S1', 'cpu_us_per_req')}.")
    lines.append("Open-loop latencies include the generator's ~1 ms timer granularity (same for every proxy).")
    if out.get("problems"):
        lines.append("\nEnforcement problems:\n" + "\n".join(f"- {p}" for p in out["problems"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
