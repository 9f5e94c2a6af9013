"""The checkpoint system at scale: 2,000 monitors on two instances, every 10 s, for 10 minutes.

Starts, on loopback high ports, a local HTTP target (a small asyncio server in a subprocess of
its own), `probekit control -q` with the monitors in its config file and retention on, and two
`probekit checkpoint` instances of one checkpoint. After a warm-up of one interval plus 5 s (the
first runs are spread over the first interval), it samples every 5 s and reports:

- results/s: stored by the control plane (`probekit_control_results_stored_total` over the
  measured window) next to the rate the monitors ask for (monitors / interval);
- CPU (cores: user + system seconds over the window, from psutil) and RSS (peak and last) of
  each process, children included;
- the database size (file + WAL) over time, with `retention` (default 120 s, pruned every 30 s,
  so that a run of minutes shows whether the size levels off once it holds one retention).

    python benchmarks/checkpoint_scale.py                    # 10 minutes
    python benchmarks/checkpoint_scale.py --duration 150     # a short run

Options: --monitors, --interval, --duration, --retention, --prune-interval, --instances N
(default 2), --postgres (store in a throwaway PostgreSQL from tests/_pgserver.py, whose
processes are measured too), --json PATH, --keep DIR (work there and keep the config, the logs
and the database). Every
process is stopped at the end (SIGTERM; the instances drain), the temporary directory removed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

TARGET = r"""
import asyncio, sys
async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await asyncio.sleep(10**6)
asyncio.run(main())
"""

TOKEN_ENV = "SCALE_TOKEN"  # noqa: S105 (the name of a variable)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    samples: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name.split("{", 1)[0]] += float(value)
    return samples


def wait_for(port: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not scrape(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.5)


PG_PASSWORD_ENV = "PROBEKIT_SCALE_PG_PASSWORD"  # noqa: S105 - the variable's name


def control_config(args: argparse.Namespace, port: int, metrics: int, db: str, url: str) -> str:
    lines = [
        "[control]",
        f"port = {port}",
        f'db = "{db}"',
        *(
            [f'db_password = {{ env = "{PG_PASSWORD_ENV}" }}']
            if db.startswith("postgresql")
            else []
        ),
        f"metrics_port = {metrics}",
        f"retention = {args.retention}",
        f"prune_interval = {args.prune_interval}",
        "",
        "[[checkpoints]]",
        'id = "scale"',
        f'token = {{ env = "{TOKEN_ENV}" }}',
    ]
    for i in range(args.monitors):
        lines += [
            "",
            "[[monitors]]",
            f'id = "m{i:05d}"',
            'checkpoint = "scale"',
            f"interval = {args.interval}",
            'kind = "http"',
            f'url = "{url}/m{i:05d}"',
            "timeouts = { total = 5 }",
        ]
    return "\n".join(lines) + "\n"


class Sampled:
    """A process of ours and its CPU and memory, children included."""

    def __init__(
        self, name: str, popen: subprocess.Popen[bytes] | None, pid: int | None = None
    ) -> None:
        self.name = name
        self.popen = popen  # None: not ours to stop (the PostgreSQL server)
        self.proc = psutil.Process(popen.pid if popen is not None else pid)
        self.cpu0 = 0.0
        self.cpu1 = 0.0
        self.rss_peak = 0
        self.rss_last = 0

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.proc, *self.proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    def sample(self) -> None:
        rss = 0
        for proc in self._tree():
            try:
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        self.rss_last = rss
        self.rss_peak = max(self.rss_peak, rss)


def db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


class _Postgres:
    """With ``--postgres``: a throwaway PostgreSQL (tests/_pgserver.py) for the control plane,
    its size read with ``pg_database_size``."""

    def __init__(self) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _pgserver import PgServer, find_bin

        bin_dir = find_bin()
        if bin_dir is None:
            raise SystemExit(
                "--postgres needs PostgreSQL's initdb and pg_ctl (set PROBEKIT_PG_BIN)"
            )
        self.server = PgServer(bin_dir)
        self.server.start()

    def size(self) -> int:
        import psycopg

        with psycopg.connect(self.server.admin_dsn) as conn:
            row = conn.execute("SELECT pg_database_size('probekit')").fetchone()
        return int(row[0]) if row else 0


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = {**os.environ, TOKEN_ENV: os.urandom(16).hex()}
    target_port, port, metrics = free_port(), free_port(), free_port()
    db = workdir / "control.db"
    postgres = _Postgres() if args.postgres else None
    if postgres is not None:
        env[PG_PASSWORD_ENV] = postgres.server.password
    size = postgres.size if postgres is not None else (lambda: db_bytes(db))
    config = workdir / "control.toml"
    url = f"http://127.0.0.1:{target_port}"
    store = postgres.server.url if postgres is not None else str(db)
    config.write_text(control_config(args, port, metrics, store, url))
    started: list[Sampled] = []
    logs = []

    def spawn(name: str, argv: list[str]) -> Sampled:
        log = (workdir / f"{name}.log").open("wb")
        logs.append(log)
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append(Sampled(name, popen))
        return started[-1]

    try:
        spawn("target", [sys.executable, "-c", TARGET, str(target_port)])
        if postgres is not None:
            pid = int((postgres.server.data / "postmaster.pid").read_text().split()[0])
            started.append(Sampled("postgres", None, pid))
        control = spawn(
            "control", [sys.executable, "-m", "probekit", "control", "--config", str(config), "-q"]
        )
        wait_for(metrics, "the control plane")
        instance_metrics = {}
        for name in (f"scale-{chr(ord('a') + i)}" for i in range(args.instances)):
            instance_metrics[name] = free_port()
            argv = [
                *(sys.executable, "-m", "probekit", "checkpoint"),
                *("--url", f"ws://127.0.0.1:{port}/", "--insecure", "--token-env", TOKEN_ENV),
                *("--checkpoint-id", "scale", "--instance-id", name),
                *("--spool", str(workdir / f"spool-{name}.db"), "--allow", "127.0.0.0/8"),
                *("--metrics-port", str(instance_metrics[name])),
            ]
            spawn(name, argv)
        for name, mport in instance_metrics.items():
            wait_for(mport, name)

        warmup = args.interval + 5
        print(f"warming up for {warmup:.0f} s, then measuring for {args.duration:.0f} s")
        time.sleep(warmup)
        for proc in started:
            proc.cpu0 = proc.cpu()
        stored0 = scrape(metrics).get("probekit_control_results_stored_total", 0.0)
        t0 = time.monotonic()
        timeline = []
        next_report = 0.0
        while (elapsed := time.monotonic() - t0) < args.duration:
            time.sleep(min(5.0, args.duration - elapsed))
            for proc in started:
                proc.sample()
            elapsed = time.monotonic() - t0
            stats = scrape(metrics)
            stored = stats.get("probekit_control_results_stored_total", 0.0) - stored0
            point = {
                "t": round(elapsed, 1),
                "stored": int(stored),
                "db_bytes": size(),
                "rows_pruned": int(stats.get("probekit_control_rows_pruned_total", 0)),
                "runs_outstanding": int(stats.get("probekit_control_runs_outstanding", 0)),
            }
            timeline.append(point)
            if elapsed >= next_report:
                print(
                    f"  {elapsed:6.0f} s  {stored / elapsed:7.1f} results/s  "
                    f"db {point['db_bytes'] / 2**20:6.1f} MiB  pruned {point['rows_pruned']}"
                )
                next_report += 30
        elapsed = time.monotonic() - t0
        for proc in started:
            proc.cpu1 = proc.cpu()
        final = scrape(metrics)
        stored = final.get("probekit_control_results_stored_total", 0.0) - stored0
        instances = {name: scrape(mport) for name, mport in instance_metrics.items()}
        report = {
            "monitors": args.monitors,
            "interval": args.interval,
            "duration": round(elapsed, 1),
            "retention": args.retention,
            "results_per_second": round(stored / elapsed, 1),
            "expected_per_second": round(args.monitors / args.interval, 1),
            "runs_reassigned": int(final.get("probekit_control_runs_reassigned_total", 0)),
            "results_duplicate": int(final.get("probekit_control_results_duplicate_total", 0)),
            "results_refused": int(final.get("probekit_control_results_refused_total", 0)),
            "processes": {
                proc.name: {
                    "cpu_cores": round((proc.cpu1 - proc.cpu0) / elapsed, 3),
                    "rss_peak_mib": round(proc.rss_peak / 2**20, 1),
                    "rss_last_mib": round(proc.rss_last / 2**20, 1),
                }
                for proc in started
            },
            "instances": {
                name: {
                    "results": int(m.get("probekit_checkpoint_results_total", 0)),
                    "spool_depth": int(m.get("probekit_checkpoint_spool_depth", 0)),
                    "results_lost": int(m.get("probekit_checkpoint_results_lost_total", 0)),
                    "reconnects": int(m.get("probekit_checkpoint_reconnects_total", 0)),
                }
                for name, m in instances.items()
            },
            "instances_count": args.instances,
            "storage": "postgresql" if postgres is not None else "sqlite",
            "db_bytes_final": size(),
            "db_bytes_max": max(p["db_bytes"] for p in timeline),
            "timeline": timeline,
        }
        del control
        return report
    finally:
        for proc in reversed(started):
            if proc.popen is not None and proc.popen.poll() is None:
                proc.popen.terminate()
                try:
                    proc.popen.wait(30)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
        for log in logs:
            log.close()
        if postgres is not None:
            postgres.server.stop()


def show(report: dict[str, Any]) -> None:
    print()
    print(
        f"{report['monitors']} monitors every {report['interval']:g} s on "
        f"{report['instances_count']} instances, {report['duration']:.0f} s measured, retention "
        f"{report['retention']:g} s, {report['storage']}"
    )
    print(
        f"results/s stored: {report['results_per_second']} "
        f"(the monitors ask for {report['expected_per_second']}); runs reassigned "
        f"{report['runs_reassigned']}, duplicates {report['results_duplicate']}, refused "
        f"{report['results_refused']}"
    )
    for name, instance in report["instances"].items():
        print(
            f"{name}: {instance['results']} results, {instance['reconnects']} reconnects, "
            f"{instance['spool_depth']} in the spool, {instance['results_lost']} lost"
        )
    print(f"{'process':<10} {'CPU (cores)':>11} {'RSS peak MiB':>13} {'RSS last MiB':>13}")
    for name, proc in report["processes"].items():
        print(
            f"{name:<10} {proc['cpu_cores']:>11.3f} {proc['rss_peak_mib']:>13.1f} "
            f"{proc['rss_last_mib']:>13.1f}"
        )
    sizes = [p for p in report["timeline"] if p["t"] % 60 < 5 or p is report["timeline"][-1]]
    print("DB size: " + ", ".join(f"{p['t']:.0f} s {p['db_bytes'] / 2**20:.1f} MiB" for p in sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--monitors", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds measured")
    parser.add_argument("--retention", type=float, default=120.0, help="seconds kept")
    parser.add_argument("--prune-interval", type=float, default=30.0)
    parser.add_argument("--instances", type=int, default=2, help="checkpoint instances")
    parser.add_argument(
        "--postgres", action="store_true", help="store in a throwaway PostgreSQL, not SQLite"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--keep", type=Path, help="work in this directory and keep it (configs, logs, database)"
    )
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="checkpoint-scale-") as tmp:
            report = run(args, Path(tmp))
    show(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
