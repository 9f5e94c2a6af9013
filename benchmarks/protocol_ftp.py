"""The ftp kind's cost next to ``check_ftp``: CPU seconds per check and peak memory.

What it measures, on loopback (127.0.0.1 only), in one run:

- against vsftpd (started from ``interop/daemons/vsftpd.sh``, so root and the vsftpd package):
  - ``check_ftp -H 127.0.0.1 -p PORT``, a process per check (the way a monitoring system runs
    it): each process's own CPU (user + system) and peak RSS from ``wait4``;
  - ``python -m probekit check ftp`` the same way, for the same work (greeting and ``QUIT``);
  - probekit in one warm process (how a checkpoint runs it), sequential checks: the greeting
    only (the same work as ``check_ftp``), a login with ``LIST`` over a data connection, and
    the same over ``AUTH TLS`` with ``PROT P``; CPU per check from ``time.process_time``, and
    the process's peak RSS;
  - probekit with 50 logins-and-listings in flight at once: peak RSS above the process's
    baseline, per check in flight;
- against a Python FTP server in a subprocess that streams a listing of ``--big`` entries
  (1,000,000 by default, about 66 MB): probekit's peak RSS over the run against its peak on a
  three-entry listing from the same server: a listing is counted as it streams, never held.

Against what: ``check_ftp`` is the peer (monitoring-plugins; it reads the greeting and quits, and
cannot log in or list). The ratio column is probekit's figure over the peer's for the same work.
Figures go to stdout as a table and to ``benchmarks/results/protocol_ftp.json``.

Run: ``python benchmarks/protocol_ftp.py [--checks N] [--big N] [--json PATH]`` (as root, with
vsftpd and monitoring-plugins installed: ``bash interop/install.sh``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "protocol_ftp.json"
VSFTPD_SH = ROOT / "interop" / "daemons" / "vsftpd.sh"
CHECK_FTP = Path("/usr/lib/nagios/plugins/check_ftp")
TIME = "/usr/bin/time"  # GNU time: the peak RSS of a process per check (see per_process)
LOOPBACK = "127.0.0.1"  # the only address this script binds or dials

# -- the big-listing server (run in a subprocess: its memory is not the prober's) -------------


async def _serve_big(entries: int, port_file: str) -> None:
    line = b"-rw-r--r--    1 1000     1000          120 Nov 28 12:30 file-%07d.csv\r\n"

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def on_data(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if not data.done():
                data.set_result(w)

        listener: asyncio.Server | None = None
        small = False
        writer.write(b"220 big listing server\r\n")
        while raw := await reader.readline():
            verb = raw.split(b" ", 1)[0].strip().upper()
            if verb == b"USER":
                writer.write(b"331 password\r\n")
            elif verb == b"PASS":
                writer.write(b"230 in\r\n")
            elif verb == b"CWD":
                small = b"small" in raw
                writer.write(b"250 ok\r\n")
            elif verb == b"EPSV":
                listener = await asyncio.start_server(on_data, LOOPBACK, 0)
                port = listener.sockets[0].getsockname()[1]
                writer.write(b"229 Extended Passive Mode (|||%d|)\r\n" % port)
            elif verb == b"LIST":
                out = await data
                writer.write(b"150 here\r\n")
                count = 3 if small else entries
                for start in range(0, count, 1000):
                    out.write(b"".join(line % i for i in range(start, min(start + 1000, count))))
                    await out.drain()
                out.close()
                writer.write(b"226 done\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"502 no\r\n")
            await writer.drain()
        writer.close()
        if listener is not None:
            listener.close()

    server = await asyncio.start_server(control, LOOPBACK, 0)
    Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240 - once, at start
    async with server:
        await server.serve_forever()


# -- probekit in a worker process ---------------------------------------------------------------


def _probe(spec: dict[str, Any]) -> Any:
    from probekit import FtpProbe, Secret, TlsOptions

    fields: dict[str, Any] = {"starttls": spec.get("starttls", "off")}
    if spec.get("user"):
        fields["username"] = spec["user"]
        fields["password"] = Secret(spec["password"])
    if spec.get("path"):
        fields["path"] = spec["path"]
    if spec.get("ca_file"):
        fields["starttls_options"] = TlsOptions(ca_file=spec["ca_file"])
    if spec.get("max_entries"):
        fields["max_entries"] = spec["max_entries"]
        fields["max_listing_bytes"] = 1 << 40
    return FtpProbe(spec.get("host", LOOPBACK), spec["port"], **fields)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    from probekit import Status

    probe = _probe(spec)
    first = await probe.check()  # warm-up: imports, SSL context, first-use caches
    if first.status is not Status.UP:
        return {"error": first.summary()}
    baseline = _rss_kib()
    concurrency = spec.get("concurrency", 1)
    checks = spec["checks"]
    statuses: dict[str, int] = {}
    cpu = time.process_time()
    wall = time.perf_counter()
    done = 0
    while done < checks:
        batch = min(concurrency, checks - done)
        results = await asyncio.gather(*(probe.check() for _ in range(batch)))
        for result in results:
            statuses[result.status.name] = statuses.get(result.status.name, 0) + 1
        done += batch
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "checks": checks,
        "statuses": statuses,
        "cpu_per_check": cpu / checks,
        "wall_per_check": wall / checks,
        "peak_rss_kib": peak,
        "baseline_rss_kib": baseline,
        "entries": first.metrics.get("entries"),
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise RuntimeError(f"worker check not UP: {result['error']}")
    return result


# -- a process per check -------------------------------------------------------------------------


def per_process(cmd: list[str], n: int, expect: int = 0) -> dict[str, Any]:
    """Run ``cmd`` ``n`` times, each under GNU time: its CPU (user + system, with time's own
    overhead, measured on ``true``, taken off) and its peak RSS.

    The peak comes from time's ``%M``, not from this process's ``wait4``: Linux carries a
    process's high-water mark across ``exec``, so a direct child of this (large) Python process
    would report at least this process's RSS; a child of the small ``time`` starts from time's.
    """
    overhead = _launched(["/bin/true"], max(n // 2, 5), 0)["cpu"]
    measured = _launched(cmd, n, expect)
    return {
        "checks": n,
        "cpu_per_check": max(measured["cpu"] - overhead, 0.0),
        "launcher_cpu": overhead,
        "wall_per_check": measured["wall"],
        "peak_rss_kib": measured["rss"],
    }


def _launched(cmd: list[str], n: int, expect: int) -> dict[str, Any]:
    cpu: list[float] = []
    rss: list[int] = []
    wall: list[float] = []
    codes: dict[int, int] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        for _ in range(n):
            began = time.perf_counter()
            proc = subprocess.Popen(
                [TIME, "-q", "-f", "%x %M", "-o", report.name, *cmd],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            _pid, _status, usage = os.wait4(proc.pid, 0)
            proc.returncode = 0
            wall.append(time.perf_counter() - began)
            report.seek(0)
            code_text, rss_text = report.read().split()[-2:]
            codes[int(code_text)] = codes.get(int(code_text), 0) + 1
            cpu.append(usage.ru_utime + usage.ru_stime)
            rss.append(int(rss_text))
    if codes.get(expect, 0) != n:
        raise RuntimeError(f"{cmd[0]}: exit codes {codes}, expected {expect}")
    return {"cpu": statistics.mean(cpu), "wall": statistics.median(wall), "rss": max(rss)}


# -- the run -------------------------------------------------------------------------------------


def start_vsftpd(state: Path) -> dict[str, str]:
    done = subprocess.run(
        ["bash", str(VSFTPD_SH), "start", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    info = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key] = value.strip()
    return info


def measure(args: argparse.Namespace) -> dict[str, Any]:
    n = args.checks
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="probekit-ftp-bench-") as tmp:
        state = Path(tmp) / "vsftpd"
        state.mkdir()
        info = start_vsftpd(state)
        try:
            port, tls_port = int(info["FTP_PORT"]), int(info["FTPS_PORT"])
            login = {"user": info["FTP_USER"], "password": info["FTP_PASSWORD"], "path": "/drop"}
            rows["check_ftp (process per check)"] = per_process(
                [str(CHECK_FTP), "-H", LOOPBACK, "-p", str(port)], n
            )
            cli = [sys.executable, "-m", "probekit", "check", "ftp", f"{LOOPBACK}:{port}"]
            rows["probekit CLI (process per check)"] = per_process(
                [*cli, "--starttls", "off"], max(n // 4, 5)
            )
            rows["probekit greeting (warm process)"] = run_worker({"port": port, "checks": n})
            rows["probekit login + LIST (warm)"] = run_worker({"port": port, "checks": n, **login})
            rows["probekit AUTH TLS + login + LIST (warm)"] = run_worker(
                {
                    "host": "localhost",
                    "port": tls_port,
                    "checks": n,
                    "starttls": "required",
                    "ca_file": info["FTP_CA_FILE"],
                    **login,
                }
            )
            rows["probekit login + LIST, 50 in flight"] = run_worker(
                {"port": port, "checks": 200, "concurrency": 50, **login}
            )
        finally:
            subprocess.run(["bash", str(VSFTPD_SH), "stop", str(state)], check=False, timeout=60)
        port_file = Path(tmp) / "big.port"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve-big", str(args.big), str(port_file)]
        )
        try:
            for _ in range(100):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.1)
            big_port = int(port_file.read_text())
            spec = {"port": big_port, "user": "u", "password": "p", "path": "/", "checks": 1}
            rows["probekit LIST of 3 entries"] = run_worker(
                {**spec, "path": "/small", "checks": 20, "max_entries": 10}
            )
            rows[f"probekit LIST of {args.big} entries"] = run_worker(
                {**spec, "max_entries": args.big * 2}
            )
        finally:
            server.terminate()
            server.wait(10)
    return rows


def render(rows: dict[str, Any]) -> str:
    peer = rows["check_ftp (process per check)"]
    lines = [
        "| what | CPU ms/check | x check_ftp | peak RSS MiB | wall ms/check | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        ratio = row["cpu_per_check"] / peer["cpu_per_check"]
        notes = []
        if row.get("entries"):
            notes.append(f"{int(row['entries'])} entries counted")
        if "in flight" in name:
            per = (row["peak_rss_kib"] - row["baseline_rss_kib"]) / 50
            notes.append(f"{per:.0f} KiB above the warm baseline per check in flight")
        note = "; ".join(notes)
        lines.append(
            f"| {name} | {row['cpu_per_check'] * 1000:.2f} | {ratio:.2f} "
            f"| {row['peak_rss_kib'] / 1024:.1f} | {row['wall_per_check'] * 1000:.1f} | {note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=100)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--serve-big", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(json.loads(args.worker)))))
        return 0
    if args.serve_big:
        asyncio.run(_serve_big(int(args.serve_big[0]), args.serve_big[1]))
        return 0
    needs = (CHECK_FTP, Path("/usr/sbin/vsftpd"), Path(TIME))
    if os.geteuid() != 0 or not all(p.exists() for p in needs):
        print(
            "needs root, vsftpd, monitoring-plugins and GNU time: bash interop/install.sh",
            file=sys.stderr,
        )
        return 2
    rows = measure(args)
    table = render(rows)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "rows": rows,
                "table": table,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
