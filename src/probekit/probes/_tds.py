"""The PRELOGIN exchange of TDS (Tabular Data Stream, Microsoft SQL Server's protocol), for the
``mssql`` kind.

Written from the [MS-TDS] specification: section 2.2.3.1 (the packet header: type, status,
a big-endian length that includes the 8-byte header, SPID, packet id, window) and 2.2.6.5
(PRELOGIN: a table of option tokens, each a type byte, a big-endian offset and length into the
message, ended by 0xFF, then the option data). The client sends its PRELOGIN (type 0x12); the
server answers with a tabular-result message (type 0x04) holding its own option table:
``VERSION`` (major, minor, a big-endian build number, a sub-build) and ``ENCRYPTION`` (off,
on, not supported, required).

With ``tls``, the TLS handshake follows inside PRELOGIN packets (its records are the data of
type 0x12 packets in both directions), which :func:`prelogin_packets` and :func:`read_message`
carry.

Every parser takes the bytes a server sent and returns a value or raises :class:`WireError`,
never anything else (Hypothesis tests hold it to that); :func:`read_message` reads at most
:data:`MESSAGE_LIMIT` bytes.

Why not a driver: the async SQL Server drivers for Python (aioodbc over the ODBC driver,
pytds, pymssql) open their own sockets from a host name and port, so the dial path's egress
policy, pinned address and timed phases could not apply; and none is needed to read PRELOGIN.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Final

import attrs

__all__ = [
    "ENCRYPTION_NAMES",
    "ENCRYPT_NOT_SUP",
    "ENCRYPT_OFF",
    "ENCRYPT_ON",
    "ENCRYPT_REQ",
    "LOGIN_REPLY_LIMIT",
    "MESSAGE_LIMIT",
    "LoginReply",
    "Prelogin",
    "WireError",
    "login7",
    "parse_header",
    "parse_login_reply",
    "parse_prelogin",
    "prelogin_packets",
    "prelogin_request",
    "read_message",
]

PACKET_PRELOGIN: Final = 0x12
PACKET_REPLY: Final = 0x04
STATUS_EOM: Final = 0x01

TOKEN_VERSION: Final = 0x00
TOKEN_ENCRYPTION: Final = 0x01
TOKEN_INSTOPT: Final = 0x02
TOKEN_THREADID: Final = 0x03
TOKEN_MARS: Final = 0x04
TOKEN_END: Final = 0xFF

ENCRYPT_OFF: Final = 0x00
ENCRYPT_ON: Final = 0x01
ENCRYPT_NOT_SUP: Final = 0x02
ENCRYPT_REQ: Final = 0x03
#: What each ENCRYPTION value means in a server's answer.
ENCRYPTION_NAMES: Final = {
    ENCRYPT_OFF: "OFF (only the login packet is encrypted)",
    ENCRYPT_ON: "ON (the whole session is encrypted)",
    ENCRYPT_NOT_SUP: "NOT_SUP (the server cannot encrypt)",
    ENCRYPT_REQ: "REQ (the server requires encryption)",
}

#: The largest PRELOGIN answer read (a real one is under 100 bytes).
MESSAGE_LIMIT: Final = 4096
_HEADER: Final = 8
#: The client version the probe announces (0.1.0.0; servers only log it).
_CLIENT_VERSION: Final = bytes([0, 1, 0, 0, 0, 0])


class WireError(Exception):
    """Bytes that are not what the protocol says; ``message`` is for the result."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def prelogin_request(encryption: int) -> bytes:
    """The client's PRELOGIN message as one packet: VERSION, ENCRYPTION, INSTOPT (the default
    instance), THREADID, MARS off."""
    options = [
        (TOKEN_VERSION, _CLIENT_VERSION),
        (TOKEN_ENCRYPTION, bytes([encryption])),
        (TOKEN_INSTOPT, b"\0"),
        (TOKEN_THREADID, bytes(4)),
        (TOKEN_MARS, b"\0"),
    ]
    offset = len(options) * 5 + 1
    table = bytearray()
    data = bytearray()
    for token, value in options:
        table += struct.pack(">BHH", token, offset + len(data), len(value))
        data += value
    payload = bytes(table) + bytes([TOKEN_END]) + bytes(data)
    header = struct.pack(">BBHHBB", PACKET_PRELOGIN, STATUS_EOM, _HEADER + len(payload), 0, 1, 0)
    return header + payload


def prelogin_packets(data: bytes, size: int = 4096) -> bytes:
    """``data`` (TLS handshake records) as PRELOGIN packets of at most ``size`` bytes each, the
    last one marked end-of-message: how TDS carries the TLS handshake."""
    room = size - _HEADER
    chunks = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
    out = bytearray()
    for i, chunk in enumerate(chunks):
        status = STATUS_EOM if i == len(chunks) - 1 else 0
        out += struct.pack(
            ">BBHHBB", PACKET_PRELOGIN, status, _HEADER + len(chunk), 0, (i + 1) & 0xFF, 0
        )
        out += chunk
    return bytes(out)


