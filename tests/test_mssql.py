"""MssqlProbe against an in-process TDS server written from the [MS-TDS] specification (the
packet header and PRELOGIN), with garbage, stalls and odd answers; the TDS parsers under
Hypothesis."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
    CertExpiry,
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
from probekit.probes import _tds as tds
from probekit.probes import get_kind
from probekit.probes.mssql import KIND, MssqlProbe
from servers import GuardedConnector, TcpServer, make_context

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def options(entries: list[tuple[int, bytes]]) -> bytes:
    """A PRELOGIN option table and its data, as the specification lays it out."""
    start = len(entries) * 5 + 1
    table, data = b"", b""
    for token, value in entries:
        table += struct.pack(">BHH", token, start + len(data), len(value))
        data += value
    return table + b"\xff" + data


def answer(
    version: tuple[int, int, int, int] = (16, 0, 1000, 6), encryption: int = tds.ENCRYPT_OFF
) -> bytes:
    major, minor, build, sub = version
    return options(
        [
            (0x00, struct.pack(">BBHH", major, minor, build, sub)),
            (0x01, bytes([encryption])),
            (0x02, b"\0"),
            (0x03, b""),
            (0x04, b"\0"),
        ]
    )


def packets(payload: bytes, kind: int = 0x04, size: int = 4096) -> bytes:
    """``payload`` split into TDS packets of at most ``size`` bytes of payload each."""
    out = b""
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    for i, chunk in enumerate(chunks):
        status = 0x01 if i == len(chunks) - 1 else 0x00
        out += struct.pack(">BBHHBB", kind, status, 8 + len(chunk), 0, i + 1, 0) + chunk
    return out


@dataclass
class FakeTds:
    """Answers a client's PRELOGIN; ``raw`` replaces the answer, ``stall`` keeps silent."""

    version: tuple[int, int, int, int] = (16, 0, 1000, 6)
    encryption: int = tds.ENCRYPT_OFF
    raw: bytes | None = None
    stall: bool = False
    requests: list[dict[int, bytes]] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    tls_stall: bool = False
    tls_garbage: bytes | None = None
    accounts: dict[str, str] = field(default_factory=lambda: {USER: PASSWORD})
    databases: tuple[str, ...] = ("probe",)
    login_reply: bytes | None = None
    logins: list[dict[str, str]] = field(default_factory=list)

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        try:
            header = await reader.readexactly(8)
            kind, status, length = struct.unpack(">BBH", header[:4])
            assert (kind, status) == (0x12, 0x01)
            payload = await reader.readexactly(length - 8)
            self.requests.append(parse_request(payload))
            if self.stall:
                await reader.read()
                return
            writer.write(
                self.raw if self.raw is not None else packets(answer(self.version, self.encryption))
            )
            await writer.drain()
            if self.tls is not None:
                await self._tls(reader, writer, self.tls)
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _tls(self, reader: Reader, writer: Writer, context: ssl.SSLContext) -> None:
        """The server side of the TLS handshake, its records inside PRELOGIN packets."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            payload = await read_message(reader)
            if self.tls_stall:
                await reader.read()
                return
            if self.tls_garbage is not None:
                writer.write(self.tls_garbage)
                await writer.drain()
                return
            incoming.write(payload)
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                writer.write(tds.prelogin_packets(outgoing.read()))
                await writer.drain()
                continue
            flight = outgoing.read()
            if flight:
                writer.write(tds.prelogin_packets(flight))
                await writer.drain()
            await self._login(reader, writer, tls, incoming, outgoing)
            return

    async def _login(
        self,
        reader: Reader,
        writer: Writer,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        """Read LOGIN7 through TLS (raw records now); answer in TLS, or in plain text when the
        encryption answer was OFF (only the login packet is encrypted then)."""
        plain = b""
        while len(plain) < 8 or len(plain) < struct.unpack(">H", plain[2:4])[0]:
            try:
                plain += tls.read(65536)
            except ssl.SSLWantReadError:
                data = await reader.read(65536)
                if not data:
                    return
                incoming.write(data)
        kind = plain[0]
        assert kind == 0x10, kind
        login = parse_login7(plain[8:])
        self.logins.append(login)
        if self.login_reply is not None:
            reply = self.login_reply
        elif self.accounts.get(login["user"]) != login["password"]:
            reply = error_token(18456, f"Login failed for user '{login['user']}'.") + DONE_ERROR
        elif login["database"] and login["database"] not in self.databases:
            reply = error_token(4060, f'Cannot open database "{login["database"]}".') + DONE_ERROR
        else:
            reply = loginack() + DONE_OK
        answer = packets(reply)
        if self.encryption == tds.ENCRYPT_OFF:
            writer.write(answer)
        else:
            tls.write(answer)
            writer.write(outgoing.read())
        await writer.drain()


async def read_message(reader: Reader) -> bytes:
    """A whole client message (PRELOGIN packets up to end-of-message)."""
    message = b""
    while True:
        header = await reader.readexactly(8)
        kind, status, length = struct.unpack(">BBH", header[:4])
        assert kind == 0x12
        message += await reader.readexactly(length - 8)
        if status & 0x01:
            return message


USER = "monitor"
PASSWORD = "hunter2-canary-0b7e44"  # a canary: it must show up nowhere but inside TLS
DONE_OK = b"\xfd" + bytes(12)
DONE_ERROR = b"\xfd\x02\x00" + bytes(10)


def parse_login7(payload: bytes) -> dict[str, str]:
    """The user, the (de-obfuscated) password and the database of a LOGIN7 payload."""

    def field(index: int) -> bytes:
        offset, chars = struct.unpack_from("<HH", payload, 36 + index * 4)
        return payload[offset : offset + chars * 2]

    hidden = field(2)
    clear = bytes((((b ^ 0xA5) << 4) & 0xF0) | ((b ^ 0xA5) >> 4) for b in hidden)
    assert struct.unpack_from("<I", payload, 4)[0] == 0x74000004
    return {
        "user": field(1).decode("utf-16-le"),
        "password": clear.decode("utf-16-le"),
        "database": field(8).decode("utf-16-le"),
    }


def error_token(number: int, message: str) -> bytes:
    text = message.encode("utf-16-le")
    body = struct.pack("<IBBH", number, 1, 14, len(message)) + text + b"\x00" + b"\x00" + bytes(4)
    return b"\xaa" + struct.pack("<H", len(body)) + body


def loginack(program: str = "Microsoft SQL Server", version: bytes = b"\x10\x00\x03\xe8") -> bytes:
    name = program.encode("utf-16-le")
    body = b"\x01" + bytes.fromhex("74000004") + bytes([len(program)]) + name + version
    return b"\xad" + struct.pack("<H", len(body)) + body


def tls12(ca: Any) -> ssl.SSLContext:
    """A server context capped at TLS 1.2, as SQL Server negotiates inside TDS 7.x PRELOGIN."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def parse_request(payload: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    pos = 0
    while payload[pos] != 0xFF:
        token, offset, length = struct.unpack_from(">BHH", payload, pos)
        found[token] = payload[offset : offset + length]
        pos += 5
    return found


