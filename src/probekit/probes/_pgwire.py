"""The PostgreSQL frontend/backend protocol (version 3.0), as much of it as a check needs.

Private to :mod:`probekit.probes.postgres`; the registry skips it (its name starts with ``_``).
It imports no driver: asyncpg and psycopg each open and own their connection (asyncpg's
``connect()`` dials the host and port itself and does its own SSLRequest and handshake; psycopg
hands a connection string to libpq), so neither could run the SSLRequest, the TLS handshake and
the login on the connection the dial path opened, nor time them as phases. What a check needs
is small: the SSLRequest, a StartupMessage, SCRAM-SHA-256 (RFC 5802/7677, with SASLprep,
RFC 4013), md5 and cleartext password exchanges, and the simple query protocol.

Two halves:

- pure functions on bytes (:func:`parse_header`, :func:`parse_auth`, :func:`parse_error`,
  :func:`parse_parameter`, :func:`parse_row_head`, :class:`ScramClient`), each of which either
  returns a value or raises :class:`~probekit.ProbeFailure` (``protocol``, or ``auth`` for a
  SCRAM exchange the server got wrong). Whatever bytes a server sends, nothing else escapes;
  tests/test_postgres.py proves it with Hypothesis;
- :class:`Wire`, which reads messages from a dial-path connection with a bound on each one:
  a message that is parsed is at most :data:`MESSAGE_LIMIT` bytes (a longer one is refused
  before it is read), and the messages that may be long (rows, row descriptions, notices) are
  skipped or streamed through in chunks, so memory stays flat however large a result is.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import stringprep
import struct
import unicodedata
from typing import TYPE_CHECKING, Final

import attrs

from .._exceptions import ProbeFailure
from .._result import ErrorKind
from .._secret import Secret

if TYPE_CHECKING:
    from .._dial import Connection
    from ._base import Attempt

__all__ = [
    "FIRST_CELL_LIMIT",
    "MAX_SCRAM_ITERATIONS",
    "MESSAGE_LIMIT",
    "SQLSTATE_NAMES",
    "SSL_REQUEST",
    "TERMINATE",
    "AuthRequest",
    "RowHead",
    "ScramClient",
    "ServerError",
    "Wire",
    "md5_password",
    "parse_auth",
    "parse_error",
    "parse_header",
    "parse_parameter",
    "parse_row_head",
    "password_message",
    "query_message",
    "sasl_initial",
    "sasl_response",
    "saslprep",
    "startup_message",
]

#: The largest message that is read whole and parsed (an error, a parameter, an authentication
#: request, a command tag). Real ones are well under 8 KiB; a longer one is refused unread.
MESSAGE_LIMIT: Final = 64 * 1024
#: How many bytes of the first cell of the first row are kept (the rest is counted and skipped).
FIRST_CELL_LIMIT: Final = 64 * 1024
#: The most PBKDF2 iterations a server may ask of a SCRAM login (PostgreSQL's default is 4096):
#: more would let a hostile server spend the checkpoint's CPU, so it is refused.
MAX_SCRAM_ITERATIONS: Final = 100_000
#: The largest message length the protocol allows (PostgreSQL caps a field at 1 GiB).
_MAX_LENGTH: Final = (1 << 30) + 1024

#: SSLRequest: length 8, the code 1234/5679.
SSL_REQUEST: Final = struct.pack("!ii", 8, 80877103)
#: Terminate.
TERMINATE: Final = b"X\x00\x00\x00\x04"
_PROTOCOL_3_0: Final = 196608
_CHUNK: Final = 64 * 1024
_EXCERPT: Final = 120
_MASK: Final = "<secret>"

#: Names of the SQLSTATE codes a check meets most, for messages.
SQLSTATE_NAMES: Final[dict[str, str]] = {
    "28000": "invalid_authorization_specification",
    "28P01": "invalid_password",
    "3D000": "invalid_catalog_name",
    "57P01": "admin_shutdown",
    "57P03": "cannot_connect_now",
    "53300": "too_many_connections",
    "53000": "insufficient_resources",
    "42501": "insufficient_privilege",
    "42601": "syntax_error",
    "42P01": "undefined_table",
    "0A000": "feature_not_supported",
    "08P01": "protocol_violation",
    "08004": "sqlserver_rejected_establishment_of_sqlconnection",
    "57014": "query_canceled",
}

#: Authentication request codes, by what they ask for.
AUTH_METHODS: Final[dict[int, str]] = {
    0: "ok",
    2: "KerberosV5",
    3: "cleartext",
    5: "md5",
    6: "SCM credentials",
    7: "GSSAPI",
    8: "GSSAPI continue",
    9: "SSPI",
    10: "SASL",
    11: "SASL continue",
    12: "SASL final",
}


def _fail(message: str) -> ProbeFailure:
    return ProbeFailure(ErrorKind.PROTOCOL, message)


def excerpt(data: bytes | str, secret: Secret | None = None, limit: int = _EXCERPT) -> str:
    """Server text for a message: printable, short, with the password masked should the server
    repeat it."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if secret is not None:
        value = secret.reveal()
        if value and value in text:
            text = text.replace(value, _MASK)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        return f"{text[:limit]}… ({len(text)} characters)"
    return text


