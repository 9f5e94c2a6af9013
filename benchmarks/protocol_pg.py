"""CPU per check and peak memory of probekit's postgres kind against check_pgsql, on one real
PostgreSQL 15 on loopback (started with interop/daemons/postgresql.sh, stopped at the end).

What it measures, in one run, for each scenario:

- ``check_pgsql`` (monitoring-plugins, libpq), a process per check as a monitoring system runs
  it: CPU (user + system) per check and the largest resident set of one check's process, read
  from ``getrusage(RUSAGE_CHILDREN)`` in a helper process that runs only those checks;
- ``probekit check postgres``, a process per check the same way (the interpreter's start and
  imports included, which dominate);
- probekit in one warm process (how a checkpoint runs it): CPU per check from
  ``time.process_time()`` around sequential checks, and the growth of the process's peak
  resident set over the loop (``ru_maxrss`` after minus before).

Scenarios: ``scram-tls`` (SCRAM-SHA-256 login over TLS, ``SELECT 1``), ``md5-plain`` (md5 login
without TLS, ``SELECT 1``), ``big-result`` (a query returning 100,000 rows of 1 KB, about 100 MB:
probekit streams and counts them; libpq's ``PQexec`` holds the whole result).

Both sides verify the certificate where they use TLS differently: check_pgsql with libpq's
default ``sslmode=prefer`` (TLS, no verification), probekit with verification against the
daemon's certificate. Server CPU is not counted on either side. Everything is on 127.0.0.1.

Run as root (the daemon runs as the ``postgres`` user): ``python benchmarks/protocol_pg.py
[--checks N] [--json PATH]``. Prints a Markdown table; the figures in docs/performance.md come
from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DAEMON = ROOT / "interop" / "daemons" / "postgresql.sh"
CHECK_PGSQL = "/usr/lib/nagios/plugins/check_pgsql"
BIG = "SELECT g, repeat('x', 1000) FROM generate_series(1, 100000) g"

#: A helper that runs one side's process-per-check loop and reports its children's usage.
CHILDREN = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    argv, env, n = json.loads(sys.argv[1])
    codes = [subprocess.run(argv, env=env, capture_output=True).returncode for _ in range(n)]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
                      "codes": sorted(set(codes))}))
    """
)

#: A helper that runs probekit's checks in one warm process.
WARM = textwrap.dedent(
    """
    import asyncio, json, resource, sys, time
    from probekit import Secret, TlsOptions
    from probekit.probes.postgres import PostgresProbe
    fields, n = json.loads(sys.argv[1])
    fields["password"] = Secret(fields["password"])
    if fields.get("starttls_options"):
        fields["starttls_options"] = TlsOptions(**fields["starttls_options"])
    probe = PostgresProbe(**fields)

    async def main():
        await probe.check()  # warm: SSL context, imports
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.process_time()
        statuses = set()
        for _ in range(n):
            result = await probe.check()
            statuses.add(result.status.value)
        cpu = time.process_time() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"cpu": cpu, "maxrss_kb": after, "growth_kb": after - before,
                          "statuses": sorted(statuses), "rows": result.metrics.get("rows")}))

    asyncio.run(main())
    """
)


def start_daemon(statedir: Path) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(DAEMON), "start", str(statedir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def stop_daemon(statedir: Path) -> None:
    subprocess.run(["bash", str(DAEMON), "stop", str(statedir)], check=False, timeout=60)


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def children(argv: list[str], env: dict[str, str], n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILDREN, json.dumps([argv, env, n])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def warm(fields: dict[str, Any], n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", WARM, json.dumps([fields, n])],
        capture_output=True,
        text=True,
        check=True,
        env=python_env(),
    ).stdout
    return dict(json.loads(out))


def scenarios(info: dict[str, str]) -> list[dict[str, Any]]:
    port = info["PORT"]
    db = info["DATABASE"]
    out = []
    for name, user, password, tls, query in (
        ("scram-tls", info["SCRAM_USER"], info["SCRAM_PASSWORD"], True, "SELECT 1"),
        ("md5-plain", info["MD5_USER"], info["MD5_PASSWORD"], False, "SELECT 1"),
        ("big-result", info["SCRAM_USER"], info["SCRAM_PASSWORD"], True, BIG),
    ):
        plugin = [CHECK_PGSQL, "-H", "127.0.0.1", "-P", port, "-d", db, "-l", user, "-p", password]
        plugin += ["-q", query, "-C", "1:1"]
        if not tls:
            plugin += ["-o", "sslmode=disable"]
        cli = [sys.executable, "-m", "probekit", "check", "postgres", f"127.0.0.1:{port}"]
        cli += ["--user", user, "--password-env", "BENCH_PG_PASSWORD", "--dbname", db]
        cli += ["--query", query, "--expect", "1"]
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": int(port),
            "username": user,
            "password": password,
            "database": db,
            "query": query,
            "expect": "1",
        }
        if tls:
            cli += ["--starttls", "required", "--ca-file", info["CA_FILE"]]
            fields["starttls"] = "required"
            fields["starttls_options"] = {"ca_file": info["CA_FILE"]}
        else:
            cli += ["--starttls", "off"]
            fields["starttls"] = "off"
        out.append({"name": name, "plugin": plugin, "cli": cli, "fields": fields})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=20, help="checks per process-per-check run")
    parser.add_argument("--warm-checks", type=int, default=200, help="checks in the warm loop")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="probekit-bench-pg-") as tmp:
        statedir = Path(tmp)
        info = start_daemon(statedir)
        try:
            for case in scenarios(info):
                big = case["name"] == "big-result"
                n = max(3, args.checks // 5) if big else args.checks
                n_warm = max(5, args.warm_checks // 20) if big else args.warm_checks
                env = python_env()
                env["BENCH_PG_PASSWORD"] = case["fields"]["password"]
                plugin = children(case["plugin"], dict(os.environ), n)
                cli = children(case["cli"], env, n)
                inproc = warm(case["fields"], n_warm)
                rows.append(
                    {
                        "scenario": case["name"],
                        "checks": n,
                        "warm_checks": n_warm,
                        "check_pgsql": plugin,
                        "probekit_cli": cli,
                        "probekit_warm": inproc,
                    }
                )
        finally:
            stop_daemon(statedir)

    print(
        "| scenario | check_pgsql CPU/check | probekit CLI CPU/check | probekit warm CPU/check "
        "| warm ÷ check_pgsql | check_pgsql peak RSS | probekit CLI peak RSS "
        "| probekit warm RSS growth | exits (plugin / CLI) | warm statuses |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        plugin, cli, inproc = row["check_pgsql"], row["probekit_cli"], row["probekit_warm"]
        p_cpu = plugin["cpu"] / row["checks"] * 1000
        c_cpu = cli["cpu"] / row["checks"] * 1000
        w_cpu = inproc["cpu"] / row["warm_checks"] * 1000
        print(
            f"| {row['scenario']} | {p_cpu:.2f} ms | {c_cpu:.1f} ms | {w_cpu:.2f} ms "
            f"| {w_cpu / p_cpu:.2f} | {plugin['maxrss_kb'] / 1024:.1f} MiB "
            f"| {cli['maxrss_kb'] / 1024:.1f} MiB | {inproc['growth_kb'] / 1024:.1f} MiB "
            f"| {plugin['codes']} / {cli['codes']} | {inproc['statuses']} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"machine": platform.platform(), "python": sys.version, "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
