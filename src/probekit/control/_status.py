"""The control plane's read-only status page: ``/status``, ``/status/monitor?id=``,
``/status/result?id=``, served on its ``/metrics`` port when ``status_token`` is set.

The design, and why:

- **Server-rendered HTML, nothing else.** The page runs inside private networks, often with no
  way out: one HTML document per request, its CSS inline, no JavaScript, no font, image or
  script fetched from anywhere. It works in any browser and in ``curl``.
- **Behind a token, never open by default.** Without ``status_token`` the paths answer 404.
  A request must carry the token as ``Authorization: Bearer TOKEN`` or as the password of HTTP
  basic authentication (any user name), compared in constant time like the checkpoints'
  tokens; anything else gets 401 with a ``WWW-Authenticate: Basic`` challenge, so a browser
  asks for it. Checkpoint tokens do not open the page: a checkpoint is not an operator.
- **Every value escaped.** Monitor ids, targets and error messages come from config files and
  from hostile servers; each goes through :func:`html.escape` (and :func:`urllib.parse.quote`
  inside a link) and is clipped to a bounded length. A ``Content-Security-Policy`` that allows
  no script at all is a second wall behind the escaping, not a replacement for it.
- **Bounded reads, off the event loop.** Everything read from the database runs on the
  store's worker thread (:meth:`~probekit.control._store.Store.call`), a few monitors per call
  so that results keep being stored between them; the overview shows
  :data:`MONITORS_PER_PAGE` monitors a page (those with an open alert first). Per monitor it
  reads one day of results through the ``(monitor_id, started_at)`` index, aggregated by SQLite
  into :data:`BUCKETS` buckets and one latest result per instance.
- **Availability** is the share of checks in a bucket (or the day) that were ``up`` or
  ``degraded``; ``unknown`` results (the check could not tell) are left out of it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hmac
import html
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import attrs

from ._store import Connection, is_pg

if TYPE_CHECKING:
    from .._metrics_server import Route
    from .._secret import Secret
    from . import ControlPlane, ControlSettings

__all__ = ["BUCKETS", "DAY", "MONITORS_PER_PAGE", "StatusPage", "authorized"]

log = logging.getLogger("probekit.control.status")

#: The window of the availability bar, in seconds, and how many bars it is cut into (15 min).
DAY: Final = 86400.0
BUCKETS: Final = 96
#: Monitors listed on one page of the overview.
MONITORS_PER_PAGE: Final = 100
#: Results listed on a monitor's page.
RECENT_RESULTS: Final = 25
#: Monitors read per call on the database's worker thread.
_CHUNK: Final = 20
#: The longest text shown for one value (error messages, targets, alert messages).
_CLIP: Final = 400
#: The longest id accepted in a query string.
_MAX_ID: Final = 256

_HTML: Final = "text/html; charset=utf-8"
_TEXT: Final = "text/plain; charset=utf-8"
#: Sent with every page: no script, no external fetch, no framing, no caching of what it shows.
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CHALLENGE: Final = {
    **_HEADERS,
    "WWW-Authenticate": 'Basic realm="probekit status", charset="UTF-8"',
}

Page = tuple[int, str, bytes, Mapping[str, str]]


def authorized(header: str, token: Secret) -> bool:
    """Whether an ``Authorization`` header value carries ``token``: ``Bearer TOKEN``, or
    ``Basic`` with ``TOKEN`` as the password (any user name). Compared in constant time."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    expected = token.reveal().encode()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), expected)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        _user, sep, password = decoded.partition(b":")
        return bool(sep) and hmac.compare_digest(password, expected)
    return False


def e(value: object) -> str:
    """``value`` as text safe in HTML content and in a quoted attribute, clipped."""
    text = str(value)
    if len(text) > _CLIP:
        text = text[: _CLIP - 1] + "\u2026"
    return html.escape(text, quote=True)


def _link(path: str, ident: str) -> str:
    """The URL of ``path`` for ``ident``, escaped for an ``href``."""
    return html.escape(f"{path}?id={quote(ident, safe='')}", quote=True)


