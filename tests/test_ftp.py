"""FtpProbe against an in-process FTP server on loopback (greeting, AUTH TLS and implicit FTPS
with a trustme certificate, USER/PASS, CWD, EPSV/PASV with a data connection under PROT P, LIST,
SIZE/MDTM, QUIT), hostile variants of it (the FTP bounce, garbage, stalls in every phase), and
Hypothesis on the parsers of server bytes in ``probekit.probes._ftpwire``."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import subprocess
import sys
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
    DefinitionError,
    EgressPolicy,
    ErrorKind,
    FakeClock,
    ProbeContext,
    Result,
    Secret,
    Status,
    Timeouts,
    TlsOptions,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes._ftpwire import (
    Endpoint,
    ListingCounter,
    Malformed,
    Reply,
    ReplyAssembler,
    parse_epsv,
    parse_mdtm,
    parse_mlst,
    parse_pasv,
    parse_reply,
    parse_size,
)
from probekit.probes.ftp import KIND, FtpProbe
from servers import GuardedConnector, TcpServer, make_context

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

PASSWORD = "ftp-canary-5c1d77e0"  # a canary: it must show up nowhere but on the wire
USER = "monitor"
LOGIN: dict[str, Any] = {"username": USER, "password": Secret(PASSWORD)}
MTIME = dt.datetime(2026, 11, 28, 12, 30, 5, tzinfo=dt.UTC)


def listing_line(name: str) -> bytes:
    return b"-rw-r--r--    1 1000     1000          120 Nov 28 12:30 %s\r\n" % name.encode()


@attrs.define
class FakeFtp:
    """The server side of one test: a small FTP server, well-behaved unless told otherwise.

    ``tls`` offers ``AUTH TLS`` with that context (``implicit`` when the control connection is
    TLS from the start); ``directories`` maps a path to its entry names, ``files`` a path to its
    size. ``replies`` replaces the answer to a verb; ``stall`` names verbs never answered
    (``GREETING``; ``HANDSHAKE`` for the TLS handshake after ``AUTH TLS``; ``DATA`` for a data
    connection that sends nothing; ``FINAL`` for the reply after a transfer). ``pasv`` replaces
    the address announced in a 227 reply; ``epsv`` False answers EPSV with 500.
    ``require_reuse`` refuses a data connection whose TLS session is not the control one's.
    ``commands`` records the lines received and ``data_connections`` the data connections.
    """

    greeting: bytes = b"220 fake FTP ready\r\n"
    tls: ssl.SSLContext | None = None
    implicit: bool = False
    users: dict[str, str | None] = attrs.field(factory=lambda: {USER: PASSWORD})
    directories: dict[str, list[str]] = attrs.field(
        factory=lambda: {"/": ["pub", "drop"], "/drop": ["a.csv", "b.csv", "c.csv"], "/pub": []}
    )
    files: dict[str, int] = attrs.field(factory=lambda: {"/drop/a.csv": 120})
    replies: dict[bytes, bytes] = attrs.field(factory=dict)
    stall: set[bytes] = attrs.field(factory=set)
    pasv: bytes | None = None
    epsv: bool = True
    listing: bytes | None = None
    endless_listing: bool = False
    require_reuse: bool = False
    echo_password: bool = False
    fail_transfer: bool = False
    mlst: bool = False
    data_host: str = "127.0.0.1"
    commands: list[bytes] = attrs.field(factory=list)
    data_connections: int = 0
    reused: list[bool] = attrs.field(factory=list)

    async def __call__(self, reader: Reader, writer: Writer) -> None:
        if b"GREETING" in self.stall:
            await asyncio.sleep(3600)
        if not self.greeting:
            return  # hang up at once
        writer.write(self.greeting)
        await writer.drain()
        secure = self.implicit
        protected = False
        user: str | None = None
        logged_in = False
        cwd = "/"
        data: asyncio.Future[tuple[Reader, Writer]] | None = None
        listener: asyncio.Server | None = None
        try:
            while line := await reader.readline():
                line = line.rstrip(b"\r\n")
                self.commands.append(line)
                verb, _, arg = line.partition(b" ")
                verb = verb.upper()
                if verb in self.stall:
                    await asyncio.sleep(3600)
                if verb in self.replies:
                    writer.write(self.replies[verb])
                    await writer.drain()
                    if verb == b"AUTH" and self.replies[verb].startswith(b"234"):
                        await writer.start_tls(self.tls)  # type: ignore[arg-type]
                    continue
                if verb == b"AUTH":
                    if self.tls is None or secure:
                        writer.write(b"500 AUTH not understood\r\n")
                    else:
                        writer.write(b"234 Proceed with negotiation.\r\n")
                        await writer.drain()
                        if b"HANDSHAKE" in self.stall:
                            await asyncio.sleep(3600)
                        await writer.start_tls(self.tls)
                        secure = True
                        continue
                elif verb == b"USER":
                    user = arg.decode()
                    if user in self.users and self.users[user] is None:
                        writer.write(b"331 Please send your e-mail address.\r\n")
                    else:
                        writer.write(b"331 Please specify the password.\r\n")
                elif verb == b"PASS":
                    expected = self.users.get(user or "", "")
                    if user is not None and (expected is None or arg.decode() == expected):
                        logged_in = True
                        writer.write(b"230 Login successful.\r\n")
                    elif self.echo_password:
                        writer.write(b"530 Login incorrect for password " + arg + b".\r\n")
                    else:
                        writer.write(b"530 Login incorrect.\r\n")
                elif not logged_in and verb != b"QUIT":
                    writer.write(b"530 Please login with USER and PASS.\r\n")
                elif verb == b"PBSZ":
                    writer.write(b"200 PBSZ set to 0.\r\n")
                elif verb == b"PROT":
                    protected = arg.upper() == b"P"
                    writer.write(b"200 PROT now %s.\r\n" % (b"Private" if protected else b"Clear"))
                elif verb == b"CWD":
                    path = self._path(cwd, arg.decode())
                    if path in self.directories:
                        cwd = path
                        writer.write(b"250 Directory successfully changed.\r\n")
                    else:
                        writer.write(b"550 Failed to change directory.\r\n")
                elif verb == b"MLST" and self.mlst:
                    path = self._path(cwd, arg.decode())
                    if path in self.files:
                        writer.write(
                            b"250-Listing %s\r\n type=file;size=%d;modify=%s;perm=r; %s\r\n"
                            b"250 End\r\n"
                            % (
                                arg,
                                self.files[path],
                                MTIME.strftime("%Y%m%d%H%M%S").encode(),
                                path.encode(),
                            )
                        )
                    else:
                        writer.write(b"550 No such file or directory.\r\n")
                elif verb == b"TYPE":
                    writer.write(b"200 Switching to Binary mode.\r\n")
                elif verb == b"SIZE":
                    size = self.files.get(self._path(cwd, arg.decode()))
                    if size is None:
                        writer.write(b"550 Could not get file size.\r\n")
                    else:
                        writer.write(b"213 %d\r\n" % size)
                elif verb == b"MDTM":
                    if self._path(cwd, arg.decode()) in self.files:
                        writer.write(b"213 " + MTIME.strftime("%Y%m%d%H%M%S").encode() + b"\r\n")
                    else:
                        writer.write(b"550 Could not get file modification time.\r\n")
                elif verb in (b"EPSV", b"PASV"):
                    if verb == b"EPSV" and not self.epsv:
                        writer.write(b"500 Unknown command.\r\n")
                    else:
                        if listener is not None:
                            listener.close()
                        data, listener = await self._listen()
                        port = listener.sockets[0].getsockname()[1]
                        if verb == b"EPSV":
                            writer.write(b"229 Entering Extended Passive Mode (|||%d|)\r\n" % port)
                        else:
                            address = self.pasv or b"127,0,0,1"
                            writer.write(
                                b"227 Entering Passive Mode (%s,%d,%d).\r\n"
                                % (address, port // 256, port % 256)
                            )
                elif verb == b"LIST":
                    if data is None:
                        writer.write(b"425 Use PORT or PASV first.\r\n")
                    else:
                        await self._list(writer, data, cwd, protected)
                        data = None
                elif verb == b"QUIT":
                    writer.write(b"221 Goodbye.\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 Command not implemented.\r\n")
                await writer.drain()
        finally:
            if listener is not None:
                listener.close()

    @staticmethod
    def _path(cwd: str, arg: str) -> str:
        path = arg if arg.startswith("/") else cwd.rstrip("/") + "/" + arg
        return path.rstrip("/") or "/"

    async def _listen(self) -> tuple[asyncio.Future[tuple[Reader, Writer]], asyncio.Server]:
        accepted: asyncio.Future[tuple[Reader, Writer]] = asyncio.get_running_loop().create_future()

        async def on_data(reader: Reader, writer: Writer) -> None:
            self.data_connections += 1
            if accepted.done():
                writer.close()
            else:
                accepted.set_result((reader, writer))  # the LIST handler owns it now

        return accepted, await asyncio.start_server(on_data, self.data_host, 0)

    async def _list(
        self, writer: Writer, data: asyncio.Future[tuple[Reader, Writer]], cwd: str, tls: bool
    ) -> None:
        _reader, data_writer = await asyncio.wait_for(data, 5)
        writer.write(b"150 Here comes the directory listing.\r\n")
        await writer.drain()
        if tls:
            assert self.tls is not None
            if b"DATATLS" in self.stall:
                await asyncio.sleep(3600)
            await data_writer.start_tls(self.tls)
            ssl_object = data_writer.get_extra_info("ssl_object")
            self.reused.append(bool(ssl_object.session_reused))
            if self.require_reuse and not ssl_object.session_reused:
                data_writer.close()
                writer.write(b"522 SSL connection failed: session reuse required\r\n")
                return
        if b"DATA" in self.stall:
            await asyncio.sleep(3600)
        if self.endless_listing:
            chunk = listing_line("x") * 1000
            try:
                while True:
                    data_writer.write(chunk)
                    await data_writer.drain()
            except ConnectionError:
                return
        body = self.listing
        if body is None:
            body = b"".join(listing_line(name) for name in self.directories.get(cwd, []))
        data_writer.write(body)
        await data_writer.drain()
        data_writer.close()
        if b"FINAL" in self.stall:
            await asyncio.sleep(3600)
        if self.fail_transfer:
            writer.write(b"426 Connection closed; transfer aborted.\r\n")
        else:
            writer.write(b"226 Directory send OK.\r\n")


async def check(
    server: FakeFtp,
    ctx: ProbeContext,
    *,
    tls_server: ssl.SSLContext | None = None,
    **fields: Any,
) -> Result:
    async with TcpServer(server, tls_server) as listening:
        host = fields.pop("host", "127.0.0.1")
        return await FtpProbe(host, listening.port, **fields).check(ctx)


def verbs(server: FakeFtp) -> list[bytes]:
    return [line.split(b" ", 1)[0] for line in server.commands]


def error(result: Result) -> tuple[ErrorKind, str | None]:
    assert result.error is not None, result.summary()
    return result.error.kind, result.error.phase


# -- up ----------------------------------------------------------------------------------------


async def test_up_with_the_greeting_only(ctx: ProbeContext) -> None:
    server = FakeFtp()
    result = await check(server, ctx)
    assert result.status is Status.UP, result.summary()
    assert result.kind == "ftp"
    assert result.phase_names() == ("resolve", "connect", "banner", "starttls", "quit")
    assert result.metrics == {"banner_code": 220, "tls": 0}
    assert verbs(server) == [b"AUTH", b"QUIT"]
    assert [(a.name, a.passed) for a in result.assertions] == [("starttls", True)]
    assert "500 AUTH not understood" in result.assertions[0].observed


async def test_up_with_login_and_listing(ctx: ProbeContext, connector: GuardedConnector) -> None:
    server = FakeFtp()
    result = await check(server, ctx, starttls="off", path="/drop", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == (
        "resolve",
        "connect",
        "banner",
        "auth",
        "cwd",
        "passive",
        "data",
        "quit",
    )
    assert result.metrics["entries"] == 3
    assert result.metrics["listing_bytes"] == 3 * len(listing_line("a.csv"))
    assert server.commands == [
        b"USER monitor",
        b"PASS " + PASSWORD.encode(),
        b"CWD /drop",
        b"EPSV",
        b"LIST",
        b"QUIT",
    ]
    assert server.data_connections == 1
    assert len(connector.dialled) == 2 and connector.refused == []
    assert get_kind("ftp").describe(result) == "FTP over plain text, 3 entries"  # type: ignore[misc]


async def test_an_empty_directory_lists_no_entries(ctx: ProbeContext) -> None:
    result = await check(FakeFtp(), ctx, starttls="off", path="/pub", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["entries"] == 0


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_epsv_over_ipv6(ctx: ProbeContext, connector: GuardedConnector) -> None:
    server = FakeFtp(data_host="::1")
    listening = await asyncio.start_server(server, "::1", 0)
    try:
        port = listening.sockets[0].getsockname()[1]
        result = await FtpProbe("::1", port, starttls="off", path="/drop", **LOGIN).check(ctx)
    finally:
        listening.close()
    assert result.status is Status.UP, result.summary()
    assert result.metrics["entries"] == 3
    assert b"PASV" not in verbs(server)
    assert [ip for ip, _port in connector.dialled] == ["::1", "::1"]


async def test_no_pasv_over_ipv6_when_epsv_is_refused(ctx: ProbeContext) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    server = FakeFtp(data_host="::1", epsv=False)
    listening = await asyncio.start_server(server, "::1", 0)
    try:
        port = listening.sockets[0].getsockname()[1]
        result = await FtpProbe("::1", port, starttls="off", path="/drop", **LOGIN).check(ctx)
    finally:
        listening.close()
    assert error(result) == (ErrorKind.PROTOCOL, "passive")
    assert b"PASV" not in verbs(server)


async def test_pasv_when_epsv_is_unknown(ctx: ProbeContext) -> None:
    server = FakeFtp(epsv=False)
    result = await check(server, ctx, starttls="off", path="/drop", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert verbs(server)[3:6] == [b"EPSV", b"PASV", b"LIST"]
    assert result.metrics["entries"] == 3


async def test_the_listing_counts_lines_not_the_total_line(ctx: ProbeContext) -> None:
    server = FakeFtp(listing=b"total 12\r\n" + listing_line("a") + b"\r\n" + listing_line("b")[:-2])
    result = await check(server, ctx, starttls="off", path="/drop", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["entries"] == 2


async def test_auth_tls_then_a_protected_listing_resuming_the_session(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = FakeFtp(tls=good_tls, require_reuse=True)
    result = await check(
        server,
        ctx,
        host="localhost",
        starttls="required",
        starttls_options=TlsOptions(ca_data=ca_pem),
        path="/drop",
        **LOGIN,
    )
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == (
        "resolve",
        "connect",
        "banner",
        "starttls",
        "tls",
        "auth",
        "cwd",
        "passive",
        "data",
        "quit",
    )
    assert result.metrics["tls"] == 1
    assert result.metrics["entries"] == 3
    assert result.tls is not None and result.tls.verified
    assert verbs(server) == [
        b"AUTH",
        b"USER",
        b"PASS",
        b"CWD",
        b"PBSZ",
        b"PROT",
        b"EPSV",
        b"LIST",
        b"QUIT",
    ]
    assert server.commands[5] == b"PROT P"
    assert server.reused == [True]
    assert get_kind("ftp").describe(result) == "FTP over AUTH TLS, 3 entries"  # type: ignore[misc]


async def test_implicit_ftps(ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str) -> None:
    server = FakeFtp(tls=good_tls, implicit=True)
    result = await check(
        server,
        ctx,
        tls_server=good_tls,
        host="localhost",
        tls=TlsOptions(ca_data=ca_pem),
        path="/drop",
        **LOGIN,
    )
    assert result.status is Status.UP, result.summary()
    assert result.phase_names()[:4] == ("resolve", "connect", "tls", "banner")
    assert "starttls" not in result.phase_names()
    assert verbs(server)[:2] == [b"USER", b"PASS"]
    assert b"PROT P" in server.commands
    assert server.reused == [True]
    assert result.metrics["tls"] == 1 and result.metrics["entries"] == 3


async def test_anonymous_login_sends_the_conventional_password(ctx: ProbeContext) -> None:
    server = FakeFtp(users={"anonymous": None})
    result = await check(server, ctx, starttls="off", username="anonymous", path="/")
    assert result.status is Status.UP, result.summary()
    assert server.commands[:2] == [b"USER anonymous", b"PASS anonymous@"]
    assert result.metrics["entries"] == 2


async def test_a_user_logged_in_by_user_alone(ctx: ProbeContext) -> None:
    server = FakeFtp(replies={b"USER": b"230 Already in.\r\n"})
    result = await check(server, ctx, starttls="off", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert verbs(server) == [b"USER", b"QUIT"]


async def test_stat_of_a_file(ctx: ProbeContext) -> None:
    clock = FakeClock(start=MTIME + dt.timedelta(seconds=90))
    ctx = attrs.evolve(ctx, clock=clock)
    server = FakeFtp()
    result = await check(server, ctx, starttls="off", path="/drop/a.csv", operation="stat", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert "stat" in result.phase_names() and "data" not in result.phase_names()
    assert result.metrics["size_bytes"] == 120
    assert result.metrics["is_directory"] == 0
    assert result.metrics["mtime"] == MTIME.timestamp()
    assert result.metrics["age_seconds"] == pytest.approx(90, abs=1)
    assert server.data_connections == 0


async def test_stat_of_a_file_by_mlst(ctx: ProbeContext) -> None:
    ctx = attrs.evolve(ctx, clock=FakeClock(start=MTIME + dt.timedelta(seconds=30)))
    server = FakeFtp(mlst=True)
    result = await check(server, ctx, starttls="off", path="/drop/a.csv", operation="stat", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["size_bytes"] == 120
    assert result.metrics["is_directory"] == 0
    assert result.metrics["age_seconds"] == pytest.approx(30, abs=1)
    assert b"SIZE" not in verbs(server)
    missing = await check(
        FakeFtp(mlst=True), ctx, starttls="off", path="/x", operation="stat", **LOGIN
    )
    assert error(missing)[0] is ErrorKind.ASSERTION
    assert missing.error is not None and "550 No such file" in missing.error.message


async def test_stat_without_mlst_size_or_mdtm_is_protocol(ctx: ProbeContext) -> None:
    server = FakeFtp(replies={b"SIZE": b"502 no\r\n", b"MDTM": b"502 no\r\n"})
    result = await check(server, ctx, starttls="off", path="/x", operation="stat", **LOGIN)
    assert error(result) == (ErrorKind.PROTOCOL, "stat")
    assert result.error is not None and "MLST, SIZE and MDTM" in result.error.message


async def test_stat_of_a_directory(ctx: ProbeContext) -> None:
    result = await check(FakeFtp(), ctx, starttls="off", path="/drop", operation="stat", **LOGIN)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["is_directory"] == 1


async def test_assertions_see_the_greeting(ctx: ProbeContext) -> None:
    server = FakeFtp(greeting=b"220-Welcome\r\n220-to the archive\r\n220 vsFTPd 3.0.3\r\n")
    up = await check(server, ctx, assertions=(BodyContains("vsFTPd"),))
    assert up.status is Status.UP, up.summary()
    down = await check(
        FakeFtp(greeting=server.greeting), ctx, assertions=(BodyContains("ProFTPD"),)
    )
    assert error(down) == (ErrorKind.ASSERTION, None)


async def test_a_wait_greeting_then_the_real_one(ctx: ProbeContext) -> None:
    server = FakeFtp(greeting=b"120 ready in 1 minute\r\n220 ready now\r\n")
    result = await check(server, ctx)
    assert result.status is Status.UP, result.summary()


async def test_against_the_aioftp_server(
    ctx: ProbeContext, tmp_path: Any, connector: GuardedConnector
) -> None:
    """aioftp's server (another implementation than the fake above): a listing, a stat by
    MLST, a missing path and a wrong password."""
    import aioftp

    (tmp_path / "drop").mkdir()
    for name in ("a.csv", "b.csv"):
        (tmp_path / "drop" / name).write_text("x" * 10)
    server = aioftp.Server([aioftp.User(USER, PASSWORD, home_path="/", base_path=tmp_path)])
    await server.start("127.0.0.1", 0)
    try:
        port = server.server.sockets[0].getsockname()[1]
        listed = await FtpProbe("127.0.0.1", port, path="/drop", **LOGIN).check(ctx)
        stat = await FtpProbe(
            "127.0.0.1", port, path="/drop/a.csv", operation="stat", **LOGIN
        ).check(ctx)
        missing = await FtpProbe("127.0.0.1", port, path="/nope", **LOGIN).check(ctx)
        wrong = await FtpProbe("127.0.0.1", port, username=USER, password=Secret("wrong")).check(
            ctx
        )
    finally:
        await server.close()
    assert listed.status is Status.UP, listed.summary()
    assert listed.metrics["entries"] == 2
    assert stat.status is Status.UP, stat.summary()
    assert stat.metrics["size_bytes"] == 10 and stat.metrics["is_directory"] == 0
    assert error(missing)[0] is ErrorKind.ASSERTION
    assert error(wrong) == (ErrorKind.AUTH, "auth")
    assert connector.refused == []


# -- down --------------------------------------------------------------------------------------


async def test_wrong_password_is_auth_and_the_password_shows_nowhere(ctx: ProbeContext) -> None:
    server = FakeFtp(echo_password=True)
    wrong = "not-the-" + PASSWORD
    result = await check(
        server, ctx, starttls="off", username=USER, password=Secret(wrong), path="/drop"
    )
    assert error(result) == (ErrorKind.AUTH, "auth")
    assert result.error is not None and "530 Login incorrect" in result.error.message
    assert wrong not in result_to_json(result) and wrong not in result.summary()
    assert "<secret>" in result.error.message
    assert server.data_connections == 0


async def test_an_unknown_user_is_auth(ctx: ProbeContext) -> None:
    server = FakeFtp(replies={b"USER": b"530 This FTP server is anonymous only.\r\n"})
    result = await check(server, ctx, starttls="off", **LOGIN)
    assert error(result) == (ErrorKind.AUTH, "auth")


async def test_plaintext_login_refused_by_a_tls_only_server(ctx: ProbeContext) -> None:
    server = FakeFtp(replies={b"USER": b"530 Non-anonymous sessions must use encryption.\r\n"})
    result = await check(server, ctx, starttls="off", **LOGIN)
    assert error(result) == (ErrorKind.AUTH, "auth")
    assert result.error is not None and "must use encryption" in result.error.message


async def test_a_missing_path_is_a_failed_assertion_and_quits_cleanly(ctx: ProbeContext) -> None:
    server = FakeFtp()
    result = await check(server, ctx, starttls="off", path="/nope", **LOGIN)
    assert error(result)[0] is ErrorKind.ASSERTION
    assert result.error is not None and "550 Failed to change directory" in result.error.message
    assert verbs(server)[-2:] == [b"CWD", b"QUIT"]
    assert server.data_connections == 0


async def test_stat_of_a_missing_path(ctx: ProbeContext) -> None:
    result = await check(FakeFtp(), ctx, starttls="off", path="/nope", operation="stat", **LOGIN)
    assert error(result)[0] is ErrorKind.ASSERTION
    assert result.error is not None and "not found" in result.error.message


async def test_too_few_entries(ctx: ProbeContext) -> None:
    result = await check(FakeFtp(), ctx, starttls="off", path="/drop", min_entries=4, **LOGIN)
    assert error(result)[0] is ErrorKind.ASSERTION
    assert result.error is not None and "3 entries" in result.error.message
    ok = await check(FakeFtp(), ctx, starttls="off", path="/drop", min_entries=3, **LOGIN)
    assert ok.status is Status.UP, ok.summary()


async def test_starttls_required_and_refused_is_tls(ctx: ProbeContext) -> None:
    server = FakeFtp()
    result = await check(server, ctx, starttls="required", **LOGIN)
    assert error(result) == (ErrorKind.TLS, "starttls")
    assert verbs(server) == [b"AUTH"]  # no USER: the password never crossed in plain text


async def test_untrusted_certificate_after_auth_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    server = FakeFtp(tls=self_signed_tls)
    result = await check(server, ctx, host="localhost", starttls="required", **LOGIN)
    assert error(result) == (ErrorKind.TLS, "tls")
    assert b"USER" not in verbs(server)


async def test_plain_bytes_after_the_go_ahead_are_refused(ctx: ProbeContext) -> None:
    server = FakeFtp(replies={b"AUTH": b"234 go ahead\r\n230 injected\r\n"})
    result = await check(server, ctx, starttls="required", **LOGIN)
    assert error(result) == (ErrorKind.PROTOCOL, "starttls")


async def test_prot_p_refused_is_tls(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    server = FakeFtp(tls=good_tls, replies={b"PROT": b"534 PROT P not allowed\r\n"})
    result = await check(
        server,
        ctx,
        host="localhost",
        starttls_options=TlsOptions(ca_data=ca_pem),
        path="/drop",
        **LOGIN,
    )
    assert error(result) == (ErrorKind.TLS, "passive")
    assert server.data_connections == 0


@pytest.mark.parametrize(
    ("greeting", "phase"),
    [
        (b"421 Too many connections\r\n", "banner"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "banner"),
        (b"\x00\xff\xfe garbage\r\n", "banner"),
        (b"220-multi\r\n" + b"x" * 5000 + b"\r\n", "banner"),
        (b"220-endless\r\n" + b"220-more\r\n" * 300, "banner"),
        (b"", "banner"),
    ],
    ids=["refused", "not-ftp", "binary", "long-line", "too-many-lines", "closed"],
)
async def test_garbage_greetings_are_protocol(
    ctx: ProbeContext, greeting: bytes, phase: str
) -> None:
    result = await check(FakeFtp(greeting=greeting), ctx, timeouts=Timeouts(total=2))
    assert error(result) == (ErrorKind.PROTOCOL, phase)


@pytest.mark.parametrize(
    ("verb", "reply", "phase"),
    [
        (b"EPSV", b"229 Entering Extended Passive Mode (|||99999|)\r\n", "passive"),
        (b"EPSV", b"229 Entering Extended Passive Mode (|x|1234|)\r\n", "passive"),
        (b"EPSV", b"425 no\r\n", "passive"),
        (b"PASV", b"227 Entering Passive Mode (300,0,0,1,4,1)\r\n", "passive"),
        (b"PASV", b"227 whatever\r\n", "passive"),
        (b"CWD", b"xyz\r\n", "cwd"),
        (b"LIST", b"425 Can't open data connection.\r\n", "data"),
        (b"QUIT", b"500 no\r\n", "quit"),
        (b"PASS", b"331 again?\r\n", "auth"),
    ],
    ids=[
        "epsv-port",
        "epsv-delims",
        "epsv-refused",
        "pasv-octet",
        "pasv-none",
        "cwd-garbage",
        "list-refused",
        "quit-refused",
        "pass-odd",
    ],
)
async def test_garbage_replies_are_protocol(
    ctx: ProbeContext, verb: bytes, reply: bytes, phase: str
) -> None:
    server = FakeFtp(epsv=verb != b"PASV", replies={verb: reply})
    result = await check(
        server, ctx, starttls="off", path="/drop", timeouts=Timeouts(total=2), **LOGIN
    )
    assert error(result) == (ErrorKind.PROTOCOL, phase)


async def test_a_failed_transfer_is_protocol(ctx: ProbeContext) -> None:
    server = FakeFtp(fail_transfer=True)
    result = await check(server, ctx, starttls="off", path="/drop", **LOGIN)
    assert error(result) == (ErrorKind.PROTOCOL, "data")
    assert result.error is not None and "426" in result.error.message


async def test_a_listing_over_the_entry_limit(ctx: ProbeContext) -> None:
    server = FakeFtp(endless_listing=True)
    result = await check(
        server,
        ctx,
        starttls="off",
        path="/drop",
        max_entries=5000,
        timeouts=Timeouts(total=10),
        **LOGIN,
    )
    assert error(result) == (ErrorKind.PROTOCOL, "data")
    assert result.error is not None and "more than 5000 entries" in result.error.message


async def test_a_listing_over_the_byte_limit(ctx: ProbeContext) -> None:
    server = FakeFtp(endless_listing=True)
    result = await check(
        server,
        ctx,
        starttls="off",
        path="/drop",
        max_listing_bytes=100_000,
        timeouts=Timeouts(total=10),
        **LOGIN,
    )
    assert error(result) == (ErrorKind.PROTOCOL, "data")
    assert result.error is not None and "100000 bytes" in result.error.message


async def test_a_data_port_with_nothing_listening_is_connect(ctx: ProbeContext) -> None:
    from servers import closed_port

    port = closed_port()
    server = FakeFtp(replies={b"EPSV": b"229 Extended Passive (|||%d|)\r\n" % port})
    result = await check(server, ctx, starttls="off", path="/drop", **LOGIN)
    assert error(result) == (ErrorKind.CONNECT, "data")
    assert result.error is not None and f"127.0.0.1:{port}" in result.error.message


# -- stalls: every phase is bounded, and the timeout names it ----------------------------------


@pytest.mark.parametrize(
    ("stall", "phase"),
    [
        (b"GREETING", "banner"),
        (b"AUTH", "starttls"),
        (b"HANDSHAKE", "tls"),
        (b"USER", "auth"),
        (b"PASS", "auth"),
        (b"CWD", "cwd"),
        (b"PBSZ", "passive"),
        (b"EPSV", "passive"),
        (b"LIST", "data"),
        (b"DATATLS", "data"),
        (b"DATA", "data"),
        (b"FINAL", "data"),
        (b"QUIT", "quit"),
    ],
)
async def test_a_stall_is_a_timeout_naming_the_phase(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str, stall: bytes, phase: str
) -> None:
    server = FakeFtp(tls=good_tls, stall={stall})
    result = await check(
        server,
        ctx,
        host="localhost",
        starttls_options=TlsOptions(ca_data=ca_pem),
        path="/drop",
        timeouts=Timeouts(total=0.6),
        **LOGIN,
    )
    assert error(result) == (ErrorKind.TIMEOUT, phase)
    assert result.duration < 5


async def test_the_stat_phase_is_bounded(ctx: ProbeContext) -> None:
    server = FakeFtp(stall={b"SIZE"})
    result = await check(
        server,
        ctx,
        starttls="off",
        path="/x",
        operation="stat",
        timeouts=Timeouts(total=0.5),
        **LOGIN,
    )
    assert error(result) == (ErrorKind.TIMEOUT, "stat")


# -- the data address goes through the egress policy (acceptance 3: the FTP bounce) -----------


@pytest.mark.parametrize(
    ("announced", "mode", "policy"),
    [
        (b"169,254,169,254", "same", EgressPolicy()),
        (b"169,254,169,254", "announced", EgressPolicy()),
        (b"10,1,2,3", "same", EgressPolicy()),
        (b"192,0,2,7", "same", EgressPolicy()),
        (b"127,0,0,2", "same", EgressPolicy()),
        (b"127,0,0,2", "announced", EgressPolicy(deny=["127.0.0.2/32"])),
        (b"127,0,0,1", "announced", EgressPolicy(deny=["127.0.0.0/8"], allow=[])),
    ],
    ids=[
        "metadata-same",
        "metadata-announced",
        "private-host",
        "public-host",
        "other-loopback",
        "denied-loopback",
        "denied-control-network",
    ],
)
async def test_a_pasv_address_the_policy_denies_is_never_dialled(
    announced: bytes, mode: str, policy: EgressPolicy
) -> None:
    guard = GuardedConnector()
    ctx = make_context(policy=policy, connector=guard)
    server = FakeFtp(epsv=False, pasv=announced)
    async with TcpServer(server) as listening:
        probe = FtpProbe(
            "127.0.0.1", listening.port, starttls="off", path="/drop", pasv_address=mode, **LOGIN
        )
        if policy.deny and str(policy.deny[0]) == "127.0.0.0/8":
            # The control connection itself is denied: nothing at all is dialled.
            result = await probe.check(ctx)
            assert error(result) == (ErrorKind.POLICY_DENIED, None)
            assert guard.dialled == [] and guard.refused == []
            return
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    kind, phase = error(result)
    assert kind is ErrorKind.POLICY_DENIED, result.summary()
    assert phase in ("passive", "data")
    # Only the control connection was dialled: no data connection was attempted, and the
    # guard (which refuses anything but loopback) was never even asked for another address.
    assert guard.dialled == [("127.0.0.1", listening.port)]
    assert guard.refused == []
    assert server.data_connections == 0
    assert verbs(server)[-1] == b"PASV"


async def test_pasv_address_control_uses_the_servers_own_address() -> None:
    guard = GuardedConnector()
    ctx = make_context(connector=guard)
    server = FakeFtp(epsv=False, pasv=b"192,0,2,7")
    async with TcpServer(server) as listening:
        probe = FtpProbe(
            "127.0.0.1",
            listening.port,
            starttls="off",
            path="/drop",
            pasv_address="control",
            **LOGIN,
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert guard.refused == []
    assert [ip for ip, _port in guard.dialled] == ["127.0.0.1", "127.0.0.1"]


async def test_a_pasv_reply_of_0_0_0_0_means_the_servers_own_address() -> None:
    guard = GuardedConnector()
    ctx = make_context(connector=guard)
    server = FakeFtp(epsv=False, pasv=b"0,0,0,0")
    async with TcpServer(server) as listening:
        probe = FtpProbe("127.0.0.1", listening.port, starttls="off", path="/drop", **LOGIN)
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert [ip for ip, _port in guard.dialled] == ["127.0.0.1", "127.0.0.1"]


async def test_an_odd_reply_to_auth_tls_is_protocol(ctx: ProbeContext) -> None:
    server = FakeFtp(replies={b"AUTH": b"334 ADAT=what\r\n"})
    result = await check(server, ctx)
    assert error(result) == (ErrorKind.PROTOCOL, "starttls")


async def test_pasv_address_announced_follows_an_allowed_loopback_address() -> None:
    guard = GuardedConnector()
    ctx = make_context(connector=guard)
    server = FakeFtp(epsv=False, pasv=b"127,0,0,1")
    async with TcpServer(server) as listening:
        probe = FtpProbe(
            "127.0.0.1",
            listening.port,
            starttls="off",
            path="/drop",
            pasv_address="announced",
            **LOGIN,
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert len(guard.dialled) == 2


# -- definitions and the command line ----------------------------------------------------------


def test_defaults_and_ports() -> None:
    assert FtpProbe("ftp.example.test").port == 21
    assert FtpProbe("ftp.example.test", tls=TlsOptions()).port == 990
    assert FtpProbe("ftp.example.test").target == "ftp.example.test:21"
    assert FtpProbe("2001:db8::1").target == "[2001:db8::1]:21"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"port": 0}, "port"),
        ({"starttls": "maybe"}, "starttls"),
        ({"tls": TlsOptions(), "starttls": "required"}, "starttls"),
        ({"username": USER}, "username"),
        ({"password": Secret("x")}, "password"),
        ({"username": "a\r\nb", "password": Secret("x")}, "username"),
        ({"username": USER, "password": Secret("a\nb")}, "password"),
        ({"path": "/x"}, "path"),
        ({"path": "", **LOGIN}, "path"),
        ({"path": "/a\r\nDELE b", **LOGIN}, "path"),
        ({"operation": "read", **LOGIN}, "operation"),
        ({"pasv_address": "any"}, "pasv_address"),
        ({"max_entries": 0}, "max_entries"),
        ({"max_listing_bytes": -1}, "max_listing_bytes"),
        ({"min_entries": 1, **LOGIN}, "min_entries"),
        ({"min_entries": -1, "path": "/", **LOGIN}, "min_entries"),
        ({"min_entries": 1, "path": "/", "operation": "stat", **LOGIN}, "min_entries"),
        ({"min_entries": 10, "max_entries": 5, "path": "/", **LOGIN}, "min_entries"),
        ({"ip_family": "ipx"}, "ip_family"),
        ({"host": ""}, "host"),
    ],
)
def test_invalid_definitions_name_their_field(fields: dict[str, Any], field: str) -> None:
    host = fields.pop("host", "ftp.example.test")
    with pytest.raises(DefinitionError) as info:
        FtpProbe(host, **fields)
    assert info.value.path == field
    assert PASSWORD not in str(info.value)


def test_round_trip_through_plain_data() -> None:
    probe = FtpProbe(
        "ftp.example.test",
        starttls="required",
        path="/drop",
        min_entries=1,
        pasv_address="control",
        **LOGIN,
    )
    data = probe_to_dict(probe)
    assert data["kind"] == "ftp"
    assert PASSWORD not in str(data)
    assert data["password"] == "<secret>"
    data["password"] = {"secret": "ftp"}
    assert build_probe(data, secrets={"ftp": Secret(PASSWORD)}) == probe
    anonymous = build_probe({"kind": "ftp", "host": "h.test", "username": "anonymous", "path": "/"})
    assert isinstance(anonymous, FtpProbe) and anonymous.password is None


def test_the_kind_declaration() -> None:
    assert get_kind("ftp") is KIND
    assert KIND.cls is FtpProbe
    assert {m.key for m in KIND.metrics} >= {"banner_code", "tls", "entries", "size_bytes"}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "probekit", "check", "ftp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_help_has_the_options_a_check_ftp_user_expects() -> None:
    done = _cli("--help")
    assert done.returncode == 0, done.stderr
    for flag in (
        "--tls",
        "--starttls",
        "--insecure",
        "--ca-file",
        "--user",
        "--password-env",
        "--anonymous",
        "--path",
        "--stat",
        "--min-entries",
        "--pasv-address",
        "--contains",
        "--ipv4",
        "--ipv6",
        "--cert-warn-days",
        "--warn",
        "--crit",
        "--timeout",
    ):
        assert flag in done.stdout, flag


async def test_cli_checks_a_server_and_keeps_the_password_secret() -> None:
    server = FakeFtp(users={USER: PASSWORD, "anonymous": None})
    async with TcpServer(server) as listening:
        done = await asyncio.to_thread(
            _cli,
            f"127.0.0.1:{listening.port}",
            "--starttls",
            "off",
            "--user",
            USER,
            "--password-env",
            "FTP_PW",
            "--path",
            "/drop",
            "--nagios",
            env={"FTP_PW": PASSWORD},
        )
        stat = await asyncio.to_thread(
            _cli,
            f"127.0.0.1:{listening.port}",
            "--starttls",
            "off",
            "--anonymous",
            "--path",
            "/nope",
            "--stat",
            "--json",
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 entries" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    assert stat.returncode == 2, stat.stdout + stat.stderr
    assert '"kind":"assertion"' in stat.stdout
    assert b"USER anonymous" in server.commands and b"SIZE /nope" in server.commands


# -- the parsers: arbitrary bytes give a classified value, never an exception ------------------


lines = st.binary(max_size=300) | st.sampled_from(
    [b"220 ok\r\n", b"220-a\r\n", b"220 \r\n", b"220\r\n", b"2201\r\n", b"999 x\r\n", b"\r\n"]
)


@given(st.lists(lines, max_size=30))
@settings(max_examples=300)
def test_the_reply_assembler_classifies_any_lines(fed: list[bytes]) -> None:
    assembler = ReplyAssembler(max_lines=10, keep_lines=3)
    for line in fed:
        outcome = assembler.feed(line)
        assert outcome is None or isinstance(outcome, Reply | Malformed)
        if isinstance(outcome, Reply):
            assert 100 <= outcome.code <= 599
            assert 1 <= len(outcome.lines) <= 5
            assert all(len(text) <= 200 for text in outcome.lines)
            str(outcome)


@given(st.binary(max_size=2000))
@settings(max_examples=300)
def test_parse_reply_classifies_any_bytes(data: bytes) -> None:
    outcome = parse_reply(data, max_lines=20)
    assert outcome is None or isinstance(outcome, Reply | Malformed)


def test_multi_line_replies() -> None:
    assert parse_reply(b"230-Welcome\r\n230-  230 inside\r\n230 done\r\n") == Reply(
        230, ("Welcome", "230-  230 inside", "done")
    )
    assert parse_reply(b"211-Features:\r\n EPSV\r\n PASV\r\n211 End\r\n") == Reply(
        211, ("Features:", " EPSV", " PASV", "End")
    )
    assert parse_reply(b"220 single\r\n") == Reply(220, ("single",))
    assert parse_reply(b"220\r\n") == Reply(220, ("",))
    assert parse_reply(b"220-open\r\n") is None
    assert isinstance(parse_reply(b"hello\r\n"), Malformed)
    assert isinstance(parse_reply(b"2200 x\r\n"), Malformed)
    assert isinstance(parse_reply(b"220-a\r\n" + b"x\r\n" * 30, max_lines=10), Malformed)


@given(st.binary(max_size=200) | st.text(max_size=200))
@settings(max_examples=300)
def test_address_parsers_classify_any_input(data: bytes | str) -> None:
    for parsed in (parse_pasv(data), parse_epsv(data)):
        assert isinstance(parsed, Endpoint | Malformed)
        if isinstance(parsed, Endpoint):
            assert 1 <= parsed.port <= 65535
    pasv = parse_pasv(data)
    if isinstance(pasv, Endpoint):
        assert pasv.host is not None and all(0 <= int(n) <= 255 for n in pasv.host.split("."))
    assert isinstance(parse_size(data), int | Malformed)
    assert isinstance(parse_mdtm(data), dt.datetime | Malformed)


@given(
    st.tuples(*[st.integers(0, 255)] * 4),
    st.integers(1, 65535),
    st.sampled_from(["(%s)", "%s", "=%s.", "(%s) extra 1,2,3"]),
)
def test_pasv_addresses_round_trip(octets: tuple[int, ...], port: int, wrap: str) -> None:
    numbers = ",".join(str(n) for n in (*octets, port // 256, port % 256))
    text = "Entering Passive Mode " + wrap % numbers
    assert parse_pasv(text) == Endpoint(".".join(str(n) for n in octets), port)


@given(st.integers(1, 65535), st.sampled_from("|!#$%&'*+-.:;=?@^_`~"))
def test_epsv_ports_round_trip(port: int, delimiter: str) -> None:
    d = delimiter
    assert parse_epsv(f"Entering Extended Passive Mode ({d}{d}{d}{port}{d})") == Endpoint(
        None, port
    )


def test_epsv_and_pasv_refusals() -> None:
    assert isinstance(parse_epsv("(|||0|)"), Malformed)
    assert isinstance(parse_epsv("(|||70000|)"), Malformed)
    assert isinstance(parse_epsv("(|!|1234|)"), Malformed)
    assert isinstance(parse_pasv("(127,0,0,1,0,0)"), Malformed)
    assert isinstance(parse_pasv("(256,0,0,1,4,1)"), Malformed)


@given(st.lists(st.text(max_size=80), max_size=5))
def test_parse_mlst_classifies_any_lines(given_lines: list[str]) -> None:
    facts = parse_mlst(tuple(given_lines))
    assert isinstance(facts, dict | Malformed)


def test_mlst_facts() -> None:
    assert parse_mlst(("Listing x", " Type=file;Size=12;modify=20261128123005; /x", "End")) == {
        "type": "file",
        "size": "12",
        "modify": "20261128123005",
    }
    assert isinstance(parse_mlst(("Listing", "End")), Malformed)


def test_size_and_mdtm() -> None:
    assert parse_size(" 1024 ") == 1024
    assert isinstance(parse_size("-1"), Malformed)
    assert parse_mdtm("20261128123005") == MTIME
    assert parse_mdtm("20261128123005.123") == MTIME
    assert isinstance(parse_mdtm("20261328123005"), Malformed)
    assert isinstance(parse_mdtm("2026112812300"), Malformed)


@given(st.lists(st.binary(max_size=40), max_size=40), st.lists(st.integers(0, 2000), max_size=10))
@settings(max_examples=300)
def test_the_listing_counter_does_not_depend_on_how_bytes_are_split(
    entries: list[bytes], cuts: list[int]
) -> None:
    data = b"\n".join(entries)
    whole = ListingCounter()
    whole.feed(data)
    whole.finish()
    pieces = ListingCounter()
    start = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        pieces.feed(data[start:cut])
        start = cut
    pieces.feed(data[start:])
    pieces.finish()
    assert (pieces.entries, pieces.bytes) == (whole.entries, whole.bytes)
    expected = sum(
        1 for line in data.split(b"\n") if line.strip() and not line.lower().startswith(b"total ")
    )
    assert whole.entries == expected
    assert len(pieces._head) == 0


def test_the_listing_counter_keeps_no_listing() -> None:
    counter = ListingCounter()
    for _ in range(1000):
        counter.feed(listing_line("x" * 200) * 100)
        assert len(counter._head) <= 8
    counter.finish()
    assert counter.entries == 100_000
