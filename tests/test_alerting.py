"""Alert channels against real receivers on loopback: HTTP receivers that check the documented
payload shapes of Slack incoming webhooks, PagerDuty Events v2 and Alertmanager's v2 API,
aiosmtpd for e-mail; the durable outbox (retries with backoff, order, a restart); the
channels' config; re-notification through a control plane on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from probekit import DefinitionError, DefinitionErrors, EgressPolicy, FakeClock, Secret, Status
from probekit.alerting._sinks import ResultAlerts
from probekit.control import (
    AlertmanagerSink,
    ControlPlane,
    ControlSettings,
    DeliveryError,
    DurableSink,
    EmailSink,
    MemorySink,
    PagerDutySink,
    SlackSink,
    WebhookSink,
)
from probekit.control._config import load_control_config
from probekit.control._logic import Alert, ControlLogic, Event, MonitorSpec

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC).timestamp()
ALERT = Alert("0190-alert", "monitor_down", "web", T0, "web is down: failed on a, again on b")
OPENED = Event("alert_opened", "web", T0, ALERT.message, ALERT)
RESOLVED = Event("alert_resolved", "web", T0 + 60, "web is up again", ALERT)
TRANSIENT = Event("transient", "web", T0, "web: failed on a, passed on b")


class Receiver:
    """An HTTP server on 127.0.0.1 keeping every POST (path, headers, JSON body); it answers
    ``fail`` times with ``fail_status`` first."""

    def __init__(self, fail: int = 0, fail_status: int = 503) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.fail = fail
        self.fail_status = fail_status
        self.connections = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.connections += 1
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(receiver.fail_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.posts.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def bodies(self) -> list[Any]:
        return [body for _, _, body in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@contextlib.contextmanager
def running(rec: Receiver) -> Iterator[Receiver]:
    rec.thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


def _iso_utc(text: str) -> float:
    parsed = dt.datetime.fromisoformat(text)
    assert parsed.tzinfo is not None
    return parsed.timestamp()


# -- payload shapes -------------------------------------------------------------------------------


async def test_slack_posts_a_text_message_and_never_logs_its_secret_url(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = Secret(f"{receiver.url}/services/T000/B000/XXXXSECRETXXXX")
    sink = SlackSink(url)
    await sink.deliver(OPENED)
    await sink.deliver(RESOLVED)
    await sink.deliver(TRANSIENT)  # not an alert event: not sent by default
    assert [path for path, _, _ in receiver.posts] == ["/services/T000/B000/XXXXSECRETXXXX"] * 2
    opened, resolved = receiver.bodies()
    # Slack's documented minimum: a JSON object with a "text" string (mrkdwn).
    assert set(opened) == {"text"} and isinstance(opened["text"], str)
    assert "FIRING" in opened["text"] and "web is down" in opened["text"]
    assert "RESOLVED" in resolved["text"]
    receiver.fail = 1
    with caplog.at_level(logging.WARNING, logger="probekit.control"):
        await sink.send(OPENED)  # a failure is logged, with only the host of the URL
    assert any("slack http://127.0.0.1" in r.getMessage() for r in caplog.records)
    assert "XXXXSECRETXXXX" not in caplog.text
    assert "XXXXSECRETXXXX" not in sink.url + sink.name + repr(sink)


async def test_pagerduty_triggers_and_resolves_with_the_alert_id_as_dedup_key(
    receiver: Receiver,
) -> None:
    key = Secret("R0UTINGKEY0123456789012345678901")
    sink = PagerDutySink(key, url=f"{receiver.url}/v2/enqueue", source="control-1")
    await sink.deliver(OPENED)
    await sink.deliver(RESOLVED)
    trigger, resolve = receiver.bodies()
    # Events API v2: routing_key, event_action, dedup_key; a trigger carries payload.summary,
    # .source and .severity (critical|error|warning|info), an optional ISO 8601 timestamp.
    assert trigger["routing_key"] == key.reveal()
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == ALERT.alert_id
    payload = trigger["payload"]
    assert payload["summary"] == ALERT.message
    assert payload["source"] == "control-1"
    assert payload["severity"] in ("critical", "error", "warning", "info")
    assert _iso_utc(payload["timestamp"]) == T0
    assert payload["component"] == "web" and payload["class"] == "monitor_down"
    assert resolve == {
        "routing_key": key.reveal(),
        "event_action": "resolve",
        "dedup_key": ALERT.alert_id,
    }
    assert "R0UTINGKEY" not in repr(sink.routing_key)


def test_pagerduty_refuses_an_unknown_severity_and_a_missing_key() -> None:
    with pytest.raises(Exception, match="severity"):
        PagerDutySink(Secret("k"), severity="fatal")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="routing_key"):
        PagerDutySink(Secret(""))


async def test_alertmanager_posts_v2_alerts_and_resolves_by_ends_at(receiver: Receiver) -> None:
    sink = AlertmanagerSink(
        receiver.url, labels={"team": "platform"}, generator_url="https://status.test/web"
    )
    await sink.deliver(OPENED)
    await sink.deliver(RESOLVED)
    (path1, headers, firing), (path2, _, resolved) = receiver.posts
    assert path1 == path2 == "/api/v2/alerts"
    assert headers["Content-Type"] == "application/json"
    # postableAlerts: a list of {labels, annotations, startsAt, endsAt, generatorURL}.
    assert isinstance(firing, list) and len(firing) == 1
    (alert,) = firing
    assert alert["labels"] == {
        "team": "platform",
        "alertname": "monitor_down",
        "subject": "web",
        "source": "probekit",
    }
    assert alert["annotations"] == {"summary": ALERT.message, "alert_id": ALERT.alert_id}
    assert _iso_utc(alert["startsAt"]) == T0
    assert "endsAt" not in alert
    assert alert["generatorURL"] == "https://status.test/web"
    (closing,) = resolved
    assert closing["labels"] == alert["labels"]  # the same alert, by its labels
    assert _iso_utc(closing["endsAt"]) == T0 + 60
    assert sink.renotify == 60.0  # kept firing below Alertmanager's resolve_timeout


async def test_webhook_posts_the_event_and_a_non_2xx_answer_is_a_delivery_error(
    receiver: Receiver,
) -> None:
    sink = WebhookSink(f"{receiver.url}/hook", headers={"X-Team": "platform"})
    await sink.deliver(OPENED)
    ((path, headers, body),) = receiver.posts
    assert path == "/hook" and headers["X-Team"] == "platform"
    assert body["kind"] == "alert_opened" and body["alert"]["alert_id"] == ALERT.alert_id
    receiver.fail, receiver.fail_status = 1, 500
    with pytest.raises(DeliveryError, match="DOWN"):
        await sink.deliver(RESOLVED)


async def test_a_receiver_the_policy_denies_is_never_dialled(receiver: Receiver) -> None:
    policy = EgressPolicy(deny=["127.0.0.0/8"])
    sinks: list[Any] = [
        WebhookSink(receiver.url, policy=policy),
        SlackSink(Secret(f"{receiver.url}/x"), policy=policy),
        PagerDutySink(Secret("k"), url=receiver.url, policy=policy),
        AlertmanagerSink(receiver.url, policy=policy),
    ]
    for sink in sinks:
        with pytest.raises(DeliveryError, match="policy_denied"):
            await sink.deliver(OPENED)
    mail = EmailSink(
        "127.0.0.1",
        port=receiver.port,
        sender="a@b.test",
        to=["c@d.test"],
        tls="none",
        policy=policy,
    )
    with pytest.raises(DeliveryError, match="denied"):
        await mail.deliver(OPENED)
    assert receiver.connections == 0


# -- e-mail ---------------------------------------------------------------------------------------


class MailBox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((envelope.mail_from or "", list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@contextlib.asynccontextmanager
async def smtp_server(box: MailBox, **options: Any) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    sessions: list[AiosmtpdSMTP] = []

    def factory() -> AiosmtpdSMTP:
        sessions.append(AiosmtpdSMTP(box, hostname="mail.test", **options))
        return sessions[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)


async def test_email_sends_one_mail_per_alert_event_over_smtp() -> None:
    box = MailBox()
    async with smtp_server(box) as port:
        sink = EmailSink(
            "127.0.0.1",
            port=port,
            tls="none",
            sender="probekit@ops.test",
            to=["oncall@ops.test", "lead@ops.test"],
        )
        await sink.deliver(OPENED)
        await sink.deliver(TRANSIENT)  # not an alert event
        await sink.deliver(
            attrs_evolve(RESOLVED, message=".a line starting with a dot\nand another")
        )
    assert len(box.messages) == 2
    sender, rcpts, data = box.messages[0]
    assert sender == "probekit@ops.test"
    assert rcpts == ["oncall@ops.test", "lead@ops.test"]
    mail = message_from_bytes(data)
    assert mail["Subject"] == "[probekit] FIRING monitor_down web"
    assert mail["To"] == "oncall@ops.test, lead@ops.test"
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert ALERT.message.encode() in body and ALERT.alert_id.encode() in body
    resolved = message_from_bytes(box.messages[1][2])
    assert resolved["Subject"] == "[probekit] RESOLVED monitor_down web"
    text = resolved.get_payload(decode=True)
    assert isinstance(text, bytes) and text.startswith(
        b".a line starting with a dot\r\nand another"
    )


def attrs_evolve(event: Event, **changes: Any) -> Event:
    import attrs

    return attrs.evolve(event, **changes)


async def test_email_refuses_starttls_missing_and_reports_a_refused_recipient() -> None:
    box = MailBox()
    async with smtp_server(box) as port:
        sink = EmailSink("127.0.0.1", port=port, sender="p@ops.test", to=["o@ops.test"])
        with pytest.raises(DeliveryError, match="no STARTTLS offered"):
            await sink.deliver(OPENED)
    assert box.messages == []


def test_email_definition_errors() -> None:
    with pytest.raises(Exception, match="without TLS"):
        EmailSink("h", sender="a@b", to=["c@d"], tls="none", username="u", password=Secret("p"))
    with pytest.raises(Exception, match="e-mail address"):
        EmailSink("h", sender="a@b", to=["c@d\r\nRCPT TO:<x@y>"])
    with pytest.raises(Exception, match="at least one recipient"):
        EmailSink("h", sender="a@b", to=[])


# -- the durable outbox ---------------------------------------------------------------------------


async def test_outbox_retries_with_backoff_and_keeps_the_order() -> None:
    rec = Receiver(fail=3)
    with running(rec):
        sink = DurableSink(WebhookSink(rec.url), backoff=0.01, max_backoff=0.05)
        await sink.send(OPENED)
        await sink.send(RESOLVED)
        await sink.wait_idle(20)
        await sink.aclose()
    assert [b["kind"] for b in rec.bodies()] == ["alert_opened", "alert_resolved"]
    assert (sink.retries, sink.delivered, sink.dropped) == (3, 2, 0)


async def test_outbox_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    down = Receiver(fail=10**6)
    with running(down):
        first = DurableSink(WebhookSink(down.url, name="hook"), path, backoff=0.01)
        await first.send(OPENED)
        await first.send(RESOLVED)
        while first.retries < 2:  # noqa: ASYNC110 - it tried, and failed (a counter)
            await asyncio.sleep(0.01)
        await first.aclose()
    assert down.posts == []
    up = Receiver()
    with running(up):
        second = DurableSink(WebhookSink(up.url, name="hook"), path, backoff=0.01)
        assert second.pending() == 2
        second.start()  # what a control plane does at start
        await second.wait_idle(20)
        await second.aclose()
    assert [b["kind"] for b in up.bodies()] == ["alert_opened", "alert_resolved"]


async def test_outbox_drops_and_logs_after_max_attempts(caplog: pytest.LogCaptureFixture) -> None:
    rec = Receiver(fail=10**6)
    with running(rec), caplog.at_level(logging.ERROR, logger="probekit.control"):
        sink = DurableSink(WebhookSink(rec.url), backoff=0.01, max_attempts=3)
        await sink.send(OPENED)
        await sink.wait_idle(20)
        await sink.aclose()
    assert (sink.dropped, sink.retries) == (1, 2)
    assert any(
        "dropping alert_opened web after 3 attempts" in r.getMessage() for r in caplog.records
    )


async def test_outbox_is_bounded_dropping_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    rec = Receiver(fail=10**6)
    with running(rec), caplog.at_level(logging.ERROR, logger="probekit.control"):
        sink = DurableSink(WebhookSink(rec.url), backoff=60, max_pending=2)
        for at in (1.0, 2.0, 3.0):
            await sink.send(attrs_evolve(TRANSIENT, at=at))
        assert (sink.pending(), sink.dropped) == (2, 1)
        rows = sink._db.execute("SELECT event FROM outbox ORDER BY id").fetchall()
        assert [json.loads(r[0])["at"] for r in rows] == [2.0, 3.0]
        await sink.aclose()
    assert "holds 2 events; dropped the oldest 1" in caplog.text


# -- config ---------------------------------------------------------------------------------------

CONFIG = """
[control]
port = 0
db = "{db}"