def _when(at: float | None, now: float) -> str:
    if at is None or not math.isfinite(at):
        return "never"
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({_ago(now - at)})"


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _number(value: Any) -> float:
    """A number of seconds from stored JSON: finite, 0 to a day (anything else is 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= DAY else 0.0


def _started(text: object) -> str:
    """A stored ``started_at`` (ISO 8601) as UTC to the second; anything else as it is."""
    try:
        at = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if at.tzinfo is None:
        return str(text)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _target(definition: Mapping[str, Any]) -> str:
    """What a monitor checks, from its definition (the URL, or host and port)."""
    for key in ("url", "target", "address"):
        if isinstance(definition.get(key), str):
            return str(definition[key])
    name = definition.get("name")  # dns: the name asked, and of whom
    if isinstance(name, str):
        server = definition.get("server")
        return f"{name} @ {server}" if server is not None else name
    host = definition.get("host")
    if host is None:
        return ""
    port = definition.get("port")
    return f"{host}:{port}" if port is not None else str(host)


# -- reading the database (on its worker thread) ------------------------------------------------


@attrs.frozen
class _Latest:
    result_id: str
    status: str
    started_at: str
    error_kind: str | None


@attrs.define
class _Day:
    """One monitor's last day: per bucket (available, unavailable) counts, latest per instance."""

    available: list[int] = attrs.Factory(lambda: [0] * BUCKETS)
    unavailable: list[int] = attrs.Factory(lambda: [0] * BUCKETS)
    latest: dict[str, _Latest] = attrs.Factory(dict)

    def ratio(self) -> float | None:
        up, down = sum(self.available), sum(self.unavailable)
        return up / (up + down) if up + down else None


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


def _read_days(c: Connection, ids: Sequence[str], now: float) -> dict[str, _Day]:
    if is_pg(c):
        return _read_days_pg(c, ids, now)
    since = now - DAY
    # A generous lower bound on the text column keeps the index usable (a started_at written
    # with another UTC offset sorts differently); julianday() then places each result exactly.
    floor = _iso(since - DAY)
    out: dict[str, _Day] = {}
    for monitor_id in ids:
        day = out[monitor_id] = _Day()
        rows = c.execute(
            "SELECT CAST((julianday(started_at) - julianday(?)) * ? AS INTEGER) AS b, "
            "sum(status IN ('up', 'degraded')), sum(status = 'down') FROM results "
            "WHERE monitor_id = ? AND started_at >= ? AND julianday(started_at) >= julianday(?) "
            "GROUP BY b",
            (_iso(since), BUCKETS, monitor_id, floor, _iso(since)),
        )
        for bucket, available, unavailable in rows:
            if bucket is None:
                continue
            index = min(max(int(bucket), 0), BUCKETS - 1)  # a clock a little ahead: the last
            day.available[index] += int(available or 0)
            day.unavailable[index] += int(unavailable or 0)
        # SQLite takes the other columns from the row holding the max().
        latest = c.execute(
            "SELECT instance_id, max(started_at), result_id, status, error_kind FROM results "
            "WHERE monitor_id = ? AND started_at >= ? GROUP BY instance_id",
            (monitor_id, floor),
        )
        for instance_id, started_at, result_id, status, error_kind in latest:
            day.latest[str(instance_id)] = _Latest(
                str(result_id), str(status), str(started_at), error_kind
            )
    return out


def _read_days_pg(c: Connection, ids: Sequence[str], now: float) -> dict[str, _Day]:
    """:func:`_read_days` on PostgreSQL: ``started_at`` (always an ISO time with its offset,
    written from a datetime) cast to a time stamp places each result; ``DISTINCT ON`` picks
    each instance's latest."""
    since = now - DAY
    floor = _iso(since - DAY)
    out: dict[str, _Day] = {}
    for monitor_id in ids:
        day = out[monitor_id] = _Day()
        rows = c.execute(
            "SELECT b, sum(CASE WHEN status IN ('up', 'degraded') THEN 1 ELSE 0 END), "
            "sum(CASE WHEN status = 'down' THEN 1 ELSE 0 END) FROM ("
            "SELECT CAST(floor((extract(epoch FROM CAST(started_at AS timestamptz)) - ?) * ? / ?)"
            " AS INTEGER) AS b, status FROM results WHERE monitor_id = ? AND started_at >= ?) t "
            "WHERE b >= 0 GROUP BY b",
            (since, BUCKETS, DAY, monitor_id, floor),
        )
        for bucket, available, unavailable in rows:
            index = min(int(bucket), BUCKETS - 1)  # a clock a little ahead: the last
            day.available[index] += int(available or 0)
            day.unavailable[index] += int(unavailable or 0)
        latest = c.execute(
            "SELECT DISTINCT ON (instance_id) instance_id, started_at, result_id, status, "
            "error_kind FROM results WHERE monitor_id = ? AND started_at >= ? "
            "ORDER BY instance_id, started_at DESC",
            (monitor_id, floor),
        )
        for instance_id, started_at, result_id, status, error_kind in latest:
            day.latest[str(instance_id)] = _Latest(
                str(result_id), str(status), str(started_at), error_kind
            )
    return out


