"""Real processes for the fault suite: one `probekit control`, two `probekit checkpoint`
instances, and local HTTP targets whose outage the suite controls; all on loopback high ports.

How a run is counted (see `Cluster.finish`):

- **produced**: results an instance made durable. Every result is written to the instance's
  spool before it is sent, and the spool's `entries.seq` is an AUTOINCREMENT key, so SQLite's
  `sqlite_sequence` row for `entries` is the number of results ever committed to that spool file
  (a rolled-back write rolls it back too). It survives `kill -9` with the file, so it counts
  the results of killed lives exactly. For a life stopped with SIGTERM the instance's own count
  (`drained: N results produced`) is checked against it; for a killed life the last `/metrics`
  scrape before the kill gives what was still in memory (not yet spooled) when it died.
- **stored**: rows of the control plane's `results` table, by instance.
- **lost**: produced and not stored, counted per instance against the distinct checks stored
  (so a duplicate cannot hide a loss; what is left in a spool at the end counts as lost), plus
  any result id that was in a killed instance's spool and never got stored.
- **duplicated**: two stored rows for one check (same monitor, instance and start time) or two
  answers stored for one run request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

CHECKPOINT = "lab"
TOKEN_ENV = "FAULTS_LAB_TOKEN"  # noqa: S105 (the name of a variable)
#: Heartbeat interval of both sides; the control plane's silence threshold is 3 of them.
HEARTBEAT = 1.0
#: `timeouts.total` of every monitor: the run deadline the control plane sends.
DEADLINE = 2.0
#: The control plane's default `grace`.
GRACE = 2.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(step)


def scrape(port: int, timeout: float = 2.0) -> dict[str, float] | None:
    """GET /metrics on 127.0.0.1:port: sample name (labels dropped, values summed) -> value.

    None when nothing answers (a stopped or killed process)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    samples: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        samples[name.split("{", 1)[0]] += float(value)
    return dict(samples)


@dataclass(frozen=True)
class Profile:
    """How long and how often: `fast` for CI (the whole suite in under 3 minutes), `full`."""

    name: str
    monitors: int
    interval: float
    kills: int  # kill -9 of an instance, alternating between the two
    stop_seconds: float  # SIGSTOP of one instance
    control_kills: int
    control_down: float  # seconds the control plane stays dead
    spool_seconds: float  # seconds the instances spool with the control plane dead
    outage_seconds: float  # minimum length of the target outage

    @property
    def gap_bound(self) -> float:
        """Longest gap allowed while a healthy peer covers: interval + deadline + grace."""
        return self.interval + DEADLINE + GRACE


PROFILES = {
    "fast": Profile("fast", 8, 1.0, 2, 10.0, 1, 4.0, 4.0, 6.0),
    "full": Profile("full", 20, 1.0, 6, 25.0, 3, 15.0, 15.0, 10.0),
}


