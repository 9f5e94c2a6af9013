"""CPU per check of probekit's protocol kinds against real local daemons, beside the peers.

What it measures, in one run, on loopback (127.0.0.1 only), against the daemons of the interop
session, started with the same scripts (interop/daemons/{dnsmasq,exim4,dovecot}.sh) in a
temporary directory and stopped at the end:

- ``probekit check KIND ...``, one process per check, as a cron job or a Nagios plugin runs it;
  its CPU (user + system) from ``os.times()``'s children figures, which count every process
  waited for, grandchildren included (interpreter start-up and imports are part of it);
- the matching monitoring-plugin, one process per check, measured the same way (check_dig and
  the dig it runs, check_ping and its ping, check_smtp, check_simap, check_spop);
- probekit's checks in one warm process on a ``Runner`` (``run_all`` of N checks, at most 8 at
  once): ``time.process_time()`` of that process around the run, divided by N, so start-up is
  not counted;
- blackbox_exporter where it has the kind: its ``dns`` and ``icmp`` probers, and its ``tcp``
  prober with a ``query_response`` that speaks SMTP up to STARTTLS, logs in to IMAPS/POP3S,
  or only shakes hands (``tls``); CPU from ``/proc/<pid>/stat`` of the exporter across N
  ``/probe`` requests made one after the other (the requests' own cost, the scraper's, is not
  counted, as probekit's Runner figure has no scraper).

Every check's outcome is counted (exit code 0, ``probe_success 1``, ``Status.UP``), so failures
cannot pass for speed. The daemons' own CPU is not counted for anyone. The checks of each kind do
the same work on every side: the same question, the same TLS, the same login.

Run: ``python benchmarks/protocol_peers.py [--quick] [--json PATH]`` (as root, with the interop
packages and prometheus-blackbox-exporter installed), or ``nox -s protocol_peers``.
The table is printed and the raw figures written to benchmarks/results/protocol_peers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
DAEMONS = ROOT / "interop" / "daemons"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "protocol_peers.json"
LOOPBACK = "127.0.0.1"  # the only address this script ever binds or dials
PLUGINS = Path("/usr/lib/nagios/plugins")
CLK_TCK = os.sysconf("SC_CLK_TCK")
KINDS = ("dns", "icmp", "smtp", "imap", "pop3", "tls")
#: The Runner's concurrency for the in-process figure (the daemons share the machine's cores).
CONCURRENCY = 8


def log(message: str) -> None:
    print(f"[protocol_peers] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


# -- the daemons ----------------------------------------------------------------------------


class Daemons:
    """dnsmasq, exim and dovecot from the interop scripts, in a temporary directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.info: dict[str, dict[str, str]] = {}

    def _script(self, name: str, action: str) -> str:
        state = self.workdir / name
        state.mkdir(exist_ok=True)
        proc = subprocess.run(
            ["bash", str(DAEMONS / f"{name}.sh"), action, str(state)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{name}.sh {action} exited {proc.returncode}:\n{proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        for name in ("dnsmasq", "exim4", "dovecot"):
            lines = self._script(name, "start").splitlines()
            self.info[name] = dict(line.split("=", 1) for line in lines if "=" in line)
            log(f"{name} started: {self.info[name]}")

    def stop(self) -> None:
        for name in self.info:
            try:
                self._script(name, "stop")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"stopping {name} failed: {exc}")


# -- what each side runs, per kind -----------------------------------------------------------


def specs(d: Daemons) -> dict[str, dict[str, Any]]:
    """For each kind: the probekit CLI, the plugin, the Runner's probe, blackbox's module."""
    dns_port = d.info["dnsmasq"]["PORT"]
    exim, dove = d.info["exim4"], d.info["dovecot"]
    imaps, pop3s = dove["IMAPS_PORT"], dove["POP3S_PORT"]
    login = f"a1 LOGIN {dove['USER']} {dove['PASSWORD']}"
    return {
        "dns": {
            "what": "A www.test.internal over UDP, answer checked",
            "cli": [
                "dns",
                "www.test.internal",
                "--server",
                LOOPBACK,
                "--port",
                dns_port,
                "--expect-address",
                "192.0.2.10",
            ],
            "plugin": [
                "check_dig",
                "-H",
                LOOPBACK,
                "-p",
                dns_port,
                "-l",
                "www.test.internal",
                "-a",
                "192.0.2.10",
            ],
            "probe": {
                "kind": "dns",
                "name": "www.test.internal",
                "server": LOOPBACK,
                "port": int(dns_port),
                "expect_answers": ["192.0.2.10"],
            },
            "bbe": ("dns_a", f"{LOOPBACK}:{dns_port}"),
        },
        "icmp": {
            "what": "one echo to 127.0.0.1",
            "cli": ["icmp", LOOPBACK, "-p", "1"],
            "plugin": ["check_ping", "-H", LOOPBACK, "-p", "1", "-w", "100,20%", "-c", "500,60%"],
            "probe": {"kind": "icmp", "host": LOOPBACK, "count": 1},
            "bbe": ("icmp", LOOPBACK),
        },
        "smtp": {
            "what": "exim: banner, EHLO, STARTTLS (verified), QUIT",
            "cli": [
                "smtp",
                f"{LOOPBACK}:{exim['SMTP_PORT']}",
                "--starttls",
                "required",
                "--ca-file",
                exim["CA_FILE"],
            ],
            "plugin": ["check_smtp", "-H", LOOPBACK, "-p", exim["SMTP_PORT"], "-S"],
            "probe": {
                "kind": "smtp",
                "host": LOOPBACK,
                "port": int(exim["SMTP_PORT"]),
                "starttls": "required",
                "starttls_options": {"ca_file": exim["CA_FILE"]},
            },
            "bbe": ("smtp_starttls", f"{LOOPBACK}:{exim['SMTP_PORT']}"),
        },
        "imap": {
            "what": "dovecot IMAPS: TLS (verified), greeting, LOGIN, LOGOUT",
            "cli": [
                "imap",
                f"{LOOPBACK}:{imaps}",
                "--tls",
                "--ca-file",
                dove["CA_FILE"],
                "--user",
                dove["USER"],
                "--password-env",
                "PROBEKIT_BENCH_PASSWORD",
            ],
            "plugin": [
                "check_simap",
                "-H",
                LOOPBACK,
                "-p",
                imaps,
                "-E",
                "-s",
                f"{login}\\r\\na2 LOGOUT\\r\\n",
                "-e",
                "a1 OK",
                "-M",
                "crit",
            ],
            "probe": {
                "kind": "imap",
                "host": LOOPBACK,
                "port": int(imaps),
                "tls": {"ca_file": dove["CA_FILE"]},
                "username": dove["USER"],
                "password": dove["PASSWORD"],
            },
            "bbe": ("imaps_login", f"{LOOPBACK}:{imaps}"),
        },
        "pop3": {
            "what": "dovecot POP3S: TLS (verified), greeting, USER/PASS, QUIT",
            "cli": [
                "pop3",
                f"{LOOPBACK}:{pop3s}",
                "--tls",
                "--ca-file",
                dove["CA_FILE"],
                "--user",
                dove["USER"],
                "--password-env",
                "PROBEKIT_BENCH_PASSWORD",
            ],
            "plugin": [
                "check_spop",
                "-H",
                LOOPBACK,
                "-p",
                pop3s,
                "-E",
                "-s",
                f"USER {dove['USER']}\\r\\nPASS {dove['PASSWORD']}\\r\\nQUIT\\r\\n",
                "-e",
                "Logged in",
                "-M",
                "crit",
            ],
            "probe": {
                "kind": "pop3",
                "host": LOOPBACK,
                "port": int(pop3s),
                "stat": False,
                "tls": {"ca_file": dove["CA_FILE"]},
                "username": dove["USER"],
                "password": dove["PASSWORD"],
            },
            "bbe": ("pop3s_login", f"{LOOPBACK}:{pop3s}"),
        },
        "tls": {
            "what": "dovecot IMAPS certificate: handshake, days left",
            "cli": ["tls", f"{LOOPBACK}:{imaps}", "--ca-file", dove["CA_FILE"]],
            "plugin": ["check_simap", "-H", LOOPBACK, "-p", imaps, "-D", "30,7"],
            "probe": {
                "kind": "tls",
                "host": LOOPBACK,
                "port": int(imaps),
                "tls": {"ca_file": dove["CA_FILE"]},
            },
            "bbe": ("tls_connect", f"{LOOPBACK}:{imaps}"),
        },
    }


def blackbox_config(d: Daemons) -> str:
    exim, dove = d.info["exim4"], d.info["dovecot"]
    return textwrap.dedent(
        f"""\
        modules:
          dns_a:
            prober: dns
            timeout: 5s
            dns:
              preferred_ip_protocol: ip4
              transport_protocol: udp
              query_name: www.test.internal
              query_type: A
              validate_answer_rrs:
                fail_if_none_matches_regexp: ['192\\.0\\.2\\.10']
          icmp:
            prober: icmp
            timeout: 5s
            icmp:
              preferred_ip_protocol: ip4
          smtp_starttls:
            prober: tcp
            timeout: 5s
            tcp:
              preferred_ip_protocol: ip4
              tls_config:
                ca_file: {exim["CA_FILE"]}
              query_response:
                - expect: "^220 "
                - send: "EHLO probekit.invalid"
                - expect: "^250 "
                - send: "STARTTLS"
                - expect: "^220"
                - starttls: true
                - send: "QUIT"
                - expect: "^221"
          imaps_login:
            prober: tcp
            timeout: 5s
            tcp:
              preferred_ip_protocol: ip4
              tls: true
              tls_config:
                ca_file: {dove["CA_FILE"]}
              query_response:
                - expect: "^\\\\* OK"
                - send: "a1 LOGIN {dove["USER"]} {dove["PASSWORD"]}"
                - expect: "^a1 OK"
                - send: "a2 LOGOUT"
          pop3s_login:
            prober: tcp
            timeout: 5s
            tcp:
              preferred_ip_protocol: ip4
              tls: true
              tls_config:
                ca_file: {dove["CA_FILE"]}
              query_response:
                - expect: "^\\\\+OK"
                - send: "USER {dove["USER"]}"
                - expect: "^\\\\+OK"
                - send: "PASS {dove["PASSWORD"]}"
                - expect: "^\\\\+OK"
                - send: "QUIT"
          tls_connect:
            prober: tcp
            timeout: 5s
            tcp:
              preferred_ip_protocol: ip4
              tls: true
              tls_config:
                ca_file: {dove["CA_FILE"]}
        """
    )


class Blackbox:
    """blackbox_exporter on a loopback high port, configured for the daemons."""

    def __init__(self, binary: str, workdir: Path, daemons: Daemons) -> None:
        self.port = free_port()
        conf = workdir / "blackbox.yml"
        conf.write_text(blackbox_config(daemons))
        self.log = (workdir / "blackbox.out").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={conf}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/-/healthy")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"blackbox_exporter did not start: {conf}")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=15)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def probe(self, module: str, target: str, debug: bool = False) -> tuple[bool, str]:
        query = {"module": module, "target": target} | ({"debug": "true"} if debug else {})
        status, body = self.get("/probe?" + urlencode(query))
        return status == 200 and "probe_success 1" in body, body

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- measurements ---------------------------------------------------------------------------


def per_process(cmd: list[str], n: int, env: dict[str, str]) -> dict[str, Any]:
    """CPU and wall time per check of a process per check; every exit code is counted."""
    for _ in range(2):  # warm the page cache
        subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)
    codes: dict[int, int] = {}
    last = ""
    cpu0, wall0 = children_cpu(), time.perf_counter()
    for _ in range(n):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
        codes[proc.returncode] = codes.get(proc.returncode, 0) + 1
        last = (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode else last
    cpu, wall = children_cpu() - cpu0, time.perf_counter() - wall0
    return {
        "checks": n,
        "ok": codes.get(0, 0),
        "exit_codes": codes,
        "cpu_ms_per_check": 1000 * cpu / n,
        "wall_ms_per_check": 1000 * wall / n,
        "last_failure": last,
    }


def blackbox_run(bbe: Blackbox, module: str, target: str, n: int) -> dict[str, Any]:
    ok, body = bbe.probe(module, target, debug=True)
    if not ok:
        raise RuntimeError(f"blackbox_exporter module {module} fails:\n{body[-3000:]}")
    bbe.probe(module, target)
    up = 0
    cpu0, wall0 = proc_cpu(bbe.proc.pid), time.perf_counter()
    for _ in range(n):
        up += bbe.probe(module, target)[0]
    cpu, wall = proc_cpu(bbe.proc.pid) - cpu0, time.perf_counter() - wall0
    return {
        "checks": n,
        "ok": up,
        "cpu_ms_per_check": 1000 * cpu / n,
        "wall_ms_per_check": 1000 * wall / n,
    }


def runner_run(spec: dict[str, Any], n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({**spec, "n": n})],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"probekit worker failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _build(spec: dict[str, Any]) -> Any:
    from probekit import (
        DnsProbe,
        IcmpProbe,
        ImapProbe,
        Pop3Probe,
        Secret,
        SmtpProbe,
        TlsOptions,
        TlsProbe,
    )

    fields = dict(spec)
    kind = fields.pop("kind")
    for key in ("tls", "starttls_options"):
        if key in fields:
            fields[key] = TlsOptions(**fields[key])
    if "password" in fields:
        fields["password"] = Secret(fields["password"])
    if "expect_answers" in fields:
        fields["expect_answers"] = tuple(fields["expect_answers"])
    classes = {
        "dns": DnsProbe,
        "icmp": IcmpProbe,
        "smtp": SmtpProbe,
        "imap": ImapProbe,
        "pop3": Pop3Probe,
        "tls": TlsProbe,
    }
    return classes[kind](**fields)


async def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    from probekit import Runner, Status

    n = spec.pop("n")
    probe = _build(spec)
    async with Runner(max_concurrency=CONCURRENCY) as runner:
        await runner.run_all([probe] * 3)  # warm-up: imports, TLS contexts, first connections
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = await runner.run_all([probe] * n)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    up = sum(result.status is Status.UP for result in results)
    failure = next((r.summary() for r in results if r.status is not Status.UP), "")
    return {
        "checks": n,
        "ok": up,
        "cpu_ms_per_check": 1000 * cpu / n,
        "wall_s": wall,
        "last_failure": failure,
    }


def worker(spec: dict[str, Any]) -> None:
    print(json.dumps(asyncio.run(_worker(spec))))


# -- the table ------------------------------------------------------------------------------


def fmt(side: dict[str, Any] | None) -> str:
    if side is None:
        return "-"
    text = f"{side['cpu_ms_per_check']:.2f}"
    if side["ok"] != side["checks"]:
        text += f" ({side['checks'] - side['ok']} of {side['checks']} failed)"
    return text


def ratio(peer: dict[str, Any] | None, ours: dict[str, Any]) -> str:
    if peer is None or not ours["cpu_ms_per_check"]:
        return "-"
    return f"{peer['cpu_ms_per_check'] / ours['cpu_ms_per_check']:.2f} x"


def render(data: dict[str, Any]) -> str:
    lines = [
        "| kind | the check | probekit check (process) | plugin (process) | plugin / probekit "
        "| probekit Runner (in process) | blackbox_exporter | blackbox / Runner |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in data["kinds"].items():
        lines.append(
            f"| {kind} | {row['what']} | {fmt(row['probekit_process'])} "
            f"| {row['plugin_name']} {fmt(row['plugin'])} "
            f"| {ratio(row['plugin'], row['probekit_process'])} "
            f"| {fmt(row['probekit_runner'])} | {fmt(row['blackbox'])} "
            f"| {ratio(row['blackbox'], row['probekit_runner'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer checks per figure")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write figures")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    kinds = [kind for kind in args.kinds.split(",") if kind]
    per_proc_n, runner_n, bbe_n = (5, 50, 50) if args.quick else (20, 300, 300)
    probekit_bin = shutil.which("probekit")
    bbe_bin = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    if probekit_bin is None:
        parser.error("the probekit command is not on PATH (pip install -e .)")
    if not Path("/usr/bin/dig").exists():
        log("/usr/bin/dig is missing (bind9-dnsutils): check_dig's figures will be failures")
    workdir = Path(tempfile.mkdtemp(prefix="probekit-protocol-peers-"))
    daemons = Daemons(workdir)
    bbe: Blackbox | None = None
    data: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        },
        "counts": {"per_process": per_proc_n, "runner": runner_n, "blackbox": bbe_n},
        "kinds": {},
    }
    try:
        daemons.start()
        all_specs = specs(daemons)
        if bbe_bin is not None:
            bbe = Blackbox(bbe_bin, workdir, daemons)
        else:
            log("blackbox_exporter is missing: its column stays empty")
        env = dict(os.environ, PROBEKIT_BENCH_PASSWORD=daemons.info["dovecot"]["PASSWORD"])
        # A process per check is measured as installed: with bytecode caches (kept out of the
        # source tree), even where the environment turns writing them off.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        for kind in kinds:
            spec = all_specs[kind]
            log(f"{kind}: probekit check x{per_proc_n}")
            pk_proc = per_process([probekit_bin, "check", *spec["cli"]], per_proc_n, env)
            log(f"{kind}: {spec['plugin'][0]} x{per_proc_n}")
            plugin = per_process(
                [str(PLUGINS / spec["plugin"][0]), *spec["plugin"][1:]], per_proc_n, env
            )
            log(f"{kind}: Runner x{runner_n}")
            pk_runner = runner_run(spec["probe"], runner_n)
            bb = None
            if bbe is not None:
                log(f"{kind}: blackbox_exporter x{bbe_n}")
                module, target = spec["bbe"]
                bb = blackbox_run(bbe, module, target, bbe_n)
            data["kinds"][kind] = {
                "what": spec["what"],
                "plugin_name": spec["plugin"][0],
                "probekit_process": pk_proc,
                "plugin": plugin,
                "probekit_runner": pk_runner,
                "blackbox": bb,
                "blackbox_module": spec["bbe"][0],
            }
    finally:
        if bbe is not None:
            bbe.stop()
        daemons.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    data["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    table = render(data)
    data["table"] = table
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"CPU milliseconds per check (user + system), {data['date']}:\n")
    print(table)
    print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
