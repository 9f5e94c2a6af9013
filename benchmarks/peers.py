"""Side-by-side peer comparison: probekit against blackbox_exporter, check_http and curl.

What it measures, in one run, on loopback (127.0.0.1 only) against one local nginx:

- probes/s and CPU seconds per probe for fresh-connection HTTP, HTTPS (RSA-2048, full handshake)
  and TCP-connect probes: blackbox_exporter driven through ``/probe`` by ``wrk -t1 -c64`` (its CPU
  read from ``/proc/<pid>/stat``), then probekit's ``Runner(max_concurrency=64)`` in a subprocess
  for about the same time (its CPU from ``time.process_time()``); with uvloop too when importable.
  Every probe's outcome is counted on both sides, so a fast run of failures cannot pass for speed;
- wall time of one check from a fresh process: ``check_http`` vs ``python -c`` with probekit, and
  probekit's mean per check in a warm process;
- probekit's phases (resolve, connect, tls, processing, transfer) next to ``curl -w`` figures for
  the same HTTPS URL, medians of sequential unloaded checks (curl both in one process and in a
  fresh process per transfer);
- ``import probekit`` and ``from probekit import HttpProbe, Runner`` vs ``import httpx``, timed
  inside fresh interpreters with bytecode caches, medians.

Against what: the peers run in the same run, on the same targets; the table gives probekit's
figure, the peer's, the ratio and the target from issue 3, and is written as JSON to
``benchmarks/results/peers.json`` with the date, the machine and the CPU each process used (the
load generator, the target and the prober share the machine's cores). Each throughput run waits
for a quiet machine and is repeated (at most three times) while other processes took more than
``QUIET`` cores during it; a run that stayed disturbed is marked so in the table.

Run: ``python benchmarks/peers.py [--quick] [--json PATH]``, or ``nox -s peers``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import functools
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "peers.json"
LOOPBACK = "127.0.0.1"  # the only address this script ever binds or dials
CONCURRENCY = 64
PACKAGES = (
    "nginx-light",
    "wrk",
    "prometheus-blackbox-exporter",
    "monitoring-plugins-basic",
    "curl",
)
NAGIOS = Path("/usr/lib/nagios/plugins")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PHASES = ("resolve", "connect", "tls", "processing", "transfer")
#: Cores used by processes that are not ours above which a run counts as disturbed.
QUIET = 0.25
OTHER = "other (not ours)"

#: The prober's processes when it runs as a ProcessRunner: one per core, as on a checkpoint.
CORES = os.cpu_count() or 1
#: probekit's throughput variants: (name, on uvloop, as a ProcessRunner of CORES processes).
VARIANTS = (
    ("probekit", False, False),
    ("probekit_uvloop", True, False),
    ("probekit_processes", False, True),
    ("probekit_processes_uvloop", True, True),
)
VARIANT_LABELS = {
    "probekit": "",
    "probekit_uvloop": " (uvloop)",
    "probekit_processes": f" ({CORES} processes)",
    "probekit_processes_uvloop": f" ({CORES} processes, uvloop)",
}

#: Issue 3's targets: measure key -> (comparison, bound, text).
TARGETS = {
    "http_rate": (">=", 2.0, "ratio >= 2.0"),
    "tcp_rate": (">=", 2.0, "ratio >= 2.0"),
    "https_rate": (">=", 1.2, "ratio >= 1.2"),
    "http_cpu": ("<=", 400.0, "<= 400 us"),
    "import": ("<=", 1.2, "ratio <= 1.2"),
}

#: Counts blackbox_exporter's verdicts in wrk: ``/probe`` answers 200 even when the probe failed.
WRK_LUA = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) up = 0; down = 0 end
function response(status, headers, body)
  if status == 200 and string.find(body, "\\nprobe_success 1", 1, true) then
    up = up + 1
  else
    down = down + 1
  end
end
function done(summary, latency, requests)
  local u, d = 0, 0
  for _, t in ipairs(threads) do u = u + t:get("up"); d = d + t:get("down") end
  io.write(string.format("PEERS up=%d down=%d\\n", u, d))
end
"""

#: A one-shot check in a fresh interpreter, as a cron job or a Nagios plugin would run it.
ONESHOT = (
    "import asyncio, sys, probekit\n"
    "r = asyncio.run(probekit.HttpProbe(sys.argv[1]).check())\n"
    "sys.exit(r.status.exit_code)\n"
)


def log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str], *, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command of ours (fixed binaries, loopback URLs) and capture its output."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return proc


# -- /proc readings -------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14, 15


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already counted in user
    return total - idle, total


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total else 0.0