def parse_header(header: bytes) -> tuple[int, int, int]:
    """A packet header's type, status and payload length."""
    if len(header) != _HEADER:
        raise WireError("a TDS packet header is 8 bytes")
    kind, status, length = struct.unpack_from(">BBH", header)
    if length < _HEADER:
        raise WireError(f"a TDS packet length of {length} (less than its header)")
    return kind, status, length - _HEADER


Read = Callable[[int], Awaitable[bytes]]


async def _exactly(read: Read, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = await read(size - len(data))
        if not more:
            got = f"after {len(data)} of {size} bytes" if data else "before the answer"
            raise WireError(f"the connection closed {got} of a TDS packet")
        data += more
    return data


async def read_message(
    read: Read,
    limit: int = MESSAGE_LIMIT,
    types: tuple[int, ...] = (PACKET_REPLY,),
    what: str = "PRELOGIN answer",
) -> bytes:
    """One whole message of one of ``types`` (its packets' payloads up to the end-of-message
    status), at most ``limit`` bytes."""
    message = b""
    while True:
        header = await _exactly(read, _HEADER)
        kind, status, length = parse_header(header)
        if kind not in types:
            shown = header.hex(" ")
            wanted = " or ".join(f"0x{t:02x}" for t in types)
            raise WireError(
                f"expected a TDS packet of type {wanted} ({what}), got type 0x{kind:02x} ({shown})"
            )
        if len(message) + length > limit:
            raise WireError(f"the {what} is over the limit of {limit} bytes")
        message += await _exactly(read, length)
        if status & STATUS_EOM:
            return message


@attrs.frozen
class Prelogin:
    """What a server's PRELOGIN answer says."""

    version: tuple[int, int, int, int]
    encryption: int

    @property
    def version_text(self) -> str:
        return ".".join(str(part) for part in self.version)

    @property
    def version_number(self) -> int:
        """``major*10**7 + minor*10**5 + build`` (16.0.1000 is 160001000)."""
        major, minor, build, _sub = self.version
        return major * 10**7 + minor * 10**5 + build

    @property
    def encryption_text(self) -> str:
        return ENCRYPTION_NAMES.get(self.encryption, f"unknown ({self.encryption})")


def parse_prelogin(payload: bytes) -> Prelogin:
    """The option table of a PRELOGIN answer; VERSION and ENCRYPTION are required."""
    options: dict[int, bytes] = {}
    pos = 0
    while True:
        if pos >= len(payload):
            raise WireError("the PRELOGIN option table has no terminator (0xFF)")
        token = payload[pos]
        if token == TOKEN_END:
            table_end = pos + 1
            break
        if pos + 5 > len(payload):
            raise WireError("the PRELOGIN option table ends inside an option")
        offset, length = struct.unpack_from(">HH", payload, pos + 1)
        options.setdefault(token, struct.pack(">HH", offset, length))
        pos += 5
        if len(options) > 64:
            raise WireError("the PRELOGIN option table has more than 64 options")
    values: dict[int, bytes] = {}
    for token, where in options.items():
        offset, length = struct.unpack(">HH", where)
        if offset < table_end or offset + length > len(payload):
            raise WireError(
                f"PRELOGIN option 0x{token:02x} points outside the message "
                f"(offset {offset}, length {length}, message {len(payload)} bytes)"
            )
        values[token] = payload[offset : offset + length]
    version = values.get(TOKEN_VERSION)
    if version is None or len(version) != 6:
        raise WireError("the PRELOGIN answer has no 6-byte VERSION option")
    encryption = values.get(TOKEN_ENCRYPTION)
    if encryption is None or len(encryption) != 1:
        raise WireError("the PRELOGIN answer has no 1-byte ENCRYPTION option")
    major, minor, build, sub = struct.unpack(">BBHH", version)
    if encryption[0] not in ENCRYPTION_NAMES:
        raise WireError(f"the PRELOGIN answer has an unknown ENCRYPTION value {encryption[0]}")
    return Prelogin((major, minor, build, sub), encryption[0])


# -- LOGIN7 and its answer ------------------------------------------------------------------------

PACKET_LOGIN7: Final = 0x10
#: TDS 7.4 (SQL Server 2012 and later; older servers answer with the version they speak).
TDS_VERSION: Final = 0x74000004
TOKEN_LOGINACK: Final = 0xAD
TOKEN_ERROR: Final = 0xAA
TOKEN_INFO: Final = 0xAB
TOKEN_ENVCHANGE: Final = 0xE3
TOKEN_DONE: Final = 0xFD
#: The largest login answer read (a real one, with its environment changes, is under 1 KiB).
LOGIN_REPLY_LIMIT: Final = 64 * 1024
_LOGIN_FIXED: Final = 94


def _obfuscated(password: str) -> bytes:
    """LOGIN7's password encoding: UCS-2, each byte's nibbles swapped, then XOR 0xA5 (an
    encoding, not encryption: the packet itself goes inside TLS)."""
    return bytes((((b << 4) & 0xF0) | (b >> 4)) ^ 0xA5 for b in password.encode("utf-16-le"))


def login7(
    username: str, password: str, database: str | None, hostname: str, app: str, server: str
) -> bytes:
    """A LOGIN7 message as one packet (TDS 7.4, SQL Server authentication)."""
    fields = [
        hostname.encode("utf-16-le"),
        username.encode("utf-16-le"),
        _obfuscated(password),
        app.encode("utf-16-le"),
        server.encode("utf-16-le"),
        b"",  # extension
        "probekit".encode("utf-16-le"),  # client interface name
        b"",  # language
        (database or "").encode("utf-16-le"),
    ]
    offsets = bytearray()
    data = bytearray()
    position = _LOGIN_FIXED
    for value in fields:
        offsets += struct.pack("<HH", position + len(data), len(value) // 2)
        data += value
    offsets += bytes(6)  # client id (a MAC address; none)
    for _ in range(3):  # SSPI, attach-database file, change password: none
        offsets += struct.pack("<HH", position + len(data), 0)
    offsets += struct.pack("<I", 0)  # long SSPI length
    head = struct.pack(
        "<IIIIII4BiI",
        _LOGIN_FIXED + len(data),
        TDS_VERSION,
        4096,  # packet size
        0x01000000,  # client program version
        0,  # client process id
        0,  # connection id
        0xE0,  # USE_DB_ON | INIT_DB_FATAL | SET_LANG_ON
        0x03,  # INIT_LANG_FATAL | ODBC_ON
        0x00,  # type flags
        0x00,  # option flags 3
        0,  # time zone
        0x0409,  # LCID
    )
    payload = head + bytes(offsets) + bytes(data)
    if len(head) + len(offsets) != _LOGIN_FIXED:
        raise AssertionError("LOGIN7 fixed part is not 94 bytes")
    header = struct.pack(">BBHHBB", PACKET_LOGIN7, STATUS_EOM, _HEADER + len(payload), 0, 1, 0)
    return header + payload


@attrs.frozen
class LoginReply:
    """What the server answered to LOGIN7: accepted (with its program name and version), or
    the first error (number, message)."""

    accepted: bool
    program: str = ""
    version: str = ""
    error_number: int = 0
    error_message: str = ""


def _ucs2(data: bytes, pos: int, chars: int, what: str) -> tuple[str, int]:
    end = pos + chars * 2
    if end > len(data):
        raise WireError(f"the {what} runs past the end of its token")
    return data[pos:end].decode("utf-16-le", "replace"), end


def _error_token(body: bytes) -> tuple[int, str]:
    if len(body) < 8:
        raise WireError("an ERROR token shorter than its fixed part")
    number = int.from_bytes(body[0:4], "little")
    chars = int.from_bytes(body[6:8], "little")
    message, _ = _ucs2(body, 8, chars, "error message")
    return number, message[:300]


def parse_login_reply(payload: bytes) -> LoginReply:
    """The token stream answering LOGIN7: LOGINACK, ERROR, INFO, ENVCHANGE and DONE tokens."""
    pos = 0
    ack: LoginReply | None = None
    error: tuple[int, str] | None = None
    while pos < len(payload):
        token = payload[pos]
        pos += 1
        if token == TOKEN_DONE:
            if pos + 12 > len(payload):
                raise WireError("a DONE token cut short")
            pos += 12
            continue
        if token not in (TOKEN_LOGINACK, TOKEN_ERROR, TOKEN_INFO, TOKEN_ENVCHANGE):
            raise WireError(f"an unexpected token 0x{token:02x} in the login answer")
        if pos + 2 > len(payload):
            raise WireError("a token length cut short")
        length = int.from_bytes(payload[pos : pos + 2], "little")
        body = payload[pos + 2 : pos + 2 + length]
        if len(body) != length:
            raise WireError(f"a token of {length} bytes runs past the end of the login answer")
        pos += 2 + length
        if token == TOKEN_ERROR and error is None:
            error = _error_token(body)
        elif token == TOKEN_LOGINACK:
            if len(body) < 10:
                raise WireError("a LOGINACK token shorter than its fixed part")
            name, end = _ucs2(body, 6, body[5], "program name")
            if end + 4 > len(body):
                raise WireError("a LOGINACK token without the server version")
            major, minor, high, low = body[end : end + 4]
            ack = LoginReply(True, name[:64], f"{major}.{minor}.{high << 8 | low}")
    if error is not None:
        return LoginReply(False, error_number=error[0], error_message=error[1])
    if ack is None:
        raise WireError("the login answer has neither LOGINACK nor ERROR")
    return ack
