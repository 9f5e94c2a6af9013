"""Alert sinks: where the control plane's events go.

A sink is anything with ``async send(event)`` (:class:`AlertSink`). The channels here also have
``async deliver(event)``, which raises :class:`DeliveryError` when the receiver did not take the
event; their ``send`` is ``deliver`` with the failure logged. Every channel dials through the
dial path under an :class:`~probekit.EgressPolicy` (the HTTP channels with probekit's own HTTP
probe, e-mail with a small SMTP sender on a :class:`~probekit._dial.Dialer` connection), so a
denied receiver is never dialled.

- :class:`WebhookSink`: the event as JSON (:func:`event_to_dict`, with its ``event_id``).
- :class:`SlackSink`: a Slack incoming webhook (``{"text": ...}``, ending with the event id).
- :class:`PagerDutySink`: PagerDuty Events API v2 (``trigger``/``resolve`` keyed by alert id).
- :class:`AlertmanagerSink`: Alertmanager's v2 API (``POST /api/v2/alerts``; resolved by
  ``endsAt``).
- :class:`EmailSink`: one mail per event over SMTP (STARTTLS or implicit TLS, AUTH PLAIN).

:class:`DurableSink` wraps a channel with an outbox (a SQLite file of its own, or, given to a
control plane, the control plane's database, written in the transaction that records the event):
``send`` writes the event to the outbox and returns; a worker delivers in order, retrying with
exponential backoff, and what is not delivered when the process stops is delivered after it (or
the control plane that takes over) starts: at least once, each event with its stable id.
:class:`Renotifier` says which open alerts are due to be sent again to the sinks with a
``renotify`` interval.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import math
import os
import sqlite3
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final, Literal, Protocol

import attrs

from .._clock import Clock, SystemClock
from .._context import ProbeContext
from .._dial import Dialer
from .._exceptions import DefinitionError, PolicyError, ProbeFailure
from .._policy import EgressPolicy
from .._result import Status
from .._secret import Secret
from .._serialization import converter
from .._timeline import Timeline
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._events import Alert, Event, stable_event_id, with_event_id

__all__ = [
    "AlertSink",
    "AlertmanagerSink",
    "DeliveryError",
    "DurableSink",
    "EmailSink",
    "LogSink",
    "MemorySink",
    "PagerDutySink",
    "Renotifier",
    "ResultAlerts",
    "SlackSink",
    "WebhookSink",
    "event_to_dict",
]

log = logging.getLogger("probekit.control")

#: The events that open or repeat an alert, and the one that closes it.
OPENING: Final = frozenset({"alert_opened", "kind_unavailable", "alert_repeated"})
RESOLVING: Final = frozenset({"alert_resolved"})


class AlertSink(Protocol):
    """Receives alert events (opened, resolved, transient, instance up/down)."""

    async def send(self, event: Event) -> None: ...


class DeliveryError(Exception):
    """A channel could not hand an event to its receiver (the message says why, without
    secrets)."""


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON form of an event (what :class:`WebhookSink` posts), its ``event_id`` set."""
    data: dict[str, Any] = converter.unstructure(with_event_id(event))
    return data


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds")


class LogSink:
    """Logs events on ``probekit.control.alerts``: openings (and ``kind_unavailable``,
    ``instance_unresponsive``) at WARNING, the rest at INFO."""

    def __init__(self) -> None:
        self.log = logging.getLogger("probekit.control.alerts")

    async def send(self, event: Event) -> None:
        level = logging.INFO
        if event.kind in ("alert_opened", "kind_unavailable", "instance_unresponsive"):
            level = logging.WARNING
        self.log.log(level, "%s %s: %s", event.kind, event.subject, event.message)


