"""How a checkpoint reaches its control plane: through probekit's dial path, under its policy.

The control channel is a connection the library makes for itself, and the network still belongs
to the operator: the control plane's host is resolved and checked against the checkpoint's
:class:`~probekit.EgressPolicy` by :meth:`Dialer.resolve` (a denied name or address raises
:class:`~probekit.PolicyError` before any socket is opened), and the socket is connected to the
checked address itself (pinned, so a second resolution cannot swap it). ``websockets`` then
gets that connected socket for TLS and the WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import socket

from .._clock import SystemClock
from .._dial import Dialer, format_address
from .._policy import IPAddress
from .._timeline import Timeline
from .._timeouts import Timeouts

__all__ = ["dial"]


async def dial(
    dialer: Dialer, host: str, port: int, timeout: float
) -> tuple[socket.socket, Timeline]:
    """A TCP socket connected to ``host:port`` through ``dialer``'s resolver and policy.

    Returns the socket (non-blocking, owned by the caller) and the timeline of its ``resolve``
    and ``connect`` phases. Raises :class:`~probekit.PolicyError` when the policy denies the
    host or any address it resolves to (no socket is opened then), a
    :class:`~probekit.ProbeFailure` when it cannot be resolved, ``OSError`` when no address
    accepts the connection, and ``TimeoutError`` after ``timeout`` seconds.
    """
    timeline = Timeline(SystemClock())
    async with asyncio.timeout(timeout):
        addresses = await dialer.resolve(host, timeline, Timeouts(total=timeout))
        with timeline.phase("connect"):
            return await _connect_any(addresses, port, dialer.source), timeline


async def _connect_any(
    addresses: list[IPAddress], port: int, source: tuple[str, int] | None
) -> socket.socket:
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for ip in addresses:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if source is not None:
                sock.bind(source)
            await loop.sock_connect(sock, (str(ip), port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if last is None:
        raise OSError(f"no address to connect to for port {port}")
    target = format_address(addresses[-1], port)
    raise OSError(last.errno, f"cannot connect to {target}: {last.strerror or last}")
