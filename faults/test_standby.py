"""A standby control plane, with real processes: two `probekit control` on one PostgreSQL
(`standby = true`; the standby listens meanwhile, answering 503 standby), two `probekit
checkpoint` instances given both URLs (`--standby-url`), and a
target outage in progress. `kill -9` of the active control plane: the standby takes the lock and
serves, the instances move to it; then the outage ends. Counted: results produced (the spools'
sequence) against results stored in PostgreSQL (lost, duplicated), the alert rows, the alert
lines each control plane printed (sent once, resolved once, by whichever was active), and the
take-over time (kill to the standby's /-/ready answering 200; instances connected to it).

Needs PostgreSQL's binaries (Debian's postgresql-15; skipped without them) and psycopg."""

from __future__ import annotations

import datetime as dt
import http.client
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _harness import (
    CHECKPOINT,
    DEADLINE,
    GRACE,
    HEARTBEAT,
    TOKEN_ENV,
    ControlProcess,
    Counts,
    InstanceProcess,
    Profile,
    Target,
    check,
    scrape,
    spool_counts,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _pgserver import PgServer, find_bin

PASSWORD_ENV = "FAULTS_PG_PASSWORD"  # noqa: S105 (the name of a variable)
#: How long the standby may take to serve after the active is killed (documented in
#: docs/checkpoint.md): its poll (1 s) and its start, far below this.
TAKEOVER_BOUND = 10.0


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (initdb, pg_ctl; set PROBEKIT_PG_BIN)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (probekit[postgres-store])")
    server = PgServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class StandbyInstance(InstanceProcess):
    def __init__(self, name: str, workdir: Path, env: dict[str, str], urls: list[str]) -> None:
        super().__init__(name, workdir, env, urls[0])
        self.standby_urls = urls[1:]

    def argv(self) -> list[str]:
        extra = [arg for url in self.standby_urls for arg in ("--standby-url", url)]
        return [*super().argv(), *extra]


def _config(port: int, pg: PgServer, monitors: list[str], targets: dict[str, Target]) -> str:
    lines = [
        "[control]",
        f"port = {port}",
        f'db = "{pg.url}"',
        f'db_password = {{ env = "{PASSWORD_ENV}" }}',
        "standby = true",
        f"heartbeat_interval = {HEARTBEAT}",
        f"grace = {GRACE}",
        "",
        "[[checkpoints]]",
        f'id = "{CHECKPOINT}"',
        f'token = {{ env = "{TOKEN_ENV}" }}',
    ]
    for monitor in monitors:
        target = targets["outage" if monitor == "victim" else "web"]
        lines += [
            "",
            "[[monitors]]",
            f'id = "{monitor}"',
            f'checkpoint = "{CHECKPOINT}"',
            "interval = 1.0",
            'kind = "http"',
            f'url = "{target.url}"',
            f"timeouts = {{ total = {DEADLINE} }}",
        ]
    return "\n".join(lines) + "\n"


STANDBY = "standby; the active control plane holds the lock\n"
STANDING_BY = {"probekit_control_active": 0.0, "probekit_control_instances_connected": 0.0}


def _get(port: int, path: str) -> tuple[int, str]:
    """GET path on 127.0.0.1:port: (status, body); (0, "") when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    except (OSError, http.client.HTTPException):
        return 0, ""
    finally:
        conn.close()


def _query(pg: PgServer, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(pg.url, password=pg.password, autocommit=True) as conn:
        return list(conn.execute(sql.encode()).fetchall())


def _gaps(
    stored: list[tuple[object, ...]], monitors: list[str], start: float, end: float
) -> dict[str, float]:
    """The longest time between two results of each monitor over [start, end] (the kill on)."""
    starts: dict[str, list[float]] = {m: [start, end] for m in monitors}
    for _, monitor, started_at, _ in stored:
        at = dt.datetime.fromisoformat(str(started_at)).timestamp()
        if start <= at <= end:
            starts[str(monitor)].append(at)
    return {m: max(b - a for a, b in itertools.pairwise(sorted(t))) for m, t in starts.items()}


def test_kill9_of_the_active_control_plane_the_standby_takes_over(
    tmp_path: Path, pg: PgServer, profile: Profile, record: Callable[[Counts], None]
) -> None:
    env = {**os.environ, TOKEN_ENV: "faults-" + os.urandom(12).hex(), PASSWORD_ENV: pg.password}
    targets = {name: Target(name) for name in ("web", "outage")}
    monitors = [f"m{i:02d}" for i in range(profile.monitors - 1)] + ["victim"]
    controls = []
    for name in ("active", "standby"):
        config = tmp_path / f"{name}.toml"
        control = ControlProcess(tmp_path, env, config)
        control.name = name
        config.write_text(_config(control.port, pg, monitors, targets))
        controls.append(control)
    active, standby = controls
    urls = [f"ws://127.0.0.1:{c.port}/" for c in controls]
    instances = {n: StandbyInstance(n, tmp_path, env, urls) for n in ("lab-a", "lab-b")}
    try:
        for target in targets.values():
            target.up()
        active.start()
        standby.spawn()  # stands by: it listens, and answers 503 standby
        wait_until(lambda: "standing by" in standby.output(), 30, "the standby waiting")
        assert _get(standby.port, "/-/healthy")[0] == 200
        for instance in instances.values():
            instance.start()
        wait_until(lambda: all(i.healthy() for i in instances.values()), 60, "instances")
        time.sleep(3)
        assert _get(standby.port, "/-/ready") == (503, STANDBY)  # not active
        assert _get(standby.metrics_port, "/ready") == (503, STANDBY)
        metrics = scrape(standby.metrics_port) or {}
        assert {k: metrics.get(k) for k in STANDING_BY} == STANDING_BY  # served, saying so

        targets["outage"].down()  # an incident in progress when the active dies
        wait_until(
            lambda: "CONFIRMED ERROR -> ALERT" in active.output(), 30, "the alert, on the active"
        )
        time.sleep(2)  # under load: runs, confirmations and uploads in flight

        killed_at, killed_wall = time.monotonic(), time.time()
        active.kill9()
        wait_until(lambda: _get(standby.port, "/-/ready")[0] == 200, 30, "the standby serving")
        serving = time.monotonic() - killed_at
        wait_until(lambda: all(i.healthy() for i in instances.values()), 60, "instances moved")
        moved = time.monotonic() - killed_at

        targets["outage"].up()
        wait_until(lambda: "ALERT RESOLVED" in standby.output(), 30, "the resolution")
        time.sleep(2)
        ended_wall = time.time()
        for instance in instances.values():
            instance.stop()
        code = standby.terminate()
        assert code == 0, standby.output()
    finally:
        for instance in instances.values():
            instance.cleanup()
        for control in controls:
            control.cleanup()
        for target in targets.values():
            target.down()

    stored = _query(pg, "SELECT instance_id, monitor_id, started_at, request_id FROM results")
    checks = Counter((i, m, s) for i, m, s, _ in stored)
    answers = Counter(r for *_, r in stored if r is not None)
    duplicated = sum(n - 1 for n in checks.values()) + sum(n - 1 for n in answers.values())
    per_instance = Counter(i for i, _, _ in checks)
    produced = lost = left = unexplained = 0
    for name, instance in instances.items():
        seq, depth, _ = spool_counts(instance.spool)
        produced += seq
        left += depth
        lost += max(0, seq - per_instance[name])
        unexplained += max(0, per_instance[name] - seq)
    alert_rows = _query(pg, "SELECT kind, subject, resolved_at IS NOT NULL FROM alerts")
    printed = {
        c.name: (
            c.output().count("CONFIRMED ERROR -> ALERT"),
            c.output().count("ALERT RESOLVED"),
        )
        for c in controls
    }
    counts = Counts(
        scenario=f"kill -9 active: standby {serving:.1f}/{moved:.1f} s",
        produced=produced,
        stored=len(stored),
        lost=lost + left,
        duplicated=duplicated,
        unexplained=unexplained,
        left_in_spool=left,
        evicted=0,
        refused=0,
        redelivered=-1,
        reassigned=-1,
        cut=-1,
        unspooled_at_kill=0,
        gaps=_gaps(stored, monitors, killed_wall, ended_wall),
        gap_bound=None,
        alerts=Counter((str(k), str(s)) for k, s, _ in alert_rows),
        expected_alerts=Counter({("monitor_down", "victim"): 1}),
        kills=1,
        mismatched_reports=[],
    )
    record(counts)
    problems = check(counts)
    assert not problems, "; ".join(problems)
    # (the scenario's name carries the take-over figures: serving / instances moved, in s)
    assert [r for r in alert_rows if r[2]] == alert_rows  # the alert resolved
    assert printed == {"active": (1, 0), "standby": (0, 1)}  # sent once, resolved once
    assert serving <= TAKEOVER_BOUND, f"the standby took {serving:.1f} s"