# -- messages the client sends -----------------------------------------------------------------


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def startup_message(parameters: dict[str, str]) -> bytes:
    """A StartupMessage (protocol 3.0) carrying ``parameters`` (``user`` is required)."""
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items())
    payload = struct.pack("!i", _PROTOCOL_3_0) + body + b"\0"
    return struct.pack("!i", len(payload) + 4) + payload


def password_message(password: bytes) -> bytes:
    """A PasswordMessage (cleartext or md5)."""
    return _message(b"p", password + b"\0")


def sasl_initial(mechanism: str, data: bytes) -> bytes:
    """A SASLInitialResponse."""
    return _message(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """A SASLResponse."""
    return _message(b"p", data)


def query_message(sql: str) -> bytes:
    """A simple-protocol Query."""
    return _message(b"Q", sql.encode() + b"\0")


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """``md5`` + md5(md5(password + user) + salt), as the md5 method wants it."""
    # md5 is what the server's md5 method asks for; probekit does not choose it.
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()  # noqa: S324
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()  # noqa: S324


# -- messages the server sends -----------------------------------------------------------------


def parse_header(header: bytes) -> tuple[bytes, int]:
    """The type byte and the payload length (without the length field) of a 5-byte header."""
    if len(header) != 5:
        raise _fail(f"a message header is 5 bytes, got {len(header)}")
    kind = header[:1]
    (length,) = struct.unpack("!i", header[1:])
    if length < 4 or length > _MAX_LENGTH:
        raise _fail(
            f"message {excerpt(kind)!r} claims a length of {length} bytes, "
            "which is not a PostgreSQL message"
        )
    if not (kind.isascii() and kind.isalpha()):
        raise _fail(f"not a PostgreSQL message: type byte {kind!r}")
    return kind, length - 4


@attrs.frozen
class AuthRequest:
    """An Authentication message: its code, and what comes with it (the md5 salt, the SASL
    mechanisms, the SASL data)."""

    code: int
    salt: bytes = b""
    mechanisms: tuple[str, ...] = ()
    data: bytes = b""

    @property
    def method(self) -> str:
        if self.code == 10 and self.mechanisms:
            return "SASL " + " ".join(self.mechanisms)
        return AUTH_METHODS.get(self.code, f"method {self.code}")


def parse_auth(payload: bytes) -> AuthRequest:
    """An Authentication message's payload."""
    if len(payload) < 4:
        raise _fail(f"an authentication request of {len(payload)} bytes")
    (code,) = struct.unpack("!i", payload[:4])
    rest = payload[4:]
    if code == 5:
        if len(rest) != 4:
            raise _fail(f"an md5 request carries a 4-byte salt, got {len(rest)} bytes")
        return AuthRequest(code, salt=rest)
    if code == 10:
        if not rest.endswith(b"\0\0"):
            raise _fail("a SASL request's mechanism list is not terminated")
        names = rest[:-1].split(b"\0")[:-1]
        if not names or any(not n for n in names):
            raise _fail("a SASL request names no mechanism")
        try:
            mechanisms = tuple(n.decode("ascii") for n in names)
        except UnicodeDecodeError:
            raise _fail("a SASL mechanism name is not ASCII") from None
        return AuthRequest(code, mechanisms=mechanisms)
    if code in (8, 11, 12):
        return AuthRequest(code, data=rest)
    if code not in AUTH_METHODS:
        raise _fail(f"an authentication request with an unknown code {code}")
    if rest:
        raise _fail(f"{len(rest)} unexpected bytes after authentication request {code}")
    return AuthRequest(code)


@attrs.frozen
class ServerError:
    """An ErrorResponse (or NoticeResponse): its severity, SQLSTATE and message."""

    severity: str
    code: str
    message: str

    def describe(self, secret: Secret | None = None) -> str:
        name = SQLSTATE_NAMES.get(self.code)
        state = f"SQLSTATE {self.code} {name}" if name else f"SQLSTATE {self.code}"
        return f"{self.severity}: {excerpt(self.message, secret)} ({state})"


def parse_error(payload: bytes) -> ServerError:
    """An ErrorResponse's payload: ``(type byte, text NUL)*`` then a NUL."""
    if not payload.endswith(b"\0"):
        raise _fail("an error response is not terminated")
    fields: dict[str, str] = {}
    for part in payload[:-1].split(b"\0"):
        if not part:
            if fields:
                continue
            break
        fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    if "C" not in fields and "M" not in fields:
        raise _fail("an error response with neither SQLSTATE nor message")
    severity = fields.get("V") or fields.get("S") or "ERROR"
    code = fields.get("C", "")
    if len(code) != 5 or not code.isascii() or not code.isalnum():
        code = code[:5] if code else "?????"
    return ServerError(excerpt(severity, limit=16), excerpt(code, limit=5), fields.get("M", ""))


def parse_parameter(payload: bytes) -> tuple[str, str]:
    """A ParameterStatus's payload: name NUL value NUL."""
    parts = payload.split(b"\0")
    if len(parts) != 3 or parts[2] != b"" or not parts[0]:
        raise _fail("a parameter status is not 'name NUL value NUL'")
    return parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace")


@attrs.frozen
class RowHead:
    """The start of a DataRow: the number of columns and the length of the first cell
    (-1 for NULL, None without columns)."""

    columns: int
    first_length: int | None

    @property
    def head_size(self) -> int:
        """The bytes of the payload read to learn this (2, or 6 with a first cell)."""
        return 2 if self.first_length is None else 6


def parse_row_head(head: bytes, payload_length: int) -> RowHead:
    """The first 2 or 6 bytes of a DataRow whose payload is ``payload_length`` bytes."""
    if len(head) < 2:
        raise _fail(f"a data row of {payload_length} bytes is too short")
    (columns,) = struct.unpack("!h", head[:2])
    if columns < 0:
        raise _fail(f"a data row with {columns} columns")
    if columns == 0:
        if payload_length != 2:
            raise _fail("a data row without columns carries data")
        return RowHead(0, None)
    if len(head) < 6 or payload_length < 6:
        raise _fail(f"a data row of {columns} columns in {payload_length} bytes")
    (first,) = struct.unpack("!i", head[2:6])
    if first < -1 or 6 + max(first, 0) > payload_length:
        raise _fail(f"a data row's first cell claims {first} bytes of a {payload_length}-byte row")
    return RowHead(columns, first)


# -- SCRAM-SHA-256 ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_PROHIBITED: Final = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points, as PostgreSQL's pg_saslprep refuses them
)


