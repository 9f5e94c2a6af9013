"""A third-party probe kind in a distribution of its own works everywhere a built-in kind does.

Issue 9, acceptance 2. ``tests/plugin_dist`` is the distribution ``probekit-echo-plugin``; it
declares the kind ``echo`` in the ``probekit.probes`` entry-point group, written with the public
SDK only. The module's ``plugin_dir`` fixture builds and installs it with pip (hatchling in an
isolated build environment fetched from PyPI; about 2-3 s) into a temporary directory with
``pip install --no-deps --target DIR``, puts ``DIR`` on ``sys.path`` for the in-process tests and
on ``PYTHONPATH`` for the commands run as subprocesses, and takes it away again at the end.

Why a target directory and not the test virtualenv itself: an installed distribution is found by
its ``.dist-info`` (and its ``entry_points.txt``) on any ``sys.path`` entry, and the virtualenv's
site-packages is just one such entry, so ``importlib.metadata`` and probekit see exactly what
they would see after ``pip install`` into the virtualenv. The virtualenv, though, is shared by
every other test module of the session (whose expectations list the kinds there are) and by
other worktrees, and a teardown that never ran would leave ``echo`` there for good.

Each test runs against an echo server on loopback that the test starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve

from probekit import (
    DefinitionErrors,
    ErrorKind,
    ProbeContext,
    Secret,
    Status,
    build_probe,
    probe_to_dict,
    result_from_json,
)
from probekit.control import ControlPlane, ControlSettings
from probekit.probes import get_kind, kind_errors, kinds
from probekit.probes._registry import reset_plugins
from probekit.protocol import Hello, decode

DIST = Path(__file__).parent / "plugin_dist"
PLUGIN_MODULE = "probekit_echo_plugin"
TOKEN = "plugin-token-canary-5!k"


# -- the installed distribution ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The directory pip installed ``probekit-echo-plugin`` into, on ``sys.path`` meanwhile."""
    assert "echo" not in kinds(), "an echo kind is there already: these tests would prove nothing"
    root = tmp_path_factory.mktemp("plugin")
    source = root / "source"  # a copy, so that no build leaves anything in the work tree
    shutil.copytree(DIST, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-*"))
    target = root / "site-packages"
    pip = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-input"),
            *("--disable-pip-version-check", "--no-deps", "--target", str(target), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    sys.path.append(str(target))
    importlib.invalidate_caches()
    reset_plugins()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.partition(".")[0] == PLUGIN_MODULE]:
            del sys.modules[name]
        importlib.invalidate_caches()
        reset_plugins()


def plugin_env(plugin_dir: Path) -> dict[str, str]:
    """The environment of a subprocess that has the plugin installed (and probekit importable)."""
    paths = [str(plugin_dir), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def probekit(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "probekit", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


# -- echo servers --------------------------------------------------------------------------------


class _EchoHandler(socketserver.StreamRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        line = self.rfile.readline(4096)
        self.server.lines.append(line)
        self.wfile.write(self.server.reply(line))


class EchoServer(socketserver.ThreadingTCPServer):
    """A TCP server on 127.0.0.1 that reads one line per connection and answers ``reply(line)``
    (the line itself by default), keeping every line it read."""

    daemon_threads = True

    def __init__(self, reply: Callable[[bytes], bytes] = lambda line: line) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.reply = reply
        self.lines: list[bytes] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def echo_server(reply: Callable[[bytes], bytes] = lambda line: line) -> Iterator[EchoServer]:
    server = EchoServer(reply)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- in process: the registry, definitions, a check -----------------------------------------------


def test_the_kind_comes_from_the_installed_distribution(plugin_dir: Path) -> None:
    kind = get_kind("echo")
    assert Path(inspect.getfile(kind.cls)).is_relative_to(plugin_dir)
    assert kind.cls.__module__ == PLUGIN_MODULE
    assert {"echo", "http", "tcp"} <= set(kinds())
    assert kinds()["echo"] is kind
    assert [m.name for m in kind.metrics] == ["probekit_echo_bytes"]


async def test_a_definition_of_the_kind_builds_and_checks_up(
    plugin_dir: Path, ctx: ProbeContext
) -> None:
    with echo_server() as server:
        definition = {"kind": "echo", "host": "127.0.0.1", "port": server.port, "word": "ping"}
        probe = build_probe(definition)
        result = await probe.check(ctx)
        bare = build_probe({"kind": "echo", "host": "127.0.0.1", "port": server.port})
        bare_result = await bare.check(ctx)
    assert result.status is Status.UP, result
    assert (result.kind, result.target) == ("echo", f"127.0.0.1:{server.port}")
    assert result.address == f"127.0.0.1:{server.port}"
    assert result.phase_names() == ("resolve", "connect", "exchange")
    assert result.metrics["echo_bytes"] == len(b"ping\n")
    assert bare_result.status is Status.UP, bare_result
    assert server.lines == [b"ping\n", b"hello\n"]  # "hello" is the default word
    assert probe_to_dict(probe) == definition
    assert build_probe(probe_to_dict(probe)) == probe


async def test_a_wrong_echo_is_down_with_a_protocol_error_in_exchange(
    plugin_dir: Path, ctx: ProbeContext
) -> None:
    with echo_server(lambda line: b"nope\n") as server:
        probe = build_probe({"kind": "echo", "host": "127.0.0.1", "port": server.port})
        result = await probe.check(ctx)
    assert result.status is Status.DOWN, result
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.PROTOCOL, "exchange")
    assert "'hello'" in result.error.message and "nope" in result.error.message
    assert result.phase_names() == ("resolve", "connect", "exchange")
    assert result.metrics["echo_bytes"] == len(b"nope\n")


def test_an_invalid_definition_of_the_kind_says_what_is_wrong_where(plugin_dir: Path) -> None:
    def problems(definition: dict[str, Any]) -> list[str]:
        with pytest.raises(DefinitionErrors) as info:
            build_probe(definition)
        return [str(e) for e in info.value.errors]

    echo = {"kind": "echo", "host": "127.0.0.1", "port": 7}
    assert problems({**echo, "wrod": "x"}) == ["wrod: unknown field (did you mean 'word'?)"]
    assert problems({**echo, "port": 0}) == ["port: expected a port number (1-65535), got 0"]
    assert problems({**echo, "word": "two\nlines"}) == [
        "word: expected a non-empty word on one line, got 'two\\nlines'"
    ]
    (unknown,) = problems({**echo, "kind": "ecko"})
    assert unknown.startswith("kind: unknown probe kind 'ecko' (did you mean 'echo'?)")


def test_a_broken_entry_point_does_not_break_the_other_kinds(plugin_dir: Path) -> None:
    errors = kind_errors()
    assert errors["broken"].startswith("AttributeError: ") and "MISSING" in errors["broken"]
    assert errors["notakind"].startswith("TypeError: ")
    assert "is not a ProbeKind" in errors["notakind"]
    found = kinds()
    assert {"echo", "http", "tcp"} <= set(found)
    assert not {"broken", "notakind"} & set(found)
    with pytest.raises(DefinitionErrors, match="'broken' is installed but failed to load"):
        build_probe({"kind": "broken", "host": "127.0.0.1", "port": 1})


# -- the commands, with the plugin on the subprocess's path ----------------------------------------


def test_probekit_run_runs_a_monitor_of_the_kind(plugin_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "monitors.toml"
    jsonl = tmp_path / "results.jsonl"
    with echo_server() as server:
        config.write_text(
            "[[monitors]]\n"
            'id = "echo-mon"\n'
            'kind = "echo"\n'
            'host = "127.0.0.1"\n'
            f"port = {server.port}\n"
            'word = "marco"\n'
        )
        proc = probekit(
            "run", str(config), "--once", "--jsonl", str(jsonl), env=plugin_env(plugin_dir)
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^echo-mon +UP ", proc.stdout, re.M), proc.stdout
    assert "Traceback" not in proc.stderr
    (line,) = jsonl.read_text().splitlines()
    row = json.loads(line)
    assert (row["monitor"], row["kind"], row["status"]) == ("echo-mon", "echo", "up")
    assert [p["name"] for p in row["phases"]] == ["resolve", "connect", "exchange"]
    assert row["metrics"]["echo_bytes"] == len(b"marco\n")
    assert server.lines == [b"marco\n"]


def test_probekit_check_runs_the_kind_with_its_own_option(plugin_dir: Path) -> None:
    with echo_server() as server:
        proc = probekit(
            *("check", "echo", f"127.0.0.1:{server.port}", "--word", "hi", "--json"),
            env=plugin_env(plugin_dir),
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = result_from_json(proc.stdout)
    assert result.status is Status.UP
    assert (result.kind, result.target) == ("echo", f"127.0.0.1:{server.port}")
    assert result.phase_names() == ("resolve", "connect", "exchange")
    assert result.metrics["echo_bytes"] == len(b"hi\n")
    assert server.lines == [b"hi\n"]


def test_probekit_check_help_lists_the_kind_and_its_options(plugin_dir: Path) -> None:
    env = plugin_env(plugin_dir)
    listing = probekit("check", "--help", env=env)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"\becho\b", listing.stdout), listing.stdout
    own = probekit("check", "echo", "--help", env=env)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "--word" in own.stdout and "HOST:PORT" in own.stdout, own.stdout


# -- a checkpoint instance, run as a command, driven by the reference control plane ----------------


class Relay:
    """A WebSocket relay between checkpoint instances and a control plane, keeping every frame
    an instance sends: the control plane does not record the kinds an instance's ``hello`` lists,
    so the test reads them off the wire."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.frames: list[str | bytes] = []
        self._server: Server | None = None

    async def __aenter__(self) -> Relay:
        self._server = await serve(self._relay, "127.0.0.1", 0, max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def _relay(self, inbound: ServerConnection) -> None:
        assert inbound.request is not None
        headers = {"Authorization": inbound.request.headers.get("Authorization", "")}
        async with connect(self.upstream, additional_headers=headers, max_size=None) as outbound:

            async def pump(
                source: ServerConnection | ClientConnection,
                sink: ServerConnection | ClientConnection,
                keep: bool,
            ) -> None:
                async for frame in source:
                    if keep:
                        self.frames.append(frame)
                    await sink.send(frame)

            tasks = [
                asyncio.create_task(pump(inbound, outbound, keep=True)),
                asyncio.create_task(pump(outbound, inbound, keep=False)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_checkpoint_runs_the_kind_for_the_control_plane(
    plugin_dir: Path, tmp_path: Path
) -> None:
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)},
        db_path=str(tmp_path / "control.db"),
        heartbeat_interval=0.5,
        tick_interval=0.02,
    )
    log = tmp_path / "checkpoint.log"
    definition: dict[str, Any] = {"kind": "echo", "host": "127.0.0.1", "word": "polo"}
    with echo_server() as server, log.open("w") as output:
        async with ControlPlane(settings) as cp, Relay(cp.url) as relay:
            await cp.add_monitor(
                "echo-mon", "office", {**definition, "port": server.port}, interval=0.3
            )
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "probekit", "checkpoint", "--url", relay.url),
                *("--token-env", "PK_TEST_TOKEN", "--insecure", "--heartbeat-interval", "0.5"),
                *("--checkpoint-id", "office", "--instance-id", "plug"),
                *("--spool", str(tmp_path / "spool.db")),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env={**plugin_env(plugin_dir), "PK_TEST_TOKEN": TOKEN},
            )
            try:
                deadline = time.monotonic() + 20
                rows: list[dict[str, Any]] = []
                while not rows and time.monotonic() < deadline and proc.returncode is None:
                    await asyncio.sleep(0.1)
                    rows = [r for r in await cp.results("echo-mon") if r["status"] == "up"]
                assert rows, log.read_text()
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    code = await proc.wait()
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    row = rows[0]
    assert (row["instance_id"], row["reason"]) == ("plug", "scheduled")
    with contextlib.closing(sqlite3.connect(tmp_path / "control.db")) as db:
        (body,) = db.execute(
            "SELECT body FROM results WHERE result_id = ?", (row["result_id"],)
        ).fetchone()
    result = result_from_json(body)
    assert (result.kind, result.status) == ("echo", Status.UP)
    assert result.phase_names() == ("resolve", "connect", "exchange")
    assert b"polo\n" in server.lines
    hello = decode(relay.frames[0])
    assert isinstance(hello, Hello)
    assert hello.instance_id == "plug"
    assert {"echo", "http", "tcp"} <= set(hello.kinds)
    assert not {"broken", "notakind"} & set(hello.kinds)