def wait_for_quiet(limit: int = 30) -> tuple[float, int]:
    """Wait, at most ``limit`` seconds, for a second in which the machine is nearly idle.

    Returns the busy cores of the last second measured and the seconds waited.
    """
    busy, waited = 0.0, 0
    for waited in range(limit):
        before = machine_ticks()
        time.sleep(1.0)
        busy = busy_cores(before, machine_ticks())
        if busy < QUIET:
            break
        if waited == 0:
            log(f"the machine is busy ({busy:.2f} cores); waiting up to {limit} s for quiet")
    return busy, waited


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    idle_busy, waited = wait_for_quiet()
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_mb": int(mem) // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "busy_cores_before_start": round(idle_busy, 3),
        "seconds_waited_for_quiet": waited,
        "tcp_tw_reuse": Path("/proc/sys/net/ipv4/tcp_tw_reuse").read_text().strip(),
    }


# -- the peers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def find_binaries() -> dict[str, str]:
    wanted = {
        "nginx": ["nginx", "/usr/sbin/nginx"],
        "wrk": ["wrk"],
        "blackbox_exporter": ["prometheus-blackbox-exporter", "blackbox_exporter"],
        "check_http": [str(NAGIOS / "check_http")],
        "curl": ["curl"],
    }
    found, missing = {}, []
    for name, candidates in wanted.items():
        path = next((p for c in candidates if (p := shutil.which(c))), None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise SystemExit(
            f"missing peer programs: {', '.join(missing)}. On Debian/Ubuntu, as root: "
            f"apt-get update && apt-get install -y {' '.join(PACKAGES)} (or run `nox -s peers`)"
        )
    return found


def versions(bins: dict[str, str]) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        proc = run(cmd, timeout=10, check=False)
        return (
            (proc.stdout + proc.stderr).strip().splitlines()[0] if proc.stdout + proc.stderr else ""
        )

    import ssl

    import probekit

    out = {
        "probekit": probekit.__version__,
        "nginx": first_line([bins["nginx"], "-v"]),
        "wrk": first_line([bins["wrk"], "-v"]),
        "blackbox_exporter": first_line([bins["blackbox_exporter"], "--version"]),
        "check_http": first_line([bins["check_http"], "-V"]),
        "curl": first_line([bins["curl"], "--version"]),
        "openssl (python)": ssl.OPENSSL_VERSION,
    }
    for module in ("uvloop", "httpx", "h11"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = "not installed"
    return out


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_until(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], logfile: Path
) -> None:
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {proc.returncode}:\n{logfile.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer within 15 s:\n{logfile.read_text()[-3000:]}")


def nginx_temp_paths(nginx: str, workdir: Path) -> str:
    """Point every compiled-in temp path into the work dir (nginx creates them at start)."""
    configure = run([nginx, "-V"], timeout=10, check=False).stderr
    lines = []
    for module, directive in (
        ("client-body", "client_body_temp_path"),
        ("proxy", "proxy_temp_path"),
        ("fastcgi", "fastcgi_temp_path"),
        ("uwsgi", "uwsgi_temp_path"),
        ("scgi", "scgi_temp_path"),
    ):
        without = f"--without-http_{module.replace('-', '_')}_module"
        if f"--http-{module}-temp-path" in configure and without not in configure:
            lines.append(f"{directive} {workdir / ('tmp-' + module)};")
    return "\n    ".join(lines)


class Peers:
    """nginx (HTTP, HTTPS) and blackbox_exporter on loopback, configured in a temp dir."""

    def __init__(self, bins: dict[str, str], workdir: Path) -> None:
        self.bins = bins
        self.dir = workdir
        self.http_port = free_port()
        self.https_port = free_port()
        self.bbe_port = free_port()
        self.ca_file = workdir / "ca.pem"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.bbe: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/"

    @property
    def https_url(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}/"

    def nginx_pids(self) -> list[int]:
        assert self.nginx is not None
        return [self.nginx.pid, *children_of(self.nginx.pid)]

    def _spawn(self, cmd: list[str], logfile: Path) -> subprocess.Popen[bytes]:
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self._certs()
        self._start_nginx()
        self._start_blackbox()

    def stop(self) -> None:
        """Stop what we started: each process group we created, by its id."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.procs.clear()

    def _certs(self) -> None:
        try:
            import trustme
        except ImportError:
            raise SystemExit(
                "trustme is needed for the HTTPS target: pip install trustme"
            ) from None
        rsa = trustme.KeyType.RSA  # RSA-2048, as in the issue's figures
        ca = trustme.CA(key_type=rsa)
        leaf = ca.issue_cert(LOOPBACK, key_type=rsa)
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf.private_key_pem.write_to_path(str(self.dir / "server.key"))
        (self.dir / "server.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))

    def _start_nginx(self) -> None:
        conf = self.dir / "nginx.conf"
        conf.write_text(
            textwrap.dedent(
                f"""\
                worker_processes 1;
                daemon off;
                master_process on;
                pid {self.dir}/nginx.pid;
                error_log {self.dir}/nginx-error.log error;
                events {{ worker_connections 8192; }}
                http {{
                    access_log off;
                    default_type text/plain;
                    @TEMP_PATHS@
                    server {{
                        listen {LOOPBACK}:{self.http_port};
                        location / {{ return 200 "ok\\n"; }}
                    }}
                    server {{
                        listen {LOOPBACK}:{self.https_port} ssl;
                        ssl_certificate {self.dir}/server.pem;
                        ssl_certificate_key {self.dir}/server.key;
                        location / {{ return 200 "ok\\n"; }}
                    }}
                }}
                """
            ).replace("@TEMP_PATHS@", nginx_temp_paths(self.bins["nginx"], self.dir))
        )
        logfile = self.dir / "nginx.out"
        cmd = [self.bins["nginx"], "-p", str(self.dir), "-c", str(conf)]
        if "-e " in run([self.bins["nginx"], "-h"], timeout=10, check=False).stderr:
            cmd += ["-e", str(self.dir / "nginx-error.log")]  # not /var/log before the config
        self.nginx = self._spawn(cmd, logfile)
        wait_until("nginx", lambda: http_get(self.http_port, "/")[0] == 200, self.nginx, logfile)

        def tls_ready() -> bool:
            with socket.create_connection((LOOPBACK, self.https_port), timeout=2):
                return True

        wait_until("nginx (TLS)", tls_ready, self.nginx, logfile)

    def _start_blackbox(self) -> None:
        conf = self.dir / "blackbox.yml"
        conf.write_text(
            textwrap.dedent(
                f"""\
                modules:
                  http_2xx:
                    prober: http
                    timeout: 10s
                    http:
                      preferred_ip_protocol: ip4
                  https:
                    prober: http
                    timeout: 10s
                    http:
                      preferred_ip_protocol: ip4
                      fail_if_not_ssl: true
                      tls_config:
                        ca_file: {self.ca_file}
                  tcp_connect:
                    prober: tcp
                    timeout: 10s
                    tcp:
                      preferred_ip_protocol: ip4
                """
            )
        )
        logfile = self.dir / "blackbox.out"
        self.bbe = self._spawn(
            [
                self.bins["blackbox_exporter"],
                f"--config.file={conf}",
                f"--web.listen-address={LOOPBACK}:{self.bbe_port}",
                "--log.level=warn",
            ],
            logfile,
        )
        wait_until(
            "blackbox_exporter",
            lambda: http_get(self.bbe_port, "/-/healthy")[0] == 200,
            self.bbe,
            logfile,
        )
        for kind in ("http", "https", "tcp"):
            status, body = http_get(self.bbe_port, self.probe_path(kind) + "&debug=true")
            if status != 200 or "probe_success 1" not in body:
                raise RuntimeError(f"blackbox_exporter cannot probe {kind}:\n{body[-3000:]}")

    def probe_path(self, kind: str) -> str:
        target, module = {
            "http": (self.http_url, "http_2xx"),
            "https": (self.https_url, "https"),
            "tcp": (f"{LOOPBACK}:{self.http_port}", "tcp_connect"),
        }[kind]
        return "/probe?" + urlencode({"target": target, "module": module})


# -- measurements ---------------------------------------------------------------------------


def run_blackbox(peers: Peers, kind: str, duration: float) -> dict[str, Any]:
    """blackbox_exporter's probes/s and CPU per probe, driven by wrk through /probe."""
    assert peers.bbe is not None
    lua = peers.dir / "count.lua"
    lua.write_text(WRK_LUA)
    url = f"http://{LOOPBACK}:{peers.bbe_port}{peers.probe_path(kind)}"
    cmd = [peers.bins["wrk"], "-t1", f"-c{CONCURRENCY}", "--timeout", "10s", "-s", str(lua)]
    run([*cmd, "-d1s", url], timeout=60)  # warm-up (Go runtime, nginx), not counted
    nginx_pids = peers.nginx_pids()
    bbe0, ngx0 = proc_cpu(peers.bbe.pid), sum(proc_cpu(p) for p in nginx_pids)
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks0 = machine_ticks()
    start = time.perf_counter()
    out = run([*cmd, f"-d{duration:g}s", url], timeout=duration + 60).stdout
    wall = time.perf_counter() - start
    ticks1 = machine_ticks()
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    bbe_cpu = proc_cpu(peers.bbe.pid) - bbe0
    ngx_cpu = sum(proc_cpu(p) for p in nginx_pids) - ngx0
    wrk_cpu = (wrk1.ru_utime + wrk1.ru_stime) - (wrk0.ru_utime + wrk0.ru_stime)
    counted = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    verdicts = re.search(r"PEERS up=(\d+) down=(\d+)", out)
    if counted is None or verdicts is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    n = int(counted.group(1))
    seconds = float(counted.group(2)) / (1000 if counted.group(3) == "ms" else 1)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "probes": n,
        "seconds": round(seconds, 3),
        "probes_per_s": n / seconds,
        "cpu_s": round(bbe_cpu, 3),
        "cpu_us_per_probe": 1e6 * bbe_cpu / n,
        "up": int(verdicts.group(1)),
        "down": int(verdicts.group(2)),
        "socket_errors": errors.group(1).strip() if errors else None,
        "cores": {
            "prober": round(bbe_cpu / wall, 3),
            "nginx": round(ngx_cpu / wall, 3),
            "load_generator (wrk)": round(wrk_cpu / wall, 3),
            "machine_busy": round(busy_cores(ticks0, ticks1), 3),
            OTHER: round(busy_cores(ticks0, ticks1) - (bbe_cpu + ngx_cpu + wrk_cpu) / wall, 3),
        },
        "nginx_cpu_us_per_probe": 1e6 * ngx_cpu / n,
        "command": " ".join([*cmd, f"-d{duration:g}s", url]),
    }


def measured(what: str, attempt: Callable[[], dict[str, Any]], tries: int) -> dict[str, Any]:
    """Run ``attempt`` once the machine is quiet; while other processes took more than QUIET
    cores during it, run it again (``tries`` times in all) and keep the least disturbed run."""
    best: dict[str, Any] | None = None
    for i in range(tries):
        wait_for_quiet()
        result = attempt()
        result["attempt"] = i + 1
        other = result["cores"][OTHER]
        if best is None or other < best["cores"][OTHER]:
            best = result
        if other <= QUIET:
            break
        again = "measuring again" if i + 1 < tries else "keeping the least disturbed run"
        log(f"  {what}: other processes used {other:.2f} cores meanwhile; {again}")
    assert best is not None
    best["disturbed"] = best["cores"][OTHER] > QUIET
    return best


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"probekit worker {spec['mode']} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_probekit(
    peers: Peers,
    kind: str,
    duration: float,
    *,
    uvloop: bool,
    warmup: int,
    processes: int | None = None,
) -> dict[str, Any]:
    spec = {
        "processes": processes,
        "mode": "throughput",
        "kind": kind,
        "http_port": peers.http_port,
        "https_port": peers.https_port,
        "ca_file": str(peers.ca_file),
        "duration": duration,
        "max_probes": 200_000,
        "concurrency": CONCURRENCY,
        "uvloop": uvloop,
        "warmup": warmup,
        "watch": {"nginx": peers.nginx_pids()},
    }
    result = run_worker(spec, timeout=duration + 120)
    result["probes_per_s"] = result["probes"] / result["seconds"]
    result["cpu_us_per_probe"] = 1e6 * result["cpu_s"] / result["probes"]
    result["nginx_cpu_us_per_probe"] = 1e6 * result["watched_cpu_s"]["nginx"] / result["probes"]
    return result


