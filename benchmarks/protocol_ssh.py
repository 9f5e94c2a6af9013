"""CPU per check and peak memory of the ssh and sftp kinds, beside ``check_ssh``.

What it measures, in one run, against one OpenSSH ``sshd`` on a loopback high port (started with
interop/daemons/openssh.sh, so as root, and stopped at the end):

- ``check_ssh`` as a monitoring system runs it, one process per check: the CPU (user + system)
  each process used (``wait4``'s resource usage), and the peak RSS of one process;
- ``probekit check ssh`` the same way, one process per check (a Python interpreter and the import
  of probekit and asyncssh each time);
- probekit in a warm process, checks one after the other: the CPU per check
  (``time.process_time()``), the process's peak RSS, and the peak of Python allocations during
  one check (``tracemalloc``), for ``ssh`` without a login (version and key exchange: what
  ``check_ssh`` checks, plus the key exchange it does not do), ``ssh`` with a password login and
  a command, ``sftp`` stat of a file, and ``sftp`` read of an 8 MiB file (with the default
  ``max_bytes`` of 1 MiB and with a ``max_bytes`` above the size: a read never holds the file).

The ratio probekit/check_ssh is the figure to read; absolute numbers move with the machine.
Everything dials 127.0.0.1 only. Run: ``python benchmarks/protocol_ssh.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DAEMON = ROOT / "interop" / "daemons" / "openssh.sh"
CHECK_SSH = "/usr/lib/nagios/plugins/check_ssh"
TIME = "/usr/bin/time"  # GNU time (Debian package time)
LOOPBACK = "127.0.0.1"
BIG = 8 * 1024 * 1024


def start_sshd(state: Path) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(DAEMON), "start", str(state)], capture_output=True, text=True, check=True
    ).stdout
    info = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    big = Path(info["SSH_HOME"]) / "big.bin"
    with big.open("wb") as handle:
        handle.write(os.urandom(BIG))
    big.chmod(0o644)
    info["BIG"] = str(big)
    return info


def stop_sshd(state: Path, info: dict[str, str]) -> None:
    Path(info.get("BIG", "/nonexistent")).unlink(missing_ok=True)
    subprocess.run(["bash", str(DAEMON), "stop", str(state)], check=False)


def per_process(argv: list[str], count: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` ``count`` times, one process each: CPU per run, peak RSS, exit codes.

    Each run goes through GNU ``time -f %M``: Python starts its children with vfork, and Linux
    keeps a vforked child's pre-``exec`` high-water RSS (this script's) in its ``ru_maxrss``, so
    a direct child's peak would be this script's. ``time`` forks the program from its own small
    image and reports the program's own peak. The CPU is ``wait4``'s for ``time`` and the
    program together; ``time``'s share is the ``/bin/true`` row.
    """
    codes: dict[int, int] = {}
    peak = 0
    cpu = 0.0
    wall = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        wrapped = [TIME, "-f", "%M", "-o", report.name, *argv]
        for _ in range(count):
            proc = subprocess.Popen(
                wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            report.seek(0)
            peak = max(peak, int(report.read().split()[-1]))
            codes[proc.returncode] = codes.get(proc.returncode, 0) + 1
    return {
        "runs": count,
        "cpu_ms_per_check": round(cpu / count * 1000, 3),
        "wall_ms_per_check": round((time.perf_counter() - wall) / count * 1000, 3),
        "peak_rss_kib": peak,
        "exit_codes": codes,
    }


WARM = r"""
import asyncio, json, resource, sys, time, tracemalloc
from probekit import Secret, SftpProbe, SshProbe, Status

args = json.loads(sys.argv[1])
login = {"username": args["user"], "password": Secret(args["password"])}
port = int(args["port"])
probes = {
    "ssh (no login)": SshProbe("127.0.0.1", port, host_key_fingerprint=args["pin"]),
    "ssh (password, command)": SshProbe("127.0.0.1", port, command="true", **login),
    "sftp stat": SftpProbe("127.0.0.1", port, path=args["file"], **login),
    "sftp read 8 MiB, max_bytes 1 MiB": SftpProbe(
        "127.0.0.1", port, path=args["big"], operation="read", **login
    ),
    "sftp read 8 MiB whole": SftpProbe(
        "127.0.0.1", port, path=args["big"], operation="read", max_bytes=2**30, **login
    ),
}


async def main():
    out = {}
    for name, probe in probes.items():
        count = args["count"] if "read" not in name else max(args["count"] // 5, 3)
        first = await probe.check()  # warm: imports, first-use set-up
        assert first.status is Status.UP, first.summary()
        statuses = {}
        cpu = time.process_time()
        wall = time.perf_counter()
        for _ in range(count):
            result = await probe.check()
            statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        tracemalloc.start()
        await probe.check()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[name] = {
            "checks": count,
            "statuses": statuses,
            "cpu_ms_per_check": round(cpu / count * 1000, 3),
            "wall_ms_per_check": round(wall / count * 1000, 3),
            "tracemalloc_peak_kib": round(peak / 1024, 1),
            "phases_ms": {p.name: round(p.duration * 1000, 3) for p in result.phases},
        }
    out["process_peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))


asyncio.run(main())
"""


def warm(info: dict[str, str], count: int) -> dict[str, Any]:
    args = {
        "port": info["SSH_PORT"],
        "user": info["SSH_USER"],
        "password": info["SSH_PASSWORD"],
        "pin": info["SSH_HOST_KEY_FINGERPRINT"],
        "file": f"{info['SSH_HOME']}/drop/a.csv",
        "big": info["BIG"],
        "count": count,
    }
    done = subprocess.run(
        [sys.executable, "-c", WARM, json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )
    return dict(json.loads(done.stdout))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer checks")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("protocol_ssh.py starts sshd with a test user: run it as root")
    if not Path(CHECK_SSH).exists():
        sys.exit(f"{CHECK_SSH} is missing: install monitoring-plugins-basic")
    if not Path(TIME).exists():
        sys.exit(f"{TIME} is missing: install the Debian package time")
    processes = 10 if options.quick else 40
    checks = 40 if options.quick else 200
    state = Path(tempfile.mkdtemp(prefix="probekit-bench-ssh-"))
    info = start_sshd(state)
    try:
        port = info["SSH_PORT"]
        baseline = per_process(["/bin/true"], processes)
        plugin = per_process([CHECK_SSH, "-H", LOOPBACK, "-p", port, "-t", "10"], processes)
        cold = per_process(
            [sys.executable, "-m", "probekit", "check", "ssh", f"{LOOPBACK}:{port}", "--nagios"],
            processes,
            env=_env(),
        )
        inside = warm(info, checks)
    finally:
        stop_sshd(state, info)
    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "/bin/true through time (process per run)": baseline,
        "check_ssh (process per check)": plugin,
        "probekit check ssh (process per check)": cold,
        "probekit (warm process)": inside,
    }
    base = plugin["cpu_ms_per_check"]
    print(f"{'what':<44} {'CPU ms/check':>12} {'vs check_ssh':>12} {'peak':>16}")
    print(
        f"{'/bin/true through time (the wrapper)':<44} "
        f"{baseline['cpu_ms_per_check']:>12.3f} {'':>12} {baseline['peak_rss_kib']:>12} KiB"
    )
    print(
        f"{'check_ssh, process per check':<44} {base:>12.3f} {'1.00':>12} "
        f"{plugin['peak_rss_kib']:>12} KiB"
    )
    print(
        f"{'probekit check ssh, process per check':<44} {cold['cpu_ms_per_check']:>12.3f} "
        f"{cold['cpu_ms_per_check'] / base:>12.2f} {cold['peak_rss_kib']:>12} KiB"
    )
    for name, row in inside.items():
        if not isinstance(row, dict):
            continue
        print(
            f"{'probekit warm: ' + name:<44} {row['cpu_ms_per_check']:>12.3f} "
            f"{row['cpu_ms_per_check'] / base:>12.2f} {row['tracemalloc_peak_kib']:>9} KiB py"
        )
    print(
        f"probekit warm process peak RSS: {inside['process_peak_rss_kib']} KiB; "
        f"exit codes: check_ssh {plugin['exit_codes']}, probekit {cold['exit_codes']}"
    )
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
