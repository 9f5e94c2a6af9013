"""The control plane's status page at the HTTP level: off by default, the token, escaping of
hostile values, and what the pages say (the browser test is interop/test_status_page.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from probekit import DefinitionErrors, ErrorKind, Phase, ProbeError, Result, Secret, Status
from probekit import protocol as p
from probekit.control import ControlPlane, ControlSettings, MemorySink, _status, load_control_config
from probekit.control import _store as db
from test_control import TOKEN, join

pytestmark = pytest.mark.usefixtures("control_store")

STATUS_TOKEN = "status-token-canary-3#z"
LAB_TOKEN = "lab-token-canary-5#k"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@contextlib.asynccontextmanager
async def plane(**extra: Any) -> AsyncIterator[ControlPlane]:
    values: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "tick_interval": 0.02,
        "missed_heartbeats": 25,
        "startup_grace": 60.0,
        "prune_interval": 3600.0,
        "metrics_port": 0,
        "status_token": Secret(STATUS_TOKEN),
    }
    values.update(extra)
    settings = ControlSettings(tokens={"office": Secret(TOKEN), "lab": Secret(LAB_TOKEN)}, **values)
    async with ControlPlane(settings, sinks=[MemorySink()]) as cp:
        yield cp


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: str


async def get(
    cp: ControlPlane,
    path: str,
    *,
    auth: str | None = f"Bearer {STATUS_TOKEN}",
    method: str = "GET",
) -> Reply:
    assert cp.metrics_address is not None
    reader, writer = await asyncio.open_connection(*cp.metrics_address)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if auth is not None:
        head += f"Authorization: {auth}\r\n"
    writer.write((head + "\r\n").encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    top, _, body = data.decode().partition("\r\n\r\n")
    lines = top.split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, body)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def result(
    status: Status,
    *,
    target: str = "127.0.0.1:9",
    error: ProbeError | None = None,
    phases: tuple[Phase, ...] = (),
    started_at: dt.datetime | None = None,
    duration: float = 0.05,
) -> Result:
    return Result(
        kind="tcp",
        target=target,
        status=status,
        started_at=started_at or dt.datetime.now(dt.UTC),
        duration=duration,
        error=error,
        phases=phases,
    )


async def send(inst: Any, monitor_id: str, res: Result) -> str:
    result_id = uuid.uuid4().hex
    envelope = p.ResultEnvelope(
        result_id=result_id,
        monitor_id=monitor_id,
        request_id=None,
        reason="scheduled",
        instance_id=inst.instance_id,
        result=res,
    )
    await inst.send(p.Results(results=(envelope,)))
    await inst.expect(p.Ack)
    return result_id


async def store_row(cp: ControlPlane, monitor_id: str, status: str, started: float) -> None:
    """A result row written straight into the database, started at ``started``."""
    at = dt.datetime.fromtimestamp(started, dt.UTC).isoformat()
    row = (uuid.uuid4().hex, monitor_id, "office", "a", None, "scheduled", status, None, at)
    rows = [(*row, started, '{"duration": 0.01}')]
    await cp._store.call(lambda c: db.insert_results(c, rows))


def bar_cells(page: str, monitor_id: str) -> list[str]:
    """The classes of the availability bar's cells on ``monitor_id``'s row."""
    row = next(r for r in page.split("<tr>") if f">{monitor_id}</a>" in r)
    bar = re.search(r'<div class="bar" role="img" aria-label="[^"]*">(.*?)</div>', row)
    assert bar is not None
    return re.findall(r'<i class="(\w*)"', bar.group(1))


# -- off by default, and the token ---------------------------------------------------------------


def test_the_page_is_off_by_default() -> None:
    assert ControlSettings(tokens={"office": Secret(TOKEN)}).status_token is None


async def test_without_a_status_token_the_paths_do_not_exist() -> None:
    async with plane(status_token=None) as cp:
        for path in ("/status", "/status/monitor?id=m1", "/status/result?id=x"):
            reply = await get(cp, path)
            assert reply.status == 404, path
            assert "probekit" not in reply.body
        assert (await get(cp, "/metrics")).status == 200


@pytest.mark.parametrize(
    ("auth", "allowed"),
    [
        (None, False),
        ("", False),
        (f"Bearer {STATUS_TOKEN}", True),
        (f"bearer {STATUS_TOKEN}", True),
        (f"Bearer {STATUS_TOKEN}x", False),
        (f"Bearer {STATUS_TOKEN[:-1]}", False),
        (f"Bearer {TOKEN}", False),  # a checkpoint's token does not open the page
        (basic("anyone", STATUS_TOKEN), True),
        (basic("", STATUS_TOKEN), True),
        (basic(STATUS_TOKEN, "wrong"), False),
        ("Basic " + base64.b64encode(STATUS_TOKEN.encode()).decode(), False),  # no colon
        ("Basic !!!not-base64!!!", False),
        (f"Token {STATUS_TOKEN}", False),
        (STATUS_TOKEN, False),
    ],
)
async def test_the_token_is_required(auth: str | None, allowed: bool) -> None:
    async with plane() as cp:
        for path in ("/status", "/status/monitor?id=m1", "/status/result?id=x"):
            reply = await get(cp, path, auth=auth)
            if allowed:
                assert reply.status in (200, 404), path  # 404: no such monitor or result
                assert "probekit status" in reply.body
            else:
                assert reply.status == 401, path
                assert reply.body == "unauthorized\n"
                assert reply.headers["www-authenticate"].startswith('Basic realm="probekit')
                assert STATUS_TOKEN not in reply.body


def test_authorized_compares_the_whole_token() -> None:
    token = Secret("abc")
    assert _status.authorized("Bearer abc", token)
    assert _status.authorized("  Bearer   abc  ", token)
    assert not _status.authorized("Bearer ab", token)
    assert not _status.authorized("Bearer abcd", token)
    assert not _status.authorized("Bearer", token)
    assert _status.authorized(basic("u", "abc"), token)
    assert _status.authorized(basic("u:v", "abc").replace("dTp2", "dTp2"), token) is False


async def test_only_get_and_head_are_answered() -> None:
    async with plane() as cp:
        reply = await get(cp, "/status", method="POST")
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"
        head = await get(cp, "/status", method="HEAD")
        assert head.status == 200
        assert head.body == ""
        assert int(head.headers["content-length"]) > 0


async def test_every_page_forbids_scripts_framing_and_caching() -> None:
    async with plane() as cp:
        await cp.add_monitor("m1", "office", {"kind": "tcp", "host": "127.0.0.1", "port": 9}, 60)
        for path in ("/status", "/status/monitor?id=m1", "/status/result?id=nope"):
            reply = await get(cp, path)
            policy = reply.headers["content-security-policy"]
            assert "default-src 'none'" in policy
            assert "script-src" not in policy
            assert "frame-ancestors 'none'" in policy
            assert reply.headers["cache-control"] == "no-store"
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.headers["content-type"] == "text/html; charset=utf-8"
            # no external asset: nothing is fetched from anywhere
            assert not re.search(r"(src|href)=\"?(https?:)?//", reply.body)
            assert "<link" not in reply.body
            assert "<script" not in reply.body


# -- what it shows ---------------------------------------------------------------------------


async def test_the_overview_shows_checkpoints_instances_monitors_and_alerts() -> None:
    async with plane(startup_grace=0.0, missed_heartbeats=2) as cp:
        await cp.add_monitor("web", "office", {"kind": "http", "url": "https://intranet/"}, 60)
        await cp.add_monitor("db", "office", {"kind": "tcp", "host": "127.0.0.1", "port": 5432}, 30)
        a = await join(cp, "inst-a", kinds=("tcp", "http"))
        b = await join(cp, "inst-b", kinds=("tcp", "http"))
        await a.expect(p.Sync)
        await b.expect(p.Sync)
        # lab is down after 2 heartbeat intervals of silence; office's instances keep beating
        beats = [asyncio.create_task(x.beat(0.05)) for x in (a, b)]
        await send(a, "web", result(Status.UP))
        await send(b, "web", result(Status.DOWN))
        await send(a, "db", result(Status.DEGRADED))
        sink = cp.sinks[0]
        assert isinstance(sink, MemorySink)
        # lab never connects: checkpoint_down opens
        await sink.wait_for(lambda ev: any(x.kind == "alert_opened" for x in ev), 5)
        page = (await get(cp, "/status")).body
        # checkpoints and their state
        assert re.search(r"<td>office</td><td><span class=\"s s-up\">up</span></td>", page)
        assert re.search(r"<td>lab</td><td><span class=\"s s-down\">down</span></td>", page)
        # instances
        assert re.search(r"<td>inst-a</td><td>office</td><td><span class=\"s s-up\">", page)
        # monitors, their targets and the latest status per instance
        assert "https://intranet/" in page
        assert "127.0.0.1:5432" in page
        assert "inst-a: up" in page
        assert "inst-b: down" in page
        assert "inst-a: degraded" in page
        assert "50.00 %" in page  # web: one up, one down
        assert "100.00 %" in page  # db: degraded counts as available
        # the open alert
        assert "Open alerts (1)" in page
        assert "checkpoint_down" in page
        # no maintenance section without a maintenance window
        assert "Maintenance" not in page
        for task in beats:
            task.cancel()
        await a.conn.close()
        await b.conn.close()


async def test_the_availability_bar_covers_the_last_day_in_15_minute_buckets() -> None:
    async with plane() as cp:
        await cp.add_monitor("m1", "office", {"kind": "tcp", "host": "127.0.0.1", "port": 9}, 60)
        now = cp.clock.now().timestamp()
        await store_row(cp, "m1", "up", now - 60)  # the last bucket
        await store_row(cp, "m1", "down", now - 60)
        await store_row(cp, "m1", "up", now - 3 * 3600)
        await store_row(cp, "m1", "down", now - 12 * 3600)
        await store_row(cp, "m1", "unknown", now - 13 * 3600)  # left out of availability
        await store_row(cp, "m1", "down", now - 25 * 3600)  # older than a day: not counted
        page = (await get(cp, "/status")).body
        cells = bar_cells(page, "m1")
        assert len(cells) == _status.BUCKETS == 96
        assert cells[-1] == "o"  # as many up as down
        assert cells[-13] == "g"  # 3 hours ago
        assert cells[-49] == "r"  # 12 hours ago
        assert cells.count("") == 96 - 3
        assert "50.00 %" in page  # 2 available of 4 counted
        assert 'aria-label="availability over the last 24 hours: 50.00 %"' in page


async def test_monitors_with_an_open_alert_come_first_and_the_list_is_paged() -> None:
    async with plane() as cp:
        for i in range(_status.MONITORS_PER_PAGE + 5):
            await cp.add_monitor(f"m{i:03d}", "office", {"kind": "tcp", "host": "h", "port": 1}, 60)
        alert = ("alert_opened", "m104", 1.0, "down", "al-1", "monitor_down")
        from probekit.control._logic import Alert

        opened = (Alert("al-1", "monitor_down", "m104", 1.0, "down"), None)
        await cp._store.call(lambda c: db.record_event(c, alert, opened, None))
        first = (await get(cp, "/status")).body
        assert first.index(">m104</a>") < first.index(">m000</a>")
        assert ">m099</a>" not in first
        assert '<a href="/status?page=2">2</a>' in first
        second = (await get(cp, "/status?page=2")).body
        assert ">m099</a>" in second and ">m000</a>" not in second
        for bad in ("0", "x", "-1", "99999999"):
            assert (await get(cp, f"/status?page={bad}")).status == 400


async def test_a_monitor_page_lists_its_recent_results_and_a_result_its_waterfall() -> None:
    async with plane() as cp:
        await cp.add_monitor("web", "office", {"kind": "http", "url": "https://intranet/"}, 60)
        a = await join(cp, "inst-a", kinds=("tcp", "http"))
        await a.expect(p.Sync)
        phases = (Phase("dns", 0.0, 0.01), Phase("connect", 0.01, 0.03), Phase("tls", 0.04, 0.06))
        error = ProbeError(ErrorKind.TIMEOUT, "no answer in time", "tls")
        rid = await send(a, "web", result(Status.DOWN, phases=phases, error=error, duration=0.1))
        page = (await get(cp, "/status/monitor?id=web")).body
        assert "Monitor web" in page
        assert f'href="/status/result?id={rid}"' in page
        assert "timeout: no answer in time" in page
        assert "100.0 ms" in page
        assert re.search(r">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</a>", page)
        reply = await get(cp, f"/status/result?id={rid}")
        assert reply.status == 200
        body = reply.body
        assert "in phase tls" in body and "no answer in time" in body
        bars = re.findall(r'<i style="left:([\d.]+)%;width:([\d.]+)%"></i>', body)
        assert bars == [("0.00", "10.00"), ("10.00", "30.00"), ("40.00", "60.00")]
        for name in ("dns", "connect", "tls"):
            assert f"<td>{name}</td>" in body
        await a.conn.close()


async def test_unknown_monitors_and_results_are_404() -> None:
    async with plane() as cp:
        for path in (
            "/status/monitor?id=nope",
            "/status/monitor",
            "/status/result?id=nope",
            "/status/result",
            "/status/result?id=" + "x" * 5000,
        ):
            reply = await get(cp, path)
            assert reply.status == 404, path
            assert "probekit status" in reply.body


async def test_maintenance_windows_are_shown_when_the_plane_has_them() -> None:
    async with plane() as cp:
        cp.start_maintenance("deploy", 600, monitors=["web"], reason=HOSTILE)
        page = (await get(cp, "/status")).body
        assert "Maintenance windows (1)" in page
        assert "window_id=deploy" in page and "active=True" in page
        assert "<script" not in page and "<img" not in page

        def broken() -> list[dict[str, object]]:
            raise RuntimeError("no")

        cp.maintenance_status = broken  # type: ignore[method-assign]
        page = (await get(cp, "/status")).body
        assert "could not be read" in page


# -- hostile values ------------------------------------------------------------------------------


async def test_hostile_ids_targets_and_messages_are_escaped() -> None:
    async with plane() as cp:
        monitor_id = f"m{HOSTILE}"[:64]
        await cp.add_monitor(monitor_id, "office", {"kind": "tcp", "host": HOSTILE, "port": 1}, 60)
        a = await join(cp, f"i{HOSTILE}"[:64])
        await a.expect(p.Sync)
        error = ProbeError(ErrorKind.PROTOCOL, HOSTILE + '" onmouseover="x', HOSTILE)
        phases = (Phase(HOSTILE, 0.0, 0.01),)
        rid = await send(
            a, monitor_id, result(Status.DOWN, target=HOSTILE, error=error, phases=phases)
        )
        from probekit.control._logic import Alert

        opened = (Alert("al-x", "monitor_down", monitor_id, 1.0, HOSTILE), None)
        event = ("alert_opened", monitor_id, 1.0, HOSTILE, "al-x", "monitor_down")
        await cp._store.call(lambda c: db.record_event(c, event, opened, None))
        pages = [
            (await get(cp, "/status")).body,
            (await get(cp, "/status/monitor?id=" + _status.quote(monitor_id, safe=""))).body,
            (await get(cp, f"/status/result?id={rid}")).body,
            (await get(cp, "/status/monitor?id=" + _status.quote(HOSTILE, safe=""))).body,
        ]
        for page in pages:
            assert "<script" not in page
            assert "<img" not in page
            assert 'onmouseover="' not in page
            assert "&lt;script&gt;" in page
        assert "onmouseover=&quot;x" in pages[2]
        # the link to the monitor carries its id percent-encoded
        assert "/status/monitor?id=m%3Cscript%3E" in pages[0]
        await a.conn.close()


def test_a_monitors_target_comes_from_its_definition() -> None:
    assert _status._target({"kind": "http", "url": "https://a/"}) == "https://a/"
    assert _status._target({"kind": "tcp", "host": "h", "port": 1}) == "h:1"
    assert _status._target({"kind": "icmp", "host": "h"}) == "h"
    assert _status._target({"kind": "dns", "name": "n.org", "server": "s"}) == "n.org @ s"
    assert _status._target({"kind": "x"}) == ""


def test_start_times_are_shown_in_utc() -> None:
    assert _status._started("2026-01-02T03:04:05.6+02:00") == "2026-01-02 01:04:05 UTC"
    assert _status._started("not a time <b>") == "not a time <b>"  # escaped where shown
    assert _status._started("2026-01-02T03:04:05") == "2026-01-02T03:04:05"


def test_long_values_are_clipped() -> None:
    assert len(_status.e("x" * 10_000)) == 400
    assert _status.e("<&>\"'") == "&lt;&amp;&gt;&quot;&#x27;"


def test_a_waterfall_survives_nonsense_phases() -> None:
    phases = [
        {"name": "a", "start": float("nan"), "duration": -1},
        {"name": "b", "start": "x", "duration": None},
        "not a phase",
        {"name": "c", "start": 1e308, "duration": 1e308},
    ]
    text = _status._waterfall(phases, 0.0)
    assert text.count("<tr>") == 4  # the header and three phases
    assert "nan" not in text and "inf" not in text


# -- settings and config --------------------------------------------------------------------------


def test_an_empty_status_token_is_refused() -> None:
    from probekit import DefinitionError

    with pytest.raises(DefinitionError, match="status_token"):
        ControlSettings(tokens={"office": Secret(TOKEN)}, status_token=Secret(""))


def _config(tmp_path: Path, control: str) -> Path:
    path = tmp_path / "control.toml"
    path.write_text(
        f"""