async def check(server: Any, **fields: Any) -> Result:
    async with TcpServer(server) as listening:
        return await MssqlProbe("127.0.0.1", listening.port, **fields).check(make_context())


def outcomes(result: Result) -> dict[str, Any]:
    return {a.name: a for a in result.assertions}


# -- PRELOGIN ------------------------------------------------------------------------------------


async def test_prelogin_records_version_and_encryption() -> None:
    server = FakeTds()
    result = await check(server)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "prelogin")
    found = outcomes(result)
    assert found["server_version"].observed == "16.0.1000.6"
    assert found["encryption"].observed.startswith("OFF")
    assert result.metrics == {"server_version": 160001000, "encryption": 0}
    request = server.requests[0]
    assert request[0x01] == bytes([tds.ENCRYPT_ON])  # optional asks for encryption
    assert len(request[0x00]) == 6 and request[0x02] == b"\0"
    describe = get_kind("mssql").describe
    assert describe is not None and describe(result) == "TDS 16.0.1000.6, encryption OFF"


async def test_an_answer_split_over_packets() -> None:
    result = await check(FakeTds(raw=packets(answer((15, 0, 4153, 1)), size=7)))
    assert result.status is Status.UP, result.summary()
    assert outcomes(result)["server_version"].observed == "15.0.4153.1"


