"""The alert channels' outbox in the control plane's database (SQLite and PostgreSQL: the
``control_store`` fixture runs each test on both): an event's outbox entries are written in the
transaction that records the event and the alert's state, so a control plane that stops (or
dies) between that commit and the delivery leaves them to the next one on the database, which
delivers them with the same stable event id."""

from __future__ import annotations

import asyncio
import email
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import probekit.control as control
from probekit import Secret
from probekit.alerting import _outbox as outbox
from probekit.alerting._events import Alert, Event, stable_event_id
from probekit.control import (
    ControlPlane,
    ControlSettings,
    DurableSink,
    EmailSink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
)
from probekit.control import _store as db
from test_alerting import OPENED, RESOLVED, TRANSIENT, Receiver, running

pytestmark = pytest.mark.usefixtures("control_store")

TOKEN = "a-token-of-enough-length-0123456789"


def test_event_ids_are_the_alert_and_its_transition() -> None:
    assert stable_event_id(OPENED) == "0190-alert:alert_opened"
    assert stable_event_id(RESOLVED) == "0190-alert:alert_resolved"
    # the same transition of the same alert, however and by whichever plane it is made again
    again = Event("alert_opened", "web", OPENED.at + 5, "another wording", OPENED.alert)
    assert stable_event_id(again) == stable_event_id(OPENED)
    assert stable_event_id(TRANSIENT) == f"web:transient:{round(TRANSIENT.at * 1000)}"
    assert stable_event_id(Event("transient", "web", 1.0, "m", event_id="kept")) == "kept"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running(Receiver()) as rec:
        yield rec


async def test_every_channel_shows_the_event_id(receiver: Receiver) -> None:
    await WebhookSink(f"{receiver.url}/hook").deliver(OPENED)
    await SlackSink(Secret(f"{receiver.url}/slack")).deliver(OPENED)
    await PagerDutySink(Secret("k" * 32), url=f"{receiver.url}/pd").deliver(OPENED)
    hook, slack, pd = receiver.bodies()
    assert hook["event_id"] == "0190-alert:alert_opened"
    assert slack["text"].endswith("(event `0190-alert:alert_opened`)")
    assert pd["dedup_key"] == "0190-alert"  # PagerDuty's own key: one incident per alert
    assert pd["payload"]["custom_details"]["event_id"] == "0190-alert:alert_opened"
    mail = EmailSink("127.0.0.1", sender="p@ops.test", to=["o@ops.test"], tls="none")
    message = email.message_from_bytes(mail.message(RESOLVED).as_bytes())
    assert message["X-Probekit-Event-Id"] == "0190-alert:alert_resolved"


async def test_an_event_and_its_outbox_entries_are_one_transaction() -> None:
    store = control.Store(":memory:")
    try:
        sink = DurableSink(WebhookSink("http://127.0.0.1:9/hook", name="hook"))
        row = ("alert_opened", "web", OPENED.at, OPENED.message, "0190-alert", "monitor_down")
        opened = (OPENED.alert, None)
        assert OPENED.alert is not None
        dropped = await store.call(
            lambda c: db.record_event(c, row, opened, None, [sink.entry(OPENED)])
        )
        assert dropped == {}
        first = await store.call(lambda c: outbox.outbox_first(c, "hook"))
        assert first is not None
        assert json.loads(first[1])["event_id"] == "0190-alert:alert_opened"
        # an alert row that cannot be written: neither the event nor its entry is kept
        broken = (Alert("0191-alert", None, "web", 1.0, "m"), None)  # type: ignore[arg-type]
        row2 = ("alert_opened", "web", 1.0, "m", "0191-alert", None)
        entry = sink.entry(Event("alert_opened", "web", 1.0, "m", broken[0]))
        with pytest.raises(store.errors):
            await store.call(lambda c: db.record_event(c, row2, broken, None, [entry]))
        assert await store.call(lambda c: outbox.outbox_pending(c, "hook")) == 1
        events = await store.call(lambda c: c.execute("SELECT count(*) FROM events").fetchone())
        assert events[0] == 1
    finally:
        await store.close()


