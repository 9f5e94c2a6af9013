"""CPU per check and peak memory of probekit's ``mysql`` kind next to ``check_mysql`` and
``check_mysql_query`` (monitoring-plugins), against one real MariaDB on loopback.

What it measures, in one run, against a MariaDB started with ``interop/daemons/mariadb.sh`` on
127.0.0.1 (a high port, a temporary state directory, stopped at the end):

- **a process per check**, the way a Nagios-style scheduler runs plugins: ``check_mysql`` (login,
  then its status query) and ``probekit check mysql`` (login) as fresh processes, each waited for
  with ``os.wait4`` so its own CPU (user + system) and peak RSS are read from the kernel; also
  ``check_mysql_query -q "SELECT 1"`` against ``probekit check mysql -q "SELECT 1"``; and both
  with TLS (``-l`` against ``--ssl``);
- **a large result**: the same query returning 200,000 rows (MariaDB's ``seq_1_to_200000``)
  through ``check_mysql_query`` and through probekit, showing what holding a result set costs:
  the plugin stores the whole result (libmysqlclient's ``mysql_store_result``), probekit reads
  the rows a packet at a time and keeps only the first cell;
- **in one process**: probekit's CPU per check over a series of checks in one warm process
  (``time.process_time``), and the Python heap a check allocates at its peak (``tracemalloc``),
  with the small and the large query — what a checkpoint running many checks pays.

Against what: the plugins run in the same run, on the same server; the table gives each figure,
the plugin's, and the ratio. Medians over the runs. The machine is shared, so absolute figures
move from run to run; the ratios much less. Loopback only.

Run: ``python benchmarks/protocol_mysql.py [--runs N] [--json PATH]`` (as root, or as a user who
may start mariadbd as ``mysql``); writes ``benchmarks/results/protocol_mysql.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "interop" / "daemons" / "mariadb.sh"
PLUGINS = Path("/usr/lib/nagios/plugins")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "protocol_mysql.json"
BIG_QUERY = "SELECT seq, REPEAT('x', 200) FROM seq_1_to_200000"


def start(state: Path) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(SCRIPT), "start", str(state)], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def stop(state: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(state)], check=False)


def measure_process(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run ``argv`` once: (CPU seconds, wall seconds, peak RSS in KiB) of that process alone."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else b""
    if proc.returncode != 0:
        err = proc.stderr.read() if proc.stderr else b""
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {out[:300]!r} {err[:300]!r}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss


def series(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    samples = [measure_process(argv, env) for _ in range(runs)]
    return {
        "cpu_s": statistics.median(s[0] for s in samples),
        "wall_s": statistics.median(s[1] for s in samples),
        "max_rss_kib": statistics.median(s[2] for s in samples),
    }


def in_process(info: dict[str, str], query: str | None, runs: int) -> dict[str, float]:
    """probekit's CPU per check in one warm process, and the heap one check allocates at peak."""
    from probekit import Secret, Status
    from probekit.probes.mysql import MysqlProbe

    probe = MysqlProbe(
        "127.0.0.1",
        int(info["PORT"]),
        starttls="off",
        username=info["USER"],
        password=Secret(info["PASSWORD"]),
        database=info["DATABASE"],
        query=query,
    )

    async def many() -> float:
        first = await probe.check()
        if first.status is not Status.UP:
            raise RuntimeError(first.summary())
        cpu = time.process_time()
        for _ in range(runs):
            result = await probe.check()
            if result.status is not Status.UP:
                raise RuntimeError(result.summary())
        return (time.process_time() - cpu) / runs

    cpu_per_check = asyncio.run(many())
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = asyncio.run(probe.check())
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if result.status is not Status.UP:
        raise RuntimeError(result.summary())
    return {"cpu_s": cpu_per_check, "heap_peak_kib": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="processes per case (default 20)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    for plugin in ("check_mysql", "check_mysql_query"):
        if not (PLUGINS / plugin).exists():
            sys.exit(f"{PLUGINS / plugin} is missing (monitoring-plugins-standard)")

    with tempfile.TemporaryDirectory(prefix="probekit-bench-mysql-") as tmp:
        state = Path(tmp)
        info = start(state)
        try:
            rows = run_cases(info, args.runs)
        finally:
            stop(state)

    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(),
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "python": sys.version,
                "runs": args.runs,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.json}")


def run_cases(info: dict[str, str], runs: int) -> list[dict[str, Any]]:
    env = {**os.environ, "PROBEKIT_BENCH_PW": info["PASSWORD"]}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    host = ["-H", "127.0.0.1", "-P", info["PORT"], "-u", info["USER"], "-p", info["PASSWORD"]]
    target = f"127.0.0.1:{info['PORT']}"
    db = info["DATABASE"]
    ours = [sys.executable, "-m", "probekit", "check", "--nagios", "mysql", target]
    ours += ["-u", info["USER"], "--password-env", "PROBEKIT_BENCH_PW"]
    cases = [
        ("login", [str(PLUGINS / "check_mysql"), *host], [*ours, "--starttls", "off"]),
        (
            "login over TLS",
            [str(PLUGINS / "check_mysql"), *host, "-l", "-C", info["CA"]],
            [*ours, "--ssl", "--ca-file", info["CA"]],
        ),
        (
            "SELECT 1",
            [str(PLUGINS / "check_mysql_query"), *host, "-q", "SELECT 1"],
            [*ours, "--starttls", "off", "-q", "SELECT 1", "--expect", "1"],
        ),
        (
            "200,000 rows",
            [str(PLUGINS / "check_mysql_query"), *host, "-d", db, "-q", BIG_QUERY],
            [*ours, "--starttls", "off", "-d", db, "-q", BIG_QUERY, "--min-rows", "200000"],
        ),
    ]
    rows: list[dict[str, Any]] = []
    for name, plugin, probekit in cases:
        theirs = series(plugin, env, runs)
        mine = series(probekit, env, runs)
        rows.append({"case": f"{name} (process per check)", "probekit": mine, "plugin": theirs})
    for name, query in (("SELECT 1", "SELECT 1"), ("200,000 rows", BIG_QUERY)):
        warm = in_process(info, query, max(runs, 50) if query == "SELECT 1" else runs)
        rows.append({"case": f"{name} (probekit, one warm process)", "probekit": warm})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| case | probekit CPU | plugin CPU | ratio | probekit peak RSS | plugin peak RSS |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ours, theirs = row["probekit"], row.get("plugin")
        if theirs is None:
            print(
                f"| {row['case']} | {ours['cpu_s'] * 1000:.2f} ms | | | "
                f"heap peak {ours['heap_peak_kib']:.0f} KiB | |"
            )
            continue
        ratio = ours["cpu_s"] / theirs["cpu_s"] if theirs["cpu_s"] else float("inf")
        print(
            f"| {row['case']} | {ours['cpu_s'] * 1000:.1f} ms | {theirs['cpu_s'] * 1000:.1f} ms "
            f"| {ratio:.1f}x | {ours['max_rss_kib'] / 1024:.1f} MiB "
            f"| {theirs['max_rss_kib'] / 1024:.1f} MiB |"
        )


if __name__ == "__main__":
    main()
