"""A canary secret in every secret field of every built-in kind never shows anywhere.

For each field the kind's profile names (a table test proves that is all of them), the canary goes
in by reference (``{"secret": NAME}``) and the check fails every way it can: the target refuses
the connection, stays silent past the deadline, refuses the credentials while echoing back
everything it was sent, or the dial path itself blows up with a traceback. With every logger at
DEBUG, the canary (and its base64 form, as basic and proxy auth send it) must be absent from the
result, its JSON, the probe's repr and plain form, and every log line and traceback. Then a
control plane and a checkpoint run the same definitions end to end, and neither the
checkpoint's spool nor the control plane's database holds it on disk.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hostile_kinds import KindProfile, builtin_profiles, http_response, read_request
from hostile_servers import silence

from probekit import (
    Dialer,
    ProbeContext,
    Result,
    Secret,
    StaticResolver,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.checkpoint import Checkpoint, CheckpointSettings
from probekit.control import ControlPlane, ControlSettings, MemorySink
from servers import GuardedConnector, TcpServer, closed_port, make_context

CANARY = "cAnArY-7#~q1Zx9-never-shown"
TOKEN = "canary-suite-token-4#r"
TOTAL = 0.5


def forbidden() -> list[str]:
    """The canary as a leak could spell it: as is, and as basic/proxy auth encode it."""
    encoded = base64.b64encode(f"probe:{CANARY}".encode()).decode()
    return [CANARY, encoded]


def assert_hidden(text: str | bytes, where: str) -> None:
    for form in forbidden():
        needle: str | bytes = form.encode() if isinstance(text, bytes) else form
        assert needle not in text, f"the canary ({form!r}) is in {where}"


async def refusing_echo_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Refuses the credentials, and echoes the request (with them) in a header and the body."""
    head = await read_request(reader)
    first = head.split(b"\r\n", 1)[0]
    echo = b" ".join(head.split(b"\r\n"))
    extra = (
        b"WWW-Authenticate: Basic realm=" + echo[:2000] + b"\r\nX-Echo: " + echo[:2000] + b"\r\n"
    )
    status = "407 Proxy Authentication Required" if first.startswith(b"CONNECT") else "401 No"
    writer.write(http_response(echo, status, extra))


