"""The small part of the MySQL/MariaDB client/server protocol the ``mysql`` kind speaks.

Written from the protocol documentation (the MySQL "Client/Server Protocol" pages and MariaDB's
"Connection" and "Text protocol" pages), for a probe, not for an application: the initial
handshake (protocol version 10), the SSL request, the handshake response with
``mysql_native_password`` and ``caching_sha2_password`` scrambles, authentication switch and
"more data" packets, ``COM_QUERY`` with its text-protocol result set read one packet at a time,
and ``COM_QUIT``.

Every parser here takes the bytes a server sent and returns a value or raises
:class:`WireError` with a message for the result: it never raises anything else, whatever the
bytes (the Hypothesis tests of ``tests/test_mysql.py`` hold it to that). Reading is done by
:class:`PacketReader` over a ``read(n)`` coroutine, every payload bounded.

Why not a driver: aiomysql and asyncmy open their own connection (``asyncio.open_connection`` to
a host and port, or a Unix socket path) and have no parameter for an already connected socket,
so the dial path's resolution, egress policy, pinned address and timed ``connect``/``tls``
phases could not be used; and they read a whole result set into memory (or, with their
unbuffered cursors, still hide the per-packet bounds). The protocol a probe needs is a few
hundred lines.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Awaitable, Callable
from typing import Final

import attrs

__all__ = [
    "CAPABILITY_NAMES",
    "CLIENT_CONNECT_WITH_DB",
    "CLIENT_PLUGIN_AUTH",
    "CLIENT_PROTOCOL_41",
    "CLIENT_SECURE_CONNECTION",
    "CLIENT_SSL",
    "PACKET_LIMIT",
    "AuthMoreData",
    "AuthSwitch",
    "Handshake",
    "PacketReader",
    "ServerError",
    "WireError",
    "auth_response",
    "caching_sha2_scramble",
    "capability_names",
    "client_capabilities",
    "column_count",
    "com_query",
    "first_cell",
    "handshake_response",
    "is_eof",
    "native_scramble",
    "packet",
    "parse_auth_reply",
    "parse_error",
    "parse_handshake",
    "rsa_encrypted_password",
    "ssl_request",
    "version_number",
]

CLIENT_LONG_PASSWORD: Final = 0x00000001
CLIENT_CONNECT_WITH_DB: Final = 0x00000008
CLIENT_PROTOCOL_41: Final = 0x00000200
CLIENT_SSL: Final = 0x00000800
CLIENT_TRANSACTIONS: Final = 0x00002000
CLIENT_SECURE_CONNECTION: Final = 0x00008000
CLIENT_PLUGIN_AUTH: Final = 0x00080000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: Final = 0x00200000

#: The names of the capability bits a check report shows (the rest are left out).
CAPABILITY_NAMES: Final = {
    0x00000001: "LONG_PASSWORD",
    0x00000008: "CONNECT_WITH_DB",
    0x00000020: "COMPRESS",
    0x00000080: "LOCAL_FILES",
    0x00000200: "PROTOCOL_41",
    0x00000800: "SSL",
    0x00002000: "TRANSACTIONS",
    0x00008000: "SECURE_CONNECTION",
    0x00010000: "MULTI_STATEMENTS",
    0x00080000: "PLUGIN_AUTH",
    0x00100000: "CONNECT_ATTRS",
    0x00200000: "PLUGIN_AUTH_LENENC_CLIENT_DATA",
    0x01000000: "DEPRECATE_EOF",
}

#: The largest payload parsed (a handshake, an auth packet, a column count, the first row):
#: real ones are under a few KiB, the first row of a probe's query a few bytes. Rows after the
#: first are skipped in chunks and never held, so they have no limit.
PACKET_LIMIT: Final = 1024 * 1024
#: A payload of this length continues in the next packet.
_CONTINUED: Final = 0xFFFFFF
_MAX_PACKET_SIZE: Final = 16 * 1024 * 1024
#: utf8mb4_general_ci: understood by MySQL 5.5.3+ and every MariaDB.
_CHARSET_UTF8MB4: Final = 45
_SKIP_CHUNK: Final = 64 * 1024
_SHOWN: Final = 120


class WireError(Exception):
    """Bytes that are not what the protocol says; ``message`` is for the result."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def _text(data: bytes, limit: int = _SHOWN) -> str:
    text = data.decode("utf-8", "replace")
    printable = "".join(c if c.isprintable() else "?" for c in text)
    if len(printable) > limit:
        return printable[:limit] + "…"
    return printable