[[checkpoints]]
id = "office"
token = {{ env = "T_TOKEN" }}

[[monitors]]
id = "web"
checkpoint = "office"
kind = "http"
url = "http://127.0.0.1:1/"
labels = {{ team = "web" }}
"""


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "control.toml"
    path.write_text(CONFIG.format(db=tmp_path / "c.db") + extra)
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", "a-token-of-enough-length-0123456789")
    monkeypatch.setenv("T_SLACK", "https://hooks.slack.com/services/T0/B0/secret")
    monkeypatch.setenv("T_PD", "0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("T_MAIL", "mail-password")


def test_config_builds_every_channel_behind_the_outbox(tmp_path: Path, env: None) -> None:
    path = _write(
        tmp_path,
        """
[[channels]]
type = "webhook"
url = "https://hooks.test/probekit"
headers = { Authorization = { env = "T_PD" } }

[[channels]]
type = "slack"
url = { env = "T_SLACK" }
renotify = 3600

[[channels]]
type = "pagerduty"
routing_key = { env = "T_PD" }
severity = "error"

[[channels]]
name = "am"
type = "alertmanager"
url = "http://127.0.0.1:9093"
labels = { env = "prod" }
backoff = 2
max_attempts = 5

[[channels]]
type = "email"
host = "smtp.test"
port = 587
username = "probekit"
password = { env = "T_MAIL" }
from = "probekit@ops.test"
to = ["oncall@ops.test"]
""",
    )
    config = load_control_config(path)
    kinds = [type(c.channel).__name__ for c in config.channels]
    assert kinds == ["WebhookSink", "SlackSink", "PagerDutySink", "AlertmanagerSink", "EmailSink"]
    assert [c.name for c in config.channels] == [
        "webhook-0",
        "slack-1",
        "pagerduty-2",
        "am",
        "email-4",
    ]
    assert {c.path for c in config.channels} == {f"{tmp_path / 'c.db'}-outbox"}
    assert config.channels[1].renotify == 3600 and config.channels[3].renotify == 60
    assert (config.channels[3].backoff, config.channels[3].max_attempts) == (2.0, 5)
    assert config.labels == {"web": {"team": "web"}}
    assert "labels" not in config.monitors[0].definition  # not sent to the checkpoint
    slack = config.channels[1]
    assert not any("secret" in text for text in (slack.name, repr(slack), repr(slack.channel)))


def test_config_rejects_bad_channels_with_their_paths(tmp_path: Path, env: None) -> None:
    path = _write(
        tmp_path,
        """
