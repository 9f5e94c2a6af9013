"""Hostile servers on loopback, each a handler per protocol family, and the cases that use them.

A case is one misbehaviour (slowloris, an endless body, a compression bomb, ...). Its handler for
the ``http`` family speaks broken HTTP/1.1; its handler for the ``line`` family breaks a
``PING``/``+PONG`` line protocol (TCP scripts, Redis); the ``smtp``, ``imap``, ``pop3`` and ``ftp``
handlers greet first, as those servers do, and break the dialogue after. Cases that do not
depend on the protocol (silence, RST, garbage, a listener that never accepts, a TLS handshake
that never starts) have one ``any`` handler for every stream family. ``expected`` is the set of
error kinds a correct probe may report.

The ``dns`` family is a UDP and TCP server on one port (:class:`hostile_kinds.DnsHandlers`):
its cases are the UDP misbehaviours (silence, garbage, a wrong id, an oversized datagram, ...)
and, through a truncated (TC) UDP reply that the probe must ask again over TCP, the stream ones
(dribbling, RST, half-close, a lying length prefix). A stream case without a ``dns`` handler
does not apply to DNS (a full backlog: UDP needs no accept); the table in
tests/hostile/test_hostile_servers.py lists what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import dns.flags
from hostile_dns import framed, read_query, response_to, silent, truncated
from hostile_kinds import (
    STREAM_FAMILIES,
    DnsHandlers,
    Family,
    http_response,
    make_server,
    read_request,
)

from pgserver import read_startup
from probekit import ErrorKind

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MAIL = ("smtp", "imap", "pop3", "ftp")

DRIBBLE = 0.2  # seconds between the bytes of a slowloris server
MiB = 1024 * 1024


@functools.cache
def bomb(wbits: int) -> bytes:
    """256 MiB of zeros compressed (about 250 KiB): gzip with ``wbits`` 31, zlib with 15."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b"\0" * MiB
    return b"".join(packer.compress(block) for _ in range(256)) + packer.flush()


@functools.cache
def garbage() -> bytes:
    return random.Random(11).randbytes(256 * 1024)


# -- protocol-independent --------------------------------------------------------------------


async def silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, then say nothing and read nothing (also a TLS handshake that never starts)."""
    await asyncio.sleep(3600)


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, then close with SO_LINGER 0: the peer gets an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def half_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read what the client sends, shut down our sending side, keep reading."""
    await reader.read(4096)
    writer.write_eof()
    while await reader.read(4096):
        pass
    await asyncio.sleep(3600)


async def banner_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hostile.test ESMTP ready\r\n")
    await writer.drain()


async def garbage_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(garbage())
    await writer.drain()


# -- the line family ---------------------------------------------------------------------------


async def line_slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A reply line that never ends: one byte every DRIBBLE seconds."""
    await reader.read(4096)
    writer.write(b"+")
    while True:
        await asyncio.sleep(DRIBBLE)
        writer.write(b"P")
        await writer.drain()


async def line_endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A reply line with no end, as fast as the client reads."""
    await reader.read(4096)
    chunk = b"+" + b"P" * 65535
    while True:
        writer.write(chunk)
        await writer.drain()


