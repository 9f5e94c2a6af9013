"""An alert committed by the active control plane and not yet delivered when it dies is
delivered by the standby: real processes, two `probekit control` on one PostgreSQL
(`standby = true`) with a webhook channel, two `probekit checkpoint` instances given both URLs,
and a local webhook receiver that holds every `alert_opened` it is sent without answering.

An outage opens an alert; its delivery arrives at the receiver, which stalls it (the alert and
its outbox entry are committed, the delivery is not done); `kill -9` of the active; the
receiver answers from then on; the standby takes over and delivers what the outbox holds; the
outage ends. Counted at the receiver, per event id: every alert opened (in the database) was
delivered, opened and resolved; a repeat carries the same id; no alert announced under another
id. Delivery is at least once: the stalled attempt and the standby's are the same event.

Needs PostgreSQL's binaries (Debian's postgresql-15; skipped without them) and psycopg."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _harness import (
    CHECKPOINT,
    DEADLINE,
    GRACE,
    HEARTBEAT,
    TOKEN_ENV,
    ControlProcess,
    Profile,
    Target,
    wait_until,
)
from test_standby import PASSWORD_ENV, TAKEOVER_BOUND, StandbyInstance, _get, _query

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _pgserver import PgServer, find_bin


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


class Receiver:
    """A webhook receiver on 127.0.0.1: while ``stalling``, it takes each ``alert_opened`` in
    and answers nothing (until ``release``); everything else it answers 200 at once.
    ``arrived`` and ``answered`` count event ids; ``alerts`` maps each alert event id to its
    (kind, alert id)."""

    def __init__(self) -> None:
        self.stalling = True
        self.release = threading.Event()
        self.arrived: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        #: Arrivals once no longer stalling (after the kill: the standby's deliveries).
        self.after: Counter[str] = Counter()
        self.alerts: dict[str, tuple[str, str]] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), 1 << 20)
                body: dict[str, Any] = json.loads(self.rfile.read(length))
                event_id = str(body["event_id"])
                with outer.lock:
                    outer.arrived[event_id] += 1
                    if not outer.stalling:
                        outer.after[event_id] += 1
                    if body.get("alert"):
                        outer.alerts[event_id] = (body["kind"], body["alert"]["alert_id"])
                    stall = outer.stalling and body["kind"] == "alert_opened"
                if stall and not outer.release.wait(60):
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self.wfile.flush()
                except OSError:
                    return  # the sender is gone (killed): not delivered by this attempt
                with outer.lock:
                    outer.answered[event_id] += 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def stalled(self) -> list[str]:
        with self.lock:
            return [i for i, (kind, _) in self.alerts.items() if kind == "alert_opened"]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _config(port: int, pg: PgServer, hook: str, monitors: list[str], urls: dict[str, str]) -> str:
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
        "",
        "[[channels]]",
        'name = "hook"',
        'type = "webhook"',
        f'url = "{hook}"',
        "timeout = 60",
        "backoff = 0.2",
        "max_backoff = 1",
    ]
    for monitor in monitors:
        lines += [
            "",
            "[[monitors]]",
            f'id = "{monitor}"',
            f'checkpoint = "{CHECKPOINT}"',
            "interval = 1.0",
            'kind = "http"',
            f'url = "{urls["outage" if monitor == "victim" else "web"]}"',
            f"timeouts = {{ total = {DEADLINE} }}",
        ]
    return "\n".join(lines) + "\n"


def test_kill9_between_an_alerts_commit_and_its_delivery_the_standby_delivers_it(
    tmp_path: Path, pg: PgServer, profile: Profile
) -> None:
    env = {**os.environ, TOKEN_ENV: "faults-" + os.urandom(12).hex(), PASSWORD_ENV: pg.password}
    targets = {name: Target(name) for name in ("web", "outage")}
    monitors = [f"m{i:02d}" for i in range(min(profile.monitors, 6) - 1)] + ["victim"]
    receiver = Receiver()
    controls = []
    for name in ("active", "standby"):
        config = tmp_path / f"{name}.toml"
        control = ControlProcess(tmp_path, env, config)
        control.name = name
        controls.append(control)
    active, standby = controls
    urls = [f"ws://127.0.0.1:{c.port}/" for c in controls]
    instances = {n: StandbyInstance(n, tmp_path, env, urls) for n in ("lab-a", "lab-b")}
    try:
        receiver.start()
        for target in targets.values():
            target.up()
        for control in controls:
            control.config.write_text(
                _config(
                    control.port, pg, receiver.url, monitors, {n: t.url for n, t in targets.items()}
                )
            )
        active.start()
        standby.spawn()
        wait_until(lambda: "standing by" in standby.output(), 30, "the standby waiting")
        for instance in instances.values():
            instance.start()
        wait_until(lambda: all(i.healthy() for i in instances.values()), 60, "instances")

        targets["outage"].down()
        # the alert committed (with its outbox entry), its delivery under way and stalled
        wait_until(lambda: bool(receiver.stalled()), 60, "the alert's delivery, stalled")
        assert "CONFIRMED ERROR -> ALERT" in active.output()
        killed_at = time.monotonic()
        active.kill9()
        with receiver.lock:
            receiver.stalling = False  # from now on every delivery is answered
        receiver.release.set()
        wait_until(lambda: _get(standby.port, "/-/ready")[0] == 200, 30, "the standby serving")
        serving = time.monotonic() - killed_at
        (opened,) = receiver.stalled()
        wait_until(lambda: receiver.answered[opened] >= 1, 30, "the alert, from the standby")
        delivered = time.monotonic() - killed_at
        wait_until(lambda: all(i.healthy() for i in instances.values()), 60, "instances moved")

        targets["outage"].up()
        resolved = opened.replace(":alert_opened", ":alert_resolved")
        wait_until(lambda: receiver.answered[resolved] >= 1, 60, "the resolution")
        time.sleep(1)  # a repeat would arrive now
        for instance in instances.values():
            instance.stop()
        assert standby.terminate() == 0, standby.output()
    finally:
        for instance in instances.values():
            instance.cleanup()
        for control in controls:
            control.cleanup()
        for target in targets.values():
            target.down()
        receiver.stop()

    alert_rows = _query(pg, "SELECT alert_id, kind, resolved_at IS NOT NULL FROM alerts")
    outbox_left = _query(pg, "SELECT count(*) FROM alert_outbox")[0][0]
    with receiver.lock:
        arrived, answered, alerts = Counter(receiver.arrived), receiver.answered, receiver.alerts
        after = Counter(receiver.after)
    alert_events = dict(alerts)
    repeats = {i: n for i, n in arrived.items() if n > 1}
    print(  # noqa: T201 - the figures of the run, shown with -s
        f"\nstandby outbox: serving {serving:.1f} s, the stalled alert delivered "
        f"{delivered:.1f} s after the kill; alert events {sorted(alert_events)}; "
        f"arrivals per event id repeated: {repeats}; after the kill {dict(after)}"
    )
    assert serving <= TAKEOVER_BOUND
    # every alert opened is announced, opened and resolved, each under its one stable id
    assert [(str(k), bool(r)) for _, k, r in alert_rows] == [("monitor_down", True)]
    alert_id = str(alert_rows[0][0])
    assert alert_events == {
        f"{alert_id}:alert_opened": ("alert_opened", alert_id),
        f"{alert_id}:alert_resolved": ("alert_resolved", alert_id),
    }
    assert answered[f"{alert_id}:alert_opened"] >= 1  # delivered, by the standby
    assert answered[f"{alert_id}:alert_resolved"] >= 1
    # the standby delivered the alert the active had committed (once); the stalled attempt
    # and the standby's are the same event, under the same id: at least once
    assert after[f"{alert_id}:alert_opened"] == 1
    assert arrived[f"{alert_id}:alert_opened"] == 2
    assert set(arrived) == set(answered) | {f"{alert_id}:alert_opened"}
    assert outbox_left == 0  # nothing left undelivered