async def refusing_echo_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every command with an error that repeats it, password and all."""
    while data := await reader.read(4096):
        writer.write(b"-WRONGPASS invalid password: " + data.replace(b"\r\n", b" ") + b"\r\n")
        await writer.drain()


REFUSING = {"http": refusing_echo_http, "line": refusing_echo_line}


@pytest.fixture(scope="module")
def client_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A client certificate and its key, encrypted with a password that is *not* the canary,
    so loading it with the canary fails (a failure that reads the password)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("client.test")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a different password"),
    )
    folder = tmp_path_factory.mktemp("client")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(leaf.cert_chain_pems[0].bytes())
    key_path.write_bytes(encrypted)
    return str(cert_path), str(key_path)


def _with_client_files(node: Any, pair: tuple[str, str]) -> None:
    """Give every TLS options object holding a key password the files it unlocks."""
    if isinstance(node, dict):
        if "client_key_password" in node:
            node["client_cert"], node["client_key"] = pair
        for value in node.values():
            _with_client_files(value, pair)
    elif isinstance(node, list):
        for value in node:
            _with_client_files(value, pair)


#: Secret fields the canary goes into as a plain string (none: every one takes a reference).
BY_VALUE_ONLY: frozenset[str] = frozenset()


def definition(profile: KindProfile, path: str, port: int, pair: tuple[str, str]) -> dict[str, Any]:
    tls = path.endswith("client_key_password") and not path.startswith("steps")
    data = profile.definition("127.0.0.1", port, tls)
    secret = CANARY if path in BY_VALUE_ONLY else {"secret": "canary"}
    profile.secrets[path](data, secret, port)
    _with_client_files(data, pair)
    data["timeouts"] = {"total": TOTAL}
    return data


ROWS = [
    pytest.param(profile, path, id=f"{profile.name}-{path}")
    for profile in builtin_profiles()
    for path in profile.secrets
]


async def _broken_connector(ip: str, port: int, source: Any) -> Any:
    raise RuntimeError(f"the connector broke while dialling {ip}:{port}")


def _failing_ways(profile: KindProfile) -> dict[str, Callable[[], Any]]:
    return {
        "refused": lambda: None,
        "silent": lambda: TcpServer(silence),
        "refusing-echo": lambda: TcpServer(REFUSING[profile.family]),
        "traceback": lambda: TcpServer(silence),
    }


@pytest.mark.parametrize(("profile", "path"), ROWS)
async def test_the_canary_never_shows(
    profile: KindProfile, path: str, client_pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = {"canary": Secret(CANARY)}
    seen: list[Result] = []
    for way, make_server in _failing_ways(profile).items():
        server = make_server()
        port = closed_port() if server is None else (await server.start()).port
        try:
            probe = build_probe(definition(profile, path, port, client_pair), secrets=secrets)
            if way == "traceback":
                ctx = ProbeContext(
                    dialer=Dialer(resolver=StaticResolver({}), connector=_broken_connector)
                )
            else:
                ctx = make_context(connector=GuardedConnector())
            result = await probe.check(ctx)
        finally:
            if server is not None:
                await server.stop()
        assert result.error is not None, (way, result.summary())
        seen.append(result)
        for text, where in (
            (result_to_json(result), "the result's JSON"),
            (repr(result), "the result's repr"),
            (result.summary(), "the result's summary"),
            (repr(probe), "the probe's repr"),
            (str(probe), "the probe's str"),
            (json.dumps(probe_to_dict(probe)), "probe_to_dict"),
        ):
            assert_hidden(text, f"{where} ({way})")
    assert_hidden(caplog.text, "the log")
    assert any(r.exc_info for r in caplog.records), "no traceback was logged"
    assert {r.error.kind.value for r in seen if r.error} >= {"connect", "internal"}


async def _until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_the_canary_is_not_in_the_spool_or_the_control_plane_database(
    tmp_path: Path, client_pair: tuple[str, str]
) -> None:
    servers = {family: await TcpServer(handler).start() for family, handler in REFUSING.items()}
    try:
        plane = ControlSettings(
            tokens={"office": Secret(TOKEN)},
            db_path=str(tmp_path / "control.db"),
            heartbeat_interval=0.3,
            tick_interval=0.02,
        )
        async with ControlPlane(plane, sinks=[MemorySink()]) as cp:
            instance = CheckpointSettings(
                url=cp.url,
                token=Secret(TOKEN),
                checkpoint_id="office",
                instance_id="a",
                spool_path=str(tmp_path / "spool.db"),
                insecure=True,
                heartbeat_interval=0.3,
                reconnect_initial=0.05,
                reconnect_max=0.3,
                secrets={"canary": Secret(CANARY)},
            )
            async with Checkpoint(instance):
                monitors = []
                for row in ROWS:
                    profile, path = row.values
                    if path in BY_VALUE_ONLY:
                        continue
                    port = servers[profile.family].port
                    monitor = f"{profile.name}-{path}".replace(".", "-").replace("[]", "")
                    await cp.add_monitor(
                        monitor,
                        "office",
                        definition(profile, path, port, client_pair),
                        interval=0.2,
                    )
                    monitors.append(monitor)

                async def stored() -> bool:
                    counts = [len(await cp.results(m)) for m in monitors]
                    return min(counts) >= 2

                await _until(stored, 15, "two results of every monitor")
                rows = await cp.results()
                assert {r["status"] for r in rows} == {"down"}
                events = await cp.events()
    finally:
        for server in servers.values():
            await server.stop()
    assert_hidden(json.dumps(rows, default=str), "the control plane's results")
    assert_hidden(json.dumps(events, default=str), "the control plane's events")
    files = await asyncio.to_thread(_database_files, tmp_path)
    assert set(files) >= {"control.db", "spool.db"}
    for name, content in files.items():
        assert_hidden(content, name)


def _database_files(folder: Path) -> dict[str, bytes]:
    """Every SQLite file of the run (with write-ahead logs and shared memory) by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.db*"))}


def test_a_secret_reference_in_a_starttls_step_resolves() -> None:
    probe = build_probe(
        {
            "kind": "tcp",
            "host": "127.0.0.1",
            "port": 25,
            "steps": [{"starttls": {"client_key_password": {"secret": "canary"}}}],
        },
        secrets={"canary": Secret(CANARY)},
    )
    assert probe.steps[0].options.client_key_password.reveal() == CANARY