class MemorySink:
    """Keeps events in a list (tests, dashboards embedding the control plane)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def send(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float) -> None:
        """Wait until ``predicate(events)`` holds, or raise TimeoutError."""
        async with asyncio.timeout(timeout):
            while not predicate(self.events):
                self._changed.clear()
                await self._changed.wait()


def _policy(policy: EgressPolicy | None) -> EgressPolicy:
    if policy is not None and not isinstance(policy, EgressPolicy):
        raise DefinitionError("policy", f"must be an EgressPolicy, got {type(policy).__name__}")
    return policy if policy is not None else EgressPolicy()


def _renotify(value: float | None) -> float | None:
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DefinitionError("renotify", f"must be a number of seconds above 0, got {value!r}")
    return None if value is None else float(value)


class _HttpChannel:
    """POSTs a JSON payload per event with probekit's own HTTP probe (so on the dial path).

    ``policy`` is the operator's egress policy (by default ``EgressPolicy()``, which denies
    link-local and cloud-metadata addresses): a URL whose host or any address it resolves to is
    denied is never dialled. ``kinds`` limits the events sent (None: the channel's default).
    ``renotify``: seconds after which an alert still open is sent again (None: never).
    """

    #: The event kinds a channel sends by default (None: every event).
    DEFAULT_KINDS: frozenset[str] | None = None
    #: Whether the URL itself is a credential (Slack): then logs name only its host.
    SECRET_URL: bool = False

    def __init__(
        self,
        url: str | Secret,
        *,
        name: str | None = None,
        headers: Mapping[str, str | Secret] | None = None,
        timeout: float = 5.0,
        policy: EgressPolicy | None = None,
        kinds: Iterable[str] | None = None,
        renotify: float | None = None,
    ) -> None:
        from ..probes.http import HttpProbe

        self.policy = _policy(policy)
        text = url.reveal() if isinstance(url, Secret) else url
        if not isinstance(text, str) or not text:
            raise DefinitionError("url", "required: an http:// or https:// URL")
        self.url = _shown_url(text) if self.SECRET_URL or isinstance(url, Secret) else text
        self.name = name or f"{type(self).__name__.removesuffix('Sink').lower()} {self.url}"
        self.kinds = frozenset(kinds) if kinds is not None else self.DEFAULT_KINDS
        self.renotify = _renotify(renotify)
        self._context = ProbeContext(dialer=Dialer(policy=self.policy))
        try:
            self._probe = HttpProbe(
                text,
                method="POST",
                headers={"Content-Type": "application/json", **(headers or {})},
                timeouts=Timeouts(total=timeout),
                follow_redirects=False,
            )
        except DefinitionError as exc:
            # (The probe's message may quote the URL, which can be a credential.)
            raise DefinitionError(
                "url", "not a valid URL" if self.SECRET_URL else exc.message
            ) from None

    def wants(self, event: Event) -> bool:
        return self.kinds is None or event.kind in self.kinds

    def payload(self, event: Event) -> Any:
        """The JSON document for ``event``."""
        raise NotImplementedError

    async def deliver(self, event: Event) -> None:
        """POST ``event``; raises :class:`DeliveryError` unless the receiver answered 2xx/3xx."""
        if not self.wants(event):
            return
        event = with_event_id(event)
        body = json.dumps(self.payload(event), separators=(",", ":"))
        result = await attrs.evolve(self._probe, body=body).check(self._context)
        if result.status is not Status.UP:
            if self.SECRET_URL:
                why = result.error.kind.value if result.error else result.status.name
                raise DeliveryError(f"{why} (status {result.status.name})")
            raise DeliveryError(result.summary())

    async def send(self, event: Event) -> None:
        try:
            await self.deliver(event)
        except DeliveryError as exc:
            log.warning("%s failed: %s", self.name, exc)


def _shown_url(url: str) -> str:
    """``url`` with only its scheme and host (the rest may be a credential)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/..."


class WebhookSink(_HttpChannel):
    """POSTs each event as JSON (:func:`event_to_dict`) to ``url`` (see :class:`_HttpChannel`).
    A failed delivery, a denied one included, is logged; it does not block other sinks."""

    def payload(self, event: Event) -> Any:
        return event_to_dict(event)


_ALERT_KINDS: Final = frozenset({*OPENING, *RESOLVING, "instance_unresponsive"})


def _headline(event: Event) -> str:
    if event.kind == "alert_resolved":
        return "RESOLVED"
    if event.kind == "alert_repeated":
        return "STILL FIRING"
    if event.kind in ("alert_opened", "kind_unavailable"):
        return "FIRING"
    return event.kind.replace("_", " ").upper()


class SlackSink(_HttpChannel):
    """A Slack incoming webhook: ``{"text": ...}`` per alert event (openings, repeats,
    resolutions, ``instance_unresponsive``). The URL is a credential: give it as a
    :class:`~probekit.Secret`; logs show only its host."""

    DEFAULT_KINDS = _ALERT_KINDS
    SECRET_URL = True

    def payload(self, event: Event) -> Any:
        icon = ":white_check_mark:" if event.kind == "alert_resolved" else ":rotating_light:"
        kind = event.alert.kind if event.alert else event.kind
        text = f"{icon} *{_headline(event)}* {kind} `{event.subject}`: {event.message}"
        # (the event's stable id, for a person or a bot to tell a repeat from a new event)
        return {"text": f"{text} (event `{stable_event_id(event)}`)"}


#: PagerDuty's Events API v2 endpoint.
PAGERDUTY_URL: Final = "https://events.pagerduty.com/v2/enqueue"

Severity = Literal["critical", "error", "warning", "info"]


class PagerDutySink(_HttpChannel):
    """PagerDuty Events API v2: an opening (or repeat) is a ``trigger`` and a resolution a
    ``resolve``, both with the alert id as ``dedup_key``; ``routing_key`` is the integration
    key (a :class:`~probekit.Secret`)."""

    DEFAULT_KINDS = frozenset({*OPENING, *RESOLVING})

    def __init__(
        self,
        routing_key: Secret,
        *,
        url: str = PAGERDUTY_URL,
        source: str = "probekit",
        severity: Severity = "critical",
        **options: Any,
    ) -> None:
        if not isinstance(routing_key, Secret) or not routing_key.reveal():
            raise DefinitionError("routing_key", "must be a non-empty Secret")
        if severity not in ("critical", "error", "warning", "info"):
            raise DefinitionError(
                "severity", f"one of critical, error, warning, info; got {severity!r}"
            )
        super().__init__(url, **options)
        self.routing_key = routing_key
        self.source = source
        self.severity = severity

    def payload(self, event: Event) -> Any:
        alert = event.alert
        key = alert.alert_id if alert else f"{event.kind}:{event.subject}"
        if event.kind in RESOLVING:
            return {
                "routing_key": self.routing_key.reveal(),
                "event_action": "resolve",
                "dedup_key": key,
            }
        return {
            "routing_key": self.routing_key.reveal(),
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": event.message[:1024],
                "source": self.source,
                "severity": self.severity,
                "timestamp": _iso(alert.opened_at if alert else event.at),
                "component": event.subject,
                "class": alert.kind if alert else event.kind,
                "custom_details": {
                    "event": event.kind,
                    "alert_id": key,
                    "event_id": stable_event_id(event),
                },
            },
        }