def saslprep(password: str) -> bytes:
    """The password as SCRAM hashes it: SASLprep (RFC 4013) as PostgreSQL applies it, falling
    back to the raw UTF-8 bytes where SASLprep refuses the string (as the server does when it
    stores the verifier), so a password that is not valid for SASLprep still logs in."""
    if password.isascii() and all(" " <= c <= "~" for c in password):
        return password.encode()  # printable ASCII: SASLprep changes nothing
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)
    )
    text = unicodedata.normalize("NFKC", mapped)
    if not text or any(check(c) for c in text for check in _PROHIBITED):
        return password.encode()
    if any(stringprep.in_table_d1(c) for c in text) and (
        any(stringprep.in_table_d2(c) for c in text)
        or not stringprep.in_table_d1(text[0])
        or not stringprep.in_table_d1(text[-1])
    ):
        return password.encode()
    return text.encode()


#: SaltedPassword by (SHA-256 of the password, salt, iterations), newest last; bounded.
_SALTED: collections.OrderedDict[tuple[bytes, bytes, int], bytes] = collections.OrderedDict()
_SALTED_MAX: Final = 256


def _salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 of SCRAM (``Hi()``), remembered per password, salt and iteration count: a role's
    salt changes only with its password, so a check run every minute pays the iterations
    (about 2 ms for PostgreSQL's 4096) once. The key holds a SHA-256 of the password, not the
    password; the value is as sensitive as the password, which the process holds anyway, and
    is never logged or shown."""
    key = (hashlib.sha256(password).digest(), salt, iterations)
    salted = _SALTED.get(key)
    if salted is None:
        salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
        _SALTED[key] = salted
        if len(_SALTED) > _SALTED_MAX:
            _SALTED.popitem(last=False)
    else:
        _SALTED.move_to_end(key)
    return salted


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class ScramClient:
    """The client side of SCRAM-SHA-256 without channel binding (gs2 header ``n,,``).

    The user name is empty in the messages: PostgreSQL takes it from the StartupMessage. The
    password goes through :func:`saslprep` first, as the server's verifier did.
    """

    __slots__ = ("_auth_message", "_bare", "_nonce", "_password", "_server_signature")

    MECHANISM: Final = "SCRAM-SHA-256"

    def __init__(self, password: Secret, nonce: str | None = None) -> None:
        self._password = password
        self._nonce = nonce if nonce is not None else _b64(os.urandom(18))
        self._bare = f"n=,r={self._nonce}"
        self._auth_message = b""
        self._server_signature = b""

    def first(self) -> bytes:
        """The client-first-message."""
        return f"n,,{self._bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        """The client-final-message answering ``server_first`` (``r=..,s=..,i=..``)."""
        try:
            text = server_first.decode("ascii")
        except UnicodeDecodeError:
            raise _fail("the SCRAM server-first-message is not ASCII") from None
        attributes: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or len(key) != 1:
                raise _fail(f"not a SCRAM attribute: {excerpt(part, limit=40)!r}")
            if key == "m":
                raise _fail("the server wants a SCRAM extension (m=) that probekit does not know")
            attributes.setdefault(key, value)
        nonce, salt_text, count = (attributes.get(k) for k in ("r", "s", "i"))
        if nonce is None or salt_text is None or count is None:
            raise _fail("the SCRAM server-first-message lacks r=, s= or i=")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ProbeFailure(
                ErrorKind.AUTH, "the server's SCRAM nonce does not extend the client's"
            )
        if not all(33 <= ord(c) <= 126 and c != "," for c in nonce):
            raise _fail("the server's SCRAM nonce has characters SCRAM does not allow")
        try:
            salt = base64.b64decode(salt_text, validate=True)
        except ValueError:
            raise _fail("the SCRAM salt is not base64") from None
        if not salt:
            raise _fail("an empty SCRAM salt")
        if not (count.isascii() and count.isdigit() and len(count) <= 9):
            raise _fail(f"the SCRAM iteration count {excerpt(count, limit=20)!r} is not a number")
        iterations = int(count)
        if not 1 <= iterations <= MAX_SCRAM_ITERATIONS:
            raise _fail(
                f"the server asks for {iterations} SCRAM iterations "
                f"(probekit allows 1 to {MAX_SCRAM_ITERATIONS})"
            )
        salted = _salted_password(saslprep(self._password.reveal()), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"{self._bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), self._auth_message)
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> None:
        """Check the server-final-message: the server proves it knows the password too."""
        if not self._auth_message:
            raise _fail("a SCRAM final message before the exchange")
        text = server_final.decode("ascii", "replace")
        if text.startswith("e="):
            raise ProbeFailure(ErrorKind.AUTH, f"SCRAM refused: {excerpt(text[2:], limit=60)}")
        value = text.split(",", 1)[0]
        if not value.startswith("v="):
            raise _fail("the SCRAM server-final-message has no v=")
        try:
            signature = base64.b64decode(value[2:], validate=True)
        except ValueError:
            raise _fail("the SCRAM server signature is not base64") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise ProbeFailure(
                ErrorKind.AUTH,
                "the server's SCRAM signature is wrong: it does not know the password "
                "(not the server expected)",
            )


# -- reading from a connection ---------------------------------------------------------------


class Wire:
    """Message reading on one dial-path connection, every read bounded.

    It reads in chunks into a buffer of its own (at most one chunk beyond what a message
    needs), so that the rows of a large result can be counted without an await per row.
    ``secret`` is masked in every excerpt of server text.
    """

    __slots__ = ("_buffer", "attempt", "conn", "secret")

    def __init__(self, attempt: Attempt, conn: Connection, secret: Secret | None) -> None:
        self.attempt = attempt
        self.conn = conn
        self.secret = secret
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received and not yet consumed (here and in the connection)."""
        return len(self._buffer) + self.conn.buffered

    async def send(self, data: bytes) -> None:
        await self.attempt.write(self.conn, data)

    async def _fill(self, size: int, what: str) -> None:
        buffer = self._buffer
        while len(buffer) < size:
            data = await self.attempt.read(self.conn, _CHUNK)
            if not data:
                where = "before" if not buffer else "in the middle of"
                raise _fail(f"the connection closed {where} the {what}")
            buffer += data

    async def exactly(self, size: int, what: str) -> bytes:
        """``size`` bytes (``size`` is bounded by the callers)."""
        buffer = self._buffer
        if len(buffer) < size:
            await self._fill(size, what)
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    async def skip(self, size: int, what: str) -> None:
        """Read and drop ``size`` bytes, a chunk at a time."""
        buffer = self._buffer
        taken = min(size, len(buffer))
        del buffer[:taken]
        size -= taken
        while size > 0:
            data = await self.attempt.read(self.conn, min(size, _CHUNK))
            if not data:
                raise _fail(f"the connection closed in the middle of the {what}")
            size -= len(data)

    async def header(self, what: str) -> tuple[bytes, int]:
        """The next message's type byte and payload length."""
        return parse_header(await self.exactly(5, what))

    async def payload(self, kind: bytes, length: int, what: str) -> bytes:
        """The payload of a message that is parsed whole; refused unread past MESSAGE_LIMIT."""
        if length > MESSAGE_LIMIT:
            raise _fail(
                f"the {what} ({excerpt(kind)!r}) is {length} bytes, over the limit of "
                f"{MESSAGE_LIMIT}"
            )
        return await self.exactly(length, what) if length else b""

    def skim_rows(self) -> int:
        """Count and drop the DataRow messages wholly in the buffer, stopping at anything
        else; each is checked as :func:`parse_row_head` checks it. The number dropped."""
        buffer = self._buffer
        end = len(buffer)
        pos = 0
        count = 0
        unpack = struct.unpack_from
        while end - pos >= 7 and buffer[pos] == 0x44:  # "D"
            length, columns = unpack("!ih", buffer, pos + 1)
            stop = pos + 1 + length
            if stop > end or length < 6 or columns < 0:
                break  # not all here, or wrong: the careful path reads or refuses it
            if columns == 0:
                if length != 6:
                    break
            else:
                if length < 10:
                    break
                (first,) = unpack("!i", buffer, pos + 7)
                if first < -1 or 6 + max(first, 0) > length - 4:
                    break
            pos = stop
            count += 1
        if pos:
            del buffer[:pos]
        return count
