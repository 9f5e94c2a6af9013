"""A small PostgreSQL server (protocol 3.0) for tests: SSLRequest (with or without TLS), the
StartupMessage, SCRAM-SHA-256 / md5 / cleartext / trust logins checked for real, ParameterStatus,
and simple queries answered from a table. Written from the protocol documentation
(https://www.postgresql.org/docs/current/protocol-flow.html); tests/test_postgres.py and the
hostile suites use it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
from collections.abc import Sequence
from typing import Literal

from servers import LoopbackServer

Method = Literal["trust", "scram", "md5", "password", "gss"]
Rows = Sequence[Sequence[str | None]]
VERSION = "15.5 (Debian 15.5-0+deb12u1)"


def msg(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def auth(code: int, extra: bytes = b"") -> bytes:
    return msg(b"R", struct.pack("!i", code) + extra)


def error(code: str, message: str, severity: str = "FATAL", kind: bytes = b"E") -> bytes:
    fields = b"S%s\0V%s\0C%s\0M%s\0\0" % (
        severity.encode(),
        severity.encode(),
        code.encode(),
        message.encode(),
    )
    return msg(kind, fields)


def param(name: str, value: str) -> bytes:
    return msg(b"S", name.encode() + b"\0" + value.encode() + b"\0")


READY = msg(b"Z", b"I")


def row_description(columns: int) -> bytes:
    body = struct.pack("!h", columns)
    for i in range(columns):
        body += b"c%d\0" % i + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", body)


def data_row(cells: Sequence[str | bytes | None]) -> bytes:
    body = struct.pack("!h", len(cells))
    for cell in cells:
        if cell is None:
            body += struct.pack("!i", -1)
        else:
            raw = cell.encode() if isinstance(cell, str) else cell
            body += struct.pack("!i", len(raw)) + raw
    return msg(b"D", body)


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], await reader.readexactly(length - 4)


async def read_startup(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(8)
    length, code = struct.unpack("!ii", head)
    return code, await reader.readexactly(length - 8)


def md5_answer(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - the protocol's
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()  # noqa: S324


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class PgServer(LoopbackServer):
    """One PostgreSQL-like server. ``method`` is what it asks of every user; ``users`` maps
    names to passwords; ``databases`` are the ones that exist; ``queries`` maps SQL text to
    rows (or to ``(SQLSTATE, message)`` for an error). What the probe sent is recorded:
    ``startups`` (the startup parameters), ``passwords`` (each PasswordMessage as received)."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        method: Method = "scram",
        users: dict[str, str] | None = None,
        databases: Sequence[str] = ("app",),
        queries: dict[str, Rows | tuple[str, str]] | None = None,
        version: str = VERSION,
        iterations: int = 4096,
        bad_signature: bool = False,
        mechanisms: Sequence[str] = ("SCRAM-SHA-256",),
    ) -> None:
        super().__init__()
        self.tls = tls
        self.method = method
        self.users = users if users is not None else {"monitor": "s3cret-pg-canary"}
        self.databases = set(databases)
        self.queries = queries or {}
        self.version = version
        self.iterations = iterations
        self.bad_signature = bad_signature
        self.mechanisms = mechanisms
        self.startups: list[dict[str, str]] = []
        self.passwords: list[bytes] = []
        self.ssl_requests = 0
        self.terminated = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        code, body = await read_startup(reader)
        if code == 80877103:
            self.ssl_requests += 1
            if self.tls is None:
                writer.write(b"N")
            else:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.tls)
            code, body = await read_startup(reader)
        assert code == 196608, code
        words = body.split(b"\0")
        params = {words[i].decode(): words[i + 1].decode() for i in range(0, len(words) - 2, 2)}
        self.startups.append(params)
        user = params["user"]
        database = params.get("database", user)
        if self.method != "trust" and not await self._login(reader, writer, user):
            writer.write(error("28P01", f'password authentication failed for user "{user}"'))
            return
        writer.write(auth(0))
        if database not in self.databases:
            writer.write(error("3D000", f'database "{database}" does not exist'))
            return
        writer.write(
            param("server_version", self.version)
            + param("client_encoding", "UTF8")
            + msg(b"K", struct.pack("!ii", 4242, 77))
            + READY
        )
        while True:
            kind, payload = await read_message(reader)
            if kind == b"X":
                self.terminated += 1
                return
            assert kind == b"Q", kind
            await self._query(writer, payload[:-1].decode())

    async def _query(self, writer: asyncio.StreamWriter, sql: str) -> None:
        answer = self.queries.get(sql)
        if answer is None:
            writer.write(error("42601", f'syntax error at or near "{sql[:10]}"', "ERROR"))
        elif isinstance(answer, tuple):
            writer.write(error(answer[0], answer[1], "ERROR"))
        else:
            writer.write(row_description(len(answer[0]) if answer else 1))
            for row in answer:
                writer.write(data_row(row))
                await writer.drain()
            writer.write(msg(b"C", b"SELECT %d\0" % len(answer)))
        writer.write(READY)

    async def _login(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str
    ) -> bool:
        password = self.users.get(user)
        if self.method == "gss":
            writer.write(auth(7))
            await reader.read()
            return False
        if self.method == "password":
            writer.write(auth(3))
            _, payload = await read_message(reader)
            self.passwords.append(payload)
            return password is not None and payload == password.encode() + b"\0"
        if self.method == "md5":
            salt = os.urandom(4)
            writer.write(auth(5, salt))
            _, payload = await read_message(reader)
            self.passwords.append(payload)
            return password is not None and payload == md5_answer(user, password, salt) + b"\0"
        return await self._scram(reader, writer, password)

    async def _scram(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str | None
    ) -> bool:
        listed = b"".join(m.encode() + b"\0" for m in self.mechanisms) + b"\0"
        writer.write(auth(10, listed))
        _, payload = await read_message(reader)
        mechanism, _, rest = payload.partition(b"\0")
        assert mechanism == b"SCRAM-SHA-256", mechanism
        (size,) = struct.unpack("!i", rest[:4])
        first = rest[4 : 4 + size].decode()
        assert first.startswith("n,,"), first
        bare = first[3:]
        client_nonce = bare.split("r=", 1)[1]
        salt = b"pg-test-salt-16b"
        nonce = client_nonce + base64.b64encode(os.urandom(12)).decode()
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={self.iterations}"
        writer.write(auth(11, server_first.encode()))
        _, payload = await read_message(reader)
        final = payload.decode()
        without_proof, _, proof = final.rpartition(",p=")
        assert without_proof == f"c=biws,r={nonce}", without_proof
        # An unknown user still gets an exchange, as PostgreSQL does (its existence is not told).
        secret = (password if password is not None else os.urandom(8).hex()).encode()
        salted = hashlib.pbkdf2_hmac("sha256", secret, salt, self.iterations)
        client_key = _hmac(salted, b"Client Key")
        stored = hashlib.sha256(client_key).digest()
        message = f"{bare},{server_first},{without_proof}".encode()
        signature = _hmac(stored, message)
        recovered = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if hashlib.sha256(recovered).digest() != stored:
            return False
        server_signature = _hmac(_hmac(salted, b"Server Key"), message)
        if self.bad_signature:
            server_signature = bytes(32)
        writer.write(auth(12, b"v=" + base64.b64encode(server_signature)))
        return True