async def line_giant(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A 1 MiB reply line, then the line end."""
    await reader.read(4096)
    writer.write(b"+" + b"P" * MiB + b"\r\n")
    await writer.drain()
    await asyncio.sleep(3600)


async def line_lying_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """PONG, then an INFO bulk string that says 1000 bytes, sends 10 and closes."""
    await reader.read(4096)
    writer.write(b"+PONG\r\n")
    await writer.drain()
    await reader.read(4096)
    writer.write(b"$1000\r\n# Server\r\n")
    await writer.drain()


# -- the postgres family ------------------------------------------------------------------------


async def _pg_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the probe's SSLRequest (answered ``N``) and StartupMessage."""
    code, _ = await read_startup(reader)
    if code == 80877103:
        writer.write(b"N")
        await read_startup(reader)


async def pg_slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """AuthenticationOk, then a 1000-byte ParameterStatus at one byte every DRIBBLE seconds."""
    await _pg_session(reader, writer)
    writer.write(b"R\x00\x00\x00\x08\x00\x00\x00\x00S" + struct.pack("!i", 1004))
    while True:
        await asyncio.sleep(DRIBBLE)
        writer.write(b"a")
        await writer.drain()


async def pg_giant(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A 1 MiB ErrorResponse, sent whole."""
    await _pg_session(reader, writer)
    writer.write(b"E" + struct.pack("!i", MiB + 4) + b"M" + b"a" * (MiB - 2) + b"\0\0")
    await writer.drain()
    await asyncio.sleep(3600)


def pg_lying_length(stall: bool) -> Handler:
    """A ParameterStatus that says 1000 bytes and sends 10, then closes (or stalls)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _pg_session(reader, writer)
        writer.write(b"R\x00\x00\x00\x08\x00\x00\x00\x00S" + struct.pack("!i", 1004))
        writer.write(b"server_ver")
        await writer.drain()
        if stall:
            await asyncio.sleep(3600)

    return serve


# -- the http family ---------------------------------------------------------------------------


async def http_slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A response head that never ends: one byte every DRIBBLE seconds."""
    await read_request(reader)
    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000
    for byte in head:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(DRIBBLE)


async def http_endless_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked body that never ends, as fast as the client reads."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    while True:
        writer.write(frame)
        await writer.drain()


async def http_lying_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Content-Length says 1 MB; ten bytes come, then the connection closes."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n0123456789")
    await writer.drain()


async def http_lying_length_stall(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Content-Length says 1 MB; ten bytes come, then nothing, with the connection open."""
    await http_lying_length(reader, writer)
    await asyncio.sleep(3600)


def _bomb_handler(encoding: bytes, wbits: int) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(http_response(bomb(wbits), extra=b"Content-Encoding: " + encoding + b"\r\n"))
        await writer.drain()

    return handler


http_gzip_bomb = _bomb_handler(b"gzip", 16 + zlib.MAX_WBITS)
http_deflate_bomb = _bomb_handler(b"deflate", zlib.MAX_WBITS)


async def http_redirect_to_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The first request is redirected (same origin); the second gets the gzip bomb."""
    head = await read_request(reader)
    if head.startswith(b"GET /bomb "):
        writer.write(http_response(bomb(16 + zlib.MAX_WBITS), extra=b"Content-Encoding: gzip\r\n"))
    else:
        writer.write(http_response(b"", "302 Found", b"Location: /bomb\r\n"))
    await writer.drain()


async def http_giant_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One 1 MiB header line."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Giant: " + b"a" * MiB + b"\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(3600)


# -- the mail families (smtp, imap, pop3): the server speaks first -----------------------------

#: A valid greeting of each mail protocol, without the marker.
GREETING = {
    "smtp": b"220 hostile.test ESMTP ready\r\n",
    "imap": b"* OK hostile.test IMAP4rev1 ready\r\n",
    "pop3": b"+OK hostile.test POP3 ready\r\n",
    "ftp": b"220 hostile.test FTP ready\r\n",
}
#: How a greeting line starts, before its text.
OPENING = {"smtp": b"220 ", "imap": b"* OK ", "pop3": b"+OK ", "ftp": b"220 "}


def _per_mail(make: Callable[[str], Handler]) -> dict[str, Handler]:
    return {family: make(family) for family in MAIL}


def mail_slowloris(family: str) -> Handler:
    """A greeting that never ends: one byte every DRIBBLE seconds."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OPENING[family])
        while True:
            await writer.drain()
            await asyncio.sleep(DRIBBLE)
            writer.write(b"a")

    return handler


def mail_endless_line(family: str) -> Handler:
    """A greeting line with no end, as fast as the client reads."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OPENING[family])
        chunk = b"a" * 65536
        while True:
            writer.write(chunk)
            await writer.drain()

    return handler


def mail_giant(family: str) -> Handler:
    """A 1 MiB greeting line, then its end."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OPENING[family] + b"a" * MiB + b"\r\n")
        await writer.drain()
        await asyncio.sleep(3600)

    return handler


#: One line of an endless reply to the probe's first command: SMTP continuation lines of the
#: EHLO reply, untagged IMAP responses before CAPABILITY's tagged one, POP3 CAPA list lines.
_ENDLESS_LINE = {"smtp": b"250-hostile.test\r\n", "imap": b"* OK still going\r\n", "pop3": b"X\r\n"}
_ENDLESS_FIRST = {"smtp": b"", "imap": b"", "pop3": b"+OK capabilities\r\n"}
# FTP: a multi-line reply to AUTH TLS whose final line never comes.
_ENDLESS_LINE["ftp"] = b" still going\r\n"
_ENDLESS_FIRST["ftp"] = b"500-not understood\r\n"


def mail_endless_reply(family: str) -> Handler:
    """A valid greeting, then a reply to the first command that never ends (short lines, as
    fast as the client reads)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING[family])
        await reader.readline()
        writer.write(_ENDLESS_FIRST[family])
        chunk = _ENDLESS_LINE[family] * 4096
        while True:
            writer.write(chunk)
            await writer.drain()

    return handler


def mail_half_close(family: str) -> Handler:
    """A valid greeting; then, once the probe has sent a command, our sending side shut down."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING[family])
        await reader.readline()
        writer.write_eof()
        while await reader.read(4096):
            pass
        await asyncio.sleep(3600)

    return handler


def mail_banner_then_close(family: str) -> Handler:
    """A valid greeting, then the connection closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING[family])
        await writer.drain()

    return handler


def _imap_literal(size: int, stall: bool) -> Handler:
    """A greeting, then a CAPABILITY reply announcing a ``size``-byte literal: ten bytes come,
    then the connection closes (or, with ``stall``, nothing more)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING["imap"])
        await reader.readline()
        writer.write(b"* CAPABILITY {%d}\r\nIMAP4rev1 " % size)
        await writer.drain()
        if stall:
            await asyncio.sleep(3600)

    return handler


# -- the dns family: UDP answers, and the TCP asked after a truncated UDP reply -----------------


def _udp(make: Callable[[bytes], list[bytes]]) -> DnsHandlers:
    return DnsHandlers(udp=make)


def _after_truncation(tcp: Handler) -> DnsHandlers:
    """UDP answers truncated (TC): the probe asks again over TCP, where ``tcp`` waits."""
    return DnsHandlers(udp=truncated, tcp=tcp)


def dns_garbage(query: bytes) -> list[bytes]:
    return [garbage()[:512]]


def dns_wrong_id(query: bytes) -> list[bytes]:
    response = response_to(query)
    response.id = (response.id + 1) % 65536
    return [response.to_wire()]


def dns_not_a_response(query: bytes) -> list[bytes]:
    response = response_to(query)
    response.flags &= ~dns.flags.QR
    return [response.to_wire()]


def dns_oversized(query: bytes) -> list[bytes]:
    """The largest UDP datagram (65507 bytes): the query's header as a reply, then junk."""
    header = bytearray(query[:12])
    header[2] |= 0x80
    return [bytes(header) + garbage()[: 65507 - 12]]


async def dns_tcp_lying_length(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, stall: bool = False
) -> None:
    """A length prefix of 65535 bytes; ten come, then the connection closes (or stalls)."""
    await read_query(reader)
    writer.write(b"\xff\xff" + b"0123456789")
    await writer.drain()
    if stall:
        await asyncio.sleep(3600)


async def dns_tcp_lying_length_stall(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await dns_tcp_lying_length(reader, writer, stall=True)


async def dns_tcp_slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A reply whose length prefix says 65535, its bytes one every DRIBBLE seconds."""
    query = await read_query(reader)
    writer.write(b"\xff\xff")
    for byte in framed(query)[2:] + garbage():
        await writer.drain()
        await asyncio.sleep(DRIBBLE)
        writer.write(bytes([byte]))


# -- the cases -------------------------------------------------------------------------------

PROTOCOL = frozenset({ErrorKind.PROTOCOL})
TIMEOUT = frozenset({ErrorKind.TIMEOUT})
#: A body cut at the cap fails the check (protocol), or is judged as read and lacks the marker
#: (assertion): both are correct, and the default is changing between them (issue 11, finding 8).
CAPPED = frozenset({ErrorKind.PROTOCOL, ErrorKind.ASSERTION})


@attrs.frozen
class Case:
    """One hostile server. ``handlers`` by family (``any`` serves every stream family that has
    none of its own); ``expected`` the error kinds a correct probe reports; ``tls`` for cases
    that need the kind's TLS definition; ``listener`` for the case that is not a server at all
    (a backlog that is full, for the stream families)."""

    name: str
    handlers: dict[str, Handler | DnsHandlers]
    expected: frozenset[ErrorKind]
    tls: bool = False
    listener: bool = False

    def handler(self, family: Family) -> Handler | DnsHandlers | None:
        if family in self.handlers:
            return self.handlers[family]
        return self.handlers.get("any") if family in STREAM_FAMILIES else None

    def applies(self, family: Family) -> bool:
        if self.listener:
            return family in STREAM_FAMILIES
        return self.handler(family) is not None


CONNECT_OR_PROTOCOL = frozenset({ErrorKind.CONNECT, ErrorKind.PROTOCOL})

CASES: tuple[Case, ...] = (
    Case(
        "slowloris",
        {
            "http": http_slowloris,
            "line": line_slowloris,
            **_per_mail(mail_slowloris),
            "dns": _after_truncation(dns_tcp_slowloris),
            "postgres": pg_slowloris,
        },
        TIMEOUT,
    ),
    Case("endless-body", {"http": http_endless_body}, CAPPED),
    Case("endless-line", {"line": line_endless, **_per_mail(mail_endless_line)}, PROTOCOL),
    Case("endless-reply", _per_mail(mail_endless_reply), PROTOCOL),
    Case(
        "lying-length-close",
        {
            "http": http_lying_length,
            "line": line_lying_length,
            "imap": _imap_literal(1000, stall=False),
            "dns": _after_truncation(dns_tcp_lying_length),
            "postgres": pg_lying_length(stall=False),
        },
        PROTOCOL,
    ),
    Case(
        "lying-length-stall",
        {
            "http": http_lying_length_stall,
            "imap": _imap_literal(1000, stall=True),
            "dns": _after_truncation(dns_tcp_lying_length_stall),
            "postgres": pg_lying_length(stall=True),
        },
        TIMEOUT,
    ),
    Case("huge-literal", {"imap": _imap_literal(10**11, stall=True)}, PROTOCOL),
    Case("gzip-bomb", {"http": http_gzip_bomb}, CAPPED),
    Case("deflate-bomb", {"http": http_deflate_bomb}, CAPPED),
    Case("gzip-bomb-behind-redirect", {"http": http_redirect_to_bomb}, CAPPED),
    Case(
        "giant-head",
        {
            "http": http_giant_header,
            "line": line_giant,
            **_per_mail(mail_giant),
            "dns": _udp(dns_oversized),
            "postgres": pg_giant,
        },
        PROTOCOL,
    ),
    Case("garbage", {"any": garbage_then_close, "dns": _udp(dns_garbage)}, PROTOCOL),
    Case("garbage-after-truncation", {"dns": _after_truncation(garbage_then_close)}, PROTOCOL),
    Case("wrong-id", {"dns": _udp(dns_wrong_id)}, PROTOCOL),
    Case("not-a-response", {"dns": _udp(dns_not_a_response)}, PROTOCOL),
    Case("tls-stall", {"any": silence, "dns": DnsHandlers(tcp=silence)}, TIMEOUT, tls=True),
    Case("accept-then-silence", {"any": silence, "dns": _udp(silent)}, TIMEOUT),
    Case("rst", {"any": reset, "dns": _after_truncation(reset)}, CONNECT_OR_PROTOCOL),
    Case("never-accepts", {}, TIMEOUT, listener=True),
    Case(
        "half-close",
        {"any": half_close, **_per_mail(mail_half_close), "dns": _after_truncation(half_close)},
        PROTOCOL,
    ),
    Case(
        "banner-then-close",
        {"any": banner_then_close, **_per_mail(mail_banner_then_close)},
        PROTOCOL,
    ),
)


@contextlib.asynccontextmanager
async def full_listener() -> AsyncIterator[int]:
    """A loopback port whose listener never accepts and whose backlog is already full, so a
    new connection's SYN goes unanswered. Yields the port; everything is closed on exit."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Linux queues backlog + 1 connections; fill the queue so later SYNs are dropped.
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        await asyncio.sleep(0.05)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.asynccontextmanager
async def serve(case: Case, family: Family) -> AsyncIterator[int]:
    """Run the case's server for ``family`` on 127.0.0.1; yields its port."""
    if case.listener:
        async with full_listener() as port:
            yield port
        return
    handler = case.handler(family)
    assert handler is not None
    server = await make_server(family, handler).start()
    try:
        yield server.port
    finally:
        await server.stop()
