"""probekit's Alertmanager channel against Debian's prometheus-alertmanager (v2 API) on loopback:
an alert posted by AlertmanagerSink (behind the durable outbox) is active in Alertmanager and
routed to its webhook receiver as ``firing``; the resolution (``endsAt``) reaches the receiver
as ``resolved`` and leaves no active alert; a silence made in Alertmanager suppresses a
probekit alert (silences are Alertmanager's). One agreement row: Alertmanager's readiness
endpoint through probekit's HTTP probe beside check_http.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import Daemon, run_plugin
from probekit import HttpProbe
from probekit.control import AlertmanagerSink, DurableSink
from probekit.control._logic import Alert, Event


class Notifications:
    """Alertmanager's webhook receiver: keeps every notification it posts."""

    def __init__(self, port: int) -> None:
        self.items: list[dict[str, Any]] = []
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                box.items.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, status: str, subject: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.items:
                for alert in item.get("alerts", []):
                    if alert["status"] == status and alert["labels"].get("subject") == subject:
                        return alert
            time.sleep(0.1)
        raise TimeoutError(f"no {status} notification for {subject}: {self.items}")


@pytest.fixture(scope="module")
def alertmanager(start_daemon: Any) -> Iterator[tuple[Daemon, Notifications]]:
    daemon = start_daemon("alertmanager")
    notifications = Notifications(daemon.port("RECEIVER_PORT"))
    yield daemon, notifications
    notifications.server.shutdown()
    notifications.server.server_close()


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def _post(port: int, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http to loopback
        return json.loads(response.read() or b"null")


def _active(port: int, subject: str) -> list[dict[str, Any]]:
    return [a for a in _get(port, "/api/v2/alerts") if a["labels"].get("subject") == subject]


def _events(subject: str) -> tuple[Event, Event]:
    now = time.time()
    alert = Alert(f"alert-{subject}", "monitor_down", subject, now - 1, f"{subject} is down")
    return (
        Event("alert_opened", subject, now - 1, alert.message, alert),
        Event("alert_resolved", subject, now, f"{subject} is up again", alert),
    )


def test_an_alert_arrives_fires_and_resolves(
    alertmanager: tuple[Daemon, Notifications], agreement: Any
) -> None:
    daemon, notifications = alertmanager
    port = daemon.port("PORT")
    opened, resolved = _events("web")

    async def deliver(event: Event) -> None:
        sink = DurableSink(
            AlertmanagerSink(
                f"http://127.0.0.1:{port}",
                labels={"team": "platform"},
                generator_url="http://127.0.0.1/status/web",
            ),
            backoff=0.1,
        )
        await sink.send(event)
        await sink.wait_idle(30)
        await sink.aclose()
        assert (sink.delivered, sink.dropped) == (1, 0)

    asyncio.run(deliver(opened))
    (active,) = _active(port, "web")
    assert active["labels"] == {
        "alertname": "monitor_down",
        "subject": "web",
        "source": "probekit",
        "team": "platform",
    }
    assert active["annotations"]["summary"] == "web is down"
    assert active["status"]["state"] == "active"
    assert active["generatorURL"] == "http://127.0.0.1/status/web"
    starts = dt.datetime.fromisoformat(active["startsAt"].replace("Z", "+00:00")).timestamp()
    assert abs(starts - opened.at) < 0.01
    firing = notifications.wait_for("firing", "web")
    assert firing["annotations"]["alert_id"] == "alert-web"

    asyncio.run(deliver(resolved))
    notifications.wait_for("resolved", "web")
    assert _active(port, "web") == []

    check = asyncio.run(HttpProbe(f"http://127.0.0.1:{port}/-/ready").check())
    plugin = run_plugin("check_http", "-H", "127.0.0.1", "-p", str(port), "-u", "/-/ready")
    agreement.record("alertmanager", "/-/ready", "UP", check, plugin)
    assert check.status.name == "UP" and plugin.code == 0


def test_a_silence_in_alertmanager_suppresses_a_probekit_alert(
    alertmanager: tuple[Daemon, Notifications],
) -> None:
    daemon, _ = alertmanager
    port = daemon.port("PORT")
    now = dt.datetime.now(dt.UTC)
    _post(
        port,
        "/api/v2/silences",
        {
            "matchers": [{"name": "subject", "value": "mail", "isRegex": False, "isEqual": True}],
            "startsAt": now.isoformat(),
            "endsAt": (now + dt.timedelta(hours=1)).isoformat(),
            "createdBy": "probekit interop",
            "comment": "maintenance",
        },
    )
    opened, resolved = _events("mail")
    asyncio.run(AlertmanagerSink(f"http://127.0.0.1:{port}").deliver(opened))
    (alert,) = _active(port, "mail")
    assert alert["status"]["state"] == "suppressed"
    assert alert["status"]["silencedBy"]
    asyncio.run(AlertmanagerSink(f"http://127.0.0.1:{port}").deliver(resolved))
    assert _active(port, "mail") == []
