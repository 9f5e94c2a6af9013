"""Name resolution: aiodns by default, and a static resolver to use as a test double."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import socket
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from ._exceptions import ProbeFailure
from ._policy import IPAddress, parse_host_address
from ._result import ErrorKind

__all__ = ["AiodnsResolver", "Family", "Resolver", "StaticResolver"]

log = logging.getLogger("probekit.dial")

Family = Literal["any", "ipv4", "ipv6"]

_AF = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


class Resolver(Protocol):
    """Turns a host name into addresses. Raise :class:`ProbeFailure` (kind ``dns``) on failure.

    A resolver may also have a ``prepare()`` method (no arguments, synchronous, no network): its
    one-time set-up, which probes call before a check's clock starts (see
    :meth:`AiodnsResolver.prepare`).
    """

    async def resolve(self, host: str, family: Family = "any") -> list[IPAddress]: ...


class AiodnsResolver:
    """Resolve with c-ares through aiodns (asynchronous; honours ``/etc/hosts``).

    ``nameservers`` pins the servers asked (e.g. ``["127.0.0.1:5353"]``); by default the
    system's are used. One c-ares channel is kept, for the event loop that last used it (a
    channel is bound to its loop; a new loop gets a new channel).
    """

    def __init__(self, nameservers: Sequence[str] | None = None, *, tries: int = 2) -> None:
        self.nameservers = tuple(nameservers) if nameservers else None
        self.tries = tries
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel_for_loop: Any = None

    def _channel(self) -> Any:
        loop = asyncio.get_running_loop()
        channel = self._channel_for_loop
        if channel is None or self._loop is not loop:
            self._drop()
            import aiodns  # lazily: it costs ~70 ms to import and only name lookups need it

            kwargs: dict[str, Any] = {"tries": self.tries}
            if self.nameservers:
                kwargs["nameservers"] = list(self.nameservers)
            channel = aiodns.DNSResolver(loop=loop, **kwargs)
            self._loop, self._channel_for_loop = loop, channel
            _live.add(self)
        return channel

    def prepare(self) -> None:
        """Open the channel for the running loop now (importing aiodns on first use), so the
        first lookup's ``resolve`` phase measures the lookup, not the set-up. Probes call it
        before their check's clock starts; it is cheap once the channel is open."""
        self._channel()

    async def aclose(self) -> None:
        """Release the c-ares channel (a later lookup opens a new one)."""
        channel, self._channel_for_loop, self._loop = self._channel_for_loop, None, None
        if channel is not None:
            await channel.close()

    def _drop(self) -> None:
        """Release a channel whose loop may be gone, without touching that loop.

        aiodns would otherwise clean up in ``__del__``, possibly during interpreter shutdown
        when pycares is half torn down, and print an ignored exception.
        """
        channel, self._channel_for_loop, self._loop = self._channel_for_loop, None, None
        if channel is None:
            return
        channel._closed = True  # aiodns: its __del__ then skips the loop-bound cleanup
        with contextlib.suppress(Exception):
            channel._channel.close()

    async def resolve(self, host: str, family: Family = "any") -> list[IPAddress]:
        import aiodns.error

        try:
            answer = await self._channel().getaddrinfo(
                host, family=_AF[family], type=socket.SOCK_STREAM
            )
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            text = exc.args[1] if len(exc.args) > 1 else str(exc)
            raise ProbeFailure(
                ErrorKind.DNS, f"cannot resolve {host!r}: {text} (c-ares {code})"
            ) from None
        out: list[IPAddress] = []
        for node in answer.nodes:
            raw = node.addr[0]
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            parsed = parse_host_address(text)
            if parsed is not None and parsed not in out:
                out.append(parsed)
        if not out:
            raise ProbeFailure(ErrorKind.DNS, f"{host!r} has no addresses")
        return out


_live: weakref.WeakSet[AiodnsResolver] = weakref.WeakSet()


@atexit.register
def _close_channels() -> None:
    for resolver in list(_live):
        resolver._drop()


class StaticResolver:
    """A resolver that answers from a mapping, for tests: ``{"db.internal": ["192.0.2.7"]}``.

    Unknown names fail as ``dns`` errors, as NXDOMAIN would.
    """

    def __init__(self, answers: Mapping[str, Sequence[str]]) -> None:
        self.answers: dict[str, list[IPAddress]] = {}
        self.queries: list[str] = []
        for name, addresses in answers.items():
            parsed = [parse_host_address(a) for a in addresses]
            if any(p is None for p in parsed):
                raise ValueError(f"StaticResolver: not an address in {addresses!r}")
            self.answers[name.lower().rstrip(".")] = [p for p in parsed if p is not None]

    async def resolve(self, host: str, family: Family = "any") -> list[IPAddress]:
        self.queries.append(host)
        found = self.answers.get(host.lower().rstrip("."))
        if not found:
            raise ProbeFailure(ErrorKind.DNS, f"cannot resolve {host!r}: not found")
        if family == "ipv4":
            found = [a for a in found if a.version == 4]
        elif family == "ipv6":
            found = [a for a in found if a.version == 6]
        if not found:
            raise ProbeFailure(ErrorKind.DNS, f"{host!r} has no {family} addresses")
        return list(found)