@pytest.mark.parametrize(
    ("mode", "server", "status", "asked"),
    [
        ("required", tds.ENCRYPT_ON, Status.UP, tds.ENCRYPT_ON),
        ("required", tds.ENCRYPT_REQ, Status.UP, tds.ENCRYPT_ON),
        ("required", tds.ENCRYPT_OFF, Status.DOWN, tds.ENCRYPT_ON),
        ("required", tds.ENCRYPT_NOT_SUP, Status.DOWN, tds.ENCRYPT_ON),
        ("optional", tds.ENCRYPT_NOT_SUP, Status.UP, tds.ENCRYPT_ON),
        ("off", tds.ENCRYPT_NOT_SUP, Status.UP, tds.ENCRYPT_NOT_SUP),
        ("off", tds.ENCRYPT_REQ, Status.DOWN, tds.ENCRYPT_NOT_SUP),
    ],
)
async def test_encryption_modes(mode: str, server: int, status: Status, asked: int) -> None:
    fake = FakeTds(encryption=server)
    result = await check(fake, encryption=mode)
    assert result.status is status, result.summary()
    assert fake.requests[0][0x01] == bytes([asked])
    if status is Status.DOWN:
        assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.metrics["encryption"] == server


async def test_assertions_see_the_version() -> None:
    assert (await check(FakeTds(), assertions=(BodyContains("16.0"),))).status is Status.UP
    other = await check(FakeTds(), assertions=(BodyContains("15.0"),))
    assert other.error is not None and other.error.kind is ErrorKind.ASSERTION


# -- the TLS handshake inside PRELOGIN ---------------------------------------------------------


async def test_tls_handshake_records_the_certificate(good_tls: ssl.SSLContext, ca_pem: str) -> None:
    server = FakeTds(encryption=tds.ENCRYPT_ON, tls=good_tls)
    result = await check(
        server,
        encryption="required",
        tls=TlsOptions(ca_data=ca_pem),
        assertions=(CertExpiry(warn_days=7, crit_days=1),),
    )
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "prelogin", "tls")
    assert result.tls is not None and result.tls.verified and result.tls.chain
    assert result.metrics["cert_days_left"] > 7


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
async def test_tls_versions(version: str, good_tls: ssl.SSLContext, ca_pem: str) -> None:
    options = TlsOptions(ca_data=ca_pem, min_version=version, max_version=version)  # type: ignore[arg-type]
    result = await check(FakeTds(tls=good_tls), tls=options)
    assert result.status is Status.UP, result.summary()
    assert result.tls is not None and result.tls.version == version


async def test_an_untrusted_certificate_is_down_tls(self_signed_tls: ssl.SSLContext) -> None:
    result = await check(FakeTds(tls=self_signed_tls), tls=TlsOptions())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TLS, "tls"), result.error
    insecure = await check(FakeTds(tls=self_signed_tls), tls=TlsOptions(verify=False))
    assert insecure.status is Status.UP, insecure.summary()


async def test_tls_with_a_server_that_cannot_encrypt() -> None:
    result = await check(FakeTds(encryption=tds.ENCRYPT_NOT_SUP), tls=TlsOptions())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TLS, "tls")
    assert "NOT_SUP" in result.error.message


async def test_a_stall_in_the_tls_handshake(good_tls: ssl.SSLContext) -> None:
    server = FakeTds(tls=good_tls, tls_stall=True)
    result = await check(server, tls=TlsOptions(verify=False), timeouts=Timeouts(total=0.3))
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "tls")


async def test_the_tls_timeout_bounds_the_whole_handshake(good_tls: ssl.SSLContext) -> None:
    server = FakeTds(tls=good_tls, tls_stall=True)
    result = await check(
        server, tls=TlsOptions(verify=False), timeouts=Timeouts(total=5, tls=0.2, read=3)
    )
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "tls")
    assert result.duration < 2


@pytest.mark.parametrize(
    ("garbage", "kind", "text"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", ErrorKind.PROTOCOL, "type 0x12 or 0x04"),
        (packets(b"this is not TLS at all", kind=0x12), ErrorKind.TLS, ""),
    ],
    ids=["not-tds", "not-tls"],
)
async def test_garbage_in_the_tls_handshake(
    garbage: bytes, kind: ErrorKind, text: str, good_tls: ssl.SSLContext
) -> None:
    server = FakeTds(tls=good_tls, tls_garbage=garbage)
    result = await check(server, tls=TlsOptions(verify=False), timeouts=Timeouts(total=2))
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, "tls"), result.error
    assert text in result.error.message


# -- the login -------------------------------------------------------------------------------------


def login(**fields: Any) -> dict[str, Any]:
    return {
        "username": USER,
        "password": Secret(PASSWORD),
        "tls": TlsOptions(verify=False),
        **fields,
    }


