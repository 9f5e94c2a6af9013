"""MysqlProbe against an in-process MySQL server fixture written from the protocol documentation
(handshake, SSL request, native and caching_sha2 logins, auth switches, COM_QUERY result sets),
with garbage, stalls in each phase and hostile packets; the wire module's parsers under
Hypothesis."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
    CertExpiry,
    DefinitionError,
    DefinitionErrors,
    EgressPolicy,
    ErrorKind,
    Result,
    Secret,
    Status,
    Timeouts,
    TlsOptions,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import _mysqlwire as wire
from probekit.probes import get_kind
from probekit.probes.mysql import KIND, MysqlProbe
from servers import GuardedConnector, TcpServer, make_context

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

USER = "monitor"
PASSWORD = "hunter2-canary-5d1f3a"  # a canary: it must show up nowhere but on the wire
SCRAMBLE = bytes(range(65, 85))  # 20 bytes, no NUL

# -- the fixture: a MySQL server from the protocol documentation ----------------------------------

CAPS = (
    wire.CLIENT_PROTOCOL_41
    | wire.CLIENT_SECURE_CONNECTION
    | wire.CLIENT_PLUGIN_AUTH
    | wire.CLIENT_CONNECT_WITH_DB
    | 0x00000001
    | 0x00002000
)
OK = b"\x00\x00\x00\x02\x00\x00\x00"
EOF = b"\xfe\x00\x00\x02\x00"


def err(code: int, state: str, message: str) -> bytes:
    return b"\xff" + code.to_bytes(2, "little") + b"#" + state.encode() + message.encode()


def lenenc(data: bytes | None) -> bytes:
    if data is None:
        return b"\xfb"
    n = len(data)
    if n < 251:
        return bytes([n]) + data
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little") + data
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little") + data
    return b"\xfe" + n.to_bytes(8, "little") + data


def column(name: str) -> bytes:
    return (
        lenenc(b"def")
        + lenenc(b"")
        + lenenc(b"")
        + lenenc(b"")
        + lenenc(name.encode())
        + lenenc(name.encode())
        + b"\x0c"
        + b"\x21\x00"
        + b"\x00\x01\x00\x00"
        + b"\xfd"
        + b"\x00\x00\x00\x00\x00"
    )


def greeting(
    version: str = "8.0.36-fixture", plugin: str = "mysql_native_password", caps: int = CAPS
) -> bytes:
    return (
        b"\x0a"
        + version.encode()
        + b"\0"
        + (42).to_bytes(4, "little")
        + SCRAMBLE[:8]
        + b"\0"
        + (caps & 0xFFFF).to_bytes(2, "little")
        + bytes([45])
        + b"\x02\x00"
        + (caps >> 16).to_bytes(2, "little")
        + bytes([21])
        + bytes(10)
        + SCRAMBLE[8:]
        + b"\0"
        + plugin.encode()
        + b"\0"
    )


def frame(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


async def read_packet(reader: Reader) -> tuple[int, bytes]:
    header = await reader.readexactly(4)
    length = int.from_bytes(header[:3], "little")
    return header[3], await reader.readexactly(length)


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - the protocol's hash


def native_ok(response: bytes, password: str, scramble: bytes) -> bool:
    """How a server checks mysql_native_password: it keeps SHA1(SHA1(password)) only."""
    stored = _sha1(_sha1(password.encode()))
    if len(response) != 20:
        return False
    mask = _sha1(scramble + stored)
    stage1 = bytes(a ^ b for a, b in zip(response, mask, strict=True))
    return _sha1(stage1) == stored


def sha2_ok(response: bytes, password: str, scramble: bytes) -> bool:
    """How a server checks caching_sha2_password's fast path against its cached
    SHA256(SHA256(password))."""
    stored = hashlib.sha256(hashlib.sha256(password.encode()).digest()).digest()
    if len(response) != 32:
        return False
    mask = hashlib.sha256(stored + scramble).digest()
    stage1 = bytes(a ^ b for a, b in zip(response, mask, strict=True))
    return hashlib.sha256(stage1).digest() == stored


STALL = "stall"


class TlsChannel:
    """The server side of TLS over a stream whose reader may already hold the ClientHello
    (the client starts its handshake right after the SSL request, without waiting for an
    answer, so asyncio's ``start_tls`` would lose the bytes the StreamReader had buffered)."""

    def __init__(self, reader: Reader, writer: Writer, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.reader = reader
        self.writer = writer
        self.plain = bytearray()

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _feed(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
        self.incoming.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._feed()
            else:
                await self._flush()
                return

    async def readexactly(self, n: int) -> bytes:
        while len(self.plain) < n:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._feed()
                continue
            if not data:
                raise asyncio.IncompleteReadError(bytes(self.plain), n)
            self.plain += data
        out = bytes(self.plain[:n])
        del self.plain[:n]
        return out

    async def read(self) -> bytes:
        while True:
            await self.readexactly(len(self.plain) + 1)

    def write(self, data: bytes) -> None:
        self.tls.write(data)
        self.writer.write(self.outgoing.read())

    async def drain(self) -> None:
        await self.writer.drain()


Rows = list[tuple[str | None, ...]]


@dataclass
class FakeMysql:
    """One connection at a time, as a MySQL server answers it.

    ``accounts`` maps a user to (plugin, password); ``cached`` says whether caching_sha2's fast
    path succeeds. ``results`` maps a query to its rows or to raw response packets. ``stall``
    names the phase in which the server goes silent. ``raw_greeting`` replaces the handshake.
    """

    version: str = "8.0.36-fixture"
    plugin: str = "mysql_native_password"
    tls: ssl.SSLContext | None = None
    accounts: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {USER: ("mysql_native_password", PASSWORD)}
    )
    cached: bool = True
    databases: tuple[str, ...] = ("probe",)
    results: dict[str, Rows | list[bytes]] = field(default_factory=dict)
    stall: str | None = None
    raw_greeting: bytes | None = None
    login_reply: bytes | None = None
    switch_to: tuple[str, bytes] | None = None
    seen: list[bytes] = field(default_factory=list)
    caps: int = CAPS
    rsa_key: Any = None

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _silence(self, reader: Reader) -> None:
        await reader.read()

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        if self.stall == "handshake":
            return await self._silence(reader)
        caps = self.caps | (wire.CLIENT_SSL if self.tls is not None else 0)
        if self.raw_greeting is not None:
            writer.write(self.raw_greeting)
            await writer.drain()
            return
        writer.write(frame(0, greeting(self.version, self.plugin, caps)))
        await writer.drain()
        seq, payload = await read_packet(reader)
        self.seen.append(payload)
        client_caps = int.from_bytes(payload[:4], "little")
        if len(payload) == 32 and client_caps & wire.CLIENT_SSL:
            assert self.tls is not None and seq == 1
            if self.stall == "tls":
                return await self._silence(reader)
            channel = TlsChannel(reader, writer, self.tls)
            await channel.handshake()
            reader = writer = channel  # type: ignore[assignment]
            seq, payload = await read_packet(reader)
            self.seen.append(payload)
            encrypted = True
        else:
            encrypted = False
        if self.stall == "auth":
            return await self._silence(reader)
        seq = await self._login(reader, writer, seq, payload, encrypted)
        if seq < 0:
            return
        while True:
            seq, payload = await read_packet(reader)
            self.seen.append(payload)
            if payload[:1] == b"\x01":
                return
            if payload[:1] == b"\x03":
                if self.stall == "query":
                    return await self._silence(reader)
                await self._answer(writer, payload[1:].decode())

    async def _login(
        self, reader: Reader, writer: Writer, seq: int, payload: bytes, encrypted: bool
    ) -> int:
        pos = 32
        end = payload.index(b"\0", pos)
        user = payload[pos:end].decode()
        pos = end + 1
        size = payload[pos]
        response = payload[pos + 1 : pos + 1 + size]
        pos += 1 + size
        client_caps = int.from_bytes(payload[:4], "little")
        database = None
        if client_caps & wire.CLIENT_CONNECT_WITH_DB:
            end = payload.index(b"\0", pos)
            database = payload[pos:end].decode()
            pos = end + 1
        plugin = payload[pos : payload.index(b"\0", pos)].decode()
        seq += 1

        def send(data: bytes) -> None:
            nonlocal seq
            writer.write(frame(seq, data))
            seq += 1

        if self.login_reply is not None:
            send(self.login_reply)
            await writer.drain()
            await reader.read()
            return -1
        account = self.accounts.get(user)
        scramble = SCRAMBLE
        if self.switch_to is not None:
            name, data = self.switch_to
            send(b"\xfe" + name.encode() + b"\0" + data)
            await writer.drain()
            seq, response = await read_packet(reader)
            seq += 1
            return -1 if account is None else await self._finish(reader, writer, seq, True)
        if account is not None and plugin != account[0]:
            scramble = bytes(range(97, 117))
            send(b"\xfe" + account[0].encode() + b"\0" + scramble + b"\0")
            await writer.drain()
            seq, response = await read_packet(reader)
            seq += 1
            plugin = account[0]
        ok = False
        if account is not None:
            if plugin == "mysql_native_password":
                ok = native_ok(response, account[1], scramble)
            elif plugin == "caching_sha2_password":
                if not sha2_ok(response, account[1], scramble):
                    ok = False
                elif self.cached:
                    send(b"\x01\x03")
                    ok = True
                else:
                    send(b"\x01\x04")
                    await writer.drain()
                    seq, clear = await read_packet(reader)
                    seq += 1
                    if clear == b"\x02" and not encrypted and self.rsa_key is not None:
                        ok = await self._rsa_exchange(reader, writer, seq, account[1], scramble)
                        seq += 2
                    else:
                        assert encrypted, "the password was sent without TLS"
                        ok = clear == account[1].encode() + b"\0"
        if not ok:
            using = "YES" if response else "NO"
            send(
                err(
                    1045,
                    "28000",
                    f"Access denied for user '{user}'@'localhost' (using password: {using})",
                )
            )
            await writer.drain()
            return -1
        if database is not None and database not in self.databases:
            send(err(1049, "42000", f"Unknown database '{database}'"))
            await writer.drain()
            return -1
        send(OK)
        await writer.drain()
        return seq

    async def _rsa_exchange(
        self, reader: Reader, writer: Writer, seq: int, password: str, scramble: bytes
    ) -> bool:
        """Send the public key, decrypt the answer as the server does (OAEP SHA-1, XOR)."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        pem = self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        writer.write(frame(seq, b"\x01" + pem))
        await writer.drain()
        _seq, sealed = await read_packet(reader)
        self.seen.append(sealed)
        plain = self.rsa_key.decrypt(
            sealed,
            padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA1()),  # noqa: S303 - the protocol's
                algorithm=hashes.SHA1(),  # noqa: S303 - the protocol's
                label=None,
            ),
        )
        mask = (scramble * 8)[: len(plain)]
        return bytes(a ^ b for a, b in zip(plain, mask, strict=True)) == password.encode() + b"\0"

    async def _finish(self, reader: Reader, writer: Writer, seq: int, ok: bool) -> int:
        writer.write(frame(seq, OK if ok else err(1045, "28000", "Access denied")))
        await writer.drain()
        return seq + 1

    async def _answer(self, writer: Writer, query: str) -> None:
        result = self.results.get(query)
        seq = 1
        packets: list[bytes]
        if result is None:
            packets = [err(1064, "42000", f"You have an error in your SQL syntax near '{query}'")]
        elif result and isinstance(result[0], bytes):
            packets = list(result)  # type: ignore[arg-type]
        elif not result:
            packets = [b"\x01", column("x"), EOF, EOF]
        else:
            rows: Rows = result  # type: ignore[assignment]
            width = len(rows[0])
            packets = [bytes([width])] + [column(f"c{i}") for i in range(width)] + [EOF]
            packets += [
                b"".join(lenenc(None if c is None else c.encode()) for c in row) for row in rows
            ]
            packets.append(EOF)
        for p in packets:
            writer.write(frame(seq, p))
            seq += 1
        await writer.drain()


async def check(server: FakeMysql, **fields: Any) -> Result:
    async with TcpServer(server) as listening:
        probe = MysqlProbe("127.0.0.1", listening.port, **fields)
        return await probe.check(make_context())


def login(**fields: Any) -> dict[str, Any]:
    return {"username": USER, "password": Secret(PASSWORD), **fields}


def outcomes(result: Result) -> dict[str, Any]:
    return {a.name: a for a in result.assertions}


# -- the handshake ---------------------------------------------------------------------------------


async def test_handshake_only_records_the_facts() -> None:
    result = await check(FakeMysql(), starttls="off")
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "handshake")
    found = outcomes(result)
    assert found["server_version"].observed == "8.0.36-fixture"
    assert found["auth_plugin"].observed == "mysql_native_password"
    assert "PROTOCOL_41" in found["capabilities"].observed
    assert result.metrics["server_version"] == 80036
    assert int(result.metrics["capabilities"]) == CAPS
    assert result.metrics["tls"] == 0
    assert get_kind("mysql").describe is not None
    assert "8.0.36-fixture" in (get_kind("mysql").describe(result) or "")  # type: ignore[misc]


async def test_mariadb_version_prefix_is_dropped() -> None:
    result = await check(FakeMysql(version="5.5.5-10.11.6-MariaDB-0+deb12u1"))
    assert result.status is Status.UP, result.summary()
    assert outcomes(result)["server_version"].observed == "10.11.6-MariaDB-0+deb12u1"
    assert result.metrics["server_version"] == 101106


async def test_assertions_see_the_server_version() -> None:
    result = await check(FakeMysql(), assertions=(BodyContains("8.0.36"),))
    assert result.status is Status.UP
    other = await check(FakeMysql(), assertions=(BodyContains("MariaDB"),))
    assert other.error is not None and other.error.kind is ErrorKind.ASSERTION


# -- TLS -----------------------------------------------------------------------------------------


async def test_required_tls_without_ssl_is_down_tls() -> None:
    result = await check(FakeMysql(), starttls="required")
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TLS, "tls")
    assert "CLIENT_SSL" in result.error.message


async def test_optional_tls_without_ssl_is_up_with_the_fact() -> None:
    result = await check(FakeMysql(), **login())
    assert result.status is Status.UP, result.summary()
    assert outcomes(result)["tls"].observed == "the server does not offer SSL"
    assert result.tls is None


async def test_tls_upgrade_then_login(good_tls: ssl.SSLContext, ca_pem: str) -> None:
    server = FakeMysql(tls=good_tls)
    result = await check(
        server, starttls="required", starttls_options=TlsOptions(ca_data=ca_pem), **login()
    )
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "handshake", "tls", "auth")
    assert result.tls is not None and result.metrics["tls"] == 1
    # The SSL request is the 32-byte fixed part with CLIENT_SSL; the login follows it.
    assert len(server.seen[0]) == 32
    assert int.from_bytes(server.seen[0][:4], "little") & wire.CLIENT_SSL


async def test_an_untrusted_certificate_is_down_tls(self_signed_tls: ssl.SSLContext) -> None:
    result = await check(FakeMysql(tls=self_signed_tls), starttls="required", **login())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TLS, "tls")


async def test_starttls_off_never_upgrades(good_tls: ssl.SSLContext) -> None:
    server = FakeMysql(tls=good_tls)
    result = await check(server, starttls="off", **login())
    assert result.status is Status.UP, result.summary()
    assert result.tls is None and "tls" not in result.phase_names()
    assert not int.from_bytes(server.seen[0][:4], "little") & wire.CLIENT_SSL


# -- login ---------------------------------------------------------------------------------------


async def test_native_password_login() -> None:
    server = FakeMysql()
    result = await check(server, database="probe", **login())
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "handshake", "auth")
    assert outcomes(result)["auth"].observed == f"{USER} (mysql_native_password)"
    response = server.seen[0]
    caps = int.from_bytes(response[:4], "little")
    assert caps & wire.CLIENT_CONNECT_WITH_DB and not caps & 0x80  # never LOCAL_FILES
    assert PASSWORD.encode() not in response


async def test_wrong_password_is_down_auth_naming_1045() -> None:
    result = await check(FakeMysql(), username=USER, password=Secret("wrong"))
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.AUTH, "auth")
    assert "1045" in result.error.message and "access denied" in result.error.message


async def test_an_unknown_user_and_no_password() -> None:
    result = await check(FakeMysql(), username="nobody")
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "using password: NO" in result.error.message


async def test_unknown_database_is_down_auth() -> None:
    result = await check(FakeMysql(), database="missing", **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "1049" in result.error.message


async def test_caching_sha2_fast_path() -> None:
    server = FakeMysql(
        plugin="caching_sha2_password",
        accounts={USER: ("caching_sha2_password", PASSWORD)},
    )
    result = await check(server, **login())
    assert result.status is Status.UP, result.summary()
    assert outcomes(result)["auth"].observed == f"{USER} (caching_sha2_password)"


async def test_caching_sha2_wrong_password() -> None:
    server = FakeMysql(
        plugin="caching_sha2_password", accounts={USER: ("caching_sha2_password", "other")}
    )
    result = await check(server, **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "1045" in result.error.message


async def test_caching_sha2_full_auth_over_tls(good_tls: ssl.SSLContext, ca_pem: str) -> None:
    server = FakeMysql(
        plugin="caching_sha2_password",
        accounts={USER: ("caching_sha2_password", PASSWORD)},
        cached=False,
        tls=good_tls,
    )
    result = await check(server, starttls_options=TlsOptions(ca_data=ca_pem), **login())
    assert result.status is Status.UP, result.summary()
    assert result.tls is not None


async def test_caching_sha2_full_auth_without_tls_is_down_auth_saying_so() -> None:
    server = FakeMysql(
        plugin="caching_sha2_password",
        accounts={USER: ("caching_sha2_password", PASSWORD)},
        cached=False,
    )
    result = await check(server, **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "only over TLS" in result.error.message
    assert all(PASSWORD.encode() not in p for p in server.seen)


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_caching_sha2_full_auth_with_the_server_public_key(rsa_key: Any) -> None:
    server = FakeMysql(
        plugin="caching_sha2_password",
        accounts={USER: ("caching_sha2_password", PASSWORD)},
        cached=False,
        rsa_key=rsa_key,
    )
    result = await check(server, get_server_public_key=True, **login())
    assert result.status is Status.UP, result.summary()
    assert result.tls is None
    assert all(PASSWORD.encode() not in p for p in server.seen)
    wrong = await check(server, get_server_public_key=True, username=USER, password=Secret("x"))
    assert wrong.error is not None and wrong.error.kind is ErrorKind.AUTH
    assert "1045" in wrong.error.message


@pytest.mark.parametrize(
    ("key", "text"),
    [(b"not a key", "not a PEM public key"), (b"\xff\x10\x04boom", "ERR 1040")],
)
async def test_a_bad_public_key_answer(key: bytes, text: str) -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        writer.write(frame(0, greeting(plugin="caching_sha2_password")))
        await read_packet(reader)
        writer.write(frame(2, b"\x01\x04"))
        await writer.drain()
        await read_packet(reader)  # the request for the key
        writer.write(frame(4, key if key.startswith(b"\xff") else b"\x01" + key))
        await writer.drain()
        await reader.read()

    async with TcpServer(handler) as listening:
        probe = MysqlProbe("127.0.0.1", listening.port, get_server_public_key=True, **login())
        result = await probe.check(make_context())
    assert result.error is not None, result.summary()
    assert text in result.error.message


async def test_auth_switch_to_native() -> None:
    server = FakeMysql(plugin="caching_sha2_password")  # the account is native
    result = await check(server, **login())
    assert result.status is Status.UP, result.summary()
    assert outcomes(result)["auth"].observed == f"{USER} (mysql_native_password)"


async def test_auth_switch_to_sha2_from_native_default() -> None:
    server = FakeMysql(accounts={USER: ("caching_sha2_password", PASSWORD)})
    result = await check(server, **login())
    assert result.status is Status.UP, result.summary()


async def test_unknown_default_plugin_answers_native() -> None:
    server = FakeMysql(plugin="auth_gssapi_client")
    result = await check(server, **login())
    assert result.status is Status.UP, result.summary()


@pytest.mark.parametrize("plugin", ["mysql_clear_password", "dialog", "mysql_old_password"])
async def test_a_switch_to_an_unknown_plugin_is_down_auth(plugin: str) -> None:
    data = b"" if plugin == "mysql_old_password" else b"x" * 20
    server = FakeMysql(switch_to=(plugin, data))
    if plugin == "mysql_old_password":
        server.login_reply = b"\xfe"
    result = await check(server, **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert plugin in result.error.message
    assert all(PASSWORD.encode() not in p for p in server.seen)


@pytest.mark.parametrize(
    ("reply", "kind", "text"),
    [
        (b"\x7f", ErrorKind.PROTOCOL, "unexpected answer"),
        (b"", ErrorKind.PROTOCOL, "empty packet"),
        (b"\x01\x03", ErrorKind.PROTOCOL, "unexpected authentication data"),
        (b"\xff\x10\x04", ErrorKind.AUTH, "ERR 1040"),
    ],
)
async def test_odd_login_replies(reply: bytes, kind: ErrorKind, text: str) -> None:
    result = await check(FakeMysql(login_reply=reply), **login())
    assert result.error is not None and result.error.kind is kind, result.error
    assert text in result.error.message


# -- queries -------------------------------------------------------------------------------------


async def test_query_with_expected_value_and_rows() -> None:
    server = FakeMysql(results={"SELECT 1": [("1",)]})
    result = await check(
        server, query="SELECT 1", expect_value="1", min_rows=1, max_rows=1, **login()
    )
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "handshake", "auth", "query")
    assert result.metrics["rows"] == 1
    assert {"query", "value", "rows"} <= set(outcomes(result))


async def test_query_value_mismatch_is_down_assertion() -> None:
    server = FakeMysql(results={"SELECT v": [("2", "x")]})
    result = await check(server, query="SELECT v", expect_value="1", **login())
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert outcomes(result)["value"].observed == "'2'"


async def test_null_first_cell_and_no_rows() -> None:
    server = FakeMysql(results={"q1": [(None,)], "q0": []})
    null = await check(server, query="q1", expect_value="NULL", **login())
    assert null.status is Status.UP, null.summary()
    none = await check(server, query="q0", expect_value="x", **login())
    assert none.error is not None and none.error.kind is ErrorKind.ASSERTION
    assert outcomes(none)["value"].observed == "no rows"
    assert none.metrics["rows"] == 0


async def test_row_count_bounds() -> None:
    server = FakeMysql(results={"q": [(str(i),) for i in range(5)]})
    few = await check(server, query="q", min_rows=6, **login())
    assert few.error is not None and few.error.kind is ErrorKind.ASSERTION
    many = await check(server, query="q", max_rows=4, **login())
    assert many.error is not None and "0 to 4" in many.error.message
    ok = await check(server, query="q", min_rows=5, max_rows=5, **login())
    assert ok.status is Status.UP


async def test_a_failing_query_is_down_assertion_with_the_error() -> None:
    result = await check(FakeMysql(), query="SELEC 1", **login())
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert "1064" in result.error.message


async def test_a_statement_without_a_result_set() -> None:
    server = FakeMysql(results={"DO 1": [OK]})
    result = await check(server, query="DO 1", **login())
    assert result.status is Status.UP and result.metrics["rows"] == 0


async def test_rows_are_streamed_not_held() -> None:
    """A result set of many rows, two of them over the packet limit: counted, never held."""
    big = "x" * (wire.PACKET_LIMIT + 10)
    rows: Rows = [("first",)] + [(str(i),) for i in range(3000)] + [(big,), (big,)]
    server = FakeMysql(results={"q": rows})
    result = await check(server, query="q", expect_value="first", **login())
    assert result.status is Status.UP, result.summary()
    assert result.metrics["rows"] == 3003


async def test_a_row_spanning_packets_counts_once() -> None:
    """A 16 MiB row continues in a second packet: it is one row."""
    first = frame(0, b"")[:0]  # the rows are raw packets: built below
    huge = lenenc(b"y" * (0xFFFFFF + 5))
    packets: list[bytes] = [
        b"\x01",
        column("c"),
        EOF,
        lenenc(b"a"),
        huge[:0xFFFFFF],
        huge[0xFFFFFF:],
        EOF,
    ]
    del first
    server = FakeMysql(results={"q": packets})
    result = await check(server, query="q", **login(), timeouts=Timeouts(total=30, read=10))
    assert result.status is Status.UP, result.summary()
    assert result.metrics["rows"] == 2


async def test_a_first_row_over_the_limit_is_down_protocol() -> None:
    server = FakeMysql(results={"q": [("z" * (wire.PACKET_LIMIT + 1),)]})
    result = await check(server, query="q", **login())
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "over the limit" in result.error.message


async def test_local_infile_is_refused_and_nothing_sent() -> None:
    server = FakeMysql(results={"q": [b"\xfb/etc/passwd"]})
    result = await check(server, query="q", **login())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.PROTOCOL, "query")
    assert "local file" in result.error.message
    assert not any(b"root:" in p for p in server.seen)


async def test_an_error_in_the_middle_of_the_rows() -> None:
    packets = [
        b"\x01",
        column("c"),
        EOF,
        lenenc(b"1"),
        lenenc(b"2"),
        err(1317, "70100", "Query execution was interrupted"),
    ]
    result = await check(FakeMysql(results={"q": packets}), query="q", **login())
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert "1317" in result.error.message


# -- garbage and refusals ----------------------------------------------------------------------

GARBAGE: list[Any] = [
    pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", "sequence id", id="http"),
    pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", "sequence id", id="ssh"),
    pytest.param(frame(0, b"\x09old\0"), "protocol 10", id="protocol-9"),
    pytest.param(frame(0, b"\x0aversion-without-end"), "NUL", id="no-nul"),
    pytest.param(frame(0, b"\x0a8.0\0\x01\x02"), "capability", id="short"),
    pytest.param(frame(0, b""), "empty", id="empty"),
    pytest.param(b"\xff\xff\xff\x00" + b"x" * 10, "over the limit", id="huge-length"),
    pytest.param(b"\x05\x00", "closed", id="cut-short"),
    pytest.param(b"", "closed", id="close-at-once"),
]


@pytest.mark.parametrize(("raw", "text"), GARBAGE)
async def test_garbage_is_down_protocol(raw: bytes, text: str) -> None:
    result = await check(
        FakeMysql(raw_greeting=raw or None, stall=None) if raw else _closing(), **login()
    )
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.PROTOCOL, "handshake"), (
        result.error
    )
    assert text in result.error.message


def _closing() -> Any:
    async def handler(reader: Reader, writer: Writer) -> None:
        writer.close()

    return handler


@pytest.mark.parametrize(("code", "kind"), [(1040, ErrorKind.PROTOCOL), (1130, ErrorKind.AUTH)])
async def test_an_err_greeting(code: int, kind: ErrorKind) -> None:
    raw = frame(0, b"\xff" + code.to_bytes(2, "little") + b"Host '10.0.0.9' is not allowed")
    result = await check(FakeMysql(raw_greeting=raw))
    assert result.error is not None and result.error.kind is kind
    assert f"ERR {code}" in result.error.message


async def test_a_login_needs_protocol_41() -> None:
    old = FakeMysql(caps=0x0001)
    assert (await check(old, starttls="off")).status is Status.UP
    result = await check(FakeMysql(caps=0x0001), **login())
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "4.1" in result.error.message


async def test_plain_text_before_the_tls_handshake_is_refused(good_tls: ssl.SSLContext) -> None:
    async def injecting(reader: Reader, writer: Writer) -> None:
        writer.write(frame(0, greeting(caps=CAPS | wire.CLIENT_SSL)))
        await read_packet(reader)
        writer.write(frame(2, OK))  # injected before any TLS
        await writer.drain()
        await reader.read()
        writer.close()

    async with TcpServer(injecting) as listening:
        probe = MysqlProbe("127.0.0.1", listening.port, starttls="required", **login())
        result = await probe.check(make_context())
    assert result.error is not None and result.error.kind in (ErrorKind.PROTOCOL, ErrorKind.TLS)


async def test_bytes_after_the_greeting_are_refused_before_tls() -> None:
    """Bytes sent right behind the greeting (read into the packet reader's buffer with it)
    would be taken as if they had come through TLS: refused."""
    raw = frame(0, greeting(caps=CAPS | wire.CLIENT_SSL)) + frame(2, OK)
    result = await check(FakeMysql(raw_greeting=raw), starttls="required", **login())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.PROTOCOL, "tls"), result.error
    assert "plain-text" in result.error.message


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        ([lenenc(b"1"), b""], "empty packet"),
        ([lenenc(b"1"), lenenc(b"2"), b""], "empty packet"),
    ],
    ids=["empty-second-row", "empty-third-row"],
)
async def test_broken_rows_are_down_protocol(rows: list[bytes], text: str) -> None:
    packets = [b"\x01", column("c"), EOF, *rows]
    result = await check(FakeMysql(results={"q": packets}), query="q", **login())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.PROTOCOL, "query"), result.error
    assert text in result.error.message


# -- stalls ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["handshake", "tls", "auth", "query"])
async def test_a_stall_times_out_naming_its_phase(phase: str, good_tls: ssl.SSLContext) -> None:
    server = FakeMysql(stall=phase, tls=good_tls, results={"q": [("1",)]})
    total = 0.3
    started = time.monotonic()
    result = await check(
        server,
        query="q",
        starttls_options=TlsOptions(verify=False),
        timeouts=Timeouts(total=total),
        **login(),
    )
    elapsed = time.monotonic() - started
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, phase), result.error
    assert elapsed < total + 1.0


async def test_the_read_timeout_bounds_each_wait() -> None:
    result = await check(FakeMysql(stall="auth"), timeouts=Timeouts(total=5, read=0.2), **login())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "auth")
    assert result.duration < 2


# -- the egress policy and secrets -------------------------------------------------------------


async def test_a_denied_address_is_never_contacted(connector: GuardedConnector) -> None:
    ctx = make_context(
        policy=EgressPolicy(deny=["127.0.0.0/8"]),
        hosts={"db.internal": ["127.0.0.1"]},
        connector=connector,
    )
    async with TcpServer(FakeMysql()) as listening:
        result = await MysqlProbe("db.internal", listening.port, **login()).check(ctx)
        assert listening.connections == 0
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == [] and connector.refused == []


async def test_the_password_shows_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = err(1045, "28000", f"Access denied, you said {PASSWORD}")
    result = await check(FakeMysql(login_reply=echo), **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    probe = MysqlProbe("127.0.0.1", **login())
    shown = [
        result_to_json(result),
        result.summary(),
        repr(result),
        repr(probe),
        repr(probe_to_dict(probe)),
        caplog.text,
    ]
    assert all(PASSWORD not in text for text in shown)
    assert "<secret>" in result.error.message


# -- the wire module under Hypothesis ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parsers_classify_any_bytes(data: bytes) -> None:
    for parse in (
        wire.parse_handshake,
        wire.parse_auth_reply,
        wire.parse_error,
        wire.column_count,
        wire.first_cell,
    ):
        message = "parsed"
        try:
            parse(data)
        except wire.WireError as exc:
            message = exc.message
        assert message


@settings(max_examples=200, deadline=None)
@given(
    version=st.text(max_size=20).filter(lambda s: "\0" not in s),
    caps=st.integers(0, 2**32 - 1),
    cut=st.integers(0, 120),
)
def test_handshakes_cut_anywhere(version: str, caps: int, cut: int) -> None:
    data = greeting(version, "caching_sha2_password", caps)[:cut]
    try:
        found = wire.parse_handshake(data)
    except wire.WireError:
        return
    assert isinstance(found, wire.Handshake | wire.ServerError)


@settings(max_examples=30, deadline=None)
@given(
    greeting_=st.one_of(st.binary(max_size=60), st.builds(greeting).map(lambda g: g)),
    reply=st.binary(max_size=40),
    answer=st.binary(max_size=40),
)
def test_any_server_bytes_give_a_classified_result(
    greeting_: bytes, reply: bytes, answer: bytes
) -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        try:
            writer.write(frame(0, greeting_))
            await read_packet(reader)
            writer.write(frame(2, reply))
            writer.write(frame(1, answer))
            await writer.drain()
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def scenario() -> Result:
        async with TcpServer(handler) as listening:
            probe = MysqlProbe(
                "127.0.0.1", listening.port, query="q", timeouts=Timeouts(total=0.3), **login()
            )
            return await probe.check(make_context())

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert PASSWORD not in result_to_json(result)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300),
    chunks=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    steps=st.lists(st.sampled_from(["read", "peek", "rows"]), min_size=1, max_size=4),
    seq=st.integers(0, 255),
)
def test_the_packet_reader_classifies_any_stream(
    data: bytes, chunks: list[int], steps: list[str], seq: int
) -> None:
    """Any bytes, cut into any pieces: each step returns or raises WireError, never more than
    the limit held."""
    stream = bytearray(data)
    sizes = iter(chunks * 100)

    async def read(n: int) -> bytes:
        take = min(n, next(sizes, 1))
        out = bytes(stream[:take])
        del stream[:take]
        return out

    async def scenario() -> None:
        reader = wire.PacketReader(read, limit=64)
        reader.seq = seq
        for step in steps:
            if step == "read":
                assert len(await reader.read("packet")) <= 64
            elif step == "peek":
                head, _length = await reader.peek_skip("packet", 8)
                assert len(head) <= 8
            else:
                _rows, head = await reader.skip_rows(8)
                assert len(head) <= 8

    try:
        asyncio.run(scenario())
    except wire.WireError as exc:
        assert exc.message  # noqa: PT017 - the message is what the result shows


async def test_skip_rows_counts_a_stream_of_packets_in_any_pieces() -> None:
    packets = b"".join(frame(i + 1, lenenc(str(i).encode())) for i in range(1000))
    stream = bytearray(packets + frame(1001, EOF))

    async def read(n: int) -> bytes:
        take = min(n, 7)
        out = bytes(stream[:take])
        del stream[:take]
        return out

    reader = wire.PacketReader(read)
    reader.seq = 1
    rows, end = await reader.skip_rows(16)
    assert (rows, end) == (1000, EOF)


def test_scrambles_match_the_documented_vectors() -> None:
    # The server-side checks above are independent of these functions; here, the shapes.
    assert len(wire.native_scramble(b"pw", SCRAMBLE)) == 20
    assert len(wire.caching_sha2_scramble(b"pw", SCRAMBLE)) == 32
    assert wire.native_scramble(b"", SCRAMBLE) == b""
    assert native_ok(wire.native_scramble(b"pw", SCRAMBLE), "pw", SCRAMBLE)
    assert sha2_ok(wire.caching_sha2_scramble(b"pw", SCRAMBLE), "pw", SCRAMBLE)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("8.0.36", 80036),
        ("10.11.6-MariaDB", 101106),
        ("5.7.44-log", 50744),
        ("x", None),
        ("1.2", None),
        ("99999.1.1", None),
    ],
)
def test_version_number(text: str, number: int | None) -> None:
    assert wire.version_number(text) == number


# -- definitions and the command line -----------------------------------------------------------


def test_defaults_and_target() -> None:
    probe = MysqlProbe("db.internal")
    assert (probe.port, probe.starttls, probe.target) == (3306, "optional", "db.internal:3306")
    assert MysqlProbe("::1", 3307).target == "[::1]:3307"


ROUND_TRIP = [
    MysqlProbe("db.internal"),
    MysqlProbe(
        "db.internal",
        3307,
        starttls="required",
        starttls_options=TlsOptions(verify=False),
        username="u",
        database="d",
        query="SELECT 1",
        expect_value="1",
        min_rows=1,
        max_rows=3,
        get_server_public_key=True,
        ip_family="ipv4",
        timeouts=Timeouts(total=3),
    ),
]


@pytest.mark.parametrize("probe", ROUND_TRIP)
def test_round_trip_through_plain_data(probe: MysqlProbe) -> None:
    assert build_probe(probe_to_dict(probe)) == probe


def test_a_password_round_trips_by_reference() -> None:
    probe = MysqlProbe("h", **login())
    plain = probe_to_dict(probe)
    assert plain["password"] == "<secret>"
    plain["password"] = {"secret": "db"}
    assert build_probe(plain, secrets={"db": Secret(PASSWORD)}) == probe


INVALID: list[Any] = [
    pytest.param({"port": 0}, "port", "1 to 65535", id="port"),
    pytest.param({"host": ""}, "host", "required", id="host"),
    pytest.param({"starttls": "yes"}, "starttls", "not one of", id="starttls"),
    pytest.param(
        {"starttls": "off", "starttls_options": {}}, "starttls_options", "off", id="options-off"
    ),
    pytest.param({"password": {"secret": "db"}}, "password", "needs a username", id="pw-no-user"),
    pytest.param({"username": "a\u0000b"}, "username", "NUL", id="nul-user"),
    pytest.param({"database": "d"}, "database", "needs a username", id="db-no-user"),
    pytest.param({"query": "SELECT 1"}, "query", "needs a login", id="query-no-login"),
    pytest.param({"username": "u", "query": " "}, "query", "SQL statement", id="blank-query"),
    pytest.param({"expect_value": "1"}, "expect_value", "needs a query", id="expect-no-query"),
    pytest.param(
        {"username": "u", "query": "q", "min_rows": -1}, "min_rows", "0 or more", id="min-neg"
    ),
    pytest.param(
        {"username": "u", "query": "q", "min_rows": 3, "max_rows": 2},
        "min_rows",
        "above max_rows",
        id="min-above-max",
    ),
    pytest.param({"ip_family": "ipv5"}, "ip_family", "not one of", id="family"),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "mysql", "host": "db", **data}, secrets={"db": Secret("x")})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]


def test_a_password_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        MysqlProbe("h", username="u", password=PASSWORD)  # type: ignore[arg-type]
    assert info.value.path == "password" and PASSWORD not in str(info.value)


def test_the_kind_is_registered() -> None:
    kind = get_kind("mysql")
    assert kind is KIND and kind.cls is MysqlProbe and kind.docs == "probes/mysql.md"
    flags = {f for o in kind.options for f in o.flags}
    assert {"-u", "--user", "--password-env", "-d", "--database", "-q", "--query", "--ssl"} <= flags
    assert "--password" not in flags and "-p" not in flags  # only from the environment


def _from_options(target: str, fields: dict[str, Any] | None = None, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "mysql", **KIND.target.parse(target), **(fields or {})}
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_options_build_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PW", PASSWORD)
    probe = _from_options(
        "db:3307",
        {"username": USER, "query": "SELECT 1"},
        password_env="DB_PW",
        ssl=True,
        insecure=True,
    )
    assert probe.password == Secret(PASSWORD)
    assert probe.starttls == "required" and probe.starttls_options == TlsOptions(verify=False)
    with pytest.raises(DefinitionErrors):
        _from_options("db", {"starttls": "off"}, ssl=True)
    certs = _from_options("db", cert_warn_days=21.0, cert_crit_days=7.0)
    assert certs.assertions == (CertExpiry(warn_days=21.0, crit_days=7.0),)


async def test_cert_expiry_sees_the_upgrade_certificate(
    good_tls: ssl.SSLContext, expired_tls: ssl.SSLContext, ca_pem: str
) -> None:
    options = TlsOptions(ca_data=ca_pem)
    fields = {"starttls": "required", "assertions": (CertExpiry(crit_days=7),)}
    ok = await check(FakeMysql(tls=good_tls), starttls_options=options, **fields)
    assert ok.status is Status.UP, ok.summary()
    assert ok.metrics["cert_days_left"] > 7
    insecure = TlsOptions(verify=False)
    soon = await check(FakeMysql(tls=expired_tls), starttls_options=insecure, **fields)
    assert soon.metrics["cert_days_left"] < 0
    assert soon.error is not None and soon.error.kind is ErrorKind.ASSERTION


def test_cli_help_lists_the_options() -> None:
    env = {**os.environ}
    completed = subprocess.run(
        [sys.executable, "-m", "probekit", "check", "mysql", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for flag in ("--user", "--password-env", "--database", "--query", "--expect", "--ssl"):
        assert flag in completed.stdout


async def test_cli_check_against_the_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeMysql(results={"SELECT 1": [("1",)]})
    async with TcpServer(server) as listening:
        env = {**os.environ, "DB_PW": PASSWORD}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probekit",
            "check",
            "--nagios",
            "mysql",
            f"127.0.0.1:{listening.port}",
            "-u",
            USER,
            "--password-env",
            "DB_PW",
            "-q",
            "SELECT 1",
            "--expect",
            "1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, errors = await proc.communicate()
    assert proc.returncode == 0, (out, errors)
    assert PASSWORD.encode() not in out + errors


Callback = Callable[[Reader, Writer], Awaitable[None]]