[[channels]]
type = "sms"

[[channels]]
type = "slack"
url = "https://hooks.slack.com/services/inline"

[[channels]]
type = "pagerduty"

[[channels]]
type = "email"
host = "smtp.test"
from = "p@ops.test"
to = ["o@ops.test"]
tls = "none"
username = "u"
password = { env = "T_MAIL" }
colour = "red"

[[channels]]
type = "webhook"
url = "https://x.test/"
renotify = -1
kinds = ["alert_opened", "alert_opend"]
""",
    )
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(path)
    text = str(info.value)
    for expected in (
        "channels[0].type: required, one of webhook",
        "channels[1].url: a credential: read it from",
        "channels[2].routing_key: required",
        "channels[3].colour: unknown field",
        "channels[4].renotify:",
        "channels[4].kinds: expected a list of event kinds: alert_opened, alert_resolved",
    ):
        assert expected in text, expected
    path.write_text(
        CONFIG.format(db=tmp_path / "c.db")
        + '[[channels]]\ntype = "email"\nhost = "h"\nfrom = "a@b"\nto = ["c@d"]\n'
        + 'tls = "none"\nusername = "u"\npassword = { env = "T_MAIL" }\n'
    )
    with pytest.raises(DefinitionErrors) as info2:
        load_control_config(path)
    assert "channels[0].tls: a password is not sent without TLS" in str(info2.value)


# -- re-notification through the control plane -----------------------------------------------


class Repeating(MemorySink):
    renotify = 300.0


async def test_an_open_alert_is_sent_again_every_renotify_interval() -> None:
    clock = FakeClock()
    every, once = Repeating(), MemorySink()
    plane = ControlPlane(
        ControlSettings(tokens={"office": Secret("t" * 32)}), sinks=[every, once], clock=clock
    )
    spec = MonitorSpec("web", "office", 30.0, {"kind": "http", "url": "http://127.0.0.1:1/"})
    plane.logic.upsert_monitor(spec)
    plane._specs["web"] = spec
    mon = plane.logic.monitors["web"]
    alert = Alert("a1", "monitor_down", "web", clock.now().timestamp(), "web is down")
    mon.alert = alert
    await plane.alerting_tick()  # first sight: counts as notified now
    clock.advance(299)
    await plane.alerting_tick()
    assert every.events == []
    clock.advance(1)
    await plane.alerting_tick()
    clock.advance(300)
    await plane.alerting_tick()
    assert [e.kind for e in every.events] == ["alert_repeated", "alert_repeated"]
    assert every.events[0].alert == alert and "still open since" in every.events[0].message
    assert once.events == []  # no renotify interval: never repeated
    mon.alert = None  # resolved: no more repeats
    clock.advance(1000)
    await plane.alerting_tick()
    assert len(every.events) == 2
    await plane.stop()


# -- e-mail over TLS --------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, str(ca_file)


def _login(logins: list[tuple[bytes, bytes]]) -> Any:
    def authenticator(
        server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"mail-password", handled=False)

    return authenticator


async def test_email_upgrades_with_starttls_and_logs_in(
    tls_files: tuple[ssl.SSLContext, str],
) -> None:
    server_tls, ca_file = tls_files
    box, logins = MailBox(), []
    options = {"tls_context": server_tls, "require_starttls": True, "authenticator": _login(logins)}
    async with smtp_server(box, **options) as port:
        sink = EmailSink(
            "127.0.0.1",
            port=port,
            ca_file=ca_file,
            username="probekit",
            password=Secret("mail-password"),
            sender="probekit@ops.test",
            to=["oncall@ops.test"],
        )
        await sink.deliver(OPENED)
        wrong = EmailSink(
            "127.0.0.1",
            port=port,
            ca_file=ca_file,
            username="probekit",
            password=Secret("wrong-password"),
            sender="probekit@ops.test",
            to=["oncall@ops.test"],
        )
        with pytest.raises(DeliveryError, match=r"AUTH PLAIN \.\.\.: 535") as info:
            await wrong.deliver(OPENED)
        assert "wrong-password" not in str(info.value)
    assert logins == [(b"probekit", b"mail-password"), (b"probekit", b"wrong-password")]
    assert len(box.messages) == 1


async def test_email_over_implicit_tls_checks_the_certificate(
    tls_files: tuple[ssl.SSLContext, str],
) -> None:
    server_tls, ca_file = tls_files
    box = MailBox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AiosmtpdSMTP(box, hostname="mail.test"), "127.0.0.1", 0, ssl=server_tls
    )
    port = server.sockets[0].getsockname()[1]
    try:
        sink = EmailSink(
            "127.0.0.1", port=port, tls="tls", ca_file=ca_file, sender="p@o.test", to=["o@o.test"]
        )
        await sink.deliver(OPENED)
        untrusted = EmailSink("127.0.0.1", port=port, tls="tls", sender="p@o.test", to=["o@o.test"])
        with pytest.raises(DeliveryError, match="certificate"):
            await untrusted.deliver(OPENED)
    finally:
        server.close()
    assert len(box.messages) == 1


async def test_a_webhooks_entry_is_a_webhook_channel_behind_an_outbox(tmp_path: Path) -> None:
    """``[[webhooks]]`` (the first alert channel of the control plane's file) is retried like a
    ``[[channels]]`` webhook: a receiver failing twice still gets the event, once, in order."""
    rec = Receiver(fail=2)
    with running(rec):
        path = tmp_path / "control.toml"
        path.write_text(
            '[control]\nport = 0\ndb = "control.db"\n\n'
            '[[checkpoints]]\nid = "office"\ntoken = "' + "t" * 32 + '"\n\n'
            '[[monitors]]\nid = "web"\ncheckpoint = "office"\nkind = "tcp"\nhost = "h"\n'
            "port = 1\n\n"
            f'[[webhooks]]\nurl = "{rec.url}"\ntimeout = 2\n'
        )
        config = load_control_config(path, warn=lambda _: None)
        (hook,) = config.webhooks
        assert isinstance(hook, DurableSink) and hook.name == "webhooks[0]"
        assert isinstance(hook.channel, WebhookSink)
        await hook.send(OPENED)  # returns at once: the outbox has it
        await hook.send(RESOLVED)
        await hook.wait_idle(20)
        await hook.aclose()
    assert [b["kind"] for b in rec.bodies()] == ["alert_opened", "alert_resolved"]
    assert (hook.retries, hook.delivered) == (2, 2)


# -- the control plane starts and stops its channels ------------------------------------------


async def test_a_control_plane_delivers_what_its_outbox_held_when_it_starts(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "outbox.db")
    down = Receiver(fail=10**6)
    with running(down):
        first = DurableSink(WebhookSink(down.url, name="hook"), path, backoff=0.01)
        await first.send(OPENED)
        while first.retries < 1:  # noqa: ASYNC110 - it tried, and failed (a counter)
            await asyncio.sleep(0.01)
        await first.aclose()
    up = Receiver()
    with running(up):
        sink = DurableSink(WebhookSink(up.url, name="hook"), path, backoff=0.01)
        settings = ControlSettings(tokens={"office": Secret("t" * 32)})
        async with ControlPlane(settings, sinks=[sink]):
            await sink.wait_idle(20)
        assert sink._worker is None  # stopped with the plane
    assert [b["kind"] for b in up.bodies()] == ["alert_opened"]


# -- the confirmation policy and flap thresholds ----------------------------------------------


def _logic(**options: Any) -> ControlLogic:
    logic = ControlLogic(FakeClock(), rng=random.Random(7), **options)
    logic.configure_checkpoints(["office"])
    logic.upsert_monitor(MonitorSpec("web", "office", 30.0, {"kind": "tcp"}))
    for name in ("i1", "i2", "i3"):
        logic.instance_connected(name, "office")
    return logic


def _fail_until_alert(logic: ControlLogic) -> tuple[list[str], list[Event]]:
    """A DOWN result on i1, then every confirm run answered DOWN: the instances the confirm runs
    went to, and the events."""
    actions = logic.on_result("web", "i1", None, "scheduled", Status.DOWN)
    events, targets = list(actions.events), []
    while actions.runs:
        (order,) = actions.runs
        targets.append(order.instance_id)
        actions = logic.on_result(
            "web", order.instance_id, order.request_id, "confirm", Status.DOWN
        )
        events.extend(actions.events)
    return targets, events


@pytest.mark.parametrize("confirmations", [0, 1, 2, 3])
def test_confirmations_failures_on_other_instances_open_the_alert(confirmations: int) -> None:
    logic = _logic(confirmations=confirmations)
    targets, events = _fail_until_alert(logic)
    assert [e.kind for e in events] == ["unconfirmed"] * confirmations + ["alert_opened"]
    if confirmations <= 2:  # three instances: each confirm on one that has not failed yet
        assert len(set(targets)) == len(targets) and "i1" not in targets
    assert len(targets) == confirmations
    opened = events[-1].message
    if confirmations == 0:
        assert opened == "web is down: failed on i1 (no confirmation asked)"
    else:
        assert opened.startswith("web is down: failed on i1, again on ")


def test_a_pass_during_the_confirmations_is_a_transient() -> None:
    logic = _logic(confirmations=2)
    actions = logic.on_result("web", "i1", None, "scheduled", Status.DOWN)
    (order,) = actions.runs
    actions = logic.on_result("web", order.instance_id, order.request_id, "confirm", Status.DOWN)
    (order,) = actions.runs
    actions = logic.on_result("web", order.instance_id, order.request_id, "confirm", Status.UP)
    assert [e.kind for e in actions.events] == ["transient"] and not actions.runs
    assert logic.open_alerts() == []


@pytest.mark.parametrize(
    ("options", "flaps"),
    [({}, True), ({"flap_high": 70.0}, False), ({"flap_window": 5}, True)],
)
def test_flap_thresholds_are_tunable(options: dict[str, Any], flaps: bool) -> None:
    logic = _logic(confirmations=0, **options)
    window = options.get("flap_window", 21)
    for i in range(window):  # up, down, down, up, ...: about 65 % state change
        status = Status.UP if i % 3 == 0 else Status.DOWN
        logic.on_result("web", "i1", None, "scheduled", status)
    flapping = [a for a in logic.open_alerts() if a.kind == "flapping"]
    assert bool(flapping) is flaps


def test_control_settings_and_config_take_the_policy(tmp_path: Path, env: None) -> None:
    with pytest.raises(DefinitionError, match="flap_low"):
        ControlSettings(tokens={"o": Secret("t" * 32)}, flap_low=60.0)
    with pytest.raises(DefinitionError, match="confirmations"):
        ControlSettings(tokens={"o": Secret("t" * 32)}, confirmations=-1)
    path = tmp_path / "control.toml"
    path.write_text(
        CONFIG.format(db=tmp_path / "c.db").replace(
            'db = "', 'confirmations = 2\nflap_window = 11\nflap_high = 60\nflap_low = 30\ndb = "'
        )
    )
    settings = load_control_config(path).settings
    assert (settings.confirmations, settings.flap_window) == (2, 11)
    assert (settings.flap_high, settings.flap_low) == (60.0, 30.0)
    plane = ControlPlane(settings)
    assert (plane.logic.confirmations, plane.logic.flap_window) == (2, 11)
    path.write_text(CONFIG.format(db=tmp_path / "c.db").replace('db = "', 'flap_low = 70\ndb = "'))
    with pytest.raises(DefinitionErrors, match=r"control\.flap_low: must not be above flap_high"):
        load_control_config(path)


# -- probekit control, end to end -------------------------------------------------------------


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_probekit_control_sends_to_its_channels_and_a_reload_adds_one(
    tmp_path: Path,
) -> None:
    first, second = Receiver(), Receiver()
    base = (
        CONFIG.format(db=tmp_path / "c.db").replace(
            'db = "',
            "heartbeat_interval = 0.2\nmissed_heartbeats = 1\nstartup_grace = 0.3\n"
            'tick_interval = 0.05\ndb = "',
        )
        + f'\n[[channels]]\nname = "hook"\ntype = "webhook"\nurl = "{first.url}/a"\n'
    )
    path = tmp_path / "control.toml"
    path.write_text(base)
    env = {**os.environ, "T_TOKEN": "a-token-of-enough-length-0123456789"}
    with running(first), running(second):
        proc = subprocess.Popen(
            [sys.executable, "-m", "probekit", "control", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            # "office" never connects: its checkpoint_down alert goes through the outbox
            _wait(lambda: first.posts, 30, "the checkpoint_down alert")
            (body,) = first.bodies()
            assert body["kind"] == "alert_opened"
            assert body["alert"]["kind"] == "checkpoint_down" and body["subject"] == "office"
            path.write_text(
                base
                + f'\n[[channels]]\nname = "am"\ntype = "alertmanager"\nurl = "{second.url}"\n'
                + "renotify = 0.3\n"
            )
            proc.send_signal(signal.SIGHUP)
            # the new channel repeats the open alert once its renotify interval has passed
            _wait(lambda: second.posts, 30, "the repeated alert")
            (alert,) = second.bodies()[0]
            assert alert["labels"]["alertname"] == "checkpoint_down" and "endsAt" not in alert
            assert len(first.posts) == 1  # nothing sent twice to the first one
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            assert "reloaded" in out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


# -- probekit run -----------------------------------------------------------------------------


async def test_result_alerts_open_after_failures_in_a_row_and_resolve() -> None:
    clock = FakeClock()
    sink, repeating = MemorySink(), Repeating()
    alerts = ResultAlerts([sink, repeating], failures=3, clock=clock)
    for status in (Status.DOWN, Status.DOWN, Status.UP, Status.DOWN, Status.DOWN):
        await alerts.observe("web", status, "connect: refused")
    assert sink.events == []  # never three in a row
    await alerts.observe("web", Status.DOWN, "connect: refused")
    await alerts.observe("web", Status.DOWN)
    (opened,) = sink.events
    assert opened.kind == "alert_opened"
    assert opened.message == "web is down: failed 3 times in a row: connect: refused"
    await alerts.tick()
    clock.advance(300)
    await alerts.tick()
    assert [e.kind for e in repeating.events] == ["alert_opened", "alert_repeated"]
    await alerts.observe("web", Status.DEGRADED)  # not DOWN: resolves
    assert [e.kind for e in sink.events] == ["alert_opened", "alert_resolved"]
    assert sink.events[1].alert == opened.alert
    with pytest.raises(DefinitionError, match="failures"):
        ResultAlerts([], failures=0)


def test_probekit_run_sends_alerts_to_the_channels_of_its_config(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the monitor is DOWN
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    rec = Receiver()
    config = tmp_path / "monitors.toml"
    config.write_text(
        f"""
[secrets]
hook = {{ env = "T_HOOK" }}

[alerting]
failures = 2
outbox = "{tmp_path / "outbox.db"}"

[[channels]]
type = "webhook"
url = "{rec.url}/hook"
headers = {{ Authorization = {{ env = "T_HOOK" }} }}

[[channels]]
type = "pagerduty"
url = "{rec.url}/pd"
routing_key = {{ secret = "hook" }}

[[monitors]]
id = "closed"
kind = "tcp"
host = "127.0.0.1"
port = {port}
interval = 0.2
"""
    )
    env = {**os.environ, "T_HOOK": "Bearer hook-secret-0123456789"}
    with running(rec):
        proc = subprocess.run(
            [sys.executable, "-m", "probekit", "run", str(config), "--duration", "2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert "closed DOWN" in proc.stdout
    by_path = {path: (headers, body) for path, headers, body in rec.posts}
    headers, hook = by_path["/hook"]
    assert hook["kind"] == "alert_opened" and hook["subject"] == "closed"
    assert hook["message"].startswith("closed is down: failed 2 times in a row: connect")
    assert headers["Authorization"] == "Bearer hook-secret-0123456789"
    _, pd = by_path["/pd"]
    assert pd["event_action"] == "trigger" and pd["routing_key"] == env["T_HOOK"]
    assert len(rec.posts) == 2  # opened once, never resolved (the port stays closed)
    assert "hook-secret" not in proc.stdout + proc.stderr


def test_run_config_errors_in_channels_have_their_paths(tmp_path: Path) -> None:
    from probekit import load_config

    config = tmp_path / "monitors.toml"
    config.write_text(
        """
[alerting]
failures = 0
colour = "red"

[[channels]]
type = "pagerduty"
routing_key = { secret = "missing" }

[[monitors]]
id = "m"
kind = "tcp"
host = "127.0.0.1"
port = 1
"""
    )
    with pytest.raises(DefinitionErrors) as info:
        load_config(config)
    text = str(info.value)
    for expected in (
        "alerting.failures: expected an integer >= 1",
        "alerting.colour: unknown field",
        "channels[0].routing_key.secret: no [secrets] entry named 'missing'",
    ):
        assert expected in text, expected