def _recent(c: Connection, monitor_id: str, limit: int) -> list[tuple[Any, ...]]:
    return list(
        c.execute(
            "SELECT result_id, instance_id, checkpoint_id, reason, status, error_kind, "
            "started_at, body FROM results WHERE monitor_id = ? "
            "ORDER BY started_at DESC LIMIT ?",
            (monitor_id, limit),
        )
    )


def _one_result(c: Connection, result_id: str) -> tuple[Any, ...] | None:
    row = c.execute(
        "SELECT result_id, monitor_id, checkpoint_id, instance_id, request_id, reason, "
        "status, error_kind, started_at, stored_at, body FROM results WHERE result_id = ?",
        (result_id,),
    ).fetchone()
    return tuple(row) if row is not None else None


# -- the page -----------------------------------------------------------------------------------

_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1c1f23;background:#f6f7f9}
header{background:#1c2733;color:#fff;padding:10px 20px}header a{color:#fff}
header h1{font-size:18px;margin:0;display:inline}header span{color:#aab;margin-left:12px}
main{padding:8px 20px 40px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:6px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600}td.n{text-align:right;white-space:nowrap}
a{color:#1458b8}code{font-size:12px}.muted{color:#6b7480}.msg{max-width:40em;word-break:break-word}
.s{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;
color:#fff;background:#8a939d;margin:1px 2px;white-space:nowrap}
.s-up{background:#1f8a4c}.s-degraded{background:#c98a00}.s-down{background:#c62f2f}
.s-unknown{background:#7a4fb5}.s-late,.s-waiting{background:#c98a00}
.s-cut,.s-disconnected{background:#8a939d}
.bar{display:flex;gap:1px;height:20px;min-width:288px}.bar i{flex:1;background:#d5d9de}
.bar i.g{background:#2fa65d}.bar i.a{background:#e0a500}.bar i.r{background:#d83b3b}
.bar i.o{background:#ec7a2c}.big{height:34px}
.wf{position:relative;height:14px;background:#eef0f3;min-width:300px}
.wf i{position:absolute;top:0;bottom:0;background:#3b7dd8;min-width:1px}
.err{background:#fdecec;border-left:4px solid #c62f2f;padding:8px 12px;margin:8px 0}
nav.pages a{margin-right:10px}dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}
dt{color:#6b7480}dd{margin:0}
"""


def _badge(status: str, text: str | None = None) -> str:
    known = status if status in _BADGES else "other"
    return f'<span class="s s-{known}">{e(text if text is not None else status)}</span>'


_BADGES: Final = frozenset(
    ("up", "degraded", "down", "unknown", "late", "waiting", "cut", "disconnected")
)


def _document(title: str, body: str, now: float) -> bytes:
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1><a href="/status">probekit status</a></h1><span>{e(stamp)}</span>'
        "</header><main>"
        f"{body}</main></body></html>\n"
    ).encode()


def _bar(day: _Day, now: float, *, big: bool = False) -> str:
    cells = []
    start = now - DAY
    for i in range(BUCKETS):
        up, down = day.available[i], day.unavailable[i]
        if up + down == 0:
            cls, what = "", "no checks"
        elif down == 0:
            cls, what = "g", f"{up} available"
        elif up == 0:
            cls, what = "r", f"{down} unavailable"
        else:
            cls = "o" if up >= down else "r"
            what = f"{up} available, {down} unavailable"
        begin = dt.datetime.fromtimestamp(start + i * DAY / BUCKETS, dt.UTC).strftime("%H:%M")
        cells.append(f'<i class="{cls}" title="{e(begin)} UTC: {e(what)}"></i>')
    label = f"availability over the last 24 hours: {_ratio(day)}"
    return (
        f'<div class="bar{" big" if big else ""}" role="img" aria-label="{e(label)}">'
        f"{''.join(cells)}</div>"
    )


def _ratio(day: _Day) -> str:
    ratio = day.ratio()
    return "no checks" if ratio is None else f"{ratio * 100:.2f} %"


def _table(headers: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _describe(window: Mapping[str, Any]) -> str:
    """One maintenance window (``ControlPlane.maintenance_status()``'s plain data) as text."""
    shown = {k: v for k, v in window.items() if v not in (None, (), [], {}, "")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


class StatusPage:
    """The status page of one control plane: :meth:`routes` for its metrics server."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def routes(self) -> dict[str, Route]:
        """The paths served: the overview, one monitor, one result."""
        return {
            "/status": self._guarded(self._overview),
            "/status/": self._guarded(self._overview),
            "/status/monitor": self._guarded(self._monitor),
            "/status/result": self._guarded(self._result),
        }

    def _guarded(self, page: Callable[[Mapping[str, list[str]]], Awaitable[Page]]) -> Route:
        async def route(
            method: str, query: Mapping[str, list[str]], header: Callable[[str], str]
        ) -> Page:
            token = self._plane.settings.status_token
            if token is None:  # not enabled: as if the path did not exist
                return 404, _TEXT, b"not found\n", {}
            if method not in ("GET", "HEAD"):
                return 405, _TEXT, b"GET or HEAD only\n", {"Allow": "GET, HEAD"}
            if not authorized(header("authorization"), token):
                log.info("refused a status page request: bad or missing token")
                return 401, _TEXT, b"unauthorized\n", _CHALLENGE
            return await page(query)

        return route

    # -- reading ---------------------------------------------------------------------------

    async def _days(self, monitor_ids: Sequence[str], now: float) -> dict[str, _Day]:
        out: dict[str, _Day] = {}
        for i in range(0, len(monitor_ids), _CHUNK):
            chunk = list(monitor_ids[i : i + _CHUNK])
            out.update(
                await self._plane._store.call(functools.partial(_read_days, ids=chunk, now=now))
            )
        return out

    async def _maintenance(self) -> list[str] | None:
        """The control plane's maintenance windows as text (None when it has none)."""
        try:
            windows = self._plane.maintenance_status()
        except Exception:
            log.exception("could not read the maintenance windows for the status page")
            return ["(the maintenance windows could not be read)"]
        if not windows:
            return None
        return [_describe(window) for window in windows[:MONITORS_PER_PAGE]]

    # -- pages -----------------------------------------------------------------------------

    async def _overview(self, query: Mapping[str, list[str]]) -> Page:
        plane = self._plane
        now = plane.clock.now().timestamp()
        page_text = (query.get("page") or ["1"])[0]
        if not page_text.isdigit() or not 1 <= int(page_text) <= 1_000_000:
            return 400, _TEXT, b"page: expected a page number\n", _HEADERS
        page = int(page_text)
        alerts = await plane.alerts()
        seen = await plane.last_seen()
        specs = plane.monitors
        alerted = {str(a["subject"]) for a in alerts}
        order = sorted(specs, key=lambda m: (m not in alerted, m))
        pages = max(1, math.ceil(len(order) / MONITORS_PER_PAGE))
        shown = order[(page - 1) * MONITORS_PER_PAGE : page * MONITORS_PER_PAGE]
        days = await self._days(shown, now)
        parts = [
            self._checkpoints(seen, alerts, now),
            self._instances(seen, now),
            f"<h2>Monitors ({len(specs)})</h2>",
            self._monitor_rows(shown, days, alerts, now),
        ]
        if pages > 1:
            links = " ".join(
                f'<a href="/status?page={n}">{n}</a>' if n != page else f"<b>{n}</b>"
                for n in range(1, pages + 1)
            )
            parts.append(f'<nav class="pages">pages: {links}</nav>')
        parts.append(f"<h2>Open alerts ({len(alerts)})</h2>")
        parts.append(self._alert_rows(alerts, now))
        windows = await self._maintenance()
        if windows is not None:
            parts.append(f"<h2>Maintenance windows ({len(windows)})</h2>")
            parts.append(
                _table(
                    ["window"],
                    (f'<tr><td class="msg">{e(w)}</td></tr>' for w in windows),
                    "no maintenance window",
                )
            )
        return 200, _HTML, _document("probekit status", "".join(parts), now), _HEADERS

    def _checkpoints(
        self, seen: Mapping[str, Any], alerts: Sequence[Mapping[str, Any]], now: float
    ) -> str:
        logic = self._plane.logic
        down = {str(a["subject"]) for a in alerts if a["kind"] == "checkpoint_down"}
        rows = []
        for checkpoint_id, last in seen["checkpoints"].items():
            alive = logic.alive(checkpoint_id)
            members = [i for i, s in logic.instances.items() if s.checkpoint_id == checkpoint_id]
            if alive:
                state = "up"
            elif checkpoint_id in down:
                state = "down"
            else:
                state = "waiting"
            rows.append(
                f"<tr><td>{e(checkpoint_id)}</td><td>{_badge(state)}</td>"
                f'<td class="n">{len(alive)} of {len(members)}</td>'
                f"<td>{e(_when(last, now))}</td></tr>"
            )
        return f"<h2>Checkpoints ({len(rows)})</h2>" + _table(
            ["checkpoint", "state", "instances up", "last seen"], rows, "no checkpoint"
        )

    def _instances(self, seen: Mapping[str, Any], now: float) -> str:
        logic = self._plane.logic
        monotonic = self._plane.clock.monotonic()
        rows = []
        known: dict[str, Any] = dict(seen["instances"])
        for instance_id in logic.instances:
            known.setdefault(instance_id, None)
        for instance_id in sorted(known):
            inst = logic.instances.get(instance_id)
            stored = known[instance_id]
            checkpoint_id = inst.checkpoint_id if inst is not None else stored["checkpoint_id"]
            last = stored["last_seen"] if stored is not None else None
            if inst is None or not inst.connected:
                state = "disconnected"
            elif inst.cut:
                state = "cut"
            elif inst.down:
                state = "down"
            elif monotonic - inst.last_seen > logic.heartbeat_interval + logic.grace:
                state = "late"
            else:
                state = "up"
            kinds = (
                "any"
                if inst is None or inst.kinds is None
                else ", ".join(sorted(inst.kinds)) or "none"
            )
            rows.append(
                f"<tr><td>{e(instance_id)}</td><td>{e(checkpoint_id)}</td><td>{_badge(state)}</td>"
                f"<td>{e(_when(last, now))}</td><td>{e(kinds)}</td></tr>"
            )
        return f"<h2>Instances ({len(rows)})</h2>" + _table(
            ["instance", "checkpoint", "state", "last seen", "kinds"], rows, "no instance seen"
        )

    def _monitor_rows(
        self,
        shown: Sequence[str],
        days: Mapping[str, _Day],
        alerts: Sequence[Mapping[str, Any]],
        now: float,
    ) -> str:
        specs = self._plane.monitors
        open_kinds: dict[str, list[str]] = {}
        for alert in alerts:
            open_kinds.setdefault(str(alert["subject"]), []).append(str(alert["kind"]))
        rows = []
        for monitor_id in shown:
            spec = specs[monitor_id]
            day = days.get(monitor_id, _Day())
            latest = (
                " ".join(
                    f'<a href="{_link("/status/result", x.result_id)}">'
                    f"{_badge(x.status, f'{instance_id}: {x.status}')}</a>"
                    for instance_id, x in sorted(day.latest.items())
                )
                or '<span class="muted">no result in 24 h</span>'
            )
            flags = " ".join(_badge("down", k) for k in open_kinds.get(monitor_id, []))
            rows.append(
                f'<tr><td><a href="{_link("/status/monitor", monitor_id)}">{e(monitor_id)}</a>'
                f" {flags}</td><td>{e(spec.checkpoint_id)}</td><td>{e(spec.kind or '?')}</td>"
                f'<td class="msg">{e(_target(spec.definition))}</td><td>{latest}</td>'
                f'<td>{_bar(day, now)}</td><td class="n">{e(_ratio(day))}</td></tr>'
            )
        return _table(
            [
                "monitor",
                "checkpoint",
                "kind",
                "target",
                "latest per instance",
                "last 24 h",
                "avail.",
            ],
            rows,
            "no monitor",
        )

    def _alert_rows(self, alerts: Sequence[Mapping[str, Any]], now: float) -> str:
        rows = (
            f"<tr><td>{_badge('down', str(a['kind']))}</td><td>{e(a['subject'])}</td>"
            f"<td>{e(_when(a['opened_at'], now))}</td>"
            f'<td class="msg">{e(a["message"])}</td></tr>'
            for a in alerts
        )
        return _table(["alert", "subject", "opened", "message"], rows, "no open alert")

    async def _monitor(self, query: Mapping[str, list[str]]) -> Page:
        plane = self._plane
        now = plane.clock.now().timestamp()
        monitor_id = (query.get("id") or [""])[0]
        spec = plane.monitors.get(monitor_id) if len(monitor_id) <= _MAX_ID else None
        if spec is None:
            body = f'<h2>No monitor {e(monitor_id)}</h2><p><a href="/status">back</a></p>'
            return 404, _HTML, _document("probekit status: not found", body, now), _HEADERS
        day = (await self._days([monitor_id], now))[monitor_id]
        recent = await plane._store.call(lambda c: _recent(c, monitor_id, RECENT_RESULTS))
        alerts = [a for a in await plane.alerts() if a["subject"] == monitor_id]
        facts = (
            f"<dl><dt>checkpoint</dt><dd>{e(spec.checkpoint_id)}</dd>"
            f"<dt>kind</dt><dd>{e(spec.kind or '?')}</dd>"
            f"<dt>target</dt><dd>{e(_target(spec.definition))}</dd>"
            f"<dt>interval</dt><dd>{e(f'{spec.interval:g} s')}</dd>"
            f"<dt>revision</dt><dd>{e(spec.revision)}</dd>"
            f"<dt>availability, 24 h</dt><dd>{e(_ratio(day))}</dd></dl>"
        )
        latest = _table(
            ["instance", "status", "started", "error"],
            (
                f"<tr><td>{e(instance_id)}</td>"
                f'<td><a href="{_link("/status/result", x.result_id)}">'
                f"{_badge(x.status)}</a></td><td>{e(_started(x.started_at))}</td>"
                f"<td>{e(x.error_kind or '')}</td></tr>"
                for instance_id, x in sorted(day.latest.items())
            ),
            "no result in the last 24 hours",
        )
        rows = []
        for result_id, instance_id, checkpoint_id, reason, status, kind, started, body in recent:
            message = ""
            try:
                data = json.loads(body) if body else {}
                error = data.get("error") if isinstance(data, dict) else None
                if isinstance(error, dict):
                    message = str(error.get("message", ""))
                duration = _ms(_number(data.get("duration"))) if isinstance(data, dict) else ""
            except ValueError:
                duration = ""
            rows.append(
                f'<tr><td><a href="{_link("/status/result", str(result_id))}">'
                f"{e(_started(started))}</a></td>"
                f"<td>{_badge(str(status))}</td><td>{e(instance_id)}</td><td>{e(checkpoint_id)}</td>"
                f'<td>{e(reason)}</td><td class="n">{e(duration)}</td>'
                f'<td class="msg">{e(f"{kind}: {message}" if kind else message)}</td></tr>'
            )
        parts = [
            f"<h2>Monitor {e(monitor_id)}</h2>",
            facts,
            "<h2>Last 24 hours</h2>",
            _bar(day, now, big=True),
            "<h2>Open alerts</h2>",
            self._alert_rows(alerts, now),
            "<h2>Latest per instance</h2>",
            latest,
            f"<h2>Recent results (last {RECENT_RESULTS})</h2>",
            _table(
                ["started", "status", "instance", "checkpoint", "reason", "duration", "error"],
                rows,
                "no result stored",
            ),
        ]
        title = f"probekit status: {monitor_id}"
        return 200, _HTML, _document(title, "".join(parts), now), _HEADERS

    async def _result(self, query: Mapping[str, list[str]]) -> Page:
        plane = self._plane
        now = plane.clock.now().timestamp()
        result_id = (query.get("id") or [""])[0]
        row = None
        if 0 < len(result_id) <= _MAX_ID:
            row = await plane._store.call(lambda c: _one_result(c, result_id))
        if row is None:
            body = f'<h2>No result {e(result_id)}</h2><p><a href="/status">back</a></p>'
            return 404, _HTML, _document("probekit status: not found", body, now), _HEADERS
        (_rid, monitor_id, checkpoint_id, instance_id, request_id, reason, status, _kind,
         started, stored_at, body_text) = row  # fmt: skip
        try:
            data = json.loads(body_text) if body_text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        duration = _number(data.get("duration"))
        facts = [
            (
                "monitor",
                f'<a href="{_link("/status/monitor", str(monitor_id))}">{e(monitor_id)}</a>',
            ),
            ("status", _badge(str(status))),
            ("kind", e(data.get("kind", ""))),
            ("target", e(data.get("target", ""))),
            ("address", e(data.get("address") or "")),
            ("checkpoint", e(checkpoint_id)),
            ("instance", e(instance_id)),
            ("reason", e(reason)),
            ("run", e(request_id or "none")),
            ("started", e(_started(started))),
            ("stored", e(_when(stored_at, now))),
            ("duration", e(_ms(duration))),
            ("attempts", e(data.get("attempts", 1))),
        ]
        parts = [
            f"<h2>Result {e(result_id)}</h2><dl>",
            "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts),
            "</dl>",
        ]
        error = data.get("error")
        if isinstance(error, dict):
            phase = f" in phase {error['phase']}" if error.get("phase") else ""
            parts.append(
                f'<div class="err"><b>{e(error.get("kind", "error"))}{e(phase)}</b>: '
                f'<span class="msg">{e(error.get("message", ""))}</span></div>'
            )
        parts.append("<h2>Phases</h2>")
        parts.append(_waterfall(data.get("phases"), duration))
        metrics = data.get("metrics")
        if isinstance(metrics, dict) and metrics:
            parts.append("<h2>Metrics</h2>")
            parts.append(
                _table(
                    ["metric", "value"],
                    (
                        f'<tr><td>{e(k)}</td><td class="n">{e(v)}</td></tr>'
                        for k, v in list(metrics.items())[:200]
                    ),
                    "",
                )
            )
        assertions = data.get("assertions")
        if isinstance(assertions, list) and assertions:
            parts.append("<h2>Assertions</h2>")
            parts.append(
                _table(
                    ["assertion", "passed", "expected", "observed"],
                    (
                        f"<tr><td>{e(a.get('name', ''))}</td><td>{e(a.get('passed', ''))}</td>"
                        f"<td>{e(a.get('expected', ''))}</td>"
                        f'<td class="msg">{e(a.get("observed", ""))}</td></tr>'
                        for a in assertions[:200]
                        if isinstance(a, dict)
                    ),
                    "",
                )
            )
        tls = data.get("tls")
        if isinstance(tls, dict):
            parts.append("<h2>TLS</h2><dl>")
            parts.extend(
                f"<dt>{e(key)}</dt><dd>{e(tls.get(key, ''))}</dd>"
                for key in ("version", "cipher", "alpn", "server_name", "verified")
            )
            chain = tls.get("chain")
            if isinstance(chain, list) and chain and isinstance(chain[0], dict):
                leaf = chain[0]
                parts.append(f"<dt>subject</dt><dd>{e(leaf.get('subject', ''))}</dd>")
                parts.append(f"<dt>not after</dt><dd>{e(leaf.get('not_after', ''))}</dd>")
            parts.append("</dl>")
        title = f"probekit status: result of {monitor_id}"
        return 200, _HTML, _document(title, "".join(parts), now), _HEADERS


def _waterfall(phases: Any, duration: float) -> str:
    """A result's phases as bars on one time axis (start offset and duration)."""
    if not isinstance(phases, list) or not phases:
        return '<p class="muted">no phases recorded</p>'
    items = [
        (str(ph.get("name", "?")), _number(ph.get("start")), _number(ph.get("duration")))
        for ph in phases[:100]
        if isinstance(ph, dict)
    ]
    span = max([duration, *(start + length for _, start, length in items)]) or 1.0
    rows = []
    for name, start, length in items:
        left = 100.0 * start / span
        width = max(100.0 * length / span, 0.3)
        rows.append(
            f'<tr><td>{e(name)}</td><td class="n">{e(_ms(start))}</td>'
            f'<td class="n">{e(_ms(length))}</td><td style="width:60%"><div class="wf">'
            f'<i style="left:{left:.2f}%;width:{min(width, 100.0 - left):.2f}%"></i>'
            "</div></td></tr>"
        )
    return _table(["phase", "start", "duration", "timeline"], rows, "no phases recorded")


def warn_if_unreachable(settings: ControlSettings) -> None:
    """Log why a configured status page cannot be used safely: no metrics port to serve it
    on, or a metrics host off loopback (the page is plain HTTP, its token in clear text)."""
    from .._validate import is_loopback

    if settings.metrics_port is None:
        log.warning("status_token is set but metrics_port is not: no status page is served")
    elif not is_loopback(settings.metrics_host or "0.0.0.0"):  # noqa: S104 - a name, not a bind
        log.warning(
            "the status page on %s is plain HTTP: its token crosses the network in clear text",
            settings.metrics_host or "every interface",
        )
