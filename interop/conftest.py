"""Shared fixtures of `nox -s interop`: start a real daemon, run a monitoring-plugin, and record
probekit's verdict beside the plugin's for the agreement table printed at the end.

See interop/README.md. Nothing here is collected by the default `nox -s tests` run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from probekit import Result

HERE = Path(__file__).parent
DAEMONS = HERE / "daemons"
PLUGINS = Path("/usr/lib/nagios/plugins")
#: Nagios exit codes by name, and back.
NAGIOS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on (host, port)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.1)


@dataclass
class Daemon:
    """A daemon started by interop/daemons/NAME.sh; `info` holds the KEY=VALUE lines it printed."""

    name: str
    statedir: Path
    info: dict[str, str] = field(default_factory=dict)

    def _script(self, action: str, timeout: float = 180) -> str:
        completed = subprocess.run(
            ["bash", str(DAEMONS / f"{self.name}.sh"), action, str(self.statedir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"interop/daemons/{self.name}.sh {action} exited {completed.returncode}:\n"
                f"{completed.stdout}\n{completed.stderr}"
            )
        return completed.stdout

    def start(self) -> None:
        self.statedir.mkdir(parents=True, exist_ok=True)
        for line in self._script("start").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.isidentifier():
                self.info[key] = value.strip()

    def stop(self) -> None:
        self._script("stop", timeout=60)

    def port(self, key: str) -> int:
        return int(self.info[key])


@pytest.fixture(scope="session")
def start_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[Daemon]]:
    """`start_daemon("NAME")` starts interop/daemons/NAME.sh once per session; all stop at the
    end."""
    started: dict[str, Daemon] = {}

    class _Starter(Daemon):
        def __new__(cls, name: str) -> Daemon:  # type: ignore[misc]
            if name not in started:
                daemon = Daemon(name, tmp_path_factory.mktemp(f"daemon-{name}"))
                daemon.start()
                started[name] = daemon
            return started[name]

    yield _Starter
    for daemon in started.values():
        try:
            daemon.stop()
        except Exception as exc:  # a failed stop is reported, the other daemons still stop
            print(f"interop: stopping {daemon.name} failed: {exc}")


@dataclass(frozen=True)
class PluginVerdict:
    """A monitoring-plugin's exit code and first output line."""

    code: int
    line: str

    @property
    def state(self) -> str:
        return NAGIOS.get(self.code, f"exit {self.code}")


def run_plugin(name: str, *args: str, timeout: float = 30) -> PluginVerdict:
    """Run /usr/lib/nagios/plugins/NAME with ARGS, as a monitoring system would."""
    path = PLUGINS / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{path} is missing: run interop/install.sh")
        path = Path(found)
    completed = subprocess.run(
        [str(path), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    line = (completed.stdout or completed.stderr).strip().splitlines()
    return PluginVerdict(completed.returncode, line[0] if line else "")


@dataclass(frozen=True)
class Row:
    daemon: str
    case: str
    expected: str
    probekit: str
    phases: str
    plugin: str
    plugin_line: str
    note: str


_ROWS: list[Row] = []


def verdict(result: Result) -> str:
    """probekit's verdict in the plugins' words (UP=OK, DEGRADED=WARNING, DOWN=CRITICAL)."""
    state = NAGIOS[result.status.exit_code]
    return f"{state}/{result.error.kind.value}" if result.error is not None else state


class Agreement:
    """Records one case: what was expected, probekit's result and the plugin's verdict."""

    def record(
        self,
        daemon: str,
        case: str,
        expected: str,
        result: Result,
        plugin: PluginVerdict | None,
        note: str = "",
    ) -> None:
        phases = " ".join(f"{p.name}={p.duration * 1000:.1f}ms" for p in result.phases)
        row = Row(
            daemon,
            case,
            expected,
            verdict(result),
            phases,
            plugin.state if plugin is not None else "-",
            plugin.line[:100] if plugin is not None else "",
            note,
        )
        _ROWS.append(row)
        print(
            f"\n[interop] {daemon} {case}: probekit {row.probekit} ({phases}); plugin {row.plugin}"
        )


@pytest.fixture(scope="session")
def agreement() -> Agreement:
    return Agreement()


def table() -> str:
    lines = [
        "| daemon | case | expected | probekit | plugin | phases (probekit) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {row.daemon} | {row.case} | {row.expected} | {row.probekit} | {row.plugin} "
        f"| {row.phases} | {row.note} |"
        for row in _ROWS
    )
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ROWS:
        return
    text = table()
    terminalreporter.write_sep("=", f"interop: {len(_ROWS)} cases, probekit beside the plugins")
    terminalreporter.write_line(text)
    report = os.environ.get("INTEROP_REPORT")
    if report:
        Path(report).write_text(text + "\n", encoding="utf-8")