# -- targets ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Target:
    """A local HTTP server on a fixed port; `down()` closes it (connections are refused)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}"

    def up(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


# -- processes -------------------------------------------------------------------------------


class Process:
    """One subprocess of ours, with its output in a log file per start."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.workdir = workdir
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.{self.starts}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        assert not self.running, f"{self.name} is running already"
        self.starts += 1
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            self.argv(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._close_log()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (SIGCONT first, should it be stopped) and wait; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        code = self.proc.wait(timeout)
        self._close_log()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        """Leave nothing running (after a failure too)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()


class ControlProcess(Process):
    """`probekit control --config FILE -q --metrics-port N` on a fixed port."""

    def __init__(self, workdir: Path, env: dict[str, str], config: Path) -> None:
        super().__init__("control", workdir, env)
        self.config = config
        self.port = free_port()
        self.metrics_port = free_port()

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "probekit",
            "control",
            "--config",
            str(self.config),
            "-q",
            "--metrics-port",
            str(self.metrics_port),
        ]

    def start(self) -> None:
        self.spawn()
        wait_until(lambda: scrape(self.metrics_port) is not None, 30, "control plane up")

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port) or {}


@dataclass
class Life:
    """One start of an instance: from spawn to exit."""

    began: float  # wall clock
    seq_before: int
    ended: float | None = None
    killed: bool = False
    seq_after: int | None = None
    reported: int | None = None  # `drained: N results produced` (a clean stop)
    scraped: int = 0  # results_total at the last scrape (in memory, spooled or not)
    spool_at_kill: set[str] = field(default_factory=set)

    @property
    def durable(self) -> int:
        assert self.seq_after is not None
        return self.seq_after - self.seq_before


class InstanceProcess(Process):
    """`probekit checkpoint` for instance ``name`` of the checkpoint, with its own spool."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str], url: str) -> None:
        super().__init__(name, workdir, env)
        self.url = url
        self.spool = workdir / f"spool-{name}.db"
        self.metrics_port = free_port()
        self.lives: list[Life] = []

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "probekit",
            "checkpoint",
            "--url",
            self.url,
            "--insecure",
            "--token-env",
            TOKEN_ENV,
            "--checkpoint-id",
            CHECKPOINT,
            "--instance-id",
            self.name,
            "--spool",
            str(self.spool),
            "--allow",
            "127.0.0.0/8",
            "--heartbeat-interval",
            str(HEARTBEAT),
            "--metrics-port",
            str(self.metrics_port),
        ]

    def start(self) -> None:
        self.lives.append(Life(began=time.time(), seq_before=spool_counts(self.spool)[0]))
        self.spawn()
        wait_until(lambda: self.metrics() is not None, 30, f"{self.name} up")

    def metrics(self) -> dict[str, float] | None:
        samples = scrape(self.metrics_port, timeout=1.0)
        if samples is not None and self.lives:
            produced = int(samples.get("probekit_checkpoint_results_total", 0))
            self.lives[-1].scraped = max(self.lives[-1].scraped, produced)
        return samples

    def kill9(self) -> None:
        """Scrape, then `kill -9` at once; note what the dead instance left in its spool."""
        self.metrics()
        super().kill9()
        life = self.lives[-1]
        life.ended, life.killed = time.time(), True
        life.seq_after = spool_counts(self.spool)[0]
        life.spool_at_kill = spool_ids(self.spool)

    def stop(self) -> None:
        """SIGTERM: drain; check the instance's own count of what it produced."""
        code = self.terminate()
        life = self.lives[-1]
        life.ended = time.time()
        life.seq_after = spool_counts(self.spool)[0]
        match = re.search(r"drained: (\d+) results produced", self.output())
        assert code == 0, f"{self.name} exited {code}:\n{self.output()}"
        assert match, f"{self.name} did not say what it drained:\n{self.output()}"
        life.reported = int(match.group(1))

    def healthy(self) -> bool:
        samples = self.metrics()
        return (
            samples is not None
            and samples.get("probekit_checkpoint_connected") == 1
            and samples.get("probekit_checkpoint_spool_depth") == 0
        )


# -- reading the files -----------------------------------------------------------------------