async def test_the_outbox_keeps_max_pending_in_the_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = control.Store(":memory:")
    try:
        sink = DurableSink(WebhookSink("http://127.0.0.1:9/hook", name="hook"), max_pending=2)
        sink.bind(store)
        for at in (1.0, 2.0, 3.0):
            await sink.send(Event("transient", "web", at, "m"))
        await sink.stop()  # (the worker was woken: nothing listens on port 9)
        assert (await sink.pending_events(), sink.dropped) == (2, 1)
        rows = await store.call(
            lambda c: c.execute("SELECT event_id FROM alert_outbox ORDER BY id").fetchall()
        )
        assert [r[0] for r in rows] == ["web:transient:2000", "web:transient:3000"]
        assert "dropped the oldest 1" in caplog.text
    finally:
        await store.close()


def _settings(path: Path) -> ControlSettings:
    # "office" never connects: after startup_grace its checkpoint_down alert opens
    return ControlSettings(
        tokens={"office": Secret(TOKEN)},
        db_path=str(path),
        heartbeat_interval=0.2,
        missed_heartbeats=1,
        startup_grace=0.3,
        tick_interval=0.05,
    )


class Stalling:
    """A webhook receiver that takes each POST in and answers nothing until released (or
    answers at once once it is): ``arrived`` and ``answered`` count event ids."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.bodies: list[Any] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                outer.arrived[body["event_id"]] += 1
                if not outer.release.wait(30):
                    return
                outer.answered[body["event_id"]] += 1
                outer.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Stalling:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


async def _until(predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - a counter kept by another thread
            await asyncio.sleep(0.02)


async def test_what_a_plane_committed_and_did_not_deliver_the_next_one_delivers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    with Stalling() as hook:
        # the first plane: the alert committed, its delivery under way and never answered
        sink = DurableSink(WebhookSink(hook.url, name="hook", timeout=60))
        async with ControlPlane(_settings(path), sinks=[sink]) as first:
            await _until(lambda: sum(hook.arrived.values()) >= 1, 20)
            alerts = await first._store.call(
                lambda c: c.execute("SELECT alert_id, kind FROM alerts").fetchall()
            )
            assert await sink.pending_events() == 1
        ((alert_id, kind),) = alerts
        assert kind == "checkpoint_down"
        event_id = f"{alert_id}:alert_opened"
        assert hook.answered == Counter()  # nothing delivered

        # the next plane on the database delivers it, with the same id
        hook.release.set()
        sink = DurableSink(WebhookSink(hook.url, name="hook"))
        async with ControlPlane(_settings(path), sinks=[sink]) as second:
            await sink.wait_idle(20)
            assert sink.delivered == 1
            assert [a.alert_id for a in second.logic.open_alerts()] == [alert_id]
        # the first attempt was answered too (released): a repeat, with the same id
        await _until(lambda: sum(hook.answered.values()) >= 2, 20)
    assert set(hook.arrived) == set(hook.answered) == {event_id}
    assert hook.arrived[event_id] == 2  # the stalled attempt, and the second plane's
    assert all(b["alert"]["alert_id"] == alert_id for b in hook.bodies)


@pytest.mark.sqlite_only
async def test_a_schema_3_database_gets_the_outbox(tmp_path: Path) -> None:
    import contextlib
    import sqlite3

    path = tmp_path / "c.db"
    async with ControlPlane(ControlSettings(tokens={"o": Secret(TOKEN)}, db_path=str(path))):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE alert_outbox")
        conn.execute("PRAGMA user_version=3")
        conn.commit()
    async with ControlPlane(ControlSettings(tokens={"o": Secret(TOKEN)}, db_path=str(path))):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION == 5
        assert conn.execute("SELECT count(*) FROM alert_outbox").fetchone() == (0,)