class AlertmanagerSink(_HttpChannel):
    """Alertmanager's v2 API: ``POST {url}/api/v2/alerts`` with one alert per event.

    An opening or repeat posts the alert with ``startsAt`` (its opening time) and no
    ``endsAt``; a resolution posts it again with ``endsAt``. Labels: ``alertname`` (the alert
    kind), ``subject``, ``source="probekit"`` and the configured ``labels``; annotations:
    ``summary`` (the message) and ``alert_id``; ``generatorURL`` when configured. Alertmanager
    forgets a firing alert it has not heard of for its ``resolve_timeout`` (5 minutes by
    default), so ``renotify`` defaults to 60 s: keep it well below that. Routing, grouping,
    inhibition and silences are Alertmanager's.
    """

    DEFAULT_KINDS = frozenset({*OPENING, *RESOLVING})

    def __init__(
        self,
        url: str,
        *,
        labels: Mapping[str, str] | None = None,
        generator_url: str | None = None,
        renotify: float | None = 60.0,
        **options: Any,
    ) -> None:
        base = url.rstrip("/") if isinstance(url, str) else url
        if isinstance(base, str) and not base.endswith("/api/v2/alerts"):
            base += "/api/v2/alerts"
        labels = dict(labels or {})
        for key, value in labels.items():
            if not isinstance(key, str) or not key.isidentifier() or not isinstance(value, str):
                raise DefinitionError(
                    f"labels.{key}", "label names are identifiers and their values text"
                )
        super().__init__(base, renotify=renotify, **options)
        self.labels = labels
        self.generator_url = generator_url

    def payload(self, event: Event) -> Any:
        alert = event.alert
        alert_id = alert.alert_id if alert else f"{event.kind}:{event.subject}"
        item: dict[str, Any] = {
            "labels": {
                **self.labels,
                "alertname": alert.kind if alert else event.kind,
                "subject": event.subject,
                "source": "probekit",
            },
            "annotations": {"summary": event.message, "alert_id": alert_id},
            "startsAt": _iso(alert.opened_at if alert else event.at),
        }
        if event.kind in RESOLVING:
            item["endsAt"] = _iso(max(event.at, alert.opened_at if alert else event.at))
        if self.generator_url:
            item["generatorURL"] = self.generator_url
        return [item]


# -- e-mail ---------------------------------------------------------------------------------------

#: The longest SMTP reply line, and whole reply, read from the server.
_LINE_LIMIT: Final = 4096
_REPLY_LIMIT: Final = 64 * 1024

TlsMode = Literal["starttls", "tls", "none"]


