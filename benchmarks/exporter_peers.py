"""Throughput of ``/probe`` itself: probekit exporter beside blackbox_exporter, same run.

For each module (HTTP, HTTPS, TCP connect, DNS A) and each exporter, ``wrk -t1 -c16`` requests
``/probe?module=M&target=T`` for ``--seconds`` against the same local target (nginx from
interop/daemons/nginx.sh, a loopback DNS server), in alternating order over ``--rounds``
rounds. Reported per exporter and module: scrapes/s (wrk's Requests/sec, non-2xx counted) and
CPU seconds per scrape of the exporter process (user + system from ``/proc/PID/stat``, read
before and after). Every scrape's probe_success is not read by wrk, so a short check of each
pair first asserts both answer ``probe_success 1``.

Run: ``python benchmarks/exporter_peers.py [--seconds 5] [--rounds 2]``, or as part of
``nox -s peers``. Writes ``benchmarks/results/exporter.json``; docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "interop"))

from loopback_dns import loopback_dns  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "exporter.json"
TICKS = os.sysconf("SC_CLK_TCK")

CONFIG = """
modules:
  http_2xx: {{prober: http, timeout: 5s, http: {{preferred_ip_protocol: ip4}}}}
  https_2xx:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4, tls_config: {{ca_file: {ca}}}}}
  tcp_connect: {{prober: tcp, timeout: 5s, tcp: {{preferred_ip_protocol: ip4}}}}
  dns_a:
    prober: dns
    timeout: 5s
    dns: {{preferred_ip_protocol: ip4, query_name: www.probekit.test, query_type: A}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def nginx(workdir: Path) -> Iterator[dict[str, str]]:
    script = ROOT / "interop" / "daemons" / "nginx.sh"
    out = subprocess.run(
        ["bash", str(script), "start", str(workdir / "nginx")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        yield info
    finally:
        subprocess.run(["bash", str(script), "stop", str(workdir / "nginx")], check=False)


@contextmanager
def exporters(config: Path, workdir: Path) -> Iterator[dict[str, tuple[str, int]]]:
    binary = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    if binary is None:
        raise SystemExit("prometheus-blackbox-exporter is missing (apt-get install it)")
    bb_port, pk_port = free_port(), free_port()
    logs = [(workdir / f"{n}.log").open("w") for n in ("blackbox", "probekit")]
    processes = [
        subprocess.Popen(
            [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{bb_port}"],
            stdout=subprocess.DEVNULL,
            stderr=logs[0],
        ),
        subprocess.Popen(
            [
                *(sys.executable, "-m", "probekit", "exporter", "--config", str(config)),
                *("--listen", f"127.0.0.1:{pk_port}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=logs[1],
        ),
    ]
    try:
        wait_for(f"http://127.0.0.1:{bb_port}/metrics")
        wait_for(f"http://127.0.0.1:{pk_port}/metrics")
        yield {
            "blackbox_exporter": (f"http://127.0.0.1:{bb_port}", processes[0].pid),
            "probekit exporter": (f"http://127.0.0.1:{pk_port}", processes[1].pid),
        }
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        for log in logs:
            log.close()


def wrk(url: str, seconds: float) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx) of ``wrk -t1 -c16`` against ``url``."""
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{round(seconds)}s", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, total, int(bad.group(1)) if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing (apt-get install wrk)")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with nginx(workdir) as web, loopback_dns() as dns_port:
            config = workdir / "blackbox.yml"
            config.write_text(CONFIG.format(ca=web["CA_FILE"]))
            targets = {
                "http_2xx": f"http://127.0.0.1:{web['HTTP_PORT']}/",
                "https_2xx": f"https://127.0.0.1:{web['HTTPS_PORT']}/",
                "tcp_connect": f"127.0.0.1:{web['HTTP_PORT']}",
                "dns_a": f"127.0.0.1:{dns_port}",
            }
            with exporters(config, workdir) as running:
                names = list(running)
                for module, target in targets.items():
                    for name, (base, _) in running.items():
                        url = f"{base}/probe?module={module}&target={target}"
                        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
                            body = response.read().decode()
                        assert "probe_success 1" in body, (name, module, body[:500])
                    for round_ in range(args.rounds):
                        order = names if round_ % 2 == 0 else names[::-1]
                        for name in order:
                            base, pid = running[name]
                            url = f"{base}/probe?module={module}&target={target}"
                            before = cpu_seconds(pid)
                            rate, total, bad = wrk(url, args.seconds)
                            cpu = cpu_seconds(pid) - before
                            row = {"rate": rate, "requests": total, "non_2xx": bad, "cpu": cpu}
                            results.setdefault(module, {}).setdefault(name, []).append(row)
                            print(
                                f"{module:12} {name:18} {rate:9.1f} scrapes/s "
                                f"{cpu / max(total, 1) * 1e6:8.1f} us CPU/scrape ({bad} non-2xx)",
                                flush=True,
                            )
    table = render(results)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "seconds": args.seconds,
                "rounds": args.rounds,
                "results": results,
                "table": table,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


def render(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = [
        "| module | blackbox_exporter scrapes/s | probekit scrapes/s | ratio | "
        "blackbox CPU/scrape | probekit CPU/scrape | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for module, by_name in results.items():
        figures: dict[str, tuple[float, float]] = {}
        for name, rows in by_name.items():
            requests = sum(r["requests"] for r in rows)
            seconds = sum(r["requests"] / r["rate"] for r in rows if r["rate"])
            figures[name] = (requests / seconds, sum(r["cpu"] for r in rows) / requests)
        bb, pk = figures["blackbox_exporter"], figures["probekit exporter"]
        lines.append(
            f"| {module} | {bb[0]:.0f} | {pk[0]:.0f} | {pk[0] / bb[0]:.2f} | "
            f"{bb[1] * 1e6:.0f} us | {pk[1] * 1e6:.0f} us | {pk[1] / bb[1]:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