@contextlib.contextmanager
def _db(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def spool_counts(path: Path) -> tuple[int, int, int]:
    """(results ever committed, results in the spool now, results evicted) of a spool file."""
    if not path.exists():
        return 0, 0, 0
    with _db(path) as conn:
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        depth = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        dropped = conn.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
    return (seq[0] if seq else 0), int(depth), (dropped[0] if dropped else 0)


def spool_ids(path: Path) -> set[str]:
    with _db(path) as conn:
        return {row[0] for row in conn.execute("SELECT result_id FROM entries")}


@dataclass(frozen=True)
class Stored:
    result_id: str
    monitor_id: str
    instance_id: str
    request_id: str | None
    reason: str
    status: str
    started: float


def stored_results(db: Path) -> list[Stored]:
    with _db(db) as conn:
        rows = conn.execute(
            "SELECT result_id, monitor_id, instance_id, request_id, reason, status, started_at "
            "FROM results"
        ).fetchall()
    return [
        Stored(
            result_id=result_id,
            monitor_id=monitor_id,
            instance_id=instance_id,
            request_id=request_id,
            reason=reason,
            status=status,
            started=dt.datetime.fromisoformat(started_at).timestamp(),
        )
        for result_id, monitor_id, instance_id, request_id, reason, status, started_at in rows
    ]


def alerts_opened(db: Path, since: float) -> Counter[tuple[str, str]]:
    with _db(db) as conn:
        rows = conn.execute(
            "SELECT kind, subject FROM alerts WHERE opened_at >= ?", (since,)
        ).fetchall()
    return Counter((kind, subject) for kind, subject in rows)


# -- a cluster -------------------------------------------------------------------------------


@dataclass
class Counts:
    """What one run produced and what became of it."""

    scenario: str
    produced: int
    stored: int
    lost: int
    duplicated: int
    unexplained: int  # stored from an instance beyond what it produced (must be 0)
    left_in_spool: int
    evicted: int
    refused: int
    redelivered: int  # results received again and dropped by the control plane
    reassigned: int
    cut: int
    unspooled_at_kill: int  # in a killed instance's memory, never spooled (not a loss: info)
    gaps: dict[str, float]
    gap_bound: float | None
    alerts: Counter[tuple[str, str]]
    expected_alerts: Counter[tuple[str, str]]
    kills: int
    mismatched_reports: list[str]

    @property
    def longest_gap(self) -> tuple[str, float]:
        monitor = max(self.gaps, key=lambda m: self.gaps[m])
        return monitor, self.gaps[monitor]

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["alerts"] = sorted(f"{k}:{s}" for k, s in self.alerts.elements())
        data["expected_alerts"] = sorted(f"{k}:{s}" for k, s in self.expected_alerts.elements())
        return data


class Cluster:
    """A control plane, instances `lab-a` and `lab-b`, the targets and the monitors.

    ``monitors`` - 1 monitors check the target `web`; the monitor `victim` alone checks the
    target `outage`, so that one outage of it is one incident and one alert."""

    def __init__(self, workdir: Path, *, monitors: int, interval: float) -> None:
        self.workdir = workdir
        self.interval = interval
        self.targets = {name: Target(name) for name in ("web", "outage")}
        self.monitor_ids = [f"m{i:02d}" for i in range(monitors - 1)] + ["victim"]
        self.db = workdir / "control.db"
        self.env = {
            **os.environ,
            TOKEN_ENV: "faults-" + os.urandom(12).hex(),
        }
        config = workdir / "control.toml"
        self.control = ControlProcess(workdir, self.env, config)
        config.write_text(self._config())
        url = f"ws://127.0.0.1:{self.control.port}/"
        self.instances = {
            name: InstanceProcess(name, workdir, self.env, url) for name in ("lab-a", "lab-b")
        }
        self.began = time.time()
        self.window_start = self.began
        self.kills = 0
        self.window_end = self.began
        self.control_metrics: dict[str, float] = {}

    def _config(self) -> str:
        lines = [
            "[control]",
            f"port = {self.control.port}",
            f'db = "{self.db}"',
            f"heartbeat_interval = {HEARTBEAT}",
            f"grace = {GRACE}",
            "",
            "[[checkpoints]]",
            f'id = "{CHECKPOINT}"',
            f'token = {{ env = "{TOKEN_ENV}" }}',
        ]
        for monitor in self.monitor_ids:
            target = self.targets["outage" if monitor == "victim" else "web"]
            lines += [
                "",
                "[[monitors]]",
                f'id = "{monitor}"',
                f'checkpoint = "{CHECKPOINT}"',
                f"interval = {self.interval}",
                'kind = "http"',
                f'url = "{target.url}"',
                f"timeouts = {{ total = {DEADLINE} }}",
            ]
        return "\n".join(lines) + "\n"

    # -- life cycle

    def start(self) -> None:
        for target in self.targets.values():
            target.up()
        self.control.start()
        for instance in self.instances.values():
            instance.start()
        self.settle()
        # Warm up: every monitor has results before the faults begin.
        time.sleep(2 * self.interval + 1)
        self.window_start = time.time()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every running instance is connected with an empty spool."""

        def settled() -> bool:
            running = [i for i in self.instances.values() if i.running]
            return all(i.healthy() for i in running)

        wait_until(settled, timeout, "instances connected with empty spools", step=0.5)

    def kill9(self, name: str) -> None:
        self.instances[name].kill9()
        self.kills += 1

    def finish(
        self,
        scenario: str,
        *,
        expected_alerts: Counter[tuple[str, str]] | None = None,
        gap_bound: float | None = None,
    ) -> Counts:
        """Settle, stop everything cleanly, and count (see the module's docstring)."""
        for target in self.targets.values():
            target.up()
        for instance in self.instances.values():
            if not instance.running:
                instance.start()
        self.settle()
        time.sleep(self.interval)
        self.window_end = time.time()
        for instance in self.instances.values():
            instance.stop()
        self.control_metrics = self.control.metrics()
        code = self.control.terminate()
        assert code == 0, f"control plane exit {code}:\n{self.control.output()}"
        return self.count(scenario, expected_alerts=expected_alerts, gap_bound=gap_bound)

    def cleanup(self) -> None:
        for instance in self.instances.values():
            instance.cleanup()
        self.control.cleanup()
        for target in self.targets.values():
            target.down()

    # -- counting

    def count(
        self,
        scenario: str,
        *,
        expected_alerts: Counter[tuple[str, str]] | None = None,
        gap_bound: float | None = None,
    ) -> Counts:
        """Count a finished run from the spools and the control plane's database. The control
        plane's own counters (resent, moved, cut, refused) are those of its last process."""
        control_metrics = self.control_metrics
        stored = stored_results(self.db)
        # Lost is counted against distinct checks, so that a duplicate cannot hide a loss.
        by_instance = Counter(
            instance
            for _, instance, _ in {(r.monitor_id, r.instance_id, r.started) for r in stored}
        )
        stored_ids = {row.result_id for row in stored}
        produced = lost = unexplained = left = evicted = unspooled = 0
        mismatched: list[str] = []
        for name, instance in self.instances.items():
            seq, depth, dropped = spool_counts(instance.spool)
            produced += seq
            left += depth
            evicted += dropped
            lost += max(0, seq - by_instance[name])
            unexplained += max(0, by_instance[name] - seq)
            for number, life in enumerate(instance.lives, 1):
                lost += len(life.spool_at_kill - stored_ids)
                if life.killed:
                    unspooled += max(0, life.scraped - life.durable)
                elif life.reported != life.durable:
                    mismatched.append(
                        f"{name} life {number}: reported {life.reported}, spooled {life.durable}"
                    )
        checks = Counter((row.monitor_id, row.instance_id, row.started) for row in stored)
        answers = Counter(row.request_id for row in stored if row.request_id is not None)
        duplicated = sum(n - 1 for n in checks.values()) + sum(n - 1 for n in answers.values())
        return Counts(
            scenario=scenario,
            produced=produced,
            stored=len(stored),
            lost=lost,
            duplicated=duplicated,
            unexplained=unexplained,
            left_in_spool=left,
            evicted=evicted,
            refused=int(control_metrics.get("probekit_control_results_refused_total", -1)),
            redelivered=int(control_metrics.get("probekit_control_results_duplicate_total", -1)),
            reassigned=int(control_metrics.get("probekit_control_runs_reassigned_total", -1)),
            cut=int(control_metrics.get("probekit_control_instances_cut_total", -1)),
            unspooled_at_kill=unspooled,
            gaps=self._gaps(stored, self.window_start, self.window_end),
            gap_bound=gap_bound,
            alerts=alerts_opened(self.db, self.began),
            expected_alerts=expected_alerts or Counter(),
            kills=self.kills,
            mismatched_reports=mismatched,
        )

    def _gaps(self, stored: list[Stored], start: float, end: float) -> dict[str, float]:
        """The longest time between two results of each monitor, over [start, end]."""
        starts: dict[str, list[float]] = {monitor: [start, end] for monitor in self.monitor_ids}
        for row in stored:
            if start <= row.started <= end:
                starts[row.monitor_id].append(row.started)
        return {
            monitor: max(b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False))
            for monitor, times in starts.items()
        }


def check(counts: Counts) -> list[str]:
    """The suite's verdict on a run: the problems found (none: the run passes)."""
    problems = []
    if counts.lost:
        problems.append(f"{counts.lost} results lost")
    if counts.duplicated:
        problems.append(f"{counts.duplicated} results stored twice")
    if counts.unexplained:
        problems.append(f"{counts.unexplained} results stored beyond what the instances produced")
    if counts.left_in_spool or counts.evicted or counts.refused:
        problems.append(
            f"spool left {counts.left_in_spool}, evicted {counts.evicted}, refused {counts.refused}"
        )
    problems.extend(counts.mismatched_reports)
    if counts.stored == 0:
        problems.append("nothing stored")
    if counts.gap_bound is not None:
        late = {m: round(g, 1) for m, g in counts.gaps.items() if g > counts.gap_bound}
        if late:
            problems.append(f"gaps over {counts.gap_bound} s: {late}")
    if counts.alerts != counts.expected_alerts:
        problems.append(
            f"alerts raised {sorted(counts.alerts.elements())}, "
            f"expected {sorted(counts.expected_alerts.elements())}"
        )
    return problems
