"""A tiny HTTP proxy for tests: CONNECT tunnels and absolute-form forwarding, loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

from servers import LoopbackServer


class LoopbackProxy(LoopbackServer):
    """Dials only loopback targets (``resolve`` maps test names to loopback addresses)."""

    def __init__(
        self, *, require_auth: bytes | None = None, resolve: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        self.require_auth = require_auth
        self.resolve = resolve or {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _target(self, host: str) -> str:
        host = self.resolve.get(host, host)
        if not ipaddress.ip_address(host.strip("[]")).is_loopback:
            raise PermissionError(f"test proxy refuses {host}")
        return host.strip("[]")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            first, *rest = head.decode("latin-1").split("\r\n")
            self.requests.append(first)
            headers = {
                k.lower(): v.strip() for k, _, v in (line.partition(":") for line in rest if line)
            }
            if (
                self.require_auth
                and headers.get("proxy-authorization", "").encode() != self.require_auth
            ):
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
                )
                return
            method, target, _ = first.split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, upstream_writer = await asyncio.open_connection(
                    self._target(host), int(port)
                )
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await asyncio.gather(_pump(reader, upstream_writer), _pump(up_reader, writer))
            else:
                from urllib.parse import urlsplit

                parts = urlsplit(target)
                assert parts.hostname is not None
                up_reader, upstream_writer = await asyncio.open_connection(
                    self._target(parts.hostname), parts.port or 80
                )
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream_writer.write(head.replace(target.encode(), path.encode(), 1))
                await _pump(up_reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, PermissionError):
            with contextlib.suppress(Exception):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        finally:
            if upstream_writer is not None:
                upstream_writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(Exception):
        writer.write_eof()