class EmailSink:
    """One e-mail per alert event, sent over SMTP on the dial path.

    ``tls``: ``starttls`` (default; the server must offer it), ``tls`` (implicit TLS, port 465)
    or ``none`` (only for a relay on loopback or a trusted network). With ``username`` and
    ``password`` (a :class:`~probekit.Secret`) it logs in with AUTH PLAIN, which it refuses to
    do without TLS. ``ca_file`` trusts a private CA.

    Why a small sender and not aiosmtplib: the dial path must open the connection and do the
    TLS (policy, pinned address, STARTTLS injection refusal), and the dialogue needed to hand
    over one message is six commands; that costs less than an optional dependency.
    """

    DEFAULT_KINDS: Final = _ALERT_KINDS

    def __init__(
        self,
        host: str,
        *,
        sender: str,
        to: Sequence[str],
        port: int | None = None,
        tls: TlsMode = "starttls",
        username: str | None = None,
        password: Secret | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        policy: EgressPolicy | None = None,
        kinds: Iterable[str] | None = None,
        renotify: float | None = None,
        subject_prefix: str = "[probekit]",
        name: str | None = None,
    ) -> None:
        if tls not in ("starttls", "tls", "none"):
            raise DefinitionError("tls", f"one of starttls, tls, none; got {tls!r}")
        if not isinstance(host, str) or not host:
            raise DefinitionError("host", "required: the SMTP server's host name")
        for where, address in [("sender", sender), *((f"to[{i}]", a) for i, a in enumerate(to))]:
            if (
                not isinstance(address, str)
                or "@" not in address
                or any(c in address for c in "\r\n<> ")
            ):
                raise DefinitionError(where, f"expected an e-mail address, got {address!r}")
        if not to:
            raise DefinitionError("to", "at least one recipient")
        if (username is None) != (password is None):
            raise DefinitionError("password", "username and password go together")
        if password is not None and not isinstance(password, Secret):
            raise DefinitionError("password", "must be a Secret")
        if username is not None and tls == "none":
            raise DefinitionError("tls", "a password is not sent without TLS: use starttls or tls")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535
        ):
            raise DefinitionError("port", f"expected a port number, got {port!r}")
        self.host = host
        self.port = port if port is not None else (465 if tls == "tls" else 25)
        self.tls: TlsMode = tls
        self.sender = sender
        self.to = tuple(to)
        self.username = username
        self.password = password
        self.tls_options = TlsOptions(ca_file=ca_file)
        self.timeouts = Timeouts(total=timeout)
        self.policy = _policy(policy)
        self.dialer = Dialer(policy=self.policy)
        self.kinds = frozenset(kinds) if kinds is not None else self.DEFAULT_KINDS
        self.renotify = _renotify(renotify)
        self.subject_prefix = subject_prefix
        self.name = name or f"email {host}:{self.port}"

    def message(self, event: Event) -> EmailMessage:
        """The mail sent for ``event``."""
        msg = EmailMessage()
        kind = event.alert.kind if event.alert else event.kind
        subject = f"{self.subject_prefix} {_headline(event)} {kind} {event.subject}".strip()
        msg["Subject"] = " ".join(subject.split())[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Date"] = formatdate(event.at, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rsplit("@", 1)[-1])
        msg["X-Probekit-Event-Id"] = stable_event_id(event)
        lines = [event.message, "", f"event: {event.kind}", f"subject: {event.subject}"]
        lines.append(f"at: {_iso(event.at)}")
        if event.alert is not None:
            lines += [f"alert: {event.alert.alert_id}", f"opened: {_iso(event.alert.opened_at)}"]
        lines.append(f"event id: {stable_event_id(event)}")
        msg.set_content("\n".join(lines) + "\n")
        return msg

    async def deliver(self, event: Event) -> None:
        if event.kind not in self.kinds:
            return
        data = self.message(event).as_bytes()
        try:
            async with asyncio.timeout(self.timeouts.total):
                await self._send_mail(data)
        except TimeoutError:
            raise DeliveryError(f"smtp {self.host}:{self.port}: timed out") from None
        except (ProbeFailure, PolicyError) as exc:
            raise DeliveryError(f"smtp {self.host}:{self.port}: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DeliveryError(f"smtp {self.host}:{self.port}: {reason}") from None

    async def send(self, event: Event) -> None:
        try:
            await self.deliver(event)
        except DeliveryError as exc:
            log.warning("%s failed: %s", self.name, exc)

    async def _send_mail(self, data: bytes) -> None:
        timeline = Timeline(SystemClock())
        tls = self.tls_options if self.tls == "tls" else None
        conn = await self.dialer.connect(self.host, self.port, timeline, self.timeouts, tls=tls)
        try:
            await self._expect(conn, 220, "greeting")
            features = await self._ehlo(conn)
            if self.tls == "starttls":
                if "STARTTLS" not in features:
                    raise DeliveryError(f"smtp {self.host}:{self.port}: no STARTTLS offered")
                await self._command(conn, b"STARTTLS", 220)
                await self.dialer.start_tls(
                    conn, self.host, self.tls_options, timeline, self.timeouts, diagnose=False
                )
                features = await self._ehlo(conn)
            if self.username is not None and self.password is not None:
                token = base64.b64encode(
                    b"\0" + self.username.encode() + b"\0" + self.password.reveal().encode()
                )
                await self._command(conn, b"AUTH PLAIN " + token, 235, shown=b"AUTH PLAIN ...")
            await self._command(conn, f"MAIL FROM:<{self.sender}>".encode(), 250)
            for rcpt in self.to:
                await self._command(conn, f"RCPT TO:<{rcpt}>".encode(), (250, 251))
            await self._command(conn, b"DATA", 354)
            conn.write(_dot_stuff(data) + b".\r\n")
            await self._expect(conn, 250, "end of data")
            conn.write(b"QUIT\r\n")
        finally:
            conn.close()

    async def _ehlo(self, conn: Any) -> set[str]:
        lines = await self._command(conn, b"EHLO probekit", 250)
        return {line[4:].split(" ", 1)[0].upper() for line in lines[1:]}

    async def _command(
        self, conn: Any, line: bytes, expect: int | tuple[int, ...], *, shown: bytes | None = None
    ) -> list[str]:
        conn.write(line + b"\r\n")
        return await self._expect(conn, expect, (shown or line).decode("ascii", "replace"))

    async def _expect(self, conn: Any, expect: int | tuple[int, ...], what: str) -> list[str]:
        wanted = (expect,) if isinstance(expect, int) else expect
        lines: list[str] = []
        total = 0
        while True:
            raw = await conn.read_until(b"\n", _LINE_LIMIT, self.timeouts.read, "SMTP reply")
            total += len(raw)
            if total > _REPLY_LIMIT:
                raise DeliveryError(f"smtp {self.host}:{self.port}: reply too long")
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                break
        code = lines[-1][:3]
        if not code.isdigit() or int(code) not in wanted:
            reply = lines[-1][:200]
            raise DeliveryError(f"smtp {self.host}:{self.port}: {what}: {reply}")
        return lines


def _dot_stuff(data: bytes) -> bytes:
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


# -- the outbox -----------------------------------------------------------------------------------


class Channel(Protocol):
    """A sink that can say whether an event reached its receiver."""

    name: str

    async def send(self, event: Event) -> None: ...

    async def deliver(self, event: Event) -> None: ...


_OUTBOX_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,
    created REAL NOT NULL,
    due REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_channel ON outbox (channel, id);
"""

#: An outbox entry as the worker reads it: (id, event JSON, created, due, attempts).
_Entry = tuple[int, str, float, float, int]


class _FileOutbox:
    """The outbox in a SQLite file of its own (``probekit run``, a sink not given to a control
    plane). Queries are quick local ones, run on the event loop as they always were."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None  # opened on first use

    @property
    def db(self) -> sqlite3.Connection:
        if self.conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_OUTBOX_SCHEMA)
            self.conn = conn
        return self.conn

    async def pending(self, channel: str) -> int:
        row = self.db.execute("SELECT count(*) FROM outbox WHERE channel=?", (channel,))
        return int(row.fetchone()[0])

    async def add(self, channel: str, event_id: str, body: str, now: float, limit: int) -> int:
        excess = await self.pending(channel) - limit + 1
        if excess > 0:
            self.db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE channel=? "
                "ORDER BY id LIMIT ?)",
                (channel, excess),
            )
        self.db.execute(
            "INSERT INTO outbox (channel, event, created, due) VALUES (?, ?, ?, ?)",
            (channel, body, now, now),
        )
        return max(excess, 0)

    async def first(self, channel: str) -> _Entry | None:
        row = self.db.execute(
            "SELECT id, event, created, due, attempts FROM outbox WHERE channel=? "
            "ORDER BY id LIMIT 1",
            (channel,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    async def delete(self, row_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id=?", (row_id,))

    async def retry(self, row_id: int, attempts: int, due: float, error: str) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts=?, due=?, last_error=? WHERE id=?",
            (attempts, due, error, row_id),
        )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _file_entries(path: str, channel: str) -> list[_Entry]:
    """``channel``'s entries in the outbox file at ``path``, oldest first (none: no file)."""
    if path == ":memory:" or not os.path.exists(path):
        return []
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='outbox'"
        ).fetchone()
        if found is None:
            return []
        rows = conn.execute(
            "SELECT id, event, created, due, attempts FROM outbox WHERE channel=? ORDER BY id",
            (channel,),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    finally:
        conn.close()


def _forget_entries(path: str, channel: str, last: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("DELETE FROM outbox WHERE channel=? AND id<=?", (channel, last))
    finally:
        conn.close()


class _StoreOutbox:
    """The outbox in a control plane's database (SQLite or PostgreSQL, its table
    ``alert_outbox``), on the store's worker thread: the control plane writes an event's
    entries in the transaction that records the event, so whichever control plane is active
    delivers them."""

    def __init__(self, store: Any) -> None:
        from . import _outbox

        self.store = store
        self._db = _outbox

    async def pending(self, channel: str) -> int:
        db = self._db
        return int(await self.store.call(lambda c: db.outbox_pending(c, channel)))

    async def add(self, channel: str, event_id: str, body: str, now: float, limit: int) -> int:
        db = self._db
        return int(
            await self.store.call(lambda c: db.outbox_add(c, channel, event_id, body, now, limit))
        )

    async def first(self, channel: str) -> _Entry | None:
        db = self._db
        entry: _Entry | None = await self.store.call(lambda c: db.outbox_first(c, channel))
        return entry

    async def delete(self, row_id: int) -> None:
        db = self._db
        await self.store.call(lambda c: db.outbox_delete(c, row_id))

    async def retry(self, row_id: int, attempts: int, due: float, error: str) -> None:
        db = self._db
        await self.store.call(lambda c: db.outbox_retry(c, row_id, attempts, due, error))

    async def take_file(self, channel: str, path: str) -> int:
        """Move ``channel``'s entries of a former outbox file at ``path`` (if there is one)
        into the database, so they are delivered from there; returns how many."""
        rows = await asyncio.to_thread(_file_entries, path, channel)
        if not rows:
            return 0
        entries = []
        for _, body, created, due, attempts in rows:
            try:
                event_id = stable_event_id(converter.structure(json.loads(body), Event))
            except Exception:  # noqa: BLE001 - the worker drops it, with a log line
                event_id = ""
            entries.append((channel, event_id, body, created, due, attempts))
        db = self._db
        await self.store.call(lambda c: db.outbox_import(c, entries))
        await asyncio.to_thread(_forget_entries, path, channel, rows[-1][0])
        return len(rows)

    def close(self) -> None:
        pass


class DurableSink:
    """``channel`` behind an outbox: by itself one kept in SQLite at ``path`` (``:memory:``:
    kept in memory); given to a :class:`ControlPlane`, the control plane's own database (see
    :meth:`bind`), written in the same transaction as the event it announces.

    :meth:`send` writes the event to the outbox and wakes the worker, which delivers the
    channel's events oldest first: a failure is retried after ``backoff`` seconds, doubling up
    to ``max_backoff``, and the events after it wait (so an opening is never overtaken by its
    resolution). An event still undelivered after ``max_attempts`` tries, or older than
    ``max_age`` seconds, is dropped and logged at ERROR; so is the oldest event when the
    channel already has ``max_pending`` waiting. Events left in the outbox when the
    process stops are delivered once it starts again with the same ``path`` (or database) and
    channel name: delivery is at least once, and every event carries its stable
    ``event_id`` (see :func:`~probekit.alerting._events.stable_event_id`) for a receiver to drop
    a repeat. Counters: :attr:`delivered`, :attr:`retries`, :attr:`dropped`.
    """

    def __init__(
        self,
        channel: Channel,
        path: str = ":memory:",
        *,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        max_attempts: int = 20,
        max_age: float = 86400.0,
        max_pending: int = 10_000,
        clock: Clock | None = None,
    ) -> None:
        for what, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise DefinitionError(what, f"must be a number of seconds above 0, got {value!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise DefinitionError("max_attempts", f"must be 1 or more, got {max_attempts!r}")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise DefinitionError("max_pending", f"must be 1 or more, got {max_pending!r}")
        self.max_pending = max_pending
        self.channel = channel
        self.name = channel.name
        self.renotify: float | None = getattr(channel, "renotify", None)
        self.path = path
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_attempts = max_attempts
        self.max_age = max_age
        self.clock: Clock = clock or SystemClock()
        self.delivered = 0
        self.retries = 0
        self.dropped = 0
        self._outbox: _FileOutbox | _StoreOutbox = _FileOutbox(path)
        self._moved = True
        self._settled = asyncio.Event()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()

    def _now(self) -> float:
        return self.clock.now().timestamp()

    @property
    def _db(self) -> sqlite3.Connection:
        """The outbox file's connection (not bound to a control plane's database)."""
        if not isinstance(self._outbox, _FileOutbox):
            raise RuntimeError(f"{self.name}: the outbox is the control plane's database")
        return self._outbox.db

    @property
    def store(self) -> Any:
        """The control plane's store this sink's outbox lives in (None: its own file)."""
        return self._outbox.store if isinstance(self._outbox, _StoreOutbox) else None

    def bind(self, store: Any) -> None:
        """Keep the outbox in a control plane's database (its ``Store``) from now on; what
        the file at ``path`` still holds for this channel moves there when the worker starts.
        :class:`ControlPlane` does this for the sinks it is given."""
        if self.store is store:
            return
        if self._worker is not None:
            raise RuntimeError(f"{self.name}: bind before the worker starts")
        if isinstance(self._outbox, _FileOutbox):
            self._outbox.close()
        self._outbox = _StoreOutbox(store)
        self._moved = False
        self._settled = asyncio.Event()  # set once the outbox file's events have moved

    def wants(self, event: Event) -> bool:
        """Whether the channel delivers this kind of event (others are not kept)."""
        wants = getattr(self.channel, "wants", None)
        if callable(wants):
            return bool(wants(event))
        kinds = getattr(self.channel, "kinds", None)
        return kinds is None or event.kind in kinds

    def entry(self, event: Event) -> tuple[str, str, str, float, int]:
        """The outbox entry of ``event`` for this channel, as a control plane writes it with
        the event: (channel, event id, event JSON, now, max_pending)."""
        event = with_event_id(event)
        body = json.dumps(event_to_dict(event), separators=(",", ":"))
        assert event.event_id is not None
        return (self.name, event.event_id, body, self._now(), self.max_pending)

    def pending(self) -> int:
        """Events in the outbox file for this channel (see :meth:`pending_events` for either
        kind of outbox)."""
        row = self._db.execute("SELECT count(*) FROM outbox WHERE channel=?", (self.name,))
        return int(row.fetchone()[0])

    async def pending_events(self) -> int:
        """Events in the outbox (its file or the control plane's database) for this channel."""
        return await self._outbox.pending(self.name)

    async def send(self, event: Event) -> None:
        channel, event_id, body, now, limit = self.entry(event)
        self.note_dropped(await self._outbox.add(channel, event_id, body, now, limit))
        self.wake()

    def note_dropped(self, excess: int) -> None:
        """Count and log ``excess`` oldest events dropped to stay within ``max_pending``."""
        if excess > 0:
            self.dropped += excess
            log.error(
                "%s: the outbox holds %d events; dropped the oldest %d",
                self.name,
                self.max_pending,
                excess,
            )

    def wake(self) -> None:
        """Look at the outbox now (an entry was just written), starting the worker if needed."""
        self.start()
        self._wake.set()

    def start(self) -> None:
        """Start the delivery worker (``send`` does it too); it delivers what is pending."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
            self._wake.set()

    async def stop(self) -> None:
        """Stop the worker; what is not delivered stays in the outbox."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def aclose(self) -> None:
        """Stop the worker (what is not delivered stays in the outbox) and close the file."""
        await self.stop()
        self._outbox.close()

    async def wait_idle(self, timeout: float) -> None:
        """Wait until the outbox holds nothing for this channel (or raise TimeoutError)."""
        async with asyncio.timeout(timeout):
            if isinstance(self._outbox, _StoreOutbox):
                await self._settled.wait()
            while await self.pending_events():
                self._idle.clear()
                try:
                    async with asyncio.timeout(0.5):  # (another process may have delivered)
                        await self._idle.wait()
                except TimeoutError:
                    pass

    async def _work(self) -> None:
        outbox = self._outbox
        if isinstance(outbox, _StoreOutbox) and not self._moved:
            self._moved = True
            try:
                moved = await outbox.take_file(self.name, self.path)
            except Exception:
                log.exception(
                    "%s: could not take the events of the outbox file %s", self.name, self.path
                )
            else:
                if moved:
                    log.info(
                        "%s: %d events moved from %s to the database", self.name, moved, self.path
                    )
            self._settled.set()
        while True:
            try:
                await self._step(outbox)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database failing: retried
                log.warning("%s: the outbox could not be read or written: %s", self.name, exc)
                await asyncio.sleep(min(self.max_backoff, 1.0))

    async def _step(self, outbox: _FileOutbox | _StoreOutbox) -> None:
        row = await outbox.first(self.name)
        if row is None:
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()
            return
        row_id, body, created, due, attempts = row
        now = self._now()
        if due > now:
            self._wake.clear()
            try:
                async with asyncio.timeout(due - now):
                    await self._wake.wait()
            except TimeoutError:
                pass
            return
        try:
            event = with_event_id(converter.structure(json.loads(body), Event))
        except Exception as exc:  # noqa: BLE001 - a row this version cannot read: never retried
            log.error("%s: dropping an unreadable outbox entry: %s", self.name, exc)
            await outbox.delete(row_id)
            self.dropped += 1
            return
        try:
            await self.channel.deliver(event)
        except Exception as exc:  # noqa: BLE001 - a broken channel must not stop the outbox
            error = str(exc) if isinstance(exc, DeliveryError) else repr(exc)
            attempts += 1
            if attempts >= self.max_attempts or now - created > self.max_age:
                log.error(
                    "%s: dropping %s %s after %d attempts: %s",
                    self.name,
                    event.kind,
                    event.subject,
                    attempts,
                    error,
                )
                await outbox.delete(row_id)
                self.dropped += 1
                return
            delay = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
            self.retries += 1
            log.warning(
                "%s: %s %s not delivered (attempt %d), retrying in %.1f s: %s",
                self.name,
                event.kind,
                event.subject,
                attempts,
                delay,
                error,
            )
            await outbox.retry(row_id, attempts, now + delay, error[:500])
            return
        await outbox.delete(row_id)
        self.delivered += 1


# -- re-notification ------------------------------------------------------------------------------


class Renotifier:
    """Which open alerts are due to be sent again, per sink with a ``renotify`` interval.

    An alert counts as notified when first seen (its opening was just sent, or it was restored
    at a start); it is due again ``renotify`` seconds later (monotonic clock).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[int, str], float] = {}

    def due(
        self, sinks: Sequence[object], alerts: Iterable[Alert], now: float, wall: float
    ) -> list[tuple[object, Event]]:
        out: list[tuple[object, Event]] = []
        alerts = list(alerts)
        live: set[tuple[int, str]] = set()
        for sink in sinks:
            interval = getattr(sink, "renotify", None)
            if not interval:
                continue
            for alert in alerts:
                key = (id(sink), alert.alert_id)
                live.add(key)
                last = self._last.setdefault(key, now)
                if now - last >= interval:
                    self._last[key] = now
                    since = _iso(alert.opened_at)
                    message = f"{alert.message} (still open since {since})"
                    out.append((sink, Event("alert_repeated", alert.subject, wall, message, alert)))
        for key in set(self._last) - live:
            del self._last[key]
        return out


# -- alerts from results, without a control plane (probekit run) ----------------------------------


class ResultAlerts:
    """Alerts from one process's results, for ``probekit run``: a monitor whose last
    ``failures`` results were all DOWN opens a ``monitor_down`` alert; its next result that is
    not DOWN resolves it. Events go to ``sinks`` (failures logged, never raised); :meth:`tick`
    sends the open alerts due again to the sinks with a ``renotify`` interval.
    """

    def __init__(
        self,
        sinks: Sequence[AlertSink],
        *,
        failures: int = 2,
        clock: Clock | None = None,
        ids: Callable[[], str] | None = None,
    ) -> None:
        from .._ids import new_id

        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            raise DefinitionError("failures", f"must be an integer of 1 or more, got {failures!r}")
        self.sinks = list(sinks)
        self.failures = failures
        self.clock: Clock = clock or SystemClock()
        self._ids = ids or new_id
        self._streak: dict[str, int] = {}
        self.open: dict[str, Alert] = {}
        self._renotifier = Renotifier()

    async def observe(self, monitor_id: str, status: Status, detail: str = "") -> None:
        """Take one result of ``monitor_id`` (its status, and what went wrong)."""
        wall = self.clock.now().timestamp()
        alert = self.open.get(monitor_id)
        if status is not Status.DOWN:
            self._streak.pop(monitor_id, None)
            if alert is not None:
                del self.open[monitor_id]
                await self._send(
                    Event("alert_resolved", monitor_id, wall, f"{monitor_id} is up again", alert)
                )
            return
        streak = self._streak[monitor_id] = self._streak.get(monitor_id, 0) + 1
        if alert is not None or streak < self.failures:
            return
        times = "once" if streak == 1 else f"{streak} times in a row"
        message = f"{monitor_id} is down: failed {times}" + (f": {detail}" if detail else "")
        alert = Alert(self._ids(), "monitor_down", monitor_id, wall, message)
        self.open[monitor_id] = alert
        await self._send(Event("alert_opened", monitor_id, wall, message, alert))

    async def tick(self) -> None:
        """Send the open alerts due again (at sinks with a ``renotify`` interval)."""
        wall = self.clock.now().timestamp()
        due = self._renotifier.due(self.sinks, self.open.values(), self.clock.monotonic(), wall)
        for sink, event in due:
            await self._send_to(sink, event)

    async def _send(self, event: Event) -> None:
        for sink in self.sinks:
            await self._send_to(sink, event)

    @staticmethod
    async def _send_to(sink: object, event: Event) -> None:
        try:
            await sink.send(event)  # type: ignore[attr-defined]
        except Exception:
            log.exception("alert sink %r failed", sink)

    def start(self) -> None:
        for sink in self.sinks:
            if callable(start := getattr(sink, "start", None)):
                start()

    async def aclose(self) -> None:
        for sink in self.sinks:
            if callable(aclose := getattr(sink, "aclose", None)):
                await aclose()
