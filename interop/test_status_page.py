"""The control plane's status page in a real browser: Debian's Chromium, headless, driven by
Playwright through the system browser (``/usr/bin/chromium``; nothing is downloaded).

A control plane on loopback holds two checkpoints (``office`` with two instances speaking the
protocol over WebSockets, ``branch`` never connecting, so its ``checkpoint_down`` alert is open),
four monitors with a day of history and live results. The browser logs in (HTTP basic, the
token as the password, after the page's challenge), follows the links from the overview to a
monitor and to one result, and checks what it renders: the phase waterfall's bars are measured
in the laid-out page, the availability bars' colours are read back from the computed style.
Hostile ids, targets and error messages must show as text: no element, no dialog, no request
anywhere but the page's own origin. The screenshots go to ``PROBEKIT_SCREENSHOTS`` when it is
set (``docs/img`` for the docs), else to the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from probekit import ErrorKind, Phase, ProbeError, Result, Secret, Status
from probekit import protocol as p
from probekit._serialization import converter
from probekit.control import ControlPlane, ControlSettings, MemorySink
from probekit.control import _store as db

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATUS_TOKEN = "status-browser-token-9#w"  # noqa: S105 - canary tokens, loopback only
OFFICE_TOKEN = "office-browser-token-2#e"  # noqa: S105
BRANCH_TOKEN = "branch-browser-token-4#r"  # noqa: S105
HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(2)>'
VIEWPORT = {"width": 1280, "height": 860}

MONITORS: dict[str, dict[str, Any]] = {
    "intranet": {"kind": "http", "url": "https://intranet.example/health"},
    "mail": {"kind": "smtp", "host": "mail.example", "port": 25},
    "dns": {"kind": "dns", "name": "example.org", "server": "192.0.2.53"},
    "vpn": {"kind": "tcp", "host": "vpn.example", "port": 443},
}
PHASES = (
    Phase("resolve", 0.0, 0.004),
    Phase("connect", 0.004, 0.012),
    Phase("tls", 0.016, 0.041),
    Phase("request", 0.057, 0.002),
    Phase("response", 0.059, 0.061),
)


def _result(
    status: Status,
    target: str,
    started: dt.datetime,
    *,
    error: ProbeError | None = None,
    phases: tuple[Phase, ...] = PHASES,
) -> Result:
    return Result(
        kind="http",
        target=target,
        status=status,
        started_at=started,
        duration=0.12,
        error=error,
        phases=phases,
        address="192.0.2.10:443",
    )


class Instance:
    """One checkpoint instance speaking the control protocol (hello, heartbeats, results)."""

    def __init__(self, conn: Any, instance_id: str) -> None:
        self.conn = conn
        self.instance_id = instance_id
        self.acks: asyncio.Queue[p.Ack] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        self._beat = asyncio.create_task(self._heartbeats())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            async for frame in self.conn:
                message = p.decode(frame)
                if isinstance(message, p.Ack):
                    await self.acks.put(message)

    async def _heartbeats(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            while True:
                beat = p.Heartbeat(
                    in_flight=0,
                    queue_depth=0,
                    spool_depth=0,
                    spool_dropped=0,
                    reconnects=0,
                    policy={},
                    sent_at=dt.datetime.now(dt.UTC),
                )
                await self.conn.send(p.encode(beat))
                await asyncio.sleep(0.5)

    async def send(self, monitor_id: str, result: Result) -> str:
        result_id = uuid.uuid4().hex
        envelope = p.ResultEnvelope(
            result_id=result_id,
            monitor_id=monitor_id,
            request_id=None,
            reason="scheduled",
            instance_id=self.instance_id,
            result=result,
        )
        await self.conn.send(p.encode(p.Results(results=(envelope,))))
        async with asyncio.timeout(10):
            await self.acks.get()
        return result_id

    async def close(self) -> None:
        self._beat.cancel()
        await self.conn.close()
        self._reader.cancel()


async def join(cp: ControlPlane, instance_id: str) -> Instance:
    from websockets.asyncio.client import connect

    conn = await connect(
        cp.url, additional_headers={"Authorization": f"Bearer {OFFICE_TOKEN}"}, proxy=None
    )
    hello = p.Hello(
        checkpoint_id="office",
        instance_id=instance_id,
        software_version="interop",
        kinds=("http", "smtp", "dns", "tcp"),
        holdings={},
    )
    await conn.send(p.encode(hello))
    return Instance(conn, instance_id)


async def history(cp: ControlPlane, monitor_id: str, target: str, outages: list[int]) -> None:
    """A day of results every 10 minutes, alternating between the instances; down in the
    ``outages`` (hours ago)."""
    now = cp.clock.now().timestamp()
    rows = []
    for step in range(1, 24 * 6):
        at = now - step * 600
        hours_ago = int((now - at) // 3600)
        status = Status.DOWN if hours_ago in outages else Status.UP
        started = dt.datetime.fromtimestamp(at, dt.UTC)
        error = (
            ProbeError(ErrorKind.TIMEOUT, "no answer in time", "connect")
            if status is Status.DOWN
            else None
        )
        body = json.dumps(converter.unstructure(_result(status, target, started, error=error)))
        instance = "office-a" if step % 2 else "office-b"
        rows.append(
            (uuid.uuid4().hex, monitor_id, "office", instance, None, "scheduled", status.value,
             error.kind.value if error else None, started.isoformat(), at, body)
        )  # fmt: skip
    await cp._store.call(lambda c: db.insert_results(c, rows))


@contextlib.asynccontextmanager
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = ControlSettings(
        tokens={"office": Secret(OFFICE_TOKEN), "branch": Secret(BRANCH_TOKEN)},
        db_path=str(tmp_path / "control.db"),
        startup_grace=0.0,
        heartbeat_interval=1.0,
        missed_heartbeats=2,
        metrics_port=0,
        status_token=Secret(STATUS_TOKEN),
    )
    async with ControlPlane(settings, sinks=[MemorySink()]) as cp:
        yield cp


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: interop/install.sh installs Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def screenshots(tmp_path: Path) -> Path:
    target = os.environ.get("PROBEKIT_SCREENSHOTS")
    path = Path(target) if target else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def origin(cp: ControlPlane) -> str:
    assert cp.metrics_address is not None
    host, port = cp.metrics_address
    return f"http://{host}:{port}"


async def populated(cp: ControlPlane) -> tuple[list[Instance], dict[str, str]]:
    """Monitors with history, two live instances and one fresh result per instance each; the
    id of the latest result of each monitor."""
    outages = {"intranet": [], "mail": [6, 7], "dns": [], "vpn": [0]}
    for monitor_id, definition in MONITORS.items():
        await cp.add_monitor(monitor_id, "office", definition, 300)
        target = (
            definition.get("url") or f"{definition.get('host', 'ns')}:{definition.get('port', 53)}"
        )
        await history(cp, monitor_id, str(target), outages[monitor_id])
    instances = [await join(cp, "office-a"), await join(cp, "office-b")]
    latest = {}
    now = dt.datetime.now(dt.UTC)
    for monitor_id in MONITORS:
        for inst in instances:
            down = monitor_id == "vpn"
            error = ProbeError(ErrorKind.CONNECT, "connection refused by 192.0.2.10:443", "connect")
            res = _result(
                Status.DOWN if down else Status.UP,
                str(MONITORS[monitor_id].get("url") or MONITORS[monitor_id].get("host")),
                now,
                error=error if down else None,
                phases=PHASES[:2] if down else PHASES,
            )
            latest[monitor_id] = await inst.send(monitor_id, res)
    sink = cp.sinks[0]
    assert isinstance(sink, MemorySink)
    await sink.wait_for(lambda events: any(e.kind == "alert_opened" for e in events), 10)
    return instances, latest


async def test_unauthenticated_browsers_get_the_challenge_and_nothing_else(
    tmp_path: Path, browser: Any
) -> None:
    from playwright.async_api import Error

    async with control_plane(tmp_path) as cp:
        await cp.add_monitor("intranet", "office", MONITORS["intranet"], 300)
        # No credentials: Chromium gets the Basic challenge, has nothing to answer it with,
        # and the navigation fails; the one response it saw is the 401.
        context = await browser.new_context()
        page = await context.new_page()
        responses: list[Any] = []
        page.on("response", lambda response: responses.append(response))
        with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            await page.goto(origin(cp) + "/status")
        assert [r.status for r in responses] == [401]
        assert (await responses[0].all_headers())["www-authenticate"].startswith("Basic")
        await context.close()
        # A wrong password (a checkpoint's token): the challenge is answered and refused, and
        # the browser shows the 401's body, nothing of the page.
        context = await browser.new_context(
            http_credentials={"username": "ops", "password": OFFICE_TOKEN}
        )
        page = await context.new_page()
        response = await page.goto(origin(cp) + "/status")
        assert response is not None
        assert response.status == 401
        assert (await page.locator("body").inner_text()).strip() == "unauthorized"
        assert "intranet" not in await page.content()
        await context.close()


async def test_the_status_page_in_chromium(tmp_path: Path, browser: Any) -> None:
    shots = screenshots(tmp_path)
    async with control_plane(tmp_path) as cp:
        instances, latest = await populated(cp)
        base = origin(cp)
        context = await browser.new_context(
            http_credentials={"username": "ops", "password": STATUS_TOKEN}, viewport=VIEWPORT
        )
        page = await context.new_page()
        requests: list[str] = []
        dialogs: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))

        # The overview
        response = await page.goto(base + "/status")
        assert response is not None and response.status == 200
        assert await page.title() == "probekit status"
        office = page.locator("tr", has=page.locator("td", has_text="office")).first
        assert await office.locator(".s-up").inner_text() == "up"
        branch = page.locator("tr", has=page.locator("td", has_text="branch")).first
        assert await branch.locator(".s-down").inner_text() == "down"
        assert await page.get_by_text("checkpoint branch is down").count() == 1
        for instance_id in ("office-a", "office-b"):
            row = page.locator("tr", has=page.locator("td", has_text=instance_id)).first
            assert await row.locator(".s-up").count() == 1
        bars = page.locator("div.bar")
        assert await bars.count() == len(MONITORS)
        assert await bars.first.locator("i").count() == 96
        # the colours as laid out: mail was down 6-7 hours ago, intranet never
        mail = page.locator("tr", has=page.get_by_role("link", name="mail", exact=True))
        colours = await mail.locator("div.bar i").evaluate_all(
            "cells => cells.map(c => getComputedStyle(c).backgroundColor)"
        )
        assert "rgb(216, 59, 59)" in colours  # a red bucket
        assert colours[-2] == "rgb(47, 166, 93)"  # green half an hour ago
        intranet = page.locator("tr", has=page.get_by_role("link", name="intranet", exact=True))
        assert await intranet.locator("td.n").inner_text() == "100.00 %"
        await page.screenshot(path=str(shots / "status-overview.png"), full_page=True)

        # A monitor, reached by its link
        await page.get_by_role("link", name="vpn", exact=True).click()
        await page.wait_for_load_state()
        assert page.url == base + "/status/monitor?id=vpn"
        assert await page.locator("h2").first.inner_text() == "Monitor vpn"
        assert await page.locator("div.bar.big i").count() == 96
        assert await page.get_by_text("connection refused by 192.0.2.10:443").count() >= 1
        await page.screenshot(path=str(shots / "status-monitor.png"))

        # One result and its waterfall, reached from the monitor page
        await page.goto(base + "/status/monitor?id=intranet")
        await page.locator(f'a[href="/status/result?id={latest["intranet"]}"]').first.click()
        await page.wait_for_load_state()
        assert page.url == base + f"/status/result?id={latest['intranet']}"
        bars_boxes = []
        for i in range(len(PHASES)):
            track = page.locator("div.wf").nth(i)
            outer = await track.bounding_box()
            inner = await track.locator("i").bounding_box()
            assert outer is not None and inner is not None
            bars_boxes.append(
                ((inner["x"] - outer["x"]) / outer["width"], inner["width"] / outer["width"])
            )
        span = 0.12
        for (left, width), phase in zip(bars_boxes, PHASES, strict=True):
            assert left == pytest.approx(phase.start / span, abs=0.01)
            assert width == pytest.approx(phase.duration / span, abs=0.01)
        # each bar starts where the one before it ends: a waterfall
        for (left, width), (next_left, _) in itertools.pairwise(bars_boxes):
            assert next_left == pytest.approx(left + width, abs=0.01)
        await page.screenshot(path=str(shots / "status-result.png"), full_page=True)

        assert dialogs == []
        assert all(url.startswith(base + "/") for url in requests), requests
        await context.close()
        for inst in instances:
            await inst.close()
    for name in ("status-overview.png", "status-monitor.png", "status-result.png"):
        data = (shots / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")


async def test_hostile_values_render_as_text(tmp_path: Path, browser: Any) -> None:
    async with control_plane(tmp_path) as cp:
        monitor_id = f"m{HOSTILE}"[:64]
        await cp.add_monitor(monitor_id, "office", {"kind": "tcp", "host": HOSTILE, "port": 1}, 60)
        inst = await join(cp, f"i{HOSTILE}"[:64])
        error = ProbeError(ErrorKind.PROTOCOL, f"server said {HOSTILE}", "banner")
        phases = (Phase(HOSTILE, 0.0, 0.01),)
        result_id = await inst.send(
            monitor_id,
            _result(Status.DOWN, HOSTILE, dt.datetime.now(dt.UTC), error=error, phases=phases),
        )
        context = await browser.new_context(
            extra_http_headers={"Authorization": f"Bearer {STATUS_TOKEN}"}
        )
        page = await context.new_page()
        dialogs: list[str] = []
        requests: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        page.on("request", lambda request: requests.append(request.url))
        base = origin(cp)
        await page.goto(base + "/status")
        await page.get_by_role("link", name=monitor_id, exact=True).click()
        await page.wait_for_load_state()
        assert await page.locator("h2").first.inner_text() == f"Monitor {monitor_id}"
        await page.goto(base + f"/status/result?id={result_id}")
        for path in ("/status", page.url.removeprefix(base)):
            await page.goto(base + path)
            assert await page.locator("script").count() == 0
            assert await page.locator("img").count() == 0
            text = await page.locator("body").inner_text()
            assert "<script>" in text  # shown as text
        assert f"server said {HOSTILE}" in await page.locator("body").inner_text()
        assert dialogs == []
        assert all(url.startswith(base + "/") for url in requests), requests
        await context.close()
        await inst.close()


async def test_the_browser_is_debians_chromium(browser: Any) -> None:
    """The browser driven is the Debian package's, not one Playwright downloaded."""
    query = await asyncio.create_subprocess_exec(
        "dpkg-query", "-W", "-f=${Version}", "chromium", stdout=asyncio.subprocess.PIPE
    )
    package = (await query.communicate())[0].decode()
    assert query.returncode == 0
    # Debian's version is the upstream one with a revision: 156.0.8078.108-1~deb12u1
    assert package.startswith(browser.version + "-"), (package, browser.version)
    assert shutil.which("chromium") == CHROMIUM