@pytest.mark.parametrize("encryption", [tds.ENCRYPT_OFF, tds.ENCRYPT_ON, tds.ENCRYPT_REQ])
async def test_login_accepted(encryption: int, ca: Any) -> None:
    server = FakeTds(encryption=encryption, tls=tls12(ca))
    result = await check(server, database="probe", **login())
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "prelogin", "tls", "auth")
    assert outcomes(result)["auth"].observed == f"{USER} (Microsoft SQL Server 16.0.1000)"
    assert server.logins == [{"user": USER, "password": PASSWORD, "database": "probe"}]
    describe = get_kind("mssql").describe
    assert describe is not None
    assert (describe(result) or "").endswith(f"TLS, login {USER} (Microsoft SQL Server 16.0.1000)")


async def test_wrong_password_is_down_auth_naming_18456(ca: Any) -> None:
    server = FakeTds(tls=tls12(ca))
    result = await check(server, **login(password=Secret("wrong")))
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.AUTH, "auth")
    assert "18456" in result.error.message and "Login failed" in result.error.message


async def test_unknown_database_is_down_auth(ca: Any) -> None:
    result = await check(FakeTds(tls=tls12(ca)), database="nope", **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "4060" in result.error.message


async def test_the_password_shows_nowhere(ca: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    echo = error_token(18456, f"Login failed, you said {PASSWORD}") + DONE_ERROR
    result = await check(FakeTds(tls=tls12(ca), login_reply=echo), **login())
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    probe = MssqlProbe("127.0.0.1", **login())
    for text in (result_to_json(result), repr(probe), repr(probe_to_dict(probe)), caplog.text):
        assert PASSWORD not in text


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        (DONE_OK, "neither LOGINACK nor ERROR"),
        (b"\x81\x00\x00", "unexpected token 0x81"),
        (b"\xad\x40\x00abc", "runs past the end"),
        (b"\xad\x03\x00abc", "shorter than its fixed part"),
        (b"\xfd\x00", "DONE token cut short"),
    ],
)
async def test_odd_login_answers_are_down_protocol(reply: bytes, text: str, ca: Any) -> None:
    result = await check(FakeTds(tls=tls12(ca), login_reply=reply), **login())
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.PROTOCOL, "auth"), result.error
    assert text in result.error.message


async def test_a_login_needs_a_server_that_can_encrypt() -> None:
    result = await check(FakeTds(encryption=tds.ENCRYPT_NOT_SUP), **login())
    assert result.error is not None and result.error.kind is ErrorKind.TLS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_parse_login_reply_classifies_any_bytes(data: bytes) -> None:
    message = "parsed"
    try:
        tds.parse_login_reply(data)
    except tds.WireError as exc:
        message = exc.message
    assert message


def test_login7_layout() -> None:
    packet = tds.login7("u", "pässword", "db", "host", "app", "srv")
    assert packet[0] == 0x10 and struct.unpack(">H", packet[2:4])[0] == len(packet)
    assert struct.unpack("<I", packet[8:12])[0] == len(packet) - 8
    assert parse_login7(packet[8:]) == {"user": "u", "password": "pässword", "database": "db"}
    assert "pässword".encode("utf-16-le") not in packet


# -- garbage and stalls ----------------------------------------------------------------------------

GARBAGE: list[Any] = [
    pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", "type 0x04", id="http"),
    pytest.param(packets(answer(), kind=0x12), "type 0x04", id="wrong-type"),
    pytest.param(packets(b"\x00\x00\x06\x00\x06"), "terminator", id="no-terminator"),
    pytest.param(packets(options([(0x01, b"\x00")])), "VERSION", id="no-version"),
    pytest.param(packets(options([(0x00, bytes(6))])), "ENCRYPTION", id="no-encryption"),
    pytest.param(
        packets(options([(0x00, bytes(6)), (0x01, b"\x09")])), "unknown ENCRYPTION", id="enc-9"
    ),
    pytest.param(packets(b"\x00\xff\xff\x00\x06\xff"), "outside", id="offset-outside"),
    pytest.param(b"\x04\x01\x00\x02\x00\x00\x01\x00", "less than its header", id="short-len"),
    pytest.param(packets(b"x" * 5000, size=4000), "over the limit", id="too-long"),
    pytest.param(b"\x04\x01\x00", "closed", id="cut-header"),
    pytest.param(b"\x04\x00\x00\x10\x00\x00\x01\x00" + b"\xff" * 8, "closed", id="no-eom"),
]