def wall_runs(cmd: list[str], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        run(cmd, timeout=30)
        times.append(time.perf_counter() - start)
    return times


def run_oneshot(peers: Peers, n: int) -> dict[str, Any]:
    check_http = [peers.bins["check_http"], "-H", LOOPBACK, "-p", str(peers.http_port)]
    out = run(check_http, timeout=30).stdout
    if not out.startswith("HTTP OK"):
        raise RuntimeError(f"check_http did not say OK: {out}")
    fresh = [sys.executable, "-c", ONESHOT, peers.http_url]
    bare = [sys.executable, "-c", "pass"]
    run(fresh, timeout=30)  # bytecode caches written before timing
    peer = wall_runs(check_http, n)
    ours = wall_runs(fresh, n)
    interpreter = wall_runs(bare, n)
    warm = run_worker({"mode": "warm", "url": peers.http_url, "n": 10 * n}, timeout=120)
    return {
        "runs": n,
        "check_http_ms": 1e3 * statistics.mean(peer),
        "check_http_median_ms": 1e3 * statistics.median(peer),
        "probekit_fresh_ms": 1e3 * statistics.mean(ours),
        "probekit_fresh_median_ms": 1e3 * statistics.median(ours),
        "python_startup_ms": 1e3 * statistics.mean(interpreter),
        "probekit_warm_ms": warm["mean_ms"],
        "probekit_warm_median_ms": warm["median_ms"],
        "probekit_warm_checks": warm["n"],
        "probekit_warm_down": warm["down"],
        "check_http_command": " ".join(check_http),
    }


CURL_FORMAT = (
    "PHASES %{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} "
    "%{time_starttransfer} %{time_total} %{http_code}\\n"
)


def curl_phases(output: str, url: str) -> dict[str, list[float]]:
    """Per-phase durations from curl's cumulative ``-w`` figures, one line per transfer."""
    out: dict[str, list[float]] = {p: [] for p in (*PHASES, "total")}
    for line in output.splitlines():
        if not line.startswith("PHASES "):
            continue  # a response body
        fields = line.split()[1:]
        if fields[-1] != "200":
            raise RuntimeError(f"curl got {fields[-1]} from {url}")
        lookup, connect, appconnect, _pre, first, total = (float(v) for v in fields[:6])
        out["resolve"].append(lookup)
        out["connect"].append(connect - lookup)
        out["tls"].append(appconnect - connect)
        out["processing"].append(first - appconnect)
        out["transfer"].append(total - first)
        out["total"].append(total)
    return out


def run_phases(peers: Peers, n: int) -> dict[str, Any]:
    """probekit's phases next to curl's, for one HTTPS URL, sequential and unloaded.

    curl runs two ways: a fresh process per transfer (how ``curl -w`` is usually run; its first
    handshake also pays for loading OpenSSL's configuration and the CA file), and one process
    doing all N transfers, each on a new connection (``Connection: close``) with a full
    handshake (``--no-sessionid``). probekit's checks run in one warm process, so the second
    is the like-for-like peer, and the one the target is checked against.
    """
    url = peers.https_url
    base = [peers.bins["curl"], "-s", "--cacert", str(peers.ca_file), "-w", CURL_FORMAT]
    fresh: dict[str, list[float]] = {p: [] for p in (*PHASES, "total")}
    for _ in range(n):
        for name, values in curl_phases(run([*base, url], timeout=30).stdout, url).items():
            fresh[name] += values
    warm_cmd = [*base, "--no-sessionid", "-H", "Connection: close", *[url] * (n + 5)]
    warm = curl_phases(run(warm_cmd, timeout=60).stdout, url)
    warm = {name: values[5:] for name, values in warm.items()}  # as probekit: 5 warm-up checks
    if len(warm["total"]) != n or len(fresh["total"]) != n:
        raise RuntimeError("curl did not report every transfer")
    ours = run_worker(
        {"mode": "phases", "url": url, "ca_file": str(peers.ca_file), "n": n}, timeout=120
    )
    rows = {}
    for name in (*PHASES, "total"):
        pk = ours["medians"][name]
        peer = statistics.median(warm[name])
        diff = pk - peer
        rows[name] = {
            "probekit_ms": 1e3 * pk,
            "curl_ms": 1e3 * peer,
            "curl_fresh_process_ms": 1e3 * statistics.median(fresh[name]),
            "diff_ms": 1e3 * diff,
            "within": abs(diff) <= 0.0005 or abs(diff) <= 0.10 * peer,
        }
    return {
        "runs": n,
        "url": url,
        "down": ours["down"],
        "curl_fresh_command": " ".join([*base, url]),
        "curl_warm_command": " ".join([*base, "--no-sessionid", "-H", "'Connection: close'"])
        + f" <url x {n + 5}>",
        "phases": rows,
    }


IMPORTS = {
    "probekit": "import probekit",
    "probekit_http": "from probekit import HttpProbe, Runner",
    "httpx": "import httpx",
}


def import_seconds(statement: str) -> float:
    """Wall time of ``statement`` in a fresh interpreter, timed inside it (startup excluded)."""
    code = f"import time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    return float(run([sys.executable, "-c", code], timeout=60).stdout.split()[-1])


def run_imports(n: int) -> dict[str, Any]:
    """Import times, median of ``n`` fresh processes each.

    probekit loads its public names on first use (PEP 562), so ``import probekit`` alone is
    cheap; ``from probekit import HttpProbe, Runner`` is what an HTTP check has to pay.
    """
    out: dict[str, Any] = {"runs": n, "statements": IMPORTS}
    for key, statement in IMPORTS.items():
        try:
            import_seconds(statement)  # bytecode caches written before timing
        except RuntimeError as exc:
            log(f"cannot time {statement!r}: {str(exc)[:200]}")
            continue
        times = sorted(import_seconds(statement) for _ in range(n))
        out[f"{key}_ms"] = 1e3 * statistics.median(times)
        out[f"{key}_all_ms"] = [round(1e3 * t, 2) for t in times]
    return out


# -- the probekit worker (runs in its own process) ------------------------------------------


def _probe(spec: dict[str, Any]) -> Any:
    import probekit

    kind = spec["kind"]
    if kind == "http":
        return probekit.HttpProbe(f"http://{LOOPBACK}:{spec['http_port']}/")
    if kind == "https":
        tls = probekit.TlsOptions(ca_file=spec["ca_file"])
        return probekit.HttpProbe(f"https://{LOOPBACK}:{spec['https_port']}/", tls=tls)
    return probekit.TcpProbe(LOOPBACK, spec["http_port"])


async def _throughput(spec: dict[str, Any]) -> dict[str, Any]:
    from probekit import ProcessRunner, Runner

    probe = _probe(spec)
    processes = spec.get("processes")
    runner: Any
    if processes:
        loop: Literal["asyncio", "uvloop"] = "uvloop" if spec.get("uvloop") else "asyncio"
        runner = ProcessRunner(processes, spec["concurrency"], loop=loop)
    else:
        runner = Runner(max_concurrency=spec["concurrency"])
    counts: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    limit, duration = spec["max_probes"], spec["duration"]
    watched = {name: list(pids) for name, pids in spec["watch"].items()}

    def probes(stop: float) -> Iterator[Any]:
        for _ in range(limit):
            if time.perf_counter() >= stop:
                return
            yield probe

    async with runner:
        await runner.run_all([probe] * spec["warmup"])
        workers = list(runner.pids) if processes else []
        cpu0 = {name: sum(proc_cpu(p) for p in pids) for name, pids in watched.items()}
        workers0 = sum(proc_cpu(p) for p in workers)
        ticks0 = machine_ticks()
        process0 = time.process_time()
        start = time.perf_counter()
        async for result in runner.stream(probes(start + duration)):
            counts[result.status.name] += 1
            if not result.ok:
                errors[result.summary().split(" ", 2)[2][:160]] += 1
        seconds = time.perf_counter() - start
        # The prober's CPU: this process, plus its worker processes when there are some.
        cpu = time.process_time() - process0 + sum(proc_cpu(p) for p in workers) - workers0
        ticks1 = machine_ticks()
        watched_cpu = {
            name: sum(proc_cpu(p) for p in pids) - cpu0[name] for name, pids in watched.items()
        }
        restarts = runner.restarts if processes else 0
    n = sum(counts.values())
    if processes:
        what = f"ProcessRunner({processes}, {spec['concurrency']}, loop={loop!r})"
    else:
        what = f"Runner(max_concurrency={spec['concurrency']})"
    return {
        "probes": n,
        "seconds": seconds,
        "cpu_s": cpu,
        "up": counts["UP"],
        "down": n - counts["UP"],
        "statuses": dict(counts),
        "errors": dict(errors.most_common(5)),
        "loop": type(asyncio.get_running_loop()).__module__,
        "processes": processes or 1,
        "worker_restarts": restarts,
        "watched_cpu_s": watched_cpu,
        "cores": {
            "prober": round(cpu / seconds, 3),
            **{name: round(v / seconds, 3) for name, v in watched_cpu.items()},
            "machine_busy": round(busy_cores(ticks0, ticks1), 3),
            OTHER: round(
                busy_cores(ticks0, ticks1) - (cpu + sum(watched_cpu.values())) / seconds, 3
            ),
        },
        "command": f"{what}.stream(<{n} x {probe!r}>)",
    }


async def _warm(spec: dict[str, Any]) -> dict[str, Any]:
    import probekit

    probe = probekit.HttpProbe(spec["url"])
    for _ in range(10):
        await probe.check()
    times, down = [], 0
    for _ in range(spec["n"]):
        start = time.perf_counter()
        result = await probe.check()
        times.append(time.perf_counter() - start)
        down += not result.ok
    return {
        "n": spec["n"],
        "mean_ms": 1e3 * statistics.mean(times),
        "median_ms": 1e3 * statistics.median(times),
        "down": down,
    }


async def _phases(spec: dict[str, Any]) -> dict[str, Any]:
    import probekit

    probe = probekit.HttpProbe(spec["url"], tls=probekit.TlsOptions(ca_file=spec["ca_file"]))
    for _ in range(5):
        await probe.check()
    seen: dict[str, list[float]] = {p: [] for p in (*PHASES, "total")}
    down = 0
    for _ in range(spec["n"]):
        result = await probe.check()
        if not result.ok:
            down += 1
            continue
        for name in PHASES:
            seen[name].append(result.phase(name) or 0.0)
        seen["total"].append(result.duration)
    return {"medians": {k: statistics.median(v) for k, v in seen.items()}, "down": down}


def worker(spec: dict[str, Any]) -> None:
    mode = {"throughput": _throughput, "warm": _warm, "phases": _phases}[spec["mode"]]
    factory = None
    if spec.get("uvloop"):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as loop:
        result = loop.run(mode(spec))
    print(json.dumps(result))


def has_uvloop() -> bool:
    return run([sys.executable, "-c", "import uvloop"], timeout=30, check=False).returncode == 0


# -- the table ------------------------------------------------------------------------------


def verdict(key: str, value: float | None) -> str:
    if key not in TARGETS or value is None:
        return "-"
    op, bound, _ = TARGETS[key]
    ok = value >= bound if op == ">=" else value <= bound
    return "yes" if ok else "NO"


def build_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(
        measure: str,
        unit: str,
        ours: float | None,
        peer: float | None,
        peer_name: str,
        ratio: float | None,
        key: str = "",
        *,
        target: str | None = None,
        met: str | None = None,
        note: str = "",
    ) -> None:
        if target is None:
            target = TARGETS[key][2] if key in TARGETS else "-"
        if met is None:
            met = verdict(key, ours if key == "http_cpu" else ratio)
        rows.append(
            {
                "measure": measure,
                "unit": unit,
                "probekit": ours,
                "peer": peer,
                "peer_name": peer_name,
                "ratio": ratio,
                "target": target,
                "met": met,
                "note": note,
            }
        )

    def disturbed(*runs: dict[str, Any]) -> str:
        worst = max(r["cores"][OTHER] for r in runs)
        return f"; DISTURBED: other processes used {worst:.2f} cores" if worst > QUIET else ""

    variants = tuple((name, label) for name, label in VARIANT_LABELS.items())
    runs = [
        (
            kind,
            label,
            data["throughput"][kind][variant],
            data["throughput"][kind]["blackbox_exporter"],
        )
        for kind in ("http", "https", "tcp")
        if kind in data["throughput"]
        for variant, label in variants
        if variant in data["throughput"][kind]
    ]
    for kind, label, pk, bbe in runs:
        row(
            f"{kind.upper()} probes/s{label}",
            "probes/s",
            pk["probes_per_s"],
            bbe["probes_per_s"],
            "blackbox_exporter",
            pk["probes_per_s"] / bbe["probes_per_s"],
            f"{kind}_rate",
            note=f"not UP: probekit {pk['down']} of {pk['probes']}, "
            f"blackbox_exporter {bbe['down']} of {bbe['probes']}" + disturbed(pk, bbe),
        )
    for kind, label, pk, bbe in runs:
        row(
            f"CPU per {kind.upper()} probe{label}",
            "us",
            pk["cpu_us_per_probe"],
            bbe["cpu_us_per_probe"],
            "blackbox_exporter",
            pk["cpu_us_per_probe"] / bbe["cpu_us_per_probe"],
            "http_cpu" if kind == "http" else "",
            note="ratio < 1: probekit uses less CPU per probe",
        )
    for kind, label, pk, bbe in runs:
        ours, peer = 1e6 / pk["cpu_us_per_probe"], 1e6 / bbe["cpu_us_per_probe"]
        row(
            f"{kind.upper()} probes per CPU-second{label}",
            "probes/s",
            ours,
            peer,
            "blackbox_exporter",
            ours / peer,
            note=f"per core: probekit used {pk['cores']['prober']:.2f} cores, "
            f"blackbox_exporter {bbe['cores']['prober']:.2f}",
        )
    one = data.get("oneshot")
    if one:
        row(
            "one check, fresh process (wall)",
            "ms",
            one["probekit_fresh_ms"],
            one["check_http_ms"],
            "check_http",
            one["probekit_fresh_ms"] / one["check_http_ms"],
            note=f"mean of {one['runs']}; `python -c pass`: {one['python_startup_ms']:.1f} ms",
        )
        row(
            "one check, warm process (wall)",
            "ms",
            one["probekit_warm_ms"],
            one["check_http_ms"],
            "check_http",
            one["probekit_warm_ms"] / one["check_http_ms"],
            note=f"mean of {one['probekit_warm_checks']} sequential checks in one process",
        )
    phases = data.get("phases")
    if phases:
        for name, p in phases["phases"].items():
            total = name == "total"
            note = f"curl in a fresh process per run: {p['curl_fresh_process_ms']:.3f} ms"
            if not total:
                note = f"diff {p['diff_ms']:+.3f} ms; {note}"
            row(
                f"HTTPS phase {name} (median)",
                "ms",
                p["probekit_ms"],
                p["curl_ms"],
                "curl -w",
                p["probekit_ms"] / p["curl_ms"] if p["curl_ms"] else None,
                target="-" if total else "within 0.5 ms or 10 %",
                met="-" if total else ("yes" if p["within"] else "NO"),
                note=note,
            )
    imports = data.get("imports")
    if imports and imports.get("httpx_ms"):
        for key in ("probekit", "probekit_http"):
            if imports.get(f"{key}_ms") is None:
                continue
            row(
                f"`{IMPORTS[key]}` (median)",
                "ms",
                imports[f"{key}_ms"],
                imports["httpx_ms"],
                "import httpx",
                imports[f"{key}_ms"] / imports["httpx_ms"],
                "import",
                note=f"fresh interpreter, timed inside it, median of {imports['runs']}",
            )
    return rows


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "probes/s":
        return f"{value:,.0f}"
    if unit == "us":
        return f"{value:,.0f} us"
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def render(rows: list[dict[str, Any]]) -> str:
    head = ("measure", "probekit", "peer", "ratio", "target", "met", "note")
    lines = [
        (
            r["measure"],
            fmt(r["probekit"], r["unit"]),
            f"{fmt(r['peer'], r['unit'])} ({r['peer_name']})",
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            r["target"],
            r["met"],
            r["note"],
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) + " |" for x in lines
    ]
    return "\n".join(out)


def render_cores(data: dict[str, Any]) -> str:
    out = ["CPU cores in use during each throughput run (of the machine's cores):"]
    for kind, section in data["throughput"].items():
        for variant, r in section.items():
            cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items())
            out.append(f"  {kind:5} {variant:25} {cores}")
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------