def _nul_string(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        raise WireError(f"the {what} has no NUL terminator")
    return data[pos:end], end + 1


def lenenc_int(data: bytes, pos: int, what: str) -> tuple[int | None, int]:
    """A length-encoded integer at ``pos``: its value (None for the NULL marker 0xFB) and the
    position after it."""
    if pos >= len(data):
        raise WireError(f"the {what} ends before a length")
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFB:
        return None, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise WireError(f"the {what} holds an invalid length prefix 0xFF")
    if pos + 1 + size > len(data):
        raise WireError(f"the {what} ends inside a length")
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


# -- packets -------------------------------------------------------------------------------------


def packet(seq: int, payload: bytes) -> bytes:
    """One packet: a 3-byte little-endian length, the sequence id, the payload (< 16 MiB)."""
    if len(payload) >= _CONTINUED:
        raise ValueError("payload too large for one packet")
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


Read = Callable[[int], Awaitable[bytes]]


class PacketReader:
    """Reads packets with ``read(n)`` (up to n bytes, b"" at the end of the stream), checking
    their sequence ids. Every payload it returns is at most ``limit`` bytes; it buffers at most
    one chunk (64 KiB) besides."""

    __slots__ = ("_buffer", "_pos", "_read", "limit", "seq")

    def __init__(self, read: Read, limit: int = PACKET_LIMIT) -> None:
        self._read = read
        self._buffer = bytearray()
        self._pos = 0
        self.limit = limit
        #: The sequence id the next packet must carry.
        self.seq = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return len(self._buffer) - self._pos

    async def _need(self, size: int, what: str) -> None:
        """Make ``size`` unread bytes available."""
        while len(self._buffer) - self._pos < size:
            if self._pos:
                del self._buffer[: self._pos]
                self._pos = 0
            more = await self._read(max(_SKIP_CHUNK, size - len(self._buffer)))
            if not more:
                have = len(self._buffer)
                got = f"after {have} of its {size} bytes" if have else "before it"
                raise WireError(f"the connection closed {got} ({what})")
            self._buffer += more

    async def _take(self, size: int, what: str) -> bytes:
        await self._need(size, what)
        data = bytes(self._buffer[self._pos : self._pos + size])
        self._pos += size
        return data

    async def _discard(self, size: int, what: str) -> None:
        while size > 0:
            available = len(self._buffer) - self._pos
            if available >= size:
                self._pos += size
                return
            size -= available
            self._buffer.clear()
            self._pos = 0
            await self._need(min(size, _SKIP_CHUNK), what)

    async def _header(self, what: str) -> int:
        await self._need(4, what)
        buffer, pos = self._buffer, self._pos
        length = buffer[pos] | buffer[pos + 1] << 8 | buffer[pos + 2] << 16
        seq = buffer[pos + 3]
        if seq != self.seq:
            shown = _text(bytes(buffer[pos : pos + 4]))
            raise WireError(
                f"the {what} has sequence id {seq}, expected {self.seq} "
                f"(not a MySQL server, or out of step: {shown!r})"
            )
        self._pos = pos + 4
        self.seq = (seq + 1) & 0xFF
        return length

    async def read(self, what: str) -> bytes:
        """One whole payload, at most ``limit`` bytes (a longer one is a :class:`WireError`)."""
        length = await self._header(what)
        if length >= _CONTINUED or length > self.limit:
            raise WireError(f"the {what} is {length} bytes or more, over the limit of {self.limit}")
        return await self._take(length, what)

    async def peek_skip(self, what: str, keep: int) -> tuple[bytes, int]:
        """The first ``keep`` bytes of the next packet and its length; the rest of it (and of
        any packets continuing it) is read and thrown away, a chunk at a time."""
        length = await self._header(what)
        head = await self._take(min(keep, length), what)
        await self._discard(length - len(head), what)
        total = length
        while length == _CONTINUED:
            length = await self._header(what)
            await self._discard(length, what)
            total += length
        return head, total

    async def skip_rows(self, keep: int) -> tuple[int, bytes]:
        """Skip rows up to the packet that ends them (an EOF, or an ERR): the number skipped and
        the first ``keep`` bytes of that packet. Rows are never held: a packet in the buffer is
        stepped over without a copy, a longer one thrown away a chunk at a time."""
        rows = 0
        while True:
            rows += self._skip_buffered_rows()
            length = await self._header("row")
            if length == 0:
                raise WireError("an empty packet among the rows")
            await self._need(1, "row")
            first = self._buffer[self._pos]
            if first == 0xFF or (first == 0xFE and length < 9):
                head = await self._take(min(keep, length), "row")
                await self._discard(length - len(head), "row")
                return rows, head
            rows += 1
            await self._discard(length, "row")
            while length == _CONTINUED:
                length = await self._header("row")
                await self._discard(length, "row")

    def _skip_buffered_rows(self) -> int:
        """Step over the whole, ordinary row packets already in the buffer, without awaiting:
        the fast path of :meth:`skip_rows` (anything else is left to it)."""
        buffer, pos, seq = self._buffer, self._pos, self.seq
        end = len(buffer)
        rows = 0
        while pos + 5 <= end:
            length = buffer[pos] | buffer[pos + 1] << 8 | buffer[pos + 2] << 16
            if buffer[pos + 3] != seq or length == 0 or pos + 4 + length > end:
                break
            first = buffer[pos + 4]
            if first == 0xFF or (first == 0xFE and length < 9) or length >= _CONTINUED:
                break
            pos += 4 + length
            seq = (seq + 1) & 0xFF
            rows += 1
        self._pos, self.seq = pos, seq
        return rows


# -- server packets ------------------------------------------------------------------------------


@attrs.frozen
class ServerError:
    """An ERR packet: the error code, the SQL state (may be empty) and the message."""

    code: int
    state: str
    message: str

    def describe(self) -> str:
        state = f" ({self.state})" if self.state else ""
        return f"ERR {self.code}{state}: {self.message}"


def parse_error(payload: bytes) -> ServerError:
    """An ERR packet (``0xFF``, code, ``#`` and SQL state with protocol 4.1, message)."""
    if len(payload) < 3 or payload[0] != 0xFF:
        raise WireError(f"not an ERR packet: {_text(payload[:40])!r}")
    code = int.from_bytes(payload[1:3], "little")
    rest = payload[3:]
    state = ""
    if rest[:1] == b"#" and len(rest) >= 6:
        state = _text(rest[1:6], 5)
        rest = rest[6:]
    return ServerError(code, state, _text(rest, 300))


@attrs.frozen
class Handshake:
    """The server's initial handshake (protocol version 10)."""

    server_version: str
    connection_id: int
    capabilities: int
    charset: int
    status: int
    scramble: bytes
    auth_plugin: str

    @property
    def mariadb(self) -> bool:
        return "mariadb" in self.server_version.lower()

    @property
    def version(self) -> str:
        """The server version without the ``5.5.5-`` prefix MariaDB 10+ sends for the sake of
        old replication clients."""
        if self.mariadb and self.server_version.startswith("5.5.5-"):
            return self.server_version[6:]
        return self.server_version


def parse_handshake(payload: bytes) -> Handshake | ServerError:
    """The first packet a server sends: a v10 handshake, or an ERR (too many connections, a
    host that is not allowed to connect)."""
    if not payload:
        raise WireError("the server sent an empty handshake packet")
    if payload[0] == 0xFF:
        return parse_error(payload)
    if payload[0] != 10:
        raise WireError(
            f"not a MySQL protocol 10 handshake (first byte {payload[0]}): {_text(payload[:40])!r}"
        )
    version_bytes, pos = _nul_string(payload, 1, "server version")
    if len(version_bytes) > 256:
        raise WireError("the server version is over 256 bytes")
    version = _text(version_bytes, 256)
    if pos + 4 + 8 + 1 + 2 > len(payload):
        raise WireError("the handshake ends before its capability flags")
    (connection_id,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    scramble = payload[pos : pos + 8]
    pos += 8 + 1  # the filler byte
    (low,) = struct.unpack_from("<H", payload, pos)
    pos += 2
    capabilities = low
    charset = status = 0
    plugin = ""
    if len(payload) > pos:
        if pos + 1 + 2 + 2 + 1 + 10 > len(payload):
            raise WireError("the handshake ends inside its extended capabilities")
        charset = payload[pos]
        (status, high) = struct.unpack_from("<HH", payload, pos + 1)
        capabilities |= high << 16
        data_length = payload[pos + 5]
        pos += 6 + 10  # the length, then 10 reserved bytes (MariaDB's extended capabilities)
        if capabilities & CLIENT_SECURE_CONNECTION:
            part = max(13, data_length - 8)
            if pos + part > len(payload):
                raise WireError("the handshake ends inside its scramble")
            scramble += payload[pos : pos + part].rstrip(b"\0")
            pos += part
        if capabilities & CLIENT_PLUGIN_AUTH and pos < len(payload):
            # Some servers leave out the name's NUL terminator: the end of the packet ends it.
            end = payload.find(b"\0", pos)
            name = payload[pos:] if end < 0 else payload[pos:end]
            plugin = _text(name, 64)
    return Handshake(version, connection_id, capabilities, charset, status, scramble, plugin)


@attrs.frozen
class AuthSwitch:
    """An authentication switch request: the plugin to use now and its data."""

    plugin: str
    data: bytes


@attrs.frozen
class AuthMoreData:
    """A "more data" packet of an authentication plugin (``0x01`` and its data)."""

    data: bytes


def parse_auth_reply(payload: bytes) -> str | ServerError | AuthSwitch | AuthMoreData:
    """What the server answers to a login step: ``"ok"``, an ERR, a switch or more data."""
    if not payload:
        raise WireError("the server answered the login with an empty packet")
    head = payload[0]
    if head == 0x00:
        return "ok"
    if head == 0xFF:
        return parse_error(payload)
    if head == 0xFE:
        if len(payload) == 1:
            # The pre-4.1 "use the old password hash" request.
            return AuthSwitch("mysql_old_password", b"")
        name, pos = (
            _nul_string(payload, 1, "auth switch request")
            if b"\0" in payload[1:]
            else (payload[1:], len(payload))
        )
        return AuthSwitch(_text(name, 64), payload[pos:].rstrip(b"\0"))
    if head == 0x01:
        return AuthMoreData(payload[1:])
    raise WireError(f"unexpected answer to the login (first byte 0x{head:02x})")


def column_count(payload: bytes) -> int:
    """The column count that opens a result set (1 to 4096)."""
    count, pos = lenenc_int(payload, 0, "column count")
    if count is None or pos != len(payload) or not 1 <= count <= 4096:
        raise WireError(f"not a column count: {_text(payload[:40])!r}")
    return count


def is_eof(head: bytes, length: int) -> bool:
    """An EOF packet (``0xFE``, shorter than 9 bytes), which ends column definitions and rows."""
    return head[:1] == b"\xfe" and length < 9


def first_cell(payload: bytes) -> str | None:
    """The first cell of a text-protocol row (None for SQL NULL), decoded as UTF-8."""
    length, pos = lenenc_int(payload, 0, "row")
    if length is None:
        return None
    if pos + length > len(payload):
        raise WireError("a row's first cell runs past the end of its packet")
    return payload[pos : pos + length].decode("utf-8", "replace")


# -- client packets ------------------------------------------------------------------------------


def client_capabilities(*, tls: bool, database: bool) -> int:
    """What the probe announces: protocol 4.1 with plugin auth; no LOCAL_FILES (a server can
    never make it read a file), no multi-statements, no compression, no DEPRECATE_EOF."""
    flags = (
        CLIENT_LONG_PASSWORD
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    )
    if tls:
        flags |= CLIENT_SSL
    if database:
        flags |= CLIENT_CONNECT_WITH_DB
    return flags


def _fixed_part(capabilities: int) -> bytes:
    return struct.pack("<IIB", capabilities, _MAX_PACKET_SIZE, _CHARSET_UTF8MB4) + bytes(23)


def ssl_request(capabilities: int) -> bytes:
    """The SSL request payload: the fixed part of a handshake response, with CLIENT_SSL."""
    return _fixed_part(capabilities | CLIENT_SSL)


def handshake_response(
    capabilities: int,
    username: bytes,
    auth: bytes,
    database: bytes | None,
    plugin: str,
) -> bytes:
    """The HandshakeResponse41 payload."""
    out = bytearray(_fixed_part(capabilities))
    out += username + b"\0"
    out += bytes([len(auth)]) + auth  # lenenc: every scramble is shorter than 251 bytes
    if database is not None:
        out += database + b"\0"
    out += plugin.encode("ascii") + b"\0"
    return bytes(out)


def com_query(query: str) -> bytes:
    return b"\x03" + query.encode("utf-8")


# -- scrambles -----------------------------------------------------------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - mysql_native_password is defined on SHA-1


def native_scramble(password: bytes, scramble: bytes) -> bytes:
    """mysql_native_password: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))."""
    if not password:
        return b""
    stage1 = _sha1(password)
    stage2 = _sha1(stage1)
    return _xor(stage1, _sha1(scramble[:20] + stage2))


def caching_sha2_scramble(password: bytes, scramble: bytes) -> bytes:
    """caching_sha2_password's fast path:
    SHA256(password) XOR SHA256(SHA256(SHA256(password)) + scramble)."""
    if not password:
        return b""
    stage1 = hashlib.sha256(password).digest()
    stage2 = hashlib.sha256(stage1).digest()
    return _xor(stage1, hashlib.sha256(stage2 + scramble[:20]).digest())


def rsa_encrypted_password(password: bytes, scramble: bytes, pem: bytes) -> bytes:
    """caching_sha2_password's full authentication without TLS: (password + NUL) XOR the
    scramble (repeated), encrypted with the server's RSA public key (OAEP, SHA-1), as MySQL 8.0.5
    and later expect. Raises :class:`WireError` for a key that is not an RSA public key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise WireError("the server's public key is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise WireError("the server's public key is not an RSA key")
    if not scramble:
        raise WireError("no scramble to encrypt the password with")
    plain = password + b"\0"
    mask = (scramble[:20] * (len(plain) // len(scramble[:20]) + 1))[: len(plain)]
    padded = padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA1()),  # noqa: S303 - what the server decrypts with
        algorithm=hashes.SHA1(),  # noqa: S303 - the same
        label=None,
    )
    try:
        return key.encrypt(_xor(plain, mask), padded)
    except ValueError:
        raise WireError("the password is too long for the server's RSA key") from None


#: The plugins whose first response the probe can compute.
_SCRAMBLES: Final = {
    "mysql_native_password": native_scramble,
    "caching_sha2_password": caching_sha2_scramble,
}


def auth_response(plugin: str, password: bytes, scramble: bytes) -> bytes | None:
    """The first response for ``plugin``, or None for a plugin the probe does not speak."""
    scrambler = _SCRAMBLES.get(plugin)
    return None if scrambler is None else scrambler(password, scramble)


def capability_names(capabilities: int) -> str:
    """The named capability bits, for a report: ``PROTOCOL_41 SSL ...``."""
    return " ".join(name for bit, name in CAPABILITY_NAMES.items() if capabilities & bit)


def version_number(version: str) -> int | None:
    """``major*10000 + minor*100 + patch`` of a server version (``10.11.6-MariaDB`` is
    101106), or None when it does not start with three numbers."""
    parts: list[int] = []
    digits = ""
    for char in version:
        if char.isascii() and char.isdigit():
            digits += char
            if len(digits) > 4:
                return None
        elif char == "." and digits and len(parts) < 2:
            parts.append(int(digits))
            digits = ""
        else:
            break
    if digits and len(parts) == 2:
        parts.append(int(digits))
    if len(parts) != 3 or parts[1] > 99 or parts[2] > 99:
        return None
    return parts[0] * 10000 + parts[1] * 100 + parts[2]