@pytest.mark.parametrize(("raw", "text"), GARBAGE)
async def test_garbage_is_down_protocol(raw: bytes, text: str) -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await reader.read(4096)
        writer.write(raw)
        await writer.drain()
        writer.close()

    result = await check(handler)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.PROTOCOL, "prelogin"), result.error
    assert text in result.error.message


async def test_a_stall_times_out_in_prelogin() -> None:
    total = 0.3
    started = time.monotonic()
    result = await check(FakeTds(stall=True), timeouts=Timeouts(total=total))
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "prelogin")
    assert time.monotonic() - started < total + 1.0


async def test_the_read_timeout_bounds_the_wait() -> None:
    result = await check(FakeTds(stall=True), timeouts=Timeouts(total=5, read=0.2))
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.duration < 2


async def test_a_denied_address_is_never_contacted(connector: GuardedConnector) -> None:
    ctx = make_context(
        policy=EgressPolicy(deny=["127.0.0.0/8"]),
        hosts={"sql.internal": ["127.0.0.1"]},
        connector=connector,
    )
    async with TcpServer(FakeTds()) as listening:
        result = await MssqlProbe("sql.internal", listening.port).check(ctx)
        assert listening.connections == 0
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == []


# -- Hypothesis ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_parse_prelogin_classifies_any_bytes(data: bytes) -> None:
    message = "parsed"
    try:
        tds.parse_prelogin(data)
    except tds.WireError as exc:
        message = exc.message
    assert message


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(st.tuples(st.integers(0, 0xFE), st.binary(max_size=8)), max_size=6),
    cut=st.integers(0, 80),
)
def test_option_tables_cut_anywhere(entries: list[tuple[int, bytes]], cut: int) -> None:
    data = options(entries)[:cut]
    try:
        found = tds.parse_prelogin(data)
    except tds.WireError:
        return
    assert isinstance(found, tds.Prelogin)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.binary(max_size=60), st.binary(max_size=60).map(packets)))
def test_any_server_bytes_give_a_classified_result(raw: bytes) -> None:
    async def scenario() -> Result:
        return await check(FakeTds(raw=raw), timeouts=Timeouts(total=0.3))

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert result.status in (Status.UP, Status.DOWN)


def test_request_is_well_formed() -> None:
    packet = tds.prelogin_request(tds.ENCRYPT_ON)
    kind, status, length = struct.unpack(">BBH", packet[:4])
    assert (kind, status, length) == (0x12, 0x01, len(packet))
    assert parse_request(packet[8:])[0x01] == b"\x01"


# -- definitions and the command line -----------------------------------------------------------


def test_defaults_and_round_trip() -> None:
    probe = MssqlProbe("sql.internal")
    assert (probe.port, probe.encryption, probe.target) == (1433, "optional", "sql.internal:1433")
    other = MssqlProbe("::1", 1434, encryption="required", ip_family="ipv6")
    for p in (probe, other):
        assert build_probe(probe_to_dict(p)) == p


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"port": 0}, "port"),
        ({"host": ""}, "host"),
        ({"encryption": "yes"}, "encryption"),
        ({"ip_family": "ipx"}, "ip_family"),
        ({"encrypt": "off"}, "encrypt"),
        ({"encryption": "off", "tls": {}}, "tls"),
        ({"tls": {"verify": "no"}}, "tls.verify"),
        ({"username": "u"}, "password"),
        ({"password": {"secret": "db"}}, "username"),
        ({"username": "u", "password": {"secret": "db"}, "encryption": "off"}, "encryption"),
        ({"database": "d"}, "database"),
        ({"username": "u" * 129, "password": {"secret": "db"}}, "username"),
    ],
)
def test_invalid_definitions(data: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "mssql", "host": "sql", **data}, secrets={"db": Secret("x")})
    assert path in {e.path for e in info.value.errors}


def test_the_kind_and_its_command_line() -> None:
    assert get_kind("mssql") is KIND and KIND.cls is MssqlProbe
    assert KIND.target.parse("sql:1434") == {"host": "sql", "port": 1434}
    completed = subprocess.run(
        [sys.executable, "-m", "probekit", "check", "mssql", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "--encryption" in completed.stdout


async def test_cli_check_against_the_fixture() -> None:
    async with TcpServer(FakeTds(encryption=tds.ENCRYPT_REQ)) as listening:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probekit",
            "check",
            "--nagios",
            "mssql",
            f"127.0.0.1:{listening.port}",
            "--encryption",
            "required",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, errors = await proc.communicate()
    assert proc.returncode == 0, (out, errors)
    assert b"16.0.1000.6" in out