[control]
port = 0
db = ":memory:"
{control}

[[checkpoints]]
id = "office"
token = {{ env = "OFFICE_TOKEN" }}

[[monitors]]
id = "m1"
checkpoint = "office"
kind = "tcp"
host = "127.0.0.1"
port = 9
"""
    )
    return path


def test_the_config_reads_status_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFICE_TOKEN", TOKEN)
    monkeypatch.setenv("STATUS_TOKEN", STATUS_TOKEN)
    path = _config(tmp_path, 'metrics_port = 0\nstatus_token = { env = "STATUS_TOKEN" }')
    config = load_control_config(path)
    assert config.settings.status_token == Secret(STATUS_TOKEN)
    assert STATUS_TOKEN not in repr(config.settings)


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ('status_token = { env = "OFFICE_TOKEN" }', "the same token as a checkpoint"),
        ('status_token = { env = "MISSING_STATUS" }', "MISSING_STATUS is not set"),
        ('status_token = "has space"', "spaces"),
        (
            'metrics_host = "0.0.0.0"\nmetrics_port = 0\nstatus_token = { env = "STATUS_TOKEN" }',
            "clear text",
        ),
    ],
)
def test_bad_status_tokens_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: str, message: str
) -> None:
    monkeypatch.setenv("OFFICE_TOKEN", TOKEN)
    monkeypatch.setenv("STATUS_TOKEN", STATUS_TOKEN)
    monkeypatch.delenv("MISSING_STATUS", raising=False)
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(_config(tmp_path, control))
    assert any(
        e.path.startswith("control.status_token") and message in str(e) for e in info.value.errors
    ), info.value.errors


def test_insecure_allows_the_page_off_loopback_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFICE_TOKEN", TOKEN)
    monkeypatch.setenv("STATUS_TOKEN", STATUS_TOKEN)
    warnings: list[str] = []
    control = 'metrics_host = "0.0.0.0"\nmetrics_port = 0\nstatus_token = { env = "STATUS_TOKEN" }'
    config = load_control_config(_config(tmp_path, control), insecure=True, warn=warnings.append)
    assert config.settings.status_token is not None
    assert any("clear text" in w for w in warnings)


async def test_a_reload_can_turn_the_page_on_and_off(caplog: pytest.LogCaptureFixture) -> None:
    async with plane(status_token=None) as cp:
        assert (await get(cp, "/status")).status == 404
        done = await cp.reconfigure(attrs.evolve(cp.settings, status_token=Secret(STATUS_TOKEN)))
        assert "status_token" in done.applied
        assert (await get(cp, "/status")).status == 200
        await cp.reconfigure(attrs.evolve(cp.settings, status_token=Secret("another-one")))
        assert (await get(cp, "/status")).status == 401
        await cp.reconfigure(attrs.evolve(cp.settings, status_token=None))
        assert (await get(cp, "/status")).status == 404


async def test_a_status_token_without_a_metrics_port_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with plane(metrics_port=None) as cp:
        assert cp.metrics_address is None
    assert "no status page is served" in caplog.text


def test_a_status_page_off_loopback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)},
        metrics_host="192.0.2.1",  # never bound: only the warning is checked
        metrics_port=9464,
        status_token=Secret(STATUS_TOKEN),
    )
    _status.warn_if_unreachable(settings)
    assert "clear text" in caplog.text
    caplog.clear()
    _status.warn_if_unreachable(attrs.evolve(settings, metrics_host="127.0.0.1"))
    assert caplog.text == ""