def measure(args: argparse.Namespace, bins: dict[str, str], workdir: Path) -> dict[str, Any]:
    duration = args.duration or (3.0 if args.quick else 10.0)
    reps = 10 if args.quick else 20
    tries = 1 if args.quick else 3
    data: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "versions": versions(bins),
        "settings": {
            "address": LOOPBACK,
            "concurrency": CONCURRENCY,
            "duration_s": duration,
            "tries_per_throughput_run": tries,
            "quiet_threshold_cores": QUIET,
            "wrk": f"wrk -t1 -c{CONCURRENCY} -d{duration:g}s",
            "oneshot_runs": reps,
            "phase_runs": 2 * reps + 10,
            "import_runs": reps // 2,  # each of the statements
            "bytecode": "cached (PYTHONPYCACHEPREFIX in the temp dir, written before timing)",
        },
        "throughput": {},
    }
    uvloop = has_uvloop()
    peers = Peers(bins, workdir)
    try:
        peers.start()
        log(
            f"nginx on {peers.http_port} (HTTP), {peers.https_port} (HTTPS); "
            f"blackbox_exporter on {peers.bbe_port}"
        )
        for kind in ("http", "https", "tcp"):
            section: dict[str, Any] = {}
            log(f"{kind}: blackbox_exporter via wrk, {duration:g} s")
            section["blackbox_exporter"] = measured(
                f"{kind} blackbox_exporter",
                functools.partial(run_blackbox, peers, kind, duration),
                tries,
            )
            for variant, on_uvloop, processes in VARIANTS:
                if on_uvloop and not uvloop:
                    continue
                how = f"ProcessRunner ({CORES} processes)" if processes else "Runner"
                log(f"{kind}: {variant} {how}, {duration:g} s")
                section[variant] = measured(
                    f"{kind} {variant}",
                    functools.partial(
                        run_probekit,
                        peers,
                        kind,
                        duration,
                        uvloop=on_uvloop,
                        warmup=200,
                        processes=CORES if processes else None,
                    ),
                    tries,
                )
            for name, r in section.items():
                log(
                    f"  {name}: {r['probes_per_s']:,.0f} probes/s, "
                    f"{r['cpu_us_per_probe']:,.0f} us CPU/probe, {r['down']} not UP"
                )
            data["throughput"][kind] = section
        log(f"one-shot wall time, {reps} runs each")
        busy = wait_for_quiet()[0]
        data["oneshot"] = run_oneshot(peers, reps) | {"busy_cores_before": round(busy, 3)}
        log(f"phases against curl -w, {2 * reps + 10} runs each")
        busy = wait_for_quiet()[0]
        data["phases"] = run_phases(peers, 2 * reps + 10) | {"busy_cores_before": round(busy, 3)}
    finally:
        peers.stop()
    log(f"import times, {reps // 2} runs each")
    busy = wait_for_quiet()[0]
    data["imports"] = run_imports(reps // 2) | {"busy_cores_before": round(busy, 3)}
    if not uvloop:
        data["notes"] = ["uvloop not importable: no uvloop rows"]
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs and fewer repetitions")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--duration", type=float, help="seconds per throughput run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    bins = find_binaries()
    # A SIGTERM unwinds like Ctrl-C, so the servers are stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="probekit-peers-") as tmp:
        # Timed interpreters read bytecode caches, as an installed package would (an editable
        # install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile probekit every time
        # while httpx's caches were written by pip); the caches go to the temp dir.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        data = measure(args, bins, Path(tmp))
    data["table"] = build_table(data)
    table = render(data["table"])
    m = data["machine"]
    print(
        f"\nprobekit peers, {data['date']}, {data['mode']} run; {m['nproc']} x {m['cpu_model']}, "
        f"Python {m['python']}; load generator, target and prober share these cores\n"
    )
    print(table)
    print()
    print(render_cores(data))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; the servers were stopped")
        sys.exit(130)
