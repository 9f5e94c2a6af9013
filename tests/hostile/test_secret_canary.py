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
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hostile_dns import framed, read_query
from hostile_kinds import (
    DnsHandlers,
    Family,
    Handler,
    KindProfile,
    builtin_profiles,
    http_response,
    make_server,
    read_request,
)
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
from probekit.probes._pgwire import SSL_REQUEST
from servers import GuardedConnector, closed_port, make_context

CANARY = "cAnArY-7#~q1Zx9-never-shown"
#: The canary as base64 text, for secret fields that must be base64 (a TSIG key): the key the
#: probe decodes is then the canary itself.
CANARY_BASE64 = base64.b64encode(CANARY.encode()).decode()
SECRETS = {"canary": Secret(CANARY), "canary-base64": Secret(CANARY_BASE64)}
TOKEN = "canary-suite-token-4#r"
TOTAL = 0.5


def forbidden() -> list[str]:
    """The canary as a leak could spell it: as is, as basic/proxy auth encode it, and as base64
    (SMTP's AUTH LOGIN sends it so; a TSIG key is written so)."""
    encoded = base64.b64encode(f"probe:{CANARY}".encode()).decode()
    return [CANARY, encoded, CANARY_BASE64]


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


def _echo(line: bytes) -> bytes:
    return line.rstrip(b"\r\n").replace(b"\r", b" ").replace(b"\n", b" ")


async def refusing_echo_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Offers STARTTLS (and says go ahead, so the client key is read) and AUTH; refuses the
    credentials, repeating what was sent."""
    writer.write(b"220 hostile.test ESMTP\r\n")
    while line := await reader.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"EHLO":
            writer.write(b"250-hostile.test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")
        elif verb == b"STARTTLS":
            writer.write(b"220 2.0.0 go ahead\r\n")
        else:
            writer.write(b"535 5.7.8 rejected: " + _echo(line) + b"\r\n")
        await writer.drain()


async def refusing_echo_imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK hostile.test IMAP4rev1 ready\r\n")
    while line := await reader.readline():
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        verb = rest.split(b" ", 1)[0].upper()
        if verb == b"CAPABILITY":
            writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n%s OK done\r\n" % tag)
        elif verb == b"STARTTLS":
            writer.write(b"%s OK begin TLS\r\n" % tag)
        else:
            writer.write(b"%s NO [AUTHENTICATIONFAILED] %s\r\n" % (tag, _echo(line)))
        await writer.drain()


async def refusing_echo_pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+OK hostile.test POP3 ready\r\n")
    while line := await reader.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"CAPA":
            writer.write(b"+OK\r\nUSER\r\nSTLS\r\n.\r\n")
        elif verb == b"STLS":
            writer.write(b"+OK begin TLS\r\n")
        elif verb == b"USER":
            writer.write(b"+OK " + _echo(line) + b"\r\n")
        else:
            writer.write(b"-ERR [AUTH] invalid: " + _echo(line) + b"\r\n")
        await writer.drain()


async def refusing_echo_ftp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Says go ahead to AUTH TLS (so the client key is read); refuses the login, repeating
    what was sent."""
    writer.write(b"220 hostile.test FTP ready\r\n")
    while line := await reader.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"AUTH":
            writer.write(b"234 go ahead\r\n")
        elif verb == b"USER":
            writer.write(b"331 password for " + _echo(line) + b"\r\n")
        else:
            writer.write(b"530 Login incorrect: " + _echo(line) + b"\r\n")
        await writer.drain()


async def refusing_echo_postgres(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Accepts TLS (so the client key is read), asks for the password in clear text, and
    refuses it, repeating everything the probe sent."""
    received = bytearray(await reader.read(4096))
    if received.startswith(SSL_REQUEST):
        writer.write(b"S")
        await writer.drain()
        received += await reader.read(4096)
    writer.write(b"R" + struct.pack("!ii", 8, 3))
    await writer.drain()
    received += await reader.read(4096)
    text = _echo(bytes(received).replace(b"\0", b" "))
    fields = b"SFATAL\0C28P01\0Mpassword authentication failed: " + text + b"\0\0"
    writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
    await writer.drain()


def _echoed_query(query: bytes) -> bytes:
    """The query sent back as a NOTAUTH reply: every byte of it, its TSIG record included."""
    header = bytearray(query[:4])
    header[2] |= 0x80
    header[3] = (header[3] & 0xF0) | 9
    return bytes(header) + query[4:]


async def refusing_echo_dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(framed(_echoed_query(await read_query(reader))))


REFUSING: dict[str, Handler] = {
    "http": refusing_echo_http,
    "line": refusing_echo_line,
    "smtp": refusing_echo_smtp,
    "imap": refusing_echo_imap,
    "pop3": refusing_echo_pop3,
    "ftp": refusing_echo_ftp,
    "dns": DnsHandlers(lambda query: [_echoed_query(query)], refusing_echo_dns_tcp),
    "postgres": refusing_echo_postgres,
}
#: A server that accepts and stays silent, by family (for dns: UDP and TCP).
SILENT: dict[str, Handler] = {
    **dict.fromkeys(("http", "line", "smtp", "imap", "pop3", "ftp", "postgres"), silence),
    "dns": DnsHandlers(None, silence),
}


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
    data = profile.definition("127.0.0.1", port, path.startswith("tls."))
    name = "canary-base64" if path in profile.base64_secrets else "canary"
    secret = SECRETS[name].reveal() if path in BY_VALUE_ONLY else {"secret": name}
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


async def _broken_socket_connector(ip: str, port: int, source: Any, protocol: str) -> Any:
    raise RuntimeError(f"the socket connector broke opening {protocol} to {ip}:{port}")


def _servers_family(profile: KindProfile) -> Family:
    """The server family the canary's failing servers come from: a kind that meets no
    well-behaved server of its own (family ``none``: tls) still dials TCP, so it meets the line
    family's silent and echoing servers, which fail it as they should."""
    return profile.family if profile.family in REFUSING else cast(Family, "line")


def _failing_ways(profile: KindProfile) -> dict[str, Callable[[], Any]]:
    family: Family = _servers_family(profile)
    return {
        "refused": lambda: None,
        "silent": lambda: make_server(family, SILENT[family]),
        "refusing-echo": lambda: make_server(family, REFUSING[family]),
        "traceback": lambda: make_server(family, SILENT[family]),
    }


@pytest.mark.parametrize(("profile", "path"), ROWS)
async def test_the_canary_never_shows(
    profile: KindProfile, path: str, client_pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = SECRETS
    seen: list[Result] = []
    for way, start in _failing_ways(profile).items():
        server = start()
        port = closed_port() if server is None else (await server.start()).port
        try:
            probe = build_probe(definition(profile, path, port, client_pair), secrets=secrets)
            if way == "traceback":
                ctx = ProbeContext(
                    dialer=Dialer(
                        resolver=StaticResolver({}),
                        connector=_broken_connector,
                        socket_connector=_broken_socket_connector,
                    )
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
    servers = {
        family: await make_server(cast(Family, family), handler).start()
        for family, handler in REFUSING.items()
    }
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
                secrets=dict(SECRETS),
            )
            async with Checkpoint(instance):
                monitors = []
                for row in ROWS:
                    profile, path = row.values
                    if path in BY_VALUE_ONLY or profile.local_only:
                        continue  # local_only: the control plane refuses it (test_script.py)
                    port = servers[_servers_family(profile)].port
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
